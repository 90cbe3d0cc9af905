//! QMatMul `[N, K] × [K, M]` with constant weights on the wide-vector micro-kernel
//! ([`ukernel::pair_tile`] with rows of the left side as its broadcast operand): tiles of up
//! to six rows (samples; eight with AVX-512, [`ukernel::max_rows`]) × sixteen result
//! columns, exact `vpmaddwd` on i16 pairs of the reduction, per-column requantization in
//! ymm registers ([`LaneTable`]).
//!
//! u8 activations are widened to i16 per tile; the i16 activations of int16 layers are
//! already the micro-kernel's operand and are only copied (with their rows padded to whole
//! steps). Their results are u8/i8, i16 (an int16 layer's 16-bit result, stored by the
//! micro-kernel as sixteen i16 a row) or raw i32 sums. The raw activations (not centered)
//! multiply `w − zw` and the input zero point is folded into the biases: in wrapping i32 this
//! is the interpreter's `Σ (x − zx)(w − zw) + bias` exactly, and `passes::quantize::wide`
//! proves an int16 layer's sum fits i32.
//!
//! The tiles, their weights and tasks are [`super::row_tiles`]'s (shared with the
//! convolutions that take output pixels as rows). The weights are packed at compile time as `[column block of 16][pair of k][16][2]` i16
//! (`w − zw`, zero columns and pairs past the ends) and the input zero point folded into
//! the biases (see [`super::packing::packed_rows`]). Per tile of rows, the rows are widened
//! to i16 in the workspace, then the column blocks run as a task on the thread pool.
//!
//! With VNNI (`wide-matmul-vnni`), u8 rows against weights that fit i8 after their zero
//! point skip the widening: the weights pack as `[column block of 16][quad of k][16][4]`
//! i8 and each step broadcasts four u8 of a row into `vpdpbusd` (the u8 operand first).
//! Rows whose length is whole loop iterations (K a multiple of 16) are read where they
//! are; others are copied to workspace rows padded to whole iterations (the padding meets
//! zero weights). i16 activations and wider weights keep the pairs. Results
//! whose row is not a whole number of blocks go through a staging area copied out.
//!
//! MatMulInteger (dynamic quantization's product: u8 activations quantized per call, int8
//! weights without a zero point, an i32 result) takes the same tiles on the raw
//! activations: `Σ (a − za)·w = Σ a·w − za·Σ w` in wrapping i32, so A's zero point, an
//! operand computed per call, becomes a per-column bias `−za·Σ_k w[k, j]` computed once per
//! call and added as the rows leave the tiles (exact, as the interpreter's sum).

use super::packing::packed_rows;
use super::planes::copy_row;
use super::row_tiles::{RowProduct, RowTiles};
use super::ukernel;
use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::fixed_point::Requant;
use qlift_ir::{DType, OpKind};

