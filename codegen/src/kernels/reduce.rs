//! Reduction kernels: the `Reduce*` ops, ArgMax/ArgMin and CumSum.
//!
//! Every one walks the input as two loop nests ([`Walk`]): the kept axes (one result
//! element, or one line, per position) around the reduced axes (the elements folded into
//! it). Axes are coalesced first, so a reduction over the last axes is one contiguous run per
//! result element, and the batch (axis 0) is a run-time loop of whichever nest it belongs to.
//! Float reductions fold in f32 registers, vectorized two ways: four lanes of one contiguous
//! run accumulated side by side then combined (reductions over the last axis: LayerNorm-like
//! statistics, L2 norms), or four neighbouring result elements at once when the last axis is
//! kept (mean pooling over a sequence). Integer reductions fold in i64 and wrap to the dtype,
//! as the interpreter does (`qlift_ir`'s `ops/reduce.rs`, whose definitions these follow);
//! the f32 folds differ from its f64 sums by rounding only.

use super::{split, Kernel};
use crate::emit;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, FuncRef, InstBuilder, Type, Value};
use cranelift_frontend::{FunctionBuilder, Variable};
use qlift_ir::{DType, OpKind};

/// f32 lanes of a vector step.
const LANES: usize = 4;

/// The body of [`Walk::outputs_split`]: `body(fb, pointers, x, y, vector)`.
pub(super) type OutputsBody<'a> =
    dyn FnMut(&mut FunctionBuilder, &[Value], Value, Value, bool) + 'a;

/// The loops of a reduction over `axes` of an operand: the kept axes outside, the reduced
/// ones inside, both coalesced; element offsets into the operand (`x`) and into the result
/// (`y`, laid out as the kept axes in order).
pub(super) struct Walk {
    /// The batch is a run-time loop around the kept nest (axis 0 kept).
    batch_kept: bool,
    /// The batch is a run-time loop of the reduction (axis 0 reduced).
    batch_reduced: bool,
    /// Elements per sample of the operand and of the result.
    x_sample: i64,
    y_sample: i64,
    /// The kept nest: extents, then strides of x and y.
    kept: Vec<usize>,
    kept_strides: [Vec<i64>; 2],
    /// The reduced nest: extents and strides of x.
    reduced: Vec<usize>,
    reduced_strides: Vec<i64>,
}

impl Walk {
    /// Plans the walk of an operand of extents `dims` (axis 0 the batch when `batched`) that
    /// reduces `axes`.
    pub(super) fn new(dims: &[usize], batched: bool, axes: &[usize]) -> Walk {
        let first = usize::from(batched);
        let x_strides = emit::row_major(dims);
        let kept_dims: Vec<usize> = (0..dims.len())
            .filter(|a| !axes.contains(a))
            .map(|a| dims[a])
            .collect();
        let y_all = emit::row_major(&kept_dims);
        let (mut kept, mut kx, mut ky, mut reduced, mut rx) =
            (vec![], vec![], vec![], vec![], vec![]);
        let mut y_axis = usize::from(batched && !axes.contains(&0));
        for a in first..dims.len() {
            if axes.contains(&a) {
                reduced.push(dims[a]);
                rx.push(x_strides[a]);
            } else {
                kept.push(dims[a]);
                kx.push(x_strides[a]);
                ky.push(y_all[y_axis]);
                y_axis += 1;
            }
        }
        let (kept, ks) = emit::coalesce(&kept, &[kx, ky]);
        let (reduced, rs) = emit::coalesce(&reduced, &[rx]);
        let per_sample = |d: &[usize]| d[first..].iter().product::<usize>() as i64;
        let kept_per_sample: usize = kept_dims[usize::from(batched && !axes.contains(&0))..]
            .iter()
            .product();
        Walk {
            batch_kept: batched && !axes.contains(&0),
            batch_reduced: batched && axes.contains(&0),
            x_sample: per_sample(dims),
            y_sample: kept_per_sample as i64,
            kept,
            kept_strides: [ks[0].clone(), ks[1].clone()],
            reduced,
            reduced_strides: rs[0].clone(),
        }
    }

