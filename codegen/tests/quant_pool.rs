//! The quantization and pooling kernels against the reference interpreter, bit for bit, on
//! small IR graphs fed with deterministic pseudo-random data at batch sizes 1 to 4.

mod common;
use common::pooled;
use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::text::parse;
use qlift_ir::{DType, Tensor, TensorData};

/// A small deterministic generator (Knuth's MMIX LCG), so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    /// Uniform in `[lo, hi)`.
    fn float(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * (self.next() as f32 / (1u64 << 31) as f32)
    }
}

/// How f32 inputs are drawn.
#[derive(Clone, Copy)]
enum Floats {
    /// Uniform in [-range, range).
    Uniform(f32),
    /// Mostly uniform, with NaN, ±inf, huge values and exact rounding ties mixed in.
    Special(f32),
}

fn input(rng: &mut Lcg, dtype: DType, shape: &[usize], floats: Floats) -> Tensor {
    let n: usize = shape.iter().product();
    match dtype {
        DType::F32 => {
            let v = (0..n)
                .map(|_| match floats {
                    Floats::Uniform(r) => rng.float(-r, r),
                    Floats::Special(r) => match rng.next() % 12 {
                        0 => f32::NAN,
                        1 => f32::INFINITY,
                        2 => f32::NEG_INFINITY,
                        3 => {
                            3.0e38
                                * if rng.next().is_multiple_of(2) {
                                    1.0
                                } else {
                                    -1.0
                                }
                        }
                        4 => 1.0e10 * rng.float(-1.0, 1.0),
                        // Ties of x / scale for the scales the tests use (0.5, 0.25 exact).
                        5 => (rng.next() % 64) as f32 * 0.25 - 8.125,
                        6 => (rng.next() % 64) as f32 * 0.5 - 16.25,
                        _ => rng.float(-r, r),
                    },
                })
                .collect();
            Tensor::from_f32(shape, v)
        }
        _ => {
            let (lo, hi) = dtype.int_range().unwrap();
            let (lo, hi) = (lo.max(-100_000), hi.min(100_000));
            let v = (0..n)
                .map(|_| lo + (rng.next() as i64).rem_euclid(hi - lo + 1))
                .collect();
            Tensor::from_i64_values(dtype, shape.to_vec(), v).unwrap()
        }
    }
}

/// Bitwise equality (NaN equal to NaN): what "bit-identical to the interpreter" means.
fn identical(a: &Tensor, b: &Tensor) -> bool {
    if a.dtype() != b.dtype() || a.shape() != b.shape() {
        return false;
    }
    match (a.data(), b.data()) {
        (TensorData::F32(x), TensorData::F32(y)) => x
            .iter()
            .zip(y)
            .all(|(p, q)| p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan())),
        _ => a == b,
    }
}

/// Compiles `text` and checks JIT == interpreter on random inputs for batch 1 to 4 (inputs
/// without a batch axis keep their shape).
fn same(text: &str, floats: Floats) {
    let g = parse(text).unwrap_or_else(|e| panic!("{e}"));
    qlift_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    let p = JitProgram::compile(&g, &CodegenOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut rng = Lcg(0x5eed ^ text.len() as u64);
    for batch in 1..=4 {
        let inputs: Vec<Tensor> = g
            .input_values()
            .iter()
            .map(|&v| {
                let ty = g.value_type(v);
                input(&mut rng, ty.dtype, &ty.shape.resolve(batch), floats)
            })
            .collect();
        let want =
            qlift_ir::interp::run(&g, &inputs).unwrap_or_else(|e| panic!("interpreter: {e}"));
        let got = p.run(&inputs).unwrap_or_else(|e| panic!("JIT: {e}"));
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(identical(a, b), "batch {batch}, output {i}:\nJIT         {a:?}\ninterpreter {b:?}\ninputs {inputs:?}");
        }
    }
}

