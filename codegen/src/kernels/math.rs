//! Elementwise math kernels: every one-operand op (activations, math functions and their
//! integer forms) and the broadcasting arithmetic beyond Add/Sub/Mul/Div (Min, Max, Sum,
//! Mean, PRelu, Pow, Mod).
//!
//! Each follows `qlift_ir`'s interpreter (`ops/math.rs`, `ops/unary.rs`, `ops/arith.rs`).
//! Float ops run four lanes at a time, transcendental ones through the inline
//! approximations of [`approx`] (within a few ulp of the interpreter's values); only the
//! rare ones call the C library per element (Sin, Cos, a Pow with a computed or unusual
//! exponent, float Mod), through the same functions the interpreter uses, so they agree
//! bit for bit. Integer ops are computed in i64 and narrowed, which wraps exactly as the
//! interpreter does; an integer division by zero (Mod) or zero to a negative power (Pow)
//! makes the kernel fail with the interpreter's message.

use super::approx;
use super::elementwise::{
    choose, clamp_f32, fail_on_zero, failure_block, fconst, finish_failure, narrow,
    needs_zero_check, widen, Broadcast, Lanes, LANES,
};
use super::{Kernel, Operand};
use crate::emit;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, Block, BlockArg, FuncRef, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::{DType, Op, OpKind, Tensor};

/// A one-operand float function and its parameters, as the kernel emits it.
pub(crate) struct FloatUnary {
    kind: OpKind,
    /// Clip's lower bound, the alpha of LeakyRelu, HardSigmoid, Elu, Selu, ThresholdedRelu
    /// and Celu.
    p: f32,
    /// Clip's upper bound, HardSigmoid's beta, Selu's gamma.
    q: f32,
    /// Gelu through tanh.
    tanh: bool,
}

impl FloatUnary {
    pub(super) fn of(op: &Op) -> Result<FloatUnary, String> {
        let f = |name: &str| op.attrs.float(name);
        let (p, q) = match op.kind {
            OpKind::Clip => (f("min")?, f("max")?),
            OpKind::HardSigmoid => (f("alpha")?, f("beta")?),
            OpKind::Selu => (f("alpha")?, f("gamma")?),
            OpKind::LeakyRelu | OpKind::Elu | OpKind::ThresholdedRelu | OpKind::Celu => {
                (f("alpha")?, 0.0)
            }
            _ => (0.0, 0.0),
        };
        let tanh = op.kind == OpKind::Gelu && qlift_ir::gelu_uses_tanh(op)?;
        Ok(FloatUnary {
            kind: op.kind,
            p,
            q,
            tanh,
        })
    }

