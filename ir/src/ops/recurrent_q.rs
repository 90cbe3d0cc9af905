//! The integer form of LSTM, GRU and RNN: 8-bit products, f32 gates and state.
//!
//! A recurrent layer is in this form when its `W` and `R` are int8 (quantization lowers
//! float layers to it, `qlift_passes::quantize::recurrent`). Then:
//!
//! - `X` is 8-bit (u8 or i8) quantized per tensor; `W` and `R` are int8, symmetric (zero
//!   point 0), per tensor or per row (axis 1: one scale per gate and hidden unit; the
//!   directions of a bidirectional layer share each row's scale, as the IR's per-axis
//!   parameters have one axis).
//! - Each step's products accumulate exactly in i32: `ax[j] = Σ W[j,i]·(x[i] − zx)` and
//!   `ah[j] = Σ R[j,k]·q(h[k])`, where `q(h) = clamp(round_even(h / s), −127, 127)` is the
//!   hidden state rounded to int8 with the attribute `state_scale` `s` for the product only.
//! - They are requantized to f32 pre-activations, `ax[j]·(sx·sw[j]) + Wb[j]` and
//!   `ah[j]·(s·sr[j]) + Rb[j]`, and the gate nonlinearities, the cell update and the
//!   hidden state are computed in f32 exactly as the float kernel computes them, with the
//!   JIT's approximations of tanh and the logistic function ([`crate::approx`]), so that
//!   the interpreter and the JIT agree bit for bit. Only `Sigmoid`, `Tanh` and `Relu`
//!   activations are allowed here (other layers stay float).
//! - `B`, `sequence_lens`, the initial states, `P` and every result are as in the float form.
//!
//! # Why the state stays f32
//!
//! The state is what a recurrence feeds back into itself thousands of times over a long
//! sequence or a stream: an error made in it is carried, and an error in a rounding that
//! is biased or too coarse accumulates. Keeping `h` and `c` in f32 and rounding `h` to 8 bits
//! only as an operand of the product (an error that enters each step once, bounded by
//! half a step of `s`, and is not fed back through the state's own storage) keeps the
//! integer layer within a few thousandths of fp32 after 1,000 steps. Measured over 1,000 steps of
//! real input (125 digits read row after row) on an LSTM 8 → 64 whose cells remember (forget
//! gates near 1, where the state's precision matters most), against the float layer with the
//! same (dequantized) weights, largest |h − h_fp32| in steps 1–10 / 991–1000 and the mean
//! (`tests/tests/recurrent_model.rs`, which prints them and holds each option to them):
//!
//! | state kept as | steps 1–10 | steps 991–1000 | mean |
//! |---|---|---|---|
//! | f32 (this form) | 0.0026 | 0.0081 | 0.00072 |
//! | i16 (h Q0.15, c Q4.11) | 0.0027 | 0.0061 | 0.00061 |
//! | int8 (h 1/127, c 16/127) | 0.079 | 0.21 (0.49 at step ~500) | 0.042 |
//!
//! An int8 state drifts (a remembering cell's small updates are below its step and are lost);
//! i16 is as good as f32 but costs a rounding, a clamp and a rescale of both states per step
//! and a second fixed-point format to keep bit-exact; f32 costs 4 bytes per unit and sample
//! and no time that matters, and its gate code is the float kernel's.
//! (The trained `digits_lstm` is no test of drift: its 1,000-step trajectory is chaotic, the
//! fp32 JIT and the f64 interpreter part ways by step 500, and every precision with them.)
//! See [`StatePrecision`] for the alternatives measured.

use super::recurrent::{Cell, Operands, Recurrent};
use super::EvalCtx;
use crate::approx;
use crate::text::type_to_string;
use crate::{Activation, Attrs, DType, Op, Tensor, TensorType};

/// The largest magnitude of a state rounded to int8 for a product (symmetric int8).
pub const STATE_MAX: i32 = 127;

/// The longest row of an integer product (input features or hidden units): `128·255·65,536`
/// is below `2^31`, so an i32 accumulator cannot wrap (the interpreter and the JIT would
/// agree on a wrapped sum, and both be wrong). Longer layers stay float.
pub const MAX_PRODUCT_LENGTH: usize = 65_536;

/// The quantization of a recurrent layer in the integer form, read from its operand types.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedRecurrent {
    /// `X`'s scale and zero point.
    pub x_scale: f32,
    /// `X`'s zero point.
    pub x_zero: i32,
    /// `W`'s scale per row (one when per tensor).
    pub w_scale: Vec<f32>,
    /// `R`'s scale per row (one when per tensor).
    pub r_scale: Vec<f32>,
    /// The scale `h` is rounded with for the recurrent product.
    pub state_scale: f32,
}

