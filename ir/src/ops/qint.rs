//! Integer ops with fixed-point requantization: QConv, QMatMul, QAdd, QAveragePool,
//! QGlobalAveragePool, QConcat, Requantize. They are what quantization lowers
//! DequantizeLinear → op → QuantizeLinear chains to, and what the JIT compiles.
//!
//! Operands are 8-bit values with per-tensor quantization parameters on their types
//! (weights may be per output channel), the result is 8-bit per tensor with its type
//! declared; QConv, QMatMul and Requantize also read and write 16-bit activations (the
//! layers a plan raises to int16, see `wide_activation`). Each op accumulates exactly in integers (a product's accumulator wraps to i32,
//! as the JIT's i32 accumulators do) and requantizes with [`crate::fixed_point`] only.

use super::broadcast::{broadcast_indices, broadcast_shapes, broadcast_static};
use super::nn::{
    conv, conv_shape, matmul, matmul_shape, pool_shape, pool_windows, ConvGeometry, Windows,
};
use super::quant::centered;
use super::shape::{concat, concat_shape};
use super::{EvalCtx, InferCtx};
use crate::fixed_point::{Requant, SumRequant};
use crate::text::type_to_string;
use crate::{DType, Dim, OpKind, QuantParams, Shape, Tensor, TensorType};

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    let x = cx.input(0)?;
    let declared = cx
        .declared
        .first()
        .ok_or_else(|| format!("{} needs its result type declared", cx.op.kind))?;
    let accumulator =
        declared.dtype == DType::I32 && matches!(cx.op.kind, OpKind::QConv | OpKind::QMatMul);
    if !accumulator {
        crate::fixed_point::result_params(declared, None)?;
    }
    let wide = matches!(
        cx.op.kind,
        OpKind::QConv | OpKind::QMatMul | OpKind::Requantize
    );
    if declared.dtype == DType::I16 && !wide {
        return Err(format!("{} has no 16-bit form", cx.op.kind));
    }
    let attrs = &cx.op.attrs;
    let shape = match cx.op.kind {
        OpKind::QConv => {
            wide_activation(x, "input")?;
            let w = cx.input(1)?;
            weights(w, 0)?;
            let shape = conv_shape(&x.shape, &w.shape, attrs)?;
            bias(cx, &shape.dims()[1])?;
            if accumulator {
                accumulator_result(cx, declared, x, w, 1)?;
            }
            shape
        }
        OpKind::QMatMul => {
            wide_activation(x, "A")?;
            let b = cx.input(1)?;
            weights(b, b.shape.rank().saturating_sub(1))?;
            if b.quant.as_ref().is_some_and(|q| q.axis.is_some()) && b.shape.rank() != 2 {
                return Err("B per column must be a matrix".to_string());
            }
            let shape = matmul_shape(&x.shape, &b.shape)?;
            bias(cx, shape.dims().last().ok_or("result has no columns")?)?;
            if accumulator {
                accumulator_result(cx, declared, x, b, shape.rank() - 1)?;
            }
            shape
        }
        OpKind::QAdd => {
            activation(x, "A")?;
            let b = cx.input(1)?;
            activation(b, "B")?;
            broadcast_static(&x.shape, &b.shape)?
        }
        OpKind::QAveragePool | OpKind::QGlobalAveragePool => {
            activation(x, "input")?;
            let rank = x.shape.rank();
            if rank < 3 {
                return Err(format!("input of rank {rank} has no spatial axes"));
            }
            match cx.op.kind {
                OpKind::QAveragePool => pool_shape(&x.shape, attrs)?,
                _ => {
                    let mut dims = x.shape.dims()[..2].to_vec();
                    dims.resize(rank, Dim::Fixed(1));
                    Shape(dims)
                }
            }
        }
        OpKind::QConcat => {
            for (i, t) in cx.inputs.iter().enumerate() {
                activation(
                    t.ok_or_else(|| format!("operand {i} is missing"))?,
                    &format!("operand {i}"),
                )?;
            }
            let shape = concat_shape(cx.inputs, attrs.int("axis")?)?;
            if x.dtype != declared.dtype {
                return Err(format!(
                    "operands are {}, the result {}",
                    x.dtype, declared.dtype
                ));
            }
            shape
        }
        OpKind::Requantize => {
            wide_activation(x, "input")?;
            x.shape.clone()
        }
        other => return Err(format!("{other} is not an integer op")),
    };
    Ok(vec![TensorType {
        shape,
        ..declared.clone()
    }])
}

