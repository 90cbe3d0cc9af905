//! Mutation corpus: thousands of corrupted versions of the bundled models (bit flips, byte
//! overwrites, truncations, spliced ranges) go through the importer, and those that still
//! import run through the interpreter. None may panic: every failure must be an error.

use qlift::npy::read_npy;
use qlift::{load_onnx_bytes, ImportOptions};
use qlift_ir::Tensor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Mutations per model; the whole corpus is this times the six bundled models.
const PER_MODEL: usize = 1000;

struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

fn mutate(model: &[u8], rng: &mut Lcg) -> Vec<u8> {
    let mut m = model.to_vec();
    match rng.below(4) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            let i = rng.below(m.len());
            m[i] = [0x00, 0xff, 0x7f, 0x80][rng.below(4)];
        }
        2 => m.truncate(rng.below(m.len())),
        _ => {
            // Copy a range over another one: swaps fields and lengths around.
            let (a, b, n) = (rng.below(m.len()), rng.below(m.len()), 1 + rng.below(64));
            let n = n.min(m.len() - a).min(m.len() - b);
            let chunk = m[a..a + n].to_vec();
            m[b..b + n].copy_from_slice(&chunk);
        }
    }
    m
}

#[test]
fn mutated_models_fail_cleanly() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models");
    let sample = |file: &str| -> Tensor {
        let t = read_npy(&dir.join(file)).unwrap();
        let per_sample = t.len() / t.shape()[0];
        let mut shape = t.shape().to_vec();
        shape[0] = 1;
        Tensor::from_f32(&shape, t.as_f32().unwrap()[..per_sample].to_vec())
    };
    let (image, flat) = (sample("digits_test_x.npy"), sample("digits_test_x_flat.npy"));
    let mut rng = Lcg(7);
    let (mut tried, mut imported, mut ran) = (0, 0, 0);
    for name in ["digits_cnn", "digits_mlp", "digits_mobile", "digits_cnn.qdq", "digits_mlp.qdq", "digits_mobile.qdq"] {
        let original = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
        let input = if name.starts_with("digits_mlp") { &flat } else { &image };
        for i in 0..PER_MODEL {
            let bytes = mutate(&original, &mut rng);
            tried += 1;
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let graph = load_onnx_bytes(&bytes, None, &ImportOptions::default()).ok()?;
                Some(qlift_ir::interp::run(&graph, std::slice::from_ref(input)).is_ok())
            }));
            match outcome {
                Err(_) => panic!("{name} mutation {i} panicked (reproduce with the same seed)"),
                Ok(Some(ok)) => {
                    imported += 1;
                    ran += ok as usize;
                }
                Ok(None) => {}
            }
        }
    }
    eprintln!("mutations tried: {tried}, imported: {imported}, ran: {ran}, panics: 0");
    assert_eq!(tried, 6 * PER_MODEL);
}

/// Mutations per model that go on through the whole compiler: a sample of 60 by default
/// (debug builds JIT-compile slowly); `.ci/run` also runs 1,000 per model in a release build
/// (`QLIFT_COMPILE_MUTATIONS`). The fuzz target `compile` does the same at volume.
fn compile_per_model() -> usize {
    std::env::var("QLIFT_COMPILE_MUTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(60)
}

/// The importable mutations of all eight bundled models (fp32, QDQ and QOperator) also go
/// through `CompiledModel::from_onnx_bytes` (rewrites and JIT compilation) and, when they
/// compile, a run on zero inputs of their input shapes (batch 1): no panic, every failure a
/// clear error value (bad input, not an internal error, for a model the importer accepted).
#[test]
fn mutated_models_compile_and_run_or_fail_cleanly() {
    use qlift::{CompileOptions, CompiledModel};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models");
    let models = [
        "digits_cnn", "digits_mlp", "digits_mobile", "digits_cnn.qdq", "digits_mlp.qdq", "digits_mobile.qdq", "digits_cnn.qop",
        "digits_mobile.qop",
    ];
    let mut rng = Lcg(2024);
    let (mut tried, mut imported, mut compiled, mut ran) = (0, 0, 0, 0);
    let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
    for name in models {
        let original = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
        for i in 0..compile_per_model() {
            let bytes = mutate(&original, &mut rng);
            tried += 1;
            if load_onnx_bytes(&bytes, None, &ImportOptions::default()).is_err() {
                continue;
            }
            imported += 1;
            let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<bool, qlift::Error> {
                let model = CompiledModel::from_onnx_bytes(&bytes, None, &CompileOptions::default())?;
                let inputs: Vec<Tensor> = model.inputs().iter().map(|(_, ty)| Tensor::zeros(ty.dtype, &ty.shape.resolve(1))).collect();
                if inputs.iter().map(Tensor::len).sum::<usize>() > 1 << 20 {
                    return Ok(false);
                }
                model.run(&inputs)?;
                Ok(true)
            }));
            match outcome {
                Err(_) => panic!("{name} compile mutation {i} panicked (reproduce with the same seed)"),
                Ok(Ok(r)) => {
                    compiled += 1;
                    ran += r as usize;
                }
                Ok(Err(e)) => {
                    assert!(!e.is_internal(), "{name} mutation {i}: an imported model gave an internal error: {e}");
                    let kind = format!("{e:?}");
                    *errors.entry(kind.split(['(', ' ', '{']).next().unwrap_or("").to_string()).or_default() += 1;
                }
            }
        }
    }
    eprintln!("compile mutations tried: {tried}, imported: {imported}, compiled: {compiled}, ran: {ran}, panics: 0; errors by kind: {errors:?}");
    assert_eq!(tried, models.len() * compile_per_model());
    assert!(compiled > 0, "no mutated model compiled: the sample tests nothing");
}
