"""qlift's Python overhead per call is lower than ONNX Runtime's on the bundled MLP at batch 1
(python/bench/overhead.py, in a short run; skipped without onnxruntime). The margin is wide:
README.md's table measures 0.3x."""

import importlib.util

import pytest

from conftest import ROOT


def test_python_overhead_is_below_onnxruntimes():
    pytest.importorskip("onnxruntime")
    spec = importlib.util.spec_from_file_location("overhead", ROOT / "python" / "bench" / "overhead.py")
    overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overhead)
    results = overhead.measure(calls=300, rounds=3)
    for label, r in results.items():
        assert r["qlift_native"] > 0 and r["ort_native"] > 0, (label, r)
        assert r["qlift_overhead"] < r["ort_overhead"], (label, r)
        assert r["qlift_call"] < r["ort_call"], (label, r)
