//! Resampling kernels: Resize, Pad in its reflect, edge and wrap modes, DepthToSpace and
//! SpaceToDepth.
//!
//! Extents are static, so everything that depends on positions is tabulated at compile
//! time: Resize's per-axis source offsets and weights come from `qlift_ir::resize_plan`
//! (the interpreter's own tables) and become read-only data; a padded axis gets the table
//! of `qlift_ir::pad_source`. The loops then read a table entry per axis instead of
//! computing coordinates. Interpolation sums in f64 in the interpreter's order, so integer
//! results match it exactly and f32 ones to the last bit in all but rare ties.

use super::index::strided_copy;
use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::{DType, OpKind, ResizePlan};

/// Per result axis, how a position maps to a source element offset: `None` for an axis
/// read as it is (offset `position · stride`), or a table of offsets (negative: the fill).
type Tables = Vec<Option<Vec<i64>>>;

/// The i64 entries of a table as a read-only data object, and its address.
fn table_data(k: &mut Kernel, values: impl Iterator<Item = i64>) -> Result<Value, String> {
    let bytes: Vec<u8> = values.flat_map(i64::to_le_bytes).collect();
    k.data(bytes, 8)
}

/// The body of [`walk`]: result offset, source offset of the axes read as they are, and the
/// positions along the remapped axes.
type WalkBody<'a> = dyn FnMut(&mut FunctionBuilder, Value, Value, &[Value]) + 'a;

/// The loop nest of a resampling kernel over every result position (per sample of the
/// batch): `body` gets the result's element offset, the source offset of the axes read as
/// they are, and the position along each axis in `remapped` (ascending axes after the
/// batch). The batch, when the operand has it, must be read as it is.
fn walk(
    k: &mut Kernel,
    src_strides: &[i64],
    remapped: &[usize],
    body: &mut WalkBody,
) -> Result<(), String> {
    let (x, out) = (k.input(0)?, k.output(0));
    let out_dims = out.dims();
    let batched = x.batched();
    if batched && remapped.first() == Some(&0) {
        return Err(
            "resampling the batch axis needs the batch size bound (compile for a fixed batch)"
                .to_string(),
        );
    }
    let first = usize::from(batched);
    let mut strides = vec![emit::row_major(&out_dims)[first..].to_vec()];
    strides.push(
        (first..out_dims.len())
            .map(|a| {
                if remapped.contains(&a) {
                    0
                } else {
                    src_strides[a]
                }
            })
            .collect(),
    );
    for &r in remapped {
        strides.push((first..out_dims.len()).map(|a| i64::from(a == r)).collect());
    }
    let (extents, strides) = emit::coalesce(&out_dims[first..], &strides);
    let (in_sample, out_sample) = (x.per_sample() as i64, out.per_sample() as i64);
    let samples = k.samples(batched);
    let streams = strides.len();
    emit::for_dynamic(k.fb, samples, |fb, b| {
        let mut start = vec![emit::iconst(fb, 0); streams];
        start[0] = fb.ins().imul_imm_s(b, out_sample);
        start[1] = fb.ins().imul_imm_s(b, in_sample);
        emit::for_strided(fb, &extents, &strides, &start, &mut |fb, off| {
            body(fb, off[0], off[1], &off[2..])
        });
    });
    Ok(())
}

/// Copies the source element each result position maps to through `tables` (nearest
/// Resize, and Pad outside constant mode); positions whose offset is negative get the
/// stored value `fill`.
fn gather_by_tables(k: &mut Kernel, tables: Tables, fill: i64) -> Result<(), String> {
    let x = k.input(0)?;
    let src = emit::row_major(&x.dims());
    // Elements move as integers of their width (the fill is stored bits).
    let ty = types::Type::int_with_byte_size(x.ty.dtype.size_of() as u16)
        .ok_or("no integer type of the element's width")?;
    let (px, po) = (x.ptr, k.output(0).ptr);
    let remapped: Vec<usize> = (0..tables.len()).filter(|&a| tables[a].is_some()).collect();
    let has_fill = tables.iter().flatten().any(|t| t.iter().any(|&v| v < 0));
    let mut bases = Vec::new();
    for t in tables.into_iter().flatten() {
        bases.push(table_data(k, t.into_iter())?);
    }
    walk(k, &src, &remapped, &mut |fb, dst, base, positions| {
        let mut off = base;
        for (&table, &j) in bases.iter().zip(positions) {
            let a = emit::addr(fb, table, j, 8);
            let entry = fb.ins().load(types::I64, emit::constant_mem(), a, 0);
            off = fb.ins().iadd(off, entry);
        }
        let v = if has_fill {
            // Fill entries are far below zero, so any sum holding one stays negative.
            let outside = fb.ins().icmp_imm_s(IntCC::SignedLessThan, off, 0);
            let zero = emit::iconst(fb, 0);
            let safe = fb.ins().select(outside, zero, off);
            let v = emit::load_at(fb, ty, px, safe);
            let f = emit::iconst_of(fb, ty, fill);
            fb.ins().select(outside, f, v)
        } else {
            emit::load_at(fb, ty, px, off)
        };
        emit::store_at(fb, v, po, dst);
    })
}

