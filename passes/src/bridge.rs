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
    let inputs: Vec<(String, TensorType)> = graph
        .input_values()
        .iter()
        .map(|v| (graph.value(*v).name.clone(), graph.value_type(*v).clone()))
        .collect();
    let analysis = QAnalysis {
        inputs: inputs.iter().map(|(_, t)| t.clone()).collect(),
        ..Default::default()
    };
    let mut egraph = QEGraph::new(analysis);
    let position: HashMap<_, _> = graph
        .inputs()
        .iter()
        .enumerate()
        .map(|(i, &n)| (n, i))
        .collect();
    let mut class: HashMap<ValueId, Id> = HashMap::new();
    let missing = egraph.add(QNode::Missing);
    let mut order = Vec::new();
    for id in graph.topo_order()? {
        let node = graph.node(id);
        let enode = match &node.op {
            NodeOp::Input => QNode::Input(position[&id]),
            NodeOp::Const(t) => {
                let quant = node.outputs[0].ty.quant.clone();
                egraph.analysis.constant_node(Constant {
                    tensor: t.clone(),
                    quant,
                })
            }
            NodeOp::Apply(op) if op.kind.results() > 1 => {
                // The op's class (untyped), then a class per result.
                let children = graph
                    .node_inputs(id)
                    .iter()
                    .map(|v| v.map_or(missing, |v| class[&v]))
                    .collect();
                let tuple = egraph.add(QNode::Op(OpSym::new(op, None), children));
                order.push(tuple);
                for (r, value) in node.outputs.iter().enumerate() {
                    let c = egraph.add(QNode::Result(r, [tuple]));
                    let data: &mut ClassData = &mut egraph[c].data;
                    if data.name.is_none() {
                        data.name = Some((node.name.clone(), value.name.clone()));
                    }
                    class.insert(
                        ValueId {
                            node: id,
                            output: r,
                        },
                        c,
                    );
                    order.push(c);
                }
                continue;
            }
            NodeOp::Apply(op) => {
                if node.outputs.len() != 1 {
                    return Err(PassError::Unsupported(format!(
                        "node `{}` has {} results",
                        node.name,
                        node.outputs.len()
                    )));
                }
                let children = graph
                    .node_inputs(id)
                    .iter()
                    .map(|v| v.map_or(missing, |v| class[&v]))
                    .collect();
                // A declared result type stays with ops that declare one, and with ops whose type
                // the specializer refined beyond what inference alone gives (a Reshape to a
                // shape computed from `Shape`): inference in the e-graph cannot redo that.
                let declared = (op.kind.declares_result_type() || refined(graph, id))
                    .then(|| node.outputs[0].ty.clone());
                QNode::Op(OpSym::new(op, declared), children)
            }
        };
        let c = egraph.add(enode);
        let data: &mut ClassData = &mut egraph[c].data;
        if data.name.is_none() {
            data.name = Some((node.name.clone(), node.outputs[0].name.clone()));
        }
        class.insert(
            ValueId {
                node: id,
                output: 0,
            },
            c,
        );
        order.push(c);
    }
    let roots: Vec<Id> = graph.outputs().iter().map(|v| class[v]).collect();
    for &r in &roots {
        egraph[r].data.output = true;
    }
    let output_names = graph
        .outputs()
        .iter()
        .map(|v| graph.value(*v).name.clone())
        .collect();
    egraph.rebuild();
    Ok(GraphEGraph {
        egraph,
        roots,
        order,
        inputs,
        output_names,
        name: graph.name.clone(),
    })
}

/// The result types of `op` on `operands` of `graph`, from their types and constant values.
fn infer(
    graph: &Graph,
    op: &qlift_ir::Op,
    operands: &[Option<ValueId>],
) -> Result<Vec<TensorType>, String> {
    let types: Vec<Option<&TensorType>> = operands
        .iter()
        .map(|v| v.map(|v| graph.value_type(v)))
        .collect();
    let constants: Vec<Option<&qlift_ir::Tensor>> = operands
        .iter()
        .map(|v| v.and_then(|v| graph.const_value(v)).map(|t| t.as_ref()))
        .collect();
    let values = qlift_ir::OperandValues {
        constants: &constants,
        symbolic: &[],
    };
    qlift_ir::infer_op_with(op, &types, &values, &[])
}

