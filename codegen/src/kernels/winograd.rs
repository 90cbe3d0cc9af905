//! Dense 3×3 QConv (one group, stride 1, dilation 1, any padding) as Winograd's F(2×2, 3×3)
//! in exact integer arithmetic: 16 multiplies per 2×2 outputs and input channel instead of
//! 36, on the wide forms' micro-kernels ([`super::ukernel`]).
//!
//! The output is cut into 2×2 tiles, each read from a 4×4 window `d` of the padded input
//! (padding is the input zero point, as in the interpreter). With
//!
//! ```text
//! Bᵀ = [1  0 −1  0]    2G = [2  0  0]    Aᵀ = [1  1  1  0]
//!      [0  1  1  0]         [1  1  1]         [0  1 −1 −1]
//!      [0 −1  1  0]         [1 −1  1]
//!      [0  1  0 −1]         [0  0  2]
//! ```
//!
//! and `g` a channel pair's 3×3 weights `w − zw`, `Aᵀ [Σ_c (2G g 2Gᵀ) ⊙ (Bᵀ d B)] A` is
//! exactly 4 · `Σ_c Σ_taps x · (w − zw)` (the identity of F(2, 3) in each direction, with G
//! scaled by 2 so that every entry is an integer). Per sample:
//! 1. the input planes are padded ([`Padded`]) and transformed: `V = Bᵀ d B` in i16 for every
//!    tile, stored as pairs of channels per tile position (`[position][pair][tile][2]`);
//! 2. for each block of 16 tiles and of up to six output channels, one micro-kernel call per
//!    position ξ of the 16 sums `M_ξ = Σ_c U_ξ · V_ξ` (`vpmaddwd`, wrapping i32) against the
//!    weights `U = 2G g 2Gᵀ`, transformed at compile time and stored as i16 pairs, and
//!    stores the sums ([`Store::Sums`]);
//! 3. `Aᵀ M A` (wrapping i32), an arithmetic shift right by 2, the folded bias (see
//!    [`super::packing::packed_rows`]) and the fixed-point requantization of the channel
//!    ([`ChannelParams`]), four tiles per vector; each tile's two result rows are stored
//!    as two 2-byte stores.
//!
//! **Exactness.** Every step is a ring homomorphism mod 2³² (additions, subtractions and
//! products of integers; `vpmaddwd` wraps its one overflowing case, too), so the i32 the
//! output transform yields is `T = 4 · Y mod 2³²`, where `Y = Σ x · (w − zw)` is the true
//! sum. If `|4 · Y| < 2³¹` that i32 is `4 · Y` itself and the shift gives `Y` exactly, the
//! interpreter's sum (which then does not wrap either). Since `|Y| ≤ 255 · Σ |w − zw|`
//! (u8 activations), the form applies only when, for every output channel,
//! `4 · 255 · Σ_{c, taps} |w − zw| ≤ 2³¹ − 1` ([`exact`]); it declines otherwise and the
//! wide form runs the layer. The stored operands must also be what the products see: the
//! input transform of u8 values lies in `[−1020, 1020]` (each of Bᵀ's rows has two
//! nonzero ±1 entries), which i16 holds, and the weight transform is checked to fit i16
//! (its rows of 2G add at most three entries, `|U| ≤ 9 · max |w − zw|`). Int8 weights pass
//! the bound up to 1800 input channels (ResNet-18's largest layer has 512).
//!
//! F(4×4, 3×3) would save more multiplies but needs G scaled by 24 (the output divided by
//! 576), which leaves ~2²² for `Σ |w − zw| · 255`: too little for real layers.

use super::conv2d::{ConvRequant, QConv2d};
use super::packing::packed_rows;
use super::planes::{copy_row, Fill, Padded};
use super::requant::{little_endian, ChannelTable};
use super::ukernel::{Operands, PairTile, Store, LANES, MAX_ROWS, VECTORS};
use super::{data_address, Kernel};
use crate::emit;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, ConstantData, FuncRef, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;

