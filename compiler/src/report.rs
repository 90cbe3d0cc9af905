//! Per-layer quantization error: the quantized graph against the float graph it came from,
//! value by value on the same inputs, like ONNX Runtime's `qdq_loss_debug`. Quantized
//! values are matched to float values by name (`X_QuantizeLinear_Output` quantizes `X`,
//! the naming of ONNX Runtime's QDQ models and of qlift's Q/DQ insertion).
//!
//! # Where a layer's error comes from ([`ErrorSplit`])
//!
//! Let `y` be a layer's fp32 value (the reference graph's), `ŷ` the quantized graph's
//! (dequantized), `S = Σ y²` the signal and `N = Σ (ŷ − y)²` the noise over every element
//! compared, so `SQNR = 10·log10(S / N)`. When the quantized graph holds the value in an
//! integer type with scale `s` and zero point `z` (its *own quantizer* `Q`: `Q(y) = s·(clamp(
//! round(y / s) + z, qmin, qmax) − z)`, `[qmin, qmax]` the type's range), the error `Q(y) − y`
//! that this quantizer alone makes on the exact value `y` splits by where `y` lies:
//!
//! - **rounding**: `y` inside the representable range `[s·(qmin − z), s·(qmax − z)]`
//!   widened by half a step at each end (values there round to a level as they would
//!   without the clamp): `Σ (Q(y) − y)²` over those elements. Too coarse a step; more bits,
//!   or a tighter range, reduce it.
//! - **clipping**: `y` beyond that range but within the `[min, max]` calibration observed
//!   for the value: the range the calibration method chose cuts values it had seen
//!   (percentile, MSE, entropy trade these for a finer step): `Σ (Q(y) − y)²` over those.
//! - **saturation**: `y` beyond the range *and* beyond anything calibration observed: the
//!   data went where calibration never did (unrepresentative calibration data): `Σ (Q(y) −
//!   y)²` over those. Without calibration statistics (an already quantized model) every
//!   value beyond the range counts as clipping.
//! - **upstream**: the rest, `N` minus the three: what the layer's operands already carried
//!   and its own weights' quantization. It can be negative when that rest happens to cancel
//!   part of the value's own rounding.
//!
//! A value the quantized graph computes in float (a float island) has no own quantizer: its
//! whole error is upstream. Each part is reported as the SQNR it alone would leave,
//! `10·log10(S / part)` (infinite for a part of 0), so that it reads on the same scale as the
//! layer's SQNR: the part whose figure is closest to the layer's SQNR dominates.

use crate::{Error, Limits};
use qlift_ir::interp::Trace;
use qlift_ir::{DType, Graph, Tensor, TensorType, ValueId};
use qlift_passes::quantize::Calibration;
use std::collections::HashMap;

pub use qlift_passes::provenance::QUANTIZED_SUFFIX;

/// The error of one layer's output.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerError {
    /// The float value's name.
    pub name: String,
    /// The op that computes it in the quantized graph.
    pub op: String,
    /// Signal-to-quantization-noise ratio in dB (infinite when exact).
    pub sqnr_db: f64,
    /// Largest absolute difference.
    pub max_abs_error: f64,
    /// Elements compared.
    pub elements: usize,
    /// The error by cause (see the module documentation).
    pub split: ErrorSplit,
}

/// A layer's squared error by cause, as sums over its elements (see the module
/// documentation for the definitions); `signal` is `Σ y²`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ErrorSplit {
    /// `Σ y²` of the reference values.
    pub signal: f64,
    /// The value's own rounding inside its representable range.
    pub rounding: f64,
    /// Values cut by the chosen range that calibration had observed.
    pub clipping: f64,
    /// Values beyond the range and beyond what calibration observed.
    pub saturation: f64,
    /// The rest of the error: operands' error and weight quantization (may be negative).
    pub upstream: f64,
}

impl ErrorSplit {
    /// The SQNR in dB a part alone would leave (infinite for no error; NaN for a negative
    /// upstream part, which is no error of its own).
    pub fn db(&self, part: f64) -> f64 {
        if part == 0.0 {
            f64::INFINITY
        } else if part < 0.0 {
            f64::NAN
        } else {
            10.0 * (self.signal / part).log10()
        }
    }

