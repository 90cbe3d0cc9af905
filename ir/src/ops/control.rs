//! Control flow: If, Loop and Scan, the ops whose attributes hold graphs (their bodies).
//!
//! A body is a self-contained [`Graph`]. ONNX lets a body read any value of the enclosing
//! scopes by name; qlift makes each such value an explicit trailing operand of the node and
//! a trailing input of the body, in the same order (the importer does this, as tract's
//! importer turns outer-scope references into explicit inputs). The enclosing graph's edges
//! then show every dependency: topological order, dead-node removal, use replacement and
//! the e-graph passes need to know nothing of bodies, and a body can be verified, printed,
//! interpreted and compiled on its own.
//!
//! Types: a body input *accepts* a value of the same dtype, quantization and rank whose
//! extents are those the body declares, where the body declares an unknown (`?`) or
//! symbolic extent any. A Loop's carried value may change extents from one iteration to the
//! next (a sequence that grows): its body input then declares `?` there, and the result
//! has `?` where the initial value and the body's output differ. Stacked outputs have the
//! trip count as their new axis: known when the trip count is (a constant `M` and a body
//! that passes its condition through unchanged), `?` otherwise.

use super::{EvalCtx, InferCtx};
use crate::graph::{Graph, NodeId, NodeOp, ValueId};
use crate::{AttrValue, Attrs, DType, Dim, IrError, Op, OpKind, Shape, Tensor, TensorType};
use std::sync::Arc;

/// Whether a body input of type `formal` can take a value of type `actual`.
pub fn accepts(formal: &TensorType, actual: &TensorType) -> bool {
    formal.dtype == actual.dtype
        && formal.quant == actual.quant
        && formal.shape.rank() == actual.shape.rank()
        && formal
            .shape
            .dims()
            .iter()
            .zip(actual.shape.dims())
            .all(|(f, a)| f == a || !matches!(f, Dim::Fixed(_)) || *a == Dim::Dyn)
}

/// The type of a value that is `a` on some executions and `b` on others: extents that
/// differ become unknown. Dtypes, quantization and ranks must agree.
pub fn join(a: &TensorType, b: &TensorType) -> Result<TensorType, String> {
    let show = crate::text::type_to_string;
    if a.dtype != b.dtype || a.quant != b.quant || a.shape.rank() != b.shape.rank() {
        return Err(format!(
            "{} and {} cannot be one result (qlift needs one dtype and one rank)",
            show(a),
            show(b)
        ));
    }
    let dims = a
        .shape
        .dims()
        .iter()
        .zip(b.shape.dims())
        .map(|(x, y)| if x == y { *x } else { Dim::Dyn })
        .collect();
    Ok(TensorType {
        dtype: a.dtype,
        shape: Shape(dims),
        quant: a.quant.clone(),
    })
}

/// Whether `ty` is a `dtype` value of one element (a scalar or `[1]`), as far as known.
fn is_flag(ty: &TensorType, dtype: DType) -> bool {
    ty.dtype == dtype
        && ty
            .shape
            .dims()
            .iter()
            .all(|d| matches!(d, Dim::Fixed(1) | Dim::Dyn))
}

/// Operand counts of a Loop: `(carried, captures)`.
fn loop_counts(attrs: &Attrs, arity: usize) -> Result<(usize, usize), String> {
    let captures =
        usize::try_from(attrs.int("captures")?).map_err(|_| "captures is negative".to_string())?;
    let carried = arity
        .checked_sub(2 + captures)
        .ok_or_else(|| format!("{arity} operands cannot hold M, cond and {captures} captures"))?;
    Ok((carried, captures))
}

/// Operand counts of a Scan: `(state, scanned, captures)`.
fn scan_counts(attrs: &Attrs, arity: usize) -> Result<(usize, usize, usize), String> {
    let count =
        |name: &str| usize::try_from(attrs.int(name)?).map_err(|_| format!("{name} is negative"));
    let (scanned, captures) = (count("num_scan_inputs")?, count("captures")?);
    if scanned == 0 {
        return Err("a Scan needs at least one scanned input".into());
    }
    let state = arity.checked_sub(scanned + captures).ok_or_else(|| {
        format!("{arity} operands cannot hold {scanned} scanned inputs and {captures} captures")
    })?;
    Ok((state, scanned, captures))
}

/// An attribute list of `len` entries each 0 or 1 (a direction).
fn directions(attrs: &Attrs, name: &str, len: usize) -> Result<Vec<bool>, String> {
    let v = attrs.ints(name)?;
    if v.len() != len || v.iter().any(|&d| d != 0 && d != 1) {
        return Err(format!(
            "{name} must list {len} directions, each 0 or 1, found {v:?}"
        ));
    }
    Ok(v.iter().map(|&d| d == 1).collect())
}

