//! The graph: a petgraph DAG whose nodes produce typed values.

use crate::{IrError, Op, OpKind, QuantParams, Shape, Tensor, TensorType};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Index of a node. Stable across removals, so passes can hold on to it.
pub type NodeId = NodeIndex<u32>;

/// A value: result number `output` of node `node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId {
    /// The producing node.
    pub node: NodeId,
    /// Which of its results.
    pub output: usize,
}

/// A named, typed result of a node.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// Unique name within the graph (the ONNX value name when imported).
    pub name: String,
    /// Static type.
    pub ty: TensorType,
}

/// What a node computes.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeOp {
    /// A graph input; its value is supplied at run time.
    Input,
    /// A constant, shared by every graph (and node) that holds the same `Arc`.
    Const(Arc<Tensor>),
    /// An operation on the node's operands.
    Apply(Op),
}

impl NodeOp {
    /// Short name for messages and the text format: `input`, `const` or the op name.
    pub fn name(&self) -> &'static str {
        match self {
            NodeOp::Input => "input",
            NodeOp::Const(_) => "const",
            NodeOp::Apply(op) => op.kind.name(),
        }
    }

    /// The op kind of an `Apply` node.
    pub fn kind(&self) -> Option<OpKind> {
        match self {
            NodeOp::Apply(op) => Some(op.kind),
            _ => None,
        }
    }
}

/// A node of the graph. Its operands are the graph's incoming edges (see [`Use`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Node name (the ONNX node name when imported; may repeat a result name).
    pub name: String,
    /// What it computes.
    pub op: NodeOp,
    /// Number of operand slots, including missing optional ones.
    pub arity: usize,
    /// Its results.
    pub outputs: Vec<Value>,
}

/// An edge: result `output` of the source node is operand `input` of the target node.
/// Edges are the single source of truth for operands, so petgraph's algorithms (topological
/// order, reachability, dot export) see exactly what the interpreter executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Use {
    /// Result index on the producer.
    pub output: usize,
    /// Operand slot on the consumer.
    pub input: usize,
}

