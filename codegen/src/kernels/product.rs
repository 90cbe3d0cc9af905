//! The product family: convolutions (QConv, QLinearConv, ConvInteger, Conv) and matrix
//! products (QMatMul, QLinearMatMul, MatMulInteger, MatMul, Gemm).
//!
//! Every op here is one shape of computation: dot products `Σ_k (a_k − za)·(b_k − zb)` of a
//! row of one side with a row of the other, each side read at a constant byte step, followed
//! by an epilogue that turns the accumulator into the result element (bias, requantization,
//! fused activation). Keeping one dot emitter and one epilogue for the seven ops means the
//! arithmetic that must match the interpreter bit for bit is written once:
//!
//! - integer products accumulate in wrapping i32 (the interpreter's exact i64 sum wrapped to
//!   i32 is the same value modulo 2^32, so adding the bias and subtracting zero points in
//!   i32 agrees with it);
//! - zero points are subtracted from each element before the multiply, so they may be
//!   compile-time constants (quantization parameters on the types) or run-time operands
//!   (ConvInteger's and MatMulInteger's zero-point inputs) alike;
//! - convolutions gather each output position's receptive field into the workspace first
//!   (im2col, through a compile-time table of input offsets, padded positions filled with
//!   the input zero point so they contribute `zx − zx = 0`), which turns them into the
//!   same row-by-row dot products as a matrix product with weights `[M][C/group · kernel]`
//!   (the ONNX weight layout already is that).
//!
//! Constant integer weights are packed at compile time ([`pack`]) so that the dot products
//! run 16 (VNNI `vpdpbusd`) or 8 (`pmaddwd`) products a step in register tiles
//! ([`dot_block`]); the scalar [`dot`] remains for operands that cannot be packed. This is
//! the general form: `kernels::emit` tries the others first (wide, depthwise, pointwise,
//! direct).

use super::im2col::{positions, ConvShape};
use super::packing::{packed_rows, vnni_dot, PackedRows};
use super::{requant, Kernel, Operand};
use crate::emit;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};
use cranelift_frontend::{FunctionBuilder, Variable};
use qlift_ir::fixed_point::Requant;
use qlift_ir::{DType, Dim, OpKind, QuantParams};

/// How an element is stored, and what it widens to when loaded for arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    U8,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
}

impl Elem {
    /// The element kind of a dtype the products read or write.
    fn of(dtype: DType) -> Result<Elem, String> {
        Ok(match dtype {
            DType::U8 => Elem::U8,
            // int4 values are held one per byte, as i8 (`qlift_ir::TensorData`).
            DType::I8 | DType::I4 => Elem::I8,
            DType::I16 => Elem::I16,
            DType::I32 => Elem::I32,
            DType::I64 => Elem::I64,
            DType::F32 => Elem::F32,
            other => {
                return Err(format!(
                    "{other} operands are not supported by the product kernels"
                ))
            }
        })
    }

    fn bytes(self) -> i64 {
        match self {
            Elem::U8 | Elem::I8 => 1,
            Elem::I16 => 2,
            Elem::I32 | Elem::F32 => 4,
            Elem::I64 | Elem::F64 => 8,
        }
    }

    /// The type in memory.
    fn mem_type(self) -> Type {
        match self {
            Elem::U8 | Elem::I8 => types::I8,
            Elem::I16 => types::I16,
            Elem::I32 => types::I32,
            Elem::I64 => types::I64,
            Elem::F32 => types::F32,
            Elem::F64 => types::F64,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Elem::F32 | Elem::F64)
    }

    /// Loads the element at `addr` widened for arithmetic: 8- and 16-bit integers to i32
    /// (with their signedness), everything else as stored.
    fn load(self, fb: &mut FunctionBuilder, addr: Value) -> Value {
        let v = fb.ins().load(self.mem_type(), emit::mem(), addr, 0);
        match self {
            Elem::U8 => fb.ins().uextend(types::I32, v),
            Elem::I8 | Elem::I16 => fb.ins().sextend(types::I32, v),
            _ => v,
        }
    }

    /// Stores `v` at element `row · width + col` of the row-major matrix at `base` (a conv
    /// result's `[channel][position]`, a product's `[row][column]`).
    fn store_2d(
        self,
        fb: &mut FunctionBuilder,
        v: Value,
        base: Value,
        row: Value,
        width: usize,
        col: Value,
    ) {
        let addr = self.addr_2d(fb, base, row, width, col);
        self.store(fb, v, addr);
    }

    /// The address of element `row · width + col` of the row-major matrix at `base`.
    fn addr_2d(
        self,
        fb: &mut FunctionBuilder,
        base: Value,
        row: Value,
        width: usize,
        col: Value,
    ) -> Value {
        let at = fb.ins().imul_imm_s(row, width as i64);
        let at = fb.ins().iadd(at, col);
        emit::addr(fb, base, at, self.bytes())
    }

    /// Stores `v` (an i32 for 8-bit results, which narrows it) at `addr`.
    fn store(self, fb: &mut FunctionBuilder, v: Value, addr: Value) {
        let v = match self {
            Elem::U8 | Elem::I8 => fb.ins().ireduce(types::I8, v),
            Elem::I16 => fb.ins().ireduce(types::I16, v),
            _ => v,
        };
        fb.ins().store(emit::mem(), v, addr, 0);
    }
}

/// A small table read by (row, column): element `row · si + col · sj` of `ptr`. Per-channel
/// constants (zero points, multipliers, biases) and broadcast operands (Gemm's C) are all
/// this, with a zero stride for an axis they do not vary along.
#[derive(Clone, Copy)]
struct Indexed {
    ptr: Value,
    elem: Elem,
    si: i64,
    sj: i64,
}

impl Indexed {
    fn load(&self, fb: &mut FunctionBuilder, row: Value, col: Value) -> Value {
        let mut offset = emit::iconst(fb, 0);
        for (index, stride) in [(row, self.si), (col, self.sj)] {
            if stride != 0 {
                let scaled = fb.ins().imul_imm_s(index, stride * self.elem.bytes());
                offset = fb.ins().iadd(offset, scaled);
            }
        }
        let addr = fb.ins().iadd(self.ptr, offset);
        self.elem.load(fb, addr)
    }
}

/// Read-only data of little-endian values, as a table for [`Indexed`].
fn table<const N: usize>(
    k: &mut Kernel,
    values: impl IntoIterator<Item = [u8; N]>,
) -> Result<Value, String> {
    let mut bytes: Vec<u8> = values.into_iter().flatten().collect();
    if bytes.is_empty() {
        bytes.push(0);
    }
    k.data(bytes, 16)
}

/// One side of a dot product: element `k` is at `base + k · step` bytes, minus `zp` (an
/// i32 value) for integers.
#[derive(Clone, Copy)]
struct Side {
    base: Value,
    step: i64,
    elem: Elem,
    zp: Option<Value>,
}

impl Side {
    fn load(&self, fb: &mut FunctionBuilder, k: Value) -> Value {
        let addr = emit::addr(fb, self.base, k, self.step);
        let v = self.elem.load(fb, addr);
        match self.zp {
            Some(z) => fb.ins().isub(v, z),
            None => v,
        }
    }
}

