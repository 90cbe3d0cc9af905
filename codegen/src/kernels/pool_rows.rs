//! 2-D f32 MaxPool and AveragePool a row of outputs at a time in vectors, the planes split
//! across threads; the plane driver ([`emit_planes`]) and geometry ([`Rows`]) that the
//! 8-bit pools ([`super::byte_blocks`]) share.
//!
//! Each plane is copied into its part's scratch plane with its padding (and the room
//! ceil_mode's last windows need) holding a value that changes no result (−inf for a
//! maximum, +0 for a sum), so that every window reads
//! whole kernel rows with no border test; then a block of outputs of a row is one vector,
//! each tap one gather of the inputs `x[j · stride + tap]` of its lanes j, reduced tap by
//! tap in the order of the scalar walk (`pool::pool`), so that results are its bits. A
//! padded tap changes nothing: the scalar walk starts from the same minimum (or +0) and
//! skips it. The scalar walk remains for what these forms do not take (other ranks, strides
//! past 3, the Indices result).

use super::planes::{store_prefix, Fill, Padded};
use super::pool::{axes, planes, window_attrs};
use super::{data_address, Kernel};
use crate::emit;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::DataId;
use qlift_ir::{DType, OpKind};

/// Parts (scratch planes) at most of a split pool: more threads than this share the planes
/// among this many parts.
const PARTS: usize = 8;

/// f32 outputs per vector.
const LANES: usize = 4;

/// The window geometry of a 2-D pool read from one padded plane.
pub(super) struct Rows {
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub channels: usize,
    pub oh: usize,
    pub ow: usize,
    pub padded: Padded,
}

impl Rows {
    /// The geometry of `k`'s pool when it is 2-D with a non-empty result, else `None`.
    pub fn of(k: &Kernel) -> Result<Option<Rows>, String> {
        let (xd, yd) = (k.input(0)?.dims(), k.output(0).dims());
        let [kernel, strides, dilations, pads] = window_attrs(k)?;
        if xd.len() != 4
            || yd.len() != 4
            || kernel.len() != 2
            || strides.len() != 2
            || dilations.len() != 2
            || pads.len() != 4
        {
            return Ok(None);
        }
        let (kh, kw, sh, sw, dh, dw) = (
            kernel[0],
            kernel[1],
            strides[0],
            strides[1],
            dilations[0],
            dilations[1],
        );
        let (h, w, oh, ow) = (xd[2], xd[3], yd[2], yd[3]);
        if kh == 0 || kw == 0 || sw == 0 || oh == 0 || ow == 0 {
            return Ok(None);
        }
        let padded = Padded {
            planes: 1,
            h,
            w,
            hp: (h + pads[0] + pads[2]).max((oh - 1) * sh + (kh - 1) * dh + 1),
            wp: (w + pads[1] + pads[3]).max((ow - 1) * sw + (kw - 1) * dw + 1),
            top: pads[0],
            left: pads[1],
        };
        Ok(Some(Rows {
            kh,
            kw,
            sh,
            sw,
            dh,
            dw,
            channels: xd[1],
            oh,
            ow,
            padded,
        }))
    }

    /// Elements from the window's first tap to tap `t` of kernel row `i`, in the padded plane.
    pub fn tap(&self, i: usize, t: usize) -> usize {
        i * self.dh * self.padded.wp + t * self.dw
    }
}

/// 2-D MaxPool and AveragePool of f32 (strides up to 3) in vector rows; returns false
/// (nothing emitted) for other pools.
pub(super) fn pool_rows(k: &mut Kernel) -> Result<bool, String> {
    let dtype = k.input(0)?.ty.dtype;
    let average = k.op.kind == OpKind::AveragePool;
    if !(k.op.kind == OpKind::MaxPool || average) || k.outputs.len() != 1 {
        return Ok(false);
    }
    let Some(g) = Rows::of(k)? else {
        return Ok(false);
    };
    match dtype {
        DType::F32 if g.sw <= 3 && k.op.kind == OpKind::MaxPool => floats(k, &g)?,
        DType::F32 if g.sw <= 3 => means(k, &g)?,
        _ => return Ok(false),
    }
    k.form = "vector-rows";
    Ok(true)
}

/// What [`emit_rows`] emits per output row: `row(fb, addresses of the tables, padded row
/// of the window's first kernel row, output row, its index r)`.
type RowBody<'a> = dyn FnMut(&mut FunctionBuilder, &[Value], Value, Value, Value) + 'a;

/// What [`emit_planes`] emits per plane: `plane(fb, addresses of the tables, padded plane,
/// output plane)`.
pub(super) type PlaneBody<'a> = dyn FnMut(&mut FunctionBuilder, &[Value], Value, Value) + 'a;

