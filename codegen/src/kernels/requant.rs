//! The fixed-point requantization epilogue, emitted exactly as `qlift_ir::fixed_point`
//! defines it, for every integer kernel that ends in one: `clamp(zp + ((a · m + 2^(s-1))
//! >> s), lo, hi)` in i64, with `a` an accumulator that fits in i32.
//!
//! Scalar forms ([`requantize`], [`requantize_dynamic`], [`requantize_sum`]) compute it in
//! i64 registers. The element-wise rescale kernels (Requantize, QAdd, QConcat, the global
//! pool's epilogue) use [`VectorRequant`] where it is exact, which computes the same values
//! for 16 8-bit lanes at once with 16- and 32-bit SIMD arithmetic; [`load_centered`] gives
//! it 16 centered 8-bit elements.

use crate::emit;
use cranelift_codegen::ir::{
    types, ConstantData, Endianness, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::fixed_point::{FixedMultiplier, Requant, SumRequant};
use qlift_ir::DType;

/// Elements per vector step of the rescale kernels: 16 8-bit lanes, one 128-bit store.
pub(crate) const LANES: usize = 16;

/// `zero_point + M · acc` rounded and clamped, as an i32 value; `acc` is i32 or i64 (an
/// i32 accumulator, sign-extended), `m` a compile-time multiplier.
pub(crate) fn requantize(
    fb: &mut FunctionBuilder,
    acc: Value,
    m: FixedMultiplier,
    zero_point: i32,
    bounds: (i64, i64),
) -> Value {
    let a = widen(fb, acc);
    let scaled = fb.ins().imul_imm_s(a, m.m as i64);
    clamp_shifted(fb, scaled, m.shift, zero_point, bounds)
}

/// Like [`requantize`] with a multiplier and shift known only at run time (loaded from a
/// per-channel table): `m` and `shift` are i64 values.
pub(crate) fn requantize_dynamic(
    fb: &mut FunctionBuilder,
    acc: Value,
    m: Value,
    shift: Value,
    zero_point: i32,
    bounds: (i64, i64),
) -> Value {
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

fn clamp_shifted(
    fb: &mut FunctionBuilder,
    scaled: Value,
    shift: u32,
    zero_point: i32,
    bounds: (i64, i64),
) -> Value {
    let rounded = fb.ins().iadd_imm_s(scaled, 1i64 << (shift - 1));
    let shifted = fb.ins().sshr_imm_s(rounded, shift as i64);
    finish(fb, shifted, zero_point, bounds)
}

fn finish(
    fb: &mut FunctionBuilder,
    shifted: Value,
    zero_point: i32,
    (lo, hi): (i64, i64),
) -> Value {
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
pub(crate) fn requantize_x4(
    fb: &mut FunctionBuilder,
    acc: Value,
    ms: [i32; 4],
    shift: u32,
    zero_point: i32,
    bounds: (i64, i64),
    i64_mul: bool,
) -> Option<Value> {
    if shift < 32 {
        return None;
    }
    let half = splat(fb, types::I64X2, 1i64 << (shift - 1));
    let m32 = (!i64_mul).then(|| vector(fb, ms.iter().flat_map(|m| m.to_le_bytes()).collect()));
    let halves = [false, true].map(|high| {
        let a = if high {
            fb.ins().swiden_high(acc)
        } else {
            fb.ins().swiden_low(acc)
        };
        let b = match m32 {
            Some(m) if high => fb.ins().swiden_high(m),
            Some(m) => fb.ins().swiden_low(m),
            None => {
                let m2: Vec<u8> = ms[if high { 2..4 } else { 0..2 }]
                    .iter()
                    .flat_map(|&m| (m as i64).to_le_bytes())
                    .collect();
                let c = fb.func.dfg.constants.insert(ConstantData::from(m2));
                fb.ins().vconst(types::I64X2, c)
            }
        };
        let product = fb.ins().imul(a, b);
        fb.ins().iadd(product, half)
    });
    let high = high_words(fb, halves);
    let shifted = fb.ins().sshr_imm_s(high, (shift - 32) as i64);
    Some(offset_and_clamp(fb, shifted, zero_point, bounds))
}

/// [`requantize_x4`] with one multiplier for the four lanes known only at run time (a
/// per-channel table read in a loop over channels): `m` (i32), `half = 2^(shift-1)` (i64)
/// and `shift_32 = shift - 32` (i32) are scalar values, the shift at least 32.
pub(crate) fn requantize_x4_dynamic(
    fb: &mut FunctionBuilder,
    acc: Value,
    m: Value,
    half: Value,
    shift_32: Value,
    zero_point: i32,
    bounds: (i64, i64),
) -> Value {
    let m = fb.ins().splat(types::I32X4, m);
    let half = fb.ins().splat(types::I64X2, half);
    let halves = [false, true].map(|high| {
        let (a, b) = if high {
            (fb.ins().swiden_high(acc), fb.ins().swiden_high(m))
        } else {
            (fb.ins().swiden_low(acc), fb.ins().swiden_low(m))
        };
        let product = fb.ins().imul(a, b);
        fb.ins().iadd(product, half)
    });
    let high = high_words(fb, halves);
    let shifted = fb.ins().sshr(high, shift_32);
    offset_and_clamp(fb, shifted, zero_point, bounds)
}

/// A per-channel table for [`requantize_x4_dynamic`] in kernels that loop over output
/// channels at run time (so that code size does not grow with the channel count): one
/// record of [`ChannelTable::RECORD`] bytes per channel, bias (i32), multiplier (i32),
/// shift − 32 (i32), padding, 2^(shift−1) (i64), padding.
pub(crate) struct ChannelTable;

/// One channel's parameters loaded from a [`ChannelTable`].
pub(crate) struct ChannelParams {
    /// The (folded) bias, i32.
    pub bias: Value,
    /// The multiplier (i32), 2^(shift−1) (i64) and shift − 32 (i32).
    pub m: Value,
    pub half: Value,
    pub shift_32: Value,
}

impl ChannelTable {
    /// Bytes per channel.
    pub const RECORD: usize = 32;

    /// The table's bytes for channels with `biases` and the multipliers of `rq`, or `None`
    /// when a channel's shift is below 32 (which [`requantize_x4_dynamic`] does not take).
    pub fn bytes(rq: &Requant, biases: &[i32]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(biases.len() * Self::RECORD);
        for (c, &bias) in biases.iter().enumerate() {
            let m = channel(rq, c);
            if m.shift < 32 {
                return None;
            }
            out.extend_from_slice(&bias.to_le_bytes());
            out.extend_from_slice(&m.m.to_le_bytes());
            out.extend_from_slice(&((m.shift - 32) as i32).to_le_bytes());
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&(1i64 << (m.shift - 1)).to_le_bytes());
            out.extend_from_slice(&[0; 8]);
        }
        Some(out)
    }

    /// Loads channel `c`'s record (an i64 index) from the table at `table`.
    pub fn load(fb: &mut FunctionBuilder, table: Value, c: Value) -> ChannelParams {
        let record = emit::addr(fb, table, c, Self::RECORD as i64);
        let ro = emit::constant_mem();
        ChannelParams {
            bias: fb.ins().load(types::I32, ro, record, 0),
            m: fb.ins().load(types::I32, ro, record, 4),
            shift_32: fb.ins().load(types::I32, ro, record, 8),
            half: fb.ins().load(types::I64, ro, record, 16),
        }
    }
}

impl ChannelParams {
    /// [`requantize_x4_dynamic`] of `acc` (the bias not added) with these parameters.
    pub fn requantize_x4(
        &self,
        fb: &mut FunctionBuilder,
        acc: Value,
        zero_point: i32,
        bounds: (i64, i64),
    ) -> Value {
        requantize_x4_dynamic(
            fb,
            acc,
            self.m,
            self.half,
            self.shift_32,
            zero_point,
            bounds,
        )
    }
}

/// The high 32 bits of the four i64 lanes of `halves` (two i64x2), as an i32x4.
fn high_words(fb: &mut FunctionBuilder, halves: [Value; 2]) -> Value {
    let bytes = halves.map(|h| fb.ins().bitcast(types::I8X16, little_endian(), h));
    // Bytes 4..8 and 12..16 of each i64x2.
    let mask: Vec<u8> = [4u8, 12, 20, 28].iter().flat_map(|&b| b..b + 4).collect();
    let mask = fb.func.dfg.immediates.push(ConstantData::from(mask));
    let high = fb.ins().shuffle(bytes[0], bytes[1], mask);
    fb.ins().bitcast(types::I32X4, little_endian(), high)
}

/// `clamp(v + zero_point, lo, hi)` in i32x4 lanes.
fn offset_and_clamp(
    fb: &mut FunctionBuilder,
    v: Value,
    zero_point: i32,
    (lo, hi): (i64, i64),
) -> Value {
    let y = if zero_point == 0 {
        v
    } else {
        let zp = splat(fb, types::I32X4, zero_point as i64);
        fb.ins().iadd(v, zp)
    };
    let (lo, hi) = (splat(fb, types::I32X4, lo), splat(fb, types::I32X4, hi));
    let y = fb.ins().smax(y, lo);
    fb.ins().smin(y, hi)
}

/// The multipliers of channels `channels` of `rq` when they share one shift (see
/// `qlift_ir::fixed_point`), for [`requantize_x4`].
pub(crate) fn lanes(rq: &Requant, channels: [usize; 4]) -> Option<([i32; 4], u32)> {
    let ms = channels.map(|c| channel(rq, c));
    ms.iter()
        .all(|m| m.shift == ms[0].shift)
        .then(|| (ms.map(|m| m.m), ms[0].shift))
}

/// The i32 lanes of `v` (already clamped to the 8-bit range, so the saturating narrowings
/// are exact) as the first four bytes of an i8x16: u8 or, when `signed`, i8.
pub(crate) fn narrow_x4(fb: &mut FunctionBuilder, v: Value, signed: bool) -> Value {
    narrow_x8(fb, v, v, signed)
}

/// The lanes of two i32x4 (already clamped to the 8-bit range) as the first eight bytes of
/// an i8x16 (`a`'s four, then `b`'s): u8 or, when `signed`, i8.
pub(crate) fn narrow_x8(fb: &mut FunctionBuilder, a: Value, b: Value, signed: bool) -> Value {
    let halves = fb.ins().snarrow(a, b);
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

/// [`requantize_sum`] for 16 lanes at once, bit-identical to it where [`VectorRequant::new`]
/// accepts the parameters (every realistic rescale: shifts 17..=47, terms within i16).
///
/// How, without 64-bit lanes (x86 has no 64-bit arithmetic shift below AVX-512, and its
/// 64-bit multiplies are slow or missing): each multiplier is split as `m = h·2^16 + l`
/// with `h` and `l` signed 16-bit (`l` in `[-2^15, 2^15)`; where `h` would be `2^15`, the
/// term is negated and so are `h` and `l`), so `Σ tᵢ·mᵢ = H·2^16 + L` with `H = Σ tᵢ·hᵢ`
/// and `L = Σ tᵢ·lᵢ` exact in i32. Terms are interleaved in pairs of 16-bit
/// lanes so that one `pmaddwd` (i16 pair products summed into i32 lanes) computes two
/// terms' share of `H` or `L`. With `k = s - 16`, floors compose:
///
/// ```text
/// (H·2^16 + L + 2^(s-1)) >> s  =  (H + 2^(k-1) + (L >> 16)) >> k
/// ```
///
/// all in i32 lanes (the zero point is folded into the constant as `zp·2^k` when it fits,
/// since adding a multiple of `2^k` commutes with the floor). The saturating packs to 8 bits
/// then clamp to the dtype's range, and narrower bounds (a fused activation) are one
/// `max`/`min` on the packed bytes. About 3 instructions per element for QAdd; a form with
/// i64x2 products (`pmuldq`/`vpmullq`, then gathering the shifted dwords) took 2.9× as
/// long on digits_mobile's QAdd.
pub(crate) struct VectorRequant {
    /// `hᵢ`, `lᵢ` of each multiplier, an even count (a zero term pads an odd one).
    high: Vec<i16>,
    low: Vec<i16>,
    /// Terms to negate first (their `hᵢ`, `lᵢ` are negated so that `hᵢ` fits).
    negate: Vec<bool>,
    /// `k = s - 16`.
    k: u32,
    /// Added before the shift by `k`: `2^(k-1)`, plus `zp·2^k` when `fold`.
    bias: i32,
    /// Whether the zero point is in `bias` (else added after the shift).
    fold: bool,
    zero_point: i32,
    /// The 8-bit result dtype, and the clamp bounds when narrower than its range.
    dtype: DType,
    clamp: Option<(i64, i64)>,
}

impl VectorRequant {
    /// The vector form of `clamp(zp + ((Σ tᵢ·multipliers[i] + 2^(s-1)) >> s), bounds)` with
    /// an 8-bit `dtype` result, for terms with `|tᵢ| ≤ reach[i]`; `None` where it would not
    /// be exact: a shift outside 17..=47, the one multiplier `2^31 - 2^15` (whose halves do
    /// not fit in i16 with either sign), a term beyond i16, or i32 lanes that could overflow.
    pub(crate) fn new(
        multipliers: &[i32],
        shift: u32,
        zero_point: i32,
        bounds: (i64, i64),
        reach: &[i64],
        dtype: DType,
    ) -> Option<VectorRequant> {
        let range = dtype.int_range().filter(|_| is_8bit(dtype))?;
        let i16s = |v: i64| i16::try_from(v).ok();
        let (mut high, mut low, mut negate) = (Vec::new(), Vec::new(), Vec::new());
        for &m in multipliers {
            let l = (m as i16) as i64; // the low 16 bits, signed
            let h = (m as i64 - l) >> 16;
            // h = 2^15 (m within 2^15 below 2^31, as for ratios just under a power of two)
            // does not fit in i16, but -h does: t·m = (-t)·(-h·2^16 - l).
            let (h, l, neg) = if h < 1 << 15 {
                (h, l, false)
            } else {
                (-h, -l, true)
            };
            high.push(i16s(h)?);
            low.push(i16s(l)?);
            negate.push(neg);
        }
        if high.len() % 2 == 1 {
            high.push(0);
            low.push(0);
        }
        let fits = |v: i128| (i32::MIN as i128..=i32::MAX as i128).contains(&v);
        let span = |parts: &[i16]| -> i128 {
            parts
                .iter()
                .zip(reach)
                .map(|(&p, &r)| (p as i128).abs() * r as i128)
                .sum()
        };
        let (h, l) = (span(&high), span(&low));
        let k = shift.checked_sub(16).filter(|k| (1..=31).contains(k))?;
        let (half, zp) = (1i128 << (k - 1), zero_point as i128);
        let folded = half + (zp << k);
        let fold = fits(h + folded.abs() + (l >> 16) + 1);
        let bias = if fold { folded } else { half };
        let exact = multipliers.len() == reach.len()
            && reach.iter().all(|&r| i16s(r).is_some())
            && fits(h)
            && fits(l)
            && fits(h + bias.abs() + (l >> 16) + 1)
            && fits(((h + half + (l >> 16) + 1) >> k) + 1 + zp.abs());
        let clamp = (bounds != range).then_some(bounds);
        exact.then_some(VectorRequant {
            high,
            low,
            negate,
            k,
            bias: bias as i32,
            fold,
            zero_point,
            dtype,
            clamp,
        })
    }

    /// For [`requantize_sum`]'s parameters.
    pub(crate) fn sum(rq: &SumRequant, reach: &[i64], dtype: DType) -> Option<VectorRequant> {
        VectorRequant::new(
            &rq.multipliers,
            rq.shift,
            rq.zero_point,
            rq.bounds,
            reach,
            dtype,
        )
    }

    /// For [`requantize`]'s parameters: one term.
    pub(crate) fn single(
        m: FixedMultiplier,
        zero_point: i32,
        bounds: (i64, i64),
        reach: i64,
        dtype: DType,
    ) -> Option<VectorRequant> {
        VectorRequant::new(&[m.m], m.shift, zero_point, bounds, &[reach], dtype)
    }

    /// Sixteen results (an i8x16 of the result dtype) from `terms[i]`, the 16 lanes of
    /// term `i` as two i16x8 (lanes 0-7, 8-15; as [`load_centered`] gives them).
    pub(crate) fn apply(&self, fb: &mut FunctionBuilder, terms: &[[Value; 2]]) -> Value {
        let zero = splat(fb, types::I16X8, 0);
        let halves = [0, 1].map(|half| {
            let mut lanes: Vec<Value> = terms
                .iter()
                .zip(&self.negate)
                .map(|(t, &neg)| {
                    if neg {
                        fb.ins().isub(zero, t[half])
                    } else {
                        t[half]
                    }
                })
                .collect();
            if lanes.len() % 2 == 1 {
                lanes.push(zero);
            }
            let quarters = [0, 1].map(|q| self.shifted(fb, &lanes, q));
            fb.ins().snarrow(quarters[0], quarters[1])
        });
        let mut y = if self.dtype == DType::U8 {
            fb.ins().unarrow(halves[0], halves[1])
        } else {
            fb.ins().snarrow(halves[0], halves[1])
        };
        if let Some((lo, hi)) = self.clamp {
            let (lo, hi) = (splat(fb, types::I8X16, lo), splat(fb, types::I8X16, hi));
            y = if self.dtype == DType::U8 {
                fb.ins().umax(y, lo)
            } else {
                fb.ins().smax(y, lo)
            };
            y = if self.dtype == DType::U8 {
                fb.ins().umin(y, hi)
            } else {
                fb.ins().smin(y, hi)
            };
        }
        y
    }

    /// `zp + ((Σ tᵢ·mᵢ + 2^(s-1)) >> s)` (i32x4, unclamped) for lanes `4q..4q+4` of the
    /// i16x8 terms `lanes` (an even count).
    fn shifted(&self, fb: &mut FunctionBuilder, lanes: &[Value], q: usize) -> Value {
        let (mut h, mut l) = (None, None);
        for (pair, (hs, ls)) in lanes
            .chunks(2)
            .zip(self.high.chunks(2).zip(self.low.chunks(2)))
        {
            let x = interleave(fb, pair[0], pair[1], q);
            let (dh, dl) = (madd(fb, x, [hs[0], hs[1]]), madd(fb, x, [ls[0], ls[1]]));
            h = Some(h.map_or(dh, |h| fb.ins().iadd(h, dh)));
            l = Some(l.map_or(dl, |l| fb.ins().iadd(l, dl)));
        }
        let (h, l) = (h.expect("at least one term"), l.expect("at least one term"));
        let l = fb.ins().sshr_imm_u(l, 16);
        let x = fb.ins().iadd(h, l);
        let bias = splat(fb, types::I32X4, self.bias as i64);
        let x = fb.ins().iadd(x, bias);
        let y = fb.ins().sshr_imm_u(x, self.k as i64);
        if self.fold {
            return y;
        }
        let zp = splat(fb, types::I32X4, self.zero_point as i64);
        fb.ins().iadd(y, zp)
    }
}

/// `v` in every lane of a vector of type `ty`.
fn splat(fb: &mut FunctionBuilder, ty: Type, v: i64) -> Value {
    let c = emit::iconst_of(fb, ty.lane_type(), v);
    fb.ins().splat(ty, c)
}

/// The i16x8 `[a[4q], b[4q], a[4q+1], b[4q+1], …]`: lanes `4q..4q+4` of two i16x8 in pairs
/// (`punpcklwd` for q = 0, `punpckhwd` for q = 1).
fn interleave(fb: &mut FunctionBuilder, a: Value, b: Value, q: usize) -> Value {
    let le = little_endian();
    let (a, b) = (
        fb.ins().bitcast(types::I8X16, le, a),
        fb.ins().bitcast(types::I8X16, le, b),
    );
    let lanes = (4 * q as u8)..(4 * q as u8 + 4);
    let mask: Vec<u8> = lanes
        .flat_map(|lane| [2 * lane, 2 * lane + 1, 16 + 2 * lane, 17 + 2 * lane])
        .collect();
    let mask = fb.func.dfg.immediates.push(ConstantData::from(mask));
    let x = fb.ins().shuffle(a, b, mask);
    fb.ins().bitcast(types::I16X8, le, x)
}

/// `[x0·c0 + x1·c1, x2·c0 + x3·c1, …]` (i32x4) of the i16x8 `x`: one `pmaddwd`, which
/// Cranelift selects for exactly this `iadd_pairwise` tree. The constant is a `vconst`, not
/// a splat, which Cranelift would fold into the widening and lose the pattern.
fn madd(fb: &mut FunctionBuilder, x: Value, c: [i16; 2]) -> Value {
    let bytes: Vec<u8> = (0..8).flat_map(|i| c[i % 2].to_le_bytes()).collect();
    let c = fb.func.dfg.constants.insert(ConstantData::from(bytes));
    let c = fb.ins().vconst(types::I16X8, c);
    let (xl, cl) = (fb.ins().swiden_low(x), fb.ins().swiden_low(c));
    let (xh, ch) = (fb.ins().swiden_high(x), fb.ins().swiden_high(c));
    let (lo, hi) = (fb.ins().imul(xl, cl), fb.ins().imul(xh, ch));
    fb.ins().iadd_pairwise(lo, hi)
}

/// The largest `|x - zero_point|` over the values of the integer `dtype`: the reach of a
/// centered term, for [`VectorRequant::new`].
pub(crate) fn reach(dtype: DType, zero_point: i32) -> i64 {
    let (lo, hi) = dtype.int_range().unwrap_or((0, 0));
    (zero_point as i64 - lo).max(hi - zero_point as i64)
}

/// Whether `dtype` is one the vector forms load and store (8-bit integers).
pub(crate) fn is_8bit(dtype: DType) -> bool {
    matches!(dtype, DType::U8 | DType::I8)
}

/// Sixteen 8-bit elements of `dtype` from element `index` of `base`, minus `zero_point`, as
/// two i16x8 (elements 0-7, 8-15): `x - zero_point` of two 8-bit values fits in 16 bits.
pub(crate) fn load_centered(
    fb: &mut FunctionBuilder,
    dtype: DType,
    base: Value,
    index: Value,
    zero_point: i32,
) -> [Value; 2] {
    let at = fb.ins().iadd(base, index);
    [0, 8].map(|offset| {
        let v = load_widened(fb, dtype, at, offset);
        if zero_point == 0 {
            return v;
        }
        let zp = splat(fb, types::I16X8, zero_point as i64);
        fb.ins().isub(v, zp)
    })
}

/// Eight 8-bit elements of `dtype` at byte address `at + offset`, widened to an i16x8 by the
/// dtype's signedness (one `pmovzxbw`/`pmovsxbw` from memory).
pub(crate) fn load_widened(
    fb: &mut FunctionBuilder,
    dtype: DType,
    at: Value,
    offset: i32,
) -> Value {
    if dtype == DType::U8 {
        fb.ins().uload8x8(emit::mem(), at, offset)
    } else {
        fb.ins().sload8x8(emit::mem(), at, offset)
    }
}
