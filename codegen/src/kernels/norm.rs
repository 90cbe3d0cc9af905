//! Normalization kernels: LayerNormalization, InstanceNormalization, GroupNormalization,
//! LpNormalization, LogSoftmax, Hardmax.
//!
//! The three mean/variance normalizations are one kernel ([`standardize`]), as in the
//! interpreter (`qlift_ir`'s `ops/norm.rs`): rows of `block` contiguous elements, each
//! normalized in three passes over the row (sum, sum of squared deviations, then
//! `(x − mean) · inv · scale + bias`), all in f32x4 lanes with a scalar tail. The passes stay
//! within L1 for a transformer's rows (384 floats), and the two-pass variance keeps the
//! interpreter's numerics (no `E[x²] − E[x]²` cancellation). Scale and bias are walked
//! beside the row through compile-time strides (0 along axes they broadcast over).

use super::reduce::{ExpSum, Extreme, Walk};
use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::{DType, Dim, OpKind};

/// f32 lanes of a vector step.
const LANES: i64 = 4;

/// How scale and bias are read while a row is written: the row's axes (extents), the scale's
/// and the bias's element strides along them, and which group of scale entries a row uses
/// (`row % period` times `step` elements in).
struct Affine {
    extents: Vec<usize>,
    strides: Vec<Vec<i64>>,
    period: i64,
    step: i64,
    scale: Value,
    bias: Option<Value>,
}

/// A sum over a contiguous run of `n` f32 elements at element offset `start` of `base`, of
/// `f(x)` for each element `x` (f32 or f32x4, the same code for both): two f32x4
/// accumulators side by side (so that consecutive adds do not wait for each other), a
/// scalar tail, then the lanes combined.
fn row_sum(
    fb: &mut FunctionBuilder,
    base: Value,
    start: Value,
    n: usize,
    f: &dyn Fn(&mut FunctionBuilder, Value) -> Value,
) -> Value {
    let acc = fb.declare_var(types::F32);
    let vaccs = [fb.declare_var(types::F32X4), fb.declare_var(types::F32X4)];
    let zero = fb.ins().f32const(0.0);
    fb.def_var(acc, zero);
    let vzero = fb.ins().splat(types::F32X4, zero);
    for v in vaccs {
        fb.def_var(v, vzero);
    }
    emit::for_lanes(fb, n as i64, 2 * LANES, &mut |fb, i, whole| {
        let at = fb.ins().iadd(start, i);
        let a = emit::addr(fb, base, at, 4);
        if !whole {
            let v = fb.ins().load(types::F32, emit::mem(), a, 0);
            let v = f(fb, v);
            let s = fb.use_var(acc);
            let s = fb.ins().fadd(s, v);
            fb.def_var(acc, s);
            return;
        }
        for (j, &var) in vaccs.iter().enumerate() {
            let v = fb.ins().load(types::F32X4, emit::mem(), a, (16 * j) as i32);
            let v = f(fb, v);
            let s = fb.use_var(var);
            let s = fb.ins().fadd(s, v);
            fb.def_var(var, s);
        }
    });
    let (p, q) = (fb.use_var(vaccs[0]), fb.use_var(vaccs[1]));
    let v = fb.ins().fadd(p, q);
    let lanes: Vec<Value> = (0..LANES as u8)
        .map(|i| fb.ins().extractlane(v, i))
        .collect();
    let p = fb.ins().fadd(lanes[0], lanes[1]);
    let q = fb.ins().fadd(lanes[2], lanes[3]);
    let h = fb.ins().fadd(p, q);
    let s = fb.use_var(acc);
    fb.ins().fadd(h, s)
}

