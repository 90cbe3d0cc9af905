//! Per-layer quantization error: the quantized graph against the float graph it came from,
//! value by value on the same inputs, like ONNX Runtime's `qdq_loss_debug`. Quantized
//! values are matched to float values by name (`X_QuantizeLinear_Output` quantizes `X`,
//! the naming of ONNX Runtime's QDQ models and of qlift's Q/DQ insertion).

use crate::{Error, Limits};
use qlift_ir::{DType, Graph, Tensor, TensorType, ValueId};
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
    let batch = inputs
        .iter()
        .filter_map(|t| t.shape().first().copied())
        .max()
        .unwrap_or(1);
    for graph in [float, quantized] {
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
    let reference = qlift_ir::interp::run_traced(float, inputs)?;
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
        rows.push(LayerError {
            name: float_name.to_string(),
            op: op.name().to_string(),
            sqnr_db: sqnr_db(&got, &want),
            max_abs_error,
            elements: got.len(),
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
