//! Affine absorption: a per-channel Mul or Add by a constant right after a Conv or Gemm
//! (with no fused activation in between) moves into its weights and bias. Exact up to f32
//! rounding: `(W·x + b)·c = (W·c)·x + b·c` and `(W·x + b) + c = W·x + (b + c)`.

use super::{
    add_f32, add_op, f32_values, is_affine, is_missing, op_node, per_channel, rank, ty, used_once,
    var, Apply, QRewrite,
};
use crate::analysis::QEGraph;
use egg::{rewrite, Id, Subst};
use qlift_ir::{AttrValue, OpKind};

/// The absorption rules (both operand orders of the commutative Mul and Add).
pub fn rules() -> Vec<QRewrite> {
    vec![
        rewrite!("absorb-mul-into-conv-or-gemm"; "(Mul ?p ?q)" => { Apply(|g, _, s| absorb(g, s, Affine::Mul)) }),
        rewrite!("absorb-add-into-conv-or-gemm"; "(Add ?p ?q)" => { Apply(|g, _, s| absorb(g, s, Affine::Add)) }),
    ]
}

#[derive(Clone, Copy, PartialEq)]
enum Affine {
    Mul,
    Add,
}

/// Tries both operand orders: one side a Conv/Gemm, the other a per-channel constant.
fn absorb(egraph: &mut QEGraph, subst: &Subst, how: Affine) -> Option<Id> {
    let (p, q) = (var(subst, "?p"), var(subst, "?q"));
    absorb_into(egraph, p, q, how).or_else(|| absorb_into(egraph, q, p, how))
}

fn absorb_into(egraph: &mut QEGraph, producer: Id, constant: Id, how: Affine) -> Option<Id> {
    if !used_once(egraph, producer) {
        return None;
    }
    let (sym, ops) =
        op_node(egraph, producer, &[OpKind::Conv, OpKind::Gemm]).filter(|(s, _)| is_affine(s))?;
    let (c, cshape) = f32_values(egraph, constant)?;
    let out_rank = rank(egraph, producer)?;
    let attrs = sym.op().attrs;
    // Output channels: axis 1 of the Conv's [N, M, ...] or of the Gemm's [M, N].
    let channels = ty(egraph, producer)?.shape.dims().get(1)?.fixed()?;
    let factor = per_channel(&c, &cshape, out_rank, 1, channels)?;
    let bias = match ops.get(2) {
        Some(&id) if !is_missing(egraph, id) => f32_values(egraph, id)?,
        _ => (vec![0.0; channels], vec![channels]),
    };
    if bias.0.len() != channels {
        return None; // a full-matrix Gemm C: leave it
    }
    let (w, wshape) = f32_values(egraph, ops[1])?;
    let transposed = sym.kind == OpKind::Gemm && attrs.int("transB").ok()? != 0;
    let channel_of = |i: usize| match sym.kind {
        OpKind::Conv => i / (w.len() / channels),
        _ if transposed => i / wshape[1],
        _ => i % wshape[1],
    };
    let mut attrs = attrs;
    let (w2, b2) = match how {
        Affine::Mul => {
            let w2 = w
                .iter()
                .enumerate()
                .map(|(i, x)| x * factor[channel_of(i)])
                .collect::<Vec<_>>();
            (
                Some(w2),
                bias.0
                    .iter()
                    .zip(&factor)
                    .map(|(b, f)| b * f)
                    .collect::<Vec<_>>(),
            )
        }
        Affine::Add => {
            // Gemm's C is scaled by beta: fold c/beta (beta 0 means C is unused: set beta 1).
            let beta = if sym.kind == OpKind::Gemm {
                attrs.float("beta").ok()? as f64
            } else {
                1.0
            };
            let (bias, beta) = if beta == 0.0 {
                (vec![0.0; channels], 1.0)
            } else {
                (bias.0.clone(), beta)
            };
            if sym.kind == OpKind::Gemm {
                attrs.set("beta", AttrValue::Float(beta as f32));
            }
            (
                None,
                bias.iter()
                    .zip(&factor)
                    .map(|(b, f)| b + f / beta)
                    .collect(),
            )
        }
    };
    let w = match w2 {
        Some(w2) => add_f32(egraph, &wshape, &w2),
        None => ops[1],
    };
    let b = add_f32(egraph, &[channels], &b2);
    add_op(egraph, sym.kind, attrs, vec![ops[0], w, b])
}
