//! Wide-vector micro-kernels in machine code (iced-x86's assembler), for the register tiles
//! Cranelift 0.135 cannot express: its x64 back end has 128-bit vectors only, these use
//! 256-bit ymm registers (AVX2). They are placed in the same module as the Cranelift code
//! with `Module::define_function_bytes` (JIT and object files alike) and called like any
//! other function; everything around them (packing, loops, requantization) stays Cranelift.
//!
//! One micro-kernel computes a tile of `rows` output channels × two vectors of eight output
//! positions: `acc[r][v][j] = Σ_{step} Σ_{pair} x_v[step][j][pair] · w[step][r][pair]`,
//! exact in wrapping i32, and requantizes and stores them ([`Requantize`]), from
//! - activations as pairs of i16 (two input channels' values of one position, 4 bytes),
//!   eight positions per 32-byte vector: step `s` of vector `v` is at `x_v + offsets[s]`,
//!   and each loop iteration advances both by `x_stride`;
//! - weights as pairs of i16 (the same two input channels), step `s`, row `r` at
//!   `w + (s · rows + r) · 4`, each iteration advancing by `steps · rows · 4`.
//!
//! Each product is one `vpmaddwd` (i16 × i16 pair products summed into i32 lanes, exact:
//! the only overflowing case, both pairs −32768·−32768, needs activations that are never
//! −32768) and one `vpaddd`, or one `vpdpwssd` (the same sum added to the accumulator,
//! not saturating) on CPUs with VNNI: VEX with AVX-VNNI, else EVEX on ymm with AVX-512
//! VNNI + VL ([`Isa::Avx512Vnni`]). Not `vpmaddubsw`: its u8×i8 pair sums saturate at i16,
//! which the interpreter's arithmetic does not.
//!
//! With VNNI, a step's four bytes may instead be four u8 on one side and four i8 on the
//! other ([`Operands::Quads`]): one `vpdpbusd` adds the four products (exact) to the
//! accumulator, twice the products per instruction of the pairs, with the same tile, the
//! same addressing (4 bytes a step) and the same requantization. The layout follows MLAS's
//! and oneDNN's VNNI panels: four consecutive k of one column (or output channel)
//! contiguous, the u8 side broadcast or loaded as the vector.

use iced_x86::code_asm::*;

/// Output positions per vector (i32 lanes of a ymm register).
pub(crate) const LANES: usize = 8;

/// Position vectors per tile.
pub(crate) const VECTORS: usize = 2;

/// Most output channels per tile: 6 × 2 accumulators, two activation vectors, a broadcast
/// weight pair and a product fill the 16 ymm registers.
pub(crate) const MAX_ROWS: usize = 6;

/// Most output channels per tile with AVX-512 ([`Isa::Avx512Vnni`]): 8 × 2 accumulators
/// fill ymm0–15 and the operands move to ymm16–19 (EVEX only). Eight rows read a tile's
/// activations once per eight channels instead of six, and a batch of eight rows of a
/// matrix product streams the weights once instead of twice (six, then two).
pub(crate) const WIDE_ROWS: usize = 8;

/// Most rows of a [`pair_tile`] on `isa`.
pub(crate) fn max_rows(isa: Isa) -> usize {
    match isa {
        Isa::Avx512Vnni => WIDE_ROWS,
        _ => MAX_ROWS,
    }
}

/// Which instructions a micro-kernel may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX2: `vpmaddwd` then `vpaddd`; no byte quads.
    Avx2,
    /// AVX-VNNI (VEX-encoded `vpdpwssd` / `vpdpbusd` on ymm).
    AvxVnni,
    /// AVX-512 VNNI with AVX-512 VL: the same instructions EVEX-encoded on ymm, for CPUs
    /// without AVX-VNNI (AMD Zen 4, Intel Ice Lake / Cascade Lake). Zen 4 splits 512-bit
    /// operations in two 256-bit halves, so ymm gives it the same products per cycle with
    /// the 8-lane tiles unchanged.
    Avx512Vnni,
}

impl Isa {
    /// Whether `vpdpbusd` (u8 × i8 quads, [`Operands::Quads`]) is available.
    pub fn has_quads(self) -> bool {
        self != Isa::Avx2
    }
}

/// What the four bytes of a micro-kernel step hold, on both operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operands {
    /// Two i16 on each side: `vpmaddwd` (+ `vpaddd`) or `vpdpwssd`, exact in i32.
    Pairs,
    /// Four bytes on each side, u8 on one and i8 on the other: one `vpdpbusd` (VNNI only),
    /// exact (each u8 × i8 product fits i16, the four are summed and added in wrapping
    /// i32, no saturation). `unsigned_broadcast`: the broadcast operand holds the u8 (the
    /// rows of a matrix product), else the vector operand does (a convolution's
    /// activations); `vpdpbusd` takes the u8 as its first source.
    Quads { unsigned_broadcast: bool },
}

/// The shape of one micro-kernel: its tile and the byte offsets of its steps.
#[derive(Clone, Debug)]
pub(crate) struct PairTile {
    /// Output channels (1..=[`max_rows`]).
    pub rows: usize,
    /// Byte offset of each step's activations from the vector's address.
    pub offsets: Vec<i32>,
    /// Bytes the activation addresses advance per iteration.
    pub x_stride: i32,
    /// Loop iterations (at least 1).
    pub iterations: u32,
    /// What becomes of the accumulators.
    pub store: Store,
    /// The broadcast operand's layout: `None`, step `s` of row `r` at `(s · rows + r) · 4`
    /// (convolution weights); `Some(stride)`, at `r · stride + s · 4` (rows of a matrix
    /// product's left side, each a contiguous run of pairs).
    pub row_stride: Option<i32>,
    /// The operands' element types.
    pub operands: Operands,
}

/// What a [`pair_tile`] micro-kernel does with its accumulators.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Store {
    /// Requantizes them to 8-bit results.
    Requantize(Requantize),
    /// Requantizes them to i16 results (int16 layers), row `r`'s sixteen at `out + r ·
    /// plane` (32 bytes; `signed` is not used).
    RequantizeI16(Requantize),
    /// Stores them as they are, row `r` and vector `v` as eight i32 at `out + r · plane +
    /// 32 · v`: for forms that transform the sums before requantizing them (Winograd's
    /// output transform).
    Sums {
        /// Bytes between the sums of two rows.
        plane: i32,
    },
}

