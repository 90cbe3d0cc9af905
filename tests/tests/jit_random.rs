//! Differential property test of the JIT: random float CNNs (convolutions of every shape
//! the importer accepts, pools, residual Adds, channel Concats, Gemm/MatMul heads) are
//! quantized by `qlift::quantize` on random calibration data, and the lowered integer graph
//! must give BIT-IDENTICAL outputs through the JIT (host ISA and the baseline SSE2/scalar
//! path) and through the reference interpreter, for batches of 1 to 4. The same float
//! graphs after the rewrite pipeline must agree within 1e-4 relative.
//!
//! A failing case is shrunk by proptest and reported with the graph printed as IR text
//! (all constants inline) and a `; run:` line with the interpreter's result, ready to be
//! saved as a filetest under `tests/filetests/run/`.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use qlift::quantize::quantize_limited_planned;
use qlift::{
    ActivationScheme, CalibrationMethod, Limits, PtqOptions, QuantPlan, QuantizeOptions,
    WeightBits, WeightGranularity,
};
use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::text::{print, PrintOptions};
use qlift_ir::{
    AttrValue, Attrs, DType, Dim, Graph, NodeOp, Op, OpKind, Shape, Tensor, TensorData, TensorType,
    ValueId,
};
use qlift_passes::quantize::Outcome;
use qlift_passes::{run_pipeline, PipelineOptions};
use std::sync::Arc;

/// How a convolution's group is chosen from its input channel count.
#[derive(Clone, Copy, Debug)]
enum Group {
    One,
    /// group = input channels, one output channel per group.
    Depthwise,
    /// group = the `i % len`th divisor of the input channel count.
    Divisor(usize),
}

/// What follows a convolution (or a residual Add).
#[derive(Clone, Copy, Debug)]
enum Act {
    None,
    Relu,
    Clip(f32, f32),
}

#[derive(Clone, Debug)]
struct ConvSpec {
    out: usize,
    group: Group,
    kernel: [usize; 2],
    strides: [usize; 2],
    /// Begin pads then end pads (ONNX order).
    pads: [usize; 4],
    dilations: [usize; 2],
    bias: bool,
    act: Act,
}

#[derive(Clone, Debug)]
struct PoolSpec {
    kernel: [usize; 2],
    strides: [usize; 2],
    /// Clamped below the kernel extent of their axis when built.
    pads: [usize; 4],
    ceil: bool,
}

/// A shape-preserving branch (stride 1, total padding = window span − 1) of a residual Add
/// or a Concat. A convolution branch keeps its output channel count only in a Concat.
#[derive(Clone, Debug)]
enum Branch {
    Identity,
    Conv(ConvSpec),
    MaxPool(PoolSpec),
}

#[derive(Clone, Debug)]
enum Block {
    Conv(ConvSpec),
    MaxPool(PoolSpec),
    AvgPool(PoolSpec, bool),
    /// `act(a(x) + conv(x))`, the convolution with as many channels as `x`.
    Residual(Branch, ConvSpec, Act),
    /// `Concat(a(x), b(x))` along channels.
    Concat(Branch, Branch),
}

#[derive(Clone, Debug)]
enum Head {
    /// The feature map is the output.
    None,
    /// GlobalAveragePool → Flatten → Gemm.
    Gemm {
        out: usize,
        trans_b: bool,
        bias: bool,
    },
    /// (GlobalAveragePool →) Flatten → MatMul.
    MatMul { out: usize, global_pool: bool },
}

#[derive(Clone, Debug)]
struct Net {
    channels: usize,
    height: usize,
    width: usize,
    blocks: Vec<Block>,
    head: Head,
    seed: u64,
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        Just(Act::None),
        Just(Act::Relu),
        (-1.0f32..0.5, 0.25f32..2.0).prop_map(|(lo, span)| Act::Clip(lo, lo + span)),
    ]
}

fn group() -> impl Strategy<Value = Group> {
    prop_oneof![
        Just(Group::One),
        Just(Group::Depthwise),
        (0usize..6).prop_map(Group::Divisor)
    ]
}

fn pair(lo: usize, hi: usize) -> impl Strategy<Value = [usize; 2]> {
    prop::array::uniform2(lo..=hi)
}

fn conv() -> impl Strategy<Value = ConvSpec> {
    (
        1usize..=20,
        group(),
        pair(1, 4),
        pair(1, 3),
        prop::array::uniform4(0usize..=2),
        pair(1, 2),
        any::<bool>(),
        act(),
    )
        .prop_map(
            |(out, group, kernel, strides, pads, dilations, bias, act)| ConvSpec {
                out,
                group,
                kernel,
                strides,
                pads,
                dilations,
                bias,
                act,
            },
        )
}

fn pool() -> impl Strategy<Value = PoolSpec> {
    (
        pair(1, 3),
        pair(1, 2),
        prop::array::uniform4(0usize..=2),
        any::<bool>(),
    )
        .prop_map(|(kernel, strides, pads, ceil)| PoolSpec {
            kernel,
            strides,
            pads,
            ceil,
        })
}

fn branch() -> impl Strategy<Value = Branch> {
    prop_oneof![
        Just(Branch::Identity),
        conv().prop_map(Branch::Conv),
        pool().prop_map(Branch::MaxPool)
    ]
}

fn block() -> impl Strategy<Value = Block> {
    prop_oneof![
        3 => conv().prop_map(Block::Conv),
        1 => pool().prop_map(Block::MaxPool),
        1 => (pool(), any::<bool>()).prop_map(|(p, include)| Block::AvgPool(p, include)),
        1 => (branch(), conv(), act()).prop_map(|(a, b, act)| Block::Residual(a, b, act)),
        1 => (branch(), branch()).prop_map(|(a, b)| Block::Concat(a, b)),
    ]
}

fn head() -> impl Strategy<Value = Head> {
    prop_oneof![
        Just(Head::None),
        (1usize..=20, any::<bool>(), any::<bool>()).prop_map(|(out, trans_b, bias)| Head::Gemm {
            out,
            trans_b,
            bias
        }),
        (1usize..=20, any::<bool>())
            .prop_map(|(out, global_pool)| Head::MatMul { out, global_pool }),
    ]
}

fn net() -> impl Strategy<Value = Net> {
    (
        1usize..=20,
        3usize..=9,
        3usize..=9,
        prop::collection::vec(block(), 1..=5),
        head(),
        any::<u64>(),
    )
        .prop_map(|(channels, height, width, blocks, head, seed)| Net {
            channels,
            height,
            width,
            blocks,
            head,
            seed,
        })
}

/// Uniform values from a fixed-seed LCG: cases are reproducible from their `seed`.
struct Rand(u64);

impl Rand {
    fn new(seed: u64) -> Rand {
        Rand(seed.wrapping_mul(2654435761).wrapping_add(1))
    }

    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                lo + (hi - lo) * ((self.0 >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    }
}

/// Builds a graph from a `Net`, tracking [C, H, W] and skipping layers that do not fit.
struct Builder {
    g: Graph,
    rand: Rand,
    n: usize,
}

fn ints(v: &[usize]) -> AttrValue {
    AttrValue::Ints(v.iter().map(|&x| x as i64).collect())
}

/// Output extent of a window over `extent` (ONNX rules, including ceil_mode's dropping of a
/// window that starts in the end padding); `None` when the window does not fit.
fn out_extent(
    extent: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    begin: usize,
    end: usize,
    ceil: bool,
) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    let padded = extent + begin + end;
    let room = padded.checked_sub(span)?;
    let mut n = if ceil {
        room.div_ceil(stride)
    } else {
        room / stride
    } + 1;
    if ceil && (n - 1) * stride >= extent + begin {
        n -= 1;
    }
    Some(n)
}

