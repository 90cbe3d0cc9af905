//! Loading IR text (`.qir`, what `qlift dump --full-constants` writes) with the same limits
//! as an ONNX import: the file is read through [`crate::bounded`], parsed, verified, and
//! checked by [`crate::limits::check_graph`] before any stage sizes a buffer from it.

use crate::InputDim;
use crate::{bounded, limits, Error, ImportOptions};
use qlift_ir::Graph;
use std::path::Path;

/// Largest IR text, in bytes, under `limits`: a quarter of the model budget, since the parser
/// holds the text as characters (4 bytes each), so that parsing stays within that budget.
pub fn max_text_bytes(limits: &crate::Limits) -> u64 {
    limits.max_model_bytes / 4
}

/// Loads a `.qir` file: bounded read (at most [`max_text_bytes`]), parse, verify, limits.
pub fn load_qir(path: &Path, opts: &ImportOptions) -> Result<Graph, Error> {
    let bytes = bounded::read_to_end(path, max_text_bytes(&opts.limits), "IR text")?;
    let text = String::from_utf8(bytes).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        ),
    })?;
    load_qir_text(&text, opts)
}

/// Parses, verifies and checks IR text held in memory.
pub fn load_qir_text(text: &str, opts: &ImportOptions) -> Result<Graph, Error> {
    if text.len() as u64 > max_text_bytes(&opts.limits) {
        return Err(Error::Limit {
            what: "IR text".into(),
            value: text.len() as u64,
            limit: max_text_bytes(&opts.limits),
        });
    }
    let mut graph = qlift_ir::text::parse(text)?;
    qlift_ir::verify(&graph)?;
    limits::check_graph(&graph, &opts.limits)?;
    for (name, t) in &opts.constant_inputs {
        let v = input_named(&graph, name)?;
        graph.freeze_input(v, std::sync::Arc::new(t.clone()))?;
    }
    let mut binding = qlift_ir::Binding::default();
    for (name, dims) in &opts.input_shapes {
        let ty = graph.value_type(input_named(&graph, name)?).clone();
        let bad = |message: String| Error::Value {
            name: name.clone(),
            message,
        };
        if dims.len() != ty.shape.rank() {
            return Err(bad(format!(
                "--shape gives {} dimensions, the input has {}",
                dims.len(),
                ty.shape.rank()
            )));
        }
        for (axis, (&declared, &given)) in ty.shape.dims().iter().zip(dims).enumerate() {
            match (declared, given) {
                (qlift_ir::Dim::Sym(s), InputDim::Fixed(n)) => {
                    binding.syms.insert(s, n);
                }
                (qlift_ir::Dim::Fixed(m), InputDim::Fixed(n)) if m == n => {}
                (qlift_ir::Dim::Batch, InputDim::Batch) => {}
                (d, g) => {
                    return Err(bad(format!(
                        "--shape gives {g:?} on axis {axis}, the graph has {d}"
                    )))
                }
            }
        }
    }
    if !opts.constant_inputs.is_empty() || !binding.is_empty() {
        graph = qlift_ir::specialize(&graph, &binding)?;
    }
    Ok(graph)
}

/// The graph input called `name` (for `--freeze` and `--shape`).
fn input_named(graph: &Graph, name: &str) -> Result<qlift_ir::ValueId, Error> {
    graph
        .input_values()
        .into_iter()
        .find(|&v| graph.value(v).name == name)
        .ok_or_else(|| Error::Value {
            name: name.to_string(),
            message: "names no graph input".to_string(),
        })
}
