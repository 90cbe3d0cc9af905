//! The post-training quantization driver: the rewrite pipeline with calibration and Q/DQ
//! insertion in it, from a float model and calibration samples to (a) the float QDQ model
//! (what `qlift quantize` exports for ONNX Runtime) and (b) the integer graph (what runs).

use crate::{Error, Limits};
use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::{DType, Graph, NodeOp, Symbol, Tensor, ValueId};
use qlift_passes::quantize::recurrent::quantize_recurrent;
use qlift_passes::quantize::{
    insert_qdq_planned, resolve, Calibration, Decision, ImportedNames, QuantPlan, QuantizeOptions,
    ResolvedPlan,
};
use qlift_passes::{
    quantizing_pipeline, quantizing_pipeline_with, run_passes, PassRun, PipelineOptions,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

/// Samples per interpreter run during calibration: large enough to amortize the per-run
/// work, small enough that every intermediate value of one batch fits in memory easily.
pub const CALIBRATION_BATCH: usize = 64;

/// Bytes of values one calibration run may produce, below [`Limits::max_run_bytes`]: the
/// tracer makes every f32 value an output, so runs of [`CALIBRATION_BATCH`] MobileNetV2
/// samples held 2 GB at once (ONNX Runtime's `quantize_static` peaks near 370 MB).
/// The statistics do not depend on how samples are grouped into runs; 64 MiB still gives
/// the standard CNNs runs of two samples or more, which the tracer splits across threads.
pub const CALIBRATION_RUN_BYTES: u64 = 64 << 20;

/// A quantized model.
pub struct Quantized {
    /// The float graph with QuantizeLinear/DequantizeLinear pairs (ONNX Runtime's QDQ form).
    pub qdq: Graph,
    /// The graph after the whole pipeline: integer ops wherever they apply.
    pub lowered: Graph,
    /// What each pass did.
    pub runs: Vec<PassRun>,
    /// Calibration samples seen.
    pub samples: usize,
    /// NaN and ±Inf values met in calibration and skipped (they carry no range).
    pub non_finite: u64,
    /// The statistics every activation range was chosen from (empty when the pipeline
    /// stopped before `insert-qdq`): what a report shows next to the chosen ranges.
    pub calibration: Calibration,
    /// What the post-training steps (CLE, AdaRound, bias correction) did, one line each.
    pub ptq_notes: Vec<String>,
    /// What `insert-qdq` decided for every unit the policy allows in integers.
    pub decisions: Vec<Decision>,
    /// The plan that reproduces this quantization bit for bit whatever options it is applied
    /// with ([`QuantPlan::frozen`]): what `--emit-plan` writes.
    pub plan: QuantPlan,
}

/// Quantizes `graph` from calibration inputs (one tensor per graph input, samples along
/// axis 0). `progress(done, total)` is called after each calibration batch.
pub fn quantize(
    graph: &Graph,
    calibration: &[Tensor],
    opts: &QuantizeOptions,
    pipeline: &PipelineOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<Quantized, Error> {
    quantize_limited(
        graph,
        calibration,
        opts,
        pipeline,
        &Limits::default(),
        progress,
    )
}

/// [`quantize`] under `limits`: calibration runs the model on batches of at most
/// [`CALIBRATION_BATCH`] samples, fewer when that many would need more than
/// [`CALIBRATION_RUN_BYTES`] or [`Limits::max_run_bytes`] (an error when one sample needs
/// more than the latter), or exactly the batch a model fixes on axis 0.
pub fn quantize_limited(
    graph: &Graph,
    calibration: &[Tensor],
    opts: &QuantizeOptions,
    pipeline: &PipelineOptions,
    limits: &Limits,
    progress: &dyn Fn(usize, usize),
) -> Result<Quantized, Error> {
    let plan = QuantPlan::default();
    quantize_limited_planned(graph, calibration, opts, &plan, pipeline, limits, progress)
}

/// [`quantize_limited`] under a quantization plan (`qlift_passes::quantize::plan`): its
/// entries over `opts`, per node.
pub fn quantize_limited_planned(
    graph: &Graph,
    calibration: &[Tensor],
    opts: &QuantizeOptions,
    plan: &QuantPlan,
    pipeline: &PipelineOptions,
    limits: &Limits,
    progress: &dyn Fn(usize, usize),
) -> Result<Quantized, Error> {
    // Checked before the pipeline runs, so that bad data fails at once.
    let calibration = with_sample_axis(graph, calibration.to_vec())?;
    check_batch(graph, &calibration, fixed_batch(graph)?)?;
    let mut batches = Some(calibration);
    quantize_batches(
        graph,
        &mut || batches.take().map(Ok),
        opts,
        plan,
        pipeline,
        limits,
        progress,
    )
}

/// Calibration data read one batch at a time: each call gives the next batch (one tensor
/// per graph input, samples on axis 0), `None` after the last, or an error that stops
/// quantization (a Python iterator that raised, a file that did not read).
pub type CalibrationBatches<'a> = dyn FnMut() -> Option<Result<Vec<Tensor>, Error>> + 'a;

/// [`quantize_limited`] on calibration data that streams: a data set too large to hold at
/// once is read batch by batch while `insert-qdq` calibrates, each batch split into runs as
/// [`quantize_limited`] splits its one. The ranges equal those of the batches concatenated
/// (the statistics are exact whatever the grouping, `qlift_passes::calibrate::TensorStats`).
/// `progress(done, seen)` counts samples calibrated and samples read so far.
pub fn quantize_batches(
    graph: &Graph,
    batches: &mut CalibrationBatches,
    opts: &QuantizeOptions,
    plan: &QuantPlan,
    pipeline: &PipelineOptions,
    limits: &Limits,
    progress: &dyn Fn(usize, usize),
) -> Result<Quantized, Error> {
    let fixed_batch = fixed_batch(graph)?;
    // The post-training steps read the calibration data several times: it is held.
    let held = if opts.ptq.replays() {
        Some(crate::ptq::hold_batches(
            graph,
            batches,
            fixed_batch,
            limits,
        )?)
    } else {
        None
    };
    let mut replayed = held.as_ref().map(|h| h.batches.iter().cloned().map(Ok));
    let mut from_held = || replayed.as_mut().and_then(|r| r.next());
    let batches: &mut CalibrationBatches = match held {
        Some(_) => &mut from_held,
        None => batches,
    };
    let batches = RefCell::new(batches);
    // Errors of the data (not of the pipeline), returned as they are.
    let data_error = RefCell::new(None);
    let stats = RefCell::new(None);
    let kept = RefCell::new(Calibration::default());
    let qdq = RefCell::new(None);
    // The float graph `insert-qdq` started from (AdaRound and bias correction read its
    // weights and its activations).
    let float_graph = RefCell::new(None);
    let decided = RefCell::new(None);
    let batch_limit = RefCell::new(None);
    let insert = |g: &Graph| {
        // A plan that does not fit the model fails before calibration runs.
        let (resolved, imported) = resolve_plan(graph, g, opts, plan)?;
        let per_sample = crate::limits::interpreter_bytes(g, 1).unwrap_or(u64::MAX);
        if per_sample > limits.max_run_bytes {
            *batch_limit.borrow_mut() = Some(per_sample);
            return Err(qlift_passes::PassError::Unsupported(
                "calibration: one sample needs more memory than the run limit".into(),
            ));
        }
        let step = match fixed_batch {
            Some(k) => k,
            None => (limits.max_run_bytes.min(CALIBRATION_RUN_BYTES) / per_sample.max(1))
                .clamp(1, CALIBRATION_BATCH as u64) as usize,
        };
        let mut cal = Calibration::default();
        let mut tracer = Tracer::default();
        let (mut done, mut seen) = (0, 0);
        loop {
            let Some(next) = (*batches.borrow_mut())() else {
                break;
            };
            let checked = next.and_then(|b| {
                let b = with_sample_axis(graph, b)?;
                let samples = check_batch(graph, &b, fixed_batch)?;
                Ok((b, samples))
            });
            let (calibration, samples) = match checked {
                Ok(batch) => batch,
                Err(e) => {
                    *data_error.borrow_mut() = Some(e);
                    return Err(qlift_passes::PassError::Unsupported(
                        "calibration data".into(),
                    ));
                }
            };
            seen += samples;
            for start in (0..samples).step_by(step) {
                let end = (start + step).min(samples);
                let batch: Vec<Tensor> = calibration
                    .iter()
                    .map(|t| t.slice_outer(start, end))
                    .collect::<Result<_, _>>()
                    .map_err(qlift_passes::PassError::Bug)?;
                tracer.observe(g, &batch, &mut cal)?;
                progress(done + end, seen);
            }
            done += samples;
        }
        if done == 0 {
            *data_error.borrow_mut() = Some(Error::Value {
                name: "calibration data".to_string(),
                message: "no calibration samples were given".to_string(),
            });
            return Err(qlift_passes::PassError::Unsupported(
                "calibration data".into(),
            ));
        }
        let mut out = insert_qdq_planned(g, &cal, &resolved)?;
        *float_graph.borrow_mut() = Some(g.clone());
        *stats.borrow_mut() = Some((cal.samples(), cal.non_finite()));
        *qdq.borrow_mut() = Some(out.graph.clone());
        // Recurrent layers take their integer form here, after the QDQ graph is kept: ONNX
        // has no form for it, so the exported QDQ model keeps them float (as ONNX Runtime's
        // own static quantization does) while the compiled graph runs them in integers.
        quantize_recurrent(&mut out.graph, &cal, opts)?;
        *decided.borrow_mut() = Some((out.decisions, imported));
        *kept.borrow_mut() = cal;
        Ok(out.graph)
    };
    let ptq = crate::ptq::PtqPasses {
        original: graph,
        held: held.as_ref(),
        opts: &opts.ptq,
        per_tensor_weights: crate::ptq::any_per_tensor(opts, plan),
        step_progress: &pipeline.step_progress,
        float_graph: &float_graph,
        qdq: &qdq,
        notes: RefCell::default(),
        cle_maps: RefCell::default(),
    };
    let result = run_passes(
        graph,
        &quantizing_pipeline_with(ptq.before(), insert, ptq.after()),
        pipeline,
    );
    let ptq_notes = ptq.notes.into_inner();
    if let Some(e) = data_error.into_inner() {
        return Err(e);
    }
    if let Some(bytes) = batch_limit.into_inner() {
        let what = "memory for calibrating one sample (every intermediate value)".to_string();
        return Err(Error::Limit {
            what,
            value: bytes,
            limit: limits.max_run_bytes,
        });
    }
    let (lowered, runs) = result?;
    let (samples, non_finite) = stats.into_inner().unwrap_or_default();
    // A pipeline stopped before `insert-qdq` (`dump --after fold-bn`) has no QDQ graph yet:
    // the graph it stopped at stands for it.
    let qdq = qdq.into_inner().unwrap_or_else(|| lowered.clone());
    let (decisions, imported) = decided.into_inner().unwrap_or_default();
    Ok(Quantized {
        qdq,
        lowered,
        runs,
        samples,
        non_finite,
        calibration: kept.into_inner(),
        ptq_notes,
        plan: plan.frozen(opts, &decisions, &imported),
        decisions,
    })
}

/// Quantizes `graph` again under another plan from the statistics of an earlier
/// quantization of it (`calibration`, which depends on the float graph only, not on the
/// plan): what trying plan after plan costs without calibrating each time.
pub fn requantize(
    graph: &Graph,
    calibration: &Calibration,
    opts: &QuantizeOptions,
    plan: &QuantPlan,
    pipeline: &PipelineOptions,
) -> Result<Quantized, Error> {
    let qdq = RefCell::new(None);
    let decided = RefCell::new(None);
    let insert = |g: &Graph| {
        let (resolved, imported) = resolve_plan(graph, g, opts, plan)?;
        let mut out = insert_qdq_planned(g, calibration, &resolved)?;
        *qdq.borrow_mut() = Some(out.graph.clone());
        // As in `quantize_batches`.
        quantize_recurrent(&mut out.graph, calibration, opts)?;
        *decided.borrow_mut() = Some((out.decisions, imported));
        Ok(out.graph)
    };
    let (lowered, runs) = run_passes(graph, &quantizing_pipeline(insert), pipeline)?;
    let qdq = qdq.into_inner().unwrap_or_else(|| lowered.clone());
    let (decisions, imported) = decided.into_inner().unwrap_or_default();
    Ok(Quantized {
        qdq,
        lowered,
        runs,
        samples: calibration.samples(),
        non_finite: calibration.non_finite(),
        calibration: Calibration::default(),
        ptq_notes: Vec::new(),
        plan: plan.frozen(opts, &decisions, &imported),
        decisions,
    })
}

/// `plan` resolved against `rewritten` (the graph `insert-qdq` receives), with the nodes of
/// `imported` (the model before the rewrites) it may also name.
fn resolve_plan(
    imported: &Graph,
    rewritten: &Graph,
    opts: &QuantizeOptions,
    plan: &QuantPlan,
) -> Result<(ResolvedPlan, ImportedNames), qlift_passes::PassError> {
    let names = ImportedNames::between(imported, rewritten);
    Ok((resolve(plan, rewritten, opts, &names)?, names))
}

/// Checks one batch of calibration data against the graph (see [`calibration_samples`])
/// and against the batch the model fixes, if it does. Returns its sample count.
pub(crate) fn check_batch(
    graph: &Graph,
    calibration: &[Tensor],
    fixed_batch: Option<usize>,
) -> Result<usize, Error> {
    let samples = calibration_samples(graph, calibration)?;
    if let Some(step) = fixed_batch.filter(|&k| samples % k != 0) {
        return Err(Error::Value {
            name: "calibration data".to_string(),
            message: format!("the model takes {step} samples at a time; {samples} calibration samples do not divide into runs of {step}"),
        });
    }
    Ok(samples)
}

/// The extent a model's inputs fix on axis 0, if they do (a model exported with batch 1 runs
/// one calibration sample at a time); `None` when the model takes any batch.
fn fixed_batch(graph: &Graph) -> Result<Option<usize>, Error> {
    let fixed: Vec<usize> = graph
        .input_values()
        .iter()
        .filter_map(|&v| {
            graph
                .value_type(v)
                .shape
                .dims()
                .first()
                .and_then(|d| d.fixed())
        })
        .collect();
    match fixed.first() {
        None => Ok(None),
        Some(&k) if k > 0 && fixed.iter().all(|&f| f == k) => Ok(Some(k)),
        _ => Err(Error::Value { name: "calibration data".to_string(), message: format!("the model's inputs fix different extents on axis 0 ({fixed:?}); calibration takes samples along axis 0") }),
    }
}

/// Calibration tensors with one axis less than their input (one sample given without its
/// sample axis) get it added; the tensors are moved, not copied.
pub(crate) fn with_sample_axis(
    graph: &Graph,
    calibration: Vec<Tensor>,
) -> Result<Vec<Tensor>, Error> {
    let ranks: Vec<usize> = graph
        .input_values()
        .iter()
        .map(|&v| graph.value_type(v).shape.rank())
        .collect();
    calibration
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if ranks
                .get(i)
                .is_some_and(|&rank| t.shape().len() + 1 == rank)
            {
                let shape = std::iter::once(1)
                    .chain(t.shape().iter().copied())
                    .collect();
                t.reshaped(shape).map_err(|message| Error::Value {
                    name: "calibration data".to_string(),
                    message,
                })
            } else {
                Ok(t)
            }
        })
        .collect()
}