impl Builder {
    fn konst(&mut self, dims: &[usize], lo: f32, hi: f32) -> ValueId {
        self.n += 1;
        let v = self.rand.vec(dims.iter().product(), lo, hi);
        self.g.add_const(
            &format!("k{}", self.n),
            Arc::new(Tensor::from_f32(dims, v)),
            None,
        )
    }

    fn op(&mut self, kind: OpKind, attrs: Attrs, operands: &[Option<ValueId>]) -> ValueId {
        self.n += 1;
        let name = format!("{}{}", kind.name().to_lowercase(), self.n);
        self.g
            .add_op(&name, Op::new(kind, attrs), operands, &[&name])
            .unwrap_or_else(|e| panic!("{name}: {e}"))[0]
    }

    /// [C, H, W] of an activation.
    fn chw(&self, x: ValueId) -> [usize; 3] {
        let dims = self.g.value_type(x).shape.dims().to_vec();
        assert_eq!(dims.len(), 4, "{dims:?}");
        let d = |i: usize| dims[i].fixed().expect("fixed extent");
        [d(1), d(2), d(3)]
    }

    fn act(&mut self, x: ValueId, act: Act) -> ValueId {
        match act {
            Act::None => x,
            Act::Relu => self.op(OpKind::Relu, Attrs::new(), &[Some(x)]),
            Act::Clip(lo, hi) => self.op(
                OpKind::Clip,
                Attrs::new()
                    .with("min", AttrValue::Float(lo))
                    .with("max", AttrValue::Float(hi)),
                &[Some(x)],
            ),
        }
    }

    /// A convolution; with `same`, stride 1 and the padding split so that H and W stay, and
    /// `same_channels` forces the output channels to the input's. `None` when it does not fit.
    fn conv(
        &mut self,
        x: ValueId,
        s: &ConvSpec,
        same: bool,
        same_channels: bool,
    ) -> Option<ValueId> {
        let [c, h, w] = self.chw(x);
        let group = match s.group {
            Group::One => 1,
            Group::Depthwise => c,
            Group::Divisor(i) => {
                let divisors: Vec<usize> = (1..=c).filter(|d| c % d == 0).collect();
                divisors[i % divisors.len()]
            }
        };
        let m = if same_channels || matches!(s.group, Group::Depthwise) {
            c
        } else {
            // A multiple of the group near `out`.
            s.out.div_ceil(group) * group
        };
        let mut strides = s.strides;
        let mut pads = s.pads;
        let mut dilations = s.dilations;
        for a in 0..2 {
            let extent = [h, w][a];
            if same {
                strides[a] = 1;
                // Shape-preserving padding of at most 2 a side: dilation 2 only with kernel ≤ 2.
                if dilations[a] * (s.kernel[a] - 1) > 4 {
                    dilations[a] = 1;
                }
                let total = dilations[a] * (s.kernel[a] - 1);
                let begin = s.pads[a].clamp(total.saturating_sub(2), total.min(2));
                pads[a] = begin;
                pads[a + 2] = total - begin;
            } else if out_extent(
                extent,
                s.kernel[a],
                strides[a],
                dilations[a],
                pads[a],
                pads[a + 2],
                false,
            )
            .is_none()
            {
                dilations[a] = 1;
            }
            out_extent(
                extent,
                s.kernel[a],
                strides[a],
                dilations[a],
                pads[a],
                pads[a + 2],
                false,
            )?;
        }
        let fan_in = (c / group) * s.kernel[0] * s.kernel[1];
        let bound = 1.5 / (fan_in as f32).sqrt();
        let wt = self.konst(&[m, c / group, s.kernel[0], s.kernel[1]], -bound, bound);
        let b = s.bias.then(|| self.konst(&[m], -0.3, 0.3));
        let attrs = Attrs::new()
            .with("kernel_shape", ints(&s.kernel))
            .with("strides", ints(&strides))
            .with("pads", ints(&pads))
            .with("dilations", ints(&dilations))
            .with("group", AttrValue::Int(group as i64));
        let y = self.op(OpKind::Conv, attrs, &[Some(x), Some(wt), b]);
        if same {
            assert_eq!(self.chw(y)[1..], [h, w], "shape-preserving conv {s:?}");
        }
        Some(self.act(y, s.act))
    }

    /// A MaxPool or AveragePool; pads clamped below the kernel. With `same`, stride 1 and
    /// shape-preserving padding, no ceil_mode.
    fn pool(&mut self, x: ValueId, s: &PoolSpec, avg: Option<bool>, same: bool) -> Option<ValueId> {
        let [_, h, w] = self.chw(x);
        let mut strides = s.strides;
        let mut pads = s.pads;
        let mut ceil = s.ceil;
        for a in 0..2 {
            let k = s.kernel[a];
            if same {
                strides[a] = 1;
                ceil = false;
                let begin = s.pads[a].min(k - 1);
                pads[a] = begin;
                pads[a + 2] = k - 1 - begin;
            } else {
                pads[a] = pads[a].min(k - 1);
                pads[a + 2] = pads[a + 2].min(k - 1);
            }
            out_extent([h, w][a], k, strides[a], 1, pads[a], pads[a + 2], ceil)?;
        }
        let mut attrs = Attrs::new()
            .with("kernel_shape", ints(&s.kernel))
            .with("strides", ints(&strides))
            .with("pads", ints(&pads))
            .with("dilations", ints(&[1, 1]))
            .with("ceil_mode", AttrValue::Int(ceil as i64));
        let kind = match avg {
            Some(include) => {
                attrs = attrs.with("count_include_pad", AttrValue::Int(include as i64));
                OpKind::AveragePool
            }
            None => OpKind::MaxPool,
        };
        Some(self.op(kind, attrs, &[Some(x)]))
    }

    fn branch(&mut self, x: ValueId, b: &Branch, same_channels: bool) -> Option<ValueId> {
        match b {
            Branch::Identity => Some(x),
            Branch::Conv(s) => self.conv(x, s, true, same_channels),
            Branch::MaxPool(s) => self.pool(x, s, None, true),
        }
    }

    fn block(&mut self, x: ValueId, b: &Block) -> Option<ValueId> {
        match b {
            Block::Conv(s) => self.conv(x, s, false, false),
            Block::MaxPool(s) => self.pool(x, s, None, false),
            Block::AvgPool(s, include) => self.pool(x, s, Some(*include), false),
            Block::Residual(a, b, act) => {
                let a = self.branch(x, a, true)?;
                let b = self.conv(x, b, true, true)?;
                let sum = self.op(OpKind::Add, Attrs::new(), &[Some(a), Some(b)]);
                Some(self.act(sum, *act))
            }
            Block::Concat(a, b) => {
                let a = self.branch(x, a, false)?;
                let b = self.branch(x, b, false)?;
                Some(self.op(
                    OpKind::Concat,
                    Attrs::new().with("axis", AttrValue::Int(1)),
                    &[Some(a), Some(b)],
                ))
            }
        }
    }
}

/// The float graph of `net`. A Concat of two identities is a valid graph, so every `Net`
/// gives one.
fn build(net: &Net) -> Graph {
    build_counting_skips(net).0
}