    /// The function on `v` (an f32 or f32x4).
    pub(super) fn emit(&self, fb: &mut FunctionBuilder, v: Value) -> Value {
        let ty = fb.func.dfg.value_type(v);
        let zero = fconst(fb, ty, 0.0);
        let one = fconst(fb, ty, 1.0);
        let (p, q) = (self.p, self.q);
        match self.kind {
            // v > 0 or NaN keeps v.
            OpKind::Relu => {
                let keep = fb.ins().fcmp(FloatCC::UnorderedOrGreaterThan, v, zero);
                choose(fb, keep, v, zero)
            }
            OpKind::Clip => clamp_f32(fb, v, p, q),
            OpKind::LeakyRelu => {
                let neg = fb.ins().fcmp(FloatCC::LessThan, v, zero);
                let alpha = fconst(fb, ty, p);
                let scaled = fb.ins().fmul(alpha, v);
                choose(fb, neg, scaled, v)
            }
            OpKind::HardSigmoid => {
                let (alpha, beta) = (fconst(fb, ty, p), fconst(fb, ty, q));
                let t = fb.ins().fmul(alpha, v);
                let t = fb.ins().fadd(t, beta);
                clamp_f32(fb, t, 0.0, 1.0)
            }
            OpKind::HardSwish => {
                let (six, half) = (fconst(fb, ty, 6.0), fconst(fb, ty, 0.5));
                let t = fb.ins().fdiv(v, six);
                let t = fb.ins().fadd(t, half);
                let t = clamp_f32(fb, t, 0.0, 1.0);
                fb.ins().fmul(v, t)
            }
            OpKind::Sigmoid => approx::sigmoid(fb, v),
            OpKind::Tanh => approx::tanh(fb, v),
            OpKind::Sqrt => fb.ins().sqrt(v),
            OpKind::Exp => approx::exp(fb, v),
            OpKind::Log => approx::log(fb, v),
            OpKind::Abs => fb.ins().fabs(v),
            OpKind::Neg => fb.ins().fneg(v),
            OpKind::Reciprocal => fb.ins().fdiv(one, v),
            OpKind::Floor => fb.ins().floor(v),
            OpKind::Ceil => fb.ins().ceil(v),
            OpKind::Round => fb.ins().nearest(v),
            OpKind::Erf => approx::erf(fb, v),
            // ±1, and v·0 for ±0 and NaN (which it keeps).
            OpKind::Sign => {
                let minus = fconst(fb, ty, -1.0);
                let kept = fb.ins().fmul(v, zero);
                let neg = fb.ins().fcmp(FloatCC::LessThan, v, zero);
                let r = choose(fb, neg, minus, kept);
                let pos = fb.ins().fcmp(FloatCC::GreaterThan, v, zero);
                choose(fb, pos, one, r)
            }
            // 0.5·x·(1 + erf(x/√2)), or 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
            OpKind::Gelu => {
                let inner = if self.tanh {
                    let (c, k) = (fconst(fb, ty, 0.044_715), fconst(fb, ty, 0.797_884_6));
                    let x3 = fb.ins().fmul(v, v);
                    let x3 = fb.ins().fmul(x3, v);
                    let t = fb.ins().fmul(c, x3);
                    let t = fb.ins().fadd(v, t);
                    let t = fb.ins().fmul(k, t);
                    approx::tanh(fb, t)
                } else {
                    let k = fconst(fb, ty, std::f32::consts::FRAC_1_SQRT_2);
                    let t = fb.ins().fmul(v, k);
                    approx::erf(fb, t)
                };
                let half = fconst(fb, ty, 0.5);
                let s = fb.ins().fadd(one, inner);
                let h = fb.ins().fmul(half, v);
                fb.ins().fmul(h, s)
            }
            OpKind::Elu => {
                let m = approx::expm1(fb, v);
                let alpha = fconst(fb, ty, p);
                let m = fb.ins().fmul(alpha, m);
                let neg = fb.ins().fcmp(FloatCC::LessThan, v, zero);
                choose(fb, neg, m, v)
            }
            OpKind::Selu => {
                let m = approx::expm1(fb, v);
                let (ga, gamma) = (fconst(fb, ty, p * q), fconst(fb, ty, q));
                let m = fb.ins().fmul(ga, m);
                let lin = fb.ins().fmul(gamma, v);
                let nonpos = fb.ins().fcmp(FloatCC::LessThanOrEqual, v, zero);
                choose(fb, nonpos, m, lin)
            }
            OpKind::Celu => {
                let alpha = fconst(fb, ty, p);
                let t = fb.ins().fdiv(v, alpha);
                let m = approx::expm1(fb, t);
                let m = fb.ins().fmul(alpha, m);
                let m = fb.ins().fmin(m, zero);
                let pos = fb.ins().fmax(v, zero);
                fb.ins().fadd(pos, m)
            }
            OpKind::Softplus => softplus(fb, v),
            OpKind::Mish => {
                let s = softplus(fb, v);
                let t = approx::tanh(fb, s);
                fb.ins().fmul(v, t)
            }
            OpKind::Softsign => {
                let a = fb.ins().fabs(v);
                let d = fb.ins().fadd(one, a);
                fb.ins().fdiv(v, d)
            }
            // v > alpha or NaN keeps v.
            _ => {
                let alpha = fconst(fb, ty, p);
                let keep = fb.ins().fcmp(FloatCC::UnorderedOrGreaterThan, v, alpha);
                choose(fb, keep, v, zero)
            }
        }
    }
}

/// `kind`'s function on `v` (an f32 or f32x4) with parameters `p` and `q` as the
/// elementwise kernel takes them (alpha, beta): the activations of recurrent layers.
pub(super) fn float_unary(
    fb: &mut FunctionBuilder,
    kind: OpKind,
    p: f32,
    q: f32,
    v: Value,
) -> Value {
    FloatUnary {
        kind,
        p,
        q,
        tanh: false,
    }
    .emit(fb, v)
}

