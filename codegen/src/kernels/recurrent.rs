//! Recurrent layers: LSTM, GRU and RNN in f32, as the interpreter computes them
//! (`qlift_ir`'s `ops/recurrent.rs`).
//!
//! Samples of a batch are independent, so the kernel runs one direction of one sample at a
//! time through its sequence, with that sample's state in the workspace (its size is then
//! fixed whatever the batch and the sequence length, either of which may be the run-time
//! batch of the compiled model: `[seq, N, input]` with a symbolic sequence makes the
//! sequence the batch axis). The input products `W·x + Wb` of a chunk of [`CHUNK`] steps
//! come first (blocks of `ROW_BLOCK` rows of `W`, each block through every step of the
//! chunk while it is in L1), then each step computes `R·h + Rb` the same way for one vector
//! (dot products four lanes at a time over the contiguous rows of the ONNX layout, which
//! the weights keep), then the gate nonlinearities and the state update fused in one pass
//! over the hidden units, four lanes at a time, through the same inline approximations as
//! the elementwise kernels. Steps past a sample's `sequence_lens` are
//! zero in `Y`; a length outside `0..=seq` makes the kernel fail.

use super::elementwise::{clamp_f32, fconst};
use super::recurrent_rows::{rows_times, rows_times_many, Form, IntVector};
use super::{approx, math, Kernel};
use crate::emit;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::{
    Activation, Cell, DType, Dim, OpKind, QuantizedRecurrent, Recurrent, RECURRENT_STATE_MAX,
};

/// f32 lanes of a vector step.
const LANES: i64 = 4;

/// An extent of `X` as an i64: the run-time batch, or a constant.
fn extent(fb: &mut FunctionBuilder, d: Dim, batch: Value) -> Result<Value, String> {
    match d {
        Dim::Batch => Ok(batch),
        Dim::Fixed(n) => Ok(emit::iconst(fb, n as i64)),
        d => Err(format!("extent {d} of X is not bound")),
    }
}

/// `a` at `v` (f32 or f32x4).
fn activation(fb: &mut FunctionBuilder, a: Activation, v: Value) -> Value {
    let ty = fb.func.dfg.value_type(v);
    match a {
        Activation::Sigmoid => approx::sigmoid(fb, v),
        Activation::Tanh => approx::tanh(fb, v),
        Activation::Relu => math::float_unary(fb, OpKind::Relu, 0.0, 0.0, v),
        Activation::HardSigmoid(alpha, beta) => {
            math::float_unary(fb, OpKind::HardSigmoid, alpha, beta, v)
        }
        Activation::LeakyRelu(alpha) => math::float_unary(fb, OpKind::LeakyRelu, alpha, 0.0, v),
        Activation::ThresholdedRelu(alpha) => {
            math::float_unary(fb, OpKind::ThresholdedRelu, alpha, 0.0, v)
        }
        Activation::Elu(alpha) => math::float_unary(fb, OpKind::Elu, alpha, 0.0, v),
        Activation::Softsign => math::float_unary(fb, OpKind::Softsign, 0.0, 0.0, v),
        Activation::Softplus => math::float_unary(fb, OpKind::Softplus, 0.0, 0.0, v),
        Activation::Affine(alpha, beta) => {
            let (a, b) = (fconst(fb, ty, alpha), fconst(fb, ty, beta));
            let t = fb.ins().fmul(a, v);
            fb.ins().fadd(t, b)
        }
        Activation::ScaledTanh(alpha, beta) => {
            let (a, b) = (fconst(fb, ty, alpha), fconst(fb, ty, beta));
            let t = fb.ins().fmul(b, v);
            let t = approx::tanh(fb, t);
            fb.ins().fmul(a, t)
        }
    }
}

/// Where the pieces of one direction are: weights and optional biases/peepholes (element
/// offsets of this direction folded into the pointers).
struct Direction {
    w: Value,
    r: Value,
    /// The element types of the input and the recurrent products.
    w_form: Form,
    r_form: Form,
    /// `Wb` and `Rb` of this direction.
    bias: Option<(Value, Value)>,
    /// `P[i, o, f]` of this direction.
    peep: Option<Value>,
    reverse: bool,
    acts: Vec<Activation>,
}

