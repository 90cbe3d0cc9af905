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
//! compensates), and `f_a` the fused activation. The regularizer (eq. 24) pushes `h(V)` to 0
//! or 1; β anneals from 20 to 2 after a warm-up of 20% of the iterations without it, λ =
//! 0.01, Adam (lr 0.01 here, for the ~10× fewer iterations a time budget allows), `V`
//! initialized so that `h(V)` equals the fractional part (the paper's initialization).
//! Finally `h` is hardened (`V ≥ 0` rounds up).
//!
//! The objective separates over output channels (each row of `W` sees all of `x̂`), so rows
//! are optimized independently in parallel (rayon), each on mini-batches of columns (im2col
//! patches or matrix rows) drawn from at most [`MAX_COLUMNS`] calibration columns. A row
//! keeps whichever of the learned and the nearest rounding reconstructs its calibration
//! columns better, so AdaRound never makes a layer worse on the data it saw.
//!
//! Time: the budget covers the whole pass, replays included. The float replay is timed
//! first; each layer's quantized replay is assumed to cost the mean of those so far, that
//! much is kept back for every layer still to come (a layer whose replay would not fit keeps
//! nearest rounding, and so do the ones after it), and the rest of the time is shared among
//! the remaining layers by their multiply-accumulates. Within a layer, each row learns
//! against a deadline as well as an iteration cap ([`AdaRoundOptions::iterations`]): the
//! annealing schedule advances by whichever of the two is further along, so a loaded machine
//! gets a shorter but complete schedule instead of an overrun (an iteration count fixed in
//! advance from a timed probe ran 1.2–3.6× over a 10 s budget with other jobs on the cores).

use crate::quantize::layer::{anchors, dequantized, Anchor, Layer};
use crate::quantize::replay::Replay;
use crate::PassError;
use qlift_ir::{DType, Graph, NodeOp, Tensor, TensorData, ValueId};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The pass's name in the pipeline and in dumps.
pub const PASS: &str = "adaround";
/// What the pass does, for `--help`.
pub const ABOUT: &str =
    "(only with --calib and --adaround) learn each weight's rounding to reconstruct its layer's output";

/// Calibration columns kept per layer (subsampled evenly beyond): enough for the ~1000
/// mini-batches of a run, bounded memory (columns × reduction length f32s per layer).
pub const MAX_COLUMNS: usize = 4096;
/// Columns per mini-batch.
pub const BATCH: usize = 256;
const ZETA: f32 = 1.1;
const GAMMA: f32 = -0.1;
const LAMBDA: f32 = 0.01;
const WARMUP: f32 = 0.2;
const BETA: (f32, f32) = (20.0, 2.0);
const LR: f32 = 0.01;

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
}

