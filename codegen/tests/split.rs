//! Kernels that split one sample's work across threads by elements (elementwise ops,
//! Softmax, LayerNormalization and GroupNormalization, reductions, QuantizeLinear,
//! DequantizeLinear, QAdd, QGlobalAveragePool, QAveragePool, QConcat, MaxPool,
//! AveragePool, GlobalAveragePool): with every call split (`parallel_min_macs = 0`) on two
//! threads, the results are the bits of one thread, both within 1e-4 of the interpreter, and
//! every kernel really was compiled split (it has a task function). Shapes leave uneven
//! parts: odd row counts, rows and chunks that are not multiples of the vector width,
//! batches of 1 and 3.

mod common;
use common::{has_task, lcg};
use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::text::parse;
use qlift_ir::{DType, Graph, Tensor, TensorData};

/// A tensor of `dtype` and `shape` with values in [-scale, scale) (integers rounded).
fn values(dtype: DType, seed: u64, shape: &[usize], scale: f32) -> Tensor {
    let v: Vec<f32> = lcg(seed, shape.iter().product())
        .into_iter()
        .map(|x| x * scale)
        .collect();
    if dtype == DType::F32 {
        return Tensor::from_f32(shape, v);
    }
    let ints = v.into_iter().map(|x| x.round() as i64).collect();
    Tensor::from_i64_values(dtype, shape.to_vec(), ints).unwrap()
}

/// `g` compiled with calls split whenever the kernel can (`split`, run on two threads)
/// or with the default threshold (on one thread).
fn compile(g: &Graph, split: bool) -> JitProgram {
    let opts = CodegenOptions {
        parallel_min_macs: split.then_some(0),
        ..CodegenOptions::default()
    };
    let mut p = JitProgram::compile(g, &opts).unwrap_or_else(|e| panic!("{e}"));
    p.set_threads(if split { 2 } else { 1 });
    p
}

/// The bits of a tensor's elements (f32 by their bit patterns, so that NaN compares).
fn bits(t: &Tensor) -> Vec<i64> {
    match t.data() {
        TensorData::F32(v) => v.iter().map(|x| x.to_bits() as i64).collect(),
        _ => t.to_i64_vec().unwrap(),
    }
}

/// Checks every output of `text` on inputs of the given dtypes, shapes (`N` → each batch)
/// and scales; every node named in `split_nodes` must have been compiled split.
fn check(text: &str, inputs: &[(DType, &[usize], f32)], split_nodes: &[&str]) {
    let g = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    qlift_ir::verify(&g).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    let (serial, split) = (compile(&g, false), compile(&g, true));
    for node in split_nodes {
        assert!(has_task(&split, node), "{node} was not split\n{text}");
    }
    for batch in [1, 3] {
        let xs: Vec<Tensor> = inputs
            .iter()
            .enumerate()
            .map(|(i, &(dtype, shape, scale))| {
                let shape: Vec<usize> = shape
                    .iter()
                    .map(|&d| if d == 0 { batch } else { d })
                    .collect();
                values(dtype, 7 * i as u64 + batch as u64, &shape, scale)
            })
            .collect();
        let want = qlift_ir::interp::run(&g, &xs).unwrap_or_else(|e| panic!("interp: {e}"));
        let one = serial
            .run(&xs)
            .unwrap_or_else(|e| panic!("one thread: {e}"));
        let two = split
            .run(&xs)
            .unwrap_or_else(|e| panic!("two threads: {e}"));
        for (i, ((a, b), w)) in one.iter().zip(&two).zip(&want).enumerate() {
            assert_eq!(
                bits(a),
                bits(b),
                "output {i}, batch {batch}: split differs\n{text}"
            );
            if let Some(e) = a.disagreement(w, |x, y| (x - y).abs() <= 1e-4 * y.abs().max(1.0)) {
                panic!("output {i}, batch {batch}: JIT vs interpreter: {e}\n{text}");
            }
        }
    }
}

/// `N` in a shape (the batch, filled in per run).
const N: usize = 0;

