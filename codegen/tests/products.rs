//! The product kernels (QConv, QMatMul, Conv, Gemm, MatMul) against the reference
//! interpreter on randomized graphs: integer results bit for bit, float results within 1e-4
//! (relative above magnitude 1). Shapes, strides, pads, dilations, groups, dtypes, zero
//! points and quantization layouts are drawn from a small deterministic LCG, so a failure
//! reproduces from its printed case number and graph.

use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::text::parse;
use qlift_ir::{DType, Tensor, TensorData};
use std::fmt::Display;

/// A 64-bit linear congruential generator (Knuth's MMIX constants): deterministic data.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    /// Uniform in `lo..=hi`.
    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() as i64) % (hi - lo + 1)
    }

    fn usize(&mut self, lo: usize, hi: usize) -> usize {
        self.int(lo as i64, hi as i64) as usize
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.usize(0, items.len() - 1)]
    }
}

fn list<T: Display>(v: &[T]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Floats as the text format wants them (always with a `.` or an exponent, exact).
fn floats(v: &[f32]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|x| format!("{x:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn dims(batch: bool, rest: &[usize]) -> String {
    let mut d: Vec<String> = rest.iter().map(|x| x.to_string()).collect();
    if batch {
        d.insert(0, "N".to_string());
    }
    format!("[{}]", d.join(","))
}

/// `quant(...)` of per-tensor (one scale) or per-axis parameters.
fn quant(axis: usize, scales: &[f32], zps: &[i64]) -> String {
    if scales.len() == 1 {
        format!("quant(scale={:?}, zero_point={})", scales[0], zps[0])
    } else {
        format!(
            "quant(axis={axis}, scale={}, zero_point={})",
            floats(scales),
            list(zps)
        )
    }
}

/// ` {attrs}`, or nothing without attributes.
fn braces(attrs: &str) -> String {
    if attrs.is_empty() {
        String::new()
    } else {
        format!(" {{{attrs}}}")
    }
}

fn range(dtype: DType) -> (i64, i64) {
    dtype.int_range().unwrap()
}

fn name(dtype: DType) -> &'static str {
    dtype.name()
}

/// A random activation zero point: near the middle of the range mostly (so that results
/// spread rather than saturate), anywhere in it sometimes.
fn zero_point(rng: &mut Lcg, dtype: DType) -> i64 {
    let (lo, hi) = range(dtype);
    if rng.int(0, 4) == 0 {
        rng.int(lo, hi)
    } else {
        (lo + hi + 1) / 2 + rng.int(-60, 60)
    }
}

/// Random 8-bit values of `dtype`.
fn ints(rng: &mut Lcg, dtype: DType, count: usize) -> Vec<i64> {
    let (lo, hi) = range(dtype);
    (0..count).map(|_| rng.int(lo, hi)).collect()
}

fn int_tensor(dtype: DType, shape: &[usize], values: Vec<i64>) -> Tensor {
    Tensor::from_i64_values(dtype, shape.to_vec(), values).unwrap()
}

/// Compiles `text`, runs JIT and interpreter on `inputs`, and compares.
fn check(case: &str, text: &str, inputs: &[Tensor]) {
    let g = parse(text).unwrap_or_else(|e| panic!("{case}: {e}\n{text}"));
    qlift_ir::verify(&g).unwrap_or_else(|e| panic!("{case}: {e:?}\n{text}"));
    let want = qlift_ir::interp::run(&g, inputs)
        .unwrap_or_else(|e| panic!("{case}: interpreter: {e}\n{text}"));
    // The host's code on one and two threads (batch split or, at batch 1, the kernels' own
    // split), the 128-bit forms, and the SSE2 baseline.
    let paths = [
        (false, None, 1),
        (false, None, 2),
        (false, Some(128), 1),
        (true, None, 1),
    ];
    for (baseline_isa, max_vector_bits, threads) in paths {
        let parallel_min_macs = (threads > 1).then_some(0);
        let opts = CodegenOptions {
            baseline_isa,
            max_vector_bits,
            parallel_min_macs,
            ..CodegenOptions::default()
        };
        let mut p =
            JitProgram::compile(&g, &opts).unwrap_or_else(|e| panic!("{case}: {e}\n{text}"));
        p.set_threads(threads);
        let got = p
            .run(inputs)
            .unwrap_or_else(|e| panic!("{case}: {e}\n{text}"));
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                (g.dtype(), g.shape()),
                (w.dtype(), w.shape()),
                "{case}\n{text}"
            );
            match (g.data(), w.data()) {
                (TensorData::F32(a), TensorData::F32(b)) => {
                    for (k, (x, y)) in a.iter().zip(b).enumerate() {
                        let close =
                            (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-4 * y.abs().max(1.0);
                        assert!(
                            close,
                            "{case}: element {k}: JIT {x}, interpreter {y}\n{text}"
                        );
                    }
                }
                _ => assert!(
                    g == w,
                    "{case}: JIT {:?}\ninterpreter {:?}\n{text}",
                    g.to_i64_vec(),
                    w.to_i64_vec()
                ),
            }
        }
    }
}

