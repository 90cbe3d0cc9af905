//! Quantization ops: QuantizeLinear, DequantizeLinear, QLinearConv, QLinearMatMul,
//! ConvInteger, MatMulInteger.
//!
//! Quantization parameters are read from value types. The arithmetic mirrors the ONNX
//! reference implementation (`onnx/reference/ops`) so that the official node tests pass
//! bit-exactly: quantization divides in f32 and rounds half to even; the QLinear ops
//! accumulate exactly in integers and requantize with the f32 multiplier
//! `s_in * s_w / s_out` applied in f64 (numpy's int32 × float32 promotion).

use super::nn::{conv, conv_shape, matmul, matmul_shape, ConvGeometry};
use super::{EvalCtx, InferCtx};
use crate::{DType, OpKind, QuantParams, Shape, Tensor, TensorData, TensorType};

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    let x = cx.input(0)?;
    let declared = || -> Result<&TensorType, String> {
        let ty = cx
            .declared
            .first()
            .ok_or_else(|| format!("{} needs its result type declared", cx.op.kind))?;
        if !ty.dtype.is_quantized() || ty.quant.is_none() {
            return Err(format!(
                "result type {} is not a quantized 16-, 8- or 4-bit type",
                crate::text::type_to_string(ty)
            ));
        }
        Ok(ty)
    };
    let with_shape = |ty: &TensorType, shape: Shape| TensorType {
        shape,
        ..ty.clone()
    };
    let out = match cx.op.kind {
        OpKind::QuantizeLinear => {
            if !matches!(x.dtype, DType::F32 | DType::I32) || x.quant.is_some() {
                return Err(format!(
                    "input must be f32 or i32, found {}",
                    crate::text::type_to_string(x)
                ));
            }
            with_shape(declared()?, x.shape.clone())
        }
        OpKind::DequantizeLinear => {
            if x.quant.is_none() || !(x.dtype.is_quantized() || x.dtype == DType::I32) {
                return Err(format!(
                    "input {} carries no quantization parameters",
                    crate::text::type_to_string(x)
                ));
            }
            TensorType::new(DType::F32, x.shape.clone())
        }
        OpKind::QLinearConv => {
            let w = cx.input(1)?;
            quantized_operand(x, "input", &[None])?;
            quantized_operand(w, "weights", &[None, Some(0)])?;
            let shape = conv_shape(&x.shape, &w.shape, &cx.op.attrs)?;
            if let Some(b) = cx.inputs.get(2).copied().flatten() {
                if b.dtype != DType::I32 || b.quant.is_some() || b.shape.dims() != [shape.dims()[1]]
                {
                    return Err(format!(
                        "bias must be i32[{}], found {}",
                        shape.dims()[1],
                        crate::text::type_to_string(b)
                    ));
                }
            }
            with_shape(declared()?, shape)
        }
        OpKind::QLinearMatMul => {
            let b = cx.input(1)?;
            let rank = |t: &TensorType| t.shape.rank();
            quantized_operand(x, "A", &[None, rank(x).checked_sub(2)])?;
            quantized_operand(b, "B", &[None, rank(b).checked_sub(1)])?;
            with_shape(declared()?, matmul_shape(&x.shape, &b.shape)?)
        }
        OpKind::ConvInteger | OpKind::MatMulInteger => {
            let w = cx.input(1)?;
            for (i, t) in [x, w].into_iter().enumerate() {
                if !matches!(t.dtype, DType::U8 | DType::I8) {
                    return Err(format!("operand {i} must be u8 or i8, found {}", t.dtype));
                }
                if let Some(zp) = cx.inputs.get(i + 2).copied().flatten() {
                    if zp.dtype != t.dtype || zp.shape.rank() > 1 {
                        return Err(format!(
                            "zero point {} does not match operand {i}",
                            crate::text::type_to_string(zp)
                        ));
                    }
                }
            }
            let shape = match cx.op.kind {
                OpKind::ConvInteger => conv_shape(&x.shape, &w.shape, &cx.op.attrs)?,
                _ => matmul_shape(&x.shape, &w.shape)?,
            };
            TensorType::new(DType::I32, shape)
        }
        other => return Err(format!("{other} is not a quantization op")),
    };
    Ok(vec![out])
}

/// Checks that an operand is 8-bit quantized with a per-tensor or an allowed per-axis layout.
fn quantized_operand(t: &TensorType, what: &str, axes: &[Option<usize>]) -> Result<(), String> {
    match &t.quant {
        Some(q) if matches!(t.dtype, DType::U8 | DType::I8) && axes.contains(&q.axis) => Ok(()),
        _ => Err(format!(
            "{what} must be 8-bit quantized ({}), found {}",
            layouts(axes),
            crate::text::type_to_string(t)
        )),
    }
}

