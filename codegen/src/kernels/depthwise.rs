//! Depthwise 2-D QConv (one input and one output channel per group) of any kernel size,
//! row stride and row dilation, column stride 1 or 2, on wide-vector micro-kernels
//! ([`ukernel::depthwise_plane`]): eight outputs per 256-bit vector, two taps per `vpmaddwd`.
//!
//! Per sample, channel by channel (a run-time loop, so code size does not grow with the
//! channel count; ranges of channels run on up to [`MAX_PARTS`] threads, each with its own
//! scratch):
//! 1. the input plane is copied with its padding ([`Padded`]) and repacked as pairs of taps widened to i16: for column phase `p`,
//!    `R_p[y][j] = (X[y][s·j + p], X[y][s·j + p + s])` — the two columns that kernel taps
//!    `kx` and `kx + s` (both ≡ p mod s) read for output column `j − t` — so that for each
//!    kernel row and each pair of taps of one phase, the activations of eight neighbouring
//!    outputs are one 32-byte load at a compile-time offset (a kernel row with an odd number
//!    of taps in a phase pairs its last tap with a zero weight);
//! 2. one call of the micro-kernel computes, requantizes and stores the channel's plane.
//!
//! Rows whose width is not a multiple of eight, or row counts that do not fill the
//! micro-kernel's iterations, go through a staging plane copied out afterwards. The
//! arithmetic is the interpreter's: `Σ x·(w − zw) + (bias − zx·Σ(w − zw))` in wrapping i32
//! (see [`super::packing::packed_rows`]), then the channel's fixed-point requantization.

use super::packing::packed_rows;
use super::planes::{copy_row, Padded};
use super::requant::ChannelTable;
use super::ukernel::{self, DepthwisePlane, Requantize, DEPTHWISE_VECTORS, LANES};
use super::{data_address, Kernel};
use crate::emit;
use cranelift_codegen::ir::{types, ConstantData, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::fixed_point::Requant;
use qlift_ir::{DType, OpKind};

/// Parts (threads) a convolution's channels are split into at most: each has its own
/// scratch in the workspace.
const MAX_PARTS: usize = 4;

/// Bytes of one pair of i16 activations.
const PAIR: usize = 4;

/// The convolution's shape.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    pt: usize,
    pl: usize,
    hp: usize,
    wp: usize,
}

impl Geometry {
    /// The geometry of a depthwise QConv (group = input channels = output channels) of u8
    /// activations into an 8-bit result, column stride 1 or 2 and no column dilation.
    fn of(k: &Kernel) -> Result<Option<Geometry>, String> {
        if k.op.kind != OpKind::QConv {
            return Ok(None);
        }
        let (x, w, y) = (k.input(0)?, k.input(1)?, k.output(0));
        let (xd, wd, yd) = (x.dims(), w.dims(), y.dims());
        if xd.len() != 4
            || wd.len() != 4
            || yd.len() != 4
            || x.ty.dtype != DType::U8
            || !matches!(y.ty.dtype, DType::U8 | DType::I8)
        {
            return Ok(None);
        }
        let attrs = &k.op.attrs;
        let (strides, dilations, pads) = (
            attrs.usizes("strides")?,
            attrs.usizes("dilations")?,
            attrs.usizes("pads")?,
        );
        if strides.len() != 2 || dilations.len() != 2 || pads.len() != 4 {
            return Ok(None);
        }
        let c = xd[1];
        let depthwise = usize::try_from(attrs.int("group")?).ok() == Some(c)
            && wd[0] == c
            && wd[1] == 1
            && yd[1] == c;
        let g = Geometry {
            c,
            h: xd[2],
            w: xd[3],
            kh: wd[2],
            kw: wd[3],
            oh: yd[2],
            ow: yd[3],
            sh: strides[0],
            sw: strides[1],
            dh: dilations[0],
            pt: pads[0],
            pl: pads[1],
            hp: xd[2] + pads[0] + pads[2],
            wp: xd[3] + pads[1] + pads[3],
        };
        let sane = depthwise
            && c > 0
            && g.kh > 0
            && g.kw > 0
            && g.oh > 0
            && g.ow > 0
            && g.sh >= 1
            && g.dh >= 1
            && (1..=2).contains(&g.sw)
            && dilations[1] == 1;
        let fits = sane
            && (g.oh - 1) * g.sh + (g.kh - 1) * g.dh < g.hp
            && (g.ow - 1) * g.sw + g.kw - 1 < g.wp;
        Ok(fits.then_some(g))
    }

