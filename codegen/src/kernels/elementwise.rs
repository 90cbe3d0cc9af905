//! Elementwise kernels: the broadcast loop planner and its vector lanes (shared by every
//! elementwise kernel: `math.rs`, `logic.rs`, QAdd, Cast), broadcasting arithmetic (Add,
//! Sub, Mul, Div on f32, i32, i64, i8, u8), Softmax along one axis, and BatchNormalization
//! in inference form.
//!
//! Each follows `qlift_ir`'s interpreter (`ops/math.rs`, `ops/nn.rs`): integer arithmetic
//! wraps in the operand dtype and divides truncating; an integer division by zero makes the
//! kernel return an error (the interpreter's "integer division by zero") instead of
//! trapping; NaN propagates where the interpreter lets it. Broadcasting is resolved at
//! compile time into per-operand element strides (0 along broadcast axes) over the static
//! extents, with the batch as the one run-time outer loop ([`Broadcast`]).

use super::{approx, Kernel, Operand};
use crate::emit;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, Block, FuncRef, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::{FunctionBuilder, Variable};
use qlift_ir::{DType, Dim, OpKind};

/// The loop structure of a broadcast over one result and its operands (the streams, result
/// first): an optional run-time batch loop, then a static strided nest. Also the loops of
/// QAdd (`quant.rs`), with 16 8-bit lanes per vector step.
pub(super) struct Broadcast {
    /// Whether the result's axis 0 is the batch (the outer loop runs `batch` times).
    batched: bool,
    /// Per stream, its element offset per sample of the batch (0 for an operand without the
    /// batch, which every sample shares).
    batch_strides: Vec<i64>,
    /// The static extents of the nest (coalesced).
    extents: Vec<usize>,
    /// Per stream, its element strides along `extents`.
    strides: Vec<Vec<i64>>,
}

impl Broadcast {
    /// Plans `out = f(operands…)` with numpy broadcasting of each operand onto `out`'s shape.
    pub(super) fn new(out: &Operand, operands: &[&Operand]) -> Result<Broadcast, String> {
        let dims = out.dims();
        let rank = dims.len();
        let batched = out.batched();
        let first = usize::from(batched);
        let mut batch_strides = vec![if batched { out.per_sample() as i64 } else { 0 }];
        let mut strides = vec![emit::row_major(&dims)[first..].to_vec()];
        for x in operands {
            let xd = x.dims();
            let pad = rank
                .checked_sub(xd.len())
                .ok_or("an operand has a higher rank than the result")?;
            let own = emit::row_major(&xd);
            if x.batched() && (pad != 0 || !batched) {
                return Err("an operand's batch axis is not the result's axis 0".to_string());
            }
            batch_strides.push(if x.batched() {
                x.per_sample() as i64
            } else {
                0
            });
            let mut s = Vec::with_capacity(rank - first);
            for (a, &d) in dims.iter().enumerate().skip(first) {
                let stride = match a.checked_sub(pad) {
                    Some(j) if xd[j] == d && d != 1 => own[j],
                    Some(j) if xd[j] == 1 => 0,
                    None => 0,
                    Some(j) => {
                        return Err(format!(
                            "operand extent {} does not broadcast to {d} on axis {a}",
                            xd[j]
                        ))
                    }
                };
                s.push(stride);
            }
            strides.push(s);
        }
        let (extents, strides) = emit::coalesce(&dims[first..], &strides);
        Ok(Broadcast {
            batched,
            batch_strides,
            extents,
            strides,
        })
    }

    /// Whether the innermost loop can run `lanes` elements at a time: it holds at least that
    /// many, the result is contiguous there and every operand either contiguous or constant
    /// along it (a splat).
    fn vectorizable(&self, lanes: usize) -> bool {
        let Some(&e) = self.extents.last() else {
            return false;
        };
        lanes > 1
            && e >= lanes
            && self.strides[0].last() == Some(&1)
            && self.strides.iter().all(|s| matches!(s.last(), Some(0 | 1)))
    }