/// A random convolution geometry: (in spatial, kernel, strides, pads, dilations, out spatial).
struct Window {
    input: Vec<usize>,
    kernel: Vec<usize>,
    strides: Vec<usize>,
    pads: Vec<usize>,
    dilations: Vec<usize>,
    out: Vec<usize>,
}

impl Window {
    fn random(rng: &mut Lcg, rank: usize) -> Window {
        let mut w = Window {
            input: vec![],
            kernel: vec![],
            strides: vec![],
            pads: vec![0; 2 * rank],
            dilations: vec![],
            out: vec![],
        };
        for a in 0..rank {
            let (k, s, d) = (rng.usize(1, 3), rng.usize(1, 2), rng.usize(1, 2));
            let (pb, pe) = (rng.usize(0, 2), rng.usize(0, 2));
            let span = (k - 1) * d + 1;
            let input = rng.usize(span.saturating_sub(pb + pe).max(1), span + 5);
            w.kernel.push(k);
            w.strides.push(s);
            w.dilations.push(d);
            w.pads[a] = pb;
            w.pads[a + rank] = pe;
            w.input.push(input);
            w.out.push((input + pb + pe - span) / s + 1);
        }
        w
    }

    fn attrs(&self, group: usize) -> String {
        format!(
            "dilations={}, group={group}, kernel_shape={}, pads={}, strides={}",
            list(&self.dilations),
            list(&self.kernel),
            list(&self.pads),
            list(&self.strides)
        )
    }
}

/// `act_max=..., act_min=...` for none, Relu or Relu6.
fn activation(rng: &mut Lcg) -> &'static str {
    rng.pick(&[
        "",
        ", act_max=inf, act_min=0.0",
        ", act_max=6.0, act_min=0.0",
        ", act_max=2.5, act_min=-1.0",
    ])
}

/// Quantized weights: dtype, per-channel scales and zero points (one of each when per tensor).
fn weight_params(rng: &mut Lcg, channels: usize) -> (DType, Vec<f32>, Vec<i64>) {
    let dtype = rng.pick(&[DType::I8, DType::I8, DType::U8]);
    let count = if rng.coin() { channels } else { 1 };
    let scales = (0..count)
        .map(|_| 0.002 + 0.02 * rng.unit().abs())
        .collect();
    let (lo, hi) = range(dtype);
    let zps = (0..count)
        .map(|_| match dtype {
            DType::I8 if rng.coin() => 0,
            _ => rng.int(lo + 40, hi - 40),
        })
        .collect();
    (dtype, scales, zps)
}

/// The declared result: an 8-bit type with its parameters, or the i32 accumulator.
fn result_type(
    rng: &mut Lcg,
    sx: f32,
    ws: &[f32],
    k: usize,
    axis: usize,
    shape: &str,
) -> (String, String) {
    if rng.int(0, 3) == 0 {
        let scales: Vec<f32> = ws.iter().map(|s| sx * s).collect();
        return (
            format!(
                "i32{shape} {}",
                quant(axis, &scales, &vec![0; scales.len()])
            ),
            String::new(),
        );
    }
    let dtype = rng.pick(&[DType::U8, DType::I8]);
    let (lo, hi) = range(dtype);
    let sy = sx * ws[0] * (k as f32).sqrt() * (60.0 + 140.0 * rng.unit().abs());
    let zy = rng.int(lo + 20, hi - 20);
    (
        format!(
            "{}{shape} quant(scale={sy:?}, zero_point={zy})",
            name(dtype)
        ),
        activation(rng).to_string(),
    )
}

