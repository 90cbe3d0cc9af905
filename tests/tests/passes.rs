//! The rewrite pipeline on the bundled models: no BatchNormalization left, outputs equal to
//! the original graph's within f32 rounding, the final dump as a snapshot, and the e-graph
//! round trip without rules being the identity. Plus a property test on random graphs.

use proptest::prelude::*;
use qlift::npy::read_npy;
use qlift::{load_onnx, ImportOptions};
use qlift_ir::text::{print, PrintOptions};
use qlift_ir::{
    AttrValue, Attrs, DType, Dim, Graph, NodeOp, Op, OpKind, Shape, Tensor, TensorType, ValueId,
};
use qlift_passes::bridge::{to_egraph, to_graph};
use qlift_passes::{run_pipeline, PipelineOptions};
use std::path::PathBuf;
use std::sync::Arc;

const MODELS: [(&str, &str); 6] = [
    ("digits_cnn.onnx", "digits_test_x.npy"),
    ("digits_mlp.onnx", "digits_test_x_flat.npy"),
    ("digits_mobile.onnx", "digits_test_x.npy"),
    ("digits_cnn.qdq.onnx", "digits_test_x.npy"),
    ("digits_mlp.qdq.onnx", "digits_test_x_flat.npy"),
    ("digits_mobile.qdq.onnx", "digits_test_x.npy"),
];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models")
}

/// Max |a − b| relative to max |b|.
fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (a.as_f32().unwrap(), b.as_f32().unwrap());
    let scale = b.iter().map(|v| v.abs()).fold(f32::MIN_POSITIVE, f32::max);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

/// The quantization step of the first output when it is a DequantizeLinear.
fn output_step(g: &Graph) -> Option<f32> {
    let out = g.outputs()[0];
    (g.node(out.node).op.kind() == Some(OpKind::DequantizeLinear)).then(|| {
        let q = g.node_inputs(out.node)[0].expect("DequantizeLinear has an operand");
        g.value_type(q).quant.as_ref().expect("quantized").scale[0]
    })
}

#[test]
fn pipeline_folds_every_batchnorm_and_keeps_outputs() {
    for (file, input) in MODELS {
        let graph = load_onnx(&dir().join(file), &ImportOptions::default()).unwrap();
        let (optimized, runs) = run_pipeline(&graph, &PipelineOptions::default()).unwrap();
        qlift_ir::verify(&optimized).unwrap();
        let kinds: Vec<&str> = optimized
            .node_ids()
            .map(|n| optimized.node(n).op.name())
            .collect();
        assert!(
            !kinds.contains(&"BatchNormalization"),
            "{file}: BatchNormalization left"
        );
        assert!(
            !kinds.contains(&"Relu") && !kinds.contains(&"Clip") || file.contains("qdq"),
            "{file}: unfused activation"
        );
        let x = read_npy(&dir().join(input)).unwrap();
        let want = qlift_ir::interp::run(&graph, std::slice::from_ref(&x)).unwrap();
        let got = qlift_ir::interp::run(&optimized, &[x]).unwrap();
        let passes: Vec<&str> = runs.iter().map(|r| r.name).collect();
        match output_step(&optimized) {
            // Quantized models now run on integer ops: within one output step of the QDQ graph.
            Some(step) => {
                let (a, b) = (got[0].as_f32().unwrap(), want[0].as_f32().unwrap());
                let worst = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
                assert!(
                    worst <= step * 1.001,
                    "{file}: outputs differ by {worst} (step {step}) after {passes:?}"
                );
            }
            None => {
                let err = relative_error(&got[0], &want[0]);
                assert!(
                    err <= 1e-4,
                    "{file}: outputs differ by {err} after {passes:?}"
                );
            }
        }
        insta::assert_snapshot!(
            format!("pipeline_{}", file.replace('.', "_")),
            print(&optimized, &PrintOptions::default())
        );
    }
}

#[test]
fn the_e_graph_round_trip_is_the_identity_on_every_bundled_model() {
    for (file, _) in MODELS {
        let graph = load_onnx(&dir().join(file), &ImportOptions::default()).unwrap();
        let back = to_graph(&to_egraph(&graph).unwrap()).unwrap();
        assert!(
            back == graph,
            "{file}:\n{}",
            print(&back, &PrintOptions::default())
        );
    }
}

/// One layer of a random network on an [N, C, 4, 4] activation.
#[derive(Clone, Debug)]
enum Layer {
    Conv {
        out: usize,
        depthwise: bool,
        bias: bool,
    },
    BatchNorm,
    Relu,
    Clip(f32, f32),
    AddChannel,
    MulChannel,
    Identity,
    Dropout,
    TransposeTwice,
    ReshapeTwice,
}

fn layer() -> impl Strategy<Value = Layer> {
    prop_oneof![
        (1usize..5, any::<bool>(), any::<bool>()).prop_map(|(out, depthwise, bias)| Layer::Conv {
            out,
            depthwise,
            bias
        }),
        Just(Layer::BatchNorm),
        Just(Layer::Relu),
        (-2.0f32..0.5, 0.5f32..3.0).prop_map(|(a, b)| Layer::Clip(a, b)),
        Just(Layer::AddChannel),
        Just(Layer::MulChannel),
        Just(Layer::Identity),
        Just(Layer::Dropout),
        Just(Layer::TransposeTwice),
        Just(Layer::ReshapeTwice),
    ]
}

