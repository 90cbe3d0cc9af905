//! qlift's C API: compile an ONNX model (quantized to int8 from calibration data, or in
//! fp32), ask it for its inputs and outputs, and run it on caller-owned buffers from any
//! number of threads. The header is `include/qlift.h` (generated from this file by cbindgen).
//!
//! Conventions of every function:
//! - it returns a `QliftStatus` (`QLIFT_STATUS_OK` is 0); on failure `qlift_last_error`
//!   gives the message, for the calling thread;
//! - it never unwinds into C: a panic inside qlift becomes `QLIFT_STATUS_INTERNAL`;
//! - a null pointer where one is required is `QLIFT_STATUS_INVALID_ARGUMENT`, never a crash;
//! - what it allocates has one free function (`qlift_model_free`, `qlift_array_free`), which
//!   accepts null.
#![deny(missing_docs)]
// Every entry point takes raw pointers from C and checks them itself; marking them `unsafe`
// would only move the same contract into the Rust signature.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use qlift::{
    ActivationScheme, CalibrationMethod, CompileOptions, CompiledModel, Engine, Error, ErrorKind,
    QuantizeOptions,
};
use qlift_ir::{DType, Dim, Tensor, TensorBuf, TensorMut, TensorRef};
use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// What a call returns: `QLIFT_STATUS_OK` (0) or what went wrong; `qlift_last_error` then
/// holds the message.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QliftStatus {
    /// Success.
    Ok = 0,
    /// The model cannot be read or is invalid (a missing file, garbled bytes, a bad graph).
    BadModel = 1,
    /// Data given with the model is wrong: calibration data, run inputs, output buffers
    /// (shape, dtype, size, alignment), a `.npy` file.
    BadInput = 2,
    /// The model uses an op, opset or feature this version of qlift does not support.
    Unsupported = 3,
    /// A bug in qlift (a panic included): please report it with the model.
    Internal = 4,
    /// A null pointer, an unknown enum value, a path that is not UTF-8, an index out of range,
    /// a capacity too small: a mistake of the calling code.
    InvalidArgument = 5,
}

/// Element types, as in qlift's IR (4-bit types are stored one per byte).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QliftDtype {
    /// IEEE-754 `float`.
    F32 = 1,
    /// `int8_t`.
    I8 = 2,
    /// `uint8_t`.
    U8 = 3,
    /// `int32_t`.
    I32 = 4,
    /// `int64_t`.
    I64 = 5,
    /// 4-bit signed, one per `int8_t` (-8..7).
    I4 = 6,
    /// 4-bit unsigned, one per `uint8_t` (0..15).
    U4 = 7,
    /// Boolean, one per `uint8_t` (0 or 1).
    Bool = 8,
    /// `int16_t` (activations of the layers a plan raises to int16).
    I16 = 9,
}

/// What executes a compiled model.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QliftEngine {
    /// Cranelift-generated machine code for the host CPU.
    Jit = 0,
    /// The reference interpreter (slow; the oracle).
    Interpreter = 1,
}

/// How quantized activations are stored.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QliftActivations {
    /// Asymmetric `uint8` (as ONNX Runtime).
    U8 = 0,
    /// Symmetric `int8`.
    I8 = 1,
}

/// How to compile: start from `qlift_default_options` and change fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct QliftOptions {
    /// The calibration method: `"minmax"`, `"percentile"`, `"percentile:99.9"`, `"mse"` or
    /// `"entropy"`; NULL means `"minmax"`. Used only with calibration data.
    pub method: *const c_char,
    /// A `QliftActivations` value. Used only with calibration data.
    pub activations: i32,
    /// A `QliftEngine` value.
    pub engine: i32,
    /// Threads one run may use, splitting the batch (0 or 1: the calling thread only).
    /// Independent of how many threads run the model at once.
    pub threads: usize,
}

