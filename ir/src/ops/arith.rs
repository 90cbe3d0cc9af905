//! Broadcasting arithmetic beyond Add/Sub/Mul/Div: Pow, Mod, Min, Max, Mean, Sum, PRelu;
//! and the helpers the elementwise family shares (operand checks, broadcasting of any
//! number of operands, integer wrapping).
//!
//! Integers wrap in their dtype as numpy's do; an integer division by zero (Mod) and an
//! integer zero raised to a negative power (Pow) are errors rather than undefined values.

use super::broadcast::{broadcast_indices, broadcast_shapes, broadcast_static};
use super::{EvalCtx, InferCtx};
use crate::{DType, OpKind, Shape, Tensor, TensorData, TensorType};

/// Whether `dtype` is one of the numeric dtypes the elementwise ops compute on (4-bit
/// values and bools are not numbers here: ONNX's math ops do not take them).
pub(super) fn is_numeric(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::F32 | DType::I8 | DType::U8 | DType::I32 | DType::I64
    )
}

/// Every operand's type, refusing quantized ones (the elementwise family computes on real
/// values: a quantized operand must be dequantized first).
pub(super) fn operand_types<'a>(cx: &InferCtx<'a>) -> Result<Vec<&'a TensorType>, String> {
    (0..cx.inputs.len())
        .map(|i| {
            let t = cx.input(i)?;
            match t.quant {
                Some(_) => Err(format!("operand {i} is quantized; dequantize it first")),
                None => Ok(t),
            }
        })
        .collect()
}

/// The one dtype all `types` share, or an error naming the two that differ.
pub(super) fn common_dtype(types: &[&TensorType]) -> Result<DType, String> {
    let first = types.first().ok_or("no operands")?.dtype;
    match types.iter().find(|t| t.dtype != first) {
        Some(t) => Err(format!("operand types differ: {first} and {}", t.dtype)),
        None => Ok(first),
    }
}

/// The numpy broadcast of every operand's static shape.
pub(super) fn broadcast_types(types: &[&TensorType]) -> Result<Shape, String> {
    let first = types.first().ok_or("no operands")?.shape.clone();
    types[1..]
        .iter()
        .try_fold(first, |acc, t| broadcast_static(&acc, &t.shape))
}

/// Concrete operands broadcast together: the result's shape and, per operand, the flat
/// index of its element under each result element (row-major).
pub(super) fn broadcast_all(ts: &[&Tensor]) -> Result<(Vec<usize>, Vec<Vec<usize>>), String> {
    let first = ts.first().ok_or("no operands")?.shape().to_vec();
    let shape = ts[1..]
        .iter()
        .try_fold(first, |acc, t| broadcast_shapes(&acc, t.shape()))?;
    let indices = ts
        .iter()
        .map(|t| broadcast_indices(t.shape(), &shape))
        .collect();
    Ok((shape, indices))
}

/// `v` wrapped into `dtype`'s range as a two's-complement integer of that width.
pub(super) fn wrap(dtype: DType, v: i128) -> i64 {
    let (lo, hi) = dtype.int_range().unwrap_or((i64::MIN, i64::MAX));
    let width = hi as i128 - lo as i128 + 1;
    ((v - lo as i128).rem_euclid(width) + lo as i128) as i64
}

