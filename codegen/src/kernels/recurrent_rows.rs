//! The row products of recurrent layers, `bias[j] + M[j]·v` for blocks of rows of `W` or
//! `R` times one or several vectors, in f32 or in integers (int8 rows, 8-bit or i16
//! vectors, i32 accumulators requantized to f32 by a factor per row). Both forms share the
//! loop structure: [`ROW_BLOCK`] rows at a time, each vector loaded once for all of them.

use crate::emit;
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// Rows computed together: each vector of `v` is loaded once for all of them (8 rows: 1.125
/// loads per multiply-add instead of 2, and eight independent accumulator chains).
pub(super) const ROW_BLOCK: usize = 8;

/// What the vectors a product reads hold, in the integer form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IntVector {
    /// 8-bit values (`X`), `signed` or not, centered by a zero point.
    Bytes { signed: bool, zero: i32 },
    /// i16 values (the state rounded to int8 range), not centered.
    Words,
}

/// The element types of a product.
#[derive(Clone, Copy, Debug)]
pub(super) enum Form {
    /// f32 rows and vectors.
    F32,
    /// int8 rows, `vector` vectors, i32 accumulators; row `j`'s sum becomes
    /// `(sum as f32)·factors[j]` (f32 per row at `factors`) before the bias is added.
    Int { vector: IntVector, factors: Value },
}

impl Form {
    /// Bytes per element of a row.
    fn row_bytes(self) -> i64 {
        match self {
            Form::F32 => 4,
            Form::Int { .. } => 1,
        }
    }

    /// Bytes per element of a vector.
    fn vector_bytes(self) -> i64 {
        match self {
            Form::F32 => 4,
            Form::Int {
                vector: IntVector::Bytes { .. },
                ..
            } => 1,
            Form::Int {
                vector: IntVector::Words,
                ..
            } => 2,
        }
    }

    /// Elements per vector step and the accumulator types (vector, scalar tail).
    fn lanes(self) -> (i64, Type, Type) {
        match self {
            Form::F32 => (4, types::F32X4, types::F32),
            Form::Int { .. } => (8, types::I32X4, types::I32),
        }
    }

    /// `acc + m[0..lanes]·v[0..lanes]` (`whole`) or `acc + m[0]·v[0]` at byte addresses `pm`
    /// (plus `offset`) and `pv`; `x` is the vector's value, loaded once per block by
    /// [`Form::load_vector`].
    fn mac(
        self,
        fb: &mut FunctionBuilder,
        acc: Value,
        pm: Value,
        offset: i32,
        x: Value,
        whole: bool,
    ) -> Value {
        match self {
            Form::F32 => {
                let ty = if whole { types::F32X4 } else { types::F32 };
                let w = fb.ins().load(ty, emit::mem(), pm, offset);
                let p = fb.ins().fmul(w, x);
                fb.ins().fadd(acc, p)
            }
            Form::Int { .. } if whole => {
                // i16×i16 pair sums into i32x4: one pmaddwd (exact, unlike pmaddubsw).
                let w = fb.ins().sload8x8(emit::mem(), pm, offset);
                let (wl, xl) = (fb.ins().swiden_low(w), fb.ins().swiden_low(x));
                let (wh, xh) = (fb.ins().swiden_high(w), fb.ins().swiden_high(x));
                let (lo, hi) = (fb.ins().imul(wl, xl), fb.ins().imul(wh, xh));
                let pairs = fb.ins().iadd_pairwise(lo, hi);
                fb.ins().iadd(acc, pairs)
            }
            Form::Int { .. } => {
                let w = fb.ins().sload8(types::I32, emit::mem(), pm, offset);
                let p = fb.ins().imul(w, x);
                fb.ins().iadd(acc, p)
            }
        }
    }

