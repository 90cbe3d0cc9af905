//! Calibration and Q/DQ insertion: run the float graph over calibration samples, choose
//! every activation's range, and put a QuantizeLinear → DequantizeLinear pair on the values
//! integer ops read and write (ONNX Runtime's QDQ format). The result is a valid float model
//! (an exported QDQ model ONNX Runtime runs) that `fuse-requant` lowers to integer ops; ops
//! with no integer lowering stay float between a DequantizeLinear and a QuantizeLinear (fp32
//! islands), so every model still compiles.
//!
//! # What is quantized (the policy)
//!
//! Quantization pays where the multiply-accumulates are, and hurts where values carry
//! numerics that 8 bits cannot hold (an attention mask of −3.4e38 next to scores of ±10, a
//! LayerNorm variance that is a small difference of large numbers, a Softmax input). So:
//!
//! - **Anchors**: Conv, Gemm and MatMul whose weights (operand 1) are constants compute in
//!   integers (int8 weights per output channel, 8-bit activations per tensor). A MatMul
//!   followed by the Add of a constant per-column bias, its only use, is one unit: the bias
//!   joins the accumulator (`fuse-matmul-bias`), the sum is quantized once.
//! - **Integer-preserving ops** (Add, Concat, average pools, Relu, Clip, and the ops that
//!   only move values: MaxPool, Flatten, Reshape, Transpose, Squeeze, Unsqueeze) compute in
//!   integers only when *every* operand is already a quantized activation: a residual Add of
//!   two quantized branches, a pool after a quantized Conv. Never when an operand is a float
//!   value or a constant: then they stay float, and so do masks, variances, epsilons and
//!   everything a float op (Softmax, LayerNormalization, Div, Sqrt, Exp, Erf, Gelu...)
//!   computes or reads.
//! - **Stays float**: every other op, and a MatMul of two activations (attention's Q·Kᵀ and
//!   P·V), whose operands come from float islands in the models that have them.
//!
//! - **Outliers go to int16, else keep an op float**: every activation an op would read or
//!   write in 8 bits must keep at least [`QuantizeOptions::min_sqnr_db`] (25 dB by default)
//!   of signal to quantization noise under its chosen range, estimated from its calibration
//!   histogram (`calibrate::quantization_noise`). A well-spread tensor keeps about 40 dB in
//!   8 bits (the CNNs here: 32–45 dB on every value); one whose range is set by rare
//!   outliers far beyond its bulk falls below 25 dB, and quantizing it wrecks what follows.
//!   A Conv, Gemm or MatMul that fails computes on 16-bit activations instead when they
//!   keep the bound in 16 bits (about 48 dB more) and `wide.rs` proves its accumulator fits
//!   i32 ([`Outliers::Int16`], [`Outcome::Int16BySqnr`]), narrowing its input to symmetric
//!   int16 ("int16 (15-bit)", about 42 dB more) when the asymmetric bound does not fit;
//!   otherwise, and for every other op, it stays float ([`Outliers::Fp32`]: always). An
//!   integer op never reads such a layer's outlier in 8 bits, and float ops next to an
//!   int16 layer read its 16-bit value. In all-MiniLM-L6-v2 the outliers are BERT's known
//!   ones: the GELU outputs feeding the FFN down-projections and the attention-output
//!   LayerNorms (19–25 dB in 8 bits). With the check and int16, all 36 of its Linear layers
//!   compute in integers: 26 int8, the 4 FFN up-projections reading those LayerNorms in
//!   int16 (5 with sequence-128 calibration), the down-projections of layers 0–3 in int16
//!   (15-bit) (their accumulator bound, 3.0–3.3e9 with asymmetric int16 inputs, is
//!   1.53–1.69e9 with symmetric ones), and those of layers 4–5, whose GELU inputs hold in 8
//!   bits and only their results fail, as 8-bit products into 16-bit results
//!   (`int16-result`); the sentence embeddings keep cosine 0.9956 (min 0.9926) to fp32 on
//!   the corpus test set (0.9957, min 0.9931, with those two in int16 (15-bit); 0.9950,
//!   min 0.9922, with the down-projections float). `--smooth` (`smooth.rs`) brings the
//!   inputs of all of them to 8 bits. With
//!   the check and fp32 (before int16 layers): 26 in int8, cosine 0.995; without the check
//!   (`min_sqnr_db` 0), 0.861. ONNX Runtime's int8 of the same layers
//!   gives 0.941, 0.990 with the six down-projections excluded by hand. magika's Conv (22.4
//!   dB in 8 bits, 70.6 in 16) computes in int16: top-1 agreement with fp32 stays 100%.
//!
//! A float value feeding an anchor is quantized at that boundary with its calibrated range
//! (the QuantizeLinear ONNX Runtime would put there too); an anchor's result that only feeds
//! float ops is dequantized once.

