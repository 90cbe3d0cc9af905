//! Activation fusion: Relu and Clip attach to the Conv, Gemm, MatMul or Add that produces
//! their operand, as a fused clamp `[act_min, act_max]` that quantization later folds into
//! the output range. Exact: the clamp is applied to the same values.

use super::{add_op, matched, op_node, var, Apply, QRewrite};
use crate::analysis::QEGraph;
use egg::{rewrite, Id, Subst};
use qlift_ir::{AttrValue, OpKind};

/// The activation fusion rules.
pub fn rules() -> Vec<QRewrite> {
    vec![
        rewrite!("fuse-relu"; "(Relu ?y)" => { Apply(|g, c, s| fuse(g, c, s, OpKind::Relu)) }),
        rewrite!("fuse-clip"; "(Clip ?y)" => { Apply(|g, c, s| fuse(g, c, s, OpKind::Clip)) }),
    ]
}

fn fuse(egraph: &mut QEGraph, eclass: Id, subst: &Subst, kind: OpKind) -> Option<Id> {
    let y = var(subst, "?y");
    let (lo, hi) = match kind {
        OpKind::Relu => (0.0, f32::INFINITY),
        _ => {
            let clip = matched(egraph, eclass, OpKind::Clip, &[y])?.op();
            (clip.attrs.float("min").ok()?, clip.attrs.float("max").ok()?)
        }
    };
    let producers = [OpKind::Conv, OpKind::Gemm, OpKind::MatMul, OpKind::Add];
    let (sym, ops) = op_node(egraph, y, &producers)?;
    if super::ty(egraph, y)?.dtype != qlift_ir::DType::F32 {
        return None;
    }
    let op = sym.op();
    // An already fused activation narrows: clamp(clamp(v, a, b), lo, hi) = clamp(v, max(a, lo), min(b, hi)).
    let (a, b) = op.fused_activation().ok()?.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let (lo, hi) = (a.max(lo), b.min(hi));
    if lo > hi {
        return None;
    }
    let attrs = op.attrs.with("act_min", AttrValue::Float(lo)).with("act_max", AttrValue::Float(hi));
    add_op(egraph, sym.kind, attrs, ops)
}