/// `Σ_{k < len} a_k · b_k`: wrapping i32 for integers, f32 for floats.
fn dot(fb: &mut FunctionBuilder, a: &Side, b: &Side, len: usize) -> Value {
    if let Some(v) = dot_i16x8(fb, a, b, len).or_else(|| dot_f32x4(fb, a, b, len)) {
        return v;
    }
    let float = a.elem.is_float();
    let ty = if float { types::F32 } else { types::I32 };
    let acc = fb.declare_var(ty);
    let zero = if float {
        fb.ins().f32const(0.0)
    } else {
        fb.ins().iconst(types::I32, 0)
    };
    fb.def_var(acc, zero);
    emit::for_count(fb, len as i64, |fb, k| {
        let (x, y) = (a.load(fb, k), b.load(fb, k));
        let sum = fb.use_var(acc);
        let sum = if float {
            let p = fb.ins().fmul(x, y);
            fb.ins().fadd(sum, p)
        } else {
            let p = fb.ins().imul(x, y);
            fb.ins().iadd(sum, p)
        };
        fb.def_var(acc, sum);
    });
    fb.use_var(acc)
}

/// im2col gathers of up to this many taps per group are emitted as straight-line code with
/// constant offsets (two instructions a tap); larger ones loop over a table of offsets.
const UNROLL_TAPS: usize = 4096;

/// An im2col table entry for a padding element of a row (see [`pack`]): the straight-line
/// gather skips it; the table-driven one writes the zero point there like a padded tap.
const UNUSED: i32 = i32::MIN;

/// Output positions per tile of the packed-weight convolution loop: each weight load then
/// serves this many positions (and each activation load four channels). Two keeps a tile's
/// accumulators and operands within the 16 vector registers.
const TILE_ROWS: usize = 2;

/// Convolutions with up to this many groups emit each group's code separately (channels,
/// and so their requantization constants, become compile-time values); more loop.
const UNROLL_GROUPS: usize = 32;

/// The f32 dot product of two contiguous rows, four lanes at a time (a different summation
/// order than the scalar loop: within the float contract of 1e-4), scalar tail.
fn dot_f32x4(fb: &mut FunctionBuilder, a: &Side, b: &Side, len: usize) -> Option<Value> {
    if a.elem != Elem::F32 || b.elem != Elem::F32 || a.step != 4 || b.step != 4 || len < 8 {
        return None;
    }
    let acc = fb.declare_var(types::F32X4);
    let zero = fb.ins().f32const(0.0);
    let init = fb.ins().splat(types::F32X4, zero);
    fb.def_var(acc, init);
    let step = |fb: &mut FunctionBuilder, offset: Value| {
        let (pa, pb) = (fb.ins().iadd(a.base, offset), fb.ins().iadd(b.base, offset));
        let x = fb.ins().load(types::F32X4, emit::mem(), pa, 0);
        let y = fb.ins().load(types::F32X4, emit::mem(), pb, 0);
        let p = fb.ins().fmul(x, y);
        let sum = fb.use_var(acc);
        let sum = fb.ins().fadd(sum, p);
        fb.def_var(acc, sum);
    };
    let chunks = len / 4;
    emit::for_count(fb, chunks as i64, |fb, c| {
        let offset = fb.ins().imul_imm_s(c, 16);
        step(fb, offset);
    });
    let v = fb.use_var(acc);
    let mut total = fb.ins().extractlane(v, 0);
    for lane in 1..4u8 {
        let e = fb.ins().extractlane(v, lane);
        total = fb.ins().fadd(total, e);
    }
    for t in chunks * 4..len {
        let t = emit::iconst(fb, t as i64);
        let (x, y) = (a.load(fb, t), b.load(fb, t));
        let p = fb.ins().fmul(x, y);
        total = fb.ins().fadd(total, p);
    }
    Some(total)
}

/// Elements of packed weights of type `elem` one vector step of [`dot_block`] consumes.
fn chunk_of(elem: Elem) -> usize {
    if elem == Elem::I8 {
        16
    } else {
        8
    }
}

/// Whether `a · b` can use [`dot_block`]: packed i16 weights (step 2) against contiguous
/// 8- or 16-bit activations, no zero points, at least one 8-wide chunk. Returns (weights,
/// activations); for i16 against i16 either order is the same `pmaddwd` (i16 activations
/// need no widening, and `x · w` pair sums stay below 2^24 in magnitude: exact).
fn simd_sides<'s>(a: &'s Side, b: &'s Side, len: usize) -> Option<(&'s Side, &'s Side)> {
    let (wide, narrow) = match (a.elem, b.elem) {
        (Elem::I16, Elem::U8 | Elem::I8 | Elem::I16) | (Elem::I8, Elem::U8) => (a, b),
        (Elem::U8 | Elem::I8, Elem::I16) | (Elem::U8, Elem::I8) => (b, a),
        _ => return None,
    };
    let chunk = chunk_of(wide.elem);
    (wide.step == wide.elem.bytes()
        && narrow.step == narrow.elem.bytes()
        && a.zp.is_none()
        && b.zp.is_none()
        && len >= chunk)
        .then_some((wide, narrow))
}

fn dot_i16x8(fb: &mut FunctionBuilder, a: &Side, b: &Side, len: usize) -> Option<Value> {
    let (wide, narrow) = simd_sides(a, b, len)?;
    let sums = dot_block(
        fb,
        std::slice::from_ref(narrow),
        std::slice::from_ref(wide),
        len,
    )
    .remove(0);
    Some(sums.scalars(fb)[0])
}

/// The dot products of one activation row against a block's weight rows.
enum RowSums {
    /// Four sums, the lanes of one i32x4 (four weight rows and no scalar tail).
    Lanes(Value),
    /// One i32 per weight row.
    Scalars(Vec<Value>),
}

impl RowSums {
    fn scalars(self, fb: &mut FunctionBuilder) -> Vec<Value> {
        match self {
            RowSums::Lanes(v) => (0..4u8).map(|lane| fb.ins().extractlane(v, lane)).collect(),
            RowSums::Scalars(s) => s,
        }
    }
}

