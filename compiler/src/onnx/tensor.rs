//! ONNX TensorProto → IR tensor: raw and typed storage, 4-bit unpacking, external data
//! confined to the model's directory. Sizes are checked before anything is allocated.

use super::Limits;
use crate::Error;
use onnx_protobuf::{Message, TensorProto};
use qlift_ir::{DType, Tensor, TensorData};
use std::io::{Seek, SeekFrom};
use std::path::{Component, Path};

/// ONNX element type codes (TensorProto.DataType) for the dtypes qlift supports.
pub(crate) fn dtype_of(code: i32) -> Option<DType> {
    Some(match code {
        1 => DType::F32,
        2 => DType::U8,
        3 => DType::I8,
        5 => DType::I16,
        6 => DType::I32,
        7 => DType::I64,
        9 => DType::Bool,
        21 => DType::U4,
        22 => DType::I4,
        _ => return None,
    })
}

/// The ONNX element type code of a dtype: the inverse of [`dtype_of`].
pub(crate) fn dtype_code(dtype: DType) -> i32 {
    match dtype {
        DType::F32 => 1,
        DType::U8 => 2,
        DType::I8 => 3,
        DType::I16 => 5,
        DType::I32 => 6,
        DType::I64 => 7,
        DType::Bool => 9,
        DType::U4 => 21,
        DType::I4 => 22,
    }
}

/// The ONNX name of an element type code, for error messages.
pub(crate) fn dtype_name(code: i32) -> String {
    const NAMES: [&str; 24] = [
        "UNDEFINED",
        "FLOAT",
        "UINT8",
        "INT8",
        "UINT16",
        "INT16",
        "INT32",
        "INT64",
        "STRING",
        "BOOL",
        "FLOAT16",
        "DOUBLE",
        "UINT32",
        "UINT64",
        "COMPLEX64",
        "COMPLEX128",
        "BFLOAT16",
        "FLOAT8E4M3FN",
        "FLOAT8E4M3FNUZ",
        "FLOAT8E5M2",
        "FLOAT8E5M2FNUZ",
        "UINT4",
        "INT4",
        "FLOAT4E2M1",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|c| NAMES.get(c))
        .map_or_else(|| format!("type {code}"), |n| n.to_string())
}

/// Reads a serialized TensorProto (the ONNX test-data `.pb` format): its name and value.
pub fn read_tensor_pb(bytes: &[u8]) -> Result<(String, Tensor), Error> {
    let proto = TensorProto::parse_from_bytes(bytes).map_err(|e| Error::Decode(e.to_string()))?;
    let tensor = tensor_from_proto(&proto, None, &Limits::default())?;
    Ok((proto.name.clone(), tensor))
}

/// Converts a TensorProto, reading external data (if any) from `model_dir`.
pub(crate) fn tensor_from_proto(
    t: &TensorProto,
    model_dir: Option<&Path>,
    limits: &Limits,
) -> Result<Tensor, Error> {
    let bad = |message: String| Error::Value {
        name: t.name.clone(),
        message,
    };
    let dtype = dtype_of(t.data_type).ok_or_else(|| {
        bad(format!(
            "element type {} is not supported",
            dtype_name(t.data_type)
        ))
    })?;
    if t.dims.len() > limits.max_rank {
        return Err(bad(format!(
            "rank {} is above the limit of {}",
            t.dims.len(),
            limits.max_rank
        )));
    }
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}"))))
        .collect::<Result<_, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {:?} overflow", t.dims)))?;
    let bytes = stored_bytes(dtype, count)
        .ok_or_else(|| bad(format!("dimensions {:?} overflow", t.dims)))?;
    if bytes as u64 > limits.max_tensor_bytes {
        return Err(Error::Limit {
            what: format!("tensor `{}`", t.name),
            value: bytes as u64,
            limit: limits.max_tensor_bytes,
        });
    }
    let external = t.data_location.value() == 1;
    // Inline data is read where it lies (a copy of MiniLM's 47 MB embedding was the import's
    // peak).
    let raw: Option<std::borrow::Cow<[u8]>> = if external {
        Some(read_external(t, model_dir, bytes)?.into())
    } else if !t.raw_data.is_empty() || count == 0 {
        Some(t.raw_data.as_slice().into())
    } else {
        None
    };
    let data = match raw {
        Some(raw) => {
            if raw.len() != bytes {
                return Err(bad(format!(
                    "has {} bytes of data, its shape {:?} needs {bytes}",
                    raw.len(),
                    t.dims
                )));
            }
            from_le_bytes(dtype, &raw, count)
        }
        None => from_typed_fields(t, dtype, count).map_err(bad)?,
    };
    Tensor::new(dtype, shape, data).map_err(bad)
}

/// Bytes the ONNX storage of `count` elements takes (4-bit types pack two per byte).
fn stored_bytes(dtype: DType, count: usize) -> Option<usize> {
    match dtype {
        DType::I4 | DType::U4 => Some(count.div_ceil(2)),
        d => count.checked_mul(d.size_of()),
    }
}

