//! Runs on borrowed buffers (`TensorRef` inputs, `TensorMut` outputs: what the Python and C
//! bindings hand over) give exactly what runs on owned tensors give, on both engines, for
//! fixed shapes, symbolic dimensions and outputs that are an input, a constant or another
//! output; `output_shapes` tells a caller what to allocate.

use qlift::{CompileOptions, CompiledModel, Engine};
use qlift_ir::{DType, Tensor, TensorBuf, TensorMut, TensorRef};

mod support;
use support::models_dir;

const ENGINES: [Engine; 2] = [Engine::Jit, Engine::Interpreter];

/// Runs `model` on `inputs` through borrowed buffers: inputs copied into foreign storage
/// first (so nothing of the owned tensors is read), outputs written into zeroed storage.
fn run_borrowed(model: &CompiledModel, inputs: &[Tensor]) -> Vec<Tensor> {
    // Storage of u64 words: aligned for every dtype, as a numpy array or malloc'd buffer is.
    let storage: Vec<Vec<u64>> = inputs.iter().map(|t| words(t.bytes())).collect();
    let refs: Vec<TensorRef> = inputs
        .iter()
        .zip(&storage)
        .map(|(t, w)| {
            TensorRef::new(t.dtype(), t.shape(), &as_bytes(w)[..t.bytes().len()]).unwrap()
        })
        .collect();
    let shapes = model.output_shapes(&refs).unwrap();
    let dtypes: Vec<DType> = model.outputs().iter().map(|(_, t)| t.dtype).collect();
    let mut out_storage: Vec<Vec<u64>> = shapes
        .iter()
        .zip(&dtypes)
        .map(|(s, d)| vec![0; (s.iter().product::<usize>() * d.size_of()).div_ceil(8)])
        .collect();
    let mut outs: Vec<TensorMut> = out_storage
        .iter_mut()
        .zip(shapes.iter().zip(&dtypes))
        .map(|(w, (s, d))| {
            let len = s.iter().product::<usize>() * d.size_of();
            TensorMut::new(*d, s, &mut as_bytes_mut(w)[..len]).unwrap()
        })
        .collect();
    model.run_buffers_into(&refs, &mut outs).unwrap();
    let results: Vec<Tensor> = outs.iter().map(TensorBuf::to_tensor).collect();
    // The allocating form agrees.
    assert_eq!(model.run_buffers(&refs).unwrap(), results);
    results
}

fn words(bytes: &[u8]) -> Vec<u64> {
    let mut w = vec![0u64; bytes.len().div_ceil(8)];
    as_bytes_mut(&mut w)[..bytes.len()].copy_from_slice(bytes);
    w
}

fn as_bytes(w: &[u64]) -> &[u8] {
    // SAFETY: u64 words viewed as their bytes (no padding, any bit pattern valid).
    unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u8>(), w.len() * 8) }
}

fn as_bytes_mut(w: &mut [u64]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<u8>(), w.len() * 8) }
}

#[test]
fn bundled_models_give_the_same_outputs_from_borrowed_buffers() {
    let calib = qlift::npy::read_npy(&models_dir().join("digits_calib_x.npy")).unwrap();
    let x = qlift::npy::read_npy(&models_dir().join("digits_test_x.npy"))
        .unwrap()
        .slice_outer(0, 7)
        .unwrap();
    let x_flat = qlift::npy::read_npy(&models_dir().join("digits_test_x_flat.npy"))
        .unwrap()
        .slice_outer(0, 7)
        .unwrap();
    let calib_flat = qlift::npy::read_npy(&models_dir().join("digits_calib_x_flat.npy")).unwrap();
    for engine in ENGINES {
        let opts = CompileOptions {
            engine,
            ..Default::default()
        };
        for (file, calib, x) in [
            ("digits_cnn.onnx", &calib, &x),
            ("digits_mlp.onnx", &calib_flat, &x_flat),
        ] {
            let model = CompiledModel::from_onnx(
                &models_dir().join(file),
                Some(std::slice::from_ref(calib)),
                &opts,
            )
            .unwrap();
            let want = model.run(std::slice::from_ref(x)).unwrap();
            assert_eq!(
                run_borrowed(&model, std::slice::from_ref(x)),
                want,
                "{file} {engine:?}"
            );
        }
    }
}

#[test]
fn symbolic_dimensions_and_copied_outputs_through_borrowed_buffers() {
    // y depends on the sequence length; the input itself, a constant and y again are outputs.
    let text = "graph t(%x: f32[N,seq,2], %k: i64[N]) -> (%y, %x, %c, %y, %k) {
  %w = const f32[2] [2.0, -1.0]
  %y = Mul(%x, %w) : f32[N,seq,2]
  %c = const i32[3] [7, -8, 9]
}";
    let graph = qlift_ir::text::parse(text).unwrap();
    for engine in ENGINES {
        let model = CompiledModel::from_graph(
            &graph,
            None,
            &CompileOptions {
                engine,
                ..Default::default()
            },
        )
        .unwrap();
        for (batch, seq) in [(1, 3), (2, 5), (3, 1)] {
            let x = Tensor::from_f32(
                &[batch, seq, 2],
                (0..batch * seq * 2).map(|i| i as f32 - 2.5).collect(),
            );
            let k = Tensor::from_i64(&[batch], (0..batch as i64).map(|i| i * 1000 - 1).collect());
            let inputs = [x, k];
            let want = model.run(&inputs).unwrap();
            assert_eq!(want[1], inputs[0]);
            assert_eq!(want[0], want[3]);
            assert_eq!(
                model.output_shapes(&inputs).unwrap(),
                want.iter().map(|t| t.shape().to_vec()).collect::<Vec<_>>()
            );
            assert_eq!(
                run_borrowed(&model, &inputs),
                want,
                "{engine:?} batch {batch} seq {seq}"
            );
        }
    }
}

#[test]
fn wrong_output_buffers_are_errors_naming_the_output() {
    let graph =
        qlift_ir::text::parse("graph t(%x: f32[N,2]) -> (%y) {\n  %y = Relu(%x) : f32[N,2]\n}")
            .unwrap();
    let x = Tensor::from_f32(&[2, 2], vec![1.0, -1.0, 2.0, -2.0]);
    for engine in ENGINES {
        let model = CompiledModel::from_graph(
            &graph,
            None,
            &CompileOptions {
                engine,
                ..Default::default()
            },
        )
        .unwrap();
        let mut wrong = [Tensor::zeros(DType::F32, &[3, 2])];
        let err = model
            .run_buffers_into(std::slice::from_ref(&x), &mut wrong)
            .unwrap_err();
        assert!(
            !err.is_internal()
                && err.to_string().contains("`y`")
                && err.to_string().contains("[3, 2]"),
            "{engine:?}: {err}"
        );
        let mut i32s = [Tensor::zeros(DType::I32, &[2, 2])];
        assert!(
            model
                .run_buffers_into(std::slice::from_ref(&x), &mut i32s)
                .is_err(),
            "{engine:?}"
        );
    }
}