/// An i32 result of QConv/QMatMul is the accumulator itself (no requantization: for a float
/// consumer such as a model output, which then loses no precision to an 8-bit step). Its
/// declared parameters must be exactly what it means: scale `s_x · s_w[c]` (f32 product)
/// along the channel `axis`, zero point 0; no fused activation.
fn accumulator_result(
    cx: &InferCtx,
    declared: &TensorType,
    x: &TensorType,
    w: &TensorType,
    axis: usize,
) -> Result<(), String> {
    if cx.op.fused_activation()?.is_some() {
        return Err("an i32 (accumulator) result cannot carry a fused activation".to_string());
    }
    let (xq, wq) = (
        x.quant.as_ref().ok_or("input is not quantized")?,
        w.quant.as_ref().ok_or("weights are not quantized")?,
    );
    let scale: Vec<f32> = wq.scale.iter().map(|s| xq.scale[0] * s).collect();
    let want = QuantParams {
        zero_point: vec![0; scale.len()],
        axis: wq.axis.map(|_| axis),
        scale,
    };
    if declared.quant.as_ref() != Some(&want) {
        return Err(format!(
            "an i32 result must be quantized as the accumulator, {want:?}"
        ));
    }
    Ok(())
}

/// An activation operand: 8-bit, quantized per tensor.
fn activation(t: &TensorType, what: &str) -> Result<(), String> {
    match &t.quant {
        Some(q) if matches!(t.dtype, DType::U8 | DType::I8) && q.axis.is_none() => Ok(()),
        _ => Err(format!(
            "{what} must be 8-bit quantized per tensor, found {}",
            type_to_string(t)
        )),
    }
}

/// An activation operand of the ops a layer raised to int16 runs (QConv, QMatMul and the
/// Requantize between its i16 values and its 8-bit neighbours): 8- or 16-bit, per tensor.
///
/// An i16 activation times an i8 weight is below 2^23 in magnitude, so an i32 accumulator
/// holds any sum of up to 2^8 of them; past that a sum may wrap. The interpreter wraps
/// exactly as the JIT's i32 registers do (so both agree bit for bit whatever the data),
/// and quantization proves from the constant weights that a layer it raises to int16
/// cannot wrap (`qlift_passes::quantize::wide`), raising it no further otherwise.
fn wide_activation(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype == DType::I16 && t.quant.as_ref().is_some_and(|q| q.axis.is_none()) {
        return Ok(());
    }
    activation(t, what).map_err(|_| {
        format!(
            "{what} must be 8- or 16-bit quantized per tensor, found {}",
            type_to_string(t)
        )
    })
}

/// A weight operand: 8-bit (or int4: W4A8, held one value per byte like i8, so every
/// integer kernel reads it unchanged), quantized per tensor or along `axis` (the output
/// channels).
fn weights(t: &TensorType, axis: usize) -> Result<(), String> {
    match &t.quant {
        Some(q)
            if matches!(t.dtype, DType::U8 | DType::I8 | DType::I4)
                && (q.axis.is_none() || q.axis == Some(axis)) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "weights must be 8-bit (or i4) quantized per tensor or per axis {axis}, found {}",
            type_to_string(t)
        )),
    }
}