    /// The vector's `lanes` elements (`whole`) or one element at byte address `pv`, in the
    /// multiplication's type (integers centered by the zero point).
    fn load_vector(self, fb: &mut FunctionBuilder, pv: Value, whole: bool) -> Value {
        match self {
            Form::F32 => fb.ins().load(
                if whole { types::F32X4 } else { types::F32 },
                emit::mem(),
                pv,
                0,
            ),
            Form::Int {
                vector: IntVector::Words,
                ..
            } if whole => fb.ins().load(types::I16X8, emit::mem(), pv, 0),
            Form::Int {
                vector: IntVector::Words,
                ..
            } => fb.ins().sload16(types::I32, emit::mem(), pv, 0),
            Form::Int {
                vector: IntVector::Bytes { signed, zero },
                ..
            } => {
                let (v, ty) = match (whole, signed) {
                    (true, true) => (fb.ins().sload8x8(emit::mem(), pv, 0), types::I16X8),
                    (true, false) => (fb.ins().uload8x8(emit::mem(), pv, 0), types::I16X8),
                    (false, true) => (fb.ins().sload8(types::I32, emit::mem(), pv, 0), types::I32),
                    (false, false) => (fb.ins().uload8(types::I32, emit::mem(), pv, 0), types::I32),
                };
                if zero == 0 {
                    return v;
                }
                let z = emit::iconst_of(fb, ty.lane_type(), zero as i64);
                let z = if ty.is_vector() {
                    fb.ins().splat(ty, z)
                } else {
                    z
                };
                fb.ins().isub(v, z)
            }
        }
    }

    /// Row `j`'s f32 value from its vector and scalar accumulators (the lanes added).
    fn finish(self, fb: &mut FunctionBuilder, vacc: Value, acc: Value, j: Value) -> Value {
        let lanes: Vec<Value> = (0..4u8).map(|l| fb.ins().extractlane(vacc, l)).collect();
        match self {
            Form::F32 => {
                let p = fb.ins().fadd(lanes[0], lanes[1]);
                let q = fb.ins().fadd(lanes[2], lanes[3]);
                let h = fb.ins().fadd(p, q);
                fb.ins().fadd(h, acc)
            }
            Form::Int { factors, .. } => {
                let p = fb.ins().iadd(lanes[0], lanes[1]);
                let q = fb.ins().iadd(lanes[2], lanes[3]);
                let h = fb.ins().iadd(p, q);
                let sum = fb.ins().iadd(h, acc);
                let f = fb.ins().fcvt_from_sint(types::F32, sum);
                let factor = emit::load_at(fb, types::F32, factors, j);
                fb.ins().fmul(f, factor)
            }
        }
    }
}

/// Rows `first..first + rows` into `out`: `bias[j] + M[j]·v` over `n`-element rows of `m`
/// (see [`rows_times_many`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn rows_times(
    fb: &mut FunctionBuilder,
    form: Form,
    m: Value,
    bias: Option<Value>,
    v: Value,
    n: usize,
    first: usize,
    rows: usize,
    out: Value,
) {
    let one = emit::iconst(fb, 1);
    rows_times_many(fb, form, m, bias, n, first, rows, one, &|_, _| v, out, 0);
}