fn layouts(axes: &[Option<usize>]) -> String {
    axes.iter()
        .map(|a| a.map_or("per tensor".to_string(), |a| format!("per axis {a}")))
        .collect::<Vec<_>>()
        .join(" or ")
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let x = cx.input(0)?;
    let out = match cx.op.kind {
        OpKind::QuantizeLinear => {
            let ty = cx.output_types.first().ok_or("missing result type")?;
            let q = ty
                .quant
                .as_ref()
                .ok_or("result has no quantization parameters")?;
            let range = ty
                .dtype
                .int_range()
                .ok_or("result is not an integer type")?;
            let channel = channel_of(x.shape(), q.axis);
            // f32 inputs divide in f32; i32 inputs in f64 (numpy's int32 / float32 promotion).
            let values = match x.data() {
                TensorData::I32(v) => v
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| quantize_f64(v as f64, q.channel(channel(i)), range))
                    .collect(),
                _ => x
                    .as_f32()?
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| quantize(v, q.channel(channel(i)), range))
                    .collect(),
            };
            Tensor::from_i64_values(ty.dtype, x.shape().to_vec(), values)?
        }
        OpKind::DequantizeLinear => {
            let q = quant_of(cx, 0)?;
            let channel = channel_of(x.shape(), q.axis);
            let values = x
                .to_i64_vec()?
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let (scale, zp) = q.channel(channel(i));
                    (v as f32 - zp as f32) * scale
                })
                .collect();
            Tensor::from_f32(x.shape(), values)
        }
        OpKind::QLinearConv => {
            let w = cx.input(1)?;
            let geom = ConvGeometry::new(x.shape(), w.shape(), &cx.op.attrs)?;
            let (xq, wq) = (quant_of(cx, 0)?, quant_of(cx, 1)?);
            let mut acc = conv(&centered(x, xq)?, &centered(w, wq)?, &geom);
            let spatial: usize = geom.window.out.iter().product();
            if let Some(b) = cx.inputs.get(2).copied().flatten() {
                super::nn::add_per_channel(&mut acc, &b.to_i64_vec()?, spatial)?;
            }
            // Channel of each result element: axis 1 of [N, M, spatial...].
            let m = geom.out_channels;
            requantize(cx, geom.out_shape(), acc, |i| (0, (i / spatial) % m))?
        }
        OpKind::QLinearMatMul => {
            let b = cx.input(1)?;
            let (aq, bq) = (quant_of(cx, 0)?, quant_of(cx, 1)?);
            let a_rows = aq.axis.map(|_| x.shape()[x.shape().len() - 2]);
            let (shape, acc) = matmul(&centered(x, aq)?, x.shape(), &centered(b, bq)?, b.shape())?;
            let cols = b.shape().last().copied().unwrap_or(1);
            let rows = a_rows.unwrap_or(1);
            requantize(cx, shape, acc, |i| ((i / cols) % rows, i % cols))?
        }
        OpKind::ConvInteger => {
            let w = cx.input(1)?;
            let geom = ConvGeometry::new(x.shape(), w.shape(), &cx.op.attrs)?;
            let xs = minus_zero_point(x, cx.inputs.get(2).copied().flatten(), |_| 0)?;
            let m = geom.out_channels;
            let per_m = w.len() / m.max(1);
            let ws =
                minus_zero_point(w, cx.inputs.get(3).copied().flatten(), |i| i / per_m.max(1))?;
            wrap_i32(geom.out_shape(), conv(&xs, &ws, &geom))?
        }
        OpKind::MatMulInteger => {
            let b = cx.input(1)?;
            let k = x.shape().last().copied().unwrap_or(1).max(1);
            let rows = if x.shape().len() >= 2 {
                x.shape()[x.shape().len() - 2]
            } else {
                1
            };
            let cols = b.shape().last().copied().unwrap_or(1).max(1);
            let xs = minus_zero_point(x, cx.inputs.get(2).copied().flatten(), |i| (i / k) % rows)?;
            let bs = minus_zero_point(b, cx.inputs.get(3).copied().flatten(), |i| i % cols)?;
            let (shape, acc) = matmul(&xs, x.shape(), &bs, b.shape())?;
            wrap_i32(shape, acc)?
        }
        other => return Err(format!("{other} is not a quantization op")),
    };
    Ok(vec![out])
}

/// ONNX QuantizeLinear of one f32 value: `saturate(round_half_even(x / scale) + zero_point)`,
/// the division in f32 as ONNX defines it. ±inf saturate; NaN gives the dtype's minimum, as
/// the ONNX reference and ONNX Runtime do.
pub(crate) fn quantize(x: f32, (scale, zero_point): (f32, i32), range: (i64, i64)) -> i64 {
    saturate((x / scale).round_ties_even() as f64, zero_point, range)
}

