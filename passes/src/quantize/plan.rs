//! A quantization plan: what the user decides, per node and per op type, about how
//! `insert-qdq` quantizes a model, in a file (TOML or JSON) that qlift also writes back
//! (`qlift report --emit-plan`, `--target-sqnr`).
//!
//! ```toml
//! version = 1
//!
//! [default]                    # every node, unless an op type or a node says otherwise
//! precision = "int8"           # int8, fp32, int16 (16-bit activations), int4 (int4 weights),
//!                              # int8-dynamic, int8-weight-only, int4-weight-only
//! block_size = 32              # weight-only: K elements per weight scale (0: per column)
//! method = "minmax"            # minmax, percentile[:P], mse or entropy
//! weights = "per-channel"      # per-channel or per-tensor
//! activations = "u8"           # u8 or i8: the whole model's activation type (default only)
//! min_sqnr_db = 25.0           # the outlier check of insert-qdq (0 turns it off)
//! outliers = "int16"           # a product failing it: int16 (fp32 if 16 bits fail too), or fp32
//!
//! [op_types.MatMul]            # every MatMul node
//! method = "percentile:99.99"
//!
//! [nodes."/encoder/layer.5/output/dense/MatMul"]
//! precision = "fp32"           # the same as `exclude = true`
//! note = "why: free text, kept when qlift writes the plan back"
//! ```
//!
//! **Resolution**: for each node, a node entry beats an op-type entry, which beats the
//! default section, which beats the options the plan is applied with (command-line flags,
//! API arguments); each field is resolved on its own (a node entry that sets only `method`
//! keeps its op type's `weights`).
//!
//! **What the settings act on**: `precision` and `min_sqnr_db` decide whether a node the
//! policy of [`super::insert`] would put in integers does so (`fp32` keeps it float, as
//! everything after it that needs quantized operands); `method` chooses the range of every
//! activation the node quantizes (its result and the float operands it reads; a value
//! already quantized by its producer keeps its parameters); `weights` is the granularity of
//! its constant weights. A MatMul and the bias Add that finishes it are one unit, decided by
//! the MatMul's settings. The calibration-free precisions (`int8-dynamic`,
//! `int8-weight-only`, `int4-weight-only`, with `block_size`) act on MatMul and Gemm with
//! constant weights only (see [`super::dynamic`]): `insert-qdq` keeps such a node float and
//! [`super::dynamic::quantize_products`] rewrites it after lowering.
//!
//! **Names**: node names are those of the graph `insert-qdq` sees, after the rewrites
//! (`qlift dump MODEL --after fuse-activations`). A node of the imported model that the
//! rewrites fused into another (a BatchNormalization or Relu into its Conv) names the node
//! it became part of. An entry that names no node or op type of the model is an error that
//! lists close matches: a misspelled exclusion silently quantizing the layer it was meant to
//! protect is the failure a plan exists to prevent, and a plan is written for one model.

use crate::calibrate::{ActivationScheme, CalibrationMethod};
use crate::quantize::dynamic::Scheme;
use crate::quantize::insert::{Decision, Outcome, Outliers, QuantizeOptions};
use crate::quantize::weights::{WeightBits, WeightGranularity};
use qlift_ir::{Graph, NodeId, NodeOp, OpKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The plan format's version; a file may say `version = 1` and nothing else is accepted.
pub const PLAN_VERSION: u32 = 1;

/// The number types a node computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Float: the node stays between a DequantizeLinear and a QuantizeLinear, or float
    /// altogether when its neighbours are.
    Fp32,
    /// 8-bit activations and int8 weights (what the policy allows).
    Int8,
    /// 8-bit activations and int4 weights (W4A8, `WeightBits::Four`) for this node.
    Int4,
    /// 16-bit activations (the values a Conv, Gemm or MatMul reads and writes, 65535 steps
    /// over the same calibrated ranges) and int8 weights; its 8-bit neighbours read its
    /// result through a Requantize. On other ops the same as int8.
    Int16,
    /// 8-bit activations in and a 16-bit result: a Conv, Gemm or MatMul whose input holds
    /// in 8 bits but whose result does not (a BERT FFN down-projection's, once `smooth`
    /// flattened its input), computed as a u8 × i8 product requantized to int16. On other
    /// ops the same as int8.
    Int16Result,
    /// Activations quantized per call from their own range, int8 weights (no calibration).
    Int8Dynamic,
    /// f32 activations, int8 weights (per column or per block).
    Int8WeightOnly,
    /// f32 activations, int4 weights (per column or per block).
    Int4WeightOnly,
}

