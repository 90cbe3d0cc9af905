//! `--mode dynamic|weight-only` and `--block-size` on the command line: accuracy on the
//! bundled MLP, the exported ONNX model read back by qlift and run by ONNX Runtime (when the
//! corpus venv is there), and the flag combinations that are refused.

use std::path::PathBuf;
use std::process::{Command, Output};

mod support;
use support::*;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The accuracy `run --labels` prints, in percent.
fn accuracy(o: &Output) -> f64 {
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.starts_with("accuracy:"))
        .unwrap_or_else(|| panic!("no accuracy in {out}"));
    line["accuracy:".len()..]
        .trim()
        .split('%')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

const MODES: [&[&str]; 4] = [
    &["--mode", "dynamic"],
    &["--mode", "weight-only"],
    &[
        "--mode",
        "weight-only",
        "--weight-bits",
        "4",
        "--block-size",
        "32",
    ],
    &["--mode", "weight-only", "--weight-bits", "4"],
];

#[test]
fn every_mode_keeps_the_mlp_accurate_without_calibration() {
    let (x, y) = (model("digits_test_x_flat.npy"), model("digits_test_y.npy"));
    for mode in MODES {
        let mlp = model("digits_mlp.onnx");
        let mut args = vec!["run", &*mlp];
        args.extend(mode.iter().copied());
        args.extend(["--input", &x, "--labels", &y]);
        let o = qlift(&args);
        // fp32 is 98.15%; int4 weights per column lose a little more.
        assert!(accuracy(&o) >= 96.0, "{mode:?}: {}", text(&o.stdout));
        assert!(text(&o.stderr).contains("quantized 3 MatMul/Gemm without calibration"));
    }
}

/// The corpus venv's python (numpy and ONNX Runtime), if it was fetched.
fn python() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/corpus/venv/bin/python");
    p.exists().then_some(p)
}

#[test]
fn exported_models_run_in_qlift_and_onnx_runtime_with_the_same_outputs() {
    let x = model("digits_test_x_flat.npy");
    for (i, mode) in MODES.iter().enumerate() {
        let onnx = temp(&format!("mlp{i}.onnx"));
        let onnx_s = onnx.to_string_lossy().into_owned();
        let mlp = model("digits_mlp.onnx");
        let mut args = vec!["quantize", &*mlp];
        args.extend(mode.iter().copied());
        args.extend(["-o", &onnx_s]);
        let o = qlift(&args);
        assert!(o.status.success(), "{mode:?}: {}", text(&o.stderr));
        // The direct run of the float model and the run of the exported model agree.
        let (direct, exported) = (
            temp(&format!("direct{i}.npy")),
            temp(&format!("exported{i}.npy")),
        );
        let mut run = vec!["run", &*mlp];
        run.extend(mode.iter().copied());
        let direct_s = direct.to_string_lossy().into_owned();
        run.extend(["--input", &x, "--output", &direct_s]);
        assert!(qlift(&run).status.success());
        let exported_s = exported.to_string_lossy().into_owned();
        let o = qlift(&["run", &onnx_s, "--input", &x, "--output", &exported_s]);
        assert!(o.status.success(), "{mode:?}: {}", text(&o.stderr));
        assert_eq!(
            std::fs::read(&direct).unwrap(),
            std::fs::read(&exported).unwrap(),
            "{mode:?}: the exported model computes what the quantized one does"
        );
        let Some(py) = python() else {
            eprintln!("note: no target/corpus/venv: the ONNX Runtime check is skipped");
            continue;
        };
        // ONNX's own reference evaluator on the exported model gives qlift's outputs (within
        // float rounding). ONNX Runtime must agree on the labels only: on CPUs without VNNI
        // its u8×s8 MatMulInteger sums pairs of products in saturating i16 (`vpmaddubsw`,
        // the reason for its `reduce_range` option), which the exact integer product of the
        // ONNX definition, and qlift, do not (measured: up to 11% of the output range on
        // the digits MLP's dynamic export on AVX2).
        let script = format!(
            "import numpy as np, onnx, onnxruntime as ort\n\
             from onnx.reference import ReferenceEvaluator\n\
             x = np.load({x:?})\n\
             q = np.load({exported_s:?})\n\
             m = onnx.load({onnx_s:?})\n\
             ref = ReferenceEvaluator(m).run(None, {{m.graph.input[0].name: x}})[0]\n\
             err = np.abs(ref - q).max() / np.abs(q).max()\n\
             s = ort.InferenceSession({onnx_s:?})\n\
             y = s.run(None, {{s.get_inputs()[0].name: x}})[0]\n\
             agree = (y.argmax(1) == q.argmax(1)).mean()\n\
             print(err, agree)\n\
             assert err < 1e-4 and agree > 0.99, (err, agree)\n"
        );
        let o = Command::new(&py).args(["-c", &script]).output().unwrap();
        assert!(
            o.status.success(),
            "{mode:?}: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
    }
}

#[test]
fn meaningless_combinations_are_refused() {
    let (m, c) = (model("digits_mlp.onnx"), model("digits_calib_x_flat.npy"));
    let x = model("digits_test_x_flat.npy");
    for (args, message) in [
        (
            vec![
                "run", &*m, "--mode", "dynamic", "--calib", &c, "--input", &x,
            ],
            "quantizes without calibration",
        ),
        (
            vec!["run", &*m, "--block-size", "32", "--input", &x],
            "--block-size is for --mode weight-only",
        ),
        (
            vec![
                "run",
                &*m,
                "--mode",
                "dynamic",
                "--weight-bits",
                "4",
                "--input",
                &x,
            ],
            "--mode dynamic has int8 weights",
        ),
        (
            vec!["quantize", &*m, "-o", "/dev/null"],
            "--mode dynamic / weight-only",
        ),
    ] {
        let o = qlift(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            text(&o.stderr).contains(message),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
}
