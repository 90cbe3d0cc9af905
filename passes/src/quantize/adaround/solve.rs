//! One layer's rounding problem: the rectified-sigmoid relaxation, Adam, and the two ways of
//! computing a row's reconstruction gradient.
//!
//! A row's objective over its `n` kept columns is `‖w̃·X̂ − t‖² / n` with `t` the float
//! layer's output. Without the activation it expands to `w̃ H w̃ᵀ − 2 w̃·b + const` with
//! `H = X̂X̂ᵀ/n` (K×K, shared by the rows of a group) and `b = X̂ tᵀ/n` (K per row), so
//! the exact gradient over all columns, `2(H w̃ − b)`, costs K² per row and iteration
//! instead of n·K ([`Objective::Gram`]): on MobileNetV2 (K ≤ 960, n ≈ 3000) that is
//! the whole calibration set at the price of a mini-batch. Rows of a group go through `H`
//! sixteen at a time ([`BLOCK`]: one pass over `H` serves the block). Where `H` does not
//! pay (K close to n, e.g. a classifier with one column per sample) a row learns on
//! mini-batches of columns with the fused activation ([`Objective::Sampled`], the paper's
//! `f_a`).

use super::Columns;
use crate::quantize::layer::Layer;
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Columns per mini-batch of the sampled objective.
pub const BATCH: usize = 256;
/// Rows that share one pass over `H`: two AVX registers of f32 lanes.
const BLOCK: usize = 16;
/// The Gram objective is used when K ≤ n / `GRAM_MIN_RATIO` (below that, `H` costs about
/// as much per iteration as all the columns).
const GRAM_MIN_RATIO: usize = 2;
const ZETA: f32 = 1.1;
const GAMMA: f32 = -0.1;
const LAMBDA: f32 = 0.01;
const WARMUP: f32 = 0.2;
const BETA: (f32, f32) = (20.0, 2.0);
/// Adam's learning rate is `LR_TRAVEL / iterations` (within [`LR_RANGE`]): about the
/// distance in V that takes `h(V)` from its initialization to 0 or 1 and past the clip.
/// The paper's 10,000 iterations at 10⁻³ travel 10; a budget that allows 300 gets 0.033.
const LR_TRAVEL: f32 = 10.0;
const LR_RANGE: (f32, f32) = (1e-3, 0.05);
/// Iterations timed before a row (or block) sets its learning rate from the time left.
const PROBE: usize = 8;

/// How the reconstruction gradient is computed (see the module's doc).
enum Objective {
    /// `H` per group, row-major K×K.
    Gram(Vec<Vec<f32>>),
    Sampled,
}

/// One layer's rounding problem.
pub(super) struct Problem<'a> {
    pub layer: &'a Layer,
    /// Float weights.
    pub w: &'a [f32],
    /// Scale per row.
    pub scales: Vec<f32>,
    /// Float bias per row (0 without one).
    pub bias: Vec<f32>,
    /// Fused activation bounds.
    pub clip: (f32, f32),
    pub qmax: f32,
    /// Float outputs before bias and activation, `W x`, per row: `[rows][count]`.
    pub pre: Vec<f32>,
    /// Quantized-model input columns per group.
    pub x_hat: &'a Columns,
}

/// The solution: integer weights (full tensor, in the quantized constant's order).
pub(super) struct Solution {
    pub q: Vec<i8>,
    pub improved: usize,
    pub flipped: usize,
    /// Fewest and most Adam iterations a row ran.
    pub iterations: (usize, usize),
    /// Whether the Gram objective was used.
    pub gram: bool,
    /// The held-out reconstruction error with nearest and with the chosen rounding.
    pub errors: (f64, f64),
}

/// Iterations a layer's share of the budget is sized for (what it gets depends on the
/// budget; this weighs the layer's fixed costs against its iterations).
const NOMINAL_ITERATIONS: f64 = 500.0;
/// An Adam update of one weight (a sigmoid, a power, the moments) in multiply-accumulates.
const ADAM_COST: usize = 40;

/// Multiply-accumulates of a layer with these dimensions (`n` kept columns): the setup
/// (float outputs, `b`, `H`, the final comparison with nearest rounding) and
/// [`NOMINAL_ITERATIONS`] Adam iterations. The budget is shared by it, so that every layer
/// gets about as many iterations.
pub(super) fn layer_cost(layer: &Layer, n: usize) -> f64 {
    let k = layer.row_len;
    let (rows, groups) = (layer.rows as f64, layer.groups as f64);
    let columns = rows * (k * n) as f64;
    let (setup, per_row) = if uses_gram(k, n) {
        (
            4.0 * columns + groups * (k * k * n) as f64 / 2.0,
            k * k + ADAM_COST * k,
        )
    } else {
        (3.0 * columns, 2 * BATCH.min(n) * k + ADAM_COST * k)
    };
    setup + NOMINAL_ITERATIONS * rows * per_row as f64
}

