//! Concrete tensors: constants in the graph and values in the interpreter.

use crate::DType;
use std::fmt;

/// The elements of a tensor, row-major. 4-bit types are stored unpacked (`I4` in `I8`,
/// `U4` in `U8`) so that every kernel reads whole bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// `f32` elements.
    F32(Vec<f32>),
    /// `i8` (and `i4`) elements.
    I8(Vec<i8>),
    /// `u8` (and `u4`) elements.
    U8(Vec<u8>),
    /// `i16` elements.
    I16(Vec<i16>),
    /// `i32` elements.
    I32(Vec<i32>),
    /// `i64` elements.
    I64(Vec<i64>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I8(v) => v.len(),
            TensorData::U8(v) => v.len(),
            TensorData::I16(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The storage dtypes this data can represent.
    fn holds(&self, dtype: DType) -> bool {
        matches!(
            (self, dtype),
            (TensorData::F32(_), DType::F32)
                | (TensorData::I8(_), DType::I8 | DType::I4)
                | (TensorData::U8(_), DType::U8 | DType::U4 | DType::Bool)
                | (TensorData::I16(_), DType::I16)
                | (TensorData::I32(_), DType::I32)
                | (TensorData::I64(_), DType::I64)
        )
    }

    /// The elements' bytes in memory (native endianness): what generated code reads.
    pub fn as_bytes(&self) -> &[u8] {
        fn bytes<T: Copy>(v: &[T]) -> &[u8] {
            // SAFETY: T is a plain numeric type (no padding, every bit pattern valid as u8);
            // the slice covers exactly the vector's initialized elements.
            unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
        }
        match self {
            TensorData::F32(v) => bytes(v),
            TensorData::I8(v) => bytes(v),
            TensorData::U8(v) => bytes(v),
            TensorData::I16(v) => bytes(v),
            TensorData::I32(v) => bytes(v),
            TensorData::I64(v) => bytes(v),
        }
    }

    /// The elements' bytes, writable: what generated code writes results into.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        fn bytes<T: Copy>(v: &mut [T]) -> &mut [u8] {
            // SAFETY: as in `as_bytes`; additionally every byte pattern written is a valid T
            // (f32, i8, u8, i16, i32, i64 have no invalid bit patterns).
            unsafe {
                std::slice::from_raw_parts_mut(
                    v.as_mut_ptr().cast::<u8>(),
                    std::mem::size_of_val(v),
                )
            }
        }
        match self {
            TensorData::F32(v) => bytes(v),
            TensorData::I8(v) => bytes(v),
            TensorData::U8(v) => bytes(v),
            TensorData::I16(v) => bytes(v),
            TensorData::I32(v) => bytes(v),
            TensorData::I64(v) => bytes(v),
        }
    }

    /// Element `i` widened to `i64` (`None` for float data).
    fn int_at(&self, i: usize) -> Option<i64> {
        match self {
            TensorData::F32(_) => None,
            TensorData::I8(v) => Some(v[i] as i64),
            TensorData::U8(v) => Some(v[i] as i64),
            TensorData::I16(v) => Some(v[i] as i64),
            TensorData::I32(v) => Some(v[i] as i64),
            TensorData::I64(v) => Some(v[i]),
        }
    }
}

