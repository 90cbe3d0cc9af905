//! The op registry: ONNX op type → converter, filled by one file per op family.

use super::import::NodeCx;
use crate::Error;
use std::collections::HashMap;

mod math;
mod nn;
mod quant;
mod shape;

/// Converts one ONNX node into IR nodes.
pub(crate) type Converter = fn(&mut NodeCx) -> Result<(), Error>;

/// Converters by ONNX op type.
pub(crate) struct Registry(HashMap<&'static str, Converter>);

impl Registry {
    pub fn new() -> Registry {
        let mut reg = Registry(HashMap::new());
        nn::register(&mut reg);
        math::register(&mut reg);
        shape::register(&mut reg);
        quant::register(&mut reg);
        reg
    }

    pub fn insert(&mut self, op_type: &'static str, convert: Converter) {
        self.0.insert(op_type, convert);
    }

    pub fn get(&self, op_type: &str) -> Option<Converter> {
        self.0.get(op_type).copied()
    }
}

/// Normalizes a possibly negative axis against `rank` (ONNX allows [-rank, rank)).
pub(crate) fn normalize_axis(cx: &NodeCx, axis: i64, rank: usize) -> Result<i64, Error> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(cx.error(format!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(if axis < 0 { axis + r } else { axis })
}
