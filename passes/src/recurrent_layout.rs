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
    NodeOp::Apply(Op::new(kind, Attrs::new().with("axes", AttrValue::Ints(vec![axis]))))
}

fn rewrite(g: &mut Graph, id: NodeId) -> Result<bool, PassError> {
    let NodeOp::Apply(op) = g.node(id).op.clone() else { return Ok(false) };
    let Ok(r) = Recurrent::of(op.kind, &op.attrs) else { return Ok(false) };
    if r.batch_first || r.dirs() != 1 {
        return Ok(false);
    }
    let operands = g.node_inputs(id);
    let Some(Some(x)) = operands.first().copied() else { return Ok(false) };
    let transposed = matches!(&g.node(x.node).op, NodeOp::Apply(t) if t.kind == OpKind::Transpose && t.attrs.ints("perm").is_ok_and(|p| p == [1, 0, 2]));
    let y = ValueId { node: id, output: 0 };
    if !transposed || !g.users(y).is_empty() || g.outputs().contains(&y) {
        return Ok(false);
    }
    // Initial states: Unsqueeze(axes=[0]) of [N, H] values.
    let states_in: Vec<(usize, ValueId)> = [5, 6].into_iter().filter_map(|slot| operands.get(slot).copied().flatten().map(|v| (slot, v))).collect();
    let unsqueezed = states_in.iter().all(|&(_, v)| is_axes_op(g, v.node, OpKind::Unsqueeze, &[0]) && !g.outputs().contains(&v));
    // Last states: read by Squeeze(axes=[0]) only.
    let results = g.node(id).outputs.len();
    let squeezes: Vec<NodeId> = (1..results).flat_map(|o| g.users(ValueId { node: id, output: o })).map(|(user, _)| user).collect();
    let squeezed = squeezes.iter().all(|&u| is_axes_op(g, u, OpKind::Squeeze, &[0])) && (1..results).all(|o| !g.outputs().contains(&ValueId { node: id, output: o }));
    if !unsqueezed || !squeezed {
        return Ok(false);
    }
    let source = g.node_inputs(x.node)[0].ok_or_else(|| PassError::Bug("a Transpose without an operand".into()))?;
    g.set_node_input(id, 0, Some(source))?;
    for (slot, v) in states_in {
        let state = g.node_inputs(v.node)[0].ok_or_else(|| PassError::Bug("an Unsqueeze without an operand".into()))?;
        let name = format!("{}_batch_first", g.value(v).name);
        let node = format!("{}_batch_first", g.node(v.node).name);
        let moved = g.add_op(&node, Op::new(OpKind::Unsqueeze, Attrs::new().with("axes", AttrValue::Ints(vec![1]))), &[Some(state)], &[&name])?[0];
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