/// The requantization a micro-kernel ends with: for each row (output channel) `r`, the
/// record `r` of a `ChannelTable` (bias at byte 0, multiplier at 4, shift − 32 at 8 with
/// zeros at 12..16, 2^(shift−1) at 16) gives `clamp(zp + ((acc + bias) · m + 2^(s−1)) >> s)`,
/// the arithmetic of `requant::requantize_x4` eight lanes at a time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Requantize {
    /// The result's zero point and clamp bounds.
    pub zero_point: i32,
    pub bounds: (i32, i32),
    /// i8 results (else u8).
    pub signed: bool,
    /// Bytes between the output planes of two rows.
    pub plane: i32,
    /// Parameters per lane instead of per row (a matrix product's columns): `records`
    /// points to a [`LaneTable`] block of the tile's 16 columns, the same for every row.
    pub per_lane: bool,
}

/// Per-column requantization parameters of a matrix product, in blocks of 16 columns (one
/// tile's two vectors) of [`LaneTable::BLOCK`] bytes: for vector v (8 columns), the folded
/// biases (i32 × 8) at `32v`, the multipliers at `64 + 32v`, the shifts − 32 at `128 + 32v`,
/// 2^(shift−1) (i64) of its even lanes at `192 + 64v` and of its odd lanes at `224 + 64v`.
pub(crate) struct LaneTable;

impl LaneTable {
    /// Bytes per block of 16 columns.
    pub const BLOCK: usize = 320;

    /// The table for `biases.len()` columns (padded with zero columns to whole blocks),
    /// column `j` with bias `biases[j]` and multiplier `multiplier(j)`; `None` when a shift
    /// is below 32.
    pub fn bytes(
        biases: &[i32],
        multiplier: impl Fn(usize) -> qlift_ir::fixed_point::FixedMultiplier,
    ) -> Option<Vec<u8>> {
        let blocks = biases.len().div_ceil(2 * LANES);
        let mut out = vec![0u8; blocks * Self::BLOCK];
        for (j, &bias) in biases.iter().enumerate() {
            let m = multiplier(j);
            if m.shift < 32 {
                return None;
            }
            let (block, v, lane) = (j / (2 * LANES), j % (2 * LANES) / LANES, j % LANES);
            let at = block * Self::BLOCK;
            let mut put = |offset: usize, bytes: &[u8]| {
                out[at + offset..at + offset + bytes.len()].copy_from_slice(bytes)
            };
            put(32 * v + 4 * lane, &bias.to_le_bytes());
            put(64 + 32 * v + 4 * lane, &m.m.to_le_bytes());
            put(
                128 + 32 * v + 4 * lane,
                &((m.shift - 32) as i32).to_le_bytes(),
            );
            put(
                192 + 64 * v + 32 * (lane % 2) + 8 * (lane / 2),
                &(1i64 << (m.shift - 1)).to_le_bytes(),
            );
        }
        // Padding columns: multiplier 0 and shift 32 (their results are never stored).
        for j in biases.len()..blocks * 2 * LANES {
            let (block, v, lane) = (j / (2 * LANES), j % (2 * LANES) / LANES, j % LANES);
            out[block * Self::BLOCK + 192 + 64 * v + 32 * (lane % 2) + 8 * (lane / 2) + 3] = 0x80;
        }
        Some(out)
    }
}