/// Dot products of a tile: up to four rows of 8- or 16-bit activations (`narrows`) against up to
/// four rows of packed weights (`wides`), every pair; one [`RowSums`] per narrow row.
/// Each load serves a whole row or column of the tile. With i16 weights: 8 products per
/// step as `pmaddwd` (i16 × i16 pairs summed into i32x4, exact — Cranelift selects it for
/// `iadd_pairwise(imul(swiden_low, swiden_low), imul(swiden_high, swiden_high))`), the
/// activations widened by `uload8x8`/`sload8x8`. With i8 weights (VNNI): 16 products per step
/// as the exact tree Cranelift folds into one `vpdpbusd` (u8×i8 products, exact in i16,
/// summed four at a time into i32 lanes — `lower.isle`, "AVX-VNNI: fold the u8*i8 widening
/// dot-accumulate tree"). Lanes reduced with pairwise adds, a scalar tail for the rest. The
/// same wrapping i32 sums as the scalar loop (lane sums and final sums wrap alike).
fn dot_block(
    fb: &mut FunctionBuilder,
    narrows: &[Side],
    wides: &[Side],
    len: usize,
) -> Vec<RowSums> {
    let vnni = wides.first().is_some_and(|w| w.elem == Elem::I8);
    let chunk = chunk_of(if vnni { Elem::I8 } else { Elem::I16 });
    let chunks = len / chunk;
    let vs = accumulate(
        fb,
        narrows.len() * wides.len(),
        chunks,
        chunk as i64,
        |fb, offset, accs| {
            // The activation rows of this chunk (widened once for pmaddwd).
            let xs: Vec<(Value, Value, Value)> = narrows
                .iter()
                .map(|narrow| {
                    if vnni {
                        let na = fb.ins().iadd(narrow.base, offset);
                        let b = fb.ins().load(types::I8X16, emit::mem(), na, 0);
                        (b, b, b)
                    } else {
                        let x = match narrow.elem {
                            Elem::U8 => {
                                let na = fb.ins().iadd(narrow.base, offset);
                                fb.ins().uload8x8(emit::mem(), na, 0)
                            }
                            // 16-bit activations: the eight elements as they are.
                            Elem::I16 => {
                                let wo = fb.ins().iadd(offset, offset);
                                let na = fb.ins().iadd(narrow.base, wo);
                                fb.ins().load(types::I16X8, emit::mem(), na, 0)
                            }
                            _ => {
                                let na = fb.ins().iadd(narrow.base, offset);
                                fb.ins().sload8x8(emit::mem(), na, 0)
                            }
                        };
                        (x, fb.ins().swiden_low(x), fb.ins().swiden_high(x))
                    }
                })
                .collect();
            let woff = if vnni {
                offset
            } else {
                fb.ins().iadd(offset, offset)
            };
            for (j, wide) in wides.iter().enumerate() {
                let wa = fb.ins().iadd(wide.base, woff);
                let w = fb.ins().load(
                    if vnni { types::I8X16 } else { types::I16X8 },
                    emit::mem(),
                    wa,
                    0,
                );
                let (wl, wh) = (fb.ins().swiden_low(w), fb.ins().swiden_high(w));
                for (i, &(b, xl, xh)) in xs.iter().enumerate() {
                    let acc = accs[i * wides.len() + j];
                    let sum = fb.use_var(acc);
                    let sum = if vnni {
                        vnni_dot(fb, sum, (wl, wh), b)
                    } else {
                        let lo = fb.ins().imul(xl, wl);
                        let hi = fb.ins().imul(xh, wh);
                        let pairs = fb.ins().iadd_pairwise(lo, hi);
                        fb.ins().iadd(sum, pairs)
                    };
                    fb.def_var(acc, sum);
                }
            }
        },
    );
    narrows
        .iter()
        .enumerate()
        .map(|(i, narrow)| {
            let row = vs[i * wides.len()..(i + 1) * wides.len()].to_vec();
            reduce_and_tail(fb, narrow, wides, row, chunks * chunk, len)
        })
        .collect()
}

/// `count` i32x4 accumulators, zeroed, then `step(offset, accumulators)` for every chunk of
/// `chunk` bytes, in a loop; returns their values. A loop, not straight-line code: Cranelift
/// places pure arithmetic at its first use, so unrolled chunks would have every load issued
/// before any product and their values spilled (measured 1.3–2× slower).
fn accumulate(
    fb: &mut FunctionBuilder,
    count: usize,
    chunks: usize,
    chunk: i64,
    step: impl Fn(&mut FunctionBuilder, Value, &[Variable]),
) -> Vec<Value> {
    let zero = fb.ins().iconst(types::I32, 0);
    let init = fb.ins().splat(types::I32X4, zero);
    let accs: Vec<Variable> = (0..count)
        .map(|_| {
            let v = fb.declare_var(types::I32X4);
            fb.def_var(v, init);
            v
        })
        .collect();
    emit::for_count(fb, chunks as i64, |fb, c| {
        let offset = fb.ins().imul_imm_s(c, chunk);
        step(fb, offset, &accs);
    });
    accs.iter().map(|&a| fb.use_var(a)).collect()
}

/// The lane sums of `accs` (one i32x4 per weight row) plus the scalar products of
/// elements `from..len`.
fn reduce_and_tail(
    fb: &mut FunctionBuilder,
    narrow: &Side,
    wides: &[Side],
    mut vs: Vec<Value>,
    from: usize,
    len: usize,
) -> RowSums {
    // Pairwise reduction: with four accumulators, two rounds leave [s0, s1, s2, s3].
    let mut totals: Vec<Value> = if vs.len() == 4 {
        let t0 = fb.ins().iadd_pairwise(vs[0], vs[1]);
        let t1 = fb.ins().iadd_pairwise(vs[2], vs[3]);
        let s = fb.ins().iadd_pairwise(t0, t1);
        if from == len {
            return RowSums::Lanes(s);
        }
        RowSums::Lanes(s).scalars(fb)
    } else {
        vs.drain(..)
            .map(|v| {
                let mut total = fb.ins().extractlane(v, 0);
                for lane in 1..4u8 {
                    let e = fb.ins().extractlane(v, lane);
                    total = fb.ins().iadd(total, e);
                }
                total
            })
            .collect()
    };
    for t in from..len {
        let t = emit::iconst(fb, t as i64);
        let x = narrow.load(fb, t);
        for (wide, total) in wides.iter().zip(totals.iter_mut()) {
            let y = wide.load(fb, t);
            let p = fb.ins().imul(x, y);
            *total = fb.ins().iadd(*total, p);
        }
    }
    RowSums::Scalars(totals)
}

/// What turns an accumulator into a result element. Tables are read at (row, column) =
/// (output row, output channel): the channel of a convolution is passed as both.
enum Epilogue {
    /// Float ops: `alpha · acc + beta · c[row, col]`, then the fused activation's clamp.
    /// `c_sample` is the byte stride of `c` between samples (0 when it has no batch).
    Float {
        alpha: f32,
        beta: f32,
        c: Option<Indexed>,
        c_sample: i64,
        act: Option<(f32, f32)>,
    },
    /// The i32 accumulator itself, plus the bias (ConvInteger, MatMulInteger, and QConv or
    /// QMatMul with an i32 result); minus `za · Σ_k b[k, col]` when A's zero point `za` (a
    /// run-time operand) was left out of the dot products so that they run on SIMD
    /// (MatMulInteger against packed weights: `Σ (a − za)·b = Σ a·b − za·Σ b`, exact in
    /// wrapping i32 as the interpreter's sum is).
    Accumulator {
        bias: Option<Indexed>,
        zero_point: Option<(Indexed, Indexed)>,
    },
    /// QConv/QMatMul: the fixed-point requantization of `acc + bias`, per-channel
    /// multipliers and shifts read from tables when there is more than one.
    /// `i64_mul`: the target multiplies i64x2 lanes (see [`requant::requantize_x4`]).
    Fixed {
        bias: Option<Indexed>,
        rq: Requant,
        per_channel: Option<(Indexed, Indexed)>,
        bias_values: Option<Vec<i32>>,
        i64_mul: bool,
    },
    /// QLinearConv/QLinearMatMul: ONNX's float requantization of `acc + bias`, replicating
    /// the interpreter's f64 arithmetic: `round_ties_even(acc · mult + zp)` clamped, with the
    /// f32 multiplier of (row, col) read from a table of f64.
    QLinear {
        bias: Option<Indexed>,
        mult: Indexed,
        zero_point: i32,
        range: (i64, i64),
    },
}

impl Epilogue {
    /// [`Epilogue::apply`] for an output channel known at compile time: the fixed-point
    /// requantization then takes its bias, multiplier and shift as immediates (no table
    /// loads, constant shifts). Other epilogues read their tables at that channel.
    fn apply_static(
        &self,
        fb: &mut FunctionBuilder,
        acc: Value,
        sample: Value,
        row: Value,
        channel: usize,
    ) -> Value {
        if let Epilogue::Fixed {
            rq,
            bias_values: Some(bias),
            ..
        } = self
        {
            let acc = fb.ins().iadd_imm_s(acc, bias[channel] as i64);
            return requant::requantize(
                fb,
                acc,
                requant::channel(rq, channel),
                rq.zero_point,
                rq.bounds,
            );
        }
        let col = emit::iconst(fb, channel as i64);
        self.apply(fb, acc, sample, row, col)
    }

