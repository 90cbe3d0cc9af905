//! Real trained models from `../shared/corpus` (fetched by `bash ../shared/corpus/fetch.sh
//! target/corpus`; CI does it, see `.ci/run`): magika (Google's file-type classifier, int32
//! byte features) and all-MiniLM-L6-v2 (sentence embeddings, two int64 inputs with a batch
//! and a sequence dimension). fp32 through the interpreter and the JIT against ONNX
//! Runtime's outputs; int8 with qlift's default quantization against fp32; one compiled
//! MiniLM serving several sequence lengths and batch sizes.
//!
//! Without the corpus (a plain `cargo test` before fetching it) every test says so and
//! passes; `QLIFT_REQUIRE_CORPUS=1` (set by CI) makes a missing corpus a failure. Run in
//! release: `cargo test --release -p qlift-tests --test corpus -- --nocapture`.

use qlift::npy::read_npy;
use qlift::{load_onnx, quantize, CompileOptions, CompiledModel, ImportOptions, QuantizeOptions};
use qlift_ir::{Graph, Tensor};
use qlift_passes::PipelineOptions;
use std::path::PathBuf;

/// The corpus folder, or `None` (with a note) when it has not been fetched.
fn corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("QLIFT_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/corpus"));
    if dir.join("reference.json").exists() {
        return Some(dir);
    }
    if std::env::var_os("QLIFT_REQUIRE_CORPUS").is_some() {
        panic!(
            "the corpus is not at {} (bash ../shared/corpus/fetch.sh target/corpus)",
            dir.display()
        );
    }
    eprintln!("corpus not fetched ({}): skipped; fetch it with `bash ../shared/corpus/fetch.sh target/corpus`", dir.display());
    None
}

