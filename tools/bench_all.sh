#!/usr/bin/env bash
# Runs tools/peers.py for every bundled model: batch 1 and the whole test set, one and two
# threads, qlift int8 next to ONNX Runtime fp32/int8 and tract fp32. The tables in
# PERFORMANCE.md come from one run of this script (dev-only: needs onnxruntime and tract from
# PyPI, and `cargo build --release`).
set -euo pipefail
cd "$(dirname "$0")/.."
M=examples/models
Q=target/release/qlift
tmp=$(mktemp -d)
python3 - "$tmp" <<'PY'
import sys, numpy as np
d = sys.argv[1]
for f in ["digits_test_x", "digits_test_x_flat"]:
    np.save(f"{d}/{f}_1.npy", np.load(f"examples/models/{f}.npy")[:1])
PY
for spec in "digits_cnn digits_test_x digits_calib_x" "digits_mlp digits_test_x_flat digits_calib_x_flat" "digits_mobile digits_test_x digits_calib_x"; do
  set -- $spec
  for input in "$tmp/$2_1.npy" "$M/$2.npy"; do
    for threads in 1 2; do
      iters=$([[ $input == *_1.npy ]] && echo 3000 || echo 100)
      python3 tools/peers.py "$M/$1.onnx" --input "$input" --threads "$threads" --iters "$iters" --warmup 50 \
        --cmd "$Q bench $M/$1.onnx --input $input --calib $M/$3.npy --threads $threads --iters $iters --json"
      echo
    done
  done
done
rm -rf "$tmp"
