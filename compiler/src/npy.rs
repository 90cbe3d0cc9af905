//! `.npy` files in and out: the tensor interchange format of the CLI (what numpy,
//! ONNX Runtime scripts and tract read and write).
//!
//! The reader parses the header itself and checks, before allocating anything, that the
//! element type is supported, that the shape's element count does not overflow, that the
//! data fits [`MAX_NPY_BYTES`] (or the caller's limit), and that the file holds exactly the
//! bytes the header declares. It reads through [`crate::bounded`], so devices are refused and
//! pipes are read no further than the declared size.

use crate::bounded::{self, Source};
use qlift_ir::{DType, Tensor, TensorData};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Largest `.npy` data read by default (2 GiB): the same budget as a model file. A larger
/// calibration or input set can be split into several runs.
pub const MAX_NPY_BYTES: u64 = 2 << 30;

/// Largest header accepted. numpy writes headers of one to a few hundred bytes, and refuses
/// to read ones over 10,000 bytes itself.
const MAX_HEADER_BYTES: usize = 64 << 10;

/// A `.npy` file that could not be read or written: bad input (or a full disk).
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct NpyError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// Reads a `.npy` file as a tensor, with the default size limit [`MAX_NPY_BYTES`]. Element
/// types f32, i8, u8, i32 and i64 are read as they are; f64 (numpy's default float) is
/// converted to f32, since every model input qlift compiles is f32.
pub fn read_npy(path: &Path) -> Result<Tensor, NpyError> {
    read_npy_limited(path, MAX_NPY_BYTES)
}

/// [`read_npy`] with a limit on the data's size in bytes.
pub fn read_npy_limited(path: &Path, max_bytes: u64) -> Result<Tensor, NpyError> {
    let fail = |message: String| NpyError {
        path: path.to_path_buf(),
        message,
    };
    let opened = bounded::open(path).map_err(|e| match e {
        crate::Error::Io { source, .. } => fail(source.to_string()),
        other => fail(other.to_string()),
    })?;
    let mut reader = std::io::BufReader::new(opened.file);
    read_from(&mut reader, opened.source, max_bytes).map_err(fail)
}

/// Reads a `.npy` file held in memory (what the fuzz target and the tests use).
pub fn read_npy_bytes(bytes: &[u8], max_bytes: u64) -> Result<Tensor, NpyError> {
    let mut reader = bytes;
    read_from(&mut reader, Source::File(bytes.len() as u64), max_bytes).map_err(|message| {
        NpyError {
            path: PathBuf::from("<memory>"),
            message,
        }
    })
}

/// The element types the reader accepts.
const SUPPORTED: &str =
    "expected f32, f64, i8, u8, i32 or i64 (numpy '<f4', '<f8', '|i1', '|u1', '<i4', '<i8')";

/// A parsed header: element type, byte order, layout and shape.
#[derive(Debug, PartialEq)]
struct Header {
    /// numpy kind ('f', 'i', 'u') and item size.
    kind: char,
    size: usize,
    big_endian: bool,
    fortran_order: bool,
    shape: Vec<usize>,
}

