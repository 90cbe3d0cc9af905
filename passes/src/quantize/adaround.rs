//! AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
//! Quantization"; white paper §4.3): instead of rounding each weight to nearest, learn
//! whether it rounds up or down so that the layer's output on calibration data stays
//! closest to the float layer's. Runs on the QDQ graph after `insert-qdq` as the pass
//! `adaround`; the scales `insert-qdq` chose stay, only the integers change.
//!
//! Per layer, in topological order, the paper's eq. 21–25 (the "asymmetric" form, §5): with
//! `s` the weight scale, `W̃ = s · clip(⌊W/s⌋ + h(V), qmin, qmax)` and the rectified sigmoid
//! `h(V) = clip(σ(V)(ζ − γ) + γ, 0, 1)` (ζ = 1.1, γ = −0.1, eq. 23), minimize
//!
//! `‖f_a(W x) − f_a(W̃ x̂)‖² + λ Σ (1 − |2h(V) − 1|^β)` (eq. 24–25)
//!
//! where `x` is the layer's input in the float model, `x̂` its input in the model quantized
//! so far (earlier layers already adarounded: the errors they leave are what this layer
//! compensates), and `f_a` the fused activation (dropped where the exact Gram form of the
//! objective is used, see [`solve`]). The regularizer pushes `h(V)` to 0 or 1; β anneals
//! from 20 to 2 after a warm-up of 20% of the iterations, λ = 0.01, Adam with a learning
//! rate set by the iterations the budget allows, `V` initialized so that `h(V)` equals the
//! fractional part. Finally `h` is hardened (`V ≥ 0` rounds up). A row keeps whichever of
//! the learned and the nearest rounding reconstructs its calibration columns better.
//!
//! Time: the budget covers the whole pass, replays included. Replaying the calibration set
//! through the quantized model once per layer cost ~90% of a 60 s budget on MobileNetV2
//! (53 replays of ~1 s; rows then ran 20–40 Adam iterations). So one quantized replay serves
//! a run of consecutive layers: at most [`REPLAY_SHARE`] of the budget goes to replays,
//! the run's length re-estimated at every replay from the mean replay time so far. A
//! layer later in a run reconstructs from its float input (its replayed input would miss
//! the changes AdaRound made earlier in the run). What is left is shared among the
//! layers by their cost per Adam iteration ([`solve::layer_cost`]), so that every layer
//! gets about as many iterations. A layer whose replay would not fit keeps nearest
//! rounding, and so do the ones after it.

mod solve;

use crate::quantize::layer::{anchors, dequantized, Anchor, Layer};
use crate::quantize::replay::Replay;
use crate::PassError;
use qlift_ir::{DType, Graph, NodeOp, Tensor, TensorData, ValueId};
use rayon::prelude::*;
use solve::Problem;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The pass's name in the pipeline and in dumps.
pub const PASS: &str = "adaround";
/// What the pass does, for `--help`.
pub const ABOUT: &str =
    "(only with --calib and --adaround) learn each weight's rounding to reconstruct its layer's output";

/// Calibration columns kept per layer (subsampled evenly beyond): bounded memory (columns ×
/// reduction length f32s per layer) and Gram setup (K² × columns).
pub const MAX_COLUMNS: usize = 4096;
/// Each layer's share of the time left is at least this part of an even split: per-row
/// overheads make cheap layers (depthwise, K = 9) slower than their multiply-accumulates
/// say, and a share by cost alone left them no iteration.
const LAYER_FLOOR: f64 = 0.25;
/// The part of the budget that replays of the quantized model may take: a replay per layer
/// matters more than iterations (MobileNetV2 W4A8, 120 s: 53 replays 10.9 dB, 22 replays
/// at a 60% share 8.2 dB).
pub const REPLAY_SHARE: f64 = 0.75;

/// How long AdaRound may take and how hard it works.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaRoundOptions {
    /// Wall time for all layers together (the CLI's `--adaround=SECONDS`).
    pub budget: Duration,
    /// Most Adam iterations per layer (the paper uses 10,000).
    pub iterations: usize,
}

impl Default for AdaRoundOptions {
    fn default() -> AdaRoundOptions {
        AdaRoundOptions {
            budget: Duration::from_secs(60),
            iterations: 2000,
        }
    }
}

