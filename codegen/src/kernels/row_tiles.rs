//! Rows × constant weights on the wide-vector micro-kernel, below the forms that use it
//! (`wide_matmul`: a QMatMul's rows; `wide_pixels`: a convolution's output pixels as
//! rows): tiles of up to six rows (eight with AVX-512, [`ukernel::max_rows`]) × sixteen
//! result columns, per-column requantization in ymm registers ([`LaneTable`]).
//!
//! The weights `[M][K]` (already `w − zw`, the input zero point folded into the biases, see
//! [`PackedRows`]) are packed at compile time per block of 16 columns: as
//! `[block][pair of k][16][2]` i16, or with VNNI (u8 rows, weights that fit i8) as
//! `[block][quad of k][16][4]` i8 for `vpdpbusd` with four u8 of a row broadcast. Rows are
//! read `row_len` bytes apart (whole loop iterations; the padding past K meets zero
//! weights, so whatever it holds adds 0). The column blocks are a task on the thread pool;
//! each block runs a given number of consecutive tiles of rows, so that its weights stay
//! in cache across them.

use super::packing::PackedRows;
use super::ukernel::{self, LaneTable, Operands, PairTile, Requantize, Store, LANES, VECTORS};
use super::{data_address, Kernel};
use crate::emit;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_module::{DataId, FuncId};
use qlift_ir::fixed_point::Requant;
use qlift_ir::DType;

/// Micro-kernel steps per loop iteration.
const UNROLL: usize = 4;

/// Bytes of one step's operand: a pair of i16 or a quad of bytes.
const STEP: usize = 4;

/// Columns per block (the tile's two vectors).
pub(super) const BLOCK: usize = VECTORS * LANES;

/// What a product of rows by constant weights is: `M` rows of `kk` packed weights, rows of
/// u8 (or i16 with `sixteen_in`), results requantized by `rq` into `out` (u8, i8 or i16),
/// or raw i32 sums when `rq` is `None`.
pub(super) struct RowProduct<'a> {
    pub packed: &'a PackedRows,
    pub kk: usize,
    pub sixteen_in: bool,
    pub rq: Option<&'a Requant>,
    pub out: DType,
}

/// The compiled tiles of one product: weights, requantization table, and a task per tile
/// height asked for.
pub(super) struct RowTiles {
    /// Whether the steps are u8×i8 quads (`vpdpbusd`), else i16 pairs.
    pub quads: bool,
    /// Bytes between two rows of the left side (whole loop iterations, at least K elements).
    pub row_len: usize,
    /// Bytes between two result rows: `M` elements when `M` is whole blocks (results can
    /// go straight to a row-major `[rows, M]`), else whole blocks (a staging area).
    pub row_bytes: usize,
    /// Whether `row_bytes` is exactly `M` elements.
    pub direct: bool,
    /// Column blocks of 16.
    pub blocks: usize,
    /// The task of tiles of `h` rows at `tasks[h - 1]`, for the heights asked for.
    tasks: Vec<Option<FuncId>>,
    /// Multiply-accumulates of one row.
    row_macs: u64,
    /// Whether the tasks split the tiles of rows (each running every column block) rather
    /// than the column blocks (each running every tile).
    rows_outer: bool,
}

impl RowTiles {
    /// The tiles of the product `p`, with tasks for tiles of each of `heights` rows (1..=[`ukernel::max_rows`]). The tasks
    /// split the column blocks, each running the tiles of a call, or with `rows_outer` the
    /// tiles, each running every column block: a block's weights stay in cache across the
    /// tiles, or a tile's rows across the blocks (better when the rows of a call are larger
    /// than the weights). `None` when a column's requantization shift is below 32 (the lane
    /// table cannot hold it).
    pub(super) fn new(
        k: &mut Kernel,
        isa: ukernel::Isa,
        p: &RowProduct,
        heights: &[usize],
        rows_outer: bool,
    ) -> Result<Option<RowTiles>, String> {
        let (packed, kk, sixteen_in, rq, out) = (p.packed, p.kk, p.sixteen_in, p.rq, p.out);
        let m = packed.rows.len();
        let lanes = match rq {
            None => Vec::new(),
            Some(rq) => {
                match LaneTable::bytes(&packed.folded, |j| super::requant::channel(rq, j)) {
                    Some(lanes) => lanes,
                    None => return Ok(None),
                }
            }
        };
        let elem = match out {
            DType::I32 => 4,
            DType::I16 => 2,
            _ => 1,
        };
        let quads = isa.has_quads() && !sixteen_in && packed.fits_i8();
        let per_step = if quads { 4 } else { 2 };
        let steps = kk.div_ceil(per_step).next_multiple_of(UNROLL);
        let blocks = m.div_ceil(BLOCK);
        // Weights: block, step, column of the block, the step's two (i16) or four (i8) k.
        let mut weights = Vec::with_capacity(blocks * steps * BLOCK * STEP);
        let weight = |c: usize, t: usize| {
            if c < m && t < kk {
                packed.rows[c][t]
            } else {
                0
            }
        };
        for blk in 0..blocks {
            for p in 0..steps {
                for c in blk * BLOCK..(blk + 1) * BLOCK {
                    for t in per_step * p..per_step * (p + 1) {
                        let w = weight(c, t);
                        match quads {
                            true => weights.push(w as i8 as u8),
                            false => weights.extend_from_slice(&w.to_le_bytes()),
                        }
                    }
                }
            }
        }
        let direct = m % BLOCK == 0;
        let row_bytes = elem * if direct { m } else { blocks * BLOCK };
        let i32_of = |v: usize| i32::try_from(v).map_err(|e| e.to_string());
        let store = match rq {
            None => Store::Sums {
                plane: i32_of(row_bytes)?,
            },
            Some(rq) => {
                let q = Requantize {
                    zero_point: rq.zero_point,
                    bounds: (rq.bounds.0 as i32, rq.bounds.1 as i32),
                    signed: out == DType::I8,
                    plane: i32_of(row_bytes)?,
                    per_lane: true,
                };
                match out {
                    DType::I16 => Store::RequantizeI16(q),
                    _ => Store::Requantize(q),
                }
            }
        };
        let tile = |rows: usize| -> Result<PairTile, String> {
            Ok(PairTile {
                rows,
                offsets: (0..UNROLL)
                    .map(|s| i32_of(s * BLOCK * STEP))
                    .collect::<Result<_, _>>()?,
                x_stride: i32_of(UNROLL * BLOCK * STEP)?,
                iterations: u32::try_from(steps / UNROLL).map_err(|e| e.to_string())?,
                store,
                row_stride: Some(i32_of(steps * STEP)?),
                operands: match quads {
                    true => Operands::Quads {
                        unsigned_broadcast: true,
                    },
                    false => Operands::Pairs,
                },
            })
        };
        let wptr = k.data_object(weights, 64)?;
        let lane_table = k.data_object(lanes, 64)?;
        let shape = TaskShape {
            weights: wptr,
            lanes: lane_table,
            block_bytes: (steps * BLOCK * STEP) as i64,
            elem,
            row_len: steps * STEP,
            row_bytes,
            blocks,
            rows_outer,
        };
        let mut tasks = vec![None; ukernel::max_rows(isa)];
        for &rows in heights {
            let kernel = k.machine_code(&ukernel::pair_tile(&tile(rows)?, isa)?, 5)?;
            tasks[rows - 1] = Some(column_task(k, kernel, rows, &shape)?);
        }
        Ok(Some(RowTiles {
            quads,
            row_len: steps * STEP,
            row_bytes,
            direct,
            blocks,
            tasks,
            row_macs: (kk * m) as u64,
            rows_outer,
        }))
    }

