//! qlift IR → ONNX: the inverse of the importer.
//!
//! The exporter writes a `ModelProto` that ONNX Runtime loads: one ONNX node per IR node (plus
//! a Relu or Clip for a fused activation), constants as initializers, and everything the
//! importer moved out of operands put back:
//!
//! - Reshape's `shape`, Squeeze/Unsqueeze's `axes`, Pad's `pads` become `i64` initializers;
//!   Clip's bounds and Pad's fill value become scalar initializers of the operand's dtype
//!   (an infinite Clip bound is the omitted optional input `""`).
//! - Quantization parameters on value types become the scale and zero-point operands of
//!   QuantizeLinear (from the result's type), DequantizeLinear (from the operand's type) and
//!   QLinearConv/QLinearMatMul (from the operands' and the result's types); a per-axis layout
//!   is a 1-D scale plus Q/DQ's `axis` attribute.
//! - A fused activation `{act_min, act_max}` becomes the op into a fresh value, then Relu
//!   (for `[0, inf]`) or Clip producing the value's own name.
//!
//! **Opset.** The model imports ai.onnx 13 (IR version 8), where every op qlift has exists
//! with per-axis Q/DQ, unless the graph needs more; then the version is raised to the lowest
//! one that has it: 14 for HardSwish and Reshape's `allowzero=1`, 18 for Mish, 19 for
//! AveragePool `dilations` other than 1, 20 for Gelu, 21 (IR version 10) for `i4`/`u4`
//! values. The ops qlift writes mean the same at every version from 13 to 21, so raising the
//! version changes nothing else.
//!
//! **Names.** Value and node names are kept; a repeated or empty one gets a numbered
//! variant (`name_1`), and the initializers the exporter adds (`x_scale`, `y_shape`, ...) get
//! names no value uses, so re-importing the model gives the same graph (the tests check it on
//! every bundled model).
//!
//! **What does not come back.** Quantization parameters on a value that no Q/DQ/QLinear op
//! reads (say, a quantized graph input consumed only by MaxPool) have no place in ONNX and are
//! dropped; a Squeeze with no axes is written as Identity; an empty graph name becomes
//! `graph` (ONNX requires one).
//!
//! Every IR op maps through one table, [`rule`]; an op missing from it is refused with an
//! [`Error::Export`] naming the node and the op.

use super::tensor::dtype_code;
use crate::Error;
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::{
    type_proto, AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use qlift_ir::{
    AttrValue, DType, Dim, Graph, Node, NodeId, NodeOp, Op, OpKind, Tensor, TensorData, TensorType,
    ValueId,
};
use std::collections::{HashMap, HashSet};

/// The ai.onnx opset the exporter writes unless an op or a dtype needs a later one.
const BASE_OPSET: i64 = 13;

/// Serializes an IR graph as an ONNX model (`ModelProto` bytes) that ONNX Runtime loads.
///
/// The model imports ai.onnx 13 unless the graph needs a later opset (see the module
/// documentation); constants become initializers and quantization parameters on types become
/// the scale and zero-point operands of the Q/DQ and QLinear ops. An op with no ONNX
/// equivalent is an [`Error::Export`] naming the node and the op.
pub fn export_onnx(graph: &Graph) -> Result<Vec<u8>, Error> {
    let model = export_model(graph)?;
    model
        .write_to_bytes()
        .map_err(|e| model_error(format!("serializing the model: {e}")))
}

/// The `ModelProto` [`export_onnx`] serializes.
pub(crate) fn export_model(graph: &Graph) -> Result<ModelProto, Error> {
    let mut ex = Exporter::new(graph);
    let graph_proto = ex.graph()?;
    let opset = ex.opset;
    Ok(ModelProto {
        ir_version: ir_version(opset),
        producer_name: "qlift".to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
            ..Default::default()
        }],
        graph: Some(graph_proto).into(),
        ..Default::default()
    })
}

/// The lowest IR version that knows the opset (IR 8 at least).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=18 => 8,
        19 | 20 => 9,
        _ => 10,
    }
}

fn model_error(message: String) -> Error {
    Error::Export {
        node: String::new(),
        op: String::new(),
        message,
    }
}

