//! The verifier: structure, attributes, and type inference checked against declared types.
//!
//! It runs after import and after every pass (in debug and test builds), so that a pass
//! that breaks the graph is caught at that pass, with the node named.

use crate::graph::{Graph, NodeId, NodeOp};
use crate::ops::{self, InferCtx};
use crate::{IrError, Op, Shape, Tensor, TensorType, VerifierError};
use std::collections::HashMap;

/// Infers the result types of `op` applied to operands of the given types. `declared` holds
/// the node's declared result types when there are any: ops whose result type is not a
/// function of the operands (QuantizeLinear's target parameters) read them from there.
/// Rewrites use it to type the nodes they create.
pub fn infer_op(
    op: &Op,
    inputs: &[Option<&TensorType>],
    declared: &[TensorType],
) -> Result<Vec<TensorType>, String> {
    infer_op_with(op, inputs, &OperandValues::default(), declared)
}

/// What is known of a node's operand values beyond their types (see [`infer_op_with`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct OperandValues<'a> {
    /// Values of constant operands, by slot (may be shorter than the operands).
    pub constants: &'a [Option<&'a Tensor>],
    /// Integer elements the specializer tracked through shape arithmetic, by slot.
    pub symbolic: &'a [Option<Vec<crate::SymInt>>],
}

/// [`infer_op`] with the values of constant operands (`constants[i]` for operand `i`, may
/// be shorter than `inputs`), which give exact shapes where ops take shapes as operands.
///
/// Extents inference cannot know (`Dim::Dyn`: they depend on values computed at run time)
/// are taken from `declared` when it is given: a declaration may refine them (the
/// specializer declares what it proves, say `[N,sequence,12,32]` for a Reshape whose shape
/// comes from `Shape`), never contradict a known extent.
pub fn infer_op_with(
    op: &Op,
    inputs: &[Option<&TensorType>],
    values: &OperandValues,
    declared: &[TensorType],
) -> Result<Vec<TensorType>, String> {
    let schema = op.kind.schema();
    if inputs.len() < schema.min_inputs || inputs.len() > schema.max_inputs {
        return Err(format!(
            "has {} operands, expects {}..={}",
            inputs.len(),
            schema.min_inputs,
            schema.max_inputs
        ));
    }
    if let Some(i) = inputs[..schema.min_inputs].iter().position(|t| t.is_none()) {
        return Err(format!("required operand {i} is missing"));
    }
    op.check_attrs()?;
    let mut types = ops::infer(&InferCtx {
        op,
        inputs,
        constants: values.constants,
        symbolic: values.symbolic,
        declared,
    })?;
    debug_assert!(schema.outputs == usize::MAX || types.len() == schema.outputs);
    if declared.len() == types.len() {
        for (t, d) in types.iter_mut().zip(declared) {
            refine(t, d);
        }
    }
    Ok(types)
}

/// Replaces the unknown extents of `inferred` by `declared`'s, where the two have the same
/// rank (a declaration of another rank is left for the verifier to report).
fn refine(inferred: &mut TensorType, declared: &TensorType) {
    if inferred.shape.rank() != declared.shape.rank() {
        return;
    }
    for (i, d) in inferred.shape.0.iter_mut().zip(declared.shape.dims()) {
        if *i == crate::Dim::Dyn {
            *i = *d;
        }
    }
}

