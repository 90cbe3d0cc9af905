//! Activation fusion: Relu and Clip attach to the Conv, Gemm, MatMul or Add that produces
//! their operand, as a fused clamp `[act_min, act_max]` that quantization later folds into
//! the output range. Exact: the clamp is applied to the same values. The producer must have
//! no other use (else it would run twice: fused and not).
//!
//! Activations that exporters write out in elementary ops are recognized as the one op they
//! are, so that no rule splits them (absorbing hard-swish's `+ 3` into the Conv before it
//! would make two Convs) and kernels compute them at once: `y · clip(y + 3, 0, 6) / 6`
//! (and `· 1/6`, and `y · HardSigmoid(y)`) is HardSwish, `clip(y + 3, 0, 6) / 6` is
//! HardSigmoid(1/6, 1/2). Equal up to f32 rounding of the division (within 2 ulp).

use super::{add_op, matched, op_node, var, Apply, QRewrite};
use crate::analysis::QEGraph;
use crate::lang::QNode;
use egg::{rewrite, Id, Subst};
use qlift_ir::{AttrValue, OpKind};

/// The activation fusion rules.
pub fn rules() -> Vec<QRewrite> {
    vec![
        rewrite!("fuse-relu"; "(Relu ?y)" => { Apply(|g, c, s| fuse(g, c, s, OpKind::Relu)) }),
        rewrite!("fuse-clip"; "(Clip ?y)" => { Apply(|g, c, s| fuse(g, c, s, OpKind::Clip)) }),
        rewrite!("recognize-hard-sigmoid-div"; "(Div ?c ?k)" => { Apply(|g, _, s| hard_sigmoid(g, s, Scale::Divide)) }),
        rewrite!("recognize-hard-sigmoid-mul"; "(Mul ?c ?k)" => { Apply(|g, _, s| hard_sigmoid(g, s, Scale::Multiply)) }),
        rewrite!("recognize-hard-swish"; "(Mul ?y (HardSigmoid ?y))" => { Apply(hard_swish) }),
        rewrite!("recognize-hard-swish-commuted"; "(Mul (HardSigmoid ?y) ?y)" => { Apply(hard_swish) }),
        rewrite!("recognize-hard-swish-div"; "(Div ?m ?k)" => { Apply(|g, _, s| hard_swish_scaled(g, s, Scale::Divide)) }),
        rewrite!("recognize-hard-swish-mul"; "(Mul ?m ?k)" => { Apply(|g, _, s| hard_swish_scaled(g, s, Scale::Multiply)) }),
    ]
}

/// How the `/ 6` of hard-swish and hard-sigmoid is written.
#[derive(Clone, Copy)]
enum Scale {
    /// `Div(v, 6)`.
    Divide,
    /// `Mul(v, 1/6)` (either operand order).
    Multiply,
}

impl Scale {
    /// Whether constant class `k` is the sixth this form needs.
    fn is_sixth(self, egraph: &QEGraph, k: Id) -> bool {
        match (self, scalar(egraph, k)) {
            (Scale::Divide, Some(v)) => v == 6.0,
            (Scale::Multiply, Some(v)) => (v - 1.0 / 6.0).abs() < 1e-7,
            _ => false,
        }
    }

    /// The value and the sixth among the operands `?v ?k` (a product's order is free).
    fn split(self, egraph: &QEGraph, subst: &Subst, v: &str) -> Option<Id> {
        let (a, k) = (var(subst, v), var(subst, "?k"));
        if self.is_sixth(egraph, k) {
            Some(a)
        } else if matches!(self, Scale::Multiply) && self.is_sixth(egraph, a) {
            Some(k)
        } else {
            None
        }
    }
}

/// The single value of a scalar (or all-equal) f32 constant class.
fn scalar(egraph: &QEGraph, id: Id) -> Option<f64> {
    let (v, _) = super::f32_values(egraph, id)?;
    let first = *v.first()?;
    v.iter().all(|&x| x == first).then_some(first)
}

