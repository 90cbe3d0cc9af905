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
  qlift quantize minilm.onnx --mode dynamic -o minilm.dynamic.onnx
  qlift quantize minilm.onnx --mode weight-only --weight-bits 4 --block-size 32 -o minilm.w4.onnx

The output is ONNX Runtime's QDQ format (QuantizeLinear/DequantizeLinear around every
quantized op, int8 per-channel weights, int32 biases): ONNX Runtime and qlift both run it.
--mode dynamic writes DynamicQuantizeLinear + MatMulInteger + Mul (ONNX Runtime's
quantize_dynamic form); --mode weight-only writes DequantizeLinear with block_size (opset 21)
feeding each MatMul.")]
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
    super::dynamic::check(&args.quant)?;
    let calibrated = args.quant.mode == super::dynamic::Mode::Static;
    if calibrated && args.quant.calib.is_empty() {
        bail!("quantize needs calibration data: --calib C.npy (or --mode dynamic / weight-only, which need none)");
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
    let (qdq, lowered) = if calibrated {
        let q = quantize_model(&graph, &args.quant, &pipeline_options())?;
        (q.qdq, q.lowered)
    } else {
        let (g, _) = qlift_passes::run_pipeline(&graph, &pipeline_options())
            .context("running the pass pipeline")?;
        (g.clone(), g)
    };
    // Products a plan or --mode leaves to dynamic or weight-only quantization: in the
    // exported model and in the lowered IR alike.
    let (mut qdq, mut lowered) = (qdq, lowered);
    super::dynamic::apply(&mut qdq, &args.quant)?;
    super::dynamic::apply(&mut lowered, &args.quant)?;
    let bytes = export_onnx(&qdq).context("writing the quantized model")?;
    let mut files = Outputs::default();
    files.write(&args.output, &bytes)?;
    if let Some(path) = &args.qir {
        let text = text::print(
            &lowered,
            &text::PrintOptions {
                full_constants: true,
                ..Default::default()
            },
        );
        files.write(path, text.as_bytes())?;
    }
    files.commit()?;
    let integer = lowered
        .node_ids()
        .filter(|&id| lowered.node(id).op.kind().is_some_and(|k| k.is_internal()))
        .count();
    note!(
        "wrote {} ({integer} integer ops after lowering)",
        args.output.display()
    );
    Ok(())
}
