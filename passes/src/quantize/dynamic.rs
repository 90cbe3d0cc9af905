//! Quantization without calibration, for MatMul and Gemm with constant weights (the
//! transformer case): dynamic quantization of the activations and weight-only quantization.
//!
//! - **Dynamic** (ONNX Runtime's `quantize_dynamic`): the activation is quantized per call
//!   to u8 with the range of that call (DynamicQuantizeLinear), multiplied exactly in
//!   integers by int8 weights with one scale per output column (MatMulInteger, the
//!   activation's zero point subtracted), and the i32 product scaled back to f32 by
//!   `a_scale · w_scale[n]` (Cast, Mul, Mul), then Gemm's bias added. Every step is an
//!   existing op with bit-exact JIT and interpreter forms, so the whole product is too.
//! - **Weight-only**: the weights are stored as int8 or int4 with one scale per block of
//!   `block_size` along the reduction axis K (or per column: one block of all K), and
//!   dequantized (BlockDequantizeLinear) into the float product: `y = x · (scale · q)`.
//!   The activations stay f32; only the weights lose precision.
//!
//! Both rewrite a product into `[K, N]` form (Gemm's `transB` weights transposed, `alpha`
//! folded into them and `beta` into the bias); a product they cannot take (Gemm with
//! `transA`, weights computed at run time, a bias that is not per column) stays float.

use super::weights::{quantize_weights, WeightBits, WeightGranularity};
use qlift_ir::{
    AttrValue, Attrs, DType, Graph, NodeId, NodeOp, Op, OpKind, Tensor, TensorData, ValueId,
};
use std::collections::HashMap;
use std::sync::Arc;

/// How one product is quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// u8 activations quantized per call, int8 weights per column.
    Dynamic,
    /// f32 activations, `bits`-bit weights with a scale per `block_size` elements of K (0:
    /// one scale per column).
    WeightOnly {
        /// int8 or int4.
        bits: WeightBits,
        /// Elements of K per scale (32, 64, 128 as ONNX Runtime's MatMulNBits); 0 per column.
        block_size: usize,
    },
}

impl Scheme {
    /// The plan's spelling of the scheme's precision.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Dynamic => "int8-dynamic",
            Scheme::WeightOnly {
                bits: WeightBits::Eight,
                ..
            } => "int8-weight-only",
            Scheme::WeightOnly {
                bits: WeightBits::Four,
                ..
            } => "int4-weight-only",
        }
    }
}

/// Rewrites every MatMul and Gemm with constant weights for which `scheme` (given the
/// node's name and op type) chooses one. Returns how many products were rewritten; errors
/// are bad input (weights that are not finite) or a bug.
pub fn quantize_products(
    graph: &mut Graph,
    scheme: impl Fn(&str, OpKind) -> Option<Scheme>,
) -> Result<usize, String> {
    let order = graph.topo_order().map_err(|e| e.to_string())?;
    let mut rewritten = 0;
    // One DynamicQuantizeLinear per activation, however many products read it (a
    // transformer's Q, K and V projections share theirs).
    let mut quantized: HashMap<ValueId, Vec<ValueId>> = HashMap::new();
    for id in order {
        let node = graph.node(id);
        let NodeOp::Apply(op) = &node.op else {
            continue;
        };
        if !matches!(op.kind, OpKind::MatMul | OpKind::Gemm) {
            continue;
        }
        let Some(s) = scheme(&node.name, op.kind) else {
            continue;
        };
        let Some(product) = Product::of(graph, id)? else {
            continue;
        };
        rewrite(graph, id, &product, s, &mut quantized)?;
        rewritten += 1;
    }
    if rewritten > 0 {
        graph.remove_dead_nodes();
    }
    Ok(rewritten)
}

/// A product in `[K, N]` form: what the rewrite reads of the node.
struct Product {
    a: ValueId,
    /// Weights `[K][N]`, row-major, `alpha` folded in.
    w: Vec<f32>,
    k: usize,
    n: usize,
    /// Per-column bias (`beta · C`).
    bias: Option<Vec<f32>>,
    /// The fused activation's clamp.
    act: Option<(f32, f32)>,
}