/// Normalizes `rows` (run-time) rows of `block` contiguous elements of x into y, split
/// across threads over the rows when the call is large ([`Kernel::split_rows`]).
fn standardize(
    k: &mut Kernel,
    rows: Value,
    block: usize,
    epsilon: f32,
    affine: Affine,
) -> Result<(), String> {
    let x = k.input(0)?;
    let mut ptrs = vec![x.ptr, k.output(0).ptr, affine.scale];
    ptrs.extend(affine.bias);
    let elements = x.per_sample();
    let (extents, strides) = emit::coalesce(&affine.extents, &affine.strides);
    // Vector steps along the last row axis when scale and bias are contiguous or constant
    // along it.
    let n = extents.len();
    let vector = extents.last().is_some_and(|&e| e as i64 >= LANES)
        && strides.iter().all(|s| matches!(s.last(), Some(0 | 1)));
    let (outer, inner) = if vector {
        (&extents[..n - 1], extents[n - 1])
    } else {
        (&extents[..], 1)
    };
    let mut row_strides = emit::row_major(&extents);
    if vector {
        row_strides.pop();
    }
    let outer_strides: Vec<Vec<i64>> = std::iter::once(row_strides)
        .chain(strides.iter().map(|s| s[..outer.len()].to_vec()))
        .collect();
    // Per stream (x, scale, bias): constant along the vectorized axis.
    let splat: Vec<bool> = std::iter::once(false)
        .chain(strides.iter().map(|s| s.last() == Some(&0)))
        .collect();
    k.split_rows(rows, &ptrs, elements, &mut |fb, _, p, begin, end| {
        let (px, py, scale) = (p[0], p[1], p[2]);
        let bias = p.get(3).copied();
        emit::for_range(fb, begin, end, 1, |fb, r| {
            let start = fb.ins().imul_imm_s(r, block as i64);
            let sum = row_sum(fb, px, start, block, &|_, v| v);
            let count = fb.ins().f32const(block as f32);
            let mean = fb.ins().fdiv(sum, count);
            let vmean = fb.ins().splat(types::F32X4, mean);
            let sq = row_sum(fb, px, start, block, &|fb, v| {
                let m = if fb.func.dfg.value_type(v).is_vector() {
                    vmean
                } else {
                    mean
                };
                let d = fb.ins().fsub(v, m);
                fb.ins().fmul(d, d)
            });
            let var = fb.ins().fdiv(sq, count);
            let eps = fb.ins().f32const(epsilon);
            let var = fb.ins().fadd(var, eps);
            let sd = fb.ins().sqrt(var);
            let one = fb.ins().f32const(1.0);
            let inv = fb.ins().fdiv(one, sd);
            let vinv = fb.ins().splat(types::F32X4, inv);
            let group = if affine.period > 1 {
                fb.ins().urem_imm_s(r, affine.period)
            } else {
                emit::iconst(fb, 0)
            };
            let base = fb.ins().imul_imm_s(group, affine.step);
            emit::for_strided(
                fb,
                outer,
                &outer_strides,
                &[start, base, base],
                &mut |fb, off| {
                    let one_step = |fb: &mut FunctionBuilder, i: Value, whole: bool| {
                        let ty = if whole { types::F32X4 } else { types::F32 };
                        let at = |fb: &mut FunctionBuilder, s: usize| {
                            if splat[s] || !vector {
                                off[s]
                            } else {
                                fb.ins().iadd(off[s], i)
                            }
                        };
                        let xa = at(fb, 0);
                        let a = emit::addr(fb, px, xa, 4);
                        let v = fb.ins().load(ty, emit::mem(), a, 0);
                        let (m, s) = if whole { (vmean, vinv) } else { (mean, inv) };
                        let d = fb.ins().fsub(v, m);
                        let d = fb.ins().fmul(d, s);
                        let param = |fb: &mut FunctionBuilder, p: Value, stream: usize| {
                            let o = at(fb, stream);
                            if whole && !splat[stream] {
                                let a = emit::addr(fb, p, o, 4);
                                return fb.ins().load(types::F32X4, emit::mem(), a, 0);
                            }
                            let e = emit::load_at(fb, types::F32, p, o);
                            if whole {
                                fb.ins().splat(types::F32X4, e)
                            } else {
                                e
                            }
                        };
                        let g = param(fb, scale, 1);
                        let mut y = fb.ins().fmul(d, g);
                        if let Some(b) = bias {
                            let b = param(fb, b, 2);
                            y = fb.ins().fadd(y, b);
                        }
                        let ya = emit::addr(fb, py, xa, 4);
                        fb.ins().store(emit::mem(), y, ya, 0);
                    };
                    if vector {
                        emit::for_lanes(fb, inner as i64, LANES, &mut |fb, i, whole| {
                            one_step(fb, i, whole)
                        });
                    } else {
                        let zero = emit::iconst(fb, 0);
                        one_step(fb, zero, false);
                    }
                },
            );
        });
        Ok(())
    })
}

/// The operand's f32 vector of `n` entries (scale or bias of Instance/GroupNormalization).
fn channel_vector(k: &Kernel, i: usize, n: usize) -> Result<Value, String> {
    let p = k.input(i)?;
    if p.ty.dtype != DType::F32 || p.batched() || p.per_sample() != n {
        return Err(format!("operand {i} is not an f32 vector of {n} channels"));
    }
    Ok(p.ptr)
}