/// An attribute list of `len` axes, each below the rank `rank(i)` allows for entry `i`.
fn axes(
    attrs: &Attrs,
    name: &str,
    len: usize,
    rank: impl Fn(usize) -> usize,
) -> Result<Vec<usize>, String> {
    let v = attrs.ints(name)?;
    if v.len() != len {
        return Err(format!("{name} must list {len} axes, found {v:?}"));
    }
    v.iter()
        .enumerate()
        .map(|(i, &a)| {
            usize::try_from(a)
                .ok()
                .filter(|&a| a < rank(i))
                .ok_or_else(|| format!("{name}[{i}] = {a} is out of range for rank {}", rank(i)))
        })
        .collect()
}

/// The types of a body's inputs and outputs.
fn signature(body: &Graph) -> (Vec<&TensorType>, Vec<&TensorType>) {
    (
        body.input_value_iter()
            .map(|v| body.value_type(v))
            .collect(),
        body.outputs().iter().map(|&v| body.value_type(v)).collect(),
    )
}

/// Checks that body input `slot` (named `what` in messages) accepts `actual`.
fn check_accepts(
    name: &str,
    inputs: &[&TensorType],
    slot: usize,
    what: &str,
    actual: &TensorType,
) -> Result<(), String> {
    let formal = inputs
        .get(slot)
        .ok_or_else(|| format!("{name} has no input for {what}"))?;
    if !accepts(formal, actual) {
        let show = crate::text::type_to_string;
        return Err(format!(
            "{name} input {slot} ({what}) is {}, given {}",
            show(formal),
            show(actual)
        ));
    }
    Ok(())
}

/// The operands from `start` on, every one present (captured values and carried ones are
/// never optional).
fn present<'a>(
    cx: &InferCtx<'a>,
    range: std::ops::Range<usize>,
    what: &str,
) -> Result<Vec<&'a TensorType>, String> {
    range
        .map(|i| {
            cx.inputs
                .get(i)
                .copied()
                .flatten()
                .ok_or_else(|| format!("{what} operand {i} is missing"))
        })
        .collect()
}

/// Result types of If, Loop and Scan (see the module documentation).
pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    let attrs = &cx.op.attrs;
    match cx.op.kind {
        OpKind::If => {
            let cond = cx.input(0)?;
            if !is_flag(cond, DType::Bool) {
                return Err(format!(
                    "the condition must be one bool, it is {}",
                    crate::text::type_to_string(cond)
                ));
            }
            let captures = present(cx, 1..cx.inputs.len(), "captured")?;
            let mut outputs = Vec::new();
            for name in ["then_branch", "else_branch"] {
                let (inputs, outs) = signature(attrs.graph(name)?);
                if inputs.len() != captures.len() {
                    return Err(format!(
                        "{name} takes {} inputs, the node captures {} values",
                        inputs.len(),
                        captures.len()
                    ));
                }
                for (i, c) in captures.iter().enumerate() {
                    check_accepts(name, &inputs, i, "a captured value", c)?;
                }
                outputs.push(outs.into_iter().cloned().collect::<Vec<_>>());
            }
            let (then, other) = (&outputs[0], &outputs[1]);
            if then.len() != other.len() {
                return Err(format!(
                    "then_branch has {} results, else_branch {}",
                    then.len(),
                    other.len()
                ));
            }
            then.iter()
                .zip(other)
                .enumerate()
                .map(|(i, (a, b))| join(a, b).map_err(|e| format!("result {i}: {e}")))
                .collect()
        }
        OpKind::Loop => {
            let body = attrs.graph("body")?;
            let (carried, captures) = loop_counts(attrs, cx.inputs.len())?;
            if let Some(m) = cx.inputs.first().copied().flatten() {
                if !is_flag(m, DType::I64) {
                    return Err(format!(
                        "M must be one i64, it is {}",
                        crate::text::type_to_string(m)
                    ));
                }
            }
            if let Some(c) = cx.inputs.get(1).copied().flatten() {
                if !is_flag(c, DType::Bool) {
                    return Err(format!(
                        "cond must be one bool, it is {}",
                        crate::text::type_to_string(c)
                    ));
                }
            }
            let initial = present(cx, 2..2 + carried, "carried")?;
            let outer = present(cx, 2 + carried..cx.inputs.len(), "captured")?;
            let (inputs, outs) = signature(body);
            if inputs.len() != 2 + carried + captures {
                return Err(format!("the body takes {} inputs, expected 2 + {carried} carried + {captures} captured", inputs.len()));
            }
            if !is_flag(inputs[0], DType::I64) || !is_flag(inputs[1], DType::Bool) {
                return Err("the body's first two inputs must be the iteration number (one i64) and the condition (one bool)".into());
            }
            if outs.len() < 1 + carried || !is_flag(outs[0], DType::Bool) {
                return Err(format!("the body must return the condition (one bool) and {carried} carried values first"));
            }
            let mut results = Vec::new();
            for (j, v) in initial.iter().enumerate() {
                check_accepts("body", &inputs, 2 + j, "an initial carried value", v)?;
                check_accepts(
                    "body",
                    &inputs,
                    2 + j,
                    "the carried value it returns",
                    outs[1 + j],
                )?;
                results.push(join(v, outs[1 + j])?);
            }
            for (c, v) in outer.iter().enumerate() {
                check_accepts("body", &inputs, 2 + carried + c, "a captured value", v)?;
            }
            let trips = static_trip_count(cx, body).map_or(Dim::Dyn, Dim::Fixed);
            for out in &outs[1 + carried..] {
                let mut dims = vec![trips];
                dims.extend_from_slice(out.shape.dims());
                results.push(TensorType {
                    shape: Shape(dims),
                    ..(*out).clone()
                });
            }
            Ok(results)
        }
        OpKind::Scan => {
            let body = attrs.graph("body")?;
            let (state, scanned, captures) = scan_counts(attrs, cx.inputs.len())?;
            let initial = present(cx, 0..state, "state")?;
            let sequences = present(cx, state..state + scanned, "scanned")?;
            let outer = present(cx, state + scanned..cx.inputs.len(), "captured")?;
            let (inputs, outs) = signature(body);
            if inputs.len() != state + scanned + captures || outs.len() < state {
                return Err(format!(
                    "the body takes {} inputs and returns {}, expected {state} state + {scanned} slices + {captures} captured in, the state and outputs out",
                    inputs.len(),
                    outs.len()
                ));
            }
            let in_axes = axes(attrs, "scan_input_axes", scanned, |i| {
                sequences[i].shape.rank()
            })?;
            directions(attrs, "scan_input_directions", scanned)?;
            let stacked = outs.len() - state;
            let out_axes = axes(attrs, "scan_output_axes", stacked, |i| {
                outs[state + i].shape.rank() + 1
            })?;
            directions(attrs, "scan_output_directions", stacked)?;
            // The sequence length: the scanned axis of every sequence.
            let mut length: Option<Dim> = None;
            for (x, &axis) in sequences.iter().zip(&in_axes) {
                let d = x.shape.dims()[axis];
                length = Some(match length {
                    None => d,
                    Some(l) if l == d => l,
                    Some(Dim::Fixed(a)) if matches!(d, Dim::Fixed(_)) => {
                        return Err(format!(
                            "the scanned inputs have lengths {a} and {d} along their scan axes"
                        ));
                    }
                    Some(_) => Dim::Dyn,
                });
            }
            let length = length.unwrap_or(Dim::Dyn);
            let mut results = Vec::new();
            for (j, v) in initial.iter().enumerate() {
                check_accepts("body", &inputs, j, "an initial state value", v)?;
                check_accepts("body", &inputs, j, "the state it returns", outs[j])?;
                results.push(join(v, outs[j])?);
            }
            for (j, (x, &axis)) in sequences.iter().zip(&in_axes).enumerate() {
                check_accepts(
                    "body",
                    &inputs,
                    state + j,
                    "a slice of a scanned input",
                    &without_axis(x, axis),
                )?;
            }
            for (c, v) in outer.iter().enumerate() {
                check_accepts("body", &inputs, state + scanned + c, "a captured value", v)?;
            }
            for (out, &axis) in outs[state..].iter().zip(&out_axes) {
                let mut dims = out.shape.dims().to_vec();
                dims.insert(axis, length);
                results.push(TensorType {
                    shape: Shape(dims),
                    ..(*out).clone()
                });
            }
            Ok(results)
        }
        k => Err(format!("{k} is not a control-flow op")),
    }
}

