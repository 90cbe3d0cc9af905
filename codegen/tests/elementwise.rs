//! The elementwise and data-movement kernels (broadcasting arithmetic, activations, Softmax,
//! BatchNormalization, Transpose, Concat, Pad) against the reference interpreter on small
//! IR graphs: floats within 1e-4 (relative above 1), integers and moved bytes exact, NaN
//! where the interpreter has NaN, errors where it errs.

mod common;
use common::lcg;
use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::text::parse;
use qlift_ir::{DType, Graph, Tensor, TensorData};

/// The graph of `text`, compiled for the host and for the baseline ISA (SSE2 on x86-64),
/// so that both instruction selections of the vector loops are checked.
fn compile(text: &str) -> (Graph, Programs) {
    let g = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    qlift_ir::verify(&g).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let programs = [false, true].map(|baseline_isa| {
        JitProgram::compile(
            &g,
            &CodegenOptions {
                baseline_isa,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    });
    (g, Programs(programs))
}

/// One graph compiled with each ISA setting.
struct Programs([JitProgram; 2]);

impl Programs {
    /// Runs both programs, which must agree with each other (bit for bit, or both failing
    /// with the same error); returns the host's result.
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, qlift_codegen::CodegenError> {
        let host = self.0[0].run(inputs);
        let baseline = self.0[1].run(inputs);
        match (&host, &baseline) {
            (Ok(a), Ok(b)) => {
                for (x, y) in a.iter().zip(b) {
                    close(x, y).unwrap_or_else(|e| panic!("host and baseline ISA differ: {e}"));
                }
            }
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("host {host:?}, baseline {baseline:?}"),
        }
        host
    }
}

fn floats(seed: u64, shape: &[usize], scale: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f32(shape, lcg(seed, n).into_iter().map(|v| v * scale).collect())
}

/// Integers of `dtype` covering its whole range (extremes included).
fn ints(dtype: DType, seed: u64, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let (lo, hi) = dtype.int_range().unwrap();
    let (lo, hi) = (lo as f64, hi as f64);
    let mut v: Vec<i64> = lcg(seed, n)
        .into_iter()
        .map(|r| (lo + (r as f64 + 1.0) / 2.0 * (hi - lo)).round() as i64)
        .collect();
    if n >= 2 {
        v[0] = lo as i64;
        v[1] = hi as i64;
    }
    Tensor::from_i64_values(dtype, shape.to_vec(), v).unwrap()
}

/// Floats within 1e-4 (relative above magnitude 1), integers exact.
fn close(got: &Tensor, want: &Tensor) -> Result<(), String> {
    got.disagreement(want, |a, b| (a - b).abs() <= 1e-4 * b.abs().max(1.0))
        .map_or(Ok(()), Err)
}

/// Runs `p` on `inputs` through the JIT and the interpreter and compares every output.
fn check(p: &Programs, g: &Graph, inputs: &[Tensor]) {
    let want = qlift_ir::interp::run(g, inputs).unwrap_or_else(|e| panic!("interpreter: {e}"));
    let got = p.run(inputs).unwrap_or_else(|e| panic!("JIT: {e}"));
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        close(a, b).unwrap_or_else(|e| panic!("output {i}: {e}"));
    }
}

fn same(text: &str, inputs: &[Tensor]) {
    let (g, p) = compile(text);
    check(&p, &g, inputs);
}

#[test]
fn broadcasting_patterns_with_the_batch() {
    let (g, p) = compile(
        "graph t(%a: f32[N,3,4,5], %b: f32[4,1], %c: f32[N,1,4,1], %d: f32[5]) -> (%y0, %y1, %y2, %y3, %y4, %y5, %y6) {
           %ch = const f32[3,1,1] [0.5, -2.0, 3.0]
           %s = const f32[] [1.5]
           %y0 = Add(%a, %a) : f32[N,3,4,5]
           %y1 = Sub(%b, %a) : f32[N,3,4,5]
           %y2 = Mul(%a, %c) : f32[N,3,4,5]
           %y3 = Div(%a, %d) : f32[N,3,4,5]
           %y4 = Mul(%ch, %a) : f32[N,3,4,5]
           %y5 = Sub(%a, %s) : f32[N,3,4,5]
           %y6 = Add(%b, %d) : f32[4,5]
         }",
    );
    for batch in [1, 3] {
        let inputs = [
            floats(1, &[batch, 3, 4, 5], 4.0),
            floats(2, &[4, 1], 4.0),
            floats(3, &[batch, 1, 4, 1], 2.0),
            floats(4, &[5], 3.0),
        ];
        check(&p, &g, &inputs);
    }
}

#[test]
fn batch_against_a_broadcast_sample() {
    // An operand with extent 1 on the batch axis is shared by every sample.
    let (g, p) = compile(
        "graph t(%a: f32[N,6], %b: f32[1,6]) -> (%y) {
           %y = Add(%a, %b) {act_min=0.0, act_max=6.0} : f32[N,6]
         }",
    );
    let mut a = floats(5, &[4, 6], 10.0);
    if let TensorData::F32(v) = a.data_mut() {
        v[3] = f32::NAN;
        v[4] = f32::INFINITY;
        v[5] = f32::NEG_INFINITY;
    }
    check(&p, &g, &[a, floats(6, &[1, 6], 3.0)]);
}

#[test]
fn integers_wrap_and_truncate() {
    for (dtype, name) in [
        (DType::I8, "i8"),
        (DType::U8, "u8"),
        (DType::I32, "i32"),
        (DType::I64, "i64"),
    ] {
        let text = format!(
            "graph t(%a: {name}[N,4,8], %b: {name}[8], %c: {name}[N,4,8]) -> (%add, %sub, %mul, %div, %bdiv) {{
               %add = Add(%a, %b) : {name}[N,4,8]
               %sub = Sub(%b, %a) : {name}[N,4,8]
               %mul = Mul(%a, %c) : {name}[N,4,8]
               %div = Div(%a, %b) : {name}[N,4,8]
               %bdiv = Div(%a, %c) : {name}[N,4,8]
             }}"
        );
        let (g, p) = compile(&text);
        for batch in [1, 2] {
            let a = ints(dtype, 7, &[batch, 4, 8]);
            // Divisors without zero, including -1 against the minimum (wraps) where signed.
            let mut bv = ints(dtype, 8, &[8]).to_i64_vec().unwrap();
            for v in bv.iter_mut().filter(|v| **v == 0) {
                *v = 3;
            }
            if dtype != DType::U8 {
                bv[2] = -1;
                bv[3] = -7;
            }
            let b = Tensor::from_i64_values(dtype, vec![8], bv).unwrap();
            let mut cv = ints(dtype, 9, &[batch, 4, 8]).to_i64_vec().unwrap();
            let nonzero = if dtype == DType::U8 { 1 } else { -1 };
            for v in cv.iter_mut().filter(|v| **v == 0) {
                *v = nonzero;
            }
            let c = Tensor::from_i64_values(dtype, vec![batch, 4, 8], cv).unwrap();
            check(&p, &g, &[a, b, c]);
        }
    }
}

