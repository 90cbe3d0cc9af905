//! Differential property test of the recurrent layers: random LSTM, GRU and RNN nodes
//! (every direction, both layouts, sequences of several chunks of steps, with and without each optional operand, sequence
//! lengths, every activation, clip, peepholes, `input_forget`, `linear_before_reset`, the
//! sequence or the batch as the run-time batch axis) through the JIT, on one and two threads
//! and on the baseline ISA, must agree with the reference interpreter within 1e-5 relative
//! (to magnitude 1 below it). The same graphs through the rewrite pipeline (the e-graph
//! round trip of multi-result nodes) must keep the interpreter's results.
//!
//! The integer form (int8 `W`/`R`, 8-bit `X`, f32 gates and state: `qlift_ir`'s
//! `ops/recurrent_q.rs`) is checked the same way on layers quantized by
//! `qlift_passes::quantize::recurrent` from their own calibration: JIT = interpreter bit for
//! bit, and the integer layer close to the float one.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::text::{print, PrintOptions};
use qlift_ir::{
    AttrValue, Attrs, DType, Dim, Graph, Op, OpKind, Shape, Tensor, TensorData, TensorType, ValueId,
};
use qlift_passes::quantize::recurrent::quantize_recurrent;
use qlift_passes::quantize::{Calibration, QuantizeOptions};
use qlift_passes::{run_pipeline, PipelineOptions};
use std::sync::Arc;

/// Activations a case picks from (per direction: f, g, h as the cell uses them).
const ACTIVATIONS: [&str; 11] = [
    "Sigmoid",
    "Tanh",
    "Relu",
    "HardSigmoid",
    "Affine",
    "LeakyRelu",
    "ThresholdedRelu",
    "ScaledTanh",
    "Elu",
    "Softsign",
    "Softplus",
];

/// The gate functions (LSTM's and GRU's `f`) a case picks from: those with values in
/// [0, 1]. A gate outside it (a Relu or Affine update gate) makes `(1 − z)·h̃ + z·h` an
/// extrapolation that amplifies every rounding difference step after step, so that two
/// correct f32 and f64 evaluations drift apart by more than 1e-5 on a few random weights.
const GATES: [&str; 2] = ["Sigmoid", "HardSigmoid"];

#[derive(Clone, Debug)]
struct Spec {
    kind: OpKind,
    /// 0 forward, 1 reverse, 2 bidirectional.
    direction: usize,
    seq: usize,
    batch: usize,
    input: usize,
    hidden: usize,
    batch_first: bool,
    /// Axis 0 of X is the run-time batch (the sequence with layout 0).
    runtime: bool,
    bias: bool,
    lengths: bool,
    initial_h: bool,
    initial_c: bool,
    peepholes: bool,
    flag: bool,
    clip: Option<f32>,
    /// `None`: the default activations; else indices into [`ACTIVATIONS`].
    activations: Option<Vec<usize>>,
    /// Which results are graph outputs (bit i for result i; at least one).
    outputs: u8,
    seed: u64,
}

fn spec() -> impl Strategy<Value = Spec> {
    let kind = prop_oneof![Just(OpKind::LSTM), Just(OpKind::GRU), Just(OpKind::RNN)];
    let shape = (
        0usize..3,
        1usize..=19,
        1usize..=3,
        1usize..=9,
        1usize..=9,
        any::<bool>(),
        any::<bool>(),
    );
    let optional = (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    );
    let acts = prop_oneof![
        Just(None),
        proptest::collection::vec(0usize..ACTIVATIONS.len(), 6).prop_map(Some)
    ];
    let clip = prop_oneof![Just(None), (0.5f32..4.0).prop_map(Some)];
    (kind, shape, optional, acts, clip, 1u8..8, any::<u64>()).prop_map(
        |(
            kind,
            (direction, seq, batch, input, hidden, batch_first, runtime),
            (bias, lengths, initial_h, initial_c, peepholes, flag),
            activations,
            clip,
            outputs,
            seed,
        )| Spec {
            kind,
            direction,
            seq,
            batch,
            input,
            hidden,
            batch_first,
            runtime,
            bias,
            lengths,
            initial_h,
            initial_c,
            peepholes,
            flag,
            clip,
            activations,
            outputs,
            seed,
        },
    )
}