impl Precision {
    /// The spelling plans use.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
            Precision::Int4 => "int4",
            Precision::Int16 => "int16",
            Precision::Int16Result => "int16-result",
            Precision::Int8Dynamic => "int8-dynamic",
            Precision::Int8WeightOnly => "int8-weight-only",
            Precision::Int4WeightOnly => "int4-weight-only",
        }
    }

    /// The calibration-free scheme of the precision, with weight blocks of `block_size`
    /// (0: per column); `None` for fp32 and static int8.
    pub fn scheme(self, block_size: usize) -> Option<Scheme> {
        let weight_only = |bits| Scheme::WeightOnly { bits, block_size };
        match self {
            Precision::Fp32
            | Precision::Int8
            | Precision::Int4
            | Precision::Int16
            | Precision::Int16Result => None,
            Precision::Int8Dynamic => Some(Scheme::Dynamic),
            Precision::Int8WeightOnly => Some(weight_only(WeightBits::Eight)),
            Precision::Int4WeightOnly => Some(weight_only(WeightBits::Four)),
        }
    }

    fn parse(s: &str) -> Result<Precision, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" => Ok(Precision::Fp32),
            "int8" => Ok(Precision::Int8),
            "int4" => Ok(Precision::Int4),
            "int16" => Ok(Precision::Int16),
            "int16-result" => Ok(Precision::Int16Result),
            "int8-dynamic" => Ok(Precision::Int8Dynamic),
            "int8-weight-only" => Ok(Precision::Int8WeightOnly),
            "int4-weight-only" => Ok(Precision::Int4WeightOnly),
            _ => Err(format!("unknown precision `{s}`; expected {PRECISIONS}")),
        }
    }
}

/// The precisions a plan accepts, for error messages.
const PRECISIONS: &str =
    "fp32, int8, int16, int16-result, int4, int8-dynamic, int8-weight-only or int4-weight-only";

/// What one section of a plan sets; `None` leaves a field to the less specific level.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanEntry {
    /// Integer or float.
    pub precision: Option<Precision>,
    /// How the ranges of the activations the node quantizes are chosen.
    pub method: Option<CalibrationMethod>,
    /// Weight scales per output channel or per tensor.
    pub weights: Option<WeightGranularity>,
    /// The least SQNR (dB) an 8-bit activation of the node may keep (0: no check).
    pub min_sqnr_db: Option<f64>,
    /// Weight-only precisions: K elements per weight scale (0: one per column).
    pub block_size: Option<usize>,
    /// Free text (why the entry is there); written back, never interpreted.
    pub note: Option<String>,
}

impl PlanEntry {
    /// An entry that keeps a node float, with a note saying why.
    pub fn fp32(note: impl Into<String>) -> PlanEntry {
        PlanEntry {
            precision: Some(Precision::Fp32),
            note: Some(note.into()),
            ..PlanEntry::default()
        }
    }

    /// `self` over `base`: the fields `self` sets replace `base`'s.
    fn over(&self, base: &PlanEntry) -> PlanEntry {
        PlanEntry {
            precision: self.precision.or(base.precision),
            method: self.method.or(base.method),
            weights: self.weights.or(base.weights),
            min_sqnr_db: self.min_sqnr_db.or(base.min_sqnr_db),
            block_size: self.block_size.or(base.block_size),
            note: self.note.clone().or_else(|| base.note.clone()),
        }
    }
}

/// A quantization plan (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuantPlan {
    /// What every node gets unless a more specific entry says otherwise.
    pub default: PlanEntry,
    /// The model's activation type (one for the whole model).
    pub activations: Option<ActivationScheme>,
    /// Where the outlier check's refusals go (one policy for the whole model).
    pub outliers: Option<Outliers>,
    /// Entries by op type (`Conv`, `MatMul`...).
    pub op_types: BTreeMap<String, PlanEntry>,
    /// Entries by node name.
    pub nodes: BTreeMap<String, PlanEntry>,
}

/// A plan that cannot be read or does not fit the model: bad input. Names the entry (as a
/// path in the file, `nodes."conv1"`) when the problem is in one.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanError {
    /// The entry at fault (`default`, `op_types.Conv`, `nodes."x"`), empty for the file.
    pub entry: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entry.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "entry {}: {}", self.entry, self.message)
        }
    }
}

impl std::error::Error for PlanError {}

fn plan_error(entry: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError {
        entry: entry.into(),
        message: message.into(),
    }
}