use crate::calibrate::{
    choose_range, quant_params, quantization_noise, ActivationScheme, CalibrationMethod,
    TensorStats,
};
use crate::quantize::plan::{Precision, ResolvedPlan};
use crate::quantize::weights::{quantize_weights, WeightBits, WeightGranularity};
use crate::quantize::wide::{wide_layers, WideLayers};
use crate::quantize::PtqOptions;
use crate::PassError;
use qlift_ir::{
    Attrs, DType, Graph, NodeId, NodeOp, Op, OpKind, QuantParams, Tensor, TensorData, TensorType,
    Value, ValueId,
};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// How to quantize a model after calibration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantizeOptions {
    /// How activation ranges are chosen from the statistics.
    pub method: CalibrationMethod,
    /// Asymmetric uint8 (the default, as ONNX Runtime) or symmetric int8 activations.
    pub scheme: ActivationScheme,
    /// The least signal-to-quantization-noise ratio (dB) an activation may have under its
    /// chosen range for an op to read or write it in 8 bits, estimated from its calibration
    /// histogram; an op whose activation falls below stays float (see the policy). 0
    /// quantizes everything the policy allows.
    pub min_sqnr_db: f64,
    /// One weight scale per output channel (the default) or per tensor.
    pub weights: WeightGranularity,
    /// What becomes of a Conv, Gemm or MatMul the outlier check refuses in 8 bits: int16
    /// (the default) when its activations keep `min_sqnr_db` in 16 bits and its accumulator
    /// provably fits i32, else fp32; or fp32 at once.
    pub outliers: Outliers,
    /// The white paper's post-training steps around range setting (CLE, bias correction,
    /// AdaRound) and the weights' bit width.
    pub ptq: PtqOptions,
}

impl Default for QuantizeOptions {
    /// MinMax ranges and asymmetric uint8 activations: ONNX Runtime's defaults.
    fn default() -> QuantizeOptions {
        QuantizeOptions {
            method: CalibrationMethod::MinMax,
            scheme: ActivationScheme::AsymmetricU8,
            min_sqnr_db: DEFAULT_MIN_SQNR_DB,
            weights: WeightGranularity::PerChannel,
            outliers: Outliers::Int16,
            ptq: PtqOptions::default(),
        }
    }
}

/// Where a layer goes when 8 bits cannot hold its activations (see
/// [`QuantizeOptions::outliers`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outliers {
    /// int16 activations where they hold and the accumulator proof succeeds, else fp32.
    #[default]
    Int16,
    /// fp32 (the behaviour before int16 layers existed).
    Fp32,
}

impl Outliers {
    /// The spelling in plans and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Outliers::Int16 => "int16",
            Outliers::Fp32 => "fp32",
        }
    }
}

impl std::str::FromStr for Outliers {
    type Err = String;

    fn from_str(s: &str) -> Result<Outliers, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "int16" => Ok(Outliers::Int16),
            "fp32" => Ok(Outliers::Fp32),
            _ => Err(format!("unknown outliers `{s}`; expected int16 or fp32")),
        }
    }
}

/// See [`QuantizeOptions::min_sqnr_db`].
pub const DEFAULT_MIN_SQNR_DB: f64 = 25.0;

/// Statistics of every f32 value of a graph, by value name, gathered over calibration
/// samples in one pass.
#[derive(Default)]
pub struct Calibration {
    stats: HashMap<String, TensorStats>,
    samples: usize,
}

impl Calibration {
    /// Runs `graph` (in float) on one batch of inputs and adds what it computed to the
    /// statistics. Call once per batch; the interpreter keeps one batch in memory at a time.
    pub fn observe(&mut self, graph: &Graph, inputs: &[Tensor]) -> Result<(), PassError> {
        let trace = qlift_ir::interp::run_traced(graph, inputs)?;
        self.observe_values(
            trace
                .values
                .iter()
                .map(|(id, tensor)| (graph.value(*id).name.as_str(), tensor.as_ref())),
            trace.batch,
        );
        Ok(())
    }

    /// Adds values computed elsewhere (by compiled code) for one batch of `batch` samples:
    /// `values` gives each f32 value's name and tensor, as [`Self::observe`] would see them.
    /// The values' statistics are independent and updated in parallel: binning them was
    /// most of the CPU time of calibrating the standard CNNs on one thread.
    pub fn observe_values<'a>(
        &mut self,
        values: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
        batch: usize,
    ) {
        let mut names = HashSet::new();
        let mut work: Vec<(&str, TensorStats, &[f32])> = Vec::new();
        for (name, tensor) in values {
            let TensorData::F32(values) = tensor.data() else {
                continue;
            };
            if names.insert(name) {
                let stats = self.stats.remove(name).unwrap_or_default();
                work.push((name, stats, values));
            } else if let Some(seen) = work.iter_mut().find(|w| w.0 == name) {
                // A name listed twice (never from the tracer): its values in turn.
                seen.1.observe(values);
            }
        }
        work.par_iter_mut()
            .for_each(|(_, stats, values)| stats.observe(values));
        for (name, stats, _) in work {
            self.stats.insert(name.to_string(), stats);
        }
        self.samples += batch;
    }

    /// NaN and ±Inf values seen (and left out of the ranges).
    pub fn non_finite(&self) -> u64 {
        self.stats.values().map(TensorStats::non_finite).sum()
    }

    /// How many samples were observed.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The statistics of the value named `name`.
    pub fn stats(&self, name: &str) -> Option<&TensorStats> {
        self.stats.get(name)
    }
}

