//! Einsum, lowered at import to the IR's Transpose, Reshape, Unsqueeze, Squeeze, Slice,
//! ReduceSum and MatMul, so that no generic contraction kernel is needed and the products
//! run on the matrix-product kernels.
//!
//! The lowering, for the contractions exporters write (`bhqd,bhkd->bhqk`, `bij,bjk->bik`,
//! `ij,jk->ik`, transposes, sums, diagonals):
//! 1. each operand's repeated labels become a diagonal (the two axes moved last, merged,
//!    and sliced with step `n + 1`), and labels no other operand and not the result use
//!    are summed out;
//! 2. operands are contracted left to right: labels of both sides that the result (or a
//!    later operand) keeps are batch axes, the others in both are contracted; each side is
//!    transposed to `[batch…, own…, contracted…]` (the right side `[batch…, contracted…,
//!    own…]`) and its own and contracted labels merged into one axis each, so that one
//!    batched MatMul does the contraction, whose result is split back into labels;
//! 3. the result is transposed to the output's label order.
//!
//! Ellipsis dimensions are labels of their own (aligned right, numpy-broadcast between
//! operands by MatMul). A side's own labels are merged only when their extents are known;
//! otherwise (the batch, a sequence length) all but the last stay axes of their own, which
//! MatMul broadcasts against axes of 1 inserted in the other side. Contracted labels are
//! merged when known, or when only that group is unknown (written as −1).

use super::Registry;
use crate::onnx::import::{ints, NodeCx};
use crate::Error;
use qlift_ir::{AttrValue, Attrs, Dim, OpKind, Tensor, ValueId};

pub(crate) fn register(reg: &mut Registry) {
    reg.insert_since("Einsum", 12, einsum);
}

/// A subscript label: a letter, or the `i`th dimension covered by the ellipsis (counted
/// so that the last ellipsis dimension of every operand is the same label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Label {
    /// An ellipsis dimension (first sorts first in an implicit output).
    Ellipsis(usize),
    Letter(char),
}

/// An operand of a planned op: an original operand, the result of planned step `i`, or a
/// constant i64 vector (Slice's parameters).
#[derive(Clone)]
enum Val {
    Operand(usize),
    Step(usize),
    Ints(Vec<i64>),
}

/// A value during the lowering: where it comes from, and the label and extent of each axis.
#[derive(Clone)]
struct Term {
    val: Val,
    labels: Vec<Label>,
    dims: Vec<Dim>,
}

/// The ops of the lowering, planned before any is emitted (so that the last one can produce
/// the node's own result).
struct Plan {
    steps: Vec<(OpKind, Attrs, Vec<Val>)>,
}

impl Plan {
    fn push(&mut self, kind: OpKind, attrs: Attrs, inputs: Vec<Val>) -> Val {
        self.steps.push((kind, attrs, inputs));
        Val::Step(self.steps.len() - 1)
    }

    /// `t` transposed to the labels `order` (a permutation of its own).
    fn transpose(&mut self, t: Term, order: &[Label]) -> Term {
        if t.labels == order {
            return t;
        }
        let perm: Vec<usize> = order
            .iter()
            .map(|l| t.labels.iter().position(|m| m == l).expect("a permutation"))
            .collect();
        let dims = perm.iter().map(|&p| t.dims[p]).collect();
        let val = self.push(
            OpKind::Transpose,
            Attrs::new().with("perm", ints(perm.iter().map(|&p| p as i64).collect())),
            vec![t.val],
        );
        Term {
            val,
            labels: order.to_vec(),
            dims,
        }
    }

    /// `t` with the labels `gone` summed out.
    fn sum_out(&mut self, t: Term, gone: &[Label]) -> Term {
        let axes: Vec<i64> = (0..t.labels.len())
            .filter(|&a| gone.contains(&t.labels[a]))
            .map(|a| a as i64)
            .collect();
        if axes.is_empty() {
            return t;
        }
        let attrs = Attrs::new()
            .with("axes", ints(axes))
            .with("keepdims", AttrValue::Int(0))
            .with("noop_with_empty_axes", AttrValue::Int(0));
        let val = self.push(OpKind::ReduceSum, attrs, vec![t.val.clone()]);
        let keep: Vec<usize> = (0..t.labels.len())
            .filter(|&a| !gone.contains(&t.labels[a]))
            .collect();
        Term {
            val,
            labels: keep.iter().map(|&a| t.labels[a]).collect(),
            dims: keep.iter().map(|&a| t.dims[a]).collect(),
        }
    }

