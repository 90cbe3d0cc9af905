//! Control flow (If, Loop, Scan) through the public API: the JIT's driver against the
//! interpreter, an If folded when its condition is frozen, and hostile graphs (loops that
//! never end, trip counts past the cap, bodies nested past the limit): errors that name the
//! node, no hang, no panic.

use proptest::prelude::*;
use qlift::{load_qir_text, CompileOptions, CompiledModel, Engine, ImportOptions, Limits};
use qlift_ir::{DType, Tensor, TensorData};

const IF: &str = "graph pick(%c: bool[], %x: f32[N,2]) -> (%y) {
  %y = If(%c, %x) {else_branch=graph other(%x: f32[N,2]) -> (%t) {
    %three = const f32[] [3.0]
    %t = Mul(%x, %three) : f32[N,2]
  }, then_branch=graph twice(%x: f32[N,2]) -> (%s) {
    %s = Add(%x, %x) : f32[N,2]
  }} : f32[N,2]
}
";

/// `acc += step` while `i < m`, `m` given at run time; every partial sum stacked.
const LOOP: &str = "graph sums(%m: i64[], %x: f32[3]) -> (%total, %partials) {
  %yes = const bool[] [1]
  %total, %partials = Loop(%m, %yes, %x, %x) {body=graph body(%i: i64[], %c: bool[], %acc: f32[3], %step: f32[3]) -> (%c, %next, %next) {
    %next = Add(%acc, %step) : f32[3]
  }, captures=1} : f32[3], f32[?,3]
}
";

/// A Loop without a trip count whose condition stays true: it never ends by itself.
const FOREVER: &str = "graph forever(%x: f32[3]) -> (%total) {
  %yes = const bool[] [1]
  %total = Loop(_, %yes, %x) {body=graph body(%i: i64[], %c: bool[], %acc: f32[3]) -> (%c, %next) {
    %next = Add(%acc, %acc) : f32[3]
  }, captures=0} : f32[3]
}
";

fn flag(b: bool) -> Tensor {
    Tensor::new(DType::Bool, vec![], TensorData::U8(vec![b as u8])).unwrap()
}

