//! f32 convolutions on the 256-bit FMA micro-kernel ([`fma_tile`]): per sample and group,
//! the input is gathered into *panels* of sixteen output positions (`[tap][16]`, one
//! 64-byte row per tap), and each tile of six output channels × one panel is one
//! micro-kernel call that broadcasts the weights, read where they are (`[M][C/g · kernel]`
//! is already six contiguous rows), and adds the bias and the fused activation's clamp.
//!
//! The gather is a table of runs: a panel's tap whose sixteen positions read sixteen
//! consecutive input elements (stride 1 along the last axis, inside the padding), or every
//! other one (stride 2), is a 64-byte copy (from 128 bytes for stride 2); any other is
//! sixteen loads through a table of per-position offsets, padding and positions past the
//! end read as 0.
//!
//! Panels are tasks on the thread pool, each gathered by the thread that uses it into a
//! scratch panel of its own (where it stays in L2 while the row blocks pass over it), so
//! the gather is split across threads too; with few panels the output channels are split
//! as well ([`MIN_TASKS`]).
//!
//! Matrix products use the same micro-kernel the other way round ([`super::wide_f32_matmul`]).

use super::fma_tile::{self, Bias, FmaTile, COLS, PANEL_STEP, ROWS};
use super::im2col::{fma_float_conv, ConvShape};
use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::FuncId;

/// Emits a float Conv in this form and returns true when it applies: f32 input, constant
/// f32 weights (and bias), AVX2 with FMA; false leaves it to the other forms.
pub(super) fn conv(k: &mut Kernel) -> Result<bool, String> {
    if !fma_float_conv(k)? {
        return Ok(false);
    }
    let (x, w, y) = (k.input(0)?, k.input(1)?, k.output(0));
    let bias = k.optional(2);
    let (xptr, wptr, yptr) = (x.ptr, w.ptr, y.ptr);
    let bptr = bias.map(|b| b.ptr);
    let clamp = k.float_clamp()?;
    let shape = ConvShape::of(k)?;
    let (channels, m, group, cg, mg) = (shape.channels, shape.m, shape.group, shape.cg, shape.mg);
    let (in_count, kg, p) = (shape.in_count, shape.kg, shape.p);
    if channels % group != 0 || m % group != 0 || m == 0 || kg == 0 || p == 0 {
        return Ok(false);
    }
    let offsets = shape.offsets();
    let gather = Gather::of(&offsets, p, kg, cg * in_count);
    let panels = p.div_ceil(COLS);
    let i32_of = |v: usize| {
        i32::try_from(v).map_err(|_| format!("convolution too large for the f32 tile ({v} bytes)"))
    };
    let tile = |rows: usize, cols: usize| -> Result<Vec<u8>, String> {
        fma_tile::fma_tile(&FmaTile {
            rows,
            cols,
            steps: kg,
            row_stride: i32_of(kg * 4)?,
            out_row: i32_of(p * 4)?,
            bias: if bptr.is_some() {
                Bias::PerRow
            } else {
                Bias::None
            },
            clamp,
        })
    };
    // Micro-kernels: (full row blocks, the rows left) × (full panels, the last partial one).
    let mut kernels = [[None; 2]; 2];
    for (ri, rows) in [(0, if mg >= ROWS { ROWS } else { 0 }), (1, mg % ROWS)] {
        for (ci, cols) in [(0, if p >= COLS { COLS } else { 0 }), (1, p % COLS)] {
            if rows > 0 && cols > 0 {
                kernels[ri][ci] = Some(k.machine_code(&tile(rows, cols)?, 4)?);
            }
        }
    }
    let chunks = row_chunks(panels, mg);
    let plan = Plan {
        kernels,
        mg,
        kg,
        p,
        panels,
        chunks,
    };
    let task = plan.task(k, &gather)?;
    k.form = "wide-f32";
    let runs = k.data(
        gather.runs.iter().flat_map(|r| r.to_le_bytes()).collect(),
        16,
    )?;
    let lanes = k.data(
        gather
            .lanes
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .chain([0; 4])
            .collect(),
        16,
    )?;
    let ws = k.workspace(CONTEXT + MAX_PARTS * plan.panel_bytes());
    let samples = k.input_samples()?;
    k.for_each(samples, |k, n| {
        let xn = emit::addr(k.fb, xptr, n, (channels * in_count * 4) as i64);
        let yn = emit::addr(k.fb, yptr, n, (m * p * 4) as i64);
        for g in 0..group {
            let fb = &mut *k.fb;
            let xg = fb.ins().iadd_imm_s(xn, (g * cg * in_count * 4) as i64);
            let yg = fb.ins().iadd_imm_s(yn, (g * mg * p * 4) as i64);
            let wg = fb.ins().iadd_imm_s(wptr, (g * mg * kg * 4) as i64);
            let bg = match bptr {
                Some(b) => fb.ins().iadd_imm_s(b, (g * mg * 4) as i64),
                None => emit::iconst(fb, 0),
            };
            for (slot, v) in [xg, yg, wg, bg, runs, lanes].into_iter().enumerate() {
                fb.ins().store(emit::mem(), v, ws, (8 * slot) as i32);
            }
            k.parallel_for(
                task,
                ws,
                (chunks * panels) as i64,
                MAX_PARTS,
                (mg * p * kg) as u64,
            )?;
        }
        Ok(())
    })?;
    Ok(true)
}

