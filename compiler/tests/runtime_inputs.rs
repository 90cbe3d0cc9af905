//! What `CompiledModel::run` does with bad or unusual inputs, for both engines: a wrong
//! count, rank, shape or dtype and an empty batch are clear errors naming the input (never a
//! panic, never generated code entered); NaN and ±Inf are values, not errors: NaN propagates
//! through float ops and QuantizeLinear maps it to the dtype's minimum (as ONNX Runtime
//! does); in calibration data they are skipped and counted (`Quantized::non_finite`).

use qlift::npy::read_npy;
use qlift::{CompileOptions, CompiledModel, Engine, Error, QuantizeOptions};
use qlift_ir::{DType, Tensor};
use qlift_passes::PipelineOptions;
use std::panic::{catch_unwind, AssertUnwindSafe};

mod support;
use support::models_dir;

const ENGINES: [Engine; 2] = [Engine::Jit, Engine::Interpreter];

fn opts(engine: Engine) -> CompileOptions {
    CompileOptions {
        engine,
        ..Default::default()
    }
}

fn cnn(engine: Engine) -> CompiledModel {
    CompiledModel::from_onnx(&models_dir().join("digits_cnn.onnx"), None, &opts(engine)).unwrap()
}

fn from_text(text: &str, engine: Engine) -> CompiledModel {
    let graph = qlift_ir::text::parse(text).unwrap();
    CompiledModel::from_graph(&graph, None, &opts(engine)).unwrap()
}

/// Runs without panicking and returns the error, which must be bad input (not internal)
/// and name `input`.
fn input_error(model: &CompiledModel, inputs: &[Tensor], input: &str) -> Error {
    let result = catch_unwind(AssertUnwindSafe(|| model.run(inputs))).expect("run panicked");
    let err = result.expect_err("the inputs must be refused");
    let text = err.to_string();
    assert!(!err.is_internal(), "bad input reported as a bug: {text}");
    assert!(
        text.contains(&format!("`{input}`")),
        "the error does not name `{input}`: {text}"
    );
    // run_into checks the same before touching the outputs.
    let mut outputs: Vec<Tensor> = model
        .outputs()
        .iter()
        .map(|(_, t)| Tensor::zeros(t.dtype, &t.shape.resolve(1)))
        .collect();
    let again = catch_unwind(AssertUnwindSafe(|| model.run_into(inputs, &mut outputs)))
        .expect("run_into panicked");
    assert!(again.is_err(), "run_into accepted what run refused: {text}");
    err
}

/// A graph handed to the API is verified: an invalid one is a clear error, not a pass bug.
#[test]
fn an_invalid_graph_is_a_verifier_error() {
    let text = "graph bad(%x: f32[N,4]) -> (%y) {\n  %y = Softmax(%x) {axis=-1} : f32[N,4]\n}\n";
    let graph = qlift_ir::text::parse(text).unwrap();
    for engine in ENGINES {
        let err = CompiledModel::from_graph(&graph, None, &opts(engine))
            .err()
            .expect("an invalid graph compiled");
        assert!(
            !err.is_internal() && err.to_string().contains("axis -1"),
            "{engine:?}: {err}"
        );
    }
}

#[test]
fn wrong_count_rank_shape_and_dtype_are_errors_naming_the_input() {
    for engine in ENGINES {
        let model = cnn(engine);
        let (name, ty) = model.inputs()[0].clone();
        let shape = ty.shape.resolve(2);
        assert_eq!(shape.len(), 4, "digits_cnn takes NCHW images");
        let good = Tensor::zeros(DType::F32, &shape);
        assert!(model.run(std::slice::from_ref(&good)).is_ok());

        // Count: the error names the model (there is no single input to blame).
        for inputs in [vec![], vec![good.clone(), good.clone()]] {
            let err = catch_unwind(AssertUnwindSafe(|| model.run(&inputs)))
                .expect("no panic")
                .expect_err("wrong count");
            assert!(err.to_string().contains("inputs"), "{engine:?}: {err}");
        }
        // Rank: flattened, and one axis too many.
        let flat = Tensor::zeros(DType::F32, &[2, shape[1..].iter().product()]);
        input_error(&model, &[flat], &name);
        let mut five = shape.clone();
        five.push(1);
        input_error(&model, &[Tensor::zeros(DType::F32, &five)], &name);
        // Shape: each fixed axis off by one, both ways.
        for axis in 1..shape.len() {
            for delta in [-1i64, 1] {
                let mut s = shape.clone();
                s[axis] = (s[axis] as i64 + delta) as usize;
                let err = input_error(&model, &[Tensor::zeros(DType::F32, &s)], &name);
                assert!(err.to_string().contains("shape"), "{engine:?}: {err}");
            }
        }
        // Dtype: every other element type at the right shape.
        for dtype in DType::ALL.into_iter().filter(|&d| d != DType::F32) {
            let err = input_error(&model, &[Tensor::zeros(dtype, &shape)], &name);
            assert!(err.to_string().contains("f32"), "{engine:?}: {err}");
        }
    }
}

