//! Dense 2-D QConv (one group, any kernel size, strides 1–2, any dilation and padding) on
//! wide-vector micro-kernels ([`super::ukernel`]): 256-bit register tiles of six output
//! channels × sixteen output positions, exact in i32.
//!
//! Per sample:
//! 1. the input planes are copied with their padding (the input zero point) into the
//!    workspace ([`Padded`](super::planes::Padded));
//! 2. they are repacked as pairs of channels widened to i16 and split into the stride's
//!    phases (`[pair][row phase][column phase][row][column][2]`), so that for the taps of
//!    any kernel position the activations of eight neighbouring outputs of one row are one
//!    contiguous 32-byte load at a compile-time offset (no im2col);
//! 3. for each tile (two vectors of eight outputs × up to six output channels) one call of
//!    the micro-kernel sums every (channel pair, tap) step with `vpmaddwd` against weight
//!    pairs packed at compile time, then requantizes its accumulators in ymm registers
//!    (per-channel parameters read from a table, so code size does not grow with the
//!    channel count) and stores eight results per vector.
//!
//! With VNNI (`wide-direct-vnni`), u8 activations against weights that fit i8 after their
//! zero point are repacked as quads of channels' bytes instead (`[quad][phase]…[4]`,
//! [`repack_quads`], no widening; the same 4 bytes per position), the weights as quads of
//! i8, and each step is one `vpdpbusd` of the activation vector (u8) by the broadcast
//! weights (i8): twice the products per instruction. Planes past the last channel are
//! read (within the workspace) and multiplied by zero weights.
//!
//! int16 layers run the same way: their i16 planes are padded with the i16 zero point and
//! repacked as pairs with no widening ([`repack_i16`]), and i16 results are stored sixteen
//! to a row by the micro-kernel. A convolution along one axis (`[C, H, 1]` planes, `kh × 1`
//! kernels) is taken as its transpose (`[C, 1, H]`, the same memory), so that its outputs
//! fill the vectors' lanes instead of one lane in eight.
//!
//! Output rows whose width is not a multiple of eight (or an odd number of vectors) are
//! computed into a staging area with rows padded to whole vectors and copied out, so the
//! tiles never store past a row. The arithmetic is the interpreter's, as in the other forms:
//! `Σ x·(w − zw) + (bias − zx·Σ(w − zw))` in wrapping i32 (see
//! [`super::packing::packed_rows`]), then the fixed-point requantization of each channel.

use super::conv2d::{ConvRequant, QConv2d};
use super::packing::packed_rows;
use super::planes::{copy_row, Fill};
use super::requant::ChannelTable;
use super::ukernel::{Operands, PairTile, Requantize, Store, LANES, MAX_ROWS, VECTORS};
use super::{data_address, Kernel};
use crate::emit;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, ConstantData, FuncRef, Immediate, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::DType;

/// Steps (channel pair × tap) per micro-kernel loop iteration at least: 1×1 kernels take
/// several channel pairs per iteration so the loop's own instructions stay a small part.
const MIN_STEPS: usize = 4;

/// Bytes of one step's activations at one position: a pair of channels as i16, or a quad
/// of channels as u8.
const PAIR: usize = 4;

/// The convolution's shape when the node is a dense 2-D QConv of u8 or i16 activations into
/// an 8-bit or i16 result with a column stride of 1 or 2 (after transposing a convolution
/// along rows only; [`flattened`] when it is pointwise); `None` otherwise.
fn geometry(k: &Kernel) -> Result<Option<QConv2d>, String> {
    // Single columns everywhere (no column padding): the planes are rows.
    let rows_only = |q: &QConv2d| q.w == 1 && q.kw == 1 && q.ow == 1 && q.wp == 1;
    Ok(QConv2d::of_wide(k)?
        .map(|q| if rows_only(&q) { q.transposed() } else { q })
        .filter(|q| q.group == 1 && (1..=2).contains(&q.sw))
        .map(flattened))
}

