//! The JIT's three forms of an integer convolution — pointwise (1×1 as a product along
//! positions), direct (kernels 2–4 wide, and one input channel per group) and im2col — on
//! the shapes at their edges: channel counts that are not multiples of four, position
//! counts that do not fill a vector, strides up to 4, asymmetric padding, row dilation,
//! grouped and depthwise weights, u8 and i8 results, per-channel multipliers that do and do
//! not share a shift. Each must agree bit for bit with the interpreter on every code path.

use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::text::parse;
use qlift_ir::{DType, Tensor};

/// A QConv on `u8[N, c, h, w]` with `m` output channels.
#[derive(Clone, Copy, Debug)]
struct Case {
    c: usize,
    m: usize,
    hw: (usize, usize),
    kernel: (usize, usize),
    strides: (usize, usize),
    /// top, left, bottom, right
    pads: (usize, usize, usize, usize),
    dilation_h: usize,
    group: usize,
    signed_result: bool,
    /// Per-channel weight scales spread over 2^10 (each channel its own shift) or not.
    spread_scales: bool,
}

const fn case(
    c: usize,
    m: usize,
    hw: (usize, usize),
    kernel: (usize, usize),
    strides: (usize, usize),
    group: usize,
) -> Case {
    Case {
        c,
        m,
        hw,
        kernel,
        strides,
        pads: (0, 0, 0, 0),
        dilation_h: 1,
        group,
        signed_result: false,
        spread_scales: false,
    }
}

/// Deterministic pseudo-random numbers (an LCG): the cases must be reproducible.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: i64) -> i64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % below as u64) as i64
    }
}

fn list(values: impl IntoIterator<Item = String>) -> String {
    values.into_iter().collect::<Vec<_>>().join(", ")
}

fn graph_text(k: &Case, rng: &mut Lcg) -> String {
    let (h, w) = k.hw;
    let (kh, kw) = k.kernel;
    let (pt, pl, pb, pr) = k.pads;
    let oh = (h + pt + pb - (k.dilation_h * (kh - 1) + 1)) / k.strides.0 + 1;
    let ow = (w + pl + pr - kw) / k.strides.1 + 1;
    let cg = k.c / k.group;
    let weights = list((0..k.m * cg * kh * kw).map(|_| (rng.next(255) - 127).to_string()));
    let scales = list((0..k.m).map(|i| {
        if k.spread_scales {
            format!("{}", 0.01 / (1 << (i % 11)) as f32)
        } else {
            format!("{}", 0.004 + 0.001 * (i % 5) as f32)
        }
    }));
    let zeros = list((0..k.m).map(|_| "0".to_string()));
    let bias = list((0..k.m).map(|_| (rng.next(4001) - 2000).to_string()));
    let (ydtype, yzp) = if k.signed_result {
        ("i8", -3)
    } else {
        ("u8", 120)
    };
    // Accumulators spread about sqrt(taps) · 10^4 here: a result scale that spreads them
    // over about ±40 steps.
    let ys = 0.02 * 0.005 * ((cg * kh * kw) as f32).sqrt() * 1e4 / 40.0;
    format!(
        "graph conv(%x: u8[N,{c},{h},{w}] quant(scale=0.02, zero_point=11)) -> (%y) {{\n  \
         %w = const i8[{m},{cg},{kh},{kw}] quant(axis=0, scale=[{scales}], zero_point=[{zeros}]) [{weights}]\n  \
         %b = const i32[{m}] [{bias}]\n  \
         %y = QConv(%x, %w, %b) {{dilations=[{dh}, 1], group={g}, kernel_shape=[{kh}, {kw}], pads=[{pt}, {pl}, {pb}, {pr}], strides=[{sh}, {sw}]}} : {ydtype}[N,{m},{oh},{ow}] quant(scale={ys}, zero_point={yzp})\n}}\n",
        c = k.c,
        m = k.m,
        dh = k.dilation_h,
        g = k.group,
        sh = k.strides.0,
        sw = k.strides.1,
    )
}

