//! Value types.

use crate::{DType, QuantParams, Shape};

/// The static type of a value: element type, shape, and, for quantized values, how to
/// read them as real numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Static shape (may contain the batch symbol).
    pub shape: Shape,
    /// Quantization parameters of a quantized value.
    pub quant: Option<QuantParams>,
}

impl TensorType {
    /// A type without quantization parameters.
    pub fn new(dtype: DType, shape: Shape) -> TensorType {
        TensorType {
            dtype,
            shape,
            quant: None,
        }
    }

    /// A quantized type.
    pub fn quantized(dtype: DType, shape: Shape, quant: QuantParams) -> TensorType {
        TensorType {
            dtype,
            shape,
            quant: Some(quant),
        }
    }
}
