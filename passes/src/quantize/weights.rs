//! Weight quantization: symmetric int8 (range ±127, zero point 0), per output channel by
//! default as ONNX Runtime does it for per-channel QDQ models, or one scale per tensor.
//! Symmetric weights keep the integer kernels free of a weight zero-point term; per-channel
//! scales keep small channels precise. Per-tensor weights are what older runtimes and
//! accelerators accept, and the case cross-layer equalization exists for.

use qlift_ir::{DType, QuantParams, Tensor, TensorData};

/// Largest magnitude of a quantized weight: ±127 keeps the int8 range symmetric.
pub const WEIGHT_QMAX: f32 = 127.0;

/// How many scales a weight tensor gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WeightGranularity {
    /// One scale per output channel (the default).
    #[default]
    PerChannel,
    /// One scale for the whole tensor.
    PerTensor,
}

/// Quantizes f32 weights of `shape` whose output channels lie along `axis`, with one scale
/// per channel or per tensor as `granularity` says.
pub fn quantize_weights(
    values: &[f32],
    shape: &[usize],
    axis: usize,
    granularity: WeightGranularity,
) -> Result<(Tensor, QuantParams), String> {
    match granularity {
        WeightGranularity::PerChannel => quantize_per_channel(values, shape, axis),
        WeightGranularity::PerTensor => {
            // One channel holding every value.
            let (tensor, q) = quantize_per_channel(values, &[1, values.len()], 0)?;
            Ok((
                tensor.reshaped(shape.to_vec())?,
                QuantParams::per_tensor(q.scale[0], 0),
            ))
        }
    }
}

/// Quantizes f32 weights of `shape` per slice along `axis` (the output channels):
/// `scale_c = max|w_c| / 127` (1 for an all-zero channel), `q = round_half_even(w / scale_c)`
/// computed in f32 as QuantizeLinear does. Returns the i8 tensor and its parameters.
pub fn quantize_per_channel(
    values: &[f32],
    shape: &[usize],
    axis: usize,
) -> Result<(Tensor, QuantParams), String> {
    let channels = *shape
        .get(axis)
        .ok_or_else(|| format!("axis {axis} is outside the weights' shape {shape:?}"))?;
    let inner: usize = shape[axis + 1..].iter().product();
    if channels == 0 || values.len() != shape.iter().product::<usize>() {
        return Err(format!(
            "weights of shape {shape:?} hold {} values",
            values.len()
        ));
    }
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        return Err(format!("weights contain the non-finite value {v}"));
    }
    let channel = |i: usize| (i / inner.max(1)) % channels;
    let mut absmax = vec![0f32; channels];
    for (i, v) in values.iter().enumerate() {
        absmax[channel(i)] = absmax[channel(i)].max(v.abs());
    }
    let scales: Vec<f32> = absmax
        .iter()
        .map(|&m| {
            if m > 0.0 && (m / WEIGHT_QMAX).is_normal() {
                m / WEIGHT_QMAX
            } else {
                1.0
            }
        })
        .collect();
    let q = values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            (v / scales[channel(i)])
                .round_ties_even()
                .clamp(-WEIGHT_QMAX, WEIGHT_QMAX) as i8
        })
        .collect();
    let tensor = Tensor::new(DType::I8, shape.to_vec(), TensorData::I8(q))?;
    Ok((
        tensor,
        QuantParams::per_axis(axis, scales, vec![0; channels]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_symmetric() {
        let (t, q) = quantize_per_channel(&[1.0, -0.5, 0.0, 0.0, 2.54, 0.02], &[3, 2], 0).unwrap();
        assert_eq!(q.axis, Some(0));
        assert_eq!(q.scale, vec![1.0 / 127.0, 1.0, 2.54 / 127.0]);
        assert_eq!(t.to_i64_vec().unwrap(), vec![127, -64, 0, 0, 127, 1]);
    }

    #[test]
    fn per_tensor_symmetric() {
        let (t, q) = quantize_weights(
            &[1.0, -0.5, 0.0, 0.0, 2.54, 0.02],
            &[3, 2],
            0,
            WeightGranularity::PerTensor,
        )
        .unwrap();
        assert_eq!(
            (q.axis, q.scale.clone(), q.zero_point.clone()),
            (None, vec![2.54 / 127.0], vec![0])
        );
        assert_eq!(t.shape(), &[3, 2]);
        assert_eq!(t.to_i64_vec().unwrap(), vec![50, -25, 0, 0, 127, 1]);
    }

    #[test]
    fn columns_and_bad_input() {
        let (t, q) = quantize_per_channel(&[1.0, 2.0, -1.0, 1.0], &[2, 2], 1).unwrap();
        assert_eq!(q.scale, vec![1.0 / 127.0, 2.0 / 127.0]);
        assert_eq!(t.to_i64_vec().unwrap(), vec![127, 127, -127, 64]);
        assert!(quantize_per_channel(&[f32::NAN], &[1], 0).is_err());
        assert!(quantize_per_channel(&[1.0], &[1], 3).is_err());
    }
}
