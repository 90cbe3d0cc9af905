//! The IR text format: readable like Cranelift's CLIF or MLIR, one line per node, and
//! re-parseable, so tests are written as text and every dump can be read back.
//!
//! ```text
//! graph digits_cnn(%input: f32[N,1,8,8]) -> (%logits) {
//!   %w = const f32[16,1,3,3] #9f1c2d3e4a5b6c7d            ; large constants: content digest
//!   %b = const f32[2] [0.5, -1.25]                         ; small ones: inline
//!   %y = Conv(%input, %w, _) {group=1, ...} : f32[N,16,8,8] @conv_0
//!   %q = QuantizeLinear(%y) : u8[N,16,8,8] quant(scale=0.0235, zero_point=128)
//! }
//! ```
//!
//! - Names are plain when they match `[A-Za-z0-9_./-]+`, otherwise quoted with escapes.
//! - `_` is a missing optional operand; `@name` gives the node name when it differs from
//!   its first result's name.
//! - Types: `dtype[dims]` with `N` for the batch; quantized values add
//!   `quant(scale=S, zero_point=Z)` or `quant(axis=A, scale=[..], zero_point=[..])`.
//! - Attributes: integers `3`, floats always with a `.`, an exponent, `inf` or `nan`
//!   (bit-exact round trip), lists `[..]` (an empty float list is `floats[]`), strings `".."`.
//! - A control-flow op's bodies are attributes written as graphs, indented:
//!   `then_branch=graph then(%x: f32[2]) -> (%y) { ... }` (see `ops/control.rs`).
//! - `;` starts a comment (filetests keep their directives there).

mod parse;
mod print;

use crate::{Tensor, TensorType};
use std::collections::HashMap;
use std::sync::Arc;

pub use parse::{parse, parse_tensor, parse_with_constants, MAX_NESTING};
pub use print::{print, print_node, PrintOptions};

/// Constants by content digest: what a dump that shows digests needs to be parsed back.
pub type ConstantPool = HashMap<u64, Arc<Tensor>>;

/// Every constant of a graph by digest, those of its bodies included.
pub fn constant_pool(graph: &crate::Graph) -> ConstantPool {
    let mut pool = ConstantPool::new();
    add_constants(graph, &mut pool);
    pool
}

fn add_constants(graph: &crate::Graph, pool: &mut ConstantPool) {
    for id in graph.node_ids() {
        match &graph.node(id).op {
            crate::NodeOp::Const(t) => {
                pool.insert(t.digest(), t.clone());
            }
            crate::NodeOp::Apply(op) => op
                .attrs
                .graphs()
                .for_each(|(_, body)| add_constants(body, pool)),
            crate::NodeOp::Input => {}
        }
    }
}

/// A type as the text format writes it, e.g. `u8[N,16,8,8] quant(scale=0.5, zero_point=3)`.
pub fn type_to_string(ty: &TensorType) -> String {
    print::type_string(ty)
}
