//! Selection and placement kernels: OneHot, GatherElements, GatherND, ScatterND,
//! ScatterElements, Trilu (NonZero's result length depends on its operand's values: code
//! generation takes it only folded, with a constant operand).
//!
//! Each follows the interpreter's kernel in `qlift_ir` (`ops/select.rs`). Indices are read
//! at run time; one out of range makes the kernel fail with the interpreter's message
//! (a scatter may have written part of its result by then, which the failed call discards).

use super::elementwise::{failure_block, finish_failure};
use super::index::{copy_static, load_index};
use super::{Kernel, Operand};
use crate::emit;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, Block, InstBuilder, Type, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::{DType, OpKind, Reduction};

/// The integer type that moves one element of `dtype` (bits are copied, not interpreted).
fn mover(dtype: DType) -> Type {
    types::Type::int_with_byte_size(dtype.size_of() as u16).unwrap_or(types::I8)
}

/// An index element at element offset `at` of `base`, normalized into `[0, n)` (negative
/// ones count from the end); branches to `fail` when it is out of range.
fn checked_index(
    fb: &mut FunctionBuilder,
    ty: Type,
    base: Value,
    at: Value,
    n: i64,
    fail: Block,
) -> Value {
    let idx = load_index(fb, ty, base, at, n);
    let bad = fb
        .ins()
        .icmp_imm_s(IntCC::UnsignedGreaterThanOrEqual, idx, n);
    let ok = fb.create_block();
    fb.ins().brif(bad, fail, &[], ok, &[]);
    fb.switch_to_block(ok);
    idx
}

/// The interpreter's message for an index out of range on axis `axis` of extent `n`.
fn range_message(n: usize, axis: usize) -> String {
    format!("an index is out of range [-{n}, {n}) on axis {axis}")
}

/// Whether every operand in `ops` has the batch axis, or none; `Err` otherwise.
fn all_or_none_batched(ops: &[&Operand]) -> Result<bool, String> {
    let batched = ops.iter().filter(|o| o.batched()).count();
    match batched {
        0 => Ok(false),
        n if n == ops.len() => Ok(true),
        _ => Err("operands must all have the batch axis or none".to_string()),
    }
}

/// OneHot: per result element, `on` where the index (wrapped when negative, compared as a
/// number like the interpreter) equals the position along the depth axis, `off` elsewhere.
pub(super) fn one_hot(k: &mut Kernel) -> Result<(), String> {
    let (x, values, out) = (k.input(0)?, k.input(2)?, k.output(0));
    let axis = usize::try_from(k.op.attrs.int("axis")?).map_err(|_| "negative axis")?;
    let out_dims = out.dims();
    if axis >= out_dims.len() || (x.batched() && axis == 0) || values.batched() {
        return Err("one-hot values along the batch axis are not supported".to_string());
    }
    let depth = out_dims[axis];
    let first = usize::from(x.batched());
    let (outer, inner) = (
        out_dims[first..axis].iter().product::<usize>(),
        out_dims[axis + 1..].iter().product::<usize>(),
    );
    let (src_ty, dtype, ty) = (x.elem(), x.ty.dtype, mover(out.ty.dtype));
    let (px, pv, po) = (x.ptr, values.ptr, out.ptr);
    let samples = k.samples(x.batched());
    let rows = k.fb.ins().imul_imm_s(samples, outer as i64);
    let off = k.fb.ins().load(ty, emit::mem(), pv, 0);
    let on = k.fb.ins().load(ty, emit::mem(), pv, ty.bytes() as i32);
    emit::for_dynamic(k.fb, rows, |fb, o| {
        emit::for_count(fb, depth as i64, |fb, d| {
            let df = fb.ins().fcvt_from_sint(types::F64, d);
            emit::for_count(fb, inner as i64, |fb, i| {
                let at = fb.ins().imul_imm_s(o, inner as i64);
                let at = fb.ins().iadd(at, i);
                let v = emit::load_at(fb, src_ty, px, at);
                let v = match dtype {
                    DType::F32 => fb.ins().fpromote(types::F64, v),
                    _ => {
                        let w = if src_ty == types::I64 {
                            v
                        } else if matches!(dtype, DType::U8 | DType::U4 | DType::Bool) {
                            fb.ins().uextend(types::I64, v)
                        } else {
                            fb.ins().sextend(types::I64, v)
                        };
                        fb.ins().fcvt_from_sint(types::F64, w)
                    }
                };
                let zero = fb.ins().f64const(0.0);
                let negative = fb.ins().fcmp(FloatCC::LessThan, v, zero);
                let dep = fb.ins().f64const(depth as f64);
                let wrapped = fb.ins().fadd(v, dep);
                let v = fb.ins().select(negative, wrapped, v);
                let hit = fb.ins().fcmp(FloatCC::Equal, v, df);
                let r = fb.ins().select(hit, on, off);
                let dst = fb.ins().imul_imm_s(o, (depth * inner) as i64);
                let row = fb.ins().imul_imm_s(d, inner as i64);
                let dst = fb.ins().iadd(dst, row);
                let dst = fb.ins().iadd(dst, i);
                emit::store_at(fb, r, po, dst);
            });
        });
    });
    Ok(())
}

