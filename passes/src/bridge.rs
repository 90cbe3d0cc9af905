//! Graph → e-graph → graph. Without rewrites the round trip is the identity (a test checks
//! it), so every change a pass makes comes from its rules.

use crate::analysis::{ClassData, Constant, QAnalysis, QEGraph};
use crate::extract::Extraction;
use crate::lang::{OpSym, QNode};
use crate::PassError;
use egg::{Id, Language};
use qlift_ir::{Graph, NodeOp, OpKind, TensorType, Value, ValueId};
use std::collections::{HashMap, HashSet};

/// An e-graph built from a graph, with what is needed to build a graph back.
pub struct GraphEGraph {
    /// The e-graph.
    pub egraph: QEGraph,
    /// The classes of the graph outputs.
    pub roots: Vec<Id>,
    /// Classes of the original nodes in topological order: rebuilding in this order keeps
    /// an unchanged graph's node order.
    order: Vec<Id>,
    inputs: Vec<(String, TensorType)>,
    /// Output names: the model's interface, kept whatever the rewrites merge.
    output_names: Vec<String>,
    name: String,
}

/// Builds the e-graph of a verified graph.
pub fn to_egraph(graph: &Graph) -> Result<GraphEGraph, PassError> {
    let inputs: Vec<(String, TensorType)> =
        graph.input_values().iter().map(|v| (graph.value(*v).name.clone(), graph.value_type(*v).clone())).collect();
    let analysis = QAnalysis { inputs: inputs.iter().map(|(_, t)| t.clone()).collect(), ..Default::default() };
    let mut egraph = QEGraph::new(analysis);
    let position: HashMap<_, _> = graph.inputs().iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut class: HashMap<ValueId, Id> = HashMap::new();
    let missing = egraph.add(QNode::Missing);
    let mut order = Vec::new();
    for id in graph.topo_order()? {
        let node = graph.node(id);
        let enode = match &node.op {
            NodeOp::Input => QNode::Input(position[&id]),
            NodeOp::Const(t) => {
                let quant = node.outputs[0].ty.quant.clone();
                egraph.analysis.constant_node(Constant { tensor: t.clone(), quant })
            }
            NodeOp::Apply(op) => {
                if node.outputs.len() != 1 {
                    return Err(PassError::Unsupported(format!("node `{}` has {} results", node.name, node.outputs.len())));
                }
                let children = graph.node_inputs(id).iter().map(|v| v.map_or(missing, |v| class[&v])).collect();
                let declared = op.kind.declares_result_type().then(|| node.outputs[0].ty.clone());
                QNode::Op(OpSym::new(op, declared), children)
            }
        };
        let c = egraph.add(enode);
        let data: &mut ClassData = &mut egraph[c].data;
        if data.name.is_none() {
            data.name = Some((node.name.clone(), node.outputs[0].name.clone()));
        }
        class.insert(ValueId { node: id, output: 0 }, c);
        order.push(c);
    }
    let roots: Vec<Id> = graph.outputs().iter().map(|v| class[v]).collect();
    for &r in &roots {
        egraph[r].data.output = true;
    }
    let output_names = graph.outputs().iter().map(|v| graph.value(*v).name.clone()).collect();
    egraph.rebuild();
    Ok(GraphEGraph { egraph, roots, order, inputs, output_names, name: graph.name.clone() })
}

