//! The conversion driver: values and constants by name, the node loop, and the context
//! each op converter works through.

use super::ops::{Converter, Registry};
use super::tensor::{dtype_name, dtype_of, tensor_from_proto};
use super::{load, ImportOptions, InputDim, Limits};
use crate::{Error, UnsupportedOp};
use onnx_protobuf::{ModelProto, NodeProto, ValueInfoProto};
use qlift_ir::{
    verify, AttrValue, Attrs, DType, Dim, Graph, Op, QuantParams, Shape, Symbol, Tensor,
    TensorType, Value, ValueId,
};
use std::collections::{HashMap, HashSet};
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
    /// How many nodes of each constant exist (one per distinct quantization).
    copies: HashMap<String, usize>,
    /// Every value name in the graph, so that fresh names are found without a scan.
    names: HashSet<String>,
    /// Shared storage: equal constants are stored once.
    by_digest: HashMap<u64, Arc<Tensor>>,
    total_bytes: u64,
    limits: Limits,
    /// Types and values as each node is built: shape arithmetic tracked, constants folded.
    folder: qlift_ir::Folder,
    /// For a body: the values of the enclosing scopes it may read (see [`Scope`]).
    outer: Option<Scope>,
    /// For a body: the enclosing values it reads, in the order they became its trailing
    /// inputs (the node passes them as its trailing operands).
    captures: Vec<String>,
    /// How many bodies enclose this graph (0 for the model's graph).
    depth: usize,
    model_dir: Option<std::path::PathBuf>,
}

/// What a body sees of the graphs around it: every value by name with its type (ONNX lets a
/// body read any of them), and the constants, which a body copies instead of capturing.
#[derive(Clone, Default)]
struct Scope {
    values: HashMap<String, TensorType>,
}

impl Importer {
    /// An importer for a graph at nesting `depth` that may read `outer`.
    fn new(
        name: &str,
        limits: &Limits,
        model_dir: Option<&Path>,
        outer: Option<Scope>,
        depth: usize,
    ) -> Importer {
        Importer {
            graph: Graph::new(name),
            values: HashMap::new(),
            constants: HashMap::new(),
            materialized: HashMap::new(),
            copies: HashMap::new(),
            names: HashSet::new(),
            by_digest: HashMap::new(),
            total_bytes: 0,
            limits: limits.clone(),
            folder: qlift_ir::Folder::new(qlift_ir::Binding::default()),
            outer,
            captures: Vec::new(),
            depth,
            model_dir: model_dir.map(Path::to_path_buf),
        }
    }

    /// What a body of this graph may read: this graph's values and what it may read itself.
    fn scope(&self) -> Scope {
        let mut scope = self.outer.clone().unwrap_or_default();
        for (name, &v) in &self.values {
            scope
                .values
                .insert(name.clone(), self.graph.value_type(v).clone());
        }
        scope
    }

    /// The value `name` of an enclosing scope, made a trailing input of this body (once).
    fn capture(&mut self, name: &str) -> Option<ValueId> {
        let ty = self.outer.as_ref()?.values.get(name)?.clone();
        let v = self.graph.add_input(name, ty);
        self.names.insert(name.to_string());
        self.values.insert(name.to_string(), v);
        self.captures.push(name.to_string());
        Some(v)
    }

    /// Converts `nodes` in order, every unsupported op reported at once.
    fn convert_nodes(
        &mut self,
        nodes: &[NodeProto],
        opset: i64,
        model: Option<&ModelProto>,
    ) -> Result<(), Error> {
        let registry = Registry::new();
        let unsupported: Vec<UnsupportedOp> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                !is_default_domain(&n.domain) || registry.get(&n.op_type, opset).is_none()
            })
            .map(|(i, n)| UnsupportedOp {
                node: node_name(i, n),
                op_type: n.op_type.clone(),
                domain: n.domain.clone(),
                opset: if is_default_domain(&n.domain) {
                    opset
                } else {
                    model.map_or(0, |m| load::opset_of(m, &n.domain))
                },
            })
            .collect();
        if !unsupported.is_empty() {
            return Err(Error::Unsupported(unsupported));
        }
        for (i, node) in nodes.iter().enumerate() {
            let convert: Converter = registry.get(&node.op_type, opset).expect("checked above");
            let mut cx = NodeCx {
                imp: self,
                node,
                name: node_name(i, node),
                opset,
            };
            convert(&mut cx)?;
        }
        Ok(())
    }
}

