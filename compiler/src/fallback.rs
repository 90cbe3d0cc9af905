//! Accuracy-aware fallback (`--target-sqnr DB`): raise the precision of the layers that hurt
//! most (int8 → fp32, the only step built) until the model's outputs keep at least `DB` of
//! signal to quantization noise against fp32 on the calibration data, with as few float
//! layers as the search finds. The result is a plan (`Quantized::plan`) that reproduces it.
//!
//! # The search
//!
//! The units are what `insert-qdq` decides on (an anchor with its bias, an integer-preserving
//! op; `Decision`). Each round measures the quantized model against fp32 with the per-layer
//! report ([`crate::report`], the interpreter tracing every value) on up to [`RANK_SAMPLES`]
//! calibration samples and ranks the int8 units by the noise each *adds*: the relative noise `N/S` of the unit's result minus
//! the largest relative noise among its operands (what it already received), i.e. the error
//! the unit's own weights and activations introduce. The [`CANDIDATES`] units that add most
//! are each tried in fp32 (the model quantized again from the same calibration statistics,
//! which depend on the float graph only, and measured), and the one that gives the highest
//! output SQNR is kept in fp32: the ranking is a cheap guess at where the error enters, the
//! measurement decides (the noise a unit adds is not what it costs at the output: a layer's
//! error can be amplified or averaged away downstream). The output SQNR is measured with
//! compiled code (the JIT; the interpreter for a graph it cannot compile) on up to
//! [`MEASURE_SAMPLES`] calibration samples. Rounds stop when every output's SQNR
//! reaches the target, or when no int8 unit is left.
//!
//! Greedy raising can overshoot: a unit raised early may be unnecessary once later ones are
//! float. So a second pass tries each raised unit back in int8, in the order they were
//! raised, and keeps it int8 when the target still holds. Every trial costs one
//! quantization (no calibration), one compilation and one run; the fp32 reference is run
//! and traced once.

use crate::quantize::{requantize, Quantized};
use crate::report::{compare_traced, real_values, Comparison};
use crate::{CompileOptions, CompiledModel, Engine, Error, Limits};
use qlift_ir::{Graph, NodeOp, Tensor};
use qlift_passes::quantize::{Outcome, PlanEntry, QuantPlan, QuantizeOptions};
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
    /// `true`: raised to fp32; `false`: tried back in int8 and kept there.
    pub raised: bool,
    /// The output SQNR after the step, dB (the least over the model's outputs).
    pub output_sqnr_db: f64,
}

/// What the search found.
pub struct Fallback {
    /// The quantized model under the final plan (its `plan` reproduces it).
    pub quantized: Quantized,
    /// The output SQNR before any fallback, dB.
    pub initial_sqnr_db: f64,
    /// The output SQNR reached, dB.
    pub output_sqnr_db: f64,
    /// Whether it reaches the target.
    pub reached: bool,
    /// Units in fp32 in the result (by the plan, the outlier check or the search).
    pub float_units: usize,
    /// Units in int8 in the result.
    pub int8_units: usize,
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

/// Searches for the plan whose quantization of `graph` keeps `target_db` at every output,
/// starting from `first` (a quantization of `graph` with `opts` and its plan, whose frozen
/// plan the search extends), measured on `calibration` (the inputs it was calibrated on).
/// `progress` sees every step.
pub fn meet_target(
    graph: &Graph,
    mut first: Quantized,
    opts: &QuantizeOptions,
    calibration: &[Tensor],
    target_db: f64,
    limits: &Limits,
    progress: &dyn Fn(&Step),
) -> Result<Fallback, Error> {
    // Each candidate plan is quantized again from the kept statistics alone; CLE, bias
    // correction and AdaRound would need the calibration data replayed for every one.
    if opts.ptq.replays() {
        return Err(Error::Value {
            name: "calibration steps".to_string(),
            message: "--target-sqnr cannot be combined with --cle, --bias-correction or --adaround yet: each candidate plan is requantized from the calibration statistics alone".to_string(),
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
    let measure = |q: &Quantized| -> Result<f64, Error> {
        let got = run_compiled(&q.lowered, true, &inputs)?;
        Ok(got
            .iter()
            .zip(&float_outputs)
            .map(|(g, w)| crate::report::sqnr_db(g, w))
            .fold(f64::INFINITY, f64::min))
    };
    let stats = std::mem::take(&mut first.calibration);
    let quantize = |p: &QuantPlan| requantize(graph, &stats, opts, p, &quiet);

    let initial = measure(&first)?;
    let mut db = initial;
    // The plan `first` was made with, frozen: node entries under the names the search uses,
    // and the outlier check's outcome recorded, so that its decisions stay what they were.
    let base = first.plan.clone();
    let mut current = first;
    let mut working = base.clone();
    let mut raised: Vec<String> = Vec::new();
    let mut steps = Vec::new();
    while db < target_db {
        let ranked = ranked_units(&float, &current, &rows(&current)?);
        if ranked.is_empty() {
            break;
        }
        let mut best: Option<(f64, String, QuantPlan, Quantized)> = None;
        for node in ranked.into_iter().take(CANDIDATES) {
            let mut trial = working.clone();
            trial.set_node(
                &node,
                PlanEntry::fp32(format!(
                    "raised by --target-sqnr {target_db}: the int8 unit whose fp32 gave the best output SQNR (from {db:.1} dB)"
                )),
            );
            let q = quantize(&trial)?;
            let trial_db = measure(&q)?;
            if best.as_ref().is_none_or(|b| trial_db > b.0) {
                best = Some((trial_db, node, trial, q));
            }
        }
        let Some((best_db, worst, trial, q)) = best else {
            break;
        };
        (db, working, current) = (best_db, trial, q);
        raised.push(worst.clone());
        let step = Step {
            node: worst,
            raised: true,
            output_sqnr_db: db,
        };
        progress(&step);
        steps.push(step);
    }
    if db >= target_db {
        for node in raised.clone() {
            let mut trial = working.clone();
            match base.nodes.get(&node) {
                Some(entry) => trial.nodes.insert(node.clone(), entry.clone()),
                None => trial.nodes.remove(&node),
            };
            let q = quantize(&trial)?;
            let trial_db = measure(&q)?;
            if trial_db >= target_db {
                working = trial;
                current = q;
                db = trial_db;
                let step = Step {
                    node,
                    raised: false,
                    output_sqnr_db: db,
                };
                progress(&step);
                steps.push(step);
            }
        }
    }
    current.calibration = stats;
    let float_units = current
        .decisions
        .iter()
        .filter(|d| d.outcome != Outcome::Int8)
        .count();
    let int8_units = current.decisions.len() - float_units;
    Ok(Fallback {
        quantized: current,
        initial_sqnr_db: initial,
        output_sqnr_db: db,
        reached: db >= target_db,
        float_units,
        int8_units,
        steps,
    })
}

/// The int8 units, the one that adds the most relative noise first (see the module
/// documentation).
fn ranked_units(float: &Graph, q: &Quantized, c: &Comparison) -> Vec<String> {
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
    let mut ranked: Vec<(f64, String)> = q
        .decisions
        .iter()
        .filter(|d| d.outcome == Outcome::Int8)
        .map(|d| {
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
            (out - received, d.node.clone())
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    ranked.into_iter().map(|(_, node)| node).collect()
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