/// The offset standing for "the fill" in a table: far enough below zero that adding every
/// other axis' (non-negative) offsets keeps it negative.
const FILL: i64 = i64::MIN / 16;

/// Pad in reflect, edge or wrap mode: a table per padded axis from `qlift_ir::pad_source`.
pub(super) fn pad_by_tables(
    k: &mut Kernel,
    mode: qlift_ir::PadMode,
    pads: &[i64],
) -> Result<(), String> {
    let (x, out) = (k.input(0)?, k.output(0));
    let (dims, out_dims) = (x.dims(), out.dims());
    let r = dims.len();
    let src = emit::row_major(&dims);
    let tables: Tables = (0..r)
        .map(|a| {
            let (begin, end) = (pads[a], pads[a + r]);
            ((begin, end) != (0, 0)).then(|| {
                (0..out_dims[a])
                    .map(|p| {
                        qlift_ir::pad_source(mode, p, begin, end, dims[a])
                            .map_or(FILL, |i| i as i64 * src[a])
                    })
                    .collect()
            })
        })
        .collect();
    gather_by_tables(k, tables, 0)
}

/// The stored bits of `v` converted to `dtype` as the interpreter converts Resize results.
fn stored(dtype: DType, v: f64) -> Result<i64, String> {
    let t = qlift_ir::tensor_from_f64(dtype, vec![1], vec![v])?;
    Ok(match dtype {
        DType::F32 => t.as_f32()?[0].to_bits() as i64,
        _ => t.to_i64_vec()?[0],
    })
}

/// Resize on specialized extents: the plan's tables as data; nearest mode copies through
/// them, linear and cubic sum weighted taps.
pub(super) fn resize(k: &mut Kernel) -> Result<(), String> {
    let x = k.input(0)?;
    let dims = x.dims();
    let constant = |i: usize,
                    what: &str|
     -> Result<Option<std::sync::Arc<qlift_ir::Tensor>>, String> {
        match k.optional(i) {
            None => Ok(None),
            Some(o) => o.constant.clone().map(Some).ok_or_else(|| format!("Resize {what} computed at run time are not supported; bind the input shapes so that they fold")),
        }
    };
    let (roi, scales, sizes) = (
        constant(1, "roi values")?,
        constant(2, "scales")?,
        constant(3, "sizes")?,
    );
    let sizes = sizes.map(|t| t.to_i64_vec()).transpose()?;
    let plan = qlift_ir::resize_plan(
        &k.op.attrs,
        &dims,
        roi.as_deref().map(|t| t.as_f32()).transpose()?,
        scales.as_deref().map(|t| t.as_f32()).transpose()?,
        sizes.as_deref(),
    )?;
    if plan.out != k.output(0).dims() {
        return Err(format!(
            "the plan's extents {:?} disagree with the result type {}",
            plan.out,
            k.output(0).ty.shape
        ));
    }
    let src = emit::row_major(&dims);
    let fill = stored(x.ty.dtype, plan.extrapolation)?;
    if plan.nearest {
        let tables: Tables = plan
            .axes
            .iter()
            .enumerate()
            .map(|(a, t)| {
                t.as_ref().map(|t| {
                    t.index
                        .iter()
                        .zip(&t.outside)
                        .map(|(&i, &o)| if o { FILL } else { i as i64 * src[a] })
                        .collect()
                })
            })
            .collect();
        return gather_by_tables(k, tables, fill);
    }
    interpolate(k, &plan, &src)
}

/// One resized axis as the interpolation loops read it: taps per position, and the data
/// objects of its source offsets (i64), weights (f64) and outside flags (i64, or none).
struct AxisData {
    taps: usize,
    offsets: Value,
    weights: Value,
    outside: Option<Value>,
}

/// Linear and cubic Resize: per result position, the nested weighted sum over the taps of
/// the resized axes (outer axis first) in f64, then the interpreter's conversion.
fn interpolate(k: &mut Kernel, plan: &ResizePlan, src: &[i64]) -> Result<(), String> {
    let (x, out) = (k.input(0)?, k.output(0));
    let (dtype, ty, px, po) = (x.ty.dtype, x.elem(), x.ptr, out.ptr);
    let mut axes = Vec::new();
    let mut remapped = Vec::new();
    for (a, t) in plan.axes.iter().enumerate() {
        let Some(t) = t else { continue };
        remapped.push(a);
        let offsets = table_data(k, t.index.iter().map(|&i| i as i64 * src[a]))?;
        let weights = k.data(t.weight.iter().flat_map(|w| w.to_le_bytes()).collect(), 8)?;
        let outside = if t.outside.contains(&true) {
            Some(table_data(k, t.outside.iter().map(|&o| i64::from(o)))?)
        } else {
            None
        };
        axes.push(AxisData {
            taps: t.taps,
            offsets,
            weights,
            outside,
        });
    }
    let fill = plan.extrapolation;
    let range = dtype.int_range();
    let accumulators: Vec<_> = axes.iter().map(|_| k.fb.declare_var(types::F64)).collect();
    walk(k, src, &remapped, &mut |fb, dst, base, positions| {
        let sum = weighted_sum(fb, &axes, &accumulators, positions, base, &|fb, off| {
            let v = emit::load_at(fb, ty, px, off);
            to_f64(fb, v, dtype)
        });
        let mut v = sum;
        for (axis, &j) in axes.iter().zip(positions) {
            if let Some(table) = axis.outside {
                let a = emit::addr(fb, table, j, 8);
                let flag = fb.ins().load(types::I64, emit::constant_mem(), a, 0);
                let outside = fb.ins().icmp_imm_s(IntCC::NotEqual, flag, 0);
                let e = fb.ins().f64const(fill);
                v = fb.ins().select(outside, e, v);
            }
        }
        let r = from_f64(fb, v, range, ty);
        emit::store_at(fb, r, po, dst);
    })
}