/// `ln(1 + e^v)` as `max(v, 0) + ln(1 + e^-|v|)` (the interpreter's form: no overflow).
fn softplus(fb: &mut FunctionBuilder, v: Value) -> Value {
    let ty = fb.func.dfg.value_type(v);
    let zero = fconst(fb, ty, 0.0);
    let a = fb.ins().fabs(v);
    let z = fb.ins().fneg(a);
    let e = approx::exp(fb, z);
    let l = approx::log1p(fb, e);
    let pos = fb.ins().fmax(v, zero);
    fb.ins().fadd(pos, l)
}

/// The C library function a float op calls per element, if it has no inline form.
pub(super) fn libcall(kind: OpKind) -> Option<&'static str> {
    match kind {
        OpKind::Sin => Some("sinf"),
        OpKind::Cos => Some("cosf"),
        _ => None,
    }
}

/// `f(v)` through an imported function.
fn call(fb: &mut FunctionBuilder, f: FuncRef, args: &[Value]) -> Value {
    let c = fb.ins().call(f, args);
    fb.inst_results(c)[0]
}

/// Every one-operand elementwise op: float ones four lanes at a time (Sin and Cos one
/// element at a time through the C library), integer ones (Relu, Clip, Abs, Neg, Sign) in
/// i64.
pub(super) fn unary(k: &mut Kernel) -> Result<(), String> {
    let kind = k.op.kind;
    let (x, out) = (k.input(0)?, k.output(0));
    let dtype = x.ty.dtype;
    if out.ty.dtype != dtype {
        return Err(format!(
            "result type {} differs from the operand's {dtype}",
            out.ty.dtype
        ));
    }
    let plan = Broadcast::new(out, &[x])?;
    let (ptrs, ty) = ([out.ptr, x.ptr], x.elem());
    if dtype != DType::F32 {
        let f = int_unary(k.op, dtype)?;
        return plan.emit_split(k, 1, &ptrs, &mut |fb, p, off, _| {
            let v = emit::load_at(fb, ty, p[1], off[1]);
            let w = widen(fb, v, dtype);
            let r = f(fb, w);
            let r = narrow(fb, r, ty);
            emit::store_at(fb, r, p[0], off[0]);
        });
    }
    let f = FloatUnary::of(k.op)?;
    if let Some(name) = libcall(kind) {
        // The rare ones, one call per element, stay on one thread.
        let func = k.import(name, &[types::F32], &[types::F32])?;
        plan.emit_lanes(k, 1, &mut |fb, off, _| {
            let v = emit::load_at(fb, ty, ptrs[1], off[1]);
            let r = call(fb, func, &[v]);
            emit::store_at(fb, r, ptrs[0], off[0]);
        });
        return Ok(());
    }
    plan.emit_split(k, LANES, &ptrs, &mut |fb, p, off, lanes| {
        let v = lanes.load(fb, 1, p[1], off[1]);
        let r = f.emit(fb, v);
        Lanes::store(fb, r, p[0], off[0]);
    })
}

/// An integer one-operand op on an i64 (the widened element).
type IntFn = Box<dyn Fn(&mut FunctionBuilder, Value) -> Value>;

/// The integer form of `op` on `dtype` elements, computed in i64; narrowing the result
/// wraps it as the interpreter does (`|-128|` is -128 in i8).
fn int_unary(op: &Op, dtype: DType) -> Result<IntFn, String> {
    let supported = match op.kind {
        OpKind::Relu | OpKind::Clip | OpKind::Abs | OpKind::Sign => {
            matches!(dtype, DType::I32 | DType::I64 | DType::I8 | DType::U8)
        }
        OpKind::Neg => matches!(dtype, DType::I32 | DType::I64 | DType::I8),
        _ => false,
    };
    if !supported {
        return Err(format!("{} on {dtype} is not supported", op.kind));
    }
    let range = dtype.int_range().unwrap_or((i64::MIN, i64::MAX));
    Ok(match op.kind {
        OpKind::Relu | OpKind::Clip => {
            // Clip's bounds as the interpreter reads them (`v as i64`, infinite =
            // unbounded), kept in the dtype's range so the narrowed result is the clamped one.
            let bound = |v: f32, infinite: i64| -> i64 {
                if v.is_infinite() {
                    infinite
                } else {
                    v as i64
                }
            };
            let (lo, hi) = match op.kind {
                OpKind::Clip => (op.attrs.float("min")?, op.attrs.float("max")?),
                _ => (0.0, f32::INFINITY),
            };
            let (lo, hi) = (
                bound(lo, i64::MIN).clamp(range.0, range.1),
                bound(hi, i64::MAX).clamp(range.0, range.1),
            );
            Box::new(move |fb, w| {
                let l = fb.ins().iconst(types::I64, lo);
                let h = fb.ins().iconst(types::I64, hi);
                let w = fb.ins().smax(w, l);
                fb.ins().smin(w, h)
            })
        }
        OpKind::Abs => Box::new(|fb, w| {
            let n = fb.ins().ineg(w);
            fb.ins().smax(w, n)
        }),
        OpKind::Neg => Box::new(|fb, w| fb.ins().ineg(w)),
        _ => Box::new(|fb, w| {
            let pos = fb.ins().icmp_imm_s(IntCC::SignedGreaterThan, w, 0);
            let neg = fb.ins().icmp_imm_s(IntCC::SignedLessThan, w, 0);
            let d = fb.ins().isub(pos, neg);
            fb.ins().sextend(types::I64, d)
        }),
    })
}