fn from_le_bytes(dtype: DType, raw: &[u8], count: usize) -> TensorData {
    match dtype {
        DType::F32 => TensorData::F32(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        DType::I32 => TensorData::I32(
            raw.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        DType::I64 => TensorData::I64(
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        DType::I8 => TensorData::I8(raw.iter().map(|&b| b as i8).collect()),
        DType::U8 => TensorData::U8(raw.to_vec()),
        DType::I16 => TensorData::I16(
            raw.chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        // Any non-zero byte is true.
        DType::Bool => TensorData::U8(raw.iter().map(|&b| (b != 0) as u8).collect()),
        DType::I4 | DType::U4 => unpack_4bit(dtype, raw.iter().map(|&b| b as i32), count),
    }
}

/// Unpacks 4-bit values, two per byte, low nibble first (sign-extended for `I4`).
fn unpack_4bit(dtype: DType, packed: impl Iterator<Item = i32>, count: usize) -> TensorData {
    let nibbles = packed.flat_map(|b| [b & 0xf, (b >> 4) & 0xf]).take(count);
    match dtype {
        DType::I4 => TensorData::I8(nibbles.map(|n| ((n << 4) as i8) >> 4).collect()),
        _ => TensorData::U8(nibbles.map(|n| n as u8).collect()),
    }
}

fn from_typed_fields(t: &TensorProto, dtype: DType, count: usize) -> Result<TensorData, String> {
    let check = |len: usize, want: usize, field: &str| {
        if len == want {
            Ok(())
        } else {
            Err(format!(
                "{field} has {len} entries, its shape {:?} needs {want}",
                t.dims
            ))
        }
    };
    Ok(match dtype {
        DType::F32 => {
            check(t.float_data.len(), count, "float_data")?;
            TensorData::F32(t.float_data.clone())
        }
        DType::I64 => {
            check(t.int64_data.len(), count, "int64_data")?;
            TensorData::I64(t.int64_data.clone())
        }
        DType::I4 | DType::U4 => {
            check(t.int32_data.len(), count.div_ceil(2), "int32_data")?;
            unpack_4bit(dtype, t.int32_data.iter().copied(), count)
        }
        _ => {
            check(t.int32_data.len(), count, "int32_data")?;
            let (lo, hi) = dtype.int_range().expect("integer dtype");
            if let Some(v) = t
                .int32_data
                .iter()
                .find(|&&v| (v as i64) < lo || (v as i64) > hi)
            {
                return Err(format!("int32_data value {v} is outside the {dtype} range"));
            }
            match dtype {
                DType::I8 => TensorData::I8(t.int32_data.iter().map(|&v| v as i8).collect()),
                DType::I16 => TensorData::I16(t.int32_data.iter().map(|&v| v as i16).collect()),
                DType::U8 | DType::Bool => {
                    TensorData::U8(t.int32_data.iter().map(|&v| v as u8).collect())
                }
                _ => TensorData::I32(t.int32_data.clone()),
            }
        }
    })
}

/// Reads `bytes` bytes of external data. The location must be a relative path inside the
/// model's directory: absolute paths, `..` and symlinks that resolve outside are refused.
fn read_external(
    t: &TensorProto,
    model_dir: Option<&Path>,
    bytes: usize,
) -> Result<Vec<u8>, Error> {
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    };
    let location = entry("location").unwrap_or("");
    let fail = |message: String| Error::ExternalData {
        tensor: t.name.clone(),
        path: location.to_string(),
        message,
    };
    let dir = model_dir.ok_or_else(|| {
        fail("the model was loaded from memory, so external data is refused".into())
    })?;
    let rel = Path::new(location);
    if location.is_empty()
        || !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(fail("the location must be a relative path inside the model's directory (no `..`, not absolute)".into()));
    }
    let root = dir
        .canonicalize()
        .map_err(|e| fail(format!("model directory: {e}")))?;
    let path = root
        .join(rel)
        .canonicalize()
        .map_err(|e| fail(e.to_string()))?;
    if !path.starts_with(&root) {
        return Err(fail(
            "the location resolves (through a symlink) outside the model's directory".into(),
        ));
    }
    let number = |key: &str| -> Result<u64, Error> {
        entry(key).map_or(Ok(0), |v| {
            v.parse::<u64>()
                .map_err(|_| fail(format!("{key} `{v}` is not a number")))
        })
    };
    let (offset, length) = (number("offset")?, number("length")?);
    if length != 0 && length != bytes as u64 {
        return Err(fail(format!(
            "length {length} disagrees with the {bytes} bytes the shape needs"
        )));
    }
    // A regular file only, checked before opening: opening a named pipe waits for a writer,
    // and a device (`/dev/zero`) has no end to read against.
    match crate::bounded::classify(&path) {
        Ok(crate::bounded::Source::File(_)) => {}
        Ok(crate::bounded::Source::Pipe) => {
            return Err(fail(
                "is a pipe; external data must be a regular file".into(),
            ))
        }
        Err(crate::Error::Io { source, .. }) => return Err(fail(source.to_string())),
        Err(e) => return Err(fail(e.to_string())),
    }
    let mut file = std::fs::File::open(&path).map_err(|e| fail(e.to_string()))?;
    let size = file.metadata().map_err(|e| fail(e.to_string()))?.len();
    if offset
        .checked_add(bytes as u64)
        .is_none_or(|end| end > size)
    {
        return Err(fail(format!(
            "offset {offset} + {bytes} bytes runs past the end of the {size}-byte file"
        )));
    }
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| fail(e.to_string()))?;
    match crate::bounded::read_exact_vec(
        &mut file,
        bytes as u64,
        crate::bounded::Source::File(size),
    )
    .map_err(|e| fail(e.to_string()))?
    {
        Ok(data) => Ok(data),
        Err(got) => Err(fail(format!(
            "the file ended after {got} of {bytes} bytes (it shrank while being read)"
        ))),
    }
}
