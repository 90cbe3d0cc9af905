//! Splitting one call of a kernel whose work is counted in elements (elementwise ops,
//! Softmax, normalizations) across the JIT's threads, as the convolution and product forms
//! split theirs in multiply-accumulates ([`Kernel::parallel_for`]).
//!
//! The loops over a range of rows are emitted by a body that may be emitted twice over:
//! inline in the kernel (a serial call) or in a task function ([`Kernel::task`]) that the
//! thread pool runs on parts of the rows. A task cannot see the kernel's values, so the body
//! takes the pointers it reads and writes as arguments (the task loads them from a context
//! in the workspace) instead of capturing them; each element is computed by the same
//! instructions whichever part it falls in (only the ranges change), so results do not
//! depend on the thread count.

use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::Module;

/// The multiply-accumulates one element of such a kernel counts as against
/// [`Kernel::parallel_min_work`]: with the default threshold a call splits from 31 K
/// elements per sample (an elementwise op over MiniLM's 128×384 activations splits, one
/// over a 64×64 map does not; a split costs a few µs, an element a fraction of a ns to
/// a few ns).
pub(crate) const ELEMENT_WORK: u64 = 16;

/// A body emitting rows `begin..end` (i64 values) with the stream pointers `ptrs`, in the
/// function `fb` builds (`module` declares imports there: [`super::import`]).
pub(crate) type RowsBody<'a> = dyn FnMut(&mut FunctionBuilder, &mut dyn Module, &[Value], Value, Value) -> Result<(), String>
    + 'a;

/// A [`RowsBody`] that also gets the slot of the part running it
/// ([`Kernel::split_rows_in_parts`]).
pub(crate) type PartsBody<'a> = dyn FnMut(
        &mut FunctionBuilder,
        &mut dyn Module,
        &[Value],
        Value,
        Value,
        Value,
    ) -> Result<(), String>
    + 'a;

impl Kernel<'_, '_> {
    /// Whether a call doing `elements` elements of work per sample splits across threads.
    pub fn splits_elements(&self, elements: usize) -> bool {
        self.parallel && (elements as u64).saturating_mul(ELEMENT_WORK) >= self.parallel_min_work
    }

    /// Emits `body` over rows `0..rows` (a run-time count) with the pointers `ptrs`: inline
    /// when the call stays on its thread ([`Kernel::splits_elements`] of `elements`, the
    /// elements of one sample), else as a task run in parts by [`Kernel::parallel_for_value`].
    pub fn split_rows(
        &mut self,
        rows: Value,
        ptrs: &[Value],
        elements: usize,
        body: &mut RowsBody,
    ) -> Result<(), String> {
        self.split_rows_in_parts(
            rows,
            ptrs,
            elements,
            usize::MAX,
            &mut |fb, m, p, b, e, _| body(fb, m, p, b, e),
        )
    }

    /// [`Kernel::split_rows`] in at most `parts` parts, `body` getting the slot of the part
    /// that runs its rows (an i64 value below `parts`, 0 inline) to pick a scratch area of
    /// its own.
    pub fn split_rows_in_parts(
        &mut self,
        rows: Value,
        ptrs: &[Value],
        elements: usize,
        parts: usize,
        body: &mut PartsBody,
    ) -> Result<(), String> {
        if !self.splits_elements(elements) {
            let zero = emit::iconst(self.fb, 0);
            return body(self.fb, &mut *self.module, ptrs, zero, rows, zero);
        }
        let count = ptrs.len();
        let ptr = self.module.isa().pointer_type();
        let task = self.task(|fb, module, [ctx, begin, end, slot]| {
            let loaded: Vec<Value> = (0..count)
                .map(|i| fb.ins().load(ptr, emit::mem(), ctx, (8 * i) as i32))
                .collect();
            body(fb, module, &loaded, begin, end, slot)
        })?;
        let ctx = self.workspace(8 * count);
        for (i, &p) in ptrs.iter().enumerate() {
            self.fb.ins().store(emit::mem(), p, ctx, (8 * i) as i32);
        }
        let work = (elements as u64).saturating_mul(ELEMENT_WORK);
        self.parallel_for_value(task, ctx, rows, parts, work)
    }
}

/// Row `u` (an i64 value) of a split over `per_sample` rows per sample as (sample, row of
/// the sample); the sample is 0 when the rows are not `batched`.
pub(crate) fn sample_row(
    fb: &mut FunctionBuilder,
    u: Value,
    batched: bool,
    per_sample: i64,
) -> (Value, Value) {
    if !batched {
        return (emit::iconst(fb, 0), u);
    }
    let b = fb.ins().udiv_imm_s(u, per_sample);
    let whole = fb.ins().imul_imm_s(b, per_sample);
    (b, fb.ins().isub(u, whole))
}
