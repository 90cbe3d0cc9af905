//! 2-D QAveragePool of 8-bit planes, up to sixteen outputs a vector: the generic window
//! walk ([`super::pool::qpool`]) spends a scalar load, widening and 64-bit add per tap and a
//! 64-bit requantization per output (digits_mobile's 3×3 pool of 4×4 planes was a quarter
//! of the model's time).
//!
//! Each plane is copied into a scratch plane of its part (the planes are split across
//! threads) with the input zero point in the padding, so every window sums all its taps
//! and the padding adds `zx − zx = 0` to the centered sum, as the interpreter's valid taps
//! only do. A *block* is up to sixteen outputs: along a row, or several whole rows of a
//! narrow plane (4×4 outputs are one block). Lane `j` of a tap is padded byte `origin +
//! rel[j] + tap offset`: one 16-byte load (two when the block spans up to 32 bytes) and
//! one byte shuffle. The taps add in i16 lanes (wrapping: the centered sum fits, so it
//! comes out exact), minus `taps · zx`, and [`VectorRequant`] requantizes them with the
//! multiplier of each lane's divisor count, built by the interpreter's
//! `Requant::for_ratio`: the same values as the scalar form. Lanes of different counts (a
//! window clipped by `count_include_pad = 0` or `ceil_mode`) take their own multiplier's
//! results by a constant blend. Runs of block rows with the same counts are one loop.

