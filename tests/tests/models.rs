//! The bundled models (examples/models, trained by tools/make_models.py) through the ONNX
//! importer and the reference interpreter, against ONNX Runtime's outputs on the same test
//! set, and their IR dumps: snapshots, and parsing back to the same graph.

use qlift::npy::read_npy;
use qlift::{load_onnx, ImportOptions};
use qlift_ir::text::{constant_pool, parse, parse_with_constants, print, PrintOptions};
use qlift_ir::{Graph, NodeOp, OpKind, Tensor};
use qlift_passes::{run_pipeline, PipelineOptions};
use std::path::PathBuf;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models")
}

/// Every bundled model and the test input it reads.
const MODELS: [(&str, &str); 3] = [
    ("digits_cnn", "digits_test_x.npy"),
    ("digits_mlp", "digits_test_x_flat.npy"),
    ("digits_mobile", "digits_test_x.npy"),
];

fn load(file: &str) -> Graph {
    load_onnx(&models_dir().join(file), &ImportOptions::default())
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn npy(file: &str) -> Tensor {
    read_npy(&models_dir().join(file)).unwrap()
}

fn run(graph: &Graph, input: &str) -> Vec<f32> {
    let out = qlift_ir::interp::run(graph, &[npy(input)]).unwrap();
    out[0].as_f32().unwrap().to_vec()
}

fn argmax_rows(v: &[f32], classes: usize) -> Vec<usize> {
    v.chunks(classes)
        .map(|r| {
            r.iter()
                .enumerate()
                .fold(0, |b, (i, &x)| if x > r[b] { i } else { b })
        })
        .collect()
}

fn accuracy(v: &[f32], labels: &[i64]) -> f64 {
    let hits = argmax_rows(v, 10)
        .iter()
        .zip(labels)
        .filter(|(p, l)| **p as i64 == **l)
        .count();
    hits as f64 / labels.len() as f64
}

#[test]
fn fp32_models_match_onnx_runtime() {
    let labels = npy("digits_test_y.npy").to_i64_vec().unwrap();
    for (name, input) in MODELS {
        let got = run(&load(&format!("{name}.onnx")), input);
        let want = npy(&format!("{name}.expected.npy"))
            .as_f32()
            .unwrap()
            .to_vec();
        let max_err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let scale = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
        assert!(
            max_err / scale <= 1e-4,
            "{name}: max error {max_err} relative to {scale}"
        );
        assert_eq!(
            accuracy(&got, &labels),
            accuracy(&want, &labels),
            "{name}: accuracy differs from ONNX Runtime"
        );
    }
}

/// ONNX Runtime's own QDQ models import onto the IR's quantized types and run; the
/// interpreter's outputs stay within one output quantization step of ONNX Runtime's.
#[test]
fn onnx_runtime_qdq_models_agree_within_one_step() {
    for (name, input) in MODELS {
        let graph = load(&format!("{name}.qdq.onnx"));
        let got = run(&graph, input);
        let want = npy(&format!("{name}.qdq.expected.npy"))
            .as_f32()
            .unwrap()
            .to_vec();
        // The output is dequantized from the last QuantizeLinear: one step is its scale.
        let last = graph.node(graph.outputs()[0].node);
        let dq_input = graph.node_inputs(graph.outputs()[0].node)[0]
            .expect("the output is a DequantizeLinear");
        assert_eq!(last.op.name(), "DequantizeLinear", "{name}");
        let step = graph.value_type(dq_input).quant.as_ref().unwrap().scale[0];
        let within = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| (*a - *b).abs() <= step * 1.001)
            .count();
        assert_eq!(
            within,
            want.len(),
            "{name}: {} of {} outputs within one step ({step})",
            within,
            want.len()
        );
    }
}

/// After the rewrite pipeline, ONNX Runtime's QDQ models run on qlift's integer ops (one
/// fixed-point requantization each) and still agree with ONNX Runtime within one output
/// step on at least 99.9% of the output elements.
#[test]
fn onnx_runtime_qdq_models_lower_to_integer_ops_within_one_step() {
    for (name, input) in MODELS {
        let graph = load(&format!("{name}.qdq.onnx"));
        let (lowered, _) = run_pipeline(&graph, &PipelineOptions::default()).unwrap();
        let kinds: Vec<OpKind> = lowered
            .node_ids()
            .filter_map(|id| lowered.node(id).op.kind())
            .collect();
        assert!(
            !kinds
                .iter()
                .any(|k| matches!(k, OpKind::Conv | OpKind::Gemm | OpKind::MatMul)),
            "{name}: float products left: {kinds:?}"
        );
        assert!(
            kinds
                .iter()
                .any(|k| matches!(k, OpKind::QConv | OpKind::QMatMul)),
            "{name}: {kinds:?}"
        );
        let got = run(&lowered, input);
        let want = npy(&format!("{name}.qdq.expected.npy"))
            .as_f32()
            .unwrap()
            .to_vec();
        let dq_input = lowered.node_inputs(lowered.outputs()[0].node)[0]
            .expect("the output is a DequantizeLinear");
        let step = lowered.value_type(dq_input).quant.as_ref().unwrap().scale[0];
        let within = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| (*a - *b).abs() <= step * 1.001)
            .count();
        eprintln!(
            "{name}: {within} of {} outputs within one step of ONNX Runtime",
            want.len()
        );
        assert!(
            within as f64 >= 0.999 * want.len() as f64,
            "{name}: {within} of {} outputs within one step ({step})",
            want.len()
        );
    }
}

