//! The JIT against the reference interpreter on the bundled models: fp32 (after the
//! rewrite pipeline), quantized by qlift, and ONNX Runtime's own QDQ and QOperator models
//! lowered to integer ops. Quantized models must agree bit for bit, fp32 ones within 1e-4.

use qlift::npy::read_npy;
use qlift::{load_onnx, quantize, ImportOptions, QuantizeOptions};
use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::{DType, Graph, Tensor};
use qlift_passes::{run_pipeline, PipelineOptions};
use std::path::PathBuf;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models")
}

fn npy(file: &str) -> Tensor {
    read_npy(&models_dir().join(file)).unwrap()
}

fn load(file: &str) -> Graph {
    load_onnx(&models_dir().join(file), &ImportOptions::default()).unwrap()
}

/// Every bundled model: (model file, test input, calibration input).
const MODELS: [(&str, &str, &str); 3] = [
    ("digits_cnn", "digits_test_x.npy", "digits_calib_x.npy"),
    (
        "digits_mlp",
        "digits_test_x_flat.npy",
        "digits_calib_x_flat.npy",
    ),
    ("digits_mobile", "digits_test_x.npy", "digits_calib_x.npy"),
];

/// The graphs to compile: (label, graph, input file, whether it is quantized).
fn graphs() -> Vec<(String, Graph, &'static str, bool)> {
    let mut out = Vec::new();
    for (name, input, calib) in MODELS {
        let fp32 = load(&format!("{name}.onnx"));
        out.push((
            format!("{name} fp32"),
            run_pipeline(&fp32, &PipelineOptions::default()).unwrap().0,
            input,
            false,
        ));
        let q = quantize(
            &fp32,
            &[npy(calib)],
            &QuantizeOptions::default(),
            &PipelineOptions::default(),
            &|_, _| {},
        )
        .unwrap();
        out.push((format!("{name} qlift int8"), q.lowered, input, true));
        out.push((
            format!("{name} ORT QDQ"),
            run_pipeline(
                &load(&format!("{name}.qdq.onnx")),
                &PipelineOptions::default(),
            )
            .unwrap()
            .0,
            input,
            true,
        ));
    }
    // ORT's QOperator models keep their Gemm layers in float: held to the float tolerance.
    for name in ["digits_cnn", "digits_mobile"] {
        out.push((
            format!("{name} ORT QOperator"),
            run_pipeline(
                &load(&format!("{name}.qop.onnx")),
                &PipelineOptions::default(),
            )
            .unwrap()
            .0,
            "digits_test_x.npy",
            false,
        ));
    }
    out
}

/// The code paths: the host's best (VNNI `vpdpbusd` dot products where the host has them),
/// `pmaddwd` dot products, AVX2 at most (an AVX2-only CPU's code), and the baseline ISA
/// (SSE2 only, no host features).
fn paths() -> [(&'static str, CodegenOptions); 4] {
    [
        ("host", CodegenOptions::default()),
        (
            "no-vnni",
            CodegenOptions {
                no_vnni: true,
                ..Default::default()
            },
        ),
        (
            "avx2",
            CodegenOptions {
                avx2_only: true,
                ..Default::default()
            },
        ),
        (
            "baseline",
            CodegenOptions {
                baseline_isa: true,
                ..Default::default()
            },
        ),
    ]
}

#[test]
fn jit_agrees_with_the_interpreter_on_every_bundled_model() {
    let mut failures = Vec::new();
    for ((label, graph, input, quantized), (path, opts)) in graphs()
        .into_iter()
        .flat_map(|g| paths().map(move |p| (g.clone(), p)))
    {
        let label = format!("{label} [{path}]");
        let x = npy(input);
        let want = qlift_ir::interp::run(&graph, std::slice::from_ref(&x)).unwrap();
        let program = match JitProgram::compile(&graph, &opts) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{label}: {e}"));
                continue;
            }
        };
        let got = program.run(&[x]).unwrap();
        let (g, w) = (got[0].as_f32().unwrap(), want[0].as_f32().unwrap());
        let worst = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0f32, f32::max);
        if (quantized && g != w) || worst > 1e-4 {
            failures.push(format!(
                "{label}: JIT differs from the interpreter by {worst} (relative)"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// One compiled model shared by 16 threads, 200 runs each, all with identical outputs.
#[test]
fn sixteen_threads_share_one_compiled_model() {
    let graph = graphs()
        .into_iter()
        .find(|(l, ..)| l == "digits_cnn qlift int8")
        .unwrap()
        .1;
    let program = JitProgram::compile(&graph, &CodegenOptions::default()).unwrap();
    let x = npy("digits_test_x.npy").slice_outer(0, 8).unwrap();
    let want = program.run(std::slice::from_ref(&x)).unwrap();
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                for _ in 0..200 {
                    assert!(program.run(std::slice::from_ref(&x)).unwrap() == want);
                }
            });
        }
    });
}

