//! f32 matrix products on the 256-bit FMA micro-kernel ([`fma_tile`]), blocked like a BLAS.
//!
//! B is cut into *panels* of sixteen columns (`[panel][k][16]`, zero columns past `N`): a
//! constant B (MatMul `[..., M, K] × [K, N]`, Gemm without `transA`) is packed once at compile
//! time (`alpha` folded in), a computed B (attention's `Q · Kᵀ` and `P · V`, `[..., K, N]`
//! with A's leading axes) is packed per matrix at run time into the workspace. The rows of A
//! are broadcast where they are, six at a time; Gemm's `beta · C` is a per-column bias.
//!
//! Blocking: the reduction runs in blocks of [`KC`] steps (a panel's block, 8 KiB, stays in
//! L1 while a row tile passes over the chunk's panels; later blocks add to the partial sums
//! in the output, the bias goes with the first block and the clamp with the last), and the
//! columns in chunks of [`NC`] panels (the chunk's B block, 128 KiB, stays in L2 while the
//! row tiles pass). Without it a product with `K · N` beyond L2 (MiniLM's 1536 × 384) read
//! all of B from L3 once per six rows. Row tiles are tasks on the thread pool.

use super::fma_tile::{self, Bias, FmaTile, COLS, PANEL_STEP, ROWS};
use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, FuncRef, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::FuncId;
use qlift_ir::{DType, OpKind};
use std::collections::BTreeMap;

/// Reduction steps per block.
const KC: usize = 128;

/// Panels per column chunk.
const NC: usize = 16;

/// Where the panels of B come from.
enum Panels {
    /// Packed at compile time: one matrix for all rows.
    Constant(Vec<u8>),
    /// Packed from the operand at run time, one matrix per leading index of A.
    Computed { ptr: Value },
}

