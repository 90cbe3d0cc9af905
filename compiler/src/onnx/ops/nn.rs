//! Convolution, matrix products, normalization, pooling, softmax.

use super::{normalize_axis, Registry};
use crate::onnx::import::{ints, NodeCx};
use crate::Error;
use qlift_ir::{AttrValue, Attrs, OpKind};

pub(crate) fn register(reg: &mut Registry) {
    reg.insert("Conv", |cx| {
        let (x, w) = (cx.required(0)?, cx.required(1)?);
        let b = cx.input(2)?;
        let attrs = conv_attrs(cx, 0, 1)?;
        cx.emit(OpKind::Conv, attrs, &[Some(x), Some(w), b])
    });
    reg.insert("MatMul", |cx| {
        let (a, b) = (cx.required(0)?, cx.required(1)?);
        cx.emit(OpKind::MatMul, Attrs::new(), &[Some(a), Some(b)])
    });
    reg.insert("Gemm", |cx| {
        let (a, b, c) = (cx.required(0)?, cx.required(1)?, cx.input(2)?);
        let attrs = Attrs::new()
            .with("alpha", AttrValue::Float(cx.float("alpha", 1.0)))
            .with("beta", AttrValue::Float(cx.float("beta", 1.0)))
            .with("transA", AttrValue::Int(cx.int("transA", 0)))
            .with("transB", AttrValue::Int(cx.int("transB", 0)));
        cx.emit(OpKind::Gemm, attrs, &[Some(a), Some(b), c])
    });
    reg.insert("BatchNormalization", |cx| {
        cx.refuse_int("training_mode", 0, "qlift compiles inference graphs")?;
        let operands = (0..5)
            .map(|i| cx.required(i).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        let attrs = Attrs::new().with("epsilon", AttrValue::Float(cx.float("epsilon", 1e-5)));
        cx.emit(OpKind::BatchNormalization, attrs, &operands)
    });
    reg.insert("MaxPool", |cx| pool(cx, OpKind::MaxPool));
    reg.insert("AveragePool", |cx| pool(cx, OpKind::AveragePool));
    reg.insert("GlobalAveragePool", |cx| {
        let x = cx.required(0)?;
        cx.emit(OpKind::GlobalAveragePool, Attrs::new(), &[Some(x)])
    });
    reg.insert("GlobalMaxPool", |cx| {
        let x = cx.required(0)?;
        cx.emit(OpKind::GlobalMaxPool, Attrs::new(), &[Some(x)])
    });
    reg.insert("Softmax", |cx| softmax(cx, OpKind::Softmax));
}

/// Softmax-like ops along one axis. Before opset 13 they worked on the input coerced to 2-d
/// at `axis` (default 1): everything from `axis` on is one row. That is the same as the
/// later form when `axis` is the last axis; otherwise the input is flattened, normalized
/// by rows, and reshaped back (to its own shape, computed by `Shape`).
pub(crate) fn softmax(cx: &mut NodeCx, kind: OpKind) -> Result<(), Error> {
    let x = cx.required(0)?;
    let rank = cx.input_type(0)?.shape.rank();
    let legacy = cx.opset < 13;
    let axis = normalize_axis(cx, cx.int("axis", if legacy { 1 } else { -1 }), rank)?;
    let along = |axis: i64| Attrs::new().with("axis", AttrValue::Int(axis));
    if !legacy || axis as usize + 1 == rank {
        return cx.emit(kind, along(axis), &[Some(x)]);
    }
    let flat_name = cx.fresh_name("flat");
    let flat = cx.emit_value(
        &flat_name,
        OpKind::Flatten,
        Attrs::new().with("axis", AttrValue::Int(axis)),
        &[Some(x)],
        None,
    )?;
    let rows_name = cx.fresh_name("rows");
    let rows = cx.emit_value(&rows_name, kind, along(1), &[Some(flat)], None)?;
    let shape_name = cx.fresh_name("shape");
    let shape_attrs = Attrs::new()
        .with("start", AttrValue::Int(0))
        .with("end", AttrValue::Int(rank as i64));
    let shape = cx.emit_value(&shape_name, OpKind::Shape, shape_attrs, &[Some(x)], None)?;
    cx.emit(
        OpKind::Reshape,
        Attrs::new().with("allowzero", AttrValue::Int(0)),
        &[Some(rows), Some(shape)],
    )
}

fn pool(cx: &mut NodeCx, kind: OpKind) -> Result<(), Error> {
    if cx.node.output.len() > 1 && !cx.node.output[1].is_empty() {
        return Err(cx.error("the Indices result of MaxPool is not supported"));
    }
    let x = cx.required(0)?;
    let kernel = cx
        .ints("kernel_shape")
        .ok_or_else(|| cx.error("kernel_shape is required"))?;
    let mut attrs = window_attrs(cx, 0, &kernel)?;
    attrs.set("ceil_mode", AttrValue::Int(cx.int("ceil_mode", 0)));
    if kind == OpKind::AveragePool {
        attrs.set(
            "count_include_pad",
            AttrValue::Int(cx.int("count_include_pad", 0)),
        );
    }
    cx.emit(kind, attrs, &[Some(x)])
}

/// Canonical attributes of Conv, ConvInteger and QLinearConv: input operand `x`, weights
/// operand `w` (kernel_shape defaults to the weights' spatial extents).
pub(crate) fn conv_attrs(cx: &mut NodeCx, x: usize, w: usize) -> Result<Attrs, Error> {
    let wshape = cx.input_type(w)?.shape;
    let wdims = wshape
        .as_fixed()
        .ok_or_else(|| cx.error("weights must have a static shape"))?;
    if wdims.len() < 3 {
        return Err(cx.error(format!(
            "weights of rank {} are not [M, C/group, kernel...]",
            wdims.len()
        )));
    }
    let kernel = cx
        .ints("kernel_shape")
        .unwrap_or_else(|| wdims[2..].iter().map(|&d| d as i64).collect());
    let mut attrs = window_attrs(cx, x, &kernel)?;
    attrs.set("group", AttrValue::Int(cx.int("group", 1)));
    Ok(attrs)
}

/// kernel_shape, strides, dilations and explicit pads (auto_pad resolved as ONNX defines).
fn window_attrs(cx: &mut NodeCx, x: usize, kernel: &[i64]) -> Result<Attrs, Error> {
    let r = kernel.len();
    let xtype = cx.input_type(x)?;
    let dims = xtype.shape.dims();
    if dims.len() != r + 2 {
        return Err(cx.error(format!(
            "input {} does not have {r} spatial axes",
            xtype.shape
        )));
    }
    // SAME padding depends on the input extents: they must be known (or fixed with --shape).
    let spatial = || -> Result<Vec<i64>, Error> {
        dims[2..]
            .iter()
            .map(|d| {
                d.fixed().map(|n| n as i64).ok_or_else(|| {
                    cx.error("auto_pad SAME needs known spatial extents; fix them with --shape")
                })
            })
            .collect()
    };
    let strides = cx.ints("strides").unwrap_or_else(|| vec![1; r]);
    let dilations = cx.ints("dilations").unwrap_or_else(|| vec![1; r]);
    if strides.len() != r
        || dilations.len() != r
        || strides.iter().chain(&dilations).any(|&v| v < 1)
    {
        return Err(cx.error(format!(
            "strides {strides:?} and dilations {dilations:?} must be {r} values of at least 1"
        )));
    }
    let pads = match cx.string("auto_pad", "NOTSET").as_str() {
        "NOTSET" => cx.ints("pads").unwrap_or_else(|| vec![0; 2 * r]),
        "VALID" => vec![0; 2 * r],
        mode @ ("SAME_UPPER" | "SAME_LOWER") => {
            let spatial = spatial()?;
            let mut pads = vec![0; 2 * r];
            for a in 0..r {
                let out = (spatial[a] + strides[a] - 1) / strides[a];
                let total = ((out - 1) * strides[a] + (kernel[a] - 1) * dilations[a] + 1
                    - spatial[a])
                    .max(0);
                let small = total / 2;
                let (begin, end) = if mode == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                pads[a] = begin;
                pads[a + r] = end;
            }
            pads
        }
        other => return Err(cx.error(format!("auto_pad `{other}` is not an ONNX mode"))),
    };
    if pads.len() != 2 * r || pads.iter().any(|&p| p < 0) {
        return Err(cx.error(format!(
            "pads {pads:?} must be {} non-negative values",
            2 * r
        )));
    }
    Ok(Attrs::new()
        .with("kernel_shape", ints(kernel.to_vec()))
        .with("strides", ints(strides))
        .with("dilations", ints(dilations))
        .with("pads", ints(pads)))
}
