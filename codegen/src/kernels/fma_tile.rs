//! The f32 register tile in machine code (iced-x86's assembler): 256-bit fused
//! multiply-adds, the inner loop of the f32 products Cranelift 0.135 can only give 128-bit
//! vectors without FMA (see [`super::ukernel`] for why and how such code is placed in the
//! module). It is the BLIS/MLAS micro-kernel shape: six broadcast rows × two vectors of
//! eight columns, twelve ymm accumulators held over the whole reduction.
//!
//! For `k` in `0..steps`: two 32-byte loads of the *panel* (16 columns of step `k`, 64
//! bytes apart per step), six broadcasts of the *rows* (element `k` of each row, 4 bytes
//! apart, rows `row_stride` apart), twelve `vfmadd231ps`. The sums run over `k` in order,
//! each step rounded once (an FMA), so they differ from the interpreter's f64 sums by
//! rounding only. Then the bias, the clamp of a fused activation, and the stores (masked
//! for a partial last vector, so nothing past the tile's columns is written).

use iced_x86::code_asm::*;

/// Most broadcast rows of a tile (12 accumulators + 2 panel vectors + 1 broadcast).
pub(crate) const ROWS: usize = 6;

/// Columns of a tile: two vectors of eight f32.
pub(crate) const COLS: usize = 16;

/// Bytes of one step of a panel.
pub(crate) const PANEL_STEP: i32 = (COLS * 4) as i32;

/// Steps per loop iteration.
const UNROLL: usize = 4;

/// What is added to the sums before the clamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bias {
    None,
    /// One f32 per row at `bias + 4r` (a convolution's channels).
    PerRow,
    /// One f32 per column at `bias + 4j` (a matrix product's columns).
    PerColumn,
    /// What the output already holds: the partial sums of an earlier block of the
    /// reduction (blocking it keeps a panel's block in L1).
    Accumulate,
}

/// The shape of one micro-kernel.
#[derive(Clone, Debug)]
pub(crate) struct FmaTile {
    /// Rows (1..=[`ROWS`]) and columns (1..=[`COLS`]) computed and stored.
    pub rows: usize,
    pub cols: usize,
    /// The reduction's length (at least 1).
    pub steps: usize,
    /// Bytes between two broadcast rows.
    pub row_stride: i32,
    /// Bytes between two output rows.
    pub out_row: i32,
    pub bias: Bias,
    /// The fused activation's bounds (infinite ones are skipped).
    pub clamp: (f32, f32),
}

