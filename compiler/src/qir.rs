//! Loading IR text (`.qir`, what `qlift dump --full-constants` writes) with the same limits
//! as an ONNX import: the file is read through [`crate::bounded`], parsed, verified, and
//! checked by [`crate::limits::check_graph`] before any stage sizes a buffer from it.

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
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to())),
    })?;
    load_qir_text(&text, opts)
}

/// Parses, verifies and checks IR text held in memory.
pub fn load_qir_text(text: &str, opts: &ImportOptions) -> Result<Graph, Error> {
    if text.len() as u64 > max_text_bytes(&opts.limits) {
        return Err(Error::Limit { what: "IR text".into(), value: text.len() as u64, limit: max_text_bytes(&opts.limits) });
    }
    let graph = qlift_ir::text::parse(text)?;
    qlift_ir::verify(&graph)?;
    limits::check_graph(&graph, &opts.limits)?;
    Ok(graph)
}
