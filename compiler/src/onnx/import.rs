//! The conversion driver: values and constants by name, the node loop, and the context
//! each op converter works through.

use super::ops::{Converter, Registry};
use super::tensor::{dtype_name, dtype_of, tensor_from_proto};
use super::{load, ImportOptions, Limits};
use crate::{Error, UnsupportedOp};
use onnx_protobuf::{ModelProto, NodeProto, ValueInfoProto};
use qlift_ir::{
    infer_node_types, verify, AttrValue, Attrs, DType, Dim, Graph, Op, QuantParams, Shape, Tensor, TensorType, Value,
    ValueId,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Importer state shared by all converters.
pub(crate) struct Importer {
    pub graph: Graph,
    /// Values produced so far, by ONNX name.
    values: HashMap<String, ValueId>,
    /// Constants (initializers, Constant nodes, frozen inputs) by ONNX name; they become
    /// graph nodes when first used, once per distinct quantization.
    constants: HashMap<String, Arc<Tensor>>,
    materialized: HashMap<(String, Option<String>), ValueId>,
    /// Shared storage: equal constants are stored once.
    by_digest: HashMap<u64, Arc<Tensor>>,
    total_bytes: u64,
    limits: Limits,
}

pub(crate) fn import_model(model: &ModelProto, model_dir: Option<&Path>, opts: &ImportOptions) -> Result<Graph, Error> {
    let opset = load::default_opset(model)?;
    let g = model.graph.as_ref().ok_or_else(|| Error::Decode("the model has no graph".into()))?;
    if g.node.len() > opts.limits.max_nodes {
        return Err(Error::Limit { what: "node count".into(), value: g.node.len() as u64, limit: opts.limits.max_nodes as u64 });
    }
    let registry = Registry::new();
    let node_name = |i: usize, n: &NodeProto| if n.name.is_empty() { format!("{}_{i}", n.op_type) } else { n.name.clone() };
    // Every unsupported op at once.
    let unsupported: Vec<UnsupportedOp> = g
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| !is_default_domain(&n.domain) || registry.get(&n.op_type).is_none())
        .map(|(i, n)| UnsupportedOp {
            node: node_name(i, n),
            op_type: n.op_type.clone(),
            domain: n.domain.clone(),
            opset: if is_default_domain(&n.domain) { opset } else { load::opset_of(model, &n.domain) },
        })
        .collect();
    if !unsupported.is_empty() {
        return Err(Error::Unsupported(unsupported));
    }
    let mut imp = Importer {
        graph: Graph::new(&g.name),
        values: HashMap::new(),
        constants: HashMap::new(),
        materialized: HashMap::new(),
        by_digest: HashMap::new(),
        total_bytes: 0,
        limits: opts.limits.clone(),
    };
    for init in &g.initializer {
        let t = tensor_from_proto(init, model_dir, &opts.limits)?;
        imp.add_constant(&init.name, t)?;
    }
    for input in &g.input {
        if imp.constants.contains_key(&input.name) {
            continue; // an initializer listed as input (IR version < 4 style)
        }
        if let Some(t) = opts.constant_inputs.get(&input.name) {
            imp.add_constant(&input.name, t.clone())?;
            continue;
        }
        let ty = input_type(input, &opts.limits)?;
        let v = imp.graph.add_input(&input.name, ty);
        imp.values.insert(input.name.clone(), v);
    }
    for (i, node) in g.node.iter().enumerate() {
        let convert: Converter = registry.get(&node.op_type).expect("checked above");
        let mut cx = NodeCx { imp: &mut imp, node, name: node_name(i, node) };
        convert(&mut cx)?;
    }
    let mut outputs = Vec::with_capacity(g.output.len());
    for out in &g.output {
        let v = match imp.values.get(&out.name) {
            Some(&v) => v,
            None if imp.constants.contains_key(&out.name) => imp.constant_value(&out.name, None)?,
            None => return Err(Error::Value { name: out.name.clone(), message: "graph output is never produced".into() }),
        };
        outputs.push(v);
    }
    imp.graph.set_outputs(outputs)?;
    imp.graph.remove_dead_nodes();
    verify(&imp.graph)?;
    // No value larger than the tensor budget for one sample (batch 1), so that no later stage
    // allocates a buffer sized by a hostile attribute (say, huge pads).
    crate::limits::check_graph(&imp.graph, &opts.limits)?;
    Ok(imp.graph)
}

fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// The static type of a graph input: supported dtype, and a symbolic (or unknown) dimension
/// only on axis 0, where it becomes the batch.
fn input_type(v: &ValueInfoProto, limits: &Limits) -> Result<TensorType, Error> {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
    use onnx_protobuf::type_proto::Value as T;
    let bad = |message: String| Error::Value { name: v.name.clone(), message };
    let Some(T::TensorType(tt)) = v.type_.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(bad("graph input is not a tensor".into()));
    };
    let dtype = dtype_of(tt.elem_type).ok_or_else(|| bad(format!("element type {} is not supported", dtype_name(tt.elem_type))))?;
    let shape = tt.shape.as_ref().ok_or_else(|| bad("graph input has no shape; qlift compiles static shapes".into()))?;
    if shape.dim.len() > limits.max_rank {
        return Err(bad(format!("rank {} is above the limit of {}", shape.dim.len(), limits.max_rank)));
    }
    let dims = shape
        .dim
        .iter()
        .enumerate()
        .map(|(axis, d)| match &d.value {
            Some(D::DimValue(n)) if *n >= 0 => usize::try_from(*n).map(Dim::Fixed).map_err(|_| bad(format!("dimension {n} is too large"))),
            _ if axis == 0 => Ok(Dim::Batch),
            Some(D::DimParam(p)) => Err(bad(format!("symbolic dimension `{p}` on axis {axis}: only axis 0 (the batch) may be symbolic"))),
            _ => Err(bad(format!("dimension {axis} is unknown: only axis 0 (the batch) may be symbolic"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TensorType::new(dtype, Shape(dims)))
}

impl Importer {
    fn add_constant(&mut self, name: &str, t: Tensor) -> Result<(), Error> {
        let bytes = (t.len() * t.dtype().size_of()) as u64;
        self.total_bytes += bytes;
        if self.total_bytes > self.limits.max_total_bytes {
            return Err(Error::Limit { what: "total constant data".into(), value: self.total_bytes, limit: self.limits.max_total_bytes });
        }
        let shared = self.by_digest.entry(t.digest()).or_insert_with(|| Arc::new(t)).clone();
        self.constants.insert(name.to_string(), shared);
        Ok(())
    }

    /// The graph node for constant `name` with the given quantization (created on first use).
    fn constant_value(&mut self, name: &str, quant: Option<QuantParams>) -> Result<ValueId, Error> {
        let key = (name.to_string(), quant.as_ref().map(|q| format!("{q:?}")));
        if let Some(&v) = self.materialized.get(&key) {
            return Ok(v);
        }
        let t = self.constants[name].clone();
        // One node per (constant, quantization); later ones get a numbered name.
        let n = self.materialized.keys().filter(|(k, _)| k == name).count();
        let node_name = if n == 0 { name.to_string() } else { format!("{name}#{n}") };
        let v = self.graph.add_const(&node_name, t, quant);
        self.materialized.insert(key, v);
        Ok(v)
    }
}

/// What a converter sees: the node, and operations that build the IR for it.
pub(crate) struct NodeCx<'a> {
    imp: &'a mut Importer,
    pub node: &'a NodeProto,
    pub name: String,
}

impl NodeCx<'_> {
    /// An error about this node.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::Node { node: self.name.clone(), op_type: self.node.op_type.clone(), message: message.into() }
    }

    fn attr(&self, name: &str) -> Option<&onnx_protobuf::AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    /// An integer attribute, or `default`.
    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i)
    }

    /// A float attribute, or `default`.
    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map_or(default, |a| a.f)
    }

    /// An integer-list attribute, if present.
    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    /// A string attribute, or `default`.
    pub fn string(&self, name: &str, default: &str) -> String {
        self.attr(name).map_or(default.to_string(), |a| String::from_utf8_lossy(&a.s).into_owned())
    }

    /// Refuses attributes the converter does not implement when set to a non-default value.
    pub fn refuse_int(&self, name: &str, default: i64, why: &str) -> Result<(), Error> {
        match self.attr(name) {
            Some(a) if a.i != default => Err(self.error(format!("attribute {name}={} is not supported: {why}", a.i))),
            _ => Ok(()),
        }
    }

    /// The name of operand `i`, if given (an empty name means an omitted optional operand).
    fn input_name(&self, i: usize) -> Option<&str> {
        self.node.input.get(i).map(String::as_str).filter(|n| !n.is_empty())
    }

    /// Whether operand `i` is given.
    pub fn has_input(&self, i: usize) -> bool {
        self.input_name(i).is_some()
    }

    /// Operand `i` as a graph value (`None` when omitted).
    pub fn input(&mut self, i: usize) -> Result<Option<ValueId>, Error> {
        self.input_quantized(i, None)
    }

    /// Operand `i`, which must be given.
    pub fn required(&mut self, i: usize) -> Result<ValueId, Error> {
        self.input(i)?.ok_or_else(|| self.error(format!("operand {i} is required")))
    }

    /// Operand `i` as a graph value whose type carries `quant`: a constant gets a node with
    /// those parameters; a computed value without parameters gets them on its type; a
    /// value that already carries different ones is an error.
    pub fn input_quantized(&mut self, i: usize, quant: Option<QuantParams>) -> Result<Option<ValueId>, Error> {
        let Some(name) = self.input_name(i).map(str::to_string) else { return Ok(None) };
        if self.imp.constants.contains_key(&name) {
            return self.imp.constant_value(&name, quant).map(Some);
        }
        let v = *self.imp.values.get(&name).ok_or_else(|| self.error(format!("operand `{name}` is used before it is defined")))?;
        if let Some(q) = quant {
            let current = &self.imp.graph.value_type(v).quant;
            match current {
                None => self.imp.graph.node_mut(v.node).outputs[v.output].ty.quant = Some(q),
                Some(c) if *c == q => {}
                Some(_) => return Err(self.error(format!("operand `{name}` already has other quantization parameters"))),
            }
        }
        Ok(Some(v))
    }

    /// Operand `i` as a constant tensor (`None` when omitted); an error naming the operand
    /// when it is computed at run time.
    pub fn constant(&self, i: usize) -> Result<Option<Arc<Tensor>>, Error> {
        let Some(name) = self.input_name(i) else { return Ok(None) };
        match self.imp.constants.get(name) {
            Some(t) => Ok(Some(t.clone())),
            None => Err(Error::NonConstant {
                node: self.name.clone(),
                op_type: self.node.op_type.clone(),
                operand: name.to_string(),
            }),
        }
    }

    /// Operand `i` as a constant list of integers.
    pub fn constant_ints(&self, i: usize) -> Result<Option<Vec<i64>>, Error> {
        self.constant(i)?.map(|t| t.to_i64_vec().map_err(|e| self.error(format!("operand {i}: {e}")))).transpose()
    }

    /// Operand `i` as a constant scalar converted to f32 (any numeric dtype).
    pub fn constant_scalar(&self, i: usize) -> Result<Option<f32>, Error> {
        match self.constant(i)? {
            None => Ok(None),
            Some(t) if t.len() == 1 => Ok(Some(t.to_f32_vec()[0])),
            Some(t) => Err(self.error(format!("operand {i} must be a scalar, it has shape {:?}", t.shape()))),
        }
    }

    /// The static type of operand `i` (without creating a node for a constant).
    pub fn input_type(&mut self, i: usize) -> Result<TensorType, Error> {
        let name = self.input_name(i).ok_or_else(|| self.error(format!("operand {i} is required")))?;
        if let Some(t) = self.imp.constants.get(name) {
            return Ok(TensorType::new(t.dtype(), Shape::fixed(t.shape())));
        }
        let v = self.required(i)?;
        Ok(self.imp.graph.value_type(v).clone())
    }

    /// Defines a constant result computed at import time (e.g. a Constant node).
    pub fn define_constant(&mut self, output: usize, t: Tensor) -> Result<(), Error> {
        let name = self.node.output.get(output).ok_or_else(|| self.error("missing result"))?.clone();
        self.imp.add_constant(&name, t)
    }

    /// Emits one IR node whose result types are inferred, binding the node's ONNX results.
    pub fn emit(&mut self, kind: qlift_ir::OpKind, attrs: Attrs, inputs: &[Option<ValueId>]) -> Result<(), Error> {
        self.emit_declared(kind, attrs, inputs, None)
    }

    /// Emits one IR node whose (single) result has the given dtype and quantization
    /// parameters; its shape is inferred.
    pub fn emit_quantized(
        &mut self,
        kind: qlift_ir::OpKind,
        attrs: Attrs,
        inputs: &[Option<ValueId>],
        dtype: DType,
        quant: QuantParams,
    ) -> Result<(), Error> {
        self.emit_declared(kind, attrs, inputs, Some(TensorType::quantized(dtype, Shape::default(), quant)))
    }

    fn emit_declared(
        &mut self,
        kind: qlift_ir::OpKind,
        attrs: Attrs,
        inputs: &[Option<ValueId>],
        declared: Option<TensorType>,
    ) -> Result<(), Error> {
        let used: Vec<&String> = self.node.output.iter().filter(|o| !o.is_empty()).collect();
        if used.len() != 1 || self.node.output[0].is_empty() {
            return Err(self.error(format!("{} results are used; qlift supports only the first", used.len())));
        }
        let name = self.node.output[0].clone();
        if self.imp.values.contains_key(&name) || self.imp.constants.contains_key(&name) {
            return Err(self.error(format!("result `{name}` is produced twice")));
        }
        let ty = declared.unwrap_or_else(|| TensorType::new(DType::F32, Shape::default()));
        let id = self.imp.graph.add_node(&self.name, Op::new(kind, attrs), inputs, vec![Value { name: name.clone(), ty }])?;
        infer_node_types(&mut self.imp.graph, id)?;
        self.imp.values.insert(name, ValueId { node: id, output: 0 });
        Ok(())
    }
}

/// Builder helpers for canonical attributes.
pub(crate) fn ints(v: Vec<i64>) -> AttrValue {
    AttrValue::Ints(v)
}