/// Checks calibration inputs against the graph: one per input, same sample count, at
/// least one sample. Returns the sample count.
fn calibration_samples(graph: &Graph, calibration: &[Tensor]) -> Result<usize, Error> {
    let inputs = graph.input_values();
    let bad = |message: String| Error::Value {
        name: "calibration data".to_string(),
        message,
    };
    if calibration.len() != inputs.len() {
        return Err(bad(format!(
            "the model has {} inputs, {} calibration tensors were given",
            inputs.len(),
            calibration.len()
        )));
    }
    let counts: Vec<usize> = calibration
        .iter()
        .map(|t| t.shape().first().copied().unwrap_or(0))
        .collect();
    match counts.first() {
        Some(&n) if n > 0 && counts.iter().all(|&c| c == n) => Ok(n),
        _ => Err(bad(format!("calibration tensors need the same, non-zero number of samples on axis 0 (got {counts:?})"))),
    }
}

/// Runs the float graph for calibration on compiled code: the graph with every f32 value it
/// computes made an output, compiled once per binding of its named dimensions (the batch
/// stays symbolic), so each batch costs a run of generated kernels instead of the scalar
/// interpreter (≈ 2 s per ResNet-18 image there). A graph the JIT cannot compile is traced by
/// the interpreter, which stays the oracle the JIT is tested against; the two agree within
/// float rounding, far below what a range is chosen from.
#[derive(Default)]
struct Tracer {
    /// Programs by the named dimensions they were specialized to, and the batch when the
    /// graph needed that too (shape arithmetic on the batch); `None` when it did not compile.
    programs: HashMap<(BTreeMap<Symbol, usize>, Option<usize>), Option<(JitProgram, Vec<String>)>>,
}

