//! Depthwise 2-D QConv (one input and one output channel per group) of any kernel size,
//! row stride and row dilation, column stride 1 or 2, on wide-vector micro-kernels
//! ([`ukernel::depthwise_plane`]): eight outputs per 256-bit vector, two taps per `vpmaddwd`
//! (`wide-depthwise`), or with VNNI at column stride 1 and weights that fit i8, four taps
//! of a kernel row per `vpdpbusd` (`wide-depthwise-vnni`: a 3 × 3 kernel is three products
//! per vector instead of six, and no widening).
//!
//! Per sample, channel by channel (a run-time loop, so code size does not grow with the
//! channel count; ranges of channels run on up to [`MAX_PARTS`] threads, each with its own
//! scratch):
//! 1. the input plane is copied with its padding ([`Padded`](super::planes::Padded)), one byte per pixel;
//! 2. one call of the micro-kernel computes, requantizes and stores the channel's plane,
//!    reading that padded plane directly: sixteen bytes widened to i16 are eight pairs of
//!    neighbouring columns, which are the taps `(kx, kx + 1)` of eight outputs at column
//!    stride 2, of eight every-other outputs at stride 1 (a vector at the next column gives
//!    the other eight). A kernel row with an odd number of taps pairs its last tap with a
//!    zero weight. There is no repacking: the earlier pair planes (two widened copies of
//!    every pixel) took twice as long to write as the products took to read them.
//!
//! The micro-kernel walks the outputs in one of two ways ([`Walk`]), whichever computes
//! fewer vectors: row by row, each row rounded up to whole vectors; or, at stride 1 × 1,
//! along the padded plane as if it were one long row (output `(y, x)` is at `y·wp + x`, its
//! taps at `ky·wp + kx` further), so that narrow planes (7 × 7) do not round each row up
//! to sixteen outputs: the `wp − ow` columns between rows are computed and dropped. Results
//! that are not in the output's layout go through a staging plane copied out afterwards.
//! The arithmetic is the interpreter's: `Σ x·(w − zw) + (bias − zx·Σ(w − zw))` in wrapping
//! i32 (see [`super::packing::packed_rows`]), then the channel's fixed-point requantization.

use super::conv2d::{ConvRequant, QConv2d};
use super::packing::packed_rows;
use super::planes::{copy_row, Fill};
use super::requant::ChannelTable;
use super::ukernel::{self, DepthwisePlane, Requantize, DEPTHWISE_VECTORS, LANES};
use super::{data_address, Kernel};
use crate::emit;
use cranelift_codegen::ir::{types, InstBuilder};

/// Parts (threads) a convolution's channels are split into at most: each has its own
/// scratch in the workspace.
const MAX_PARTS: usize = 4;

/// What one multiply-accumulate of this form costs in those of the dense forms, for the
/// split threshold ([`Kernel::parallel_for`] counts dense ones): a plane at a time with
/// padding copies and nine taps, MobileNetV2's depthwise layers run at ~15 GMAC/s on one
/// thread against 75–150 for its 1×1 layers, so at 7 × 7 (20–30 µs a call) they stayed
/// on one thread.
const MAC_COST: u64 = 6;

/// Bytes of one pair of i16 weights.
const PAIR: usize = 4;

/// Output positions the flat walk covers per micro-kernel iteration: one group of
/// [`DEPTHWISE_VECTORS`] vectors, each pair of them sixteen outputs.
const FLAT_RUN: usize = DEPTHWISE_VECTORS / 2 * 2 * LANES;

/// The convolution's shape when the node is a depthwise QConv (group = input channels =
/// output channels) of u8 activations into an 8-bit result, column stride 1 or 2 and no
/// column dilation; `None` otherwise.
fn geometry(k: &Kernel) -> Result<Option<QConv2d>, String> {
    Ok(QConv2d::of(k)?.filter(|q| q.depthwise() && (1..=2).contains(&q.sw) && q.dw == 1))
}

/// The groups of `width` taps (2: pairs, 4: quads), `(ky, kx)` with `kx` a multiple of
/// `width`: taps `kx..kx + width` of kernel row `ky` (zero weights past the row's end).
fn tap_groups(g: &QConv2d, width: usize) -> Vec<(usize, usize)> {
    (0..g.kh)
        .flat_map(|ky| (0..g.kw).step_by(width).map(move |kx| (ky, kx)))
        .collect()
}

/// How the micro-kernel walks a channel's outputs: the vectors of one iteration, and where
/// the results land.
struct Walk {
    /// Per iteration: (activation offset in the padded plane, result offset) of each vector.
    vectors: Vec<(usize, usize)>,
    /// Iterations, and the bytes the activation and result addresses advance per iteration.
    iterations: usize,
    x_stride: usize,
    out_stride: usize,
    /// Bytes between two output rows in the results, and the results' bytes.
    out_row: usize,
    out_bytes: usize,
}

