//! Comparison, logic and selection kernels: Equal, Greater, GreaterOrEqual, Less,
//! LessOrEqual (bool results), Not, And, Or, Xor (on bools), Where; all broadcasting.
//!
//! Each follows `qlift_ir`'s interpreter (`ops/logic.rs`): an ordered comparison with NaN
//! is false and so is `NaN == NaN` (Cranelift's ordered float conditions), unsigned dtypes
//! compare unsigned, and bools are bytes holding 0 or 1, so logic is bitwise on them.

use super::elementwise::{is_signed, Broadcast};
use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use qlift_ir::{DType, OpKind};

/// One comparison or logic op on two elements of `dtype` (Not reads only the first); an i8
/// holding 0 or 1.
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
        OpKind::Greater => fb.ins().icmp(cc(IntCC::SignedGreaterThan, IntCC::UnsignedGreaterThan), a, b),
        OpKind::GreaterOrEqual => fb.ins().icmp(cc(IntCC::SignedGreaterThanOrEqual, IntCC::UnsignedGreaterThanOrEqual), a, b),
        OpKind::Less => fb.ins().icmp(cc(IntCC::SignedLessThan, IntCC::UnsignedLessThan), a, b),
        _ => fb.ins().icmp(cc(IntCC::SignedLessThanOrEqual, IntCC::UnsignedLessThanOrEqual), a, b),
    }
}

/// Comparisons and logic: one bool byte per result element.
pub(super) fn compare(k: &mut Kernel) -> Result<(), String> {
    let kind = k.op.kind;
    let operands = (0..k.inputs.len()).map(|i| k.input(i)).collect::<Result<Vec<_>, _>>()?;
    let out = k.output(0);
    let dtype = operands[0].ty.dtype;
    if operands.iter().any(|o| o.ty.dtype != dtype) || out.ty.dtype != DType::Bool {
        return Err(format!("{kind} takes operands of one dtype and gives bools"));
    }
    let plan = Broadcast::new(out, &operands)?;
    let ptrs: Vec<Value> = operands.iter().map(|o| o.ptr).collect();
    let (po, ty) = (out.ptr, operands[0].elem());
    plan.emit_lanes(k, 1, &mut |fb, off, _| {
        let a = emit::load_at(fb, ty, ptrs[0], off[1]);
        let b = match ptrs.get(1) {
            Some(&p) => emit::load_at(fb, ty, p, off[2]),
            None => a,
        };
        let r = compare_one(fb, kind, dtype, a, b);
        emit::store_at(fb, r, po, off[0]);
    });
    Ok(())
}

/// Where: the condition's byte picks the element of `x` or `y` (any one dtype).
pub(super) fn select(k: &mut Kernel) -> Result<(), String> {
    let (c, x, y, out) = (k.input(0)?, k.input(1)?, k.input(2)?, k.output(0));
    if c.ty.dtype != DType::Bool || x.ty.dtype != out.ty.dtype || y.ty.dtype != out.ty.dtype {
        return Err("Where takes a bool condition and two branches of the result's dtype".to_string());
    }
    let plan = Broadcast::new(out, &[c, x, y])?;
    let (pc, px, py, po, ty) = (c.ptr, x.ptr, y.ptr, out.ptr, out.elem());
    plan.emit_lanes(k, 1, &mut |fb, off, _| {
        let cond = emit::load_at(fb, types::I8, pc, off[1]);
        let a = emit::load_at(fb, ty, px, off[2]);
        let b = emit::load_at(fb, ty, py, off[3]);
        let r = fb.ins().select(cond, a, b);
        emit::store_at(fb, r, po, off[0]);
    });
    Ok(())
}
