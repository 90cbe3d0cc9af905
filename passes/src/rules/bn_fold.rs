//! BatchNormalization folding: into the weights and bias of the Conv, Gemm or MatMul that
//! produces its input, or, with nothing to fold into, into a per-channel scale and shift.
//!
//! Inference BatchNormalization is `y·k + t` per channel with `k = scale / sqrt(var + eps)`
//! and `t = bias − mean·k`; the folded constants are computed in f64 and rounded to f32 once,
//! so the result differs from the unfolded graph only by f32 rounding.

use super::{
    add_f32, add_op, channel_shape, f32_values, is_affine, is_missing, matched, op_node, rank, var,
    Apply, QRewrite,
};
use crate::analysis::QEGraph;
use egg::{rewrite, Id, Subst};
use qlift_ir::{AttrValue, Attrs, OpKind};

/// The BatchNormalization folding rules.
pub fn rules() -> Vec<QRewrite> {
    vec![
        rewrite!("fold-bn-into-conv"; "(BatchNormalization ?y ?s ?b ?m ?v)" => { Apply(fold_into_conv) }),
        rewrite!("fold-bn-into-gemm"; "(BatchNormalization ?y ?s ?b ?m ?v)" => { Apply(fold_into_gemm) }),
        rewrite!("fold-bn-into-matmul"; "(BatchNormalization ?y ?s ?b ?m ?v)" => { Apply(fold_into_matmul) }),
        rewrite!("bn-to-scale-shift"; "(BatchNormalization ?y ?s ?b ?m ?v)" => { Apply(to_scale_shift) }),
    ]
}

/// The per-channel `(k, t)` of the matched BatchNormalization, when its parameters are
/// constants.
fn affine(egraph: &QEGraph, eclass: Id, subst: &Subst) -> Option<(Vec<f64>, Vec<f64>)> {
    let ids: Vec<Id> = ["?y", "?s", "?b", "?m", "?v"]
        .iter()
        .map(|v| var(subst, v))
        .collect();
    let eps = matched(egraph, eclass, OpKind::BatchNormalization, &ids)?
        .op()
        .attrs
        .float("epsilon")
        .ok()? as f64;
    let [s, b, m, v] =
        [ids[1], ids[2], ids[3], ids[4]].map(|id| f32_values(egraph, id).map(|(v, _)| v));
    let (s, b, m, v) = (s?, b?, m?, v?);
    let k: Vec<f64> = s
        .iter()
        .zip(&v)
        .map(|(s, v)| s / (v + eps).sqrt())
        .collect();
    let t = b
        .iter()
        .zip(&m)
        .zip(&k)
        .map(|((b, m), k)| b - m * k)
        .collect();
    Some((k, t))
}

/// `BN(Conv(x, w, b))` → `Conv(x, w·k, b·k + t)`, grouped and depthwise included (the
/// weights' first axis is the output channel either way).
fn fold_into_conv(egraph: &mut QEGraph, eclass: Id, subst: &Subst) -> Option<Id> {
    let (k, t) = affine(egraph, eclass, subst)?;
    let (conv, ops) = op_node(egraph, var(subst, "?y"), &[OpKind::Conv])
        .filter(|(s, _)| is_affine(s) && super::used_once(egraph, var(subst, "?y")))?;
    let (w, wshape) = f32_values(egraph, ops[1])?;
    if wshape[0] != k.len() {
        return None;
    }
    let per = w.len() / k.len();
    let w2: Vec<f64> = w.iter().enumerate().map(|(i, x)| x * k[i / per]).collect();
    let bias = bias_or_zero(egraph, ops.get(2).copied(), k.len())?;
    let b2: Vec<f64> = bias
        .iter()
        .zip(&k)
        .zip(&t)
        .map(|((b, k), t)| b * k + t)
        .collect();
    let (w2, b2) = (
        add_f32(egraph, &wshape, &w2),
        add_f32(egraph, &[k.len()], &b2),
    );
    add_op(egraph, OpKind::Conv, conv.op().attrs, vec![ops[0], w2, b2])
}

/// The values of an optional per-channel bias operand (zeros when missing).
fn bias_or_zero(egraph: &QEGraph, id: Option<Id>, channels: usize) -> Option<Vec<f64>> {
    match id {
        None => Some(vec![0.0; channels]),
        Some(id) if is_missing(egraph, id) => Some(vec![0.0; channels]),
        Some(id) => f32_values(egraph, id)
            .map(|(v, _)| v)
            .filter(|v| v.len() == channels),
    }
}