/// The file's shape, read by serde before the values are checked (so that every value
/// error names its entry). Unknown keys are refused: a misspelled `precison` is an error,
/// not a setting silently ignored.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default: Option<RawDefault>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    op_types: BTreeMap<String, RawEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    nodes: BTreeMap<String, RawEntry>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    precision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exclude: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weights: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_sqnr_db: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    block_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    precision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weights: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    activations: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_sqnr_db: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outliers: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    block_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// The spelling of a weight granularity in plans and on the command line.
pub fn weights_name(w: WeightGranularity) -> &'static str {
    match w {
        WeightGranularity::PerChannel => "per-channel",
        WeightGranularity::PerTensor => "per-tensor",
    }
}

/// How a plan note names an int16 layer: "int16 (15-bit)" when its input is symmetric
/// int16 (see `wide.rs`).
fn int16_name(symmetric: bool) -> &'static str {
    if symmetric {
        "int16 (15-bit)"
    } else {
        "int16"
    }
}

/// The spelling of an activation scheme in plans and on the command line.
pub fn activations_name(a: ActivationScheme) -> &'static str {
    match a {
        ActivationScheme::AsymmetricU8 => "u8",
        ActivationScheme::SymmetricI8 => "i8",
        ActivationScheme::AsymmetricI16 => "i16",
        ActivationScheme::SymmetricI16 => "i16-symmetric",
    }
}

fn parse_weights(s: &str) -> Result<WeightGranularity, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "per-channel" => Ok(WeightGranularity::PerChannel),
        "per-tensor" => Ok(WeightGranularity::PerTensor),
        _ => Err(format!(
            "unknown weights `{s}`; expected per-channel or per-tensor"
        )),
    }
}

fn parse_activations(s: &str) -> Result<ActivationScheme, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "u8" => Ok(ActivationScheme::AsymmetricU8),
        "i8" => Ok(ActivationScheme::SymmetricI8),
        _ => Err(format!("unknown activations `{s}`; expected u8 or i8")),
    }
}

fn check_min_sqnr(db: Option<f64>) -> Result<Option<f64>, String> {
    match db {
        Some(db) if !db.is_finite() || db < 0.0 => Err(format!(
            "min_sqnr_db {db} must be a finite number of dB, 0 or more"
        )),
        _ => Ok(db),
    }
}

impl RawEntry {
    fn check(self, entry: &str) -> Result<PlanEntry, PlanError> {
        let bad = |m: String| plan_error(entry, m);
        let mut precision = self
            .precision
            .as_deref()
            .map(Precision::parse)
            .transpose()
            .map_err(bad)?;
        match (self.exclude, precision) {
            (Some(true), Some(p)) if p != Precision::Fp32 => {
                return Err(bad(format!(
                    "`exclude = true` and `precision = \"{}\"` contradict each other",
                    p.name()
                )))
            }
            (Some(true), _) => precision = Some(Precision::Fp32),
            _ => {}
        }
        Ok(PlanEntry {
            precision,
            method: self
                .method
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(bad)?,
            weights: self
                .weights
                .as_deref()
                .map(parse_weights)
                .transpose()
                .map_err(bad)?,
            min_sqnr_db: check_min_sqnr(self.min_sqnr_db).map_err(bad)?,
            block_size: self.block_size,
            note: self.note,
        })
    }

    fn from_entry(e: &PlanEntry) -> RawEntry {
        RawEntry {
            precision: e.precision.map(|p| p.name().to_string()),
            exclude: None,
            method: e.method.map(|m| m.to_string()),
            weights: e.weights.map(|w| weights_name(w).to_string()),
            min_sqnr_db: e.min_sqnr_db,
            block_size: e.block_size,
            note: e.note.clone(),
        }
    }
}

/// `nodes."x"` / `op_types."x"`: how an error names an entry (quoted as TOML keys are).
fn entry_path(section: &str, key: &str) -> String {
    format!("{section}.{key:?}")
}

