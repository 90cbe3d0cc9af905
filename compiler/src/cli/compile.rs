//! `qlift compile`: ahead-of-time compilation to an object file and a C header.

use super::{load_model, quantize_model, QuantArgs};
use anyhow::{Context, Result};
use qlift_passes::{run_pipeline, PipelineOptions};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  qlift compile model.onnx --calib calib.npy -o model.o --header model.h --name digits
  qlift compile model.onnx -o model.o --header model.h              # fp32
  qlift compile model.onnx --calib calib.npy -o model.o --header model.h --target x86_64-apple-darwin
  cc app.c model.o -lm -o app

The header declares `int32_t NAME_run(const void *const *inputs, void *const *outputs,
void *scratch, int64_t batch)`, the inputs' and outputs' shapes, dtypes and quantization
parameters, and NAME_SCRATCH_BYTES(batch). See examples/aot_c/.")]
pub(crate) struct CompileArgs {
    /// The ONNX model (.onnx) or IR text (.qir).
    model: PathBuf,
    #[command(flatten)]
    quant: QuantArgs,
    /// The object file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// The C header to write.
    #[arg(long)]
    header: PathBuf,
    /// Target triple (target-lexicon syntax); the host by default.
    #[arg(long)]
    target: Option<String>,
    /// Prefix of the C symbols (`NAME_run`, `NAME_SCRATCH_BYTES`).
    #[arg(long, default_value = "model")]
    name: String,
}

pub(crate) fn exec(args: &CompileArgs) -> Result<()> {
    let graph = load_model(&args.model)?;
    let lowered = if args.quant.calib.is_empty() {
        run_pipeline(&graph, &PipelineOptions::default()).context("running the pass pipeline")?.0
    } else {
        quantize_model(&graph, &args.quant, &PipelineOptions::default())?.lowered
    };
    let opts = qlift::CodegenOptions { target: args.target.clone(), ..Default::default() };
    let artifact = qlift_codegen::compile_object(&lowered, &args.name, &opts).map_err(qlift::Error::from).with_context(|| format!("compiling {}", args.model.display()))?;
    std::fs::write(&args.output, &artifact.object).with_context(|| format!("writing {}", args.output.display()))?;
    std::fs::write(&args.header, &artifact.header).with_context(|| format!("writing {}", args.header.display()))?;
    eprintln!(
        "wrote {} ({} bytes, {} kernels) and {}",
        args.output.display(),
        artifact.object.len(),
        artifact.program.steps.len(),
        args.header.display()
    );
    Ok(())
}
