//! Weight quantization: symmetric int8 (range ±127, zero point 0), per output channel by
//! default as ONNX Runtime does it for per-channel QDQ models, or one scale per tensor.
//! Symmetric weights keep the integer kernels free of a weight zero-point term; per-channel
//! scales keep small channels precise. Per-tensor weights are what older runtimes and
//! accelerators accept, and the case cross-layer equalization exists for.

use qlift_ir::{DType, QuantParams, Tensor, TensorData};

/// Largest magnitude of a quantized weight: ±127 keeps the int8 range symmetric.
pub const WEIGHT_QMAX: f32 = 127.0;

/// How many bits a quantized weight has.
///
/// 4-bit weights (W4A8) are the IR's `i4`: values in ±7 (symmetric, as ±127 for int8, so
/// that no weight zero point enters the kernels), held one per byte in memory like `i8`
/// values, so every integer kernel (interpreter and JIT) computes with them unchanged and
/// bit-exactly; they are packed two per byte where they are stored (ONNX `INT4`
/// initializers, opset 21).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WeightBits {
    /// int8 weights in ±127 (the default).
    #[default]
    Eight,
    /// int4 weights in ±7.
    Four,
}

impl WeightBits {
    /// The largest magnitude of a quantized weight.
    pub fn qmax(self) -> f32 {
        match self {
            WeightBits::Eight => WEIGHT_QMAX,
            WeightBits::Four => 7.0,
        }
    }

    /// The IR type of the quantized weights.
    pub fn dtype(self) -> DType {
        match self {
            WeightBits::Eight => DType::I8,
            WeightBits::Four => DType::I4,
        }
    }
}

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
    bits: WeightBits,
) -> Result<(Tensor, QuantParams), String> {
    match granularity {
        WeightGranularity::PerChannel => quantize_per_channel_bits(values, shape, axis, bits),
        WeightGranularity::PerTensor => {
            // One channel holding every value.
            let (tensor, q) = quantize_per_channel_bits(values, &[1, values.len()], 0, bits)?;
            Ok((
                tensor.reshaped(shape.to_vec())?,
                QuantParams::per_tensor(q.scale[0], 0),
            ))
        }
    }
}

/// Quantizes f32 weights of `shape` per slice along `axis` (the output channels) to int8:
/// `scale_c = max|w_c| / 127` (1 for an all-zero channel), `q = round_half_even(w / scale_c)`
/// computed in f32 as QuantizeLinear does. Returns the i8 tensor and its parameters.
pub fn quantize_per_channel(
    values: &[f32],
    shape: &[usize],
    axis: usize,
) -> Result<(Tensor, QuantParams), String> {
    quantize_per_channel_bits(values, shape, axis, WeightBits::Eight)
}

/// [`quantize_per_channel`] with `bits`-bit weights (`scale_c = max|w_c| / bits.qmax()`).
pub fn quantize_per_channel_bits(
    values: &[f32],
    shape: &[usize],
    axis: usize,
    bits: WeightBits,
) -> Result<(Tensor, QuantParams), String> {
    let qmax = bits.qmax();
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
            if m > 0.0 && (m / qmax).is_normal() {
                m / qmax
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
                .clamp(-qmax, qmax) as i8
        })
        .collect();
    let tensor = Tensor::new(bits.dtype(), shape.to_vec(), TensorData::I8(q))?;
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
            WeightBits::Eight,
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

    #[test]
    fn four_bit_weights_are_i4_in_plus_minus_7() {
        let (t, q) =
            quantize_per_channel_bits(&[1.0, -0.6, 0.07, 0.0], &[2, 2], 0, WeightBits::Four)
                .unwrap();
        assert_eq!(t.dtype(), DType::I4);
        assert_eq!(q.scale, vec![1.0 / 7.0, 0.07 / 7.0]);
        assert_eq!(t.to_i64_vec().unwrap(), vec![7, -4, 7, 0]);
    }
}