impl Tracer {
    fn observe(
        &mut self,
        graph: &Graph,
        batch: &[Tensor],
        cal: &mut Calibration,
    ) -> Result<(), qlift_passes::PassError> {
        let samples = batch
            .first()
            .map_or(0, |t| t.shape().first().copied().unwrap_or(1));
        let binding =
            qlift_ir::bind_graph_inputs(graph, batch.iter().map(|t| (t.dtype(), t.shape())))?;
        let any_batch = (binding.syms.clone(), None);
        let this_batch = (binding.syms.clone(), binding.batch);
        let key = if self.programs.contains_key(&any_batch) {
            any_batch
        } else if self.programs.contains_key(&this_batch) {
            this_batch
        } else {
            let (key, program) = match traced_program(graph, &binding) {
                Some((program, names, batch)) => {
                    ((binding.syms.clone(), batch), Some((program, names)))
                }
                None => (any_batch, None),
            };
            self.programs.insert(key.clone(), program);
            key
        };
        match &self.programs[&key] {
            Some((program, names)) => {
                let outputs = program.run(batch).map_err(|e| {
                    qlift_passes::PassError::Unsupported(format!("calibration run: {e}"))
                })?;
                cal.observe_values(
                    names.iter().map(String::as_str).zip(outputs.iter()),
                    samples,
                );
                Ok(())
            }
            None => cal.observe(graph, batch),
        }
    }
}

