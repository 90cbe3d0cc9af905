//! A self-contained HTML report of what qlift did to a model (`qlift report --html`,
//! `qlift dump --html`): the compiled graph laid out top to bottom with every node colored
//! by its measured SQNR, float islands and fused nodes marked, and a card per node (its IR
//! line, types, quantization parameters, kernel form and time, the activation histogram
//! against the chosen range, the weights per channel); SQNR along the depth of the network;
//! fp32 against int8 outputs; the pass pipeline step by step with each step's IR and its
//! diff against the step before.
//!
//! One file that opens anywhere, offline: no network, no external script, font or style
//! sheet; plots are inline SVG, the node cards are shown by CSS `:target`, and a few lines
//! of script only highlight the selected node. Sizes are bounded for large models:
//! histograms are binned, constants are never embedded (only their type), scatter plots are
//! subsampled, and the IR text of intermediate steps is left out past a budget (their diffs
//! stay).

mod fused;
mod layout;
mod svg;

use crate::report::{LayerError, OutputPair};
use qlift_ir::text::{print_node, type_to_string, PrintOptions};
use qlift_ir::{DType, Graph, NodeId, NodeOp, OpKind, TensorType, ValueId};
use qlift_passes::calibrate::{quantization_noise, ActivationScheme, TensorStats};
use qlift_passes::quantize::Calibration;
use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;
use svg::{esc, num, Frame};

/// Bins of an activation histogram: enough to see a distribution's shape and its tails,
/// few enough that a transformer's hundreds of them stay small.
const HISTOGRAM_BINS: usize = 64;
/// Bins of a weight histogram.
const WEIGHT_BINS: usize = 48;
/// Most columns of a per-channel weight band (channels beyond are merged, min of mins and
/// max of maxes, so a band never hides an outlier).
const MAX_CHANNEL_COLUMNS: usize = 256;
/// Most points of an fp32-against-int8 scatter plot (an even sample of the outputs).
const MAX_SCATTER_POINTS: usize = 3000;
/// Most bytes of IR text embedded for the pipeline's steps: past it only the first and the
/// last step's text are kept (every diff stays, each cut at [`MAX_DIFF_BYTES`]).
const MAX_TEXT_BYTES: usize = 2 << 20;
/// Most bytes of one step's diff.
const MAX_DIFF_BYTES: usize = 512 << 10;
/// Longest IR line quoted in a node's hover title.
const MAX_TITLE_CHARS: usize = 240;

/// One step of the pass pipeline.
#[derive(Clone, Debug)]
pub struct PipelineStep {
    /// The pass (or `import` for the graph as loaded).
    pub name: String,
    /// Its wall time, when it ran.
    pub time: Option<Duration>,
    /// Graph nodes before and after.
    pub nodes: (usize, usize),
    /// The IR text after the step.
    pub text: Option<String>,
}

/// What the code generator made of a node.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// The kernel form (`direct`, `pointwise`, `im2col-packed`, …).
    pub form: String,
    /// Its measured cost, when profiled.
    pub cost: Option<KernelCost>,
}

/// A kernel's measured cost (`--profile`).
#[derive(Clone, Debug, PartialEq)]
pub struct KernelCost {
    /// Mean time per call in µs.
    pub us_per_call: f64,
    /// Its share of the time of all kernels, 0 to 1.
    pub share: f64,
    /// Multiply-accumulates per second, in billions (products only).
    pub gmacs: Option<f64>,
}

/// Everything a report shows; every part but the graph is optional (`dump --html` has no
/// measured errors, a float model no calibration).
pub struct Report<'a> {
    /// The page title (the model's file).
    pub title: String,
    /// Lines of the summary at the top, `(label, value)`.
    pub summary: Vec<(String, String)>,
    /// The graph after the pipeline: what is drawn.
    pub graph: &'a Graph,
    /// The graph as imported: where fused nodes came from.
    pub original: Option<&'a Graph>,
    /// The graph after the float pipeline: weights before quantization, by name.
    pub float: Option<&'a Graph>,
    /// The steps of the pass pipeline, the import first.
    pub steps: Vec<PipelineStep>,
    /// Measured per-layer errors.
    pub layers: Vec<LayerError>,
    /// Model outputs on both sides.
    pub outputs: Vec<OutputPair>,
    /// The calibration statistics the activation ranges were chosen from.
    pub calibration: Option<&'a Calibration>,
    /// Kernels by node name.
    pub kernels: HashMap<String, Kernel>,
}

/// How a node computes, for its color and outline.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Precision {
    /// A graph input.
    Input,
    /// An integer kernel (8-bit data, 32-bit accumulators).
    Int,
    /// A QuantizeLinear or DequantizeLinear at the edge of a float island.
    Boundary,
    /// A float op in a graph that has integer ops: a float island.
    FloatIsland,
    /// A float op in a float graph, or an op on indices and shapes.
    Plain,
}

impl Precision {
    fn of(g: &Graph, id: NodeId, quantized_graph: bool) -> Precision {
        let node = g.node(id);
        let Some(kind) = node.op.kind() else {
            return Precision::Input;
        };
        if matches!(kind, OpKind::QuantizeLinear | OpKind::DequantizeLinear) {
            return Precision::Boundary;
        }
        if kind.is_internal() || node.outputs.iter().any(|v| v.ty.quant.is_some()) {
            return Precision::Int;
        }
        if quantized_graph && node.outputs.iter().all(|v| v.ty.dtype == DType::F32) {
            return Precision::FloatIsland;
        }
        Precision::Plain
    }

