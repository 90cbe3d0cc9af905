//! `qlift report`: per-layer quantization error of the quantized model against fp32.

use super::output::{check_writable, outln, print};
use super::{
    bind_inputs, load_model, pipeline_options, quantize_model, quantized_ops, use_calibration,
    LoadArgs, QuantArgs,
};
use anyhow::{bail, Context, Result};
use qlift::report::compare_calibrated;
use qlift_passes::{run_pipeline, PipelineOptions, PrintAfter};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  qlift report model.onnx --calib calib.npy --input x.npy
  qlift report model.onnx --calib calib.npy --input x.npy --method mse --json
  qlift report model.onnx --calib calib.npy --input x.npy --html report.html --profile

Layers are matched by value name and listed worst first (lowest SQNR), as ONNX Runtime's
qdq_loss_debug does; the last line is the model output. Each layer's error is split into the
SQNR each cause alone would leave: its own rounding (round), values the chosen range clipped
that calibration had seen (clip), values beyond anything calibration saw (sat), and what its
operands and weights brought (upstream); definitions in compiler/src/report.rs.")]
pub(crate) struct ReportArgs {
    /// The float ONNX model (or an already quantized one: then it is compared with what
    /// qlift lowers it to, and --calib is not needed).
    model: PathBuf,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    quant: QuantArgs,
    /// Inputs to compare on (FILE.npy or NAME=FILE.npy).
    #[arg(short, long = "input", required = true)]
    inputs: Vec<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report: the compiled graph colored by SQNR, per-layer
    /// histograms and weights, SQNR along depth, fp32 against int8 outputs, the pipeline.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// With --html: time every kernel (JIT timers) and show each node's time share and GMAC/s.
    #[arg(long, requires = "html")]
    profile: bool,
}

pub(crate) fn exec(args: &ReportArgs) -> Result<()> {
    let graph = load_model(&args.model, &args.load)?;
    let inputs = bind_inputs(&graph, &args.inputs)?;
    // A float model: the fp32 pipeline against the model quantized from --calib. A model that
    // is already quantized (QDQ, QOperator): the model as it is (ONNX semantics, run by the
    // reference interpreter) against what qlift lowers it to; both sides are compared as
    // real numbers, each dequantized with its own parameters.
    if let Some(path) = &args.html {
        check_writable(path, "--html")?;
    }
    // The IR after every pass is kept for the HTML report's pipeline.
    let pipeline = PipelineOptions {
        print_after: if args.html.is_some() {
            PrintAfter::All
        } else {
            PrintAfter::Nothing
        },
        ..pipeline_options()
    };
    let (reference, quantized, runs, calibration) = if quantized_ops(&graph).is_some() {
        use_calibration(&graph, &args.quant, &args.model);
        let (lowered, runs) =
            run_pipeline(&graph, &pipeline).context("running the pass pipeline")?;
        (graph.clone(), lowered, runs, None)
    } else {
        if args.quant.calib.is_empty() {
            bail!("report needs calibration data for a float model: --calib C.npy");
        }
        let (float, _) =
            run_pipeline(&graph, &pipeline_options()).context("running the pass pipeline")?;
        let q = quantize_model(&graph, &args.quant, &pipeline)?;
        (float, q.lowered, q.runs, Some(q.calibration))
    };
    let comparison = compare_calibrated(
        &reference,
        &quantized,
        &inputs,
        calibration.as_ref(),
        &qlift::Limits::default(),
    )?;
    if let Some(path) = &args.html {
        let kernels = super::html::kernels(&quantized, true, &inputs, args.profile);
        let samples = args.inputs.join(" ");
        let mut summary = vec![("inputs compared".to_string(), samples)];
        if calibration.is_some() {
            summary.push(args.quant.calibration_row());
        }
        let report = qlift::html::Report {
            title: args.model.display().to_string(),
            summary,
            graph: &quantized,
            original: Some(&graph),
            float: Some(&reference),
            steps: super::html::steps(&graph, &runs),
            layers: comparison.layers.clone(),
            outputs: comparison.outputs,
            calibration: calibration.as_ref(),
            kernels,
        };
        super::html::write(path, &report)?;
    }
    let rows = comparison.layers;
    let outputs: Vec<&str> = reference
        .outputs()
        .iter()
        .map(|v| reference.value(*v).name.as_str())
        .collect();
    if args.json {
        let layers: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name, "op": r.op, "sqnr_db": finite_or_null(r.sqnr_db),
                    "max_abs_error": r.max_abs_error, "elements": r.elements,
                    "output": outputs.contains(&r.name.as_str()),
                    "rounding_db": finite_or_null(r.split.db(r.split.rounding)),
                    "clipping_db": finite_or_null(r.split.db(r.split.clipping)),
                    "saturation_db": finite_or_null(r.split.db(r.split.saturation)),
                    "upstream_db": finite_or_null(r.split.db(r.split.upstream)),
                })
            })
            .collect();
        return outln!(
            "{}",
            serde_json::json!({ "model": args.model.display().to_string(), "method": args.quant.method.to_string(), "layers": layers })
        );
    }
    let mut table = format!(
        "{:<36} {:<20} {:>10} {:>12} {:>9} {:>8} {:>8} {:>8} {:>9}\n",
        "layer", "op", "SQNR dB", "max error", "elements", "round", "clip", "sat", "upstream"
    );
    for r in &rows {
        let mark = if outputs.contains(&r.name.as_str()) {
            " (output)"
        } else {
            ""
        };
        let part = |x: f64| match r.split.db(x) {
            db if db.is_nan() => "-".to_string(),
            db => format!("{db:.1}"),
        };
        table.push_str(&format!(
            "{:<36} {:<20} {:>10.2} {:>12.6} {:>9} {:>8} {:>8} {:>8} {:>9}{mark}\n",
            r.name,
            r.op,
            r.sqnr_db,
            r.max_abs_error,
            r.elements,
            part(r.split.rounding),
            part(r.split.clipping),
            part(r.split.saturation),
            part(r.split.upstream)
        ));
    }
    print(&table)
}

/// JSON has no infinity: an exact layer's SQNR is `null`.
fn finite_or_null(v: f64) -> serde_json::Value {
    if v.is_finite() {
        serde_json::json!(v)
    } else {
        serde_json::Value::Null
    }
}
