//! Reductions: ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd, ReduceL1, ReduceL2,
//! ReduceSumSquare, ReduceLogSum, ReduceLogSumExp; ArgMax and ArgMin; CumSum.
//!
//! The reduced axes are the canonical `axes` attribute when the model gives them as
//! constants (the importer normalizes them: non-negative, sorted, and "no axes" resolved to
//! every axis unless `noop_with_empty_axes`), or operand 1 when they are computed at run
//! time; [`reduce_axes`] turns either into the axes both engines reduce. An empty list
//! reduces nothing: every result element is the reduction of one element (ReduceSumSquare
//! squares, ReduceL1 takes the absolute value), as the ONNX reference implementation does
//! with `noop_with_empty_axes`.
//!
//! Float reductions accumulate in f64 and round once; integer ones wrap in i64 and then in
//! the dtype, as integer Add and Mul do (`math.rs`), and ReduceMean divides the wrapped sum
//! truncating. A reduction over an empty set gives the ONNX identity: 0 for sums, 1 for
//! ReduceProd, −inf (or the dtype's minimum) for ReduceMax, +inf (or the maximum) for
//! ReduceMin, −inf for ReduceLogSum and ReduceLogSumExp, NaN for ReduceMean.

use super::broadcast::broadcast_indices;
use super::nn::widen;
use super::shape::axis_in;
use super::{EvalCtx, InferCtx};
use crate::{Attrs, DType, Dim, OpKind, Shape, Tensor, TensorData, TensorType};

/// Whether `kind` is one of the `Reduce*` ops.
pub fn is_reduction(kind: OpKind) -> bool {
    use OpKind::*;
    matches!(
        kind,
        ReduceMean
            | ReduceSum
            | ReduceMax
            | ReduceMin
            | ReduceProd
            | ReduceL1
            | ReduceL2
            | ReduceSumSquare
            | ReduceLogSum
            | ReduceLogSumExp
    )
}

/// Whether a reduction takes integer operands: the ones that are exact in integers.
fn takes_integers(kind: OpKind) -> bool {
    use OpKind::*;
    matches!(
        kind,
        ReduceMean | ReduceSum | ReduceMax | ReduceMin | ReduceProd | ReduceL1 | ReduceSumSquare
    )
}

