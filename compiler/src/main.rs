//! The `qlift` command line: subcommands in the style of `tract` and `tvmc`. This file
//! parses and dispatches; each subcommand's flags, help and body live in `cli/NAME.rs`.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

const EXAMPLES: &str = "\
Examples:
  qlift run examples/models/digits_cnn.onnx --calib examples/models/digits_calib_x.npy \\
      --input examples/models/digits_test_x.npy --labels examples/models/digits_test_y.npy
  qlift quantize examples/models/digits_cnn.onnx --calib examples/models/digits_calib_x.npy -o cnn.qdq.onnx
  qlift report examples/models/digits_cnn.onnx --calib examples/models/digits_calib_x.npy \\
      --input examples/models/digits_test_x.npy
  qlift dump examples/models/digits_cnn.onnx
  qlift dump examples/models/digits_cnn.onnx --format dot -o cnn.dot
  qlift dump examples/models/digits_cnn.onnx --after all --timings
  qlift run examples/models/digits_cnn.onnx --input examples/models/digits_test_x.npy \\
      --labels examples/models/digits_test_y.npy --output logits.npy

Exit codes: 0 success, 1 bad input or usage, 2 internal error (a bug in qlift).
Errors go to standard error and name the file, node or value concerned.";

#[derive(Parser)]
#[command(name = "qlift", version, about = "A quantizing compiler for ONNX models", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a model's IR as text or Graphviz dot, before or after the rewrite passes.
    Dump(cli::dump::DumpArgs),
    /// Run a model on .npy inputs with the reference interpreter (quantized with --calib).
    Run(cli::run::RunArgs),
    /// Quantize a float model from calibration data and write it as a QDQ ONNX model.
    Quantize(cli::quantize::QuantizeArgs),
    /// Per-layer quantization error (SQNR, max error) of the quantized model against fp32.
    Report(cli::report::ReportArgs),
    /// Measure latency (min/median/p90), throughput and compile time of a compiled model.
    Bench(cli::bench::BenchArgs),
    /// Compile ahead of time to an object file and a C header (link it into any program).
    Compile(cli::compile::CompileArgs),
}

fn main() -> ExitCode {
    // Usage errors are bad input (exit 1); --help and --version print and succeed.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Dump(args) => cli::dump::exec(&args),
        Command::Run(args) => cli::run::exec(&args),
        Command::Quantize(args) => cli::quantize::exec(&args),
        Command::Report(args) => cli::report::exec(&args),
        Command::Bench(args) => cli::bench::exec(&args),
        Command::Compile(args) => cli::compile::exec(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let internal = e.chain().any(|c| c.downcast_ref::<qlift::Error>().is_some_and(|e| e.is_internal()));
            ExitCode::from(if internal { 2 } else { 1 })
        }
    }
}