/// ONNX Runtime's QOperator models (QLinearConv) import, lower onto qlift's integer ops,
/// and agree with ONNX Runtime: same top-1 accuracy within half a point, and outputs within
/// 0.1% of their range (their Gemm layers stay float, so no single output step applies).
#[test]
fn onnx_runtime_qoperator_models_lower_to_integer_ops() {
    let labels = npy("digits_test_y.npy").to_i64_vec().unwrap();
    for name in ["digits_cnn", "digits_mobile"] {
        let graph = load(&format!("{name}.qop.onnx"));
        let (lowered, _) = run_pipeline(&graph, &PipelineOptions::default()).unwrap();
        let kinds: Vec<OpKind> = lowered
            .node_ids()
            .filter_map(|id| lowered.node(id).op.kind())
            .collect();
        assert!(
            !kinds.contains(&OpKind::QLinearConv) && kinds.contains(&OpKind::QConv),
            "{name}: {kinds:?}"
        );
        let got = run(&lowered, "digits_test_x.npy");
        let want = npy(&format!("{name}.qop.expected.npy"))
            .as_f32()
            .unwrap()
            .to_vec();
        let range = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let (a, b) = (accuracy(&got, &labels), accuracy(&want, &labels));
        eprintln!("{name}: worst error {worst} of range {range}; accuracy {a} vs ORT {b}");
        assert!(
            worst <= 1e-3 * range,
            "{name}: worst error {worst} of range {range}"
        );
        assert!(
            (a - b).abs() <= 0.005,
            "{name}: accuracy {a} vs ONNX Runtime {b}"
        );
    }
}

#[test]
fn dumps_are_stable_and_parse_back_to_the_same_graph() {
    let mut files: Vec<String> = MODELS.iter().map(|(n, _)| format!("{n}.onnx")).collect();
    files.extend(MODELS.iter().map(|(n, _)| format!("{n}.qdq.onnx")));
    for file in files {
        let graph = load(&file);
        let dump = print(&graph, &PrintOptions::default());
        insta::assert_snapshot!(file.replace('.', "_"), dump);
        assert!(
            parse_with_constants(&dump, &constant_pool(&graph)).unwrap() == graph,
            "{file}: dump does not parse back"
        );
        let full = print(
            &graph,
            &PrintOptions {
                full_constants: true,
                ..Default::default()
            },
        );
        assert!(
            parse(&full).unwrap() == graph,
            "{file}: full dump does not parse back"
        );
        // Constants are shared: one node per distinct (tensor, quantization).
        assert!(graph
            .node_ids()
            .any(|id| matches!(graph.node(id).op, NodeOp::Const(_))));
    }
}

/// The bundled models written at opsets 7, 9, 11 and 12 (`tools/make_old_opsets.py`: Clip's
/// bounds as attributes, IR 3 initializers listed as inputs, ...) import to the same graph
/// computations and give the same outputs as at opset 13 on 32 test samples, through the
/// interpreter and the JIT.
#[test]
fn older_opsets_give_the_same_outputs() {
    let old = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/old-opsets");
    for (name, input) in MODELS {
        let x = npy(input).slice_outer(0, 32).unwrap();
        let outputs = |g: &Graph| qlift_ir::interp::run(g, std::slice::from_ref(&x)).unwrap();
        let want = outputs(&load(&format!("{name}.onnx")));
        for opset in [7, 9, 11, 12] {
            let path = old.join(format!("{name}.opset{opset}.onnx"));
            let g = load_onnx(&path, &ImportOptions::default())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(outputs(&g), want, "{name} at opset {opset}, interpreter");
            let (lowered, _) = run_pipeline(&g, &PipelineOptions::default()).unwrap();
            let jit = qlift_codegen::JitProgram::compile(&lowered, &Default::default()).unwrap();
            let got = jit.run(std::slice::from_ref(&x)).unwrap();
            let w = want[0].as_f32().unwrap();
            let close = got[0]
                .as_f32()
                .unwrap()
                .iter()
                .zip(w)
                .all(|(a, b)| (a - b).abs() <= 1e-4 * b.abs().max(1.0));
            assert!(close, "{name} at opset {opset}, JIT");
        }
    }
}
