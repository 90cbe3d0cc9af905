//! Node attributes.

use std::collections::BTreeMap;
use std::sync::Arc;

/// One attribute value. The importer normalizes ONNX attributes (defaults filled in,
/// `auto_pad` resolved to explicit pads, constant operands such as Reshape's shape moved
/// here), so passes and back ends read one canonical form.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// A single integer.
    Int(i64),
    /// A single float.
    Float(f32),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A list of floats.
    Floats(Vec<f32>),
    /// A string.
    Str(String),
    /// A graph: the body of a control-flow op (If's branches, Loop's and Scan's body). It
    /// is self-contained: every value it reads from the enclosing graph is one of its inputs
    /// (see `ops/control.rs`), so the enclosing graph's edges show every dependency.
    Graph(Arc<crate::Graph>),
}

/// Attributes by name, kept sorted so that printing is deterministic.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Attrs(pub BTreeMap<String, AttrValue>);

impl Attrs {
    /// No attributes.
    pub fn new() -> Attrs {
        Attrs::default()
    }

    /// Builder-style insertion.
    pub fn with(mut self, name: &str, value: AttrValue) -> Attrs {
        self.0.insert(name.to_string(), value);
        self
    }

    /// Sets an attribute.
    pub fn set(&mut self, name: &str, value: AttrValue) {
        self.0.insert(name.to_string(), value);
    }

    /// Raw access.
    pub fn get(&self, name: &str) -> Option<&AttrValue> {
        self.0.get(name)
    }

    /// An integer attribute, or an error naming it.
    pub fn int(&self, name: &str) -> Result<i64, String> {
        match self.0.get(name) {
            Some(AttrValue::Int(v)) => Ok(*v),
            other => Err(Self::wrong(name, "an integer", other)),
        }
    }

    /// A float attribute, or an error naming it.
    pub fn float(&self, name: &str) -> Result<f32, String> {
        match self.0.get(name) {
            Some(AttrValue::Float(v)) => Ok(*v),
            other => Err(Self::wrong(name, "a float", other)),
        }
    }

    /// An integer-list attribute, or an error naming it.
    pub fn ints(&self, name: &str) -> Result<&[i64], String> {
        match self.0.get(name) {
            Some(AttrValue::Ints(v)) => Ok(v),
            other => Err(Self::wrong(name, "a list of integers", other)),
        }
    }

    /// A float-list attribute, or an error naming it.
    pub fn floats(&self, name: &str) -> Result<&[f32], String> {
        match self.0.get(name) {
            Some(AttrValue::Floats(v)) => Ok(v),
            other => Err(Self::wrong(name, "a list of floats", other)),
        }
    }

    /// A string attribute, or an error naming it.
    pub fn str(&self, name: &str) -> Result<&str, String> {
        match self.0.get(name) {
            Some(AttrValue::Str(v)) => Ok(v),
            other => Err(Self::wrong(name, "a string", other)),
        }
    }

    /// A graph attribute (a control-flow op's body), or an error naming it.
    pub fn graph(&self, name: &str) -> Result<&crate::Graph, String> {
        match self.0.get(name) {
            Some(AttrValue::Graph(g)) => Ok(g),
            other => Err(Self::wrong(name, "a graph", other)),
        }
    }

    /// The graph attributes (bodies), in name order.
    pub fn graphs(&self) -> impl Iterator<Item = (&str, &crate::Graph)> {
        self.0.iter().filter_map(|(k, v)| match v {
            AttrValue::Graph(g) => Some((k.as_str(), g.as_ref())),
            _ => None,
        })
    }

    /// An integer-list attribute converted to extents (each must be >= 0).
    pub fn usizes(&self, name: &str) -> Result<Vec<usize>, String> {
        self.ints(name)?
            .iter()
            .map(|&v| {
                usize::try_from(v).map_err(|_| format!("attribute `{name}` has negative entry {v}"))
            })
            .collect()
    }

    fn wrong(name: &str, want: &str, got: Option<&AttrValue>) -> String {
        match got {
            None => format!("missing attribute `{name}`"),
            Some(AttrValue::Graph(g)) => format!(
                "attribute `{name}` should be {want}, found graph `{}`",
                g.name
            ),
            Some(v) => format!("attribute `{name}` should be {want}, found {v:?}"),
        }
    }
}