    /// The split of one value: `got` (the quantized graph's, of type `ty`) against `want`
    /// (the reference), `observed` the `[min, max]` calibration saw for it, if known.
    pub fn of(
        ty: &TensorType,
        got: &[f32],
        want: &[f32],
        observed: Option<(f32, f32)>,
    ) -> ErrorSplit {
        let signal: f64 = want.iter().map(|&y| f64::from(y).powi(2)).sum();
        let total: f64 = got
            .iter()
            .zip(want)
            .map(|(&g, &y)| (f64::from(g) - f64::from(y)).powi(2))
            .sum();
        let mut split = ErrorSplit {
            signal,
            ..ErrorSplit::default()
        };
        let own = ty.quant.as_ref().and_then(|q| {
            let (qmin, qmax) = integer_range(ty.dtype)?;
            Some((q, qmin, qmax))
        });
        if let Some((q, qmin, qmax)) = own {
            let dims: Vec<usize> = ty
                .shape
                .dims()
                .iter()
                .map(|d| d.fixed().unwrap_or(1))
                .collect();
            let (channels, inner) = match q.axis {
                Some(axis) if q.scale.len() > 1 => (
                    q.scale.len(),
                    dims.get(axis + 1..)
                        .map_or(1, |d| d.iter().product::<usize>()),
                ),
                _ => (1, 1),
            };
            for (i, &y) in want.iter().enumerate() {
                let c = if channels == 1 {
                    0
                } else {
                    (i / inner.max(1)) % channels
                };
                let (s, z) = (f64::from(q.scale[c]), f64::from(q.zero_point[c]));
                let y = f64::from(y);
                let (lo, hi) = (s * (qmin - z), s * (qmax - z));
                let level = ((y / s).round_ties_even() + z).clamp(qmin, qmax);
                let e = (s * (level - z) - y).powi(2);
                if y >= lo - s / 2.0 && y <= hi + s / 2.0 {
                    split.rounding += e;
                } else if observed.is_none_or(|(mn, mx)| y >= f64::from(mn) && y <= f64::from(mx)) {
                    split.clipping += e;
                } else {
                    split.saturation += e;
                }
            }
        }
        split.upstream = total - split.rounding - split.clipping - split.saturation;
        split
    }
}

/// `(qmin, qmax)` of an integer dtype that holds quantized values.
fn integer_range(dtype: DType) -> Option<(f64, f64)> {
    Some(match dtype {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        DType::U4 => (0.0, 15.0),
        DType::I4 => (-8.0, 7.0),
        DType::I32 => (f64::from(i32::MIN), f64::from(i32::MAX)),
        _ => return None,
    })
}

/// Signal-to-noise ratio of `got` against `want` in dB.
pub fn sqnr_db(got: &[f32], want: &[f32]) -> f64 {
    let signal: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
    let noise: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).powi(2))
        .sum();
    if noise == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (signal / noise).log10()
}

/// The real values a tensor of type `ty` stands for: f32 as it is, a quantized integer
/// tensor dequantized with its own parameters (per tensor or per channel); `None` for an
/// integer tensor without quantization parameters (indices, shapes), which has no real value
/// to compare.
pub fn real_values(ty: &TensorType, tensor: &Tensor) -> Option<Vec<f32>> {
    match (&ty.quant, ty.dtype) {
        (None, DType::F32) => Some(tensor.to_f32_vec()),
        (Some(q), DType::U8 | DType::I8 | DType::U4 | DType::I4 | DType::I32) => {
            let codes = tensor.to_i64_vec().ok()?;
            let shape = tensor.shape();
            let (channels, inner) = match q.axis {
                None => (1, 1),
                Some(axis) => (
                    *shape.get(axis)?,
                    shape.get(axis + 1..)?.iter().product::<usize>(),
                ),
            };
            if q.scale.len() < channels {
                return None;
            }
            let at = |i: usize| {
                if channels == 1 {
                    0
                } else {
                    (i / inner.max(1)) % channels
                }
            };
            Some(
                codes
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| (x - q.zero_point[at(i)] as i64) as f32 * q.scale[at(i)])
                    .collect(),
            )
        }
        _ => None,
    }
}

