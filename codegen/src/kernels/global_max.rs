//! GlobalMaxPool (f32): the maximum of each plane, 16 elements a step.
//!
//! The interpreter (`qlift_ir::ops::nn`) takes IEEE 754-2019's `maximumNumber` over the
//! plane: NaN is skipped (an all-NaN or empty plane gives −inf) and +0 is above −0, so the
//! result does not depend on the order elements are visited. That lets the plane be split
//! across lanes. Each element is compared as an integer key ([`key`]): the f32 bits with
//! the magnitude bits flipped for negative numbers, which orders every non-NaN f32 (−0
//! below +0) as signed i32s do; NaNs are replaced by −inf first. Four i32x4 accumulators
//! of `smax` (`pmaxsd`) then reduce the plane, and the key maps back to the bits.

use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// Elements per step: four 4-lane accumulators (independent, so their `pmaxsd`s overlap).
const STEP: usize = 16;

/// The bits of −inf.
const NEG_INF: i64 = 0xff80_0000;

/// The bits above which (as i32, sign cleared) an f32 is a NaN.
const INF: i64 = 0x7f80_0000;

/// The order key of f32 bits `v` (i32 or i32x4), an involution: `v ^ ((v >> 31) >>> 1)`
/// flips the 31 magnitude bits of negative numbers and keeps positive ones.
fn key(fb: &mut FunctionBuilder, v: Value) -> Value {
    let sign = fb.ins().sshr_imm_s(v, 31);
    let flip = fb.ins().ushr_imm_s(sign, 1);
    fb.ins().bxor(v, flip)
}

/// `c` of type `ty` (i32, or splatted to i32x4).
fn constant(fb: &mut FunctionBuilder, ty: Type, c: i64) -> Value {
    let v = emit::iconst_of(fb, types::I32, c);
    if ty.is_vector() {
        fb.ins().splat(ty, v)
    } else {
        v
    }
}

/// The key of f32 bits `v` (i32 or i32x4) with NaN replaced by −inf.
fn key_skipping_nan(fb: &mut FunctionBuilder, v: Value) -> Value {
    let ty = fb.func.dfg.value_type(v);
    let magnitude = constant(fb, ty, 0x7fff_ffff);
    let magnitude = fb.ins().band(v, magnitude);
    let inf = constant(fb, ty, INF);
    let nan = fb.ins().icmp(IntCC::SignedGreaterThan, magnitude, inf);
    let neg_inf = constant(fb, ty, NEG_INF);
    let v = if ty.is_vector() {
        fb.ins().bitselect(nan, neg_inf, v)
    } else {
        fb.ins().select(nan, neg_inf, v)
    };
    key(fb, v)
}

/// GlobalMaxPool on f32 planes (every axis after the channel is reduced).
pub(super) fn global_max_pool(k: &mut Kernel) -> Result<(), String> {
    let x = k.input(0)?;
    let dims = x.dims();
    if dims.len() < 3 || x.ty.dtype != qlift_ir::DType::F32 {
        return Err(format!(
            "GlobalMaxPool takes f32 with spatial axes, not {}{}",
            x.ty.dtype, x.ty.shape
        ));
    }
    let (channels, inner) = (dims[1] as i64, dims[2..].iter().product::<usize>());
    let (xptr, batched, yptr) = (x.ptr, x.batched(), k.output(0).ptr);
    let accs: Vec<_> = (0..STEP / 4)
        .map(|_| k.fb.declare_var(types::I32X4))
        .collect();
    let tail = k.fb.declare_var(types::I32);
    let samples = k.samples(batched);
    let planes = k.fb.ins().imul_imm_s(samples, channels);
    emit::for_dynamic(k.fb, planes, |fb, p| {
        let start = constant(fb, types::I32X4, key_of(NEG_INF));
        for &a in &accs {
            fb.def_var(a, start);
        }
        let start = constant(fb, types::I32, key_of(NEG_INF));
        fb.def_var(tail, start);
        let plane = emit::addr(fb, xptr, p, 4 * inner as i64);
        emit::for_lanes(fb, inner as i64, STEP as i64, &mut |fb, i, whole| {
            let at = emit::addr(fb, plane, i, 4);
            if !whole {
                let v = fb.ins().load(types::I32, emit::mem(), at, 0);
                let v = key_skipping_nan(fb, v);
                let m = fb.use_var(tail);
                let m = fb.ins().smax(m, v);
                fb.def_var(tail, m);
                return;
            }
            for (q, &a) in accs.iter().enumerate() {
                let v = fb
                    .ins()
                    .load(types::I32X4, emit::mem(), at, (16 * q) as i32);
                let v = key_skipping_nan(fb, v);
                let m = fb.use_var(a);
                let m = fb.ins().smax(m, v);
                fb.def_var(a, m);
            }
        });
        let mut m = fb.use_var(accs[0]);
        for &a in &accs[1..] {
            let v = fb.use_var(a);
            m = fb.ins().smax(m, v);
        }
        let mut max = fb.use_var(tail);
        for lane in 0..4 {
            let v = fb.ins().extractlane(m, lane);
            max = fb.ins().smax(max, v);
        }
        let bits = key(fb, max);
        let f = fb.ins().bitcast(types::F32, MemFlagsData::new(), bits);
        emit::store_at(fb, f, yptr, p);
    });
    Ok(())
}

/// [`key`] of constant bits, at compile time.
fn key_of(bits: i64) -> i64 {
    let v = bits as u32 as i32;
    (v ^ (((v >> 31) as u32) >> 1) as i32) as u32 as i64
}
