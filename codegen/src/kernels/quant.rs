//! Quantization kernels: QuantizeLinear, DequantizeLinear, and the integer ops that only
//! rescale 8-bit values (Requantize, QAdd, QConcat).
//!
//! Each kernel replicates `qlift_ir::ops::quant` / `qlift_ir::ops::qint` operation for
//! operation, so that results are bit-identical to the interpreter: QuantizeLinear divides
//! in f32 (i32 inputs in f64) and rounds half to even; DequantizeLinear subtracts and
//! multiplies in f32; the integer ops build their multipliers with the same
//! `qlift_ir::fixed_point` constructors and apply them with [`super::requant`]: 16 8-bit
//! elements per step with its [`VectorRequant`] along contiguous runs (the remainder, and
//! parameters outside the vector form's exact range, element by element).
//! Per-axis parameters and broadcasting strides are resolved at compile time (shapes are
//! static except the batch on axis 0).

use super::elementwise::{choose, for_chunk, Broadcast, Lanes, CHUNK};
use super::requant::{self, VectorRequant, LANES};
use super::{split, Kernel, Operand};
use crate::emit;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::fixed_point::{result_params, Requant, SumRequant};
use qlift_ir::{DType, QuantParams, TensorType};

/// Loads an integer element of `dtype` (16/8/4-bit, i32) at element `index` as an i32,
/// extended by the dtype's signedness (u8/u4 zero-extended, i16/i8/i4 sign-extended).
pub(super) fn load_int(fb: &mut FunctionBuilder, dtype: DType, base: Value, index: Value) -> Value {
    let stored = super::elem_type(dtype);
    let v = emit::load_at(fb, stored, base, index);
    match dtype {
        DType::I32 => v,
        DType::U8 | DType::U4 => fb.ins().uextend(types::I32, v),
        _ => fb.ins().sextend(types::I32, v),
    }
}

/// Stores an i32 value (already within the dtype's range) as an element of `dtype`.
pub(super) fn store_int(
    fb: &mut FunctionBuilder,
    dtype: DType,
    v: Value,
    base: Value,
    index: Value,
) {
    let v = match super::elem_type(dtype) {
        types::I32 => v,
        narrow => fb.ins().ireduce(narrow, v),
    };
    emit::store_at(fb, v, base, index);
}

/// The quantization parameters of a type (an error naming `what` when it has none).
fn quant_of<'a>(ty: &'a TensorType, what: &str) -> Result<&'a QuantParams, String> {
    ty.quant
        .as_ref()
        .ok_or_else(|| format!("{what} has no quantization parameters"))
}

/// The scale and zero point of an 8-bit per-tensor operand.
fn per_tensor(ty: &TensorType, what: &str) -> Result<(f32, i32), String> {
    let q = quant_of(ty, what)?;
    if q.axis.is_some() {
        return Err(format!("{what} must be quantized per tensor"));
    }
    Ok(q.channel(0))
}

/// How an operand splits around a per-axis quantization axis: per sample, `outer` blocks of
/// `extent` channels of `inner` contiguous elements (per tensor: one channel of the whole
/// sample). Lets the channel's parameters be loaded once per `inner` run.
struct Channels {
    outer: usize,
    extent: usize,
    inner: usize,
}

impl Channels {
    fn of(x: &Operand, axis: Option<usize>, channels: usize) -> Result<Channels, String> {
        let dims = x.dims();
        match axis {
            None => Ok(Channels {
                outer: 1,
                extent: 1,
                inner: x.per_sample(),
            }),
            Some(0) if x.batched() => Err("per-axis quantization along the batch axis".to_string()),
            Some(a) if a < dims.len() => {
                if dims[a] != channels {
                    return Err(format!(
                        "{channels} quantization channels for an axis of {}",
                        dims[a]
                    ));
                }
                Ok(Channels {
                    outer: dims[..a].iter().product(),
                    extent: dims[a],
                    inner: dims[a + 1..].iter().product(),
                })
            }
            Some(a) => Err(format!("quantization axis {a} is out of range")),
        }
    }