/// A 1×1, stride-1, unpadded convolution does not see the planes' shape: it is the same
/// convolution on planes of one row of `h·w`, which fill whole vectors (14 × 14 in rows
/// of 16 computes 224 outputs a plane, in one row 200) and write the output directly
/// when `h·w` is a multiple of 16 (28 × 28, 56 × 56). The padded copy is the same bytes.
fn flattened(g: QConv2d) -> QConv2d {
    let pointwise = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1;
    if !pointwise || g.hp != g.h || g.wp != g.w {
        return g;
    }
    let n = g.h * g.w;
    QConv2d {
        h: 1,
        w: n,
        oh: 1,
        ow: n,
        hp: 1,
        wp: n,
        ..g
    }
}

/// Where the packed activations live and how the tiles walk them.
struct Layout {
    /// Input channels per step: 2 (i16 pairs) or 4 (u8 quads, VNNI).
    group: usize,
    /// Channel groups (pairs or quads; "pairs" below) holding input channels, and packed (a
    /// multiple of `unroll`).
    used_pairs: usize,
    pairs: usize,
    /// Channel groups per micro-kernel iteration.
    unroll: usize,
    /// Rows and columns of one phase plane (columns a multiple of [`LANES`]).
    hq: usize,
    wq: usize,
    /// Output columns rounded up to whole vectors; vectors (of all rows), and rounded up to
    /// whole tiles.
    ow8: usize,
    vectors: usize,
    vectors_even: usize,
    /// Bytes of the padded input planes (with room for every over-read of the repacking).
    in_bytes: usize,
}

impl Layout {
    /// The layout for input elements of `elem` bytes (1: u8, 2: i16), `group` channels per
    /// step (2 or 4).
    fn of(g: &QConv2d, elem: usize, group: usize) -> Layout {
        let unroll = MIN_STEPS.div_ceil(g.taps());
        let used_pairs = g.c.div_ceil(group);
        let ow8 = g.ow.next_multiple_of(LANES);
        let hq = g.hp.div_ceil(g.sh).max(g.oh + (g.kh - 1) * g.dh / g.sh);
        let wq =
            g.wp.div_ceil(g.sw)
                .max(ow8 + (g.kw - 1) * g.dw / g.sw)
                .next_multiple_of(LANES);
        let vectors = g.oh * ow8 / LANES;
        // The repacking reads 16 bytes at row `y·sh + py`, column `x·sw` of plane
        // group·pair + group − 1 (i16: 16 bytes from each half's first column, at most
        // `sw · 4 + 1` past it). Planes past the channels are read, never used: their
        // weights are zero.
        let last_column = (wq - LANES) * g.sw;
        let last_read =
            ((group * used_pairs - 1) * g.hp * g.wp + (hq * g.sh - 1) * g.wp + last_column) * elem
                + 16
                + (elem - 1) * 2 * (4 * g.sw + 1);
        let padded = g.padded(g.c);
        Layout {
            group,
            used_pairs,
            pairs: used_pairs.next_multiple_of(unroll),
            unroll,
            hq,
            wq,
            ow8,
            vectors,
            vectors_even: vectors.next_multiple_of(VECTORS),
            in_bytes: (padded.bytes() * elem).max(last_read).next_multiple_of(64),
        }
    }

    /// Bytes of one channel pair's phase planes.
    fn pair_bytes(&self, g: &QConv2d) -> usize {
        g.sh * g.sw * self.hq * self.wq * PAIR
    }

    /// Byte offset of tap (ky, kx) in the packed activations, from an output's position.
    fn tap(&self, g: &QConv2d, ky: usize, kx: usize) -> usize {
        let (py, px) = (ky * g.dh % g.sh, kx * g.dw % g.sw);
        (((py * g.sw + px) * self.hq + ky * g.dh / g.sh) * self.wq + kx * g.dw / g.sw) * PAIR
    }

    /// Whether results go straight to the output (whole vectors per row, whole tiles).
    fn direct(&self, g: &QConv2d) -> bool {
        g.ow == self.ow8 && self.vectors == self.vectors_even
    }
}

/// The share of the lanes this form computes that are results (the vectors of eight along
/// each output row, rounded up to whole tiles), or `None` when its geometry does not apply:
/// the dispatcher compares it with the pixel-rows form's.
pub(super) fn lane_use(k: &Kernel) -> Result<Option<f64>, String> {
    Ok(geometry(k)?.map(|g| {
        let l = Layout::of(&g, 1, 4);
        (g.oh * g.ow) as f64 / (l.vectors_even * LANES) as f64
    }))
}