#[test]
fn quantize_and_dequantize_per_tensor() {
    same(
        "graph t(%x: f32[N,3,7]) -> (%q, %r, %d, %e) {
           %q = QuantizeLinear(%x) : u8[N,3,7] quant(scale=0.5, zero_point=7)
           %r = QuantizeLinear(%x) : i8[N,3,7] quant(scale=0.25, zero_point=-3)
           %d = DequantizeLinear(%q) : f32[N,3,7]
           %e = DequantizeLinear(%r) : f32[N,3,7]
         }",
        Floats::Special(40.0),
    );
    same(
        "graph t(%x: f32[N,9]) -> (%q, %d) {
           %q = QuantizeLinear(%x) : i8[N,9] quant(scale=0.0371, zero_point=5)
           %d = DequantizeLinear(%q) : f32[N,9]
         }",
        Floats::Special(6.0),
    );
}

#[test]
fn quantize_and_dequantize_per_axis() {
    same(
        "graph t(%x: f32[N,4,3,2]) -> (%q, %r, %d, %e) {
           %q = QuantizeLinear(%x) : u8[N,4,3,2] quant(axis=1, scale=[0.5, 0.25, 0.03, 1.5], zero_point=[0, 128, 7, 255])
           %r = QuantizeLinear(%x) : i8[N,4,3,2] quant(axis=3, scale=[0.25, 0.0625], zero_point=[-128, 3])
           %d = DequantizeLinear(%q) : f32[N,4,3,2]
           %e = DequantizeLinear(%r) : f32[N,4,3,2]
         }",
        Floats::Special(20.0),
    );
}

#[test]
fn quantize_without_batch_and_4_bit() {
    same(
        "graph t(%x: f32[3,5]) -> (%q, %u, %d) {
           %q = QuantizeLinear(%x) : i4[3,5] quant(axis=0, scale=[0.5, 1.0, 2.0], zero_point=[0, -2, 3])
           %u = QuantizeLinear(%x) : u4[3,5] quant(scale=0.5, zero_point=8)
           %d = DequantizeLinear(%q) : f32[3,5]
         }",
        Floats::Special(8.0),
    );
}

#[test]
fn i32_quantize_and_dequantize() {
    same(
        "graph t(%x: i32[N,6], %w: i32[N,2,3] quant(axis=2, scale=[0.001, 0.5, 3.0e-7], zero_point=[0, 0, 0])) -> (%q, %d, %e) {
           %q = QuantizeLinear(%x) : i8[N,6] quant(scale=313.7, zero_point=-1)
           %d = DequantizeLinear(%q) : f32[N,6]
           %e = DequantizeLinear(%w) : f32[N,2,3]
         }",
        Floats::Uniform(1.0),
    );
}

#[test]
fn requantize_with_clamps() {
    same(
        "graph t(%x: u8[N,2,9] quant(scale=0.1, zero_point=128), %z: i8[N,11] quant(scale=0.02, zero_point=-5)) -> (%a, %b, %c, %d) {
           %a = Requantize(%x) : u8[N,2,9] quant(scale=0.05, zero_point=10)
           %b = Requantize(%x) {act_max=6.0, act_min=0.0} : u8[N,2,9] quant(scale=0.05, zero_point=10)
           %c = Requantize(%x) {act_max=1.5, act_min=-2.0} : i8[N,2,9] quant(scale=0.3, zero_point=1)
           %d = Requantize(%z) {act_max=inf, act_min=0.0} : u8[N,11] quant(scale=0.017, zero_point=3)
         }",
        Floats::Uniform(1.0),
    );
}

#[test]
fn qadd_broadcasts_with_different_scales() {
    same(
        "graph t(%a: u8[N,3,4,5] quant(scale=0.1, zero_point=128), %b: u8[3,1,1] quant(scale=0.37, zero_point=3),
                 %c: i8[N,1,4,1] quant(scale=0.02, zero_point=-7), %e: i8[5] quant(scale=0.5, zero_point=0)) -> (%x, %y, %z, %w) {
           %x = QAdd(%a, %b) : u8[N,3,4,5] quant(scale=0.2, zero_point=100)
           %y = QAdd(%a, %c) {act_max=6.0, act_min=0.0} : u8[N,3,4,5] quant(scale=0.05, zero_point=0)
           %z = QAdd(%c, %e) : i8[N,1,4,5] quant(scale=0.13, zero_point=2)
           %w = QAdd(%a, %a) {act_max=inf, act_min=0.0} : i8[N,3,4,5] quant(scale=0.3, zero_point=-1)
         }",
        Floats::Uniform(1.0),
    );
}