fn model(text: &str, engine: Engine, limits: Limits) -> CompiledModel {
    let import = ImportOptions {
        limits,
        ..ImportOptions::default()
    };
    let graph = load_qir_text(text, &import).unwrap();
    CompiledModel::from_graph(
        &graph,
        None,
        &CompileOptions {
            engine,
            import,
            ..CompileOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn a_data_dependent_if_runs_compiled_branches() {
    let graph = qlift_ir::text::parse(IF).unwrap();
    let program =
        qlift_codegen::FlowProgram::compile(&graph, &Default::default(), &Default::default())
            .unwrap();
    assert_eq!(
        program.programs(),
        (2, 0),
        "both branches are compiled before the first call"
    );
    let x = Tensor::from_f32(&[3, 2], vec![1.0, -2.0, 0.5, 4.0, -1.5, 3.0]);
    for c in [true, false] {
        let want = qlift_ir::interp::run(&graph, &[flag(c), x.clone()]).unwrap();
        assert_eq!(program.run(&[flag(c), x.clone()]).unwrap(), want);
        let jit = model(IF, Engine::Jit, Limits::default());
        assert_eq!(jit.run(&[flag(c), x.clone()]).unwrap(), want);
    }
}

#[test]
fn a_frozen_condition_folds_the_if_away() {
    let mut import = ImportOptions::default();
    import.constant_inputs.insert("c".into(), flag(false));
    let graph = load_qir_text(IF, &import).unwrap();
    let m = CompiledModel::from_graph(
        &graph,
        None,
        &CompileOptions {
            import,
            ..CompileOptions::default()
        },
    )
    .unwrap();
    let text = m.graph().to_string();
    assert!(!text.contains("If("), "{text}");
    assert!(
        !m.engine_description().contains("control flow"),
        "{}",
        m.engine_description()
    );
    let x = Tensor::from_f32(&[1, 2], vec![1.0, -2.0]);
    assert_eq!(
        m.run(&[x]).unwrap()[0],
        Tensor::from_f32(&[1, 2], vec![3.0, -6.0])
    );
}

#[test]
fn a_loop_that_never_ends_stops_at_the_cap() {
    let limits = Limits {
        max_loop_iterations: 1000,
        ..Limits::default()
    };
    let x = Tensor::from_f32(&[3], vec![1.0, 2.0, 3.0]);
    for engine in [Engine::Jit, Engine::Interpreter] {
        let start = std::time::Instant::now();
        let err = model(FOREVER, engine, limits.clone())
            .run(&[x.clone()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`total`")
                && err.contains("ran 1000 iterations without its condition turning false"),
            "{engine:?}: {err}"
        );
        assert!(
            start.elapsed().as_secs() < 30,
            "{engine:?} took {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn bodies_nested_past_the_limit_are_refused() {
    let mut text = String::from("%y = Relu(%x) : f32[1]");
    for _ in 0..20 {
        text = format!("%y = If(%c, %c, %x) {{else_branch=graph e(%c: bool[], %x: f32[1]) -> (%y) {{ {text} }}, then_branch=graph t(%c: bool[], %x: f32[1]) -> (%x) {{ }}}} : f32[1]");
    }
    let text = format!("graph deep(%c: bool[], %x: f32[1]) -> (%y) {{ {text} }}");
    let err = load_qir_text(&text, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nesting of control-flow bodies is 20, above the limit of 16"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random trip counts against a random cap, through the JIT's driver and the interpreter:
    /// within the cap both give `m` stacked partial sums, past it both refuse, naming the node.
    #[test]
    fn trip_counts_within_and_past_the_cap(m in -2i64..40, cap in 1u64..30, ints in prop::collection::vec(-8i32..8, 3)) {
        // Small integers: the repeated sums are exact, so `m + 1` times the value is the answer.
        let values: Vec<f32> = ints.iter().map(|&v| v as f32).collect();
        let limits = Limits { max_loop_iterations: cap, ..Limits::default() };
        let x = Tensor::from_f32(&[3], values.clone());
        let inputs = [Tensor::from_i64(&[], vec![m]), x];
        let jit = model(LOOP, Engine::Jit, limits.clone()).run(&inputs);
        let interp = model(LOOP, Engine::Interpreter, limits).run(&inputs);
        let trips = m.max(0) as u64;
        if trips <= cap {
            let (jit, interp) = (jit.unwrap(), interp.unwrap());
            prop_assert_eq!(&jit, &interp);
            prop_assert_eq!(jit[1].shape(), &[trips as usize, 3][..]);
            let want: Vec<f32> = values.iter().map(|v| v * (trips as f32 + 1.0)).collect();
            prop_assert_eq!(jit[0].as_f32().unwrap(), &want[..]);
        } else {
            for err in [jit.unwrap_err().to_string(), interp.unwrap_err().to_string()] {
                prop_assert!(err.contains("`total`") && err.contains(&format!("trip count {m} is above the limit of {cap} iterations")), "{}", err);
            }
        }
    }
}

#[test]
fn bodies_export_to_onnx_and_import_back() {
    // Captured values become references to the enclosing graph again, then captures on import.
    for text in [IF, LOOP] {
        let graph = qlift_ir::text::parse(text).unwrap();
        let bytes = qlift::export_onnx(&graph).unwrap();
        let back = qlift::load_onnx_bytes(&bytes, None, &ImportOptions::default()).unwrap();
        let inputs = if text == IF {
            vec![
                flag(false),
                Tensor::from_f32(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]),
            ]
        } else {
            vec![
                Tensor::from_i64(&[], vec![3]),
                Tensor::from_f32(&[3], vec![1.0, 2.0, 3.0]),
            ]
        };
        assert_eq!(
            qlift_ir::interp::run(&back, &inputs).unwrap(),
            qlift_ir::interp::run(&graph, &inputs).unwrap(),
            "{back}"
        );
    }
}
