//! Element selection and placement: OneHot, GatherElements, GatherND, ScatterElements,
//! ScatterND, Trilu and NonZero.
//!
//! Indices are data: negative ones count from the end of their axis, and one out of range
//! is an error naming it (OneHot excepted, whose specification makes such rows all "off").
//! NonZero's result length depends on the values: inference says `[rank, ?]` unless its
//! operand is a constant.

use super::broadcast::{positions, strides};
use super::index::{check_elements, take};
use super::{EvalCtx, InferCtx};
use crate::{DType, Dim, OpKind, Shape, Tensor, TensorData, TensorType};

/// Most values a OneHot depth may have: it is data, and decides an extent.
const MAX_DEPTH: i64 = 1 << 24;

/// How scatters combine an update with the element already there (ONNX `reduction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// The update replaces the element (the last one wins among duplicates).
    None,
    /// Sum (integers wrap).
    Add,
    /// Product (integers wrap).
    Mul,
    /// Maximum (NaN wins).
    Max,
    /// Minimum (NaN wins).
    Min,
}

impl Reduction {
    /// The reduction of a scatter's canonical attributes.
    pub fn of(attrs: &crate::Attrs) -> Result<Reduction, String> {
        match attrs.str("reduction")? {
            "none" => Ok(Reduction::None),
            "add" => Ok(Reduction::Add),
            "mul" => Ok(Reduction::Mul),
            "max" => Ok(Reduction::Max),
            "min" => Ok(Reduction::Min),
            r => Err(format!("reduction `{r}` is not none, add, mul, max or min")),
        }
    }
}

/// Elements a scatter combines.
trait Combine: Copy {
    fn combine(self, update: Self, r: Reduction) -> Self;
}

macro_rules! combine_ints {
    ($($t:ty),*) => {$(
        impl Combine for $t {
            fn combine(self, u: $t, r: Reduction) -> $t {
                match r {
                    Reduction::None => u,
                    Reduction::Add => self.wrapping_add(u),
                    Reduction::Mul => self.wrapping_mul(u),
                    Reduction::Max => self.max(u),
                    Reduction::Min => self.min(u),
                }
            }
        }
    )*};
}
combine_ints!(i8, u8, i32, i64);

impl Combine for f32 {
    fn combine(self, u: f32, r: Reduction) -> f32 {
        match r {
            Reduction::None => u,
            Reduction::Add => self + u,
            Reduction::Mul => self * u,
            _ if self.is_nan() || u.is_nan() => f32::NAN,
            Reduction::Max => self.max(u),
            Reduction::Min => self.min(u),
        }
    }
}

/// `data` with `updates[k]` combined into element `targets[k]`, in order.
fn scatter(
    data: &Tensor,
    updates: &Tensor,
    targets: &[usize],
    r: Reduction,
) -> Result<Tensor, String> {
    fn apply<T: Combine>(d: &[T], u: &[T], targets: &[usize], r: Reduction) -> Vec<T> {
        let mut out = d.to_vec();
        for (&t, &v) in targets.iter().zip(u) {
            out[t] = out[t].combine(v, r);
        }
        out
    }
    let out = match (data.data(), updates.data()) {
        (TensorData::F32(d), TensorData::F32(u)) => TensorData::F32(apply(d, u, targets, r)),
        (TensorData::I8(d), TensorData::I8(u)) => TensorData::I8(apply(d, u, targets, r)),
        (TensorData::U8(d), TensorData::U8(u)) => TensorData::U8(apply(d, u, targets, r)),
        (TensorData::I32(d), TensorData::I32(u)) => TensorData::I32(apply(d, u, targets, r)),
        (TensorData::I64(d), TensorData::I64(u)) => TensorData::I64(apply(d, u, targets, r)),
        _ => {
            return Err(format!(
                "updates of {} into data of {}",
                updates.dtype(),
                data.dtype()
            ))
        }
    };
    Tensor::new(data.dtype(), data.shape().to_vec(), out)
}