#[test]
fn integer_division_by_zero_is_an_error_naming_the_node() {
    for name in ["i8", "u8", "i32", "i64"] {
        let text = format!("graph t(%a: {name}[N,3], %b: {name}[N,3]) -> (%y) {{\n  %y = Div(%a, %b) : {name}[N,3] @divide\n}}");
        let (g, p) = compile(&text);
        let dtype = g.value_type(g.input_values()[0]).dtype;
        let a = Tensor::from_i64_values(dtype, vec![2, 3], vec![1, 2, 3, 4, 5, 6]).unwrap();
        let b = Tensor::from_i64_values(dtype, vec![2, 3], vec![1, 1, 1, 1, 0, 1]).unwrap();
        let want = qlift_ir::interp::run(&g, &[a.clone(), b.clone()]).unwrap_err();
        assert!(want.to_string().contains("division by zero"), "{want}");
        let err = p.run(&[a.clone(), b]).unwrap_err();
        assert!(
            err.to_string().contains("node `divide`")
                && err.to_string().contains("integer division by zero"),
            "{err}"
        );
        // The program is still usable after the failure.
        let ok = Tensor::from_i64_values(dtype, vec![2, 3], vec![1, 2, 1, 2, 1, 2]).unwrap();
        check(&p, &g, &[a, ok]);
    }
    // A constant divisor with a zero is checked at run time too.
    let (g, p) = compile("graph t(%a: i32[N,2]) -> (%y) {\n  %z = const i32[2] [3, 0]\n  %y = Div(%a, %z) : i32[N,2] @dz\n}");
    let a = Tensor::new(DType::I32, vec![1, 2], TensorData::I32(vec![7, 8])).unwrap();
    assert!(qlift_ir::interp::run(&g, std::slice::from_ref(&a)).is_err());
    assert!(p.run(&[a]).unwrap_err().to_string().contains("node `dz`"));
}

/// Special values: NaN, ±Inf, ±0, tiny, and large magnitudes in both directions.
fn specials() -> Vec<f32> {
    let mut v = vec![
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        1e-7,
        -3.0,
        3.0,
        6.5,
        -6.5,
        20.0,
        -20.0,
        44.0,
        -44.0,
        88.0,
        -88.0,
        89.0,
        -89.0,
        104.0,
        -104.0,
        1e3,
        -1e3,
        1e30,
        -1e30,
        f32::MAX,
        f32::MIN,
    ];
    v.extend(lcg(11, 37).into_iter().map(|x| x * 8.0));
    v
}

#[test]
fn activations_on_special_values() {
    let x = specials();
    let n = x.len();
    let text = format!(
        "graph t(%x: f32[N,{n}]) -> (%relu, %clip, %clip_low, %clip_crossed, %leaky, %hsig, %hswish, %sig, %tanh, %add_relu6) {{
           %relu = Relu(%x) : f32[N,{n}]
           %clip = Clip(%x) {{max=6.0, min=-1.5}} : f32[N,{n}]
           %clip_low = Clip(%x) {{max=inf, min=0.0}} : f32[N,{n}]
           %clip_crossed = Clip(%x) {{max=-1.0, min=2.0}} : f32[N,{n}]
           %leaky = LeakyRelu(%x) {{alpha=0.1}} : f32[N,{n}]
           %hsig = HardSigmoid(%x) {{alpha=0.2, beta=0.5}} : f32[N,{n}]
           %hswish = HardSwish(%x) : f32[N,{n}]
           %sig = Sigmoid(%x) : f32[N,{n}]
           %tanh = Tanh(%x) : f32[N,{n}]
           %add_relu6 = Add(%x, %x) {{act_min=0.0, act_max=6.0}} : f32[N,{n}]
         }}"
    );
    let (g, p) = compile(&text);
    let mut both = x.clone();
    both.extend(x.iter().map(|v| -v));
    check(&p, &g, &[Tensor::from_f32(&[2, n], both)]);
    // Large |x|: exactly ±1 and 0/1, never NaN.
    let got = p.run(&[Tensor::from_f32(&[1, n], x.clone())]).unwrap();
    let (sig, tanh) = (got[7].as_f32().unwrap(), got[8].as_f32().unwrap());
    for (i, &v) in x.iter().enumerate().filter(|(_, v)| v.abs() >= 20.0) {
        assert_eq!(tanh[i], v.signum(), "tanh({v})");
        assert!(
            !sig[i].is_nan() && (0.0..=1.0).contains(&sig[i]),
            "sigmoid({v}) = {}",
            sig[i]
        );
    }
}

#[test]
fn sigmoid_and_tanh_over_a_wide_range() {
    let (g, p) = compile("graph t(%x: f32[N,256]) -> (%s, %t) {\n  %s = Sigmoid(%x) : f32[N,256]\n  %t = Tanh(%x) : f32[N,256]\n}");
    for scale in [0.01, 1.0, 10.0, 100.0, 1e4] {
        check(&p, &g, &[floats(12, &[3, 256], scale)]);
    }
}

#[test]
fn integer_relu_and_clip() {
    for (dtype, name) in [
        (DType::I8, "i8"),
        (DType::U8, "u8"),
        (DType::I32, "i32"),
        (DType::I64, "i64"),
    ] {
        let text = format!(
            "graph t(%x: {name}[N,40]) -> (%r, %c, %lo, %hi) {{
               %r = Relu(%x) : {name}[N,40]
               %c = Clip(%x) {{max=100.0, min=-20.0}} : {name}[N,40]
               %lo = Clip(%x) {{max=inf, min=5.0}} : {name}[N,40]
               %hi = Clip(%x) {{max=7.0, min=-inf}} : {name}[N,40]
             }}"
        );
        let (g, p) = compile(&text);
        check(&p, &g, &[ints(dtype, 13, &[3, 40])]);
    }
}

#[test]
fn softmax_along_each_axis_with_large_values() {
    for axis in [1u64, 2, 3] {
        let text = format!("graph t(%x: f32[N,3,4,5]) -> (%y) {{\n  %y = Softmax(%x) {{axis={axis}}} : f32[N,3,4,5]\n}}");
        let (g, p) = compile(&text);
        for scale in [1.0, 100.0, 1e4] {
            let mut x = floats(14 + axis, &[2, 3, 4, 5], scale);
            if let TensorData::F32(v) = x.data_mut() {
                v[0] = 1e30;
                v[7] = -1e30;
                v[8] = 3e38;
            }
            check(&p, &g, &[x]);
        }
    }
    // Along the batch axis, and on a value without the batch.
    let (g, p) = compile("graph t(%x: f32[N,7], %z: f32[3,7]) -> (%y, %w) {\n  %y = Softmax(%x) {axis=0} : f32[N,7]\n  %w = Softmax(%z) {axis=0} : f32[3,7]\n}");
    check(
        &p,
        &g,
        &[floats(15, &[4, 7], 50.0), floats(16, &[3, 7], 50.0)],
    );
}

/// Rows (the innermost axis, the vector kernel) with a NaN, a +inf, only -inf, and values
/// far below the others (whose `exp` is flushed to 0): the running maximum skips nothing
/// that changes the row.
#[test]
fn softmax_rows_with_nan_and_infinities() {
    let (g, p) =
        compile("graph t(%x: f32[N,3,8]) -> (%y) {\n  %y = Softmax(%x) {axis=2} : f32[N,3,8]\n}");
    let mut x = floats(17, &[2, 3, 8], 4.0);
    if let TensorData::F32(v) = x.data_mut() {
        v[1] = f32::NAN;
        v[9] = f32::INFINITY;
        v[16..24].fill(f32::NEG_INFINITY);
        v[25] = -1e4;
        v[30] = -200.0;
    }
    check(&p, &g, &[x]);
}