/// The operands of a broadcasting op, checked to share the result's dtype.
fn same_dtype_operands<'a>(k: &'a Kernel) -> Result<Vec<&'a Operand>, String> {
    let operands = (0..k.inputs.len())
        .map(|i| k.input(i))
        .collect::<Result<Vec<_>, _>>()?;
    let dtype = k.output(0).ty.dtype;
    let arity_ok = match k.op.kind {
        OpKind::Mod | OpKind::PRelu => operands.len() == 2,
        _ => !operands.is_empty(),
    };
    if !arity_ok {
        return Err(format!(
            "{} cannot take {} operands",
            k.op.kind,
            operands.len()
        ));
    }
    if let Some(o) = operands.iter().find(|o| o.ty.dtype != dtype) {
        return Err(format!("operand types differ: {} and {dtype}", o.ty.dtype));
    }
    Ok(operands)
}

/// Min, Max, Sum, Mean (of any number of operands) and PRelu, with numpy broadcasting:
/// floats four lanes at a time (NaN wins Min and Max, as `fmin`/`fmax` give it), integers
/// (Min, Max) in i64.
pub(super) fn variadic(k: &mut Kernel) -> Result<(), String> {
    let kind = k.op.kind;
    let operands = same_dtype_operands(k)?;
    let out = k.output(0);
    let dtype = out.ty.dtype;
    let plan = Broadcast::new(out, &operands)?;
    let ptrs: Vec<Value> = std::iter::once(out.ptr)
        .chain(operands.iter().map(|o| o.ptr))
        .collect();
    let (ty, n) = (out.elem(), operands.len());
    if dtype == DType::F32 {
        return plan.emit_split(k, LANES, &ptrs, &mut |fb, p, off, lanes| {
            let vs: Vec<Value> = (1..=n).map(|j| lanes.load(fb, j, p[j], off[j])).collect();
            let r = float_variadic(fb, kind, &vs);
            Lanes::store(fb, r, p[0], off[0]);
        });
    }
    if !matches!(kind, OpKind::Min | OpKind::Max)
        || !matches!(dtype, DType::I32 | DType::I64 | DType::I8 | DType::U8)
    {
        return Err(format!("{kind} on {dtype} is not supported"));
    }
    plan.emit_split(k, 1, &ptrs, &mut |fb, p, off, _| {
        let load = |fb: &mut FunctionBuilder, j: usize| {
            let v = emit::load_at(fb, ty, p[j], off[j]);
            widen(fb, v, dtype)
        };
        let first = load(fb, 1);
        let acc = (2..=n).fold(first, |a, j| {
            let w = load(fb, j);
            if kind == OpKind::Min {
                fb.ins().smin(a, w)
            } else {
                fb.ins().smax(a, w)
            }
        });
        let r = narrow(fb, acc, ty);
        emit::store_at(fb, r, p[0], off[0]);
    })
}