/// A dense tensor with a concrete shape.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    /// Builds a tensor, checking that the data matches the dtype and the shape's element
    /// count, and that 4-bit values are in range.
    pub fn new(dtype: DType, shape: Vec<usize>, data: TensorData) -> Result<Tensor, String> {
        let count = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("shape {shape:?} overflows"))?;
        if !data.holds(dtype) {
            return Err(format!("{dtype} tensor cannot hold this data"));
        }
        if data.len() != count {
            return Err(format!(
                "shape {shape:?} needs {count} elements, data has {}",
                data.len()
            ));
        }
        if matches!(dtype, DType::I4 | DType::U4 | DType::Bool) {
            let (lo, hi) = dtype.int_range().expect("integer dtype");
            if let Some(i) = (0..count).find(|&i| data.int_at(i).is_some_and(|v| v < lo || v > hi))
            {
                return Err(format!(
                    "element {i} is outside the {dtype} range [{lo}, {hi}]"
                ));
            }
        }
        Ok(Tensor { dtype, shape, data })
    }

    /// An `f32` tensor (panics only if `data.len()` does not match: for literals in code).
    pub fn from_f32(shape: &[usize], data: Vec<f32>) -> Tensor {
        Tensor::new(DType::F32, shape.to_vec(), TensorData::F32(data)).expect("f32 literal tensor")
    }

    /// An `i64` tensor (panics only if `data.len()` does not match: for literals in code).
    pub fn from_i64(shape: &[usize], data: Vec<i64>) -> Tensor {
        Tensor::new(DType::I64, shape.to_vec(), TensorData::I64(data)).expect("i64 literal tensor")
    }

    /// A tensor of zeros.
    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let data = match dtype {
            DType::F32 => TensorData::F32(vec![0.0; n]),
            DType::I8 | DType::I4 => TensorData::I8(vec![0; n]),
            DType::U8 | DType::U4 | DType::Bool => TensorData::U8(vec![0; n]),
            DType::I16 => TensorData::I16(vec![0; n]),
            DType::I32 => TensorData::I32(vec![0; n]),
            DType::I64 => TensorData::I64(vec![0; n]),
        };
        Tensor {
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }

    /// Rows `start..end` along axis 0 (for example a batch of samples out of a data set).
    pub fn slice_outer(&self, start: usize, end: usize) -> Result<Tensor, String> {
        let rows = *self.shape.first().ok_or("a scalar has no rows")?;
        if start > end || end > rows {
            return Err(format!("rows {start}..{end} are outside 0..{rows}"));
        }
        let inner: usize = self.shape[1..].iter().product();
        let (a, b) = (start * inner, end * inner);
        let data = match &self.data {
            TensorData::F32(v) => TensorData::F32(v[a..b].to_vec()),
            TensorData::I8(v) => TensorData::I8(v[a..b].to_vec()),
            TensorData::U8(v) => TensorData::U8(v[a..b].to_vec()),
            TensorData::I16(v) => TensorData::I16(v[a..b].to_vec()),
            TensorData::I32(v) => TensorData::I32(v[a..b].to_vec()),
            TensorData::I64(v) => TensorData::I64(v[a..b].to_vec()),
        };
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        Ok(Tensor {
            dtype: self.dtype,
            shape,
            data,
        })
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Concrete shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// The elements, writable in place (the shape and dtype stay).
    pub fn data_mut(&mut self) -> &mut TensorData {
        &mut self.data
    }

    /// Consumes the tensor, returning its elements.
    pub fn into_data(self) -> TensorData {
        self.data
    }

    /// The same elements under another shape with the same element count.
    pub fn reshaped(self, shape: Vec<usize>) -> Result<Tensor, String> {
        Tensor::new(self.dtype, shape, self.data)
    }

    /// The `f32` elements, or an error naming the actual dtype.
    pub fn as_f32(&self) -> Result<&[f32], String> {
        match &self.data {
            TensorData::F32(v) => Ok(v),
            _ => Err(format!("expected an f32 tensor, found {}", self.dtype)),
        }
    }

    /// The `i64` elements, or an error naming the actual dtype.
    pub fn as_i64(&self) -> Result<&[i64], String> {
        match &self.data {
            TensorData::I64(v) => Ok(v),
            _ => Err(format!("expected an i64 tensor, found {}", self.dtype)),
        }
    }

    /// The `i32` elements, or an error naming the actual dtype.
    pub fn as_i32(&self) -> Result<&[i32], String> {
        match &self.data {
            TensorData::I32(v) => Ok(v),
            _ => Err(format!("expected an i32 tensor, found {}", self.dtype)),
        }
    }

    /// Integer elements widened to `i64` (any integer dtype), for index and shape operands
    /// and for integer kernels that accumulate exactly.
    pub fn to_i64_vec(&self) -> Result<Vec<i64>, String> {
        match &self.data {
            TensorData::F32(_) => Err("expected an integer tensor, found f32".to_string()),
            d => Ok((0..d.len())
                .map(|i| d.int_at(i).expect("integer data"))
                .collect()),
        }
    }

    /// Where `self` disagrees with `want`, or `None`: a different dtype or shape, an f32
    /// element for which `close(got, want)` fails (NaN matches NaN, equal values always
    /// match), any integer element that differs. Executors are tested against the
    /// interpreter and ONNX's expected outputs with this, each with its own tolerance.
    pub fn disagreement(&self, want: &Tensor, close: impl Fn(f32, f32) -> bool) -> Option<String> {
        if self.dtype != want.dtype || self.shape != want.shape {
            return Some(format!(
                "got {}{:?}, expected {}{:?}",
                self.dtype, self.shape, want.dtype, want.shape
            ));
        }
        match (&self.data, &want.data) {
            (TensorData::F32(g), TensorData::F32(w)) => {
                g.iter().zip(w).enumerate().find_map(|(k, (&a, &b))| {
                    let ok = (a.is_nan() && b.is_nan()) || a == b || close(a, b);
                    (!ok).then(|| format!("element {k}: got {a}, expected {b}"))
                })
            }
            _ if self == want => None,
            _ => Some(format!(
                "integer results differ: got {:?}, expected {:?}",
                self.to_i64_vec(),
                want.to_i64_vec()
            )),
        }
    }

    /// Elements converted to `f32` (exact for 8-bit and 4-bit integers).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::I8(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::U8(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I16(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// Builds a tensor of integer dtype `dtype` from `i64` values that are already in range.
    pub fn from_i64_values(
        dtype: DType,
        shape: Vec<usize>,
        values: Vec<i64>,
    ) -> Result<Tensor, String> {
        let (lo, hi) = dtype
            .int_range()
            .ok_or("from_i64_values needs an integer dtype")?;
        if let Some(v) = values.iter().find(|&&v| v < lo || v > hi) {
            return Err(format!("value {v} is outside the {dtype} range"));
        }
        let data = match dtype {
            DType::I8 | DType::I4 => TensorData::I8(values.iter().map(|&v| v as i8).collect()),
            DType::I16 => TensorData::I16(values.iter().map(|&v| v as i16).collect()),
            DType::U8 | DType::U4 | DType::Bool => {
                TensorData::U8(values.iter().map(|&v| v as u8).collect())
            }
            DType::I32 => TensorData::I32(values.iter().map(|&v| v as i32).collect()),
            DType::I64 => TensorData::I64(values),
            DType::F32 => unreachable!("checked above"),
        };
        Tensor::new(dtype, shape, data)
    }

    /// The little-endian bytes of the elements (one byte per 4-bit element).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match &self.data {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I8(v) => v.iter().map(|&x| x as u8).collect(),
            TensorData::U8(v) => v.clone(),
            TensorData::I16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// A stable 64-bit content digest over dtype, shape and elements.
    ///
    /// Constants are identified by content: dumps print the digest instead of the data,
    /// and the e-graph treats equal-digest constants as one leaf.
    pub fn digest(&self) -> u64 {
        // Streamed: the same hash as over one buffer of these bytes, without that buffer (a
        // copy of the tensor, twice its size at peak: 94 MB for MiniLM's word embedding).
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(self.dtype.name().as_bytes());
        for d in &self.shape {
            h.update(&(*d as u64).to_le_bytes());
        }
        if cfg!(target_endian = "little") {
            h.update(self.data.as_bytes());
        } else {
            h.update(&self.to_le_bytes());
        }
        h.digest()
    }
}