/// Whether node `id`'s result type is more precise than inference from its operands' types
/// and constant values gives.
fn refined(graph: &Graph, id: qlift_ir::NodeId) -> bool {
    let NodeOp::Apply(op) = &graph.node(id).op else {
        return false;
    };
    match infer(graph, op, &graph.node_inputs(id)) {
        Ok(inferred) => inferred.first() != graph.node(id).outputs.first().map(|v| &v.ty),
        Err(_) => false,
    }
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
            pending.extend(
                extractor
                    .best_node(c)?
                    .children()
                    .iter()
                    .map(|&k| egraph.find(k)),
            );
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
    // Classes of multi-result ops already built (their results are in `values`).
    let mut tuples: HashSet<Id> = HashSet::new();
    while let Some((c, ready)) = stack.pop() {
        if values.contains_key(&c) || tuples.contains(&c) {
            continue;
        }
        let node = extractor.best_node(c)?;
        let is_missing = |id: &Id| matches!(extractor.best_node(*id), Ok(QNode::Missing));
        // A constant the rewrites created is named after the op that uses it, when it is built.
        let is_new_constant = |id: &Id| {
            egraph[*id].data.name.is_none()
                && matches!(extractor.best_node(*id), Ok(QNode::Const(_)))
        };
        if !ready {
            stack.push((c, true));
            let children = node
                .children()
                .iter()
                .filter(|k| !is_missing(k) && !is_new_constant(k));
            stack.extend(children.map(|&k| (egraph.find(k), false)));
            continue;
        }
        let data = &egraph[c].data;
        if let QNode::Result(..) = node {
            // Built with its op.
            return Err(PassError::Bug(format!(
                "result class {c} was not built with its op"
            )));
        }
        if let QNode::Op(sym, children) = node {
            if sym.kind.results() > 1 {
                build_tuple(
                    egraph,
                    &mut graph,
                    &mut names,
                    &mut values,
                    c,
                    sym,
                    children,
                )?;
                tuples.insert(c);
                continue;
            }
        }
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
                            let v = graph.add_const(
                                &name,
                                constant.tensor.clone(),
                                constant.quant.clone(),
                            );
                            values.insert(k, v);
                            Some(v)
                        }
                        _ => Some(values[&k]),
                    });
                }
                let ty = data.ty.clone().ok_or_else(|| {
                    PassError::Bug(format!("class of `{value_name}` has no type"))
                })?;
                let id = graph.add_node(
                    &node_name,
                    sym.op(),
                    &operands,
                    vec![Value {
                        name: value_name,
                        ty,
                    }],
                )?;
                ValueId {
                    node: id,
                    output: 0,
                }
            }
            QNode::Input(_) | QNode::Missing | QNode::Result(..) => continue,
        };
        values.insert(c, v);
    }
    let mut outputs = Vec::with_capacity(eg.roots.len());
    for (&root, name) in eg.roots.iter().zip(&eg.output_names) {
        outputs.push(named_output(
            &mut graph,
            values[&egraph.find(root)],
            name,
            &outputs,
        )?);
    }
    graph.set_outputs(outputs)?;
    graph.remove_dead_nodes();
    Ok(graph)
}

/// Builds the node of a multi-result op (class `c`, operands already built) and records
/// the value of each result class the e-graph has for it. Names come from the result
/// classes (the node's name from the first one that has a name).
fn build_tuple(
    egraph: &QEGraph,
    graph: &mut Graph,
    names: &mut Names,
    values: &mut HashMap<Id, ValueId>,
    c: Id,
    sym: &OpSym,
    children: &[Id],
) -> Result<(), PassError> {
    let mut operands: Vec<Option<ValueId>> = Vec::with_capacity(children.len());
    for k in children {
        let k = egraph.find(*k);
        if egraph[k].nodes.iter().any(|n| matches!(n, QNode::Missing)) {
            operands.push(None);
            continue;
        }
        let v = match (values.get(&k), &egraph[k].data.constant) {
            (Some(&v), _) => v,
            // A constant the rewrites made, built where it is used.
            (None, Some(constant)) => {
                let v = graph.add_const(
                    &names.fresh(&format!(
                        "{}.{}",
                        sym.kind.name().to_lowercase(),
                        operands.len()
                    )),
                    constant.tensor.clone(),
                    constant.quant.clone(),
                );
                values.insert(k, v);
                v
            }
            (None, None) => {
                return Err(PassError::Bug(format!(
                    "operand class {k} of a multi-result op is not built"
                )))
            }
        };
        operands.push(Some(v));
    }
    let op = sym.op();
    let inferred =
        infer(&graph, &op, &operands).map_err(|e| PassError::Bug(format!("{}: {e}", op.kind)))?;
    let classes: Vec<Option<Id>> = (0..inferred.len())
        .map(|r| egraph.lookup(QNode::Result(r, [c])))
        .collect();
    let mut node_name = None;
    let mut outputs = Vec::with_capacity(inferred.len());
    for (r, ty) in inferred.into_iter().enumerate() {
        let named = classes[r].and_then(|k| egraph[k].data.name.clone());
        let value = match named {
            Some((node, value)) => {
                node_name.get_or_insert(node);
                names.fresh(&value)
            }
            None => names.fresh(&format!("{}_{r}", op.kind.name().to_lowercase())),
        };
        outputs.push(Value { name: value, ty });
    }
    let node_name = node_name.unwrap_or_else(|| outputs[0].name.clone());
    let id = graph.add_node(&node_name, op, &operands, outputs)?;
    for (r, k) in classes.into_iter().enumerate() {
        if let Some(k) = k {
            values.insert(
                egraph.find(k),
                ValueId {
                    node: id,
                    output: r,
                },
            );
        }
    }
    Ok(())
}

/// The value to expose as the output called `name`: `v` renamed when it is an op result no
/// earlier output uses, else an Identity of it (an output that became a graph input, a
/// constant or another output still needs its own name).
fn named_output(
    graph: &mut Graph,
    v: ValueId,
    name: &str,
    earlier: &[ValueId],
) -> Result<ValueId, PassError> {
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
