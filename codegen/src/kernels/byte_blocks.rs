//! 2-D pools of 8-bit planes, up to sixteen outputs a vector: MaxPool (u8, i8) and
//! QAveragePool. The generic window walk ([`super::pool::qpool`]) spends a scalar load,
//! widening and 64-bit add per tap and a 64-bit requantization per output (digits_mobile's
//! 3×3 average of 4×4 planes was a quarter of the model's time); a vector of a row's
//! outputs leaves most lanes empty on narrow planes.
//!
//! Each plane is copied into a scratch plane of its part (the planes are split across
//! threads, [`emit_planes`]) with a padding that changes no result: the dtype's minimum for
//! a maximum (the scalar walk starts from below it and skips padded taps), the input zero
//! point for an average (a padded tap adds `zx − zx = 0` to the centered sum, as the
//! interpreter's valid taps only do). A *block* is up to sixteen outputs: along a row, or
//! several whole rows of a narrow plane (4×4 outputs are one block). Lane `j` of a tap is
//! padded byte `origin + rel[j] + tap offset`: one 16-byte load (two when the block spans
//! up to 32 bytes) and one byte shuffle. Blocks of the same shape in consecutive row groups
//! are one loop.
//!
//! A maximum reduces the taps with one vector max each. An average adds them in i16 lanes
//! (wrapping: the centered sum fits, so it comes out exact), minus `taps · zx`, and
//! [`VectorRequant`] requantizes them with the multiplier of each lane's divisor count,
//! built by the interpreter's `Requant::for_ratio`: the same values as the scalar form.
//! Lanes of different counts (a window clipped by `count_include_pad = 0` or `ceil_mode`)
//! take their own multiplier's results by a constant blend.

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
    /// Each lane's divisor count (0 for a maximum).
    counts: Vec<i64>,
}

/// The blocks of a pool: output rows per group, and runs of consecutive groups with the
/// same blocks `(first group, groups, blocks)`.
struct Layout {
    rows: usize,
    runs: Vec<(usize, usize, Vec<Block>)>,
}

impl Layout {
    /// The blocks of `g`'s outputs, `count(r, c)` the divisor of output `(r, c)`; `None`
    /// when a block's lanes would span more than [`SPAN`] bytes (wide strides).
    fn of(g: &Rows, count: &dyn Fn(usize, usize) -> i64) -> Option<Layout> {
        let (oh, ow, sh, sw, wp) = (g.oh, g.ow, g.sh, g.sw, g.padded.wp);
        let lanes = requant::LANES;
        // Bytes a kernel row's taps reach past a lane's window origin: the two loads of a
        // kernel row serve all its taps while lanes and reach stay within SPAN bytes.
        let reach = (g.kw - 1) * g.dw;
        let room = (SPAN - 1).checked_sub(reach).unwrap_or(SPAN - 1);
        // Whole rows in one block while its lanes fit in `room`; else one row in blocks
        // along it.
        let mut rows = if ow >= lanes { 1 } else { lanes / ow };
        while rows > 1 && (rows - 1) * sh * wp + (ow - 1) * sw > room {
            rows -= 1;
        }
        let along = if rows > 1 {
            rows * ow
        } else {
            lanes.min(room / sw + 1)
        };
        let group = |first: usize| -> Vec<Block> {
            let n = rows.min(oh - first);
            let outputs: Vec<(usize, usize)> =
                (0..n).flat_map(|r| (0..ow).map(move |c| (r, c))).collect();
            outputs
                .chunks(along)
                .map(|chunk| {
                    let at = |&(r, c): &(usize, usize)| r * sh * wp + c * sw;
                    let origin = at(&chunk[0]);
                    Block {
                        rel: chunk.iter().map(|o| at(o) - origin).collect(),
                        origin,
                        out: chunk[0].0 * ow + chunk[0].1,
                        counts: chunk.iter().map(|&(r, c)| count(first + r, c)).collect(),
                    }
                })
                .collect()
        };
        let mut runs: Vec<(usize, usize, Vec<Block>)> = Vec::new();
        for i in 0..oh.div_ceil(rows) {
            let blocks = group(i * rows);
            match runs.last_mut() {
                Some((_, n, b)) if *b == blocks => *n += 1,
                _ => runs.push((i, 1, blocks)),
            }
        }
        let fits = runs
            .iter()
            .flat_map(|r| &r.2)
            .all(|b| b.rel.last().is_some_and(|&r| r < SPAN));
        fits.then_some(Layout { rows, runs })
    }

