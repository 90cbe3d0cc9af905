//! Where each node of a rewritten graph came from: the nodes of the graph before the
//! rewrites that it stands for. The rewrites work on an e-graph, which keeps no history,
//! but they keep value names: a rewritten node's result has the name of the last original
//! value it computes (a quantized one with [`QUANTIZED_SUFFIX`]), and the original values
//! between it and its operands that no longer exist were fused into it (a Conv, its
//! BatchNormalization and its Relu) or folded into its constants (a Reshape's shape
//! computation). The HTML report draws fused nodes with it; a quantization plan lets a user
//! name an imported node that became part of another.

use qlift_ir::{Graph, NodeId, NodeOp};
use std::collections::{HashMap, HashSet};

/// The suffix that names a value's quantized form (`X_QuantizeLinear_Output` quantizes `X`:
/// ONNX Runtime's QDQ naming, and `insert-qdq`'s).
pub const QUANTIZED_SUFFIX: &str = "_QuantizeLinear_Output";

/// The value's name without the suffix of its quantized form.
pub fn float_name(name: &str) -> &str {
    name.strip_suffix(QUANTIZED_SUFFIX).unwrap_or(name)
}

/// For every op node of `rewritten` that computes a value of `original` (by name), the
/// nodes of `original` it stands for, in `original`'s topological order (its own last).
pub fn members(original: &Graph, rewritten: &Graph) -> HashMap<NodeId, Vec<NodeId>> {
    let Ok(order) = original.topo_order() else {
        return HashMap::new();
    };
    let rank: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let kept: HashSet<&str> = rewritten
        .node_ids()
        .flat_map(|id| {
            rewritten
                .node(id)
                .outputs
                .iter()
                .map(|v| float_name(&v.name))
        })
        .collect();
    let mut out = HashMap::new();
    for id in rewritten.node_ids() {
        let node = rewritten.node(id);
        if !matches!(node.op, NodeOp::Apply(_)) {
            continue;
        }
        let Some(start) = node
            .outputs
            .first()
            .and_then(|v| original.find_value(float_name(&v.name)))
        else {
            continue;
        };
        // Walk back from the producer through values the rewritten graph no longer has.
        let mut seen: HashSet<NodeId> = HashSet::from([start.node]);
        let mut stack = vec![start.node];
        while let Some(n) = stack.pop() {
            for v in original.node_inputs(n).into_iter().flatten() {
                let gone = !kept.contains(original.value(v).name.as_str());
                if gone
                    && matches!(original.node(v.node).op, NodeOp::Apply(_))
                    && seen.insert(v.node)
                {
                    stack.push(v.node);
                }
            }
        }
        let mut members: Vec<NodeId> = seen.into_iter().collect();
        members.sort_by_key(|m| rank.get(m).copied().unwrap_or(usize::MAX));
        out.insert(id, members);
    }
    out
}
