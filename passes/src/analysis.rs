//! The e-class analysis: every class's type, its value when it is a constant (constant
//! folding, as egg's `ConstantFold` example does it), and the name it had in the graph.

use crate::lang::QNode;
use egg::{Analysis, DidMerge, EGraph, Id};
use qlift_ir::{QuantParams, Shape, Tensor, TensorType};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

/// Largest result, in elements, that constant folding computes at compile time: folding
/// trades compile time and model size for run time, and a huge folded constant (say, an
/// expanded broadcast) would cost more than it saves.
pub const CONST_FOLD_MAX_ELEMENTS: usize = 1 << 22;

/// The e-graph qlift rewrites.
pub type QEGraph = EGraph<QNode, QAnalysis>;

/// A constant's value and how to read it.
#[derive(Clone, Debug, PartialEq)]
pub struct Constant {
    /// The elements.
    pub tensor: Arc<Tensor>,
    /// Quantization parameters of a quantized constant.
    pub quant: Option<QuantParams>,
}

impl Constant {
    /// The constant's static type.
    pub fn ty(&self) -> TensorType {
        TensorType {
            dtype: self.tensor.dtype(),
            shape: Shape::fixed(self.tensor.shape()),
            quant: self.quant.clone(),
        }
    }

    /// The key `QNode::Const` refers to it by: its content digest and quantization.
    pub fn key(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.tensor.digest().hash(&mut h);
        format!("{:?}", self.quant).hash(&mut h);
        h.finish()
    }
}

/// Facts about one e-class.
#[derive(Clone, Debug)]
pub struct ClassData {
    /// The type of the class's value (`None` for a missing operand, or for a node whose type
    /// could not be inferred, which the verifier then reports).
    pub ty: Option<TensorType>,
    /// The value, when every way of computing it is constant.
    pub constant: Option<Constant>,
    /// `(node name, value name)` from the graph, kept for the graph rebuilt from the e-graph.
    pub name: Option<(String, String)>,
    /// Whether the class is a graph output (a use that no parent e-node shows).
    pub output: bool,
}

/// The analysis state: graph input types and the constant table.
#[derive(Default)]
pub struct QAnalysis {
    /// Types of the graph inputs, by position.
    pub inputs: Vec<TensorType>,
    /// Constants by key.
    pub constants: HashMap<u64, Constant>,
}

impl QAnalysis {
    /// Registers a constant and returns its e-node.
    pub fn constant_node(&mut self, c: Constant) -> QNode {
        let key = c.key();
        self.constants.entry(key).or_insert(c);
        QNode::Const(key)
    }
}

/// Whether two types describe the same values, extents unknown on one side aside.
fn compatible(x: &TensorType, y: &TensorType) -> bool {
    x.dtype == y.dtype
        && x.quant == y.quant
        && x.shape.rank() == y.shape.rank()
        && x.shape
            .dims()
            .iter()
            .zip(y.shape.dims())
            .all(|(d, e)| d == e || *d == qlift_ir::Dim::Dyn || *e == qlift_ir::Dim::Dyn)
}

/// The result types of `op` on the classes `children`, from their types and constant values.
fn infer(
    egraph: &QEGraph,
    op: &qlift_ir::Op,
    children: &[Id],
    declared: &[TensorType],
) -> Option<Vec<TensorType>> {
    let types: Vec<Option<&TensorType>> = children
        .iter()
        .map(|c| egraph[*c].data.ty.as_ref())
        .collect();
    let constants: Vec<Option<&Tensor>> = children
        .iter()
        .map(|c| egraph[*c].data.constant.as_ref().map(|k| k.tensor.as_ref()))
        .collect();
    let values = qlift_ir::OperandValues {
        constants: &constants,
        symbolic: &[],
    };
    qlift_ir::infer_op_with(op, &types, &values, declared).ok()
}

impl Analysis<QNode> for QAnalysis {
    type Data = ClassData;

