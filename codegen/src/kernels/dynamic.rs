//! Dynamic and weight-only quantization kernels: DynamicQuantizeLinear and
//! BlockDequantizeLinear.
//!
//! Both repeat `qlift_ir::ops::dynamic` operation for operation, so that results are
//! bit-identical to the interpreter: the range is kept by ordered comparisons (NaN never
//! replaces a bound), scale and zero point are the same f32 subtraction, division, clamp and
//! round-half-even, and each element divides by the scale in f32.
//!
//! Constant BlockDequantizeLinear nodes (the weights of a weight-only MatMul or Gemm) never
//! reach a kernel: the program dequantizes them once at compile time
//! ([`compile_time_value`]), so the product that reads them sees constant f32 weights,
//! and keeps the 4- or 8-bit weights beside them ([`BlockWeights`]): the FMA form of
//! MatMul stores those in the compiled code and unpacks them into its f32 panels per
//! block of the reduction at run time (a quarter or an eighth of the f32 panels' memory),
//! every other form reads the f32 value.

use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::{OpKind, Tensor};
use std::sync::Arc;

/// Elements per vector step of DynamicQuantizeLinear (four f32x4, one u8x16 stored).
const STEP: i64 = 16;

/// DynamicQuantizeLinear over every element of the operand (the batch included, as ONNX
/// computes one range per tensor). Both passes run [`STEP`] elements a step in f32x4
/// lanes, the elements past the last whole step one at a time: the range's bounds are
/// kept per lane by the same ordered comparisons and merged at the end (the minimum and
/// maximum do not depend on the order, and a NaN never becomes a bound in either form),
/// and each element is divided, rounded and offset by the same f32 operations.
pub(super) fn dynamic_quantize(k: &mut Kernel) -> Result<(), String> {
    let x = k.input(0)?;
    let (xptr, batched, per_sample) = (x.ptr, x.batched(), x.per_sample() as i64);
    let (yptr, sptr, zptr) = (k.outputs[0].ptr, k.outputs[1].ptr, k.outputs[2].ptr);
    k.form = "dynamic";
    let samples = k.samples(batched);
    let fb = &mut *k.fb;
    let total = fb.ins().imul_imm_s(samples, per_sample);
    let whole = fb.ins().band_imm_s(total, -STEP);
    let zero = fb.ins().f32const(0.0);
    let zeros = fb.ins().splat(types::F32X4, zero);
    let (lo, hi) = (fb.declare_var(types::F32X4), fb.declare_var(types::F32X4));
    fb.def_var(lo, zeros);
    fb.def_var(hi, zeros);
    let start = emit::iconst(fb, 0);
    emit::for_range(fb, start, whole, STEP, |fb, i| {
        let at = emit::addr(fb, xptr, i, 4);
        let (mut l, mut h) = (fb.use_var(lo), fb.use_var(hi));
        for q in 0..STEP as i32 / 4 {
            let e = fb.ins().load(types::F32X4, emit::mem(), at, 16 * q);
            l = keep(fb, FloatCC::LessThan, e, l);
            h = keep(fb, FloatCC::GreaterThan, e, h);
        }
        fb.def_var(lo, l);
        fb.def_var(hi, h);
    });
    let (lv, hv) = (fb.use_var(lo), fb.use_var(hi));
    let (lo, hi) = (fb.declare_var(types::F32), fb.declare_var(types::F32));
    let (mut l, mut h) = (zero, zero);
    for lane in 0..4 {
        let e = fb.ins().extractlane(lv, lane);
        l = keep(fb, FloatCC::LessThan, e, l);
        let e = fb.ins().extractlane(hv, lane);
        h = keep(fb, FloatCC::GreaterThan, e, h);
    }
    fb.def_var(lo, l);
    fb.def_var(hi, h);
    emit::for_range(fb, whole, total, 1, |fb, i| {
        let e = emit::load_at(fb, types::F32, xptr, i);
        let (l, h) = (fb.use_var(lo), fb.use_var(hi));
        let l = keep(fb, FloatCC::LessThan, e, l);
        let h = keep(fb, FloatCC::GreaterThan, e, h);
        fb.def_var(lo, l);
        fb.def_var(hi, h);
    });
    let (l, h) = (fb.use_var(lo), fb.use_var(hi));
    let range = fb.ins().fsub(h, l);
    let c255 = fb.ins().f32const(255.0);
    let scale = fb.ins().fdiv(range, c255);
    // Usable: 0 < scale < inf (the interpreter's `usable`).
    let inf = fb.ins().f32const(f32::INFINITY);
    let positive = fb.ins().fcmp(FloatCC::GreaterThan, scale, zero);
    let finite = fb.ins().fcmp(FloatCC::LessThan, scale, inf);
    let usable = fb.ins().band(positive, finite);
    let shifted = fb.ins().fdiv(l, scale);
    let zp = fb.ins().fsub(zero, shifted);
    let zp = fb.ins().fmax(zp, zero);
    let zp = fb.ins().fmin(zp, c255);
    let zp = fb.ins().nearest(zp);
    let zp = fb.ins().select(usable, zp, zero);
    let first = emit::iconst(fb, 0);
    emit::store_at(fb, scale, sptr, first);
    let zp_byte = fb.ins().fcvt_to_uint_sat(types::I32, zp);
    let zp_byte = fb.ins().ireduce(types::I8, zp_byte);
    emit::store_at(fb, zp_byte, zptr, first);
    // An unusable scale quantizes everything to 0: an all-zero (or all-one) mask.
    let mask = fb.ins().uextend(types::I32, usable);
    let mask = fb.ins().ineg(mask);
    let (mask_v, scale_v, zp_v) = (
        fb.ins().splat(types::I32X4, mask),
        fb.ins().splat(types::F32X4, scale),
        fb.ins().splat(types::F32X4, zp),
    );
    let start = emit::iconst(fb, 0);
    emit::for_range(fb, start, whole, STEP, |fb, i| {
        let at = emit::addr(fb, xptr, i, 4);
        let quads: Vec<Value> = (0..STEP as i32 / 4)
            .map(|q| {
                let e = fb.ins().load(types::F32X4, emit::mem(), at, 16 * q);
                let n = quantize(fb, types::I32X4, e, scale_v, zp_v);
                fb.ins().band(n, mask_v)
            })
            .collect();
        let (h0, h1) = (
            fb.ins().snarrow(quads[0], quads[1]),
            fb.ins().snarrow(quads[2], quads[3]),
        );
        let bytes = fb.ins().unarrow(h0, h1);
        let out = emit::addr(fb, yptr, i, 1);
        fb.ins().store(emit::mem(), bytes, out, 0);
    });
    emit::for_range(fb, whole, total, 1, |fb, i| {
        let e = emit::load_at(fb, types::F32, xptr, i);
        let q = quantize(fb, types::I32, e, scale, zp);
        let q = fb.ins().band(q, mask);
        let q = fb.ins().ireduce(types::I8, q);
        emit::store_at(fb, q, yptr, i);
    });
    Ok(())
}

