//! Polynomial approximations of the transcendental functions elementwise kernels need,
//! emitted inline on f32 scalars or f32x4 vectors alike (the same instructions lane by lane,
//! so a loop's vector body and its scalar remainder agree bit for bit).
//!
//! Cranelift has no `exp`, `log` or `erf`, and a call into the C library per element costs
//! more than the function: transformers run GELU's `erf` and `tanh`, Softmax-like `exp` and
//! Sigmoid millions of times per inference. These follow the classic vector-math designs:
//!
//! - `exp` (and `expm1`): Cody-Waite range reduction `x = n·ln2 + t`, |t| <= ln2/2, with the
//!   rounding of `n` and the scale `2^n` read off the bits of `x·log2(e) + 1.5·2^23`
//!   (XNNPACK's "magic bias"), then a degree-7 Taylor polynomial (a few ulp).
//! - `log`: Cephes' `logf` (mantissa in [sqrt(1/2), sqrt(2)), degree-9 polynomial), with
//!   subnormal operands rescaled first.
//! - `erf`: the rational approximation `x·P(x²)/Q(x²)` on [-4, 4] that Eigen, XLA and TVM use
//!   (erf is ±1 in f32 beyond).
//! - `tanh` and the logistic function through `expm1` of a non-positive argument, which
//!   neither overflows nor cancels.
//!
//! Every function is accurate to a few ulp where its result is normal (the kernels' contract
//! with the interpreter is 1e-4 relative), propagates NaN, and maps infinities to the right
//! limits. Polynomials and the range reduction use fused multiply-adds (Cranelift's `fma`):
//! one rounding each, the same on every CPU (`vfmadd` where the ISA has FMA, the C library's
//! exactly rounded `fmaf` where it has not, which is correct but slow), so results do not
//! depend on the CPU's features; they cut the chain of dependent steps, which is what bounds
//! these functions (a 4-lane `exp` went from 1.01 to 0.76 ns per element). `exp`, `expm1`,
//! `tanh` and `sigmoid` have scalar twins in `qlift_ir::approx` (the constants are shared
//! from there), which the interpreter runs where an integer op's float parts must be
//! bit-exact; a test below compares the two bit for bit.

use super::elementwise::{choose, fconst};
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::approx::{EXP_HIGH, EXP_LOW, EXP_MAGIC, EXP_POLY, LN2_HI, LN2_LO, TANH_SATURATED};

/// The integer type with `ty`'s lanes (i32 for f32, i32x4 for f32x4).
fn int_type(ty: Type) -> Type {
    if ty.is_vector() {
        types::I32X4
    } else {
        types::I32
    }
}

/// An i32 constant with `ty`'s lanes.
fn iconst(fb: &mut FunctionBuilder, ty: Type, v: i32) -> Value {
    let c = fb.ins().iconst(types::I32, v as u32 as i64);
    if ty.is_vector() {
        fb.ins().splat(int_type(ty), c)
    } else {
        c
    }
}

/// The bits of `v` as integers (same lanes).
fn to_bits(fb: &mut FunctionBuilder, v: Value) -> Value {
    let ty = fb.func.dfg.value_type(v);
    fb.ins().bitcast(int_type(ty), MemFlagsData::new(), v)
}

/// Integers `v` reinterpreted as floats of type `ty`.
fn from_bits(fb: &mut FunctionBuilder, ty: Type, v: Value) -> Value {
    fb.ins().bitcast(ty, MemFlagsData::new(), v)
}

/// `c[0]·x^(n-1) + … + c[n-1]` (coefficients from the highest degree) by Estrin's scheme:
/// pairs `c_2i + c_2i+1·x`, then pairs of those with `x²`, with `x⁴`, … A chain of
/// `log2(n)` multiply-adds instead of Horner's `n`: these functions are one long
/// dependency chain per vector, and the out-of-order window holds too few of them to hide
/// Horner's latency (`qlift_ir::approx::estrin` does the same steps).
fn estrin(fb: &mut FunctionBuilder, x: Value, coefficients: &[f32]) -> Value {
    let ty = fb.func.dfg.value_type(x);
    let mut terms: Vec<Value> = coefficients
        .iter()
        .rev()
        .map(|&c| fconst(fb, ty, c))
        .collect();
    let mut power = x;
    while terms.len() > 1 {
        terms = terms
            .chunks(2)
            .map(|pair| match *pair {
                [low, high] => fb.ins().fma(high, power, low),
                _ => pair[0],
            })
            .collect();
        if terms.len() > 1 {
            power = fb.ins().fmul(power, power);
        }
    }
    terms[0]
}

