//! Requantization fusion: a DequantizeLinear → op → QuantizeLinear chain becomes one
//! integer op with exact integer accumulation and one fixed-point requantization
//! (`qlift_ir::fixed_point`). A fused activation on the float op becomes the integer clamp.
//!
//! Weights are read as they come: a DequantizeLinear of a quantized constant is used as is;
//! an f32 constant (say, weights that BatchNormalization folding rewrote) is quantized
//! symmetric int8 per output channel. A float bias is quantized to i32 with scale
//! `s_x · s_w[c]` and zero point 0, rounded half to even.
//!
//! Numerics: the float chain rounds `acc · s_x·s_w / s_y` once in f32; the integer op
//! rounds the same product once in fixed point with a 31-bit multiplier, so the two agree
//! except where the exact value sits within ~2^-20 of a rounding boundary: at most one
//! quantization step apart, which is the contract of this rule family.

use super::{
    add_const, add_declared, add_op, dequantized, dq, f32_values, is_missing, matched, op_node,
    optional_var, ty, under_quantize, var, Apply, QRewrite,
};
use crate::analysis::QEGraph;
use crate::quantize::weights::quantize_per_channel;
use egg::{rewrite, Id, Subst};
use qlift_ir::{
    Attrs, DType, OpKind, QuantParams, Shape, Tensor, TensorData, TensorType, FUSED_ACTIVATION,
};

/// The requantization fusion rules.
pub fn rules() -> Vec<QRewrite> {
    vec![
        rewrite!("fuse-conv"; "(QuantizeLinear (Conv (DequantizeLinear ?x) ?w ?b))" => { Apply(fuse_conv) }),
        rewrite!("fuse-conv-without-bias"; "(QuantizeLinear (Conv (DequantizeLinear ?x) ?w))" => { Apply(fuse_conv) }),
        rewrite!("fuse-gemm"; "(QuantizeLinear (Gemm (DequantizeLinear ?x) ?w ?b))" => { Apply(fuse_gemm) }),
        rewrite!("fuse-gemm-without-c"; "(QuantizeLinear (Gemm (DequantizeLinear ?x) ?w))" => { Apply(fuse_gemm) }),
        rewrite!("fuse-matmul"; "(QuantizeLinear (MatMul (DequantizeLinear ?x) ?w))" => { Apply(fuse_matmul) }),
        rewrite!("fuse-matmul-bias"; "(QuantizeLinear (Add ?m ?b))" => { Apply(fuse_matmul_bias) }),
        rewrite!("fuse-add"; "(QuantizeLinear (Add (DequantizeLinear ?a) (DequantizeLinear ?b)))" => { Apply(fuse_add) }),
        rewrite!("fuse-average-pool"; "(QuantizeLinear (AveragePool (DequantizeLinear ?x)))" => { Apply(|g, c, s| fuse_pool(g, c, s, OpKind::AveragePool)) }),
        rewrite!("fuse-global-average-pool"; "(QuantizeLinear (GlobalAveragePool (DequantizeLinear ?x)))" => { Apply(|g, c, s| fuse_pool(g, c, s, OpKind::GlobalAveragePool)) }),
        rewrite!("fuse-concat"; "(QuantizeLinear ?y)" => { Apply(fuse_concat) }),
        rewrite!("conv-to-accumulator"; "(Conv (DequantizeLinear ?x) (DequantizeLinear ?w) ?b)" => { Apply(|g, c, s| to_accumulator(g, c, s, OpKind::Conv)) }),
        rewrite!("conv-to-accumulator-without-bias"; "(Conv (DequantizeLinear ?x) (DequantizeLinear ?w))" => { Apply(|g, c, s| to_accumulator(g, c, s, OpKind::Conv)) }),
        rewrite!("gemm-to-accumulator"; "(Gemm (DequantizeLinear ?x) (DequantizeLinear ?w) ?b)" => { Apply(|g, c, s| to_accumulator(g, c, s, OpKind::Gemm)) }),
        rewrite!("gemm-to-accumulator-without-c"; "(Gemm (DequantizeLinear ?x) (DequantizeLinear ?w))" => { Apply(|g, c, s| to_accumulator(g, c, s, OpKind::Gemm)) }),
        rewrite!("matmul-to-accumulator"; "(MatMul (DequantizeLinear ?x) (DequantizeLinear ?w))" => { Apply(|g, c, s| to_accumulator(g, c, s, OpKind::MatMul)) }),
        rewrite!("qlinear-conv-to-qconv"; "(QLinearConv ?x ?w ?b)" => { Apply(|g, c, s| from_qlinear(g, c, s, OpKind::QLinearConv)) }),
        rewrite!("qlinear-conv-to-qconv-without-bias"; "(QLinearConv ?x ?w)" => { Apply(|g, c, s| from_qlinear(g, c, s, OpKind::QLinearConv)) }),
        rewrite!("qlinear-matmul-to-qmatmul"; "(QLinearMatMul ?x ?w)" => { Apply(|g, c, s| from_qlinear(g, c, s, OpKind::QLinearMatMul)) }),
    ]
}

