//! Quantization ops. Scales and zero points must be constants; they move onto the types
//! of the values they describe (see `NodeCx::input_quantized`).

use super::nn::conv_attrs;
use super::{normalize_axis, Registry};
use crate::onnx::import::NodeCx;
use crate::Error;
use qlift_ir::{AttrValue, Attrs, DType, OpKind, QuantParams, Tensor};

pub(crate) fn register(reg: &mut Registry) {
    reg.insert("QuantizeLinear", quantize_linear);
    reg.insert("DequantizeLinear", |cx| {
        refuse_float_type(cx, "output_dtype")?;
        if cx.int("block_size", 0) != 0 {
            return dequantize_blocks(cx);
        }
        let rank = cx.input_type(0)?.shape.rank();
        let (_, q) = params(cx, 1, 2, Some(cx.int("axis", 1)), rank)?;
        let x = cx.input_quantized(0, Some(q))?;
        cx.emit(OpKind::DequantizeLinear, Attrs::new(), &[x])
    });
    reg.insert("QLinearConv", |cx| {
        let (xrank, wrank) = (
            cx.input_type(0)?.shape.rank(),
            cx.input_type(3)?.shape.rank(),
        );
        let (_, xq) = params(cx, 1, 2, None, xrank)?;
        let (_, wq) = params(cx, 4, 5, Some(0), wrank)?;
        let (dtype, yq) = params(cx, 6, 7, None, xrank)?;
        let attrs = conv_attrs(cx, 0, 3)?;
        let (x, w, b) = (
            cx.input_quantized(0, Some(xq))?,
            cx.input_quantized(3, Some(wq))?,
            cx.input(8)?,
        );
        cx.emit_quantized(OpKind::QLinearConv, attrs, &[x, w, b], dtype, yq)
    });
    reg.insert("QLinearMatMul", |cx| {
        let (arank, brank) = (
            cx.input_type(0)?.shape.rank(),
            cx.input_type(3)?.shape.rank(),
        );
        let (_, aq) = params(cx, 1, 2, Some(arank as i64 - 2), arank)?;
        let (_, bq) = params(cx, 4, 5, Some(brank as i64 - 1), brank)?;
        let (dtype, yq) = params(cx, 6, 7, None, arank.max(brank))?;
        let (a, b) = (
            cx.input_quantized(0, Some(aq))?,
            cx.input_quantized(3, Some(bq))?,
        );
        cx.emit_quantized(OpKind::QLinearMatMul, Attrs::new(), &[a, b], dtype, yq)
    });
    reg.insert("ConvInteger", |cx| {
        let attrs = conv_attrs(cx, 0, 1)?;
        let operands = (0..4).map(|i| cx.input(i)).collect::<Result<Vec<_>, _>>()?;
        cx.emit(OpKind::ConvInteger, attrs, &operands)
    });
    reg.insert_since("DynamicQuantizeLinear", 11, |cx| {
        let x = cx.input(0)?;
        cx.emit_all(OpKind::DynamicQuantizeLinear, Attrs::new(), &[x], 3)?;
        Ok(())
    });
    reg.insert("MatMulInteger", |cx| {
        let operands = (0..4).map(|i| cx.input(i)).collect::<Result<Vec<_>, _>>()?;
        cx.emit(OpKind::MatMulInteger, Attrs::new(), &operands)
    });
}

/// Opset 21's blocked DequantizeLinear. Symmetric i8/i4 values (no zero point, or zeros)
/// with f32 scales, as weight-only quantization writes them, become BlockDequantizeLinear,
/// the form weight-only products read; any other (unsigned values, zero points) is written
/// out as ONNX defines it (see [`expand_blocks`]).
fn dequantize_blocks(cx: &mut NodeCx) -> Result<(), Error> {
    let x = cx.input_type(0)?;
    let axis = normalize_axis(cx, cx.int("axis", 1), x.shape.rank())?;
    let block = cx.int("block_size", 0);
    let symmetric = matches!(x.dtype, DType::I8 | DType::I4)
        && (!cx.has_input(2)
            || cx
                .constant(2)?
                .and_then(|t| t.to_i64_vec().ok())
                .is_some_and(|z| z.iter().all(|&v| v == 0)));
    if !symmetric {
        return expand_blocks(cx, axis, block);
    }
    let attrs = Attrs::new()
        .with("axis", AttrValue::Int(axis))
        .with("block_size", AttrValue::Int(block));
    let (q, scale) = (cx.input(0)?, cx.input(1)?);
    cx.emit(OpKind::BlockDequantizeLinear, attrs, &[q, scale])
}