impl QuantPlan {
    /// Parses a plan: JSON when the text starts with `{`, TOML otherwise. Errors name the
    /// entry, or the line and column for a syntax error or an unknown key.
    pub fn parse(text: &str) -> Result<QuantPlan, PlanError> {
        let raw: RawPlan = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| plan_error("", format!("JSON: {e}")))?
        } else {
            toml::from_str(text).map_err(|e| plan_error("", format!("TOML: {e}")))?
        };
        if let Some(v) = raw.version.filter(|&v| v != PLAN_VERSION) {
            return Err(plan_error(
                "version",
                format!("plan version {v}; this qlift reads version {PLAN_VERSION}"),
            ));
        }
        let d = raw.default.unwrap_or_default();
        let default = RawEntry {
            precision: d.precision,
            exclude: None,
            method: d.method,
            weights: d.weights,
            min_sqnr_db: d.min_sqnr_db,
            block_size: d.block_size,
            note: d.note,
        }
        .check("default")?;
        let activations = d
            .activations
            .as_deref()
            .map(parse_activations)
            .transpose()
            .map_err(|m| plan_error("default", m))?;
        let outliers = d
            .outliers
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|m| plan_error("default", m))?;
        let mut op_types = BTreeMap::new();
        for (key, e) in raw.op_types {
            let path = entry_path("op_types", &key);
            if key.parse::<OpKind>().is_err() {
                let kinds: Vec<&str> = OpKind::ALL.iter().map(|k| k.name()).collect();
                return Err(plan_error(
                    path,
                    format!(
                        "`{key}` is not an op type qlift knows{}",
                        did_you_mean(&key, kinds.iter().copied())
                    ),
                ));
            }
            op_types.insert(key, e.check(&path)?);
        }
        let mut nodes = BTreeMap::new();
        for (key, e) in raw.nodes {
            let path = entry_path("nodes", &key);
            nodes.insert(key, e.check(&path)?);
        }
        Ok(QuantPlan {
            default,
            activations,
            outliers,
            op_types,
            nodes,
        })
    }

    fn raw(&self) -> RawPlan {
        let d = RawEntry::from_entry(&self.default);
        RawPlan {
            version: Some(PLAN_VERSION),
            default: Some(RawDefault {
                precision: d.precision,
                method: d.method,
                weights: d.weights,
                activations: self.activations.map(|a| activations_name(a).to_string()),
                min_sqnr_db: d.min_sqnr_db,
                outliers: self.outliers.map(|o| o.name().to_string()),
                block_size: d.block_size,
                note: d.note,
            }),
            op_types: self
                .op_types
                .iter()
                .map(|(k, e)| (k.clone(), RawEntry::from_entry(e)))
                .collect(),
            nodes: self
                .nodes
                .iter()
                .map(|(k, e)| (k.clone(), RawEntry::from_entry(e)))
                .collect(),
        }
    }

    /// The calibration-free scheme the plan gives node `node` of type `op_type` (node entry
    /// over op type over default), `base` (the command line's `--mode`) where none of them
    /// sets a precision; `block_size` likewise, over `base`'s.
    pub fn scheme_of(&self, node: &str, op_type: &str, base: Option<Scheme>) -> Option<Scheme> {
        let none = PlanEntry::default();
        let e = self
            .nodes
            .get(node)
            .unwrap_or(&none)
            .over(self.op_types.get(op_type).unwrap_or(&none))
            .over(&self.default);
        let base_block = match base {
            Some(Scheme::WeightOnly { block_size, .. }) => block_size,
            _ => 0,
        };
        let block = e.block_size.unwrap_or(base_block);
        match e.precision {
            None => base.map(|s| match s {
                Scheme::WeightOnly { bits, .. } => Scheme::WeightOnly {
                    bits,
                    block_size: block,
                },
                s => s,
            }),
            Some(p) => p.scheme(block),
        }
    }

    /// Whether any entry asks for a calibration-free precision.
    pub fn has_schemes(&self) -> bool {
        std::iter::once(&self.default)
            .chain(self.op_types.values())
            .chain(self.nodes.values())
            .any(|e| e.precision.is_some_and(|p| p.scheme(0).is_some()))
    }

    /// The plan as TOML, which [`QuantPlan::parse`] reads back to an equal plan.
    pub fn to_toml(&self) -> String {
        // A plan of strings, numbers and tables always serializes.
        toml::to_string(&self.raw()).unwrap_or_default()
    }

    /// The plan as JSON, which [`QuantPlan::parse`] reads back to an equal plan.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.raw()).unwrap_or_default()
    }

    /// Whether the plan sets nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == QuantPlan::default()
    }

    /// The options `base` (command-line flags, API arguments) becomes under this plan's
    /// default section, which is more specific than they are.
    pub fn defaults_over(&self, base: &QuantizeOptions) -> QuantizeOptions {
        QuantizeOptions {
            method: self.default.method.unwrap_or(base.method),
            scheme: self.activations.unwrap_or(base.scheme),
            min_sqnr_db: self.default.min_sqnr_db.unwrap_or(base.min_sqnr_db),
            weights: self.default.weights.unwrap_or(base.weights),
            outliers: self.outliers.unwrap_or(base.outliers),
            ..*base
        }
    }

    /// Adds `entry` for `name`, over whatever entry the name already has.
    pub fn set_node(&mut self, name: &str, entry: PlanEntry) {
        let merged = entry.over(self.nodes.get(name).unwrap_or(&PlanEntry::default()));
        self.nodes.insert(name.to_string(), merged);
    }

    /// Adds `entry` for op type `name`, over whatever entry it already has.
    pub fn set_op_type(&mut self, name: &str, entry: PlanEntry) {
        let merged = entry.over(self.op_types.get(name).unwrap_or(&PlanEntry::default()));
        self.op_types.insert(name.to_string(), merged);
    }

    /// The plan that reproduces what `insert-qdq` did under this plan and `base` options,
    /// whatever options it is later applied with: every setting in its default section, each
    /// node the outlier check kept float (or raised to int16) an explicit fp32 (int16) entry
    /// (with the measurement in its note), and the check itself off (`min_sqnr_db = 0`), its outcome being recorded.
    /// Node entries that name an imported node fused into another (`imported`) are written
    /// under the name of the node it became part of, so that the check's entries merge
    /// with them.
    pub fn frozen(
        &self,
        base: &QuantizeOptions,
        decisions: &[Decision],
        imported: &ImportedNames,
    ) -> QuantPlan {
        let mut plan = self.with_defaults(base);
        let nodes = std::mem::take(&mut plan.nodes);
        for (key, entry) in nodes {
            let canonical = match imported.nodes.get(&key) {
                Some((_, Some(into))) => into.clone(),
                _ => key,
            };
            plan.set_node(&canonical, entry);
        }
        let limit = |node: &str| -> f64 {
            let e = plan.nodes.get(node);
            e.and_then(|e| e.min_sqnr_db)
                .or_else(|| plan.default.min_sqnr_db)
                .unwrap_or(base.min_sqnr_db)
        };
        let kept: Vec<(String, PlanEntry)> = decisions
            .iter()
            .filter_map(|d| match &d.outcome {
                Outcome::Fp32BySqnr { value, sqnr_db } => Some((
                    d.node.clone(),
                    PlanEntry::fp32(format!(
                        "kept float by the outlier check: `{value}` would keep {sqnr_db:.1} dB in 8 bits (under {} dB)",
                        limit(&d.node)
                    )),
                )),
                Outcome::Int16BySqnr {
                    value,
                    sqnr_db,
                    symmetric,
                    result_only,
                } => Some((
                    d.node.clone(),
                    PlanEntry {
                        precision: Some(if *result_only {
                            Precision::Int16Result
                        } else {
                            Precision::Int16
                        }),
                        note: Some(format!(
                            "{} by the outlier check: `{value}` would keep {sqnr_db:.1} dB in 8 bits (under {} dB)",
                            if *result_only { "int16 result" } else { int16_name(*symmetric) },
                            limit(&d.node)
                        )),
                        ..PlanEntry::default()
                    },
                )),
                _ => None,
            })
            .collect();
        for (node, entry) in kept {
            plan.set_node(&node, entry);
        }
        plan.default.min_sqnr_db = Some(0.0);
        for e in plan.op_types.values_mut().chain(plan.nodes.values_mut()) {
            e.min_sqnr_db = None;
        }
        plan
    }

    /// Keeps `name` float: every node of that op type when qlift knows an op of that name
    /// (`Conv`, `MatMul`), else the node of that name (what `--exclude` does).
    pub fn exclude(&mut self, name: &str, note: &str) {
        if name.parse::<OpKind>().is_ok() {
            self.set_op_type(name, PlanEntry::fp32(note));
        } else {
            self.set_node(name, PlanEntry::fp32(note));
        }
    }

    /// This plan with every setting of `base` written into its default section: the plan
    /// then means the same whatever options it is applied with.
    pub fn with_defaults(&self, base: &QuantizeOptions) -> QuantPlan {
        let opts = self.defaults_over(base);
        let mut plan = self.clone();
        plan.default.precision = Some(plan.default.precision.unwrap_or(Precision::Int8));
        plan.default.method = Some(opts.method);
        plan.default.weights = Some(opts.weights);
        plan.default.min_sqnr_db = Some(opts.min_sqnr_db);
        plan.activations = Some(opts.scheme);
        plan.outliers = Some(opts.outliers);
        plan
    }
}