/// Emits the product in this form and returns true when it applies: a QMatMul of a u8 or
/// i16 `[..., K]` (its leading axes, the batch among them, are rows) by constant weights
/// `[K, M]` into an 8-bit, i16 or i32 `[..., M]`, wide micro-kernels on the target and every
/// column's requantization shift at least 32; or a MatMulInteger of a u8 `[..., K]` by the
/// same weights into i32 with int8 weights, no weight zero point and a scalar activation
/// zero point (see the module's note); false leaves it to the other forms.
pub(super) fn matmul(k: &mut Kernel) -> Result<bool, String> {
    let Some(isa) = k.wide else { return Ok(false) };
    let integer = k.op.kind == OpKind::MatMulInteger;
    if k.op.kind != OpKind::QMatMul && !integer {
        return Ok(false);
    }
    let (a, b, y) = (k.input(0)?, k.input(1)?, k.output(0));
    let (ad, bd, yd) = (a.dims(), b.dims(), y.dims());
    // Leading axes of A (a batch, a sequence) are rows: y's are the same, its last is M.
    let n = ad.len();
    let shapes = n >= 2
        && bd.len() == 2
        && yd.len() == n
        && a.batched() == y.batched()
        && ad[..n - 1] == yd[..n - 1]
        && ad[n - 1] == bd[0]
        && yd[n - 1] == bd[1]
        && ad[n - 1] > 0
        && bd[1] > 0;
    if !shapes
        || !matches!(a.ty.dtype, DType::U8 | DType::I16)
        || !matches!(y.ty.dtype, DType::U8 | DType::I8 | DType::I16 | DType::I32)
        || b.constant.is_none()
    {
        return Ok(false);
    }
    let (kk, m) = (ad[n - 1], bd[1]);
    let rows_per_sample: usize = ad[..n - 1].iter().product();
    let batched = a.batched();
    // MatMulInteger: A's zero point, a scalar u8 (computed per call, or constant).
    let zero_point = match (integer, k.optional(2)) {
        (false, _) | (true, None) => None,
        (true, Some(z)) if z.ty.dtype == DType::U8 && z.per_sample() == 1 && !z.batched() => {
            Some(z.ptr)
        }
        (true, Some(_)) => return Ok(false),
    };
    if integer
        && (k.optional(3).is_some()
            || a.ty.dtype != DType::U8
            || b.ty.dtype != DType::I8
            || y.ty.dtype != DType::I32)
    {
        return Ok(false);
    }
    let sixteen_in = a.ty.dtype == DType::I16;
    let Some(packed) = packed_rows(k, m, kk, |c, t| t * m + c)? else {
        return Ok(false);
    };
    let quant = (k.input(0)?.ty.quant.clone(), k.input(1)?.ty.quant.clone());
    let yty = k.output(0).ty.clone();
    if !integer && (quant.0.is_none() || quant.1.is_none()) {
        return Ok(false);
    }
    // An i32 result (a classifier head before its DequantizeLinear, MatMulInteger) is the
    // raw sums plus the folded bias, added per row after the tiles (see `add_bias_row`).
    let sums = yty.dtype == DType::I32;
    let rq = match (&quant, sums) {
        (_, true) => None,
        ((Some(aq), Some(bq)), false) => Some(Requant::for_product(
            aq,
            bq,
            m,
            &yty,
            k.op.fused_activation()?,
        )?),
        _ => return Ok(false),
    };
    // One micro-kernel and task per tile height: full tiles of `max_rows` rows, then one
    // tile of the rows left (so that each tile reads the weights once).
    let max_rows = ukernel::max_rows(isa);
    let heights: Vec<usize> = (1..=max_rows).collect();
    let product = RowProduct {
        packed: &packed,
        kk,
        sixteen_in,
        rq: rq.as_ref(),
        out: yty.dtype,
    };
    let Some(tiles) = RowTiles::new(k, isa, &product, &heights, false)? else {
        return Ok(false);
    };
    let elem = match yty.dtype {
        DType::I32 => 4,
        DType::I16 => 2,
        _ => 1,
    };
    // u8 rows whose length is whole loop iterations are read where they are.
    let (quads, direct, row_bytes, row_len) =
        (tiles.quads, tiles.direct, tiles.row_bytes, tiles.row_len);
    let in_place = quads && kk == row_len;
    k.form = if quads {
        "wide-matmul-vnni"
    } else {
        "wide-matmul"
    };
    let i32_table = |values: &[i32]| -> Vec<u8> {
        let mut bytes: Vec<u8> = values.iter().flat_map(|b| b.to_le_bytes()).collect();
        bytes.resize(m.next_multiple_of(4) * 4, 0);
        bytes
    };
    let folded = match (sums, zero_point) {
        (true, None) => Some(k.data(i32_table(&packed.folded), 64)?),
        (true, Some(_)) => {
            let column_sums: Vec<i32> = packed
                .rows
                .iter()
                .map(|r| r.iter().map(|&v| v as i32).sum())
                .collect();
            Some(k.data(i32_table(&column_sums), 64)?)
        }
        (false, _) => None,
    };
    // Workspace: widened (or padded) rows | staging rows | the task's context | the call's
    // bias.
    let staging_at = (max_rows * row_len).next_multiple_of(64);
    let context_at =
        staging_at + if direct { 0 } else { max_rows * row_bytes }.next_multiple_of(64);
    let bias_at = context_at + 64;
    let ws = k.workspace(bias_at + m.next_multiple_of(4) * 4);
    let folded = match (folded, zero_point) {
        (Some(column_sums), Some(za)) => {
            let bias = k.fb.ins().iadd_imm_s(ws, bias_at as i64);
            zero_point_bias(k.fb, za, column_sums, bias, m);
            Some(bias)
        }
        (folded, _) => folded,
    };
    let (aptr, yptr) = (k.input(0)?.ptr, k.output(0).ptr);
    let samples = k.samples(batched);
    let samples = k.fb.ins().imul_imm_s(samples, rows_per_sample as i64);
    let context = k.fb.ins().iadd_imm_s(ws, context_at as i64);
    let full_tiles = k.fb.ins().udiv_imm_u(samples, max_rows as i64);
    let rest = k.fb.ins().imul_imm_s(full_tiles, max_rows as i64);
    let rest = k.fb.ins().isub(samples, rest);
    // One tile: rows from `first`, `rows` of them, with its task.
    let run = |k: &mut Kernel, first: Value, rows: usize| -> Result<(), String> {
        let fb = &mut *k.fb;
        // Rows read in place need no copy.
        let copied = if in_place { 0 } else { rows };
        for r in 0..copied {
            let row = fb.ins().iadd_imm_s(first, r as i64);
            let src = emit::addr(fb, aptr, row, (kk * if sixteen_in { 2 } else { 1 }) as i64);
            let dst = fb.ins().iadd_imm_s(ws, (r * row_len) as i64);
            match (sixteen_in, quads) {
                (true, _) => copy_i16_row(fb, src, dst, kk),
                // The padding's bytes multiply zero weights: whatever they hold adds 0.
                (false, true) => copy_row(fb, src, dst, kk),
                (false, false) => widen_row(fb, src, dst, kk),
            }
        }
        let rows_at = match in_place {
            true => emit::addr(fb, aptr, first, kk as i64),
            false => ws,
        };
        let out = if direct {
            emit::addr(fb, yptr, first, (m * elem) as i64)
        } else {
            fb.ins().iadd_imm_s(ws, staging_at as i64)
        };
        tiles.run(k, context, (rows_at, out), rows, 1)?;
        let fb = &mut *k.fb;
        for r in 0..rows {
            let row = fb.ins().iadd_imm_s(first, r as i64);
            let to = emit::addr(fb, yptr, row, (m * elem) as i64);
            let from = fb.ins().iadd_imm_s(out, (r * row_bytes) as i64);
            match folded {
                Some(folded) => add_bias_row(fb, from, folded, to, m),
                None if !direct => copy_row(fb, from, to, m * elem),
                None => {}
            }
        }
        Ok(())
    };
    k.for_each(full_tiles, |k, t| {
        let first = k.fb.ins().imul_imm_s(t, max_rows as i64);
        run(k, first, max_rows)
    })?;
    // The rows left: one tile of exactly that many.
    let first = k.fb.ins().imul_imm_s(full_tiles, max_rows as i64);
    let done = k.fb.create_block();
    for rows in 1..max_rows {
        let (this, next) = (k.fb.create_block(), k.fb.create_block());
        let is = k.fb.ins().icmp_imm_s(IntCC::Equal, rest, rows as i64);
        k.fb.ins().brif(is, this, &[], next, &[]);
        k.fb.switch_to_block(this);
        run(k, first, rows)?;
        k.fb.ins().jump(done, &[]);
        k.fb.switch_to_block(next);
    }
    k.fb.ins().jump(done, &[]);
    k.fb.switch_to_block(done);
    Ok(true)
}

