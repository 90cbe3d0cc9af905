//! Integration tests live in `tests/tests/`. The library holds what the fuzz targets
//! (`fuzz/fuzz_targets`) and the fuzz regression test share: one definition of what each
//! target does with its input, so that a crash input replays exactly.

/// The bundled digits models, their data and the measures quantization tests use.
pub mod digits;

/// What the host CPU runs, for tests that check which form a kernel took.
pub mod host {
    /// Whether the host has VNNI's `vpdpbusd` on 256-bit registers (AVX-VNNI, or AVX-512
    /// VNNI with VL): the wide micro-kernels then take u8×i8 quads (`wide-matmul-vnni`).
    pub fn has_vnni() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avxvnni")
                || (std::is_x86_feature_detected!("avx512vnni")
                    && std::is_x86_feature_detected!("avx512vl"))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// Deterministic test data.
pub mod samples {
    /// `n` values in [-1, 1) with a few exact zeros, the same for the same `seed`
    /// (xorshift: no dependency, and a failing case replays from its seed alone).
    pub fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }
}

/// The fuzz targets' bodies: each takes arbitrary bytes and must return (errors are values),
/// never panic — except on a broken invariant, which is the bug a fuzzer looks for.
pub mod fuzz {
    use qlift::{CompileOptions, CompiledModel, ImportOptions, Limits};
    use qlift_ir::Tensor;

    /// `load_onnx`: any bytes through the ONNX loader.
    pub fn load_onnx(data: &[u8]) {
        let _ = qlift::load_onnx_bytes(data, None, &ImportOptions::default());
    }

    /// `parse_ir`: any text through the IR parser and, when it parses and verifies, the
    /// printer: the printed graph must parse back to the same graph.
    pub fn parse_ir(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let Ok(graph) = qlift_ir::text::parse(text) else {
            return;
        };
        if qlift_ir::verify(&graph).is_ok() {
            let printed = qlift_ir::text::print(
                &graph,
                &qlift_ir::text::PrintOptions {
                    full_constants: true,
                    ..Default::default()
                },
            );
            let back = qlift_ir::text::parse(&printed).expect("a printed graph parses");
            assert!(back == graph, "print/parse round trip changed the graph");
        }
    }

    /// `read_npy`: any bytes through the `.npy` reader (with a 1 MiB data limit): an error
    /// or a tensor whose element count matches its shape, written back and read again to
    /// the same tensor.
    pub fn read_npy(data: &[u8]) {
        let Ok(t) = qlift::npy::read_npy_bytes(data, 1 << 20) else {
            return;
        };
        assert_eq!(
            t.len(),
            t.shape().iter().product::<usize>(),
            "element count and shape disagree"
        );
        let back = qlift::npy::read_npy_bytes(&qlift::npy::to_npy_bytes(&t), 1 << 20)
            .expect("a written .npy reads back");
        // NaN payloads compare unequal: compare the bits.
        assert!(
            back.shape() == t.shape() && back.data().as_bytes() == t.data().as_bytes(),
            "write/read round trip changed the tensor"
        );
    }

    /// `cli_args`: an argument vector for the `qlift` command line, built from the bytes (each
    /// byte picks a token: subcommands, flags, bundled models and data, numbers in and out of
    /// range, paths in a scratch directory, or a piece of the raw input), run in process. It
    /// must end with exit status 0 or 1: 2 is an internal error (a panic included).
    pub fn cli_args(data: &[u8]) {
        let args = cli_argv(data);
        let status = qlift::cli::main_with(&args);
        assert!(
            status <= 1,
            "qlift {args:?} exited with {status} (an internal error)"
        );
    }

