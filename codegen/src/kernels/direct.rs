//! Direct convolution for kernels at least 2 wide (3×3, 5×5, 7×7, depthwise or not; rows
//! in quads of four taps) and for one input channel per group (depthwise, single-channel
//! input), with 128-bit vectors: QConv with u8 activations, on
//! targets with byte shuffles (SSSE3); four-byte dot products with VNNI where the weights
//! fit i8 and the CPU has it, else with `pmaddwd` pairs ([`Dot4`]).
//!
//! Such convolutions have few taps per input channel (a 3×3 kernel: 9), so the im2col form
//! of [`super::product`] spends much of its time gathering bytes one by one. Here the input
//! planes are first copied into the workspace with their padding filled with the zero
//! point; then, for a block of four neighbouring outputs of one row, each (input channel,
//! kernel row and quad of its taps) is one 16-byte load and one byte shuffle (`pshufb`) that puts in i32 lane j
//! the four input bytes output j multiplies by that kernel row, and one `vpdpbusd` per
//! output channel against the kernel row's weights (the same four in every lane, the fourth
//! 0 for a 3-wide kernel) adds the four outputs' products. Up to [`CHANNEL_BLOCK`] output
//! channels share each shuffled row. A channel's four accumulators then requantize as one
//! vector (`requant::requantize_x4`) and are stored as one 32-bit word.
//!
//! The arithmetic is the interpreter's: `Σ x·(w − zw) + (bias − zx·Σ(w − zw))` in wrapping
//! i32 (the input zero point folded into the bias as in [`super::packing::packed_rows`]),
//! then the fixed-point requantization of each output channel.

use super::conv2d::{ConvRequant, QConv2d};
use super::dot4::{BlockStore, Dot4};
use super::packing::packed_rows;
use super::requant::{ChannelParams, ChannelTable};
use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::{types, ConstantData, InstBuilder, Value};
use cranelift_frontend::{FunctionBuilder, Variable};

/// Output positions per block: the four i32 lanes of one vector.
const BLOCK: usize = 4;

/// Accumulator registers per channel block: output channels accumulated together (one
/// register each with VNNI, two with pairs), each shuffled input row serving all of them.
const CHANNEL_BLOCK: usize = 8;

/// Output channels up to which a non-depthwise kernel is emitted (each channel's code is
/// straight-line, with its weights and requantization constants as immediates); wider ones
/// use the im2col form. Depthwise convolutions loop over channels at run time instead.
const MAX_CHANNELS: usize = 256;