/// Uniform values from a fixed-seed LCG.
struct Rand(u64);

impl Rand {
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

impl Spec {
    fn dirs(&self) -> usize {
        if self.direction == 2 {
            2
        } else {
            1
        }
    }

    fn gates(&self) -> usize {
        match self.kind {
            OpKind::LSTM => 4,
            OpKind::GRU => 3,
            _ => 1,
        }
    }

    fn per_direction(&self) -> usize {
        match self.kind {
            OpKind::LSTM => 3,
            OpKind::GRU => 2,
            _ => 1,
        }
    }

    fn results(&self) -> usize {
        if self.kind == OpKind::LSTM {
            3
        } else {
            2
        }
    }

    fn attrs(&self) -> Attrs {
        let n = self.per_direction() * self.dirs();
        let names: Vec<&str> = match &self.activations {
            None => match self.kind {
                OpKind::LSTM => ["Sigmoid", "Tanh", "Tanh"]
                    .iter()
                    .cycle()
                    .take(n)
                    .copied()
                    .collect(),
                OpKind::GRU => ["Sigmoid", "Tanh"]
                    .iter()
                    .cycle()
                    .take(n)
                    .copied()
                    .collect(),
                _ => vec!["Tanh"; n],
            },
            Some(a) => {
                let gated = self.kind != OpKind::RNN;
                let per = self.per_direction();
                a.iter()
                    .take(n)
                    .enumerate()
                    .map(|(k, &i)| {
                        if gated && k % per == 0 {
                            GATES[i % GATES.len()]
                        } else {
                            ACTIVATIONS[i]
                        }
                    })
                    .collect()
            }
        };
        let alpha: Vec<f32> = names
            .iter()
            .map(|n| {
                qlift_ir::RECURRENT_ACTIVATIONS
                    .iter()
                    .find(|a| a.0 == *n)
                    .map_or(0.0, |a| if a.3 { a.1 * 0.9 } else { 0.0 })
            })
            .collect();
        let beta: Vec<f32> = names
            .iter()
            .map(|n| {
                qlift_ir::RECURRENT_ACTIVATIONS
                    .iter()
                    .find(|a| a.0 == *n)
                    .map_or(0.0, |a| if a.4 { a.2 * 1.1 } else { 0.0 })
            })
            .collect();
        let mut attrs = Attrs::new()
            .with(
                "direction",
                AttrValue::Str(["forward", "reverse", "bidirectional"][self.direction].into()),
            )
            .with("hidden_size", AttrValue::Int(self.hidden as i64))
            .with("layout", AttrValue::Int(self.batch_first as i64))
            .with("clip", AttrValue::Float(self.clip.unwrap_or(f32::INFINITY)))
            .with("activations", AttrValue::Str(names.join(",")))
            .with("activation_alpha", AttrValue::Floats(alpha))
            .with("activation_beta", AttrValue::Floats(beta));
        match self.kind {
            OpKind::LSTM => attrs.set("input_forget", AttrValue::Int(self.flag as i64)),
            OpKind::GRU => attrs.set("linear_before_reset", AttrValue::Int(self.flag as i64)),
            _ => {}
        }
        attrs
    }