#[test]
fn binary_arithmetic_splits_over_rows_and_chunks() {
    check(
        "graph t(%a: f32[N,37,101], %b: f32[101], %c: f32[37,1], %d: f32[N,37,101]) -> (%same, %row, %col, %div, %fixed) {
           %same = Add(%a, %d) : f32[N,37,101] @same
           %row = Mul(%a, %b) : f32[N,37,101] @row
           %col = Sub(%c, %a) : f32[N,37,101] @col
           %div = Div(%a, %d) : f32[N,37,101] @div
           %fixed = Add(%c, %b) : f32[37,101] @fixed
         }",
        &[
            (DType::F32, &[N, 37, 101], 4.0),
            (DType::F32, &[101], 2.0),
            (DType::F32, &[37, 1], 3.0),
            (DType::F32, &[N, 37, 101], 1.5),
        ],
        &["same", "row", "col", "div", "fixed"],
    );
}

#[test]
fn integer_arithmetic_splits_one_element_at_a_time() {
    check(
        "graph t(%a: i32[N,3001], %b: i32[N,3001]) -> (%add, %mul, %div, %neg) {
           %k = const i32[1] [7]
           %add = Add(%a, %b) : i32[N,3001] @add
           %mul = Mul(%a, %b) : i32[N,3001] @mul
           %div = Div(%a, %k) : i32[N,3001] @div
           %neg = Neg(%a) : i32[N,3001] @neg
         }",
        &[
            (DType::I32, &[N, 3001], 1000.0),
            (DType::I32, &[N, 3001], 1000.0),
        ],
        &["add", "mul", "div", "neg"],
    );
}

#[test]
fn unary_and_variadic_ops_split() {
    check(
        "graph t(%x: f32[N,37,101], %y: f32[101], %z: f32[N,37,101]) -> (%tanh, %erf, %gelu, %relu, %max, %sum, %sq) {
           %two = const f32[] [2.0]
           %tanh = Tanh(%x) : f32[N,37,101] @tanh
           %erf = Erf(%x) : f32[N,37,101] @erf
           %gelu = Gelu(%x) {approximate=\"tanh\"} : f32[N,37,101] @gelu
           %relu = Relu(%x) : f32[N,37,101] @relu
           %max = Max(%x, %y, %z) : f32[N,37,101] @max
           %sum = Sum(%x, %z) : f32[N,37,101] @sum
           %sq = Pow(%x, %two) : f32[N,37,101] @sq
         }",
        &[
            (DType::F32, &[N, 37, 101], 3.0),
            (DType::F32, &[101], 3.0),
            (DType::F32, &[N, 37, 101], 3.0),
        ],
        &["tanh", "erf", "gelu", "relu", "max", "sum", "sq"],
    );
}

#[test]
fn softmax_splits_over_rows() {
    check(
        "graph t(%x: f32[N,3,37,41], %w: f32[N,5,37,3]) -> (%last, %middle) {
           %last = Softmax(%x) {axis=3} : f32[N,3,37,41] @last
           %middle = Softmax(%w) {axis=2} : f32[N,5,37,3] @middle
         }",
        &[
            (DType::F32, &[N, 3, 37, 41], 6.0),
            (DType::F32, &[N, 5, 37, 3], 6.0),
        ],
        &["last", "middle"],
    );
}

#[test]
fn normalizations_split_over_rows() {
    check(
        "graph t(%x: f32[N,37,101], %s: f32[101], %b: f32[101], %c: f32[N,6,5,7], %g: f32[6], %h: f32[6]) -> (%ln, %plain, %gn) {
           %ln = LayerNormalization(%x, %s, %b) {axis=2, epsilon=1e-5} : f32[N,37,101] @ln
           %plain = LayerNormalization(%x, %s) {axis=2, epsilon=1e-5} : f32[N,37,101] @plain
           %gn = GroupNormalization(%c, %g, %h) {num_groups=3, epsilon=1e-5} : f32[N,6,5,7] @gn
         }",
        &[
            (DType::F32, &[N, 37, 101], 5.0),
            (DType::F32, &[101], 2.0),
            (DType::F32, &[101], 2.0),
            (DType::F32, &[N, 6, 5, 7], 5.0),
            (DType::F32, &[6], 2.0),
            (DType::F32, &[6], 2.0),
        ],
        &["ln", "plain", "gn"],
    );
}

