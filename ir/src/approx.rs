//! The f32 approximations of `e^x`, `tanh` and the logistic function that the JIT emits
//! (`qlift_codegen`'s `kernels/approx.rs`), step for step in scalar Rust, and their constants,
//! which the JIT reads from here.
//!
//! The float ops of the interpreter compute in f64 and agree with the JIT to a tolerance.
//! An integer op with float parts inside, such as a quantized recurrent layer (whose 8-bit
//! products feed f32 gate nonlinearities and an f32 state, `ops/recurrent_q.rs`), must be
//! bit-exact between the two, so its oracle runs the very instructions the JIT runs: each
//! function here is the same sequence of IEEE f32 operations as its emitted twin (the same
//! fused multiply-adds on both sides: `mul_add` here, Cranelift's `fma` there, both rounded
//! once), and a codegen test compares the two bit for bit over a sweep that includes
//! the special values.

/// Below this, `e^x` is flushed to 0 (and `e^x - 1` to -1): the scale `2^(n-1)` stays a
/// normal number down to here, and what is lost is below 3e-38.
pub const EXP_LOW: f32 = -86.5;
/// Above this, `e^x` overflows to infinity (ln of the largest f32 is 88.72); clamping here
/// keeps the scale finite while the product still overflows.
pub const EXP_HIGH: f32 = 89.0;
/// `1.5·2^23 + 126`: adding it rounds `x·log2(e)` to an integer (to even) and puts the
/// exponent field of `2^(n-1)` in the low bits.
pub const EXP_MAGIC: f32 = 12_582_912.0 + 126.0;
/// ln 2's high part (0x1.62e4p-1): few enough bits that `n·hi` is exact.
pub const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
/// ln 2's low part (0x1.7f7d1cp-20).
pub const LN2_LO: f32 = f32::from_bits(0x35bf_be8e);
/// `(e^t - 1)/t` to degree 6 by Taylor's `1/(k+1)!`, highest degree first: exact as `t`
/// goes to 0, which `e^t - 1` needs.
pub const EXP_POLY: [f32; 7] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
];

/// Where `tanh` takes `|x|` down to: its result is exactly 1 from 8.491054 up (checked by a
/// test), and `e^(-2·9)` keeps every step of `expm1` in normal numbers.
pub const TANH_SATURATED: f32 = 9.0;

/// `x` below `lo` replaced by `below`, above `hi` by `hi`, by two compare-and-selects (NaN
/// stays NaN).
fn clamp(x: f32, lo: f32, below: f32, hi: f32) -> f32 {
    let x = if x < lo { below } else { x };
    if x > hi {
        hi
    } else {
        x
    }
}

/// `e^x / 2` (or `(e^x - 1) / 2` when `minus_one`) as `s + s·t·p(t)`, `s = 2^(n-1)`, for `x`
/// in [`EXP_LOW`, `EXP_HIGH`] or NaN.
fn exp_half(x: f32, minus_one: bool) -> f32 {
    let biased = x.mul_add(std::f32::consts::LOG2_E, EXP_MAGIC);
    let s = f32::from_bits(biased.to_bits() << 23);
    let n = biased - EXP_MAGIC;
    let t = n.mul_add(-LN2_HI, x);
    let t = n.mul_add(-LN2_LO, t);
    let p = estrin(t, &EXP_POLY);
    let base = if minus_one { s - 0.5 } else { s };
    (s * t).mul_add(p, base)
}

/// `c[0]·x^(n-1) + … + c[n-1]` (coefficients from the highest degree) by Estrin's scheme:
/// pairs `c_2i + c_2i+1·x`, then pairs of those with `x²`, with `x⁴`, … (a shorter
/// dependency chain than Horner's rule, in the JIT's order).
/// In place, without allocating: the interpreter calls it per element.
pub fn estrin<const N: usize>(x: f32, coefficients: &[f32; N]) -> f32 {
    let mut terms = *coefficients;
    terms.reverse();
    let (mut n, mut power) = (N, x);
    while n > 1 {
        for i in 0..n / 2 {
            terms[i] = terms[2 * i + 1].mul_add(power, terms[2 * i]);
        }
        if n % 2 == 1 {
            terms[n / 2] = terms[n - 1];
        }
        n = n.div_ceil(2);
        if n > 1 {
            power *= power;
        }
    }
    terms[0]
}

