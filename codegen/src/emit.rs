//! Small builders over Cranelift's `FunctionBuilder` that every kernel uses: counted loops,
//! constants, memory access at byte offsets. Kernels are loop nests over static extents
//! (only the batch is a run-time value), so these few shapes cover them.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, BlockArg, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// Memory flags of every access: no trap (bounds are checked before generated code is
/// entered; buffers are sized at compile time). Alignment is not claimed, so 16-byte vector
/// accesses on 4-byte-aligned tensors stay valid.
pub fn mem() -> MemFlagsData {
    let mut flags = MemFlagsData::new();
    flags.set_notrap();
    flags
}

/// An i64 constant.
pub fn iconst(fb: &mut FunctionBuilder, v: i64) -> Value {
    fb.ins().iconst(types::I64, v)
}

/// `for i in (start..end).step_by(step)` with i64 bounds; `body` emits the loop body.
pub fn for_range(fb: &mut FunctionBuilder, start: Value, end: Value, step: i64, body: impl FnOnce(&mut FunctionBuilder, Value)) {
    let header = fb.create_block();
    let inner = fb.create_block();
    let exit = fb.create_block();
    fb.append_block_param(header, types::I64);
    fb.ins().jump(header, &[BlockArg::Value(start)]);
    fb.switch_to_block(header);
    let i = fb.block_params(header)[0];
    let more = fb.ins().icmp(IntCC::SignedLessThan, i, end);
    fb.ins().brif(more, inner, &[], exit, &[]);
    fb.switch_to_block(inner);
    body(fb, i);
    let next = fb.ins().iadd_imm_s(i, step);
    fb.ins().jump(header, &[BlockArg::Value(next)]);
    fb.switch_to_block(exit);
}

/// `for i in 0..n` with a constant trip count.
pub fn for_count(fb: &mut FunctionBuilder, n: i64, body: impl FnOnce(&mut FunctionBuilder, Value)) {
    let (start, end) = (iconst(fb, 0), iconst(fb, n));
    for_range(fb, start, end, 1, body);
}

/// `for i in 0..n` with a run-time trip count (the batch).
pub fn for_dynamic(fb: &mut FunctionBuilder, n: Value, body: impl FnOnce(&mut FunctionBuilder, Value)) {
    let start = iconst(fb, 0);
    for_range(fb, start, n, 1, body);
}

/// `base + index · scale` (byte address of element `index` of `scale`-byte elements).
pub fn addr(fb: &mut FunctionBuilder, base: Value, index: Value, scale: i64) -> Value {
    let offset = if scale == 1 { index } else { fb.ins().imul_imm_s(index, scale) };
    fb.ins().iadd(base, offset)
}

/// Loads a `ty` element at `base + index · size(ty)`.
pub fn load_at(fb: &mut FunctionBuilder, ty: Type, base: Value, index: Value) -> Value {
    let a = addr(fb, base, index, ty.bytes() as i64);
    fb.ins().load(ty, mem(), a, 0)
}

/// Stores `v` at `base + index · size(v)`.
pub fn store_at(fb: &mut FunctionBuilder, v: Value, base: Value, index: Value) {
    let ty = fb.func.dfg.value_type(v);
    let a = addr(fb, base, index, ty.bytes() as i64);
    fb.ins().store(mem(), v, a, 0);
}
