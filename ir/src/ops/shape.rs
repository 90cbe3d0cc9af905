//! Data-movement ops: Flatten, Reshape, Transpose, Concat, Identity, Dropout, Squeeze,
//! Unsqueeze, Pad. They work on any dtype and carry quantization parameters through.

use super::broadcast::{positions, strides};
use super::{EvalCtx, InferCtx};
use crate::{
    DType, Dim, Monomial, OpKind, QuantParams, Shape, SymInt, Tensor, TensorData, TensorType,
};

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    let x = cx.input(0)?;
    let attrs = &cx.op.attrs;
    let dims = x.shape.dims();
    let (shape, quant) = match cx.op.kind {
        OpKind::Identity | OpKind::Dropout => (x.shape.clone(), x.quant.clone()),
        OpKind::Flatten => {
            let axis = axis_in(attrs.int("axis")?, dims.len() + 1)?;
            let shape = Shape(vec![group_dim(&dims[..axis])?, group_dim(&dims[axis..])?]);
            (shape.clone(), regroup_quant(x, &shape)?)
        }
        OpKind::Reshape => {
            let allowzero = attrs.int("allowzero")? != 0;
            let shape = match (attrs.get("shape"), cx.ints(1)) {
                (Some(_), _) => {
                    let spec: Vec<SymInt> = attrs
                        .ints("shape")?
                        .iter()
                        .map(|&e| SymInt::Int(e))
                        .collect();
                    reshape_static(dims, &spec, allowzero)?
                }
                (None, Some(spec)) => reshape_static(dims, &spec, allowzero)?,
                (None, None) => Shape(vec![Dim::Dyn; spec_length(cx.input(1)?)?]),
            };
            (shape.clone(), regroup_quant(x, &shape)?)
        }
        OpKind::Transpose => {
            let perm = permutation(attrs.ints("perm")?, dims.len())?;
            let shape = Shape(perm.iter().map(|&p| dims[p]).collect());
            (
                shape,
                map_quant_axis(x, |a| perm.iter().position(|&p| p == a))?,
            )
        }
        OpKind::Squeeze => {
            let axes = axis_set(attrs.ints("axes")?, dims.len())?;
            if let Some(&a) = axes.iter().find(|&&a| dims[a] != Dim::Fixed(1)) {
                return Err(format!("cannot squeeze axis {a} of extent {}", dims[a]));
            }
            let kept: Vec<usize> = (0..dims.len()).filter(|a| !axes.contains(a)).collect();
            let shape = Shape(kept.iter().map(|&a| dims[a]).collect());
            (
                shape,
                map_quant_axis(x, |a| kept.iter().position(|&k| k == a))?,
            )
        }
        OpKind::Unsqueeze => {
            let rank = dims.len() + attrs.ints("axes")?.len();
            let axes = axis_set(attrs.ints("axes")?, rank)?;
            let kept: Vec<usize> = (0..rank).filter(|a| !axes.contains(a)).collect();
            let mut out = vec![Dim::Fixed(1); rank];
            for (&position, &d) in kept.iter().zip(dims) {
                out[position] = d;
            }
            (Shape(out), map_quant_axis(x, |a| kept.get(a).copied())?)
        }
        OpKind::Concat => {
            if let Some(i) =
                (1..cx.inputs.len()).find(|&i| cx.inputs[i].is_some_and(|t| t.quant != x.quant))
            {
                return Err(format!(
                    "operand {i} has other quantization parameters than operand 0"
                ));
            }
            (
                concat_shape(cx.inputs, attrs.int("axis")?)?,
                x.quant.clone(),
            )
        }
        OpKind::Pad => {
            let mode = PadMode::of(attrs)?;
            if mode == PadMode::Constant {
                pad_fill(x, attrs.float("value")?)?;
            }
            let r = dims.len();
            let pads: Option<Vec<i64>> =
                match (attrs.get("pads"), cx.inputs.get(1).copied().flatten()) {
                    (Some(_), None) => Some(attrs.ints("pads")?.to_vec()),
                    (None, Some(t)) => {
                        if spec_length(t)? != 2 * r {
                            return Err(format!("{} pads for rank {r}", spec_length(t)?));
                        }
                        cx.ints(1).and_then(|v| v.iter().map(|e| e.int()).collect())
                    }
                    _ => {
                        return Err(
                            "Pad takes its pads as the attribute or as operand 1, not both"
                                .to_string(),
                        )
                    }
                };
            let out = match pads {
                Some(pads) => {
                    if pads.len() != 2 * r {
                        return Err(format!("{} pads for rank {r}", pads.len()));
                    }
                    dims.iter()
                        .enumerate()
                        .map(|(a, &d)| match d {
                            d if pads[a] == 0 && pads[a + r] == 0 => Ok(d),
                            Dim::Batch => Err("cannot pad the batch dimension".to_string()),
                            Dim::Fixed(n) => {
                                padded_axis(mode, a, n, pads[a], pads[a + r]).map(Dim::Fixed)
                            }
                            Dim::Sym(_) | Dim::Dyn => Ok(Dim::Dyn),
                        })
                        .collect::<Result<Vec<_>, _>>()?
                }
                // Pads computed at run time: the batch stays (padding it is refused then).
                None => dims
                    .iter()
                    .map(|&d| if d == Dim::Batch { d } else { Dim::Dyn })
                    .collect(),
            };
            (Shape(out), x.quant.clone())
        }
        other => return Err(format!("{other} is not a data-movement op")),
    };
    Ok(vec![TensorType {
        dtype: x.dtype,
        shape,
        quant,
    }])
}

