//! Cast: conversion between dtypes, with numpy's rules (float to integer truncates toward
//! zero; integers wrap to the narrower width; anything non-zero is `true`).

use super::{EvalCtx, InferCtx};
use crate::{DType, OpKind, Tensor, TensorData, TensorType};

/// The target dtype of a Cast.
fn target(cx_op: &crate::Op) -> Result<DType, String> {
    cx_op.attrs.str("to")?.parse()
}

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    let x = cx.input(0)?;
    if cx.op.kind != OpKind::Cast {
        return Err(format!("{} is not a conversion", cx.op.kind));
    }
    if x.quant.is_some() {
        return Err("operand is quantized; dequantize it first".to_string());
    }
    let to = target(cx.op)?;
    Ok(vec![TensorType::new(to, x.shape.clone())])
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let x = cx.input(0)?;
    Ok(vec![cast(x, target(cx.op)?)?])
}

/// `x` converted to `to`.
pub(crate) fn cast(x: &Tensor, to: DType) -> Result<Tensor, String> {
    let shape = x.shape().to_vec();
    if to == DType::F32 {
        return Tensor::new(DType::F32, shape, TensorData::F32(x.to_f32_vec()));
    }
    let values: Vec<i64> = match x.data() {
        TensorData::F32(v) if to == DType::Bool => v.iter().map(|&f| (f != 0.0) as i64).collect(),
        // Truncation toward zero, saturating at the i64 range; NaN becomes 0.
        TensorData::F32(v) => v.iter().map(|&f| f as i64).collect(),
        _ => x.to_i64_vec()?,
    };
    let (lo, hi) = to.int_range().ok_or("integer target expected")?;
    let wrap = |v: i64| -> i64 {
        if to == DType::Bool {
            return (v != 0) as i64;
        }
        let width = hi as i128 - lo as i128 + 1;
        ((v as i128 - lo as i128).rem_euclid(width) + lo as i128) as i64
    };
    Tensor::from_i64_values(to, shape, values.into_iter().map(wrap).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::run_op;
    use crate::{AttrValue, Attrs};

    fn cast_to(x: Tensor, to: &str) -> Tensor {
        run_op(
            OpKind::Cast,
            Attrs::new().with("to", AttrValue::Str(to.into())),
            vec![(x, None)],
            None,
        )
        .unwrap()
    }

    #[test]
    fn numpy_conversions() {
        let f = Tensor::from_f32(&[4], vec![-1.7, 2.9, 0.0, 300.0]);
        assert_eq!(
            cast_to(f.clone(), "i64").to_i64_vec().unwrap(),
            vec![-1, 2, 0, 300]
        );
        assert_eq!(
            cast_to(f.clone(), "u8").to_i64_vec().unwrap(),
            vec![255, 2, 0, 44]
        );
        assert_eq!(cast_to(f, "bool").to_i64_vec().unwrap(), vec![1, 1, 0, 1]);
        let i = Tensor::from_i64(&[2], vec![3, 0]);
        assert_eq!(cast_to(i.clone(), "f32").as_f32().unwrap(), &[3.0, 0.0]);
        assert_eq!(cast_to(i, "bool").dtype(), DType::Bool);
    }
}