/// The float graph and how many blocks were left out because they did not fit.
fn build_counting_skips(net: &Net) -> (Graph, usize) {
    let mut b = Builder {
        g: Graph::new("random_cnn"),
        rand: Rand::new(net.seed),
        n: 0,
    };
    let shape = Shape(vec![
        Dim::Batch,
        Dim::Fixed(net.channels),
        Dim::Fixed(net.height),
        Dim::Fixed(net.width),
    ]);
    let mut x = b.g.add_input("x", TensorType::new(DType::F32, shape));
    let mut skipped = 0;
    for block in &net.blocks {
        match b.block(x, block) {
            Some(y) => x = y,
            None => skipped += 1,
        }
    }
    let flatten = Attrs::new().with("axis", AttrValue::Int(1));
    let y = match net.head {
        Head::None => x,
        Head::Gemm { out, trans_b, bias } => {
            let [c, ..] = b.chw(x);
            let gap = b.op(OpKind::GlobalAveragePool, Attrs::new(), &[Some(x)]);
            let flat = b.op(OpKind::Flatten, flatten, &[Some(gap)]);
            let bound = 1.5 / (c as f32).sqrt();
            let dims = if trans_b { [out, c] } else { [c, out] };
            let w = b.konst(&dims, -bound, bound);
            let bias = bias.then(|| b.konst(&[out], -0.3, 0.3));
            let attrs = Attrs::new()
                .with("alpha", AttrValue::Float(1.0))
                .with("beta", AttrValue::Float(1.0))
                .with("transA", AttrValue::Int(0))
                .with("transB", AttrValue::Int(trans_b as i64));
            b.op(OpKind::Gemm, attrs, &[Some(flat), Some(w), bias])
        }
        Head::MatMul { out, global_pool } => {
            let x = if global_pool {
                b.op(OpKind::GlobalAveragePool, Attrs::new(), &[Some(x)])
            } else {
                x
            };
            let [c, h, w] = b.chw(x);
            let flat = b.op(OpKind::Flatten, flatten, &[Some(x)]);
            let k = c * h * w;
            let bound = 1.5 / (k as f32).sqrt();
            let wt = b.konst(&[k, out], -bound, bound);
            b.op(OpKind::MatMul, Attrs::new(), &[Some(flat), Some(wt)])
        }
    };
    b.g.set_outputs(vec![y]).unwrap();
    qlift_ir::verify(&b.g).unwrap();
    (b.g, skipped)
}

fn input(net: &Net, batch: usize, seed: u64, range: f32) -> Tensor {
    let dims = [batch, net.channels, net.height, net.width];
    Tensor::from_f32(
        &dims,
        Rand::new(seed).vec(dims.iter().product(), -range, range),
    )
}

/// A tensor as the IR text writes constants: `f32[1,2] [1.0, 2.0]`.
fn tensor_text(t: &Tensor) -> String {
    let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
    let values: Vec<String> = match t.as_f32() {
        Ok(v) => v.iter().map(|x| format!("{x:?}")).collect(),
        Err(_) => t
            .to_i64_vec()
            .unwrap()
            .iter()
            .map(|x| x.to_string())
            .collect(),
    };
    format!("{}[{}] [{}]", t.dtype(), dims.join(","), values.join(", "))
}

/// The failing graph as a run filetest: IR text with every constant, and the interpreter's
/// result for `x` as the expectation.
fn filetest(g: &Graph, x: &Tensor, want: &[Tensor]) -> String {
    let text = print(
        g,
        &PrintOptions {
            full_constants: true,
            ..PrintOptions::default()
        },
    );
    let want: Vec<String> = want.iter().map(tensor_text).collect();
    format!(
        "; test run\n{text}; run: {} -> {}\n",
        tensor_text(x),
        want.join(" ;; ")
    )
}

/// Bit equality (f32 compared by bit pattern); on a difference, the first differing element.
fn first_difference(got: &Tensor, want: &Tensor) -> Option<String> {
    if got.dtype() != want.dtype() || got.shape() != want.shape() {
        return Some(format!(
            "got {}{:?}, want {}{:?}",
            got.dtype(),
            got.shape(),
            want.dtype(),
            want.shape()
        ));
    }
    match (got.data(), want.data()) {
        (TensorData::F32(a), TensorData::F32(b)) => {
            let i = a
                .iter()
                .zip(b.iter())
                .position(|(x, y)| x.to_bits() != y.to_bits())?;
            let differing = a
                .iter()
                .zip(b.iter())
                .filter(|(x, y)| x.to_bits() != y.to_bits())
                .count();
            Some(format!(
                "element {i} of {:?}: got {:?}, want {:?} ({differing} of {} differ)",
                want.shape(),
                a[i],
                b[i],
                a.len()
            ))
        }
        _ => {
            let (a, b) = (got.to_i64_vec().ok()?, want.to_i64_vec().ok()?);
            let i = a.iter().zip(&b).position(|(x, y)| x != y)?;
            Some(format!(
                "element {i} of {:?}: got {}, want {}",
                want.shape(),
                a[i],
                b[i]
            ))
        }
    }
}

/// max |got − want| relative to max(|want|) (at least 1e-3, for outputs near zero).
fn relative_error(got: &Tensor, want: &Tensor) -> f32 {
    let (a, b) = (got.as_f32().unwrap(), want.as_f32().unwrap());
    let scale = b.iter().map(|v| v.abs()).fold(1e-3f32, f32::max);
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() != y.is_nan() {
                f32::INFINITY
            } else if x.is_nan() {
                0.0
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f32::max)
        / scale
}

/// The host's best code (VNNI where it has it), AVX2 at most (`pmaddwd`, no AVX-512: an
/// AVX2-only CPU's code), and baseline SSE2.
/// Code paths: name, options and threads per call (two threads split a batch, or, at
/// batch 1, the kernels' own work).
const ISAS: [(&str, CodegenOptions, usize); 5] = [
    (
        "host",
        CodegenOptions {
            target: None,
            baseline_isa: false,
            pic: false,
            no_vnni: false,
            avx2_only: false,
            profile: false,
            max_vector_bits: None,
            parallel_min_macs: None,
            no_winograd: false,
            weight_only_f32: false,
            no_fusion: false,
        },
        1,
    ),
    (
        "host, two threads",
        CodegenOptions {
            target: None,
            baseline_isa: false,
            pic: false,
            no_vnni: false,
            avx2_only: false,
            profile: false,
            max_vector_bits: None,
            parallel_min_macs: Some(0),
            no_winograd: false,
            weight_only_f32: false,
            no_fusion: false,
        },
        2,
    ),
    (
        "host-128",
        CodegenOptions {
            target: None,
            baseline_isa: false,
            pic: false,
            no_vnni: false,
            avx2_only: false,
            profile: false,
            max_vector_bits: Some(128),
            parallel_min_macs: None,
            no_winograd: false,
            weight_only_f32: false,
            no_fusion: false,
        },
        1,
    ),
    (
        "avx2",
        CodegenOptions {
            target: None,
            baseline_isa: false,
            pic: false,
            no_vnni: false,
            avx2_only: true,
            profile: false,
            max_vector_bits: None,
            parallel_min_macs: None,
            no_winograd: false,
            weight_only_f32: false,
            no_fusion: false,
        },
        1,
    ),
    (
        "baseline",
        CodegenOptions {
            target: None,
            baseline_isa: true,
            pic: false,
            no_vnni: false,
            avx2_only: false,
            profile: false,
            max_vector_bits: None,
            parallel_min_macs: None,
            no_winograd: false,
            weight_only_f32: false,
            no_fusion: false,
        },
        1,
    ),
];

fn jit_run(
    g: &Graph,
    opts: &CodegenOptions,
    threads: usize,
    x: &Tensor,
) -> Result<Vec<Tensor>, String> {
    let mut program = JitProgram::compile(g, opts).map_err(|e| format!("compile: {e}"))?;
    program.set_threads(threads);
    program
        .run(std::slice::from_ref(x))
        .map_err(|e| format!("run: {e}"))
}