/// Ops whose operands and result are quantized. Their float forms with DequantizeLinear
/// operands and a QuantizeLinear result are what `fuse-requant` lowers.
fn quantizable(op: &Op) -> bool {
    use OpKind::*;
    matches!(
        op.kind,
        Conv | Gemm | MatMul | Add | AveragePool | GlobalAveragePool | Concat | Relu | Clip
    ) || passes_through(op)
}

/// Quantizable ops that only move or select values: their result keeps the operand's
/// parameters, so the QuantizeLinear after them cancels against the DequantizeLinear before.
/// Resize in nearest mode copies elements (without a crop window, whose fill value is
/// real); interpolating modes compute new values and stay float.
fn passes_through(op: &Op) -> bool {
    use OpKind::*;
    let nearest_copy = || {
        op.attrs.str("mode") == Ok("nearest")
            && op.attrs.str("coordinate_transformation_mode") != Ok("tf_crop_and_resize")
    };
    matches!(
        op.kind,
        MaxPool | Flatten | Reshape | Transpose | Squeeze | Unsqueeze
    ) || (op.kind == Resize && nearest_copy())
}

/// Whether operand `slot` of `op` carries the data (quantized with it), as opposed to
/// Resize's roi and scales, which stay f32.
fn data_operand(op: &Op, slot: usize) -> bool {
    !(op.kind == OpKind::Resize && slot > 0)
}

/// Where a weight's output channels are for operand `slot` of `op`, if it is a weight
/// (quantized per channel, symmetric int8) rather than an activation.
pub(super) fn weight_axis(op: &Op, slot: usize) -> Option<usize> {
    match (op.kind, slot) {
        (OpKind::Conv, 1) => Some(0),
        (OpKind::Gemm, 1) => Some(if op.attrs.int("transB").ok()? != 0 {
            0
        } else {
            1
        }),
        (OpKind::MatMul, 1) => Some(1),
        _ => None,
    }
}

/// Whether a product's result is only a model output: it then stays unquantized, and
/// `fuse-requant` computes it from the integer accumulator (`DQ(QConv → i32)`), so the
/// model's output loses no precision to an 8-bit step.
pub(super) fn reads_accumulator(g: &Graph, op: &Op, result: ValueId) -> bool {
    matches!(op.kind, OpKind::Conv | OpKind::Gemm | OpKind::MatMul)
        && matches!(op.fused_activation(), Ok(None))
        && g.outputs().contains(&result)
        && g.users(result).is_empty()
}

/// Returns `graph` with Q/DQ pairs inserted from `calibration` (which must come from this
/// graph), every node under `opts`. Graph input and output names stay: an output's
/// DequantizeLinear takes its name.
pub fn insert_qdq(
    graph: &Graph,
    calibration: &Calibration,
    opts: &QuantizeOptions,
) -> Result<Graph, PassError> {
    Ok(insert_qdq_planned(graph, calibration, &ResolvedPlan::uniform(opts))?.graph)
}

/// What `insert-qdq` decided for one node the policy lets compute in integers (a quantized
/// unit: an anchor with its bias Add, or an integer-preserving op).
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The node's name (a plan's node key).
    pub node: String,
    /// Its op.
    pub op: OpKind,
    /// Integer, or float and why.
    pub outcome: Outcome,
    /// The values the unit computes, by name in `graph` (a MatMul's bias Add's result for a
    /// MatMul with its bias): what a per-layer report measures for it.
    pub writes: Vec<String>,
}

/// Whether a unit was quantized, and if not why.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// It computes in integers.
    Int8,
    /// It computes in integers on 16-bit activations (the plan raised it to int16).
    Int16 {
        /// Its input is symmetric int16 ("int16 (15-bit)": zero point 0, at most 32768 in
        /// magnitude), because the asymmetric accumulator bound exceeds i32 (see `wide.rs`).
        symmetric: bool,
        /// Only its result is 16-bit: it reads 8-bit activations (`int16-result`).
        result_only: bool,
    },
    /// The plan asked int16, but its accumulator could reach `bound` in magnitude, past
    /// i32, and its input narrowed to symmetric int16 did not fit either (see `wide.rs`):
    /// it computes in int8.
    Int8ByBound {
        /// The accumulator bound at (asymmetric) 16 bits.
        bound: f64,
    },
    /// The plan keeps it float.
    Fp32ByPlan,
    /// The outlier check refused it in 8 bits (activation `value` would keep `sqnr_db`),
    /// and it computes on 16-bit activations instead ([`Outliers::Int16`]), or writes a
    /// 16-bit result from 8-bit ones when only its result failed.
    Int16BySqnr {
        /// The activation that failed the 8-bit check.
        value: String,
        /// Its estimated SQNR in 8 bits.
        sqnr_db: f64,
        /// Its input is symmetric int16, as for [`Outcome::Int16`].
        symmetric: bool,
        /// Only its result is 16-bit, as for [`Outcome::Int16`].
        result_only: bool,
    },
    /// The outlier check kept it float: activation `value` would keep `sqnr_db` in 8 bits
    /// (in 16 bits when int16 was tried).
    Fp32BySqnr {
        /// The activation that failed the check.
        value: String,
        /// Its estimated SQNR in 8 bits.
        sqnr_db: f64,
    },
}

