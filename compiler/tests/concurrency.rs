//! One `CompiledModel` serving 8 threads while another thread compiles, runs and drops 20
//! other models (JIT memory allocated and freed concurrently with running code): every run
//! returns exactly the single-threaded result.

use qlift::npy::read_npy;
use qlift::{CompileOptions, CompiledModel};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

const RUNNERS: usize = 8;
/// Runs per runner at least; they keep running until the compiling thread is done.
const RUNS_PER_THREAD: usize = 50;
const OTHER_MODELS: usize = 20;

#[test]
fn eight_threads_run_one_model_while_others_compile_and_drop() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models");
    let x = read_npy(&dir.join("digits_test_x.npy"))
        .unwrap()
        .slice_outer(0, 4)
        .unwrap();
    let flat = read_npy(&dir.join("digits_test_x_flat.npy"))
        .unwrap()
        .slice_outer(0, 4)
        .unwrap();
    let opts = CompileOptions::default();
    let model = CompiledModel::from_onnx(&dir.join("digits_cnn.onnx"), None, &opts).unwrap();
    let expected = model.run(std::slice::from_ref(&x)).unwrap();
    let others = [
        "digits_mlp",
        "digits_mobile",
        "digits_cnn.qdq",
        "digits_mlp.qdq",
        "digits_mobile.qdq",
        "digits_cnn.qop",
        "digits_mobile.qop",
    ];
    let (done, runs) = (AtomicBool::new(false), AtomicUsize::new(0));
    std::thread::scope(|s| {
        let runners: Vec<_> = (0..RUNNERS)
            .map(|t| {
                let (model, x, expected, done, runs) = (&model, &x, &expected, &done, &runs);
                s.spawn(move || {
                    let mut i = 0;
                    while i < RUNS_PER_THREAD || !done.load(Relaxed) {
                        let y = model.run(std::slice::from_ref(x)).unwrap();
                        assert_eq!(&y, expected, "thread {t} run {i} differs");
                        i += 1;
                    }
                    runs.fetch_add(i, Relaxed);
                })
            })
            .collect();
        let compiler = s.spawn(|| {
            for i in 0..OTHER_MODELS {
                let name = others[i % others.len()];
                let m = CompiledModel::from_onnx(&dir.join(format!("{name}.onnx")), None, &opts)
                    .unwrap();
                let input = if name.starts_with("digits_mlp") {
                    &flat
                } else {
                    &x
                };
                let y = m.run(std::slice::from_ref(input)).unwrap();
                assert_eq!(y[0].shape(), &[4, 10], "{name}");
                drop(m);
            }
            done.store(true, Relaxed);
        });
        for r in runners {
            r.join().expect("a runner thread panicked");
        }
        compiler.join().expect("the compiling thread panicked");
    });
    eprintln!("{RUNNERS} threads: {} runs, all identical, while {OTHER_MODELS} models were compiled, run and dropped", runs.load(Relaxed));
}