/// A tensor someone else owns, borrowed: a numpy array's or a C caller's buffer, row-major in
/// native byte order. Compiled code reads it where it lies, so a binding hands its callers'
/// arrays to a model without copying them into a [`Tensor`].
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    dtype: DType,
    shape: &'a [usize],
    bytes: &'a [u8],
}

/// A borrowed, writable tensor: the caller's buffer a compiled model writes an output into.
#[derive(Debug)]
pub struct TensorMut<'a> {
    dtype: DType,
    shape: &'a [usize],
    bytes: &'a mut [u8],
}

/// Checks what [`Tensor::new`] checks of foreign bytes: the length the shape needs, and the
/// alignment of the element type (generated code reads whole elements, as from a `Vec`).
fn check_buffer(dtype: DType, shape: &[usize], addr: usize, len: usize) -> Result<(), String> {
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    let want = count
        .checked_mul(dtype.size_of())
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if len != want {
        return Err(format!(
            "a {dtype} tensor of shape {shape:?} needs {want} bytes, the buffer has {len}"
        ));
    }
    if addr % dtype.size_of() != 0 {
        return Err(format!(
            "the buffer of a {dtype} tensor must be aligned to {} bytes",
            dtype.size_of()
        ));
    }
    Ok(())
}

impl<'a> TensorRef<'a> {
    /// Borrows `bytes` as a tensor, checking its length, its alignment and (for 4-bit and
    /// boolean dtypes, whose storage byte admits values the dtype does not) every element.
    pub fn new(dtype: DType, shape: &'a [usize], bytes: &'a [u8]) -> Result<TensorRef<'a>, String> {
        check_buffer(dtype, shape, bytes.as_ptr() as usize, bytes.len())?;
        if matches!(dtype, DType::I4 | DType::U4 | DType::Bool) {
            let (lo, hi) = dtype.int_range().expect("integer dtype");
            let value = |b: u8| {
                if dtype == DType::I4 {
                    b as i8 as i64
                } else {
                    b as i64
                }
            };
            if let Some(i) = bytes.iter().position(|&b| value(b) < lo || value(b) > hi) {
                return Err(format!(
                    "element {i} is outside the {dtype} range [{lo}, {hi}]"
                ));
            }
        }
        Ok(TensorRef {
            dtype,
            shape,
            bytes,
        })
    }
}

