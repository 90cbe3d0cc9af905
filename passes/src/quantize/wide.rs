//! The layers a plan raises to int16, and those the outlier check refuses in 8 bits that
//! hold in 16 ([`Outliers::Int16`]), the values they read and write in 16 bits, and the
//! proof that their i32 accumulators cannot wrap.
//!
//! An i16 activation centered on its zero point reaches 65535 in magnitude and an int8
//! weight 128, so a product is below 2^23 and an i32 accumulator holds a sum of only
//! 2^8 of them in the worst case; Conv and MatMul reduce over hundreds or thousands. The
//! kernels (interpreter and JIT alike) wrap in i32, so wrapping would silently give
//! garbage. The weights are constants, though: the accumulator of output channel `c` is
//! at most `X · Σ_k |w_q[c, k]| + |b_q[c]|` with `X` the activation's largest centered
//! value, which quantization computes here from the very weights and bias it will write.
//! A layer whose bound exceeds `i32::MAX` first narrows its input to symmetric int16
//! ([`ActivationScheme::SymmetricI16`]: zero point 0, scale `max|x| / 32767`), where no
//! value exceeds 32768 in magnitude, about half the asymmetric reach: 15 bits of magnitude
//! and a sign, about 6 dB less on a one-sided input such as a GELU output. The range is the full i16 type's, so the Quantize of the
//! interpreter, of the JIT and of an exported QDQ model (ONNX Runtime saturates int16 to
//! the type) agree with the bound without any narrower clamp. When even that bound exceeds
//! `i32::MAX` (or the input keeps less than `min_sqnr_db` so) the layer stays int8 (its
//! [`Outcome`] says why), or fp32 when it came here as an outlier; every int16 layer qlift
//! builds is exact.
//!
//! A layer whose input holds in 8 bits but whose result does not (only the result fails
//! the outlier check, or the plan says `int16-result`) keeps its 8-bit input and writes a
//! 16-bit result: a u8 × i8 product like any int8 layer's, whose i32 sum needs no proof,
//! requantized to int16 ([`Precision::Int16Result`]).
//!
//! [`Outcome`]: super::insert::Outcome

use super::insert::{
    activation_params, bias_add_after, is_anchor, reads_accumulator, short_of_8_bits, weight_axis,
    Calibration, Outliers, QuantizeOptions,
};
use super::plan::{Precision, ResolvedPlan};
use super::weights::quantize_weights;
use crate::calibrate::ActivationScheme;
use crate::PassError;
use qlift_ir::{Graph, NodeId, NodeOp, OpKind, ValueId};
use std::collections::{HashMap, HashSet};

/// What the plan's int16 precision amounts to on one graph.
#[derive(Default)]
pub(super) struct WideLayers {
    /// The anchors (Conv, Gemm, MatMul with constant weights) computing on 16-bit activations.
    pub nodes: HashSet<NodeId>,
    /// The float values they read and write, each quantized to 16 bits where it is produced.
    pub values: HashSet<ValueId>,
    /// Ops that only move values (MaxPool, Flatten, Reshape, Squeeze, Unsqueeze) between an
    /// int16 layer's input and the 16-bit value it comes from: they move 16-bit values, so
    /// that a MaxPool between two int16 Convs does not round to 8 bits.
    pub moves: HashSet<NodeId>,
    /// Anchors the plan asked int16 for whose accumulator bound exceeds `i32::MAX`: the bound.
    pub refused: HashMap<NodeId, f64>,
    /// Anchors in `nodes` because the outlier check refused them in 8 bits: the activation
    /// that failed it and its SQNR in 8 bits.
    pub by_sqnr: HashMap<NodeId, (String, f64)>,
    /// Anchors in `nodes` whose input is symmetric int16 (their asymmetric bound exceeds
    /// `i32::MAX`; see the module documentation).
    pub narrowed: HashSet<NodeId>,
    /// Anchors in `nodes` that read 8-bit activations and write a 16-bit result
    /// ([`Precision::Int16Result`], or the outlier check failing on the result alone).
    pub result_only: HashSet<NodeId>,
    /// The values of `values` quantized to symmetric int16: those anchors' inputs and the
    /// values moved into them. Another int16 layer reading one keeps its proof: its reach
    /// of 32768 is the least any 16-bit zero point gives, and a symmetric step is at least
    /// the asymmetric one, so its bias term only shrinks.
    pub symmetric: HashSet<ValueId>,
    /// The values of those anchors that fail the check in 8 bits, with their SQNR in 8
    /// bits: no other op reads them in 8 bits (an integer-preserving op reading one stays
    /// float).
    pub short8: HashMap<ValueId, f64>,
}