/// The result shape of concatenating `inputs` along `axis`: same dtype and rank, equal
/// extents off the axis (quantization parameters are the caller's concern).
pub(crate) fn concat_shape(inputs: &[Option<&TensorType>], axis: i64) -> Result<Shape, String> {
    let x = inputs
        .first()
        .copied()
        .flatten()
        .ok_or("operand 0 is missing")?;
    let dims = x.shape.dims();
    let axis = axis_in(axis, dims.len())?;
    let mut extent = Some(0usize);
    for (i, t) in inputs.iter().enumerate() {
        let t = t.ok_or_else(|| format!("operand {i} is missing"))?;
        if t.dtype != x.dtype || t.shape.rank() != dims.len() {
            return Err(format!(
                "operand {i} is {}{}, operand 0 is {}{}",
                t.dtype, t.shape, x.dtype, x.shape
            ));
        }
        for (a, (p, q)) in t.shape.dims().iter().zip(dims).enumerate() {
            if a != axis && p != q && !p.is_unbound() && !q.is_unbound() {
                return Err(format!(
                    "operand {i} has extent {p} on axis {a}, operand 0 has {q}"
                ));
            }
        }
        // A symbolic extent along the axis makes the sum known only once bound.
        extent = match (extent, t.shape.dims()[axis].fixed()) {
            (Some(e), Some(d)) => Some(e.checked_add(d).ok_or("concatenated extent overflows")?),
            _ => None,
        };
    }
    let mut out = dims.to_vec();
    out[axis] = extent.map_or(Dim::Dyn, Dim::Fixed);
    Ok(Shape(out))
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let x = cx.input(0)?;
    let attrs = &cx.op.attrs;
    let dims = x.shape();
    let out = match cx.op.kind {
        OpKind::Identity | OpKind::Dropout => x.clone(),
        OpKind::Flatten => {
            let axis = axis_in(attrs.int("axis")?, dims.len() + 1)?;
            x.clone().reshaped(vec![
                dims[..axis].iter().product(),
                dims[axis..].iter().product(),
            ])?
        }
        OpKind::Reshape => {
            let fixed: Vec<Dim> = dims.iter().map(|&d| Dim::Fixed(d)).collect();
            let spec = match attrs.get("shape") {
                Some(_) => attrs.ints("shape")?.to_vec(),
                None => cx.input(1)?.to_i64_vec()?,
            };
            let spec: Vec<SymInt> = spec.into_iter().map(SymInt::Int).collect();
            let shape = reshape_static(&fixed, &spec, attrs.int("allowzero")? != 0)?;
            x.clone().reshaped(
                shape
                    .as_fixed()
                    .ok_or("reshape of a concrete tensor has an unknown extent")?,
            )?
        }
        OpKind::Squeeze => {
            let axes = axis_set(attrs.ints("axes")?, dims.len())?;
            let out = (0..dims.len())
                .filter(|a| !axes.contains(a))
                .map(|a| dims[a])
                .collect();
            x.clone().reshaped(out)?
        }
        OpKind::Unsqueeze => {
            let rank = dims.len() + attrs.ints("axes")?.len();
            let axes = axis_set(attrs.ints("axes")?, rank)?;
            let mut rest = dims.iter();
            let out = (0..rank)
                .map(|a| {
                    if axes.contains(&a) {
                        Some(1)
                    } else {
                        rest.next().copied()
                    }
                })
                .collect::<Option<Vec<_>>>();
            x.clone().reshaped(out.ok_or("axes do not fit the rank")?)?
        }
        OpKind::Transpose => {
            let perm = permutation(attrs.ints("perm")?, dims.len())?;
            let out: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
            let src = strides(dims);
            let moved: Vec<usize> = perm.iter().map(|&p| src[p]).collect();
            let index = gather_index(&out, |pos| {
                Some(pos.iter().zip(&moved).map(|(i, s)| i * s).sum())
            });
            take(x, &index, out, 0)?
        }
        OpKind::Concat => {
            let axis = axis_in(attrs.int("axis")?, dims.len())?;
            let parts: Vec<&Tensor> = cx
                .inputs
                .iter()
                .map(|t| t.ok_or("missing operand"))
                .collect::<Result<_, _>>()?;
            concat(&parts, axis)?
        }
        OpKind::Pad => {
            let mode = PadMode::of(attrs)?;
            let pads = match attrs.get("pads") {
                Some(_) => attrs.ints("pads")?.to_vec(),
                None => cx.input(1)?.to_i64_vec()?,
            };
            let r = dims.len();
            if pads.len() != 2 * r {
                return Err(format!("{} pads for rank {r}", pads.len()));
            }
            let out: Vec<usize> = (0..r)
                .map(|a| padded_axis(mode, a, dims[a], pads[a], pads[a + r]))
                .collect::<Result<_, _>>()?;
            super::index::check_elements(&out)?;
            let src = strides(dims);
            let index = gather_index(&out, |pos| {
                let mut flat = 0;
                for a in 0..r {
                    flat += pad_source(mode, pos[a], pads[a], pads[a + r], dims[a])? * src[a];
                }
                Some(flat)
            });
            let fill = if mode == PadMode::Constant {
                pad_fill(cx.input_type(0)?, attrs.float("value")?)?
            } else {
                0
            };
            take(x, &index, out, fill)?
        }
        other => return Err(format!("{other} is not a data-movement op")),
    };
    Ok(vec![out])
}

