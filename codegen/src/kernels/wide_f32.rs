//! f32 convolutions on the 256-bit FMA micro-kernel ([`fma_tile`]): per sample and group,
//! the input is gathered into *panels* of sixteen output positions (`[panel][tap][16]`,
//! one 64-byte row per tap), and each tile of six output channels × one panel is one
//! micro-kernel call that broadcasts the weights, read where they are (`[M][C/g · kernel]`
//! is already six contiguous rows), and adds the bias and the fused activation's clamp.
//!
//! The gather is a table of runs: a panel's tap whose sixteen positions read sixteen
//! consecutive input elements (stride 1 along the last axis, inside the padding) is one
//! 64-byte copy; any other is sixteen loads through a table of per-position offsets, padding
//! and positions past the end read as 0.
//!
//! Panels are tasks on the thread pool, so one sample's convolution uses every thread.
//!
//! Matrix products use the same micro-kernel the other way round ([`super::wide_f32_matmul`]).

use super::fma_tile::{self, Bias, FmaTile, COLS, PANEL_STEP, ROWS};
use super::im2col::{fma_float_conv, ConvShape};
use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
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
    let gather = Gather::of(&offsets, p, kg);
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
    let task = panel_task(k, kernels, mg, kg, p)?;
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
    let panel_bytes = panels * kg * PANEL_STEP as usize;
    let ws = k.workspace(panel_bytes + 64);
    let context = k.fb.ins().iadd_imm_s(ws, panel_bytes as i64);
    let samples = k.input_samples()?;
    k.for_each(samples, |k, n| {
        let xn = emit::addr(k.fb, xptr, n, (channels * in_count * 4) as i64);
        let yn = emit::addr(k.fb, yptr, n, (m * p * 4) as i64);
        for g in 0..group {
            let fb = &mut *k.fb;
            let xg = fb.ins().iadd_imm_s(xn, (g * cg * in_count * 4) as i64);
            gather.emit(fb, xg, ws, runs, lanes);
            let yg = fb.ins().iadd_imm_s(yn, (g * mg * p * 4) as i64);
            let wg = fb.ins().iadd_imm_s(wptr, (g * mg * kg * 4) as i64);
            let bg = match bptr {
                Some(b) => fb.ins().iadd_imm_s(b, (g * mg * 4) as i64),
                None => emit::iconst(fb, 0),
            };
            for (slot, v) in [ws, yg, wg, bg].into_iter().enumerate() {
                fb.ins().store(emit::mem(), v, context, (8 * slot) as i32);
            }
            k.parallel_for(
                task,
                context,
                panels as i64,
                usize::MAX,
                (mg * p * kg) as u64,
            )?;
        }
        Ok(())
    })?;
    Ok(true)
}

/// The task over panels `begin..end` of one sample and group, its context the panels,
/// output, weight and bias addresses: every row block of each panel, full panels with the
/// 16-column micro-kernels, the last (partial) one with its own.
fn panel_task(
    k: &mut Kernel,
    kernels: [[Option<FuncId>; 2]; 2],
    mg: usize,
    kg: usize,
    p: usize,
) -> Result<FuncId, String> {
    let full_panels = (p / COLS) as i64;
    let full_blocks = mg / ROWS;
    k.task(|fb, module, [ctx, begin, end, _]| {
        let [ws, y, w, b] =
            [0, 8, 16, 24].map(|at| fb.ins().load(types::I64, emit::mem(), ctx, at));
        let refs =
            kernels.map(|row| row.map(|f| f.map(|f| module.declare_func_in_func(f, fb.func))));
        // Every row block of panel `j` with the micro-kernels of column kind `ci`.
        let blocks = |fb: &mut FunctionBuilder, j: Value, ci: usize| {
            let panel = emit::addr(fb, ws, j, kg as i64 * PANEL_STEP as i64);
            let col = emit::addr(fb, y, j, (COLS * 4) as i64);
            let call = |fb: &mut FunctionBuilder, f, block: Value| {
                let out = emit::addr(fb, col, block, (ROWS * p * 4) as i64);
                let rows = emit::addr(fb, w, block, (ROWS * kg * 4) as i64);
                let bias = emit::addr(fb, b, block, (ROWS * 4) as i64);
                fb.ins().call(f, &[panel, rows, out, bias]);
            };
            if let Some(f) = refs[0][ci] {
                emit::for_count(fb, full_blocks as i64, |fb, block| call(fb, f, block));
            }
            if let Some(f) = refs[1][ci] {
                let block = emit::iconst(fb, full_blocks as i64);
                call(fb, f, block);
            }
        };
        let limit = emit::iconst(fb, full_panels);
        let full_end = fb.ins().smin(end, limit);
        emit::for_range(fb, begin, full_end, 1, |fb, j| blocks(fb, j, 0));
        if p % COLS != 0 {
            let (last, after) = (fb.create_block(), fb.create_block());
            let has_last = fb.ins().icmp(IntCC::SignedGreaterThan, end, limit);
            fb.ins().brif(has_last, last, &[], after, &[]);
            fb.switch_to_block(last);
            blocks(fb, limit, 1);
            fb.ins().jump(after, &[]);
            fb.switch_to_block(after);
        }
        Ok(())
    })
}