const CALIBRATION_SAMPLES: usize = 8;

/// 48 cases unless `PROPTEST_CASES` says otherwise (`PROPTEST_RNG_SEED` replays a run);
/// failures are saved next to this file and replayed first.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 48;
    }
    config.max_shrink_iters = 2000;
    config.failure_persistence = Some(Box::new(FileFailurePersistence::WithSource(
        "proptest-regressions",
    )));
    config
}

proptest! {
    #![proptest_config(config())]

    /// The lowered integer graph: the JIT (both ISAs) bit for bit equal to the interpreter.
    #[test]
    fn quantized_random_cnns_run_bit_exact_through_the_jit(
        net in net(),
        batch in 1usize..=4,
        symmetric in any::<bool>(),
        percentile in any::<bool>(),
        per_tensor in any::<bool>(),
        four_bit in any::<bool>(),
        int16 in 0u8..8,
    ) {
        let g = build(&net);
        // Int16 layers: the op types of bit set in `int16` (Conv, Gemm, MatMul) that the net
        // has, through a plan; their 8-bit neighbours read them through Requantize.
        let wide: Vec<&str> = ["Conv", "Gemm", "MatMul"]
            .into_iter()
            .enumerate()
            .filter(|&(i, kind)| {
                int16 & (1 << i) != 0
                    && g.node_ids().any(|n| g.node(n).op.kind().is_some_and(|k| k.name() == kind))
            })
            .map(|(_, kind)| kind)
            .collect();
        let plan = QuantPlan::parse(
            &wide.iter().map(|k| format!("[op_types.{k}]\nprecision = \"int16\"\n")).collect::<String>(),
        )
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let calibration = input(&net, CALIBRATION_SAMPLES, net.seed ^ 0xca11b, 1.0);
        let opts = QuantizeOptions {
            method: if percentile { CalibrationMethod::Percentile(99.9) } else { CalibrationMethod::MinMax },
            scheme: if symmetric { ActivationScheme::SymmetricI8 } else { ActivationScheme::AsymmetricU8 },
            // Every op the policy allows computes in integers: the kernels are under test.
            min_sqnr_db: 0.0,
            weights: if per_tensor { WeightGranularity::PerTensor } else { WeightGranularity::PerChannel },
            outliers: Default::default(),
            // W4A8: int4 weights through the same integer kernels.
            ptq: PtqOptions { weight_bits: if four_bit { WeightBits::Four } else { WeightBits::Eight }, ..Default::default() },
        };
        let q = quantize_limited_planned(&g, &[calibration], &opts, &plan, &PipelineOptions::default(), &Limits::default(), &|_, _| {})
            .map_err(|e| TestCaseError::fail(format!("quantize: {e}\n{}", print(&g, &PrintOptions::default()))))?;
        let lowered = q.lowered;
        // The int16 layers asked for read 16-bit activations.
        let wide_products = lowered
            .node_ids()
            .filter(|&n| matches!(lowered.node(n).op.kind(), Some(OpKind::QConv | OpKind::QMatMul)))
            .filter_map(|n| lowered.node_inputs(n).first().copied().flatten())
            .filter(|&x| lowered.value_type(x).dtype == DType::I16)
            .count();
        // (Those whose i32 accumulator could wrap at 16 bits stay int8, saying so.)
        let int16_units = q.decisions.iter().filter(|d| matches!(d.outcome, Outcome::Int16 { .. })).count();
        let asked = q.decisions.iter().filter(|d| matches!(d.outcome, Outcome::Int16 { .. } | Outcome::Int8ByBound { .. })).count();
        prop_assert_eq!(asked > 0, !wide.is_empty(), "int16 asked for {:?}, {} units", wide, asked);
        prop_assert_eq!(wide_products > 0, int16_units > 0, "{} products read i16, {} int16 units:\n{}", wide_products, int16_units, print(&lowered, &PrintOptions::default()));
        // The integer products read weights of the width asked for (no float fallback).
        let weight_type = if four_bit { DType::I4 } else { DType::I8 };
        let integer_products = lowered
            .node_ids()
            .filter(|&n| matches!(lowered.node(n).op.kind(), Some(OpKind::QConv | OpKind::QMatMul)))
            .filter_map(|n| lowered.node_inputs(n).get(1).copied().flatten())
            .filter(|&w| lowered.const_value(w).is_some())
            .map(|w| lowered.value_type(w).dtype)
            .collect::<Vec<_>>();
        prop_assert!(integer_products.iter().all(|&d| d == weight_type), "weights {integer_products:?}, want {weight_type}");
        // Wider than the calibration range, so that requantization saturates too.
        let x = input(&net, batch, net.seed ^ 0x7e57, 1.25);
        let want = qlift_ir::interp::run(&lowered, std::slice::from_ref(&x)).map_err(|e| TestCaseError::fail(format!("interp: {e}")))?;
        for (isa, opts, threads) in &ISAS {
            let result = jit_run(&lowered, opts, *threads, &x).and_then(|got| {
                match got.iter().zip(&want).find_map(|(g, w)| first_difference(g, w)) {
                    Some(d) => Err(d),
                    None if got.len() != want.len() => Err(format!("{} outputs, want {}", got.len(), want.len())),
                    None => Ok(()),
                }
            });
            if let Err(e) = result {
                return Err(TestCaseError::fail(format!(
                    "{isa} JIT differs from the interpreter: {e}\n{net:?} batch {batch} {opts:?}\n{}",
                    filetest(&lowered, &x, &want)
                )));
            }
        }
    }

    /// Linear layers over a sequence (`[N, S, K] × [K, M]`, as in transformers): the
    /// quantized product takes the batch and sequence as rows, bit for bit in every ISA.
    /// With `int16` the MatMuls are int16 layers (i16 activations in, the first one's i16
    /// result out), on the same micro-kernel; with `int16-result` (`wide` 2) they read 8-bit
    /// activations and write i16 results; `long` draws reductions of hundreds.
    #[test]
    fn quantized_sequence_products_run_bit_exact_through_the_jit(
        seq in 1usize..=9,
        k in 1usize..=70,
        long in any::<bool>(),
        m in 1usize..=40,
        relu in any::<bool>(),
        batch in 1usize..=3,
        wide in 0usize..3,
        seed in any::<u64>(),
    ) {
        let k = if long { 7 * k } else { k };
        let precision = ["int8", "int16", "int16-result"][wide];
        let mut rand = Rand::new(seed);
        // Two layers, so that the first one's result stays 8-bit (the form under test).
        let w1 = Tensor::from_f32(&[k, m], rand.vec(k * m, -1.0, 1.0));
        let w2 = Tensor::from_f32(&[m, 3], rand.vec(m * 3, -1.0, 1.0));
        let h = if relu { "%g" } else { "%h" };
        let text = format!(
            "graph seq(%x: f32[N,{seq},{k}]) -> (%y) {{\n  %w1 = const {w1}\n  %w2 = const {w2}\n  {h} = MatMul(%x, %w1) : f32[N,{seq},{m}]\n{relu}  %y = MatMul(%h, %w2) : f32[N,{seq},3]\n}}\n",
            w1 = tensor_text(&w1),
            w2 = tensor_text(&w2),
            relu = if relu { format!("  %h = Relu(%g) : f32[N,{seq},{m}]\n") } else { String::new() },
        );
        let g = qlift_ir::text::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let calibration = Tensor::from_f32(&[8, seq, k], rand.vec(8 * seq * k, -1.0, 1.0));
        let opts = QuantizeOptions { min_sqnr_db: 0.0, ..QuantizeOptions::default() };
        let plan = QuantPlan::parse(&format!("[op_types.MatMul]\nprecision = \"{precision}\"\n"))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let q = quantize_limited_planned(&g, &[calibration], &opts, &plan, &PipelineOptions::default(), &Limits::default(), &|_, _| {})
            .map_err(|e| TestCaseError::fail(format!("quantize: {e}\n{text}")))?;
        let int16_units = q.decisions.iter().filter(|d| matches!(d.outcome, Outcome::Int16 { .. })).count();
        let lowered = q.lowered;
        prop_assert!(lowered.node_ids().any(|n| lowered.node(n).op.kind() == Some(OpKind::QMatMul)), "no QMatMul\n{text}");
        let reads_i16 = lowered
            .node_ids()
            .filter(|&n| lowered.node(n).op.kind() == Some(OpKind::QMatMul))
            .filter_map(|n| lowered.node_inputs(n).first().copied().flatten())
            .any(|x| lowered.value_type(x).dtype == DType::I16);
        prop_assert_eq!(reads_i16, int16_units > 0 && wide == 1);
        let writes_i16 = lowered
            .node_ids()
            .filter(|&n| lowered.node(n).op.kind() == Some(OpKind::QMatMul))
            .any(|n| lowered.value_type(ValueId { node: n, output: 0 }).dtype == DType::I16);
        prop_assert_eq!(writes_i16, int16_units > 0, "\n{}", print(&lowered, &PrintOptions::default()));
        let x = Tensor::from_f32(&[batch, seq, k], rand.vec(batch * seq * k, -1.25, 1.25));
        let want = qlift_ir::interp::run(&lowered, std::slice::from_ref(&x)).map_err(|e| TestCaseError::fail(format!("interp: {e}")))?;
        // Every product, 8- or 16-bit, on the micro-kernel; not always an `int16-result`
        // one: its multiplier into a 16-bit result can need a requantization shift under
        // 32, which the micro-kernel does not take (`matmul-packed` then).
        if std::is_x86_feature_detected!("avx2") && wide != 2 {
            let program = JitProgram::compile(&lowered, &CodegenOptions::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let forms: Vec<&str> = program.program().steps.iter().map(|s| s.form.as_str()).collect();
            let products = lowered.node_ids().filter(|&n| lowered.node(n).op.kind() == Some(OpKind::QMatMul)).count();
            prop_assert_eq!(forms.iter().filter(|&&f| f.starts_with("wide-matmul")).count(), products, "forms {:?}", forms);
        }
        for (isa, opts, threads) in &ISAS {
            let got = jit_run(&lowered, opts, *threads, &x).map_err(TestCaseError::fail)?;
            if let Some(d) = first_difference(&got[0], &want[0]) {
                return Err(TestCaseError::fail(format!("{isa} JIT differs: {d}\n{}", filetest(&lowered, &x, &want))));
            }
        }
    }

    /// QMatMul written directly (not through the quantizer), so that its operands reach the
    /// extremes: weights at −128 and 127, input zero points at 0 and 255, reductions not a
    /// multiple of 4 or 16 and long ones. Weights that fit i8 after their zero point take
    /// VNNI's u8×i8 quads where the host has them (`wide-matmul-vnni`), others (u8 weights
    /// with zero point 100) the i16 pairs; bit for bit in every ISA.
    #[test]
    fn quantized_products_at_the_extremes_run_bit_exact_through_the_jit(
        k in 1usize..=80,
        long in 0usize..3,
        m in 1usize..=40,
        rows in 1usize..=14,
        zx in prop::sample::select(vec![0u8, 255, 3, 128]),
        extremes in any::<bool>(),
        u8_weights in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let k = [k, 16 * k, 53 * k][long];
        let mut rand = Rand::new(seed);
        let mut draw = |n: usize, lo: f32, hi: f32| -> Vec<i64> {
            rand.vec(n, lo, hi).into_iter().map(|v| v.floor() as i64).collect()
        };
        let (wty, zw, range) = if u8_weights { ("u8", 100, (0.0, 256.0)) } else { ("i8", 0, (-128.0, 128.0)) };
        let mut w = draw(k * m, range.0, range.1);
        if extremes {
            // Every third weight at the type's ends.
            for (i, v) in w.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
                *v = if i % 2 == 0 { range.0 as i64 } else { range.1 as i64 - 1 };
            }
        }
        let mut x = draw(rows * k, 0.0, 256.0);
        if extremes {
            x.iter_mut().step_by(2).for_each(|v| *v = 255);
        }
        let bias = draw(m, -5000.0, 5000.0);
        let list = |v: &[i64]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
        let scales: Vec<String> = (0..m).map(|j| format!("{:?}", 0.002 + 0.001 * (j % 5) as f32)).collect();
        let sy = 0.5 * (k as f32).sqrt();
        let text = format!(
            "graph q(%x: u8[N,{k}] quant(scale=0.05, zero_point={zx})) -> (%y) {{\n  %w = const {wty}[{k},{m}] quant(axis=1, scale=[{s}], zero_point=[{z}]) [{w}]\n  %b = const i32[{m}] [{b}]\n  %y = QMatMul(%x, %w, %b) : u8[N,{m}] quant(scale={sy:?}, zero_point=7)\n}}\n",
            s = scales.join(", "),
            z = list(&vec![zw; m]),
            w = list(&w),
            b = list(&bias),
        );
        let g = qlift_ir::text::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let x = Tensor::from_i64_values(DType::U8, vec![rows, k], x).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want = qlift_ir::interp::run(&g, std::slice::from_ref(&x)).map_err(|e| TestCaseError::fail(format!("interp: {e}")))?;
        if std::is_x86_feature_detected!("avx2") {
            let program = JitProgram::compile(&g, &CodegenOptions::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let form = program.program().steps.iter().map(|s| s.form.clone()).find(|f| f.starts_with("wide-matmul"));
            let fits_i8 = w.iter().all(|&v| (-128..=127).contains(&(v - zw)));
            let expected = if qlift_tests::host::has_vnni() && fits_i8 { "wide-matmul-vnni" } else { "wide-matmul" };
            prop_assert_eq!(form.as_deref(), Some(expected));
        }
        for (isa, opts, threads) in &ISAS {
            let got = jit_run(&g, opts, *threads, &x).map_err(TestCaseError::fail)?;
            if let Some(d) = first_difference(&got[0], &want[0]) {
                return Err(TestCaseError::fail(format!("{isa} JIT differs: {d}\n{}", filetest(&g, &x, &want))));
            }
        }
    }

    /// The float graph after the rewrite pipeline: the JIT within 1e-4 of the interpreter.
    #[test]
    fn float_random_cnns_agree_through_the_jit(net in net(), batch in 1usize..=4) {
        let g = build(&net);
        let (optimized, _) = run_pipeline(&g, &PipelineOptions::default()).map_err(|e| TestCaseError::fail(format!("pipeline: {e}")))?;
        let x = input(&net, batch, net.seed ^ 0x7e57, 1.25);
        let want = qlift_ir::interp::run(&optimized, std::slice::from_ref(&x)).map_err(|e| TestCaseError::fail(format!("interp: {e}")))?;
        for (isa, opts, threads) in &ISAS {
            let result = jit_run(&optimized, opts, *threads, &x).and_then(|got| {
                let err = got.iter().zip(&want).map(|(g, w)| if g.shape() == w.shape() { relative_error(g, w) } else { f32::INFINITY }).fold(0.0, f32::max);
                if err <= 1e-4 && got.len() == want.len() { Ok(()) } else { Err(format!("relative error {err}")) }
            });
            if let Err(e) = result {
                return Err(TestCaseError::fail(format!(
                    "{isa} JIT differs from the interpreter: {e}\n{net:?} batch {batch}\n{}",
                    filetest(&optimized, &x, &want)
                )));
            }
        }
    }
}

/// The generator is not vacuous: over 48 nets drawn with a fixed seed, every feature the
/// property tests are meant to cover occurs, and few blocks are left out for not fitting.
#[test]
fn the_generator_covers_every_feature() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeSet;
    let mut runner = TestRunner::deterministic();
    let (mut seen, mut blocks, mut skipped) = (BTreeSet::new(), 0, 0);
    for _ in 0..48 {
        let net = net().new_tree(&mut runner).unwrap().current();
        let (g, s) = build_counting_skips(&net);
        blocks += net.blocks.len();
        skipped += s;
        for id in g.node_ids() {
            let NodeOp::Apply(op) = &g.node(id).op else {
                continue;
            };
            let a = &op.attrs;
            let x = g.node_inputs(id)[0].map(|v| g.value_type(v).shape.dims().to_vec());
            let list = |name: &str| a.ints(name).unwrap_or_default().to_vec();
            let mut add = |feature: &str| {
                seen.insert(feature.to_string());
            };
            add(op.kind.name());
            match op.kind {
                OpKind::Conv => {
                    let c = x.as_ref().and_then(|d| d[1].fixed()).unwrap();
                    let group = a.int("group").unwrap() as usize;
                    add(match group {
                        1 => "conv group 1",
                        g if g == c && c > 1 => "conv depthwise",
                        _ => "conv grouped",
                    });
                    let out = g.node(id).outputs[0].ty.shape.dims()[1].fixed().unwrap();
                    if out > 16 && out % 16 != 0 {
                        add("conv more than 16 channels, not a multiple of 16");
                    }
                    if g.node_inputs(id).len() == 3 && g.node_inputs(id)[2].is_some() {
                        add("conv bias");
                    }
                    let k = list("kernel_shape");
                    if k[0] != k[1] {
                        add("conv non-square kernel");
                    }
                    if list("dilations").contains(&2) {
                        add("conv dilation 2");
                    }
                    if list("strides").contains(&2) {
                        add("conv stride 2");
                    }
                    let p = list("pads");
                    if p[0] != p[2] || p[1] != p[3] {
                        add("conv asymmetric pads");
                    }
                }
                OpKind::MaxPool | OpKind::AveragePool => {
                    let name = op.kind.name();
                    if a.int("ceil_mode").unwrap() != 0 {
                        add(&format!("{name} ceil_mode"));
                    }
                    if list("pads").iter().any(|&p| p > 0) {
                        add(&format!("{name} pads"));
                    }
                    if list("strides").contains(&2) {
                        add(&format!("{name} stride 2"));
                    }
                    if op.kind == OpKind::AveragePool {
                        add(&format!(
                            "count_include_pad {}",
                            a.int("count_include_pad").unwrap()
                        ));
                    }
                }
                OpKind::Gemm => add(&format!("Gemm transB {}", a.int("transB").unwrap())),
                _ => {}
            }
        }
    }
    let want = [
        "Conv",
        "conv group 1",
        "conv depthwise",
        "conv grouped",
        "conv more than 16 channels, not a multiple of 16",
        "conv bias",
        "conv non-square kernel",
        "conv dilation 2",
        "conv stride 2",
        "conv asymmetric pads",
        "Relu",
        "Clip",
        "MaxPool",
        "MaxPool ceil_mode",
        "MaxPool pads",
        "MaxPool stride 2",
        "AveragePool",
        "AveragePool ceil_mode",
        "AveragePool pads",
        "AveragePool stride 2",
        "count_include_pad 0",
        "count_include_pad 1",
        "Add",
        "Concat",
        "GlobalAveragePool",
        "Flatten",
        "Gemm transB 0",
        "Gemm transB 1",
        "MatMul",
    ];
    let missing: Vec<&str> = want.into_iter().filter(|f| !seen.contains(*f)).collect();
    assert!(missing.is_empty(), "never generated: {missing:?}");
    assert!(
        skipped * 5 <= blocks,
        "{skipped} of {blocks} blocks did not fit"
    );
}

