//! `qlift._qlift`: the Python binding (PyO3, abi3). The package `qlift` (pysrc/qlift)
//! re-exports it; the stubs in `pysrc/qlift/__init__.pyi` document it for type checkers.
//!
//! numpy arrays are read where they lie when they are C-contiguous, aligned and of the
//! input's dtype (else a contiguous copy is made); outputs are numpy arrays that generated
//! code writes directly. The GIL is released while a model compiles and runs.
#![deny(missing_docs)]

use numpy::npyffi::flags::NPY_ARRAY_ALIGNED;
use numpy::{Element, PyArray, PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyIterator, PyList, PyTuple};
use qlift::{ActivationScheme, CalibrationMethod, CompileOptions, CompiledModel, Engine, Error, ErrorKind, Limits, QuantPlan, QuantizeOptions};
use qlift_ir::{DType, Dim, Graph, Tensor, TensorBuf, TensorMut, TensorRef, TensorType};
use qlift_passes::{run_pipeline, PipelineOptions, PrintAfter};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

create_exception!(qlift, QliftError, PyException, "Base class of every error qlift raises.");
create_exception!(qlift, BadModelError, QliftError, "The model cannot be read or is invalid (a missing file, garbled bytes, a bad graph).");
create_exception!(
    qlift,
    BadInputError,
    QliftError,
    "Data given with the model is wrong: calibration data or run inputs (names, shapes, dtypes)."
);
create_exception!(qlift, UnsupportedOpError, QliftError, "The model uses an op, opset or feature this version of qlift does not support.");
create_exception!(qlift, InternalError, QliftError, "A bug in qlift: please report it with the model.");

/// Where an error of the library came from: on a run, what is not a bug nor unsupported is
/// the inputs' fault.
#[derive(Clone, Copy)]
enum Stage {
    Load,
    Calibrate,
    Run,
}

fn to_py(e: Error, stage: Stage) -> PyErr {
    let message = e.to_string();
    match (e.kind(), stage) {
        (ErrorKind::Internal, _) => InternalError::new_err(format!("{message}\n{}", qlift::cli::BUG_REPORT)),
        (ErrorKind::Unsupported, _) => UnsupportedOpError::new_err(message),
        (ErrorKind::BadInput, Stage::Calibrate) if !message.contains("calibration") => BadInputError::new_err(format!("calibration data: {message}")),
        (_, Stage::Run) | (ErrorKind::BadInput, _) => BadInputError::new_err(message),
        (ErrorKind::BadModel, _) => BadModelError::new_err(message),
    }
}

fn bad_input(message: impl Into<String>) -> PyErr {
    BadInputError::new_err(message.into())
}

/// The numpy dtype that stores `d` (4-bit types one per byte, booleans as `bool`).
fn numpy_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::I8 | DType::I4 => "int8",
        DType::U8 | DType::U4 => "uint8",
        DType::I16 => "int16",
        DType::I32 => "int32",
        DType::I64 => "int64",
        DType::Bool => "bool",
    }
}

/// Whether a numpy dtype (kind, item size, byte order) stores `d` in native byte order.
fn stores(kind: u8, size: usize, order: u8, d: DType) -> bool {
    let native = match order {
        b'=' | b'|' => true,
        b'<' => cfg!(target_endian = "little"),
        b'>' => cfg!(target_endian = "big"),
        _ => false,
    };
    native
        && match d {
            DType::F32 => kind == b'f' && size == 4,
            DType::I8 | DType::I4 => kind == b'i' && size == 1,
            DType::U8 | DType::U4 => kind == b'u' && size == 1,
            DType::I16 => kind == b'i' && size == 2,
            DType::I32 => kind == b'i' && size == 4,
            DType::I64 => kind == b'i' && size == 8,
            DType::Bool => kind == b'b' && size == 1,
        }
}

/// An input array checked against what the model declares, C-contiguous and aligned (a copy
/// when the caller's array is not).
struct Array<'py> {
    array: Bound<'py, PyUntypedArray>,
    dtype: DType,
}