/// The optional bias: i32, one per output channel, not quantized (its scale is implied).
fn bias(cx: &InferCtx, channels: &Dim) -> Result<(), String> {
    match cx.inputs.get(2).copied().flatten() {
        Some(b) if b.dtype != DType::I32 || b.quant.is_some() || b.shape.dims() != [*channels] => {
            Err(format!(
                "bias must be i32[{channels}], found {}",
                type_to_string(b)
            ))
        }
        _ => Ok(()),
    }
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let x = cx.input(0)?;
    let y = cx.output_types.first().ok_or("missing result type")?;
    let act = cx.op.fused_activation()?;
    let (values, shape) = match cx.op.kind {
        OpKind::QConv => {
            let w = cx.input(1)?;
            let geom = ConvGeometry::new(x.shape(), w.shape(), &cx.op.attrs)?;
            let wq = quant_of(cx, 1)?;
            let mut acc = conv(&centered(x, quant_of(cx, 0)?)?, &centered(w, wq)?, &geom);
            let spatial: usize = geom.window.out.iter().product();
            if let Some(b) = cx.inputs.get(2).copied().flatten() {
                super::nn::add_per_channel(&mut acc, &b.to_i64_vec()?, spatial)?;
            }
            let m = geom.out_channels;
            if y.dtype == DType::I32 {
                return accumulators(y, geom.out_shape(), acc);
            }
            let rq = Requant::for_product(quant_of(cx, 0)?, wq, m, y, act)?;
            (
                acc.iter()
                    .enumerate()
                    .map(|(i, &a)| rq.apply((i / spatial.max(1)) % m, wrap_i32(a)))
                    .collect(),
                geom.out_shape(),
            )
        }
        OpKind::QMatMul => {
            let b = cx.input(1)?;
            let bq = quant_of(cx, 1)?;
            let (shape, mut acc) = matmul(
                &centered(x, quant_of(cx, 0)?)?,
                x.shape(),
                &centered(b, bq)?,
                b.shape(),
            )?;
            let cols = shape.last().copied().unwrap_or(1).max(1);
            if let Some(bias) = cx.inputs.get(2).copied().flatten() {
                let bias = bias.to_i64_vec()?;
                acc.iter_mut()
                    .enumerate()
                    .for_each(|(i, a)| *a += bias[i % cols]);
            }
            if y.dtype == DType::I32 {
                return accumulators(y, shape, acc);
            }
            let rq = Requant::for_product(quant_of(cx, 0)?, bq, cols, y, act)?;
            (
                acc.iter()
                    .enumerate()
                    .map(|(i, &a)| rq.apply(i % cols, wrap_i32(a)))
                    .collect(),
                shape,
            )
        }
        OpKind::QAdd => {
            let b = cx.input(1)?;
            let (aq, bq) = (quant_of(cx, 0)?.channel(0), quant_of(cx, 1)?.channel(0));
            let sy = result_scale(y)?;
            let rq = SumRequant::new(&[aq.0 as f64 / sy, bq.0 as f64 / sy], y, act)?;
            let shape = broadcast_shapes(x.shape(), b.shape())?;
            let (av, bv) = (x.to_i64_vec()?, b.to_i64_vec()?);
            let (ai, bi) = (
                broadcast_indices(x.shape(), &shape),
                broadcast_indices(b.shape(), &shape),
            );
            let values = ai
                .iter()
                .zip(&bi)
                .map(|(&i, &j)| rq.apply(&[av[i] - aq.1 as i64, bv[j] - bq.1 as i64]))
                .collect();
            (values, shape)
        }
        OpKind::QAveragePool | OpKind::QGlobalAveragePool => {
            let (sx, zx) = quant_of(cx, 0)?.channel(0);
            let v: Vec<f64> = x
                .to_i64_vec()?
                .iter()
                .map(|&q| (q - zx as i64) as f64)
                .collect();
            let windows = match cx.op.kind {
                OpKind::QAveragePool => pool_windows(&v, x.shape(), &cx.op.attrs, false)?,
                _ => global_windows(&v, x.shape()),
            };
            let sy = result_scale(y)?;
            // One multiplier per distinct window size (padding can shrink a window).
            let mut by_count: Vec<Option<Requant>> = Vec::new();
            let mut values = Vec::with_capacity(windows.1.len());
            for &(sum, count) in &windows.1 {
                let count = count.max(1);
                if by_count.len() <= count {
                    by_count.resize(count + 1, None);
                }
                if by_count[count].is_none() {
                    by_count[count] =
                        Some(Requant::for_ratio(sx as f64 / (sy * count as f64), y, act)?);
                }
                values.push(
                    by_count[count]
                        .as_ref()
                        .map_or(0, |rq| rq.apply(0, sum as i64)),
                );
            }
            (values, windows.0)
        }
        OpKind::QConcat => {
            let sy = result_scale(y)?;
            let mut parts = Vec::with_capacity(cx.inputs.len());
            for i in 0..cx.inputs.len() {
                parts.push(rescale(cx.input(i)?, quant_of(cx, i)?, sy, y, act)?);
            }
            let axis = super::shape::axis_in(cx.op.attrs.int("axis")?, x.shape().len())?;
            let joined = concat(&parts.iter().collect::<Vec<_>>(), axis)?;
            return Ok(vec![joined]);
        }
        OpKind::Requantize => {
            return Ok(vec![rescale(
                x,
                quant_of(cx, 0)?,
                result_scale(y)?,
                y,
                act,
            )?])
        }
        other => return Err(format!("{other} is not an integer op")),
    };
    Ok(vec![Tensor::from_i64_values(y.dtype, shape, values)?])
}