/// What AdaRound did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdaRoundSummary {
    /// Layers optimized.
    pub layers: usize,
    /// Rows (output channels) whose learned rounding beat nearest rounding.
    pub rows_improved: usize,
    /// Rows in all.
    pub rows: usize,
    /// Weights whose rounding differs from nearest.
    pub flipped: usize,
    /// Layers left with nearest rounding because the budget ran out before their replay.
    pub out_of_time: usize,
    /// Replays of the quantized model.
    pub replays: usize,
    /// Fewest and most Adam iterations a row ran (over the optimized layers).
    pub iterations: (usize, usize),
}

/// AdaRounds every quantized product of `qdq` (whose float weights are in `float`, the
/// graph `insert-qdq` started from), replaying calibration data through both.
/// `progress(done, layers)` is called after each layer. With `QLIFT_ADAROUND_DEBUG` set,
/// each layer's dimensions, times and iterations go to stderr.
pub fn adaround(
    qdq: &Graph,
    float: &Graph,
    replay: &dyn Replay,
    opts: &AdaRoundOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<(Graph, AdaRoundSummary), PassError> {
    let start = Instant::now();
    let debug = std::env::var_os("QLIFT_ADAROUND_DEBUG").is_some();
    let mut g = qdq.clone();
    let anchors = anchors(qdq, float)?;
    let mut summary = AdaRoundSummary {
        iterations: (usize::MAX, 0),
        ..Default::default()
    };
    let samples = replay.samples().max(1);
    let inputs = |g: &Graph, a: &Anchor| {
        g.node_inputs(a.layer.node)[0]
            .ok_or_else(|| PassError::Bug("a product without an input".into()))
    };
    // Float targets of every layer, on its kept columns.
    let float_inputs: Vec<ValueId> = anchors
        .iter()
        .map(|a| inputs(float, a))
        .collect::<Result<_, _>>()?;
    let mut float_cols: Vec<Columns> = anchors.iter().map(|a| Columns::new(&a.layer)).collect();
    replay_columns(
        float,
        replay,
        &float_inputs,
        &anchors,
        &mut float_cols,
        samples,
    )?;
    let float_time = start.elapsed();
    let costs: Vec<f64> = anchors
        .iter()
        .zip(&float_cols)
        .map(|(a, c)| solve::layer_cost(&a.layer, c.count))
        .collect();
    // The costliest replay so far (the float one first) is what the next one is assumed to
    // cost: a layer the budget cannot replay keeps nearest rounding.
    let (mut replay_time, mut costliest) = (float_time, float_time);
    let mut quant_cols: Vec<Option<Columns>> = Vec::new();
    // The current run of layers one replay serves: anchors[first..first + run].
    let (mut first, mut run) = (0, 1);
    for (i, a) in anchors.iter().enumerate() {
        // Weights shared with another product keep nearest rounding (one rounding cannot
        // serve two inputs).
        let shared = |g: &Graph, a: &Anchor| {
            g.users(a.layer.weights).len() != 1 || g.users(a.quantized).len() != 1
        };
        if i == first + run || i == 0 {
            // As many replays as what is left of the replay share affords at the mean
            // replay time so far (re-estimated at every replay: load changes it).
            let mean = replay_time / (summary.replays + 1) as u32;
            let left = (opts.budget.mul_f64(REPLAY_SHARE)).saturating_sub(replay_time);
            let affordable = (left.as_secs_f64() / mean.as_secs_f64().max(1e-6)) as usize;
            (first, run) = (i, (anchors.len() - i).div_ceil(affordable.max(1)));
            if start.elapsed() + costliest > opts.budget {
                summary.out_of_time = anchors.len() - i;
                break;
            }
            let replay_start = Instant::now();
            let next = &anchors[i..(i + run).min(anchors.len())];
            let values = next
                .iter()
                .map(|a| inputs(&g, a))
                .collect::<Result<Vec<_>, _>>()?;
            let mut cols: Vec<Columns> = next.iter().map(|a| Columns::new(&a.layer)).collect();
            replay_columns(&g, replay, &values, next, &mut cols, samples)?;
            quant_cols = cols.into_iter().map(Some).collect();
            replay_time += replay_start.elapsed();
            costliest = costliest.max(replay_start.elapsed());
            summary.replays += 1;
        }
        let fresh = quant_cols[i - first].take();
        if shared(&g, a) {
            progress(i + 1, anchors.len());
            continue;
        }
        // Only the first layer of a run sees its input as the quantized model now computes
        // it; the others' replayed input misses the changes AdaRound made earlier in the
        // run, and compensating errors that are no longer there made MobileNetV2 W4A8 worse
        // than nearest rounding (1.4 against 5.5 dB). They reconstruct from the float
        // input instead (the paper's symmetric form).
        let x_hat = if i == first {
            fresh.ok_or_else(|| PassError::Bug("a layer's columns were not replayed".into()))?
        } else {
            std::mem::replace(&mut float_cols[i], Columns::new(&a.layer))
        };
        let layer_start = Instant::now();
        let replays_left = (anchors.len() - (first + run)).div_ceil(run);
        // The costliest replay is held back for every replay to come (the mean let magika's
        // big layer overrun into its last layer's replay), and a tenth of the share for
        // what a layer does after its deadline (hardening, the comparison with nearest).
        let reserve = costliest * replays_left as u32;
        let remaining = opts
            .budget
            .saturating_sub(start.elapsed() + reserve)
            .mul_f64(0.9);
        let part = (costs[i] / costs[i..].iter().sum::<f64>().max(1.0))
            .max(LAYER_FLOOR / (anchors.len() - i) as f64);
        let share = remaining.mul_f64(part.min(1.0));
        let x = if i == first { &float_cols[i] } else { &x_hat };
        let problem = problem(&g, float, a, x, &x_hat)?;
        let result = problem.solve(opts.iterations, layer_start + share);
        if debug {
            eprintln!(
                "adaround layer {i} (run of {run}): rows {} K {} columns {} {} share {share:.2?} took {:.2?} iterations {:?} improved {} flipped {} held-out error {:.4e} -> {:.4e}",
                a.layer.rows, a.layer.row_len, x_hat.count,
                if result.gram { "gram" } else { "sampled" },
                layer_start.elapsed(), result.iterations, result.improved, result.flipped,
                result.errors.0, result.errors.1
            );
        }
        summary.layers += 1;
        summary.rows += a.layer.rows;
        summary.rows_improved += result.improved;
        summary.flipped += result.flipped;
        summary.iterations = (
            summary.iterations.0.min(result.iterations.0),
            summary.iterations.1.max(result.iterations.1),
        );
        write_weights(&mut g, a, &result.q)?;
        float_cols[i] = Columns::new(&a.layer); // free the float columns
        progress(i + 1, anchors.len());
    }
    if summary.out_of_time > 0 {
        progress(anchors.len(), anchors.len());
    }
    if summary.layers == 0 {
        summary.iterations = (0, 0);
    }
    if debug {
        eprintln!(
            "adaround: {} replays ({replay_time:.2?} with the float one), {:.2?} in all",
            summary.replays,
            start.elapsed()
        );
    }
    Ok((g, summary))
}

/// Kept columns of a layer's input, per group: `[row_len][count]` row-major each.
struct Columns {
    groups: Vec<Vec<f32>>,
    count: usize,
    /// Columns seen so far (to keep the same ones in every replay).
    seen: usize,
}

impl Columns {
    fn new(layer: &Layer) -> Columns {
        Columns {
            groups: vec![Vec::new(); layer.groups],
            count: 0,
            seen: 0,
        }
    }
}

/// Replays `graph` and keeps, for each layer, every `stride`-th column of `values[i]` (the
/// same columns whichever graph runs: the stride depends on the sample count only).
fn replay_columns(
    graph: &Graph,
    replay: &dyn Replay,
    values: &[ValueId],
    anchors: &[Anchor],
    cols: &mut [Columns],
    samples: usize,
) -> Result<(), PassError> {
    let mut failed = None;
    replay.replay(graph, values, &mut |i, t| {
        if let Err(e) = keep_columns(&anchors[i].layer, t, &mut cols[i], samples) {
            failed.get_or_insert(e);
        }
    })?;
    failed.map_or(Ok(()), Err)
}

fn keep_columns(
    layer: &Layer,
    x: &Tensor,
    cols: &mut Columns,
    samples: usize,
) -> Result<(), PassError> {
    let batch = x.shape().first().copied().unwrap_or(1).max(1);
    let count = layer.column_count(x).ok_or_else(|| {
        PassError::Bug(format!(
            "input of shape {:?} does not fit its layer",
            x.shape()
        ))
    })?;
    // Columns per sample × samples: the whole set's column count.
    let total = count / batch * samples;
    let stride = total.div_ceil(MAX_COLUMNS).max(1);
    let keep: Vec<usize> = (0..count)
        .filter(|j| (cols.seen + j) % stride == 0)
        .collect();
    for (g, out) in cols.groups.iter_mut().enumerate() {
        let c = layer
            .columns_at(x, g, &keep)
            .ok_or_else(|| PassError::Bug("kept columns out of range".into()))?;
        // Row-major [row_len][kept]: rebuild with the new columns appended per row.
        let old = cols.count;
        let mut merged = Vec::with_capacity(layer.row_len * (old + keep.len()));
        for e in 0..layer.row_len {
            merged.extend_from_slice(&out[e * old..][..old]);
            merged.extend_from_slice(&c[e * keep.len()..][..keep.len()]);
        }
        *out = merged;
    }
    cols.count += keep.len();
    cols.seen += count;
    Ok(())
}

/// Builds layer `a`'s problem: its scales, float bias, activation and the float layer's
/// outputs `W x` on the kept columns `x`.
fn problem<'a>(
    qdq: &Graph,
    float: &Graph,
    a: &'a Anchor,
    x: &Columns,
    x_hat: &'a Columns,
) -> Result<Problem<'a>, PassError> {
    let l = &a.layer;
    let w = a.float.as_f32().map_err(PassError::Bug)?;
    let qt = qdq.value_type(a.quantized);
    let params = qt
        .quant
        .as_ref()
        .ok_or_else(|| PassError::Bug("quantized weights have no parameters".into()))?;
    let scales = (0..l.rows).map(|r| params.channel(r).0).collect();
    let qmax = match qt.dtype {
        DType::I4 => 7.0,
        _ => 127.0,
    };
    let bias = float_bias(float, l)?;
    let clip = match &float.node(l.node).op {
        NodeOp::Apply(op) => op
            .fused_activation()
            .map_err(PassError::Bug)?
            .unwrap_or((f32::NEG_INFINITY, f32::INFINITY)),
        _ => (f32::NEG_INFINITY, f32::INFINITY),
    };
    if x.count != x_hat.count {
        return Err(PassError::Bug("float and quantized columns differ".into()));
    }
    let n = x.count;
    let mut pre = vec![0f32; l.rows * n];
    pre.par_chunks_mut(n.max(1)).enumerate().for_each(|(r, t)| {
        let cols = &x.groups[l.group_of(r)];
        for (e, &wv) in l.row(w, r).iter().enumerate() {
            for (t, &xv) in t.iter_mut().zip(&cols[e * n..][..n]) {
                *t += wv * xv;
            }
        }
    });
    Ok(Problem {
        layer: l,
        w,
        scales,
        bias,
        clip,
        qmax,
        pre,
        x_hat,
    })
}

