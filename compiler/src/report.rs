//! Per-layer quantization error: the quantized graph against the float graph it came from,
//! value by value on the same inputs, like ONNX Runtime's `qdq_loss_debug`. Quantized
//! values are matched to float values by name (`X_QuantizeLinear_Output` quantizes `X`,
//! the naming of ONNX Runtime's QDQ models and of qlift's Q/DQ insertion).

use crate::Error;
use qlift_ir::{DType, Graph, Tensor, ValueId};
use std::collections::HashMap;

/// The suffix that names a value's quantized form.
pub const QUANTIZED_SUFFIX: &str = "_QuantizeLinear_Output";

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
    let noise: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).powi(2)).sum();
    if noise == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (signal / noise).log10()
}

/// Runs both graphs on `inputs` and compares every value of the quantized graph that has a
/// float counterpart; worst SQNR first.
pub fn layer_errors(float: &Graph, quantized: &Graph, inputs: &[Tensor]) -> Result<Vec<LayerError>, Error> {
    let reference = qlift_ir::interp::run_traced(float, inputs)?;
    let trace = qlift_ir::interp::run_traced(quantized, inputs)?;
    let by_name: HashMap<&str, ValueId> = reference.values.keys().map(|&v| (float.value(v).name.as_str(), v)).collect();
    let mut rows = Vec::new();
    for (&v, tensor) in &trace.values {
        let value = quantized.value(v);
        let Some(op) = quantized.node(v.node).op.kind() else { continue };
        let float_name = value.name.strip_suffix(QUANTIZED_SUFFIX).unwrap_or(&value.name);
        let Some(want) = by_name.get(float_name).and_then(|r| reference.values.get(r)) else { continue };
        let got = match (&value.ty.quant, value.ty.dtype) {
            (Some(q), DType::U8 | DType::I8) if q.axis.is_none() => {
                let (scale, zp) = q.channel(0);
                tensor.to_i64_vec().map_err(|m| Error::Value { name: value.name.clone(), message: m })?.iter().map(|&x| (x - zp as i64) as f32 * scale).collect()
            }
            (None, DType::F32) => tensor.to_f32_vec(),
            _ => continue,
        };
        let want = want.to_f32_vec();
        if got.len() != want.len() {
            continue;
        }
        let max_abs_error = got.iter().zip(&want).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
        rows.push(LayerError { name: float_name.to_string(), op: op.name().to_string(), sqnr_db: sqnr_db(&got, &want), max_abs_error, elements: got.len() });
    }
    // A model output's DequantizeLinear repeats the row of the integer op it reads, if that op
    // has one: keep the op's.
    let named: std::collections::HashSet<String> =
        rows.iter().filter(|r| r.op != "DequantizeLinear").map(|r| r.name.clone()).collect();
    rows.retain(|r| r.op != "DequantizeLinear" || !named.contains(&r.name));
    rows.sort_by(|a, b| a.sqnr_db.total_cmp(&b.sqnr_db).then_with(|| a.name.cmp(&b.name)));
    Ok(rows)
}