#[test]
fn reductions_split_over_kept_rows() {
    check(
        "graph t(%x: f32[N,37,101], %w: f32[N,5,37,101], %i: i32[N,37,101]) -> (%mean, %l2, %sum, %max) {
           %mean = ReduceMean(%x) {axes=[2], keepdims=1, noop_with_empty_axes=0} : f32[N,37,1] @mean
           %l2 = ReduceL2(%x) {axes=[2], keepdims=0, noop_with_empty_axes=0} : f32[N,37] @l2
           %sum = ReduceSum(%w) {axes=[2], keepdims=0, noop_with_empty_axes=0} : f32[N,5,101] @sum
           %max = ReduceMax(%i) {axes=[2], keepdims=0, noop_with_empty_axes=0} : i32[N,37] @max
         }",
        &[
            (DType::F32, &[N, 37, 101], 3.0),
            (DType::F32, &[N, 5, 37, 101], 3.0),
            (DType::I32, &[N, 37, 101], 1000.0),
        ],
        &["mean", "l2", "sum", "max"],
    );
}

#[test]
fn quantization_splits_over_channel_runs_and_chunks() {
    check(
        "graph t(%x: f32[N,3,37,101], %y: f32[N,37,5], %z: i32[N,3001]) -> (%q, %r, %c, %s, %d, %e, %w) {
           %q = QuantizeLinear(%x) : u8[N,3,37,101] quant(scale=0.05, zero_point=128) @q
           %r = QuantizeLinear(%x) : i8[N,3,37,101] quant(axis=1, scale=[0.05, 0.1, 0.02], zero_point=[-3, 0, 7]) @r
           %c = QuantizeLinear(%y) : i8[N,37,5] quant(axis=2, scale=[0.5, 0.25, 0.03, 1.5, 0.1], zero_point=[0, 12, 7, -128, 3]) @c
           %s = QuantizeLinear(%x) : i16[N,3,37,101] quant(scale=0.001, zero_point=5) @s
           %d = DequantizeLinear(%q) : f32[N,3,37,101] @d
           %e = DequantizeLinear(%r) : f32[N,3,37,101] @e
           %w = QuantizeLinear(%z) : i8[N,3001] quant(scale=7.5, zero_point=1) @w
         }",
        &[
            (DType::F32, &[N, 3, 37, 101], 8.0),
            (DType::F32, &[N, 37, 5], 40.0),
            (DType::I32, &[N, 3001], 1000.0),
        ],
        &["q", "r", "c", "s", "d", "e", "w"],
    );
}

#[test]
fn quantized_adds_split_over_rows_and_chunks() {
    check(
        "graph t(%x: f32[N,3,37,101], %y: f32[37,1], %v: f32[N,3001]) -> (%same, %col, %relu, %flat) {
           %a = QuantizeLinear(%x) : u8[N,3,37,101] quant(scale=0.05, zero_point=128)
           %b = QuantizeLinear(%y) : i8[37,1] quant(scale=0.02, zero_point=-7)
           %u = QuantizeLinear(%v) : i8[N,3001] quant(scale=0.1, zero_point=3)
           %same = QAdd(%a, %a) : i8[N,3,37,101] quant(scale=0.3, zero_point=-1) @same
           %col = QAdd(%a, %b) : u8[N,3,37,101] quant(scale=0.2, zero_point=100) @col
           %relu = QAdd(%b, %a) {act_max=6.0, act_min=0.0} : u8[N,3,37,101] quant(scale=0.05, zero_point=0) @relu
           %flat = QAdd(%u, %u) : i8[N,3001] quant(scale=0.13, zero_point=2) @flat
         }",
        &[
            (DType::F32, &[N, 3, 37, 101], 8.0),
            (DType::F32, &[37, 1], 3.0),
            (DType::F32, &[N, 3001], 20.0),
        ],
        &["same", "col", "relu", "flat"],
    );
}

#[test]
fn quantized_global_average_pools_split_over_plane_groups() {
    check(
        "graph t(%x: f32[N,37,7,7], %y: f32[N,37,4,4]) -> (%odd, %whole) {
           %a = QuantizeLinear(%x) : u8[N,37,7,7] quant(scale=0.05, zero_point=128)
           %b = QuantizeLinear(%y) : i8[N,37,4,4] quant(scale=0.02, zero_point=-7)
           %odd = QGlobalAveragePool(%a) : u8[N,37,1,1] quant(scale=0.01, zero_point=128) @odd
           %whole = QGlobalAveragePool(%b) : i8[N,37,1,1] quant(scale=0.03, zero_point=-4) @whole
         }",
        &[
            (DType::F32, &[N, 37, 7, 7], 6.0),
            (DType::F32, &[N, 37, 4, 4], 2.0),
        ],
        &["odd", "whole"],
    );
}