impl Walk {
    /// Row by row: `rows_per_iter` output rows per iteration, each rounded up to whole
    /// vectors (pairs of vectors when they `interleave`: tap pairs at column stride 1).
    fn rows(g: &QConv2d, interleave: bool) -> Walk {
        let unit = if interleave { 2 * LANES } else { LANES };
        let row = g.ow.next_multiple_of(unit);
        let rows_per_iter = (DEPTHWISE_VECTORS * LANES / row).max(1);
        let iterations = g.oh.div_ceil(rows_per_iter);
        let vectors = (0..rows_per_iter)
            .flat_map(|r| (0..row / unit).map(move |u| (r, u * unit)))
            .flat_map(|(r, col)| {
                let (x, out) = (r * g.sh * g.wp + g.sw * col, r * row + col);
                let odd = interleave.then_some((x + 1, out));
                std::iter::once((x, out)).chain(odd)
            })
            .collect();
        Walk {
            vectors,
            iterations,
            x_stride: rows_per_iter * g.sh * g.wp,
            out_stride: rows_per_iter * row,
            out_row: row,
            out_bytes: iterations * rows_per_iter * row,
        }
    }

    /// Along the padded plane as one row (stride 1 × 1 only): [`FLAT_RUN`] outputs per
    /// iteration, output rows `wp` apart.
    fn flat(g: &QConv2d, interleave: bool) -> Walk {
        let n = (g.oh - 1) * g.wp + g.ow;
        let iterations = n.div_ceil(FLAT_RUN);
        let vectors = match interleave {
            true => (0..FLAT_RUN / (2 * LANES))
                .flat_map(|u| {
                    [
                        (2 * LANES * u, 2 * LANES * u),
                        (2 * LANES * u + 1, 2 * LANES * u),
                    ]
                })
                .collect(),
            false => (0..FLAT_RUN / LANES)
                .map(|u| (LANES * u, LANES * u))
                .collect(),
        };
        Walk {
            vectors,
            iterations,
            x_stride: FLAT_RUN,
            out_stride: FLAT_RUN,
            out_row: g.wp,
            out_bytes: iterations * FLAT_RUN,
        }
    }

    /// The walk that computes fewer vectors (rows on a tie: their results may go straight
    /// to the output).
    fn of(g: &QConv2d, interleave: bool) -> Walk {
        let rows = Walk::rows(g, interleave);
        if g.sw == 1 && g.sh == 1 {
            let flat = Walk::flat(g, interleave);
            if flat.computed() < rows.computed() {
                return flat;
            }
        }
        rows
    }

    fn computed(&self) -> usize {
        self.iterations * self.vectors.len()
    }

    /// Whether results go straight to the output plane (rows of exactly `ow`, nothing past
    /// the last).
    fn direct(&self, g: &QConv2d) -> bool {
        self.out_row == g.ow && self.out_bytes == g.oh * g.ow
    }

    /// One past the last byte of the padded plane any vector reads (`load` bytes from its
    /// farthest tap group).
    fn last_read(&self, pair_reach: usize, load: usize) -> usize {
        let last = self.vectors.iter().map(|&(x, _)| x).max().unwrap_or(0);
        (self.iterations - 1) * self.x_stride + last + pair_reach + load
    }
}