/// Builds the network; values come from a fixed-seed generator so cases are reproducible.
fn network(layers: &[Layer], channels: usize, seed: u64) -> Graph {
    let mut g = Graph::new("random");
    let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
    let mut rand = move |n: usize, lo: f32, hi: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                lo + (hi - lo) * ((state >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    };
    let shape = |c: usize| {
        Shape(vec![
            Dim::Batch,
            Dim::Fixed(c),
            Dim::Fixed(4),
            Dim::Fixed(4),
        ])
    };
    let mut x = g.add_input("x", TensorType::new(DType::F32, shape(channels)));
    let mut c = channels;
    let mut n = 0;
    let mut konst = |g: &mut Graph, dims: &[usize], v: Vec<f32>| {
        n += 1;
        g.add_const(&format!("k{n}"), Arc::new(Tensor::from_f32(dims, v)), None)
    };
    let ints = |v: &[i64]| AttrValue::Ints(v.to_vec());
    for (i, l) in layers.iter().enumerate() {
        let name = format!("l{i}");
        let (op, operands): (Op, Vec<Option<ValueId>>) = match l {
            Layer::Conv {
                out,
                depthwise,
                bias,
            } => {
                let (m, group) = if *depthwise { (c, c) } else { (*out, 1) };
                let w = konst(
                    &mut g,
                    &[m, c / group, 3, 3],
                    rand(m * (c / group) * 9, -0.5, 0.5),
                );
                let b = bias.then(|| konst(&mut g, &[m], rand(m, -0.5, 0.5)));
                let attrs = Attrs::new()
                    .with("kernel_shape", ints(&[3, 3]))
                    .with("strides", ints(&[1, 1]))
                    .with("pads", ints(&[1, 1, 1, 1]))
                    .with("dilations", ints(&[1, 1]))
                    .with("group", AttrValue::Int(group as i64));
                c = m;
                (Op::new(OpKind::Conv, attrs), vec![Some(x), Some(w), b])
            }
            Layer::BatchNorm => {
                let mut p = vec![Some(x)];
                for (lo, hi) in [(0.5, 1.5), (-0.5, 0.5), (-0.5, 0.5), (0.1, 2.0)] {
                    p.push(Some(konst(&mut g, &[c], rand(c, lo, hi))));
                }
                (
                    Op::new(
                        OpKind::BatchNormalization,
                        Attrs::new().with("epsilon", AttrValue::Float(1e-5)),
                    ),
                    p,
                )
            }
            Layer::Relu => (Op::new(OpKind::Relu, Attrs::new()), vec![Some(x)]),
            Layer::Clip(lo, hi) => {
                let attrs = Attrs::new()
                    .with("min", AttrValue::Float(*lo))
                    .with("max", AttrValue::Float(*hi));
                (Op::new(OpKind::Clip, attrs), vec![Some(x)])
            }
            Layer::AddChannel | Layer::MulChannel => {
                let k = konst(&mut g, &[c, 1, 1], rand(c, 0.5, 1.5));
                let kind = if matches!(l, Layer::AddChannel) {
                    OpKind::Add
                } else {
                    OpKind::Mul
                };
                (Op::new(kind, Attrs::new()), vec![Some(x), Some(k)])
            }
            Layer::Identity => (Op::new(OpKind::Identity, Attrs::new()), vec![Some(x)]),
            Layer::Dropout => (Op::new(OpKind::Dropout, Attrs::new()), vec![Some(x)]),
            Layer::TransposeTwice => {
                let t = g
                    .add_op(
                        &format!("{name}a"),
                        Op::new(
                            OpKind::Transpose,
                            Attrs::new().with("perm", ints(&[0, 2, 3, 1])),
                        ),
                        &[Some(x)],
                        &[&format!("{name}a")],
                    )
                    .unwrap();
                (
                    Op::new(
                        OpKind::Transpose,
                        Attrs::new().with("perm", ints(&[0, 3, 1, 2])),
                    ),
                    vec![Some(t[0])],
                )
            }
            Layer::ReshapeTwice => {
                let r = Attrs::new()
                    .with("allowzero", AttrValue::Int(0))
                    .with("shape", ints(&[0, -1]));
                let t = g
                    .add_op(
                        &format!("{name}a"),
                        Op::new(OpKind::Reshape, r),
                        &[Some(x)],
                        &[&format!("{name}a")],
                    )
                    .unwrap();
                let back = Attrs::new()
                    .with("allowzero", AttrValue::Int(0))
                    .with("shape", ints(&[0, c as i64, 4, 4]));
                (Op::new(OpKind::Reshape, back), vec![Some(t[0])])
            }
        };
        x = g.add_op(&name, op, &operands, &[&name]).unwrap()[0];
    }
    g.set_outputs(vec![x]).unwrap();
    g
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_networks_compute_the_same_after_the_pipeline(
        layers in prop::collection::vec(layer(), 1..7),
        channels in 1usize..4,
        batch in 1usize..3,
        seed in any::<u64>(),
    ) {
        let g = network(&layers, channels, seed);
        qlift_ir::verify(&g).unwrap();
        let (optimized, _) = run_pipeline(&g, &PipelineOptions::default()).unwrap();
        let x = Tensor::from_f32(&[batch, channels, 4, 4], (0..batch * channels * 16).map(|i| ((i * 7919) % 17) as f32 / 8.0 - 1.0).collect());
        let want = qlift_ir::interp::run(&g, std::slice::from_ref(&x)).unwrap();
        let got = qlift_ir::interp::run(&optimized, &[x]).unwrap();
        let err = relative_error(&got[0], &want[0]);
        prop_assert!(err <= 1e-4, "error {} for {:?}\n{}", err, layers, print(&optimized, &PrintOptions::default()));
        let bn_left = optimized.node_ids().any(|n| matches!(&optimized.node(n).op, NodeOp::Apply(op) if op.kind == OpKind::BatchNormalization));
        prop_assert!(!bn_left);
    }
}
