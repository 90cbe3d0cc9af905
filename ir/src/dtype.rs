//! Element types of IR values.

use std::fmt;
use std::str::FromStr;

/// The element type of a tensor value.
///
/// Only what quantized inference needs: `f32` for float paths, the 16-, 8- and 4-bit
/// integers for quantized data, `i32` for accumulators and biases, `i64` for the
/// shape-like tensors ONNX carries around.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE-754 single precision.
    F32,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 16-bit integer: activations of the layers a plan raises to int16 (65535
    /// levels where 8 bits lose too much), read with int8 weights.
    I16,
    /// Signed 32-bit integer (accumulators, biases).
    I32,
    /// Signed 64-bit integer (shapes, indices).
    I64,
    /// Signed 4-bit integer, stored unpacked one per `i8`.
    I4,
    /// Unsigned 4-bit integer, stored unpacked one per `u8`.
    U4,
    /// Boolean, stored as one `u8` per element holding 0 or 1 (comparisons, masks).
    Bool,
}

impl DType {
    /// Every dtype, in a fixed order (for tests and error messages).
    pub const ALL: [DType; 9] = [
        DType::F32,
        DType::I8,
        DType::U8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::I4,
        DType::U4,
        DType::Bool,
    ];

    /// The name used in the text format (`f32`, `u8`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::I4 => "i4",
            DType::U4 => "u4",
            DType::Bool => "bool",
        }
    }

    /// Whether this is one of the quantized integer types (16-, 8- or 4-bit).
    pub fn is_quantized(self) -> bool {
        matches!(
            self,
            DType::I16 | DType::I8 | DType::U8 | DType::I4 | DType::U4
        )
    }

    /// The inclusive value range of an integer dtype, `None` for `f32`.
    ///
    /// Quantization saturates to this range, so it is defined once here.
    pub fn int_range(self) -> Option<(i64, i64)> {
        match self {
            DType::F32 => None,
            DType::I8 => Some((i8::MIN as i64, i8::MAX as i64)),
            DType::U8 => Some((0, u8::MAX as i64)),
            DType::I16 => Some((i16::MIN as i64, i16::MAX as i64)),
            DType::I32 => Some((i32::MIN as i64, i32::MAX as i64)),
            DType::I64 => Some((i64::MIN, i64::MAX)),
            DType::I4 => Some((-8, 7)),
            DType::U4 => Some((0, 15)),
            DType::Bool => Some((0, 1)),
        }
    }

    /// Whether values of this dtype are integers (including booleans), as opposed to floats.
    pub fn is_integer(self) -> bool {
        self != DType::F32
    }

    /// Bytes one element occupies in memory (4-bit types are stored unpacked).
    pub fn size_of(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::I64 => 8,
            DType::I16 => 2,
            DType::I8 | DType::U8 | DType::I4 | DType::U4 | DType::Bool => 1,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown dtype `{s}`"))
    }
}
