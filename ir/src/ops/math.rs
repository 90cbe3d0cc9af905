//! Elementwise ops: activations and broadcasting arithmetic.

use super::broadcast::{broadcast_indices, broadcast_shapes, broadcast_static};
use super::{EvalCtx, InferCtx};
use crate::{DType, OpKind, Tensor, TensorData, TensorType};

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    use OpKind::*;
    let x = cx.input(0)?;
    if x.quant.is_some() {
        return Err("operand is quantized; dequantize it first".to_string());
    }
    match cx.op.kind {
        Add | Sub | Mul | Div => {
            let y = cx.input(1)?;
            if y.quant.is_some() {
                return Err("operand 1 is quantized; dequantize it first".to_string());
            }
            if x.dtype != y.dtype {
                return Err(format!("operand types differ: {} and {}", x.dtype, y.dtype));
            }
            if !matches!(
                x.dtype,
                DType::F32 | DType::I32 | DType::I64 | DType::I8 | DType::U8
            ) {
                return Err(format!("{} operands are not supported", x.dtype));
            }
            Ok(vec![TensorType::new(
                x.dtype,
                broadcast_static(&x.shape, &y.shape)?,
            )])
        }
        Relu | Clip => {
            if !matches!(
                x.dtype,
                DType::F32 | DType::I32 | DType::I64 | DType::I8 | DType::U8
            ) {
                return Err(format!("{} operands are not supported", x.dtype));
            }
            Ok(vec![TensorType::new(x.dtype, x.shape.clone())])
        }
        _ => {
            if x.dtype != DType::F32 {
                return Err(format!("expects f32, found {}", x.dtype));
            }
            Ok(vec![TensorType::new(DType::F32, x.shape.clone())])
        }
    }
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    use OpKind::*;
    let x = cx.input(0)?;
    let attrs = &cx.op.attrs;
    let out = match cx.op.kind {
        Add | Sub | Mul | Div => binary(cx.op.kind, x, cx.input(1)?)?,
        // NaN stays NaN (numpy max(x, 0) semantics).
        Relu => map_numeric(
            x,
            |v| if v > 0.0 || v.is_nan() { v } else { 0.0 },
            |v| v.max(0),
        )?,
        Clip => {
            let (lo, hi) = (attrs.float("min")?, attrs.float("max")?);
            // Integer bounds arrive as exactly representable floats; clamp in i64.
            let (ilo, ihi) = (float_bound(lo, i64::MIN), float_bound(hi, i64::MAX));
            map_numeric(
                x,
                |v| if v.is_nan() { v } else { v.max(lo).min(hi) },
                |v| v.max(ilo).min(ihi),
            )?
        }
        LeakyRelu => {
            let alpha = attrs.float("alpha")?;
            map_f32(x, |v| if v < 0.0 { alpha * v } else { v })?
        }
        Sigmoid => map_f32(x, sigmoid)?,
        Tanh => map_f32(x, f32::tanh)?,
        HardSigmoid => {
            let (alpha, beta) = (attrs.float("alpha")?, attrs.float("beta")?);
            map_f32(x, |v| (alpha * v + beta).clamp(0.0, 1.0))?
        }
        HardSwish => map_f32(x, |v| v * (v / 6.0 + 0.5).clamp(0.0, 1.0))?,
        other => return Err(format!("{other} is not an elementwise op")),
    };
    Ok(vec![out])
}

/// The logistic function, without overflow for large |x|.
fn sigmoid(v: f32) -> f32 {
    if v >= 0.0 {
        1.0 / (1.0 + (-v).exp())
    } else {
        let e = v.exp();
        e / (1.0 + e)
    }
}

fn float_bound(v: f32, infinite: i64) -> i64 {
    if v.is_infinite() {
        infinite
    } else {
        v as i64
    }
}

fn map_f32(x: &Tensor, f: impl Fn(f32) -> f32) -> Result<Tensor, String> {
    let v = x.as_f32()?;
    Tensor::new(
        DType::F32,
        x.shape().to_vec(),
        TensorData::F32(v.iter().map(|&a| f(a)).collect()),
    )
}

/// Applies `f` to float elements and `g` to integer ones (kept in their dtype).
fn map_numeric(
    x: &Tensor,
    f: impl Fn(f32) -> f32,
    g: impl Fn(i64) -> i64,
) -> Result<Tensor, String> {
    if x.dtype() == DType::F32 {
        return map_f32(x, f);
    }
    let values = x.to_i64_vec()?.into_iter().map(g).collect();
    Tensor::from_i64_values(x.dtype(), x.shape().to_vec(), values)
}

