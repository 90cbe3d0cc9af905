//! Comparison, logic and selection kernels: Equal, Greater, GreaterOrEqual, Less,
//! LessOrEqual (bool results), Not, And, Or, Xor (on bools), Where; all broadcasting.
//!
//! Each follows `qlift_ir`'s interpreter (`ops/logic.rs`): an ordered comparison with NaN
//! is false and so is `NaN == NaN` (Cranelift's ordered float conditions), unsigned dtypes
//! compare unsigned, and bools are bytes holding 0 or 1, so logic is bitwise on them.

use super::elementwise::{is_signed, Broadcast, Lanes};
use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::{DType, OpKind};

/// One comparison or logic op on two elements of `dtype` (Not reads only the first): an i8
/// holding 0 or 1, or on f32x4/i32x4 lanes a mask of all-ones/zero lanes.
fn compare_one(fb: &mut FunctionBuilder, kind: OpKind, dtype: DType, a: Value, b: Value) -> Value {
    if dtype == DType::F32 {
        let cc = match kind {
            OpKind::Equal => FloatCC::Equal,
            OpKind::Greater => FloatCC::GreaterThan,
            OpKind::GreaterOrEqual => FloatCC::GreaterThanOrEqual,
            OpKind::Less => FloatCC::LessThan,
            _ => FloatCC::LessThanOrEqual,
        };
        return fb.ins().fcmp(cc, a, b);
    }
    let signed = is_signed(dtype);
    let cc = |s: IntCC, u: IntCC| if signed { s } else { u };
    match kind {
        OpKind::Not => fb.ins().icmp_imm_s(IntCC::Equal, a, 0),
        OpKind::And => fb.ins().band(a, b),
        OpKind::Or => fb.ins().bor(a, b),
        OpKind::Xor => fb.ins().bxor(a, b),
        OpKind::Equal => fb.ins().icmp(IntCC::Equal, a, b),
        OpKind::Greater => fb.ins().icmp(
            cc(IntCC::SignedGreaterThan, IntCC::UnsignedGreaterThan),
            a,
            b,
        ),
        OpKind::GreaterOrEqual => fb.ins().icmp(
            cc(
                IntCC::SignedGreaterThanOrEqual,
                IntCC::UnsignedGreaterThanOrEqual,
            ),
            a,
            b,
        ),
        OpKind::Less => fb
            .ins()
            .icmp(cc(IntCC::SignedLessThan, IntCC::UnsignedLessThan), a, b),
        _ => fb.ins().icmp(
            cc(IntCC::SignedLessThanOrEqual, IntCC::UnsignedLessThanOrEqual),
            a,
            b,
        ),
    }
}

/// Elements per vector step of a comparison of 4-byte elements: four 4-lane compares
/// narrowed into one 16-byte store of bools.
const COMPARE_LANES: usize = 16;

/// Comparisons and logic: one bool byte per result element. Comparisons of f32 and i32
/// (a one-hot encoding's `Equal` of expanded integers, masks of float scores) take 16
/// elements a step: four 4-lane compares whose all-ones/zero masks narrow (saturating)
/// to bytes, negated to 1/0.
pub(super) fn compare(k: &mut Kernel) -> Result<(), String> {
    let kind = k.op.kind;
    let operands = (0..k.inputs.len())
        .map(|i| k.input(i))
        .collect::<Result<Vec<_>, _>>()?;
    let out = k.output(0);
    if operands.len() != if kind == OpKind::Not { 1 } else { 2 } {
        return Err(format!("{kind} cannot take {} operands", operands.len()));
    }
    let dtype = operands[0].ty.dtype;
    if operands.iter().any(|o| o.ty.dtype != dtype) || out.ty.dtype != DType::Bool {
        return Err(format!(
            "{kind} takes operands of one dtype and gives bools"
        ));
    }
    let plan = Broadcast::new(out, &operands)?;
    let ptrs: Vec<Value> = operands.iter().map(|o| o.ptr).collect();
    let (po, ty) = (out.ptr, operands[0].elem());
    let vector = matches!(dtype, DType::F32 | DType::I32) && operands.len() == 2;
    // Cranelift 0.135 declares SSE's `cmpps` with an unaligned memory operand, so it folds
    // a load used only by an f32x4 comparison into it, and the CPU faults on addresses
    // that are not 16-byte aligned. Without AVX (whose `vcmpps` takes any address), f32
    // vectors are loaded as integers and reinterpreted, which no instruction folds.
    let via_bits = dtype == DType::F32 && !k.target_has("has_avx");
    plan.emit_lanes(
        k,
        if vector { COMPARE_LANES } else { 1 },
        &mut |fb, off, lanes| {
            if let Lanes::Vector(splat) = lanes {
                let vty = if dtype == DType::F32 {
                    types::F32X4
                } else {
                    types::I32X4
                };
                let load = |fb: &mut FunctionBuilder, s: usize, q: i32| {
                    let v = load_quarter(
                        fb,
                        if via_bits { types::I32X4 } else { vty },
                        splat[s + 1],
                        ptrs[s],
                        off[s + 1],
                        q,
                    );
                    if via_bits {
                        fb.ins().bitcast(vty, MemFlagsData::new(), v)
                    } else {
                        v
                    }
                };
                let masks: Vec<Value> = (0..4)
                    .map(|q| {
                        let (a, b) = (load(fb, 0, q), load(fb, 1, q));
                        compare_one(fb, kind, dtype, a, b)
                    })
                    .collect();
                let low = fb.ins().snarrow(masks[0], masks[1]);
                let high = fb.ins().snarrow(masks[2], masks[3]);
                let bytes = fb.ins().snarrow(low, high);
                let bools = fb.ins().ineg(bytes);
                let a = fb.ins().iadd(po, off[0]);
                fb.ins().store(emit::mem(), bools, a, 0);
                return;
            }
            let a = emit::load_at(fb, ty, ptrs[0], off[1]);
            let b = match ptrs.get(1) {
                Some(&p) => emit::load_at(fb, ty, p, off[2]),
                None => a,
            };
            let r = compare_one(fb, kind, dtype, a, b);
            emit::store_at(fb, r, po, off[0]);
        },
    );
    Ok(())
}

