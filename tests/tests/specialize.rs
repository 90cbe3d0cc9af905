//! Graphs with symbolic dimensions besides the batch: shape arithmetic folded by the
//! specializer, one compiled model serving several sequence lengths and batch sizes with
//! programs specialized per input shape, each equal to the interpreter and to a fresh
//! compilation.

use qlift::{CompileOptions, CompiledModel, Engine};
use qlift_ir::text::parse;
use qlift_ir::{Binding, Tensor};

/// `x: [N, seq, 4]` reshaped to `[N, seq, 2, 2]` through the Shape → Gather → Unsqueeze →
/// Concat → Reshape chain exporters write, then scaled per last axis.
const GRAPH: &str = "graph t(%x: f32[N,seq,4]) -> (%y) {
  %s = Shape(%x) {end=3, start=0} : i64[3]
  %i0 = const i64[] [0]
  %i1 = const i64[] [1]
  %b = Gather(%s, %i0) {axis=0} : i64[]
  %q = Gather(%s, %i1) {axis=0} : i64[]
  %bu = Unsqueeze(%b) {axes=[0]} : i64[1]
  %qu = Unsqueeze(%q) {axes=[0]} : i64[1]
  %two = const i64[2] [2, 2]
  %shape = Concat(%bu, %qu, %two) {axis=0} : i64[4]
  %r = Reshape(%x, %shape) {allowzero=0} : f32[?,?,?,?]
  %w = const f32[2] [2.0, -1.0]
  %y = Mul(%r, %w) : f32[?,?,?,2]
}";

fn input(batch: usize, seq: usize) -> Tensor {
    Tensor::from_f32(
        &[batch, seq, 4],
        (0..batch * seq * 4).map(|i| i as f32 * 0.5 - 3.0).collect(),
    )
}

#[test]
fn shape_arithmetic_is_tracked_symbolically() {
    let g = parse(GRAPH).unwrap();
    let s = qlift_ir::specialize(&g, &Binding::default()).unwrap();
    let y = s.outputs()[0];
    assert_eq!(
        qlift_ir::text::type_to_string(s.value_type(y)),
        "f32[N,seq,2,2]"
    );
    // Binding the sequence folds every shape computation away.
    let mut binding = Binding::default();
    binding.syms.insert(qlift_ir::Symbol::new("seq"), 5);
    let s = qlift_ir::specialize(&g, &binding).unwrap();
    assert_eq!(
        qlift_ir::text::type_to_string(s.value_type(s.outputs()[0])),
        "f32[N,5,2,2]"
    );
    assert!(!qlift_ir::needs_binding(&s));
    assert!(s
        .node_ids()
        .all(|id| s.node(id).op.kind() != Some(qlift_ir::OpKind::Shape)));
}

#[test]
fn one_compiled_model_serves_every_sequence_length_and_batch() {
    let g = parse(GRAPH).unwrap();
    let opts = CompileOptions {
        max_specializations: 4,
        ..Default::default()
    };
    let model = CompiledModel::from_graph(&g, None, &opts).unwrap();
    for seq in [3, 8, 1, 3] {
        for batch in [1, 2, 5] {
            let x = input(batch, seq);
            let want = qlift_ir::interp::run(&g, &[x.clone()]).unwrap();
            let got = model.run(&[x.clone()]).unwrap();
            assert_eq!(got, want, "seq {seq}, batch {batch}");
            let fresh = CompiledModel::from_graph(&g, None, &opts)
                .unwrap()
                .run(&[x])
                .unwrap();
            assert_eq!(got, fresh, "seq {seq}, batch {batch}");
        }
    }
    // One program per sequence length (the batch stays a run-time value), at most four.
    assert!(
        (1..=4).contains(&model.specializations()),
        "{}",
        model.specializations()
    );
    let interp = CompiledModel::from_graph(
        &g,
        None,
        &CompileOptions {
            engine: Engine::Interpreter,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        interp.run(&[input(2, 4)]).unwrap(),
        model.run(&[input(2, 4)]).unwrap()
    );
    // Inputs that disagree with the graph are named.
    let bad = model
        .run(&[Tensor::from_f32(&[2, 3, 5], vec![0.0; 30])])
        .unwrap_err();
    assert!(
        bad.to_string().contains("x") && bad.to_string().contains("axis 2"),
        "{bad}"
    );
}

/// Slices that keep everything (the `x[:, :, :]` exporters write, ends past the extents,
/// here on the `?` batch axis too) are bypassed once the batch is bound; a reversing slice
/// of the same shape, and a slice that is a graph output, stay. Results equal the
/// interpreter's on the unspecialized graph.
#[test]
fn slices_that_keep_everything_are_bypassed() {
    let g = parse(
        "graph t(%x: f32[N,3,4]) -> (%y, %w) {
           %s = const i64[3] [0, 0, 0]
           %e = const i64[3] [1000000000, 1000000000, 2147483647]
           %a = const i64[3] [0, 1, 2]
           %one = const i64[3] [1, 1, 1]
           %k = Slice(%x, %s, %e, %a, %one) : f32[?,3,4]
           %back = const i64[1] [-1]
           %from = const i64[1] [3]
           %to = const i64[1] [-100]
           %axis = const i64[1] [2]
           %r = Slice(%k, %from, %to, %axis, %back) : f32[?,3,4]
           %y = Neg(%r) : f32[?,3,4]
           %w = Slice(%x, %s, %e, %a) : f32[?,3,4]
         }",
    )
    .unwrap();
    let s = qlift_ir::specialize(
        &g,
        &Binding {
            batch: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let slices: Vec<String> = s
        .node_ids()
        .filter(|&n| matches!(&s.node(n).op, qlift_ir::NodeOp::Apply(op) if op.kind == qlift_ir::OpKind::Slice))
        .map(|n| s.node(n).name.clone())
        .collect();
    assert_eq!(slices.len(), 2, "{slices:?}");
    assert!(!slices.iter().any(|n| n == "k"), "{slices:?}");
    let x = input(2, 3);
    let want = qlift_ir::interp::run(&g, std::slice::from_ref(&x)).unwrap();
    let got = qlift_ir::interp::run(&s, &[x]).unwrap();
    assert_eq!(got, want);
}