/// A tensor the caller owns and qlift only reads: row-major, native byte order, `data`
/// aligned to the element size (as `malloc` gives).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct QliftBuffer {
    /// A `QliftDtype` value.
    pub dtype: i32,
    /// Number of dimensions.
    pub rank: usize,
    /// `rank` extents (NULL when `rank` is 0).
    pub shape: *const i64,
    /// The elements (may be NULL when there are none).
    pub data: *const c_void,
    /// Size of `data` in bytes: the element count times the element size, checked.
    pub byte_len: usize,
}

/// A tensor the caller owns and qlift writes: an output buffer (see `QliftBuffer`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct QliftBufferMut {
    /// A `QliftDtype` value.
    pub dtype: i32,
    /// Number of dimensions.
    pub rank: usize,
    /// `rank` extents (NULL when `rank` is 0).
    pub shape: *const i64,
    /// Where the elements are written (may be NULL when there are none).
    pub data: *mut c_void,
    /// Size of `data` in bytes: the element count times the element size, checked.
    pub byte_len: usize,
}

/// A model input or output, as `qlift_model_input` and `qlift_model_output` describe it.
/// The pointers stay valid until the model is freed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct QliftValueInfo {
    /// The name, NUL-terminated UTF-8.
    pub name: *const c_char,
    /// A `QliftDtype` value.
    pub dtype: i32,
    /// Number of dimensions.
    pub rank: usize,
    /// `rank` extents; -1 for a symbolic one (the batch, a sequence length).
    pub shape: *const i64,
}

/// A compiled model. Runs on one model may happen on many threads at once.
pub struct QliftModel {
    model: CompiledModel,
    inputs: Vec<Info>,
    outputs: Vec<Info>,
}

/// A tensor qlift owns: what `qlift_array_read_npy` reads (free with `qlift_array_free`).
pub struct QliftArray {
    tensor: Tensor,
    shape: Vec<i64>,
}

/// The storage behind a `QliftValueInfo`.
struct Info {
    name: CString,
    dtype: i32,
    shape: Vec<i64>,
}

impl Info {
    fn new(name: &str, ty: &qlift_ir::TensorType) -> Info {
        // A name with an interior NUL (ONNX allows any string) is cut there.
        let name = CString::new(name.split('\0').next().unwrap_or_default()).unwrap_or_default();
        let shape = ty.shape.dims().iter().map(|d| match d {
            Dim::Fixed(n) => i64::try_from(*n).unwrap_or(-1),
            _ => -1,
        });
        Info {
            name,
            dtype: dtype_code(ty.dtype) as i32,
            shape: shape.collect(),
        }
    }

    fn view(&self) -> QliftValueInfo {
        QliftValueInfo {
            name: self.name.as_ptr(),
            dtype: self.dtype,
            rank: self.shape.len(),
            shape: self.shape.as_ptr(),
        }
    }
}

/// A failure: the status and its message.
struct Failure(QliftStatus, String);

impl Failure {
    fn invalid(message: impl Into<String>) -> Failure {
        Failure(QliftStatus::InvalidArgument, message.into())
    }
    fn bad_input(message: impl Into<String>) -> Failure {
        Failure(QliftStatus::BadInput, message.into())
    }
}

/// Where an error of the library came from, which decides its status where the error alone
/// does not (a limit is the model's fault on import, the inputs' on a run).
#[derive(Clone, Copy)]
enum Stage {
    Compile,
    Run,
}

fn failure(e: Error, stage: Stage) -> Failure {
    let status = match (e.kind(), stage) {
        (ErrorKind::Internal, _) => QliftStatus::Internal,
        (ErrorKind::Unsupported, _) => QliftStatus::Unsupported,
        (_, Stage::Run) | (ErrorKind::BadInput, _) => QliftStatus::BadInput,
        (ErrorKind::BadModel, Stage::Compile) => QliftStatus::BadModel,
    };
    let message = match status {
        QliftStatus::Internal => format!("{e}\n{}", qlift::cli::BUG_REPORT),
        _ => e.to_string(),
    };
    Failure(status, message)
}

