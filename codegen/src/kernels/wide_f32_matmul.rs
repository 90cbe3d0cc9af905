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
//!
//! Weight-only weights (a constant B that is the dequantized value of 8- or 4-bit weights
//! with block scales, see `dynamic::BlockWeights`) stay 8- or 4-bit in the compiled code,
//! in the panels' order (`[panel][k][16]` bytes, or 8 bytes of two nibbles: column `c` low,
//! `c + 8` high), with their scales per panel (`[panel][block][16]`). Each task unpacks the
//! chunk's panels one reduction block at a time into its own scratch (`scale · q` in f32,
//! the interpreter's product, so the panels hold exactly the dequantized weights) and runs
//! every row tile over them before the next block: as ONNX Runtime's MatMulNBits does, a
//! quarter (int8) or an eighth (int4) of the f32 panels' memory for one conversion per
//! weight per task.

use super::data_address;
use super::dynamic::BlockWeights;
use super::fma_tile::{self, Bias, FmaTile, COLS, PANEL_STEP, ROWS};
use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, FuncRef, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::{DataId, FuncId};
use qlift_ir::{DType, OpKind};
use std::collections::BTreeMap;
use std::ops::Range;

/// Reduction steps per block.
const KC: usize = 128;

/// Panels per column chunk.
const NC: usize = 16;

/// Most parts a product with weights unpacked at run time splits into (each has its own
/// scratch for a chunk's unpacked block, `NC · KC · 64` bytes).
const MAX_PARTS: usize = 4;

/// Where the panels of B come from.
enum Panels {
    /// Packed at compile time: one matrix for all rows.
    Constant(Vec<u8>),
    /// Packed from the operand at run time, one matrix per leading index of A.
    Computed { ptr: Value },
    /// 8- or 4-bit weights unpacked per reduction block at run time.
    Quantized(Quantized),
}

/// Weight-only weights in the panels' order, and how to unpack them (see the module's note).
struct Quantized {
    /// `[panel][k][16]` bytes (int8) or `[panel][k][8]` (int4: column `c` in the low nibble,
    /// `c + 8` in the high one), then 16 bytes of padding for the last 16-byte load.
    values: Vec<u8>,
    /// `[panel][scale row][16]` f32, zero past N.
    scales: Vec<u8>,
    four: bool,
    /// Rows of K per scale, scale rows per panel.
    block: usize,
    scale_rows: usize,
}

