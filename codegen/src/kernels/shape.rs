//! Data movement: ops that only copy or re-view their operand.

use super::index::strided_copy;
use super::{Kernel, Operand};
use crate::emit;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, BlockArg, InstBuilder, Type, Value};
use qlift_ir::DType;

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

/// The integer type that moves one element of `bytes` bytes (bits are copied, never
/// interpreted, so f32 NaN payloads survive).
fn mover(bytes: usize) -> Type {
    match bytes {
        8 => types::I64,
        4 => types::I32,
        2 => types::I16,
        _ => types::I8,
    }
}

/// Copies `bytes` (static) from `src` to `dst`: short blocks as unrolled 8/4/2/1-byte moves
/// (a call would cost more than the copy), longer ones through memcpy.
fn copy_block(k: &mut Kernel, dst: Value, src: Value, bytes: usize) {
    if bytes > 64 {
        let n = emit::iconst(k.fb, bytes as i64);
        k.memcpy(dst, src, n);
        return;
    }
    let mut at = 0usize;
    for width in [8usize, 4, 2, 1] {
        while bytes - at >= width {
            let v = k.fb.ins().load(mover(width), emit::mem(), src, at as i32);
            k.fb.ins().store(emit::mem(), v, dst, at as i32);
            at += width;
        }
    }
}

/// Transpose: a strided walk of the result in row-major order reading the operand through
/// its permuted strides (coalesced: axes that stay adjacent move as one). The batch may stay
/// on axis 0 (it is then the outer loop); moving it elsewhere is not supported.
pub(super) fn transpose(k: &mut Kernel) -> Result<(), String> {
    let x = k.input(0)?;
    let dims = x.dims();
    let perm: Vec<usize> = match k.op.attrs.ints("perm") {
        Ok(p) if !p.is_empty() => p
            .iter()
            .map(|&a| usize::try_from(a).map_err(|_| format!("perm entry {a} is negative")))
            .collect::<Result<_, _>>()?,
        _ => (0..dims.len()).rev().collect(),
    };
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..dims.len()).collect::<Vec<_>>() {
        return Err(format!(
            "perm {perm:?} is not a permutation of {} axes",
            dims.len()
        ));
    }
    let batched = x.batched();
    if batched && perm[0] != 0 {
        return Err("transposing the batch axis away from axis 0 is not supported".to_string());
    }
    let first = usize::from(batched);
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let src = emit::row_major(&dims);
    let strides = vec![
        emit::row_major(&out_dims)[first..].to_vec(),
        perm[first..].iter().map(|&p| src[p]).collect(),
    ];
    strided_copy(k, &out_dims[first..], strides, (0, 0))
}

/// Concat along a static axis, any dtype (quantized operands share their parameters, so
/// bytes are copied as they are): for each row of the axes before `axis`, each operand's
/// contiguous block in turn.
pub(super) fn concat(k: &mut Kernel) -> Result<(), String> {
    let out = k.output(0);
    let (dims, batched, po) = (out.dims(), out.batched(), out.ptr);
    let rank = dims.len() as i64;
    let axis = k.op.attrs.int("axis")?;
    let axis = if axis < 0 { axis + rank } else { axis };
    if axis < 0 || axis >= rank || (batched && axis == 0) {
        return Err(format!("cannot concatenate along axis {axis}"));
    }
    let axis = axis as usize;
    let size = out.ty.dtype.size_of();
    let inner: usize = dims[axis + 1..].iter().product();
    let out_row = dims[axis] * inner * size;
    let outer_static: usize = dims[..axis].iter().product();
    // (pointer, bytes per row, byte offset in the result's row)
    let mut parts = Vec::new();
    let mut at = 0;
    for (i, x) in k.inputs.iter().enumerate() {
        let x = x
            .as_ref()
            .ok_or_else(|| format!("operand {i} is missing"))?;
        if x.ty.dtype != out.ty.dtype || x.dims().len() != dims.len() || x.batched() != batched {
            return Err(format!("operand {i} does not match the result"));
        }
        let row = x.dims()[axis] * inner * size;
        parts.push((x.ptr, row, at));
        at += row;
    }
    if at != out_row {
        return Err("operand extents do not add up to the result's".to_string());
    }
    let samples = k.samples(batched);
    let outer = k.fb.ins().imul_imm_s(samples, outer_static as i64);
    let (header, body, exit) = (
        k.fb.create_block(),
        k.fb.create_block(),
        k.fb.create_block(),
    );
    // The row loop is written out here (not with emit::for_range) because the body calls
    // `k.memcpy`, which needs the whole kernel.
    let zero = emit::iconst(k.fb, 0);
    k.fb.append_block_param(header, types::I64);
    k.fb.ins().jump(header, &[BlockArg::Value(zero)]);
    k.fb.switch_to_block(header);
    let o = k.fb.block_params(header)[0];
    let more = k.fb.ins().icmp(IntCC::SignedLessThan, o, outer);
    k.fb.ins().brif(more, body, &[], exit, &[]);
    k.fb.switch_to_block(body);
    let dst_row = emit::addr(k.fb, po, o, out_row as i64);
    for (ptr, row, offset) in parts {
        if row == 0 {
            continue;
        }
        let src = emit::addr(k.fb, ptr, o, row as i64);
        let dst = k.fb.ins().iadd_imm_s(dst_row, offset as i64);
        copy_block(k, dst, src, row);
    }
    let next = k.fb.ins().iadd_imm_s(o, 1);
    k.fb.ins().jump(header, &[BlockArg::Value(next)]);
    k.fb.switch_to_block(exit);
    Ok(())
}