/// A compile error; bad input while compiling with calibration data is the data's fault
/// and says so.
fn compile_failure(e: Error, calibrated: bool) -> Failure {
    let Failure(status, message) = failure(e, Stage::Compile);
    match status == QliftStatus::BadInput && calibrated && !message.contains("calibration") {
        true => Failure(status, format!("calibration data: {message}")),
        false => Failure(status, message),
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

/// Runs an entry point's body: its failure (or panic) becomes a status and the thread's last
/// error message.
fn guard(body: impl FnOnce() -> Result<(), Failure>) -> QliftStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => QliftStatus::Ok,
        Ok(Err(Failure(status, message))) => {
            set_last_error(&message);
            status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string());
            set_last_error(&format!(
                "internal error: {what}\n{}",
                qlift::cli::BUG_REPORT
            ));
            QliftStatus::Internal
        }
    }
}

fn dtype_code(d: DType) -> QliftDtype {
    match d {
        DType::F32 => QliftDtype::F32,
        DType::I8 => QliftDtype::I8,
        DType::U8 => QliftDtype::U8,
        DType::I32 => QliftDtype::I32,
        DType::I64 => QliftDtype::I64,
        DType::I4 => QliftDtype::I4,
        DType::U4 => QliftDtype::U4,
        DType::Bool => QliftDtype::Bool,
        DType::I16 => QliftDtype::I16,
    }
}

fn dtype_of(code: i32, what: &str) -> Result<DType, Failure> {
    Ok(match code {
        1 => DType::F32,
        2 => DType::I8,
        3 => DType::U8,
        4 => DType::I32,
        5 => DType::I64,
        6 => DType::I4,
        7 => DType::U4,
        8 => DType::Bool,
        9 => DType::I16,
        _ => {
            return Err(Failure::invalid(format!(
                "{what}: {code} is not a QliftDtype (QLIFT_DTYPE_F32 = 1 to QLIFT_DTYPE_I16 = 9)"
            )))
        }
    })
}

/// `count` elements at `ptr`, or an error naming `what` when `ptr` is null and `count` is not 0.
fn slice<'a, T>(ptr: *const T, count: usize, what: &str) -> Result<&'a [T], Failure> {
    if count == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(Failure::invalid(format!(
            "{what} is not aligned to {} bytes",
            std::mem::align_of::<T>()
        )));
    }
    // SAFETY: the caller promises `count` readable elements at a non-null, aligned `ptr`,
    // valid for the duration of the call (the API's contract).
    Ok(unsafe { std::slice::from_raw_parts(ptr, count) })
}

fn c_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    // SAFETY: the caller promises a NUL-terminated string.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
}

fn out_ptr<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: a non-null pointer the caller promises is writable and aligned.
    unsafe { ptr.as_mut() }.ok_or_else(|| Failure::invalid(format!("{what} is NULL")))
}

/// The extents of a buffer's shape, all non-negative.
fn extents(shape: *const i64, rank: usize, what: &str) -> Result<Vec<usize>, Failure> {
    let dims = slice(shape, rank, &format!("{what}.shape"))?;
    dims.iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                Failure::invalid(format!("{what}: extent {d} in shape {dims:?} is negative"))
            })
        })
        .collect()
}

/// A buffer's type, shape and bytes, checked: the shape, the dtype, `byte_len` against what
/// the shape needs, and a non-null `data` unless empty.
struct Checked {
    dtype: DType,
    shape: Vec<usize>,
    len: usize,
}

