//! The f32 depthwise micro-kernel in machine code (iced-x86's assembler, see
//! [`super::ukernel`] for why): one channel's whole output plane from padded input planes,
//! eight output positions of one row per 256-bit vector, one broadcast weight per tap and
//! one `vfmadd231ps` with a memory operand per tap and vector.
//!
//! A *block* is up to [`MAX_ACC`] accumulators: `rows` output rows × `vectors` vectors of
//! eight neighbouring outputs. Wide rows take one row and several blocks per row (a loop);
//! narrow rows take several rows per block, so that each broadcast feeds many FMAs whatever
//! the row width. Per block, a loop over the kernel's rows runs the taps of one kernel row,
//! unrolled: tap `t` of the output vector at input address `a` reads `a + taps[t]` (the
//! form lays its planes out so that every tap's eight inputs are contiguous). The sums run
//! over the taps in order, each step rounded once (an FMA); then the bias, the clamp of a
//! fused activation, and the stores (masked for a row's partial last vector, so nothing
//! past the row is written).

use iced_x86::code_asm::*;

/// Accumulators of a block: ymm0–11, with the broadcast weight, the clamp bounds and the
/// store mask in ymm12–15.
pub(crate) const MAX_ACC: usize = 12;

/// Outputs per vector.
pub(crate) const LANES: usize = 8;

/// How one call walks a channel's output plane.
#[derive(Clone, Debug)]
pub(crate) struct DepthwiseRows {
    /// Output rows and columns of the plane.
    pub out_rows: usize,
    pub out_cols: usize,
    /// Output rows per block (1 for rows wider than [`MAX_ACC`] / 2 vectors).
    pub rows: usize,
    /// Vectors per block along a row (the last block of a row may have fewer).
    pub vectors: usize,
    /// Kernel rows (the tap loop's count) and each tap of a kernel row's byte offset from
    /// the input address of its output.
    pub kernel_rows: usize,
    pub taps: Vec<i32>,
    /// Bytes the input address advances per kernel row and per output row (per output
    /// column it advances 4 bytes: the eight inputs of a vector's tap are contiguous).
    pub kernel_row_step: i32,
    pub in_row: i32,
    /// Whether to add the f32 at `bias`.
    pub bias: bool,
    /// The fused activation's bounds (infinite ones are skipped).
    pub clamp: (f32, f32),
}

impl DepthwiseRows {
    /// The block shape for a plane `out_cols` wide: rows of at most half the accumulators
    /// share a block; wider rows are split into blocks of nearly equal vector counts.
    pub(crate) fn blocking(out_cols: usize) -> (usize, usize) {
        let per_row = out_cols.div_ceil(LANES);
        if per_row <= MAX_ACC / 2 {
            (MAX_ACC / per_row, per_row)
        } else {
            (1, per_row.div_ceil(per_row.div_ceil(MAX_ACC)))
        }
    }
}