/// A non-negative axis below `bound` (the importer has normalized negative ones).
pub(crate) fn axis_in(axis: i64, bound: usize) -> Result<usize, String> {
    usize::try_from(axis)
        .ok()
        .filter(|&a| a < bound)
        .ok_or_else(|| format!("axis {axis} is out of range [0, {bound})"))
}

/// Distinct axes below `bound`, sorted.
fn axis_set(axes: &[i64], bound: usize) -> Result<Vec<usize>, String> {
    let mut set = axes
        .iter()
        .map(|&a| axis_in(a, bound))
        .collect::<Result<Vec<_>, _>>()?;
    set.sort_unstable();
    if set.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("axes {axes:?} repeat an axis"));
    }
    Ok(set)
}

fn permutation(perm: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let set = axis_set(perm, rank)?;
    if set.len() != rank {
        return Err(format!("perm {perm:?} is not a permutation of {rank} axes"));
    }
    Ok(perm.iter().map(|&p| p as usize).collect())
}

/// The extent of a group of dimensions collapsed into one: fixed, or exactly one symbol.
/// A product with the batch in it is refused (the batch must stay an axis of its own);
/// other symbolic products are known only once the symbols are bound.
fn group_dim(dims: &[Dim]) -> Result<Dim, String> {
    let Some(m) = Monomial::of(dims) else {
        return Ok(Dim::Dyn);
    };
    let one = Monomial {
        coefficient: 1,
        symbols: Vec::new(),
    };
    match m.divide(&one) {
        Some(Dim::Fixed(c)) => Ok(Dim::Fixed(c)),
        Some(d) => Ok(d),
        None if m.symbols.contains(&Dim::Batch) => Err(format!(
            "flattening would merge the batch dimension with others in {}",
            Shape(dims.to_vec())
        )),
        None if m.coefficient > usize::MAX as u128 => Err("extent overflows".to_string()),
        None => Ok(Dim::Dyn),
    }
}

/// The length of a shape operand (a 1-d integer vector of static length).
pub(crate) fn spec_length(t: &TensorType) -> Result<usize, String> {
    match t.shape.dims() {
        [Dim::Fixed(n)] if t.dtype.is_integer() => Ok(*n),
        _ => Err(format!(
            "a shape operand must be a 1-d integer vector of known length, found {}",
            crate::text::type_to_string(t)
        )),
    }
}