/// A model output on both sides, as real numbers, for a plot of one against the other.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputPair {
    /// The output's name.
    pub name: String,
    /// The reference graph's values.
    pub reference: Vec<f32>,
    /// The quantized graph's values (dequantized).
    pub quantized: Vec<f32>,
}

/// What [`compare`] finds: the error of every layer and both sides of every model output.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Per-layer errors, worst SQNR first (see [`layer_errors`]).
    pub layers: Vec<LayerError>,
    /// The model outputs the two graphs share by name, in the reference graph's order.
    pub outputs: Vec<OutputPair>,
}

/// Per-layer errors of `quantized` against `float` on `inputs`: [`compare`]'s layers.
pub fn layer_errors(
    float: &Graph,
    quantized: &Graph,
    inputs: &[Tensor],
    limits: &Limits,
) -> Result<Vec<LayerError>, Error> {
    Ok(compare(float, quantized, inputs, limits)?.layers)
}

/// Runs both graphs on `inputs` and compares every value of the quantized graph that has a
/// counterpart in the reference graph, as real numbers: both sides are dequantized with their
/// own parameters (a reference that is itself quantized, such as a QOperator model, uses
/// other scales and zero points than the graph compared to it). Worst SQNR first. The runs
/// hold every value at once, so their memory is checked against `limits` first.
pub fn compare(
    float: &Graph,
    quantized: &Graph,
    inputs: &[Tensor],
    limits: &Limits,
) -> Result<Comparison, Error> {
    compare_calibrated(float, quantized, inputs, None, limits)
}

/// [`compare`] with the calibration statistics the quantized graph was made from, which
/// tell clipping from saturation in each layer's [`ErrorSplit`].
pub fn compare_calibrated(
    float: &Graph,
    quantized: &Graph,
    inputs: &[Tensor],
    calibration: Option<&Calibration>,
    limits: &Limits,
) -> Result<Comparison, Error> {
    check_trace_memory(&[float, quantized], inputs, limits)?;
    let reference = qlift_ir::interp::run_traced(float, inputs)?;
    compare_traced(float, &reference, quantized, inputs, calibration, limits)
}

/// Refuses to trace `graphs` on `inputs` when holding every value of one would exceed the
/// run memory limit.
pub(crate) fn check_trace_memory(
    graphs: &[&Graph],
    inputs: &[Tensor],
    limits: &Limits,
) -> Result<(), Error> {
    let batch = inputs
        .iter()
        .filter_map(|t| t.shape().first().copied())
        .max()
        .unwrap_or(1);
    for graph in graphs {
        let bytes = crate::limits::interpreter_bytes(graph, batch).unwrap_or(u64::MAX);
        if bytes > limits.max_run_bytes {
            let what = format!(
                "memory for tracing every value of `{}` on a batch of {batch} (use fewer samples)",
                graph.name
            );
            return Err(Error::Limit {
                what,
                value: bytes,
                limit: limits.max_run_bytes,
            });
        }
    }
    Ok(())
}

