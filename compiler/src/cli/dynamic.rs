//! Quantization without calibration: `--mode dynamic|weight-only`, `--block-size`, and the
//! plan's calibration-free precisions (`int8-dynamic`, `int8-weight-only`,
//! `int4-weight-only`), applied to MatMul and Gemm after the pass pipeline (see
//! `qlift_passes::quantize::dynamic`).

use super::output::note;
use super::{plan, QuantArgs};
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use qlift::WeightBits;
use qlift_ir::{Graph, NodeOp};
use qlift_passes::quantize::{quantize_products, Scheme};

/// How MatMul and Gemm are quantized.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// int8 activations and weights from --calib ranges (every op the policy allows).
    Static,
    /// Activations quantized per call from their own range (u8), int8 weights per column;
    /// MatMul and Gemm only, no --calib (ONNX Runtime's quantize_dynamic).
    Dynamic,
    /// f32 activations, int8 or int4 (--weight-bits) weights per column or per
    /// --block-size block; MatMul and Gemm only, no --calib.
    WeightOnly,
}

/// The scheme `--mode` gives every MatMul and Gemm the plan does not decide.
fn base_scheme(q: &QuantArgs) -> Option<Scheme> {
    match q.mode {
        Mode::Static => None,
        Mode::Dynamic => Some(Scheme::Dynamic),
        Mode::WeightOnly => Some(Scheme::WeightOnly {
            bits: q.ptq.weight_bits.0,
            block_size: q.block_size,
        }),
    }
}

/// Refuses flag combinations that mean nothing: calibration for a calibration-free mode,
/// int4 dynamic weights, a block size without weight-only quantization.
pub(crate) fn check(q: &QuantArgs) -> Result<()> {
    match q.mode {
        Mode::Static => {}
        _ if !q.calib.is_empty() => bail!(
            "--mode {} quantizes without calibration: drop --calib (a --plan can mix static int8 nodes with int8-dynamic and weight-only ones)",
            mode_name(q.mode)
        ),
        Mode::Dynamic if q.ptq.weight_bits.0 != WeightBits::Eight => {
            bail!("--mode dynamic has int8 weights; --weight-bits 4 is for --mode weight-only (or static W4A8)")
        }
        _ => {}
    }
    if q.block_size != 0 && q.mode != Mode::WeightOnly && q.plan.is_none() {
        bail!("--block-size is for --mode weight-only");
    }
    Ok(())
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Static => "static",
        Mode::Dynamic => "dynamic",
        Mode::WeightOnly => "weight-only",
    }
}

/// Rewrites the MatMul and Gemm nodes `--mode` and the plan choose; returns how many.
pub(crate) fn apply(graph: &mut Graph, q: &QuantArgs) -> Result<usize> {
    check(q)?;
    let (plan, _) = plan::from_args(q)?;
    let base = base_scheme(q);
    if base.is_none() && !plan.has_schemes() {
        return Ok(0);
    }
    let count = quantize_products(graph, |name, kind| plan.scheme_of(name, kind.name(), base))
        .map_err(anyhow::Error::msg)
        .context("dynamic / weight-only quantization")?;
    let float = graph
        .node_ids()
        .filter(|&id| match &graph.node(id).op {
            NodeOp::Apply(op) => {
                matches!(op.kind, qlift_ir::OpKind::MatMul | qlift_ir::OpKind::Gemm)
            }
            _ => false,
        })
        .count();
    note!("quantized {count} MatMul/Gemm without calibration ({float} float products left: activations by activations, run-time weights, excluded)");
    Ok(count)
}
