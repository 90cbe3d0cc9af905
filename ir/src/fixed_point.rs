//! The fixed-point requantization: the one definition of how qlift's integer ops turn an
//! integer accumulator into an 8-bit result. The interpreter uses it now and the JIT emits
//! exactly these operations, so both agree bit for bit.
//!
//! A real multiplier `M > 0` (for a convolution `s_in · s_w / s_out`) is represented as an
//! integer `m` and a right shift `s` with `M ≈ m · 2^-s` and `2^30 ≤ m < 2^31` (31 bits of
//! precision). Applying it to an integer `a` is
//!
//! ```text
//! apply(a) = (a · m + 2^(s-1)) >> s          (i64 arithmetic, >> is arithmetic: floor)
//! ```
//!
//! that is, `a · M` rounded to the nearest integer with ties toward +∞. An op's result is
//! then `clamp(zero_point + apply(acc), lo, hi)` where `[lo, hi]` is the dtype's range
//! narrowed by a fused activation. Several multipliers can share one shift ([`common`]),
//! so that a sum of rescaled terms (QAdd) is rounded once.
//!
//! Why this form: `|a| < 2^31` and `m < 2^31` keep `a · m` exact in i64; the rounding
//! constant and shift are two cheap instructions; ties toward +∞ needs no sign handling.
//! Multipliers below `2^-31` become `m = 0` with the largest shift (the result is the zero
//! point): such a layer carries no signal at 8 bits anyway.

use crate::{DType, QuantParams, TensorType};

/// Largest shift: keeps `a · m + 2^(s-1)` inside i64 for any `|a| < 2^31`.
pub const MAX_SHIFT: u32 = 62;

/// A positive real multiplier as an integer and a right shift (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedMultiplier {
    /// The integer multiplier, in `[2^30, 2^31)` (or 0 for a negligible multiplier).
    pub m: i32,
    /// The right shift, in `1..=MAX_SHIFT`.
    pub shift: u32,
}

impl FixedMultiplier {
    /// The fixed-point form of `real`, which must be finite and positive and below 2^30.
    pub fn from_real(real: f64) -> Result<FixedMultiplier, String> {
        let (ms, shift) = common(&[real])?;
        Ok(FixedMultiplier { m: ms[0], shift })
    }

    /// `a · M` rounded to nearest, ties toward +∞. `a` must fit in i32 (accumulators do).
    #[inline]
    pub fn apply(self, a: i64) -> i64 {
        rounding_shift(a * self.m as i64, self.shift)
    }

    /// The real multiplier this pair stands for.
    pub fn real(self) -> f64 {
        self.m as f64 / (self.shift as f64).exp2()
    }
}

/// `(x + 2^(s-1)) >> s`: the rounding right shift every requantization ends with.
#[inline]
pub fn rounding_shift(x: i64, shift: u32) -> i64 {
    (x + (1i64 << (shift - 1))) >> shift
}

/// Integer multipliers for several reals that share one shift, chosen so the largest has
/// 31 bits: `reals[i] ≈ ms[i] · 2^-shift`. Used where rescaled terms are summed before one
/// rounding (QAdd), and by [`FixedMultiplier::from_real`] for a single real.
pub fn common(reals: &[f64]) -> Result<(Vec<i32>, u32), String> {
    if let Some(r) = reals.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
        return Err(format!(
            "requantization multiplier {r} is not finite and positive"
        ));
    }
    let largest = reals.iter().copied().fold(0.0f64, f64::max);
    if largest >= (1u64 << 30) as f64 {
        return Err(format!(
            "requantization multiplier {largest} is too large (at most 2^30)"
        ));
    }
    if largest == 0.0 {
        return Err("requantization needs at least one multiplier".to_string());
    }
    // largest = f · 2^e with f in [0.5, 1): shift 31 - e puts it in [2^30, 2^31).
    let e = largest.log2().floor() as i32 + 1;
    let mut shift = (31 - e).clamp(1, MAX_SHIFT as i32) as u32;
    let scaled = |r: f64, s: u32| (r * (s as f64).exp2()).round();
    if scaled(largest, shift) >= (1u64 << 31) as f64 {
        shift -= 1;
    }
    let ms = reals.iter().map(|&r| scaled(r, shift) as i32).collect();
    Ok((ms, shift))
}

/// The clamp bounds of a requantized result: the dtype's `range`, narrowed by a fused
/// activation `[act_min, act_max]` quantized with the result's `(scale, zero_point)`
/// (so Relu is exactly `lo = zero_point`).
pub fn clamp_bounds(
    range: (i64, i64),
    act: Option<(f32, f32)>,
    scale: f32,
    zero_point: i32,
) -> (i64, i64) {
    let (lo, hi) = range;
    match act {
        None => (lo, hi),
        Some((amin, amax)) => {
            let q = |x: f32| crate::ops::quant::quantize(x, (scale, zero_point), range);
            (lo.max(q(amin)), hi.min(q(amax)).max(lo.max(q(amin))))
        }
    }
}