/// `ty` without axis `axis` (a slice of a scanned input).
fn without_axis(ty: &TensorType, axis: usize) -> TensorType {
    let mut dims = ty.shape.dims().to_vec();
    dims.remove(axis);
    TensorType {
        shape: Shape(dims),
        ..ty.clone()
    }
}

/// A Loop's trip count when it is known before running: `M` is a constant, the initial
/// condition is absent or a constant true, and the body returns its condition input
/// unchanged or a constant true (so it never ends early).
fn static_trip_count(cx: &InferCtx, body: &Graph) -> Option<usize> {
    let m = *cx.constant(0)?.to_i64_vec().ok()?.first()?;
    if cx.inputs.get(1).copied().flatten().is_some() && !cx.constant(1).is_some_and(is_true) {
        return None;
    }
    let cond = *body.outputs().first()?;
    let passes_through = body.inputs().get(1) == Some(&cond.node);
    let always = body.const_value(cond).is_some_and(|t| is_true(t));
    (passes_through || always)
        .then(|| usize::try_from(m.max(0)).ok())
        .flatten()
}

fn is_true(t: &Tensor) -> bool {
    t.dtype() == DType::Bool && t.len() == 1 && t.to_i64_vec().is_ok_and(|v| v[0] != 0)
}

/// The one element of a flag operand (a bool condition or an i64 count).
fn flag(t: &Tensor, what: &str) -> Result<i64, String> {
    match t.to_i64_vec() {
        Ok(v) if v.len() == 1 => Ok(v[0]),
        _ => Err(format!(
            "{what} must have one element, it has shape {:?}",
            t.shape()
        )),
    }
}

/// A one-element tensor of `value` with the shape body input `ty` declares (`[]` or `[1]`).
fn scalar_like(ty: &TensorType, value: i64) -> Result<Tensor, String> {
    let shape = vec![1; ty.shape.rank()];
    Tensor::from_i64_values(ty.dtype, shape, vec![value])
}