#[test]
fn batch_normalization_with_constant_and_runtime_parameters() {
    let (g, p) = compile(
        "graph t(%x: f32[N,3,2,5], %s: f32[3], %b: f32[3], %m: f32[3], %v: f32[3]) -> (%y, %z) {
           %cs = const f32[3] [1.5, -0.5, 2.0]
           %cb = const f32[3] [0.1, 0.2, -0.3]
           %cm = const f32[3] [1000.0, -2.0, 0.25]
           %cv = const f32[3] [4.0, 0.0, 1e-3]
           %y = BatchNormalization(%x, %cs, %cb, %cm, %cv) {epsilon=1e-5} : f32[N,3,2,5]
           %z = BatchNormalization(%x, %s, %b, %m, %v) {epsilon=0.01} : f32[N,3,2,5]
         }",
    );
    for batch in [1, 2] {
        let x = floats(17, &[batch, 3, 2, 5], 3.0);
        let v = Tensor::from_f32(&[3], vec![0.5, 2.0, 0.0]);
        check(
            &p,
            &g,
            &[
                x,
                floats(18, &[3], 2.0),
                floats(19, &[3], 1.0),
                floats(20, &[3], 1.0),
                v,
            ],
        );
    }
    let (g, p) = compile("graph t(%x: f32[N,4]) -> (%y) {\n  %o = const f32[4] [1.0, 1.0, 1.0, 1.0]\n  %z = const f32[4] [0.0, 0.0, 0.0, 0.0]\n  %y = BatchNormalization(%x, %o, %z, %z, %o) {epsilon=1e-5} : f32[N,4]\n}");
    check(&p, &g, &[floats(21, &[3, 4], 5.0)]);
}

#[test]
fn transposes() {
    // Every permutation of three axes, on a value without the batch.
    for perm in [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ] {
        let d = [2usize, 3, 4];
        let out: Vec<usize> = perm.iter().map(|&p| d[p]).collect();
        let text = format!(
            "graph t(%x: f32[2,3,4], %q: i8[2,3,4]) -> (%y, %z) {{\n  %y = Transpose(%x) {{perm={perm:?}}} : f32{out:?}\n  %z = Transpose(%q) {{perm={perm:?}}} : i8{out:?}\n}}"
        );
        same(&text, &[floats(22, &d, 1.0), ints(DType::I8, 23, &d)]);
    }
    // The batch stays on axis 0.
    let (g, p) = compile(
        "graph t(%x: f32[N,2,3,4], %w: i64[N,5,1,3]) -> (%a, %b, %c) {
           %a = Transpose(%x) {perm=[0, 2, 3, 1]} : f32[N,3,4,2]
           %b = Transpose(%x) {perm=[0, 3, 1, 2]} : f32[N,4,2,3]
           %c = Transpose(%w) {perm=[0, 3, 2, 1]} : i64[N,3,1,5]
         }",
    );
    for batch in [1, 3] {
        check(
            &p,
            &g,
            &[
                floats(24, &[batch, 2, 3, 4], 1.0),
                ints(DType::I64, 25, &[batch, 5, 1, 3]),
            ],
        );
    }
}

#[test]
fn transposing_the_batch_away_is_refused() {
    let g = parse(
        "graph t(%x: f32[N,3]) -> (%y) {\n  %y = Transpose(%x) {perm=[1, 0]} : f32[3,N] @tr\n}",
    )
    .unwrap();
    qlift_ir::verify(&g).unwrap();
    let err = JitProgram::compile(&g, &CodegenOptions::default())
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("node `tr`") && err.to_string().contains("batch"),
        "{err}"
    );
}

#[test]
fn concat_of_several_inputs() {
    let (g, p) = compile(
        "graph t(%a: f32[N,2,3], %b: f32[N,1,3], %c: f32[N,4,3]) -> (%y, %z) {
           %y = Concat(%a, %b, %c, %a) {axis=1} : f32[N,9,3]
           %z = Concat(%a, %a, %a) {axis=2} : f32[N,2,9]
         }",
    );
    for batch in [1, 2] {
        check(
            &p,
            &g,
            &[
                floats(26, &[batch, 2, 3], 1.0),
                floats(27, &[batch, 1, 3], 1.0),
                floats(28, &[batch, 4, 3], 1.0),
            ],
        );
    }
    // Quantized u8 with the same parameters, a constant part, and a long row (memcpy).
    let q = "quant(scale=0.05, zero_point=128)";
    let (g, p) = compile(&format!(
        "graph t(%a: u8[N,3,40] {q}, %b: u8[N,2,40] {q}) -> (%y, %w) {{
           %k = const u8[1,2] {q} [7, 250]
           %c = const u8[1,3] {q} [1, 2, 3]
           %y = Concat(%a, %b, %a) {{axis=1}} : u8[N,8,40] {q}
           %w = Concat(%k, %c, %k) {{axis=1}} : u8[1,7] {q}
         }}"
    ));
    check(
        &p,
        &g,
        &[
            ints(DType::U8, 29, &[2, 3, 40]),
            ints(DType::U8, 30, &[2, 2, 40]),
        ],
    );
    // Along axis 0 of values without the batch, i64.
    same(
        "graph t(%a: i64[2,3], %b: i64[1,3]) -> (%y) {\n  %y = Concat(%b, %a, %b) {axis=0} : i64[4,3]\n}",
        &[ints(DType::I64, 31, &[2, 3]), ints(DType::I64, 32, &[1, 3])],
    );
}

