//! The quantization-control flags every quantizing subcommand shares (`--plan`,
//! `--exclude`, `--target-sqnr`, `--emit-plan`; declared in [`super::QuantArgs`]): the plan
//! they make, the fallback search, and the plan written back.

use super::output::note;
use super::{progress_bar, QuantArgs};
use anyhow::{Context, Result};
use qlift::fallback::{meet_target, Goal, Step};
use qlift::{QuantPlan, QuantizeOptions, Quantized};
use qlift_ir::{Graph, Tensor};
use qlift_passes::quantize::Outcome;

/// Most dB `--target-sqnr` takes: f32 itself keeps about 150 dB.
const MAX_TARGET_DB: f64 = 150.0;

/// A clap value parser for `--target-sqnr`: a number of dB in `[0, MAX_TARGET_DB]`.
/// `--max-drop`: percentage points of top-1 accuracy, 0 to 100.
pub(crate) fn parse_points(s: &str) -> Result<f64, String> {
    let points: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of percentage points"))?;
    if !(0.0..=100.0).contains(&points) {
        return Err(format!("{points} points is out of range: from 0 to 100"));
    }
    Ok(points)
}

pub(crate) fn parse_db(s: &str) -> Result<f64, String> {
    let db: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of dB"))?;
    if !(0.0..=MAX_TARGET_DB).contains(&db) {
        return Err(format!(
            "{db} dB is out of range: from 0 to {MAX_TARGET_DB}"
        ));
    }
    Ok(db)
}

/// The plan `--plan` and `--exclude` make (`--exclude` over the file), and how errors of
/// its entries name it.
pub(crate) fn from_args(q: &QuantArgs) -> Result<(QuantPlan, String)> {
    let mut plan = match &q.plan {
        Some(path) => qlift::load_plan(path)?,
        None => QuantPlan::default(),
    };
    for name in &q.exclude {
        plan.exclude(name, "--exclude");
    }
    let source = match (&q.plan, q.exclude.is_empty()) {
        (Some(path), true) => path.display().to_string(),
        (Some(path), false) => format!("{} with --exclude", path.display()),
        (None, _) => "--exclude".to_string(),
    };
    Ok((plan, source))
}

/// Notes the flags a plan's default section overrides, when they were changed from their
/// defaults (the plan is more specific than the command line, and wins).
pub(crate) fn note_overrides(q: &QuantArgs, plan: &QuantPlan) {
    let base = QuantizeOptions::default();
    let overridden = [
        (
            "--method",
            plan.default.method.is_some() && q.method != base.method,
        ),
        (
            "--activations",
            plan.activations.is_some() && q.activations.name() != "u8",
        ),
        (
            "--weights",
            plan.default.weights.is_some() && !matches!(q.weights, super::Weights::PerChannel),
        ),
        (
            "--min-sqnr",
            plan.default.min_sqnr_db.is_some_and(|p| p != q.min_sqnr_db)
                && q.min_sqnr_db != base.min_sqnr_db,
        ),
        (
            "--outliers",
            plan.outliers.is_some() && !matches!(q.outliers, super::OutliersArg::Int16),
        ),
    ];
    for (flag, yes) in overridden {
        if yes {
            note!(
                "note: the plan's default section sets what {flag} sets; the plan's value is used"
            );
        }
    }
}