/// The result shape of an ONNX reshape spec (0 copies unless `allowzero`, -1 infers), with
/// symbolic entries where the spec was computed from symbolic shapes. A `-1` is inferred by
/// dividing the element counts ([`Monomial`]); a result that would merge the batch with
/// other extents is refused (the batch stays an axis of its own), other symbolic products
/// are known only once the symbols are bound (`Dyn`).
fn reshape_static(dims: &[Dim], spec: &[SymInt], allowzero: bool) -> Result<Shape, String> {
    let mut out = Vec::with_capacity(spec.len());
    let mut infer_at = None;
    let show = || {
        format!(
            "{:?}",
            spec.iter()
                .map(|e| match e {
                    SymInt::Int(v) => v.to_string(),
                    SymInt::Dim(d) => d.to_string(),
                })
                .collect::<Vec<_>>()
        )
    };
    for (i, &e) in spec.iter().enumerate() {
        out.push(match e {
            SymInt::Int(0) if !allowzero => *dims
                .get(i)
                .ok_or_else(|| format!("shape entry {i} copies a dimension the input lacks"))?,
            SymInt::Int(-1) if infer_at.is_none() => {
                infer_at = Some(i);
                Dim::Fixed(1)
            }
            SymInt::Int(-1) => return Err("shape has more than one -1".to_string()),
            SymInt::Int(e) if e >= 0 => {
                Dim::Fixed(usize::try_from(e).map_err(|_| format!("shape entry {e} is too large"))?)
            }
            SymInt::Int(e) => return Err(format!("invalid shape entry {e}")),
            SymInt::Dim(d) => d,
        });
    }
    let (Some(m_in), Some(m_out)) = (Monomial::of(dims), Monomial::of(&out)) else {
        if let Some(i) = infer_at {
            out[i] = Dim::Dyn;
        }
        return Ok(Shape(out));
    };
    let batch_in = m_in.symbols.iter().filter(|d| **d == Dim::Batch).count();
    let batch_out = m_out.symbols.iter().filter(|d| **d == Dim::Batch).count();
    let merge = || {
        format!(
            "reshape of {} to {} would merge the batch dimension with others",
            Shape(dims.to_vec()),
            show()
        )
    };
    match infer_at {
        Some(i) => {
            out[i] = match m_in.divide(&m_out) {
                Some(d) => d,
                None if batch_in != batch_out => return Err(merge()),
                None if m_in.symbols.is_empty() && m_out.symbols.is_empty() => {
                    return Err(format!(
                        "cannot reshape {} to {}",
                        Shape(dims.to_vec()),
                        show()
                    ))
                }
                None => Dim::Dyn,
            }
        }
        None if m_in == m_out => {}
        None if batch_in != batch_out => return Err(merge()),
        None if m_in.symbols == m_out.symbols
            || (m_in.symbols.is_empty() && m_out.symbols.is_empty()) =>
        {
            return Err(format!(
                "cannot reshape {} to {}",
                Shape(dims.to_vec()),
                show()
            ))
        }
        // Symbolic counts that may agree once bound (`[seq, 2]` to `[2, seq]`).
        None => {}
    }
    Ok(Shape(out))
}

/// The static spec (`0` copies, `-1` infers) that reshapes `input` to `output` once every
/// extent of `output` is known or the batch: what lets the specializer drop a Reshape's
/// computed shape operand. `None` when the batch cannot be expressed so.
pub(crate) fn reshape_spec_for(input: &Shape, output: &Shape) -> Option<Vec<i64>> {
    let mut inferred = false;
    let spec = output
        .dims()
        .iter()
        .enumerate()
        .map(|(i, &d)| match d {
            Dim::Fixed(n) => i64::try_from(n).ok(),
            Dim::Batch if input.dims().get(i) == Some(&Dim::Batch) => Some(0),
            Dim::Batch if !inferred => {
                inferred = true;
                Some(-1)
            }
            _ => None,
        })
        .collect::<Option<Vec<i64>>>()?;
    // A literal 0 would copy too: only when the input has 0 there as well.
    if spec.iter().enumerate().any(|(i, &e)| {
        e == 0 && output.dims()[i] != Dim::Batch && input.dims().get(i) != Some(&Dim::Fixed(0))
    }) {
        return None;
    }
    let check: Vec<SymInt> = spec.iter().map(|&e| SymInt::Int(e)).collect();
    (reshape_static(input.dims(), &check, false).ok().as_ref() == Some(output)).then_some(spec)
}