    /// `for s in samples·outer, c in extent: params(c); for i in inner: body(flat index)`:
    /// `params` runs once per chunk of a channel run (loads its scale and zero point), `body`
    /// per element; with `vector`, `vector(params, flat index)` does [`LANES`] elements at
    /// once wherever a whole step fits in a channel's run. The runs, in chunks of [`CHUNK`]
    /// elements, are split across threads when the call is large enough ([`Kernel::split_rows`]): the
    /// closures get the pointers `ptrs` (as passed here, or loaded again in the task
    /// function) and must use them instead of captured values.
    fn emit<P: Copy>(
        &self,
        k: &mut Kernel,
        batched: bool,
        ptrs: &[Value],
        params: &mut dyn FnMut(&mut FunctionBuilder, &[Value], Value) -> P,
        body: &mut ChannelBody<P>,
        mut vector: Option<&mut ChannelBody<P>>,
    ) -> Result<(), String> {
        let samples = k.samples(batched);
        let elements = self.outer * self.extent * self.inner;
        // Runs in chunks only where they are split: one thread walks each run whole.
        let chunk = if k.splits_elements(elements) {
            CHUNK
        } else {
            self.inner.max(1)
        };
        let chunks = self.inner.div_ceil(chunk) as i64;
        let runs = (self.outer * self.extent) as i64;
        let rows = k.fb.ins().imul_imm_s(samples, runs * chunks);
        let (extent, inner) = (self.extent as i64, self.inner as i64);
        let lanes = if vector.is_some() { LANES as i64 } else { 1 };
        k.split_rows(rows, ptrs, elements, &mut |fb, _, p, begin, end| {
            emit::for_range(fb, begin, end, 1, |fb, u| {
                // Run `u / chunks`, chunk `u % chunks` of it.
                let (run, c) = if chunks > 1 {
                    split::sample_row(fb, u, true, chunks)
                } else {
                    (u, emit::iconst(fb, 0))
                };
                let channel = if extent > 1 {
                    fb.ins().urem_imm_s(run, extent)
                } else {
                    emit::iconst(fb, 0)
                };
                let prm = params(fb, p, channel);
                let start = fb.ins().imul_imm_s(run, inner);
                for_chunk(fb, inner, lanes, chunk as i64, c, &mut |fb, i, whole| {
                    let index = fb.ins().iadd(start, i);
                    match vector.as_mut() {
                        Some(vector) if whole => vector(fb, p, prm, index),
                        _ => body(fb, p, prm, index),
                    }
                });
            });
            Ok(())
        })
    }
}

/// The per-element (or per-vector-step) body of [`Channels::emit`]: `body(fb, pointers,
/// channel parameters, flat element index)`.
type ChannelBody<'a, P> = dyn FnMut(&mut FunctionBuilder, &[Value], P, Value) + 'a;

/// Read-only table of native-endian bytes.
fn table<T: Copy, const N: usize>(
    k: &mut Kernel,
    values: &[T],
    bytes: impl Fn(T) -> [u8; N],
) -> Result<Value, String> {
    let data: Vec<u8> = values.iter().flat_map(|&v| bytes(v)).collect();
    k.data(data, 8)
}