/// Evaluates If, Loop and Scan with the reference interpreter running their bodies.
pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let mut body = |name: &str, inputs: Vec<Tensor>| -> Result<Vec<Tensor>, String> {
        crate::interp::run_with(cx.op.attrs.graph(name)?, &inputs, cx.options)
            .map_err(|e| format!("in {name}: {e}"))
    };
    execute(cx.op, cx.inputs, cx.output_types, cx.options, &mut body)
}

/// Runs a body: the attribute naming it (`then_branch`, `body`...) and its inputs in, its
/// outputs out.
pub type BodyRunner<'a> = dyn FnMut(&str, Vec<Tensor>) -> Result<Vec<Tensor>, String> + 'a;

/// The semantics of If, Loop and Scan, whatever runs the bodies: the interpreter (the
/// oracle) and the code generator's driver, which runs them as compiled programs, share it.
/// `operands` and `result_types` are the node's; `options` caps the iterations and the
/// stacked bytes (exceeding either is an error, never a hang).
pub fn execute(
    op: &Op,
    operands: &[Option<&Tensor>],
    result_types: &[TensorType],
    options: &crate::interp::Options,
    body: &mut BodyRunner,
) -> Result<Vec<Tensor>, String> {
    let attrs = &op.attrs;
    let input = |i: usize| {
        operands
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| format!("operand {i} is missing"))
    };
    let owned = |range: std::ops::Range<usize>| -> Result<Vec<Tensor>, String> {
        range.map(|i| input(i).cloned()).collect()
    };
    match op.kind {
        OpKind::If => {
            let branch = if flag(input(0)?, "the condition")? != 0 {
                "then_branch"
            } else {
                "else_branch"
            };
            body(branch, owned(1..operands.len())?)
        }
        OpKind::Loop => {
            let graph = attrs.graph("body")?;
            let (carried, _) = loop_counts(attrs, operands.len())?;
            let trips = operands
                .first()
                .copied()
                .flatten()
                .map(|m| flag(m, "M"))
                .transpose()?;
            let mut cond = operands
                .get(1)
                .copied()
                .flatten()
                .map_or(Ok(1), |c| flag(c, "cond"))?
                != 0;
            let mut values = owned(2..2 + carried)?;
            let captured = owned(2 + carried..operands.len())?;
            let formal: Vec<TensorType> = graph
                .input_value_iter()
                .take(2)
                .map(|v| graph.value_type(v).clone())
                .collect();
            let mut stacks = Stacks::new(graph.outputs().len() - 1 - carried);
            let mut i: i64 = 0;
            while cond && trips.is_none_or(|m| i < m) {
                if i as u64 >= options.max_loop_iterations {
                    return Err(too_many(options.max_loop_iterations, trips));
                }
                let mut inputs = vec![scalar_like(&formal[0], i)?, scalar_like(&formal[1], 1)?];
                inputs.append(&mut values);
                inputs.extend(captured.iter().cloned());
                let mut outputs = body("body", inputs)?.into_iter();
                cond = flag(
                    &outputs.next().ok_or("the body returned nothing")?,
                    "the body's condition",
                )? != 0;
                values = outputs.by_ref().take(carried).collect();
                stacks.push(outputs.collect(), options.max_stacked_bytes)?;
                i += 1;
            }
            let types = &result_types[carried..];
            let shapes: Vec<Vec<usize>> = types.iter().map(|t| empty_part(&t.shape, 0)).collect();
            values.extend(stacks.finish(
                &shapes,
                &vec![0; shapes.len()],
                &vec![false; shapes.len()],
                types.iter().map(|t| t.dtype),
            )?);
            Ok(values)
        }
        OpKind::Scan => {
            let graph = attrs.graph("body")?;
            let (state, scanned, _) = scan_counts(attrs, operands.len())?;
            let sequences = owned(state..state + scanned)?;
            let in_axes = axes(attrs, "scan_input_axes", scanned, |i| {
                sequences[i].shape().len()
            })?;
            let in_reverse = directions(attrs, "scan_input_directions", scanned)?;
            let stacked = graph.outputs().len() - state;
            let out_axes: Vec<usize> = attrs
                .ints("scan_output_axes")?
                .iter()
                .map(|&a| a as usize)
                .collect();
            let out_reverse = directions(attrs, "scan_output_directions", stacked)?;
            let length = sequences[0].shape()[in_axes[0]];
            if let Some((x, &a)) = sequences
                .iter()
                .zip(&in_axes)
                .find(|(x, &a)| x.shape()[a] != length)
            {
                return Err(format!(
                    "scanned inputs have lengths {length} and {} along their scan axes",
                    x.shape()[a]
                ));
            }
            if length as u64 > options.max_loop_iterations {
                return Err(too_many(options.max_loop_iterations, Some(length as i64)));
            }
            let mut values = owned(0..state)?;
            let captured = owned(state + scanned..operands.len())?;
            let mut stacks = Stacks::new(stacked);
            for t in 0..length {
                let mut inputs = std::mem::take(&mut values);
                for ((x, &axis), &reverse) in sequences.iter().zip(&in_axes).zip(&in_reverse) {
                    inputs.push(take(x, axis, if reverse { length - 1 - t } else { t }));
                }
                inputs.extend(captured.iter().cloned());
                let mut outputs = body("body", inputs)?;
                if outputs.len() < state {
                    return Err(format!(
                        "the body returned {} results, expected at least {state}",
                        outputs.len()
                    ));
                }
                let ys = outputs.split_off(state);
                values = outputs;
                stacks.push(ys, options.max_stacked_bytes)?;
            }
            let types = &result_types[state..];
            let shapes: Vec<Vec<usize>> = types
                .iter()
                .zip(&out_axes)
                .map(|(t, &a)| empty_part(&t.shape, a))
                .collect();
            values.extend(stacks.finish(
                &shapes,
                &out_axes,
                &out_reverse,
                types.iter().map(|t| t.dtype),
            )?);
            Ok(values)
        }
        k => Err(format!("{k} is not a control-flow op")),
    }
}