// Activation × activation MatMul, reductions and normalizations: single-op graphs on random
// shapes whose operands are all graph inputs, through every ISA against the interpreter.

/// A MatMul of two activations: batch dimensions drawn per operand (1 where it broadcasts),
/// the run-time batch on axis 0 of both or of A only, vector operands sometimes.
#[derive(Clone, Debug)]
struct MatMulSpec {
    /// Batch extents of the result (without the run-time batch).
    batch: Vec<usize>,
    /// Per batch axis: whether A, and B, have extent 1 there (broadcast).
    a_ones: Vec<bool>,
    b_ones: Vec<bool>,
    /// Leading batch axes B leaves out (numpy's right alignment).
    b_drop: usize,
    m: usize,
    k: usize,
    n: usize,
    /// A has the run-time batch on axis 0 (and so does the result); B too when `b_runtime`.
    runtime: bool,
    b_runtime: bool,
    /// A is a vector `[K]` (then neither has batch axes).
    vector_a: bool,
    seed: u64,
}

fn matmul_spec() -> impl Strategy<Value = MatMulSpec> {
    (
        prop::collection::vec((1usize..=4, any::<bool>(), any::<bool>()), 0..=3),
        0usize..=3,
        1usize..=19,
        1usize..=40,
        1usize..=21,
        any::<bool>(),
        any::<bool>(),
        0u8..8,
        any::<u64>(),
    )
        .prop_map(
            |(axes, b_drop, m, k, n, runtime, b_runtime, vector, seed)| {
                let b_drop = b_drop.min(axes.len());
                MatMulSpec {
                    batch: axes.iter().map(|a| a.0).collect(),
                    a_ones: axes.iter().map(|a| a.1).collect(),
                    b_ones: axes.iter().map(|a| a.2).collect(),
                    b_drop,
                    m,
                    k,
                    n,
                    runtime,
                    b_runtime: b_runtime && b_drop == 0,
                    vector_a: vector == 0,
                    seed,
                }
            },
        )
}

