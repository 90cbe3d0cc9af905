//! Data-movement ops and constants.

use super::{normalize_axis, Registry};
use crate::onnx::import::{ints, NodeCx};
use crate::onnx::tensor::tensor_from_proto;
use crate::onnx::Limits;
use crate::Error;
use qlift_ir::{AttrValue, Attrs, Dim, OpKind, Tensor};

pub(crate) fn register(reg: &mut Registry) {
    reg.insert("Constant", constant);
    reg.insert("Identity", |cx| pass_through(cx, OpKind::Identity));
    reg.insert("Dropout", |cx| {
        if cx.node.output.get(1).is_some_and(|o| !o.is_empty()) {
            return Err(cx.error("the mask result of Dropout is not supported (inference only)"));
        }
        // Opset 12 made the ratio and the training mode operands; before, attributes (the
        // ratio is irrelevant at inference).
        if cx.opset >= 12 && cx.constant_scalar(2)?.is_some_and(|t| t != 0.0) {
            return Err(cx.error("training_mode=true is not supported (inference only)"));
        }
        pass_through(cx, OpKind::Dropout)
    });
    reg.insert("Flatten", |cx| {
        // Flatten's axis ranges over [-rank, rank]: rank itself is allowed.
        let rank = cx.input_type(0)?.shape.rank();
        let axis = cx.int("axis", 1);
        let axis = if axis == rank as i64 {
            axis
        } else {
            normalize_axis(cx, axis, rank)?
        };
        let x = cx.required(0)?;
        cx.emit(
            OpKind::Flatten,
            Attrs::new().with("axis", AttrValue::Int(axis)),
            &[Some(x)],
        )
    });
    reg.insert("Reshape", |cx| {
        let allowzero = AttrValue::Int(cx.int("allowzero", 0));
        let x = cx.required(0)?;
        match cx.constant_ints(1) {
            Ok(Some(shape)) => {
                let attrs = Attrs::new()
                    .with("shape", ints(shape))
                    .with("allowzero", allowzero);
                cx.emit(OpKind::Reshape, attrs, &[Some(x)])
            }
            Ok(None) => Err(cx.error("the shape operand is required")),
            // A shape computed from other shapes: the specializer tracks it.
            Err(Error::NonConstant { .. }) => {
                let shape = cx.required(1)?;
                cx.emit(
                    OpKind::Reshape,
                    Attrs::new().with("allowzero", allowzero),
                    &[Some(x), Some(shape)],
                )
            }
            Err(e) => Err(e),
        }
    });
    reg.insert("Transpose", |cx| {
        let rank = cx.input_type(0)?.shape.rank();
        let perm = cx
            .ints("perm")
            .unwrap_or_else(|| (0..rank as i64).rev().collect());
        let perm = perm
            .iter()
            .map(|&p| normalize_axis(cx, p, rank))
            .collect::<Result<Vec<_>, _>>()?;
        let x = cx.required(0)?;
        cx.emit(
            OpKind::Transpose,
            Attrs::new().with("perm", ints(perm)),
            &[Some(x)],
        )
    });
    reg.insert("Concat", |cx| {
        let rank = cx.input_type(0)?.shape.rank();
        let axis = normalize_axis(cx, cx.int("axis", i64::MIN), rank)
            .map_err(|_| cx.error("axis is required and must fit the rank"))?;
        let operands = (0..cx.node.input.len())
            .map(|i| cx.required(i).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        cx.emit(
            OpKind::Concat,
            Attrs::new().with("axis", AttrValue::Int(axis)),
            &operands,
        )
    });
    reg.insert("Squeeze", |cx| {
        let ty = cx.input_type(0)?;
        let rank = ty.shape.rank();
        let given = if cx.opset < 13 {
            cx.ints("axes")
        } else {
            cx.constant_ints(1)?
        };
        let axes = match given {
            Some(axes) => axes
                .iter()
                .map(|&a| normalize_axis(cx, a, rank))
                .collect::<Result<Vec<_>, _>>()?,
            None => (0..rank)
                .filter(|&a| ty.shape.dims()[a] == Dim::Fixed(1))
                .map(|a| a as i64)
                .collect(),
        };
        let x = cx.required(0)?;
        cx.emit(
            OpKind::Squeeze,
            Attrs::new().with("axes", ints(axes)),
            &[Some(x)],
        )
    });
    reg.insert("Unsqueeze", |cx| {
        let rank = cx.input_type(0)?.shape.rank();
        let given = if cx.opset < 13 {
            cx.ints("axes")
        } else {
            cx.constant_ints(1)?
        };
        let axes = given.ok_or_else(|| cx.error("axes are required"))?;
        let axes = axes
            .iter()
            .map(|&a| normalize_axis(cx, a, rank + axes.len()))
            .collect::<Result<Vec<_>, _>>()?;
        let x = cx.required(0)?;
        cx.emit(
            OpKind::Unsqueeze,
            Attrs::new().with("axes", ints(axes)),
            &[Some(x)],
        )
    });
    reg.insert("Pad", pad);
}

fn pass_through(cx: &mut NodeCx, kind: OpKind) -> Result<(), Error> {
    let x = cx.required(0)?;
    cx.emit(kind, Attrs::new(), &[Some(x)])
}

/// A Constant node defines a constant by name; no IR node until it is used.
fn constant(cx: &mut NodeCx) -> Result<(), Error> {
    let attr = cx
        .node
        .attribute
        .first()
        .ok_or_else(|| cx.error("Constant has no value attribute"))?;
    if cx.node.attribute.len() != 1 {
        return Err(cx.error("Constant must have exactly one value attribute"));
    }
    let t = match attr.name.as_str() {
        "value" => {
            let proto = attr
                .t
                .as_ref()
                .ok_or_else(|| cx.error("value attribute holds no tensor"))?;
            tensor_from_proto(proto, None, &Limits::default())?
        }
        "value_float" => Tensor::from_f32(&[], vec![attr.f]),
        "value_floats" => Tensor::from_f32(&[attr.floats.len()], attr.floats.clone()),
        "value_int" => Tensor::from_i64(&[], vec![attr.i]),
        "value_ints" => Tensor::from_i64(&[attr.ints.len()], attr.ints.clone()),
        other => return Err(cx.error(format!("Constant attribute `{other}` is not supported"))),
    };
    cx.define_constant(0, t)
}

/// Pad in any mode (validated by the IR), with the opset-18 `axes` operand expanded to all
/// axes. Pads computed at run time stay an operand (they must then cover every axis).
fn pad(cx: &mut NodeCx) -> Result<(), Error> {
    let mode = AttrValue::Str(cx.string("mode", "constant"));
    let rank = cx.input_type(0)?.shape.rank();
    let x = cx.required(0)?;
    // Opset 11 made pads and the value operands; before, attributes.
    let (given, value) = if cx.opset < 11 {
        (
            cx.ints("pads")
                .ok_or_else(|| cx.error("pads is required"))?,
            cx.float("value", 0.0),
        )
    } else {
        let value = cx.constant_scalar(2)?.unwrap_or(0.0);
        match cx.constant_ints(1) {
            Ok(pads) => (
                pads.ok_or_else(|| cx.error("the pads operand is required"))?,
                value,
            ),
            // Computed pads for some axes only would need a scatter: those must be constant.
            Err(Error::NonConstant { .. }) if !(cx.opset >= 18 && cx.has_input(3)) => {
                let p = cx.required(1)?;
                let attrs = Attrs::new()
                    .with("mode", mode)
                    .with("value", AttrValue::Float(value));
                return cx.emit(OpKind::Pad, attrs, &[Some(x), Some(p)]);
            }
            Err(e) => return Err(e),
        }
    };
    let axes: Vec<usize> = match if cx.opset < 18 {
        None
    } else {
        cx.constant_ints(3)?
    } {
        Some(axes) => axes
            .iter()
            .map(|&a| normalize_axis(cx, a, rank).map(|a| a as usize))
            .collect::<Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    if given.len() != 2 * axes.len() {
        return Err(cx.error(format!("{} pads for {} axes", given.len(), axes.len())));
    }
    let mut pads = vec![0; 2 * rank];
    for (i, &a) in axes.iter().enumerate() {
        pads[a] = given[i];
        pads[a + rank] = given[i + axes.len()];
    }
    let attrs = Attrs::new()
        .with("pads", ints(pads))
        .with("value", AttrValue::Float(value))
        .with("mode", mode);
    cx.emit(OpKind::Pad, attrs, &[Some(x)])
}
