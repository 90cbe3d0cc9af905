//! The `qlift` command line: subcommands in the style of `tract` and `tvmc`. This module
//! parses and dispatches ([`main`]); each subcommand's flags, help and body live in
//! `cli/NAME.rs`, and what several share (loading a model, binding `.npy` inputs to graph
//! inputs, quantizing from `--calib`, compiling for an engine) is here.
//!
//! It is public for the `qlift` binary and the argument-vector fuzz target only; it is not
//! a stable API (and the one place `anyhow` is used).

pub(crate) mod bench;
pub(crate) mod compile;
pub(crate) mod dump;
pub(crate) mod dynamic;
mod html;
pub(crate) mod ops;
pub(crate) mod output;
mod plan;
mod profile;
pub(crate) mod ptq;
pub(crate) mod quantize;
pub(crate) mod report;
pub(crate) mod run;
mod streaming;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use output::note;
use qlift::npy::read_npy;
use qlift::{
    load_onnx, ActivationScheme, CalibrationMethod, CompileOptions, CompiledModel, Engine,
    ImportOptions, Outliers, QuantizeOptions, Quantized, WeightGranularity,
};
use qlift_ir::{Graph, OpKind, Tensor};
use qlift_passes::{run_pipeline, PipelineOptions};
use std::path::Path;
use std::time::Instant;

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

Exit codes: 0 success (also when standard output is closed early, as by `| head`),
1 bad input or usage (a limit exceeded, a full disk), 2 internal error (a bug in qlift).
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
    Dump(dump::DumpArgs),
    /// Run a model on .npy inputs with the Cranelift JIT (the default) or the interpreter
    /// (--engine interp); int8 with --calib.
    Run(run::RunArgs),
    /// Quantize a float model from calibration data and write it as a QDQ ONNX model.
    Quantize(quantize::QuantizeArgs),
    /// Per-layer quantization error (SQNR, max error) of the quantized model against fp32.
    Report(report::ReportArgs),
    /// Measure latency (min/median/p90), throughput and compile time of a compiled model.
    Bench(bench::BenchArgs),
    /// Compile ahead of time to an object file and a C header (link it into any program).
    Compile(compile::CompileArgs),
    /// List the ONNX ops qlift imports, with the opset versions each accepts.
    Ops(ops::OpsArgs),
}

/// Runs the command line on `args` (the program name first, as `std::env::args_os` gives
/// them) and returns the exit status: 0 success (or `--help`), 1 bad input or usage, 2 an
/// internal error, a panic included (the panic hook, installed by the binary, prints it).
pub fn main_with<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // Usage errors are bad input (exit 1); --help and --version print and succeed.
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(cli)));
    let result = match result {
        Ok(result) => result,
        Err(_) => return 2,
    };
    match result {
        Ok(()) => 0,
        Err(e) if e.chain().any(|c| c.is::<output::ClosedPipe>()) => 0,
        Err(e) => {
            note!("error: {}", chain(&e));
            let internal = e.chain().any(|c| {
                c.downcast_ref::<qlift::Error>()
                    .is_some_and(|e| e.is_internal())
            });
            if internal {
                note!("{BUG_REPORT}");
                2
            } else {
                1
            }
        }
    }
}

