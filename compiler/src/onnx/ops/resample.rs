//! Resampling and block rearrangements: Resize (opsets 10 to 19), Upsample (7 to 9, as a
//! Resize), DepthToSpace and SpaceToDepth. The IR has one Resize with every attribute
//! spelled out and `axes` listing what scales, sizes and roi refer to.

use super::{normalize_axis, Registry};
use crate::onnx::import::{ints, NodeCx};
use crate::Error;
use qlift_ir::{AttrValue, Attrs, OpKind, Tensor};

pub(crate) fn register(reg: &mut Registry) {
    reg.insert_since("Resize", 10, resize);
    reg.insert_versions("Upsample", 7..=9, upsample);
    // CRD exists from opset 11 in DepthToSpace, from 28 in SpaceToDepth (the inverse of
    // DepthToSpace's); DCR was the only layout before.
    reg.insert("DepthToSpace", |cx| rearrange(cx, OpKind::DepthToSpace, 11));
    reg.insert("SpaceToDepth", |cx| rearrange(cx, OpKind::SpaceToDepth, 28));
}

/// DepthToSpace or SpaceToDepth, whose `mode` attribute exists from opset `modes_since`.
fn rearrange(cx: &mut NodeCx, kind: OpKind, modes_since: i64) -> Result<(), Error> {
    let mode = if cx.opset < modes_since {
        "DCR".to_string()
    } else {
        cx.string("mode", "DCR")
    };
    let attrs = Attrs::new()
        .with("blocksize", AttrValue::Int(cx.int("blocksize", 0)))
        .with("mode", AttrValue::Str(mode));
    let x = cx.required(0)?;
    cx.emit(kind, attrs, &[Some(x)])
}

/// Resize's canonical attributes with ONNX's defaults for what the node leaves out.
fn resize_attrs(cx: &NodeCx, mode: &str, transform: &str, nearest: &str, axes: Vec<i64>) -> Attrs {
    let string = |v: &str| AttrValue::Str(v.to_string());
    Attrs::new()
        .with("mode", string(mode))
        .with("coordinate_transformation_mode", string(transform))
        .with("nearest_mode", string(nearest))
        .with(
            "cubic_coeff_a",
            AttrValue::Float(cx.float("cubic_coeff_a", -0.75)),
        )
        .with(
            "exclude_outside",
            AttrValue::Int(cx.int("exclude_outside", 0)),
        )
        .with(
            "extrapolation_value",
            AttrValue::Float(cx.float("extrapolation_value", 0.0)),
        )
        .with("antialias", AttrValue::Int(cx.int("antialias", 0)))
        .with(
            "keep_aspect_ratio_policy",
            string(&cx.string("keep_aspect_ratio_policy", "stretch")),
        )
        .with("axes", ints(axes))
}

/// Resize. Opset 10 takes (X, scales) and maps coordinates asymmetrically; from opset 11
/// the operands are (X, roi, scales, sizes) with the transformation an attribute, an empty
/// scales operand standing for an absent one (opsets 11 and 12 require it); opset 18 adds
/// `axes`, `antialias` and `keep_aspect_ratio_policy`.
fn resize(cx: &mut NodeCx) -> Result<(), Error> {
    let rank = cx.input_type(0)?.shape.rank();
    let mode = cx.string("mode", "nearest");
    if cx.opset < 11 {
        return legacy_resize(cx, &mode, 1);
    }
    let axes = match cx.ints("axes") {
        Some(axes) => axes
            .iter()
            .map(|&a| normalize_axis(cx, a, rank))
            .collect::<Result<Vec<_>, _>>()?,
        None => (0..rank as i64).collect(),
    };
    let transform = cx.string("coordinate_transformation_mode", "half_pixel");
    let attrs = resize_attrs(
        cx,
        &mode,
        &transform,
        &cx.string("nearest_mode", "round_prefer_floor"),
        axes,
    );
    // An operand of known length 0 is an omitted one.
    let given = |cx: &mut NodeCx, i: usize| -> Result<bool, Error> {
        Ok(cx.has_input(i) && cx.input_type(i)?.shape.dims() != [qlift_ir::Dim::Fixed(0)])
    };
    let x = cx.required(0)?;
    // The roi matters only to tf_crop_and_resize.
    let roi = if transform == "tf_crop_and_resize" && given(cx, 1)? {
        cx.input(1)?
    } else {
        None
    };
    let scales = if given(cx, 2)? { cx.input(2)? } else { None };
    let sizes = if given(cx, 3)? { cx.input(3)? } else { None };
    // Omitted trailing operands are left out, as the IR text writes them.
    let operands = [Some(x), roi, scales, sizes];
    let last = operands.iter().rposition(Option::is_some).unwrap_or(0);
    cx.emit(OpKind::Resize, attrs, &operands[..=last])
}

/// Upsample: Resize of opset 10's form, its scales an attribute in opset 7 and an operand
/// from opset 9.
fn upsample(cx: &mut NodeCx) -> Result<(), Error> {
    let mode = cx.string("mode", "nearest");
    legacy_resize(cx, &mode, 1)
}

/// Resize before opset 11 (and Upsample): the scales in operand `slot` (Upsample-7's
/// attribute, made a constant), coordinates mapped asymmetrically (`x / scale`). Nearest
/// mode then rounds a source coordinate down when enlarging and up when shrinking (ONNX
/// Runtime's behaviour for these opsets, which models of the time were checked against):
/// `floor` or `ceil`, which needs constant scales that do not mix the two.
fn legacy_resize(cx: &mut NodeCx, mode: &str, slot: usize) -> Result<(), Error> {
    let rank = cx.input_type(0)?.shape.rank();
    let x = cx.required(0)?;
    let (s, values) = match cx.floats("scales") {
        Some(v) if cx.node.op_type == "Upsample" && cx.opset < 9 => (
            cx.new_constant("scales", Tensor::from_f32(&[v.len()], v.clone()))?,
            Some(v),
        ),
        _ => {
            let values = match cx.constant(slot) {
                Ok(t) => t.map(|t| t.to_f32_vec()),
                Err(Error::NonConstant { .. }) => None,
                Err(e) => return Err(e),
            };
            (cx.required(slot)?, values)
        }
    };
    let nearest = match (mode, values) {
        ("nearest", Some(v)) if v.iter().all(|&s| s >= 1.0) => "floor",
        ("nearest", Some(v)) if v.iter().all(|&s| s <= 1.0) => "ceil",
        ("nearest", Some(v)) => return Err(cx.error(format!("nearest resize with scales {v:?} both enlarging and shrinking is not supported"))),
        // Upsample only enlarges.
        ("nearest", None) if cx.node.op_type == "Upsample" => "floor",
        ("nearest", None) => return Err(cx.error("nearest resize of opset 10 needs constant scales (it rounds differently when shrinking)")),
        _ => "round_prefer_floor",
    };
    let attrs = resize_attrs(cx, mode, "asymmetric", nearest, (0..rank as i64).collect());
    cx.emit(OpKind::Resize, attrs, &[Some(x), None, Some(s)])
}