#[test]
fn qconcat_rescales_each_part() {
    same(
        "graph t(%a: u8[N,2,3] quant(scale=0.1, zero_point=128), %b: u8[N,4,3] quant(scale=0.05, zero_point=10),
                 %c: u8[N,1,3] quant(scale=0.2, zero_point=0)) -> (%x, %y, %z) {
           %x = QConcat(%a, %b, %c) {axis=1} : u8[N,7,3] quant(scale=0.1, zero_point=128)
           %y = QConcat(%a, %c, %b) {axis=1} : u8[N,7,3] quant(scale=0.07, zero_point=20)
           %z = QConcat(%a, %a) {axis=2} : u8[N,2,6] quant(scale=0.3, zero_point=5)
         }",
        Floats::Uniform(1.0),
    );
}

/// A pool node's attributes and result dims for input spatial extents `spatial`.
struct Window<'a> {
    kernel: &'a [usize],
    strides: &'a [usize],
    dilations: &'a [usize],
    pads: &'a [usize],
    ceil: bool,
}

impl Window<'_> {
    fn attrs(&self, include_pad: Option<bool>) -> String {
        let list = |v: &[usize]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let pad = include_pad.map_or(String::new(), |p| {
            format!("count_include_pad={}, ", p as i32)
        });
        format!(
            "{{ceil_mode={}, {pad}dilations=[{}], kernel_shape=[{}], pads=[{}], strides=[{}]}}",
            self.ceil as i32,
            list(self.dilations),
            list(self.kernel),
            list(self.pads),
            list(self.strides)
        )
    }

    fn out(&self, spatial: &[usize]) -> Vec<usize> {
        let r = spatial.len();
        (0..r)
            .map(|a| {
                pooled(
                    spatial[a],
                    self.kernel[a],
                    self.strides[a],
                    self.dilations[a],
                    self.pads[a],
                    self.pads[a + r],
                    self.ceil,
                )
            })
            .collect()
    }
}

fn dims(v: &[usize]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Every pool of the family on one window: f32 max and averages, u8/i8 max, QAveragePool.
fn pools(spatial: &[usize], w: &Window) {
    let (sp, out) = (dims(spatial), dims(&w.out(spatial)));
    let text = format!(
        "graph t(%x: f32[N,3,{sp}], %u: u8[N,2,{sp}] quant(scale=0.1, zero_point=128), %i: i8[N,2,{sp}] quant(scale=0.03, zero_point=-4)) -> (%m, %a, %b, %mu, %mi, %qa, %qb, %qi) {{
           %m = MaxPool(%x) {max} : f32[N,3,{out}]
           %a = AveragePool(%x) {avg0} : f32[N,3,{out}]
           %b = AveragePool(%x) {avg1} : f32[N,3,{out}]
           %mu = MaxPool(%u) {max} : u8[N,2,{out}] quant(scale=0.1, zero_point=128)
           %mi = MaxPool(%i) {max} : i8[N,2,{out}] quant(scale=0.03, zero_point=-4)
           %qa = QAveragePool(%u) {qavg0} : u8[N,2,{out}] quant(scale=0.07, zero_point=120)
           %qb = QAveragePool(%u) {qavg1} : u8[N,2,{out}] quant(scale=0.1, zero_point=128)
           %qi = QAveragePool(%i) {qavg2} : i8[N,2,{out}] quant(scale=0.01, zero_point=-128)
         }}",
        max = w.attrs(None),
        avg0 = w.attrs(Some(false)),
        avg1 = w.attrs(Some(true)),
        qavg0 = w.attrs(Some(false)),
        qavg1 = w.attrs(Some(true)),
        qavg2 = w.attrs(Some(false)),
    );
    same(&text, Floats::Uniform(10.0));
}

#[test]
fn pools_default_1d_2d_3d() {
    pools(
        &[7],
        &Window {
            kernel: &[3],
            strides: &[1],
            dilations: &[1],
            pads: &[0, 0],
            ceil: false,
        },
    );
    pools(
        &[5, 6],
        &Window {
            kernel: &[2, 3],
            strides: &[1, 1],
            dilations: &[1, 1],
            pads: &[0; 4],
            ceil: false,
        },
    );
    pools(
        &[4, 5, 3],
        &Window {
            kernel: &[2, 2, 2],
            strides: &[1, 2, 1],
            dilations: &[1; 3],
            pads: &[0; 6],
            ceil: false,
        },
    );
}

