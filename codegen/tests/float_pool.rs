//! f32 MaxPool and AveragePool against the reference interpreter, bit for bit, on random
//! 2-D windows (kernels 1–7, strides 1–3, dilations 1–2, asymmetric pads, ceil_mode) fed
//! with NaN, ±inf, ±0 and ties among random values, at batches 1 and 3, on every option
//! path: the host's code on one thread and split on two (the split kernel must have a
//! task), the 128-bit forms, AVX2 only and the SSE2 baseline. Pools of strides up to 3
//! must take the vector-rows form (so that the tests exercise it); wider strides keep to
//! the scalar walk and are checked the same way.

mod common;
use common::{has_task, lcg, pooled};
use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::text::parse;
use qlift_ir::{Tensor, TensorData};

/// Inputs with the values a maximum or a sum treats specially: NaN (skipped by MaxPool),
/// ±inf, −0 and +0 (equal, of different bits: the first in window order must win), small
/// integers (ties), the rest uniform in [-4, 4).
fn special(seed: u64, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v = lcg(seed, n)
        .into_iter()
        .map(|u| match ((u + 1.0) * 1024.0) as usize % 16 {
            0 => f32::NAN,
            1 => f32::NEG_INFINITY,
            2 => f32::INFINITY,
            3 | 4 => -0.0,
            5 | 6 => 0.0,
            k @ 7..=9 => k as f32 - 8.0,
            _ => 4.0 * u,
        })
        .collect();
    Tensor::from_f32(shape, v)
}

/// Bit patterns, NaN as one pattern (the interpreter computes in f64, so a NaN's payload is
/// not part of the contract).
fn bits(t: &Tensor) -> Vec<u32> {
    match t.data() {
        TensorData::F32(v) => v
            .iter()
            .map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() })
            .collect(),
        _ => panic!("not f32"),
    }
}

/// A small deterministic generator of integers.
struct Rng(u64);

impl Rng {
    /// Uniform in `lo..=hi`.
    fn int(&mut self, lo: usize, hi: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (self.0 >> 33) as usize % (hi - lo + 1)
    }
}

/// A random 2-D window on a random plane: the graph text of its MaxPool and of its two
/// AveragePools (count_include_pad 0 and 1), and the input shape (`0` for the batch).
fn random_case(rng: &mut Rng, strides: (usize, usize)) -> (String, Vec<usize>) {
    let (mut kernel, mut dil, mut spatial, mut out) = (vec![], vec![], vec![], vec![]);
    let mut pads = [0; 4];
    let ceil = rng.int(0, 1) == 1;
    let strides = [strides.0, strides.1];
    for a in 0..2 {
        let k = rng.int(1, 7);
        let d = if k > 1 && rng.int(0, 3) == 0 { 2 } else { 1 };
        let reach = d * (k - 1) + 1;
        // Pads below the window's reach, so that every window holds an input.
        let (pb, pe) = (
            rng.int(0, (reach - 1).min(3)),
            rng.int(0, (reach - 1).min(3)),
        );
        let n = rng.int(reach.saturating_sub(pb + pe).max(1), reach + 14);
        kernel.push(k);
        dil.push(d);
        spatial.push(n);
        (pads[a], pads[a + 2]) = (pb, pe);
        out.push(pooled(n, k, strides[a], d, pb, pe, ceil));
    }
    let c = rng.int(1, 5);
    let list = |v: &[usize]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let attrs = |include: Option<bool>| {
        let pad = include.map_or(String::new(), |p| {
            format!("count_include_pad={}, ", p as i32)
        });
        format!(
            "{{ceil_mode={}, {pad}dilations=[{}], kernel_shape=[{}], pads=[{}], strides=[{}]}}",
            ceil as i32,
            list(&dil),
            list(&kernel),
            list(&pads),
            list(&strides),
        )
    };
    let (h, w, oh, ow) = (spatial[0], spatial[1], out[0], out[1]);
    let text = format!(
        "graph t(%x: f32[N,{c},{h},{w}]) -> (%m, %a, %b) {{
           %m = MaxPool(%x) {max} : f32[N,{c},{oh},{ow}] @max
           %a = AveragePool(%x) {avg0} : f32[N,{c},{oh},{ow}] @avg0
           %b = AveragePool(%x) {avg1} : f32[N,{c},{oh},{ow}] @avg1
         }}",
        max = attrs(None),
        avg0 = attrs(Some(false)),
        avg1 = attrs(Some(true)),
    );
    (text, vec![0, c, h, w])
}

