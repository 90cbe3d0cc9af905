//! The reference interpreter: executes a graph node by node with the kernels in `ops`.
//!
//! It is the oracle for everything downstream. It binds the batch size from the inputs,
//! checks every input against the graph's declared types, and checks every result against
//! the static type the verifier inferred, so that inference and evaluation cannot drift.

use crate::graph::{Graph, NodeId, NodeOp, ValueId};
use crate::ops::{self, EvalCtx};
use crate::{Dim, IrError, Tensor, TensorType};
use std::collections::HashMap;
use std::sync::Arc;

/// Most iterations one Loop or Scan node runs by default (see [`Options`]): about a million,
/// far beyond the sequences and refinement loops of real models (a Loop over the tokens of a
/// long text runs a few thousand), and a few seconds of the interpreter's time on a small
/// body, so a Loop whose condition never turns false fails quickly instead of hanging.
pub const DEFAULT_MAX_LOOP_ITERATIONS: u64 = 1 << 20;

/// Most bytes a Loop's or Scan's stacked outputs may take by default (1 GiB, the importer's
/// largest tensor): they grow with the trip count, which the model computes at run time.
pub const DEFAULT_MAX_STACKED_BYTES: u64 = 1 << 30;

/// Limits of one run: what a graph computed at run time (a Loop's trip count) may demand.
/// Exceeding one is an error naming the node, never a hang or an abort.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Most iterations of one Loop or Scan node per execution.
    pub max_loop_iterations: u64,
    /// Most bytes of the stacked scan outputs of one Loop or Scan node.
    pub max_stacked_bytes: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_loop_iterations: DEFAULT_MAX_LOOP_ITERATIONS,
            max_stacked_bytes: DEFAULT_MAX_STACKED_BYTES,
        }
    }
}

/// Evaluates one op on concrete operands with the reference kernels: what constant folding
/// uses, so that folded values are exactly what the interpreter would compute.
pub fn eval_op(
    op: &crate::Op,
    inputs: &[Option<&Tensor>],
    input_types: &[Option<&TensorType>],
    output_types: &[TensorType],
) -> Result<Vec<Tensor>, String> {
    ops::eval(&EvalCtx {
        op,
        inputs,
        input_types,
        output_types,
        options: &Options::default(),
    })
}

/// Every value computed by one run, for per-layer comparisons and debugging.
pub struct Trace {
    /// The bound batch size.
    pub batch: usize,
    /// Values by id (inputs, constants and results of every node).
    pub values: HashMap<ValueId, Arc<Tensor>>,
    /// The graph outputs, in order.
    pub outputs: Vec<Arc<Tensor>>,
}

/// Runs the graph on `inputs` (in graph-input order) and returns its outputs.
pub fn run(graph: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, IrError> {
    run_with(graph, inputs, &Options::default())
}

/// [`run`] under the limits of `options` (a Loop's iterations).
pub fn run_with(
    graph: &Graph,
    inputs: &[Tensor],
    options: &Options,
) -> Result<Vec<Tensor>, IrError> {
    let trace = execute(graph, inputs, false, options)?;
    Ok(trace
        .outputs
        .into_iter()
        .map(|t| Arc::try_unwrap(t).unwrap_or_else(|t| (*t).clone()))
        .collect())
}

/// Runs the graph and keeps every intermediate value.
pub fn run_traced(graph: &Graph, inputs: &[Tensor]) -> Result<Trace, IrError> {
    execute(graph, inputs, true, &Options::default())
}

/// Checks `inputs` against the graph's inputs and returns the batch size they bind
/// (1 when no input has a batch dimension).
pub fn bind_batch(graph: &Graph, inputs: &[Tensor]) -> Result<usize, IrError> {
    let values = graph.input_values();
    let declared = values
        .iter()
        .map(|v| (graph.value(*v).name.as_str(), graph.value_type(*v)));
    bind_batch_to(&graph.name, declared, inputs)
}

/// [`bind_batch`] against declared `(name, type)` inputs of the graph named `graph_name`
/// (for compiled programs, which keep their input types but not the graph).
pub fn bind_batch_to<'a>(
    graph_name: &str,
    declared: impl ExactSizeIterator<Item = (&'a str, &'a TensorType)>,
    inputs: &[Tensor],
) -> Result<usize, IrError> {
    Ok(crate::bind_inputs(graph_name, declared, inputs)?
        .batch
        .unwrap_or(1))
}