    fn make(egraph: &mut QEGraph, enode: &QNode, _id: Id) -> ClassData {
        let data = |ty, constant| ClassData {
            ty,
            constant,
            name: None,
            output: false,
        };
        match enode {
            QNode::Input(i) => data(egraph.analysis.inputs.get(*i).cloned(), None),
            QNode::Const(k) => {
                let c = egraph.analysis.constants.get(k).cloned();
                data(c.as_ref().map(Constant::ty), c)
            }
            QNode::Missing => data(None, None),
            // The class of a multi-result op is typed through its results' classes.
            QNode::Op(sym, _) if sym.kind.results() > 1 => data(None, None),
            QNode::Result(r, [tuple]) => {
                let ty = egraph[*tuple].nodes.iter().find_map(|n| match n {
                    QNode::Op(sym, children) => infer(egraph, &sym.op(), children, &[])
                        .and_then(|mut t| (*r < t.len()).then(|| t.swap_remove(*r))),
                    _ => None,
                });
                data(ty, None)
            }
            QNode::Op(sym, children) => {
                let op = sym.op();
                // Constant operands decide the extents of shape-taking ops (Slice's starts).
                let declared: Vec<TensorType> = sym.declared.iter().cloned().collect();
                let ty = infer(egraph, &op, children, &declared).and_then(|mut t| t.pop());
                let constant = ty.as_ref().and_then(|ty| fold(egraph, &op, children, ty));
                data(ty, constant)
            }
        }
    }

    fn merge(&mut self, a: &mut ClassData, b: ClassData) -> DidMerge {
        let mut changed_a = false;
        let mut changed_b = false;
        match (&mut a.ty, &b.ty) {
            (None, Some(t)) => {
                a.ty = Some(t.clone());
                changed_a = true;
            }
            (Some(x), Some(y)) if x != y => {
                // Equal values may be typed more or less precisely (an extent known from a
                // declaration on one side, unknown on the other): keep what either knows.
                debug_assert!(compatible(x, y), "merged classes of types {x:?} and {y:?}");
                for (d, e) in x.shape.0.iter_mut().zip(y.shape.dims()) {
                    if *d == qlift_ir::Dim::Dyn && *e != qlift_ir::Dim::Dyn {
                        *d = *e;
                        changed_a = true;
                    }
                }
                changed_b = y
                    .shape
                    .dims()
                    .iter()
                    .zip(x.shape.dims())
                    .any(|(e, d)| *e == qlift_ir::Dim::Dyn && *d != qlift_ir::Dim::Dyn);
            }
            _ => {}
        }
        if a.constant.is_none() && b.constant.is_some() {
            a.constant = b.constant.clone();
            changed_a = true;
        }
        if a.name.is_none() && b.name.is_some() {
            a.name = b.name.clone();
            changed_a = true;
        }
        if !a.output && b.output {
            a.output = true;
            changed_a = true;
        }
        let changed_b = changed_b
            || (b.ty.is_none() && a.ty.is_some())
            || (b.constant.is_none() && a.constant.is_some())
            || (!b.output && a.output);
        DidMerge(changed_a, changed_b)
    }

    /// A class with a known constant value gets the constant as one of its nodes, so that
    /// extraction can pick it over the computation.
    fn modify(egraph: &mut QEGraph, id: Id) {
        let Some(c) = egraph[id].data.constant.clone() else {
            return;
        };
        if egraph[id]
            .nodes
            .iter()
            .any(|n| matches!(n, QNode::Const(_)))
        {
            return;
        }
        let node = egraph.analysis.constant_node(c);
        let added = egraph.add(node);
        egraph.union(id, added);
    }
}

/// Evaluates `op` when all its operands are constants (missing optional ones allowed), with
/// the interpreter's kernels, so folding computes exactly what the interpreter would.
/// DequantizeLinear is not folded: quantized constants (weights) must stay quantized for
/// the integer lowering; nor is BlockDequantizeLinear (weight-only weights stay 4- or 8-bit
/// for the JIT to unpack at run time).
fn fold(egraph: &QEGraph, op: &qlift_ir::Op, children: &[Id], ty: &TensorType) -> Option<Constant> {
    if matches!(
        op.kind,
        qlift_ir::OpKind::DequantizeLinear | qlift_ir::OpKind::BlockDequantizeLinear
    ) {
        return None;
    }
    let count = ty.shape.as_fixed()?.iter().product::<usize>();
    if count > CONST_FOLD_MAX_ELEMENTS || children.is_empty() {
        return None;
    }
    let mut inputs = Vec::with_capacity(children.len());
    let mut types = Vec::with_capacity(children.len());
    for &c in children {
        let data = &egraph[c].data;
        match (&data.constant, &data.ty) {
            (Some(k), t) => {
                inputs.push(Some(k.tensor.as_ref()));
                types.push(t.as_ref());
            }
            (None, None) => {
                inputs.push(None);
                types.push(None);
            }
            (None, Some(_)) => return None,
        }
    }
    let mut out = qlift_ir::interp::eval_op(op, &inputs, &types, std::slice::from_ref(ty)).ok()?;
    Some(Constant {
        tensor: Arc::new(out.pop()?),
        quant: ty.quant.clone(),
    })
}