    fn class(self) -> &'static str {
        match self {
            Precision::Input => "input",
            Precision::Int => "int",
            Precision::Boundary => "qdq",
            Precision::FloatIsland => "fp32",
            Precision::Plain => "plain",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Precision::Input => "graph input",
            Precision::Int => "integer kernel",
            Precision::Boundary => "quantize / dequantize (edge of a float island)",
            Precision::FloatIsland => {
                "float island: computed in fp32 between dequantize and quantize"
            }
            Precision::Plain => "float",
        }
    }
}

/// Fill color for a measured SQNR: red below 10 dB through yellow at 20-30 to green at 40 and
/// above (the bands an int8 layer usually falls in: 40+ dB is as good as 8 bits get).
fn sqnr_color(db: f64) -> &'static str {
    match db {
        d if d >= 40.0 => "#66bd63",
        d if d >= 30.0 => "#b8e186",
        d if d >= 20.0 => "#fee08b",
        d if d >= 10.0 => "#fc8d59",
        _ => "#e34a33",
    }
}

/// The SQNR bands of [`sqnr_color`], for the legend.
const SQNR_BANDS: [(&str, f64); 5] = [
    ("≥ 40 dB", 40.0),
    ("30–40", 30.0),
    ("20–30", 20.0),
    ("10–20", 10.0),
    ("< 10", 0.0),
];

/// A drawn node: the graph node and what is known about it.
struct Drawn<'a> {
    /// Its number on the page: the SVG node is `g{ordinal}`, its card `n{ordinal}`.
    ordinal: usize,
    id: NodeId,
    precision: Precision,
    error: Option<&'a LayerError>,
    origin: Option<fused::Origin>,
    kernel: Option<&'a Kernel>,
    /// The IR line.
    line: String,
}

impl Drawn<'_> {
    /// Whether the node stands for several original ops.
    fn fuses(&self) -> bool {
        self.origin.as_ref().is_some_and(|o| o.fused.len() > 1)
    }
}

/// Node box height: two lines of text, three for a fused node.
fn node_height(fuses: bool) -> f64 {
    if fuses {
        46.0
    } else {
        32.0
    }
}

/// `s` cut to `n` characters, keeping its end (node names differ at their end).
pub(crate) fn tail(s: &str, n: usize) -> String {
    let count = s.chars().count();
    if count <= n {
        s.to_string()
    } else {
        format!("…{}", s.chars().skip(count - n + 1).collect::<String>())
    }
}

/// Characters of a node's name line.
const NAME_CHARS: usize = 30;