fn check(
    dtype: i32,
    shape: *const i64,
    rank: usize,
    data: *const c_void,
    byte_len: usize,
    what: &str,
) -> Result<Checked, Failure> {
    let dtype = dtype_of(dtype, what)?;
    let shape = extents(shape, rank, what)?;
    let want = shape
        .iter()
        .try_fold(dtype.size_of(), |n, &d| n.checked_mul(d));
    match want {
        Some(n) if n == byte_len => {}
        Some(n) => {
            return Err(Failure::bad_input(format!(
                "{what}: a {dtype} tensor of shape {shape:?} is {n} bytes, byte_len is {byte_len}"
            )))
        }
        None => {
            return Err(Failure::bad_input(format!(
                "{what}: shape {shape:?} overflows"
            )))
        }
    }
    if byte_len != 0 && data.is_null() {
        return Err(Failure::invalid(format!("{what}.data is NULL")));
    }
    Ok(Checked {
        dtype,
        shape,
        len: byte_len,
    })
}

/// Aligned, empty storage for an empty buffer whose `data` may be null.
static EMPTY: [u64; 0] = [];

fn input_ref<'a>(
    b: &QliftBuffer,
    shape: &'a [usize],
    len: usize,
    dtype: DType,
    what: &str,
) -> Result<TensorRef<'a>, Failure> {
    let bytes: &[u8] = if len == 0 {
        // SAFETY: an empty slice at an aligned, dangling-but-valid address.
        unsafe { std::slice::from_raw_parts(EMPTY.as_ptr().cast::<u8>(), 0) }
    } else {
        // SAFETY: the caller promises `byte_len` readable bytes at `data` for the call.
        unsafe { std::slice::from_raw_parts(b.data.cast::<u8>(), len) }
    };
    TensorRef::new(dtype, shape, bytes).map_err(|m| Failure::bad_input(format!("{what}: {m}")))
}

/// The default options: minmax calibration, u8 activations, the JIT, one thread per run.
#[no_mangle]
pub extern "C" fn qlift_default_options() -> QliftOptions {
    QliftOptions {
        method: std::ptr::null(),
        activations: QliftActivations::U8 as i32,
        engine: QliftEngine::Jit as i32,
        threads: 1,
    }
}

fn compile_options(options: *const QliftOptions) -> Result<CompileOptions, Failure> {
    // SAFETY: null or a readable QliftOptions (the API's contract).
    let o = unsafe { options.as_ref() }
        .copied()
        .unwrap_or_else(|| qlift_default_options());
    let method = match o.method.is_null() {
        true => CalibrationMethod::MinMax,
        false => c_str(o.method, "options.method")?
            .parse()
            .map_err(Failure::invalid)?,
    };
    let scheme = match o.activations {
        0 => ActivationScheme::AsymmetricU8,
        1 => ActivationScheme::SymmetricI8,
        a => {
            return Err(Failure::invalid(format!(
                "options.activations: {a} is not a QliftActivations (0 or 1)"
            )))
        }
    };
    let engine = match o.engine {
        0 => Engine::Jit,
        1 => Engine::Interpreter,
        e => {
            return Err(Failure::invalid(format!(
                "options.engine: {e} is not a QliftEngine (0 or 1)"
            )))
        }
    };
    if o.threads > 1024 {
        return Err(Failure::invalid(format!(
            "options.threads: {} is more than 1024",
            o.threads
        )));
    }
    Ok(CompileOptions {
        engine,
        threads: o.threads,
        quantize: QuantizeOptions {
            method,
            scheme,
            ..Default::default()
        },
        ..Default::default()
    })
}

/// Calibration buffers copied into tensors (the quantizer keeps what it reads).
fn calibration(calib: *const QliftBuffer, n_calib: usize) -> Result<Option<Vec<Tensor>>, Failure> {
    if calib.is_null() && n_calib == 0 {
        return Ok(None);
    }
    let buffers = slice(calib, n_calib, "calib")?;
    if buffers.is_empty() {
        return Err(Failure::bad_input("calibration data: calib is given with n_calib = 0 (pass NULL and 0 to compile without calibration)"));
    }
    let mut tensors = Vec::with_capacity(buffers.len());
    for (i, b) in buffers.iter().enumerate() {
        let what = format!("calib[{i}]");
        let c = check(b.dtype, b.shape, b.rank, b.data, b.byte_len, &what)?;
        tensors.push(input_ref(b, &c.shape, c.len, c.dtype, &what)?.to_tensor());
    }
    Ok(Some(tensors))
}

