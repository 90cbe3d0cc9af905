//! Shape and indexing kernels: Shape, Size, Gather, Slice, Expand, Tile, and Cast.
//!
//! They run on specialized graphs: every extent is known or the batch, and shape-like
//! operands that decide extents (Slice's starts, Tile's repeats) are constants, folded by
//! the specializer (`qlift_ir::specialize`); the extents are read from the result types.
//! Each follows the interpreter's kernel in `qlift_ir` (`ops/index.rs`, `ops/cast.rs`).

use super::elementwise::{Broadcast, Lanes};
use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::{DType, Dim, OpKind};

/// The integer type that moves one element of `bytes` bytes.
fn mover(bytes: usize) -> Type {
    match bytes {
        8 => types::I64,
        4 => types::I32,
        2 => types::I16,
        _ => types::I8,
    }
}

/// Shape (the dims of its operand, the batch read at run time) and Size.
pub(super) fn shape(k: &mut Kernel) -> Result<(), String> {
    let x = k.input(0)?;
    let dims: Vec<Dim> = x.ty.shape.dims().to_vec();
    let po = k.output(0).ptr;
    let batch = k.batch;
    let value = |fb: &mut FunctionBuilder, d: Dim| -> Result<Value, String> {
        match d {
            Dim::Fixed(n) => Ok(emit::iconst(fb, n as i64)),
            Dim::Batch => Ok(batch),
            d => Err(format!("extent {d} is not specialized")),
        }
    };
    if k.op.kind == OpKind::Size {
        let mut product = emit::iconst(k.fb, 1);
        for &d in &dims {
            let v = value(k.fb, d)?;
            product = k.fb.ins().imul(product, v);
        }
        k.fb.ins().store(emit::mem(), product, po, 0);
        return Ok(());
    }
    let (start, end) = (k.op.attrs.int("start")?, k.op.attrs.int("end")?);
    let (start, end) = qlift_ir::shape_range(start, end, dims.len());
    for (i, &d) in dims[start..end].iter().enumerate() {
        let v = value(k.fb, d)?;
        k.fb.ins().store(emit::mem(), v, po, (8 * i) as i32);
    }
    Ok(())
}

/// Gather: for every outer row and every index, one contiguous row of `inner` elements of
/// the data. Indices are read at run time (negative ones count from the end; one out of
/// range makes the kernel fail with the interpreter's message). The batch may be the data's
/// axis 0 (when gathering along a later axis) or the indices' axis 0 (an embedding lookup),
/// not both.
pub(super) fn gather(k: &mut Kernel) -> Result<(), String> {
    let (x, indices, out) = (k.input(0)?, k.input(1)?, k.output(0));
    let axis = usize::try_from(k.op.attrs.int("axis")?).map_err(|_| "negative axis")?;
    let dims = x.dims();
    if axis >= dims.len() || (x.batched() && axis == 0) {
        return Err(format!("cannot gather along axis {axis} of {}", x.ty.shape));
    }
    if x.batched() && indices.batched() {
        return Err("data and indices both have the batch axis".to_string());
    }
    let n = dims[axis] as i64;
    let size = x.ty.dtype.size_of();
    let inner: usize = dims[axis + 1..].iter().product();
    let outer_static: usize = dims[usize::from(x.batched())..axis].iter().product();
    let row = (inner * size) as i64;
    let index_ty = indices.elem();
    let per_sample_indices = indices.per_sample() as i64;
    let (px, pi, po) = (x.ptr, indices.ptr, out.ptr);
    let (x_batched, i_batched) = (x.batched(), indices.batched());
    let x_sample = (x.per_sample() * size) as i64;
    let samples = k.samples(x_batched || i_batched);
    let count = if i_batched {
        k.fb.ins().imul_imm_s(samples, per_sample_indices)
    } else {
        emit::iconst(k.fb, per_sample_indices)
    };
    let outer = if x_batched {
        k.fb.ins().imul_imm_s(samples, outer_static as i64)
    } else {
        emit::iconst(k.fb, outer_static as i64)
    };
    let message = format!("an index is out of range [-{n}, {n})");
    // Checked first for every index, so that a failure leaves no partial copy behind.
    let bad = k.fb.create_block();
    emit::for_dynamic(k.fb, count, |fb, j| {
        let idx = emit::load_at(fb, index_ty, pi, j);
        let idx = if index_ty == types::I64 {
            idx
        } else {
            fb.ins().sextend(types::I64, idx)
        };
        let lo = fb.ins().iconst(types::I64, -n);
        let below = fb.ins().icmp(IntCC::SignedLessThan, idx, lo);
        let above = fb.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, idx, n);
        let out_of_range = fb.ins().bor(below, above);
        let next = fb.create_block();
        fb.ins().brif(out_of_range, bad, &[], next, &[]);
        fb.switch_to_block(next);
    });
    let done = k.fb.create_block();
    let copy = k.fb.create_block();
    k.fb.ins().jump(copy, &[]);
    k.fb.switch_to_block(bad);
    let yes = k.fb.ins().iconst(types::I8, 1);
    k.fail_if(yes, &message);
    k.fb.ins().jump(done, &[]);
    k.fb.switch_to_block(copy);
    emit::for_dynamic(k.fb, outer, |fb, o| {
        emit::for_dynamic(fb, count, |fb, j| {
            let idx = load_index(fb, index_ty, pi, j, n);
            // Source row: (o · n + idx) rows into the data (per-sample base when batched).
            let base = if x_batched {
                let sample = fb.ins().udiv_imm_s(o, outer_static.max(1) as i64);
                let within = fb.ins().urem_imm_s(o, outer_static.max(1) as i64);
                let s = fb.ins().imul_imm_s(sample, x_sample);
                let w = fb.ins().imul_imm_s(within, n * row);
                fb.ins().iadd(s, w)
            } else {
                fb.ins().imul_imm_s(o, n * row)
            };
            let r = fb.ins().imul_imm_s(idx, row);
            let src_off = fb.ins().iadd(base, r);
            let src = fb.ins().iadd(px, src_off);
            let dst_row = fb.ins().imul(o, count);
            let dst_row = fb.ins().iadd(dst_row, j);
            let dst = emit::addr(fb, po, dst_row, row);
            copy_static(fb, dst, src, inner * size);
        });
    });
    k.fb.ins().jump(done, &[]);
    k.fb.switch_to_block(done);
    Ok(())
}