/// How one IR op is written: a node of the same ONNX op type with the listed canonical
/// attributes and the IR operands as inputs, or a function that puts operands back.
#[derive(Clone, Copy)]
enum Write {
    Direct(&'static str, &'static [&'static str]),
    Custom(fn(&mut Exporter, &Cx) -> Result<(), Error>),
}

/// An op's export rule and the first ai.onnx opset that has the op.
#[derive(Clone, Copy)]
struct Rule {
    write: Write,
    since: i64,
}

const fn direct(op_type: &'static str, attrs: &'static [&'static str]) -> Rule {
    Rule {
        write: Write::Direct(op_type, attrs),
        since: BASE_OPSET,
    }
}

const fn custom(f: fn(&mut Exporter, &Cx) -> Result<(), Error>) -> Rule {
    Rule {
        write: Write::Custom(f),
        since: BASE_OPSET,
    }
}

const WINDOW: &[&str] = &["dilations", "group", "kernel_shape", "pads", "strides"];

/// The op table: how each IR op becomes ONNX. `None` for an op with no ONNX equivalent
/// (integer ops of a later IR); adding an op is adding its line.
fn rule(kind: OpKind) -> Option<Rule> {
    use OpKind::*;
    #[allow(unreachable_patterns)] // the catch-all is for ops added to the IR later
    let rule = match kind {
        Conv => direct("Conv", WINDOW),
        ConvInteger => direct("ConvInteger", WINDOW),
        QLinearConv => custom(qlinear_conv),
        MatMul => direct("MatMul", &[]),
        MatMulInteger => direct("MatMulInteger", &[]),
        QLinearMatMul => custom(qlinear_matmul),
        Gemm => direct("Gemm", &["alpha", "beta", "transA", "transB"]),
        BatchNormalization => direct("BatchNormalization", &["epsilon"]),
        Relu => direct("Relu", &[]),
        Clip => custom(clip),
        LeakyRelu => direct("LeakyRelu", &["alpha"]),
        Sigmoid => direct("Sigmoid", &[]),
        Tanh => direct("Tanh", &[]),
        HardSigmoid => direct("HardSigmoid", &["alpha", "beta"]),
        HardSwish => Rule {
            since: 14,
            ..direct("HardSwish", &[])
        },
        Add => direct("Add", &[]),
        Sub => direct("Sub", &[]),
        Mul => direct("Mul", &[]),
        Div => direct("Div", &[]),
        Pow => direct("Pow", &[]),
        Sqrt => direct("Sqrt", &[]),
        Exp => direct("Exp", &[]),
        Log => direct("Log", &[]),
        Abs => direct("Abs", &[]),
        Neg => direct("Neg", &[]),
        Reciprocal => direct("Reciprocal", &[]),
        Floor => direct("Floor", &[]),
        Ceil => direct("Ceil", &[]),
        Round => direct("Round", &[]),
        Erf => direct("Erf", &[]),
        Sin => direct("Sin", &[]),
        Cos => direct("Cos", &[]),
        Min => direct("Min", &[]),
        Max => direct("Max", &[]),
        Mean => direct("Mean", &[]),
        Sum => direct("Sum", &[]),
        Mod => direct("Mod", &["fmod"]),
        Sign => direct("Sign", &[]),
        Equal => direct("Equal", &[]),
        Greater => direct("Greater", &[]),
        GreaterOrEqual => direct("GreaterOrEqual", &[]),
        Less => direct("Less", &[]),
        LessOrEqual => direct("LessOrEqual", &[]),
        Not => direct("Not", &[]),
        And => direct("And", &[]),
        Or => direct("Or", &[]),
        Xor => direct("Xor", &[]),
        Where => direct("Where", &[]),
        Gelu => Rule {
            since: 20,
            ..direct("Gelu", &["approximate"])
        },
        PRelu => direct("PRelu", &[]),
        Elu => direct("Elu", &["alpha"]),
        Selu => direct("Selu", &["alpha", "gamma"]),
        Softplus => direct("Softplus", &[]),
        Mish => Rule {
            since: 18,
            ..direct("Mish", &[])
        },
        Softsign => direct("Softsign", &[]),
        ThresholdedRelu => direct("ThresholdedRelu", &["alpha"]),
        Celu => direct("Celu", &["alpha"]),
        MaxPool => direct(
            "MaxPool",
            &["ceil_mode", "dilations", "kernel_shape", "pads", "strides"],
        ),
        AveragePool => custom(average_pool),
        GlobalAveragePool => direct("GlobalAveragePool", &[]),
        GlobalMaxPool => direct("GlobalMaxPool", &[]),
        Flatten => direct("Flatten", &["axis"]),
        Reshape => custom(reshape),
        Transpose => direct("Transpose", &["perm"]),
        Concat => direct("Concat", &["axis"]),
        Softmax => direct("Softmax", &["axis"]),
        Identity => direct("Identity", &[]),
        Dropout => direct("Dropout", &[]),
        Squeeze => custom(squeeze),
        Unsqueeze => custom(unsqueeze),
        Pad => custom(pad),
        QuantizeLinear => custom(quantize_linear),
        DequantizeLinear => custom(dequantize_linear),
        Shape => custom(shape),
        Size => direct("Size", &[]),
        Gather => direct("Gather", &["axis"]),
        Slice => direct("Slice", &[]),
        Expand => direct("Expand", &[]),
        Tile => direct("Tile", &[]),
        Range => direct("Range", &[]),
        Cast => custom(cast),
        Resize => custom(resize),
        DepthToSpace => direct("DepthToSpace", &["blocksize", "mode"]),
        SpaceToDepth => custom(space_to_depth),
        OneHot => direct("OneHot", &["axis"]),
        GatherElements => direct("GatherElements", &["axis"]),
        GatherND => direct("GatherND", &["batch_dims"]),
        ScatterND => custom(|ex, cx| scatter(ex, cx, "ScatterND", &[])),
        ScatterElements => custom(|ex, cx| scatter(ex, cx, "ScatterElements", &["axis"])),
        Trilu => Rule {
            since: 14,
            ..direct("Trilu", &["upper"])
        },
        NonZero => direct("NonZero", &[]),
        // Reductions, normalizations and NN ops. Reductions other than ReduceSum take their
        // axes as an operand from opset 18 (ReduceSum from 13); writing that form keeps one
        // spelling whatever else raises the opset.
        ReduceSum => custom(reduce),
        ReduceMean | ReduceMax | ReduceMin | ReduceProd | ReduceL1 | ReduceL2 | ReduceSumSquare
        | ReduceLogSum | ReduceLogSumExp => Rule {
            since: 18,
            ..custom(reduce)
        },
        ArgMax => direct("ArgMax", &["axis", "keepdims", "select_last_index"]),
        ArgMin => direct("ArgMin", &["axis", "keepdims", "select_last_index"]),
        CumSum => custom(cumsum),
        LayerNormalization => Rule {
            since: 17,
            ..direct("LayerNormalization", &["axis", "epsilon"])
        },
        InstanceNormalization => direct("InstanceNormalization", &["epsilon"]),
        GroupNormalization => Rule {
            since: 21,
            ..direct("GroupNormalization", &["epsilon", "num_groups"])
        },
        LpNormalization => direct("LpNormalization", &["axis", "p"]),
        LogSoftmax => direct("LogSoftmax", &["axis"]),
        Hardmax => direct("Hardmax", &["axis"]),
        ConvTranspose => custom(conv_transpose),
        LSTM | GRU | RNN => custom(recurrent),
        DynamicQuantizeLinear => {
            custom(|ex, cx| write_results(ex, cx, "DynamicQuantizeLinear", vec![]))
        }
        BlockDequantizeLinear => Rule {
            since: 21,
            ..custom(dequantize_blocks)
        },
        If | Loop | Scan => custom(control),
        _ => return None,
    };
    Some(rule)
}

/// The error for an op the table does not map.
fn unsupported(node: &str, kind: OpKind) -> Error {
    Error::Export {
        node: node.to_string(),
        op: kind.name().to_string(),
        message: format!("{kind} has no ONNX equivalent (ai.onnx opsets 13 to 21)"),
    }
}

/// The node being written: its operands' and result's exported names.
struct Cx<'a> {
    id: NodeId,
    node: &'a Node,
    op: &'a Op,
    /// The IR operands by slot.
    operands: Vec<Option<ValueId>>,
    /// Their exported names.
    inputs: Vec<Option<String>>,
    /// The name the op's ONNX node writes (the value's, or a fresh one before a fused
    /// activation).
    output: String,
}

impl Cx<'_> {
    fn error(&self, message: impl Into<String>) -> Error {
        Error::Export {
            node: self.node.name.clone(),
            op: self.op.kind.name().to_string(),
            message: message.into(),
        }
    }

    /// The node's (single) result.
    fn result(&self) -> ValueId {
        ValueId {
            node: self.id,
            output: 0,
        }
    }

    /// Operand `i`, which must be given: its value and exported name.
    fn operand(&self, i: usize) -> Result<(ValueId, String), Error> {
        match (
            self.operands.get(i).copied().flatten(),
            self.inputs.get(i).cloned().flatten(),
        ) {
            (Some(v), Some(name)) => Ok((v, name)),
            _ => Err(self.error(format!("operand {i} is missing"))),
        }
    }

    /// The canonical attribute `name` as an ONNX attribute.
    fn attr(&self, name: &str) -> Result<AttributeProto, Error> {
        let value = self
            .op
            .attrs
            .get(name)
            .ok_or_else(|| self.error(format!("missing attribute `{name}`")))?;
        Ok(attribute(name, value))
    }

    fn ints(&self, name: &str) -> Result<&[i64], Error> {
        self.op.attrs.ints(name).map_err(|e| self.error(e))
    }

    fn int(&self, name: &str) -> Result<i64, Error> {
        self.op.attrs.int(name).map_err(|e| self.error(e))
    }

    fn float(&self, name: &str) -> Result<f32, Error> {
        self.op.attrs.float(name).map_err(|e| self.error(e))
    }
}

/// Exporter state: names in use, the nodes and initializers written so far, and the opset
/// the graph needs.
struct Exporter<'g> {
    graph: &'g Graph,
    /// Names in the value namespace (values and initializers).
    used: HashSet<String>,
    /// Node names written.
    node_names: HashSet<String>,
    /// The exported name of every value.
    names: HashMap<ValueId, String>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// Scale and zero-point initializers already written for a value's parameters.
    quant_inputs: HashMap<ValueId, (String, String)>,
    opset: i64,
}

