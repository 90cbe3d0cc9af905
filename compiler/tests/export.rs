//! The ONNX exporter: every bundled model, graphs with fused activations, and a small graph
//! per op family go IR → ONNX → IR and come back as the same graph (or, where the exporter
//! spells an IR feature as more ONNX nodes, with the same interpreter outputs).
//!
//! With `QLIFT_EXPORT_DIR=DIR` set, the round-trip tests also leave every exported model in
//! DIR with its inputs and the interpreter's outputs on the IR it was exported from, for
//! `tools/check_export_ort.py DIR` to run them with ONNX Runtime.

use onnx_protobuf::{Message, ModelProto};
use qlift::npy::{read_npy, write_npy};
use qlift::{export_onnx, load_onnx, load_onnx_bytes, Error, ImportOptions};
use qlift_ir::interp::run;
use qlift_ir::text::{parse, print, PrintOptions};
use qlift_ir::{
    verify, AttrValue, Attrs, DType, Graph, Op, OpKind, QuantParams, Shape, Tensor, TensorData,
    TensorType, Value,
};
use std::path::{Path, PathBuf};

mod support;
use support::models_dir;

/// Every bundled model and the test input it reads.
const MODELS: [(&str, &str); 6] = [
    ("digits_cnn", "digits_test_x.npy"),
    ("digits_mlp", "digits_test_x_flat.npy"),
    ("digits_mobile", "digits_test_x.npy"),
    ("digits_cnn.qdq", "digits_test_x.npy"),
    ("digits_mlp.qdq", "digits_test_x_flat.npy"),
    ("digits_mobile.qdq", "digits_test_x.npy"),
];

fn load(file: &str) -> Graph {
    load_onnx(&models_dir().join(file), &ImportOptions::default())
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn npy(file: &str) -> Tensor {
    read_npy(&models_dir().join(file)).unwrap()
}

fn full() -> PrintOptions {
    PrintOptions {
        full_constants: true,
        ..PrintOptions::default()
    }
}

/// Exports `graph`, checks the model's header, and imports it back.
fn round_trip(graph: &Graph) -> (Graph, ModelProto, Vec<u8>) {
    let bytes = export_onnx(graph).unwrap_or_else(|e| panic!("{}: {e}", graph.name));
    let model = ModelProto::parse_from_bytes(&bytes).unwrap();
    assert_eq!(model.producer_name, "qlift");
    assert_eq!(model.opset_import.len(), 1);
    assert_eq!(model.opset_import[0].domain, "");
    let back = load_onnx_bytes(&bytes, None, &ImportOptions::default())
        .unwrap_or_else(|e| panic!("{}: the exported model does not import: {e}", graph.name));
    (back, model, bytes)
}

fn opset(model: &ModelProto) -> i64 {
    model.opset_import[0].version
}

/// Outputs of two runs are bit-identical (NaN included).
fn assert_same_outputs(what: &str, a: &[Tensor], b: &[Tensor]) {
    assert_eq!(a.len(), b.len(), "{what}: number of outputs");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(
            (x.dtype(), x.shape()),
            (y.dtype(), y.shape()),
            "{what}: output {i} type"
        );
        match (x.data(), y.data()) {
            (TensorData::F32(p), TensorData::F32(q)) => {
                let differ = p
                    .iter()
                    .zip(q)
                    .filter(|(u, v)| u.to_bits() != v.to_bits())
                    .count();
                assert_eq!(
                    differ,
                    0,
                    "{what}: output {i} differs in {differ} of {} elements",
                    p.len()
                );
            }
            (p, q) => assert_eq!(p, q, "{what}: output {i}"),
        }
    }
}

/// Where the bundled-model tests leave files for the ONNX Runtime check, if asked to.
fn export_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("QLIFT_EXPORT_DIR")?);
    std::fs::create_dir_all(&dir).unwrap();
    Some(dir)
}

/// Leaves `NAME.onnx`, the IR as `NAME.qir`, and inputs and interpreter outputs as
/// `NAME.input.K.npy` and `NAME.expected.K.npy` for `tools/check_export_ort.py`.
fn save_for_ort(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    graph: &Graph,
    inputs: &[Tensor],
    expected: &[Tensor],
) {
    std::fs::write(dir.join(format!("{name}.onnx")), bytes).unwrap();
    std::fs::write(dir.join(format!("{name}.qir")), print(graph, &full())).unwrap();
    for (k, t) in inputs.iter().enumerate() {
        write_npy(&dir.join(format!("{name}.input.{k}.npy")), t).unwrap();
    }
    for (k, t) in expected.iter().enumerate() {
        write_npy(&dir.join(format!("{name}.expected.{k}.npy")), t).unwrap();
    }
}

