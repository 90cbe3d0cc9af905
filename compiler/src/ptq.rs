//! The white paper's post-training steps in the quantization driver: the passes `equalize`
//! (before `insert-qdq`), `adaround` and `bias-correction` (after it), built from
//! [`QuantizeOptions::ptq`](qlift_passes::quantize::QuantizeOptions), with the calibration
//! data held in memory and replayed through compiled code ([`JitReplay`]).

use crate::quantize::{check_batch, traced_program_of, with_sample_axis, CalibrationBatches};
use crate::{Error, Limits};
use qlift_codegen::JitProgram;
use qlift_ir::{Graph, Symbol, Tensor, ValueId};
use qlift_passes::quantize::{
    adaround, bias_correction, cle, smooth, BiasCorrection, InterpReplay, PlanEntry, PtqOptions,
    QuantPlan, QuantizeOptions, Replay, WeightGranularity,
};
use qlift_passes::{Pass, PassError};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

/// The calibration data, read once and split into runs of at most
/// [`crate::quantize::CALIBRATION_BATCH`] samples (or the batch the model fixes).
pub(crate) struct Held {
    /// Runs, one tensor per graph input each.
    pub(crate) batches: Vec<Vec<Tensor>>,
}

/// Reads every calibration batch, checks it as calibration does, and splits it into runs
/// that fit `limits`.
pub(crate) fn hold_batches(
    graph: &Graph,
    batches: &mut CalibrationBatches,
    fixed_batch: Option<usize>,
    limits: &Limits,
) -> Result<Held, Error> {
    let per_sample = crate::limits::interpreter_bytes(graph, 1).unwrap_or(u64::MAX);
    let step = match fixed_batch {
        Some(k) => k,
        None => (limits.max_run_bytes / per_sample.max(1))
            .clamp(1, crate::quantize::CALIBRATION_BATCH as u64) as usize,
    };
    let mut held = Vec::new();
    while let Some(batch) = batches() {
        let batch = with_sample_axis(graph, batch?)?;
        let samples = check_batch(graph, &batch, fixed_batch)?;
        for start in (0..samples).step_by(step.max(1)) {
            let end = (start + step).min(samples);
            let run = batch
                .iter()
                .map(|t| t.slice_outer(start, end))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|message| Error::Value {
                    name: "calibration data".to_string(),
                    message,
                })?;
            held.push(run);
        }
    }
    Ok(Held { batches: held })
}

/// Replays held calibration runs through a graph compiled with the requested values as its
/// outputs (one program per binding of named dimensions, as the calibration tracer does);
/// a graph the JIT does not compile runs on the interpreter.
pub(crate) struct JitReplay<'a> {
    held: &'a Held,
}

/// Programs by binding of named dimensions and sample count: a program the JIT specialized
/// to one batch size serves the runs of that size (all but the last, usually), instead of
/// sending every run of a model whose batch cannot stay symbolic to the interpreter (magika:
/// 117 s of interpreter against well under a second compiled).
type Programs = HashMap<(BTreeMap<Symbol, usize>, usize), Option<JitProgram>>;

impl Replay for JitReplay<'_> {
    fn replay(
        &self,
        graph: &Graph,
        values: &[ValueId],
        sink: &mut dyn FnMut(usize, &Tensor),
    ) -> Result<(), PassError> {
        let names: Vec<String> = values
            .iter()
            .map(|&v| graph.value(v).name.clone())
            .collect();
        let mut programs = Programs::new();
        for batch in &self.held.batches {
            let binding =
                qlift_ir::bind_graph_inputs(graph, batch.iter().map(|t| (t.dtype(), t.shape())))?;
            let samples = batch
                .first()
                .and_then(|t| t.shape().first().copied())
                .unwrap_or(1);
            let program = programs
                .entry((binding.syms.clone(), samples))
                .or_insert_with(|| {
                    traced_program_of(graph, &binding, Some(&names)).map(|(p, _, _)| p)
                });
            match program {
                Some(p) => {
                    let outputs = p
                        .run(batch)
                        .map_err(|e| PassError::Unsupported(format!("calibration replay: {e}")))?;
                    for (i, t) in outputs.iter().enumerate() {
                        sink(i, t);
                    }
                }
                None => InterpReplay(vec![batch.clone()]).replay(graph, values, sink)?,
            }
        }
        Ok(())
    }

    fn samples(&self) -> usize {
        InterpReplay::samples_of(&self.held.batches)
    }
}