/// Quantization parameters after a reshape: per-tensor pass through; per-channel ones only
/// when every dimension up to and including the channel axis is unchanged.
fn regroup_quant(x: &TensorType, out: &Shape) -> Result<Option<QuantParams>, String> {
    match &x.quant {
        Some(q)
            if q.axis
                .is_some_and(|a| out.dims().get(..=a) != x.shape.dims().get(..=a)) =>
        {
            Err(
                "a per-channel quantized value cannot be reshaped across its channel axis"
                    .to_string(),
            )
        }
        q => Ok(q.clone()),
    }
}

/// Quantization parameters with the channel axis moved by `new_axis`.
fn map_quant_axis(
    x: &TensorType,
    new_axis: impl Fn(usize) -> Option<usize>,
) -> Result<Option<QuantParams>, String> {
    let Some(q) = &x.quant else { return Ok(None) };
    let axis = match q.axis {
        None => None,
        Some(a) => Some(new_axis(a).ok_or("the per-channel quantization axis would be removed")?),
    };
    Ok(Some(QuantParams { axis, ..q.clone() }))
}

/// How Pad fills the positions outside its operand (ONNX `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    /// The fill value.
    Constant,
    /// The operand mirrored at its edges, the edge itself not repeated (`[1,2,3]` padded by 2
    /// at the start: `[3,2,1,2,3]`).
    Reflect,
    /// The edge element repeated.
    Edge,
    /// The operand repeated (`[1,2,3]` padded by 2 at the start: `[2,3,1,2,3]`).
    Wrap,
}

impl PadMode {
    /// The mode of a Pad's canonical attributes.
    pub fn of(attrs: &crate::Attrs) -> Result<PadMode, String> {
        match attrs.str("mode")? {
            "constant" => Ok(PadMode::Constant),
            "reflect" => Ok(PadMode::Reflect),
            "edge" => Ok(PadMode::Edge),
            "wrap" => Ok(PadMode::Wrap),
            m => Err(format!(
                "pad mode `{m}` is not constant, reflect, edge or wrap"
            )),
        }
    }
}

/// The extent of axis `axis` (extent `n`) padded by `begin` and `end`: refused when the
/// pads crop more than the extent, and (outside constant mode) when positions must be
/// filled from an axis the crop left empty.
fn padded_axis(
    mode: PadMode,
    axis: usize,
    n: usize,
    begin: i64,
    end: i64,
) -> Result<usize, String> {
    let m = (n as i64)
        .checked_add(begin)
        .and_then(|m| m.checked_add(end));
    let m = m.and_then(|m| usize::try_from(m).ok()).ok_or_else(|| {
        format!("pads {begin}, {end} crop more than the extent {n} of axis {axis}")
    })?;
    let kept = n as i64 - (-begin).max(0) - (-end).max(0);
    if mode != PadMode::Constant && kept <= 0 && m > 0 {
        return Err(format!("axis {axis} has no element left to pad from in {mode:?} mode (extent {n}, pads {begin}, {end})"));
    }
    Ok(m)
}

/// The source index that result position `p` of a padded axis reads, `None` for the fill
/// (constant mode): the axis has extent `n` and is padded by `begin` and `end`; negative
/// pads crop first, and the other modes pad the cropped axis (periodically beyond its
/// length, as numpy does). Shared with code generation, which tabulates it per axis.
pub fn pad_source(mode: PadMode, p: usize, begin: i64, end: i64, n: usize) -> Option<usize> {
    let lo = (-begin).max(0);
    let m = n as i64 - lo - (-end).max(0);
    let i = p as i64 - begin.max(0);
    if (0..m).contains(&i) {
        return Some((lo + i) as usize);
    }
    if m <= 0 {
        return None;
    }
    let j = match mode {
        PadMode::Constant => return None,
        PadMode::Edge => i.clamp(0, m - 1),
        PadMode::Wrap => i.rem_euclid(m),
        PadMode::Reflect if m == 1 => 0,
        PadMode::Reflect => {
            let k = i.rem_euclid(2 * (m - 1));
            if k < m {
                k
            } else {
                2 * (m - 1) - k
            }
        }
    };
    Some((lo + j) as usize)
}

