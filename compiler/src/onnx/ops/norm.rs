//! Normalizations (LayerNormalization, InstanceNormalization, GroupNormalization,
//! LpNormalization), LogSoftmax and Hardmax.
//!
//! Version adapters: LogSoftmax and Hardmax before opset 13 work on the input coerced to
//! 2-d (see [`super::nn::softmax`]); GroupNormalization before opset 21 takes one scale and
//! bias per group, which become one per channel (each repeated `C / num_groups` times).

use super::nn::softmax;
use super::{normalize_axis, Registry};
use crate::onnx::import::{ints, NodeCx};
use crate::Error;
use qlift_ir::{AttrValue, Attrs, OpKind, Tensor, ValueId};

pub(crate) fn register(reg: &mut Registry) {
    reg.insert_since("LayerNormalization", 17, |cx| {
        let rank = cx.input_type(0)?.shape.rank();
        let axis = normalize_axis(cx, cx.int("axis", -1), rank)?;
        let attrs = Attrs::new()
            .with("axis", AttrValue::Int(axis))
            .with("epsilon", AttrValue::Float(cx.float("epsilon", 1e-5)));
        let (x, scale, bias) = (cx.required(0)?, cx.required(1)?, cx.input(2)?);
        cx.emit(
            OpKind::LayerNormalization,
            attrs,
            &[Some(x), Some(scale), bias],
        )
    });
    reg.insert("InstanceNormalization", |cx| {
        let attrs = Attrs::new().with("epsilon", AttrValue::Float(cx.float("epsilon", 1e-5)));
        let operands = (0..3)
            .map(|i| cx.required(i).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        cx.emit(OpKind::InstanceNormalization, attrs, &operands)
    });
    reg.insert_since("GroupNormalization", 18, group_norm);
    reg.insert("LpNormalization", |cx| {
        let rank = cx.input_type(0)?.shape.rank();
        let axis = normalize_axis(cx, cx.int("axis", -1), rank)?;
        let attrs = Attrs::new()
            .with("axis", AttrValue::Int(axis))
            .with("p", AttrValue::Int(cx.int("p", 2)));
        let x = cx.required(0)?;
        cx.emit(OpKind::LpNormalization, attrs, &[Some(x)])
    });
    reg.insert("LogSoftmax", |cx| softmax(cx, OpKind::LogSoftmax));
    reg.insert("Hardmax", |cx| softmax(cx, OpKind::Hardmax));
}

fn group_norm(cx: &mut NodeCx) -> Result<(), Error> {
    let groups = cx.int("num_groups", 0);
    if groups < 1 {
        return Err(cx.error("num_groups must be at least 1"));
    }
    let attrs = Attrs::new()
        .with("epsilon", AttrValue::Float(cx.float("epsilon", 1e-5)))
        .with("num_groups", AttrValue::Int(groups));
    let x = cx.required(0)?;
    let (mut scale, mut bias) = (cx.required(1)?, cx.required(2)?);
    if cx.opset < 21 {
        let channels = cx
            .input_type(0)?
            .shape
            .dims()
            .get(1)
            .and_then(|d| d.fixed());
        let channels = channels
            .ok_or_else(|| cx.error("opset 18 GroupNormalization needs a known channel count"))?
            as i64;
        if channels % groups != 0 {
            return Err(cx.error(format!(
                "{channels} channels do not divide into {groups} groups"
            )));
        }
        scale = per_channel(cx, scale, "scale", groups, channels)?;
        bias = per_channel(cx, bias, "bias", groups, channels)?;
    }
    cx.emit(
        OpKind::GroupNormalization,
        attrs,
        &[Some(x), Some(scale), Some(bias)],
    )
}

/// A per-group vector `[G]` repeated per channel: `[G] → [G, 1] → [G, C/G] → [C]` (folded
/// to a constant when `v` is one).
fn per_channel(
    cx: &mut NodeCx,
    v: ValueId,
    what: &str,
    groups: i64,
    channels: i64,
) -> Result<ValueId, Error> {
    let column = cx.fresh_name(&format!("{what}_column"));
    let column = cx.emit_value(
        &column,
        OpKind::Unsqueeze,
        Attrs::new().with("axes", ints(vec![1])),
        &[Some(v)],
        None,
    )?;
    let target = cx.new_constant(
        &format!("{what}_repeat"),
        Tensor::from_i64(&[2], vec![groups, channels / groups]),
    )?;
    let repeated = cx.fresh_name(&format!("{what}_repeated"));
    let repeated = cx.emit_value(
        &repeated,
        OpKind::Expand,
        Attrs::new(),
        &[Some(column), Some(target)],
        None,
    )?;
    let flat = cx.fresh_name(&format!("{what}_per_channel"));
    let reshape = Attrs::new()
        .with("allowzero", AttrValue::Int(0))
        .with("shape", ints(vec![channels]));
    cx.emit_value(&flat, OpKind::Reshape, reshape, &[Some(repeated)], None)
}