/// `e^x / 2 = s + u`, or `(e^x - 1) / 2 = (s - 1/2) + u` when `minus_one`, with
/// `s = 2^(n-1)` and `u = s·t·p(t)` for `x = n·ln2 + t`, `x` in [`EXP_LOW`, `EXP_HIGH`] or
/// NaN ([`exp_range`] makes it so).
/// Halving the scale keeps `2^(n-1)` finite for `n = 128` (results up to the largest f32),
/// and keeps `s - 1/2` exact, so `e^x - 1` loses nothing near 0.
fn exp_half(fb: &mut FunctionBuilder, x: Value, minus_one: bool) -> Value {
    let ty = fb.func.dfg.value_type(x);
    // n + 126 in the low bits of the sum: adding 1.5·2^23 rounds x·log2(e) to an integer
    // (to even), and the bias puts 2^(n-1)'s exponent field there.
    let magic = fconst(fb, ty, EXP_MAGIC);
    let log2e = fconst(fb, ty, std::f32::consts::LOG2_E);
    let biased = fb.ins().fma(x, log2e, magic);
    let bits = to_bits(fb, biased);
    let shift = fb.ins().iconst(types::I32, 23);
    let s_bits = fb.ins().ishl(bits, shift);
    let s = from_bits(fb, ty, s_bits);
    let n = fb.ins().fsub(biased, magic);
    // t = x - n·ln2 in two steps: ln2's high part (0x1.62e4p-1) has few enough bits that
    // n·hi is exact; the low part is 0x1.7f7d1cp-20.
    let (ln2_hi, ln2_lo) = (fconst(fb, ty, -LN2_HI), fconst(fb, ty, -LN2_LO));
    let t = fb.ins().fma(n, ln2_hi, x);
    let t = fb.ins().fma(n, ln2_lo, t);
    // (e^t - 1)/t to degree 6 by Taylor's 1/(k+1)!: exact as t goes to 0, which e^t - 1
    // needs (a minimax fit for e^t, such as XNNPACK's degree 5, is 1e-6 off there).
    let p = estrin(fb, t, &EXP_POLY);
    let st = fb.ins().fmul(s, t);
    let base = if minus_one {
        let half = fconst(fb, ty, 0.5);
        fb.ins().fsub(s, half)
    } else {
        s
    };
    fb.ins().fma(st, p, base)
}

/// `x` below `lo` replaced by `below`, above `hi` by `hi`, by two compare-and-selects (NaN
/// stays NaN: both comparisons are false), cheaper on x86 than `fmax`/`fmin`, whose NaN and
/// signed-zero rules take several instructions each.
fn clamp(fb: &mut FunctionBuilder, x: Value, lo: f32, below: f32, hi: f32) -> Value {
    let ty = fb.func.dfg.value_type(x);
    let lo_c = fconst(fb, ty, lo);
    let is_below = fb.ins().fcmp(FloatCC::LessThan, x, lo_c);
    let below = if below == lo {
        lo_c
    } else {
        fconst(fb, ty, below)
    };
    let x = choose(fb, is_below, below, x);
    cap(fb, x, hi)
}

/// `x` above `hi` replaced by `hi` (NaN stays NaN).
fn cap(fb: &mut FunctionBuilder, x: Value, hi: f32) -> Value {
    let ty = fb.func.dfg.value_type(x);
    let hi = fconst(fb, ty, hi);
    // `hi < x` rather than `x > hi`: the form Cranelift lowers to one `minps`.
    let above = fb.ins().fcmp(FloatCC::LessThan, hi, x);
    choose(fb, above, hi, x)
}

/// `e^x`.
pub(super) fn exp(fb: &mut FunctionBuilder, x: Value) -> Value {
    let r = exp_range(fb, x);
    let half = exp_half(fb, r, false);
    let e = fb.ins().fadd(half, half);
    flush_below(fb, x, e, 0.0)
}

/// `e^x - 1`, accurate near 0.
pub(super) fn expm1(fb: &mut FunctionBuilder, x: Value) -> Value {
    let r = exp_range(fb, x);
    let e = expm1_in_range(fb, r);
    flush_below(fb, x, e, -1.0)
}