/// Every operand's value.
pub(super) fn operand_values<'a>(cx: &EvalCtx<'a>) -> Result<Vec<&'a Tensor>, String> {
    (0..cx.inputs.len()).map(|i| cx.input(i)).collect()
}

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    use OpKind::*;
    let types = operand_types(cx)?;
    let shape = broadcast_types(&types)?;
    let dtype = match cx.op.kind {
        // The base decides the result; any numeric exponent converts.
        Pow => {
            let (base, exponent) = (types[0].dtype, types[1].dtype);
            if !matches!(base, DType::F32 | DType::I32 | DType::I64) || !is_numeric(exponent) {
                return Err(format!(
                    "{base} raised to {exponent} powers is not supported"
                ));
            }
            base
        }
        Mod => {
            let dtype = common_dtype(&types)?;
            match cx.op.attrs.int("fmod")? {
                0 | 1 => {}
                other => return Err(format!("fmod must be 0 or 1, found {other}")),
            }
            dtype
        }
        Min | Max => common_dtype(&types)?,
        Sum | Mean | PRelu => match common_dtype(&types)? {
            DType::F32 => DType::F32,
            other => return Err(format!("expects f32, found {other}")),
        },
        other => return Err(format!("{other} is not a broadcasting arithmetic op")),
    };
    if !is_numeric(dtype) {
        return Err(format!("{dtype} operands are not supported"));
    }
    Ok(vec![TensorType::new(dtype, shape)])
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let kind = cx.op.kind;
    let ts = operand_values(cx)?;
    if matches!(kind, OpKind::Pow | OpKind::Mod | OpKind::PRelu) && ts.len() != 2 {
        return Err(format!("{kind} takes two operands, found {}", ts.len()));
    }
    let (shape, idx) = broadcast_all(&ts)?;
    let dtype = ts[0].dtype();
    let count: usize = shape.iter().product();
    let python = cx.op.attrs.int("fmod").is_ok_and(|f| f == 0);
    if kind == OpKind::Pow {
        return pow(ts[0], ts[1], shape, &idx).map(|t| vec![t]);
    }
    if dtype == DType::F32 {
        let xs = ts
            .iter()
            .map(|t| t.as_f32())
            .collect::<Result<Vec<_>, _>>()?;
        let at = |k: usize, j: usize| xs[j][idx[j][k]];
        let n = ts.len();
        let fold = |k: usize, f: &dyn Fn(f32, f32) -> f32| {
            (1..n).fold(at(k, 0), |acc, j| f(acc, at(k, j)))
        };
        let data: Vec<f32> = (0..count)
            .map(|k| match kind {
                OpKind::Min => fold(k, &|a, b| {
                    if a.is_nan() || b.is_nan() {
                        f32::NAN
                    } else {
                        a.min(b)
                    }
                }),
                OpKind::Max => fold(k, &|a, b| {
                    if a.is_nan() || b.is_nan() {
                        f32::NAN
                    } else {
                        a.max(b)
                    }
                }),
                OpKind::Sum => fold(k, &|a, b| a + b),
                OpKind::Mean => fold(k, &|a, b| a + b) / n as f32,
                OpKind::Mod => float_mod(at(k, 0), at(k, 1), python),
                // PRelu: NaN keeps NaN (the comparison is false).
                _ => {
                    let x = at(k, 0);
                    if x < 0.0 {
                        at(k, 1) * x
                    } else {
                        x
                    }
                }
            })
            .collect();
        return Tensor::new(DType::F32, shape, TensorData::F32(data)).map(|t| vec![t]);
    }
    let xs = ts
        .iter()
        .map(|t| t.to_i64_vec())
        .collect::<Result<Vec<_>, _>>()?;
    let at = |k: usize, j: usize| xs[j][idx[j][k]];
    let mut data = Vec::with_capacity(count);
    for k in 0..count {
        data.push(match kind {
            OpKind::Min => (1..ts.len()).fold(at(k, 0), |a, j| a.min(at(k, j))),
            OpKind::Max => (1..ts.len()).fold(at(k, 0), |a, j| a.max(at(k, j))),
            OpKind::Mod => wrap(dtype, int_mod(at(k, 0), at(k, 1), python)?),
            other => return Err(format!("{other} on {dtype} is not supported")),
        });
    }
    Tensor::from_i64_values(dtype, shape, data).map(|t| vec![t])
}

/// Float remainder: C's `fmod` (the dividend's sign, NaN for a zero divisor or an
/// infinite dividend), or with `python` numpy's `mod`: moved by one divisor to take the
/// divisor's sign, and a zero with the divisor's sign (ONNX's Mod since opset 28).
fn float_mod(a: f32, b: f32, python: bool) -> f32 {
    let r = a % b;
    match python {
        false => r,
        true if r == 0.0 => 0.0f32.copysign(b),
        true if (r < 0.0) != (b < 0.0) => r + b,
        true => r,
    }
}

/// Integer remainder in i128 (so that `MIN % -1` is 0): the dividend's sign, or with
/// `python` the divisor's.
fn int_mod(p: i64, q: i64, python: bool) -> Result<i128, String> {
    if q == 0 {
        return Err("integer division by zero".to_string());
    }
    let (p, q) = (p as i128, q as i128);
    let r = p % q;
    Ok(if python && r != 0 && (r < 0) != (q < 0) {
        r + q
    } else {
        r
    })
}