/// LayerNormalization over the axes from `axis` on (not the batch).
pub(super) fn layer_norm(k: &mut Kernel) -> Result<(), String> {
    let x = k.input(0)?;
    let dims = x.dims();
    let axis = usize::try_from(k.op.attrs.int("axis")?)
        .ok()
        .filter(|&a| a < dims.len())
        .ok_or("axis out of range")?;
    if x.batched() && axis == 0 {
        return Err(
            "LayerNormalization over the batch axis is not supported by code generation"
                .to_string(),
        );
    }
    let block_dims = dims[axis..].to_vec();
    let block: usize = block_dims.iter().product();
    // Scale and bias strides over the row's axes (0 where they broadcast).
    let param = |o: &super::Operand| -> Result<Vec<i64>, String> {
        let pd = o.dims();
        if o.batched() || o.ty.dtype != DType::F32 || pd.len() > dims.len() {
            return Err("scale and bias must be f32 values without the batch".to_string());
        }
        let own = emit::row_major(&pd);
        let pad = dims.len() - pd.len();
        (axis..dims.len())
            .map(|a| match a.checked_sub(pad) {
                None => Ok(0),
                Some(j) if pd[j] == 1 => Ok(0),
                Some(j) if pd[j] == dims[a] => Ok(own[j]),
                Some(_) => {
                    Err("scale or bias does not broadcast onto the normalized axes".to_string())
                }
            })
            .collect()
    };
    let scale = k.input(1)?;
    let mut strides = vec![param(scale)?];
    let bias = k.optional(2);
    if let Some(b) = bias {
        strides.push(param(b)?);
    } else {
        strides.push(vec![0; block_dims.len()]);
    }
    let affine = Affine {
        extents: block_dims,
        strides,
        period: 1,
        step: 0,
        scale: scale.ptr,
        bias: bias.map(|b| b.ptr),
    };
    let outer_static: usize = dims[..axis].iter().product();
    let samples = k.samples(x.batched());
    let rows = k.fb.ins().imul_imm_s(samples, outer_static as i64);
    standardize(k, rows, block, k.op.attrs.float("epsilon")?, affine)
}

/// InstanceNormalization (a group per channel) and GroupNormalization.
pub(super) fn group_norm(k: &mut Kernel) -> Result<(), String> {
    let x = k.input(0)?;
    let dims = x.dims();
    if dims.len() < 2 || x.ty.shape.dims()[1] == Dim::Batch {
        return Err("input has no channel axis".to_string());
    }
    let (channels, plane) = (dims[1], dims[2..].iter().product::<usize>());
    let groups = match k.op.kind {
        OpKind::GroupNormalization => {
            usize::try_from(k.op.attrs.int("num_groups")?).map_err(|_| "negative num_groups")?
        }
        _ => channels,
    };
    if groups == 0 || channels % groups != 0 {
        return Err(format!(
            "{channels} channels do not divide into {groups} groups"
        ));
    }
    let per_group = channels / groups;
    let (scale, bias) = (
        channel_vector(k, 1, channels)?,
        channel_vector(k, 2, channels)?,
    );
    let affine = Affine {
        extents: vec![per_group, plane],
        strides: vec![vec![1, 0], vec![1, 0]],
        period: groups as i64,
        step: per_group as i64,
        scale,
        bias: Some(bias),
    };
    let samples = k.samples(x.batched());
    let rows = k.fb.ins().imul_imm_s(samples, (dims[0] * groups) as i64);
    standardize(
        k,
        rows,
        per_group * plane,
        k.op.attrs.float("epsilon")?,
        affine,
    )
}

/// The walk along the op's `axis` (every other axis kept).
fn along_axis(k: &Kernel) -> Result<(Walk, usize), String> {
    let x = k.input(0)?;
    let dims = x.dims();
    let axis = usize::try_from(k.op.attrs.int("axis")?)
        .ok()
        .filter(|&a| a < dims.len())
        .ok_or("axis out of range")?;
    if x.batched() && axis == 0 {
        return Err(format!(
            "{} along the batch axis is not supported by code generation",
            k.op.kind
        ));
    }
    Ok((Walk::new(&dims, x.batched(), &[axis]), axis))
}