/// What [`insert_qdq_planned`] returns: the graph and what it decided for each unit.
#[derive(Clone, Debug)]
pub struct Inserted {
    /// The graph with Q/DQ pairs.
    pub graph: Graph,
    /// The units the policy allowed in integers, in graph order, and what became of them.
    pub decisions: Vec<Decision>,
}

/// [`insert_qdq`] with each node's settings from a resolved plan (see `plan.rs`): a node
/// whose precision is fp32 stays float, and each node's activations and weights are
/// quantized with its own method, weight granularity and outlier check.
pub fn insert_qdq_planned(
    graph: &Graph,
    calibration: &Calibration,
    plan: &ResolvedPlan,
) -> Result<Inserted, PassError> {
    let mut decisions = Vec::new();
    let mut g = graph.clone();
    let order = g.topo_order()?;
    let wide = wide_layers(&g, plan, calibration)?;
    let mut ins = Inserting {
        params: HashMap::new(),
        dequantized: HashMap::new(),
        source_of: HashMap::new(),
        wide_dq: HashMap::new(),
        wide_params: HashMap::new(),
        wide: &wide,
    };
    // Quantized weights by (constant, channel axis, granularity): a weight several ops read
    // is quantized once (one name, one copy).
    let mut weights: HashMap<(ValueId, usize, WeightGranularity, WeightBits), ValueId> =
        HashMap::new();
    // Bias Adds that finish a MatMul anchor (`fuse-matmul-bias`), with their MatMul node.
    let mut bias_adds: HashMap<NodeId, NodeId> = HashMap::new();
    for id in order {
        let NodeOp::Apply(op) = g.node(id).op.clone() else {
            continue;
        };
        if !quantizable(&op) || g.node(id).outputs.iter().any(|v| v.ty.dtype != DType::F32) {
            read_sixteen_bit(&mut g, id, &ins.source_of, &ins.wide_dq)?;
            continue;
        }
        let operands = g.node_inputs(id);
        let anchor = is_anchor(&g, &op, &operands);
        let bias_add = bias_adds.contains_key(&id);
        // A bias Add is quantized with its MatMul's settings.
        let settings = plan.settings(bias_adds.get(&id).copied().unwrap_or(id));
        let int16 = wide.nodes.contains(&id);
        // It reads 16-bit activations (an `int16-result` layer reads 8 bits: its sum has no
        // proof at 16 bits, even where another layer reads its input in 16).
        let reads16 = wide.reads_16_bits(id);
        // The outlier check of an int16 layer measures its 16-bit activations at 16 bits
        // (the scheme each is quantized with; an `int16-result` layer's input is 8-bit).
        let check_opts = |v| {
            if int16 && wide.values.contains(&v) {
                wide.sixteen_bit_for(v, &settings.opts)
            } else {
                settings.opts
            }
        };
        let opts = &settings.opts;
        // A product of two activations stays float.
        if matches!(op.kind, OpKind::Conv | OpKind::Gemm | OpKind::MatMul) && !anchor {
            read_sixteen_bit(&mut g, id, &ins.source_of, &ins.wide_dq)?;
            continue;
        }
        // An integer-preserving op computes in integers only when every operand already is a
        // quantized activation (see the module documentation).
        if !anchor
            && !bias_add
            && !operands
                .iter()
                .flatten()
                .all(|v| ins.source_of.contains_key(v))
        {
            read_sixteen_bit(&mut g, id, &ins.source_of, &ins.wide_dq)?;
            continue;
        }
        let result = qlift_ir::ValueId {
            node: id,
            output: 0,
        };
        let decision = |g: &Graph, outcome, writes: ValueId| Decision {
            node: g.node(id).name.clone(),
            op: op.kind,
            outcome,
            writes: vec![g.value(writes).name.clone()],
        };
        // Nor when an operand is an int16 layer's outlier, which 8 bits cannot hold: it stays
        // float and reads the value unrounded (the outlier check's verdict on that value).
        let outlier = operands.iter().flatten().find_map(|v| {
            let s = ins.source_of.get(v)?;
            wide.short8.get(s).map(|&db| (g.value(*s).name.clone(), db))
        });
        if let (false, false, Some((value, sqnr_db))) = (anchor, bias_add, outlier) {
            decisions.push(decision(&g, Outcome::Fp32BySqnr { value, sqnr_db }, result));
            read_float_sources(&mut g, id, &ins.source_of)?;
            continue;
        }
        // fp32 by the plan, or left float here for the calibration-free rewrite (dynamic,
        // weight-only); int4 and int16 are static integer precisions like int8.
        let float_here =
            settings.precision == Precision::Fp32 || settings.precision.scheme(0).is_some();
        if !bias_add && float_here {
            decisions.push(decision(&g, Outcome::Fp32ByPlan, result));
            read_float_sources(&mut g, id, &ins.source_of)?;
            continue;
        }
        // Activations that 8 bits cannot hold (outliers far beyond the bulk) keep the op float
        // (a bias Add was checked with its MatMul, whose result it is).
        let written = if anchor && op.kind == OpKind::MatMul {
            bias_add_after(&g, result).map_or(result, |add| ValueId {
                node: add,
                output: 0,
            })
        } else {
            result
        };
        // Operands a quantized producer wrote pass (it checked them), except an int16
        // layer's outliers, checked again from their float source.
        let read = operands.iter().enumerate().filter_map(|(slot, &v)| {
            let v = v?;
            let check = match ins.source_of.get(&v) {
                Some(s) if wide.short8.contains_key(s) => *s,
                Some(_) => return None,
                None => v,
            };
            (data_operand(&op, slot)
                && weight_axis(&op, slot).is_none()
                && g.const_value(check).is_none())
            .then_some(check)
        });
        let mut checked = read.chain((!reads_accumulator(&g, &op, result)).then_some(written));
        if !bias_add {
            let short = checked.find_map(|v| {
                short_of_8_bits(&g, v, calibration, &check_opts(v)).map(|db| (v, db))
            });
            if let Some((v, sqnr_db)) = short {
                let value = g.value(v).name.clone();
                decisions.push(decision(
                    &g,
                    Outcome::Fp32BySqnr { value, sqnr_db },
                    written,
                ));
                read_float_sources(&mut g, id, &ins.source_of)?;
                continue;
            }
            let outcome = match wide.refused.get(&id) {
                _ if int16 => match wide.by_sqnr.get(&id) {
                    Some((value, sqnr_db)) => Outcome::Int16BySqnr {
                        value: value.clone(),
                        sqnr_db: *sqnr_db,
                        symmetric: wide.narrowed.contains(&id),
                        result_only: wide.result_only.contains(&id),
                    },
                    None => Outcome::Int16 {
                        symmetric: wide.narrowed.contains(&id),
                        result_only: wide.result_only.contains(&id),
                    },
                },
                Some(&bound) => Outcome::Int8ByBound { bound },
                None => Outcome::Int8,
            };
            decisions.push(decision(&g, outcome, written));
        }
        if op.kind == OpKind::MatMul && anchor {
            if let Some(add) = bias_add_after(&g, result) {
                // The Add's result is quantized instead of the MatMul's.
                for (slot, v) in operands.iter().enumerate() {
                    if let (Some(v), Some(axis)) = (*v, weight_axis(&op, slot)) {
                        if g.const_value(v).is_some() {
                            let dq = quantized_weight_once(&mut g, &mut weights, v, axis, opts)?;
                            g.set_node_input(id, slot, Some(dq))?;
                        }
                    } else if let Some(v) = *v {
                        let dq =
                            quantized_activation(&mut g, v, calibration, opts, &mut ins, reads16)?;
                        g.set_node_input(id, slot, Some(dq))?;
                    }
                }
                bias_adds.insert(add, id);
                continue;
            }
        }
        if bias_add {
            // Its operands are the MatMul (kept float between the DQs and this Add) and the
            // constant bias: only the result is quantized.
            let p = activation_params(&g, result, calibration, opts)?;
            ins.quantize(&mut g, result, p, calibration, opts, true)?;
            continue;
        }
        for (slot, v) in operands.iter().enumerate() {
            let Some(v) = *v else { continue };
            if !data_operand(&op, slot) {
                continue;
            }
            // Already the DequantizeLinear of a quantized value (its producer was quantizable).
            if g.value_type(v).dtype != DType::F32 || ins.source_of.contains_key(&v) {
                continue;
            }
            let replacement = match (weight_axis(&op, slot), g.const_value(v).cloned()) {
                (Some(axis), Some(_)) => {
                    quantized_weight_once(&mut g, &mut weights, v, axis, opts)?
                }
                (_, Some(_))
                    if (op.kind, slot) == (OpKind::Conv, 2)
                        || (op.kind, slot) == (OpKind::Gemm, 2) =>
                {
                    quantized_bias(&mut g, id, v, &operands)?.unwrap_or(v)
                }
                _ => quantized_activation(&mut g, v, calibration, opts, &mut ins, reads16)?,
            };
            g.set_node_input(id, slot, Some(replacement))?;
        }
        if reads_accumulator(&g, &op, result) {
            continue;
        }
        let first = g.node_inputs(id).first().copied().flatten();
        let source = first.and_then(|x| ins.source_of.get(&x).copied());
        let p = match source.and_then(|x| ins.params.get(&x)) {
            Some(p) if passes_through(&op) => p.clone(),
            _ => activation_params(&g, result, calibration, opts)?,
        };
        ins.quantize(&mut g, result, p, calibration, opts, true)?;
    }
    g.remove_dead_nodes();
    // The graph is qlift's own construction: one that does not verify is a bug here.
    qlift_ir::verify(&g).map_err(|e| {
        PassError::Bug(format!(
            "insert-qdq built a graph that does not verify: {e}"
        ))
    })?;
    Ok(Inserted {
        graph: g,
        decisions,
    })
}