/// The machine code of `fn(x0: *const u8, x1: *const u8, w: *const u8, out: *mut u8,
/// records: *const u8)` (System V: rdi, rsi, rdx, rcx, r8) computing `tile`: the
/// accumulators of row `r` and vector `v` requantized with record `r` at `records` and
/// stored as eight bytes at `out + r · plane + 8 · v` (or stored as sums, [`Store::Sums`],
/// with `records` unused). Uses only caller-saved registers
/// (ymm0–15 are all caller-saved in System V) and `r9`. Its constants (zero point,
/// bounds, a permutation) follow its `ret`, read relative to the instruction pointer.
///
/// Requantization: `vpmuldq` multiplies the even lanes (and, after a 32-bit right shift, the
/// odd ones) into i64 products, the rounding half is added in i64, the high dwords of the
/// eight sums are gathered (`vpsrlq` + `vpblendd`) and shifted right by `shift − 32` (floor
/// division composes: `x >> s = (x >> 32) >> (s − 32)`), then the zero point, the clamp
/// and saturating packs (exact on clamped values) to bytes.
pub(crate) fn pair_tile(tile: &PairTile, isa: Isa) -> Result<Vec<u8>, String> {
    let e = |e: IcedError| e.to_string();
    if !(1..=max_rows(isa)).contains(&tile.rows) || tile.offsets.is_empty() || tile.iterations == 0
    {
        return Err(format!(
            "micro-kernel tile out of range: {} rows, {} steps",
            tile.rows,
            tile.offsets.len()
        ));
    }
    let ymm = [
        ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13,
        ymm14, ymm15,
    ];
    let acc = |r: usize, v: usize| ymm[r * VECTORS + v];
    // More than six rows: the operands in ymm16–19, EVEX-encoded (no VEX form reaches them).
    let high = tile.rows > MAX_ROWS;
    let (x, b, p) = match high {
        false => ([ymm12, ymm13], ymm14, ymm15),
        true => ([ymm16, ymm17], ymm18, ymm19),
    };
    let mut a = CodeAssembler::new(64).map_err(e)?;
    a.set_prefer_vex(true);
    for r in 0..tile.rows {
        for v in 0..VECTORS {
            a.vpxor(acc(r, v), acc(r, v), acc(r, v)).map_err(e)?;
        }
    }
    a.mov(r9, tile.iterations as u64).map_err(e)?;
    let mut top = a.create_label();
    a.set_label(&mut top).map_err(e)?;
    let rows = tile.rows as i32;
    for (s, &off) in tile.offsets.iter().enumerate() {
        a.set_prefer_vex(!high);
        for (xv, base) in x.into_iter().zip([rdi, rsi]) {
            match high {
                false => a.vmovdqu(xv, ymmword_ptr(base + off)),
                true => a.vmovdqu32(xv, ymmword_ptr(base + off)),
            }
            .map_err(e)?;
        }
        for r in 0..tile.rows {
            let at = match tile.row_stride {
                None => (s as i32 * rows + r as i32) * 4,
                Some(stride) => r as i32 * stride + s as i32 * 4,
            };
            a.set_prefer_vex(!high);
            a.vpbroadcastd(b, dword_ptr(rdx + at)).map_err(e)?;
            a.set_prefer_vex(true);
            for (v, &xv) in x.iter().enumerate() {
                dot(&mut a, isa, tile.operands, acc(r, v), (b, xv), p)?;
            }
        }
    }
    a.add(rdi, tile.x_stride).map_err(e)?;
    a.add(rsi, tile.x_stride).map_err(e)?;
    let w_step = if tile.row_stride.is_some() {
        4
    } else {
        rows * 4
    };
    a.add(rdx, tile.offsets.len() as i32 * w_step).map_err(e)?;
    a.dec(r9).map_err(e)?;
    a.jnz(top).map_err(e)?;
    let (q, sixteen) = match tile.store {
        Store::Requantize(q) => (q, false),
        Store::RequantizeI16(q) => (q, true),
        Store::Sums { plane } => {
            for r in 0..tile.rows {
                let at = plane
                    .checked_mul(r as i32)
                    .ok_or("output plane offset overflows")?;
                for v in 0..VECTORS {
                    a.vmovdqu(ymmword_ptr(rcx + at + 32 * v as i32), acc(r, v))
                        .map_err(e)?;
                }
            }
            a.vzeroupper().map_err(e)?;
            a.ret().map_err(e)?;
            return a.assemble(0).map_err(e);
        }
    };
    let mut k = Constants::new(&mut a, q, sixteen);
    let (bias, m, half, t) = (ymm12, ymm13, ymm14, ymm15);
    // Rows past six sit in the requantization's temporaries (ymm12–15): they wait in
    // ymm20–23 and come back to the registers of rows 0 and 1 once those are stored.
    let parked = [ymm20, ymm21, ymm22, ymm23];
    let spill = tile.rows.saturating_sub(MAX_ROWS) * VECTORS;
    let moves = |a: &mut CodeAssembler, back: bool| -> Result<(), String> {
        a.set_prefer_vex(false);
        for i in 0..spill {
            let (low, far) = (ymm[i + usize::from(!back) * MAX_ROWS * VECTORS], parked[i]);
            match back {
                false => a.vmovdqa32(far, low),
                true => a.vmovdqa32(low, far),
            }
            .map_err(e)?;
        }
        a.set_prefer_vex(true);
        Ok(())
    };
    moves(&mut a, false)?;
    // The register of row r's vector v during the requantization.
    let reg = |r: usize, v: usize| (r % MAX_ROWS) * VECTORS + v;
    for r in 0..tile.rows {
        if r == MAX_ROWS {
            moves(&mut a, true)?;
        }
        let record = (r * 32) as i32;
        if q.per_lane {
            for v in 0..VECTORS {
                requantize_lanes(&mut a, &k, ymm[reg(r, v)], (bias, m, t), v)?;
            }
        } else {
            load_record(&mut a, r8 + record, bias, m, half)?;
            for v in 0..VECTORS {
                requantize(&mut a, &k, ymm[reg(r, v)], t, (bias, m, half), r8 + record)?;
            }
        }
        let (y0, y1) = (ymm[reg(r, 0)], ymm[reg(r, 1)]);
        let out = q
            .plane
            .checked_mul(r as i32)
            .ok_or("output plane offset overflows")?;
        if sixteen {
            // [v0 lanes 0-3, v1 0-3 | v0 4-7, v1 4-7] as i16 (exact on clamped values),
            // then the qwords in the order v0 0-3, v0 4-7, v1 0-3, v1 4-7.
            a.vpackssdw(y0, y0, y1).map_err(e)?;
            a.vpermq(y0, y0, 0xd8).map_err(e)?;
            a.vmovdqu(ymmword_ptr(rcx + out), y0).map_err(e)?;
            continue;
        }
        // [v0 lanes 0-3, v1 0-3 | v0 4-7, v1 4-7] as i16, then bytes, then v0's eight and
        // v1's eight in the low 16 bytes.
        pack(&mut a, &k, q.signed, y0, y1, t)?;
        a.vmovq(qword_ptr(rcx + out), xmm_of(reg(r, 0)))
            .map_err(e)?;
        a.vpextrq(qword_ptr(rcx + out + 8), xmm_of(reg(r, 0)), 1)
            .map_err(e)?;
    }
    a.vzeroupper().map_err(e)?;
    a.ret().map_err(e)?;
    k.emit(&mut a, q)?;
    a.assemble(0).map_err(e)
}

/// The shape of a depthwise micro-kernel: one channel's whole output plane, `iterations`
/// times a body of groups of at most [`DEPTHWISE_VECTORS`] vectors of eight outputs.
///
/// Activations are the channel's padded u8 plane as it is (no repacking): a vector's tap
/// pair at `x + offset + pairs[i]` is 16 bytes widened to i16 (`vpmovzxbw`), i.e. eight
/// pairs of neighbouring columns `(c, c + 1)`, `c` advancing by two per lane. At column
/// stride 2 those are the taps `(kx, kx + 1)` of eight consecutive outputs; at stride 1 of
/// every other output, so a vector at `offset` and one at `offset + 1` together make
/// sixteen consecutive outputs (`interleave`).
///
/// With VNNI at column stride 1 the taps come in quads instead (`quads`, weights that fit
/// i8): lane `j` of a vector takes columns `j..j + 4` of the 16 bytes at `x + offset +
/// pairs[i]`, made by one 16-byte broadcast (`vbroadcasti128`, a load) and one in-lane
/// byte shuffle, then one `vpdpbusd` against the i8 quad at `w + 4i`: a 3-tap kernel row
/// is one product of eight outputs instead of two `vpmaddwd` and their two widenings. At
/// column stride 2 (`stride_two`) lane `j` takes columns `2j..2j + 4` of the 32 bytes at
/// the same address, one load and one cross-lane byte permutation (`vpermb`, AVX-512 VBMI:
/// the caller checks the CPU has it).
#[derive(Clone, Debug)]
pub(crate) struct DepthwisePlane {
    /// Byte offset of each tap pair's (or quad's) columns from a vector's address; pair
    /// `i`'s weights are the i16 pair (or i8 quad) at `w + 4i`.
    pub pairs: Vec<i32>,
    /// Tap quads of eight consecutive outputs on `vpdpbusd` (see above); needs VNNI and no
    /// `interleave`.
    pub quads: bool,
    /// The quads are of outputs at column stride 2 (`vpermb`).
    pub stride_two: bool,
    /// Per iteration: groups of vectors, each (activation offset, output offset) in bytes.
    pub groups: Vec<Vec<(i32, i32)>>,
    /// The vectors of each group come in (even outputs, odd outputs) pairs whose sixteen
    /// results are stored interleaved at the first one's output offset; otherwise each
    /// vector stores its eight results at its own.
    pub interleave: bool,
    /// Bytes the activation and output addresses advance per iteration.
    pub x_stride: i32,
    pub out_stride: i32,
    /// Loop iterations (at least 1).
    pub iterations: u32,
    /// The requantization (its `plane` is not used).
    pub store: Requantize,
}