/// Copies `bytes` (static) from `src` to `dst`: 16-byte vectors in a loop, then the tail
/// in 8/4/2/1-byte moves.
pub(super) fn copy_static(fb: &mut FunctionBuilder, dst: Value, src: Value, bytes: usize) {
    let vectors = bytes / 16;
    if vectors > 0 {
        emit::for_count(fb, vectors as i64, |fb, i| {
            let off = fb.ins().imul_imm_s(i, 16);
            let s = fb.ins().iadd(src, off);
            let d = fb.ins().iadd(dst, off);
            let v = fb.ins().load(types::I8X16, emit::mem(), s, 0);
            fb.ins().store(emit::mem(), v, d, 0);
        });
    }
    let mut at = vectors * 16;
    for width in [8usize, 4, 2, 1] {
        while bytes - at >= width {
            let v = fb.ins().load(mover(width), emit::mem(), src, at as i32);
            fb.ins().store(emit::mem(), v, dst, at as i32);
            at += width;
        }
    }
}

/// The constant integer operand `i` (after specialization every extent-deciding operand is).
fn constant_ints(k: &Kernel, i: usize, what: &str) -> Result<Option<Vec<i64>>, String> {
    match k.optional(i) {
        None => Ok(None),
        Some(o) => match &o.constant {
            Some(t) => t.to_i64_vec().map(Some),
            None => Err(format!("{what} are computed at run time; qlift compiles them once they are constants (bind the input shapes)")),
        },
    }
}