    /// The tap pairs of each kernel row, by phase: (kernel row, phase, first tap's index
    /// within the phase), in weight order.
    fn pairs(&self) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        for ky in 0..self.kh {
            for p in 0..self.sw.min(self.kw) {
                let taps = (self.kw - p).div_ceil(self.sw);
                out.extend((0..taps.div_ceil(2)).map(|i| (ky, p, 2 * i)));
            }
        }
        out
    }
}

/// How the micro-kernel walks a channel's plane, and the pair planes it reads.
struct Layout {
    /// Output columns rounded up to whole vectors, and vectors per output row.
    ow8: usize,
    /// Output rows per micro-kernel iteration, iterations, and the rows they cover.
    rows_per_iter: usize,
    iterations: usize,
    oh_pad: usize,
    /// Rows and columns (pairs, a multiple of [`LANES`]) of each phase's pair plane.
    rows: usize,
    jq: usize,
}

impl Layout {
    fn of(g: &Geometry, pairs: &[(usize, usize, usize)]) -> Layout {
        let ow8 = g.ow.next_multiple_of(LANES);
        let per_row = ow8 / LANES;
        let rows_per_iter = (DEPTHWISE_VECTORS / per_row).max(1);
        let iterations = g.oh.div_ceil(rows_per_iter);
        let oh_pad = iterations * rows_per_iter;
        let reach = pairs.iter().map(|&(_, _, t)| t + 1).max().unwrap_or(1);
        Layout {
            ow8,
            rows_per_iter,
            iterations,
            oh_pad,
            rows: (oh_pad - 1) * g.sh + (g.kh - 1) * g.dh + 1,
            jq: (ow8 + reach).next_multiple_of(LANES),
        }
    }

    /// Bytes of one phase's pair plane.
    fn phase_bytes(&self) -> usize {
        self.rows * self.jq * PAIR
    }

    /// Whether results go straight to the output plane.
    fn direct(&self, g: &Geometry) -> bool {
        g.ow == self.ow8 && g.oh == self.oh_pad
    }
}

