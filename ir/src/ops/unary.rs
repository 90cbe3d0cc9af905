//! One-operand elementwise ops: math functions (Sqrt, Exp, Log, Abs, Neg, Reciprocal,
//! Floor, Ceil, Round, Erf, Sin, Cos, Sign) and activations (Gelu, Elu, Selu, Softplus,
//! Mish, Softsign, ThresholdedRelu, Celu).
//!
//! Transcendental activations are evaluated in f64 and rounded once, in forms that neither
//! overflow nor cancel (Softplus's `ln(1 + e^x)` for large `x`, Elu's `e^x - 1` near 0):
//! the oracle gives the function's value, not the rounding errors of one f32 formula.
//! NaN propagates everywhere (a comparison-based activation keeps a NaN operand).

use super::arith::{is_numeric, operand_types, wrap};
use super::{EvalCtx, InferCtx};
use crate::{DType, Op, OpKind, Tensor, TensorData, TensorType};

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    use OpKind::*;
    let x = operand_types(cx)?[0];
    let supported = match cx.op.kind {
        Abs | Sign => is_numeric(x.dtype),
        // ONNX's Neg takes signed types only.
        Neg => matches!(x.dtype, DType::F32 | DType::I8 | DType::I32 | DType::I64),
        _ => x.dtype == DType::F32,
    };
    if !supported {
        return Err(format!("{} on {} is not supported", cx.op.kind, x.dtype));
    }
    if cx.op.kind == Gelu {
        gelu_uses_tanh(cx.op)?;
    }
    Ok(vec![TensorType::new(x.dtype, x.shape.clone())])
}

/// Whether a Gelu goes through `tanh` (`approximate` "tanh") rather than `erf` ("none").
pub fn gelu_uses_tanh(op: &Op) -> Result<bool, String> {
    match op.attrs.str("approximate")? {
        "none" => Ok(false),
        "tanh" => Ok(true),
        other => Err(format!(
            "approximate must be \"none\" or \"tanh\", found {other:?}"
        )),
    }
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let x = cx.input(0)?;
    let out = if x.dtype() == DType::F32 {
        let f = float_fn(cx.op)?;
        let v = x.as_f32()?.iter().map(|&a| f(a)).collect();
        Tensor::new(DType::F32, x.shape().to_vec(), TensorData::F32(v))?
    } else {
        let dtype = x.dtype();
        let g = |v: i64| -> Result<i64, String> {
            Ok(match cx.op.kind {
                OpKind::Abs => wrap(dtype, (v as i128).abs()),
                OpKind::Neg => wrap(dtype, -(v as i128)),
                OpKind::Sign => v.signum(),
                other => return Err(format!("{other} on {dtype} is not supported")),
            })
        };
        let v = x
            .to_i64_vec()?
            .into_iter()
            .map(g)
            .collect::<Result<Vec<_>, _>>()?;
        Tensor::from_i64_values(dtype, x.shape().to_vec(), v)?
    };
    Ok(vec![out])
}

/// `sqrt(2 / pi)`, the tanh form of Gelu's scale.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

/// The f32 function an op applies to each element.
fn float_fn(op: &Op) -> Result<Box<dyn Fn(f32) -> f32>, String> {
    use OpKind::*;
    let alpha = || op.attrs.float("alpha").map(f64::from);
    // Functions computed in f64 and rounded once.
    let wide = |f: Box<dyn Fn(f64) -> f64>| -> Box<dyn Fn(f32) -> f32> {
        Box::new(move |v: f32| f(v as f64) as f32)
    };
    Ok(match op.kind {
        Sqrt => Box::new(f32::sqrt),
        Exp => Box::new(f32::exp),
        Log => Box::new(f32::ln),
        Abs => Box::new(f32::abs),
        Neg => Box::new(|v: f32| -v),
        Reciprocal => Box::new(|v: f32| 1.0 / v),
        Floor => Box::new(f32::floor),
        Ceil => Box::new(f32::ceil),
        Round => Box::new(f32::round_ties_even),
        Sin => Box::new(f32::sin),
        Cos => Box::new(f32::cos),
        Sign => Box::new(|v: f32| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v * 0.0
            }
        }),
        Erf => wide(Box::new(libm::erf)),
        Gelu if gelu_uses_tanh(op)? => wide(Box::new(|x| {
            0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
        })),
        Gelu => wide(Box::new(|x| {
            0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))
        })),
        Elu => {
            let a = alpha()?;
            wide(Box::new(move |x| if x < 0.0 { a * x.exp_m1() } else { x }))
        }
        Selu => {
            let (a, g) = (alpha()?, op.attrs.float("gamma")? as f64);
            wide(Box::new(
                move |x| if x <= 0.0 { g * a * x.exp_m1() } else { g * x },
            ))
        }
        Softplus => wide(Box::new(softplus)),
        Mish => wide(Box::new(|x| x * softplus(x).tanh())),
        Softsign => Box::new(|v: f32| v / (1.0 + v.abs())),
        ThresholdedRelu => {
            let a = op.attrs.float("alpha")?;
            Box::new(move |v: f32| if v > a || v.is_nan() { v } else { 0.0 })
        }
        Celu => {
            let a = alpha()?;
            wide(Box::new(move |x| {
                if x.is_nan() {
                    x
                } else {
                    x.max(0.0) + (a * (x / a).exp_m1()).min(0.0)
                }
            }))
        }
        other => return Err(format!("{other} is not a one-operand elementwise op")),
    })
}