#[test]
fn an_empty_batch_is_an_error_naming_the_input() {
    for engine in ENGINES {
        let model = cnn(engine);
        let (name, ty) = model.inputs()[0].clone();
        let empty = Tensor::zeros(DType::F32, &ty.shape.resolve(0));
        assert_eq!(empty.len(), 0);
        let err = input_error(&model, &[empty], &name);
        assert!(
            err.to_string().contains("batch size 0"),
            "{engine:?}: {err}"
        );
    }
    // Two inputs: the batch binds from the first; a disagreeing second one is named.
    let text =
        "graph two(%a: f32[N,2], %b: f32[N,2]) -> (%y) {\n  %y = Add(%a, %b) : f32[N,2]\n}\n";
    for engine in ENGINES {
        let model = from_text(text, engine);
        let (a1, a0) = (
            Tensor::zeros(DType::F32, &[1, 2]),
            Tensor::zeros(DType::F32, &[0, 2]),
        );
        input_error(&model, &[a0.clone(), a0.clone()], "a");
        input_error(&model, &[a1.clone(), a0], "b");
        assert!(model.run(&[a1.clone(), a1]).is_ok());
    }
}

/// Float ops on NaN and ±Inf: IEEE semantics, the JIT identical to the interpreter.
#[test]
fn nan_and_inf_propagate_through_float_ops() {
    let text = "graph float_ops(%x: f32[N,4]) -> (%sum, %relu, %sig, %prod, %soft) {
  %c = const f32[4] [1.0, 1.0, 1.0, 1.0]
  %w = const f32[4,2] [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
  %sum = Add(%x, %c) : f32[N,4]
  %relu = Relu(%x) : f32[N,4]
  %sig = Sigmoid(%x) : f32[N,4]
  %prod = MatMul(%x, %w) : f32[N,2]
  %soft = Softmax(%x) {axis=1} : f32[N,4]
}
";
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    let x = Tensor::from_f32(&[2, 4], vec![nan, inf, -inf, 2.0, 1.0, -1.0, 0.5, 0.0]);
    let mut results = vec![];
    for engine in ENGINES {
        let model = from_text(text, engine);
        let out = model
            .run(std::slice::from_ref(&x))
            .unwrap_or_else(|e| panic!("{engine:?}: {e}"));
        let v: Vec<Vec<f32>> = out.iter().map(|t| t.as_f32().unwrap().to_vec()).collect();
        // Add: NaN stays NaN, infinities stay infinite.
        assert!(
            v[0][0].is_nan() && v[0][1] == inf && v[0][2] == -inf && v[0][3] == 3.0,
            "{engine:?} Add {:?}",
            v[0]
        );
        // Relu: NaN stays NaN (max(NaN, 0) is not 0), -inf -> 0, inf -> inf.
        assert!(
            v[1][0].is_nan() && v[1][1] == inf && v[1][2] == 0.0 && v[1][3] == 2.0,
            "{engine:?} Relu {:?}",
            v[1]
        );
        // Sigmoid: NaN -> NaN, inf -> 1, -inf -> 0.
        assert!(
            v[2][0].is_nan() && v[2][1] == 1.0 && v[2][2] == 0.0,
            "{engine:?} Sigmoid {:?}",
            v[2]
        );
        // MatMul: the NaN row is NaN wherever it contributes; the clean row is exact.
        assert!(
            v[3][0].is_nan() && v[3][1].is_nan(),
            "{engine:?} MatMul {:?}",
            v[3]
        );
        assert_eq!(&v[3][2..], &[1.5, -1.0], "{engine:?} MatMul");
        // Softmax: a NaN row is all NaN; the clean row sums to 1.
        assert!(
            v[4][..4].iter().all(|x| x.is_nan()),
            "{engine:?} Softmax {:?}",
            v[4]
        );
        assert!(
            (v[4][4..].iter().sum::<f32>() - 1.0).abs() < 1e-5,
            "{engine:?} Softmax {:?}",
            v[4]
        );
        results.push(v);
    }
    // Same NaN pattern and same values in both engines.
    for (a, b) in results[0].iter().flatten().zip(results[1].iter().flatten()) {
        assert!(
            a.is_nan() == b.is_nan()
                && (a.is_nan() || a == b || (a - b).abs() <= 1e-6 * a.abs().max(1.0)),
            "jit {a} vs interpreter {b}"
        );
    }
}

/// QuantizeLinear: NaN -> the dtype's minimum, ±Inf saturate (ONNX Runtime's behaviour).
#[test]
fn quantize_linear_maps_nan_to_the_dtype_minimum() {
    let text = "graph q(%x: f32[N,5]) -> (%u, %i) {
  %u = QuantizeLinear(%x) : u8[N,5] quant(scale=0.5, zero_point=10)
  %i = QuantizeLinear(%x) : i8[N,5] quant(scale=0.5, zero_point=-3)
}
";
    let x = Tensor::from_f32(
        &[1, 5],
        vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN, 1.0],
    );
    for engine in ENGINES {
        let model = from_text(text, engine);
        let out = model
            .run(std::slice::from_ref(&x))
            .unwrap_or_else(|e| panic!("{engine:?}: {e}"));
        assert_eq!(
            out[0].to_i64_vec().unwrap(),
            vec![0, 255, 0, 0, 12],
            "{engine:?} u8"
        );
        assert_eq!(
            out[1].to_i64_vec().unwrap(),
            vec![-128, 127, -128, -128, -1],
            "{engine:?} i8"
        );
    }
}