/// A possibly negative index into an axis of extent `n`, or an error naming it.
fn wrap(i: i64, n: usize, axis: usize) -> Result<usize, String> {
    let w = if i < 0 { i + n as i64 } else { i };
    usize::try_from(w)
        .ok()
        .filter(|&w| w < n)
        .ok_or_else(|| format!("index {i} is out of range [-{n}, {n}) on axis {axis}"))
}

/// Indices are i32 or i64.
fn index_type(t: &TensorType) -> Result<(), String> {
    if !matches!(t.dtype, DType::I32 | DType::I64) || t.quant.is_some() {
        return Err(format!(
            "indices must be i32 or i64, found {}",
            crate::text::type_to_string(t)
        ));
    }
    Ok(())
}

/// Known extents must agree (`what` names the pair for the message).
fn agree(a: Dim, b: Dim, what: &str) -> Result<(), String> {
    match (a, b) {
        (Dim::Fixed(x), Dim::Fixed(y)) if x != y => Err(format!("{what}: {x} vs {y}")),
        _ => Ok(()),
    }
}

/// A OneHot depth: one positive integral value (any numeric dtype).
pub fn one_hot_depth(t: &Tensor) -> Result<usize, String> {
    if t.len() != 1 {
        return Err(format!("depth must hold one value, it has {}", t.len()));
    }
    let d = t.to_f32_vec()[0] as f64;
    let d = match t.to_i64_vec() {
        Ok(v) => v[0],
        Err(_) if d.fract() == 0.0 && d.abs() < 1e18 => d as i64,
        Err(_) => return Err(format!("depth {d} is not an integer")),
    };
    if d <= 0 || d > MAX_DEPTH {
        return Err(format!("depth {d} is not in [1, {MAX_DEPTH}]"));
    }
    Ok(d as usize)
}