/// A call split across threads (the batch in disjoint slices) computes the same bits.
#[test]
fn batch_split_across_threads_is_bit_identical() {
    let graph = graphs()
        .into_iter()
        .find(|(l, ..)| l == "digits_mobile qlift int8")
        .unwrap()
        .1;
    let one = JitProgram::compile(&graph, &CodegenOptions::default()).unwrap();
    let mut split = JitProgram::compile(&graph, &CodegenOptions::default()).unwrap();
    split.set_threads(3);
    let x = npy("digits_test_x.npy");
    for batch in [1, 2, 5, 540] {
        let part = x.slice_outer(0, batch).unwrap();
        assert!(
            one.run(std::slice::from_ref(&part)).unwrap() == split.run(&[part]).unwrap(),
            "batch {batch}"
        );
    }
}

/// A small deterministic generator (xorshift64*) for the rescale cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    /// Uniform in `[lo, hi)`.
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A random 8-bit dtype and zero point, as IR text (`u8` or `i8`, zero point in range).
fn random_quant(rng: &mut Rng, scale: f32) -> (DType, String) {
    let dtype = rng.pick(&[DType::U8, DType::I8]);
    let (lo, hi) = dtype.int_range().unwrap();
    let zp = match rng.below(3) {
        0 => 0,
        _ => lo + rng.below((hi - lo + 1) as usize) as i64,
    };
    (dtype, format!("quant(scale={scale:?}, zero_point={zp})"))
}

/// A result scale for an operand of scale `s`: mostly a ratio `s / s_y` between 2^-10 and
/// 2^6, sometimes exactly 1, one f32 step either side of it (a multiplier just below
/// 2^31), or far enough out that the shift leaves the vector form's range.
fn result_scale(rng: &mut Rng, s: f32) -> f32 {
    match rng.below(8) {
        0 => s,
        1 => f32::from_bits(s.to_bits() + 1),
        2 => f32::from_bits(s.to_bits() - 1),
        3 => s * rng.pick(&[2f32.powi(36), 2f32.powi(-15)]),
        _ => s / rng.uniform(-10.0, 6.0).exp2() as f32,
    }
}

/// Random 8-bit values for an operand of `dtype` and `shape`.
fn random_tensor(rng: &mut Rng, dtype: DType, shape: &[usize]) -> Tensor {
    let (lo, hi) = dtype.int_range().unwrap();
    let values = (0..shape.iter().product::<usize>())
        .map(|_| lo + rng.below((hi - lo + 1) as usize) as i64)
        .collect();
    Tensor::from_i64_values(dtype, shape.to_vec(), values).unwrap()
}

fn dims(shape: &[usize], batched: bool) -> String {
    let mut d: Vec<String> = shape.iter().map(usize::to_string).collect();
    if batched {
        d[0] = "N".to_string();
    }
    d.join(",")
}