    /// Emits the loops; `body` gets the element offset of each stream. With `lanes` > 1
    /// (and a [`vectorizable`](Self::vectorizable) plan) the innermost loop steps by `lanes`
    /// elements, calling `body` with [`Lanes::Vector`] (one splat flag per stream), then
    /// finishes the remainder with [`Lanes::Scalar`].
    pub(super) fn emit_lanes(
        &self,
        k: &mut Kernel,
        lanes: usize,
        body: &mut dyn FnMut(&mut FunctionBuilder, &[Value], &Lanes),
    ) {
        let vector = self.vectorizable(lanes);
        if !self.batched {
            let zero = emit::iconst(k.fb, 0);
            let start = vec![zero; self.batch_strides.len()];
            self.nest(k.fb, vector, lanes, 0, &start, body);
            return;
        }
        let batch = k.batch;
        emit::for_dynamic(k.fb, batch, |fb, b| {
            let start = self.sample_start(fb, b);
            self.nest(fb, vector, lanes, 0, &start, body);
        });
    }

    /// [`Broadcast::emit_lanes`] split across threads when the call is large enough
    /// ([`Kernel::splits_elements`]), over the rows of the outermost static extent of every
    /// sample, or over chunks of [`CHUNK`] elements when the nest is one extent. `body` gets
    /// the streams' base pointers (`ptrs`, one per stream, result first, as passed here, or
    /// loaded again in the task function) and must use them instead of captured values.
    pub(super) fn emit_split(
        &self,
        k: &mut Kernel,
        lanes: usize,
        ptrs: &[Value],
        body: &mut SplitBody,
    ) -> Result<(), String> {
        let elements: usize = self.extents.iter().product();
        if self.extents.is_empty() || !k.splits_elements(elements) {
            self.emit_lanes(k, lanes, &mut |fb, off, l| body(fb, ptrs, off, l));
            return Ok(());
        }
        let vector = self.vectorizable(lanes);
        let rows_only = self.extents.len() > 1;
        let per_sample = if rows_only {
            self.extents[0]
        } else {
            self.extents[0].div_ceil(CHUNK)
        } as i64;
        let samples = k.samples(self.batched);
        let rows = k.fb.ins().imul_imm_s(samples, per_sample);
        k.split_rows(rows, ptrs, elements, &mut |fb, _, p, begin, end| {
            emit::for_range(fb, begin, end, 1, |fb, u| {
                let (b, c) = super::split::sample_row(fb, u, self.batched, per_sample);
                let start = self.sample_start(fb, b);
                if rows_only {
                    let start = self.step(fb, &start, 0, c);
                    self.nest(fb, vector, lanes, 1, &start, &mut |fb, off, l| {
                        body(fb, p, off, l)
                    });
                } else {
                    self.chunk(fb, vector, lanes, &start, c, &mut |fb, off, l| {
                        body(fb, p, off, l)
                    });
                }
            });
            Ok(())
        })
    }

    /// The streams' offsets at sample `b` (an i64 value).
    fn sample_start(&self, fb: &mut FunctionBuilder, b: Value) -> Vec<Value> {
        self.batch_strides
            .iter()
            .map(|&s| {
                if s == 0 {
                    emit::iconst(fb, 0)
                } else {
                    fb.ins().imul_imm_s(b, s)
                }
            })
            .collect()
    }

    /// The streams' offsets `start` moved to index `i` of extent `axis`.
    fn step(&self, fb: &mut FunctionBuilder, start: &[Value], axis: usize, i: Value) -> Vec<Value> {
        emit::advanced(fb, start, &self.strides, axis, i)
    }

    /// The loops over the extents from `from` on (the last `lanes` elements at a time
    /// when `vector`) from the streams' offsets `start`.
    fn nest(
        &self,
        fb: &mut FunctionBuilder,
        vector: bool,
        lanes: usize,
        from: usize,
        start: &[Value],
        body: &mut dyn FnMut(&mut FunctionBuilder, &[Value], &Lanes),
    ) {
        let splat: Vec<bool> = self.strides.iter().map(|s| s.last() == Some(&0)).collect();
        let lanes = if vector { lanes } else { 1 };
        emit::for_strided_lanes(
            fb,
            &self.extents,
            &self.strides,
            start,
            from,
            lanes,
            &mut |fb, off, whole| {
                let l = if whole {
                    Lanes::Vector(splat.clone())
                } else {
                    Lanes::Scalar
                };
                body(fb, off, &l)
            },
        );
    }