/// The machine code of `fn(x: *const f32, w: *const f32, y: *mut f32, bias: *const f32)`
/// (System V: rdi, rsi, rdx, rcx): `y[oy][ox] = clamp(bias + Σ_{ky, t} w[ky][t] · x[oy ·
/// in_row + ox · 4 + ky · kernel_row_step + taps[t]])` (addresses in bytes) over the
/// plane, `y` dense (`out_cols` per row). Uses caller-saved registers only (ymm0–15, rax,
/// r8–r11); its constants follow its `ret`.
pub(crate) fn depthwise_rows(d: &DepthwiseRows) -> Result<Vec<u8>, String> {
    let e = |e: IcedError| e.to_string();
    let kw = d.taps.len();
    if d.out_rows == 0
        || d.out_cols == 0
        || d.kernel_rows == 0
        || kw == 0
        || d.rows == 0
        || d.vectors == 0
        || d.rows * d.vectors > MAX_ACC
    {
        return Err(format!(
            "f32 depthwise micro-kernel out of range: {}×{} outputs, {}×{kw} taps, blocks of {}×{}",
            d.out_rows, d.out_cols, d.kernel_rows, d.rows, d.vectors
        ));
    }
    let i32_of = |v: i64| {
        i32::try_from(v).map_err(|_| "f32 depthwise micro-kernel offset overflows".to_string())
    };
    let out_row = i32_of(d.out_cols as i64 * 4)?;
    let block_bytes = i32_of(d.vectors as i64 * 32)?;
    let max_tap = d.taps.iter().copied().max().unwrap_or(0) as i64;
    i32_of(max_tap + (d.rows as i64 - 1) * d.in_row as i64 + block_bytes as i64)?;
    i32_of(d.rows as i64 * d.in_row as i64)?;
    i32_of(d.rows as i64 * out_row as i64)?;
    i32_of(kw as i64 * 4)?;

    let acc = [
        ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11,
    ];
    let (wv, lo, hi, mask) = (ymm12, ymm13, ymm14, ymm15);
    let (clamp_lo, clamp_hi) = (d.clamp.0 > f32::NEG_INFINITY, d.clamp.1 < f32::INFINITY);
    let full_blocks = d.out_cols / (d.vectors * LANES);
    let rest = d.out_cols - full_blocks * d.vectors * LANES;
    let partial = d.out_cols % LANES;

    let mut a = CodeAssembler::new(64).map_err(e)?;
    a.set_prefer_vex(true);
    let (mut lo_at, mut hi_at, mut mask_at) =
        (a.create_label(), a.create_label(), a.create_label());
    if clamp_lo {
        a.vbroadcastss(lo, dword_ptr(lo_at)).map_err(e)?;
    }
    if clamp_hi {
        a.vbroadcastss(hi, dword_ptr(hi_at)).map_err(e)?;
    }
    if partial != 0 {
        a.vmovups(mask, ymmword_ptr(mask_at)).map_err(e)?;
    }
    // One block of `rows` × `vectors` at input rdi, output rdx; the last vector of each
    // row stores `last` lanes (8: all).
    let block = |a: &mut CodeAssembler, rows: usize, vectors: usize, last: usize| {
        let acc = |r: usize, v: usize| acc[r * vectors + v];
        for r in 0..rows {
            for v in 0..vectors {
                a.vxorps(acc(r, v), acc(r, v), acc(r, v)).map_err(e)?;
            }
        }
        a.mov(r10, rdi).map_err(e)?;
        a.mov(r11, rsi).map_err(e)?;
        a.mov(rax, d.kernel_rows as u64).map_err(e)?;
        let mut top = a.create_label();
        a.set_label(&mut top).map_err(e)?;
        for (t, &tap) in d.taps.iter().enumerate() {
            a.vbroadcastss(wv, dword_ptr(r11 + 4 * t as i32))
                .map_err(e)?;
            for r in 0..rows {
                for v in 0..vectors {
                    let at = tap + r as i32 * d.in_row + 32 * v as i32;
                    a.vfmadd231ps(acc(r, v), wv, ymmword_ptr(r10 + at))
                        .map_err(e)?;
                }
            }
        }
        a.add(r10, d.kernel_row_step).map_err(e)?;
        a.add(r11, 4 * kw as i32).map_err(e)?;
        a.dec(rax).map_err(e)?;
        a.jnz(top).map_err(e)?;
        if d.bias {
            a.vbroadcastss(wv, dword_ptr(rcx)).map_err(e)?;
        }
        for r in 0..rows {
            for v in 0..vectors {
                let y = acc(r, v);
                if d.bias {
                    a.vaddps(y, y, wv).map_err(e)?;
                }
                // The bound first: a NaN sum stays NaN (the second operand is returned).
                if clamp_lo {
                    a.vmaxps(y, lo, y).map_err(e)?;
                }
                if clamp_hi {
                    a.vminps(y, hi, y).map_err(e)?;
                }
                let at = rdx + (r as i32 * out_row + 32 * v as i32);
                if v + 1 == vectors && last != LANES {
                    a.vmaskmovps(ymmword_ptr(at), mask, y).map_err(e)?;
                } else {
                    a.vmovups(ymmword_ptr(at), y).map_err(e)?;
                }
            }
        }
        Ok::<(), String>(())
    };
    // `rows` output rows: the full blocks of the row (a loop), then the rest, then rdi and
    // rdx moved to the next rows.
    let row_group = |a: &mut CodeAssembler, rows: usize| {
        if full_blocks > 0 {
            a.mov(r9, full_blocks as u64).map_err(e)?;
            let mut top = a.create_label();
            a.set_label(&mut top).map_err(e)?;
            block(a, rows, d.vectors, LANES)?;
            a.add(rdi, block_bytes).map_err(e)?;
            a.add(rdx, block_bytes).map_err(e)?;
            a.dec(r9).map_err(e)?;
            a.jnz(top).map_err(e)?;
        }
        if rest > 0 {
            let last = if partial == 0 { LANES } else { partial };
            block(a, rows, rest.div_ceil(LANES), last)?;
        }
        let back = full_blocks as i64 * block_bytes as i64;
        a.add(rdi, i32_of(rows as i64 * d.in_row as i64 - back)?)
            .map_err(e)?;
        a.add(rdx, i32_of(rows as i64 * out_row as i64 - back)?)
            .map_err(e)?;
        Ok::<(), String>(())
    };
    let iterations = d.out_rows / d.rows;
    if iterations > 0 {
        a.mov(r8, iterations as u64).map_err(e)?;
        let mut top = a.create_label();
        a.set_label(&mut top).map_err(e)?;
        row_group(&mut a, d.rows)?;
        a.dec(r8).map_err(e)?;
        a.jnz(top).map_err(e)?;
    }
    if d.out_rows % d.rows > 0 {
        row_group(&mut a, d.out_rows % d.rows)?;
    }
    a.vzeroupper().map_err(e)?;
    a.ret().map_err(e)?;
    a.set_label(&mut lo_at).map_err(e)?;
    a.dd_f32(&[d.clamp.0]).map_err(e)?;
    a.set_label(&mut hi_at).map_err(e)?;
    a.dd_f32(&[d.clamp.1]).map_err(e)?;
    a.set_label(&mut mask_at).map_err(e)?;
    let lanes: Vec<u32> = (0..LANES)
        .map(|l| if l < partial { u32::MAX } else { 0 })
        .collect();
    a.dd(&lanes).map_err(e)?;
    a.assemble(0).map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Narrow rows share a block, wide rows split into nearly equal blocks.
    #[test]
    fn blocking_fills_the_accumulators() {
        assert_eq!(DepthwiseRows::blocking(7), (12, 1));
        assert_eq!(DepthwiseRows::blocking(14), (6, 2));
        assert_eq!(DepthwiseRows::blocking(28), (3, 4));
        assert_eq!(DepthwiseRows::blocking(56), (1, 7));
        assert_eq!(DepthwiseRows::blocking(112), (1, 7));
        assert_eq!(DepthwiseRows::blocking(200), (1, 9));
    }

    /// The code assembles for wide and narrow rows, partial vectors and tails, and bad
    /// shapes are errors.
    #[test]
    fn assembles_every_shape() {
        for (out_rows, out_cols) in [(1, 1), (7, 7), (13, 14), (5, 100), (2, 112)] {
            let (rows, vectors) = DepthwiseRows::blocking(out_cols);
            let d = DepthwiseRows {
                out_rows,
                out_cols,
                rows,
                vectors,
                kernel_rows: 3,
                taps: vec![0, 4, 8],
                kernel_row_step: 512,
                in_row: 512,
                bias: true,
                clamp: (0.0, 6.0),
            };
            assert!(!depthwise_rows(&d).unwrap().is_empty());
        }
        let bad = DepthwiseRows {
            out_rows: 1,
            out_cols: 8,
            rows: 2,
            vectors: 7,
            kernel_rows: 1,
            taps: vec![0],
            kernel_row_step: 0,
            in_row: 64,
            bias: false,
            clamp: (f32::NEG_INFINITY, f32::INFINITY),
        };
        assert!(depthwise_rows(&bad).is_err());
        assert!(depthwise_rows(&DepthwiseRows {
            rows: 1,
            vectors: 1,
            taps: vec![i32::MAX - 8],
            ..bad
        })
        .is_err());
    }
}
