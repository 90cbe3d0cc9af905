//! The `qlift` binary as a user runs it: subcommands, files, exit codes, errors on stderr.

use std::path::PathBuf;
use std::process::{Command, Output};

fn qlift(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qlift")).args(args).output().expect("the qlift binary runs")
}

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models")
}

fn model(file: &str) -> String {
    models().join(file).to_string_lossy().into_owned()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qlift-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_subcommands_with_examples() {
    let o = qlift(&["--help"]);
    assert!(o.status.success());
    for word in ["dump", "run", "Examples:", "Exit codes"] {
        assert!(stdout(&o).contains(word), "--help lacks {word}:\n{}", stdout(&o));
    }
    assert!(stdout(&qlift(&["run", "--help"])).contains("--labels"));
}

#[test]
fn dump_prints_text_and_dot_and_the_text_runs_again() {
    let o = qlift(&["dump", &model("digits_cnn.onnx")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("graph digits_cnn(%input: f32[N,1,8,8]) -> (%logits) {"));
    let dot = temp("cnn.dot");
    let o = qlift(&["dump", &model("digits_cnn.onnx"), "--format", "dot", "-o", dot.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(std::fs::read_to_string(&dot).unwrap().starts_with("digraph"));
    // A full dump is a self-contained model: run it like the ONNX file.
    let qir = temp("cnn.qir");
    assert!(qlift(&["dump", &model("digits_cnn.onnx"), "--full-constants", "-o", qir.to_str().unwrap()]).status.success());
    let o = qlift(&["run", qir.to_str().unwrap(), "--input", &model("digits_test_x.npy"), "--labels", &model("digits_test_y.npy")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("accuracy: 99.07% (535/540)"), "{}", stdout(&o));
}

#[test]
fn dump_after_passes_shows_the_pipeline() {
    let dir = temp("passes");
    let o = qlift(&["dump", &model("digits_cnn.onnx"), "--after", "all", "--timings", "--dump-dir", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("; after fold-bn") && stdout(&o).contains("; after fuse-activations"));
    assert!(stderr(&o).contains("fold-bn") && stderr(&o).contains(" ms"), "{}", stderr(&o));
    let files: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(files.contains(&"03-fold-bn.qir".to_string()), "{files:?}");
    let o = qlift(&["dump", &model("digits_cnn.onnx"), "--print-after", "fold-bn"]);
    assert!(o.status.success());
    assert!(!stdout(&o).contains("BatchNormalization") && stdout(&o).contains("Relu("), "{}", stdout(&o));
    let o = qlift(&["dump", &model("digits_cnn.onnx"), "--after", "frobnicate"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unknown pass `frobnicate`"), "{}", stderr(&o));
}

#[test]
fn run_writes_outputs_and_scores_labels() {
    let out = temp("logits.npy");
    let o = qlift(&[
        "run",
        &model("digits_mlp.onnx"),
        "--input",
        &format!("input={}", model("digits_test_x_flat.npy")),
        "--output",
        &format!("logits={}", out.display()),
        "--labels",
        &model("digits_test_y.npy"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("accuracy: 98.15%"), "{}", stdout(&o));
    let got = qlift::npy::read_npy(&out).unwrap();
    let want = qlift::npy::read_npy(&models().join("digits_mlp.expected.npy")).unwrap();
    assert_eq!(got.shape(), want.shape());
    let err = got.as_f32().unwrap().iter().zip(want.as_f32().unwrap()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(err < 1e-3, "max error {err}");
}

#[test]
fn bad_input_exits_1_with_a_clear_message() {
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["dump".into(), "no/such/model.onnx".into()], "no/such/model.onnx"),
        (
            vec!["run".into(), model("digits_cnn.onnx"), "--input".into(), model("digits_test_x_flat.npy")],
            "input `input`: expected shape [N,1,8,8], got [540, 64]",
        ),
        (vec!["run".into(), model("digits_cnn.onnx"), "--input".into(), "nope=x.npy".into()], "the model has no input `nope`"),
        (vec!["dump".into(), model("digits_test_y.npy")], "not a valid ONNX model"),
        (vec!["frobnicate".into()], "unrecognized subcommand"),
    ];
    for (args, message) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = qlift(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(message), "{args:?}: stderr lacks `{message}`:\n{}", stderr(&o));
        assert!(stdout(&o).is_empty());
    }
}

#[test]
fn quantize_writes_a_qdq_model_that_runs_as_int8() {
    let out = temp("cnn.qdq.onnx");
    let o = qlift(&["quantize", &model("digits_cnn.onnx"), "--calib", &model("digits_calib_x.npy"), "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("200 calibration samples"), "{}", stderr(&o));
    // The exported QDQ model imports, and lowers to integer ops again.
    let o = qlift(&["dump", out.to_str().unwrap(), "--after", "fuse-requant"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("= QConv(") && stdout(&o).contains("= QMatMul("), "{}", stdout(&o));
    let o = qlift(&[
        "run", &model("digits_cnn.onnx"), "--engine", "interp", "--calib", &model("digits_calib_x.npy"), "--input",
        &model("digits_test_x.npy"), "--labels", &model("digits_test_y.npy"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("accuracy: 99.07%"), "{}", stdout(&o));
}

#[test]
fn report_lists_layers_worst_first_and_as_json() {
    let args = ["report", &model("digits_mobile.onnx"), "--calib", &model("digits_calib_x.npy"), "--input", &model("digits_test_x.npy")];
    let o = qlift(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.starts_with("layer") && table.contains("QConv") && table.contains("(output)"), "{table}");
    let o = qlift(&[&args[..], &["--json", "--method", "mse"]].concat());
    let json: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    let layers = json["layers"].as_array().unwrap();
    assert!(layers.len() >= 8, "{json}");
    let sqnr: Vec<f64> = layers.iter().filter_map(|l| l["sqnr_db"].as_f64()).collect();
    assert!(sqnr.windows(2).all(|w| w[0] <= w[1]), "not worst first: {sqnr:?}");
    assert_eq!(json["method"], "mse");
}

#[test]
fn quantization_usage_errors_exit_1() {
    let o = qlift(&["quantize", &model("digits_cnn.onnx"), "-o", temp("x.onnx").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--calib"), "{}", stderr(&o));
    let o = qlift(&["run", &model("digits_cnn.onnx"), "--calib", &model("digits_calib_x_flat.npy"), "--input", &model("digits_test_x.npy")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("input"), "{}", stderr(&o));
    let o = qlift(&["run", &model("digits_cnn.onnx"), "--calib", &model("digits_calib_x.npy"), "--method", "median", "--input", &model("digits_test_x.npy")]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn bench_prints_latencies_with_units_and_json_in_milliseconds() {
    let args = ["bench", &model("digits_mlp.onnx"), "--input", &model("digits_test_x_flat.npy"), "--iters", "3", "--warmup", "1"];
    let o = qlift(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let latency = text.lines().find(|l| l.starts_with("latency")).unwrap_or_else(|| panic!("no latency line: {text}"));
    // "min 310 µs   median 312 µs   p90 320 µs" or "min 1.234 ms ...": a unit after every value.
    let words: Vec<&str> = latency.split_whitespace().collect();
    assert_eq!(words.len(), 10, "{latency}");
    for (label, unit) in [(1, 3), (4, 6), (7, 9)] {
        assert!(["min", "median", "p90"].contains(&words[label]), "{latency}");
        assert!(words[unit - 1].parse::<f64>().is_ok() && ["µs", "ms"].contains(&words[unit]), "{latency}");
    }
    let o = qlift(&[&args[..], &["--json"]].concat());
    let json: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    for key in ["min_ms", "median_ms", "p90_ms", "compile_ms", "gmacs"] {
        assert!(json[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {json}");
    }
    assert_eq!(json["batch"], 540);
}
