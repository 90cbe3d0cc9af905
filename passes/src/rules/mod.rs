//! Rewrite rules as data: one file per family, each exporting `rules()`. Rules that need
//! tensor values use a custom applier ([`Apply`]) that reads constants from the analysis.
//! The contract every rule keeps is in `README.md` beside this file.

use crate::analysis::{Constant, QAnalysis, QEGraph};
use crate::lang::{OpSym, QNode};
use egg::{Applier, Id, PatternAst, Rewrite, Subst, Symbol, Var};
use qlift_ir::{Attrs, Op, OpKind, Tensor, TensorType};
use std::sync::Arc;

pub mod absorb;
pub mod activation;
pub mod bn_fold;
pub mod cleanup;
pub mod qdq;
pub mod requant;

/// A rewrite over qlift's e-graph.
pub type QRewrite = Rewrite<QNode, QAnalysis>;

/// An applier written as a function: given the matched class and the substitution, it
/// returns the class of an equivalent term it built, or `None` when the rule does not apply.
pub struct Apply(pub fn(&mut QEGraph, Id, &Subst) -> Option<Id>);

impl Applier<QNode, QAnalysis> for Apply {
    fn apply_one(
        &self,
        egraph: &mut QEGraph,
        eclass: Id,
        subst: &Subst,
        _: Option<&PatternAst<QNode>>,
        _: Symbol,
    ) -> Vec<Id> {
        match (self.0)(egraph, eclass, subst) {
            Some(new) if egraph.union(eclass, new) => vec![eclass],
            _ => vec![],
        }
    }
}

/// The class bound to a pattern variable such as `"?x"`.
pub(crate) fn var(subst: &Subst, name: &str) -> Id {
    subst[name
        .parse::<Var>()
        .expect("pattern variables are written correctly in the rules")]
}

/// The class bound to a pattern variable, when the matched pattern has it.
pub(crate) fn optional_var(subst: &Subst, name: &str) -> Option<Id> {
    subst.get(name.parse::<Var>().ok()?).copied()
}

/// The type of a class.
pub(crate) fn ty(egraph: &QEGraph, id: Id) -> Option<&TensorType> {
    egraph[id].data.ty.as_ref()
}

/// Whether the value of class `id` has one use: one parent class and not a graph output.
/// Rules that rebuild a value's producer with something folded in (an activation, an affine
/// map, a BatchNormalization) require it: with another use the original would stay, and
/// the expensive producer would then run twice.
pub(crate) fn used_once(egraph: &QEGraph, id: Id) -> bool {
    let class = &egraph[id];
    if class.data.output {
        return false;
    }
    let mut users: Vec<Id> = class.parents().map(|p| egraph.find(p)).collect();
    users.sort();
    users.dedup();
    users.len() <= 1
}

/// Whether a class is the missing operand.
pub(crate) fn is_missing(egraph: &QEGraph, id: Id) -> bool {
    egraph[id].nodes.iter().any(|n| matches!(n, QNode::Missing))
}

/// The real values and shape of a constant class: an f32 constant, or the
/// DequantizeLinear of a quantized constant (read through, since the analysis does not
/// fold dequantization: quantized weights stay quantized unless a rule consumes them).
pub(crate) fn f32_values(egraph: &QEGraph, id: Id) -> Option<(Vec<f64>, Vec<usize>)> {
    if let Some(c) = egraph[id]
        .data
        .constant
        .as_ref()
        .filter(|c| c.quant.is_none())
    {
        let v = c.tensor.as_f32().ok()?;
        return Some((
            v.iter().map(|&x| x as f64).collect(),
            c.tensor.shape().to_vec(),
        ));
    }
    let (_, operands) = op_node(egraph, id, &[OpKind::DequantizeLinear])?;
    let q = egraph[operands[0]].data.constant.as_ref()?;
    let op = Op::new(OpKind::DequantizeLinear, Attrs::new());
    let ty = q.ty();
    let out = qlift_ir::interp::eval_op(
        &op,
        &[Some(q.tensor.as_ref())],
        &[Some(&ty)],
        std::slice::from_ref(egraph[id].data.ty.as_ref()?),
    )
    .ok()?;
    let v = out.first()?.as_f32().ok()?;
    Some((
        v.iter().map(|&x| x as f64).collect(),
        out[0].shape().to_vec(),
    ))
}

/// The first node of one of `kinds` in a class: its symbol and operand classes.
pub(crate) fn op_node(egraph: &QEGraph, id: Id, kinds: &[OpKind]) -> Option<(OpSym, Vec<Id>)> {
    egraph[id].nodes.iter().find_map(|n| match n {
        QNode::Op(sym, children) if kinds.contains(&sym.kind) => {
            Some((sym.clone(), children.clone()))
        }
        _ => None,
    })
}

/// The node of `kind` in the matched class whose operands are `operands` (the one the
/// pattern matched), for reading its attributes.
pub(crate) fn matched(
    egraph: &QEGraph,
    eclass: Id,
    kind: OpKind,
    operands: &[Id],
) -> Option<OpSym> {
    let want: Vec<Id> = operands.iter().map(|&c| egraph.find(c)).collect();
    egraph[eclass].nodes.iter().find_map(|n| match n {
        QNode::Op(sym, children)
            if sym.kind == kind
                && children
                    .iter()
                    .map(|&c| egraph.find(c))
                    .eq(want.iter().copied()) =>
        {
            Some(sym.clone())
        }
        _ => None,
    })
}

