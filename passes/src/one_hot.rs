//! `one-hot-products`: a product of a one-hot encoding with constant weights becomes a row
//! lookup. JAX and TensorFlow exports write an embedding as `MatMul(Cast(Equal(x, range)), W)`
//! (`jax.nn.one_hot` then a Dense layer): magika's first layer turns 2,048 bytes into a
//! `[2048, 257]` float one-hot and multiplies it by `[257, 64]` weights, 34 M
//! multiply-accumulates and three passes over 2 MB for what is a copy of 2,048 rows.
//!
//! `Equal(x, r)` with `x` integer of last extent 1 and `r` a constant `0, 1, …, K−1` along
//! the last axis (extent 1 elsewhere), cast to f32 and multiplied by a constant f32 `W` of
//! `K` rows, is `Gather(W′, clamp(x + 1, 0, K + 1))` over `x` without its last axis, where
//! `W′` is `W` between two rows of zeros: an `x` outside `0..K` matches no element of `r`,
//! its one-hot is all zeros and so is its product, and it lands on a zero row (`x + 1`
//! wraps for the largest integer, which also lands on row 0). Exact when `W` is finite
//! (a product with a NaN or infinite weight is NaN for every row: such weights are left
//! alone), up to the sign of a zero result. The pass runs before quantization: the lookup
//! copies the f32 rows, so the embedding is not rounded to 8 bits either.

use crate::PassError;
use qlift_ir::{AttrValue, Attrs, DType, Dim, Graph, NodeId, NodeOp, Op, OpKind, Tensor, ValueId};
use std::sync::Arc;

/// The pass.
pub fn one_hot_products(graph: &Graph) -> Result<Graph, PassError> {
    let mut g = graph.clone();
    let mut changed = false;
    for id in g.topo_order()? {
        changed |= rewrite(&mut g, id)?;
    }
    if changed {
        g.remove_dead_nodes();
    }
    Ok(g)
}

/// The op and operands of the node computing `v`, when it is a `kind`.
fn producer(g: &Graph, v: ValueId, kind: OpKind) -> Option<(Op, Vec<Option<ValueId>>)> {
    match &g.node(v.node).op {
        NodeOp::Apply(op) if op.kind == kind && v.output == 0 => {
            Some((op.clone(), g.node_inputs(v.node)))
        }
        _ => None,
    }
}

/// `K` when `r` is the constant `0, 1, …, K−1` along its last axis with extent 1 elsewhere
/// and rank at most `rank`.
fn range_extent(g: &Graph, r: ValueId, rank: usize) -> Option<usize> {
    let t = g.const_value(r)?;
    let (last, rest) = t.shape().split_last()?;
    if t.shape().len() > rank || rest.iter().any(|&d| d != 1) {
        return None;
    }
    let values = t.to_i64_vec().ok()?;
    values
        .iter()
        .enumerate()
        .all(|(i, &v)| v == i as i64)
        .then_some(*last)
}

/// The integer operand `x` (last extent 1) and `K` of `Equal(x, r)` in either order.
fn one_hot_of(g: &Graph, e: ValueId) -> Option<(ValueId, usize)> {
    let (_, operands) = producer(g, e, OpKind::Equal)?;
    let (Some(a), Some(b)) = (operands.first().copied()?, operands.get(1).copied()?) else {
        return None;
    };
    [(a, b), (b, a)].into_iter().find_map(|(x, r)| {
        let ty = g.value_type(x);
        let integer = matches!(ty.dtype, DType::I32 | DType::I64) && ty.quant.is_none();
        let dims = ty.shape.dims();
        (integer && g.const_value(x).is_none() && dims.last() == Some(&Dim::Fixed(1)))
            .then(|| range_extent(g, r, dims.len()))
            .flatten()
            .map(|k| (x, k))
    })
}