/// The same rows of `m` times `count` (run-time) vectors, the `k`th at `x_at(k)`, into f32
/// rows at `out + k·out_stride` elements: [`ROW_BLOCK`] rows at a time, every vector
/// through one block before the next block, so that a block of rows is read from memory
/// once for all the vectors and then from L1; then the remaining rows one by one.
#[allow(clippy::too_many_arguments)]
pub(super) fn rows_times_many(
    fb: &mut FunctionBuilder,
    form: Form,
    m: Value,
    bias: Option<Value>,
    n: usize,
    first: usize,
    rows: usize,
    count: Value,
    x_at: &dyn Fn(&mut FunctionBuilder, Value) -> Value,
    out: Value,
    out_stride: usize,
) {
    let blocked = rows - rows % ROW_BLOCK;
    let (lanes, vty, sty) = form.lanes();
    let row_bytes = n as i64 * form.row_bytes();
    for (start, end, block) in [
        (first, first + blocked, ROW_BLOCK),
        (first + blocked, first + rows, 1),
    ] {
        if end <= start {
            continue;
        }
        let (start, end) = (emit::iconst(fb, start as i64), emit::iconst(fb, end as i64));
        emit::for_range(fb, start, end, block as i64, |fb, j| {
            let row = fb.ins().imul_imm_s(j, row_bytes);
            let row = fb.ins().iadd(m, row);
            emit::for_dynamic(fb, count, |fb, k| {
                let v = x_at(fb, k);
                let o = fb.ins().imul_imm_s(k, (out_stride * 4) as i64);
                let out = fb.ins().iadd(out, o);
                let vaccs: Vec<_> = (0..block).map(|_| fb.declare_var(vty)).collect();
                let accs: Vec<_> = (0..block).map(|_| fb.declare_var(sty)).collect();
                let zero = if sty == types::F32 {
                    fb.ins().f32const(0.0)
                } else {
                    emit::iconst_of(fb, sty, 0)
                };
                let vzero = fb.ins().splat(vty, zero);
                for r in 0..block {
                    fb.def_var(vaccs[r], vzero);
                    fb.def_var(accs[r], zero);
                }
                emit::for_lanes(fb, n as i64, lanes, &mut |fb, i, whole| {
                    let vars = if whole { &vaccs } else { &accs };
                    let pv = emit::addr(fb, v, i, form.vector_bytes());
                    let x = form.load_vector(fb, pv, whole);
                    let pm = emit::addr(fb, row, i, form.row_bytes());
                    for (r, &var) in vars.iter().enumerate() {
                        let acc = fb.use_var(var);
                        let acc = form.mac(fb, acc, pm, (r as i64 * row_bytes) as i32, x, whole);
                        fb.def_var(var, acc);
                    }
                });
                if let (Form::Int { factors, .. }, true) = (form, block % 4 == 0) {
                    // Four rows at a time: their lanes summed by a transposing pairwise tree,
                    // then requantized and stored as one vector (exact integer sums, then
                    // the same f32 steps per lane as one row at a time).
                    let tail = n as i64 % lanes != 0;
                    for quad in 0..block / 4 {
                        let rows: Vec<usize> = (4 * quad..4 * quad + 4).collect();
                        let v: Vec<Value> = rows.iter().map(|&r| fb.use_var(vaccs[r])).collect();
                        let ab = fb.ins().iadd_pairwise(v[0], v[1]);
                        let cd = fb.ins().iadd_pairwise(v[2], v[3]);
                        let mut sums = fb.ins().iadd_pairwise(ab, cd);
                        if tail {
                            let zero = emit::iconst_of(fb, types::I32, 0);
                            let mut t = fb.ins().splat(types::I32X4, zero);
                            for (lane, &r) in rows.iter().enumerate() {
                                let s = fb.use_var(accs[r]);
                                t = fb.ins().insertlane(t, s, lane as u8);
                            }
                            sums = fb.ins().iadd(sums, t);
                        }
                        let j4 = fb.ins().iadd_imm_s(j, 4 * quad as i64);
                        let f = fb.ins().fcvt_from_sint(types::F32X4, sums);
                        let pf = emit::addr(fb, factors, j4, 4);
                        let factor = fb.ins().load(types::F32X4, emit::mem(), pf, 0);
                        let mut sum = fb.ins().fmul(f, factor);
                        if let Some(b) = bias {
                            let pb = emit::addr(fb, b, j4, 4);
                            let bj = fb.ins().load(types::F32X4, emit::mem(), pb, 0);
                            sum = fb.ins().fadd(sum, bj);
                        }
                        let po = emit::addr(fb, out, j4, 4);
                        fb.ins().store(emit::mem(), sum, po, 0);
                    }
                    return;
                }
                for r in 0..block {
                    let jr = fb.ins().iadd_imm_s(j, r as i64);
                    let (vs, s) = (fb.use_var(vaccs[r]), fb.use_var(accs[r]));
                    let mut sum = form.finish(fb, vs, s, jr);
                    if let Some(b) = bias {
                        let bj = emit::load_at(fb, types::F32, b, jr);
                        sum = fb.ins().fadd(sum, bj);
                    }
                    emit::store_at(fb, sum, out, jr);
                }
            });
        });
    }
}