fn cases() -> Vec<Case> {
    let mut cases = vec![
        // Pointwise: channels 1..17, positions 1..40 (tails of the 16-position interleave
        // and of the 8-position tiles), output channels not a multiple of 4.
        case(1, 4, (1, 1), (1, 1), (1, 1), 1),
        case(3, 6, (3, 5), (1, 1), (1, 1), 1),
        case(4, 4, (4, 4), (1, 1), (1, 1), 1),
        case(5, 9, (1, 17), (1, 1), (1, 1), 1),
        case(16, 16, (8, 8), (1, 1), (1, 1), 1),
        case(17, 3, (5, 8), (1, 1), (1, 1), 1),
        case(8, 12, (7, 7), (1, 1), (1, 1), 1),
        // 1×1 planes taken as one row: 143 positions (staged, copied out in a loop), 256
        // (written directly).
        case(5, 7, (13, 11), (1, 1), (1, 1), 1),
        case(6, 8, (16, 16), (1, 1), (1, 1), 1),
        // Direct: 3×3 and 2-, 4-wide kernels, strides up to 4, one or many input channels
        // per group, output widths that do not fill a block of four.
        case(1, 16, (8, 8), (3, 3), (1, 1), 1),
        case(16, 16, (8, 8), (3, 3), (1, 1), 16),
        case(6, 12, (9, 7), (3, 3), (2, 2), 6),
        case(16, 32, (4, 4), (3, 3), (1, 1), 1),
        case(5, 7, (6, 11), (2, 2), (1, 3), 1),
        case(3, 5, (9, 13), (1, 4), (2, 4), 1),
        case(4, 4, (6, 6), (4, 4), (1, 1), 2),
        case(20, 10, (5, 5), (3, 2), (1, 1), 1),
        // Wide (256-bit micro-kernels, dense convolutions of any kernel): a 7×7 stride-2
        // stem on three channels, 5×5, more output channels than one tile (6) and than
        // one tile row of 16 positions, odd input channel counts (a half-empty pair),
        // 1×1 with channel counts that do not fill the unrolled pairs.
        case(3, 8, (15, 14), (7, 7), (2, 2), 1),
        case(7, 13, (9, 10), (5, 5), (1, 1), 1),
        case(40, 70, (6, 6), (3, 3), (1, 1), 1),
        case(33, 20, (11, 9), (3, 3), (2, 2), 1),
        case(9, 31, (4, 12), (1, 1), (1, 1), 1),
        case(64, 12, (3, 3), (1, 1), (2, 2), 1),
        // Depthwise of any size: more channels than the unrolled forms took (a run-time
        // channel loop), 5×5 and 7×7 kernels (two quads of taps per row), stride 2.
        case(400, 400, (5, 6), (3, 3), (1, 1), 400),
        case(24, 24, (11, 12), (5, 5), (1, 1), 24),
        case(16, 16, (14, 13), (7, 7), (2, 2), 16),
        case(8, 8, (9, 9), (5, 5), (2, 2), 8),
        // Depthwise read from the padded plane: narrow planes walked as one long row (7×7,
        // 13×17 at 5×5), rows of 16 outputs at stride 1, row stride without column stride
        // and the reverse, MobileNetV2's 14×14 stride 2 with many channels.
        case(96, 96, (7, 7), (3, 3), (1, 1), 96),
        case(12, 12, (13, 17), (5, 5), (1, 1), 12),
        case(20, 20, (30, 29), (3, 3), (1, 1), 20),
        case(10, 10, (9, 20), (3, 3), (2, 1), 10),
        case(10, 10, (9, 21), (3, 3), (1, 2), 10),
        case(160, 160, (14, 14), (3, 3), (2, 2), 160),
        // VNNI's tap quads (column stride 1): 14×14 and 7×7 planes with channel counts that
        // are not a multiple of anything, rows of 112 (fourteen vectors, two groups), rows
        // of 37 (a partial vector), a 9-wide kernel (three quads a row) and 4-wide (one).
        case(19, 19, (14, 14), (3, 3), (1, 1), 19),
        case(13, 13, (7, 7), (3, 3), (1, 1), 13),
        case(3, 3, (4, 112), (3, 3), (1, 1), 3),
        case(5, 5, (6, 37), (3, 3), (2, 1), 5),
        case(7, 7, (5, 20), (2, 9), (1, 1), 7),
        case(6, 6, (8, 8), (3, 4), (1, 1), 6),
        // Stride-2 quads (AVX-512 VBMI): MobileNetV2's 112-wide rows, a 7×7 plane.
        case(5, 5, (9, 112), (3, 3), (2, 2), 5),
        case(11, 11, (7, 7), (3, 3), (2, 2), 11),
        // Pixels as rows, channels as lanes (`wide-pixels-vnni`, where VNNI's quads apply and
        // channels fill more of their blocks of 16 than 7- or 14-wide rows fill vectors of
        // 8): 3×3 at 7×7 and 14×14, strides 1–2, 1×1 in place and strided, input channels
        // of no particular multiple, output channels not a multiple of 16, fewer pixels
        // than one tile (2×3), and more than a block of channels.
        case(19, 32, (7, 7), (3, 3), (1, 1), 1),
        case(37, 47, (14, 14), (3, 3), (1, 1), 1),
        case(21, 30, (14, 14), (3, 3), (2, 2), 1),
        case(40, 64, (7, 7), (1, 1), (1, 1), 1),
        case(33, 48, (14, 14), (1, 1), (2, 2), 1),
        case(9, 16, (7, 7), (1, 1), (1, 1), 1),
        case(5, 16, (2, 3), (1, 1), (1, 1), 1),
        case(130, 160, (7, 7), (3, 3), (1, 1), 1),
        Case {
            pads: (1, 1, 1, 1),
            ..case(70, 64, (7, 7), (3, 3), (1, 1), 1)
        },
        Case {
            pads: (1, 1, 1, 1),
            signed_result: true,
            ..case(23, 63, (14, 14), (3, 3), (2, 2), 1)
        },
        Case {
            pads: (0, 1, 2, 0),
            ..case(35, 31, (14, 14), (3, 3), (1, 2), 1)
        },
        // im2col: 5-wide kernels, and 1×1 convolutions with strides or groups.
        case(3, 4, (7, 9), (3, 5), (1, 1), 1),
        case(4, 6, (5, 5), (1, 1), (2, 2), 1),
        case(4, 6, (5, 5), (1, 1), (1, 1), 2),
    ];
    let padded: Vec<Case> = cases
        .iter()
        .filter(|k| k.kernel.0 > 1 || k.kernel.1 > 1)
        .map(|&k| Case {
            pads: (1, 2, 0, 1),
            dilation_h: 2,
            signed_result: true,
            ..k
        })
        .filter(|k| k.hw.0 + k.pads.0 + k.pads.2 > 2 * (k.kernel.0 - 1))
        .collect();
    let spread: Vec<Case> = cases
        .iter()
        .map(|&k| Case {
            spread_scales: true,
            ..k
        })
        .collect();
    cases.extend(padded);
    cases.extend(spread);
    cases.extend(random_depthwise(&mut Lcg(0xd3e9), 24));
    cases
}