    /// The fixed-point requantization of four accumulators of output channels known at
    /// compile time (the lanes of `acc`) as one vector ([`requant::requantize_x4`]): an i32x4
    /// of results, or `None` where that does not apply (another epilogue, channels with
    /// different shifts, a shift below 32).
    fn apply_x4(
        &self,
        fb: &mut FunctionBuilder,
        acc: Value,
        channels: [usize; 4],
    ) -> Option<Value> {
        let Epilogue::Fixed {
            rq,
            bias_values: Some(bias),
            i64_mul,
            ..
        } = self
        else {
            return None;
        };
        let (ms, shift) = requant::lanes(rq, channels)?;
        if shift < 32 {
            return None;
        }
        let b = requant::vector(
            fb,
            channels
                .iter()
                .flat_map(|&c| bias[c].to_le_bytes())
                .collect(),
        );
        let acc = fb.ins().iadd(acc, b);
        requant::requantize_x4(fb, acc, ms, shift, rq.zero_point, rq.bounds, *i64_mul)
    }

    fn apply(
        &self,
        fb: &mut FunctionBuilder,
        acc: Value,
        sample: Value,
        row: Value,
        col: Value,
    ) -> Value {
        let add_bias = |fb: &mut FunctionBuilder, acc: Value, bias: &Option<Indexed>| match bias {
            Some(b) => {
                let v = b.load(fb, row, col);
                fb.ins().iadd(acc, v)
            }
            None => acc,
        };
        match self {
            Epilogue::Float {
                alpha,
                beta,
                c,
                c_sample,
                act,
            } => {
                let mut y = acc;
                if *alpha != 1.0 {
                    let a = fb.ins().f32const(*alpha);
                    y = fb.ins().fmul(y, a);
                }
                if let Some(c) = c {
                    let mut c = *c;
                    if *c_sample != 0 {
                        let off = fb.ins().imul_imm_s(sample, *c_sample);
                        c.ptr = fb.ins().iadd(c.ptr, off);
                    }
                    let mut v = c.load(fb, row, col);
                    if *beta != 1.0 {
                        let b = fb.ins().f32const(*beta);
                        v = fb.ins().fmul(v, b);
                    }
                    y = fb.ins().fadd(y, v);
                }
                if let Some((lo, hi)) = act {
                    // fmax/fmin propagate NaN, as the interpreter's clamp leaves NaN alone.
                    let lo = fb.ins().f32const(*lo);
                    let hi = fb.ins().f32const(*hi);
                    y = fb.ins().fmax(y, lo);
                    y = fb.ins().fmin(y, hi);
                }
                y
            }
            Epilogue::Accumulator { bias, zero_point } => {
                let acc = add_bias(fb, acc, bias);
                match zero_point {
                    None => acc,
                    Some((za, sums)) => {
                        let (za, sum) = (za.load(fb, row, col), sums.load(fb, row, col));
                        let folded = fb.ins().imul(za, sum);
                        fb.ins().isub(acc, folded)
                    }
                }
            }
            Epilogue::Fixed {
                bias,
                rq,
                per_channel,
                ..
            } => {
                let acc = add_bias(fb, acc, bias);
                match per_channel {
                    None => requant::requantize(
                        fb,
                        acc,
                        requant::channel(rq, 0),
                        rq.zero_point,
                        rq.bounds,
                    ),
                    Some((m, shift)) => {
                        let (m, shift) = (m.load(fb, row, col), shift.load(fb, row, col));
                        requant::requantize_dynamic(fb, acc, m, shift, rq.zero_point, rq.bounds)
                    }
                }
            }
            Epilogue::QLinear {
                bias,
                mult,
                zero_point,
                range,
            } => {
                let acc = add_bias(fb, acc, bias);
                let a = fb.ins().fcvt_from_sint(types::F64, acc);
                let m = mult.load(fb, row, col);
                let scaled = fb.ins().fmul(a, m);
                let zp = fb.ins().f64const(*zero_point as f64);
                let shifted = fb.ins().fadd(scaled, zp);
                let rounded = fb.ins().nearest(shifted);
                let lo = fb.ins().f64const(range.0 as f64);
                let hi = fb.ins().f64const(range.1 as f64);
                let clamped = fb.ins().fmax(rounded, lo);
                let clamped = fb.ins().fmin(clamped, hi);
                fb.ins().fcvt_to_sint(types::I32, clamped)
            }
        }
    }
}

impl Epilogue {
    /// Records the biases' values (known when the weights were packed) for [`Epilogue::apply_static`].
    fn with_bias_values(self, values: Vec<i32>) -> Epilogue {
        match self {
            Epilogue::Fixed {
                bias,
                rq,
                per_channel,
                i64_mul,
                ..
            } => Epilogue::Fixed {
                bias,
                rq,
                per_channel,
                bias_values: Some(values),
                i64_mul,
            },
            other => other,
        }
    }
}

/// A quantized operand's parameters (from its type).
fn quant(o: &Operand, what: &str) -> Result<QuantParams, String> {
    o.ty.quant
        .clone()
        .ok_or_else(|| format!("{what} has no quantization parameters"))
}

/// The i32 table of a quantized operand's zero points, read at the channel (`along_col`)
/// or at the row; per tensor it is one entry read at every index.
fn zero_point_table(k: &mut Kernel, q: &QuantParams, along_col: bool) -> Result<Indexed, String> {
    let ptr = table(k, q.zero_point.iter().map(|z| z.to_le_bytes()))?;
    let stride = i64::from(q.zero_point.len() > 1);
    Ok(Indexed {
        ptr,
        elem: Elem::I32,
        si: if along_col { 0 } else { stride },
        sj: if along_col { stride } else { 0 },
    })
}

/// A zero-point operand of ConvInteger/MatMulInteger (a scalar or one per row/channel).
fn zero_point_operand(o: Option<&Operand>, along_col: bool) -> Result<Option<Indexed>, String> {
    let Some(o) = o else { return Ok(None) };
    let stride = i64::from(o.per_sample() > 1);
    Ok(Some(Indexed {
        ptr: o.ptr,
        elem: Elem::of(o.ty.dtype)?,
        si: if along_col { 0 } else { stride },
        sj: if along_col { stride } else { 0 },
    }))
}

/// `Σ_k B[k, j]` of MatMulInteger's constant `B [K, N]`, as an i32 table by column.
fn column_sums(k: &mut Kernel, n: usize, kk: usize) -> Result<Indexed, String> {
    let b = k.input(1)?;
    let values = b
        .constant
        .as_ref()
        .ok_or("the weights are not constant")?
        .to_i64_vec()?;
    let sums: Vec<i32> = (0..n)
        .map(|j| (0..kk).map(|t| values[t * n + j]).sum::<i64>() as i32)
        .collect();
    Ok(Indexed {
        ptr: table(k, sums.iter().map(|v| v.to_le_bytes()))?,
        elem: Elem::I32,
        si: 0,
        sj: 1,
    })
}

/// An i32 bias operand, one per output channel.
fn bias_of(o: Option<&Operand>) -> Result<Option<Indexed>, String> {
    o.map(|b| {
        Ok(Indexed {
            ptr: b.ptr,
            elem: Elem::of(b.ty.dtype)?,
            si: 0,
            sj: 1,
        })
    })
    .transpose()
}