    /// The argument vector `cli_args` runs for `data` (program name first).
    ///
    /// Nothing it names can be written outside a scratch directory: the bundled inputs are
    /// fresh copies in it (an output may overwrite a copy, never the original), raw pieces
    /// of the input cannot contain `/`, and the process works in the scratch directory.
    pub fn cli_argv(data: &[u8]) -> Vec<String> {
        let models = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/models");
        let scratch = std::env::temp_dir().join(format!("qlift-fuzz-cli-{}", std::process::id()));
        let inputs = scratch.join("inputs");
        let _ = std::fs::create_dir_all(scratch.join("dir"));
        let _ = std::fs::create_dir_all(&inputs);
        let _ = std::env::set_current_dir(&scratch);
        for f in [
            "digits_mlp.onnx",
            "digits_mlp.qdq.onnx",
            "digits_cnn.qop.onnx",
            "digits_test_x_flat.npy",
            "digits_calib_x_flat.npy",
            "digits_test_y.npy",
            "MODELS.md",
        ] {
            let _ = std::fs::copy(format!("{models}/{f}"), inputs.join(f));
        }
        let m = |f: &str| inputs.join(f).to_string_lossy().into_owned();
        let s = |f: &str| scratch.join(f).to_string_lossy().into_owned();
        let tokens: Vec<String> = vec![
            // Subcommands and top-level flags.
            "dump".into(),
            "run".into(),
            "quantize".into(),
            "report".into(),
            "bench".into(),
            "compile".into(),
            "--help".into(),
            "--version".into(),
            "help".into(),
            "frobnicate".into(),
            // Flags.
            "--input".into(),
            "-i".into(),
            "--output".into(),
            "-o".into(),
            "--calib".into(),
            "--method".into(),
            "--activations".into(),
            "--engine".into(),
            "--threads".into(),
            "--iters".into(),
            "--warmup".into(),
            "--callers".into(),
            "--json".into(),
            "--after".into(),
            "--print-after-all".into(),
            "--dump-dir".into(),
            "--timings".into(),
            "--full-constants".into(),
            "--format".into(),
            "--header".into(),
            "--name".into(),
            "--target".into(),
            "--labels".into(),
            "--compare".into(),
            "--qir".into(),
            "--no-vnni".into(),
            // Models and data (the small ones).
            m("digits_mlp.onnx"),
            m("digits_mlp.qdq.onnx"),
            m("digits_cnn.qop.onnx"),
            m("digits_test_x_flat.npy"),
            m("digits_calib_x_flat.npy"),
            m("digits_test_y.npy"),
            format!("input={}", m("digits_test_x_flat.npy")),
            format!("nope={}", m("digits_test_x_flat.npy")),
            m("MODELS.md"),
            "/dev/zero".into(),
            "/dev/null".into(),
            "/dev/full".into(),
            "no/such/file".into(),
            // Outputs, in the scratch directory.
            s("out.npy"),
            s("out.onnx"),
            s("out.qir"),
            s("out.o"),
            s("out.h"),
            s("dir"),
            s("dir/deeper/x"),
            "logits=".to_string() + &s("l.npy"),
            // Values.
            "0".into(),
            "1".into(),
            "2".into(),
            "-1".into(),
            "1025".into(),
            "1000001".into(),
            "18446744073709551615".into(),
            "1e3".into(),
            "abc".into(),
            "".into(),
            "minmax".into(),
            "percentile:99.9".into(),
            "percentile:nan".into(),
            "mse".into(),
            "entropy".into(),
            "u8".into(),
            "i8".into(),
            "jit".into(),
            "interp".into(),
            "text".into(),
            "dot".into(),
            "all".into(),
            "fold-bn".into(),
            "insert-qdq".into(),
            "x86_64-unknown-linux-gnu".into(),
            "aarch64-unknown-linux-gnu".into(),
            "not-a-triple".into(),
            "m".into(),
            "1x".into(),
        ];
        let mut args = vec!["qlift".to_string()];
        let mut bytes = data.iter();
        while let Some(&b) = bytes.next() {
            if args.len() > 24 {
                break;
            }
            match b as usize {
                // A raw piece of the input as one argument: the next byte is its length.
                255 => {
                    let n = bytes.next().map_or(0, |&n| n as usize % 32);
                    let piece: Vec<u8> = bytes.by_ref().take(n).copied().collect();
                    args.push(String::from_utf8_lossy(&piece).replace('/', "_"));
                }
                i => args.push(tokens[i % tokens.len()].clone()),
            }
        }
        args
    }