#[test]
fn pools_with_pads_and_strides() {
    pools(
        &[7, 5],
        &Window {
            kernel: &[3, 3],
            strides: &[2, 2],
            dilations: &[1, 1],
            pads: &[1, 1, 1, 1],
            ceil: false,
        },
    );
    pools(
        &[6, 6],
        &Window {
            kernel: &[3, 2],
            strides: &[1, 3],
            dilations: &[1, 1],
            pads: &[2, 0, 1, 1],
            ceil: false,
        },
    );
    pools(
        &[3],
        &Window {
            kernel: &[3],
            strides: &[1],
            dilations: &[1],
            pads: &[2, 2],
            ceil: false,
        },
    );
}

#[test]
fn pools_with_ceil_mode() {
    pools(
        &[4, 4],
        &Window {
            kernel: &[3, 3],
            strides: &[2, 2],
            dilations: &[1, 1],
            pads: &[0; 4],
            ceil: true,
        },
    );
    pools(
        &[6, 7],
        &Window {
            kernel: &[3, 3],
            strides: &[2, 2],
            dilations: &[1, 1],
            pads: &[1, 1, 1, 1],
            ceil: true,
        },
    );
    pools(
        &[5, 5, 5],
        &Window {
            kernel: &[2, 3, 2],
            strides: &[2, 2, 3],
            dilations: &[1; 3],
            pads: &[1, 0, 1, 0, 1, 1],
            ceil: true,
        },
    );
}

#[test]
fn pools_with_dilations() {
    pools(
        &[6, 7],
        &Window {
            kernel: &[2, 2],
            strides: &[1, 1],
            dilations: &[2, 3],
            pads: &[0; 4],
            ceil: false,
        },
    );
    pools(
        &[8, 8],
        &Window {
            kernel: &[3, 3],
            strides: &[3, 2],
            dilations: &[2, 2],
            pads: &[1, 2, 1, 0],
            ceil: true,
        },
    );
    pools(
        &[5, 5, 5],
        &Window {
            kernel: &[2, 2, 2],
            strides: &[1; 3],
            dilations: &[2; 3],
            pads: &[1; 6],
            ceil: false,
        },
    );
}

#[test]
fn global_pools() {
    same(
        "graph t(%x: f32[N,3,4,5], %y: f32[N,2,7], %u: u8[N,4,3,3] quant(scale=0.1, zero_point=128), %i: i8[N,2,2,2,2] quant(scale=0.02, zero_point=3)) -> (%a, %m, %b, %n, %qa, %qb, %qi) {
           %a = GlobalAveragePool(%x) : f32[N,3,1,1]
           %m = GlobalMaxPool(%x) : f32[N,3,1,1]
           %b = GlobalAveragePool(%y) : f32[N,2,1]
           %n = GlobalMaxPool(%y) : f32[N,2,1]
           %qa = QGlobalAveragePool(%u) : u8[N,4,1,1] quant(scale=0.01, zero_point=128)
           %qb = QGlobalAveragePool(%u) : u8[N,4,1,1] quant(scale=0.03, zero_point=0)
           %qi = QGlobalAveragePool(%i) : i8[N,2,1,1,1] quant(scale=0.005, zero_point=-10)
         }",
        Floats::Uniform(100.0),
    );
}

#[test]
fn max_pools_skip_nan_like_the_interpreter() {
    same(
        "graph t(%x: f32[N,2,5,5]) -> (%m, %g) {
           %m = MaxPool(%x) {ceil_mode=0, dilations=[1, 1], kernel_shape=[2, 2], pads=[1, 1, 1, 1], strides=[1, 1]} : f32[N,2,6,6]
           %g = GlobalMaxPool(%x) : f32[N,2,1,1]
         }",
        Floats::Special(5.0),
    );
}

