"""Errors are exceptions of a class per kind (all QliftError), with the library's messages."""

import numpy as np
import onnx
import onnx.helper as oh
import pytest

import qlift
from conftest import MODELS


def test_classes():
    for cls in [qlift.BadModelError, qlift.BadInputError, qlift.UnsupportedOpError, qlift.InternalError]:
        assert issubclass(cls, qlift.QliftError) and issubclass(cls, Exception)
        assert cls.__doc__


def test_a_missing_file_is_a_bad_model_naming_it():
    with pytest.raises(qlift.BadModelError, match="no_such_model.onnx"):
        qlift.compile(MODELS / "no_such_model.onnx")


def test_garbage_bytes_are_a_bad_model():
    with pytest.raises(qlift.BadModelError, match="not a valid ONNX model"):
        qlift.compile(b"\x08\xff\xff\xff not a model")


def test_an_unsupported_op_names_the_op_and_node():
    t = oh.make_tensor_type_proto(onnx.TensorProto.FLOAT, ["N", 4])
    g = oh.make_graph([oh.make_node("NoSuchOp", ["x"], ["y"], name="the_node")], "g", [oh.make_value_info("x", t)], [oh.make_value_info("y", t)])
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    with pytest.raises(qlift.UnsupportedOpError, match=r"(?s)NoSuchOp.*the_node"):
        qlift.compile(model)


def test_wrong_arguments_are_python_errors():
    with pytest.raises(TypeError, match="model must be a path, bytes or an onnx.ModelProto"):
        qlift.compile(42)
    with pytest.raises(ValueError, match="unknown calibration method `fastest`"):
        qlift.compile(MODELS / "digits_mlp.onnx", method="fastest")
    with pytest.raises(ValueError, match="engine"):
        qlift.compile(MODELS / "digits_mlp.onnx", engine="gpu")
    with pytest.raises(ValueError, match="threads"):
        qlift.compile(MODELS / "digits_mlp.onnx", threads=0)
    with pytest.raises(ValueError, match="unknown pass"):
        qlift.dump(MODELS / "digits_mlp.onnx", after="no-such-pass")
    with pytest.raises(TypeError, match="calib must be"):
        qlift.compile(MODELS / "digits_mlp.onnx", calib=3.5)


def test_bad_inputs_name_the_input(data):
    m = qlift.compile(MODELS / "digits_cnn.onnx")
    name = m.inputs[0]["name"]
    with pytest.raises(qlift.BadInputError, match=f"input `{name}`"):
        m(data["x_flat"])
    with pytest.raises(qlift.BadInputError, match="has no input `nope`"):
        m({"nope": data["x"]})
    # Two arrays for a one-input model are read as one array of two.
    with pytest.raises(qlift.BadInputError, match=r"expected shape \[N,1,8,8\], got \[2, 540, 1, 8, 8\]"):
        m([data["x"], data["x"]])
    with pytest.raises(qlift.BadInputError, match="is missing"):
        m({})


def test_bad_calibration_data_says_so(data):
    with pytest.raises(qlift.BadInputError, match="calibration"):
        qlift.compile(MODELS / "digits_cnn.onnx", data["calib_flat"])
    with pytest.raises(qlift.BadInputError, match="no calibration samples"):
        qlift.compile(MODELS / "digits_cnn.onnx", [])
    with pytest.raises(qlift.BadInputError, match=r"calibration data: input `input`: .*\[10, 64\]"):
        qlift.compile(MODELS / "digits_cnn.onnx", [data["calib"][:10], data["calib_flat"][:10]])


def test_an_exception_of_the_calibration_iterator_propagates_as_it_is(data):
    def batches():
        yield data["calib"][:50]
        raise KeyError("the data set ran dry")

    with pytest.raises(KeyError, match="ran dry"):
        qlift.compile(MODELS / "digits_cnn.onnx", batches())


def test_quantizing_a_quantized_model_is_refused(data):
    with pytest.raises(qlift.BadModelError, match="already quantized"):
        qlift.quantize(MODELS / "digits_cnn.qdq.onnx", data["calib"])


def test_a_model_keeps_working_after_errors(data):
    m = qlift.compile(MODELS / "digits_mlp.onnx", data["calib_flat"])
    want = m(data["x_flat"][:3])[0]
    for bad in [data["x"][:3], data["x_flat"][:3].astype(np.float64), {"nope": 1}]:
        with pytest.raises(qlift.BadInputError):
            m(bad)
    assert np.array_equal(m(data["x_flat"][:3])[0], want)