    /// The graph (weights constant; X, sequence_lens and the initial states inputs) and its
    /// inputs for `samples` run-time samples on axis 0 (when `runtime`).
    fn build(&self, samples: usize) -> (Graph, Vec<Tensor>) {
        let mut rand = Rand(self.seed | 1);
        let (dirs, rows, h, i) = (
            self.dirs(),
            self.gates() * self.hidden,
            self.hidden,
            self.input,
        );
        let axis0 = if self.runtime {
            Dim::Batch
        } else {
            Dim::Fixed(if self.batch_first {
                self.batch
            } else {
                self.seq
            })
        };
        let (seq, batch) = match (self.runtime, self.batch_first) {
            (true, false) => (samples, self.batch),
            (true, true) => (self.seq, samples),
            _ => (self.seq, self.batch),
        };
        let batch_dim = if self.batch_first {
            axis0
        } else {
            Dim::Fixed(batch)
        };
        let mut g = Graph::new("rnn");
        let mut feed = Vec::new();
        let xdims = if self.batch_first {
            vec![axis0, Dim::Fixed(seq), Dim::Fixed(i)]
        } else {
            vec![axis0, Dim::Fixed(batch), Dim::Fixed(i)]
        };
        let xshape = if self.batch_first {
            vec![batch, seq, i]
        } else {
            vec![seq, batch, i]
        };
        let x = g.add_input("x", TensorType::new(DType::F32, Shape(xdims)));
        feed.push(Tensor::from_f32(
            &xshape,
            rand.vec(seq * batch * i, -2.0, 2.0),
        ));
        let scale = |n: usize| 1.5 / (n as f32).sqrt();
        let konst = |g: &mut Graph, name: &str, dims: &[usize], range: f32, rand: &mut Rand| {
            let n = dims.iter().product();
            g.add_const(
                name,
                Arc::new(Tensor::from_f32(dims, rand.vec(n, -range, range))),
                None,
            )
        };
        let w = konst(&mut g, "w", &[dirs, rows, i], scale(i), &mut rand);
        let r = konst(&mut g, "r", &[dirs, rows, h], scale(h), &mut rand);
        let b = self
            .bias
            .then(|| konst(&mut g, "b", &[dirs, 2 * rows], 0.5, &mut rand));
        let lens = self.lengths.then(|| {
            let v = g.add_input("lens", TensorType::new(DType::I32, Shape(vec![batch_dim])));
            let lens: Vec<i32> = rand
                .vec(batch, 0.0, seq as f32 + 0.999)
                .into_iter()
                .map(|l| l as i32)
                .collect();
            feed.push(Tensor::new(DType::I32, vec![batch], TensorData::I32(lens)).unwrap());
            v
        });
        let state_dims = if self.batch_first {
            vec![batch_dim, Dim::Fixed(dirs), Dim::Fixed(h)]
        } else {
            vec![Dim::Fixed(dirs), batch_dim, Dim::Fixed(h)]
        };
        let state_shape = if self.batch_first {
            vec![batch, dirs, h]
        } else {
            vec![dirs, batch, h]
        };
        let state = |g: &mut Graph, name: &str, rand: &mut Rand, feed: &mut Vec<Tensor>| {
            let v = g.add_input(name, TensorType::new(DType::F32, Shape(state_dims.clone())));
            feed.push(Tensor::from_f32(
                &state_shape,
                rand.vec(dirs * batch * h, -1.0, 1.0),
            ));
            v
        };
        let h0 = self
            .initial_h
            .then(|| state(&mut g, "h0", &mut rand, &mut feed));
        let lstm = self.kind == OpKind::LSTM;
        let c0 = (lstm && self.initial_c).then(|| state(&mut g, "c0", &mut rand, &mut feed));
        let p =
            (lstm && self.peepholes).then(|| konst(&mut g, "p", &[dirs, 3 * h], 0.5, &mut rand));
        let mut operands: Vec<Option<ValueId>> = vec![Some(x), Some(w), Some(r), b, lens, h0];
        if lstm {
            operands.extend([c0, p]);
        }
        while operands.len() > 3 && operands.last() == Some(&None) {
            operands.pop();
        }
        let names = ["y", "y_h", "y_c"];
        let results = g
            .add_op(
                "rec",
                Op::new(self.kind, self.attrs()),
                &operands,
                &names[..self.results()],
            )
            .unwrap();
        let mut outputs: Vec<ValueId> = results
            .iter()
            .enumerate()
            .filter(|(i, _)| self.outputs & (1 << i) != 0)
            .map(|(_, v)| *v)
            .collect();
        if outputs.is_empty() {
            outputs.push(results[1]);
        }
        g.set_outputs(outputs).unwrap();
        (g, feed)
    }
}

/// `max |got − want| / max(|want|, 1)` over the elements (infinite on a shape mismatch).
fn relative_error(got: &Tensor, want: &Tensor) -> f32 {
    if got.shape() != want.shape() {
        return f32::INFINITY;
    }
    let (g, w) = (got.as_f32().unwrap(), want.as_f32().unwrap());
    g.iter()
        .zip(w)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0, f32::max)
}

