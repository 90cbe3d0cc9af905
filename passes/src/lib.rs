//! qlift's graph rewrites on e-graphs (egg): BatchNorm folding, constant folding,
//! activation fusion, requantization fusion, Q/DQ insertion, and the pass manager.
//!
//! Empty until the rewrites issue lands; the crate exists so that the workspace layout is
//! fixed from the start.
#![deny(missing_docs)]
