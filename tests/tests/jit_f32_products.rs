//! The f32 products on the 256-bit FMA micro-kernels (`wide-f32`: Conv, MatMul of computed
//! operands (attention), and MatMul/Gemm by constant weights; `depthwise-f32`: depthwise
//! Conv) against the interpreter, on random shapes at the forms' edges: output channels and
//! rows that do not fill a tile of six, positions and columns that do not fill a panel of
//! sixteen or a vector of eight, groups, channel multipliers, padding (asymmetric too),
//! strides, dilation, 1-D to 3-D kernels, fused clamps, Gemm's `transB`/`alpha`/`beta`/`C`,
//! batches 1–7 and the split across threads.
//! Where the CPU has AVX2 and FMA the form must be the one chosen; elsewhere the same
//! graphs check the other forms.

use proptest::prelude::*;
use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::text::parse;
use qlift_ir::{DType, Tensor, TensorData};
use qlift_tests::samples::values;

fn list(v: &[f32]) -> String {
    v.iter()
        .map(|x| format!("{x:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn dims(d: &[usize]) -> String {
    d.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// One spatial axis of a convolution: (input, kernel, stride, dilation, pad at the start,
/// pad at the end).
type Axis = (usize, usize, usize, usize, usize, usize);

/// A float Conv over `spatial` with the given attributes, constant weights and maybe a bias
/// and a fused clamp.
#[derive(Clone, Debug)]
struct ConvCase {
    c: usize,
    m: usize,
    group: usize,
    spatial: Vec<Axis>,
    bias: bool,
    clamp: Option<(f32, f32)>,
    seed: u64,
}

/// Whether every axis's padded input holds the dilated kernel.
fn fits(spatial: &[Axis]) -> bool {
    spatial
        .iter()
        .all(|&(i, k, _, d, p, q)| i + p + q > d * (k - 1))
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    let axis = (1usize..=12, 1usize..=5, 1usize..=2, 1usize..=2, 0usize..=2);
    (
        1usize..=3,
        1usize..=3,
        1usize..=7,
        prop::collection::vec(axis, 1..=3),
        any::<bool>(),
        0usize..3,
        any::<u64>(),
    )
        .prop_filter_map(
            "the kernel must fit",
            |(group, cg, mg, spatial, bias, clamp, seed)| {
                let spatial: Vec<Axis> = spatial
                    .into_iter()
                    .map(|(i, k, s, d, p)| (i, k, s, d, p, p))
                    .collect();
                let clamp = [None, Some((0.0, f32::INFINITY)), Some((-0.5, 0.75))][clamp];
                fits(&spatial).then_some(ConvCase {
                    c: group * cg,
                    m: group * mg,
                    group,
                    spatial,
                    bias,
                    clamp,
                    seed,
                })
            },
        )
}

/// A depthwise Conv (group = channels, multiplier 1 or 2) over one or two spatial axes:
/// kernels 1–7 (non-square), strides and dilations 1–3, asymmetric padding, rows that fill
/// several micro-kernel blocks or share one, and up to 600 channels.
fn depthwise_case() -> impl Strategy<Value = ConvCase> {
    let axis = |input: std::ops::RangeInclusive<usize>| {
        (
            input,
            1usize..=7,
            1usize..=3,
            1usize..=3,
            0usize..=3,
            0usize..=3,
        )
    };
    (
        prop_oneof![3 => 1usize..=24, 1 => 500usize..=600],
        1usize..=2,
        prop::option::of(axis(1..=12)),
        axis(1..=70),
        any::<bool>(),
        0usize..3,
        any::<u64>(),
    )
        .prop_filter_map(
            "the kernel must fit",
            |(c, mult, rows, cols, bias, clamp, seed)| {
                let spatial: Vec<Axis> = rows.into_iter().chain([cols]).collect();
                let clamp = [None, Some((0.0, f32::INFINITY)), Some((-0.5, 0.75))][clamp];
                fits(&spatial).then_some(ConvCase {
                    c,
                    m: c * mult,
                    group: c,
                    spatial,
                    bias,
                    clamp,
                    seed,
                })
            },
        )
}

/// The graph's text and the shape of one input sample.
fn conv_graph(k: &ConvCase) -> (String, Vec<usize>) {
    let cg = k.c / k.group;
    let kernel: Vec<usize> = k.spatial.iter().map(|a| a.1).collect();
    let input: Vec<usize> = k.spatial.iter().map(|a| a.0).collect();
    let out: Vec<usize> = k
        .spatial
        .iter()
        .map(|&(i, kk, s, d, p, q)| (i + p + q - d * (kk - 1) - 1) / s + 1)
        .collect();
    let wshape = [vec![k.m, cg], kernel.clone()].concat();
    let w = values(wshape.iter().product(), k.seed);
    let b = values(k.m, k.seed ^ 0xb1a5);
    let attrs = format!(
        "dilations=[{}], group={}, kernel_shape=[{}], pads=[{}], strides=[{}]{}",
        dims(&k.spatial.iter().map(|a| a.3).collect::<Vec<_>>()),
        k.group,
        dims(&kernel),
        dims(
            &[
                k.spatial.iter().map(|a| a.4).collect::<Vec<_>>(),
                k.spatial.iter().map(|a| a.5).collect()
            ]
            .concat()
        ),
        dims(&k.spatial.iter().map(|a| a.2).collect::<Vec<_>>()),
        k.clamp.map_or(String::new(), |(lo, hi)| format!(
            ", act_min={lo:?}, act_max={}",
            if hi.is_finite() {
                format!("{hi:?}")
            } else {
                "inf".into()
            }
        )),
    );
    let bias_const = if k.bias {
        format!("  %b = const f32[{}] [{}]\n", k.m, list(&b))
    } else {
        String::new()
    };
    let text = format!(
        "graph conv(%x: f32[N,{c},{input}]) -> (%y) {{\n  %w = const f32[{ws}] [{w}]\n{bias_const}  %y = Conv(%x, %w{b}) {{{attrs}}} : f32[N,{m},{out}]\n}}\n",
        c = k.c,
        input = dims(&input),
        ws = dims(&wshape),
        w = list(&w),
        b = if k.bias { ", %b" } else { "" },
        m = k.m,
        out = dims(&out),
    );
    (text, [vec![k.c], input].concat())
}

/// A MatMul `[N, rows, k] × [k, n]` or a Gemm `[N, k] × B (+ C)`.
#[derive(Clone, Debug)]
struct ProductCase {
    gemm: bool,
    rows: usize,
    k: usize,
    n: usize,
    trans_b: bool,
    c: u8, // Gemm: 0 none, 1 per column, 2 scalar
    seed: u64,
}

fn product_case() -> impl Strategy<Value = ProductCase> {
    (
        any::<bool>(),
        1usize..=14,
        // Past one block of the reduction (128) and one chunk of columns (256).
        prop_oneof![1usize..=40, 100usize..=300],
        prop_oneof![1usize..=40, 200usize..=290],
        any::<bool>(),
        0u8..3,
        any::<u64>(),
    )
        .prop_map(|(gemm, rows, k, n, trans_b, c, seed)| ProductCase {
            gemm,
            rows,
            k,
            n,
            trans_b,
            c,
            seed,
        })
}

/// The graph's text and the shape of one input sample.
fn product_graph(p: &ProductCase) -> (String, Vec<usize>) {
    let bshape = if p.gemm && p.trans_b {
        [p.n, p.k]
    } else {
        [p.k, p.n]
    };
    let b = values(p.k * p.n, p.seed);
    if !p.gemm {
        let text = format!(
            "graph mm(%x: f32[N,{r},{k}]) -> (%y) {{\n  %b = const f32[{bs}] [{b}]\n  %y = MatMul(%x, %b) : f32[N,{r},{n}]\n}}\n",
            r = p.rows,
            k = p.k,
            bs = dims(&bshape),
            b = list(&b),
            n = p.n
        );
        return (text, vec![p.rows, p.k]);
    }
    let c = match p.c {
        1 => format!(
            "  %c = const f32[{}] [{}]\n",
            p.n,
            list(&values(p.n, p.seed ^ 7))
        ),
        2 => "  %c = const f32[1] [0.375]\n".to_string(),
        _ => String::new(),
    };
    let text = format!(
        "graph gemm(%x: f32[N,{k}]) -> (%y) {{\n  %b = const f32[{bs}] [{b}]\n{c}  %y = Gemm(%x, %b{cc}) {{alpha=0.5, beta=1.5, transA=0, transB={tb}}} : f32[N,{n}]\n}}\n",
        k = p.k,
        bs = dims(&bshape),
        b = list(&b),
        cc = if p.c == 0 { "" } else { ", %c" },
        tb = i32::from(p.trans_b),
        n = p.n
    );
    (text, vec![p.k])
}

/// Attention's products, both operands computed: `(x · xᵀ) · x` for `x: [N, heads, rows, k]`
/// (B packed at run time, `[k, rows]` then `[rows, k]`).
fn attention_graph(heads: usize, rows: usize, k: usize) -> (String, Vec<usize>) {
    let text = format!(
        "graph attention(%x: f32[N,{heads},{rows},{k}]) -> (%y) {{\n  %t = Transpose(%x) {{perm=[0, 1, 3, 2]}} : f32[N,{heads},{k},{rows}]\n  %s = MatMul(%x, %t) : f32[N,{heads},{rows},{rows}]\n  %y = MatMul(%s, %x) : f32[N,{heads},{rows},{k}]\n}}\n"
    );
    (text, vec![heads, rows, k])
}

/// `batch` samples of shape `sample`.
fn input(sample: &[usize], batch: usize, seed: u64) -> Tensor {
    let shape = [&[batch], sample].concat();
    let n = shape.iter().product();
    Tensor::new(DType::F32, shape, TensorData::F32(values(n, seed))).unwrap()
}

fn host_has_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// The JIT (one thread, and two with every call split) within 1e-5 of the output range of
/// the interpreter's f64 sums, and in one of `forms` where the host has FMA.
fn check(
    (text, sample): (String, Vec<usize>),
    batch: usize,
    seed: u64,
    forms: &[&str],
) -> Result<(), TestCaseError> {
    let g = parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
    let x = input(&sample, batch, seed);
    let want = qlift_ir::interp::run(&g, std::slice::from_ref(&x))
        .map_err(|e| TestCaseError::fail(format!("interp: {e}")))?;
    for (threads, min_macs) in [(1, None), (2, Some(0))] {
        let opts = CodegenOptions {
            parallel_min_macs: min_macs,
            ..CodegenOptions::default()
        };
        let mut program = JitProgram::compile(&g, &opts)
            .map_err(|e| TestCaseError::fail(format!("compile: {e}\n{text}")))?;
        if host_has_fma() {
            let chosen: Vec<&str> = program
                .program()
                .steps
                .iter()
                .map(|s| s.form.as_str())
                .collect();
            prop_assert!(
                chosen.iter().any(|f| forms.contains(f)),
                "forms {chosen:?}, want one of {forms:?}\n{text}"
            );
        }
        program.set_threads(threads);
        let got = program
            .run(std::slice::from_ref(&x))
            .map_err(|e| TestCaseError::fail(format!("run: {e}")))?;
        let (a, b) = (got[0].as_f32().unwrap(), want[0].as_f32().unwrap());
        prop_assert_eq!(got[0].shape(), want[0].shape());
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max)
            / scale;
        prop_assert!(
            err <= 1e-5,
            "relative error {err} with {threads} threads, batch {batch}\n{text}"
        );
    }
    Ok(())
}

/// 64 cases each, or `PROPTEST_CASES`.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 64;
    }
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn f32_convolutions_agree_with_the_interpreter(case in conv_case(), batch in 1usize..=3, seed in any::<u64>()) {
        check(conv_graph(&case), batch, seed, &["wide-f32", "depthwise-f32"])?;
    }

    #[test]
    fn f32_depthwise_convolutions_agree_with_the_interpreter(case in depthwise_case(), batch in 1usize..=3, seed in any::<u64>()) {
        check(conv_graph(&case), batch, seed, &["depthwise-f32"])?;
    }

    #[test]
    fn f32_products_by_constant_weights_agree_with_the_interpreter(case in product_case(), batch in 1usize..=7, seed in any::<u64>()) {
        check(product_graph(&case), batch, seed, &["wide-f32"])?;
    }

    #[test]
    fn f32_products_of_computed_operands_agree_with_the_interpreter(heads in 1usize..=3, rows in 1usize..=20, k in prop_oneof![1usize..=40, 120usize..=280], batch in 1usize..=3, seed in any::<u64>()) {
        check(attention_graph(heads, rows, k), batch, seed, &["wide-f32"])?;
    }
}

