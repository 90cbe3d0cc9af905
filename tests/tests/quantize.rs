//! Post-training quantization of the bundled fp32 models with their calibration sets,
//! measured with the reference interpreter on the test sets: accuracy against fp32, output
//! SQNR against ONNX Runtime's own int8 QDQ model on the same data, and the shape of the
//! lowered graph.

use qlift::{
    quantize, ActivationScheme, CalibrationMethod, Outliers, QuantizeOptions, Quantized,
    WeightGranularity,
};
use qlift_ir::{DType, OpKind, Tensor};
use qlift_passes::PipelineOptions;
use qlift_tests::digits::{accuracy, load, npy, run, sqnr, MODELS};

const METHODS: [CalibrationMethod; 5] = [
    CalibrationMethod::MinMax,
    CalibrationMethod::Percentile(99.99),
    CalibrationMethod::Percentile(99.999),
    CalibrationMethod::Mse,
    CalibrationMethod::Entropy,
];

fn quantized(name: &str, calib: &str, opts: &QuantizeOptions) -> Quantized {
    quantize(
        &load(name),
        &[npy(calib)],
        opts,
        &PipelineOptions::default(),
        &|_, _| {},
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every calibration method on every model: int8 accuracy within 0.5 points of fp32 on
/// the CNN and the MLP, and the best method's SQNR at least ONNX Runtime's int8 model's.
#[test]
fn quantized_models_keep_accuracy_and_match_onnx_runtime_sqnr() {
    let mut failures = Vec::new();
    for (name, input, calib) in MODELS {
        let fp32 = npy(&format!("{name}.expected.npy"))
            .as_f32()
            .unwrap()
            .to_vec();
        let ort_int8 = npy(&format!("{name}.qdq.expected.npy"))
            .as_f32()
            .unwrap()
            .to_vec();
        let ort_sqnr = sqnr(&ort_int8, &fp32);
        let mut best = f64::NEG_INFINITY;
        for method in METHODS {
            let q = quantized(
                name,
                calib,
                &QuantizeOptions {
                    method,
                    scheme: ActivationScheme::AsymmetricU8,
                    ..Default::default()
                },
            );
            let got = run(&q.lowered, input);
            let (acc, db) = (accuracy(&got), sqnr(&got, &fp32));
            eprintln!("{name:<14} {method:<16} accuracy {acc:6.2}% (fp32 {:.2}%)  SQNR {db:5.1} dB (ORT int8 {ort_sqnr:.1} dB)", accuracy(&fp32));
            if name != "digits_mobile" {
                assert!(
                    accuracy(&fp32) - acc <= 0.5,
                    "{name} {method}: {acc}% vs fp32 {}%",
                    accuracy(&fp32)
                );
            }
            best = best.max(db);
        }
        if best < ort_sqnr {
            failures.push(format!(
                "{name}: best SQNR {best:.2} dB below ONNX Runtime's {ort_sqnr:.2} dB"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// After quantization the CNN runs on integers from the input's QuantizeLinear to the
/// output's DequantizeLinear.
#[test]
fn quantized_cnn_has_no_float_op_between_input_and_output() {
    let q = quantized(
        "digits_cnn",
        "digits_calib_x.npy",
        &QuantizeOptions::default(),
    );
    let g = &q.lowered;
    for id in g.topo_order().unwrap() {
        let node = g.node(id);
        let Some(kind) = node.op.kind() else { continue };
        let float_in = g
            .node_inputs(id)
            .iter()
            .flatten()
            .any(|v| g.value_type(*v).dtype == qlift_ir::DType::F32);
        let float_out = node
            .outputs
            .iter()
            .any(|v| v.ty.dtype == qlift_ir::DType::F32);
        let allowed = match kind {
            OpKind::QuantizeLinear => !float_out,
            OpKind::DequantizeLinear => g.outputs().iter().any(|o| o.node == id),
            _ => !float_in && !float_out,
        };
        assert!(
            allowed,
            "float op {kind} (`{}`) inside the quantized CNN",
            node.name
        );
    }
}

/// Symmetric int8 activations also work end to end.
#[test]
fn symmetric_int8_activations() {
    let q = quantized(
        "digits_cnn",
        "digits_calib_x.npy",
        &QuantizeOptions {
            scheme: ActivationScheme::SymmetricI8,
            ..Default::default()
        },
    );
    let acc = accuracy(&run(&q.lowered, "digits_test_x.npy"));
    assert!(acc >= 98.0, "{acc}");
    assert_eq!(q.samples, 200);
}

/// Per-tensor weights (one scale per weight tensor) work end to end: the graph carries one
/// scale per weight, and the CNN keeps its accuracy.
#[test]
fn per_tensor_weights() {
    let q = quantized(
        "digits_cnn",
        "digits_calib_x.npy",
        &QuantizeOptions {
            weights: WeightGranularity::PerTensor,
            ..Default::default()
        },
    );
    let g = &q.qdq;
    let weights: Vec<_> = g
        .node_ids()
        .filter(|&n| g.node(n).op.kind() == Some(OpKind::DequantizeLinear))
        .filter_map(|n| g.node_inputs(n)[0])
        .filter(|&v| g.value_type(v).dtype == qlift_ir::DType::I8 && g.const_value(v).is_some())
        .collect();
    assert!(weights.len() >= 3, "{} int8 weight tensors", weights.len());
    for w in weights {
        let q = g.value_type(w).quant.clone().unwrap();
        assert_eq!(
            (q.axis, q.scale.len()),
            (None, 1),
            "weights `{}`",
            g.value(w).name
        );
    }
    let acc = accuracy(&run(&q.lowered, "digits_test_x.npy"));
    assert!(acc >= 98.0, "{acc}");
}

/// One weight read by two products (and one bias by two Gemms with different input
/// scales) is quantized once per use that needs its own copy, each under its own name: the
/// graph verifies, and the integer model stays close to the float one.
#[test]
fn shared_weights_and_biases_quantize() {
    let text = "graph shared(%x: f32[N,3]) -> (%a, %b) {
      %w = const f32[3,3] [0.5, -1.0, 0.25, 1.0, 0.75, -0.5, -0.25, 0.5, 1.0]
      %c = const f32[3] [0.1, -0.2, 0.3]
      %a = Gemm(%x, %w, %c) {alpha=1.0, beta=1.0, transA=0, transB=0} : f32[N,3]
      %x2 = Mul(%x, %x) : f32[N,3]
      %b = Gemm(%x2, %w, %c) {alpha=1.0, beta=1.0, transA=0, transB=0} : f32[N,3]
    }";
    let g = qlift_ir::text::parse(text).unwrap();
    let calib = Tensor::from_f32(
        &[16, 3],
        (0..48).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect(),
    );
    let q = quantize(
        &g,
        &[calib.clone()],
        &QuantizeOptions::default(),
        &PipelineOptions::default(),
        &|_, _| {},
    )
    .unwrap();
    qlift_ir::verify(&q.qdq).unwrap();
    let want = qlift_ir::interp::run(&g, &[calib.clone()]).unwrap();
    let got = qlift_ir::interp::run(&q.lowered, &[calib]).unwrap();
    for (g, w) in got.iter().zip(&want) {
        let db = sqnr(g.as_f32().unwrap(), w.as_f32().unwrap());
        assert!(db > 25.0, "SQNR {db} dB");
    }
}

/// A model exported with its batch fixed to 1, with two inputs, calibrates from samples
/// along axis 0 of each input, one sample per run.
#[test]
fn fixed_batch_models_with_several_inputs_calibrate_one_sample_at_a_time() {
    let text = "graph fixed(%x: f32[1,3], %y: f32[1,3]) -> (%a) {
      %w = const f32[3,3] [0.5, -1.0, 0.25, 1.0, 0.75, -0.5, -0.25, 0.5, 1.0]
      %s = Add(%x, %y) : f32[1,3]
      %a = Gemm(%s, %w, _) {alpha=1.0, beta=1.0, transA=0, transB=0} : f32[1,3]
    }";
    let g = qlift_ir::text::parse(text).unwrap();
    let data = |k: usize| {
        Tensor::from_f32(
            &[12, 3],
            (0..36).map(|i| ((i * k % 13) as f32 - 6.0) / 4.0).collect(),
        )
    };
    let q = quantize(
        &g,
        &[data(5), data(7)],
        &QuantizeOptions::default(),
        &PipelineOptions::default(),
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(q.samples, 12);
    let one = |t: Tensor| t.slice_outer(3, 4).unwrap();
    let want = qlift_ir::interp::run(&g, &[one(data(5)), one(data(7))]).unwrap();
    let got = qlift_ir::interp::run(&q.lowered, &[one(data(5)), one(data(7))]).unwrap();
    assert!(sqnr(got[0].as_f32().unwrap(), want[0].as_f32().unwrap()) > 25.0);
    // Samples that do not divide into the model's fixed batch are refused clearly.
    let text2 = text.replace("[1,3]", "[2,3]");
    let g2 = qlift_ir::text::parse(&text2).unwrap();
    let bad = |k| Tensor::from_f32(&[3, 3], vec![k; 9]);
    let err = quantize(
        &g2,
        &[bad(1.0), bad(2.0)],
        &QuantizeOptions::default(),
        &PipelineOptions::default(),
        &|_, _| {},
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("runs of 2"), "{err}");
}

/// The policy on a transformer-like block: the Linear layer (MatMul by constant weights plus
/// a per-column bias) becomes one QMatMul with an i32 bias; the attention mask Add (−1e30
/// on padded positions) and the Softmax stay float, so the mask's range never meets 8 bits.
#[test]
fn linear_layers_quantize_and_masks_stay_float() {
    let text = "graph block(%x: f32[N,4,3], %mask: f32[N,4,3]) -> (%p) {
      %w = const f32[3,3] [0.5, -1.0, 0.25, 1.0, 0.75, -0.5, -0.25, 0.5, 1.0]
      %b = const f32[3] [0.1, -0.2, 0.3]
      %m = MatMul(%x, %w) : f32[N,4,3]
      %y = Add(%b, %m) : f32[N,4,3]
      %s = Add(%y, %mask) : f32[N,4,3]
      %p = Softmax(%s) {axis=2} : f32[N,4,3]
    }";
    let g = qlift_ir::text::parse(text).unwrap();
    let n = 8;
    let x = Tensor::from_f32(
        &[n, 4, 3],
        (0..n * 12)
            .map(|i| ((i * 7 % 17) as f32 - 8.0) / 4.0)
            .collect(),
    );
    let mask = Tensor::from_f32(
        &[n, 4, 3],
        (0..n * 12)
            .map(|i| if i % 3 == 2 { -1e30 } else { 0.0 })
            .collect(),
    );
    let q = quantize(
        &g,
        &[x.clone(), mask.clone()],
        &QuantizeOptions::default(),
        &PipelineOptions::default(),
        &|_, _| {},
    )
    .unwrap();
    let l = &q.lowered;
    let kinds: Vec<OpKind> = l.node_ids().filter_map(|id| l.node(id).op.kind()).collect();
    let qmatmul = l
        .node_ids()
        .find(|&id| l.node(id).op.kind() == Some(OpKind::QMatMul))
        .expect("a QMatMul");
    assert_eq!(
        l.node_inputs(qmatmul).iter().flatten().count(),
        3,
        "the bias joins the QMatMul: {kinds:?}"
    );
    assert!(
        kinds.contains(&OpKind::Add)
            && kinds.contains(&OpKind::Softmax)
            && !kinds.contains(&OpKind::QAdd),
        "{kinds:?}"
    );
    let want = qlift_ir::interp::run(&g, &[x.clone(), mask.clone()]).unwrap();
    let got = qlift_ir::interp::run(l, &[x, mask]).unwrap();
    assert!(sqnr(got[0].as_f32().unwrap(), want[0].as_f32().unwrap()) > 30.0);
}

/// One activation read by three Linear layers (attention's query, key and value projections
/// of one LayerNorm): quantized once for the first, the other two read the same
/// DequantizeLinear (they asked for statistics of the DequantizeLinear before, and failed).
#[test]
fn one_activation_feeds_three_linear_layers() {
    let text = "graph qkv(%x: f32[N,2,3]) -> (%tq, %tk, %tv) {
      %w = const f32[3,3] [0.5, -1.0, 0.25, 1.0, 0.75, -0.5, -0.25, 0.5, 1.0]
      %b = const f32[3] [0.1, -0.2, 0.3]
      %w2 = const f32[3,3] [1.5, -0.5, 0.25, 0.5, 0.75, -1.0, -0.75, 0.5, 0.25]
      %w3 = const f32[3,3] [-0.5, 1.0, 0.5, 0.25, -0.75, 0.5, 1.0, 0.25, -1.0]
      %n = Tanh(%x) : f32[N,2,3]
      %mq = MatMul(%n, %w) : f32[N,2,3]
      %q = Add(%b, %mq) : f32[N,2,3]
      %mk = MatMul(%n, %w2) : f32[N,2,3]
      %k = Add(%mk, %b) : f32[N,2,3]
      %mv = MatMul(%n, %w3) : f32[N,2,3]
      %v = Add(%b, %mv) : f32[N,2,3]
      %tq = Tanh(%q) : f32[N,2,3]
      %tk = Tanh(%k) : f32[N,2,3]
      %tv = Tanh(%v) : f32[N,2,3]
    }";
    let g = qlift_ir::text::parse(text).unwrap();
    let x = Tensor::from_f32(
        &[8, 2, 3],
        (0..48).map(|i| ((i * 7 % 17) as f32 - 8.0) / 4.0).collect(),
    );
    let q = quantize(
        &g,
        &[x.clone()],
        &QuantizeOptions::default(),
        &PipelineOptions::default(),
        &|_, _| {},
    )
    .unwrap();
    let l = &q.lowered;
    let qmatmuls = l
        .node_ids()
        .filter(|&id| l.node(id).op.kind() == Some(OpKind::QMatMul))
        .count();
    assert_eq!(qmatmuls, 3);
    let want = qlift_ir::interp::run(&g, std::slice::from_ref(&x)).unwrap();
    let got = qlift_ir::interp::run(l, &[x]).unwrap();
    for (g, w) in got.iter().zip(&want) {
        let db = sqnr(g.as_f32().unwrap(), w.as_f32().unwrap());
        assert!(db > 30.0, "SQNR {db} dB");
    }
}

/// An activation whose range is set by a rare outlier far beyond its bulk (one value of 100
/// among 4,800 in [-1, 1]: about 23 dB in 8 bits, against 48 dB without it) fails the
/// default `min_sqnr_db` in 8 bits: the layer reading it computes on 16-bit activations
/// (where it keeps about 71 dB), or stays float with `Outliers::Fp32`; with 0 it is
/// quantized to 8 bits anyway.
#[test]
fn outliers_raise_a_layer_to_int16_or_keep_it_float() {
    let text = "graph outlier(%x: f32[N,3]) -> (%y) {
      %w = const f32[3,3] [0.5, -1.0, 0.25, 1.0, 0.75, -0.5, -0.25, 0.5, 1.0]
      %m = MatMul(%x, %w) : f32[N,3]
      %y = Tanh(%m) : f32[N,3]
    }";
    let g = qlift_ir::text::parse(text).unwrap();
    let bulk = |i: usize| ((i * 7919 % 2001) as f32 - 1000.0) / 1000.0;
    let calib = |outlier: bool| {
        Tensor::from_f32(
            &[1600, 3],
            (0..4800)
                .map(|i| if outlier && i == 17 { 100.0 } else { bulk(i) })
                .collect(),
        )
    };
    // The QMatMuls, and the element type of the first one's input.
    let qmatmuls = |x: Tensor, min_sqnr_db: f64, outliers: Outliers| {
        let opts = QuantizeOptions {
            min_sqnr_db,
            outliers,
            ..Default::default()
        };
        let q = quantize(&g, &[x], &opts, &PipelineOptions::default(), &|_, _| {}).unwrap();
        let products: Vec<_> = q
            .lowered
            .node_ids()
            .filter(|&id| q.lowered.node(id).op.kind() == Some(OpKind::QMatMul))
            .collect();
        let input = products.first().map(|&id| {
            let x = q.lowered.node_inputs(id)[0].unwrap();
            q.lowered.value_type(x).dtype
        });
        (products.len(), input)
    };
    let default = qlift_passes::quantize::DEFAULT_MIN_SQNR_DB;
    assert_eq!(
        qmatmuls(calib(false), default, Outliers::Int16),
        (1, Some(DType::U8)),
        "a well-spread input is quantized in 8 bits"
    );
    assert_eq!(
        qmatmuls(calib(true), default, Outliers::Int16),
        (1, Some(DType::I16)),
        "the outlier raises the layer to int16"
    );
    assert_eq!(
        qmatmuls(calib(true), default, Outliers::Fp32),
        (0, None),
        "or keeps it float"
    );
    assert_eq!(
        qmatmuls(calib(true), 0.0, Outliers::Int16),
        (1, Some(DType::U8)),
        "without the check it is quantized in 8 bits"
    );
}

/// A nearest Resize between convolutions keeps its operand's quantization parameters: the
/// lowered graph resizes the 8-bit values, with no DequantizeLinear or QuantizeLinear
/// around it, and computes what the float graph does within the quantization error.
#[test]
fn nearest_resize_passes_quantized_values_through() {
    let conv =
        "{dilations=[1, 1], group=1, kernel_shape=[1, 1], pads=[0, 0, 0, 0], strides=[1, 1]}";
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
        let values = (0..n * 32)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) as f32 / 65536.0
                    * 4.0
                    - 2.0
            })
            .collect();
        Tensor::from_f32(&[n, 2, 4, 4], values)
    };
    let q = quantize(
        &graph,
        &[sample(1, 16)],
        &QuantizeOptions::default(),
        &PipelineOptions::default(),
        &|_, _| {},
    )
    .unwrap();
    let resized: Vec<_> = q
        .lowered
        .node_ids()
        .filter(|&id| q.lowered.node(id).op.kind() == Some(OpKind::Resize))
        .collect();
    assert_eq!(resized.len(), 1);
    let operands = q.lowered.node_inputs(resized[0]);
    let (input, result) = (
        q.lowered.value_type(operands[0].unwrap()),
        &q.lowered.node(resized[0]).outputs[0].ty,
    );
    assert!(
        input.dtype.is_quantized() && result.quant.is_some() && result.quant == input.quant,
        "{input:?} -> {result:?}"
    );
    let x = sample(7, 3);
    let (want, got) = (
        qlift_ir::interp::run(&graph, std::slice::from_ref(&x)).unwrap(),
        qlift_ir::interp::run(&q.lowered, &[x]).unwrap(),
    );
    let (w, g) = (want[0].as_f32().unwrap(), got[0].as_f32().unwrap());
    let range = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        w.iter().zip(g).all(|(a, b)| (a - b).abs() <= 0.05 * range),
        "{w:?}\n{g:?}"
    );
}