    /// `t` reshaped so that its axes after the first `lead` become `groups` (each a run of
    /// consecutive axes merged into one extent; an empty group is a new axis of 1).
    fn regroup(&mut self, t: Term, lead: usize, groups: &[Vec<Dim>]) -> Result<Term, String> {
        let merged: Vec<Dim> = groups.iter().map(|g| product(g)).collect();
        let same = groups.iter().all(|g| g.len() == 1);
        if same {
            return Ok(t);
        }
        let mut spec: Vec<i64> = vec![0; lead];
        let mut unknown = false;
        for d in &merged {
            spec.push(match d {
                Dim::Fixed(n) => *n as i64,
                _ if unknown => {
                    return Err(
                        "an einsum that merges several groups of unknown extents".to_string()
                    )
                }
                _ => {
                    unknown = true;
                    -1
                }
            });
        }
        let attrs = Attrs::new()
            .with("allowzero", AttrValue::Int(0))
            .with("shape", ints(spec));
        let val = self.push(OpKind::Reshape, attrs, vec![t.val.clone()]);
        let mut dims = t.dims[..lead].to_vec();
        dims.extend(merged);
        Ok(Term {
            val,
            labels: Vec::new(),
            dims,
        })
    }
}

/// The product of extents: known, or unknown (`Dyn`) when one is symbolic.
fn product(dims: &[Dim]) -> Dim {
    match dims {
        [d] => *d,
        _ => dims
            .iter()
            .try_fold(1usize, |a, d| d.fixed().and_then(|n| a.checked_mul(n)))
            .map_or(Dim::Dyn, Dim::Fixed),
    }
}

/// One term of the equation: its letters, with `None` where the ellipsis stands.
fn parse_term(term: &str) -> Result<Vec<Option<char>>, String> {
    let mut out = Vec::new();
    let mut rest = term;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("...") {
            if out.contains(&None) {
                return Err(format!("term `{term}` has two ellipses"));
            }
            out.push(None);
            rest = &rest[3..];
        } else if c.is_ascii_alphabetic() {
            out.push(Some(c));
            rest = &rest[1..];
        } else {
            return Err(format!("`{c}` in term `{term}` is not a subscript"));
        }
    }
    Ok(out)
}

/// The labels of a term for an operand of rank `rank`, given `ellipsis` dimensions in all.
fn labels_of(term: &[Option<char>], rank: usize, ellipsis: usize) -> Result<Vec<Label>, String> {
    let letters = term.iter().filter(|c| c.is_some()).count();
    let own = if term.contains(&None) {
        rank.checked_sub(letters)
            .ok_or("a term has more subscripts than its operand has axes")?
    } else {
        0
    };
    if !term.contains(&None) && letters != rank {
        return Err(format!(
            "a term has {letters} subscripts for an operand of rank {rank}"
        ));
    }
    let mut labels = Vec::with_capacity(rank);
    for c in term {
        match c {
            Some(c) => labels.push(Label::Letter(*c)),
            None => labels.extend((ellipsis - own..ellipsis).map(Label::Ellipsis)),
        }
    }
    Ok(labels)
}