impl QuantizedRecurrent {
    /// The quantization of a layer with attributes `attrs` and operands `x`, `w`, `r`.
    pub fn of(
        r: &Recurrent,
        attrs: &Attrs,
        x: &TensorType,
        w: &TensorType,
        rw: &TensorType,
    ) -> Result<QuantizedRecurrent, String> {
        let xq = match &x.quant {
            Some(q) if matches!(x.dtype, DType::U8 | DType::I8) && q.axis.is_none() => q,
            _ => {
                return Err(format!(
                    "X of an integer recurrent layer must be 8-bit quantized per tensor, found {}",
                    type_to_string(x)
                ))
            }
        };
        let weight = |t: &TensorType, what: &str| -> Result<Vec<f32>, String> {
            match &t.quant {
                Some(q) if t.dtype == DType::I8 && (q.axis.is_none() || q.axis == Some(1)) && q.zero_point.iter().all(|&z| z == 0) => {
                    if q.axis.is_some() && q.scale.len() != r.rows() {
                        return Err(format!("{what} has {} row scales for {} rows", q.scale.len(), r.rows()));
                    }
                    Ok(q.scale.clone())
                }
                _ => Err(format!("{what} of an integer recurrent layer must be int8, symmetric, per tensor or per row (axis 1), found {}", type_to_string(t))),
            }
        };
        let input = w.shape.dims().get(2).and_then(|d| d.fixed()).unwrap_or(0);
        if input > MAX_PRODUCT_LENGTH || r.hidden > MAX_PRODUCT_LENGTH {
            return Err(format!("{input} inputs and {} hidden units: an integer recurrent layer's rows are at most {MAX_PRODUCT_LENGTH} long", r.hidden));
        }
        let state_scale = attrs.float("state_scale")?;
        if !(state_scale.is_finite() && state_scale > 0.0) {
            return Err(format!(
                "state_scale {state_scale} must be positive and finite"
            ));
        }
        for a in r.activations.iter().flatten() {
            if !matches!(a, Activation::Sigmoid | Activation::Tanh | Activation::Relu) {
                return Err(format!(
                    "activation {a:?} has no integer recurrent form (Sigmoid, Tanh and Relu do)"
                ));
            }
        }
        Ok(QuantizedRecurrent {
            x_scale: xq.scale[0],
            x_zero: xq.zero_point[0],
            w_scale: weight(w, "W")?,
            r_scale: weight(rw, "R")?,
            state_scale,
        })
    }

    /// The f32 factor of row `j`'s input product: `sx·sw[j]`.
    pub fn input_factor(&self, j: usize) -> f32 {
        self.x_scale * self.w_scale[if self.w_scale.len() == 1 { 0 } else { j }]
    }

    /// The f32 factor of row `j`'s recurrent product: `s·sr[j]`.
    pub fn recurrent_factor(&self, j: usize) -> f32 {
        self.state_scale * self.r_scale[if self.r_scale.len() == 1 { 0 } else { j }]
    }

    /// `1/s`, which the state is multiplied by before rounding.
    pub fn inverse_state_scale(&self) -> f32 {
        1.0 / self.state_scale
    }
}

/// A state value rounded to int8 for the product: `clamp(round_even(v·inv), ±STATE_MAX)`
/// (as the JIT: a saturating conversion, NaN to 0, then the integer clamp).
pub fn round_state(v: f32, inv: f32) -> i32 {
    ((v * inv).round_ties_even() as i32).clamp(-STATE_MAX, STATE_MAX)
}

/// Checks the types of `X`, `W` and `R` of the integer form (the verifier's part).
pub(crate) fn check_types(
    r: &Recurrent,
    attrs: &Attrs,
    x: &TensorType,
    w: &TensorType,
    rw: &TensorType,
) -> Result<(), String> {
    QuantizedRecurrent::of(r, attrs, x, w, rw).map(|_| ())
}

/// How the state is stored between steps: f32 (this form), or rounded to fixed point
/// after every step, the alternatives measured against it (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StatePrecision {
    /// f32 `h` and `c`: the integer form's.
    F32,
    /// `h` and `c` rounded to `bits`-bit integers after every step with these scales.
    Fixed {
        /// Bits of the stored integers (8 or 16).
        bits: u32,
        /// The scale of the stored `h`.
        h_scale: f32,
        /// The scale of the stored `c`.
        c_scale: f32,
    },
}

impl StatePrecision {
    /// `v` as it is stored with `scale` (f32: as it is).
    fn store(self, v: f32, pick: impl Fn(f32, f32) -> f32) -> f32 {
        match self {
            StatePrecision::F32 => v,
            StatePrecision::Fixed {
                bits,
                h_scale,
                c_scale,
            } => {
                let scale = pick(h_scale, c_scale);
                let max = ((1i64 << (bits - 1)) - 1) as f32;
                (v / scale).round_ties_even().clamp(-max, max) * scale
            }
        }
    }
}