/// Makes node `id`, which stays float, read the float values its quantized operands stand
/// for instead of their DequantizeLinear. A float unit between a DequantizeLinear and a
/// QuantizeLinear (its producer and its consumer quantized) would otherwise be lowered to
/// an integer op by `fuse-requant`, which quantizes f32 weights it finds in such a chain (the
/// rule serves imported QDQ models); reading the unrounded value also spares the float unit
/// its operand's 8-bit step.
fn read_float_sources(
    g: &mut Graph,
    id: NodeId,
    source_of: &HashMap<ValueId, ValueId>,
) -> Result<(), PassError> {
    for (slot, v) in g.node_inputs(id).into_iter().enumerate() {
        if let Some(&source) = v.and_then(|v| source_of.get(&v)) {
            g.set_node_input(id, slot, Some(source))?;
        }
    }
    Ok(())
}

/// Makes node `id`, which stays float, read the 16-bit DequantizeLinear of each operand an
/// int16 layer reads or writes instead of its 8-bit one (which only integer ops need): a
/// float op next to an int16 layer (a residual Add, a GELU) sees its 16-bit value.
fn read_sixteen_bit(
    g: &mut Graph,
    id: NodeId,
    source_of: &HashMap<ValueId, ValueId>,
    wide_dq: &HashMap<ValueId, ValueId>,
) -> Result<(), PassError> {
    for (slot, v) in g.node_inputs(id).into_iter().enumerate() {
        let dq16 = v.and_then(|v| wide_dq.get(source_of.get(&v)?).filter(|&&dq| dq != v));
        if let Some(&dq16) = dq16 {
            g.set_node_input(id, slot, Some(dq16))?;
        }
    }
    Ok(())
}

