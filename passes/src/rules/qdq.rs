//! Q/DQ simplification: a DequantizeLinear → QuantizeLinear chain becomes one Requantize,
//! a Requantize to the parameters the value already has disappears, ops that commute with
//! dequantization (max pooling, data movement) run on the quantized values directly, and
//! Relu/Clip between a DequantizeLinear and a QuantizeLinear become a clamped Requantize.
//!
//! Numerics: `Requantize` rounds `s_x/s_y · (x − z_x)` once in fixed point where the float
//! chain rounds in f32 — the same value except within ~2^-20 of a rounding boundary. With
//! equal parameters both are the identity, so cancellation is exact. Sinking through max
//! pooling and data movement is exact: dequantization is monotonic and elementwise.

use super::{add_declared, dq, matched, ty, under_quantize, var, Apply, QRewrite};
use crate::analysis::QEGraph;
use egg::{rewrite, Id, Subst};
use qlift_ir::{AttrValue, Attrs, OpKind};

/// The Q/DQ simplification rules.
pub fn rules() -> Vec<QRewrite> {
    vec![
        rewrite!("dq-q-to-requantize"; "(QuantizeLinear (DequantizeLinear ?x))" => { Apply(dq_q_to_requantize) }),
        rewrite!("cancel-requantize"; "(Requantize ?x)" => { Apply(cancel_requantize) }),
        rewrite!("quantized-relu"; "(QuantizeLinear (Relu (DequantizeLinear ?x)))" => { Apply(|g, c, s| clamp(g, c, s, OpKind::Relu)) }),
        rewrite!("quantized-clip"; "(QuantizeLinear (Clip (DequantizeLinear ?x)))" => { Apply(|g, c, s| clamp(g, c, s, OpKind::Clip)) }),
        rewrite!("quantized-max-pool"; "(QuantizeLinear (MaxPool (DequantizeLinear ?x)))" => { Apply(|g, c, s| sink(g, c, s, OpKind::MaxPool)) }),
        rewrite!("quantized-flatten"; "(QuantizeLinear (Flatten (DequantizeLinear ?x)))" => { Apply(|g, c, s| sink(g, c, s, OpKind::Flatten)) }),
        rewrite!("quantized-reshape"; "(QuantizeLinear (Reshape (DequantizeLinear ?x)))" => { Apply(|g, c, s| sink(g, c, s, OpKind::Reshape)) }),
        rewrite!("quantized-transpose"; "(QuantizeLinear (Transpose (DequantizeLinear ?x)))" => { Apply(|g, c, s| sink(g, c, s, OpKind::Transpose)) }),
        rewrite!("quantized-squeeze"; "(QuantizeLinear (Squeeze (DequantizeLinear ?x)))" => { Apply(|g, c, s| sink(g, c, s, OpKind::Squeeze)) }),
        rewrite!("quantized-unsqueeze"; "(QuantizeLinear (Unsqueeze (DequantizeLinear ?x)))" => { Apply(|g, c, s| sink(g, c, s, OpKind::Unsqueeze)) }),
    ]
}

/// `Q(DQ(x))` → `Requantize(x)` to the QuantizeLinear's parameters.
fn dq_q_to_requantize(egraph: &mut QEGraph, eclass: Id, subst: &Subst) -> Option<Id> {
    let x = var(subst, "?x");
    let (_, declared) = under_quantize(egraph, eclass, OpKind::DequantizeLinear, &[x])?;
    add_declared(egraph, OpKind::Requantize, Attrs::new(), vec![x], &declared)
}

/// `Requantize(x)` without an activation, to the type `x` already has → `x`.
fn cancel_requantize(egraph: &mut QEGraph, eclass: Id, subst: &Subst) -> Option<Id> {
    let x = var(subst, "?x");
    let sym = matched(egraph, eclass, OpKind::Requantize, &[x])?;
    let unclamped = matches!(sym.op().fused_activation(), Ok(None));
    (unclamped && sym.declared.as_ref() == ty(egraph, x)).then_some(x)
}

/// `Q(Relu(DQ(x)))` → `Requantize{act_min=0}(x)`; Clip likewise with its bounds.
fn clamp(egraph: &mut QEGraph, eclass: Id, subst: &Subst, kind: OpKind) -> Option<Id> {
    let x = var(subst, "?x");
    let (attrs, declared) = under_quantize(egraph, eclass, kind, &[dq(egraph, x)?])?;
    let (lo, hi) = match kind {
        OpKind::Relu => (0.0, f32::INFINITY),
        _ => (attrs.float("min").ok()?, attrs.float("max").ok()?),
    };
    let act = Attrs::new().with("act_min", AttrValue::Float(lo)).with("act_max", AttrValue::Float(hi));
    add_declared(egraph, OpKind::Requantize, act, vec![x], &declared)
}

/// `Q(op(DQ(x)))` → `Requantize(op(x))` for an op that commutes with dequantization; the
/// Requantize cancels when the parameters already agree (as in ONNX Runtime's QDQ models).
fn sink(egraph: &mut QEGraph, eclass: Id, subst: &Subst, kind: OpKind) -> Option<Id> {
    let x = var(subst, "?x");
    let (attrs, declared) = under_quantize(egraph, eclass, kind, &[dq(egraph, x)?])?;
    let inner = super::add_op(egraph, kind, attrs, vec![x])?;
    add_declared(egraph, OpKind::Requantize, Attrs::new(), vec![inner], &declared)
}