/// How the panels are gathered: for each (panel, tap), either the first input offset of a
/// run of 16 consecutive elements (≥ 0), or −(i + 1) for group `i` of 16 entries in `lanes`
/// (input offsets, −1 for padding and for positions past the last).
struct Gather {
    runs: Vec<i32>,
    lanes: Vec<i32>,
}

impl Gather {
    /// The gather of im2col `offsets` (`p` positions × `kg` taps, -1 in the padding).
    fn of(offsets: &[i32], p: usize, kg: usize) -> Gather {
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
                if first >= 0 && (1..COLS).all(|l| at(l) == first + l as i32) {
                    runs.push(first);
                } else {
                    runs.push(-1 - (lanes.len() / COLS) as i32);
                    lanes.extend((0..COLS).map(at));
                }
            }
        }
        Gather { runs, lanes }
    }

    /// Fills the panels at `ws` from the group's input at `x`.
    fn emit(&self, fb: &mut FunctionBuilder, x: Value, ws: Value, runs: Value, lanes: Value) {
        emit::for_count(fb, self.runs.len() as i64, |fb, e| {
            let run = emit::load_at(fb, types::I32, runs, e);
            let dst = emit::addr(fb, ws, e, PANEL_STEP as i64);
            let (copy, spread, done) = (fb.create_block(), fb.create_block(), fb.create_block());
            let contiguous = fb.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, run, 0);
            fb.ins().brif(contiguous, copy, &[], spread, &[]);
            fb.switch_to_block(copy);
            let start = fb.ins().sextend(types::I64, run);
            let src = emit::addr(fb, x, start, 4);
            for q in 0..4 {
                let v = fb.ins().load(types::F32X4, emit::mem(), src, 16 * q);
                fb.ins().store(emit::mem(), v, dst, 16 * q);
            }
            fb.ins().jump(done, &[]);
            fb.switch_to_block(spread);
            let group = fb.ins().bnot(run);
            let group = fb.ins().sextend(types::I64, group);
            let entries = emit::addr(fb, lanes, group, (COLS * 4) as i64);
            let zero = fb.ins().f32const(0.0);
            let origin = emit::iconst(fb, 0);
            for l in 0..COLS as i32 {
                let off = fb
                    .ins()
                    .load(types::I32, emit::constant_mem(), entries, 4 * l);
                let outside = fb.ins().icmp_imm_s(IntCC::SignedLessThan, off, 0);
                let off = fb.ins().sextend(types::I64, off);
                let safe = fb.ins().select(outside, origin, off);
                let v = emit::load_at(fb, types::F32, x, safe);
                let v = fb.ins().select(outside, zero, v);
                fb.ins().store(emit::mem(), v, dst, 4 * l);
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
        let g = Gather::of(&offsets, 20, 1);
        assert_eq!(g.runs, vec![0, -1]);
        let mut want: Vec<i32> = (16..20).collect();
        want.extend([-1; 12]);
        assert_eq!(g.lanes, want);
        // Padding inside a panel breaks the run.
        let mut padded = offsets.clone();
        padded[3] = -1;
        assert_eq!(Gather::of(&padded, 20, 1).runs, vec![-1, -2]);
    }
}