/// Most vectors of a depthwise group: accumulators ymm0–7, the rest for the broadcast
/// weight pair, the widened activations, products and the requantization's operands.
pub(crate) const DEPTHWISE_VECTORS: usize = 8;

/// The machine code of `fn(x: *const u8, w: *const u8, out: *mut u8, record: *const u8)`
/// (System V: rdi, rsi, rdx, rcx) computing one depthwise channel (see [`DepthwisePlane`]):
/// for each vector, `Σ_i vpmaddwd(w[i], widen(x + offset + pairs[i]))` (i16 pairs of
/// taps, exact), requantized with the `ChannelTable` record at `record` as in
/// [`pair_tile`], eight bytes (sixteen per interleaved pair) stored at `out + output
/// offset`. Uses caller-saved registers and `r9` only.
pub(crate) fn depthwise_plane(plane: &DepthwisePlane, isa: Isa) -> Result<Vec<u8>, String> {
    let e = |e: IcedError| e.to_string();
    if plane.pairs.is_empty()
        || plane.iterations == 0
        || plane.groups.iter().any(|g| {
            g.is_empty() || g.len() > DEPTHWISE_VECTORS || (plane.interleave && g.len() % 2 == 1)
        })
        || (plane.quads && (plane.interleave || !isa.has_quads()))
        || (plane.stride_two && !plane.quads)
    {
        return Err("depthwise micro-kernel shape out of range".into());
    }
    let ymm = [ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7];
    let (b, p, bias, m, half, t, xv) = (ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14);
    let spread = ymm15;
    let mut a = CodeAssembler::new(64).map_err(e)?;
    a.set_prefer_vex(true);
    let mut k = Constants::new(&mut a, plane.store, false);
    let (mut zip, mut quad_order) = (a.create_label(), a.create_label());
    load_record(&mut a, rcx + 0, bias, m, half)?;
    if plane.quads {
        a.vmovdqu(spread, ymmword_ptr(quad_order)).map_err(e)?;
    }
    a.mov(r9, plane.iterations as u64).map_err(e)?;
    let mut top = a.create_label();
    a.set_label(&mut top).map_err(e)?;
    for group in &plane.groups {
        for &y in &ymm[..group.len()] {
            a.vpxor(y, y, y).map_err(e)?;
        }
        for (i, &off) in plane.pairs.iter().enumerate() {
            a.vpbroadcastd(b, dword_ptr(rsi + 4 * i as i32))
                .map_err(e)?;
            for (&y, &(x, _)) in ymm.iter().zip(group) {
                if plane.stride_two {
                    a.vmovdqu(xv, ymmword_ptr(rdi + x + off)).map_err(e)?;
                    a.set_prefer_vex(false);
                    a.vpermb(xv, spread, xv).map_err(e)?;
                    a.set_prefer_vex(true);
                }
                if plane.quads && !plane.stride_two {
                    a.vbroadcasti128(xv, xmmword_ptr(rdi + x + off))
                        .map_err(e)?;
                    a.vpshufb(xv, xv, spread).map_err(e)?;
                }
                if plane.quads {
                    let quads = Operands::Quads {
                        unsigned_broadcast: false,
                    };
                    dot(&mut a, isa, quads, y, (b, xv), p)?;
                } else {
                    a.vpmovzxbw(xv, xmmword_ptr(rdi + x + off)).map_err(e)?;
                    dot(&mut a, isa, Operands::Pairs, y, (b, xv), p)?;
                }
            }
        }
        for &y in &ymm[..group.len()] {
            requantize(&mut a, &k, y, t, (bias, m, half), rcx + 0)?;
        }
        if plane.interleave {
            for (v, pair) in group.chunks(2).enumerate() {
                let (even, odd) = (ymm[2 * v], ymm[2 * v + 1]);
                pack(&mut a, &k, plane.store.signed, even, odd, t)?;
                a.vpshufb(xmm_of(2 * v), xmm_of(2 * v), xmmword_ptr(zip))
                    .map_err(e)?;
                a.vmovdqu(xmmword_ptr(rdx + pair[0].1), xmm_of(2 * v))
                    .map_err(e)?;
            }
        } else {
            // Two vectors whose outputs follow each other share one pack and one store.
            let mut v = 0;
            while v < group.len() {
                let out = group[v].1;
                if group
                    .get(v + 1)
                    .is_some_and(|next| next.1 == out + LANES as i32)
                {
                    pack(&mut a, &k, plane.store.signed, ymm[v], ymm[v + 1], t)?;
                    a.vmovdqu(xmmword_ptr(rdx + out), xmm_of(v)).map_err(e)?;
                    v += 2;
                } else {
                    pack(&mut a, &k, plane.store.signed, ymm[v], ymm[v], t)?;
                    a.vmovq(qword_ptr(rdx + out), xmm_of(v)).map_err(e)?;
                    v += 1;
                }
            }
        }
    }
    a.add(rdi, plane.x_stride).map_err(e)?;
    a.add(rdx, plane.out_stride).map_err(e)?;
    a.dec(r9).map_err(e)?;
    a.jnz(top).map_err(e)?;
    a.vzeroupper().map_err(e)?;
    a.ret().map_err(e)?;
    k.emit(&mut a, plane.store)?;
    // Byte order taking [even 0..8, odd 0..8] to [even 0, odd 0, even 1, odd 1, …].
    a.set_label(&mut zip).map_err(e)?;
    let order: Vec<u8> = (0..8).flat_map(|i| [i, i + 8]).collect();
    a.db(&order).map_err(e)?;
    // Lane j of each 128-bit half (outputs 4h + j) takes bytes 4h + j .. 4h + j + 4 of the
    // 16 broadcast bytes; at column stride 2, lane j bytes 2j .. 2j + 4 of the 32 loaded.
    a.set_label(&mut quad_order).map_err(e)?;
    let step = if plane.stride_two { 2 } else { 1 };
    let spread: Vec<u8> = (0..8u8)
        .flat_map(|lane| (0..4).map(move |t| step * lane + t))
        .collect();
    a.db(&spread).map_err(e)?;
    a.assemble(0).map_err(e)
}