#[test]
fn bundled_models_round_trip_through_onnx() {
    for (name, input) in MODELS {
        let graph = load(&format!("{name}.onnx"));
        let (back, model, bytes) = round_trip(&graph);
        assert_eq!(opset(&model), 13, "{name}");
        assert_eq!(model.ir_version, 8, "{name}");
        assert_eq!(
            print(&back, &full()),
            print(&graph, &full()),
            "{name}: the re-imported graph prints differently"
        );
        assert!(back == graph, "{name}: the re-imported graph is not equal");
        let x = npy(input);
        let want = run(&graph, std::slice::from_ref(&x)).unwrap();
        let got = run(&back, std::slice::from_ref(&x)).unwrap();
        assert_same_outputs(name, &want, &got);
        if let Some(dir) = export_dir() {
            save_for_ort(&dir, name, &bytes, &graph, std::slice::from_ref(&x), &want);
        }
    }
}

/// The graph an exported model holds keeps the ONNX model's structure: inputs with the batch
/// as `N`, quantized weights as int8 initializers, and no initializer named like a value.
#[test]
fn exported_qdq_model_has_int8_initializers_and_symbolic_batch() {
    let graph = load("digits_cnn.qdq.onnx");
    let (_, model, _) = round_trip(&graph);
    let g = model.graph.as_ref().unwrap();
    assert_eq!(g.name, "digits_cnn");
    let input = &g.input[0];
    let dims = format!("{:?}", input.type_.as_ref().unwrap());
    assert!(
        dims.contains("DimParam(\"N\")") && dims.contains("DimValue(8)"),
        "{dims}"
    );
    let weights = g
        .initializer
        .iter()
        .find(|t| t.name == "ConvBnFusion_W_c1_w_quantized")
        .unwrap();
    assert_eq!(
        (
            weights.data_type,
            weights.dims.as_slice(),
            weights.raw_data.len()
        ),
        (3, &[16, 1, 3, 3][..], 144)
    );
    let scale = g
        .initializer
        .iter()
        .find(|t| t.name == "ConvBnFusion_W_c1_w_quantized_scale")
        .unwrap();
    assert_eq!((scale.data_type, scale.dims.as_slice()), (1, &[16][..]));
    let dq = g
        .node
        .iter()
        .find(|n| n.name == "ConvBnFusion_W_c1_w_DequantizeLinear")
        .unwrap();
    assert_eq!(
        dq.input,
        [
            "ConvBnFusion_W_c1_w_quantized",
            "ConvBnFusion_W_c1_w_quantized_scale",
            "ConvBnFusion_W_c1_w_quantized_zero_point"
        ]
    );
    assert_eq!(
        dq.attribute
            .iter()
            .map(|a| (a.name.as_str(), a.i))
            .collect::<Vec<_>>(),
        [("axis", 0)]
    );
    let q = g
        .node
        .iter()
        .find(|n| n.name == "logits_QuantizeLinear")
        .unwrap();
    let zp = g.initializer.iter().find(|t| t.name == q.input[2]).unwrap();
    assert_eq!(
        (zp.data_type, zp.dims.len(), zp.raw_data.as_slice()),
        (2, 0, &[116u8][..])
    );
    // Names are unique across values and initializers.
    let mut names: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    names.extend(
        g.node
            .iter()
            .flat_map(|n| n.output.iter().map(String::as_str)),
    );
    names.extend(g.input.iter().map(|v| v.name.as_str()));
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count, "a name is defined twice");
}

/// The rewrite pipeline fuses Relu (digits_cnn) and Clip [0, 6] (digits_mobile) into their
/// producers; the exporter writes them back as Relu and Clip with the interpreter's outputs.
#[test]
fn fused_activations_export_as_relu_and_clip() {
    for (name, input, relus, clips) in [
        ("digits_cnn", "digits_test_x.npy", 3, 0),
        ("digits_mobile", "digits_test_x.npy", 2, 2),
    ] {
        let graph = load(&format!("{name}.onnx"));
        let (fused, _) =
            qlift_passes::run_pipeline(&graph, &qlift_passes::PipelineOptions::default()).unwrap();
        let fused_ops = fused.node_ids().filter(|&id| {
            matches!(&fused.node(id).op, qlift_ir::NodeOp::Apply(op) if op.attrs.get("act_min").is_some())
        });
        assert_eq!(
            fused_ops.count(),
            relus + clips,
            "{name}: fused activations after the pipeline"
        );
        let (back, model, bytes) = round_trip(&fused);
        let count = |op: &str| {
            model
                .graph
                .as_ref()
                .unwrap()
                .node
                .iter()
                .filter(|n| n.op_type == op)
                .count()
        };
        assert_eq!((count("Relu"), count("Clip")), (relus, clips), "{name}");
        assert_eq!(count("BatchNormalization"), 0, "{name}");
        verify(&back).unwrap();
        let x = npy(input);
        let want = run(&fused, std::slice::from_ref(&x)).unwrap();
        let got = run(&back, std::slice::from_ref(&x)).unwrap();
        assert_same_outputs(name, &want, &got);
        // The activation produces the value's own name, so outputs keep theirs.
        assert_eq!(
            back.value(back.outputs()[0]).name,
            fused.value(fused.outputs()[0]).name
        );
        if let Some(dir) = export_dir() {
            save_for_ort(
                &dir,
                &format!("{name}.fused"),
                &bytes,
                &fused,
                std::slice::from_ref(&x),
                &want,
            );
        }
    }
}

