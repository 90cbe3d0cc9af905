//! The post-training quantization driver: the rewrite pipeline with calibration and Q/DQ
//! insertion in it, from a float model and calibration samples to (a) the float QDQ model
//! (what `qlift quantize` exports for ONNX Runtime) and (b) the integer graph (what runs).

use crate::{Error, Limits};
use qlift_ir::{Graph, Tensor};
use qlift_passes::quantize::{insert_qdq, Calibration, QuantizeOptions};
use qlift_passes::{quantizing_pipeline, run_passes, PassRun, PipelineOptions};
use std::cell::RefCell;

/// Samples per interpreter run during calibration: large enough to amortize the per-run
/// work, small enough that every intermediate value of one batch fits in memory easily.
pub const CALIBRATION_BATCH: usize = 64;

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
    quantize_limited(graph, calibration, opts, pipeline, &Limits::default(), progress)
}

/// [`quantize`] under `limits`: calibration runs the interpreter on batches of at most
/// [`CALIBRATION_BATCH`] samples, fewer when that many would need more than
/// [`Limits::max_run_bytes`] (an error when one sample does).
pub fn quantize_limited(
    graph: &Graph,
    calibration: &[Tensor],
    opts: &QuantizeOptions,
    pipeline: &PipelineOptions,
    limits: &Limits,
    progress: &dyn Fn(usize, usize),
) -> Result<Quantized, Error> {
    let samples = calibration_samples(graph, calibration)?;
    let stats = RefCell::new(None);
    let qdq = RefCell::new(None);
    let batch_limit = RefCell::new(None);
    let insert = |g: &Graph| {
        let per_sample = crate::limits::interpreter_bytes(g, 1).unwrap_or(u64::MAX);
        if per_sample > limits.max_run_bytes {
            *batch_limit.borrow_mut() = Some(per_sample);
            return Err(qlift_passes::PassError::Unsupported("calibration: one sample needs more memory than the run limit".into()));
        }
        let step = (limits.max_run_bytes / per_sample.max(1)).clamp(1, CALIBRATION_BATCH as u64) as usize;
        let mut cal = Calibration::default();
        for start in (0..samples).step_by(step) {
            let end = (start + step).min(samples);
            let batch: Vec<Tensor> =
                calibration.iter().map(|t| t.slice_outer(start, end)).collect::<Result<_, _>>().map_err(qlift_passes::PassError::Bug)?;
            cal.observe(g, &batch)?;
            progress(end, samples);
        }
        let out = insert_qdq(g, &cal, opts)?;
        *stats.borrow_mut() = Some((cal.samples(), cal.non_finite()));
        *qdq.borrow_mut() = Some(out.clone());
        Ok(out)
    };
    let result = run_passes(graph, &quantizing_pipeline(insert), pipeline);
    if let Some(bytes) = batch_limit.into_inner() {
        let what = "memory for calibrating one sample (every intermediate value)".to_string();
        return Err(Error::Limit { what, value: bytes, limit: limits.max_run_bytes });
    }
    let (lowered, runs) = result?;
    let (samples, non_finite) = stats.into_inner().unwrap_or_default();
    // A pipeline stopped before `insert-qdq` (`dump --after fold-bn`) has no QDQ graph yet:
    // the graph it stopped at stands for it.
    let qdq = qdq.into_inner().unwrap_or_else(|| lowered.clone());
    Ok(Quantized { qdq, lowered, runs, samples, non_finite })
}

/// Checks calibration inputs against the graph: one per input, same sample count, at
/// least one sample. Returns the sample count.
fn calibration_samples(graph: &Graph, calibration: &[Tensor]) -> Result<usize, Error> {
    let inputs = graph.input_values();
    let bad = |message: String| Error::Value { name: "calibration data".to_string(), message };
    if calibration.len() != inputs.len() {
        return Err(bad(format!("the model has {} inputs, {} calibration tensors were given", inputs.len(), calibration.len())));
    }
    let counts: Vec<usize> = calibration.iter().map(|t| t.shape().first().copied().unwrap_or(0)).collect();
    match counts.first() {
        Some(&n) if n > 0 && counts.iter().all(|&c| c == n) => Ok(n),
        _ => Err(bad(format!("calibration tensors need the same, non-zero number of samples on axis 0 (got {counts:?})"))),
    }
}
