//! The `qlift` command line: subcommands in the style of `tract` and `tvmc`.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use qlift::npy::{read_npy, write_npy};
use qlift::{load_onnx, ImportOptions};
use qlift_ir::{text, Graph, Tensor};
use qlift_passes::{pass_names, run_pipeline, PipelineOptions, PrintAfter};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

const EXAMPLES: &str = "\
Examples:
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
    /// Run a model on .npy inputs with the reference interpreter.
    #[command(after_help = "Examples:
  qlift run model.onnx --input x.npy --output y.npy
  qlift run model.onnx --input image=x.npy --input mask=m.npy --output logits=y.npy
  qlift run model.onnx --input x.npy --labels y.npy      # prints top-1 accuracy

The batch size is taken from the inputs (the model's symbolic batch dimension).")]
    Run(RunArgs),
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
        let (optimized, runs) = run_pipeline(&graph, &opts).context("running the pass pipeline")?;
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

fn run(args: &RunArgs) -> Result<()> {
    let graph = load_model(&args.model)?;
    let inputs = bind_inputs(&graph, &args.inputs)?;
    let start = Instant::now();
    let outputs = qlift_ir::interp::run(&graph, &inputs)?;
    let elapsed = start.elapsed();
    let batch = qlift_ir::interp::bind_batch(&graph, &inputs)?;
    eprintln!("ran {} with batch {batch} in {:.1} ms (reference interpreter)", args.model.display(), elapsed.as_secs_f64() * 1e3);
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