/// The SQNR activation `v` would keep in 8 bits under its chosen range when that is less
/// than `opts.min_sqnr_db`, `None` when it holds (values without statistics pass: their
/// own check fails later).
pub(super) fn short_of_8_bits(
    g: &Graph,
    v: ValueId,
    calibration: &Calibration,
    opts: &QuantizeOptions,
) -> Option<f64> {
    if opts.min_sqnr_db <= 0.0 {
        return None;
    }
    let stats = calibration.stats(&g.value(v).name)?;
    let (lo, hi) = choose_range(stats, opts.method, opts.scheme);
    let noise = quantization_noise(stats, lo, hi, opts.scheme);
    let error = noise.rounding + noise.clipping;
    let db = if error > 0.0 {
        10.0 * (noise.signal / error).log10()
    } else {
        f64::INFINITY
    };
    if std::env::var_os("QLIFT_DEBUG_SQNR").is_some() {
        eprintln!("sqnr {db:7.2} dB  {}", g.value(v).name);
    }
    (db < opts.min_sqnr_db).then_some(db)
}

/// Whether `op` is an anchor of integer computation: a product whose weights are constant.
pub(super) fn is_anchor(g: &Graph, op: &Op, operands: &[Option<ValueId>]) -> bool {
    matches!(op.kind, OpKind::Conv | OpKind::Gemm | OpKind::MatMul)
        && operands
            .get(1)
            .copied()
            .flatten()
            .is_some_and(|w| g.const_value(w).is_some())
}

/// The Add of a constant per-column bias that is the only use of MatMul result `m` (and
/// not itself a model output nor carrying its own clamp), if there is one.
pub(super) fn bias_add_after(g: &Graph, m: ValueId) -> Option<NodeId> {
    if g.outputs().contains(&m) {
        return None;
    }
    let [(add, _)] = g.users(m)[..] else {
        return None;
    };
    let NodeOp::Apply(op) = &g.node(add).op else {
        return None;
    };
    if op.kind != OpKind::Add
        || g.outputs().contains(&ValueId {
            node: add,
            output: 0,
        })
    {
        return None;
    }
    let other = g.node_inputs(add).into_iter().flatten().find(|&v| v != m)?;
    let bias = g.const_value(other)?;
    let columns = *g.value_type(m).shape.dims().last()?;
    let per_column =
        bias.shape().iter().rev().skip(1).all(|&d| d == 1) && Some(bias.len()) == columns.fixed();
    (per_column && bias.dtype() == DType::F32).then_some(add)
}

/// `DQ(w_q)` of constant weights `v` whose output channels lie on `axis`, made once per
/// (weights, axis) and shared by every op that reads them.
fn quantized_weight_once(
    g: &mut Graph,
    cache: &mut HashMap<(ValueId, usize, WeightGranularity, WeightBits), ValueId>,
    v: ValueId,
    axis: usize,
    opts: &QuantizeOptions,
) -> Result<ValueId, PassError> {
    let key = (v, axis, opts.weights, opts.ptq.weight_bits);
    if let Some(&dq) = cache.get(&key) {
        return Ok(dq);
    }
    let w = g
        .const_value(v)
        .cloned()
        .ok_or_else(|| PassError::Bug("weights are not constant".into()))?;
    let dq = quantized_weights(g, v, &w, axis, opts)?;
    cache.insert(key, dq);
    Ok(dq)
}

/// The maps `insert-qdq` keeps of the pairs it inserted, and the int16 layers.
struct Inserting<'a> {
    /// Parameters chosen per value, so that pass-through ops can inherit their operand's.
    params: HashMap<ValueId, (DType, QuantParams)>,
    dequantized: HashMap<ValueId, ValueId>,
    /// The other way round: the value each inserted DequantizeLinear stands for.
    source_of: HashMap<ValueId, ValueId>,
    /// The 16-bit DequantizeLinear of each value an int16 layer reads or writes.
    wide_dq: HashMap<ValueId, ValueId>,
    wide_params: HashMap<ValueId, (DType, QuantParams)>,
    wide: &'a WideLayers,
}

