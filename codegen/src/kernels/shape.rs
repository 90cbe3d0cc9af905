//! Data movement: ops that only copy or re-view their operand.

use super::Kernel;
use cranelift_codegen::ir::InstBuilder;

/// Identity, Dropout, Flatten, Reshape, Squeeze, Unsqueeze: the bytes unchanged (the row-major
/// order is the same under every new shape).
pub(super) fn copy(k: &mut Kernel) -> Result<(), String> {
    let x = k.input(0)?;
    let (src, dst) = (x.ptr, k.output(0).ptr);
    let (bytes, batched) = ((x.per_sample() * x.ty.dtype.size_of()) as i64, x.batched());
    let samples = k.samples(batched);
    let total = k.fb.ins().imul_imm_s(samples, bytes);
    k.memcpy(dst, src, total);
    Ok(())
}
