//! Dynamic and weight-only quantization of MatMul and Gemm, JIT against interpreter on
//! random products: `quantize_products` rewrites a float product, then both executors run
//! the result. Dynamic quantization (DynamicQuantizeLinear → MatMulInteger → Cast → Mul)
//! must agree bit for bit; weight-only (BlockDequantizeLinear → MatMul) within 1e-5 of the
//! output range (the dequantized weights are identical, only the float sums' order
//! differs). Shapes cover odd K not a multiple of the block, rank-3 activations with the
//! batch on axis 0, Gemm with `transB`, `alpha`, `beta` and a bias, int8 and int4 weights,
//! per-column scales and blocks of 32, 64 and 128.

use proptest::prelude::*;
use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::{AttrValue, Attrs, DType, Dim, Graph, Op, OpKind, Shape, Tensor, TensorType};
use qlift_passes::quantize::{quantize_products, Scheme, WeightBits};
use qlift_tests::samples::values;
use std::sync::Arc;

#[derive(Clone, Debug)]
struct Case {
    /// Activation dims after the batch: `[rows, K]`, or `[seq, rows, K]` (rank 3 with the
    /// batch; a Gemm is always `[rows, K]` without it).
    rows: usize,
    seq: Option<usize>,
    k: usize,
    n: usize,
    /// None: MatMul; Some((trans_b, bias, alpha)): Gemm.
    gemm: Option<(bool, bool, f32)>,
    scheme: Scheme,
    batch: usize,
    /// How the activations are drawn: 0 signed, 1 positive only, 2 all zero, 3 large, 4
    /// signed with NaN elements.
    input: usize,
    seed: u64,
}

fn scheme() -> impl Strategy<Value = Scheme> {
    prop_oneof![
        Just(Scheme::Dynamic),
        (
            any::<bool>(),
            prop::sample::select(vec![0usize, 32, 64, 128])
        )
            .prop_map(|(four, block_size)| Scheme::WeightOnly {
                bits: if four {
                    WeightBits::Four
                } else {
                    WeightBits::Eight
                },
                block_size,
            }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..=9,
        prop::option::of(1usize..=4),
        1usize..=200,
        1usize..=40,
        prop::option::of((
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec![1.0f32, 0.5]),
        )),
        scheme(),
        1usize..=3,
        0usize..5,
        any::<u64>(),
    )
        .prop_map(|(rows, seq, k, n, gemm, scheme, batch, input, seed)| Case {
            rows,
            seq: if gemm.is_some() { None } else { seq },
            k,
            n,
            gemm,
            scheme,
            batch,
            input,
            seed,
        })
}

/// The float product of the case, its activation batched on axis 0.
fn graph(c: &Case) -> Graph {
    let mut g = Graph::new("t");
    let mut dims = vec![Dim::Batch];
    dims.extend(c.seq.map(Dim::Fixed));
    dims.extend([Dim::Fixed(c.rows), Dim::Fixed(c.k)]);
    if c.gemm.is_some() {
        // Gemm takes matrices: the batch is its rows.
        dims = vec![Dim::Batch, Dim::Fixed(c.k)];
    }
    let x = g.add_input("x", TensorType::new(DType::F32, Shape(dims)));
    let w = values(c.k * c.n, c.seed ^ 0x5eed);
    let y = match c.gemm {
        None => {
            let w = g.add_const("w", Arc::new(Tensor::from_f32(&[c.k, c.n], w)), None);
            g.add_op(
                "mm",
                Op::new(OpKind::MatMul, Attrs::new()),
                &[Some(x), Some(w)],
                &["y"],
            )
        }
        Some((trans_b, bias, alpha)) => {
            let shape = if trans_b { [c.n, c.k] } else { [c.k, c.n] };
            let w = g.add_const("w", Arc::new(Tensor::from_f32(&shape, w)), None);
            let b = bias.then(|| {
                let v = values(c.n, c.seed ^ 0xb1a5);
                g.add_const("b", Arc::new(Tensor::from_f32(&[c.n], v)), None)
            });
            let attrs = Attrs::new()
                .with("alpha", AttrValue::Float(alpha))
                .with("beta", AttrValue::Float(0.75))
                .with("transA", AttrValue::Int(0))
                .with("transB", AttrValue::Int(i64::from(trans_b)));
            g.add_op(
                "fc",
                Op::new(OpKind::Gemm, attrs),
                &[Some(x), Some(w), b],
                &["y"],
            )
        }
    }
    .unwrap();
    g.set_outputs(y).unwrap();
    g
}

fn input(c: &Case) -> Tensor {
    let mut shape = vec![c.batch];
    if c.gemm.is_some() {
        shape.push(c.k);
    } else {
        shape.extend(c.seq);
        shape.extend([c.rows, c.k]);
    }
    let n: usize = shape.iter().product();
    let v = values(n, c.seed);
    let v = match c.input {
        0 => v,
        1 => v.iter().map(|x| x.abs() * 3.0).collect(),
        2 => vec![0.0; n],
        3 => v.iter().map(|x| x * 1e4).collect(),
        _ => v
            .iter()
            .enumerate()
            .map(|(i, &x)| if i % 7 == 3 { f32::NAN } else { x })
            .collect(),
    };
    Tensor::from_f32(&shape, v)
}