/// The axes a reduction reduces, sorted: the `axes` attribute, or else the run-time axes
/// operand (`operand`, ONNX's values: negative ones count from the end; empty means every
/// axis unless `noop_with_empty_axes`). Shared by the interpreter and code generation.
pub fn reduce_axes(
    attrs: &Attrs,
    operand: Option<&[i64]>,
    rank: usize,
) -> Result<Vec<usize>, String> {
    let given: Vec<i64> = match (attrs.get("axes"), operand) {
        (Some(_), _) => attrs.ints("axes")?.to_vec(),
        (None, Some(v)) if v.is_empty() && attrs.int("noop_with_empty_axes")? == 0 => {
            (0..rank as i64).collect()
        }
        (None, Some(v)) => v.to_vec(),
        (None, None) => return Err("the axes operand is missing".to_string()),
    };
    let mut axes = given
        .iter()
        .map(|&a| {
            let n = if a < 0 { a + rank as i64 } else { a };
            axis_in(n, rank).map_err(|_| format!("axis {a} is out of range for rank {rank}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    axes.sort_unstable();
    if axes.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("axes {given:?} repeat an axis"));
    }
    Ok(axes)
}

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    let x = cx.input(0)?;
    let attrs = &cx.op.attrs;
    let kind = cx.op.kind;
    if x.quant.is_some() {
        return Err("operand is quantized; dequantize it first".to_string());
    }
    let dims = x.shape.dims();
    let rank = dims.len();
    let keepdims = attrs.int("keepdims").map(|k| k != 0);
    let out = match kind {
        k if is_reduction(k) => {
            let integers_ok = takes_integers(k)
                && matches!(x.dtype, DType::I32 | DType::I64 | DType::I8 | DType::U8)
                || matches!(k, OpKind::ReduceMax | OpKind::ReduceMin) && x.dtype == DType::Bool;
            if x.dtype != DType::F32 && !integers_ok {
                return Err(format!("{k} of {} is not supported", x.dtype));
            }
            let keepdims = keepdims?;
            let axes = match attrs.get("axes") {
                Some(_) => Some(reduce_axes(attrs, None, rank)?),
                None => {
                    let t = cx.input(1)?;
                    if !matches!(t.dtype, DType::I64 | DType::I32) || t.shape.rank() > 1 {
                        return Err(format!(
                            "the axes operand must be an integer vector, found {}",
                            crate::text::type_to_string(t)
                        ));
                    }
                    match cx.ints(1) {
                        Some(v) => {
                            let v = v
                                .iter()
                                .map(|a| a.int().ok_or("an axis is not known"))
                                .collect::<Result<Vec<_>, _>>();
                            match v {
                                Ok(v) => Some(reduce_axes(attrs, Some(&v), rank)?),
                                Err(_) => None,
                            }
                        }
                        None => None,
                    }
                }
            };
            let shape = match axes {
                Some(axes) => reduced_shape(dims, &axes, keepdims),
                // Unknown axes: each extent stays or becomes 1 (so an extent of 1 is known).
                None if keepdims => Shape(
                    dims.iter()
                        .map(|&d| if d == Dim::Fixed(1) { d } else { Dim::Dyn })
                        .collect(),
                ),
                // Without them, as many axes go as the operand lists (none: every axis, or
                // none with noop_with_empty_axes).
                None => match super::shape::spec_length(cx.input(1)?)? {
                    0 if attrs.int("noop_with_empty_axes")? != 0 => x.shape.clone(),
                    0 => Shape::default(),
                    n if n <= rank => Shape(vec![Dim::Dyn; rank - n]),
                    n => return Err(format!("{n} axes for rank {rank}")),
                },
            };
            TensorType::new(x.dtype, shape)
        }
        OpKind::ArgMax | OpKind::ArgMin => {
            if !matches!(
                x.dtype,
                DType::F32 | DType::I32 | DType::I64 | DType::I8 | DType::U8
            ) {
                return Err(format!("{kind} of {} is not supported", x.dtype));
            }
            let axis = axis_in(attrs.int("axis")?, rank)?;
            attrs.int("select_last_index")?;
            if dims[axis] == Dim::Fixed(0) {
                return Err(format!("{kind} along an empty axis"));
            }
            TensorType::new(DType::I64, reduced_shape(dims, &[axis], keepdims?))
        }
        OpKind::CumSum => {
            if !matches!(x.dtype, DType::F32 | DType::I32 | DType::I64) {
                return Err(format!("CumSum of {} is not supported", x.dtype));
            }
            axis_in(attrs.int("axis")?, rank)?;
            attrs.int("exclusive")?;
            attrs.int("reverse")?;
            TensorType::new(x.dtype, x.shape.clone())
        }
        other => return Err(format!("{other} is not a reduction")),
    };
    Ok(vec![out])
}

/// `dims` with `axes` reduced: kept as 1, or removed.
fn reduced_shape(dims: &[Dim], axes: &[usize], keepdims: bool) -> Shape {
    Shape(
        dims.iter()
            .enumerate()
            .filter_map(|(a, &d)| match axes.contains(&a) {
                false => Some(d),
                true if keepdims => Some(Dim::Fixed(1)),
                true => None,
            })
            .collect(),
    )
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let x = cx.input(0)?;
    let attrs = &cx.op.attrs;
    let kind = cx.op.kind;
    let dims = x.shape();
    let out = match kind {
        k if is_reduction(k) => {
            let operand = match attrs.get("axes") {
                Some(_) => None,
                None => Some(cx.input(1)?.to_i64_vec()?),
            };
            let axes = reduce_axes(attrs, operand.as_deref(), dims.len())?;
            let groups = group_elements(dims, &axes);
            let keepdims = attrs.int("keepdims")? != 0;
            let shape = reduced_shape(&Shape::fixed(dims).0, &axes, keepdims).resolve(0);
            if x.dtype() == DType::F32 {
                let v = widen(x)?;
                let y = groups
                    .iter()
                    .map(|g| reduce_f64(k, g.iter().map(|&i| v[i])))
                    .map(|r| r as f32)
                    .collect();
                Tensor::new(DType::F32, shape, TensorData::F32(y))?
            } else {
                let v = x.to_i64_vec()?;
                let y = groups
                    .iter()
                    .map(|g| reduce_i64(k, x.dtype(), g.iter().map(|&i| v[i])))
                    .collect::<Result<Vec<_>, _>>()?;
                let wrapped = y
                    .into_iter()
                    .map(|r| wrap(r, x.dtype()))
                    .collect::<Result<Vec<_>, _>>()?;
                Tensor::from_i64_values(x.dtype(), shape, wrapped)?
            }
        }
        OpKind::ArgMax | OpKind::ArgMin => {
            let axis = axis_in(attrs.int("axis")?, dims.len())?;
            if dims[axis] == 0 {
                return Err(format!("{kind} along an empty axis"));
            }
            let groups = group_elements(dims, &[axis]);
            let v = widen(x)?;
            let last = attrs.int("select_last_index")? != 0;
            let y = groups
                .iter()
                .map(|g| arg_extreme(g.iter().map(|&i| v[i]), kind == OpKind::ArgMax, last))
                .collect();
            let shape = reduced_shape(&Shape::fixed(dims).0, &[axis], attrs.int("keepdims")? != 0)
                .resolve(0);
            Tensor::from_i64_values(DType::I64, shape, y)?
        }
        OpKind::CumSum => cumsum(x, attrs)?,
        other => return Err(format!("{other} is not a reduction")),
    };
    Ok(vec![out])
}

/// For every result element (row-major, the reduced axes kept as 1), the flat indices of the
/// input elements it reduces, in input order.
fn group_elements(dims: &[usize], axes: &[usize]) -> Vec<Vec<usize>> {
    let kept: Vec<usize> = dims
        .iter()
        .enumerate()
        .map(|(a, &d)| if axes.contains(&a) { 1 } else { d })
        .collect();
    let mut groups = vec![Vec::new(); kept.iter().product()];
    // broadcast_indices maps every input element to the result element it falls in.
    for (i, o) in broadcast_indices(&kept, dims).into_iter().enumerate() {
        groups[o].push(i);
    }
    groups
}

/// A float reduction of `values` (in f64), as ONNX defines each.
fn reduce_f64(kind: OpKind, values: impl Iterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.collect();
    let sum = |f: &dyn Fn(f64) -> f64| values.iter().map(|&v| f(v)).sum::<f64>();
    match kind {
        OpKind::ReduceSum => sum(&|v| v),
        OpKind::ReduceMean => sum(&|v| v) / values.len() as f64,
        OpKind::ReduceMax => values.iter().copied().fold(f64::NEG_INFINITY, nan_max),
        OpKind::ReduceMin => values
            .iter()
            .copied()
            .fold(f64::INFINITY, |a, b| -nan_max(-a, -b)),
        OpKind::ReduceProd => values.iter().product(),
        OpKind::ReduceL1 => sum(&f64::abs),
        OpKind::ReduceL2 => sum(&|v| v * v).sqrt(),
        OpKind::ReduceSumSquare => sum(&|v| v * v),
        OpKind::ReduceLogSum => sum(&|v| v).ln(),
        _ => {
            // LogSumExp: the maximum first, so that large values do not overflow.
            let m = values.iter().copied().fold(f64::NEG_INFINITY, nan_max);
            if m.is_infinite() || m.is_nan() {
                return if values.iter().any(|v| v.is_nan()) {
                    f64::NAN
                } else {
                    m
                };
            }
            m + sum(&|v| (v - m).exp()).ln()
        }
    }
}

/// The maximum, NaN if either is NaN (numpy's `max`).
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// An integer reduction (wrapping in i64; the caller wraps to the dtype).
fn reduce_i64(
    kind: OpKind,
    dtype: DType,
    values: impl Iterator<Item = i64>,
) -> Result<i64, String> {
    let (lo, hi) = dtype.int_range().ok_or("integer dtype expected")?;
    let values: Vec<i64> = values.collect();
    let sum = |f: &dyn Fn(i64) -> i64| values.iter().fold(0i64, |a, &v| a.wrapping_add(f(v)));
    Ok(match kind {
        OpKind::ReduceSum => sum(&|v| v),
        OpKind::ReduceMean if values.is_empty() => {
            return Err("integer mean of no elements".to_string())
        }
        OpKind::ReduceMean => sum(&|v| v).wrapping_div(values.len() as i64),
        OpKind::ReduceMax => values.iter().copied().fold(lo, i64::max),
        OpKind::ReduceMin => values.iter().copied().fold(hi, i64::min),
        OpKind::ReduceProd => values.iter().fold(1i64, |a, &v| a.wrapping_mul(v)),
        OpKind::ReduceL1 => sum(&i64::wrapping_abs),
        OpKind::ReduceSumSquare => sum(&|v| v.wrapping_mul(v)),
        other => return Err(format!("{other} of integers is not supported")),
    })
}

/// `v` wrapped into `dtype`'s range (two's complement truncation, as generated code stores it).
fn wrap(v: i64, dtype: DType) -> Result<i64, String> {
    let (lo, hi) = dtype.int_range().ok_or("integer dtype expected")?;
    if dtype == DType::Bool {
        return Ok(v.clamp(lo, hi));
    }
    let width = hi as i128 - lo as i128 + 1;
    Ok(((v as i128 - lo as i128).rem_euclid(width) + lo as i128) as i64)
}

/// The position of the first (or last) maximum or minimum; NaN counts as the extreme, as in
/// numpy's `argmax`/`argmin`.
pub(crate) fn arg_extreme(values: impl Iterator<Item = f64>, max: bool, last: bool) -> i64 {
    let mut best: Option<(usize, f64)> = None;
    for (i, v) in values.enumerate() {
        let take = match best {
            None => true,
            Some((_, b)) if b.is_nan() => last && v.is_nan(),
            Some(_) if v.is_nan() => true,
            Some((_, b)) => match (max, last) {
                (true, false) => v > b,
                (true, true) => v >= b,
                (false, false) => v < b,
                (false, true) => v <= b,
            },
        };
        if take {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i as i64)
}

/// CumSum along `axis`, optionally exclusive (each element leaves itself out) and reversed
/// (sums run from the end).
fn cumsum(x: &Tensor, attrs: &Attrs) -> Result<Tensor, String> {
    let dims = x.shape();
    let axis = axis_in(attrs.int("axis")?, dims.len())?;
    let (exclusive, reverse) = (attrs.int("exclusive")? != 0, attrs.int("reverse")? != 0);
    let (extent, inner) = (dims[axis], dims[axis + 1..].iter().product::<usize>());
    let outer = x.len().checked_div(extent * inner).unwrap_or(0);
    // Flat indices of one line along the axis, in summation order.
    let line = |o: usize, i: usize| -> Vec<usize> {
        let mut l: Vec<usize> = (0..extent).map(|j| (o * extent + j) * inner + i).collect();
        if reverse {
            l.reverse();
        }
        l
    };
    fn scan<T: Copy>(
        v: &[T],
        out: &mut [T],
        line: &[usize],
        zero: T,
        exclusive: bool,
        add: impl Fn(T, T) -> T,
    ) {
        let mut acc = zero;
        for &p in line {
            let next = add(acc, v[p]);
            out[p] = if exclusive { acc } else { next };
            acc = next;
        }
    }
    let lines: Vec<Vec<usize>> = (0..outer)
        .flat_map(|o| (0..inner).map(move |i| (o, i)))
        .map(|(o, i)| line(o, i))
        .collect();
    if x.dtype() == DType::F32 {
        let v = widen(x)?;
        let mut y = vec![0.0; v.len()];
        for l in &lines {
            scan(&v, &mut y, l, 0.0, exclusive, |a, b| a + b);
        }
        return Tensor::new(
            DType::F32,
            dims.to_vec(),
            TensorData::F32(y.into_iter().map(|v| v as f32).collect()),
        );
    }
    let v = x.to_i64_vec()?;
    let mut y = vec![0i64; v.len()];
    for l in &lines {
        scan(&v, &mut y, l, 0, exclusive, i64::wrapping_add);
    }
    let y = y
        .into_iter()
        .map(|r| wrap(r, x.dtype()))
        .collect::<Result<Vec<_>, _>>()?;
    Tensor::from_i64_values(x.dtype(), dims.to_vec(), y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::run_op;
    use crate::AttrValue;

    fn reduce(kind: OpKind, axes: &[i64], keepdims: bool, x: Tensor) -> Result<Tensor, String> {
        let attrs = Attrs::new()
            .with("axes", AttrValue::Ints(axes.to_vec()))
            .with("keepdims", AttrValue::Int(keepdims as i64))
            .with("noop_with_empty_axes", AttrValue::Int(0));
        run_op(kind, attrs, vec![(x, None)], None)
    }

    fn x23() -> Tensor {
        Tensor::from_f32(&[2, 3], vec![1., -2., 3., 4., 5., -6.])
    }

    #[test]
    fn reductions_follow_onnx() {
        let y = reduce(OpKind::ReduceSum, &[1], false, x23()).unwrap();
        assert_eq!(
            (y.shape(), y.as_f32().unwrap()),
            (&[2usize][..], &[2., 3.][..])
        );
        let y = reduce(OpKind::ReduceMean, &[0], true, x23()).unwrap();
        assert_eq!(
            (y.shape(), y.as_f32().unwrap()),
            (&[1usize, 3][..], &[2.5, 1.5, -1.5][..])
        );
        let y = reduce(OpKind::ReduceMax, &[0, 1], false, x23()).unwrap();
        assert_eq!((y.shape(), y.as_f32().unwrap()), (&[][..], &[5.][..]));
        assert_eq!(
            reduce(OpKind::ReduceL1, &[1], false, x23())
                .unwrap()
                .as_f32()
                .unwrap(),
            &[6., 15.]
        );
        assert_eq!(
            reduce(OpKind::ReduceSumSquare, &[1], false, x23())
                .unwrap()
                .as_f32()
                .unwrap(),
            &[14., 77.]
        );
        assert_eq!(
            reduce(OpKind::ReduceProd, &[1], false, x23())
                .unwrap()
                .as_f32()
                .unwrap(),
            &[-6., -120.]
        );
        let lse = reduce(
            OpKind::ReduceLogSumExp,
            &[1],
            false,
            Tensor::from_f32(&[1, 2], vec![1000., 1000.]),
        )
        .unwrap();
        assert!((lse.as_f32().unwrap()[0] - (1000.0 + 2f32.ln())).abs() < 1e-3);
        // No axes: every element on its own.
        assert_eq!(
            reduce(OpKind::ReduceSumSquare, &[], true, x23())
                .unwrap()
                .as_f32()
                .unwrap(),
            &[1., 4., 9., 16., 25., 36.]
        );
        // An empty set.
        let empty = Tensor::from_f32(&[2, 0], vec![]);
        assert_eq!(
            reduce(OpKind::ReduceMax, &[1], false, empty.clone())
                .unwrap()
                .as_f32()
                .unwrap(),
            &[f32::NEG_INFINITY; 2]
        );
        assert_eq!(
            reduce(OpKind::ReduceProd, &[1], false, empty)
                .unwrap()
                .as_f32()
                .unwrap(),
            &[1.; 2]
        );
    }

    #[test]
    fn integer_reductions_wrap() {
        let x = Tensor::new(DType::I8, vec![3], TensorData::I8(vec![100, 100, -7])).unwrap();
        assert_eq!(
            reduce(OpKind::ReduceSum, &[0], false, x.clone())
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            vec![-63]
        );
        assert_eq!(
            reduce(OpKind::ReduceMean, &[0], false, x.clone())
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            vec![64]
        );
        assert_eq!(
            reduce(OpKind::ReduceMin, &[0], false, x)
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            vec![-7]
        );
        let f = reduce(
            OpKind::ReduceL2,
            &[0],
            false,
            Tensor::from_i64(&[1], vec![1]),
        );
        assert!(f.unwrap_err().contains("not supported"));
    }

    #[test]
    fn run_time_axes() {
        let attrs = Attrs::new()
            .with("keepdims", AttrValue::Int(1))
            .with("noop_with_empty_axes", AttrValue::Int(0));
        let y = run_op(
            OpKind::ReduceSum,
            attrs.clone(),
            vec![(x23(), None), (Tensor::from_i64(&[1], vec![-1]), None)],
            None,
        )
        .unwrap();
        assert_eq!(
            (y.shape(), y.as_f32().unwrap()),
            (&[2usize, 1][..], &[2., 3.][..])
        );
        let all = run_op(
            OpKind::ReduceSum,
            attrs.clone(),
            vec![(x23(), None), (Tensor::from_i64(&[0], vec![]), None)],
            None,
        )
        .unwrap();
        assert_eq!(all.as_f32().unwrap(), &[5.]);
        let noop = attrs.with("noop_with_empty_axes", AttrValue::Int(1));
        let same = run_op(
            OpKind::ReduceSum,
            noop,
            vec![(x23(), None), (Tensor::from_i64(&[0], vec![]), None)],
            None,
        )
        .unwrap();
        assert_eq!(same, x23());
    }

    #[test]
    fn argmax_argmin_with_ties() {
        let x = Tensor::from_f32(&[2, 3], vec![1., 3., 3., 2., 0., 0.]);
        let arg = |kind, last: i64| {
            let attrs = Attrs::new()
                .with("axis", AttrValue::Int(1))
                .with("keepdims", AttrValue::Int(0))
                .with("select_last_index", AttrValue::Int(last));
            run_op(kind, attrs, vec![(x.clone(), None)], None)
                .unwrap()
                .to_i64_vec()
                .unwrap()
        };
        assert_eq!(arg(OpKind::ArgMax, 0), vec![1, 0]);
        assert_eq!(arg(OpKind::ArgMax, 1), vec![2, 0]);
        assert_eq!(arg(OpKind::ArgMin, 0), vec![0, 1]);
        assert_eq!(arg(OpKind::ArgMin, 1), vec![0, 2]);
        assert_eq!(
            arg_extreme([1.0, f64::NAN, 2.0, f64::NAN].into_iter(), true, false),
            1
        );
        assert_eq!(
            arg_extreme([1.0, f64::NAN, 2.0, f64::NAN].into_iter(), false, true),
            3
        );
    }

    #[test]
    fn cumsum_exclusive_reverse() {
        let x = Tensor::from_f32(&[5], vec![1., 2., 3., 4., 5.]);
        let cs = |e: i64, r: i64| {
            let attrs = Attrs::new()
                .with("axis", AttrValue::Int(0))
                .with("exclusive", AttrValue::Int(e))
                .with("reverse", AttrValue::Int(r));
            run_op(OpKind::CumSum, attrs, vec![(x.clone(), None)], None)
                .unwrap()
                .as_f32()
                .unwrap()
                .to_vec()
        };
        assert_eq!(cs(0, 0), vec![1., 3., 6., 10., 15.]);
        assert_eq!(cs(1, 0), vec![0., 1., 3., 6., 10.]);
        assert_eq!(cs(0, 1), vec![15., 14., 12., 9., 5.]);
        assert_eq!(cs(1, 1), vec![14., 12., 9., 5., 0.]);
    }
}