/// Emits the convolution in this form and returns true when it applies (a dense QConv
/// [`geometry`] accepts, constant weights, wide micro-kernels on the target, and every
/// channel's requantization shift at least 32); false leaves it to the other forms.
/// (Its weights pack as `[m][c][kh][kw]` whether or not the geometry is transposed: with
/// one kernel column, tap `ky` is tap `kx` of the transpose.)
pub(super) fn conv(k: &mut Kernel) -> Result<bool, String> {
    let Some(isa) = k.wide else { return Ok(false) };
    if !k.has_byte_shuffle() {
        return Ok(false);
    }
    let Some(g) = geometry(k)? else {
        return Ok(false);
    };
    let taps = g.taps();
    let Some(packed) = packed_rows(k, g.m, g.c * taps, |c, t| c * g.c * taps + t)? else {
        return Ok(false);
    };
    let Some(ConvRequant { zx, rq, signed }) = g.requant(k)? else {
        return Ok(false);
    };
    let Some(records) = ChannelTable::bytes(&rq, &packed.folded) else {
        return Ok(false);
    };
    let sixteen_in = k.input(0)?.ty.dtype == DType::I16;
    let (in_elem, out_elem) = (
        if sixteen_in { 2 } else { 1 },
        if k.output(0).ty.dtype == DType::I16 {
            2
        } else {
            1
        },
    );
    // u8 activations against weights that fit i8: quads of channels on `vpdpbusd`.
    let quads = isa.has_quads() && !sixteen_in && packed.fits_i8();
    let l = Layout::of(&g, in_elem, if quads { 4 } else { 2 });
    let pair_bytes = l.pair_bytes(&g);
    // Micro-kernel steps: `unroll` channel pairs × the taps, at compile-time offsets.
    let mut offsets = Vec::with_capacity(l.unroll * taps);
    for u in 0..l.unroll {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                offsets.push(
                    i32::try_from(u * pair_bytes + l.tap(&g, ky, kx)).map_err(|e| e.to_string())?,
                );
            }
        }
    }
    let x_stride = i32::try_from(l.unroll * pair_bytes).map_err(|e| e.to_string())?;
    let iterations = u32::try_from(l.pairs / l.unroll).map_err(|e| e.to_string())?;
    // Six rows, not AVX-512's eight ([`ukernel::max_rows`]): eight measured 2–9 % slower on
    // most of MobileNetV2's 1×1 layers (minimum of 12 runs each), while the matrix product
    // at batch 8, which then streams its weights once instead of twice, gains 18 %.
    let rows = MAX_ROWS.min(g.m);
    let (full, tail) = (g.m / rows, g.m % rows);
    let l_direct = l.direct(&g);
    let out_plane = if l_direct {
        g.oh * g.ow
    } else {
        l.vectors_even * LANES
    };
    let bounds = (rq.bounds.0 as i32, rq.bounds.1 as i32);
    let store = Requantize {
        zero_point: rq.zero_point,
        bounds,
        signed,
        plane: i32::try_from(out_plane * out_elem).map_err(|e| e.to_string())?,
        per_lane: false,
    };
    let tile = |rows: usize| PairTile {
        rows,
        offsets: offsets.clone(),
        x_stride,
        iterations,
        store: if out_elem == 2 {
            Store::RequantizeI16(store)
        } else {
            Store::Requantize(store)
        },
        row_stride: None,
        operands: match quads {
            true => Operands::Quads {
                unsigned_broadcast: false,
            },
            false => Operands::Pairs,
        },
    };
    let (main, tail_kernel) = k.pair_tiles(isa, rows, tail, tile)?;
    k.form = if quads {
        "wide-direct-vnni"
    } else {
        "wide-direct"
    };
    // Weights: block of `rows` channels from c0, [pair][tap][row] as i16 pairs or i8 quads.
    let weight = |c: usize, ci: usize, t: usize| {
        if ci < g.c {
            packed.rows[c][ci * taps + t]
        } else {
            0
        }
    };
    let mut weights = Vec::with_capacity(g.m * l.pairs * taps * PAIR);
    for (c0, n) in (0..full)
        .map(|b| (b * rows, rows))
        .chain((tail > 0).then_some((full * rows, tail)))
    {
        for p in 0..l.pairs {
            for t in 0..taps {
                for c in c0..c0 + n {
                    for ci in l.group * p..l.group * (p + 1) {
                        let w = weight(c, ci, t);
                        match quads {
                            true => weights.push(w as i8 as u8),
                            false => weights.extend_from_slice(&w.to_le_bytes()),
                        }
                    }
                }
            }
        }
    }
    let block_bytes = (l.pairs * taps * rows * PAIR) as i64;
    let wptr = k.data_object(weights, 64)?;
    let params = k.data_object(records, 64)?;
    // Activation offset of each vector (output row, column block) in the packed planes; a
    // tile's second vector past the last repeats it.
    let vector_offsets = (0..l.vectors_even).map(|i| {
        let i = i.min(l.vectors - 1);
        let (oy, col) = (i / (l.ow8 / LANES), i % (l.ow8 / LANES) * LANES);
        (((oy * l.wq + col) * PAIR) as i32).to_le_bytes()
    });
    let vector_table = k.data_object(vector_offsets.flatten().collect(), 64)?;
    // Workspace: padded input planes | packed pairs | the tiles' context | staging (when not
    // direct).
    let xp_at = l.in_bytes;
    let context_at = xp_at + (l.pairs * pair_bytes).next_multiple_of(64);
    let staging_at = context_at + 64;
    let ws_bytes = staging_at
        + if l_direct {
            0
        } else {
            g.m * out_plane * out_elem
        };
    let weights_outer = g.m * l.pairs * taps * PAIR > l.pairs * pair_bytes;
    let tiles = (l.vectors_even / VECTORS) as i64;
    // The tiles as a task over one dimension: blocks of channels when the weights are larger
    // than the packed activations (each block's weights stay in cache across its tiles),
    // else tiles (each tile's activations stay in cache across the blocks). Each index writes
    // its own results, so ranges of it may run on different threads.
    let blocks = full + usize::from(tail > 0);
    let count = if weights_outer { blocks as i64 } else { tiles };
    let task = k.task(|fb, module, [ctx, begin, end, _]| {
        let xp = fb.ins().load(types::I64, emit::mem(), ctx, 0);
        let out = fb.ins().load(types::I64, emit::mem(), ctx, 8);
        let (wptr, params, vector_table) = (
            data_address(fb, module, wptr),
            data_address(fb, module, params),
            data_address(fb, module, vector_table),
        );
        let main = module.declare_func_in_func(main, fb.func);
        let tail_kernel = tail_kernel.map(|f| module.declare_func_in_func(f, fb.func));
        // One tile: vectors 2t and 2t + 1, channels c0.. of the block whose weights are at w.
        let tile = |fb: &mut FunctionBuilder, t: Value, kernel: FuncRef, c0: Value, w: Value| {
            let at = fb.ins().imul_imm_s(t, (VECTORS * 4) as i64);
            let at = fb.ins().iadd(vector_table, at);
            let xs: Vec<Value> = (0..VECTORS)
                .map(|v| {
                    let off = fb
                        .ins()
                        .load(types::I32, emit::constant_mem(), at, (4 * v) as i32);
                    let off = fb.ins().sextend(types::I64, off);
                    fb.ins().iadd(xp, off)
                })
                .collect();
            // The tile's first result of channel c0, and c0's requantization record.
            let first = fb.ins().imul_imm_s(t, (VECTORS * LANES * out_elem) as i64);
            let first = fb.ins().iadd(out, first);
            let first = emit::addr(fb, first, c0, (out_plane * out_elem) as i64);
            let records = emit::addr(fb, params, c0, ChannelTable::RECORD as i64);
            fb.ins().call(kernel, &[xs[0], xs[1], w, first, records]);
        };
        let block = |fb: &mut FunctionBuilder, b: Value, t: Value| {
            let c0 = fb.ins().imul_imm_s(b, rows as i64);
            let w = emit::addr(fb, wptr, b, block_bytes);
            tile(fb, t, main, c0, w);
        };
        let tail_block = |fb: &mut FunctionBuilder, t: Value| {
            if let Some(kernel) = tail_kernel {
                let c0 = emit::iconst(fb, (full * rows) as i64);
                let w = fb.ins().iadd_imm_s(wptr, full as i64 * block_bytes);
                tile(fb, t, kernel, c0, w);
            }
        };
        emit::for_range(fb, begin, end, 1, |fb, i| {
            if weights_outer {
                // Block i: the full blocks, then the tail block (index `full`).
                let is_full = fb.ins().icmp_imm_s(IntCC::SignedLessThan, i, full as i64);
                let (full_block, tail_only, done) =
                    (fb.create_block(), fb.create_block(), fb.create_block());
                fb.ins().brif(is_full, full_block, &[], tail_only, &[]);
                fb.switch_to_block(full_block);
                emit::for_count(fb, tiles, |fb, t| block(fb, i, t));
                fb.ins().jump(done, &[]);
                fb.switch_to_block(tail_only);
                emit::for_count(fb, tiles, |fb, t| tail_block(fb, t));
                fb.ins().jump(done, &[]);
                fb.switch_to_block(done);
            } else {
                emit::for_count(fb, full as i64, |fb, b| block(fb, b, i));
                tail_block(fb, i);
            }
        });
        Ok(())
    })?;
    // Padding and repacking as a task over channel pairs (each writes its own planes).
    let padded = g.padded(g.c);
    let prepare = k.task(|fb, _, [ctx, begin, end, _]| {
        let xp = fb.ins().load(types::I64, emit::mem(), ctx, 0);
        let x = fb.ins().load(types::I64, emit::mem(), ctx, 16);
        let planes = fb.ins().load(types::I64, emit::mem(), ctx, 24);
        let first = fb.ins().imul_imm_s(begin, l.group as i64);
        let last = fb.ins().imul_imm_s(end, l.group as i64);
        let channels = emit::iconst(fb, g.c as i64);
        let last = fb.ins().smin(last, channels);
        emit::for_range(fb, first, last, 1, |fb, c| {
            let from = emit::addr(fb, x, c, (g.h * g.w * in_elem) as i64);
            let to = emit::addr(fb, planes, c, (g.hp * g.wp * in_elem) as i64);
            let fill = if sixteen_in {
                Fill::I16(zx as i16)
            } else {
                Fill::U8(zx as u8)
            };
            padded.emit_plane(fb, from, to, fill);
        });
        match (sixteen_in, quads) {
            (true, _) => repack_i16(fb, &g, &l, planes, xp, begin, end),
            (false, true) => repack_quads(fb, &g, &l, planes, xp, begin, end),
            (false, false) => repack(fb, &g, &l, planes, xp, begin, end),
        }
        Ok(())
    })?;
    // Staging rows of `ow8` results to the output's rows of `ow`, as a task over channels.
    let copy_out = k.task(|fb, _, [ctx, begin, end, _]| {
        let out = fb.ins().load(types::I64, emit::mem(), ctx, 8);
        let yn = fb.ins().load(types::I64, emit::mem(), ctx, 32);
        emit::for_range(fb, begin, end, 1, |fb, c| {
            emit::for_count(fb, g.oh as i64, |fb, oy| {
                let src = emit::addr(fb, out, c, (out_plane * out_elem) as i64);
                let src = emit::addr(fb, src, oy, (l.ow8 * out_elem) as i64);
                let dst = emit::addr(fb, yn, c, (g.oh * g.ow * out_elem) as i64);
                let dst = emit::addr(fb, dst, oy, (g.ow * out_elem) as i64);
                copy_row(fb, src, dst, g.ow * out_elem);
            });
        });
        Ok(())
    })?;
    let ws = k.workspace(ws_bytes);
    let (x, yop) = (k.input(0)?, k.output(0));
    let (xptr, yptr) = (x.ptr, yop.ptr);
    let samples = k.input_samples()?;
    let context = k.fb.ins().iadd_imm_s(ws, context_at as i64);
    let macs = (g.m * g.oh * g.ow * g.c * taps) as u64;
    let mut phases = vec![(prepare, l.used_pairs as i64), (task, count)];
    if !l_direct {
        phases.push((copy_out, g.m as i64));
    }
    k.for_each(samples, |k, n| {
        let fb = &mut *k.fb;
        let xn = emit::addr(fb, xptr, n, (g.c * g.h * g.w * in_elem) as i64);
        let yn = emit::addr(fb, yptr, n, (g.m * g.oh * g.ow * out_elem) as i64);
        let xp = fb.ins().iadd_imm_s(ws, xp_at as i64);
        let out = if l_direct {
            yn
        } else {
            fb.ins().iadd_imm_s(ws, staging_at as i64)
        };
        for (i, v) in [xp, out, xn, ws, yn].into_iter().enumerate() {
            fb.ins().store(emit::mem(), v, context, (8 * i) as i32);
        }
        k.parallel_phases(&phases, context, usize::MAX, macs)
    })?;
    Ok(true)
}