    /// Pads every plane with `fill` and stores `reduce(fb, block, its taps)` for each block
    /// ([`taps`]).
    fn emit(
        &self,
        k: &mut Kernel,
        g: &Rows,
        fill: u8,
        reduce: &mut dyn FnMut(&mut FunctionBuilder, &Block, Vec<Value>) -> Value,
    ) -> Result<(), String> {
        let (rows, sh, ow, wp) = (self.rows, g.sh, g.ow, g.padded.wp);
        emit_planes(k, g, Fill::U8(fill), SPAN, &[], &mut |fb, _, src, dst| {
            for (first, count, blocks) in &self.runs {
                emit::for_count(fb, *count as i64, |fb, i| {
                    let group = fb.ins().iadd_imm_s(i, *first as i64);
                    let row = emit::addr(fb, src, group, (rows * sh * wp) as i64);
                    let out = emit::addr(fb, dst, group, (rows * ow) as i64);
                    for b in blocks {
                        let taps = taps(fb, g, b, row);
                        let v = reduce(fb, b, taps);
                        let at = fb.ins().iadd_imm_s(out, b.out as i64);
                        store_prefix(fb, v, at, b.rel.len());
                    }
                });
            }
        })
    }
}

/// The geometry of a pool of kind `kind` this form takes: 2-D ([`Rows`]), one result, 8-bit
/// input and result, a target with byte shuffles.
fn geometry(k: &Kernel, kind: OpKind) -> Result<Option<Rows>, String> {
    let eight_bit =
        requant::is_8bit(k.input(0)?.ty.dtype) && requant::is_8bit(k.output(0).ty.dtype);
    if k.op.kind != kind || !eight_bit || k.outputs.len() != 1 || !k.has_byte_shuffle() {
        return Ok(None);
    }
    Rows::of(k)
}

/// Emits an 8-bit MaxPool in this form and returns true when it applies; false leaves it
/// to the other forms.
pub(super) fn max_pool(k: &mut Kernel) -> Result<bool, String> {
    let dtype = k.input(0)?.ty.dtype;
    let Some(g) = geometry(k, OpKind::MaxPool)? else {
        return Ok(false);
    };
    let Some(layout) = Layout::of(&g, &|_, _| 0) else {
        return Ok(false);
    };
    k.form = "vector-rows";
    let fill = if dtype == DType::U8 { 0 } else { 0x80 };
    layout.emit(k, &g, fill, &mut |fb, _, taps| {
        taps.into_iter()
            .reduce(|m, t| match dtype {
                DType::U8 => fb.ins().umax(m, t),
                _ => fb.ins().smax(m, t),
            })
            .expect("a window has taps")
    })?;
    Ok(true)
}

