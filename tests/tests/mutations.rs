//! Mutation corpus: thousands of corrupted versions of the bundled models (bit flips, byte
//! overwrites, truncations, spliced ranges) go through the importer, and those that still
//! import run through the interpreter. None may panic: every failure must be an error.

use qlift::npy::read_npy;
use qlift::{load_onnx_bytes, ImportOptions};
use qlift_ir::Tensor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Mutations per model; the whole corpus is this times the six bundled models.
const PER_MODEL: usize = 1000;

struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

fn mutate(model: &[u8], rng: &mut Lcg) -> Vec<u8> {
    let mut m = model.to_vec();
    match rng.below(4) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            let i = rng.below(m.len());
            m[i] = [0x00, 0xff, 0x7f, 0x80][rng.below(4)];
        }
        2 => m.truncate(rng.below(m.len())),
        _ => {
            // Copy a range over another one: swaps fields and lengths around.
            let (a, b, n) = (rng.below(m.len()), rng.below(m.len()), 1 + rng.below(64));
            let n = n.min(m.len() - a).min(m.len() - b);
            let chunk = m[a..a + n].to_vec();
            m[b..b + n].copy_from_slice(&chunk);
        }
    }
    m
}

#[test]
fn mutated_models_fail_cleanly() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models");
    let sample = |file: &str| -> Tensor {
        let t = read_npy(&dir.join(file)).unwrap();
        let per_sample = t.len() / t.shape()[0];
        let mut shape = t.shape().to_vec();
        shape[0] = 1;
        Tensor::from_f32(&shape, t.as_f32().unwrap()[..per_sample].to_vec())
    };
    let (image, flat) = (
        sample("digits_test_x.npy"),
        sample("digits_test_x_flat.npy"),
    );
    let mut rng = Lcg(7);
    let (mut tried, mut imported, mut ran) = (0, 0, 0);
    for name in [
        "digits_cnn",
        "digits_mlp",
        "digits_mobile",
        "digits_cnn.qdq",
        "digits_mlp.qdq",
        "digits_mobile.qdq",
    ] {
        let original = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
        let input = if name.starts_with("digits_mlp") {
            &flat
        } else {
            &image
        };
        for i in 0..PER_MODEL {
            let bytes = mutate(&original, &mut rng);
            tried += 1;
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let graph = load_onnx_bytes(&bytes, None, &ImportOptions::default()).ok()?;
                Some(qlift_ir::interp::run(&graph, std::slice::from_ref(input)).is_ok())
            }));
            match outcome {
                Err(_) => panic!("{name} mutation {i} panicked (reproduce with the same seed)"),
                Ok(Some(ok)) => {
                    imported += 1;
                    ran += ok as usize;
                }
                Ok(None) => {}
            }
        }
    }
    eprintln!("mutations tried: {tried}, imported: {imported}, ran: {ran}, panics: 0");
    assert_eq!(tried, 6 * PER_MODEL);
}