    /// Whether the innermost kept axis is contiguous in both x and y with at least `lanes`
    /// elements (result elements can be computed `lanes` at a time).
    pub(super) fn kept_vectorizable(&self, lanes: usize) -> bool {
        self.kept.last().is_some_and(|&e| e >= lanes)
            && self.kept_strides[0].last() == Some(&1)
            && self.kept_strides[1].last() == Some(&1)
    }

    /// Whether the innermost reduced axis is contiguous with at least `lanes` elements.
    pub(super) fn reduced_vectorizable(&self, lanes: usize) -> bool {
        self.reduced.last().is_some_and(|&e| e >= lanes) && self.reduced_strides.last() == Some(&1)
    }

    /// The number of elements each result element folds (the batch counted as 1).
    fn static_count(&self) -> usize {
        self.reduced.iter().product()
    }

    /// Emits the kept nest; `body(fb, x, y, vector)` runs per result element (or, with
    /// `lanes` > 1 on a [`kept_vectorizable`](Self::kept_vectorizable) walk, per `lanes`
    /// consecutive ones when `vector`).
    pub(super) fn outputs(
        &self,
        k: &mut Kernel,
        lanes: usize,
        body: &mut dyn FnMut(&mut FunctionBuilder, Value, Value, bool),
    ) {
        let vector = lanes > 1 && self.kept_vectorizable(lanes);
        if !self.batch_kept {
            let zero = emit::iconst(k.fb, 0);
            self.nest(k.fb, vector, lanes, 0, [zero, zero], body);
            return;
        }
        let (xs, ys) = (self.x_sample, self.y_sample);
        emit::for_dynamic(k.fb, k.batch, |fb, b| {
            let start = [fb.ins().imul_imm_s(b, xs), fb.ins().imul_imm_s(b, ys)];
            self.nest(fb, vector, lanes, 0, start, body);
        });
    }

    /// [`Walk::outputs`] split across threads when the call is large enough
    /// ([`Kernel::splits_elements`]) over the outermost kept extent of every sample (the
    /// result elements are independent), with the pointers `ptrs` passed to `body` (see
    /// [`Kernel::split_rows`]). Stays on one thread when the batch is reduced or every kept
    /// axis is in the vector steps.
    pub(super) fn outputs_split(
        &self,
        k: &mut Kernel,
        lanes: usize,
        ptrs: &[Value],
        body: &mut OutputsBody,
    ) -> Result<(), String> {
        let vector = lanes > 1 && self.kept_vectorizable(lanes);
        let elements = self.x_sample as usize;
        if self.batch_reduced
            || self.kept.len() <= usize::from(vector)
            || !k.splits_elements(elements)
        {
            self.outputs(k, lanes, &mut |fb, x, y, v| body(fb, ptrs, x, y, v));
            return Ok(());
        }
        let per_sample = self.kept[0] as i64;
        let samples = k.samples(self.batch_kept);
        let rows = k.fb.ins().imul_imm_s(samples, per_sample);
        let (xs, ys) = (self.x_sample, self.y_sample);
        let [kx, ky] = [self.kept_strides[0][0], self.kept_strides[1][0]];
        k.split_rows(rows, ptrs, elements, &mut |fb, _, p, begin, end| {
            emit::for_range(fb, begin, end, 1, |fb, u| {
                let (b, c) = split::sample_row(fb, u, self.batch_kept, per_sample);
                let at = |fb: &mut FunctionBuilder, sample: i64, row: i64| {
                    let s = fb.ins().imul_imm_s(b, sample);
                    let r = fb.ins().imul_imm_s(c, row);
                    fb.ins().iadd(s, r)
                };
                let start = [at(fb, xs, kx), at(fb, ys, ky)];
                self.nest(fb, vector, lanes, 1, start, &mut |fb, x, y, v| {
                    body(fb, p, x, y, v)
                });
            });
            Ok(())
        })
    }