/// Emits the convolution when it has this form and returns true; false leaves it to the
/// im2col form (nothing emitted).
pub(super) fn conv(k: &mut Kernel) -> Result<bool, String> {
    let Some(g) = geometry(k)? else {
        return Ok(false);
    };
    let taps = g.cg * g.kh * g.kw;
    // Weights [M][C/group][KH][KW] as packed rows of C/group·KH·KW taps.
    let Some(packed) = packed_rows(k, g.m, taps, |c, t| c * taps + t)? else {
        return Ok(false);
    };
    let Some(dot) = Dot4::of(k, &packed)? else {
        return Ok(false);
    };
    let Some(ConvRequant { zx, rq, signed }) = g.requant(k)? else {
        return Ok(false);
    };
    // Each (output channel, input channel, kernel row, quad of the row's taps): four
    // weights (zeros past KW), repeated in the four lanes.
    let quads = g.kw.div_ceil(4);
    let mut weights = Vec::with_capacity(g.m * g.cg * g.kh * quads * 16);
    for row in &packed.rows {
        for r in 0..g.cg * g.kh {
            for q in 0..quads {
                let quad = [0, 1, 2, 3].map(|i| {
                    if 4 * q + i < g.kw {
                        row[r * g.kw + 4 * q + i]
                    } else {
                        0
                    }
                });
                weights.extend_from_slice(&dot.weight_bytes(quad));
            }
        }
    }
    // Depthwise convolutions loop over their channels at run time, each channel's bias and
    // requantization read from a table, so that any channel count compiles to the same code.
    let table = if g.cg == 1 && g.mg() == 1 {
        ChannelTable::bytes(&rq, &packed.folded)
    } else {
        None
    };
    if table.is_none() && g.m > MAX_CHANNELS {
        return Ok(false);
    }
    let table = table.map(|t| k.data(t, 64)).transpose()?;
    let wptr = k.data(weights, 16)?;
    k.form = if g.cg == 1 {
        "direct-depthwise"
    } else {
        "direct"
    };
    let padded = g.padded(g.c);
    let plane = padded.plane();
    let groups = g.group;
    let ws = k.workspace(padded.bytes());
    let (x, yop) = (k.input(0)?, k.output(0));
    let (xptr, yptr) = (x.ptr, yop.ptr);
    let samples = k.input_samples()?;
    let stores = BlockStore {
        rq: &rq,
        signed,
        i64_mul: k.has_i64x2_mul(),
    };
    let fb = &mut *k.fb;
    // Lane j of a shuffled row holds bytes j·sw .. j·sw + 4 of the loaded 16.
    let mask: Vec<u8> = (0..BLOCK)
        .flat_map(|j| (0..4).map(move |i| (j * g.sw + i) as u8))
        .collect();
    let mask = fb.func.dfg.immediates.push(ConstantData::from(mask));
    let (out_plane, in_plane) = (g.oh * g.ow, g.h * g.w);
    let channel_bytes = (g.cg * g.kh * quads * 16) as i64;
    emit::for_dynamic(fb, samples, |fb, n| {
        let xn = emit::addr(fb, xptr, n, (g.c * in_plane) as i64);
        let yn = emit::addr(fb, yptr, n, (g.m * out_plane) as i64);
        padded.emit(fb, xn, ws, zx as u8);
        // One group: its input planes at `src`, its output channels `chans`.
        let group = |fb: &mut FunctionBuilder, src: Value, chans: &[Channel]| {
            emit::for_count(fb, g.oh as i64, |fb, oh| {
                let row0 = fb.ins().imul_imm_s(oh, (g.sh * g.wp) as i64);
                let row0 = fb.ins().iadd(src, row0);
                let blocks = g.ow.div_ceil(BLOCK);
                let block = |fb: &mut FunctionBuilder, b: Value, count: usize| {
                    let col = fb.ins().imul_imm_s(b, (BLOCK * g.sw) as i64);
                    let base = fb.ins().iadd(row0, col);
                    for chunk in chans.chunks(CHANNEL_BLOCK / dot.accumulators()) {
                        let accs: Vec<Vec<Variable>> = chunk
                            .iter()
                            .map(|c| {
                                let bias = c.bias(fb, &packed.folded);
                                dot.start(fb, bias)
                            })
                            .collect();
                        // Input channel `ci` of the group (plane at `base + ci · plane`, weights
                        // at `ci · kh · quads · 16` after each channel's own).
                        let body =
                            |fb: &mut FunctionBuilder, plane_base: Value, ci: Option<Value>| {
                                for r in 0..g.kh {
                                    for q in 0..quads {
                                        let v = fb.ins().load(
                                            types::I8X16,
                                            emit::mem(),
                                            plane_base,
                                            (r * g.dh * g.wp + 4 * q) as i32,
                                        );
                                        let xs = fb.ins().shuffle(v, v, mask);
                                        for (c, acc) in chunk.iter().zip(&accs) {
                                            let (wbase, offset) = c.weights(wptr, channel_bytes);
                                            let wbase = match ci {
                                                Some(ci) => emit::addr(
                                                    fb,
                                                    wbase,
                                                    ci,
                                                    (g.kh * quads * 16) as i64,
                                                ),
                                                None => wbase,
                                            };
                                            let w = dot.load_weights(
                                                fb,
                                                wbase,
                                                offset + ((r * quads + q) * 16) as i32,
                                            );
                                            dot.step(fb, acc, w, xs);
                                        }
                                    }
                                }
                            };
                        // A loop over several channels: Cranelift places pure arithmetic at
                        // its first use, so straight-line channels would load every input
                        // row before the first product and spill them.
                        if g.cg == 1 {
                            body(fb, base, None);
                        } else {
                            emit::for_count(fb, g.cg as i64, |fb, ci| {
                                let plane_base = emit::addr(fb, base, ci, plane as i64);
                                body(fb, plane_base, Some(ci));
                            });
                        }
                        for (c, acc) in chunk.iter().zip(&accs) {
                            let bias = c.bias(fb, &packed.folded);
                            let acc = dot.finish(fb, acc, bias);
                            let out = fb.ins().imul_imm_s(oh, g.ow as i64);
                            let first = fb.ins().imul_imm_s(b, BLOCK as i64);
                            let out = fb.ins().iadd(out, first);
                            match c {
                                Channel::Known(c) => {
                                    let out = fb.ins().iadd_imm_s(out, (c * out_plane) as i64);
                                    let out = fb.ins().iadd(yn, out);
                                    stores.store(fb, acc, *c, out, count);
                                }
                                Channel::Loop {
                                    out: plane_out,
                                    params,
                                    ..
                                } => {
                                    let out = fb.ins().iadd(*plane_out, out);
                                    stores.store_with(fb, acc, params, out, count);
                                }
                            }
                        }
                    }
                };
                let full = g.ow / BLOCK;
                if full > 0 {
                    let (zero, end) = (emit::iconst(fb, 0), emit::iconst(fb, full as i64));
                    emit::for_range(fb, zero, end, 1, |fb, b| block(fb, b, BLOCK));
                }
                if full < blocks {
                    let b = emit::iconst(fb, full as i64);
                    block(fb, b, g.ow - full * BLOCK);
                }
            });
        };
        match table {
            Some(table) => emit::for_count(fb, groups as i64, |fb, c| {
                let src = emit::addr(fb, ws, c, plane as i64);
                let weights = emit::addr(fb, wptr, c, channel_bytes);
                let out = emit::addr(fb, yn, c, out_plane as i64);
                let params = ChannelTable::load(fb, table, c);
                group(
                    fb,
                    src,
                    &[Channel::Loop {
                        weights,
                        out,
                        params,
                    }],
                );
            }),
            None => {
                for gi in 0..groups {
                    let src = fb.ins().iadd_imm_s(ws, (gi * g.cg * plane) as i64);
                    let chans: Vec<Channel> = (gi * g.mg()..(gi + 1) * g.mg())
                        .map(Channel::Known)
                        .collect();
                    group(fb, src, &chans);
                }
            }
        }
    });
    Ok(true)
}