/// Emits the convolution in this form and returns true when it applies (a depthwise QConv
/// [`geometry`] accepts, constant weights, wide micro-kernels on the target, every
/// channel's requantization shift at least 32); false leaves it to the other forms.
pub(super) fn conv(k: &mut Kernel) -> Result<bool, String> {
    let Some(isa) = k.wide else { return Ok(false) };
    let Some(g) = geometry(k)? else {
        return Ok(false);
    };
    let taps = g.taps();
    let Some(packed) = packed_rows(k, g.c, taps, |c, t| c * taps + t)? else {
        return Ok(false);
    };
    let Some(ConvRequant { zx, rq, signed }) = g.requant(k)? else {
        return Ok(false);
    };
    let Some(records) = ChannelTable::bytes(&rq, &packed.folded) else {
        return Ok(false);
    };
    // VNNI at column stride 1 (or 2 with AVX-512 VBMI's byte permutation), weights that fit
    // i8: taps in quads of eight outputs; else pairs (interleaved even and odd outputs at
    // column stride 1).
    let stride_two = g.sw == 2 && k.target_has("has_avx512vbmi") && k.target_has("has_avx512vl");
    let quads = isa.has_quads() && (g.sw == 1 || stride_two) && packed.fits_i8();
    let stride_two = stride_two && quads;
    let width = if quads { 4 } else { 2 };
    let pairs = tap_groups(&g, width);
    let walk = Walk::of(&g, g.sw == 1 && !quads);
    // Weights: per channel, each group's taps as i16 pairs or i8 quads (0 past the row's
    // last tap).
    let tap = |c: usize, ky: usize, kx: usize| {
        if kx < g.kw {
            packed.rows[c][ky * g.kw + kx]
        } else {
            0
        }
    };
    let mut weights = Vec::with_capacity(g.c * pairs.len() * PAIR);
    for c in 0..g.c {
        for &(ky, kx) in &pairs {
            for t in kx..kx + width {
                match quads {
                    true => weights.push(tap(c, ky, t) as i8 as u8),
                    false => weights.extend_from_slice(&tap(c, ky, t).to_le_bytes()),
                }
            }
        }
    }
    let offset = |v: usize| i32::try_from(v).map_err(|e| e.to_string());
    let pair_at = |&(ky, kx): &(usize, usize)| ky * g.dh * g.wp + kx;
    let pair_offsets = pairs
        .iter()
        .map(|p| offset(pair_at(p)))
        .collect::<Result<Vec<_>, _>>()?;
    let vectors = walk
        .vectors
        .iter()
        .map(|&(x, out)| Ok((offset(x)?, offset(out)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let direct = walk.direct(&g);
    let plane = DepthwisePlane {
        pairs: pair_offsets,
        groups: vectors
            .chunks(DEPTHWISE_VECTORS)
            .map(<[_]>::to_vec)
            .collect(),
        quads,
        stride_two,
        interleave: g.sw == 1 && !quads,
        x_stride: offset(walk.x_stride)?,
        out_stride: offset(walk.out_stride)?,
        iterations: u32::try_from(walk.iterations).map_err(|e| e.to_string())?,
        store: Requantize {
            zero_point: rq.zero_point,
            bounds: (rq.bounds.0 as i32, rq.bounds.1 as i32),
            signed,
            plane: 0,
            per_lane: false,
        },
    };
    let kernel = k.machine_code(&ukernel::depthwise_plane(&plane, isa)?, 4)?;
    k.form = if quads {
        "wide-depthwise-vnni"
    } else {
        "wide-depthwise"
    };
    let wptr = k.data_object(weights, 64)?;
    let table = k.data_object(records, 64)?;
    // Scratch of one part (thread): its padded plane (with room for the micro-kernel's
    // reads past it: they meet zero weights or results that are dropped) | staging.
    let padded = g.padded(1);
    let reach = pairs.iter().map(pair_at).max().unwrap_or(0);
    let staging_at = padded
        .bytes()
        .max(walk.last_read(reach, if stride_two { 32 } else { 16 }))
        .next_multiple_of(64);
    let part_bytes = (staging_at + if direct { 0 } else { walk.out_bytes }).next_multiple_of(64);
    let zx = zx as u8;
    let out_plane = (g.oh * g.ow) as i64;
    let out_row = walk.out_row as i64;
    // Channels `begin..end` of one sample (context: input, output, scratch), in the scratch
    // of part `part`: pad, compute, copy out.
    let task = k.task(|fb, module, [ctx, begin, end, part]| {
        let x = fb.ins().load(types::I64, emit::mem(), ctx, 0);
        let y = fb.ins().load(types::I64, emit::mem(), ctx, 8);
        let ws = fb.ins().load(types::I64, emit::mem(), ctx, 16);
        let (wptr, table) = (
            data_address(fb, module, wptr),
            data_address(fb, module, table),
        );
        let kernel = module.declare_func_in_func(kernel, fb.func);
        let scratch = emit::addr(fb, ws, part, part_bytes as i64);
        emit::for_range(fb, begin, end, 1, |fb, c| {
            let src = emit::addr(fb, x, c, (g.h * g.w) as i64);
            padded.emit_plane(fb, src, scratch, Fill::U8(zx));
            let w = emit::addr(fb, wptr, c, (pairs.len() * PAIR) as i64);
            let record = emit::addr(fb, table, c, ChannelTable::RECORD as i64);
            let y_plane = emit::addr(fb, y, c, out_plane);
            let out = if direct {
                y_plane
            } else {
                fb.ins().iadd_imm_s(scratch, staging_at as i64)
            };
            fb.ins().call(kernel, &[scratch, w, out, record]);
            if !direct {
                emit::for_count(fb, g.oh as i64, |fb, oy| {
                    let from = emit::addr(fb, out, oy, out_row);
                    let to = emit::addr(fb, y_plane, oy, g.ow as i64);
                    copy_row(fb, from, to, g.ow);
                });
            }
        });
        Ok(())
    })?;
    let ws = k.workspace(64 + MAX_PARTS * part_bytes);
    let (x, yop) = (k.input(0)?, k.output(0));
    let (xptr, yptr) = (x.ptr, yop.ptr);
    let samples = k.input_samples()?;
    let context = k.fb.ins().iadd_imm_s(ws, (MAX_PARTS * part_bytes) as i64);
    k.for_each(samples, |k, n| {
        let fb = &mut *k.fb;
        let xn = emit::addr(fb, xptr, n, (g.c * g.h * g.w) as i64);
        let yn = emit::addr(fb, yptr, n, g.c as i64 * out_plane);
        for (i, v) in [xn, yn, ws].into_iter().enumerate() {
            fb.ins().store(emit::mem(), v, context, (8 * i) as i32);
        }
        k.parallel_for(
            task,
            context,
            g.c as i64,
            MAX_PARTS,
            (g.c * g.oh * g.ow * taps) as u64 * MAC_COST,
        )
    })?;
    Ok(true)
}
