//! The bundled digits models and their data (`examples/models`), and the two measures the
//! quantization tests judge them by: test-set accuracy and SQNR against the fp32 outputs.

use qlift::npy::read_npy;
use qlift::{load_onnx, ImportOptions};
use qlift_ir::{Graph, Tensor};
use std::path::PathBuf;

/// Model, test input, calibration input.
pub const MODELS: [(&str, &str, &str); 3] = [
    ("digits_cnn", "digits_test_x.npy", "digits_calib_x.npy"),
    (
        "digits_mlp",
        "digits_test_x_flat.npy",
        "digits_calib_x_flat.npy",
    ),
    ("digits_mobile", "digits_test_x.npy", "digits_calib_x.npy"),
];

/// `examples/models`.
pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models")
}

/// A bundled `.npy` file.
pub fn npy(file: &str) -> Tensor {
    read_npy(&models_dir().join(file)).unwrap()
}

/// A bundled model, imported.
pub fn load(name: &str) -> Graph {
    load_onnx(
        &models_dir().join(format!("{name}.onnx")),
        &ImportOptions::default(),
    )
    .unwrap()
}

/// The first output of `graph` on the bundled input `input`, through the interpreter.
pub fn run(graph: &Graph, input: &str) -> Vec<f32> {
    qlift_ir::interp::run(graph, &[npy(input)]).unwrap()[0]
        .as_f32()
        .unwrap()
        .to_vec()
}

/// Top-1 accuracy (%) of ten scores per sample against `digits_test_y.npy`.
pub fn accuracy(scores: &[f32]) -> f64 {
    let labels = npy("digits_test_y.npy").to_i64_vec().unwrap();
    let hits = scores
        .chunks(10)
        .zip(&labels)
        .filter(|(row, &label)| {
            row.iter()
                .enumerate()
                .fold(0, |b, (i, &v)| if v > row[b] { i } else { b }) as i64
                == label
        })
        .count();
    100.0 * hits as f64 / labels.len() as f64
}

/// Signal-to-quantization-noise ratio of `got` against the reference `want`, in dB.
pub fn sqnr(got: &[f32], want: &[f32]) -> f64 {
    let signal: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
    let noise: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).powi(2))
        .sum();
    10.0 * (signal / noise.max(1e-30)).log10()
}