/// Positions of a transformed 4×4 tile.
const POSITIONS: usize = 16;

/// Tiles per micro-kernel call (two vectors of eight).
const TILES: usize = VECTORS * LANES;

/// Tiles the input transform computes at once (eight i16 lanes).
const GROUP: usize = 8;

/// Most channel pairs per micro-kernel loop iteration: enough that the loop's own
/// instructions are a small part of it.
const MAX_UNROLL: usize = 8;

/// Parts a call may split into (each has its own scratch for the sums).
const MAX_PARTS: usize = 16;

/// Bytes of one part's sums: `[position][row][tile]` i32.
const SUMS_ROW: usize = TILES * 4;
const SUMS_POSITION: usize = MAX_ROWS * SUMS_ROW;
const SUMS_BYTES: usize = POSITIONS * SUMS_POSITION;

/// Bytes of one transformed pair (two i16) of one tile.
const PAIR: usize = 4;

/// Largest |x| of a u8 activation, for [`exact`].
const MAX_ACTIVATION: i64 = 255;

/// G scaled by 2 (integer entries).
const G2: [[i32; 3]; 4] = [[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]];

/// The tiling of one convolution.
#[derive(Clone, Copy, Debug)]
struct Tiling {
    /// The convolution's shape.
    q: QConv2d,
    /// Tile rows and columns; tiles, and rounded up to whole micro-kernel calls.
    th: usize,
    tw: usize,
    tiles: usize,
    tiles16: usize,
    /// Tile slots per transformed pair row: room for the input transform's last group of
    /// eight, which may run past the last tile.
    stride: usize,
    /// Rows and columns of the padded planes the input transform reads.
    hq: usize,
    wq: usize,
    /// Channel pairs (the last one half empty for an odd channel count), and pairs per
    /// micro-kernel iteration (a divisor of `pairs`, so no pair is padding).
    pairs: usize,
    unroll: usize,
}

impl Tiling {
    /// The tiling when the node is a dense 3×3 QConv of stride 1 and dilation 1; `None`
    /// otherwise.
    fn of(k: &Kernel) -> Result<Option<Tiling>, String> {
        let Some(q) = QConv2d::of(k)? else {
            return Ok(None);
        };
        if q.group != 1 || (q.kh, q.kw, q.sh, q.sw, q.dh, q.dw) != (3, 3, 1, 1, 1, 1) {
            return Ok(None);
        }
        let (th, tw) = (q.oh.div_ceil(2), q.ow.div_ceil(2));
        let tiles = th * tw;
        let pairs = q.c.div_ceil(2);
        Ok(Some(Tiling {
            q,
            th,
            tw,
            tiles,
            tiles16: tiles.next_multiple_of(TILES),
            stride: tiles.next_multiple_of(TILES).max(tiles + GROUP),
            hq: q.hp.max(2 * th + 2),
            wq: q.wp.max(2 * tw + 2),
            pairs,
            unroll: (1..=MAX_UNROLL).rev().find(|u| pairs % u == 0).unwrap_or(1),
        }))
    }

    fn padded(&self) -> Padded {
        Padded {
            hp: self.hq,
            wp: self.wq,
            ..self.q.padded(self.q.c)
        }
    }

    /// Bytes of one position's transformed pairs.
    fn position_bytes(&self) -> usize {
        self.pairs * self.stride * PAIR
    }

    /// Whether results go straight to the output: even extents and whole micro-kernel
    /// calls of tiles. Otherwise into a staging area of `2·th + 2` rows of `2·tw` (the last
    /// two a sink for the tiles past the last), copied out afterwards.
    fn direct(&self) -> bool {
        self.q.oh % 2 == 0 && self.q.ow % 2 == 0 && self.tiles == self.tiles16
    }

    /// Results per row and per channel where the tiles store them.
    fn out_row(&self) -> usize {
        if self.direct() {
            self.q.ow
        } else {
            2 * self.tw
        }
    }