/// The walk of GatherElements and ScatterElements over the indices' positions: per sample,
/// nested loops; `body(fb, at, target)` gets the indices' element offset and the data
/// offset of that position with the index on `axis` (checked: out of range fails the
/// kernel with the interpreter's message).
fn walk_elements(
    k: &mut Kernel,
    axis: usize,
    body: &mut dyn FnMut(&mut FunctionBuilder, Value, Value),
) -> Result<(), String> {
    let (data, indices) = (clone_operand(k.input(0)?), clone_operand(k.input(1)?));
    let dims = data.dims();
    let (n, stride, ity, pi) = (
        dims[axis] as i64,
        emit::row_major(&dims)[axis],
        indices.elem(),
        indices.ptr,
    );
    let fail = failure_block(k);
    walk_positions(k, &data, &indices, axis, &mut |fb, at, base| {
        let idx = checked_index(fb, ity, pi, at, n, fail);
        let off = fb.ins().imul_imm_s(idx, stride);
        let target = fb.ins().iadd(base, off);
        body(fb, at, target);
    })?;
    finish_failure(k, fail, &range_message(dims[axis], axis));
    Ok(())
}

/// The loops of [`walk_elements`]: per position, the indices' offset and the data offset of
/// every axis but `axis`.
fn walk_positions(
    k: &mut Kernel,
    data: &Operand,
    indices: &Operand,
    axis: usize,
    body: &mut dyn FnMut(&mut FunctionBuilder, Value, Value),
) -> Result<(), String> {
    let batched = all_or_none_batched(&[data, indices])?;
    if batched && axis == 0 {
        return Err("indexing along the batch axis is not supported".to_string());
    }
    let first = usize::from(batched);
    let (dims, idims) = (data.dims(), indices.dims());
    let src = emit::row_major(&dims);
    let strides = vec![
        emit::row_major(&idims)[first..].to_vec(),
        (first..dims.len())
            .map(|a| if a == axis { 0 } else { src[a] })
            .collect(),
    ];
    let (extents, strides) = emit::coalesce(&idims[first..], &strides);
    let (i_sample, d_sample) = (indices.per_sample() as i64, data.per_sample() as i64);
    let samples = k.samples(batched);
    emit::for_dynamic(k.fb, samples, |fb, b| {
        let start = [
            fb.ins().imul_imm_s(b, i_sample),
            fb.ins().imul_imm_s(b, d_sample),
        ];
        emit::for_strided(fb, &extents, &strides, &start, &mut |fb, off| {
            body(fb, off[0], off[1])
        });
    });
    Ok(())
}