fn uses_gram(k: usize, n: usize) -> bool {
    k * GRAM_MIN_RATIO <= n
}

impl Problem<'_> {
    /// Optimizes every row by `deadline` (at most `max_iterations` each). Units (blocks of
    /// rows, or rows) run in waves of one per thread; a unit starting gets an equal part of
    /// what is left for the waves still to run, and at least half of an even split of the
    /// whole (units that overran left the last ones no iteration on a loaded machine; the
    /// layers after this one get what it overran less).
    pub fn solve(&self, max_iterations: usize, deadline: Instant) -> Solution {
        let share = deadline.saturating_duration_since(Instant::now());
        let l = self.layer;
        let n = self.x_hat.count;
        let objective = if uses_gram(l.row_len, n) {
            Objective::Gram(
                self.x_hat
                    .groups
                    .iter()
                    .map(|x| gram(x, l.row_len, n, self.train()))
                    .collect(),
            )
        } else {
            Objective::Sampled
        };
        let per_group = l.rows / l.groups;
        let units: Vec<Vec<usize>> = match objective {
            Objective::Gram(_) => (0..l.groups)
                .flat_map(|g| {
                    let rows: Vec<usize> = (g * per_group..(g + 1) * per_group).collect();
                    rows.chunks(BLOCK)
                        .map(<[usize]>::to_vec)
                        .collect::<Vec<_>>()
                })
                .collect(),
            Objective::Sampled => (0..l.rows).map(|r| vec![r]).collect(),
        };
        let threads = rayon::current_num_threads().max(1);
        let started = AtomicUsize::new(0);
        let solved: Vec<Vec<(usize, Vec<f32>, usize)>> = units
            .par_iter()
            .map(|rows| {
                let waiting = units.len() - started.fetch_add(1, Ordering::Relaxed);
                let waves = waiting.div_ceil(threads).max(1) as u32;
                let now = Instant::now();
                let floor = share / (2 * units.len().div_ceil(threads).max(1)) as u32;
                let until = now + (deadline.saturating_duration_since(now) / waves).max(floor);
                let (learned, ran) = match &objective {
                    Objective::Gram(h) => {
                        self.block(rows, &h[l.group_of(rows[0])], max_iterations, until)
                    }
                    Objective::Sampled => self.sampled(rows[0], max_iterations, until),
                };
                rows.iter()
                    .zip(learned)
                    .map(|(&r, q)| (r, q, ran))
                    .collect()
            })
            .collect();
        let mut out = Solution {
            q: vec![0i8; self.w.len()],
            improved: 0,
            flipped: 0,
            iterations: (usize::MAX, 0),
            gram: matches!(objective, Objective::Gram(_)),
            errors: (0.0, 0.0),
        };
        for (r, learned, ran) in solved.into_iter().flatten() {
            let nearest = self.state(r).nearest();
            let (learned_error, nearest_error) = (self.error(r, &learned), self.error(r, &nearest));
            let better = learned_error < nearest_error;
            out.errors.0 += nearest_error;
            out.errors.1 += learned_error.min(nearest_error);
            let chosen = if better { &learned } else { &nearest };
            for (e, &v) in chosen.iter().enumerate() {
                out.q[l.index(r, e)] = v as i8;
            }
            out.improved += better as usize;
            out.flipped += chosen.iter().zip(&nearest).filter(|(a, b)| a != b).count();
            out.iterations = (out.iterations.0.min(ran), out.iterations.1.max(ran));
        }
        out
    }

    /// Columns learned from: the first three quarters (the earlier calibration samples).
    /// The rest decide whether a row keeps its learned rounding: on magika (K = 1280, ~40
    /// iterations in a 40 s budget) the learned rounding beat nearest on every row's own
    /// columns and lost 0.5 dB on the test set.
    fn train(&self) -> usize {
        let n = self.x_hat.count;
        if n >= 16 {
            n - n / 4
        } else {
            n
        }
    }

    /// Row `r`'s float target on kept column `j`: `f_a(W x + b)`.
    fn target(&self, r: usize, j: usize) -> f32 {
        let n = self.x_hat.count;
        (self.pre[r * n + j] + self.bias[r]).clamp(self.clip.0, self.clip.1)
    }

    /// The reconstruction error of row `r` with integer weights `q` on the held-out
    /// columns (all of them when there are too few to hold any out).
    fn error(&self, r: usize, q: &[f32]) -> f64 {
        let n = self.x_hat.count;
        let held = if self.train() < n { self.train() } else { 0 };
        let cols = &self.x_hat.groups[self.layer.group_of(r)];
        let mut y = vec![self.bias[r]; n];
        for (e, &qv) in q.iter().enumerate() {
            let wv = qv * self.scales[r];
            for (y, &xv) in y.iter_mut().zip(&cols[e * n..][..n]) {
                *y += wv * xv;
            }
        }
        y.iter()
            .enumerate()
            .skip(held)
            .map(|(j, &y)| ((y.clamp(self.clip.0, self.clip.1) - self.target(r, j)) as f64).powi(2))
            .sum()
    }

    fn state(&self, r: usize) -> RowState {
        RowState::new(&self.layer.row(self.w, r), self.scales[r], self.qmax)
    }

    /// Learns the rows of one group in `rows` (at most [`BLOCK`]) on the Gram objective.
    fn block(
        &self,
        rows: &[usize],
        h: &[f32],
        max_iterations: usize,
        deadline: Instant,
    ) -> (Vec<Vec<f32>>, usize) {
        let k = self.layer.row_len;
        let n = self.x_hat.count;
        let x = &self.x_hat.groups[self.layer.group_of(rows[0])];
        let m = self.train();
        let mut states: Vec<RowState> = rows.iter().map(|&r| self.state(r)).collect();
        // b = X̂ tᵀ / n per row, interleaved [K][BLOCK] like w̃.
        let mut b = vec![0f32; k * BLOCK];
        for (i, &r) in rows.iter().enumerate() {
            let t = &self.pre[r * n..][..n];
            for e in 0..k {
                b[e * BLOCK + i] = dot(&x[e * n..][..m], &t[..m]) / m as f32;
            }
        }
        let mut wq = vec![0f32; k * BLOCK];
        let mut hw = vec![0f32; k * BLOCK];
        let mut grad = vec![0f32; k];
        let mut schedule = Schedule::new(max_iterations, deadline);
        while let Some(beta) = schedule.next() {
            for (i, s) in states.iter().enumerate() {
                for e in 0..k {
                    wq[e * BLOCK + i] = s.wq(e);
                }
            }
            block_product(h, &wq, &mut hw, k);
            for (i, s) in states.iter_mut().enumerate() {
                for (e, g) in grad.iter_mut().enumerate() {
                    *g = 2.0 * (hw[e * BLOCK + i] - b[e * BLOCK + i]);
                }
                s.adam(&grad, beta, schedule.step, schedule.lr);
            }
        }
        (states.iter().map(RowState::harden).collect(), schedule.step)
    }

    /// Learns row `r` on mini-batches of its columns, through the fused activation.
    fn sampled(
        &self,
        r: usize,
        max_iterations: usize,
        deadline: Instant,
    ) -> (Vec<Vec<f32>>, usize) {
        let l = self.layer;
        let mut state = self.state(r);
        let n = self.x_hat.count;
        let cols = &self.x_hat.groups[l.group_of(r)];
        let mut rng =
            XorShift(0x9E37_79B9_7F4A_7C15 ^ (r as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
        let batch = BATCH.min(n);
        let mut picked = vec![0usize; batch];
        let mut grad = vec![0f32; l.row_len];
        let mut wq = vec![0f32; l.row_len];
        let mut out = vec![0f32; batch];
        let mut schedule = Schedule::new(max_iterations, deadline);
        while let Some(beta) = schedule.next() {
            for p in picked.iter_mut() {
                *p = (rng.next() % self.train().max(1) as u64) as usize;
            }
            for (e, w) in wq.iter_mut().enumerate() {
                *w = state.wq(e);
            }
            // Output errors on the batch, then dL/dw̃ = Σ_j g_j x̂_j.
            out.iter_mut().for_each(|o| *o = self.bias[r]);
            for (e, &wv) in wq.iter().enumerate() {
                let col = &cols[e * n..][..n];
                for (o, &j) in out.iter_mut().zip(&picked) {
                    *o += wv * col[j];
                }
            }
            for (o, &j) in out.iter_mut().zip(&picked) {
                *o = if *o > self.clip.0 && *o < self.clip.1 {
                    2.0 * (*o - self.target(r, j)) / batch as f32
                } else {
                    0.0
                };
            }
            for (e, ge) in grad.iter_mut().enumerate() {
                let col = &cols[e * n..][..n];
                *ge = out.iter().zip(&picked).map(|(&g, &j)| g * col[j]).sum();
            }
            state.adam(&grad, beta, schedule.step, schedule.lr);
        }
        (vec![state.harden()], schedule.step)
    }
}

/// The annealing schedule of one row or block: its position is the further along of
/// iterations and time (a loaded machine gets a shorter but complete schedule instead of
/// an overrun), and after [`PROBE`] timed iterations the learning rate is set for the
/// iterations the time left allows.
struct Schedule {
    start: Instant,
    span: f32,
    iterations: usize,
    /// Iterations run.
    step: usize,
    lr: f32,
}

impl Schedule {
    fn new(iterations: usize, deadline: Instant) -> Schedule {
        let start = Instant::now();
        Schedule {
            start,
            span: deadline.saturating_duration_since(start).as_secs_f32(),
            iterations: iterations.max(1),
            step: 0,
            lr: lr_for(iterations),
        }
    }

    /// Starts the next iteration: `None` when the schedule is over, else β of the
    /// regularizer (`None` inside: no regularizer during the warm-up).
    fn next(&mut self) -> Option<Option<f32>> {
        let elapsed = self.start.elapsed().as_secs_f32();
        if self.step == PROBE && elapsed > 0.0 {
            let affordable = self.span / elapsed * PROBE as f32;
            self.lr = lr_for((affordable as usize).min(self.iterations));
        }
        let by_time = if self.span > 0.0 {
            elapsed / self.span
        } else {
            1.0
        };
        let progress = (self.step as f32 / self.iterations as f32).max(by_time);
        if progress >= 1.0 {
            return None;
        }
        self.step += 1;
        Some((progress > WARMUP).then(|| {
            let t = (progress - WARMUP) / (1.0 - WARMUP);
            BETA.0 + (BETA.1 - BETA.0) * t
        }))
    }
}

fn lr_for(iterations: usize) -> f32 {
    (LR_TRAVEL / iterations.max(1) as f32).clamp(LR_RANGE.0, LR_RANGE.1)
}

/// A row's relaxation `w̃ = s · clip(⌊w/s⌋ + h(V), ±qmax)` and its Adam moments.
struct RowState {
    floor: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
    m2: Vec<f32>,
    s: f32,
    qmax: f32,
    nearest: Vec<f32>,
}

impl RowState {
    /// V initialized so that `h(V)` equals the fractional part (eq. 23 inverted).
    fn new(w: &[f32], s: f32, qmax: f32) -> RowState {
        let floor: Vec<f32> = w.iter().map(|&v| (v / s).floor()).collect();
        let v = w
            .iter()
            .zip(&floor)
            .map(|(&wv, &f)| {
                let frac = (wv / s - f).clamp(0.0, 1.0);
                let sig = ((frac - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1.0 - 1e-4);
                (sig / (1.0 - sig)).ln()
            })
            .collect();
        let zeros = vec![0f32; w.len()];
        let nearest = w
            .iter()
            .map(|&v| (v / s).round_ties_even().clamp(-qmax, qmax))
            .collect();
        RowState {
            nearest,
            floor,
            v,
            m: zeros.clone(),
            m2: zeros,
            s,
            qmax,
        }
    }

    fn q(&self, e: usize) -> f32 {
        self.floor[e] + rect_sigmoid(self.v[e])
    }

    /// The relaxed weight `e`.
    fn wq(&self, e: usize) -> f32 {
        self.s * self.q(e).clamp(-self.qmax, self.qmax)
    }

    /// One Adam step given `dL/dw̃` per weight, with the regularizer at `beta`.
    fn adam(&mut self, grad: &[f32], beta: Option<f32>, step: usize, lr: f32) {
        let (c1, c2) = (
            1.0 - 0.9f32.powi(step as i32),
            1.0 - 0.999f32.powi(step as i32),
        );
        for (e, &g) in grad.iter().enumerate() {
            let q = self.q(e);
            let live = q > -self.qmax && q < self.qmax;
            let sig = sigmoid(self.v[e]);
            let h = sig * (ZETA - GAMMA) + GAMMA;
            let dh_dv = if h > 0.0 && h < 1.0 {
                sig * (1.0 - sig) * (ZETA - GAMMA)
            } else {
                0.0
            };
            let mut dh = if live { g * self.s } else { 0.0 };
            if let Some(beta) = beta {
                let u = 2.0 * h.clamp(0.0, 1.0) - 1.0;
                dh += LAMBDA * -beta * u.abs().powf(beta - 1.0) * u.signum() * 2.0;
            }
            let gv = dh * dh_dv;
            self.m[e] = 0.9 * self.m[e] + 0.1 * gv;
            self.m2[e] = 0.999 * self.m2[e] + 0.001 * gv * gv;
            self.v[e] -= lr * (self.m[e] / c1) / ((self.m2[e] / c2).sqrt() + 1e-8);
        }
    }

    /// The hardened rounding (`V ≥ 0` rounds up), as integers in f32.
    fn harden(&self) -> Vec<f32> {
        self.floor
            .iter()
            .zip(&self.v)
            .map(|(&f, &v)| (f + if v >= 0.0 { 1.0 } else { 0.0 }).clamp(-self.qmax, self.qmax))
            .collect()
    }

    /// Nearest rounding (ties to even), as integers in f32.
    fn nearest(&self) -> Vec<f32> {
        self.nearest.clone()
    }
}

/// `H = X Xᵀ / m` over the first `m` of the `n` columns `x` (`[k][n]` row-major), rows
/// in parallel.
fn gram(x: &[f32], k: usize, n: usize, m: usize) -> Vec<f32> {
    let mut h = vec![0f32; k * k];
    h.par_chunks_mut(k).enumerate().for_each(|(i, hi)| {
        let xi = &x[i * n..][..m];
        for (j, v) in hi[..=i].iter_mut().enumerate() {
            *v = dot(xi, &x[j * n..][..m]) / m as f32;
        }
    });
    // The upper triangle mirrors the lower.
    for i in 0..k {
        for j in i + 1..k {
            h[i * k + j] = h[j * k + i];
        }
    }
    h
}

/// `out = H w` for [`BLOCK`] rows interleaved in `w` and `out` (`[k][BLOCK]`): one pass
/// over `H` (K×K) serves the block. With AVX2 where the CPU has it (the crate is built
/// for baseline x86-64, whose 4-lane SSE halves the rate).
fn block_product(h: &[f32], w: &[f32], out: &mut [f32], k: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked above).
        return unsafe { block_product_avx2(h, w, out, k) };
    }
    block_product_portable(h, w, out, k)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_product_avx2(h: &[f32], w: &[f32], out: &mut [f32], k: usize) {
    block_product_portable(h, w, out, k)
}

#[inline(always)]
fn block_product_portable(h: &[f32], w: &[f32], out: &mut [f32], k: usize) {
    for (e, out) in out.chunks_exact_mut(BLOCK).enumerate() {
        let mut acc = [0f32; BLOCK];
        for (&hv, wj) in h[e * k..][..k].iter().zip(w.chunks_exact(BLOCK)) {
            for (a, &wv) in acc.iter_mut().zip(wj) {
                *a += hv * wv;
            }
        }
        out.copy_from_slice(&acc);
    }
}

/// A dot product in eight lanes (the compiler vectorizes it; a plain fold it may not
/// reorder), with AVX2 where the CPU has it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked above).
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The rectified sigmoid `h(V)` (eq. 23).
fn rect_sigmoid(v: f32) -> f32 {
    (sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The Gram form's gradient `2(H w − b)` equals the gradient of the mean squared
    /// error over all columns, `2 X (Xᵀw − t) / n`, computed directly.
    #[test]
    fn gram_gradient_is_the_full_batch_gradient() {
        let (k, n) = (5, 37);
        let mut rng = XorShift(7);
        let mut uniform = || (rng.next() % 2001) as f32 / 1000.0 - 1.0;
        let x: Vec<f32> = (0..k * n).map(|_| uniform()).collect();
        let t: Vec<f32> = (0..n).map(|_| uniform()).collect();
        let w: Vec<f32> = (0..k).map(|_| uniform()).collect();
        let h = gram(&x, k, n, n);
        let y: Vec<f32> = (0..n)
            .map(|j| (0..k).map(|e| w[e] * x[e * n + j]).sum())
            .collect();
        for e in 0..k {
            let row = &x[e * n..][..n];
            let hw: f32 = (0..k).map(|j| h[e * k + j] * w[j]).sum();
            let gram_grad = 2.0 * (hw - dot(row, &t) / n as f32);
            let direct: f32 = 2.0 * (0..n).map(|j| row[j] * (y[j] - t[j])).sum::<f32>() / n as f32;
            assert!(
                (gram_grad - direct).abs() <= 1e-5 * (1.0 + direct.abs()),
                "entry {e}: Gram {gram_grad} against direct {direct}"
            );
        }
    }

    /// The learning rate follows the iterations a budget allows, within its range.
    #[test]
    fn learning_rate_travels_the_same_distance() {
        assert_eq!(lr_for(10_000), 1e-3);
        assert!((lr_for(400) - 0.025).abs() < 1e-7);
        assert_eq!(lr_for(10), LR_RANGE.1);
    }
}