/// Bytes of the task's context at the start of the workspace (six addresses), before the
/// threads' panels.
const CONTEXT: usize = 64;

/// The most threads one convolution splits across: each gathers its panel into a scratch
/// panel of its own in the workspace.
const MAX_PARTS: usize = 16;

/// Tasks per convolution below which the output channels are split too: with few panels
/// (7×7 outputs are four, the last of one column) ranges of whole panels leave threads
/// idle. Each chunk of channels gathers its panels again, so splitting costs a gather.
const MIN_TASKS: usize = 8;

/// Chunks of row blocks per panel: enough for [`MIN_TASKS`] tasks, at most one per block.
fn row_chunks(panels: usize, mg: usize) -> usize {
    MIN_TASKS.div_ceil(panels).clamp(1, mg.div_ceil(ROWS))
}

/// The shape of one convolution's task.
struct Plan {
    /// Micro-kernels by (full row block, the rows left) × (full panel, the last partial one).
    kernels: [[Option<FuncId>; 2]; 2],
    mg: usize,
    kg: usize,
    p: usize,
    panels: usize,
    /// Chunks of row blocks ([`row_chunks`]).
    chunks: usize,
}

impl Plan {
    /// Bytes of one gathered panel.
    fn panel_bytes(&self) -> usize {
        self.kg * PANEL_STEP as usize
    }

