//! Quantization of recurrent layers (LSTM, GRU, RNN) to their integer form
//! (`qlift_ir`'s `ops/recurrent_q.rs`): int8 `W` and `R` per gate and hidden unit, an 8-bit
//! `X`, 8-bit rounding of the hidden state for the recurrent product, f32 gates and state.
//!
//! It runs on the graph `insert_qdq` returns (the compiler's quantization driver calls it
//! after keeping that graph as the exported QDQ model: ONNX has no operator for this form,
//! so the QDQ model keeps recurrent layers float, as ONNX Runtime's static quantization does).
//!
//! # Policy
//!
//! A layer is quantized when `W` and `R` are constants, its activations have an integer
//! form (Sigmoid, Tanh, Relu: the defaults of all three cells), its rows are at most
//! `RECURRENT_MAX_PRODUCT` long (exact i32 accumulation), and its input `X` keeps
//! [`QuantizeOptions::min_sqnr_db`] in 8 bits under its calibrated range (the rule every
//! other op follows). Otherwise it stays float. The layer is rewritten in place: a
//! QuantizeLinear in front of `X`, the weights replaced by their int8 forms; its results
//! stay f32, and what reads them quantizes them at its own boundary as usual.
//!
//! # Ranges over sequences
//!
//! `X`'s range is its calibration statistics, which cover every time step of every
//! calibration sequence (the value holds all of them), and every chunk when the calibration
//! data is a stream (`qlift::stream` calibrates chunk by chunk with the state carried, so the
//! states entering later chunks are observed too). The hidden state's rounding scale is
//! `bound / 127`: `bound` is 1 where the cell's activations keep `|h| ≤ 1` whatever the input
//! (LSTM with `h = σ(o)·tanh(c)`, GRU and RNN with a tanh candidate, given initial states in
//! that range), which no stream can exceed; otherwise (a Relu RNN) the largest `|h|`
//! calibration saw across every step of `Y` and the initial state, where a stream running past it
//! saturates (an error bounded by the excess, not fed back beyond it).

use crate::calibrate::TensorStats;
use crate::quantize::insert::{
    activation_params, fresh, short_of_8_bits, Calibration, QuantizeOptions,
};
use crate::quantize::weights::quantize_per_channel;
use crate::PassError;
use qlift_ir::{
    Activation, AttrValue, Attrs, Cell, DType, Graph, NodeId, NodeOp, Op, OpKind, Recurrent,
    TensorType, Value, ValueId, RECURRENT_MAX_PRODUCT, RECURRENT_STATE_MAX,
};
use std::sync::Arc;

/// Rewrites every recurrent layer of `g` that the policy allows into the integer form.
/// Returns how many were.
pub fn quantize_recurrent(
    g: &mut Graph,
    calibration: &Calibration,
    opts: &QuantizeOptions,
) -> Result<usize, PassError> {
    let layers: Vec<NodeId> = g
        .node_ids()
        .filter(|&id| matches!(&g.node(id).op, NodeOp::Apply(op) if Cell::of(op.kind).is_some()))
        .collect();
    let mut done = 0;
    for id in layers {
        if quantize_layer(g, id, calibration, opts)? {
            done += 1;
        }
    }
    Ok(done)
}

/// The largest `|h|` the layer's state can take whatever its input, when its activations
/// bound it (see the module documentation).
fn analytic_bound(r: &Recurrent) -> Option<f32> {
    let bounded = |a: &Activation| matches!(a, Activation::Tanh | Activation::Sigmoid);
    let bounds_h = r.activations.iter().all(|acts| match r.cell {
        // h = f(o)·h(c): |h| ≤ 1 when f ∈ [0, 1] and h is bounded by 1.
        Cell::Lstm => acts[0] == Activation::Sigmoid && bounded(&acts[2]),
        // h = (1 − z)·g(·) + z·h_prev with z ∈ [0, 1] and g bounded by 1.
        Cell::Gru => acts[0] == Activation::Sigmoid && bounded(&acts[1]),
        Cell::Rnn => bounded(&acts[0]),
    });
    bounds_h.then_some(1.0)
}