/// Pow with numpy's dtype rules: a float base takes the exponent converted to f32; an
/// integer base takes an integer exponent exactly (wrapping) and a float one through f64,
/// truncated toward zero (saturating, NaN to 0) and wrapped.
fn pow(
    base: &Tensor,
    exponent: &Tensor,
    shape: Vec<usize>,
    idx: &[Vec<usize>],
) -> Result<Tensor, String> {
    let count = idx[0].len();
    if base.dtype() == DType::F32 {
        let (b, e) = (base.as_f32()?, exponent.to_f32_vec());
        let data = (0..count)
            .map(|k| b[idx[0][k]].powf(e[idx[1][k]]))
            .collect();
        return Tensor::new(DType::F32, shape, TensorData::F32(data));
    }
    let dtype = base.dtype();
    let b = base.to_i64_vec()?;
    let data = if exponent.dtype() == DType::F32 {
        let e = exponent.as_f32()?;
        (0..count)
            .map(|k| {
                wrap(
                    dtype,
                    (b[idx[0][k]] as f64).powf(e[idx[1][k]] as f64) as i64 as i128,
                )
            })
            .collect()
    } else {
        let e = exponent.to_i64_vec()?;
        (0..count)
            .map(|k| int_pow(b[idx[0][k]], e[idx[1][k]]).map(|v| wrap(dtype, v as i128)))
            .collect::<Result<Vec<_>, _>>()?
    };
    Tensor::from_i64_values(dtype, shape, data)
}