/// `t` (f32) with its values edited by `edit`.
fn edited(t: &Tensor, edit: impl FnOnce(&mut [f32])) -> Tensor {
    let mut values = t.as_f32().unwrap().to_vec();
    edit(&mut values);
    Tensor::from_f32(t.shape(), values)
}

fn one_sample(file: &str, count: usize) -> Tensor {
    let t = read_npy(&models_dir().join(file)).unwrap();
    t.slice_outer(0, count).unwrap()
}

/// A quantized model fed NaN and ±Inf runs (the input QuantizeLinear saturates them) and
/// both engines agree exactly.
#[test]
fn quantized_model_runs_on_nan_and_inf_inputs() {
    let calib = one_sample("digits_calib_x.npy", 64);
    let x = one_sample("digits_test_x.npy", 3);
    let n = x.len() / 3;
    let x = edited(&x, |values| {
        values[..n].fill(f32::NAN); // sample 0: all NaN
        for (i, v) in values[n..2 * n].iter_mut().enumerate() {
            *v = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN][i % 3]; // sample 1: mixed
        }
    });
    let mut outs = vec![];
    for engine in ENGINES {
        let c = std::slice::from_ref(&calib);
        let model = CompiledModel::from_onnx(
            &models_dir().join("digits_cnn.onnx"),
            Some(c),
            &opts(engine),
        )
        .unwrap();
        assert!(model.is_quantized());
        let out = model
            .run(std::slice::from_ref(&x))
            .unwrap_or_else(|e| panic!("{engine:?}: {e}"));
        assert!(
            out[0].as_f32().unwrap().iter().all(|v| v.is_finite()),
            "{engine:?}: {:?}",
            out[0]
        );
        outs.push(out[0].as_f32().unwrap().to_vec());
    }
    assert_eq!(
        outs[0], outs[1],
        "JIT and interpreter differ on non-finite inputs"
    );
}

/// Calibration data with NaN and ±Inf: skipped and counted, the ranges stay finite, and the
/// result matches calibration on the clean data within a quantization step or so.
#[test]
fn non_finite_calibration_values_are_skipped_and_counted() {
    let graph =
        qlift::load_onnx(&models_dir().join("digits_cnn.onnx"), &Default::default()).unwrap();
    let clean = one_sample("digits_calib_x.npy", 64);
    let injected = [
        (5, f32::NAN),
        (700, f32::INFINITY),
        (1500, f32::NEG_INFINITY),
        (2900, f32::NAN),
    ];
    let dirty = edited(&clean, |values| {
        for &(i, v) in &injected {
            values[i] = v;
        }
    });
    let run = |c: &Tensor| {
        let q = qlift::quantize(
            &graph,
            std::slice::from_ref(c),
            &QuantizeOptions::default(),
            &PipelineOptions::default(),
            &|_, _| {},
        );
        q.unwrap()
    };
    let (qc, qd) = (run(&clean), run(&dirty));
    assert_eq!(qc.non_finite, 0);
    assert!(
        qd.non_finite >= injected.len() as u64,
        "non_finite = {}",
        qd.non_finite
    );
    assert_eq!(qd.samples, 64);
    let x = one_sample("digits_test_x.npy", 8);
    for engine in ENGINES {
        let (mc, md) = (
            CompiledModel::from_lowered(qc.lowered.clone(), true, &opts(engine)).unwrap(),
            CompiledModel::from_lowered(qd.lowered.clone(), true, &opts(engine)).unwrap(),
        );
        let (yc, yd) = (
            mc.run(std::slice::from_ref(&x)).unwrap(),
            md.run(std::slice::from_ref(&x)).unwrap(),
        );
        let (yc, yd) = (yc[0].as_f32().unwrap(), yd[0].as_f32().unwrap());
        assert!(yd.iter().all(|v| v.is_finite()));
        let argmax = |v: &[f32]| {
            v.chunks(10)
                .map(|r| (0..10).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            argmax(yc),
            argmax(yd),
            "{engine:?}: predictions changed by four non-finite calibration values"
        );
    }
    // All-NaN calibration data: no range at all is still not a panic.
    let nan = edited(&clean, |values| values.fill(f32::NAN));
    let r = catch_unwind(AssertUnwindSafe(|| {
        qlift::quantize(
            &graph,
            std::slice::from_ref(&nan),
            &QuantizeOptions::default(),
            &PipelineOptions::default(),
            &|_, _| {},
        )
    }))
    .expect("all-NaN calibration panicked");
    if let Ok(q) = r {
        assert!(q.non_finite >= nan.len() as u64);
    }
}
