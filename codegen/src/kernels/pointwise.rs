//! Pointwise (1×1, stride 1, unpadded, one group) QConv of u8 activations, as a matrix
//! product whose vector lanes run along output positions (VNNI or `pmaddwd` pairs, see
//! [`super::dot4::Dot4`]).
//!
//! The im2col form of [`super::product`] would transpose the input byte by byte and reduce
//! every dot product across vector lanes. Here the input `[C][P]` is first interleaved in
//! the workspace, four channels at a time, into `[C/4][P][4]` (byte shuffles, 16 positions
//! a step): then lane j of a 16-byte load holds the four channels of position j, and one
//! `vpdpbusd` against an output channel's four weights (repeated in every lane) adds four
//! positions' products. Tiles of 8 positions × 4 output channels keep 8 accumulators in
//! registers, each load of the interleaved input serving four channels and each load of
//! weights two position vectors; every accumulator vector then requantizes as one vector
//! and is stored as one 32-bit word (see [`super::dot4::BlockStore`]).
//!
//! The arithmetic is the interpreter's: `Σ x·(w − zw) + (bias − zx·Σ(w − zw))` in wrapping
//! i32 (see [`super::product::packed_rows`]); channels past `C` in the last group of four
//! have zero weights.

use super::dot4::{BlockStore, Dot4};
use super::packing::packed_rows;
use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::{types, ConstantData, InstBuilder, Value};
use cranelift_frontend::{FunctionBuilder, Variable};
use qlift_ir::fixed_point::Requant;
use qlift_ir::{DType, OpKind};

/// Positions per tile: two vectors of four.
const TILE: usize = 8;

/// Output channels per tile.
const CHANNEL_BLOCK: usize = 4;

/// Positions interleaved per step: one 16-byte load of each of four channels.
const STEP: usize = 16;

/// Emits the convolution when it is pointwise with u8 activations and an 8-bit result and a
/// [`Dot4`] form applies, and returns true; false leaves it to the other forms (nothing
/// emitted).
pub(super) fn conv(k: &mut Kernel) -> Result<bool, String> {
    if k.op.kind != OpKind::QConv {
        return Ok(false);
    }
    let (x, w, y) = (k.input(0)?, k.input(1)?, k.output(0));
    let (xd, wd) = (x.dims(), w.dims());
    let attrs = &k.op.attrs;
    let pointwise = xd.len() >= 3
        && wd.len() == xd.len()
        && attrs.int("group")? == 1
        && wd[2..].iter().all(|&e| e == 1)
        && attrs.usizes("strides")?.iter().all(|&s| s == 1)
        && attrs.usizes("pads")?.iter().all(|&p| p == 0);
    if !pointwise || x.ty.dtype != DType::U8 || !matches!(y.ty.dtype, DType::U8 | DType::I8) {
        return Ok(false);
    }
    let (c, m, p): (usize, usize, usize) = (xd[1], wd[0], xd[2..].iter().product());
    let Some(packed) = packed_rows(k, m, c, |o, i| o * c + i)? else {
        return Ok(false);
    };
    let (Some(xq), Some(wq)) = (x.ty.quant.clone(), w.ty.quant.clone()) else {
        return Ok(false);
    };
    let Some(dot) = Dot4::of(k, &packed)? else {
        return Ok(false);
    };
    let yty = y.ty.clone();
    let (xptr, yptr) = (x.ptr, y.ptr);
    let rq = Requant::for_product(&xq, &wq, m, &yty, k.op.fused_activation()?)?;
    let quads = c.div_ceil(4);
    // Output channel o, quad q: weights o·c + 4q .. + 4 (zeros past c), repeated in 4 lanes.
    let mut weights = Vec::with_capacity(m * quads * 16);
    for row in &packed.rows {
        for q in 0..quads {
            let quad = [0, 1, 2, 3].map(|i| row.get(4 * q + i).copied().unwrap_or(0));
            weights.extend_from_slice(&dot.weight_bytes(quad));
        }
    }
    let wptr = k.data(weights, 16)?;
    k.form = "pointwise";
    let p_pad = p.next_multiple_of(TILE);
    let ws = k.workspace(quads * p_pad * 4);
    let samples = k.input_samples()?;
    let stores = BlockStore {
        rq: &rq,
        signed: yty.dtype == DType::I8,
        i64_mul: k.has_i64x2_mul(),
    };
    let fb = &mut *k.fb;
    emit::for_dynamic(fb, samples, |fb, n| {
        let xn = emit::addr(fb, xptr, n, (c * p) as i64);
        let yn = emit::addr(fb, yptr, n, (m * p) as i64);
        interleave(fb, xn, ws, c, p, p_pad);
        // Two position vectors per tile with VNNI, one with pairs (twice the accumulators).
        let vectors = TILE / 4 / dot.accumulators();
        let width = 4 * vectors;
        let tile = |fb: &mut FunctionBuilder, p0: Value, count: usize| {
            let xs = fb.ins().imul_imm_s(p0, 4);
            let xs = fb.ins().iadd(ws, xs);
            for block in (0..m).collect::<Vec<_>>().chunks(CHANNEL_BLOCK) {
                let accs: Vec<Vec<Vec<Variable>>> = block
                    .iter()
                    .map(|&o| {
                        (0..vectors)
                            .map(|_| {
                                let bias = fb.ins().iconst(types::I32, packed.folded[o] as i64);
                                dot.start(fb, bias)
                            })
                            .collect()
                    })
                    .collect();
                emit::for_count(fb, quads as i64, |fb, q| {
                    let at = emit::addr(fb, xs, q, (p_pad * 4) as i64);
                    let x: Vec<Value> = (0..vectors)
                        .map(|v| {
                            fb.ins()
                                .load(types::I8X16, emit::mem(), at, (16 * v) as i32)
                        })
                        .collect();
                    let wq = emit::addr(fb, wptr, q, 16);
                    for (&o, acc) in block.iter().zip(&accs) {
                        let w = dot.load_weights(fb, wq, (o * quads * 16) as i32);
                        for (a, &x) in acc.iter().zip(&x) {
                            dot.step(fb, a, w, x);
                        }
                    }
                });
                for (&o, acc) in block.iter().zip(&accs) {
                    for (v, a) in acc.iter().enumerate() {
                        let lanes = count.saturating_sub(4 * v).min(4);
                        if lanes == 0 {
                            continue;
                        }
                        let bias = fb.ins().iconst(types::I32, packed.folded[o] as i64);
                        let sum = dot.finish(fb, a, bias);
                        let out = fb.ins().iadd_imm_s(p0, (o * p + 4 * v) as i64);
                        let out = fb.ins().iadd(yn, out);
                        stores.store(fb, sum, o, out, lanes);
                    }
                }
            }
        };
        let full = p / width;
        if full > 0 {
            let (zero, end) = (emit::iconst(fb, 0), emit::iconst(fb, (full * width) as i64));
            emit::for_range(fb, zero, end, width as i64, |fb, p0| tile(fb, p0, width));
        }
        if full * width < p {
            let p0 = emit::iconst(fb, (full * width) as i64);
            tile(fb, p0, p - full * width);
        }
    });
    Ok(true)
}