    /// Runs `tiles` consecutive tiles of `rows` rows each, the first row at `rows_at` (rows
    /// `row_len` apart), their results from `out` (`row_bytes` apart), the column blocks
    /// split over the thread pool; `context` is 24 bytes of workspace for the task.
    pub(super) fn run(
        &self,
        k: &mut Kernel,
        context: Value,
        (rows_at, out): (Value, Value),
        rows: usize,
        tiles: usize,
    ) -> Result<(), String> {
        let task = self
            .tasks
            .get(rows.wrapping_sub(1))
            .copied()
            .flatten()
            .ok_or_else(|| format!("no micro-kernel of {rows} rows was compiled"))?;
        let fb = &mut *k.fb;
        let count = emit::iconst(fb, tiles as i64);
        fb.ins().store(emit::mem(), rows_at, context, 0);
        fb.ins().store(emit::mem(), out, context, 8);
        fb.ins().store(emit::mem(), count, context, 16);
        let work = (tiles * rows) as u64 * self.row_macs;
        let count = if self.rows_outer { tiles } else { self.blocks };
        k.parallel_for(task, context, count as i64, usize::MAX, work)
    }
}

/// Where a column task finds its weights and how it walks rows and results.
struct TaskShape {
    weights: DataId,
    lanes: DataId,
    block_bytes: i64,
    elem: usize,
    row_len: usize,
    row_bytes: usize,
    blocks: usize,
    rows_outer: bool,
}

/// The task of one tile height: column blocks `begin..end`, each over the `ctx[16]` tiles of
/// `rows` rows from `ctx[0]` into the results from `ctx[8]`; or with `rows_outer`, tiles
/// `begin..end` each over every column block.
fn column_task(
    k: &mut Kernel,
    kernel: FuncId,
    rows: usize,
    s: &TaskShape,
) -> Result<FuncId, String> {
    k.task(|fb, module, [ctx, begin, end, _]| {
        let first = fb.ins().load(types::I64, emit::mem(), ctx, 0);
        let out = fb.ins().load(types::I64, emit::mem(), ctx, 8);
        let tiles = fb.ins().load(types::I64, emit::mem(), ctx, 16);
        let (w, lanes) = (
            data_address(fb, module, s.weights),
            data_address(fb, module, s.lanes),
        );
        let kernel = module.declare_func_in_func(kernel, fb.func);
        let zero = emit::iconst(fb, 0);
        let blocks = emit::iconst(fb, s.blocks as i64);
        let (outer, inner) = match s.rows_outer {
            true => ((begin, end), (zero, blocks)),
            false => ((begin, end), (zero, tiles)),
        };
        emit::for_range(fb, outer.0, outer.1, 1, |fb, i| {
            emit::for_range(fb, inner.0, inner.1, 1, |fb, j| {
                let (blk, t) = if s.rows_outer { (j, i) } else { (i, j) };
                let x0 = emit::addr(fb, w, blk, s.block_bytes);
                let x1 = fb.ins().iadd_imm_s(x0, (LANES * STEP) as i64);
                let o = emit::addr(fb, out, blk, (BLOCK * s.elem) as i64);
                let params = emit::addr(fb, lanes, blk, LaneTable::BLOCK as i64);
                let r = emit::addr(fb, first, t, (rows * s.row_len) as i64);
                let o = emit::addr(fb, o, t, (rows * s.row_bytes) as i64);
                fb.ins().call(kernel, &[x0, x1, r, o, params]);
            });
        });
        Ok(())
    })
}