/// Min, Max, Sum, Mean (else PRelu, of exactly two) of the f32 or f32x4 values `vs` (at
/// least one): one lane step of [`variadic`] and of the fused kernels (`fused.rs`).
pub(super) fn float_variadic(fb: &mut FunctionBuilder, kind: OpKind, vs: &[Value]) -> Value {
    let fold = |fb: &mut FunctionBuilder, f: fn(&mut FunctionBuilder, Value, Value) -> Value| {
        vs[1..].iter().fold(vs[0], |a, &b| f(fb, a, b))
    };
    match kind {
        OpKind::Min => fold(fb, |fb, a, b| fb.ins().fmin(a, b)),
        OpKind::Max => fold(fb, |fb, a, b| fb.ins().fmax(a, b)),
        OpKind::Sum => fold(fb, |fb, a, b| fb.ins().fadd(a, b)),
        OpKind::Mean => {
            let s = fold(fb, |fb, a, b| fb.ins().fadd(a, b));
            let ty = fb.func.dfg.value_type(s);
            let count = fconst(fb, ty, vs.len() as f32);
            fb.ins().fdiv(s, count)
        }
        // PRelu: x < 0 ? slope · x : x.
        _ => {
            let ty = fb.func.dfg.value_type(vs[0]);
            let zero = fconst(fb, ty, 0.0);
            let neg = fb.ins().fcmp(FloatCC::LessThan, vs[0], zero);
            let scaled = fb.ins().fmul(vs[1], vs[0]);
            choose(fb, neg, scaled, vs[0])
        }
    }
}

/// Mod: floats through C's `fmodf` (what Rust's `%` is), integers in i64; the remainder
/// takes the dividend's sign (`fmod` 1) or the divisor's (`fmod` 0).
pub(super) fn modulo(k: &mut Kernel) -> Result<(), String> {
    let operands = same_dtype_operands(k)?;
    let (a, b) = (operands[0], operands[1]);
    let out = k.output(0);
    let dtype = out.ty.dtype;
    let python = k.op.attrs.int("fmod")? == 0;
    let plan = Broadcast::new(out, &[a, b])?;
    let (pa, pb, po, ty) = (a.ptr, b.ptr, out.ptr, out.elem());
    if dtype == DType::F32 {
        let fmodf = k.import("fmodf", &[types::F32, types::F32], &[types::F32])?;
        plan.emit_lanes(k, 1, &mut |fb, off, _| {
            let x = emit::load_at(fb, ty, pa, off[1]);
            let y = emit::load_at(fb, ty, pb, off[2]);
            let r = call(fb, fmodf, &[x, y]);
            let r = if python {
                python_float_mod(fb, r, y)
            } else {
                r
            };
            emit::store_at(fb, r, po, off[0]);
        });
        return Ok(());
    }
    let check_zero = needs_zero_check(b);
    let fail = failure_block(k);
    plan.emit_lanes(k, 1, &mut |fb, off, _| {
        let x = emit::load_at(fb, ty, pa, off[1]);
        let y = emit::load_at(fb, ty, pb, off[2]);
        let (x, y) = (widen(fb, x, dtype), widen(fb, y, dtype));
        if check_zero {
            fail_on_zero(fb, y, fail);
        }
        // x % -1 is 0 (srem would overflow on MIN); a zero divisor never reaches here.
        let minus_one = fb.ins().icmp_imm_s(IntCC::Equal, y, -1);
        let zero = fb.ins().icmp_imm_s(IntCC::Equal, y, 0);
        let unsafe_divisor = fb.ins().bor(minus_one, zero);
        let one = fb.ins().iconst(types::I64, 1);
        let safe = fb.ins().select(unsafe_divisor, one, y);
        let r = fb.ins().srem(x, safe);
        let r = if python {
            // A non-zero remainder whose sign differs from the divisor's moves by one divisor.
            let nonzero = fb.ins().icmp_imm_s(IntCC::NotEqual, r, 0);
            let signs = fb.ins().bxor(r, y);
            let differ = fb.ins().icmp_imm_s(IntCC::SignedLessThan, signs, 0);
            let adjust = fb.ins().band(nonzero, differ);
            let moved = fb.ins().iadd(r, y);
            fb.ins().select(adjust, moved, r)
        } else {
            r
        };
        let r = narrow(fb, r, ty);
        emit::store_at(fb, r, po, off[0]);
    });
    if check_zero {
        finish_failure(k, fail, "integer division by zero");
    }
    Ok(())
}

/// numpy's float `mod` from C's remainder `r = fmod(x, y)`: moved by `y` when the signs
/// differ, a zero with `y`'s sign (the interpreter's `float_mod`).
fn python_float_mod(fb: &mut FunctionBuilder, r: Value, y: Value) -> Value {
    let zero = fb.ins().f32const(0.0);
    let r_neg = fb.ins().fcmp(FloatCC::LessThan, r, zero);
    let y_neg = fb.ins().fcmp(FloatCC::LessThan, y, zero);
    let differ = fb.ins().bxor(r_neg, y_neg);
    let moved = fb.ins().fadd(r, y);
    let adjusted = fb.ins().select(differ, moved, r);
    let is_zero = fb.ins().fcmp(FloatCC::Equal, r, zero);
    let signed_zero = approx::copysign(fb, zero, y);
    fb.ins().select(is_zero, signed_zero, adjusted)
}