/// [`compare_calibrated`] against `reference`, a trace of `float` on `inputs` made once for
/// many quantized graphs (as `--target-sqnr` compares plan after plan).
pub fn compare_traced(
    float: &Graph,
    reference: &Trace,
    quantized: &Graph,
    inputs: &[Tensor],
    calibration: Option<&Calibration>,
    limits: &Limits,
) -> Result<Comparison, Error> {
    check_trace_memory(&[quantized], inputs, limits)?;
    let trace = qlift_ir::interp::run_traced(quantized, inputs)?;
    let by_name: HashMap<&str, ValueId> = reference
        .values
        .keys()
        .map(|&v| (float.value(v).name.as_str(), v))
        .collect();
    let mut rows = Vec::new();
    for (&v, tensor) in &trace.values {
        let value = quantized.value(v);
        let Some(op) = quantized.node(v.node).op.kind() else {
            continue;
        };
        let float_name = value
            .name
            .strip_suffix(QUANTIZED_SUFFIX)
            .unwrap_or(&value.name);
        let Some(&r) = by_name.get(float_name) else {
            continue;
        };
        let Some(want) = reference.values.get(&r) else {
            continue;
        };
        let (Some(got), Some(want)) = (
            real_values(&value.ty, tensor),
            real_values(&float.value(r).ty, want),
        ) else {
            continue;
        };
        if got.len() != want.len() {
            continue;
        }
        let max_abs_error = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0.0, f64::max);
        let observed = calibration
            .and_then(|c| c.stats(float_name))
            .filter(|s| s.count() > 0)
            .map(|s| (s.min(), s.max()));
        rows.push(LayerError {
            name: float_name.to_string(),
            op: op.name().to_string(),
            sqnr_db: sqnr_db(&got, &want),
            max_abs_error,
            elements: got.len(),
            split: ErrorSplit::of(&value.ty, &got, &want, observed),
        });
    }
    // A model output's DequantizeLinear repeats the row of the integer op it reads, if that op
    // has one: keep the op's.
    let named: std::collections::HashSet<String> = rows
        .iter()
        .filter(|r| r.op != "DequantizeLinear")
        .map(|r| r.name.clone())
        .collect();
    rows.retain(|r| r.op != "DequantizeLinear" || !named.contains(&r.name));
    rows.sort_by(|a, b| {
        a.sqnr_db
            .total_cmp(&b.sqnr_db)
            .then_with(|| a.name.cmp(&b.name))
    });
    let q_outputs: HashMap<&str, ValueId> = quantized
        .outputs()
        .iter()
        .map(|&v| (quantized.value(v).name.as_str(), v))
        .collect();
    let mut outputs = Vec::new();
    for &r in float.outputs() {
        let name = float.value(r).name.as_str();
        let Some(&q) = q_outputs.get(name) else {
            continue;
        };
        let (Some(want), Some(got)) = (reference.values.get(&r), trace.values.get(&q)) else {
            continue;
        };
        if let (Some(reference), Some(quantized)) = (
            real_values(&float.value(r).ty, want),
            real_values(&quantized.value(q).ty, got),
        ) {
            outputs.push(OutputPair {
                name: name.to_string(),
                reference,
                quantized,
            });
        }
    }
    Ok(Comparison {
        layers: rows,
        outputs,
    })
}

#[cfg(test)]
mod split_tests {
    use super::*;
    use qlift_ir::{QuantParams, Shape};

    #[test]
    fn error_splits_by_where_the_reference_lies() {
        // u8, scale 1, zero point 0: levels 0..=255, values within [-0.5, 255.5] round.
        let ty = TensorType::quantized(
            DType::U8,
            Shape::fixed(&[4]),
            QuantParams::per_tensor(1.0, 0),
        );
        let want = [10.25f32, -5.0, 300.0, 100.0];
        let got = [10.0f32, 0.0, 255.0, 101.0];
        let s = ErrorSplit::of(&ty, &got, &want, Some((-10.0, 260.0)));
        assert_eq!(s.rounding, 0.0625 + 0.0); // 10.25 → 10; 100 is on a level
        assert_eq!(s.clipping, 25.0); // -5 was seen in calibration: the range cut it
        assert_eq!(s.saturation, 2025.0); // 300 lies beyond anything calibration saw
        assert_eq!(s.upstream, 1.0); // 100 came in as 101
        assert_eq!(s.signal, 10.25f64.powi(2) + 25.0 + 90000.0 + 10000.0);
        // Without calibration statistics, beyond the range is clipping.
        let s = ErrorSplit::of(&ty, &got, &want, None);
        assert_eq!((s.clipping, s.saturation), (2050.0, 0.0));
        // A float value has no quantizer of its own: all its error is upstream.
        let f = TensorType::new(DType::F32, Shape::fixed(&[4]));
        let s = ErrorSplit::of(&f, &got, &want, None);
        assert_eq!(s.upstream, 0.0625 + 25.0 + 2025.0 + 1.0);
        assert!(s.db(s.rounding).is_infinite());
    }
}
