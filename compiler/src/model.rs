//! The embedding API: build a [`CompiledModel`] once from an ONNX model (and calibration
//! data to quantize it), then call [`CompiledModel::run`] from any number of threads.

use crate::{
    limits, load_onnx, load_onnx_bytes, quantize, Error, ImportOptions, Limits, QuantizeOptions,
};
use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::{Binding, Graph, NodeOp, Tensor, TensorBuf, TensorBufMut, TensorType, ValueId};
use qlift_passes::{run_pipeline, PipelineOptions};
use std::path::Path;
use std::sync::{Arc, Mutex};
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
    /// Most specializations (compiled programs for distinct input shapes) a model with
    /// symbolic dimensions keeps; the least recently used one is dropped beyond it.
    /// 0 means [`DEFAULT_SPECIALIZATIONS`].
    pub max_specializations: usize,
}

/// How many specializations a model keeps by default: a few sequence lengths or image
/// sizes in turn, without holding the code of every shape ever seen.
pub const DEFAULT_SPECIALIZATIONS: usize = 8;

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
    /// Multiply-accumulates of one sample, for products (Conv, Gemm, MatMul and their
    /// integer forms), from the shapes the program was compiled for.
    pub macs: Option<u64>,
}

enum Executor {
    /// One program for every batch size (the graph's only symbol is the batch).
    Jit(Arc<JitProgram>),
    /// Programs specialized on input shapes, compiled at the first call with those shapes.
    Specialized(Specializations),
    /// A graph with control flow: compiled parts and bodies under a driver.
    Flow(Arc<qlift_codegen::FlowProgram>),
    Interpreter,
}

/// A bounded cache of programs by the extents they were specialized on (the batch among
/// them only when it flows into shape values), most recently used last.
struct Specializations {
    codegen: CodegenOptions,
    /// The ISA the programs are generated for.
    isa: String,
    threads: usize,
    capacity: usize,
    programs: Mutex<Vec<(Binding, Arc<JitProgram>)>>,
}

impl Specializations {
    /// The program for inputs that bound `binding`, compiled now if it is not cached.
    fn program(&self, graph: &Graph, binding: &Binding) -> Result<Arc<JitProgram>, Error> {
        let symbolic_batch = Binding {
            batch: None,
            ..binding.clone()
        };
        {
            let mut programs = self.programs.lock().map_err(|_| {
                Error::Ir(qlift_ir::IrError::Build(
                    "specialization cache poisoned".into(),
                ))
            })?;
            if let Some(i) = programs
                .iter()
                .position(|(b, _)| *b == symbolic_batch || b == binding)
            {
                let entry = programs.remove(i);
                let program = entry.1.clone();
                programs.push(entry);
                return Ok(program);
            }
        }
        // Compiled outside the lock: other shapes keep running meanwhile.
        let (specialized, used) = qlift_ir::specialize_for(graph, binding)?;
        let mut program = JitProgram::compile(&specialized, &self.codegen)?;
        program.set_threads(self.threads);
        let program = Arc::new(program);
        let mut programs = self.programs.lock().map_err(|_| {
            Error::Ir(qlift_ir::IrError::Build(
                "specialization cache poisoned".into(),
            ))
        })?;
        if !programs.iter().any(|(b, _)| *b == used) {
            if programs.len() >= self.capacity {
                programs.remove(0);
            }
            programs.push((used, program.clone()));
        }
        Ok(program)
    }

    fn len(&self) -> usize {
        self.programs.lock().map_or(0, |p| p.len())
    }
}

/// A compiled model: the lowered graph and the code that runs it. `Send + Sync`, so one
/// instance serves many threads; every call checks its inputs before running.
pub struct CompiledModel {
    graph: Graph,
    executor: Executor,
    compile_time: Duration,
    quantized: bool,
    limits: Limits,
    memory: RunMemory,
}

/// What [`CompiledModel::run_bytes`] needs, computed once: which inputs carry the batch, and
/// the values a run allocates as `(bytes of one sample, times the batch dimension occurs)`:
/// the outputs for the JIT (its scratch comes from the arena plan), every value for the
/// interpreter.
struct RunMemory {
    /// The shapes of the values a run allocates, with their element sizes.
    values: Vec<(qlift_ir::Shape, usize)>,
    /// Each recurrent layer's name, the extents of `X` that are its steps and samples, and
    /// its directions, for [`Limits::max_recurrent_steps`].
    recurrent: Vec<(String, qlift_ir::Dim, qlift_ir::Dim, u64)>,
}