    /// The kept loops from axis `from` on (the last `lanes` result elements at a time when
    /// `vector`) from the offsets `start` (into x and y).
    fn nest(
        &self,
        fb: &mut FunctionBuilder,
        vector: bool,
        lanes: usize,
        from: usize,
        start: [Value; 2],
        body: &mut dyn FnMut(&mut FunctionBuilder, Value, Value, bool),
    ) {
        let lanes = if vector { lanes } else { 1 };
        emit::for_strided_lanes(
            fb,
            &self.kept,
            &self.kept_strides,
            &start,
            from,
            lanes,
            &mut |fb, off, whole| body(fb, off[0], off[1], whole),
        );
    }

    /// Emits the reduced nest from element offset `x` of the operand: `body(fb, x, vector)`
    /// per element (or per `lanes` consecutive ones when `vector`, with `lanes` > 1 on a
    /// [`reduced_vectorizable`](Self::reduced_vectorizable) walk).
    pub(super) fn fold(
        &self,
        fb: &mut FunctionBuilder,
        batch: Value,
        x: Value,
        lanes: usize,
        body: &mut dyn FnMut(&mut FunctionBuilder, Value, bool),
    ) {
        let vector = lanes > 1 && self.reduced_vectorizable(lanes);
        let n = self.reduced.len();
        let (outer, inner) = if vector {
            (&self.reduced[..n - 1], self.reduced[n - 1])
        } else {
            (&self.reduced[..], 0)
        };
        let strides = vec![self.reduced_strides[..outer.len()].to_vec()];
        let mut nest = |fb: &mut FunctionBuilder, start: Value| {
            emit::for_strided(fb, outer, &strides, &[start], &mut |fb, off| {
                if !vector {
                    body(fb, off[0], false);
                    return;
                }
                emit::for_lanes(fb, inner as i64, lanes as i64, &mut |fb, i, whole| {
                    let at = fb.ins().iadd(off[0], i);
                    body(fb, at, whole);
                });
            });
        };
        if !self.batch_reduced {
            nest(fb, x);
            return;
        }
        let xs = self.x_sample;
        emit::for_dynamic(fb, batch, |fb, b| {
            let s = fb.ins().imul_imm_s(b, xs);
            let start = fb.ins().iadd(x, s);
            nest(fb, start);
        });
    }

    /// The number of elements folded into each result element (an i64 value: the batch
    /// size is one factor when the batch is reduced).
    fn count(&self, fb: &mut FunctionBuilder, batch: Value) -> Value {
        let n = self.static_count() as i64;
        if self.batch_reduced {
            fb.ins().imul_imm_s(batch, n)
        } else {
            emit::iconst(fb, n)
        }
    }
}

/// How a reduction folds its elements: what each contributes, how contributions combine,
/// and what the fold becomes at the end.
#[derive(Clone, Copy, PartialEq)]
enum Fold {
    Add,
    Mul,
    Max,
    Min,
}

#[derive(Clone, Copy, PartialEq)]
enum Pre {
    Itself,
    Abs,
    Square,
}

#[derive(Clone, Copy, PartialEq)]
enum Post {
    Itself,
    Mean,
    Sqrt,
    Log,
}

/// The definition of a `Reduce*` op (LogSumExp has its own two-pass form).
fn definition(kind: OpKind) -> (Pre, Fold, Post) {
    match kind {
        OpKind::ReduceMean => (Pre::Itself, Fold::Add, Post::Mean),
        OpKind::ReduceMax => (Pre::Itself, Fold::Max, Post::Itself),
        OpKind::ReduceMin => (Pre::Itself, Fold::Min, Post::Itself),
        OpKind::ReduceProd => (Pre::Itself, Fold::Mul, Post::Itself),
        OpKind::ReduceL1 => (Pre::Abs, Fold::Add, Post::Itself),
        OpKind::ReduceL2 => (Pre::Square, Fold::Add, Post::Sqrt),
        OpKind::ReduceSumSquare => (Pre::Square, Fold::Add, Post::Itself),
        OpKind::ReduceLogSum => (Pre::Itself, Fold::Add, Post::Log),
        _ => (Pre::Itself, Fold::Add, Post::Itself),
    }
}

