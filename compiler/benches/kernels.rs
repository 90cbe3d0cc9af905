//! One JIT kernel at a time, on small single-op graphs, with criterion's statistics: which
//! kernel family a change made faster or slower, which the whole-model numbers
//! (`benches/models.rs`, `qlift bench`) cannot say.
//!
//! Each graph is written in qlift's IR text format with deterministic pseudo-random
//! constants and the quantization parameters on its types (as the lowered models carry
//! them), parsed, verified and compiled once with the JIT (`CompiledModel::from_lowered`:
//! code generation only). The timed call is `run_into` at batch 1 (QMatMul also at batch 64)
//! with preallocated outputs. Groups follow the kernel families of `codegen/src/kernels/`:
//!
//! | group | cases | throughput (criterion's elem/s) |
//! |---|---|---|
//! | `qconv` | 3x3 16→32 channels, depthwise 3x3 on 32, 1x1 32→64; 8x8, u8 in and out | MACs |
//! | `qmatmul` | 128x64, per-column weights, i32 bias | MACs |
//! | `conv_f32` | 3x3 16→32 channels on 8x8 | MACs |
//! | `qadd` | two u8[32,8,8] with different parameters | output elements |
//! | `qconcat` | two u8[32,8,8] along channels | output elements |
//! | `pool` | QAveragePool 3x3 pads 1, QGlobalAveragePool, u8 MaxPool 2x2 stride 2 | output elements |
//! | `quant` | QuantizeLinear f32→u8, DequantizeLinear u8→f32 on [32,8,8] | output elements |
//! | `transformer_f32` | MiniLM's fp32 shapes at sequence 128: Q·Kᵀ and P·V of 12 heads (two activations), a 384→384 Linear, LayerNorm over 384 | MACs (LayerNorm: elements) |
//! | `forms` | real-size layers (ResNet-18's stem and 3×3 stages, MobileNetV2's 1×1 and depthwise, depthwise 5×5/7×7, MiniLM's FFN product), each under every micro-kernel path the host has: `native` (the widest: VNNI quads where present), `pairs` (`--no-vnni`: i16 pairs), `avx2` (`--avx2-only`), `v128` (`--max-vector-bits 128`: Cranelift's own vectors); the benchmark's name carries the form the code generator chose | MACs |
//!
//! `cargo bench -p qlift --bench kernels [-- FILTER]`, e.g. `-- qconv/` or `-- forms/`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qlift::{CodegenOptions, CompileOptions, CompiledModel};
use qlift_ir::{DType, Tensor};
use std::hint::black_box;
use std::time::Duration;

/// One single-op graph to time: its IR text and the multiply-accumulates of one sample
/// (`None`: throughput counts output elements instead).
struct Case {
    id: &'static str,
    ir: String,
    macs: Option<u64>,
}

/// xorshift64*: the same constants and inputs on every run.
struct Rng(u64);

impl Rng {
    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        lo + (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as i64 % (hi - lo + 1)
    }

    /// `n` integers in `lo..=hi` as an IR list literal.
    fn ints(&mut self, n: usize, lo: i64, hi: i64) -> String {
        list((0..n).map(|_| self.int(lo, hi)))
    }

    /// `n` floats in about ±`max` (multiples of 1/256 · `max`) as an IR list literal.
    fn floats(&mut self, n: usize, max: f32) -> String {
        list((0..n).map(|_| format!("{:?}", self.int(-256, 256) as f32 / 256.0 * max)))
    }
}

fn list(items: impl Iterator<Item = impl ToString>) -> String {
    format!(
        "[{}]",
        items.map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
    )
}

fn conv_attrs(group: usize, k: usize, stride: usize) -> String {
    let p = k / 2;
    format!("dilations=[1, 1], group={group}, kernel_shape=[{k}, {k}], pads=[{p}, {p}, {p}, {p}], strides=[{stride}, {stride}]")
}

/// QConv `cin → cout` channels, `k`x`k` kernel, same padding, stride 1, on `hw`x`hw`, fused
/// Relu, per-output-channel weights and an i32 bias: the lowered models' convolutions.
fn qconv(id: &'static str, cin: usize, cout: usize, group: usize, k: usize, hw: usize) -> Case {
    qconv_strided(id, cin, cout, group, (k, 1), hw)
}

