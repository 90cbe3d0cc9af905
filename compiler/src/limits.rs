//! The limits every graph is held to, wherever it comes from (an ONNX import, `.qir` text,
//! a graph built through the API): node count, rank, constant data, and the size of every
//! value for one sample, computed with checked arithmetic. A graph that passes cannot make a
//! later stage (the interpreter, code generation, the C header) compute a wrapped size or
//! allocate a buffer sized by a hostile attribute such as a huge Pad.

use crate::{Error, Limits};
use qlift_ir::{Graph, NodeOp, TensorType};
use std::collections::HashSet;

/// The element count of `shape` as far as it is known before its symbols are bound: the
/// product of the known extents and the power of the batch in it. Other symbols and unknown
/// extents count as 1 (a lower bound; a run checks the bound extents again, see
/// `CompiledModel::run_bytes`). `None` on overflow.
fn known_count(shape: &qlift_ir::Shape) -> Option<(u64, usize)> {
    let mut count: u64 = 1;
    let mut batch_power = 0;
    for d in shape.dims() {
        match d {
            qlift_ir::Dim::Fixed(n) => count = count.checked_mul(*n as u64)?,
            qlift_ir::Dim::Batch => batch_power += 1,
            _ => {}
        }
    }
    Some((count, batch_power))
}

/// Bytes of one sample of a value of type `ty` (its batch dimension bound to 1, other
/// symbols too); `None` when the element count or the byte count overflows.
pub fn sample_bytes(ty: &TensorType) -> Option<u64> {
    let (count, _) = known_count(&ty.shape)?;
    count.checked_mul(ty.dtype.size_of() as u64)
}

/// A recurrent layer's hidden size against [`Limits::max_recurrent_hidden`], and its
/// steps against [`Limits::max_recurrent_steps`] where `X`'s extents are fixed.
fn check_recurrent(graph: &Graph, id: qlift_ir::NodeId, limits: &Limits) -> Result<(), Error> {
    let node = graph.node(id);
    let NodeOp::Apply(op) = &node.op else {
        return Ok(());
    };
    if qlift_ir::Cell::of(op.kind).is_none() {
        return Ok(());
    }
    let error = |message: String| Error::Node {
        node: node.name.clone(),
        op_type: op.kind.to_string(),
        message,
    };
    let hidden = op.attrs.int("hidden_size").map_err(error)?;
    if hidden > limits.max_recurrent_hidden as i64 {
        return Err(error(format!(
            "hidden_size {hidden} is above the limit of {}",
            limits.max_recurrent_hidden
        )));
    }
    let x = graph
        .node_inputs(id)
        .first()
        .copied()
        .flatten()
        .map(|x| graph.value_type(x).shape.clone());
    let fixed: Option<u64> = x.map(|s| {
        s.dims()
            .iter()
            .take(2)
            .map(|d| d.fixed().map_or(1, |n| n as u64))
            .fold(1u64, u64::saturating_mul)
    });
    if let Some(steps) = fixed.filter(|&s| s > limits.max_recurrent_steps) {
        return Err(error(format!(
            "its input has {steps} steps (sequence length × samples), above the limit of {}",
            limits.max_recurrent_steps
        )));
    }
    Ok(())
}

/// Checks `graph` against `limits`: node count, every value's rank and one-sample size,
/// and the total size of distinct constants. The error names the node and value.
pub fn check_graph(graph: &Graph, limits: &Limits) -> Result<(), Error> {
    let depth = qlift_ir::subgraph_depth(graph);
    if depth > limits.max_subgraph_depth {
        return Err(Error::Limit {
            what: "nesting of control-flow bodies".into(),
            value: depth as u64,
            limit: limits.max_subgraph_depth as u64,
        });
    }
    check_one(graph, limits)?;
    // Bodies are held to the same limits (their node counts, ranks and value sizes).
    for id in graph.node_ids() {
        if let NodeOp::Apply(op) = &graph.node(id).op {
            for (_, body) in op.attrs.graphs() {
                check_graph(body, limits)?;
            }
        }
    }
    Ok(())
}