/// QuantizeLinear: `saturate(round_half_even(x / scale) + zero_point)`, NaN → the dtype's
/// minimum. f32 inputs divide in f32, i32 inputs in f64, exactly as the interpreter does
/// (not a multiplication by the reciprocal, which rounds differently).
pub(super) fn quantize(k: &mut Kernel) -> Result<(), String> {
    let x = k.input(0)?;
    let (xptr, xdtype, batched) = (x.ptr, x.ty.dtype, x.batched());
    let y = k.output(0);
    let (yptr, ydtype) = (y.ptr, y.ty.dtype);
    let q = quant_of(&y.ty, "result")?.clone();
    let (lo, hi) = ydtype.int_range().ok_or("result is not an integer type")?;
    let channels = Channels::of(x, q.axis, q.scale.len())?;
    let zps = table(k, &q.zero_point, i32::to_ne_bytes)?;
    let wide = xdtype == DType::I32;
    let scales = if wide {
        let s: Vec<f64> = q.scale.iter().map(|&s| s as f64).collect();
        table(k, &s, f64::to_ne_bytes)?
    } else {
        table(k, &q.scale, f32::to_ne_bytes)?
    };
    let scale_ty = if wide { types::F64 } else { types::F32 };
    // f32 to 8 or 16 bits: LANES elements a step (four f32x4 divided, rounded, converted,
    // packed).
    let signed = ydtype == DType::I8;
    let sixteen = ydtype == DType::I16;
    let x86 = k.is_x86();
    let mut vector =
        |fb: &mut FunctionBuilder, p: &[Value], (scale, zp): (Value, Value), i: Value| {
            let (xptr, yptr) = (p[0], p[1]);
            let scale = fb.ins().splat(types::F32X4, scale);
            let zp = fb.ins().ireduce(types::I32, zp);
            let zpv = fb.ins().splat(types::I32X4, zp);
            // Clamped before the zero point is added, in f32 on the rounded (integer-valued)
            // quotient: [lo − zp, hi − zp] are exact f32 integers, so the clamp is the integer
            // clamp, and the comparisons are false for NaN, which lands on lo − zp (the
            // interpreter's NaN → minimum). What is left converts exactly with `cvttps2dq`.
            let bound = |fb: &mut FunctionBuilder, b: i64| {
                let b = fb.ins().iconst(types::I32, b);
                let b = fb.ins().isub(b, zp);
                let b = fb.ins().fcvt_from_sint(types::F32, b);
                fb.ins().splat(types::F32X4, b)
            };
            let (lo_z, hi_z) = (bound(fb, lo), bound(fb, hi));
            let at = emit::addr(fb, xptr, i, 4);
            let quads: Vec<Value> = (0..LANES / 4)
                .map(|q| {
                    let v = fb
                        .ins()
                        .load(types::F32X4, emit::mem(), at, (q * 16) as i32);
                    let r = fb.ins().fdiv(v, scale);
                    let r = fb.ins().nearest(r);
                    let above = fb.ins().fcmp(FloatCC::GreaterThanOrEqual, r, lo_z);
                    let r = choose(fb, above, r, lo_z);
                    let below = fb.ins().fcmp(FloatCC::LessThanOrEqual, r, hi_z);
                    let r = choose(fb, below, r, hi_z);
                    // In range and integral: any conversion is exact, `cvttps2dq` the shortest.
                    let n = if x86 {
                        fb.ins().x86_cvtt2dq(types::I32X4, r)
                    } else {
                        fb.ins().fcvt_to_sint_sat(types::I32X4, r)
                    };
                    fb.ins().iadd(n, zpv)
                })
                .collect();
            let (h0, h1) = (
                fb.ins().snarrow(quads[0], quads[1]),
                fb.ins().snarrow(quads[2], quads[3]),
            );
            if sixteen {
                // Clamped to the i16 range already: the saturating narrowing is exact.
                let out = emit::addr(fb, yptr, i, 2);
                fb.ins().store(emit::mem(), h0, out, 0);
                fb.ins().store(emit::mem(), h1, out, 16);
                return;
            }
            let bytes = if signed {
                fb.ins().snarrow(h0, h1)
            } else {
                fb.ins().unarrow(h0, h1)
            };
            let out = emit::addr(fb, yptr, i, 1);
            fb.ins().store(emit::mem(), bytes, out, 0);
        };
    let vectorizable = !wide && matches!(ydtype, DType::U8 | DType::I8 | DType::I16);
    channels.emit(
        k,
        batched,
        &[xptr, yptr, scales, zps],
        &mut |fb, p, c| {
            let scale = emit::load_at(fb, scale_ty, p[2], c);
            let zp = emit::load_at(fb, types::I32, p[3], c);
            (scale, fb.ins().sextend(types::I64, zp))
        },
        &mut |fb, p, (scale, zp), i| {
            let (xptr, yptr) = (p[0], p[1]);
            let v = if wide {
                let v = emit::load_at(fb, types::I32, xptr, i);
                fb.ins().fcvt_from_sint(types::F64, v)
            } else {
                emit::load_at(fb, types::F32, xptr, i)
            };
            let r = fb.ins().fdiv(v, scale);
            let r = fb.ins().nearest(r);
            // Saturating conversion to i32 (±inf and huge values land far outside [lo, hi]),
            // then the zero point added in i64 where it cannot overflow.
            let n = fb.ins().fcvt_to_sint_sat(types::I32, r);
            let n = fb.ins().sextend(types::I64, n);
            let n = fb.ins().iadd(n, zp);
            let (lo_v, hi_v) = (emit::iconst(fb, lo), emit::iconst(fb, hi));
            let n = fb.ins().smax(n, lo_v);
            let n = fb.ins().smin(n, hi_v);
            let nan = fb.ins().fcmp(FloatCC::Unordered, r, r);
            let n = fb.ins().select(nan, lo_v, n);
            let n = fb.ins().ireduce(types::I32, n);
            store_int(fb, ydtype, n, yptr, i);
        },
        if vectorizable {
            Some(&mut vector)
        } else {
            None
        },
    )
}

