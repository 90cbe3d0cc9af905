//! The op registry: ONNX op type → converter, filled by one file per op family.

use super::import::NodeCx;
use crate::Error;
use std::collections::HashMap;
use std::ops::RangeInclusive;

mod control;
mod deconv;
mod einsum;
mod index;
mod math;
mod nn;
mod norm;
mod quant;
mod recurrent;
mod reduce;
mod resample;
mod select;
mod shape;

/// Converts one ONNX node into IR nodes.
pub(crate) type Converter = fn(&mut NodeCx) -> Result<(), Error>;

/// The default-domain opset versions qlift imports: each converter adapts the versions of
/// its op within this range (attributes that became operands, changed defaults) to the
/// IR's one form.
pub(crate) const OPSETS: RangeInclusive<i64> = 7..=28;

/// Converters by ONNX op type, with the opset versions each accepts.
pub(crate) struct Registry(HashMap<&'static str, (RangeInclusive<i64>, Converter)>);

impl Registry {
    pub fn new() -> Registry {
        let mut reg = Registry(HashMap::new());
        nn::register(&mut reg);
        math::register(&mut reg);
        shape::register(&mut reg);
        index::register(&mut reg);
        quant::register(&mut reg);
        resample::register(&mut reg);
        select::register(&mut reg);
        reduce::register(&mut reg);
        norm::register(&mut reg);
        deconv::register(&mut reg);
        einsum::register(&mut reg);
        recurrent::register(&mut reg);
        control::register(&mut reg);
        reg
    }

    /// Registers an op for every supported opset version.
    pub fn insert(&mut self, op_type: &'static str, convert: Converter) {
        self.insert_since(op_type, *OPSETS.start(), convert);
    }

    /// Registers an op that exists (or that qlift imports) from opset `since` on.
    pub fn insert_since(&mut self, op_type: &'static str, since: i64, convert: Converter) {
        self.0.insert(op_type, (since..=*OPSETS.end(), convert));
    }

    /// Registers an op that exists only in the opset versions `versions` (an op ONNX
    /// later replaced, such as Upsample by Resize).
    pub fn insert_versions(
        &mut self,
        op_type: &'static str,
        versions: RangeInclusive<i64>,
        convert: Converter,
    ) {
        self.0.insert(op_type, (versions, convert));
    }

    /// The converter of `op_type` at opset `opset`, if it has one there.
    pub fn get(&self, op_type: &str, opset: i64) -> Option<Converter> {
        self.0
            .get(op_type)
            .filter(|(v, _)| v.contains(&opset))
            .map(|(_, c)| *c)
    }

    /// Every registered op type with its opset versions, sorted by name.
    pub fn ops(&self) -> Vec<(&'static str, RangeInclusive<i64>)> {
        let mut all: Vec<_> = self.0.iter().map(|(k, (v, _))| (*k, v.clone())).collect();
        all.sort_by_key(|(k, _)| *k);
        all
    }
}

/// Every ONNX op type qlift imports, with the opset versions it accepts (`qlift ops`).
pub fn supported_ops() -> Vec<(&'static str, RangeInclusive<i64>)> {
    Registry::new().ops()
}

/// Normalizes a possibly negative axis against `rank` (ONNX allows [-rank, rank)).
pub(crate) fn normalize_axis(cx: &NodeCx, axis: i64, rank: usize) -> Result<i64, Error> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(cx.error(format!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(if axis < 0 { axis + r } else { axis })
}