/// Emits the product in this form and returns true when it applies: f32 operands, AVX2
/// with FMA, B constant 2-D or computed with A's leading axes (MatMul); false leaves it to
/// the other forms.
pub(super) fn matmul(k: &mut Kernel) -> Result<bool, String> {
    let kind = k.op.kind;
    if !matches!(kind, OpKind::MatMul | OpKind::Gemm)
        || k.wide.is_none()
        || !k.target_has("has_fma")
    {
        return Ok(false);
    }
    let (a, b, y) = (k.input(0)?, k.input(1)?, k.output(0));
    let floats = [a.ty.dtype, b.ty.dtype, y.ty.dtype]
        .iter()
        .all(|&d| d == DType::F32);
    let (ad, bd, yd) = (a.dims(), b.dims(), y.dims());
    let (aptr, yptr, batched) = (a.ptr, y.ptr, a.batched());
    if !floats || ad.len() < 2 || a.batched() != y.batched() || yd.len() != ad.len() {
        return Ok(false);
    }
    let r = ad.len();
    let computed = b.constant.is_none();
    if computed
        && (kind != OpKind::MatMul
            || bd.len() != r
            || b.batched() != batched
            || bd[..r - 2] != ad[..r - 2]
            || yd[..r - 2] != ad[..r - 2])
    {
        return Ok(false);
    }
    if !computed && bd.len() != 2 {
        return Ok(false);
    }
    let (kk, transposed, alpha) = match kind {
        OpKind::Gemm if k.op.attrs.int("transA")? != 0 || r != 2 => return Ok(false),
        OpKind::Gemm => (
            ad[1],
            k.op.attrs.int("transB")? != 0,
            k.op.attrs.float("alpha")?,
        ),
        _ => (ad[r - 1], false, 1.0),
    };
    let bl = bd.len();
    let n = if transposed { bd[0] } else { bd[bl - 1] };
    if kk != if transposed { bd[1] } else { bd[bl - 2] } || kk == 0 || n == 0 {
        return Ok(false);
    }
    let bias = match (kind, k.optional(2)) {
        (OpKind::Gemm, Some(c)) => match gemm_bias(c, k.op.attrs.float("beta")?, n)? {
            Some(per_column) => Some(per_column),
            None => return Ok(false),
        },
        _ => None,
    };
    let panels = n.div_ceil(COLS);
    let source = match &b.constant {
        Some(w) => Panels::Constant(pack(w.as_f32()?, kk, n, transposed, alpha)),
        None => Panels::Computed { ptr: b.ptr },
    };
    // Matrices and their rows: a constant B makes every leading axis rows of one matrix.
    let (matrices_per_sample, rows_per_matrix) = match source {
        Panels::Constant(_) => (1, ad[..r - 1].iter().product::<usize>()),
        Panels::Computed { .. } => (ad[..r - 2].iter().product::<usize>(), ad[r - 2]),
    };
    let clamp = k.float_clamp()?;
    let kernels = Kernels::build(k, kk, n, bias.is_some(), clamp)?;
    k.form = "wide-f32";
    let bias = match bias {
        Some(values) => {
            let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            bytes.resize(panels * COLS * 4, 0);
            k.data(bytes, 64)?
        }
        None => emit::iconst(k.fb, 0),
    };
    // Workspace: the task's context, then a computed B's panels.
    let panels_at = 64;
    let (packed, pack_from) = match source {
        Panels::Constant(bytes) => (k.data(bytes, 64)?, None),
        Panels::Computed { ptr } => {
            let ws = k.workspace(panels_at + panels * kk * PANEL_STEP as usize);
            (k.fb.ins().iadd_imm_s(ws, panels_at as i64), Some(ptr))
        }
    };
    let context = k.workspace(64);
    let task = row_task(k, &kernels, kk, n)?;
    let (rows, matrices) = match pack_from {
        None => {
            let samples = k.samples(batched);
            let rows = k.fb.ins().imul_imm_s(samples, rows_per_matrix as i64);
            (rows, emit::iconst(k.fb, 1))
        }
        Some(_) => {
            let samples = k.samples(batched);
            let m = k.fb.ins().imul_imm_s(samples, matrices_per_sample as i64);
            (emit::iconst(k.fb, rows_per_matrix as i64), m)
        }
    };
    let tiles = {
        let fb = &mut *k.fb;
        let t = fb.ins().iadd_imm_s(rows, ROWS as i64 - 1);
        fb.ins().udiv_imm_u(t, ROWS as i64)
    };
    let work = (rows_per_matrix * kk * n) as u64;
    k.for_each(matrices, |k, m| {
        let fb = &mut *k.fb;
        let a_at = emit::addr(fb, aptr, m, (rows_per_matrix * kk * 4) as i64);
        let y_at = emit::addr(fb, yptr, m, (rows_per_matrix * n * 4) as i64);
        if let Some(b) = pack_from {
            let b_at = emit::addr(fb, b, m, (kk * n * 4) as i64);
            pack_at_run_time(fb, b_at, packed, kk, n);
        }
        for (at, v) in [(0, a_at), (8, y_at), (16, packed), (24, bias), (32, rows)] {
            fb.ins().store(emit::mem(), v, context, at);
        }
        k.parallel_for_value(task, context, tiles, usize::MAX, work)
    })?;
    Ok(true)
}

/// Gemm's C as one value per column (a constant `[N]`, `[1, N]` or scalar), times beta;
/// `None` for any other C.
fn gemm_bias(c: &super::Operand, beta: f32, n: usize) -> Result<Option<Vec<f32>>, String> {
    let Some(values) = c.constant.as_ref().filter(|_| c.ty.dtype == DType::F32) else {
        return Ok(None);
    };
    let values = values.as_f32()?;
    Ok(match values.len() {
        1 => Some(vec![beta * values[0]; n]),
        len if len == n && c.dims().iter().rev().skip(1).all(|&d| d == 1) => {
            Some(values.iter().map(|v| beta * v).collect())
        }
        _ => None,
    })
}

