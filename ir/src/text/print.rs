//! The printer.

use crate::{AttrValue, Graph, NodeOp, QuantParams, Tensor, TensorData, TensorType};
use std::fmt::{self, Write};

/// How much of the constants to print.
#[derive(Clone, Debug)]
pub struct PrintOptions {
    /// Print every constant's data (a self-contained text that parses without a pool).
    pub full_constants: bool,
    /// Constants with at most this many elements (default 8) are printed inline even without
    /// `full_constants`; larger ones as their content digest.
    pub inline_limit: usize,
}

impl Default for PrintOptions {
    fn default() -> PrintOptions {
        PrintOptions {
            full_constants: false,
            inline_limit: 8,
        }
    }
}

/// Prints a graph in the text format.
pub fn print(graph: &Graph, opts: &PrintOptions) -> String {
    print_indented(graph, opts, "")
}

/// [`print`] with every line after the first indented by `indent` (a body inside a node's
/// attributes).
fn print_indented(graph: &Graph, opts: &PrintOptions, indent: &str) -> String {
    let mut out = String::new();
    let inputs: Vec<String> = graph
        .input_values()
        .iter()
        .map(|&v| {
            format!(
                "%{}: {}",
                name(&graph.value(v).name),
                type_string(&graph.value(v).ty)
            )
        })
        .collect();
    let outputs: Vec<String> = graph
        .outputs()
        .iter()
        .map(|&v| format!("%{}", name(&graph.value(v).name)))
        .collect();
    let _ = writeln!(
        out,
        "graph {}({}) -> ({}) {{",
        name(&graph.name),
        inputs.join(", "),
        outputs.join(", ")
    );
    // A graph that does not verify may have a cycle: print what has an order.
    let order = graph
        .topo_order()
        .unwrap_or_else(|_| graph.node_ids().collect());
    let inner = format!("{indent}  ");
    for id in order {
        if let Some(line) = node_line(graph, id, opts, &inner) {
            let _ = writeln!(out, "{inner}{line}");
        }
    }
    out.push_str(indent);
    out.push('}');
    if indent.is_empty() {
        out.push('\n');
    }
    out
}

/// One node's line of the text format (without indentation), as [`print`] writes it; `None`
/// for a graph input, which the header declares. Reports and tools that show a single node
/// (the HTML report's node details) use it, so that they quote exactly what a dump holds.
/// A control-flow node's bodies follow on further lines, indented.
pub fn print_node(graph: &Graph, id: crate::NodeId, opts: &PrintOptions) -> Option<String> {
    node_line(graph, id, opts, "")
}

/// [`print_node`] for a node whose line is indented by `indent`.
fn node_line(
    graph: &Graph,
    id: crate::NodeId,
    opts: &PrintOptions,
    indent: &str,
) -> Option<String> {
    let node = graph.node(id);
    let results: Vec<String> = node
        .outputs
        .iter()
        .map(|v| format!("%{}", name(&v.name)))
        .collect();
    let types: Vec<String> = node.outputs.iter().map(|v| type_string(&v.ty)).collect();
    let line = match &node.op {
        NodeOp::Input => return None,
        NodeOp::Const(t) => format!(
            "{} = const {} {}",
            results.join(", "),
            types.join(", "),
            data(t, opts)
        ),
        NodeOp::Apply(op) => {
            let operands: Vec<String> = graph
                .node_inputs(id)
                .iter()
                .map(|v| {
                    v.map_or("_".to_string(), |v| {
                        format!("%{}", name(&graph.value(v).name))
                    })
                })
                .collect();
            let attrs: Vec<String> = op
                .attrs
                .0
                .iter()
                .map(|(k, v)| format!("{}={}", name(k), attr(v, opts, indent)))
                .collect();
            let attrs = if attrs.is_empty() {
                String::new()
            } else {
                format!(" {{{}}}", attrs.join(", "))
            };
            format!(
                "{} = {}({}){attrs} : {}",
                results.join(", "),
                op.kind,
                operands.join(", "),
                types.join(", ")
            )
        }
    };
    let label = match node.outputs.first() {
        Some(v) if v.name == node.name => String::new(),
        _ => format!(" @{}", name(&node.name)),
    };
    Some(format!("{line}{label}"))
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&print(self, &PrintOptions::default()))
    }
}

/// Whether a name can be written without quotes.
pub(super) fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
}

/// A name, quoted and escaped unless plain.
pub(super) fn name(s: &str) -> String {
    if is_plain(s) {
        return s.to_string();
    }
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{{{:x}}}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// An f32 that parses back to the same bits (NaN payloads aside): Rust's shortest
/// round-trip form, which always has a `.` or an exponent, or `inf`/`-inf`/`nan`.
pub(super) fn float(v: f32) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        format!("{v:?}")
    }
}

fn list<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    format!("[{}]", items.iter().map(f).collect::<Vec<_>>().join(", "))
}

fn attr(v: &AttrValue, opts: &PrintOptions, indent: &str) -> String {
    match v {
        AttrValue::Graph(g) => print_indented(g, opts, indent),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Float(x) => float(*x),
        AttrValue::Ints(v) => list(v, |i| i.to_string()),
        AttrValue::Floats(v) if v.is_empty() => "floats[]".into(),
        AttrValue::Floats(v) => list(v, |x| float(*x)),
        AttrValue::Str(s) => {
            let quoted = name(s);
            if quoted.starts_with('"') {
                quoted
            } else {
                format!("\"{s}\"")
            }
        }
    }
}

/// A type with its quantization parameters.
pub(super) fn type_string(ty: &TensorType) -> String {
    let mut s = format!("{}{}", ty.dtype, ty.shape);
    if let Some(q) = &ty.quant {
        s.push_str(&quant(q));
    }
    s
}

fn quant(q: &QuantParams) -> String {
    match q.axis {
        None => format!(
            " quant(scale={}, zero_point={})",
            float(q.scale[0]),
            q.zero_point[0]
        ),
        Some(a) => format!(
            " quant(axis={a}, scale={}, zero_point={})",
            list(&q.scale, |x| float(*x)),
            list(&q.zero_point, |z| z.to_string())
        ),
    }
}

fn data(t: &Tensor, opts: &PrintOptions) -> String {
    if !opts.full_constants && t.len() > opts.inline_limit {
        return format!("#{:016x}", t.digest());
    }
    match t.data() {
        TensorData::F32(v) => list(v, |x| float(*x)),
        TensorData::I8(v) => list(v, |x| x.to_string()),
        TensorData::U8(v) => list(v, |x| x.to_string()),
        TensorData::I16(v) => list(v, |x| x.to_string()),
        TensorData::I32(v) => list(v, |x| x.to_string()),
        TensorData::I64(v) => list(v, |x| x.to_string()),
    }
}