fn finish(model: CompiledModel, out: &mut *mut QliftModel) {
    let inputs = model
        .inputs()
        .iter()
        .map(|(n, t)| Info::new(n, t))
        .collect();
    let outputs = model
        .outputs()
        .iter()
        .map(|(n, t)| Info::new(n, t))
        .collect();
    *out = Box::into_raw(Box::new(QliftModel {
        model,
        inputs,
        outputs,
    }));
}

/// Compiles the ONNX model at `path`. With calibration data (`calib`: one buffer per model
/// input, in input order, samples on axis 0; `n_calib` of them) the model is quantized to
/// int8 first; with `calib` NULL and `n_calib` 0 it runs in fp32 (an already quantized
/// model, QDQ or QOperator, runs with its own quantization either way). `options` may be NULL
/// (the defaults). On success `*out` is the model, to free with `qlift_model_free`; on
/// failure it is set to NULL.
#[no_mangle]
pub extern "C" fn qlift_compile_file(
    path: *const c_char,
    calib: *const QliftBuffer,
    n_calib: usize,
    options: *const QliftOptions,
    out: *mut *mut QliftModel,
) -> QliftStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        *out = std::ptr::null_mut();
        let path = c_str(path, "path")?;
        let opts = compile_options(options)?;
        let calib = calibration(calib, n_calib)?;
        let model = CompiledModel::from_onnx(Path::new(path), calib.as_deref(), &opts)
            .map_err(|e| compile_failure(e, calib.is_some()))?;
        finish(model, out);
        Ok(())
    })
}

/// `qlift_compile_file` on a model in memory (`len` bytes at `bytes`, which qlift does not
/// keep). A model with external data is refused: load it from its file.
#[no_mangle]
pub extern "C" fn qlift_compile_bytes(
    bytes: *const u8,
    len: usize,
    calib: *const QliftBuffer,
    n_calib: usize,
    options: *const QliftOptions,
    out: *mut *mut QliftModel,
) -> QliftStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        *out = std::ptr::null_mut();
        if bytes.is_null() {
            return Err(Failure::invalid("bytes is NULL"));
        }
        let bytes = slice(bytes, len, "bytes")?;
        let opts = compile_options(options)?;
        let calib = calibration(calib, n_calib)?;
        let model = CompiledModel::from_onnx_bytes(bytes, calib.as_deref(), &opts)
            .map_err(|e| compile_failure(e, calib.is_some()))?;
        finish(model, out);
        Ok(())
    })
}

/// Frees a model (NULL is ignored). No run may be in progress on it.
#[no_mangle]
pub extern "C" fn qlift_model_free(model: *mut QliftModel) {
    if model.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: a pointer qlift_compile_* returned, freed once (the API's contract).
        drop(unsafe { Box::from_raw(model) });
    }));
}

fn model_ref<'a>(model: *const QliftModel) -> Result<&'a QliftModel, Failure> {
    // SAFETY: null or a live model (the API's contract).
    unsafe { model.as_ref() }.ok_or_else(|| Failure::invalid("model is NULL"))
}

/// How many inputs the model takes (0 when `model` is NULL).
#[no_mangle]
pub extern "C" fn qlift_model_num_inputs(model: *const QliftModel) -> usize {
    model_ref(model).map_or(0, |m| m.inputs.len())
}

/// How many outputs the model gives (0 when `model` is NULL).
#[no_mangle]
pub extern "C" fn qlift_model_num_outputs(model: *const QliftModel) -> usize {
    model_ref(model).map_or(0, |m| m.outputs.len())
}

