//! Which nodes the program computes as one fused elementwise kernel ([`chains`]).
//!
//! A chain grows backwards from its last node (its root) over f32 elementwise nodes
//! ([`LaneOp::of`]) whose results the chain alone reads: every member but the root has all
//! its readers inside the chain, is not a graph output, and has the root's result type
//! (shape and batch included), so it is computed lane by lane alongside the root and never
//! stored. Operands from outside (activations, constants, broadcast scalars) are loaded once
//! each per lane step, however many members read them. A member used by several others
//! (GELU's `x`-derived terms) is one SSA value read twice. No path can leave the chain and
//! come back into it (only the root has readers outside), so running the whole chain at the
//! root's place in the order keeps every dependency.

use crate::kernels::fused::{Arg, Chain, LaneOp, Link};
use qlift_ir::{DType, Graph, NodeId, NodeOp, ValueId};
use std::collections::{HashMap, HashSet};

/// The chains of `graph` (nodes in topological `order`): each by its root, with at least
/// two nodes, and the other nodes they absorb (which get no kernel of their own).
#[derive(Default)]
pub(crate) struct Fusion {
    /// Chains by their root node.
    pub chains: HashMap<NodeId, (Chain, Vec<ValueId>)>,
    /// Nodes computed inside a chain of another root.
    pub absorbed: HashSet<NodeId>,
}

/// The chains of `graph`: every root with its [`Chain`] and the chain kernel's operands
/// (the values its [`Arg::Operand`]s number).
pub(crate) fn chains(graph: &Graph, order: &[NodeId]) -> Fusion {
    let outputs: HashSet<ValueId> = graph.outputs().iter().copied().collect();
    let position: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut fusion = Fusion {
        chains: HashMap::new(),
        absorbed: HashSet::new(),
    };
    for &root in order.iter().rev() {
        if fusion.absorbed.contains(&root) {
            continue;
        }
        let Some(root_lane) = lane_of(graph, root) else {
            continue;
        };
        let ty = graph.value_type(result(root));
        let mut members: HashMap<NodeId, LaneOp> = HashMap::from([(root, root_lane)]);
        // Grow until no operand's node can join: one may qualify only once all its readers
        // have joined.
        loop {
            let candidates: Vec<NodeId> = members
                .keys()
                .flat_map(|&m| read_operands(graph, m, &members[&m]))
                .map(|v| v.node)
                .filter(|p| !members.contains_key(p))
                .collect();
            let mut grew = false;
            for p in candidates {
                if members.contains_key(&p) || fusion.absorbed.contains(&p) {
                    continue;
                }
                let v = result(p);
                let joins = graph.node(p).outputs.len() == 1
                    && !outputs.contains(&v)
                    && graph.value_type(v) == ty
                    && graph
                        .users(v)
                        .iter()
                        .all(|(user, _)| members.contains_key(user));
                if let Some(lane) = lane_of(graph, p).filter(|_| joins) {
                    members.insert(p, lane);
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
        if members.len() < 2 {
            continue;
        }
        let mut nodes: Vec<NodeId> = members.keys().copied().collect();
        nodes.sort_by_key(|n| position[n]);
        let index: HashMap<NodeId, usize> =
            nodes.iter().enumerate().map(|(j, &n)| (n, j)).collect();
        let mut operands: Vec<ValueId> = Vec::new();
        let mut links = Vec::with_capacity(nodes.len());
        for &n in &nodes {
            let Some(lane) = members.remove(&n) else {
                continue;
            };
            let args = read_operands(graph, n, &lane)
                .into_iter()
                .map(|v| match index.get(&v.node) {
                    Some(&j) => Arg::Link(j),
                    _ => Arg::Operand(operands.iter().position(|&o| o == v).unwrap_or_else(|| {
                        operands.push(v);
                        operands.len() - 1
                    })),
                })
                .collect();
            links.push(Link {
                node: n,
                lane,
                args,
            });
        }
        fusion
            .absorbed
            .extend(nodes[..nodes.len() - 1].iter().copied());
        fusion.chains.insert(root, (Chain { links }, operands));
    }
    fusion
}

/// Result 0 of `node`.
fn result(node: NodeId) -> ValueId {
    ValueId { node, output: 0 }
}

/// The operands of `node` its lane function reads (Pow's constant exponent is built in).
fn read_operands(graph: &Graph, node: NodeId, lane: &LaneOp) -> Vec<ValueId> {
    let inputs: Vec<ValueId> = graph.node_inputs(node).into_iter().flatten().collect();
    let n = lane.reads(inputs.len());
    inputs.into_iter().take(n).collect()
}

/// The lane function of `node` when it may be part of a chain: an f32 elementwise op
/// with one f32 result, every operand present and f32 (Pow's exponent: a constant).
fn lane_of(graph: &Graph, node: NodeId) -> Option<LaneOp> {
    let n = graph.node(node);
    let NodeOp::Apply(op) = &n.op else {
        return None;
    };
    let inputs = graph.node_inputs(node);
    if n.outputs.len() != 1
        || n.outputs[0].ty.dtype != DType::F32
        || !n.outputs[0].ty.shape.is_specialized()
        || inputs.iter().any(Option::is_none)
    {
        return None;
    }
    let inputs: Vec<ValueId> = inputs.into_iter().flatten().collect();
    let exponent = match op.kind {
        qlift_ir::OpKind::Pow => inputs.get(1).and_then(|&e| graph.const_value(e)),
        _ => None,
    };
    let lane = LaneOp::of(op, inputs.len(), exponent.map(|t| &**t))?;
    let reads = lane.reads(inputs.len());
    inputs[..reads]
        .iter()
        .all(|&v| graph.value_type(v).dtype == DType::F32)
        .then_some(lane)
}