/// A blocked DequantizeLinear as its definition: `(f32(x) − f32(zero_point[b])) · scale[b]`
/// with `b = i / block_size` along `axis`, each block's parameter gathered out to every
/// element it covers. Exact as ONNX Runtime computes it: the difference of two 8- or 4-bit
/// integers is exact in f32, and the one rounding is the product's.
fn expand_blocks(cx: &mut NodeCx, axis: i64, block: i64) -> Result<(), Error> {
    let extent = cx.input_type(0)?.shape.dims()[axis as usize]
        .fixed()
        .ok_or_else(|| cx.error("blocked DequantizeLinear along an axis of unknown extent"))?;
    if block <= 0 {
        return Err(cx.error(format!("block_size must be positive, found {block}")));
    }
    let blocks: Vec<i64> = (0..extent as i64).map(|i| i / block).collect();
    let index = cx.new_constant("block_of", Tensor::from_i64(&[extent], blocks))?;
    let along = || Attrs::new().with("axis", AttrValue::Int(axis));
    let to_f32 = || Attrs::new().with("to", AttrValue::Str(DType::F32.name().to_string()));
    let x = cx.required(0)?;
    let mut value = cx.emit_value(
        &cx.fresh_name("f32"),
        OpKind::Cast,
        to_f32(),
        &[Some(x)],
        None,
    )?;
    if cx.has_input(2) {
        let zero = cx.required(2)?;
        let zero = cx.emit_value(
            &cx.fresh_name("zero_f32"),
            OpKind::Cast,
            to_f32(),
            &[Some(zero)],
            None,
        )?;
        let zero = cx.emit_value(
            &cx.fresh_name("zero_point"),
            OpKind::Gather,
            along(),
            &[Some(zero), Some(index)],
            None,
        )?;
        value = cx.emit_value(
            &cx.fresh_name("centered"),
            OpKind::Sub,
            Attrs::new(),
            &[Some(value), Some(zero)],
            None,
        )?;
    }
    let scale = cx.required(1)?;
    let scale = cx.emit_value(
        &cx.fresh_name("scale"),
        OpKind::Gather,
        along(),
        &[Some(scale), Some(index)],
        None,
    )?;
    cx.emit(OpKind::Mul, Attrs::new(), &[Some(value), Some(scale)])
}

fn quantize_linear(cx: &mut NodeCx) -> Result<(), Error> {
    cx.refuse_int("block_size", 0, "blocked quantization")?;
    refuse_float_type(cx, "precision")?;
    let rank = cx.input_type(0)?.shape.rank();
    let (zp_dtype, q) = params(cx, 1, 2, Some(cx.int("axis", 1)), rank)?;
    // Without a zero point the result type comes from output_dtype (opset 21), else uint8.
    let dtype = if cx.has_input(2) {
        zp_dtype
    } else {
        match cx.int("output_dtype", 0) {
            0 | 2 => DType::U8,
            code => crate::onnx::tensor::dtype_of(code as i32)
                .filter(|d| d.is_quantized())
                .ok_or_else(|| {
                    cx.error(format!(
                        "output_dtype {code} is not a supported quantized type"
                    ))
                })?,
        }
    };
    let x = cx.required(0)?;
    cx.emit_quantized(OpKind::QuantizeLinear, Attrs::new(), &[Some(x)], dtype, q)
}

/// Opset 23 attributes that select a float type other than f32 are refused (0 = default).
fn refuse_float_type(cx: &NodeCx, attr: &str) -> Result<(), Error> {
    match cx.int(attr, 0) {
        0 | 1 => Ok(()),
        code => Err(cx.error(format!(
            "{attr}={} is not supported (f32 only)",
            crate::onnx::tensor::dtype_name(code as i32)
        ))),
    }
}

/// Quantization parameters from constant scale (operand `s`) and optional zero point
/// (operand `z`): a scalar or 1-element scale is per tensor, a 1-D one is per channel along
/// `axis` (normalized against `rank`). Returns the zero point's dtype (u8 when absent).
fn params(
    cx: &NodeCx,
    s: usize,
    z: usize,
    axis: Option<i64>,
    rank: usize,
) -> Result<(DType, QuantParams), Error> {
    let scale = cx
        .constant(s)?
        .ok_or_else(|| cx.error(format!("operand {s} (the scale) is required")))?;
    let scale = scale
        .as_f32()
        .map_err(|e| cx.error(format!("scale: {e}")))?
        .to_vec();
    let (dtype, zero_point) = match cx.constant(z)? {
        Some(t) => (
            t.dtype(),
            t.to_i64_vec()
                .map_err(|e| cx.error(format!("zero point: {e}")))?,
        ),
        None => (DType::U8, vec![0; scale.len()]),
    };
    if zero_point.len() != scale.len() {
        return Err(cx.error(format!(
            "{} scales but {} zero points",
            scale.len(),
            zero_point.len()
        )));
    }
    let zero_point = zero_point.into_iter().map(|z| z as i32).collect();
    let q = if scale.len() == 1 {
        QuantParams {
            scale,
            zero_point,
            axis: None,
        }
    } else {
        let axis = axis
            .ok_or_else(|| cx.error("per-channel parameters are not supported for this operand"))?;
        QuantParams::per_axis(normalize_axis(cx, axis, rank)? as usize, scale, zero_point)
    };
    let range = dtype
        .int_range()
        .filter(|_| dtype != DType::I64)
        .ok_or_else(|| cx.error(format!("zero point type {dtype} is not supported")))?;
    q.check(range).map_err(|e| cx.error(e))?;
    Ok((dtype, q))
}
