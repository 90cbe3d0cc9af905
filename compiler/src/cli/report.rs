//! `qlift report`: per-layer quantization error of the quantized model against fp32.

use super::{bind_inputs, load_model, quantize_model, QuantArgs};
use anyhow::{bail, Context, Result};
use qlift::report::layer_errors;
use qlift_passes::{run_pipeline, PipelineOptions};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  qlift report model.onnx --calib calib.npy --input x.npy
  qlift report model.onnx --calib calib.npy --input x.npy --method mse --json

Layers are matched by value name and listed worst first (lowest SQNR), as ONNX Runtime's
qdq_loss_debug does; the last line is the model output.")]
pub(crate) struct ReportArgs {
    /// The float ONNX model.
    model: PathBuf,
    #[command(flatten)]
    quant: QuantArgs,
    /// Inputs to compare on (FILE.npy or NAME=FILE.npy).
    #[arg(short, long = "input", required = true)]
    inputs: Vec<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn exec(args: &ReportArgs) -> Result<()> {
    if args.quant.calib.is_empty() {
        bail!("report needs calibration data: --calib C.npy");
    }
    let graph = load_model(&args.model)?;
    let (float, _) = run_pipeline(&graph, &PipelineOptions::default()).context("running the pass pipeline")?;
    let q = quantize_model(&graph, &args.quant, &PipelineOptions::default())?;
    let inputs = bind_inputs(&graph, &args.inputs)?;
    let rows = layer_errors(&float, &q.lowered, &inputs)?;
    let outputs: Vec<&str> = float.outputs().iter().map(|v| float.value(*v).name.as_str()).collect();
    if args.json {
        let layers: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name, "op": r.op, "sqnr_db": finite_or_null(r.sqnr_db),
                    "max_abs_error": r.max_abs_error, "elements": r.elements,
                    "output": outputs.contains(&r.name.as_str()),
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "model": args.model.display().to_string(), "method": args.quant.method.to_string(), "layers": layers }));
        return Ok(());
    }
    println!("{:<36} {:<20} {:>10} {:>12} {:>9}", "layer", "op", "SQNR dB", "max error", "elements");
    for r in &rows {
        let mark = if outputs.contains(&r.name.as_str()) { " (output)" } else { "" };
        println!("{:<36} {:<20} {:>10.2} {:>12.6} {:>9}{mark}", r.name, r.op, r.sqnr_db, r.max_abs_error, r.elements);
    }
    Ok(())
}

/// JSON has no infinity: an exact layer's SQNR is `null`.
fn finite_or_null(v: f64) -> serde_json::Value {
    if v.is_finite() {
        serde_json::json!(v)
    } else {
        serde_json::Value::Null
    }
}