fn options(baseline: bool) -> CodegenOptions {
    CodegenOptions {
        baseline_isa: baseline,
        parallel_min_macs: Some(0),
        ..CodegenOptions::default()
    }
}

/// `g` compiled and run on `feed` by each engine configuration the tests compare with the
/// interpreter: the host ISA on one and two threads, and the baseline ISA.
fn every_engine(
    g: &Graph,
    feed: &[Tensor],
    text: &dyn Fn() -> String,
) -> Result<Vec<(&'static str, Vec<Tensor>)>, TestCaseError> {
    let mut runs = Vec::new();
    for (name, baseline, threads) in [
        ("host", false, 1),
        ("host, two threads", false, 2),
        ("baseline", true, 1),
    ] {
        let mut program = JitProgram::compile(g, &options(baseline))
            .map_err(|e| TestCaseError::fail(format!("{name} compile: {e}\n{}", text())))?;
        program.set_threads(threads);
        let got = program
            .run(feed)
            .map_err(|e| TestCaseError::fail(format!("{name} run: {e}")))?;
        runs.push((name, got));
    }
    Ok(runs)
}

fn check(spec: &Spec, samples: usize) -> Result<(), TestCaseError> {
    let (g, feed) = spec.build(samples);
    qlift_ir::verify(&g).map_err(|e| TestCaseError::fail(format!("verify: {e}")))?;
    let text = || {
        print(
            &g,
            &PrintOptions {
                full_constants: true,
                ..Default::default()
            },
        )
    };
    let want = qlift_ir::interp::run(&g, &feed)
        .map_err(|e| TestCaseError::fail(format!("interp: {e}\n{}", text())))?;
    for (name, got) in every_engine(&g, &feed, &text)? {
        prop_assert_eq!(got.len(), want.len());
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            let err = relative_error(a, b);
            prop_assert!(
                err <= 1e-5,
                "{}: output {} differs from the interpreter by {} (relative)\n{}",
                name,
                k,
                err,
                text()
            );
        }
    }
    // The pipeline's e-graph round trip keeps the multi-result node and its results.
    let (piped, _) = run_pipeline(&g, &PipelineOptions::default())
        .map_err(|e| TestCaseError::fail(format!("pipeline: {e}\n{}", text())))?;
    let again = qlift_ir::interp::run(&piped, &feed)
        .map_err(|e| TestCaseError::fail(format!("interp after the pipeline: {e}")))?;
    prop_assert_eq!(
        &again,
        &want,
        "the pipeline changed the results\n{}",
        print(&piped, &PrintOptions::default())
    );
    Ok(())
}

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 64;
    }
    config.failure_persistence = Some(Box::new(FileFailurePersistence::WithSource(
        "proptest-regressions",
    )));
    config
}

/// The activations the integer form has: indices into [`ACTIVATIONS`] (Sigmoid, Tanh,
/// Relu); gate positions (index 0 of a gated cell's triple) map to Sigmoid through
/// [`GATES`].
fn integer_spec() -> impl Strategy<Value = Spec> {
    spec().prop_map(|mut s| {
        let per = s.per_direction();
        let gated = s.kind != OpKind::RNN;
        s.activations = s.activations.map(|a| {
            a.iter()
                .enumerate()
                .map(|(k, &i)| if gated && k % per == 0 { 0 } else { i % 3 })
                .collect()
        });
        s
    })
}

/// `spec`'s layer quantized from its own inputs (the interpreter's calibration), and the
/// float graph.
fn quantized(spec: &Spec, samples: usize) -> (Graph, Graph, Vec<Tensor>) {
    let (g, feed) = spec.build(samples);
    let mut calibration = Calibration::default();
    calibration.observe(&g, &feed).unwrap();
    let mut q = g.clone();
    let opts = QuantizeOptions {
        min_sqnr_db: 0.0,
        ..QuantizeOptions::default()
    };
    assert_eq!(
        quantize_recurrent(&mut q, &calibration, &opts).unwrap(),
        1,
        "the layer was not quantized"
    );
    qlift_ir::verify(&q).unwrap();
    (g, q, feed)
}