    fn out_plane(&self) -> usize {
        if self.direct() {
            self.q.oh * self.q.ow
        } else {
            (2 * self.th + 2) * 2 * self.tw
        }
    }
}

/// Whether F(2×2, 3×3) is exact for an output channel with weights `row` (`w − zw`, see the
/// module doc): `4 · 255 · Σ |w − zw| ≤ 2³¹ − 1`.
fn exact(row: &[i16]) -> bool {
    let sum: i64 = row.iter().map(|&v| (v as i64).abs()).sum();
    4 * MAX_ACTIVATION * sum <= i32::MAX as i64
}

/// `2G g 2Gᵀ` of one 3×3 kernel (row-major), position `ξ = 4i + j` at index ξ; `None` when
/// an entry does not fit i16.
fn transform_weights(g: &[i16]) -> Option<[i16; POSITIONS]> {
    let mut u = [0i16; POSITIONS];
    for i in 0..4 {
        for j in 0..4 {
            let mut s = 0i32;
            for a in 0..3 {
                for b in 0..3 {
                    s += G2[i][a] * g[3 * a + b] as i32 * G2[j][b];
                }
            }
            u[4 * i + j] = i16::try_from(s).ok()?;
        }
    }
    Some(u)
}

/// Emits the convolution in this form and returns true when it applies (a dense 3×3 QConv
/// [`Tiling::of`] accepts, constant weights that keep it exact, wide micro-kernels and
/// byte shuffles on the target, every requantization shift at least 32, not turned off
/// by `CodegenOptions::no_winograd`, and not a layer VNNI's quads take); false leaves it to
/// the other forms.
pub(super) fn conv(k: &mut Kernel) -> Result<bool, String> {
    let Some(isa) = k.wide.filter(|_| k.winograd && k.has_byte_shuffle()) else {
        return Ok(false);
    };
    let Some(t) = Tiling::of(k)? else {
        return Ok(false);
    };
    let Some(packed) = packed_rows(k, t.q.m, t.q.c * 9, |c, i| c * t.q.c * 9 + i)? else {
        return Ok(false);
    };
    if !packed.rows.iter().all(|row| exact(row)) {
        return Ok(false);
    }
    // With VNNI, u8 activations against weights that fit i8 run in the direct wide form on
    // u8×i8 quads, twice the products per instruction of this form's i16 pairs and no
    // transforms: measured faster than 2.25× fewer products (ResNet-18, batch 1, one thread
    // on Zen 4: 16.7 ms against 19.0 ms).
    if isa.has_quads() && packed.fits_i8() && k.input(0)?.ty.dtype == qlift_ir::DType::U8 {
        return Ok(false);
    }
    let mut u = Vec::with_capacity(t.q.m);
    for row in &packed.rows {
        let channels: Option<Vec<[i16; POSITIONS]>> =
            row.chunks_exact(9).map(transform_weights).collect();
        let Some(channels) = channels else {
            return Ok(false);
        };
        u.push(channels);
    }
    let Some(ConvRequant { zx, rq, signed }) = t.q.requant(k)? else {
        return Ok(false);
    };
    let Some(records) = ChannelTable::bytes(&rq, &packed.folded) else {
        return Ok(false);
    };
    // Micro-kernels: `unroll` pairs per iteration, each pair a row of `stride` tiles.
    let pair_row = i32::try_from(t.stride * PAIR).map_err(|e| e.to_string())?;
    let offsets: Vec<i32> = (0..t.unroll as i32).map(|s| s * pair_row).collect();
    let rows = MAX_ROWS.min(t.q.m);
    let (full, tail) = (t.q.m / rows, t.q.m % rows);
    let tile = |rows: usize| PairTile {
        rows,
        offsets: offsets.clone(),
        x_stride: pair_row * t.unroll as i32,
        iterations: (t.pairs / t.unroll) as u32,
        store: Store::Sums {
            plane: SUMS_ROW as i32,
        },
        row_stride: None,
        operands: Operands::Pairs,
    };
    let (main, tail_kernel) = k.pair_tiles(isa, rows, tail, tile)?;
    k.form = "winograd";
    // Weights: block of `rows` channels from c0, [position][pair][row] as i16 pairs.
    let mut weights = Vec::with_capacity(t.q.m * t.pairs * POSITIONS * PAIR);
    for (c0, n) in (0..full)
        .map(|b| (b * rows, rows))
        .chain((tail > 0).then_some((full * rows, tail)))
    {
        for xi in 0..POSITIONS {
            for p in 0..t.pairs {
                for c in c0..c0 + n {
                    for ci in [2 * p, 2 * p + 1] {
                        let v = if ci < t.q.c { u[c][ci][xi] } else { 0 };
                        weights.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
    }
    let block_bytes = (POSITIONS * t.pairs * rows * PAIR) as i64;
    let wptr = k.data_object(weights, 64)?;
    let params = k.data_object(records, 64)?;
    // Where each tile's top-left result goes in its channel's plane (a sink past the last
    // tile).
    let out_row = t.out_row();
    let tile_offsets = (0..t.tiles16).map(|j| {
        let (ty, tx) = if j < t.tiles {
            (j / t.tw, j % t.tw)
        } else {
            (t.th, 0)
        };
        ((2 * ty * out_row + 2 * tx) as i32).to_le_bytes()
    });
    let tile_table = k.data_object(tile_offsets.flatten().collect(), 64)?;
    // Workspace: padded planes | transformed pairs | context | each part's sums | staging.
    let padded = t.padded();
    let v_at = padded.bytes().next_multiple_of(64);
    let context_at = v_at + POSITIONS * t.position_bytes();
    let sums_at = context_at + 64;
    let staging_at = sums_at + MAX_PARTS * SUMS_BYTES;
    let ws_bytes = staging_at + if t.direct() { 0 } else { t.q.m * t.out_plane() };
    // The products as a task over one dimension, as in the wide form: blocks of channels
    // when the weights are larger than the transformed input (each block's weights stay in
    // cache across the tiles), else blocks of tiles.
    let weights_outer = t.q.m > t.stride;
    let tile_blocks = (t.tiles16 / TILES) as i64;
    let blocks = full + usize::from(tail > 0);
    let count = if weights_outer {
        blocks as i64
    } else {
        tile_blocks
    };
    let store = Output {
        zero_point: rq.zero_point,
        bounds: rq.bounds,
        signed,
        row: out_row as i32,
        plane: t.out_plane() as i64,
    };
    let task = k.task(|fb, module, [ctx, begin, end, part]| {
        let v = fb.ins().load(types::I64, emit::mem(), ctx, 0);
        let out = fb.ins().load(types::I64, emit::mem(), ctx, 8);
        let sums = fb.ins().load(types::I64, emit::mem(), ctx, 32);
        let sums = emit::addr(fb, sums, part, SUMS_BYTES as i64);
        let (wptr, params, tile_table) = (
            data_address(fb, module, wptr),
            data_address(fb, module, params),
            data_address(fb, module, tile_table),
        );
        let main = module.declare_func_in_func(main, fb.func);
        let tail_kernel = tail_kernel.map(|f| module.declare_func_in_func(f, fb.func));
        // Channel block b (of n channels, its micro-kernel `kernel`) × tile block tb.
        let unit = |fb: &mut FunctionBuilder, b: Value, tb: Value, kernel: FuncRef, n: usize| {
            let c0 = fb.ins().imul_imm_s(b, rows as i64);
            let w = emit::addr(fb, wptr, b, block_bytes);
            let x = emit::addr(fb, v, tb, (TILES * PAIR) as i64);
            for xi in 0..POSITIONS {
                let x0 = fb.ins().iadd_imm_s(x, (xi * t.position_bytes()) as i64);
                let x1 = fb.ins().iadd_imm_s(x0, (LANES * PAIR) as i64);
                let wx = fb.ins().iadd_imm_s(w, (xi * t.pairs * n * PAIR) as i64);
                let s = fb.ins().iadd_imm_s(sums, (xi * SUMS_POSITION) as i64);
                fb.ins().call(kernel, &[x0, x1, wx, s, params]);
            }
            let offsets = emit::addr(fb, tile_table, tb, (TILES * 4) as i64);
            emit::for_count(fb, n as i64, |fb, r| {
                let c = fb.ins().iadd(c0, r);
                let s = emit::addr(fb, sums, r, SUMS_ROW as i64);
                let plane = emit::addr(fb, out, c, store.plane);
                let p = ChannelTable::load(fb, params, c);
                store.emit(fb, s, p, plane, offsets);
            });
        };
        emit::for_range(fb, begin, end, 1, |fb, i| {
            let tail_unit = |fb: &mut FunctionBuilder, tb: Value| {
                if let Some(kernel) = tail_kernel {
                    let b = emit::iconst(fb, full as i64);
                    unit(fb, b, tb, kernel, tail);
                }
            };
            if weights_outer {
                // Block i: the full blocks, then the tail block (index `full`).
                let is_full = fb.ins().icmp_imm_s(IntCC::SignedLessThan, i, full as i64);
                let (full_block, tail_only, done) =
                    (fb.create_block(), fb.create_block(), fb.create_block());
                fb.ins().brif(is_full, full_block, &[], tail_only, &[]);
                fb.switch_to_block(full_block);
                emit::for_count(fb, tile_blocks, |fb, tb| unit(fb, i, tb, main, rows));
                fb.ins().jump(done, &[]);
                fb.switch_to_block(tail_only);
                emit::for_count(fb, tile_blocks, |fb, tb| tail_unit(fb, tb));
                fb.ins().jump(done, &[]);
                fb.switch_to_block(done);
            } else {
                emit::for_count(fb, full as i64, |fb, b| unit(fb, b, i, main, rows));
                tail_unit(fb, i);
            }
        });
        Ok(())
    })?;
    // Padding and the input transform as a task over channel pairs (each writes its own
    // planes and pair rows, and reads only planes it padded).
    let zx = zx as u8;
    let prepare = k.task(|fb, _, [ctx, begin, end, _]| {
        let v = fb.ins().load(types::I64, emit::mem(), ctx, 0);
        let x = fb.ins().load(types::I64, emit::mem(), ctx, 16);
        let planes = fb.ins().load(types::I64, emit::mem(), ctx, 24);
        let first = fb.ins().imul_imm_s(begin, 2);
        let last = fb.ins().imul_imm_s(end, 2);
        let channels = emit::iconst(fb, t.q.c as i64);
        let last = fb.ins().smin(last, channels);
        let plane = (t.hq * t.wq) as i64;
        emit::for_range(fb, first, last, 1, |fb, c| {
            let from = emit::addr(fb, x, c, (t.q.h * t.q.w) as i64);
            let to = emit::addr(fb, planes, c, plane);
            padded.emit_plane(fb, from, to, Fill::U8(zx));
        });
        emit::for_range(fb, begin, end, 1, |fb, p| {
            let a = emit::addr(fb, planes, p, 2 * plane);
            // The second channel of an odd count's last pair repeats the first (its
            // weights are zero).
            let second = fb.ins().imul_imm_s(p, 2);
            let second = fb.ins().iadd_imm_s(second, 1);
            let last = emit::iconst(fb, t.q.c as i64 - 1);
            let second = fb.ins().smin(second, last);
            let b = emit::addr(fb, planes, second, plane);
            let dst = emit::addr(fb, v, p, (t.stride * PAIR) as i64);
            transform_input(fb, &t, [a, b], dst);
        });
        Ok(())
    })?;
    let ws = k.workspace(ws_bytes);
    let (x, yop) = (k.input(0)?, k.output(0));
    let (xptr, yptr) = (x.ptr, yop.ptr);
    let samples = k.input_samples()?;
    let context = k.fb.ins().iadd_imm_s(ws, context_at as i64);
    // The multiplies F(2×2, 3×3) does, for the pool's threshold.
    let macs = (t.q.m * t.tiles * t.q.c * POSITIONS) as u64;
    k.for_each(samples, |k, n| {
        let fb = &mut *k.fb;
        let xn = emit::addr(fb, xptr, n, (t.q.c * t.q.h * t.q.w) as i64);
        let yn = emit::addr(fb, yptr, n, (t.q.m * t.q.oh * t.q.ow) as i64);
        let v = fb.ins().iadd_imm_s(ws, v_at as i64);
        let out = if t.direct() {
            yn
        } else {
            fb.ins().iadd_imm_s(ws, staging_at as i64)
        };
        let sums = fb.ins().iadd_imm_s(ws, sums_at as i64);
        for (i, value) in [v, out, xn, ws, sums].into_iter().enumerate() {
            fb.ins().store(emit::mem(), value, context, (8 * i) as i32);
        }
        k.parallel_phases(
            &[(prepare, t.pairs as i64), (task, count)],
            context,
            MAX_PARTS,
            macs,
        )?;
        let fb = &mut *k.fb;
        if !t.direct() {
            emit::for_count(fb, t.q.m as i64, |fb, c| {
                emit::for_count(fb, t.q.oh as i64, |fb, oy| {
                    let src = emit::addr(fb, out, c, t.out_plane() as i64);
                    let src = emit::addr(fb, src, oy, out_row as i64);
                    let dst = emit::addr(fb, yn, c, (t.q.oh * t.q.ow) as i64);
                    let dst = emit::addr(fb, dst, oy, t.q.ow as i64);
                    copy_row(fb, src, dst, t.q.ow);
                });
            });
        }
        Ok(())
    })?;
    Ok(true)
}

/// `Bᵀ`'s rows applied to four values (rows or columns of a tile): `[d0 − d2, d1 + d2,
/// d2 − d1, d1 − d3]`.
fn bt(fb: &mut FunctionBuilder, d: [Value; 4]) -> [Value; 4] {
    [
        fb.ins().isub(d[0], d[2]),
        fb.ins().iadd(d[1], d[2]),
        fb.ins().isub(d[2], d[1]),
        fb.ins().isub(d[1], d[3]),
    ]
}

/// `Aᵀ`'s rows applied to four values: `[m0 + m1 + m2, m1 − m2 − m3]`.
fn at(fb: &mut FunctionBuilder, m: [Value; 4]) -> [Value; 2] {
    let s = fb.ins().iadd(m[0], m[1]);
    let d = fb.ins().isub(m[1], m[2]);
    [fb.ins().iadd(s, m[2]), fb.ins().isub(d, m[3])]
}

/// Transforms one channel pair (the padded planes at `planes`) into its rows of
/// transformed tiles at `dst` (position ξ's row at `ξ · position_bytes`): eight tiles of a
/// tile row at a time, each of the window's rows two 16-byte loads split into even and odd
/// columns. The last group of a tile row may run past it; its extra tiles land in the next
/// row's slots (rewritten next) or in the slack after the last tile.
fn transform_input(fb: &mut FunctionBuilder, t: &Tiling, planes: [Value; 2], dst: Value) {
    let split: Vec<u8> = (0..16).map(|i| (i % 8) * 2 + i / 8).collect();
    let split = fb.func.dfg.immediates.push(ConstantData::from(split));
    let interleave = [0u8, 4].map(|first| {
        let mask: Vec<u8> = (first..first + 4)
            .flat_map(|i| [2 * i, 2 * i + 1, 16 + 2 * i, 17 + 2 * i])
            .collect();
        fb.func.dfg.immediates.push(ConstantData::from(mask))
    });
    emit::for_count(fb, t.th as i64, |fb, ty| {
        emit::for_count(fb, t.tw.div_ceil(GROUP) as i64, |fb, g| {
            let row = fb.ins().imul_imm_s(ty, (2 * t.wq) as i64);
            let col = fb.ins().imul_imm_s(g, (2 * GROUP) as i64);
            let at = fb.ins().iadd(row, col);
            let v = planes.map(|plane| {
                let window = fb.ins().iadd(plane, at);
                let d: [[Value; 4]; 4] = std::array::from_fn(|r| {
                    let halves = [0, 2].map(|c| {
                        let bytes =
                            fb.ins()
                                .load(types::I8X16, emit::mem(), window, (r * t.wq + c) as i32);
                        fb.ins().shuffle(bytes, bytes, split)
                    });
                    [
                        fb.ins().uwiden_low(halves[0]),
                        fb.ins().uwiden_high(halves[0]),
                        fb.ins().uwiden_low(halves[1]),
                        fb.ins().uwiden_high(halves[1]),
                    ]
                });
                // Bᵀ d along the window's rows, then · B along its columns.
                let cols: [[Value; 4]; 4] =
                    std::array::from_fn(|j| bt(fb, [d[0][j], d[1][j], d[2][j], d[3][j]]));
                let v: [[Value; 4]; 4] = std::array::from_fn(|i| {
                    bt(fb, [cols[0][i], cols[1][i], cols[2][i], cols[3][i]])
                });
                v
            });
            // The first tile's slot: tile row ty, column 8g.
            let tile = fb.ins().imul_imm_s(ty, t.tw as i64);
            let first = fb.ins().imul_imm_s(g, GROUP as i64);
            let tile = fb.ins().iadd(tile, first);
            let base = emit::addr(fb, dst, tile, PAIR as i64);
            for xi in 0..POSITIONS {
                let (i, j) = (xi / 4, xi % 4);
                let [a, b] =
                    [0, 1].map(|s| fb.ins().bitcast(types::I8X16, little_endian(), v[s][i][j]));
                for (half, &mask) in interleave.iter().enumerate() {
                    let pairs = fb.ins().shuffle(a, b, mask);
                    let at = (xi * t.position_bytes() + half * LANES / 2 * PAIR) as i32;
                    fb.ins().store(emit::mem(), pairs, base, at);
                }
            }
        });
    });
}

/// How the output transform finishes: the requantization's constants and where results go.
#[derive(Clone, Copy, Debug)]
struct Output {
    zero_point: i32,
    bounds: (i64, i64),
    signed: bool,
    /// Bytes between two result rows, and between two channels' planes.
    row: i32,
    plane: i64,
}

impl Output {
    /// One channel's 16 tiles: their sums at `sums` (`[position][..][tile]`, positions
    /// [`SUMS_POSITION`] bytes apart) through `Aᵀ M A`, divided by 4, plus the bias,
    /// requantized with `p`, and each tile's 2×2 results stored at `plane` plus its offset
    /// from the tile table at `offsets`.
    fn emit(
        &self,
        fb: &mut FunctionBuilder,
        sums: Value,
        p: super::requant::ChannelParams,
        plane: Value,
        offsets: Value,
    ) {
        let bias = fb.ins().splat(types::I32X4, p.bias);
        // [y00 y01 y00 y01 … (four tiles) | y10 y11 …] from [y00 ×4, y01 ×4, y10 ×4, y11 ×4].
        let order: Vec<u8> = [0u8, 8]
            .iter()
            .flat_map(|&r| (0..4).flat_map(move |i| [r + i, r + 4 + i]))
            .collect();
        let order = fb.func.dfg.immediates.push(ConstantData::from(order));
        for quad in 0..TILES / 4 {
            let m: [Value; POSITIONS] = std::array::from_fn(|xi| {
                let at = (xi * SUMS_POSITION + quad * 16) as i32;
                fb.ins().load(types::I32X4, emit::mem(), sums, at)
            });
            let s: [[Value; 2]; 4] =
                std::array::from_fn(|j| at(fb, [m[j], m[4 + j], m[8 + j], m[12 + j]]));
            let y: [[Value; 2]; 2] =
                std::array::from_fn(|i| at(fb, [s[0][i], s[1][i], s[2][i], s[3][i]]));
            let [y00, y01, y10, y11] = [y[0][0], y[0][1], y[1][0], y[1][1]].map(|v| {
                let v = fb.ins().sshr_imm_s(v, 2);
                let v = fb.ins().iadd(v, bias);
                p.requantize_x4(fb, v, self.zero_point, self.bounds)
            });
            let top = fb.ins().snarrow(y00, y01);
            let bottom = fb.ins().snarrow(y10, y11);
            let bytes = if self.signed {
                fb.ins().snarrow(top, bottom)
            } else {
                fb.ins().unarrow(top, bottom)
            };
            let bytes = fb.ins().shuffle(bytes, bytes, order);
            let words = fb.ins().bitcast(types::I16X8, little_endian(), bytes);
            for i in 0..4 {
                let off = fb.ins().load(
                    types::I32,
                    emit::constant_mem(),
                    offsets,
                    (4 * (4 * quad + i)) as i32,
                );
                let off = fb.ins().sextend(types::I64, off);
                let to = fb.ins().iadd(plane, off);
                let upper = fb.ins().extractlane(words, i as u8);
                fb.ins().store(emit::mem(), upper, to, 0);
                let lower = fb.ins().extractlane(words, 4 + i as u8);
                fb.ins().store(emit::mem(), lower, to, self.row);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bᵀ d B, and Aᵀ M A, of 4×4 row-major tiles (the arithmetic the emitted code does).
    fn input_transform(d: &[i32; 16]) -> [i32; 16] {
        let bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]];
        std::array::from_fn(|xi| {
            let (i, j) = (xi / 4, xi % 4);
            (0..4)
                .flat_map(|a| (0..4).map(move |b| (a, b)))
                .map(|(a, b)| bt[i][a] * d[4 * a + b] * bt[j][b])
                .sum()
        })
    }

    fn output_transform(m: &[i32; 16]) -> [i32; 4] {
        let at = [[1, 1, 1, 0], [0, 1, -1, -1]];
        std::array::from_fn(|o| {
            let (i, j) = (o / 2, o % 2);
            (0..4)
                .flat_map(|a| (0..4).map(move |b| (a, b)))
                .map(|(a, b)| at[i][a] * m[4 * a + b] * at[j][b])
                .sum()
        })
    }

    #[test]
    fn the_integer_transforms_give_four_times_the_correlation() {
        let mut state = 0x1234_5678u64;
        let mut next = |below: i32| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((state >> 33) % below as u64) as i32
        };
        for _ in 0..200 {
            let d: [i32; 16] = std::array::from_fn(|_| next(256));
            let g: Vec<i16> = (0..9).map(|_| (next(511) - 255) as i16).collect();
            let u = transform_weights(&g).unwrap();
            let v = input_transform(&d);
            let m: [i32; 16] = std::array::from_fn(|xi| u[xi] as i32 * v[xi]);
            let y = output_transform(&m);
            for (o, &got) in y.iter().enumerate() {
                let (oy, ox) = (o / 2, o % 2);
                let want: i32 = (0..9)
                    .map(|tap| d[4 * (oy + tap / 3) + ox + tap % 3] * g[tap] as i32)
                    .sum();
                assert_eq!(got, 4 * want);
            }
            assert!(v.iter().all(|&x| x.abs() <= 4 * 255));
        }
    }

    #[test]
    fn the_bound_admits_int8_layers_and_refuses_larger_sums() {
        assert!(exact(&vec![-128; 1800 * 9]));
        assert!(!exact(&vec![-128; 1900 * 9]));
        assert!(!exact(&vec![255; 1024 * 9]));
        assert!(transform_weights(&[i16::MAX; 9]).is_none());
    }
}