/// `r`, or `limit` where `x` is below [`EXP_LOW`].
fn flush_below(x: f32, r: f32, limit: f32) -> f32 {
    if x < EXP_LOW {
        limit
    } else {
        r
    }
}

/// `e^x`.
pub fn exp(x: f32) -> f32 {
    let half = exp_half(exp_range(x), false);
    flush_below(x, half + half, 0.0)
}

/// `e^x - 1`, accurate near 0.
pub fn expm1(x: f32) -> f32 {
    flush_below(x, expm1_in_range(exp_range(x)), -1.0)
}

/// `e^x - 1` for `x` in [`EXP_LOW`, `EXP_HIGH`] (or NaN): no clamp, no flush.
fn expm1_in_range(x: f32) -> f32 {
    let half = exp_half(x, true);
    half + half
}

/// `x` clamped to `EXP_HIGH`, and taken as 0 below [`EXP_LOW`], where the callers flush the
/// result: that keeps the discarded steps out of subnormal numbers (x86 takes ~100 cycles per
/// subnormal operation).
fn exp_range(x: f32) -> f32 {
    clamp(x, EXP_LOW, 0.0, EXP_HIGH)
}

/// `magnitude` with the sign of `sign`, through the bits.
fn copysign(magnitude: f32, sign: f32) -> f32 {
    f32::from_bits((magnitude.to_bits() & 0x7fff_ffff) | (sign.to_bits() & 0x8000_0000))
}

/// `tanh(x)`: `-m / (2 + m)` with `m = e^(-2|x|) - 1`, the sign of `x`; `|x|` is taken down
/// to [`TANH_SATURATED`] first.
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let a = if a > TANH_SATURATED {
        TANH_SATURATED
    } else {
        a
    };
    let m = expm1_in_range(a * -2.0);
    copysign(-m / (2.0 + m), x)
}

/// The logistic function: `f = e/(1 + e)` with `e = e^(-|x|)`, then `1 - f` for `x > 0`.
pub fn sigmoid(x: f32) -> f32 {
    let e = exp(-x.abs());
    let f = e / (1.0 + e);
    if x > 0.0 {
        1.0 - f
    } else {
        f
    }
}

/// `max(x, 0)` as the JIT's Relu: `x > 0` or NaN keeps `x`.
pub fn relu(x: f32) -> f32 {
    if x > 0.0 || x.is_nan() {
        x
    } else {
        0.0
    }
}

/// Cranelift's `fmax`: NaN if either operand is NaN, `+0` above `-0`.
pub fn fmax(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a == b {
        if a.is_sign_positive() {
            a
        } else {
            b
        }
    } else if a > b {
        a
    } else {
        b
    }
}

/// Cranelift's `fmin`: NaN if either operand is NaN, `-0` below `+0`.
pub fn fmin(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a == b {
        if a.is_sign_negative() {
            a
        } else {
            b
        }
    } else if a < b {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_to_the_functions() {
        for i in -2000..=2000 {
            let x = i as f32 / 100.0;
            assert!(
                (tanh(x) as f64 - (x as f64).tanh()).abs() < 1e-6,
                "tanh {x}"
            );
            assert!(
                (sigmoid(x) as f64 - 1.0 / (1.0 + (-x as f64).exp())).abs() < 1e-6,
                "sigmoid {x}"
            );
        }
        // Taking |x| down to TANH_SATURATED changes no result: 1 from 8.491054 up.
        for i in 0..=1000 {
            let x = 8.491_054 + i as f32 * (TANH_SATURATED - 8.491_054) / 1000.0;
            assert_eq!(tanh(x), 1.0, "tanh {x}");
        }
        assert_eq!(tanh(f32::INFINITY), 1.0);
        assert_eq!(sigmoid(f32::NEG_INFINITY), 0.0);
        assert!(tanh(f32::NAN).is_nan());
        assert_eq!(fmax(-0.0, 0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(fmin(-0.0, 0.0).to_bits(), (-0.0f32).to_bits());
    }
}
