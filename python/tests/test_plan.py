"""Quantization plans from Python: qlift.compile(..., plan=...) and qlift.quantize(..., plan=...)
take a path or a dict and give what the CLI's --plan gives, bit for bit."""

import json
import os
import pathlib

import numpy as np
import pytest

import qlift

from conftest import MODELS, ROOT

CORPUS = pathlib.Path(os.environ.get("QLIFT_CORPUS", ROOT / "target" / "corpus"))

# Every setting a plan has, without naming nodes (which are the model's own).
MAGIKA_PLAN = {
    "default": {"method": "percentile:99.9"},
    "op_types": {"MatMul": {"weights": "per-tensor"}},
}


def corpus():
    """The corpus folder, or a skip (a failure when QLIFT_REQUIRE_CORPUS=1, as in CI)."""
    if (CORPUS / "reference.json").exists():
        return CORPUS
    message = f"the corpus is not at {CORPUS} (bash ../shared/corpus/fetch.sh target/corpus)"
    if os.environ.get("QLIFT_REQUIRE_CORPUS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def test_a_corpus_model_quantized_with_a_plan_equals_the_cli(cli, tmp_path):
    dir = corpus()
    model, calib = dir / "magika.onnx", dir / "magika_calib.npy"
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(MAGIKA_PLAN))
    out = tmp_path / "cli.qdq.onnx"
    cli("quantize", model, "--calib", calib, "--plan", plan_file, "-o", out)
    from_dict = qlift.quantize(model, np.load(calib), plan=MAGIKA_PLAN)
    from_path = qlift.quantize(model, np.load(calib), plan=plan_file)
    assert from_dict == out.read_bytes()
    assert from_path == out.read_bytes()
    # The plan changed something: without it the model differs.
    assert qlift.quantize(model, np.load(calib)) != from_dict


def test_compile_with_a_plan_keeps_the_excluded_nodes_float(data):
    calib = data["calib"]
    plain = qlift.compile(MODELS / "digits_mobile.onnx", calib)
    planned = qlift.compile(MODELS / "digits_mobile.onnx", calib, plan={"nodes": {"relu4_node": {"exclude": True}}})
    assert "%relu4_QuantizeLinear_Output = QConv(" in plain.ir()
    assert "%relu4 = Conv(" in planned.ir()
    assert planned.quantized


def test_a_bad_plan_is_a_bad_input_naming_the_entry(data, tmp_path):
    calib = data["calib"]
    with pytest.raises(qlift.BadInputError, match=r'plan \(dict\): entry nodes."relu_4": the model has no node `relu_4`; did you mean `relu4_node`'):
        qlift.compile(MODELS / "digits_mobile.onnx", calib, plan={"nodes": {"relu_4": {"precision": "fp32"}}})
    bad = tmp_path / "bad.toml"
    bad.write_text('[op_types.Conv]\nprecision = "int2"\n')
    with pytest.raises(qlift.BadInputError, match="unknown precision `int2`"):
        qlift.quantize(MODELS / "digits_mobile.onnx", calib, plan=bad)
    with pytest.raises(TypeError, match="plan must be a path or a dict"):
        qlift.quantize(MODELS / "digits_mobile.onnx", calib, plan=3)