/// The outcome line of the `smooth` pass: α, then each smoothed producer by name.
fn smooth_note(alpha: f32, sites: &[smooth::Smoothed]) -> String {
    if sites.is_empty() {
        return format!("smooth (α={alpha}): no LayerNorm or Mul output feeds a MatMul/Gemm");
    }
    let each: Vec<String> = sites
        .iter()
        .map(|s| {
            let mut line = format!(
                "{} {} ({} products, {} channels, s {:.3}–{:.3}",
                s.op.name(),
                s.node,
                s.products,
                s.channels,
                s.range.1,
                s.range.0
            );
            if s.compensated > 0 {
                line += &format!(", {} other readers through a Mul by s", s.compensated);
            }
            line + ")"
        })
        .collect();
    format!(
        "smooth (α={alpha}): {} values smoothed: {}",
        sites.len(),
        each.join("; ")
    )
}

/// Why `--cle` leaves a model whose weights are all per-channel alone. Equalization trades
/// the producer's per-row ranges against the consumer's per-column ranges (eq. 10–11 of the
/// paper), which only pays when a producer's rows share one scale. With a scale per row the
/// producer gains nothing, and both side effects remain: the consumer's rows now mix
/// columns multiplied by different `s` (its per-row scale follows the largest), and the link
/// activation, quantized per tensor, widens to the channel scaled up most. On digits_mobile
/// per-channel W8A8 fell from 32.8 to 31.4 dB with CLE applied; skipped, it stays 32.8 dB.
const PER_CHANNEL_CLE: &str =
    "equalize: skipped, every weight is per-channel (CLE only helps per-tensor weights)";

/// Whether any product's weights are quantized per tensor, by the options or by the plan.
pub(crate) fn any_per_tensor(opts: &QuantizeOptions, plan: &QuantPlan) -> bool {
    let per_tensor = |e: &PlanEntry| e.weights == Some(WeightGranularity::PerTensor);
    opts.weights == WeightGranularity::PerTensor
        || per_tensor(&plan.default)
        || plan.op_types.values().any(per_tensor)
        || plan.nodes.values().any(per_tensor)
}

/// The post-training passes of one quantization and what they share with the driver.
pub(crate) struct PtqPasses<'a> {
    /// The graph as imported (analytic bias correction reads its BatchNorm statistics).
    pub(crate) original: &'a Graph,
    /// The calibration data (`None` when no step needs it).
    pub(crate) held: Option<&'a Held>,
    pub(crate) opts: &'a PtqOptions,
    /// Some weights are quantized per tensor (CLE has something to gain).
    pub(crate) per_tensor_weights: bool,
    /// Told after each AdaRound layer.
    pub(crate) step_progress: &'a qlift_passes::Progress,
    /// The float graph `insert-qdq` started from (set by it).
    pub(crate) float_graph: &'a RefCell<Option<Graph>>,
    /// The QDQ graph the driver returns: each pass after `insert-qdq` updates it.
    pub(crate) qdq: &'a RefCell<Option<Graph>>,
    /// One line per step.
    pub(crate) notes: RefCell<Vec<String>>,
    /// CLE's per-channel maps, for analytic bias correction.
    pub(crate) cle_maps: RefCell<bias_correction::ChannelMaps>,
}

