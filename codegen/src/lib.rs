//! qlift's back end: lowers the IR (integer ops with fixed-point requantization, and the
//! float ops of fp32 islands) to Cranelift functions specialized on shapes and constant
//! weights for the host CPU, JIT-compiled (cranelift-jit) or written ahead of time as an
//! object file (cranelift-object) through the same [`program::build`].
//!
//! A compiled program is one kernel function per node plus an entry function that calls
//! them in order on buffers of one arena, planned by liveness at compile time
//! ([`plan`]). Shapes are static except the batch, a run-time argument. The entry never
//! allocates, and every input is checked before generated code is entered ([`jit`]).
#![deny(missing_docs)]

pub mod aot;
pub mod emit;
mod error;
pub mod flow;
mod fork_join;
mod fusion;
pub mod isa;
pub mod jit;
mod kernels;
pub mod peak;
pub mod plan;
pub mod program;

pub use aot::{compile_object, AotArtifact};
pub use error::CodegenError;
pub use flow::FlowProgram;
pub use isa::CodegenOptions;
pub use jit::{JitProgram, StepTime};
