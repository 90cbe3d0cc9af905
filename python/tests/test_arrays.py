"""numpy in and out: non-contiguous and unaligned arrays, dtypes, input forms, zero-copy
outputs, and many Python threads sharing one model."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnx.helper as oh
import pytest

import qlift
from conftest import MODELS, same_bits


@pytest.fixture(scope="module")
def cnn(data):
    return qlift.compile(MODELS / "digits_cnn.onnx", data["calib"])


@pytest.fixture(scope="module")
def mlp(data):
    return qlift.compile(MODELS / "digits_mlp.onnx", data["calib_flat"])


def test_non_contiguous_inputs_equal_contiguous_copies(cnn, mlp, data):
    x = data["x"]
    views = {
        "every other sample": x[::2],
        "reversed": x[::-1],
        "fortran order": np.asfortranarray(x),
        "transposed twice": x.transpose(0, 1, 3, 2).transpose(0, 1, 3, 2),
        "inner slice of a wider array": np.pad(x, ((0, 0), (0, 0), (0, 0), (0, 3)))[..., :8],
    }
    for label, view in views.items():
        assert not (view.flags.c_contiguous and view.base is None) or label == "fortran order"
        got = cnn(view)[0]
        assert same_bits(got, cnn(np.ascontiguousarray(view))[0]), label
    flat = data["x_flat"]
    got = mlp(flat[:, ::1][3:40:3])[0]
    assert same_bits(got, mlp(np.ascontiguousarray(flat[3:40:3]))[0])


def test_unaligned_inputs_are_copied_not_refused(mlp, data):
    x = data["x_flat"][:5]
    raw = np.zeros(x.nbytes + 1, dtype=np.uint8)
    unaligned = raw[1:].view(np.float32).reshape(x.shape)
    unaligned[...] = x
    assert not unaligned.flags.aligned
    assert same_bits(mlp(unaligned)[0], mlp(x)[0])


def test_input_forms(cnn, data):
    x = data["x"][:8]
    name = cnn.inputs[0]["name"]
    want = cnn(x)[0]
    for form in [x, [x], (x,), {name: x}, x.tolist()]:
        assert same_bits(cnn.run(form)[0], want)
    # A batch of one; an empty batch is refused with a reason.
    assert same_bits(cnn(x[:1])[0], want[:1])
    with pytest.raises(qlift.BadInputError, match="batch size 0"):
        cnn(x[:0])


def test_outputs_are_fresh_writable_arrays(cnn, data):
    x = data["x"][:4]
    a = cnn(x)[0]
    b = cnn(x)[0]
    assert a.flags.owndata and a.flags.writeable and a.flags.c_contiguous
    a[...] = 0
    assert not np.array_equal(a, b)


def test_wrong_dtypes_are_errors_that_say_how_to_fix(cnn, data):
    x = data["x"][:4]
    with pytest.raises(qlift.BadInputError, match=r"float32.*float64.*astype\(numpy.float32\)"):
        cnn(x.astype(np.float64))
    with pytest.raises(qlift.BadInputError, match="int32"):
        cnn(x.astype(np.int32))
    with pytest.raises(qlift.BadInputError, match="the model takes f32"):
        cnn(x.astype(">f4"))
    # Calibration data is checked the same way.
    with pytest.raises(qlift.BadInputError, match="float64"):
        qlift.compile(MODELS / "digits_cnn.onnx", data["calib"].astype(np.float64))


def _int_model(dtype):
    """y = x + x, z = x (identity output) on [N, 3] tensors of an integer type."""
    t = oh.make_tensor_type_proto(dtype, ["N", 3])
    g = oh.make_graph(
        [oh.make_node("Add", ["x", "x"], ["y"], name="add")],
        "ints",
        [oh.make_value_info("x", t)],
        [oh.make_value_info("y", t), oh.make_value_info("x", t)],
    )
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


@pytest.mark.parametrize("engine", ["jit", "interpreter"])
@pytest.mark.parametrize("onnx_type,np_type", [(onnx.TensorProto.INT32, np.int32), (onnx.TensorProto.INT64, np.int64)])
def test_integer_inputs_and_outputs(engine, onnx_type, np_type):
    m = qlift.compile(_int_model(onnx_type), engine=engine)
    assert m.inputs[0]["dtype"] == np.dtype(np_type).name
    x = np.arange(-6, 6, dtype=np_type).reshape(4, 3)
    y, same = m(x)
    assert y.dtype == np_type and same.dtype == np_type
    assert np.array_equal(y, 2 * x) and np.array_equal(same, x)
    with pytest.raises(qlift.BadInputError):
        m(x.astype(np.float32))


def test_many_python_threads_share_one_model(cnn, data):
    x = data["x"]
    want = cnn(x)[0]
    chunks = [(i, min(i + 37, len(x))) for i in range(0, len(x), 37)]

    def work(chunk):
        lo, hi = chunk
        out = None
        for _ in range(5):
            out = cnn(x[lo:hi])[0]
        return lo, hi, out

    with ThreadPoolExecutor(max_workers=8) as pool:
        for lo, hi, out in pool.map(work, chunks * 3):
            assert same_bits(out, want[lo:hi])


def test_the_gil_is_released_while_a_model_runs(data):
    # While one thread runs a large batch many times, another Python thread keeps running:
    # it counts while the runs are in progress (with the GIL held throughout it could not).
    m = qlift.compile(MODELS / "digits_mobile.onnx", data["calib"])
    big = np.concatenate([data["x"]] * 4)
    counted = []
    done = threading.Event()

    def count():
        n = 0
        while not done.is_set():
            n += 1
        counted.append(n)

    t = threading.Thread(target=count)
    t.start()
    try:
        m.bench(big, runs=10, warmup=0)
    finally:
        done.set()
        t.join()
    assert counted[0] > 1000