use super::planes::{store_prefix, Fill};
use super::pool::{axes, planes, result_scale};
use super::pool_rows::{emit_planes, Rows};
use super::requant::{self, VectorRequant};
use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::{types, ConstantData, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::fixed_point::Requant;
use qlift_ir::{DType, OpKind};
use std::collections::BTreeMap;

/// Bytes two loads of a lane pattern may span (a two-input byte shuffle).
const SPAN: usize = 32;

/// Up to sixteen outputs of a group of output rows.
#[derive(Clone, PartialEq)]
struct Block {
    /// Padded-plane offset of each lane's window origin from the block's `origin`.
    rel: Vec<usize>,
    /// Padded-plane offset of the first lane's window origin from the group's first row.
    origin: usize,
    /// Output offset of the first lane from the group's first output.
    out: usize,
    /// Each lane's divisor count.
    counts: Vec<i64>,
}

/// Emits the QAveragePool in this form and returns true when it applies (2-D ([`Rows`]), 8-bit per
/// tensor, byte shuffles, sums that fit in i16, every count's requantization exact in
/// [`VectorRequant`]); false leaves it to the generic walk.
pub(super) fn emit(k: &mut Kernel) -> Result<bool, String> {
    let (x, y) = (k.input(0)?, k.output(0));
    let (xdtype, ydtype) = (x.ty.dtype, y.ty.dtype);
    let per_tensor = x.ty.quant.as_ref().filter(|q| q.axis.is_none());
    let (Some(q), true) = (
        per_tensor,
        k.op.kind == OpKind::QAveragePool
            && requant::is_8bit(xdtype)
            && requant::is_8bit(ydtype)
            && k.has_byte_shuffle(),
    ) else {
        return Ok(false);
    };
    let (sx, zx) = q.channel(0);
    let Some(g) = Rows::of(k)? else {
        return Ok(false);
    };
    let (kh, kw, sh, sw) = (g.kh, g.kw, g.sh, g.sw);
    let (_, spatial, out) = planes(k)?;
    let (oh, ow, wp) = (g.oh, g.ow, g.padded.wp);
    let taps = kh * kw;
    let reach = requant::reach(xdtype, zx).saturating_mul(taps as i64);
    if reach > i16::MAX as i64 {
        return Ok(false);
    }
    let include_pad = k.op.attrs.int("count_include_pad")? != 0;
    let ax = axes(k, &spatial, &out, include_pad)?;
    let (cy, cx): (Vec<i64>, Vec<i64>) = (
        ax[0].entries.iter().map(|e| e[2]).collect(),
        ax[1].entries.iter().map(|e| e[2]).collect(),
    );
    // Output rows per group: whole rows in one block while a block's lanes span at most
    // SPAN bytes; else one row in blocks along it.
    let mut rows = if ow >= requant::LANES {
        1
    } else {
        requant::LANES / ow
    };
    while rows > 1 && (rows - 1) * sh * wp + (ow - 1) * sw >= SPAN {
        rows -= 1;
    }
    let along = if rows > 1 {
        ow
    } else {
        requant::LANES.min((SPAN - 1) / sw + 1)
    };
    let group = |first: usize| -> Vec<Block> {
        let n = rows.min(oh - first);
        let lanes: Vec<(usize, usize)> =
            (0..n).flat_map(|r| (0..ow).map(move |c| (r, c))).collect();
        lanes
            .chunks(if rows > 1 { lanes.len() } else { along })
            .map(|chunk| {
                let at = |&(r, c): &(usize, usize)| r * sh * wp + c * sw;
                let origin = at(&chunk[0]);
                Block {
                    rel: chunk.iter().map(|l| at(l) - origin).collect(),
                    origin,
                    out: chunk[0].0 * ow + chunk[0].1,
                    counts: chunk.iter().map(|&(r, c)| cy[first + r] * cx[c]).collect(),
                }
            })
            .collect()
    };
    // Runs of groups with the same blocks: (first group, groups, blocks).
    let mut runs: Vec<(usize, usize, Vec<Block>)> = Vec::new();
    for g in 0..oh.div_ceil(rows) {
        let blocks = group(g * rows);
        match runs.last_mut() {
            Some((_, n, b)) if *b == blocks => *n += 1,
            _ => runs.push((g, 1, blocks)),
        }
    }
    if runs
        .iter()
        .flat_map(|r| &r.2)
        .any(|b| b.rel.last().is_some_and(|&r| r >= SPAN))
    {
        return Ok(false);
    }
    // One vector requantization per distinct count.
    let yty = y.ty.clone();
    let sy = result_scale(&yty)?;
    let act = k.op.fused_activation()?;
    let mut requants = BTreeMap::new();
    for &c in runs.iter().flat_map(|r| &r.2).flat_map(|b| &b.counts) {
        if let std::collections::btree_map::Entry::Vacant(e) = requants.entry(c) {
            let rq = Requant::for_ratio(sx as f64 / (sy * c.max(1) as f64), &yty, act)?;
            let m = requant::channel(&rq, 0);
            match VectorRequant::single(m, rq.zero_point, rq.bounds, reach, ydtype) {
                Some(v) => e.insert(v),
                None => return Ok(false),
            };
        }
    }
    k.form = "QAveragePool-rows";
    let tap_offsets: Vec<usize> = (0..kh)
        .flat_map(|i| (0..kw).map(move |t| (i, t)))
        .map(|(i, t)| g.tap(i, t))
        .collect();
    let centering = (taps as i64 * zx as i64) as i16;
    // The padding holds the zero point: a padded tap adds 0 to the centered sum.
    emit_planes(
        k,
        &g,
        Fill::U8(zx as u8),
        SPAN,
        &[],
        &mut |fb, _, src, dst| {
            for (first, count, blocks) in &runs {
                emit::for_count(fb, *count as i64, |fb, i| {
                    let group = fb.ins().iadd_imm_s(i, *first as i64);
                    let row = emit::addr(fb, src, group, (rows * sh * wp) as i64);
                    let out = emit::addr(fb, dst, group, (rows * ow) as i64);
                    for b in blocks {
                        let v = block(fb, b, row, &tap_offsets, xdtype, centering, &requants);
                        let at = fb.ins().iadd_imm_s(out, b.out as i64);
                        store_prefix(fb, v, at, b.rel.len());
                    }
                });
            }
        },
    )?;
    Ok(true)
}

/// The requantized outputs of block `b` of the group whose first padded row is at `row`.
fn block(
    fb: &mut FunctionBuilder,
    b: &Block,
    row: Value,
    tap_offsets: &[usize],
    dtype: DType,
    centering: i16,
    requants: &BTreeMap<i64, VectorRequant>,
) -> Value {
    let lanes = b.rel.len();
    let last = b.rel[lanes - 1];
    let pattern: Vec<u8> = (0..requant::LANES)
        .map(|j| b.rel[j.min(lanes - 1)] as u8)
        .collect();
    let identity = pattern.iter().enumerate().all(|(j, &r)| j == r as usize);
    let mask = (!identity).then(|| {
        fb.func
            .dfg
            .immediates
            .push(ConstantData::from(pattern.clone()))
    });
    let mut sums: Option<[Value; 2]> = None;
    for &t in tap_offsets {
        let at = (b.origin + t) as i32;
        let v = fb.ins().load(types::I8X16, emit::mem(), row, at);
        let v = match mask {
            None => v,
            Some(m) if last < 16 => fb.ins().shuffle(v, v, m),
            Some(m) => {
                let next = fb.ins().load(types::I8X16, emit::mem(), row, at + 16);
                fb.ins().shuffle(v, next, m)
            }
        };
        let halves = [false, true].map(|high| emit::widen_half(fb, v, dtype == DType::I8, high));
        sums = Some(match sums {
            None => halves,
            Some(s) => [0, 1].map(|i| fb.ins().iadd(s[i], halves[i])),
        });
    }
    let sums = sums.expect("a window has taps");
    let c = emit::iconst_of(fb, types::I16, centering as i64);
    let c = fb.ins().splat(types::I16X8, c);
    let centered = sums.map(|s| fb.ins().isub(s, c));
    let mut result: Option<Value> = None;
    for (&count, v) in requants {
        let lanes_of: Vec<bool> = (0..requant::LANES)
            .map(|j| b.counts.get(j) == Some(&count))
            .collect();
        if !lanes_of.contains(&true) {
            continue;
        }
        let r = v.apply(fb, &[centered]);
        result = Some(match result {
            None => r,
            Some(prev) => {
                let bytes: Vec<u8> = lanes_of
                    .iter()
                    .map(|&on| if on { 0xff } else { 0 })
                    .collect();
                let m = fb.func.dfg.constants.insert(ConstantData::from(bytes));
                let m = fb.ins().vconst(types::I8X16, m);
                fb.ins().bitselect(m, r, prev)
            }
        });
    }
    result.expect("every lane has a count")
}
