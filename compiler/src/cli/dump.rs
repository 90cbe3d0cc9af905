//! `qlift dump`: a model's IR as text or Graphviz dot, before or after the rewrite passes.

use super::output::{check_writable, note};
use super::{
    emit, load_model, pipeline_options, quantize_model, use_calibration, LoadArgs, QuantArgs,
};
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use qlift_ir::text;
use qlift_passes::{pass_names, run_pipeline, PipelineOptions, PrintAfter};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
enum DumpFormat {
    /// qlift's IR text format (re-parseable).
    Text,
    /// Graphviz dot.
    Dot,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  qlift dump model.onnx
  qlift dump model.onnx --full-constants -o model.qir
  qlift dump model.onnx --after all                 # the IR after every pass of the pipeline
  qlift dump model.onnx --after fold-bn --timings   # after one pass, with per-pass timings
  qlift dump model.onnx --after all --dump-dir ir/  # one numbered .qir file per pass
  qlift dump model.onnx --format dot -o model.dot && dot -Tsvg model.dot > model.svg
  qlift dump model.onnx --calib calib.npy --html model.html   # the graph and every pass, as a page")]
pub(crate) struct DumpArgs {
    /// The ONNX model (.onnx) or IR text (.qir) to print.
    model: PathBuf,
    #[command(flatten)]
    load: LoadArgs,
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
    /// `all`.
    #[arg(long, value_name = "PASS|all", alias = "print-after", long_help = after_help())]
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
    /// Write a self-contained HTML page instead: the graph after the pipeline (or after
    /// --after PASS) laid out, every pass's IR and diff, and with --calib the activation
    /// histograms and weights (`qlift report --html` adds measured errors and kernels).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["output", "format", "full_constants"])]
    html: Option<PathBuf>,
}

/// `--after`'s long help: every pass of the pipeline, in order, from the pass manager itself
/// (so that it cannot fall behind the pipeline).
fn after_help() -> String {
    let passes: Vec<String> = qlift_passes::all_passes()
        .into_iter()
        .map(|(name, about)| {
            let note = if name == qlift_passes::INSERT_QDQ {
                " (only with --calib)"
            } else {
                ""
            };
            format!("  {name}{note}: {about}")
        })
        .collect();
    format!("Run the rewrite pipeline and print the IR after this pass, or after every pass with `all`. The passes, in order:\n{}", passes.join("\n"))
}

pub(crate) fn exec(args: &DumpArgs) -> Result<()> {
    let after = if args.print_after_all {
        Some("all")
    } else {
        args.after.as_deref()
    };
    if after.is_none() && (args.dump_dir.is_some() || args.timings) {
        bail!("--dump-dir and --timings need --after PASS|all");
    }
    if let Some(path) = &args.output {
        check_writable(path, "--output")?;
    }
    if let Some(dir) = args.dump_dir.as_ref().filter(|d| d.exists() && !d.is_dir()) {
        bail!(
            "--dump-dir {}: exists and is not a directory",
            dir.display()
        );
    }
    if let Some(path) = &args.html {
        check_writable(path, "--html")?;
    }
    let print_after = match after {
        None => None,
        Some("all") => Some(PrintAfter::All),
        Some(name) if pass_names().contains(&name) => Some(PrintAfter::Pass(name.to_string())),
        Some(name) => bail!(
            "unknown pass `{name}` (passes: {}, or all)",
            pass_names().join(", ")
        ),
    };
    let mut graph = load_model(&args.model, &args.load)?;
    let calibrate = use_calibration(&graph, &args.quant, &args.model);
    if let Some(path) = &args.html {
        let stop_after = match print_after {
            Some(PrintAfter::Pass(name)) => Some(name),
            _ => None,
        };
        return write_html(args, path, &graph, calibrate, stop_after);
    }
    let print_after = match print_after {
        None if calibrate => Some(PrintAfter::All),
        other => other,
    };
    if let Some(print_after) = print_after {
        let stop_after = match &print_after {
            PrintAfter::Pass(name) => Some(name.clone()),
            _ => None,
        };
        let opts = PipelineOptions {
            print_after: print_after.clone(),
            dump_dir: args.dump_dir.clone(),
            stop_after,
            ..pipeline_options()
        };
        let (optimized, runs) = if calibrate {
            let q = quantize_model(&graph, &args.quant, &opts)?;
            (q.lowered, q.runs)
        } else {
            run_pipeline(&graph, &opts).context("running the pass pipeline")?
        };
        if args.timings {
            for run in &runs {
                note!(
                    "{:<18} {:>8.2} ms  nodes {:>4} -> {:<4} e-graph {:>5}",
                    run.name,
                    run.time.as_secs_f64() * 1e3,
                    run.nodes.0,
                    run.nodes.1,
                    run.egraph_nodes
                );
            }
        }
        if print_after == PrintAfter::All
            && matches!(args.format, DumpFormat::Text)
            && !args.full_constants
        {
            let text: Vec<String> = runs
                .iter()
                .filter_map(|r| r.dump.as_ref().map(|d| format!("; after {}\n{d}", r.name)))
                .collect();
            return emit(args.output.as_deref(), &text.join("\n"));
        }
        graph = optimized;
    }
    let out = match args.format {
        DumpFormat::Text => {
            let opts = text::PrintOptions {
                full_constants: args.full_constants,
                ..Default::default()
            };
            text::print(&graph, &opts)
        }
        DumpFormat::Dot => qlift_ir::dot::to_dot(&graph),
    };
    emit(args.output.as_deref(), &out)
}

/// `dump --html`: the pipeline (quantizing with --calib) with the IR after every pass, as a
/// page.
fn write_html(
    args: &DumpArgs,
    path: &std::path::Path,
    graph: &qlift_ir::Graph,
    calibrate: bool,
    stop_after: Option<String>,
) -> Result<()> {
    let opts = PipelineOptions {
        print_after: PrintAfter::All,
        dump_dir: args.dump_dir.clone(),
        stop_after,
        ..pipeline_options()
    };
    let (lowered, runs, calibration, float) = if calibrate {
        let q = quantize_model(graph, &args.quant, &opts)?;
        let (float, _) =
            run_pipeline(graph, &pipeline_options()).context("running the pass pipeline")?;
        (q.lowered, q.runs, Some(q.calibration), Some(float))
    } else {
        let (lowered, runs) = run_pipeline(graph, &opts).context("running the pass pipeline")?;
        (lowered, runs, None, None)
    };
    let mut summary = vec![(
        "pipeline".to_string(),
        runs.iter().map(|r| r.name).collect::<Vec<_>>().join(" → "),
    )];
    if calibrate {
        summary.push(args.quant.calibration_row());
    }
    let report = qlift::html::Report {
        title: args.model.display().to_string(),
        summary,
        graph: &lowered,
        original: Some(graph),
        float: float.as_ref(),
        steps: super::html::steps(graph, &runs),
        layers: Vec::new(),
        outputs: Vec::new(),
        calibration: calibration.as_ref(),
        kernels: Default::default(),
    };
    super::html::write(path, &report)
}
