//! Small builders over Cranelift's `FunctionBuilder` that every kernel uses: counted loops,
//! constants, memory access at byte offsets. Kernels are loop nests over static extents
//! (only the batch is a run-time value), so these few shapes cover them.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, BlockArg, ConstantData, Endianness, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::FunctionBuilder;

/// Memory flags of every access: no trap (bounds are checked before generated code is
/// entered; buffers are sized at compile time). Alignment is not claimed, so 16-byte vector
/// accesses on 4-byte-aligned tensors stay valid.
pub fn mem() -> MemFlagsData {
    let mut flags = MemFlagsData::new();
    flags.set_notrap();
    flags
}

/// Memory flags of loads from constant data (packed weights, tables): also read-only and
/// free to move, which makes them pure to Cranelift's optimizer, so each is placed next to
/// its use (or folded into it) instead of where it was emitted.
pub fn constant_mem() -> MemFlagsData {
    let mut flags = mem();
    flags.set_readonly();
    flags.set_can_move();
    flags
}

/// An i64 constant.
pub fn iconst(fb: &mut FunctionBuilder, v: i64) -> Value {
    fb.ins().iconst(types::I64, v)
}

/// `for i in (start..end).step_by(step)` with i64 bounds; `body` emits the loop body.
///
/// The header branches to the exit first and to the body second. Cranelift's elaboration
/// visits a block's dominator-tree children in reverse postorder and keeps its loop stack
/// only along that walk: with the body as the first successor, the exit (and everything
/// after the loop) comes first in that order, pops the loop, and the body is elaborated as
/// if it were outside any loop, so nothing is hoisted out of it (loop-invariant code
/// motion does nothing). With the exit first, the body is visited first and invariants
/// (address bases, a row's mean and inverse deviation) move to the preheader.
pub fn for_range(
    fb: &mut FunctionBuilder,
    start: Value,
    end: Value,
    step: i64,
    body: impl FnOnce(&mut FunctionBuilder, Value),
) {
    let header = fb.create_block();
    let inner = fb.create_block();
    let exit = fb.create_block();
    fb.append_block_param(header, types::I64);
    fb.ins().jump(header, &[BlockArg::Value(start)]);
    fb.switch_to_block(header);
    let i = fb.block_params(header)[0];
    let done = fb.ins().icmp(IntCC::SignedGreaterThanOrEqual, i, end);
    fb.ins().brif(done, exit, &[], inner, &[]);
    fb.switch_to_block(inner);
    body(fb, i);
    let next = fb.ins().iadd_imm_s(i, step);
    fb.ins().jump(header, &[BlockArg::Value(next)]);
    fb.switch_to_block(exit);
}

/// `for i in 0..n` with a constant trip count.
pub fn for_count(fb: &mut FunctionBuilder, n: i64, body: impl FnOnce(&mut FunctionBuilder, Value)) {
    let (start, end) = (iconst(fb, 0), iconst(fb, n));
    for_range(fb, start, end, 1, body);
}

/// `for i in 0..n` with a run-time trip count (the batch).
pub fn for_dynamic(
    fb: &mut FunctionBuilder,
    n: Value,
    body: impl FnOnce(&mut FunctionBuilder, Value),
) {
    let start = iconst(fb, 0);
    for_range(fb, start, n, 1, body);
}

/// `for i in 0..n` over a static `n`, `lanes` elements per step while a whole step fits,
/// then one at a time: `body(fb, i, true)` covers elements `i..i + lanes`, `body(fb, i,
/// false)` element `i` of the remainder. A loop that would run zero times is left out.
/// Every vector access stays inside the `n` elements (no overlapping or padded last step).
pub fn for_lanes(
    fb: &mut FunctionBuilder,
    n: i64,
    lanes: i64,
    body: &mut dyn FnMut(&mut FunctionBuilder, Value, bool),
) {
    let split = n - n % lanes;
    if split > 0 {
        let (start, end) = (iconst(fb, 0), iconst(fb, split));
        for_range(fb, start, end, lanes, |fb, i| body(fb, i, true));
    }
    if n > split {
        let (start, end) = (iconst(fb, split), iconst(fb, n));
        for_range(fb, start, end, 1, |fb, i| body(fb, i, false));
    }
}