/// `bias[j] = −za · sums[j]` (wrapping i32) for the `n` columns, four a step (`sums` and
/// `bias` padded to a multiple of four), `za` the u8 at `zero_point`.
fn zero_point_bias(
    fb: &mut FunctionBuilder,
    zero_point: Value,
    sums: Value,
    bias: Value,
    n: usize,
) {
    let za = fb.ins().load(types::I8, emit::mem(), zero_point, 0);
    let za = fb.ins().uextend(types::I32, za);
    let za = fb.ins().ineg(za);
    let za = fb.ins().splat(types::I32X4, za);
    emit::for_count(fb, n.div_ceil(4) as i64, |fb, i| {
        let s = emit::addr(fb, sums, i, 16);
        let s = fb.ins().load(types::I32X4, emit::constant_mem(), s, 0);
        let b = fb.ins().imul(s, za);
        let to = emit::addr(fb, bias, i, 16);
        fb.ins().store(emit::mem(), b, to, 0);
    });
}

/// `to[j] = from[j] + bias[j]` for the `n` i32 of a row of sums (wrapping, as the
/// interpreter's `wrap_i32`), four a step; `from` may be `to`.
fn add_bias_row(fb: &mut FunctionBuilder, from: Value, bias: Value, to: Value, n: usize) {
    let at = |i: usize| (4 * i) as i32;
    for i in (0..n / 4 * 4).step_by(4) {
        let x = fb.ins().load(types::I32X4, emit::mem(), from, at(i));
        let b = fb.ins().load(types::I32X4, emit::mem(), bias, at(i));
        let y = fb.ins().iadd(x, b);
        fb.ins().store(emit::mem(), y, to, at(i));
    }
    for i in n / 4 * 4..n {
        let x = fb.ins().load(types::I32, emit::mem(), from, at(i));
        let b = fb.ins().load(types::I32, emit::mem(), bias, at(i));
        let y = fb.ins().iadd(x, b);
        fb.ins().store(emit::mem(), y, to, at(i));
    }
}

