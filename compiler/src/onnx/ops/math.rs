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
    register_elementwise(reg);
}

/// The elementwise family: math functions, comparisons and logic, activations. Their
/// signatures did not change between opset 7 and 28 in ways the IR sees (later versions
/// only add dtypes, and opset 7 brought numpy broadcasting), so each registers from the
/// version that introduced it.
fn register_elementwise(reg: &mut Registry) {
    // Ops without attributes, with the opset that introduced them (7 for those older).
    const PLAIN: [(&str, i64); 32] = [
        ("Sqrt", 7),
        ("Exp", 7),
        ("Log", 7),
        ("Abs", 7),
        ("Neg", 7),
        ("Reciprocal", 7),
        ("Floor", 7),
        ("Ceil", 7),
        ("Round", 11),
        ("Erf", 9),
        ("Sin", 7),
        ("Cos", 7),
        ("Sign", 9),
        ("Pow", 7),
        ("Min", 7),
        ("Max", 7),
        ("Mean", 7),
        ("Sum", 7),
        ("Equal", 7),
        ("Greater", 7),
        ("GreaterOrEqual", 12),
        ("Less", 7),
        ("LessOrEqual", 12),
        ("Not", 7),
        ("And", 7),
        ("Or", 7),
        ("Xor", 7),
        ("Where", 9),
        ("PRelu", 7),
        ("Softplus", 7),
        ("Mish", 18),
        ("Softsign", 7),
    ];
    for (name, since) in PLAIN {
        reg.insert_since(name, since, |cx| {
            let kind = cx.node.op_type.parse().map_err(|e: String| cx.error(e))?;
            operands(cx, kind, Attrs::new())
        });
    }
    reg.insert_since("Mod", 10, |cx| {
        let fmod = cx.int("fmod", 0);
        operands(
            cx,
            OpKind::Mod,
            Attrs::new().with("fmod", AttrValue::Int(fmod)),
        )
    });
    reg.insert_since("Gelu", 20, |cx| {
        let approximate = cx.string("approximate", "none");
        operands(
            cx,
            OpKind::Gelu,
            Attrs::new().with("approximate", AttrValue::Str(approximate)),
        )
    });
    reg.insert("Elu", |cx| {
        let attrs = Attrs::new().with("alpha", AttrValue::Float(cx.float("alpha", 1.0)));
        operands(cx, OpKind::Elu, attrs)
    });
    reg.insert("Selu", |cx| {
        // ONNX's defaults: the constants of the self-normalizing network paper, as f32.
        let attrs = Attrs::new()
            .with("alpha", AttrValue::Float(cx.float("alpha", 1.673_263_2)))
            .with("gamma", AttrValue::Float(cx.float("gamma", 1.050_701)));
        operands(cx, OpKind::Selu, attrs)
    });
    reg.insert_since("ThresholdedRelu", 10, |cx| {
        let attrs = Attrs::new().with("alpha", AttrValue::Float(cx.float("alpha", 1.0)));
        operands(cx, OpKind::ThresholdedRelu, attrs)
    });
    reg.insert_since("Celu", 12, |cx| {
        let alpha = cx.float("alpha", 1.0);
        if alpha == 0.0 {
            return Err(cx.error("alpha must not be 0 (Celu divides by it)"));
        }
        operands(
            cx,
            OpKind::Celu,
            Attrs::new().with("alpha", AttrValue::Float(alpha)),
        )
    });
}

/// One IR node of `kind` over every operand of the ONNX node, in order (optional operands
/// are not part of these ops, so an omitted one is an error).
fn operands(cx: &mut NodeCx, kind: OpKind, attrs: Attrs) -> Result<(), Error> {
    if cx.node.input.is_empty() {
        return Err(cx.error("at least one operand is required"));
    }
    let inputs = (0..cx.node.input.len())
        .map(|i| cx.required(i).map(Some))
        .collect::<Result<Vec<_>, _>>()?;
    cx.emit(kind, attrs, &inputs)
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
        (
            cx.constant_scalar(1)?.unwrap_or(f32::NEG_INFINITY),
            cx.constant_scalar(2)?.unwrap_or(f32::INFINITY),
        )
    };
    let attrs = Attrs::new()
        .with("min", AttrValue::Float(min))
        .with("max", AttrValue::Float(max));
    unary(cx, OpKind::Clip, attrs)
}
