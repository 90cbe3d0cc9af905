//! Shapes, indexing and conversions: Shape, Size, Gather, Slice, Split, Expand, Tile,
//! Range, ConstantOfShape, Cast, CastLike. Shape-like operands stay operands (constant or
//! computed); the IR's inference and the specializer make sense of computed ones.

use super::{normalize_axis, Registry};
use crate::onnx::import::NodeCx;
use crate::onnx::tensor::{dtype_name, dtype_of, tensor_from_proto};
use crate::onnx::Limits;
use crate::Error;
use qlift_ir::{AttrValue, Attrs, DType, OpKind, Tensor, TensorType};

pub(crate) fn register(reg: &mut Registry) {
    reg.insert("Shape", |cx| {
        let rank = cx.input_type(0)?.shape.rank() as i64;
        let start = cx.int("start", 0);
        let end = cx.int("end", rank);
        let x = cx.required(0)?;
        let attrs = Attrs::new()
            .with("start", AttrValue::Int(start))
            .with("end", AttrValue::Int(end));
        cx.emit(OpKind::Shape, attrs, &[Some(x)])
    });
    reg.insert("Size", |cx| {
        let x = cx.required(0)?;
        cx.emit(OpKind::Size, Attrs::new(), &[Some(x)])
    });
    reg.insert("Gather", |cx| {
        let rank = cx.input_type(0)?.shape.rank();
        let axis = normalize_axis(cx, cx.int("axis", 0), rank)?;
        let (x, i) = (cx.required(0)?, cx.required(1)?);
        cx.emit(
            OpKind::Gather,
            Attrs::new().with("axis", AttrValue::Int(axis)),
            &[Some(x), Some(i)],
        )
    });
    reg.insert("Slice", slice);
    reg.insert("Split", split);
    reg.insert_since("Expand", 8, |cx| {
        let (x, s) = (cx.required(0)?, cx.required(1)?);
        cx.emit(OpKind::Expand, Attrs::new(), &[Some(x), Some(s)])
    });
    reg.insert("Tile", |cx| {
        let (x, r) = (cx.required(0)?, cx.required(1)?);
        cx.emit(OpKind::Tile, Attrs::new(), &[Some(x), Some(r)])
    });
    reg.insert_since("Range", 11, |cx| {
        let operands = (0..3)
            .map(|i| cx.required(i).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        cx.emit(OpKind::Range, Attrs::new(), &operands)
    });
    reg.insert_since("ConstantOfShape", 9, constant_of_shape);
    reg.insert("Cast", |cx| {
        let code = cx.int("to", 0);
        let to = dtype_of(code as i32).ok_or_else(|| {
            cx.error(format!(
                "cast to {} is not supported",
                dtype_name(code as i32)
            ))
        })?;
        cast(cx, to)
    });
    reg.insert_since("CastLike", 15, |cx| {
        let to = cx.input_type(1)?.dtype;
        cast(cx, to)
    });
}

fn cast(cx: &mut NodeCx, to: DType) -> Result<(), Error> {
    let x = cx.required(0)?;
    if cx.input_type(0)?.dtype == to {
        return cx.emit(OpKind::Identity, Attrs::new(), &[Some(x)]);
    }
    cx.emit(
        OpKind::Cast,
        Attrs::new().with("to", AttrValue::Str(to.name().to_string())),
        &[Some(x)],
    )
}

/// Slice: operands since opset 10; before, `starts`/`ends`/`axes` attributes, which become
/// constant operands here.
fn slice(cx: &mut NodeCx) -> Result<(), Error> {
    let x = cx.required(0)?;
    if cx.opset < 10 {
        let starts = cx
            .ints("starts")
            .ok_or_else(|| cx.error("starts is required"))?;
        let ends = cx
            .ints("ends")
            .ok_or_else(|| cx.error("ends is required"))?;
        let n = starts.len();
        let s = cx.new_constant("starts", Tensor::from_i64(&[n], starts))?;
        let e = cx.new_constant("ends", Tensor::from_i64(&[ends.len()], ends))?;
        let a = match cx.ints("axes") {
            Some(axes) => Some(cx.new_constant("axes", Tensor::from_i64(&[axes.len()], axes))?),
            None => None,
        };
        return cx.emit(OpKind::Slice, Attrs::new(), &[Some(x), Some(s), Some(e), a]);
    }
    let operands = [
        Some(x),
        Some(cx.required(1)?),
        Some(cx.required(2)?),
        cx.input(3)?,
        cx.input(4)?,
    ];
    let last = operands.iter().rposition(Option::is_some).unwrap_or(0);
    cx.emit(OpKind::Slice, Attrs::new(), &operands[..=last.max(2)])
}

/// Split into one Slice per result: the parts' sizes from `split` (an attribute before
/// opset 13, an operand since), or equal parts (`num_outputs` since opset 18; the last
/// part may be smaller).
fn split(cx: &mut NodeCx) -> Result<(), Error> {
    let ty = cx.input_type(0)?;
    let rank = ty.shape.rank();
    let axis = normalize_axis(cx, cx.int("axis", 0), rank)? as usize;
    let parts = cx.node.output.len();
    let sizes: Option<Vec<i64>> = if cx.opset < 13 {
        cx.ints("split")
    } else {
        cx.constant_ints(1)?
    };
    let sizes = match sizes {
        Some(s) if s.len() != parts => {
            return Err(cx.error(format!("{} split sizes for {parts} results", s.len())))
        }
        Some(s) => s,
        None => {
            let extent = ty.shape.dims()[axis].fixed().ok_or_else(|| {
                cx.error("equal parts of a symbolic extent; give split sizes or --shape")
            })? as i64;
            let chunk = (extent + parts as i64 - 1) / parts as i64;
            (0..parts as i64)
                .map(|i| (extent - i * chunk).clamp(0, chunk))
                .collect()
        }
    };
    if sizes.iter().any(|&s| s < 0) {
        return Err(cx.error(format!("negative split size in {sizes:?}")));
    }
    let x = cx.required(0)?;
    let axes = cx.new_constant("axes", Tensor::from_i64(&[1], vec![axis as i64]))?;
    let mut start = 0i64;
    for (i, &size) in sizes.iter().enumerate() {
        let s = cx.new_constant("starts", Tensor::from_i64(&[1], vec![start]))?;
        let e = cx.new_constant("ends", Tensor::from_i64(&[1], vec![start + size]))?;
        start += size;
        if cx.has_output(i) {
            cx.emit_result(
                i,
                OpKind::Slice,
                Attrs::new(),
                &[Some(x), Some(s), Some(e), Some(axes)],
                None,
            )?;
        }
    }
    Ok(())
}

/// ConstantOfShape: a constant when the shape is; else the value broadcast to the shape
/// computed at run time (Expand of a scalar).
fn constant_of_shape(cx: &mut NodeCx) -> Result<(), Error> {
    let value = match cx.node.attribute.iter().find(|a| a.name == "value") {
        Some(a) => {
            let proto =
                a.t.as_ref()
                    .ok_or_else(|| cx.error("value attribute holds no tensor"))?;
            let t = tensor_from_proto(proto, None, &Limits::default())?;
            if t.len() != 1 {
                return Err(cx.error(format!("value must hold one element, it has {}", t.len())));
            }
            t.reshaped(Vec::new()).map_err(|e| cx.error(e))?
        }
        None => Tensor::from_f32(&[], vec![0.0]),
    };
    let scalar = cx.new_constant("value", value)?;
    let shape = cx.required(0)?;
    let s: TensorType = cx.input_type(0)?;
    if !s.dtype.is_integer() {
        return Err(cx.error("the shape operand must be an integer vector"));
    }
    cx.emit(OpKind::Expand, Attrs::new(), &[Some(scalar), Some(shape)])
}
