//! Every input in tests/data/fuzz-regressions/ (crashes found by the fuzz targets) through
//! the code of the target that found it: an error value or a result, never a panic.

use qlift_tests::fuzz;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

#[test]
fn fuzz_regressions_fail_cleanly() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/fuzz-regressions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.retain(|p| p.file_name().is_some_and(|n| n != "README.md"));
    files.sort();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let data = std::fs::read(path).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if name.starts_with("parse_ir") {
                fuzz::parse_ir(&data);
            } else if name.starts_with("read_npy") {
                fuzz::read_npy(&data);
            } else if name.starts_with("cli_args") {
                fuzz::cli_args(&data);
            } else {
                // load_onnx and compile inputs: both the loader and the whole pipeline.
                fuzz::load_onnx(&data);
                fuzz::compile(&data);
            }
        }));
        assert!(outcome.is_ok(), "fuzz regression {name} panicked");
    }
    eprintln!("fuzz regressions: {} inputs, 0 panics", files.len());
}

/// The seeds of the two newest targets through their code, so that `cargo test` runs what
/// the fuzzers start from: every .npy seed reads (and round-trips), every argument vector
/// ends with exit status 0 or 1 (each seed's command is printed).
#[test]
fn npy_and_cli_seeds_run_cleanly() {
    let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let files = |target: &str| {
        let mut f: Vec<PathBuf> = std::fs::read_dir(seeds.join(target))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        f.sort();
        f
    };
    for path in files("read_npy") {
        let data = std::fs::read(&path).unwrap();
        assert!(
            qlift::npy::read_npy_bytes(&data, 1 << 20).is_ok(),
            "{} does not read",
            path.display()
        );
        fuzz::read_npy(&data);
    }
    for path in files("cli_args") {
        let data = std::fs::read(&path).unwrap();
        eprintln!(
            "{}: {:?}",
            path.file_name().unwrap().to_string_lossy(),
            &fuzz::cli_argv(&data)[1..]
        );
        fuzz::cli_args(&data);
    }
}
