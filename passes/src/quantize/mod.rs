//! Post-training quantization: weight quantization, and (with calibration statistics) the
//! insertion of QuantizeLinear/DequantizeLinear pairs that the `fuse-requant` pass lowers
//! to integer ops.

pub mod insert;
pub mod recurrent;
pub mod weights;

pub use insert::{insert_qdq, Calibration, QuantizeOptions, DEFAULT_MIN_SQNR_DB};
pub use weights::WeightGranularity;