/// Channels whose multiplier is at least this fraction of the largest share its shift.
const SHARED_SHIFT_RANGE: f64 = 1.0 / 128.0;

/// The fixed-point multipliers of per-channel reals. They share one shift when every real
/// is within [`SHARED_SHIFT_RANGE`] of the largest (each keeps at least 24 of its 31 bits,
/// a relative error below 2^-24): then four channels requantize as one vector in the JIT,
/// whose arithmetic shift cannot vary by lane. Otherwise each channel has its own shift.
fn per_channel(reals: &[f64]) -> Result<Vec<FixedMultiplier>, String> {
    let largest = reals.iter().copied().fold(0.0f64, f64::max);
    if reals.len() > 1 && reals.iter().all(|&r| r >= largest * SHARED_SHIFT_RANGE) {
        let (ms, shift) = common(reals)?;
        return Ok(ms
            .into_iter()
            .map(|m| FixedMultiplier { m, shift })
            .collect());
    }
    reals
        .iter()
        .map(|&r| FixedMultiplier::from_real(r))
        .collect()
}

/// One requantized element: `clamp(zero_point + M · acc, lo, hi)`.
#[inline]
pub fn requantize(acc: i64, m: FixedMultiplier, zero_point: i32, (lo, hi): (i64, i64)) -> i64 {
    (zero_point as i64 + m.apply(acc)).clamp(lo, hi)
}

/// The requantization of one integer op's result: a multiplier per output channel (one
/// when per tensor), the result's zero point and clamp bounds. The interpreter and the JIT
/// both build it with the constructors below, from the value types alone.
#[derive(Clone, Debug, PartialEq)]
pub struct Requant {
    /// Multiplier of each output channel (a single entry applies to every channel).
    pub multipliers: Vec<FixedMultiplier>,
    /// The result's zero point.
    pub zero_point: i32,
    /// Clamp bounds: the result dtype's range narrowed by a fused activation.
    pub bounds: (i64, i64),
}

/// The 8-bit, per-tensor result of an integer op: `(scale, zero_point, bounds)`.
pub fn result_params(
    y: &TensorType,
    act: Option<(f32, f32)>,
) -> Result<(f32, i32, (i64, i64)), String> {
    let q = match (&y.quant, y.dtype) {
        (Some(q), DType::U8 | DType::I8 | DType::I16) if q.axis.is_none() => q,
        _ => {
            return Err(format!(
                "result {} is not 8- or 16-bit quantized per tensor",
                crate::text::type_to_string(y)
            ))
        }
    };
    let (scale, zp) = q.channel(0);
    let range = y.dtype.int_range().ok_or("result is not an integer type")?;
    Ok((scale, zp, clamp_bounds(range, act, scale, zp)))
}

impl Requant {
    /// For a product `x · w` (Conv, MatMul): channel `c` uses `s_x · s_w[c] / s_y`, the
    /// product of the f32 scales taken in f64. `channels` is the number of output channels
    /// (`w` per tensor or with that many scales).
    pub fn for_product(
        x: &QuantParams,
        w: &QuantParams,
        channels: usize,
        y: &TensorType,
        act: Option<(f32, f32)>,
    ) -> Result<Requant, String> {
        let (sy, zero_point, bounds) = result_params(y, act)?;
        let count = if w.axis.is_some() { channels } else { 1 };
        let reals: Vec<f64> = (0..count)
            .map(|c| x.channel(0).0 as f64 * w.channel(c).0 as f64 / sy as f64)
            .collect();
        Ok(Requant {
            multipliers: per_channel(&reals)?,
            zero_point,
            bounds,
        })
    }

    /// For a rescale by `ratio` (`s_x / s_y`, times `1/count` for an average).
    pub fn for_ratio(
        ratio: f64,
        y: &TensorType,
        act: Option<(f32, f32)>,
    ) -> Result<Requant, String> {
        let (_, zero_point, bounds) = result_params(y, act)?;
        Ok(Requant {
            multipliers: vec![FixedMultiplier::from_real(ratio)?],
            zero_point,
            bounds,
        })
    }

    /// The result element for accumulator `acc` of output channel `channel`.
    #[inline]
    pub fn apply(&self, channel: usize, acc: i64) -> i64 {
        let m = if self.multipliers.len() == 1 {
            self.multipliers[0]
        } else {
            self.multipliers[channel]
        };
        requantize(acc, m, self.zero_point, self.bounds)
    }
}