/// The report as one HTML page.
pub fn render(r: &Report) -> String {
    let g = r.graph;
    let quantized_graph = g
        .node_ids()
        .any(|id| Precision::of(g, id, false) == Precision::Int);
    let by_name: HashMap<&str, &LayerError> =
        r.layers.iter().map(|l| (l.name.as_str(), l)).collect();
    let mut origins = r.original.map(|o| fused::origins(o, g)).unwrap_or_default();
    let opts = PrintOptions::default();
    let drawn: Vec<Drawn> = g
        .topo_order()
        .unwrap_or_else(|_| g.node_ids().collect())
        .into_iter()
        .filter(|&id| !matches!(g.node(id).op, NodeOp::Const(_)))
        .enumerate()
        .map(|(ordinal, id)| {
            let node = g.node(id);
            let error = node
                .outputs
                .iter()
                .find_map(|v| by_name.get(fused::float_name(&v.name)).copied());
            let line = print_node(g, id, &opts).unwrap_or_else(|| {
                format!(
                    "%{}: {}",
                    node.name,
                    node.outputs
                        .first()
                        .map(|v| type_to_string(&v.ty))
                        .unwrap_or_default()
                )
            });
            Drawn {
                ordinal,
                id,
                precision: Precision::of(g, id, quantized_graph),
                error,
                origin: origins.remove(&id),
                kernel: r.kernels.get(&node.name),
                line,
            }
        })
        .collect();
    let index: HashMap<NodeId, usize> = drawn.iter().enumerate().map(|(i, d)| (d.id, i)).collect();
    let mut edges: Vec<(usize, usize, ValueId)> = Vec::new();
    for (i, d) in drawn.iter().enumerate() {
        for v in g.node_inputs(d.id).into_iter().flatten() {
            if let Some(&u) = index.get(&v.node) {
                edges.push((u, i, v));
            }
        }
    }
    let sizes: Vec<(f64, f64)> = drawn
        .iter()
        .map(|d| {
            let node = g.node(d.id);
            let chars = node
                .op
                .name()
                .len()
                .max(node.name.chars().count().min(NAME_CHARS))
                + 6;
            (
                (chars as f64 * 6.6 + 14.0).clamp(70.0, 240.0),
                node_height(d.fuses()),
            )
        })
        .collect();
    let pairs: Vec<(usize, usize)> = edges.iter().map(|&(u, v, _)| (u, v)).collect();
    let lay = layout::layout(&sizes, &pairs, 12.0);

    let mut out = String::with_capacity(1 << 20);
    let _ = write!(out, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>qlift: {}</title><style>{STYLE}</style></head><body>", esc(&r.title));
    let _ = write!(out, "<header><h1>qlift report: {}</h1>", esc(&r.title));
    summary(&mut out, r, &drawn);
    out.push_str("</header>");
    // The graph and its cards.
    out.push_str("<section id=\"graph\"><h2>Compiled graph</h2>");
    legend(&mut out, quantized_graph);
    out.push_str("<div class=\"split\"><div class=\"scroll\" id=\"graphbox\">");
    draw_graph(&mut out, g, &drawn, &sizes, &edges, &lay);
    out.push_str("</div><aside id=\"cards\"><p class=\"hint\">Click a node for its IR, types, quantization parameters, kernel and plots.</p>");
    for (i, d) in drawn.iter().enumerate() {
        card(&mut out, r, d, lay.layer[i]);
    }
    out.push_str("</aside></div></section>");
    depth_plot(&mut out, &drawn, &lay.layer);
    scatter_plots(&mut out, &r.outputs);
    layer_table(&mut out, r, &drawn);
    pipeline(&mut out, &r.steps);
    let _ = write!(out, "<script>{SCRIPT}</script></body></html>\n");
    out
}

/// The page's style: system fonts only (nothing to fetch), colors for the node classes.
const STYLE: &str = "\
body{font:14px system-ui,sans-serif;margin:0 16px;color:#222}h1{font-size:20px}h2{font-size:17px;margin-top:28px}\
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #eee}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.split{display:flex;gap:12px;height:82vh}.scroll{flex:1 1 60%;overflow:auto;border:1px solid #ccc;background:#fcfcfc}\
aside{flex:0 0 480px;overflow:auto;border:1px solid #ccc;padding:8px}.card{display:none}.card:target{display:block}\
.card h3{margin:0 0 6px;font-size:15px;word-break:break-all}pre{font:12px ui-monospace,monospace;white-space:pre-wrap;word-break:break-all;background:#f6f6f6;padding:6px;margin:4px 0}\
svg text{font:10px ui-monospace,monospace;fill:#333}.graph text.op{font-weight:bold;font-size:11px}.graph text.fu{fill:#555;font-size:9px}\
.node rect{stroke:#555;stroke-width:1}.node.fp32 rect{stroke:#333;stroke-dasharray:4 2;stroke-width:1.5}.node.int rect{stroke:#1f4e99;stroke-width:2}\
.node.qdq rect{stroke:#999}.node.input rect{stroke:#000;stroke-width:2}.node.fused rect{stroke-width:3;stroke:#6a3d9a}.node.sel rect{stroke:#d00;stroke-width:4}\
.node:hover rect{stroke:#d00}.e{fill:none;stroke:#999;stroke-width:1}.e.q{stroke:#3a6fc4}\
.ax{fill:none;stroke:#333}.bar{fill:#6b8fc9}.bar.w{fill:#8c8c8c}.lim{stroke:#d00;stroke-width:1.5}.obs{stroke:#333;stroke-dasharray:3 2}\
.band{stroke:#1f4e99;stroke-width:1.5}.qband{stroke:#d6e0f0;stroke-width:3}.dot{fill:#1f4e99}.diag{stroke:#d00;fill:none}.trend{fill:none;stroke:#bbb}\
.badge{display:inline-block;padding:0 6px;border-radius:3px;border:1px solid #888;margin-right:4px;font-size:12px}\
.key{display:inline-block;width:14px;height:10px;border:1px solid #555;margin:0 3px 0 10px}\
.diff .a{background:#e6ffed}.diff .d{background:#ffeef0}.diff .h{color:#888}details{margin:4px 0}.hint{color:#777}aside:has(.card:target) .hint{display:none}";

/// Highlights the node whose card is shown, and brings it into view in the graph.
const SCRIPT: &str = "function sel(){for(const e of document.querySelectorAll('.node.sel'))e.classList.remove('sel');\
const m=location.hash.match(/^#n(\\d+)$/),g=m&&document.getElementById('g'+m[1]);\
if(g){g.classList.add('sel');g.scrollIntoView({block:'nearest',inline:'nearest'});}}\
addEventListener('hashchange',sel);sel();";

fn summary(out: &mut String, r: &Report, drawn: &[Drawn]) {
    out.push_str("<table>");
    for (k, v) in &r.summary {
        let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    let count = |p: Precision| drawn.iter().filter(|d| d.precision == p).count();
    let ops = drawn
        .iter()
        .filter(|d| d.precision != Precision::Input)
        .count();
    let _ = if count(Precision::Int) + count(Precision::Boundary) > 0 {
        write!(
            out,
            "<tr><th>compiled graph</th><td>{ops} op nodes: {} integer, {} in float islands, {} quantize/dequantize, {} other</td></tr>",
            count(Precision::Int),
            count(Precision::FloatIsland),
            count(Precision::Boundary),
            count(Precision::Plain)
        )
    } else {
        write!(
            out,
            "<tr><th>compiled graph</th><td>{ops} op nodes, float</td></tr>"
        )
    };
    if let Some(worst) = r.layers.first() {
        let at = drawn
            .iter()
            .position(|d| d.error.is_some_and(|e| std::ptr::eq(e, worst)));
        let _ = write!(
            out,
            "<tr><th>worst layer</th><td>{} ({}) {} dB</td></tr>",
            link(at, &worst.name),
            esc(&worst.op),
            num(worst.sqnr_db)
        );
    }
    for o in &r.outputs {
        let _ = write!(
            out,
            "<tr><th>output {}</th><td>SQNR {} dB</td></tr>",
            esc(&o.name),
            num(crate::report::sqnr_db(&o.quantized, &o.reference))
        );
    }
    out.push_str("</table>");
}

/// A link to drawn node `at`'s card, or the plain name.
fn link(at: Option<usize>, name: &str) -> String {
    match at {
        Some(i) => format!("<a href=\"#n{i}\">{}</a>", esc(name)),
        None => esc(name),
    }
}

fn legend(out: &mut String, quantized_graph: bool) {
    out.push_str("<p>Fill: measured SQNR of the node's result against fp32");
    for (label, db) in SQNR_BANDS {
        let _ = write!(
            out,
            "<span class=\"key\" style=\"background:{}\"></span>{label}",
            sqnr_color(db)
        );
    }
    out.push_str("<span class=\"key\" style=\"background:#fff\"></span>not measured.");
    if quantized_graph {
        out.push_str(" Outline: <b style=\"color:#1f4e99\">blue</b> integer kernel, <b>dashed</b> float island, <b style=\"color:#6a3d9a\">purple</b> several original ops fused into one; blue edges carry quantized values.");
    } else {
        out.push_str(
            " Outline: <b style=\"color:#6a3d9a\">purple</b> several original ops fused into one.",
        );
    }
    out.push_str("</p>");
}

fn draw_graph(
    out: &mut String,
    g: &Graph,
    drawn: &[Drawn],
    sizes: &[(f64, f64)],
    edges: &[(usize, usize, ValueId)],
    lay: &layout::Layout,
) {
    let (w, h) = (lay.width.ceil(), lay.height.ceil());
    let _ = write!(
        out,
        "<svg class=\"graph\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">"
    );
    for (k, &(_, _, v)) in edges.iter().enumerate() {
        let points = &lay.edges[k];
        let class = if g.value_type(v).quant.is_some() {
            "e q"
        } else {
            "e"
        };
        let _ = write!(
            out,
            "<path class=\"{class}\" d=\"M{:.0} {:.0}",
            points[0].0, points[0].1
        );
        for pair in points.windows(2) {
            let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
            let ym = (y0 + y1) / 2.0;
            let _ = write!(out, "C{x0:.0} {ym:.0} {x1:.0} {ym:.0} {x1:.0} {y1:.0}");
        }
        out.push_str("\"/>");
    }
    for (i, d) in drawn.iter().enumerate() {
        let node = g.node(d.id);
        let (x, y) = lay.nodes[i];
        let (nw, nh) = sizes[i];
        let fill = d.error.map_or("#fff", |e| sqnr_color(e.sqnr_db));
        let fused = if d.fuses() { " fused" } else { "" };
        let _ = write!(
            out,
            "<a href=\"#n{i}\" id=\"g{i}\" class=\"node {}{fused}\" data-node=\"{}\"><rect x=\"{x:.0}\" y=\"{y:.0}\" width=\"{nw:.0}\" height=\"{nh:.0}\" rx=\"4\" fill=\"{fill}\"/>",
            d.precision.class(),
            esc(&node.name)
        );
        let cx = x + nw / 2.0;
        let _ = write!(
            out,
            "<text class=\"op\" x=\"{cx:.0}\" y=\"{:.0}\" text-anchor=\"middle\">{}</text>",
            y + 13.0,
            esc(node.op.name())
        );
        let _ = write!(
            out,
            "<text x=\"{cx:.0}\" y=\"{:.0}\" text-anchor=\"middle\">{}</text>",
            y + 26.0,
            esc(&tail(&node.name, NAME_CHARS))
        );
        if let Some(o) = d.origin.as_ref().filter(|_| d.fuses()) {
            let _ = write!(
                out,
                "<text class=\"fu\" x=\"{cx:.0}\" y=\"{:.0}\" text-anchor=\"middle\">{}</text>",
                y + 39.0,
                esc(&tail(&o.fused.join("+"), NAME_CHARS + 4))
            );
        }
        let mut title = tail(&d.line, MAX_TITLE_CHARS);
        if let Some(e) = d.error {
            let _ = write!(
                title,
                "\nSQNR {} dB, max error {}",
                num(e.sqnr_db),
                num(e.max_abs_error)
            );
        }
        if let Some(k) = d.kernel {
            let _ = write!(title, "\nkernel: {}", k.form);
            if let Some(c) = &k.cost {
                let _ = write!(
                    title,
                    ", {} µs/call ({:.1}%)",
                    num(c.us_per_call),
                    100.0 * c.share
                );
            }
        }
        let _ = write!(out, "<title>{}</title></a>", esc(&title));
    }
    out.push_str("</svg>");
}

/// The operands of node `id` that are quantized constant weights (per-channel parameters),
/// with their slots.
fn weight_operands(g: &Graph, id: NodeId) -> Vec<(usize, ValueId)> {
    g.node_inputs(id)
        .into_iter()
        .enumerate()
        .filter_map(|(slot, v)| Some((slot, v?)))
        .filter(|&(_, v)| {
            g.const_value(v).is_some()
                && g.value_type(v)
                    .quant
                    .as_ref()
                    .is_some_and(|q| q.axis.is_some())
                && g.value_type(v).dtype != DType::I32
        })
        .collect()
}

fn card(out: &mut String, r: &Report, d: &Drawn, depth: usize) {
    let g = r.graph;
    let node = g.node(d.id);
    let _ = write!(
        out,
        "<div class=\"card\" id=\"n{}\"><h3>{} <small>{}</small></h3>",
        d.ordinal,
        esc(node.op.name()),
        esc(&node.name)
    );
    let _ = write!(
        out,
        "<p><span class=\"badge\">{}</span><span class=\"badge\">depth {depth}</span>",
        esc(d.precision.label())
    );
    if let Some(e) = d.error {
        let _ = write!(
            out,
            "<span class=\"badge\" style=\"background:{}\">SQNR {} dB</span> max error {}",
            sqnr_color(e.sqnr_db),
            num(e.sqnr_db),
            num(e.max_abs_error)
        );
    }
    out.push_str("</p>");
    let _ = write!(out, "<pre>{}</pre>", esc(&d.line));
    if let Some(o) = &d.origin {
        if d.fuses() || o.folded > 0 {
            let _ = write!(
                out,
                "<p>From the original ops: {}",
                esc(&o.fused.join(" → "))
            );
            if o.folded > 0 {
                let _ = write!(out, " (and {} op(s) on constants, folded)", o.folded);
            }
            out.push_str("</p>");
        }
    }
    if let Some(k) = d.kernel {
        let _ = write!(out, "<p>Kernel form: <b>{}</b>", esc(&k.form));
        if let Some(c) = &k.cost {
            let _ = write!(
                out,
                "; {} µs per call, {:.1}% of kernel time",
                num(c.us_per_call),
                100.0 * c.share
            );
            if let Some(gm) = c.gmacs {
                let _ = write!(out, ", {} GMAC/s", num(gm));
            }
        }
        out.push_str("</p>");
    }
    out.push_str("<table>");
    for (slot, v) in g.node_inputs(d.id).iter().enumerate() {
        let Some(v) = *v else { continue };
        let constant = if g.const_value(v).is_some() {
            " (constant)"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<tr><td>in {slot}</td><td>{}{constant}</td><td>{}</td></tr>",
            esc(&g.value(v).name),
            esc(&type_brief(g.value_type(v)))
        );
    }
    for v in &node.outputs {
        let _ = write!(
            out,
            "<tr><td>out</td><td>{}</td><td>{}</td></tr>",
            esc(&v.name),
            esc(&type_brief(&v.ty))
        );
    }
    out.push_str("</table>");
    for v in &node.outputs {
        if let Some(a) = r
            .calibration
            .and_then(|cal| ActivationRange::of(cal, &v.name, &v.ty))
        {
            activation_plot(out, &v.name, &a);
        }
    }
    for (slot, w) in weight_operands(g, d.id) {
        weight_plots(out, r, d.id, slot, w);
    }
    out.push_str("</div>");
}

/// A type for a card: per-channel parameters summarized (a 384-channel list helps no one).
fn type_brief(ty: &TensorType) -> String {
    match &ty.quant {
        Some(q) if q.axis.is_some() && q.scale.len() > 4 => {
            let plain = TensorType {
                quant: None,
                ..ty.clone()
            };
            let (lo, hi) = q
                .scale
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &s| {
                    (a.min(s), b.max(s))
                });
            format!(
                "{} quant(axis={}, {} scales in [{}, {}])",
                type_to_string(&plain),
                q.axis.unwrap_or(0),
                q.scale.len(),
                num(lo.into()),
                num(hi.into())
            )
        }
        _ => type_to_string(ty),
    }
}

/// A quantized activation's calibration: what was observed, the range chosen for it, and
/// the noise that range costs (estimated from the histogram).
struct ActivationRange<'a> {
    stats: &'a TensorStats,
    /// The chosen range: what the value's scale and zero point represent.
    lo: f64,
    hi: f64,
    noise: qlift_passes::calibrate::QuantNoise,
}

