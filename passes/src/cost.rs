//! The extraction cost: fewer nodes first, then less arithmetic, integer arithmetic
//! counting half as much as float.

use crate::analysis::QEGraph;
use crate::lang::QNode;
use egg::{CostFunction, Id, Language};
use qlift_ir::{OpKind, TensorType};

/// Cost of a term: node count, then estimated multiply-accumulates (float weighted 2×).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Cost {
    /// Op and constant nodes.
    pub nodes: usize,
    /// Weighted arithmetic estimate for one sample (batch 1).
    pub work: f64,
}

/// The cost model of extraction; it reads operand types from the e-graph to estimate work.
pub struct CostModel<'a> {
    /// The e-graph being extracted from.
    pub egraph: &'a QEGraph,
}

/// Elements of a type for one sample.
fn elements(t: &TensorType) -> f64 {
    t.shape.resolve(1).iter().product::<usize>() as f64
}

impl CostModel<'_> {
    /// Multiply-accumulates (or elementwise operations) of one op for one sample.
    fn work(&self, kind: OpKind, children: &[Id]) -> f64 {
        let ty = |i: usize| {
            children
                .get(i)
                .and_then(|&c| self.egraph[c].data.ty.as_ref())
        };
        let first = ty(0).map_or(1.0, elements);
        match kind {
            // Output elements × (C/group × kernel) = weights × output spatial positions; use
            // weights × input positions, which differs only by the stride.
            OpKind::Conv | OpKind::ConvInteger | OpKind::QLinearConv | OpKind::QConv => {
                let w = ty(1).map_or(1.0, elements);
                let spatial = ty(0).map_or(1.0, |t| {
                    t.shape.resolve(1).iter().skip(2).product::<usize>() as f64
                });
                w * spatial
            }
            OpKind::Gemm
            | OpKind::MatMul
            | OpKind::MatMulInteger
            | OpKind::QLinearMatMul
            | OpKind::QMatMul => {
                first
                    * ty(1)
                        .and_then(|t| t.shape.resolve(1).last().copied())
                        .unwrap_or(1) as f64
            }
            _ => first,
        }
    }
}

impl CostFunction<QNode> for CostModel<'_> {
    type Cost = Cost;

    fn cost<C: FnMut(Id) -> Cost>(&mut self, enode: &QNode, mut costs: C) -> Cost {
        let own = match enode {
            QNode::Input(_) | QNode::Missing | QNode::Result(..) => Cost {
                nodes: 0,
                work: 0.0,
            },
            QNode::Const(_) => Cost {
                nodes: 1,
                work: 0.0,
            },
            QNode::Op(sym, children) => {
                // qlift's integer ops requantize in fixed point; ONNX's QLinear ops in float
                // (costlier per element); float ops cost twice the integer arithmetic.
                let factor = match sym.kind {
                    k if k.is_internal() => 1.0,
                    OpKind::QLinearConv
                    | OpKind::QLinearMatMul
                    | OpKind::ConvInteger
                    | OpKind::MatMulInteger => 1.5,
                    _ => 2.0,
                };
                Cost {
                    nodes: 1,
                    work: self.work(sym.kind, children) * factor,
                }
            }
        };
        enode.children().iter().fold(own, |acc, &c| {
            let k = costs(c);
            // Tree costs double with every level of a diamond-shaped DAG: saturate, never wrap.
            Cost {
                nodes: acc.nodes.saturating_add(k.nodes),
                work: acc.work + k.work,
            }
        })
    }
}
