//! The IR's error type.

use thiserror::Error;

/// One problem the verifier found, naming the node it is about.
#[derive(Clone, Debug, PartialEq, Error)]
#[error("node `{node}` ({op}): {message}")]
pub struct VerifierError {
    /// The node's name.
    pub node: String,
    /// The node's op name.
    pub op: String,
    /// What is wrong.
    pub message: String,
}

/// Errors of the IR crate. Each variant says whether it points at bad input or at a bug.
#[derive(Debug, Error)]
pub enum IrError {
    /// The graph is inconsistent (arity, dtypes, shapes, cycles, names). On a graph built
    /// from user input this is bad input; after a pass it is a bug in that pass.
    #[error("the graph does not verify:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Verifier(Vec<VerifierError>),
    /// IR text that does not parse: bad input.
    #[error("line {line}, column {column}: {message}")]
    Parse {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What was expected or found.
        message: String,
    },
    /// A node failed while being interpreted (bad input data, e.g. wrong shape or an
    /// out-of-range index).
    #[error("evaluating node `{node}` ({op}): {message}")]
    Eval {
        /// The node's name.
        node: String,
        /// The node's op name.
        op: String,
        /// What went wrong.
        message: String,
    },
    /// The inputs given to `run` do not match the graph's inputs: bad input.
    #[error("input `{name}`: {message}")]
    Input {
        /// The graph input's name.
        name: String,
        /// What does not match.
        message: String,
    },
    /// A graph-building call was given inconsistent arguments: a bug in the caller.
    #[error("building the graph: {0}")]
    Build(String),
}
