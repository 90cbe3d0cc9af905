//! The e-graph language: one e-node per IR node, with the op's attributes as node data.

use egg::{FromOp, Id, Language};
use qlift_ir::{Attrs, Op, OpKind, TensorType};
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// An op with its attributes (and, for ops whose result type is declared rather than
/// inferred, that type). Compared and hashed through a printed key, so floats compare
/// bit-exactly. A *wildcard* (no attributes) only appears in rule patterns: it matches the
/// op with any attributes.
#[derive(Clone, Debug)]
pub struct OpSym {
    /// The op kind.
    pub kind: OpKind,
    /// The attributes; `None` in a pattern's wildcard.
    pub attrs: Option<Attrs>,
    /// The declared result type of ops that need one (QuantizeLinear and the QLinear ops).
    pub declared: Option<TensorType>,
    key: String,
}

impl OpSym {
    /// The symbol of a concrete op.
    pub fn new(op: &Op, declared: Option<TensorType>) -> OpSym {
        let mut key = format!(
            "{:?}",
            op.attrs
                .0
                .iter()
                .map(|(k, v)| (k, attr_key(v)))
                .collect::<Vec<_>>()
        );
        if let Some(t) = &declared {
            key.push_str(&qlift_ir::text::type_to_string(t));
        }
        OpSym {
            kind: op.kind,
            attrs: Some(op.attrs.clone()),
            declared,
            key,
        }
    }

    /// The op it stands for (a wildcard has empty attributes).
    pub fn op(&self) -> Op {
        Op::new(self.kind, self.attrs.clone().unwrap_or_default())
    }

    fn is_wildcard(&self) -> bool {
        self.attrs.is_none()
    }
}

/// Attribute values with floats as bits, so that equal keys mean identical attributes.
fn attr_key(v: &qlift_ir::AttrValue) -> String {
    use qlift_ir::AttrValue::*;
    match v {
        Float(f) => format!("f{:x}", f.to_bits()),
        Floats(fs) => format!(
            "fs{:x?}",
            fs.iter().map(|f| f.to_bits()).collect::<Vec<_>>()
        ),
        other => format!("{other:?}"),
    }
}

impl PartialEq for OpSym {
    fn eq(&self, other: &OpSym) -> bool {
        self.kind == other.kind
            && self.key == other.key
            && self.is_wildcard() == other.is_wildcard()
    }
}
impl Eq for OpSym {}
impl Hash for OpSym {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        self.key.hash(state);
    }
}
impl PartialOrd for OpSym {
    fn partial_cmp(&self, other: &OpSym) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OpSym {
    fn cmp(&self, other: &OpSym) -> Ordering {
        (self.kind, &self.key, self.is_wildcard()).cmp(&(
            other.kind,
            &other.key,
            other.is_wildcard(),
        ))
    }
}

/// An e-node: a graph input, a constant, a missing optional operand, or an op.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QNode {
    /// Graph input number `n`.
    Input(usize),
    /// A constant, by its key in the analysis' constant table.
    Const(u64),
    /// An absent optional operand.
    Missing,
    /// An op applied to operands.
    Op(OpSym, Vec<Id>),
    /// Result `r` of the op of a multi-result node (LSTM's `Y_h`): the child's class holds
    /// the op itself, which has no type of its own.
    Result(usize, [Id; 1]),
}

/// What e-matching compares: the variant, the constant or input, the op kind (attributes
/// too unless one side is a pattern wildcard).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum QDiscriminant {
    /// See [`QNode::Input`].
    Input(usize),
    /// See [`QNode::Const`].
    Const(u64),
    /// See [`QNode::Missing`].
    Missing,
    /// See [`QNode::Op`].
    Op(OpKind),
    /// See [`QNode::Result`].
    Result(usize),
}

impl Language for QNode {
    type Discriminant = QDiscriminant;

    fn discriminant(&self) -> QDiscriminant {
        match self {
            QNode::Input(i) => QDiscriminant::Input(*i),
            QNode::Const(k) => QDiscriminant::Const(*k),
            QNode::Missing => QDiscriminant::Missing,
            QNode::Op(sym, _) => QDiscriminant::Op(sym.kind),
            QNode::Result(r, _) => QDiscriminant::Result(*r),
        }
    }

    fn matches(&self, other: &QNode) -> bool {
        match (self, other) {
            (QNode::Op(a, ac), QNode::Op(b, bc)) => {
                a.kind == b.kind
                    && ac.len() == bc.len()
                    && (a.is_wildcard() || b.is_wildcard() || a.key == b.key)
            }
            (a, b) => a == b,
        }
    }

    fn children(&self) -> &[Id] {
        match self {
            QNode::Op(_, c) => c,
            QNode::Result(_, c) => c,
            _ => &[],
        }
    }

    fn children_mut(&mut self) -> &mut [Id] {
        match self {
            QNode::Op(_, c) => c,
            QNode::Result(_, c) => c,
            _ => &mut [],
        }
    }
}

impl fmt::Display for QNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QNode::Input(i) => write!(f, "input{i}"),
            QNode::Const(k) => write!(f, "const{k:016x}"),
            QNode::Missing => f.write_str("_"),
            QNode::Op(sym, _) => f.write_str(sym.kind.name()),
            QNode::Result(r, _) => write!(f, "result{r}"),
        }
    }
}

/// Pattern syntax: `(Conv ?x ?w ?b)` matches a Conv with any attributes; `_` is a missing
/// operand.
impl FromOp for QNode {
    type Error = String;

    fn from_op(op: &str, children: Vec<Id>) -> Result<QNode, String> {
        if op == "_" && children.is_empty() {
            return Ok(QNode::Missing);
        }
        let kind: OpKind = op.parse()?;
        Ok(QNode::Op(
            OpSym {
                kind,
                attrs: None,
                declared: None,
                key: String::new(),
            },
            children,
        ))
    }
}