/// Pad; constant mode here (the others in `resample.rs`): the result is filled with the pad value (the zero point for a
/// quantized operand, as the interpreter), then the kept region of the operand is copied in
/// through a strided walk. Negative pads crop: the kept region starts `-begin` into the
/// operand and ends `-end` before its end. The batch axis (unpadded) is the outer loop.
pub(super) fn pad(k: &mut Kernel) -> Result<(), String> {
    let (x, out) = (k.input(0)?, k.output(0));
    let dims = x.dims();
    let out_dims = out.dims();
    let r = dims.len();
    let pads = match (k.op.attrs.get("pads"), k.optional(1)) {
        (Some(_), _) => k.op.attrs.ints("pads")?.to_vec(),
        (
            None,
            Some(Operand {
                constant: Some(t), ..
            }),
        ) => t.to_i64_vec()?,
        _ => return Err(
            "pads computed at run time are not supported; bind the input shapes so that they fold"
                .to_string(),
        ),
    };
    if pads.len() != 2 * r {
        return Err(format!("{} pads for rank {r}", pads.len()));
    }
    let batched = x.batched();
    if batched && (pads[0] != 0 || pads[r] != 0) {
        return Err("cannot pad the batch dimension".to_string());
    }
    let mode = qlift_ir::PadMode::of(&k.op.attrs)?;
    if mode != qlift_ir::PadMode::Constant {
        return super::resample::pad_by_tables(k, mode, &pads);
    }
    let value = k.op.attrs.float("value")?;
    let fill: i64 = match &x.ty.quant {
        None if x.ty.dtype == DType::F32 => value.to_bits() as i64,
        None => value as i64,
        Some(q) if value == 0.0 => q.zero_point.first().copied().unwrap_or(0) as i64,
        Some(_) => return Err("a quantized value can only be padded with 0.0".to_string()),
    };
    // The kept region: per axis, its first source index, first result index, and extent.
    let mut src_start = vec![0i64; r];
    let mut dst_start = vec![0i64; r];
    let mut extent = vec![0usize; r];
    for a in 0..r {
        let (begin, end) = (pads[a], pads[a + r]);
        let s0 = (-begin).max(0);
        let s1 = dims[a] as i64 - (-end).max(0);
        src_start[a] = s0;
        dst_start[a] = begin.max(0);
        extent[a] = (s1 - s0).max(0) as usize;
        if dims[a] as i64 + begin + end != out_dims[a] as i64 {
            return Err(format!(
                "axis {a}: pads {begin}, {end} of extent {} do not give {}",
                dims[a], out_dims[a]
            ));
        }
    }
    let size = x.ty.dtype.size_of();
    let ty = mover(size);
    let (po, out_sample) = (out.ptr, out.per_sample() as i64);
    let samples = k.samples(batched);
    let first = usize::from(batched);
    let padded = extent.iter().product::<usize>() != out_dims.iter().product::<usize>();
    if padded {
        let total = k.fb.ins().imul_imm_s(samples, out_sample);
        let fill = emit::iconst_of(k.fb, ty, fill);
        emit::for_dynamic(k.fb, total, |fb, i| emit::store_at(fb, fill, po, i));
    }
    let (src, dst) = (emit::row_major(&dims), emit::row_major(&out_dims));
    let src_base: i64 = (0..r).map(|a| src_start[a] * src[a]).sum();
    let dst_base: i64 = (0..r).map(|a| dst_start[a] * dst[a]).sum();
    let strides = vec![dst[first..].to_vec(), src[first..].to_vec()];
    strided_copy(k, &extent[first..], strides, (dst_base, src_base))
}