/// Only the fused-activation attributes of `attrs`.
fn activation_attrs(attrs: &Attrs) -> Attrs {
    let mut out = Attrs::new();
    for name in FUSED_ACTIVATION {
        if let Some(v) = attrs.get(name) {
            out.set(name, v.clone());
        }
    }
    out
}

/// Quantized weights for class `w` with output channels on `axis`: `w` itself when already
/// quantized, the operand of a DequantizeLinear (a quantized constant, or any 8-bit value for activation × activation
/// products), or an f32 constant quantized per channel here.
fn quantized_weights(egraph: &mut QEGraph, w: Id, axis: usize) -> Option<Id> {
    if ty(egraph, w)?.quant.is_some() {
        return Some(w);
    }
    if let Some(q) = dequantized(egraph, w) {
        return Some(q);
    }
    let c = egraph[w]
        .data
        .constant
        .clone()
        .filter(|c| c.quant.is_none())?;
    let (tensor, quant) =
        quantize_per_channel(c.tensor.as_f32().ok()?, c.tensor.shape(), axis).ok()?;
    Some(add_const(egraph, tensor, Some(quant)))
}

/// The i32 bias for real bias values (one per output channel, or one for all): value /
/// (s_x · s_w[c]) rounded half to even; `None` when it does not fit i32.
fn quantized_bias(
    egraph: &mut QEGraph,
    real: &[f64],
    x: &QuantParams,
    w: &QuantParams,
    channels: usize,
) -> Option<Id> {
    if real.len() != channels && real.len() != 1 {
        return None;
    }
    let values = (0..channels)
        .map(|c| {
            let scale = x.channel(0).0 as f64 * w.channel(c).0 as f64;
            let q = (real[if real.len() == 1 { 0 } else { c }] / scale).round_ties_even();
            (q.abs() < i32::MAX as f64).then_some(q as i32)
        })
        .collect::<Option<Vec<i32>>>()?;
    let tensor = Tensor::new(DType::I32, vec![channels], TensorData::I32(values)).ok()?;
    Some(add_const(egraph, tensor, None))
}

fn quant(egraph: &QEGraph, id: Id) -> Option<QuantParams> {
    ty(egraph, id)?.quant.clone()
}

/// What an integer product computes: an 8-bit result (the declared type of the
/// QuantizeLinear it replaces) or the i32 accumulator of this shape, for a float consumer.
enum Target {
    Quantized(TensorType),
    Accumulator(Shape),
}

/// The result type for `target`; the accumulator's scale is `s_x · s_w[c]` along `axis`.
fn result_type(egraph: &QEGraph, target: Target, x: Id, wq: Id, axis: usize) -> Option<TensorType> {
    match target {
        Target::Quantized(t) => Some(t),
        Target::Accumulator(shape) => {
            let (xq, wq) = (quant(egraph, x)?, quant(egraph, wq)?);
            let scale: Vec<f32> = wq.scale.iter().map(|s| xq.scale[0] * s).collect();
            let q = QuantParams {
                zero_point: vec![0; scale.len()],
                axis: wq.axis.map(|_| axis),
                scale,
            };
            Some(TensorType::quantized(DType::I32, shape, q))
        }
    }
}