/// [`qconv`] with a `(kernel, stride)`.
fn qconv_strided(
    id: &'static str,
    cin: usize,
    cout: usize,
    group: usize,
    (k, stride): (usize, usize),
    hw: usize,
) -> Case {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let per_group = cin / group;
    let out = (hw + 2 * (k / 2) - k) / stride + 1;
    let scales = list((0..cout).map(|_| format!("{:?}", 0.002 + rng.int(0, 20) as f32 * 0.0002)));
    let ir = format!(
        "graph {id}(%x: u8[N,{cin},{hw},{hw}] quant(scale=0.05, zero_point=3)) -> (%y) {{
  %w = const i8[{cout},{per_group},{k},{k}] quant(axis=0, scale={scales}, zero_point={zeros}) {w}
  %b = const i32[{cout}] {b}
  %y = QConv(%x, %w, %b) {{act_max=inf, act_min=0.0, {attrs}}} : u8[N,{cout},{out},{out}] quant(scale=0.25, zero_point=0)
}}",
        zeros = list(std::iter::repeat_n(0, cout)),
        w = rng.ints(cout * per_group * k * k, -127, 127),
        b = rng.ints(cout, -2000, 2000),
        attrs = conv_attrs(group, k, stride),
    );
    Case {
        id,
        ir,
        macs: Some((cout * out * out * per_group * k * k) as u64),
    }
}

fn qmatmul(k: usize, n: usize) -> Case {
    qmatmul_rows("128x64", 1, k, n)
}

/// QMatMul of `rows` u8 rows per sample by `k`x`n` per-column i8 weights.
fn qmatmul_rows(id: &'static str, rows: usize, k: usize, n: usize) -> Case {
    let mut rng = Rng(0xd1b5_4a32_d192_ed03);
    let scales = list((0..n).map(|_| format!("{:?}", 0.002 + rng.int(0, 20) as f32 * 0.0002)));
    let ir = format!(
        "graph qmatmul(%x: u8[N,{rows}{k}] quant(scale=0.05, zero_point=120)) -> (%y) {{
  %w = const i8[{k},{n}] quant(axis=1, scale={scales}, zero_point={zeros}) {w}
  %b = const i32[{n}] {b}
  %y = QMatMul(%x, %w, %b) : u8[N,{rows}{n}] quant(scale=0.25, zero_point=128)
}}",
        rows = if rows == 1 {
            String::new()
        } else {
            format!("{rows},")
        },
        zeros = list(std::iter::repeat_n(0, n)),
        w = rng.ints(k * n, -127, 127),
        b = rng.ints(n, -2000, 2000),
    );
    Case {
        id,
        ir,
        macs: Some((rows * k * n) as u64),
    }
}

fn conv_f32(cin: usize, cout: usize, hw: usize) -> Case {
    let mut rng = Rng(0x94d0_49bb_1331_11eb);
    let ir = format!(
        "graph conv_f32(%x: f32[N,{cin},{hw},{hw}]) -> (%y) {{
  %w = const f32[{cout},{cin},3,3] {w}
  %b = const f32[{cout}] {b}
  %y = Conv(%x, %w, %b) {{act_max=inf, act_min=0.0, {attrs}}} : f32[N,{cout},{hw},{hw}]
}}",
        w = rng.floats(cout * cin * 9, 0.25),
        b = rng.floats(cout, 0.1),
        attrs = conv_attrs(1, 3, 1),
    );
    Case {
        id: "3x3_16to32_8x8",
        ir,
        macs: Some((cout * hw * hw * cin * 9) as u64),
    }
}

/// A transformer's fp32 kernels at sequence length `s`, 12 heads of 32 (MiniLM's shapes):
/// the attention products of two activations, a Linear layer and a LayerNorm.
fn transformer_f32(s: usize) -> Vec<Case> {
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let (heads, d, hidden) = (12, 32, 384);
    let product = |id: &'static str, m: usize, k: usize, n: usize| {
        Case {
        id,
        ir: format!("graph {id}(%a: f32[N,{heads},{m},{k}], %b: f32[N,{heads},{k},{n}]) -> (%y) {{\n  %y = MatMul(%a, %b) : f32[N,{heads},{m},{n}]\n}}"),
        macs: Some((heads * m * k * n) as u64),
    }
    };
    let linear = Case {
        id: "linear_384",
        ir: format!(
            "graph linear(%x: f32[N,{s},{hidden}]) -> (%y) {{\n  %w = const f32[{hidden},{hidden}] {w}\n  %y = MatMul(%x, %w) : f32[N,{s},{hidden}]\n}}",
            w = rng.floats(hidden * hidden, 0.1)
        ),
        macs: Some((s * hidden * hidden) as u64),
    };
    let layer_norm = Case {
        id: "layernorm_384",
        ir: format!(
            "graph layernorm(%x: f32[N,{s},{hidden}]) -> (%y) {{\n  %g = const f32[{hidden}] {g}\n  %b = const f32[{hidden}] {b}\n  %y = LayerNormalization(%x, %g, %b) {{axis=2, epsilon=1e-12}} : f32[N,{s},{hidden}]\n}}",
            g = rng.floats(hidden, 1.0),
            b = rng.floats(hidden, 0.1)
        ),
        macs: None,
    };
    vec![
        product("qk", s, d, s),
        product("pv", s, s, d),
        linear,
        layer_norm,
    ]
}