/// QuantizeLinear of an i32 value, dividing in f64.
fn quantize_f64(x: f64, (scale, zero_point): (f32, i32), range: (i64, i64)) -> i64 {
    saturate((x / scale as f64).round_ties_even(), zero_point, range)
}

fn saturate(rounded: f64, zero_point: i32, (lo, hi): (i64, i64)) -> i64 {
    if rounded.is_nan() {
        return lo;
    }
    (rounded + zero_point as f64).clamp(lo as f64, hi as f64) as i64
}

/// Maps a flat element index to its channel along `axis` (always 0 when per-tensor).
fn channel_of(shape: &[usize], axis: Option<usize>) -> impl Fn(usize) -> usize {
    let (inner, extent) = match axis {
        Some(a) if a < shape.len() => (
            shape[a + 1..].iter().product::<usize>().max(1),
            shape[a].max(1),
        ),
        _ => (1, 1),
    };
    move |i| (i / inner) % extent
}

fn quant_of<'a>(cx: &EvalCtx<'a>, i: usize) -> Result<&'a QuantParams, String> {
    cx.input_type(i)?
        .quant
        .as_ref()
        .ok_or_else(|| format!("operand {i} has no quantization parameters"))
}

/// Integer values minus their zero points; per-axis parameters along `q.axis`.
pub(crate) fn centered(t: &Tensor, q: &QuantParams) -> Result<Vec<i64>, String> {
    let channel = channel_of(t.shape(), q.axis);
    Ok(t.to_i64_vec()?
        .iter()
        .enumerate()
        .map(|(i, &v)| v - q.channel(channel(i)).1 as i64)
        .collect())
}

/// Values minus an optional zero-point operand (a scalar, or one entry per `slot(i)`).
fn minus_zero_point(
    t: &Tensor,
    zp: Option<&Tensor>,
    slot: impl Fn(usize) -> usize,
) -> Result<Vec<i64>, String> {
    let zp = match zp {
        Some(z) => z.to_i64_vec()?,
        None => vec![0],
    };
    t.to_i64_vec()?
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let z = if zp.len() == 1 {
                zp[0]
            } else {
                *zp.get(slot(i)).ok_or("zero point has too few entries")?
            };
            Ok(v - z)
        })
        .collect()
}

fn wrap_i32(shape: Vec<usize>, acc: Vec<i64>) -> Result<Tensor, String> {
    Tensor::from_i64_values(
        DType::I32,
        shape,
        acc.into_iter().map(|v| v as i32 as i64).collect(),
    )
}