/// Where the nodes of the model as imported went in the graph a plan is applied to, so
/// that a plan may name them: the node of the applied graph each became part of (`None`
/// when it was folded into constants and nothing runs for it), and its op type.
#[derive(Clone, Debug, Default)]
pub struct ImportedNames {
    /// Imported node name → (op type, the node it is part of).
    pub nodes: HashMap<String, (String, Option<String>)>,
}

impl ImportedNames {
    /// The nodes of `imported` (the model before the rewrites) and where each went in
    /// `rewritten` (see `crate::provenance`).
    pub fn between(imported: &Graph, rewritten: &Graph) -> ImportedNames {
        let mut nodes: HashMap<String, (String, Option<String>)> = imported
            .node_ids()
            .filter(|&id| matches!(imported.node(id).op, NodeOp::Apply(_)))
            .map(|id| {
                let n = imported.node(id);
                (n.name.clone(), (n.op.name().to_string(), None))
            })
            .collect();
        for (id, members) in crate::provenance::members(imported, rewritten) {
            for m in members {
                if let Some(entry) = nodes.get_mut(&imported.node(m).name) {
                    entry.1 = Some(rewritten.node(id).name.clone());
                }
            }
        }
        // A name the rewritten graph has is that node, as `resolve` reads it.
        for id in rewritten.node_ids() {
            let name = &rewritten.node(id).name;
            if let Some(entry) = nodes.get_mut(name) {
                entry.1 = Some(name.clone());
            }
        }
        ImportedNames { nodes }
    }
}

