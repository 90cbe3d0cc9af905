//! The subcommands of the `qlift` command line, one file each (`main.rs` parses and
//! dispatches), and what several of them share: loading a model, binding `.npy` inputs to
//! graph inputs, quantizing from `--calib`, compiling for an engine.

pub(crate) mod bench;
pub(crate) mod compile;
pub(crate) mod dump;
pub(crate) mod quantize;
pub(crate) mod report;
pub(crate) mod run;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use qlift::npy::read_npy;
use qlift::{load_onnx, ActivationScheme, CalibrationMethod, CompileOptions, CompiledModel, Engine, ImportOptions, QuantizeOptions, Quantized};
use qlift_ir::{text, Graph, Tensor};
use qlift_passes::{run_pipeline, PipelineOptions};
use std::path::Path;
use std::time::Instant;

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
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Activations {
    /// Asymmetric uint8 (as ONNX Runtime).
    U8,
    /// Symmetric int8.
    I8,
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

/// Loads an ONNX model, or parses IR text when the file ends in `.qir`.
pub(crate) fn load_model(path: &Path) -> Result<Graph> {
    if path.extension().is_some_and(|e| e == "qir") {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let graph = text::parse(&text).with_context(|| format!("parsing {}", path.display()))?;
        qlift_ir::verify(&graph).with_context(|| format!("verifying {}", path.display()))?;
        return Ok(graph);
    }
    load_onnx(path, &ImportOptions::default()).with_context(|| format!("loading {}", path.display()))
}

/// Writes text to a file, or to standard output.
pub(crate) fn emit(path: Option<&Path>, text: &str) -> Result<()> {
    match path {
        Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
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
pub(crate) fn compile_model(path: &Path, quant: &QuantArgs, engine: EngineArg, threads: usize) -> Result<CompiledModel> {
    compile_model_with(path, quant, engine, threads, &qlift::CodegenOptions::default())
}

/// [`compile_model`] with code generation options.
pub(crate) fn compile_model_with(path: &Path, quant: &QuantArgs, engine: EngineArg, threads: usize, codegen: &qlift::CodegenOptions) -> Result<CompiledModel> {
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

/// Counts rows of `scores` ([batch, classes]) whose argmax equals the label.
pub(crate) fn top1(scores: &Tensor, labels: &Tensor) -> Result<(usize, usize)> {
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
pub(crate) fn quantize_model(graph: &Graph, q: &QuantArgs, pipeline: &PipelineOptions) -> Result<Quantized> {
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
    let quantized = qlift::quantize(graph, &calibration, &opts, pipeline, &|done, total| {
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