/// After quantizing: the fallback search for `--target-sqnr`, a summary of what stayed
/// float when the user controls it, and `--emit-plan`.
pub(crate) fn finish(
    graph: &Graph,
    q: &QuantArgs,
    opts: &QuantizeOptions,
    calibration: &[Tensor],
    quantized: Quantized,
) -> Result<Quantized> {
    if quantized.samples == 0 {
        return Ok(quantized);
    }
    let goal = match (q.target_sqnr_db, q.max_drop) {
        (Some(db), _) => Some(Goal::Sqnr(db)),
        (None, Some(points)) => {
            let path = q
                .calib_labels
                .as_deref()
                .context("--max-drop needs --calib-labels")?;
            let labels = qlift::npy::read_npy(path)
                .with_context(|| format!("--calib-labels {}", path.display()))?
                .to_i64_vec()
                .map_err(|e| anyhow::anyhow!("--calib-labels {}: {e}", path.display()))?;
            Some(Goal::MaxDrop { points, labels })
        }
        (None, None) => None,
    };
    let quantized = match &goal {
        Some(goal) => {
            let found = meet_target(
                graph,
                quantized,
                opts,
                calibration,
                goal,
                &qlift::Limits::default(),
                &|step: &Step| {
                    let accuracy = step
                        .accuracy
                        .map(|a| format!(", top-1 {a:.1}%"))
                        .unwrap_or_default();
                    progress_bar().set_message(format!(
                        "fallback: {} {} {} → {:.1} dB{accuracy}",
                        if step.raised { "up to" } else { "back to" },
                        step.precision.name(),
                        step.node,
                        step.output_sqnr_db
                    ));
                },
            )
            .context(if q.max_drop.is_some() {
                "--max-drop"
            } else {
                "--target-sqnr"
            })?;
            progress_bar().finish_and_clear();
            let raised: Vec<&str> = found
                .quantized
                .plan
                .nodes
                .iter()
                .filter(|(_, e)| {
                    e.note
                        .as_deref()
                        .is_some_and(|n| n.starts_with("raised by"))
                })
                .map(|(k, _)| k.as_str())
                .collect();
            if let Some((fp32, before, after)) = found.accuracy {
                note!(
                    "--max-drop: top-1 on the calibration samples {before:.2}% → {after:.2}% (fp32 {fp32:.2}%)"
                );
            }
            let target = match goal {
                Goal::Sqnr(db) => format!("--target-sqnr {db}"),
                Goal::MaxDrop { points, .. } => format!("--max-drop {points}"),
            };
            note!(
                "{target}: output SQNR {:.1} dB → {:.1} dB on the calibration data ({}), {} of {} units int8, {} int16, {} raised{}",
                found.initial_sqnr_db,
                found.output_sqnr_db,
                if found.reached { "reached" } else { "NOT reached: every unit is float" },
                found.int8_units,
                found.int8_units + found.int16_units + found.float_units,
                found.int16_units,
                raised.len(),
                if raised.is_empty() { String::new() } else { format!(": {}", raised.join(", ")) }
            );
            found.quantized
        }
        None => quantized,
    };
    if q.plan.is_some() || !q.exclude.is_empty() || goal.is_some() {
        let count =
            |f: fn(&Outcome) -> bool| quantized.decisions.iter().filter(|d| f(&d.outcome)).count();
        note!(
            "units: {} int8, {} int16, {} int16 by the outlier check, {} fp32 by the plan, {} fp32 by the outlier check{}",
            count(|o| matches!(o, Outcome::Int8 | Outcome::Int8ByBound { .. })),
            count(|o| matches!(o, Outcome::Int16 { .. })),
            count(|o| matches!(o, Outcome::Int16BySqnr { .. })),
            count(|o| *o == Outcome::Fp32ByPlan),
            count(|o| matches!(o, Outcome::Fp32BySqnr { .. })),
            match count(|o| matches!(o, Outcome::Int8ByBound { .. })) {
                0 => String::new(),
                n => format!(
                    " ({n} int16 asked, int8 kept: their i32 accumulator could wrap at 16 bits)"
                ),
            }
        );
    }
    if let Some(path) = &q.emit_plan {
        let json = path.extension().is_some_and(|e| e == "json");
        let text = if json {
            quantized.plan.to_json()
        } else {
            format!(
                "# qlift quantization plan: apply it with --plan to reproduce this quantization.\n{}",
                quantized.plan.to_toml()
            )
        };
        super::emit(Some(path), &text)?;
        note!("wrote the plan to {}", path.display());
    }
    Ok(quantized)
}