/// Steps whose input products are computed together (`W` read from memory once for them,
/// see `rows_times_many`); the workspace holds their `gates·hidden` pre-activations.
const CHUNK: usize = 8;

/// Stores `n` zeros at element offset `at` of `base`.
fn zero_fill(fb: &mut FunctionBuilder, base: Value, at: Value, n: usize) {
    emit::for_lanes(fb, n as i64, LANES, &mut |fb, i, whole| {
        let ty = if whole { types::F32X4 } else { types::F32 };
        let z = fconst(fb, ty, 0.0);
        let o = fb.ins().iadd(at, i);
        let p = emit::addr(fb, base, o, 4);
        fb.ins().store(emit::mem(), z, p, 0);
    });
}

/// Copies `n` f32 elements from element offset `from` of `src` to `to` of `dst`.
fn copy(fb: &mut FunctionBuilder, src: Value, from: Value, dst: Value, to: Value, n: usize) {
    emit::for_lanes(fb, n as i64, LANES, &mut |fb, i, whole| {
        let ty = if whole { types::F32X4 } else { types::F32 };
        let (a, b) = (fb.ins().iadd(from, i), fb.ins().iadd(to, i));
        let (pa, pb) = (emit::addr(fb, src, a, 4), emit::addr(fb, dst, b, 4));
        let v = fb.ins().load(ty, emit::mem(), pa, 0);
        fb.ins().store(emit::mem(), v, pb, 0);
    });
}

/// `dst[k] = clamp(round_even(src[k]·inv), ±RECURRENT_STATE_MAX)` as i16 for `k < n`: the
/// state rounded for the integer recurrent product, as `qlift_ir::round_state` (a
/// saturating conversion, NaN to 0, then the integer clamp).
fn round_state(fb: &mut FunctionBuilder, src: Value, dst: Value, n: usize, inv: f32) {
    emit::for_lanes(fb, n as i64, 8, &mut |fb, i, whole| {
        let ps = emit::addr(fb, src, i, 4);
        let pd = emit::addr(fb, dst, i, 2);
        let (fty, ity) = if whole {
            (types::F32X4, types::I32X4)
        } else {
            (types::F32, types::I32)
        };
        let scale = fconst(fb, fty, inv);
        let (lo, hi) = (
            emit::iconst_of(fb, types::I32, -RECURRENT_STATE_MAX as i64),
            emit::iconst_of(fb, types::I32, RECURRENT_STATE_MAX as i64),
        );
        let (lo, hi) = if whole {
            (fb.ins().splat(ity, lo), fb.ins().splat(ity, hi))
        } else {
            (lo, hi)
        };
        let halves: Vec<Value> = (0..if whole { 2 } else { 1 })
            .map(|half| {
                let v = fb.ins().load(fty, emit::mem(), ps, half * 16);
                let v = fb.ins().fmul(v, scale);
                let v = fb.ins().nearest(v);
                let q = fb.ins().fcvt_to_sint_sat(ity, v);
                let q = fb.ins().smax(q, lo);
                fb.ins().smin(q, hi)
            })
            .collect();
        let packed = if whole {
            fb.ins().snarrow(halves[0], halves[1])
        } else {
            fb.ins().ireduce(types::I16, halves[0])
        };
        fb.ins().store(emit::mem(), packed, pd, 0);
    });
}

