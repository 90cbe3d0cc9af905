//! The JIT against the reference interpreter on the bundled models: fp32 (after the
//! rewrite pipeline), quantized by qlift, and ONNX Runtime's own QDQ and QOperator models
//! lowered to integer ops. Quantized models must agree bit for bit, fp32 ones within 1e-4.

use qlift::npy::read_npy;
use qlift::{load_onnx, quantize, ImportOptions, QuantizeOptions};
use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::{Graph, Tensor};
use qlift_passes::{run_pipeline, PipelineOptions};
use std::path::PathBuf;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models")
}

fn npy(file: &str) -> Tensor {
    read_npy(&models_dir().join(file)).unwrap()
}

fn load(file: &str) -> Graph {
    load_onnx(&models_dir().join(file), &ImportOptions::default()).unwrap()
}

/// Every bundled model: (model file, test input, calibration input).
const MODELS: [(&str, &str, &str); 3] = [
    ("digits_cnn", "digits_test_x.npy", "digits_calib_x.npy"),
    ("digits_mlp", "digits_test_x_flat.npy", "digits_calib_x_flat.npy"),
    ("digits_mobile", "digits_test_x.npy", "digits_calib_x.npy"),
];

/// The graphs to compile: (label, graph, input file, whether it is quantized).
fn graphs() -> Vec<(String, Graph, &'static str, bool)> {
    let mut out = Vec::new();
    for (name, input, calib) in MODELS {
        let fp32 = load(&format!("{name}.onnx"));
        out.push((format!("{name} fp32"), run_pipeline(&fp32, &PipelineOptions::default()).unwrap().0, input, false));
        let q = quantize(&fp32, &[npy(calib)], &QuantizeOptions::default(), &PipelineOptions::default(), &|_, _| {}).unwrap();
        out.push((format!("{name} qlift int8"), q.lowered, input, true));
        out.push((format!("{name} ORT QDQ"), run_pipeline(&load(&format!("{name}.qdq.onnx")), &PipelineOptions::default()).unwrap().0, input, true));
    }
    // ORT's QOperator models keep their Gemm layers in float: held to the float tolerance.
    for name in ["digits_cnn", "digits_mobile"] {
        out.push((format!("{name} ORT QOperator"), run_pipeline(&load(&format!("{name}.qop.onnx")), &PipelineOptions::default()).unwrap().0, "digits_test_x.npy", false));
    }
    out
}

/// The code paths: the host's best (VNNI `vpdpbusd` dot products where the host has them),
/// `pmaddwd` dot products, and the baseline ISA (SSE2 only, no host features).
fn paths() -> [(&'static str, CodegenOptions); 3] {
    [
        ("host", CodegenOptions::default()),
        ("no-vnni", CodegenOptions { no_vnni: true, ..Default::default() }),
        ("baseline", CodegenOptions { baseline_isa: true, ..Default::default() }),
    ]
}

#[test]
fn jit_agrees_with_the_interpreter_on_every_bundled_model() {
    let mut failures = Vec::new();
    for ((label, graph, input, quantized), (path, opts)) in graphs().into_iter().flat_map(|g| paths().map(move |p| (g.clone(), p))) {
        let label = format!("{label} [{path}]");
        let x = npy(input);
        let want = qlift_ir::interp::run(&graph, std::slice::from_ref(&x)).unwrap();
        let program = match JitProgram::compile(&graph, &opts) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{label}: {e}"));
                continue;
            }
        };
        let got = program.run(&[x]).unwrap();
        let (g, w) = (got[0].as_f32().unwrap(), want[0].as_f32().unwrap());
        let worst = g.iter().zip(w).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0.0f32, f32::max);
        if (quantized && g != w) || worst > 1e-4 {
            failures.push(format!("{label}: JIT differs from the interpreter by {worst} (relative)"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// One compiled model shared by 16 threads, 200 runs each, all with identical outputs.
#[test]
fn sixteen_threads_share_one_compiled_model() {
    let graph = graphs().into_iter().find(|(l, ..)| l == "digits_cnn qlift int8").unwrap().1;
    let program = JitProgram::compile(&graph, &CodegenOptions::default()).unwrap();
    let x = npy("digits_test_x.npy").slice_outer(0, 8).unwrap();
    let want = program.run(std::slice::from_ref(&x)).unwrap();
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                for _ in 0..200 {
                    assert!(program.run(std::slice::from_ref(&x)).unwrap() == want);
                }
            });
        }
    });
}

/// A call split across threads (the batch in disjoint slices) computes the same bits.
#[test]
fn batch_split_across_threads_is_bit_identical() {
    let graph = graphs().into_iter().find(|(l, ..)| l == "digits_mobile qlift int8").unwrap().1;
    let one = JitProgram::compile(&graph, &CodegenOptions::default()).unwrap();
    let mut split = JitProgram::compile(&graph, &CodegenOptions::default()).unwrap();
    split.set_threads(3);
    let x = npy("digits_test_x.npy");
    for batch in [1, 2, 5, 540] {
        let part = x.slice_outer(0, batch).unwrap();
        assert!(one.run(std::slice::from_ref(&part)).unwrap() == split.run(&[part]).unwrap(), "batch {batch}");
    }
}
