//! The `qlift` binary as a user runs it: subcommands, files, exit codes, errors on stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod support;
use support::*;

#[test]
fn help_lists_subcommands_with_examples() {
    let o = qlift(&["--help"]);
    assert!(o.status.success());
    for word in ["dump", "run", "Examples:", "Exit codes"] {
        assert!(
            stdout(&o).contains(word),
            "--help lacks {word}:\n{}",
            stdout(&o)
        );
    }
    assert!(stdout(&qlift(&["run", "--help"])).contains("--labels"));
}

#[test]
fn dump_prints_text_and_dot_and_the_text_runs_again() {
    let o = qlift(&["dump", &model("digits_cnn.onnx")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("graph digits_cnn(%input: f32[N,1,8,8]) -> (%logits) {"));
    let dot = temp("cnn.dot");
    let o = qlift(&[
        "dump",
        &model("digits_cnn.onnx"),
        "--format",
        "dot",
        "-o",
        dot.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert!(std::fs::read_to_string(&dot)
        .unwrap()
        .starts_with("digraph"));
    // A full dump is a self-contained model: run it like the ONNX file.
    let qir = temp("cnn.qir");
    assert!(qlift(&[
        "dump",
        &model("digits_cnn.onnx"),
        "--full-constants",
        "-o",
        qir.to_str().unwrap()
    ])
    .status
    .success());
    let o = qlift(&[
        "run",
        qir.to_str().unwrap(),
        "--input",
        &model("digits_test_x.npy"),
        "--labels",
        &model("digits_test_y.npy"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("accuracy: 99.07% (535/540)"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn dump_after_passes_shows_the_pipeline() {
    let dir = temp("passes");
    let o = qlift(&[
        "dump",
        &model("digits_cnn.onnx"),
        "--after",
        "all",
        "--timings",
        "--dump-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("; after fold-bn") && stdout(&o).contains("; after fuse-activations")
    );
    assert!(
        stderr(&o).contains("fold-bn") && stderr(&o).contains(" ms"),
        "{}",
        stderr(&o)
    );
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.contains(&"04-fold-bn.qir".to_string()), "{files:?}");
    let o = qlift(&[
        "dump",
        &model("digits_cnn.onnx"),
        "--print-after",
        "fold-bn",
    ]);
    assert!(o.status.success());
    assert!(
        !stdout(&o).contains("BatchNormalization") && stdout(&o).contains("Relu("),
        "{}",
        stdout(&o)
    );
    let o = qlift(&["dump", &model("digits_cnn.onnx"), "--after", "frobnicate"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown pass `frobnicate`"),
        "{}",
        stderr(&o)
    );
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
    let want = qlift::npy::read_npy(&models_dir().join("digits_mlp.expected.npy")).unwrap();
    assert_eq!(got.shape(), want.shape());
    let err = got
        .as_f32()
        .unwrap()
        .iter()
        .zip(want.as_f32().unwrap())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(err < 1e-3, "max error {err}");
}

#[test]
fn bad_input_exits_1_with_a_clear_message() {
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["dump".into(), "no/such/model.onnx".into()],
            "no/such/model.onnx",
        ),
        (
            vec![
                "run".into(),
                model("digits_cnn.onnx"),
                "--input".into(),
                model("digits_test_x_flat.npy"),
            ],
            "input `input`: expected shape [N,1,8,8], got [540, 64]",
        ),
        (
            vec![
                "run".into(),
                model("digits_cnn.onnx"),
                "--input".into(),
                "nope=x.npy".into(),
            ],
            "the model has no input `nope`",
        ),
        (
            vec!["dump".into(), model("digits_test_y.npy")],
            "not a valid ONNX model",
        ),
        (vec!["frobnicate".into()], "unrecognized subcommand"),
    ];
    for (args, message) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = qlift(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(message),
            "{args:?}: stderr lacks `{message}`:\n{}",
            stderr(&o)
        );
        assert!(stdout(&o).is_empty());
    }
}

#[test]
fn quantize_writes_a_qdq_model_that_runs_as_int8() {
    let out = temp("cnn.qdq.onnx");
    let o = qlift(&[
        "quantize",
        &model("digits_cnn.onnx"),
        "--calib",
        &model("digits_calib_x.npy"),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("200 calibration samples"),
        "{}",
        stderr(&o)
    );
    // The exported QDQ model imports, and lowers to integer ops again.
    let o = qlift(&["dump", out.to_str().unwrap(), "--after", "fuse-requant"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("= QConv(") && stdout(&o).contains("= QMatMul("),
        "{}",
        stdout(&o)
    );
    let o = qlift(&[
        "run",
        &model("digits_cnn.onnx"),
        "--engine",
        "interp",
        "--calib",
        &model("digits_calib_x.npy"),
        "--input",
        &model("digits_test_x.npy"),
        "--labels",
        &model("digits_test_y.npy"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("accuracy: 99.07%"), "{}", stdout(&o));
}

#[test]
fn report_lists_layers_worst_first_and_as_json() {
    let args = [
        "report",
        &model("digits_mobile.onnx"),
        "--calib",
        &model("digits_calib_x.npy"),
        "--input",
        &model("digits_test_x.npy"),
    ];
    let o = qlift(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(
        table.starts_with("layer") && table.contains("QConv") && table.contains("(output)"),
        "{table}"
    );
    let o = qlift(&[&args[..], &["--json", "--method", "mse"]].concat());
    let json: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    let layers = json["layers"].as_array().unwrap();
    assert!(layers.len() >= 8, "{json}");
    let sqnr: Vec<f64> = layers
        .iter()
        .filter_map(|l| l["sqnr_db"].as_f64())
        .collect();
    assert!(
        sqnr.windows(2).all(|w| w[0] <= w[1]),
        "not worst first: {sqnr:?}"
    );
    assert_eq!(json["method"], "mse");
}

#[test]
fn quantization_usage_errors_exit_1() {
    let o = qlift(&[
        "quantize",
        &model("digits_cnn.onnx"),
        "-o",
        temp("x.onnx").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--calib"), "{}", stderr(&o));
    let o = qlift(&[
        "run",
        &model("digits_cnn.onnx"),
        "--calib",
        &model("digits_calib_x_flat.npy"),
        "--input",
        &model("digits_test_x.npy"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("input"), "{}", stderr(&o));
    let o = qlift(&[
        "run",
        &model("digits_cnn.onnx"),
        "--calib",
        &model("digits_calib_x.npy"),
        "--method",
        "median",
        "--input",
        &model("digits_test_x.npy"),
    ]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn bench_prints_latencies_with_units_and_json_in_milliseconds() {
    let args = [
        "bench",
        &model("digits_mlp.onnx"),
        "--input",
        &model("digits_test_x_flat.npy"),
        "--iters",
        "3",
        "--warmup",
        "1",
    ];
    let o = qlift(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let latency = text
        .lines()
        .find(|l| l.starts_with("latency"))
        .unwrap_or_else(|| panic!("no latency line: {text}"));
    // "min 310 µs   median 312 µs   p90 320 µs" or "min 1.234 ms ...": a unit after every value.
    let words: Vec<&str> = latency.split_whitespace().collect();
    assert_eq!(words.len(), 10, "{latency}");
    for (label, unit) in [(1, 3), (4, 6), (7, 9)] {
        assert!(
            ["min", "median", "p90"].contains(&words[label]),
            "{latency}"
        );
        assert!(
            words[unit - 1].parse::<f64>().is_ok() && ["µs", "ms"].contains(&words[unit]),
            "{latency}"
        );
    }
    let o = qlift(&[&args[..], &["--json"]].concat());
    let json: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    for key in ["min_ms", "median_ms", "p90_ms", "compile_ms", "gmacs"] {
        assert!(json[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {json}");
    }
    assert_eq!(json["batch"], 540);
}

/// `QLIFT_PERF_MAP=FILE` names every JIT function for `perf`: the kernel of each node, its
/// tasks and micro-kernels, at distinct addresses, in perf's map format.
#[test]
fn perf_map_names_every_kernel() {
    let map = temp("perf.map");
    let o = Command::new(env!("CARGO_BIN_EXE_qlift"))
        .args([
            "run",
            &model("digits_cnn.onnx"),
            "--input",
            &model("digits_test_x.npy"),
        ])
        .args(["--calib", &model("digits_calib_x.npy")])
        .env("QLIFT_PERF_MAP", &map)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&map).unwrap();
    let mut starts = std::collections::HashSet::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.splitn(3, ' ').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert!(
            u64::from_str_radix(fields[0], 16).is_ok_and(|a| a > 0),
            "{line}"
        );
        assert!(
            u64::from_str_radix(fields[1], 16).is_ok_and(|n| n > 0),
            "{line}"
        );
        assert!(fields[2].starts_with("qlift:"), "{line}");
        assert!(starts.insert(fields[0]), "two functions at {line}");
    }
    // The convolutions run on 256-bit micro-kernels where the CPU has AVX2.
    assert!(text.lines().any(|l| l.ends_with(":kernel")), "{text}");
    if std::is_x86_feature_detected!("avx2") {
        assert!(text.lines().any(|l| l.ends_with(":ukernel")), "{text}");
    }
}

/// Runs qlift and kills it after `seconds` (a hang is a failure, not a stuck test).
fn qlift_within(seconds: u64, args: &[&str]) -> Output {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_qlift"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the qlift binary runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("qlift {args:?} did not finish within {seconds} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A .npy file whose header declares `shape` of `descr`, followed by `data_len` bytes
/// (sparse: the file claims the space without writing it).
fn npy_file(name: &str, descr: &str, shape: &str, data_len: u64) -> PathBuf {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    header.push_str(&" ".repeat((64 - (10 + header.len() + 1) % 64) % 64));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    let path = temp(name);
    std::fs::write(&path, &bytes).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(bytes.len() as u64 + data_len)
        .unwrap();
    path
}

fn assert_exit(o: &Output, code: i32, message: &str) {
    assert_eq!(o.status.code(), Some(code), "stderr: {}", stderr(o));
    assert!(
        stderr(o).contains(message),
        "stderr lacks `{message}`:\n{}",
        stderr(o)
    );
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
}

#[test]
fn npy_headers_are_checked_before_allocating() {
    // 2^40 f32 elements declared in a 64-byte file: this aborted (exit 134) in a 4 TiB
    // allocation, through --input, --calib and --labels alike.
    let huge = npy_file("huge.npy", "<f4", "(1099511627776,)", 0);
    let huge = huge.to_str().unwrap();
    let message = "is 4398046511104 bytes, above the limit of 2147483648 bytes";
    let x = model("digits_test_x_flat.npy");
    for args in [
        vec!["run", &model("digits_mlp.onnx"), "--input", huge],
        vec![
            "run",
            &model("digits_mlp.onnx"),
            "--calib",
            huge,
            "--input",
            &x,
        ],
        vec![
            "run",
            &model("digits_mlp.onnx"),
            "--input",
            &x,
            "--labels",
            huge,
        ],
    ] {
        assert_exit(&qlift(&args), 1, message);
    }
    // A valid 3.2 GB u8 file (sparse): over the 2 GiB limit, refused from its header (this
    // aborted too: the reader tried f32 first, and allocated 12.8 GB for it).
    let big = npy_file("big_u8.npy", "|u1", "(3200000000,)", 3_200_000_000);
    assert_exit(
        &qlift_within(
            30,
            &[
                "run",
                &model("digits_mlp.onnx"),
                "--input",
                big.to_str().unwrap(),
            ],
        ),
        1,
        "is 3200000000 bytes, above the limit",
    );
    // A header that promises more than the file holds.
    let short = npy_file("short.npy", "<f4", "(540, 64)", 100);
    assert_exit(
        &qlift(&[
            "run",
            &model("digits_mlp.onnx"),
            "--input",
            short.to_str().unwrap(),
        ]),
        1,
        "has 100 bytes of data after its header",
    );
}

#[test]
fn qir_files_get_the_limits_of_onnx_imports() {
    // pads of 2^62 panicked ("capacity overflow", exit 101) on both engines and in bench;
    // pads of 2^40 aborted; a wrapping element count compiled to `ELEMENTS_PER_SAMPLE 0`.
    let write = |name: &str, text: &str| {
        let path = temp(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let pad62 = write("pad62.qir", "graph p(%x: f32[N,64]) -> (%y) {\n  %y = Pad(%x) {mode=\"constant\", pads=[0,0,0,4611686018427387902], value=0.0} : f32[N,4611686018427387966]\n}\n");
    let pad40 = write("pad40.qir", "graph p(%x: f32[N,64]) -> (%y) {\n  %y = Pad(%x) {mode=\"constant\", pads=[0,0,0,1099511627776], value=0.0} : f32[N,1099511627840]\n}\n");
    let x = model("digits_test_x_flat.npy");
    for engine in ["jit", "interp"] {
        assert_exit(
            &qlift(&["run", &pad62, "--engine", engine, "--input", &x]),
            1,
            "value `y`: its size per sample (f32[N,4611686018427387966]) overflows 64 bits",
        );
        assert_exit(
            &qlift(&["run", &pad40, "--engine", engine, "--input", &x]),
            1,
            "is 4398046511360, above the limit of 1073741824",
        );
    }
    assert_exit(
        &qlift(&["bench", &pad62, "--input", &x, "--iters", "1"]),
        1,
        "overflows 64 bits",
    );
    let wrap = write("wrap.qir", "graph w(%x: f32[N,4294967296,4294967296]) -> (%y) {\n  %y = Relu(%x) : f32[N,4294967296,4294967296]\n}\n");
    let (object, header) = (temp("wrap.o"), temp("wrap.h"));
    let o = qlift(&[
        "compile",
        &wrap,
        "-o",
        object.to_str().unwrap(),
        "--header",
        header.to_str().unwrap(),
    ]);
    assert_exit(&o, 1, "overflows 64 bits");
    assert!(!object.exists() && !header.exists());
}

#[test]
fn devices_are_refused_and_never_read() {
    // `dump /dev/zero` read forever, growing without bound.
    for args in [["dump", "/dev/zero"], ["dump", "/dev/urandom"]] {
        assert_exit(&qlift_within(20, &args), 1, "is a device, not a file");
    }
    let o = qlift_within(
        20,
        &["run", &model("digits_mlp.onnx"), "--input", "/dev/zero"],
    );
    assert_exit(&o, 1, "is a device, not a file");
}

#[test]
fn a_closed_pipe_is_a_quiet_exit_and_a_full_disk_a_clear_error() {
    use std::io::Read;
    use std::process::Stdio;
    // `dump M --after all --full-constants | head -c 10` panicked (exit 101).
    let mut child = Command::new(env!("CARGO_BIN_EXE_qlift"))
        .args([
            "dump",
            &model("digits_cnn.onnx"),
            "--after",
            "all",
            "--full-constants",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap(); // then the pipe closes
    let o = child.wait_with_output().unwrap();
    assert_eq!(&head, b"graph digi");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    // `dump M > /dev/full` panicked too.
    let full = std::fs::File::create("/dev/full").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_qlift"))
        .args(["dump", &model("digits_cnn.onnx")])
        .stdout(full)
        .output()
        .unwrap();
    assert_exit(&o, 1, "writing standard output: No space left on device");
    assert_exit(
        &qlift(&["dump", &model("digits_cnn.onnx"), "-o", "/dev/full"]),
        1,
        "writing /dev/full: No space left on device",
    );
    // /dev/null stays a device (an output that exists and is not a regular file is written
    // in place, not replaced by a rename).
    assert!(
        qlift(&["dump", &model("digits_cnn.onnx"), "-o", "/dev/null"])
            .status
            .success()
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
}

#[test]
fn numeric_flags_are_range_checked() {
    let base = [
        "bench",
        &model("digits_mlp.onnx"),
        "--input",
        &model("digits_test_x_flat.npy"),
    ];
    let cases: [(&[&str], &str); 8] = [
        (
            &["--iters", "18446744073709551615"],
            "out of range: from 1 to 1000000",
        ),
        (
            &["--iters", "10000000000000"],
            "out of range: from 1 to 1000000",
        ),
        (&["--iters", "0"], "out of range"),
        (&["--iters", "-1"], "unexpected argument '-1'"),
        (&["--iters", "1e3"], "is not a whole number"),
        (&["--threads", "100000"], "out of range: from 1 to 1024"),
        (&["--callers", "0"], "out of range"),
        (
            &["--iters", "1000000", "--callers", "1000"],
            "more than 10000000 timed runs",
        ),
    ];
    for (flags, message) in cases {
        let o = qlift(&[&base[..], flags].concat());
        assert_exit(&o, 1, message);
    }
    let o = qlift(&[
        "run",
        &model("digits_mlp.onnx"),
        "--input",
        &model("digits_test_x_flat.npy"),
        "--threads",
        "0",
    ]);
    assert_exit(&o, 1, "out of range: from 1 to 1024");
}

#[test]
fn paths_and_names_are_checked_before_compiling() {
    let x = model("digits_test_x_flat.npy");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "run".into(),
                model("digits_mlp.onnx"),
                "--input".into(),
                x.clone(),
                "--output".into(),
                "nope=y.npy".into(),
            ],
            "no output for `nope=y.npy`",
        ),
        (
            vec![
                "run".into(),
                model("digits_mlp.onnx"),
                "--input".into(),
                x.clone(),
                "--output".into(),
                "/no/such/dir/y.npy".into(),
            ],
            "the directory /no/such/dir does not exist",
        ),
        (
            vec![
                "run".into(),
                model("digits_mlp.onnx"),
                "--input".into(),
                x.clone(),
                "--labels".into(),
                "no-labels.npy".into(),
            ],
            "no-labels.npy",
        ),
        (
            vec![
                "compile".into(),
                model("digits_mlp.onnx"),
                "-o".into(),
                temp("m.o").display().to_string(),
                "--header".into(),
                "/no/such/dir/m.h".into(),
            ],
            "does not exist",
        ),
        (
            vec![
                "compile".into(),
                model("digits_mlp.onnx"),
                "-o".into(),
                temp("m.o").display().to_string(),
                "--header".into(),
                temp("m.h").display().to_string(),
                "--target".into(),
                "mips-frobnicate".into(),
            ],
            "--target",
        ),
        (
            vec![
                "quantize".into(),
                model("digits_mlp.onnx"),
                "--calib".into(),
                model("digits_calib_x_flat.npy"),
                "-o".into(),
                std::env::temp_dir().display().to_string(),
            ],
            "is a directory",
        ),
    ];
    for (args, message) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = qlift(&args);
        assert_exit(&o, 1, message);
        assert!(
            !stderr(&o).contains("compiled ") && !stderr(&o).contains("quantized with"),
            "{args:?} did the work first:\n{}",
            stderr(&o)
        );
    }
    assert_exit(
        &qlift(&[
            "compile",
            &model("digits_mlp.onnx"),
            "-o",
            "m.o",
            "--header",
            "m.h",
            "--name",
            "1st",
        ]),
        1,
        "is not a C identifier",
    );
    assert!(!temp("m.o").exists());
}

#[test]
fn a_failure_leaves_no_partial_output() {
    // The QDQ model is written first, the --qir text then fails (a full disk): before, the
    // .onnx file stayed behind.
    let out = temp("partial.qdq.onnx");
    let _ = std::fs::remove_file(&out);
    let o = qlift(&[
        "quantize",
        &model("digits_mlp.onnx"),
        "--calib",
        &model("digits_calib_x_flat.npy"),
        "-o",
        out.to_str().unwrap(),
        "--qir",
        "/dev/full",
    ]);
    assert_exit(&o, 1, "No space left on device");
    assert!(!out.exists(), "{} was left behind", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".qlift-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // An existing output is only replaced once the new one is complete.
    std::fs::write(&out, b"old").unwrap();
    let o = qlift(&[
        "quantize",
        &model("digits_mlp.onnx"),
        "--calib",
        &model("digits_calib_x_flat.npy"),
        "-o",
        out.to_str().unwrap(),
        "--qir",
        "/dev/full",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
}

#[test]
fn calib_on_an_already_quantized_model_is_ignored_with_a_note() {
    // This failed verification inside a pass with a self-contradicting message.
    let args = [
        "run",
        &model("digits_cnn.qdq.onnx"),
        "--calib",
        &model("digits_calib_x.npy"),
        "--input",
        &model("digits_test_x.npy"),
        "--labels",
        &model("digits_test_y.npy"),
    ];
    let o = qlift(&args);
    assert_exit(
        &o,
        0,
        "is already quantized (16 DequantizeLinear, 8 QuantizeLinear): --calib is ignored",
    );
    assert!(stdout(&o).contains("accuracy: 99.07%"), "{}", stdout(&o));
    // qlift's own quantize output, through run and compile.
    let qdq = temp("own.qdq.onnx");
    assert!(qlift(&[
        "quantize",
        &model("digits_cnn.onnx"),
        "--calib",
        &model("digits_calib_x.npy"),
        "-o",
        qdq.to_str().unwrap()
    ])
    .status
    .success());
    let o = qlift(&[
        "run",
        qdq.to_str().unwrap(),
        "--calib",
        &model("digits_calib_x.npy"),
        "--input",
        &model("digits_test_x.npy"),
        "--labels",
        &model("digits_test_y.npy"),
    ]);
    assert_exit(&o, 0, "--calib is ignored");
    let (object, header) = (temp("own.o"), temp("own.h"));
    let o = qlift(&[
        "compile",
        qdq.to_str().unwrap(),
        "--calib",
        &model("digits_calib_x.npy"),
        "-o",
        object.to_str().unwrap(),
        "--header",
        header.to_str().unwrap(),
    ]);
    assert_exit(&o, 0, "--calib is ignored");
    // Quantizing it again is refused, clearly.
    let o = qlift(&[
        "quantize",
        qdq.to_str().unwrap(),
        "--calib",
        &model("digits_calib_x.npy"),
        "-o",
        temp("again.onnx").to_str().unwrap(),
    ]);
    assert_exit(&o, 1, "is already quantized");
    assert!(
        stderr(&o).contains("there is nothing to quantize"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn report_on_a_qoperator_model_compares_real_values() {
    // Integer codes with different quantization parameters were compared: input_quantized
    // ranked worst at 0.03 dB with a max error of 254.
    let o = qlift(&[
        "report",
        &model("digits_cnn.qop.onnx"),
        "--input",
        &model("digits_test_x.npy"),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    let layers = json["layers"].as_array().unwrap();
    assert!(layers.len() >= 4, "{json}");
    for layer in layers {
        let max = layer["max_abs_error"].as_f64().unwrap();
        let sqnr = layer["sqnr_db"].as_f64().unwrap_or(f64::INFINITY);
        assert!(max < 1.0 && sqnr > 20.0, "{layer}");
    }
    // --calib is accepted and ignored, with the note.
    let o = qlift(&[
        "report",
        &model("digits_cnn.qop.onnx"),
        "--calib",
        &model("digits_calib_x.npy"),
        "--input",
        &model("digits_test_x.npy"),
    ]);
    assert_exit(&o, 0, "--calib is ignored");
}

#[test]
fn a_panic_exits_2_with_a_bug_report_hint() {
    let o = Command::new(env!("CARGO_BIN_EXE_qlift"))
        .args(["dump", &model("digits_mlp.onnx")])
        .env("QLIFT_TEST_PANIC", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("error: internal error") && stderr(&o).contains("please report it"),
        "{}",
        stderr(&o)
    );
}

/// `qlift ops` lists the importer's registry, and README.md's op table is its `--markdown`
/// output: adding an op without regenerating the README fails here.
#[test]
fn the_readme_op_table_is_qlift_ops() {
    let plain = qlift(&["ops"]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert!(
        stdout(&plain)
            .lines()
            .any(|l| l.starts_with("Conv ") && l.contains("ai.onnx 7..28")),
        "{}",
        stdout(&plain)
    );
    let table = stdout(&qlift(&["ops", "--markdown"]));
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let (_, rest) = readme
        .split_once("<!-- ops:begin -->\n")
        .expect("README has the ops markers");
    let (in_readme, _) = rest
        .split_once("<!-- ops:end -->")
        .expect("README has the ops end marker");
    assert_eq!(
        in_readme, table,
        "README.md's op table is stale: regenerate it with `qlift ops --markdown`"
    );
}

/// `--shape` fixes a symbolic input dimension and `--freeze` makes an input a constant, on
/// IR text as on ONNX.
#[test]
fn shape_and_freeze_flags_bind_inputs() {
    let dir = temp("shape_freeze");
    std::fs::create_dir_all(&dir).unwrap();
    let qir = dir.join("m.qir");
    std::fs::write(
        &qir,
        "graph m(%x: f32[N,seq], %k: f32[1]) -> (%y) {\n  %y = Mul(%x, %k) : f32[N,seq]\n}\n",
    )
    .unwrap();
    let k = dir.join("k.npy");
    qlift::npy::write_npy(&k, &qlift_ir::Tensor::from_f32(&[1], vec![2.0])).unwrap();
    let out = qlift(&[
        "dump",
        qir.to_str().unwrap(),
        "--shape",
        "x=Nx3",
        "--freeze",
        &format!("k={}", k.display()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("graph m(%x: f32[N,3]) -> (%y)"), "{text}");
    let bad = qlift(&["dump", qir.to_str().unwrap(), "--shape", "x=Nx3x4"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("x") && stderr(&bad).contains("3 dimensions"),
        "{}",
        stderr(&bad)
    );
    let bad = qlift(&["dump", qir.to_str().unwrap(), "--freeze", "nope=k.npy"]);
    assert_eq!(bad.status.code(), Some(1));
}

/// A model with a symbolic dimension besides the batch (a sequence) has no product sizes
/// until a run binds it: bench counts the multiply-accumulates of the program it ran (it
/// reported 0 GMAC/s for MiniLM and magika), per kernel under --profile too.
#[test]
fn bench_counts_the_products_of_shape_specialized_models() {
    let dir = temp("bench_macs");
    std::fs::create_dir_all(&dir).unwrap();
    let qir = dir.join("m.qir");
    std::fs::write(
        &qir,
        "graph m(%x: f32[N,seq,8], %w: f32[8,4]) -> (%y) {\n  %y = MatMul(%x, %w) : f32[N,seq,4]\n}\n",
    )
    .unwrap();
    let (x, w) = (dir.join("x.npy"), dir.join("w.npy"));
    qlift::npy::write_npy(&x, &qlift_ir::Tensor::from_f32(&[1, 5, 8], vec![1.0; 40])).unwrap();
    qlift::npy::write_npy(&w, &qlift_ir::Tensor::from_f32(&[8, 4], vec![1.0; 32])).unwrap();
    let (x, w) = (format!("x={}", x.display()), format!("w={}", w.display()));
    let args = [
        "bench",
        qir.to_str().unwrap(),
        "--input",
        &x,
        "--input",
        &w,
        "--iters",
        "3",
    ];
    let o = qlift(&[&args[..], &["--json"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    assert!(json["gmacs"].as_f64().is_some_and(|v| v > 0.0), "{json}");
    let o = qlift(&[&args[..], &["--profile"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let row = text
        .lines()
        .find(|l| l.starts_with("MatMul MatMul"))
        .unwrap_or_else(|| panic!("no MatMul form row: {text}"));
    // "MatMul MatMul  1  0.1  3.9%  0.000  1.4": the GMACs and GMAC/s columns are filled.
    assert_eq!(row.split_whitespace().count(), 7, "{row}");
}

#[test]
fn help_matches_behaviour() {
    // `run` said "with the reference interpreter" while the JIT is the default.
    let top = stdout(&qlift(&["--help"]));
    let run_line = top
        .lines()
        .find(|l| l.trim_start().starts_with("run "))
        .unwrap();
    assert!(run_line.contains("JIT (the default)"), "{run_line}");
    let run = stdout(&qlift(&["run", "--help"]));
    assert!(run.contains("[default: jit]"), "{run}");
    // `--after` listed five of the seven passes.
    let dump = stdout(&qlift(&["dump", "--help"]));
    for pass in qlift_passes::pass_names() {
        assert!(
            dump.contains(&format!("  {pass}")),
            "dump --help lacks pass {pass}:\n{dump}"
        );
    }
    // The exit codes, as the tests above establish them.
    for words in [
        "0 success",
        "closed early",
        "1 bad input or usage",
        "2 internal error",
    ] {
        assert!(top.contains(words), "--help lacks `{words}`");
    }
}

#[test]
fn a_2_gib_input_is_read_and_refused_by_the_run_memory_limit() {
    // 2 GiB of inputs in memory before compiling made cranelift-jit place code and data more
    // than 2 GiB apart, and linking panicked (an internal error, exit 2). Now the model
    // compiles, and the batch is refused by the run memory limit before any allocation.
    let samples: u64 = 8_388_000;
    let big = npy_file(
        "two_gib.npy",
        "<f4",
        &format!("({samples}, 1, 8, 8)"),
        samples * 256,
    );
    let o = qlift_within(
        300,
        &[
            "run",
            &model("digits_cnn.onnx"),
            "--input",
            big.to_str().unwrap(),
        ],
    );
    assert_exit(&o, 1, "memory for a run on a batch of 8388000");
    assert!(stderr(&o).contains("compiled "), "{}", stderr(&o));
    std::fs::remove_file(&big).unwrap();
}

/// `run --stream` and `bench --stream` on the bundled recurrent model: the stream's last
/// outputs score as the whole sequences do, and misuse is a clear error (exit 1).
#[test]
fn run_and_bench_stream_a_recurrent_model() {
    let (lstm, x, y) = (
        model("digits_lstm.onnx"),
        model("digits_seq_test_x.npy"),
        model("digits_test_y.npy"),
    );
    let o = qlift(&[
        "run", &lstm, "--stream", "--chunk", "3", "--input", &x, "--labels", &y,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("accuracy: 97.41% (526/540)"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("in 3 calls (chunks of 3 along axis 1)"),
        "{}",
        stderr(&o)
    );
    let o = qlift(&[
        "run",
        &lstm,
        "--stream",
        "--chunk",
        "5",
        "--input",
        &x,
        "--labels",
        &y,
        "--calib",
        &model("digits_seq_calib_x.npy"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("calibrating over a stream: 2 calls")
            && stdout(&o).contains("accuracy: 97."),
        "{}{}",
        stderr(&o),
        stdout(&o)
    );
    let o = qlift(&[
        "bench", &lstm, "--stream", "--input", &x, "--iters", "16", "--warmup", "2", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("\"median_ms\""), "{}", stdout(&o));
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "run",
                &model("digits_mlp.onnx"),
                "--stream",
                "--input",
                &model("digits_test_x_flat.npy"),
            ],
            "no input and output of the model are named as a state pair",
        ),
        (
            &["run", &lstm, "--stream", "--state", "h1=hn", "--input", &x],
            "the model has no input `h1`",
        ),
        (
            &[
                "run",
                &lstm,
                "--stream",
                "--input",
                &x,
                "--input",
                &format!("h0={x}"),
            ],
            "`h0` is a state input",
        ),
        (
            &["run", &lstm, "--stream", "--chunk", "0", "--input", &x],
            "--chunk",
        ),
        (
            &["run", &lstm, "--stream", "--axis", "5", "--input", &x],
            "axis 5 is outside",
        ),
    ];
    for (args, message) in cases {
        let o = qlift(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(message), "{args:?}: {}", stderr(&o));
    }
}