/// `n` random depthwise cases: 1–300 channels, planes 1–40 a side, kernels 1–7 a side,
/// strides 1–2 each way, asymmetric padding, row dilation 1–2, u8 or i8 results.
fn random_depthwise(rng: &mut Lcg, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    while out.len() < n {
        let mut pick = |lo: usize, hi: usize| lo + rng.next((hi - lo + 1) as i64) as usize;
        let c = if pick(0, 1) == 0 {
            pick(1, 24)
        } else {
            pick(100, 300)
        };
        let (kh, kw) = (pick(1, 7), pick(2, 7));
        let pads = (
            pick(0, kh / 2),
            pick(0, kw / 2),
            pick(0, kh / 2),
            pick(0, kw / 2),
        );
        let k = Case {
            c,
            m: c,
            hw: (pick(1, 40), pick(1, 40)),
            kernel: (kh, kw),
            strides: (pick(1, 2), pick(1, 2)),
            pads,
            dilation_h: pick(1, 2),
            group: c,
            signed_result: pick(0, 1) == 1,
            spread_scales: pick(0, 1) == 1,
        };
        let fits =
            k.hw.0 + pads.0 + pads.2 > k.dilation_h * (kh - 1) && k.hw.1 + pads.1 + pads.3 >= kw;
        if fits {
            out.push(k);
        }
    }
    out
}

/// Sample 0 of a batch.
fn first_sample(x: &Tensor) -> Tensor {
    let mut dims = x.shape().to_vec();
    let per: usize = dims[1..].iter().product();
    dims[0] = 1;
    Tensor::from_i64_values(x.dtype(), dims, x.to_i64_vec().unwrap()[..per].to_vec()).unwrap()
}