/// Adds an f32 constant (values rounded from f64 once).
pub(crate) fn add_f32(egraph: &mut QEGraph, shape: &[usize], values: &[f64]) -> Id {
    add_const(
        egraph,
        Tensor::from_f32(shape, values.iter().map(|&v| v as f32).collect()),
        None,
    )
}

/// Adds an op node if its type checks against the operand classes (else `None`: a rule
/// never adds an ill-typed node).
pub(crate) fn add_op(
    egraph: &mut QEGraph,
    kind: OpKind,
    attrs: Attrs,
    children: Vec<Id>,
) -> Option<Id> {
    let op = Op::new(kind, attrs);
    let types: Vec<Option<&TensorType>> = children.iter().map(|&c| ty(egraph, c)).collect();
    qlift_ir::infer_op(&op, &types, &[]).ok()?;
    Some(egraph.add(QNode::Op(OpSym::new(&op, None), children)))
}

/// Adds an op whose result type is declared (QuantizeLinear, the integer ops) if its type
/// checks and the inferred type is exactly `declared` (else `None`).
pub(crate) fn add_declared(
    egraph: &mut QEGraph,
    kind: OpKind,
    attrs: Attrs,
    children: Vec<Id>,
    declared: &TensorType,
) -> Option<Id> {
    let op = Op::new(kind, attrs);
    let types: Vec<Option<&TensorType>> = children.iter().map(|&c| ty(egraph, c)).collect();
    let inferred = qlift_ir::infer_op(&op, &types, std::slice::from_ref(declared)).ok()?;
    (inferred.first() == Some(declared))
        .then(|| egraph.add(QNode::Op(OpSym::new(&op, Some(declared.clone())), children)))
}

/// Adds a constant with optional quantization parameters.
pub(crate) fn add_const(
    egraph: &mut QEGraph,
    tensor: Tensor,
    quant: Option<qlift_ir::QuantParams>,
) -> Id {
    let node = egraph.analysis.constant_node(Constant {
        tensor: Arc::new(tensor),
        quant,
    });
    egraph.add(node)
}

/// The operand of a DequantizeLinear node in class `id`, if there is one.
pub(crate) fn dequantized(egraph: &QEGraph, id: Id) -> Option<Id> {
    op_node(egraph, id, &[OpKind::DequantizeLinear]).map(|(_, ops)| ops[0])
}

/// The class of `DequantizeLinear(x)`.
pub(crate) fn dq(egraph: &QEGraph, x: Id) -> Option<Id> {
    egraph.lookup(QNode::Op(
        OpSym::new(&Op::new(OpKind::DequantizeLinear, Attrs::new()), None),
        vec![x],
    ))
}

/// Under the QuantizeLinear matched on `eclass`, the node of `kind` with `operands`: its
/// attributes, and the QuantizeLinear's declared result type.
pub(crate) fn under_quantize(
    egraph: &QEGraph,
    eclass: Id,
    kind: OpKind,
    operands: &[Id],
) -> Option<(Attrs, TensorType)> {
    egraph[eclass].nodes.iter().find_map(|n| match n {
        QNode::Op(q, c) if q.kind == OpKind::QuantizeLinear => {
            let sym = matched(egraph, c[0], kind, operands)?;
            Some((sym.op().attrs, q.declared.clone()?))
        }
        _ => None,
    })
}

/// Per-output-channel factors from a constant that broadcasts against a result of rank
/// `rank` whose channels are on `axis` (`channels` of them): a scalar, or 1 everywhere
/// except `channels` on that axis.
pub(crate) fn per_channel(
    values: &[f64],
    shape: &[usize],
    rank: usize,
    axis: usize,
    channels: usize,
) -> Option<Vec<f64>> {
    if values.len() == 1 {
        return Some(vec![values[0]; channels]);
    }
    if shape.len() > rank || values.len() != channels {
        return None;
    }
    let aligned = rank - shape.len();
    let ok = shape.iter().enumerate().all(|(i, &d)| {
        if i + aligned == axis {
            d == channels
        } else {
            d == 1
        }
    });
    ok.then(|| values.to_vec())
}

/// The rank of a class's value.
pub(crate) fn rank(egraph: &QEGraph, id: Id) -> Option<usize> {
    ty(egraph, id).map(|t| t.shape.rank())
}

/// A shape of `rank` that is `channels` on axis 1 and 1 elsewhere (per-channel operand).
pub(crate) fn channel_shape(rank: usize, channels: usize) -> Vec<usize> {
    let mut s = vec![1; rank.saturating_sub(1)];
    if let Some(first) = s.first_mut() {
        *first = channels;
    } else {
        s.push(channels);
    }
    s
}

/// Whether an op carries no fused activation (so it is still affine in its output).
pub(crate) fn is_affine(sym: &OpSym) -> bool {
    matches!(sym.op().fused_activation(), Ok(None))
}