/// Mutations per model that go on through the whole compiler: a sample of 60 by default
/// (debug builds JIT-compile slowly); `.ci/run` also runs 1,000 per model in a release build
/// (`QLIFT_COMPILE_MUTATIONS`). The fuzz target `compile` does the same at volume.
fn compile_per_model() -> usize {
    std::env::var("QLIFT_COMPILE_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// The importable mutations of all eight bundled models (fp32, QDQ and QOperator) also go
/// through `CompiledModel::from_onnx_bytes` (rewrites and JIT compilation) and, when they
/// compile, a run on zero inputs of their input shapes (batch 1): no panic, every failure a
/// clear error value (bad input, not an internal error, for a model the importer accepted).
#[test]
fn mutated_models_compile_and_run_or_fail_cleanly() {
    use qlift::{CompileOptions, CompiledModel};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models");
    let models = [
        "digits_cnn",
        "digits_mlp",
        "digits_mobile",
        "digits_cnn.qdq",
        "digits_mlp.qdq",
        "digits_mobile.qdq",
        "digits_cnn.qop",
        "digits_mobile.qop",
    ];
    let mut rng = Lcg(2024);
    let (mut tried, mut imported, mut compiled, mut ran) = (0, 0, 0, 0);
    let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
    for name in models {
        let original = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
        for i in 0..compile_per_model() {
            let bytes = mutate(&original, &mut rng);
            tried += 1;
            if load_onnx_bytes(&bytes, None, &ImportOptions::default()).is_err() {
                continue;
            }
            imported += 1;
            let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<bool, qlift::Error> {
                let model =
                    CompiledModel::from_onnx_bytes(&bytes, None, &CompileOptions::default())?;
                let inputs: Vec<Tensor> = model
                    .inputs()
                    .iter()
                    .map(|(_, ty)| Tensor::zeros(ty.dtype, &ty.shape.resolve(1)))
                    .collect();
                if inputs.iter().map(Tensor::len).sum::<usize>() > 1 << 20 {
                    return Ok(false);
                }
                model.run(&inputs)?;
                Ok(true)
            }));
            match outcome {
                Err(_) => {
                    panic!("{name} compile mutation {i} panicked (reproduce with the same seed)")
                }
                Ok(Ok(r)) => {
                    compiled += 1;
                    ran += r as usize;
                }
                Ok(Err(e)) => {
                    assert!(
                        !e.is_internal(),
                        "{name} mutation {i}: an imported model gave an internal error: {e}"
                    );
                    let kind = format!("{e:?}");
                    *errors
                        .entry(kind.split(['(', ' ', '{']).next().unwrap_or("").to_string())
                        .or_default() += 1;
                }
            }
        }
    }
    eprintln!("compile mutations tried: {tried}, imported: {imported}, compiled: {compiled}, ran: {ran}, panics: 0; errors by kind: {errors:?}");
    assert_eq!(tried, models.len() * compile_per_model());
    assert!(
        compiled > 0,
        "no mutated model compiled: the sample tests nothing"
    );
}