impl<'py> Array<'py> {
    fn new(obj: &Bound<'py, PyAny>, name: &str, dtype: DType) -> PyResult<Array<'py>> {
        // Not an array (a list, a scalar): numpy makes one of the input's dtype.
        let array = match obj.cast::<PyUntypedArray>() {
            Ok(a) => a.clone(),
            Err(_) => obj.py().import("numpy")?.call_method1("asarray", (obj, numpy_name(dtype)))?.cast_into::<PyUntypedArray>()?,
        };
        let descr = array.dtype();
        if !stores(descr.kind(), descr.itemsize(), descr.byteorder(), dtype) {
            let given = descr.str()?.to_string();
            return Err(bad_input(format!(
                "input `{name}`: the model takes {dtype} (numpy {}), the array is {given}; convert it with .astype(numpy.{})",
                numpy_name(dtype),
                numpy_name(dtype)
            )));
        }
        // SAFETY: a live array object; its flags field is read only.
        let aligned = unsafe { (*array.as_array_ptr()).flags } & NPY_ARRAY_ALIGNED != 0;
        let array = if array.is_c_contiguous() && aligned {
            array
        } else {
            // A fresh copy (C order by default) is contiguous and aligned.
            array.call_method0("copy")?.cast_into::<PyUntypedArray>()?
        };
        Ok(Array { array, dtype })
    }

    fn shape(&self) -> &[usize] {
        self.array.shape()
    }

    /// The elements' bytes. The array must stay alive and unresized meanwhile (it is held).
    fn bytes(&self) -> &[u8] {
        let len = self.array.len() * self.dtype.size_of();
        if len == 0 {
            return empty();
        }
        // SAFETY: a C-contiguous, aligned array of `len` bytes (checked above) that `self`
        // keeps alive; it is only read.
        unsafe { std::slice::from_raw_parts((*self.array.as_array_ptr()).data.cast::<u8>(), len) }
    }
}

/// Model inputs given as one array (a one-input model), a sequence in input order, or a dict
/// by name; each checked against its declared dtype.
fn input_arrays<'py>(obj: &Bound<'py, PyAny>, declared: &[(String, TensorType)], what: &str) -> PyResult<Vec<Array<'py>>> {
    let names = || declared.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
    if let Ok(dict) = obj.cast::<PyDict>() {
        for key in dict.keys() {
            let key: String = key.extract().map_err(|_| bad_input(format!("{what}: dict keys must be input names (str)")))?;
            if !declared.iter().any(|(n, _)| *n == key) {
                return Err(bad_input(format!("{what}: the model has no input `{key}` (inputs: {})", names())));
            }
        }
        return declared
            .iter()
            .map(|(name, ty)| match dict.get_item(name)? {
                Some(v) => Array::new(&v, name, ty.dtype),
                None => Err(bad_input(format!("{what}: input `{name}` is missing (inputs: {})", names()))),
            })
            .collect();
    }
    let items: Vec<Bound<'py, PyAny>> = if obj.cast::<PyList>().is_ok() || obj.cast::<PyTuple>().is_ok() {
        let items: Vec<Bound<'py, PyAny>> = obj.try_iter()?.collect::<PyResult<_>>()?;
        // For a one-input model, a list that is not [array] is the array's data (nested lists).
        let one_array = items.len() == 1 && items[0].cast::<PyUntypedArray>().is_ok();
        match declared.len() == 1 && !one_array {
            true => vec![obj.clone()],
            false => items,
        }
    } else {
        vec![obj.clone()]
    };
    if items.len() != declared.len() {
        return Err(bad_input(format!(
            "{what}: the model has {} inputs ({}), {} arrays were given (pass a list in input order or a dict by name)",
            declared.len(),
            names(),
            items.len()
        )));
    }
    items.iter().zip(declared).map(|(item, (name, ty))| Array::new(item, name, ty.dtype)).collect()
}

/// No bytes, at an address aligned for every dtype (what an empty tensor's buffer must be).
fn empty<'a>() -> &'a [u8] {
    // SAFETY: zero bytes at a dangling, well-aligned, non-null address.
    unsafe { std::slice::from_raw_parts(std::ptr::NonNull::<u64>::dangling().as_ptr().cast::<u8>(), 0) }
}

/// [`empty`], writable.
fn empty_mut<'a>() -> &'a mut [u8] {
    // SAFETY: as in `empty`; nothing can be written to zero bytes.
    unsafe { std::slice::from_raw_parts_mut(std::ptr::NonNull::<u64>::dangling().as_ptr().cast::<u8>(), 0) }
}