/// LSTM, GRU, RNN: in f32, or in the integer form (int8 `W` and `R`, 8-bit `X`; see
/// `qlift_ir`'s `ops/recurrent_q.rs`), whose products are integer and whose gates and
/// state are the f32 code below, bit for bit as the interpreter computes them.
pub(super) fn recurrent(k: &mut Kernel) -> Result<(), String> {
    let r = Recurrent::of(k.op.kind, &k.op.attrs)?;
    let cell = Cell::of(k.op.kind).ok_or("not a recurrent op")?;
    let x = k.input(0)?;
    let xd = x.ty.shape.dims().to_vec();
    let quant = if k.input(1)?.ty.dtype == DType::F32 {
        None
    } else {
        Some(QuantizedRecurrent::of(
            &r,
            &k.op.attrs,
            &x.ty,
            &k.input(1)?.ty,
            &k.input(2)?.ty,
        )?)
    };
    if xd.len() != 3 || (quant.is_none() && x.ty.dtype != DType::F32) {
        return Err(format!("X {} must be f32 of rank 3", x.ty.shape));
    }
    // The integer form's vector of X, and its bytes per element.
    let x_vector = IntVector::Bytes {
        signed: x.ty.dtype == DType::I8,
        zero: quant.as_ref().map_or(0, |q| q.x_zero),
    };
    let (x_bytes, weight_bytes) = if quant.is_some() { (1, 1) } else { (4, 4) };
    let input = xd[2].fixed().ok_or("X's input size must be known")?;
    let px = x.ptr;
    let (hidden, rows, dirs) = (r.hidden, r.rows(), r.dirs());
    let (seq_dim, batch_dim) = if r.batch_first {
        (xd[1], xd[0])
    } else {
        (xd[0], xd[1])
    };
    let optional = |k: &Kernel, i: usize| k.optional(i).map(|o| o.ptr);
    let (pw, pr) = (k.input(1)?.ptr, k.input(2)?.ptr);
    let (pb, plen, ph0) = (optional(k, 3), optional(k, 4), optional(k, 5));
    let (pc0, pp) = if cell == Cell::Lstm {
        (optional(k, 6), optional(k, 7))
    } else {
        (None, None)
    };
    let py = k.output(0).ptr;
    let pyh = k.output(1).ptr;
    let pyc = (cell == Cell::Lstm).then(|| k.outputs[2].ptr);
    // The integer form's per-row requantization factors: for each direction, the input
    // product's rows then the recurrent product's.
    let factors = match &quant {
        Some(q) => {
            let f: Vec<u8> = (0..dirs)
                .flat_map(|_| {
                    (0..rows)
                        .map(|j| q.input_factor(j))
                        .chain((0..rows).map(|j| q.recurrent_factor(j)))
                })
                .flat_map(f32::to_le_bytes)
                .collect();
            Some(k.data(f, 16)?)
        }
        None => None,
    };
    // Workspace: h, c, tmp (H each), gh (rows), gx (rows per step of a chunk) in f32, then
    // the rounded state (H i16, padded to whole vectors) of the integer form.
    let f32s = 3 * hidden + (1 + CHUNK) * rows;
    let ws = k.workspace(f32s * 4 + hidden.next_multiple_of(8) * 2);
    let fb = &mut *k.fb;
    let seq = extent(fb, seq_dim, k.batch)?;
    let batch = extent(fb, batch_dim, k.batch)?;
    let at = |fb: &mut FunctionBuilder, elems: usize| fb.ins().iadd_imm_s(ws, (elems * 4) as i64);
    let ph = at(fb, 0);
    let pc = at(fb, hidden);
    let ptmp = at(fb, 2 * hidden);
    let pgh = at(fb, 3 * hidden);
    let pgx = at(fb, 3 * hidden + rows);
    let phq = at(fb, f32s);
    let directions: Vec<Direction> = (0..dirs)
        .map(|d| {
            let off = |fb: &mut FunctionBuilder, p: Value, elems: usize| {
                fb.ins().iadd_imm_s(p, (elems * 4) as i64)
            };
            let w = fb
                .ins()
                .iadd_imm_s(pw, (d * rows * input * weight_bytes) as i64);
            let rr = fb
                .ins()
                .iadd_imm_s(pr, (d * rows * hidden * weight_bytes) as i64);
            let (w_form, r_form) = match factors {
                Some(f) => (
                    Form::Int {
                        vector: x_vector,
                        factors: off(fb, f, 2 * d * rows),
                    },
                    Form::Int {
                        vector: IntVector::Words,
                        factors: off(fb, f, (2 * d + 1) * rows),
                    },
                ),
                None => (Form::F32, Form::F32),
            };
            let bias = pb.map(|b| (off(fb, b, d * 2 * rows), off(fb, b, d * 2 * rows + rows)));
            let peep = pp.map(|p| off(fb, p, d * 3 * hidden));
            Direction {
                w,
                r: rr,
                w_form,
                r_form,
                bias,
                peep,
                reverse: r.reverse[d],
                acts: r.activations[d].clone(),
            }
        })
        .collect();
    let inv = quant.as_ref().map(QuantizedRecurrent::inverse_state_scale);
    // R's rows `first..first + count` times the vector at `src` (f32; rounded to i16 first
    // in the integer form) into gh.
    let recurrent_product =
        move |fb: &mut FunctionBuilder, dir: &Direction, src: Value, first: usize, count: usize| {
            let rb = dir.bias.map(|b| b.1);
            match inv {
                Some(inv) => {
                    round_state(fb, src, phq, hidden, inv);
                    rows_times(fb, dir.r_form, dir.r, rb, phq, hidden, first, count, pgh);
                }
                None => rows_times(fb, Form::F32, dir.r, rb, src, hidden, first, count, pgh),
            }
        };
    let clip = r.clip;
    let clipped = move |fb: &mut FunctionBuilder, v: Value| match clip {
        Some(c) => clamp_f32(fb, v, -c, c),
        None => v,
    };
    for (d, dir) in directions.iter().enumerate() {
        k.for_each(batch, |k, b| {
            // Offsets (in elements) of this sample's rows.
            let fb = &mut *k.fb;
            let (dconst, hconst) = (emit::iconst(fb, d as i64), emit::iconst(fb, dirs as i64));
            let state = if r.batch_first {
                let t = fb.ins().imul(b, hconst);
                fb.ins().iadd(t, dconst)
            } else {
                let t = fb.ins().imul(dconst, batch);
                fb.ins().iadd(t, b)
            };
            let state = fb.ins().imul_imm_s(state, hidden as i64);
            let len = match plen {
                Some(p) => {
                    let l = emit::load_at(fb, types::I32, p, b);
                    let l = fb.ins().sextend(types::I64, l);
                    let zero = emit::iconst(fb, 0);
                    let below = fb.ins().icmp(IntCC::SignedLessThan, l, zero);
                    let above = fb.ins().icmp(IntCC::SignedGreaterThan, l, seq);
                    let bad = fb.ins().bor(below, above);
                    k.fail_if(bad, "sequence_lens holds a length outside 0..=seq_length");
                    l
                }
                None => seq,
            };
            let fb = &mut *k.fb;
            let zero = emit::iconst(fb, 0);
            match ph0 {
                Some(p) => copy(fb, p, state, ph, zero, hidden),
                None => zero_fill(fb, ph, zero, hidden),
            }
            if cell == Cell::Lstm {
                match pc0 {
                    Some(p) => copy(fb, p, state, pc, zero, hidden),
                    None => zero_fill(fb, pc, zero, hidden),
                }
            }
            // Y's element offset of step t.
            let y_at = move |fb: &mut FunctionBuilder, t: Value| {
                let o = if r.batch_first {
                    let o = fb.ins().imul(b, seq);
                    let o = fb.ins().iadd(o, t);
                    let o = fb.ins().imul(o, hconst);
                    fb.ins().iadd(o, dconst)
                } else {
                    let o = fb.ins().imul(t, hconst);
                    let o = fb.ins().iadd(o, dconst);
                    let o = fb.ins().imul(o, batch);
                    fb.ins().iadd(o, b)
                };
                fb.ins().imul_imm_s(o, hidden as i64)
            };
            // Step s's time index (from the end in reverse) and X row.
            let time = move |fb: &mut FunctionBuilder, s: Value| {
                if dir.reverse {
                    let last = fb.ins().iadd_imm_s(len, -1);
                    fb.ins().isub(last, s)
                } else {
                    s
                }
            };
            let x_row = move |fb: &mut FunctionBuilder, t: Value| {
                let xo = if r.batch_first {
                    let o = fb.ins().imul(b, seq);
                    fb.ins().iadd(o, t)
                } else {
                    let o = fb.ins().imul(t, batch);
                    fb.ins().iadd(o, b)
                };
                let xo = fb.ins().imul_imm_s(xo, input as i64);
                emit::addr(fb, px, xo, x_bytes as i64)
            };
            // Steps in chunks of CHUNK: the input products of a chunk first (W read once for
            // the chunk), then the recurrence step by step.
            let zero = emit::iconst(fb, 0);
            emit::for_range(fb, zero, len, CHUNK as i64, |fb, s0| {
                let left = fb.ins().isub(len, s0);
                let chunk = emit::iconst(fb, CHUNK as i64);
                let count = fb.ins().smin(left, chunk);
                let wb = dir.bias.map(|b| b.0);
                let x_at = |fb: &mut FunctionBuilder, k: Value| {
                    let s = fb.ins().iadd(s0, k);
                    let t = time(fb, s);
                    x_row(fb, t)
                };
                rows_times_many(
                    fb, dir.w_form, dir.w, wb, input, 0, rows, count, &x_at, pgx, rows,
                );
                emit::for_dynamic(fb, count, |fb, k| {
                    let s = fb.ins().iadd(s0, k);
                    let t = time(fb, s);
                    let gx = fb.ins().imul_imm_s(k, (rows * 4) as i64);
                    let gx = fb.ins().iadd(pgx, gx);
                    let recurrent_rows = if cell == Cell::Gru && !r.linear_before_reset {
                        2 * hidden
                    } else {
                        rows
                    };
                    recurrent_product(fb, dir, ph, 0, recurrent_rows);
                    let late = |fb: &mut FunctionBuilder| {
                        recurrent_product(fb, dir, ptmp, 2 * hidden, hidden)
                    };
                    step(fb, cell, &r, dir, [ph, pc, ptmp, gx, pgh], &clipped, &late);
                    let yo = y_at(fb, t);
                    let zero = emit::iconst(fb, 0);
                    copy(fb, ph, zero, py, yo, hidden);
                });
            });
            if plen.is_some() {
                emit::for_range(fb, len, seq, 1, |fb, t| {
                    let yo = y_at(fb, t);
                    zero_fill(fb, py, yo, hidden);
                });
            }
            copy(fb, ph, zero, pyh, state, hidden);
            if let Some(yc) = pyc {
                copy(fb, pc, zero, yc, state, hidden);
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// One step's gate nonlinearities and state update over the hidden units (the products
/// are in `gx` and `gh`; GRU's hidden-gate recurrent rows come here when the reset gate
/// applies before the product: `late` computes them from `r ⊙ h` in `tmp`). `scratch` is
/// `[h, c, tmp, gx, gh]`.
#[allow(clippy::too_many_arguments)]
fn step(
    fb: &mut FunctionBuilder,
    cell: Cell,
    r: &Recurrent,
    dir: &Direction,
    scratch: [Value; 5],
    clipped: &dyn Fn(&mut FunctionBuilder, Value) -> Value,
    late: &dyn Fn(&mut FunctionBuilder),
) {
    let [ph, pc, ptmp, pgx, pgh] = scratch;
    let hidden = r.hidden;
    let h = hidden as i32 * 4;
    let load = |fb: &mut FunctionBuilder, ty, base: Value, i: Value, gate: i32| {
        let p = emit::addr(fb, base, i, 4);
        fb.ins().load(ty, emit::mem(), p, gate * h)
    };
    let store = |fb: &mut FunctionBuilder, v: Value, base: Value, i: Value, gate: i32| {
        let p = emit::addr(fb, base, i, 4);
        fb.ins().store(emit::mem(), v, p, gate * h);
    };
    let acts = &dir.acts;
    match cell {
        Cell::Lstm => emit::for_lanes(fb, hidden as i64, LANES, &mut |fb, i, whole| {
            let ty = if whole { types::F32X4 } else { types::F32 };
            let pre = |fb: &mut FunctionBuilder, gate: i32| {
                let a = load(fb, ty, pgx, i, gate);
                let b = load(fb, ty, pgh, i, gate);
                fb.ins().fadd(a, b)
            };
            let c = load(fb, ty, pc, i, 0);
            let peep = |fb: &mut FunctionBuilder, v: Value, gate: i32, c: Value| match dir.peep {
                Some(p) => {
                    let w = load(fb, ty, p, i, gate);
                    let t = fb.ins().fmul(w, c);
                    fb.ins().fadd(v, t)
                }
                None => v,
            };
            let vi = pre(fb, 0);
            let vi = peep(fb, vi, 0, c);
            let vi = clipped(fb, vi);
            let gi = activation(fb, acts[0], vi);
            let gf = if r.input_forget {
                let one = fconst(fb, ty, 1.0);
                fb.ins().fsub(one, gi)
            } else {
                let vf = pre(fb, 2);
                let vf = peep(fb, vf, 2, c);
                let vf = clipped(fb, vf);
                activation(fb, acts[0], vf)
            };
            let vc = pre(fb, 3);
            let vc = clipped(fb, vc);
            let gc = activation(fb, acts[1], vc);
            let kept = fb.ins().fmul(gf, c);
            let added = fb.ins().fmul(gi, gc);
            let c2 = fb.ins().fadd(kept, added);
            let vo = pre(fb, 1);
            let vo = peep(fb, vo, 1, c2);
            let vo = clipped(fb, vo);
            let go = activation(fb, acts[0], vo);
            let hc = activation(fb, acts[2], c2);
            let h2 = fb.ins().fmul(go, hc);
            store(fb, c2, pc, i, 0);
            store(fb, h2, ph, i, 0);
        }),
        Cell::Gru => {
            let lbr = r.linear_before_reset;
            // z into gh's first block; r·h into tmp (or r into gh's second block).
            emit::for_lanes(fb, hidden as i64, LANES, &mut |fb, i, whole| {
                let ty = if whole { types::F32X4 } else { types::F32 };
                let gate = |fb: &mut FunctionBuilder, g: i32| {
                    let a = load(fb, ty, pgx, i, g);
                    let b = load(fb, ty, pgh, i, g);
                    let v = fb.ins().fadd(a, b);
                    let v = clipped(fb, v);
                    activation(fb, acts[0], v)
                };
                let z = gate(fb, 0);
                let rg = gate(fb, 1);
                store(fb, z, pgh, i, 0);
                if lbr {
                    store(fb, rg, pgh, i, 1);
                } else {
                    let hv = load(fb, ty, ph, i, 0);
                    let rh = fb.ins().fmul(rg, hv);
                    store(fb, rh, ptmp, i, 0);
                }
            });
            if !lbr {
                late(fb);
            }
            emit::for_lanes(fb, hidden as i64, LANES, &mut |fb, i, whole| {
                let ty = if whole { types::F32X4 } else { types::F32 };
                let hx = load(fb, ty, pgx, i, 2);
                let hr = load(fb, ty, pgh, i, 2);
                let hr = if lbr {
                    let rg = load(fb, ty, pgh, i, 1);
                    fb.ins().fmul(rg, hr)
                } else {
                    hr
                };
                let v = fb.ins().fadd(hx, hr);
                let v = clipped(fb, v);
                let cand = activation(fb, acts[1], v);
                let z = load(fb, ty, pgh, i, 0);
                let hv = load(fb, ty, ph, i, 0);
                // (1 − z)·cand + z·h.
                let one = fconst(fb, ty, 1.0);
                let keep = fb.ins().fsub(one, z);
                let a = fb.ins().fmul(keep, cand);
                let bz = fb.ins().fmul(z, hv);
                let h2 = fb.ins().fadd(a, bz);
                store(fb, h2, ph, i, 0);
            });
        }
        Cell::Rnn => emit::for_lanes(fb, hidden as i64, LANES, &mut |fb, i, whole| {
            let ty = if whole { types::F32X4 } else { types::F32 };
            let a = load(fb, ty, pgx, i, 0);
            let b = load(fb, ty, pgh, i, 0);
            let v = fb.ins().fadd(a, b);
            let v = clipped(fb, v);
            let h2 = activation(fb, acts[0], v);
            store(fb, h2, ph, i, 0);
        }),
    }
}