#[test]
fn qconv_matches_the_interpreter() {
    let mut rng = Lcg(0x5eed_c0de);
    for case in 0..120 {
        let rank = rng.pick(&[1, 2, 2, 2, 3]);
        let win = Window::random(&mut rng, if rank == 3 { 3 } else { rank });
        let (group, cg, mg) = match rng.int(0, 3) {
            0 => (1, rng.usize(1, 19), rng.usize(1, 19)),
            1 => {
                let c = rng.usize(1, 17);
                (c, 1, rng.usize(1, 2))
            }
            _ => (rng.usize(2, 3), rng.usize(1, 5), rng.usize(1, 5)),
        };
        let (c, m) = (cg * group, mg * group);
        let batch = rng.usize(1, 4);
        let xdtype = rng.pick(&[DType::U8, DType::I8]);
        let (sx, zx) = (0.01 + 0.05 * rng.unit().abs(), zero_point(&mut rng, xdtype));
        let (wdtype, ws, wz) = weight_params(&mut rng, m);
        let mut wshape = vec![m, cg];
        wshape.extend(&win.kernel);
        let wcount: usize = wshape.iter().product();
        let w = ints(&mut rng, wdtype, wcount);
        let k = cg * win.kernel.iter().product::<usize>();
        let mut yshape = vec![m];
        yshape.extend(&win.out);
        let (ytype, act) = result_type(&mut rng, sx, &ws, k, 1, &dims(true, &yshape));
        let bias = rng
            .coin()
            .then(|| (0..m).map(|_| rng.int(-5000, 5000)).collect::<Vec<_>>());
        let mut xshape = vec![c];
        xshape.extend(&win.input);
        let text = format!(
            "graph t(%x: {}{} quant(scale={sx:?}, zero_point={zx})) -> (%y) {{\n  %w = const {}{} {} {}\n{}  %y = QConv(%x, %w, {}) {{{}{act}}} : {ytype}\n}}",
            name(xdtype),
            dims(true, &xshape),
            name(wdtype),
            dims(false, &wshape),
            quant(0, &ws, &wz),
            list(&w),
            bias.as_ref().map_or(String::new(), |b| format!("  %b = const i32[{m}] {}\n", list(b))),
            if bias.is_some() { "%b" } else { "_" },
            win.attrs(group),
        );
        let mut full = vec![batch];
        full.extend(&xshape);
        let x = int_tensor(xdtype, &full, ints(&mut rng, xdtype, full.iter().product()));
        check(&format!("qconv case {case}"), &text, &[x]);
    }
}

#[test]
fn qmatmul_matches_the_interpreter() {
    let mut rng = Lcg(0xa11c_e5ed);
    for case in 0..120 {
        // Batches past one tile of six rows; columns past one block of 16 and not a multiple.
        let batch = rng.usize(1, 14);
        let k = rng.usize(1, 40);
        let (small, large) = (rng.usize(1, 21), rng.usize(33, 70));
        let p = rng.pick(&[small, 32, large]);
        let rows = rng.pick(&[0, 1, 3, 5]); // 0: A is [N, K]
        let adtype = rng.pick(&[DType::U8, DType::I8]);
        let (sa, za) = (0.01 + 0.05 * rng.unit().abs(), zero_point(&mut rng, adtype));
        let constant_b = rng.int(0, 3) != 0;
        let (bdtype, bs, bz) = if constant_b {
            weight_params(&mut rng, p)
        } else {
            // An activation: per tensor.
            let d = rng.pick(&[DType::U8, DType::I8]);
            let (lo, hi) = range(d);
            (d, vec![0.03], vec![rng.int(lo, hi)])
        };
        let bvals = ints(&mut rng, bdtype, k * p);
        let mut ashape = vec![];
        if rows > 0 {
            ashape.push(rows);
        }
        ashape.push(k);
        let mut yshape = ashape.clone();
        *yshape.last_mut().unwrap() = p;
        let ydims = dims(true, &yshape);
        let (ytype, act) = result_type(&mut rng, sa, &bs, k, yshape.len(), &ydims);
        let bias = rng
            .coin()
            .then(|| (0..p).map(|_| rng.int(-5000, 5000)).collect::<Vec<_>>());
        let bquant = quant(1, &bs, &bz);
        let (bparam, bconst) = if constant_b {
            (
                String::new(),
                format!(
                    "  %B = const {}[{k},{p}] {bquant} {}\n",
                    name(bdtype),
                    list(&bvals)
                ),
            )
        } else {
            (
                format!(", %B: {}[{k},{p}] {bquant}", name(bdtype)),
                String::new(),
            )
        };
        let text = format!(
            "graph t(%a: {}{} quant(scale={sa:?}, zero_point={za}){bparam}) -> (%y) {{\n{bconst}{}  %y = QMatMul(%a, %B, {}){} : {ytype}\n}}",
            name(adtype),
            dims(true, &ashape),
            bias.as_ref().map_or(String::new(), |b| format!("  %bias = const i32[{p}] {}\n", list(b))),
            if bias.is_some() { "%bias" } else { "_" },
            braces(act.trim_start_matches(", ")),
        );
        let mut full = vec![batch];
        full.extend(&ashape);
        let mut inputs = vec![int_tensor(
            adtype,
            &full,
            ints(&mut rng, adtype, full.iter().product()),
        )];
        if !constant_b {
            inputs.push(int_tensor(bdtype, &[k, p], bvals));
        }
        check(&format!("qmatmul case {case}"), &text, &inputs);
    }
}