/// `e^x - 1` for `x` in [`EXP_LOW`, `EXP_HIGH`] (or NaN): no clamp, no flush, four steps
/// fewer on the dependency chain (tanh's argument is in range by construction).
fn expm1_in_range(fb: &mut FunctionBuilder, x: Value) -> Value {
    let half = exp_half(fb, x, true);
    fb.ins().fadd(half, half)
}

/// `x` clamped to `EXP_HIGH`, and taken as 0 below `EXP_LOW` (the callers flush there): the
/// discarded steps would otherwise run on subnormal numbers, which cost x86 ~100 cycles
/// each (tanh and Softmax of large negative values ran 2–4× slower).
fn exp_range(fb: &mut FunctionBuilder, x: Value) -> Value {
    clamp(fb, x, EXP_LOW, 0.0, EXP_HIGH)
}

/// `r`, or `limit` where `x` is below [`EXP_LOW`] (NaN stays, the comparison is false).
fn flush_below(fb: &mut FunctionBuilder, x: Value, r: Value, limit: f32) -> Value {
    let ty = fb.func.dfg.value_type(x);
    let lo = fconst(fb, ty, EXP_LOW);
    let below = fb.ins().fcmp(FloatCC::LessThan, x, lo);
    let limit = fconst(fb, ty, limit);
    choose(fb, below, limit, r)
}

/// `tanh(x)`: `-m / (2 + m)` with `m = e^(-2|x|) - 1`, the sign of `x`; `|x|` is taken down
/// to `TANH_SATURATED` first (the result is exactly 1 there already), which keeps `expm1`'s
/// argument in [-18, 0].
pub(super) fn tanh(fb: &mut FunctionBuilder, x: Value) -> Value {
    let ty = fb.func.dfg.value_type(x);
    let a = fb.ins().fabs(x);
    let a = cap(fb, a, TANH_SATURATED);
    let minus_two = fconst(fb, ty, -2.0);
    let z = fb.ins().fmul(a, minus_two);
    let m = expm1_in_range(fb, z);
    let two = fconst(fb, ty, 2.0);
    let d = fb.ins().fadd(two, m);
    let n = fb.ins().fneg(m);
    let t = fb.ins().fdiv(n, d);
    copysign(fb, t, x)
}

/// `magnitude` with the sign of `sign` (through the bits: x86 has no vector `fcopysign`).
pub(super) fn copysign(fb: &mut FunctionBuilder, magnitude: Value, sign: Value) -> Value {
    let ty = fb.func.dfg.value_type(magnitude);
    let (m, s) = (to_bits(fb, magnitude), to_bits(fb, sign));
    let (abs_mask, sign_mask) = (iconst(fb, ty, 0x7fff_ffff), iconst(fb, ty, i32::MIN));
    let m = fb.ins().band(m, abs_mask);
    let s = fb.ins().band(s, sign_mask);
    let r = fb.ins().bor(m, s);
    from_bits(fb, ty, r)
}

/// The logistic function: `f = e/(1 + e)` with `e = e^(-|x|)`, then `1 - f` for `x > 0`.
pub(super) fn sigmoid(fb: &mut FunctionBuilder, x: Value) -> Value {
    let ty = fb.func.dfg.value_type(x);
    let a = fb.ins().fabs(x);
    let z = fb.ins().fneg(a);
    let e = exp(fb, z);
    let one = fconst(fb, ty, 1.0);
    let d = fb.ins().fadd(one, e);
    let f = fb.ins().fdiv(e, d);
    let g = fb.ins().fsub(one, f);
    let zero = fconst(fb, ty, 0.0);
    let positive = fb.ins().fcmp(FloatCC::GreaterThan, x, zero);
    choose(fb, positive, g, f)
}