/// Emits `Σₜ w · (the same over the next axes)` for the axes from `axes[0]` on, at the
/// positions `positions`, from source offset `base`; `leaf` loads one source element as f64.
fn weighted_sum(
    fb: &mut FunctionBuilder,
    axes: &[AxisData],
    accumulators: &[cranelift_frontend::Variable],
    positions: &[Value],
    base: Value,
    leaf: &dyn Fn(&mut FunctionBuilder, Value) -> Value,
) -> Value {
    let Some((axis, rest)) = axes.split_first() else {
        return leaf(fb, base);
    };
    let acc = accumulators[0];
    let zero = fb.ins().f64const(0.0);
    fb.def_var(acc, zero);
    let row = fb.ins().imul_imm_s(positions[0], axis.taps as i64);
    emit::for_count(fb, axis.taps as i64, |fb, t| {
        let i = fb.ins().iadd(row, t);
        let a = emit::addr(fb, axis.offsets, i, 8);
        let off = fb.ins().load(types::I64, emit::constant_mem(), a, 0);
        let a = emit::addr(fb, axis.weights, i, 8);
        let w = fb.ins().load(types::F64, emit::constant_mem(), a, 0);
        let at = fb.ins().iadd(base, off);
        let inner = weighted_sum(fb, rest, &accumulators[1..], &positions[1..], at, leaf);
        let term = fb.ins().fmul(w, inner);
        let sum = fb.use_var(acc);
        let sum = fb.ins().fadd(sum, term);
        fb.def_var(acc, sum);
    });
    fb.use_var(acc)
}

/// An element of `dtype` (loaded as `fb`'s type for it) as f64.
fn to_f64(fb: &mut FunctionBuilder, v: Value, dtype: DType) -> Value {
    if dtype == DType::F32 {
        return fb.ins().fpromote(types::F64, v);
    }
    let ty = fb.func.dfg.value_type(v);
    let wide = match (
        ty == types::I64,
        matches!(dtype, DType::U8 | DType::U4 | DType::Bool),
    ) {
        (true, _) => v,
        (false, true) => fb.ins().uextend(types::I64, v),
        (false, false) => fb.ins().sextend(types::I64, v),
    };
    fb.ins().fcvt_from_sint(types::F64, wide)
}

/// An f64 result stored as `ty`: f32 rounded to nearest; integers (dtype range `range`)
/// rounded half to even and saturated, NaN to 0 (the interpreter's conversion).
fn from_f64(fb: &mut FunctionBuilder, v: Value, range: Option<(i64, i64)>, ty: Type) -> Value {
    let Some((lo, hi)) = range else {
        return fb.ins().fdemote(types::F32, v);
    };
    let r = fb.ins().nearest(v);
    let (l, h) = (fb.ins().f64const(lo as f64), fb.ins().f64const(hi as f64));
    let r = fb.ins().fmax(r, l);
    let r = fb.ins().fmin(r, h);
    let i = fb.ins().fcvt_to_sint_sat(types::I64, r);
    if ty == types::I64 {
        i
    } else {
        fb.ins().ireduce(ty, i)
    }
}

/// DepthToSpace and SpaceToDepth: one strided copy of the 6-d view of
/// `qlift_ir::block_permutation`.
pub(super) fn block(k: &mut Kernel) -> Result<(), String> {
    let x = k.input(0)?;
    let b = qlift_ir::block_permutation(k.op.kind, &k.op.attrs, &x.dims())?;
    if b.out != k.output(0).dims() {
        return Err(format!(
            "{} extents {:?} disagree with the result type {}",
            k.op.kind,
            b.out,
            k.output(0).ty.shape
        ));
    }
    debug_assert!(matches!(
        k.op.kind,
        OpKind::DepthToSpace | OpKind::SpaceToDepth
    ));
    let first = usize::from(x.batched());
    let strides = vec![
        emit::row_major(&b.view)[first..].to_vec(),
        b.src[first..].iter().map(|&s| s as i64).collect(),
    ];
    strided_copy(k, &b.view[first..], strides, (0, 0))
}
