//! Elementwise ops.

use super::Registry;
use crate::onnx::import::NodeCx;
use crate::Error;
use qlift_ir::{AttrValue, Attrs, OpKind};

pub(crate) fn register(reg: &mut Registry) {
    reg.insert("Relu", |cx| unary(cx, OpKind::Relu, Attrs::new()));
    reg.insert("Sigmoid", |cx| unary(cx, OpKind::Sigmoid, Attrs::new()));
    reg.insert("Tanh", |cx| unary(cx, OpKind::Tanh, Attrs::new()));
    reg.insert("HardSwish", |cx| unary(cx, OpKind::HardSwish, Attrs::new()));
    reg.insert("LeakyRelu", |cx| {
        let attrs = Attrs::new().with("alpha", AttrValue::Float(cx.float("alpha", 0.01)));
        unary(cx, OpKind::LeakyRelu, attrs)
    });
    reg.insert("HardSigmoid", |cx| {
        let attrs = Attrs::new()
            .with("alpha", AttrValue::Float(cx.float("alpha", 0.2)))
            .with("beta", AttrValue::Float(cx.float("beta", 0.5)));
        unary(cx, OpKind::HardSigmoid, attrs)
    });
    reg.insert("Clip", clip);
    reg.insert("Add", |cx| binary(cx, OpKind::Add));
    reg.insert("Sub", |cx| binary(cx, OpKind::Sub));
    reg.insert("Mul", |cx| binary(cx, OpKind::Mul));
    reg.insert("Div", |cx| binary(cx, OpKind::Div));
}

fn unary(cx: &mut NodeCx, kind: OpKind, attrs: Attrs) -> Result<(), Error> {
    let x = cx.required(0)?;
    cx.emit(kind, attrs, &[Some(x)])
}

fn binary(cx: &mut NodeCx, kind: OpKind) -> Result<(), Error> {
    let (a, b) = (cx.required(0)?, cx.required(1)?);
    cx.emit(kind, Attrs::new(), &[Some(a), Some(b)])
}

/// Clip's bounds are constant operands since opset 11 (absent ones are infinite), and
/// attributes before (defaulting to the f32 range).
fn clip(cx: &mut NodeCx) -> Result<(), Error> {
    let (min, max) = if cx.opset < 11 {
        (cx.float("min", f32::MIN), cx.float("max", f32::MAX))
    } else {
        (cx.constant_scalar(1)?.unwrap_or(f32::NEG_INFINITY), cx.constant_scalar(2)?.unwrap_or(f32::INFINITY))
    };
    let attrs = Attrs::new().with("min", AttrValue::Float(min)).with("max", AttrValue::Float(max));
    unary(cx, OpKind::Clip, attrs)
}