/// The epilogue of an integer product with quantization parameters on its types (QConv,
/// QMatMul, QLinearConv, QLinearMatMul). `channels` is the number of output channels,
/// `rows` the number of rows of a QLinearMatMul's A (its per-row scales).
/// `bias` is the per-channel i32 added to the accumulator (the operand's, or a folded one).
fn quantized_epilogue(
    k: &mut Kernel,
    channels: usize,
    rows: usize,
    bias: Option<Indexed>,
) -> Result<Epilogue, String> {
    let (xq, wq) = (quant(k.input(0)?, "input")?, quant(k.input(1)?, "weights")?);
    let y = k.output(0).ty.clone();
    match k.op.kind {
        OpKind::QConv | OpKind::QMatMul => {
            if y.dtype == DType::I32 {
                return Ok(Epilogue::Accumulator {
                    bias,
                    zero_point: None,
                });
            }
            let rq = Requant::for_product(&xq, &wq, channels, &y, k.op.fused_activation()?)?;
            let per_channel = if rq.multipliers.len() > 1 {
                let m = table(k, rq.multipliers.iter().map(|f| (f.m as i64).to_le_bytes()))?;
                let s = table(
                    k,
                    rq.multipliers
                        .iter()
                        .map(|f| (f.shift as i64).to_le_bytes()),
                )?;
                Some((
                    Indexed {
                        ptr: m,
                        elem: Elem::I64,
                        si: 0,
                        sj: 1,
                    },
                    Indexed {
                        ptr: s,
                        elem: Elem::I64,
                        si: 0,
                        sj: 1,
                    },
                ))
            } else {
                None
            };
            Ok(Epilogue::Fixed {
                bias,
                rq,
                per_channel,
                bias_values: None,
                i64_mul: k.has_i64x2_mul(),
            })
        }
        _ => {
            let yq = y
                .quant
                .clone()
                .ok_or("result has no quantization parameters")?;
            let range = y.dtype.int_range().ok_or("result is not an integer type")?;
            let (ys, zero_point) = yq.channel(0);
            let r = if xq.axis.is_some() { rows } else { 1 };
            let c = if wq.axis.is_some() { channels } else { 1 };
            let mults = (0..r).flat_map(|i| (0..c).map(move |j| (i, j)));
            let mults: Vec<[u8; 8]> = mults
                .map(|(i, j)| ((xq.channel(i).0 * wq.channel(j).0 / ys) as f64).to_le_bytes())
                .collect();
            let ptr = table(k, mults)?;
            let mult = Indexed {
                ptr,
                elem: Elem::F64,
                si: if r > 1 { c as i64 } else { 0 },
                sj: i64::from(c > 1),
            };
            Ok(Epilogue::QLinear {
                bias,
                mult,
                zero_point,
                range,
            })
        }
    }
}

/// Constant weights of QConv/QMatMul/QLinearConv/QLinearMatMul packed at compile time:
/// `w' = w − zw` as i16 rows `[channels][row_len]` (contiguous along the dot product, padded
/// with zero weights to a whole number of vector chunks so a dot product whose other side
/// is padded too needs no scalar tail: whatever the padding of that side holds, it is
/// multiplied by 0), and the
/// input zero point folded into the bias, `bias'[c] = bias[c] − zx · Σ_k w'[c][k]` (wrapping
/// i32, as the accumulator wraps): then `Σ (x − zx)·w' = Σ x·w' − zx·Σ w'`, so the inner loop
/// reads raw inputs and subtracts nothing, and padded positions (holding `zx`) still count
/// as zero. `at(c, k)` is the index of weight (channel c, tap k) in the constant. `None`
/// when the weights or the bias are not constants, or the input is not per tensor (a
/// per-row zero point cannot fold into a per-column bias).
struct Packed {
    /// The folded biases, for epilogues of channels known at compile time.
    bias_values: Vec<i32>,
    weights: Value,
    /// I8 (for VNNI dot products) or I16.
    elem: Elem,
    /// Elements per packed row: `len` rounded up to the element's vector chunk.
    row_len: usize,
    bias: Indexed,
}

fn pack(
    k: &mut Kernel,
    channels: usize,
    len: usize,
    at: impl Fn(usize, usize) -> usize,
) -> Result<Option<Packed>, String> {
    let Some(PackedRows { rows, folded, vnni }) = packed_rows(k, channels, len, at)? else {
        return Ok(None);
    };
    let row_len = len.next_multiple_of(chunk_of(if vnni { Elem::I8 } else { Elem::I16 }));
    let padded = rows.iter().flat_map(|row| {
        row.iter()
            .copied()
            .chain(std::iter::repeat_n(0, row_len - len))
    });
    let (weights, elem) = if vnni {
        (table(k, padded.map(|v| (v as i8).to_le_bytes()))?, Elem::I8)
    } else {
        (table(k, padded.map(|v| v.to_le_bytes()))?, Elem::I16)
    };
    let bias = table(k, folded.iter().map(|v| v.to_le_bytes()))?;
    Ok(Some(Packed {
        bias_values: folded,
        weights,
        elem,
        row_len,
        bias: Indexed {
            ptr: bias,
            elem: Elem::I32,
            si: 0,
            sj: 1,
        },
    }))
}

/// Rows of A against a B packed at compile time (see [`pack`]): the matrix product's
/// blocks of four columns, each load of B serving every row of A.
struct PackedProduct<'e> {
    /// Byte step between B's packed columns, their element, the columns and the length.
    b_sj: usize,
    be: Elem,
    n: usize,
    kk: usize,
    epilogue: &'e Epilogue,
    ye: Elem,
}

impl PackedProduct<'_> {
    /// Each `(row of A, address of its result row)` against packed B at `b`; `s` and `i`
    /// (sample and row) index the epilogue's tables.
    fn emit(&self, fb: &mut FunctionBuilder, rows: &[(Side, Value)], b: Value, s: Value, i: Value) {
        let (be, ye) = (self.be, self.ye);
        let narrows: Vec<Side> = rows.iter().map(|&(side, _)| side).collect();
        for j0 in (0..self.n).step_by(4) {
            let cols: Vec<usize> = (j0..(j0 + 4).min(self.n)).collect();
            let wides: Vec<Side> = cols
                .iter()
                .map(|&j| Side {
                    base: fb.ins().iadd_imm_s(b, (j * self.b_sj) as i64 * be.bytes()),
                    step: be.bytes(),
                    elem: be,
                    zp: None,
                })
                .collect();
            let sums = dot_block(fb, &narrows, &wides, self.kk);
            for (sums, &(_, out)) in sums.into_iter().zip(rows) {
                if let (RowSums::Lanes(v), Ok(known), 1) =
                    (&sums, <[usize; 4]>::try_from(cols.as_slice()), ye.bytes())
                {
                    if let Some(v) = self.epilogue.apply_x4(fb, *v, known) {
                        // Four neighbouring results of the row: one 32-bit store.
                        let bytes = requant::narrow_x4(fb, v, ye == Elem::I8);
                        let at = fb.ins().iadd_imm_s(out, j0 as i64 * ye.bytes());
                        super::planes::store_prefix(fb, bytes, at, 4);
                        continue;
                    }
                }
                for (&j, acc) in cols.iter().zip(sums.scalars(fb)) {
                    let v = self.epilogue.apply_static(fb, acc, s, i, j);
                    let addr = fb.ins().iadd_imm_s(out, j as i64 * ye.bytes());
                    ye.store(fb, v, addr);
                }
            }
        }
    }
}