/// `Q(Conv(DQ(x), w, b))` → `QConv(x, w_q, b_i32)` with the Conv's attributes.
fn fuse_conv(egraph: &mut QEGraph, eclass: Id, subst: &Subst) -> Option<Id> {
    let b = optional_var(subst, "?b");
    let operands: Vec<Id> = [dq(egraph, var(subst, "?x"))?, var(subst, "?w")]
        .into_iter()
        .chain(b)
        .collect();
    let (attrs, declared) = under_quantize(egraph, eclass, OpKind::Conv, &operands)?;
    qconv(egraph, subst, attrs, Target::Quantized(declared))
}

/// QConv for the matched `?x`, `?w` (quantized here if float) and optional `?b`.
fn qconv(egraph: &mut QEGraph, subst: &Subst, attrs: Attrs, target: Target) -> Option<Id> {
    let [x, w] = ["?x", "?w"].map(|v| var(subst, v));
    let wq = quantized_weights(egraph, w, 0)?;
    let channels = *ty(egraph, wq)?.shape.as_fixed()?.first()?;
    let mut children = vec![x, wq];
    if let Some(b) = optional_var(subst, "?b").filter(|&b| !is_missing(egraph, b)) {
        children.push(bias(egraph, b, 1.0, x, wq, channels)?);
    }
    let declared = result_type(egraph, target, x, wq, 1)?;
    add_declared(egraph, OpKind::QConv, attrs, children, &declared)
}

/// `Conv(DQ(x), DQ(w), b)` whose result is read as float (a model output) →
/// `DQ(QConv → i32)`: integer arithmetic, no 8-bit rounding of the result. Likewise Gemm
/// and MatMul. The weights must already be quantized (a float layer stays float).
fn to_accumulator(egraph: &mut QEGraph, eclass: Id, subst: &Subst, kind: OpKind) -> Option<Id> {
    let operands: Vec<Id> = [dq(egraph, var(subst, "?x"))?, dq(egraph, var(subst, "?w"))?]
        .into_iter()
        .chain(optional_var(subst, "?b"))
        .collect();
    let attrs = matched(egraph, eclass, kind, &operands)?.op().attrs;
    if attrs.get("act_min").is_some() {
        return None;
    }
    let target = Target::Accumulator(ty(egraph, eclass)?.shape.clone());
    let acc = match kind {
        OpKind::Conv => qconv(egraph, subst, attrs, target)?,
        OpKind::Gemm => qgemm(egraph, subst, attrs, target)?,
        _ => qmatmul(egraph, subst, attrs, target)?,
    };
    add_op(egraph, OpKind::DequantizeLinear, Attrs::new(), vec![acc])
}

/// The i32 bias for the real bias in class `b` times `beta`: see [`quantized_bias`].
fn bias(egraph: &mut QEGraph, b: Id, beta: f64, x: Id, w: Id, channels: usize) -> Option<Id> {
    let (real, shape) = f32_values(egraph, b)?;
    if shape.iter().rev().skip(1).any(|&d| d != 1) {
        return None;
    }
    let real: Vec<f64> = real.iter().map(|v| v * beta).collect();
    let (xq, wq) = (quant(egraph, x)?, quant(egraph, w)?);
    quantized_bias(egraph, &real, &xq, &wq, channels)
}

/// `Q(Gemm(DQ(x), w, c))` with alpha 1 and A not transposed → `QMatMul(x, w_q [K, N], bias)`;
/// a transposed constant B is transposed at compile time, `beta · C` becomes the i32 bias.
fn fuse_gemm(egraph: &mut QEGraph, eclass: Id, subst: &Subst) -> Option<Id> {
    let operands: Vec<Id> = [dq(egraph, var(subst, "?x"))?, var(subst, "?w")]
        .into_iter()
        .chain(optional_var(subst, "?b"))
        .collect();
    let (attrs, declared) = under_quantize(egraph, eclass, OpKind::Gemm, &operands)?;
    qgemm(egraph, subst, attrs, Target::Quantized(declared))
}