impl<'a> TensorMut<'a> {
    /// Borrows `bytes` as a writable tensor, checking its length and alignment.
    pub fn new(
        dtype: DType,
        shape: &'a [usize],
        bytes: &'a mut [u8],
    ) -> Result<TensorMut<'a>, String> {
        check_buffer(dtype, shape, bytes.as_ptr() as usize, bytes.len())?;
        Ok(TensorMut {
            dtype,
            shape,
            bytes,
        })
    }
}

/// What compiled code needs of an input buffer, owned ([`Tensor`]) or borrowed
/// ([`TensorRef`]): its type and its bytes. Runs are generic over it so that neither kind
/// is converted into the other per call.
pub trait TensorBuf {
    /// Element type.
    fn dtype(&self) -> DType;
    /// Concrete shape.
    fn shape(&self) -> &[usize];
    /// The elements' bytes (row-major, native endianness, aligned to the element size).
    fn bytes(&self) -> &[u8];
    /// An owned copy (for the interpreter, which keeps its values).
    fn to_tensor(&self) -> Tensor {
        let mut t = Tensor::zeros(self.dtype(), self.shape());
        t.data.as_bytes_mut().copy_from_slice(self.bytes());
        t
    }
}

/// An output buffer, owned or borrowed ([`TensorMut`]): compiled code writes its bytes.
pub trait TensorBufMut: TensorBuf {
    /// The elements' bytes, writable; whatever is written must be valid for the dtype.
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl TensorBuf for Tensor {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn bytes(&self) -> &[u8] {
        self.data.as_bytes()
    }
    fn to_tensor(&self) -> Tensor {
        self.clone()
    }
}

impl TensorBufMut for Tensor {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.data.as_bytes_mut()
    }
}

impl TensorBuf for TensorRef<'_> {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn bytes(&self) -> &[u8] {
        self.bytes
    }
}

impl TensorBuf for TensorMut<'_> {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn bytes(&self) -> &[u8] {
        self.bytes
    }
}

impl TensorBufMut for TensorMut<'_> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.bytes
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor({}{:?} #{:016x})",
            self.dtype,
            self.shape,
            self.digest()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed digest is the hash of dtype name, extents and little-endian elements in
    /// one buffer, as it was: dumps print it and IR text refers to constants by it.
    #[test]
    fn digests_hash_dtype_extents_and_little_endian_elements() {
        let f = Tensor::from_f32(&[2, 3], vec![1.0, -2.0, 3.5, 0.0, f32::NAN, -0.0]);
        let i = Tensor::new(DType::I64, vec![3], TensorData::I64(vec![-1, 7, i64::MAX])).unwrap();
        for t in [f, i] {
            let mut bytes = t.dtype().name().as_bytes().to_vec();
            for &d in t.shape() {
                bytes.extend_from_slice(&(d as u64).to_le_bytes());
            }
            bytes.extend_from_slice(&t.to_le_bytes());
            assert_eq!(t.digest(), xxhash_rust::xxh3::xxh3_64(&bytes));
        }
        // A known value, so that a change of the recipe cannot go unnoticed.
        let one = Tensor::from_f32(&[1], vec![1.0]);
        assert_eq!(format!("{:016x}", one.digest()), "2ab745f7a1ec1c0b");
    }

    #[test]
    fn borrowed_tensors_check_length_alignment_and_range() {
        let t = Tensor::from_f32(&[2, 2], vec![1.0, -2.0, 3.5, 0.0]);
        let view = TensorRef::new(DType::F32, &[2, 2], t.data().as_bytes()).unwrap();
        assert_eq!(view.to_tensor(), t);
        let short = TensorRef::new(DType::F32, &[2, 3], t.data().as_bytes()).unwrap_err();
        assert!(
            short.contains("needs 24 bytes, the buffer has 16"),
            "{short}"
        );
        let misaligned = TensorRef::new(DType::F32, &[3], &t.data().as_bytes()[1..13]).unwrap_err();
        assert!(misaligned.contains("aligned to 4 bytes"), "{misaligned}");
        let bools = [0u8, 1, 2];
        let bad = TensorRef::new(DType::Bool, &[3], &bools).unwrap_err();
        assert!(bad.contains("element 2 is outside the bool range"), "{bad}");
        let nibbles = [0xf0u8, 7]; // -16: below i4
        assert!(TensorRef::new(DType::I4, &[2], &nibbles).is_err());
        assert!(TensorRef::new(DType::I4, &[2], &[0xf8u8, 7]).is_ok());
        let mut data = TensorData::I64(vec![0]);
        let out = data.as_bytes_mut();
        let mut m = TensorMut::new(DType::I32, &[2], out).unwrap();
        m.bytes_mut()[0] = 5;
        assert_eq!(m.bytes()[0], 5);
        assert!(TensorMut::new(DType::I64, &[2], data.as_bytes_mut()).is_err());
    }
}