/// The output channels of a block of four known at compile time.
fn static_block(chs: &[(Value, Option<usize>)]) -> Option<[usize; 4]> {
    let known: Vec<usize> = chs.iter().map(|&(_, c)| c).collect::<Option<_>>()?;
    known.try_into().ok()
}

/// Conv, QConv, QLinearConv, ConvInteger: per sample and group, im2col into the workspace,
/// then one dot product per (output channel, output position).
pub(super) fn conv(k: &mut Kernel) -> Result<(), String> {
    let kind = k.op.kind;
    let (x, w, y) = (k.input(0)?, k.input(1)?, k.output(0));
    let (xe, we, ye) = (
        Elem::of(x.ty.dtype)?,
        Elem::of(w.ty.dtype)?,
        Elem::of(y.ty.dtype)?,
    );
    let (xptr, mut wptr, yptr) = (x.ptr, w.ptr, y.ptr);
    let mut we = we;
    let shape = ConvShape::of(k)?;
    let (channels, m, group, cg, mg) = (shape.channels, shape.m, shape.group, shape.cg, shape.mg);
    let (in_count, kg, p) = (shape.in_count, shape.kg, shape.p);
    let float = kind == OpKind::Conv;
    // Zero points: (input's, as an i32 value and as a raw padding element; weights' per channel).
    // Whether the input zero point is folded into packed weights (not subtracted per tap).
    let mut folded = false;
    // Elements per im2col row and weight row: `kg`, or more with packed weights (padding).
    let mut kp = kg;
    let (x_zp, w_zp, epilogue): (Option<Indexed>, Option<Indexed>, Epilogue) = match kind {
        OpKind::Conv => {
            let c = k.optional(2).map(|b| Indexed {
                ptr: b.ptr,
                elem: Elem::F32,
                si: 0,
                sj: 1,
            });
            (
                None,
                None,
                Epilogue::Float {
                    alpha: 1.0,
                    beta: 1.0,
                    c,
                    c_sample: 0,
                    act: k.op.fused_activation()?,
                },
            )
        }
        OpKind::ConvInteger => {
            let (xz, wz) = (
                zero_point_operand(k.optional(2), false)?,
                zero_point_operand(k.optional(3), true)?,
            );
            (
                xz.map(|z| Indexed { si: 0, sj: 0, ..z }),
                wz,
                Epilogue::Accumulator {
                    bias: None,
                    zero_point: None,
                },
            )
        }
        _ => {
            let (xq, wq) = (quant(k.input(0)?, "input")?, quant(k.input(1)?, "weights")?);
            let xz = zero_point_table(k, &xq, true)?;
            let xz = Some(Indexed { si: 0, sj: 0, ..xz });
            // The ONNX weight layout [M][C/group][kernel...] already is [M][kg].
            match pack(k, m, kg, |c, t| c * kg + t)? {
                Some(p) => {
                    (wptr, we, folded, kp) = (p.weights, p.elem, true, p.row_len);
                    (
                        xz,
                        None,
                        quantized_epilogue(k, m, 1, Some(p.bias))?.with_bias_values(p.bias_values),
                    )
                }
                None => {
                    let wz = zero_point_table(k, &wq, true)?;
                    let bias = bias_of(k.optional(2))?;
                    (xz, Some(wz), quantized_epilogue(k, m, 1, bias)?)
                }
            }
        }
    };
    // im2col offsets, then `kp - kg` entries of UNUSED ending each position's row (the
    // packed weights' zero padding).
    let offsets = shape.offsets();
    let mut taps: Vec<i32> = Vec::with_capacity(p * kp);
    for row in offsets.chunks(kg) {
        taps.extend_from_slice(row);
        taps.extend(std::iter::repeat_n(UNUSED, kp - kg));
    }
    k.form = if folded { "im2col-packed" } else { "im2col" };
    let taps_ptr = if taps.len() > UNROLL_TAPS {
        table(k, taps.iter().map(|t| t.to_le_bytes()))?
    } else {
        emit::iconst(k.fb, 0)
    };
    let col_bytes = (p * kp) as i64 * xe.bytes();
    let ws = k.workspace(col_bytes.max(1) as usize);
    let samples = k.input_samples()?;
    let x_sample = (channels * in_count) as i64 * xe.bytes();
    let y_sample = (m * p) as i64 * ye.bytes();
    let fb = &mut *k.fb;
    let zero = emit::iconst(fb, 0);
    // The input zero point: subtracted as an i32, and the value of padded positions.
    let (xz, pad) = match x_zp {
        Some(z) => {
            let v = z.load(fb, zero, zero);
            let raw = fb.ins().ireduce(xe.mem_type(), v);
            (if folded { None } else { Some(v) }, raw)
        }
        None if float => (None, fb.ins().f32const(0.0)),
        None => (None, fb.ins().iconst(types::I8, 0)),
    };
    emit::for_dynamic(fb, samples, |fb, n| {
        let xn = emit::addr(fb, xptr, n, x_sample);
        let yn = emit::addr(fb, yptr, n, y_sample);
        // Groups are unrolled at compile time when there are few, so that each output
        // channel's requantization constants are immediates.
        let group_body = |fb: &mut FunctionBuilder, g: Value, g_static: Option<usize>| {
            let xg = emit::addr(fb, xn, g, (cg * in_count) as i64 * xe.bytes());
            if taps.len() <= UNROLL_TAPS {
                // Straight-line gather: every tap's source offset is a compile-time constant.
                for (t, &off) in taps.iter().enumerate().filter(|&(_, &off)| off != UNUSED) {
                    let to = i32::try_from(t as i64 * xe.bytes()).unwrap_or(i32::MAX);
                    let v = if off < 0 {
                        pad
                    } else {
                        fb.ins().load(
                            xe.mem_type(),
                            emit::mem(),
                            xg,
                            (off as i64 * xe.bytes()) as i32,
                        )
                    };
                    fb.ins().store(emit::mem(), v, ws, to);
                }
            } else {
                emit::for_count(fb, (p * kp) as i64, |fb, t| {
                    let off = emit::load_at(fb, types::I32, taps_ptr, t);
                    let outside = fb.ins().icmp_imm_s(IntCC::SignedLessThan, off, 0);
                    let off = fb.ins().sextend(types::I64, off);
                    let zero = emit::iconst(fb, 0);
                    let safe = fb.ins().select(outside, zero, off);
                    let v = emit::load_at(fb, xe.mem_type(), xg, safe);
                    let v = fb.ins().select(outside, pad, v);
                    emit::store_at(fb, v, ws, t);
                });
            }
            // Packed integer weights: four output channels per activation load.
            let probe_w = Side {
                base: wptr,
                step: we.bytes(),
                elem: we,
                zp: None,
            };
            let probe_x = Side {
                base: ws,
                step: xe.bytes(),
                elem: xe,
                zp: xz,
            };
            if !float && simd_sides(&probe_w, &probe_x, kp).is_some() {
                for b0 in (0..mg).step_by(4) {
                    let base = fb.ins().imul_imm_s(g, mg as i64);
                    let chs: Vec<(Value, Option<usize>)> = (b0..(b0 + 4).min(mg))
                        .map(|c| {
                            (
                                fb.ins().iadd_imm_s(base, c as i64),
                                g_static.map(|gs| gs * mg + c),
                            )
                        })
                        .collect();
                    let rows: Vec<Side> = chs
                        .iter()
                        .map(|&(ch, _)| Side {
                            base: emit::addr(fb, wptr, ch, kp as i64 * we.bytes()),
                            step: we.bytes(),
                            elem: we,
                            zp: None,
                        })
                        .collect();
                    // Tiles of TILE_ROWS output positions × the block's channels.
                    let tile = |fb: &mut FunctionBuilder, pi0: Value, count: usize| {
                        let cols: Vec<Side> = (0..count)
                            .map(|r| {
                                let pi = fb.ins().iadd_imm_s(pi0, r as i64);
                                Side {
                                    base: emit::addr(fb, ws, pi, kp as i64 * xe.bytes()),
                                    step: xe.bytes(),
                                    elem: xe,
                                    zp: None,
                                }
                            })
                            .collect();
                        let sums = dot_block(fb, &cols, &rows, kp);
                        for (r, sums) in sums.into_iter().enumerate() {
                            let pi = fb.ins().iadd_imm_s(pi0, r as i64);
                            let out = ye.addr_2d(fb, yn, zero, p, pi);
                            if let (RowSums::Lanes(v), Some(known), 1) =
                                (&sums, static_block(&chs), ye.bytes())
                            {
                                if let Some(v) = epilogue.apply_x4(fb, *v, known) {
                                    // Four channels' results, `p` elements apart.
                                    let bytes = requant::narrow_x4(fb, v, ye == Elem::I8);
                                    for (lane, c) in known.iter().enumerate() {
                                        let b = fb.ins().extractlane(bytes, lane as u8);
                                        fb.ins().store(emit::mem(), b, out, (c * p) as i32);
                                    }
                                    continue;
                                }
                            }
                            for (acc, &(ch, known)) in sums.scalars(fb).into_iter().zip(&chs) {
                                let v = match known {
                                    Some(c) => epilogue.apply_static(fb, acc, n, ch, c),
                                    None => epilogue.apply(fb, acc, n, ch, ch),
                                };
                                ye.store_2d(fb, v, yn, ch, p, pi);
                            }
                        }
                    };
                    let full = p / TILE_ROWS * TILE_ROWS;
                    if full > 0 {
                        let (zero, end) = (emit::iconst(fb, 0), emit::iconst(fb, full as i64));
                        emit::for_range(fb, zero, end, TILE_ROWS as i64, |fb, pi0| {
                            tile(fb, pi0, TILE_ROWS)
                        });
                    }
                    if full < p {
                        let pi0 = emit::iconst(fb, full as i64);
                        tile(fb, pi0, p - full);
                    }
                }
                return;
            }
            emit::for_count(fb, mg as i64, |fb, mm| {
                let base = fb.ins().imul_imm_s(g, mg as i64);
                let ch = fb.ins().iadd(base, mm);
                let wz = w_zp.map(|z| z.load(fb, ch, ch));
                let wrow = emit::addr(fb, wptr, ch, kp as i64 * we.bytes());
                emit::for_count(fb, p as i64, |fb, pi| {
                    let a = Side {
                        base: wrow,
                        step: we.bytes(),
                        elem: we,
                        zp: wz,
                    };
                    let col = emit::addr(fb, ws, pi, kp as i64 * xe.bytes());
                    let b = Side {
                        base: col,
                        step: xe.bytes(),
                        elem: xe,
                        zp: xz,
                    };
                    let acc = dot(fb, &a, &b, kg);
                    let v = epilogue.apply(fb, acc, n, ch, ch);
                    ye.store_2d(fb, v, yn, ch, p, pi);
                });
            });
        };
        if group <= UNROLL_GROUPS {
            for gi in 0..group {
                let g = emit::iconst(fb, gi as i64);
                group_body(fb, g, Some(gi));
            }
        } else {
            emit::for_count(fb, group as i64, |fb, g| group_body(fb, g, None));
        }
    });
    Ok(())
}

