//! Shape and indexing ops: Shape, Size, Gather, Slice, Expand, Tile, Range.
//!
//! Their shape-like operands (Slice's starts, Expand's shape, Range's limit) are ordinary
//! operands, as in ONNX: inference reads them when they are constants or when the
//! specializer has tracked their elements through shape arithmetic ([`symbolic`]), and
//! leaves the extents they decide unknown (`Dim::Dyn`) otherwise.

use super::broadcast::{broadcast_indices, strides};
use super::shape::{axis_in, spec_length};
use super::{EvalCtx, InferCtx};
use crate::{DType, Dim, Monomial, OpKind, Shape, SymInt, Tensor, TensorData, TensorType};

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    let x = cx.input(0)?;
    let attrs = &cx.op.attrs;
    let dims = x.shape.dims();
    let plain = |dtype: DType, shape: Shape| TensorType::new(dtype, shape);
    let out = match cx.op.kind {
        OpKind::Shape => {
            let (start, end) = shape_range(attrs.int("start")?, attrs.int("end")?, dims.len());
            plain(DType::I64, Shape::fixed(&[end - start]))
        }
        OpKind::Size => plain(DType::I64, Shape::default()),
        OpKind::Gather => {
            let axis = axis_in(attrs.int("axis")?, dims.len())?;
            let indices = cx.input(1)?;
            index_dtype(indices, "indices")?;
            if x.quant.as_ref().is_some_and(|q| q.axis == Some(axis)) {
                return Err("gathering along the per-channel quantization axis".to_string());
            }
            let mut out = dims[..axis].to_vec();
            out.extend_from_slice(indices.shape.dims());
            out.extend_from_slice(&dims[axis + 1..]);
            let quant = x.quant.clone().map(|mut q| {
                q.axis = q.axis.map(|a| {
                    if a > axis {
                        a + indices.shape.rank() - 1
                    } else {
                        a
                    }
                });
                q
            });
            TensorType {
                dtype: x.dtype,
                shape: Shape(out),
                quant,
            }
        }
        OpKind::Slice => {
            for i in 1..cx.inputs.len() {
                if let Some(t) = cx.inputs[i] {
                    index_dtype(t, "slice parameters")?;
                }
            }
            let plan = slice_plan(cx, dims)?;
            let out = dims
                .iter()
                .enumerate()
                .map(|(a, &d)| match plan.iter().find(|p| p.0 == a) {
                    None => d,
                    Some((_, extent)) => *extent,
                });
            TensorType {
                dtype: x.dtype,
                shape: Shape(out.collect()),
                quant: slice_quant(x, &plan)?,
            }
        }
        OpKind::Expand => {
            let shape = cx.input(1)?;
            let target = match cx.ints(1) {
                Some(values) => values
                    .iter()
                    .map(|v| {
                        v.as_dim()
                            .ok_or_else(|| format!("shape entry {v:?} is negative"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                None => vec![Dim::Dyn; spec_length(shape)?],
            };
            TensorType {
                dtype: x.dtype,
                shape: expand_shape(dims, &target)?,
                quant: per_tensor_only(x)?,
            }
        }
        OpKind::Tile => {
            let repeats = cx.input(1)?;
            if spec_length(repeats)? != dims.len() {
                return Err(format!(
                    "{} repeats for rank {}",
                    spec_length(repeats)?,
                    dims.len()
                ));
            }
            let out = match cx.ints(1) {
                Some(r) => dims
                    .iter()
                    .zip(&r)
                    .map(|(&d, &r)| match (d, r) {
                        (_, SymInt::Int(r)) if r < 0 => Err(format!("repeat {r} is negative")),
                        (d, SymInt::Int(1)) => Ok(d),
                        (Dim::Fixed(n), SymInt::Int(r)) => n
                            .checked_mul(r as usize)
                            .map(Dim::Fixed)
                            .ok_or("tiled extent overflows".to_string()),
                        _ => Ok(Dim::Dyn),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                None => vec![Dim::Dyn; dims.len()],
            };
            TensorType {
                dtype: x.dtype,
                shape: Shape(out),
                quant: per_tensor_only(x)?,
            }
        }
        OpKind::Range => {
            for i in 0..3 {
                let t = cx.input(i)?;
                if t.shape.rank() != 0 || t.dtype != x.dtype || t.quant.is_some() {
                    return Err(format!(
                        "start, limit and delta must be scalars of one dtype; operand {i} is {}",
                        crate::text::type_to_string(t)
                    ));
                }
            }
            if !matches!(x.dtype, DType::F32 | DType::I32 | DType::I64) {
                return Err(format!("{} ranges are not supported", x.dtype));
            }
            plain(x.dtype, Shape(vec![range_length(cx)?]))
        }
        other => return Err(format!("{other} is not a shape or indexing op")),
    };
    Ok(vec![out])
}

/// Indices and slice parameters are i32 or i64.
fn index_dtype(t: &TensorType, what: &str) -> Result<(), String> {
    if !matches!(t.dtype, DType::I32 | DType::I64) || t.quant.is_some() {
        return Err(format!(
            "{what} must be i32 or i64, found {}",
            crate::text::type_to_string(t)
        ));
    }
    Ok(())
}

/// Quantization parameters that survive an op moving elements across every axis.
fn per_tensor_only(x: &TensorType) -> Result<Option<crate::QuantParams>, String> {
    match &x.quant {
        Some(q) if q.axis.is_some() => {
            Err("a per-channel quantized value cannot be broadcast or tiled".to_string())
        }
        q => Ok(q.clone()),
    }
}

/// Shape's `start..end` after ONNX's clamping (negative values count from the end).
pub fn shape_range(start: i64, end: i64, rank: usize) -> (usize, usize) {
    let clamp = |v: i64| -> usize {
        let v = if v < 0 { v + rank as i64 } else { v };
        v.clamp(0, rank as i64) as usize
    };
    let (s, e) = (clamp(start), clamp(end));
    (s, e.max(s))
}

/// numpy broadcasting in both directions, as Expand does it: a target extent of 1 keeps the
/// input's, an input extent of 1 takes the target's.
fn expand_shape(dims: &[Dim], target: &[Dim]) -> Result<Shape, String> {
    let rank = dims.len().max(target.len());
    let at = |s: &[Dim], i: usize| {
        if i < rank - s.len() {
            Dim::Fixed(1)
        } else {
            s[i - (rank - s.len())]
        }
    };
    (0..rank)
        .map(|i| match (at(dims, i), at(target, i)) {
            (a, b) if a == b => Ok(a),
            (Dim::Fixed(1), b) => Ok(b),
            (a, Dim::Fixed(1)) => Ok(a),
            // The target entry is unknown: it must be 1 or the input's extent.
            (a @ (Dim::Fixed(_) | Dim::Batch | Dim::Sym(_)), Dim::Dyn) => Ok(a),
            (Dim::Dyn, _) => Ok(Dim::Dyn),
            (Dim::Fixed(a), Dim::Fixed(b)) => {
                Err(format!("cannot expand extent {a} to {b} (axis {i})"))
            }
            (a @ Dim::Batch, b) | (a, b @ Dim::Batch) => Err(format!(
                "cannot expand extent {a} to {b} (axis {i}): the batch must stay free"
            )),
            // Symbolic against another extent: equal once bound, or an error then.
            (a, b) => Ok(if matches!(a, Dim::Fixed(_)) { a } else { b }),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Shape)
}

/// One sliced axis: `(axis, result extent)`.
type SlicePlan = Vec<(usize, Dim)>;

/// The axes Slice touches and their result extents; unknown parameters give unknown
/// extents (all axes when even the axes are unknown).
fn slice_plan(cx: &InferCtx, dims: &[Dim]) -> Result<SlicePlan, String> {
    let rank = dims.len();
    let n = spec_length(cx.input(1)?)?;
    if spec_length(cx.input(2)?)? != n {
        return Err("starts and ends differ in length".to_string());
    }
    let axes: Option<Vec<usize>> = match cx.inputs.get(3).copied().flatten() {
        None => Some((0..n).collect()),
        Some(_) => cx
            .ints(3)
            .map(|a| {
                a.iter()
                    .map(|v| normalize(v.int()?, rank))
                    .collect::<Option<Vec<_>>>()
            })
            .unwrap_or(None),
    };
    let Some(axes) = axes else {
        return Ok((0..rank).map(|a| (a, Dim::Dyn)).collect());
    };
    if axes.len() != n {
        return Err(format!("{} axes for {n} starts", axes.len()));
    }
    let mut sorted = axes.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("axes {axes:?} repeat an axis"));
    }
    let (starts, ends) = (cx.ints(1), cx.ints(2));
    let steps = match cx.inputs.get(4).copied().flatten() {
        None => Some(vec![SymInt::Int(1); n]),
        Some(_) => cx.ints(4),
    };
    let mut plan = Vec::with_capacity(n);
    for (i, &a) in axes.iter().enumerate() {
        let extent = match (&starts, &ends, &steps) {
            (Some(s), Some(e), Some(st)) => slice_extent(dims[a], s[i], e[i], st[i])?,
            _ => Dim::Dyn,
        };
        plan.push((a, extent));
    }
    Ok(plan)
}

/// A possibly negative axis in `[-rank, rank)`, normalized.
fn normalize(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    usize::try_from(a).ok().filter(|&a| a < rank)
}

/// Values at or beyond this stand for "to the end" (exporters write `INT64_MAX` or
/// `INT32_MAX`).
const TO_THE_END: i64 = i32::MAX as i64;

/// The extent of one sliced axis, symbolically where the common forms allow it.
fn slice_extent(dim: Dim, start: SymInt, end: SymInt, step: SymInt) -> Result<Dim, String> {
    let step = match step {
        SymInt::Int(0) => return Err("slice step 0".to_string()),
        SymInt::Int(s) => s,
        SymInt::Dim(_) => return Ok(Dim::Dyn),
    };
    Ok(match (dim, start, end) {
        (Dim::Fixed(d), SymInt::Int(s), SymInt::Int(e)) => Dim::Fixed(slice_range(d, s, e, step).2),
        // x[0:] and x[0:n] on a symbolic extent n.
        (d, SymInt::Int(0), SymInt::Int(e)) if step == 1 && e >= TO_THE_END => d,
        (d, SymInt::Int(0), SymInt::Dim(e)) if step == 1 && e == d => d,
        // x[0:n] of a longer fixed extent (position ids of a sequence).
        (Dim::Fixed(_), SymInt::Int(0), SymInt::Dim(e)) if step == 1 && e != Dim::Dyn => e,
        _ => Dim::Dyn,
    })
}

/// ONNX Slice on one axis of extent `d`: `(first index, step, count)` after clamping;
/// shared with code generation so that both engines slice alike.
pub fn slice_range(d: usize, start: i64, end: i64, step: i64) -> (i64, i64, usize) {
    let d = d as i64;
    let fix = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
    let (s, e) = (fix(start), fix(end));
    let (s, e) = if step > 0 {
        (s.clamp(0, d), e.clamp(0, d))
    } else {
        (s.clamp(0, d - 1), e.clamp(-1, d - 1))
    };
    let count = if step > 0 {
        (e - s + step - 1).div_euclid(step)
    } else {
        (s - e + (-step) - 1).div_euclid(-step)
    };
    (s, step, count.max(0) as usize)
}

/// Per-channel parameters survive a slice only when the channel axis is not sliced.
fn slice_quant(x: &TensorType, plan: &SlicePlan) -> Result<Option<crate::QuantParams>, String> {
    match &x.quant {
        Some(q)
            if q.axis
                .is_some_and(|a| plan.iter().any(|p| p.0 == a && p.1 != x.shape.dims()[a])) =>
        {
            Err("slicing along the per-channel quantization axis".to_string())
        }
        q => Ok(q.clone()),
    }
}

/// Range's length: exact from constant operands, symbolic for `0..n` by 1.
fn range_length(cx: &InferCtx) -> Result<Dim, String> {
    if let (Some(s), Some(l), Some(d)) = (cx.constant(0), cx.constant(1), cx.constant(2)) {
        return Ok(Dim::Fixed(range_count(s, l, d)?));
    }
    Ok(match (cx.ints(0), cx.ints(1), cx.ints(2)) {
        (Some(s), Some(l), Some(d)) if s == [SymInt::Int(0)] && d == [SymInt::Int(1)] => match l[0]
        {
            SymInt::Dim(d) => d,
            SymInt::Int(n) => Dim::Fixed(n.max(0) as usize),
        },
        _ => Dim::Dyn,
    })
}

/// Most elements a Range may produce: its length is data, checked before allocating.
const MAX_RANGE: usize = 1 << 28;

fn range_count(start: &Tensor, limit: &Tensor, delta: &Tensor) -> Result<usize, String> {
    let v = |t: &Tensor| -> f64 { t.to_f32_vec().first().copied().unwrap_or(0.0) as f64 };
    let exact = |t: &Tensor| t.to_i64_vec().ok().and_then(|v| v.first().copied());
    let count = match (exact(start), exact(limit), exact(delta)) {
        (Some(s), Some(l), Some(d)) => {
            if d == 0 {
                return Err("range delta 0".to_string());
            }
            let span = l as i128 - s as i128;
            let d = d as i128;
            ((span + d - d.signum()) / d).max(0) as f64
        }
        _ => {
            if v(delta) == 0.0 || !v(delta).is_finite() {
                return Err("range delta must be finite and non-zero".to_string());
            }
            ((v(limit) - v(start)) / v(delta)).ceil().max(0.0)
        }
    };
    if !(count <= MAX_RANGE as f64) {
        return Err(format!(
            "range of {count} elements is above the limit of {MAX_RANGE}"
        ));
    }
    Ok(count as usize)
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let x = cx.input(0)?;
    let attrs = &cx.op.attrs;
    let dims = x.shape();
    let out = match cx.op.kind {
        OpKind::Shape => {
            let (start, end) = shape_range(attrs.int("start")?, attrs.int("end")?, dims.len());
            Tensor::from_i64(
                &[end - start],
                dims[start..end].iter().map(|&d| d as i64).collect(),
            )
        }
        OpKind::Size => Tensor::from_i64(&[], vec![x.len() as i64]),
        OpKind::Gather => {
            let axis = axis_in(attrs.int("axis")?, dims.len())?;
            let indices = cx.input(1)?;
            let n = dims[axis];
            let picks = indices
                .to_i64_vec()?
                .into_iter()
                .map(|i| {
                    normalize(i, n).ok_or_else(|| format!("index {i} is out of range [-{n}, {n})"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let outer: usize = dims[..axis].iter().product();
            let inner: usize = dims[axis + 1..].iter().product();
            let mut index = Vec::with_capacity(outer * picks.len() * inner);
            for o in 0..outer {
                for &p in &picks {
                    index.extend((0..inner).map(|i| (o * n + p) * inner + i));
                }
            }
            let mut shape = dims[..axis].to_vec();
            shape.extend_from_slice(indices.shape());
            shape.extend_from_slice(&dims[axis + 1..]);
            take(x, &index, shape)?
        }
        OpKind::Slice => {
            let rank = dims.len();
            let ints = |i: usize| -> Result<Option<Vec<i64>>, String> {
                cx.inputs
                    .get(i)
                    .copied()
                    .flatten()
                    .map(|t| t.to_i64_vec())
                    .transpose()
            };
            let (starts, ends) = (
                ints(1)?.ok_or("starts missing")?,
                ints(2)?.ok_or("ends missing")?,
            );
            let axes = match ints(3)? {
                Some(a) => a
                    .iter()
                    .map(|&a| normalize(a, rank).ok_or(format!("axis {a} is out of range")))
                    .collect::<Result<Vec<_>, _>>()?,
                None => (0..starts.len()).collect(),
            };
            let steps = ints(4)?.unwrap_or_else(|| vec![1; starts.len()]);
            if ends.len() != starts.len()
                || axes.len() != starts.len()
                || steps.len() != starts.len()
            {
                return Err("starts, ends, axes and steps differ in length".to_string());
            }
            // (first, step, count) per axis; untouched axes take everything.
            let mut per_axis: Vec<(i64, i64, usize)> = dims.iter().map(|&d| (0, 1, d)).collect();
            for (i, &a) in axes.iter().enumerate() {
                if steps[i] == 0 {
                    return Err("slice step 0".to_string());
                }
                per_axis[a] = slice_range(dims[a], starts[i], ends[i], steps[i]);
            }
            let shape: Vec<usize> = per_axis.iter().map(|p| p.2).collect();
            let src = strides(dims);
            let index: Vec<usize> = super::broadcast::positions(&shape)
                .iter()
                .map(|pos| {
                    pos.iter()
                        .enumerate()
                        .map(|(a, &i)| (per_axis[a].0 + i as i64 * per_axis[a].1) as usize * src[a])
                        .sum()
                })
                .collect();
            take(x, &index, shape)?
        }
        OpKind::Expand => {
            let target: Vec<usize> = cx
                .input(1)?
                .to_i64_vec()?
                .into_iter()
                .map(|v| usize::try_from(v).map_err(|_| format!("shape entry {v} is negative")))
                .collect::<Result<_, _>>()?;
            let fixed = |s: &[usize]| s.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>();
            let shape = expand_shape(&fixed(dims), &fixed(&target))?
                .as_fixed()
                .ok_or("expand of concrete shapes")?;
            check_elements(&shape)?;
            take(x, &broadcast_indices(dims, &shape), shape)?
        }
        OpKind::Tile => {
            let repeats = cx.input(1)?.to_i64_vec()?;
            if repeats.len() != dims.len() || repeats.iter().any(|&r| r < 0) {
                return Err(format!(
                    "repeats {repeats:?} must be {} non-negative values",
                    dims.len()
                ));
            }
            let shape: Vec<usize> = dims
                .iter()
                .zip(&repeats)
                .map(|(&d, &r)| d.saturating_mul(r as usize))
                .collect();
            check_elements(&shape)?;
            let src = strides(dims);
            let index: Vec<usize> = super::broadcast::positions(&shape)
                .iter()
                .map(|pos| {
                    pos.iter()
                        .enumerate()
                        .map(|(a, &i)| (i % dims[a]) * src[a])
                        .sum()
                })
                .collect();
            take(x, &index, shape)?
        }
        OpKind::Range => {
            let (start, limit, delta) = (x, cx.input(1)?, cx.input(2)?);
            let n = range_count(start, limit, delta)?;
            match start.dtype() {
                DType::F32 => {
                    let (s, d) = (start.to_f32_vec()[0], delta.to_f32_vec()[0]);
                    Tensor::from_f32(&[n], (0..n).map(|i| s + i as f32 * d).collect())
                }
                dtype => {
                    let (s, d) = (start.to_i64_vec()?[0], delta.to_i64_vec()?[0]);
                    Tensor::from_i64_values(
                        dtype,
                        vec![n],
                        (0..n as i64).map(|i| s + i * d).collect(),
                    )?
                }
            }
        }
        other => return Err(format!("{other} is not a shape or indexing op")),
    };
    Ok(vec![out])
}

/// Most elements an op that makes its result size from data (Expand, Tile) may produce.
const MAX_ELEMENTS: usize = 1 << 30;

pub(super) fn check_elements(shape: &[usize]) -> Result<(), String> {
    match shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) {
        Some(n) if n <= MAX_ELEMENTS => Ok(()),
        _ => Err(format!(
            "result of shape {shape:?} is above the limit of {MAX_ELEMENTS} elements"
        )),
    }
}

/// A tensor of `x`'s dtype with element i = x[index[i]].
pub(super) fn take(x: &Tensor, index: &[usize], shape: Vec<usize>) -> Result<Tensor, String> {
    let data = match x.data() {
        TensorData::F32(v) => TensorData::F32(index.iter().map(|&i| v[i]).collect()),
        TensorData::I8(v) => TensorData::I8(index.iter().map(|&i| v[i]).collect()),
        TensorData::U8(v) => TensorData::U8(index.iter().map(|&i| v[i]).collect()),
        TensorData::I16(v) => TensorData::I16(index.iter().map(|&i| v[i]).collect()),
        TensorData::I32(v) => TensorData::I32(index.iter().map(|&i| v[i]).collect()),
        TensorData::I64(v) => TensorData::I64(index.iter().map(|&i| v[i]).collect()),
    };
    Tensor::new(x.dtype(), shape, data)
}

/// What the specializer can know of the elements of an integer result computed from
/// shapes: `Shape` of symbolic dimensions, and the ops exporters apply to it before it
/// reaches a Reshape or Expand. `None` when the op is not one of those or nothing is known.
pub(crate) fn symbolic(cx: &InferCtx, result: &TensorType) -> Option<Vec<SymInt>> {
    if !result.dtype.is_integer() || result.shape.rank() > 1 {
        return None;
    }
    let x = cx.input(0).ok()?;
    match cx.op.kind {
        OpKind::Shape => {
            let (s, e) = shape_range(
                cx.op.attrs.int("start").ok()?,
                cx.op.attrs.int("end").ok()?,
                x.shape.rank(),
            );
            Some(
                x.shape.dims()[s..e]
                    .iter()
                    .map(|&d| SymInt::of_dim(d))
                    .collect(),
            )
        }
        OpKind::Size => {
            let m = Monomial::of(x.shape.dims())?;
            Some(vec![m
                .divide(&Monomial {
                    coefficient: 1,
                    symbols: Vec::new(),
                })
                .map_or(SymInt::Dim(Dim::Dyn), SymInt::of_dim)])
        }
        // Same elements, another (0-d or 1-d) shape.
        OpKind::Identity
        | OpKind::Unsqueeze
        | OpKind::Squeeze
        | OpKind::Reshape
        | OpKind::Flatten
        | OpKind::Cast => cx.ints(0).filter(|_| x.dtype.is_integer()),
        OpKind::Gather if x.shape.rank() == 1 => {
            let data = cx.ints(0)?;
            let picks = cx.constant(1)?.to_i64_vec().ok()?;
            picks
                .iter()
                .map(|&i| normalize(i, data.len()).map(|i| data[i]))
                .collect()
        }
        OpKind::Concat if result.shape.rank() == 1 => {
            let mut all = Vec::new();
            for i in 0..cx.inputs.len() {
                all.extend(cx.ints(i)?);
            }
            Some(all)
        }
        OpKind::Slice if x.shape.rank() == 1 => {
            let data = cx.ints(0)?;
            let one = |i: usize| {
                cx.constant(i)
                    .and_then(|t| t.to_i64_vec().ok())
                    .and_then(|v| (v.len() == 1).then(|| v[0]))
            };
            let (s, e) = (one(1)?, one(2)?);
            let step = if cx.inputs.get(4).copied().flatten().is_some() {
                one(4)?
            } else {
                1
            };
            let (first, step, count) = slice_range(data.len(), s, e, step);
            Some(
                (0..count as i64)
                    .map(|i| data[(first + i * step) as usize])
                    .collect(),
            )
        }
        OpKind::Add | OpKind::Sub | OpKind::Mul | OpKind::Div => {
            arithmetic(cx.op.kind, &cx.ints(0)?, &cx.ints(1)?)
        }
        _ => None,
    }
}

/// Elementwise integer arithmetic on tracked values (one side may be a single element):
/// exact on known integers, and the identities (`n · 1`, `n + 0`, `n / 1`) on symbols.
fn arithmetic(kind: OpKind, a: &[SymInt], b: &[SymInt]) -> Option<Vec<SymInt>> {
    let len = a.len().max(b.len());
    if (a.len() != len && a.len() != 1) || (b.len() != len && b.len() != 1) {
        return None;
    }
    let at = |v: &[SymInt], i: usize| v[if v.len() == 1 { 0 } else { i }];
    (0..len)
        .map(|i| {
            Some(match (at(a, i), at(b, i)) {
                (SymInt::Int(p), SymInt::Int(q)) => SymInt::Int(match kind {
                    OpKind::Add => p.checked_add(q)?,
                    OpKind::Sub => p.checked_sub(q)?,
                    OpKind::Mul => p.checked_mul(q)?,
                    _ if q == 0 => return None,
                    _ => p.checked_div(q)?,
                }),
                (s @ SymInt::Dim(_), SymInt::Int(0))
                    if matches!(kind, OpKind::Add | OpKind::Sub) =>
                {
                    s
                }
                (SymInt::Int(0), s @ SymInt::Dim(_)) if kind == OpKind::Add => s,
                (s @ SymInt::Dim(_), SymInt::Int(1))
                    if matches!(kind, OpKind::Mul | OpKind::Div) =>
                {
                    s
                }
                (SymInt::Int(1), s @ SymInt::Dim(_)) if kind == OpKind::Mul => s,
                _ => SymInt::Dim(Dim::Dyn),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::run_op;
    use crate::{AttrValue, Attrs};

    fn i64s(shape: &[usize], v: Vec<i64>) -> Tensor {
        Tensor::from_i64(shape, v)
    }

    #[test]
    fn slice_follows_onnx_clamping() {
        assert_eq!(slice_range(10, 0, i64::MAX, 1), (0, 1, 10));
        assert_eq!(slice_range(10, -3, -1, 1), (7, 1, 2));
        assert_eq!(slice_range(10, -1, i64::MIN, -1), (9, -1, 10));
        assert_eq!(slice_range(10, 8, 2, -3), (8, -3, 2));
        assert_eq!(slice_range(10, 5, 2, 1), (5, 1, 0));
        let x = Tensor::from_f32(&[2, 4], (0..8).map(|v| v as f32).collect());
        let y = run_op(
            OpKind::Slice,
            Attrs::new(),
            vec![
                (x, None),
                (i64s(&[1], vec![1]), None),
                (i64s(&[1], vec![-1]), None),
                (i64s(&[1], vec![1]), None),
            ],
            None,
        )
        .unwrap();
        assert_eq!(y.shape(), &[2, 2]);
        assert_eq!(y.as_f32().unwrap(), &[1., 2., 5., 6.]);
    }

    #[test]
    fn gather_expand_tile_range() {
        let x = Tensor::from_f32(&[3, 2], vec![1., 2., 3., 4., 5., 6.]);
        let g = run_op(
            OpKind::Gather,
            Attrs::new().with("axis", AttrValue::Int(0)),
            vec![(x.clone(), None), (i64s(&[2], vec![2, -3]), None)],
            None,
        )
        .unwrap();
        assert_eq!(g.as_f32().unwrap(), &[5., 6., 1., 2.]);
        let bad = run_op(
            OpKind::Gather,
            Attrs::new().with("axis", AttrValue::Int(0)),
            vec![(x.clone(), None), (i64s(&[1], vec![3]), None)],
            None,
        );
        assert!(bad.unwrap_err().contains("out of range"));
        let e = run_op(
            OpKind::Expand,
            Attrs::new(),
            vec![
                (Tensor::from_f32(&[2, 1], vec![1., 2.]), None),
                (i64s(&[3], vec![2, 1, 3]), None),
            ],
            None,
        )
        .unwrap();
        assert_eq!(e.shape(), &[2, 2, 3]);
        let t = run_op(
            OpKind::Tile,
            Attrs::new(),
            vec![(x, None), (i64s(&[2], vec![1, 2]), None)],
            None,
        )
        .unwrap();
        assert_eq!(t.shape(), &[3, 4]);
        assert_eq!(&t.as_f32().unwrap()[..4], &[1., 2., 1., 2.]);
        let scalar = |v: i64| (i64s(&[], vec![v]), None);
        let r = run_op(
            OpKind::Range,
            Attrs::new(),
            vec![scalar(10), scalar(4), scalar(-3)],
            None,
        )
        .unwrap();
        assert_eq!(r.to_i64_vec().unwrap(), vec![10, 7]);
        let huge = run_op(
            OpKind::Range,
            Attrs::new(),
            vec![scalar(0), scalar(i64::MAX), scalar(1)],
            None,
        );
        assert!(huge.unwrap_err().contains("limit"));
    }

    #[test]
    fn symbolic_arithmetic_keeps_identities() {
        let n = SymInt::Dim(Dim::Batch);
        assert_eq!(
            arithmetic(OpKind::Mul, &[n, SymInt::Int(3)], &[SymInt::Int(1)]),
            Some(vec![n, SymInt::Int(3)])
        );
        assert_eq!(
            arithmetic(OpKind::Mul, &[n], &[SymInt::Int(2)]),
            Some(vec![SymInt::Dim(Dim::Dyn)])
        );
        assert_eq!(
            arithmetic(OpKind::Div, &[SymInt::Int(7)], &[SymInt::Int(0)]),
            None
        );
    }
}
