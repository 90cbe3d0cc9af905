//! Quantization parameters carried on values.

/// Affine quantization parameters of a value: `real = scale * (q - zero_point)`.
///
/// They live on the value's type (like MLIR's `!quant.uniform`), not as operands, so that a
/// quantized value always says how to read it and rewrites can reason about it locally.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantParams {
    /// One scale (per tensor) or one per slice along `axis` (per channel). Finite and > 0.
    pub scale: Vec<f32>,
    /// Zero points, same length as `scale`, within the range of the value's dtype.
    pub zero_point: Vec<i32>,
    /// The per-channel axis; `None` for per-tensor parameters.
    pub axis: Option<usize>,
}

impl QuantParams {
    /// Per-tensor parameters.
    pub fn per_tensor(scale: f32, zero_point: i32) -> QuantParams {
        QuantParams {
            scale: vec![scale],
            zero_point: vec![zero_point],
            axis: None,
        }
    }

    /// Per-channel parameters along `axis`.
    pub fn per_axis(axis: usize, scale: Vec<f32>, zero_point: Vec<i32>) -> QuantParams {
        QuantParams {
            scale,
            zero_point,
            axis: Some(axis),
        }
    }

    /// The `(scale, zero_point)` that applies to channel `c` (any channel when per-tensor).
    pub fn channel(&self, c: usize) -> (f32, i32) {
        match self.axis {
            None => (self.scale[0], self.zero_point[0]),
            Some(_) => (self.scale[c], self.zero_point[c]),
        }
    }

    /// Checks the invariants against the dtype range; returns a message naming the problem.
    pub fn check(&self, range: (i64, i64)) -> Result<(), String> {
        if self.scale.is_empty() || self.scale.len() != self.zero_point.len() {
            return Err(format!(
                "quantization has {} scales and {} zero points",
                self.scale.len(),
                self.zero_point.len()
            ));
        }
        if self.axis.is_none() && self.scale.len() != 1 {
            return Err(format!(
                "per-tensor quantization has {} scales",
                self.scale.len()
            ));
        }
        if let Some(s) = self.scale.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!("quantization scale {s} is not finite and positive"));
        }
        if let Some(z) = self
            .zero_point
            .iter()
            .find(|&&z| (z as i64) < range.0 || (z as i64) > range.1)
        {
            return Err(format!(
                "zero point {z} is outside [{}, {}]",
                range.0, range.1
            ));
        }
        Ok(())
    }
}