/// Quarter `q` (4 lanes of 4-byte elements) of a 16-element step of a stream at element
/// offset `off`, or its one element splatted when the stream is constant along the step.
fn load_quarter(
    fb: &mut FunctionBuilder,
    vty: Type,
    splat: bool,
    base: Value,
    off: Value,
    q: i32,
) -> Value {
    let a = emit::addr(fb, base, off, 4);
    if splat {
        let v = fb.ins().load(vty.lane_type(), emit::mem(), a, 0);
        return fb.ins().splat(vty, v);
    }
    fb.ins().load(vty, emit::mem(), a, 16 * q)
}

/// Where: the condition's byte picks the element of `x` or `y` (any one dtype). 4-byte
/// branches (f32 and i32: attention scores against a mask value) take 16 elements a step:
/// 16 condition bytes widened (sign-extending `-b`, all-ones for 1) into four 4-lane masks
/// that select lane by lane.
pub(super) fn select(k: &mut Kernel) -> Result<(), String> {
    let (c, x, y, out) = (k.input(0)?, k.input(1)?, k.input(2)?, k.output(0));
    if c.ty.dtype != DType::Bool || x.ty.dtype != out.ty.dtype || y.ty.dtype != out.ty.dtype {
        return Err(
            "Where takes a bool condition and two branches of the result's dtype".to_string(),
        );
    }
    let plan = Broadcast::new(out, &[c, x, y])?;
    let (pc, px, py, po, ty) = (c.ptr, x.ptr, y.ptr, out.ptr, out.elem());
    let vector = out.ty.dtype.size_of() == 4;
    plan.emit_lanes(
        k,
        if vector { COMPARE_LANES } else { 1 },
        &mut |fb, off, lanes| {
            if let Lanes::Vector(splat) = lanes {
                // Branches as integer lanes: selection moves bits, and integer loads fold into
                // nothing that needs alignment.
                let vty = types::I32X4;
                let masks = if splat[1] {
                    let b = emit::load_at(fb, types::I8, pc, off[1]);
                    let b = fb.ins().sextend(types::I32, b);
                    let m = fb.ins().ineg(b);
                    vec![fb.ins().splat(vty, m); 4]
                } else {
                    let a = fb.ins().iadd(pc, off[1]);
                    let bytes = fb.ins().load(types::I8X16, emit::mem(), a, 0);
                    let m = fb.ins().ineg(bytes);
                    let (lo, hi) = (fb.ins().swiden_low(m), fb.ins().swiden_high(m));
                    [lo, lo, hi, hi]
                        .iter()
                        .enumerate()
                        .map(|(q, &h)| {
                            if q % 2 == 0 {
                                fb.ins().swiden_low(h)
                            } else {
                                fb.ins().swiden_high(h)
                            }
                        })
                        .collect()
                };
                for (q, &m) in masks.iter().enumerate() {
                    let q = q as i32;
                    let a = load_quarter(fb, vty, splat[2], px, off[2], q);
                    let b = load_quarter(fb, vty, splat[3], py, off[3], q);
                    let r = fb.ins().bitselect(m, a, b);
                    let at = emit::addr(fb, po, off[0], 4);
                    fb.ins().store(emit::mem(), r, at, 16 * q);
                }
                return;
            }
            let cond = emit::load_at(fb, types::I8, pc, off[1]);
            let a = emit::load_at(fb, ty, px, off[2]);
            let b = emit::load_at(fb, ty, py, off[3]);
            let r = fb.ins().select(cond, a, b);
            emit::store_at(fb, r, po, off[0]);
        },
    );
    Ok(())
}