impl Product {
    /// The node as a product of a float activation by constant 2-D weights, if it is one.
    fn of(graph: &Graph, id: NodeId) -> Result<Option<Product>, String> {
        let NodeOp::Apply(op) = &graph.node(id).op else {
            return Ok(None);
        };
        let inputs = graph.node_inputs(id);
        let (Some(a), Some(b)) = (inputs[0], inputs.get(1).copied().flatten()) else {
            return Ok(None);
        };
        let Some(wt) = graph.const_value(b) else {
            return Ok(None);
        };
        let float = |v: ValueId| {
            let ty = graph.value_type(v);
            ty.dtype == DType::F32 && ty.quant.is_none()
        };
        if !float(a) || !float(b) || wt.shape().len() != 2 || graph.value_type(a).shape.rank() < 1 {
            return Ok(None);
        }
        let act = op.fused_activation()?;
        let (rows, cols) = (wt.shape()[0], wt.shape()[1]);
        let values = wt.as_f32()?;
        if op.kind == OpKind::MatMul {
            return Ok(Some(Product {
                a,
                w: values.to_vec(),
                k: rows,
                n: cols,
                bias: None,
                act,
            }));
        }
        let attrs = &op.attrs;
        if attrs.int("transA")? != 0 {
            return Ok(None);
        }
        let (alpha, beta) = (attrs.float("alpha")?, attrs.float("beta")?);
        let trans_b = attrs.int("transB")? != 0;
        let (k, n) = if trans_b { (cols, rows) } else { (rows, cols) };
        let w: Vec<f32> = (0..k * n)
            .map(|i| {
                let (r, c) = (i / n, i % n);
                alpha
                    * if trans_b {
                        values[c * k + r]
                    } else {
                        values[i]
                    }
            })
            .collect();
        let bias = match inputs.get(2).copied().flatten() {
            None => None,
            Some(c) => match graph.const_value(c) {
                Some(t) if float(c) && t.len() == n && t.shape().last() == Some(&n) => {
                    Some(t.as_f32()?.iter().map(|v| beta * v).collect())
                }
                _ => return Ok(None),
            },
        };
        Ok(Some(Product {
            a,
            w,
            k,
            n,
            bias,
            act,
        }))
    }
}

/// Replaces node `id` by the quantized form of `p`; the last node takes over the node's
/// result name.
fn rewrite(
    graph: &mut Graph,
    id: NodeId,
    p: &Product,
    scheme: Scheme,
    quantized: &mut HashMap<ValueId, Vec<ValueId>>,
) -> Result<(), String> {
    let name = graph.node(id).name.clone();
    let result = ValueId {
        node: id,
        output: 0,
    };
    let result_name = graph.value(result).name.clone();
    let mut b = Builder { graph, name: &name };
    let mut y = match scheme {
        Scheme::Dynamic => dynamic(&mut b, p, quantized)?,
        Scheme::WeightOnly { bits, block_size } => weight_only(&mut b, p, bits, block_size)?,
    };
    if let Some(bias) = &p.bias {
        let c = b.constant("bias", Tensor::from_f32(&[p.n], bias.clone()), None);
        y = b.op("bias_add", OpKind::Add, Attrs::new(), &[y, c])?;
    }
    if let Some((lo, hi)) = p.act {
        let attrs = Attrs::new()
            .with("min", AttrValue::Float(lo))
            .with("max", AttrValue::Float(hi));
        y = b.op("act", OpKind::Clip, attrs, &[y])?;
    }
    graph
        .replace_all_uses(result, y)
        .map_err(|e| e.to_string())?;
    let (old, last) = (graph.node_mut(id), y.node);
    old.outputs[0].name = format!("{result_name}/float");
    graph.node_mut(last).outputs[0].name = result_name;
    Ok(())
}

/// DynamicQuantizeLinear (the activation's, from `quantized` when an earlier product made
/// it) → MatMulInteger → Cast → Mul by `a_scale · w_scale`.
fn dynamic(
    b: &mut Builder,
    p: &Product,
    quantized: &mut HashMap<ValueId, Vec<ValueId>>,
) -> Result<ValueId, String> {
    let (wq, params) = quantize_weights(
        &p.w,
        &[p.k, p.n],
        1,
        WeightGranularity::PerChannel,
        WeightBits::Eight,
    )?;
    let wq = b.constant("weight_q", wq, None);
    let w_scale = b.constant("weight_scale", Tensor::from_f32(&[p.n], params.scale), None);
    let q = match quantized.get(&p.a) {
        Some(q) => q.clone(),
        None => {
            let op = Op::new(OpKind::DynamicQuantizeLinear, Attrs::new());
            let q = b
                .graph
                .add_op(
                    &format!("{}/quantize", b.name),
                    op,
                    &[Some(p.a)],
                    &[
                        &format!("{}/a_q", b.name),
                        &format!("{}/a_scale", b.name),
                        &format!("{}/a_zero_point", b.name),
                    ],
                )
                .map_err(|e| e.to_string())?;
            quantized.insert(p.a, q.clone());
            q
        }
    };
    let acc = b.op(
        "matmul",
        OpKind::MatMulInteger,
        Attrs::new(),
        &[q[0], wq, q[2]],
    )?;
    let cast = Attrs::new().with("to", AttrValue::Str("f32".into()));
    let acc = b.op("acc_f32", OpKind::Cast, cast, &[acc])?;
    let scale = b.op("scale", OpKind::Mul, Attrs::new(), &[q[1], w_scale])?;
    b.op("rescale", OpKind::Mul, Attrs::new(), &[acc, scale])
}