/// `erf(x)` as `x·P(x²)/Q(x²)` on `x` clamped to [-4, 4] (Eigen's coefficients).
pub(super) fn erf(fb: &mut FunctionBuilder, x: Value) -> Value {
    let ty = fb.func.dfg.value_type(x);
    let x = clamp(fb, x, -4.0, -4.0, 4.0);
    let x2 = fb.ins().fmul(x, x);
    let p = estrin(
        fb,
        x2,
        &[
            -2.726_142_3e-10,
            2.770_681_4e-8,
            -2.101_024e-6,
            -5.692_506_4e-5,
            -7.349_906_3e-4,
            -2.954_6e-3,
            -1.609_603_3e-2,
        ],
    );
    let p = fb.ins().fmul(x, p);
    let q = estrin(
        fb,
        x2,
        &[
            -1.456_607_2e-5,
            -2.133_740_6e-4,
            -1.682_827e-3,
            -7.373_329e-3,
            -1.426_474e-2,
        ],
    );
    let r = fb.ins().fdiv(p, q);
    // Exactly ±1 where erf rounds to it (from 3.9192: 1 - erf is below half an ulp of 1), so
    // that `1 + erf(x)` is 0 there as the interpreter's is (Gelu of -inf is NaN in both).
    let a = fb.ins().fabs(x);
    let saturated = fconst(fb, ty, 3.919_206);
    let far = fb.ins().fcmp(FloatCC::GreaterThanOrEqual, a, saturated);
    let one = fconst(fb, ty, 1.0);
    let unit = copysign(fb, one, x);
    choose(fb, far, unit, r)
}

/// `ln(x)`: NaN below 0 (and for NaN), -inf at 0, +inf at +inf.
pub(super) fn log(fb: &mut FunctionBuilder, x: Value) -> Value {
    let ty = fb.func.dfg.value_type(x);
    // Subnormals: scaled by 2^23 into the normal range, 23 taken off the exponent.
    let min_normal = fconst(fb, ty, f32::MIN_POSITIVE);
    let tiny = fb.ins().fcmp(FloatCC::LessThan, x, min_normal);
    let scale = fconst(fb, ty, 8_388_608.0);
    let scaled = fb.ins().fmul(x, scale);
    let xs = choose(fb, tiny, scaled, x);
    let (c23, zero) = (fconst(fb, ty, 23.0), fconst(fb, ty, 0.0));
    let adjust = choose(fb, tiny, c23, zero);
    // x = m · 2^e with m in [1/2, 1): the exponent field less 126, the mantissa with 1/2's
    // exponent.
    let bits = to_bits(fb, xs);
    let shift = fb.ins().iconst(types::I32, 23);
    let field = fb.ins().ushr(bits, shift);
    let bias = iconst(fb, ty, 126);
    let e = fb.ins().isub(field, bias);
    let e = fb.ins().fcvt_from_sint(ty, e);
    let e = fb.ins().fsub(e, adjust);
    let mask = iconst(fb, ty, 0x007f_ffff);
    let half = iconst(fb, ty, 0x3f00_0000);
    let m = fb.ins().band(bits, mask);
    let m = fb.ins().bor(m, half);
    let m = from_bits(fb, ty, m);
    // m in [sqrt(1/2), sqrt(2)) as 1 + f: below sqrt(1/2) take 2m and one less exponent.
    let sqrt_half = fconst(fb, ty, std::f32::consts::FRAC_1_SQRT_2);
    let small = fb.ins().fcmp(FloatCC::LessThan, m, sqrt_half);
    let one = fconst(fb, ty, 1.0);
    let e_less = fb.ins().fsub(e, one);
    let e = choose(fb, small, e_less, e);
    let doubled = fb.ins().fadd(m, m);
    let m = choose(fb, small, doubled, m);
    let f = fb.ins().fsub(m, one);
    // ln(1 + f) = f - f²/2 + f³·P(f); ln2 split in two for e·ln2.
    let z = fb.ins().fmul(f, f);
    let p = estrin(
        fb,
        f,
        &[
            7.037_683_6e-2,
            -1.151_461e-1,
            1.167_699_9e-1,
            -1.242_014_1e-1,
            1.424_932_3e-1,
            -1.666_805_8e-1,
            2.000_071_5e-1,
            -2.499_999_4e-1,
            3.333_333e-1,
        ],
    );
    let y = fb.ins().fmul(p, f);
    let y = fb.ins().fmul(y, z);
    let q1 = fconst(fb, ty, -2.121_944_4e-4);
    let eq1 = fb.ins().fmul(e, q1);
    let y = fb.ins().fadd(y, eq1);
    let half = fconst(fb, ty, 0.5);
    let hz = fb.ins().fmul(z, half);
    let y = fb.ins().fsub(y, hz);
    let r = fb.ins().fadd(f, y);
    let q2 = fconst(fb, ty, f32::from_bits(0x3f31_8000)); // 0.693359375, ln2 less q1
    let eq2 = fb.ins().fmul(e, q2);
    let r = fb.ins().fadd(r, eq2);
    // The special operands.
    let inf = fconst(fb, ty, f32::INFINITY);
    let is_inf = fb.ins().fcmp(FloatCC::Equal, x, inf);
    let r = choose(fb, is_inf, inf, r);
    let ninf = fconst(fb, ty, f32::NEG_INFINITY);
    let is_zero = fb.ins().fcmp(FloatCC::Equal, x, zero);
    let r = choose(fb, is_zero, ninf, r);
    let nan = fconst(fb, ty, f32::NAN);
    let invalid = fb.ins().fcmp(FloatCC::UnorderedOrLessThan, x, zero);
    choose(fb, invalid, nan, r)
}

