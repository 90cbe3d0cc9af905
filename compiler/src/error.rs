//! The compiler's error type: every variant names what it is about and says whether it
//! means bad input (the user's model or data) or a bug in qlift.

use std::path::PathBuf;

/// An op the frontend cannot import, with where it occurs.
#[derive(Clone, Debug, PartialEq)]
pub struct UnsupportedOp {
    /// The node's name.
    pub node: String,
    /// The ONNX op type.
    pub op_type: String,
    /// The op's domain ("" for the default ONNX domain).
    pub domain: String,
    /// The opset version the model imports for that domain.
    pub opset: i64,
}

impl std::fmt::Display for UnsupportedOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let domain = if self.domain.is_empty() {
            "ai.onnx"
        } else {
            &self.domain
        };
        write!(
            f,
            "{} ({domain} opset {}) at node `{}`",
            self.op_type, self.opset, self.node
        )
    }
}

/// Errors of the qlift library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written (bad input or environment).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not a valid ONNX protobuf: truncated or garbled (bad input).
    #[error("not a valid ONNX model: {0}")]
    Decode(String),
    /// The model imports an opset version qlift does not support (bad input).
    #[error("unsupported opset: {domain} version {version} (qlift supports ai.onnx 7 to 28)")]
    Opset {
        /// The domain.
        domain: String,
        /// The version.
        version: i64,
    },
    /// Ops qlift cannot import, all of them at once (bad input for this version of qlift).
    #[error("unsupported ops:\n{}", .0.iter().map(|o| format!("  {o}")).collect::<Vec<_>>().join("\n"))]
    Unsupported(Vec<UnsupportedOp>),
    /// A node is invalid or uses a feature qlift does not support (bad input).
    #[error("node `{node}` ({op_type}): {message}")]
    Node {
        /// The node's name.
        node: String,
        /// The ONNX op type.
        op_type: String,
        /// What is wrong.
        message: String,
    },
    /// An operand qlift needs as a constant (a shape, a scale, a bound) is computed at run
    /// time; freezing it with `ImportOptions::constant_inputs` helps when it is a graph
    /// input (bad input).
    #[error("node `{node}` ({op_type}): operand `{operand}` must be a constant (an initializer or a Constant node)")]
    NonConstant {
        /// The node's name.
        node: String,
        /// The ONNX op type.
        op_type: String,
        /// The operand's value name.
        operand: String,
    },
    /// A graph input, initializer or output is invalid (bad input).
    #[error("value `{name}`: {message}")]
    Value {
        /// The value's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The model exceeds a configured limit; refused before allocating (bad input).
    #[error("{what} is {value}, above the limit of {limit}")]
    Limit {
        /// What was measured.
        what: String,
        /// Its size.
        value: u64,
        /// The limit in force.
        limit: u64,
    },
    /// An initializer's external data is refused or unreadable (bad input).
    #[error("external data of tensor `{tensor}` ({path}): {message}")]
    ExternalData {
        /// The tensor's name.
        tensor: String,
        /// The location the model gives.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A quantization plan is unreadable or does not fit the model (bad input). `origin`
    /// is the file (or what stands for it: `--exclude`, a Python dict).
    #[error("plan {origin}: {message}")]
    Plan {
        /// Where the plan came from.
        origin: String,
        /// What is wrong, naming the entry.
        message: String,
    },
    /// A `.npy` file could not be read or written (bad input).
    #[error(transparent)]
    Npy(#[from] crate::npy::NpyError),
    /// A rewrite pass or quantization failed: unsupported input, or (for `Bug`) a bug in qlift.
    #[error(transparent)]
    Pass(#[from] qlift_passes::PassError),
    /// The IR graph cannot be written as ONNX: its op (or an attribute value, a quantization
    /// layout) has no ONNX equivalent, or the graph is malformed. Names the node and its op;
    /// both are empty for a problem of the whole model (bad input for this version of qlift).
    #[error("cannot export {} to ONNX: {message}", export_subject(node, op))]
    Export {
        /// The node's name (empty for the whole model).
        node: String,
        /// The IR op's name (empty for the whole model).
        op: String,
        /// What cannot be written.
        message: String,
    },
    /// Code generation or a compiled model's run failed (see the variants' own docs for
    /// which mean bad input and which a bug).
    #[error(transparent)]
    Codegen(#[from] qlift_codegen::CodegenError),
    /// An IR-level error: verifier failures on an imported model are bad input; a build
    /// error is a bug in qlift.
    #[error(transparent)]
    Ir(#[from] qlift_ir::IrError),
}

/// What an export error is about: a node and its op, or the model.
fn export_subject(node: &str, op: &str) -> String {
    match (node.is_empty(), op.is_empty()) {
        (true, true) => "the model".to_string(),
        (false, true) => format!("node `{node}`"),
        (true, false) => format!("a {op} node"),
        (false, false) => format!("node `{node}` ({op})"),
    }
}

/// What an [`Error`] is about, coarsely: what the Python and C bindings turn into an
/// exception class or a status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The model is unreadable, invalid or too large (bad input).
    BadModel,
    /// Data given with the model is wrong: calibration data, run inputs or output buffers
    /// (bad input).
    BadInput,
    /// The model uses an op, opset or feature this version of qlift does not support.
    Unsupported,
    /// A bug in qlift.
    Internal,
}

impl Error {
    /// The error's kind, from the error alone. An error of a compiled model's run that is
    /// not internal nor unsupported is [`ErrorKind::BadInput`] whatever this says (a limit
    /// on a run's memory is the inputs' fault, on import the model's): bindings decide
    /// that by where the error came from.
    pub fn kind(&self) -> ErrorKind {
        use qlift_codegen::CodegenError as C;
        if self.is_internal() {
            return ErrorKind::Internal;
        }
        match self {
            Error::Unsupported(_) | Error::Opset { .. } | Error::Export { .. } => {
                ErrorKind::Unsupported
            }
            Error::Pass(qlift_passes::PassError::Unsupported(_)) => ErrorKind::Unsupported,
            Error::Codegen(C::Unsupported { .. } | C::Target { .. }) => ErrorKind::Unsupported,
            Error::Codegen(C::Input { .. } | C::Output { .. } | C::Runtime { .. }) => {
                ErrorKind::BadInput
            }
            Error::Ir(qlift_ir::IrError::Input { .. } | qlift_ir::IrError::Eval { .. }) => {
                ErrorKind::BadInput
            }
            // Calibration runs that the data does not fit.
            Error::Pass(qlift_passes::PassError::Ir(
                qlift_ir::IrError::Input { .. } | qlift_ir::IrError::Eval { .. },
            )) => ErrorKind::BadInput,
            Error::Npy(_) => ErrorKind::BadInput,
            Error::Plan { .. } => ErrorKind::BadInput,
            Error::Pass(qlift_passes::PassError::Plan(_)) => ErrorKind::BadInput,
            Error::Value { name, .. } if name.starts_with("calibration") || name == "stream" => {
                ErrorKind::BadInput
            }
            _ => ErrorKind::BadModel,
        }
    }

    /// Whether the error is a bug in qlift rather than bad input (the CLI exits with 2).
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            Error::Ir(qlift_ir::IrError::Build(_)) | Error::Pass(qlift_passes::PassError::Bug(_))
        ) || matches!(self, Error::Codegen(e) if e.is_internal())
    }
}
