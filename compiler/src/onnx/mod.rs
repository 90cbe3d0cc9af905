//! The ONNX frontend: protobuf → qlift IR, and back ([`export_onnx`]).
//!
//! Decoding checks sizes before allocating ([`Limits`]), the importer converts every op
//! through a registry (one file per op family under `ops/`) into the IR's canonical form
//! (defaults filled in, `auto_pad` resolved, constant operands moved into attributes,
//! quantization parameters moved onto value types), and the result is verified.

mod export;
mod import;
mod load;
mod ops;
mod tensor;

use crate::Error;
use qlift_ir::{Graph, Tensor};
use std::collections::HashMap;
use std::path::Path;

pub use export::export_onnx;
pub use ops::supported_ops;
pub use tensor::read_tensor_pb;

/// Size limits checked before anything is allocated, so that a hostile file cannot make
/// the importer exhaust memory.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest model file, in bytes. Protobuf itself cannot exceed 2 GiB.
    pub max_model_bytes: u64,
    /// Largest single tensor (initializer, constant or external data), in bytes.
    pub max_tensor_bytes: u64,
    /// Largest total of all constant data, in bytes: the memory budget of a model.
    pub max_total_bytes: u64,
    /// Most nodes in a graph: far above real models, far below what exhausts memory.
    pub max_nodes: usize,
    /// Highest tensor rank: real models stay under 8; the kernels' index math assumes few.
    pub max_rank: usize,
    /// Most memory one run may need (inputs aside), in bytes: a compiled model refuses a
    /// batch whose outputs and scratch would exceed it, before allocating them, and
    /// calibration runs in batches small enough to stay under it. 8 GiB: the bundled models
    /// need under 1 MiB per sample; a larger batch is refused with an error rather than
    /// asked of the allocator (which aborts the process when it cannot give it).
    pub max_run_bytes: u64,
    /// Deepest nesting of control-flow bodies (an If in a Loop's body is 2): real models nest
    /// two or three; the bound keeps a hostile model from exhausting the stack of the
    /// importer, the verifier and the interpreter, which all recurse into bodies.
    pub max_subgraph_depth: usize,
    /// Most iterations one Loop or Scan node may run in one call: a Loop whose condition
    /// never turns false stops with an error naming the node there (see
    /// `qlift_ir::interp::DEFAULT_MAX_LOOP_ITERATIONS` for the default's reasoning).
    pub max_loop_iterations: u64,
    /// Largest `hidden_size` of a recurrent layer (LSTM, GRU, RNN). Its `R` alone is
    /// `gates·H×H` per direction (16,384 units: a 4 GiB LSTM `R`); real layers stay at 4,096
    /// or below, and the kernels' state workspace is sized by it.
    pub max_recurrent_hidden: usize,
    /// Most recurrent steps one run may take in one layer (sequence length × samples ×
    /// directions): steps are sequential work no thread can share, so a hostile sequence
    /// length would otherwise keep a call busy for minutes. 100,000,000 steps is about
    /// three minutes of a 64-unit LSTM, 28 hours of 100 Hz audio frames, far above one
    /// call of a stream; a run beyond it is refused before it starts.
    pub max_recurrent_steps: u64,
}

impl Limits {
    /// What the interpreter and the control-flow driver enforce while a model runs.
    pub fn run_options(&self) -> qlift_ir::interp::Options {
        qlift_ir::interp::Options {
            max_loop_iterations: self.max_loop_iterations,
            max_stacked_bytes: self.max_tensor_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_model_bytes: 2 << 30,
            max_tensor_bytes: 1 << 30,
            max_total_bytes: 4 << 30,
            max_nodes: 1_000_000,
            max_rank: 8,
            max_run_bytes: 8 << 30,
            max_subgraph_depth: 16,
            max_loop_iterations: qlift_ir::interp::DEFAULT_MAX_LOOP_ITERATIONS,
            max_recurrent_hidden: 16_384,
            max_recurrent_steps: 100_000_000,
        }
    }
}

/// How to import a model.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Graph inputs to freeze into constants (like tract's "constantize"). qlift compiles
    /// static shapes, so operands such as Reshape's shape or QuantizeLinear's scale must be
    /// constants; models that feed them as inputs (the ONNX node tests do) import once
    /// those inputs are given here.
    pub constant_inputs: HashMap<String, Tensor>,
    /// Input shapes given by the user (`--shape NAME=1x3x224x224`): they fix extents the
    /// model leaves symbolic, or make an axis the batch.
    pub input_shapes: HashMap<String, Vec<InputDim>>,
    /// Size limits.
    pub limits: Limits,
}

/// One dimension of an input shape given by the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputDim {
    /// A fixed extent.
    Fixed(usize),
    /// The batch (`N`): the run-time batch of compiled code.
    Batch,
}

impl InputDim {
    /// Parses `1x3x224x224` or `Nx128` (the batch as `N`).
    pub fn parse_shape(s: &str) -> Result<Vec<InputDim>, String> {
        if s.is_empty() {
            return Ok(Vec::new());
        }
        s.split(['x', ','])
            .map(|d| match d.trim() {
                "N" => Ok(InputDim::Batch),
                d => d
                    .parse::<usize>()
                    .map(InputDim::Fixed)
                    .map_err(|_| format!("`{d}` is not an extent (a number, or N for the batch)")),
            })
            .collect()
    }
}

/// Loads an ONNX model file. External data is read from the model's directory only.
pub fn load_onnx(path: &Path, opts: &ImportOptions) -> Result<Graph, Error> {
    let bytes = crate::bounded::read_to_end(path, opts.limits.max_model_bytes, "model file")?;
    let dir = path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    });
    // The file's bytes go before the import makes the graph's copy of the weights.
    let model = load::decode_model(&bytes, &opts.limits)?;
    drop(bytes);
    import::import_model(&model, dir, opts)
}

/// Loads an ONNX model from bytes. `model_dir` is where external data may be read from;
/// with `None` external data is refused.
pub fn load_onnx_bytes(
    bytes: &[u8],
    model_dir: Option<&Path>,
    opts: &ImportOptions,
) -> Result<Graph, Error> {
    let model = load::decode_model(bytes, &opts.limits)?;
    import::import_model(&model, model_dir, opts)
}