impl MatMulSpec {
    /// The operands' static shapes and concrete shapes at batch size `samples`.
    fn shapes(&self, samples: usize) -> [(Shape, Vec<usize>); 2] {
        if self.vector_a {
            return [
                (Shape::fixed(&[self.k]), vec![self.k]),
                (Shape::fixed(&[self.k, self.n]), vec![self.k, self.n]),
            ];
        }
        let side = |ones: &[bool], drop: usize, rows: usize, cols: usize, runtime: bool| {
            let mut dims: Vec<Dim> = Vec::new();
            if runtime {
                dims.push(Dim::Batch);
            }
            for (i, &e) in self.batch.iter().enumerate().skip(drop) {
                dims.push(Dim::Fixed(if ones[i] { 1 } else { e }));
            }
            dims.extend([Dim::Fixed(rows), Dim::Fixed(cols)]);
            let concrete = Shape(dims.clone()).resolve(samples);
            (Shape(dims), concrete)
        };
        let b_runtime = self.runtime && self.b_runtime;
        [
            side(&self.a_ones, 0, self.m, self.k, self.runtime),
            side(
                &self.b_ones,
                if b_runtime { 0 } else { self.b_drop },
                self.k,
                self.n,
                b_runtime,
            ),
        ]
    }
}

/// A graph of one op on graph inputs of the given types.
fn single_op(kind: OpKind, attrs: Attrs, inputs: &[TensorType]) -> Result<Graph, String> {
    let mut g = Graph::new("op");
    let operands: Vec<Option<ValueId>> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| Some(g.add_input(&format!("x{i}"), t.clone())))
        .collect();
    let y = g
        .add_op("y", Op::new(kind, attrs), &operands, &["y"])
        .map_err(|e| e.to_string())?;
    g.set_outputs(y).map_err(|e| e.to_string())?;
    Ok(g)
}