fn check_one(graph: &Graph, limits: &Limits) -> Result<(), Error> {
    let nodes = graph.node_count();
    if nodes > limits.max_nodes {
        return Err(Error::Limit {
            what: "node count".into(),
            value: nodes as u64,
            limit: limits.max_nodes as u64,
        });
    }
    let mut constants = HashSet::new();
    let mut total: u64 = 0;
    for id in graph.node_ids() {
        let node = graph.node(id);
        check_recurrent(graph, id, limits)?;
        for v in &node.outputs {
            if v.ty.shape.rank() > limits.max_rank {
                return Err(Error::Value {
                    name: v.name.clone(),
                    message: format!(
                        "rank {} is above the limit of {} (node `{}`)",
                        v.ty.shape.rank(),
                        limits.max_rank,
                        node.name
                    ),
                });
            }
            let Some(bytes) = sample_bytes(&v.ty) else {
                return Err(Error::Value {
                    name: v.name.clone(),
                    message: format!(
                        "its size per sample ({}) overflows 64 bits (node `{}`)",
                        qlift_ir::text::type_to_string(&v.ty),
                        node.name
                    ),
                });
            };
            if bytes > limits.max_tensor_bytes {
                let what = format!(
                    "value `{}` of node `{}` ({} per sample)",
                    v.name,
                    node.name,
                    qlift_ir::text::type_to_string(&v.ty)
                );
                return Err(Error::Limit {
                    what,
                    value: bytes,
                    limit: limits.max_tensor_bytes,
                });
            }
        }
        if let NodeOp::Const(t) = &node.op {
            if constants.insert(std::sync::Arc::as_ptr(t)) {
                total = total.saturating_add(t.data().as_bytes().len() as u64);
                if total > limits.max_total_bytes {
                    return Err(Error::Limit {
                        what: "total constant data".into(),
                        value: total,
                        limit: limits.max_total_bytes,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Bytes of a value of type `ty` at `batch` samples; `None` on overflow.
pub fn value_bytes(ty: &TensorType, batch: usize) -> Option<u64> {
    let (count, batch_power) = known_count(&ty.shape)?;
    let mut elements = count;
    for _ in 0..batch_power {
        elements = elements.checked_mul(batch as u64)?;
    }
    elements.checked_mul(ty.dtype.size_of() as u64)
}

/// Bytes of memory a run of `graph` on `batch` samples may hold at once with the reference
/// interpreter: every value at that batch (an upper bound; values die as the run goes on).
/// `None` on overflow.
pub fn interpreter_bytes(graph: &Graph, batch: usize) -> Option<u64> {
    let mut total: u64 = 0;
    for id in graph.node_ids() {
        for v in &graph.node(id).outputs {
            total = total.checked_add(value_bytes(&v.ty, batch)?)?;
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_limits_are_named() {
        let text = "graph p(%x: f32[N,64]) -> (%y) {
  %y = Pad(%x) {mode=\"constant\", pads=[0,0,0,4611686018427387902], value=0.0} : f32[N,4611686018427387966]
}";
        let graph = qlift_ir::text::parse(text).unwrap();
        let err = check_graph(&graph, &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("value `y`: its size per sample (f32[N,4611686018427387966]) overflows 64 bits (node `y`)"), "{err}");
        let text = "graph p(%x: f32[N,64]) -> (%y) {
  %y = Pad(%x) {mode=\"constant\", pads=[0,0,0,1099511627776], value=0.0} : f32[N,1099511627840]
}";
        let err = check_graph(&qlift_ir::text::parse(text).unwrap(), &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("value `y` of node `y`")
                && err.contains("is 4398046511360, above the limit of 1073741824"),
            "{err}"
        );
        let small =
            qlift_ir::text::parse("graph s(%x: f32[N,4]) -> (%y) {\n  %y = Relu(%x) : f32[N,4]\n}")
                .unwrap();
        check_graph(&small, &Limits::default()).unwrap();
        assert_eq!(interpreter_bytes(&small, 10), Some(2 * 10 * 16));
        assert_eq!(interpreter_bytes(&small, usize::MAX), None);
        let err = check_graph(
            &small,
            &Limits {
                max_nodes: 1,
                ..Limits::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("node count is 2, above the limit of 1"),
            "{err}"
        );
    }
}
