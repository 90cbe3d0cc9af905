//! `qlift quantize`: a float model and calibration data in, a QDQ ONNX model out.

use super::{load_model, quantize_model, QuantArgs};
use anyhow::{bail, Context, Result};
use qlift::export_onnx;
use qlift_ir::text;
use qlift_passes::PipelineOptions;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  qlift quantize model.onnx --calib calib.npy -o model.qdq.onnx
  qlift quantize model.onnx --calib calib.npy --method percentile:99.99 -o model.qdq.onnx
  qlift quantize model.onnx --calib calib.npy --activations i8 -o model.qdq.onnx --qir model.qir

The output is ONNX Runtime's QDQ format (QuantizeLinear/DequantizeLinear around every
quantized op, int8 per-channel weights, int32 biases): ONNX Runtime and qlift both run it.")]
pub(crate) struct QuantizeArgs {
    /// The float ONNX model.
    model: PathBuf,
    #[command(flatten)]
    quant: QuantArgs,
    /// Where to write the QDQ ONNX model.
    #[arg(short, long)]
    output: PathBuf,
    /// Also write the lowered integer IR as text.
    #[arg(long, value_name = "FILE.qir")]
    qir: Option<PathBuf>,
}

pub(crate) fn exec(args: &QuantizeArgs) -> Result<()> {
    if args.quant.calib.is_empty() {
        bail!("quantize needs calibration data: --calib C.npy");
    }
    let graph = load_model(&args.model)?;
    let q = quantize_model(&graph, &args.quant, &PipelineOptions::default())?;
    let bytes = export_onnx(&q.qdq).context("writing the QDQ model")?;
    std::fs::write(&args.output, bytes).with_context(|| format!("writing {}", args.output.display()))?;
    if let Some(path) = &args.qir {
        let text = text::print(&q.lowered, &text::PrintOptions { full_constants: true, ..Default::default() });
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let integer = q.lowered.node_ids().filter(|&id| q.lowered.node(id).op.kind().is_some_and(|k| k.is_internal())).count();
    eprintln!("wrote {} ({integer} integer ops after lowering)", args.output.display());
    Ok(())
}