/// `base + index · scale` (byte address of element `index` of `scale`-byte elements).
pub fn addr(fb: &mut FunctionBuilder, base: Value, index: Value, scale: i64) -> Value {
    let offset = if scale == 1 {
        index
    } else {
        fb.ins().imul_imm_s(index, scale)
    };
    fb.ins().iadd(base, offset)
}

/// Loads a `ty` element at `base + index · size(ty)`.
pub fn load_at(fb: &mut FunctionBuilder, ty: Type, base: Value, index: Value) -> Value {
    let a = addr(fb, base, index, ty.bytes() as i64);
    fb.ins().load(ty, mem(), a, 0)
}

/// Stores `v` at `base + index · size(v)`.
pub fn store_at(fb: &mut FunctionBuilder, v: Value, base: Value, index: Value) {
    let ty = fb.func.dfg.value_type(v);
    let a = addr(fb, base, index, ty.bytes() as i64);
    fb.ins().store(mem(), v, a, 0);
}

/// An integer constant of type `ty` (i8 … i64): `v` truncated to the type's width, the form
/// Cranelift's verifier accepts for narrow types (it rejects sign-extended negative i8s).
pub fn iconst_of(fb: &mut FunctionBuilder, ty: Type, v: i64) -> Value {
    let bits = ty.bits();
    let v = if bits >= 64 {
        v
    } else {
        v & ((1i64 << bits) - 1)
    };
    fb.ins().iconst(ty, v)
}

/// Simplifies a strided loop nest (see [`for_strided`]) without changing the offsets it
/// visits: drops extent-1 axes and merges axis `a` into `a + 1` when every stream steps
/// through them as through one axis (`stride[a] == stride[a+1] · extent[a+1]`). Identical
/// row-major shapes become one flat loop, a per-channel operand two or three loops. An empty
/// extent leaves a single zero-trip loop. `strides[s][a]` is stream `s`'s element stride on
/// axis `a`.
pub fn coalesce(extents: &[usize], strides: &[Vec<i64>]) -> (Vec<usize>, Vec<Vec<i64>>) {
    if extents.contains(&0) {
        return (vec![0], vec![vec![0]; strides.len()]);
    }
    let mut out_extents: Vec<usize> = Vec::new();
    let mut out_strides: Vec<Vec<i64>> = vec![Vec::new(); strides.len()];
    for (a, &e) in extents.iter().enumerate() {
        if e == 1 {
            continue;
        }
        // Merge with the previous kept axis when it steps by exactly this axis' span.
        let merge = !out_extents.is_empty()
            && strides
                .iter()
                .zip(&out_strides)
                .all(|(s, o)| *o.last().unwrap_or(&0) == s[a] * e as i64);
        if merge {
            let last = out_extents.len() - 1;
            out_extents[last] *= e;
            for (o, s) in out_strides.iter_mut().zip(strides) {
                o[last] = s[a];
            }
        } else {
            out_extents.push(e);
            for (o, s) in out_strides.iter_mut().zip(strides) {
                o.push(s[a]);
            }
        }
    }
    (out_extents, out_strides)
}

/// Nested counted loops over static `extents` (outermost first) that carry one element
/// offset per stream (operands and results of a broadcast, the two sides of a transpose):
/// `body` runs once per index tuple with `offsets[s] = start[s] + Σₐ index[a] · strides[s][a]`.
/// Offsets are updated per level (no division or modulo in the loops); shared by every
/// kernel that walks tensors through static strides. Call [`coalesce`] first to shorten
/// the nest.
pub fn for_strided(
    fb: &mut FunctionBuilder,
    extents: &[usize],
    strides: &[Vec<i64>],
    start: &[Value],
    body: &mut dyn FnMut(&mut FunctionBuilder, &[Value]),
) {
    fn level(
        fb: &mut FunctionBuilder,
        axis: usize,
        extents: &[usize],
        strides: &[Vec<i64>],
        offsets: &[Value],
        body: &mut dyn FnMut(&mut FunctionBuilder, &[Value]),
    ) {
        if axis == extents.len() {
            body(fb, offsets);
            return;
        }
        for_count(fb, extents[axis] as i64, |fb, i| {
            let next = advanced(fb, offsets, strides, axis, i);
            level(fb, axis + 1, extents, strides, &next, body);
        });
    }
    level(fb, 0, extents, strides, start, body);
}