impl<'a> ActivationRange<'a> {
    /// The calibration of value `name` of type `ty`, if it is a per-tensor quantized
    /// activation with statistics. The range comes from the type's parameters (the truth
    /// after every pass, pass-through ops inheriting their operand's included), not from a
    /// method re-run.
    fn of(cal: &'a Calibration, name: &str, ty: &TensorType) -> Option<ActivationRange<'a>> {
        let q = ty.quant.as_ref().filter(|q| q.axis.is_none())?;
        let stats = cal.stats(fused::float_name(name))?;
        let (scheme, qmin, qmax) = match ty.dtype {
            DType::U8 => (ActivationScheme::AsymmetricU8, 0.0, 255.0),
            DType::I8 => (ActivationScheme::SymmetricI8, -127.0, 127.0),
            _ => return None,
        };
        let (s, zp) = (
            f64::from(*q.scale.first()?),
            f64::from(*q.zero_point.first()?),
        );
        let (lo, hi) = ((qmin - zp) * s, (qmax - zp) * s);
        let noise = quantization_noise(stats, lo as f32, hi as f32, scheme);
        Some(ActivationRange {
            stats,
            lo,
            hi,
            noise,
        })
    }
}

/// The activation histogram (log counts) with the observed extremes and the chosen range.
fn activation_plot(out: &mut String, name: &str, a: &ActivationRange) {
    let h = a.stats.histogram(HISTOGRAM_BINS);
    let peak = h.counts.iter().copied().max().unwrap_or(0);
    let log = |c: u64| ((c + 1) as f64).log10();
    let f = Frame::new(
        440.0,
        170.0,
        (h.lo.min(a.lo), h.hi.max(a.hi)),
        (0.0, log(peak).max(1.0)),
    );
    let _ = write!(out, "<h4>Activation {}</h4>", esc(name));
    f.open(out, "value", "log10(1 + count)");
    f.bars(out, "bar", h.lo, h.hi, &h.counts, log);
    f.vline(out, "obs", h.lo, &format!("observed min {}", num(h.lo)));
    f.vline(out, "obs", h.hi, &format!("observed max {}", num(h.hi)));
    f.vline(out, "lim", a.lo, &format!("range low {}", num(a.lo)));
    f.vline(out, "lim", a.hi, &format!("range high {}", num(a.hi)));
    out.push_str("</svg>");
    let count = a.stats.count().max(1) as f64;
    let n = &a.noise;
    let _ = write!(
        out,
        "<p>Observed [{}, {}], chosen range [{}, {}] (red): {:.3}% of values clipped, {:.1}% exact zeros. \
         Quantization noise of this value alone, from the histogram: SQNR {} dB; rounding alone {} dB, clipping alone {} dB.</p>",
        num(h.lo),
        num(h.hi),
        num(a.lo),
        num(a.hi),
        100.0 * n.clipped_fraction,
        100.0 * h.zeros as f64 / count,
        num(n.sqnr_db()),
        num(n.rounding_sqnr_db()),
        num(n.clipping_sqnr_db())
    );
}

/// The name of the float weights a quantized constant was made from (`W_quantized`,
/// `W_quantized_1` for a second copy).
fn float_weight_name(name: &str) -> &str {
    match name.rfind("_quantized") {
        Some(at)
            if name[at + "_quantized".len()..]
                .trim_start_matches('_')
                .bytes()
                .all(|b| b.is_ascii_digit()) =>
        {
            &name[..at]
        }
        _ => name,
    }
}

/// A quantized weight: its per-channel min/max band (the float weights, against the range
/// each channel's scale represents) and the histogram of all its values.
fn weight_plots(out: &mut String, r: &Report, node: NodeId, slot: usize, w: ValueId) {
    let g = r.graph;
    let (Some(tensor), Some(q)) = (g.const_value(w), g.value_type(w).quant.as_ref()) else {
        return;
    };
    let Some(axis) = q.axis else { return };
    let name = &g.value(w).name;
    let same = |t: &&std::sync::Arc<qlift_ir::Tensor>| {
        t.shape() == tensor.shape() && t.dtype() == DType::F32
    };
    // The float weights: by their name, or (renamed by the rewrites) as the same operand of
    // the float node computing the same value.
    let float = r.float.and_then(|f| {
        let by_name = f
            .find_value(float_weight_name(name))
            .and_then(|v| f.const_value(v))
            .filter(same);
        by_name
            .or_else(|| {
                let result =
                    f.find_value(fused::float_name(&g.node(node).outputs.first()?.name))?;
                f.const_value(f.node_inputs(result.node).get(slot).copied().flatten()?)
                    .filter(same)
            })
            .cloned()
    });
    let (values, source) = match &float {
        Some(t) => (t.to_f32_vec(), "float weights"),
        None => match crate::report::real_values(g.value_type(w), tensor) {
            Some(v) => (v, "dequantized weights"),
            None => return,
        },
    };
    let shape = tensor.shape();
    let (Some(&channels), inner) = (
        shape.get(axis),
        shape
            .get(axis + 1..)
            .map_or(1, |s| s.iter().product::<usize>().max(1)),
    ) else {
        return;
    };
    if channels == 0 || values.is_empty() {
        return;
    }
    let per_column = channels.div_ceil(MAX_CHANNEL_COLUMNS);
    let columns = channels.div_ceil(per_column);
    let mut band = vec![(f64::INFINITY, f64::NEG_INFINITY); columns];
    for (i, &v) in values.iter().enumerate() {
        let c = (i / inner) % channels / per_column;
        band[c] = (band[c].0.min(v.into()), band[c].1.max(v.into()));
    }
    let limit: Vec<f64> = (0..columns)
        .map(|c| {
            (c * per_column..((c + 1) * per_column).min(channels))
                .map(|k| f64::from(q.channel(k).0) * 127.0)
                .fold(0.0, f64::max)
        })
        .collect();
    let (lo, hi) = band
        .iter()
        .fold((0.0f64, 0.0f64), |(a, b), &(l, h)| (a.min(l), b.max(h)));
    let top = limit.iter().copied().fold(hi.max(-lo), f64::max);
    let _ = write!(
        out,
        "<h4>Weights {} ({source}, {channels} channels on axis {axis})</h4>",
        esc(name)
    );
    let f = Frame::new(440.0, 170.0, (0.0, columns as f64), (-top, top));
    let x_title = if per_column > 1 {
        format!("channel / {per_column}")
    } else {
        "channel".to_string()
    };
    f.open(out, &x_title, "min..max");
    let qband: Vec<(f64, f64, f64)> = limit
        .iter()
        .enumerate()
        .map(|(c, &l)| (c as f64 + 0.5, -l, l))
        .collect();
    f.segments(out, "qband", &qband);
    let segs: Vec<(f64, f64, f64)> = band
        .iter()
        .enumerate()
        .map(|(c, &(l, h))| (c as f64 + 0.5, l, h))
        .collect();
    f.segments(out, "band", &segs);
    out.push_str("</svg>");
    let mut counts = vec![0u64; WEIGHT_BINS];
    let step = (hi - lo) / WEIGHT_BINS as f64;
    for &v in &values {
        let at = if step > 0.0 {
            ((f64::from(v) - lo) / step) as usize
        } else {
            0
        };
        counts[at.min(WEIGHT_BINS - 1)] += 1;
    }
    let f = Frame::new(
        440.0,
        140.0,
        (lo, hi),
        (0.0, counts.iter().copied().max().unwrap_or(1) as f64),
    );
    f.open(out, "weight", "count");
    f.bars(out, "bar w", lo, hi, &counts, |c| c as f64);
    out.push_str("</svg>");
    out.push_str("<p>Dark: each channel's min..max; light: the range its int8 scale represents (±127 steps).</p>");
}

/// SQNR of every measured node against its depth in the graph, with the worst per depth
/// joined: where along the network the error grows.
fn depth_plot(out: &mut String, drawn: &[Drawn], layer: &[usize]) {
    let mut points: Vec<(f64, f64, usize)> = drawn
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            d.error
                .filter(|e| e.sqnr_db.is_finite())
                .map(|e| (layer[i] as f64, e.sqnr_db, i))
        })
        .collect();
    if points.is_empty() {
        return;
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (lo, hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    let depth = points.iter().map(|p| p.0).fold(0.0, f64::max);
    out.push_str("<section id=\"depth\"><h2>SQNR along the depth of the network</h2>");
    let f = Frame::new(960.0, 280.0, (0.0, depth.max(1.0)), (lo.min(0.0), hi));
    f.open(out, "depth (layer of the compiled graph)", "SQNR dB");
    let mut worst: Vec<(f64, f64)> = Vec::new();
    for p in &points {
        match worst.last_mut() {
            Some(w) if w.0 == p.0 => w.1 = w.1.min(p.1),
            _ => worst.push((p.0, p.1)),
        }
    }
    f.line(out, "trend", &worst);
    for &(x, y, i) in &points {
        let name = drawn[i].error.map_or("", |e| e.name.as_str());
        let _ = write!(out, "<a href=\"#n{i}\"><circle class=\"dot\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\"><title>{}: {} dB</title></circle></a>", f.x(x), f.y(y), esc(name), num(y));
    }
    out.push_str("</svg><p>Each dot is a node's result (click for its card); the line joins the worst node at each depth.</p></section>");
}

/// fp32 against int8 values of each model output (an even sample of them).
fn scatter_plots(out: &mut String, outputs: &[OutputPair]) {
    if outputs.is_empty() {
        return;
    }
    out.push_str("<section id=\"outputs\"><h2>Outputs: fp32 against int8</h2>");
    for o in outputs {
        let n = o.reference.len().min(o.quantized.len());
        let stride = n.div_ceil(MAX_SCATTER_POINTS).max(1);
        let points: Vec<(f64, f64)> = (0..n)
            .step_by(stride)
            .map(|i| (f64::from(o.reference[i]), f64::from(o.quantized[i])))
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        let (lo, hi) = points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(p.0).min(p.1), b.max(p.0).max(p.1))
            });
        let _ = write!(
            out,
            "<div style=\"display:inline-block;margin-right:16px\"><h4>{} ({} of {n} values)</h4>",
            esc(&o.name),
            points.len()
        );
        let f = Frame::new(420.0, 380.0, (lo, hi), (lo, hi));
        f.open(out, "fp32", "int8");
        f.line(out, "diag", &[(lo, lo), (hi, hi)]);
        f.dots(out, "dot", &points);
        out.push_str("</svg></div>");
    }
    out.push_str("</section>");
}

