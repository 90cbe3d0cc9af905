//! The C API called as C calls it (through the `extern "C"` functions): compiling from a
//! file and from bytes, inputs and outputs described, runs into caller buffers from many
//! threads at once equal the library's runs, and every misuse (null pointers, bad enums,
//! wrong sizes, overlapping buffers, a model that is not ONNX, an unsupported op) is a status
//! and a message naming the problem, never a crash.

use qlift_capi::*;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;
use std::ptr::{null, null_mut};

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models")
}

fn last_error() -> String {
    // SAFETY: qlift_last_error never returns NULL and the string lives until the next failure.
    unsafe { CStr::from_ptr(qlift_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn path(name: &str) -> CString {
    CString::new(models_dir().join(name).to_str().unwrap()).unwrap()
}

/// An owned f32 tensor with the shape as the C API takes it.
struct F32 {
    shape: Vec<i64>,
    data: Vec<f32>,
}

impl F32 {
    fn from(t: &qlift_ir::Tensor) -> F32 {
        F32 {
            shape: t.shape().iter().map(|&d| d as i64).collect(),
            data: t.to_f32_vec(),
        }
    }
    fn zeros(shape: &[i64]) -> F32 {
        F32 {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product::<i64>() as usize],
        }
    }
    fn buffer(&self) -> QliftBuffer {
        QliftBuffer {
            dtype: QliftDtype::F32 as i32,
            rank: self.shape.len(),
            shape: self.shape.as_ptr(),
            data: self.data.as_ptr().cast(),
            byte_len: self.data.len() * 4,
        }
    }
    fn buffer_mut(&mut self) -> QliftBufferMut {
        QliftBufferMut {
            dtype: QliftDtype::F32 as i32,
            rank: self.shape.len(),
            shape: self.shape.as_ptr(),
            data: self.data.as_mut_ptr().cast(),
            byte_len: self.data.len() * 4,
        }
    }
}

fn compile_cnn(options: Option<&QliftOptions>) -> *mut QliftModel {
    let calib = F32::from(&qlift::npy::read_npy(&models_dir().join("digits_calib_x.npy")).unwrap());
    let mut model = null_mut();
    let status = qlift_compile_file(
        path("digits_cnn.onnx").as_ptr(),
        &calib.buffer(),
        1,
        options.map_or(null(), |o| o as *const _),
        &mut model,
    );
    assert_eq!(status, QliftStatus::Ok, "{}", last_error());
    assert!(!model.is_null());
    model
}

fn test_x(rows: usize) -> qlift_ir::Tensor {
    qlift::npy::read_npy(&models_dir().join("digits_test_x.npy"))
        .unwrap()
        .slice_outer(0, rows)
        .unwrap()
}

#[test]
fn runs_equal_the_library_and_threads_share_a_model() {
    let model = compile_cnn(None);
    // The library's own answer, compiled the same way.
    let calib = qlift::npy::read_npy(&models_dir().join("digits_calib_x.npy")).unwrap();
    let reference = qlift::CompiledModel::from_onnx(
        &models_dir().join("digits_cnn.onnx"),
        Some(&[calib]),
        &Default::default(),
    )
    .unwrap();
    let x = test_x(40);
    let want = reference.run(std::slice::from_ref(&x)).unwrap()[0].to_f32_vec();

    assert_eq!(qlift_model_num_inputs(model), 1);
    assert_eq!(qlift_model_num_outputs(model), 1);
    let mut info = QliftValueInfo {
        name: null(),
        dtype: 0,
        rank: 0,
        shape: null(),
    };
    assert_eq!(qlift_model_input(model, 0, &mut info), QliftStatus::Ok);
    let shape = unsafe { std::slice::from_raw_parts(info.shape, info.rank) };
    assert_eq!(
        (info.dtype, shape),
        (QliftDtype::F32 as i32, &[-1, 1, 8, 8][..])
    );
    assert_eq!(
        unsafe { CStr::from_ptr(info.name) }.to_str().unwrap(),
        reference.inputs()[0].0
    );
    assert_eq!(qlift_model_output(model, 0, &mut info), QliftStatus::Ok);
    assert_eq!(
        unsafe { std::slice::from_raw_parts(info.shape, info.rank) },
        &[-1, 10]
    );
    assert_eq!(
        qlift_model_input(model, 1, &mut info),
        QliftStatus::InvalidArgument
    );
    assert!(
        last_error().contains("input index 1: the model has 1"),
        "{}",
        last_error()
    );

    // Shapes for a caller that allocates: the data is not read.
    let input = F32::from(&x);
    let mut b = input.buffer();
    b.data = null();
    let (mut shape, mut rank) = ([0i64; 4], 0usize);
    assert_eq!(
        qlift_model_output_shape(model, &b, 1, 0, shape.as_mut_ptr(), 4, &mut rank),
        QliftStatus::Ok,
        "{}",
        last_error()
    );
    assert_eq!(&shape[..rank], &[40, 10]);
    assert_eq!(
        qlift_model_output_shape(model, &b, 1, 0, shape.as_mut_ptr(), 1, &mut rank),
        QliftStatus::InvalidArgument
    );
    assert_eq!(rank, 2);

    // Eight threads, each running all 40 samples many times into its own buffer.
    let addr = model as usize;
    let results: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let input = &input;
                s.spawn(move || {
                    let mut out = F32::zeros(&[40, 10]);
                    for _ in 0..20 {
                        let status = qlift_model_run(
                            addr as *const QliftModel,
                            &input.buffer(),
                            1,
                            &out.buffer_mut(),
                            1,
                        );
                        assert_eq!(status, QliftStatus::Ok, "{}", last_error());
                    }
                    out.data
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        assert_eq!(
            r.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
    qlift_model_free(model);
}

#[test]
fn compiling_from_bytes_equals_compiling_from_the_file_in_fp32_and_int8() {
    let bytes = std::fs::read(models_dir().join("digits_mlp.onnx")).unwrap();
    let calib =
        F32::from(&qlift::npy::read_npy(&models_dir().join("digits_calib_x_flat.npy")).unwrap());
    let x = F32::from(
        &qlift::npy::read_npy(&models_dir().join("digits_test_x_flat.npy"))
            .unwrap()
            .slice_outer(0, 9)
            .unwrap(),
    );
    for (calib, n) in [(None, 0), (Some(calib.buffer()), 1)] {
        let calib_ptr = calib.as_ref().map_or(null(), |c| c as *const QliftBuffer);
        let (mut a, mut b) = (null_mut(), null_mut());
        assert_eq!(
            qlift_compile_bytes(bytes.as_ptr(), bytes.len(), calib_ptr, n, null(), &mut a),
            QliftStatus::Ok,
            "{}",
            last_error()
        );
        assert_eq!(
            qlift_compile_file(
                path("digits_mlp.onnx").as_ptr(),
                calib_ptr,
                n,
                null(),
                &mut b
            ),
            QliftStatus::Ok,
            "{}",
            last_error()
        );
        let (mut ya, mut yb) = (F32::zeros(&[9, 10]), F32::zeros(&[9, 10]));
        assert_eq!(
            qlift_model_run(a, &x.buffer(), 1, &ya.buffer_mut(), 1),
            QliftStatus::Ok,
            "{}",
            last_error()
        );
        assert_eq!(
            qlift_model_run(b, &x.buffer(), 1, &yb.buffer_mut(), 1),
            QliftStatus::Ok,
            "{}",
            last_error()
        );
        assert_eq!(
            ya.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            yb.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(ya.data.iter().any(|&v| v != 0.0));
        qlift_model_free(a);
        qlift_model_free(b);
    }
}

#[test]
fn options_select_method_engine_and_threads() {
    let x = F32::from(&test_x(16));
    let mut outs = Vec::new();
    for (method, engine, threads) in [
        (c"minmax", QliftEngine::Jit, 1),
        (c"minmax", QliftEngine::Interpreter, 1),
        (c"minmax", QliftEngine::Jit, 3),
        (c"percentile:99.9", QliftEngine::Jit, 1),
    ] {
        let options = QliftOptions {
            method: method.as_ptr(),
            engine: engine as i32,
            threads,
            ..qlift_default_options()
        };
        let model = compile_cnn(Some(&options));
        let mut y = F32::zeros(&[16, 10]);
        assert_eq!(
            qlift_model_run(model, &x.buffer(), 1, &y.buffer_mut(), 1),
            QliftStatus::Ok,
            "{}",
            last_error()
        );
        outs.push(y.data);
        qlift_model_free(model);
    }
    // The JIT agrees with the interpreter and with itself on 3 threads; another method
    // gives other scales.
    assert_eq!(outs[0], outs[1]);
    assert_eq!(outs[0], outs[2]);
    assert_ne!(outs[0], outs[3]);

    let mut model = null_mut();
    for (options, needle) in [
        (
            QliftOptions {
                method: c"fastest".as_ptr(),
                ..qlift_default_options()
            },
            "unknown calibration method `fastest`",
        ),
        (
            QliftOptions {
                engine: 9,
                ..qlift_default_options()
            },
            "options.engine: 9 is not a QliftEngine",
        ),
        (
            QliftOptions {
                activations: -1,
                ..qlift_default_options()
            },
            "options.activations: -1",
        ),
        (
            QliftOptions {
                threads: 100_000,
                ..qlift_default_options()
            },
            "options.threads",
        ),
    ] {
        let status = qlift_compile_file(
            path("digits_cnn.onnx").as_ptr(),
            null(),
            0,
            &options,
            &mut model,
        );
        assert_eq!(status, QliftStatus::InvalidArgument);
        assert!(last_error().contains(needle), "{}", last_error());
        assert!(model.is_null());
    }
}

#[test]
fn misuse_is_a_status_and_a_message() {
    let mut model = null_mut();
    // Null pointers.
    assert_eq!(
        qlift_compile_file(null(), null(), 0, null(), &mut model),
        QliftStatus::InvalidArgument
    );
    assert_eq!(last_error(), "path is NULL");
    assert_eq!(
        qlift_compile_file(
            path("digits_cnn.onnx").as_ptr(),
            null(),
            0,
            null(),
            null_mut()
        ),
        QliftStatus::InvalidArgument
    );
    assert_eq!(last_error(), "out is NULL");
    assert_eq!(
        qlift_compile_bytes(null(), 10, null(), 0, null(), &mut model),
        QliftStatus::InvalidArgument
    );
    assert_eq!(
        qlift_compile_file(
            path("digits_cnn.onnx").as_ptr(),
            null(),
            1,
            null(),
            &mut model
        ),
        QliftStatus::InvalidArgument
    );
    assert_eq!(last_error(), "calib is NULL");
    assert_eq!(
        qlift_model_run(null(), null(), 0, null(), 0),
        QliftStatus::InvalidArgument
    );
    assert_eq!(last_error(), "model is NULL");
    assert_eq!(qlift_model_num_inputs(null()), 0);
    qlift_model_free(null_mut());
    qlift_array_free(null_mut());

    // Bad models.
    let missing = CString::new("/nonexistent/model.onnx").unwrap();
    assert_eq!(
        qlift_compile_file(missing.as_ptr(), null(), 0, null(), &mut model),
        QliftStatus::BadModel
    );
    assert!(
        last_error().contains("/nonexistent/model.onnx"),
        "{}",
        last_error()
    );
    let garbage = b"definitely not a protobuf \xff\xff\xff";
    assert_eq!(
        qlift_compile_bytes(
            garbage.as_ptr(),
            garbage.len(),
            null(),
            0,
            null(),
            &mut model
        ),
        QliftStatus::BadModel
    );
    assert!(
        last_error().contains("not a valid ONNX model"),
        "{}",
        last_error()
    );

    // Calibration data that does not fit the model.
    let wrong_calib = F32::zeros(&[5, 3]);
    let status = qlift_compile_file(
        path("digits_cnn.onnx").as_ptr(),
        &wrong_calib.buffer(),
        1,
        null(),
        &mut model,
    );
    assert_eq!(status, QliftStatus::BadInput, "{}", last_error());
    assert!(last_error().contains("calib"), "{}", last_error());
    let mut short = wrong_calib.buffer();
    short.byte_len -= 4;
    assert_eq!(
        qlift_compile_file(
            path("digits_cnn.onnx").as_ptr(),
            &short,
            1,
            null(),
            &mut model
        ),
        QliftStatus::BadInput
    );
    assert_eq!(
        last_error(),
        "calib[0]: a f32 tensor of shape [5, 3] is 60 bytes, byte_len is 56"
    );
    let mut bad_dtype = wrong_calib.buffer();
    bad_dtype.dtype = 42;
    assert_eq!(
        qlift_compile_file(
            path("digits_cnn.onnx").as_ptr(),
            &bad_dtype,
            1,
            null(),
            &mut model
        ),
        QliftStatus::InvalidArgument
    );
    assert!(
        last_error().contains("42 is not a QliftDtype"),
        "{}",
        last_error()
    );
    assert!(model.is_null());

    // Runs with wrong inputs and outputs.
    let model = compile_cnn(None);
    let x = F32::from(&test_x(4));
    let mut y = F32::zeros(&[4, 10]);
    let mut wrong_y = F32::zeros(&[3, 10]);
    assert_eq!(
        qlift_model_run(model, &x.buffer(), 1, &wrong_y.buffer_mut(), 1),
        QliftStatus::BadInput
    );
    assert!(last_error().contains("[3, 10]"), "{}", last_error());
    assert_eq!(
        qlift_model_run(model, &x.buffer(), 1, &y.buffer_mut(), 0),
        QliftStatus::BadInput
    );
    assert!(
        last_error().contains("0 output buffers for 1 outputs"),
        "{}",
        last_error()
    );
    let negative = [-4i64, 1, 8, 8];
    let neg = QliftBuffer {
        shape: negative.as_ptr(),
        ..x.buffer()
    };
    assert_eq!(
        qlift_model_run(model, &neg, 1, &y.buffer_mut(), 1),
        QliftStatus::InvalidArgument
    );
    assert!(last_error().contains("extent -4"), "{}", last_error());
    let unaligned = QliftBuffer {
        data: x
            .data
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(1)
            .cast::<c_void>(),
        byte_len: x.data.len() * 4,
        ..x.buffer()
    };
    assert_eq!(
        qlift_model_run(model, &unaligned, 1, &y.buffer_mut(), 1),
        QliftStatus::BadInput
    );
    assert!(last_error().contains("aligned"), "{}", last_error());
    // An output written over its own input.
    let mut inplace = F32::zeros(&[4, 64]);
    let over = QliftBufferMut {
        shape: y.shape.as_ptr(),
        rank: 2,
        data: inplace.data.as_mut_ptr().cast(),
        byte_len: 160,
        dtype: 1,
    };
    let in_4x64 = [4i64, 1, 8, 8];
    let input = QliftBuffer {
        shape: in_4x64.as_ptr(),
        rank: 4,
        data: inplace.data.as_ptr().cast(),
        byte_len: 1024,
        dtype: 1,
    };
    assert_eq!(
        qlift_model_run(model, &input, 1, &over, 1),
        QliftStatus::InvalidArgument
    );
    assert_eq!(last_error(), "outputs[0] overlaps inputs[0]");
    // The last error is per thread.
    std::thread::spawn(|| assert_eq!(last_error(), ""))
        .join()
        .unwrap();
    // And the model still runs.
    assert_eq!(
        qlift_model_run(model, &x.buffer(), 1, &y.buffer_mut(), 1),
        QliftStatus::Ok,
        "{}",
        last_error()
    );
    qlift_model_free(model);
}

#[test]
fn an_unsupported_op_is_its_own_status() {
    // A one-node model of an op qlift does not import, written with qlift's own exporter's
    // protobuf types would need the op in the IR; build the ONNX bytes by hand instead.
    let bytes = onnx_with_op("NoSuchOp");
    let mut model = null_mut();
    assert_eq!(
        qlift_compile_bytes(bytes.as_ptr(), bytes.len(), null(), 0, null(), &mut model),
        QliftStatus::Unsupported
    );
    assert!(last_error().contains("NoSuchOp"), "{}", last_error());
    assert!(model.is_null());
}

/// A minimal ONNX model `y = OP(x)` on f32[N, 4], encoded by hand (protobuf wire format).
fn onnx_with_op(op: &str) -> Vec<u8> {
    fn field(tag: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = varint(((tag << 3) | 2) as u64);
        out.extend(varint(bytes.len() as u64));
        out.extend_from_slice(bytes);
        out
    }
    fn int_field(tag: u32, v: u64) -> Vec<u8> {
        let mut out = varint((tag << 3) as u64);
        out.extend(varint(v));
        out
    }
    fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }
    // ValueInfoProto { name = 1, type = 2 { tensor_type = 1 { elem_type = 1, shape = 2 { dim = 1 { dim_param = 2 | dim_value = 1 } } } } }
    let value_info = |name: &str| {
        let dims = [field(1, &field(2, b"N")), field(1, &int_field(1, 4))].concat();
        let tensor = [int_field(1, 1), field(2, &dims)].concat();
        [field(1, name.as_bytes()), field(2, &field(1, &tensor))].concat()
    };
    // NodeProto { input = 1, output = 2, name = 3, op_type = 4 }
    let node = [
        field(1, b"x"),
        field(2, b"y"),
        field(3, b"the_node"),
        field(4, op.as_bytes()),
    ]
    .concat();
    // GraphProto { node = 1, name = 2, input = 11, output = 12 }
    let graph = [
        field(1, &node),
        field(2, b"g"),
        field(11, &value_info("x")),
        field(12, &value_info("y")),
    ]
    .concat();
    // ModelProto { ir_version = 1, graph = 7, opset_import = 8 { version = 2 } }
    [
        int_field(1, 8),
        field(7, &graph),
        field(8, &int_field(2, 17)),
    ]
    .concat()
}

#[test]
fn npy_helpers_read_and_write_what_the_cli_does() {
    let mut array = null_mut();
    assert_eq!(
        qlift_array_read_npy(path("digits_test_y.npy").as_ptr(), &mut array),
        QliftStatus::Ok,
        "{}",
        last_error()
    );
    let mut b = QliftBuffer {
        dtype: 0,
        rank: 0,
        shape: null(),
        data: null(),
        byte_len: 0,
    };
    assert_eq!(qlift_array_buffer(array, &mut b), QliftStatus::Ok);
    let want = qlift::npy::read_npy(&models_dir().join("digits_test_y.npy")).unwrap();
    assert_eq!(b.dtype, QliftDtype::I64 as i32);
    assert_eq!(
        unsafe { std::slice::from_raw_parts(b.shape, b.rank) },
        &[want.shape()[0] as i64]
    );
    let out = std::env::temp_dir().join(format!("qlift-capi-{}.npy", std::process::id()));
    let out_c = CString::new(out.to_str().unwrap()).unwrap();
    assert_eq!(
        qlift_write_npy(out_c.as_ptr(), &b),
        QliftStatus::Ok,
        "{}",
        last_error()
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        qlift::npy::to_npy_bytes(&want)
    );
    let _ = std::fs::remove_file(&out);
    qlift_array_free(array);
    let mut none = null_mut();
    assert_eq!(
        qlift_array_read_npy(c"/nonexistent.npy".as_ptr() as *const c_char, &mut none),
        QliftStatus::BadInput
    );
    assert!(
        last_error().contains("/nonexistent.npy"),
        "{}",
        last_error()
    );
}

#[test]
fn names_of_statuses_and_the_version() {
    let name = |s: QliftStatus| {
        unsafe { CStr::from_ptr(qlift_status_name(s as i32)) }
            .to_str()
            .unwrap()
    };
    assert_eq!(name(QliftStatus::BadInput), "bad input");
    assert_eq!(name(QliftStatus::Unsupported), "unsupported");
    assert_eq!(
        unsafe { CStr::from_ptr(qlift_status_name(77)) }
            .to_str()
            .unwrap(),
        "unknown status"
    );
    assert_eq!(
        unsafe { CStr::from_ptr(qlift_version()) }.to_str().unwrap(),
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn an_already_quantized_model_runs_with_its_own_quantization() {
    // Calibration data given with a QDQ model is ignored, as `qlift run --calib` ignores it.
    let calib = F32::from(&qlift::npy::read_npy(&models_dir().join("digits_calib_x.npy")).unwrap());
    let x = F32::from(&test_x(32));
    let mut outs = Vec::new();
    for (c, n) in [(null(), 0), (&calib.buffer() as *const QliftBuffer, 1)] {
        let mut model = null_mut();
        assert_eq!(
            qlift_compile_file(
                path("digits_cnn.qdq.onnx").as_ptr(),
                c,
                n,
                null(),
                &mut model
            ),
            QliftStatus::Ok,
            "{}",
            last_error()
        );
        let mut y = F32::zeros(&[32, 10]);
        assert_eq!(
            qlift_model_run(model, &x.buffer(), 1, &y.buffer_mut(), 1),
            QliftStatus::Ok,
            "{}",
            last_error()
        );
        outs.push(y.data);
        qlift_model_free(model);
    }
    assert_eq!(outs[0], outs[1]);
}