/// `acc += Σ b · xv` over each lane's pair or quad (`p` is clobbered by AVX2's two-step
/// form). The EVEX forms need `prefer_vex` off only for that instruction: every other
/// instruction keeps its shorter VEX encoding.
pub(crate) fn dot(
    a: &mut CodeAssembler,
    isa: Isa,
    operands: Operands,
    acc: AsmRegisterYmm,
    (b, xv): (AsmRegisterYmm, AsmRegisterYmm),
    p: AsmRegisterYmm,
) -> Result<(), String> {
    let e = |e: IcedError| e.to_string();
    if isa == Isa::Avx512Vnni {
        a.set_prefer_vex(false);
    }
    let done = match (operands, isa) {
        (Operands::Pairs, Isa::Avx2) => a.vpmaddwd(p, b, xv).and_then(|()| a.vpaddd(acc, acc, p)),
        (Operands::Pairs, _) => a.vpdpwssd(acc, b, xv),
        (Operands::Quads { .. }, Isa::Avx2) => {
            return Err("u8 × i8 quads need VNNI (vpdpbusd)".into())
        }
        (Operands::Quads { unsigned_broadcast }, _) => {
            let (u, s) = if unsigned_broadcast { (b, xv) } else { (xv, b) };
            a.vpdpbusd(acc, u, s)
        }
    };
    a.set_prefer_vex(true);
    done.map_err(e)
}

/// The constants a requantizing micro-kernel reads after its code: 32-byte rows of the
/// zero point and the bounds, and the dword order [`pack`] uses; and which of the
/// requantization's last steps the result type makes redundant.
struct Constants {
    zp: CodeLabel,
    lo: CodeLabel,
    hi: CodeLabel,
    order: CodeLabel,
    /// A zero point of 0 is not added.
    add_zp: bool,
    /// A bound that is the result type's own (low or high) end is not applied: [`pack`]'s
    /// saturating packs (i32 → i16 → 8 bits) clamp to exactly that range. ReLU's u8 results
    /// with zero point 0 keep only the high bound.
    clamp_lo: bool,
    clamp_hi: bool,
}

impl Constants {
    /// The constants of requantizing to `q`'s bytes, or to i16 when `sixteen`.
    fn new(a: &mut CodeAssembler, q: Requantize, sixteen: bool) -> Constants {
        let whole = match (sixteen, q.signed) {
            (true, _) => (-32768, 32767),
            (false, true) => (-128, 127),
            (false, false) => (0, 255),
        };
        Constants {
            zp: a.create_label(),
            lo: a.create_label(),
            hi: a.create_label(),
            order: a.create_label(),
            add_zp: q.zero_point != 0,
            clamp_lo: q.bounds.0 > whole.0,
            clamp_hi: q.bounds.1 < whole.1,
        }
    }

    /// `y = clamp(y + zp)`, each step only where it changes a result (see the fields).
    fn offset_and_clamp(&self, a: &mut CodeAssembler, y: AsmRegisterYmm) -> Result<(), String> {
        let e = |e: IcedError| e.to_string();
        if self.add_zp {
            a.vpaddd(y, y, ymmword_ptr(self.zp)).map_err(e)?;
        }
        if self.clamp_lo {
            a.vpmaxsd(y, y, ymmword_ptr(self.lo)).map_err(e)?;
        }
        if self.clamp_hi {
            a.vpminsd(y, y, ymmword_ptr(self.hi)).map_err(e)?;
        }
        Ok(())
    }

    /// Places the constants (after the function's `ret`).
    fn emit(&mut self, a: &mut CodeAssembler, q: Requantize) -> Result<(), String> {
        let e = |e: IcedError| e.to_string();
        for (label, value) in [
            (&mut self.zp, q.zero_point),
            (&mut self.lo, q.bounds.0),
            (&mut self.hi, q.bounds.1),
        ] {
            a.set_label(label).map_err(e)?;
            a.dd_i(&[value; 8]).map_err(e)?;
        }
        a.set_label(&mut self.order).map_err(e)?;
        a.dd(&[0, 4, 1, 5, 2, 6, 3, 7]).map_err(e)
    }
}

/// Broadcasts a `ChannelTable` record's bias and multiplier (dwords) and 2^(shift−1) (qword).
fn load_record(
    a: &mut CodeAssembler,
    record: AsmMemoryOperand,
    bias: AsmRegisterYmm,
    m: AsmRegisterYmm,
    half: AsmRegisterYmm,
) -> Result<(), String> {
    let e = |e: IcedError| e.to_string();
    a.vpbroadcastd(bias, dword_ptr(record)).map_err(e)?;
    a.vpbroadcastd(m, dword_ptr(record + 4)).map_err(e)?;
    a.vpbroadcastq(half, qword_ptr(record + 16)).map_err(e)
}

