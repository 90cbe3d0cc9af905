//! Reductions (ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd, ReduceL1, ReduceL2,
//! ReduceSumSquare, ReduceLogSum, ReduceLogSumExp), ArgMax, ArgMin and CumSum.
//!
//! Version adapters: the reduced axes are an attribute before opset 13 (ReduceSum) or 18
//! (the others) and an optional operand after, which may come with
//! `noop_with_empty_axes`. Constant axes become the IR's canonical `axes` attribute
//! (normalized, sorted, "none given" resolved to every axis or, with
//! `noop_with_empty_axes`, to none); axes computed at run time stay operand 1.

use super::{normalize_axis, Registry};
use crate::onnx::import::{ints, NodeCx};
use crate::Error;
use qlift_ir::{AttrValue, Attrs, OpKind};

/// The reductions and the opset from which each takes its axes as an operand.
const REDUCTIONS: [(&str, i64); 10] = [
    ("ReduceMean", 18),
    ("ReduceSum", 13),
    ("ReduceMax", 18),
    ("ReduceMin", 18),
    ("ReduceProd", 18),
    ("ReduceL1", 18),
    ("ReduceL2", 18),
    ("ReduceSumSquare", 18),
    ("ReduceLogSum", 18),
    ("ReduceLogSumExp", 18),
];

pub(crate) fn register(reg: &mut Registry) {
    for (op, _) in REDUCTIONS {
        reg.insert(op, reduce);
    }
    reg.insert("ArgMax", arg_extreme);
    reg.insert("ArgMin", arg_extreme);
    reg.insert_since("CumSum", 11, cumsum);
}

/// The IR op a converter registered for several ONNX ops stands for.
fn kind_of(cx: &NodeCx) -> Result<OpKind, Error> {
    cx.node.op_type.parse().map_err(|e: String| cx.error(e))
}

fn reduce(cx: &mut NodeCx) -> Result<(), Error> {
    let kind = kind_of(cx)?;
    let rank = cx.input_type(0)?.shape.rank();
    let since = REDUCTIONS
        .iter()
        .find(|(op, _)| *op == cx.node.op_type)
        .map_or(18, |(_, v)| *v);
    let noop = if cx.opset >= since {
        cx.int("noop_with_empty_axes", 0)
    } else {
        0
    };
    let mut attrs = Attrs::new()
        .with("keepdims", AttrValue::Int(cx.int("keepdims", 1)))
        .with("noop_with_empty_axes", AttrValue::Int(noop));
    let x = cx.required(0)?;
    let given: Option<Vec<i64>> = if cx.opset < since {
        cx.ints("axes")
    } else if !cx.has_input(1) {
        None
    } else {
        match cx.constant(1) {
            Ok(t) => Some(
                t.ok_or_else(|| cx.error("axes missing"))?
                    .to_i64_vec()
                    .map_err(|e| cx.error(format!("axes: {e}")))?,
            ),
            // Computed at run time: the IR reads them as its operand 1.
            Err(Error::NonConstant { .. }) => {
                let axes = cx.required(1)?;
                return cx.emit(kind, attrs, &[Some(x), Some(axes)]);
            }
            Err(e) => return Err(e),
        }
    };
    let axes = match given {
        Some(a) if !a.is_empty() => {
            let mut normalized = a
                .iter()
                .map(|&v| normalize_axis(cx, v, rank))
                .collect::<Result<Vec<_>, _>>()?;
            normalized.sort_unstable();
            if normalized.windows(2).any(|w| w[0] == w[1]) {
                return Err(cx.error(format!("axes {a:?} repeat an axis")));
            }
            normalized
        }
        // No axes: every axis, or none at all with noop_with_empty_axes.
        _ if noop != 0 => Vec::new(),
        _ => (0..rank as i64).collect(),
    };
    attrs.set("axes", ints(axes));
    cx.emit(kind, attrs, &[Some(x)])
}

fn arg_extreme(cx: &mut NodeCx) -> Result<(), Error> {
    let kind = kind_of(cx)?;
    let rank = cx.input_type(0)?.shape.rank();
    let axis = normalize_axis(cx, cx.int("axis", 0), rank)?;
    let attrs = Attrs::new()
        .with("axis", AttrValue::Int(axis))
        .with("keepdims", AttrValue::Int(cx.int("keepdims", 1)))
        .with(
            "select_last_index",
            AttrValue::Int(cx.int("select_last_index", 0)),
        );
    let x = cx.required(0)?;
    cx.emit(kind, attrs, &[Some(x)])
}

/// CumSum: the axis is an operand, which must be a constant (one element).
fn cumsum(cx: &mut NodeCx) -> Result<(), Error> {
    let rank = cx.input_type(0)?.shape.rank();
    let axis = match cx.constant_ints(1)?.as_deref() {
        Some([a]) => normalize_axis(cx, *a, rank)?,
        _ => return Err(cx.error("the axis must be one integer")),
    };
    let attrs = Attrs::new()
        .with("axis", AttrValue::Int(axis))
        .with("exclusive", AttrValue::Int(cx.int("exclusive", 0)))
        .with("reverse", AttrValue::Int(cx.int("reverse", 0)));
    let x = cx.required(0)?;
    cx.emit(OpKind::CumSum, attrs, &[Some(x)])
}