/// [`emit_planes`] with `row` for each output row.
fn emit_rows(
    k: &mut Kernel,
    g: &Rows,
    fill: Fill,
    tables: &[DataId],
    row: &mut RowBody,
) -> Result<(), String> {
    let e = fill.size();
    let wp = g.padded.wp;
    emit_planes(k, g, fill, 0, tables, &mut |fb, tables, src, dst| {
        emit::for_count(fb, g.oh as i64, |fb, r| {
            let at = emit::addr(fb, src, r, (g.sh * wp * e) as i64);
            let out = emit::addr(fb, dst, r, (g.ow * e) as i64);
            row(fb, tables, at, out, r);
        });
    })
}

/// Pads every plane into its part's scratch plane (`fill` in the padding; `slack` more
/// bytes past the plane's for loads that read past it), then emits `plane` for it, with
/// the addresses of the data objects `tables`.
pub(super) fn emit_planes(
    k: &mut Kernel,
    g: &Rows,
    fill: Fill,
    slack: usize,
    tables: &[DataId],
    plane: &mut PlaneBody,
) -> Result<(), String> {
    let e = fill.size();
    let (x, y) = (k.input(0)?, k.output(0));
    let (xptr, yptr, batched) = (x.ptr, y.ptr, x.batched());
    let padded = g.padded;
    let (h, w) = (padded.h, padded.w);
    // Each part pads its planes in a scratch plane of its own (with the slack the vector
    // loads read past it), after the split's context (64 bytes).
    let part_bytes = (padded.bytes() * e + slack).next_multiple_of(64);
    let ws = k.workspace(64 + PARTS * part_bytes);
    let samples = k.samples(batched);
    let planes = k.fb.ins().imul_imm_s(samples, g.channels as i64);
    let ptrs = [xptr, yptr, ws];
    k.split_rows_in_parts(
        planes,
        &ptrs,
        g.channels * h * w,
        PARTS,
        &mut |fb, module, p, begin, end, slot| {
            let tables: Vec<Value> = tables
                .iter()
                .map(|&id| data_address(fb, module, id))
                .collect();
            let scratch = emit::addr(fb, p[2], slot, part_bytes as i64);
            let src = fb.ins().iadd_imm_s(scratch, 64);
            emit::for_range(fb, begin, end, 1, |fb, i| {
                let xp = emit::addr(fb, p[0], i, (h * w * e) as i64);
                padded.emit_plane(fb, xp, src, fill);
                let dst = emit::addr(fb, p[1], i, (g.oh * g.ow * e) as i64);
                plane(fb, &tables, src, dst);
            });
            Ok(())
        },
    )
}

/// f32 MaxPool: each tap of a block ([`float_taps`]) reduces with `select(tap > max, tap,
/// max)` lane by lane, the scalar walk's compare (NaN never wins, of equal values the first
/// stays), which is one `maxps` on x86.
fn floats(k: &mut Kernel, g: &Rows) -> Result<(), String> {
    let fill = Fill::F32(f32::NEG_INFINITY);
    let endian = super::requant::little_endian();
    emit_rows(k, g, fill, &[], &mut |fb, _, row, out, _| {
        float_blocks(fb, g, row, out, &mut |fb, at, _| {
            let min = fb.ins().f32const(f32::NEG_INFINITY);
            let mut max = fb.ins().splat(types::F32X4, min);
            float_taps(fb, g, at, &mut |fb, tap| {
                let gt = fb.ins().fcmp(FloatCC::LessThan, max, tap);
                let gt = fb.ins().bitcast(types::F32X4, endian, gt);
                max = fb.ins().bitselect(gt, tap, max);
            });
            max
        })
    })
}

