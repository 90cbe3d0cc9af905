//! The `qlift` command line: subcommands in the style of `tract` and `tvmc`.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use qlift::npy::{read_npy, write_npy};
use qlift::report::layer_errors;
use qlift::{
    export_onnx, load_onnx, quantize, ActivationScheme, CalibrationMethod, CompileOptions, CompiledModel, Engine, ImportOptions, QuantizeOptions,
    Quantized,
};
use qlift_ir::{text, Graph, Tensor};
use qlift_passes::{pass_names, run_pipeline, PipelineOptions, PrintAfter};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

mod profile;

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
    #[command(after_help = "Examples:
  qlift dump model.onnx
  qlift dump model.onnx --full-constants -o model.qir
  qlift dump model.onnx --after all                 # the IR after every pass of the pipeline
  qlift dump model.onnx --after fold-bn --timings   # after one pass, with per-pass timings
  qlift dump model.onnx --after all --dump-dir ir/  # one numbered .qir file per pass
  qlift dump model.onnx --format dot -o model.dot && dot -Tsvg model.dot > model.svg")]
    Dump(DumpArgs),
    /// Run a model on .npy inputs with the reference interpreter (quantized with --calib).
    #[command(after_help = "Examples:
  qlift run model.onnx --input x.npy --output y.npy
  qlift run model.onnx --input image=x.npy --input mask=m.npy --output logits=y.npy
  qlift run model.onnx --input x.npy --labels y.npy      # prints top-1 accuracy
  qlift run model.onnx --calib c.npy --method mse --input x.npy --labels y.npy   # int8

The batch size is taken from the inputs (the model's symbolic batch dimension).")]
    Run(RunArgs),
    /// Quantize a float model from calibration data and write it as a QDQ ONNX model.
    #[command(after_help = "Examples:
  qlift quantize model.onnx --calib calib.npy -o model.qdq.onnx
  qlift quantize model.onnx --calib calib.npy --method percentile:99.99 -o model.qdq.onnx
  qlift quantize model.onnx --calib calib.npy --activations i8 -o model.qdq.onnx --qir model.qir

The output is ONNX Runtime's QDQ format (QuantizeLinear/DequantizeLinear around every
quantized op, int8 per-channel weights, int32 biases): ONNX Runtime and qlift both run it.")]
    Quantize(QuantizeArgs),
    /// Per-layer quantization error (SQNR, max error) of the quantized model against fp32.
    #[command(after_help = "Examples:
  qlift report model.onnx --calib calib.npy --input x.npy
  qlift report model.onnx --calib calib.npy --input x.npy --method mse --json

Layers are matched by value name and listed worst first (lowest SQNR), as ONNX Runtime's
qdq_loss_debug does; the last line is the model output.")]
    Report(ReportArgs),
    /// Measure latency (min/median/p90), throughput and compile time of a compiled model.
    #[command(after_help = "Examples:
  qlift bench model.onnx --input x.npy                       # fp32
  qlift bench model.onnx --input x.npy --calib c.npy         # int8
  qlift bench model.onnx --input x.npy --calib c.npy --threads 2 --iters 500 --json
  qlift bench model.onnx --input x.npy --calib c.npy --callers 4      # 4 threads sharing one model

--threads splits each call's batch across threads (as ONNX Runtime's intra-op threads);
--callers runs that many threads calling the one model at once. Latency is per call, GMAC/s
counts the multiply-accumulates of Conv/Gemm/MatMul layers (int8 ones when quantized).")]
    Bench(BenchArgs),
    /// Compile ahead of time to an object file and a C header (link it into any program).
    #[command(after_help = "Examples:
  qlift compile model.onnx --calib calib.npy -o model.o --header model.h --name digits
  qlift compile model.onnx -o model.o --header model.h              # fp32
  qlift compile model.onnx --calib calib.npy -o model.o --header model.h --target x86_64-apple-darwin
  cc app.c model.o -lm -o app

