//! The C and C++ examples (`capi/examples/`) built against the C API with the system's `cc`
//! and `c++`, under AddressSanitizer and UndefinedBehaviorSanitizer (with LeakSanitizer)
//! when the compiler supports them, run on the bundled digits CNN: their logits equal the
//! CLI's (`qlift run ... --output`) byte for byte and the sanitizers report nothing.
//!
//! The C example links the static library, the C++ one the shared library. Set
//! `QLIFT_REQUIRE_SANITIZERS=1` to fail instead of building without sanitizers when the
//! compiler lacks them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `target/<profile>`, where cargo puts `libqlift_capi.{a,so}`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

fn capi_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn models_dir() -> PathBuf {
    capi_dir().join("../examples/models")
}

fn work_dir() -> PathBuf {
    let dir = target_dir().join("capi-examples");
    std::fs::create_dir_all(&dir).expect("creating target/<profile>/capi-examples");
    dir
}

const SANITIZERS: &str = "-fsanitize=address,undefined";

/// Whether `compiler` builds and runs a program with ASan and UBSan here.
fn has_sanitizers(compiler: &str, source: &str) -> bool {
    let dir = work_dir();
    let src = dir.join(source);
    let exe = dir.join(format!("{source}.probe"));
    std::fs::write(&src, "int main(void) { return 0; }\n").expect("writing the probe");
    let built = Command::new(compiler)
        .arg(SANITIZERS)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .is_ok_and(|s| s.success());
    let ran = built && Command::new(&exe).status().is_ok_and(|s| s.success());
    if !ran && std::env::var_os("QLIFT_REQUIRE_SANITIZERS").is_some() {
        panic!(
            "{compiler} cannot build and run with {SANITIZERS} and QLIFT_REQUIRE_SANITIZERS is set"
        );
    }
    ran
}

/// Builds an example; returns the executable and whether it is sanitized.
fn build(
    compiler: &str,
    probe: &str,
    source: &str,
    exe: &str,
    extra: &[&str],
    link: &[String],
) -> (PathBuf, bool) {
    let sanitized = has_sanitizers(compiler, probe);
    let out = work_dir().join(exe);
    let mut cmd = Command::new(compiler);
    cmd.args([
        "-O1",
        "-g",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-fno-omit-frame-pointer",
    ])
    .args(extra);
    if sanitized {
        cmd.arg(SANITIZERS);
    }
    cmd.arg("-I")
        .arg(capi_dir().join("include"))
        .arg(capi_dir().join("examples").join(source))
        .args(link)
        .arg("-o")
        .arg(&out);
    let result = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(
        result.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    (out, sanitized)
}

/// The logits `qlift run` writes for the quantized CNN on the test set (the CLI's own code,
/// in process).
fn cli_logits() -> &'static [u8] {
    static LOGITS: OnceLock<Vec<u8>> = OnceLock::new();
    LOGITS.get_or_init(|| {
        let m = models_dir();
        let out = work_dir().join("cli_logits.npy");
        let args = [
            "qlift".into(),
            "run".into(),
            m.join("digits_cnn.onnx").into_os_string(),
            "--calib".into(),
            m.join("digits_calib_x.npy").into_os_string(),
            "--input".into(),
            m.join("digits_test_x.npy").into_os_string(),
            "--output".into(),
            out.clone().into_os_string(),
        ];
        assert_eq!(qlift::cli::main_with(args), 0, "qlift run failed");
        std::fs::read(&out).expect("the CLI's logits")
    })
}

/// Runs an example and checks its logits, its accuracy line and the sanitizers' silence.
fn run_and_check(exe: &Path, sanitized: bool, extra_args: &[&str]) -> String {
    let logits = exe.with_extension("logits.npy");
    let _ = std::fs::remove_file(&logits);
    let mut cmd = Command::new(exe);
    cmd.arg(models_dir()).arg(&logits).args(extra_args);
    // Any finding fails the run; leaks are checked at exit.
    cmd.env(
        "ASAN_OPTIONS",
        "detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=23",
    )
    .env(
        "UBSAN_OPTIONS",
        "halt_on_error=1:print_stacktrace=1:exitcode=24",
    )
    .env("LSAN_OPTIONS", "exitcode=25");
    let result = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(
        result.status.success(),
        "{} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        exe.display(),
        result.status
    );
    for finding in [
        "AddressSanitizer",
        "LeakSanitizer",
        "runtime error:",
        "UndefinedBehaviorSanitizer",
    ] {
        assert!(
            !stderr.contains(finding),
            "{} reports {finding}:\n{stderr}",
            exe.display()
        );
    }
    let got = std::fs::read(&logits).expect("the example's logits");
    assert!(
        got == cli_logits(),
        "{}: logits differ from `qlift run --output` ({} bytes against {})",
        exe.display(),
        got.len(),
        cli_logits().len()
    );
    // The quantized CNN's accuracy on the test set (MODELS.md: 99.07% in fp32 and with ORT).
    let line = stdout
        .lines()
        .find(|l| l.starts_with("accuracy: "))
        .unwrap_or_else(|| panic!("no accuracy line:\n{stdout}"));
    let percent: f64 = line["accuracy: ".len()..]
        .split('%')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a percentage");
    assert!(percent > 97.0, "{line}");
    eprintln!(
        "{} ({}): {line}",
        exe.display(),
        if sanitized {
            "ASan+UBSan"
        } else {
            "no sanitizers"
        }
    );
    stdout
}

/// `target/<profile>` with `libqlift_capi.{a,so}` in it: `cargo test` builds the crate
/// for its tests, not its C libraries, so on a clean tree they are built here (same cargo,
/// same profile; cargo does not hold its lock while tests run).
fn library_dir() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(capi_dir())
            .args(["build", "--locked", "-p", "qlift-capi", "--lib"]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        assert!(status.success(), "{cmd:?} failed");
    });
    target_dir()
}