/// The stored value padding writes: `value` for plain tensors; for quantized ones, the
/// zero point, which is how 0.0 is represented (other pad values are refused).
fn pad_fill(x: &TensorType, value: f32) -> Result<i64, String> {
    match &x.quant {
        None if x.dtype == DType::F32 => Ok(value.to_bits() as i64),
        None => Ok(value as i64),
        Some(q) if value == 0.0 && q.zero_point.iter().all(|&z| z == q.zero_point[0]) => {
            Ok(q.zero_point[0] as i64)
        }
        Some(_) => {
            Err("a quantized value can only be padded with 0.0 and one zero point".to_string())
        }
    }
}

/// For each position of `out` (row-major), the flat source index `f` gives, or `None`.
fn gather_index(out: &[usize], f: impl Fn(&[usize]) -> Option<usize>) -> Vec<Option<usize>> {
    positions(out).iter().map(|p| f(p)).collect()
}

/// A tensor of `x`'s dtype with element i = x[index[i]], or `fill` where the index is `None`
/// (`fill` holds the raw bits for f32, the integer otherwise).
pub(super) fn take(
    x: &Tensor,
    index: &[Option<usize>],
    shape: Vec<usize>,
    fill: i64,
) -> Result<Tensor, String> {
    macro_rules! pick {
        ($v:expr, $fill:expr) => {
            index.iter().map(|i| i.map_or($fill, |i| $v[i])).collect()
        };
    }
    let data = match x.data() {
        TensorData::F32(v) => TensorData::F32(pick!(v, f32::from_bits(fill as u32))),
        TensorData::I8(v) => TensorData::I8(pick!(v, fill as i8)),
        TensorData::U8(v) => TensorData::U8(pick!(v, fill as u8)),
        TensorData::I16(v) => TensorData::I16(pick!(v, fill as i16)),
        TensorData::I32(v) => TensorData::I32(pick!(v, fill as i32)),
        TensorData::I64(v) => TensorData::I64(pick!(v, fill)),
    };
    Tensor::new(x.dtype(), shape, data)
}

pub(crate) fn concat(parts: &[&Tensor], axis: usize) -> Result<Tensor, String> {
    let first = parts.first().ok_or("nothing to concatenate")?;
    let outer: usize = first.shape()[..axis].iter().product();
    let mut out_shape = first.shape().to_vec();
    out_shape[axis] = parts.iter().map(|p| p.shape()[axis]).sum();
    // Index into the parts laid end to end.
    let mut offsets = Vec::with_capacity(parts.len());
    let mut total = 0;
    for p in parts {
        offsets.push(total);
        total += p.len();
    }
    let mut index = Vec::with_capacity(total);
    for o in 0..outer {
        for (p, &offset) in parts.iter().zip(&offsets) {
            let block = p.len() / outer.max(1);
            index.extend((0..block).map(|i| Some(offset + o * block + i)));
        }
    }
    let joined = join(parts)?;
    take(&joined, &index, out_shape, 0)
}