/// A constant exponent with an inline form: the single value of the exponent's constant `t`
/// when it has one element and the value is one of those [`pow_by`] handles.
pub(super) fn inline_exponent(t: &Tensor) -> Option<f32> {
    let v = *t.to_f32_vec().first().filter(|_| t.len() == 1)?;
    [0.0, 0.5, 1.0, 2.0, 3.0, -1.0].contains(&v).then_some(v)
}

/// `v^e` for the exponents [`inline_exponent`] accepts, equal to `powf`'s correctly
/// rounded results (within an ulp for 3): products, a square root (whose -inf is
/// `powf`'s +inf) and a reciprocal.
pub(super) fn pow_by(fb: &mut FunctionBuilder, v: Value, e: f32) -> Value {
    let ty = fb.func.dfg.value_type(v);
    match e {
        0.0 => fconst(fb, ty, 1.0),
        1.0 => v,
        2.0 => fb.ins().fmul(v, v),
        3.0 => {
            let s = fb.ins().fmul(v, v);
            fb.ins().fmul(s, v)
        }
        -1.0 => {
            let one = fconst(fb, ty, 1.0);
            fb.ins().fdiv(one, v)
        }
        _ => {
            let r = fb.ins().sqrt(v);
            let ninf = fconst(fb, ty, f32::NEG_INFINITY);
            let is_ninf = fb.ins().fcmp(FloatCC::Equal, v, ninf);
            let inf = fconst(fb, ty, f32::INFINITY);
            choose(fb, is_ninf, inf, r)
        }
    }
}

/// Pow with the interpreter's dtype rules: a float base takes the exponent converted to
/// f32 (inline for the common constant exponents, else `powf`); an integer base takes an
/// integer exponent exactly (square-and-multiply, wrapping) and a float one through f64
/// `pow`, truncated and wrapped.
pub(super) fn pow(k: &mut Kernel) -> Result<(), String> {
    let (base, exponent, out) = (k.input(0)?, k.input(1)?, k.output(0));
    let (bt, et) = (base.ty.dtype, exponent.ty.dtype);
    if out.ty.dtype != bt {
        return Err(format!(
            "result type {} differs from the base's {bt}",
            out.ty.dtype
        ));
    }
    let plan = Broadcast::new(out, &[base, exponent])?;
    let (pb, pe, po, ty, ety) = (base.ptr, exponent.ptr, out.ptr, out.elem(), exponent.elem());
    if bt == DType::F32 {
        if let Some(e) = exponent.constant.as_deref().and_then(inline_exponent) {
            return plan.emit_split(k, LANES, &[po, pb], &mut |fb, p, off, lanes| {
                let v = lanes.load(fb, 1, p[1], off[1]);
                let r = pow_by(fb, v, e);
                Lanes::store(fb, r, p[0], off[0]);
            });
        }
        let powf = k.import("powf", &[types::F32, types::F32], &[types::F32])?;
        plan.emit_lanes(k, 1, &mut |fb, off, _| {
            let v = emit::load_at(fb, ty, pb, off[1]);
            let e = emit::load_at(fb, ety, pe, off[2]);
            let e = to_f32(fb, e, et);
            let r = call(fb, powf, &[v, e]);
            emit::store_at(fb, r, po, off[0]);
        });
        return Ok(());
    }
    if !matches!(bt, DType::I32 | DType::I64) {
        return Err(format!("{bt} raised to {et} powers is not supported"));
    }
    if et == DType::F32 {
        let pow = k.import("pow", &[types::F64, types::F64], &[types::F64])?;
        plan.emit_lanes(k, 1, &mut |fb, off, _| {
            let v = emit::load_at(fb, ty, pb, off[1]);
            let v = widen(fb, v, bt);
            let v = fb.ins().fcvt_from_sint(types::F64, v);
            let e = emit::load_at(fb, ety, pe, off[2]);
            let e = fb.ins().fpromote(types::F64, e);
            let r = call(fb, pow, &[v, e]);
            let r = fb.ins().fcvt_to_sint_sat(types::I64, r);
            let r = narrow(fb, r, ty);
            emit::store_at(fb, r, po, off[0]);
        });
        return Ok(());
    }
    let fail = failure_block(k);
    plan.emit_lanes(k, 1, &mut |fb, off, _| {
        let b = emit::load_at(fb, ty, pb, off[1]);
        let b = widen(fb, b, bt);
        let e = emit::load_at(fb, ety, pe, off[2]);
        let e = widen(fb, e, et);
        let r = int_pow(fb, b, e, fail);
        let r = narrow(fb, r, ty);
        emit::store_at(fb, r, po, off[0]);
    });
    finish_failure(k, fail, "integer 0 raised to a negative power");
    Ok(())
}