    /// Chunk `c` (an i64 value) of [`CHUNK`] elements of a one-extent nest from the
    /// streams' offsets `start` ([`for_chunk`]).
    fn chunk(
        &self,
        fb: &mut FunctionBuilder,
        vector: bool,
        lanes: usize,
        start: &[Value],
        c: Value,
        body: &mut dyn FnMut(&mut FunctionBuilder, &[Value], &Lanes),
    ) {
        let splat: Vec<bool> = self.strides.iter().map(|s| s[0] == 0).collect();
        let lanes = if vector { lanes } else { 1 };
        for_chunk(
            fb,
            self.extents[0] as i64,
            lanes as i64,
            CHUNK as i64,
            c,
            &mut |fb, i, whole| {
                let off = self.step(fb, start, 0, i);
                let l = if whole && vector {
                    Lanes::Vector(splat.clone())
                } else {
                    Lanes::Scalar
                };
                body(fb, &off, &l)
            },
        );
    }
}

/// Chunk `c` (an i64 value) of `chunk` elements of `0..n`, as [`emit::for_lanes`] runs
/// them: `body(fb, i, true)` for the whole steps of `lanes` elements the loop over all of
/// `0..n` takes there, then `body(fb, i, false)` for its remainder if the chunk holds it.
/// Chunks start at multiples of `lanes` (`chunk` is one), so every element takes the same path as in the
/// loop over all `n`: a split over chunks gives the bits of the serial loop.
pub(super) fn for_chunk(
    fb: &mut FunctionBuilder,
    n: i64,
    lanes: i64,
    chunk: i64,
    c: Value,
    body: &mut dyn FnMut(&mut FunctionBuilder, Value, bool),
) {
    let lo = fb.ins().imul_imm_s(c, chunk);
    let hi = fb.ins().iadd_imm_s(lo, chunk);
    let end = emit::iconst(fb, n);
    let hi = fb.ins().smin(hi, end);
    let whole = emit::iconst(fb, n - n % lanes);
    let vend = fb.ins().smin(hi, whole);
    emit::for_range(fb, lo, vend, lanes, |fb, i| body(fb, i, true));
    if n % lanes != 0 {
        let slo = fb.ins().smax(lo, whole);
        emit::for_range(fb, slo, hi, 1, |fb, i| body(fb, i, false));
    }
}

/// Elements per part of a one-extent elementwise nest split across threads
/// ([`Broadcast::emit_split`]): a multiple of every vector width, large enough that the
/// per-chunk index arithmetic is negligible.
pub(super) const CHUNK: usize = 1024;

/// The loop body of [`Broadcast::emit_split`]: `body(fb, pointers, offsets, lanes)`, the
/// streams' base pointers and element offsets, result first.
pub(super) type SplitBody<'a> = dyn FnMut(&mut FunctionBuilder, &[Value], &[Value], &Lanes) + 'a;

/// f32 lanes of the vector inner loops (128-bit vectors, the widest Cranelift has on x86-64).
pub(super) const LANES: usize = 4;

/// How a loop body accesses its streams.
pub(super) enum Lanes {
    /// One element per stream.
    Scalar,
    /// One vector step of consecutive elements per stream; `true` marks a stream constant
    /// along the loop (loaded once and splatted).
    Vector(Vec<bool>),
}

impl Lanes {
    /// Loads stream `s`'s f32 element(s) at element offset `off` of `base`.
    pub(super) fn load(
        &self,
        fb: &mut FunctionBuilder,
        s: usize,
        base: Value,
        off: Value,
    ) -> Value {
        match self {
            Lanes::Vector(splat) if !splat[s] => {
                let a = emit::addr(fb, base, off, 4);
                fb.ins().load(types::F32X4, emit::mem(), a, 0)
            }
            Lanes::Vector(_) => {
                let v = emit::load_at(fb, types::F32, base, off);
                fb.ins().splat(types::F32X4, v)
            }
            Lanes::Scalar => emit::load_at(fb, types::F32, base, off),
        }
    }

