//! Dynamic and weight-only quantization: DynamicQuantizeLinear and BlockDequantizeLinear.
//!
//! Their quantization parameters are not on types: DynamicQuantizeLinear computes them from
//! each call's range, BlockDequantizeLinear takes one scale per block as an operand. Both are
//! written as ONNX defines them, in f32 operations the JIT repeats one for one, so that the
//! two executors agree bit for bit (see [`dynamic_params`]).

use super::{EvalCtx, InferCtx};
use crate::{DType, OpKind, Shape, Tensor, TensorData, TensorType};

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    let x = cx.input(0)?;
    match cx.op.kind {
        OpKind::DynamicQuantizeLinear => {
            if x.dtype != DType::F32 || x.quant.is_some() {
                return Err(format!(
                    "input must be f32, found {}",
                    crate::text::type_to_string(x)
                ));
            }
            Ok(vec![
                TensorType::new(DType::U8, x.shape.clone()),
                TensorType::new(DType::F32, Shape::fixed(&[])),
                TensorType::new(DType::U8, Shape::fixed(&[])),
            ])
        }
        OpKind::BlockDequantizeLinear => {
            let s = cx.input(1)?;
            if !matches!(x.dtype, DType::I8 | DType::I4) || x.quant.is_some() {
                return Err(format!(
                    "input must be i8 or i4 without quantization parameters, found {}",
                    crate::text::type_to_string(x)
                ));
            }
            if s.dtype != DType::F32 {
                return Err(format!("scales must be f32, found {}", s.dtype));
            }
            let (axis, block) = block_attrs(cx.op)?;
            let (xd, sd) = (x.shape.dims(), s.shape.dims());
            if axis >= xd.len() || sd.len() != xd.len() {
                return Err(format!(
                    "axis {axis} and scales of rank {} do not fit an input of rank {}",
                    sd.len(),
                    xd.len()
                ));
            }
            // Extents are checked where they are known (weights are constants).
            if let (Some(xe), Some(se)) = (x.shape.as_fixed(), s.shape.as_fixed()) {
                let expected = scale_shape(&xe, axis, block);
                if se != expected {
                    return Err(format!(
                        "scales are {se:?}, blocks of {block} along axis {axis} of {xe:?} need {expected:?}"
                    ));
                }
            }
            Ok(vec![TensorType::new(DType::F32, x.shape.clone())])
        }
        other => Err(format!("{other} is not a dynamic quantization op")),
    }
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let x = cx.input(0)?;
    match cx.op.kind {
        OpKind::DynamicQuantizeLinear => {
            let v = x.as_f32()?;
            let (scale, zero_point) = dynamic_params(v);
            let q = v
                .iter()
                .map(|&e| dynamic_quantize(e, scale, zero_point))
                .collect();
            Ok(vec![
                Tensor::new(DType::U8, x.shape().to_vec(), TensorData::U8(q))?,
                Tensor::from_f32(&[], vec![scale]),
                Tensor::new(DType::U8, vec![], TensorData::U8(vec![zero_point]))?,
            ])
        }
        OpKind::BlockDequantizeLinear => {
            let (axis, block) = block_attrs(cx.op)?;
            Ok(vec![dequantize_blocks(x, cx.input(1)?, axis, block)?])
        }
        other => Err(format!("{other} is not a dynamic quantization op")),
    }
}

/// The `axis` and `block_size` attributes, checked.
fn block_attrs(op: &crate::Op) -> Result<(usize, usize), String> {
    let axis = usize::try_from(op.attrs.int("axis")?).map_err(|_| "axis must be >= 0")?;
    let block = usize::try_from(op.attrs.int("block_size")?)
        .ok()
        .filter(|&b| b > 0)
        .ok_or("block_size must be positive")?;
    Ok((axis, block))
}

/// The scales' shape for blocks of `block` along `axis` of `shape`.
pub fn scale_shape(shape: &[usize], axis: usize, block: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    s[axis] = shape[axis].div_ceil(block);
    s
}

/// DynamicQuantizeLinear's scale and zero point for elements `v`, as the ONNX function
/// body computes them in f32: the range `[min(0, min v), max(0, max v)]`, `scale = range /
/// 255`, `zero_point = round_half_even(clamp(0 − min / scale, 0, 255))`. An all-zero input
/// (range 0, where ONNX would divide by 0) gives scale 0, and an infinite element an infinite
/// scale: both have zero point 0 and quantize every element to 0. NaN elements are skipped by
/// the range.
pub fn dynamic_params(v: &[f32]) -> (f32, u8) {
    // Ordered comparisons, as the JIT keeps the bounds: NaN compares false and is skipped.
    let (lo, hi) = v.iter().fold((0f32, 0f32), |(lo, hi), &e| {
        (if e < lo { e } else { lo }, if e > hi { e } else { hi })
    });
    let scale = (hi - lo) / 255.0;
    if !usable(scale) {
        return (scale, 0);
    }
    let zp = (0.0 - lo / scale).clamp(0.0, 255.0).round_ties_even();
    (scale, zp as u8)
}