/// `e` where `e cc bound` holds, else `bound` (scalars or f32x4 lanes): an ordered
/// comparison, so a NaN `e` never replaces the bound.
fn keep(fb: &mut FunctionBuilder, cc: FloatCC, e: Value, bound: Value) -> Value {
    let c = fb.ins().fcmp(cc, e, bound);
    if fb.func.dfg.value_type(e).is_vector() {
        let mask = fb.ins().bitcast(types::F32X4, MemFlagsData::new(), c);
        fb.ins().bitselect(mask, e, bound)
    } else {
        fb.ins().select(c, e, bound)
    }
}

/// `clamp(round_half_even(e / scale) + zp, 0, 255)` as an `int` (i32 or i32x4 lanes of f32
/// `e`, `scale`, `zp` alike); NaN gives 0 (the saturating conversion's NaN result, as the
/// interpreter's `as u8`).
fn quantize(fb: &mut FunctionBuilder, int: Type, e: Value, scale: Value, zp: Value) -> Value {
    let r = fb.ins().fdiv(e, scale);
    let r = fb.ins().nearest(r);
    let r = fb.ins().fadd(r, zp);
    let n = fb.ins().fcvt_to_sint_sat(int, r);
    let (lo, hi) = (
        emit::iconst_of(fb, types::I32, 0),
        emit::iconst_of(fb, types::I32, 255),
    );
    let (lo, hi) = if int.is_vector() {
        (fb.ins().splat(int, lo), fb.ins().splat(int, hi))
    } else {
        (lo, hi)
    };
    let n = fb.ins().smax(n, lo);
    fb.ins().smin(n, hi)
}