/// The integer form of a recurrent op, evaluated (the interpreter's).
pub(crate) fn eval(cx: &EvalCtx, r: &Recurrent, ops: &Operands) -> Result<Vec<Tensor>, String> {
    eval_with(cx, r, ops, StatePrecision::F32)
}

/// A recurrent op in the integer form evaluated with its state stored in `precision`
/// (`StatePrecision::F32` is the op itself; the others are for measuring drift). `inputs`
/// and `types` are its operands by slot.
pub fn eval_state_precision(
    op: &Op,
    inputs: &[Option<&Tensor>],
    types: &[Option<&TensorType>],
    precision: StatePrecision,
) -> Result<Vec<Tensor>, String> {
    let cx = EvalCtx {
        op,
        inputs,
        input_types: types,
        output_types: &[],
        options: &crate::interp::Options::default(),
    };
    let r = Recurrent::of(op.kind, &op.attrs)?;
    let ops = Operands::of(&cx, &r)?;
    eval_with(&cx, &r, &ops, precision)
}

fn eval_with(
    cx: &EvalCtx,
    r: &Recurrent,
    ops: &Operands,
    precision: StatePrecision,
) -> Result<Vec<Tensor>, String> {
    let ty = |i: usize| {
        cx.input_types
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| format!("operand {i}'s type is missing"))
    };
    let q = QuantizedRecurrent::of(r, &cx.op.attrs, ty(0)?, ty(1)?, ty(2)?)?;
    let (input, hidden, rows, dirs) = (ops.input, r.hidden, r.rows(), r.dirs());
    let x: Vec<i32> = ops
        .x
        .to_i64_vec()?
        .iter()
        .map(|&v| v as i32 - q.x_zero)
        .collect();
    let w: Vec<i32> = ops.w.to_i64_vec()?.iter().map(|&v| v as i32).collect();
    let rw: Vec<i32> = ops.r.to_i64_vec()?.iter().map(|&v| v as i32).collect();
    let st = ops.strides(r);
    let state_len = dirs * ops.batch * hidden;
    let (mut y, mut yh, mut yc) = (
        vec![0f32; ops.seq * state_len],
        vec![0f32; state_len],
        vec![0f32; state_len],
    );
    let inv = q.inverse_state_scale();
    // Σ m[row]·v over `n` columns, wrapping in i32 as the JIT's accumulators.
    let dot = |m: &[i32], row: usize, n: usize, v: &[i32]| -> i32 {
        m[row * n..(row + 1) * n]
            .iter()
            .zip(v)
            .fold(0i32, |s, (&a, &b)| s.wrapping_add(a.wrapping_mul(b)))
    };
    for (d, &reverse) in r.reverse.iter().enumerate() {
        let (wd, rd) = (
            &w[d * rows * input..(d + 1) * rows * input],
            &rw[d * rows * hidden..(d + 1) * rows * hidden],
        );
        let biases = ops.bias.as_ref().map(|b| {
            (
                &b[d * 2 * rows..d * 2 * rows + rows],
                &b[d * 2 * rows + rows..(d + 1) * 2 * rows],
            )
        });
        let peep = ops
            .peep
            .as_ref()
            .map(|p| &p[d * 3 * hidden..(d + 1) * 3 * hidden]);
        let cell = Step {
            r,
            acts: &r.activations[d],
            peep,
        };
        // Row j of a product: its accumulator requantized, plus the bias when there is one.
        let requant = |acc: i32, factor: f32, bias: Option<&[f32]>, j: usize| -> f32 {
            let v = acc as f32 * factor;
            bias.map_or(v, |b| v + b[j])
        };
        for b in 0..ops.batch {
            let len = ops.length(b)?;
            let s0 = st.state(d, b);
            let mut h: Vec<f32> = ops
                .h0
                .as_ref()
                .map_or(vec![0.0; hidden], |v| v[s0..s0 + hidden].to_vec());
            let mut c: Vec<f32> = ops
                .c0
                .as_ref()
                .map_or(vec![0.0; hidden], |v| v[s0..s0 + hidden].to_vec());
            let (mut gx, mut gh) = (vec![0f32; rows], vec![0f32; rows]);
            for s in 0..len {
                let t = if reverse { len - 1 - s } else { s };
                let xt = &x[st.x(t, b)..st.x(t, b) + input];
                for (j, g) in gx.iter_mut().enumerate() {
                    *g = requant(
                        dot(wd, j, input, xt),
                        q.input_factor(j),
                        biases.map(|b| b.0),
                        j,
                    );
                }
                let hq: Vec<i32> = h.iter().map(|&v| round_state(v, inv)).collect();
                let recurrent_rows = if r.cell == Cell::Gru && !r.linear_before_reset {
                    2 * hidden
                } else {
                    rows
                };
                for (j, g) in gh.iter_mut().enumerate().take(recurrent_rows) {
                    *g = requant(
                        dot(rd, j, hidden, &hq),
                        q.recurrent_factor(j),
                        biases.map(|b| b.1),
                        j,
                    );
                }
                // GRU with the reset gate before the product: R_h·q(r ⊙ h), as the JIT.
                let late = |rh: &[f32], gh: &mut [f32]| {
                    let rq: Vec<i32> = rh.iter().map(|&v| round_state(v, inv)).collect();
                    for (j, g) in gh.iter_mut().enumerate().skip(2 * hidden) {
                        *g = requant(
                            dot(rd, j, hidden, &rq),
                            q.recurrent_factor(j),
                            biases.map(|b| b.1),
                            j,
                        );
                    }
                };
                cell.run(&gx, &mut gh, &mut h, &mut c, &late);
                for k in 0..hidden {
                    h[k] = precision.store(h[k], |hs, _| hs);
                    c[k] = precision.store(c[k], |_, cs| cs);
                }
                let at = st.y(t, d, b);
                y[at..at + hidden].copy_from_slice(&h);
            }
            yh[s0..s0 + hidden].copy_from_slice(&h);
            yc[s0..s0 + hidden].copy_from_slice(&c);
        }
    }
    ops.results(r, y, yh, yc)
}