fn refs<'a>(arrays: &'a [Array<'_>]) -> PyResult<Vec<TensorRef<'a>>> {
    arrays.iter().map(|a| TensorRef::new(a.dtype, a.shape(), a.bytes()).map_err(bad_input)).collect()
}

/// A zeroed numpy array of `dtype` and `shape` (its storage dtype for 4-bit types).
fn new_array<'py>(py: Python<'py>, dtype: DType, shape: &[usize]) -> Bound<'py, PyUntypedArray> {
    fn zeros<'py, T: Element>(py: Python<'py>, shape: &[usize]) -> Bound<'py, PyUntypedArray> {
        PyArray::<T, _>::zeros(py, shape, false).into_any().cast_into::<PyUntypedArray>().expect("a new array is an array")
    }
    match dtype {
        DType::F32 => zeros::<f32>(py, shape),
        DType::I8 | DType::I4 => zeros::<i8>(py, shape),
        DType::U8 | DType::U4 => zeros::<u8>(py, shape),
        DType::I16 => zeros::<i16>(py, shape),
        DType::I32 => zeros::<i32>(py, shape),
        DType::I64 => zeros::<i64>(py, shape),
        DType::Bool => zeros::<bool>(py, shape),
    }
}

/// A tensor copied into a new numpy array.
fn tensor_to_numpy<'py>(py: Python<'py>, t: &Tensor) -> Bound<'py, PyUntypedArray> {
    let array = new_array(py, t.dtype(), t.shape());
    let bytes = t.bytes();
    if !bytes.is_empty() {
        // SAFETY: a new C-contiguous array of exactly this dtype and shape, not shared yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), (*array.as_array_ptr()).data.cast::<u8>(), bytes.len()) };
    }
    array
}

/// A model given as a path (str or os.PathLike), bytes, or an `onnx.ModelProto`; loaded.
fn load_graph(py: Python<'_>, model: &Bound<'_, PyAny>) -> PyResult<(Graph, String)> {
    let opts = qlift::ImportOptions::default();
    let bytes: Option<Vec<u8>> = if let Ok(b) = model.cast::<PyBytes>() {
        Some(b.as_bytes().to_vec())
    } else if model.hasattr("SerializeToString")? {
        Some(model.call_method0("SerializeToString")?.cast_into::<PyBytes>()?.as_bytes().to_vec())
    } else if model.hasattr("__fspath__")? || model.is_instance_of::<pyo3::types::PyString>() {
        None
    } else if let Ok(b) = model.extract::<Vec<u8>>() {
        // bytearray, memoryview.
        Some(b)
    } else {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "model must be a path, bytes or an onnx.ModelProto, not {}",
            model.get_type().name()?
        )));
    };
    match bytes {
        Some(bytes) => {
            let graph = py.detach(|| qlift::load_onnx_bytes(&bytes, None, &opts)).map_err(|e| to_py(e, Stage::Load))?;
            Ok((graph, "<bytes>".to_string()))
        }
        None => {
            let path: PathBuf = py.import("os")?.call_method1("fspath", (model,))?.extract()?;
            let graph = py.detach(|| qlift::load_onnx(&path, &opts)).map_err(|e| to_py(e, Stage::Load))?;
            Ok((graph, path.display().to_string()))
        }
    }
}

fn quantize_options(method: &str, activations: &str) -> PyResult<QuantizeOptions> {
    let method: CalibrationMethod = method.parse().map_err(pyo3::exceptions::PyValueError::new_err)?;
    let scheme = match activations {
        "u8" | "uint8" => ActivationScheme::AsymmetricU8,
        "i8" | "int8" => ActivationScheme::SymmetricI8,
        other => return Err(pyo3::exceptions::PyValueError::new_err(format!("activations `{other}`: expected \"u8\" (asymmetric) or \"i8\" (symmetric)"))),
    };
    Ok(QuantizeOptions { method, scheme, ..Default::default() })
}

/// A quantization plan given as ``plan=``: ``None`` (none), a path (``str`` or
/// ``os.PathLike``) to a TOML or JSON file, or a dict in the file's shape (``{"default":
/// {...}, "op_types": {...}, "nodes": {...}}``, written through ``json.dumps``). Returns it
/// with the name its errors use.
fn plan_arg(py: Python<'_>, plan: Option<&Bound<'_, PyAny>>) -> PyResult<(QuantPlan, String)> {
    let Some(plan) = plan.filter(|p| !p.is_none()) else {
        return Ok((QuantPlan::default(), String::new()));
    };
    if plan.cast::<PyDict>().is_ok() {
        let text: String = py.import("json")?.call_method1("dumps", (plan,))?.extract()?;
        let source = "(dict)".to_string();
        return Ok((qlift::plan::parse_plan(&text, &source).map_err(|e| to_py(e, Stage::Load))?, source));
    }
    let path: PathBuf = py
        .import("os")?
        .call_method1("fspath", (plan,))
        .map_err(|_| pyo3::exceptions::PyTypeError::new_err(format!("plan must be a path or a dict, not {}", plan.get_type().name().map(|n| n.to_string()).unwrap_or_default())))?
        .extract()?;
    let plan = py.detach(|| qlift::load_plan(&path)).map_err(|e| to_py(e, Stage::Load))?;
    Ok((plan, path.display().to_string()))
}