/// BlockDequantizeLinear of the quantized weights → MatMul.
fn weight_only(
    b: &mut Builder,
    p: &Product,
    bits: WeightBits,
    block_size: usize,
) -> Result<ValueId, String> {
    let block = if block_size == 0 {
        p.k.max(1)
    } else {
        block_size
    };
    let (q, scales) = quantize_blocks(&p.w, p.k, p.n, block, bits)?;
    let q = b.constant("weight_q", q, None);
    let s = b.constant("weight_scale", scales, None);
    let attrs = Attrs::new()
        .with("axis", AttrValue::Int(0))
        .with("block_size", AttrValue::Int(block as i64));
    let w = b.op("weight", OpKind::BlockDequantizeLinear, attrs, &[q, s])?;
    b.op("matmul", OpKind::MatMul, Attrs::new(), &[p.a, w])
}

/// Symmetric quantization of weights `[K][N]` with one scale per block of `block` rows
/// of each column: `scale = max|w| / qmax` over the block (1 for an all-zero block),
/// `q = round_half_even(w / scale)` in f32, as per-channel weights are quantized
/// ([`super::weights`]). Returns `q` (`[K, N]`, i8 or i4) and the scales
/// (`[ceil(K / block), N]`).
pub fn quantize_blocks(
    w: &[f32],
    k: usize,
    n: usize,
    block: usize,
    bits: WeightBits,
) -> Result<(Tensor, Tensor), String> {
    if block == 0 || w.len() != k * n {
        return Err(format!(
            "{} weights for [{k}, {n}] in blocks of {block}",
            w.len()
        ));
    }
    if let Some(v) = w.iter().find(|v| !v.is_finite()) {
        return Err(format!("weights contain the non-finite value {v}"));
    }
    let qmax = bits.qmax();
    let blocks = k.div_ceil(block);
    let mut scales = vec![0f32; blocks * n];
    for (i, v) in w.iter().enumerate() {
        let s = &mut scales[(i / n / block) * n + i % n];
        *s = s.max(v.abs());
    }
    for s in &mut scales {
        *s = if *s > 0.0 && (*s / qmax).is_normal() {
            *s / qmax
        } else {
            1.0
        };
    }
    let q = w
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            (v / scales[(i / n / block) * n + i % n])
                .round_ties_even()
                .clamp(-qmax, qmax) as i8
        })
        .collect();
    Ok((
        Tensor::new(bits.dtype(), vec![k, n], TensorData::I8(q))?,
        Tensor::from_f32(&[blocks, n], scales),
    ))
}

/// Adds the nodes of one rewrite, named after the product they replace.
struct Builder<'g> {
    graph: &'g mut Graph,
    name: &'g str,
}