/// `b ^ e` on integers, wrapping in i64 (which wraps every narrower dtype alike). A
/// negative exponent truncates `1 / b^|e|` toward zero: 1 for 1, ±1 for -1, 0 otherwise,
/// and an error for 0.
fn int_pow(b: i64, e: i64) -> Result<i64, String> {
    if e < 0 {
        return match b {
            0 => Err("integer 0 raised to a negative power".to_string()),
            1 => Ok(1),
            -1 => Ok(if e % 2 == 0 { 1 } else { -1 }),
            _ => Ok(0),
        };
    }
    let (mut result, mut base, mut e) = (1i64, b, e as u64);
    while e > 0 {
        if e & 1 == 1 {
            result = result.wrapping_mul(base);
        }
        base = base.wrapping_mul(base);
        e >>= 1;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::run_op;
    use crate::{AttrValue, Attrs};

    fn ints(dtype: DType, v: Vec<i64>) -> Tensor {
        Tensor::from_i64_values(dtype, vec![v.len()], v).unwrap()
    }

    fn run(kind: OpKind, attrs: Attrs, inputs: Vec<Tensor>) -> Result<Tensor, String> {
        run_op(
            kind,
            attrs,
            inputs.into_iter().map(|t| (t, None)).collect(),
            None,
        )
    }

    #[test]
    fn variadic_broadcasting() {
        let a = Tensor::from_f32(&[2, 1], vec![1.0, f32::NAN]);
        let b = Tensor::from_f32(&[3], vec![0.0, 5.0, -1.0]);
        let c = Tensor::from_f32(&[], vec![2.0]);
        let max = run(
            OpKind::Max,
            Attrs::new(),
            vec![a.clone(), b.clone(), c.clone()],
        )
        .unwrap();
        assert_eq!(max.shape(), &[2, 3]);
        assert_eq!(&max.as_f32().unwrap()[..3], &[2.0, 5.0, 2.0]);
        assert!(max.as_f32().unwrap()[3..].iter().all(|v| v.is_nan()));
        let mean = run(OpKind::Mean, Attrs::new(), vec![a, b, c]).unwrap();
        assert_eq!(mean.as_f32().unwrap()[0], 1.0);
        let single = run(
            OpKind::Sum,
            Attrs::new(),
            vec![Tensor::from_f32(&[2], vec![1.0, 2.0])],
        )
        .unwrap();
        assert_eq!(single.as_f32().unwrap(), &[1.0, 2.0]);
        let min = run(
            OpKind::Min,
            Attrs::new(),
            vec![ints(DType::U8, vec![3, 200]), ints(DType::U8, vec![7, 100])],
        )
        .unwrap();
        assert_eq!(min.to_i64_vec().unwrap(), vec![3, 100]);
    }

    #[test]
    fn mod_signs_and_division_by_zero() {
        let fmod = |f: i64| Attrs::new().with("fmod", AttrValue::Int(f));
        let (p, q) = (
            ints(DType::I32, vec![-7, 7, -7, i32::MIN as i64]),
            ints(DType::I32, vec![3, -3, -3, -1]),
        );
        assert_eq!(
            run(OpKind::Mod, fmod(0), vec![p.clone(), q.clone()])
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            vec![2, -2, -1, 0]
        );
        assert_eq!(
            run(OpKind::Mod, fmod(1), vec![p, q])
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            vec![-1, 1, -1, 0]
        );
        let zero = run(
            OpKind::Mod,
            fmod(0),
            vec![ints(DType::I64, vec![1]), ints(DType::I64, vec![0])],
        );
        assert!(zero.unwrap_err().contains("division by zero"));
        let f = run(
            OpKind::Mod,
            fmod(1),
            vec![
                Tensor::from_f32(&[2], vec![-7.5, 1.0]),
                Tensor::from_f32(&[2], vec![2.0, 0.0]),
            ],
        )
        .unwrap();
        assert_eq!(f.as_f32().unwrap()[0], -1.5);
        assert!(f.as_f32().unwrap()[1].is_nan());
        let inf = f32::INFINITY;
        let p = Tensor::from_f32(&[5], vec![-0.0, -3.0, 1.0, 5.5, inf]);
        let q = Tensor::from_f32(&[5], vec![2.0, inf, -inf, -2.0, 2.0]);
        let m = run(OpKind::Mod, fmod(0), vec![p, q]).unwrap();
        let m = m.as_f32().unwrap();
        assert!(m[0] == 0.0 && m[0].is_sign_positive());
        assert_eq!(&m[1..4], &[inf, -inf, -0.5]);
        assert!(m[4].is_nan());
    }

    #[test]
    fn pow_dtypes() {
        let p = run(
            OpKind::Pow,
            Attrs::new(),
            vec![
                Tensor::from_f32(&[3], vec![2.0, -8.0, 4.0]),
                ints(DType::I64, vec![3, 1, -1]),
            ],
        )
        .unwrap();
        assert_eq!(p.as_f32().unwrap(), &[8.0, -8.0, 0.25]);
        let q = run(
            OpKind::Pow,
            Attrs::new(),
            vec![
                ints(DType::I32, vec![3, 2, 7]),
                Tensor::from_f32(&[3], vec![2.0, 0.5, -1.0]),
            ],
        )
        .unwrap();
        assert_eq!(q.to_i64_vec().unwrap(), vec![9, 1, 0]);
        let w = run(
            OpKind::Pow,
            Attrs::new(),
            vec![
                ints(DType::I32, vec![2, -1, 5]),
                ints(DType::I32, vec![40, -3, 0]),
            ],
        )
        .unwrap();
        assert_eq!(w.to_i64_vec().unwrap(), vec![0, -1, 1]);
        assert!(run(
            OpKind::Pow,
            Attrs::new(),
            vec![ints(DType::I64, vec![0]), ints(DType::I64, vec![-2])]
        )
        .is_err());
        assert_eq!(int_pow(3, 41), Ok(3i64.wrapping_pow(41)));
    }

    #[test]
    fn inference_keeps_symbolic_extents() {
        use crate::{Dim, Op, Shape, Symbol};
        let seq = Dim::Sym(Symbol::new("seq"));
        let t = |dtype: DType, dims: Vec<Dim>| TensorType::new(dtype, Shape(dims));
        let (a, b, c) = (
            t(DType::F32, vec![Dim::Batch, seq]),
            t(DType::F32, vec![seq]),
            t(DType::F32, vec![]),
        );
        let infer = |kind: OpKind, inputs: &[&TensorType]| {
            let inputs: Vec<Option<&TensorType>> = inputs.iter().map(|&t| Some(t)).collect();
            crate::infer_op(&Op::new(kind, Attrs::new()), &inputs, &[]).map(|mut v| v.remove(0))
        };
        assert_eq!(infer(OpKind::Sum, &[&a, &b, &c]).unwrap().shape, a.shape);
        assert_eq!(
            infer(OpKind::Less, &[&b, &c]).unwrap(),
            t(DType::Bool, vec![seq])
        );
        let cond = t(DType::Bool, vec![Dim::Batch, Dim::Fixed(1)]);
        assert_eq!(
            infer(OpKind::Where, &[&cond, &b, &c]).unwrap().shape,
            a.shape
        );
        let other = t(DType::F32, vec![Dim::Fixed(3)]);
        assert_eq!(
            infer(OpKind::Max, &[&a, &other]).unwrap().shape,
            Shape(vec![Dim::Batch, Dim::Fixed(3)])
        );
        assert!(infer(OpKind::Max, &[&a, &t(DType::I32, vec![])])
            .unwrap_err()
            .contains("differ"));
    }

    #[test]
    fn prelu_broadcasts_the_slope() {
        let x = Tensor::from_f32(&[2, 2], vec![-1.0, 2.0, -3.0, f32::NAN]);
        let slope = Tensor::from_f32(&[2, 1], vec![0.5, 2.0]);
        let y = run(OpKind::PRelu, Attrs::new(), vec![x, slope]).unwrap();
        assert_eq!(&y.as_f32().unwrap()[..3], &[-0.5, 2.0, -6.0]);
        assert!(y.as_f32().unwrap()[3].is_nan());
    }
}