/// The element type of a scatter's result (that of its data and updates) and its
/// quantization, which must agree, and which add and mul cannot keep.
fn scatter_type(
    data: &TensorType,
    updates: &TensorType,
    r: Reduction,
) -> Result<Option<crate::QuantParams>, String> {
    if updates.dtype != data.dtype || updates.quant != data.quant {
        return Err(format!(
            "updates of {} into data of {}",
            crate::text::type_to_string(updates),
            crate::text::type_to_string(data)
        ));
    }
    if !matches!(
        data.dtype,
        DType::F32 | DType::I8 | DType::U8 | DType::I32 | DType::I64
    ) {
        return Err(format!(
            "scattering {} elements is not supported",
            data.dtype
        ));
    }
    match &data.quant {
        Some(q) if q.axis.is_some() || matches!(r, Reduction::Add | Reduction::Mul) => Err(
            "a quantized scatter takes per-tensor parameters and no add or mul reduction"
                .to_string(),
        ),
        q => Ok(q.clone()),
    }
}

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    let x = cx.input(0)?;
    let attrs = &cx.op.attrs;
    let dims = x.shape.dims();
    let rank = dims.len();
    let axis = || -> Result<usize, String> {
        usize::try_from(attrs.int("axis")?)
            .ok()
            .filter(|&a| a < rank)
            .ok_or_else(|| {
                format!(
                    "axis {} is out of range [0, {rank})",
                    attrs.int("axis").unwrap_or(0)
                )
            })
    };
    let out = match cx.op.kind {
        OpKind::OneHot => {
            let (depth, values) = (cx.input(1)?, cx.input(2)?);
            if x.quant.is_some()
                || depth.quant.is_some()
                || depth.shape.known_volume() != Some(1)
                || depth.shape.rank() > 1
            {
                return Err(format!(
                    "indices must be plain numbers and depth one value, found {} and {}",
                    crate::text::type_to_string(x),
                    crate::text::type_to_string(depth)
                ));
            }
            if values.shape.dims() != [Dim::Fixed(2)] {
                return Err(format!(
                    "values must be [off, on], found {}",
                    crate::text::type_to_string(values)
                ));
            }
            let a = usize::try_from(attrs.int("axis")?)
                .ok()
                .filter(|&a| a <= rank)
                .ok_or_else(|| format!("axis is out of range [0, {rank}]"))?;
            let extent = match cx.constant(1) {
                Some(t) => Dim::Fixed(one_hot_depth(t)?),
                None => Dim::Dyn,
            };
            let mut out = dims.to_vec();
            out.insert(a, extent);
            TensorType {
                dtype: values.dtype,
                shape: Shape(out),
                quant: values.quant.clone().filter(|q| q.axis.is_none()),
            }
        }
        OpKind::GatherElements => {
            let indices = cx.input(1)?;
            index_type(indices)?;
            let a = axis()?;
            if indices.shape.rank() != rank {
                return Err(format!(
                    "indices {} and data {} differ in rank",
                    indices.shape, x.shape
                ));
            }
            for (i, (&d, &n)) in dims.iter().zip(indices.shape.dims()).enumerate() {
                if let (Dim::Fixed(d), Dim::Fixed(n)) = (d, n) {
                    if i != a && n > d {
                        return Err(format!(
                            "indices extent {n} exceeds the data's {d} on axis {i}"
                        ));
                    }
                }
            }
            let quant = match &x.quant {
                Some(q)
                    if q.axis
                        .is_some_and(|q| q == a || indices.shape.dims()[q] != dims[q]) =>
                {
                    return Err("gathering across the per-channel quantization axis".to_string());
                }
                q => q.clone(),
            };
            TensorType {
                dtype: x.dtype,
                shape: indices.shape.clone(),
                quant,
            }
        }
        OpKind::GatherND => {
            let indices = cx.input(1)?;
            index_type(indices)?;
            let (b, m) = nd_shape(attrs.int("batch_dims")?, dims, indices.shape.dims())?;
            let idims = indices.shape.dims();
            let mut out = idims[..idims.len() - 1].to_vec();
            out.extend_from_slice(&dims[b + m..]);
            if x.quant.as_ref().is_some_and(|q| q.axis.is_some()) {
                return Err("GatherND of a per-channel quantized value".to_string());
            }
            TensorType {
                dtype: x.dtype,
                shape: Shape(out),
                quant: x.quant.clone(),
            }
        }
        OpKind::ScatterND => {
            let (indices, updates) = (cx.input(1)?, cx.input(2)?);
            index_type(indices)?;
            let (_, m) = nd_shape(0, dims, indices.shape.dims())?;
            let idims = indices.shape.dims();
            let mut want = idims[..idims.len() - 1].to_vec();
            want.extend_from_slice(&dims[m..]);
            if updates.shape.rank() != want.len() {
                return Err(format!(
                    "updates {} do not have the shape {} the indices give",
                    updates.shape,
                    Shape(want)
                ));
            }
            for (&u, &w) in updates.shape.dims().iter().zip(&want) {
                agree(u, w, "updates extent against the indices' and data's")?;
            }
            let quant = scatter_type(x, updates, Reduction::of(attrs)?)?;
            TensorType {
                dtype: x.dtype,
                shape: x.shape.clone(),
                quant,
            }
        }
        OpKind::ScatterElements => {
            let (indices, updates) = (cx.input(1)?, cx.input(2)?);
            index_type(indices)?;
            let a = axis()?;
            if indices.shape.rank() != rank || updates.shape.rank() != rank {
                return Err(format!(
                    "data {}, indices {} and updates {} differ in rank",
                    x.shape, indices.shape, updates.shape
                ));
            }
            for (i, ((&n, &u), &d)) in indices
                .shape
                .dims()
                .iter()
                .zip(updates.shape.dims())
                .zip(dims)
                .enumerate()
            {
                agree(n, u, "indices and updates extents")?;
                if let (Dim::Fixed(n), Dim::Fixed(d)) = (n, d) {
                    if i != a && n > d {
                        return Err(format!(
                            "indices extent {n} exceeds the data's {d} on axis {i}"
                        ));
                    }
                }
            }
            let quant = scatter_type(x, updates, Reduction::of(attrs)?)?;
            TensorType {
                dtype: x.dtype,
                shape: x.shape.clone(),
                quant,
            }
        }
        OpKind::Trilu => {
            if rank < 2 || x.quant.is_some() {
                return Err(format!(
                    "expects a plain value of rank 2 or more, found {}",
                    crate::text::type_to_string(x)
                ));
            }
            if let Some(k) = cx.inputs.get(1).copied().flatten() {
                if k.dtype != DType::I64 || k.shape.known_volume() != Some(1) || k.shape.rank() > 1
                {
                    return Err(format!(
                        "k must be one i64, found {}",
                        crate::text::type_to_string(k)
                    ));
                }
            }
            x.clone()
        }
        OpKind::NonZero => {
            if rank == 0 {
                return Err("NonZero of a scalar".to_string());
            }
            let count = cx
                .constant(0)
                .map_or(Dim::Dyn, |t| Dim::Fixed(nonzero_positions(t).len()));
            TensorType::new(DType::I64, Shape(vec![Dim::Fixed(rank), count]))
        }
        other => return Err(format!("{other} is not a selection op")),
    };
    Ok(vec![out])
}