/// The error of a loop past its iteration cap.
fn too_many(cap: u64, trips: Option<i64>) -> String {
    match trips {
        Some(m) if m as u64 > cap => format!("trip count {m} is above the limit of {cap} iterations"),
        _ => format!("ran {cap} iterations without its condition turning false (the limit of iterations; a larger one is an option of the run)"),
    }
}

/// The extents of one part of a stacked output of type `shape` (the stacking axis removed),
/// for a loop that ran no iteration: unknown extents are 0 (the result is empty anyway).
fn empty_part(shape: &Shape, axis: usize) -> Vec<usize> {
    shape
        .dims()
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != axis)
        .map(|(_, d)| d.fixed().unwrap_or(0))
        .collect()
}

/// The per-iteration parts of a Loop's or Scan's stacked outputs, with their total size.
struct Stacks {
    parts: Vec<Vec<Tensor>>,
    bytes: u64,
}

impl Stacks {
    fn new(outputs: usize) -> Stacks {
        Stacks {
            parts: vec![Vec::new(); outputs],
            bytes: 0,
        }
    }

    /// Adds one iteration's outputs; each must have the shape of the first iteration's.
    fn push(&mut self, outputs: Vec<Tensor>, max_bytes: u64) -> Result<(), String> {
        if outputs.len() != self.parts.len() {
            return Err(format!(
                "the body returned {} stacked outputs, expected {}",
                outputs.len(),
                self.parts.len()
            ));
        }
        for (j, (t, parts)) in outputs.into_iter().zip(&mut self.parts).enumerate() {
            if let Some(first) = parts.first() {
                if first.shape() != t.shape() {
                    return Err(format!(
                        "stacked output {j} has shape {:?} at iteration {} but {:?} at iteration 0",
                        t.shape(),
                        parts.len(),
                        first.shape()
                    ));
                }
            }
            self.bytes = self.bytes.saturating_add(t.data().as_bytes().len() as u64);
            if self.bytes > max_bytes {
                return Err(format!("stacked outputs take more than {max_bytes} bytes after {} iterations (the limit of a run)", parts.len() + 1));
            }
            parts.push(t);
        }
        Ok(())
    }

    /// The stacked tensors: output `j`'s parts along `axes[j]`, in reverse order where
    /// `reverse[j]`; `empty[j]` is the part shape when there was no iteration.
    fn finish(
        self,
        empty: &[Vec<usize>],
        axes: &[usize],
        reverse: &[bool],
        dtypes: impl Iterator<Item = DType>,
    ) -> Result<Vec<Tensor>, String> {
        self.parts
            .into_iter()
            .zip(dtypes)
            .enumerate()
            .map(|(j, (mut parts, dtype))| {
                if reverse[j] {
                    parts.reverse();
                }
                stack(&parts, axes[j], dtype, &empty[j])
            })
            .collect()
    }
}

/// Element `index` of `x` along `axis`, that axis removed.
fn take(x: &Tensor, axis: usize, index: usize) -> Tensor {
    let shape = x.shape();
    let size = x.dtype().size_of();
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product::<usize>() * size;
    let bytes = x.data().as_bytes();
    let mut out_shape = shape.to_vec();
    out_shape.remove(axis);
    let mut t = Tensor::zeros(x.dtype(), &out_shape);
    let out = t.data_mut().as_bytes_mut();
    for o in 0..outer {
        let from = (o * shape[axis] + index) * inner;
        out[o * inner..(o + 1) * inner].copy_from_slice(&bytes[from..from + inner]);
    }
    t
}