/// The accumulators as the i32 result (wrapping, as the JIT's registers do).
fn accumulators(y: &TensorType, shape: Vec<usize>, acc: Vec<i64>) -> Result<Vec<Tensor>, String> {
    Ok(vec![Tensor::from_i64_values(
        y.dtype,
        shape,
        acc.into_iter().map(wrap_i32).collect(),
    )?])
}

/// `x` re-expressed in the result's parameters: `clamp(zy + M·(x − zx))` with `M = s_x / s_y`.
fn rescale(
    x: &Tensor,
    q: &QuantParams,
    sy: f64,
    y: &TensorType,
    act: Option<(f32, f32)>,
) -> Result<Tensor, String> {
    let (sx, zx) = q.channel(0);
    let rq = Requant::for_ratio(sx as f64 / sy, y, act)?;
    let values = x
        .to_i64_vec()?
        .iter()
        .map(|&v| rq.apply(0, v - zx as i64))
        .collect();
    Tensor::from_i64_values(y.dtype, x.shape().to_vec(), values)
}

/// Global pooling windows: every plane of `[N, C, spatial...]` is one window.
fn global_windows(v: &[f64], shape: &[usize]) -> Windows {
    let inner: usize = shape[2..].iter().product();
    let windows = v
        .chunks(inner.max(1))
        .map(|s| (s.iter().sum(), inner))
        .collect();
    let mut out = shape[..2].to_vec();
    out.resize(shape.len(), 1);
    (out, windows)
}

fn result_scale(y: &TensorType) -> Result<f64, String> {
    Ok(crate::fixed_point::result_params(y, None)?.0 as f64)
}

/// The accumulator as the JIT's i32 register holds it.
fn wrap_i32(a: i64) -> i64 {
    a as i32 as i64
}

