//! What each node of the compiled graph stands for, as the HTML report shows it: the ops of
//! the imported graph fused into it and those folded into its constants (which nodes those
//! are is `qlift_passes::provenance`'s business).

use qlift_ir::{Graph, NodeId, NodeOp};
use std::collections::{HashMap, HashSet};

pub(crate) use qlift_passes::provenance::float_name;

/// The original ops a compiled node stands for.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Origin {
    /// Ops computed on run-time values, in the original graph's order (the node's own op
    /// last): more than one means the node fuses them.
    pub(crate) fused: Vec<String>,
    /// Ops on constants only, evaluated at compile time into the node's constant operands.
    pub(crate) folded: usize,
}

/// The origin of every op node of `compiled` that computes a value of `original` (by name).
pub(crate) fn origins(original: &Graph, compiled: &Graph) -> HashMap<NodeId, Origin> {
    let Ok(order) = original.topo_order() else {
        return HashMap::new();
    };
    // Whether each original node depends on a graph input (else it is constant-foldable).
    let mut runtime: HashSet<NodeId> = HashSet::new();
    for &id in &order {
        let node = original.node(id);
        if matches!(node.op, NodeOp::Input)
            || original
                .node_inputs(id)
                .iter()
                .flatten()
                .any(|v| runtime.contains(&v.node))
        {
            runtime.insert(id);
        }
    }
    qlift_passes::provenance::members(original, compiled)
        .into_iter()
        .map(|(id, members)| {
            let fused: Vec<String> = members
                .iter()
                .filter(|m| runtime.contains(m))
                .map(|&m| original.node(m).op.name().to_string())
                .collect();
            let folded = members.len() - fused.len();
            (id, Origin { fused, folded })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conv_with_its_batchnorm_and_relu_is_one_fused_node() {
        let original = qlift_ir::text::parse(
            "graph g(%x: f32[N,1,4,4]) -> (%r) {
               %w = const f32[2,1,1,1] [1.0, 2.0]
               %k = Add(%w, %w) : f32[2,1,1,1]
               %c = Conv(%x, %w) {dilations=[1, 1], group=1, kernel_shape=[1, 1], pads=[0, 0, 0, 0], strides=[1, 1]} : f32[N,2,4,4]
               %m = Mul(%c, %k) : f32[N,2,4,4]
               %r0 = Relu(%m) : f32[N,2,4,4]
               %r = Reshape(%r0) {allowzero=0, shape=[0, -1]} : f32[N,32]
             }",
        )
        .unwrap();
        let compiled = qlift_ir::text::parse(
            "graph g(%x: f32[N,1,4,4]) -> (%r) {
               %w2 = const f32[2,1,1,1] [2.0, 8.0]
               %r0 = Conv(%x, %w2) {act_max=inf, act_min=0.0, dilations=[1, 1], group=1, kernel_shape=[1, 1], pads=[0, 0, 0, 0], strides=[1, 1]} : f32[N,2,4,4]
               %r = Reshape(%r0) {allowzero=0, shape=[0, -1]} : f32[N,32]
             }",
        )
        .unwrap();
        let o = origins(&original, &compiled);
        let conv = compiled.find_value("r0").unwrap().node;
        assert_eq!(
            o[&conv],
            Origin {
                fused: vec!["Conv".into(), "Mul".into(), "Relu".into()],
                folded: 1
            }
        );
        let reshape = compiled.find_value("r").unwrap().node;
        assert_eq!(
            o[&reshape],
            Origin {
                fused: vec!["Reshape".into()],
                folded: 0
            }
        );
    }
}