fn read_from(reader: &mut impl Read, source: Source, max_bytes: u64) -> Result<Tensor, String> {
    let io = |e: std::io::Error| format!("reading: {e}");
    let mut preamble = [0u8; 8];
    read_fully(reader, &mut preamble)
        .map_err(io)?
        .then_some(())
        .ok_or("not a .npy file (shorter than its 8-byte preamble)")?;
    if &preamble[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let major = preamble[6];
    let (header_len, prefix) = match major {
        1 => {
            let mut len = [0u8; 2];
            read_fully(reader, &mut len)
                .map_err(io)?
                .then_some(())
                .ok_or("the header is truncated")?;
            (u16::from_le_bytes(len) as usize, 10)
        }
        2 | 3 => {
            let mut len = [0u8; 4];
            read_fully(reader, &mut len)
                .map_err(io)?
                .then_some(())
                .ok_or("the header is truncated")?;
            (u32::from_le_bytes(len) as usize, 12)
        }
        v => {
            return Err(format!(
                ".npy format version {v} is not supported (1, 2 or 3)"
            ))
        }
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(format!(
            "the header declares {header_len} bytes; at most {MAX_HEADER_BYTES} are accepted"
        ));
    }
    let mut text = vec![0u8; header_len];
    read_fully(reader, &mut text)
        .map_err(io)?
        .then_some(())
        .ok_or("the header is truncated")?;
    let text = String::from_utf8(text).map_err(|_| "the header is not text".to_string())?;
    let header = parse_header(&text)?;
    let dtype_name = format!("{}{}", header.kind, header.size);
    let count = header
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {:?} overflows", header.shape))?;
    let bytes = (count as u64)
        .checked_mul(header.size as u64)
        .ok_or_else(|| format!("shape {:?} overflows", header.shape))?;
    if bytes > max_bytes {
        return Err(format!(
            "its data ({dtype_name}{:?}) is {bytes} bytes, above the limit of {max_bytes} bytes",
            header.shape
        ));
    }
    if let Source::File(len) = source {
        let available = len.saturating_sub((prefix + header_len) as u64);
        if available != bytes {
            return Err(format!(
                "the file has {available} bytes of data after its header, its shape {:?} of {dtype_name} needs {bytes}",
                header.shape
            ));
        }
    }
    // A regular file (its length checked above) of a type stored as it is read: the data goes
    // straight into the tensor's memory, with no second copy and no per-element decoding.
    if let (Source::File(_), Some(dtype), false) =
        (source, direct_dtype(&header), header.fortran_order)
    {
        let mut tensor = Tensor::zeros(dtype, &header.shape);
        read_fully(reader, tensor.data_mut().as_bytes_mut())
            .map_err(io)?
            .then_some(())
            .ok_or_else(|| format!("the data is truncated: fewer than {bytes} bytes"))?;
        if header.big_endian != cfg!(target_endian = "big") && header.size > 1 {
            for word in tensor
                .data_mut()
                .as_bytes_mut()
                .chunks_exact_mut(header.size)
            {
                word.reverse();
            }
        }
        return Ok(tensor);
    }
    let raw = match bounded::read_exact_vec(reader, bytes, source).map_err(io)? {
        Ok(raw) => raw,
        Err(got) => return Err(format!("the data is truncated: {got} of {bytes} bytes")),
    };
    if let Source::Pipe = source {
        let mut extra = [0u8; 1];
        if reader.read(&mut extra).map_err(io)? != 0 {
            return Err(format!(
                "more data follows the {bytes} bytes its shape {:?} needs",
                header.shape
            ));
        }
    }
    let data = decode(&header, &raw)?;
    let (dtype, data) = if header.fortran_order {
        (data.0, reorder_fortran(data.1, &header.shape))
    } else {
        data
    };
    Tensor::new(dtype, header.shape, data)
}

/// The tensor type whose memory holds the file's elements as they are (every supported
/// type but f64, which is converted to f32).
fn direct_dtype(h: &Header) -> Option<DType> {
    match (h.kind, h.size) {
        ('f', 4) => Some(DType::F32),
        ('i', 8) => Some(DType::I64),
        ('i', 4) => Some(DType::I32),
        ('u', 1) => Some(DType::U8),
        ('i', 1) => Some(DType::I8),
        _ => None,
    }
}

/// Fills `buf` from `reader`; `false` when the stream ends first.
fn read_fully(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Decodes the data as the header's element type.
fn decode(h: &Header, raw: &[u8]) -> Result<(DType, TensorData), String> {
    macro_rules! words {
        ($t:ty, $n:expr) => {
            raw.chunks_exact($n).map(|c| {
                let b: [u8; $n] = c.try_into().expect("chunks_exact");
                if h.big_endian {
                    <$t>::from_be_bytes(b)
                } else {
                    <$t>::from_le_bytes(b)
                }
            })
        };
    }
    Ok(match (h.kind, h.size) {
        ('f', 4) => (DType::F32, TensorData::F32(words!(f32, 4).collect())),
        ('f', 8) => (
            DType::F32,
            TensorData::F32(words!(f64, 8).map(|x| x as f32).collect()),
        ),
        ('i', 8) => (DType::I64, TensorData::I64(words!(i64, 8).collect())),
        ('i', 4) => (DType::I32, TensorData::I32(words!(i32, 4).collect())),
        ('u', 1) => (DType::U8, TensorData::U8(raw.to_vec())),
        ('i', 1) => (
            DType::I8,
            TensorData::I8(raw.iter().map(|&b| b as i8).collect()),
        ),
        _ => {
            return Err(format!(
                "element type {}{} is not supported ({SUPPORTED})",
                h.kind, h.size
            ))
        }
    })
}

/// Column-major (Fortran-order) data to row-major.
fn reorder_fortran(data: TensorData, shape: &[usize]) -> TensorData {
    fn gather<T: Copy>(v: &[T], shape: &[usize]) -> Vec<T> {
        // Column-major strides: axis 0 moves fastest.
        let mut strides = vec![1usize; shape.len()];
        for a in 1..shape.len() {
            strides[a] = strides[a - 1] * shape[a - 1];
        }
        let mut index = vec![0usize; shape.len()];
        let mut out = Vec::with_capacity(v.len());
        for _ in 0..v.len() {
            out.push(
                v[index
                    .iter()
                    .zip(&strides)
                    .map(|(i, s)| i * s)
                    .sum::<usize>()],
            );
            // Row-major odometer: the last axis moves fastest.
            for a in (0..shape.len()).rev() {
                index[a] += 1;
                if index[a] < shape[a] {
                    break;
                }
                index[a] = 0;
            }
        }
        out
    }
    match data {
        TensorData::F32(v) => TensorData::F32(gather(&v, shape)),
        TensorData::I8(v) => TensorData::I8(gather(&v, shape)),
        TensorData::U8(v) => TensorData::U8(gather(&v, shape)),
        TensorData::I16(v) => TensorData::I16(gather(&v, shape)),
        TensorData::I32(v) => TensorData::I32(gather(&v, shape)),
        TensorData::I64(v) => TensorData::I64(gather(&v, shape)),
    }
}

/// Parses the header's Python dict literal: `{'descr': '<f4', 'fortran_order': False,
/// 'shape': (2, 3), }`. Only what numpy writes for plain arrays is accepted.
fn parse_header(text: &str) -> Result<Header, String> {
    let bad = |what: &str| {
        format!(
            "bad header ({what}): {}",
            text.trim_end().chars().take(200).collect::<String>()
        )
    };
    let mut p = Cursor {
        s: text.as_bytes(),
        pos: 0,
    };
    p.expect(b'{').ok_or_else(|| bad("expected `{`"))?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        if p.eat(b'}') {
            break;
        }
        let key = p.string().ok_or_else(|| bad("expected a quoted key"))?;
        p.expect(b':').ok_or_else(|| bad("expected `:`"))?;
        match key.as_str() {
            "descr" => descr = Some(p.string().ok_or_else(|| {
                bad("descr must be a string such as '<f4' (structured arrays are not supported)")
            })?),
            "fortran_order" => {
                fortran = Some(
                    p.boolean()
                        .ok_or_else(|| bad("fortran_order must be True or False"))?,
                )
            }
            "shape" => {
                shape = Some(
                    p.tuple()
                        .ok_or_else(|| bad("shape must be a tuple of non-negative integers"))?,
                )
            }
            other => return Err(bad(&format!("unknown key '{other}'"))),
        }
        if !p.eat(b',') {
            p.expect(b'}').ok_or_else(|| bad("expected `,` or `}`"))?;
            break;
        }
    }
    let (Some(descr), Some(fortran_order), Some(shape)) = (descr, fortran, shape) else {
        return Err(bad("descr, fortran_order and shape are all required"));
    };
    let (order, rest) = descr.split_at(
        descr
            .chars()
            .next()
            .filter(|c| "<>|=".contains(*c))
            .map_or(0, |_| 1),
    );
    let mut chars = rest.chars();
    let kind = chars.next().unwrap_or(' ');
    let size: usize = chars.as_str().parse().unwrap_or(0);
    if !matches!((kind, size), ('f', 4 | 8) | ('i', 1 | 4 | 8) | ('u', 1)) {
        return Err(format!(
            "element type '{descr}' is not supported ({SUPPORTED})"
        ));
    }
    let big_endian = order == ">" || (order == "=" && cfg!(target_endian = "big"));
    Ok(Header {
        kind,
        size,
        big_endian,
        fortran_order,
        shape,
    })
}

/// A cursor over the header text.
struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn skip(&mut self) {
        while self
            .s
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip();
        if self.s.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }

    fn string(&mut self) -> Option<String> {
        self.skip();
        let quote = *self.s.get(self.pos).filter(|&&q| q == b'\'' || q == b'"')?;
        let start = self.pos + 1;
        let end = start + self.s.get(start..)?.iter().position(|&c| c == quote)?;
        self.pos = end + 1;
        String::from_utf8(self.s[start..end].to_vec()).ok()
    }

    fn boolean(&mut self) -> Option<bool> {
        self.skip();
        for (word, value) in [("True", true), ("False", false)] {
            if self.s.get(self.pos..)?.starts_with(word.as_bytes()) {
                self.pos += word.len();
                return Some(value);
            }
        }
        None
    }

    fn tuple(&mut self) -> Option<Vec<usize>> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                return Some(dims);
            }
            self.skip();
            let start = self.pos;
            while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
                self.pos += 1;
            }
            // Python 2 numpy wrote `3L`.
            let digits = std::str::from_utf8(&self.s[start..self.pos]).ok()?;
            dims.push(digits.parse().ok()?);
            self.eat(b'L');
            if dims.len() > 64 {
                return None;
            }
            if !self.eat(b',') {
                self.expect(b')')?;
                return Some(dims);
            }
        }
    }
}