fn einsum(cx: &mut NodeCx) -> Result<(), Error> {
    let equation: String = cx
        .string("equation", "")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let n = cx.node.input.len();
    let mut types = Vec::with_capacity(n);
    for i in 0..n {
        types.push(cx.input_type(i)?);
    }
    let ranks: Vec<usize> = types.iter().map(|t| t.shape.rank()).collect();
    let plan = lower(
        &equation,
        &ranks,
        &types
            .iter()
            .map(|t| t.shape.dims().to_vec())
            .collect::<Vec<_>>(),
    )
    .map_err(|e| cx.error(format!("equation `{equation}`: {e}")))?;
    let operands = (0..n)
        .map(|i| cx.required(i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut done: Vec<ValueId> = Vec::with_capacity(plan.steps.len());
    let last = plan.steps.len();
    if last == 0 {
        // Nothing to do (`ij->ij`).
        return cx.emit(OpKind::Identity, Attrs::new(), &[Some(operands[0])]);
    }
    for (i, (kind, attrs, inputs)) in plan.steps.into_iter().enumerate() {
        let mut values = Vec::with_capacity(inputs.len());
        for v in inputs {
            values.push(Some(match v {
                Val::Operand(i) => operands[i],
                Val::Step(s) => done[s],
                Val::Ints(c) => cx.new_constant("einsum_index", Tensor::from_i64(&[c.len()], c))?,
            }));
        }
        let inputs = values;
        if i + 1 == last {
            return cx.emit(kind, attrs, &inputs);
        }
        let name = cx.fresh_name(&format!("einsum{i}"));
        done.push(cx.emit_value(&name, kind, attrs, &inputs, None)?);
    }
    Ok(())
}

/// Plans the lowering of `equation` over operands of the given extents.
fn lower(equation: &str, ranks: &[usize], dims: &[Vec<Dim>]) -> Result<Plan, String> {
    let (lhs, rhs) = match equation.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (equation, None),
    };
    let terms = lhs
        .split(',')
        .map(parse_term)
        .collect::<Result<Vec<_>, _>>()?;
    if terms.len() != ranks.len() || terms.is_empty() {
        return Err(format!(
            "{} terms for {} operands",
            terms.len(),
            ranks.len()
        ));
    }
    let ellipsis = terms
        .iter()
        .zip(ranks)
        .filter(|(t, _)| t.contains(&None))
        .map(|(t, &r)| r.saturating_sub(t.iter().filter(|c| c.is_some()).count()))
        .max()
        .unwrap_or(0);
    let mut plan = Plan { steps: Vec::new() };
    let mut operands: Vec<Term> = Vec::with_capacity(terms.len());
    for (i, t) in terms.iter().enumerate() {
        let labels = labels_of(t, ranks[i], ellipsis)?;
        operands.push(Term {
            val: Val::Operand(i),
            labels,
            dims: dims[i].clone(),
        });
    }
    let output: Vec<Label> = match rhs {
        Some(r) => {
            let mut out = Vec::new();
            for c in parse_term(r)? {
                match c {
                    Some(c) => out.push(Label::Letter(c)),
                    None => out.extend((0..ellipsis).map(Label::Ellipsis)),
                }
            }
            out
        }
        None => {
            // Implicit: the ellipsis, then the letters used once, alphabetically.
            let mut out: Vec<Label> = (0..ellipsis).map(Label::Ellipsis).collect();
            let mut letters: Vec<Label> = operands
                .iter()
                .flat_map(|t| t.labels.iter().copied())
                .filter(|l| matches!(l, Label::Letter(_)))
                .collect();
            letters.sort();
            for l in letters.iter() {
                if letters.iter().filter(|m| *m == l).count() == 1 {
                    out.push(*l);
                }
            }
            out
        }
    };
    let mut sorted = output.clone();
    sorted.sort();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err("the output repeats a subscript".to_string());
    }
    // Each letter has one extent wherever it occurs (ellipsis dimensions broadcast).
    for a in &operands {
        for b in &operands {
            for (l, d) in a.labels.iter().zip(&a.dims) {
                if let (Label::Letter(c), Some(e)) =
                    (l, b.labels.iter().position(|m| m == l).map(|p| b.dims[p]))
                {
                    if d != &e && !d.is_unbound() && !e.is_unbound() {
                        return Err(format!("subscript `{c}` has extents {d} and {e}"));
                    }
                }
            }
        }
    }
    for t in operands.iter_mut() {
        *t = diagonals(&mut plan, t.clone())?;
    }
    let count = operands.len();
    let mut acc: Option<Term> = None;
    for i in 0..count {
        // Labels something after this step still needs.
        let mut keep: Vec<Label> = output.clone();
        keep.extend(
            operands[i + 1..]
                .iter()
                .flat_map(|t| t.labels.iter().copied()),
        );
        let b = operands[i].clone();
        acc = Some(match acc {
            None => {
                let gone: Vec<Label> = b
                    .labels
                    .iter()
                    .copied()
                    .filter(|l| !keep.contains(l))
                    .collect();
                plan.sum_out(b, &gone)
            }
            Some(a) => contract(&mut plan, a, b, &keep)?,
        });
    }
    let result = acc.ok_or("no operands")?;
    if let Some(l) = output.iter().find(|l| !result.labels.contains(l)) {
        return Err(format!("the output subscript {l:?} is not in any operand"));
    }
    plan.transpose(result, &output);
    Ok(plan)
}