/// Every measured layer, worst first, with its calibration and kernel.
fn layer_table(out: &mut String, r: &Report, drawn: &[Drawn]) {
    if r.layers.is_empty() {
        return;
    }
    let g = r.graph;
    let at: HashMap<*const LayerError, &Drawn> = drawn
        .iter()
        .filter_map(|d| Some((d.error? as *const LayerError, d)))
        .collect();
    out.push_str("<section id=\"layers\"><h2>Layers, worst first</h2><table><tr><th>layer</th><th>op</th><th>SQNR dB</th><th>max error</th>\
        <th>clipped</th><th>rounding-only dB</th><th>clipping-only dB</th>\
        <th>measured: rounding dB</th><th>clipping dB</th><th>saturation dB</th><th>upstream dB</th><th>kernel</th><th>time</th></tr>");
    for e in &r.layers {
        let d = at.get(&(e as *const LayerError)).copied();
        let range = d.and_then(|d| {
            let v = g.node(d.id).outputs.first()?;
            ActivationRange::of(r.calibration?, &v.name, &v.ty)
        });
        let (clipped, round, clip) = match &range {
            Some(a) => (
                format!("{:.3}%", 100.0 * a.noise.clipped_fraction),
                num(a.noise.rounding_sqnr_db()),
                num(a.noise.clipping_sqnr_db()),
            ),
            None => Default::default(),
        };
        let kernel = d.and_then(|d| d.kernel);
        let time = kernel
            .and_then(|k| k.cost.as_ref())
            .map_or(String::new(), |c| format!("{:.1}%", 100.0 * c.share));
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"n\" style=\"background:{}\">{}</td><td class=\"n\">{}</td><td class=\"n\">{clipped}</td><td class=\"n\">{round}</td><td class=\"n\">{clip}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{time}</td></tr>",
            link(d.map(|d| d.ordinal), &e.name),
            esc(&e.op),
            sqnr_color(e.sqnr_db),
            num(e.sqnr_db),
            num(e.max_abs_error),
            num(e.split.db(e.split.rounding)),
            num(e.split.db(e.split.clipping)),
            num(e.split.db(e.split.saturation)),
            num(e.split.db(e.split.upstream)),
            esc(kernel.map_or("", |k| k.form.as_str()))
        );
    }
    out.push_str("</table><p>SQNR is measured on the --input data; the clipped fraction and the rounding/clipping split are estimated from the calibration histogram of the layer's result; the measured split is the error on the --input data by cause (the SQNR each cause alone would leave: the value's own rounding, clipping of values calibration saw, saturation beyond anything it saw, and error its operands and weights brought; see compiler/src/report.rs).</p></section>");
}

