//! `--stream` for `qlift run` and `qlift bench`: the model called chunk by chunk with its
//! state carried (`qlift::stream`), what both subcommands share: the flags, binding the data
//! inputs (the state inputs are the stream's), and calibrating over a stream.

use super::output::note;
use super::{
    bind_names, compile_graph, compile_graph_from, in_range, split_binding, use_calibration,
    EngineArg, QuantArgs,
};
use anyhow::{bail, Context, Result};
use qlift::stream::{chunks, detect_state_pairs, StatePair};
use qlift::{CompiledModel, Stream};
use qlift_ir::{Graph, Tensor, TensorType};
use std::path::Path;

/// Longest chunk, and the highest axis, the flags accept.
const MAX_CHUNK: u64 = 1_000_000;
const MAX_AXIS: u64 = 7;

#[derive(clap::Args, Clone, Default)]
pub(crate) struct StreamArgs {
    /// Run as a stream: the data inputs split along --axis into chunks of --chunk, one call
    /// per chunk, each state output fed back to its input on the next call (starting from
    /// zeros). State pairs are found by name (h0/hn, state_in/state_out, x_prev/x_next,
    /// x_init/x_final, with equal types) or given with --state; --input then gives the data
    /// inputs only, and --calib calibrates over the same stream of chunks.
    #[arg(long)]
    pub(crate) stream: bool,
    /// Chunk length along --axis (with --stream), 1 to 1,000,000.
    #[arg(long, default_value_t = 1, requires = "stream", value_parser = in_range::<1, MAX_CHUNK>)]
    pub(crate) chunk: usize,
    /// The axis the data inputs are chunked along (with --stream): 1, the time axis of a
    /// batch-first model, by default; 0 to 7.
    #[arg(long, default_value_t = 1, requires = "stream", value_parser = in_range::<0, MAX_AXIS>)]
    pub(crate) axis: usize,
    /// A state pair INPUT=OUTPUT (with --stream; repeat for several). Found by name when
    /// not given.
    #[arg(long = "state", value_name = "IN=OUT", requires = "stream")]
    pub(crate) states: Vec<String>,
}

/// Values by name with their types.
type Named = Vec<(String, TensorType)>;

/// The graph's inputs and outputs with their types.
fn signature(graph: &Graph) -> (Named, Named) {
    let named = |v: &[qlift_ir::ValueId]| {
        v.iter()
            .map(|&v| (graph.value(v).name.clone(), graph.value_type(v).clone()))
            .collect::<Vec<_>>()
    };
    (named(&graph.input_values()), named(graph.outputs()))
}

impl StreamArgs {
    /// The state pairs of `graph`: `--state` resolved, or found by name.
    pub(crate) fn pairs(&self, graph: &Graph) -> Result<Vec<StatePair>> {
        let (inputs, outputs) = signature(graph);
        let names = |v: &[(String, TensorType)]| {
            v.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.states.is_empty() {
            let pairs = detect_state_pairs(&inputs, &outputs);
            if pairs.is_empty() {
                bail!(
                    "--stream: no input and output of the model are named as a state pair (h0/hn, state_in/state_out, x_prev/x_next, x_init/x_final, with equal types); give them with --state IN=OUT (inputs: {}; outputs: {})",
                    names(&inputs),
                    names(&outputs)
                );
            }
            return Ok(pairs);
        }
        self.states
            .iter()
            .map(|s| {
                let (i, o) = s
                    .split_once('=')
                    .with_context(|| format!("--state {s}: expected INPUT=OUTPUT"))?;
                let input = inputs.iter().position(|(n, _)| n == i).with_context(|| {
                    format!(
                        "--state {s}: the model has no input `{i}` (inputs: {})",
                        names(&inputs)
                    )
                })?;
                let output = outputs.iter().position(|(n, _)| n == o).with_context(|| {
                    format!(
                        "--state {s}: the model has no output `{o}` (outputs: {})",
                        names(&outputs)
                    )
                })?;
                Ok(StatePair { input, output })
            })
            .collect()
    }

    /// Binds `--input` arguments to the data inputs (those not in `pairs`), by name or
    /// position among them.
    pub(crate) fn bind_data(
        &self,
        graph: &Graph,
        pairs: &[StatePair],
        args: &[String],
    ) -> Result<Vec<Tensor>> {
        let inputs = graph.input_values();
        let is_state = |i: usize| pairs.iter().any(|p| p.input == i);
        for arg in args {
            if let (Some(name), _) = split_binding(arg) {
                if inputs
                    .iter()
                    .enumerate()
                    .any(|(i, &v)| is_state(i) && graph.value(v).name == name)
                {
                    bail!("--input {arg}: `{name}` is a state input, which the stream carries (it starts from zeros)");
                }
            }
        }
        let names: Vec<String> = inputs
            .iter()
            .enumerate()
            .filter(|(i, _)| !is_state(*i))
            .map(|(_, &v)| graph.value(v).name.clone())
            .collect();
        bind_names(&names, args)
    }

    /// A stream over `model` with `pairs`.
    pub(crate) fn open<'m>(
        &self,
        model: &'m CompiledModel,
        pairs: &[StatePair],
    ) -> Result<Stream<'m>> {
        Ok(Stream::with_pairs(model, pairs)?)
    }

    /// The calibration batches of a stream: the float `model` run over the calibration
    /// sequences `data` chunk by chunk with the state carried, and every call's inputs (the
    /// chunk and the state entering it) kept, so that ranges cover every step of every chunk
    /// and the states a stream really carries.
    pub(crate) fn calibration_batches(
        &self,
        model: &CompiledModel,
        pairs: &[StatePair],
        data: &[Tensor],
    ) -> Result<Vec<Vec<Tensor>>> {
        let mut stream = self.open(model, pairs)?;
        let mut batches = Vec::new();
        for part in chunks(data, self.axis, self.chunk)? {
            let states = stream.state().to_vec();
            let states = if states.is_empty() {
                stream.initial_state(part[0].shape()[0])?
            } else {
                states
            };
            stream.step(&part)?;
            batches.push(stream.assemble(part, states)?);
        }
        Ok(batches)
    }

    /// `graph` compiled for streaming: with `--calib` (the data inputs' calibration
    /// sequences), the float model first streams them chunk by chunk and the int8 model is
    /// calibrated on every call's inputs ([`StreamArgs::calibration_batches`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn compile(
        &self,
        graph: &Graph,
        path: &Path,
        quant: &QuantArgs,
        pairs: &[StatePair],
        engine: EngineArg,
        threads: usize,
        codegen: &qlift::CodegenOptions,
    ) -> Result<CompiledModel> {
        if !use_calibration(graph, quant, path) {
            return compile_graph(graph, path, quant, engine, threads, codegen);
        }
        let data = self
            .bind_data(graph, pairs, &quant.calib)
            .context("calibration data (--calib, the data inputs of the stream)")?;
        let float = compile_graph(
            graph,
            path,
            &QuantArgs {
                calib: Vec::new(),
                ..quant.clone()
            },
            EngineArg::Jit,
            threads,
            codegen,
        )?;
        let batches = self.calibration_batches(&float, pairs, &data)?;
        note!(
            "calibrating over a stream: {} calls of chunks of {} along axis {}",
            batches.len(),
            self.chunk,
            self.axis
        );
        compile_graph_from(graph, path, quant, Some(batches), engine, threads, codegen)
    }
}
