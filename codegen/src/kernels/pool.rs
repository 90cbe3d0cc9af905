//! Pooling kernels: MaxPool (f32, u8, i8), AveragePool (f32), GlobalAveragePool (f32),
//! QAveragePool and QGlobalAveragePool (8-bit, fixed-point).
//!
//! The interpreter (`qlift_ir::ops::nn::pool_windows`) visits every kernel position and
//! skips those in the padding. A window's valid positions are, on each spatial axis, one
//! contiguous run of kernel indices, and the window is the product of those runs: so the
//! geometry is precomputed per axis and per output coordinate at compile time (first valid
//! input offset, number of valid taps, divisor count) into small read-only tables, and the
//! emitted loops visit exactly the valid taps, in the interpreter's (row-major) order, with
//! no padding test inside. Float averages sum in f64 and divide in f64 as the interpreter
//! does, so results are bit-identical; integer averages use one fixed-point multiplier per
//! distinct window count, built with the interpreter's `Requant::for_ratio`.
//!
//! 2-D MaxPool (f32 and 8-bit) and f32 AveragePool take the vector forms of `pool_rows`
//! (rows of outputs per vector, planes split across threads) where those apply, with the
//! same bits as this scalar walk.

use super::elementwise::for_chunk;
use super::im2col::positions;
use super::quant::{load_int, store_int};
use super::requant::{self, VectorRequant};
use super::{split, Kernel};
use crate::emit;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::{FunctionBuilder, Variable};
use qlift_ir::fixed_point::{result_params, FixedMultiplier, Requant};
use qlift_ir::{DType, OpKind, TensorType};

/// The code emitted per output position: `(x offset of the window's first valid tap, y
/// offset, divisor count, valid taps per axis)`.
type Leaf<'a> = dyn FnMut(&mut FunctionBuilder, Value, Value, Count, &[Count]) + 'a;

/// A window's divisor count or its number of valid taps along one axis: known at compile
/// time when the window loops are unrolled, else read from the axis tables at run time.
#[derive(Clone, Copy)]
enum Count {
    Known(i64),
    Run(Value),
}

impl Count {
    /// The count as an i64 value.
    fn value(self, fb: &mut FunctionBuilder) -> Value {
        match self {
            Count::Known(n) => emit::iconst(fb, n),
            Count::Run(v) => v,
        }
    }
}

/// Planes whose windows hold at most this many taps in all are emitted as straight-line
/// code (every offset, tap count and divisor a constant); larger ones loop over tables.
const UNROLL_TAPS: usize = 1024;

/// Bytes of one per-axis table entry: first offset, valid taps, divisor count (i64 each).
const ENTRY: i64 = 24;

/// What a window reduces to.
#[derive(Clone, Copy)]
enum Reduce {
    /// The f32 maximum (NaN ignored, as `f64::max` does; -inf for an empty window).
    MaxF32,
    /// The maximum of 8-bit integers of this dtype.
    MaxInt(DType),
    /// The f32 mean, summed and divided in f64.
    AvgF32,
}

/// One spatial axis of a pool: per output coordinate `(first, taps, count)`, and the input
/// step between consecutive kernel taps (`dilation · input stride`).
pub(super) struct Axis {
    pub entries: Vec<[i64; 3]>,
    step: i64,
}

/// A pool's `kernel_shape`, `strides`, `dilations` and `pads` (the importer fills the
/// defaults).
pub(super) fn window_attrs(k: &Kernel) -> Result<[Vec<usize>; 4], String> {
    let attrs = &k.op.attrs;
    Ok([
        attrs.usizes("kernel_shape")?,
        attrs.usizes("strides")?,
        attrs.usizes("dilations")?,
        attrs.usizes("pads")?,
    ])
}