/// The pass pipeline: a row per step, its IR text and its diff against the step before.
fn pipeline(out: &mut String, steps: &[PipelineStep]) {
    if steps.is_empty() {
        return;
    }
    let total: usize = steps
        .iter()
        .filter_map(|s| s.text.as_ref())
        .map(String::len)
        .sum();
    let keep_all = total <= MAX_TEXT_BYTES;
    out.push_str("<section id=\"pipeline\"><h2>Pass pipeline</h2><table><tr><th>#</th><th>step</th><th>nodes</th><th>time</th></tr>");
    for (i, s) in steps.iter().enumerate() {
        let time = s.time.map_or(String::new(), |t| {
            format!("{:.2} ms", t.as_secs_f64() * 1e3)
        });
        let _ = write!(out, "<tr><td>{i}</td><td><a href=\"#step{i}\">{}</a></td><td class=\"n\">{} → {}</td><td class=\"n\">{time}</td></tr>", esc(&s.name), s.nodes.0, s.nodes.1);
    }
    out.push_str("</table>");
    if !keep_all {
        let _ = write!(out, "<p>The IR of the intermediate steps ({} MB in all) is left out; their diffs are below.</p>", num(total as f64 / 1e6));
    }
    let mut previous: Option<&str> = None;
    for (i, s) in steps.iter().enumerate() {
        let _ = write!(out, "<h3 id=\"step{i}\">{i}. {}</h3>", esc(&s.name));
        let Some(text) = s.text.as_deref() else {
            out.push_str("<p>No IR text was kept for this step.</p>");
            continue;
        };
        if keep_all || i == 0 || i + 1 == steps.len() {
            let _ = write!(
                out,
                "<details><summary>IR after {} ({} lines)</summary><pre>{}</pre></details>",
                esc(&s.name),
                text.lines().count(),
                esc(text)
            );
        }
        if let Some(before) = previous {
            diff(out, before, text);
        }
        previous = Some(text);
    }
    out.push_str("</section>");
}

