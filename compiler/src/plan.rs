//! Quantization plans as files: reading one (bounded, as every file qlift opens) and naming
//! the file in the errors of the plan and of its application. The format and its meaning
//! are `qlift_passes::quantize::plan`'s.

use crate::Error;
pub use qlift_passes::quantize::plan::{PlanEntry, PlanError, Precision, QuantPlan};
use std::path::Path;

/// Largest plan file read: a plan names at most every node of a model (a million nodes of
/// ~100 bytes each), far beyond any real plan and far below what strains memory.
pub const MAX_PLAN_BYTES: u64 = 128 << 20;

/// Reads and parses the plan at `path` (TOML, or JSON when it starts with `{`).
pub fn load_plan(path: &Path) -> Result<QuantPlan, Error> {
    let source = path.display().to_string();
    let bytes = crate::bounded::read_to_end(path, MAX_PLAN_BYTES, "plan file")?;
    let text = String::from_utf8(bytes).map_err(|e| Error::Plan {
        origin: source.clone(),
        message: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
    })?;
    parse_plan(&text, &source)
}

/// Parses plan text; `source` names it in errors (a file, `--exclude`, a Python dict).
pub fn parse_plan(text: &str, source: &str) -> Result<QuantPlan, Error> {
    QuantPlan::parse(text).map_err(|e| Error::Plan {
        origin: source.to_string(),
        message: e.to_string(),
    })
}

/// `e` with a plan that did not fit the model (found while applying it) named as coming
/// from `source`; other errors unchanged.
pub fn name_plan(e: Error, source: &str) -> Error {
    match e {
        Error::Pass(qlift_passes::PassError::Plan(p)) => Error::Plan {
            origin: source.to_string(),
            message: p.to_string(),
        },
        other => other,
    }
}