impl RunMemory {
    fn of(graph: &Graph, engine: Engine) -> RunMemory {
        let size = |ty: &TensorType| (ty.shape.clone(), ty.dtype.size_of());
        let values = match engine {
            Engine::Jit => graph
                .outputs()
                .iter()
                .map(|v| size(graph.value_type(*v)))
                .collect(),
            Engine::Interpreter => graph
                .node_ids()
                .flat_map(|id| {
                    graph
                        .node(id)
                        .outputs
                        .iter()
                        .map(|v| size(&v.ty))
                        .collect::<Vec<_>>()
                })
                .collect(),
        };
        let recurrent = graph
            .node_ids()
            .filter_map(|id| {
                let NodeOp::Apply(op) = &graph.node(id).op else {
                    return None;
                };
                let r = qlift_ir::Recurrent::of(op.kind, &op.attrs).ok()?;
                let x = graph.value_type(graph.node_inputs(id).first().copied().flatten()?);
                let d = x.shape.dims();
                let (seq, batch) = if r.batch_first {
                    (*d.get(1)?, *d.first()?)
                } else {
                    (*d.first()?, *d.get(1)?)
                };
                Some((graph.node(id).name.clone(), seq, batch, r.dirs() as u64))
            })
            .collect();
        RunMemory { values, recurrent }
    }
}

impl CompiledModel {
    /// Compiles an ONNX model file; with `calibration` (one tensor per graph input, samples
    /// on axis 0) the model is quantized to int8 first, else it runs in fp32.
    pub fn from_onnx(
        path: &Path,
        calibration: Option<&[Tensor]>,
        opts: &CompileOptions,
    ) -> Result<CompiledModel, Error> {
        let start = Instant::now();
        let graph = load_onnx(path, &opts.import)?;
        Self::build(graph, calibration, opts, start)
    }

    /// Compiles an ONNX model from bytes (external data is refused).
    pub fn from_onnx_bytes(
        bytes: &[u8],
        calibration: Option<&[Tensor]>,
        opts: &CompileOptions,
    ) -> Result<CompiledModel, Error> {
        let start = Instant::now();
        let graph = load_onnx_bytes(bytes, None, &opts.import)?;
        Self::build(graph, calibration, opts, start)
    }

    /// Compiles a graph that already went through the pipeline (for example
    /// [`crate::Quantized::lowered`]): only code generation is left.
    pub fn from_lowered(
        lowered: Graph,
        quantized: bool,
        opts: &CompileOptions,
    ) -> Result<CompiledModel, Error> {
        let start = Instant::now();
        limits::check_graph(&lowered, &opts.import.limits)?;
        let executor = Self::executor(&lowered, opts)?;
        let memory = RunMemory::of(&lowered, opts.engine);
        Ok(CompiledModel {
            graph: lowered,
            executor,
            compile_time: start.elapsed(),
            quantized,
            limits: opts.import.limits.clone(),
            memory,
        })
    }

    /// Compiles a graph (imported, built or parsed); it is verified first, so an invalid one
    /// is a verifier error naming its nodes, not an internal error of a pass.
    pub fn from_graph(
        graph: &Graph,
        calibration: Option<&[Tensor]>,
        opts: &CompileOptions,
    ) -> Result<CompiledModel, Error> {
        qlift_ir::verify(graph)?;
        limits::check_graph(graph, &opts.import.limits)?;
        Self::build(graph.clone(), calibration, opts, Instant::now())
    }

    fn build(
        graph: Graph,
        calibration: Option<&[Tensor]>,
        opts: &CompileOptions,
        start: Instant,
    ) -> Result<CompiledModel, Error> {
        let pipeline = PipelineOptions::default();
        let lowered = match calibration {
            Some(c) => {
                quantize::quantize_limited(
                    &graph,
                    c,
                    &opts.quantize,
                    &pipeline,
                    &opts.import.limits,
                    &|_, _| {},
                )?
                .lowered
            }
            None => run_pipeline(&graph, &pipeline)?.0,
        };
        limits::check_graph(&lowered, &opts.import.limits)?;
        let executor = Self::executor(&lowered, opts)?;
        let memory = RunMemory::of(&lowered, opts.engine);
        Ok(CompiledModel {
            graph: lowered,
            executor,
            compile_time: start.elapsed(),
            quantized: calibration.is_some(),
            limits: opts.import.limits.clone(),
            memory,
        })
    }