/// A single-op graph on 8-bit activations: `op_line` defines `%y` from `%a` (and `%b`).
fn elementwise(name: &str, id: &'static str, inputs: &str, op_line: &str) -> Case {
    Case {
        id,
        ir: format!("graph {name}({inputs}) -> (%y) {{\n  {op_line}\n}}"),
        macs: None,
    }
}

const A: &str = "%a: u8[N,32,8,8] quant(scale=0.05, zero_point=120)";
const B: &str = "%b: u8[N,32,8,8] quant(scale=0.03, zero_point=100)";

fn families() -> Vec<(&'static str, Vec<Case>, &'static [usize])> {
    let two = format!("{A}, {B}");
    vec![
        (
            "qconv",
            vec![qconv("3x3_16to32_8x8", 16, 32, 1, 3, 8), qconv("depthwise3x3_32_8x8", 32, 32, 32, 3, 8), qconv("1x1_32to64_8x8", 32, 64, 1, 1, 8)],
            &[1],
        ),
        ("qmatmul", vec![qmatmul(128, 64)], &[1, 64]),
        ("conv_f32", vec![conv_f32(16, 32, 8)], &[1]),
        ("qadd", vec![elementwise("qadd", "32x8x8", &two, "%y = QAdd(%a, %b) : u8[N,32,8,8] quant(scale=0.07, zero_point=110)")], &[1]),
        (
            "qconcat",
            vec![elementwise("qconcat", "2x32x8x8", &two, "%y = QConcat(%a, %b) {axis=1} : u8[N,64,8,8] quant(scale=0.05, zero_point=110)")],
            &[1],
        ),
        (
            "pool",
            vec![
                elementwise(
                    "qavgpool",
                    "qavg3x3_32x8x8",
                    A,
                    "%y = QAveragePool(%a) {ceil_mode=0, count_include_pad=1, dilations=[1, 1], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]} : u8[N,32,8,8] quant(scale=0.04, zero_point=100)",
                ),
                elementwise("qgap", "qglobalavg_32x8x8", A, "%y = QGlobalAveragePool(%a) : u8[N,32,1,1] quant(scale=0.04, zero_point=100)"),
                elementwise(
                    "maxpool",
                    "max2x2s2_u8_32x8x8",
                    A,
                    "%y = MaxPool(%a) {ceil_mode=0, dilations=[1, 1], kernel_shape=[2, 2], pads=[0, 0, 0, 0], strides=[2, 2]} : u8[N,32,4,4] quant(scale=0.05, zero_point=120)",
                ),
            ],
            &[1],
        ),
        (
            "quant",
            vec![
                elementwise("quantize", "quantize_32x8x8", "%a: f32[N,32,8,8]", "%y = QuantizeLinear(%a) : u8[N,32,8,8] quant(scale=0.02, zero_point=128)"),
                elementwise("dequantize", "dequantize_32x8x8", A, "%y = DequantizeLinear(%a) : f32[N,32,8,8]"),
            ],
            &[1],
        ),
        ("transformer_f32", transformer_f32(128), &[1]),
        ("forms", real_size_layers(), &[1]),
    ]
}

/// Layers at the sizes of the standard architectures, one per convolution form and
/// micro-kernel shape that matters there (timed under each path in [`PATHS`]).
fn real_size_layers() -> Vec<Case> {
    vec![
        qconv_strided("resnet_stem_7x7s2_3to64_224", 3, 64, 1, (7, 2), 224),
        qconv("resnet_3x3_64to64_56", 64, 64, 1, 3, 56),
        qconv("resnet_3x3_128to128_28", 128, 128, 1, 3, 28),
        qconv("resnet_3x3_256to256_14", 256, 256, 1, 3, 14),
        qconv_strided("resnet_3x3s2_256to512_14", 256, 512, 1, (3, 2), 14),
        qconv_strided("resnet_1x1s2_256to512_14", 256, 512, 1, (1, 2), 14),
        qconv("resnet_3x3_512to512_7", 512, 512, 1, 3, 7),
        qconv("mnv2_1x1_96to576_14", 96, 576, 1, 1, 14),
        qconv("mnv2_1x1_960to320_7", 960, 320, 1, 1, 7),
        qconv("mnv2_1x1_160to960_7", 160, 960, 1, 1, 7),
        qconv("mnv2_depthwise3x3_144_56", 144, 144, 144, 3, 56),
        qconv_strided("mnv2_depthwise3x3s2_384_14", 384, 384, 384, (3, 2), 14),
        qconv("depthwise5x5_64_32", 64, 64, 64, 5, 32),
        qconv("depthwise7x7_64_32", 64, 64, 64, 7, 32),
        qmatmul_rows("minilm_ffn_128x384x1536", 128, 384, 1536),
    ]
}