/// Emits a QAveragePool in this form and returns true when it applies (also: per-tensor
/// input, sums that fit in i16, every count's requantization exact in [`VectorRequant`]);
/// false leaves it to the generic walk.
pub(super) fn average_pool(k: &mut Kernel) -> Result<bool, String> {
    let (x, y) = (k.input(0)?, k.output(0));
    let (xdtype, ydtype, yty) = (x.ty.dtype, y.ty.dtype, y.ty.clone());
    let per_tensor = x.ty.quant.as_ref().filter(|q| q.axis.is_none());
    let (Some(q), Some(g)) = (per_tensor, geometry(k, OpKind::QAveragePool)?) else {
        return Ok(false);
    };
    let (sx, zx) = q.channel(0);
    let taps = g.kh * g.kw;
    let reach = requant::reach(xdtype, zx).saturating_mul(taps as i64);
    if reach > i16::MAX as i64 {
        return Ok(false);
    }
    let include_pad = k.op.attrs.int("count_include_pad")? != 0;
    let (_, spatial, out) = planes(k)?;
    let ax = axes(k, &spatial, &out, include_pad)?;
    let count = |r: usize, c: usize| ax[0].entries[r][2] * ax[1].entries[c][2];
    let Some(layout) = Layout::of(&g, &count) else {
        return Ok(false);
    };
    // One vector requantization per distinct count.
    let sy = result_scale(&yty)?;
    let act = k.op.fused_activation()?;
    let mut requants = BTreeMap::new();
    for &c in layout
        .runs
        .iter()
        .flat_map(|r| &r.2)
        .flat_map(|b| &b.counts)
    {
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
    let centering = (taps as i64 * zx as i64) as i16;
    layout.emit(k, &g, zx as u8, &mut |fb, b, taps| {
        let mut sums: Option<[Value; 2]> = None;
        for v in taps {
            let h = [false, true].map(|high| emit::widen_half(fb, v, xdtype == DType::I8, high));
            sums = Some(match sums {
                None => h,
                Some(s) => [0, 1].map(|i| fb.ins().iadd(s[i], h[i])),
            });
        }
        let sums = sums.expect("a window has taps");
        let c = emit::iconst_of(fb, types::I16, centering as i64);
        let c = fb.ins().splat(types::I16X8, c);
        let centered = sums.map(|s| fb.ins().isub(s, c));
        requantized(fb, b, centered, &requants)
    })?;
    Ok(true)
}

/// The taps of block `b` of the group whose first padded row is at `row`, row-major: one
/// i8x16 each, lane `j` the tap of the block's output `j`. A kernel row's taps shuffle the
/// same one or two 16-byte loads when the lanes and the taps' reach fit in them (`rel[j] +
/// t · dw < 32`); else each tap loads its own.
fn taps(fb: &mut FunctionBuilder, g: &Rows, b: &Block, row: Value) -> Vec<Value> {
    let lanes = b.rel.len();
    let lane = |j: usize| b.rel[j.min(lanes - 1)];
    let reach = b.rel[lanes - 1] + (g.kw - 1) * g.dw;
    let shared = reach < SPAN;
    // The shuffle of lanes `rel[j] + shift` from the loads `v` (one, or two for 32 bytes).
    let gather = |fb: &mut FunctionBuilder, v: &[Value], shift: usize| {
        let pattern: Vec<u8> = (0..requant::LANES)
            .map(|j| (lane(j) + shift) as u8)
            .collect();
        if pattern.iter().enumerate().all(|(j, &p)| j == p as usize) {
            return v[0];
        }
        let mask = fb.func.dfg.immediates.push(ConstantData::from(pattern));
        fb.ins().shuffle(v[0], *v.last().expect("a load"), mask)
    };
    let load = |fb: &mut FunctionBuilder, at: usize, bytes: usize| -> Vec<Value> {
        (0..bytes.div_ceil(16))
            .map(|i| {
                fb.ins()
                    .load(types::I8X16, emit::mem(), row, (at + 16 * i) as i32)
            })
            .collect()
    };
    let mut taps = Vec::with_capacity(g.kh * g.kw);
    for i in 0..g.kh {
        let first = b.origin + g.tap(i, 0);
        if shared {
            let v = load(fb, first, reach + 1);
            taps.extend((0..g.kw).map(|t| gather(fb, &v, t * g.dw)));
        } else {
            for t in 0..g.kw {
                let v = load(fb, first + t * g.dw, b.rel[lanes - 1] + 1);
                taps.push(gather(fb, &v, 0));
            }
        }
    }
    taps
}

/// The centered sums of block `b` (two i16x8) requantized, each lane with its count's
/// multiplier.
fn requantized(
    fb: &mut FunctionBuilder,
    b: &Block,
    centered: [Value; 2],
    requants: &BTreeMap<i64, VectorRequant>,
) -> Value {
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