/// Checks the whole graph: acyclic, unique value names, operands and results match each
/// node's schema, declared types equal inferred ones, quantization parameters are valid.
/// Returns every problem found, each naming its node.
pub fn verify(graph: &Graph) -> Result<(), IrError> {
    let order = graph.topo_order()?;
    let mut errors = Vec::new();
    let mut names: HashMap<&str, &str> = HashMap::new();
    for &id in &order {
        let node = graph.node(id);
        let mut err = |message: String| {
            errors.push(VerifierError {
                node: node.name.clone(),
                op: node.op.name().to_string(),
                message,
            })
        };
        for v in &node.outputs {
            if let Some(prev) = names.insert(&v.name, &node.name) {
                err(format!(
                    "result `{}` is also produced by node `{prev}`",
                    v.name
                ));
            }
            if let Some(q) = &v.ty.quant {
                if let Err(m) = check_quant(&v.ty, q) {
                    err(format!("result `{}`: {m}", v.name));
                }
            }
        }
        match &node.op {
            NodeOp::Input => {
                if node.outputs.len() != 1 || !graph.inputs().contains(&id) {
                    err("input node is not a graph input with one result".to_string());
                }
            }
            NodeOp::Const(t) => {
                let ty = &node.outputs.first().map(|v| &v.ty);
                if node.outputs.len() != 1
                    || ty.is_none_or(|ty| {
                        ty.dtype != t.dtype() || ty.shape != Shape::fixed(t.shape())
                    })
                {
                    err(format!(
                        "constant's declared type does not match its {}{:?} data",
                        t.dtype(),
                        t.shape()
                    ));
                }
            }
            NodeOp::Apply(op) => {
                let inputs = graph.node_inputs(id);
                let in_types: Vec<Option<&TensorType>> = inputs
                    .iter()
                    .map(|v| v.map(|v| graph.value_type(v)))
                    .collect();
                let constants = operand_constants(graph, &inputs);
                let declared: Vec<TensorType> = node.outputs.iter().map(|v| v.ty.clone()).collect();
                match infer_op_with(
                    op,
                    &in_types,
                    &OperandValues {
                        constants: &constants,
                        symbolic: &[],
                    },
                    &declared,
                ) {
                    Err(m) => err(m),
                    Ok(inferred) if inferred != declared => err(format!(
                        "declared result types {} but operands give {}",
                        show_types(&declared),
                        show_types(&inferred)
                    )),
                    Ok(_) => {}
                }
                // Bodies are graphs of their own: every problem inside is reported on this
                // node, with the body and its node named.
                for (name, body) in op.attrs.graphs() {
                    match verify(body) {
                        Ok(()) => {}
                        Err(IrError::Verifier(inner)) => {
                            for e in inner {
                                err(format!(
                                    "in {name}: node `{}` ({}): {}",
                                    e.node, e.op, e.message
                                ));
                            }
                        }
                        Err(e) => err(format!("in {name}: {e}")),
                    }
                }
            }
        }
    }
    for v in graph.outputs() {
        if !graph.contains(v.node) {
            errors.push(VerifierError {
                node: String::new(),
                op: String::new(),
                message: format!("graph output {v:?} is gone"),
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(IrError::Verifier(errors))
    }
}

/// Re-infers every node's result types in topological order and writes them on the node,
/// for builders (the ONNX importer, passes) that change operand types after building.
pub fn infer_types(graph: &mut Graph) -> Result<(), IrError> {
    for id in graph.topo_order()? {
        infer_node_types(graph, id)?;
    }
    Ok(())
}

/// Infers one node's result types from its operands and writes them on the node. Ops whose
/// result type is declared (QuantizeLinear's parameters) keep dtype and quantization
/// parameters from the declaration and get their shape inferred.
pub fn infer_node_types(graph: &mut Graph, id: NodeId) -> Result<(), IrError> {
    let NodeOp::Apply(op) = &graph.node(id).op else {
        return Ok(());
    };
    let inputs = graph.node_inputs(id);
    let in_types: Vec<Option<&TensorType>> = inputs
        .iter()
        .map(|v| v.map(|v| graph.value_type(v)))
        .collect();
    let constants = operand_constants(graph, &inputs);
    let declared: Vec<TensorType> = graph
        .node(id)
        .outputs
        .iter()
        .map(|v| v.ty.clone())
        .collect();
    let inferred = infer_op_with(
        op,
        &in_types,
        &OperandValues {
            constants: &constants,
            symbolic: &[],
        },
        &declared,
    )
    .map_err(|message| {
        let node = graph.node(id);
        IrError::Verifier(vec![VerifierError {
            node: node.name.clone(),
            op: node.op.name().to_string(),
            message,
        }])
    })?;
    if inferred.len() != declared.len() {
        let node = graph.node(id);
        return Err(IrError::Build(format!(
            "node `{}` declares {} results, its op has {}",
            node.name,
            declared.len(),
            inferred.len()
        )));
    }
    for (v, ty) in graph.node_mut(id).outputs.iter_mut().zip(inferred) {
        v.ty = ty;
    }
    Ok(())
}

/// The values of the constant operands among `inputs`, by slot.
pub(crate) fn operand_constants<'g>(
    graph: &'g Graph,
    inputs: &[Option<crate::ValueId>],
) -> Vec<Option<&'g crate::Tensor>> {
    inputs
        .iter()
        .map(|v| v.and_then(|v| graph.const_value(v)).map(|t| t.as_ref()))
        .collect()
}

fn check_quant(ty: &TensorType, q: &crate::QuantParams) -> Result<(), String> {
    let range = ty
        .dtype
        .int_range()
        .filter(|_| ty.dtype.is_quantized() || ty.dtype == crate::DType::I32);
    let range =
        range.ok_or_else(|| format!("{} values cannot carry quantization parameters", ty.dtype))?;
    q.check(range)?;
    if let Some(axis) = q.axis {
        match ty.shape.dims().get(axis) {
            None => {
                return Err(format!(
                    "quantization axis {axis} is out of range for rank {}",
                    ty.shape.rank()
                ))
            }
            Some(crate::Dim::Fixed(n)) if *n != q.scale.len() => {
                return Err(format!(
                    "{} scales for {n} channels on axis {axis}",
                    q.scale.len()
                ))
            }
            Some(crate::Dim::Batch) => {
                return Err("quantization axis is the batch dimension".to_string())
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn show_types(types: &[TensorType]) -> String {
    types
        .iter()
        .map(crate::text::type_to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
