//! Dense 2-D QConv with output pixels as the rows of a matrix product and output channels
//! as its vector lanes (`wide-pixels-vnni`, MLAS's layout): the [`RowTiles`] of the matrix
//! product (tiles of up to eight pixels × sixteen channels, four u8 of a pixel's im2col row
//! broadcast into `vpdpbusd`). At small spatial sizes (7 × 7, 14 × 14) the wide-direct
//! form's vectors of eight positions along a row leave lanes empty (7 × 7: 64 computed for
//! 49), while 256 or 512 channels fill sixteen-channel blocks exactly; the dispatcher
//! ([`super::conv`]) compares the two forms' lane use ([`lane_use`]).
//!
//! Per sample:
//! 1. the input planes `[C][H][W]` are transposed into padded pixels `[Hp·Wp][C]` (the
//!    padding is the input zero point);
//! 2. each output pixel's im2col row `[tap][C]` (K = taps · C, padded to whole loop
//!    iterations) is gathered from them, C contiguous bytes per tap; a 1×1, stride-1,
//!    unpadded convolution reads the pixels in place (their rows are spaced as the tiles'
//!    rows);
//! 3. the tiles compute `[pixels][M]` into a staging area, which is transposed into the
//!    output planes `[M][oh·ow]`.
//!
//! The arithmetic is the interpreter's, as in the other forms: `Σ x·(w − zw) + (bias −
//! zx·Σ(w − zw))` in wrapping i32 (see [`super::packing::packed_rows`]), then each
//! channel's fixed-point requantization.

