//! LSTM, GRU and RNN.
//!
//! Every opset version from 7 on has the same operands; opset 14 added `layout` (0 before).
//! The adapter spells out what ONNX leaves implicit, so that the IR's form (`qlift_ir`'s
//! `ops/recurrent.rs`) is complete: `hidden_size` from `W` when absent, every direction's
//! activations (a one-direction list repeats for the reverse direction of a bidirectional
//! layer, as ONNX Runtime does), each activation's alpha and beta (taken in order from
//! `activation_alpha`/`activation_beta` by the functions that have them, ONNX's defaults
//! after the lists run out), and `clip` (`inf` for none).

use super::Registry;
use crate::onnx::import::NodeCx;
use crate::Error;
use qlift_ir::{AttrValue, Attrs, Cell, OpKind, RECURRENT_ACTIVATIONS};

pub(crate) fn register(reg: &mut Registry) {
    reg.insert("LSTM", |cx| recurrent(cx, OpKind::LSTM));
    reg.insert("GRU", |cx| recurrent(cx, OpKind::GRU));
    reg.insert("RNN", |cx| recurrent(cx, OpKind::RNN));
}

fn recurrent(cx: &mut NodeCx, kind: OpKind) -> Result<(), Error> {
    let cell = Cell::of(kind).ok_or_else(|| cx.error("not a recurrent op"))?;
    let direction = cx.string("direction", "forward");
    let dirs = match direction.as_str() {
        "forward" | "reverse" => 1,
        "bidirectional" => 2,
        d => {
            return Err(cx.error(format!(
                "direction `{d}` is not forward, reverse or bidirectional"
            )))
        }
    };
    let w = cx.input_type(1)?;
    let wdims = w
        .shape
        .as_fixed()
        .ok_or_else(|| cx.error("W must have a static shape"))?;
    if wdims.len() != 3
        || wdims[0] != dirs
        || wdims[1] == 0
        || !wdims[1].is_multiple_of(cell.gates())
    {
        return Err(cx.error(format!(
            "W {wdims:?} must be [{dirs}, {}·hidden_size, input_size]",
            cell.gates()
        )));
    }
    let hidden = match cx.int("hidden_size", 0) {
        0 => (wdims[1] / cell.gates()) as i64,
        h if h > 0 => h,
        h => return Err(cx.error(format!("hidden_size {h} is negative"))),
    };
    let per = cell.activations();
    let names: Vec<String> = match cx.strings("activations") {
        None => cell
            .default_activations()
            .iter()
            .cycle()
            .take(per * dirs)
            .map(|s| s.to_string())
            .collect(),
        Some(a) if a.len() == per * dirs => a,
        Some(a) if a.len() == per => a.iter().cycle().take(per * dirs).cloned().collect(),
        Some(a) => {
            return Err(cx.error(format!(
                "{} activations given, {direction} {kind} takes {}",
                a.len(),
                per * dirs
            )))
        }
    };
    let given_alpha = cx.floats("activation_alpha").unwrap_or_default();
    let given_beta = cx.floats("activation_beta").unwrap_or_default();
    let (mut alphas, mut betas) = (given_alpha.iter(), given_beta.iter());
    let (mut alpha, mut beta) = (
        Vec::with_capacity(names.len()),
        Vec::with_capacity(names.len()),
    );
    let mut canonical = Vec::with_capacity(names.len());
    for name in &names {
        let Some(&(spelled, a, b, takes_alpha, takes_beta)) = RECURRENT_ACTIVATIONS
            .iter()
            .find(|a| a.0.eq_ignore_ascii_case(name))
        else {
            return Err(cx.error(format!("activation `{name}` is not supported (recurrent layers take Sigmoid, Tanh, Relu, HardSigmoid, Affine, LeakyRelu, ThresholdedRelu, ScaledTanh, Elu, Softsign, Softplus)")));
        };
        canonical.push(spelled);
        alpha.push(if takes_alpha {
            alphas.next().copied().unwrap_or(a)
        } else {
            0.0
        });
        beta.push(if takes_beta {
            betas.next().copied().unwrap_or(b)
        } else {
            0.0
        });
    }
    let clip = match cx.float("clip", f32::INFINITY) {
        c if c > 0.0 => c,
        c => return Err(cx.error(format!("clip {c} must be positive"))),
    };
    let layout = cx.int("layout", 0);
    if !(0..=1).contains(&layout) {
        return Err(cx.error(format!("layout {layout} is not 0 or 1")));
    }
    let mut attrs = Attrs::new()
        .with("direction", AttrValue::Str(direction))
        .with("hidden_size", AttrValue::Int(hidden))
        .with("layout", AttrValue::Int(layout))
        .with("clip", AttrValue::Float(clip))
        .with("activations", AttrValue::Str(canonical.join(",")))
        .with("activation_alpha", AttrValue::Floats(alpha))
        .with("activation_beta", AttrValue::Floats(beta));
    let flag = |cx: &NodeCx, name: &str| -> Result<i64, Error> {
        match cx.int(name, 0) {
            v @ (0 | 1) => Ok(v),
            v => Err(cx.error(format!("{name} {v} is not 0 or 1"))),
        }
    };
    match cell {
        Cell::Lstm => attrs.set("input_forget", AttrValue::Int(flag(cx, "input_forget")?)),
        Cell::Gru => attrs.set(
            "linear_before_reset",
            AttrValue::Int(flag(cx, "linear_before_reset")?),
        ),
        Cell::Rnn => {}
    }
    let slots = if cell == Cell::Lstm { 8 } else { 6 };
    if cx.node.input.len() > slots {
        return Err(cx.error(format!(
            "has {} operands, {kind} takes at most {slots}",
            cx.node.input.len()
        )));
    }
    let mut operands = Vec::with_capacity(slots);
    for i in 0..cx.node.input.len().max(3) {
        operands.push(if i < 3 {
            Some(cx.required(i)?)
        } else {
            cx.input(i)?
        });
    }
    while operands.len() > 3 && operands.last() == Some(&None) {
        operands.pop();
    }
    cx.emit_all(kind, attrs, &operands, cell.results())
        .map(|_| ())
}