/// A tensor as the bytes of a `.npy` file (format 1.0, little-endian, C order; 4-bit types
/// are written unpacked, as i8/u8).
pub fn to_npy_bytes(tensor: &Tensor) -> Vec<u8> {
    let descr = match tensor.data() {
        TensorData::F32(_) => "<f4",
        TensorData::I8(_) => "|i1",
        TensorData::U8(_) => "|u1",
        TensorData::I16(_) => "<i2",
        TensorData::I32(_) => "<i4",
        TensorData::I64(_) => "<i8",
    };
    let dims: Vec<String> = tensor.shape().iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic, version and length take 10 bytes (12 in version 2.0, for headers of 64 KiB and
    // more); numpy pads the whole to a multiple of 64.
    let prefix = if header.len() + 64 > u16::MAX as usize {
        12
    } else {
        10
    };
    let total = (prefix + header.len() + 1).div_ceil(64) * 64;
    header.push_str(&" ".repeat(total - prefix - header.len() - 1));
    header.push('\n');
    let data = tensor.data().as_bytes();
    let mut out = Vec::with_capacity(total + data.len());
    if prefix == 10 {
        out.extend_from_slice(b"\x93NUMPY\x01\x00");
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(b"\x93NUMPY\x02\x00");
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    // The in-memory layout is little-endian on every target qlift runs on.
    debug_assert!(cfg!(target_endian = "little"));
    out.extend_from_slice(data);
    out
}

/// Writes a tensor as a `.npy` file (see [`to_npy_bytes`]).
pub fn write_npy(path: &Path, tensor: &Tensor) -> Result<(), NpyError> {
    let fail = |e: std::io::Error| NpyError {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut file = std::fs::File::create(path).map_err(fail)?;
    file.write_all(&to_npy_bytes(tensor))
        .and_then(|_| file.sync_all())
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qlift-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// A .npy file with the given header dict and data.
    fn npy(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut header = dict.to_string();
        header.push_str(&" ".repeat((64 - (10 + header.len() + 1) % 64) % 64));
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn cases() -> Vec<Tensor> {
        vec![
            Tensor::from_f32(&[2, 2], vec![1.0, -2.5, f32::INFINITY, 0.0]),
            Tensor::from_i64(&[3], vec![-1, 0, i64::MAX]),
            Tensor::new(DType::I8, vec![2], TensorData::I8(vec![-128, 127])).unwrap(),
            Tensor::new(DType::U8, vec![1, 1], TensorData::U8(vec![255])).unwrap(),
            Tensor::new(DType::I32, vec![], TensorData::I32(vec![7])).unwrap(),
            Tensor::new(DType::F32, vec![0, 3], TensorData::F32(vec![])).unwrap(),
        ]
    }

    #[test]
    fn round_trips_every_storage_type() {
        for (i, t) in cases().iter().enumerate() {
            let path = temp(&format!("{i}.npy"));
            write_npy(&path, t).unwrap();
            assert_eq!(&read_npy(&path).unwrap(), t);
        }
    }

    #[test]
    fn agrees_with_ndarray_npy_both_ways() {
        use ndarray_npy::{ReadNpyExt, WriteNpyExt};
        let t = Tensor::from_f32(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let theirs = ndarray::ArrayD::<f32>::read_npy(&to_npy_bytes(&t)[..]).unwrap();
        assert_eq!(theirs.shape(), &[2, 3]);
        assert_eq!(
            theirs.iter().copied().collect::<Vec<_>>(),
            t.as_f32().unwrap()
        );
        // Theirs in Fortran order, f64 and i32: read back in C order.
        let a = ndarray::ArrayD::from_shape_vec(vec![2, 3], vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0])
            .unwrap();
        for array in [a.clone(), a.t().to_owned().reversed_axes()] {
            let mut bytes = Vec::new();
            array.write_npy(&mut bytes).unwrap();
            let back = read_npy_bytes(&bytes, MAX_NPY_BYTES).unwrap();
            assert_eq!(back, t);
        }
        let f = ndarray::ArrayD::from_shape_vec(vec![3, 2], vec![1i32, 4, 2, 5, 3, 6])
            .unwrap()
            .reversed_axes();
        let mut bytes = Vec::new();
        f.write_npy(&mut bytes).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("'fortran_order': True"));
        let back = read_npy_bytes(&bytes, MAX_NPY_BYTES).unwrap();
        assert_eq!(
            back,
            Tensor::new(
                DType::I32,
                vec![2, 3],
                TensorData::I32(vec![1, 2, 3, 4, 5, 6])
            )
            .unwrap()
        );
    }

    #[test]
    fn big_endian_and_python2_headers_read() {
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let t = read_npy_bytes(
            &npy(
                "{'descr': '>f4', 'fortran_order': False, 'shape': (2L,), }",
                &data,
            ),
            100,
        )
        .unwrap();
        assert_eq!(t, Tensor::from_f32(&[2], vec![1.5, -2.0]));
    }

    #[test]
    fn declared_sizes_are_checked_before_allocating() {
        // 2^40 f32 elements declared in a 64-byte file: refused from the header alone (this
        // aborted in an allocation of 4 TiB before).
        let huge = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }",
            &[],
        );
        let err = read_npy_bytes(&huge, MAX_NPY_BYTES)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("4398046511104 bytes, above the limit of 2147483648"),
            "{err}"
        );
        // Within the limit but longer than the file.
        let short = npy(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (100,), }",
            &[1, 2, 3],
        );
        let err = read_npy_bytes(&short, MAX_NPY_BYTES)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("3 bytes of data after its header") && err.contains("needs 100"),
            "{err}"
        );
        // An overflowing shape.
        let wrap = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }",
            &[],
        );
        assert!(read_npy_bytes(&wrap, u64::MAX)
            .unwrap_err()
            .to_string()
            .contains("overflows"));
        // A huge header length.
        let mut long = b"\x93NUMPY\x02\x00".to_vec();
        long.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_npy_bytes(&long, MAX_NPY_BYTES)
            .unwrap_err()
            .to_string()
            .contains("at most"));
    }

    #[test]
    fn unsupported_and_malformed_headers_are_errors() {
        let cases = [
            (
                "{'descr': '<f2', 'fortran_order': False, 'shape': (1,), }",
                "'<f2' is not supported",
            ),
            (
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
                "structured arrays",
            ),
            ("{'descr': '<f4', 'shape': (1,), }", "are all required"),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }",
                "non-negative",
            ),
            (
                "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1,), }",
                "True or False",
            ),
            ("['descr']", "expected `{`"),
        ];
        for (dict, message) in cases {
            let err = read_npy_bytes(&npy(dict, &[0; 4]), MAX_NPY_BYTES)
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{dict}: {err}");
        }
        for bytes in [
            &b""[..],
            b"\x93NUMPY",
            b"\x93NUMPY\x01\x00\xff",
            b"PK\x03\x04 not npy",
            b"\x93NUMPY\x09\x00\x00\x00",
        ] {
            assert!(read_npy_bytes(bytes, MAX_NPY_BYTES).is_err());
        }
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let path = temp("bad.npy");
        std::fs::write(&path, b"\x93NUMPY garbage").unwrap();
        let err = read_npy(&path).unwrap_err();
        assert!(err.to_string().contains("bad.npy"), "{err}");
    }
}