use super::conv2d::{ConvRequant, QConv2d};
use super::packing::packed_rows;
use super::planes::copy_row;
use super::row_tiles::{RowProduct, RowTiles, BLOCK};
use super::ukernel;
use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::{types, ConstantData, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::FuncId;

/// The convolution's shape when this form can take it: a dense 2-D QConv of u8 activations
/// into an 8-bit result on a target with the wide micro-kernels' u8×i8 quads (VNNI).
fn geometry(k: &Kernel) -> Result<Option<QConv2d>, String> {
    let quads = k.wide.is_some_and(|isa| isa.has_quads());
    Ok(QConv2d::of(k)?.filter(|g| quads && g.group == 1))
}

/// The share of the lanes this form computes that are results (channels over channels
/// rounded up to blocks of sixteen; the pixels fill the tiles' rows exactly), or `None`
/// when it does not apply.
pub(super) fn lane_use(k: &Kernel) -> Result<Option<f64>, String> {
    Ok(geometry(k)?.map(|g| g.m as f64 / g.m.next_multiple_of(BLOCK) as f64))
}

/// Whether the im2col rows are the padded pixels themselves (1×1, stride 1, no padding).
fn pixels_are_rows(g: &QConv2d) -> bool {
    g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.hp == g.h && g.wp == g.w
}

/// Emits the convolution in this form and returns true when it applies (see [`geometry`];
/// constant weights that fit i8 after their zero point, every channel's requantization
/// shift at least 32); false leaves it to the other forms.
pub(super) fn conv(k: &mut Kernel) -> Result<bool, String> {
    let Some(g) = geometry(k)? else {
        return Ok(false);
    };
    let Some(isa) = k.wide else { return Ok(false) };
    let taps = g.taps();
    let kk = taps * g.c;
    // Reduction index t = tap · C + channel: the im2col rows copy C contiguous bytes a tap.
    let Some(packed) = packed_rows(k, g.m, kk, |co, t| (co * g.c + t % g.c) * taps + t / g.c)?
    else {
        return Ok(false);
    };
    if !packed.fits_i8() {
        return Ok(false);
    }
    let Some(ConvRequant { zx, rq, .. }) = g.requant(k)? else {
        return Ok(false);
    };
    let pixels = g.oh * g.ow;
    let split = TileSplit::of(pixels, ukernel::max_rows(isa));
    let heights: Vec<usize> = match split.lows {
        0 => vec![split.high],
        _ => vec![split.high, split.high - 1],
    };
    let out = k.output(0).ty.dtype;
    // A sample's im2col rows larger than the weights stay in cache a tile at a time.
    let rows_outer = pixels > g.m;
    let product = RowProduct {
        packed: &packed,
        kk,
        sixteen_in: false,
        rq: Some(&rq),
        out,
    };
    let Some(tiles) = RowTiles::new(k, isa, &product, &heights, rows_outer)? else {
        return Ok(false);
    };
    if !tiles.quads {
        return Err("wide-pixels: the tiles did not take u8×i8 quads".to_string());
    }
    k.form = "wide-pixels-vnni";
    let row_len = tiles.row_len;
    let in_place = pixels_are_rows(&g);
    // Padded pixels: C bytes each, or a tile row each when they are the rows.
    let pixel_bytes = if in_place { row_len } else { g.c };
    let padded_bytes = (g.hp * g.wp * pixel_bytes).next_multiple_of(64);
    // Workspace: padded pixels | im2col rows | staging results | the tasks' context.
    let rows_at = padded_bytes;
    let staging_at = rows_at
        + if in_place {
            0
        } else {
            (pixels * row_len).next_multiple_of(64)
        };
    // The staging area first holds the unpadded pixels of a padded convolution.
    let staging_bytes = (pixels * tiles.row_bytes).max(g.h * g.w * g.c);
    let context_at = staging_at + staging_bytes.next_multiple_of(64);
    let ws = k.workspace(context_at + 64);
    let (xptr, yptr) = (k.input(0)?.ptr, k.output(0).ptr);
    let samples = k.input_samples()?;
    let row_bytes = tiles.row_bytes;
    // The im2col rows as a task over output rows (each writes its own rows).
    let gather = match in_place {
        true => None,
        false => Some(k.task(|fb, _, [ctx, begin, end, _]| {
            let padded = fb.ins().load(types::I64, emit::mem(), ctx, 0);
            let rows = fb.ins().load(types::I64, emit::mem(), ctx, 8);
            im2col(fb, &g, (padded, rows), row_len, (begin, end));
            Ok(())
        })?),
    };
    let macs = (g.m * pixels * kk) as u64;
    let planes_to_pixels = Transpose::new(k, (g.h * g.w, pixel_bytes), (g.c, g.h * g.w), true)?;
    let results_to_planes = Transpose::new(k, (row_bytes, pixels), (pixels, g.m), false)?;
    k.for_each(samples, |k, n| {
        let fb = &mut *k.fb;
        let xn = emit::addr(fb, xptr, n, (g.c * g.h * g.w) as i64);
        let yn = emit::addr(fb, yptr, n, (g.m * pixels) as i64);
        let padded = ws;
        if g.hp != g.h || g.wp != g.w {
            fill(fb, padded, padded_bytes, zx as u8);
        }
        // Planes [C][H·W] into pixels [H·W][C]: straight into the padded pixels when there
        // is no padding, else into the staging area and then row by row into them.
        let padding = g.hp != g.h || g.wp != g.w;
        let unpadded = match padding {
            true => fb.ins().iadd_imm_s(ws, staging_at as i64),
            false => padded,
        };
        planes_to_pixels.run(k, context_at + 32, (xn, unpadded), macs)?;
        let fb = &mut *k.fb;
        if padding {
            emit::for_count(fb, g.h as i64, |fb, y| {
                let from = emit::addr(fb, unpadded, y, (g.w * g.c) as i64);
                let to = emit::addr(fb, padded, y, (g.wp * g.c) as i64);
                let to = fb.ins().iadd_imm_s(to, ((g.pt * g.wp + g.pl) * g.c) as i64);
                copy_row(fb, from, to, g.w * g.c);
            });
        }
        let rows = if in_place {
            padded
        } else {
            let rows = fb.ins().iadd_imm_s(ws, rows_at as i64);
            let context = fb.ins().iadd_imm_s(ws, (context_at + 32) as i64);
            fb.ins().store(emit::mem(), padded, context, 0);
            fb.ins().store(emit::mem(), rows, context, 8);
            if let Some(gather) = gather {
                k.parallel_for(gather, context, g.oh as i64, usize::MAX, macs)?;
            }
            rows
        };
        let fb = &mut *k.fb;
        let staging = fb.ins().iadd_imm_s(ws, staging_at as i64);
        let context = fb.ins().iadd_imm_s(ws, context_at as i64);
        if split.highs > 0 {
            tiles.run(k, context, (rows, staging), split.high, split.highs)?;
        }
        if split.lows > 0 {
            let fb = &mut *k.fb;
            let done = split.highs * split.high;
            let rows = fb.ins().iadd_imm_s(rows, (done * row_len) as i64);
            let staging = fb.ins().iadd_imm_s(staging, (done * row_bytes) as i64);
            tiles.run(k, context, (rows, staging), split.high - 1, split.lows)?;
        }
        // Results [pixels][M] (rows `row_bytes` apart) into the planes [M][pixels].
        results_to_planes.run(k, context_at + 32, (staging, yn), macs)?;
        Ok(())
    })?;
    Ok(true)
}

/// The pixels of a sample split into as few tiles as the micro-kernel's most rows allow,
/// of heights that differ by one at most (49 pixels: seven tiles of seven, not six of eight
/// and one of one, whose single row would stream a whole block of weights for 1/8 of the
/// work).
#[derive(Clone, Copy, Debug, PartialEq)]
struct TileSplit {
    /// Rows of the taller tiles, and how many there are; then the tiles of `high − 1` rows.
    high: usize,
    highs: usize,
    lows: usize,
}

impl TileSplit {
    fn of(pixels: usize, max_rows: usize) -> TileSplit {
        let tiles = pixels.div_ceil(max_rows);
        let high = pixels.div_ceil(tiles);
        let highs = pixels - tiles * (high - 1);
        TileSplit {
            high,
            highs,
            lows: tiles - highs,
        }
    }
}

/// Sets the `bytes` (a multiple of 16) at `at` to `value`, 16 a step.
fn fill(fb: &mut FunctionBuilder, at: Value, bytes: usize, value: u8) {
    let v = emit::iconst_of(fb, types::I8, value as i64);
    let v = fb.ins().splat(types::I8X16, v);
    emit::for_count(fb, (bytes / 16) as i64, |fb, i| {
        let to = emit::addr(fb, at, i, 16);
        fb.ins().store(emit::mem(), v, to, 0);
    });
}

/// A [`transpose_bytes`] split over the thread pool in bands of 16 rows (`by_rows`) or
/// columns, the rows or columns past the last band transposed by the caller's thread.
struct Transpose {
    task: FuncId,
    strides: (usize, usize),
    extents: (usize, usize),
    by_rows: bool,
}

impl Transpose {
    fn new(
        k: &mut Kernel,
        strides: (usize, usize),
        extents: (usize, usize),
        by_rows: bool,
    ) -> Result<Transpose, String> {
        let (ss, ds) = (strides.0 as i64, strides.1 as i64);
        let band = match by_rows {
            true => (16, extents.1),
            false => (extents.0, 16),
        };
        // Band i starts 16 rows (or columns) into the source and as many columns (rows)
        // into the result.
        let (src_step, dst_step) = match by_rows {
            true => (16 * ss, 16),
            false => (16, 16 * ds),
        };
        let task = k.task(|fb, _, [ctx, begin, end, _]| {
            let src = fb.ins().load(types::I64, emit::mem(), ctx, 0);
            let dst = fb.ins().load(types::I64, emit::mem(), ctx, 8);
            emit::for_range(fb, begin, end, 1, |fb, i| {
                let from = emit::addr(fb, src, i, src_step);
                let to = emit::addr(fb, dst, i, dst_step);
                transpose_bytes(fb, (from, strides.0), (to, strides.1), band);
            });
            Ok(())
        })?;
        Ok(Transpose {
            task,
            strides,
            extents,
            by_rows,
        })
    }

    /// Transposes `src` into `dst`, with 16 bytes of workspace at `context_at`.
    fn run(
        &self,
        k: &mut Kernel,
        context_at: usize,
        (src, dst): (Value, Value),
        work: u64,
    ) -> Result<(), String> {
        let (rows, cols) = self.extents;
        let bands = if self.by_rows { rows } else { cols } / 16;
        let ws = k.workspace(context_at + 16);
        let fb = &mut *k.fb;
        let context = fb.ins().iadd_imm_s(ws, context_at as i64);
        fb.ins().store(emit::mem(), src, context, 0);
        fb.ins().store(emit::mem(), dst, context, 8);
        if bands > 0 {
            k.parallel_for(self.task, context, bands as i64, usize::MAX, work)?;
        }
        let (ss, ds) = self.strides;
        let done = bands * 16;
        let fb = &mut *k.fb;
        let (src_at, dst_at, rest) = match self.by_rows {
            true => (done * ss, done, (rows - done, cols)),
            false => (done, done * ds, (rows, cols - done)),
        };
        let src = fb.ins().iadd_imm_s(src, src_at as i64);
        let dst = fb.ins().iadd_imm_s(dst, dst_at as i64);
        if rest.0 > 0 && rest.1 > 0 {
            transpose_bytes(fb, (src, ss), (dst, ds), rest);
        }
        Ok(())
    }
}

/// `dst[c · dst_stride + r] = src[r · src_stride + c]` for the `rows × cols` bytes of `src`
/// (strides in bytes): blocks of 16 × 16 by four rounds of byte interleaves (each round
/// rotates the 8-bit address of a byte in the block left by one: row bits r3..r0, column
/// bits c3..c0 become c3..c0 r3..r0 after four), the rows and columns left one byte at a
/// time.
fn transpose_bytes(
    fb: &mut FunctionBuilder,
    (src, src_stride): (Value, usize),
    (dst, dst_stride): (Value, usize),
    (rows, cols): (usize, usize),
) {
    let low: Vec<u8> = (0..8).flat_map(|i| [i, 16 + i]).collect();
    let high: Vec<u8> = (8..16).flat_map(|i| [i, 16 + i]).collect();
    let low = fb.func.dfg.immediates.push(ConstantData::from(low));
    let high = fb.func.dfg.immediates.push(ConstantData::from(high));
    let (ss, ds) = (src_stride as i64, dst_stride as i64);
    let (row_blocks, col_blocks) = (rows / 16, cols / 16);
    emit::for_count(fb, row_blocks as i64, |fb, rb| {
        let src_rows = emit::addr(fb, src, rb, 16 * ss);
        let dst_cols = emit::addr(fb, dst, rb, 16);
        emit::for_count(fb, col_blocks as i64, |fb, cb| {
            let from = emit::addr(fb, src_rows, cb, 16);
            let to = emit::addr(fb, dst_cols, cb, 16 * ds);
            let mut v: Vec<Value> = (0..16)
                .map(|r| {
                    let at = fb.ins().iadd_imm_s(from, r * ss);
                    fb.ins().load(types::I8X16, emit::mem(), at, 0)
                })
                .collect();
            for _ in 0..4 {
                v = (0..8)
                    .flat_map(|i| [(v[i], v[i + 8], low), (v[i], v[i + 8], high)])
                    .map(|(a, b, mask)| fb.ins().shuffle(a, b, mask))
                    .collect();
            }
            for (c, value) in v.into_iter().enumerate() {
                let at = fb.ins().iadd_imm_s(to, c as i64 * ds);
                fb.ins().store(emit::mem(), value, at, 0);
            }
        });
    });
    // Columns past the blocks (of the rows in blocks), then the rows past the blocks.
    let (done_rows, done_cols) = (row_blocks * 16, col_blocks * 16);
    let col_rest = (
        fb.ins().iadd_imm_s(src, done_cols as i64),
        fb.ins().iadd_imm_s(dst, done_cols as i64 * ds),
    );
    move_bytes(fb, col_rest, (done_rows, cols - done_cols), (ss, ds));
    let row_rest = (
        fb.ins().iadd_imm_s(src, done_rows as i64 * ss),
        fb.ins().iadd_imm_s(dst, done_rows as i64),
    );
    move_bytes(fb, row_rest, (rows - done_rows, cols), (ss, ds));
}

/// The transpose of [`transpose_bytes`] one byte at a time.
fn move_bytes(
    fb: &mut FunctionBuilder,
    (src, dst): (Value, Value),
    (rows, cols): (usize, usize),
    (ss, ds): (i64, i64),
) {
    if rows == 0 || cols == 0 {
        return;
    }
    let (extents, strides) = emit::coalesce(&[rows, cols], &[vec![ss, 1], vec![1, ds]]);
    let zero = emit::iconst(fb, 0);
    emit::for_strided(fb, &extents, &strides, &[zero, zero], &mut |fb, at| {
        let v = emit::load_at(fb, types::I8, src, at[0]);
        emit::store_at(fb, v, dst, at[1]);
    });
}

/// Gathers the im2col rows (C bytes per tap, taps row-major) of output rows `begin..end`
/// from the padded pixels `[Hp·Wp][C]` at `padded` into `rows`, rows `row_len` bytes apart
/// (the bytes past K are left as they are: they meet zero weights). With column dilation
/// 1, the taps of one kernel row are `kw · C` contiguous bytes on both sides.
fn im2col(
    fb: &mut FunctionBuilder,
    g: &QConv2d,
    (padded, rows): (Value, Value),
    row_len: usize,
    (begin, end): (Value, Value),
) {
    let g = *g;
    let (runs, run) = match g.dw {
        1 => (1, g.kw * g.c),
        _ => (g.kw, g.c),
    };
    emit::for_range(fb, begin, end, 1, |fb, oy| {
        let src_row = emit::addr(fb, padded, oy, (g.sh * g.wp * g.c) as i64);
        let dst_row = emit::addr(fb, rows, oy, (g.ow * row_len) as i64);
        emit::for_count(fb, g.ow as i64, |fb, ox| {
            let src = emit::addr(fb, src_row, ox, (g.sw * g.c) as i64);
            let dst = emit::addr(fb, dst_row, ox, row_len as i64);
            for ky in 0..g.kh {
                for kx in 0..runs {
                    let from = ((ky * g.dh * g.wp + kx * g.dw) * g.c) as i64;
                    let to = ((ky * g.kw + kx) * g.c) as i64;
                    let (from, to) = (fb.ins().iadd_imm_s(src, from), fb.ins().iadd_imm_s(dst, to));
                    copy_row(fb, from, to, run);
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::TileSplit;

    #[test]
    fn pixels_split_into_tiles_of_nearly_equal_height() {
        for pixels in 1..300 {
            for max_rows in [6, 8] {
                let t = TileSplit::of(pixels, max_rows);
                assert_eq!(t.high * t.highs + (t.high - 1) * t.lows, pixels);
                assert!(t.high <= max_rows && t.highs > 0);
                assert_eq!(t.highs + t.lows, pixels.div_ceil(max_rows));
            }
        }
        let split = |p| TileSplit::of(p, 8);
        let t = |high, highs, lows| TileSplit { high, highs, lows };
        assert_eq!(split(49), t(7, 7, 0));
        assert_eq!(split(196), t(8, 21, 4));
        assert_eq!(split(6), t(6, 1, 0));
    }
}
