//! Element selection and placement: OneHot, GatherElements, GatherND, ScatterND,
//! ScatterElements (and Scatter, its name before opset 11), Trilu, NonZero. Axes are
//! normalized here; indices, depth and k stay operands.

use super::{normalize_axis, Registry};
use crate::onnx::import::NodeCx;
use crate::Error;
use qlift_ir::{AttrValue, Attrs, OpKind};

pub(crate) fn register(reg: &mut Registry) {
    reg.insert_since("OneHot", 9, |cx| {
        // The axis is a result axis: [-(rank + 1), rank].
        let rank = cx.input_type(0)?.shape.rank();
        let axis = normalize_axis(cx, cx.int("axis", -1), rank + 1)?;
        let operands = (0..3)
            .map(|i| cx.required(i).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        cx.emit(
            OpKind::OneHot,
            Attrs::new().with("axis", AttrValue::Int(axis)),
            &operands,
        )
    });
    reg.insert_since("GatherElements", 11, |cx| {
        let axis = axis(cx)?;
        let (x, i) = (cx.required(0)?, cx.required(1)?);
        cx.emit(
            OpKind::GatherElements,
            Attrs::new().with("axis", AttrValue::Int(axis)),
            &[Some(x), Some(i)],
        )
    });
    reg.insert_since("GatherND", 11, |cx| {
        // batch_dims exists from opset 12.
        let b = if cx.opset < 12 {
            0
        } else {
            cx.int("batch_dims", 0)
        };
        let (x, i) = (cx.required(0)?, cx.required(1)?);
        cx.emit(
            OpKind::GatherND,
            Attrs::new().with("batch_dims", AttrValue::Int(b)),
            &[Some(x), Some(i)],
        )
    });
    reg.insert_since("ScatterND", 11, |cx| {
        let attrs = Attrs::new().with("reduction", reduction(cx));
        let operands = (0..3)
            .map(|i| cx.required(i).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        cx.emit(OpKind::ScatterND, attrs, &operands)
    });
    reg.insert_since("ScatterElements", 11, scatter_elements);
    reg.insert_versions("Scatter", 9..=10, scatter_elements);
    reg.insert_since("Trilu", 14, |cx| {
        let attrs = Attrs::new().with("upper", AttrValue::Int(cx.int("upper", 1)));
        let x = cx.required(0)?;
        match cx.input(1)? {
            Some(k) => cx.emit(OpKind::Trilu, attrs, &[Some(x), Some(k)]),
            None => cx.emit(OpKind::Trilu, attrs, &[Some(x)]),
        }
    });
    reg.insert_since("NonZero", 9, |cx| {
        let x = cx.required(0)?;
        cx.emit(OpKind::NonZero, Attrs::new(), &[Some(x)])
    });
}

/// The `axis` attribute (default 0) normalized against operand 0's rank.
fn axis(cx: &mut NodeCx) -> Result<i64, Error> {
    let rank = cx.input_type(0)?.shape.rank();
    normalize_axis(cx, cx.int("axis", 0), rank)
}

/// A scatter's reduction: an attribute from opset 16 (`none` before).
fn reduction(cx: &NodeCx) -> AttrValue {
    AttrValue::Str(if cx.opset < 16 {
        "none".to_string()
    } else {
        cx.string("reduction", "none")
    })
}

/// ScatterElements, and Scatter (opsets 9 and 10), the same op without a reduction.
fn scatter_elements(cx: &mut NodeCx) -> Result<(), Error> {
    let attrs = Attrs::new()
        .with("axis", AttrValue::Int(axis(cx)?))
        .with("reduction", reduction(cx));
    let operands = (0..3)
        .map(|i| cx.required(i).map(Some))
        .collect::<Result<Vec<_>, _>>()?;
    cx.emit(OpKind::ScatterElements, attrs, &operands)
}