fn quant_of<'a>(cx: &EvalCtx<'a>, i: usize) -> Result<&'a QuantParams, String> {
    cx.input_type(i)?
        .quant
        .as_ref()
        .ok_or_else(|| format!("operand {i} has no quantization parameters"))
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::run_op;
    use crate::{
        AttrValue, Attrs, DType, OpKind, QuantParams, Shape, Tensor, TensorData, TensorType,
    };

    fn u8s(shape: &[usize], v: Vec<u8>) -> Tensor {
        Tensor::new(DType::U8, shape.to_vec(), TensorData::U8(v)).unwrap()
    }

    fn qtype(shape: &[usize], scale: f32, zp: i32) -> TensorType {
        TensorType::quantized(
            DType::U8,
            Shape::fixed(shape),
            QuantParams::per_tensor(scale, zp),
        )
    }

    #[test]
    fn qconv_requantizes_per_channel_and_applies_relu() {
        let attrs = Attrs::new()
            .with("kernel_shape", AttrValue::Ints(vec![1, 3]))
            .with("strides", AttrValue::Ints(vec![1, 1]))
            .with("pads", AttrValue::Ints(vec![0, 1, 0, 1]))
            .with("dilations", AttrValue::Ints(vec![1, 1]))
            .with("group", AttrValue::Int(1))
            .with("act_min", AttrValue::Float(0.0))
            .with("act_max", AttrValue::Float(f32::INFINITY));
        let x = u8s(&[1, 1, 1, 2], vec![12, 14]);
        let w = Tensor::new(
            DType::I8,
            vec![2, 1, 1, 3],
            TensorData::I8(vec![1, 1, 1, 2, 0, -2]),
        )
        .unwrap();
        let b = Tensor::new(DType::I32, vec![2], TensorData::I32(vec![1, 0])).unwrap();
        let wq = QuantParams::per_axis(0, vec![1.0, 0.25], vec![0, 0]);
        let y = run_op(
            OpKind::QConv,
            attrs,
            vec![
                (x, Some(QuantParams::per_tensor(0.5, 10))),
                (w, Some(wq)),
                (b, None),
            ],
            Some(qtype(&[1, 2, 1, 2], 0.5, 100)),
        )
        .unwrap();
        // centered x = [2, 4]; channel 0: acc 7 · 1 → 107; channel 1: [-8, 4] · 0.25 = [-2, 1]
        // → [98, 101], then Relu clamps at the zero point 100.
        assert_eq!(y.to_i64_vec().unwrap(), vec![107, 107, 100, 101]);
    }

    #[test]
    fn qadd_rounds_the_sum_once() {
        let a = u8s(&[3], vec![1, 2, 3]);
        let b = u8s(&[1], vec![1]);
        // a·0.5 + b·0.5 with both zero points 0, result scale 1: [1, 1.5, 2] → ties up.
        let y = run_op(
            OpKind::QAdd,
            Attrs::new(),
            vec![
                (a, Some(QuantParams::per_tensor(0.5, 0))),
                (b, Some(QuantParams::per_tensor(0.5, 0))),
            ],
            Some(qtype(&[3], 1.0, 0)),
        )
        .unwrap();
        assert_eq!(y.to_i64_vec().unwrap(), vec![1, 2, 2]);
    }

    #[test]
    fn qaverage_pool_divides_by_the_window_size() {
        let attrs = Attrs::new()
            .with("kernel_shape", AttrValue::Ints(vec![2]))
            .with("strides", AttrValue::Ints(vec![2]))
            .with("pads", AttrValue::Ints(vec![0, 1]))
            .with("dilations", AttrValue::Ints(vec![1]))
            .with("ceil_mode", AttrValue::Int(0))
            .with("count_include_pad", AttrValue::Int(0));
        let x = u8s(&[1, 1, 3], vec![10, 13, 20]);
        let y = run_op(
            OpKind::QAveragePool,
            attrs,
            vec![(x, Some(QuantParams::per_tensor(1.0, 10)))],
            Some(qtype(&[1, 1, 2], 1.0, 10)),
        )
        .unwrap();
        // centered [0, 3, 10]: windows [0, 3] / 2 = 1.5 → 2, [10] / 1 = 10.
        assert_eq!(y.to_i64_vec().unwrap(), vec![12, 20]);
    }

    #[test]
    fn requantize_and_concat_rescale_to_the_result() {
        let x = u8s(&[2], vec![0, 255]);
        let y = run_op(
            OpKind::Requantize,
            Attrs::new(),
            vec![(x.clone(), Some(QuantParams::per_tensor(0.02, 128)))],
            Some(qtype(&[2], 0.04, 128)),
        )
        .unwrap();
        assert_eq!(y.to_i64_vec().unwrap(), vec![64, 192]);
        let c = run_op(
            OpKind::QConcat,
            Attrs::new().with("axis", AttrValue::Int(0)),
            vec![
                (x.clone(), Some(QuantParams::per_tensor(0.02, 128))),
                (x, Some(QuantParams::per_tensor(0.04, 128))),
            ],
            Some(qtype(&[4], 0.04, 128)),
        )
        .unwrap();
        assert_eq!(c.to_i64_vec().unwrap(), vec![64, 192, 0, 255]);
    }

    #[test]
    fn undeclared_or_per_axis_results_are_refused() {
        let x = u8s(&[2], vec![0, 1]);
        let err = run_op(
            OpKind::Requantize,
            Attrs::new(),
            vec![(x.clone(), Some(QuantParams::per_tensor(1.0, 0)))],
            None,
        )
        .unwrap_err();
        assert!(err.contains("declared"), "{err}");
        let per_axis = TensorType::quantized(
            DType::U8,
            Shape::fixed(&[2]),
            QuantParams::per_axis(0, vec![1.0, 1.0], vec![0, 0]),
        );
        let err = run_op(
            OpKind::Requantize,
            Attrs::new(),
            vec![(x, Some(QuantParams::per_tensor(1.0, 0)))],
            Some(per_axis),
        )
        .unwrap_err();
        assert!(err.contains("per tensor"), "{err}");
    }
}