/// The per-axis window geometry of MaxPool/AveragePool/QAveragePool on input `[N, C,
/// spatial…]` with result spatial extents `out` (from the result type, which shape
/// inference computed with ceil_mode).
pub(super) fn axes(
    k: &Kernel,
    spatial: &[usize],
    out: &[usize],
    include_pad: bool,
) -> Result<Vec<Axis>, String> {
    let [kernel, strides, dilations, pads] = window_attrs(k)?;
    let r = spatial.len();
    if kernel.len() != r
        || strides.len() != r
        || dilations.len() != r
        || pads.len() != 2 * r
        || out.len() != r
    {
        return Err(format!("window attributes do not fit {r} spatial axes"));
    }
    let mut in_stride = 1i64;
    let mut result = Vec::with_capacity(r);
    for a in (0..r).rev() {
        let (n, d) = (spatial[a] as i64, dilations[a] as i64);
        let entries = (0..out[a] as i64)
            .map(|o| {
                let start = o * strides[a] as i64 - pads[a] as i64;
                let index = |kk: i64| start + kk * d;
                let valid: Vec<i64> = (0..kernel[a] as i64)
                    .filter(|&kk| (0..n).contains(&index(kk)))
                    .collect();
                let first = valid.first().map_or(0, |&kk| index(kk) * in_stride);
                let taps = valid.len() as i64;
                let count = if include_pad {
                    (0..kernel[a] as i64)
                        .filter(|&kk| index(kk) < n + pads[a + r] as i64)
                        .count() as i64
                } else {
                    taps
                };
                [first, taps, count]
            })
            .collect();
        result.push(Axis {
            entries,
            step: d * in_stride,
        });
        in_stride *= n;
    }
    result.reverse();
    Ok(result)
}

/// The pooled extents of input and result per sample: `(channels, spatial in, spatial out)`.
pub(super) fn planes(k: &Kernel) -> Result<(usize, Vec<usize>, Vec<usize>), String> {
    let (x, y) = (k.input(0)?, k.output(0));
    let (xd, yd) = (x.dims(), y.dims());
    if xd.len() < 3 || yd.len() != xd.len() {
        return Err(format!("input of rank {} has no spatial axes", xd.len()));
    }
    Ok((xd[1], xd[2..].to_vec(), yd[2..].to_vec()))
}

/// Emits, for every plane and output position, `leaf(x offset of the window's first valid
/// tap, y offset, divisor count, valid taps per axis)`.
fn windows(
    k: &mut Kernel,
    axes: &[Axis],
    spatial: &[usize],
    out: &[usize],
    leaf: &mut Leaf,
) -> Result<(), String> {
    let x = k.input(0)?;
    let batched = x.batched();
    let channels = x.dims()[1] as i64;
    let (in_count, out_count) = (
        spatial.iter().product::<usize>() as i64,
        out.iter().product::<usize>() as i64,
    );
    let mut tables = Vec::with_capacity(axes.len());
    for ax in axes {
        let bytes: Vec<u8> = ax
            .entries
            .iter()
            .flatten()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        tables.push(k.data(bytes, 8)?);
    }
    let mut ystrides = vec![1i64; out.len()];
    for a in (0..out.len().saturating_sub(1)).rev() {
        ystrides[a] = ystrides[a + 1] * out[a + 1] as i64;
    }
    let samples = k.samples(batched);
    let planes = k.fb.ins().imul_imm_s(samples, channels);
    let taps_per_plane: usize = axes
        .iter()
        .map(|a| a.entries.iter().map(|e| e[1] as usize).sum::<usize>())
        .product();
    emit::for_dynamic(k.fb, planes, |fb, p| {
        let xo = fb.ins().imul_imm_s(p, in_count);
        let yo = fb.ins().imul_imm_s(p, out_count);
        if taps_per_plane <= UNROLL_TAPS {
            // Every output position of the plane with its window's constants.
            for pos in positions(&axes.iter().map(|a| a.entries.len()).collect::<Vec<_>>()) {
                let entries: Vec<[i64; 3]> =
                    pos.iter().zip(axes).map(|(&o, a)| a.entries[o]).collect();
                let first: i64 = entries.iter().map(|e| e[0]).sum();
                let count: i64 = entries.iter().map(|e| e[2]).product();
                let y_at: i64 = pos.iter().zip(&ystrides).map(|(&o, s)| o as i64 * s).sum();
                let taps: Vec<Count> = entries.iter().map(|e| Count::Known(e[1])).collect();
                let (x_at, y_at) = (
                    fb.ins().iadd_imm_s(xo, first),
                    fb.ins().iadd_imm_s(yo, y_at),
                );
                leaf(fb, x_at, y_at, Count::Known(count), &taps);
            }
            return;
        }
        let one = emit::iconst(fb, 1);
        out_nest(
            fb,
            0,
            axes,
            &tables,
            &ystrides,
            xo,
            yo,
            one,
            &mut Vec::new(),
            leaf,
        );
    });
    Ok(())
}