#[test]
fn pad_with_negative_pads_and_fills() {
    // Crop and pad on different axes, both sides.
    let (g, p) = compile(
        "graph t(%x: f32[N,3,4,5]) -> (%y, %z) {
           %y = Pad(%x) {mode=\"constant\", pads=[0, 1, -1, 2, 0, -1, 2, -2], value=1.5} : f32[N,3,5,5]
           %z = Pad(%x) {mode=\"constant\", pads=[0, -1, -2, -3, 0, -1, -1, -1], value=0.0} : f32[N,1,1,1]
         }",
    );
    for batch in [1, 2] {
        check(&p, &g, &[floats(33, &[batch, 3, 4, 5], 1.0)]);
    }
    // Quantized: the fill is the zero point; integers: the value truncated.
    let q = "quant(scale=0.1, zero_point=77)";
    let (g, p) = compile(&format!(
        "graph t(%x: u8[N,2,3] {q}, %i: i32[2,3]) -> (%y, %z) {{
           %y = Pad(%x) {{mode=\"constant\", pads=[0, 2, -1, 0, -1, 3], value=0.0}} : u8[N,3,5] {q}
           %z = Pad(%i) {{mode=\"constant\", pads=[1, 0, 0, 2], value=-3.7}} : i32[3,5]
         }}"
    ));
    check(
        &p,
        &g,
        &[
            ints(DType::U8, 34, &[2, 2, 3]),
            ints(DType::I32, 35, &[2, 3]),
        ],
    );
}

/// A graph applying each `(name, op with attributes)` to `%x: {dtype}[N,{n}]`, one output
/// per op (each result of the operand's type, or `result` when given).
fn unary_graph(ops: &[(&str, &str)], dtype: &str, n: usize, result: Option<&str>) -> String {
    let outs: Vec<String> = ops.iter().map(|(name, _)| format!("%{name}")).collect();
    let ty = format!("{}[N,{n}]", result.unwrap_or(dtype));
    let body: String = ops
        .iter()
        .map(|(name, op)| format!("  %{name} = {op} : {ty}\n"))
        .collect();
    format!(
        "graph t(%x: {dtype}[N,{n}]) -> ({}) {{\n{body}}}",
        outs.join(", ")
    )
}

#[test]
fn math_functions_and_activations_on_special_values() {
    let x = specials();
    let n = x.len();
    let ops = [
        ("sqrt", "Sqrt(%x)"),
        ("exp", "Exp(%x)"),
        ("log", "Log(%x)"),
        ("abs", "Abs(%x)"),
        ("neg", "Neg(%x)"),
        ("recip", "Reciprocal(%x)"),
        ("floor", "Floor(%x)"),
        ("ceil", "Ceil(%x)"),
        ("round", "Round(%x)"),
        ("erf", "Erf(%x)"),
        ("sin", "Sin(%x)"),
        ("cos", "Cos(%x)"),
        ("sign", "Sign(%x)"),
        ("gelu", "Gelu(%x) {approximate=\"none\"}"),
        ("gelu_tanh", "Gelu(%x) {approximate=\"tanh\"}"),
        ("elu", "Elu(%x) {alpha=0.7}"),
        ("selu", "Selu(%x) {alpha=1.6732632, gamma=1.050701}"),
        ("softplus", "Softplus(%x)"),
        ("mish", "Mish(%x)"),
        ("softsign", "Softsign(%x)"),
        ("thresholded", "ThresholdedRelu(%x) {alpha=1.5}"),
        ("celu", "Celu(%x) {alpha=2.0}"),
        ("celu_small", "Celu(%x) {alpha=0.5}"),
    ];
    let (g, p) = compile(&unary_graph(&ops, "f32", n, None));
    let mut both = x.clone();
    both.extend(x.iter().map(|v| -v));
    // Halves for Round, subnormals for Log.
    both.extend([
        0.5, 1.5, 2.5, -0.5, -2.5, 1e-40, 3e-45, -1e-40, 0.49999997, 8388609.0,
    ]);
    both.resize(3 * n, 0.25);
    check(&p, &g, &[Tensor::from_f32(&[3, n], both)]);
    for scale in [0.01, 1.0, 10.0, 100.0] {
        check(&p, &g, &[floats(40, &[2, n], scale)]);
    }
}

#[test]
fn integer_abs_neg_sign() {
    for (dtype, name) in [
        (DType::I8, "i8"),
        (DType::U8, "u8"),
        (DType::I32, "i32"),
        (DType::I64, "i64"),
    ] {
        let mut ops = vec![("abs", "Abs(%x)"), ("sign", "Sign(%x)")];
        if dtype != DType::U8 {
            ops.push(("neg", "Neg(%x)"));
        }
        let (g, p) = compile(&unary_graph(&ops, name, 41, None));
        check(&p, &g, &[ints(dtype, 41, &[3, 41])]);
    }
}

#[test]
fn variadic_min_max_sum_mean_and_prelu() {
    let (g, p) = compile(
        "graph t(%a: f32[N,3,4,5], %b: f32[4,1], %c: f32[N,1,4,1], %s: f32[3,1,1]) -> (%min, %max, %sum, %mean, %one, %prelu, %pscalar) {
           %k = const f32[] [0.25]
           %min = Min(%a, %b, %c) : f32[N,3,4,5]
           %max = Max(%b, %a, %c, %a) : f32[N,3,4,5]
           %sum = Sum(%a, %b, %c) : f32[N,3,4,5]
           %mean = Mean(%c, %a, %b) : f32[N,3,4,5]
           %one = Max(%a) : f32[N,3,4,5]
           %prelu = PRelu(%a, %s) : f32[N,3,4,5]
           %pscalar = PRelu(%a, %k) : f32[N,3,4,5]
         }",
    );
    for batch in [1, 3] {
        let mut a = floats(42, &[batch, 3, 4, 5], 4.0);
        if let TensorData::F32(v) = a.data_mut() {
            v[1] = f32::NAN;
            v[2] = f32::INFINITY;
            v[3] = f32::NEG_INFINITY;
            v[4] = -0.0;
        }
        check(
            &p,
            &g,
            &[
                a,
                floats(43, &[4, 1], 4.0),
                floats(44, &[batch, 1, 4, 1], 4.0),
                floats(45, &[3, 1, 1], 1.0),
            ],
        );
    }
    for (dtype, name) in [
        (DType::I8, "i8"),
        (DType::U8, "u8"),
        (DType::I32, "i32"),
        (DType::I64, "i64"),
    ] {
        let text = format!(
            "graph t(%a: {name}[N,4,8], %b: {name}[8], %c: {name}[N,4,8]) -> (%min, %max) {{
               %min = Min(%a, %b, %c) : {name}[N,4,8]
               %max = Max(%a, %b, %c) : {name}[N,4,8]
             }}"
        );
        let (g, p) = compile(&text);
        check(
            &p,
            &g,
            &[
                ints(dtype, 46, &[2, 4, 8]),
                ints(dtype, 47, &[8]),
                ints(dtype, 48, &[2, 4, 8]),
            ],
        );
    }
}

#[test]
fn pow_of_every_dtype_pairing() {
    // Constant exponents with an inline form, a general one, a tensor of exponents.
    let x = specials();
    let n = x.len();
    let mut text = format!("graph t(%x: f32[N,{n}], %e: f32[N,{n}], %i: i64[{n}]) -> (%p0, %p05, %p1, %p2, %p3, %pm1, %p25, %pe, %pi) {{\n");
    for (name, e) in [
        ("p0", "0.0"),
        ("p05", "0.5"),
        ("p1", "1.0"),
        ("p2", "2.0"),
        ("p3", "3.0"),
        ("pm1", "-1.0"),
        ("p25", "2.5"),
    ] {
        text += &format!(
            "  %c{name} = const f32[] [{e}]\n  %{name} = Pow(%x, %c{name}) : f32[N,{n}]\n"
        );
    }
    text += &format!("  %pe = Pow(%x, %e) : f32[N,{n}]\n  %pi = Pow(%x, %i) : f32[N,{n}]\n}}");
    let (g, p) = compile(&text);
    let mut both = x.clone();
    both.extend(x.iter().map(|v| -v));
    let exps = floats(49, &[2, n], 4.0);
    let iexps = Tensor::from_i64(&[n], (0..n as i64).map(|i| i % 7 - 3).collect());
    check(&p, &g, &[Tensor::from_f32(&[2, n], both), exps, iexps]);
    // Integer bases: integer exponents exactly (wrapping, negative ones), float ones through f64.
    for (dtype, name) in [(DType::I32, "i32"), (DType::I64, "i64")] {
        let text = format!(
            "graph t(%b: {name}[N,12], %e: {name}[12], %f: f32[12]) -> (%y, %z) {{
               %y = Pow(%b, %e) : {name}[N,12]
               %z = Pow(%b, %f) : {name}[N,12]
             }}"
        );
        let (g, p) = compile(&text);
        let b = Tensor::from_i64_values(
            dtype,
            vec![2, 12],
            (0..24)
                .map(|i| {
                    [3, -1, 1, 2, -2, 7, 5, -3, 10, 1, -1, 2][i % 12] * if i >= 12 { 3 } else { 1 }
                })
                .collect(),
        )
        .unwrap();
        let e = Tensor::from_i64_values(
            dtype,
            vec![12],
            vec![2, -3, -5, 40, 63, 0, 13, -1, 9, 100, 64, 7],
        )
        .unwrap();
        let f = Tensor::from_f32(
            &[12],
            vec![
                2.0,
                0.5,
                -1.0,
                10.5,
                1e3,
                f32::NAN,
                0.0,
                2.0,
                -0.5,
                3.0,
                f32::INFINITY,
                1.5,
            ],
        );
        check(&p, &g, &[b, e, f]);
        // Zero to a negative power is an error in both engines.
        let zero = Tensor::from_i64_values(dtype, vec![1, 12], vec![0; 12]).unwrap();
        let e = Tensor::from_i64_values(dtype, vec![12], vec![-1; 12]).unwrap();
        let f = Tensor::from_f32(&[12], vec![1.0; 12]);
        assert!(qlift_ir::interp::run(&g, &[zero.clone(), e.clone(), f.clone()]).is_err());
        assert!(p
            .run(&[zero, e, f])
            .unwrap_err()
            .to_string()
            .contains("negative power"));
    }
}

