//! The embedding API: build a [`CompiledModel`] once from an ONNX model (and calibration
//! data to quantize it), then call [`CompiledModel::run`] from any number of threads.

use crate::{load_onnx, load_onnx_bytes, quantize, Error, ImportOptions, QuantizeOptions};
use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::{Graph, Tensor, TensorType};
use qlift_passes::{run_pipeline, PipelineOptions};
use std::path::Path;
use std::time::{Duration, Instant};

/// What executes the compiled graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// Cranelift-generated code for the host CPU (the product).
    #[default]
    Jit,
    /// The reference interpreter (the oracle; slow).
    Interpreter,
}

/// How to compile a model.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// The engine.
    pub engine: Engine,
    /// Quantization; used when calibration data is given.
    pub quantize: QuantizeOptions,
    /// Code generation (target, ISA features).
    pub codegen: CodegenOptions,
    /// ONNX import (limits, frozen inputs).
    pub import: ImportOptions,
    /// Threads one call may use, splitting the batch (0 or 1: the calling thread only).
    /// Independent of how many threads call the model at once.
    pub threads: usize,
}

/// One kernel's share of a profiled model's time (see [`CompiledModel::profile`]).
#[derive(Clone, Debug)]
pub struct KernelTime {
    /// The node the kernel computes.
    pub node: String,
    /// Its op.
    pub op: String,
    /// The kernel form the code generator chose for it (`direct`, `pointwise`, `im2col-packed`, …).
    pub form: String,
    /// Nanoseconds in the kernel, summed over calls.
    pub nanos: u64,
    /// Calls.
    pub calls: u64,
}

enum Executor {
    Jit(Box<JitProgram>),
    Interpreter,
}

/// A compiled model: the lowered graph and the code that runs it. `Send + Sync`, so one
/// instance serves many threads; every call checks its inputs before running.
pub struct CompiledModel {
    graph: Graph,
    executor: Executor,
    compile_time: Duration,
    quantized: bool,
}

impl CompiledModel {
    /// Compiles an ONNX model file; with `calibration` (one tensor per graph input, samples
    /// on axis 0) the model is quantized to int8 first, else it runs in fp32.
    pub fn from_onnx(path: &Path, calibration: Option<&[Tensor]>, opts: &CompileOptions) -> Result<CompiledModel, Error> {
        let start = Instant::now();
        let graph = load_onnx(path, &opts.import)?;
        Self::build(graph, calibration, opts, start)
    }

    /// Compiles an ONNX model from bytes (external data is refused).
    pub fn from_onnx_bytes(bytes: &[u8], calibration: Option<&[Tensor]>, opts: &CompileOptions) -> Result<CompiledModel, Error> {
        let start = Instant::now();
        let graph = load_onnx_bytes(bytes, None, &opts.import)?;
        Self::build(graph, calibration, opts, start)
    }

    /// Compiles a graph that already went through the pipeline (for example
    /// [`crate::Quantized::lowered`]): only code generation is left.
    pub fn from_lowered(lowered: Graph, quantized: bool, opts: &CompileOptions) -> Result<CompiledModel, Error> {
        let start = Instant::now();
        let executor = Self::executor(&lowered, opts)?;
        Ok(CompiledModel { graph: lowered, executor, compile_time: start.elapsed(), quantized })
    }

    /// Compiles a graph (imported, built or parsed); it is verified first, so an invalid one
    /// is a verifier error naming its nodes, not an internal error of a pass.
    pub fn from_graph(graph: &Graph, calibration: Option<&[Tensor]>, opts: &CompileOptions) -> Result<CompiledModel, Error> {
        qlift_ir::verify(graph)?;
        Self::build(graph.clone(), calibration, opts, Instant::now())
    }

    fn build(graph: Graph, calibration: Option<&[Tensor]>, opts: &CompileOptions, start: Instant) -> Result<CompiledModel, Error> {
        let pipeline = PipelineOptions::default();
        let lowered = match calibration {
            Some(c) => quantize(&graph, c, &opts.quantize, &pipeline, &|_, _| {})?.lowered,
            None => run_pipeline(&graph, &pipeline)?.0,
        };
        let executor = Self::executor(&lowered, opts)?;
        Ok(CompiledModel { graph: lowered, executor, compile_time: start.elapsed(), quantized: calibration.is_some() })
    }

    fn executor(lowered: &Graph, opts: &CompileOptions) -> Result<Executor, Error> {
        Ok(match opts.engine {
            Engine::Jit => {
                let mut program = JitProgram::compile(lowered, &opts.codegen)?;
                program.set_threads(opts.threads);
                Executor::Jit(Box::new(program))
            }
            Engine::Interpreter => Executor::Interpreter,
        })
    }

    /// Runs the model on `inputs` (graph-input order; the batch is taken from them).
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, Error> {
        match &self.executor {
            Executor::Jit(p) => Ok(p.run(inputs)?),
            Executor::Interpreter => Ok(qlift_ir::interp::run(&self.graph, inputs)?),
        }
    }

    /// Runs the model writing into preallocated `outputs` (see [`Self::outputs`] for their
    /// types): no allocation per call with the JIT once warm.
    pub fn run_into(&self, inputs: &[Tensor], outputs: &mut [Tensor]) -> Result<(), Error> {
        match &self.executor {
            Executor::Jit(p) => Ok(p.run_into(inputs, outputs)?),
            Executor::Interpreter => {
                let results = qlift_ir::interp::run(&self.graph, inputs)?;
                for (o, r) in outputs.iter_mut().zip(results) {
                    *o = r;
                }
                Ok(())
            }
        }
    }

    /// The graph inputs: names and types (the batch dimension shows as `N`).
    pub fn inputs(&self) -> Vec<(String, TensorType)> {
        self.graph.input_values().iter().map(|&v| (self.graph.value(v).name.clone(), self.graph.value_type(v).clone())).collect()
    }

    /// The graph outputs: names and types.
    pub fn outputs(&self) -> Vec<(String, TensorType)> {
        self.graph.outputs().iter().map(|&v| (self.graph.value(v).name.clone(), self.graph.value_type(v).clone())).collect()
    }

    /// The lowered graph the engine runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Import, rewrites, calibration and code generation, wall time.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Whether the model was quantized.
    pub fn is_quantized(&self) -> bool {
        self.quantized
    }

    /// Time per kernel since the last [`Self::reset_profile`], for a JIT model compiled with
    /// `CodegenOptions::profile`: one entry per kernel call of the program, in order.
    pub fn profile(&self) -> Option<Vec<KernelTime>> {
        let Executor::Jit(p) = &self.executor else { return None };
        let steps = &p.program().steps;
        Some(
            p.profile()?
                .into_iter()
                .filter_map(|t| {
                    let s = steps.get(t.step)?;
                    Some(KernelTime { node: s.node.clone(), op: s.op.clone(), form: s.form.clone(), nanos: t.nanos, calls: t.calls })
                })
                .collect(),
        )
    }

    /// Zeroes the kernel timers (see [`Self::profile`]).
    pub fn reset_profile(&self) {
        if let Executor::Jit(p) = &self.executor {
            p.reset_profile();
        }
    }

    /// The engine and, for the JIT, the ISA with its features.
    pub fn engine_description(&self) -> String {
        match &self.executor {
            Executor::Jit(p) => format!("jit {}", p.isa()),
            Executor::Interpreter => "reference interpreter".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_model_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<CompiledModel>();
    }
}