impl Builder<'_> {
    fn constant(&mut self, what: &str, t: Tensor, quant: Option<qlift_ir::QuantParams>) -> ValueId {
        self.graph
            .add_const(&format!("{}/{what}", self.name), Arc::new(t), quant)
    }

    fn op(
        &mut self,
        what: &str,
        kind: OpKind,
        attrs: Attrs,
        operands: &[ValueId],
    ) -> Result<ValueId, String> {
        let name = format!("{}/{what}", self.name);
        let inputs: Vec<Option<ValueId>> = operands.iter().map(|&v| Some(v)).collect();
        self.graph
            .add_op(&name, Op::new(kind, attrs), &inputs, &[&name])
            .map(|v| v[0])
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qlift_ir::{Shape, TensorType};

    #[test]
    fn blocks_split_k_with_a_short_last_block() {
        // K = 3 in blocks of 2: column 0 has blocks {1, -2} and {0.5} (1 / (2 / 7) is 3.4999998
        // in f32: 3).
        let w = [1.0, 4.0, -2.0, 0.0, 0.5, -8.0];
        let (q, s) = quantize_blocks(&w, 3, 2, 2, WeightBits::Four).unwrap();
        assert_eq!(s.shape(), &[2, 2]);
        assert_eq!(
            s.as_f32().unwrap(),
            &[2.0 / 7.0, 4.0 / 7.0, 0.5 / 7.0, 8.0 / 7.0]
        );
        assert_eq!(q.dtype(), DType::I4);
        assert_eq!(q.to_i64_vec().unwrap(), vec![3, 7, -7, 0, 7, -7]);
        assert!(quantize_blocks(&[f32::NAN], 1, 1, 1, WeightBits::Eight).is_err());
    }

    fn gemm_graph() -> Graph {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::new(DType::F32, Shape::fixed(&[2, 3])));
        let w: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) / 4.0).collect();
        let w = g.add_const("w", Arc::new(Tensor::from_f32(&[4, 3], w)), None);
        let c = g.add_const("c", Arc::new(Tensor::from_f32(&[4], vec![0.5; 4])), None);
        let attrs = Attrs::new()
            .with("alpha", AttrValue::Float(2.0))
            .with("beta", AttrValue::Float(1.0))
            .with("transA", AttrValue::Int(0))
            .with("transB", AttrValue::Int(1));
        let y = g
            .add_op(
                "fc",
                Op::new(OpKind::Gemm, attrs),
                &[Some(x), Some(w), Some(c)],
                &["y"],
            )
            .unwrap();
        g.set_outputs(y).unwrap();
        g
    }

    #[test]
    fn every_scheme_keeps_the_gemm_close_and_the_output_name() {
        let g = gemm_graph();
        let x = Tensor::from_f32(&[2, 3], vec![0.3, -1.0, 2.0, 0.0, 0.7, -0.2]);
        let want = qlift_ir::interp::run(&g, std::slice::from_ref(&x)).unwrap();
        for scheme in [
            Scheme::Dynamic,
            Scheme::WeightOnly {
                bits: WeightBits::Eight,
                block_size: 0,
            },
            Scheme::WeightOnly {
                bits: WeightBits::Four,
                block_size: 2,
            },
        ] {
            let mut q = g.clone();
            assert_eq!(quantize_products(&mut q, |_, _| Some(scheme)).unwrap(), 1);
            qlift_ir::verify(&q).unwrap();
            assert_eq!(q.value(q.outputs()[0]).name, "y");
            let got = qlift_ir::interp::run(&q, std::slice::from_ref(&x)).unwrap();
            let (a, b) = (want[0].as_f32().unwrap(), got[0].as_f32().unwrap());
            let tol = if scheme.name() == "int4-weight-only" {
                0.6
            } else {
                0.1
            };
            for (u, v) in a.iter().zip(b) {
                assert!((u - v).abs() < tol, "{scheme:?}: {a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn products_of_one_activation_share_its_quantization() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::new(DType::F32, Shape::fixed(&[2, 3])));
        let mut ys = Vec::new();
        for name in ["q", "k"] {
            let w: Vec<f32> = (0..6).map(|i| i as f32 - 2.5).collect();
            let w = g.add_const(name, Arc::new(Tensor::from_f32(&[3, 2], w)), None);
            let op = Op::new(OpKind::MatMul, Attrs::new());
            let y = g.add_op(name, op, &[Some(x), Some(w)], &[name]).unwrap();
            ys.push(y[0]);
        }
        g.set_outputs(ys).unwrap();
        assert_eq!(
            quantize_products(&mut g, |_, _| Some(Scheme::Dynamic)).unwrap(),
            2
        );
        qlift_ir::verify(&g).unwrap();
        let count = |kind| {
            g.node_ids()
                .filter(|&i| g.node(i).op.kind() == Some(kind))
                .count()
        };
        assert_eq!(count(OpKind::DynamicQuantizeLinear), 1);
        assert_eq!(count(OpKind::MatMulInteger), 2);
    }

    #[test]
    fn products_it_cannot_take_stay_float() {
        let mut g = gemm_graph();
        assert_eq!(quantize_products(&mut g, |_, _| None).unwrap(), 0);
        // transA: left alone.
        let id = g.node_ids().find(|&i| g.node(i).name == "fc").unwrap();
        if let NodeOp::Apply(op) = &mut g.node_mut(id).op {
            op.attrs = op.attrs.clone().with("transA", AttrValue::Int(1));
        }
        assert_eq!(
            quantize_products(&mut g, |_, _| Some(Scheme::Dynamic)).unwrap(),
            0
        );
    }
}
