//! The white paper's post-training steps on the command line (shared by every subcommand
//! that quantizes): `--smooth[=ALPHA]`, `--cle`, `--bias-correction`, `--adaround[=SECONDS]`, `--weight-bits`.

use qlift::{AdaRoundOptions, BiasCorrection, PtqOptions, WeightBits};
use std::time::Duration;

/// Flags of the post-training steps.
#[derive(clap::Args, Clone, Default)]
pub(crate) struct PtqArgs {
    /// SmoothQuant before calibration (pass `smooth`): per-channel outliers of LayerNorm
    /// (and constant-Mul) outputs move into the MatMul/Gemm weights reading them, with
    /// migration strength ALPHA in [0, 1] (0.5 without a value).
    #[arg(long, value_name = "ALPHA", num_args = 0..=1, require_equals = true,
          default_missing_value = "0.5", value_parser = parse_alpha)]
    pub(crate) smooth: Option<f32>,
    /// Cross-layer equalization with bias absorption before calibration (pass `equalize`):
    /// what per-tensor weights of depthwise models need.
    #[arg(long)]
    pub(crate) cle: bool,
    /// Correct the bias shift quantized weights cause: from calibration data (empirical) or
    /// from the model's BatchNorm statistics (analytic).
    #[arg(long = "bias-correction", value_enum, value_name = "HOW")]
    pub(crate) bias_correction: Option<BiasCorrectionArg>,
    /// Learn each weight's rounding (AdaRound), within SECONDS of wall time for all layers
    /// (60 without a value).
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, require_equals = true,
          default_missing_value = "60", value_parser = parse_seconds)]
    pub(crate) adaround: Option<Duration>,
    /// Weight bits of Conv/Gemm/MatMul: 8 (int8) or 4 (int4 weights, int8 activations).
    #[arg(long = "weight-bits", value_name = "BITS", default_value = "8", value_parser = parse_bits)]
    pub(crate) weight_bits: WeightBitsArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum BiasCorrectionArg {
    /// E[W_q x] − E[W x] from the calibration data.
    Empirical,
    /// From BatchNorm statistics (no data).
    Analytic,
}

/// `--weight-bits`.
#[derive(Clone, Copy, Default)]
pub(crate) struct WeightBitsArg(pub(crate) WeightBits);

fn parse_bits(s: &str) -> Result<WeightBitsArg, String> {
    match s.trim() {
        "8" => Ok(WeightBitsArg(WeightBits::Eight)),
        "4" => Ok(WeightBitsArg(WeightBits::Four)),
        _ => Err(format!("`{s}` is not a weight width: 8 or 4")),
    }
}

fn parse_alpha(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(a) if (0.0..=1.0).contains(&a) => Ok(a),
        _ => Err(format!("`{s}` is not a migration strength in [0, 1]")),
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        return Err(format!(
            "{v} is out of range: more than 0 and at most 86400 seconds"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

impl PtqArgs {
    /// The library's options.
    pub(crate) fn options(&self) -> PtqOptions {
        PtqOptions {
            smooth: self.smooth,
            cle: self.cle,
            bias_correction: self.bias_correction.map(|b| match b {
                BiasCorrectionArg::Empirical => BiasCorrection::Empirical,
                BiasCorrectionArg::Analytic => BiasCorrection::Analytic,
            }),
            adaround: self.adaround.map(|budget| AdaRoundOptions {
                budget,
                ..Default::default()
            }),
            weight_bits: self.weight_bits.0,
        }
    }
}