/// GatherElements: each result element reads the data at its own position with the index
/// along `axis`.
pub(super) fn gather_elements(k: &mut Kernel) -> Result<(), String> {
    let (x, out) = (k.input(0)?, k.output(0));
    let axis = usize::try_from(k.op.attrs.int("axis")?).map_err(|_| "negative axis")?;
    let (ty, px, po) = (mover(x.ty.dtype), x.ptr, out.ptr);
    walk_elements(k, axis, &mut |fb, at, target| {
        let v = emit::load_at(fb, ty, px, target);
        emit::store_at(fb, v, po, at);
    })
}

/// A copy of what a walk needs of an operand (its type and address), so that the kernel
/// can be borrowed mutably while the walk reads them.
fn clone_operand(o: &Operand) -> Operand {
    Operand {
        ty: o.ty.clone(),
        ptr: o.ptr,
        constant: o.constant.clone(),
        blocks: o.blocks.clone(),
    }
}

/// The data offset of index tuple `t` (its `m` indices read from `pi` at element offset
/// `at`), after the offset `base` of its batch position; fails on an index out of range.
#[allow(clippy::too_many_arguments)]
fn tuple_offset(
    fb: &mut FunctionBuilder,
    ity: Type,
    pi: Value,
    at: Value,
    base: Value,
    dims: &[usize],
    from: usize,
    m: usize,
    fail: Block,
) -> Value {
    let src = emit::row_major(dims);
    let mut off = base;
    for j in 0..m {
        let a = fb.ins().iadd_imm_s(at, j as i64);
        let idx = checked_index(fb, ity, pi, a, dims[from + j] as i64, fail);
        let s = fb.ins().imul_imm_s(idx, src[from + j]);
        off = fb.ins().iadd(off, s);
    }
    off
}

/// The message of a tuple index out of range: the interpreter names the axis; the kernel's
/// one failure code covers all of them.
fn tuple_message(dims: &[usize], from: usize, m: usize) -> String {
    let axes: Vec<String> = (from..from + m)
        .map(|a| format!("{a} (extent {})", dims[a]))
        .collect();
    format!(
        "an index is out of range on one of the axes {}",
        axes.join(", ")
    )
}

/// GatherND: per index tuple, one contiguous slice of the data. With batch dimensions the
/// data and the indices may share the batch axis (axis 0).
pub(super) fn gather_nd(k: &mut Kernel) -> Result<(), String> {
    let (x, indices, out) = (k.input(0)?, k.input(1)?, k.output(0));
    let b = usize::try_from(k.op.attrs.int("batch_dims")?).map_err(|_| "negative batch_dims")?;
    let (dims, idims) = (x.dims(), indices.dims());
    let m = *idims.last().ok_or("indices must have rank 1 or more")?;
    if x.batched() && !(b >= 1 && indices.batched()) {
        return Err("indexing into the batch axis is not supported".to_string());
    }
    let size = x.ty.dtype.size_of();
    let inner: usize = dims[b + m..].iter().product();
    let first = usize::from(x.batched());
    // Per sample: tuples, and tuples per position of the batch dimensions after the first.
    let tuples = idims[first..idims.len() - 1].iter().product::<usize>();
    let per_batch = tuples / dims[first..b].iter().product::<usize>().max(1);
    let batch_stride = emit::row_major(&dims)
        .get(b.wrapping_sub(1))
        .copied()
        .unwrap_or(0);
    let (ity, px, pi, po) = (indices.elem(), x.ptr, indices.ptr, out.ptr);
    let (d_sample, i_sample, o_sample) = (
        x.per_sample() as i64,
        indices.per_sample() as i64,
        out.per_sample() as i64,
    );
    let (x_batched, i_batched) = (x.batched(), indices.batched());
    let samples = k.samples(i_batched);
    let fail = failure_block(k);
    emit::for_dynamic(k.fb, samples, |fb, s| {
        emit::for_count(fb, tuples as i64, |fb, t| {
            let base = if x_batched {
                fb.ins().imul_imm_s(s, d_sample)
            } else {
                emit::iconst(fb, 0)
            };
            let pos = fb.ins().udiv_imm_s(t, per_batch.max(1) as i64);
            let pos = fb.ins().imul_imm_s(pos, batch_stride);
            let base = fb.ins().iadd(base, pos);
            let at = fb.ins().imul_imm_s(s, i_sample);
            let row = fb.ins().imul_imm_s(t, m as i64);
            let at = fb.ins().iadd(at, row);
            let off = tuple_offset(fb, ity, pi, at, base, &dims, b, m, fail);
            let src = emit::addr(fb, px, off, size as i64);
            let dst = fb.ins().imul_imm_s(s, o_sample);
            let r = fb.ins().imul_imm_s(t, inner as i64);
            let dst = fb.ins().iadd(dst, r);
            let dst = emit::addr(fb, po, dst, size as i64);
            copy_static(fb, dst, src, inner * size);
        });
    });
    finish_failure(k, fail, &tuple_message(&dims, b, m));
    Ok(())
}