/// DequantizeLinear: `(q - zero_point) · scale` in f32, per tensor or per axis; 8/4-bit and
/// i32 inputs (an i32 converts to f32 with round-to-nearest, as `as f32` does).
pub(super) fn dequantize(k: &mut Kernel) -> Result<(), String> {
    let x = k.input(0)?;
    let (xptr, xdtype, batched) = (x.ptr, x.ty.dtype, x.batched());
    let q = quant_of(&x.ty, "input")?.clone();
    let channels = Channels::of(x, q.axis, q.scale.len())?;
    let yptr = k.output(0).ptr;
    let zps: Vec<f32> = q.zero_point.iter().map(|&z| z as f32).collect();
    let zps = table(k, &zps, f32::to_ne_bytes)?;
    let scales = table(k, &q.scale, f32::to_ne_bytes)?;
    // 8 or 16 bits to f32: LANES elements a step, widened to four i32x4, the scalar body's
    // operations lane by lane (so both give the same bits).
    let signed = matches!(xdtype, DType::I8 | DType::I16);
    let sixteen = xdtype == DType::I16;
    let mut vector =
        |fb: &mut FunctionBuilder, p: &[Value], (scale, zp): (Value, Value), i: Value| {
            let (xptr, yptr) = (p[0], p[1]);
            let (scale, zp) = (
                fb.ins().splat(types::F32X4, scale),
                fb.ins().splat(types::F32X4, zp),
            );
            let widen = |fb: &mut FunctionBuilder, v: Value, high: bool| {
                emit::widen_half(fb, v, signed, high)
            };
            // Eight i16 a half: loaded as they are (i16), or widened from the 16 bytes.
            let halves: [Value; 2] = if sixteen {
                let at = emit::addr(fb, xptr, i, 2);
                [0, 16].map(|o| fb.ins().load(types::I16X8, emit::mem(), at, o))
            } else {
                let bytes = emit::addr(fb, xptr, i, 1);
                let bytes = fb.ins().load(types::I8X16, emit::mem(), bytes, 0);
                [false, true].map(|high| widen(fb, bytes, high))
            };
            let out = emit::addr(fb, yptr, i, 4);
            for (h, half) in halves.into_iter().enumerate() {
                for (q, high) in [false, true].into_iter().enumerate() {
                    let v = widen(fb, half, high);
                    let v = fb.ins().fcvt_from_sint(types::F32X4, v);
                    let v = fb.ins().fsub(v, zp);
                    let v = fb.ins().fmul(v, scale);
                    fb.ins()
                        .store(emit::mem(), v, out, (32 * h + 16 * q) as i32);
                }
            }
        };
    let vectorizable = matches!(xdtype, DType::U8 | DType::I8 | DType::I16) && LANES == 16;
    channels.emit(
        k,
        batched,
        &[xptr, yptr, scales, zps],
        &mut |fb, p, c| {
            (
                emit::load_at(fb, types::F32, p[2], c),
                emit::load_at(fb, types::F32, p[3], c),
            )
        },
        &mut |fb, p, (scale, zp), i| {
            let (xptr, yptr) = (p[0], p[1]);
            let v = load_int(fb, xdtype, xptr, i);
            let v = fb.ins().fcvt_from_sint(types::F32, v);
            let v = fb.ins().fsub(v, zp);
            let v = fb.ins().fmul(v, scale);
            emit::store_at(fb, v, yptr, i);
        },
        if vectorizable {
            Some(&mut vector)
        } else {
            None
        },
    )
}

