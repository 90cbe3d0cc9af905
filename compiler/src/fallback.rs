//! Accuracy-aware fallback (`--target-sqnr DB`, or `--max-drop PP` with `--calib-labels`:
//! top-1 accuracy within PP points of fp32's on the labelled calibration samples, the
//! candidates compared by accuracy first, then SQNR): raise the precision of the layers that hurt
//! most one step at a time (an int8 Conv/Gemm/MatMul to int16, which keeps it in integers
//! at about the cost of int8 and usually suffices; an int16 layer or any other int8 unit to
//! fp32) until the model's outputs keep at least `DB` of signal to quantization noise
//! against fp32 on the calibration data, with as few raised layers as the search finds. The
//! result is a plan (`Quantized::plan`) that reproduces it.
//!
//! # The search
//!
//! The units are what `insert-qdq` decides on (an anchor with its bias, an integer-preserving
//! op; `Decision`). Each round measures the quantized model against fp32 with the per-layer
//! report ([`crate::report`], the interpreter tracing every value) on up to [`RANK_SAMPLES`]
//! calibration samples and ranks the int8 units by the noise each *adds*: the relative noise `N/S` of the unit's result minus
//! the largest relative noise among its operands (what it already received), i.e. the error
//! the unit's own weights and activations introduce. The [`CANDIDATES`] units that add most
//! are each tried one step up (the model quantized again from the same calibration statistics,
//! which depend on the float graph only, and measured), and the one that gives the highest
//! output SQNR is kept raised: the ranking is a cheap guess at where the error enters, the
//! measurement decides (the noise a unit adds is not what it costs at the output: a layer's
//! error can be amplified or averaged away downstream). The output SQNR is measured with
//! compiled code (the JIT; the interpreter for a graph it cannot compile) on up to
//! [`MEASURE_SAMPLES`] calibration samples. Rounds stop when every output's SQNR
//! reaches the target, or when every unit is fp32.
//!
//! Greedy raising can overshoot: a unit raised early may be unnecessary once later ones are
//! float. So a second pass tries each raised unit back at its first precision, in the order
//! they were raised, and keeps it there when the target still holds (a unit raised to fp32
//! through int16 is then tried at int16). Every trial costs one
//! quantization (no calibration), one compilation and one run; the fp32 reference is run
//! and traced once.

use crate::quantize::{requantize, Quantized};
use crate::report::{compare_traced, real_values, Comparison};
use crate::{CompileOptions, CompiledModel, Engine, Error, Limits};
use qlift_ir::OpKind;
use qlift_ir::{Graph, NodeOp, Tensor};
use qlift_passes::quantize::{Decision, Outcome, PlanEntry, Precision, QuantPlan, QuantizeOptions};
use qlift_passes::PipelineOptions;
use std::collections::HashMap;

/// Most calibration samples the output SQNR is measured on (compiled code): enough for a
/// stable figure.
pub const MEASURE_SAMPLES: usize = 64;

/// Most calibration samples the ranking's per-layer report traces with the interpreter,
/// which holds and computes every value in scalar code (all-MiniLM-L6-v2: ~25 s for 8
/// sentences on a shared core): enough to tell which layers add noise, not to measure the
/// result (that is [`MEASURE_SAMPLES`]' job).
pub const RANK_SAMPLES: usize = 8;

/// Units measured per round, the best-ranked by the noise they add: 1 would trust the
/// ranking alone; more cost one quantization and one interpreter run each per round.
pub const CANDIDATES: usize = 3;

/// One step of the search.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The unit's node.
    pub node: String,
    /// `true`: raised; `false`: tried back at a lower precision and kept there.
    pub raised: bool,
    /// The precision the step put the unit at.
    pub precision: Precision,
    /// The output SQNR after the step, dB (the least over the model's outputs).
    pub output_sqnr_db: f64,
    /// For [`Goal::MaxDrop`]: the top-1 accuracy (%) after the step.
    pub accuracy: Option<f64>,
}

/// What the search must reach.
#[derive(Clone, Debug, PartialEq)]
pub enum Goal {
    /// Every output keeps at least this SQNR (dB) against fp32 (`--target-sqnr`).
    Sqnr(f64),
    /// The top-1 accuracy of output 0 (argmax over its last axis) on the labelled
    /// calibration samples stays within `points` percentage points of fp32's (`--max-drop`
    /// with `--calib-labels`): one label per calibration sample, in their order.
    MaxDrop {
        /// Percentage points of top-1 accuracy the quantized model may lose.
        points: f64,
        /// The class of each calibration sample.
        labels: Vec<i64>,
    },
}