/// Repacks channel pairs `begin..end` of the padded u8 planes at `planes` into pairs of i16
/// split by phase at `xp` (see the module docs): eight positions of a phase row per step, from one 16-byte
/// load of each of the two planes, one byte shuffle pairing them and two widenings.
fn repack(
    fb: &mut FunctionBuilder,
    g: &QConv2d,
    l: &Layout,
    planes: Value,
    xp: Value,
    begin: Value,
    end: Value,
) {
    let plane = (g.hp * g.wp) as i32;
    walk_u8(fb, g, l, planes, xp, (begin, end), |fb, src, dst, pair| {
        let va = fb.ins().load(types::I8X16, emit::mem(), src, 0);
        let vb = fb.ins().load(types::I8X16, emit::mem(), src, plane);
        let pairs = fb.ins().shuffle(va, vb, pair);
        let (lo, hi) = (fb.ins().uwiden_low(pairs), fb.ins().uwiden_high(pairs));
        fb.ins().store(emit::mem(), lo, dst, 0);
        fb.ins().store(emit::mem(), hi, dst, 16);
    });
}

/// [`repack`] for VNNI's u8 quads: four channels' bytes per position, unwidened. Eight
/// positions of a phase row per step: the pair shuffle of [`repack`] on planes (0, 1) and
/// on (2, 3), then their 16-bit units interleaved into positions 0–3 and 4–7.
fn repack_quads(
    fb: &mut FunctionBuilder,
    g: &QConv2d,
    l: &Layout,
    planes: Value,
    xp: Value,
    begin: Value,
    end: Value,
) {
    let plane = (g.hp * g.wp) as i32;
    // Positions (q, q + 1, q + 2, q + 3) of the two pair rows, as [c0 c1 c2 c3] each.
    let quads = |q: u8| -> Vec<u8> {
        (q..q + 4)
            .flat_map(|i| [2 * i, 2 * i + 1, 16 + 2 * i, 17 + 2 * i])
            .collect()
    };
    let low = fb.func.dfg.immediates.push(ConstantData::from(quads(0)));
    let high = fb.func.dfg.immediates.push(ConstantData::from(quads(4)));
    walk_u8(fb, g, l, planes, xp, (begin, end), |fb, src, dst, pair| {
        let load = |fb: &mut FunctionBuilder, c: i32| {
            fb.ins().load(types::I8X16, emit::mem(), src, c * plane)
        };
        let (va, vb, vc, vd) = (load(fb, 0), load(fb, 1), load(fb, 2), load(fb, 3));
        let ab = fb.ins().shuffle(va, vb, pair);
        let cd = fb.ins().shuffle(vc, vd, pair);
        let lo = fb.ins().shuffle(ab, cd, low);
        let hi = fb.ins().shuffle(ab, cd, high);
        fb.ins().store(emit::mem(), lo, dst, 0);
        fb.ins().store(emit::mem(), hi, dst, 16);
    });
}