#[test]
fn mod_signs_and_errors() {
    let (g, p) = compile(
        "graph t(%a: f32[N,16], %b: f32[16]) -> (%c, %py) {
           %c = Mod(%a, %b) {fmod=1} : f32[N,16]
           %py = Mod(%a, %b) {fmod=0} : f32[N,16]
         }",
    );
    let inf = f32::INFINITY;
    let a = Tensor::from_f32(
        &[1, 16],
        vec![
            0.0,
            -0.0,
            5.5,
            -5.5,
            5.5,
            -5.5,
            inf,
            1.0,
            f32::NAN,
            3.0,
            -3.0,
            1.0,
            -1.0,
            7.25,
            1e30,
            -0.0,
        ],
    );
    let b = Tensor::from_f32(
        &[16],
        vec![
            -2.0, 2.0, 2.0, 2.0, -2.0, -2.0, 2.0, 0.0, 1.0, inf, inf, -inf, -inf, 0.5, 3.0, -2.0,
        ],
    );
    check(&p, &g, &[a, b]);
    check(
        &p,
        &g,
        &[floats(50, &[3, 16], 10.0), floats(51, &[16], 3.0)],
    );
    for (dtype, name) in [
        (DType::I8, "i8"),
        (DType::U8, "u8"),
        (DType::I32, "i32"),
        (DType::I64, "i64"),
    ] {
        let text = format!(
            "graph t(%a: {name}[N,4,8], %b: {name}[8]) -> (%c, %py) {{
               %c = Mod(%a, %b) {{fmod=1}} : {name}[N,4,8]
               %py = Mod(%a, %b) {{fmod=0}} : {name}[N,4,8] @py
             }}"
        );
        let (g, p) = compile(&text);
        let mut bv = ints(dtype, 52, &[8]).to_i64_vec().unwrap();
        for v in bv.iter_mut().filter(|v| **v == 0) {
            *v = 5;
        }
        if dtype != DType::U8 {
            bv[2] = -1;
            bv[3] = -7;
        }
        let b = Tensor::from_i64_values(dtype, vec![8], bv.clone()).unwrap();
        check(&p, &g, &[ints(dtype, 53, &[2, 4, 8]), b]);
        bv[5] = 0;
        let b = Tensor::from_i64_values(dtype, vec![8], bv).unwrap();
        let a = ints(dtype, 54, &[1, 4, 8]);
        assert!(qlift_ir::interp::run(&g, &[a.clone(), b.clone()])
            .unwrap_err()
            .to_string()
            .contains("division by zero"));
        assert!(p
            .run(&[a, b])
            .unwrap_err()
            .to_string()
            .contains("integer division by zero"));
    }
}

/// A bool tensor of `shape` from a seed.
fn bools(seed: u64, shape: &[usize]) -> Tensor {
    let v = lcg(seed, shape.iter().product())
        .into_iter()
        .map(|r| (r > 0.0) as u8)
        .collect();
    Tensor::new(DType::Bool, shape.to_vec(), TensorData::U8(v)).unwrap()
}

#[test]
fn comparisons_logic_and_where() {
    for (dtype, name) in [
        (DType::F32, "f32"),
        (DType::I8, "i8"),
        (DType::U8, "u8"),
        (DType::I32, "i32"),
        (DType::I64, "i64"),
    ] {
        let text = format!(
            "graph t(%a: {name}[N,3,8], %b: {name}[8]) -> (%eq, %gt, %ge, %lt, %le, %w) {{
               %eq = Equal(%a, %b) : bool[N,3,8]
               %gt = Greater(%a, %b) : bool[N,3,8]
               %ge = GreaterOrEqual(%b, %a) : bool[N,3,8]
               %lt = Less(%a, %b) : bool[N,3,8]
               %le = LessOrEqual(%a, %b) : bool[N,3,8]
               %w = Where(%gt, %a, %b) : {name}[N,3,8]
             }}"
        );
        let (g, p) = compile(&text);
        let (a, b) = if dtype == DType::F32 {
            let mut a = floats(55, &[2, 3, 8], 2.0);
            if let TensorData::F32(v) = a.data_mut() {
                v[0] = f32::NAN;
                v[1] = 0.5;
                v[2] = -0.0;
            }
            let mut b = floats(56, &[8], 2.0);
            if let TensorData::F32(v) = b.data_mut() {
                v[1] = 0.5;
                v[2] = 0.0;
                v[3] = f32::NAN;
            }
            (a, b)
        } else {
            // Few distinct values, so that equal pairs occur.
            let a = ints(dtype, 57, &[2, 3, 8]).to_i64_vec().unwrap();
            let b = ints(dtype, 58, &[8]).to_i64_vec().unwrap();
            let (lo, _) = dtype.int_range().unwrap();
            let few = |v: Vec<i64>| {
                v.into_iter()
                    .map(|x| x.rem_euclid(3) + lo.max(-1))
                    .collect::<Vec<_>>()
            };
            (
                Tensor::from_i64_values(dtype, vec![2, 3, 8], few(a)).unwrap(),
                Tensor::from_i64_values(dtype, vec![8], few(b)).unwrap(),
            )
        };
        check(&p, &g, &[a, b]);
    }
    // f32 and i32 take 16 elements a step (rows of 37: two steps and a remainder), against
    // a splat along the row and a contiguous operand.
    for (dtype, name) in [(DType::F32, "f32"), (DType::I32, "i32")] {
        let text = format!(
            "graph t(%a: {name}[N,3,37], %b: {name}[3,1], %c: {name}[N,3,37]) -> (%eq, %gt, %ge, %lt, %le, %ne) {{
               %eq = Equal(%a, %c) : bool[N,3,37]
               %gt = Greater(%a, %b) : bool[N,3,37]
               %ge = GreaterOrEqual(%b, %a) : bool[N,3,37]
               %lt = Less(%a, %c) : bool[N,3,37]
               %le = LessOrEqual(%c, %a) : bool[N,3,37]
               %ne = Equal(%b, %a) : bool[N,3,37]
             }}"
        );
        let (g, p) = compile(&text);
        let few = |seed: u64, shape: &[usize]| {
            let v: Vec<i64> = lcg(seed, shape.iter().product())
                .into_iter()
                .map(|r| (r * 3.0).round() as i64)
                .collect();
            match dtype {
                DType::F32 => Tensor::from_f32(
                    shape,
                    v.iter()
                        .map(|&x| if x == 3 { f32::NAN } else { x as f32 })
                        .collect(),
                ),
                _ => Tensor::from_i64_values(dtype, shape.to_vec(), v).unwrap(),
            }
        };
        for batch in [1, 2] {
            check(
                &p,
                &g,
                &[
                    few(65, &[batch, 3, 37]),
                    few(66, &[3, 1]),
                    few(67, &[batch, 3, 37]),
                ],
            );
        }
    }
    let (g, p) = compile(
        "graph t(%p: bool[N,2,6], %q: bool[6], %x: bool[N,1,6]) -> (%and, %or, %xor, %not, %eq, %w) {
           %and = And(%p, %q) : bool[N,2,6]
           %or = Or(%q, %p) : bool[N,2,6]
           %xor = Xor(%p, %q) : bool[N,2,6]
           %not = Not(%p) : bool[N,2,6]
           %eq = Equal(%p, %q) : bool[N,2,6]
           %w = Where(%q, %x, %p) : bool[N,2,6]
         }",
    );
    check(
        &p,
        &g,
        &[
            bools(59, &[3, 2, 6]),
            bools(60, &[6]),
            bools(61, &[3, 1, 6]),
        ],
    );
    // 4-byte branches take 16 elements a step: a contiguous condition, a splat one (along
    // the row), splat and contiguous branches.
    for (dtype, name) in [(DType::F32, "f32"), (DType::I32, "i32")] {
        let text = format!(
            "graph t(%c: bool[N,3,37], %s: bool[3,1], %x: {name}[N,3,37], %y: {name}[37], %z: {name}[3,1]) -> (%w, %v, %u) {{
               %w = Where(%c, %x, %y) : {name}[N,3,37]
               %v = Where(%s, %y, %x) : {name}[N,3,37]
               %u = Where(%c, %z, %x) : {name}[N,3,37]
             }}"
        );
        let (g, p) = compile(&text);
        let data = |seed: u64, shape: &[usize]| {
            if dtype == DType::F32 {
                floats(seed, shape, 5.0)
            } else {
                ints(dtype, seed, shape)
            }
        };
        for batch in [1, 2] {
            check(
                &p,
                &g,
                &[
                    bools(68, &[batch, 3, 37]),
                    bools(69, &[3, 1]),
                    data(70, &[batch, 3, 37]),
                    data(71, &[37]),
                    data(72, &[3, 1]),
                ],
            );
        }
    }
    // Where over every dtype, three-way broadcasting.
    for (dtype, name) in [
        (DType::F32, "f32"),
        (DType::I8, "i8"),
        (DType::U8, "u8"),
        (DType::I32, "i32"),
        (DType::I64, "i64"),
    ] {
        let text = format!("graph t(%c: bool[N,1,5], %x: {name}[4,1], %y: {name}[N,4,5]) -> (%w) {{\n  %w = Where(%c, %x, %y) : {name}[N,4,5]\n}}");
        let (g, p) = compile(&text);
        let (x, y) = if dtype == DType::F32 {
            (floats(62, &[4, 1], 1.0), floats(63, &[2, 4, 5], 1.0))
        } else {
            (ints(dtype, 62, &[4, 1]), ints(dtype, 63, &[2, 4, 5]))
        };
        check(&p, &g, &[bools(64, &[2, 1, 5]), x, y]);
    }
}