/// The graph's inputs as the model declares them.
fn declared_inputs(graph: &Graph) -> Vec<(String, TensorType)> {
    graph.input_values().iter().map(|&v| (graph.value(v).name.clone(), graph.value_type(v).clone())).collect()
}

/// One batch of calibration data (an array, a sequence or a dict) copied into tensors.
fn calibration_batch(obj: &Bound<'_, PyAny>, declared: &[(String, TensorType)], what: &str) -> PyResult<Vec<Tensor>> {
    let arrays = input_arrays(obj, declared, what)?;
    Ok(refs(&arrays)?.iter().map(TensorBuf::to_tensor).collect())
}

/// Quantizes `graph` from `calib`: one batch (an array, or a dict by input name) or an
/// iterable of batches, read one at a time while calibration runs (GIL released between).
fn quantize_graph(py: Python<'_>, graph: &Graph, calib: &Bound<'_, PyAny>, opts: &QuantizeOptions, pipeline: &PipelineOptions) -> PyResult<qlift::Quantized> {
    quantize_planned(py, graph, calib, opts, &(QuantPlan::default(), String::new()), pipeline)
}

/// [`quantize_graph`] under a plan (from [`plan_arg`]); errors of the plan name it and are
/// :class:`BadInputError`.
fn quantize_planned(py: Python<'_>, graph: &Graph, calib: &Bound<'_, PyAny>, opts: &QuantizeOptions, (plan, source): &(QuantPlan, String), pipeline: &PipelineOptions) -> PyResult<qlift::Quantized> {
    let to_py = |e: Error| match qlift::plan::name_plan(e, source) {
        e @ Error::Plan { .. } => to_py(e, Stage::Load),
        e => to_py(e, Stage::Calibrate),
    };
    let declared = declared_inputs(graph);
    let limits = Limits::default();
    let is_array = calib.cast::<PyUntypedArray>().is_ok();
    let is_dict = calib.cast::<PyDict>().is_ok();
    if is_array || is_dict {
        let batch = calibration_batch(calib, &declared, "calibration data")?;
        return py
            .detach(|| qlift::quantize::quantize_limited_planned(graph, &batch, opts, plan, pipeline, &limits, &|_, _| {}))
            .map_err(to_py);
    }
    let iter: Py<PyIterator> = calib
        .try_iter()
        .map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "calib must be a numpy array, a dict of arrays by input name, or an iterable of batches, not {}",
                calib.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            ))
        })?
        .unbind();
    // The first error of the data source, raised as it is (a Python exception of the
    // iterator keeps its class).
    let raised: Mutex<Option<PyErr>> = Mutex::new(None);
    let mut index = 0usize;
    let mut next = || -> Option<Result<Vec<Tensor>, Error>> {
        Python::attach(|py| {
            index += 1;
            let what = format!("calibration batch {index}");
            let item = iter.bind(py).clone().next()?;
            let batch = item.and_then(|item| calibration_batch(&item, &declared, &what));
            Some(batch.map_err(|e| {
                let message = e.to_string();
                *raised.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Error::Value { name: what, message }
            }))
        })
    };
    let result = py.detach(|| qlift::quantize::quantize_batches(graph, &mut next, opts, plan, pipeline, &limits, &|_, _| {}));
    if let Some(e) = raised.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    result.map_err(to_py)
}

fn engine_of(engine: &str) -> PyResult<Engine> {
    match engine {
        "jit" => Ok(Engine::Jit),
        "interpreter" | "interp" => Ok(Engine::Interpreter),
        other => Err(pyo3::exceptions::PyValueError::new_err(format!("engine `{other}`: expected \"jit\" or \"interpreter\""))),
    }
}

