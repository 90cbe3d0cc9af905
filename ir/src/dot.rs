//! Graphviz export: the graph as `dot` for rendering (`dot -Tsvg`).
//!
//! Ops are boxes labelled with the op, node name and attributes; constants are small notes;
//! graph inputs and outputs are ellipses; edges carry the value's type, and quantized edges
//! are drawn in blue with their parameters, so quantization islands stand out.

use crate::graph::NodeOp;
use crate::Graph;
use std::fmt::Write;

/// The graph in Graphviz dot syntax. A control-flow node's bodies are clusters beside it
/// (dashed boxes named after the node and attribute), whose results flow into the node by
/// dashed edges.
pub fn to_dot(graph: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", quote(&graph.name));
    out.push_str("  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n  edge [fontname=\"monospace\", fontsize=8];\n");
    nodes_and_edges(&mut out, graph, "n", "  ");
    for (i, v) in graph.outputs().iter().enumerate() {
        let _ = writeln!(
            out,
            "  out{i} [label={}, shape=ellipse];",
            quote(&format!("output {}", graph.value(*v).name))
        );
        let _ = writeln!(out, "  n{} -> out{i};", v.node.index());
    }
    out.push_str("}\n");
    out
}

/// Writes `graph`'s nodes (dot ids `{prefix}{index}`), its edges and its bodies' clusters.
fn nodes_and_edges(out: &mut String, graph: &Graph, prefix: &str, indent: &str) {
    for id in graph.node_ids() {
        let node = graph.node(id);
        let (label, style) = match &node.op {
            NodeOp::Input => (
                format!(
                    "input {}\n{}",
                    node.name,
                    crate::text::type_to_string(&node.outputs[0].ty)
                ),
                "shape=ellipse",
            ),
            NodeOp::Const(t) => (
                format!("const {}\n{}{:?}", node.name, t.dtype(), t.shape()),
                "shape=note, fontsize=8, color=gray40",
            ),
            NodeOp::Apply(op) => {
                let mut label = format!("{}\n{}", op.kind, node.name);
                for (k, v) in &op.attrs.0 {
                    if !matches!(v, crate::AttrValue::Graph(_)) {
                        let _ = write!(label, "\n{k}={}", attr(v));
                    }
                }
                (label, "")
            }
        };
        let _ = writeln!(
            out,
            "{indent}{prefix}{} [label={}{}{style}];",
            id.index(),
            quote(&label),
            if style.is_empty() { "" } else { ", " }
        );
    }
    for id in graph.node_ids() {
        for (slot, v) in graph.node_inputs(id).iter().enumerate() {
            let Some(v) = v else { continue };
            let ty = graph.value_type(*v);
            let color = if ty.quant.is_some() {
                ", color=blue, fontcolor=blue"
            } else {
                ""
            };
            let label = format!(
                "{}#{slot}: {}",
                graph.value(*v).name,
                crate::text::type_to_string(ty)
            );
            let _ = writeln!(
                out,
                "{indent}{prefix}{} -> {prefix}{} [label={}{color}];",
                v.node.index(),
                id.index(),
                quote(&label)
            );
        }
    }
    for id in graph.node_ids() {
        let NodeOp::Apply(op) = &graph.node(id).op else {
            continue;
        };
        for (name, body) in op.attrs.graphs() {
            let inner = format!("{prefix}{}_{name}_", id.index());
            let _ = writeln!(
                out,
                "{indent}subgraph {} {{",
                quote(&format!("cluster_{inner}"))
            );
            let _ = writeln!(
                out,
                "{indent}  label={}; style=dashed;",
                quote(&format!("{} {name}", graph.node(id).name))
            );
            nodes_and_edges(out, body, &inner, &format!("{indent}  "));
            let _ = writeln!(out, "{indent}}}");
            for (i, v) in body.outputs().iter().enumerate() {
                let label = format!("{name} result {i}");
                let _ = writeln!(
                    out,
                    "{indent}{inner}{} -> {prefix}{} [style=dashed, label={}];",
                    v.node.index(),
                    id.index(),
                    quote(&label)
                );
            }
        }
    }
}

fn attr(v: &crate::AttrValue) -> String {
    match v {
        crate::AttrValue::Int(i) => i.to_string(),
        crate::AttrValue::Float(f) => format!("{f:?}"),
        crate::AttrValue::Ints(v) => format!("{v:?}"),
        crate::AttrValue::Floats(v) => format!("{v:?}"),
        crate::AttrValue::Str(s) => s.clone(),
        crate::AttrValue::Graph(g) => format!("graph {}", g.name),
    }
}

/// A dot string literal.
fn quote(s: &str) -> String {
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}
