//! Specialization: binds a graph's symbolic dimensions and folds its shape arithmetic.
//!
//! Exporters write shapes as computations (`Shape → Gather → Unsqueeze → Concat →
//! Reshape`). [`specialize`] walks the graph once in topological order: it substitutes
//! the bound extents into the input types, tracks the elements of integer values computed
//! from shapes ([`SymInt`]: `[N, sequence, 12, 32]` stays exact while `N` and `sequence`
//! are symbols), re-infers every node's result type with them (so a Reshape whose shape
//! comes from `Shape` gets the result type `[N,sequence,12,32]`, not unknown extents), and
//! evaluates every node whose operands are all constants with the interpreter's kernels.
//! With nothing bound it makes an imported graph's types as precise as they can be; with
//! every symbol bound it leaves a graph whose shapes are all known (or the batch), which
//! is what code generation takes.

use crate::graph::{Graph, NodeId, NodeOp, ValueId};
use crate::ops::{self, InferCtx};
use crate::verify::OperandValues;
use crate::{
    DType, Dim, IrError, OpKind, Shape, SymInt, Symbol, Tensor, TensorType, VerifierError,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Extents bound to the symbolic dimensions of a graph.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Binding {
    /// The batch size, or `None` to keep the batch symbolic.
    pub batch: Option<usize>,
    /// Named dimensions (those not listed stay symbolic).
    pub syms: BTreeMap<Symbol, usize>,
}

impl Binding {
    /// `d` with the bound extents substituted.
    pub fn dim(&self, d: Dim) -> Dim {
        match d {
            Dim::Batch => self.batch.map_or(Dim::Batch, Dim::Fixed),
            Dim::Sym(s) => self.syms.get(&s).map_or(d, |&n| Dim::Fixed(n)),
            d => d,
        }
    }

    /// `shape` with the bound extents substituted.
    pub fn shape(&self, shape: &Shape) -> Shape {
        Shape(shape.dims().iter().map(|&d| self.dim(d)).collect())
    }

    /// Whether nothing is bound.
    pub fn is_empty(&self) -> bool {
        self.batch.is_none() && self.syms.is_empty()
    }
}

/// Checks concrete `inputs` against `declared` input types (of the graph `graph_name`) and
/// returns the extents they bind: the batch (when an input has one) and every named
/// dimension, each the same wherever it occurs. Zero extents are refused.
pub fn bind_inputs<'a>(
    graph_name: &str,
    declared: impl ExactSizeIterator<Item = (&'a str, &'a TensorType)>,
    inputs: &[Tensor],
) -> Result<Binding, IrError> {
    bind_input_shapes(
        graph_name,
        declared,
        inputs.iter().map(|t| (t.dtype(), t.shape())),
    )
}

/// [`bind_input_shapes`] against `graph`'s own inputs (names and declared types), without
/// allocating when only the batch is bound (a warm run allocates nothing).
pub fn bind_graph_inputs<'s>(
    graph: &Graph,
    inputs: impl ExactSizeIterator<Item = (DType, &'s [usize])>,
) -> Result<Binding, IrError> {
    let declared = graph
        .input_value_iter()
        .map(|v| (graph.value(v).name.as_str(), graph.value_type(v)));
    bind_input_shapes(&graph.name, declared, inputs)
}

