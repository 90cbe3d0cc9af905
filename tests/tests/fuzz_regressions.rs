//! Every input in tests/data/fuzz-regressions/ (crashes found by the fuzz targets) through
//! the code of the target that found it: an error value or a result, never a panic.

use qlift::{CompileOptions, CompiledModel, ImportOptions, Limits};
use qlift_ir::Tensor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// What the `compile` fuzz target does with its input.
fn compile_and_run(data: &[u8]) {
    let limits = Limits { max_model_bytes: 1 << 20, max_tensor_bytes: 1 << 20, max_total_bytes: 4 << 20, ..Limits::default() };
    let opts = CompileOptions { import: ImportOptions { limits, ..Default::default() }, ..Default::default() };
    let Ok(model) = CompiledModel::from_onnx_bytes(data, None, &opts) else { return };
    let inputs: Vec<Tensor> = model.inputs().iter().map(|(_, ty)| Tensor::zeros(ty.dtype, &ty.shape.resolve(1))).collect();
    if inputs.iter().map(Tensor::len).sum::<usize>() <= 1 << 16 {
        let _ = model.run(&inputs);
    }
}

/// What the `parse_ir` fuzz target does with its input.
fn parse_ir(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(graph) = qlift_ir::text::parse(text) else { return };
    if qlift_ir::verify(&graph).is_ok() {
        let printed = qlift_ir::text::print(&graph, &qlift_ir::text::PrintOptions { full_constants: true, ..Default::default() });
        let back = qlift_ir::text::parse(&printed).expect("a printed graph parses");
        assert!(back == graph, "print/parse round trip changed the graph");
    }
}

#[test]
fn fuzz_regressions_fail_cleanly() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/fuzz-regressions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.file_name().is_some_and(|n| n != "README.md"));
    files.sort();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let data = std::fs::read(path).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if name.starts_with("parse_ir") {
                parse_ir(&data);
            } else {
                // load_onnx and compile inputs: both the loader and the whole pipeline.
                let _ = qlift::load_onnx_bytes(&data, None, &ImportOptions::default());
                compile_and_run(&data);
            }
        }));
        assert!(outcome.is_ok(), "fuzz regression {name} panicked");
    }
    eprintln!("fuzz regressions: {} inputs, 0 panics", files.len());
}