/// The fold's starting value as an f32.
fn float_identity(fold: Fold) -> f32 {
    match fold {
        Fold::Add => 0.0,
        Fold::Mul => 1.0,
        Fold::Max => f32::NEG_INFINITY,
        Fold::Min => f32::INFINITY,
    }
}

/// `a ∘ b` on f32 or f32x4 (max and min propagate NaN, as the interpreter's do).
fn combine_f32(fb: &mut FunctionBuilder, fold: Fold, a: Value, b: Value) -> Value {
    match fold {
        Fold::Add => fb.ins().fadd(a, b),
        Fold::Mul => fb.ins().fmul(a, b),
        Fold::Max => fb.ins().fmax(a, b),
        Fold::Min => fb.ins().fmin(a, b),
    }
}

fn pre_f32(fb: &mut FunctionBuilder, pre: Pre, v: Value) -> Value {
    match pre {
        Pre::Itself => v,
        Pre::Abs => fb.ins().fabs(v),
        Pre::Square => fb.ins().fmul(v, v),
    }
}

/// An f32 constant splatted to `ty` (scalar or vector).
fn fconst(fb: &mut FunctionBuilder, ty: Type, v: f32) -> Value {
    let c = fb.ins().f32const(v);
    if ty.is_vector() {
        fb.ins().splat(ty, c)
    } else {
        c
    }
}

/// The lanes of an f32x4 combined into one f32.
fn horizontal(fb: &mut FunctionBuilder, fold: Fold, v: Value) -> Value {
    let lanes: Vec<Value> = (0..LANES as u8)
        .map(|i| fb.ins().extractlane(v, i))
        .collect();
    let a = combine_f32(fb, fold, lanes[0], lanes[1]);
    let b = combine_f32(fb, fold, lanes[2], lanes[3]);
    combine_f32(fb, fold, a, b)
}

/// The reduced axes of the kernel's op (the `axes` attribute, or a constant operand 1).
fn axes_of(k: &Kernel, rank: usize) -> Result<Vec<usize>, String> {
    let operand = match (k.op.attrs.get("axes"), k.optional(1)) {
        (Some(_), _) => None,
        (None, Some(o)) => Some(
            o.constant
                .as_ref()
                .ok_or("reduction axes computed at run time are not supported by code generation")?
                .to_i64_vec()?,
        ),
        (None, None) => return Err("the axes operand is missing".to_string()),
    };
    qlift_ir::reduce_axes(&k.op.attrs, operand.as_deref(), rank)
}