/// The line diff of two IR texts, unified with 3 lines of context, cut at [`MAX_DIFF_BYTES`].
fn diff(out: &mut String, before: &str, after: &str) {
    use similar::{ChangeTag, TextDiff};
    let d = TextDiff::from_lines(before, after);
    let (mut added, mut removed) = (0, 0);
    let mut body = String::new();
    let mut cut = false;
    for group in d.grouped_ops(3) {
        if body.len() > MAX_DIFF_BYTES {
            cut = true;
        }
        if !cut {
            body.push_str("<span class=\"h\">@@</span>\n");
        }
        for op in group {
            for change in d.iter_changes(&op) {
                let (class, sign) = match change.tag() {
                    ChangeTag::Insert => {
                        added += 1;
                        ("a", '+')
                    }
                    ChangeTag::Delete => {
                        removed += 1;
                        ("d", '-')
                    }
                    ChangeTag::Equal => ("", ' '),
                };
                if !cut {
                    let _ = write!(
                        body,
                        "<span class=\"{class}\">{sign}{}</span>",
                        esc(change.value())
                    );
                    if change.missing_newline() {
                        body.push('\n');
                    }
                }
            }
        }
    }
    if added + removed == 0 {
        out.push_str("<p>No change to the IR.</p>");
        return;
    }
    if cut {
        body.push_str("<span class=\"h\">… the rest of the diff is left out (size limit)</span>\n");
    }
    let _ = write!(out, "<details><summary>Diff against the step before: +{added} −{removed} lines</summary><pre class=\"diff\">{body}</pre></details>");
}