/// `opts` with activations of `scheme` (16-bit: asymmetric, or symmetric for a narrowed
/// layer's input).
fn with_scheme(opts: &QuantizeOptions, scheme: ActivationScheme) -> QuantizeOptions {
    QuantizeOptions { scheme, ..*opts }
}

impl WideLayers {
    /// Whether anchor `id` reads 16-bit activations (an int16 layer, not `int16-result`).
    pub(super) fn reads_16_bits(&self, id: NodeId) -> bool {
        self.nodes.contains(&id) && !self.result_only.contains(&id)
    }

    /// The options 16-bit value `v` is quantized with: `opts` at 16 bits, symmetric for a
    /// narrowed layer's input.
    pub(super) fn sixteen_bit_for(&self, v: ValueId, opts: &QuantizeOptions) -> QuantizeOptions {
        if self.symmetric.contains(&v) {
            with_scheme(opts, ActivationScheme::SymmetricI16)
        } else {
            with_scheme(opts, ActivationScheme::AsymmetricI16)
        }
    }
}

/// The int16 layers of `g` (before Q/DQ insertion) under `plan`.
pub(super) fn wide_layers(
    g: &Graph,
    plan: &ResolvedPlan,
    calibration: &Calibration,
) -> Result<WideLayers, PassError> {
    let mut wide = WideLayers::default();
    for id in g.node_ids() {
        let NodeOp::Apply(op) = &g.node(id).op else {
            continue;
        };
        let operands = g.node_inputs(id);
        let settings = plan.settings(id);
        let outlier_path = settings.precision == Precision::Int8
            && settings.opts.outliers == Outliers::Int16
            && settings.opts.min_sqnr_db > 0.0;
        let raised = matches!(
            settings.precision,
            Precision::Int16 | Precision::Int16Result
        );
        if !(raised || outlier_path) || !is_anchor(g, op, &operands) {
            continue;
        }
        let Some(x) = operands.first().copied().flatten() else {
            continue;
        };
        if g.const_value(x).is_some() {
            continue;
        }
        let opts = with_scheme(&settings.opts, ActivationScheme::AsymmetricI16);
        let result = ValueId {
            node: id,
            output: 0,
        };
        let written = match op.kind {
            OpKind::MatMul => bias_add_after(g, result).map_or(result, |add| ValueId {
                node: add,
                output: 0,
            }),
            _ => result,
        };
        let accumulator = reads_accumulator(g, op, result);
        let checked = || std::iter::once(x).chain((!accumulator).then_some(written));
        let mut short8 = Vec::new();
        if !raised {
            // An int8 layer comes here only when 8 bits fail and 16 bits hold.
            short8 = checked()
                .filter_map(|v| {
                    short_of_8_bits(g, v, calibration, &settings.opts).map(|db| (v, db))
                })
                .collect();
            let holds16 = checked().all(|v| short_of_8_bits(g, v, calibration, &opts).is_none());
            if short8.is_empty() || !holds16 {
                continue;
            }
        }
        // Only the result fails 8 bits (a FFN down-projection's output, once `smooth`
        // flattened its input), or the plan says so: the input stays 8-bit, a u8 × i8
        // product into a 16-bit result, whose i32 sum is bounded as every int8 layer's.
        let result_only = match settings.precision {
            Precision::Int16Result => true,
            Precision::Int16 => false,
            _ => short8.iter().all(|&(v, _)| v != x),
        };
        if result_only {
            if let Some(&(value, db)) = short8.first() {
                wide.by_sqnr.insert(id, (g.value(value).name.clone(), db));
                wide.short8.extend(short8.iter().copied());
            }
            wide.nodes.insert(id);
            wide.result_only.insert(id);
            if !accumulator {
                wide.values.insert(written);
            }
            continue;
        }
        let mut bound = accumulator_bound(g, id, x, &operands, calibration, &opts)?;
        // Narrow the input to symmetric int16 rather than fall back to int8 or fp32.
        let narrowed = bound > i32::MAX as f64 && {
            let sym = with_scheme(&settings.opts, ActivationScheme::SymmetricI16);
            let narrow = accumulator_bound(g, id, x, &operands, calibration, &sym)?;
            let fits =
                narrow <= i32::MAX as f64 && short_of_8_bits(g, x, calibration, &sym).is_none();
            if fits {
                bound = narrow;
            }
            fits
        };
        if std::env::var_os("QLIFT_DEBUG_SQNR").is_some() {
            eprintln!("bound {bound:.3e}  {}", g.node(id).name);
        }
        if bound > i32::MAX as f64 {
            if short8.is_empty() {
                wide.refused.insert(id, bound);
            }
            continue;
        }
        if narrowed {
            wide.narrowed.insert(id);
            wide.symmetric.insert(x);
        }
        if let Some(&first) = short8.first() {
            wide.by_sqnr
                .insert(id, (g.value(first.0).name.clone(), first.1));
            wide.short8.extend(short8.iter().copied());
        }
        wide.nodes.insert(id);
        wide.values.insert(x);
        // Back through the value-moving ops x comes from, while each is its operand's only
        // reader (another reader would see the 16-bit value through a Requantize anyway).
        let mut v = x;
        while let Some(mover) = moving_producer(g, v) {
            let Some(operand) = g.node_inputs(mover).first().copied().flatten() else {
                break;
            };
            if g.users(operand).len() != 1 || g.const_value(operand).is_some() {
                break;
            }
            wide.moves.insert(mover);
            wide.values.insert(operand);
            if narrowed {
                wide.symmetric.insert(operand);
            }
            v = operand;
        }
        if !accumulator {
            wide.values.insert(written);
        }
    }
    Ok(wide)
}

