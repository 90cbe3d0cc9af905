//! The extraction cost: fewer nodes first, then less arithmetic, integer arithmetic
//! counting half as much as float.

use crate::lang::QNode;
use egg::{CostFunction, Id, Language};

/// Cost of a term: node count, then estimated multiply-accumulates (float weighted 2×).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Cost {
    /// Op and constant nodes.
    pub nodes: usize,
    /// Weighted arithmetic estimate.
    pub work: f64,
}

/// The cost model of extraction.
pub struct CostModel;

impl CostFunction<QNode> for CostModel {
    type Cost = Cost;

    fn cost<C: FnMut(Id) -> Cost>(&mut self, enode: &QNode, mut costs: C) -> Cost {
        let own = match enode {
            QNode::Input(_) | QNode::Missing => Cost { nodes: 0, work: 0.0 },
            QNode::Const(_) => Cost { nodes: 1, work: 0.0 },
            QNode::Op(sym, children) => {
                // Integer (quantized) ops are cheaper than the float ops they replace.
                let weight = if sym.kind.name().starts_with('Q') || sym.kind.name().ends_with("Integer") { 1.0 } else { 2.0 };
                Cost { nodes: 1, work: weight * (1 + children.len()) as f64 }
            }
        };
        enode.children().iter().fold(own, |acc, &c| {
            let k = costs(c);
            Cost { nodes: acc.nodes + k.nodes, work: acc.work + k.work }
        })
    }
}
