//! What the compiler's integration tests share: the `qlift` binary, the bundled models, a
//! scratch folder per test binary and the text of a command's output. Each test binary
//! uses its own part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `qlift` binary run with `args`, to completion.
pub fn qlift(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qlift"))
        .args(args)
        .output()
        .expect("the qlift binary runs")
}

/// `examples/models`: the bundled models and their data.
pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models")
}

/// A bundled file as a command-line argument.
pub fn model(file: &str) -> String {
    models_dir().join(file).to_string_lossy().into_owned()
}

/// `name` in a scratch folder of this test binary (one per process, so parallel test
/// binaries never share files).
pub fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qlift-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// [`temp`] as a command-line argument.
pub fn temp_arg(name: &str) -> String {
    temp(name).to_string_lossy().into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
