//! The fixed-point requantization epilogue, emitted exactly as `qlift_ir::fixed_point`
//! defines it, for every integer kernel that ends in one: `clamp(zp + ((a · m + 2^(s-1))
//! >> s), lo, hi)` in i64, with `a` an accumulator that fits in i32.

use cranelift_codegen::ir::{types, ConstantData, Endianness, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::fixed_point::{FixedMultiplier, Requant, SumRequant};

/// `zero_point + M · acc` rounded and clamped, as an i32 value; `acc` is i32 or i64 (an
/// i32 accumulator, sign-extended), `m` a compile-time multiplier.
pub(crate) fn requantize(fb: &mut FunctionBuilder, acc: Value, m: FixedMultiplier, zero_point: i32, bounds: (i64, i64)) -> Value {
    let a = widen(fb, acc);
    let scaled = fb.ins().imul_imm_s(a, m.m as i64);
    clamp_shifted(fb, scaled, m.shift, zero_point, bounds)
}

/// Like [`requantize`] with a multiplier and shift known only at run time (loaded from a
/// per-channel table): `m` and `shift` are i64 values.
pub(crate) fn requantize_dynamic(fb: &mut FunctionBuilder, acc: Value, m: Value, shift: Value, zero_point: i32, bounds: (i64, i64)) -> Value {
    let a = widen(fb, acc);
    let scaled = fb.ins().imul(a, m);
    let one = fb.ins().iconst(types::I64, 1);
    let half_shift = fb.ins().iadd_imm_s(shift, -1);
    let half = fb.ins().ishl(one, half_shift);
    let rounded = fb.ins().iadd(scaled, half);
    let shifted = fb.ins().sshr(rounded, shift);
    finish(fb, shifted, zero_point, bounds)
}

/// `zero_point + ((Σ tᵢ · mᵢ + 2^(s-1)) >> s)` clamped, for QAdd's centered terms (i32 or i64).
pub(crate) fn requantize_sum(fb: &mut FunctionBuilder, terms: &[Value], rq: &SumRequant) -> Value {
    let mut sum = fb.ins().iconst(types::I64, 0);
    for (&t, &m) in terms.iter().zip(&rq.multipliers) {
        let t = widen(fb, t);
        let p = fb.ins().imul_imm_s(t, m as i64);
        sum = fb.ins().iadd(sum, p);
    }
    clamp_shifted(fb, sum, rq.shift, rq.zero_point, rq.bounds)
}

/// The multiplier of output channel `c` of a [`Requant`] (one for all when per tensor).
pub(crate) fn channel(rq: &Requant, c: usize) -> FixedMultiplier {
    if rq.multipliers.len() == 1 {
        rq.multipliers[0]
    } else {
        rq.multipliers[c]
    }
}

fn widen(fb: &mut FunctionBuilder, v: Value) -> Value {
    if fb.func.dfg.value_type(v) == types::I64 {
        v
    } else {
        fb.ins().sextend(types::I64, v)
    }
}

fn clamp_shifted(fb: &mut FunctionBuilder, scaled: Value, shift: u32, zero_point: i32, bounds: (i64, i64)) -> Value {
    let rounded = fb.ins().iadd_imm_s(scaled, 1i64 << (shift - 1));
    let shifted = fb.ins().sshr_imm_s(rounded, shift as i64);
    finish(fb, shifted, zero_point, bounds)
}

fn finish(fb: &mut FunctionBuilder, shifted: Value, zero_point: i32, (lo, hi): (i64, i64)) -> Value {
    let y = fb.ins().iadd_imm_s(shifted, zero_point as i64);
    let lo = fb.ins().iconst(types::I64, lo);
    let hi = fb.ins().iconst(types::I64, hi);
    let y = fb.ins().smax(y, lo);
    let y = fb.ins().smin(y, hi);
    fb.ins().ireduce(types::I32, y)
}

/// [`requantize`] of four i32 accumulators at once (the lanes of an i32x4), lane `i` with
/// integer multiplier `ms[i]` and all with one `shift`, as an i32x4 of results; `None` when
/// `shift < 32`, where the lanes must be requantized one by one. The same arithmetic as the
/// scalar form: the i64 products `a · m` come from `pmuldq` (Cranelift selects it for `imul`
/// of `swiden_low`/`swiden_high` i32x4 operands), and since `x >> s = (x >> 32) >> (s − 32)`
/// (floor division composes), the shift takes the high halves of the rounded i64 products
/// and shifts them as i32. With `i64_mul` (the target multiplies i64x2 lanes natively:
/// AVX-512DQ+VL) the multipliers are i64 constants, otherwise both sides are widened from
/// i32 lanes, the form that becomes `pmuldq`.
pub(crate) fn requantize_x4(fb: &mut FunctionBuilder, acc: Value, ms: [i32; 4], shift: u32, zero_point: i32, (lo, hi): (i64, i64), i64_mul: bool) -> Option<Value> {
    if shift < 32 {
        return None;
    }
    let splat = |fb: &mut FunctionBuilder, ty: Type, v: i64| {
        let lane = fb.ins().iconst(ty.lane_type(), v);
        fb.ins().splat(ty, lane)
    };
    let half = splat(fb, types::I64X2, 1i64 << (shift - 1));
    let m32 = (!i64_mul).then(|| vector(fb, ms.iter().flat_map(|m| m.to_le_bytes()).collect()));
    let halves: Vec<Value> = [false, true]
        .into_iter()
        .map(|high| {
            let a = if high { fb.ins().swiden_high(acc) } else { fb.ins().swiden_low(acc) };
            let b = match m32 {
                Some(m) if high => fb.ins().swiden_high(m),
                Some(m) => fb.ins().swiden_low(m),
                None => {
                    let m2: Vec<u8> = ms[if high { 2..4 } else { 0..2 }].iter().flat_map(|&m| (m as i64).to_le_bytes()).collect();
                    let c = fb.func.dfg.constants.insert(ConstantData::from(m2));
                    fb.ins().vconst(types::I64X2, c)
                }
            };
            let product = fb.ins().imul(a, b);
            let rounded = fb.ins().iadd(product, half);
            fb.ins().bitcast(types::I8X16, little_endian(), rounded)
        })
        .collect();
    // Bytes 4..8 and 12..16 of each i64x2: the high 32 bits of the four products.
    let mask: Vec<u8> = [4u8, 12, 20, 28].iter().flat_map(|&b| b..b + 4).collect();
    let mask = fb.func.dfg.immediates.push(ConstantData::from(mask));
    let high = fb.ins().shuffle(halves[0], halves[1], mask);
    let high = fb.ins().bitcast(types::I32X4, little_endian(), high);
    let shifted = fb.ins().sshr_imm_s(high, (shift - 32) as i64);
    let y = if zero_point == 0 {
        shifted
    } else {
        let zp = splat(fb, types::I32X4, zero_point as i64);
        fb.ins().iadd(shifted, zp)
    };
    let (lo, hi) = (splat(fb, types::I32X4, lo), splat(fb, types::I32X4, hi));
    let y = fb.ins().smax(y, lo);
    Some(fb.ins().smin(y, hi))
}

/// The multipliers of channels `channels` of `rq` when they share one shift (see
/// `qlift_ir::fixed_point`), for [`requantize_x4`].
pub(crate) fn lanes(rq: &Requant, channels: [usize; 4]) -> Option<([i32; 4], u32)> {
    let ms = channels.map(|c| channel(rq, c));
    ms.iter().all(|m| m.shift == ms[0].shift).then(|| (ms.map(|m| m.m), ms[0].shift))
}

/// The i32 lanes of `v` (already clamped to the 8-bit range, so the saturating narrowings
/// are exact) as the first four bytes of an i8x16: u8 or, when `signed`, i8.
pub(crate) fn narrow_x4(fb: &mut FunctionBuilder, v: Value, signed: bool) -> Value {
    let halves = fb.ins().snarrow(v, v);
    if signed {
        fb.ins().snarrow(halves, halves)
    } else {
        fb.ins().unarrow(halves, halves)
    }
}

/// An i32x4 constant of `bytes` (16, little-endian lanes).
pub(crate) fn vector(fb: &mut FunctionBuilder, bytes: Vec<u8>) -> Value {
    let c = fb.func.dfg.constants.insert(ConstantData::from(bytes));
    fb.ins().vconst(types::I32X4, c)
}

/// The flags of a bitcast between vector types of different lanes (Cranelift asks for the
/// byte order explicitly).
pub(crate) fn little_endian() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}