/// BlockDequantizeLinear computed at run time (operands that are not constants; constant
/// ones are folded by [`compile_time_value`]): `scale[block] · q` element by element.
pub(super) fn dequantize_blocks(k: &mut Kernel) -> Result<(), String> {
    let (q, s, y) = (k.input(0)?, k.input(1)?, k.output(0));
    if q.batched() || s.batched() {
        return Err("block-quantized values cannot have the batch axis".to_string());
    }
    let axis = usize::try_from(k.op.attrs.int("axis")?).map_err(|_| "axis must be >= 0")?;
    let block = usize::try_from(k.op.attrs.int("block_size")?)
        .ok()
        .filter(|&b| b > 0)
        .ok_or("block_size must be positive")?;
    let dims = q.dims();
    if axis >= dims.len() {
        return Err(format!("axis {axis} is out of range"));
    }
    let (outer, extent) = (dims[..axis].iter().product::<usize>(), dims[axis]);
    let inner: usize = dims[axis + 1..].iter().product();
    let blocks = extent.div_ceil(block) as i64;
    let (qptr, sptr, yptr) = (q.ptr, s.ptr, y.ptr);
    k.form = "dequantize-blocks";
    let fb = &mut *k.fb;
    emit::for_count(fb, outer as i64, |fb, o| {
        emit::for_count(fb, extent as i64, |fb, a| {
            // Scale row (o · blocks + a / block), element row (o · extent + a).
            let b = fb.ins().udiv_imm_u(a, block as i64);
            let srow = fb.ins().imul_imm_s(o, blocks);
            let srow = fb.ins().iadd(srow, b);
            let row = fb.ins().imul_imm_s(o, extent as i64);
            let row = fb.ins().iadd(row, a);
            let (sbase, base) = (
                fb.ins().imul_imm_s(srow, inner as i64),
                fb.ins().imul_imm_s(row, inner as i64),
            );
            emit::for_count(fb, inner as i64, |fb, j| {
                let si = fb.ins().iadd(sbase, j);
                let i = fb.ins().iadd(base, j);
                let scale = emit::load_at(fb, types::F32, sptr, si);
                let v = emit::load_at(fb, types::I8, qptr, i);
                let v = fb.ins().sextend(types::I32, v);
                let v = fb.ins().fcvt_from_sint(types::F32, v);
                let out = fb.ins().fmul(scale, v);
                emit::store_at(fb, out, yptr, i);
            });
        });
    });
    Ok(())
}

/// The 4- or 8-bit weights and block scales behind a weight-only constant (`[K, N]`,
/// blocks along K): the forms that can unpack them at run time keep these in the compiled
/// code instead of the f32 value (see `wide_f32_matmul`).
#[derive(Debug)]
pub(crate) struct BlockWeights {
    /// `[K, N]` i8 or i4 values (one per byte).
    pub q: Arc<Tensor>,
    /// `[ceil(K / block), N]` f32 scales.
    pub scales: Arc<Tensor>,
    /// Rows of K per scale.
    pub block: usize,
}

/// The value of a node the program computes once at compile time instead of emitting a
/// kernel: a BlockDequantizeLinear of constants (weight-only weights), dequantized by the
/// interpreter's own function (the same f32 products, so bit-identical to it), with the
/// quantized weights it came from when they are `[K, N]` in blocks along K. `None` for
/// every other node, or when the operands are not constants.
pub(crate) fn compile_time_value(
    kind: OpKind,
    attrs: &qlift_ir::Attrs,
    operands: &[Option<&Arc<Tensor>>],
) -> Option<(Tensor, Option<BlockWeights>)> {
    if kind != OpKind::BlockDequantizeLinear {
        return None;
    }
    let (Some(Some(q)), Some(Some(s))) = (operands.first(), operands.get(1)) else {
        return None;
    };
    let axis = usize::try_from(attrs.int("axis").ok()?).ok()?;
    let block = usize::try_from(attrs.int("block_size").ok()?).ok()?;
    let value = qlift_ir::dequantize_blocks(q, s, axis, block).ok()?;
    let blocks = (axis == 0 && q.shape().len() == 2).then(|| BlockWeights {
        q: Arc::clone(q),
        scales: Arc::clone(s),
        block,
    });
    Some((value, blocks))
}