/// Each stream's offset moved `i` steps along `axis` (`offsets[s] + i · strides[s][axis]`).
pub fn advanced(
    fb: &mut FunctionBuilder,
    offsets: &[Value],
    strides: &[Vec<i64>],
    axis: usize,
    i: Value,
) -> Vec<Value> {
    offsets
        .iter()
        .zip(strides)
        .map(|(&o, s)| match s[axis] {
            0 => o,
            1 => fb.ins().iadd(o, i),
            st => {
                let d = fb.ins().imul_imm_s(i, st);
                fb.ins().iadd(o, d)
            }
        })
        .collect()
}

/// [`for_strided`] over `extents[from..]` with the last axis taken `lanes` elements at a
/// time ([`for_lanes`]) when `lanes > 1`: `body(fb, offsets, whole)`, `whole` when the
/// offsets start a vector of `lanes` elements (a stream whose last stride is 0 stays put,
/// one with stride 1 moves with the lanes). With `lanes <= 1` every axis is a scalar loop
/// and `whole` is false. Shared by the walks of broadcasts and reductions.
pub fn for_strided_lanes(
    fb: &mut FunctionBuilder,
    extents: &[usize],
    strides: &[Vec<i64>],
    start: &[Value],
    from: usize,
    lanes: usize,
    body: &mut dyn FnMut(&mut FunctionBuilder, &[Value], bool),
) {
    let n = extents.len();
    let vector = lanes > 1 && n > 0;
    let last = if vector { n - 1 } else { n };
    let from = from.min(last);
    let outer: Vec<Vec<i64>> = strides.iter().map(|s| s[from..last].to_vec()).collect();
    for_strided(fb, &extents[from..last], &outer, start, &mut |fb, off| {
        if !vector {
            body(fb, off, false);
            return;
        }
        for_lanes(
            fb,
            extents[n - 1] as i64,
            lanes as i64,
            &mut |fb, i, whole| {
                let moved = advanced(fb, off, strides, n - 1, i);
                body(fb, &moved, whole);
            },
        );
    });
}

/// The low or high half of an integer vector's lanes widened to twice their width,
/// sign-extended when `signed` (i8x16 to i16x8, i16x8 to i32x4).
pub fn widen_half(fb: &mut FunctionBuilder, v: Value, signed: bool, high: bool) -> Value {
    match (signed, high) {
        (true, false) => fb.ins().swiden_low(v),
        (true, true) => fb.ins().swiden_high(v),
        (false, false) => fb.ins().uwiden_low(v),
        (false, true) => fb.ins().uwiden_high(v),
    }
}

/// Row-major element strides of `dims`.
pub fn row_major(dims: &[usize]) -> Vec<i64> {
    let mut strides = vec![1i64; dims.len()];
    for a in (0..dims.len().saturating_sub(1)).rev() {
        strides[a] = strides[a + 1] * dims[a + 1] as i64;
    }
    strides
}

/// The f32x4 of lanes `lanes` of `a` (0–3) and `b` (4–7).
pub fn shuffle_f32(fb: &mut FunctionBuilder, a: Value, b: Value, lanes: [usize; 4]) -> Value {
    let bytes: Vec<u8> = lanes
        .iter()
        .flat_map(|&l| (0..4).map(move |i| (4 * l + i) as u8))
        .collect();
    let mask = fb.func.dfg.immediates.push(ConstantData::from(bytes));
    // `shuffle` takes and gives i8x16; the bitcasts are no instructions.
    let endian = MemFlagsData::new().with_endianness(Endianness::Little);
    let [a, b] = [a, b].map(|v| fb.ins().bitcast(types::I8X16, endian, v));
    let v = fb.ins().shuffle(a, b, mask);
    fb.ins().bitcast(types::F32X4, endian, v)
}