/// A node's name, or one made of its op type and position when it has none.
fn node_name(i: usize, n: &NodeProto) -> String {
    if n.name.is_empty() {
        format!("{}_{i}", n.op_type)
    } else {
        n.name.clone()
    }
}

/// A body imported for a control-flow node: its graph and the enclosing values it reads
/// (its trailing inputs, the node's trailing operands).
pub(crate) struct Body {
    pub graph: Graph,
    pub captures: Vec<String>,
}

pub(crate) fn import_model(
    model: &ModelProto,
    model_dir: Option<&Path>,
    opts: &ImportOptions,
) -> Result<Graph, Error> {
    let opset = load::default_opset(model)?;
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Decode("the model has no graph".into()))?;
    if g.node.len() > opts.limits.max_nodes {
        return Err(Error::Limit {
            what: "node count".into(),
            value: g.node.len() as u64,
            limit: opts.limits.max_nodes as u64,
        });
    }
    let mut imp = Importer::new(&g.name, &opts.limits, model_dir, None, 0);
    for init in &g.initializer {
        let t = tensor_from_proto(init, model_dir, &opts.limits)?;
        imp.add_constant(&init.name, t)?;
    }
    let batch_names = batch_symbols(g, opts);
    for input in &g.input {
        if imp.constants.contains_key(&input.name) {
            continue; // an initializer listed as input (IR version < 4 style)
        }
        if let Some(t) = opts.constant_inputs.get(&input.name) {
            imp.add_constant(&input.name, t.clone())?;
            continue;
        }
        let ty = input_type(input, &batch_names, opts)?;
        let v = imp.graph.add_input(&input.name, ty);
        imp.names.insert(input.name.clone());
        imp.values.insert(input.name.clone(), v);
    }
    if let Some(name) = opts
        .input_shapes
        .keys()
        .find(|n| !g.input.iter().any(|i| &i.name == *n))
    {
        return Err(Error::Value {
            name: name.clone(),
            message: "--shape names no graph input".into(),
        });
    }
    imp.convert_nodes(&g.node, opset, Some(model))?;
    let mut outputs = Vec::with_capacity(g.output.len());
    for out in &g.output {
        let v = match imp.values.get(&out.name) {
            Some(&v) => v,
            None if imp.constants.contains_key(&out.name) => imp.constant_value(&out.name, None)?,
            None => {
                return Err(Error::Value {
                    name: out.name.clone(),
                    message: "graph output is never produced".into(),
                })
            }
        };
        outputs.push(v);
    }
    imp.graph.set_outputs(outputs)?;
    imp.graph.remove_dead_nodes();
    // An If whose condition is known now (a constant, an input given by `--freeze`) is
    // replaced by its branch, and what that makes constant is folded.
    if qlift_ir::subgraph_depth(&imp.graph) > 0 {
        imp.graph = qlift_ir::specialize(&imp.graph, &qlift_ir::Binding::default())?;
    }
    verify(&imp.graph)?;
    // No value larger than the tensor budget for one sample (batch 1), so that no later stage
    // allocates a buffer sized by a hostile attribute (say, huge pads).
    crate::limits::check_graph(&imp.graph, &opts.limits)?;
    Ok(imp.graph)
}

fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// The names of the symbolic dimensions that stand for the batch: those on axis 0 of a
/// graph input and on no other axis of any (an unnamed unknown axis 0 is the batch too).
/// A recurrent layer's `X: [seq, batch, input]` with `sequence_lens: [batch]` makes `seq`
/// the batch and `batch` a symbol: both on axis 0 would bind one extent to both.
fn batch_symbols(g: &onnx_protobuf::GraphProto, opts: &ImportOptions) -> HashSet<String> {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
    use onnx_protobuf::type_proto::Value as T;
    let mut names = HashSet::new();
    let mut elsewhere = HashSet::new();
    for input in &g.input {
        if opts.constant_inputs.contains_key(&input.name)
            || opts.input_shapes.contains_key(&input.name)
        {
            continue;
        }
        if let Some(T::TensorType(tt)) = input.type_.as_ref().and_then(|t| t.value.as_ref()) {
            for (axis, d) in tt
                .shape
                .as_ref()
                .map_or(&[][..], |s| &s.dim[..])
                .iter()
                .enumerate()
            {
                if let Some(D::DimParam(p)) = d.value.as_ref() {
                    if axis == 0 {
                        names.insert(p.clone())
                    } else {
                        elsewhere.insert(p.clone())
                    };
                }
            }
        }
    }
    names.retain(|n| !elsewhere.contains(n));
    names
}

/// A symbol name that prints and parses in the IR text: letters, digits and `_`, not
/// starting with a digit, never `N` (the batch).
fn symbol_name(raw: &str) -> String {
    let mut s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    if s == "N" {
        s.push('_');
    }
    s
}