/// The loop over output coordinate `a` and those inside it (see [`windows`]).
#[allow(clippy::too_many_arguments)]
fn out_nest(
    fb: &mut FunctionBuilder,
    a: usize,
    axes: &[Axis],
    tables: &[Value],
    ystrides: &[i64],
    xo: Value,
    yo: Value,
    count: Value,
    taps: &mut Vec<Count>,
    leaf: &mut Leaf,
) {
    if a == axes.len() {
        leaf(fb, xo, yo, Count::Run(count), taps);
        return;
    }
    let table = tables[a];
    let ystride = ystrides[a];
    emit::for_count(fb, axes[a].entries.len() as i64, |fb, o| {
        let entry = emit::addr(fb, table, o, ENTRY);
        let first = fb.ins().load(types::I64, emit::mem(), entry, 0);
        let n = fb.ins().load(types::I64, emit::mem(), entry, 8);
        let c = fb.ins().load(types::I64, emit::mem(), entry, 16);
        let xo = fb.ins().iadd(xo, first);
        let dy = fb.ins().imul_imm_s(o, ystride);
        let yo = fb.ins().iadd(yo, dy);
        let count = fb.ins().imul(count, c);
        taps.push(Count::Run(n));
        out_nest(fb, a + 1, axes, tables, ystrides, xo, yo, count, taps, leaf);
        taps.pop();
    });
}

/// The loops over a window's valid taps, axis by axis (row-major, the interpreter's
/// order); `body` gets each tap's input offset.
fn tap_nest(
    fb: &mut FunctionBuilder,
    a: usize,
    taps: &[Count],
    axes: &[Axis],
    xo: Value,
    body: &mut dyn FnMut(&mut FunctionBuilder, Value),
) {
    if a == taps.len() {
        body(fb, xo);
        return;
    }
    let step = axes[a].step;
    match taps[a] {
        Count::Known(n) => {
            for t in 0..n {
                let xo = fb.ins().iadd_imm_s(xo, t * step);
                tap_nest(fb, a + 1, taps, axes, xo, body);
            }
        }
        Count::Run(n) => {
            let zero = emit::iconst(fb, 0);
            emit::for_range(fb, zero, n, 1, |fb, t| {
                let d = fb.ins().imul_imm_s(t, step);
                let xo = fb.ins().iadd(xo, d);
                tap_nest(fb, a + 1, taps, axes, xo, body);
            });
        }
    }
}

/// The initial accumulator of a reduction.
fn init(fb: &mut FunctionBuilder, reduce: Reduce) -> Value {
    match reduce {
        Reduce::MaxF32 => fb.ins().f32const(f32::NEG_INFINITY),
        // i32::MIN: an empty window then stores its low byte, 0, as the interpreter's
        // `i64::MIN as u8/i8` does.
        Reduce::MaxInt(_) => fb.ins().iconst(types::I32, i32::MIN as i64),
        Reduce::AvgF32 => fb.ins().f64const(0.0),
    }
}

/// Folds the element at `xo` into `acc`.
fn combine(fb: &mut FunctionBuilder, reduce: Reduce, x: Value, xo: Value, acc: Value) -> Value {
    match reduce {
        Reduce::MaxF32 => {
            let v = emit::load_at(fb, types::F32, x, xo);
            // `v > acc` is false for NaN: NaN is skipped, as `f64::max` skips it.
            let gt = fb.ins().fcmp(FloatCC::GreaterThan, v, acc);
            fb.ins().select(gt, v, acc)
        }
        Reduce::MaxInt(dtype) => {
            let v = load_int(fb, dtype, x, xo);
            fb.ins().smax(acc, v)
        }
        Reduce::AvgF32 => {
            let v = emit::load_at(fb, types::F32, x, xo);
            let v = fb.ins().fpromote(types::F64, v);
            fb.ins().fadd(acc, v)
        }
    }
}