/// The float bias of a product per output channel (operand 2 of a Conv/Gemm, the constant
/// of the Add after a MatMul; zeros without one).
fn float_bias(float: &Graph, l: &Layer) -> Result<Vec<f32>, PassError> {
    let result = ValueId {
        node: l.node,
        output: 0,
    };
    let b = match float.node(l.node).op.kind() {
        Some(qlift_ir::OpKind::MatMul) => match float.users(result)[..] {
            [(add, _)] if float.node(add).op.kind() == Some(qlift_ir::OpKind::Add) => float
                .node_inputs(add)
                .into_iter()
                .flatten()
                .find(|&v| v != result),
            _ => None,
        },
        _ => float.node_inputs(l.node).get(2).copied().flatten(),
    };
    match b.and_then(|b| float.const_value(b)) {
        Some(t) if t.len() == l.rows => Ok(t.as_f32().map_err(PassError::Bug)?.to_vec()),
        _ => Ok(vec![0.0; l.rows]),
    }
}

/// Replaces the layer's quantized weight constant with integers `q` (same type and scales).
fn write_weights(g: &mut Graph, a: &Anchor, q: &[i8]) -> Result<(), PassError> {
    let old = g
        .const_value(a.quantized)
        .ok_or_else(|| PassError::Bug("quantized weights are not constant".into()))?;
    let t = Tensor::new(
        old.dtype(),
        old.shape().to_vec(),
        TensorData::I8(q.to_vec()),
    )
    .map_err(PassError::Bug)?;
    g.node_mut(a.quantized.node).op = NodeOp::Const(Arc::new(t));
    debug_assert_eq!(
        dequantized(g, a.quantized).map(|d| d.len()).ok(),
        Some(q.len())
    );
    Ok(())
}
