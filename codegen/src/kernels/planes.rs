//! Padded copies of input planes (8-bit, 16-bit or f32 elements) in a kernel's workspace,
//! for kernels that read windows with 16-byte vector loads (direct convolutions, vector
//! pools): the padding holds a fill value (a convolution's input zero point, a max pool's
//! minimum), and the area ends with at least 16 elements of slack, so that a load may run
//! past a row's last element, or the last plane's, without leaving the workspace.

use crate::emit;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;

/// `planes` input planes of `h × w` elements copied into `hp × wp` planes, input row `y` at
/// padded row `top + y`, column `left`. Extents count elements; the byte counts below
/// ([`Padded::plane`], [`Padded::bytes`]) are for bytes, and scale by the element size.
#[derive(Clone, Copy, Debug)]
pub(super) struct Padded {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub hp: usize,
    pub wp: usize,
    pub top: usize,
    pub left: usize,
}

impl Padded {
    /// Bytes of one padded plane.
    pub fn plane(&self) -> usize {
        self.hp * self.wp
    }

    /// Workspace bytes: every padded plane, then the slack, in whole 16-byte steps.
    pub fn bytes(&self) -> usize {
        (self.planes * self.plane() + 16).next_multiple_of(16)
    }

    /// Fills the workspace area at `ws` with `fill` (16 bytes a store), then copies every
    /// input row of the planes at `x` to its place (8 bytes at a time, the rest in 4-, 2-
    /// and 1-byte pieces).
    pub fn emit(&self, fb: &mut FunctionBuilder, x: Value, ws: Value, fill: u8) {
        let f = fb.ins().iconst(types::I8, fill as i64);
        let fv = fb.ins().splat(types::I8X16, f);
        emit::for_count(fb, (self.bytes() / 16) as i64, |fb, i| {
            let at = emit::addr(fb, ws, i, 16);
            fb.ins().store(emit::mem(), fv, at, 0);
        });
        let (h, w) = (self.h, self.w);
        emit::for_count(fb, self.planes as i64, |fb, ch| {
            emit::for_count(fb, h as i64, |fb, y| {
                let src = fb.ins().imul_imm_s(ch, (h * w) as i64);
                let src = fb.ins().iadd(x, src);
                let src = emit::addr(fb, src, y, w as i64);
                let to = fb.ins().imul_imm_s(ch, self.plane() as i64);
                let dst = fb.ins().iadd(ws, to);
                let yy = fb.ins().iadd_imm_s(y, self.top as i64);
                let dst = emit::addr(fb, dst, yy, self.wp as i64);
                let dst = fb.ins().iadd_imm_s(dst, self.left as i64);
                copy_row(fb, src, dst, w);
            });
        });
    }
}

impl Padded {
    /// One plane of elements of `fill`'s type (the extents count elements): writes exactly
    /// the `hp × wp` elements of the padded plane at `dst` (`fill` in the padding, the
    /// `h × w` input plane at `x` inside), nothing outside them, so that threads may pad
    /// different planes of one area at once.
    pub fn emit_plane(&self, fb: &mut FunctionBuilder, x: Value, dst: Value, fill: Fill) {
        let e = fill.size();
        let (top, bottom) = (self.top, self.hp - self.top - self.h);
        let right = self.wp - self.left - self.w;
        let whole_rows = |fb: &mut FunctionBuilder, first: usize, count: usize| {
            if count > 0 {
                let at = fb.ins().iadd_imm_s(dst, (first * self.wp * e) as i64);
                fill_bytes(fb, at, count * self.wp * e, fill);
            }
        };
        whole_rows(fb, 0, top);
        emit::for_count(fb, self.h as i64, |fb, y| {
            let src = emit::addr(fb, x, y, (self.w * e) as i64);
            let row = fb.ins().iadd_imm_s(y, top as i64);
            let row = emit::addr(fb, dst, row, (self.wp * e) as i64);
            fill_bytes(fb, row, self.left * e, fill);
            let inside = fb.ins().iadd_imm_s(row, (self.left * e) as i64);
            copy_row(fb, src, inside, self.w * e);
            let after = fb.ins().iadd_imm_s(inside, (self.w * e) as i64);
            fill_bytes(fb, after, right * e, fill);
        });
        whole_rows(fb, top + self.h, bottom);
    }
}

/// The value the padding of a [`Padded`] plane holds; its type is the planes' element type.
#[derive(Clone, Copy, Debug)]
pub(super) enum Fill {
    /// Bytes (a convolution's 8-bit zero point, an 8-bit max pool's minimum).
    U8(u8),
    /// 16-bit integers (a 16-bit convolution input's zero point).
    I16(i16),
    /// f32 (−inf for a float max pool).
    F32(f32),
}

impl Fill {
    /// Bytes of one element.
    pub fn size(self) -> usize {
        match self {
            Fill::U8(_) => 1,
            Fill::I16(_) => 2,
            Fill::F32(_) => 4,
        }
    }