/// AdaRounds every quantized product of `qdq` (whose float weights are in `float`, the
/// graph `insert-qdq` started from), replaying calibration data through both.
/// `progress(done, layers)` is called after each layer.
pub fn adaround(
    qdq: &Graph,
    float: &Graph,
    replay: &dyn Replay,
    opts: &AdaRoundOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<(Graph, AdaRoundSummary), PassError> {
    let start = Instant::now();
    let mut g = qdq.clone();
    let anchors = anchors(qdq, float)?;
    let mut summary = AdaRoundSummary::default();
    let samples = replay.samples().max(1);
    // Float targets f_a(W x + b) of every layer, on its kept columns.
    let float_inputs: Vec<ValueId> = anchors
        .iter()
        .map(|a| float.node_inputs(a.layer.node)[0])
        .collect::<Option<_>>()
        .ok_or_else(|| PassError::Bug("a product without an input".into()))?;
    let mut float_cols: Vec<Columns> = anchors.iter().map(|a| Columns::new(&a.layer)).collect();
    replay_columns(
        float,
        replay,
        &float_inputs,
        &anchors,
        &mut float_cols,
        samples,
    )?;
    let costs: Vec<f64> = anchors
        .iter()
        .map(|a| (a.layer.rows * a.layer.row_len) as f64)
        .collect();
    // The costliest replay so far (the float one first) is what the next one is assumed to
    // cost: a layer the budget cannot replay keeps nearest rounding.
    let (mut replays, mut replay_time) = (1u32, start.elapsed());
    let mut costliest = replay_time;
    for (i, a) in anchors.iter().enumerate() {
        if start.elapsed() + costliest > opts.budget {
            summary.out_of_time = anchors.len() - i;
            progress(anchors.len(), anchors.len());
            break;
        }
        // Weights shared with another product keep nearest rounding (one rounding cannot
        // serve two inputs).
        if g.users(a.layer.weights).len() != 1 || g.users(a.quantized).len() != 1 {
            progress(i + 1, anchors.len());
            continue;
        }
        let replay_start = Instant::now();
        let x_hat = g.node_inputs(a.layer.node)[0]
            .ok_or_else(|| PassError::Bug("a product without an input".into()))?;
        let mut quant_cols = vec![Columns::new(&a.layer)];
        replay_columns(
            &g,
            replay,
            &[x_hat],
            std::slice::from_ref(a),
            &mut quant_cols,
            samples,
        )?;
        replay_time += replay_start.elapsed();
        costliest = costliest.max(replay_start.elapsed());
        replays += 1;
        let problem = Problem::new(&g, float, a, &float_cols[i], &quant_cols[0])?;
        let later = anchors.len() - i - 1;
        let reserve = replay_time.mul_f64(later as f64 / replays as f64);
        let remaining = opts.budget.saturating_sub(start.elapsed() + reserve);
        let share = remaining.mul_f64(costs[i] / costs[i..].iter().sum::<f64>().max(1.0));
        let result = problem.solve(opts.iterations, Instant::now() + share);
        summary.layers += 1;
        summary.rows += a.layer.rows;
        summary.rows_improved += result.improved;
        summary.flipped += result.flipped;
        write_weights(&mut g, a, &result.q)?;
        float_cols[i] = Columns::new(&a.layer); // free the float columns
        progress(i + 1, anchors.len());
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

/// One layer's rounding problem.
struct Problem<'a> {
    layer: &'a Layer,
    /// Float weights.
    w: &'a [f32],
    /// Scale per row.
    scales: Vec<f32>,
    /// Float bias per row (0 without one).
    bias: Vec<f32>,
    /// Fused activation bounds.
    clip: (f32, f32),
    qmax: f32,
    /// Float targets per row: `[rows][count]`.
    targets: Vec<f32>,
    /// Quantized-model input columns per group.
    x_hat: &'a Columns,
}

/// The solution: integer weights (full tensor, in the quantized constant's order).
struct Solution {
    q: Vec<i8>,
    improved: usize,
    flipped: usize,
}

impl<'a> Problem<'a> {
    fn new(
        qdq: &Graph,
        float: &'a Graph,
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
        let mut targets = vec![0f32; l.rows * n];
        targets
            .par_chunks_mut(n.max(1))
            .enumerate()
            .for_each(|(r, t)| {
                let cols = &x.groups[l.group_of(r)];
                let row = l.row(w, r);
                for (e, &wv) in row.iter().enumerate() {
                    for (t, &xv) in t.iter_mut().zip(&cols[e * n..][..n]) {
                        *t += wv * xv;
                    }
                }
                for t in t.iter_mut() {
                    *t = (*t + bias[r]).clamp(clip.0, clip.1);
                }
            });
        Ok(Problem {
            layer: l,
            w,
            scales,
            bias,
            clip,
            qmax,
            targets,
            x_hat,
        })
    }

    /// Optimizes every row by `deadline` (at most `max_iterations` each). Rows run in waves
    /// of one per thread; a row starting gets an equal part of what is left for the waves
    /// still to run.
    fn solve(&self, max_iterations: usize, deadline: Instant) -> Solution {
        let l = self.layer;
        let rows: Vec<usize> = (0..l.rows).collect();
        let threads = rayon::current_num_threads().max(1);
        let started = AtomicUsize::new(0);
        let solved: Vec<(Vec<i8>, bool, usize)> = rows
            .par_iter()
            .map(|&r| {
                let waiting = l.rows - started.fetch_add(1, Ordering::Relaxed);
                let waves = waiting.div_ceil(threads).max(1) as u32;
                let now = Instant::now();
                let slot = deadline.saturating_duration_since(now) / waves;
                self.row(r, max_iterations, now + slot)
            })
            .collect();
        let mut q = vec![0i8; self.w.len()];
        let (mut improved, mut flipped) = (0, 0);
        for (r, (row, better, flips)) in solved.into_iter().enumerate() {
            for (e, v) in row.into_iter().enumerate() {
                q[l.index(r, e)] = v;
            }
            improved += better as usize;
            flipped += flips;
        }
        Solution {
            q,
            improved,
            flipped,
        }
    }

    /// The reconstruction error of row `r` with integer weights `q` on all kept columns.
    fn error(&self, r: usize, q: &[f32]) -> f64 {
        let n = self.x_hat.count;
        let cols = &self.x_hat.groups[self.layer.group_of(r)];
        let mut y = vec![self.bias[r]; n];
        for (e, &qv) in q.iter().enumerate() {
            let wv = qv * self.scales[r];
            for (y, &xv) in y.iter_mut().zip(&cols[e * n..][..n]) {
                *y += wv * xv;
            }
        }
        y.iter()
            .zip(&self.targets[r * n..][..n])
            .map(|(&y, &t)| ((y.clamp(self.clip.0, self.clip.1) - t) as f64).powi(2))
            .sum()
    }

    /// Learns row `r`'s rounding with at most `iterations` Adam steps, until `deadline`;
    /// returns its integers, whether they beat nearest rounding, and how many differ from
    /// nearest.
    fn row(&self, r: usize, iterations: usize, deadline: Instant) -> (Vec<i8>, bool, usize) {
        let start = Instant::now();
        let span = deadline.saturating_duration_since(start).as_secs_f32();
        let l = self.layer;
        let s = self.scales[r];
        let w = l.row(self.w, r);
        let (lo, hi) = (-self.qmax, self.qmax);
        let floor: Vec<f32> = w.iter().map(|&v| (v / s).floor()).collect();
        let nearest: Vec<f32> = w
            .iter()
            .map(|&v| (v / s).round_ties_even().clamp(lo, hi))
            .collect();
        // V with h(V) = the fractional part (eq. 23 inverted).
        let mut v: Vec<f32> = w
            .iter()
            .zip(&floor)
            .map(|(&wv, &f)| {
                let frac = (wv / s - f).clamp(0.0, 1.0);
                let sig = ((frac - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1.0 - 1e-4);
                (sig / (1.0 - sig)).ln()
            })
            .collect();
        let (mut m, mut m2) = (vec![0f32; v.len()], vec![0f32; v.len()]);
        let n = self.x_hat.count;
        let cols = &self.x_hat.groups[l.group_of(r)];
        let targets = &self.targets[r * n..][..n];
        let mut rng =
            XorShift(0x9E37_79B9_7F4A_7C15 ^ (r as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
        let batch = BATCH.min(n);
        let mut picked = vec![0usize; batch];
        let mut grad = vec![0f32; v.len()];
        let mut wq = vec![0f32; v.len()];
        let mut live = vec![false; v.len()];
        for it in 0..iterations {
            // The schedule's position: by iterations or by time, whichever is further.
            let elapsed = start.elapsed().as_secs_f32();
            let progress =
                (it as f32 / iterations as f32).max(if span > 0.0 { elapsed / span } else { 1.0 });
            if progress >= 1.0 {
                break;
            }
            for p in picked.iter_mut() {
                *p = (rng.next() % n.max(1) as u64) as usize;
            }
            for e in 0..v.len() {
                let q = floor[e] + rect_sigmoid(v[e]);
                live[e] = q > lo && q < hi;
                wq[e] = s * q.clamp(lo, hi);
            }
            // Output errors on the batch, then dL/dw̃ = Σ_j g_j x̂_j.
            grad.iter_mut().for_each(|g| *g = 0.0);
            let mut out = vec![self.bias[r]; batch];
            for (e, &wv) in wq.iter().enumerate() {
                let col = &cols[e * n..][..n];
                for (o, &j) in out.iter_mut().zip(&picked) {
                    *o += wv * col[j];
                }
            }
            let g_out: Vec<f32> = out
                .iter()
                .zip(&picked)
                .map(|(&y, &j)| {
                    if y > self.clip.0 && y < self.clip.1 {
                        2.0 * (y - targets[j]) / batch as f32
                    } else {
                        0.0
                    }
                })
                .collect();
            for (e, ge) in grad.iter_mut().enumerate() {
                let col = &cols[e * n..][..n];
                *ge = g_out.iter().zip(&picked).map(|(&g, &j)| g * col[j]).sum();
            }
            let beta = (progress > WARMUP).then(|| {
                let t = (progress - WARMUP) / (1.0 - WARMUP);
                BETA.0 + (BETA.1 - BETA.0) * t
            });
            let step = it as i32 + 1;
            for e in 0..v.len() {
                let sig = sigmoid(v[e]);
                let h = sig * (ZETA - GAMMA) + GAMMA;
                let dh_dv = if h > 0.0 && h < 1.0 {
                    sig * (1.0 - sig) * (ZETA - GAMMA)
                } else {
                    0.0
                };
                let mut dh = if live[e] { grad[e] * s } else { 0.0 };
                if let Some(beta) = beta {
                    let u = 2.0 * h.clamp(0.0, 1.0) - 1.0;
                    dh += LAMBDA * -beta * u.abs().powf(beta - 1.0) * u.signum() * 2.0;
                }
                let gv = dh * dh_dv;
                m[e] = 0.9 * m[e] + 0.1 * gv;
                m2[e] = 0.999 * m2[e] + 0.001 * gv * gv;
                let mh = m[e] / (1.0 - 0.9f32.powi(step));
                let vh = m2[e] / (1.0 - 0.999f32.powi(step));
                v[e] -= LR * mh / (vh.sqrt() + 1e-8);
            }
        }
        let learned: Vec<f32> = floor
            .iter()
            .zip(&v)
            .map(|(&f, &v)| (f + if v >= 0.0 { 1.0 } else { 0.0 }).clamp(lo, hi))
            .collect();
        let better = self.error(r, &learned) < self.error(r, &nearest);
        let chosen = if better { &learned } else { &nearest };
        let flips = chosen.iter().zip(&nearest).filter(|(a, b)| a != b).count();
        (chosen.iter().map(|&q| q as i8).collect(), better, flips)
    }
}

/// The rectified sigmoid `h(V)` (eq. 23).
fn rect_sigmoid(v: f32) -> f32 {
    (sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
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

/// xorshift64*: mini-batch draws, deterministic per row.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