// ---- Resampling (kernels/resample.rs): Resize, Pad's other modes, DepthToSpace, SpaceToDepth.

/// Resize's attributes in the text format: `mode`, `coordinate_transformation_mode` and
/// `axes` given, the others ONNX's defaults unless `extra` overrides them.
fn resize_attrs(mode: &str, transform: &str, axes: &str, extra: &[(&str, &str)]) -> String {
    let mut attrs = vec![
        ("antialias", "0".to_string()),
        ("axes", axes.to_string()),
        ("coordinate_transformation_mode", format!("\"{transform}\"")),
        ("cubic_coeff_a", "-0.75".to_string()),
        ("exclude_outside", "0".to_string()),
        ("extrapolation_value", "0.0".to_string()),
        ("keep_aspect_ratio_policy", "\"stretch\"".to_string()),
        ("mode", format!("\"{mode}\"")),
        ("nearest_mode", "\"round_prefer_floor\"".to_string()),
    ];
    for (name, value) in extra {
        attrs
            .iter_mut()
            .find(|(n, _)| n == name)
            .expect("a Resize attribute")
            .1 = value.to_string();
    }
    attrs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn resize_modes_with_the_batch() {
    // (mode, transformation, other attributes, scales of H=5 and W=7, result H and W)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (
            "nearest",
            "asymmetric",
            &[("nearest_mode", "\"floor\"")],
            "[2.0, 3.0]",
            "10,21",
        ),
        (
            "nearest",
            "half_pixel",
            &[("nearest_mode", "\"round_prefer_ceil\"")],
            "[0.6, 1.5]",
            "3,10",
        ),
        ("linear", "half_pixel", &[], "[2.0, 2.5]", "10,17"),
        ("linear", "align_corners", &[], "[0.6, 1.7]", "3,11"),
        (
            "linear",
            "half_pixel",
            &[("antialias", "1")],
            "[0.4, 0.75]",
            "2,5",
        ),
        (
            "cubic",
            "pytorch_half_pixel",
            &[("exclude_outside", "1"), ("cubic_coeff_a", "-0.5")],
            "[1.6, 0.6]",
            "8,4",
        ),
        (
            "cubic",
            "half_pixel_symmetric",
            &[("antialias", "1")],
            "[0.7, 0.3]",
            "3,2",
        ),
    ];
    for (mode, transform, extra, scales, dims) in cases {
        let attrs = resize_attrs(mode, transform, "[2, 3]", extra);
        let (g, p) = compile(&format!(
            "graph t(%x: f32[N,2,5,7]) -> (%y) {{
               %s = const f32[2] {scales}
               %y = Resize(%x, _, %s) {{{attrs}}} : f32[N,2,{dims}]
             }}"
        ));
        for batch in [1, 3] {
            check(&p, &g, &[floats(40, &[batch, 2, 5, 7], 3.0)]);
        }
    }
}

#[test]
fn resize_integers_exactly_and_crops_with_extrapolation() {
    // Quantized u8 keeps its parameters; linear and cubic round half to even and saturate.
    let q = "quant(scale=0.1, zero_point=77)";
    for mode in ["nearest", "linear", "cubic"] {
        let attrs = resize_attrs(mode, "asymmetric", "[1, 2]", &[]);
        same(
            &format!(
                "graph t(%x: u8[N,6,5] {q}, %i: i32[3,4]) -> (%y, %z) {{
                   %s = const f32[2] [2.5, 1.5]
                   %t = const f32[2] [0.5, 2.0]
                   %y = Resize(%x, _, %s) {{{attrs}}} : u8[N,15,7] {q}
                   %z = Resize(%i, _, %t) {{{}}} : i32[1,8]
                 }}",
                resize_attrs(mode, "half_pixel", "[0, 1]", &[])
            ),
            &[
                ints(DType::U8, 41, &[2, 6, 5]),
                ints(DType::I32, 42, &[3, 4]),
            ],
        );
    }
    // tf_crop_and_resize with sizes, a window partly outside the input, and a fill.
    for mode in ["nearest", "linear"] {
        let attrs = resize_attrs(
            mode,
            "tf_crop_and_resize",
            "[2, 3]",
            &[("extrapolation_value", "-7.5")],
        );
        same(
            &format!(
                "graph t(%x: f32[N,1,4,5], %b: i8[2,1,4,5]) -> (%y, %z) {{
                   %roi = const f32[4] [0.2, -0.3, 1.4, 0.9]
                   %n = const i64[2] [3, 6]
                   %y = Resize(%x, %roi, _, %n) {{{attrs}}} : f32[N,1,3,6]
                   %z = Resize(%b, %roi, _, %n) {{{attrs}}} : i8[2,1,3,6]
                 }}"
            ),
            &[
                floats(43, &[2, 1, 4, 5], 2.0),
                ints(DType::I8, 44, &[2, 1, 4, 5]),
            ],
        );
    }
}