/// GatherND's and ScatterND's `(batch_dims, index length)` for data of extents `dims` and
/// indices of extents `idims`: the index length (the indices' last extent) must be known
/// and fit the data after the batch dimensions, which must agree.
fn nd_shape(batch_dims: i64, dims: &[Dim], idims: &[Dim]) -> Result<(usize, usize), String> {
    let q = idims.len();
    let b = usize::try_from(batch_dims)
        .ok()
        .filter(|&b| b < q && b <= dims.len())
        .ok_or_else(|| format!("batch_dims {batch_dims} must be below the indices' rank {q}"))?;
    let m =
        match idims.last() {
            Some(Dim::Fixed(m)) if b + m <= dims.len() && *m >= 1 => *m,
            Some(d) => return Err(format!(
                "index tuples of length {d} do not fit data of rank {} after {b} batch dimensions",
                dims.len()
            )),
            None => return Err("indices must have rank 1 or more".to_string()),
        };
    for a in 0..b {
        agree(
            dims[a],
            idims[a],
            &format!("batch dimension {a} of data and indices"),
        )?;
    }
    Ok((b, m))
}

/// The positions of a tensor's non-zero elements (row-major).
fn nonzero_positions(t: &Tensor) -> Vec<Vec<usize>> {
    let nonzero: Vec<bool> = match t.data() {
        TensorData::F32(v) => v.iter().map(|&x| x != 0.0).collect(),
        _ => t
            .to_i64_vec()
            .unwrap_or_default()
            .iter()
            .map(|&x| x != 0)
            .collect(),
    };
    positions(t.shape())
        .into_iter()
        .zip(nonzero)
        .filter(|(_, n)| *n)
        .map(|(p, _)| p)
        .collect()
}

/// Flat offsets into data of extents `dims` of GatherND's or ScatterND's index tuples: per
/// tuple (row of `m` indices after `b` batch dimensions), the offset of its slice.
fn nd_offsets(dims: &[usize], indices: &Tensor, b: usize, m: usize) -> Result<Vec<usize>, String> {
    let src = strides(dims);
    let idx = indices.to_i64_vec()?;
    let batch: usize = dims[..b].iter().product();
    let tuples = idx.len() / m.max(1);
    let per_batch = tuples / batch.max(1);
    let mut out = Vec::with_capacity(tuples);
    for (t, tuple) in idx.chunks(m).enumerate() {
        // The batch position's offset: batch dimensions are row-major like the data's.
        let mut off = (t / per_batch.max(1)) * src.get(b.wrapping_sub(1)).map_or(0, |&s| s);
        for (k, &i) in tuple.iter().enumerate() {
            off += wrap(i, dims[b + k], b + k)? * src[b + k];
        }
        out.push(off);
    }
    Ok(out)
}