/// An element of `dtype` converted to f32 as the interpreter converts it (`as f32`).
fn to_f32(fb: &mut FunctionBuilder, v: Value, dtype: DType) -> Value {
    if dtype == DType::F32 {
        return v;
    }
    let w = widen(fb, v, dtype);
    fb.ins().fcvt_from_sint(types::F32, w)
}

/// `b^e` on i64 (wrapping) by square-and-multiply; a negative `e` gives 1 for 1, ±1 for
/// -1, 0 otherwise, and branches to `fail` for 0 (the interpreter's rules).
fn int_pow(fb: &mut FunctionBuilder, b: Value, e: Value, fail: Block) -> Value {
    let negative = fb.ins().icmp_imm_s(IntCC::SignedLessThan, e, 0);
    let zero_base = fb.ins().icmp_imm_s(IntCC::Equal, b, 0);
    let invalid = fb.ins().band(negative, zero_base);
    let ok = fb.create_block();
    fb.ins().brif(invalid, fail, &[], ok, &[]);
    fb.switch_to_block(ok);
    let i64t = types::I64;
    // The loop runs on max(e, 0).
    let zero = fb.ins().iconst(i64t, 0);
    let steps = fb.ins().smax(e, zero);
    let header = fb.create_block();
    let body = fb.create_block();
    let exit = fb.create_block();
    for block in [header, body] {
        for _ in 0..3 {
            fb.append_block_param(block, i64t);
        }
    }
    fb.append_block_param(exit, i64t);
    let one = fb.ins().iconst(i64t, 1);
    fb.ins().jump(
        header,
        &[
            BlockArg::Value(one),
            BlockArg::Value(b),
            BlockArg::Value(steps),
        ],
    );
    fb.switch_to_block(header);
    let [r, base, n] = [0, 1, 2].map(|i| fb.block_params(header)[i]);
    let more = fb.ins().icmp_imm_s(IntCC::NotEqual, n, 0);
    fb.ins().brif(
        more,
        body,
        &[
            BlockArg::Value(r),
            BlockArg::Value(base),
            BlockArg::Value(n),
        ],
        exit,
        &[BlockArg::Value(r)],
    );
    fb.switch_to_block(body);
    let [r, base, n] = [0, 1, 2].map(|i| fb.block_params(body)[i]);
    let bit = fb.ins().band_imm_s(n, 1);
    let odd = fb.ins().icmp_imm_s(IntCC::NotEqual, bit, 0);
    let product = fb.ins().imul(r, base);
    let r = fb.ins().select(odd, product, r);
    let base = fb.ins().imul(base, base);
    let n = fb.ins().ushr_imm_s(n, 1);
    fb.ins().jump(
        header,
        &[
            BlockArg::Value(r),
            BlockArg::Value(base),
            BlockArg::Value(n),
        ],
    );
    fb.switch_to_block(exit);
    let power = fb.block_params(exit)[0];
    // Negative exponents: 1 for 1, (-1)^e for -1, 0 otherwise.
    let is_one = fb.ins().icmp_imm_s(IntCC::Equal, b, 1);
    let is_minus_one = fb.ins().icmp_imm_s(IntCC::Equal, b, -1);
    let parity = fb.ins().band_imm_s(e, 1);
    let odd = fb.ins().icmp_imm_s(IntCC::NotEqual, parity, 0);
    let minus = fb.ins().iconst(i64t, -1);
    let signed_one = fb.ins().select(odd, minus, one);
    let r = fb.ins().select(is_minus_one, signed_one, zero);
    let r = fb.ins().select(is_one, one, r);
    fb.ins().select(negative, r, power)
}
