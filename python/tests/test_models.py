"""The bundled models through the Python package give exactly what the CLI gives: runs
(fp32, int8 quantized here, and ONNX Runtime's QDQ models), quantize, report and dump."""

import json
import pathlib

import numpy as np
import onnx
import pytest

import qlift
from conftest import MODELS, same_bits

# (model, test input, calibration input) of the bundled float models.
FLOAT_MODELS = [
    ("digits_cnn.onnx", "digits_test_x.npy", "digits_calib_x.npy"),
    ("digits_mlp.onnx", "digits_test_x_flat.npy", "digits_calib_x_flat.npy"),
    ("digits_mobile.onnx", "digits_test_x.npy", "digits_calib_x.npy"),
]


@pytest.mark.parametrize("model,x,calib", FLOAT_MODELS)
@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "int8"])
def test_runs_equal_the_cli_bit_for_bit(cli, tmp_path, model, x, calib, quantized):
    out = tmp_path / "cli.npy"
    args = [MODELS / model, "--input", MODELS / x, "--output", out]
    if quantized:
        args += ["--calib", MODELS / calib]
    cli("run", *args)
    m = qlift.compile(MODELS / model, np.load(MODELS / calib) if quantized else None)
    assert m.quantized == quantized
    (got,) = m.run(np.load(MODELS / x))
    assert same_bits(got, np.load(out))


@pytest.mark.parametrize("model", ["digits_cnn.qdq.onnx", "digits_cnn.qop.onnx", "digits_mlp.qdq.onnx", "digits_mobile.qdq.onnx"])
def test_already_quantized_models_equal_the_cli(cli, tmp_path, data, model):
    x = MODELS / ("digits_test_x_flat.npy" if "mlp" in model else "digits_test_x.npy")
    out = tmp_path / "cli.npy"
    cli("run", MODELS / model, "--input", x, "--output", out)
    m = qlift.compile(str(MODELS / model))
    assert m.quantized
    (got,) = m(np.load(x))
    assert same_bits(got, np.load(out))
    # Close to ONNX Runtime's own outputs of its int8 model, and as accurate.
    assert (got.argmax(1) == data["y"]).mean() > 0.95


def test_accuracy_of_the_int8_cnn(data):
    m = qlift.compile(MODELS / "digits_cnn.onnx", calib=data["calib"])
    (logits,) = m(data["x"])
    assert logits.shape == (540, 10) and logits.dtype == np.float32
    assert (logits.argmax(1) == data["y"]).mean() > 0.98


@pytest.mark.parametrize("method", ["minmax", "percentile:99.9", "mse", "entropy"])
def test_quantize_writes_what_the_cli_writes(cli, tmp_path, data, method):
    out = tmp_path / "cli.qdq.onnx"
    cli("quantize", MODELS / "digits_cnn.onnx", "--calib", MODELS / "digits_calib_x.npy", "--method", method, "-o", out)
    got = qlift.quantize(MODELS / "digits_cnn.onnx", data["calib"], method=method)
    assert got == out.read_bytes()
    # To a file as well, and the result is a model ONNX accepts and qlift runs.
    path = tmp_path / "py.qdq.onnx"
    assert qlift.quantize(MODELS / "digits_cnn.onnx", data["calib"], path, method=method) is None
    assert path.read_bytes() == got
    onnx.checker.check_model(onnx.load(str(path)))
    (y,) = qlift.compile(path)(data["x"])
    assert (y.argmax(1) == data["y"]).mean() > 0.97


def test_symmetric_i8_activations_equal_the_cli(cli, tmp_path, data):
    out = tmp_path / "cli.npy"
    cli("run", MODELS / "digits_cnn.onnx", "--calib", MODELS / "digits_calib_x.npy", "--activations", "i8", "--input", MODELS / "digits_test_x.npy", "--output", out)
    (got,) = qlift.compile(MODELS / "digits_cnn.onnx", data["calib"], activations="i8")(data["x"])
    assert same_bits(got, np.load(out))


def test_report_rows_equal_the_cli_json(cli, data):
    want = json.loads(cli("report", MODELS / "digits_cnn.onnx", "--calib", MODELS / "digits_calib_x.npy", "--input", MODELS / "digits_test_x.npy", "--json"))
    rows = qlift.report(MODELS / "digits_cnn.onnx", data["calib"], data["x"])
    assert len(rows) == len(want["layers"]) > 3
    for row, w in zip(rows, want["layers"]):
        assert (row["name"], row["op"], row["elements"], row["output"]) == (w["name"], w["op"], w["elements"], w["output"])
        assert row["max_abs_error"] == w["max_abs_error"]
        assert row["sqnr_db"] == (w["sqnr_db"] if w["sqnr_db"] is not None else float("inf"))
    # Worst first, the model output among them.
    assert [r["sqnr_db"] for r in rows] == sorted(r["sqnr_db"] for r in rows)
    assert any(r["output"] for r in rows)