fn rewrite(g: &mut Graph, id: NodeId) -> Result<bool, PassError> {
    let NodeOp::Apply(op) = &g.node(id).op else {
        return Ok(false);
    };
    let operands = g.node_inputs(id);
    let (OpKind::MatMul, [Some(h), Some(w)]) = (op.kind, operands.as_slice()) else {
        return Ok(false);
    };
    let (h, w) = (*h, *w);
    let Some(weights) = g.const_value(w).cloned() else {
        return Ok(false);
    };
    let Some((cast, cast_operands)) = producer(g, h, OpKind::Cast) else {
        return Ok(false);
    };
    let [Some(e)] = cast_operands[..] else {
        return Ok(false);
    };
    let Some((x, k)) = one_hot_of(g, e) else {
        return Ok(false);
    };
    let finite = weights
        .as_f32()
        .is_ok_and(|v| v.iter().all(|w| w.is_finite()));
    let shape = weights.shape().to_vec();
    if cast.attrs.str("to").ok() != Some("f32")
        || !finite
        || g.value_type(w).quant.is_some()
        || shape.len() != 2
        || shape[0] != k
    {
        return Ok(false);
    }
    let n = shape[1];
    let mut padded = vec![0.0f32; n];
    padded.extend_from_slice(weights.as_f32().map_err(PassError::Bug)?);
    padded.extend(std::iter::repeat_n(0.0, n));
    let node = g.node(id).name.clone();
    let name = |what: &str| format!("{node}_one_hot_{what}");
    let rows = g.add_const(
        &name("rows"),
        Arc::new(Tensor::from_f32(&[k + 2, n], padded)),
        None,
    );
    let dtype = g.value_type(x).dtype;
    let scalar = |g: &mut Graph, what: &str, v: i64| -> Result<ValueId, PassError> {
        let t = Tensor::from_i64_values(dtype, vec![], vec![v]).map_err(PassError::Bug)?;
        Ok(g.add_const(&name(what), Arc::new(t), None))
    };
    let (one, zero, top) = (
        scalar(g, "one", 1)?,
        scalar(g, "zero", 0)?,
        scalar(g, "top", k as i64 + 1)?,
    );
    let apply = |g: &mut Graph, what: &str, op: Op, inputs: &[ValueId]| {
        let inputs: Vec<Option<ValueId>> = inputs.iter().map(|&v| Some(v)).collect();
        g.add_op(&name(what), op, &inputs, &[&name(what)])
            .map(|r| r[0])
    };
    let last = g.value_type(x).shape.rank() as i64 - 1;
    let squeeze = Op::new(
        OpKind::Squeeze,
        Attrs::new().with("axes", AttrValue::Ints(vec![last])),
    );
    let index = apply(g, "index", squeeze, &[x])?;
    let shifted = apply(
        g,
        "shifted",
        Op::new(OpKind::Add, Attrs::new()),
        &[index, one],
    )?;
    let above = apply(
        g,
        "above",
        Op::new(OpKind::Max, Attrs::new()),
        &[shifted, zero],
    )?;
    let row = apply(g, "row", Op::new(OpKind::Min, Attrs::new()), &[above, top])?;
    g.node_mut(id).op = NodeOp::Apply(Op::new(
        OpKind::Gather,
        Attrs::new().with("axis", AttrValue::Int(0)),
    ));
    g.set_node_input(id, 0, Some(rows))?;
    g.set_node_input(id, 1, Some(row))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qlift_ir::{Shape, TensorType};

    /// `MatMul(Cast(Equal(x, [0..4])), W)` with `x: i32[N, 3, 1]` (the range on the `swap`
    /// side of the Equal).
    fn graph(swap: bool, w: Vec<f32>) -> Graph {
        let mut g = Graph::new("one_hot");
        let x = g.add_input(
            "x",
            TensorType::new(
                DType::I32,
                Shape(vec![Dim::Batch, Dim::Fixed(3), Dim::Fixed(1)]),
            ),
        );
        let r = Tensor::from_i64_values(DType::I32, vec![1, 1, 4], vec![0, 1, 2, 3]).unwrap();
        let r = g.add_const("r", Arc::new(r), None);
        let w = g.add_const("w", Arc::new(Tensor::from_f32(&[4, 2], w)), None);
        let operands = if swap { [r, x] } else { [x, r] };
        let e = g
            .add_op(
                "e",
                Op::new(OpKind::Equal, Attrs::new()),
                &[Some(operands[0]), Some(operands[1])],
                &["e"],
            )
            .unwrap()[0];
        let to_f32 = Attrs::new().with("to", AttrValue::Str("f32".into()));
        let h = g
            .add_op("h", Op::new(OpKind::Cast, to_f32), &[Some(e)], &["h"])
            .unwrap()[0];
        let y = g
            .add_op(
                "y",
                Op::new(OpKind::MatMul, Attrs::new()),
                &[Some(h), Some(w)],
                &["y"],
            )
            .unwrap()[0];
        g.set_outputs(vec![y]).unwrap();
        g
    }

    fn kinds(g: &Graph) -> Vec<OpKind> {
        g.node_ids().filter_map(|id| g.node(id).op.kind()).collect()
    }

    #[test]
    fn a_one_hot_product_becomes_a_lookup_with_zero_rows_outside_the_range() {
        let w: Vec<f32> = (0..8).map(|i| i as f32 * 0.5 - 1.25).collect();
        for swap in [false, true] {
            let g = graph(swap, w.clone());
            let rewritten = one_hot_products(&g).unwrap();
            qlift_ir::verify(&rewritten).unwrap();
            let ops = kinds(&rewritten);
            assert!(ops.contains(&OpKind::Gather), "{ops:?}");
            assert!(
                !ops.contains(&OpKind::MatMul) && !ops.contains(&OpKind::Equal),
                "{ops:?}"
            );
            // In range, below, above, and the extremes (x + 1 wraps at i32::MAX).
            let x = Tensor::from_i64_values(
                DType::I32,
                vec![2, 3, 1],
                vec![0, 3, 2, -1, 4, i64::from(i32::MAX)],
            )
            .unwrap();
            let before = qlift_ir::interp::run(&g, std::slice::from_ref(&x)).unwrap();
            let after = qlift_ir::interp::run(&rewritten, &[x]).unwrap();
            assert_eq!(before, after);
            assert_eq!(after[0].as_f32().unwrap()[6..], [0.0; 6]);
        }
    }

    #[test]
    fn products_that_are_not_one_hot_lookups_stay() {
        // A weight that is not finite makes every row NaN: the product stays.
        let mut w = vec![0.5f32; 8];
        w[3] = f32::INFINITY;
        let g = graph(false, w);
        assert!(kinds(&one_hot_products(&g).unwrap()).contains(&OpKind::MatMul));
    }
}