/// A model as a DAG of nodes, with ordered graph inputs and outputs.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// The graph's name (the ONNX graph name when imported).
    pub name: String,
    g: StableDiGraph<Node, Use>,
    inputs: Vec<NodeId>,
    outputs: Vec<ValueId>,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: &str) -> Graph {
        Graph {
            name: name.to_string(),
            ..Graph::default()
        }
    }

    /// The underlying petgraph, for algorithms and export.
    pub fn petgraph(&self) -> &StableDiGraph<Node, Use> {
        &self.g
    }

    /// Adds a graph input of the given type.
    pub fn add_input(&mut self, name: &str, ty: TensorType) -> ValueId {
        let id = self.g.add_node(Node {
            name: name.to_string(),
            op: NodeOp::Input,
            arity: 0,
            outputs: vec![Value {
                name: name.to_string(),
                ty,
            }],
        });
        self.inputs.push(id);
        ValueId {
            node: id,
            output: 0,
        }
    }

    /// Adds a constant. Its type is the tensor's, plus optional quantization parameters.
    pub fn add_const(
        &mut self,
        name: &str,
        value: Arc<Tensor>,
        quant: Option<QuantParams>,
    ) -> ValueId {
        let ty = TensorType {
            dtype: value.dtype(),
            shape: Shape::fixed(value.shape()),
            quant,
        };
        let id = self.g.add_node(Node {
            name: name.to_string(),
            op: NodeOp::Const(value),
            arity: 0,
            outputs: vec![Value {
                name: name.to_string(),
                ty,
            }],
        });
        ValueId {
            node: id,
            output: 0,
        }
    }

    /// Adds a node applying `op` to `inputs` (`None` for a missing optional operand), with
    /// declared results. The types are not checked here; [`crate::verify()`] does that.
    pub fn add_node(
        &mut self,
        name: &str,
        op: Op,
        inputs: &[Option<ValueId>],
        outputs: Vec<Value>,
    ) -> Result<NodeId, IrError> {
        for v in inputs.iter().flatten() {
            self.check_value(*v)?;
        }
        let id = self.g.add_node(Node {
            name: name.to_string(),
            op: NodeOp::Apply(op),
            arity: inputs.len(),
            outputs,
        });
        for (slot, v) in inputs.iter().enumerate() {
            if let Some(v) = v {
                self.g.add_edge(
                    v.node,
                    id,
                    Use {
                        output: v.output,
                        input: slot,
                    },
                );
            }
        }
        Ok(id)
    }

    /// Adds a node whose result types are inferred from its operands; returns its results.
    pub fn add_op(
        &mut self,
        name: &str,
        op: Op,
        inputs: &[Option<ValueId>],
        output_names: &[&str],
    ) -> Result<Vec<ValueId>, IrError> {
        let types = {
            let in_types: Vec<Option<&TensorType>> = inputs
                .iter()
                .map(|v| v.map(|v| self.value_type(v)))
                .collect();
            let constants = crate::verify::operand_constants(self, inputs);
            crate::verify::infer_op_with(
                &op,
                &in_types,
                &crate::verify::OperandValues {
                    constants: &constants,
                    symbolic: &[],
                },
                &[],
            )
            .map_err(|message| {
                IrError::Verifier(vec![crate::VerifierError {
                    node: name.to_string(),
                    op: op.kind.name().to_string(),
                    message,
                }])
            })?
        };
        if types.len() != output_names.len() {
            return Err(IrError::Build(format!(
                "node `{name}` has {} results, {} names given",
                types.len(),
                output_names.len()
            )));
        }
        let outputs = output_names
            .iter()
            .zip(types)
            .map(|(n, ty)| Value {
                name: n.to_string(),
                ty,
            })
            .collect();
        let id = self.add_node(name, op, inputs, outputs)?;
        Ok((0..output_names.len())
            .map(|output| ValueId { node: id, output })
            .collect())
    }

    fn check_value(&self, v: ValueId) -> Result<(), IrError> {
        match self.g.node_weight(v.node) {
            Some(n) if v.output < n.outputs.len() => Ok(()),
            _ => Err(IrError::Build(format!("value {v:?} does not exist"))),
        }
    }

    /// Sets the graph outputs.
    pub fn set_outputs(&mut self, outputs: Vec<ValueId>) -> Result<(), IrError> {
        for v in &outputs {
            self.check_value(*v)?;
        }
        self.outputs = outputs;
        Ok(())
    }

    /// The graph's input nodes, in order.
    pub fn inputs(&self) -> &[NodeId] {
        &self.inputs
    }

    /// The graph's input values, in order.
    pub fn input_values(&self) -> Vec<ValueId> {
        self.input_value_iter().collect()
    }

    /// [`Self::input_values`] without allocating (a warm run allocates nothing).
    pub fn input_value_iter(&self) -> impl ExactSizeIterator<Item = ValueId> + '_ {
        self.inputs.iter().map(|&node| ValueId { node, output: 0 })
    }

    /// The graph's outputs, in order.
    pub fn outputs(&self) -> &[ValueId] {
        &self.outputs
    }

    /// A node (panics on an id that is not in the graph: ids come from the graph itself).
    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    /// A node, mutably.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id]
    }

    /// Whether `id` names a node of this graph.
    pub fn contains(&self, id: NodeId) -> bool {
        self.g.contains_node(id)
    }

    /// All node ids in index order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.g.node_indices()
    }

    /// Number of nodes (inputs and constants included).
    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }

    /// A value's name and type.
    pub fn value(&self, v: ValueId) -> &Value {
        &self.g[v.node].outputs[v.output]
    }

    /// A value's type.
    pub fn value_type(&self, v: ValueId) -> &TensorType {
        &self.value(v).ty
    }

    /// The constant behind a value, if it is one.
    pub fn const_value(&self, v: ValueId) -> Option<&Arc<Tensor>> {
        match &self.g[v.node].op {
            NodeOp::Const(t) => Some(t),
            _ => None,
        }
    }

    /// Multiply-accumulates of one sample of node `id`: Conv, Gemm, MatMul and their integer
    /// forms; `None` for other ops and for shapes that are still symbolic (a program's
    /// specialized graph has them all).
    pub fn node_macs(&self, id: NodeId) -> Option<u64> {
        use OpKind::*;
        let kind = self.node(id).op.kind()?;
        let inputs = self.node_inputs(id);
        let known = |v: ValueId| {
            let shape = &self.value_type(v).shape;
            shape.is_specialized().then(|| shape.resolve(1))
        };
        self.node(id).outputs.first()?;
        let out = known(ValueId {
            node: id,
            output: 0,
        })?
        .iter()
        .product::<usize>() as u64;
        let w = known(inputs.get(1).copied().flatten()?)?;
        match kind {
            Conv | QConv | ConvInteger | QLinearConv => {
                Some(out.saturating_mul(w.get(1..)?.iter().product::<usize>() as u64))
            }
            Gemm | MatMul | QMatMul | MatMulInteger | QLinearMatMul => {
                let a = known(inputs[0]?)?;
                Some(out.saturating_mul(*a.last()? as u64))
            }
            _ => None,
        }
    }

    /// A node's operands by slot (`None` for missing optional operands).
    pub fn node_inputs(&self, id: NodeId) -> Vec<Option<ValueId>> {
        let mut inputs = vec![None; self.g[id].arity];
        for e in self.g.edges_directed(id, Direction::Incoming) {
            let u = e.weight();
            if let Some(slot) = inputs.get_mut(u.input) {
                *slot = Some(ValueId {
                    node: e.source(),
                    output: u.output,
                });
            }
        }
        inputs
    }

    /// The consumers of a value: `(node, operand slot)` pairs, sorted.
    pub fn users(&self, v: ValueId) -> Vec<(NodeId, usize)> {
        let mut users: Vec<_> = self
            .g
            .edges_directed(v.node, Direction::Outgoing)
            .filter(|e| e.weight().output == v.output)
            .map(|e| (e.target(), e.weight().input))
            .collect();
        users.sort();
        users
    }

    /// Sets (or clears) one operand of a node.
    pub fn set_node_input(
        &mut self,
        id: NodeId,
        slot: usize,
        v: Option<ValueId>,
    ) -> Result<(), IrError> {
        if slot >= self.g[id].arity {
            return Err(IrError::Build(format!(
                "node `{}` has no operand {slot}",
                self.g[id].name
            )));
        }
        if let Some(v) = v {
            self.check_value(v)?;
        }
        let old: Vec<_> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .filter(|e| e.weight().input == slot)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.g.remove_edge(e);
        }
        if let Some(v) = v {
            self.g.add_edge(
                v.node,
                id,
                Use {
                    output: v.output,
                    input: slot,
                },
            );
        }
        Ok(())
    }

    /// Makes every consumer of `old` (and the graph outputs) use `new` instead.
    pub fn replace_all_uses(&mut self, old: ValueId, new: ValueId) -> Result<(), IrError> {
        self.check_value(new)?;
        for (user, slot) in self.users(old) {
            self.set_node_input(user, slot, Some(new))?;
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
        Ok(())
    }

    /// Turns op node `id` into a constant holding `value` (its single result keeps its name
    /// and its users): what folding does once every operand of a node is known.
    pub fn make_constant(&mut self, id: NodeId, value: Arc<Tensor>) -> Result<(), IrError> {
        let node = &self.g[id];
        if !matches!(node.op, NodeOp::Apply(_)) || node.outputs.len() != 1 {
            return Err(IrError::Build(format!(
                "node `{}` is not an op with one result",
                node.name
            )));
        }
        let incoming: Vec<_> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for e in incoming {
            self.g.remove_edge(e);
        }
        let node = &mut self.g[id];
        node.outputs[0].ty = TensorType {
            dtype: value.dtype(),
            shape: Shape::fixed(value.shape()),
            quant: None,
        };
        node.op = NodeOp::Const(value);
        node.arity = 0;
        Ok(())
    }

    /// Makes graph input `v` the constant `value` (tract's "constantize", qlift's
    /// `--freeze`): the input leaves the input list, its users read the constant, and what
    /// depends only on constants can then be folded. The value must fit the input's type
    /// (its dtype, and its shape where the input's extents are known).
    pub fn freeze_input(&mut self, v: ValueId, value: Arc<Tensor>) -> Result<(), IrError> {
        let position = self
            .inputs
            .iter()
            .position(|&n| n == v.node)
            .ok_or_else(|| IrError::Build(format!("value {v:?} is not a graph input")))?;
        let node = &self.g[v.node];
        let ty = &node.outputs[0].ty;
        let fits = value.dtype() == ty.dtype
            && value.shape().len() == ty.shape.rank()
            && ty
                .shape
                .dims()
                .iter()
                .zip(value.shape())
                .all(|(d, &n)| d.fixed().is_none_or(|f| f == n));
        if !fits {
            return Err(IrError::Input {
                name: node.name.clone(),
                message: format!(
                    "a {}{:?} value cannot stand for an input of type {}",
                    value.dtype(),
                    value.shape(),
                    crate::text::type_to_string(ty)
                ),
            });
        }
        let quant = ty.quant.clone();
        let node = &mut self.g[v.node];
        node.outputs[0].ty = TensorType {
            dtype: value.dtype(),
            shape: Shape::fixed(value.shape()),
            quant,
        };
        node.op = NodeOp::Const(value);
        self.inputs.remove(position);
        Ok(())
    }

    /// Removes every node that no graph output depends on (graph inputs stay).
    pub fn remove_dead_nodes(&mut self) {
        let mut live = BTreeSet::new();
        let mut stack: Vec<NodeId> = self
            .outputs
            .iter()
            .map(|v| v.node)
            .chain(self.inputs.iter().copied())
            .collect();
        while let Some(n) = stack.pop() {
            if live.insert(n) {
                stack.extend(self.g.neighbors_directed(n, Direction::Incoming));
            }
        }
        let dead: Vec<_> = self
            .g
            .node_indices()
            .filter(|n| !live.contains(n))
            .collect();
        for n in dead {
            self.g.remove_node(n);
        }
    }

    /// Nodes in a deterministic topological order (ties broken by node index), or the
    /// nodes on a cycle as an error.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, IrError> {
        let mut indegree: HashMap<NodeId, usize> = HashMap::new();
        for n in self.g.node_indices() {
            indegree.insert(n, self.g.neighbors_directed(n, Direction::Incoming).count());
        }
        let mut ready: BTreeSet<NodeId> = indegree
            .iter()
            .filter(|(_, &d)| d == 0)
            .map(|(&n, _)| n)
            .collect();
        let mut order = Vec::with_capacity(indegree.len());
        while let Some(n) = ready.pop_first() {
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let d = indegree.get_mut(&e.target()).expect("target is a node");
                *d -= 1;
                if *d == 0 {
                    ready.insert(e.target());
                }
            }
        }
        if order.len() != indegree.len() {
            let on_cycle: Vec<String> = indegree
                .iter()
                .filter(|(_, &d)| d > 0)
                .map(|(&n, _)| self.g[n].name.clone())
                .collect();
            return Err(IrError::Verifier(
                on_cycle
                    .into_iter()
                    .map(|node| crate::VerifierError {
                        node,
                        op: String::new(),
                        message: "is part of a cycle".to_string(),
                    })
                    .collect(),
            ));
        }
        Ok(order)
    }

    /// Finds a value by name.
    pub fn find_value(&self, name: &str) -> Option<ValueId> {
        self.g.node_indices().find_map(|node| {
            self.g[node]
                .outputs
                .iter()
                .position(|v| v.name == name)
                .map(|output| ValueId { node, output })
        })
    }
}