/// An output channel of the kernel: known at compile time (its bias, weights offset and
/// requantization are immediates), or the channel of a run-time loop (depthwise).
enum Channel {
    Known(usize),
    Loop {
        /// Its weights, its output plane, its table record.
        weights: Value,
        out: Value,
        params: ChannelParams,
    },
}

impl Channel {
    /// The folded bias (i32).
    fn bias(&self, fb: &mut FunctionBuilder, folded: &[i32]) -> Value {
        match self {
            Channel::Known(c) => fb.ins().iconst(types::I32, folded[*c] as i64),
            Channel::Loop { params, .. } => params.bias,
        }
    }

    /// The base and byte offset of its weights (each channel `channel_bytes` from `wptr`).
    fn weights(&self, wptr: Value, channel_bytes: i64) -> (Value, i32) {
        match self {
            Channel::Known(c) => (wptr, (*c as i64 * channel_bytes) as i32),
            Channel::Loop { weights, .. } => (*weights, 0),
        }
    }
}

/// The convolution's shape when the node is a 2-D QConv with u8 activations, an 8-bit
/// result, a kernel at least 2 wide (or 1 wide with one input channel per group) without
/// dilation along the row, and a row stride that keeps four outputs within 16 loaded bytes
/// (`conv` checks the channel count against [`MAX_CHANNELS`]).
fn geometry(k: &Kernel) -> Result<Option<QConv2d>, String> {
    Ok(QConv2d::of(k)?.filter(|q| {
        // A 1-wide kernel would use one byte of each lane's four: a matrix product does better.
        let wide = q.kw >= 2 || q.c == q.group;
        wide && q.dw == 1 && q.sw * (BLOCK - 1) + 4 <= 16
    }))
}
