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
//! ([`compile_time_value`]), so the product that reads them sees constant f32 weights and
//! packs them into the FMA micro-kernel's panels like any float model's (fp32 speed; the
//! compiled code holds f32 panels, the stored model the 4- or 8-bit weights).

use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::{OpKind, Tensor};

/// DynamicQuantizeLinear over every element of the operand (the batch included, as ONNX
/// computes one range per tensor).
pub(super) fn dynamic_quantize(k: &mut Kernel) -> Result<(), String> {
    let x = k.input(0)?;
    let (xptr, batched, per_sample) = (x.ptr, x.batched(), x.per_sample() as i64);
    let (yptr, sptr, zptr) = (k.outputs[0].ptr, k.outputs[1].ptr, k.outputs[2].ptr);
    k.form = "dynamic";
    let samples = k.samples(batched);
    let fb = &mut *k.fb;
    let total = fb.ins().imul_imm_s(samples, per_sample);
    let zero = fb.ins().f32const(0.0);
    let (lo, hi) = (fb.declare_var(types::F32), fb.declare_var(types::F32));
    fb.def_var(lo, zero);
    fb.def_var(hi, zero);
    emit::for_dynamic(fb, total, |fb, i| {
        let e = emit::load_at(fb, types::F32, xptr, i);
        let (l, h) = (fb.use_var(lo), fb.use_var(hi));
        let below = fb.ins().fcmp(FloatCC::LessThan, e, l);
        let l = fb.ins().select(below, e, l);
        let above = fb.ins().fcmp(FloatCC::GreaterThan, e, h);
        let h = fb.ins().select(above, e, h);
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
    emit::for_dynamic(fb, total, |fb, i| {
        let e = emit::load_at(fb, types::F32, xptr, i);
        let q = quantize(fb, e, scale, zp);
        let none = emit::iconst_of(fb, types::I32, 0);
        let q = fb.ins().select(usable, q, none);
        let q = fb.ins().ireduce(types::I8, q);
        emit::store_at(fb, q, yptr, i);
    });
    Ok(())
}

/// `clamp(round_half_even(e / scale) + zp, 0, 255)` as an i32; NaN gives 0 (the saturating
/// conversion's NaN result, as the interpreter's `as u8`).
fn quantize(fb: &mut FunctionBuilder, e: Value, scale: Value, zp: Value) -> Value {
    let r = fb.ins().fdiv(e, scale);
    let r = fb.ins().nearest(r);
    let r = fb.ins().fadd(r, zp);
    let n = fb.ins().fcvt_to_sint_sat(types::I32, r);
    let lo = emit::iconst_of(fb, types::I32, 0);
    let hi = emit::iconst_of(fb, types::I32, 255);
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

/// The value of a node the program computes once at compile time instead of emitting a
/// kernel: a BlockDequantizeLinear of constants (weight-only weights), dequantized by the
/// interpreter's own function (the same f32 products, so bit-identical to it). `None` for
/// every other node, or when the operands are not constants.
pub(crate) fn compile_time_value(
    kind: OpKind,
    attrs: &qlift_ir::Attrs,
    operands: &[Option<&Tensor>],
) -> Option<Tensor> {
    if kind != OpKind::BlockDequantizeLinear {
        return None;
    }
    let (Some(Some(q)), Some(Some(s))) = (operands.first(), operands.get(1)) else {
        return None;
    };
    let axis = usize::try_from(attrs.int("axis").ok()?).ok()?;
    let block = usize::try_from(attrs.int("block_size").ok()?).ok()?;
    qlift_ir::dequantize_blocks(q, s, axis, block).ok()
}