fn value_info(
    infos: impl Fn(&QliftModel) -> &[Info],
    model: *const QliftModel,
    index: usize,
    out: *mut QliftValueInfo,
    what: &str,
) -> QliftStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        let m = model_ref(model)?;
        let infos = infos(m);
        let info = infos.get(index).ok_or_else(|| {
            Failure::invalid(format!(
                "{what} index {index}: the model has {}",
                infos.len()
            ))
        })?;
        *out = info.view();
        Ok(())
    })
}

/// Describes input `index` (name, dtype, shape with -1 for symbolic extents) into `*out`.
#[no_mangle]
pub extern "C" fn qlift_model_input(
    model: *const QliftModel,
    index: usize,
    out: *mut QliftValueInfo,
) -> QliftStatus {
    value_info(|m| &m.inputs, model, index, out, "input")
}

/// Describes output `index` into `*out` (see `qlift_model_input`).
#[no_mangle]
pub extern "C" fn qlift_model_output(
    model: *const QliftModel,
    index: usize,
    out: *mut QliftValueInfo,
) -> QliftStatus {
    value_info(|m| &m.outputs, model, index, out, "output")
}

/// The checked inputs of a run: their shapes (which the borrowed tensors point into).
fn input_shapes(inputs: &[QliftBuffer]) -> Result<Vec<Checked>, Failure> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            check(
                b.dtype,
                b.shape,
                b.rank,
                b.data,
                b.byte_len,
                &format!("inputs[{i}]"),
            )
        })
        .collect()
}

fn input_refs<'a>(
    inputs: &[QliftBuffer],
    checked: &'a [Checked],
) -> Result<Vec<TensorRef<'a>>, Failure> {
    inputs
        .iter()
        .zip(checked)
        .enumerate()
        .map(|(i, (b, c))| input_ref(b, &c.shape, c.len, c.dtype, &format!("inputs[{i}]")))
        .collect()
}

/// The shape of output `index` for a run on `inputs` (`n_inputs` buffers, in input order),
/// for a caller that allocates the output buffers: its rank in `*rank`, its extents in
/// `shape` (room for `capacity` of them; `QLIFT_STATUS_INVALID_ARGUMENT` when too small, with
/// `*rank` set). Only the inputs' shapes and dtypes are read, not their data (which may be
/// NULL). A model whose shapes depend on extents other than the batch compiles (and caches)
/// its program for these shapes here, as a run would.
#[no_mangle]
pub extern "C" fn qlift_model_output_shape(
    model: *const QliftModel,
    inputs: *const QliftBuffer,
    n_inputs: usize,
    index: usize,
    shape: *mut i64,
    capacity: usize,
    rank: *mut usize,
) -> QliftStatus {
    guard(|| {
        let rank = out_ptr(rank, "rank")?;
        let m = model_ref(model)?;
        let buffers = slice(inputs, n_inputs, "inputs")?;
        // Shapes only: borrowed views of zeroed storage stand for the data.
        let checked: Vec<Checked> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| {
                check(
                    b.dtype,
                    b.shape,
                    b.rank,
                    std::ptr::dangling(),
                    b.byte_len,
                    &format!("inputs[{i}]"),
                )
            })
            .collect::<Result<_, _>>()?;
        let descs: Vec<ShapeOnly> = checked
            .iter()
            .map(|c| ShapeOnly {
                dtype: c.dtype,
                shape: &c.shape,
            })
            .collect();
        let shapes = m
            .model
            .output_shapes(&descs)
            .map_err(|e| failure(e, Stage::Run))?;
        let s = shapes.get(index).ok_or_else(|| {
            Failure::invalid(format!(
                "output index {index}: the model has {}",
                shapes.len()
            ))
        })?;
        *rank = s.len();
        if s.len() > capacity {
            return Err(Failure::invalid(format!(
                "output {index} has rank {}, capacity is {capacity}",
                s.len()
            )));
        }
        if !s.is_empty() {
            if shape.is_null() {
                return Err(Failure::invalid("shape is NULL"));
            }
            // SAFETY: the caller promises `capacity` writable extents at `shape`.
            let dst = unsafe { std::slice::from_raw_parts_mut(shape, s.len()) };
            for (d, &e) in dst.iter_mut().zip(s) {
                *d = i64::try_from(e)
                    .map_err(|_| Failure::bad_input("an output extent does not fit in int64_t"))?;
            }
        }
        Ok(())
    })
}