/// What the static library needs from the system on Linux (`--print native-static-libs`).
fn static_libs() -> Vec<String> {
    let lib = library_dir().join("libqlift_capi.a");
    assert!(
        lib.exists(),
        "{} is missing (cargo builds it with the crate)",
        lib.display()
    );
    let mut args = vec![lib.display().to_string()];
    args.extend(
        [
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ]
        .map(String::from),
    );
    args
}

#[test]
fn c_example_matches_the_cli_bit_for_bit_under_sanitizers() {
    let (exe, sanitized) = build(
        "cc",
        "probe.c",
        "digits.c",
        "digits_c",
        &["-std=c11"],
        &static_libs(),
    );
    let stdout = run_and_check(&exe, sanitized, &[]);
    // The batch is symbolic (-1); dtype 1 is QLIFT_DTYPE_F32.
    assert!(
        stdout.contains(": dtype 1, shape [-1, 1, 8, 8]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("wrong input: bad input: input `"),
        "{stdout}"
    );
    assert!(
        stdout.contains("null model: invalid argument: model is NULL"),
        "{stdout}"
    );
}

#[test]
fn cpp_example_with_threads_matches_the_cli_bit_for_bit_under_sanitizers() {
    let dir = library_dir();
    let link = vec![
        format!("-L{}", dir.display()),
        "-lqlift_capi".to_string(),
        format!("-Wl,-rpath,{}", dir.display()),
        "-pthread".to_string(),
    ];
    let (exe, sanitized) = build(
        "c++",
        "probe.cpp",
        "digits_threads.cpp",
        "digits_cpp",
        &["-std=c++17"],
        &link,
    );
    for threads in ["1", "4", "7"] {
        let stdout = run_and_check(&exe, sanitized, &[threads]);
        assert!(stdout.contains(&format!("threads: {threads}")), "{stdout}");
        assert!(
            stdout.contains("missing model: qlift_compile_file (bad model): "),
            "{stdout}"
        );
        assert!(stdout.contains("no_such_model.onnx"), "{stdout}");
    }
}

/// The sanitizers' silence above means something: a program that forgets `qlift_model_free`
/// is reported by LeakSanitizer (skipped without sanitizers).
#[test]
fn leak_sanitizer_sees_a_model_that_is_not_freed() {
    if !has_sanitizers("cc", "probe_leak.c") {
        eprintln!("skipped: cc has no {SANITIZERS}");
        return;
    }
    let dir = work_dir();
    let src = dir.join("leaky.c");
    let program = r#"#include "qlift.h"
#include <stdio.h>
int main(int argc, char **argv) {
    (void)argc;
    QliftModel *model = NULL;
    if (qlift_compile_file(argv[1], NULL, 0, NULL, &model) != QLIFT_STATUS_OK) {
        fprintf(stderr, "%s\n", qlift_last_error());
        return 1;
    }
    /* The only pointer to the model is dropped (LSan scans what is still reachable). */
    *(QliftModel *volatile *)&model = NULL;
    return 0;
}
"#;
    std::fs::write(&src, program).expect("writing leaky.c");
    let exe = dir.join("leaky");
    let mut cmd = Command::new("cc");
    cmd.arg(SANITIZERS)
        .arg("-I")
        .arg(capi_dir().join("include"))
        .arg(&src)
        .args(static_libs())
        .arg("-o")
        .arg(&exe);
    let built = cmd.output().expect("running cc");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&exe)
        .arg(models_dir().join("digits_mlp.onnx"))
        .env("ASAN_OPTIONS", "detect_leaks=1")
        .output()
        .expect("running leaky");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains("LeakSanitizer: detected memory leaks"),
        "no leak reported:\n{stderr}"
    );
}

/// README.md's C quickstart, built as the README says (against the static library, under
/// the sanitizers when present) and run from the repository root.
#[test]
fn readme_c_quickstart_builds_and_runs() {
    let readme = std::fs::read_to_string(capi_dir().join("../README.md")).expect("README.md");
    let start = readme
        .find("<!-- c-quickstart")
        .expect("the C quickstart marker in README.md");
    let block = readme[start..]
        .split("```c\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a ```c block after the marker");
    let src = work_dir().join("quickstart.c");
    std::fs::write(&src, block).expect("writing quickstart.c");
    let sanitized = has_sanitizers("cc", "probe_quickstart.c");
    let exe = work_dir().join("quickstart");
    let mut cmd = Command::new("cc");
    cmd.args(["-Wall", "-Wextra", "-Werror", "-g"]);
    if sanitized {
        cmd.arg(SANITIZERS);
    }
    cmd.arg("-I")
        .arg(capi_dir().join("include"))
        .arg(&src)
        .args(static_libs())
        .arg("-o")
        .arg(&exe);
    let built = cmd.output().expect("running cc");
    assert!(
        built.status.success(),
        "{cmd:?}:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&exe)
        .current_dir(capi_dir().join(".."))
        .env("ASAN_OPTIONS", "detect_leaks=1")
        .output()
        .expect("running quickstart");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success() && stderr.is_empty(),
        "{}\n{stdout}\n{stderr}",
        run.status
    );
    // The int8 CNN classifies the first test sample as its label says.
    let labels = qlift::npy::read_npy(&models_dir().join("digits_test_y.npy"))
        .unwrap()
        .to_i64_vec()
        .unwrap();
    assert_eq!(
        stdout.trim(),
        format!("{} samples, the first is a {}", labels.len(), labels[0])
    );
}