/// The QLinear requantization: `acc * (s_a * s_b / s_y)` in f64 with the multiplier
/// computed in f32, plus the output zero point, rounded half to even, saturated.
/// `channels(i)` gives the (row, column) channel indices of element i into the two
/// operands' per-axis scales (ignored for per-tensor ones).
fn requantize(
    cx: &EvalCtx,
    shape: Vec<usize>,
    acc: Vec<i64>,
    channels: impl Fn(usize) -> (usize, usize),
) -> Result<Tensor, String> {
    let ty = cx.output_types.first().ok_or("missing result type")?;
    let yq = ty
        .quant
        .as_ref()
        .ok_or("result has no quantization parameters")?;
    let (aq, bq) = (quant_of(cx, 0)?, quant_of(cx, 1)?);
    let (lo, hi) = ty
        .dtype
        .int_range()
        .ok_or("result is not an integer type")?;
    let (ys, yzp) = yq.channel(0);
    let values = acc
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (row, col) = channels(i);
            let multiplier = aq.channel(row).0 * bq.channel(col).0 / ys;
            let r = (v as i32 as f64 * multiplier as f64 + yzp as f64).round_ties_even();
            r.clamp(lo as f64, hi as f64) as i64
        })
        .collect();
    Tensor::from_i64_values(ty.dtype, shape, values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::run_op;
    use crate::{AttrValue, Attrs};

    fn qtype(dtype: DType, shape: &[usize], q: QuantParams) -> TensorType {
        TensorType::quantized(dtype, Shape::fixed(shape), q)
    }

    #[test]
    fn quantize_rounds_half_to_even_and_saturates() {
        let range = DType::U8.int_range().unwrap();
        let q = |x: f32| quantize(x, (1.0, 10), range);
        assert_eq!(
            [q(0.5), q(1.5), q(2.5), q(-0.5), q(-1.5)],
            [10, 12, 12, 10, 8]
        );
        assert_eq!(
            [q(1e9), q(-1e9), q(f32::INFINITY), q(f32::NAN)],
            [255, 0, 255, 0]
        );
        assert_eq!(
            quantize(f32::NAN, (1.0, 10), DType::I8.int_range().unwrap()),
            -128
        );
        assert_eq!(quantize(-9.0, (1.0, 0), DType::I4.int_range().unwrap()), -8);
    }

    #[test]
    fn per_axis_quantize_and_dequantize() {
        let x = Tensor::from_f32(&[2, 2], vec![1.0, 2.0, 1.0, 2.0]);
        let q = QuantParams::per_axis(0, vec![1.0, 0.5], vec![0, 1]);
        let y = run_op(
            OpKind::QuantizeLinear,
            Attrs::new(),
            vec![(x, None)],
            Some(qtype(DType::I8, &[2, 2], q.clone())),
        )
        .unwrap();
        assert_eq!(y.to_i64_vec().unwrap(), vec![1, 2, 3, 5]);
        let back = run_op(
            OpKind::DequantizeLinear,
            Attrs::new(),
            vec![(y, Some(q))],
            None,
        )
        .unwrap();
        assert_eq!(back.as_f32().unwrap(), &[1.0, 2.0, 1.0, 2.0]);
    }

    #[test]
    fn quantize_needs_a_declared_type() {
        let err = run_op(
            OpKind::QuantizeLinear,
            Attrs::new(),
            vec![(Tensor::from_f32(&[1], vec![0.0]), None)],
            None,
        )
        .unwrap_err();
        assert!(err.contains("declared"), "{err}");
    }

    fn u8s(shape: &[usize], v: Vec<u8>) -> Tensor {
        Tensor::new(DType::U8, shape.to_vec(), TensorData::U8(v)).unwrap()
    }

    #[test]
    fn qlinearconv_pads_with_the_zero_point_and_requantizes_per_channel() {
        let attrs = Attrs::new()
            .with("kernel_shape", AttrValue::Ints(vec![1, 3]))
            .with("strides", AttrValue::Ints(vec![1, 1]))
            .with("pads", AttrValue::Ints(vec![0, 1, 0, 1]))
            .with("dilations", AttrValue::Ints(vec![1, 1]))
            .with("group", AttrValue::Int(1));
        let x = u8s(&[1, 1, 1, 2], vec![12, 14]);
        let xq = QuantParams::per_tensor(0.5, 10);
        let w = Tensor::new(
            DType::I8,
            vec![2, 1, 1, 3],
            TensorData::I8(vec![1, 1, 1, 2, 0, -2]),
        )
        .unwrap();
        let wq = QuantParams::per_axis(0, vec![1.0, 0.25], vec![0, 0]);
        let b = Tensor::new(DType::I32, vec![2], TensorData::I32(vec![1, 0])).unwrap();
        let out = qtype(DType::U8, &[1, 2, 1, 2], QuantParams::per_tensor(0.5, 100));
        let y = run_op(
            OpKind::QLinearConv,
            attrs,
            vec![(x, Some(xq)), (w, Some(wq)), (b, None)],
            Some(out),
        )
        .unwrap();
        // centered x = [2, 4]; channel 0 acc = [6+1, 6+1] * (0.5*1/0.5) = 7 → 107;
        // channel 1 acc = [0*2 + 2*0 + 4*-2, 2*2 + 0] = [-8, 4] * 0.25 = [-2, 1] → [98, 101].
        assert_eq!(y.to_i64_vec().unwrap(), vec![107, 107, 98, 101]);
    }

    #[test]
    fn matmulinteger_with_row_and_column_zero_points() {
        let a = u8s(&[2, 2], vec![1, 2, 3, 4]);
        let b = u8s(&[2, 2], vec![5, 6, 7, 8]);
        let y = run_op(
            OpKind::MatMulInteger,
            Attrs::new(),
            vec![
                (a, None),
                (b, None),
                (u8s(&[2], vec![1, 3]), None),
                (u8s(&[2], vec![5, 0]), None),
            ],
            None,
        )
        .unwrap();
        // a - [1;3] = [[0,1],[0,1]]; b - [5,0] = [[0,6],[2,8]]
        assert_eq!(y.to_i64_vec().unwrap(), vec![2, 8, 2, 8]);
    }

    #[test]
    fn qlinearmatmul_per_column() {
        let a = u8s(&[1, 2], vec![3, 5]);
        let b = Tensor::new(DType::I8, vec![2, 2], TensorData::I8(vec![1, 2, 3, 4])).unwrap();
        let out = qtype(DType::U8, &[1, 2], QuantParams::per_tensor(1.0, 0));
        let y = run_op(
            OpKind::QLinearMatMul,
            Attrs::new(),
            vec![
                (a, Some(QuantParams::per_tensor(1.0, 1))),
                (
                    b,
                    Some(QuantParams::per_axis(1, vec![1.0, 0.5], vec![0, 0])),
                ),
            ],
            Some(out),
        )
        .unwrap();
        // centered a = [2, 4]; acc = [2+12, 4+16] = [14, 20]; × [1, 0.5] = [14, 10]
        assert_eq!(y.to_i64_vec().unwrap(), vec![14, 10]);
    }
}