fn check_integer(spec: &Spec, samples: usize) -> Result<(), TestCaseError> {
    let (float, g, feed) = quantized(spec, samples);
    let text = || {
        print(
            &g,
            &PrintOptions {
                full_constants: true,
                ..Default::default()
            },
        )
    };
    let want = qlift_ir::interp::run(&g, &feed)
        .map_err(|e| TestCaseError::fail(format!("interp: {e}\n{}", text())))?;
    for (name, got) in every_engine(&g, &feed, &text)? {
        prop_assert_eq!(got.len(), want.len());
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            let bits = |t: &Tensor| {
                t.as_f32()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            prop_assert!(
                a.shape() == b.shape() && bits(a) == bits(b),
                "{}: output {} differs from the interpreter\n{:?}\n{:?}\n{}",
                name,
                k,
                a,
                b,
                text()
            );
        }
    }
    // Bounded cells (the default activations) stay close to the float layer.
    if spec.activations.is_none() {
        let fp32 = qlift_ir::interp::run(&float, &feed).unwrap();
        for (a, b) in want.iter().zip(&fp32) {
            let err = a
                .as_f32()
                .unwrap()
                .iter()
                .zip(b.as_f32().unwrap())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            prop_assert!(
                err < 0.1,
                "the integer layer is {} away from the float one\n{}",
                err,
                text()
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Random integer recurrent layers: JIT = interpreter bit for bit.
    #[test]
    fn random_integer_recurrent_layers_are_bit_exact(spec in integer_spec(), samples in 1usize..=4) {
        check_integer(&spec, samples)?;
    }

    /// Random recurrent layers: JIT = interpreter within 1e-5 relative.
    #[test]
    fn random_recurrent_layers_agree_through_the_jit(spec in spec(), samples in 1usize..=4) {
        check(&spec, samples)?;
    }
}

/// A case of each cell with every optional operand, both layouts, bidirectional, clip and
/// non-default activations, so that a plain `cargo test` covers them whatever proptest draws.
#[test]
fn every_feature_agrees() {
    for kind in [OpKind::LSTM, OpKind::GRU, OpKind::RNN] {
        for (batch_first, runtime) in [(false, false), (false, true), (true, false), (true, true)] {
            for flag in [false, true] {
                let spec = Spec {
                    kind,
                    direction: 2,
                    seq: 19,
                    batch: 3,
                    input: 6,
                    hidden: 7,
                    batch_first,
                    runtime,
                    bias: true,
                    lengths: true,
                    initial_h: true,
                    initial_c: true,
                    peepholes: true,
                    flag,
                    clip: flag.then_some(1.5),
                    activations: flag.then(|| vec![3, 1, 9, 0, 7, 10]),
                    outputs: 7,
                    seed: 7,
                };
                check(&spec, 3).unwrap_or_else(|e| {
                    panic!(
                        "{kind} layout {} runtime {runtime} flag {flag}: {e}",
                        batch_first as u8
                    )
                });
            }
        }
    }
}

/// Every cell in the integer form with every optional operand, both layouts,
/// bidirectional, clip, Relu, GRU both ways, rows and columns that are not whole vectors.
#[test]
fn every_integer_feature_is_bit_exact() {
    for kind in [OpKind::LSTM, OpKind::GRU, OpKind::RNN] {
        for (batch_first, runtime) in [(false, false), (false, true), (true, false), (true, true)] {
            for flag in [false, true] {
                let spec = Spec {
                    kind,
                    direction: 2,
                    seq: 19,
                    batch: 3,
                    input: 13,
                    hidden: 11,
                    batch_first,
                    runtime,
                    bias: true,
                    lengths: true,
                    initial_h: true,
                    initial_c: true,
                    peepholes: true,
                    flag,
                    clip: flag.then_some(1.5),
                    activations: flag.then(|| vec![0, 2, 0, 2, 2, 1]),
                    outputs: 7,
                    seed: 11,
                };
                check_integer(&spec, 3).unwrap_or_else(|e| {
                    panic!(
                        "{kind} layout {} runtime {runtime} flag {flag}: {e}",
                        batch_first as u8
                    )
                });
            }
        }
    }
}

/// A sequence length outside `0..=seq` is an error naming the node in the interpreter and
/// in compiled code, not a panic or an out-of-bounds read.
#[test]
fn bad_sequence_lengths_are_errors() {
    let spec = Spec {
        kind: OpKind::GRU,
        direction: 0,
        seq: 3,
        batch: 2,
        input: 2,
        hidden: 3,
        batch_first: false,
        runtime: false,
        bias: false,
        lengths: true,
        initial_h: false,
        initial_c: false,
        peepholes: false,
        flag: false,
        clip: None,
        activations: None,
        outputs: 3,
        seed: 1,
    };
    let (g, mut feed) = spec.build(1);
    for bad in [4, -1] {
        feed[1] = Tensor::new(DType::I32, vec![2], TensorData::I32(vec![1, bad])).unwrap();
        let e = qlift_ir::interp::run(&g, &feed).unwrap_err().to_string();
        assert!(e.contains("rec") && e.contains("sequence_lens"), "{e}");
        let program = JitProgram::compile(&g, &CodegenOptions::default()).unwrap();
        let e = program.run(&feed).unwrap_err().to_string();
        assert!(e.contains("rec") && e.contains("sequence_lens"), "{e}");
    }
}

/// Y past a sample's length is zero and its Y_h is the state at its last step, in both
/// directions (checked on the interpreter against hand-computed values).
#[test]
fn lengths_zero_the_tail() {
    let spec = Spec {
        kind: OpKind::RNN,
        direction: 2,
        seq: 4,
        batch: 2,
        input: 3,
        hidden: 2,
        batch_first: false,
        runtime: false,
        bias: true,
        lengths: true,
        initial_h: false,
        initial_c: false,
        peepholes: false,
        flag: false,
        clip: None,
        activations: None,
        outputs: 3,
        seed: 3,
    };
    let (g, mut feed) = spec.build(1);
    feed[1] = Tensor::new(DType::I32, vec![2], TensorData::I32(vec![4, 2])).unwrap();
    let out = qlift_ir::interp::run(&g, &feed).unwrap();
    let (y, yh) = (out[0].as_f32().unwrap(), out[1].as_f32().unwrap());
    // Y [seq 4, dirs 2, batch 2, hidden 2]: sample 1 has steps 0 and 1 only.
    let at = |t: usize, d: usize, b: usize| &y[((t * 2 + d) * 2 + b) * 2..][..2];
    for t in 2..4 {
        for d in 0..2 {
            assert_eq!(at(t, d, 1), &[0.0, 0.0]);
        }
    }
    // Forward Y_h is the last step's; reverse Y_h is step 0's (where the reverse pass ends).
    assert_eq!(&yh[2..4], at(1, 0, 1));
    assert_eq!(&yh[6..8], at(0, 1, 1));
    assert_eq!(&yh[0..2], at(3, 0, 0));
    assert_eq!(&yh[4..6], at(0, 1, 0));
    assert!(at(1, 0, 1).iter().any(|&v| v != 0.0));
}

/// With the sequence as the run-time batch and every input and output carrying it, a call
/// on two threads must not split the sequence into parts (each part would start from the
/// initial state).
#[test]
fn the_sequence_is_not_split_across_threads() {
    for kind in [OpKind::LSTM, OpKind::GRU, OpKind::RNN] {
        let spec = Spec {
            kind,
            direction: 2,
            seq: 0,
            batch: 2,
            input: 4,
            hidden: 5,
            batch_first: false,
            runtime: true,
            bias: true,
            lengths: false,
            initial_h: false,
            initial_c: false,
            peepholes: false,
            flag: false,
            clip: None,
            activations: None,
            outputs: 1,
            seed: 5,
        };
        check(&spec, 21).unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}