fn execute(
    graph: &Graph,
    inputs: &[Tensor],
    keep_all: bool,
    options: &Options,
) -> Result<Trace, IrError> {
    let values = graph.input_values();
    let declared = values
        .iter()
        .map(|v| (graph.value(*v).name.as_str(), graph.value_type(*v)));
    let binding = crate::bind_inputs(&graph.name, declared, inputs)?;
    let batch = binding.batch.unwrap_or(1);
    // Symbolic extents other than the batch: bind everything and fold the shape
    // arithmetic first (value ids stay those of `graph`, minus folded-away nodes).
    let specialized;
    let graph = if crate::needs_binding(graph) {
        specialized = crate::specialize(graph, &binding)?;
        &specialized
    } else {
        graph
    };
    let order = graph.topo_order()?;
    // How many more reads each value has, so that buffers are dropped after their last use.
    let mut reads: HashMap<ValueId, usize> = HashMap::new();
    for &id in &order {
        for v in graph.node_inputs(id).into_iter().flatten() {
            *reads.entry(v).or_default() += 1;
        }
    }
    for v in graph.outputs() {
        *reads.entry(*v).or_default() += 1;
    }
    let mut values: HashMap<ValueId, Arc<Tensor>> = HashMap::new();
    let mut kept: HashMap<ValueId, Arc<Tensor>> = HashMap::new();
    let position: HashMap<NodeId, usize> = graph
        .inputs()
        .iter()
        .enumerate()
        .map(|(i, &n)| (n, i))
        .collect();
    for &id in &order {
        let node = graph.node(id);
        let results: Vec<Arc<Tensor>> = match &node.op {
            NodeOp::Input => vec![Arc::new(inputs[position[&id]].clone())],
            NodeOp::Const(t) => vec![t.clone()],
            NodeOp::Apply(op) => {
                let operands = graph.node_inputs(id);
                let fail = |message: String| IrError::Eval {
                    node: node.name.clone(),
                    op: op.kind.name().to_string(),
                    message,
                };
                let tensors: Vec<Option<&Tensor>> = operands
                    .iter()
                    .map(|v| v.map(|v| values[&v].as_ref()))
                    .collect();
                let input_types: Vec<Option<&TensorType>> = operands
                    .iter()
                    .map(|v| v.map(|v| graph.value_type(v)))
                    .collect();
                let output_types: Vec<TensorType> =
                    node.outputs.iter().map(|v| v.ty.clone()).collect();
                let cx = EvalCtx {
                    op,
                    inputs: &tensors,
                    input_types: &input_types,
                    output_types: &output_types,
                    options,
                };
                let results = ops::eval(&cx).map_err(fail)?;
                for (t, ty) in results.iter().zip(&output_types) {
                    // Extents that depend on values computed at run time (`?`) are whatever the
                    // kernel made them; every other one must be what inference said.
                    let agrees = t.shape().len() == ty.shape.rank()
                        && ty
                            .shape
                            .dims()
                            .iter()
                            .zip(t.shape())
                            .all(|(d, &n)| *d == Dim::Dyn || d.resolve(batch) == n);
                    if t.dtype() != ty.dtype || !agrees {
                        return Err(fail(format!(
                            "kernel produced {}{:?}, the verifier inferred {}{} (a bug in qlift)",
                            t.dtype(),
                            t.shape(),
                            ty.dtype,
                            ty.shape
                        )));
                    }
                }
                for v in operands.into_iter().flatten() {
                    let left = reads.get_mut(&v).expect("counted above");
                    *left -= 1;
                    if *left == 0 {
                        if let Some(t) = values.remove(&v) {
                            if keep_all {
                                kept.insert(v, t);
                            }
                        }
                    }
                }
                results.into_iter().map(Arc::new).collect()
            }
        };
        for (output, t) in results.into_iter().enumerate() {
            let v = ValueId { node: id, output };
            if reads.get(&v).copied().unwrap_or(0) > 0 {
                values.insert(v, t);
            } else if keep_all {
                kept.insert(v, t);
            }
        }
    }
    let outputs = graph.outputs().iter().map(|v| values[v].clone()).collect();
    if keep_all {
        kept.extend(values);
    }
    Ok(Trace {
        batch,
        values: kept,
        outputs,
    })
}