/// [`bind_inputs`] from the inputs' dtypes and shapes alone (borrowed buffers, a caller
/// asking for output shapes before it allocates them).
pub fn bind_input_shapes<'a, 's>(
    graph_name: &str,
    declared: impl ExactSizeIterator<Item = (&'a str, &'a TensorType)>,
    inputs: impl ExactSizeIterator<Item = (DType, &'s [usize])>,
) -> Result<Binding, IrError> {
    if inputs.len() != declared.len() {
        return Err(IrError::Input {
            name: graph_name.to_string(),
            message: format!(
                "the graph has {} inputs, {} were given",
                declared.len(),
                inputs.len()
            ),
        });
    }
    let mut binding = Binding::default();
    // Which input bound each symbol, for messages (the batch's apart: a warm run of a model
    // with only a batch allocates nothing here).
    let mut bound_by: HashMap<Dim, &str> = HashMap::new();
    let mut batch_by: Option<&str> = None;
    for ((name, ty), (dtype, shape)) in declared.zip(inputs) {
        let bad = |message: String| IrError::Input {
            name: name.to_string(),
            message,
        };
        if dtype != ty.dtype {
            return Err(bad(format!(
                "expected {} elements, got {}",
                ty.dtype, dtype
            )));
        }
        if shape.len() != ty.shape.rank() {
            return Err(bad(format!("expected shape {}, got {:?}", ty.shape, shape)));
        }
        for (axis, (&d, &n)) in ty.shape.dims().iter().zip(shape).enumerate() {
            let slot = match d {
                Dim::Fixed(f) if f != n => {
                    return Err(bad(format!(
                        "expected shape {}, got {:?} (axis {axis})",
                        ty.shape, shape
                    )))
                }
                Dim::Fixed(_) => continue,
                Dim::Batch => &mut binding.batch,
                Dim::Sym(s) => {
                    let entry = binding.syms.get(&s).copied();
                    match entry {
                        None => {
                            binding.syms.insert(s, n);
                        }
                        Some(m) if m != n => {
                            return Err(bad(format!(
                                "dimension `{}` is {n} here but {m} in input `{}`",
                                s.name(),
                                bound_by[&d]
                            )))
                        }
                        Some(_) => {}
                    }
                    if n == 0 {
                        return Err(bad(format!(
                            "dimension `{}` is 0 (empty tensors are refused)",
                            s.name()
                        )));
                    }
                    bound_by.entry(d).or_insert(name);
                    continue;
                }
                // A body's input whose extent changes from one iteration to the next (a Loop's
                // carried value that grows): any extent binds it.
                Dim::Dyn => continue,
            };
            match *slot {
                None => {
                    *slot = Some(n);
                    batch_by = Some(name);
                }
                Some(b) if b != n => {
                    return Err(bad(format!(
                        "batch size {n} disagrees with {b} bound by an earlier input"
                    )))
                }
                Some(_) => {}
            }
        }
    }
    if binding.batch == Some(0) {
        return Err(IrError::Input {
            name: batch_by.unwrap_or(graph_name).to_string(),
            message: "batch size 0 (empty tensors are refused)".to_string(),
        });
    }
    Ok(binding)
}

/// Most bytes a folded constant may take: folding happens for shapes and small tables; a
/// larger result is left to run-time code (it would only grow the compiled program).
const FOLD_LIMIT_BYTES: usize = 64 << 20;

/// Returns `graph` with `binding` substituted, integer shape computations tracked, result
/// types re-inferred, and every node whose value is known evaluated (see [`Folder`]).
/// Value names stay; nodes nothing uses any more are removed.
pub fn specialize(graph: &Graph, binding: &Binding) -> Result<Graph, IrError> {
    let mut g = graph.clone();
    for v in g.input_values() {
        let ty = &mut g.node_mut(v.node).outputs[0].ty;
        ty.shape = binding.shape(&ty.shape);
    }
    let mut folder = Folder::new(binding.clone());
    for id in g.topo_order()? {
        folder.visit(&mut g, id)?;
    }
    // An If whose condition became a constant is replaced by its branch, whose nodes may
    // then fold in turn (each round removes an If, so this ends).
    while crate::ops::control::inline_constant_branches(&mut g)? {
        let mut folder = Folder::new(binding.clone());
        for id in g.topo_order()? {
            folder.visit(&mut g, id)?;
        }
    }
    g.remove_dead_nodes();
    crate::verify(&g)?;
    Ok(g)
}

/// One node at a time, in topological order, what [`specialize`] does to a graph: the
/// importer runs it on each node it builds, so converters see constants and exact types
/// as soon as they can be known.
pub struct Folder {
    binding: Binding,
    /// Elements of integer values computed from shapes, by value.
    known: HashMap<ValueId, Vec<SymInt>>,
}

impl Folder {
    /// A folder substituting `binding`.
    pub fn new(binding: Binding) -> Folder {
        Folder {
            binding,
            known: HashMap::new(),
        }
    }

    /// Re-infers node `id`'s result type with what is known of its operands (constants and
    /// tracked shape values), tracks its integer result, and makes it a constant when its
    /// value is known: every operand is a constant (evaluated with the interpreter's kernels,
    /// except QuantizeLinear and DequantizeLinear, which the lowering passes read, and
    /// results above [`FOLD_LIMIT_BYTES`]), or every element was tracked (`Shape` of a value
    /// whose extents are known). Returns whether the node became a constant.
    pub fn visit(&mut self, g: &mut Graph, id: NodeId) -> Result<bool, IrError> {
        let mut op = match &g.node(id).op {
            NodeOp::Apply(op) => op.clone(),
            NodeOp::Const(t) => {
                if let Some(v) = small_ints(t) {
                    self.known.insert(
                        ValueId {
                            node: id,
                            output: 0,
                        },
                        v,
                    );
                }
                return Ok(false);
            }
            NodeOp::Input => return Ok(false),
        };
        if op.kind.has_subgraphs() {
            // Bodies see what is known of the values they capture, and the binding.
            let operands = g.node_inputs(id);
            let types: Vec<Option<TensorType>> = operands
                .iter()
                .map(|v| v.map(|v| g.value_type(v).clone()))
                .collect();
            let refs: Vec<Option<&TensorType>> = types.iter().map(Option::as_ref).collect();
            let refined = crate::ops::control::refine_bodies(&mut op, &refs, &self.binding)
                .map_err(|e| {
                    IrError::Verifier(vec![VerifierError {
                        node: g.node(id).name.clone(),
                        op: op.kind.name().to_string(),
                        message: format!("specializing its bodies: {e}"),
                    }])
                })?;
            if refined {
                if let NodeOp::Apply(o) = &mut g.node_mut(id).op {
                    *o = op.clone();
                }
            }
        }
        let node = g.node(id);
        let fail = |message: String| {
            IrError::Verifier(vec![VerifierError {
                node: node.name.clone(),
                op: op.kind.name().to_string(),
                message,
            }])
        };
        let operands = g.node_inputs(id);
        let types: Vec<Option<&TensorType>> = operands
            .iter()
            .map(|v| v.map(|v| g.value_type(v)))
            .collect();
        let constants = crate::verify::operand_constants(g, &operands);
        let symbolic: Vec<Option<Vec<SymInt>>> = operands
            .iter()
            .map(|v| v.and_then(|v| self.known.get(&v).cloned()))
            .collect();
        let declared: Vec<TensorType> = node
            .outputs
            .iter()
            .map(|v| TensorType {
                shape: self.binding.shape(&v.ty.shape),
                ..v.ty.clone()
            })
            .collect();
        let values = OperandValues {
            constants: &constants,
            symbolic: &symbolic,
        };
        let inferred =
            crate::verify::infer_op_with(&op, &types, &values, &declared).map_err(&fail)?;
        let cx = InferCtx {
            op: &op,
            inputs: &types,
            constants: &constants,
            symbolic: &symbolic,
            declared: &declared,
        };
        let tracked = inferred.first().and_then(|r| ops::symbolic(&cx, r));
        let small = inferred.len() == 1
            && inferred[0].shape.volume().is_some_and(|(n, p)| {
                p == 0 && n.saturating_mul(inferred[0].dtype.size_of()) <= FOLD_LIMIT_BYTES
            });
        let evaluable = operands.iter().zip(&constants).all(|(v, c)| v.is_none() || c.is_some())
            && !matches!(op.kind, OpKind::QuantizeLinear | OpKind::DequantizeLinear)
            // Weight-only weights stay 4- or 8-bit: the JIT unpacks them at run time.
            && op.kind != OpKind::BlockDequantizeLinear
            // A loop may run long: control flow runs when the model does (a constant
            // condition is folded by inlining its branch instead).
            && !op.kind.has_subgraphs();
        let value = if !small {
            None
        } else if evaluable {
            Some(
                crate::interp::eval_op(&op, &constants, &types, &inferred)
                    .map_err(&fail)?
                    .remove(0),
            )
        } else {
            tracked.as_ref().and_then(|t| known_tensor(&inferred[0], t))
        };
        match value {
            Some(t) => {
                let t = Arc::new(t);
                if let Some(v) = small_ints(&t) {
                    self.known.insert(
                        ValueId {
                            node: id,
                            output: 0,
                        },
                        v,
                    );
                }
                // A quantized result keeps its parameters on the constant.
                let quant = inferred[0].quant.clone();
                g.make_constant(id, t)?;
                g.node_mut(id).outputs[0].ty.quant = quant;
                Ok(true)
            }
            None => {
                static_reshape(g, id, &op, &inferred)?;
                for (v, ty) in g.node_mut(id).outputs.iter_mut().zip(inferred) {
                    v.ty = ty;
                }
                bypass_whole_slice(g, id, &op)?;
                if let Some(t) = tracked {
                    self.known.insert(
                        ValueId {
                            node: id,
                            output: 0,
                        },
                        t,
                    );
                }
                Ok(false)
            }
        }
    }
}

/// The tensor of type `ty` whose elements `tracked` knows all of, if it does.
fn known_tensor(ty: &TensorType, tracked: &[SymInt]) -> Option<Tensor> {
    let shape = ty.shape.as_fixed()?;
    if !ty.dtype.is_integer()
        || ty.quant.is_some()
        || shape.iter().product::<usize>() != tracked.len()
    {
        return None;
    }
    let values: Vec<i64> = tracked.iter().map(|v| v.int()).collect::<Option<_>>()?;
    Tensor::from_i64_values(ty.dtype, shape, values).ok()
}

/// A Reshape whose shape is computed, but whose result extents are all known (or the
/// batch), takes its spec as an attribute instead: the shape computation is then dead and
/// goes, and code generation sees a plain copy.
fn static_reshape(
    g: &mut Graph,
    id: NodeId,
    op: &crate::Op,
    result: &[TensorType],
) -> Result<(), IrError> {
    if op.kind != OpKind::Reshape || op.attrs.get("shape").is_some() {
        return Ok(());
    }
    let operands = g.node_inputs(id);
    let (Some(x), Some(out)) = (operands.first().copied().flatten(), result.first()) else {
        return Ok(());
    };
    let Some(spec) = ops::shape::reshape_spec_for(&g.value_type(x).shape, &out.shape) else {
        return Ok(());
    };
    if let NodeOp::Apply(op) = &mut g.node_mut(id).op {
        op.attrs.set("shape", crate::AttrValue::Ints(spec));
    }
    g.set_node_input(id, 1, None)?;
    g.node_mut(id).arity = 1;
    Ok(())
}

/// A Slice that keeps every element (steps of 1 and a result of its operand's type, which
/// then starts at 0 and ends past the extent on every axis: exporters write `x[:, :]` so)
/// is bypassed: its users read the operand, and the copy goes with the dead node. A graph
/// output keeps its Slice (its name is the output's).
fn bypass_whole_slice(g: &mut Graph, id: NodeId, op: &crate::Op) -> Result<(), IrError> {
    if op.kind != OpKind::Slice {
        return Ok(());
    }
    let operands = g.node_inputs(id);
    let steps_one = match operands.get(4).copied().flatten() {
        Some(v) => g
            .const_value(v)
            .is_some_and(|t| t.to_i64_vec().is_ok_and(|v| v.iter().all(|&s| s == 1))),
        None => true,
    };
    let Some(Some(x)) = operands.first().copied() else {
        return Ok(());
    };
    let out = ValueId {
        node: id,
        output: 0,
    };
    if !steps_one
        || g.value_type(x) != g.value_type(out)
        || !g.value_type(out).shape.is_specialized()
        || g.outputs().contains(&out)
    {
        return Ok(());
    }
    g.replace_all_uses(out, x)
}

/// The elements of a small integer constant (at most a few dozen: shapes, axes, indices).
fn small_ints(t: &Tensor) -> Option<Vec<SymInt>> {
    (t.dtype().is_integer() && t.shape().len() <= 1 && t.len() <= 64)
        .then(|| t.to_i64_vec().ok())
        .flatten()
        .map(|v| v.into_iter().map(SymInt::Int).collect())
}

/// Specializes `graph` for inputs that bound `binding`: with the batch kept symbolic when
/// that leaves every extent known (one compiled program then serves every batch size), else
/// with the batch bound too (the batch flows into shape values, say a `Range` over it).
/// Returns the graph and the binding it used.
pub fn specialize_for(graph: &Graph, binding: &Binding) -> Result<(Graph, Binding), IrError> {
    let symbolic_batch = Binding {
        batch: None,
        ..binding.clone()
    };
    let g = specialize(graph, &symbolic_batch)?;
    if !needs_binding(&g) || binding.batch.is_none() {
        return Ok((g, symbolic_batch));
    }
    Ok((specialize(graph, binding)?, binding.clone()))
}

/// Whether `graph` still has something to specialize: a symbolic dimension other than the
/// batch or an unknown extent on any value, or an operand that code generation needs as a
/// constant ([`OpKind::constant_operands`]) computed at run time.
pub fn needs_binding(graph: &Graph) -> bool {
    graph.node_ids().any(|id| {
        let node = graph.node(id);
        node.outputs.iter().any(|v| !v.ty.shape.is_specialized())
            || node.op.kind().is_some_and(|k| {
                let operands = graph.node_inputs(id);
                k.constant_operands().iter().any(|&i| {
                    operands
                        .get(i)
                        .copied()
                        .flatten()
                        .is_some_and(|v| graph.const_value(v).is_none())
                })
            })
    })
}
