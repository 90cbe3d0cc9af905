//! Calibration data that streams (`quantize_batches`, what the Python binding's iterables of
//! batches use) quantizes exactly as the same samples in one array do, whatever the
//! batches' sizes; a failing source stops quantization with its own error.

use qlift::quantize::{quantize_batches, quantize_limited};
use qlift::{Error, Limits, QuantizeOptions};
use qlift_ir::text::{print, PrintOptions};
use qlift_ir::Tensor;
use qlift_passes::PipelineOptions;

mod support;
use support::models_dir;

fn stream(
    graph: &qlift_ir::Graph,
    batches: Vec<Result<Vec<Tensor>, Error>>,
) -> Result<qlift::Quantized, Error> {
    let mut batches = batches.into_iter();
    let opts = QuantizeOptions::default();
    quantize_batches(
        graph,
        &mut || batches.next(),
        &opts,
        &qlift::QuantPlan::default(),
        &PipelineOptions::default(),
        &Limits::default(),
        &|_, _| {},
    )
}

#[test]
fn batches_of_any_size_quantize_as_one_array() {
    let graph =
        qlift::load_onnx(&models_dir().join("digits_cnn.onnx"), &Default::default()).unwrap();
    let calib = qlift::npy::read_npy(&models_dir().join("digits_calib_x.npy")).unwrap();
    let n = calib.shape()[0];
    let whole = quantize_limited(
        &graph,
        std::slice::from_ref(&calib),
        &QuantizeOptions::default(),
        &PipelineOptions::default(),
        &Limits::default(),
        &|_, _| {},
    )
    .unwrap();
    // Uneven batches, one of them past CALIBRATION_BATCH (split again into runs).
    let cuts = [0, 1, 70, 71, 150, n];
    let batches = cuts
        .windows(2)
        .map(|w| Ok(vec![calib.slice_outer(w[0], w[1]).unwrap()]))
        .collect();
    let streamed = stream(&graph, batches).unwrap();
    assert_eq!(streamed.samples, n);
    let text = |g: &qlift_ir::Graph| {
        print(
            g,
            &PrintOptions {
                full_constants: true,
                ..Default::default()
            },
        )
    };
    assert_eq!(text(&streamed.lowered), text(&whole.lowered));
    assert_eq!(text(&streamed.qdq), text(&whole.qdq));
}

#[test]
fn a_failing_or_empty_source_is_an_error_of_the_data() {
    let graph =
        qlift::load_onnx(&models_dir().join("digits_mlp.onnx"), &Default::default()).unwrap();
    let calib = qlift::npy::read_npy(&models_dir().join("digits_calib_x_flat.npy")).unwrap();
    let failing = vec![
        Ok(vec![calib.clone()]),
        Err(Error::Value {
            name: "batch 2".into(),
            message: "the iterator raised".into(),
        }),
    ];
    let e = stream(&graph, failing)
        .err()
        .expect("a failing source quantized");
    assert_eq!(e.to_string(), "value `batch 2`: the iterator raised");
    let e = stream(&graph, Vec::new()).err().expect("no data quantized");
    assert!(e.to_string().contains("no calibration samples"), "{e}");
    // A batch that does not fit the model names the problem, as one array does.
    let wrong = vec![Ok(vec![calib.clone()]), Ok(vec![calib.clone(), calib])];
    let e = stream(&graph, wrong)
        .err()
        .expect("two tensors for one input");
    assert!(
        !e.is_internal() && e.to_string().contains("1 inputs, 2 calibration tensors"),
        "{e}"
    );
}

/// A model whose every value is large calibrates in runs whose traced values stay within
/// `CALIBRATION_RUN_BYTES` (runs of 64 samples once held 2 GB for MobileNetV2), with the same
/// result as one sample at a time.
#[test]
fn runs_hold_a_bounded_amount_of_traced_values() {
    use qlift::quantize::CALIBRATION_RUN_BYTES;
    // Four f32 values of 2 Mi elements each: 32 MiB per sample, two samples per run.
    let text = "graph big(%x: f32[N,2097152]) -> (%z) {
  %y = Relu(%x) : f32[N,2097152]
  %w = Clip(%y) {max=4.0, min=0.0} : f32[N,2097152]
  %z = Relu(%w) : f32[N,2097152]
}";
    let graph = qlift_ir::text::parse(text).unwrap();
    let per_sample = qlift::limits::interpreter_bytes(&graph, 1).unwrap();
    let per_run = (CALIBRATION_RUN_BYTES / per_sample) as usize;
    assert_eq!(per_run, 2, "{per_sample} bytes per sample");
    let n = 5;
    let samples = Tensor::from_f32(
        &[n, 2097152],
        (0..n * 2097152).map(|i| (i % 13) as f32 - 6.0).collect(),
    );
    let runs = std::sync::Mutex::new(Vec::new());
    let q = quantize_limited(
        &graph,
        std::slice::from_ref(&samples),
        &QuantizeOptions::default(),
        &PipelineOptions::default(),
        &Limits::default(),
        &|done, _| runs.lock().unwrap().push(done),
    )
    .unwrap();
    assert_eq!(q.samples, n);
    assert_eq!(*runs.lock().unwrap(), [2, 4, 5]);
    let one_at_a_time = stream(
        &graph,
        (0..n)
            .map(|i| Ok(vec![samples.slice_outer(i, i + 1).unwrap()]))
            .collect(),
    )
    .unwrap();
    let text = |g: &qlift_ir::Graph| print(g, &PrintOptions::default());
    assert_eq!(text(&q.lowered), text(&one_at_a_time.lowered));
}