/// Emits the convolution in this form and returns true when it applies (a depthwise QConv
/// [`Geometry::of`] accepts, constant weights, wide micro-kernels on the target, every
/// channel's requantization shift at least 32); false leaves it to the other forms.
pub(super) fn conv(k: &mut Kernel) -> Result<bool, String> {
    let Some(isa) = k.wide else { return Ok(false) };
    if !k.has_byte_shuffle() {
        return Ok(false);
    }
    let Some(g) = Geometry::of(k)? else {
        return Ok(false);
    };
    let taps = g.kh * g.kw;
    let Some(packed) = packed_rows(k, g.c, taps, |c, t| c * taps + t)? else {
        return Ok(false);
    };
    let (Some(xq), Some(wq)) = (k.input(0)?.ty.quant.clone(), k.input(1)?.ty.quant.clone()) else {
        return Ok(false);
    };
    let y = k.output(0).ty.clone();
    let rq = Requant::for_product(&xq, &wq, g.c, &y, k.op.fused_activation()?)?;
    let Some(records) = ChannelTable::bytes(&rq, &packed.folded) else {
        return Ok(false);
    };
    let pairs = g.pairs();
    let l = Layout::of(&g, &pairs);
    // Weights: per channel, each pair's two taps as i16 (0 past the row's last tap).
    let tap = |c: usize, ky: usize, kx: usize| {
        if kx < g.kw {
            packed.rows[c][ky * g.kw + kx]
        } else {
            0
        }
    };
    let mut weights = Vec::with_capacity(g.c * pairs.len() * PAIR);
    for c in 0..g.c {
        for &(ky, p, t) in &pairs {
            for kx in [p + g.sw * t, p + g.sw * (t + 1)] {
                weights.extend_from_slice(&tap(c, ky, kx).to_le_bytes());
            }
        }
    }
    let offset = |v: usize| i32::try_from(v).map_err(|e| e.to_string());
    let pair_offsets = pairs
        .iter()
        .map(|&(ky, p, t)| offset(((p * l.rows + ky * g.dh) * l.jq + t) * PAIR))
        .collect::<Result<Vec<_>, _>>()?;
    // One iteration: `rows_per_iter` output rows, in groups of at most DEPTHWISE_VECTORS.
    let vectors: Vec<(i32, i32)> = (0..l.rows_per_iter)
        .flat_map(|r| (0..l.ow8 / LANES).map(move |v| (r, v * LANES)))
        .map(|(r, col)| {
            Ok((
                offset((r * g.sh * l.jq + col) * PAIR)?,
                offset(r * l.ow8 + col)?,
            ))
        })
        .collect::<Result<_, String>>()?;
    let direct = l.direct(&g);
    let plane = DepthwisePlane {
        pairs: pair_offsets,
        groups: vectors
            .chunks(DEPTHWISE_VECTORS)
            .map(<[_]>::to_vec)
            .collect(),
        x_stride: offset(l.rows_per_iter * g.sh * l.jq * PAIR)?,
        out_stride: offset(l.rows_per_iter * l.ow8)?,
        iterations: u32::try_from(l.iterations).map_err(|e| e.to_string())?,
        store: Requantize {
            zero_point: rq.zero_point,
            bounds: (rq.bounds.0 as i32, rq.bounds.1 as i32),
            signed: y.dtype == DType::I8,
            plane: 0,
            per_lane: false,
        },
    };
    let kernel = k.machine_code(&ukernel::depthwise_plane(&plane, isa)?, 4)?;
    k.form = "wide-depthwise";
    let wptr = k.data_object(weights, 64)?;
    let table = k.data_object(records, 64)?;
    // Scratch of one part (thread): its padded u8 plane (with room for the repacking's
    // over-reads) | pair planes | staging plane.
    let padded = Padded {
        planes: 1,
        h: g.h,
        w: g.w,
        hp: g.hp,
        wp: g.wp,
        top: g.pt,
        left: g.pl,
    };
    let last_read = (l.rows - 1) * g.wp + g.sw * (l.jq - LANES) + 32;
    let pairs_at = padded.bytes().max(last_read).next_multiple_of(64);
    let staging_at = pairs_at + (g.sw * l.phase_bytes()).next_multiple_of(64);
    let part_bytes = (staging_at + if direct { 0 } else { l.oh_pad * l.ow8 }).next_multiple_of(64);
    let zx = xq.channel(0).1 as u8;
    let out_plane = (g.oh * g.ow) as i64;
    // Channels `begin..end` of one sample (context: input, output, scratch), in the scratch
    // of part `part`: pad, repack, compute, copy out.
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
        let pair_planes = fb.ins().iadd_imm_s(scratch, pairs_at as i64);
        emit::for_range(fb, begin, end, 1, |fb, c| {
            let src = emit::addr(fb, x, c, (g.h * g.w) as i64);
            padded.emit_plane(fb, src, scratch, zx);
            repack(fb, &g, &l, scratch, pair_planes);
            let w = emit::addr(fb, wptr, c, (pairs.len() * PAIR) as i64);
            let record = emit::addr(fb, table, c, ChannelTable::RECORD as i64);
            let y_plane = emit::addr(fb, y, c, out_plane);
            let out = if direct {
                y_plane
            } else {
                fb.ins().iadd_imm_s(scratch, staging_at as i64)
            };
            fb.ins().call(kernel, &[pair_planes, w, out, record]);
            if !direct {
                emit::for_count(fb, g.oh as i64, |fb, oy| {
                    let from = emit::addr(fb, out, oy, l.ow8 as i64);
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
    let samples = if x.batched() {
        k.batch
    } else {
        emit::iconst(k.fb, x.dims()[0] as i64)
    };
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
            (g.c * g.oh * g.ow * taps) as u64,
        )
    })?;
    Ok(true)
}

/// Repacks one padded u8 plane at `src` into the pair planes at `dst` (see the module
/// docs): eight pairs a step from two 16-byte loads, one byte shuffle and two widenings.
fn repack(fb: &mut FunctionBuilder, g: &Geometry, l: &Layout, src: Value, dst: Value) {
    for p in 0..g.sw {
        // Byte 2i: column s·i + p; byte 2i + 1: column s·i + p + s (of the 32 loaded).
        let mask: Vec<u8> = (0..LANES)
            .flat_map(|i| [(g.sw * i + p) as u8, (g.sw * i + p + g.sw) as u8])
            .collect();
        let mask = fb.func.dfg.immediates.push(ConstantData::from(mask));
        let phase = fb.ins().iadd_imm_s(dst, (p * l.phase_bytes()) as i64);
        emit::for_count(fb, l.rows as i64, |fb, y| {
            let row = emit::addr(fb, src, y, g.wp as i64);
            let out_row = emit::addr(fb, phase, y, (l.jq * PAIR) as i64);
            emit::for_count(fb, (l.jq / LANES) as i64, |fb, jc| {
                let at = emit::addr(fb, row, jc, (LANES * g.sw) as i64);
                let lo = fb.ins().load(types::I8X16, emit::mem(), at, 0);
                let hi = fb.ins().load(types::I8X16, emit::mem(), at, 16);
                let bytes = fb.ins().shuffle(lo, hi, mask);
                let (a, b) = (fb.ins().uwiden_low(bytes), fb.ins().uwiden_high(bytes));
                let to = emit::addr(fb, out_row, jc, (LANES * PAIR) as i64);
                fb.ins().store(emit::mem(), a, to, 0);
                fb.ins().store(emit::mem(), b, to, 16);
            });
        });
    }
}
