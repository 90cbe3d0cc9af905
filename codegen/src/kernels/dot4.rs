//! The four-byte dot products and block stores the direct and pointwise forms share, below
//! both: [`Dot4`] (VNNI `vpdpbusd`, or `pmaddwd` pairs) and [`BlockStore`] (a block of four
//! accumulators of one channel requantized and stored as one word).

use super::packing::{vnni_dot, PackedRows};
use super::planes::store_prefix;
use super::requant::{self, ChannelParams};
use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::{FunctionBuilder, Variable};
use qlift_ir::fixed_point::Requant;
use qlift_ir::DType;

/// How a kernel sums, in each i32 lane, four u8 activations times four weights (the
/// direct and pointwise forms' step). Both are exact in wrapping i32.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Dot4 {
    /// One `vpdpbusd` (AVX-VNNI / AVX512-VNNI) into one accumulator; weights fit i8.
    Vnni,
    /// Without VNNI: the activation bytes widened to i16 in two halves (two lanes' quads
    /// each) and one `pmaddwd` per half against the weights as i16, into two accumulators of
    /// pair sums that one pairwise add turns into the four lanes' sums at the end.
    Pairs,
}

impl Dot4 {
    /// The form for this kernel: VNNI where the weights allow it ([`PackedRows::vnni`]), else
    /// pairs of i16 products; `None` without byte shuffles (SSSE3) or for i8 activations.
    pub fn of(k: &Kernel, packed: &PackedRows) -> Result<Option<Dot4>, String> {
        if !k.has_byte_shuffle() || k.input(0)?.ty.dtype != DType::U8 {
            return Ok(None);
        }
        Ok(Some(if packed.vnni { Dot4::Vnni } else { Dot4::Pairs }))
    }

    /// Accumulator vectors per vector of four results.
    pub fn accumulators(self) -> usize {
        match self {
            Dot4::Vnni => 1,
            Dot4::Pairs => 2,
        }
    }

    /// The 16 bytes of one step's weights: the four weights in each of the four lanes as i8
    /// (VNNI), or in each 64-bit half as i16 (pairs).
    pub fn weight_bytes(self, quad: [i16; 4]) -> [u8; 16] {
        let mut out = [0u8; 16];
        for chunk in out.chunks_mut(if self == Dot4::Vnni { 4 } else { 8 }) {
            for (j, &w) in quad.iter().enumerate() {
                match self {
                    Dot4::Vnni => chunk[j] = w as i8 as u8,
                    Dot4::Pairs => chunk[2 * j..2 * j + 2].copy_from_slice(&w.to_le_bytes()),
                }
            }
        }
        out
    }

    /// Accumulators for one vector of results, starting from `bias` in every lane.
    pub fn start(self, fb: &mut FunctionBuilder, bias: Value) -> Vec<Variable> {
        let zero = fb.ins().iconst(types::I32, 0);
        let zero = fb.ins().splat(types::I32X4, zero);
        let b = fb.ins().splat(types::I32X4, bias);
        // Pair sums are added pairwise at the end: the bias goes in after that.
        let first = if self == Dot4::Vnni { b } else { zero };
        (0..self.accumulators())
            .map(|i| {
                let acc = fb.declare_var(types::I32X4);
                fb.def_var(acc, if i == 0 { first } else { zero });
                acc
            })
            .collect()
    }

    /// Loads one step's weights (16 bytes at `at + offset`, from constant data) in the form
    /// [`Dot4::step`] takes.
    pub fn load_weights(self, fb: &mut FunctionBuilder, at: Value, offset: i32) -> (Value, Value) {
        match self {
            Dot4::Vnni => {
                let w = fb
                    .ins()
                    .load(types::I8X16, emit::constant_mem(), at, offset);
                (fb.ins().swiden_low(w), fb.ins().swiden_high(w))
            }
            Dot4::Pairs => {
                let w = fb
                    .ins()
                    .load(types::I16X8, emit::constant_mem(), at, offset);
                (w, w)
            }
        }
    }

    /// Adds the products of the four activation bytes of each lane of `x` (an i8x16 of u8)
    /// with the weights `w` to the accumulators.
    pub fn step(self, fb: &mut FunctionBuilder, accs: &[Variable], w: (Value, Value), x: Value) {
        match self {
            Dot4::Vnni => {
                let sum = fb.use_var(accs[0]);
                let sum = vnni_dot(fb, sum, w, x);
                fb.def_var(accs[0], sum);
            }
            Dot4::Pairs => {
                for (&acc, half) in accs
                    .iter()
                    .zip([fb.ins().uwiden_low(x), fb.ins().uwiden_high(x)])
                {
                    // `pmaddwd`: Cranelift selects it for this tree (see product.rs).
                    let (xl, wl) = (fb.ins().swiden_low(half), fb.ins().swiden_low(w.0));
                    let (xh, wh) = (fb.ins().swiden_high(half), fb.ins().swiden_high(w.0));
                    let lo = fb.ins().imul(xl, wl);
                    let hi = fb.ins().imul(xh, wh);
                    let pairs = fb.ins().iadd_pairwise(lo, hi);
                    let sum = fb.use_var(acc);
                    let sum = fb.ins().iadd(sum, pairs);
                    fb.def_var(acc, sum);
                }
            }
        }
    }

    /// The four lanes' sums (plus the bias) of the accumulators.
    pub fn finish(self, fb: &mut FunctionBuilder, accs: &[Variable], bias: Value) -> Value {
        match self {
            Dot4::Vnni => fb.use_var(accs[0]),
            Dot4::Pairs => {
                let (a, b) = (fb.use_var(accs[0]), fb.use_var(accs[1]));
                let sums = fb.ins().iadd_pairwise(a, b);
                let bias = fb.ins().splat(types::I32X4, bias);
                fb.ins().iadd(sums, bias)
            }
        }
    }
}

/// How an op's blocks of four accumulators of one output channel become 8-bit results.
pub(super) struct BlockStore<'r> {
    pub rq: &'r Requant,
    /// An i8 result (else u8).
    pub signed: bool,
    /// The target multiplies i64x2 lanes (see [`requant::requantize_x4`]).
    pub i64_mul: bool,
}

impl BlockStore<'_> {
    /// Requantizes a block's accumulators (output channel `c`) and stores its first `count`
    /// results at `out`: one 32-bit store for a whole block.
    pub fn store(&self, fb: &mut FunctionBuilder, acc: Value, c: usize, out: Value, count: usize) {
        let rq = self.rq;
        let m = requant::channel(rq, c);
        let Some(v) = requant::requantize_x4(
            fb,
            acc,
            [m.m; 4],
            m.shift,
            rq.zero_point,
            rq.bounds,
            self.i64_mul,
        ) else {
            for lane in 0..count {
                let a = fb.ins().extractlane(acc, lane as u8);
                let v = requant::requantize(fb, a, m, rq.zero_point, rq.bounds);
                let v = fb.ins().ireduce(types::I8, v);
                fb.ins().store(emit::mem(), v, out, lane as i32);
            }
            return;
        };
        let bytes = requant::narrow_x4(fb, v, self.signed);
        store_prefix(fb, bytes, out, count);
    }

    /// [`BlockStore::store`] with the channel's multiplier from a [`ChannelTable`] record.
    pub fn store_with(
        &self,
        fb: &mut FunctionBuilder,
        acc: Value,
        params: &ChannelParams,
        out: Value,
        count: usize,
    ) {
        let v = params.requantize_x4(fb, acc, self.rq.zero_point, self.rq.bounds);
        let bytes = requant::narrow_x4(fb, v, self.signed);
        store_prefix(fb, bytes, out, count);
    }
}