    /// `compile`: any bytes through import, rewrites and JIT compilation (with limits small
    /// enough for a fuzzer), then a run on zero inputs of the model's input shapes (batch 1)
    /// when they are small.
    pub fn compile(data: &[u8]) {
        let limits = Limits {
            max_model_bytes: 1 << 20,
            max_tensor_bytes: 1 << 20,
            max_total_bytes: 4 << 20,
            ..Limits::default()
        };
        let opts = CompileOptions {
            import: ImportOptions {
                limits,
                ..Default::default()
            },
            ..Default::default()
        };
        let Ok(model) = CompiledModel::from_onnx_bytes(data, None, &opts) else {
            return;
        };
        let inputs: Vec<Tensor> = model
            .inputs()
            .iter()
            .map(|(_, ty)| Tensor::zeros(ty.dtype, &ty.shape.resolve(1)))
            .collect();
        if inputs.iter().map(Tensor::len).sum::<usize>() <= 1 << 16 {
            let _ = model.run(&inputs);
        }
    }
}

/// Large graphs for the scaling tests (`tests/tests/large_graphs.rs`), written as IR text so
/// that they go through the same loading as a `.qir` file: parse, verify, limits.
pub mod graphs {
    use std::fmt::Write;

    /// `n` elementwise nodes in one dependency chain, `x: f32[N,4]` → Relu → Sigmoid →
    /// Relu → … → `y` (what a deep model looks like to the passes: nothing to rewrite, every
    /// node live).
    pub fn chain(n: usize) -> String {
        let mut text = String::from("graph chain(%x: f32[N,4]) -> (%y) {\n");
        let mut previous = "x".to_string();
        for i in 0..n {
            let name = if i + 1 == n {
                "y".to_string()
            } else {
                format!("v{i}")
            };
            let op = if i % 2 == 0 { "Relu" } else { "Sigmoid" };
            let _ = writeln!(text, "  %{name} = {op}(%{previous}) : f32[N,4] @n{i}");
            previous = name;
        }
        text.push_str("}\n");
        text
    }

    /// About `n` nodes in a wide DAG: 100 branches from `x: f32[N,4]`, each starting with an
    /// Add of its own constant (so that no two branches are the same term) and going on as
    /// a chain of Relu/Sigmoid/Mul-by-a-constant nodes, joined by a balanced tree of Adds
    /// into `y`. Many values are live at once, and every branch end waits for the tree.
    pub fn wide(n: usize) -> String {
        const BRANCHES: usize = 100;
        let depth = (n.saturating_sub(2 * BRANCHES) / BRANCHES).max(1);
        let mut text = String::from("graph wide(%x: f32[N,4]) -> (%y) {\n");
        let _ = writeln!(text, "  %half = const f32[4] [0.5, 0.25, 2.0, -1.0]");
        let mut node = 0;
        let mut ends = Vec::with_capacity(BRANCHES);
        for b in 0..BRANCHES {
            let _ = writeln!(text, "  %c{b} = const f32[4] [{b}.0, -{b}.5, 1.0, 0.125]");
            let _ = writeln!(text, "  %b{b}_0 = Add(%x, %c{b}) : f32[N,4] @n{node}");
            node += 1;
            for d in 1..=depth {
                let op = match (b + d) % 3 {
                    0 => "Relu(%b{b}_{p})".to_string(),
                    1 => "Sigmoid(%b{b}_{p})".to_string(),
                    _ => "Mul(%b{b}_{p}, %half)".to_string(),
                }
                .replace("{b}", &b.to_string())
                .replace("{p}", &(d - 1).to_string());
                let _ = writeln!(text, "  %b{b}_{d} = {op} : f32[N,4] @n{node}");
                node += 1;
            }
            ends.push(format!("b{b}_{depth}"));
        }
        while ends.len() > 1 {
            let mut next = Vec::with_capacity(ends.len().div_ceil(2));
            for pair in ends.chunks(2) {
                match pair {
                    [a, b] => {
                        let name = format!("s{node}");
                        let _ = writeln!(text, "  %{name} = Add(%{a}, %{b}) : f32[N,4] @n{node}");
                        node += 1;
                        next.push(name);
                    }
                    [a] => next.push(a.clone()),
                    _ => {}
                }
            }
            ends = next;
        }
        let _ = writeln!(text, "  %y = Relu(%{}) : f32[N,4] @n{node}", ends[0]);
        text.push_str("}\n");
        text
    }
}