/// Scales the output columns of a `[K, N]` (or, transposed, `[N, K]`) weight matrix.
fn scale_columns(w: &[f64], shape: &[usize], transposed: bool, k: &[f64]) -> Option<Vec<f64>> {
    let n = if transposed { shape[0] } else { shape[1] };
    (n == k.len()).then(|| {
        w.iter()
            .enumerate()
            .map(|(i, x)| {
                x * k[if transposed {
                    i / shape[1]
                } else {
                    i % shape[1]
                }]
            })
            .collect()
    })
}

/// `BN(Gemm(a, B, C))` → `Gemm(a, B·diag(k), beta·C·k + t)` with beta 1 (C as a per-column
/// vector, or a full matrix).
fn fold_into_gemm(egraph: &mut QEGraph, eclass: Id, subst: &Subst) -> Option<Id> {
    let (k, t) = affine(egraph, eclass, subst)?;
    let (gemm, ops) = op_node(egraph, var(subst, "?y"), &[OpKind::Gemm])
        .filter(|(s, _)| is_affine(s) && super::used_once(egraph, var(subst, "?y")))?;
    let attrs = gemm.op().attrs;
    let (b, bshape) = f32_values(egraph, ops[1])?;
    let b2 = scale_columns(&b, &bshape, attrs.int("transB").ok()? != 0, &k)?;
    let beta = attrs.float("beta").ok()? as f64;
    let (c, cshape) = match ops.get(2) {
        Some(&id) if !is_missing(egraph, id) => f32_values(egraph, id)?,
        _ => (vec![0.0], vec![]),
    };
    // C is a scalar, a per-column vector ([N] or [1, N]) or a full [M, N] matrix.
    let n = k.len();
    let rows = match (c.len(), cshape.last()) {
        (1, _) => 1,
        (len, Some(&last)) if last == n && len % n == 0 => len / n,
        _ => return None,
    };
    let c2: Vec<f64> = (0..rows * n)
        .map(|i| beta * c[if c.len() == 1 { 0 } else { i }] * k[i % n] + t[i % n])
        .collect();
    let c2shape = if rows == 1 { vec![n] } else { vec![rows, n] };
    let (b2, c2) = (
        add_f32(egraph, &bshape, &b2),
        add_f32(egraph, &c2shape, &c2),
    );
    let attrs = attrs.with("beta", AttrValue::Float(1.0));
    add_op(egraph, OpKind::Gemm, attrs, vec![ops[0], b2, c2])
}

/// `BN(MatMul(x, W))` for a 2-d `x` and constant 2-d `W` → `Gemm(x, W·diag(k), t)`.
fn fold_into_matmul(egraph: &mut QEGraph, eclass: Id, subst: &Subst) -> Option<Id> {
    let (k, t) = affine(egraph, eclass, subst)?;
    let (_, ops) = op_node(egraph, var(subst, "?y"), &[OpKind::MatMul])
        .filter(|(s, _)| is_affine(s) && super::used_once(egraph, var(subst, "?y")))?;
    if rank(egraph, ops[0])? != 2 {
        return None;
    }
    let (w, wshape) = f32_values(egraph, ops[1])?;
    if wshape.len() != 2 {
        return None;
    }
    let w2 = scale_columns(&w, &wshape, false, &k)?;
    let (w2, t) = (
        add_f32(egraph, &wshape, &w2),
        add_f32(egraph, &[k.len()], &t),
    );
    let attrs = Attrs::new()
        .with("alpha", AttrValue::Float(1.0))
        .with("beta", AttrValue::Float(1.0))
        .with("transA", AttrValue::Int(0))
        .with("transB", AttrValue::Int(0));
    add_op(egraph, OpKind::Gemm, attrs, vec![ops[0], w2, t])
}

/// `BN(y)` → `y · k + t` with k and t shaped `[C, 1, ...]` to broadcast over axis 1.
fn to_scale_shift(egraph: &mut QEGraph, eclass: Id, subst: &Subst) -> Option<Id> {
    let (k, t) = affine(egraph, eclass, subst)?;
    let y = var(subst, "?y");
    let shape = channel_shape(rank(egraph, y)?, k.len());
    let (k, t) = (add_f32(egraph, &shape, &k), add_f32(egraph, &shape, &t));
    let scaled = add_op(egraph, OpKind::Mul, Attrs::new(), vec![y, k])?;
    add_op(egraph, OpKind::Add, Attrs::new(), vec![scaled, t])
}