/// QMatMul for the matched Gemm operands `?x`, `?w`, optional `?b` (C).
fn qgemm(egraph: &mut QEGraph, subst: &Subst, attrs: Attrs, target: Target) -> Option<Id> {
    let [x, w] = ["?x", "?w"].map(|v| var(subst, v));
    if attrs.float("alpha").ok()? != 1.0 || attrs.int("transA").ok()? != 0 {
        return None;
    }
    let wq = if attrs.int("transB").ok()? != 0 {
        transposed_weights(egraph, w)?
    } else {
        quantized_weights(egraph, w, 1)?
    };
    let channels = *ty(egraph, wq)?.shape.as_fixed()?.last()?;
    let mut children = vec![x, wq];
    if let Some(c) = optional_var(subst, "?b").filter(|&c| !is_missing(egraph, c)) {
        children.push(bias(
            egraph,
            c,
            attrs.float("beta").ok()? as f64,
            x,
            wq,
            channels,
        )?);
    }
    let declared = result_type(egraph, target, x, wq, 1)?;
    add_declared(
        egraph,
        OpKind::QMatMul,
        activation_attrs(&attrs),
        children,
        &declared,
    )
}

/// Constant `[N, K]` weights (f32, or a quantized constant behind a DequantizeLinear)
/// transposed to `[K, N]` and quantized per column.
fn transposed_weights(egraph: &mut QEGraph, w: Id) -> Option<Id> {
    let source = dequantized(egraph, w).unwrap_or(w);
    let c = egraph[source].data.constant.clone()?;
    let &[n, k] = c.tensor.shape() else {
        return None;
    };
    let transpose = |i: usize| (i % n) * k + i / n;
    match &c.quant {
        None => {
            let v = c.tensor.as_f32().ok()?;
            let t: Vec<f32> = (0..n * k).map(|i| v[transpose(i)]).collect();
            let (tensor, quant) = quantize_per_channel(&t, &[k, n], 1).ok()?;
            Some(add_const(egraph, tensor, Some(quant)))
        }
        Some(q) if q.axis != Some(1) => {
            let v = c.tensor.to_i64_vec().ok()?;
            let t: Vec<i64> = (0..n * k).map(|i| v[transpose(i)]).collect();
            let tensor = Tensor::from_i64_values(c.tensor.dtype(), vec![k, n], t).ok()?;
            let quant = QuantParams {
                axis: q.axis.map(|_| 1),
                ..q.clone()
            };
            Some(add_const(egraph, tensor, Some(quant)))
        }
        Some(_) => None,
    }
}

/// `Q(MatMul(DQ(x), w))` → `QMatMul(x, w_q)`, B per tensor or per column.
fn fuse_matmul(egraph: &mut QEGraph, eclass: Id, subst: &Subst) -> Option<Id> {
    let (attrs, declared) = under_quantize(
        egraph,
        eclass,
        OpKind::MatMul,
        &[dq(egraph, var(subst, "?x"))?, var(subst, "?w")],
    )?;
    qmatmul(egraph, subst, attrs, Target::Quantized(declared))
}

/// `Q(Add(MatMul(DQ(x), w), b))` (the Add in either order) with a constant `b` of one value
/// per column (a Linear layer as exporters write it for 3-d activations) →
/// `QMatMul(x, w_q, b_i32)`: the bias is added to the exact accumulator, as Gemm's is.
fn fuse_matmul_bias(egraph: &mut QEGraph, eclass: Id, subst: &Subst) -> Option<Id> {
    let (m, b) = (var(subst, "?m"), var(subst, "?b"));
    matmul_bias(egraph, eclass, m, b).or_else(|| matmul_bias(egraph, eclass, b, m))
}

fn matmul_bias(egraph: &mut QEGraph, eclass: Id, m: Id, b: Id) -> Option<Id> {
    let (attrs, declared) = under_quantize(egraph, eclass, OpKind::Add, &[m, b])
        .or_else(|| under_quantize(egraph, eclass, OpKind::Add, &[b, m]))?;
    let (_, ops) = op_node(egraph, m, &[OpKind::MatMul])?;
    let x = dequantized(egraph, ops[0])?;
    let w = ops[1];
    if egraph[b].data.constant.is_none() && dequantized(egraph, b).is_none() {
        return None;
    }
    let axis = ty(egraph, w)?.shape.rank().checked_sub(1)?;
    let wq = quantized_weights(egraph, w, axis)?;
    let channels = *ty(egraph, wq)?.shape.as_fixed()?.last()?;
    if f32_values(egraph, b)?.0.len() != channels {
        return None;
    }
    let bias = bias(egraph, b, 1.0, x, wq, channels)?;
    add_declared(
        egraph,
        OpKind::QMatMul,
        activation_attrs(&attrs),
        vec![x, wq, bias],
        &declared,
    )
}