/// The parts' elements laid end to end, as one flat tensor.
fn join(parts: &[&Tensor]) -> Result<Tensor, String> {
    let dtype = parts[0].dtype();
    let mut data = parts[0].data().clone();
    for p in &parts[1..] {
        match (&mut data, p.data()) {
            (TensorData::F32(a), TensorData::F32(b)) => a.extend_from_slice(b),
            (TensorData::I8(a), TensorData::I8(b)) => a.extend_from_slice(b),
            (TensorData::U8(a), TensorData::U8(b)) => a.extend_from_slice(b),
            (TensorData::I32(a), TensorData::I32(b)) => a.extend_from_slice(b),
            (TensorData::I64(a), TensorData::I64(b)) => a.extend_from_slice(b),
            _ => return Err(format!("cannot concatenate {} with {}", dtype, p.dtype())),
        }
    }
    let len = data.len();
    Tensor::new(dtype, vec![len], data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::run_op;
    use crate::{AttrValue, Attrs, Graph, Op};
    use std::sync::Arc;

    fn n(dims: &[Option<usize>]) -> Shape {
        Shape(
            dims.iter()
                .map(|d| d.map_or(Dim::Batch, Dim::Fixed))
                .collect(),
        )
    }

    fn reshape_static(dims: &[Dim], spec: &[i64], allowzero: bool) -> Result<Shape, String> {
        let spec: Vec<SymInt> = spec.iter().map(|&e| SymInt::Int(e)).collect();
        super::reshape_static(dims, &spec, allowzero)
    }

    #[test]
    fn reshape_with_batch_symbol() {
        let x = n(&[None, Some(16), Some(2), Some(2)]);
        assert_eq!(
            reshape_static(x.dims(), &[-1, 64], false).unwrap(),
            n(&[None, Some(64)])
        );
        assert_eq!(
            reshape_static(x.dims(), &[0, -1], false).unwrap(),
            n(&[None, Some(64)])
        );
        assert_eq!(
            reshape_static(x.dims(), &[0, 16, 4], false).unwrap(),
            n(&[None, Some(16), Some(4)])
        );
        assert!(reshape_static(x.dims(), &[-1], false)
            .unwrap_err()
            .contains("merge the batch"));
        assert!(reshape_static(x.dims(), &[-1, 32], false)
            .unwrap_err()
            .contains("merge the batch"));
        assert!(reshape_static(x.dims(), &[-1, -1], false).is_err());
        let fixed = Shape::fixed(&[2, 3]);
        assert_eq!(
            reshape_static(fixed.dims(), &[3, -1], false).unwrap(),
            Shape::fixed(&[3, 2])
        );
        assert_eq!(
            reshape_static(Shape::fixed(&[0, 3]).dims(), &[3, 0], true).unwrap(),
            Shape::fixed(&[3, 0])
        );
        assert!(reshape_static(fixed.dims(), &[4, -1], false).is_err());
    }

    #[test]
    fn flatten_groups() {
        assert_eq!(group_dim(n(&[None]).dims()).unwrap(), Dim::Batch);
        assert_eq!(
            group_dim(n(&[Some(2), Some(3)]).dims()).unwrap(),
            Dim::Fixed(6)
        );
        assert!(group_dim(n(&[None, Some(3)]).dims()).is_err());
    }

    fn run(
        kind: OpKind,
        attrs: Attrs,
        inputs: Vec<Tensor>,
        quant: Option<QuantParams>,
    ) -> Result<Tensor, String> {
        run_op(
            kind,
            attrs,
            inputs.into_iter().map(|t| (t, quant.clone())).collect(),
            None,
        )
    }

    #[test]
    fn transpose_and_concat() {
        let x = Tensor::from_f32(&[2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let t = run(
            OpKind::Transpose,
            Attrs::new().with("perm", AttrValue::Ints(vec![1, 0])),
            vec![x.clone()],
            None,
        )
        .unwrap();
        assert_eq!(t.shape(), &[3, 2]);
        assert_eq!(t.as_f32().unwrap(), &[1., 4., 2., 5., 3., 6.]);
        let c = run(
            OpKind::Concat,
            Attrs::new().with("axis", AttrValue::Int(1)),
            vec![x.clone(), x.clone()],
            None,
        )
        .unwrap();
        assert_eq!(
            c.as_f32().unwrap(),
            &[1., 2., 3., 1., 2., 3., 4., 5., 6., 4., 5., 6.]
        );
        let c0 = run(
            OpKind::Concat,
            Attrs::new().with("axis", AttrValue::Int(0)),
            vec![x.clone(), x],
            None,
        )
        .unwrap();
        assert_eq!(c0.shape(), &[4, 3]);
    }

    #[test]
    fn pad_with_negative_pads_and_quantized_fill() {
        let x = Tensor::from_f32(&[3], vec![1., 2., 3.]);
        let attrs = |pads: Vec<i64>, v: f32| {
            Attrs::new()
                .with("pads", AttrValue::Ints(pads))
                .with("value", AttrValue::Float(v))
                .with("mode", AttrValue::Str("constant".into()))
        };
        let p = run(OpKind::Pad, attrs(vec![2, -1], 9.0), vec![x], None).unwrap();
        assert_eq!(p.as_f32().unwrap(), &[9., 9., 1., 2.]);
        let q = Tensor::new(DType::U8, vec![1], TensorData::U8(vec![7])).unwrap();
        let qp = Some(QuantParams::per_tensor(0.5, 128));
        let p = run(
            OpKind::Pad,
            attrs(vec![1, 1], 0.0),
            vec![q.clone()],
            qp.clone(),
        )
        .unwrap();
        assert_eq!(p.to_i64_vec().unwrap(), vec![128, 7, 128]);
        assert!(run(OpKind::Pad, attrs(vec![1, 1], 1.0), vec![q], qp)
            .unwrap_err()
            .contains("padded with 0.0"));
    }

    #[test]
    fn pad_modes_follow_numpy() {
        let x = Tensor::from_f32(&[3], vec![1., 2., 3.]);
        let pad = |mode: &str, pads: Vec<i64>| {
            let attrs = Attrs::new()
                .with("pads", AttrValue::Ints(pads))
                .with("value", AttrValue::Float(0.0))
                .with("mode", AttrValue::Str(mode.into()));
            run(OpKind::Pad, attrs, vec![x.clone()], None).map(|t| t.as_f32().unwrap().to_vec())
        };
        // np.pad([1, 2, 3], (5, 4), mode)
        assert_eq!(
            pad("reflect", vec![5, 4]).unwrap(),
            [2., 1., 2., 3., 2., 1., 2., 3., 2., 1., 2., 3.]
        );
        assert_eq!(pad("edge", vec![2, 1]).unwrap(), [1., 1., 1., 2., 3., 3.]);
        assert_eq!(
            pad("wrap", vec![4, 2]).unwrap(),
            [3., 1., 2., 3., 1., 2., 3., 1., 2.]
        );
        // Crop first, then pad what is left.
        assert_eq!(pad("reflect", vec![-1, 2]).unwrap(), [2., 3., 2., 3.]);
        assert!(pad("edge", vec![-3, 1])
            .unwrap_err()
            .contains("no element left"));
        assert!(pad("constant", vec![-4, 0])
            .unwrap_err()
            .contains("crop more"));
        assert!(pad("constant", vec![0, 1 << 40])
            .unwrap_err()
            .contains("limit"));
        assert!(pad("mirror", vec![1, 1])
            .unwrap_err()
            .contains("not constant"));
    }

    #[test]
    fn quant_axis_follows_transpose_and_unsqueeze() {
        let ty = TensorType::quantized(
            DType::I8,
            Shape::fixed(&[4, 2]),
            QuantParams::per_axis(1, vec![0.1, 0.2], vec![0, 0]),
        );
        let mut g = Graph::new("t");
        let x = g.add_const(
            "x",
            Arc::new(Tensor::zeros(DType::I8, &[4, 2])),
            ty.quant.clone(),
        );
        let t = g
            .add_op(
                "t",
                Op::new(
                    OpKind::Transpose,
                    Attrs::new().with("perm", AttrValue::Ints(vec![1, 0])),
                ),
                &[Some(x)],
                &["t"],
            )
            .unwrap();
        assert_eq!(g.value_type(t[0]).quant.as_ref().unwrap().axis, Some(0));
        let u = g
            .add_op(
                "u",
                Op::new(
                    OpKind::Unsqueeze,
                    Attrs::new().with("axes", AttrValue::Ints(vec![0])),
                ),
                &[Some(x)],
                &["u"],
            )
            .unwrap();
        assert_eq!(g.value_type(u[0]).shape, Shape::fixed(&[1, 4, 2]));
        assert_eq!(g.value_type(u[0]).quant.as_ref().unwrap().axis, Some(2));
        let f = g.add_op(
            "f",
            Op::new(
                OpKind::Flatten,
                Attrs::new().with("axis", AttrValue::Int(0)),
            ),
            &[Some(x)],
            &["f"],
        );
        assert!(f.unwrap_err().to_string().contains("channel axis"));
    }

    #[test]
    fn squeeze_and_unsqueeze_eval_with_batch() {
        let mut g = Graph::new("t");
        let x = g.add_input(
            "x",
            TensorType::new(DType::F32, n(&[None, Some(1), Some(3)])),
        );
        let s = g
            .add_op(
                "s",
                Op::new(
                    OpKind::Squeeze,
                    Attrs::new().with("axes", AttrValue::Ints(vec![1])),
                ),
                &[Some(x)],
                &["s"],
            )
            .unwrap();
        let u = g
            .add_op(
                "u",
                Op::new(
                    OpKind::Unsqueeze,
                    Attrs::new().with("axes", AttrValue::Ints(vec![2, 0])),
                ),
                &[Some(s[0])],
                &["u"],
            )
            .unwrap();
        assert_eq!(
            g.value_type(u[0]).shape,
            n(&[Some(1), None, Some(1), Some(3)])
        );
        g.set_outputs(u).unwrap();
        let out = crate::interp::run(&g, &[Tensor::from_f32(&[2, 1, 3], vec![0.; 6])]).unwrap();
        assert_eq!(out[0].shape(), &[1, 2, 1, 3]);
    }
}