/// MatMul, Gemm, QMatMul, QLinearMatMul, MatMulInteger: for each sample and each broadcast
/// batch of the numpy product (offsets from compile-time tables), one dot product per
/// result element, reading A along its rows and B along its columns at their strides.
pub(super) fn matmul(k: &mut Kernel) -> Result<(), String> {
    let kind = k.op.kind;
    let (a, b, y) = (k.input(0)?, k.input(1)?, k.output(0));
    if y.ty.shape.dims().iter().skip(1).any(|d| *d == Dim::Batch) {
        return Err("the batch must be axis 0 of the result".to_string());
    }
    for (o, what) in [(a, "A"), (b, "B")] {
        if o.batched() && o.ty.shape.rank() != y.ty.shape.rank() {
            return Err(format!("{what} has the batch but not the result's rank"));
        }
    }
    let (ad, bd) = (a.dims(), b.dims());
    let (ae, be, ye) = (
        Elem::of(a.ty.dtype)?,
        Elem::of(b.ty.dtype)?,
        Elem::of(y.ty.dtype)?,
    );
    let (aptr, mut bptr, yptr) = (a.ptr, b.ptr, y.ptr);
    let b_rank = bd.len();
    let mut be = be;
    let sample = |o: &Operand, e: Elem| {
        if o.batched() {
            o.per_sample() as i64 * e.bytes()
        } else {
            0
        }
    };
    let (a_sample, b_sample, y_sample) = (sample(a, ae), sample(b, be), sample(y, ye));
    let y_batched = y.batched();
    // (m, k, n), element strides of A (row, k) and B (k, column), and the batch offsets.
    let (m, kk, n, a_si, a_sk, mut b_sk, mut b_sj, batches);
    if kind == OpKind::Gemm {
        if ad.len() != 2 || bd.len() != 2 {
            return Err("Gemm needs matrices".to_string());
        }
        let (ta, tb) = (
            k.op.attrs.int("transA")? != 0,
            k.op.attrs.int("transB")? != 0,
        );
        (m, kk) = if ta { (ad[1], ad[0]) } else { (ad[0], ad[1]) };
        n = if tb { bd[0] } else { bd[1] };
        (a_si, a_sk) = if ta { (1, m) } else { (kk, 1) };
        (b_sk, b_sj) = if tb { (1, kk) } else { (n, 1) };
        batches = vec![(0usize, 0usize)];
    } else {
        let a2 = if ad.len() == 1 {
            vec![1, ad[0]]
        } else {
            ad.clone()
        };
        let b2 = if bd.len() == 1 {
            vec![bd[0], 1]
        } else {
            bd.clone()
        };
        (m, kk, n) = (a2[a2.len() - 2], a2[a2.len() - 1], b2[b2.len() - 1]);
        (a_si, a_sk, b_sk, b_sj) = (kk, 1, n, 1);
        let (abat, bbat) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
        let rank = abat.len().max(bbat.len());
        let pad = |s: &[usize]| -> Vec<usize> {
            std::iter::repeat_n(1, rank - s.len())
                .chain(s.iter().copied())
                .collect()
        };
        let (pa, pb) = (pad(abat), pad(bbat));
        let out: Vec<usize> = pa.iter().zip(&pb).map(|(&x, &y)| x.max(y)).collect();
        batches = positions(&out)
            .into_iter()
            .map(|pos| {
                let flat = |s: &[usize]| {
                    pos.iter()
                        .zip(s)
                        .fold(0, |acc, (&i, &e)| acc * e + if e == 1 { 0 } else { i })
                };
                (flat(&pa) * m * kk, flat(&pb) * kk * n)
            })
            .collect();
    }
    k.form = "matmul";
    let (a_zp, b_zp, epilogue): (Option<Indexed>, Option<Indexed>, Epilogue) = match kind {
        OpKind::MatMul => (
            None,
            None,
            Epilogue::Float {
                alpha: 1.0,
                beta: 1.0,
                c: None,
                c_sample: 0,
                act: k.op.fused_activation()?,
            },
        ),
        OpKind::Gemm => {
            let (alpha, beta) = (k.op.attrs.float("alpha")?, k.op.attrs.float("beta")?);
            let c = match k.optional(2) {
                None => None,
                Some(c) => {
                    let cd = c.dims();
                    let c2: Vec<usize> = std::iter::repeat_n(1, 2usize.saturating_sub(cd.len()))
                        .chain(cd.iter().copied())
                        .collect();
                    let (si, sj) = (
                        if c2[0] == 1 { 0 } else { c2[1] as i64 },
                        i64::from(c2[1] != 1),
                    );
                    Some((
                        Indexed {
                            ptr: c.ptr,
                            elem: Elem::F32,
                            si,
                            sj,
                        },
                        sample(c, Elem::F32),
                    ))
                }
            };
            let act = k.op.fused_activation()?;
            (
                None,
                None,
                Epilogue::Float {
                    alpha,
                    beta,
                    c: c.map(|c| c.0),
                    c_sample: c.map_or(0, |c| c.1),
                    act,
                },
            )
        }
        OpKind::MatMulInteger => {
            // Constant weights without a zero point (dynamic quantization's) pack as
            // QMatMul's do; A's zero point is still subtracted element by element.
            let packed = if b_rank == 2 && k.optional(3).is_none() {
                pack(k, n, kk, |c, t| t * n + c)?
            } else {
                None
            };
            let a_zp = zero_point_operand(k.optional(2), false)?;
            match packed {
                Some(p) => {
                    k.form = "matmul-packed";
                    let sums = column_sums(k, n, kk)?;
                    (bptr, be, b_sk, b_sj) = (p.weights, p.elem, 1, p.row_len);
                    let zero_point = a_zp.map(|za| (za, sums));
                    (
                        None,
                        None,
                        Epilogue::Accumulator {
                            bias: None,
                            zero_point,
                        },
                    )
                }
                None => (
                    a_zp,
                    zero_point_operand(k.optional(3), true)?,
                    Epilogue::Accumulator {
                        bias: None,
                        zero_point: None,
                    },
                ),
            }
        }
        _ => {
            let (aq, bq) = (quant(k.input(0)?, "A")?, quant(k.input(1)?, "B")?);
            // A constant matrix B [K][N] packs to rows [N][K] (see `pack`).
            let packed = if b_rank == 2 {
                pack(k, n, kk, |c, t| t * n + c)?
            } else {
                None
            };
            match packed {
                Some(p) => {
                    k.form = "matmul-packed";
                    (bptr, be, b_sk, b_sj) = (p.weights, p.elem, 1, p.row_len);
                    (
                        None,
                        None,
                        quantized_epilogue(k, n, m, Some(p.bias))?.with_bias_values(p.bias_values),
                    )
                }
                None => {
                    let (az, bz) = (
                        zero_point_table(k, &aq, false)?,
                        zero_point_table(k, &bq, true)?,
                    );
                    let bias = bias_of(k.optional(2))?;
                    (Some(az), Some(bz), quantized_epilogue(k, n, m, bias)?)
                }
            }
        }
    };
    let q = batches.len();
    let offsets = if q > 1 {
        let ta = table(k, batches.iter().map(|o| (o.0 as i64).to_le_bytes()))?;
        let tb = table(k, batches.iter().map(|o| (o.1 as i64).to_le_bytes()))?;
        Some((ta, tb))
    } else {
        None
    };
    let samples = k.samples(y_batched);
    let fb = &mut *k.fb;
    let zero = emit::iconst(fb, 0);
    let packed = PackedProduct {
        b_sj,
        be,
        n,
        kk,
        epilogue: &epilogue,
        ye,
    };
    // One row per sample against packed B: two samples at a time share each load of B.
    let probe = |base: Value| Side {
        base,
        step: a_sk as i64 * ae.bytes(),
        elem: ae,
        zp: None,
    };
    let pairs = m == 1
        && q == 1
        && a_zp.is_none()
        && b_zp.is_none()
        && a_sample > 0
        && y_sample > 0
        && simd_sides(
            &probe(aptr),
            &Side {
                base: bptr,
                step: b_sk as i64 * be.bytes(),
                elem: be,
                zp: None,
            },
            kk,
        )
        .is_some();
    if pairs {
        let full = fb.ins().band_imm_s(samples, -2);
        emit::for_range(fb, zero, full, 2, |fb, s| {
            let rows: Vec<(Side, Value)> = (0..2)
                .map(|r| {
                    let sr = fb.ins().iadd_imm_s(s, r);
                    (
                        probe(emit::addr(fb, aptr, sr, a_sample)),
                        emit::addr(fb, yptr, sr, y_sample),
                    )
                })
                .collect();
            packed.emit(fb, &rows, bptr, s, zero);
        });
        emit::for_range(fb, full, samples, 1, |fb, s| {
            let row = (
                probe(emit::addr(fb, aptr, s, a_sample)),
                emit::addr(fb, yptr, s, y_sample),
            );
            packed.emit(fb, &[row], bptr, s, zero);
        });
        return Ok(());
    }
    emit::for_dynamic(fb, samples, |fb, s| {
        let a_s = emit::addr(fb, aptr, s, a_sample);
        let b_s = emit::addr(fb, bptr, s, b_sample);
        let y_s = emit::addr(fb, yptr, s, y_sample);
        emit::for_count(fb, q as i64, |fb, qi| {
            let (a_q, b_q) = match offsets {
                Some((ta, tb)) => {
                    let (oa, ob) = (
                        emit::load_at(fb, types::I64, ta, qi),
                        emit::load_at(fb, types::I64, tb, qi),
                    );
                    (
                        emit::addr(fb, a_s, oa, ae.bytes()),
                        emit::addr(fb, b_s, ob, be.bytes()),
                    )
                }
                None => (a_s, b_s),
            };
            let y_q = emit::addr(fb, y_s, qi, (m * n) as i64 * ye.bytes());
            emit::for_count(fb, m as i64, |fb, i| {
                let az = a_zp.map(|z| z.load(fb, i, i));
                let arow = emit::addr(fb, a_q, i, a_si as i64 * ae.bytes());
                // Packed integer B: four output columns per load of A's row.
                let probe_a = Side {
                    base: arow,
                    step: a_sk as i64 * ae.bytes(),
                    elem: ae,
                    zp: az,
                };
                let probe_b = Side {
                    base: b_q,
                    step: b_sk as i64 * be.bytes(),
                    elem: be,
                    zp: None,
                };
                if b_zp.is_none() && simd_sides(&probe_a, &probe_b, kk).is_some() {
                    let out = ye.addr_2d(fb, y_q, i, n, zero);
                    packed.emit(fb, &[(probe_a, out)], b_q, s, i);
                    return;
                }
                emit::for_count(fb, n as i64, |fb, j| {
                    let bz = b_zp.map(|z| z.load(fb, j, j));
                    let bcol = emit::addr(fb, b_q, j, b_sj as i64 * be.bytes());
                    let sa = Side {
                        base: arow,
                        step: a_sk as i64 * ae.bytes(),
                        elem: ae,
                        zp: az,
                    };
                    let sb = Side {
                        base: bcol,
                        step: b_sk as i64 * be.bytes(),
                        elem: be,
                        zp: bz,
                    };
                    let acc = dot(fb, &sa, &sb, kk);
                    let v = epilogue.apply(fb, acc, s, i, j);
                    ye.store_2d(fb, v, y_q, i, n, j);
                });
            });
        });
    });
    Ok(())
}