/// Structural equality: same name, inputs (names and types), outputs, and the same other
/// nodes in topological order
/// (operands compared by value name, constants by content). Node indices do not matter.
impl PartialEq for Graph {
    fn eq(&self, other: &Graph) -> bool {
        // Inputs are compared through the input list; their position among nodes is free.
        let computed = |g: &Graph| -> Option<Vec<NodeId>> {
            Some(
                g.topo_order()
                    .ok()?
                    .into_iter()
                    .filter(|&n| g.g[n].op != NodeOp::Input)
                    .collect(),
            )
        };
        let (Some(a), Some(b)) = (computed(self), computed(other)) else {
            return false;
        };
        let input_types = |g: &Graph| -> Vec<TensorType> {
            g.input_values()
                .iter()
                .map(|v| g.value_type(*v).clone())
                .collect()
        };
        let names = |g: &Graph, vs: &[ValueId]| -> Vec<String> {
            vs.iter().map(|v| g.value(*v).name.clone()).collect()
        };
        let operand_names = |g: &Graph, n: NodeId| -> Vec<Option<String>> {
            g.node_inputs(n)
                .into_iter()
                .map(|v| v.map(|v| g.value(v).name.clone()))
                .collect()
        };
        self.name == other.name
            && names(self, &self.input_values()) == names(other, &other.input_values())
            && input_types(self) == input_types(other)
            && names(self, &self.outputs) == names(other, &other.outputs)
            && a.len() == b.len()
            && a.iter().zip(&b).all(|(&x, &y)| {
                self.g[x] == other.g[y] && operand_names(self, x) == operand_names(other, y)
            })
    }
}