    /// The task over `begin..end` of (chunk, panel) pairs, chunk-major (so each thread's
    /// contiguous range keeps to few chunks, whose weights it reuses across panels), its
    /// context the group's input, output, weight and bias addresses and the gather's
    /// tables: gathers the panel into the thread's scratch panel, then runs the chunk's
    /// row blocks over it, full panels with the 16-column micro-kernels, the last
    /// (partial) one with its own.
    fn task(&self, k: &mut Kernel, gather: &Gather) -> Result<FuncId, String> {
        let (kernels, mg, kg, p) = (self.kernels, self.mg, self.kg, self.p);
        let (panels, chunks) = (self.panels as i64, self.chunks as i64);
        let full_panels = (p / COLS) as i64;
        let full_blocks = (mg / ROWS) as i64;
        let panel_bytes = self.panel_bytes() as i64;
        k.task(|fb, module, [ctx, begin, end, slot]| {
            let [x, y, w, b, runs, lanes] =
                [0, 8, 16, 24, 32, 40].map(|at| fb.ins().load(types::I64, emit::mem(), ctx, at));
            let scratch = emit::addr(fb, ctx, slot, panel_bytes);
            let scratch = fb.ins().iadd_imm_s(scratch, CONTEXT as i64);
            let refs =
                kernels.map(|row| row.map(|f| f.map(|f| module.declare_func_in_func(f, fb.func))));
            emit::for_range(fb, begin, end, 1, |fb, i| {
                let chunk = fb.ins().udiv_imm_u(i, panels);
                let j = fb.ins().urem_imm_u(i, panels);
                let first = emit::addr(fb, runs, j, kg as i64 * 4);
                gather.emit(fb, x, scratch, first, lanes);
                // Full row blocks lo..hi of this chunk, then the partial one in the last.
                let bound = |fb: &mut FunctionBuilder, c: Value| {
                    let t = fb.ins().imul_imm_s(c, full_blocks);
                    fb.ins().udiv_imm_u(t, chunks)
                };
                let lo = bound(fb, chunk);
                let next = fb.ins().iadd_imm_s(chunk, 1);
                let hi = bound(fb, next);
                let is_full = fb.ins().icmp_imm_s(IntCC::SignedLessThan, j, full_panels);
                let ci_blocks = |fb: &mut FunctionBuilder, ci: usize| {
                    let col = emit::addr(fb, y, j, (COLS * 4) as i64);
                    let call = |fb: &mut FunctionBuilder, f, block: Value| {
                        let out = emit::addr(fb, col, block, (ROWS * p * 4) as i64);
                        let rows = emit::addr(fb, w, block, (ROWS * kg * 4) as i64);
                        let bias = emit::addr(fb, b, block, (ROWS * 4) as i64);
                        fb.ins().call(f, &[scratch, rows, out, bias]);
                    };
                    if let Some(f) = refs[0][ci] {
                        emit::for_range(fb, lo, hi, 1, |fb, block| call(fb, f, block));
                    }
                    if let Some(f) = refs[1][ci] {
                        let (last, after) = (fb.create_block(), fb.create_block());
                        let is_last = fb.ins().icmp_imm_s(IntCC::Equal, chunk, chunks - 1);
                        fb.ins().brif(is_last, last, &[], after, &[]);
                        fb.switch_to_block(last);
                        let block = emit::iconst(fb, full_blocks);
                        call(fb, f, block);
                        fb.ins().jump(after, &[]);
                        fb.switch_to_block(after);
                    }
                };
                let (full, partial, after) =
                    (fb.create_block(), fb.create_block(), fb.create_block());
                fb.ins().brif(is_full, full, &[], partial, &[]);
                fb.switch_to_block(full);
                ci_blocks(fb, 0);
                fb.ins().jump(after, &[]);
                fb.switch_to_block(partial);
                ci_blocks(fb, 1);
                fb.ins().jump(after, &[]);
                fb.switch_to_block(after);
            });
            Ok(())
        })
    }
}

/// How the panels are gathered: for each (panel, tap), either a run of 16 input elements
/// `stride` (1 or 2) apart from offset `first`, as `first · 2 + stride − 1` (≥ 0), or
/// −(i + 1) for group `i` of 16 entries in `lanes` (input offsets, −1 for padding and for
/// positions past the last). Stride-2 runs are the strided convolutions' taps inside the
/// padding (the 7×7/2 stem of ResNets: 147 taps of 3 channels, none contiguous).
struct Gather {
    /// Taps per panel.
    taps: usize,
    runs: Vec<i32>,
    lanes: Vec<i32>,
}

impl Gather {
    /// The gather of im2col `offsets` (`p` positions × `kg` taps, -1 in the padding) of an
    /// input of `len` elements (a stride-2 run reads 32 elements, one past its last).
    fn of(offsets: &[i32], p: usize, kg: usize, len: usize) -> Gather {
        let (mut runs, mut lanes) = (Vec::with_capacity(p.div_ceil(COLS) * kg), Vec::new());
        for panel in 0..p.div_ceil(COLS) {
            for t in 0..kg {
                let at = |l: usize| {
                    let pos = panel * COLS + l;
                    if pos < p {
                        offsets[pos * kg + t]
                    } else {
                        -1
                    }
                };
                let first = at(0);
                let strided = |s: i32| {
                    first >= 0
                        && first < i32::MAX / 4
                        && (first as usize + s as usize * COLS) <= len
                        && (1..COLS).all(|l| at(l) == first + s * l as i32)
                };
                match (1..=2).find(|&s| strided(s)) {
                    Some(s) => runs.push(first * 2 + s - 1),
                    None => {
                        runs.push(-1 - (lanes.len() / COLS) as i32);
                        lanes.extend((0..COLS).map(at));
                    }
                }
            }
        }
        Gather {
            taps: kg,
            runs,
            lanes,
        }
    }