/// One random rescale graph (Requantize, QAdd, QConcat, QGlobalAveragePool or
/// QAveragePool by `case`) as IR text, with inputs for `batch` samples.
fn rescale_case(rng: &mut Rng, case: usize) -> (String, Vec<Tensor>) {
    let batch = 1 + rng.below(3);
    let (c, w) = (
        1 + rng.below(4),
        rng.pick(&[1, 3, 8, 15, 16, 17, 31, 33, 64, 100]),
    );
    let act = match rng.below(3) {
        0 => Vec::new(),
        1 => vec!["act_max=inf".to_string(), "act_min=0.0".to_string()],
        _ => vec![
            format!("act_max={:?}", rng.uniform(0.0, 40.0) as f32),
            format!("act_min={:?}", rng.uniform(-40.0, 0.0) as f32),
        ],
    };
    let attrs = |more: &[String]| {
        let all = [&act[..], more].concat();
        if all.is_empty() {
            String::new()
        } else {
            format!(" {{{}}}", all.join(", "))
        }
    };
    let sx = rng.uniform(-7.0, 0.0).exp2() as f32;
    let sy = result_scale(rng, sx);
    let (ydt, yq) = random_quant(rng, sy);
    // Some operands share the result's type: a rescale by exactly 1 (a copy without clamp).
    let operand = |name: &str, shape: &[usize], batched: bool, rng: &mut Rng| {
        let s = if rng.below(2) == 0 {
            sx
        } else {
            sx * rng.uniform(0.5, 2.0) as f32
        };
        let (dt, q) = if rng.below(4) == 0 {
            (ydt, yq.clone())
        } else {
            random_quant(rng, s)
        };
        let mut full = shape.to_vec();
        if batched {
            full[0] = batch;
        }
        (
            format!("%{name}: {dt}[{}] {q}", dims(shape, batched)),
            random_tensor(rng, dt, &full),
        )
    };
    let (params, inputs, body): (Vec<String>, Vec<Tensor>, String) = match case % 5 {
        0 => {
            let (p, x) = operand("x", &[1, c, w], true, rng);
            (
                vec![p],
                vec![x],
                format!("Requantize(%x){} : {ydt}[N,{c},{w}] {yq}", attrs(&[])),
            )
        }
        1 => {
            let b_shape = rng.pick(&[vec![1, c, w], vec![w], vec![c, 1], vec![1], vec![1, 1, w]]);
            let (pa, a) = operand("a", &[1, c, w], true, rng);
            let (pb, b) = operand("b", &b_shape, b_shape.len() == 3 && b_shape[1] == c, rng);
            (
                vec![pa, pb],
                vec![a, b],
                format!("QAdd(%a, %b){} : {ydt}[N,{c},{w}] {yq}", attrs(&[])),
            )
        }
        2 => {
            let axis = 1 + rng.below(2);
            let parts = 2 + rng.below(2);
            let (mut params, mut inputs, mut names, mut total) =
                (Vec::new(), Vec::new(), Vec::new(), 0);
            for i in 0..parts {
                let mut shape = vec![1, c, w];
                shape[axis] = 1 + rng.below(20);
                total += shape[axis];
                let (p, x) = operand(&format!("x{i}"), &shape, true, rng);
                params.push(p);
                inputs.push(x);
                names.push(format!("%x{i}"));
            }
            let mut out = vec![1, c, w];
            out[axis] = total;
            // QConcat's result has the first operand's dtype.
            let ydt = inputs[0].dtype();
            (
                params,
                inputs,
                format!(
                    "QConcat({}){} : {ydt}[{}] {yq}",
                    names.join(", "),
                    attrs(&[format!("axis={axis}")]),
                    dims(&out, true)
                ),
            )
        }
        3 => {
            let (h, w) = rng.pick(&[
                (1, 1),
                (2, 2),
                (2, 4),
                (4, 4),
                (7, 7),
                (8, 8),
                (8, 16),
                (10, 20),
            ]);
            let channels = rng.pick(&[1, 5, 16, 17, 33]);
            let (p, x) = operand("x", &[1, channels, h, w], true, rng);
            (
                vec![p],
                vec![x],
                format!(
                    "QGlobalAveragePool(%x){} : {ydt}[N,{channels},1,1] {yq}",
                    attrs(&[])
                ),
            )
        }
        _ => {
            let (h, w) = rng.pick(&[(4, 4), (5, 7), (24, 24)]);
            let (k, pad, include) = (rng.pick(&[2, 3]), rng.below(2), rng.below(2));
            let out = |n: usize| (n + 2 * pad - k) + 1;
            let (p, x) = operand("x", &[1, c, h, w], true, rng);
            let window = [
                "ceil_mode=0".to_string(),
                format!("count_include_pad={include}"),
                "dilations=[1, 1]".to_string(),
                format!("kernel_shape=[{k}, {k}]"),
                format!("pads=[{pad}, {pad}, {pad}, {pad}]"),
                "strides=[1, 1]".to_string(),
            ];
            (
                vec![p],
                vec![x],
                format!(
                    "QAveragePool(%x){} : {ydt}[N,{c},{},{}] {yq}",
                    attrs(&window),
                    out(h),
                    out(w)
                ),
            )
        }
    };
    (
        format!(
            "graph rescale({}) -> (%y) {{\n  %y = {body}\n}}\n",
            params.join(", ")
        ),
        inputs,
    )
}