    /// Stores `v` (f32 or f32x4) at element offset `off` of `base`.
    pub(super) fn store(fb: &mut FunctionBuilder, v: Value, base: Value, off: Value) {
        let a = emit::addr(fb, base, off, 4);
        fb.ins().store(emit::mem(), v, a, 0);
    }
}

/// An f32 constant of type `ty` (scalar, or splatted to every lane).
pub(super) fn fconst(fb: &mut FunctionBuilder, ty: Type, v: f32) -> Value {
    let c = fb.ins().f32const(v);
    if ty.is_vector() {
        fb.ins().splat(ty, c)
    } else {
        c
    }
}

/// `cond ? a : b` for a scalar condition or a vector lane mask (from `fcmp`).
pub(super) fn choose(fb: &mut FunctionBuilder, cond: Value, a: Value, b: Value) -> Value {
    if fb.func.dfg.value_type(a).is_vector() {
        let ty = fb.func.dfg.value_type(a);
        let mask = fb.ins().bitcast(ty, MemFlagsData::new(), cond);
        fb.ins().bitselect(mask, a, b)
    } else {
        fb.ins().select(cond, a, b)
    }
}

/// A block that makes the kernel fail: loops branch to it from anywhere, and
/// [`finish_failure`] places it after the normal path (an unused one is never placed).
pub(super) fn failure_block(k: &mut Kernel) -> Block {
    k.fb.create_block()
}

/// Ends the normal path (which continues after this call) and fills `fail` with the
/// kernel's failure return for `message`.
pub(super) fn finish_failure(k: &mut Kernel, fail: Block, message: &str) {
    let done = k.fb.create_block();
    k.fb.ins().jump(done, &[]);
    k.fb.switch_to_block(fail);
    let yes = k.fb.ins().iconst(types::I8, 1);
    k.fail_if(yes, message);
    k.fb.ins().jump(done, &[]);
    k.fb.switch_to_block(done);
}

/// Whether an integer divisor needs a run-time check for zero: a constant one without
/// zeros does not.
pub(super) fn needs_zero_check(divisor: &Operand) -> bool {
    divisor
        .constant
        .as_ref()
        .is_none_or(|t| t.to_i64_vec().map_or(true, |v| v.contains(&0)))
}

/// Branches to `fail` (see [`failure_block`]) when the integer `y` is zero.
pub(super) fn fail_on_zero(fb: &mut FunctionBuilder, y: Value, fail: Block) {
    let zero = fb.ins().icmp_imm_s(IntCC::Equal, y, 0);
    let ok = fb.create_block();
    fb.ins().brif(zero, fail, &[], ok, &[]);
    fb.switch_to_block(ok);
}

/// Clamps `v` (f32 or f32x4) to `[lo, hi]` leaving NaN as it is (Cranelift's fmax/fmin propagate
/// NaN), skipping infinite bounds: the fused activation and Clip's float form.
pub(super) fn clamp_f32(fb: &mut FunctionBuilder, v: Value, lo: f32, hi: f32) -> Value {
    let mut v = v;
    let ty = fb.func.dfg.value_type(v);
    if lo != f32::NEG_INFINITY {
        let l = fconst(fb, ty, lo);
        v = fb.ins().fmax(v, l);
    }
    if hi != f32::INFINITY {
        let h = fconst(fb, ty, hi);
        v = fb.ins().fmin(v, h);
    }
    v
}

pub(super) fn is_signed(dtype: DType) -> bool {
    !matches!(dtype, DType::U8 | DType::U4 | DType::Bool)
}

/// An integer element widened to i64 by its dtype's signedness.
pub(super) fn widen(fb: &mut FunctionBuilder, v: Value, dtype: DType) -> Value {
    let ty = fb.func.dfg.value_type(v);
    if ty == types::I64 {
        v
    } else if is_signed(dtype) {
        fb.ins().sextend(types::I64, v)
    } else {
        fb.ins().uextend(types::I64, v)
    }
}

/// An i64 value narrowed back to `ty`.
pub(super) fn narrow(fb: &mut FunctionBuilder, v: Value, ty: Type) -> Value {
    if ty == types::I64 {
        v
    } else {
        fb.ins().ireduce(ty, v)
    }
}