/// An input known by its type and shape only (what `output_shapes` reads).
struct ShapeOnly<'a> {
    dtype: DType,
    shape: &'a [usize],
}

impl TensorBuf for ShapeOnly<'_> {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn bytes(&self) -> &[u8] {
        &[]
    }
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.1 != 0 && b.1 != 0 && a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

/// Runs the model on `inputs` (`n_inputs` buffers, in input order; the batch is their axis
/// 0), writing every output into `outputs` (`n_outputs` buffers, in output order, of the
/// shapes `qlift_model_output_shape` gives). Output buffers may not overlap each other nor
/// the inputs. Safe to call from many threads at once on one model; allocates nothing per
/// call with the JIT once warm besides small bookkeeping.
#[no_mangle]
pub extern "C" fn qlift_model_run(
    model: *const QliftModel,
    inputs: *const QliftBuffer,
    n_inputs: usize,
    outputs: *const QliftBufferMut,
    n_outputs: usize,
) -> QliftStatus {
    guard(|| {
        let m = model_ref(model)?;
        let in_buffers = slice(inputs, n_inputs, "inputs")?;
        let out_buffers = slice(outputs, n_outputs, "outputs")?;
        let checked_in = input_shapes(in_buffers)?;
        let refs = input_refs(in_buffers, &checked_in)?;
        let checked_out: Vec<Checked> = out_buffers
            .iter()
            .enumerate()
            .map(|(i, b)| {
                check(
                    b.dtype,
                    b.shape,
                    b.rank,
                    b.data,
                    b.byte_len,
                    &format!("outputs[{i}]"),
                )
            })
            .collect::<Result<_, _>>()?;
        let in_spans = in_buffers.iter().map(|b| (b.data as usize, b.byte_len));
        let out_spans: Vec<(usize, usize)> = out_buffers
            .iter()
            .map(|b| (b.data as usize, b.byte_len))
            .collect();
        for (i, o) in out_spans.iter().enumerate() {
            if let Some(j) = in_spans.clone().position(|s| overlaps(*o, s)) {
                return Err(Failure::invalid(format!(
                    "outputs[{i}] overlaps inputs[{j}]"
                )));
            }
            if let Some(j) = out_spans[..i].iter().position(|s| overlaps(*o, *s)) {
                return Err(Failure::invalid(format!(
                    "outputs[{i}] overlaps outputs[{j}]"
                )));
            }
        }
        let mut outs = Vec::with_capacity(out_buffers.len());
        for (i, (b, c)) in out_buffers.iter().zip(&checked_out).enumerate() {
            let bytes: &mut [u8] = if c.len == 0 {
                // SAFETY: zero bytes at a dangling, well-aligned, non-null address.
                unsafe {
                    std::slice::from_raw_parts_mut(
                        std::ptr::NonNull::<u64>::dangling().as_ptr().cast::<u8>(),
                        0,
                    )
                }
            } else {
                // SAFETY: the caller promises `byte_len` writable bytes at `data` for the
                // call; they overlap no other buffer of the call (checked above).
                unsafe { std::slice::from_raw_parts_mut(b.data.cast::<u8>(), c.len) }
            };
            outs.push(
                TensorMut::new(c.dtype, &c.shape, bytes)
                    .map_err(|e| Failure::bad_input(format!("outputs[{i}]: {e}")))?,
            );
        }
        m.model
            .run_buffers_into(&refs, &mut outs)
            .map_err(|e| failure(e, Stage::Run))
    })
}

