//! Whole-model latency of the bundled digits models through the public API, with
//! criterion's statistics (confidence intervals, change against the last run) — the
//! regression check for performance work, next to `qlift bench` (one-off numbers, JSON for
//! `tools/bench_all.sh`) and the kernel benches (`benches/kernels.rs`).
//!
//! Per model: the int8 JIT (quantized from the bundled calibration set, MinMax) at batch 1
//! and 64, and the fp32 JIT at batch 1. Each model is compiled once, outside the timed
//! loop; the timed call is `CompiledModel::run_into` with preallocated outputs (no
//! allocation once warm). Throughput is in samples, so criterion prints samples/s.
//!
//! `cargo bench -p qlift --bench models [-- FILTER]`, e.g. `-- digits_cnn/int8`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qlift::npy::read_npy;
use qlift::{CompileOptions, CompiledModel};
use qlift_ir::Tensor;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The bundled models and the input file each reads (the MLP reads flattened images).
const MODELS: [(&str, &str); 3] = [
    ("digits_cnn", ""),
    ("digits_mlp", "_flat"),
    ("digits_mobile", ""),
];

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models")
}

/// Times `model.run_into` on the first `batch` test samples.
fn bench_run(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: &str,
    model: &CompiledModel,
    test: &Tensor,
    batch: usize,
) {
    let inputs = [test
        .slice_outer(0, batch)
        .expect("the test set has enough samples")];
    let mut outputs: Vec<Tensor> = model
        .outputs()
        .iter()
        .map(|(_, ty)| Tensor::zeros(ty.dtype, &ty.shape.resolve(batch)))
        .collect();
    group.throughput(Throughput::Elements(batch as u64));
    group.bench_function(BenchmarkId::new(id, format!("b{batch}")), |b| {
        b.iter(|| {
            model
                .run_into(black_box(&inputs), &mut outputs)
                .expect("the model runs")
        })
    });
}

fn models(c: &mut Criterion) {
    let dir = models_dir();
    for (name, suffix) in MODELS {
        let onnx = dir.join(format!("{name}.onnx"));
        let test = read_npy(&dir.join(format!("digits_test_x{suffix}.npy"))).expect("test inputs");
        let calib =
            read_npy(&dir.join(format!("digits_calib_x{suffix}.npy"))).expect("calibration inputs");
        let opts = CompileOptions::default();
        let int8 = CompiledModel::from_onnx(&onnx, Some(std::slice::from_ref(&calib)), &opts)
            .expect("int8 model compiles");
        let fp32 = CompiledModel::from_onnx(&onnx, None, &opts).expect("fp32 model compiles");
        let mut group = c.benchmark_group(name);
        bench_run(&mut group, "int8", &int8, &test, 1);
        bench_run(&mut group, "int8", &int8, &test, 64);
        bench_run(&mut group, "fp32", &fp32, &test, 1);
        group.finish();
    }
}

criterion_group! {
    name = benches;
    // Short runs: these calls take microseconds, so 20 samples over one second are tight
    // enough, and the whole `cargo bench -p qlift` stays around a minute.
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    targets = models
}
criterion_main!(benches);