/// QMatMul for the matched MatMul operands `?x`, `?w`.
fn qmatmul(egraph: &mut QEGraph, subst: &Subst, attrs: Attrs, target: Target) -> Option<Id> {
    let [x, w] = ["?x", "?w"].map(|v| var(subst, v));
    let axis = ty(egraph, w)?.shape.rank().checked_sub(1)?;
    let wq = quantized_weights(egraph, w, axis)?;
    let declared = result_type(
        egraph,
        target,
        x,
        wq,
        ty(egraph, x)?.shape.rank().max(2) - 1,
    )?;
    add_declared(
        egraph,
        OpKind::QMatMul,
        activation_attrs(&attrs),
        vec![x, wq],
        &declared,
    )
}

/// `Q(Add(DQ(a), DQ(b)))` → `QAdd(a, b)`.
fn fuse_add(egraph: &mut QEGraph, eclass: Id, subst: &Subst) -> Option<Id> {
    let [a, b] = ["?a", "?b"].map(|v| var(subst, v));
    let (attrs, declared) = under_quantize(
        egraph,
        eclass,
        OpKind::Add,
        &[dq(egraph, a)?, dq(egraph, b)?],
    )?;
    add_declared(
        egraph,
        OpKind::QAdd,
        activation_attrs(&attrs),
        vec![a, b],
        &declared,
    )
}

/// `Q(AveragePool(DQ(x)))` → `QAveragePool(x)`, and the same for the global pool.
fn fuse_pool(egraph: &mut QEGraph, eclass: Id, subst: &Subst, kind: OpKind) -> Option<Id> {
    let x = var(subst, "?x");
    let (attrs, declared) = under_quantize(egraph, eclass, kind, &[dq(egraph, x)?])?;
    let qkind = if kind == OpKind::AveragePool {
        OpKind::QAveragePool
    } else {
        OpKind::QGlobalAveragePool
    };
    add_declared(egraph, qkind, attrs, vec![x], &declared)
}

/// ONNX's QLinearConv and QLinearMatMul (pre-quantized QOperator models) → QConv and
/// QMatMul with the same operands and result: the same integer accumulation, requantized in
/// fixed point instead of f32 (within one step). Per-row A of QLinearMatMul stays as it is.
fn from_qlinear(egraph: &mut QEGraph, eclass: Id, subst: &Subst, kind: OpKind) -> Option<Id> {
    let mut operands = vec![var(subst, "?x"), var(subst, "?w")];
    operands.extend(optional_var(subst, "?b").filter(|&b| !is_missing(egraph, b)));
    let sym = matched(
        egraph,
        eclass,
        kind,
        &[var(subst, "?x"), var(subst, "?w")]
            .into_iter()
            .chain(optional_var(subst, "?b"))
            .collect::<Vec<_>>(),
    )?;
    let declared = sym.declared.clone()?;
    let target = if kind == OpKind::QLinearConv {
        OpKind::QConv
    } else {
        OpKind::QMatMul
    };
    add_declared(egraph, target, sym.op().attrs, operands, &declared)
}

/// `Q(Concat(DQ(x1), …, DQ(xn)))` → `QConcat(x1, …, xn)`, each part rescaled to the result.
fn fuse_concat(egraph: &mut QEGraph, eclass: Id, subst: &Subst) -> Option<Id> {
    let y = var(subst, "?y");
    let (_, ops) = op_node(egraph, y, &[OpKind::Concat])?;
    let (attrs, declared) = under_quantize(egraph, eclass, OpKind::Concat, &ops)?;
    let parts = ops
        .iter()
        .map(|&p| dequantized(egraph, p))
        .collect::<Option<Vec<_>>>()?;
    add_declared(egraph, OpKind::QConcat, attrs, parts, &declared)
}