/// Interleaves the `c` planes of `p` bytes at `x` into `[c/4][p_pad][4]` at `ws`: channel
/// `4q + i`, position `j` to byte `(q · p_pad + j) · 4 + i`; missing channels of the last
/// quad are 0. Whole steps of 16 positions shuffle four 16-byte loads into four stores; the
/// rest goes byte by byte (so nothing past the planes is read).
fn interleave(fb: &mut FunctionBuilder, x: Value, ws: Value, c: usize, p: usize, p_pad: usize) {
    let zero = fb.ins().iconst(types::I8, 0);
    let zero = fb.ins().splat(types::I8X16, zero);
    let bytes =
        |lo: u8, b: u8| -> Vec<u8> { (0..8u8).flat_map(|i| [lo + i, b + lo + i]).collect() };
    let mask =
        |fb: &mut FunctionBuilder, v: Vec<u8>| fb.func.dfg.immediates.push(ConstantData::from(v));
    // Byte interleave (punpcklbw / punpckhbw) then 16-bit interleave (punpcklwd / punpckhwd).
    let (lo8, hi8) = (mask(fb, bytes(0, 16)), mask(fb, bytes(8, 16)));
    let words = |lo: u8| -> Vec<u8> {
        (0..4u8)
            .flat_map(|i| {
                [
                    2 * (lo + i),
                    2 * (lo + i) + 1,
                    16 + 2 * (lo + i),
                    17 + 2 * (lo + i),
                ]
            })
            .collect()
    };
    let (lo16, hi16) = (mask(fb, words(0)), mask(fb, words(4)));
    let steps = p / STEP;
    let quad = |fb: &mut FunctionBuilder, q: Value, present: usize| {
        let planes = emit::addr(fb, x, q, (4 * p) as i64);
        let out = emit::addr(fb, ws, q, (p_pad * 4) as i64);
        if steps > 0 {
            emit::for_count(fb, steps as i64, |fb, s| {
                let at = emit::addr(fb, planes, s, STEP as i64);
                let v: Vec<Value> = (0..4)
                    .map(|i| {
                        if i < present {
                            fb.ins().load(types::I8X16, emit::mem(), at, (i * p) as i32)
                        } else {
                            zero
                        }
                    })
                    .collect();
                let (ab0, ab1) = (
                    fb.ins().shuffle(v[0], v[1], lo8),
                    fb.ins().shuffle(v[0], v[1], hi8),
                );
                let (cd0, cd1) = (
                    fb.ins().shuffle(v[2], v[3], lo8),
                    fb.ins().shuffle(v[2], v[3], hi8),
                );
                let to = emit::addr(fb, out, s, (STEP * 4) as i64);
                for (i, (ab, cd, m)) in [
                    (ab0, cd0, lo16),
                    (ab0, cd0, hi16),
                    (ab1, cd1, lo16),
                    (ab1, cd1, hi16),
                ]
                .into_iter()
                .enumerate()
                {
                    let v = fb.ins().shuffle(ab, cd, m);
                    fb.ins().store(emit::mem(), v, to, (i * 16) as i32);
                }
            });
        }
        for j in steps * STEP..p {
            for i in 0..4 {
                let v = if i < present {
                    fb.ins()
                        .load(types::I8, emit::mem(), planes, (i * p + j) as i32)
                } else {
                    fb.ins().iconst(types::I8, 0)
                };
                fb.ins().store(emit::mem(), v, out, (j * 4 + i) as i32);
            }
        }
    };
    let full = c / 4;
    if full > 0 {
        emit::for_count(fb, full as i64, |fb, q| quad(fb, q, 4));
    }
    if full * 4 < c {
        let q = emit::iconst(fb, full as i64);
        quad(fb, q, c - full * 4);
    }
}