impl<'a> PtqPasses<'a> {
    fn replay(&self) -> Result<JitReplay<'a>, PassError> {
        self.held
            .map(|held| JitReplay { held })
            .ok_or_else(|| PassError::Bug("calibration data was not held".into()))
    }

    fn float_graph(&self) -> Result<Graph, PassError> {
        self.float_graph
            .borrow()
            .clone()
            .ok_or_else(|| PassError::Bug("no float graph before the QDQ graph".into()))
    }

    /// The passes before `insert-qdq`.
    pub(crate) fn before(&self) -> Vec<Pass<'_>> {
        let mut passes = Vec::new();
        if let Some(alpha) = self.opts.smooth {
            passes.push(Pass::transform(
                smooth::PASS,
                smooth::ABOUT,
                move |g: &Graph| {
                    let (out, sites) = smooth::smooth(g, &self.replay()?, alpha)?;
                    self.notes.borrow_mut().push(smooth_note(alpha, &sites));
                    Ok(out)
                },
            ));
        }
        if self.opts.cle {
            passes.push(Pass::transform(
                cle::PASS,
                cle::ABOUT,
                |g: &Graph| {
                    if !self.per_tensor_weights {
                        self.notes.borrow_mut().push(PER_CHANNEL_CLE.to_string());
                        return Ok(g.clone());
                    }
                    let replay = self.replay()?;
                    let (out, s) = cle::equalize(g, Some(&replay), true)?;
                    self.notes.borrow_mut().push(format!(
                        "equalize: {} pairs in {} sweeps ({} Relu6 never reached became Relu, {} clipped pairs left alone), {} channels' biases absorbed",
                        s.pairs, s.sweeps, s.relu6_as_relu, s.clipped, s.absorbed_channels
                    ));
                    *self.cle_maps.borrow_mut() = s.maps;
                    Ok(out)
                },
            ));
        }
        passes
    }

    /// The passes after `insert-qdq`.
    pub(crate) fn after(&self) -> Vec<Pass<'_>> {
        let mut passes = Vec::new();
        if let Some(opts) = self.opts.adaround {
            passes.push(Pass::transform(
                adaround::PASS,
                adaround::ABOUT,
                move |g: &Graph| {
                    let replay = self.replay()?;
                    let float = self.float_graph()?;
                    let progress = |done, layers| {
                        self.step_progress.report(done, layers, "adaround: layer")
                    };
                    let (out, s) = adaround::adaround(g, &float, &replay, &opts, &progress)?;
                    self.notes.borrow_mut().push(format!(
                        "adaround: {} layers, learned rounding kept on {} of {} output channels, {} weights rounded away from nearest, {}–{} Adam iterations per channel, {} replays{}",
                        s.layers, s.rows_improved, s.rows, s.flipped, s.iterations.0, s.iterations.1, s.replays,
                        match s.out_of_time {
                            0 => String::new(),
                            n => format!(" ({n} last layers kept nearest rounding: the budget ran out)"),
                        }
                    ));
                    *self.qdq.borrow_mut() = Some(out.clone());
                    Ok(out)
                },
            ));
        }
        if let Some(mode) = self.opts.bias_correction {
            passes.push(Pass::transform(
                bias_correction::PASS,
                bias_correction::ABOUT,
                move |g: &Graph| {
                    let float = self.float_graph()?;
                    let anchors = qlift_passes::quantize::layer::anchors(g, &float)?;
                    let means = match mode {
                        BiasCorrection::Empirical => {
                            bias_correction::empirical_means(&float, &anchors, &self.replay()?)?
                        }
                        BiasCorrection::Analytic => bias_correction::analytic_means(
                            g,
                            self.original,
                            &anchors,
                            &self.cle_maps.borrow(),
                        ),
                    };
                    let mut out = g.clone();
                    let n = bias_correction::apply(&mut out, &anchors, &means)?;
                    self.notes.borrow_mut().push(format!(
                        "bias-correction ({}): {n} of {} layers corrected",
                        match mode {
                            BiasCorrection::Empirical => "empirical",
                            BiasCorrection::Analytic => "analytic",
                        },
                        anchors.len()
                    ));
                    *self.qdq.borrow_mut() = Some(out.clone());
                    Ok(out)
                },
            ));
        }
        passes
    }
}