/// Random f32 values in [-1, 1).
fn reals(rng: &mut Lcg, count: usize) -> Vec<f32> {
    (0..count).map(|_| rng.unit()).collect()
}

#[test]
fn float_conv_matches_the_interpreter() {
    let mut rng = Lcg(0xf10a7);
    for case in 0..60 {
        let rank = rng.pick(&[1, 2, 2]);
        let win = Window::random(&mut rng, rank);
        let group = rng.pick(&[1, 1, 2, 3]);
        let (cg, mg) = (rng.usize(1, 6), rng.usize(1, 6));
        let (c, m) = (cg * group, mg * group);
        let mut wshape = vec![m, cg];
        wshape.extend(&win.kernel);
        let w = reals(&mut rng, wshape.iter().product());
        let bias = rng.coin().then(|| reals(&mut rng, m));
        let mut xshape = vec![c];
        xshape.extend(&win.input);
        let mut yshape = vec![m];
        yshape.extend(&win.out);
        let act = activation(&mut rng);
        let text = format!(
            "graph t(%x: f32{}) -> (%y) {{\n  %w = const f32{} {}\n{}  %y = Conv(%x, %w, {}) {{{}{act}}} : f32{}\n}}",
            dims(true, &xshape),
            dims(false, &wshape),
            floats(&w),
            bias.as_ref().map_or(String::new(), |b| format!("  %b = const f32[{m}] {}\n", floats(b))),
            if bias.is_some() { "%b" } else { "_" },
            win.attrs(group),
            dims(true, &yshape),
        );
        let batch = rng.usize(1, 4);
        let mut full = vec![batch];
        full.extend(&xshape);
        let x = Tensor::from_f32(&full, reals(&mut rng, full.iter().product()));
        check(&format!("conv case {case}"), &text, &[x]);
    }
}