/// `graph` specialized to `binding` (the batch kept symbolic where the graph allows) with
/// every f32 value it computes as an output, compiled; with the value names in output order
/// and the batch it was specialized to, if any. `None` when it does not compile.
fn traced_program(
    graph: &Graph,
    binding: &qlift_ir::Binding,
) -> Option<(JitProgram, Vec<String>, Option<usize>)> {
    traced_program_of(graph, binding, None)
}

/// [`traced_program`] with the outputs `names` (every f32 value when `None`), and only the
/// nodes they depend on: AdaRound replays the quantized model up to one layer's input, and
/// without the rest (magika's Conv after its embedding) such a replay costs the prefix only.
pub(crate) fn traced_program_of(
    graph: &Graph,
    binding: &qlift_ir::Binding,
    names: Option<&[String]>,
) -> Option<(JitProgram, Vec<String>, Option<usize>)> {
    let (mut g, used) = if qlift_ir::needs_binding(graph) {
        qlift_ir::specialize_for(graph, binding).ok()?
    } else {
        (graph.clone(), binding.clone())
    };
    let batch = if qlift_ir::needs_binding(graph) {
        used.batch
    } else {
        None
    };
    let computed: Vec<ValueId> = g
        .topo_order()
        .ok()?
        .into_iter()
        .filter(|&id| matches!(g.node(id).op, NodeOp::Apply(_)))
        .flat_map(|id| {
            (0..g.node(id).outputs.len()).map(move |output| ValueId { node: id, output })
        })
        .filter(|&v| g.value_type(v).dtype == DType::F32)
        .collect();
    let values: Vec<ValueId> = match names {
        Some(names) => names
            .iter()
            .map(|n| g.find_value(n))
            .collect::<Option<_>>()?,
        None => g
            .input_value_iter()
            .filter(|&v| g.value_type(v).dtype == DType::F32)
            .chain(computed)
            .collect(),
    };
    let names = values.iter().map(|&v| g.value(v).name.clone()).collect();
    g.set_outputs(values).ok()?;
    g.remove_dead_nodes();
    let mut program = JitProgram::compile(&g, &CodegenOptions::default()).ok()?;
    program.set_threads(std::thread::available_parallelism().map_or(1, |n| n.get()));
    Some((program, names, batch))
}