/// The graph through every ISA on `inputs`, against the interpreter: integers exact, floats
/// within 1e-4 of the output's range.
fn agrees_everywhere(g: &Graph, inputs: &[Tensor]) -> Result<(), TestCaseError> {
    let want = qlift_ir::interp::run(g, inputs)
        .map_err(|e| TestCaseError::fail(format!("interp: {e}")))?;
    for (isa, opts, threads) in &ISAS {
        let mut program = JitProgram::compile(g, opts)
            .map_err(|e| TestCaseError::fail(format!("{isa} compile: {e}")))?;
        program.set_threads(*threads);
        let got = program
            .run(inputs)
            .map_err(|e| TestCaseError::fail(format!("{isa} run: {e}")))?;
        for (gv, w) in got.iter().zip(&want) {
            let bad = if w.dtype() == DType::F32 {
                let err = if gv.shape() == w.shape() {
                    relative_error(gv, w)
                } else {
                    f32::INFINITY
                };
                (err > 1e-4).then(|| format!("relative error {err}"))
            } else {
                first_difference(gv, w)
            };
            if let Some(e) = bad {
                return Err(TestCaseError::fail(format!(
                    "{isa} JIT differs from the interpreter: {e}\n{}",
                    print(g, &PrintOptions::default())
                )));
            }
        }
    }
    Ok(())
}

/// A reduction-like op on one random input.
#[derive(Clone, Debug)]
struct ReduceSpec {
    kind: OpKind,
    dims: Vec<usize>,
    /// Axis 0 is the run-time batch.
    runtime: bool,
    /// Which axes are reduced (Reduce*), or the axis (the others: the first set one).
    axes: Vec<bool>,
    keepdims: bool,
    flag: bool,
    integer: bool,
    seed: u64,
}

const REDUCE_KINDS: [OpKind; 19] = [
    OpKind::ReduceMean,
    OpKind::ReduceSum,
    OpKind::ReduceMax,
    OpKind::ReduceMin,
    OpKind::ReduceProd,
    OpKind::ReduceL1,
    OpKind::ReduceL2,
    OpKind::ReduceSumSquare,
    OpKind::ReduceLogSum,
    OpKind::ReduceLogSumExp,
    OpKind::ArgMax,
    OpKind::ArgMin,
    OpKind::CumSum,
    OpKind::LayerNormalization,
    OpKind::LpNormalization,
    OpKind::LogSoftmax,
    OpKind::Hardmax,
    OpKind::InstanceNormalization,
    OpKind::GroupNormalization,
];

fn reduce_spec() -> impl Strategy<Value = ReduceSpec> {
    (
        0..REDUCE_KINDS.len(),
        prop::collection::vec((1usize..=9, any::<bool>()), 1..=4),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(kind, axes, runtime, keepdims, flag, integer, seed)| ReduceSpec {
                kind: REDUCE_KINDS[kind],
                dims: axes.iter().map(|a| a.0).collect(),
                axes: axes.iter().map(|a| a.1).collect(),
                runtime,
                keepdims,
                flag,
                integer,
                seed,
            },
        )
}

impl ReduceSpec {
    /// The first set axis (the op's `axis`), or the last axis.
    fn axis(&self) -> usize {
        self.axes
            .iter()
            .position(|&a| a)
            .unwrap_or(self.dims.len() - 1)
    }

    /// The graph and its input at batch size `samples`.
    fn build(&self, samples: usize) -> Result<(Graph, Vec<Tensor>), String> {
        use OpKind::{
            ArgMax, ArgMin, CumSum, GroupNormalization, Hardmax, InstanceNormalization,
            LayerNormalization, LogSoftmax, LpNormalization, ReduceL1, ReduceLogSum, ReduceMax,
            ReduceMean, ReduceMin, ReduceProd, ReduceSum, ReduceSumSquare,
        };
        let rank = self.dims.len();
        let mut dims: Vec<Dim> = self.dims.iter().map(|&d| Dim::Fixed(d)).collect();
        let runtime = self.runtime && rank > 1;
        if runtime {
            dims[0] = Dim::Batch;
        }
        let concrete = Shape(dims.clone()).resolve(samples);
        let count: usize = concrete.iter().product();
        let integer = self.integer
            && matches!(
                self.kind,
                ReduceSum
                    | ReduceMax
                    | ReduceMin
                    | ReduceProd
                    | ReduceL1
                    | ReduceSumSquare
                    | ReduceMean
                    | ArgMax
                    | ArgMin
                    | CumSum
            );
        // Positive values where a logarithm follows; few distinct values for ArgMax ties.
        let (lo, hi) = match self.kind {
            ReduceLogSum => (0.1, 2.0),
            ReduceProd => (0.5, 1.5),
            _ => (-3.0, 3.0),
        };
        let mut rand = Rand::new(self.seed);
        let x = if integer {
            Tensor::new(
                DType::I32,
                concrete.clone(),
                TensorData::I32(
                    rand.vec(count, -50.0, 50.0)
                        .iter()
                        .map(|v| (*v as i32) / 8)
                        .collect(),
                ),
            )
            .map_err(|e| e.to_string())?
        } else {
            Tensor::from_f32(&concrete, rand.vec(count, lo, hi))
        };
        let xty = TensorType::new(x.dtype(), Shape(dims.clone()));
        // Axes that leave the batch alone (kernels reduce along static axes only there).
        let axis = if runtime && self.axis() == 0 {
            rank - 1
        } else {
            self.axis()
        };
        let axis_attr = AttrValue::Int(axis as i64);
        let int = |v: bool| AttrValue::Int(v as i64);
        let mut inputs = vec![x];
        let mut types = vec![xty];
        let attrs = match self.kind {
            ArgMax | ArgMin => Attrs::new()
                .with("axis", axis_attr)
                .with("keepdims", int(self.keepdims))
                .with("select_last_index", int(self.flag)),
            CumSum => Attrs::new()
                .with("axis", axis_attr)
                .with("exclusive", int(self.flag))
                .with("reverse", int(self.keepdims)),
            LpNormalization => Attrs::new()
                .with("axis", axis_attr)
                .with("p", AttrValue::Int(if self.flag { 2 } else { 1 })),
            LogSoftmax | Hardmax => Attrs::new().with("axis", axis_attr),
            LayerNormalization => {
                let axis = axis.max(usize::from(runtime));
                let normalized = &concrete[axis..];
                // Scale over the trailing axes (or only the last one), bias sometimes.
                let scale_dims = if self.keepdims {
                    normalized.to_vec()
                } else {
                    vec![*normalized.last().unwrap()]
                };
                for _ in 0..if self.flag { 2 } else { 1 } {
                    let t = Tensor::from_f32(
                        &scale_dims,
                        rand.vec(scale_dims.iter().product(), -2.0, 2.0),
                    );
                    types.push(TensorType::new(DType::F32, Shape::fixed(&scale_dims)));
                    inputs.push(t);
                }
                Attrs::new()
                    .with("axis", AttrValue::Int(axis as i64))
                    .with("epsilon", AttrValue::Float(1e-5))
            }
            InstanceNormalization | GroupNormalization => {
                if rank < 3 {
                    return Err("no spatial axes".to_string());
                }
                let c = concrete[1];
                for _ in 0..2 {
                    inputs.push(Tensor::from_f32(&[c], rand.vec(c, -2.0, 2.0)));
                    types.push(TensorType::new(DType::F32, Shape::fixed(&[c])));
                }
                let attrs = Attrs::new().with("epsilon", AttrValue::Float(1e-5));
                if self.kind == GroupNormalization {
                    let groups = (1..=c)
                        .rev()
                        .find(|g| c % g == 0 && (*g < c || !self.flag))
                        .unwrap_or(1);
                    attrs.with("num_groups", AttrValue::Int(groups as i64))
                } else {
                    attrs
                }
            }
            _ => {
                let axes: Vec<i64> = (0..rank)
                    .filter(|&a| self.axes[a] && !(runtime && a == 0))
                    .map(|a| a as i64)
                    .collect();
                Attrs::new()
                    .with("axes", AttrValue::Ints(axes))
                    .with("keepdims", int(self.keepdims))
                    .with("noop_with_empty_axes", AttrValue::Int(0))
            }
        };
        Ok((single_op(self.kind, attrs, &types)?, inputs))
    }
}