/// `ln(1 + u)` for `u >= 0`, accurate for small `u`: `ln(w)·u/(w - 1)` with `w = 1 + u`
/// corrects the rounding of `w` (and is `u` itself where `w` rounds to 1).
pub(super) fn log1p(fb: &mut FunctionBuilder, u: Value) -> Value {
    let ty = fb.func.dfg.value_type(u);
    let one = fconst(fb, ty, 1.0);
    let w = fb.ins().fadd(one, u);
    let l = log(fb, w);
    let d = fb.ins().fsub(w, one);
    let lu = fb.ins().fmul(l, u);
    let r = fb.ins().fdiv(lu, d);
    let exact = fb.ins().fcmp(FloatCC::Equal, w, one);
    choose(fb, exact, u, r)
}

#[cfg(test)]
mod tests {
    //! Each approximation compiled alone (f32 scalar and f32x4 paths) and compared with the
    //! standard library over a sweep of the f32 range, including the special values.

    use super::*;
    use cranelift_codegen::ir::{AbiParam, Function, Signature, UserFuncName};
    use cranelift_codegen::settings::{self, Configurable};
    use cranelift_codegen::Context;
    use cranelift_frontend::FunctionBuilderContext;
    use cranelift_jit::{JITBuilder, JITModule};
    use cranelift_module::{default_libcall_names, Linkage, Module};

    type Approx = fn(&mut FunctionBuilder, Value) -> Value;

    /// Compiles `f(ptr[i])` stored back in place for `n` f32 at `ptr` (vector body when
    /// `vector`, `n` a multiple of 4 then); the module must outlive the function.
    fn compile(f: Approx, vector: bool) -> (JITModule, extern "C" fn(*mut f32, i64)) {
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").unwrap();
        let isa = cranelift_native::builder()
            .unwrap()
            .finish(settings::Flags::new(flags))
            .unwrap();
        let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        let ptr = module.target_config().pointer_type();
        let mut sig = Signature::new(module.isa().default_call_conv());
        sig.params
            .extend([AbiParam::new(ptr), AbiParam::new(types::I64)]);
        let id = module.declare_function("f", Linkage::Local, &sig).unwrap();
        let mut func = Function::with_name_signature(UserFuncName::user(0, 0), sig);
        let mut fbc = FunctionBuilderContext::new();
        let mut fb = FunctionBuilder::new(&mut func, &mut fbc);
        let block = fb.create_block();
        fb.append_block_params_for_function_params(block);
        fb.switch_to_block(block);
        let (p, n) = (fb.block_params(block)[0], fb.block_params(block)[1]);
        let (ty, step) = if vector {
            (types::F32X4, 4)
        } else {
            (types::F32, 1)
        };
        let start = crate::emit::iconst(&mut fb, 0);
        crate::emit::for_range(&mut fb, start, n, step, |fb, i| {
            let a = crate::emit::addr(fb, p, i, 4);
            let v = fb.ins().load(ty, crate::emit::mem(), a, 0);
            let r = f(fb, v);
            fb.ins().store(crate::emit::mem(), r, a, 0);
        });
        fb.ins().return_(&[]);
        fb.seal_all_blocks();
        fb.finalize(module.target_config());
        let mut ctx = Context::for_function(func);
        module.define_function(id, &mut ctx).unwrap();
        module.finalize_definitions().unwrap();
        let code = module.get_finalized_function(id);
        // SAFETY: the function was built with this signature; callers pass a buffer of n f32.
        (module, unsafe {
            std::mem::transmute::<*const u8, extern "C" fn(*mut f32, i64)>(code)
        })
    }

