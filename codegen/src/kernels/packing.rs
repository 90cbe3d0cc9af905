//! What every packed form of the integer products starts from, below all of them: the
//! constant weights minus their zero point with the input zero point folded into the biases
//! ([`packed_rows`]), and the u8×i8 dot-product tree Cranelift folds into `vpdpbusd`
//! ([`vnni_dot`]).

use super::Kernel;
use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::{DType, OpKind};

/// The values the packed forms lay out (the im2col form's `pack`, the direct, pointwise
/// and wide forms' own layouts): weight rows `w − zw` and biases with the input zero point
/// folded in (see [`Packed`]).
pub(super) struct PackedRows {
    /// `[channels][len]` weights minus their zero point.
    pub rows: Vec<Vec<i16>>,
    /// `bias[c] − zx · Σ_k rows[c][k]` (wrapping i32).
    pub folded: Vec<i32>,
    /// Whether VNNI's u8×i8 form applies: the target has it, the activations are u8 and
    /// every weight fits i8.
    pub vnni: bool,
}

impl PackedRows {
    /// Whether every weight fits i8 after its zero point: the wide micro-kernels' u8×i8
    /// quads (`vpdpbusd`) then apply to u8 activations.
    pub fn fits_i8(&self) -> bool {
        self.rows.iter().flatten().all(|&v| i8::try_from(v).is_ok())
    }
}

/// [`PackedRows`] of the node's constant weights, `None` when they cannot be packed.
pub(super) fn packed_rows(
    k: &Kernel,
    channels: usize,
    len: usize,
    at: impl Fn(usize, usize) -> usize,
) -> Result<Option<PackedRows>, String> {
    let (x, w) = (k.input(0)?, k.input(1)?);
    let Some(wt) = w.constant.clone() else {
        return Ok(None);
    };
    // MatMulInteger (dynamic quantization's product) carries no parameters on its types:
    // weights without a zero-point operand are packed as they are, and the activations'
    // zero point (an operand computed per call) is subtracted by the kernel as it loads them.
    let integer = k.op.kind == OpKind::MatMulInteger && k.optional(3).is_none();
    let (zx, wq, bias) = match (x.ty.quant.clone(), w.ty.quant.clone()) {
        (None, None) if integer => (0, None, vec![0i64; channels]),
        (Some(xq), Some(wq)) if xq.axis.is_none() => {
            let bias = match k.optional(2) {
                None => vec![0i64; channels],
                Some(b) => match &b.constant {
                    Some(t) => t.to_i64_vec()?,
                    None => return Ok(None),
                },
            };
            (xq.channel(0).1 as i64, Some(wq), bias)
        }
        _ => return Ok(None),
    };
    let values = wt.to_i64_vec()?;
    let mut rows: Vec<Vec<i16>> = Vec::with_capacity(channels);
    let mut folded: Vec<i32> = Vec::with_capacity(channels);
    for c in 0..channels {
        let zw = wq.as_ref().map_or(0, |wq| {
            wq.channel(if wq.axis.is_some() { c } else { 0 }).1 as i64
        });
        let row = (0..len).map(|t| values[at(c, t)] - zw);
        let row: Vec<i16> = row
            .map(|v| {
                i16::try_from(v)
                    .map_err(|_| format!("weight {v} after its zero point does not fit i16"))
            })
            .collect::<Result<_, _>>()?;
        let sum: i64 = row.iter().map(|&v| v as i64).sum();
        folded.push(bias[c].wrapping_sub(zx.wrapping_mul(sum)) as i32);
        rows.push(row);
    }
    // u8 activations against weights that fit i8 after their zero point: VNNI's u8×i8 form.
    let vnni = k.has_vnni()
        && !integer
        && x.ty.dtype == DType::U8
        && rows.iter().flatten().all(|&v| i8::try_from(v).is_ok());
    Ok(Some(PackedRows { rows, folded, vnni }))
}

/// `acc + Σ_{i<4} w[4j+i]·x[4j+i]` in each i32 lane j: the tree Cranelift folds into one
/// `vpdpbusd` (see `product::dot_block`). `w` is an i8x16 of weights given as its `swiden_low` and
/// `swiden_high` halves (so several products can share them), `x` an i8x16 of u8 activations.
pub(super) fn vnni_dot(
    fb: &mut FunctionBuilder,
    acc: Value,
    (wl, wh): (Value, Value),
    x: Value,
) -> Value {
    let (xl, xh) = (fb.ins().uwiden_low(x), fb.ins().uwiden_high(x));
    let lo = fb.ins().imul(wl, xl);
    let hi = fb.ins().imul(wh, xh);
    let (lol, loh) = (fb.ins().swiden_low(lo), fb.ins().swiden_high(lo));
    let lo_pairs = fb.ins().iadd_pairwise(lol, loh);
    let (hil, hih) = (fb.ins().swiden_low(hi), fb.ins().swiden_high(hi));
    let hi_pairs = fb.ins().iadd_pairwise(hil, hih);
    let quads = fb.ins().iadd_pairwise(lo_pairs, hi_pairs);
    fb.ins().iadd(quads, acc)
}