/// The code-generation paths the `forms` family compares: name and options. Each runs
/// where the host can (the options only ever narrow what the host has).
const PATHS: [(&str, fn(&mut CodegenOptions)); 4] = [
    ("native", |_| {}),
    ("pairs", |o| o.no_vnni = true),
    ("avx2", |o| o.avx2_only = true),
    ("v128", |o| o.max_vector_bits = Some(128)),
];

/// Pseudo-random inputs of the model's input types at `batch`.
fn inputs(model: &CompiledModel, batch: usize) -> Vec<Tensor> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    model
        .inputs()
        .iter()
        .map(|(_, ty)| {
            let shape = ty.shape.resolve(batch);
            let n = shape.iter().product();
            match ty.dtype {
                DType::F32 => Tensor::from_f32(
                    &shape,
                    (0..n).map(|_| rng.int(-256, 256) as f32 / 64.0).collect(),
                ),
                dtype => {
                    let (lo, hi) = dtype.int_range().expect("an integer input");
                    Tensor::from_i64_values(dtype, shape, (0..n).map(|_| rng.int(lo, hi)).collect())
                        .expect("values in range")
                }
            }
        })
        .collect()
}

fn kernels(c: &mut Criterion) {
    for (family, cases, batches) in families() {
        let mut group = c.benchmark_group(family);
        let paths: &[(&str, fn(&mut CodegenOptions))] = if family == "forms" {
            &PATHS
        } else {
            &PATHS[..1]
        };
        for case in cases {
            let graph = qlift_ir::text::parse(&case.ir)
                .unwrap_or_else(|e| panic!("{family}/{}: {e}\n{}", case.id, case.ir));
            qlift_ir::verify(&graph).unwrap_or_else(|e| panic!("{family}/{}: {e}", case.id));
            for (path, narrow) in paths {
                let mut opts = CompileOptions::default();
                narrow(&mut opts.codegen);
                let model =
                    CompiledModel::from_lowered(graph.clone(), !family.ends_with("_f32"), &opts)
                        .expect("the kernel compiles");
                for &batch in batches {
                    bench_case(&mut group, &case, path, &model, batch, family == "forms");
                }
            }
        }
        group.finish();
    }
}

/// Times one compiled case at `batch`; with `named_by_form`, the benchmark's parameter
/// names the path and the form the code generator chose.
fn bench_case(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    case: &Case,
    path: &str,
    model: &CompiledModel,
    batch: usize,
    named_by_form: bool,
) {
    let inputs = inputs(model, batch);
    let mut outputs: Vec<Tensor> = model
        .outputs()
        .iter()
        .map(|(_, ty)| Tensor::zeros(ty.dtype, &ty.shape.resolve(batch)))
        .collect();
    let per_sample = case.macs.unwrap_or_else(|| {
        model
            .outputs()
            .iter()
            .map(|(_, ty)| ty.shape.resolve(1).iter().product::<usize>() as u64)
            .sum()
    });
    let mut parameter = format!("b{batch}");
    if named_by_form {
        // A model with a symbolic batch has its program once it ran.
        model
            .run_into(&inputs, &mut outputs)
            .expect("the kernel runs");
        let forms = model.kernel_forms().unwrap_or_default();
        let form = forms.last().map_or("?", |(_, f)| f.as_str());
        parameter = format!("{parameter}_{path}_{form}");
    }
    group.throughput(Throughput::Elements(per_sample * batch as u64));
    group.bench_function(BenchmarkId::new(case.id, parameter), |b| {
        b.iter(|| {
            model
                .run_into(black_box(&inputs), &mut outputs)
                .expect("the kernel runs")
        })
    });
}

criterion_group! {
    name = benches;
    // Short runs: single kernels take micro- to nanoseconds per call.
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    targets = kernels
}
criterion_main!(benches);