/// `old ∘ update` for a scatter's reduction on elements of `dtype`.
fn combine(
    fb: &mut FunctionBuilder,
    r: Reduction,
    dtype: DType,
    old: Value,
    update: Value,
) -> Value {
    let float = dtype == DType::F32;
    let unsigned = matches!(dtype, DType::U8);
    match r {
        Reduction::None => update,
        Reduction::Add if float => fb.ins().fadd(old, update),
        Reduction::Add => fb.ins().iadd(old, update),
        Reduction::Mul if float => fb.ins().fmul(old, update),
        Reduction::Mul => fb.ins().imul(old, update),
        Reduction::Max if float => fb.ins().fmax(old, update),
        Reduction::Max if unsigned => fb.ins().umax(old, update),
        Reduction::Max => fb.ins().smax(old, update),
        Reduction::Min if float => fb.ins().fmin(old, update),
        Reduction::Min if unsigned => fb.ins().umin(old, update),
        Reduction::Min => fb.ins().smin(old, update),
    }
}

/// Copies the data operand into the result (the start of both scatters).
fn copy_data(k: &mut Kernel) -> Result<(), String> {
    let x = k.input(0)?;
    let (src, dst) = (x.ptr, k.output(0).ptr);
    let bytes = (x.per_sample() * x.ty.dtype.size_of()) as i64;
    let samples = k.samples(x.batched());
    let total = k.fb.ins().imul_imm_s(samples, bytes);
    k.memcpy(dst, src, total);
    Ok(())
}

/// ScatterND: the data copied, then per index tuple its slice combined with the updates,
/// tuples in order.
pub(super) fn scatter_nd(k: &mut Kernel) -> Result<(), String> {
    let (x, indices, updates) = (k.input(0)?, k.input(1)?, k.input(2)?);
    if x.batched() || indices.batched() || updates.batched() {
        return Err("scattering with the batch axis is not supported".to_string());
    }
    let r = Reduction::of(&k.op.attrs)?;
    let (dims, idims) = (x.dims(), indices.dims());
    let m = *idims.last().ok_or("indices must have rank 1 or more")?;
    let inner: usize = dims[m..].iter().product();
    let tuples: usize = idims[..idims.len() - 1].iter().product();
    let (dtype, ty, ity, pi, pu, po) = (
        x.ty.dtype,
        x.elem(),
        indices.elem(),
        indices.ptr,
        updates.ptr,
        k.output(0).ptr,
    );
    copy_data(k)?;
    let fail = failure_block(k);
    emit::for_count(k.fb, tuples as i64, |fb, t| {
        let at = fb.ins().imul_imm_s(t, m as i64);
        let zero = emit::iconst(fb, 0);
        let off = tuple_offset(fb, ity, pi, at, zero, &dims, 0, m, fail);
        emit::for_count(fb, inner as i64, |fb, e| {
            let dst = fb.ins().iadd(off, e);
            let u = fb.ins().imul_imm_s(t, inner as i64);
            let u = fb.ins().iadd(u, e);
            let update = emit::load_at(fb, ty, pu, u);
            let old = emit::load_at(fb, ty, po, dst);
            let v = combine(fb, r, dtype, old, update);
            emit::store_at(fb, v, po, dst);
        });
    });
    finish_failure(k, fail, &tuple_message(&dims, 0, m));
    Ok(())
}

