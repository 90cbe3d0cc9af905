//! f32 depthwise convolutions (group = input channels, one input channel per group, any
//! channel multiplier) over one or two spatial axes, any kernel size, stride, dilation and
//! padding, on the FMA micro-kernel [`fma_rows`]: eight outputs of one row per 256-bit
//! vector, one broadcast weight per tap. Through the GEMM panels of the `wide-f32` form a
//! depthwise channel is a one-row product that gathers its whole window per position; here
//! each tap costs one FMA per eight outputs.
//!
//! Per sample, channel by channel (a run-time loop, so code size does not grow with the
//! channel count; ranges of channels run on up to [`MAX_PARTS`] threads, each with its own
//! scratch):
//! 1. the input plane is copied into zero-padded *phase planes*: for column stride `s`,
//!    phase `p` holds padded columns `s·j + p`, so that tap `kx` (padded column
//!    `s·ox + kx·dw`) of eight neighbouring outputs reads eight consecutive elements of
//!    phase `kx·dw mod s` at column `ox + ⌊kx·dw / s⌋`. Only phases some tap reads are
//!    built. The padding is zeroed once per call of a part, as no channel's copy writes it;
//! 2. one call of the micro-kernel computes the plane of each output channel of the input
//!    channel, with the bias and the fused activation's clamp.
//!
//! The sums run over the taps in order with one rounding per FMA, so they differ from the
//! interpreter's f64 sums by rounding only.

use super::fma_rows::{self, DepthwiseRows, LANES};
use super::im2col::{fma_float_conv, ConvShape};
use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::{types, ConstantData, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;

/// Parts (threads) a convolution's channels are split into at most: each has its own
/// scratch in the workspace.
const MAX_PARTS: usize = 4;

/// Most taps of one kernel row: the micro-kernel unrolls a kernel row, so wider kernels go
/// to the other forms to keep its code small.
const MAX_ROW_TAPS: usize = 64;

/// A depthwise convolution's shape, one spatial axis given as rows of one.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    c: usize,
    mult: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    pt: usize,
    pl: usize,
}

impl Geometry {
    /// The geometry of a depthwise convolution over one or two spatial axes.
    fn of(s: &ConvShape) -> Option<Geometry> {
        let rank = s.in_sp.len();
        let depthwise = s.group == s.channels && s.cg == 1 && s.mg > 0;
        let attrs_fit =
            s.strides.len() == rank && s.dilations.len() == rank && s.pads.len() >= rank;
        if !depthwise || !(1..=2).contains(&rank) || !attrs_fit {
            return None;
        }
        let axes = |v: &[usize], one: usize| {
            if rank == 2 {
                (v[0], v[1])
            } else {
                (one, v[0])
            }
        };
        let ((h, w), (kh, kw), (oh, ow)) =
            (axes(&s.in_sp, 1), axes(&s.kernel, 1), axes(&s.out_sp, 1));
        let ((sh, sw), (dh, dw), (pt, pl)) = (
            axes(&s.strides, 1),
            axes(&s.dilations, 1),
            axes(&s.pads[..rank], 0),
        );
        let g = Geometry {
            c: s.channels,
            mult: s.mg,
            h,
            w,
            kh,
            kw,
            oh,
            ow,
            sh,
            sw,
            dh,
            dw,
            pt,
            pl,
        };
        let positive = [h, w, kh, kw, oh, ow, sh, sw, dh, dw]
            .iter()
            .all(|&v| v > 0);
        (positive && kw <= MAX_ROW_TAPS).then_some(g)
    }

    /// The phase and the column within it of tap `kx`.
    fn tap(&self, kx: usize) -> (usize, usize) {
        ((kx * self.dw) % self.sw, kx * self.dw / self.sw)
    }
}

/// The phase planes of one channel.
struct Planes {
    /// The phase each plane holds.
    phases: Vec<usize>,
    /// Rows (padded input rows `0..rows`) and columns of each plane; bytes of one.
    rows: usize,
    cols: usize,
    bytes: usize,
}