proptest! {
    #![proptest_config(config())]

    /// MatMul of two activations with broadcast batch dimensions: the JIT within 1e-4.
    #[test]
    fn activation_matmuls_agree_through_the_jit(spec in matmul_spec(), samples in 1usize..=3) {
        let [(sa, ca), (sb, cb)] = spec.shapes(samples);
        let mut rand = Rand::new(spec.seed);
        let inputs = [Tensor::from_f32(&ca, rand.vec(ca.iter().product(), -1.0, 1.0)), Tensor::from_f32(&cb, rand.vec(cb.iter().product(), -1.0, 1.0))];
        let types = [TensorType::new(DType::F32, sa), TensorType::new(DType::F32, sb)];
        let g = single_op(OpKind::MatMul, Attrs::new(), &types).map_err(|e| TestCaseError::fail(format!("{spec:?}: {e}")))?;
        agrees_everywhere(&g, &inputs)?;
    }

    /// Reductions, ArgMax/ArgMin, CumSum and the normalizations on random shapes and axes.
    #[test]
    fn reductions_and_normalizations_agree_through_the_jit(spec in reduce_spec(), samples in 1usize..=3) {
        match spec.build(samples) {
            Ok((g, inputs)) => agrees_everywhere(&g, &inputs)?,
            Err(e) if e == "no spatial axes" => {}
            Err(e) => return Err(TestCaseError::fail(format!("{spec:?}: {e}"))),
        }
    }
}

/// An outlier layer whose accumulator bound at asymmetric 16 bits passes `i32::MAX` but
/// whose narrowed one fits: a GELU-like input (bulk in [-0.17, 1], one outlier of 100, so
/// 8 bits fail the check) into K = 768 products with weights spread over [-1, 1]. The
/// layer computes on symmetric int16 ("int16 (15-bit)"); the proof re-derived from the
/// lowered graph holds; the JIT (every ISA) is bit for bit the interpreter on inputs past
/// the calibrated range, among them the worst case for the widest output channel, whose
/// accumulator then reaches the bound's order yet matches the float product (no wrap).
#[test]
fn outlier_layer_narrows_to_symmetric_int16_when_its_bound_passes_i32() {
    const K: usize = 768;
    const M: usize = 16;
    let mut rand = Rand::new(16);
    let w = Tensor::from_f32(&[K, M], rand.vec(K * M, -1.0, 1.0));
    let text = format!(
        "graph narrow(%x: f32[N,{K}]) -> (%y) {{\n  %w = const {}\n  %y = MatMul(%x, %w) : f32[N,{M}]\n}}\n",
        tensor_text(&w)
    );
    let g = qlift_ir::text::parse(&text).unwrap();
    let mut bulk = rand.vec(64 * K, -0.17, 1.0);
    bulk[17] = 100.0;
    let calibration = Tensor::from_f32(&[64, K], bulk);
    let q = quantize_limited_planned(
        &g,
        std::slice::from_ref(&calibration),
        &QuantizeOptions::default(),
        &QuantPlan::default(),
        &PipelineOptions::default(),
        &Limits::default(),
        &|_, _| {},
    )
    .unwrap();
    assert!(
        matches!(
            q.decisions[..],
            [qlift_passes::quantize::Decision {
                outcome: Outcome::Int16BySqnr {
                    symmetric: true,
                    ..
                },
                ..
            }]
        ),
        "{:?}",
        q.decisions
    );
    let lowered = q.lowered;
    let product = lowered
        .node_ids()
        .find(|&n| lowered.node(n).op.kind() == Some(OpKind::QMatMul))
        .expect("a QMatMul");
    let operands = lowered.node_inputs(product);
    let x_type = lowered.value_type(operands[0].unwrap());
    let xq = x_type.quant.clone().unwrap();
    assert_eq!(
        (x_type.dtype, xq.channel(0).1),
        (DType::I16, 0),
        "symmetric i16 input"
    );
    // The proof from the lowered graph: reach · max_c Σ_k |w_q[k, c] − zw_c|.
    let w_value = operands[1].unwrap();
    let wq = lowered.value_type(w_value).quant.clone().unwrap();
    let w_q = lowered.const_value(w_value).unwrap().to_i64_vec().unwrap();
    let l1: Vec<i64> = (0..M)
        .map(|c| {
            (0..K)
                .map(|k| (w_q[k * M + c] - wq.channel(c).1 as i64).abs())
                .sum()
        })
        .collect();
    let widest = (0..M).max_by_key(|&c| l1[c]).unwrap();
    let bound = |reach: i64| reach * l1[widest];
    assert!(
        bound(32768) <= i32::MAX as i64,
        "narrowed bound {}",
        bound(32768)
    );
    // What the asymmetric int16 input would have reached: its zero point for the same
    // calibrated range (MinMax) puts the bulk's side 65000-odd steps away.
    let (_, zx_asym) =
        qlift_passes::calibrate::quant_params(-0.17, 100.0, ActivationScheme::AsymmetricI16);
    let reach_asym = (i16::MAX as i64 - zx_asym as i64).max(zx_asym as i64 - i16::MIN as i64);
    assert!(
        bound(reach_asym) > i32::MAX as i64,
        "asymmetric bound {}",
        bound(reach_asym)
    );
    // Inputs: wider than calibration, and the worst case for the widest channel.
    let mut x = rand.vec(3 * K, -150.0, 150.0);
    x.extend((0..K).map(|k| {
        if w_q[k * M + widest] > 0 {
            200.0
        } else {
            -200.0
        }
    }));
    let x = Tensor::from_f32(&[4, K], x);
    let want = qlift_ir::interp::run(&lowered, std::slice::from_ref(&x)).unwrap();
    for (isa, opts, threads) in &ISAS {
        let got = jit_run(&lowered, opts, *threads, &x).unwrap();
        if let Some(d) = first_difference(&got[0], &want[0]) {
            panic!("{isa} JIT differs from the interpreter: {d}");
        }
    }
    // The worst case: every product at its largest, x saturated to ±32767/−32768 with w's
    // sign. The output (the dequantized accumulator) is that exact sum, past 2^30: no wrap.
    let (sx, sw) = (xq.channel(0).0 as f64, wq.channel(widest).0 as f64);
    let exact: i64 = (0..K)
        .map(|k| {
            let w = w_q[k * M + widest] - wq.channel(widest).1 as i64;
            w * if w_q[k * M + widest] > 0 {
                32767
            } else {
                -32768
            }
        })
        .sum();
    let y = want[0].to_f32_vec()[3 * M + widest] as f64 / (sx * sw);
    assert!(exact > 1 << 30, "the worst case reaches {exact}");
    assert!(
        (y - exact as f64).abs() <= 1e-5 * exact as f64,
        "accumulator {y} vs {exact}"
    );
}
