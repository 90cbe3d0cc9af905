//! The JIT against the reference interpreter on small IR graphs.

use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::text::parse;
use qlift_ir::{Graph, Tensor};

fn compile(text: &str) -> (Graph, JitProgram) {
    let g = parse(text).unwrap();
    qlift_ir::verify(&g).unwrap();
    let p = JitProgram::compile(&g, &CodegenOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    (g, p)
}

/// JIT and interpreter agree exactly on `inputs`.
fn same(text: &str, inputs: &[Tensor]) {
    let (g, p) = compile(text);
    let want = qlift_ir::interp::run(&g, inputs).unwrap();
    let got = p.run(inputs).unwrap();
    assert!(got == want, "JIT {got:?}\ninterpreter {want:?}");
}

#[test]
fn copies_with_the_batch() {
    let x = Tensor::from_f32(&[3, 2, 2], (0..12).map(|i| i as f32).collect());
    same(
        "graph t(%x: f32[N,2,2]) -> (%y, %z, %w) {
           %f = Flatten(%x) {axis=1} : f32[N,4]
           %y = Identity(%f) : f32[N,4]
           %z = Reshape(%f) {allowzero=0, shape=[0, 2, 2]} : f32[N,2,2]
           %w = Unsqueeze(%y) {axes=[1]} : f32[N,1,4]
         }",
        &[x],
    );
}

#[test]
fn outputs_that_are_inputs_or_repeated() {
    let x = Tensor::from_f32(&[1, 2], vec![1.0, 2.0]);
    same(
        "graph t(%x: f32[N,2]) -> (%x, %y, %y) {\n  %y = Identity(%x) : f32[N,2]\n}",
        &[x],
    );
}

#[test]
fn bad_inputs_are_refused_before_running() {
    let (_, p) = compile("graph t(%x: f32[N,4]) -> (%y) {\n  %y = Identity(%x) : f32[N,4]\n}");
    let err = p
        .run(&[Tensor::from_f32(&[2, 3], vec![0.0; 6])])
        .unwrap_err();
    assert!(err.to_string().contains("input `x`"), "{err}");
    assert!(p.run(&[]).is_err());
    let err = p.run(&[Tensor::from_i64(&[1, 4], vec![0; 4])]).unwrap_err();
    assert!(err.to_string().contains("expected f32"), "{err}");
    let ok = p
        .run(&[Tensor::from_f32(
            &[2, 4],
            (0..8).map(|i| i as f32).collect(),
        )])
        .unwrap();
    assert_eq!(ok[0].as_f32().unwrap(), &[0., 1., 2., 3., 4., 5., 6., 7.]);
}

#[test]
fn unsupported_ops_name_the_node() {
    let g = parse("graph t(%x: f32[N,4]) -> (%y) {\n  %y = Softmax(%x) {axis=1} : f32[N,4] @sm\n}")
        .unwrap();
    // Softmax may gain a kernel; a made-up unsupported case is an op with no kernel at all.
    if let Err(e) = JitProgram::compile(&g, &CodegenOptions::default()) {
        assert!(e.to_string().contains("node `sm` (Softmax)"), "{e}");
    }
}

#[test]
fn object_files_and_headers() {
    let g = parse("graph t(%x: f32[N,4]) -> (%y) {\n  %y = Flatten(%x) {axis=1} : f32[N,4]\n}")
        .unwrap();
    let a = qlift_codegen::compile_object(&g, "demo", &CodegenOptions::default()).unwrap();
    assert_eq!(&a.object[..4], b"\x7fELF");
    assert!(a.header.contains("int32_t demo_run(const void *const *inputs, void *const *outputs, void *scratch, int64_t batch);"), "{}", a.header);
    assert!(
        a.header.contains("#define DEMO_INPUT0_SHAPE { 0, 4 }"),
        "{}",
        a.header
    );
    let bad = CodegenOptions {
        target: Some("riscv-nonsense-triple".into()),
        ..Default::default()
    };
    assert!(qlift_codegen::compile_object(&g, "demo", &bad)
        .unwrap_err()
        .to_string()
        .contains("riscv-nonsense-triple"));
    assert!(qlift_codegen::compile_object(&g, "1bad name", &CodegenOptions::default()).is_err());
    // This build of Cranelift carries the x86-64 back end only: other ISAs are a clear error.
    let arm = CodegenOptions {
        target: Some("aarch64-unknown-linux-gnu".into()),
        ..Default::default()
    };
    let e = qlift_codegen::compile_object(&g, "demo", &arm)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("aarch64-unknown-linux-gnu") && e.contains("x86-64 code only"),
        "{e}"
    );
    let other_os = CodegenOptions {
        target: Some("x86_64-apple-darwin".into()),
        ..Default::default()
    };
    let a = qlift_codegen::compile_object(&g, "demo", &other_os).unwrap();
    assert_eq!(&a.object[..4], &[0xcf, 0xfa, 0xed, 0xfe]);
}

#[test]
fn profiled_programs_count_every_kernel_call_and_compute_the_same() {
    let text = "graph t(%x: f32[N,4]) -> (%y) {\n  %a = Relu(%x) : f32[N,4] @r\n  %y = Flatten(%a) {axis=1} : f32[N,4] @f\n}";
    let g = parse(text).unwrap();
    let opts = CodegenOptions {
        profile: true,
        ..Default::default()
    };
    let p = JitProgram::compile(&g, &opts).unwrap();
    let x = Tensor::from_f32(&[2, 4], vec![-1.0, 2.0, -3.0, 4.0, 5.0, -6.0, 7.0, -8.0]);
    for _ in 0..3 {
        assert!(
            p.run(std::slice::from_ref(&x)).unwrap()
                == qlift_ir::interp::run(&g, std::slice::from_ref(&x)).unwrap()
        );
    }
    let times = p.profile().unwrap();
    assert_eq!(times.len(), 2);
    assert!(times.iter().all(|t| t.calls == 3), "{times:?}");
    assert_eq!(
        p.program()
            .steps
            .iter()
            .map(|s| s.node.as_str())
            .collect::<Vec<_>>(),
        ["r", "f"]
    );
    p.reset_profile();
    assert!(p
        .profile()
        .unwrap()
        .iter()
        .all(|t| t.calls == 0 && t.nanos == 0));
    // Without the option there are no timers; AOT refuses them (the timer is qlift's).
    assert!(JitProgram::compile(&g, &CodegenOptions::default())
        .unwrap()
        .profile()
        .is_none());
    assert!(qlift_codegen::compile_object(&g, "demo", &opts).is_err());
}