/// f32 AveragePool: the taps of a block ([`float_taps`]) are summed in f64 in the scalar
/// walk's order, two outputs per f64x2, then divided in f64 by the window's count (the
/// product of its row's and its column's, from tables) and rounded to f32, as the scalar
/// walk does. The padding holds +0, which leaves every sum as it is: a sum starts at +0,
/// so it is never −0 (the one value adding +0 would change).
fn means(k: &mut Kernel, g: &Rows) -> Result<(), String> {
    let include_pad = k.op.attrs.int("count_include_pad")? != 0;
    let (_, spatial, out) = planes(k)?;
    let axes = axes(k, &spatial, &out, include_pad)?;
    // The counts per axis as f64, at least 1: a window that counts nothing holds padding
    // only, and its sum +0 divided by any count is the scalar walk's +0 / 1.
    let counts = |a: usize, len: usize| -> Vec<u8> {
        let mut c: Vec<f64> = axes[a].entries.iter().map(|e| e[2].max(1) as f64).collect();
        c.resize(len, 1.0);
        c.iter().flat_map(|v| v.to_ne_bytes()).collect()
    };
    let rows = k.data_object(counts(0, g.oh), 8)?;
    let cols = k.data_object(counts(1, g.ow.next_multiple_of(LANES)), 16)?;
    emit_rows(
        k,
        g,
        Fill::F32(0.0),
        &[rows, cols],
        &mut |fb, t, row, out, r| {
            let at = emit::addr(fb, t[0], r, 8);
            let row_count = fb.ins().load(types::F64, emit::mem(), at, 0);
            let row_count = fb.ins().splat(types::F64X2, row_count);
            float_blocks(fb, g, row, out, &mut |fb, at, first| {
                let zero = fb.ins().f64const(0.0);
                let zero = fb.ins().splat(types::F64X2, zero);
                let mut sums = [zero, zero];
                float_taps(fb, g, at, &mut |fb, tap| {
                    let high = emit::shuffle_f32(fb, tap, tap, [2, 3, 2, 3]);
                    for (sum, half) in sums.iter_mut().zip([tap, high]) {
                        let wide = fb.ins().fvpromote_low(half);
                        *sum = fb.ins().fadd(*sum, wide);
                    }
                });
                let counts = emit::addr(fb, t[1], first, 8);
                let means = [0, 16].map(|o| {
                    let col_count = fb.ins().load(types::F64X2, emit::mem(), counts, o);
                    (o, fb.ins().fmul(row_count, col_count))
                });
                let means = means.map(|(o, count)| {
                    let mean = fb.ins().fdiv(sums[o as usize / 16], count);
                    fb.ins().fvdemote(mean)
                });
                emit::shuffle_f32(fb, means[0], means[1], [0, 1, 4, 5])
            })
        },
    )
}

/// Emits `block(fb, first tap of the block's first window, its first output column)` for
/// the blocks of 4 outputs of a row (first window at `row`) and stores each result at
/// `out`: the whole blocks in a loop, then, when the width is not a multiple of 4, the
/// row's last 4 outputs again (the same values), or a prefix when the row is narrower.
fn float_blocks(
    fb: &mut FunctionBuilder,
    g: &Rows,
    row: Value,
    out: Value,
    block: &mut dyn FnMut(&mut FunctionBuilder, Value, Value) -> Value,
) {
    let full = g.ow / LANES;
    if full > 0 {
        emit::for_count(fb, full as i64, |fb, b| {
            let at = emit::addr(fb, row, b, (LANES * g.sw * 4) as i64);
            let first = fb.ins().imul_imm_s(b, LANES as i64);
            let v = block(fb, at, first);
            let to = emit::addr(fb, out, b, 16);
            fb.ins().store(emit::mem(), v, to, 0);
        });
    }
    if !g.ow.is_multiple_of(LANES) {
        let first = g.ow.saturating_sub(LANES);
        let at = fb.ins().iadd_imm_s(row, (first * g.sw * 4) as i64);
        let col = emit::iconst(fb, first as i64);
        let v = block(fb, at, col);
        let to = fb.ins().iadd_imm_s(out, (first * 4) as i64);
        store_prefix(fb, v, to, 4 * g.ow.min(LANES));
    }
}

/// Calls `tap(fb, lanes)` for each tap of the windows of 4 consecutive outputs of a row,
/// whose first window's first tap is at `at`, in the scalar walk's order (row-major): lane
/// j holds `x[j · sw + c]` (`c` the tap's offset), one unaligned load at stride 1, else
/// two loads and one two-input shuffle (lanes 0 and 1 from the load at `c`, 2 and 3 from
/// the one at `c + 2·sw`: one `shufps`).
fn float_taps(
    fb: &mut FunctionBuilder,
    g: &Rows,
    at: Value,
    tap: &mut dyn FnMut(&mut FunctionBuilder, Value),
) {
    let sw = g.sw;
    // The loads of the block by element offset: taps share them where they overlap.
    let mut loads: Vec<(usize, Value)> = Vec::new();
    let mut load = |fb: &mut FunctionBuilder, c: usize| {
        if let Some(&(_, v)) = loads.iter().find(|l| l.0 == c) {
            return v;
        }
        let v = fb.ins().load(types::F32X4, emit::mem(), at, (4 * c) as i32);
        loads.push((c, v));
        v
    };
    for i in 0..g.kh {
        for t in 0..g.kw {
            let c = g.tap(i, t);
            let lanes = if sw == 1 {
                load(fb, c)
            } else {
                // From the loads at p and p + 2·sw, p ≤ c chosen so that taps one apart
                // share the pair at stride 2.
                let r = c % (LANES - sw);
                let (a, b) = (load(fb, c - r), load(fb, c - r + 2 * sw));
                emit::shuffle_f32(fb, a, b, [r, r + sw, LANES + r, LANES + r + sw])
            };
            tap(fb, lanes);
        }
    }
}
