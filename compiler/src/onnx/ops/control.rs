//! If, Loop and Scan: bodies imported as graphs of their own.
//!
//! A body reads values of the enclosing graphs by name; the importer makes each one it
//! reads a trailing input of the body and a trailing operand of the node (`import_body`),
//! which is the IR's form (`qlift_ir`'s `ops/control.rs`). Every opset version from 7 has
//! the same tensor semantics for If and Loop (later versions add sequence and optional
//! types, which qlift does not have); Scan is imported from opset 9, whose form has no batch
//! axis (opset 8's batched form with `sequence_lens` is refused by the registry).
//!
//! A Loop's carried value may change shape from one iteration to the next: the body is
//! imported with the initial values' types, and again with the extents that differ made
//! unknown until the body's carried results fit its carried inputs.

use super::Registry;
use crate::onnx::import::{Body, NodeCx};
use crate::Error;
use qlift_ir::{AttrValue, Attrs, DType, Dim, OpKind, Shape, TensorType};

use std::sync::Arc;

pub(crate) fn register(reg: &mut Registry) {
    reg.insert("If", if_);
    reg.insert("Loop", loop_);
    reg.insert_since("Scan", 9, scan);
}

fn graph(body: Body) -> AttrValue {
    AttrValue::Graph(Arc::new(body.graph))
}

/// The node's operands for `names` (captured values), in order.
fn captured(cx: &mut NodeCx, names: &[String]) -> Result<Vec<Option<qlift_ir::ValueId>>, Error> {
    names.iter().map(|n| cx.named(n).map(Some)).collect()
}

fn if_(cx: &mut NodeCx) -> Result<(), Error> {
    // A condition known now (computed from shapes, or frozen): the branch taken is imported
    // in place (not an error when it is not known: the If then stays).
    if let Some(cond) = cx.constant(0).ok().flatten() {
        let value = cond
            .to_i64_vec()
            .ok()
            .filter(|v| v.len() == 1)
            .ok_or_else(|| cx.error("the condition must have one element"))?;
        return cx.inline_branch(if value[0] != 0 {
            "then_branch"
        } else {
            "else_branch"
        });
    }
    let cond = cx.required(0)?;
    // Both branches take the union of what either captures, in one order.
    let then = cx.import_body("then_branch", &[], &[])?;
    let other = cx.import_body("else_branch", &[], &then.captures)?;
    let then = if other.captures.len() > then.captures.len() {
        cx.import_body("then_branch", &[], &other.captures)?
    } else {
        then
    };
    let results = then.graph.outputs().len();
    let mut operands = vec![Some(cond)];
    operands.extend(captured(cx, &other.captures)?);
    let attrs = Attrs::new()
        .with("then_branch", graph(then))
        .with("else_branch", graph(other));
    cx.emit_all(OpKind::If, attrs, &operands, results)
        .map(|_| ())
}

/// The rank body input `i` of attribute `attr` declares (0 when it declares no shape).
fn declared_rank(cx: &NodeCx, attr: &str, i: usize) -> usize {
    use onnx_protobuf::type_proto::Value as T;
    let body = cx
        .node
        .attribute
        .iter()
        .find(|a| a.name == attr)
        .and_then(|a| a.g.as_ref());
    let input = body.and_then(|g| g.input.get(i));
    match input
        .and_then(|v| v.type_.as_ref())
        .and_then(|t| t.value.as_ref())
    {
        Some(T::TensorType(tt)) => tt.shape.as_ref().map_or(0, |s| s.dim.len()),
        _ => 0,
    }
}

/// Imports `attr` with carried (or state) inputs at `carried` positions of `formal`, and
/// their results at `results` positions of the body's outputs, widening the carried types
/// until each body's result fits its input (a few rounds: each makes an extent unknown).
fn import_carried(
    cx: &mut NodeCx,
    attr: &str,
    formal: &mut [TensorType],
    carried: std::ops::Range<usize>,
    results: usize,
) -> Result<Body, Error> {
    for _ in 0..4 {
        let body = cx.import_body(attr, formal, &[])?;
        let outs = body.graph.outputs();
        if outs.len() < results + carried.len() {
            return Err(cx.error(format!(
                "the body returns {} results, it carries {} values",
                outs.len(),
                carried.len()
            )));
        }
        let mut fits = true;
        for (k, slot) in carried.clone().enumerate() {
            let out = body.graph.value_type(outs[results + k]).clone();
            if !qlift_ir::body_accepts(&formal[slot], &out) {
                formal[slot] = qlift_ir::join_types(&formal[slot], &out)
                    .map_err(|e| cx.error(format!("carried value {k}: {e}")))?;
                fits = false;
            }
        }
        if fits {
            return Ok(body);
        }
    }
    Err(cx.error("the body's carried values do not settle on a type"))
}