/// A constant B (`[K, N]`, or `[N, K]` transposed) as panels, times `alpha`.
fn pack(values: &[f32], kk: usize, n: usize, transposed: bool, alpha: f32) -> Vec<u8> {
    let panels = n.div_ceil(COLS);
    let mut packed = Vec::with_capacity(panels * kk * COLS * 4);
    for j in 0..panels {
        for t in 0..kk {
            for col in j * COLS..(j + 1) * COLS {
                let v = match col < n {
                    true if transposed => alpha * values[col * kk + t],
                    true => alpha * values[t * n + col],
                    false => 0.0,
                };
                packed.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    packed
}

/// Packs the `[K, N]` matrix at `b` into panels at `to` (columns past `N` zero), four
/// lanes at a time.
fn pack_at_run_time(fb: &mut FunctionBuilder, b: Value, to: Value, kk: usize, n: usize) {
    let zero = fb.ins().f32const(0.0);
    let zeros = fb.ins().splat(types::F32X4, zero);
    for j in 0..n.div_ceil(COLS) {
        let cols = COLS.min(n - j * COLS);
        let panel = fb
            .ins()
            .iadd_imm_s(to, (j * kk * PANEL_STEP as usize) as i64);
        emit::for_count(fb, kk as i64, |fb, t| {
            let src = emit::addr(fb, b, t, (n * 4) as i64);
            let src = fb.ins().iadd_imm_s(src, (j * COLS * 4) as i64);
            let dst = emit::addr(fb, panel, t, PANEL_STEP as i64);
            for q in 0..COLS / 4 {
                let at = (q * 16) as i32;
                let v = if (q + 1) * 4 <= cols {
                    fb.ins().load(types::F32X4, emit::mem(), src, at)
                } else {
                    let mut v = zeros;
                    for l in 0..cols.saturating_sub(q * 4).min(4) {
                        let x = fb
                            .ins()
                            .load(types::F32, emit::mem(), src, at + 4 * l as i32);
                        v = fb.ins().insertlane(v, x, l as u8);
                    }
                    v
                };
                fb.ins().store(emit::mem(), v, dst, at);
            }
        });
    }
}

/// The micro-kernels one product needs, by tile height (1..=[`ROWS`]), column kind (full
/// panels, the partial last one) and reduction block (first, middle, last; one kernel when
/// the reduction is a single block).
struct Kernels {
    by: BTreeMap<(usize, usize, usize), FuncId>,
    blocks: usize,
}

impl Kernels {
    fn build(
        k: &mut Kernel,
        kk: usize,
        n: usize,
        bias: bool,
        clamp: (f32, f32),
    ) -> Result<Kernels, String> {
        let blocks = kk.div_ceil(KC);
        let i32_of = |v: usize| {
            i32::try_from(v).map_err(|_| format!("matrix too large for the f32 tile ({v} bytes)"))
        };
        let mut by = BTreeMap::new();
        let none = (f32::NEG_INFINITY, f32::INFINITY);
        for rows in 1..=ROWS {
            for (ci, cols) in [(0, if n >= COLS { COLS } else { 0 }), (1, n % COLS)] {
                if cols == 0 {
                    continue;
                }
                for index in Self::kinds(blocks) {
                    let steps = match index {
                        0 => KC.min(kk),
                        1 => KC,
                        _ => kk - (blocks - 1) * KC,
                    };
                    let (first, last) = (index == 0, index == 2 || blocks == 1);
                    let tile = FmaTile {
                        rows,
                        cols,
                        steps,
                        row_stride: i32_of(kk * 4)?,
                        out_row: i32_of(n * 4)?,
                        bias: match (first, bias) {
                            (true, true) => Bias::PerColumn,
                            (true, false) => Bias::None,
                            (false, _) => Bias::Accumulate,
                        },
                        clamp: if last { clamp } else { none },
                    };
                    let f = k.machine_code(&fma_tile::fma_tile(&tile)?, 4)?;
                    by.insert((rows, ci, index), f);
                }
            }
        }
        Ok(Kernels { by, blocks })
    }

    /// The block kinds a reduction of `blocks` blocks uses: 0 first, 1 middle, 2 last.
    fn kinds(blocks: usize) -> Vec<usize> {
        match blocks {
            1 => vec![0],
            2 => vec![0, 2],
            _ => vec![0, 1, 2],
        }
    }

    /// The kind of block `kb`.
    fn kind(&self, kb: usize) -> usize {
        match kb {
            0 => 0,
            _ if kb + 1 == self.blocks => 2,
            _ => 1,
        }
    }
}

/// The task over row tiles `begin..end` of one matrix, its context the addresses of A's
/// rows, the result, the panels, the bias and the matrix's row count: per column chunk,
/// per tile, per reduction block, every panel of the chunk.
fn row_task(k: &mut Kernel, kernels: &Kernels, kk: usize, n: usize) -> Result<FuncId, String> {
    let panels = n.div_ceil(COLS);
    let full_panels = n / COLS;
    k.task(|fb, module, [ctx, begin, end, _]| {
        let [a, y, packed, bias, rows] =
            [0, 8, 16, 24, 32].map(|at| fb.ins().load(types::I64, emit::mem(), ctx, at));
        let refs: BTreeMap<(usize, usize, usize), FuncRef> = kernels
            .by
            .iter()
            .map(|(&key, &f)| (key, module.declare_func_in_func(f, fb.func)))
            .collect();
        // Tile `t` of `height` rows over panels `j0..j1` (static), every block.
        let tile = |fb: &mut FunctionBuilder, t: Value, height: usize, j0: usize, j1: usize| {
            let first = fb.ins().imul_imm_s(t, ROWS as i64);
            let a_rows = emit::addr(fb, a, first, (kk * 4) as i64);
            let y_rows = emit::addr(fb, y, first, (n * 4) as i64);
            for kb in 0..kernels.blocks {
                let kind = kernels.kind(kb);
                let a_block = fb.ins().iadd_imm_s(a_rows, (kb * KC * 4) as i64);
                let call = |fb: &mut FunctionBuilder, f: FuncRef, j: Value| {
                    let panel = emit::addr(fb, packed, j, kk as i64 * PANEL_STEP as i64);
                    let panel = fb
                        .ins()
                        .iadd_imm_s(panel, (kb * KC) as i64 * PANEL_STEP as i64);
                    let out = emit::addr(fb, y_rows, j, (COLS * 4) as i64);
                    let b = emit::addr(fb, bias, j, (COLS * 4) as i64);
                    fb.ins().call(f, &[panel, a_block, out, b]);
                };
                let full_end = j1.min(full_panels);
                if full_end > j0 {
                    let f = refs[&(height, 0, kind)];
                    let (s, e) = (
                        emit::iconst(fb, j0 as i64),
                        emit::iconst(fb, full_end as i64),
                    );
                    emit::for_range(fb, s, e, 1, |fb, j| call(fb, f, j));
                }
                if j1 > full_panels {
                    let f = refs[&(height, 1, kind)];
                    let j = emit::iconst(fb, full_panels as i64);
                    call(fb, f, j);
                }
            }
        };
        // Full tiles below `full`; the last tile may be shorter (rows − 6·t of them).
        let full = fb.ins().udiv_imm_u(rows, ROWS as i64);
        let full_end = fb.ins().smin(end, full);
        for j0 in (0..panels).step_by(NC) {
            let j1 = (j0 + NC).min(panels);
            emit::for_range(fb, begin, full_end, 1, |fb, t| tile(fb, t, ROWS, j0, j1));
            let (last, after) = (fb.create_block(), fb.create_block());
            let has_last = fb.ins().icmp(IntCC::SignedGreaterThan, end, full);
            fb.ins().brif(has_last, last, &[], after, &[]);
            fb.switch_to_block(last);
            let first = fb.ins().imul_imm_s(full, ROWS as i64);
            let rest = fb.ins().isub(rows, first);
            let done = fb.create_block();
            for height in 1..ROWS {
                let (this, next) = (fb.create_block(), fb.create_block());
                let is = fb.ins().icmp_imm_s(IntCC::Equal, rest, height as i64);
                fb.ins().brif(is, this, &[], next, &[]);
                fb.switch_to_block(this);
                tile(fb, full, height, j0, j1);
                fb.ins().jump(done, &[]);
                fb.switch_to_block(next);
            }
            fb.ins().jump(done, &[]);
            fb.switch_to_block(done);
            fb.ins().jump(after, &[]);
            fb.switch_to_block(after);
        }
        Ok(())
    })
}