def test_report_of_an_already_quantized_model_needs_no_calibration(cli, data):
    want = json.loads(cli("report", MODELS / "digits_cnn.qdq.onnx", "--input", MODELS / "digits_test_x.npy", "--json"))
    rows = qlift.report(MODELS / "digits_cnn.qdq.onnx", None, data["x"])
    assert [(r["name"], r["op"]) for r in rows] == [(w["name"], w["op"]) for w in want["layers"]]


@pytest.mark.parametrize("after", [None, "all", "fold-bn"])
def test_dump_prints_what_the_cli_prints(cli, after):
    args = ["dump", MODELS / "digits_cnn.onnx"] + (["--after", after] if after else [])
    assert qlift.dump(MODELS / "digits_cnn.onnx", after=after) + "\n" in (cli(*args), cli(*args) + "\n")


def test_dump_with_calibration_equals_the_cli(cli, data):
    want = cli("dump", MODELS / "digits_mlp.onnx", "--calib", MODELS / "digits_calib_x_flat.npy")
    got = qlift.dump(MODELS / "digits_mlp.onnx", data["calib_flat"])
    assert "; after insert-qdq" in got
    assert want.rstrip("\n") == got.rstrip("\n")


def test_model_sources_path_str_bytes_and_model_proto_agree(data):
    path = MODELS / "digits_mlp.onnx"
    x = data["x_flat"][:32]
    want = qlift.compile(path, data["calib_flat"])(x)[0]
    for source in [str(path), path.read_bytes(), bytearray(path.read_bytes()), onnx.load(str(path))]:
        got = qlift.compile(source, data["calib_flat"])(x)[0]
        assert same_bits(got, want), type(source)


def test_calibration_as_array_dict_or_batches_quantizes_alike(data):
    path = MODELS / "digits_cnn.onnx"
    calib = data["calib"]
    x = data["x"][:64]
    name = qlift.compile(path).inputs[0]["name"]
    want = qlift.compile(path, calib)(x)[0]
    uneven = [calib[:1], calib[1:70], calib[70:71], calib[71:150], calib[150:]]
    sources = {
        "dict": {name: calib},
        "list of batches": uneven,
        "generator": (b for b in uneven),
        "batches of dicts": [{name: b} for b in uneven],
        "batches of tuples": [(b,) for b in uneven],
        "one sample at a time without its axis": (s for s in calib),
    }
    for label, source in sources.items():
        got = qlift.compile(path, source)(x)[0]
        assert same_bits(got, want), label
    # Other data gives other scales.
    other = qlift.compile(path, calib[:10])(x)[0]
    assert not same_bits(other, want)


def test_inputs_outputs_and_repr(data):
    m = qlift.compile(MODELS / "digits_cnn.onnx", data["calib"])
    (i,) = m.inputs
    assert i["shape"][1:] == (1, 8, 8) and isinstance(i["shape"][0], str)
    assert i["dtype"] == "float32" and i["quantization"] is None
    (o,) = m.outputs
    assert o["shape"][1:] == (10,) and o["dtype"] == "float32"
    assert "int8" in repr(m) and i["name"] in repr(m)
    assert m.engine.startswith("jit")
    assert m.compile_seconds > 0
    assert "QLinear" in m.ir() or "Requant" in m.ir() or "i8" in m.ir()


def test_bench_times_native_runs(data):
    m = qlift.compile(MODELS / "digits_mlp.onnx", data["calib_flat"])
    b = m.bench(data["x_flat"][:1], runs=50, warmup=5)
    assert b["runs"] == 50
    assert 0 < b["min_us"] <= b["median_us"] <= b["p90_us"]
    assert b["mean_us"] >= b["min_us"]
    with pytest.raises(ValueError):
        m.bench(data["x_flat"][:1], runs=0)


def test_interpreter_engine_agrees_with_the_jit(data):
    x = data["x"][:16]
    jit = qlift.compile(MODELS / "digits_cnn.onnx", data["calib"])(x)[0]
    interp = qlift.compile(MODELS / "digits_cnn.onnx", data["calib"], engine="interpreter")
    assert interp.engine == "reference interpreter"
    assert same_bits(interp(x)[0], jit)


def test_threads_per_call_give_the_same_outputs(data):
    x = data["x"]
    one = qlift.compile(MODELS / "digits_cnn.onnx", data["calib"])(x)[0]
    four = qlift.compile(MODELS / "digits_cnn.onnx", data["calib"], threads=4)(x)[0]
    assert same_bits(one, four)
