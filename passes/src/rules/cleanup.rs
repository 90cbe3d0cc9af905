//! Cleanup: pass-through ops removed, reshape and transpose chains collapsed.

use super::{matched, op_node, ty, var, Apply, QRewrite};
use crate::analysis::QEGraph;
use egg::{rewrite, Id, Subst};
use qlift_ir::{AttrValue, Attrs, Dim, OpKind};

/// The cleanup rules.
pub fn rules() -> Vec<QRewrite> {
    vec![
        // Identity and inference-mode Dropout return their operand: exact.
        rewrite!("remove-identity"; "(Identity ?x)" => "?x"),
        rewrite!("remove-dropout"; "(Dropout ?x)" => "?x"),
        // A Reshape to the shape its operand already has: exact.
        rewrite!("remove-noop-reshape"; "(Reshape ?x)" => "?x" if same_type("?x")),
        // Reshape of a reshape is one reshape to the final shape: data order is unchanged.
        rewrite!("merge-reshapes"; "(Reshape (Reshape ?x))" => { Apply(merge_reshapes) }),
        // Transpose of a transpose is one transpose by the composed permutation (or none).
        rewrite!("merge-transposes"; "(Transpose ?t)" => { Apply(merge_transposes) }),
    ]
}

/// Condition: `?x` has exactly the matched class's type (shape and quantization).
fn same_type(v: &'static str) -> impl Fn(&mut QEGraph, Id, &Subst) -> bool {
    move |egraph, eclass, subst| {
        let x = super::var(subst, v);
        ty(egraph, x).is_some() && ty(egraph, x) == ty(egraph, eclass)
    }
}

/// `Reshape(Reshape(x))` → `Reshape(x)` to the outer result's shape, written with -1 for
/// the batch dimension (at most one) so it stays symbolic.
fn merge_reshapes(egraph: &mut QEGraph, eclass: Id, subst: &Subst) -> Option<Id> {
    let x = var(subst, "?x");
    let out = ty(egraph, eclass)?.shape.clone();
    if out.dims().iter().filter(|d| **d == Dim::Batch).count() > 1
        || out.dims().contains(&Dim::Fixed(0))
    {
        return None;
    }
    let spec = out
        .dims()
        .iter()
        .map(|d| d.fixed().map_or(-1, |n| n as i64))
        .collect();
    let attrs = Attrs::new()
        .with("allowzero", AttrValue::Int(0))
        .with("shape", AttrValue::Ints(spec));
    super::add_op(egraph, OpKind::Reshape, attrs, vec![x])
}

/// `Transpose(Transpose(x))` → `Transpose(x)` with `perm[i] = inner[outer[i]]`, or `x`.
fn merge_transposes(egraph: &mut QEGraph, eclass: Id, subst: &Subst) -> Option<Id> {
    let t = var(subst, "?t");
    let outer = matched(egraph, eclass, OpKind::Transpose, &[t])?.op();
    let (inner_sym, inner_children) = op_node(egraph, t, &[OpKind::Transpose])?;
    let (outer_perm, inner_perm) = (
        outer.attrs.ints("perm").ok()?,
        inner_sym.op().attrs.ints("perm").ok()?.to_vec(),
    );
    let perm: Vec<i64> = outer_perm
        .iter()
        .map(|&o| inner_perm.get(o as usize).copied())
        .collect::<Option<_>>()?;
    let x = inner_children[0];
    if perm.iter().enumerate().all(|(i, &p)| p == i as i64) {
        return Some(x);
    }
    super::add_op(
        egraph,
        OpKind::Transpose,
        Attrs::new().with("perm", AttrValue::Ints(perm)),
        vec![x],
    )
}