/// `Reduce*`: per result element, the fold of its elements (see the module documentation).
pub(super) fn reduce(k: &mut Kernel) -> Result<(), String> {
    let kind = k.op.kind;
    let (x, y) = (k.input(0)?, k.output(0));
    let dims = x.dims();
    let axes = axes_of(k, dims.len())?;
    let walk = Walk::new(&dims, x.batched(), &axes);
    let (dtype, px, py) = (x.ty.dtype, x.ptr, y.ptr);
    if y.batched() != walk.batch_kept {
        return Err("the result's batch axis does not match the reduction".to_string());
    }
    if dtype != DType::F32 {
        return reduce_integer(k, &walk, dtype);
    }
    if kind == OpKind::ReduceLogSumExp {
        return log_sum_exp(k, &walk);
    }
    let (pre, fold, post) = definition(kind);
    let logf = if post == Post::Log {
        Some(k.import("logf", &[types::F32], &[types::F32])?)
    } else {
        None
    };
    // The batch is read only when it is reduced, and then the call is not split (the body
    // would otherwise see a value of the kernel's function from a task's).
    let batch = k.batch;
    let vector_rows = walk.reduced_vectorizable(LANES);
    let mut body = |fb: &mut FunctionBuilder, p: &[Value], xo, yo, vector| {
        let (px, py) = (p[0], p[1]);
        let acc = fb.declare_var(types::F32);
        let vacc = fb.declare_var(types::F32X4);
        let ty = if vector { types::F32X4 } else { types::F32 };
        let init = fconst(fb, ty, float_identity(fold));
        let count = walk.count(fb, batch);
        if vector {
            // Four neighbouring result elements at once.
            fb.def_var(vacc, init);
            walk.fold(fb, batch, xo, 1, &mut |fb, at, _| {
                let a = emit::addr(fb, px, at, 4);
                let v = fb.ins().load(types::F32X4, emit::mem(), a, 0);
                let v = pre_f32(fb, pre, v);
                let s = fb.use_var(vacc);
                let s = combine_f32(fb, fold, s, v);
                fb.def_var(vacc, s);
            });
            let s = fb.use_var(vacc);
            let r = post_f32(fb, post, s, count, logf);
            let a = emit::addr(fb, py, yo, 4);
            fb.ins().store(emit::mem(), r, a, 0);
            return;
        }
        fb.def_var(acc, init);
        if vector_rows {
            let vinit = fconst(fb, types::F32X4, float_identity(fold));
            fb.def_var(vacc, vinit);
        }
        walk.fold(
            fb,
            batch,
            xo,
            if vector_rows { LANES } else { 1 },
            &mut |fb, at, whole| {
                let (var, ty) = if whole {
                    (vacc, types::F32X4)
                } else {
                    (acc, types::F32)
                };
                let a = emit::addr(fb, px, at, 4);
                let v = fb.ins().load(ty, emit::mem(), a, 0);
                let v = pre_f32(fb, pre, v);
                let s = fb.use_var(var);
                let s = combine_f32(fb, fold, s, v);
                fb.def_var(var, s);
            },
        );
        let mut s = fb.use_var(acc);
        if vector_rows {
            let v = fb.use_var(vacc);
            let h = horizontal(fb, fold, v);
            s = combine_f32(fb, fold, h, s);
        }
        let r = post_f32(fb, post, s, count, logf);
        emit::store_at(fb, r, py, yo);
    };
    if logf.is_some() {
        // `logf` is imported into the kernel's function: not split.
        walk.outputs(k, LANES, &mut |fb, x, y, v| body(fb, &[px, py], x, y, v));
        return Ok(());
    }
    walk.outputs_split(k, LANES, &[px, py], &mut body)
}

/// The end of a float fold: the mean divides by the element count (an i64 value).
fn post_f32(
    fb: &mut FunctionBuilder,
    post: Post,
    s: Value,
    count: Value,
    logf: Option<FuncRef>,
) -> Value {
    let ty = fb.func.dfg.value_type(s);
    match post {
        Post::Itself => s,
        Post::Mean => {
            let n = fb.ins().fcvt_from_sint(types::F32, count);
            let n = if ty.is_vector() {
                fb.ins().splat(ty, n)
            } else {
                n
            };
            fb.ins().fdiv(s, n)
        }
        Post::Sqrt => fb.ins().sqrt(s),
        Post::Log => match logf {
            Some(f) if !ty.is_vector() => {
                let call = fb.ins().call(f, &[s]);
                fb.inst_results(call)[0]
            }
            // Lane by lane.
            Some(f) => {
                let mut v = s;
                for i in 0..LANES as u8 {
                    let e = fb.ins().extractlane(s, i);
                    let call = fb.ins().call(f, &[e]);
                    let l = fb.inst_results(call)[0];
                    v = fb.ins().insertlane(v, l, i);
                }
                v
            }
            None => s,
        },
    }
}

/// The two passes of LogSumExp and LogSoftmax over a line: its maximum `m`, then
/// `log Σ exp(x − m)` (so that large elements do not overflow).
pub(super) struct ExpSum {
    expf: FuncRef,
    logf: FuncRef,
    max: Variable,
    sum: Variable,
}

impl ExpSum {
    pub(super) fn new(k: &mut Kernel) -> Result<ExpSum, String> {
        let expf = k.import("expf", &[types::F32], &[types::F32])?;
        let logf = k.import("logf", &[types::F32], &[types::F32])?;
        let (max, sum) = (k.fb.declare_var(types::F32), k.fb.declare_var(types::F32));
        Ok(ExpSum {
            expf,
            logf,
            max,
            sum,
        })
    }