impl Goal {
    /// The flag that asked for it, for notes and errors.
    fn flag(&self) -> String {
        match self {
            Goal::Sqnr(db) => format!("--target-sqnr {db}"),
            Goal::MaxDrop { points, .. } => format!("--max-drop {points}"),
        }
    }
}

/// How good one quantization is: its least output SQNR (dB) and, for [`Goal::MaxDrop`],
/// its top-1 accuracy (%).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    /// The least output SQNR, dB.
    pub sqnr_db: f64,
    /// Top-1 accuracy, %, when labels were given.
    pub accuracy: Option<f64>,
}

impl Score {
    /// Accuracy first (when measured), then SQNR: what the search maximizes.
    fn beats(&self, other: &Score) -> bool {
        match (self.accuracy, other.accuracy) {
            (Some(a), Some(b)) if a != b => a > b,
            _ => self.sqnr_db > other.sqnr_db,
        }
    }
}

/// Top-1 accuracy (%) of `outputs` (samples on axis 0, classes last) against `labels`.
fn top1(outputs: &[f32], samples: usize, labels: &[i64]) -> f64 {
    let classes = outputs.len() / samples.max(1);
    let right = outputs
        .chunks(classes.max(1))
        .zip(labels)
        .filter(|(row, &label)| {
            let best = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                );
            best.0 as i64 == label
        })
        .count();
    100.0 * right as f64 / samples.max(1) as f64
}