impl Quantized {
    /// The panels of `b`'s `[K, N]` weights; `None` unless they are `kk × n` i8 or i4 with
    /// `[ceil(K / block), N]` scales.
    fn pack(b: &BlockWeights, kk: usize, n: usize) -> Result<Option<Quantized>, String> {
        let four = b.q.dtype() == DType::I4;
        let scale_rows = kk.div_ceil(b.block.max(1));
        if !matches!(b.q.dtype(), DType::I8 | DType::I4)
            || b.block == 0
            || b.q.shape() != [kk, n]
            || b.scales.shape() != [scale_rows, n]
        {
            return Ok(None);
        }
        let q = b.q.to_i64_vec()?;
        let s = b.scales.as_f32()?;
        let panels = n.div_ceil(COLS);
        let at = |t: usize, col: usize| if col < n { q[t * n + col] as u8 } else { 0 };
        let row_bytes = if four { COLS / 2 } else { COLS };
        let mut values = Vec::with_capacity(panels * kk * row_bytes + 16);
        for j in 0..panels {
            for t in 0..kk {
                let col = |c: usize| j * COLS + c;
                if four {
                    values.extend(
                        (0..COLS / 2)
                            .map(|c| (at(t, col(c)) & 0x0f) | (at(t, col(c + COLS / 2)) << 4)),
                    );
                } else {
                    values.extend((0..COLS).map(|c| at(t, col(c))));
                }
            }
        }
        values.resize(values.len() + 16, 0);
        let mut scales = Vec::with_capacity(panels * scale_rows * COLS * 4);
        for j in 0..panels {
            for r in 0..scale_rows {
                for col in j * COLS..(j + 1) * COLS {
                    let v = if col < n { s[r * n + col] } else { 0.0 };
                    scales.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        Ok(Some(Quantized {
            values,
            scales,
            four,
            block: b.block,
            scale_rows,
        }))
    }
}

/// Where a task unpacks quantized panels from: the values' and scales' data objects.
struct Unpack {
    values: DataId,
    scales: DataId,
    four: bool,
    block: usize,
    scale_rows: usize,
    /// Bytes of one part's scratch.
    scratch: usize,
}

impl Unpack {
    /// Unpacks reduction block `kb` (`steps` steps) of panels `j0..j1` (values at `q`,
    /// scales at `s`) into `to`, panel `j` at `(j − j0) · KC · 64`: each step's sixteen
    /// values widened to i32, converted to f32 and multiplied by their block's scales.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        fb: &mut FunctionBuilder,
        (q, s, to): (Value, Value, Value),
        panels: Range<usize>,
        kb: usize,
        kk: usize,
        steps: usize,
    ) {
        let row_bytes = (if self.four { COLS / 2 } else { COLS }) as i64;
        let (block, scale_rows, four) = (self.block, self.scale_rows, self.four);
        let count = (panels.end - panels.start) as i64;
        emit::for_count(fb, count, |fb, jj| {
            let j = fb.ins().iadd_imm_s(jj, panels.start as i64);
            let qp = emit::addr(fb, q, j, kk as i64 * row_bytes);
            let qp = fb.ins().iadd_imm_s(qp, (kb * KC) as i64 * row_bytes);
            let sp = emit::addr(fb, s, j, (scale_rows * COLS * 4) as i64);
            let dp = emit::addr(fb, to, jj, KC as i64 * PANEL_STEP as i64);
            emit::for_count(fb, steps as i64, |fb, t| {
                let g = fb.ins().iadd_imm_s(t, (kb * KC) as i64);
                let row = fb.ins().udiv_imm_u(g, block as i64);
                let scale = emit::addr(fb, sp, row, (COLS * 4) as i64);
                let src = emit::addr(fb, qp, t, row_bytes);
                let dst = emit::addr(fb, dp, t, PANEL_STEP as i64);
                let v = fb.ins().load(types::I8X16, emit::constant_mem(), src, 0);
                let halves = if four {
                    // Each byte sign-extended to i16, its low and high nibble by shifts.
                    let w = fb.ins().swiden_low(v);
                    let low = fb.ins().ishl_imm_u(w, 12);
                    let low = fb.ins().sshr_imm_u(low, 12);
                    let high = fb.ins().ishl_imm_u(w, 8);
                    let high = fb.ins().sshr_imm_u(high, 12);
                    [low, high]
                } else {
                    [fb.ins().swiden_low(v), fb.ins().swiden_high(v)]
                };
                for (h, half) in halves.into_iter().enumerate() {
                    let quads = [fb.ins().swiden_low(half), fb.ins().swiden_high(half)];
                    for (i, x) in quads.into_iter().enumerate() {
                        let at = (16 * (2 * h + i)) as i32;
                        let x = fb.ins().fcvt_from_sint(types::F32X4, x);
                        let sv = fb.ins().load(types::F32X4, emit::constant_mem(), scale, at);
                        let y = fb.ins().fmul(sv, x);
                        fb.ins().store(emit::mem(), y, dst, at);
                    }
                }
            });
        });
    }
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
    if a.blocks.is_some() {
        return Ok(false);
    }
    let quantized = match (&b.blocks, kind) {
        (Some(blocks), OpKind::MatMul) => Quantized::pack(blocks, kk, n)?,
        _ => None,
    };
    let source = match (&b.constant, quantized) {
        (Some(_), Some(q)) => Panels::Quantized(q),
        (Some(w), None) => Panels::Constant(pack(w.as_f32()?, kk, n, transposed, alpha)),
        (None, _) => Panels::Computed { ptr: b.ptr },
    };
    // Matrices and their rows: a constant B makes every leading axis rows of one matrix.
    let (matrices_per_sample, rows_per_matrix) = match source {
        Panels::Constant(_) | Panels::Quantized(_) => (1, ad[..r - 1].iter().product::<usize>()),
        Panels::Computed { .. } => (ad[..r - 2].iter().product::<usize>(), ad[r - 2]),
    };
    let clamp = k.float_clamp()?;
    let kernels = Kernels::build(k, kk, n, bias.is_some(), clamp)?;
    k.form = match source {
        Panels::Quantized(_) => "wide-f32-unpack",
        _ => "wide-f32",
    };
    let bias = match bias {
        Some(values) => {
            let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            bytes.resize(panels * COLS * 4, 0);
            k.data(bytes, 64)?
        }
        None => emit::iconst(k.fb, 0),
    };
    // Workspace: the task's context, then a computed B's panels or the parts' scratch
    // for unpacked ones.
    let panels_at = 64;
    let (packed, pack_from, unpack) = match source {
        Panels::Constant(bytes) => (k.data(bytes, 64)?, None, None),
        Panels::Computed { ptr } => {
            let ws = k.workspace(panels_at + panels * kk * PANEL_STEP as usize);
            (k.fb.ins().iadd_imm_s(ws, panels_at as i64), Some(ptr), None)
        }
        Panels::Quantized(q) => {
            let scratch = panels.min(NC) * KC * PANEL_STEP as usize;
            let ws = k.workspace(panels_at + MAX_PARTS * scratch);
            let unpack = Unpack {
                values: k.data_object(q.values, 64)?,
                scales: k.data_object(q.scales, 64)?,
                four: q.four,
                block: q.block,
                scale_rows: q.scale_rows,
                scratch,
            };
            let scratch = k.fb.ins().iadd_imm_s(ws, panels_at as i64);
            (scratch, None, Some(unpack))
        }
    };
    let parts = if unpack.is_some() {
        MAX_PARTS
    } else {
        usize::MAX
    };
    let context = k.workspace(64);
    let task = row_task(k, &kernels, kk, n, unpack)?;
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
        k.parallel_for_value(task, context, tiles, parts, work)
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
/// rows, the result, the panels (with `unpack`, the parts' scratch), the bias and the
/// matrix's row count: per column chunk, per tile, per reduction block, every panel of the
/// chunk; with `unpack`, per column chunk and reduction block, the block unpacked into the
/// part's scratch, then every tile.
fn row_task(
    k: &mut Kernel,
    kernels: &Kernels,
    kk: usize,
    n: usize,
    unpack: Option<Unpack>,
) -> Result<FuncId, String> {
    let panels = n.div_ceil(COLS);
    let full_panels = n / COLS;
    k.task(|fb, module, [ctx, begin, end, part]| {
        let [a, y, packed, bias, rows] =
            [0, 8, 16, 24, 32].map(|at| fb.ins().load(types::I64, emit::mem(), ctx, at));
        let refs: BTreeMap<(usize, usize, usize), FuncRef> = kernels
            .by
            .iter()
            .map(|(&key, &f)| (key, module.declare_func_in_func(f, fb.func)))
            .collect();
        // Tile `t` of `height` rows over panels `j0..j1` (static), reduction blocks `kbs`,
        // panel `j`'s block `kb` at `panel_at(j, kb)`.
        let tile =
            |fb: &mut FunctionBuilder,
             t: Value,
             height: usize,
             (j0, j1): (usize, usize),
             kbs: Range<usize>,
             panel_at: &dyn Fn(&mut FunctionBuilder, Value, usize) -> Value| {
                let first = fb.ins().imul_imm_s(t, ROWS as i64);
                let a_rows = emit::addr(fb, a, first, (kk * 4) as i64);
                let y_rows = emit::addr(fb, y, first, (n * 4) as i64);
                for kb in kbs {
                    let kind = kernels.kind(kb);
                    let a_block = fb.ins().iadd_imm_s(a_rows, (kb * KC * 4) as i64);
                    let call = |fb: &mut FunctionBuilder, f: FuncRef, j: Value| {
                        let panel = panel_at(fb, j, kb);
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
        // Every tile of the task over panels `chunk`, blocks `kbs`: full tiles below
        // `full`; the last tile may be shorter (rows − 6·t of them).
        let full = fb.ins().udiv_imm_u(rows, ROWS as i64);
        let full_end = fb.ins().smin(end, full);
        let tiles =
            |fb: &mut FunctionBuilder,
             chunk: (usize, usize),
             kbs: Range<usize>,
             panel_at: &dyn Fn(&mut FunctionBuilder, Value, usize) -> Value| {
                emit::for_range(fb, begin, full_end, 1, |fb, t| {
                    tile(fb, t, ROWS, chunk, kbs.clone(), panel_at)
                });
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
                    tile(fb, full, height, chunk, kbs.clone(), panel_at);
                    fb.ins().jump(done, &[]);
                    fb.switch_to_block(next);
                }
                fb.ins().jump(done, &[]);
                fb.switch_to_block(done);
                fb.ins().jump(after, &[]);
                fb.switch_to_block(after);
            };
        let Some(unpack) = &unpack else {
            let packed_at = |fb: &mut FunctionBuilder, j: Value, kb: usize| {
                let panel = emit::addr(fb, packed, j, kk as i64 * PANEL_STEP as i64);
                fb.ins()
                    .iadd_imm_s(panel, (kb * KC) as i64 * PANEL_STEP as i64)
            };
            for j0 in (0..panels).step_by(NC) {
                let j1 = (j0 + NC).min(panels);
                tiles(fb, (j0, j1), 0..kernels.blocks, &packed_at);
            }
            return Ok(());
        };
        // A part without tiles unpacks nothing.
        let (work, skip) = (fb.create_block(), fb.create_block());
        let any = fb.ins().icmp(IntCC::SignedLessThan, begin, end);
        fb.ins().brif(any, work, &[], skip, &[]);
        fb.switch_to_block(work);
        let scratch = emit::addr(fb, packed, part, unpack.scratch as i64);
        let (q, s) = (
            data_address(fb, module, unpack.values),
            data_address(fb, module, unpack.scales),
        );
        for j0 in (0..panels).step_by(NC) {
            let j1 = (j0 + NC).min(panels);
            for kb in 0..kernels.blocks {
                let steps = KC.min(kk - kb * KC);
                unpack.emit(fb, (q, s, scratch), j0..j1, kb, kk, steps);
                let unpacked_at = |fb: &mut FunctionBuilder, j: Value, _kb: usize| {
                    let jj = fb.ins().iadd_imm_s(j, -(j0 as i64));
                    emit::addr(fb, scratch, jj, KC as i64 * PANEL_STEP as i64)
                };
                tiles(fb, (j0, j1), kb..kb + 1, &unpacked_at);
            }
        }
        fb.ins().jump(skip, &[]);
        fb.switch_to_block(skip);
        Ok(())
    })
}