/// Extracts the cheapest graph (see [`crate::cost::CostModel`]) from the e-graph.
pub fn to_graph(eg: &GraphEGraph) -> Result<Graph, PassError> {
    let egraph = &eg.egraph;
    let extractor = Extraction::new(egraph);
    let mut graph = Graph::new(&eg.name);
    let mut names = Names::default();
    let mut values: HashMap<Id, ValueId> = HashMap::new();
    for (i, (name, ty)) in eg.inputs.iter().enumerate() {
        names.claim(name);
        let v = graph.add_input(name, ty.clone());
        if let Some(c) = egraph.lookup(QNode::Input(i)) {
            values.insert(c, v);
        }
    }
    // Only classes the outputs use are built (so that names go to nodes that stay).
    let mut live: HashSet<Id> = HashSet::new();
    let mut pending: Vec<Id> = eg.roots.iter().map(|&c| egraph.find(c)).collect();
    while let Some(c) = pending.pop() {
        if live.insert(c) {
            pending.extend(extractor.best_node(c)?.children().iter().map(|&k| egraph.find(k)));
        }
    }
    // Post-order over the classes, iteratively (graphs can be deep).
    let mut stack: Vec<(Id, bool)> = eg
        .order
        .iter()
        .chain(&eg.roots)
        .rev()
        .map(|&c| egraph.find(c))
        .filter(|c| live.contains(c))
        .map(|c| (c, false))
        .collect();
    while let Some((c, ready)) = stack.pop() {
        if values.contains_key(&c) {
            continue;
        }
        let node = extractor.best_node(c)?;
        let is_missing = |id: &Id| matches!(extractor.best_node(*id), Ok(QNode::Missing));
        // A constant the rewrites created is named after the op that uses it, when it is built.
        let is_new_constant =
            |id: &Id| egraph[*id].data.name.is_none() && matches!(extractor.best_node(*id), Ok(QNode::Const(_)));
        if !ready {
            stack.push((c, true));
            let children = node.children().iter().filter(|k| !is_missing(k) && !is_new_constant(k));
            stack.extend(children.map(|&k| (egraph.find(k), false)));
            continue;
        }
        let data = &egraph[c].data;
        let (node_name, value_name) = names.for_class(data, node);
        let v = match node {
            QNode::Const(k) => {
                let constant = &egraph.analysis.constants[k];
                graph.add_const(&value_name, constant.tensor.clone(), constant.quant.clone())
            }
            QNode::Op(sym, children) => {
                let mut operands: Vec<Option<ValueId>> = Vec::with_capacity(children.len());
                for (slot, k) in children.iter().enumerate() {
                    let k = egraph.find(*k);
                    operands.push(match extractor.best_node(k)? {
                        QNode::Missing => None,
                        QNode::Const(key) if !values.contains_key(&k) && is_new_constant(&k) => {
                            let constant = &egraph.analysis.constants[key];
                            let name = names.fresh(&format!("{value_name}.{slot}"));
                            let v = graph.add_const(&name, constant.tensor.clone(), constant.quant.clone());
                            values.insert(k, v);
                            Some(v)
                        }
                        _ => Some(values[&k]),
                    });
                }
                let ty = data.ty.clone().ok_or_else(|| PassError::Bug(format!("class of `{value_name}` has no type")))?;
                let id = graph.add_node(&node_name, sym.op(), &operands, vec![Value { name: value_name, ty }])?;
                ValueId { node: id, output: 0 }
            }
            QNode::Input(_) | QNode::Missing => continue,
        };
        values.insert(c, v);
    }
    let mut outputs = Vec::with_capacity(eg.roots.len());
    for (&root, name) in eg.roots.iter().zip(&eg.output_names) {
        outputs.push(named_output(&mut graph, values[&egraph.find(root)], name, &outputs)?);
    }
    graph.set_outputs(outputs)?;
    graph.remove_dead_nodes();
    Ok(graph)
}

/// The value to expose as the output called `name`: `v` renamed when it is an op result no
/// earlier output uses, else an Identity of it (an output that became a graph input, a
/// constant or another output still needs its own name).
fn named_output(graph: &mut Graph, v: ValueId, name: &str, earlier: &[ValueId]) -> Result<ValueId, PassError> {
    if graph.value(v).name == name {
        return Ok(v);
    }
    let taken = graph.find_value(name).is_some();
    if matches!(graph.node(v.node).op, NodeOp::Apply(_)) && !earlier.contains(&v) && !taken {
        graph.node_mut(v.node).outputs[v.output].name = name.to_string();
        return Ok(v);
    }
    let op = qlift_ir::Op::new(OpKind::Identity, qlift_ir::Attrs::new());
    Ok(graph.add_op(name, op, &[Some(v)], &[name])?[0])
}

/// Unique names for rebuilt values: a class keeps its graph name the first time it is
/// used; new classes are named after their op.
#[derive(Default)]
struct Names {
    used: HashSet<String>,
}

impl Names {
    fn claim(&mut self, name: &str) {
        self.used.insert(name.to_string());
    }

    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut n = 1;
        while self.used.contains(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        self.used.insert(name.clone());
        name
    }

    fn for_class(&mut self, data: &ClassData, node: &QNode) -> (String, String) {
        match &data.name {
            Some((node_name, value)) => {
                let value = self.fresh(value);
                (node_name.clone(), value)
            }
            None => {
                let base = match node {
                    QNode::Op(sym, _) => sym.kind.name().to_lowercase(),
                    _ => "const".to_string(),
                };
                let value = self.fresh(&base);
                (value.clone(), value)
            }
        }
    }
}