impl Inserting<'_> {
    /// Quantizes `v` with 8-bit parameters `p`: `Q → DQ` after it, read by every consumer
    /// (and with `outputs_too` by the graph outputs). A value an int16 layer reads or
    /// writes is quantized to 16 bits instead, with its 16-bit calibrated range; the int16
    /// layers and the graph outputs read that, every other consumer an 8-bit `Q → DQ` after
    /// it (a Requantize from i16 once lowered). Returns the 8-bit DequantizeLinear.
    fn quantize(
        &mut self,
        g: &mut Graph,
        v: ValueId,
        p: (DType, QuantParams),
        calibration: &Calibration,
        opts: &QuantizeOptions,
        outputs_too: bool,
    ) -> Result<ValueId, PassError> {
        let dq = if self.wide.values.contains(&v) {
            // A value-moving op keeps its 16-bit operand's parameters (its Q/DQ then cancel).
            let moved = g.node_inputs(v.node).first().copied().flatten();
            let inherited = moved
                .and_then(|m| self.source_of.get(&m))
                .and_then(|source| self.wide_params.get(source))
                .filter(|_| self.wide.moves.contains(&v.node));
            let p16 = match inherited {
                Some(p16) => p16.clone(),
                None => activation_params(g, v, calibration, &self.wide.sixteen_bit_for(v, opts))?,
            };
            let dq16 = insert_q_dq(g, v, &p16, outputs_too)?;
            let dq8 = insert_q_dq(g, dq16, &p, false)?;
            for (user, slot) in g.users(dq8) {
                let reads_wide = self.wide.reads_16_bits(user) || self.wide.moves.contains(&user);
                if reads_wide && slot == 0 {
                    g.set_node_input(user, slot, Some(dq16))?;
                }
            }
            self.wide_params.insert(v, p16);
            self.wide_dq.insert(v, dq16);
            self.source_of.insert(dq16, v);
            dq8
        } else {
            insert_q_dq(g, v, &p, outputs_too)?
        };
        self.params.insert(v, p);
        self.dequantized.insert(v, dq);
        self.source_of.insert(dq, v);
        Ok(dq)
    }
}

/// `DQ(Q(v))` of activation `v` with its calibrated parameters, made once per value; the
/// 16-bit one for an int16 layer (`int16`) when `v` has one.
fn quantized_activation(
    g: &mut Graph,
    v: ValueId,
    calibration: &Calibration,
    opts: &QuantizeOptions,
    maps: &mut Inserting,
    int16: bool,
) -> Result<ValueId, PassError> {
    let pick = |maps: &Inserting, dq8: ValueId| match maps.wide_dq.get(&v) {
        Some(&dq16) if int16 => dq16,
        _ => dq8,
    };
    if let Some(&dq) = maps.dequantized.get(&v) {
        return Ok(pick(maps, dq));
    }
    // Already the DequantizeLinear of a quantized value: quantizing `v` for its first
    // consumer made every other consumer read it (three projections of one LayerNorm).
    if maps.source_of.contains_key(&v) {
        return Ok(v);
    }
    let p = activation_params(g, v, calibration, opts)?;
    // A float value quantized for its consumer stays what a model output reads: the output
    // keeps full precision (a streaming model's state output feeds the next call's state).
    let dq = maps.quantize(g, v, p, calibration, opts, false)?;
    Ok(pick(maps, dq))
}

/// The activation parameters of value `v` from its statistics (a constant's from its
/// values: its exact range).
pub(super) fn activation_params(
    g: &Graph,
    v: ValueId,
    calibration: &Calibration,
    opts: &QuantizeOptions,
) -> Result<(DType, QuantParams), PassError> {
    let name = &g.value(v).name;
    let own;
    let stats = match g.const_value(v) {
        Some(t) => {
            let mut s = TensorStats::new();
            s.observe(t.as_f32().map_err(PassError::Bug)?);
            own = s;
            &own
        }
        None => calibration.stats(name).ok_or_else(|| {
            PassError::Unsupported(format!("no calibration statistics for value `{name}`"))
        })?,
    };
    let method = if g.const_value(v).is_some() {
        CalibrationMethod::MinMax
    } else {
        opts.method
    };
    let (lo, hi) = choose_range(stats, method, opts.scheme);
    let (scale, zero_point) = quant_params(lo, hi, opts.scheme);
    Ok((
        opts.scheme.dtype(),
        QuantParams::per_tensor(scale, zero_point),
    ))
}