/// A compiled model: call it (or :meth:`run`) on numpy arrays. Safe to share between
/// threads; the GIL is released while it runs.
#[pyclass(frozen, module = "qlift")]
struct Model {
    model: CompiledModel,
    inputs: Vec<(String, TensorType)>,
    outputs: Vec<(String, TensorType)>,
    source: String,
}

/// A value's description as a dict: name, shape (ints, and strings for symbolic extents),
/// numpy dtype name, and quantization parameters (or None).
fn describe<'py>(py: Python<'py>, name: &str, ty: &TensorType) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", name)?;
    let shape = PyList::empty(py);
    for dim in ty.shape.dims() {
        match dim {
            Dim::Fixed(n) => shape.append(*n)?,
            other => shape.append(other.to_string())?,
        }
    }
    d.set_item("shape", PyTuple::new(py, shape.iter())?)?;
    d.set_item("dtype", numpy_name(ty.dtype))?;
    d.set_item("qlift_dtype", ty.dtype.name())?;
    match &ty.quant {
        None => d.set_item("quantization", py.None())?,
        Some(q) => {
            let qd = PyDict::new(py);
            qd.set_item("scale", q.scale.clone())?;
            qd.set_item("zero_point", q.zero_point.clone())?;
            qd.set_item("axis", q.axis)?;
            d.set_item("quantization", qd)?;
        }
    }
    Ok(d)
}

impl Model {
    /// Runs on `inputs`, writing into new numpy arrays (or, when an output's shape depends
    /// on input values, copying the results into them).
    fn run_arrays<'py>(&self, py: Python<'py>, inputs: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyUntypedArray>>> {
        let arrays = input_arrays(inputs, &self.inputs, "inputs")?;
        let refs = refs(&arrays)?;
        let shapes = match py.detach(|| self.model.output_shapes(&refs)) {
            Ok(shapes) => shapes,
            Err(e) if e.kind() != ErrorKind::Internal && self.model.engine_description().contains("interpreter") => {
                // Shapes known only from values (the interpreter): run, then copy.
                let results = py.detach(|| self.model.run_buffers(&refs)).map_err(|e| to_py(e, Stage::Run))?;
                return Ok(results.iter().map(|t| tensor_to_numpy(py, t)).collect());
            }
            Err(e) => return Err(to_py(e, Stage::Run)),
        };
        let outputs: Vec<Bound<'py, PyUntypedArray>> = shapes.iter().zip(&self.outputs).map(|(s, (_, ty))| new_array(py, ty.dtype, s)).collect();
        let mut outs = Vec::with_capacity(outputs.len());
        for ((array, shape), (name, ty)) in outputs.iter().zip(&shapes).zip(&self.outputs) {
            let len = shape.iter().product::<usize>() * ty.dtype.size_of();
            let bytes: &mut [u8] = if len == 0 {
                empty_mut()
            } else {
                // SAFETY: a new C-contiguous array of `len` bytes, referenced only here until
                // it is returned.
                unsafe { std::slice::from_raw_parts_mut((*array.as_array_ptr()).data.cast::<u8>(), len) }
            };
            outs.push(TensorMut::new(ty.dtype, shape, bytes).map_err(|e| InternalError::new_err(format!("output `{name}`: {e}")))?);
        }
        py.detach(|| self.model.run_buffers_into(&refs, &mut outs)).map_err(|e| to_py(e, Stage::Run))?;
        Ok(outputs)
    }
}

#[pymethods]
impl Model {
    /// Runs the model. ``inputs``: one array (a one-input model), a list or tuple in input
    /// order, or a dict by input name; the batch is axis 0. Returns the outputs, a list of
    /// numpy arrays in output order.
    fn run<'py>(&self, py: Python<'py>, inputs: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyUntypedArray>>> {
        self.run_arrays(py, inputs)
    }

    /// The same as :meth:`run`.
    fn __call__<'py>(&self, py: Python<'py>, inputs: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyUntypedArray>>> {
        self.run_arrays(py, inputs)
    }