/// LpNormalization: the norm of each line, then every element divided by it (a zero norm
/// gives zeros). Four neighbouring lines at a time when the axis is not the last one, else
/// four elements of a line at a time.
pub(super) fn lp_norm(k: &mut Kernel) -> Result<(), String> {
    let (walk, _) = along_axis(k)?;
    let p2 = k.op.attrs.int("p")? == 2;
    let (px, py) = (k.input(0)?.ptr, k.output(0).ptr);
    let batch = k.batch;
    let acc = k.fb.declare_var(types::F32);
    let vacc = k.fb.declare_var(types::F32X4);
    let rows = walk.reduced_vectorizable(LANES as usize);
    walk.outputs(k, LANES as usize, &mut |fb, xo, _, lines| {
        let zero = fb.ins().f32const(0.0);
        let vzero = fb.ins().splat(types::F32X4, zero);
        fb.def_var(acc, zero);
        fb.def_var(vacc, vzero);
        // Lanes are four lines (`lines`), or four elements of one line (`whole` steps).
        let step = if rows && !lines { LANES as usize } else { 1 };
        let vector = |whole: bool| whole || lines;
        walk.fold(fb, batch, xo, step, &mut |fb, at, whole| {
            let ty = if vector(whole) {
                types::F32X4
            } else {
                types::F32
            };
            let a = emit::addr(fb, px, at, 4);
            let v = fb.ins().load(ty, emit::mem(), a, 0);
            let c = if p2 {
                fb.ins().fmul(v, v)
            } else {
                fb.ins().fabs(v)
            };
            let var = if vector(whole) { vacc } else { acc };
            let s = fb.use_var(var);
            let s = fb.ins().fadd(s, c);
            fb.def_var(var, s);
        });
        let (scalar, lanes) = (fb.use_var(acc), fb.use_var(vacc));
        let norm = if lines {
            lanes
        } else {
            let l: Vec<Value> = (0..LANES as u8)
                .map(|i| fb.ins().extractlane(lanes, i))
                .collect();
            let p = fb.ins().fadd(l[0], l[1]);
            let q = fb.ins().fadd(l[2], l[3]);
            let h = fb.ins().fadd(p, q);
            fb.ins().fadd(h, scalar)
        };
        let norm = if p2 { fb.ins().sqrt(norm) } else { norm };
        let (norm, vnorm) = if lines {
            (norm, norm)
        } else {
            (norm, fb.ins().splat(types::F32X4, norm))
        };
        walk.fold(fb, batch, xo, step, &mut |fb, at, whole| {
            let (ty, n, z) = if vector(whole) {
                (types::F32X4, vnorm, vzero)
            } else {
                (types::F32, norm, zero)
            };
            let a = emit::addr(fb, px, at, 4);
            let v = fb.ins().load(ty, emit::mem(), a, 0);
            let q = fb.ins().fdiv(v, n);
            let is_zero = fb.ins().fcmp(FloatCC::Equal, n, z);
            let r = if ty.is_vector() {
                let mask = fb.ins().bitcast(types::F32X4, MemFlagsData::new(), is_zero);
                fb.ins().bitselect(mask, z, q)
            } else {
                fb.ins().select(is_zero, z, q)
            };
            let a = emit::addr(fb, py, at, 4);
            fb.ins().store(emit::mem(), r, a, 0);
        });
    });
    Ok(())
}

/// LogSoftmax: `(x − max) − log Σ exp(x − max)` per line (subtracting the maximum first
/// keeps the small result exact when the inputs are large).
pub(super) fn log_softmax(k: &mut Kernel) -> Result<(), String> {
    let (walk, _) = along_axis(k)?;
    let (px, py) = (k.input(0)?.ptr, k.output(0).ptr);
    let passes = ExpSum::new(k)?;
    let batch = k.batch;
    walk.outputs(k, 1, &mut |fb, xo, _, _| {
        let (m, l) = passes.emit(fb, &walk, batch, px, xo);
        walk.fold(fb, batch, xo, 1, &mut |fb, at, _| {
            let v = emit::load_at(fb, types::F32, px, at);
            let d = fb.ins().fsub(v, m);
            let r = fb.ins().fsub(d, l);
            emit::store_at(fb, r, py, at);
        });
    });
    Ok(())
}

/// Hardmax: 1 at the first maximum of each line (NaN counting as the maximum), 0 elsewhere.
pub(super) fn hardmax(k: &mut Kernel) -> Result<(), String> {
    let (walk, axis) = along_axis(k)?;
    let x = k.input(0)?;
    let (px, py) = (x.ptr, k.output(0).ptr);
    let dims = x.dims();
    let (extent, stride) = (dims[axis] as i64, emit::row_major(&dims)[axis]);
    let extreme = Extreme::new(k.fb, DType::F32, true, false);
    walk.outputs(k, 1, &mut |fb, xo, _, _| {
        let end = emit::iconst(fb, extent);
        let i = extreme.emit(fb, px, xo, end, stride);
        let zero = emit::iconst(fb, 0);
        emit::for_range(fb, zero, end, 1, |fb, j| {
            let s = fb.ins().imul_imm_s(j, stride);
            let at = fb.ins().iadd(xo, s);
            let hit = fb.ins().icmp(IntCC::Equal, j, i);
            let (one, nil) = (fb.ins().f32const(1.0), fb.ins().f32const(0.0));
            let r = fb.ins().select(hit, one, nil);
            emit::store_at(fb, r, py, at);
        });
    });
    Ok(())
}
