//! A chain of f32 elementwise nodes as one loop: every external operand is loaded once per
//! lane step, the nodes' functions are evaluated in order on registers, and only the last
//! node's result is stored. A chain such as GELU through tanh (ten nodes over the same
//! tensor) otherwise streams its whole tensor through memory once per node.
//!
//! Which nodes form a chain is decided over the graph by `crate::fusion`; this module
//! describes a chain ([`Chain`]), says which nodes may be part of one ([`LaneOp::of`]) and
//! emits it. Each node's function is emitted by the very lane step its own kernel uses
//! (`FloatUnary::emit`, `float_arith`, `float_variadic`, `pow_by`), in the same order and
//! with the same rounding (no contraction into FMA), so a fused chain computes bit for bit
//! what the unfused kernels compute.

use super::elementwise::{fconst, float_arith, Broadcast, Lanes, LANES};
use super::math::{float_variadic, inline_exponent, libcall, pow_by, FloatUnary};
use super::{Kernel, Operand};
use cranelift_codegen::ir::{types, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::{NodeId, Op, OpKind, Tensor};

/// The function of one node of a chain, on f32 or f32x4 values.
pub(crate) enum LaneOp {
    /// A one-operand float op with an inline form.
    Unary(FloatUnary),
    /// Add, Sub, Mul, Div, with Add's fused activation (lower and upper bound).
    Arith(OpKind, Option<(f32, f32)>),
    /// Min, Max, Sum, Mean of any number of operands, PRelu of two.
    Variadic(OpKind),
    /// Pow by a constant exponent with an inline form (its operand is the base alone).
    PowBy(f32),
}

impl LaneOp {
    /// `op`'s function on `arity` f32 operands, when it has a lane step that fusion can
    /// reuse; `exponent` is Pow's exponent when it is a constant. `None` for every other
    /// node (integer ops, library calls such as Sin, Pow by a computed exponent, ops that
    /// are not elementwise).
    pub(crate) fn of(op: &Op, arity: usize, exponent: Option<&Tensor>) -> Option<LaneOp> {
        use OpKind::*;
        Some(match op.kind {
            Relu | Clip | LeakyRelu | Sigmoid | Tanh | HardSigmoid | HardSwish | Sqrt | Exp
            | Log | Abs | Neg | Reciprocal | Floor | Ceil | Round | Erf | Sign | Gelu | Elu
            | Selu | Softplus | Mish | Softsign | ThresholdedRelu | Celu
                if arity == 1 && libcall(op.kind).is_none() =>
            {
                LaneOp::Unary(FloatUnary::of(op).ok()?)
            }
            Add | Sub | Mul | Div if arity == 2 => {
                LaneOp::Arith(op.kind, op.fused_activation().ok()?)
            }
            Min | Max | Sum | Mean if arity >= 1 => LaneOp::Variadic(op.kind),
            PRelu if arity == 2 => LaneOp::Variadic(op.kind),
            Pow if arity == 2 => LaneOp::PowBy(inline_exponent(exponent?)?),
            _ => return None,
        })
    }

    /// How many of the node's operands the function reads (Pow's exponent is built in).
    pub(crate) fn reads(&self, arity: usize) -> usize {
        match self {
            LaneOp::PowBy(_) => 1,
            _ => arity,
        }
    }

    /// The function on `args` (f32 or f32x4 values, as many as [`LaneOp::reads`]).
    fn emit(&self, fb: &mut FunctionBuilder, args: &[Value]) -> Value {
        match self {
            LaneOp::Unary(f) => f.emit(fb, args[0]),
            LaneOp::Arith(kind, act) => float_arith(fb, *kind, *act, args[0], args[1]),
            LaneOp::Variadic(kind) => float_variadic(fb, *kind, args),
            LaneOp::PowBy(e) => pow_by(fb, args[0], *e),
        }
    }
}

/// Where an operand of a chain's node comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arg {
    /// The chain kernel's operand number `i` (a value computed outside the chain).
    Operand(usize),
    /// The result of the chain's node number `j` (an earlier one).
    Link(usize),
}

/// One node of a chain.
pub(crate) struct Link {
    /// The node (its name is what profiles and errors show for the last one).
    pub node: NodeId,
    /// Its function.
    pub lane: LaneOp,
    /// Its operands, in the op's order ([`LaneOp::reads`] of them).
    pub args: Vec<Arg>,
}

/// Nodes computed as one kernel: the last one's result is the kernel's, every other
/// node's result is used only inside the chain and has the last one's shape.
pub(crate) struct Chain {
    /// The nodes in topological order.
    pub links: Vec<Link>,
}

/// Emits `chain` as one broadcasting loop over the kernel's operands (those of
/// [`Arg::Operand`]) into its result.
pub(super) fn emit(k: &mut Kernel, chain: &Chain) -> Result<(), String> {
    let operands: Vec<&Operand> = (0..k.inputs.len())
        .map(|i| k.input(i))
        .collect::<Result<_, _>>()?;
    if let Some(o) = operands
        .iter()
        .chain([&k.output(0)])
        .find(|o| o.ty.dtype != qlift_ir::DType::F32)
    {
        return Err(format!(
            "a fused chain takes f32 values, not {}",
            o.ty.dtype
        ));
    }
    let plan = Broadcast::new(k.output(0), &operands)?;
    // Streams' base pointers, the result first (a split loop loads them again in its task).
    let ptrs: Vec<Value> = std::iter::once(k.output(0).ptr)
        .chain(operands.iter().map(|o| o.ptr))
        .collect();
    // One-element constants (GELU's coefficients) become immediates, which Cranelift
    // hoists out of the loop, instead of a load and a splat per step: the same value.
    let scalars: Vec<Option<f32>> = operands
        .iter()
        .map(|o| {
            let t = o.constant.as_ref().filter(|t| t.len() == 1)?;
            t.to_f32_vec().first().copied()
        })
        .collect();
    plan.emit_split(k, LANES, &ptrs, &mut |fb, p, off, lanes| {
        let ty = match lanes {
            Lanes::Vector(_) => types::F32X4,
            Lanes::Scalar => types::F32,
        };
        let loaded: Vec<Value> = scalars
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Some(v) => fconst(fb, ty, *v),
                None => lanes.load(fb, i + 1, p[i + 1], off[i + 1]),
            })
            .collect();
        let mut results: Vec<Value> = Vec::with_capacity(chain.links.len());
        for link in &chain.links {
            let args: Vec<Value> = link
                .args
                .iter()
                .map(|a| match *a {
                    Arg::Operand(i) => loaded[i],
                    Arg::Link(j) => results[j],
                })
                .collect();
            let r = link.lane.emit(fb, &args);
            results.push(r);
        }
        if let Some(&r) = results.last() {
            Lanes::store(fb, r, p[0], off[0]);
        }
    })
}