/// The walk [`repack`] and [`repack_quads`] share: for channel groups `begin..end` (of
/// `l.group` planes each, `hp · wp` bytes apart), each phase (py, px) and phase row, each
/// eight positions: `step(fb, src, dst, pair)` with `src` the group's first plane at the
/// positions' first column, `dst` their packed 32 bytes, and `pair` the byte shuffle that
/// interleaves the eight positions' bytes of two planes' 16-byte loads (column phase px).
fn walk_u8(
    fb: &mut FunctionBuilder,
    g: &QConv2d,
    l: &Layout,
    planes: Value,
    xp: Value,
    (begin, end): (Value, Value),
    step: impl Fn(&mut FunctionBuilder, Value, Value, Immediate),
) {
    let group_bytes = (l.group * g.hp * g.wp) as i64;
    let pair_bytes = l.pair_bytes(g) as i64;
    emit::for_range(fb, begin, end, 1, |fb, p| {
        let a = emit::addr(fb, planes, p, group_bytes);
        let dst_group = emit::addr(fb, xp, p, pair_bytes);
        for py in 0..g.sh {
            for px in 0..g.sw {
                // Byte j: position j / 2 of plane (j % 2), column px + sw·(j / 2).
                let mask: Vec<u8> = (0..LANES)
                    .flat_map(|i| [(px + g.sw * i) as u8, (16 + px + g.sw * i) as u8])
                    .collect();
                let mask = fb.func.dfg.immediates.push(ConstantData::from(mask));
                let phase = ((py * g.sw + px) * l.hq * l.wq * PAIR) as i64;
                emit::for_count(fb, l.hq as i64, |fb, y| {
                    let row = fb.ins().imul_imm_s(y, (g.sh * g.wp) as i64);
                    let src_row = fb.ins().iadd_imm_s(row, (py * g.wp) as i64);
                    let src_row = fb.ins().iadd(a, src_row);
                    let dst_row = fb.ins().imul_imm_s(y, (l.wq * PAIR) as i64);
                    let dst_row = fb.ins().iadd_imm_s(dst_row, phase);
                    let dst_row = fb.ins().iadd(dst_group, dst_row);
                    emit::for_count(fb, (l.wq / LANES) as i64, |fb, xc| {
                        let src = emit::addr(fb, src_row, xc, (LANES * g.sw) as i64);
                        let dst = emit::addr(fb, dst_row, xc, (LANES * PAIR) as i64);
                        step(fb, src, dst, mask);
                    });
                });
            }
        }
    });
}

