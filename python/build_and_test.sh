#!/usr/bin/env bash
# Builds the qlift Python wheel and tests it as a user gets it: a fresh venv under
# target/python-venv with maturin, numpy, pytest, onnx and onnxruntime from PyPI; the abi3 wheel built
# by maturin into target/wheels; the wheel installed into that venv; the pytest suite run
# from the installed package against the `qlift` CLI (built here in release).
#
#   python/build_and_test.sh            # everything
#   python/build_and_test.sh -k threads # extra arguments go to pytest
#
# PYTHON picks the interpreter (default python3, 3.8 or newer). Nothing is written outside
# target/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="$root/target"
venv="$root/target/python-venv"

rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# onnxruntime: the Python overhead comparison (python/tests/test_overhead.py, bench/overhead.py).
"$venv/bin/python" -m pip install -q maturin numpy pytest onnx onnxruntime

# The CLI the tests compare outputs with, bit for bit.
cargo build --release --locked -p qlift --bin qlift

rm -f target/wheels/qlift-*.whl
"$venv/bin/maturin" build --release --locked -m python/Cargo.toml -i "$venv/bin/python" -o target/wheels
wheel=$(ls target/wheels/qlift-*.whl)
echo "built $wheel"
"$venv/bin/python" -m pip install -q --force-reinstall "$wheel"

# From outside the source tree, so that `import qlift` is the installed wheel.
cd "$root/target"
QLIFT_CLI="$root/target/release/qlift" "$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/python/tests" "$@"

# Python overhead per call against ONNX Runtime's on the bundled MLP (README.md, "Python");
# QLIFT_SKIP_OVERHEAD=1 skips it.
if [ "${QLIFT_SKIP_OVERHEAD:-0}" != "1" ]; then
    "$venv/bin/python" "$root/python/bench/overhead.py"
fi
