//! The f32 MatMul: numpy matrix products with broadcast batch dimensions, operands
//! constant or computed at run time alike (a transformer's `Q·Kᵀ` and `P·V` are two
//! activations, `[N, 12, seq, seq]`).
//!
//! Each matrix product `Y[M, N] = A[M, K] · B[K, N]` is computed in register tiles of 4 rows
//! by 8 columns: per step of `k`, two f32x4 loads of B's row `k`, four broadcasts of A's
//! column `k`, eight fused multiply-adds (multiply then add without FMA) into 8
//! accumulators that stay in registers for the whole of K. Row-major B is read as it is,
//! contiguous along N, so neither operand is packed: a tile's B panel (K × 8 floats) stays
//! in L1 while the tiles of a column block walk down A, the loop order that keeps it there.
//! Edges use 4-wide and scalar columns and single rows. Sums run over `k` in order, in f32
//! (the interpreter's f64 sum rounded once differs by rounding only).
//!
//! Batch dimensions are a static loop nest (broadcast operands step 0 through it) inside the
//! run-time batch; when B has no batch dimensions (a Linear layer), every row of A over all
//! of its leading dimensions is one tall matrix, tiled as one.

use super::{Kernel, Operand};
use crate::emit;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;

/// Rows of a register tile.
const ROWS: i64 = 4;
/// f32 lanes of a vector.
const LANES: usize = 4;

/// One matrix product's geometry and how its tiles compute.
#[derive(Clone, Copy)]
struct Tiles {
    k: usize,
    n: usize,
    /// Fused multiply-add instructions exist.
    fma: bool,
    /// The fused activation's clamp.
    act: Option<(f32, f32)>,
}

/// The bytes between rows of A, of B and of Y.
fn row_bytes(t: &Tiles) -> (i64, i64, i64) {
    (t.k as i64 * 4, t.n as i64 * 4, t.n as i64 * 4)
}

impl Tiles {
    /// `Y[i0.., j0..] = A[i0.., :] · B[:, j0..]` for `rows` rows and `width` columns (a
    /// multiple of 4 lanes, or one scalar column when `width` is 1): `a`, `b`, `y` are the
    /// addresses of `A[i0, 0]`, `B[0, j0]`, `Y[i0, j0]`.
    fn tile(
        &self,
        fb: &mut FunctionBuilder,
        a: Value,
        b: Value,
        y: Value,
        rows: usize,
        width: usize,
    ) {
        let (a_row, b_row, y_row) = row_bytes(self);
        let vectors = width / LANES;
        let (ty, cols) = if vectors == 0 {
            (types::F32, 1)
        } else {
            (types::F32X4, vectors)
        };
        let zero = fb.ins().f32const(0.0);
        let zero = if vectors == 0 {
            zero
        } else {
            fb.ins().splat(types::F32X4, zero)
        };
        let accs: Vec<_> = (0..rows * cols).map(|_| fb.declare_var(ty)).collect();
        for &v in &accs {
            fb.def_var(v, zero);
        }
        let (pa, pb) = (fb.declare_var(types::I64), fb.declare_var(types::I64));
        fb.def_var(pa, a);
        fb.def_var(pb, b);
        let fma = self.fma;
        emit::for_count(fb, self.k as i64, |fb, _| {
            let (ak, bk) = (fb.use_var(pa), fb.use_var(pb));
            let bs: Vec<Value> = (0..cols)
                .map(|c| fb.ins().load(ty, emit::mem(), bk, (c * LANES * 4) as i32))
                .collect();
            for r in 0..rows {
                let s = fb
                    .ins()
                    .load(types::F32, emit::mem(), ak, (r as i64 * a_row) as i32);
                let s = if vectors == 0 {
                    s
                } else {
                    fb.ins().splat(types::F32X4, s)
                };
                for (c, &bv) in bs.iter().enumerate() {
                    let var = accs[r * cols + c];
                    let acc = fb.use_var(var);
                    let acc = if fma {
                        fb.ins().fma(s, bv, acc)
                    } else {
                        let p = fb.ins().fmul(s, bv);
                        fb.ins().fadd(acc, p)
                    };
                    fb.def_var(var, acc);
                }
            }
            let (na, nb) = (fb.ins().iadd_imm_s(ak, 4), fb.ins().iadd_imm_s(bk, b_row));
            fb.def_var(pa, na);
            fb.def_var(pb, nb);
        });
        for r in 0..rows {
            for c in 0..cols {
                let v = fb.use_var(accs[r * cols + c]);
                let v = match self.act {
                    Some((lo, hi)) => clamp(fb, v, lo, hi),
                    None => v,
                };
                fb.ins().store(
                    emit::mem(),
                    v,
                    y,
                    (r as i64 * y_row + (c * LANES * 4) as i64) as i32,
                );
            }
        }
    }

