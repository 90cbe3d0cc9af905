//! `qlift quantize`: a float model and calibration data in, a QDQ ONNX model out.

use super::output::{check_writable, note, Outputs};
use super::{load_model, pipeline_options, quantize_model, quantized_ops, LoadArgs, QuantArgs};
use anyhow::{bail, Context, Result};
use qlift::export_onnx;
use qlift_ir::text;
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
    load: LoadArgs,
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
    check_writable(&args.output, "--output")?;
    if let Some(path) = &args.qir {
        check_writable(path, "--qir")?;
        if *path == args.output {
            bail!("--output and --qir are the same file: {}", path.display());
        }
    }
    let graph = load_model(&args.model, &args.load)?;
    if let Some(ops) = quantized_ops(&graph) {
        bail!(
            "{} is already quantized ({ops}); there is nothing to quantize: `qlift run`, `bench` and `compile` run it as it is",
            args.model.display()
        );
    }
    let q = quantize_model(&graph, &args.quant, &pipeline_options())?;
    let bytes = export_onnx(&q.qdq).context("writing the QDQ model")?;
    let mut files = Outputs::default();
    files.write(&args.output, &bytes)?;
    if let Some(path) = &args.qir {
        let text = text::print(
            &q.lowered,
            &text::PrintOptions {
                full_constants: true,
                ..Default::default()
            },
        );
        files.write(path, text.as_bytes())?;
    }
    files.commit()?;
    let integer = q
        .lowered
        .node_ids()
        .filter(|&id| {
            q.lowered
                .node(id)
                .op
                .kind()
                .is_some_and(|k| k.is_internal())
        })
        .count();
    note!(
        "wrote {} ({integer} integer ops after lowering)",
        args.output.display()
    );
    Ok(())
}