/// `parts` (equal shapes) stacked along a new axis `axis`; `empty` is the part shape when
/// there are none.
fn stack(parts: &[Tensor], axis: usize, dtype: DType, empty: &[usize]) -> Result<Tensor, String> {
    let part_shape = parts.first().map_or(empty, |p| p.shape());
    if axis > part_shape.len() {
        return Err(format!(
            "stacking axis {axis} is out of range for rank {}",
            part_shape.len()
        ));
    }
    let mut shape = part_shape.to_vec();
    shape.insert(axis, parts.len());
    let mut t = Tensor::zeros(dtype, &shape);
    let size = dtype.size_of();
    let outer: usize = part_shape[..axis].iter().product();
    let inner: usize = part_shape[axis..].iter().product::<usize>() * size;
    let out = t.data_mut().as_bytes_mut();
    for (k, p) in parts.iter().enumerate() {
        if p.dtype() != dtype {
            return Err(format!(
                "a stacked output is {}, its type says {dtype}",
                p.dtype()
            ));
        }
        let bytes = p.data().as_bytes();
        for o in 0..outer {
            let to = (o * parts.len() + k) * inner;
            out[to..to + inner].copy_from_slice(&bytes[o * inner..(o + 1) * inner]);
        }
    }
    Ok(t)
}

