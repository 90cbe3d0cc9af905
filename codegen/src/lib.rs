//! qlift's back end: lowers the quantized IR to Cranelift functions specialized for the
//! host CPU (JIT through cranelift-jit, ahead of time through cranelift-object).
//!
//! Empty until the JIT issue lands; the crate exists so that the workspace layout (and the
//! dependency direction `ir` ← `passes` ← `codegen` ← `compiler`) is fixed from the start.
#![deny(missing_docs)]