    /// Fills the panel at `dst` from the group's input at `x`, the panel's taps' entries
    /// of `runs` at `first`.
    fn emit(&self, fb: &mut FunctionBuilder, x: Value, dst: Value, first: Value, lanes: Value) {
        emit::for_count(fb, self.taps as i64, |fb, t| {
            let run = emit::load_at(fb, types::I32, first, t);
            let dst = emit::addr(fb, dst, t, PANEL_STEP as i64);
            let (copy, strided, spread, done) = (
                fb.create_block(),
                fb.create_block(),
                fb.create_block(),
                fb.create_block(),
            );
            let contiguous = fb.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, run, 0);
            let is_run = fb.create_block();
            fb.ins().brif(contiguous, is_run, &[], spread, &[]);
            fb.switch_to_block(is_run);
            let start = fb.ins().sshr_imm_u(run, 1);
            let start = fb.ins().sextend(types::I64, start);
            let src = emit::addr(fb, x, start, 4);
            let two = fb.ins().band_imm_u(run, 1);
            fb.ins().brif(two, strided, &[], copy, &[]);
            fb.switch_to_block(copy);
            for q in 0..4 {
                let v = fb.ins().load(types::F32X4, emit::mem(), src, 16 * q);
                fb.ins().store(emit::mem(), v, dst, 16 * q);
            }
            fb.ins().jump(done, &[]);
            fb.switch_to_block(strided);
            for q in 0..4 {
                let a = fb.ins().load(types::F32X4, emit::mem(), src, 32 * q);
                let b = fb.ins().load(types::F32X4, emit::mem(), src, 32 * q + 16);
                let v = emit::shuffle_f32(fb, a, b, [0, 2, 4, 6]);
                fb.ins().store(emit::mem(), v, dst, 16 * q);
            }
            fb.ins().jump(done, &[]);
            fb.switch_to_block(spread);
            let group = fb.ins().bnot(run);
            let group = fb.ins().sextend(types::I64, group);
            let entries = emit::addr(fb, lanes, group, (COLS * 4) as i64);
            // Four lanes at a time: the padding's −1 offsets become a mask and offset 0,
            // the loads go into a vector that the mask clears.
            let none = emit::iconst(fb, 0);
            let none = fb.ins().ireduce(types::I32, none);
            let none = fb.ins().splat(types::I32X4, none);
            for q in 0..COLS as i32 / 4 {
                let offs = fb
                    .ins()
                    .load(types::I32X4, emit::constant_mem(), entries, 16 * q);
                let inside = fb.ins().icmp(IntCC::SignedGreaterThanOrEqual, offs, none);
                let safe = fb.ins().band(offs, inside);
                let mut v = fb.ins().bitcast(types::F32X4, MemFlagsData::new(), none);
                for l in 0..4 {
                    let off = fb.ins().extractlane(safe, l);
                    let off = fb.ins().sextend(types::I64, off);
                    let e = emit::load_at(fb, types::F32, x, off);
                    v = fb.ins().insertlane(v, e, l);
                }
                let mask = fb.ins().bitcast(types::F32X4, MemFlagsData::new(), inside);
                let v = fb.ins().band(v, mask);
                fb.ins().store(emit::mem(), v, dst, 16 * q);
            }
            fb.ins().jump(done, &[]);
            fb.switch_to_block(done);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs where sixteen positions read consecutive elements, lane tables elsewhere: a
    /// 1-D convolution over 20 positions with one tap has one run and one partial panel.
    #[test]
    fn gather_runs_and_lanes() {
        let offsets: Vec<i32> = (0..20).collect();
        let g = Gather::of(&offsets, 20, 1, 20);
        assert_eq!(g.runs, vec![0, -1]);
        let mut want: Vec<i32> = (16..20).collect();
        want.extend([-1; 12]);
        assert_eq!(g.lanes, want);
        // Padding inside a panel breaks the run.
        let mut padded = offsets.clone();
        padded[3] = -1;
        assert_eq!(Gather::of(&padded, 20, 1, 20).runs, vec![-1, -2]);
    }

    /// Stride-2 runs start at `first · 2 + 1`, where their 32 elements are inside the input.
    #[test]
    fn gather_stride_two_runs() {
        let offsets: Vec<i32> = (0..16).map(|l| 3 + 2 * l).collect();
        assert_eq!(Gather::of(&offsets, 16, 1, 35).runs, vec![7]);
        assert_eq!(Gather::of(&offsets, 16, 1, 34).runs, vec![-1]);
    }
}