#[test]
fn eight_bit_max_pools_split_over_planes() {
    check(
        "graph t(%x: f32[N,5,13,11], %y: f32[N,3,13,12]) -> (%padded, %ceil) {
           %a = QuantizeLinear(%x) : u8[N,5,13,11] quant(scale=0.05, zero_point=128)
           %b = QuantizeLinear(%y) : i8[N,3,13,12] quant(scale=0.02, zero_point=-7)
           %padded = MaxPool(%a) {ceil_mode=0, dilations=[1, 1], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]} : u8[N,5,7,6] quant(scale=0.05, zero_point=128) @padded
           %ceil = MaxPool(%b) {ceil_mode=1, dilations=[1, 1], kernel_shape=[3, 3], pads=[0, 0, 0, 0], strides=[2, 2]} : i8[N,3,6,6] quant(scale=0.02, zero_point=-7) @ceil
         }",
        &[
            (DType::F32, &[N, 5, 13, 11], 6.0),
            (DType::F32, &[N, 3, 13, 12], 2.0),
        ],
        &["padded", "ceil"],
    );
}

#[test]
fn eight_bit_average_pools_split_over_planes() {
    check(
        "graph t(%x: f32[N,5,4,4], %y: f32[N,3,14,20]) -> (%narrow, %clipped) {
           %a = QuantizeLinear(%x) : u8[N,5,4,4] quant(scale=0.05, zero_point=128)
           %b = QuantizeLinear(%y) : i8[N,3,14,20] quant(scale=0.02, zero_point=-7)
           %narrow = QAveragePool(%a) {ceil_mode=0, count_include_pad=1, dilations=[1, 1], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]} : u8[N,5,4,4] quant(scale=0.04, zero_point=120) @narrow
           %clipped = QAveragePool(%b) {ceil_mode=1, count_include_pad=0, dilations=[1, 1], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]} : i8[N,3,8,11] quant(scale=0.01, zero_point=-4) @clipped
         }",
        &[
            (DType::F32, &[N, 5, 4, 4], 6.0),
            (DType::F32, &[N, 3, 14, 20], 2.0),
        ],
        &["narrow", "clipped"],
    );
}

#[test]
fn quantized_concats_split_over_blocks() {
    check(
        "graph t(%x: f32[N,5,9,31], %y: f32[N,3,9,31]) -> (%rescaled, %inner) {
           %a = QuantizeLinear(%x) : u8[N,5,9,31] quant(scale=0.05, zero_point=128)
           %b = QuantizeLinear(%y) : u8[N,3,9,31] quant(scale=0.02, zero_point=100)
           %c = QuantizeLinear(%y) : i8[N,3,9,31] quant(scale=0.01, zero_point=-3)
           %rescaled = QConcat(%a, %b) {axis=1} : u8[N,8,9,31] quant(scale=0.04, zero_point=128) @rescaled
           %inner = QConcat(%c, %c, %c) {axis=3} : i8[N,3,9,93] quant(scale=0.02, zero_point=3) @inner
         }",
        &[
            (DType::F32, &[N, 5, 9, 31], 6.0),
            (DType::F32, &[N, 3, 9, 31], 2.0),
        ],
        &["rescaled", "inner"],
    );
}

#[test]
fn float_pools_split_over_planes() {
    check(
        "graph t(%x: f32[N,5,13,11]) -> (%max, %avg, %global) {
           %max = MaxPool(%x) {ceil_mode=0, dilations=[1, 1], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]} : f32[N,5,7,6] @max
           %avg = AveragePool(%x) {ceil_mode=1, count_include_pad=1, dilations=[1, 1], kernel_shape=[3, 2], pads=[0, 1, 1, 0], strides=[2, 3]} : f32[N,5,7,4] @avg
           %global = GlobalAveragePool(%x) : f32[N,5,1,1] @global
         }",
        &[(DType::F32, &[N, 5, 13, 11], 6.0)],
        &["max", "avg", "global"],
    );
}

#[test]
fn the_default_threshold_splits_large_calls_only() {
    let g = parse(
        "graph t(%a: f32[N,8,8], %b: f32[N,128,384]) -> (%small, %large) {
           %small = Add(%a, %a) : f32[N,8,8] @small
           %large = Add(%b, %b) : f32[N,128,384] @large
         }",
    )
    .unwrap();
    let mut p = JitProgram::compile(&g, &CodegenOptions::default()).unwrap();
    p.set_threads(2);
    assert!(!has_task(&p, "small"));
    assert!(has_task(&p, "large"));
}
