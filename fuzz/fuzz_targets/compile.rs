//! Any bytes through the whole pipeline: ONNX import, rewrites, JIT compilation, and a run
//! on zero inputs of the model's input shapes (batch 1) when they are small. Every failure
//! must be an error value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qlift::{CompileOptions, CompiledModel, ImportOptions, Limits};
use qlift_ir::Tensor;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_model_bytes: 1 << 20, max_tensor_bytes: 1 << 20, max_total_bytes: 4 << 20, ..Limits::default() };
    let opts = CompileOptions { import: ImportOptions { limits, ..Default::default() }, ..Default::default() };
    let Ok(model) = CompiledModel::from_onnx_bytes(data, None, &opts) else { return };
    let inputs: Vec<Tensor> = model.inputs().iter().map(|(_, ty)| Tensor::zeros(ty.dtype, &ty.shape.resolve(1))).collect();
    if inputs.iter().map(Tensor::len).sum::<usize>() <= 1 << 16 {
        let _ = model.run(&inputs);
    }
});