/// The scale of an 8-bit per-tensor result, as the interpreter's `result_scale` (f64).
fn result_scale(y: &TensorType) -> Result<f64, String> {
    Ok(result_params(y, None)?.0 as f64)
}

/// The rescale `y = clamp(zy + M·(x − zx))` of Requantize and of each QConcat part, over
/// contiguous runs: 16 elements per step with [`VectorRequant`] (the remainder scalar), or a
/// plain copy when it is the identity.
struct Rescale {
    rq: Requant,
    zx: i32,
    xdtype: DType,
    ydtype: DType,
    vector: Option<VectorRequant>,
    /// `M = 1`, equal zero points and dtypes, no narrower clamp: `y = x`.
    copy: bool,
}

impl Rescale {
    /// The rescale of `x` (per tensor) onto the 8- or 16-bit result `y` by `M = s_x / s_y`, as the
    /// interpreter builds it (`Requant::for_ratio`).
    fn new(
        x: &TensorType,
        what: &str,
        y: &TensorType,
        act: Option<(f32, f32)>,
    ) -> Result<Rescale, String> {
        let (sx, zx) = per_tensor(x, what)?;
        let rq = Requant::for_ratio(sx as f64 / result_scale(y)?, y, act)?;
        let m = requant::channel(&rq, 0);
        let (xdtype, ydtype) = (x.dtype, y.dtype);
        let eight_bit = requant::is_8bit(xdtype) && requant::is_8bit(ydtype);
        let vector = eight_bit
            .then(|| {
                VectorRequant::single(
                    m,
                    rq.zero_point,
                    rq.bounds,
                    requant::reach(xdtype, zx),
                    ydtype,
                )
            })
            .flatten();
        // (a·2^s + 2^(s-1)) >> s = a: the multiplier is exactly 1.
        let copy = eight_bit
            && m.m as i64 == 1i64 << m.shift
            && zx == rq.zero_point
            && xdtype == ydtype
            && xdtype.int_range() == Some(rq.bounds);
        Ok(Rescale {
            rq,
            zx,
            xdtype,
            ydtype,
            vector,
            copy,
        })
    }

