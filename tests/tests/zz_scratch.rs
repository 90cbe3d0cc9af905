#[test]
fn scratch() {
    let g = qlift::load_onnx(std::path::Path::new("/work/main/target/corpus/magika.onnx"), &Default::default()).unwrap();
    let (g, _) = qlift_passes::run_pipeline(&g, &Default::default()).unwrap();
    let x = qlift::npy::read_npy(std::path::Path::new("/work/main/target/corpus/magika_test.npy")).unwrap().slice_outer(0, 2).unwrap();
    let values = g.input_values();
    let declared = values.iter().map(|v| (g.value(*v).name.as_str(), g.value_type(*v)));
    let binding = qlift_ir::bind_inputs("m", declared, std::slice::from_ref(&x)).unwrap();
    let (mut s, _) = qlift_ir::specialize_for(&g, &binding).unwrap();
    let order = s.topo_order().unwrap();
    let outs: Vec<qlift_ir::ValueId> = order.iter().filter(|&&id| matches!(s.node(id).op, qlift_ir::NodeOp::Apply(_))).map(|&id| qlift_ir::ValueId { node: id, output: 0 }).collect();
    s.set_outputs(outs.clone()).unwrap();
    let want = qlift_ir::interp::run(&s, std::slice::from_ref(&x)).unwrap();
    let p = qlift_codegen::JitProgram::compile(&s, &Default::default()).unwrap();
    let got = p.run(std::slice::from_ref(&x)).unwrap();
    for ((v, a), b) in outs.iter().zip(&got).zip(&want) {
        let (fa, fb) = (a.to_f32_vec(), b.to_f32_vec());
        let err = fa.iter().zip(&fb).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        if err > 1e-3 || a.shape() != b.shape() {
            let n = s.node(v.node);
            println!("{} {:?} {:?} err {err}", n.name, n.op.kind(), a.shape());
        }
    }
}
