//! `.npy` files in and out: the tensor interchange format of the CLI (what numpy,
//! ONNX Runtime scripts and tract read and write).

use ndarray::ArrayD;
use ndarray_npy::{ReadNpyError, ReadNpyExt, WriteNpyExt};
use qlift_ir::{DType, Tensor, TensorData};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

/// A `.npy` file that could not be read or written: bad input (or a full disk).
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct NpyError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// Reads a `.npy` file as a tensor. Element types f32, i8, u8, i32 and i64 are read as
/// they are; f64 (numpy's default float) is converted to f32, since every model input
/// qlift compiles is f32.
pub fn read_npy(path: &Path) -> Result<Tensor, NpyError> {
    let fail = |message: String| NpyError { path: path.to_path_buf(), message };
    let open = || -> Result<BufReader<File>, NpyError> {
        File::open(path).map(BufReader::new).map_err(|e| fail(e.to_string()))
    };
    macro_rules! attempt {
        ($t:ty, $dtype:expr, $wrap:expr) => {
            match ArrayD::<$t>::read_npy(open()?) {
                Ok(a) => {
                    let shape = a.shape().to_vec();
                    let data = a.as_standard_layout().iter().copied().collect::<Vec<_>>();
                    return Tensor::new($dtype, shape, $wrap(data)).map_err(fail);
                }
                Err(ReadNpyError::WrongDescriptor(_)) => {}
                Err(e) => return Err(fail(e.to_string())),
            }
        };
    }
    attempt!(f32, DType::F32, TensorData::F32);
    attempt!(f64, DType::F32, |v: Vec<f64>| TensorData::F32(v.into_iter().map(|x| x as f32).collect()));
    attempt!(i64, DType::I64, TensorData::I64);
    attempt!(i32, DType::I32, TensorData::I32);
    attempt!(u8, DType::U8, TensorData::U8);
    attempt!(i8, DType::I8, TensorData::I8);
    Err(fail("unsupported element type (expected f32, f64, i8, u8, i32 or i64)".to_string()))
}

/// Writes a tensor as a `.npy` file (4-bit types are written unpacked, as i8/u8).
pub fn write_npy(path: &Path, tensor: &Tensor) -> Result<(), NpyError> {
    let fail = |message: String| NpyError { path: path.to_path_buf(), message };
    let file = File::create(path).map_err(|e| fail(e.to_string()))?;
    let writer = BufWriter::new(file);
    let shape = tensor.shape().to_vec();
    fn write<T: ndarray_npy::WritableElement + Clone>(
        shape: Vec<usize>,
        data: &[T],
        w: BufWriter<File>,
    ) -> Result<(), String> {
        let array = ArrayD::from_shape_vec(shape, data.to_vec()).map_err(|e| e.to_string())?;
        array.write_npy(w).map_err(|e| e.to_string())
    }
    match tensor.data() {
        TensorData::F32(v) => write(shape, v, writer),
        TensorData::I8(v) => write(shape, v, writer),
        TensorData::U8(v) => write(shape, v, writer),
        TensorData::I32(v) => write(shape, v, writer),
        TensorData::I64(v) => write(shape, v, writer),
    }
    .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_storage_type() {
        let dir = std::env::temp_dir().join(format!("qlift-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            Tensor::from_f32(&[2, 2], vec![1.0, -2.5, f32::INFINITY, 0.0]),
            Tensor::from_i64(&[3], vec![-1, 0, i64::MAX]),
            Tensor::new(DType::I8, vec![2], TensorData::I8(vec![-128, 127])).unwrap(),
            Tensor::new(DType::U8, vec![1, 1], TensorData::U8(vec![255])).unwrap(),
            Tensor::new(DType::I32, vec![], TensorData::I32(vec![7])).unwrap(),
        ];
        for (i, t) in cases.iter().enumerate() {
            let path = dir.join(format!("{i}.npy"));
            write_npy(&path, t).unwrap();
            assert_eq!(&read_npy(&path).unwrap(), t);
        }
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let path = std::env::temp_dir().join(format!("qlift-npy-bad-{}.npy", std::process::id()));
        std::fs::write(&path, b"\x93NUMPY garbage").unwrap();
        let err = read_npy(&path).unwrap_err();
        assert!(err.to_string().contains("qlift-npy-bad"), "{err}");
    }
}