#[test]
fn quantize_vectors_saturate_round_and_map_nan_at_every_extent() {
    // Extents around the 16-element step (remainders), zero points at the range's ends (so
    // the clamp bounds lo − zp, hi − zp are far from 0), scales that saturate most values.
    let mut rng = Lcg(0x9a7);
    for n in [1usize, 15, 16, 17, 31, 48, 100] {
        for (dtype, lo, hi) in [("u8", 0, 255), ("i8", -128, 127), ("i16", -32768, 32767)] {
            let zp = [lo, hi, (lo + hi) / 2][rng.next() as usize % 3];
            let scale = [0.0371f32, 0.25, 1e-3, 3.5][rng.next() as usize % 4];
            same(
                &format!(
                    "graph t(%x: f32[N,2,{n}]) -> (%q, %d) {{
                       %q = QuantizeLinear(%x) : {dtype}[N,2,{n}] quant(scale={scale}, zero_point={zp})
                       %d = DequantizeLinear(%q) : f32[N,2,{n}]
                     }}"
                ),
                Floats::Special(40.0),
            );
        }
    }
}

/// The 8-bit pools' vector form (`byte_blocks.rs`) on the shapes that decide its blocks:
/// narrow planes whose rows share a block (digits_mobile's 4×4; 3-wide rows in groups of
/// five with a shorter last group), rows of 16 and more outputs in blocks with a partial
/// last one, stride 2 (lanes spanning two loads), a 7×7 window, strided and dilated
/// windows, and the clipped counts of `count_include_pad = 0` and `ceil_mode`; u8 and i8.
/// Every QAveragePool and MaxPool must be in that form, and bit-identical to the
/// interpreter (batches 1–4).
#[test]
fn eight_bit_pools_in_vector_blocks() {
    let window = |kernel, strides, dilations, pads, ceil| Window {
        kernel,
        strides,
        dilations,
        pads,
        ceil,
    };
    let cases: [(&[usize], Window); 8] = [
        (&[4, 4], window(&[3, 3], &[1, 1], &[1, 1], &[1; 4], false)),
        (&[11, 3], window(&[3, 3], &[1, 1], &[1, 1], &[1; 4], false)),
        (&[5, 6], window(&[2, 3], &[1, 1], &[1, 1], &[0; 4], false)),
        (&[20, 37], window(&[3, 3], &[1, 1], &[1, 1], &[1; 4], false)),
        (&[15, 40], window(&[3, 3], &[2, 2], &[1, 1], &[1; 4], false)),
        (&[9, 9], window(&[7, 7], &[1, 1], &[1, 1], &[3; 4], false)),
        (&[6, 7], window(&[3, 3], &[2, 2], &[1, 1], &[1; 4], true)),
        (
            &[8, 8],
            window(&[3, 3], &[3, 2], &[2, 2], &[1, 2, 1, 0], true),
        ),
    ];
    for (spatial, w) in cases {
        let (sp, out) = (dims(spatial), dims(&w.out(spatial)));
        let text = format!(
            "graph t(%u: u8[N,3,{sp}] quant(scale=0.1, zero_point=128), %i: i8[N,2,{sp}] quant(scale=0.03, zero_point=-4)) -> (%qa, %qb, %qi, %mu, %mi) {{
               %qa = QAveragePool(%u) {a} : u8[N,3,{out}] quant(scale=0.07, zero_point=120)
               %qb = QAveragePool(%u) {b} : u8[N,3,{out}] quant(scale=0.1, zero_point=128)
               %qi = QAveragePool(%i) {a} : i8[N,2,{out}] quant(scale=0.01, zero_point=-128)
               %mu = MaxPool(%u) {m} : u8[N,3,{out}] quant(scale=0.1, zero_point=128)
               %mi = MaxPool(%i) {m} : i8[N,2,{out}] quant(scale=0.03, zero_point=-4)
             }}",
            a = w.attrs(Some(false)),
            b = w.attrs(Some(true)),
            m = w.attrs(None),
        );
        let g = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let p =
            JitProgram::compile(&g, &CodegenOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let forms: Vec<(&str, &str)> = p
            .program()
            .steps
            .iter()
            .map(|s| (s.op.as_str(), s.form.as_str()))
            .collect();
        let expected = |op: &str| match op {
            "QAveragePool" => "QAveragePool-rows",
            _ => "vector-rows",
        };
        assert!(
            forms.iter().all(|&(op, form)| form == expected(op)) && forms.len() == 5,
            "{forms:?}\n{text}"
        );
        same(&text, Floats::Uniform(1.0));
    }
}
