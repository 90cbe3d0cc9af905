//! qlift's graph rewrites on e-graphs (egg): BatchNorm folding, constant folding, cleanup,
//! affine absorption, activation fusion, requantization fusion into integer ops; post-training
//! quantization (calibration, Q/DQ insertion); and the pass manager that runs them in a
//! fixed pipeline with IR dumps after each pass.
#![deny(missing_docs)]

pub mod analysis;
pub mod bridge;
pub mod calibrate;
pub mod cost;
pub mod extract;
pub mod lang;
pub mod manager;
pub mod one_hot;
pub mod provenance;
pub mod quantize;
pub mod recurrent_layout;
pub mod rules;

pub use manager::{
    all_passes, pass_names, pipeline, quantizing_pipeline, quantizing_pipeline_with, run_passes,
    run_pipeline, Pass, PassRun, PipelineOptions, PrintAfter, Progress, INSERT_QDQ,
};

/// Errors of the passes.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The graph uses something the e-graph bridge does not handle yet (bad input for now).
    #[error("unsupported by the rewrites: {0}")]
    Unsupported(String),
    /// A pass produced an inconsistent graph or the IR refused a build step: a bug in qlift.
    #[error("internal error in a pass: {0}")]
    Bug(String),
    /// A dump file could not be written (environment).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A quantization plan that cannot be applied to this model (bad input): an entry names
    /// no node or op type of it, or entries contradict each other.
    #[error("{0}")]
    Plan(#[from] crate::quantize::PlanError),
    /// An IR error (the verifier after a pass: a bug in that pass).
    #[error(transparent)]
    Ir(#[from] qlift_ir::IrError),
}