/// The static type of a graph input: a supported dtype, extents from the model or from
/// `--shape`, and symbolic dimensions where the model names them: the batch on axis 0
/// (see [`batch_symbols`]), a named symbol elsewhere (`sequence`, `height`), an unnamed
/// unknown extent named after its input and axis (an unnamed unknown axis 0 is the batch).
fn input_type(
    v: &ValueInfoProto,
    batch_names: &HashSet<String>,
    opts: &ImportOptions,
) -> Result<TensorType, Error> {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
    use onnx_protobuf::type_proto::Value as T;
    let limits = &opts.limits;
    let bad = |message: String| Error::Value {
        name: v.name.clone(),
        message,
    };
    let Some(T::TensorType(tt)) = v.type_.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(bad("graph input is not a tensor".into()));
    };
    let dtype = dtype_of(tt.elem_type).ok_or_else(|| {
        bad(format!(
            "element type {} is not supported",
            dtype_name(tt.elem_type)
        ))
    })?;
    let shape = tt
        .shape
        .as_ref()
        .ok_or_else(|| bad("graph input has no shape; give one with --shape NAME=DIMS".into()))?;
    if shape.dim.len() > limits.max_rank {
        return Err(bad(format!(
            "rank {} is above the limit of {}",
            shape.dim.len(),
            limits.max_rank
        )));
    }
    let given = opts.input_shapes.get(&v.name);
    if let Some(given) = given {
        if given.len() != shape.dim.len() {
            return Err(bad(format!(
                "--shape gives {} dimensions, the input has {}",
                given.len(),
                shape.dim.len()
            )));
        }
    }
    let dims = shape
        .dim
        .iter()
        .enumerate()
        .map(|(axis, d)| {
            let declared = match &d.value {
                Some(D::DimValue(n)) if *n >= 0 => Some(
                    usize::try_from(*n).map_err(|_| bad(format!("dimension {n} is too large")))?,
                ),
                Some(D::DimValue(n)) => return Err(bad(format!("dimension {n} is negative"))),
                _ => None,
            };
            match given.map(|g| g[axis]) {
                Some(InputDim::Fixed(n)) if declared.is_some_and(|m| m != n) => Err(bad(format!(
                    "--shape gives {n} on axis {axis}, the model fixes it to {}",
                    declared.unwrap_or(0)
                ))),
                Some(InputDim::Fixed(n)) => Ok(Dim::Fixed(n)),
                Some(InputDim::Batch) if declared.is_some() => Err(bad(format!(
                    "--shape makes axis {axis} the batch, the model fixes it"
                ))),
                Some(InputDim::Batch) => Ok(Dim::Batch),
                None => Ok(match (declared, &d.value) {
                    (Some(n), _) => Dim::Fixed(n),
                    (None, Some(D::DimParam(p))) if batch_names.contains(p) => Dim::Batch,
                    (None, Some(D::DimParam(p))) if !p.is_empty() => {
                        Dim::Sym(Symbol::new(&symbol_name(p)))
                    }
                    (None, _) if axis == 0 => Dim::Batch,
                    (None, _) => Dim::Sym(Symbol::new(&symbol_name(&format!("{}_{axis}", v.name)))),
                }),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TensorType::new(dtype, Shape(dims)))
}

impl Importer {
    fn add_constant(&mut self, name: &str, t: Tensor) -> Result<(), Error> {
        let bytes = (t.len() * t.dtype().size_of()) as u64;
        self.total_bytes += bytes;
        if self.total_bytes > self.limits.max_total_bytes {
            return Err(Error::Limit {
                what: "total constant data".into(),
                value: self.total_bytes,
                limit: self.limits.max_total_bytes,
            });
        }
        let shared = self
            .by_digest
            .entry(t.digest())
            .or_insert_with(|| Arc::new(t))
            .clone();
        self.constants.insert(name.to_string(), shared);
        Ok(())
    }

    /// Infers the types of the node of `v` with what is known of its operands (constants,
    /// shape values tracked through `Shape` and the arithmetic on it) and folds it when its
    /// value is known (see [`qlift_ir::Folder`]), so that converters reading constant operands
    /// see them: the node then becomes a constant in place and its name a constant name.
    fn fold(&mut self, v: ValueId) -> Result<bool, Error> {
        if !self.folder.visit(&mut self.graph, v.node)? {
            return Ok(false);
        }
        let qlift_ir::NodeOp::Const(t) = &self.graph.node(v.node).op else {
            return Ok(false);
        };
        let name = self.graph.value(v).name.clone();
        if self.graph.value_type(v).quant.is_some() {
            // A quantized constant is not a plain constant operand (converters move quantization
            // parameters onto types themselves): it stays a value.
            return Ok(false);
        }
        self.constants.insert(name.clone(), t.clone());
        self.materialized.insert((name, None), v);
        Ok(true)
    }

    /// The graph node for constant `name` with the given quantization (created on first use).
    fn constant_value(&mut self, name: &str, quant: Option<QuantParams>) -> Result<ValueId, Error> {
        let key = (name.to_string(), quant.as_ref().map(|q| format!("{q:?}")));
        if let Some(&v) = self.materialized.get(&key) {
            return Ok(v);
        }
        let t = self.constants[name].clone();
        // One node per (constant, quantization); later ones get a numbered name.
        let n = self.copies.entry(name.to_string()).or_default();
        let node_name = if *n == 0 {
            name.to_string()
        } else {
            format!("{name}#{n}")
        };
        *n += 1;
        let v = self.graph.add_const(&node_name, t, quant);
        self.names.insert(node_name);
        self.folder.visit(&mut self.graph, v.node)?;
        self.materialized.insert(key, v);
        Ok(v)
    }
}

/// What a converter sees: the node, and operations that build the IR for it.
pub(crate) struct NodeCx<'a> {
    imp: &'a mut Importer,
    pub node: &'a NodeProto,
    pub name: String,
    /// The default-domain opset version the model imports (converters adapt older forms).
    pub opset: i64,
}