impl Planes {
    fn of(g: &Geometry) -> Planes {
        let mut phases: Vec<usize> = (0..g.kw).map(|kx| g.tap(kx).0).collect();
        phases.sort_unstable();
        phases.dedup();
        let reach = g.tap(g.kw - 1).1;
        let rows = (g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1;
        let cols = (g.ow.next_multiple_of(LANES) + reach).next_multiple_of(LANES);
        Planes {
            phases,
            rows,
            cols,
            bytes: rows * cols * 4,
        }
    }

    /// The byte offset of tap `kx` from its output's address in plane 0.
    fn tap_offset(&self, g: &Geometry, kx: usize) -> usize {
        let (phase, col) = g.tap(kx);
        let slot = self.phases.iter().position(|&p| p == phase).unwrap_or(0);
        slot * self.bytes + col * 4
    }

    /// Copies the input plane at `x` into the planes at `dst` (the padding is left alone):
    /// per plane, the input rows that land in it, each the columns `lo..hi` that read
    /// inside the input (compile-time ranges).
    fn emit_copy(&self, fb: &mut FunctionBuilder, g: &Geometry, x: Value, dst: Value) {
        let in_rows = g.h.min(self.rows.saturating_sub(g.pt));
        let s = g.sw;
        for (slot, &p) in self.phases.iter().enumerate() {
            // Plane column j reads input column s·j + p − pl.
            let lo = g.pl.saturating_sub(p).div_ceil(s);
            let hi = match (g.w + g.pl).checked_sub(p + 1) {
                Some(last) => (last / s + 1).min(self.cols),
                None => 0,
            };
            if hi <= lo || in_rows == 0 {
                continue;
            }
            let first = s * lo + p - g.pl;
            let at = slot * self.bytes + (g.pt * self.cols + lo) * 4;
            let plane = fb.ins().iadd_imm_s(dst, at as i64);
            emit::for_count(fb, in_rows as i64, |fb, iy| {
                let src = emit::addr(fb, x, iy, (g.w * 4) as i64);
                let src = fb.ins().iadd_imm_s(src, (first * 4) as i64);
                let row = emit::addr(fb, plane, iy, (self.cols * 4) as i64);
                copy_strided(fb, src, row, hi - lo, s);
            });
        }
    }
}

/// Copies `n` f32 from every `s`-th element at `src` to consecutive ones at `dst`: four a
/// vector when `s` is 1; when `s` is 2, four a step from two vector loads and one shuffle
/// of the even elements (only while the step's last read, element `2i + 7`, is one the copy
/// reads itself: nothing past the source row's run is touched), the rest one at a time.
fn copy_strided(fb: &mut FunctionBuilder, src: Value, dst: Value, n: usize, s: usize) {
    let copy_one = |fb: &mut FunctionBuilder, i: Value, ty| {
        let from = emit::addr(fb, src, i, 4 * s as i64);
        let to = emit::addr(fb, dst, i, 4);
        let v = fb.ins().load(ty, emit::mem(), from, 0);
        fb.ins().store(emit::mem(), v, to, 0);
    };
    match s {
        1 => emit::for_lanes(fb, n as i64, 4, &mut |fb, i, vector| {
            copy_one(fb, i, if vector { types::F32X4 } else { types::F32 })
        }),
        2 => {
            // Steps j with 8j + 7 ≤ 2(n − 1).
            let steps = (2 * n).checked_sub(9).map_or(0, |m| m / 8 + 1);
            let evens: Vec<u8> = [0u8, 2, 4, 6]
                .iter()
                .flat_map(|f| (0..4).map(move |b| 4 * f + b))
                .collect();
            let evens = fb.func.dfg.immediates.push(ConstantData::from(evens));
            emit::for_count(fb, steps as i64, |fb, j| {
                let from = emit::addr(fb, src, j, 32);
                let lo = fb.ins().load(types::I8X16, emit::mem(), from, 0);
                let hi = fb.ins().load(types::I8X16, emit::mem(), from, 16);
                let v = fb.ins().shuffle(lo, hi, evens);
                let to = emit::addr(fb, dst, j, 16);
                fb.ins().store(emit::mem(), v, to, 0);
            });
            let (start, end) = (
                emit::iconst(fb, 4 * steps as i64),
                emit::iconst(fb, n as i64),
            );
            emit::for_range(fb, start, end, 1, |fb, i| copy_one(fb, i, types::F32));
        }
        _ => emit::for_count(fb, n as i64, |fb, i| copy_one(fb, i, types::F32)),
    }
}

/// Stores zeros in the `bytes` (a multiple of 16) at `dst`.
fn zero(fb: &mut FunctionBuilder, dst: Value, bytes: usize) {
    let z = fb.ins().f32const(0.0);
    let z = fb.ins().splat(types::F32X4, z);
    emit::for_count(fb, (bytes / 16) as i64, |fb, i| {
        let at = emit::addr(fb, dst, i, 16);
        fb.ins().store(emit::mem(), z, at, 0);
    });
}

/// Emits a float Conv in this form and returns true when it applies: a depthwise f32 Conv
/// over one or two spatial axes with constant weights (and bias), AVX2 with FMA; false
/// leaves it to the other forms.
pub(super) fn conv(k: &mut Kernel) -> Result<bool, String> {
    if !fma_float_conv(k)? {
        return Ok(false);
    }
    let (x, w, y) = (k.input(0)?, k.input(1)?, k.output(0));
    let bias = k.optional(2);
    let Some(g) = Geometry::of(&ConvShape::of(k)?) else {
        return Ok(false);
    };
    let (xptr, wptr, yptr, bptr) = (x.ptr, w.ptr, y.ptr, bias.map(|b| b.ptr));
    let planes = Planes::of(&g);
    let i32_of = |v: usize| {
        i32::try_from(v)
            .map_err(|_| format!("convolution too large for the f32 depthwise kernel ({v} bytes)"))
    };
    let (rows, vectors) = DepthwiseRows::blocking(g.ow);
    let shape = DepthwiseRows {
        out_rows: g.oh,
        out_cols: g.ow,
        rows,
        vectors,
        kernel_rows: g.kh,
        taps: (0..g.kw)
            .map(|kx| i32_of(planes.tap_offset(&g, kx)))
            .collect::<Result<_, _>>()?,
        kernel_row_step: i32_of(g.dh * planes.cols * 4)?,
        in_row: i32_of(g.sh * planes.cols * 4)?,
        bias: bptr.is_some(),
        clamp: k.float_clamp()?,
    };
    let kernel = k.machine_code(&fma_rows::depthwise_rows(&shape)?, 4)?;
    k.form = "depthwise-f32";
    let part_bytes = (planes.phases.len() * planes.bytes).next_multiple_of(64);
    let (in_plane, out_plane, taps) = (g.h * g.w * 4, g.oh * g.ow * 4, g.kh * g.kw * 4);
    let mult = g.mult;
    // Channels `begin..end` of one sample (context: input, output, scratch, weights, bias)
    // in the scratch of part `part`.
    let task = k.task(|fb, module, [ctx, begin, end, part]| {
        let [x, y, ws, w, b] =
            [0, 8, 16, 24, 32].map(|at| fb.ins().load(types::I64, emit::mem(), ctx, at));
        let kernel = module.declare_func_in_func(kernel, fb.func);
        let scratch = emit::addr(fb, ws, part, part_bytes as i64);
        zero(fb, scratch, part_bytes);
        emit::for_range(fb, begin, end, 1, |fb, c| {
            let xc = emit::addr(fb, x, c, in_plane as i64);
            planes.emit_copy(fb, &g, xc, scratch);
            let first = fb.ins().imul_imm_s(c, mult as i64);
            emit::for_count(fb, mult as i64, |fb, q| {
                let o = fb.ins().iadd(first, q);
                let wo = emit::addr(fb, w, o, taps as i64);
                let yo = emit::addr(fb, y, o, out_plane as i64);
                let bo = emit::addr(fb, b, o, 4);
                fb.ins().call(kernel, &[scratch, wo, yo, bo]);
            });
        });
        Ok(())
    })?;
    let ws = k.workspace(MAX_PARTS * part_bytes + 64);
    let context = k.fb.ins().iadd_imm_s(ws, (MAX_PARTS * part_bytes) as i64);
    let samples = k.input_samples()?;
    k.for_each(samples, |k, n| {
        let fb = &mut *k.fb;
        let xn = emit::addr(fb, xptr, n, (g.c * in_plane) as i64);
        let yn = emit::addr(fb, yptr, n, (g.c * mult * out_plane) as i64);
        let b = bptr.unwrap_or_else(|| emit::iconst(fb, 0));
        for (slot, v) in [xn, yn, ws, wptr, b].into_iter().enumerate() {
            fb.ins().store(emit::mem(), v, context, (8 * slot) as i32);
        }
        k.parallel_for(
            task,
            context,
            g.c as i64,
            MAX_PARTS,
            (g.c * mult * g.oh * g.ow * g.kh * g.kw) as u64,
        )
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(kw: usize, sw: usize, dw: usize) -> Geometry {
        Geometry {
            c: 1,
            mult: 1,
            h: 1,
            w: 20,
            kh: 1,
            kw,
            oh: 1,
            ow: 9,
            sh: 1,
            sw,
            dh: 1,
            dw,
            pt: 0,
            pl: 1,
        }
    }

    /// Taps land in the phase of their padded column, and only phases some tap reads get a
    /// plane: stride 2 with dilation 2 reads even columns only.
    #[test]
    fn phases_and_tap_offsets() {
        let g = geometry(5, 2, 1);
        let p = Planes::of(&g);
        assert_eq!(p.phases, vec![0, 1]);
        assert_eq!(p.cols, 16 + 8);
        let offsets: Vec<usize> = (0..5).map(|kx| p.tap_offset(&g, kx)).collect();
        assert_eq!(offsets, vec![0, p.bytes, 4, p.bytes + 4, 8]);
        let g = geometry(3, 2, 2);
        let p = Planes::of(&g);
        assert_eq!(p.phases, vec![0]);
        assert_eq!(
            (0..3).map(|kx| p.tap_offset(&g, kx)).collect::<Vec<_>>(),
            vec![0, 4, 8]
        );
    }
}