/// `y = clamp(zp + (((y + bias) · m + half) >> 32) >> (shift − 32))` in eight i32 lanes
/// (`t` is clobbered; the shift count is the record's qword at byte 8).
fn requantize(
    a: &mut CodeAssembler,
    k: &Constants,
    y: AsmRegisterYmm,
    t: AsmRegisterYmm,
    (bias, m, half): (AsmRegisterYmm, AsmRegisterYmm, AsmRegisterYmm),
    record: AsmMemoryOperand,
) -> Result<(), String> {
    let e = |e: IcedError| e.to_string();
    a.vpaddd(y, y, bias).map_err(e)?;
    a.vpmuldq(t, y, m).map_err(e)?;
    a.vpsrlq(y, y, 32).map_err(e)?;
    a.vpmuldq(y, y, m).map_err(e)?;
    a.vpaddq(t, t, half).map_err(e)?;
    a.vpaddq(y, y, half).map_err(e)?;
    a.vpsrlq(t, t, 32).map_err(e)?;
    a.vpblendd(y, t, y, 0xaa).map_err(e)?;
    a.vpsrad(y, y, xmmword_ptr(record + 8)).map_err(e)?;
    k.offset_and_clamp(a, y)
}

/// [`requantize`] with parameters per lane, from vector `v` of the [`LaneTable`] block at
/// r8 (`m` and `t` are clobbered; the shift is per lane, `vpsravd`).
fn requantize_lanes(
    a: &mut CodeAssembler,
    k: &Constants,
    y: AsmRegisterYmm,
    (m, m_odd, t): (AsmRegisterYmm, AsmRegisterYmm, AsmRegisterYmm),
    v: usize,
) -> Result<(), String> {
    let e = |e: IcedError| e.to_string();
    let v = v as i32;
    a.vpaddd(y, y, ymmword_ptr(r8 + 32 * v)).map_err(e)?;
    a.vmovdqu(m, ymmword_ptr(r8 + 64 + 32 * v)).map_err(e)?;
    a.vpsrlq(m_odd, m, 32).map_err(e)?;
    a.vpmuldq(t, y, m).map_err(e)?;
    a.vpsrlq(y, y, 32).map_err(e)?;
    a.vpmuldq(y, y, m_odd).map_err(e)?;
    a.vpaddq(t, t, ymmword_ptr(r8 + 192 + 64 * v)).map_err(e)?;
    a.vpaddq(y, y, ymmword_ptr(r8 + 224 + 64 * v)).map_err(e)?;
    a.vpsrlq(t, t, 32).map_err(e)?;
    a.vpblendd(y, t, y, 0xaa).map_err(e)?;
    a.vpsravd(y, y, ymmword_ptr(r8 + 128 + 32 * v)).map_err(e)?;
    k.offset_and_clamp(a, y)
}

/// Packs the clamped i32 lanes of `y0` and `y1` to bytes: `y0`'s eight then `y1`'s eight in
/// the low 16 bytes of `y0` (saturating packs, exact on clamped values; `t` is clobbered).
fn pack(
    a: &mut CodeAssembler,
    k: &Constants,
    signed: bool,
    y0: AsmRegisterYmm,
    y1: AsmRegisterYmm,
    t: AsmRegisterYmm,
) -> Result<(), String> {
    let e = |e: IcedError| e.to_string();
    a.vpackssdw(y0, y0, y1).map_err(e)?;
    if signed {
        a.vpacksswb(y0, y0, y0).map_err(e)?;
    } else {
        a.vpackuswb(y0, y0, y0).map_err(e)?;
    }
    a.vmovdqu(t, ymmword_ptr(k.order)).map_err(e)?;
    a.vpermd(y0, t, y0).map_err(e)
}