fn check(c: &Case) -> Result<(), TestCaseError> {
    let mut g = graph(c);
    let rewritten =
        quantize_products(&mut g, |_, _| Some(c.scheme)).map_err(TestCaseError::fail)?;
    prop_assert_eq!(rewritten, 1);
    qlift_ir::verify(&g).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let x = input(c);
    let want = qlift_ir::interp::run(&g, std::slice::from_ref(&x))
        .map_err(|e| TestCaseError::fail(format!("interp: {e}")))?;
    // The wide micro-kernels (AVX2, where the host has it) on one and two threads (weight-only
    // weights unpacked at run time, and as f32 panels), and the 128-bit Cranelift forms.
    let configs = [
        (1, None, None, false),
        (2, Some(0), None, false),
        (1, None, None, true),
        (1, None, Some(128), false),
    ];
    for (threads, min_macs, bits, weight_only_f32) in configs {
        let opts = CodegenOptions {
            parallel_min_macs: min_macs,
            max_vector_bits: bits,
            weight_only_f32,
            ..CodegenOptions::default()
        };
        let mut program = JitProgram::compile(&g, &opts)
            .map_err(|e| TestCaseError::fail(format!("compile: {e}")))?;
        program.set_threads(threads);
        if bits.is_none() && std::is_x86_feature_detected!("avx2") {
            let forms: Vec<&str> = program
                .program()
                .steps
                .iter()
                .map(|s| s.form.as_str())
                .collect();
            let want = match c.scheme {
                Scheme::Dynamic if qlift_tests::host::has_vnni() => "wide-matmul-vnni",
                Scheme::Dynamic => "wide-matmul",
                Scheme::WeightOnly { .. } if weight_only_f32 => "wide-f32",
                Scheme::WeightOnly { .. } => "wide-f32-unpack",
            };
            prop_assert!(forms.contains(&want), "forms {:?}", forms);
        }
        let got = program
            .run(std::slice::from_ref(&x))
            .map_err(|e| TestCaseError::fail(format!("run: {e}")))?;
        prop_assert_eq!(got[0].shape(), want[0].shape());
        let (a, b) = (got[0].as_f32().unwrap(), want[0].as_f32().unwrap());
        if c.scheme == Scheme::Dynamic {
            let to_bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(
                to_bits(a),
                to_bits(b),
                "{} threads, {:?} bits",
                threads,
                bits
            );
        } else {
            let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            let err = a
                .iter()
                .zip(b)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max)
                / scale;
            prop_assert!(
                err <= 1e-5,
                "relative error {err} with {threads} threads, {bits:?} bits"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn jit_matches_the_interpreter(c in case()) {
        check(&c)?;
    }
}

/// Weight-only products wider than a column chunk (256 columns) and longer than a reduction
/// block (128): the unpacked blocks of every chunk, int8 and int4, per column and in blocks,
/// rank-3 activations, one and two threads.
#[test]
fn weight_only_unpacks_every_chunk_and_block() {
    for (bits, block_size) in [
        (WeightBits::Eight, 0),
        (WeightBits::Four, 32),
        (WeightBits::Four, 128),
        (WeightBits::Eight, 64),
    ] {
        let c = Case {
            rows: 7,
            seq: Some(2),
            k: 300,
            n: 290,
            gemm: None,
            scheme: Scheme::WeightOnly { bits, block_size },
            batch: 2,
            input: 0,
            seed: 11,
        };
        check(&c).unwrap();
    }
}

/// A BlockDequantizeLinear whose operands are graph inputs runs as a kernel (constant ones are
/// folded at compile time): bit-exact with the interpreter, int4 and int8, a short last block.
#[test]
fn block_dequantize_at_run_time_is_bit_exact() {
    for (dtype, k, block) in [(DType::I4, 7, 3), (DType::I8, 5, 5), (DType::I8, 6, 4)] {
        let n = 3;
        let mut g = Graph::new("t");
        let q = g.add_input("q", TensorType::new(dtype, Shape::fixed(&[k, n])));
        let s_shape = [k.div_ceil(block), n];
        let s = g.add_input("s", TensorType::new(DType::F32, Shape::fixed(&s_shape)));
        let attrs = Attrs::new()
            .with("axis", AttrValue::Int(0))
            .with("block_size", AttrValue::Int(block as i64));
        let y = g
            .add_op(
                "dq",
                Op::new(OpKind::BlockDequantizeLinear, attrs),
                &[Some(q), Some(s)],
                &["y"],
            )
            .unwrap();
        g.set_outputs(y).unwrap();
        let qmax = if dtype == DType::I4 { 7 } else { 127 };
        let qv: Vec<i8> = (0..k * n)
            .map(|i| ((i * 37) % (2 * qmax + 1)) as i8 - qmax as i8)
            .collect();
        let qt = Tensor::new(dtype, vec![k, n], qlift_ir::TensorData::I8(qv)).unwrap();
        let st = Tensor::from_f32(&s_shape, values(s_shape[0] * n, 7));
        let inputs = [qt, st];
        let want = qlift_ir::interp::run(&g, &inputs).unwrap();
        let got = JitProgram::compile(&g, &CodegenOptions::default())
            .unwrap()
            .run(&inputs)
            .unwrap();
        assert_eq!(got[0].as_f32().unwrap(), want[0].as_f32().unwrap());
    }
}