    /// The inputs: a list of dicts with ``name``, ``shape`` (strings for symbolic extents such
    /// as the batch ``"N"``), ``dtype`` (numpy's name), ``qlift_dtype`` and ``quantization``
    /// (``None``, or ``scale``, ``zero_point`` and ``axis``).
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.inputs.iter().map(|(n, t)| describe(py, n, t)).collect()
    }

    /// The outputs, described as :attr:`inputs` are.
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.outputs.iter().map(|(n, t)| describe(py, n, t)).collect()
    }

    /// Whether the model runs int8 code (quantized here or already quantized).
    #[getter]
    fn quantized(&self) -> bool {
        self.model.is_quantized()
    }

    /// The engine and, for the JIT, the ISA with its features.
    #[getter]
    fn engine(&self) -> String {
        self.model.engine_description()
    }

    /// Import, rewrites, calibration and code generation, in seconds.
    #[getter]
    fn compile_seconds(&self) -> f64 {
        self.model.compile_time().as_secs_f64()
    }

    /// The lowered IR the engine runs, as text (re-parseable by ``qlift``).
    fn ir(&self) -> String {
        qlift_ir::text::print(self.model.graph(), &Default::default())
    }

    /// Times ``runs`` runs on ``inputs`` (after ``warmup`` untimed ones) inside qlift, without
    /// Python's per-call overhead. Returns a dict of ``runs`` and ``min_us``, ``median_us``,
    /// ``p90_us``, ``mean_us`` (microseconds per run).
    #[pyo3(signature = (inputs, *, runs = 100, warmup = 10))]
    fn bench<'py>(&self, py: Python<'py>, inputs: &Bound<'py, PyAny>, runs: usize, warmup: usize) -> PyResult<Bound<'py, PyDict>> {
        if runs == 0 {
            return Err(pyo3::exceptions::PyValueError::new_err("runs must be at least 1"));
        }
        let arrays = input_arrays(inputs, &self.inputs, "inputs")?;
        let refs = refs(&arrays)?;
        let mut outputs: Vec<Tensor> = match self.model.output_shapes(&refs) {
            Ok(shapes) => shapes.iter().zip(&self.outputs).map(|(s, (_, t))| Tensor::zeros(t.dtype, s)).collect(),
            Err(e) => return Err(to_py(e, Stage::Run)),
        };
        let times = py
            .detach(|| -> Result<Vec<f64>, Error> {
                for _ in 0..warmup {
                    self.model.run_buffers_into(&refs, &mut outputs)?;
                }
                let mut times = Vec::with_capacity(runs);
                for _ in 0..runs {
                    let start = Instant::now();
                    self.model.run_buffers_into(&refs, &mut outputs)?;
                    times.push(start.elapsed().as_secs_f64() * 1e6);
                }
                Ok(times)
            })
            .map_err(|e| to_py(e, Stage::Run))?;
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        let d = PyDict::new(py);
        d.set_item("runs", runs)?;
        d.set_item("min_us", sorted[0])?;
        d.set_item("median_us", sorted[runs / 2])?;
        d.set_item("p90_us", sorted[(runs * 9 / 10).min(runs - 1)])?;
        d.set_item("mean_us", times.iter().sum::<f64>() / runs as f64)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let sig = |vs: &[(String, TensorType)]| vs.iter().map(|(n, t)| format!("{n}: {}{}", t.dtype, t.shape)).collect::<Vec<_>>().join(", ");
        format!(
            "<qlift.Model {} ({}) inputs=[{}] outputs=[{}] engine={}>",
            self.source,
            if self.model.is_quantized() { "int8" } else { "fp32" },
            sig(&self.inputs),
            sig(&self.outputs),
            self.model.engine_description()
        )
    }
}

/// Whether the graph already holds integer ops or Q/DQ (then there is nothing to quantize).
fn already_quantized(graph: &Graph) -> bool {
    use qlift_ir::OpKind::*;
    graph.node_ids().any(|id| {
        graph.node(id).op.kind().is_some_and(|k| k.is_internal() || matches!(k, QuantizeLinear | DequantizeLinear | QLinearConv | QLinearMatMul | ConvInteger | MatMulInteger))
    })
}

