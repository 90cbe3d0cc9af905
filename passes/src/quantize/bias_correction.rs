//! Bias correction (Nagel et al. 2019, §4.2; white paper §4.2): quantizing weights
//! `W → W̃ = W + ε` shifts a layer's expected output by `E[W̃x] − E[Wx] = ε·E[x]` (eq. 14–15),
//! a bias error that rounding and, above all, per-tensor and 4-bit weights make large and
//! that the next layers amplify. Subtracting it from the bias, per output channel, undoes
//! it. Runs on the QDQ graph after `insert-qdq` (and after `adaround`, whose weights it then
//! corrects) as the pass `bias-correction`.
//!
//! `E[x]` per reduction entry (input channel × kernel tap: a tap at the border reads padding
//! zeros, so the expectation is over the exact im2col columns) comes from:
//! - **empirical**: the layer's float input replayed over the calibration data (the float
//!   graph's value), averaged over samples and output positions;
//! - **analytic**: the BatchNormalization statistics of the float model, read from the
//!   imported graph (BatchNorm is folded into the Conv by the time quantization runs, so
//!   the driver keeps the graph from before the passes): a BatchNorm output is taken to be
//!   `N(β, γ)` per channel (its learned shift and scale), and a Relu or Clip after it gives
//!   the clipped normal's mean (eq. 18–19: `E[relu(z)] = γ·φ(β/γ) + β·Φ(β/γ)`). Inputs
//!   that are not a BatchNorm output (after an activation) are left uncorrected — a
//!   MaxPool or Add in between has no closed form — and the first layer too (its input
//!   has no statistics). Any CLE scaling and absorption of the channel is applied to the
//!   mean. Data-free, so it also corrects a model calibrated on few samples.

use crate::quantize::layer::{dequantized, Anchor, Layer};
use crate::quantize::replay::Replay;
use crate::PassError;
use qlift_ir::{Graph, NodeId, NodeOp, OpKind, Tensor, TensorData, ValueId};
use std::collections::HashMap;
use std::sync::Arc;

/// The pass's name in the pipeline and in dumps.
pub const PASS: &str = "bias-correction";
/// What the pass does, for `--help`.
pub const ABOUT: &str =
    "(only with --calib and --bias-correction) subtract the expected output shift of quantized weights from the biases";

/// Where `E[x]` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BiasCorrection {
    /// From the calibration data.
    Empirical,
    /// From the float model's BatchNorm statistics.
    Analytic,
}

/// Mean of every reduction entry of `layer`'s columns, per group.
#[derive(Default)]
struct EntryMeans {
    sums: Vec<Vec<f64>>,
    count: usize,
}

impl EntryMeans {
    fn observe(&mut self, layer: &Layer, x: &Tensor) -> Result<(), PassError> {
        self.sums.resize(layer.groups, vec![0.0; layer.row_len]);
        let mut n = 0;
        for (g, sums) in self.sums.iter_mut().enumerate() {
            let (cols, count) = layer.columns(x, g).ok_or_else(|| {
                PassError::Bug(format!(
                    "input of shape {:?} does not fit its layer",
                    x.shape()
                ))
            })?;
            for (e, s) in sums.iter_mut().enumerate() {
                *s += cols[e * count..][..count]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>();
            }
            n = count;
        }
        self.count += n;
        Ok(())
    }

    fn means(&self) -> Vec<Vec<f32>> {
        let n = self.count.max(1) as f64;
        self.sums
            .iter()
            .map(|s| s.iter().map(|&v| (v / n) as f32).collect())
            .collect()
    }
}