/// `t` with every repeated label replaced by the diagonal along it.
fn diagonals(plan: &mut Plan, mut t: Term) -> Result<Term, String> {
    while let Some(q) = (0..t.labels.len()).find(|&q| t.labels[..q].contains(&t.labels[q])) {
        let label = t.labels[q];
        let p = t.labels.iter().position(|&l| l == label).expect("repeated");
        let n = t.dims[p].fixed().ok_or("a diagonal of an unknown extent")?;
        // Move the two axes last (keeping their labels apart), merge them, take every
        // (n + 1)th element.
        let rest: Vec<usize> = (0..t.labels.len()).filter(|&a| a != p && a != q).collect();
        let mut order: Vec<usize> = rest.clone();
        order.extend([p, q]);
        let perm = order.iter().map(|&a| a as i64).collect();
        let moved = if order.iter().copied().eq(0..t.labels.len()) {
            t.val.clone()
        } else {
            plan.push(
                OpKind::Transpose,
                Attrs::new().with("perm", ints(perm)),
                vec![t.val.clone()],
            )
        };
        let mut spec: Vec<i64> = vec![0; rest.len()];
        spec.push((n * n) as i64);
        let flat = plan.push(
            OpKind::Reshape,
            Attrs::new()
                .with("allowzero", AttrValue::Int(0))
                .with("shape", ints(spec)),
            vec![moved],
        );
        let k = rest.len() as i64;
        let consts = [vec![0], vec![(n * n) as i64], vec![k], vec![n as i64 + 1]];
        let slice_inputs: Vec<Val> = std::iter::once(flat)
            .chain(consts.into_iter().map(Val::Ints))
            .collect();
        let val = plan.push(OpKind::Slice, Attrs::new(), slice_inputs);
        let mut labels: Vec<Label> = rest.iter().map(|&a| t.labels[a]).collect();
        let mut dims: Vec<Dim> = rest.iter().map(|&a| t.dims[a]).collect();
        labels.push(label);
        dims.push(Dim::Fixed(n));
        t = Term { val, labels, dims };
    }
    Ok(t)
}

