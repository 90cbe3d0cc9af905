//! qlift's graph IR.
//!
//! A model is a [`Graph`]: a petgraph DAG of [`Node`]s whose results are typed values
//! ([`TensorType`]: dtype, static shape with a symbolic batch dimension, optional
//! quantization parameters). Constants are shared [`Tensor`]s identified by a content digest.
//! The IR prints to and parses from a text format ([`text`]), exports to Graphviz ([`dot`]),
//! is checked by a verifier ([`verify()`]) and executed by a reference interpreter
//! ([`interp`]), which is the oracle every later stage (rewrites, JIT) is tested against.
#![deny(missing_docs)]

pub mod approx;
mod attrs;
pub mod dot;
mod dtype;
mod error;
pub mod fixed_point;
mod graph;
pub mod interp;
mod op;
pub(crate) mod ops;
mod quant;
mod shape;
mod specialize;
mod tensor;
pub mod text;
mod types;
mod verify;

pub use attrs::{AttrValue, Attrs};
pub use dtype::DType;
pub use error::{IrError, VerifierError};
pub use graph::{Graph, Node, NodeId, NodeOp, Use, Value, ValueId};
pub use op::{Op, OpKind, FUSED_ACTIVATION};
pub use ops::control::{
    accepts as body_accepts, execute as execute_control, inline_constant_branches,
    join as join_types, subgraph_depth, BodyRunner,
};
pub use ops::conv_transpose::{conv_transpose_extent, tap_position};
pub use ops::dynamic::{dequantize_blocks, dynamic_params, dynamic_quantize, scale_shape};
pub use ops::index::{shape_range, slice_range};
pub use ops::recurrent::{
    check_length as check_sequence_length, Activation, Cell, Recurrent,
    Strides as RecurrentStrides, ACTIVATIONS as RECURRENT_ACTIVATIONS,
};
pub use ops::recurrent_q::{
    eval_state_precision, round_state, QuantizedRecurrent, StatePrecision,
    MAX_PRODUCT_LENGTH as RECURRENT_MAX_PRODUCT, STATE_MAX as RECURRENT_STATE_MAX,
};
pub use ops::reduce::{is_reduction, reduce_axes};
pub use ops::resample::{
    block_permutation, from_f64 as tensor_from_f64, resize_plan, AxisTaps, BlockView, ResizePlan,
};
pub use ops::select::{one_hot_depth, Reduction};
pub use ops::shape::{pad_source, PadMode};
pub use ops::unary::gelu_uses_tanh;
pub use quant::QuantParams;
pub use shape::{Dim, Monomial, Shape, SymInt, Symbol};
pub use specialize::{
    bind_graph_inputs, bind_input_shapes, bind_inputs, needs_binding, specialize, specialize_for,
    Binding, Folder,
};
pub use tensor::{Tensor, TensorBuf, TensorBufMut, TensorData, TensorMut, TensorRef};
pub use types::TensorType;
pub use verify::{infer_node_types, infer_op, infer_op_with, infer_types, verify, OperandValues};