/// What the search found.
pub struct Fallback {
    /// The quantized model under the final plan (its `plan` reproduces it).
    pub quantized: Quantized,
    /// The output SQNR before any fallback, dB.
    pub initial_sqnr_db: f64,
    /// The output SQNR reached, dB.
    pub output_sqnr_db: f64,
    /// For [`Goal::MaxDrop`]: top-1 accuracy (%) of fp32, before any fallback, and reached.
    pub accuracy: Option<(f64, f64, f64)>,
    /// Whether it reaches the target.
    pub reached: bool,
    /// Units in fp32 in the result (by the plan, the outlier check or the search).
    pub float_units: usize,
    /// Units in int8 in the result.
    pub int8_units: usize,
    /// Units in int16 in the result.
    pub int16_units: usize,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// The first `n` samples (axis 0) of every calibration tensor.
fn first_samples(calibration: &[Tensor], n: usize) -> Result<Vec<Tensor>, Error> {
    calibration
        .iter()
        .map(|t| t.slice_outer(0, t.shape().first().copied().unwrap_or(1).min(n)))
        .collect::<Result<_, _>>()
        .map_err(|message| Error::Value {
            name: "calibration data".into(),
            message,
        })
}

/// The outputs of `lowered` on `inputs` as real numbers, run by the JIT (by the interpreter
/// when the JIT cannot compile it).
fn run_compiled(
    lowered: &Graph,
    quantized: bool,
    inputs: &[Tensor],
) -> Result<Vec<Vec<f32>>, Error> {
    let jit = CompiledModel::from_lowered(lowered.clone(), quantized, &CompileOptions::default());
    let model = match jit {
        Ok(model) => model,
        Err(_) => CompiledModel::from_lowered(
            lowered.clone(),
            quantized,
            &CompileOptions {
                engine: Engine::Interpreter,
                ..Default::default()
            },
        )?,
    };
    let outputs = model.run(inputs)?;
    Ok(model
        .outputs()
        .iter()
        .zip(&outputs)
        .map(|((_, ty), t)| real_values(ty, t).unwrap_or_else(|| t.to_f32_vec()))
        .collect())
}

/// Searches for the plan whose quantization of `graph` reaches `goal`,
/// starting from `first` (a quantization of `graph` with `opts` and its plan, whose frozen
/// plan the search extends), measured on `calibration` (the inputs it was calibrated on).
/// `progress` sees every step.
pub fn meet_target(
    graph: &Graph,
    mut first: Quantized,
    opts: &QuantizeOptions,
    calibration: &[Tensor],
    goal: &Goal,
    limits: &Limits,
    progress: &dyn Fn(&Step),
) -> Result<Fallback, Error> {
    // Each candidate plan is quantized again from the kept statistics alone; CLE, bias
    // correction and AdaRound would need the calibration data replayed for every one.
    if opts.ptq.replays() {
        return Err(Error::Value {
            name: "calibration steps".to_string(),
            message: "--target-sqnr and --max-drop cannot be combined with --smooth, --cle, --bias-correction or --adaround yet: each candidate plan is requantized from the calibration statistics alone".to_string(),
        });
    }
    let quiet = PipelineOptions::default();
    let (float, _) = qlift_passes::run_pipeline(graph, &quiet)?;
    let inputs = first_samples(calibration, MEASURE_SAMPLES)?;
    let rank_inputs = first_samples(calibration, RANK_SAMPLES)?;
    crate::report::check_trace_memory(&[&float], &rank_inputs, limits)?;
    let reference = qlift_ir::interp::run_traced(&float, &rank_inputs)?;
    let rows = |q: &Quantized| -> Result<Comparison, Error> {
        compare_traced(&float, &reference, &q.lowered, &rank_inputs, None, limits)
    };
    let float_outputs = run_compiled(&float, false, &inputs)?;
    let samples = inputs
        .first()
        .and_then(|t| t.shape().first().copied())
        .unwrap_or(1);
    let labels = match goal {
        Goal::MaxDrop { labels, .. } if labels.len() < samples => {
            return Err(Error::Value {
                name: "--calib-labels".to_string(),
                message: format!(
                    "{} labels for {samples} calibration samples: one label per sample",
                    labels.len()
                ),
            })
        }
        Goal::MaxDrop { labels, .. } => Some(&labels[..samples]),
        Goal::Sqnr(_) => None,
    };
    let accuracy = |outputs: &[Vec<f32>]| labels.map(|l| top1(&outputs[0], samples, l));
    let fp32_accuracy = accuracy(&float_outputs);
    let measure = |q: &Quantized| -> Result<Score, Error> {
        let got = run_compiled(&q.lowered, true, &inputs)?;
        let sqnr_db = got
            .iter()
            .zip(&float_outputs)
            .map(|(g, w)| crate::report::sqnr_db(g, w))
            .fold(f64::INFINITY, f64::min);
        Ok(Score {
            sqnr_db,
            accuracy: accuracy(&got),
        })
    };
    let reached = |score: &Score| match goal {
        Goal::Sqnr(target) => score.sqnr_db >= *target,
        Goal::MaxDrop { points, .. } => {
            score.accuracy.unwrap_or(0.0) + points + 1e-9 >= fp32_accuracy.unwrap_or(0.0)
        }
    };
    let flag = goal.flag();
    let stats = std::mem::take(&mut first.calibration);
    let quantize = |p: &QuantPlan| requantize(graph, &stats, opts, p, &quiet);

    let initial = measure(&first)?;
    let mut score = initial;
    // The plan `first` was made with, frozen: node entries under the names the search uses,
    // and the outlier check's outcome recorded, so that its decisions stay what they were.
    let base = first.plan.clone();
    let mut current = first;
    let mut working = base.clone();
    let mut raised: Vec<String> = Vec::new();
    let mut steps = Vec::new();
    while !reached(&score) {
        let ranked = ranked_units(&float, &current, &rows(&current)?);
        if ranked.is_empty() {
            break;
        }
        let mut best: Option<(Score, String, Precision, QuantPlan, Quantized)> = None;
        for (node, to) in ranked.into_iter().take(CANDIDATES) {
            let mut trial = working.clone();
            trial.set_node(
                &node,
                raised_entry(
                    to,
                    format!(
                        "raised by {flag}: the unit whose {} gave the best result (from {:.1} dB)",
                        to.name(),
                        score.sqnr_db
                    ),
                ),
            );
            let q = quantize(&trial)?;
            let trial_score = measure(&q)?;
            if best.as_ref().is_none_or(|b| trial_score.beats(&b.0)) {
                best = Some((trial_score, node, to, trial, q));
            }
        }
        let Some((best_score, worst, to, trial, q)) = best else {
            break;
        };
        (score, working, current) = (best_score, trial, q);
        if !raised.contains(&worst) {
            raised.push(worst.clone());
        }
        let step = Step {
            node: worst,
            raised: true,
            precision: to,
            output_sqnr_db: score.sqnr_db,
            accuracy: score.accuracy,
        };
        progress(&step);
        steps.push(step);
    }
    if reached(&score) {
        for node in raised.clone() {
            // Back to where the unit started, else (a unit raised to fp32 through int16)
            // to int16.
            let mut lower = working.clone();
            match base.nodes.get(&node) {
                Some(entry) => lower.nodes.insert(node.clone(), entry.clone()),
                None => lower.nodes.remove(&node),
            };
            let mut tries = vec![(lower, Precision::Int8)];
            let now = working.nodes.get(&node).and_then(|e| e.precision);
            if now == Some(Precision::Fp32)
                && steps
                    .iter()
                    .any(|s: &Step| s.node == node && s.precision == Precision::Int16)
            {
                let mut wide = working.clone();
                wide.nodes.insert(
                    node.clone(),
                    raised_entry(
                        Precision::Int16,
                        format!("raised by {flag}: int16 keeps the target"),
                    ),
                );
                tries.push((wide, Precision::Int16));
            }
            for (trial, precision) in tries {
                let q = quantize(&trial)?;
                let trial_score = measure(&q)?;
                if reached(&trial_score) {
                    working = trial;
                    current = q;
                    score = trial_score;
                    let step = Step {
                        node: node.clone(),
                        raised: false,
                        precision,
                        output_sqnr_db: score.sqnr_db,
                        accuracy: score.accuracy,
                    };
                    progress(&step);
                    steps.push(step);
                    break;
                }
            }
        }
    }
    current.calibration = stats;
    let count =
        |f: fn(&Outcome) -> bool| current.decisions.iter().filter(|d| f(&d.outcome)).count();
    let int8_units = count(|o| matches!(o, Outcome::Int8 | Outcome::Int8ByBound { .. }));
    let int16_units = count(|o| matches!(o, Outcome::Int16 { .. } | Outcome::Int16BySqnr { .. }));
    let float_units = current.decisions.len() - int8_units - int16_units;
    Ok(Fallback {
        quantized: current,
        initial_sqnr_db: initial.sqnr_db,
        output_sqnr_db: score.sqnr_db,
        accuracy: fp32_accuracy.map(|f| {
            (
                f,
                initial.accuracy.unwrap_or(0.0),
                score.accuracy.unwrap_or(0.0),
            )
        }),
        reached: reached(&score),
        float_units,
        int8_units,
        int16_units,
        steps,
    })
}

/// The plan entry that puts a unit at `precision`, with a note saying why.
fn raised_entry(precision: Precision, note: String) -> PlanEntry {
    PlanEntry {
        precision: Some(precision),
        note: Some(note),
        ..PlanEntry::default()
    }
}

/// The precision a unit is raised to next, `None` for one already float: int16 for an
/// int8 Conv, Gemm or MatMul whose accumulator allows it, fp32 otherwise.
fn next_precision(d: &Decision) -> Option<Precision> {
    match d.outcome {
        Outcome::Int8 if matches!(d.op, OpKind::Conv | OpKind::Gemm | OpKind::MatMul) => {
            Some(Precision::Int16)
        }
        Outcome::Int8
        | Outcome::Int8ByBound { .. }
        | Outcome::Int16 { .. }
        | Outcome::Int16BySqnr { .. } => Some(Precision::Fp32),
        Outcome::Fp32ByPlan | Outcome::Fp32BySqnr { .. } => None,
    }
}

/// The integer units by the noise they add, worst first, each with its next precision.
fn ranked_units(float: &Graph, q: &Quantized, c: &Comparison) -> Vec<(String, Precision)> {
    let noise: HashMap<&str, f64> = c
        .layers
        .iter()
        .map(|l| (l.name.as_str(), relative_noise(l.sqnr_db)))
        .collect();
    let nodes: HashMap<&str, qlift_ir::NodeId> = float
        .node_ids()
        .filter(|&id| matches!(float.node(id).op, NodeOp::Apply(_)))
        .map(|id| (float.node(id).name.as_str(), id))
        .collect();
    let mut ranked: Vec<(f64, String, Precision)> = q
        .decisions
        .iter()
        .filter_map(|d| next_precision(d).map(|to| (d, to)))
        .map(|(d, to)| {
            let out = d
                .writes
                .iter()
                .filter_map(|w| noise.get(w.as_str()))
                .fold(0.0f64, |a, &b| a.max(b));
            let received = nodes.get(d.node.as_str()).map_or(0.0, |&id| {
                float
                    .node_inputs(id)
                    .into_iter()
                    .flatten()
                    .filter_map(|v| noise.get(float.value(v).name.as_str()))
                    .fold(0.0f64, |a, &b| a.max(b))
            });
            (out - received, d.node.clone(), to)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    ranked.into_iter().map(|(_, node, to)| (node, to)).collect()
}

/// `N / S` from an SQNR in dB (0 for an exact value).
fn relative_noise(sqnr_db: f64) -> f64 {
    if sqnr_db.is_finite() {
        10f64.powf(-sqnr_db / 10.0)
    } else if sqnr_db > 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}