/// What one node computes under a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSettings {
    /// Integer or float.
    pub precision: Precision,
    /// The options its activations, weights and outlier check use.
    pub opts: QuantizeOptions,
}

/// A plan resolved against one graph: the settings of each node.
#[derive(Clone, Debug)]
pub struct ResolvedPlan {
    default: NodeSettings,
    nodes: HashMap<NodeId, NodeSettings>,
}

impl ResolvedPlan {
    /// Every node int8 with `opts` (no plan).
    pub fn uniform(opts: &QuantizeOptions) -> ResolvedPlan {
        ResolvedPlan {
            default: NodeSettings {
                precision: Precision::Int8,
                opts: *opts,
            },
            nodes: HashMap::new(),
        }
    }

    /// The settings of node `id`.
    pub fn settings(&self, id: NodeId) -> &NodeSettings {
        self.nodes.get(&id).unwrap_or(&self.default)
    }

    /// The settings of nodes no entry names: the plan's default over the base options.
    pub fn default_settings(&self) -> &NodeSettings {
        &self.default
    }
}

/// Resolves `plan` against `graph` (the graph `insert-qdq` receives) with `base` options
/// under it. Every entry must name a node or op type of the graph, or a node of the
/// imported model (`imported`) that became part of one; two node entries that land on the
/// same node must agree.
pub fn resolve(
    plan: &QuantPlan,
    graph: &Graph,
    base: &QuantizeOptions,
    imported: &ImportedNames,
) -> Result<ResolvedPlan, PlanError> {
    let opts = plan.defaults_over(base);
    let default_entry = PlanEntry {
        precision: Some(plan.default.precision.unwrap_or(Precision::Int8)),
        ..plan.default.clone()
    };
    let ops: Vec<(NodeId, &str, OpKind)> = graph
        .node_ids()
        .filter_map(|id| match &graph.node(id).op {
            NodeOp::Apply(op) => Some((id, graph.node(id).name.as_str(), op.kind)),
            _ => None,
        })
        .collect();
    for key in plan.op_types.keys() {
        if ops.iter().any(|(_, _, k)| k.name() == key) {
            continue;
        }
        let path = entry_path("op_types", key);
        let fused: Vec<&str> = imported
            .nodes
            .iter()
            .filter(|(_, (op, _))| op == key)
            .map(|(name, _)| name.as_str())
            .collect();
        let message = if fused.is_empty() {
            let mut present: Vec<&str> = ops.iter().map(|(_, _, k)| k.name()).collect();
            present.sort_unstable();
            present.dedup();
            format!(
                "the model has no {key} node (its op types: {})",
                present.join(", ")
            )
        } else {
            format!(
                "the model's {key} nodes were fused into other nodes or folded by the rewrites ({}); name the nodes they became part of instead",
                abbreviated(&fused)
            )
        };
        return Err(plan_error(path, message));
    }
    // Node entries by the applied graph's node they name (directly, or through an imported
    // node fused into it).
    let by_name: HashMap<&str, NodeId> = ops.iter().map(|&(id, name, _)| (name, id)).collect();
    let mut named: HashMap<NodeId, (&str, &PlanEntry)> = HashMap::new();
    for (key, entry) in &plan.nodes {
        let path = entry_path("nodes", key);
        let target = match by_name.get(key.as_str()) {
            Some(&id) => id,
            None => match imported.nodes.get(key) {
                Some((_, Some(into))) => *by_name.get(into.as_str()).ok_or_else(|| {
                    plan_error(&path, format!("`{key}` became part of node `{into}`, which the graph does not have"))
                })?,
                Some((op, None)) => {
                    return Err(plan_error(
                        &path,
                        format!("node `{key}` ({op}) computes on constants only and was folded at compile time: nothing runs for it"),
                    ))
                }
                None => return Err(plan_error(&path, unknown_node(key, graph, imported))),
            },
        };
        if let Some((other, earlier)) = named.get(&target) {
            if earlier.precision != entry.precision
                || earlier.method != entry.method
                || earlier.weights != entry.weights
                || earlier.min_sqnr_db != entry.min_sqnr_db
            {
                return Err(plan_error(
                    &path,
                    format!(
                        "it and entry {} both name node `{}` (the rewrites made them one) but say different things",
                        entry_path("nodes", other),
                        graph.node(target).name
                    ),
                ));
            }
        }
        named.insert(target, (key.as_str(), entry));
    }
    let settle = |e: &PlanEntry| {
        let precision = e.precision.unwrap_or(Precision::Int8);
        let mut ptq = opts.ptq;
        if precision == Precision::Int4 {
            ptq.weight_bits = WeightBits::Four;
        }
        NodeSettings {
            precision,
            opts: QuantizeOptions {
                method: e.method.unwrap_or(opts.method),
                weights: e.weights.unwrap_or(opts.weights),
                min_sqnr_db: e.min_sqnr_db.unwrap_or(opts.min_sqnr_db),
                ptq,
                ..opts
            },
        }
    };
    let mut nodes = HashMap::new();
    for &(id, _, kind) in &ops {
        let by_type = plan.op_types.get(kind.name());
        let by_node = named.get(&id).map(|(_, e)| *e);
        if by_type.is_none() && by_node.is_none() {
            continue;
        }
        let mut e = default_entry.clone();
        if let Some(t) = by_type {
            e = t.over(&e);
        }
        if let Some(n) = by_node {
            e = n.over(&e);
        }
        nodes.insert(id, settle(&e));
    }
    Ok(ResolvedPlan {
        default: settle(&default_entry),
        nodes,
    })
}

