//! Post-training quantization: weight quantization, and (with calibration statistics) the
//! insertion of QuantizeLinear/DequantizeLinear pairs that the `fuse-requant` pass lowers
//! to integer ops.

pub mod insert;
pub mod plan;
pub mod weights;

pub use insert::{
    insert_qdq, insert_qdq_planned, Calibration, Decision, Inserted, Outcome, QuantizeOptions,
    DEFAULT_MIN_SQNR_DB,
};
pub use plan::{resolve, ImportedNames, PlanEntry, PlanError, Precision, QuantPlan, ResolvedPlan};
pub use weights::WeightGranularity;
