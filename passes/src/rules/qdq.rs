//! Q/DQ simplification: a DequantizeLinear → QuantizeLinear chain becomes one Requantize,
//! a Requantize to the parameters the value already has disappears, DequantizeLinear moves
//! below ops that commute with it (max pooling, data movement) so they run on quantized
//! values, and Relu/Clip on dequantized values become a clamped Requantize.
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
        rewrite!("dequantize-after-relu"; "(Relu (DequantizeLinear ?x))" => { Apply(|g, c, s| clamp_dequantized(g, c, s, OpKind::Relu)) }),
        rewrite!("dequantize-after-clip"; "(Clip (DequantizeLinear ?x))" => { Apply(|g, c, s| clamp_dequantized(g, c, s, OpKind::Clip)) }),
        rewrite!("dequantize-after-max-pool"; "(MaxPool (DequantizeLinear ?x))" => { Apply(|g, c, s| sink(g, c, s, OpKind::MaxPool)) }),
        rewrite!("dequantize-after-flatten"; "(Flatten (DequantizeLinear ?x))" => { Apply(|g, c, s| sink(g, c, s, OpKind::Flatten)) }),
        rewrite!("dequantize-after-reshape"; "(Reshape (DequantizeLinear ?x))" => { Apply(|g, c, s| sink(g, c, s, OpKind::Reshape)) }),
        rewrite!("dequantize-after-transpose"; "(Transpose (DequantizeLinear ?x))" => { Apply(|g, c, s| sink(g, c, s, OpKind::Transpose)) }),
        rewrite!("dequantize-after-squeeze"; "(Squeeze (DequantizeLinear ?x))" => { Apply(|g, c, s| sink(g, c, s, OpKind::Squeeze)) }),
        rewrite!("dequantize-after-unsqueeze"; "(Unsqueeze (DequantizeLinear ?x))" => { Apply(|g, c, s| sink(g, c, s, OpKind::Unsqueeze)) }),
        rewrite!("dequantize-after-resize"; "(Resize (DequantizeLinear ?x) ?r ?s)" => { Apply(|g, c, s| sink_resize(g, c, s, &["?r", "?s"])) }),
        rewrite!("dequantize-after-resize-by-sizes"; "(Resize (DequantizeLinear ?x) ?r ?s ?n)" => { Apply(|g, c, s| sink_resize(g, c, s, &["?r", "?s", "?n"])) }),
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
    add_declared(
        egraph,
        OpKind::Requantize,
        activation(lo, hi),
        vec![x],
        &declared,
    )
}

/// The bounds of a Relu or Clip node matched on `eclass` over `operand`.
fn bounds(egraph: &QEGraph, eclass: Id, kind: OpKind, operand: Id) -> Option<(f32, f32)> {
    match kind {
        OpKind::Relu => Some((0.0, f32::INFINITY)),
        _ => {
            let attrs = matched(egraph, eclass, kind, &[operand])?.op().attrs;
            Some((attrs.float("min").ok()?, attrs.float("max").ok()?))
        }
    }
}

fn activation(lo: f32, hi: f32) -> Attrs {
    Attrs::new()
        .with("act_min", AttrValue::Float(lo))
        .with("act_max", AttrValue::Float(hi))
}

/// `Relu(DQ(x))` → `DQ(Requantize{act_min=0}(x))` with x's own parameters: the clamp moves
/// into the integer domain (exact for Relu; for Clip, bounds off the grid round to it).
fn clamp_dequantized(egraph: &mut QEGraph, eclass: Id, subst: &Subst, kind: OpKind) -> Option<Id> {
    let x = var(subst, "?x");
    let (lo, hi) = bounds(egraph, eclass, kind, dq(egraph, x)?)?;
    let own = ty(egraph, x)?.clone();
    // The clamped values must be representable in x's parameters: a bound beyond x's range
    // on the side where it clips (Clip[-6, -1] of a non-negative x) would saturate.
    let q = own.quant.as_ref().filter(|q| q.axis.is_none())?;
    let (qmin, qmax) = own.dtype.int_range()?;
    let (scale, zp) = q.channel(0);
    let (real_min, real_max) = (
        (qmin - zp as i64) as f32 * scale,
        (qmax - zp as i64) as f32 * scale,
    );
    if lo > real_max || hi < real_min {
        return None;
    }
    let clamped = add_declared(
        egraph,
        OpKind::Requantize,
        activation(lo, hi),
        vec![x],
        &own,
    )?;
    super::add_op(
        egraph,
        OpKind::DequantizeLinear,
        Attrs::new(),
        vec![clamped],
    )
}

/// `op(DQ(x))` → `DQ(op(x))` for an op that commutes with dequantization (max pooling,
/// data movement): the op runs on the quantized values.
/// `Resize(DequantizeLinear x, rest…)` → `DequantizeLinear(Resize(x, rest…))` in nearest
/// mode without a crop window: the resize only copies elements (a crop window's fill is a
/// real value, which the integer resize would store as it is).
fn sink_resize(egraph: &mut QEGraph, eclass: Id, subst: &Subst, rest: &[&str]) -> Option<Id> {
    let x = var(subst, "?x");
    let mut operands = vec![dq(egraph, x)?];
    operands.extend(rest.iter().map(|v| var(subst, v)));
    let attrs = matched(egraph, eclass, OpKind::Resize, &operands)?
        .op()
        .attrs;
    if attrs.str("mode").ok()? != "nearest"
        || attrs.str("coordinate_transformation_mode").ok()? == "tf_crop_and_resize"
    {
        return None;
    }
    operands[0] = x;
    let inner = super::add_op(egraph, OpKind::Resize, attrs, operands)?;
    super::add_op(egraph, OpKind::DequantizeLinear, Attrs::new(), vec![inner])
}

fn sink(egraph: &mut QEGraph, eclass: Id, subst: &Subst, kind: OpKind) -> Option<Id> {
    let x = var(subst, "?x");
    let attrs = matched(egraph, eclass, kind, &[dq(egraph, x)?])?.op().attrs;
    let inner = super::add_op(egraph, kind, attrs, vec![x])?;
    super::add_op(egraph, OpKind::DequantizeLinear, Attrs::new(), vec![inner])
}