/// Stores the reduced window: the maximum, or the f64 sum divided by `max(count, 1)` in f64.
fn finish(fb: &mut FunctionBuilder, reduce: Reduce, acc: Value, count: Value, y: Value, yo: Value) {
    match reduce {
        Reduce::MaxF32 => emit::store_at(fb, acc, y, yo),
        Reduce::MaxInt(dtype) => store_int(fb, dtype, acc, y, yo),
        Reduce::AvgF32 => {
            let one = emit::iconst(fb, 1);
            let c = fb.ins().smax(count, one);
            let c = fb.ins().fcvt_from_sint(types::F64, c);
            let mean = fb.ins().fdiv(acc, c);
            let mean = fb.ins().fdemote(types::F32, mean);
            emit::store_at(fb, mean, y, yo);
        }
    }
}

/// MaxPool (f32, u8, i8) and AveragePool (f32) over precomputed windows.
pub(super) fn pool(k: &mut Kernel) -> Result<(), String> {
    if super::pool_rows::pool_rows(k)? || super::byte_blocks::max_pool(k)? {
        return Ok(());
    }
    let x = k.input(0)?;
    let (xptr, dtype) = (x.ptr, x.ty.dtype);
    let reduce = match (k.op.kind, dtype) {
        (OpKind::MaxPool, DType::F32) => Reduce::MaxF32,
        (OpKind::MaxPool, DType::U8 | DType::I8 | DType::I16) => Reduce::MaxInt(dtype),
        (OpKind::AveragePool, DType::F32) => Reduce::AvgF32,
        (kind, dtype) => return Err(format!("{kind} on {dtype}")),
    };
    let include_pad = matches!(reduce, Reduce::AvgF32) && k.op.attrs.int("count_include_pad")? != 0;
    let (_, spatial, out) = planes(k)?;
    let axes = axes(k, &spatial, &out, include_pad)?;
    let yptr = k.output(0).ptr;
    let ty = match reduce {
        Reduce::MaxF32 => types::F32,
        Reduce::MaxInt(_) => types::I32,
        Reduce::AvgF32 => types::F64,
    };
    let acc = k.fb.declare_var(ty);
    windows(k, &axes, &spatial, &out, &mut |fb, xo, yo, count, taps| {
        let start = init(fb, reduce);
        fb.def_var(acc, start);
        tap_nest(fb, 0, taps, &axes, xo, &mut |fb, o| {
            let cur = fb.use_var(acc);
            let next = combine(fb, reduce, xptr, o, cur);
            fb.def_var(acc, next);
        });
        let total = fb.use_var(acc);
        let count = count.value(fb);
        finish(fb, reduce, total, count, yptr, yo);
    })
}

/// GlobalAveragePool (f32): every plane is one window, summed in order (GlobalMaxPool is
/// `global_max.rs`); the planes split across threads.
pub(super) fn global_pool(k: &mut Kernel) -> Result<(), String> {
    let reduce = Reduce::AvgF32;
    let (channels, spatial, _) = planes(k)?;
    let inner = spatial.iter().product::<usize>() as i64;
    let x = k.input(0)?;
    let (xptr, batched) = (x.ptr, x.batched());
    let yptr = k.output(0).ptr;
    let samples = k.samples(batched);
    let planes = k.fb.ins().imul_imm_s(samples, channels as i64);
    let elements = channels * inner as usize;
    k.split_rows(
        planes,
        &[xptr, yptr],
        elements,
        &mut |fb, _, ptrs, begin, end| {
            let acc = fb.declare_var(types::F64);
            emit::for_range(fb, begin, end, 1, |fb, p| {
                let start = init(fb, reduce);
                fb.def_var(acc, start);
                let xo = fb.ins().imul_imm_s(p, inner);
                emit::for_count(fb, inner, |fb, i| {
                    let o = fb.ins().iadd(xo, i);
                    let cur = fb.use_var(acc);
                    let next = combine(fb, reduce, ptrs[0], o, cur);
                    fb.def_var(acc, next);
                });
                let total = fb.use_var(acc);
                let count = emit::iconst(fb, inner);
                finish(fb, reduce, total, count, ptrs[1], p);
            });
            Ok(())
        },
    )
}

/// The result scale of an 8-bit per-tensor result, in f64 (the interpreter's `result_scale`).
pub(super) fn result_scale(y: &TensorType) -> Result<f64, String> {
    Ok(result_params(y, None)?.0 as f64)
}