/// How deeply bodies nest in `graph`: 0 without control flow, 1 with bodies that have none.
pub fn subgraph_depth(graph: &Graph) -> usize {
    graph
        .node_ids()
        .filter_map(|id| match &graph.node(id).op {
            NodeOp::Apply(op) => op.attrs.graphs().map(|(_, g)| 1 + subgraph_depth(g)).max(),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Refines a control-flow node's bodies before its types are inferred again: inputs that
/// receive the same value on every execution (captured values, If's every input, Scan's
/// slices) take the operand's type where it is more precise, then each body is specialized
/// with `binding` (see [`crate::specialize()`]), so that extents bound or folded in the
/// enclosing graph are known inside too. Returns whether a body changed.
pub(crate) fn refine_bodies(
    op: &mut Op,
    operands: &[Option<&TensorType>],
    binding: &crate::Binding,
) -> Result<bool, IrError> {
    let fixed: Vec<(usize, TensorType)> = match op.kind {
        OpKind::If => operands
            .iter()
            .skip(1)
            .enumerate()
            .filter_map(|(i, t)| Some((i, (*t)?.clone())))
            .collect(),
        OpKind::Loop => {
            let (carried, _) = loop_counts(&op.attrs, operands.len()).map_err(IrError::Build)?;
            operands
                .iter()
                .enumerate()
                .skip(2 + carried)
                .filter_map(|(i, t)| Some((i, (*t)?.clone())))
                .collect()
        }
        OpKind::Scan => {
            let (state, scanned, _) =
                scan_counts(&op.attrs, operands.len()).map_err(IrError::Build)?;
            let in_axes = op
                .attrs
                .ints("scan_input_axes")
                .map_err(IrError::Build)?
                .to_vec();
            operands
                .iter()
                .enumerate()
                .skip(state)
                .filter_map(|(i, t)| {
                    let t = (*t)?;
                    match i - state < scanned {
                        true => {
                            let axis = usize::try_from(*in_axes.get(i - state)?)
                                .ok()
                                .filter(|&a| a < t.shape.rank())?;
                            Some((i, without_axis(t, axis)))
                        }
                        false => Some((i, t.clone())),
                    }
                })
                .collect()
        }
        _ => return Ok(false),
    };
    let mut changed = false;
    let names: Vec<String> = op.attrs.graphs().map(|(n, _)| n.to_string()).collect();
    for name in names {
        let Some(AttrValue::Graph(body)) = op.attrs.get(&name) else {
            continue;
        };
        let mut body: Graph = (**body).clone();
        let values = body.input_values();
        for (slot, actual) in &fixed {
            let Some(v) = values.get(*slot) else { continue };
            let formal = body.value_type(*v);
            if formal != actual && accepts(formal, actual) {
                body.node_mut(v.node).outputs[0].ty = actual.clone();
            }
        }
        let specialized = crate::specialize(&body, binding)?;
        if specialized != **body_of(op, &name) {
            op.attrs.set(&name, AttrValue::Graph(Arc::new(specialized)));
            changed = true;
        }
    }
    Ok(changed)
}

fn body_of<'a>(op: &'a Op, name: &str) -> &'a Arc<Graph> {
    match op.attrs.get(name) {
        Some(AttrValue::Graph(g)) => g,
        _ => unreachable!("listed among the graph attributes"),
    }
}

/// Replaces every If whose condition is a constant by the branch it takes: the branch's
/// nodes are copied into the graph (renamed where a name is taken), the If's results become
/// Identity nodes of the branch's results (so that result names, graph outputs among them,
/// stay), and the If goes. What `--freeze` of a condition input leads to; returns whether
/// anything changed.
pub fn inline_constant_branches(graph: &mut Graph) -> Result<bool, IrError> {
    let mut changed = false;
    for id in graph.topo_order()? {
        let NodeOp::Apply(op) = &graph.node(id).op else {
            continue;
        };
        if op.kind != OpKind::If {
            continue;
        }
        let operands = graph.node_inputs(id);
        let Some(cond) = operands[0].and_then(|v| graph.const_value(v)) else {
            continue;
        };
        let taken = if flag(cond, "the condition").map_err(|e| eval_error(graph, id, e))? != 0 {
            "then_branch"
        } else {
            "else_branch"
        };
        let branch = Arc::clone(body_of(op, taken));
        let results = inline(graph, id, &branch, &operands[1..])?;
        for (output, v) in results.into_iter().enumerate() {
            let old = ValueId { node: id, output };
            let name = graph.value(old).name.clone();
            let node_name = graph.node(id).name.clone();
            let ty = graph.value_type(v).clone();
            let identity = graph.add_node(
                &node_name,
                Op::new(OpKind::Identity, Attrs::new()),
                &[Some(v)],
                vec![crate::Value { name, ty }],
            )?;
            graph.replace_all_uses(
                old,
                ValueId {
                    node: identity,
                    output: 0,
                },
            )?;
        }
        graph.remove_dead_nodes();
        changed = true;
    }
    Ok(changed)
}

fn eval_error(graph: &Graph, id: NodeId, message: String) -> IrError {
    IrError::Eval {
        node: graph.node(id).name.clone(),
        op: graph.node(id).op.name().to_string(),
        message,
    }
}

/// Copies `body`'s nodes into `graph` with its inputs bound to `operands`; returns the
/// values of its outputs.
fn inline(
    graph: &mut Graph,
    at: NodeId,
    body: &Graph,
    operands: &[Option<ValueId>],
) -> Result<Vec<ValueId>, IrError> {
    let mut map: std::collections::HashMap<NodeId, NodeId> = std::collections::HashMap::new();
    let mut bound: std::collections::HashMap<ValueId, ValueId> = std::collections::HashMap::new();
    for (v, operand) in body.input_values().into_iter().zip(operands) {
        let operand =
            operand.ok_or_else(|| eval_error(graph, at, "a captured operand is missing".into()))?;
        bound.insert(v, operand);
    }
    let mut taken: std::collections::HashSet<String> = graph
        .node_ids()
        .flat_map(|n| {
            graph
                .node(n)
                .outputs
                .iter()
                .map(|v| v.name.clone())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut fresh = |name: &str| {
        let mut candidate = name.to_string();
        let mut k = 1;
        while taken.contains(&candidate) {
            candidate = format!("{name}_{k}");
            k += 1;
        }
        taken.insert(candidate.clone());
        candidate
    };
    for id in body.topo_order()? {
        let node = body.node(id);
        let new = match &node.op {
            NodeOp::Input => continue,
            NodeOp::Const(t) => {
                graph
                    .add_const(
                        &fresh(&node.outputs[0].name),
                        t.clone(),
                        node.outputs[0].ty.quant.clone(),
                    )
                    .node
            }
            NodeOp::Apply(op) => {
                let inputs: Vec<Option<ValueId>> = body
                    .node_inputs(id)
                    .into_iter()
                    .map(|v| v.map(|v| resolve(&bound, &map, v)))
                    .collect();
                let outputs = node
                    .outputs
                    .iter()
                    .map(|v| crate::Value {
                        name: fresh(&v.name),
                        ty: v.ty.clone(),
                    })
                    .collect();
                graph.add_node(&node.name, op.clone(), &inputs, outputs)?
            }
        };
        map.insert(id, new);
    }
    Ok(body
        .outputs()
        .iter()
        .map(|&v| resolve(&bound, &map, v))
        .collect())
}

fn resolve(
    bound: &std::collections::HashMap<ValueId, ValueId>,
    map: &std::collections::HashMap<NodeId, NodeId>,
    v: ValueId,
) -> ValueId {
    bound.get(&v).copied().unwrap_or_else(|| ValueId {
        node: map[&v.node],
        output: v.output,
    })
}

#[cfg(test)]
mod tests {
    use crate::interp::{run, run_with, Options};
    use crate::text::{parse, print, PrintOptions};
    use crate::{verify, Tensor};

    /// `x + x` on the then branch, `x * 3` on the else branch, `x` captured.
    const IF: &str = "graph pick(%c: bool[], %x: f32[2]) -> (%y) {
  %y = If(%c, %x) {else_branch=graph other(%x: f32[2]) -> (%t) {
    %three = const f32[] [3.0]
    %t = Mul(%x, %three) : f32[2]
  }, then_branch=graph twice(%x: f32[2]) -> (%s) {
    %s = Add(%x, %x) : f32[2]
  }} : f32[2]
}
";

    /// Four steps of `acc += step`, every partial sum stacked.
    const LOOP: &str = "graph sums(%x: f32[3]) -> (%total, %partials) {
  %m = const i64[] [4]
  %total, %partials = Loop(%m, _, %x, %x) {body=graph body(%i: i64[], %c: bool[], %acc: f32[3], %step: f32[3]) -> (%c, %next, %next) {
    %next = Add(%acc, %step) : f32[3]
  }, captures=1} : f32[3], f32[4,3]
}
";

    /// A running sum over the rows of `x`, backwards, the partial sums stacked on axis 1.
    const SCAN: &str = "graph cumulative(%init: f32[2], %x: f32[3,2]) -> (%last, %ys) {
  %last, %ys = Scan(%init, %x) {body=graph body(%s: f32[2], %row: f32[2]) -> (%n, %n) {
    %n = Add(%s, %row) : f32[2]
  }, captures=0, num_scan_inputs=1, scan_input_axes=[0], scan_input_directions=[1], scan_output_axes=[1], scan_output_directions=[0]} : f32[2], f32[2,3]
}
";

    fn round_trip(text: &str) -> crate::Graph {
        let g = parse(text).unwrap();
        verify(&g).unwrap();
        let printed = print(&g, &PrintOptions::default());
        assert_eq!(printed, text, "the printer writes what the parser read");
        assert_eq!(parse(&printed).unwrap(), g);
        g
    }

    #[test]
    fn if_runs_the_branch_its_condition_picks() {
        let g = round_trip(IF);
        let x = Tensor::from_f32(&[2], vec![1.5, -2.0]);
        let cond = |b: u8| {
            Tensor::new(crate::DType::Bool, vec![], crate::TensorData::U8(vec![b])).unwrap()
        };
        assert_eq!(
            run(&g, &[cond(1), x.clone()]).unwrap()[0],
            Tensor::from_f32(&[2], vec![3.0, -4.0])
        );
        assert_eq!(
            run(&g, &[cond(0), x.clone()]).unwrap()[0],
            Tensor::from_f32(&[2], vec![4.5, -6.0])
        );
        // A constant condition is folded away: the branch is inlined and the If is gone.
        let mut frozen = g.clone();
        frozen
            .freeze_input(frozen.input_values()[0], std::sync::Arc::new(cond(0)))
            .unwrap();
        let folded = crate::specialize(&frozen, &crate::Binding::default()).unwrap();
        let text = print(&folded, &PrintOptions::default());
        assert!(
            !text.contains("If(") && text.contains("Mul(%x, %three)"),
            "{text}"
        );
        assert_eq!(
            run(&folded, &[x]).unwrap()[0],
            Tensor::from_f32(&[2], vec![4.5, -6.0])
        );
    }

    #[test]
    fn loop_carries_values_and_stacks_outputs() {
        let g = round_trip(LOOP);
        let out = run(&g, &[Tensor::from_f32(&[3], vec![1.0, 2.0, 3.0])]).unwrap();
        assert_eq!(out[0], Tensor::from_f32(&[3], vec![5.0, 10.0, 15.0]));
        assert_eq!(out[1].shape(), &[4, 3]);
        assert_eq!(
            out[1].as_f32().unwrap()[..6],
            [2.0, 4.0, 6.0, 3.0, 6.0, 9.0]
        );
        // Past the iteration cap: an error naming the node, not a hang.
        let capped = Options {
            max_loop_iterations: 3,
            ..Options::default()
        };
        let err = run_with(&g, &[Tensor::from_f32(&[3], vec![1.0, 2.0, 3.0])], &capped)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node `total`") && err.contains("trip count 4 is above the limit of 3"),
            "{err}"
        );
    }

    #[test]
    fn scan_walks_backwards_and_stacks_on_the_output_axis() {
        let g = round_trip(SCAN);
        let x = Tensor::from_f32(&[3, 2], vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0]);
        let out = run(&g, &[Tensor::from_f32(&[2], vec![0.0, 0.0]), x]).unwrap();
        assert_eq!(out[0], Tensor::from_f32(&[2], vec![6.0, 60.0]));
        // Rows 2, 1, 0 in turn: partial sums 3, 5, 6 (and 30, 50, 60), stacked along axis 1.
        assert_eq!(
            out[1],
            Tensor::from_f32(&[2, 3], vec![3.0, 5.0, 6.0, 30.0, 50.0, 60.0])
        );
    }

    #[test]
    fn bodies_that_do_not_fit_the_node_are_named() {
        let bad = IF.replace("%x: f32[2]) -> (%t)", "%x: i64[2]) -> (%t)");
        let err = verify(&parse(&bad).unwrap()).unwrap_err().to_string();
        assert!(
            err.contains("else_branch input 0 (a captured value) is i64[2], given f32[2]"),
            "{err}"
        );
        let bad = LOOP.replace(
            "%next = Add(%acc, %step) : f32[3]",
            "%next = Add(%acc, %c) : f32[3]",
        );
        let err = verify(&parse(&bad).unwrap()).unwrap_err().to_string();
        assert!(err.contains("in body: node `next` (Add)"), "{err}");
    }

    #[test]
    fn nesting_past_the_parser_limit_is_an_error() {
        let mut text = String::from("%y = Relu(%x) : f32[1]");
        for _ in 0..=crate::text::MAX_NESTING {
            text = format!("%y = If(%c, %c, %x) {{else_branch=graph e(%c: bool[], %x: f32[1]) -> (%y) {{ {text} }}, then_branch=graph t(%c: bool[], %x: f32[1]) -> (%x) {{ }}}} : f32[1]");
        }
        let text = format!("graph deep(%c: bool[], %x: f32[1]) -> (%y) {{ {text} }}");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("bodies nest deeper than 64 levels"), "{err}");
    }
}