    /// `(m, log Σ exp(x − m))` over the elements `walk` folds from offset `x` of `base`.
    pub(super) fn emit(
        &self,
        fb: &mut FunctionBuilder,
        walk: &Walk,
        batch: Value,
        base: Value,
        x: Value,
    ) -> (Value, Value) {
        let ninf = fb.ins().f32const(f32::NEG_INFINITY);
        fb.def_var(self.max, ninf);
        walk.fold(fb, batch, x, 1, &mut |fb, at, _| {
            let v = emit::load_at(fb, types::F32, base, at);
            let m = fb.use_var(self.max);
            let m = fb.ins().fmax(m, v);
            fb.def_var(self.max, m);
        });
        let m = fb.use_var(self.max);
        let zero = fb.ins().f32const(0.0);
        fb.def_var(self.sum, zero);
        walk.fold(fb, batch, x, 1, &mut |fb, at, _| {
            let v = emit::load_at(fb, types::F32, base, at);
            let d = fb.ins().fsub(v, m);
            let call = fb.ins().call(self.expf, &[d]);
            let e = fb.inst_results(call)[0];
            let s = fb.use_var(self.sum);
            let s = fb.ins().fadd(s, e);
            fb.def_var(self.sum, s);
        });
        let s = fb.use_var(self.sum);
        let call = fb.ins().call(self.logf, &[s]);
        (m, fb.inst_results(call)[0])
    }
}

/// ReduceLogSumExp: `max + log Σ exp(x − max)`; a non-finite maximum (an infinity, or NaN
/// from a NaN element) is the result itself, as in the interpreter.
fn log_sum_exp(k: &mut Kernel, walk: &Walk) -> Result<(), String> {
    let (px, py) = (k.input(0)?.ptr, k.output(0).ptr);
    let passes = ExpSum::new(k)?;
    let batch = k.batch;
    walk.outputs(k, 1, &mut |fb, xo, yo, _| {
        let (m, l) = passes.emit(fb, walk, batch, px, xo);
        let r = fb.ins().fadd(m, l);
        let a = fb.ins().fabs(m);
        let inf = fb.ins().f32const(f32::INFINITY);
        let finite = fb.ins().fcmp(FloatCC::LessThan, a, inf);
        let r = fb.ins().select(finite, r, m);
        emit::store_at(fb, r, py, yo);
    });
    Ok(())
}

/// Whether integer elements of `dtype` widen without sign.
fn unsigned(dtype: DType) -> bool {
    matches!(dtype, DType::U8 | DType::U4 | DType::Bool)
}

/// Loads an integer element widened to i64.
fn load_i64(fb: &mut FunctionBuilder, dtype: DType, base: Value, at: Value) -> Value {
    let ty = super::elem_type(dtype);
    let v = emit::load_at(fb, ty, base, at);
    match (ty == types::I64, unsigned(dtype)) {
        (true, _) => v,
        (false, true) => fb.ins().uextend(types::I64, v),
        (false, false) => fb.ins().sextend(types::I64, v),
    }
}

/// Integer reductions: folds in wrapping i64, the result narrowed to the dtype (the mean
/// divides the wrapped sum, truncating).
fn reduce_integer(k: &mut Kernel, walk: &Walk, dtype: DType) -> Result<(), String> {
    let kind = k.op.kind;
    let (pre, fold, post) = definition(kind);
    if matches!(post, Post::Sqrt | Post::Log) || kind == OpKind::ReduceLogSumExp {
        return Err(format!("{kind} of {dtype} is not supported"));
    }
    if post == Post::Mean && (walk.static_count() == 0) {
        return Err("integer mean of no elements".to_string());
    }
    let (lo, hi) = dtype.int_range().ok_or("integer dtype expected")?;
    let init = match fold {
        Fold::Add => 0,
        Fold::Mul => 1,
        Fold::Max => lo,
        Fold::Min => hi,
    };
    let (px, py, ty) = (k.input(0)?.ptr, k.output(0).ptr, super::elem_type(dtype));
    // Read only when the batch is reduced, which is not split (see `reduce`).
    let batch = k.batch;
    walk.outputs_split(k, 1, &[px, py], &mut |fb, p, xo, yo, _| {
        let (px, py) = (p[0], p[1]);
        let acc = fb.declare_var(types::I64);
        let c = emit::iconst(fb, init);
        fb.def_var(acc, c);
        walk.fold(fb, batch, xo, 1, &mut |fb, at, _| {
            let v = load_i64(fb, dtype, px, at);
            let v = match pre {
                Pre::Itself => v,
                Pre::Abs => fb.ins().iabs(v),
                Pre::Square => fb.ins().imul(v, v),
            };
            let s = fb.use_var(acc);
            let s = match fold {
                Fold::Add => fb.ins().iadd(s, v),
                Fold::Mul => fb.ins().imul(s, v),
                Fold::Max => fb.ins().smax(s, v),
                Fold::Min => fb.ins().smin(s, v),
            };
            fb.def_var(acc, s);
        });
        let mut s = fb.use_var(acc);
        if post == Post::Mean {
            let n = walk.count(fb, batch);
            s = fb.ins().sdiv(s, n);
        }
        let r = if ty == types::I64 {
            s
        } else {
            fb.ins().ireduce(ty, s)
        };
        emit::store_at(fb, r, py, yo);
    })
}