    /// The executor: with the JIT, one program now when the batch is the graph's only symbol
    /// (after folding its shape arithmetic), else programs per input shapes, later.
    fn executor(lowered: &Graph, opts: &CompileOptions) -> Result<Executor, Error> {
        Ok(match opts.engine {
            Engine::Jit if qlift_ir::subgraph_depth(lowered) > 0 => {
                let specialized = qlift_ir::specialize(lowered, &Binding::default())?;
                if qlift_ir::subgraph_depth(&specialized) == 0 {
                    // Every If folded away: one program as for any graph.
                    return Self::executor(&specialized, opts);
                }
                Executor::Flow(Arc::new(qlift_codegen::FlowProgram::compile(
                    &specialized,
                    &opts.codegen,
                    &opts.import.limits.run_options(),
                )?))
            }
            Engine::Jit => {
                let specialized = qlift_ir::specialize(lowered, &Binding::default())?;
                if qlift_ir::needs_binding(&specialized) {
                    let capacity = if opts.max_specializations == 0 {
                        DEFAULT_SPECIALIZATIONS
                    } else {
                        opts.max_specializations
                    };
                    let isa = qlift_codegen::isa::describe(
                        qlift_codegen::isa::target_isa(&opts.codegen)?.as_ref(),
                    );
                    return Ok(Executor::Specialized(Specializations {
                        codegen: opts.codegen.clone(),
                        isa,
                        threads: opts.threads,
                        capacity,
                        programs: Mutex::new(Vec::new()),
                    }));
                }
                let mut program = JitProgram::compile(&specialized, &opts.codegen)?;
                program.set_threads(opts.threads);
                Executor::Jit(Arc::new(program))
            }
            Engine::Interpreter => Executor::Interpreter,
        })
    }

    /// The extents `inputs` bind (checked against the graph's input types).
    fn binding<I: TensorBuf>(&self, inputs: &[I]) -> Result<Binding, Error> {
        Ok(qlift_ir::bind_graph_inputs(
            &self.graph,
            inputs.iter().map(|t| (t.dtype(), t.shape())),
        )?)
    }

    /// Memory a run on `inputs` needs besides the inputs (outputs and scratch for the JIT,
    /// every value for the interpreter), checked against [`Limits::max_run_bytes`] before
    /// anything is allocated. Extents come from the inputs: the batch and the named
    /// dimensions they bind (an extent known only from values counts as 1).
    pub fn run_bytes<I: TensorBuf>(&self, inputs: &[I]) -> Result<u64, Error> {
        // No allocation here: `run_into` allocates nothing once warm.
        let binding = self.binding(inputs)?;
        let batch = binding.batch.unwrap_or(1);
        let values = self
            .memory
            .values
            .iter()
            .try_fold(0u64, |total, (shape, size)| {
                let count = shape.dims().iter().try_fold(1u64, |n, &d| {
                    let extent = match binding.dim(d) {
                        qlift_ir::Dim::Fixed(e) => e as u64,
                        _ => 1,
                    };
                    n.checked_mul(extent)
                })?;
                total.checked_add(count.checked_mul(*size as u64)?)
            });
        let bytes = match &self.executor {
            Executor::Jit(p) => values
                .zip(p.program().arena.bytes(batch))
                .and_then(|(v, a)| v.checked_add(a as u64)),
            Executor::Specialized(_) | Executor::Flow(_) | Executor::Interpreter => values,
        };
        let bytes = bytes.unwrap_or(u64::MAX);
        let extent = |d: qlift_ir::Dim| match binding.dim(d) {
            qlift_ir::Dim::Fixed(e) => e as u64,
            _ => 1,
        };
        for (node, seq, samples, dirs) in &self.memory.recurrent {
            let steps = extent(*seq)
                .saturating_mul(extent(*samples))
                .saturating_mul(*dirs);
            if steps > self.limits.max_recurrent_steps {
                return Err(Error::Limit {
                    what: format!("recurrent steps of layer `{node}` in one run (sequence length × samples × directions; stream shorter chunks)"),
                    value: steps,
                    limit: self.limits.max_recurrent_steps,
                });
            }
        }
        if bytes > self.limits.max_run_bytes {
            return Err(Error::Limit {
                what: format!("memory for a run on a batch of {batch} (outputs and intermediate values; run smaller batches)"),
                value: bytes,
                limit: self.limits.max_run_bytes,
            });
        }
        Ok(bytes)
    }

