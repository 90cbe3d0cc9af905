//! `recurrent-batch-first`: a time-major recurrent layer fed by a transposed batch-first
//! input becomes a batch-first layer (`layout` 1) that reads the input as it is.
//!
//! PyTorch exports `nn.LSTM(batch_first=True)` (and GRU, RNN) as `Transpose(perm=[1,0,2])`
//! in front of a `layout` 0 layer: the run-time batch then moves from axis 0 to axis 1, a
//! copy qlift's kernels do not make (the batch is the outer loop of every kernel), and a
//! copy of the whole input in any case. With one direction, a state `[1, N, H]` and
//! `[N, 1, H]` are the same elements in the same order, so the layer can take `layout` 1
//! when its states come from `Unsqueeze(axes=[0])` of `[N, H]` values (they become
//! `axes=[1]`) and its last states only feed `Squeeze(axes=[0])` (they become `axes=[1]`):
//! the pattern of a model whose state is batch-first at its interface, as a streaming model's
//! is. `Y` must have no readers (its layout would change). Anything else stays as it was.

use crate::PassError;
use qlift_ir::{AttrValue, Attrs, Graph, NodeId, NodeOp, Op, OpKind, Recurrent, ValueId};

/// The pass.
pub fn batch_first_recurrent(graph: &Graph) -> Result<Graph, PassError> {
    let mut g = graph.clone();
    let mut changed = false;
    for id in g.topo_order()? {
        changed |= rewrite(&mut g, id)?;
    }
    if changed {
        qlift_ir::infer_types(&mut g)?;
        g.remove_dead_nodes();
    }
    Ok(g)
}

/// The op of node `id` if it is a `kind` whose `axes` are exactly `axes`.
fn is_axes_op(g: &Graph, id: NodeId, kind: OpKind, axes: &[i64]) -> bool {
    matches!(&g.node(id).op, NodeOp::Apply(op) if op.kind == kind && op.attrs.ints("axes").is_ok_and(|a| a == axes))
}

fn axes_op(kind: OpKind, axis: i64) -> NodeOp {
    NodeOp::Apply(Op::new(
        kind,
        Attrs::new().with("axes", AttrValue::Ints(vec![axis])),
    ))
}