#[test]
fn gemm_matches_the_interpreter() {
    let mut rng = Lcg(0x6e33);
    for case in 0..60 {
        let (m, k, n) = (rng.usize(1, 7), rng.usize(1, 20), rng.usize(1, 9));
        let (ta, tb) = (rng.coin(), rng.coin());
        // A batched (its rows are the batch) only without transA.
        let batched = !ta && rng.coin();
        let (alpha, beta) = (
            rng.pick(&[1.0f32, 0.5, -2.0]),
            rng.pick(&[1.0f32, 0.25, 0.0]),
        );
        let ashape = if ta { vec![k, m] } else { vec![m, k] };
        let bshape = if tb { vec![n, k] } else { vec![k, n] };
        let cshape: Option<Vec<usize>> = match rng.int(0, 5) {
            0 => None,
            1 => Some(vec![]),
            2 => Some(vec![n]),
            3 => Some(vec![1, n]),
            4 if !batched => Some(vec![m, 1]),
            _ if !batched => Some(vec![m, n]),
            _ => Some(vec![1]),
        };
        let b = reals(&mut rng, k * n);
        let c = cshape.as_ref().map(|s| reals(&mut rng, s.iter().product()));
        let adims = if batched {
            dims(true, &ashape[1..])
        } else {
            dims(false, &ashape)
        };
        let ydims = if batched {
            dims(true, &[n])
        } else {
            dims(false, &[m, n])
        };
        let act = activation(&mut rng);
        let text = format!(
            "graph t(%a: f32{adims}) -> (%y) {{\n  %b = const f32{} {}\n{}  %y = Gemm(%a, %b, {}) {{alpha={alpha:?}, beta={beta:?}, transA={}, transB={}{act}}} : f32{ydims}\n}}",
            dims(false, &bshape),
            floats(&b),
            c.as_ref().map_or(String::new(), |c| format!("  %c = const f32{} {}\n", dims(false, cshape.as_ref().unwrap()), floats(c))),
            if c.is_some() { "%c" } else { "_" },
            i32::from(ta),
            i32::from(tb),
        );
        let rows = if batched { rng.usize(1, 4) } else { m };
        let shape = if batched {
            vec![rows, k]
        } else {
            ashape.clone()
        };
        let a = Tensor::from_f32(&shape, reals(&mut rng, shape.iter().product()));
        check(&format!("gemm case {case}"), &text, &[a]);
    }
}

#[test]
fn matmul_matches_the_interpreter() {
    let mut rng = Lcg(0x3a73);
    // (A shape, B shape, whether A's axis 0 is the batch, whether B is a constant)
    let shapes: [(&[usize], &[usize], bool, bool); 9] = [
        (&[1, 5], &[5, 3], true, true),
        (&[1, 4, 6], &[6, 2], true, true),
        (&[1, 3, 4, 6], &[6, 2], true, false),
        (&[2, 1, 3, 4], &[3, 4, 5], false, false),
        (&[1, 2, 3, 4], &[1, 4, 5], true, true),
        (&[3, 4], &[2, 4, 5], false, false),
        (&[4], &[2, 4, 3], false, true),
        (&[2, 3, 4], &[4], false, false),
        (&[7], &[7], false, false),
    ];
    for (case, (ashape, bshape, batched, constant)) in shapes.into_iter().enumerate() {
        for batch in 1..=3usize {
            let b = reals(&mut rng, bshape.iter().product());
            let out = |a: &[usize]| -> Vec<usize> {
                let a2 = if a.len() == 1 {
                    vec![1, a[0]]
                } else {
                    a.to_vec()
                };
                let b2 = if bshape.len() == 1 {
                    vec![bshape[0], 1]
                } else {
                    bshape.to_vec()
                };
                let (ab, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
                let rank = ab.len().max(bb.len());
                let at = |s: &[usize], i: usize| {
                    if i + s.len() < rank {
                        1
                    } else {
                        s[i + s.len() - rank]
                    }
                };
                let mut o: Vec<usize> = (0..rank).map(|i| at(ab, i).max(at(bb, i))).collect();
                if a.len() > 1 {
                    o.push(a2[a2.len() - 2]);
                }
                if bshape.len() > 1 {
                    o.push(b2[b2.len() - 1]);
                }
                o
            };
            let y = out(ashape);
            let (adims, ydims) = if batched {
                (dims(true, &ashape[1..]), dims(true, &y[1..]))
            } else {
                (dims(false, ashape), dims(false, &y))
            };
            let act = activation(&mut rng);
            let (bparam, bconst) = if constant {
                (
                    String::new(),
                    format!("  %b = const f32{} {}\n", dims(false, bshape), floats(&b)),
                )
            } else {
                (format!(", %b: f32{}", dims(false, bshape)), String::new())
            };
            let text = format!(
                "graph t(%a: f32{adims}{bparam}) -> (%y) {{\n{bconst}  %y = MatMul(%a, %b){} : f32{ydims}\n}}",
                braces(act.trim_start_matches(", "))
            );
            let mut full = ashape.to_vec();
            if batched {
                full[0] = batch;
            }
            let mut inputs = vec![Tensor::from_f32(
                &full,
                reals(&mut rng, full.iter().product()),
            )];
            if !constant {
                inputs.push(Tensor::from_f32(bshape, b));
            }
            check(&format!("matmul case {case} batch {batch}"), &text, &inputs);
        }
    }
}