/// The element-wise rescale kernels (Requantize, QAdd, QConcat, and the average pools) on
/// random 8-bit data, bit for bit against the interpreter on the host and baseline ISAs:
/// lengths around the 16-lane vector step (remainders), u8 and i8 on either side, QAdd
/// broadcasting along and across the vector loop, fused clamps, and scale ratios exactly 1
/// (the plain copy), one f32 step from it (a multiplier just below 2^31), or far enough out
/// that the scalar fallback runs.
#[test]
fn rescale_kernels_agree_with_the_interpreter() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut failures = Vec::new();
    for case in 0..500 {
        let (text, inputs) = rescale_case(&mut rng, case);
        let graph = qlift_ir::text::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let want = qlift_ir::interp::run(&graph, &inputs).unwrap_or_else(|e| panic!("{text}: {e}"));
        for (path, opts) in paths() {
            let got = JitProgram::compile(&graph, &opts)
                .map_err(|e| e.to_string())
                .and_then(|p| p.run(&inputs).map_err(|e| e.to_string()));
            if got.as_ref() != Ok(&want) {
                failures.push(format!(
                    "[{path}] {text}inputs {inputs:?}\ngot {got:?}\nwant {want:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures, the first:\n{}",
        failures.len(),
        failures[0]
    );
}

/// QuantizeLinear from f32 to u8, i8 and i16 (16 elements a step where a channel's run
/// allows, then one by one) against the interpreter: ties rounding to even, values
/// saturating at both ends, ±inf, NaN (the dtype's minimum), per tensor and per axis, rows
/// of 40 elements (two vector steps and a remainder); and DequantizeLinear of i16 back.
#[test]
fn quantize_linear_agrees_with_the_interpreter() {
    let text = "graph q(%x: f32[N,2,40]) -> (%u, %i, %c, %w, %d) {
  %u = QuantizeLinear(%x) : u8[N,2,40] quant(scale=0.5, zero_point=10)
  %i = QuantizeLinear(%x) : i8[N,2,40] quant(scale=0.25, zero_point=-3)
  %c = QuantizeLinear(%x) : u8[N,2,40] quant(axis=1, scale=[0.125, 2.0], zero_point=[0, 200])
  %w = QuantizeLinear(%x) : i16[N,2,40] quant(scale=0.001, zero_point=-300)
  %v = QuantizeLinear(%x) : i16[N,2,40] quant(scale=0.0625, zero_point=100)
  %d = DequantizeLinear(%v) : f32[N,2,40]
}";
    let graph = qlift_ir::text::parse(text).unwrap();
    let mut rng = Rng(0x51ed_2701);
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e30,
        -1e30,
        0.25,
        0.75,
        -0.25,
        -0.75,
        5.25,
        -5.25,
        63.75,
        64.0,
        -0.0,
    ];
    let values: Vec<f32> = (0..3 * 80)
        .map(|i| {
            if i % 5 == 0 {
                specials[(i / 5) % specials.len()]
            } else {
                (rng.next() % 4001) as f32 / 16.0 - 125.0
            }
        })
        .collect();
    let x = Tensor::from_f32(&[3, 2, 40], values);
    let want = qlift_ir::interp::run(&graph, std::slice::from_ref(&x)).unwrap();
    for (path, opts) in paths() {
        let got = JitProgram::compile(&graph, &opts)
            .unwrap()
            .run(std::slice::from_ref(&x))
            .unwrap();
        assert!(got == want, "[{path}] got {got:?}\nwant {want:?}");
    }
}

/// Models whose batch is fixed above 1 (exported with batch 5; here the bundled models
/// imported with `--shape input=5x...`): the JIT computes every sample, as the interpreter
/// does (kernels treat the fixed leading extent as their batch), fp32 and int8.
#[test]
fn fixed_batches_above_one_compute_every_sample() {
    for (name, input, calib) in MODELS {
        let x = npy(input).slice_outer(0, 5).unwrap();
        let mut opts = ImportOptions::default();
        let dims = x
            .shape()
            .iter()
            .map(|&d| qlift::InputDim::Fixed(d))
            .collect();
        opts.input_shapes.insert("input".to_string(), dims);
        let fixed = load_onnx(&models_dir().join(format!("{name}.onnx")), &opts).unwrap();
        let calibration = npy(calib).slice_outer(0, 100).unwrap();
        let q = quantize(
            &fixed,
            &[calibration],
            &QuantizeOptions::default(),
            &PipelineOptions::default(),
            &|_, _| {},
        )
        .unwrap();
        for (label, g, exact) in [
            (
                "fp32",
                run_pipeline(&fixed, &PipelineOptions::default()).unwrap().0,
                false,
            ),
            ("int8", q.lowered, true),
        ] {
            let want = qlift_ir::interp::run(&g, std::slice::from_ref(&x)).unwrap();
            let got = JitProgram::compile(&g, &CodegenOptions::default())
                .unwrap()
                .run(std::slice::from_ref(&x))
                .unwrap();
            let (a, b) = (got[0].to_f32_vec(), want[0].to_f32_vec());
            let ok = if exact {
                a == b
            } else {
                a.iter()
                    .zip(&b)
                    .all(|(p, q)| (p - q).abs() <= 1e-4 * q.abs().max(1.0))
            };
            assert!(ok, "{name} {label}: JIT {a:?} vs interpreter {b:?}");
        }
    }
}