/// Slice: a strided walk of the result reading the operand at `first + i · step` per axis.
pub(super) fn slice(k: &mut Kernel) -> Result<(), String> {
    let (x, out) = (k.input(0)?, k.output(0));
    let dims = x.dims();
    let rank = dims.len();
    let starts = constant_ints(k, 1, "slice starts")?.ok_or("starts missing")?;
    let ends = constant_ints(k, 2, "slice ends")?.ok_or("ends missing")?;
    let axes =
        constant_ints(k, 3, "slice axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = constant_ints(k, 4, "slice steps")?.unwrap_or_else(|| vec![1; starts.len()]);
    let mut per_axis: Vec<(i64, i64, usize)> = dims.iter().map(|&d| (0, 1, d)).collect();
    for (i, &a) in axes.iter().enumerate() {
        let a = if a < 0 { a + rank as i64 } else { a };
        let a = usize::try_from(a)
            .ok()
            .filter(|&a| a < rank)
            .ok_or("slice axis out of range")?;
        let step = *steps.get(i).ok_or("steps too short")?;
        if step == 0 {
            return Err("slice step 0".to_string());
        }
        if a == 0 && x.batched() {
            let (s, e) = (starts[i], *ends.get(i).ok_or("ends too short")?);
            if s != 0 || step != 1 || e < i32::MAX as i64 {
                return Err("slicing the batch axis is not supported".to_string());
            }
            continue;
        }
        per_axis[a] = qlift_ir::slice_range(
            dims[a],
            starts[i],
            *ends.get(i).ok_or("ends too short")?,
            step,
        );
    }
    let out_dims = out.dims();
    if per_axis.iter().map(|p| p.2).collect::<Vec<_>>() != out_dims {
        return Err("slice extents disagree with the result type".to_string());
    }
    let first = usize::from(x.batched());
    let src = emit::row_major(&dims);
    let base: i64 = (first..rank).map(|a| per_axis[a].0 * src[a]).sum();
    let strides = vec![
        emit::row_major(&out_dims)[first..].to_vec(),
        (first..rank).map(|a| per_axis[a].1 * src[a]).collect(),
    ];
    let extents = out_dims[first..].to_vec();
    strided_copy(k, &extents, strides, (0, base))
}

/// The index at element `at` of `base` (i32 or i64), as i64, a negative one counted from
/// the end of an axis of `n` (ONNX's Gather/GatherElements/ScatterND convention).
pub(super) fn load_index(
    fb: &mut FunctionBuilder,
    ty: Type,
    base: Value,
    at: Value,
    n: i64,
) -> Value {
    let idx = emit::load_at(fb, ty, base, at);
    let idx = if ty == types::I64 {
        idx
    } else {
        fb.ins().sextend(types::I64, idx)
    };
    let wrapped = fb.ins().iadd_imm_s(idx, n);
    let negative = fb.ins().icmp_imm_s(IntCC::SignedLessThan, idx, 0);
    fb.ins().select(negative, wrapped, idx)
}

/// Copies through a strided walk: result offsets and operand offsets per axis of
/// `extents` (the axes after the batch), starting at result and operand offsets
/// `(dst_base, src_base)`; per sample of the batch when the operand has one. After
/// coalescing, an innermost axis contiguous on both sides is copied 16 bytes at a time
/// ([`copy_static`]: a Slice keeping whole rows, Pad, Tile), and an innermost pair of axes
/// swapped between the sides (a transpose of 4-byte elements) in 4×4 tiles
/// ([`transpose_tiles`]); anything else element by element.
pub(super) fn strided_copy(
    k: &mut Kernel,
    extents: &[usize],
    strides: Vec<Vec<i64>>,
    (dst_base, src_base): (i64, i64),
) -> Result<(), String> {
    let (x, out) = (k.input(0)?, k.output(0));
    let (extents, strides) = emit::coalesce(extents, &strides);
    let size = x.ty.dtype.size_of();
    let ty = mover(size);
    let (px, po) = (x.ptr, out.ptr);
    let (in_sample, out_sample) = (x.per_sample() as i64, out.per_sample() as i64);
    let samples = k.samples(x.batched());
    let n = extents.len();
    let inner = |s: usize, back: usize| n >= back && strides[s][n - back] == 1;
    let form = if inner(0, 1) && inner(1, 1) && extents[n - 1] * size >= 16 {
        Walk::Runs
    } else if size == 4 && inner(0, 1) && inner(1, 2) && extents[n - 1] >= 4 && extents[n - 2] >= 4
    {
        Walk::Tiles
    } else {
        Walk::Elements
    };
    let outer = match form {
        Walk::Runs => n - 1,
        Walk::Tiles => n - 2,
        Walk::Elements => n,
    };
    let outer_strides: Vec<Vec<i64>> = strides.iter().map(|s| s[..outer].to_vec()).collect();
    emit::for_dynamic(k.fb, samples, |fb, b| {
        let d = fb.ins().imul_imm_s(b, out_sample);
        let d = fb.ins().iadd_imm_s(d, dst_base);
        let s = fb.ins().imul_imm_s(b, in_sample);
        let s = fb.ins().iadd_imm_s(s, src_base);
        emit::for_strided(
            fb,
            &extents[..outer],
            &outer_strides,
            &[d, s],
            &mut |fb, off| match form {
                Walk::Runs => {
                    let dst = emit::addr(fb, po, off[0], size as i64);
                    let src = emit::addr(fb, px, off[1], size as i64);
                    copy_static(fb, dst, src, extents[n - 1] * size);
                }
                Walk::Tiles => {
                    let shape = (extents[n - 2], extents[n - 1]);
                    let steps = (strides[0][n - 2], strides[1][n - 1]);
                    transpose_tiles(fb, (po, off[0]), (px, off[1]), shape, steps);
                }
                Walk::Elements => {
                    let v = emit::load_at(fb, ty, px, off[1]);
                    emit::store_at(fb, v, po, off[0]);
                }
            },
        );
    });
    Ok(())
}

/// How [`strided_copy`] walks its innermost axes.
#[derive(Clone, Copy)]
enum Walk {
    /// Contiguous runs on both sides, copied as bytes.
    Runs,
    /// A 2-D transpose of 4-byte elements, in 4×4 tiles.
    Tiles,
    /// One element at a time.
    Elements,
}

/// A 2-D transpose of 4-byte elements: `rows × cols` result elements, result element
/// `(r, c)` at element `dst.1 + r · steps.0 + c` of `dst.0`, read from element
/// `src.1 + r + c · steps.1` of `src.0`. Whole 4×4 tiles load four 16-byte source rows and
/// interleave them (32-bit, then 64-bit unpacks) into four result rows; the rows and
/// columns left over move one element at a time. Bits are moved, never interpreted.
fn transpose_tiles(
    fb: &mut FunctionBuilder,
    (po, d): (Value, Value),
    (px, s): (Value, Value),
    (rows, cols): (usize, usize),
    (dst_row, src_col): (i64, i64),
) {
    let one = |fb: &mut FunctionBuilder, r: Value, c: Value| {
        let rd = fb.ins().imul_imm_s(r, dst_row);
        let dd = fb.ins().iadd(d, rd);
        let dd = fb.ins().iadd(dd, c);
        let cs = fb.ins().imul_imm_s(c, src_col);
        let ss = fb.ins().iadd(s, cs);
        let ss = fb.ins().iadd(ss, r);
        let v = emit::load_at(fb, types::I32, px, ss);
        emit::store_at(fb, v, po, dd);
    };
    emit::for_lanes(fb, rows as i64, 4, &mut |fb, r, whole_rows| {
        if !whole_rows {
            emit::for_count(fb, cols as i64, |fb, c| one(fb, r, c));
            return;
        }
        emit::for_lanes(fb, cols as i64, 4, &mut |fb, c, whole_cols| {
            if !whole_cols {
                for i in 0..4 {
                    let ri = fb.ins().iadd_imm_s(r, i);
                    one(fb, ri, c);
                }
                return;
            }
            // Source rows j = c..c+4, each holding result rows r..r+4 of column c + j.
            let cs = fb.ins().imul_imm_s(c, src_col);
            let ss = fb.ins().iadd(s, cs);
            let ss = fb.ins().iadd(ss, r);
            let base = emit::addr(fb, px, ss, 4);
            let step = fb.ins().iconst(types::I64, src_col * 4);
            let mut at = base;
            let mut src = Vec::with_capacity(4);
            for j in 0..4 {
                if j > 0 {
                    at = fb.ins().iadd(at, step);
                }
                src.push(fb.ins().load(types::I8X16, emit::mem(), at, 0));
            }
            let lo32 = |fb: &mut FunctionBuilder, a, b| shuffle32(fb, a, b, [0, 4, 1, 5]);
            let hi32 = |fb: &mut FunctionBuilder, a, b| shuffle32(fb, a, b, [2, 6, 3, 7]);
            let lo64 = |fb: &mut FunctionBuilder, a, b| shuffle32(fb, a, b, [0, 1, 4, 5]);
            let hi64 = |fb: &mut FunctionBuilder, a, b| shuffle32(fb, a, b, [2, 3, 6, 7]);
            let (t0, t1) = (lo32(fb, src[0], src[1]), lo32(fb, src[2], src[3]));
            let (t2, t3) = (hi32(fb, src[0], src[1]), hi32(fb, src[2], src[3]));
            let result = [
                lo64(fb, t0, t1),
                hi64(fb, t0, t1),
                lo64(fb, t2, t3),
                hi64(fb, t2, t3),
            ];
            let rd = fb.ins().imul_imm_s(r, dst_row);
            let dd = fb.ins().iadd(d, rd);
            let dd = fb.ins().iadd(dd, c);
            let mut at = emit::addr(fb, po, dd, 4);
            let step = fb.ins().iconst(types::I64, dst_row * 4);
            for (i, v) in result.into_iter().enumerate() {
                if i > 0 {
                    at = fb.ins().iadd(at, step);
                }
                fb.ins().store(emit::mem(), v, at, 0);
            }
        });
    });
}

/// The 32-bit lanes `lanes` (0–3 from `a`, 4–7 from `b`) of two 16-byte vectors: Cranelift
/// lowers the unpack patterns to single `punpck*` instructions.
fn shuffle32(fb: &mut FunctionBuilder, a: Value, b: Value, lanes: [u8; 4]) -> Value {
    let bytes: Vec<u8> = lanes
        .iter()
        .flat_map(|&l| (0..4).map(move |i| 4 * l + i))
        .collect();
    let mask = fb
        .func
        .dfg
        .immediates
        .push(cranelift_codegen::ir::ConstantData::from(bytes));
    fb.ins().shuffle(a, b, mask)
}

/// Expand: the operand broadcast onto the result's (specialized) shape.
pub(super) fn expand(k: &mut Kernel) -> Result<(), String> {
    let (x, out) = (k.input(0)?, k.output(0));
    let plan = Broadcast::new(out, &[x])?;
    let ty = mover(x.ty.dtype.size_of());
    let (px, po) = (x.ptr, out.ptr);
    plan.emit_lanes(k, 1, &mut |fb, off, _| {
        let v = emit::load_at(fb, ty, px, off[1]);
        emit::store_at(fb, v, po, off[0]);
    });
    Ok(())
}

/// Tile: each result axis split into (repeat, extent); the operand is read with stride 0
/// along the repeats.
pub(super) fn tile(k: &mut Kernel) -> Result<(), String> {
    let (x, out) = (k.input(0)?, k.output(0));
    let dims = x.dims();
    let repeats = constant_ints(k, 1, "tile repeats")?.ok_or("repeats missing")?;
    if repeats.len() != dims.len() || repeats.iter().any(|&r| r < 0) {
        return Err(format!(
            "repeats {repeats:?} do not fit rank {}",
            dims.len()
        ));
    }
    let first = usize::from(x.batched());
    if x.batched() && repeats[0] != 1 {
        return Err("tiling the batch axis is not supported".to_string());
    }
    let out_dims = out.dims();
    let (src, dst) = (emit::row_major(&dims), emit::row_major(&out_dims));
    let mut extents = Vec::new();
    let mut strides = vec![Vec::new(), Vec::new()];
    for a in first..dims.len() {
        extents.extend([repeats[a] as usize, dims[a]]);
        strides[0].extend([dims[a] as i64 * dst[a], dst[a]]);
        strides[1].extend([0, src[a]]);
    }
    strided_copy(k, &extents, strides, (0, 0))
}

/// Cast: elementwise conversion with the interpreter's rules (float to integer truncates
/// toward zero with saturation at i64, then wraps to the target width; NaN becomes 0;
/// anything non-zero is `true`).
pub(super) fn cast(k: &mut Kernel) -> Result<(), String> {
    let (x, out) = (k.input(0)?, k.output(0));
    let (from, to) = (x.ty.dtype, out.ty.dtype);
    let plan = Broadcast::new(out, &[x])?;
    let (src_ty, dst_ty) = (x.elem(), out.elem());
    let (px, po) = (x.ptr, out.ptr);
    let signed = !matches!(from, DType::U8 | DType::U4 | DType::Bool);
    // Integers to f32 (a one-hot's bools, dynamic quantization's i32 products): 16 elements
    // a step, widened lane by lane and converted with the scalar conversion's rounding.
    let vector =
        to == DType::F32 && matches!(from, DType::Bool | DType::U8 | DType::I8 | DType::I32);
    plan.emit_lanes(
        k,
        if vector { CAST_LANES } else { 1 },
        &mut |fb, off, lanes| {
            match lanes {
                Lanes::Vector(splat) if !splat[1] => {
                    cast_to_f32x16(fb, from, px, off[1], po, off[0])
                }
                Lanes::Vector(_) => {
                    // The operand is constant along the run: one conversion, splatted.
                    let v = emit::load_at(fb, src_ty, px, off[1]);
                    let r = convert(fb, v, from, to, signed, dst_ty);
                    let r = fb.ins().splat(types::F32X4, r);
                    let a = emit::addr(fb, po, off[0], 4);
                    for q in 0..4 {
                        fb.ins().store(emit::mem(), r, a, 16 * q);
                    }
                }
                Lanes::Scalar => {
                    let v = emit::load_at(fb, src_ty, px, off[1]);
                    let r = convert(fb, v, from, to, signed, dst_ty);
                    emit::store_at(fb, r, po, off[0]);
                }
            }
        },
    );
    Ok(())
}

/// Elements per vector step of an integer-to-f32 Cast: one 16-byte load of 1-byte elements.
const CAST_LANES: usize = 16;

/// Converts 16 consecutive elements of `from` (bool, u8, i8 or i32) at element `xo` of `px`
/// to f32 at element `yo` of `po`: bytes widened (zero- or sign-extended) to four i32x4,
/// then `fcvt_from_sint`, exact for bytes and rounding to nearest even for i32 as the
/// scalar conversion does.
fn cast_to_f32x16(
    fb: &mut FunctionBuilder,
    from: DType,
    px: Value,
    xo: Value,
    po: Value,
    yo: Value,
) {
    let quads: Vec<Value> = if from == DType::I32 {
        let a = emit::addr(fb, px, xo, 4);
        (0..4)
            .map(|q| fb.ins().load(types::I32X4, emit::mem(), a, 16 * q))
            .collect()
    } else {
        let a = fb.ins().iadd(px, xo);
        let bytes = fb.ins().load(types::I8X16, emit::mem(), a, 0);
        let signed = from == DType::I8;
        let halves = [false, true].map(|high| emit::widen_half(fb, bytes, signed, high));
        halves
            .into_iter()
            .flat_map(|h| [(h, false), (h, true)])
            .map(|(h, high)| emit::widen_half(fb, h, signed, high))
            .collect()
    };
    let a = emit::addr(fb, po, yo, 4);
    for (q, v) in quads.into_iter().enumerate() {
        let f = fb.ins().fcvt_from_sint(types::F32X4, v);
        fb.ins().store(emit::mem(), f, a, 16 * q as i32);
    }
}

/// One element converted from `from` to `to`.
fn convert(
    fb: &mut FunctionBuilder,
    v: Value,
    from: DType,
    to: DType,
    signed: bool,
    dst_ty: Type,
) -> Value {
    if from == DType::F32 {
        return match to {
            DType::F32 => v,
            DType::Bool => {
                let zero = fb.ins().f32const(0.0);
                fb.ins().fcmp(FloatCC::NotEqual, v, zero)
            }
            _ => {
                let wide = fb.ins().fcvt_to_sint_sat(types::I64, v);
                wrap_to(fb, wide, to, dst_ty)
            }
        };
    }
    let src_ty = fb.func.dfg.value_type(v);
    let wide = if src_ty == types::I64 {
        v
    } else if signed {
        fb.ins().sextend(types::I64, v)
    } else {
        fb.ins().uextend(types::I64, v)
    };
    wrap_to(fb, wide, to, dst_ty)
}

/// An i64 (or a float's saturated i64) reduced to `to` as the interpreter wraps it: bool is
/// `!= 0`, 4-bit types wrap to 4 bits (sign-extended for i4), the others keep their low bits.
fn wrap_to(fb: &mut FunctionBuilder, wide: Value, to: DType, dst_ty: Type) -> Value {
    match to {
        DType::F32 => fb.ins().fcvt_from_sint(types::F32, wide),
        DType::I4 => {
            let up = fb.ins().ishl_imm_s(wide, 60);
            let v = fb.ins().sshr_imm_s(up, 60);
            fb.ins().ireduce(dst_ty, v)
        }
        DType::U4 => {
            let v = fb.ins().band_imm_s(wide, 15);
            fb.ins().ireduce(dst_ty, v)
        }
        DType::Bool => fb.ins().icmp_imm_s(IntCC::NotEqual, wide, 0),
        _ if dst_ty == types::I64 => wide,
        _ => fb.ins().ireduce(dst_ty, wide),
    }
}