#[test]
fn pad_modes_and_blocks_with_the_batch() {
    let (g, p) = compile(
        "graph t(%x: f32[N,2,3,4], %q: i8[5,2]) -> (%r, %e, %w, %c) {
           %r = Pad(%x) {mode=\"reflect\", pads=[0, 0, 4, -1, 0, 1, 2, 5], value=0.0} : f32[N,3,9,8]
           %e = Pad(%x) {mode=\"edge\", pads=[0, 1, 0, 2, 0, 0, 3, 0], value=0.0} : f32[N,3,6,6]
           %w = Pad(%x) {mode=\"wrap\", pads=[0, 0, 5, 1, 0, 0, -1, 3], value=0.0} : f32[N,2,7,8]
           %c = Pad(%q) {mode=\"reflect\", pads=[1, -1, 2, 0], value=0.0} : i8[8,1]
         }",
    );
    for batch in [1, 2] {
        check(
            &p,
            &g,
            &[
                floats(45, &[batch, 2, 3, 4], 1.0),
                ints(DType::I8, 46, &[5, 2]),
            ],
        );
    }
    let (g, p) = compile(
        "graph t(%x: f32[N,8,2,3], %u: u8[2,2,4,6]) -> (%d, %c, %s, %t) {
           %d = DepthToSpace(%x) {blocksize=2, mode=\"DCR\"} : f32[N,2,4,6]
           %c = DepthToSpace(%x) {blocksize=2, mode=\"CRD\"} : f32[N,2,4,6]
           %s = SpaceToDepth(%u) {blocksize=2, mode=\"DCR\"} : u8[2,8,2,3]
           %t = SpaceToDepth(%u) {blocksize=2, mode=\"CRD\"} : u8[2,8,2,3]
         }",
    );
    for batch in [1, 3] {
        check(
            &p,
            &g,
            &[
                floats(47, &[batch, 8, 2, 3], 1.0),
                ints(DType::U8, 48, &[2, 2, 4, 6]),
            ],
        );
    }
}

// ---- Selection and placement (kernels/select.rs).

#[test]
fn one_hot_and_trilu_with_the_batch() {
    let (g, p) = compile(
        "graph t(%i: i64[N,3], %f: f32[2,2], %v: u8[2], %x: f32[N,2,3,4], %k: i64[]) -> (%a, %b, %c, %d, %e) {
           %depth = const i64[] [4]
           %d5 = const f32[1] [5.0]
           %pair = const f32[2] [-1.5, 2.5]
           %a = OneHot(%i, %depth, %pair) {axis=1} : f32[N,4,3]
           %b = OneHot(%i, %depth, %v) {axis=2} : u8[N,3,4]
           %c = OneHot(%f, %d5, %pair) {axis=0} : f32[5,2,2]
           %d = Trilu(%x, %k) {upper=1} : f32[N,2,3,4]
           %e = Trilu(%x) {upper=0} : f32[N,2,3,4]
         }",
    );
    for (batch, k) in [(1, 0), (2, -1), (3, 2)] {
        let indices = Tensor::from_i64(
            &[batch, 3],
            (0..3 * batch as i64).map(|v| v % 9 - 5).collect(),
        );
        let f = Tensor::from_f32(&[2, 2], vec![1.0, -1.0, 2.5, 4.0]);
        let v = Tensor::from_i64_values(DType::U8, vec![2], vec![7, 200]).unwrap();
        check(
            &p,
            &g,
            &[
                indices,
                f,
                v,
                floats(50, &[batch, 2, 3, 4], 1.0),
                Tensor::from_i64(&[], vec![k]),
            ],
        );
    }
}

#[test]
fn gathers_with_the_batch_and_indices_out_of_range() {
    let (g, p) = compile(
        "graph t(%x: f32[N,3,4], %i: i64[N,3,2], %j: i32[N,2,1], %q: i8[5,3]) -> (%e, %n, %m) {
           %t = const i64[2,1] [4, -1]
           %e = GatherElements(%x, %i) {axis=2} : f32[N,3,2]
           %n = GatherND(%x, %j) {batch_dims=1} : f32[N,2,4]
           %m = GatherND(%q, %t) {batch_dims=0} : i8[2,3]
         }",
    );
    for batch in [1, 2] {
        let i = Tensor::from_i64(
            &[batch, 3, 2],
            (0..6 * batch as i64).map(|v| v % 8 - 4).collect(),
        );
        let j = Tensor::from_i64_values(
            DType::I32,
            vec![batch, 2, 1],
            (0..2 * batch as i64).map(|v| -(v % 3)).collect(),
        )
        .unwrap();
        check(
            &p,
            &g,
            &[
                floats(51, &[batch, 3, 4], 1.0),
                i,
                j,
                ints(DType::I8, 52, &[5, 3]),
            ],
        );
    }
    // An index out of range fails in both engines with the axis named.
    let bad = [
        floats(51, &[1, 3, 4], 1.0),
        Tensor::from_i64(&[1, 3, 2], vec![0, 1, 2, 3, 4, 0]),
        Tensor::from_i64_values(DType::I32, vec![1, 2, 1], vec![0, 0]).unwrap(),
        ints(DType::I8, 52, &[5, 3]),
    ];
    let interp = qlift_ir::interp::run(&g, &bad).unwrap_err().to_string();
    let jit = p.run(&bad).unwrap_err().to_string();
    assert!(
        interp.contains("out of range") && jit.contains("out of range [-4, 4) on axis 2"),
        "{interp}\n{jit}"
    );
}

#[test]
fn scatters_with_every_reduction() {
    for r in ["none", "add", "mul", "max", "min"] {
        same(
            &format!(
                "graph t(%x: f32[N,3,4], %i: i64[N,3,2], %u: f32[N,3,2], %d: u8[4,3], %t: i64[3,1], %w: u8[3,3]) -> (%e, %n) {{
                   %e = ScatterElements(%x, %i, %u) {{axis=2, reduction=\"{r}\"}} : f32[N,3,4]
                   %n = ScatterND(%d, %t, %w) {{reduction=\"{r}\"}} : u8[4,3]
                 }}"
            ),
            &[
                floats(53, &[2, 3, 4], 2.0),
                Tensor::from_i64(&[2, 3, 2], vec![0, 3, -1, 1, 2, 2, 3, 0, 1, 1, -4, 2]),
                floats(54, &[2, 3, 2], 2.0),
                ints(DType::U8, 55, &[4, 3]),
                Tensor::from_i64(&[3, 1], vec![1, -1, 1]),
                ints(DType::U8, 56, &[3, 3]),
            ],
        );
    }
}

/// Bit-identical results (f32 compared by bits: the sign of zero and NaN payloads count),
/// for the kernels that only move or convert exactly.
fn identical(p: &Programs, g: &Graph, inputs: &[Tensor]) {
    let want = qlift_ir::interp::run(g, inputs).unwrap_or_else(|e| panic!("interpreter: {e}"));
    let got = p.run(inputs).unwrap_or_else(|e| panic!("JIT: {e}"));
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_eq!((a.dtype(), a.shape()), (b.dtype(), b.shape()), "output {i}");
        match (a.data(), b.data()) {
            (TensorData::F32(x), TensorData::F32(y)) => {
                for (k, (u, v)) in x.iter().zip(y).enumerate() {
                    assert_eq!(
                        u.to_bits(),
                        v.to_bits(),
                        "output {i} element {k}: {u} vs {v}"
                    );
                }
            }
            _ => assert_eq!(a, b, "output {i}"),
        }
    }
}

/// f32 values of `shape` drawn from [`specials`] (NaN, ±inf, ±0, extremes) and random ones.
fn special_floats(seed: u64, shape: &[usize]) -> Tensor {
    let pool = specials();
    let v = lcg(seed, shape.iter().product())
        .into_iter()
        .map(|r| pool[((r + 1.0) / 2.0 * pool.len() as f32) as usize % pool.len()])
        .collect();
    Tensor::from_f32(shape, v)
}

/// A pseudo-random extent in `lo..=hi`.
fn extent(seed: u64, lo: usize, hi: usize) -> usize {
    lo + (((lcg(seed, 1)[0] + 1.0) / 2.0) * (hi - lo + 1) as f32) as usize % (hi - lo + 1)
}

#[test]
fn casts_to_f32_of_every_integer_width_and_remainder() {
    for (seed, n) in [1usize, 15, 16, 17, 31, 33, 257].into_iter().enumerate() {
        for from in [DType::Bool, DType::U8, DType::I8, DType::I32] {
            let rows = extent(seed as u64 + 40, 1, 3);
            let text = format!(
                "graph t(%x: {from}[N,{rows},{n}]) -> (%y) {{\n  %y = Cast(%x) {{to=\"f32\"}} : f32[N,{rows},{n}]\n}}"
            );
            let (g, p) = compile(&text);
            for batch in [1, 2] {
                let shape = [batch, rows, n];
                let x = match from {
                    DType::Bool => bools(seed as u64, &shape),
                    // i32 across its range: conversions that round (to nearest even).
                    _ => ints(from, seed as u64, &shape),
                };
                identical(&p, &g, &[x]);
            }
        }
    }
}

#[test]
fn slices_copy_contiguous_runs_and_identity_slices() {
    // (input dims, starts, ends, axes, steps, result dims): rows kept whole (runs of 16 bytes
    // and more, with remainders), an identity slice with masked ends, short rows, strides.
    let cases: [(&str, &str, &str, &str, &str, &str); 5] = [
        ("5,7,9", "1,2", "4,7", "0,1", "1,1", "3,5,9"),
        (
            "4,3,17,1",
            "0,0,0,0",
            "1000000000,1000000000,1000000000,1000000000",
            "0,2,1,3",
            "1,1,1,1",
            "4,3,17,1",
        ),
        ("6,3", "1", "5", "1", "1", "6,2"),
        ("6,10", "-2,9", "-7,0", "0,1", "-1,-3", "5,3"),
        ("3,41", "0,5", "2,1000", "0,1", "1,1", "2,36"),
    ];
    for (i, (dims, starts, ends, axes, steps, out)) in cases.into_iter().enumerate() {
        let r = starts.split(',').count();
        for dtype in ["f32", "i8", "i64"] {
            let text = format!(
                "graph t(%x: {dtype}[N,{dims}]) -> (%y) {{
                   %s = const i64[{r}] [{starts}]
                   %e = const i64[{r}] [{ends}]
                   %a = const i64[{r}] [{}]
                   %k = const i64[{r}] [{steps}]
                   %y = Slice(%x, %s, %e, %a, %k) : {dtype}[N,{out}]
                 }}",
                axes.split(',')
                    .map(|a| (a.parse::<i64>().unwrap() + 1).to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let (g, p) = compile(&text);
            for batch in [1, 2] {
                let mut shape = vec![batch];
                shape.extend(dims.split(',').map(|d| d.parse::<usize>().unwrap()));
                let x = match dtype {
                    "f32" => special_floats(i as u64, &shape),
                    "i8" => ints(DType::I8, i as u64, &shape),
                    _ => ints(DType::I64, i as u64, &shape),
                };
                identical(&p, &g, &[x]);
            }
        }
    }
}

#[test]
fn transposes_in_tiles_with_remainders() {
    // Random 2-D extents (whole 4×4 tiles, leftover rows and columns, fewer than 4), and
    // the magika layout [N,C,L,1] → [N,L,C,1], for 4-byte (tiled) and 1-byte elements.
    for seed in 0..8u64 {
        let (a, b) = (extent(2 * seed + 100, 1, 13), extent(2 * seed + 101, 1, 13));
        for dtype in ["f32", "i32", "i8"] {
            let text = format!(
                "graph t(%x: {dtype}[N,{a},{b},1], %w: {dtype}[{a},3,{b}]) -> (%y, %z) {{
                   %y = Transpose(%x) {{perm=[0, 2, 1, 3]}} : {dtype}[N,{b},{a},1]
                   %z = Transpose(%w) {{perm=[2, 1, 0]}} : {dtype}[{b},3,{a}]
                 }}"
            );
            let (g, p) = compile(&text);
            for batch in [1, 2] {
                let (s1, s2) = (vec![batch, a, b, 1], vec![a, 3, b]);
                let inputs = match dtype {
                    "f32" => vec![special_floats(seed, &s1), special_floats(seed + 7, &s2)],
                    "i32" => vec![ints(DType::I32, seed, &s1), ints(DType::I32, seed + 7, &s2)],
                    _ => vec![ints(DType::I8, seed, &s1), ints(DType::I8, seed + 7, &s2)],
                };
                identical(&p, &g, &inputs);
            }
        }
    }
}

#[test]
fn global_max_pool_skips_nan_and_orders_zeros() {
    for (seed, plane) in [
        (1usize, 1usize),
        (2, 3),
        (3, 1),
        (4, 15),
        (5, 16),
        (6, 17),
        (7, 33),
        (8, 508),
    ] {
        let (c, h) = (extent(seed as u64 + 60, 1, 5), plane);
        let text = format!(
            "graph t(%x: f32[N,{c},{h}], %w: f32[N,{c},{h},2]) -> (%y, %z) {{
               %y = GlobalMaxPool(%x) : f32[N,{c},1]
               %z = GlobalMaxPool(%w) : f32[N,{c},1,1]
             }}"
        );
        let (g, p) = compile(&text);
        for batch in [1, 2] {
            let shape = [batch, c, h];
            let mut x = special_floats(seed as u64, &shape).to_f32_vec();
            let n = x.len();
            // Planes of only NaN (→ −inf), of ±0 in both orders, of −inf and NaN.
            let planes: [&[f32]; 4] = [
                &[f32::NAN, -f32::NAN],
                &[-0.0, 0.0],
                &[0.0, -0.0, f32::NAN],
                &[f32::NEG_INFINITY, f32::NAN],
            ];
            for (j, fill) in planes.into_iter().enumerate().take(batch * c) {
                for (i, v) in x[j * h..(j + 1) * h].iter_mut().enumerate() {
                    *v = fill[i % fill.len()];
                }
            }
            let w = special_floats(seed as u64 + 3, &[batch, c, h, 2]);
            assert_eq!(n, batch * c * h);
            identical(&p, &g, &[Tensor::from_f32(&shape, x), w]);
        }
    }
}