/// Deterministic inputs for a graph, batch 2.
fn inputs_for(graph: &Graph) -> Vec<Tensor> {
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    graph
        .input_values()
        .iter()
        .map(|&v| {
            let ty = graph.value_type(v);
            let shape = ty.shape.resolve(2);
            let n: usize = shape.iter().product();
            match ty.dtype {
                DType::F32 => Tensor::from_f32(
                    &shape,
                    (0..n)
                        .map(|_| (next() % 1000) as f32 / 100.0 - 5.0)
                        .collect(),
                ),
                d => {
                    let (lo, hi) = d.int_range().unwrap();
                    let (lo, hi) = (lo.max(-100), hi.min(100));
                    let values = (0..n)
                        .map(|_| lo + (next() % (hi - lo + 1) as u64) as i64)
                        .collect();
                    Tensor::from_i64_values(d, shape, values).unwrap()
                }
            }
        })
        .collect()
}

/// Small graphs for the ops and attributes the bundled models do not have, each with the
/// opset its export needs. Constants come right before their first use, where the importer
/// puts them, so that the re-imported graph is equal node for node.
const GRAPHS: &[(i64, &str)] = &[
    (
        13,
        "graph shapes(%x: f32[N,2,3,4]) -> (%t, %u, %p, %s, %c) {
  %r = Reshape(%x) {allowzero=0, shape=[0, 6, -1]} : f32[N,6,4]
  %t = Transpose(%r) {perm=[0, 2, 1]} : f32[N,4,6]
  %u = Unsqueeze(%t) {axes=[1, 4]} : f32[N,1,4,6,1]
  %q = Squeeze(%u) {axes=[1]} : f32[N,4,6,1]
  %s = Softmax(%q) {axis=2} : f32[N,4,6,1]
  %p = Pad(%x) {mode=\"constant\", pads=[0, 0, 1, 0, 0, 1, 0, 2], value=0.5} : f32[N,3,4,6]
  %c = Concat(%x, %x) {axis=3} : f32[N,2,3,8]
}",
    ),
    (
        13,
        "graph math(%x: f32[N,4], %y: f32[N,4]) -> (%a, %b, %c, %d, %e, %f, %g, %h, %i, %j, %k) {
  %a = Clip(%x) {max=1.5, min=-inf} : f32[N,4]
  %b = Clip(%x) {max=inf, min=-0.5} : f32[N,4]
  %c = LeakyRelu(%x) {alpha=0.2} : f32[N,4]
  %d = HardSigmoid(%x) {alpha=0.3, beta=0.4} : f32[N,4]
  %e = Sigmoid(%x) : f32[N,4]
  %f = Tanh(%x) : f32[N,4]
  %g = Sub(%x, %y) : f32[N,4]
  %h = Mul(%x, %y) : f32[N,4]
  %i = Div(%x, %y) : f32[N,4]
  %w = const f32[4,3] [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]
  %j = MatMul(%x, %w) : f32[N,3]
  %k = Dropout(%j) : f32[N,3]
}",
    ),
    (
        13,
        "graph pools(%x: f32[N,2,5,5]) -> (%m, %a, %g, %i) {
  %m = MaxPool(%x) {ceil_mode=1, dilations=[1, 1], kernel_shape=[2, 2], pads=[0, 0, 1, 1], strides=[2, 2]} : f32[N,2,3,3]
  %a = AveragePool(%x) {ceil_mode=0, count_include_pad=0, dilations=[1, 1], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]} : f32[N,2,3,3]
  %g = GlobalMaxPool(%x) : f32[N,2,1,1]
  %i = Identity(%g) : f32[N,2,1,1]
}",
    ),
    (
        13,
        "graph ints(%x: i32[N,3]) -> (%c, %s) {
  %c = Clip(%x) {max=50.0, min=-20.0} : i32[N,3]
  %k = const i32[3] [1, -2, 3]
  %s = Add(%x, %k) : i32[N,3]
}",
    ),
    (
        13,
        "graph qlinear(%x: u8[N,2,4,4] quant(scale=0.05, zero_point=100)) -> (%y, %m, %ci, %mi) {
  %w = const i8[3,2,1,1] quant(axis=0, scale=[0.01, 0.02, 0.03], zero_point=[0, 0, 0]) [1, -2, 3, -4, 5, -6]
  %b = const i32[3] [10, -20, 30]
  %y = QLinearConv(%x, %w, %b) {dilations=[1, 1], group=1, kernel_shape=[1, 1], pads=[0, 0, 0, 0], strides=[1, 1]} : u8[N,3,4,4] quant(scale=0.1, zero_point=128)
  %f = Flatten(%x) {axis=1} : u8[N,32] quant(scale=0.05, zero_point=100)
  %v = const i8[32,2] quant(axis=1, scale=[0.01, 0.02], zero_point=[0, 0]) [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, -1, -2, -3, -4, -5, -6, -7, -8, -9, -10, -11, -12, -13, -14, -15, -16, -17, -18, -19, -20, -21, -22, -23, -24, -25, -26, -27, -28, -29, -30, -31, -32]
  %m = QLinearMatMul(%f, %v) : u8[N,2] quant(scale=0.5, zero_point=3)
  %cw = const u8[2,2,1,1] [1, 2, 3, 4]
  %cz = const u8[] [100]
  %ci = ConvInteger(%x, %cw, %cz, _) {dilations=[1, 1], group=1, kernel_shape=[1, 1], pads=[0, 0, 0, 0], strides=[1, 1]} : i32[N,2,4,4]
  %mw = const u8[32,3] [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96]
  %mi = MatMulInteger(%f, %mw, _, _) : i32[N,3]
}",
    ),
    (
        13,
        "graph qdq(%x: f32[N,3,2]) -> (%d, %p) {
  %q = QuantizeLinear(%x) : i8[N,3,2] quant(axis=1, scale=[0.1, 0.2, 0.3], zero_point=[-1, 0, 1])
  %d = DequantizeLinear(%q) : f32[N,3,2]
  %u = QuantizeLinear(%x) : u8[N,3,2] quant(scale=0.1, zero_point=7)
  %m = MaxPool(%u) {ceil_mode=0, dilations=[1], kernel_shape=[2], pads=[0, 0], strides=[1]} : u8[N,3,1] quant(scale=0.1, zero_point=7)
  %p = DequantizeLinear(%m) : f32[N,3,1]
}",
    ),
    (
        13,
        "graph elementwise(%x: f32[N,4], %i: i32[N,4], %b: bool[N,4]) -> (%m, %u, %a, %c, %w, %l, %q, %r) {
  %two = const f32[] [2.0]
  %p = Pow(%x, %two) : f32[N,4]
  %s = Sqrt(%p) : f32[N,4]
  %e = Exp(%s) : f32[N,4]
  %g = Log(%e) : f32[N,4]
  %n = Neg(%g) : f32[N,4]
  %k = Reciprocal(%n) : f32[N,4]
  %f = Floor(%k) : f32[N,4]
  %ce = Ceil(%x) : f32[N,4]
  %ro = Round(%x) : f32[N,4]
  %er = Erf(%ro) : f32[N,4]
  %si = Sin(%er) : f32[N,4]
  %co = Cos(%si) : f32[N,4]
  %sg = Sign(%co) : f32[N,4]
  %m = Max(%f, %ce, %sg) : f32[N,4]
  %mi = Min(%x, %m) : f32[N,4]
  %me = Mean(%mi, %x) : f32[N,4]
  %u = Sum(%me, %x, %mi) : f32[N,4]
  %three = const i32[] [3]
  %md = Mod(%i, %three) {fmod=0} : i32[N,4]
  %ab = Abs(%md) : i32[N,4]
  %a = Pow(%ab, %three) : i32[N,4]
  %gt = Greater(%x, %u) : bool[N,4]
  %ge = GreaterOrEqual(%x, %u) : bool[N,4]
  %lt = Less(%x, %u) : bool[N,4]
  %le = LessOrEqual(%x, %u) : bool[N,4]
  %eq = Equal(%gt, %b) : bool[N,4]
  %nt = Not(%eq) : bool[N,4]
  %an = And(%nt, %ge) : bool[N,4]
  %o = Or(%an, %lt) : bool[N,4]
  %c = Xor(%o, %le) : bool[N,4]
  %w = Where(%c, %x, %u) : f32[N,4]
  %sl = const f32[4] [0.1, 0.2, 0.3, 0.4]
  %pr = PRelu(%x, %sl) : f32[N,4]
  %el = Elu(%pr) {alpha=0.5} : f32[N,4]
  %se = Selu(%el) {alpha=1.5, gamma=1.25} : f32[N,4]
  %sp = Softplus(%se) : f32[N,4]
  %ss = Softsign(%sp) : f32[N,4]
  %tr = ThresholdedRelu(%ss) {alpha=0.25} : f32[N,4]
  %l = Celu(%tr) {alpha=2.0} : f32[N,4]
  %q = Mod(%x, %two) {fmod=1} : f32[N,4]
  %r = Abs(%i) : i32[N,4]
}",
    ),
    (
        20,
        "graph opset20(%x: f32[N,4]) -> (%g, %t, %m) {
  %g = Gelu(%x) {approximate=\"none\"} : f32[N,4]
  %t = Gelu(%x) {approximate=\"tanh\"} : f32[N,4]
  %m = Mish(%x) : f32[N,4]
}",
    ),
    (
        14,
        "graph opset14(%x: f32[N,4]) -> (%h, %r) {
  %h = HardSwish(%x) : f32[N,4]
  %r = Reshape(%x) {allowzero=1, shape=[-1, 2, 2]} : f32[N,2,2]
}",
    ),
    (
        19,
        "graph opset19(%x: f32[N,1,6,6]) -> (%a) {
  %a = AveragePool(%x) {ceil_mode=0, count_include_pad=1, dilations=[2, 2], kernel_shape=[2, 2], pads=[0, 0, 0, 0], strides=[1, 1]} : f32[N,1,4,4]
}",
    ),
    // Resampling, padding and selection.
    (
        13,
        "graph resample(%x: f32[N,2,3,4], %y: f32[N,8,2,3]) -> (%n, %c, %s, %r, %e) {
  %sc = const f32[4] [1.0, 1.0, 2.0, 1.5]
  %n = Resize(%x, _, %sc) {antialias=0, axes=[0, 1, 2, 3], coordinate_transformation_mode=\"asymmetric\", cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, keep_aspect_ratio_policy=\"stretch\", mode=\"nearest\", nearest_mode=\"floor\"} : f32[N,2,6,6]
  %c = Resize(%x, _, %sc) {antialias=0, axes=[0, 1, 2, 3], coordinate_transformation_mode=\"half_pixel\", cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, keep_aspect_ratio_policy=\"stretch\", mode=\"cubic\", nearest_mode=\"round_prefer_floor\"} : f32[N,2,6,6]
  %d = DepthToSpace(%y) {blocksize=2, mode=\"CRD\"} : f32[N,2,4,6]
  %s = SpaceToDepth(%d) {blocksize=2, mode=\"DCR\"} : f32[N,8,2,3]
  %r = Pad(%x) {mode=\"reflect\", pads=[0, 0, 1, 2, 0, 0, 2, 1], value=0.0} : f32[N,2,6,7]
  %e = Pad(%x) {mode=\"edge\", pads=[0, 1, 0, -1, 0, 0, 0, 3], value=0.0} : f32[N,3,3,6]
}",
    ),
    (
        13,
        "graph select(%w: f32[3,4], %v: f32[2], %u: f32[2,4]) -> (%g, %n, %s, %e, %o, %z) {
  %ix = const i64[2,4] [0, 2, -1, 1, 2, 0, 1, -3]
  %g = GatherElements(%w, %ix) {axis=0} : f32[2,4]
  %tp = const i64[2,1] [2, 0]
  %n = GatherND(%w, %tp) {batch_dims=0} : f32[2,4]
  %s = ScatterND(%w, %tp, %u) {reduction=\"none\"} : f32[3,4]
  %e = ScatterElements(%w, %ix, %u) {axis=0, reduction=\"none\"} : f32[3,4]
  %hot = const i64[3] [0, 2, -1]
  %depth = const i64[] [4]
  %o = OneHot(%hot, %depth, %v) {axis=1} : f32[3,4]
  %z = NonZero(%w) : i64[2,?]
}",
    ),
    (
        14,
        "graph trilu(%x: f32[N,3,4]) -> (%u, %l) {
  %k = const i64[] [-1]
  %u = Trilu(%x, %k) {upper=1} : f32[N,3,4]
  %l = Trilu(%x) {upper=0} : f32[N,3,4]
}",
    ),
    (
        16,
        "graph scatter16(%w: f32[3,4], %u: f32[2,4]) -> (%s) {
  %tp = const i64[2,1] [2, 2]
  %s = ScatterND(%w, %tp, %u) {reduction=\"add\"} : f32[3,4]
}",
    ),
    (
        18,
        "graph resize18(%x: f32[N,2,5,6], %z: f32[1,1,4,5], %w: f32[3,4], %u: f32[2,4]) -> (%a, %t, %e) {
  %s = const f32[2] [0.5, 0.75]
  %a = Resize(%x, _, %s) {antialias=1, axes=[3, 2], coordinate_transformation_mode=\"half_pixel\", cubic_coeff_a=-0.5, exclude_outside=1, extrapolation_value=0.0, keep_aspect_ratio_policy=\"stretch\", mode=\"cubic\", nearest_mode=\"round_prefer_floor\"} : f32[N,2,3,3]
  %roi = const f32[4] [0.1, -0.2, 0.9, 1.1]
  %nz = const i64[2] [3, 6]
  %t = Resize(%z, %roi, _, %nz) {antialias=0, axes=[2, 3], coordinate_transformation_mode=\"tf_crop_and_resize\", cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=-1.0, keep_aspect_ratio_policy=\"stretch\", mode=\"linear\", nearest_mode=\"round_prefer_floor\"} : f32[1,1,3,6]
  %ix = const i64[2,4] [0, 2, 2, 1, 2, 0, 1, 0]
  %e = ScatterElements(%w, %ix, %u) {axis=0, reduction=\"max\"} : f32[3,4]
}",
    ),
    (
        19,
        "graph pad19(%x: f32[N,2,3,4]) -> (%p, %h) {
  %p = Pad(%x) {mode=\"wrap\", pads=[0, 0, 4, 1, 0, 0, 1, 2], value=0.0} : f32[N,2,8,7]
  %s = const f32[4] [1.0, 1.0, 1.5, 0.6]
  %h = Resize(%x, _, %s) {antialias=0, axes=[0, 1, 2, 3], coordinate_transformation_mode=\"half_pixel_symmetric\", cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, keep_aspect_ratio_policy=\"stretch\", mode=\"linear\", nearest_mode=\"round_prefer_floor\"} : f32[N,2,4,2]
}",
    ),
    (
        13,
        "graph recurrent(%x: f32[N,2,3], %h0: f32[1,2,1]) -> (%y, %yh, %yc, %gy, %gh, %ry, %rh) {
  %w = const f32[1,4,3] [0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8, 0.9, -0.1, 0.2, -0.3]
  %r = const f32[1,4,1] [0.5, -0.4, 0.3, -0.2]
  %y, %yh, %yc = LSTM(%x, %w, %r, _, _, %h0) {activation_alpha=[0.0, 0.0, 0.0], activation_beta=[0.0, 0.0, 0.0], activations=\"Sigmoid,Tanh,Tanh\", clip=inf, direction=\"forward\", hidden_size=1, input_forget=0, layout=0} : f32[N,1,2,1], f32[1,2,1], f32[1,2,1]
  %gw = const f32[1,3,3] [0.3, 0.1, -0.2, 0.5, -0.6, 0.2, -0.1, 0.4, 0.3]
  %gr = const f32[1,3,1] [0.2, -0.7, 0.6]
  %gb = const f32[1,6] [0.1, 0.2, -0.3, 0.05, -0.1, 0.2]
  %gy, %gh = GRU(%x, %gw, %gr, %gb) {activation_alpha=[0.25, 0.0], activation_beta=[0.45, 0.0], activations=\"HardSigmoid,Tanh\", clip=2.0, direction=\"reverse\", hidden_size=1, layout=0, linear_before_reset=1} : f32[N,1,2,1], f32[1,2,1]
  %rw = const f32[2,2,3] [0.2, -0.1, 0.4, 0.3, 0.5, -0.6, -0.2, 0.1, 0.7, 0.3, -0.4, 0.2]
  %rr = const f32[2,2,2] [0.1, -0.3, 0.2, 0.4, -0.5, 0.6, 0.3, -0.1]
  %ry, %rh = RNN(%x, %rw, %rr) {activation_alpha=[0.0, 0.1], activation_beta=[0.0, 0.0], activations=\"Tanh,LeakyRelu\", clip=inf, direction=\"bidirectional\", hidden_size=2, layout=0} : f32[N,2,2,2], f32[2,2,2]
}",
    ),
    (
        21,
        "graph int4(%x: f32[N,4]) -> (%y, %d) {
  %w = const i4[4,3] quant(axis=1, scale=[0.5, 0.25, 0.125], zero_point=[0, 1, -1]) [-8, -1, 0, 1, 7, 3, -3, 2, -2, 5, -5, 4]
  %wd = DequantizeLinear(%w) : f32[4,3]
  %y = MatMul(%x, %wd) : f32[N,3]
  %q = QuantizeLinear(%x) : u4[N,4] quant(scale=0.5, zero_point=8)
  %d = DequantizeLinear(%q) : f32[N,4]
}",
    ),
];

#[test]
fn every_op_family_round_trips() {
    for &(want_opset, text) in GRAPHS {
        let graph = parse(text).unwrap_or_else(|e| panic!("{text}\n{e}"));
        verify(&graph).unwrap_or_else(|e| panic!("{}: {e}", graph.name));
        let (back, model, bytes) = round_trip(&graph);
        assert_eq!(opset(&model), want_opset, "{}", graph.name);
        assert_eq!(
            model.ir_version,
            match want_opset {
                21 => 10,
                19 | 20 => 9,
                _ => 8,
            },
            "{}",
            graph.name
        );
        assert_eq!(
            print(&back, &full()),
            print(&graph, &full()),
            "{}",
            graph.name
        );
        assert!(
            back == graph,
            "{}: not equal after the round trip",
            graph.name
        );
        let x = inputs_for(&graph);
        let want = run(&graph, &x).unwrap();
        assert_same_outputs(&graph.name, &want, &run(&back, &x).unwrap());
        if let Some(dir) = export_dir() {
            save_for_ort(
                &dir,
                &format!("op.{}", graph.name),
                &bytes,
                &graph,
                &x,
                &want,
            );
        }
    }
}

/// Spellings that do not come back as the same IR but compute the same: a fused clamp with
/// one infinite bound, a Squeeze of no axes, a value listed twice as output, clashing names.
#[test]
fn other_spellings_compute_the_same() {
    let text = "graph spellings(%x: f32[N,1,4]) -> (%a, %b, %s, %s, %q_scale) {
  %k = const f32[4] [1.0, -2.0, 3.0, -4.0]
  %a = Add(%x, %k) {act_max=2.5, act_min=-inf} : f32[N,1,4]
  %b = Add(%x, %k) {act_max=inf, act_min=-inf} : f32[N,1,4]
  %s = Squeeze(%x) {axes=[]} : f32[N,1,4]
  %q = QuantizeLinear(%x) : u8[N,1,4] quant(scale=0.1, zero_point=3)
  %q_scale = DequantizeLinear(%q) : f32[N,1,4]
}";
    let graph = parse(text).unwrap();
    verify(&graph).unwrap();
    let (back, model, _) = round_trip(&graph);
    verify(&back).unwrap();
    let g = model.graph.as_ref().unwrap();
    let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(
        ops,
        [
            "Add",
            "Clip",
            "Add",
            "Identity",
            "QuantizeLinear",
            "DequantizeLinear",
            "Identity"
        ]
    );
    let clip = &g.node[1];
    assert_eq!((clip.input[1].as_str(), clip.output[0].as_str()), ("", "a"));
    let outputs: Vec<&str> = g.output.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(outputs, ["a", "b", "s", "s_1", "q_scale"]);
    // The scale initializer of %q does not take the name of the value %q_scale.
    let q = g
        .node
        .iter()
        .find(|n| n.op_type == "QuantizeLinear")
        .unwrap();
    assert_eq!(q.input[1], "q_scale_1");
    let x = inputs_for(&graph);
    let want = run(&graph, &x).unwrap();
    assert_same_outputs("spellings", &want, &run(&back, &x).unwrap());
    if let Some(dir) = export_dir() {
        save_for_ort(
            &dir,
            "op.spellings",
            &export_onnx(&graph).unwrap(),
            &graph,
            &x,
            &want,
        );
    }
}

fn export_error(graph: &Graph) -> (String, String, String) {
    match export_onnx(graph) {
        Err(Error::Export { node, op, message }) => (node, op, message),
        other => panic!("expected an export error, got {:?}", other.map(|b| b.len())),
    }
}

#[test]
fn unexportable_nodes_are_named_in_the_error() {
    // A Conv without its canonical attributes.
    let mut g = Graph::new("broken");
    let x = g.add_input(
        "x",
        TensorType::new(DType::F32, Shape::fixed(&[1, 1, 3, 3])),
    );
    let w = g.add_const("w", Tensor::from_f32(&[1, 1, 1, 1], vec![1.0]).into(), None);
    let ty = TensorType::new(DType::F32, Shape::fixed(&[1, 1, 3, 3]));
    let conv = g
        .add_node(
            "the_conv",
            Op::new(OpKind::Conv, Attrs::new()),
            &[Some(x), Some(w)],
            vec![Value {
                name: "y".into(),
                ty,
            }],
        )
        .unwrap();
    g.set_outputs(vec![qlift_ir::ValueId {
        node: conv,
        output: 0,
    }])
    .unwrap();
    let (node, op, message) = export_error(&g);
    assert_eq!((node.as_str(), op.as_str()), ("the_conv", "Conv"));
    assert!(message.contains("dilations"), "{message}");
    let shown = export_onnx(&g).unwrap_err().to_string();
    assert!(shown.contains("node `the_conv` (Conv)"), "{shown}");

    // QLinearConv weights quantized along an axis ONNX cannot express.
    let text = "graph q(%x: u8[N,2,2,2] quant(scale=0.1, zero_point=0)) -> (%y) {
  %w = const i8[2,2,1,1] quant(axis=1, scale=[0.1, 0.2], zero_point=[0, 0]) [1, 2, 3, 4]
  %y = QLinearConv(%x, %w) {dilations=[1, 1], group=1, kernel_shape=[1, 1], pads=[0, 0, 0, 0], strides=[1, 1]} : u8[N,2,2,2] quant(scale=0.1, zero_point=0) @qconv
}";
    let (node, op, message) = export_error(&parse(text).unwrap());
    assert_eq!((node.as_str(), op.as_str()), ("qconv", "QLinearConv"));
    assert!(
        message.contains("weights") && message.contains("axis"),
        "{message}"
    );

    // A DequantizeLinear of a value without quantization parameters.
    let mut g = Graph::new("dq");
    let x = g.add_input("x", TensorType::new(DType::U8, Shape::fixed(&[2])));
    let ty = TensorType::new(DType::F32, Shape::fixed(&[2]));
    let dq = g
        .add_node(
            "deq",
            Op::new(OpKind::DequantizeLinear, Attrs::new()),
            &[Some(x)],
            vec![Value {
                name: "y".into(),
                ty,
            }],
        )
        .unwrap();
    g.set_outputs(vec![qlift_ir::ValueId {
        node: dq,
        output: 0,
    }])
    .unwrap();
    let (node, _, message) = export_error(&g);
    assert_eq!(node, "deq");
    assert!(
        message.contains("`x`") && message.contains("no quantization parameters"),
        "{message}"
    );

    // A Pad of a quantized value with a non-zero fill.
    let mut g = Graph::new("pad");
    let q = QuantParams::per_tensor(0.5, 3);
    let x = g.add_input(
        "x",
        TensorType::quantized(DType::U8, Shape::fixed(&[2]), q.clone()),
    );
    let attrs = Attrs::new()
        .with("pads", AttrValue::Ints(vec![1, 1]))
        .with("value", AttrValue::Float(1.0))
        .with("mode", AttrValue::Str("constant".into()));
    let ty = TensorType::quantized(DType::U8, Shape::fixed(&[4]), q);
    let p = g
        .add_node(
            "padq",
            Op::new(OpKind::Pad, attrs),
            &[Some(x)],
            vec![Value {
                name: "y".into(),
                ty,
            }],
        )
        .unwrap();
    g.set_outputs(vec![qlift_ir::ValueId { node: p, output: 0 }])
        .unwrap();
    assert_eq!(export_error(&g).0, "padq");
}

/// A quantized Pad fills with the zero point, as the IR pads with real 0.0.
#[test]
fn quantized_pad_fills_with_the_zero_point() {
    let text = "graph padq(%x: f32[N,3]) -> (%d) {
  %q = QuantizeLinear(%x) : u8[N,3] quant(scale=0.1, zero_point=9)
  %p = Pad(%q) {mode=\"constant\", pads=[0, 1, 0, 2], value=0.0} : u8[N,6] quant(scale=0.1, zero_point=9)
  %d = DequantizeLinear(%p) : f32[N,6]
}";
    let graph = parse(text).unwrap();
    verify(&graph).unwrap();
    let bytes = export_onnx(&graph).unwrap();
    if let Some(dir) = export_dir() {
        let x = inputs_for(&graph);
        save_for_ort(
            &dir,
            "op.padq",
            &bytes,
            &graph,
            &x,
            &run(&graph, &x).unwrap(),
        );
    }
    let model = ModelProto::parse_from_bytes(&bytes).unwrap();
    let g = model.graph.as_ref().unwrap();
    let pad = g.node.iter().find(|n| n.op_type == "Pad").unwrap();
    let fill = g
        .initializer
        .iter()
        .find(|t| t.name == pad.input[2])
        .unwrap();
    assert_eq!((fill.data_type, fill.raw_data.as_slice()), (2, &[9u8][..]));
    let pads = g
        .initializer
        .iter()
        .find(|t| t.name == pad.input[1])
        .unwrap();
    assert_eq!(pads.raw_data.len(), 4 * 8);
}

#[test]
fn int4_initializers_pack_two_per_byte() {
    let text = "graph i4(%x: f32[N,3]) -> (%d) {
  %w = const i4[3] quant(scale=0.5, zero_point=0) [-8, 7, -1]
  %wd = DequantizeLinear(%w) : f32[3]
  %d = Add(%x, %wd) : f32[N,3]
}";
    let graph = parse(text).unwrap();
    let model = ModelProto::parse_from_bytes(&export_onnx(&graph).unwrap()).unwrap();
    let w = model
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .find(|t| t.name == "w")
        .unwrap();
    assert_eq!(
        (w.data_type, w.raw_data.as_slice()),
        (22, &[0x78u8, 0x0f][..])
    );
    assert_eq!((opset(&model), model.ir_version), (21, 10));
}

#[test]
fn a_graph_with_an_empty_name_gets_one() {
    let mut graph =
        parse("graph g(%x: f32[N,2]) -> (%y) {\n  %y = Relu(%x) : f32[N,2]\n}").unwrap();
    graph.name.clear();
    let model = ModelProto::parse_from_bytes(&export_onnx(&graph).unwrap()).unwrap();
    assert_eq!(model.graph.as_ref().unwrap().name, "graph");
}

/// A model whose Conv layers a plan raised to int16 exports as QDQ with int16
/// QuantizeLinear/DequantizeLinear (opset 21, INT16 zero points), imports back onto the same
/// lowered integer graph (QConv reading and writing i16), and computes what qlift's own
/// quantization computes. With QLIFT_EXPORT_DIR it is left for `tools/check_export_ort.py`.
#[test]
fn int16_layers_export_as_opset_21_qdq() {
    let graph = load("digits_cnn.onnx");
    let plan = qlift::QuantPlan::parse("[op_types.Conv]\nprecision = \"int16\"\n").unwrap();
    let calib = npy("digits_calib_x.npy");
    let q = qlift::quantize::quantize_limited_planned(
        &graph,
        &[calib],
        &qlift::QuantizeOptions::default(),
        &plan,
        &Default::default(),
        &qlift::Limits::default(),
        &|_, _| {},
    )
    .unwrap();
    let (back, model, bytes) = round_trip(&q.qdq);
    assert_eq!(opset(&model), 21);
    let g = model.graph.as_ref().unwrap();
    let int16_zero_points = g.initializer.iter().filter(|t| t.data_type == 5).count();
    assert!(
        int16_zero_points >= 4,
        "{int16_zero_points} INT16 initializers"
    );
    let (lowered, _) = qlift_passes::run_pipeline(&back, &Default::default()).unwrap();
    let wide_convs = lowered
        .node_ids()
        .filter(|&n| lowered.node(n).op.kind() == Some(OpKind::QConv))
        .filter(|&n| {
            let x = lowered.node_inputs(n)[0].unwrap();
            lowered.value_type(x).dtype == DType::I16
                && lowered.node(n).outputs[0].ty.dtype == DType::I16
        })
        .count();
    assert_eq!(
        wide_convs,
        2,
        "{}",
        print(&lowered, &PrintOptions::default())
    );
    let x = npy("digits_test_x.npy").slice_outer(0, 64).unwrap();
    let ours = run(&q.lowered, std::slice::from_ref(&x)).unwrap();
    let imported = run(&lowered, std::slice::from_ref(&x)).unwrap();
    assert_same_outputs("int16 export", &ours, &imported);
    if let Some(dir) = export_dir() {
        save_for_ort(&dir, "digits_cnn.int16", &bytes, &q.qdq, &[x], &imported);
    }
}
