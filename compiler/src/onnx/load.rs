//! Decoding the protobuf with limits, and checking the opsets it imports.

use super::Limits;
use crate::Error;
use onnx_protobuf::{Message, ModelProto};

/// Decodes a ModelProto. The protobuf parser bounds nesting depth and never reads past
/// the buffer, so a truncated or garbled file is an error, not a crash.
pub(crate) fn decode_model(bytes: &[u8], limits: &Limits) -> Result<ModelProto, Error> {
    if bytes.len() as u64 > limits.max_model_bytes {
        return Err(Error::Limit {
            what: "model size".into(),
            value: bytes.len() as u64,
            limit: limits.max_model_bytes,
        });
    }
    check_framing(bytes)?;
    let model = ModelProto::parse_from_bytes(bytes).map_err(|e| Error::Decode(e.to_string()))?;
    if model.graph.is_none() {
        return Err(Error::Decode("the model has no graph".into()));
    }
    Ok(model)
}

/// Walks the top-level fields of the protobuf wire format and checks that each one fits in
/// the buffer. The protobuf parser accepts a buffer cut right after a length prefix (it
/// decodes an empty message); a cut anywhere leaves the top-level field it falls in claiming
/// more bytes than remain, so this catches every truncation.
fn check_framing(bytes: &[u8]) -> Result<(), Error> {
    let truncated = |at: usize| {
        Error::Decode(format!(
            "the file is truncated or corrupt (field at byte {at})"
        ))
    };
    let varint = |pos: &mut usize| -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(*pos)?;
            *pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    };
    let mut pos = 0;
    while pos < bytes.len() {
        let start = pos;
        let tag = varint(&mut pos).ok_or_else(|| truncated(start))?;
        let skip = match tag & 7 {
            0 => varint(&mut pos)
                .map(|_| 0)
                .ok_or_else(|| truncated(start))?,
            1 => 8,
            2 => varint(&mut pos).ok_or_else(|| truncated(start))?,
            5 => 4,
            _ => return Err(truncated(start)),
        };
        pos = usize::try_from(skip)
            .ok()
            .and_then(|s| pos.checked_add(s))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| truncated(start))?;
    }
    Ok(())
}

/// The default-domain opset version the model imports, checked to be supported.
pub(crate) fn default_opset(model: &ModelProto) -> Result<i64, Error> {
    let version = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| Error::Decode("the model imports no ai.onnx opset".into()))?;
    if !super::ops::OPSETS.contains(&version) {
        return Err(Error::Opset {
            domain: "ai.onnx".into(),
            version,
        });
    }
    Ok(version)
}

/// The opset version the model imports for `domain` (0 when it imports none).
pub(crate) fn opset_of(model: &ModelProto, domain: &str) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| o.domain == domain)
        .map_or(0, |o| o.version)
}