/// The single axis of ArgMax/ArgMin/CumSum: `(walk, extent, stride)` where the extent is
/// the run-time batch for axis 0 of a batched operand.
fn along(k: &mut Kernel, axis: usize) -> Result<(Walk, Value, i64), String> {
    let x = k.input(0)?;
    let dims = x.dims();
    if axis >= dims.len() {
        return Err(format!("axis {axis} is out of range"));
    }
    let walk = Walk::new(&dims, x.batched(), &[axis]);
    let stride = emit::row_major(&dims)[axis];
    let extent = if x.batched() && axis == 0 {
        k.batch
    } else {
        emit::iconst(k.fb, dims[axis] as i64)
    };
    Ok((walk, extent, stride))
}

/// The position of the extreme of a line: the first (or `last`) maximum (or minimum), NaN
/// counting as the extreme (numpy's rule, the interpreter's). ArgMax, ArgMin and Hardmax.
pub(super) struct Extreme {
    max: bool,
    last: bool,
    dtype: DType,
    best: Variable,
    index: Variable,
}

impl Extreme {
    pub(super) fn new(fb: &mut FunctionBuilder, dtype: DType, max: bool, last: bool) -> Extreme {
        let best = fb.declare_var(if dtype == DType::F32 {
            types::F32
        } else {
            types::I64
        });
        Extreme {
            max,
            last,
            dtype,
            best,
            index: fb.declare_var(types::I64),
        }
    }

    /// The position (i64) along a line of `extent` elements (at least one) from offset `x`
    /// of `base`, `stride` elements apart.
    pub(super) fn emit(
        &self,
        fb: &mut FunctionBuilder,
        base: Value,
        x: Value,
        extent: Value,
        stride: i64,
    ) -> Value {
        let (max, last, dtype) = (self.max, self.last, self.dtype);
        let float = dtype == DType::F32;
        let load = |fb: &mut FunctionBuilder, at: Value| {
            if float {
                emit::load_at(fb, types::F32, base, at)
            } else {
                load_i64(fb, dtype, base, at)
            }
        };
        let first = load(fb, x);
        fb.def_var(self.best, first);
        let zero = emit::iconst(fb, 0);
        fb.def_var(self.index, zero);
        let one = emit::iconst(fb, 1);
        emit::for_range(fb, one, extent, 1, |fb, j| {
            let s = fb.ins().imul_imm_s(j, stride);
            let at = fb.ins().iadd(x, s);
            let v = load(fb, at);
            let b = fb.use_var(self.best);
            let take = if float {
                let (cc, cc_eq) = if max {
                    (FloatCC::GreaterThan, FloatCC::GreaterThanOrEqual)
                } else {
                    (FloatCC::LessThan, FloatCC::LessThanOrEqual)
                };
                let v_nan = fb.ins().fcmp(FloatCC::Unordered, v, v);
                if last {
                    let better = fb.ins().fcmp(cc_eq, v, b);
                    fb.ins().bor(better, v_nan)
                } else {
                    let better = fb.ins().fcmp(cc, v, b);
                    let b_ordered = fb.ins().fcmp(FloatCC::Ordered, b, b);
                    let nan_first = fb.ins().band(v_nan, b_ordered);
                    fb.ins().bor(better, nan_first)
                }
            } else {
                let cc = match (max, last) {
                    (true, false) => IntCC::SignedGreaterThan,
                    (true, true) => IntCC::SignedGreaterThanOrEqual,
                    (false, false) => IntCC::SignedLessThan,
                    (false, true) => IntCC::SignedLessThanOrEqual,
                };
                fb.ins().icmp(cc, v, b)
            };
            let nb = fb.ins().select(take, v, b);
            fb.def_var(self.best, nb);
            let i = fb.use_var(self.index);
            let ni = fb.ins().select(take, j, i);
            fb.def_var(self.index, ni);
        });
        fb.use_var(self.index)
    }
}