/// An error and its causes, `: `-separated, skipping a cause its parent's message already
/// ends with (an I/O error that prints its OS error, which is also its source).
fn chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if parts.last().is_some_and(|p| p.ends_with(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// What follows an internal error.
pub const BUG_REPORT: &str = "this is a bug in qlift: please report it at https://example.invalid/qlift/issues with the command line and, if you can, the input files";

fn dispatch(cli: Cli) -> Result<()> {
    // A test hook: makes the command panic, to check that a panic is reported as an
    // internal error (exit 2). Never set outside qlift's own tests.
    if std::env::var_os("QLIFT_TEST_PANIC").is_some() {
        panic!("QLIFT_TEST_PANIC is set");
    }
    match cli.command {
        Command::Dump(args) => dump::exec(&args),
        Command::Run(args) => run::exec(&args),
        Command::Quantize(args) => quantize::exec(&args),
        Command::Report(args) => report::exec(&args),
        Command::Bench(args) => bench::exec(&args),
        Command::Compile(args) => compile::exec(&args),
        Command::Ops(args) => ops::exec(&args),
    }
}

/// A clap value parser for an integer flag in `LO..=HI`: anything else (a negative number,
/// `18446744073709551615`, `1e3`) is a usage error naming the range, before any work.
pub(crate) fn in_range<const LO: u64, const HI: u64>(s: &str) -> Result<usize, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number from {LO} to {HI}"))?;
    if !(LO..=HI).contains(&n) {
        return Err(format!("{n} is out of range: from {LO} to {HI}"));
    }
    usize::try_from(n).map_err(|_| format!("{n} is too large for this machine"))
}

/// Most threads per call, and most concurrent callers in `bench`: far above the cores of
/// any machine qlift runs on, far below what exhausts threads or memory.
pub(crate) const MAX_THREADS: u64 = 1024;

/// How to quantize, shared by the subcommands that quantize.
#[derive(clap::Args, Clone)]
pub(crate) struct QuantArgs {
    /// Calibration inputs (.npy, samples on axis 0; NAME=FILE.npy for several inputs).
    #[arg(long = "calib", value_name = "C.npy")]
    pub(crate) calib: Vec<String>,
    /// How activation ranges are chosen: minmax, percentile[:P], mse or entropy.
    #[arg(long, default_value = "minmax", value_parser = parse_method)]
    pub(crate) method: CalibrationMethod,
    /// Activation type: u8 (asymmetric, the default) or i8 (symmetric).
    #[arg(long, value_enum, default_value_t = Activations::U8)]
    pub(crate) activations: Activations,
    /// Ops whose activations would keep less signal-to-noise than this (dB, estimated from
    /// calibration) in 8 bits stay float; 0 quantizes everything the policy allows.
    #[arg(long = "min-sqnr", value_name = "DB", default_value_t = qlift_passes::quantize::DEFAULT_MIN_SQNR_DB)]
    pub(crate) min_sqnr_db: f64,
    /// Where a Conv/Gemm/MatMul goes when --min-sqnr refuses it in 8 bits: int16 (16-bit
    /// activations, when they hold the bound in 16 bits and its i32 accumulator provably
    /// cannot wrap; fp32 otherwise) or fp32.
    #[arg(long, value_enum, default_value_t = OutliersArg::Int16)]
    pub(crate) outliers: OutliersArg,
    /// Weight scales: one per output channel (the default) or one per tensor.
    #[arg(long, value_enum, default_value_t = Weights::PerChannel)]
    pub(crate) weights: Weights,
    /// static (int8 from --calib), dynamic (MatMul/Gemm activations quantized per call, int8
    /// weights) or weight-only (MatMul/Gemm weights int8 or int4 with --weight-bits, f32
    /// activations); the last two need no --calib.
    #[arg(long, value_enum, default_value_t = dynamic::Mode::Static)]
    pub(crate) mode: dynamic::Mode,
    /// Weight-only: elements of the reduction axis per weight scale (32, 64, 128 as ONNX
    /// Runtime's MatMulNBits); 0 gives one scale per output column.
    #[arg(long = "block-size", value_name = "N", default_value_t = 0, value_parser = in_range::<0, 1048576>)]
    pub(crate) block_size: usize,
    /// CLE, bias correction, AdaRound, weight bits.
    #[command(flatten)]
    pub(crate) ptq: ptq::PtqArgs,
    /// A quantization plan (TOML, or JSON): precision, method and weights per node and op
    /// type over a default section, which overrides --method, --activations, --weights and
    /// --min-sqnr (see README, "Controlling quantization").
    #[arg(long, value_name = "FILE")]
    pub(crate) plan: Option<std::path::PathBuf>,
    /// Keep a node (by name) or every node of an op type (Conv, MatMul...) in fp32;
    /// repeatable, over --plan.
    #[arg(long = "exclude", value_name = "NODE|OPTYPE")]
    pub(crate) exclude: Vec<String>,
    /// Raise the layers that hurt most to fp32, one at a time, until the model's outputs keep
    /// DB of SQNR against fp32 on the calibration data (then return any it can to int8).
    #[arg(long = "target-sqnr", value_name = "DB", value_parser = plan::parse_db)]
    pub(crate) target_sqnr_db: Option<f64>,
    /// Raise the layers that hurt most, like --target-sqnr, until the top-1 accuracy of the
    /// first output on the calibration samples is within PP percentage points of fp32's
    /// (needs --calib-labels).
    #[arg(long = "max-drop", value_name = "PP", value_parser = plan::parse_points, conflicts_with = "target_sqnr_db", requires = "calib_labels")]
    pub(crate) max_drop: Option<f64>,
    /// Integer class labels (.npy), one per --calib sample, for --max-drop.
    #[arg(long = "calib-labels", value_name = "FILE.npy", requires = "max_drop")]
    pub(crate) calib_labels: Option<std::path::PathBuf>,
    /// Write the plan this quantization used (TOML; JSON for a .json file): applied with
    /// --plan, it reproduces the same quantized model bit for bit.
    #[arg(long = "emit-plan", value_name = "FILE")]
    pub(crate) emit_plan: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum OutliersArg {
    /// 16-bit activations where they hold, else fp32.
    Int16,
    /// fp32.
    Fp32,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Weights {
    /// One scale per output channel.
    PerChannel,
    /// One scale per weight tensor.
    PerTensor,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Activations {
    /// Asymmetric uint8 (as ONNX Runtime).
    U8,
    /// Symmetric int8.
    I8,
}

impl Activations {
    /// The flag's spelling, for summaries.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Activations::U8 => "u8",
            Activations::I8 => "i8",
        }
    }
}

impl QuantArgs {
    /// The HTML report's summary row for the calibration these arguments ask for.
    pub(crate) fn calibration_row(&self) -> (String, String) {
        (
            "calibration".into(),
            format!(
                "{} ({}, {} activations)",
                self.calib.join(" "),
                self.method,
                self.activations.name()
            ),
        )
    }
}

pub(crate) fn parse_method(s: &str) -> Result<CalibrationMethod, String> {
    s.parse()
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum EngineArg {
    /// Cranelift code for the host CPU.
    Jit,
    /// The reference interpreter.
    Interp,
}

/// How to load a model, shared by every subcommand: input shapes and frozen inputs.
#[derive(clap::Args, Clone, Default)]
pub(crate) struct LoadArgs {
    /// Fix an input's shape, NAME=1x3x224x224 (N keeps an axis the batch): for dimensions the
    /// model leaves symbolic (a sequence length, an image size).
    #[arg(long = "shape", value_name = "NAME=DIMS")]
    pub(crate) shapes: Vec<String>,
    /// Make an input a constant, NAME=FILE.npy, and fold what depends on it (a model's
    /// configuration input, a fixed mask).
    #[arg(long = "freeze", value_name = "NAME=FILE.npy")]
    pub(crate) freeze: Vec<String>,
}

impl LoadArgs {
    /// The import options these flags give.
    fn import_options(&self) -> Result<ImportOptions> {
        let mut opts = ImportOptions::default();
        for arg in &self.shapes {
            let (name, dims) = arg.split_once('=').with_context(|| {
                format!("--shape `{arg}` is not NAME=DIMS (say input=1x3x224x224)")
            })?;
            let dims = qlift::InputDim::parse_shape(dims)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--shape {arg}"))?;
            opts.input_shapes.insert(name.to_string(), dims);
        }
        for arg in &self.freeze {
            let (name, file) = arg
                .split_once('=')
                .with_context(|| format!("--freeze `{arg}` is not NAME=FILE.npy"))?;
            opts.constant_inputs
                .insert(name.to_string(), read_npy(Path::new(file))?);
        }
        Ok(opts)
    }
}

/// Loads an ONNX model, or IR text when the file ends in `.qir`; both with the default
/// limits (bounded reading, size and overflow checks), with `--shape` and `--freeze` applied.
pub(crate) fn load_model(path: &Path, load: &LoadArgs) -> Result<Graph> {
    let opts = load.import_options()?;
    let loaded = if path.extension().is_some_and(|e| e == "qir") {
        qlift::load_qir(path, &opts)
    } else {
        load_onnx(path, &opts)
    };
    loaded.with_context(|| format!("loading {}", path.display()))
}

/// Writes text to a file (replaced only once it is written whole), or to standard output.
pub(crate) fn emit(path: Option<&Path>, text: &str) -> Result<()> {
    match path {
        Some(path) => {
            let mut files = output::Outputs::default();
            files.write(path, text.as_bytes())?;
            files.commit()
        }
        None => output::print(text),
    }
}

/// What makes a model already quantized, if it is: its Q/DQ and integer ops, counted.
pub(crate) fn quantized_ops(graph: &Graph) -> Option<String> {
    use OpKind::*;
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for id in graph.node_ids() {
        let Some(kind) = graph.node(id).op.kind() else {
            continue;
        };
        if kind.is_internal()
            || matches!(
                kind,
                QuantizeLinear
                    | DequantizeLinear
                    | QLinearConv
                    | QLinearMatMul
                    | ConvInteger
                    | MatMulInteger
            )
        {
            *counts.entry(kind.name()).or_default() += 1;
        }
    }
    (!counts.is_empty()).then(|| {
        counts
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// Whether to quantize from `--calib`: not when none is given, nor when the model is already
/// quantized (a QDQ or QOperator model, or a lowered int8 `.qir`): then calibration is
/// ignored with a note, and the model runs with the quantization it has.
pub(crate) fn use_calibration(graph: &Graph, quant: &QuantArgs, path: &Path) -> bool {
    if quant.calib.is_empty() {
        return false;
    }
    if let Some(ops) = quantized_ops(graph) {
        note!("note: {} is already quantized ({ops}): --calib is ignored, the model runs with its own quantization", path.display());
        return false;
    }
    true
}

/// Splits `NAME=FILE` into its parts; a bare `FILE` has no name.
pub(crate) fn split_binding(arg: &str) -> (Option<&str>, &Path) {
    match arg.split_once('=') {
        Some((name, file)) if !name.is_empty() => (Some(name), Path::new(file)),
        _ => (None, Path::new(arg)),
    }
}

/// Orders `--input` arguments by graph input, by name or by position.
pub(crate) fn bind_inputs(graph: &Graph, args: &[String]) -> Result<Vec<Tensor>> {
    let names: Vec<String> = graph
        .input_values()
        .iter()
        .map(|v| graph.value(*v).name.clone())
        .collect();
    bind_names(&names, args)
}

/// Orders `--input` arguments by the inputs named `names`, by name or by position.
pub(crate) fn bind_names(names: &[String], args: &[String]) -> Result<Vec<Tensor>> {
    if args.len() != names.len() {
        bail!(
            "the model has {} inputs ({}), {} were given",
            names.len(),
            names.join(", "),
            args.len()
        );
    }
    let mut bound: Vec<Option<Tensor>> = vec![None; names.len()];
    for (position, arg) in args.iter().enumerate() {
        let (name, file) = split_binding(arg);
        let slot = match name {
            Some(name) => names.iter().position(|n| n == name).with_context(|| {
                format!(
                    "the model has no input `{name}` (inputs: {})",
                    names.join(", ")
                )
            })?,
            None => position,
        };
        if bound[slot].is_some() {
            bail!("input `{}` is given twice", names[slot]);
        }
        bound[slot] = Some(read_npy(file)?);
    }
    Ok(bound
        .into_iter()
        .map(|t| t.expect("every slot bound: counts are equal and none twice"))
        .collect())
}

/// Lowers `graph` (loaded from `path`; quantizing it with `--calib` unless it already is)
/// and compiles it for `engine`, running each call on up to `threads` threads.
pub(crate) fn compile_graph(
    graph: &Graph,
    path: &Path,
    quant: &QuantArgs,
    engine: EngineArg,
    threads: usize,
    codegen: &qlift::CodegenOptions,
) -> Result<CompiledModel> {
    compile_graph_from(graph, path, quant, None, engine, threads, codegen)
}

/// [`compile_graph`], calibrating on `batches` (made elsewhere: a stream's calls) in place
/// of the `--calib` files when they are given.
pub(crate) fn compile_graph_from(
    graph: &Graph,
    path: &Path,
    quant: &QuantArgs,
    batches: Option<Vec<Vec<Tensor>>>,
    engine: EngineArg,
    threads: usize,
    codegen: &qlift::CodegenOptions,
) -> Result<CompiledModel> {
    let start = Instant::now();
    dynamic::check(quant)?;
    let calibrated = use_calibration(graph, quant, path);
    let mut lowered = if calibrated {
        quantize_model_from(graph, quant, batches, &pipeline_options())?.lowered
    } else {
        run_pipeline(graph, &pipeline_options())
            .context("running the pass pipeline")?
            .0
    };
    let engine = match engine {
        EngineArg::Jit => Engine::Jit,
        EngineArg::Interp => Engine::Interpreter,
    };
    // Quantized when it was calibrated here or already holds integer ops (a dumped int8 .qir,
    // a QDQ model lowered by the pipeline).
    let dynamic = dynamic::apply(&mut lowered, quant)? > 0;
    let quantized = calibrated
        || dynamic
        || lowered
            .node_ids()
            .any(|id| lowered.node(id).op.kind().is_some_and(|k| k.is_internal()));
    let model = CompiledModel::from_lowered(
        lowered,
        quantized,
        &CompileOptions {
            engine,
            threads,
            codegen: codegen.clone(),
            ..Default::default()
        },
    )
    .with_context(|| format!("compiling {}", path.display()))?;
    note!(
        "compiled {} ({}, {}) in {:.0} ms",
        path.display(),
        if quantized { "int8" } else { "fp32" },
        model.engine_description(),
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(model)
}

/// Counts rows of `scores` ([batch, classes]) whose argmax equals the label.
pub(crate) fn top1(scores: &Tensor, labels: &Tensor) -> Result<(usize, usize)> {
    let labels = labels
        .to_i64_vec()
        .map_err(anyhow::Error::msg)
        .context("labels")?;
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
            let best = row
                .iter()
                .enumerate()
                .fold(0, |best, (i, &v)| if v > row[best] { i } else { best });
            best as i64 == label
        })
        .count();
    Ok((correct, rows))
}

/// The one progress bar of the process, on standard error (hidden when it is not a
/// terminal): the passes of the pipeline, and calibration samples within `insert-qdq`.
pub(crate) fn progress_bar() -> &'static indicatif::ProgressBar {
    static BAR: std::sync::OnceLock<indicatif::ProgressBar> = std::sync::OnceLock::new();
    BAR.get_or_init(|| {
        let style = indicatif::ProgressStyle::with_template(
            "rewriting {bar:30} {pos}/{len} passes  {msg} {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        indicatif::ProgressBar::new(0).with_style(style)
    })
}

/// Pipeline options that move [`progress_bar`] as each pass starts.
pub(crate) fn pipeline_options() -> PipelineOptions {
    PipelineOptions {
        progress: qlift_passes::Progress::new(|index, passes, name| {
            let bar = progress_bar();
            bar.set_length(passes as u64);
            bar.set_position(index as u64);
            bar.set_message(name.to_string());
            if index == passes {
                bar.finish_and_clear();
            }
        }),
        step_progress: qlift_passes::Progress::new(|done, total, what| {
            progress_bar().set_message(format!("{what} {done}/{total}"))
        }),
        ..Default::default()
    }
}

/// Quantizes `graph` with the calibration data and options of `q`, with progress shown on
/// [`progress_bar`] (passes, then calibration samples within `insert-qdq`).
pub(crate) fn quantize_model(
    graph: &Graph,
    q: &QuantArgs,
    pipeline: &PipelineOptions,
) -> Result<Quantized> {
    quantize_model_from(graph, q, None, pipeline)
}

/// [`quantize_model`] on calibration `batches` (one tensor per graph input each) when they
/// are given, else on the `--calib` files.
pub(crate) fn quantize_model_from(
    graph: &Graph,
    q: &QuantArgs,
    batches: Option<Vec<Vec<Tensor>>>,
    pipeline: &PipelineOptions,
) -> Result<Quantized> {
    if let Some(path) = &q.emit_plan {
        output::check_writable(path, "--emit-plan")?;
    }
    if batches.is_some() && (q.target_sqnr_db.is_some() || q.max_drop.is_some()) {
        bail!("--target-sqnr and --max-drop measure layers on --calib files; they do not calibrate over a stream yet");
    }
    let (plan, source) = plan::from_args(q)?;
    let calibration = match batches {
        Some(_) => Vec::new(),
        None => bind_inputs(graph, &q.calib).context("calibration data (--calib)")?,
    };
    let opts = QuantizeOptions {
        method: q.method,
        scheme: match q.activations {
            Activations::U8 => ActivationScheme::AsymmetricU8,
            Activations::I8 => ActivationScheme::SymmetricI8,
        },
        min_sqnr_db: q.min_sqnr_db,
        weights: match q.weights {
            Weights::PerChannel => WeightGranularity::PerChannel,
            Weights::PerTensor => WeightGranularity::PerTensor,
        },
        outliers: match q.outliers {
            OutliersArg::Int16 => Outliers::Int16,
            OutliersArg::Fp32 => Outliers::Fp32,
        },
        ptq: q.ptq.options(),
    };
    let start = Instant::now();
    let limits = qlift::Limits::default();
    plan::note_overrides(q, &plan);
    let progress = |done, total| {
        progress_bar().set_message(format!("insert-qdq: calibrating, {done}/{total} samples"))
    };
    let quantized = match batches {
        Some(b) => {
            let mut b = b.into_iter();
            qlift::quantize::quantize_batches(
                graph,
                &mut || b.next().map(Ok),
                &opts,
                &plan,
                pipeline,
                &limits,
                &progress,
            )
        }
        None => qlift::quantize::quantize_limited_planned(
            graph,
            &calibration,
            &opts,
            &plan,
            pipeline,
            &limits,
            &progress,
        ),
    }
    .map_err(|e| qlift::plan::name_plan(e, &source))?;
    progress_bar().finish_and_clear();
    if quantized.samples == 0 {
        note!("the pipeline stopped before calibration (insert-qdq): nothing was quantized");
        return Ok(quantized);
    }
    note!(
        "quantized with {} on {} calibration samples in {:.0} ms{}",
        q.method,
        quantized.samples,
        start.elapsed().as_secs_f64() * 1e3,
        match quantized.non_finite {
            0 => String::new(),
            n => format!(" ({n} NaN/Inf calibration values ignored)"),
        }
    );
    for line in &quantized.ptq_notes {
        note!("{line}");
    }
    plan::finish(graph, q, &opts, &calibration, quantized)
}