/// ScatterElements: the data copied, then each update combined into the element at its
/// own position with the index along `axis`.
pub(super) fn scatter_elements(k: &mut Kernel) -> Result<(), String> {
    let (x, indices, updates) = (k.input(0)?, k.input(1)?, k.input(2)?);
    all_or_none_batched(&[x, indices, updates])?;
    let axis = usize::try_from(k.op.attrs.int("axis")?).map_err(|_| "negative axis")?;
    let r = Reduction::of(&k.op.attrs)?;
    let (dtype, ty, pu, po) = (x.ty.dtype, x.elem(), updates.ptr, k.output(0).ptr);
    copy_data(k)?;
    walk_elements(k, axis, &mut |fb, at, dst| {
        let update = emit::load_at(fb, ty, pu, at);
        let old = emit::load_at(fb, ty, po, dst);
        let v = combine(fb, r, dtype, old, update);
        emit::store_at(fb, v, po, dst);
    })
}

/// Trilu: each matrix of the last two axes with the elements off the kept triangle zeroed;
/// the diagonal offset k is read at run time (0 without the operand).
pub(super) fn trilu(k: &mut Kernel) -> Result<(), String> {
    let (x, out) = (k.input(0)?, k.output(0));
    let dims = x.dims();
    let (rows, cols) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let upper = k.op.attrs.int("upper")? != 0;
    let matrices = x.per_sample() / (rows * cols).max(1);
    let (ty, px, po) = (mover(x.ty.dtype), x.ptr, out.ptr);
    let samples = k.samples(x.batched());
    let count = k.fb.ins().imul_imm_s(samples, matrices as i64);
    let diagonal = match k.optional(1).map(|o| o.ptr) {
        Some(p) => k.fb.ins().load(types::I64, emit::mem(), p, 0),
        None => emit::iconst(k.fb, 0),
    };
    emit::for_dynamic(k.fb, count, |fb, mat| {
        emit::for_count(fb, rows as i64, |fb, i| {
            emit::for_count(fb, cols as i64, |fb, j| {
                let at = fb.ins().imul_imm_s(mat, rows as i64);
                let at = fb.ins().iadd(at, i);
                let at = fb.ins().imul_imm_s(at, cols as i64);
                let at = fb.ins().iadd(at, j);
                let v = emit::load_at(fb, ty, px, at);
                let d = fb.ins().isub(j, i);
                let keep = fb.ins().icmp(
                    if upper {
                        IntCC::SignedGreaterThanOrEqual
                    } else {
                        IntCC::SignedLessThanOrEqual
                    },
                    d,
                    diagonal,
                );
                let zero = emit::iconst_of(fb, ty, 0);
                let r = fb.ins().select(keep, v, zero);
                emit::store_at(fb, r, po, at);
            });
        });
    });
    Ok(())
}

/// The kernels of this family, by op.
pub(super) fn emit(k: &mut Kernel) -> Result<(), String> {
    match k.op.kind {
        OpKind::OneHot => one_hot(k),
        OpKind::GatherElements => gather_elements(k),
        OpKind::GatherND => gather_nd(k),
        OpKind::ScatterND => scatter_nd(k),
        OpKind::ScatterElements => scatter_elements(k),
        OpKind::Trilu => trilu(k),
        OpKind::NonZero => Err(NONZERO.to_string()),
        other => Err(format!("{other} is not a selection op")),
    }
}

/// Why NonZero is not compiled: its result length depends on its operand's values.
pub(crate) const NONZERO: &str = "NonZero's result length depends on its operand's values, which code generation needs as a constant (freeze the inputs it is computed from)";