fn rewrite(g: &mut Graph, id: NodeId) -> Result<bool, PassError> {
    let NodeOp::Apply(op) = g.node(id).op.clone() else {
        return Ok(false);
    };
    let Ok(r) = Recurrent::of(op.kind, &op.attrs) else {
        return Ok(false);
    };
    if r.batch_first || r.dirs() != 1 {
        return Ok(false);
    }
    let operands = g.node_inputs(id);
    let Some(Some(x)) = operands.first().copied() else {
        return Ok(false);
    };
    let transposed = matches!(&g.node(x.node).op, NodeOp::Apply(t) if t.kind == OpKind::Transpose && t.attrs.ints("perm").is_ok_and(|p| p == [1, 0, 2]));
    let y = ValueId {
        node: id,
        output: 0,
    };
    if !transposed || !g.users(y).is_empty() || g.outputs().contains(&y) {
        return Ok(false);
    }
    // Initial states: Unsqueeze(axes=[0]) of [N, H] values.
    let states_in: Vec<(usize, ValueId)> = [5, 6]
        .into_iter()
        .filter_map(|slot| operands.get(slot).copied().flatten().map(|v| (slot, v)))
        .collect();
    let unsqueezed = states_in
        .iter()
        .all(|&(_, v)| is_axes_op(g, v.node, OpKind::Unsqueeze, &[0]) && !g.outputs().contains(&v));
    // Last states: read by Squeeze(axes=[0]) only.
    let results = g.node(id).outputs.len();
    let squeezes: Vec<NodeId> = (1..results)
        .flat_map(|o| {
            g.users(ValueId {
                node: id,
                output: o,
            })
        })
        .map(|(user, _)| user)
        .collect();
    let squeezed = squeezes
        .iter()
        .all(|&u| is_axes_op(g, u, OpKind::Squeeze, &[0]))
        && (1..results).all(|o| {
            !g.outputs().contains(&ValueId {
                node: id,
                output: o,
            })
        });
    if !unsqueezed || !squeezed {
        return Ok(false);
    }
    let source = g.node_inputs(x.node)[0]
        .ok_or_else(|| PassError::Bug("a Transpose without an operand".into()))?;
    g.set_node_input(id, 0, Some(source))?;
    for (slot, v) in states_in {
        let state = g.node_inputs(v.node)[0]
            .ok_or_else(|| PassError::Bug("an Unsqueeze without an operand".into()))?;
        let name = format!("{}_batch_first", g.value(v).name);
        let node = format!("{}_batch_first", g.node(v.node).name);
        let moved = g.add_op(
            &node,
            Op::new(
                OpKind::Unsqueeze,
                Attrs::new().with("axes", AttrValue::Ints(vec![1])),
            ),
            &[Some(state)],
            &[&name],
        )?[0];
        g.set_node_input(id, slot, Some(moved))?;
    }
    for u in squeezes {
        g.node_mut(u).op = axes_op(OpKind::Squeeze, 1);
    }
    let mut batch_first = op;
    batch_first.attrs.set("layout", AttrValue::Int(1));
    g.node_mut(id).op = NodeOp::Apply(batch_first);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qlift_ir::{DType, Dim, Shape, Tensor, TensorType};
    use std::sync::Arc;

    /// x [N, T, 2] → Transpose → GRU (h0 via Unsqueeze) → Squeeze(Y_h): PyTorch's
    /// batch-first export, and the same with Y read (which keeps it time-major).
    fn graph(read_y: bool) -> Graph {
        let mut g = Graph::new("gru");
        let x = g.add_input(
            "x",
            TensorType::new(
                DType::F32,
                Shape(vec![Dim::Batch, Dim::Fixed(5), Dim::Fixed(2)]),
            ),
        );
        let h0 = g.add_input(
            "h0",
            TensorType::new(DType::F32, Shape(vec![Dim::Batch, Dim::Fixed(3)])),
        );
        let axes = |a| Attrs::new().with("axes", AttrValue::Ints(vec![a]));
        let t = g
            .add_op(
                "t",
                Op::new(
                    OpKind::Transpose,
                    Attrs::new().with("perm", AttrValue::Ints(vec![1, 0, 2])),
                ),
                &[Some(x)],
                &["xt"],
            )
            .unwrap()[0];
        let u = g
            .add_op(
                "u",
                Op::new(OpKind::Unsqueeze, axes(0)),
                &[Some(h0)],
                &["h0u"],
            )
            .unwrap()[0];
        let w = g.add_const(
            "w",
            Arc::new(Tensor::from_f32(
                &[1, 9, 2],
                (0..18).map(|i| (i as f32 * 0.7).sin()).collect(),
            )),
            None,
        );
        let r = g.add_const(
            "r",
            Arc::new(Tensor::from_f32(
                &[1, 9, 3],
                (0..27).map(|i| (i as f32 * 0.3).cos() * 0.5).collect(),
            )),
            None,
        );
        let attrs = Attrs::new()
            .with("direction", AttrValue::Str("forward".into()))
            .with("hidden_size", AttrValue::Int(3))
            .with("layout", AttrValue::Int(0))
            .with("clip", AttrValue::Float(f32::INFINITY))
            .with("activations", AttrValue::Str("Sigmoid,Tanh".into()))
            .with("activation_alpha", AttrValue::Floats(vec![0.0; 2]))
            .with("activation_beta", AttrValue::Floats(vec![0.0; 2]))
            .with("linear_before_reset", AttrValue::Int(0));
        let outs = g
            .add_op(
                "gru",
                Op::new(OpKind::GRU, attrs),
                &[Some(t), Some(w), Some(r), None, None, Some(u)],
                &["y", "yh"],
            )
            .unwrap();
        let hn = g
            .add_op(
                "s",
                Op::new(OpKind::Squeeze, axes(0)),
                &[Some(outs[1])],
                &["hn"],
            )
            .unwrap()[0];
        g.set_outputs(if read_y { vec![hn, outs[0]] } else { vec![hn] })
            .unwrap();
        g
    }

    fn layout(g: &Graph) -> i64 {
        let id = g
            .node_ids()
            .find(|&id| matches!(&g.node(id).op, NodeOp::Apply(op) if op.kind == OpKind::GRU))
            .unwrap();
        let NodeOp::Apply(op) = &g.node(id).op else {
            unreachable!()
        };
        op.attrs.int("layout").unwrap()
    }

    #[test]
    fn a_transposed_input_becomes_a_batch_first_layer_with_the_same_results() {
        let g = graph(false);
        let out = batch_first_recurrent(&g).unwrap();
        qlift_ir::verify(&out).unwrap();
        assert_eq!(layout(&out), 1);
        assert!(!out.node_ids().any(
            |id| matches!(&out.node(id).op, NodeOp::Apply(op) if op.kind == OpKind::Transpose)
        ));
        let inputs = [
            Tensor::from_f32(
                &[2, 5, 2],
                (0..20).map(|i| (i as f32 * 0.41).sin()).collect(),
            ),
            Tensor::from_f32(&[2, 3], vec![0.1, -0.2, 0.3, 0.4, -0.5, 0.6]),
        ];
        assert_eq!(
            qlift_ir::interp::run(&out, &inputs).unwrap(),
            qlift_ir::interp::run(&g, &inputs).unwrap()
        );
        // Y read: its layout would change, so the layer stays as it was.
        assert_eq!(layout(&batch_first_recurrent(&graph(true)).unwrap()), 0);
    }
}