/// Shapes the random cases are too small for: rows of 16 and more positions, whose taps
/// the gather copies as runs of consecutive (stride 1) or every other (stride 2) input
/// elements, padded at the ends (the ResNet stem's 7-tap stride-2 shape too), and many
/// output channels over few panels, whose row blocks are split in chunks across tasks.
#[test]
fn f32_convolutions_with_runs_and_channel_chunks_agree_with_the_interpreter() {
    let axis = |i, k, s, p| (i, k, s, 1, p, p);
    let cases = [
        (3, 8, vec![axis(70, 3, 1, 1)]),
        (3, 8, vec![axis(70, 7, 2, 3)]),
        (3, 13, vec![axis(5, 7, 2, 3), axis(40, 7, 2, 3)]),
        (2, 7, vec![axis(3, 3, 1, 1), axis(33, 3, 1, 1)]),
        (4, 40, vec![axis(20, 3, 1, 1)]),
        (2, 64, vec![axis(7, 3, 1, 1), axis(7, 3, 1, 1)]),
    ];
    for (seed, (c, m, spatial)) in cases.into_iter().enumerate() {
        for (bias, clamp) in [(true, Some((0.0, f32::INFINITY))), (false, None)] {
            let case = ConvCase {
                c,
                m,
                group: 1,
                spatial: spatial.clone(),
                bias,
                clamp,
                seed: seed as u64,
            };
            check(conv_graph(&case), 2, seed as u64, &["wide-f32"]).unwrap();
        }
    }
}