/// Widens the `n` u8 at `src` to i16 at `dst`: 16 a step, then one at a time (nothing past
/// `src + n` is read).
fn widen_row(fb: &mut FunctionBuilder, src: Value, dst: Value, n: usize) {
    if n >= 16 {
        emit::for_count(fb, (n / 16) as i64, |fb, i| {
            let from = emit::addr(fb, src, i, 16);
            let v = fb.ins().load(types::I8X16, emit::mem(), from, 0);
            let (lo, hi) = (fb.ins().uwiden_low(v), fb.ins().uwiden_high(v));
            let to = emit::addr(fb, dst, i, 32);
            fb.ins().store(emit::mem(), lo, to, 0);
            fb.ins().store(emit::mem(), hi, to, 16);
        });
    }
    for j in n / 16 * 16..n {
        let v = fb.ins().load(types::I8, emit::mem(), src, j as i32);
        let v = fb.ins().uextend(types::I16, v);
        fb.ins().store(emit::mem(), v, dst, (2 * j) as i32);
    }
}

/// Copies the `n` i16 at `src` to `dst`: 16 bytes a step, then the rest (nothing past
/// `src + 2n` is read).
fn copy_i16_row(fb: &mut FunctionBuilder, src: Value, dst: Value, n: usize) {
    let bytes = 2 * n;
    if bytes >= 16 {
        emit::for_count(fb, (bytes / 16) as i64, |fb, i| {
            let from = emit::addr(fb, src, i, 16);
            let v = fb.ins().load(types::I8X16, emit::mem(), from, 0);
            let to = emit::addr(fb, dst, i, 16);
            fb.ins().store(emit::mem(), v, to, 0);
        });
    }
    let done = (bytes / 16 * 16) as i64;
    let (src, dst) = (
        fb.ins().iadd_imm_s(src, done),
        fb.ins().iadd_imm_s(dst, done),
    );
    copy_row(fb, src, dst, bytes % 16);
}
