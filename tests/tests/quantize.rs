//! Post-training quantization of the bundled fp32 models with their calibration sets,
//! measured with the reference interpreter on the test sets: accuracy against fp32, output
//! SQNR against ONNX Runtime's own int8 QDQ model on the same data, and the shape of the
//! lowered graph.

use qlift::npy::read_npy;
use qlift::{load_onnx, quantize, ActivationScheme, CalibrationMethod, ImportOptions, QuantizeOptions, Quantized};
use qlift_ir::{Graph, OpKind, Tensor};
use qlift_passes::PipelineOptions;
use std::path::PathBuf;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models")
}

fn npy(file: &str) -> Tensor {
    read_npy(&models_dir().join(file)).unwrap()
}

/// Model, test input, calibration input.
const MODELS: [(&str, &str, &str); 3] = [
    ("digits_cnn", "digits_test_x.npy", "digits_calib_x.npy"),
    ("digits_mlp", "digits_test_x_flat.npy", "digits_calib_x_flat.npy"),
    ("digits_mobile", "digits_test_x.npy", "digits_calib_x.npy"),
];

const METHODS: [CalibrationMethod; 5] = [
    CalibrationMethod::MinMax,
    CalibrationMethod::Percentile(99.99),
    CalibrationMethod::Percentile(99.999),
    CalibrationMethod::Mse,
    CalibrationMethod::Entropy,
];

fn load(name: &str) -> Graph {
    load_onnx(&models_dir().join(format!("{name}.onnx")), &ImportOptions::default()).unwrap()
}

fn quantized(name: &str, calib: &str, opts: &QuantizeOptions) -> Quantized {
    quantize(&load(name), &[npy(calib)], opts, &PipelineOptions::default(), &|_, _| {}).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn run(graph: &Graph, input: &str) -> Vec<f32> {
    qlift_ir::interp::run(graph, &[npy(input)]).unwrap()[0].as_f32().unwrap().to_vec()
}

fn accuracy(scores: &[f32]) -> f64 {
    let labels = npy("digits_test_y.npy").to_i64_vec().unwrap();
    let hits = scores
        .chunks(10)
        .zip(&labels)
        .filter(|(row, &label)| row.iter().enumerate().fold(0, |b, (i, &v)| if v > row[b] { i } else { b }) as i64 == label)
        .count();
    100.0 * hits as f64 / labels.len() as f64
}

/// Signal-to-quantization-noise ratio of `got` against the reference `want`, in dB.
fn sqnr(got: &[f32], want: &[f32]) -> f64 {
    let signal: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
    let noise: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).powi(2)).sum();
    10.0 * (signal / noise.max(1e-30)).log10()
}