fn binary(kind: OpKind, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    if a.dtype() != b.dtype() {
        return Err(format!(
            "operand types differ: {} and {}",
            a.dtype(),
            b.dtype()
        ));
    }
    let shape = broadcast_shapes(a.shape(), b.shape())?;
    let (ia, ib) = (
        broadcast_indices(a.shape(), &shape),
        broadcast_indices(b.shape(), &shape),
    );
    if a.dtype() == DType::F32 {
        let (x, y) = (a.as_f32()?, b.as_f32()?);
        let f = |p: f32, q: f32| match kind {
            OpKind::Add => p + q,
            OpKind::Sub => p - q,
            OpKind::Mul => p * q,
            _ => p / q,
        };
        let data = ia.iter().zip(&ib).map(|(&i, &j)| f(x[i], y[j])).collect();
        return Tensor::new(DType::F32, shape, TensorData::F32(data));
    }
    // Integers: numpy semantics, wrapping in the operand dtype, division truncating.
    let (x, y) = (a.to_i64_vec()?, b.to_i64_vec()?);
    let wrap = |v: i128| super::arith::wrap(a.dtype(), v);
    let mut data = Vec::with_capacity(ia.len());
    for (&i, &j) in ia.iter().zip(&ib) {
        let (p, q) = (x[i] as i128, y[j] as i128);
        data.push(wrap(match kind {
            OpKind::Add => p + q,
            OpKind::Sub => p - q,
            OpKind::Mul => p * q,
            _ if q == 0 => return Err("integer division by zero".to_string()),
            _ => p / q,
        }));
    }
    Tensor::from_i64_values(a.dtype(), shape, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::run_op;
    use crate::{AttrValue, Attrs, Graph, Op, Shape};

    fn run1(kind: OpKind, attrs: Attrs, x: Tensor) -> Tensor {
        run_op(kind, attrs, vec![(x, None)], None).unwrap()
    }

    fn run2(kind: OpKind, a: Tensor, b: Tensor) -> Result<Tensor, String> {
        run_op(kind, Attrs::new(), vec![(a, None), (b, None)], None)
    }

    #[test]
    fn broadcasting_arithmetic() {
        let a = Tensor::from_f32(&[2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let b = Tensor::from_f32(&[3], vec![10., 20., 30.]);
        assert_eq!(
            run2(OpKind::Add, a.clone(), b.clone())
                .unwrap()
                .as_f32()
                .unwrap(),
            &[11., 22., 33., 14., 25., 36.]
        );
        assert_eq!(run2(OpKind::Div, a, b).unwrap().as_f32().unwrap()[5], 0.2);
    }

    #[test]
    fn integers_wrap_and_truncate() {
        let a = Tensor::new(DType::U8, vec![3], TensorData::U8(vec![250, 7, 9])).unwrap();
        let b = Tensor::new(DType::U8, vec![3], TensorData::U8(vec![10, 2, 3])).unwrap();
        assert_eq!(
            run2(OpKind::Add, a.clone(), b.clone())
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            vec![4, 9, 12]
        );
        let c = Tensor::from_i64(&[2], vec![-7, 7]);
        let d = Tensor::from_i64(&[2], vec![2, 0]);
        assert!(run2(OpKind::Div, c, d)
            .unwrap_err()
            .contains("division by zero"));
        let e = Tensor::new(DType::I32, vec![1], TensorData::I32(vec![-7])).unwrap();
        let f = Tensor::new(DType::I32, vec![1], TensorData::I32(vec![2])).unwrap();
        assert_eq!(
            run2(OpKind::Div, e, f).unwrap().to_i64_vec().unwrap(),
            vec![-3]
        );
    }

    #[test]
    fn activations() {
        let x = Tensor::from_f32(&[4], vec![-2.0, f32::NAN, 0.5, 100.0]);
        let relu = run1(OpKind::Relu, Attrs::new(), x.clone());
        assert_eq!(relu.as_f32().unwrap()[0], 0.0);
        assert!(relu.as_f32().unwrap()[1].is_nan());
        let clip = Attrs::new()
            .with("min", AttrValue::Float(0.0))
            .with("max", AttrValue::Float(6.0));
        assert_eq!(
            run1(OpKind::Clip, clip, x.clone()).as_f32().unwrap()[3],
            6.0
        );
        let s = run1(
            OpKind::Sigmoid,
            Attrs::new(),
            Tensor::from_f32(&[2], vec![-100.0, 100.0]),
        );
        assert_eq!(s.as_f32().unwrap(), &[sigmoid(-100.0), 1.0]);
        let hs = run1(
            OpKind::HardSwish,
            Attrs::new(),
            Tensor::from_f32(&[3], vec![-4.0, 1.0, 4.0]),
        );
        assert_eq!(hs.as_f32().unwrap(), &[0.0, 1.0 * (1.0 / 6.0 + 0.5), 4.0]);
    }

    #[test]
    fn integer_clip() {
        let x = Tensor::new(DType::I8, vec![3], TensorData::I8(vec![-100, 5, 100])).unwrap();
        let clip = Attrs::new()
            .with("min", AttrValue::Float(-10.0))
            .with("max", AttrValue::Float(f32::INFINITY));
        assert_eq!(
            run1(OpKind::Clip, clip, x).to_i64_vec().unwrap(),
            vec![-10, 5, 100]
        );
    }

    #[test]
    fn quantized_operand_is_rejected() {
        let mut g = Graph::new("t");
        let ty = TensorType::quantized(
            DType::U8,
            Shape::fixed(&[2]),
            crate::QuantParams::per_tensor(0.1, 0),
        );
        let x = g.add_input("x", ty);
        let err = g
            .add_op("r", Op::new(OpKind::Relu, Attrs::new()), &[Some(x)], &["y"])
            .unwrap_err();
        assert!(err.to_string().contains("dequantize"), "{err}");
    }
}