    /// The fill repeated over `bytes` bytes (1, 2, 4 or 8, a multiple of the element size),
    /// little-endian, as an integer of that width.
    fn word(self, bytes: usize) -> u64 {
        let (bits, size) = match self {
            Fill::U8(v) => (v as u64, 1),
            Fill::I16(v) => (v as u16 as u64, 2),
            Fill::F32(v) => (v.to_bits() as u64, 4),
        };
        debug_assert!(
            bytes.is_multiple_of(size),
            "a {bytes}-byte piece of {size}-byte elements"
        );
        (0..bytes / size).fold(0, |acc, i| acc | bits << (8 * size * i))
    }
}

/// Stores `fill` in the `n` bytes (a compile-time count, a multiple of the element size) at
/// `dst`: 16 bytes a store in a loop, then pieces of 8, 4, 2 and 1 (nothing outside the
/// bytes is written; every piece starts on an element, so each holds whole elements).
fn fill_bytes(fb: &mut FunctionBuilder, dst: Value, n: usize, fill: Fill) {
    if n >= 16 {
        let f = emit::iconst_of(fb, types::I64, fill.word(8) as i64);
        let v = fb.ins().splat(types::I64X2, f);
        emit::for_count(fb, (n / 16) as i64, |fb, i| {
            let at = emit::addr(fb, dst, i, 16);
            fb.ins().store(emit::mem(), v, at, 0);
        });
    }
    let mut at = n / 16 * 16;
    for (size, ty) in [
        (8, types::I64),
        (4, types::I32),
        (2, types::I16),
        (1, types::I8),
    ] {
        if (n % 16) & size != 0 {
            let v = emit::iconst_of(fb, ty, fill.word(size) as i64);
            fb.ins().store(emit::mem(), v, dst, at as i32);
            at += size;
        }
    }
}

/// Rows at least this long are copied 64 bytes a step in a loop rather than unrolled, so
/// that code size does not grow with a long row (a whole plane taken as one row).
const LOOP_ROW: usize = 128;

/// Copies `w` bytes (a compile-time count) from `src` to `dst`: whole 64-byte pieces in a
/// loop (rows of at least [`LOOP_ROW`] bytes; four 16-byte copies a step, so that the loop's
/// own instructions are few per byte), whole 8-byte words, then at most one 4-, 2- and
/// 1-byte piece (nothing outside the row is read or written).
pub(super) fn copy_row(fb: &mut FunctionBuilder, src: Value, dst: Value, w: usize) {
    const STEP: usize = 64;
    if w >= LOOP_ROW {
        emit::for_count(fb, (w / STEP) as i64, |fb, i| {
            let from = emit::addr(fb, src, i, STEP as i64);
            let to = emit::addr(fb, dst, i, STEP as i64);
            for at in (0..STEP as i32).step_by(16) {
                let v = fb.ins().load(types::I8X16, emit::mem(), from, at);
                fb.ins().store(emit::mem(), v, to, at);
            }
        });
        let done = (w / STEP * STEP) as i64;
        let (src, dst) = (
            fb.ins().iadd_imm_s(src, done),
            fb.ins().iadd_imm_s(dst, done),
        );
        return copy_row(fb, src, dst, w % STEP);
    }
    let pieces = std::iter::repeat_n((8, types::I64), w / 8).chain(
        [(4, types::I32), (2, types::I16), (1, types::I8)]
            .into_iter()
            .filter(|&(size, _)| (w % 8) & size != 0),
    );
    let mut at = 0;
    for (size, ty) in pieces {
        let v = fb.ins().load(ty, emit::mem(), src, at as i32);
        fb.ins().store(emit::mem(), v, dst, at as i32);
        at += size;
    }
}

/// Stores the first `count` bytes of the 16-byte vector `v` at `out`: whole pieces of 8, 4, 2
/// and 1 bytes (each lane-aligned, so each is one extract and one store; an f32x4 `v` takes
/// multiples of 4 only). Every kernel that stores a prefix of a vector of results (pools,
/// blocks of requantized products) uses it.
pub(super) fn store_prefix(fb: &mut FunctionBuilder, v: Value, out: Value, count: usize) {
    if count >= 16 {
        fb.ins().store(emit::mem(), v, out, 0);
        return;
    }
    let mut at = 0;
    for (size, ty) in [
        (8, types::I64X2),
        (4, types::I32X4),
        (2, types::I16X8),
        (1, types::I8X16),
    ] {
        if count - at >= size {
            let lanes = if ty == types::I8X16 {
                v
            } else {
                fb.ins().bitcast(ty, super::requant::little_endian(), v)
            };
            let piece = fb.ins().extractlane(lanes, (at / size) as u8);
            fb.ins().store(emit::mem(), piece, out, at as i32);
            at += size;
        }
    }
}