    /// `f` on every element of `xs` (a multiple of 4 long).
    fn run(f: Approx, xs: &[f32], vector: bool) -> Vec<f32> {
        let (_module, call) = compile(f, vector);
        let mut out = xs.to_vec();
        call(out.as_mut_ptr(), out.len() as i64);
        out
    }

    /// A sweep of `lo..hi` plus the special values, padded to whole vectors.
    fn sweep(lo: f32, hi: f32) -> Vec<f32> {
        let mut xs: Vec<f32> = (0..=400)
            .map(|i| lo + (hi - lo) * i as f32 / 400.0)
            .collect();
        xs.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            1e-7,
            -1e-7,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE / 8.0,
            3.0e38,
        ]);
        while !xs.len().is_multiple_of(4) {
            xs.push(0.5);
        }
        xs
    }

    /// Both paths within `rel` of `want` (relative, plus 1e-37 absolute for results that
    /// are flushed to 0).
    fn check(f: Approx, want: fn(f64) -> f64, xs: &[f32], rel: f64) {
        for vector in [false, true] {
            let got = run(f, xs, vector);
            for (&x, &g) in xs.iter().zip(&got) {
                let w = want(x as f64) as f32;
                let ok = (g.is_nan() && w.is_nan())
                    || g == w
                    || ((g - w).abs() as f64) <= rel * (w.abs() as f64) + 1e-37;
                assert!(ok, "x = {x:e}: got {g:e}, want {w:e} (vector {vector})");
            }
        }
    }

    #[test]
    fn exp_family() {
        // Within 4e-7 (under 4 ulp) of e^x and of e^x - 1.
        let xs = sweep(-110.0, 95.0);
        check(exp, f64::exp, &xs, 4e-7);
        check(expm1, f64::exp_m1, &xs, 4e-7);
        check(expm1, f64::exp_m1, &sweep(-1.0, 1.0), 4e-7);
        check(
            sigmoid,
            |x| 1.0 / (1.0 + (-x).exp()),
            &sweep(-100.0, 100.0),
            4e-7,
        );
        check(tanh, f64::tanh, &sweep(-12.0, 12.0), 4e-7);
        check(tanh, f64::tanh, &sweep(-0.01, 0.01), 4e-7);
    }

    #[test]
    fn the_interpreter_twins_are_bit_exact() {
        type Twin = (Approx, fn(f32) -> f32);
        let twins: [Twin; 4] = [
            (exp, qlift_ir::approx::exp),
            (expm1, qlift_ir::approx::expm1),
            (tanh, qlift_ir::approx::tanh),
            (sigmoid, qlift_ir::approx::sigmoid),
        ];
        let mut xs = sweep(-110.0, 95.0);
        xs.extend(sweep(-0.05, 0.05));
        xs.extend(sweep(-12.0, 12.0));
        for (f, twin) in twins {
            for vector in [false, true] {
                for (&x, g) in xs.iter().zip(run(f, &xs, vector)) {
                    let same = g.to_bits() == twin(x).to_bits() || (g.is_nan() && twin(x).is_nan());
                    assert!(
                        same,
                        "x = {x:e}: JIT {g:e}, twin {:e} (vector {vector})",
                        twin(x)
                    );
                }
            }
        }
    }

    #[test]
    fn log_and_erf() {
        let logs = |x: f64| if x == 0.0 { f64::NEG_INFINITY } else { x.ln() };
        check(log, logs, &sweep(0.0, 10.0), 4e-7);
        check(log, logs, &sweep(-1.0, 3.0e38), 4e-7);
        // log1p's domain is [0, 1] (Softplus's e^-|x|).
        let unit = |lo: f32, hi: f32| {
            (0..=400)
                .map(|i| lo + (hi - lo) * i as f32 / 400.0)
                .chain([0.0, 1e-30, 1e-7, f32::NAN])
                .collect::<Vec<_>>()
        };
        check(log1p, f64::ln_1p, &unit(0.0, 1e-3)[..404], 4e-7);
        check(log1p, f64::ln_1p, &unit(0.0, 1.0)[..404], 4e-7);
        check(erf, libm::erf, &sweep(-5.0, 5.0), 4e-7);
        check(erf, libm::erf, &sweep(-0.01, 0.01), 4e-7);
    }
}