/// The option paths: (name, options, threads). The split path compiles every call split.
fn paths() -> Vec<(&'static str, CodegenOptions, usize)> {
    let split = CodegenOptions {
        parallel_min_macs: Some(0),
        ..CodegenOptions::default()
    };
    vec![
        ("host", CodegenOptions::default(), 1),
        ("split", split, 2),
        (
            "128-bit",
            CodegenOptions {
                max_vector_bits: Some(128),
                ..CodegenOptions::default()
            },
            1,
        ),
        (
            "avx2",
            CodegenOptions {
                avx2_only: true,
                ..CodegenOptions::default()
            },
            1,
        ),
        (
            "baseline",
            CodegenOptions {
                baseline_isa: true,
                ..CodegenOptions::default()
            },
            1,
        ),
    ]
}

/// Checks `text` on every path at batches 1 and 3 against the interpreter; `vector` says
/// whether its pools must take the vector-rows form.
fn check(text: &str, shape: &[usize], vector: bool) {
    let g = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    qlift_ir::verify(&g).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    for (name, opts, threads) in paths() {
        let mut p =
            JitProgram::compile(&g, &opts).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        p.set_threads(threads);
        for step in &p.program().steps {
            let form = &step.form;
            assert_eq!(form == "vector-rows", vector, "{name}: {form}\n{text}");
            if threads > 1 && vector {
                assert!(
                    has_task(&p, &step.node),
                    "{name}: {} not split\n{text}",
                    step.node
                );
            }
        }
        for batch in [1, 3] {
            let mut shape = shape.to_vec();
            shape[0] = batch;
            let x = special(text.len() as u64 + batch as u64, &shape);
            let want = qlift_ir::interp::run(&g, std::slice::from_ref(&x))
                .unwrap_or_else(|e| panic!("interpreter: {e}\n{text}"));
            let got = p
                .run(std::slice::from_ref(&x))
                .unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.shape(), b.shape(), "{name}, output {i}\n{text}");
                let (a, b) = (bits(a), bits(b));
                if let Some(k) = (0..a.len()).find(|&k| a[k] != b[k]) {
                    panic!(
                        "{name}, batch {batch}, output {i}, element {k}: JIT {:#x}, interpreter {:#x}\n{text}",
                        a[k], b[k]
                    );
                }
            }
        }
    }
}

#[test]
fn random_windows_match_the_interpreter_on_every_path() {
    let mut rng = Rng(0x9001);
    for case in 0..36 {
        let strides = (rng.int(1, 3), 1 + case % 3);
        let (text, shape) = random_case(&mut rng, strides);
        check(&text, &shape, true);
    }
}

#[test]
fn resnet_stem_pool_and_row_tails() {
    // ResNet's 3×3 stride-2 pool, on rows of 4k and 4k + 1..3 outputs, and rows narrower
    // than a vector.
    for (w, ow) in [(16, 8), (17, 9), (19, 10), (21, 11), (5, 3), (3, 2), (1, 1)] {
        let avg = "{ceil_mode=0, count_include_pad=0, dilations=[1, 1], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]}";
        let max = avg.replace("count_include_pad=0, ", "");
        let text = format!(
            "graph t(%x: f32[N,3,9,{w}]) -> (%m, %a) {{
               %m = MaxPool(%x) {max} : f32[N,3,5,{ow}] @max
               %a = AveragePool(%x) {avg} : f32[N,3,5,{ow}] @avg
             }}"
        );
        check(&text, &[0, 3, 9, w], true);
    }
}

#[test]
fn wider_strides_keep_to_the_scalar_walk() {
    let mut rng = Rng(0x4004);
    for _ in 0..4 {
        let strides = (rng.int(1, 4), 4);
        let (text, shape) = random_case(&mut rng, strides);
        check(&text, &shape, false);
    }
}