/// The named inputs of a node test's first data set.
fn case_inputs(case: &std::path::Path) -> Vec<(String, Tensor)> {
    (0..)
        .map(|i| case.join(format!("test_data_set_0/input_{i}.pb")))
        .take_while(|p| p.exists())
        .map(|p| qlift::read_tensor_pb(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// The node tests of the resampling, padding and selection ops (tests/data/onnx-node), each
/// mutated 120 times, through the importer, the interpreter on the case's inputs, and the
/// whole compiler and a run: no panic, no error that admits a bug in qlift (an internal
/// error, or a kernel disagreeing with inference), for a model the importer accepted.
#[test]
fn mutated_resampling_and_selection_models_fail_cleanly() {
    use qlift::{CompileOptions, CompiledModel};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/onnx-node");
    let cases = [
        "test_resize_upsample_scales_linear",
        "test_resize_downsample_sizes_cubic_antialias",
        "test_resize_tf_crop_and_resize_extrapolation_value",
        "test_resize_upsample_sizes_nearest_axes_3_2",
        "test_resize_upsample_sizes_nearest_not_larger",
        "test_reflect_pad",
        "test_wrap_pad",
        "test_edge_pad",
        "test_constant_pad_axes",
        "test_depthtospace_crd_mode_example",
        "test_spacetodepth_example",
        "test_onehot_with_axis",
        "test_gather_elements_negative_indices",
        "test_gathernd_example_int32_batch_dim1",
        "test_scatternd_add",
        "test_scatter_elements_with_reduction_max",
        "test_triu_neg",
        "test_nonzero_example",
        "test_legacy_upsample_7_nearest",
        "test_legacy_resize_10_nearest_down",
    ];
    let mut rng = Lcg(99);
    let (mut tried, mut imported, mut compiled) = (0, 0, 0);
    for case in cases {
        let original = std::fs::read(dir.join(case).join("model.onnx")).unwrap();
        let inputs = case_inputs(&dir.join(case));
        for i in 0..120 {
            let bytes = if i == 0 {
                original.clone()
            } else {
                mutate(&original, &mut rng)
            };
            tried += 1;
            let outcome = catch_unwind(AssertUnwindSafe(|| -> Option<bool> {
                let graph = load_onnx_bytes(&bytes, None, &ImportOptions::default()).ok()?;
                let names: Vec<String> = graph
                    .input_values()
                    .iter()
                    .map(|v| graph.value(*v).name.clone())
                    .collect();
                let feed: Option<Vec<Tensor>> = names
                    .iter()
                    .map(|n| inputs.iter().find(|(m, _)| m == n).map(|(_, t)| t.clone()))
                    .collect();
                if let Some(feed) = &feed {
                    if let Err(e) = qlift_ir::interp::run(&graph, feed) {
                        assert!(
                            !e.to_string().contains("bug in qlift"),
                            "{case} mutation {i}: {e}"
                        );
                    }
                }
                let model = match CompiledModel::from_onnx_bytes(
                    &bytes,
                    None,
                    &CompileOptions::default(),
                ) {
                    Ok(m) => m,
                    Err(e) => {
                        assert!(
                            !e.is_internal(),
                            "{case} mutation {i}: an imported model gave an internal error: {e}"
                        );
                        return Some(false);
                    }
                };
                if let Some(feed) = feed {
                    if let Err(e) = model.run(&feed) {
                        assert!(!e.is_internal(), "{case} mutation {i}: {e}");
                    }
                }
                Some(true)
            }));
            match outcome {
                Err(_) => panic!("{case} mutation {i} panicked (reproduce with the same seed)"),
                Ok(Some(c)) => {
                    imported += 1;
                    compiled += c as usize;
                }
                Ok(None) => {}
            }
        }
    }
    eprintln!("mutations tried: {tried}, imported: {imported}, compiled: {compiled}, panics: 0");
    assert!(compiled > cases.len(), "the unmutated cases compile");
}

/// Hostile element values a mutation puts into integer operands (indices, sizes, pads,
/// depths) and attributes.
const HOSTILE_INTS: [i64; 12] = [
    0,
    -1,
    1,
    2,
    3,
    -7,
    1 << 40,
    -(1 << 40),
    i32::MAX as i64,
    i32::MIN as i64,
    i64::MAX,
    i64::MIN,
];

/// Hostile element values for float operands (scales, roi, values) and attributes.
const HOSTILE_FLOATS: [f32; 12] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    2.5,
    1e30,
    -1e30,
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    1e-30,
];

/// The same graph with one attribute of one node, or the elements of one constant, replaced
/// by hostile values (types re-inferred; `None` when the graph no longer verifies, which
/// is the importer's and verifier's business, tested elsewhere).
fn mutate_graph(g: &qlift_ir::Graph, rng: &mut Lcg) -> Option<qlift_ir::Graph> {
    use qlift_ir::{AttrValue, NodeOp, TensorData};
    use std::sync::Arc;
    let mut g = g.clone();
    let ids: Vec<_> = g
        .node_ids()
        .filter(|&id| !matches!(g.node(id).op, NodeOp::Input))
        .collect();
    let id = ids[rng.below(ids.len())];
    let int = |rng: &mut Lcg| HOSTILE_INTS[rng.below(HOSTILE_INTS.len())];
    let float = |rng: &mut Lcg| HOSTILE_FLOATS[rng.below(HOSTILE_FLOATS.len())];
    match &mut g.node_mut(id).op {
        NodeOp::Apply(op) => {
            let names: Vec<String> = op.attrs.0.keys().cloned().collect();
            let name = names.get(rng.below(names.len()))?.clone();
            let value = match op.attrs.get(&name)? {
                AttrValue::Int(_) => AttrValue::Int(int(rng)),
                AttrValue::Float(_) => AttrValue::Float(float(rng)),
                AttrValue::Ints(v) => {
                    let mut v = v.clone();
                    match rng.below(3) {
                        0 if !v.is_empty() => v.pop().map(|_| ()).unwrap_or(()),
                        1 => v.push(int(rng)),
                        _ if !v.is_empty() => {
                            let i = rng.below(v.len());
                            v[i] = int(rng);
                        }
                        _ => {}
                    }
                    AttrValue::Ints(v)
                }
                AttrValue::Floats(v) => AttrValue::Floats(v.iter().map(|_| float(rng)).collect()),
                // A body replaced by an empty graph: the verifier must refuse it, not panic.
                AttrValue::Graph(_) => {
                    AttrValue::Graph(std::sync::Arc::new(qlift_ir::Graph::new("mutated")))
                }
                AttrValue::Str(_) => AttrValue::Str(
                    [
                        "nearest", "linear", "cubic", "reflect", "edge", "wrap", "constant", "add",
                        "max", "CRD", "DCR", "x", "",
                    ][rng.below(13)]
                    .to_string(),
                ),
            };
            op.attrs.set(&name, value);
        }
        NodeOp::Const(t) => {
            let n = t.len();
            let data = match t.data() {
                TensorData::F32(_) => TensorData::F32((0..n).map(|_| float(rng)).collect()),
                _ => {
                    let values: Vec<i64> = (0..n).map(|_| int(rng)).collect();
                    let (lo, hi) = t.dtype().int_range()?;
                    qlift_ir::Tensor::from_i64_values(
                        t.dtype(),
                        t.shape().to_vec(),
                        values.into_iter().map(|v| v.clamp(lo, hi)).collect(),
                    )
                    .ok()?
                    .into_data()
                }
            };
            *t = Arc::new(qlift_ir::Tensor::new(t.dtype(), t.shape().to_vec(), data).ok()?);
        }
        NodeOp::Input => return None,
    }
    // Results get the types the mutated operands give (unknown extents first, so that the
    // old ones do not constrain them).
    for id in g.node_ids().collect::<Vec<_>>() {
        if matches!(g.node(id).op, NodeOp::Apply(_)) {
            for v in &mut g.node_mut(id).outputs {
                v.ty.shape = qlift_ir::Shape(vec![qlift_ir::Dim::Dyn; v.ty.shape.rank()]);
            }
        }
    }
    qlift_ir::infer_types(&mut g).ok()?;
    qlift_ir::verify(&g).ok()?;
    Some(g)
}

/// The node-test graphs of the resampling, padding and selection ops with hostile
/// attribute and constant values (300 mutations each, `QLIFT_HOSTILE_MUTATIONS` to change
/// it; one or two changes per graph): the interpreter either errs without
/// admitting a bug in qlift or computes a result; the JIT (on the graph specialized to the
/// inputs, integer inputs frozen) either refuses it with an error that is not internal or
/// computes what the interpreter does. No panic.
#[test]
fn hostile_attributes_and_constants_of_resampling_and_selection_ops() {
    use qlift_codegen::{CodegenOptions, JitProgram};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/onnx-node");
    let cases = [
        "test_resize_upsample_scales_cubic",
        "test_resize_downsample_scales_linear_antialias",
        "test_resize_tf_crop_and_resize_axes_3_2",
        "test_resize_upsample_sizes_nearest_not_smaller",
        "test_legacy_resize_10_nearest_down",
        "test_legacy_upsample_7_nearest",
        "test_reflect_pad",
        "test_wrap_pad",
        "test_constant_pad_negative_axes",
        "test_depthtospace_example",
        "test_spacetodepth_crd_mode_example",
        "test_onehot_negative_indices",
        "test_gather_elements_1",
        "test_gathernd_example_float32",
        "test_scatternd_multiply",
        "test_scatter_elements_with_axis",
        "test_tril_pos",
        "test_nonzero_example",
        "test_legacy_onehot_9_float_depth",
    ];
    let mut rng = Lcg(4242);
    let (mut valid, mut interpreted, mut jitted) = (0, 0, 0);
    for case in cases {
        let model = std::fs::read(dir.join(case).join("model.onnx")).unwrap();
        let inputs = case_inputs(&dir.join(case));
        // Integer inputs (indices, pads, sizes, k) are frozen: mutations reach them as constants.
        let mut opts = ImportOptions::default();
        for (name, t) in &inputs {
            if t.dtype() != qlift_ir::DType::F32 {
                opts.constant_inputs.insert(name.clone(), t.clone());
            }
        }
        // And so is what the importer needs constant (Pad's fill value).
        let graph = loop {
            match load_onnx_bytes(&model, Some(&dir.join(case)), &opts) {
                Ok(g) => break g,
                Err(qlift::Error::NonConstant { operand, .. })
                    if !opts.constant_inputs.contains_key(&operand) =>
                {
                    let t = inputs
                        .iter()
                        .find(|(n, _)| *n == operand)
                        .unwrap_or_else(|| panic!("{case}: {operand}"))
                        .1
                        .clone();
                    opts.constant_inputs.insert(operand, t);
                }
                Err(e) => panic!("{case}: {e}"),
            }
        };
        let feed: Vec<Tensor> = graph
            .input_values()
            .iter()
            .map(|v| {
                inputs
                    .iter()
                    .find(|(n, _)| *n == graph.value(*v).name)
                    .unwrap()
                    .1
                    .clone()
            })
            .collect();
        let per_case = std::env::var("QLIFT_HOSTILE_MUTATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        for i in 0..per_case {
            let Some(mut g) = mutate_graph(&graph, &mut rng) else {
                continue;
            };
            if i % 2 == 1 {
                let Some(again) = mutate_graph(&g, &mut rng) else {
                    continue;
                };
                g = again;
            }
            valid += 1;
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let want = match qlift_ir::interp::run(&g, &feed) {
                    Ok(w) => w,
                    Err(e) => {
                        assert!(
                            !e.to_string().contains("bug in qlift"),
                            "{case} mutation {i}: {e}"
                        );
                        return (false, false);
                    }
                };
                let values = g.input_values();
                let declared = values
                    .iter()
                    .map(|v| (g.value(*v).name.as_str(), g.value_type(*v)));
                let Ok(binding) = qlift_ir::bind_inputs(&g.name, declared, &feed) else {
                    return (true, false);
                };
                let Ok((s, _)) = qlift_ir::specialize_for(&g, &binding) else {
                    return (true, false);
                };
                match JitProgram::compile(&s, &CodegenOptions::default()) {
                    Err(e) => {
                        assert!(!e.is_internal(), "{case} mutation {i}: {e}");
                        (true, false)
                    }
                    Ok(p) => {
                        let got = p.run(&feed).unwrap_or_else(|e| {
                            panic!("{case} mutation {i}: the interpreter ran it, the JIT: {e}")
                        });
                        for (a, b) in got.iter().zip(&want) {
                            assert_eq!(
                                (a.dtype(), a.shape()),
                                (b.dtype(), b.shape()),
                                "{case} mutation {i}"
                            );
                            let (x, y) = (a.to_f32_vec(), b.to_f32_vec());
                            let close = x.iter().zip(&y).all(|(p, q)| {
                                (p.is_nan() && q.is_nan())
                                    || p == q
                                    || (p - q).abs() <= 1e-4 * q.abs().max(1.0)
                            });
                            assert!(
                                close,
                                "{case} mutation {i}: JIT {x:?}\ninterpreter {y:?}\n{}",
                                qlift_ir::text::print(&s, &Default::default())
                            );
                        }
                        (true, true)
                    }
                }
            }));
            match outcome {
                Err(_) => panic!("{case} mutation {i} panicked (reproduce with the same seed)"),
                Ok((ran, jit)) => {
                    interpreted += ran as usize;
                    jitted += jit as usize;
                }
            }
        }
    }
    eprintln!("valid mutated graphs: {valid}, interpreted: {interpreted}, JIT-compiled and equal: {jitted}");
    assert!(jitted > 100, "too few mutations reach the JIT to test it");
}