impl<'g> Exporter<'g> {
    fn new(graph: &'g Graph) -> Exporter<'g> {
        Exporter {
            graph,
            used: HashSet::new(),
            node_names: HashSet::new(),
            names: HashMap::new(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            quant_inputs: HashMap::new(),
            opset: BASE_OPSET,
        }
    }

    /// Raises the opset to at least `version`.
    fn need(&mut self, version: i64) {
        self.opset = self.opset.max(version);
    }

    /// 4-bit element types exist in ONNX from opset 21, and QuantizeLinear/DequantizeLinear
    /// take 16-bit integers from opset 21 too.
    fn need_dtype(&mut self, dtype: DType) {
        if matches!(dtype, DType::I4 | DType::U4 | DType::I16) {
            self.need(21);
        }
    }

    /// `base` if no value or initializer has that name yet, else the first free `base_N`.
    fn fresh(&mut self, base: &str) -> String {
        unique(&mut self.used, if base.is_empty() { "value" } else { base })
    }

    fn name_of(&self, v: ValueId) -> Result<String, Error> {
        self.names
            .get(&v)
            .cloned()
            .ok_or_else(|| model_error(format!("value {v:?} is not in the graph")))
    }

    fn graph(&mut self) -> Result<GraphProto, Error> {
        let count = self.graph.inputs().len();
        self.body(count)
    }

    /// The graph with its first `formal` inputs declared as inputs; the others are named
    /// already (a body's captured values, named as the enclosing graph's).
    fn body(&mut self, formal: usize) -> Result<GraphProto, Error> {
        let graph = self.graph;
        let order = graph.topo_order()?;
        // Names first: graph inputs keep theirs, then every result in topological order.
        let values = graph
            .input_values()
            .into_iter()
            .take(formal)
            .chain(order.iter().flat_map(|&node| {
                let n = if matches!(graph.node(node).op, NodeOp::Input) {
                    0
                } else {
                    graph.node(node).outputs.len()
                };
                (0..n).map(move |output| ValueId { node, output })
            }));
        for v in values {
            let value = graph.value(v);
            self.need_dtype(value.ty.dtype);
            let name = self.fresh(&value.name);
            self.names.insert(v, name);
        }
        let mut inputs = Vec::new();
        for v in graph.input_values().into_iter().take(formal) {
            inputs.push(value_info(&self.name_of(v)?, graph.value_type(v)));
        }
        let outputs_set: HashSet<ValueId> = graph.outputs().iter().copied().collect();
        for &id in &order {
            let node = graph.node(id);
            match &node.op {
                NodeOp::Input => {}
                NodeOp::Const(t) => {
                    let v = ValueId {
                        node: id,
                        output: 0,
                    };
                    if !graph.users(v).is_empty() || outputs_set.contains(&v) {
                        let name = self.name_of(v)?;
                        self.initializers.push(tensor_proto(&name, t));
                    }
                }
                NodeOp::Apply(op) => self.node(id, node, op)?,
            }
        }
        let mut outputs = Vec::new();
        let mut seen = HashSet::new();
        for &v in graph.outputs() {
            let mut name = self.name_of(v)?;
            if !seen.insert(v) {
                // The same value listed twice: ONNX output names are distinct, so copy it.
                let copy = self.fresh(&name);
                let node_name = unique(&mut self.node_names, &format!("{copy}_output"));
                self.nodes.push(node_proto(
                    &node_name,
                    "Identity",
                    vec![name],
                    &copy,
                    vec![],
                ));
                name = copy;
            }
            outputs.push(value_info(&name, graph.value_type(v)));
        }
        Ok(GraphProto {
            name: if graph.name.is_empty() {
                "graph".to_string()
            } else {
                graph.name.clone()
            },
            node: std::mem::take(&mut self.nodes),
            initializer: std::mem::take(&mut self.initializers),
            input: inputs,
            output: outputs,
            ..Default::default()
        })
    }

    /// Writes one IR node (and its fused activation).
    fn node(&mut self, id: NodeId, node: &Node, op: &Op) -> Result<(), Error> {
        let rule = rule(op.kind).ok_or_else(|| unsupported(&node.name, op.kind))?;
        self.need(rule.since);
        let operands = self.graph.node_inputs(id);
        let inputs = operands
            .iter()
            .map(|v| v.map(|v| self.name_of(v)).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let mut cx = Cx {
            id,
            node,
            op,
            operands,
            inputs,
            output: String::new(),
        };
        if node.outputs.len() != 1
            && qlift_ir::Cell::of(op.kind).is_none()
            && !op.kind.has_subgraphs()
            && op.kind != OpKind::DynamicQuantizeLinear
        {
            return Err(cx.error(format!(
                "has {} results; ONNX ops written by qlift have one",
                node.outputs.len()
            )));
        }
        let result = self.name_of(ValueId {
            node: id,
            output: 0,
        })?;
        let fused = op.fused_activation().map_err(|e| cx.error(e))?;
        if fused.is_some() && !op.kind.takes_fused_activation() {
            return Err(cx.error("cannot carry a fused activation"));
        }
        // A clamp to [-inf, inf] is no clamp.
        let fused = fused.filter(|&(lo, hi)| lo != f32::NEG_INFINITY || hi != f32::INFINITY);
        cx.output = if fused.is_some() {
            self.fresh(&format!("{result}_preact"))
        } else {
            result.clone()
        };
        match rule.write {
            Write::Direct(op_type, attrs) => {
                let attrs = attrs
                    .iter()
                    .map(|a| cx.attr(a))
                    .collect::<Result<Vec<_>, _>>()?;
                let inputs = cx
                    .inputs
                    .iter()
                    .map(|i| i.clone().unwrap_or_default())
                    .collect();
                self.emit(&cx, op_type, inputs, attrs);
            }
            Write::Custom(write) => write(self, &cx)?,
        }
        if let Some((lo, hi)) = fused {
            let dtype = node.outputs[0].ty.dtype;
            let base = if node.name.is_empty() {
                result.clone()
            } else {
                node.name.clone()
            };
            if lo == 0.0 && hi == f32::INFINITY {
                let name = unique(&mut self.node_names, &format!("{base}_relu"));
                self.nodes.push(node_proto(
                    &name,
                    "Relu",
                    vec![cx.output.clone()],
                    &result,
                    vec![],
                ));
            } else {
                let inputs = self.clip_inputs(&cx, cx.output.clone(), (lo, hi), dtype, &result)?;
                let name = unique(&mut self.node_names, &format!("{base}_clip"));
                self.nodes
                    .push(node_proto(&name, "Clip", inputs, &result, vec![]));
            }
        }
        Ok(())
    }

    /// Pushes the ONNX node for `cx` (trailing omitted inputs dropped).
    fn emit(&mut self, cx: &Cx, op_type: &str, inputs: Vec<String>, attrs: Vec<AttributeProto>) {
        let node = self.node_for(cx, op_type, inputs, attrs);
        self.nodes.push(node);
    }

    /// The ONNX node for `cx` under a unique name (the node's, or its result's when it has
    /// none), writing `cx.output`, with trailing omitted inputs dropped.
    fn node_for(
        &mut self,
        cx: &Cx,
        op_type: &str,
        mut inputs: Vec<String>,
        attrs: Vec<AttributeProto>,
    ) -> NodeProto {
        while inputs.last().is_some_and(String::is_empty) {
            inputs.pop();
        }
        let base = if cx.node.name.is_empty() {
            cx.output.clone()
        } else {
            cx.node.name.clone()
        };
        let name = unique(&mut self.node_names, &base);
        node_proto(&name, op_type, inputs, &cx.output, attrs)
    }

    /// Adds an initializer under a fresh name derived from `base`; returns the name.
    fn initializer(&mut self, base: &str, t: &Tensor) -> String {
        self.need_dtype(t.dtype());
        let name = self.fresh(base);
        self.initializers.push(tensor_proto(&name, t));
        name
    }

    /// An `i64` list as a 1-D initializer.
    fn ints_initializer(&mut self, base: &str, v: &[i64]) -> String {
        self.initializer(base, &Tensor::from_i64(&[v.len()], v.to_vec()))
    }

    /// A scalar initializer of `dtype` holding `value` (integers saturate to the dtype).
    fn scalar(&mut self, cx: &Cx, base: &str, dtype: DType, value: f64) -> Result<String, Error> {
        let t = match dtype.int_range() {
            None => Tensor::new(DType::F32, vec![], TensorData::F32(vec![value as f32])),
            Some((lo, hi)) => {
                Tensor::from_i64_values(dtype, vec![], vec![(value as i64).clamp(lo, hi)])
            }
        };
        let t = t.map_err(|e| cx.error(e))?;
        Ok(self.initializer(base, &t))
    }

    /// Clip's inputs: `x`, then min and max as scalars of `dtype` (`""` for an infinite one;
    /// integer bounds truncate as the interpreter's do).
    fn clip_inputs(
        &mut self,
        cx: &Cx,
        x: String,
        (lo, hi): (f32, f32),
        dtype: DType,
        result: &str,
    ) -> Result<Vec<String>, Error> {
        let mut inputs = vec![x];
        for (bound, infinite, what) in [(lo, f32::NEG_INFINITY, "min"), (hi, f32::INFINITY, "max")]
        {
            inputs.push(if bound == infinite {
                String::new()
            } else {
                self.scalar(cx, &format!("{result}_{what}"), dtype, bound as f64)?
            });
        }
        Ok(inputs)
    }

    /// The scale and zero-point initializers of value `v`'s quantization parameters (written
    /// once per value): a scalar scale per tensor, a 1-D one per axis; the zero point in the
    /// value's dtype. Returns their names and the per-channel axis.
    fn quant_params(
        &mut self,
        cx: &Cx,
        v: ValueId,
    ) -> Result<(String, String, Option<usize>), Error> {
        let value = self.graph.value(v);
        let ty = &value.ty;
        let q = ty.quant.as_ref().ok_or_else(|| {
            let ty = qlift_ir::text::type_to_string(ty);
            cx.error(format!(
                "value `{}` ({ty}) carries no quantization parameters",
                value.name
            ))
        })?;
        if let Some((scale, zero_point)) = self.quant_inputs.get(&v) {
            return Ok((scale.clone(), zero_point.clone(), q.axis));
        }
        if q.scale.len() != q.zero_point.len() || (q.axis.is_none() && q.scale.len() != 1) {
            let (scales, zero_points) = (q.scale.len(), q.zero_point.len());
            return Err(cx.error(format!(
                "value `{}` has {scales} scales and {zero_points} zero points",
                value.name
            )));
        }
        if !(ty.dtype.is_quantized() || ty.dtype == DType::I32) {
            return Err(cx.error(format!(
                "value `{}` of type {} cannot be quantized",
                value.name, ty.dtype
            )));
        }
        let shape = if q.axis.is_some() {
            vec![q.scale.len()]
        } else {
            vec![]
        };
        let scale = Tensor::new(DType::F32, shape.clone(), TensorData::F32(q.scale.clone()))
            .map_err(|e| cx.error(e))?;
        let zero_point = Tensor::from_i64_values(
            ty.dtype,
            shape,
            q.zero_point.iter().map(|&z| z as i64).collect(),
        )
        .map_err(|e| cx.error(format!("zero point of `{}`: {e}", value.name)))?;
        let base = self.name_of(v)?;
        let scale = self.initializer(&format!("{base}_scale"), &scale);
        let names = (
            scale,
            self.initializer(&format!("{base}_zero_point"), &zero_point),
        );
        self.quant_inputs.insert(v, names.clone());
        Ok((names.0, names.1, q.axis))
    }

    /// Scale and zero point of operand or result `v` of a QLinear op, whose layout must be one
    /// ONNX expresses there (`allowed` axes; `None` is per tensor).
    fn qlinear_params(
        &mut self,
        cx: &Cx,
        v: ValueId,
        what: &str,
        allowed: &[Option<usize>],
    ) -> Result<[String; 2], Error> {
        let (scale, zero_point, axis) = self.quant_params(cx, v)?;
        if !allowed.contains(&axis) {
            return Err(cx.error(format!(
                "{what} is quantized per axis {axis:?}, which the ONNX op cannot express"
            )));
        }
        Ok([scale, zero_point])
    }
}

/// `base`, or the first `base_N` not in `used`; records the name.
fn unique(used: &mut HashSet<String>, base: &str) -> String {
    if used.insert(base.to_string()) {
        return base.to_string();
    }
    let mut i = 1usize;
    loop {
        let name = format!("{base}_{i}");
        if used.insert(name.clone()) {
            return name;
        }
        i += 1;
    }
}

fn clip(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let (x, name) = cx.operand(0)?;
    let dtype = ex.graph.value_type(x).dtype;
    let inputs = ex.clip_inputs(
        cx,
        name,
        (cx.float("min")?, cx.float("max")?),
        dtype,
        &cx.output,
    )?;
    ex.emit(cx, "Clip", inputs, vec![]);
    Ok(())
}

/// AveragePool has `dilations` from opset 19; all-ones dilations are left out.
fn average_pool(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let (_, x) = cx.operand(0)?;
    let mut attrs = [
        "ceil_mode",
        "count_include_pad",
        "kernel_shape",
        "pads",
        "strides",
    ]
    .iter()
    .map(|a| cx.attr(a))
    .collect::<Result<Vec<_>, _>>()?;
    if cx.ints("dilations")?.iter().any(|&d| d != 1) {
        ex.need(19);
        attrs.push(cx.attr("dilations")?);
    }
    ex.emit(cx, "AveragePool", vec![x], attrs);
    Ok(())
}

/// Shape's `start`/`end` exist from opset 15; they are written only when they cut the shape.
fn shape(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let (v, x) = cx.operand(0)?;
    let rank = ex.graph.value_type(v).shape.rank();
    let (start, end) = qlift_ir::shape_range(cx.int("start")?, cx.int("end")?, rank);
    let mut attrs = vec![];
    if (start, end) != (0, rank) {
        ex.need(15);
        attrs.extend([cx.attr("start")?, cx.attr("end")?]);
    }
    ex.emit(cx, "Shape", vec![x], attrs);
    Ok(())
}

/// Cast's target is ONNX's element type code.
fn cast(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let (_, x) = cx.operand(0)?;
    let to: DType = cx
        .op
        .attrs
        .str("to")
        .map_err(|e| cx.error(e))?
        .parse()
        .map_err(|e: String| cx.error(e))?;
    ex.need_dtype(to);
    let attr = attribute("to", &AttrValue::Int(dtype_code(to) as i64));
    ex.emit(cx, "Cast", vec![x], vec![attr]);
    Ok(())
}

/// Reshape's shape is an operand (written from the attribute, or passed on when it is
/// computed); `allowzero` exists from opset 14 and is written only when set.
fn reshape(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let (_, x) = cx.operand(0)?;
    let shape = match cx.op.attrs.get("shape") {
        Some(_) => ex.ints_initializer(&format!("{}_shape", cx.output), cx.ints("shape")?),
        None => cx.operand(1)?.1,
    };
    let mut attrs = vec![];
    if cx.int("allowzero")? != 0 {
        ex.need(14);
        attrs.push(cx.attr("allowzero")?);
    }
    ex.emit(cx, "Reshape", vec![x, shape], attrs);
    Ok(())
}

/// Squeeze's axes are an operand. Without axes ONNX removes every size-1 dimension, so a
/// Squeeze of no axes (a no-op) is written as Identity.
fn squeeze(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let (_, x) = cx.operand(0)?;
    let axes = cx.ints("axes")?;
    if axes.is_empty() {
        ex.emit(cx, "Identity", vec![x], vec![]);
    } else {
        let axes = ex.ints_initializer(&format!("{}_axes", cx.output), axes);
        ex.emit(cx, "Squeeze", vec![x, axes], vec![]);
    }
    Ok(())
}

fn unsqueeze(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let (_, x) = cx.operand(0)?;
    let axes = ex.ints_initializer(&format!("{}_axes", cx.output), cx.ints("axes")?);
    ex.emit(cx, "Unsqueeze", vec![x, axes], vec![]);
    Ok(())
}

/// Pad's pads (from the attribute, or the operand when computed) and fill value are
/// operands; the fill has the operand's dtype, and a quantized operand (which the IR pads
/// with real 0.0) is filled with its zero point. A mode other than constant is written.
fn pad(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let (v, x) = cx.operand(0)?;
    let ty = ex.graph.value_type(v).clone();
    let value = cx.float("value")?;
    let mode = cx.op.attrs.str("mode").map_err(|e| cx.error(e))?;
    let fill = match &ty.quant {
        _ if mode != "constant" => 0.0,
        None => value as f64,
        Some(q)
            if value == 0.0
                && q.zero_point.windows(2).all(|w| w[0] == w[1])
                && !q.zero_point.is_empty() =>
        {
            q.zero_point[0] as f64
        }
        Some(_) => {
            return Err(
                cx.error("a quantized operand can only be padded with 0.0 and one zero point")
            )
        }
    };
    let pads = match cx.op.attrs.get("pads") {
        Some(_) => ex.ints_initializer(&format!("{}_pads", cx.output), cx.ints("pads")?),
        None => cx.operand(1)?.1,
    };
    let mut attrs = vec![];
    if mode != "constant" {
        // wrap exists from opset 19.
        if mode == "wrap" {
            ex.need(19);
        }
        attrs.push(cx.attr("mode")?);
    }
    let inputs = if mode == "constant" {
        vec![
            x,
            pads,
            ex.scalar(cx, &format!("{}_value", cx.output), ty.dtype, fill)?,
        ]
    } else {
        vec![x, pads]
    };
    ex.emit(cx, "Pad", inputs, attrs);
    Ok(())
}

/// ScatterND and ScatterElements write `reduction` when it is not `none`: add and mul
/// exist from opset 16, max and min from 18.
fn scatter(ex: &mut Exporter, cx: &Cx, op_type: &str, names: &[&str]) -> Result<(), Error> {
    let mut attrs = names
        .iter()
        .map(|a| cx.attr(a))
        .collect::<Result<Vec<_>, _>>()?;
    match cx.op.attrs.str("reduction").map_err(|e| cx.error(e))? {
        "none" => {}
        r => {
            ex.need(if matches!(r, "add" | "mul") { 16 } else { 18 });
            attrs.push(cx.attr("reduction")?);
        }
    }
    let inputs = cx
        .inputs
        .iter()
        .map(|i| i.clone().unwrap_or_default())
        .collect();
    ex.emit(cx, op_type, inputs, attrs);
    Ok(())
}

/// SpaceToDepth has a mode only from opset 28, which the exporter does not write: DCR (the
/// only layout before) is written without it, CRD is refused.
fn space_to_depth(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let (_, x) = cx.operand(0)?;
    if cx.op.attrs.str("mode").map_err(|e| cx.error(e))? != "DCR" {
        return Err(cx.error(
            "SpaceToDepth in CRD mode exists from opset 28, later than the exporter writes",
        ));
    }
    ex.emit(cx, "SpaceToDepth", vec![x], vec![cx.attr("blocksize")?]);
    Ok(())
}

/// Resize: roi, scales and sizes stay operands (omitted ones as `""`); `axes`,
/// `antialias` and `keep_aspect_ratio_policy` exist from opset 18 and are written when they
/// differ from the defaults, `half_pixel_symmetric` from opset 19. `tf_half_pixel_for_nn`
/// left ONNX at opset 13 and cannot be written.
fn resize(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let (v, x) = cx.operand(0)?;
    let rank = ex.graph.value_type(v).shape.rank();
    let transform = cx
        .op
        .attrs
        .str("coordinate_transformation_mode")
        .map_err(|e| cx.error(e))?;
    match transform {
        "tf_half_pixel_for_nn" => return Err(cx.error(
            "coordinate_transformation_mode tf_half_pixel_for_nn exists only in opsets 11 and 12",
        )),
        "half_pixel_symmetric" => ex.need(19),
        _ => {}
    }
    let mut attrs = [
        "mode",
        "coordinate_transformation_mode",
        "nearest_mode",
        "cubic_coeff_a",
        "exclude_outside",
        "extrapolation_value",
    ]
    .iter()
    .map(|a| cx.attr(a))
    .collect::<Result<Vec<_>, _>>()?;
    let all_axes: Vec<i64> = (0..rank as i64).collect();
    let policy = cx
        .op
        .attrs
        .str("keep_aspect_ratio_policy")
        .map_err(|e| cx.error(e))?;
    if cx.int("antialias")? != 0 || policy != "stretch" || cx.ints("axes")? != all_axes.as_slice() {
        ex.need(18);
        attrs.extend([
            cx.attr("antialias")?,
            cx.attr("keep_aspect_ratio_policy")?,
            cx.attr("axes")?,
        ]);
    }
    let operand = |i: usize| cx.inputs.get(i).cloned().flatten().unwrap_or_default();
    ex.emit(
        cx,
        "Resize",
        vec![x, operand(1), operand(2), operand(3)],
        attrs,
    );
    Ok(())
}

/// A reduction's axes become its operand: an initializer from the `axes` attribute (an
/// empty one with `noop_with_empty_axes`, which is what an empty list means in the IR), or
/// the IR's own run-time operand.
fn reduce(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let (_, x) = cx.operand(0)?;
    let (axes, noop) = match cx.op.attrs.get("axes") {
        Some(_) => {
            let axes = cx.ints("axes")?;
            let noop = if axes.is_empty() {
                1
            } else {
                cx.int("noop_with_empty_axes")?
            };
            (
                ex.ints_initializer(&format!("{}_axes", cx.output), axes),
                noop,
            )
        }
        None => (cx.operand(1)?.1, cx.int("noop_with_empty_axes")?),
    };
    let attrs = vec![
        cx.attr("keepdims")?,
        attribute("noop_with_empty_axes", &AttrValue::Int(noop)),
    ];
    ex.emit(cx, cx.op.kind.name(), vec![x, axes], attrs);
    Ok(())
}

/// CumSum's axis is a scalar operand.
fn cumsum(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let (_, x) = cx.operand(0)?;
    let axis = ex.initializer(
        &format!("{}_axis", cx.output),
        &Tensor::from_i64(&[], vec![cx.int("axis")?]),
    );
    let attrs = vec![cx.attr("exclusive")?, cx.attr("reverse")?];
    ex.emit(cx, "CumSum", vec![x, axis], attrs);
    Ok(())
}

/// ConvTranspose's signed pads: a negative end pad (a result longer than the taps reach)
/// is ONNX's `output_padding`; a negative begin pad has no ONNX spelling.
fn conv_transpose(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let pads = cx.ints("pads")?;
    let r = pads.len() / 2;
    if pads[..r].iter().any(|&p| p < 0) {
        return Err(cx.error(format!(
            "pads {pads:?} begin before the first tap, which ONNX cannot express"
        )));
    }
    let mut onnx_pads = pads.to_vec();
    let mut output_padding = vec![0i64; r];
    for a in 0..r {
        if pads[a + r] < 0 {
            output_padding[a] = -pads[a + r];
            onnx_pads[a + r] = 0;
        }
    }
    let mut attrs = ["dilations", "group", "kernel_shape", "strides"]
        .iter()
        .map(|a| cx.attr(a))
        .collect::<Result<Vec<_>, _>>()?;
    attrs.push(attribute("pads", &AttrValue::Ints(onnx_pads)));
    if output_padding.iter().any(|&p| p != 0) {
        attrs.push(attribute(
            "output_padding",
            &AttrValue::Ints(output_padding),
        ));
    }
    let inputs = cx
        .inputs
        .iter()
        .map(|i| i.clone().unwrap_or_default())
        .collect();
    ex.emit(cx, "ConvTranspose", inputs, attrs);
    Ok(())
}

/// LSTM, GRU, RNN: ONNX's attributes (alphas and betas listed for the activations that
/// take them, in order; `clip` only when finite; `layout` 1 from opset 14), and a result name
/// for each result something reads (omitted ones left empty).
fn recurrent(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let r = qlift_ir::Recurrent::of(cx.op.kind, &cx.op.attrs).map_err(|e| cx.error(e))?;
    let names: Vec<&str> = cx
        .op
        .attrs
        .str("activations")
        .map_err(|e| cx.error(e))?
        .split(',')
        .collect();
    let takes = |name: &str| {
        qlift_ir::RECURRENT_ACTIVATIONS
            .iter()
            .find(|a| a.0 == name)
            .map_or((false, false), |a| (a.3, a.4))
    };
    let given = |attr: &str, beta: bool| -> Result<Vec<f32>, Error> {
        let all = cx.op.attrs.floats(attr).map_err(|e| cx.error(e))?;
        Ok(names
            .iter()
            .zip(all)
            .filter(|(n, _)| if beta { takes(n).1 } else { takes(n).0 })
            .map(|(_, &v)| v)
            .collect())
    };
    let (alpha, beta) = (
        given("activation_alpha", false)?,
        given("activation_beta", true)?,
    );
    let mut activations = AttributeProto {
        name: "activations".to_string(),
        ..Default::default()
    };
    activations.strings = names.iter().map(|n| n.as_bytes().to_vec()).collect();
    activations.type_ = AttributeType::STRINGS.into();
    let mut attrs = vec![cx.attr("direction")?, cx.attr("hidden_size")?, activations];
    if !alpha.is_empty() {
        attrs.push(attribute("activation_alpha", &AttrValue::Floats(alpha)));
    }
    if !beta.is_empty() {
        attrs.push(attribute("activation_beta", &AttrValue::Floats(beta)));
    }
    if let Some(clip) = r.clip {
        attrs.push(attribute("clip", &AttrValue::Float(clip)));
    }
    if r.batch_first {
        ex.need(14);
        attrs.push(cx.attr("layout")?);
    }
    match r.cell {
        qlift_ir::Cell::Lstm => attrs.push(cx.attr("input_forget")?),
        qlift_ir::Cell::Gru => attrs.push(cx.attr("linear_before_reset")?),
        qlift_ir::Cell::Rnn => {}
    }
    write_results(ex, cx, cx.op.kind.name(), attrs)
}

/// Writes the node as one `op_type` node with every result it has (a result nobody reads
/// left unnamed, trailing ones dropped), for the ops with several.
fn write_results(
    ex: &mut Exporter,
    cx: &Cx,
    op_type: &str,
    attrs: Vec<AttributeProto>,
) -> Result<(), Error> {
    let graph = ex.graph;
    let mut outputs = Vec::with_capacity(cx.node.outputs.len());
    for output in 0..cx.node.outputs.len() {
        let v = ValueId {
            node: cx.id,
            output,
        };
        let read = !graph.users(v).is_empty() || graph.outputs().contains(&v);
        outputs.push(if read { ex.name_of(v)? } else { String::new() });
    }
    while outputs.last().is_some_and(String::is_empty) {
        outputs.pop();
    }
    let inputs = cx
        .inputs
        .iter()
        .map(|i| i.clone().unwrap_or_default())
        .collect();
    let mut node = ex.node_for(cx, op_type, inputs, attrs);
    node.output = outputs;
    ex.nodes.push(node);
    Ok(())
}

/// BlockDequantizeLinear: opset 21's DequantizeLinear with `axis` and `block_size` (no zero
/// point: the values are symmetric).
fn dequantize_blocks(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let ((_, x), (_, scale)) = (cx.operand(0)?, cx.operand(1)?);
    let attrs = vec![cx.attr("axis")?, cx.attr("block_size")?];
    ex.emit(cx, "DequantizeLinear", vec![x, scale], attrs);
    Ok(())
}

/// If, Loop and Scan: each body a `GraphProto` in which the captured values (trailing
/// inputs in the IR) are references to the enclosing graph's values, as ONNX writes them,
/// and the node's operands without them. Names are unique across the model and its bodies
/// (ONNX's single assignment rule spans bodies).
fn control(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let arity = cx.inputs.len();
    let int = |name: &str| -> Result<usize, Error> {
        usize::try_from(cx.int(name)?).map_err(|_| cx.error(format!("{name} is negative")))
    };
    let first_capture = match cx.op.kind {
        OpKind::If => 1,
        _ => arity
            .checked_sub(int("captures")?)
            .ok_or_else(|| cx.error("more captures than operands"))?,
    };
    let captured: Vec<String> = cx.inputs[first_capture..]
        .iter()
        .map(|n| {
            n.clone()
                .ok_or_else(|| cx.error("a captured operand is missing"))
        })
        .collect::<Result<_, _>>()?;
    let mut attrs = Vec::new();
    for (name, body) in cx.op.attrs.graphs() {
        let mut sub = Exporter::new(body);
        sub.used = std::mem::take(&mut ex.used);
        sub.node_names = std::mem::take(&mut ex.node_names);
        let formal = body.inputs().len().saturating_sub(captured.len());
        for (v, outer) in body.input_values().into_iter().skip(formal).zip(&captured) {
            sub.names.insert(v, outer.clone());
        }
        let proto = sub.body(formal);
        ex.used = std::mem::take(&mut sub.used);
        ex.node_names = std::mem::take(&mut sub.node_names);
        let mut proto = proto.map_err(|e| cx.error(format!("in {name}: {e}")))?;
        proto.name = unique(&mut ex.node_names, &format!("{}_{name}", cx.node.name));
        ex.need(sub.opset);
        attrs.push(AttributeProto {
            name: name.to_string(),
            g: Some(proto).into(),
            type_: AttributeType::GRAPH.into(),
            ..Default::default()
        });
    }
    if cx.op.kind == OpKind::Scan {
        for name in [
            "num_scan_inputs",
            "scan_input_axes",
            "scan_input_directions",
            "scan_output_axes",
            "scan_output_directions",
        ] {
            attrs.push(cx.attr(name)?);
        }
    }
    let inputs: Vec<String> = cx.inputs[..first_capture]
        .iter()
        .map(|i| i.clone().unwrap_or_default())
        .collect();
    let outputs = (0..cx.node.outputs.len())
        .map(|output| {
            ex.name_of(ValueId {
                node: cx.id,
                output,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let base = if cx.node.name.is_empty() {
        outputs[0].clone()
    } else {
        cx.node.name.clone()
    };
    let name = unique(&mut ex.node_names, &base);
    let mut node = node_proto(&name, cx.op.kind.name(), inputs, "", attrs);
    node.output = outputs;
    ex.nodes.push(node);
    Ok(())
}

/// The `axis` attribute of a per-axis Q/DQ.
fn axis_attr(axis: Option<usize>) -> Vec<AttributeProto> {
    axis.map(|a| attribute("axis", &AttrValue::Int(a as i64)))
        .into_iter()
        .collect()
}

/// QuantizeLinear's scale and zero point come from its result's type.
fn quantize_linear(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    quantize_or_dequantize(ex, cx, "QuantizeLinear", cx.result())
}

/// DequantizeLinear's scale and zero point come from its operand's type.
fn dequantize_linear(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    quantize_or_dequantize(ex, cx, "DequantizeLinear", cx.operand(0)?.0)
}

/// `op_type` of the first operand with the scale, zero point and axis of `quantized`'s type.
fn quantize_or_dequantize(
    ex: &mut Exporter,
    cx: &Cx,
    op_type: &str,
    quantized: ValueId,
) -> Result<(), Error> {
    let (_, x) = cx.operand(0)?;
    let (scale, zero_point, axis) = ex.quant_params(cx, quantized)?;
    ex.emit(cx, op_type, vec![x, scale, zero_point], axis_attr(axis));
    Ok(())
}

/// QLinearConv: x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point,
/// and the bias when there is one. Weights may be quantized per output channel (axis 0).
fn qlinear_conv(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let ((xv, x), (wv, w)) = (cx.operand(0)?, cx.operand(1)?);
    let [xs, xz] = ex.qlinear_params(cx, xv, "the input", &[None])?;
    let [ws, wz] = ex.qlinear_params(cx, wv, "the weights", &[None, Some(0)])?;
    let [ys, yz] = ex.qlinear_params(cx, cx.result(), "the result", &[None])?;
    let bias = cx.inputs.get(2).cloned().flatten().unwrap_or_default();
    let attrs = WINDOW
        .iter()
        .map(|a| cx.attr(a))
        .collect::<Result<Vec<_>, _>>()?;
    ex.emit(
        cx,
        "QLinearConv",
        vec![x, xs, xz, w, ws, wz, ys, yz, bias],
        attrs,
    );
    Ok(())
}

/// QLinearMatMul: a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point.
/// A may be quantized per row, B per column.
fn qlinear_matmul(ex: &mut Exporter, cx: &Cx) -> Result<(), Error> {
    let ((av, a), (bv, b)) = (cx.operand(0)?, cx.operand(1)?);
    let rank = |v: ValueId| ex.graph.value_type(v).shape.rank();
    let (row, column) = (rank(av).checked_sub(2), rank(bv).checked_sub(1));
    let [a_s, a_z] = ex.qlinear_params(cx, av, "A", &[None, row])?;
    let [b_s, b_z] = ex.qlinear_params(cx, bv, "B", &[None, column])?;
    let [ys, yz] = ex.qlinear_params(cx, cx.result(), "the result", &[None])?;
    ex.emit(
        cx,
        "QLinearMatMul",
        vec![a, a_s, a_z, b, b_s, b_z, ys, yz],
        vec![],
    );
    Ok(())
}

fn attribute(name: &str, value: &AttrValue) -> AttributeProto {
    let mut a = AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    let kind = match value {
        AttrValue::Int(v) => {
            a.i = *v;
            AttributeType::INT
        }
        AttrValue::Float(v) => {
            a.f = *v;
            AttributeType::FLOAT
        }
        AttrValue::Ints(v) => {
            a.ints = v.clone();
            AttributeType::INTS
        }
        AttrValue::Floats(v) => {
            a.floats = v.clone();
            AttributeType::FLOATS
        }
        AttrValue::Str(v) => {
            a.s = v.as_bytes().to_vec();
            AttributeType::STRING
        }
        // Bodies are written by `control`, which knows their captured values.
        AttrValue::Graph(_) => AttributeType::UNDEFINED,
    };
    a.type_ = kind.into();
    a
}

fn node_proto(
    name: &str,
    op_type: &str,
    inputs: Vec<String>,
    output: &str,
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        name: name.to_string(),
        op_type: op_type.to_string(),
        input: inputs,
        output: vec![output.to_string()],
        attribute: attrs,
        ..Default::default()
    }
}

/// A tensor as an initializer: little-endian `raw_data`, 4-bit values packed two per byte
/// (low nibble first), as the importer reads them.
fn tensor_proto(name: &str, t: &Tensor) -> TensorProto {
    let bytes = t.to_le_bytes();
    let raw_data = match t.dtype() {
        DType::I4 | DType::U4 => bytes
            .chunks(2)
            .map(|c| (c[0] & 0xf) | (c.get(1).map_or(0, |b| (b & 0xf) << 4)))
            .collect(),
        _ => bytes,
    };
    TensorProto {
        name: name.to_string(),
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: dtype_code(t.dtype()),
        raw_data,
        ..Default::default()
    }
}

/// A graph input or output: element type and shape, the batch as the symbol `N`.
fn value_info(name: &str, ty: &TensorType) -> ValueInfoProto {
    let dim = ty
        .shape
        .dims()
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Batch => dimension::Value::DimParam("N".to_string()),
                Dim::Sym(s) => dimension::Value::DimParam(s.name()),
                // An extent nothing names: ONNX's unknown dimension.
                Dim::Dyn => return Dimension::default(),
            }),
            ..Default::default()
        })
        .collect();
    let tensor = type_proto::Tensor {
        elem_type: dtype_code(ty.dtype),
        shape: Some(TensorShapeProto {
            dim,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    ValueInfoProto {
        name: name.to_string(),
        type_: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(tensor)),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::tensor::dtype_of;

    #[test]
    fn every_onnx_op_has_a_rule_and_internal_ops_none() {
        let missing: Vec<&str> = OpKind::ALL
            .iter()
            .filter(|k| !k.is_internal() && rule(**k).is_none())
            .map(|k| k.name())
            .collect();
        assert!(missing.is_empty(), "no export rule for {missing:?}");
        assert!(OpKind::ALL
            .iter()
            .filter(|k| k.is_internal())
            .all(|k| rule(*k).is_none()));
    }

    /// The error an op without a rule (qlift's own integer ops) gets.
    #[test]
    fn an_op_without_a_rule_is_refused_naming_node_and_op() {
        let e = unsupported("layer3", OpKind::QConv);
        assert!(matches!(&e, Error::Export { node, op, .. } if node == "layer3" && op == "QConv"));
        let shown = e.to_string();
        assert!(
            shown.starts_with("cannot export node `layer3` (QConv) to ONNX: "),
            "{shown}"
        );
        assert!(shown.contains("has no ONNX equivalent"), "{shown}");
    }

    #[test]
    fn dtype_codes_invert_the_importers() {
        for d in DType::ALL {
            assert_eq!(dtype_of(dtype_code(d)), Some(d));
        }
    }

    #[test]
    fn names_are_made_unique() {
        let mut used = HashSet::new();
        assert_eq!(unique(&mut used, "x"), "x");
        assert_eq!(unique(&mut used, "x"), "x_1");
        used.insert("x_2".to_string());
        assert_eq!(unique(&mut used, "x"), "x_3");
    }

    #[test]
    fn ir_version_follows_the_opset() {
        assert_eq!([13, 14, 18, 19, 21].map(ir_version), [8, 8, 8, 9, 10]);
    }
}