/// The requantization of a sum of rescaled terms (QAdd): `clamp(zp + ((Σ tᵢ·mᵢ + 2^(s-1)) >> s))`
/// with one shared shift, so the sum is rounded once.
#[derive(Clone, Debug, PartialEq)]
pub struct SumRequant {
    /// One integer multiplier per term.
    pub multipliers: Vec<i32>,
    /// The shared right shift.
    pub shift: u32,
    /// The result's zero point.
    pub zero_point: i32,
    /// Clamp bounds, as in [`Requant`].
    pub bounds: (i64, i64),
}

impl SumRequant {
    /// Terms with real multipliers `ratios` (`s_term / s_y`). Each term is an 8-bit value
    /// minus its zero point (|t| < 2^9), so `Σ tᵢ·mᵢ` stays far inside i64.
    pub fn new(
        ratios: &[f64],
        y: &TensorType,
        act: Option<(f32, f32)>,
    ) -> Result<SumRequant, String> {
        let (_, zero_point, bounds) = result_params(y, act)?;
        let (multipliers, shift) = common(ratios)?;
        Ok(SumRequant {
            multipliers,
            shift,
            zero_point,
            bounds,
        })
    }

    /// The result element for centered terms `terms` (one per multiplier).
    #[inline]
    pub fn apply(&self, terms: &[i64]) -> i64 {
        let sum: i64 = terms
            .iter()
            .zip(&self.multipliers)
            .map(|(&t, &m)| t * m as i64)
            .sum();
        (self.zero_point as i64 + rounding_shift(sum, self.shift))
            .clamp(self.bounds.0, self.bounds.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipliers_have_31_bits_and_round_trip() {
        for real in [1.0, 0.5, 0.75, 1e-3, 3.3e-5, 123.456, 0.999_999_9] {
            let m = FixedMultiplier::from_real(real).unwrap();
            assert!(
                (1 << 30..1i64 << 31).contains(&(m.m as i64)),
                "{real}: {m:?}"
            );
            assert!(
                ((m.real() - real) / real).abs() < 1e-9,
                "{real}: {}",
                m.real()
            );
        }
    }

    #[test]
    fn apply_rounds_to_nearest_with_ties_up() {
        let half = FixedMultiplier::from_real(0.5).unwrap();
        assert_eq!([3, 1, -1, -3, 4].map(|a| half.apply(a)), [2, 1, 0, -1, 2]);
        let one = FixedMultiplier::from_real(1.0).unwrap();
        for a in [-(1i64 << 31), -7, 0, 7, (1 << 31) - 1] {
            assert_eq!(one.apply(a), a);
        }
    }

    #[test]
    fn apply_matches_exact_rounding_on_many_values() {
        let m = FixedMultiplier::from_real(0.0123).unwrap();
        for a in (-100_000i64..100_000).step_by(37) {
            let exact = a as f64 * m.real();
            assert_eq!(m.apply(a), (exact + 0.5).floor() as i64, "{a}");
        }
    }

    #[test]
    fn tiny_and_bad_multipliers() {
        let tiny = FixedMultiplier::from_real(1e-30).unwrap();
        assert_eq!((tiny.m, tiny.shift), (0, MAX_SHIFT));
        assert_eq!(tiny.apply(i32::MAX as i64), 0);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e9] {
            assert!(FixedMultiplier::from_real(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn common_shift_keeps_ratios() {
        let (ms, shift) = common(&[0.25, 1.5]).unwrap();
        assert_eq!(shift, 30);
        assert_eq!(ms, vec![1 << 28, 3 << 29]);
    }

    #[test]
    fn close_channel_multipliers_share_a_shift() {
        let close = per_channel(&[1e-3, 3e-4, 1e-4]).unwrap();
        assert!(close.iter().all(|m| m.shift == close[0].shift), "{close:?}");
        for (m, real) in close.iter().zip([1e-3, 3e-4, 1e-4]) {
            assert!(((m.real() - real) / real).abs() < 1e-7, "{m:?} for {real}");
        }
        let far = per_channel(&[1e-3, 1e-6]).unwrap();
        assert_ne!(far[0].shift, far[1].shift);
        assert!(far.iter().all(|m| m.m >= 1 << 30));
    }

    #[test]
    fn clamp_bounds_quantize_the_activation() {
        assert_eq!(
            clamp_bounds((0, 255), Some((0.0, f32::INFINITY)), 0.1, 20),
            (20, 255)
        );
        assert_eq!(clamp_bounds((0, 255), Some((0.0, 6.0)), 0.1, 20), (20, 80));
        assert_eq!(clamp_bounds((-128, 127), None, 0.1, 0), (-128, 127));
    }
}
