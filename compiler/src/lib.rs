//! qlift: a quantizing compiler for ONNX models.
//!
//! This crate is what applications depend on: the ONNX frontend ([`load_onnx`]) and
//! exporter ([`export_onnx`]), `.npy` I/O for the CLI ([`npy`]), and (as the compiler grows)
//! the driver and the compiled-model API. The IR itself lives in `qlift-ir`.
#![deny(missing_docs)]

// The CLI module names the library as its users do (`qlift::load_onnx`).
extern crate self as qlift;

pub mod bounded;
#[doc(hidden)]
pub mod cli;
mod error;
pub mod fallback;
pub mod html;
pub mod limits;
pub mod model;
pub mod npy;
pub mod onnx;
pub mod plan;
mod ptq;
pub mod qir;
pub mod quantize;
pub mod report;
pub mod stream;

pub use error::{Error, ErrorKind, UnsupportedOp};
pub use model::{CompileOptions, CompiledModel, Engine, KernelTime};
pub use onnx::export_onnx;
pub use onnx::{
    load_onnx, load_onnx_bytes, read_tensor_pb, supported_ops, ImportOptions, InputDim, Limits,
};
pub use plan::{load_plan, QuantPlan};
pub use qir::{load_qir, load_qir_text};
pub use qlift_codegen::CodegenOptions;
pub use qlift_passes::calibrate::{ActivationScheme, CalibrationMethod};
pub use qlift_passes::quantize::{
    AdaRoundOptions, BiasCorrection, Outliers, PtqOptions, QuantizeOptions, WeightBits,
    WeightGranularity,
};
pub use quantize::{quantize, Quantized};
pub use stream::{detect_state_pairs, StatePair, Stream};