fn loop_(cx: &mut NodeCx) -> Result<(), Error> {
    let (m, cond) = (cx.input(0)?, cx.input(1)?);
    let carried = cx.node.input.len().saturating_sub(2);
    let flag = |dtype, rank| TensorType::new(dtype, Shape(vec![Dim::Fixed(1); rank]));
    let mut formal = vec![
        flag(DType::I64, declared_rank(cx, "body", 0)),
        flag(DType::Bool, declared_rank(cx, "body", 1)),
    ];
    let mut initial = Vec::with_capacity(carried);
    for j in 0..carried {
        initial.push(Some(cx.required(2 + j)?));
        formal.push(cx.input_type(2 + j)?);
    }
    let body = import_carried(cx, "body", &mut formal, 2..2 + carried, 1)?;
    let results = body.graph.outputs().len() - 1;
    let mut operands = vec![m, cond];
    operands.extend(initial);
    operands.extend(captured(cx, &body.captures)?);
    let attrs = Attrs::new()
        .with("captures", AttrValue::Int(body.captures.len() as i64))
        .with("body", graph(body));
    cx.emit_all(OpKind::Loop, attrs, &operands, results)
        .map(|_| ())
}

fn scan(cx: &mut NodeCx) -> Result<(), Error> {
    let scanned = usize::try_from(cx.int("num_scan_inputs", 0))
        .ok()
        .filter(|&m| m > 0 && m <= cx.node.input.len());
    let scanned = scanned.ok_or_else(|| {
        cx.error(format!(
            "num_scan_inputs must be in 1..={}",
            cx.node.input.len()
        ))
    })?;
    let state = cx.node.input.len() - scanned;
    let zeros = vec![0; scanned];
    let in_axes = cx.ints("scan_input_axes").unwrap_or_else(|| zeros.clone());
    let in_dirs = cx.ints("scan_input_directions").unwrap_or(zeros);
    if in_axes.len() != scanned || in_dirs.len() != scanned {
        return Err(cx.error(format!(
            "scan_input_axes and scan_input_directions must list {scanned} entries"
        )));
    }
    let mut formal = Vec::new();
    let mut operands = Vec::new();
    for j in 0..state {
        operands.push(Some(cx.required(j)?));
        formal.push(cx.input_type(j)?);
    }
    let mut axes = Vec::with_capacity(scanned);
    for (j, &axis) in in_axes.iter().enumerate() {
        operands.push(Some(cx.required(state + j)?));
        let ty = cx.input_type(state + j)?;
        let axis = super::normalize_axis(cx, axis, ty.shape.rank())?;
        let mut dims = ty.shape.dims().to_vec();
        dims.remove(axis as usize);
        formal.push(TensorType {
            shape: Shape(dims),
            ..ty
        });
        axes.push(axis);
    }
    let body = import_carried(cx, "body", &mut formal, 0..state, 0)?;
    let stacked = body.graph.outputs().len() - state;
    let out_axes = cx
        .ints("scan_output_axes")
        .unwrap_or_else(|| vec![0; stacked]);
    let out_dirs = cx
        .ints("scan_output_directions")
        .unwrap_or_else(|| vec![0; stacked]);
    if out_axes.len() != stacked || out_dirs.len() != stacked {
        return Err(cx.error(format!(
            "scan_output_axes and scan_output_directions must list {stacked} entries"
        )));
    }
    let mut normalized = Vec::with_capacity(stacked);
    for (k, &axis) in out_axes.iter().enumerate() {
        let rank = body
            .graph
            .value_type(body.graph.outputs()[state + k])
            .shape
            .rank()
            + 1;
        normalized.push(super::normalize_axis(cx, axis, rank)?);
    }
    operands.extend(captured(cx, &body.captures)?);
    let attrs = Attrs::new()
        .with("captures", AttrValue::Int(body.captures.len() as i64))
        .with("num_scan_inputs", AttrValue::Int(scanned as i64))
        .with("scan_input_axes", AttrValue::Ints(axes))
        .with("scan_input_directions", AttrValue::Ints(in_dirs))
        .with("scan_output_axes", AttrValue::Ints(normalized))
        .with("scan_output_directions", AttrValue::Ints(out_dirs))
        .with("body", graph(body));
    cx.emit_all(OpKind::Scan, attrs, &operands, state + stacked)
        .map(|_| ())
}