/// The largest magnitude calibration saw in `v` (0 without statistics).
fn calibrated_abs_max(g: &Graph, calibration: &Calibration, v: ValueId) -> f32 {
    calibration
        .stats(&g.value(v).name)
        .map_or(0.0, |s: &TensorStats| s.min().abs().max(s.max().abs()))
}

fn quantize_layer(
    g: &mut Graph,
    id: NodeId,
    calibration: &Calibration,
    opts: &QuantizeOptions,
) -> Result<bool, PassError> {
    let NodeOp::Apply(op) = g.node(id).op.clone() else {
        return Ok(false);
    };
    let Ok(r) = Recurrent::of(op.kind, &op.attrs) else {
        return Ok(false);
    };
    let operands = g.node_inputs(id);
    let (Some(Some(x)), Some(Some(w)), Some(Some(rw))) =
        (operands.first(), operands.get(1), operands.get(2))
    else {
        return Ok(false);
    };
    let (x, w, rw) = (*x, *w, *rw);
    let (Some(wt), Some(rt)) = (g.const_value(w).cloned(), g.const_value(rw).cloned()) else {
        return Ok(false);
    };
    let short = wt
        .shape()
        .get(2)
        .is_some_and(|&n| n <= RECURRENT_MAX_PRODUCT)
        && r.hidden <= RECURRENT_MAX_PRODUCT;
    let allowed = short
        && r.activations
            .iter()
            .flatten()
            .all(|a| matches!(a, Activation::Sigmoid | Activation::Tanh | Activation::Relu));
    if !allowed
        || g.value_type(x).dtype != DType::F32
        || wt.dtype() != DType::F32
        || short_of_8_bits(g, x, calibration, opts).is_some()
    {
        return Ok(false);
    }
    let (x_dtype, x_params) = activation_params(g, x, calibration, opts)?;
    // The state's rounding bound: the cell's own where it has one, else what calibration
    // saw of h across every step (Y) and of the initial state.
    let bound = analytic_bound(&r).unwrap_or_else(|| {
        let mut seen = [
            Some(ValueId {
                node: id,
                output: 0,
            }),
            Some(ValueId {
                node: id,
                output: 1,
            }),
            operands.get(5).copied().flatten(),
        ];
        seen.iter_mut()
            .flatten()
            .map(|&mut v| calibrated_abs_max(g, calibration, v))
            .fold(0.0, f32::max)
    });
    let state_scale = if bound > 0.0 && (bound / RECURRENT_STATE_MAX as f32).is_normal() {
        bound / RECURRENT_STATE_MAX as f32
    } else {
        1.0 / RECURRENT_STATE_MAX as f32
    };
    // X through a QuantizeLinear (read by this layer only: other readers keep the float).
    let name = g.value(x).name.clone();
    let q_ty = TensorType::quantized(x_dtype, g.value_type(x).shape.clone(), x_params);
    let q_name = fresh(g, &format!("{name}_QuantizeLinear_Output"));
    let qnode = g.add_node(
        &fresh(g, &format!("{name}_QuantizeLinear")),
        Op::new(OpKind::QuantizeLinear, Attrs::new()),
        &[Some(x)],
        vec![Value {
            name: q_name,
            ty: q_ty,
        }],
    )?;
    g.set_node_input(
        id,
        0,
        Some(ValueId {
            node: qnode,
            output: 0,
        }),
    )?;
    // W and R per row (axis 1: gate and hidden unit).
    for (slot, v, t) in [(1, w, wt), (2, rw, rt)] {
        let wname = g.value(v).name.clone();
        let (tensor, quant) =
            quantize_per_channel(t.as_f32().map_err(PassError::Bug)?, t.shape(), 1)
                .map_err(|e| PassError::Unsupported(format!("weights `{wname}`: {e}")))?;
        let c = g.add_const(
            &fresh(g, &format!("{wname}_quantized")),
            Arc::new(tensor),
            Some(quant),
        );
        g.set_node_input(id, slot, Some(c))?;
    }
    let mut integer = op;
    integer.attrs = integer
        .attrs
        .clone()
        .with("state_scale", AttrValue::Float(state_scale));
    g.node_mut(id).op = NodeOp::Apply(integer);
    Ok(true)
}
