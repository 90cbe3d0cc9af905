#!/usr/bin/env bash
# Runs tools/peers.py for every bundled model: batch 1 and the whole test set (540), one and
# two threads, qlift int8 next to ONNX Runtime fp32/int8 and tract fp32 (one thread), and
# prints one markdown table: the table in PERFORMANCE.md comes from one run of this script.
# Dev-only: needs onnxruntime and tract from PyPI, and `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
M=examples/models
Q=target/release/qlift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp" <<'PY'
import sys, numpy as np
d = sys.argv[1]
for f in ["digits_test_x", "digits_test_x_flat"]:
    np.save(f"{d}/{f}_1.npy", np.load(f"examples/models/{f}.npy")[:1])
PY
echo "| model | batch | threads | qlift int8 µs | ORT int8 µs | ORT fp32 µs | tract fp32 µs | qlift / ORT int8 | qlift / ORT fp32 |"
echo "|---|---|---|---|---|---|---|---|---|"
for spec in "digits_cnn digits_test_x digits_calib_x" "digits_mlp digits_test_x_flat digits_calib_x_flat" "digits_mobile digits_test_x digits_calib_x"; do
  set -- $spec
  for input in "$tmp/$2_1.npy" "$M/$2.npy"; do
    for threads in 1 2; do
      iters=$([[ $input == *_1.npy ]] && echo 3000 || echo 100)
      python3 tools/peers.py "$M/$1.onnx" --input "$input" --threads "$threads" --iters "$iters" --warmup 50 --row \
        --cmd "$Q bench $M/$1.onnx --input $input --calib $M/$3.npy --threads $threads --iters $iters --json"
    done
  done
done
