//! Quantization the user controls, through the `qlift` binary: `--plan`, `--exclude`,
//! `--emit-plan` and `--target-sqnr` on the bundled models.

mod support;
use support::*;

/// `qlift quantize digits_mobile` with `extra` flags; returns the lowered IR text (`--qir`)
/// and stderr. Fails the test when the command fails.
fn quantize_mobile(tag: &str, extra: &[&str]) -> (String, String) {
    let (onnx, qir) = (
        temp_arg(&format!("{tag}.onnx")),
        temp_arg(&format!("{tag}.qir")),
    );
    let calib = model("digits_calib_x.npy");
    let mut args = vec![
        "quantize", "", // the model
        "--calib", &calib, "-o", &onnx, "--qir", &qir,
    ];
    let m = model("digits_mobile.onnx");
    args[1] = &m;
    args.extend_from_slice(extra);
    let o = qlift(&args);
    assert!(o.status.success(), "qlift {args:?}: {}", stderr(&o));
    (std::fs::read_to_string(&qir).unwrap(), stderr(&o))
}

/// The op that computes value `name` in lowered IR text (`QConv`, `Conv`...).
fn op_of(ir: &str, name: &str) -> String {
    ir.lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix(&format!("%{name} = "))?;
            Some(rest.split('(').next()?.to_string())
        })
        .unwrap_or_else(|| panic!("no value %{name} in\n{ir}"))
}

#[test]
fn exclude_by_node_and_by_op_type_keeps_exactly_those_float() {
    let (plain, _) = quantize_mobile("plain", &[]);
    for v in ["relu4", "relu5", "relu6_1", "relu6_2", "bn3"] {
        assert_eq!(
            op_of(&plain, &format!("{v}_QuantizeLinear_Output")),
            "QConv"
        );
    }
    // A node of the rewritten graph, and a BatchNormalization of the imported model that
    // the rewrites folded into the Conv before it (`bn3_node` → `bn3_node` itself here,
    // `stem_node` → `relu6_1_node`).
    let (ir, err) = quantize_mobile(
        "exclude_nodes",
        &["--exclude", "relu4_node", "--exclude", "stem_node"],
    );
    assert!(
        err.contains("units: 9 int8, 0 int16, 0 int16 by the outlier check, 2 fp32 by the plan"),
        "{err}"
    );
    assert_eq!(op_of(&ir, "relu4"), "Conv");
    assert_eq!(op_of(&ir, "relu6_1"), "Conv");
    for v in ["relu5", "relu6_2", "bn3"] {
        assert_eq!(op_of(&ir, &format!("{v}_QuantizeLinear_Output")), "QConv");
    }
    // Every Conv of the model.
    let (ir, _) = quantize_mobile("exclude_conv", &["--exclude", "Conv"]);
    assert!(!ir.contains("QConv("), "{ir}");
    for v in ["relu4", "relu5", "relu6_1", "relu6_2", "bn3"] {
        assert_eq!(op_of(&ir, v), "Conv");
    }
    // The Gemm is not a Conv: it stays an integer product.
    assert!(ir.contains("QMatMul("), "{ir}");
}

#[test]
fn a_plan_sets_methods_and_weights_per_op_type_and_node() {
    let plan = temp_arg("methods.toml");
    std::fs::write(
        &plan,
        "[default]\nmethod = \"mse\"\n[op_types.Gemm]\nweights = \"per-tensor\"\n[nodes.relu4_node]\nprecision = \"fp32\"\n",
    )
    .unwrap();
    let (ir, _) = quantize_mobile("methods", &["--plan", &plan]);
    let (mse, _) = quantize_mobile("mse", &["--method", "mse", "--exclude", "relu4_node"]);
    assert_ne!(ir, mse, "per-tensor Gemm weights change the graph");
    // The Gemm's accumulator has one scale per column with per-channel weights, one with
    // per-tensor weights.
    let product = |ir: &str| {
        ir.lines()
            .find(|l| l.contains(" = QMatMul("))
            .expect("the Gemm, lowered")
            .to_string()
    };
    assert!(
        !product(&ir).contains("axis="),
        "per-tensor: {}",
        product(&ir)
    );
    assert!(
        product(&mse).contains("axis=1"),
        "per-channel: {}",
        product(&mse)
    );
    assert_eq!(op_of(&ir, "relu4"), "Conv");
}