/// Compiles an ONNX model (a path, bytes or an ``onnx.ModelProto``) for this CPU. With
/// calibration data it is quantized to int8 first: one numpy array (a one-input model), a
/// dict of arrays by input name, or an iterable of such batches (read one at a time, so
/// large sets stream); samples on axis 0. An already quantized model (QDQ, QOperator) runs
/// with its own quantization and needs none. ``method``: ``"minmax"``, ``"percentile"``,
/// ``"percentile:99.9"``, ``"mse"`` or ``"entropy"``; ``activations``: ``"u8"`` or ``"i8"``;
/// ``threads``: threads one call may use; ``engine``: ``"jit"`` or ``"interpreter"``.
/// ``plan``: a quantization plan, a path to a TOML or JSON file or a dict of the same shape
/// (as ``qlift ... --plan``; its default section overrides ``method`` and ``activations``).
#[pyfunction]
#[pyo3(signature = (model, calib = None, *, method = "minmax", activations = "u8", plan = None, threads = 1, engine = "jit"))]
#[allow(clippy::too_many_arguments)]
fn compile(py: Python<'_>, model: &Bound<'_, PyAny>, calib: Option<&Bound<'_, PyAny>>, method: &str, activations: &str, plan: Option<&Bound<'_, PyAny>>, threads: usize, engine: &str) -> PyResult<Model> {
    if !(1..=1024).contains(&threads) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!("threads: {threads} is not from 1 to 1024")));
    }
    let opts = CompileOptions { engine: engine_of(engine)?, threads, quantize: quantize_options(method, activations)?, ..Default::default() };
    let plan = plan_arg(py, plan)?;
    let (graph, source) = load_graph(py, model)?;
    let pipeline = PipelineOptions::default();
    let calib = calib.filter(|c| !c.is_none());
    let (lowered, calibrated) = match calib {
        Some(c) if !already_quantized(&graph) => (quantize_planned(py, &graph, c, &opts.quantize, &plan, &pipeline)?.lowered, true),
        _ => (py.detach(|| run_pipeline(&graph, &pipeline)).map_err(|e| to_py(e.into(), Stage::Load))?.0, false),
    };
    let quantized = calibrated || lowered.node_ids().any(|id| lowered.node(id).op.kind().is_some_and(|k| k.is_internal()));
    let model = py.detach(|| CompiledModel::from_lowered(lowered, quantized, &opts)).map_err(|e| to_py(e, Stage::Load))?;
    Ok(Model { inputs: model.inputs(), outputs: model.outputs(), model, source })
}

/// Quantizes a float ONNX model from calibration data (as :func:`compile` takes it) into
/// ONNX Runtime's QDQ format, as ``qlift quantize`` does. Writes it to ``output_path`` and
/// returns ``None``, or returns its bytes when no path is given. ``plan``: as for
/// :func:`compile`.
#[pyfunction]
#[pyo3(signature = (model, calib, output_path = None, *, method = "minmax", activations = "u8", plan = None))]
fn quantize<'py>(py: Python<'py>, model: &Bound<'py, PyAny>, calib: &Bound<'py, PyAny>, output_path: Option<&Bound<'py, PyAny>>, method: &str, activations: &str, plan: Option<&Bound<'py, PyAny>>) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let opts = quantize_options(method, activations)?;
    let plan = plan_arg(py, plan)?;
    let (graph, source) = load_graph(py, model)?;
    if already_quantized(&graph) {
        return Err(BadModelError::new_err(format!("{source} is already quantized: there is nothing to quantize (compile() runs it as it is)")));
    }
    let q = quantize_planned(py, &graph, calib, &opts, &plan, &PipelineOptions::default())?;
    let bytes = qlift::export_onnx(&q.qdq).map_err(|e| to_py(e, Stage::Load))?;
    match output_path {
        None => Ok(Some(PyBytes::new(py, &bytes))),
        Some(path) => {
            let path: PathBuf = py.import("os")?.call_method1("fspath", (path,))?.extract()?;
            std::fs::write(&path, &bytes).map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("{}: {e}", path.display())))?;
            Ok(None)
        }
    }
}