/// Add, Sub, Mul, Div with numpy broadcasting (and Add's fused activation on f32).
pub(super) fn binary(k: &mut Kernel) -> Result<(), String> {
    let kind = k.op.kind;
    let (a, b, out) = (k.input(0)?, k.input(1)?, k.output(0));
    let dtype = out.ty.dtype;
    if a.ty.dtype != dtype || b.ty.dtype != dtype {
        return Err(format!(
            "operand types differ: {} and {}",
            a.ty.dtype, b.ty.dtype
        ));
    }
    if !matches!(
        dtype,
        DType::F32 | DType::I32 | DType::I64 | DType::I8 | DType::U8
    ) {
        return Err(format!("{dtype} operands are not supported"));
    }
    let act = k.op.fused_activation()?;
    if act.is_some() && dtype != DType::F32 {
        return Err("a fused activation on integer results is not supported".to_string());
    }
    let plan = Broadcast::new(out, &[a, b])?;
    let (ptrs, ty) = ([out.ptr, a.ptr, b.ptr], out.elem());
    let check_zero = kind == OpKind::Div && dtype != DType::F32 && needs_zero_check(b);
    let fail = failure_block(k);
    let signed = is_signed(dtype);
    let lanes = if dtype == DType::F32 { LANES } else { 1 };
    let mut body = |fb: &mut FunctionBuilder, p: &[Value], off: &[Value], lanes: &Lanes| {
        let (po, pa, pb) = (p[0], p[1], p[2]);
        if dtype == DType::F32 {
            let x = lanes.load(fb, 1, pa, off[1]);
            let y = lanes.load(fb, 2, pb, off[2]);
            let r = float_arith(fb, kind, act, x, y);
            Lanes::store(fb, r, po, off[0]);
            return;
        }
        let x = emit::load_at(fb, ty, pa, off[1]);
        let y = emit::load_at(fb, ty, pb, off[2]);
        let r = match kind {
            OpKind::Add => fb.ins().iadd(x, y),
            OpKind::Sub => fb.ins().isub(x, y),
            OpKind::Mul => fb.ins().imul(x, y),
            _ => {
                if check_zero {
                    fail_on_zero(fb, y, fail);
                }
                if signed {
                    // MIN / -1 overflows (Cranelift traps): x / -1 is the wrapping -x.
                    let minus_one = fb.ins().icmp_imm_s(IntCC::Equal, y, -1);
                    let one = fb.ins().iconst(ty, 1);
                    let safe = fb.ins().select(minus_one, one, y);
                    let q = fb.ins().sdiv(x, safe);
                    let neg = fb.ins().ineg(x);
                    fb.ins().select(minus_one, neg, q)
                } else {
                    let one = fb.ins().iconst(ty, 1);
                    let zero = fb.ins().icmp_imm_s(IntCC::Equal, y, 0);
                    let safe = fb.ins().select(zero, one, y);
                    fb.ins().udiv(x, safe)
                }
            }
        };
        emit::store_at(fb, r, po, off[0]);
    };
    if check_zero {
        // The zero check branches to a block of the kernel's own function: not split.
        plan.emit_lanes(k, lanes, &mut |fb, off, l| body(fb, &ptrs, off, l));
        finish_failure(k, fail, "integer division by zero");
        return Ok(());
    }
    plan.emit_split(k, lanes, &ptrs, &mut body)
}

/// `x kind y` for Add, Sub, Mul or Div (else Div) on f32 or f32x4 values, clamped by the
/// fused activation `act`: one lane step of [`binary`] and of the fused kernels
/// (`fused.rs`), so both compute the same instructions.
pub(super) fn float_arith(
    fb: &mut FunctionBuilder,
    kind: OpKind,
    act: Option<(f32, f32)>,
    x: Value,
    y: Value,
) -> Value {
    let r = match kind {
        OpKind::Add => fb.ins().fadd(x, y),
        OpKind::Sub => fb.ins().fsub(x, y),
        OpKind::Mul => fb.ins().fmul(x, y),
        _ => fb.ins().fdiv(x, y),
    };
    match act {
        Some((lo, hi)) => clamp_f32(fb, r, lo, hi),
        None => r,
    }
}