    /// Emits `y[yi + j] = rescale(x[xi + j])` for `j` in `0..count`.
    fn run(
        &self,
        fb: &mut FunctionBuilder,
        xptr: Value,
        xi: Value,
        yptr: Value,
        yi: Value,
        count: i64,
    ) {
        let m = requant::channel(&self.rq, 0);
        // Steps of one element when there is no vector form.
        let lanes = if self.copy || self.vector.is_some() {
            LANES
        } else {
            1
        };
        emit::for_lanes(fb, count, lanes as i64, &mut |fb, j, whole| {
            let (i, o) = (fb.ins().iadd(xi, j), fb.ins().iadd(yi, j));
            let r = match (&self.vector, whole) {
                _ if self.copy => {
                    let a = fb.ins().iadd(xptr, i);
                    fb.ins().load(
                        if whole { types::I8X16 } else { types::I8 },
                        emit::mem(),
                        a,
                        0,
                    )
                }
                (Some(v), true) => {
                    let t = requant::load_centered(fb, self.xdtype, xptr, i, self.zx);
                    v.apply(fb, &[t])
                }
                _ => {
                    // One element of any integer width (16-bit operands or results take
                    // this path only).
                    let v = load_int(fb, self.xdtype, xptr, i);
                    let a = fb.ins().iadd_imm_s(v, -(self.zx as i64));
                    let r = requant::requantize(fb, a, m, self.rq.zero_point, self.rq.bounds);
                    store_int(fb, self.ydtype, r, yptr, o);
                    return;
                }
            };
            let a = fb.ins().iadd(yptr, o);
            fb.ins().store(emit::mem(), r, a, 0);
        });
    }
}

/// Requantize: `clamp(zy + M·(x − zx))` with `M = s_x / s_y` in fixed point, clamped by a
/// fused activation.
pub(super) fn requantize(k: &mut Kernel) -> Result<(), String> {
    let act = k.op.fused_activation()?;
    let x = k.input(0)?;
    let (xptr, batched, n) = (x.ptr, x.batched(), x.per_sample() as i64);
    let y = k.output(0);
    let rescale = Rescale::new(&x.ty, "input", &y.ty, act)?;
    let yptr = y.ptr;
    let samples = k.samples(batched);
    emit::for_dynamic(k.fb, samples, |fb, s| {
        let base = fb.ins().imul_imm_s(s, n);
        rescale.run(fb, xptr, base, yptr, base, n);
    });
    Ok(())
}

/// One QAdd operand's centered terms for a loop step: one i32, or 16 as two i16x8 (one
/// element splatted when the operand is constant along the vector loop).
fn qadd_term(
    fb: &mut FunctionBuilder,
    lanes: &Lanes,
    stream: usize,
    dtype: DType,
    base: Value,
    index: Value,
    zp: i32,
) -> [Value; 2] {
    if let Lanes::Vector(splat) = lanes {
        if !splat[stream] {
            return requant::load_centered(fb, dtype, base, index, zp);
        }
    }
    let v = load_int(fb, dtype, base, index);
    let t = fb.ins().iadd_imm_s(v, -(zp as i64));
    if matches!(lanes, Lanes::Scalar) {
        return [t; 2];
    }
    let t = fb.ins().ireduce(types::I16, t);
    [fb.ins().splat(types::I16X8, t); 2]
}