/// Per-layer quantization error of the model quantized from ``calib`` against fp32, on
/// ``inputs`` (as ``qlift report`` computes it; an already quantized model is compared with
/// what qlift lowers it to, and ``calib`` may be ``None``). Rows worst first (lowest SQNR), as
/// dicts with ``name``, ``op``, ``sqnr_db`` (``inf`` when exact), ``max_abs_error``,
/// ``elements`` and ``output`` (whether it is a model output): ``pandas.DataFrame(rows)``.
#[pyfunction]
#[pyo3(signature = (model, calib, inputs, *, method = "minmax", activations = "u8"))]
fn report<'py>(py: Python<'py>, model: &Bound<'py, PyAny>, calib: Option<&Bound<'py, PyAny>>, inputs: &Bound<'py, PyAny>, method: &str, activations: &str) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let opts = quantize_options(method, activations)?;
    let (graph, _) = load_graph(py, model)?;
    let declared = declared_inputs(&graph);
    let arrays = input_arrays(inputs, &declared, "inputs")?;
    let inputs: Vec<Tensor> = refs(&arrays)?.iter().map(TensorBuf::to_tensor).collect();
    let pipeline = PipelineOptions::default();
    let (reference, quantized) = if already_quantized(&graph) {
        let lowered = py.detach(|| run_pipeline(&graph, &pipeline)).map_err(|e| to_py(e.into(), Stage::Load))?.0;
        (graph.clone(), lowered)
    } else {
        let calib = calib.filter(|c| !c.is_none()).ok_or_else(|| bad_input("report needs calibration data for a float model"))?;
        let float = py.detach(|| run_pipeline(&graph, &pipeline)).map_err(|e| to_py(e.into(), Stage::Load))?.0;
        (float, quantize_graph(py, &graph, calib, &opts, &pipeline)?.lowered)
    };
    let comparison = py.detach(|| qlift::report::compare(&reference, &quantized, &inputs, &Limits::default())).map_err(|e| to_py(e, Stage::Run))?;
    let outputs: Vec<&str> = reference.outputs().iter().map(|v| reference.value(*v).name.as_str()).collect();
    comparison
        .layers
        .iter()
        .map(|r| {
            let d = PyDict::new(py);
            d.set_item("name", &r.name)?;
            d.set_item("op", &r.op)?;
            d.set_item("sqnr_db", r.sqnr_db)?;
            d.set_item("max_abs_error", r.max_abs_error)?;
            d.set_item("elements", r.elements)?;
            d.set_item("output", outputs.contains(&r.name.as_str()))?;
            Ok(d)
        })
        .collect()
}

/// The model's IR as text, as ``qlift dump`` prints it: as imported, or with ``after`` the IR
/// after that pass of the pipeline (``"all"``: after every pass, each headed by
/// ``; after PASS``). With ``calib`` the pipeline quantizes (and ``after`` defaults to ``"all"``).
#[pyfunction]
#[pyo3(signature = (model, calib = None, *, after = None, method = "minmax", activations = "u8", full_constants = false))]
fn dump(py: Python<'_>, model: &Bound<'_, PyAny>, calib: Option<&Bound<'_, PyAny>>, after: Option<&str>, method: &str, activations: &str, full_constants: bool) -> PyResult<String> {
    let opts = quantize_options(method, activations)?;
    let print_after = match after {
        None => None,
        Some("all") => Some(PrintAfter::All),
        Some(name) if qlift_passes::pass_names().contains(&name) => Some(PrintAfter::Pass(name.to_string())),
        Some(name) => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!("unknown pass `{name}` (passes: {}, or all)", qlift_passes::pass_names().join(", "))))
        }
    };
    let (mut graph, _) = load_graph(py, model)?;
    let calib = calib.filter(|c| !c.is_none() && !already_quantized(&graph));
    let print_after = match print_after {
        None if calib.is_some() => Some(PrintAfter::All),
        other => other,
    };
    if let Some(print_after) = print_after {
        let stop_after = match &print_after {
            PrintAfter::Pass(name) => Some(name.clone()),
            _ => None,
        };
        let pipeline = PipelineOptions { print_after: print_after.clone(), stop_after, ..Default::default() };
        let (optimized, runs) = match calib {
            Some(c) => {
                let q = quantize_graph(py, &graph, c, &opts, &pipeline)?;
                (q.lowered, q.runs)
            }
            None => py.detach(|| run_pipeline(&graph, &pipeline)).map_err(|e| to_py(e.into(), Stage::Load))?,
        };
        if print_after == PrintAfter::All && !full_constants {
            let text: Vec<String> = runs.iter().filter_map(|r| r.dump.as_ref().map(|d| format!("; after {}\n{d}", r.name))).collect();
            return Ok(text.join("\n"));
        }
        graph = optimized;
    }
    Ok(qlift_ir::text::print(&graph, &qlift_ir::text::PrintOptions { full_constants, ..Default::default() }))
}

/// qlift: a quantizing ONNX compiler (int8 quantization from calibration data, Cranelift JIT).
#[pymodule]
fn _qlift(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(report, m)?)?;
    m.add_function(wrap_pyfunction!(dump, m)?)?;
    m.add("QliftError", py.get_type::<QliftError>())?;
    m.add("BadModelError", py.get_type::<BadModelError>())?;
    m.add("BadInputError", py.get_type::<BadInputError>())?;
    m.add("UnsupportedOpError", py.get_type::<UnsupportedOpError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