    /// The whole product for `m` rows (a run-time value): column blocks of 8, 4, then single
    /// columns, each walking down A four rows at a time, then row by row.
    fn product(&self, fb: &mut FunctionBuilder, a: Value, b: Value, y: Value, m: Value) {
        let (a_row, _, y_row) = row_bytes(self);
        // Column blocks: (first column, how many, width).
        let (wide, four) = (self.n / (2 * LANES), self.n % (2 * LANES) / LANES);
        let runs = [
            (0, wide, 2 * LANES),
            (wide * 2 * LANES, four, LANES),
            (wide * 2 * LANES + four * LANES, self.n % LANES, 1),
        ];
        let full = fb.ins().band_imm_s(m, -ROWS);
        let zero = emit::iconst(fb, 0);
        for (start, count, w) in runs.into_iter().filter(|r| r.1 > 0) {
            emit::for_count(fb, count as i64, |fb, t| {
                let col = fb.ins().imul_imm_s(t, w as i64);
                let col = fb.ins().iadd_imm_s(col, start as i64);
                let bj = emit::addr(fb, b, col, 4);
                let yj = emit::addr(fb, y, col, 4);
                emit::for_range(fb, zero, full, ROWS, |fb, i| {
                    let ai = emit::addr(fb, a, i, a_row);
                    let yi = emit::addr(fb, yj, i, y_row);
                    self.tile(fb, ai, bj, yi, ROWS as usize, w);
                });
                emit::for_range(fb, full, m, 1, |fb, i| {
                    let ai = emit::addr(fb, a, i, a_row);
                    let yi = emit::addr(fb, yj, i, y_row);
                    self.tile(fb, ai, bj, yi, 1, w);
                });
            });
        }
    }
}

/// `v` clamped to `[lo, hi]` (infinite bounds skipped; NaN stays NaN, as fmax/fmin keep it).
fn clamp(fb: &mut FunctionBuilder, v: Value, lo: f32, hi: f32) -> Value {
    let ty = fb.func.dfg.value_type(v);
    let splat = |fb: &mut FunctionBuilder, c: f32| {
        let s = fb.ins().f32const(c);
        if ty.is_vector() {
            fb.ins().splat(ty, s)
        } else {
            s
        }
    };
    let mut v = v;
    if lo != f32::NEG_INFINITY {
        let l = splat(fb, lo);
        v = fb.ins().fmax(v, l);
    }
    if hi != f32::INFINITY {
        let h = splat(fb, hi);
        v = fb.ins().fmin(v, h);
    }
    v
}

/// An operand as a matrix with batch dimensions: `[batch…, rows, cols]` (a vector is one
/// row of A, or one column of B).
fn as_matrix(o: &Operand, is_b: bool) -> Vec<usize> {
    let d = o.dims();
    match (d.len(), is_b) {
        (1, false) => vec![1, d[0]],
        (1, true) => vec![d[0], 1],
        _ => d,
    }
}