/// The message for a node name the graph does not have: what it is instead (a value
/// name), or the names closest to it.
fn unknown_node(key: &str, graph: &Graph, imported: &ImportedNames) -> String {
    if let Some(v) = graph.find_value(key) {
        if matches!(graph.node(v.node).op, NodeOp::Apply(_)) {
            return format!(
                "the model has no node `{key}`; a value has that name: it is computed by node `{}`",
                graph.node(v.node).name
            );
        }
    }
    let names = graph
        .node_ids()
        .filter(|&id| matches!(graph.node(id).op, NodeOp::Apply(_)))
        .map(|id| graph.node(id).name.as_str())
        .chain(imported.nodes.keys().map(String::as_str));
    format!("the model has no node `{key}`{}", did_you_mean(key, names))
}

/// `; did you mean ...?` with up to five of `candidates` close to `query` (a small edit
/// distance, or containing it), or a hint to list the names when none is close.
pub fn did_you_mean<'a>(query: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    // Compared lower-case and without separators (`relu_4` is close to `relu4_node`).
    let plain = |s: &str| -> String {
        s.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let q = plain(query);
    let mut scored: Vec<(usize, &str)> = candidates
        .filter_map(|c| {
            let lc = plain(c);
            let d = edit_distance(&q, &lc);
            let close = d <= (q.len() / 3).max(2) || (q.len() >= 3 && lc.contains(&q));
            close.then_some((d, c))
        })
        .collect();
    scored.sort_unstable();
    scored.dedup_by(|a, b| a.1 == b.1);
    if scored.is_empty() {
        return " (`qlift dump MODEL --after fuse-activations` lists the node names)".into();
    }
    let names: Vec<String> = scored
        .iter()
        .take(5)
        .map(|(_, c)| format!("`{c}`"))
        .collect();
    format!("; did you mean {}?", names.join(", "))
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Up to four names, then how many more.
fn abbreviated(names: &[&str]) -> String {
    let mut sorted = names.to_vec();
    sorted.sort_unstable();
    let shown: Vec<String> = sorted.iter().take(4).map(|n| format!("`{n}`")).collect();
    match sorted.len() {
        n if n > 4 => format!("{} and {} more", shown.join(", "), n - 4),
        _ => shown.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
version = 1
[default]
method = "mse"
weights = "per-tensor"
activations = "i8"
min_sqnr_db = 0
outliers = "fp32"

[op_types.Conv]
precision = "fp32"

[nodes."a/b"]
exclude = true
note = "why"
"#;

    #[test]
    fn toml_and_json_read_the_same_plan_and_round_trip() {
        let plan = QuantPlan::parse(TOML).unwrap();
        assert_eq!(plan.default.method, Some(CalibrationMethod::Mse));
        assert_eq!(plan.default.weights, Some(WeightGranularity::PerTensor));
        assert_eq!(plan.default.min_sqnr_db, Some(0.0));
        assert_eq!(plan.activations, Some(ActivationScheme::SymmetricI8));
        assert_eq!(plan.outliers, Some(Outliers::Fp32));
        assert_eq!(
            plan.defaults_over(&QuantizeOptions::default()).outliers,
            Outliers::Fp32
        );
        assert_eq!(plan.op_types["Conv"].precision, Some(Precision::Fp32));
        assert_eq!(plan.nodes["a/b"].precision, Some(Precision::Fp32));
        assert_eq!(plan.nodes["a/b"].note.as_deref(), Some("why"));
        assert_eq!(QuantPlan::parse(&plan.to_toml()).unwrap(), plan);
        assert_eq!(QuantPlan::parse(&plan.to_json()).unwrap(), plan);
    }

    #[test]
    fn calibration_free_precisions_resolve_per_node_over_op_type_over_default() {
        let plan = QuantPlan::parse(
            r#"
[default]
precision = "int8-dynamic"

[op_types.Gemm]
precision = "int4-weight-only"
block_size = 32

[nodes."fc2"]
block_size = 128

[nodes."fc3"]
precision = "fp32"
"#,
        )
        .unwrap();
        assert!(plan.has_schemes());
        let w4 = |block_size| {
            Some(Scheme::WeightOnly {
                bits: WeightBits::Four,
                block_size,
            })
        };
        assert_eq!(plan.scheme_of("mm", "MatMul", None), Some(Scheme::Dynamic));
        assert_eq!(plan.scheme_of("fc1", "Gemm", None), w4(32));
        assert_eq!(plan.scheme_of("fc2", "Gemm", None), w4(128));
        assert_eq!(plan.scheme_of("fc3", "Gemm", Some(Scheme::Dynamic)), None);
        assert_eq!(QuantPlan::parse(&plan.to_toml()).unwrap(), plan);
        assert_eq!(QuantPlan::parse(&plan.to_json()).unwrap(), plan);
        // No precision anywhere: the command line's scheme, with the plan's block size.
        let plan = QuantPlan::parse("[default]\nblock_size = 64").unwrap();
        assert!(!plan.has_schemes());
        let base = w4(0);
        assert_eq!(plan.scheme_of("x", "MatMul", base), w4(64));
        assert_eq!(plan.scheme_of("x", "MatMul", None), None);
    }

    #[test]
    fn errors_name_the_entry() {
        let err = |text: &str| QuantPlan::parse(text).unwrap_err().to_string();
        assert_eq!(
            err("[nodes.c1]\nprecision = \"int17\""),
            "entry nodes.\"c1\": unknown precision `int17`; expected fp32, int8, int16, int16-result, int4, int8-dynamic, int8-weight-only or int4-weight-only"
        );
        assert!(err("[nodes.c1]\nprecision = \"int2\"").contains(
            "expected fp32, int8, int16, int16-result, int4, int8-dynamic, int8-weight-only or int4-weight-only"
        ));
        assert!(
            err("[nodes.c1]\nexclude = true\nprecision = \"int8-dynamic\"").contains("contradict")
        );
        assert!(err("[nodes.c1]\nblock_size = -32").contains("block_size"));
        assert!(err("[op_types.Conv]\nmethod = \"max\"")
            .starts_with("entry op_types.\"Conv\": unknown calibration method `max`"));
        assert!(err("[op_types.Cnov]\nprecision = \"fp32\"").contains("did you mean `Conv`"));
        assert!(err("[nodes.c1]\nprecison = \"fp32\"").contains("unknown field `precison`"));
        assert!(err("[nodes.c1]\nexclude = true\nprecision = \"int8\"").contains("contradict"));
        assert!(err("{\"default\": {\"weights\": \"per-row\"}}")
            .contains("entry default: unknown weights `per-row`"));
        assert!(err("version = 2").contains("plan version 2"));
        assert!(err("[default]\nmin_sqnr_db = -1.0").contains("min_sqnr_db -1"));
        assert!(err("[default]\noutliers = \"int8\"").contains("expected int16 or fp32"));
    }

    #[test]
    fn close_matches() {
        let names = ["conv1", "conv2", "fc", "relu6_1_node"];
        assert_eq!(
            did_you_mean("conv3", names.iter().copied()),
            "; did you mean `conv1`, `conv2`?"
        );
        assert_eq!(
            did_you_mean("relu6", names.iter().copied()),
            "; did you mean `relu6_1_node`?"
        );
        assert!(did_you_mean("zzzzzz", names.iter().copied()).contains("lists the node names"));
    }
}