    /// Runs the model on `inputs` (graph-input order; the batch is taken from them).
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, Error> {
        match &self.executor {
            // The interpreter takes the tensors as they are (no copy).
            Executor::Interpreter => {
                self.run_bytes(inputs)?;
                Ok(qlift_ir::interp::run_with(
                    &self.graph,
                    inputs,
                    &self.limits.run_options(),
                )?)
            }
            _ => self.run_buffers(inputs),
        }
    }

    /// [`Self::run`] on inputs owned or borrowed ([`qlift_ir::TensorRef`]: a numpy array, a C
    /// caller's buffer), which the JIT reads where they lie.
    pub fn run_buffers<I: TensorBuf>(&self, inputs: &[I]) -> Result<Vec<Tensor>, Error> {
        self.run_bytes(inputs)?;
        match &self.executor {
            Executor::Jit(p) => Ok(p.run_buffers(inputs)?),
            Executor::Specialized(s) => Ok(s
                .program(&self.graph, &self.binding(inputs)?)?
                .run_buffers(inputs)?),
            Executor::Flow(p) => Ok(p.run(&owned(inputs))?),
            Executor::Interpreter => Ok(qlift_ir::interp::run_with(
                &self.graph,
                &owned(inputs),
                &self.limits.run_options(),
            )?),
        }
    }

    /// Runs the model writing into preallocated `outputs` (see [`Self::outputs`] for their
    /// types): no allocation per call with the JIT once warm.
    pub fn run_into(&self, inputs: &[Tensor], outputs: &mut [Tensor]) -> Result<(), Error> {
        self.run_buffers_into(inputs, outputs)
    }

    /// [`Self::run_into`] on buffers owned or borrowed: the JIT reads the inputs and writes
    /// the outputs where they lie ([`qlift_ir::TensorRef`], [`qlift_ir::TensorMut`]; their
    /// shapes from [`Self::output_shapes`]).
    pub fn run_buffers_into<I: TensorBuf, O: TensorBufMut>(
        &self,
        inputs: &[I],
        outputs: &mut [O],
    ) -> Result<(), Error> {
        self.run_bytes(inputs)?;
        match &self.executor {
            Executor::Jit(p) => Ok(p.run_buffers_into(inputs, outputs)?),
            Executor::Specialized(s) => Ok(s
                .program(&self.graph, &self.binding(inputs)?)?
                .run_buffers_into(inputs, outputs)?),
            Executor::Flow(_) | Executor::Interpreter => {
                let results = match &self.executor {
                    Executor::Flow(p) => p.run(&owned(inputs))?,
                    _ => qlift_ir::interp::run_with(
                        &self.graph,
                        &owned(inputs),
                        &self.limits.run_options(),
                    )?,
                };
                if outputs.len() != results.len() {
                    return Err(qlift_codegen::CodegenError::Output {
                        name: "outputs".into(),
                        message: format!(
                            "{} output buffers for {} outputs",
                            outputs.len(),
                            results.len()
                        ),
                    }
                    .into());
                }
                for ((o, r), (name, _)) in outputs.iter_mut().zip(&results).zip(self.outputs()) {
                    if o.dtype() != r.dtype() || o.shape() != r.shape() {
                        let message = format!(
                            "output buffer is {}{:?}, expected {}{:?}",
                            o.dtype(),
                            o.shape(),
                            r.dtype(),
                            r.shape()
                        );
                        return Err(qlift_codegen::CodegenError::Output { name, message }.into());
                    }
                    o.bytes_mut().copy_from_slice(r.data().as_bytes());
                }
                Ok(())
            }
        }
    }

    /// The shapes of the outputs a run on `inputs` gives, for a caller that allocates them
    /// ([`Self::run_buffers_into`]). With symbolic dimensions besides the batch this
    /// compiles (and caches) the program for the inputs' shapes, as a run would.
    pub fn output_shapes<I: TensorBuf>(&self, inputs: &[I]) -> Result<Vec<Vec<usize>>, Error> {
        let binding = self.binding(inputs)?;
        match &self.executor {
            Executor::Jit(p) => Ok(p.output_shapes(inputs)?),
            Executor::Specialized(s) => {
                Ok(s.program(&self.graph, &binding)?.output_shapes(inputs)?)
            }
            Executor::Flow(_) | Executor::Interpreter => {
                let specialized;
                let graph = if qlift_ir::needs_binding(&self.graph) {
                    specialized = qlift_ir::specialize(&self.graph, &binding)?;
                    &specialized
                } else {
                    &self.graph
                };
                let batch = binding.batch.unwrap_or(1);
                let shape = |v: qlift_ir::ValueId| {
                    let shape = &graph.value_type(v).shape;
                    match shape.is_specialized() {
                        true => Ok(shape.resolve(batch)),
                        false => Err(Error::Value { name: graph.value(v).name.clone(), message: format!("the output's shape {shape} depends on input values: only a run gives it") }),
                    }
                };
                graph.outputs().iter().map(|&v| shape(v)).collect()
            }
        }
    }