/// MatMul on f32 operands (see the module documentation).
pub(super) fn matmul(k: &mut Kernel) -> Result<(), String> {
    let (a, b, y) = (k.input(0)?, k.input(1)?, k.output(0));
    let (ad, bd) = (as_matrix(a, false), as_matrix(b, true));
    let (m, kk, n) = (ad[ad.len() - 2], ad[ad.len() - 1], bd[bd.len() - 1]);
    if bd[bd.len() - 2] != kk {
        return Err(format!(
            "inner dimensions differ: {:?} times {:?}",
            a.dims(),
            b.dims()
        ));
    }
    for (o, what) in [(a, "A"), (b, "B")] {
        if o.batched() && o.ty.shape.rank() != y.ty.shape.rank() {
            return Err(format!("{what} has the batch but not the result's rank"));
        }
    }
    let tiles = Tiles {
        k: kk,
        n,
        fma: k.target_has("has_fma"),
        act: k.op.fused_activation()?,
    };
    let (pa, pb, py) = (a.ptr, b.ptr, y.ptr);
    let (a_batched, b_batched, y_batched) = (a.batched(), b.batched(), y.batched());
    let (a_per, b_per, y_per) = (a.per_sample(), b.per_sample(), y.per_sample());
    let samples = k.samples(y_batched);
    let fb = &mut *k.fb;
    // B without batch dimensions: all of A's rows form one matrix.
    if bd.len() == 2 && !b_batched {
        let rows_per_sample = (a_per / kk.max(1)) as i64;
        let rows = if a_batched {
            fb.ins().imul_imm_s(samples, rows_per_sample)
        } else {
            emit::iconst(fb, rows_per_sample)
        };
        tiles.product(fb, pa, pb, py, rows);
        return Ok(());
    }
    // Batch dimensions: A's and B's (padded to one rank) broadcast to the result's.
    let (abat, bbat) = (&ad[..ad.len() - 2], &bd[..bd.len() - 2]);
    let rank = abat.len().max(bbat.len());
    let pad = |s: &[usize]| -> Vec<usize> {
        std::iter::repeat_n(1, rank - s.len())
            .chain(s.iter().copied())
            .collect()
    };
    let (pa_dims, pb_dims) = (pad(abat), pad(bbat));
    let out: Vec<usize> = pa_dims
        .iter()
        .zip(&pb_dims)
        .map(|(&p, &q)| p.max(q))
        .collect();
    let strides = |dims: &[usize], matrix: usize| -> Vec<i64> {
        let own = emit::row_major(dims);
        dims.iter()
            .zip(own)
            .map(|(&d, s)| if d == 1 { 0 } else { s * matrix as i64 })
            .collect()
    };
    let (sa, sb, sy) = (
        strides(&pa_dims, m * kk),
        strides(&pb_dims, kk * n),
        strides(&out, m * n),
    );
    // The run-time batch is axis 0 of the padded batch dimensions: it leaves the static nest.
    let first = usize::from(y_batched);
    let (extents, nest_strides) = emit::coalesce(
        &out[first..],
        &[
            sa[first..].to_vec(),
            sb[first..].to_vec(),
            sy[first..].to_vec(),
        ],
    );
    let sample = |batched: bool, per: usize| if batched { per as i64 * 4 } else { 0 };
    let (a_sample, b_sample, y_sample) = (
        sample(a_batched, a_per),
        sample(b_batched, b_per),
        sample(y_batched, y_per),
    );
    let m_rows = emit::iconst(fb, m as i64);
    emit::for_dynamic(fb, samples, |fb, s| {
        let start = [
            fb.ins().imul_imm_s(s, a_sample),
            fb.ins().imul_imm_s(s, b_sample),
            fb.ins().imul_imm_s(s, y_sample),
        ];
        // Offsets in bytes: element strides times 4.
        let bytes: Vec<Vec<i64>> = nest_strides
            .iter()
            .map(|v| v.iter().map(|x| x * 4).collect())
            .collect();
        emit::for_strided(fb, &extents, &bytes, &start, &mut |fb, off| {
            let (am, bm, ym) = (
                fb.ins().iadd(pa, off[0]),
                fb.ins().iadd(pb, off[1]),
                fb.ins().iadd(py, off[2]),
            );
            tiles.product(fb, am, bm, ym, m_rows);
        });
    });
    Ok(())
}