/// ArgMax/ArgMin: the position of the extreme along the axis (see [`Extreme`]).
pub(super) fn arg_extreme(k: &mut Kernel) -> Result<(), String> {
    let max = k.op.kind == OpKind::ArgMax;
    let last = k.op.attrs.int("select_last_index")? != 0;
    let axis = usize::try_from(k.op.attrs.int("axis")?).map_err(|_| "negative axis")?;
    let (dtype, px, py) = (k.input(0)?.ty.dtype, k.input(0)?.ptr, k.output(0).ptr);
    let (walk, extent, stride) = along(k, axis)?;
    let extreme = Extreme::new(k.fb, dtype, max, last);
    walk.outputs(k, 1, &mut |fb, xo, yo, _| {
        let i = extreme.emit(fb, px, xo, extent, stride);
        emit::store_at(fb, i, py, yo);
    });
    Ok(())
}

/// CumSum: a running sum along the axis per line (four neighbouring lines at once when the
/// axis is not the last one), written before (exclusive) or after adding each element,
/// from the end when reversed. Integers wrap in their dtype.
pub(super) fn cumsum(k: &mut Kernel) -> Result<(), String> {
    let attrs = &k.op.attrs;
    let axis = usize::try_from(attrs.int("axis")?).map_err(|_| "negative axis")?;
    let (exclusive, reverse) = (attrs.int("exclusive")? != 0, attrs.int("reverse")? != 0);
    let (dtype, px, py) = (k.input(0)?.ty.dtype, k.input(0)?.ptr, k.output(0).ptr);
    let float = dtype == DType::F32;
    let ety = super::elem_type(dtype);
    let (walk, extent, stride) = along(k, axis)?;
    // The result has the operand's layout: y offsets are x offsets.
    let acc = k.fb.declare_var(ety);
    let vacc = k.fb.declare_var(types::F32X4);
    walk.outputs(
        k,
        if float { LANES } else { 1 },
        &mut |fb, xo, _, vector| {
            let (var, ty) = if vector {
                (vacc, types::F32X4)
            } else {
                (acc, ety)
            };
            let zero = if float {
                fconst(fb, ty, 0.0)
            } else {
                fb.ins().iconst(ety, 0)
            };
            fb.def_var(var, zero);
            let z = emit::iconst(fb, 0);
            emit::for_range(fb, z, extent, 1, |fb, j| {
                let j = if reverse {
                    let e = fb.ins().iadd_imm_s(extent, -1);
                    fb.ins().isub(e, j)
                } else {
                    j
                };
                let s = fb.ins().imul_imm_s(j, stride);
                let at = fb.ins().iadd(xo, s);
                let a = emit::addr(fb, px, at, ety.bytes() as i64);
                let v = fb.ins().load(ty, emit::mem(), a, 0);
                let before = fb.use_var(var);
                let after = if float {
                    fb.ins().fadd(before, v)
                } else {
                    fb.ins().iadd(before, v)
                };
                fb.def_var(var, after);
                let out = emit::addr(fb, py, at, ety.bytes() as i64);
                fb.ins()
                    .store(emit::mem(), if exclusive { before } else { after }, out, 0);
            });
        },
    );
    Ok(())
}