/// Every calibration method on every model: int8 accuracy within 0.5 points of fp32 on
/// the CNN and the MLP, and the best method's SQNR at least ONNX Runtime's int8 model's.
#[test]
fn quantized_models_keep_accuracy_and_match_onnx_runtime_sqnr() {
    let mut failures = Vec::new();
    for (name, input, calib) in MODELS {
        let fp32 = npy(&format!("{name}.expected.npy")).as_f32().unwrap().to_vec();
        let ort_int8 = npy(&format!("{name}.qdq.expected.npy")).as_f32().unwrap().to_vec();
        let ort_sqnr = sqnr(&ort_int8, &fp32);
        let mut best = f64::NEG_INFINITY;
        for method in METHODS {
            let q = quantized(name, calib, &QuantizeOptions { method, scheme: ActivationScheme::AsymmetricU8 });
            let got = run(&q.lowered, input);
            let (acc, db) = (accuracy(&got), sqnr(&got, &fp32));
            eprintln!("{name:<14} {method:<16} accuracy {acc:6.2}% (fp32 {:.2}%)  SQNR {db:5.1} dB (ORT int8 {ort_sqnr:.1} dB)", accuracy(&fp32));
            if name != "digits_mobile" {
                assert!(accuracy(&fp32) - acc <= 0.5, "{name} {method}: {acc}% vs fp32 {}%", accuracy(&fp32));
            }
            best = best.max(db);
        }
        if best < ort_sqnr {
            failures.push(format!("{name}: best SQNR {best:.2} dB below ONNX Runtime's {ort_sqnr:.2} dB"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// After quantization the CNN runs on integers from the input's QuantizeLinear to the
/// output's DequantizeLinear.
#[test]
fn quantized_cnn_has_no_float_op_between_input_and_output() {
    let q = quantized("digits_cnn", "digits_calib_x.npy", &QuantizeOptions::default());
    let g = &q.lowered;
    for id in g.topo_order().unwrap() {
        let node = g.node(id);
        let Some(kind) = node.op.kind() else { continue };
        let float_in = g.node_inputs(id).iter().flatten().any(|v| g.value_type(*v).dtype == qlift_ir::DType::F32);
        let float_out = node.outputs.iter().any(|v| v.ty.dtype == qlift_ir::DType::F32);
        let allowed = match kind {
            OpKind::QuantizeLinear => !float_out,
            OpKind::DequantizeLinear => g.outputs().iter().any(|o| o.node == id),
            _ => !float_in && !float_out,
        };
        assert!(allowed, "float op {kind} (`{}`) inside the quantized CNN", node.name);
    }
}

/// Symmetric int8 activations also work end to end.
#[test]
fn symmetric_int8_activations() {
    let q = quantized("digits_cnn", "digits_calib_x.npy", &QuantizeOptions { scheme: ActivationScheme::SymmetricI8, ..Default::default() });
    let acc = accuracy(&run(&q.lowered, "digits_test_x.npy"));
    assert!(acc >= 98.0, "{acc}");
    assert_eq!(q.samples, 200);
}

/// A nearest Resize between convolutions keeps its operand's quantization parameters: the
/// lowered graph resizes the 8-bit values, with no DequantizeLinear or QuantizeLinear
/// around it, and computes what the float graph does within the quantization error.
#[test]
fn nearest_resize_passes_quantized_values_through() {
    let conv = "{dilations=[1, 1], group=1, kernel_shape=[1, 1], pads=[0, 0, 0, 0], strides=[1, 1]}";
    let resize = "{antialias=0, axes=[2, 3], coordinate_transformation_mode=\"asymmetric\", cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, keep_aspect_ratio_policy=\"stretch\", mode=\"nearest\", nearest_mode=\"floor\"}";
    let text = format!(
        "graph up(%x: f32[N,2,4,4]) -> (%y) {{
           %w1 = const f32[3,2,1,1] [0.5, -0.25, 1.0, 0.75, -0.5, 0.25]
           %c1 = Conv(%x, %w1) {conv} : f32[N,3,4,4]
           %r1 = Relu(%c1) : f32[N,3,4,4]
           %s = const f32[2] [2.0, 2.0]
           %u = Resize(%r1, _, %s) {resize} : f32[N,3,8,8]
           %w2 = const f32[2,3,1,1] [1.0, -0.5, 0.25, 0.5, 0.75, -1.0]
           %y = Conv(%u, %w2) {conv} : f32[N,2,8,8]
         }}"
    );
    let graph = qlift_ir::text::parse(&text).unwrap();
    let sample = |seed: u32, n: usize| {
        let values = (0..n * 32).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) as f32 / 65536.0 * 4.0 - 2.0).collect();
        Tensor::from_f32(&[n, 2, 4, 4], values)
    };
    let q = quantize(&graph, &[sample(1, 16)], &QuantizeOptions::default(), &PipelineOptions::default(), &|_, _| {}).unwrap();
    let resized: Vec<_> = q.lowered.node_ids().filter(|&id| q.lowered.node(id).op.kind() == Some(OpKind::Resize)).collect();
    assert_eq!(resized.len(), 1);
    let operands = q.lowered.node_inputs(resized[0]);
    let (input, result) = (q.lowered.value_type(operands[0].unwrap()), &q.lowered.node(resized[0]).outputs[0].ty);
    assert!(input.dtype.is_quantized() && result.quant.is_some() && result.quant == input.quant, "{input:?} -> {result:?}");
    let x = sample(7, 3);
    let (want, got) = (qlift_ir::interp::run(&graph, std::slice::from_ref(&x)).unwrap(), qlift_ir::interp::run(&q.lowered, &[x]).unwrap());
    let (w, g) = (want[0].as_f32().unwrap(), got[0].as_f32().unwrap());
    let range = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(w.iter().zip(g).all(|(a, b)| (a - b).abs() <= 0.05 * range), "{w:?}\n{g:?}");
}