#[test]
fn every_convolution_form_agrees_with_the_interpreter() {
    let paths = [
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
            "no-winograd",
            CodegenOptions {
                no_winograd: true,
                ..Default::default()
            },
        ),
        (
            "128-bit",
            CodegenOptions {
                max_vector_bits: Some(128),
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
    ];
    if !qlift_tests::host::has_vnni() {
        eprintln!("skipped: this CPU lacks AVX-VNNI and AVX-512 VNNI + VL, so the micro-kernels' vpdpwssd and vpdpbusd (u8×i8 quad) forms are not run here (the AVX2 vpmaddwd form is)");
    }
    // Dense layers on VNNI's u8×i8 quads (weights that fit i8), on the paths that allow it.
    let mut vnni_layers = 0;
    let mut vnni_depthwise = 0;
    let mut pixel_layers = 0;
    if !std::arch::is_x86_feature_detected!("avx2") {
        eprintln!("skipped: this CPU lacks AVX2, so no 256-bit micro-kernel is run here");
    }
    let mut rng = Lcg(0x5eed);
    let mut failures = Vec::new();
    let all = cases();
    for k in &all {
        let text = graph_text(k, &mut rng);
        let graph = parse(&text).unwrap_or_else(|e| panic!("{k:?}: {e}\n{text}"));
        let batch = 3;
        let n = batch * k.c * k.hw.0 * k.hw.1;
        let x = Tensor::from_i64_values(
            DType::U8,
            vec![batch, k.c, k.hw.0, k.hw.1],
            (0..n).map(|_| rng.next(256)).collect(),
        )
        .unwrap();
        let want = qlift_ir::interp::run(&graph, std::slice::from_ref(&x)).unwrap();
        // The case exercises the arithmetic: most results are strictly inside the range.
        let values = want[0].to_i64_vec().unwrap();
        let (lo, hi) = if k.signed_result {
            (-128, 127)
        } else {
            (0, 255)
        };
        let inside = values.iter().filter(|&&v| v > lo && v < hi).count();
        assert!(
            inside * 2 > values.len(),
            "{k:?}: only {inside} of {} results inside ({lo}, {hi})",
            values.len()
        );
        for (path, opts) in &paths {
            let program = JitProgram::compile(&graph, opts);
            // Every dense case with a column stride up to 2 takes the wide form where the CPU has
            // AVX2, unless held to 128 bits.
            // Those that are 3×3 of stride and dilation 1 take the Winograd form instead (its
            // int8 weights always keep it exact), unless it is turned off.
            if let Ok(p) = &program {
                let form = p.program().steps[0].form.as_str();
                let wide_isa = opts.max_vector_bits.is_none()
                    && !opts.baseline_isa
                    && std::arch::is_x86_feature_detected!("avx2");
                // Weights here fit i8: with VNNI the direct form's u8×i8 quads take 3×3 too.
                let quads_allowed =
                    qlift_tests::host::has_vnni() && !opts.no_vnni && !opts.avx2_only;
                let winograd = wide_isa
                    && !opts.no_winograd
                    && !quads_allowed
                    && k.group == 1
                    && k.kernel == (3, 3)
                    && k.strides == (1, 1)
                    && k.dilation_h == 1;
                let expected = !winograd && wide_isa && k.group == 1 && k.strides.1 <= 2;
                let wide = form == "wide-direct"
                    || form == "wide-direct-vnni"
                    || form == "wide-pixels-vnni";
                // Depthwise convolutions of any size and channel count take the wide form on
                // AVX2 (column stride up to 2), else the direct form wherever the CPU has byte
                // shuffles.
                let depthwise = k.group == k.c && k.m == k.c && k.kernel.1 > 1;
                let wide_depthwise = k.strides.1 <= 2
                    && opts.max_vector_bits.is_none()
                    && std::arch::is_x86_feature_detected!("avx2");
                // With VNNI, column stride 1 takes tap quads (the weights here fit i8), and
                // so does stride 2 where AVX-512 VBMI permutes bytes across the vector.
                let vbmi = std::arch::is_x86_feature_detected!("avx512vbmi")
                    && std::arch::is_x86_feature_detected!("avx512vl");
                let depthwise_quads = wide_depthwise && quads_allowed && (k.strides.1 == 1 || vbmi);
                vnni_depthwise += usize::from(depthwise && depthwise_quads);
                let direct = p.program().steps[0].form
                    == match (wide_depthwise, depthwise_quads) {
                        (true, true) => "wide-depthwise-vnni",
                        (true, false) => "wide-depthwise",
                        _ => "direct-depthwise",
                    };
                let quads = form == "wide-direct-vnni" || form == "wide-pixels-vnni";
                vnni_layers += usize::from(quads);
                pixel_layers += usize::from(form == "wide-pixels-vnni");
                if wide != expected
                    || (quads && (opts.no_vnni || opts.avx2_only))
                    || winograd != (form == "winograd")
                    || (depthwise && !opts.baseline_isa && !direct)
                {
                    failures.push(format!(
                        "{path}: {k:?} is in form {}",
                        p.program().steps[0].form
                    ));
                }
            }
            // One sample on two threads: the kernels split their own work (intra-op).
            let (x1, want1) = (
                first_sample(&x),
                qlift_ir::interp::run(&graph, &[first_sample(&x)]).unwrap(),
            );
            // Every kernel call split, however small (the default keeps small ones whole).
            if let Ok(mut p) = JitProgram::compile(
                &graph,
                &CodegenOptions {
                    parallel_min_macs: Some(0),
                    ..opts.clone()
                },
            ) {
                p.set_threads(2);
                match p.run(std::slice::from_ref(&x1)) {
                    Ok(got) if got == want1 => {}
                    Ok(_) => failures.push(format!(
                        "{path}, two threads, batch 1: {k:?} differs from the interpreter"
                    )),
                    Err(e) => failures.push(format!("{path}, two threads, batch 1: {k:?}: {e}")),
                }
            }
            let got = program.and_then(|p| p.run(std::slice::from_ref(&x)));
            match got {
                Ok(got) if got == want => {}
                Ok(_) => failures.push(format!("{path}: {k:?} differs from the interpreter")),
                Err(e) => failures.push(format!("{path}: {k:?}: {e}")),
            }
        }
    }
    assert!(
        vnni_layers > 0 || !qlift_tests::host::has_vnni(),
        "no layer took the VNNI quads"
    );
    assert!(
        vnni_depthwise > 0 || !qlift_tests::host::has_vnni(),
        "no depthwise layer took the VNNI tap quads"
    );
    assert!(
        pixel_layers >= 11 || !qlift_tests::host::has_vnni(),
        "only {pixel_layers} layers took the pixel rows (wide-pixels-vnni)"
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases fail:\n{failures:#?}",
        failures.len(),
        all.len() * paths.len()
    );
}

/// A random dense 3×3 stride-1 QConv for the Winograd form: its text and input.
struct WinogradCase {
    text: String,
    x: Tensor,
    summary: String,
    /// Every weight fits i8 after its zero point (the wide form's VNNI quads apply).
    weights_fit_i8: bool,
}

/// Random channels (odd, past 256), extents and paddings (or `extents` padded by 1), activation and weight zero points
/// (per channel or per tensor), u8 or i8 results, with or without a fused ReLU; weights drawn
/// from `weight` (a value in -128..=127 from the generator).
fn winograd_case(
    rng: &mut Lcg,
    c: usize,
    m: usize,
    batch: usize,
    weight: &mut dyn FnMut(&mut Lcg) -> i64,
    extents: Option<(usize, usize)>,
    zx: Option<i64>,
) -> WinogradCase {
    let (h, w) = extents.unwrap_or((1 + rng.next(13) as usize, 1 + rng.next(13) as usize));
    let pads: Vec<usize> = (0..4)
        .map(|_| {
            if extents.is_some() {
                1
            } else {
                rng.next(3) as usize
            }
        })
        .collect();
    // At least one output: the padded extents hold a 3×3 window.
    let pads = [
        pads[0],
        pads[1],
        pads[2].max(3usize.saturating_sub(h + pads[0])),
        pads[3].max(3usize.saturating_sub(w + pads[1])),
    ];
    let (oh, ow) = (h + pads[0] + pads[2] - 2, w + pads[1] + pads[3] - 2);
    let zx = zx.unwrap_or_else(|| rng.next(256));
    let values: Vec<i64> = (0..m * c * 9).map(|_| weight(rng)).collect();
    let weights = list(values.iter().map(|v| v.to_string()));
    let per_channel = rng.next(2) == 0;
    let (wquant, zw) = if per_channel {
        let scales = list((0..m).map(|i| format!("{}", 0.002 + 0.001 * (i % 7) as f32)));
        let zw: Vec<i64> = (0..m).map(|_| rng.next(41) - 20).collect();
        let zeros = list(zw.iter().map(|z| z.to_string()));
        (
            format!("quant(axis=0, scale=[{scales}], zero_point=[{zeros}])"),
            zw,
        )
    } else {
        let z = rng.next(41) - 20;
        (format!("quant(scale=0.004, zero_point={z})"), vec![z; m])
    };
    let weights_fit_i8 = values
        .iter()
        .enumerate()
        .all(|(i, v)| (-128..=127).contains(&(v - zw[i / (c * 9)])));
    let bias = list((0..m).map(|_| (rng.next(40001) - 20000).to_string()));
    let relu = rng.next(2) == 0;
    let act = if relu {
        "act_max=inf, act_min=0.0, "
    } else {
        ""
    };
    let (ydtype, yzp) = if rng.next(2) == 0 {
        ("i8", rng.next(41) - 20)
    } else {
        ("u8", 100 + rng.next(41))
    };
    // Accumulators spread about 35 · 74 · sqrt(9c): a result scale that spreads them over
    // about ±35 steps.
    let ys = 0.02 * 0.004 * 74.0 * ((9 * c) as f32).sqrt();
    let text = format!(
        "graph conv(%x: u8[N,{c},{h},{w}] quant(scale=0.02, zero_point={zx})) -> (%y) {{\n  \
         %w = const i8[{m},{c},3,3] {wquant} [{weights}]\n  \
         %b = const i32[{m}] [{bias}]\n  \
         %y = QConv(%x, %w, %b) {{{act}dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[{pt}, {pl}, {pb}, {pr}], strides=[1, 1]}} : {ydtype}[N,{m},{oh},{ow}] quant(scale={ys}, zero_point={yzp})\n}}\n",
        pt = pads[0],
        pl = pads[1],
        pb = pads[2],
        pr = pads[3],
    );
    let n = batch * c * h * w;
    let x = Tensor::from_i64_values(
        DType::U8,
        vec![batch, c, h, w],
        // About the zero point, so that the sums do not drift with the weights' zero points.
        (0..n)
            .map(|_| (zx + rng.next(121) - 60).clamp(0, 255))
            .collect(),
    )
    .unwrap();
    let summary = format!(
        "c={c} m={m} {h}x{w} pads={pads:?} zx={zx} per_channel={per_channel} relu={relu} {ydtype}"
    );
    WinogradCase {
        text,
        x,
        summary,
        weights_fit_i8,
    }
}

/// Compiles `case` with `opts`, checks its convolution's form, and compares batch 3 on one
/// thread and batch 1 on two threads (every call split) with the interpreter.
fn check_form(case: &WinogradCase, opts: &CodegenOptions, form: &str, failures: &mut Vec<String>) {
    let graph =
        parse(&case.text).unwrap_or_else(|e| panic!("{}: {e}\n{}", case.summary, case.text));
    let want = qlift_ir::interp::run(&graph, std::slice::from_ref(&case.x)).unwrap();
    let what = &case.summary;
    // The case exercises the arithmetic: most results are strictly inside the range.
    let values = want[0].to_i64_vec().unwrap();
    let (lo, hi) = if want[0].dtype() == DType::I8 {
        (-128, 127)
    } else {
        (0, 255)
    };
    let inside = values.iter().filter(|&&v| v > lo && v < hi).count();
    if inside * 2 <= values.len() {
        failures.push(format!(
            "{what}: only {inside} of {} results inside",
            values.len()
        ));
    }
    match JitProgram::compile(&graph, opts) {
        Ok(p) => {
            let got_form = &p.program().steps[0].form;
            if got_form != form {
                failures.push(format!("{what}: form {got_form}, expected {form}"));
            }
            match p.run(std::slice::from_ref(&case.x)) {
                Ok(got) if got == want => {}
                Ok(_) => failures.push(format!("{what}: differs from the interpreter")),
                Err(e) => failures.push(format!("{what}: {e}")),
            }
        }
        Err(e) => failures.push(format!("{what}: {e}")),
    }
    let x1 = first_sample(&case.x);
    let want1 = qlift_ir::interp::run(&graph, std::slice::from_ref(&x1)).unwrap();
    let split = CodegenOptions {
        parallel_min_macs: Some(0),
        ..opts.clone()
    };
    match JitProgram::compile(&graph, &split).and_then(|mut p| {
        p.set_threads(2);
        p.run(std::slice::from_ref(&x1))
    }) {
        Ok(got) if got == want1 => {}
        Ok(_) => failures.push(format!("{what}, two threads: differs from the interpreter")),
        Err(e) => failures.push(format!("{what}, two threads: {e}")),
    }
}

/// The paths that have the wide micro-kernels, hence the Winograd form, on this CPU.
fn winograd_paths() -> Vec<(&'static str, CodegenOptions)> {
    if !std::arch::is_x86_feature_detected!("avx2") {
        eprintln!("skipped: this CPU lacks AVX2, so the Winograd form is not run here");
        return Vec::new();
    }
    vec![
        ("host", CodegenOptions::default()),
        (
            "avx2",
            CodegenOptions {
                avx2_only: true,
                ..Default::default()
            },
        ),
    ]
}

#[test]
fn winograd_agrees_with_the_interpreter_on_random_layers() {
    let mut rng = Lcg(0x3a3a);
    let mut failures = Vec::new();
    let channels = [1, 2, 3, 5, 8, 16, 17, 33, 64, 96, 130, 257, 300];
    let mut cases = 0;
    for &c in &channels {
        for _ in 0..2 {
            let m = 1 + rng.next(40) as usize;
            let batch = 1 + rng.next(3) as usize;
            // Every other layer 8×8 (16 tiles of 2×2, stored straight to the output).
            let extents = (cases % 2 == 1).then_some((8, 8));
            let case = winograd_case(
                &mut rng,
                c,
                m,
                batch,
                &mut |r| r.next(256) - 128,
                extents,
                None,
            );
            for (path, opts) in winograd_paths() {
                let mut found = Vec::new();
                let vnni = qlift_tests::host::has_vnni() && !opts.avx2_only;
                let form = if vnni && case.weights_fit_i8 {
                    "wide-direct-vnni"
                } else {
                    "winograd"
                };
                check_form(&case, &opts, form, &mut found);
                failures.extend(found.into_iter().map(|f| format!("{path}: {f}")));
            }
            cases += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures in {cases} cases:\n{failures:#?}",
        failures.len()
    );
}

#[test]
fn a_layer_winograd_cannot_keep_exact_falls_back_to_the_wide_form() {
    // 4096 input channels of weights −128, zero points within ±20, activations about 195:
    // Σ x · (w − zw) is below −2^29, so four times it (the transformed sum) wraps in i32.
    // Weights −128 with a zero point of 0 fit i8: VNNI's u8×i8 quads where the path has it.
    let mut rng = Lcg(0xfa11);
    let case = winograd_case(&mut rng, 4096, 3, 2, &mut |_| -128, None, Some(195));
    let mut failures = Vec::new();
    for (path, opts) in winograd_paths() {
        let mut found = Vec::new();
        let vnni = qlift_tests::host::has_vnni() && !opts.avx2_only && !opts.no_vnni;
        let form = if vnni && case.weights_fit_i8 {
            "wide-direct-vnni"
        } else {
            "wide-direct"
        };
        check_form(&case, &opts, form, &mut found);
        failures.extend(found.into_iter().map(|f| format!("{path}: {f}")));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// int16 layers (i16 activations, i16 or u8 results) on the wide form where the CPU has
/// AVX2, bit for bit with the interpreter on every path: strides 1–2, 7×7 to 1×1, odd and
/// many channels, padding with the i16 zero point, and a convolution along rows only
/// (`[C, H, 1]`, a `k × 1` kernel: magika's), which the form takes transposed.
#[test]
fn int16_convolutions_take_the_wide_form_bit_exact() {
    // (c, m, (h, w), (kh, kw), (sh, sw), (pt, pl, pb, pr), i16 result)
    let cases = [
        (40, 70, (6, 6), (3, 3), (1, 1), (1, 1, 1, 1), true),
        (33, 20, (11, 9), (3, 3), (2, 2), (1, 2, 0, 1), false),
        (3, 8, (15, 14), (7, 7), (2, 2), (3, 3, 3, 3), true),
        (9, 31, (4, 12), (1, 1), (1, 1), (0, 0, 0, 0), true),
        (64, 24, (40, 1), (5, 1), (1, 1), (0, 0, 0, 0), true),
        (17, 13, (37, 1), (3, 1), (2, 1), (1, 0, 1, 0), false),
    ];
    let paths = [
        ("host", CodegenOptions::default()),
        (
            "avx2",
            CodegenOptions {
                avx2_only: true,
                ..Default::default()
            },
        ),
        (
            "128-bit",
            CodegenOptions {
                max_vector_bits: Some(128),
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
    ];
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    let mut rng = Lcg(0x1616);
    let mut failures = Vec::new();
    for (c, m, (h, w), (kh, kw), (sh, sw), (pt, pl, pb, pr), sixteen) in cases {
        let (oh, ow) = ((h + pt + pb - kh) / sh + 1, (w + pl + pr - kw) / sw + 1);
        let weights = list((0..m * c * kh * kw).map(|_| (rng.next(255) - 127).to_string()));
        let bias = list((0..m).map(|_| (rng.next(400001) - 200000).to_string()));
        let scales = list((0..m).map(|i| format!("{}", 0.004 + 0.001 * (i % 5) as f32)));
        let zeros = list((0..m).map(|_| "0".to_string()));
        // Accumulators spread about sqrt(taps) · 19000 · 73: results over about ±40 steps
        // of a u8, ±10000 of an i16.
        let spread = ((c * kh * kw) as f32).sqrt() * 19000.0 * 73.0 * 0.001 * 0.005;
        let y = if sixteen {
            format!(
                "i16[N,{m},{oh},{ow}] quant(scale={}, zero_point=-700)",
                spread / 10000.0
            )
        } else {
            format!(
                "u8[N,{m},{oh},{ow}] quant(scale={}, zero_point=120)",
                spread / 40.0
            )
        };
        let text = format!(
            "graph conv(%x: i16[N,{c},{h},{w}] quant(scale=0.001, zero_point=-1000)) -> (%y) {{\n  \
             %w = const i8[{m},{c},{kh},{kw}] quant(axis=0, scale=[{scales}], zero_point=[{zeros}]) [{weights}]\n  \
             %b = const i32[{m}] [{bias}]\n  \
             %y = QConv(%x, %w, %b) {{dilations=[1, 1], group=1, kernel_shape=[{kh}, {kw}], pads=[{pt}, {pl}, {pb}, {pr}], strides=[{sh}, {sw}]}} : {y}\n}}\n"
        );
        let graph = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let batch = 2;
        let x = Tensor::from_i64_values(
            DType::I16,
            vec![batch, c, h, w],
            (0..batch * c * h * w)
                .map(|_| rng.next(65536) - 32768)
                .collect(),
        )
        .unwrap();
        let want = qlift_ir::interp::run(&graph, std::slice::from_ref(&x)).unwrap();
        let (lo, hi) = if sixteen { (-32768, 32767) } else { (0, 255) };
        let values = want[0].to_i64_vec().unwrap();
        let inside = values.iter().filter(|&&v| v > lo && v < hi).count();
        assert!(
            inside * 2 > values.len(),
            "{text}: {inside} of {} inside",
            values.len()
        );
        for (path, opts) in &paths {
            let case = format!("{path}: {c}→{m} {h}×{w} {kh}×{kw} /{sh},{sw} i16 result {sixteen}");
            let program = match JitProgram::compile(&graph, opts) {
                Ok(p) => p,
                Err(e) => {
                    failures.push(format!("{case}: {e}"));
                    continue;
                }
            };
            let form = program.program().steps[0].form.clone();
            let wide = avx2 && opts.max_vector_bits.is_none() && !opts.baseline_isa;
            if wide != (form == "wide-direct") {
                failures.push(format!("{case}: form {form}"));
            }
            match program.run(std::slice::from_ref(&x)) {
                Ok(got) if got == want => {}
                Ok(got) => failures.push(format!(
                    "{case}: differs from the interpreter ({} of {} elements)",
                    got[0]
                        .to_i64_vec()
                        .unwrap()
                        .iter()
                        .zip(&values)
                        .filter(|(a, b)| a != b)
                        .count(),
                    values.len()
                )),
                Err(e) => failures.push(format!("{case}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