/// The machine code of `fn(panel: *const f32, rows: *const f32, out: *mut f32, bias:
/// *const f32)` (System V: rdi, rsi, rdx, rcx) computing `out[r][j] = clamp(bias +
/// Σ_k rows[r][k] · panel[k][j])` for the tile's rows and columns. Uses caller-saved
/// registers only (ymm0–15, r9); its constants follow its `ret`.
pub(crate) fn fma_tile(t: &FmaTile) -> Result<Vec<u8>, String> {
    let e = |e: IcedError| e.to_string();
    if !(1..=ROWS).contains(&t.rows) || !(1..=COLS).contains(&t.cols) || t.steps == 0 {
        return Err(format!(
            "f32 micro-kernel tile out of range: {} rows, {} columns, {} steps",
            t.rows, t.cols, t.steps
        ));
    }
    let offset = |r: usize, step: usize| -> Result<i32, String> {
        (r as i64 * t.row_stride as i64 + step as i64 * 4)
            .try_into()
            .map_err(|_| "f32 micro-kernel row offset overflows".to_string())
    };
    offset(t.rows - 1, UNROLL)?;
    t.out_row
        .checked_mul(t.rows as i32)
        .ok_or("f32 micro-kernel output offset overflows")?;
    let ymm = [
        ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11,
    ];
    let vectors = t.cols.div_ceil(8);
    let acc = |r: usize, v: usize| ymm[r * 2 + v];
    let (x, b) = ([ymm12, ymm13], ymm14);
    let mut a = CodeAssembler::new(64).map_err(e)?;
    a.set_prefer_vex(true);
    for r in 0..t.rows {
        for v in 0..vectors {
            a.vxorps(acc(r, v), acc(r, v), acc(r, v)).map_err(e)?;
        }
    }
    let step = |a: &mut CodeAssembler, s: usize| -> Result<(), String> {
        for (v, &xv) in x.iter().enumerate().take(vectors) {
            a.vmovups(
                xv,
                ymmword_ptr(rdi + (s as i32 * PANEL_STEP + 32 * v as i32)),
            )
            .map_err(e)?;
        }
        for r in 0..t.rows {
            a.vbroadcastss(b, dword_ptr(rsi + offset(r, s)?))
                .map_err(e)?;
            for (v, &xv) in x.iter().enumerate().take(vectors) {
                a.vfmadd231ps(acc(r, v), xv, b).map_err(e)?;
            }
        }
        Ok(())
    };
    let iterations = t.steps / UNROLL;
    if iterations > 0 {
        a.mov(r9, iterations as u64).map_err(e)?;
        let mut top = a.create_label();
        a.set_label(&mut top).map_err(e)?;
        for s in 0..UNROLL {
            step(&mut a, s)?;
        }
        a.add(rdi, UNROLL as i32 * PANEL_STEP).map_err(e)?;
        a.add(rsi, UNROLL as i32 * 4).map_err(e)?;
        a.dec(r9).map_err(e)?;
        a.jnz(top).map_err(e)?;
    }
    for s in 0..t.steps % UNROLL {
        step(&mut a, s)?;
    }
    let (mut lo_at, mut hi_at, mut mask_at) =
        (a.create_label(), a.create_label(), a.create_label());
    let (lo, hi, mask) = (ymm12, ymm13, ymm15);
    let (clamp_lo, clamp_hi) = (t.clamp.0 > f32::NEG_INFINITY, t.clamp.1 < f32::INFINITY);
    if clamp_lo {
        a.vbroadcastss(lo, dword_ptr(lo_at)).map_err(e)?;
    }
    if clamp_hi {
        a.vbroadcastss(hi, dword_ptr(hi_at)).map_err(e)?;
    }
    let partial = t.cols % 8;
    if partial != 0 {
        a.vmovups(mask, ymmword_ptr(mask_at)).map_err(e)?;
    }
    for r in 0..t.rows {
        if t.bias == Bias::PerRow {
            a.vbroadcastss(b, dword_ptr(rcx + 4 * r as i32))
                .map_err(e)?;
        }
        for v in 0..vectors {
            let y = acc(r, v);
            match t.bias {
                Bias::None => {}
                Bias::PerRow => a.vaddps(y, y, b).map_err(e)?,
                Bias::PerColumn => a
                    .vaddps(y, y, ymmword_ptr(rcx + 32 * v as i32))
                    .map_err(e)?,
                Bias::Accumulate => {
                    let at = rdx + (r as i32 * t.out_row + 32 * v as i32);
                    if v + 1 == vectors && partial != 0 {
                        a.vmaskmovps(b, mask, ymmword_ptr(at)).map_err(e)?;
                        a.vaddps(y, y, b).map_err(e)?;
                    } else {
                        a.vaddps(y, y, ymmword_ptr(at)).map_err(e)?;
                    }
                }
            }
            // The bound first: a NaN sum stays NaN (the second operand is returned).
            if clamp_lo {
                a.vmaxps(y, lo, y).map_err(e)?;
            }
            if clamp_hi {
                a.vminps(y, hi, y).map_err(e)?;
            }
            let at = rdx + (r as i32 * t.out_row + 32 * v as i32);
            if v + 1 == vectors && partial != 0 {
                a.vmaskmovps(ymmword_ptr(at), mask, y).map_err(e)?;
            } else {
                a.vmovups(ymmword_ptr(at), y).map_err(e)?;
            }
        }
    }
    a.vzeroupper().map_err(e)?;
    a.ret().map_err(e)?;
    a.set_label(&mut lo_at).map_err(e)?;
    a.dd_f32(&[t.clamp.0]).map_err(e)?;
    a.set_label(&mut hi_at).map_err(e)?;
    a.dd_f32(&[t.clamp.1]).map_err(e)?;
    a.set_label(&mut mask_at).map_err(e)?;
    let lanes: Vec<u32> = (0..8)
        .map(|l| if l < partial { u32::MAX } else { 0 })
        .collect();
    a.dd(&lanes).map_err(e)?;
    a.assemble(0).map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code assembles for every tile shape, and bad shapes are errors.
    #[test]
    fn assembles_every_shape() {
        for rows in 1..=ROWS {
            for cols in [1, 7, 8, 9, 16] {
                for steps in [1, 3, 4, 9] {
                    for bias in [Bias::None, Bias::PerRow, Bias::PerColumn, Bias::Accumulate] {
                        let t = FmaTile {
                            rows,
                            cols,
                            steps,
                            row_stride: 4 * steps as i32,
                            out_row: 64,
                            bias,
                            clamp: (0.0, 6.0),
                        };
                        assert!(!fma_tile(&t).unwrap().is_empty());
                    }
                }
            }
        }
        let bad = FmaTile {
            rows: 7,
            cols: 16,
            steps: 1,
            row_stride: 4,
            out_row: 64,
            bias: Bias::None,
            clamp: (f32::NEG_INFINITY, f32::INFINITY),
        };
        assert!(fma_tile(&bad).is_err());
        assert!(fma_tile(&FmaTile {
            rows: 6,
            steps: 1,
            row_stride: i32::MAX / 2,
            ..bad
        })
        .is_err());
    }
}