/// The node producing `v` when it only moves values and has a 16-bit integer form.
fn moving_producer(g: &Graph, v: ValueId) -> Option<NodeId> {
    let NodeOp::Apply(op) = &g.node(v.node).op else {
        return None;
    };
    matches!(
        op.kind,
        OpKind::MaxPool | OpKind::Flatten | OpKind::Reshape | OpKind::Squeeze | OpKind::Unsqueeze
    )
    .then_some(v.node)
}

/// The largest `|acc|` anchor `id` can reach over every input: `X · Σ_k |w_q[c, k]| +
/// |b_q[c]|` at its worst output channel `c`, with the weights quantized as `insert-qdq`
/// will quantize them and `X` the input's largest centered 16-bit value.
fn accumulator_bound(
    g: &Graph,
    id: NodeId,
    x: ValueId,
    operands: &[Option<ValueId>],
    calibration: &Calibration,
    opts: &QuantizeOptions,
) -> Result<f64, PassError> {
    let NodeOp::Apply(op) = &g.node(id).op else {
        return Ok(0.0);
    };
    let (_, xq) = activation_params(g, x, calibration, opts)?;
    let (sx, zx) = xq.channel(0);
    let reach = (i16::MAX as i64 - zx as i64).max(zx as i64 - i16::MIN as i64) as f64;
    let (Some(w), Some(axis)) = (operands.get(1).copied().flatten(), weight_axis(op, 1)) else {
        return Ok(f64::INFINITY);
    };
    let w = g
        .const_value(w)
        .ok_or_else(|| PassError::Bug("anchor weights are not constant".into()))?;
    let values = w.as_f32().map_err(PassError::Bug)?;
    let (wt, wq) = quantize_weights(values, w.shape(), axis, opts.weights, opts.ptq.weight_bits)
        .map_err(PassError::Unsupported)?;
    let extent = w.shape().get(axis).copied().unwrap_or(1);
    let inner: usize = w.shape()[axis + 1..].iter().product();
    let mut l1 = vec![0f64; extent];
    for (i, &q) in wt.to_i64_vec().map_err(PassError::Bug)?.iter().enumerate() {
        let c = (i / inner.max(1)) % extent.max(1);
        let zw = wq.channel(if wq.axis.is_some() { c } else { 0 }).1 as i64;
        l1[c] += (q - zw).unsigned_abs() as f64;
    }
    let bias = bias_values(g, id, op.kind, operands)?;
    Ok((0..extent)
        .map(|c| {
            let sw = wq.channel(if wq.axis.is_some() { c } else { 0 }).0 as f64;
            let b = match bias.len() {
                0 => 0.0,
                1 => bias[0],
                _ => bias.get(c).copied().unwrap_or(0.0),
            };
            reach * l1[c] + (b.abs() / (sx as f64 * sw)).ceil()
        })
        .fold(0.0, f64::max))
}

/// The real bias the anchor's accumulator will hold: Conv's and Gemm's operand 2, or the
/// constant of the Add that finishes a MatMul; empty when there is none.
fn bias_values(
    g: &Graph,
    id: NodeId,
    kind: OpKind,
    operands: &[Option<ValueId>],
) -> Result<Vec<f64>, PassError> {
    let constant = match kind {
        OpKind::MatMul => {
            let result = ValueId {
                node: id,
                output: 0,
            };
            bias_add_after(g, result).and_then(|add| {
                g.node_inputs(add)
                    .into_iter()
                    .flatten()
                    .find_map(|v| g.const_value(v).cloned())
            })
        }
        _ => operands
            .get(2)
            .copied()
            .flatten()
            .and_then(|b| g.const_value(b).cloned()),
    };
    match constant {
        None => Ok(Vec::new()),
        Some(t) => Ok(t.to_f32_vec().iter().map(|&v| v as f64).collect()),
    }
}
