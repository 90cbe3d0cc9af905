//! `qlift compile`: ahead-of-time compilation to an object file and a C header.

use super::output::{check_writable, note, Outputs};
use super::{load_model, pipeline_options, quantize_model, use_calibration, LoadArgs, QuantArgs};
use anyhow::{bail, Context, Result};
use qlift_passes::run_pipeline;
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
    load: LoadArgs,
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
    /// Prefix of the C symbols (`NAME_run`, `NAME_SCRATCH_BYTES`): a C identifier.
    #[arg(long, default_value = "model", value_parser = c_identifier)]
    name: String,
}

/// `--name`: a C identifier, checked before any work.
fn c_identifier(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not a C identifier (letters, digits and _, not starting with a digit)"
        ))
    }
}

pub(crate) fn exec(args: &CompileArgs) -> Result<()> {
    // Everything that can be checked without the model, before the work.
    check_writable(&args.output, "--output")?;
    check_writable(&args.header, "--header")?;
    if args.output == args.header {
        bail!(
            "--output and --header are the same file: {}",
            args.output.display()
        );
    }
    let opts = qlift::CodegenOptions {
        target: args.target.clone(),
        ..Default::default()
    };
    qlift_codegen::isa::target_isa(&opts)
        .map_err(qlift::Error::from)
        .context("--target")?;
    let graph = load_model(&args.model, &args.load)?;
    let lowered = if use_calibration(&graph, &args.quant, &args.model) {
        quantize_model(&graph, &args.quant, &pipeline_options())?.lowered
    } else {
        run_pipeline(&graph, &pipeline_options())
            .context("running the pass pipeline")?
            .0
    };
    // The lowered graph is held to the same limits as an imported one (sizes computed with
    // checked arithmetic), so the header never describes a wrapped size.
    qlift::limits::check_graph(&lowered, &qlift::Limits::default())
        .with_context(|| format!("compiling {}", args.model.display()))?;
    let artifact = qlift_codegen::compile_object(&lowered, &args.name, &opts)
        .map_err(qlift::Error::from)
        .with_context(|| format!("compiling {}", args.model.display()))?;
    let mut files = Outputs::default();
    files.write(&args.output, &artifact.object)?;
    files.write(&args.header, artifact.header.as_bytes())?;
    files.commit()?;
    note!(
        "wrote {} ({} bytes, {} kernels) and {}",
        args.output.display(),
        artifact.object.len(),
        artifact.program.steps.len(),
        args.header.display()
    );
    Ok(())
}
