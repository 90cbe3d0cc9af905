//! `qlift run`: a model on .npy inputs, writing outputs and scoring labels.

use super::output::{check_writable, note, outln, print, Outputs};
use super::streaming::StreamArgs;
use super::{
    bind_inputs, compile_graph, in_range, load_model, quantized_ops, split_binding, top1,
    EngineArg, LoadArgs, QuantArgs, MAX_THREADS,
};
use anyhow::{bail, Context, Result};
use qlift::npy::{read_npy, to_npy_bytes};
use qlift_ir::{Graph, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  qlift run model.onnx --input x.npy --output y.npy
  qlift run model.onnx --input image=x.npy --input mask=m.npy --output logits=y.npy
  qlift run model.onnx --input x.npy --labels y.npy      # prints top-1 accuracy
  qlift run model.onnx --calib c.npy --method mse --input x.npy --labels y.npy   # int8
  qlift run examples/models/digits_lstm.onnx --stream --chunk 3 \\
      --input examples/models/digits_seq_test_x.npy --labels examples/models/digits_test_y.npy
  qlift run model.onnx --stream --axis 0 --chunk 160 --state h_in=h_out --input audio.npy -o y.npy

The batch size is taken from the inputs (the model's symbolic batch dimension). With --stream
the model is called once per chunk of the data inputs, its state outputs fed back (from zeros);
--output and --labels take the last call's outputs, and --calib calibrates over the same stream.")]
pub(crate) struct RunArgs {
    /// The ONNX model to run.
    model: PathBuf,
    #[command(flatten)]
    load: LoadArgs,
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
    /// Threads one call may use (the batch is split across them), 1 to 1024.
    #[arg(long, default_value_t = 1, value_parser = in_range::<1, MAX_THREADS>)]
    threads: usize,
    /// With --calib: also compile the fp32 model and print fp32 against int8 (accuracy with
    /// --labels, latency per sample and per batch, weight bytes).
    #[arg(long, requires = "calib", conflicts_with = "stream")]
    compare: bool,
    #[command(flatten)]
    stream: StreamArgs,
}

pub(crate) fn exec(args: &RunArgs) -> Result<()> {
    let graph = load_model(&args.model, &args.load)?;
    // Inputs, labels and output paths are all checked before compiling.
    let pairs = if args.stream.stream {
        args.stream.pairs(&graph)?
    } else {
        Vec::new()
    };
    let inputs = if args.stream.stream {
        args.stream.bind_data(&graph, &pairs, &args.inputs)?
    } else {
        bind_inputs(&graph, &args.inputs)?
    };
    let labels = args.labels.as_deref().map(read_npy).transpose()?;
    if args.compare {
        return compare(args, &graph, &inputs, labels.as_ref());
    }
    let destinations = destinations(&graph, &args.outputs)?;
    let batch = inputs
        .first()
        .and_then(|t| t.shape().first().copied())
        .unwrap_or(1);
    let outputs = if args.stream.stream {
        let model = args.stream.compile(
            &graph,
            &args.model,
            &args.quant,
            &pairs,
            args.engine,
            args.threads,
            &Default::default(),
        )?;
        let mut stream = args.stream.open(&model, &pairs)?;
        let start = Instant::now();
        let outputs = stream.run_chunked(&inputs, args.stream.axis, args.stream.chunk)?;
        let calls = inputs[0].shape()[args.stream.axis].div_ceil(args.stream.chunk);
        let (chunk, axis) = (args.stream.chunk, args.stream.axis);
        note!("streamed {} on {batch} samples in {calls} calls (chunks of {chunk} along axis {axis}) in {:.2} ms", args.model.display(), start.elapsed().as_secs_f64() * 1e3);
        outputs
    } else {
        let model = compile_graph(
            &graph,
            &args.model,
            &args.quant,
            args.engine,
            args.threads,
            &Default::default(),
        )?;
        let start = Instant::now();
        let outputs = model.run(&inputs)?;
        note!(
            "ran {} on {batch} samples in {:.2} ms",
            args.model.display(),
            start.elapsed().as_secs_f64() * 1e3
        );
        outputs
    };
    let mut files = Outputs::default();
    for (index, file) in destinations {
        files.write(file, &to_npy_bytes(&outputs[index]))?;
    }
    files.commit()?;
    if let Some(labels) = &labels {
        let (correct, total) = top1(&outputs[0], labels)?;
        outln!(
            "accuracy: {:.2}% ({correct}/{total})",
            100.0 * correct as f64 / total as f64
        )?;
    }
    Ok(())
}

/// Where each `--output` goes: (graph output index, file), checked writable.
fn destinations<'a>(graph: &Graph, outputs: &'a [String]) -> Result<Vec<(usize, &'a Path)>> {
    let names: Vec<String> = graph
        .outputs()
        .iter()
        .map(|v| graph.value(*v).name.clone())
        .collect();
    let mut destinations = Vec::with_capacity(outputs.len());
    for (position, arg) in outputs.iter().enumerate() {
        let (name, file) = split_binding(arg);
        let index = match name {
            Some(name) => names.iter().position(|n| n == name),
            None => (position < names.len()).then_some(position),
        };
        let index = index
            .with_context(|| format!("no output for `{arg}` (outputs: {})", names.join(", ")))?;
        check_writable(file, "--output")?;
        if destinations.iter().any(|(_, f)| *f == file) {
            bail!("--output {} is given twice", file.display());
        }
        destinations.push((index, file));
    }
    Ok(destinations)
}

/// `run --compare`: the fp32 and the int8 model side by side on the same inputs.
fn compare(
    args: &RunArgs,
    graph: &Graph,
    inputs: &[Tensor],
    labels: Option<&Tensor>,
) -> Result<()> {
    if let Some(ops) = quantized_ops(graph) {
        bail!(
            "--compare needs a float model; {} is already quantized ({ops})",
            args.model.display()
        );
    }
    let fp32_args = QuantArgs {
        calib: Vec::new(),
        mode: super::dynamic::Mode::Static,
        plan: None,
        ..args.quant.clone()
    };
    let codegen = qlift::CodegenOptions::default();
    let models = [
        (
            "fp32",
            compile_graph(
                graph,
                &args.model,
                &fp32_args,
                args.engine,
                args.threads,
                &codegen,
            )?,
        ),
        (
            "int8",
            compile_graph(
                graph,
                &args.model,
                &args.quant,
                args.engine,
                args.threads,
                &codegen,
            )?,
        ),
    ];
    let mut table = format!(
        "{:<6} {:>10} {:>14} {:>16} {:>12}\n",
        "", "accuracy", "batch latency", "1-sample latency", "weights"
    );
    for (name, model) in &models {
        let first: Vec<Tensor> = inputs
            .iter()
            .map(|t| t.slice_outer(0, 1))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        let outputs = model.run(inputs)?;
        let accuracy = match labels {
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
        let (batch_ms, one_ms) = (median(inputs, 21)?, median(&first, 201)?);
        let weights: usize = model
            .graph()
            .node_ids()
            .filter_map(|id| match &model.graph().node(id).op {
                qlift_ir::NodeOp::Const(t) => Some(t.data().as_bytes().len()),
                _ => None,
            })
            .sum();
        table.push_str(&format!(
            "{name:<6} {accuracy:>10} {:>11.3} ms {:>13.1} us {:>9.1} KiB\n",
            batch_ms,
            one_ms * 1e3,
            weights as f64 / 1024.0
        ));
    }
    print(&table)
}
