//! PLACEHOLDER: the text format is being written.
use crate::TensorType;

/// A type as the text format writes it, e.g. `u8[N,16,8,8]`.
pub fn type_to_string(ty: &TensorType) -> String {
    format!("{}{}", ty.dtype, ty.shape)
}