/// The contraction of `a` with `b`, keeping the labels in `keep`.
fn contract(plan: &mut Plan, a: Term, b: Term, keep: &[Label]) -> Result<Term, String> {
    let in_b = |l: &Label| b.labels.contains(l);
    let in_a = |l: &Label| a.labels.contains(l);
    // Labels of one side only that nothing needs go first.
    let a_gone: Vec<Label> = a
        .labels
        .iter()
        .copied()
        .filter(|l| !in_b(l) && !keep.contains(l))
        .collect();
    let b_gone: Vec<Label> = b
        .labels
        .iter()
        .copied()
        .filter(|l| !in_a(l) && !keep.contains(l))
        .collect();
    let a = plan.sum_out(a, &a_gone);
    let b = plan.sum_out(b, &b_gone);
    let batch: Vec<Label> = a
        .labels
        .iter()
        .copied()
        .filter(|l| b.labels.contains(l) && keep.contains(l))
        .collect();
    let summed: Vec<Label> = a
        .labels
        .iter()
        .copied()
        .filter(|l| b.labels.contains(l) && !keep.contains(l))
        .collect();
    let a_own: Vec<Label> = a
        .labels
        .iter()
        .copied()
        .filter(|l| !b.labels.contains(l))
        .collect();
    let b_own: Vec<Label> = b
        .labels
        .iter()
        .copied()
        .filter(|l| !a.labels.contains(l))
        .collect();
    let dim_of =
        |t: &Term, l: &Label| t.dims[t.labels.iter().position(|m| m == l).expect("own label")];
    for l in &summed {
        let (p, q) = (dim_of(&a, l), dim_of(&b, l));
        if p != q && (p == Dim::Fixed(1) || q == Dim::Fixed(1)) {
            return Err(format!("subscript {l:?} is summed over extents {p} and {q} (broadcast contractions are not supported)"));
        }
    }
    // A side's own labels become one axis when their extents are known; otherwise all but
    // the last stay axes of their own ("extra"), which MatMul broadcasts like batch axes
    // against 1s inserted in the other side (merging the batch with other extents is not
    // a shape the IR has).
    let extra = |t: &Term, own: &[Label]| {
        if own.len() > 1 && own.iter().any(|l| dim_of(t, l).fixed().is_none()) {
            own.len() - 1
        } else {
            0
        }
    };
    let (ax, bx) = (extra(&a, &a_own), extra(&b, &b_own));
    let (a_extra, a_row) = a_own.split_at(ax);
    let (b_extra, b_col) = b_own.split_at(bx);
    let order = |parts: &[&[Label]]| -> Vec<Label> {
        batch
            .iter()
            .chain(parts.iter().flat_map(|p| p.iter()))
            .copied()
            .collect()
    };
    let a = plan.transpose(a, &order(&[a_extra, a_row, &summed]));
    let b = plan.transpose(b, &order(&[b_extra, &summed, b_col]));
    let group = |t: &Term, ls: &[Label]| -> Vec<Dim> { ls.iter().map(|l| dim_of(t, l)).collect() };
    let (m, k, n) = (group(&a, a_row), group(&a, &summed), group(&b, b_col));
    let lead = batch.len();
    let a2 = plan.regroup(a.clone(), lead + ax, &[m.clone(), k.clone()])?;
    let b2 = plan.regroup(b.clone(), lead + bx, &[group(&b, &summed), n.clone()])?;
    // [batch, a_extra, 1…, M, K] times [batch, 1…, b_extra, K, N].
    let a3 = plan.unsqueeze(a2.val, (lead + ax..lead + ax + bx).collect());
    let b3 = plan.unsqueeze(b2.val, (lead..lead + ax).collect());
    let product_val = plan.push(OpKind::MatMul, Attrs::new(), vec![a3, b3]);
    // Batch extents broadcast (an ellipsis of 1 against n).
    let mut dims: Vec<Dim> = (0..lead)
        .map(|i| {
            if a.dims[i] == Dim::Fixed(1) {
                b.dims[i]
            } else {
                a.dims[i]
            }
        })
        .collect();
    dims.extend(group(&a, a_extra));
    dims.extend(group(&b, b_extra));
    let outer = dims.len();
    let mut merged_dims = dims.clone();
    merged_dims.extend([product(&m), product(&n)]);
    let merged = Term {
        val: product_val,
        labels: Vec::new(),
        dims: merged_dims,
    };
    let split: Vec<Vec<Dim>> = m.iter().chain(&n).map(|&d| vec![d]).collect();
    let result = if m.len() == 1 && n.len() == 1 {
        merged
    } else {
        split_back(plan, merged, outer, &split)?
    };
    let labels: Vec<Label> = batch
        .iter()
        .chain(a_extra)
        .chain(b_extra)
        .chain(a_row)
        .chain(b_col)
        .copied()
        .collect();
    dims.extend(m);
    dims.extend(n);
    Ok(Term {
        val: result.val,
        labels,
        dims,
    })
}

impl Plan {
    /// `v` with axes of extent 1 inserted at `axes` (positions in the result); `v` itself
    /// when there are none.
    fn unsqueeze(&mut self, v: Val, axes: Vec<usize>) -> Val {
        if axes.is_empty() {
            return v;
        }
        self.push(
            OpKind::Unsqueeze,
            Attrs::new().with("axes", ints(axes.iter().map(|&a| a as i64).collect())),
            vec![v],
        )
    }
}

/// The matrix product's `[batch…, M, N]` reshaped to `[batch…, own labels…]`.
fn split_back(plan: &mut Plan, t: Term, lead: usize, extents: &[Vec<Dim>]) -> Result<Term, String> {
    let mut spec: Vec<i64> = vec![0; lead];
    let mut unknown = false;
    for e in extents {
        spec.push(match e[0] {
            Dim::Fixed(n) => n as i64,
            _ if unknown => {
                return Err("an einsum result with several unknown extents to split".to_string())
            }
            _ => {
                unknown = true;
                -1
            }
        });
    }
    let attrs = Attrs::new()
        .with("allowzero", AttrValue::Int(0))
        .with("shape", ints(spec));
    let val = plan.push(OpKind::Reshape, attrs, vec![t.val.clone()]);
    Ok(Term { val, ..t })
}