/// The message of the last call that failed on this thread (empty if none has): valid until
/// the next failing call on this thread. Never NULL.
#[no_mangle]
pub extern "C" fn qlift_last_error() -> *const c_char {
    // The pointer outlives the borrow: the CString is only replaced by a later failure.
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A short name of a status (`"bad input"`, …): static, never NULL.
#[no_mangle]
pub extern "C" fn qlift_status_name(status: i32) -> *const c_char {
    let name: &'static CStr = match status {
        0 => c"ok",
        1 => c"bad model",
        2 => c"bad input",
        3 => c"unsupported",
        4 => c"internal error",
        5 => c"invalid argument",
        _ => c"unknown status",
    };
    name.as_ptr()
}

/// qlift's version, e.g. `"0.1.0"`: static, never NULL.
#[no_mangle]
pub extern "C" fn qlift_version() -> *const c_char {
    static VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}

/// Reads a `.npy` file (the dtypes qlift has: f32, i8, u8, i32, i64, bool; C order) into an
/// array, to free with `qlift_array_free`. For examples and tests that share their data
/// with the `qlift` command line.
#[no_mangle]
pub extern "C" fn qlift_array_read_npy(
    path: *const c_char,
    out: *mut *mut QliftArray,
) -> QliftStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        *out = std::ptr::null_mut();
        let path = c_str(path, "path")?;
        let tensor =
            qlift::npy::read_npy(Path::new(path)).map_err(|e| Failure::bad_input(e.to_string()))?;
        let shape = tensor.shape().iter().map(|&d| d as i64).collect();
        *out = Box::into_raw(Box::new(QliftArray { tensor, shape }));
        Ok(())
    })
}

/// A view of an array (valid until the array is freed), to pass as an input or calibration
/// buffer.
#[no_mangle]
pub extern "C" fn qlift_array_buffer(
    array: *const QliftArray,
    out: *mut QliftBuffer,
) -> QliftStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: null or a live array (the API's contract).
        let a = unsafe { array.as_ref() }.ok_or_else(|| Failure::invalid("array is NULL"))?;
        let bytes = a.tensor.bytes();
        *out = QliftBuffer {
            dtype: dtype_code(a.tensor.dtype()) as i32,
            rank: a.shape.len(),
            shape: a.shape.as_ptr(),
            data: bytes.as_ptr().cast(),
            byte_len: bytes.len(),
        };
        Ok(())
    })
}

/// Frees an array (NULL is ignored).
#[no_mangle]
pub extern "C" fn qlift_array_free(array: *mut QliftArray) {
    if array.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: a pointer qlift_array_read_npy returned, freed once (the API's contract).
        drop(unsafe { Box::from_raw(array) });
    }));
}

/// Writes a buffer (an output, say) to a `.npy` file, byte for byte as `qlift run --output`
/// writes it.
#[no_mangle]
pub extern "C" fn qlift_write_npy(path: *const c_char, buffer: *const QliftBuffer) -> QliftStatus {
    guard(|| {
        let path = c_str(path, "path")?;
        // SAFETY: null or a readable QliftBuffer (the API's contract).
        let b = unsafe { buffer.as_ref() }.ok_or_else(|| Failure::invalid("buffer is NULL"))?;
        let c = check(b.dtype, b.shape, b.rank, b.data, b.byte_len, "buffer")?;
        let tensor = input_ref(b, &c.shape, c.len, c.dtype, "buffer")?.to_tensor();
        std::fs::write(path, qlift::npy::to_npy_bytes(&tensor))
            .map_err(|e| Failure::bad_input(format!("{path}: {e}")))
    })
}
