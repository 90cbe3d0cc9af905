//! Loading IR text (`.qir`, what `qlift dump --full-constants` writes) with the same limits
//! as an ONNX import: the file is read through [`crate::bounded`], parsed, verified, and
//! checked by [`crate::limits::check_graph`] before any stage sizes a buffer from it.

use crate::{bounded, limits, Error, ImportOptions};
use qlift_ir::Graph;
use std::path::Path;

/// Loads a `.qir` file: bounded read (at most `limits.max_model_bytes`), parse, verify, limits.
pub fn load_qir(path: &Path, opts: &ImportOptions) -> Result<Graph, Error> {
    let bytes = bounded::read_to_end(path, opts.limits.max_model_bytes, "IR text")?;
    let text = String::from_utf8(bytes).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to())),
    })?;
    load_qir_text(&text, opts)
}

/// Parses, verifies and checks IR text held in memory.
pub fn load_qir_text(text: &str, opts: &ImportOptions) -> Result<Graph, Error> {
    if text.len() as u64 > opts.limits.max_model_bytes {
        return Err(Error::Limit { what: "IR text".into(), value: text.len() as u64, limit: opts.limits.max_model_bytes });
    }
    let graph = qlift_ir::text::parse(text)?;
    qlift_ir::verify(&graph)?;
    limits::check_graph(&graph, &opts.limits)?;
    Ok(graph)
}
