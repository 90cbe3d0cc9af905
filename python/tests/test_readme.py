"""README.md's Python quickstart runs as written (from a directory that has the bundled
examples, so that its relative paths resolve and its output file lands in a temporary dir)."""

import contextlib
import io
import os
import re

import numpy as np
import onnx

from conftest import ROOT


def readme_block(marker: str, language: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(marker)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match, f"no ```{language} block after {marker}"
    return match.group(1)


def test_python_quickstart(tmp_path):
    code = readme_block("<!-- python-quickstart", "python")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    accuracy = float(out.getvalue().split("accuracy:")[1])
    assert accuracy > 0.98, out.getvalue()
    onnx.checker.check_model(onnx.load(str(tmp_path / "cnn.qdq.onnx")))