impl NodeCx<'_> {
    /// An error about this node.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::Node {
            node: self.name.clone(),
            op_type: self.node.op_type.clone(),
            message: message.into(),
        }
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

    /// A float-list attribute, if present.
    pub fn floats(&self, name: &str) -> Option<Vec<f32>> {
        self.attr(name).map(|a| a.floats.clone())
    }

    /// A string-list attribute, if present.
    pub fn strings(&self, name: &str) -> Option<Vec<String>> {
        self.attr(name).map(|a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
    }

    /// A string attribute, or `default`.
    pub fn string(&self, name: &str, default: &str) -> String {
        self.attr(name).map_or(default.to_string(), |a| {
            String::from_utf8_lossy(&a.s).into_owned()
        })
    }

    /// Refuses attributes the converter does not implement when set to a non-default value.
    pub fn refuse_int(&self, name: &str, default: i64, why: &str) -> Result<(), Error> {
        match self.attr(name) {
            Some(a) if a.i != default => {
                Err(self.error(format!("attribute {name}={} is not supported: {why}", a.i)))
            }
            _ => Ok(()),
        }
    }

    /// The name of operand `i`, if given (an empty name means an omitted optional operand).
    fn input_name(&self, i: usize) -> Option<&str> {
        self.node
            .input
            .get(i)
            .map(String::as_str)
            .filter(|n| !n.is_empty())
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
        self.input(i)?
            .ok_or_else(|| self.error(format!("operand {i} is required")))
    }

    /// Operand `i` as a graph value whose type carries `quant`: a constant gets a node with
    /// those parameters; a computed value without parameters gets them on its type; a
    /// value that already carries different ones is an error.
    pub fn input_quantized(
        &mut self,
        i: usize,
        quant: Option<QuantParams>,
    ) -> Result<Option<ValueId>, Error> {
        let Some(name) = self.input_name(i).map(str::to_string) else {
            return Ok(None);
        };
        self.named_quantized(&name, quant).map(Some)
    }

    /// The value called `name` in this graph or, in a body, in an enclosing one (which
    /// makes it a captured value).
    pub fn named(&mut self, name: &str) -> Result<ValueId, Error> {
        self.named_quantized(name, None)
    }

    fn named_quantized(
        &mut self,
        name: &str,
        quant: Option<QuantParams>,
    ) -> Result<ValueId, Error> {
        if self.imp.constants.contains_key(name) {
            return self.imp.constant_value(name, quant);
        }
        let v = match self.imp.values.get(name) {
            Some(&v) => v,
            None => self.imp.capture(name).ok_or_else(|| {
                self.error(format!("operand `{name}` is used before it is defined"))
            })?,
        };
        if let Some(q) = quant {
            let current = &self.imp.graph.value_type(v).quant;
            match current {
                None => self.imp.graph.node_mut(v.node).outputs[v.output].ty.quant = Some(q),
                Some(c) if *c == q => {}
                Some(_) => {
                    return Err(self.error(format!(
                        "operand `{name}` already has other quantization parameters"
                    )))
                }
            }
        }
        Ok(v)
    }

    /// Converts the nodes of body `attr` (an If branch, which takes no inputs) into this
    /// graph as if they were written here, and binds the node's results to the branch's:
    /// what an If whose condition is known at import time becomes. Converters after it then
    /// see the branch's constants as constants (shape arithmetic behind an If on a rank folds).
    pub fn inline_branch(&mut self, attr: &str) -> Result<(), Error> {
        let node: &NodeProto = self.node;
        let g = node
            .attribute
            .iter()
            .find(|a| a.name == attr)
            .and_then(|a| a.g.as_ref());
        let g = g.ok_or_else(|| self.error(format!("the body attribute `{attr}` is missing")))?;
        if !g.input.is_empty() {
            return Err(self.error(format!(
                "the branch `{attr}` declares inputs (an If branch takes none)"
            )));
        }
        for init in &g.initializer {
            let t = tensor_from_proto(init, self.imp.model_dir.as_deref(), &self.imp.limits)?;
            self.imp.add_constant(&init.name, t)?;
        }
        self.imp.convert_nodes(&g.node, self.opset, None)?;
        for (i, out) in g.output.iter().enumerate() {
            let Some(name) = node.output.get(i).filter(|n| !n.is_empty()) else {
                continue;
            };
            if let Some(t) = self.imp.constants.get(&out.name).cloned() {
                self.imp.constants.insert(name.clone(), t);
                continue;
            }
            let v = self.named(&out.name)?;
            self.emit_result(
                i,
                qlift_ir::OpKind::Identity,
                Attrs::new(),
                &[Some(v)],
                None,
            )?;
        }
        Ok(())
    }

    /// Imports the body in graph attribute `attr`: its inputs typed `formal` (the ones ONNX
    /// declares; captured values come after them), the values named in `preset` captured
    /// first and in that order (so that If's two branches take the same inputs), then every
    /// other enclosing value the body reads, as it reads it. Constants of the enclosing
    /// graphs are copied into the body.
    pub fn import_body(
        &mut self,
        attr: &str,
        formal: &[TensorType],
        preset: &[String],
    ) -> Result<Body, Error> {
        let node: &NodeProto = self.node;
        let g = node
            .attribute
            .iter()
            .find(|a| a.name == attr)
            .and_then(|a| a.g.as_ref());
        let g = g.ok_or_else(|| self.error(format!("the body attribute `{attr}` is missing")))?;
        if self.imp.depth + 1 > self.imp.limits.max_subgraph_depth {
            return Err(Error::Limit {
                what: format!(
                    "nesting of bodies at node `{}` ({})",
                    self.name, self.node.op_type
                ),
                value: (self.imp.depth + 1) as u64,
                limit: self.imp.limits.max_subgraph_depth as u64,
            });
        }
        if g.input.len() != formal.len() {
            return Err(self.error(format!(
                "the body `{attr}` declares {} inputs, {} expects {}",
                g.input.len(),
                self.node.op_type,
                formal.len()
            )));
        }
        if g.node.len() > self.imp.limits.max_nodes {
            return Err(Error::Limit {
                what: format!("node count of body `{attr}` of node `{}`", self.name),
                value: g.node.len() as u64,
                limit: self.imp.limits.max_nodes as u64,
            });
        }
        let mut child = Importer::new(
            &g.name,
            &self.imp.limits,
            self.imp.model_dir.as_deref(),
            Some(self.imp.scope()),
            self.imp.depth + 1,
        );
        // Constants are shared, not captured: the body folds with them as the graph does.
        child.constants = self.imp.constants.clone();
        child.by_digest = self.imp.by_digest.clone();
        for (input, ty) in g.input.iter().zip(formal) {
            let v = child.graph.add_input(&input.name, ty.clone());
            child.constants.remove(&input.name);
            child.names.insert(input.name.clone());
            child.values.insert(input.name.clone(), v);
        }
        for name in preset {
            if child.capture(name).is_none() {
                return Err(self.error(format!("`{name}` is not a value of an enclosing graph")));
            }
        }
        let in_body = |e: Error| match e {
            Error::Node {
                node,
                op_type,
                message,
            } => Error::Node {
                node: format!("{}/{attr}/{node}", self.name),
                op_type,
                message,
            },
            other => other,
        };
        for init in &g.initializer {
            let t = tensor_from_proto(init, self.imp.model_dir.as_deref(), &self.imp.limits)?;
            child.add_constant(&init.name, t)?;
            self.imp.total_bytes = self.imp.total_bytes.saturating_add(child.total_bytes);
            if self.imp.total_bytes > self.imp.limits.max_total_bytes {
                return Err(Error::Limit {
                    what: "total constant data".into(),
                    value: self.imp.total_bytes,
                    limit: self.imp.limits.max_total_bytes,
                });
            }
            child.total_bytes = 0;
        }
        child
            .convert_nodes(&g.node, self.opset, None)
            .map_err(in_body)?;
        let mut outputs = Vec::with_capacity(g.output.len());
        for out in &g.output {
            let mut cx = NodeCx {
                imp: &mut child,
                node: self.node,
                name: format!("{}/{attr}", self.name),
                opset: self.opset,
            };
            outputs.push(cx.named(&out.name).map_err(|_| {
                self.error(format!(
                    "body `{attr}` never produces its result `{}`",
                    out.name
                ))
            })?);
        }
        child.graph.set_outputs(outputs)?;
        child.graph.remove_dead_nodes();
        Ok(Body {
            graph: child.graph,
            captures: child.captures,
        })
    }

    /// Operand `i` as a constant tensor (`None` when omitted); an error naming the operand
    /// when it is computed at run time.
    pub fn constant(&self, i: usize) -> Result<Option<Arc<Tensor>>, Error> {
        let Some(name) = self.input_name(i) else {
            return Ok(None);
        };
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
        self.constant(i)?
            .map(|t| {
                t.to_i64_vec()
                    .map_err(|e| self.error(format!("operand {i}: {e}")))
            })
            .transpose()
    }

    /// Operand `i` as a constant scalar converted to f32 (any numeric dtype).
    pub fn constant_scalar(&self, i: usize) -> Result<Option<f32>, Error> {
        match self.constant(i)? {
            None => Ok(None),
            Some(t) if t.len() == 1 => Ok(Some(t.to_f32_vec()[0])),
            Some(t) => Err(self.error(format!(
                "operand {i} must be a scalar, it has shape {:?}",
                t.shape()
            ))),
        }
    }

    /// The static type of operand `i` (without creating a node for a constant).
    pub fn input_type(&mut self, i: usize) -> Result<TensorType, Error> {
        let name = self
            .input_name(i)
            .ok_or_else(|| self.error(format!("operand {i} is required")))?;
        if let Some(t) = self.imp.constants.get(name) {
            return Ok(TensorType::new(t.dtype(), Shape::fixed(t.shape())));
        }
        let v = self.required(i)?;
        Ok(self.imp.graph.value_type(v).clone())
    }

    /// Defines a constant result computed at import time (e.g. a Constant node).
    pub fn define_constant(&mut self, output: usize, t: Tensor) -> Result<(), Error> {
        let name = self
            .node
            .output
            .get(output)
            .ok_or_else(|| self.error("missing result"))?
            .clone();
        self.imp.add_constant(&name, t)
    }

    /// Emits one IR node whose result types are inferred, binding the node's ONNX results.
    pub fn emit(
        &mut self,
        kind: qlift_ir::OpKind,
        attrs: Attrs,
        inputs: &[Option<ValueId>],
    ) -> Result<(), Error> {
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
        self.emit_declared(
            kind,
            attrs,
            inputs,
            Some(TensorType::quantized(dtype, Shape::default(), quant)),
        )
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
            return Err(self.error(format!(
                "{} results are used; qlift supports only the first",
                used.len()
            )));
        }
        self.emit_result(0, kind, attrs, inputs, declared)
            .map(|_| ())
    }

    /// Emits one IR node computing the node's ONNX result `output` (ops whose results are
    /// computed separately, like Split's parts) and returns its value.
    pub fn emit_result(
        &mut self,
        output: usize,
        kind: qlift_ir::OpKind,
        attrs: Attrs,
        inputs: &[Option<ValueId>],
        declared: Option<TensorType>,
    ) -> Result<ValueId, Error> {
        let name = self
            .node
            .output
            .get(output)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| self.error(format!("result {output} is missing")))?
            .clone();
        let v = self.emit_value(&name, kind, attrs, inputs, declared)?;
        if !self.imp.constants.contains_key(&name) {
            self.imp.values.insert(name, v);
        }
        Ok(v)
    }

    /// Emits an IR node whose value is named `name` and not (yet) bound to an ONNX result:
    /// an intermediate step of a converter that expands one ONNX node into several.
    pub fn emit_value(
        &mut self,
        name: &str,
        kind: qlift_ir::OpKind,
        attrs: Attrs,
        inputs: &[Option<ValueId>],
        declared: Option<TensorType>,
    ) -> Result<ValueId, Error> {
        if self.imp.values.contains_key(name)
            || self.imp.constants.contains_key(name)
            || self.imp.names.contains(name)
        {
            return Err(self.error(format!("result `{name}` is produced twice")));
        }
        let ty = declared.unwrap_or_else(|| TensorType::new(DType::F32, Shape::default()));
        let id = self.imp.graph.add_node(
            &self.name,
            Op::new(kind, attrs),
            inputs,
            vec![Value {
                name: name.to_string(),
                ty,
            }],
        )?;
        self.imp.names.insert(name.to_string());
        let v = ValueId {
            node: id,
            output: 0,
        };
        self.imp.fold(v)?;
        Ok(v)
    }

    /// Emits one IR node with `count` results for the node's ONNX results in order: those
    /// the model names are bound, the others (omitted or past the end) get fresh names and
    /// no readers.
    pub fn emit_all(
        &mut self,
        kind: qlift_ir::OpKind,
        attrs: Attrs,
        inputs: &[Option<ValueId>],
        count: usize,
    ) -> Result<Vec<ValueId>, Error> {
        if self.node.output.len() > count {
            return Err(self.error(format!(
                "has {} results, {kind} has {count}",
                self.node.output.len()
            )));
        }
        let mut names = Vec::with_capacity(count);
        for i in 0..count {
            let name = match self.node.output.get(i).filter(|n| !n.is_empty()) {
                Some(n) => n.clone(),
                None => self.fresh_name(&format!("unused{i}")),
            };
            if self.imp.values.contains_key(&name)
                || self.imp.constants.contains_key(&name)
                || self.imp.names.contains(&name)
                || names.contains(&name)
            {
                return Err(self.error(format!("result `{name}` is produced twice")));
            }
            names.push(name);
        }
        let outputs = names
            .iter()
            .map(|n| Value {
                name: n.clone(),
                ty: TensorType::new(DType::F32, Shape::default()),
            })
            .collect();
        let id = self
            .imp
            .graph
            .add_node(&self.name, Op::new(kind, attrs), inputs, outputs)?;
        let values: Vec<ValueId> = (0..count)
            .map(|output| ValueId { node: id, output })
            .collect();
        self.imp.fold(values[0])?;
        for (i, name) in names.into_iter().enumerate() {
            self.imp.names.insert(name.clone());
            if self.has_output(i) {
                self.imp.values.insert(name, values[i]);
            }
        }
        Ok(values)
    }

    /// A fresh value name for an intermediate step of this node (`{result}/{what}`).
    pub fn fresh_name(&self, what: &str) -> String {
        let base = format!(
            "{}/{what}",
            self.node
                .output
                .first()
                .map_or(self.name.as_str(), String::as_str)
        );
        let mut name = base.clone();
        let mut n = 1;
        while self.imp.values.contains_key(&name)
            || self.imp.constants.contains_key(&name)
            || self.imp.names.contains(&name)
        {
            name = format!("{base}_{n}");
            n += 1;
        }
        name
    }

    /// A constant made by the converter (an attribute of an old opset turned operand), as a
    /// graph value named after this node.
    pub fn new_constant(&mut self, what: &str, t: Tensor) -> Result<ValueId, Error> {
        let name = self.fresh_name(what);
        self.imp.add_constant(&name, t)?;
        self.imp.constant_value(&name, None)
    }

    /// Whether ONNX result `output` is used (named).
    pub fn has_output(&self, output: usize) -> bool {
        self.node.output.get(output).is_some_and(|n| !n.is_empty())
    }
}

/// Builder helpers for canonical attributes.
pub(crate) fn ints(v: Vec<i64>) -> AttrValue {
    AttrValue::Ints(v)
}