/// One direction's gate arithmetic in f32, in the float kernel's order of operations.
struct Step<'a> {
    r: &'a Recurrent,
    acts: &'a [Activation],
    /// `P[i, o, f]` of this direction.
    peep: Option<&'a [f32]>,
}

/// An activation as the JIT computes it in f32 (only those the integer form allows).
fn activate(a: Activation, v: f32) -> f32 {
    match a {
        Activation::Sigmoid => approx::sigmoid(v),
        Activation::Tanh => approx::tanh(v),
        _ => approx::relu(v),
    }
}

impl Step<'_> {
    fn clip(&self, v: f32) -> f32 {
        match self.r.clip {
            Some(c) => approx::fmin(approx::fmax(v, -c), c),
            None => v,
        }
    }

    /// One step over the hidden units: `gx` and `gh` hold the pre-activation rows (for
    /// GRU without `linear_before_reset`, `late` fills the hidden gate's recurrent rows from
    /// `r ⊙ h`); `h` and `c` are updated in place.
    fn run(
        &self,
        gx: &[f32],
        gh: &mut [f32],
        h: &mut [f32],
        c: &mut [f32],
        late: &dyn Fn(&[f32], &mut [f32]),
    ) {
        let n = self.r.hidden;
        let acts = self.acts;
        match self.r.cell {
            Cell::Lstm => {
                for k in 0..n {
                    let pre = |g: usize| gx[g * n + k] + gh[g * n + k];
                    let peep =
                        |v: f32, g: usize, c: f32| self.peep.map_or(v, |p| v + p[g * n + k] * c);
                    let ck = c[k];
                    let gi = activate(acts[0], self.clip(peep(pre(0), 0, ck)));
                    let gf = if self.r.input_forget {
                        1.0 - gi
                    } else {
                        activate(acts[0], self.clip(peep(pre(2), 2, ck)))
                    };
                    let gc = activate(acts[1], self.clip(pre(3)));
                    let c2 = gf * ck + gi * gc;
                    let go = activate(acts[0], self.clip(peep(pre(1), 1, c2)));
                    c[k] = c2;
                    h[k] = go * activate(acts[2], c2);
                }
            }
            Cell::Gru => {
                let lbr = self.r.linear_before_reset;
                let mut rh = vec![0f32; n];
                for k in 0..n {
                    let z = activate(acts[0], self.clip(gx[k] + gh[k]));
                    let rg = activate(acts[0], self.clip(gx[n + k] + gh[n + k]));
                    gh[k] = z;
                    if lbr {
                        gh[n + k] = rg;
                    } else {
                        rh[k] = rg * h[k];
                    }
                }
                if !lbr {
                    late(&rh, gh);
                }
                for k in 0..n {
                    let hr = if lbr {
                        gh[n + k] * gh[2 * n + k]
                    } else {
                        gh[2 * n + k]
                    };
                    let cand = activate(acts[1], self.clip(gx[2 * n + k] + hr));
                    let z = gh[k];
                    h[k] = (1.0 - z) * cand + z * h[k];
                }
            }
            Cell::Rnn => {
                for k in 0..n {
                    h[k] = activate(acts[0], self.clip(gx[k] + gh[k]));
                }
            }
        }
    }
}