/// Softmax along `axis`: max, then exp(x - max) written out and summed, then scaled by
/// 1/sum (the interpreter computes in f64 throughout; the kernels stay within tolerance).
/// Large values do not overflow (the max is subtracted first). Rows along the innermost
/// axis go four lanes at a time ([`softmax_rows`]); other axes, one element at a time in f64.
pub(super) fn softmax(k: &mut Kernel) -> Result<(), String> {
    let (x, out) = (k.input(0)?, k.output(0));
    if x.ty.dtype != DType::F32 {
        return Err(format!("expects f32, found {}", x.ty.dtype));
    }
    let dims = x.dims();
    let rank = dims.len() as i64;
    let axis = k.op.attrs.int("axis")?;
    let axis = if axis < 0 { axis + rank } else { axis };
    if axis < 0 || axis >= rank {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    let axis = axis as usize;
    let batched = x.batched();
    let (px, po) = (x.ptr, out.ptr);
    let inner: usize = dims[axis + 1..].iter().product();
    let outer_static: usize = dims[..axis].iter().product();
    if axis == 0 {
        // One line per inner position, along the batch (or the first axis): not split.
        let extent = if batched {
            k.batch
        } else {
            emit::iconst(k.fb, dims[0] as i64)
        };
        let (zero, one) = (emit::iconst(k.fb, 0), emit::iconst(k.fb, 1));
        let expf = k.import("expf", &[types::F32], &[types::F32])?;
        softmax_lines(k.fb, expf, [px, po], zero, one, extent, inner);
        return Ok(());
    }
    let samples = k.samples(batched);
    let outer = k.fb.ins().imul_imm_s(samples, outer_static as i64);
    let elements = outer_static * dims[axis] * inner;
    if inner == 1 {
        let extent = dims[axis];
        return k.split_rows(outer, &[px, po], elements, &mut |fb, _, p, begin, end| {
            softmax_rows(fb, p[0], p[1], begin, end, extent);
            Ok(())
        });
    }
    let extent = dims[axis] as i64;
    k.split_rows(
        outer,
        &[px, po],
        elements,
        &mut |fb, module, p, begin, end| {
            let expf = super::import(fb, module, "expf", &[types::F32], &[types::F32])?;
            let extent = emit::iconst(fb, extent);
            softmax_lines(fb, expf, [p[0], p[1]], begin, end, extent, inner);
            Ok(())
        },
    )
}

/// Softmax along an axis that is not the innermost, for the outer positions `begin..end`
/// (i64 values), each of `extent` (i64) lines of `inner` elements, from `px` into `po`,
/// through `expf` and an f64 sum.
fn softmax_lines(
    fb: &mut FunctionBuilder,
    expf: FuncRef,
    [px, po]: [Value; 2],
    begin: Value,
    end: Value,
    extent: Value,
    inner: usize,
) {
    let max_var = fb.declare_var(types::F32);
    let sum_var = fb.declare_var(types::F64);
    emit::for_range(fb, begin, end, 1, |fb, o| {
        let row = fb.ins().imul(o, extent);
        let row = fb.ins().imul_imm_s(row, inner as i64);
        emit::for_count(fb, inner as i64, |fb, i| {
            let base = fb.ins().iadd(row, i);
            let at = |fb: &mut FunctionBuilder, j: Value| {
                let s = fb.ins().imul_imm_s(j, inner as i64);
                fb.ins().iadd(base, s)
            };
            let ninf = fb.ins().f32const(f32::NEG_INFINITY);
            fb.def_var(max_var, ninf);
            emit::for_dynamic(fb, extent, |fb, j| {
                let idx = at(fb, j);
                let v = emit::load_at(fb, types::F32, px, idx);
                let m = fb.use_var(max_var);
                let m = fb.ins().fmax(m, v);
                fb.def_var(max_var, m);
            });
            let zero = fb.ins().f64const(0.0f64);
            fb.def_var(sum_var, zero);
            emit::for_dynamic(fb, extent, |fb, j| {
                let idx = at(fb, j);
                let v = emit::load_at(fb, types::F32, px, idx);
                let m = fb.use_var(max_var);
                let d = fb.ins().fsub(v, m);
                let call = fb.ins().call(expf, &[d]);
                let e = fb.inst_results(call)[0];
                emit::store_at(fb, e, po, idx);
                let w = fb.ins().fpromote(types::F64, e);
                let s = fb.use_var(sum_var);
                let s = fb.ins().fadd(s, w);
                fb.def_var(sum_var, s);
            });
            let s = fb.use_var(sum_var);
            emit::for_dynamic(fb, extent, |fb, j| {
                let idx = at(fb, j);
                let e = emit::load_at(fb, types::F32, po, idx);
                let w = fb.ins().fpromote(types::F64, e);
                let y = fb.ins().fdiv(w, s);
                let y = fb.ins().fdemote(types::F32, y);
                emit::store_at(fb, y, po, idx);
            });
        });
    });
}

/// Softmax of rows `begin..end` (i64 values) of contiguous rows of `extent` elements (the axis is the innermost, as in
/// attention): [`LANES`] at a time, `exp` inline ([`approx::exp`], a few ulp) instead of a
/// call per element, the sum in f32 and one reciprocal per row — attention at sequence 128
/// spent more time here than in its products.
fn softmax_rows(
    fb: &mut FunctionBuilder,
    px: Value,
    po: Value,
    begin: Value,
    end: Value,
    extent: usize,
) {
    let lanes = LANES as i64;
    let vmax = fb.declare_var(types::F32X4);
    let smax = fb.declare_var(types::F32);
    let vsum = fb.declare_var(types::F32X4);
    let ssum = fb.declare_var(types::F32);
    emit::for_range(fb, begin, end, 1, |fb, r| {
        let row = fb.ins().imul_imm_s(r, extent as i64);
        let x = emit::addr(fb, px, row, 4);
        let y = emit::addr(fb, po, row, 4);
        let ty = |whole: bool| if whole { types::F32X4 } else { types::F32 };
        // Element `i` (not vector `i`) of a row, for either type.
        let load = |fb: &mut FunctionBuilder, ty, base, i| {
            let a = emit::addr(fb, base, i, 4);
            fb.ins().load(ty, emit::mem(), a, 0)
        };
        let store = |fb: &mut FunctionBuilder, v, base, i| {
            let a = emit::addr(fb, base, i, 4);
            fb.ins().store(emit::mem(), v, a, 0);
        };
        let (vm, sm) = (
            fconst(fb, types::F32X4, f32::NEG_INFINITY),
            fconst(fb, types::F32, f32::NEG_INFINITY),
        );
        fb.def_var(vmax, vm);
        fb.def_var(smax, sm);
        emit::for_lanes(fb, extent as i64, lanes, &mut |fb, i, whole| {
            let v = load(fb, ty(whole), x, i);
            let var = if whole { vmax } else { smax };
            let m = fb.use_var(var);
            let m = running_max(fb, m, v);
            fb.def_var(var, m);
        });
        let max = horizontal(fb, vmax, smax, running_max);
        let (vz, sz) = (fconst(fb, types::F32X4, 0.0), fconst(fb, types::F32, 0.0));
        fb.def_var(vsum, vz);
        fb.def_var(ssum, sz);
        emit::for_lanes(fb, extent as i64, lanes, &mut |fb, i, whole| {
            let v = load(fb, ty(whole), x, i);
            let m = if whole {
                fb.ins().splat(types::F32X4, max)
            } else {
                max
            };
            let d = fb.ins().fsub(v, m);
            let e = approx::exp(fb, d);
            store(fb, e, y, i);
            let var = if whole { vsum } else { ssum };
            let s = fb.use_var(var);
            let s = fb.ins().fadd(s, e);
            fb.def_var(var, s);
        });
        let sum = horizontal(fb, vsum, ssum, |fb, a, b| fb.ins().fadd(a, b));
        let one = fb.ins().f32const(1.0);
        let inv = fb.ins().fdiv(one, sum);
        emit::for_lanes(fb, extent as i64, lanes, &mut |fb, i, whole| {
            let e = load(fb, ty(whole), y, i);
            let f = if whole {
                fb.ins().splat(types::F32X4, inv)
            } else {
                inv
            };
            let v = fb.ins().fmul(e, f);
            store(fb, v, y, i);
        });
    });
}

/// `v` where it is above `m`, else `m`: one `maxps` on x86 (Cranelift's `fmax`, with its
/// NaN and signed-zero rules, is a chain of six dependent instructions, and the running
/// maximum of a row is a chain of them). A NaN `v` is skipped here, but Softmax's row is
/// NaN all the same: `exp(v - max)` is NaN and so is the row's sum.
fn running_max(fb: &mut FunctionBuilder, m: Value, v: Value) -> Value {
    let above = fb.ins().fcmp(FloatCC::LessThan, m, v);
    choose(fb, above, v, m)
}

/// `op` over the lanes of the f32x4 variable `vector` and the scalar variable `scalar`.
fn horizontal(
    fb: &mut FunctionBuilder,
    vector: Variable,
    scalar: Variable,
    op: impl Fn(&mut FunctionBuilder, Value, Value) -> Value,
) -> Value {
    let v = fb.use_var(vector);
    let mut acc = fb.use_var(scalar);
    for lane in 0..LANES as u8 {
        let x = fb.ins().extractlane(v, lane);
        acc = op(fb, acc, x);
    }
    acc
}

/// BatchNormalization (inference): `(x - mean) · scale / sqrt(var + eps) + bias` per channel
/// (axis 1), in f64 like the interpreter. The per-channel factor is computed once per channel
/// and sample from the parameter buffers (constant or not).
pub(super) fn batch_norm(k: &mut Kernel) -> Result<(), String> {
    let (x, out) = (k.input(0)?, k.output(0));
    if x.ty.dtype != DType::F32 {
        return Err(format!("expects f32, found {}", x.ty.dtype));
    }
    let dims = x.dims();
    if dims.len() < 2 || x.ty.shape.dims()[1] == Dim::Batch {
        return Err("input has no channel axis".to_string());
    }
    let params: Vec<Value> = (1..5)
        .map(|i| k.input(i).map(|p| p.ptr))
        .collect::<Result<_, _>>()?;
    for i in 1..5 {
        let p = k.input(i)?;
        if p.ty.dtype != DType::F32 || p.per_sample() != dims[1] || p.batched() {
            return Err(format!(
                "operand {i} is not an f32 vector of {} channels",
                dims[1]
            ));
        }
    }
    let eps = k.op.attrs.float("epsilon")? as f64;
    let (px, po) = (x.ptr, out.ptr);
    let (channels, inner) = (dims[1], dims[2..].iter().product::<usize>());
    let samples = k.samples(x.batched());
    let outer = k.fb.ins().imul_imm_s(samples, dims[0] as i64);
    emit::for_dynamic(k.fb, outer, |fb, n| {
        emit::for_count(fb, channels as i64, |fb, c| {
            let load = |fb: &mut FunctionBuilder, p: Value| {
                let v = emit::load_at(fb, types::F32, p, c);
                fb.ins().fpromote(types::F64, v)
            };
            let (scale, bias, mean, var) = (
                load(fb, params[0]),
                load(fb, params[1]),
                load(fb, params[2]),
                load(fb, params[3]),
            );
            let e = fb.ins().f64const(eps);
            let d = fb.ins().fadd(var, e);
            let d = fb.ins().sqrt(d);
            let a = fb.ins().fdiv(scale, d);
            let row = fb.ins().imul_imm_s(n, channels as i64);
            let row = fb.ins().iadd(row, c);
            let row = fb.ins().imul_imm_s(row, inner as i64);
            emit::for_count(fb, inner as i64, |fb, i| {
                let idx = fb.ins().iadd(row, i);
                let v = emit::load_at(fb, types::F32, px, idx);
                let v = fb.ins().fpromote(types::F64, v);
                let v = fb.ins().fsub(v, mean);
                let v = fb.ins().fmul(v, a);
                let v = fb.ins().fadd(v, bias);
                let y = fb.ins().fdemote(types::F32, v);
                emit::store_at(fb, y, po, idx);
            });
        });
    });
    Ok(())
}