The header declares `int32_t NAME_run(const void *const *inputs, void *const *outputs,
void *scratch, int64_t batch)`, the inputs' and outputs' shapes, dtypes and quantization
parameters, and NAME_SCRATCH_BYTES(batch). See examples/aot_c/.")]
    Compile(CompileArgs),
}

#[derive(clap::Args)]
struct CompileArgs {
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

/// How to quantize, shared by the subcommands that quantize.
#[derive(clap::Args, Clone)]
struct QuantArgs {
    /// Calibration inputs (.npy, samples on axis 0; NAME=FILE.npy for several inputs).
    #[arg(long = "calib", value_name = "C.npy")]
    calib: Vec<String>,
    /// How activation ranges are chosen: minmax, percentile[:P], mse or entropy.
    #[arg(long, default_value = "minmax", value_parser = parse_method)]
    method: CalibrationMethod,
    /// Activation type: u8 (asymmetric, the default) or i8 (symmetric).
    #[arg(long, value_enum, default_value_t = Activations::U8)]
    activations: Activations,
}

#[derive(Clone, Copy, ValueEnum)]
enum Activations {
    /// Asymmetric uint8 (as ONNX Runtime).
    U8,
    /// Symmetric int8.
    I8,
}

fn parse_vector_bits(s: &str) -> Result<u32, String> {
    match s {
        "128" | "256" | "512" => s.parse().map_err(|e| format!("{e}")),
        _ => Err("expected 128, 256 or 512".into()),
    }
}

fn parse_method(s: &str) -> Result<CalibrationMethod, String> {
    s.parse()
}

#[derive(clap::Args)]
struct QuantizeArgs {
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

#[derive(clap::Args)]
struct ReportArgs {
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

#[derive(Clone, Copy, ValueEnum)]
enum DumpFormat {
    /// qlift's IR text format (re-parseable).
    Text,
    /// Graphviz dot.
    Dot,
}

#[derive(clap::Args)]
struct DumpArgs {
    /// The ONNX model (.onnx) or IR text (.qir) to print.
    model: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DumpFormat::Text)]
    format: DumpFormat,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Print every constant in full (otherwise large ones show as a content digest).
    #[arg(long)]
    full_constants: bool,
    /// Run the rewrite pipeline and print the IR after this pass, or after every pass with
    /// `all` (passes: cleanup, fold-constants, fold-bn, absorb-affine, fuse-activations).
    #[arg(long, value_name = "PASS|all", alias = "print-after")]
    after: Option<String>,
    /// The same as `--after all` (LLVM's spelling).
    #[arg(long, conflicts_with = "after")]
    print_after_all: bool,
    /// With --after: also write the IR after each pass to DIR/NN-pass.qir.
    #[arg(long, value_name = "DIR")]
    dump_dir: Option<PathBuf>,
    /// With --after: print each pass's time and node counts to standard error.
    #[arg(long)]
    timings: bool,
    /// Quantize from this calibration data (the pipeline then includes insert-qdq).
    #[command(flatten)]
    quant: QuantArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The ONNX model to run.
    model: PathBuf,
    /// An input as FILE.npy (in graph-input order) or NAME=FILE.npy. Repeat for several.
    #[arg(short, long = "input", required = true)]
    inputs: Vec<String>,
    /// Where to write an output: FILE.npy (in graph-output order) or NAME=FILE.npy.
    #[arg(short, long = "output")]
    outputs: Vec<String>,
    /// Integer class labels (.npy) to score the first output's top-1 accuracy against.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Quantize first from this calibration data, then run the integer graph.
    #[command(flatten)]
    quant: QuantArgs,
    /// What runs the model: the Cranelift JIT or the reference interpreter.
    #[arg(long, value_enum, default_value_t = EngineArg::Jit)]
    engine: EngineArg,
    /// Threads one call may use (the batch is split across them).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// With --calib: also compile the fp32 model and print fp32 against int8 (accuracy with
    /// --labels, latency per sample and per batch, weight bytes).
    #[arg(long, requires = "calib")]
    compare: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum EngineArg {
    /// Cranelift code for the host CPU.
    Jit,
    /// The reference interpreter.
    Interp,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The ONNX model (.onnx) or IR text (.qir).
    model: PathBuf,
    /// Inputs (FILE.npy or NAME=FILE.npy); their batch is the batch benchmarked.
    #[arg(short, long = "input", required = true)]
    inputs: Vec<String>,
    #[command(flatten)]
    quant: QuantArgs,
    /// Timed runs per thread.
    #[arg(long, default_value_t = 100)]
    iters: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Threads one call may use (the batch is split across them), as ONNX Runtime's
    /// intra-op threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Threads calling the one compiled model at the same time.
    #[arg(long, default_value_t = 1)]
    callers: usize,
    /// The engine.
    #[arg(long, value_enum, default_value_t = EngineArg::Jit)]
    engine: EngineArg,
    /// Print one JSON object (median_ms, p90_ms, min_ms, compile_ms, gmacs, ...).
    #[arg(long)]
    json: bool,
    /// Use `pmaddwd` dot products even where the CPU has VNNI `vpdpbusd` (to measure the
    /// path of CPUs without VNNI).
    #[arg(long)]
    no_vnni: bool,
    /// Use no CPU feature beyond AVX2 (no AVX-512, no VNNI): the code an AVX2-only CPU gets.
    #[arg(long)]
    avx2_only: bool,
    /// Generate baseline x86-64 code (SSE2), ignoring the CPU's features.
    #[arg(long)]
    baseline_isa: bool,
    /// Time every kernel (timers compiled into the entry function) and print where the
    /// time goes: per kernel and per kernel form, with GMAC/s (JIT only).
    #[arg(long)]
    profile: bool,
    /// The widest vectors kernels may use: 128 (Cranelift's), 256 (AVX2 micro-kernels) or
    /// 512; the widest the CPU has by default.
    #[arg(long, value_parser = parse_vector_bits)]
    max_vector_bits: Option<u32>,
    /// Kernels listed by --profile (the slowest first).
    #[arg(long, default_value_t = 25)]
    profile_top: usize,
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
        Command::Dump(args) => dump(&args),
        Command::Run(args) => run(&args),
        Command::Quantize(args) => quantize_cmd(&args),
        Command::Report(args) => report(&args),
        Command::Bench(args) => bench(&args),
        Command::Compile(args) => compile_aot(&args),
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

/// Loads an ONNX model, or parses IR text when the file ends in `.qir`.
fn load_model(path: &Path) -> Result<Graph> {
    if path.extension().is_some_and(|e| e == "qir") {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let graph = text::parse(&text).with_context(|| format!("parsing {}", path.display()))?;
        qlift_ir::verify(&graph).with_context(|| format!("verifying {}", path.display()))?;
        return Ok(graph);
    }
    load_onnx(path, &ImportOptions::default()).with_context(|| format!("loading {}", path.display()))
}

fn dump(args: &DumpArgs) -> Result<()> {
    let mut graph = load_model(&args.model)?;
    let after = if args.print_after_all { Some("all") } else { args.after.as_deref() };
    if after.is_none() && (args.dump_dir.is_some() || args.timings) {
        bail!("--dump-dir and --timings need --after PASS|all");
    }
    let after = match after {
        None if !args.quant.calib.is_empty() => Some("all"),
        other => other,
    };
    if let Some(after) = after {
        let print_after = match after {
            "all" => PrintAfter::All,
            name if pass_names().contains(&name) => PrintAfter::Pass(name.to_string()),
            name => bail!("unknown pass `{name}` (passes: {}, or all)", pass_names().join(", ")),
        };
        let stop_after = match &print_after {
            PrintAfter::Pass(name) => Some(name.clone()),
            _ => None,
        };
        let opts = PipelineOptions { print_after: print_after.clone(), dump_dir: args.dump_dir.clone(), stop_after };
        let (optimized, runs) = if args.quant.calib.is_empty() {
            run_pipeline(&graph, &opts).context("running the pass pipeline")?
        } else {
            let q = quantize_model(&graph, &args.quant, &opts)?;
            (q.lowered, q.runs)
        };
        if args.timings {
            for run in &runs {
                eprintln!(
                    "{:<18} {:>8.2} ms  nodes {:>4} -> {:<4} e-graph {:>5}",
                    run.name,
                    run.time.as_secs_f64() * 1e3,
                    run.nodes.0,
                    run.nodes.1,
                    run.egraph_nodes
                );
            }
        }
        if print_after == PrintAfter::All && matches!(args.format, DumpFormat::Text) && !args.full_constants {
            let text: Vec<String> = runs.iter().filter_map(|r| r.dump.as_ref().map(|d| format!("; after {}\n{d}", r.name))).collect();
            return emit(args.output.as_deref(), &text.join("\n"));
        }
        graph = optimized;
    }
    let out = match args.format {
        DumpFormat::Text => {
            let opts = text::PrintOptions { full_constants: args.full_constants, ..Default::default() };
            text::print(&graph, &opts)
        }
        DumpFormat::Dot => qlift_ir::dot::to_dot(&graph),
    };
    emit(args.output.as_deref(), &out)
}

/// Writes text to a file, or to standard output.
fn emit(path: Option<&Path>, text: &str) -> Result<()> {
    match path {
        Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// Splits `NAME=FILE` into its parts; a bare `FILE` has no name.
fn split_binding(arg: &str) -> (Option<&str>, &Path) {
    match arg.split_once('=') {
        Some((name, file)) if !name.is_empty() => (Some(name), Path::new(file)),
        _ => (None, Path::new(arg)),
    }
}

/// Orders `--input` arguments by graph input, by name or by position.
fn bind_inputs(graph: &Graph, args: &[String]) -> Result<Vec<Tensor>> {
    let names: Vec<String> = graph.input_values().iter().map(|v| graph.value(*v).name.clone()).collect();
    if args.len() != names.len() {
        bail!("the model has {} inputs ({}), {} were given", names.len(), names.join(", "), args.len());
    }
    let mut bound: Vec<Option<Tensor>> = vec![None; names.len()];
    for (position, arg) in args.iter().enumerate() {
        let (name, file) = split_binding(arg);
        let slot = match name {
            Some(name) => names
                .iter()
                .position(|n| n == name)
                .with_context(|| format!("the model has no input `{name}` (inputs: {})", names.join(", ")))?,
            None => position,
        };
        if bound[slot].is_some() {
            bail!("input `{}` is given twice", names[slot]);
        }
        bound[slot] = Some(read_npy(file)?);
    }
    Ok(bound.into_iter().map(|t| t.expect("every slot bound: counts are equal and none twice")).collect())
}

/// Loads, lowers (quantizing with `--calib`) and compiles a model for `engine`, running
/// each call on up to `threads` threads.
fn compile_model(path: &Path, quant: &QuantArgs, engine: EngineArg, threads: usize) -> Result<CompiledModel> {
    compile_model_with(path, quant, engine, threads, &qlift::CodegenOptions::default())
}

/// [`compile_model`] with code generation options.
fn compile_model_with(path: &Path, quant: &QuantArgs, engine: EngineArg, threads: usize, codegen: &qlift::CodegenOptions) -> Result<CompiledModel> {
    let start = Instant::now();
    let graph = load_model(path)?;
    let calibrated = !quant.calib.is_empty();
    let lowered = if calibrated {
        quantize_model(&graph, quant, &PipelineOptions::default())?.lowered
    } else {
        run_pipeline(&graph, &PipelineOptions::default()).context("running the pass pipeline")?.0
    };
    let engine = match engine {
        EngineArg::Jit => Engine::Jit,
        EngineArg::Interp => Engine::Interpreter,
    };
    // Quantized when it was calibrated here or already holds integer ops (a dumped int8 .qir).
    let quantized = calibrated || lowered.node_ids().any(|id| lowered.node(id).op.kind().is_some_and(|k| k.is_internal()));
    let model = CompiledModel::from_lowered(lowered, quantized, &CompileOptions { engine, threads, codegen: codegen.clone(), ..Default::default() })
        .with_context(|| format!("compiling {}", path.display()))?;
    eprintln!(
        "compiled {} ({}, {}) in {:.0} ms",
        path.display(),
        if quantized { "int8" } else { "fp32" },
        model.engine_description(),
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(model)
}

fn run(args: &RunArgs) -> Result<()> {
    if args.compare {
        return compare(args);
    }
    let model = compile_model(&args.model, &args.quant, args.engine, args.threads)?;
    let graph = model.graph();
    let inputs = bind_inputs(graph, &args.inputs)?;
    let start = Instant::now();
    let outputs = model.run(&inputs)?;
    let elapsed = start.elapsed();
    let batch = inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
    eprintln!("ran {} on {batch} samples in {:.2} ms", args.model.display(), elapsed.as_secs_f64() * 1e3);
    let names: Vec<String> = graph.outputs().iter().map(|v| graph.value(*v).name.clone()).collect();
    for (position, arg) in args.outputs.iter().enumerate() {
        let (name, file) = split_binding(arg);
        let index = match name {
            Some(name) => names.iter().position(|n| n == name),
            None => (position < names.len()).then_some(position),
        };
        let index = index.with_context(|| format!("no output for `{arg}` (outputs: {})", names.join(", ")))?;
        write_npy(file, &outputs[index])?;
    }
    if let Some(labels) = &args.labels {
        let (correct, total) = top1(&outputs[0], &read_npy(labels)?)?;
        println!("accuracy: {:.2}% ({correct}/{total})", 100.0 * correct as f64 / total as f64);
    }
    Ok(())
}

/// Counts rows of `scores` ([batch, classes]) whose argmax equals the label.
fn top1(scores: &Tensor, labels: &Tensor) -> Result<(usize, usize)> {
    let labels = labels.to_i64_vec().map_err(anyhow::Error::msg).context("labels")?;
    let scores_f32 = scores.to_f32_vec();
    let (&classes, rows) = match scores.shape() {
        [rows, classes] => (classes, *rows),
        other => bail!("top-1 accuracy needs [batch, classes] scores, the output is {other:?}"),
    };
    if rows != labels.len() || classes == 0 {
        bail!("{rows} score rows but {} labels", labels.len());
    }
    let correct = scores_f32
        .chunks(classes)
        .zip(&labels)
        .filter(|(row, &label)| {
            let best = row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best });
            best as i64 == label
        })
        .count();
    Ok((correct, rows))
}

/// Quantizes `graph` with the calibration data and options of `q`, with a progress bar
/// over calibration samples (hidden when standard error is not a terminal).
fn quantize_model(graph: &Graph, q: &QuantArgs, pipeline: &PipelineOptions) -> Result<Quantized> {
    let calibration = bind_inputs(graph, &q.calib).context("calibration data (--calib)")?;
    let opts = QuantizeOptions {
        method: q.method,
        scheme: match q.activations {
            Activations::U8 => ActivationScheme::AsymmetricU8,
            Activations::I8 => ActivationScheme::SymmetricI8,
        },
    };
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("calibrating {bar:30} {pos}/{len} samples {elapsed}").expect("valid progress template"),
    );
    let start = Instant::now();
    let quantized = quantize(graph, &calibration, &opts, pipeline, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if quantized.samples == 0 {
        eprintln!("the pipeline stopped before calibration (insert-qdq): nothing was quantized");
        return Ok(quantized);
    }
    eprintln!(
        "quantized with {} on {} calibration samples in {:.0} ms{}",
        q.method,
        quantized.samples,
        start.elapsed().as_secs_f64() * 1e3,
        match quantized.non_finite {
            0 => String::new(),
            n => format!(" ({n} NaN/Inf calibration values ignored)"),
        }
    );
    Ok(quantized)
}

fn quantize_cmd(args: &QuantizeArgs) -> Result<()> {
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

fn report(args: &ReportArgs) -> Result<()> {
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

fn bench(args: &BenchArgs) -> Result<()> {
    if args.iters == 0 || args.threads == 0 || args.callers == 0 {
        bail!("--iters, --threads and --callers must be at least 1");
    }
    let start = Instant::now();
    let codegen = qlift::CodegenOptions { no_vnni: args.no_vnni, avx2_only: args.avx2_only, baseline_isa: args.baseline_isa, profile: args.profile, max_vector_bits: args.max_vector_bits, ..Default::default() };
    let model = compile_model_with(&args.model, &args.quant, args.engine, args.threads, &codegen)?;
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    let inputs = bind_inputs(model.graph(), &args.inputs)?;
    let batch = inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
    let fresh_outputs = || -> Vec<Tensor> {
        model.outputs().iter().map(|(_, ty)| Tensor::zeros(ty.dtype, &ty.shape.resolve(batch))).collect()
    };
    let mut outputs = fresh_outputs();
    for _ in 0..args.warmup {
        model.run_into(&inputs, &mut outputs)?;
    }
    model.reset_profile();
    let bar = indicatif::ProgressBar::new((args.iters * args.callers) as u64)
        .with_style(indicatif::ProgressStyle::with_template("benchmarking {bar:30} {pos}/{len} runs").expect("valid progress template"));
    let wall = Instant::now();
    let mut times: Vec<f64> = std::thread::scope(|s| -> Result<Vec<f64>> {
        let workers: Vec<_> = (0..args.callers)
            .map(|_| {
                let (model, inputs, bar) = (&model, &inputs, &bar);
                s.spawn(move || -> Result<Vec<f64>> {
                    let mut outputs = fresh_outputs();
                    let mut times = Vec::with_capacity(args.iters);
                    for _ in 0..args.iters {
                        let t = Instant::now();
                        model.run_into(inputs, &mut outputs)?;
                        times.push(t.elapsed().as_secs_f64() * 1e3);
                        bar.inc(1);
                    }
                    Ok(times)
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.join().map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))??);
        }
        Ok(all)
    })?;
    let wall_s = wall.elapsed().as_secs_f64();
    bar.finish_and_clear();
    times.sort_by(f64::total_cmp);
    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let (min, median, p90) = (times[0], pick(0.5), pick(0.9));
    let macs = multiply_accumulates(model.graph()) as f64 * batch as f64;
    let profile = match model.profile() {
        Some(kernels) => Some(profile::table(model.graph(), &kernels, times.iter().sum::<f64>() / times.len() as f64, batch, args.profile_top)),
        None if args.profile => bail!("--profile needs the JIT engine"),
        None => None,
    };
    let gmacs = macs / (median * 1e-3) / 1e9;
    let throughput = (times.len() * batch) as f64 / wall_s;
    let peak = int8_peak_gmacs(args.threads * args.callers);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "model": args.model.display().to_string(), "engine": model.engine_description(),
                "precision": if model.is_quantized() { "int8" } else { "fp32" },
                "batch": batch, "threads": args.threads, "callers": args.callers, "iters": args.iters,
                "min_ms": min, "median_ms": median, "p90_ms": p90, "compile_ms": compile_ms,
                "samples_per_s": throughput, "gmacs": gmacs, "int8_peak_fraction": gmacs / peak, "profile": profile,
            })
        );
        return Ok(());
    }
    println!(
        "model      {} ({}, batch {batch}, {} thread(s) per call, {} caller(s))",
        args.model.display(),
        if model.is_quantized() { "int8" } else { "fp32" },
        args.threads,
        args.callers
    );
    println!("engine     {}", model.engine_description());
    println!("compile    {compile_ms:.1} ms (import, rewrites, calibration, code generation)");
    println!("latency    min {}   median {}   p90 {}", duration_ms(min), duration_ms(median), duration_ms(p90));
    println!("throughput {throughput:.0} samples/s");
    println!("compute    {gmacs:.2} GMAC/s ({:.1}% of a {peak:.0} GMAC/s int8 peak)", 100.0 * gmacs / peak);
    if let Some(p) = profile {
        println!("\nprofile (mean per call over the timed runs; timers add a little to each kernel call)\n{p}");
    }
    Ok(())
}

/// A latency given in milliseconds, for people: in µs with 3 significant digits below 1 ms
/// (a 5 µs run would read 0.005 ms), else in ms with 3 decimals.
fn duration_ms(ms: f64) -> String {
    let us = ms * 1e3;
    // Below 999.5 µs, so that nothing rounds to "1000 µs".
    if us < 999.5 {
        let decimals = if us < 10.0 { 2 } else if us < 100.0 { 1 } else { 0 };
        format!("{us:.decimals$} µs")
    } else {
        format!("{ms:.3} ms")
    }
}

/// Multiply-accumulates of one sample: Conv, Gemm, MatMul and their integer forms.
fn multiply_accumulates(g: &Graph) -> u64 {
    g.node_ids().filter_map(|id| profile::node_macs(g, id)).sum()
}

/// The machine's nominal int8 peak in GMAC/s for `threads` cores: 64 u8×i8
/// multiply-accumulates per cycle per core (two 256-bit vpmaddubsw per cycle, AVX2) at the
/// clock /proc/cpuinfo reports (3 GHz when it does not say).
fn int8_peak_gmacs(threads: usize) -> f64 {
    let mhz = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("cpu MHz")).and_then(|l| l.split(':').nth(1)).and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or(3000.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(threads);
    64.0 * mhz * 1e-3 * cores as f64
}

fn compile_aot(args: &CompileArgs) -> Result<()> {
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

/// `run --compare`: the fp32 and the int8 model side by side on the same inputs.
fn compare(args: &RunArgs) -> Result<()> {
    let fp32_args = QuantArgs { calib: Vec::new(), ..args.quant.clone() };
    let models = [("fp32", compile_model(&args.model, &fp32_args, args.engine, args.threads)?), ("int8", compile_model(&args.model, &args.quant, args.engine, args.threads)?)];
    let labels = args.labels.as_deref().map(read_npy).transpose()?;
    println!("{:<6} {:>10} {:>14} {:>16} {:>12}", "", "accuracy", "batch latency", "1-sample latency", "weights");
    for (name, model) in &models {
        let inputs = bind_inputs(model.graph(), &args.inputs)?;
        let first: Vec<Tensor> = inputs.iter().map(|t| t.slice_outer(0, 1)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
        let outputs = model.run(&inputs)?;
        let accuracy = match &labels {
            Some(l) => {
                let (correct, total) = top1(&outputs[0], l)?;
                format!("{:.2}%", 100.0 * correct as f64 / total as f64)
            }
            None => "-".to_string(),
        };
        let median = |inputs: &[Tensor], runs: usize| -> Result<f64> {
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t = Instant::now();
                model.run(inputs)?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            Ok(times[runs / 2])
        };
        let (batch_ms, one_ms) = (median(&inputs, 21)?, median(&first, 201)?);
        let weights: usize = model
            .graph()
            .node_ids()
            .filter_map(|id| match &model.graph().node(id).op {
                qlift_ir::NodeOp::Const(t) => Some(t.data().as_bytes().len()),
                _ => None,
            })
            .sum();
        println!("{name:<6} {accuracy:>10} {:>11.3} ms {:>13.1} us {:>9.1} KiB", batch_ms, one_ms * 1e3, weights as f64 / 1024.0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::duration_ms;

    #[test]
    fn latencies_below_a_millisecond_print_in_microseconds() {
        assert_eq!(duration_ms(0.005138), "5.14 µs");
        assert_eq!(duration_ms(0.04567), "45.7 µs");
        assert_eq!(duration_ms(0.3096), "310 µs");
        assert_eq!(duration_ms(0.9994), "999 µs");
        assert_eq!(duration_ms(0.9996), "1.000 ms");
        assert_eq!(duration_ms(1.0), "1.000 ms");
        assert_eq!(duration_ms(3.4751), "3.475 ms");
    }
}