/// [`repack`] for i16 planes (int16 layers): four positions of a phase row per step, from
/// one 16-byte load of each of the two planes (eight i16 from the half's first column) and
/// one byte shuffle pairing them; no widening.
fn repack_i16(
    fb: &mut FunctionBuilder,
    g: &QConv2d,
    l: &Layout,
    planes: Value,
    xp: Value,
    begin: Value,
    end: Value,
) {
    let plane = (g.hp * g.wp * 2) as i64;
    let pair_bytes = l.pair_bytes(g) as i64;
    let half = LANES / 2;
    // Bytes of position i of a half: element `sw · i` of the load from each plane.
    let mask: Vec<u8> = (0..half)
        .flat_map(|i| {
            let j = (2 * g.sw * i) as u8;
            [j, j + 1, 16 + j, 17 + j]
        })
        .collect();
    let mask = fb.func.dfg.immediates.push(ConstantData::from(mask));
    emit::for_range(fb, begin, end, 1, |fb, p| {
        let a = emit::addr(fb, planes, p, 2 * plane);
        let dst_pair = emit::addr(fb, xp, p, pair_bytes);
        for py in 0..g.sh {
            for px in 0..g.sw {
                let phase = ((py * g.sw + px) * l.hq * l.wq * PAIR) as i64;
                emit::for_count(fb, l.hq as i64, |fb, y| {
                    let row = fb.ins().imul_imm_s(y, (g.sh * g.wp * 2) as i64);
                    let src_row = fb.ins().iadd_imm_s(row, ((py * g.wp + px) * 2) as i64);
                    let src_row = fb.ins().iadd(a, src_row);
                    let dst_row = fb.ins().imul_imm_s(y, (l.wq * PAIR) as i64);
                    let dst_row = fb.ins().iadd_imm_s(dst_row, phase);
                    let dst_row = fb.ins().iadd(dst_pair, dst_row);
                    emit::for_count(fb, (l.wq / LANES) as i64, |fb, xc| {
                        let src = emit::addr(fb, src_row, xc, (LANES * g.sw * 2) as i64);
                        let dst = emit::addr(fb, dst_row, xc, (LANES * PAIR) as i64);
                        for h in 0..2 {
                            let at = (h * half * g.sw * 2) as i32;
                            let va = fb.ins().load(types::I8X16, emit::mem(), src, at);
                            let vb =
                                fb.ins()
                                    .load(types::I8X16, emit::mem(), src, at + plane as i32);
                            let pairs = fb.ins().shuffle(va, vb, mask);
                            fb.ins().store(emit::mem(), pairs, dst, (16 * h) as i32);
                        }
                    });
                });
            }
        }
    });
}
