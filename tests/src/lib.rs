//! Integration tests live in `tests/tests/`. The library holds what the fuzz targets
//! (`fuzz/fuzz_targets`) and the fuzz regression test share: one definition of what each
//! target does with its input, so that a crash input replays exactly.

/// The fuzz targets' bodies: each takes arbitrary bytes and must return (errors are values),
/// never panic — except on a broken invariant, which is the bug a fuzzer looks for.
pub mod fuzz {
    use qlift::{CompileOptions, CompiledModel, ImportOptions, Limits};
    use qlift_ir::Tensor;

    /// `load_onnx`: any bytes through the ONNX loader.
    pub fn load_onnx(data: &[u8]) {
        let _ = qlift::load_onnx_bytes(data, None, &ImportOptions::default());
    }

    /// `parse_ir`: any text through the IR parser and, when it parses and verifies, the
    /// printer: the printed graph must parse back to the same graph.
    pub fn parse_ir(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else { return };
        let Ok(graph) = qlift_ir::text::parse(text) else { return };
        if qlift_ir::verify(&graph).is_ok() {
            let printed = qlift_ir::text::print(&graph, &qlift_ir::text::PrintOptions { full_constants: true, ..Default::default() });
            let back = qlift_ir::text::parse(&printed).expect("a printed graph parses");
            assert!(back == graph, "print/parse round trip changed the graph");
        }
    }

    /// `compile`: any bytes through import, rewrites and JIT compilation (with limits small
    /// enough for a fuzzer), then a run on zero inputs of the model's input shapes (batch 1)
    /// when they are small.
    pub fn compile(data: &[u8]) {
        let limits = Limits { max_model_bytes: 1 << 20, max_tensor_bytes: 1 << 20, max_total_bytes: 4 << 20, ..Limits::default() };
        let opts = CompileOptions { import: ImportOptions { limits, ..Default::default() }, ..Default::default() };
        let Ok(model) = CompiledModel::from_onnx_bytes(data, None, &opts) else { return };
        let inputs: Vec<Tensor> = model.inputs().iter().map(|(_, ty)| Tensor::zeros(ty.dtype, &ty.shape.resolve(1))).collect();
        if inputs.iter().map(Tensor::len).sum::<usize>() <= 1 << 16 {
            let _ = model.run(&inputs);
        }
    }
}