/// `ln(1 + e^x)` as `max(x, 0) + ln(1 + e^-|x|)`: no overflow for large `x`, no loss for
/// very negative `x`.
fn softplus(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::run_op;
    use crate::{AttrValue, Attrs};

    fn run(kind: OpKind, attrs: Attrs, x: Tensor) -> Result<Tensor, String> {
        run_op(kind, attrs, vec![(x, None)], None)
    }

    fn f(kind: OpKind, attrs: Attrs, v: &[f32]) -> Vec<f32> {
        run(kind, attrs, Tensor::from_f32(&[v.len()], v.to_vec()))
            .unwrap()
            .as_f32()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn math_functions() {
        let none = Attrs::new;
        assert_eq!(
            f(OpKind::Round, none(), &[0.5, 1.5, 2.5, -0.5, -1.7]),
            [0.0, 2.0, 2.0, -0.0, -2.0]
        );
        assert_eq!(f(OpKind::Sign, none(), &[-3.0, 0.0, 2.0]), [-1.0, 0.0, 1.0]);
        assert!(f(OpKind::Sign, none(), &[f32::NAN])[0].is_nan());
        assert!(f(OpKind::Sqrt, none(), &[-1.0])[0].is_nan());
        assert_eq!(f(OpKind::Log, none(), &[0.0])[0], f32::NEG_INFINITY);
        assert_eq!(
            f(OpKind::Erf, none(), &[0.0, 10.0, -10.0]),
            [0.0, 1.0, -1.0]
        );
        assert!((f(OpKind::Erf, none(), &[0.5])[0] - 0.520_499_9).abs() < 1e-7);
        assert_eq!(f(OpKind::Reciprocal, none(), &[0.0])[0], f32::INFINITY);
    }

    #[test]
    fn integer_math_wraps() {
        let x = Tensor::from_i64_values(DType::I8, vec![3], vec![-128, -5, 7]).unwrap();
        assert_eq!(
            run(OpKind::Abs, Attrs::new(), x.clone())
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            vec![-128, 5, 7]
        );
        assert_eq!(
            run(OpKind::Neg, Attrs::new(), x.clone())
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            vec![-128, 5, -7]
        );
        assert_eq!(
            run(OpKind::Sign, Attrs::new(), x)
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            vec![-1, -1, 1]
        );
        let u = Tensor::from_i64_values(DType::U8, vec![1], vec![3]).unwrap();
        assert!(run(OpKind::Neg, Attrs::new(), u).is_err());
        assert!(run(OpKind::Exp, Attrs::new(), Tensor::from_i64(&[1], vec![1])).is_err());
    }

    #[test]
    fn activations_are_stable() {
        let none = || Attrs::new().with("approximate", AttrValue::Str("none".into()));
        let tanh = || Attrs::new().with("approximate", AttrValue::Str("tanh".into()));
        let g = f(OpKind::Gelu, none(), &[1.0, -10.0]);
        assert!((g[0] - 0.841_344_7).abs() < 1e-6 && g[1].abs() < 1e-20);
        assert!((f(OpKind::Gelu, tanh(), &[1.0])[0] - 0.841_192).abs() < 1e-6);
        let bad = Attrs::new().with("approximate", AttrValue::Str("fast".into()));
        assert!(run(OpKind::Gelu, bad, Tensor::from_f32(&[1], vec![1.0])).is_err());
        assert_eq!(f(OpKind::Softplus, Attrs::new(), &[1000.0])[0], 1000.0);
        assert!((f(OpKind::Softplus, Attrs::new(), &[-50.0])[0] - (-50f32).exp()).abs() < 1e-30);
        assert_eq!(f(OpKind::Mish, Attrs::new(), &[100.0])[0], 100.0);
        let alpha = |a: f32| Attrs::new().with("alpha", AttrValue::Float(a));
        assert_eq!(f(OpKind::Elu, alpha(2.0), &[-1e-10, 3.0]), [-2e-10, 3.0]);
        assert_eq!(
            f(OpKind::ThresholdedRelu, alpha(1.0), &[1.0, 1.5])[..],
            [0.0, 1.5]
        );
        assert!(f(OpKind::ThresholdedRelu, alpha(1.0), &[f32::NAN])[0].is_nan());
        assert_eq!(f(OpKind::Celu, alpha(1.0), &[2.0])[0], 2.0);
        let selu = Attrs::new()
            .with("alpha", AttrValue::Float(2.0))
            .with("gamma", AttrValue::Float(3.0));
        assert_eq!(f(OpKind::Selu, selu, &[1.0])[0], 3.0);
        assert_eq!(f(OpKind::Softsign, Attrs::new(), &[-3.0])[0], -0.75);
    }
}