/// QAdd: `clamp(zy + ((ta·ma + tb·mb + 2^(s-1)) >> s))` on centered terms with one shared
/// shift ([`SumRequant`]), broadcasting both operands to the result with compile-time
/// strides; 16 results per step along a contiguous innermost axis ([`VectorRequant`]).
pub(super) fn qadd(k: &mut Kernel) -> Result<(), String> {
    let act = k.op.fused_activation()?;
    let (a, b, y) = (k.input(0)?, k.input(1)?, k.output(0));
    let ((sa, za), (sb, zb)) = (per_tensor(&a.ty, "A")?, per_tensor(&b.ty, "B")?);
    let sy = result_scale(&y.ty)?;
    let rq = SumRequant::new(&[sa as f64 / sy, sb as f64 / sy], &y.ty, act)?;
    let plan = Broadcast::new(y, &[a, b])?;
    let (ap, adt, bp, bdt, yp, ydt) = (a.ptr, a.ty.dtype, b.ptr, b.ty.dtype, y.ptr, y.ty.dtype);
    let eight_bit = [adt, bdt, ydt].into_iter().all(requant::is_8bit);
    let vector = eight_bit
        .then(|| {
            VectorRequant::sum(
                &rq,
                &[requant::reach(adt, za), requant::reach(bdt, zb)],
                ydt,
            )
        })
        .flatten();
    plan.emit_split(
        k,
        if vector.is_some() { LANES } else { 1 },
        &[yp, ap, bp],
        &mut |fb, p, o, lanes| {
            let (yp, ap, bp) = (p[0], p[1], p[2]);
            let ta = qadd_term(fb, lanes, 1, adt, ap, o[1], za);
            let tb = qadd_term(fb, lanes, 2, bdt, bp, o[2], zb);
            match (lanes, &vector) {
                (Lanes::Vector(_), Some(v)) => {
                    let r = v.apply(fb, &[ta, tb]);
                    let at = fb.ins().iadd(yp, o[0]);
                    fb.ins().store(emit::mem(), r, at, 0);
                }
                _ => {
                    let r = requant::requantize_sum(fb, &[ta[0], tb[0]], &rq);
                    store_int(fb, ydt, r, yp, o[0]);
                }
            }
        },
    )
}

/// QConcat: each part rescaled to the result's parameters (`Requant::for_ratio(s_i / s_y)`,
/// as the interpreter does even when they are equal) and written at its offset along the
/// axis, the outer blocks split across threads when the call is large. The axis may not
/// be the batch.
pub(super) fn qconcat(k: &mut Kernel) -> Result<(), String> {
    let act = k.op.fused_activation()?;
    let y = k.output(0);
    let (yptr, ybatched) = (y.ptr, y.batched());
    let out = y.dims();
    let rank = out.len() as i64;
    let axis = k.op.attrs.int("axis")?;
    let axis = usize::try_from(if axis < 0 { axis + rank } else { axis })
        .ok()
        .filter(|&a| a < out.len())
        .ok_or_else(|| format!("axis {axis} is out of range"))?;
    if axis == 0 && ybatched {
        return Err("concatenation along the batch axis".to_string());
    }
    let outer: i64 = out[..axis].iter().product::<usize>() as i64;
    let inner: i64 = out[axis + 1..].iter().product::<usize>() as i64;
    let yrow = out[axis] as i64 * inner;
    let mut parts = Vec::new();
    let mut offset = 0i64;
    for i in 0..k.inputs.len() {
        let x = k.input(i)?;
        if x.batched() != ybatched {
            return Err(format!(
                "operand {i} and the result disagree on the batch axis"
            ));
        }
        let rescale = Rescale::new(&x.ty, &format!("operand {i}"), &y.ty, act)?;
        let row = x.dims()[axis] as i64 * inner;
        parts.push((x.ptr, rescale, row, offset));
        offset += row;
    }
    if offset != yrow {
        return Err(format!(
            "parts total {offset} elements per row, the result {yrow}"
        ));
    }
    let samples = k.samples(ybatched);
    let blocks = k.fb.ins().imul_imm_s(samples, outer);
    // Blocks (every part's row of one outer index) split across threads when large.
    let ptrs: Vec<Value> = std::iter::once(yptr)
        .chain(parts.iter().map(|p| p.0))
        .collect();
    let elements = (outer * yrow) as usize;
    k.split_rows(blocks, &ptrs, elements, &mut |fb, _, p, begin, end| {
        emit::for_range(fb, begin, end, 1, |fb, o| {
            let yi = fb.ins().imul_imm_s(o, yrow);
            for ((_, rescale, row, offset), &xptr) in parts.iter().zip(&p[1..]) {
                let xi = fb.ins().imul_imm_s(o, *row);
                let yo = fb.ins().iadd_imm_s(yi, *offset);
                rescale.run(fb, xptr, xi, p[0], yo, *row);
            }
        });
        Ok(())
    })
}