/// QAveragePool and QGlobalAveragePool: the exact integer sum of centered inputs, requantized
/// by `s_x / (s_y · count)`. QAveragePool's multipliers are built at compile time for each
/// distinct window count (as the interpreter does) into a table indexed by the count.
pub(super) fn qpool(k: &mut Kernel) -> Result<(), String> {
    if super::byte_blocks::average_pool(k)? {
        return Ok(());
    }
    let act = k.op.fused_activation()?;
    let x = k.input(0)?;
    let (xptr, xdtype, batched) = (x.ptr, x.ty.dtype, x.batched());
    let (sx, zx) =
        x.ty.quant
            .as_ref()
            .filter(|q| q.axis.is_none())
            .map(|q| q.channel(0))
            .ok_or("input must be quantized per tensor")?;
    let y = k.output(0);
    let (yptr, ydtype, yty) = (y.ptr, y.ty.dtype, y.ty.clone());
    let sy = result_scale(&yty)?;
    let for_count =
        |count: usize| Requant::for_ratio(sx as f64 / (sy * count.max(1) as f64), &yty, act);
    let (channels, spatial, out) = planes(k)?;
    if k.op.kind == OpKind::QGlobalAveragePool {
        let inner = spatial.iter().product::<usize>();
        let rq = for_count(inner)?;
        let m = requant::channel(&rq, 0);
        // 16 planes per step where a plane's centered sum fits in i16 and it is whole 8-byte
        // loads ([`plane_sums`]); the remaining planes, and other shapes, one at a time.
        let eight_bit = inner % 8 == 0 && inner > 0 && requant::is_8bit(xdtype);
        let reach = requant::reach(xdtype, zx).saturating_mul(inner as i64);
        let vector = eight_bit
            .then(|| VectorRequant::single(m, rq.zero_point, rq.bounds, reach, ydtype))
            .flatten();
        let lanes = if vector.is_some() { requant::LANES } else { 1 };
        let samples = k.samples(batched);
        // Split across threads in groups of GROUP planes (a multiple of `lanes`, so every
        // plane takes the same path as in the serial loop).
        const GROUP: i64 = requant::LANES as i64;
        let (channels, inner) = (channels as i64, inner as i64);
        let groups = (channels as usize).div_ceil(GROUP as usize) as i64;
        let rows = k.fb.ins().imul_imm_s(samples, groups);
        let elements = (channels * inner) as usize;
        return k.split_rows(
            rows,
            &[xptr, yptr],
            elements,
            &mut |fb, _, ptrs, begin, end| {
                let (xptr, yptr) = (ptrs[0], ptrs[1]);
                let acc = fb.declare_var(types::I64);
                emit::for_range(fb, begin, end, 1, |fb, u| {
                    let (s, g) = split::sample_row(fb, u, batched, groups);
                    let first = fb.ins().imul_imm_s(s, channels);
                    for_chunk(fb, channels, lanes as i64, GROUP, g, &mut |fb, c, whole| {
                        let p = fb.ins().iadd(first, c);
                        if let (Some(v), true) = (&vector, whole) {
                            let sums =
                                [0, 8].map(|g| plane_sums(fb, xdtype, xptr, p, g, inner, zx));
                            let r = v.apply(fb, &[sums]);
                            let at = fb.ins().iadd(yptr, p);
                            fb.ins().store(emit::mem(), r, at, 0);
                            return;
                        }
                        let zero = emit::iconst(fb, 0);
                        fb.def_var(acc, zero);
                        let xo = fb.ins().imul_imm_s(p, inner);
                        emit::for_count(fb, inner, |fb, i| {
                            let o = fb.ins().iadd(xo, i);
                            add_centered(fb, acc, xdtype, xptr, o, zx);
                        });
                        let sum = fb.use_var(acc);
                        let r = requant::requantize(fb, sum, m, rq.zero_point, rq.bounds);
                        store_int(fb, ydtype, r, yptr, p);
                    });
                });
                Ok(())
            },
        );
    }
    let acc = k.fb.declare_var(types::I64);
    let include_pad = k.op.attrs.int("count_include_pad")? != 0;
    let axes = axes(k, &spatial, &out, include_pad)?;
    // Distinct window counts: every combination of per-axis counts occurs (the output
    // positions are their product), so the products of per-axis distinct counts.
    let mut counts = vec![1i64];
    for ax in &axes {
        let mut distinct: Vec<i64> = ax.entries.iter().map(|e| e[2]).collect();
        distinct.sort_unstable();
        distinct.dedup();
        counts = counts
            .iter()
            .flat_map(|&c| distinct.iter().map(move |&d| c * d))
            .collect();
        counts.sort_unstable();
        counts.dedup();
    }
    let largest = counts.iter().copied().max().unwrap_or(1).max(1) as usize;
    let (zero_point, bounds) = (
        for_count(counts[0] as usize)?.zero_point,
        for_count(counts[0] as usize)?.bounds,
    );
    let mut table = vec![FixedMultiplier { m: 0, shift: 1 }; largest + 1];
    for &c in &counts {
        table[c as usize] = requant::channel(&for_count(c as usize)?, 0);
    }
    let bytes: Vec<u8> = table
        .iter()
        .flat_map(|m| [m.m as i64, m.shift as i64])
        .flat_map(i64::to_ne_bytes)
        .collect();
    let multipliers = k.data(bytes, 8)?;
    windows(k, &axes, &spatial, &out, &mut |fb, xo, yo, count, taps| {
        let zero = emit::iconst(fb, 0);
        fb.def_var(acc, zero);
        tap_nest(fb, 0, taps, &axes, xo, &mut |fb, o| {
            add_centered(fb, acc, xdtype, xptr, o, zx)
        });
        let sum = fb.use_var(acc);
        // A count known at compile time (unrolled windows) takes its multiplier and shift as
        // immediates; otherwise they are loaded from the table.
        let r = match count {
            Count::Known(c) => requant::requantize(fb, sum, table[c as usize], zero_point, bounds),
            Count::Run(count) => {
                let entry = emit::addr(fb, multipliers, count, 16);
                let m = fb.ins().load(types::I64, emit::mem(), entry, 0);
                let shift = fb.ins().load(types::I64, emit::mem(), entry, 8);
                requant::requantize_dynamic(fb, sum, m, shift, zero_point, bounds)
            }
        };
        store_int(fb, ydtype, r, yptr, yo);
    })
}