/// One element of DynamicQuantizeLinear: `saturate(round_half_even(x / scale) + zero_point)`
/// in `[0, 255]`, the sum in f32 (exact: both are integers below 2^24 in magnitude or
/// saturate anyway); NaN, and a scale [`dynamic_params`] calls unusable, give 0.
pub fn dynamic_quantize(x: f32, scale: f32, zero_point: u8) -> u8 {
    if !usable(scale) {
        return 0;
    }
    let q = (x / scale).round_ties_even() + zero_point as f32;
    if q.is_nan() {
        0
    } else {
        q.clamp(0.0, 255.0) as u8
    }
}

/// Whether a computed scale quantizes (positive and finite): 0 and infinity do not.
fn usable(scale: f32) -> bool {
    scale > 0.0 && scale.is_finite()
}

/// `scale[block] · q` for every element of `q` (i8 or i4), blocks of `block` along `axis`.
pub fn dequantize_blocks(
    q: &Tensor,
    scales: &Tensor,
    axis: usize,
    block: usize,
) -> Result<Tensor, String> {
    let shape = q.shape();
    if axis >= shape.len() || scales.shape() != scale_shape(shape, axis, block) {
        return Err(format!(
            "scales {:?} do not match blocks of {block} along axis {axis} of {shape:?}",
            scales.shape()
        ));
    }
    let TensorData::I8(values) = q.data() else {
        return Err(format!(
            "BlockDequantizeLinear reads i8 or i4, not {}",
            q.dtype()
        ));
    };
    let s = scales.as_f32()?;
    let inner: usize = shape[axis + 1..].iter().product();
    let (extent, blocks) = (shape[axis], shape[axis].div_ceil(block));
    let out = values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (outer, a, j) = (i / (inner * extent), (i / inner) % extent, i % inner);
            s[(outer * blocks + a / block) * inner + j] * v as f32
        })
        .collect();
    Ok(Tensor::from_f32(shape, out))
}

#[cfg(test)]
mod tests {
    use super::super::testing::run_op;
    use super::*;
    use crate::{AttrValue, Attrs};

    #[test]
    fn dynamic_params_follow_onnx() {
        // The ONNX operator documentation's example (ONNX's reference and ONNX Runtime give the
        // same): range [-3, 2].
        let v = [0.0, 2.0, -3.0, -2.5, 1.34, 0.5];
        let (s, z) = dynamic_params(&v);
        assert_eq!(s, 5.0 / 255.0);
        assert_eq!(z, 153);
        let q: Vec<u8> = v.iter().map(|&e| dynamic_quantize(e, s, z)).collect();
        assert_eq!(q, vec![153, 255, 0, 26, 221, 179]);
        // Positive only: the range starts at 0, the zero point is 0.
        assert_eq!(dynamic_params(&[1.0, 2.55]).1, 0);
        // All zeros: scale 0, everything quantizes to 0.
        assert_eq!(dynamic_params(&[0.0, 0.0]), (0.0, 0));
        assert_eq!(dynamic_quantize(0.0, 0.0, 0), 0);
    }

    #[test]
    fn dynamic_quantize_linear_has_three_results() {
        let mut g = crate::Graph::new("t");
        let x = g.add_input("x", TensorType::new(DType::F32, Shape::fixed(&[2, 2])));
        let op = crate::Op::new(OpKind::DynamicQuantizeLinear, Attrs::new());
        let ys = g.add_op("dq", op, &[Some(x)], &["y", "s", "z"]).unwrap();
        g.set_outputs(ys).unwrap();
        crate::verify(&g).unwrap();
        let x = Tensor::from_f32(&[2, 2], vec![-1.0, 0.0, 1.0, 254.0]);
        let out = crate::interp::run(&g, &[x]).unwrap();
        assert_eq!(out[0].to_i64_vec().unwrap(), vec![0, 1, 2, 255]);
        assert_eq!(out[1].as_f32().unwrap(), &[1.0]);
        assert_eq!(out[2].to_i64_vec().unwrap(), vec![1]);
    }

    #[test]
    fn blocks_along_the_reduction_axis() {
        // [K = 3, N = 2] in blocks of 2 along axis 0: rows 0-1 use scale row 0, row 2 row 1.
        let q = Tensor::new(
            DType::I4,
            vec![3, 2],
            TensorData::I8(vec![1, -2, 3, 4, -7, 7]),
        )
        .unwrap();
        let s = Tensor::from_f32(&[2, 2], vec![0.5, 1.0, 2.0, 0.25]);
        let attrs = Attrs::new()
            .with("axis", AttrValue::Int(0))
            .with("block_size", AttrValue::Int(2));
        let y = run_op(
            OpKind::BlockDequantizeLinear,
            attrs.clone(),
            vec![(q.clone(), None), (s, None)],
            None,
        )
        .unwrap();
        assert_eq!(y.as_f32().unwrap(), &[0.5, -2.0, 1.5, 4.0, -14.0, 1.75]);
        // Scales of the wrong shape are an error, not a panic.
        let bad = Tensor::from_f32(&[1, 2], vec![1.0, 1.0]);
        assert!(run_op(
            OpKind::BlockDequantizeLinear,
            attrs,
            vec![(q, None), (bad, None)],
            None
        )
        .is_err());
    }
}
