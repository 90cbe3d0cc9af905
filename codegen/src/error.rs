//! The back end's errors.

/// Errors of code generation and of running generated code.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// A node uses an op, dtype or layout the back end cannot lower (bad input for this
    /// version of qlift; the reference interpreter may still run it).
    #[error("node `{node}` ({op}): cannot compile: {message}")]
    Unsupported {
        /// The node's name.
        node: String,
        /// The op's name.
        op: String,
        /// What is not supported.
        message: String,
    },
    /// The target is not supported or its flags are invalid (bad input: `--target`).
    #[error("target {target}: {message}")]
    Target {
        /// The target triple.
        target: String,
        /// What is wrong.
        message: String,
    },
    /// Inputs given to a compiled model do not match it (bad input).
    #[error("input `{name}`: {message}")]
    Input {
        /// The input's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Output buffers given to a compiled model do not match it (bad input).
    #[error("output `{name}`: {message}")]
    Output {
        /// The output's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Generated code reported an error while running (for example an integer division by
    /// zero, which it refuses instead of trapping).
    #[error("node `{node}` failed at run time: {message}")]
    Runtime {
        /// The node whose kernel failed.
        node: String,
        /// What failed.
        message: String,
    },
    /// Cranelift refused the generated code: a bug in qlift.
    #[error("internal code generation error: {0}")]
    Bug(String),
}

impl CodegenError {
    /// Whether the error is a bug in qlift rather than bad input.
    pub fn is_internal(&self) -> bool {
        matches!(self, CodegenError::Bug(_))
    }
}

/// Converts Cranelift's errors, which only ever mean that qlift generated bad code.
pub(crate) fn bug(e: impl std::fmt::Display) -> CodegenError {
    CodegenError::Bug(e.to_string())
}