/// `E[x]` per group and entry for every anchor, from the float graph's input of each over
/// the calibration data. The float input is the float graph's operand 0 of the product.
pub fn empirical_means(
    float: &Graph,
    anchors: &[Anchor],
    replay: &dyn Replay,
) -> Result<Vec<Option<Vec<Vec<f32>>>>, PassError> {
    let inputs: Vec<ValueId> = anchors
        .iter()
        .map(|a| float.node_inputs(a.layer.node)[0])
        .collect::<Option<_>>()
        .ok_or_else(|| PassError::Bug("a product without an input".into()))?;
    let mut acc: Vec<EntryMeans> = anchors.iter().map(|_| EntryMeans::default()).collect();
    let mut failed = None;
    replay.replay(float, &inputs, &mut |i, t| {
        if let Err(e) = acc[i].observe(&anchors[i].layer, t) {
            failed.get_or_insert(e);
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(acc.iter().map(|a| Some(a.means())).collect())
}

/// A per-channel affine map `x ↦ x / scale − shift` that a pass before quantization
/// applied to a value (CLE's scaling and bias absorption), by value name.
pub type ChannelMaps = HashMap<String, (Vec<f32>, Vec<f32>)>;

/// `E[x]` per group and entry for every anchor whose input is a BatchNorm output (through
/// at most a Relu or Clip) in `original`, the graph as imported; `None` for the others.
/// `maps` are the per-channel changes CLE made since.
pub fn analytic_means(
    qdq: &Graph,
    original: &Graph,
    anchors: &[Anchor],
    maps: &ChannelMaps,
) -> Vec<Option<Vec<Vec<f32>>>> {
    anchors
        .iter()
        .map(|a| {
            let x = qdq.node_inputs(a.layer.node)[0]?;
            // The DequantizeLinear of the input reads the QuantizeLinear of the float value.
            let name = source_name(qdq, x);
            let mut channel = bn_channel_means(original, &name)?;
            if let Some((scale, shift)) = maps.get(&name) {
                for ((m, s), c) in channel.iter_mut().zip(scale).zip(shift) {
                    *m = *m / s - c;
                }
            }
            let in_bounds = tap_fractions(qdq, &a.layer, x)?;
            let cg = a.layer.row_len / a.layer.taps;
            Some(
                (0..a.layer.groups)
                    .map(|g| {
                        (0..a.layer.row_len)
                            .map(|e| {
                                let c = g * cg + e / a.layer.taps;
                                channel.get(c).copied().unwrap_or(0.0) * in_bounds[e % a.layer.taps]
                            })
                            .collect()
                    })
                    .collect(),
            )
        })
        .collect()
}

/// The name of the float value `v` stands for (through DequantizeLinear(QuantizeLinear)).
fn source_name(g: &Graph, v: ValueId) -> String {
    let through = |v: ValueId, kind: OpKind| {
        (g.node(v.node).op.kind() == Some(kind))
            .then(|| g.node_inputs(v.node)[0])
            .flatten()
    };
    let source = through(v, OpKind::DequantizeLinear)
        .and_then(|q| through(q, OpKind::QuantizeLinear))
        .unwrap_or(v);
    g.value(source).name.clone()
}

/// The mean per channel of value `name` of `g` when it is a BatchNormalization's output,
/// optionally through a Relu or Clip.
fn bn_channel_means(g: &Graph, name: &str) -> Option<Vec<f32>> {
    let v = g.find_value(name)?;
    let NodeOp::Apply(op) = &g.node(v.node).op else {
        return None;
    };
    let (bn, lo, hi) = match op.kind {
        OpKind::Relu => (g.node_inputs(v.node)[0]?, 0.0, f64::INFINITY),
        OpKind::Clip => (
            g.node_inputs(v.node)[0]?,
            op.attrs.float("min").ok()? as f64,
            op.attrs.float("max").ok()? as f64,
        ),
        OpKind::BatchNormalization => (v, f64::NEG_INFINITY, f64::INFINITY),
        _ => return None,
    };
    if g.node(bn.node).op.kind() != Some(OpKind::BatchNormalization) {
        return None;
    }
    let operand = |i: usize| -> Option<Vec<f32>> {
        Some(
            g.const_value(g.node_inputs(bn.node).get(i).copied()??)?
                .as_f32()
                .ok()?
                .to_vec(),
        )
    };
    let (gamma, beta) = (operand(1)?, operand(2)?);
    Some(
        gamma
            .iter()
            .zip(&beta)
            .map(|(&gm, &b)| clipped_normal_mean(b as f64, (gm as f64).abs(), lo, hi) as f32)
            .collect(),
    )
}

/// `E[clip(z, lo, hi)]` for `z ~ N(mu, sigma²)`: `E[max(z, lo)] − E[max(z − hi, 0)]`, each
/// from `E[max(z − t, 0)] = σ·φ((μ−t)/σ) + (μ−t)·Φ((μ−t)/σ)` (the paper's eq. 18 for t = 0).
pub fn clipped_normal_mean(mu: f64, sigma: f64, lo: f64, hi: f64) -> f64 {
    let excess = |t: f64| -> f64 {
        if t == f64::INFINITY {
            return 0.0;
        }
        if sigma == 0.0 {
            return (mu - t).max(0.0);
        }
        let a = (mu - t) / sigma;
        sigma * normal_pdf(a) + (mu - t) * normal_cdf(a)
    };
    let above_lo = if lo == f64::NEG_INFINITY {
        mu
    } else {
        lo + excess(lo)
    };
    above_lo - excess(hi)
}

fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// Φ through erfc (Abramowitz–Stegun 7.1.26, |error| < 1.5e-7: far below a bias's step).
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t
        * (0.254829592
            + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let erfc = poly * (-z * z).exp();
    if x >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

/// The fraction of output positions at which each kernel tap reads the input rather than
/// padding (1 for every tap without padding, and for Gemm/MatMul).
fn tap_fractions(g: &Graph, layer: &Layer, x: ValueId) -> Option<Vec<f32>> {
    let Some(_) = &layer.conv else {
        return Some(vec![1.0]);
    };
    // The columns of an all-ones sample, averaged, are exactly these fractions.
    let dims: Vec<usize> = g
        .value_type(x)
        .shape
        .dims()
        .iter()
        .enumerate()
        .map(|(i, d)| if i == 0 { Some(1) } else { d.fixed() })
        .collect::<Option<_>>()?;
    let ones = Tensor::from_f32(&dims, vec![1.0; dims.iter().product()]);
    let (cols, n) = layer.columns(&ones, 0)?;
    Some(
        (0..layer.taps)
            .map(|t| cols[t * n..][..n].iter().sum::<f32>() / n as f32)
            .collect(),
    )
}

/// Subtracts `ε·E[x]` from the bias of every anchor with means, in `qdq`. Returns how many
/// layers were corrected. A product without a bias it can adjust (no bias, a bias that
/// does not fit i32) is left alone.
pub fn apply(
    qdq: &mut Graph,
    anchors: &[Anchor],
    means: &[Option<Vec<Vec<f32>>>],
) -> Result<usize, PassError> {
    let mut corrected = 0;
    for (a, means) in anchors.iter().zip(means) {
        let Some(means) = means else { continue };
        let l = &a.layer;
        let wq = dequantized(qdq, a.quantized)?;
        let w = a.float.as_f32().map_err(PassError::Bug)?;
        let shift: Vec<f64> = (0..l.rows)
            .map(|r| {
                let m = &means[l.group_of(r)];
                (0..l.row_len)
                    .map(|e| (wq[l.index(r, e)] - w[l.index(r, e)]) as f64 * m[e] as f64)
                    .sum()
            })
            .collect();
        if shift_bias(qdq, l.node, &shift)? {
            corrected += 1;
        }
    }
    Ok(corrected)
}

/// Subtracts `shift` from product `node`'s bias: the i32 bias of a Conv/Gemm (`DQ(b)`,
/// rounded again at its scale) or the float bias of the Add after a MatMul.
fn shift_bias(g: &mut Graph, node: NodeId, shift: &[f64]) -> Result<bool, PassError> {
    let result = ValueId { node, output: 0 };
    let bias = match g.node(node).op.kind() {
        Some(OpKind::MatMul) => {
            let [(add, _)] = g.users(result)[..] else {
                return Ok(false);
            };
            if g.node(add).op.kind() != Some(OpKind::Add) {
                return Ok(false);
            }
            g.node_inputs(add)
                .into_iter()
                .flatten()
                .find(|&v| v != result)
        }
        _ => g.node_inputs(node).get(2).copied().flatten(),
    };
    let Some(mut bias) = bias else {
        return Ok(false);
    };
    if g.node(bias.node).op.kind() == Some(OpKind::DequantizeLinear) {
        match g.node_inputs(bias.node)[0] {
            Some(b) => bias = b,
            None => return Ok(false),
        }
    }
    let Some(t) = g.const_value(bias).cloned() else {
        return Ok(false);
    };
    if t.len() != shift.len() || g.users(bias).len() != 1 {
        return Ok(false);
    }
    let data = match (t.data(), &g.value_type(bias).quant) {
        (TensorData::F32(b), None) => TensorData::F32(
            b.iter()
                .zip(shift)
                .map(|(&b, &s)| (b as f64 - s) as f32)
                .collect(),
        ),
        (TensorData::I32(b), Some(q)) => {
            let mut out = Vec::with_capacity(b.len());
            for (c, (&b, &s)) in b.iter().zip(shift).enumerate() {
                let v = (b as f64 - s / q.channel(c).0 as f64).round_ties_even();
                if v.abs() >= i32::MAX as f64 {
                    return Ok(false);
                }
                out.push(v as i32);
            }
            TensorData::I32(out)
        }
        _ => return Ok(false),
    };
    let t = Tensor::new(t.dtype(), t.shape().to_vec(), data).map_err(PassError::Bug)?;
    g.node_mut(bias.node).op = NodeOp::Const(Arc::new(t));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_normal_means() {
        // Relu of a standard normal: 1/sqrt(2π).
        let relu = clipped_normal_mean(0.0, 1.0, 0.0, f64::INFINITY);
        assert!((relu - 0.398_942_28).abs() < 1e-6, "{relu}");
        // Far above the bound: the bound; far inside: the mean.
        assert!((clipped_normal_mean(100.0, 1.0, 0.0, 6.0) - 6.0).abs() < 1e-6);
        assert!((clipped_normal_mean(3.0, 0.01, 0.0, 6.0) - 3.0).abs() < 1e-6);
        assert_eq!(
            clipped_normal_mean(2.0, 1.0, f64::NEG_INFINITY, f64::INFINITY),
            2.0
        );
    }
}
