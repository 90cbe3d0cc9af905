//! Post-training quantization: weight quantization, and (with calibration statistics) the
//! insertion of QuantizeLinear/DequantizeLinear pairs that the `fuse-requant` pass lowers
//! to integer ops; around it, the white paper's steps (Nagel et al. 2021, "A White Paper
//! on Neural Network Quantization", §4): cross-layer equalization and bias absorption
//! before range setting ([`cle`]), AdaRound ([`adaround`]) and bias correction
//! ([`bias_correction`]) after it; and SmoothQuant's migration of activation outliers into
//! the weights before range setting ([`smooth`]).

pub mod adaround;
pub mod bias_correction;
pub mod cle;
pub mod dynamic;
pub mod insert;
pub mod layer;
pub mod plan;
pub mod recurrent;
pub mod replay;
pub mod smooth;
pub mod weights;
mod wide;

pub use adaround::AdaRoundOptions;
pub use bias_correction::BiasCorrection;
pub use dynamic::{quantize_products, Scheme};
pub use insert::{
    insert_qdq, insert_qdq_planned, Calibration, Decision, Inserted, Outcome, Outliers,
    QuantizeOptions, DEFAULT_MIN_SQNR_DB,
};
pub use plan::{resolve, ImportedNames, PlanEntry, PlanError, Precision, QuantPlan, ResolvedPlan};
pub use replay::{InterpReplay, Replay};
pub use weights::{WeightBits, WeightGranularity};

/// The post-training steps besides range setting, all off by default (nearest rounding of
/// int8 weights, as ONNX Runtime).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PtqOptions {
    /// SmoothQuant's outlier migration with this strength α (pass `smooth`, before
    /// calibration; [`smooth::DEFAULT_ALPHA`] is the paper's).
    pub smooth: Option<f32>,
    /// Cross-layer equalization with bias absorption (pass `equalize`, before calibration).
    pub cle: bool,
    /// Correct the expected output shift weight quantization causes (pass
    /// `bias-correction`, after `insert-qdq`).
    pub bias_correction: Option<BiasCorrection>,
    /// Learn each weight's rounding (pass `adaround`, after `insert-qdq`).
    pub adaround: Option<AdaRoundOptions>,
    /// int8 or int4 weights.
    pub weight_bits: WeightBits,
}

impl PtqOptions {
    /// Whether a step needs the calibration data more than once (it is then held in memory).
    pub fn replays(&self) -> bool {
        self.smooth.is_some()
            || self.cle
            || self.bias_correction.is_some()
            || self.adaround.is_some()
    }
}