/// The xmm register that is the low half of ymm register `i`.
fn xmm_of(i: usize) -> AsmRegisterXmm {
    [
        xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13,
        xmm14, xmm15,
    ][i]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The instructions of `code`, in Intel syntax.
    fn disassemble(code: &[u8]) -> Vec<String> {
        use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
        let mut decoder = Decoder::new(64, code, DecoderOptions::NONE);
        let mut f = IntelFormatter::new();
        decoder
            .iter()
            .map(|i| {
                let mut s = String::new();
                f.format(&i, &mut s);
                s
            })
            .collect()
    }

    #[test]
    fn avx2_tiles_use_vpmaddwd_and_vnni_tiles_vpdpwssd() {
        let store = Requantize {
            zero_point: 3,
            bounds: (0, 255),
            signed: false,
            plane: 64,
            per_lane: false,
        };
        let tile = PairTile {
            rows: 2,
            offsets: vec![0, 128],
            x_stride: 4096,
            iterations: 3,
            store: Store::Requantize(store),
            row_stride: None,
            operands: Operands::Pairs,
        };
        let avx2 = disassemble(&pair_tile(&tile, Isa::Avx2).unwrap());
        assert_eq!(
            avx2.iter().filter(|i| i.starts_with("vpmaddwd")).count(),
            2 * 2 * 2,
            "{avx2:#?}"
        );
        assert!(
            avx2.iter().any(|i| i == "vmovdqu ymm12,[rdi+80h]"),
            "{avx2:#?}"
        );
        assert!(avx2.iter().any(|i| i == "ret"));
        assert_eq!(
            avx2.iter().filter(|i| i.starts_with("vpmuldq")).count(),
            2 * 2 * 2,
            "{avx2:#?}"
        );
        let vnni = disassemble(&pair_tile(&tile, Isa::AvxVnni).unwrap());
        assert_eq!(
            vnni.iter().filter(|i| i.starts_with("vpdpwssd")).count(),
            8,
            "{vnni:#?}"
        );
        assert!(vnni.iter().all(|i| !i.starts_with("vpmaddwd")));
        // AVX-VNNI's dot products are VEX, AVX-512 VNNI's EVEX on ymm (other instructions
        // stay VEX).
        assert_eq!(
            encodings(&pair_tile(&tile, Isa::AvxVnni).unwrap(), "vpdpwssd"),
            [false; 8]
        );
        assert_eq!(
            encodings(&pair_tile(&tile, Isa::Avx512Vnni).unwrap(), "vpdpwssd"),
            [true; 8]
        );
        assert!(
            encodings(&pair_tile(&tile, Isa::Avx512Vnni).unwrap(), "vpbroadcastd")
                .iter()
                .all(|&evex| !evex)
        );
    }

    /// Whether each instruction of `code` named `mnemonic` is EVEX-encoded (its first byte
    /// 0x62; these micro-kernels use no legacy prefixes).
    fn encodings(code: &[u8], mnemonic: &str) -> Vec<bool> {
        use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
        let mut f = IntelFormatter::new();
        Decoder::new(64, code, DecoderOptions::NONE)
            .iter()
            .filter(|i| {
                let mut s = String::new();
                f.format_mnemonic(i, &mut s);
                s == mnemonic
            })
            .map(|i| code[i.ip() as usize] == 0x62)
            .collect()
    }

    #[test]
    fn quad_tiles_use_vpdpbusd_with_the_unsigned_operand_first() {
        let store = Requantize {
            zero_point: 0,
            bounds: (-128, 127),
            signed: true,
            plane: 64,
            per_lane: true,
        };
        let tile = |unsigned_broadcast| PairTile {
            rows: 1,
            offsets: vec![0],
            x_stride: 64,
            iterations: 1,
            store: Store::Requantize(store),
            row_stride: Some(16),
            operands: Operands::Quads { unsigned_broadcast },
        };
        // Broadcast (ymm14) unsigned: the rows of a matrix product.
        let code = disassemble(&pair_tile(&tile(true), Isa::Avx512Vnni).unwrap());
        let dots: Vec<_> = code.iter().filter(|i| i.starts_with("vpdpbusd")).collect();
        assert_eq!(
            dots,
            ["vpdpbusd ymm0,ymm14,ymm12", "vpdpbusd ymm1,ymm14,ymm13"]
        );
        assert!(code
            .iter()
            .all(|i| !i.starts_with("vpmaddwd") && !i.starts_with("vpdpwssd")));
        assert_eq!(
            encodings(
                &pair_tile(&tile(true), Isa::Avx512Vnni).unwrap(),
                "vpdpbusd"
            ),
            [true; 2]
        );
        assert_eq!(
            encodings(&pair_tile(&tile(true), Isa::AvxVnni).unwrap(), "vpdpbusd"),
            [false; 2]
        );
        // Vector operand unsigned: a convolution's activations.
        let code = disassemble(&pair_tile(&tile(false), Isa::AvxVnni).unwrap());
        assert!(
            code.iter().any(|i| i == "vpdpbusd ymm0,ymm12,ymm14"),
            "{code:#?}"
        );
        // AVX2 has no exact u8 × i8 quad product.
        assert!(pair_tile(&tile(true), Isa::Avx2).is_err());
    }

    #[test]
    fn depthwise_planes_widen_the_u8_plane_and_interleave_stride_one_pairs() {
        let plane = |groups: Vec<Vec<(i32, i32)>>, interleave| DepthwisePlane {
            pairs: vec![0, 2, 40],
            quads: false,
            stride_two: false,
            groups,
            interleave,
            x_stride: 64,
            out_stride: 64,
            iterations: 2,
            store: Requantize {
                zero_point: 0,
                bounds: (0, 255),
                signed: false,
                plane: 0,
                per_lane: false,
            },
        };
        let pair = vec![(0, 0), (1, 0)];
        let code =
            disassemble(&depthwise_plane(&plane(vec![pair.clone()], true), Isa::Avx2).unwrap());
        // Three tap pairs × two vectors, each widened from the plane, then one 16-byte store.
        let count = |prefix: &str| code.iter().filter(|i| i.starts_with(prefix)).count();
        assert_eq!(count("vpmovzxbw"), 6, "{code:#?}");
        assert_eq!(count("vpmaddwd"), 6, "{code:#?}");
        assert!(
            code.iter().any(|i| i == "vpmovzxbw ymm14,[rdi+29h]"),
            "{code:#?}"
        );
        assert_eq!(count("vpshufb"), 1, "{code:#?}");
        assert!(
            code.iter().any(|i| i.starts_with("vmovdqu [rdx],xmm0")),
            "{code:#?}"
        );
        // Stride 2: each vector stores its own eight results.
        let code =
            disassemble(&depthwise_plane(&plane(vec![pair.clone()], false), Isa::Avx2).unwrap());
        assert_eq!(
            code.iter().filter(|i| i.starts_with("vmovq")).count(),
            2,
            "{code:#?}"
        );
        // An interleaved group needs whole pairs of vectors.
        assert!(depthwise_plane(&plane(vec![vec![(0, 0)]], true), Isa::Avx2).is_err());
    }

    #[test]
    fn depthwise_quads_spread_sixteen_bytes_into_vpdpbusd_operands() {
        let plane = |groups: Vec<Vec<(i32, i32)>>, quads, interleave| DepthwisePlane {
            pairs: vec![0, 40, 80],
            quads,
            stride_two: false,
            groups,
            interleave,
            x_stride: 64,
            out_stride: 64,
            iterations: 1,
            store: Requantize {
                zero_point: 0,
                bounds: (0, 200),
                signed: false,
                plane: 0,
                per_lane: false,
            },
        };
        // Three vectors: the first two store their sixteen results together, the third
        // (not contiguous) its own eight.
        let vectors = vec![(0, 0), (8, 8), (30, 30)];
        let code = disassemble(
            &depthwise_plane(&plane(vec![vectors.clone()], true, false), Isa::Avx512Vnni).unwrap(),
        );
        let count = |prefix: &str| code.iter().filter(|i| i.starts_with(prefix)).count();
        assert_eq!(count("vbroadcasti128"), 9, "{code:#?}");
        assert_eq!(count("vpshufb"), 9, "{code:#?}");
        assert_eq!(count("vpdpbusd"), 9, "{code:#?}");
        assert_eq!(count("vpmovzxbw") + count("vpdpwssd"), 0, "{code:#?}");
        assert!(
            code.iter().any(|i| i == "vpdpbusd ymm2,ymm14,ymm8"),
            "{code:#?}"
        );
        assert!(
            code.iter().any(|i| i == "vbroadcasti128 ymm14,[rdi+58h]"),
            "{code:#?}"
        );
        assert!(code.iter().any(|i| i == "vmovdqu [rdx],xmm0"), "{code:#?}");
        assert!(
            code.iter().any(|i| i == "vmovq [rdx+1Eh],xmm2"),
            "{code:#?}"
        );
        // Bounds (0, 200) of u8: only the high one is applied.
        assert_eq!(count("vpminsd"), 3, "{code:#?}");
        assert_eq!(count("vpmaxsd"), 0, "{code:#?}");
        // Quads need VNNI and eight consecutive outputs a vector.
        assert!(depthwise_plane(&plane(vec![vectors.clone()], true, false), Isa::Avx2).is_err());
        let pair = vec![(0, 0), (1, 0)];
        assert!(depthwise_plane(&plane(vec![pair], true, true), Isa::AvxVnni).is_err());
        // Column stride 2: one 32-byte load and one vpermb (EVEX) per quad and vector.
        let two = DepthwisePlane {
            stride_two: true,
            ..plane(vec![vectors.clone()], true, false)
        };
        let code = depthwise_plane(&two, Isa::Avx512Vnni).unwrap();
        assert_eq!(encodings(&code, "vpermb"), [true; 9]);
        let code = disassemble(&code);
        assert!(
            code.iter().any(|i| i == "vpermb ymm14,ymm15,ymm14"),
            "{code:#?}"
        );
        assert!(
            code.iter().any(|i| i == "vmovdqu ymm14,[rdi+50h]"),
            "{code:#?}"
        );
        assert!(
            code.iter().all(|i| !i.starts_with("vbroadcasti128")),
            "{code:#?}"
        );
        let pairs_two = DepthwisePlane {
            quads: false,
            ..two
        };
        assert!(depthwise_plane(&pairs_two, Isa::Avx512Vnni).is_err());
    }

    #[test]
    fn i16_stores_pack_each_row_to_sixteen_words() {
        let q = Requantize {
            zero_point: -5,
            bounds: (-32768, 32767),
            signed: true,
            plane: 64,
            per_lane: true,
        };
        let tile = PairTile {
            rows: 3,
            offsets: vec![0],
            x_stride: 128,
            iterations: 2,
            store: Store::RequantizeI16(q),
            row_stride: Some(16),
            operands: Operands::Pairs,
        };
        let code = disassemble(&pair_tile(&tile, Isa::Avx2).unwrap());
        let count = |p: &str| code.iter().filter(|i| i.starts_with(p)).count();
        // Per row: one signed pack to words, one qword permutation, one 32-byte store;
        // no byte packs.
        assert_eq!(count("vpackssdw"), 3, "{code:#?}");
        assert_eq!(count("vpermq"), 3, "{code:#?}");
        assert_eq!(count("vpacksswb") + count("vpackuswb"), 0, "{code:#?}");
        for store in [
            "vmovdqu [rcx],ymm0",
            "vmovdqu [rcx+40h],ymm2",
            "vmovdqu [rcx+80h],ymm4",
        ] {
            assert!(code.iter().any(|i| i == store), "{store}: {code:#?}");
        }
    }

    #[test]
    fn eight_row_tiles_take_the_high_registers_with_avx512_only() {
        let store = Requantize {
            zero_point: 7,
            bounds: (0, 255),
            signed: false,
            plane: 64,
            per_lane: false,
        };
        let tile = |rows| PairTile {
            rows,
            offsets: vec![0, 256],
            x_stride: 512,
            iterations: 2,
            store: Store::Requantize(store),
            row_stride: None,
            operands: Operands::Quads {
                unsigned_broadcast: false,
            },
        };
        let code = disassemble(&pair_tile(&tile(WIDE_ROWS), Isa::Avx512Vnni).unwrap());
        let count = |prefix: &str| code.iter().filter(|i| i.starts_with(prefix)).count();
        // Two steps × eight rows × two vectors, the activations in ymm16/17 and the
        // broadcast weights in ymm18.
        assert_eq!(count("vpdpbusd"), 2 * WIDE_ROWS * 2, "{code:#?}");
        assert!(
            code.iter().any(|i| i == "vpdpbusd ymm15,ymm17,ymm18"),
            "{code:#?}"
        );
        assert!(
            code.iter().any(|i| i == "vmovdqu32 ymm16,[rdi+100h]"),
            "{code:#?}"
        );
        assert!(
            code.iter().any(|i| i == "vpbroadcastd ymm18,[rdx+1Ch]"),
            "{code:#?}"
        );
        // Rows 6 and 7 wait in ymm20–23 while rows 0–5 are requantized, then come back.
        for mv in ["vmovdqa32 ymm20,ymm12", "vmovdqa32 ymm3,ymm23"] {
            assert!(code.iter().any(|i| i == mv), "{mv}: {code:#?}");
        }
        assert_eq!(count("vpmuldq"), 2 * WIDE_ROWS * 2, "{code:#?}");
        // Row 7's results leave from ymm2 (row 1's register) to plane 7.
        assert!(
            code.iter().any(|i| i == "vmovq [rcx+1C0h],xmm2"),
            "{code:#?}"
        );
        // Six rows keep VEX registers; AVX2 and AVX-VNNI have no eight-row tile.
        let six = disassemble(&pair_tile(&tile(MAX_ROWS), Isa::Avx512Vnni).unwrap());
        assert!(six.iter().all(|i| !i.contains("ymm16")), "{six:#?}");
        assert!(pair_tile(&tile(WIDE_ROWS), Isa::AvxVnni).is_err());
        assert!(pair_tile(&tile(WIDE_ROWS + 1), Isa::Avx512Vnni).is_err());
    }

    #[test]
    fn tiles_out_of_range_are_refused() {
        let store = Requantize {
            zero_point: 0,
            bounds: (-128, 127),
            signed: true,
            plane: 16,
            per_lane: false,
        };
        let tile = PairTile {
            rows: MAX_ROWS + 1,
            offsets: vec![0],
            x_stride: 0,
            iterations: 1,
            store: Store::Requantize(store),
            row_stride: None,
            operands: Operands::Pairs,
        };
        assert!(pair_tile(&tile, Isa::Avx2).is_err());
        assert!(pair_tile(
            &PairTile {
                rows: 1,
                offsets: vec![],
                x_stride: 0,
                iterations: 1,
                store: Store::Requantize(store),
                row_stride: None,
                operands: Operands::Pairs,
            },
            Isa::Avx2
        )
        .is_err());
    }
}