/// Inserts `Q → DQ` after value `v` and makes every consumer (and with `outputs_too` the
/// graph outputs) read the DequantizeLinear. A graph output keeps its name on it.
fn insert_q_dq(
    g: &mut Graph,
    v: ValueId,
    (dtype, q): &(DType, QuantParams),
    outputs_too: bool,
) -> Result<ValueId, PassError> {
    let name = g.value(v).name.clone();
    let shape = g.value_type(v).shape.clone();
    let is_output = outputs_too && g.outputs().contains(&v);
    let users = g.users(v);
    let q_ty = TensorType::quantized(*dtype, shape.clone(), q.clone());
    let qid = g.add_node(
        &format!("{name}_QuantizeLinear"),
        Op::new(OpKind::QuantizeLinear, Attrs::new()),
        &[Some(v)],
        vec![Value {
            name: format!("{name}_QuantizeLinear_Output"),
            ty: q_ty,
        }],
    )?;
    let qv = ValueId {
        node: qid,
        output: 0,
    };
    let dq_name = if is_output {
        name.clone()
    } else {
        format!("{name}_DequantizeLinear_Output")
    };
    let dq = g.add_op(
        &format!("{name}_DequantizeLinear"),
        Op::new(OpKind::DequantizeLinear, Attrs::new()),
        &[Some(qv)],
        &[&dq_name],
    )?[0];
    if is_output {
        g.node_mut(v.node).outputs[v.output].name = format!("{name}_QuantizeLinear_Input");
    }
    for (user, slot) in users {
        g.set_node_input(user, slot, Some(dq))?;
    }
    if is_output {
        let outputs = g
            .outputs()
            .iter()
            .map(|&o| if o == v { dq } else { o })
            .collect();
        g.set_outputs(outputs)?;
    }
    Ok(dq)
}

/// `DQ(w_q)` for constant weights `w`: symmetric int8 (or int4), per output channel or per
/// tensor.
fn quantized_weights(
    g: &mut Graph,
    v: ValueId,
    w: &Arc<Tensor>,
    axis: usize,
    opts: &QuantizeOptions,
) -> Result<ValueId, PassError> {
    let name = g.value(v).name.clone();
    let (tensor, quant) = quantize_weights(
        w.as_f32().map_err(PassError::Bug)?,
        w.shape(),
        axis,
        opts.weights,
        opts.ptq.weight_bits,
    )
    .map_err(|e| PassError::Unsupported(format!("weights `{name}`: {e}")))?;
    let q = g.add_const(
        &fresh(g, &format!("{name}_quantized")),
        Arc::new(tensor),
        Some(quant),
    );
    let dq = fresh(g, &format!("{name}_DequantizeLinear_Output"));
    Ok(g.add_op(
        &format!("{name}_DequantizeLinear"),
        Op::new(OpKind::DequantizeLinear, Attrs::new()),
        &[Some(q)],
        &[&dq],
    )?[0])
}

/// `base`, or `base_1`, `base_2`... if a value already has that name (a bias or weight
/// quantized twice, for two consumers with different input scales or channel axes).
pub(super) fn fresh(g: &Graph, base: &str) -> String {
    let mut name = base.to_string();
    let mut n = 1;
    while g.find_value(&name).is_some() {
        name = format!("{base}_{n}");
        n += 1;
    }
    name
}

/// `DQ(b_i32)` for the constant bias of a Conv or Gemm whose input and weights are already
/// quantized: scale `s_x · s_w[c]`, zero point 0 (ONNX Runtime's QDQ bias). `None` when the
/// bias is not one value per output channel or does not fit i32 (it then stays float).
fn quantized_bias(
    g: &mut Graph,
    node: qlift_ir::NodeId,
    b: ValueId,
    operands: &[Option<ValueId>],
) -> Result<Option<ValueId>, PassError> {
    let (Some(Some(_)), Some(_)) = (operands.first(), operands.get(1)) else {
        return Ok(None);
    };
    let x_dq = g.node_inputs(node)[0].ok_or_else(|| PassError::Bug("input vanished".into()))?;
    let Some(xq) = g
        .node_inputs(x_dq.node)
        .first()
        .copied()
        .flatten()
        .and_then(|x| g.value_type(x).quant.clone())
    else {
        return Ok(None);
    };
    let w_dq = g.node_inputs(node)[1].ok_or_else(|| PassError::Bug("weights vanished".into()))?;
    let w_q = g.node_inputs(w_dq.node).first().copied().flatten();
    let Some(wq) = w_q.and_then(|w| g.value_type(w).quant.clone()) else {
        return Ok(None);
    };
    let real = g
        .const_value(b)
        .ok_or_else(|| PassError::Bug("bias is not constant".into()))?
        .as_f32()
        .map_err(PassError::Bug)?
        .to_vec();
    let channels = wq.scale.len();
    if real.len() != channels && wq.axis.is_some() {
        return Ok(None);
    }
    let scales: Vec<f32> = (0..real.len())
        .map(|c| xq.scale[0] * wq.channel(c).0)
        .collect();
    let q: Option<Vec<i32>> = real
        .iter()
        .zip(&scales)
        .map(|(&r, &s)| {
            let v = (r as f64 / s as f64).round_ties_even();
            (v.abs() < i32::MAX as f64).then_some(v as i32)
        })
        .collect();
    let Some(q) = q else { return Ok(None) };
    let name = g.value(b).name.clone();
    let quant = QuantParams::per_axis(0, scales.clone(), vec![0; scales.len()]);
    let tensor =
        Tensor::new(DType::I32, vec![real.len()], TensorData::I32(q)).map_err(PassError::Bug)?;
    let c = g.add_const(
        &fresh(g, &format!("{name}_quantized")),
        Arc::new(tensor),
        Some(quant),
    );
    let dq = fresh(g, &format!("{name}_DequantizeLinear_Output"));
    Ok(Some(
        g.add_op(
            &format!("{name}_DequantizeLinear"),
            Op::new(OpKind::DequantizeLinear, Attrs::new()),
            &[Some(c)],
            &[&dq],
        )?[0],
    ))
}