fn npy(dir: &PathBuf, file: &str) -> Tensor {
    read_npy(&dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn load(dir: &PathBuf, file: &str) -> Graph {
    load_onnx(&dir.join(file), &ImportOptions::default()).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Largest |got − want| relative to the reference's range (max − min).
fn error_to_range(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let (g, w) = (got.to_f32_vec(), want.to_f32_vec());
    let (lo, hi) = w
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let range = (hi - lo).max(f32::MIN_POSITIVE) as f64;
    g.iter()
        .zip(&w)
        .map(|(&a, &b)| (a as f64 - b as f64).abs())
        .fold(0.0, f64::max)
        / range
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let n = t.shape()[0];
    let v = t.to_f32_vec();
    v.chunks(v.len() / n).map(<[f32]>::to_vec).collect()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |b, (i, &v)| if v > row[b] { i } else { b })
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-30)
}

/// Mean and smallest cosine between the rows of `a` and of `b`.
fn row_cosines(a: &Tensor, b: &Tensor) -> (f64, f64) {
    let cos: Vec<f64> = rows(a)
        .iter()
        .zip(rows(b))
        .map(|(x, y)| cosine(x, &y))
        .collect();
    let mean = cos.iter().sum::<f64>() / cos.len() as f64;
    let min = cos.iter().copied().fold(f64::INFINITY, f64::min);
    (mean, min)
}

/// Samples `start..end` of every tensor.
fn slice(ts: &[Tensor], start: usize, end: usize) -> Vec<Tensor> {
    ts.iter()
        .map(|t| t.slice_outer(start, end).unwrap())
        .collect()
}

#[test]
fn magika_fp32_matches_onnx_runtime() {
    let Some(dir) = corpus() else { return };
    let g = load(&dir, "magika.onnx");
    let x = npy(&dir, "magika_test.npy");
    let want = npy(&dir, "magika_test_fp32_target_label.npy");
    // The interpreter (the oracle) on a slice, the JIT on the whole test set.
    let interp = qlift_ir::interp::run(&g, &slice(std::slice::from_ref(&x), 0, 16)).unwrap();
    let e = error_to_range(&interp[0], &want.slice_outer(0, 16).unwrap());
    eprintln!("magika fp32 interpreter: max error {e:.2e} of the output range");
    assert!(e <= 1e-4, "{e}");
    let model = CompiledModel::from_graph(&g, None, &CompileOptions::default()).unwrap();
    let jit = model.run(std::slice::from_ref(&x)).unwrap();
    let e = error_to_range(&jit[0], &want);
    eprintln!("magika fp32 JIT: max error {e:.2e} of the output range");
    assert!(e <= 1e-4, "{e}");
}

#[test]
fn magika_int8_agrees_with_fp32() {
    let Some(dir) = corpus() else { return };
    let g = load(&dir, "magika.onnx");
    let calib = npy(&dir, "magika_calib.npy");
    let q = quantize(
        &g,
        &[calib],
        &QuantizeOptions::default(),
        &PipelineOptions::default(),
        &|_, _| {},
    )
    .unwrap();
    // Not a float model in disguise: its dense layers compute in integers.
    let integer = integer_products(&q.lowered);
    eprintln!("magika int8: {integer} integer products");
    assert!(integer >= 1, "{integer}");
    let x = npy(&dir, "magika_test.npy");
    let fp32 = npy(&dir, "magika_test_fp32_target_label.npy");
    let model = CompiledModel::from_lowered(q.lowered, true, &CompileOptions::default()).unwrap();
    let int8 = model.run(std::slice::from_ref(&x)).unwrap();
    let (a, b) = (rows(&int8[0]), rows(&fp32));
    let agree = a
        .iter()
        .zip(&b)
        .filter(|(p, q)| argmax(p) == argmax(q))
        .count();
    let fraction = agree as f64 / a.len() as f64;
    eprintln!(
        "magika int8: top-1 agreement with fp32 {:.1}% ({agree}/{})",
        100.0 * fraction,
        a.len()
    );
    assert!(fraction >= 0.99, "{fraction}");
}

/// Integer matrix products and convolutions in a lowered graph.
fn integer_products(g: &Graph) -> usize {
    use qlift_ir::OpKind::*;
    g.node_ids()
        .filter(|&id| matches!(g.node(id).op.kind(), Some(QMatMul | QConv)))
        .count()
}

fn minilm_inputs(dir: &PathBuf, set: &str) -> Vec<Tensor> {
    vec![
        npy(dir, &format!("minilm_{set}_ids.npy")),
        npy(dir, &format!("minilm_{set}_mask.npy")),
    ]
}

#[test]
fn minilm_fp32_matches_onnx_runtime() {
    let Some(dir) = corpus() else { return };
    let g = load(&dir, "minilm.onnx");
    let inputs = minilm_inputs(&dir, "test");
    let hidden = npy(&dir, "minilm_test_fp32_last_hidden_state.npy");
    let embedding = npy(&dir, "minilm_test_fp32_sentence_embedding.npy");
    let interp = qlift_ir::interp::run(&g, &slice(&inputs, 0, 4)).unwrap();
    for (got, want, what) in [
        (&interp[0], &hidden, "last_hidden_state"),
        (&interp[1], &embedding, "sentence_embedding"),
    ] {
        let e = error_to_range(got, &want.slice_outer(0, 4).unwrap());
        eprintln!("minilm fp32 interpreter {what}: max error {e:.2e} of the output range");
        assert!(e <= 1e-4, "{what}: {e}");
    }
    let model = CompiledModel::from_graph(&g, None, &CompileOptions::default()).unwrap();
    let jit = model.run(&inputs).unwrap();
    for (got, want, what) in [
        (&jit[0], &hidden, "last_hidden_state"),
        (&jit[1], &embedding, "sentence_embedding"),
    ] {
        let e = error_to_range(got, want);
        eprintln!("minilm fp32 JIT {what}: max error {e:.2e} of the output range");
        assert!(e <= 1e-4, "{what}: {e}");
    }
}

#[test]
fn minilm_int8_embeddings_stay_close_to_fp32() {
    let Some(dir) = corpus() else { return };
    let g = load(&dir, "minilm.onnx");
    let q = quantize(
        &g,
        &minilm_inputs(&dir, "calib"),
        &QuantizeOptions::default(),
        &PipelineOptions::default(),
        &|_, _| {},
    )
    .unwrap();
    // Most of its 36 Linear layers compute in integers (those whose activations have
    // outliers stay float: the policy in qlift_passes::quantize).
    let integer = integer_products(&q.lowered);
    eprintln!("minilm int8: {integer} of 36 Linear layers in integers");
    assert!(integer >= 24, "{integer}");
    // The plan it used (`--emit-plan`) names the layers the outlier check kept float or
    // raised to int16 and turns the check off: applied with no check at all, it gives the
    // same graph bit for bit.
    let kept = q
        .plan
        .nodes
        .values()
        .filter(|e| {
            e.note
                .as_deref()
                .is_some_and(|n| n.starts_with("kept float") || n.starts_with("int16"))
        })
        .count();
    assert!(
        kept >= 6,
        "{kept} layers kept float or int16:\n{}",
        q.plan.to_toml()
    );
    let no_check = QuantizeOptions {
        min_sqnr_db: 0.0,
        ..QuantizeOptions::default()
    };
    let plan = qlift::QuantPlan::parse(&q.plan.to_toml()).unwrap();
    let again = qlift::quantize::requantize(
        &g,
        &q.calibration,
        &no_check,
        &plan,
        &PipelineOptions::default(),
    )
    .unwrap();
    let text = |g: &Graph| {
        qlift_ir::text::print(
            g,
            &qlift_ir::text::PrintOptions {
                full_constants: true,
                ..Default::default()
            },
        )
    };
    assert!(
        text(&again.lowered) == text(&q.lowered),
        "the emitted plan reproduces MiniLM"
    );
    let unplanned = qlift::quantize::requantize(
        &g,
        &q.calibration,
        &no_check,
        &qlift::QuantPlan::default(),
        &PipelineOptions::default(),
    )
    .unwrap();
    assert!(text(&unplanned.lowered) != text(&q.lowered));
    eprintln!("minilm: the emitted plan ({kept} layers kept float or int16 by the check) reproduces the lowered graph");
    let model = CompiledModel::from_lowered(q.lowered, true, &CompileOptions::default()).unwrap();
    let int8 = model.run(&minilm_inputs(&dir, "test")).unwrap();
    let fp32 = npy(&dir, "minilm_test_fp32_sentence_embedding.npy");
    let (mean, min) = row_cosines(&int8[1], &fp32);
    eprintln!("minilm int8: sentence embedding cosine to fp32 mean {mean:.4}, min {min:.4}");
    assert!(mean >= 0.99, "mean cosine {mean}");
}

/// QMatMuls of `g` by the width of their activation operand: (8-bit, 16-bit).
fn product_widths(g: &Graph) -> (usize, usize) {
    let wide =
        |id| g.node_inputs(id)[0].is_some_and(|x| g.value_type(x).dtype == qlift_ir::DType::I16);
    let products: Vec<_> = g
        .node_ids()
        .filter(|&id| g.node(id).op.kind() == Some(qlift_ir::OpKind::QMatMul))
        .collect();
    let sixteen = products.iter().filter(|&&id| wide(id)).count();
    (products.len() - sixteen, sixteen)
}

/// Sentence-embedding cosines to fp32 of MiniLM quantized with `opts`: (mean, min), and
/// its products' widths.
fn minilm_cosines(
    dir: &PathBuf,
    g: &Graph,
    opts: &QuantizeOptions,
) -> ((f64, f64), (usize, usize)) {
    let q = quantize(
        g,
        &minilm_inputs(dir, "calib"),
        opts,
        &PipelineOptions::default(),
        &|_, _| {},
    )
    .unwrap();
    for note in &q.ptq_notes {
        eprintln!("{note}");
    }
    let widths = product_widths(&q.lowered);
    let model = CompiledModel::from_lowered(q.lowered, true, &CompileOptions::default()).unwrap();
    let out = model.run(&minilm_inputs(dir, "test")).unwrap();
    let fp32 = npy(dir, "minilm_test_fp32_sentence_embedding.npy");
    (row_cosines(&out[1], &fp32), widths)
}

/// SmoothQuant (`--smooth`) moves FFN products whose inputs (LayerNorm and GELU outputs)
/// have outlier channels from 16-bit to 8-bit activations, and the embeddings stay close.
#[test]
fn minilm_smooth_moves_products_to_8_bits() {
    let Some(dir) = corpus() else { return };
    let g = load(&dir, "minilm.onnx");
    let (plain, before) = minilm_cosines(&dir, &g, &QuantizeOptions::default());
    // The paper's α: the four FFN up-projections move to 8 bits (α = 0.8 moves the
    // down-projections' inputs too, see qlift_passes::quantize::smooth).
    let alpha = qlift_passes::quantize::smooth::DEFAULT_ALPHA;
    let smoothed = QuantizeOptions {
        ptq: qlift::PtqOptions {
            smooth: Some(alpha),
            ..Default::default()
        },
        ..QuantizeOptions::default()
    };
    let (cos, after) = minilm_cosines(&dir, &g, &smoothed);
    eprintln!(
        "minilm products 8/16-bit: {}/{} plain (cosine mean {:.4}, min {:.4}), {}/{} smoothed α={alpha} (cosine mean {:.4}, min {:.4})",
        before.0, before.1, plain.0, plain.1, after.0, after.1, cos.0, cos.1
    );
    assert!(after.1 < before.1, "{before:?} -> {after:?}");
    assert!(cos.0 >= 0.99, "mean cosine {}", cos.0);
}

/// Inputs of `seq` tokens for `batch` sentences: the test sentences cut or padded (token 0,
/// mask 0) to that length.
fn minilm_at(dir: &PathBuf, seq: usize, batch: usize) -> Vec<Tensor> {
    minilm_inputs(dir, "test")
        .into_iter()
        .map(|t| {
            let v = t.to_i64_vec().unwrap();
            let len = t.shape()[1];
            let data: Vec<i64> = (0..batch)
                .flat_map(|b| (0..seq).map(move |s| (b, s)))
                .map(|(b, s)| if s < len { v[b * len + s] } else { 0 })
                .collect();
            Tensor::from_i64(&[batch, seq], data)
        })
        .collect()
}

#[test]
fn minilm_compiled_once_serves_every_sequence_length_and_batch() {
    let Some(dir) = corpus() else { return };
    let g = load(&dir, "minilm.onnx");
    let model = CompiledModel::from_graph(&g, None, &CompileOptions::default()).unwrap();
    for seq in [8, 32, 128] {
        for batch in [1, 3, 8] {
            let inputs = minilm_at(&dir, seq, batch);
            let got = model.run(&inputs).unwrap();
            let fresh = CompiledModel::from_graph(&g, None, &CompileOptions::default())
                .unwrap()
                .run(&inputs)
                .unwrap();
            assert_eq!(got, fresh, "seq {seq}, batch {batch}");
            assert_eq!(got[0].shape(), &[batch, seq, 384]);
        }
    }
    eprintln!(
        "minilm: one compiled model, {} specializations cached",
        model.specializations()
    );
}

/// The QDQ model of a mixed-precision plan (magika's Convs fp32, the rest int8), exported to
/// ONNX, runs in ONNX Runtime (the corpus venv's 1.32) with the accuracy it has in qlift:
/// the same top-1 agreement with fp32 to within one test file, and the same label as qlift
/// on at least 99% of them.
#[test]
fn mixed_precision_export_runs_in_onnx_runtime() {
    let Some(dir) = corpus() else { return };
    let python = dir.join("venv/bin/python");
    let plan = qlift::QuantPlan::parse("[op_types.Conv]\nprecision = \"fp32\"\n").unwrap();
    let q = qlift::quantize::quantize_limited_planned(
        &load(&dir, "magika.onnx"),
        &[npy(&dir, "magika_calib.npy")],
        &QuantizeOptions::default(),
        &plan,
        &PipelineOptions::default(),
        &qlift::Limits::default(),
        &|_, _| {},
    )
    .unwrap();
    let float_units = q
        .decisions
        .iter()
        .filter(|d| d.outcome == qlift_passes::quantize::Outcome::Fp32ByPlan)
        .count();
    assert!(float_units >= 1 && integer_products(&q.lowered) >= 1);
    let out = std::env::temp_dir().join(format!("qlift-mixed-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let model = out.join("magika.mixed.qdq.onnx");
    std::fs::write(&model, qlift::export_onnx(&q.qdq).unwrap()).unwrap();
    let labels = out.join("ort.npy");
    let script = "import sys, numpy as np, onnxruntime as ort\n\
        s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n\
        x = np.load(sys.argv[2])\n\
        np.save(sys.argv[3], s.run(None, {s.get_inputs()[0].name: x})[0].astype(np.float32))\n";
    let status = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(&model)
        .arg(dir.join("magika_test.npy"))
        .arg(&labels)
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    assert!(status.success(), "ONNX Runtime refused the export");
    let ort = rows(&read_npy(&labels).unwrap());
    std::fs::remove_dir_all(&out).ok();
    let x = npy(&dir, "magika_test.npy");
    let qlift = CompiledModel::from_lowered(q.lowered, true, &CompileOptions::default())
        .unwrap()
        .run(std::slice::from_ref(&x))
        .unwrap();
    let (qlift, fp32) = (
        rows(&qlift[0]),
        rows(&npy(&dir, "magika_test_fp32_target_label.npy")),
    );
    let agree = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        a.iter()
            .zip(b)
            .filter(|(p, q)| argmax(p) == argmax(q))
            .count()
    };
    let (n, by_qlift, by_ort, both) = (
        fp32.len(),
        agree(&qlift, &fp32),
        agree(&ort, &fp32),
        agree(&qlift, &ort),
    );
    eprintln!("magika, Convs fp32 ({float_units} float units): top-1 agreement with fp32 qlift {by_qlift}/{n}, ONNX Runtime {by_ort}/{n}; qlift = ONNX Runtime on {both}/{n}");
    assert!(by_qlift.abs_diff(by_ort) <= 1, "{by_qlift} vs {by_ort}");
    assert!(both * 100 >= n * 99, "{both}/{n}");
}
