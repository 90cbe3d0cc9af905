//! Ahead-of-time compilation end to end: `qlift compile` writes an object file and header,
//! the system C compiler links examples/aot_c/main.c against it, and the program's outputs
//! on the digits test set equal the JIT's bit for bit.

use qlift::npy::read_npy;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn c_program_runs_the_compiled_cnn_bit_exactly() {
    let dir = std::env::temp_dir().join(format!("qlift-aot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let models = root().join("examples/models");
    let m = |f: &str| models.join(f).to_string_lossy().into_owned();
    let (obj, header) = (dir.join("digits.o"), dir.join("digits.h"));
    let qlift = env!("CARGO_BIN_EXE_qlift");
    let o = Command::new(qlift)
        .args([
            "compile",
            &m("digits_cnn.onnx"),
            "--calib",
            &m("digits_calib_x.npy"),
            "--name",
            "digits",
            "-o",
        ])
        .arg(&obj)
        .arg("--header")
        .arg(&header)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let exe = dir.join("digits");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let o = Command::new(&cc)
        .args(["-O2", "-std=c11", "-Wall", "-Werror", "-I"])
        .arg(&dir)
        .arg(root().join("examples/aot_c/main.c"))
        .arg(&obj)
        .args(["-lm", "-o"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{cc}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let logits = dir.join("logits.bin");
    let o = Command::new(&exe)
        .args([m("digits_test_x.npy"), m("digits_test_y.npy")])
        .arg(&logits)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("accuracy: 99.07%"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // The same model through the JIT.
    let jit = dir.join("jit.npy");
    let o = Command::new(qlift)
        .args([
            "run",
            &m("digits_cnn.onnx"),
            "--calib",
            &m("digits_calib_x.npy"),
            "--input",
            &m("digits_test_x.npy"),
            "--output",
        ])
        .arg(&jit)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = read_npy(&jit).unwrap();
    let got = std::fs::read(&logits).unwrap();
    assert_eq!(got, want.data().as_bytes(), "AOT and JIT outputs differ");
}
