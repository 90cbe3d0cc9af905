//! PLACEHOLDER: being written.
use super::{EvalCtx, InferCtx};
use crate::{Tensor, TensorType};

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    Err(format!("{} is not implemented yet", cx.op.kind))
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    Err(format!("{} is not implemented yet", cx.op.kind))
}