#[test]
fn a_bad_plan_exits_1_naming_the_file_and_entry() {
    let calib = model("digits_calib_x.npy");
    let m = model("digits_mobile.onnx");
    let out = temp_arg("bad.onnx");
    let cases = [
        (
            "[nodes.relu_4]\nprecision = \"fp32\"\n",
            "entry nodes.\"relu_4\": the model has no node `relu_4`; did you mean `relu4_node`",
        ),
        (
            "[op_types.Conv]\nprecision = \"int2\"\n",
            "entry op_types.\"Conv\": unknown precision `int2`; expected fp32, int8, int16, int16-result, int4",
        ),
        (
            "[op_types.LayerNormalization]\nprecision = \"fp32\"\n",
            "entry op_types.\"LayerNormalization\": the model has no LayerNormalization node",
        ),
        (
            "[op_types.BatchNormalization]\nprecision = \"fp32\"\n",
            "nodes were fused into other nodes or folded by the rewrites",
        ),
        (
            "[nodes.relu4_node]\nprecison = \"fp32\"\n",
            "unknown field `precison`",
        ),
        (
            "[nodes.relu4]\nexclude = true\n",
            "a value has that name: it is computed by node `relu4_node`",
        ),
        (
            "[nodes.stem_node]\nmethod = \"mse\"\n[nodes.relu6_1_node]\nmethod = \"entropy\"\n",
            "both name node `relu6_1_node`",
        ),
    ];
    for (i, (text, message)) in cases.iter().enumerate() {
        let plan = temp_arg(&format!("bad{i}.toml"));
        std::fs::write(&plan, text).unwrap();
        let o = qlift(&[
            "quantize", &m, "--calib", &calib, "-o", &out, "--plan", &plan,
        ]);
        assert_eq!(o.status.code(), Some(1), "{text}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("error: plan {plan}: ")) && err.contains(message),
            "{text}: {err}"
        );
        assert!(!std::path::Path::new(&out).exists());
    }
    let o = qlift(&[
        "quantize",
        &m,
        "--calib",
        &calib,
        "-o",
        &out,
        "--exclude",
        "relu_4_node",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("error: plan --exclude: entry nodes.\"relu_4_node\""),
        "{}",
        stderr(&o)
    );
    let o = qlift(&[
        "quantize",
        &m,
        "--calib",
        &calib,
        "-o",
        &out,
        "--plan",
        "/nonexistent.toml",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent.toml"), "{}", stderr(&o));
}

#[test]
fn an_emitted_plan_reproduces_the_quantization_bit_for_bit() {
    // An outlier check strict enough to keep layers float, so that the plan must record
    // them: at 40 dB some of digits_mobile's activations fail it.
    let plan = temp_arg("emitted.toml");
    let (first, err) = quantize_mobile(
        "first",
        &[
            "--min-sqnr",
            "40",
            "--outliers",
            "fp32",
            "--emit-plan",
            &plan,
        ],
    );
    let text = std::fs::read_to_string(&plan).unwrap();
    assert!(
        text.contains("kept float by the outlier check"),
        "{err}\n{text}"
    );
    assert!(text.contains("min_sqnr_db = 0.0"), "{text}");
    let (again, _) = quantize_mobile("again", &["--plan", &plan, "--min-sqnr", "0"]);
    assert_eq!(first, again, "the plan reproduces the lowered graph");
    let (without, _) = quantize_mobile("without", &["--min-sqnr", "0"]);
    assert_ne!(
        first, without,
        "the check changed the graph, and the plan carried it"
    );
    // The QDQ models are equal byte for byte too.
    assert_eq!(
        std::fs::read(temp_arg("first.onnx")).unwrap(),
        std::fs::read(temp_arg("again.onnx")).unwrap()
    );
    // JSON reads back the same.
    let json = temp_arg("emitted.json");
    quantize_mobile(
        "json",
        &[
            "--min-sqnr",
            "40",
            "--outliers",
            "fp32",
            "--emit-plan",
            &json,
        ],
    );
    let (from_json, _) = quantize_mobile("from_json", &["--plan", &json]);
    assert_eq!(first, from_json);
}

#[test]
fn outliers_go_to_int16_and_the_emitted_plan_says_so() {
    // At 40 dB some of digits_mobile's activations fail the check in 8 bits; in 16 bits
    // most hold, so their layers compute on i16 activations (the default, `--outliers
    // int16`) instead of staying float (`--outliers fp32`).
    let plan = temp_arg("outliers16.toml");
    let (ir, err) = quantize_mobile(
        "outliers16",
        &[
            "--min-sqnr",
            "40",
            "--emit-plan",
            &plan,
            "--plan",
            &empty_plan(),
        ],
    );
    let units = err
        .lines()
        .find(|l| l.starts_with("units: "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(!units.contains(" 0 int16 by the outlier check"), "{units}");
    assert!(ir.contains(": i16["), "no 16-bit activations:\n{ir}");
    let text = std::fs::read_to_string(&plan).unwrap();
    assert!(text.contains("int16 by the outlier check"), "{text}");
    assert!(text.contains("outliers = \"int16\""), "{text}");
    // The plan reproduces it, whatever --outliers says.
    let (again, _) = quantize_mobile("outliers16_again", &["--plan", &plan, "--outliers", "fp32"]);
    assert_eq!(ir, again);
    // The old behaviour: the same layers float.
    let (float, err) = quantize_mobile(
        "outliers32",
        &[
            "--min-sqnr",
            "40",
            "--outliers",
            "fp32",
            "--plan",
            &empty_plan(),
        ],
    );
    assert!(!float.contains(": i16["), "{float}");
    assert!(err.contains(" 0 int16 by the outlier check"), "{err}");
}

/// A plan that sets nothing (so that the units line is printed).
fn empty_plan() -> String {
    let path = temp_arg("empty.toml");
    std::fs::write(&path, "version = 1\n").unwrap();
    path
}

#[test]
fn target_sqnr_raises_layers_until_the_output_meets_it() {
    // digits_mobile keeps 32.8 dB at its output in int8; 38 dB needs some layers in fp32.
    let plan = temp_arg("target.toml");
    let (ir, err) = quantize_mobile("target", &["--target-sqnr", "38", "--emit-plan", &plan]);
    let line = err
        .lines()
        .find(|l| l.starts_with("--target-sqnr 38: "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("(reached)"), "{line}");
    let reached: f64 = line
        .split(" dB → ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(reached >= 38.0, "{line}");
    let text = std::fs::read_to_string(&plan).unwrap();
    let raised = text.matches("raised by --target-sqnr 38").count();
    assert!((1..10).contains(&raised), "{raised} raised:\n{text}");
    assert!(ir.contains("QConv("), "some layers stay int8");
    // Its plan reproduces it.
    let (again, _) = quantize_mobile("target_again", &["--plan", &plan]);
    assert_eq!(ir, again);
}

/// A search that raises layers to int16 as well as fp32 (digits_mobile at 42 dB: int8 keeps
/// 32.8 dB) writes a plan with both, and `qlift run --plan` with it gives the searched
/// model's outputs bit for bit on the test set.
#[test]
fn a_target_sqnr_plan_with_int16_layers_reproduces_the_outputs() {
    let plan = temp_arg("target_int16.toml");
    let (calib, x) = (model("digits_calib_x.npy"), model("digits_test_x.npy"));
    let mobile = model("digits_mobile.onnx");
    let run = |tag: &str, extra: &[&str]| {
        let y = temp_arg(&format!("{tag}.npy"));
        let args = [
            &[
                "run", &*mobile, "--calib", &*calib, "--input", &*x, "--output", &*y,
            ],
            extra,
        ]
        .concat();
        let o = qlift(&args);
        assert!(o.status.success(), "qlift {args:?}: {}", stderr(&o));
        (std::fs::read(&y).unwrap(), stderr(&o))
    };
    let (searched, err) = run("searched", &["--target-sqnr", "42", "--emit-plan", &plan]);
    let line = err
        .lines()
        .find(|l| l.starts_with("--target-sqnr 42: "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("(reached)"), "{line}");
    let text = std::fs::read_to_string(&plan).unwrap();
    assert!(text.contains("precision = \"int16\""), "{text}");
    assert!(text.contains("precision = \"fp32\""), "{text}");
    let (planned, err) = run("planned", &["--plan", &plan]);
    assert!(err.contains(" int16, "), "{err}");
    assert_eq!(searched, planned, "the plan reproduces the outputs");
    let (int8, _) = run("int8", &[]);
    assert_ne!(searched, int8, "the raised layers changed the outputs");
}

/// `--max-drop PP --calib-labels`: W4A8 per-tensor digits_mobile loses a fifth of its top-1
/// on the labelled samples; the search raises layers until it is within 1 point of fp32's,
/// and says so. Labels that do not cover the samples, or a missing label file, are errors.
#[test]
fn max_drop_raises_layers_until_top1_is_within_the_drop() {
    let (x, y) = (model("digits_test_x.npy"), model("digits_test_y.npy"));
    let (onnx, plan) = (temp_arg("max_drop.onnx"), temp_arg("max_drop.toml"));
    let mobile = model("digits_mobile.onnx");
    let base = [
        "quantize",
        &*mobile,
        "--calib",
        &*x,
        "--weight-bits",
        "4",
        "--weights",
        "per-tensor",
        "-o",
        &*onnx,
    ];
    let o = qlift(
        &[
            &base[..],
            &[
                "--max-drop",
                "1",
                "--calib-labels",
                &y,
                "--emit-plan",
                &plan,
            ],
        ]
        .concat(),
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("--max-drop: top-1 on the calibration samples"))
        .unwrap_or_else(|| panic!("no accuracy note: {err}"));
    // "... 79.69% → 100.00% (fp32 100.00%)"
    let numbers: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches([')', '%']).parse().ok())
        .collect();
    let [before, after, fp32] = numbers[numbers.len() - 3..] else {
        panic!("{line}")
    };
    assert!(
        before < fp32 - 1.0,
        "the drop must need fixing here: {line}"
    );
    assert!(after >= fp32 - 1.0, "{line}");
    assert!(
        err.contains("(reached)") && err.contains("raised:"),
        "{err}"
    );
    assert!(std::fs::read_to_string(&plan)
        .unwrap()
        .contains("raised by --max-drop 1"));
    // Without labels: a usage error (exit 1, as every bad input); too few labels: bad input
    // naming the flag.
    let o = qlift(&[&base[..], &["--max-drop", "1"]].concat());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--calib-labels"), "{}", stderr(&o));
    // Ten labels (.npy, little-endian i64) for the 64 samples measured.
    let few = temp_arg("few_labels.npy");
    let header = "{'descr': '<i8', 'fortran_order': False, 'shape': (10,), }";
    let padded = format!("{header:<117}\n");
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
    bytes.extend_from_slice(padded.as_bytes());
    bytes.extend((0..10i64).flat_map(|v| v.to_le_bytes()));
    std::fs::write(&few, bytes).unwrap();
    let o = qlift(&[&base[..], &["--max-drop", "1", "--calib-labels", &few]].concat());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("10 labels for 64 calibration samples"),
        "{}",
        stderr(&o)
    );
}