/// `acc += x[o] − zx` (i64 variable `acc`, element `o` of `dtype` at `x`).
fn add_centered(
    fb: &mut FunctionBuilder,
    acc: Variable,
    dtype: DType,
    x: Value,
    o: Value,
    zx: i32,
) {
    let v = load_int(fb, dtype, x, o);
    let v = fb.ins().sextend(types::I64, v);
    let v = fb.ins().iadd_imm_s(v, -(zx as i64));
    let cur = fb.use_var(acc);
    let next = fb.ins().iadd(cur, v);
    fb.def_var(acc, next);
}

/// The centered sums of the 8 planes `p + g .. p + g + 8` of `inner` elements (a multiple of
/// 8) as an i16x8: each plane's 8-byte loads added in i16 lanes, then the 8 planes' lanes
/// reduced together by a tree of pairwise adds (`phaddw`), which keeps the planes in order.
/// The i16 arithmetic wraps, so the result is exact whenever the centered sum fits in i16
/// (the caller's [`VectorRequant`] requires it), even if the raw sum does not.
fn plane_sums(
    fb: &mut FunctionBuilder,
    dtype: DType,
    x: Value,
    p: Value,
    g: i64,
    inner: i64,
    zx: i32,
) -> Value {
    let mut level: Vec<Value> = (0..8)
        .map(|j| {
            let plane = fb.ins().iadd_imm_s(p, g + j);
            let start = fb.ins().imul_imm_s(plane, inner);
            let at = fb.ins().iadd(x, start);
            let chunks: Vec<Value> = (0..inner / 8)
                .map(|c| requant::load_widened(fb, dtype, at, (8 * c) as i32))
                .collect();
            chunks
                .into_iter()
                .reduce(|a, b| fb.ins().iadd(a, b))
                .expect("a non-empty plane")
        })
        .collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| fb.ins().iadd_pairwise(pair[0], pair[1]))
            .collect();
    }
    let offset = emit::iconst_of(fb, types::I16, inner * zx as i64);
    let offset = fb.ins().splat(types::I16X8, offset);
    fb.ins().isub(level[0], offset)
}