/// GatherElements' and ScatterElements' flat offsets into data of extents `dims`: per
/// position of the indices, that position with the index on axis `axis`.
fn element_offsets(dims: &[usize], indices: &Tensor, axis: usize) -> Result<Vec<usize>, String> {
    let src = strides(dims);
    let idx = indices.to_i64_vec()?;
    positions(indices.shape())
        .iter()
        .zip(&idx)
        .map(|(p, &i)| {
            Ok(p.iter()
                .enumerate()
                .map(|(d, &j)| if d == axis { 0 } else { j * src[d] })
                .sum::<usize>()
                + wrap(i, dims[axis], axis)? * src[axis])
        })
        .collect()
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let x = cx.input(0)?;
    let attrs = &cx.op.attrs;
    let dims = x.shape();
    let axis = || -> Result<usize, String> {
        usize::try_from(attrs.int("axis")?)
            .ok()
            .filter(|&a| a < dims.len())
            .ok_or("axis out of range".to_string())
    };
    let out = match cx.op.kind {
        OpKind::OneHot => {
            let depth = one_hot_depth(cx.input(1)?)?;
            let values = cx.input(2)?;
            let a = usize::try_from(attrs.int("axis")?)
                .ok()
                .filter(|&a| a <= dims.len())
                .ok_or("axis out of range")?;
            let mut shape = dims.to_vec();
            shape.insert(a, depth);
            check_elements(&shape)?;
            let (outer, inner): (usize, usize) =
                (dims[..a].iter().product(), dims[a..].iter().product());
            // Compared as numbers: a negative index counts from the end, a fractional or
            // out-of-range one matches nothing.
            let idx: Vec<f64> = match x.data() {
                TensorData::F32(v) => v.iter().map(|&v| v as f64).collect(),
                _ => x.to_i64_vec()?.into_iter().map(|v| v as f64).collect(),
            };
            let mut pick = Vec::with_capacity(outer * depth * inner);
            for o in 0..outer {
                for k in 0..depth {
                    for i in 0..inner {
                        let v = idx[o * inner + i];
                        let v = if v < 0.0 { v + depth as f64 } else { v };
                        pick.push(usize::from(v == k as f64));
                    }
                }
            }
            take(values, &pick, shape)?
        }
        OpKind::GatherElements => {
            let indices = cx.input(1)?;
            take(
                x,
                &element_offsets(dims, indices, axis()?)?,
                indices.shape().to_vec(),
            )?
        }
        OpKind::GatherND => {
            let indices = cx.input(1)?;
            let ishape = indices.shape();
            let b = usize::try_from(attrs.int("batch_dims")?).map_err(|_| "negative batch_dims")?;
            let m = *ishape.last().ok_or("indices must have rank 1 or more")?;
            if b + m > dims.len() || dims[..b] != ishape[..b] {
                return Err(format!(
                    "indices {ishape:?} do not fit data {dims:?} with batch_dims {b}"
                ));
            }
            let inner: usize = dims[b + m..].iter().product();
            let offsets = nd_offsets(dims, indices, b, m)?;
            let index: Vec<usize> = offsets.iter().flat_map(|&o| o..o + inner).collect();
            let mut shape = ishape[..ishape.len() - 1].to_vec();
            shape.extend_from_slice(&dims[b + m..]);
            take(x, &index, shape)?
        }
        OpKind::ScatterND => {
            let (indices, updates) = (cx.input(1)?, cx.input(2)?);
            let m = *indices
                .shape()
                .last()
                .ok_or("indices must have rank 1 or more")?;
            if m > dims.len() {
                return Err(format!(
                    "index tuples of {m} for data of rank {}",
                    dims.len()
                ));
            }
            let inner: usize = dims[m..].iter().product();
            let targets: Vec<usize> = nd_offsets(dims, indices, 0, m)?
                .into_iter()
                .flat_map(|o| o..o + inner)
                .collect();
            if targets.len() != updates.len() {
                return Err(format!(
                    "{} updates for {} targets",
                    updates.len(),
                    targets.len()
                ));
            }
            scatter(x, updates, &targets, Reduction::of(attrs)?)?
        }
        OpKind::ScatterElements => {
            let a = axis()?;
            let (indices, updates) = (cx.input(1)?, cx.input(2)?);
            if indices.shape() != updates.shape() {
                return Err(format!(
                    "indices {:?} and updates {:?} differ in shape",
                    indices.shape(),
                    updates.shape()
                ));
            }
            scatter(
                x,
                updates,
                &element_offsets(dims, indices, a)?,
                Reduction::of(attrs)?,
            )?
        }
        OpKind::Trilu => {
            let k = match cx.inputs.get(1).copied().flatten() {
                Some(t) => t.to_i64_vec()?.first().copied().ok_or("k is empty")?,
                None => 0,
            };
            let (rows, cols) = (dims[dims.len() - 2], dims[dims.len() - 1]);
            let upper = attrs.int("upper")? != 0;
            let index: Vec<Option<usize>> = (0..x.len())
                .map(|f| {
                    let (i, j) = (((f / cols) % rows) as i64, (f % cols) as i64);
                    let keep = if upper { j - i >= k } else { j - i <= k };
                    keep.then_some(f)
                })
                .collect();
            super::shape::take(x, &index, dims.to_vec(), 0)?
        }
        OpKind::NonZero => {
            let found = nonzero_positions(x);
            let n = found.len();
            let mut v = vec![0i64; dims.len() * n];
            for (j, p) in found.iter().enumerate() {
                for (a, &i) in p.iter().enumerate() {
                    v[a * n + j] = i as i64;
                }
            }
            Tensor::from_i64(&[dims.len(), n], v)
        }
        other => return Err(format!("{other} is not a selection op")),
    };
    Ok(vec![out])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::run_op;
    use crate::{AttrValue, Attrs};

    fn i64s(shape: &[usize], v: Vec<i64>) -> (Tensor, Option<crate::QuantParams>) {
        (Tensor::from_i64(shape, v), None)
    }

    fn f32s(shape: &[usize], v: Vec<f32>) -> (Tensor, Option<crate::QuantParams>) {
        (Tensor::from_f32(shape, v), None)
    }

    #[test]
    fn one_hot_wraps_negatives_and_leaves_out_of_range_rows_off() {
        let attrs = Attrs::new().with("axis", AttrValue::Int(1));
        let y = run_op(
            OpKind::OneHot,
            attrs,
            vec![
                i64s(&[4], vec![0, -1, 3, 7]),
                i64s(&[], vec![3]),
                f32s(&[2], vec![0.5, 2.0]),
            ],
            None,
        )
        .unwrap();
        assert_eq!(y.shape(), &[4, 3]);
        assert_eq!(
            y.as_f32().unwrap(),
            &[2.0, 0.5, 0.5, 0.5, 0.5, 2.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
        );
        let huge = run_op(
            OpKind::OneHot,
            Attrs::new().with("axis", AttrValue::Int(1)),
            vec![
                i64s(&[1], vec![0]),
                i64s(&[], vec![1 << 40]),
                f32s(&[2], vec![0.0, 1.0]),
            ],
            None,
        );
        assert!(huge.unwrap_err().contains("depth"));
    }

    #[test]
    fn gathers_follow_onnx_examples() {
        let data = f32s(&[2, 2], vec![1., 2., 3., 4.]);
        let e = run_op(
            OpKind::GatherElements,
            Attrs::new().with("axis", AttrValue::Int(1)),
            vec![data.clone(), i64s(&[2, 2], vec![0, 0, 1, 0])],
            None,
        )
        .unwrap();
        assert_eq!(e.as_f32().unwrap(), &[1., 1., 4., 3.]);
        let bad = run_op(
            OpKind::GatherElements,
            Attrs::new().with("axis", AttrValue::Int(0)),
            vec![data.clone(), i64s(&[1, 1], vec![2])],
            None,
        );
        assert!(bad.unwrap_err().contains("out of range"));
        let nd = |b: i64| Attrs::new().with("batch_dims", AttrValue::Int(b));
        let g = run_op(
            OpKind::GatherND,
            nd(0),
            vec![data.clone(), i64s(&[2, 2], vec![0, 0, 1, 1])],
            None,
        )
        .unwrap();
        assert_eq!(g.as_f32().unwrap(), &[1., 4.]);
        let g = run_op(
            OpKind::GatherND,
            nd(0),
            vec![data.clone(), i64s(&[2, 1], vec![1, -2])],
            None,
        )
        .unwrap();
        assert_eq!(g.as_f32().unwrap(), &[3., 4., 1., 2.]);
        // batch_dims=1: onnx test_gathernd_example_int32_batch_dim1
        let data = i64s(&[2, 2, 2], (0..8).collect());
        let g = run_op(
            OpKind::GatherND,
            nd(1),
            vec![data, i64s(&[2, 1], vec![1, 0])],
            None,
        )
        .unwrap();
        assert_eq!(g.to_i64_vec().unwrap(), vec![2, 3, 4, 5]);
    }

    #[test]
    fn scatters_reduce_in_order() {
        let data = f32s(&[4], vec![1., 2., 3., 4.]);
        let attrs = |r: &str| Attrs::new().with("reduction", AttrValue::Str(r.into()));
        let s = run_op(
            OpKind::ScatterND,
            attrs("add"),
            vec![
                data.clone(),
                i64s(&[3, 1], vec![0, -1, 0]),
                f32s(&[3], vec![10., 20., 30.]),
            ],
            None,
        )
        .unwrap();
        assert_eq!(s.as_f32().unwrap(), &[41., 2., 3., 24.]);
        let s = run_op(
            OpKind::ScatterND,
            attrs("max"),
            vec![
                data.clone(),
                i64s(&[1, 1], vec![1]),
                f32s(&[1], vec![f32::NAN]),
            ],
            None,
        )
        .unwrap();
        assert!(s.as_f32().unwrap()[1].is_nan());
        let e = |r: &str| attrs(r).with("axis", AttrValue::Int(0));
        let s = run_op(
            OpKind::ScatterElements,
            e("mul"),
            vec![
                data.clone(),
                i64s(&[2], vec![3, 3]),
                f32s(&[2], vec![2., 5.]),
            ],
            None,
        )
        .unwrap();
        assert_eq!(s.as_f32().unwrap(), &[1., 2., 3., 40.]);
        let bad = run_op(
            OpKind::ScatterElements,
            e("none"),
            vec![data, i64s(&[1], vec![4]), f32s(&[1], vec![0.])],
            None,
        );
        assert!(bad.unwrap_err().contains("out of range"));
    }

    #[test]
    fn trilu_and_nonzero() {
        let x = f32s(&[3, 3], (1..=9).map(|v| v as f32).collect());
        let upper = |u: i64| Attrs::new().with("upper", AttrValue::Int(u));
        let t = run_op(
            OpKind::Trilu,
            upper(1),
            vec![x.clone(), i64s(&[], vec![1])],
            None,
        )
        .unwrap();
        assert_eq!(t.as_f32().unwrap(), &[0., 2., 3., 0., 0., 6., 0., 0., 0.]);
        let t = run_op(OpKind::Trilu, upper(0), vec![x], None).unwrap();
        assert_eq!(t.as_f32().unwrap(), &[1., 0., 0., 4., 5., 0., 7., 8., 9.]);
        let n = run_op(
            OpKind::NonZero,
            Attrs::new(),
            vec![i64s(&[2, 2], vec![1, 0, 1, 1])],
            None,
        )
        .unwrap();
        assert_eq!(n.shape(), &[2, 3]);
        assert_eq!(n.to_i64_vec().unwrap(), vec![0, 1, 1, 0, 0, 1]);
    }
}