    /// The graph inputs: names and types (the batch dimension shows as `N`).
    pub fn inputs(&self) -> Vec<(String, TensorType)> {
        self.named_types(&self.graph.input_values())
    }

    /// The graph outputs: names and types.
    pub fn outputs(&self) -> Vec<(String, TensorType)> {
        self.named_types(self.graph.outputs())
    }

    fn named_types(&self, values: &[ValueId]) -> Vec<(String, TensorType)> {
        values
            .iter()
            .map(|&v| {
                (
                    self.graph.value(v).name.clone(),
                    self.graph.value_type(v).clone(),
                )
            })
            .collect()
    }

    /// The lowered graph the engine runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Multiply-accumulates of one sample in products: from the program last run when the
    /// model has symbolic dimensions (its graph's products have no size until then), else
    /// from the graph.
    pub fn macs(&self) -> u64 {
        let sum =
            |m: &mut dyn Iterator<Item = Option<u64>>| m.flatten().fold(0, u64::saturating_add);
        match self.current_program() {
            Some(p) => sum(&mut p.program().steps.iter().map(|s| s.macs)),
            None => sum(&mut self.graph.node_ids().map(|id| self.graph.node_macs(id))),
        }
    }

    /// Import, rewrites, calibration and code generation, wall time.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Whether the model was quantized.
    pub fn is_quantized(&self) -> bool {
        self.quantized
    }

    /// How many programs specialized on input shapes are compiled and cached now (0 for a
    /// model compiled once for every batch size, or interpreted).
    pub fn specializations(&self) -> usize {
        match &self.executor {
            Executor::Specialized(s) => s.len(),
            _ => 0,
        }
    }

    /// The program the last calls ran: the one program, or the most recently used
    /// specialization.
    fn current_program(&self) -> Option<Arc<JitProgram>> {
        match &self.executor {
            Executor::Jit(p) => Some(Arc::clone(p)),
            Executor::Specialized(s) => s.programs.lock().ok()?.last().map(|(_, p)| p.clone()),
            Executor::Flow(_) | Executor::Interpreter => None,
        }
    }

    /// Time per kernel since the last [`Self::reset_profile`], for a JIT model compiled with
    /// `CodegenOptions::profile`: one entry per kernel call of the program (the most recently
    /// used specialization of a model with symbolic dimensions), in order.
    pub fn profile(&self) -> Option<Vec<KernelTime>> {
        let p = self.current_program()?;
        let steps = &p.program().steps;
        Some(
            p.profile()?
                .into_iter()
                .filter_map(|t| {
                    let s = steps.get(t.step)?;
                    Some(KernelTime {
                        node: s.node.clone(),
                        op: s.op.clone(),
                        form: s.form.clone(),
                        nanos: t.nanos,
                        calls: t.calls,
                        macs: s.macs,
                    })
                })
                .collect(),
        )
    }

    /// The kernel form the code generator chose for each kernel call of the program (the
    /// most recently used specialization), as `(node name, form)` in call order; `None` for
    /// the interpreter, or before the first call of a model with symbolic dimensions. What a
    /// report shows per node without timing anything.
    pub fn kernel_forms(&self) -> Option<Vec<(String, String)>> {
        let p = self.current_program()?;
        Some(
            p.program()
                .steps
                .iter()
                .map(|s| (s.node.clone(), s.form.clone()))
                .collect(),
        )
    }

    /// Zeroes the kernel timers (see [`Self::profile`]).
    pub fn reset_profile(&self) {
        if let Some(p) = self.current_program() {
            p.reset_profile();
        }
    }

    /// The engine and, for the JIT, the ISA with its features.
    pub fn engine_description(&self) -> String {
        match &self.executor {
            Executor::Jit(p) => format!("jit {}", p.isa()),
            Executor::Specialized(s) => format!("jit {}, specialized per input shape", s.isa),
            Executor::Flow(_) => "jit, control flow driven between compiled parts".to_string(),
            Executor::Interpreter => "reference interpreter".to_string(),
        }
    }
}

/// Owned copies of `inputs`, for the interpreter.
fn owned<I: TensorBuf>(inputs: &[I]) -> Vec<Tensor> {
    inputs.iter().map(TensorBuf::to_tensor).collect()
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