/// Class `c` is `clip(y + 3, 0, 6)` (the Add in either order) of an f32 `y`: returns `y`.
fn clip_of_plus_three(egraph: &QEGraph, c: Id) -> Option<Id> {
    let (clip, ops) = op_node(egraph, c, &[OpKind::Clip])?;
    let op = clip.op();
    if op.attrs.float("min").ok()? != 0.0 || op.attrs.float("max").ok()? != 6.0 {
        return None;
    }
    let (_, add) = op_node(egraph, ops[0], &[OpKind::Add])?;
    let y = match (scalar(egraph, add[0]), scalar(egraph, add[1])) {
        (_, Some(k)) if k == 3.0 => add[0],
        (Some(k), _) if k == 3.0 => add[1],
        _ => return None,
    };
    (super::ty(egraph, y)?.dtype == qlift_ir::DType::F32).then_some(y)
}

/// `clip(y + 3, 0, 6) / 6`: HardSigmoid(y) with alpha 1/6, beta 1/2.
fn hard_sigmoid(egraph: &mut QEGraph, subst: &Subst, scale: Scale) -> Option<Id> {
    let y = clip_of_plus_three(egraph, scale.split(egraph, subst, "?c")?)?;
    let attrs = qlift_ir::Attrs::new()
        .with("alpha", AttrValue::Float(1.0 / 6.0))
        .with("beta", AttrValue::Float(0.5));
    add_op(egraph, OpKind::HardSigmoid, attrs, vec![y])
}

/// `y · HardSigmoid(y)` with HardSwish's parameters.
fn hard_swish(egraph: &mut QEGraph, eclass: Id, subst: &Subst) -> Option<Id> {
    let y = var(subst, "?y");
    let (sym, _) = egraph[eclass].nodes.iter().find_map(|n| match n {
        QNode::Op(sym, ch) if sym.kind == OpKind::Mul => ch.iter().find_map(|&c| {
            op_node(egraph, c, &[OpKind::HardSigmoid])
                .filter(|(_, o)| egraph.find(o[0]) == egraph.find(y))
        }),
        _ => None,
    })?;
    let op = sym.op();
    let (alpha, beta) = (op.attrs.float("alpha").ok()?, op.attrs.float("beta").ok()?);
    if (alpha - 1.0 / 6.0).abs() > 1e-7 || beta != 0.5 {
        return None;
    }
    add_op(egraph, OpKind::HardSwish, qlift_ir::Attrs::new(), vec![y])
}

/// `(y · clip(y + 3, 0, 6)) / 6` (the product in either order).
fn hard_swish_scaled(egraph: &mut QEGraph, subst: &Subst, scale: Scale) -> Option<Id> {
    let m = scale.split(egraph, subst, "?m")?;
    let (_, ops) = op_node(egraph, m, &[OpKind::Mul])?;
    let y = [(ops[0], ops[1]), (ops[1], ops[0])]
        .into_iter()
        .find_map(|(v, c)| {
            clip_of_plus_three(egraph, c).filter(|&y| egraph.find(y) == egraph.find(v))
        })?;
    add_op(egraph, OpKind::HardSwish, qlift_ir::Attrs::new(), vec![y])
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
    if !super::used_once(egraph, y) {
        return None;
    }
    let (sym, ops) = op_node(egraph, y, &producers)?;
    if super::ty(egraph, y)?.dtype != qlift_ir::DType::F32 {
        return None;
    }
    let op = sym.op();
    // An already fused activation narrows: clamp(clamp(v, a, b), lo, hi) = clamp(v, max(a, lo), min(b, hi)).
    let (a, b) = op
        .fused_activation()
        .ok()?
        .unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let (lo, hi) = (a.max(lo), b.min(hi));
    if lo > hi {
        return None;
    }
    let attrs = op
        .attrs
        .with("act_min", AttrValue::Float(lo))
        .with("act_max", AttrValue::Float(hi));
    add_op(egraph, sym.kind, attrs, ops)
}
