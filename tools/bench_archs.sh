#!/usr/bin/env bash
# Runs tools/peers.py on the standard architectures of ../shared/corpus (ResNet-18,
# MobileNetV2, the wide MLP; made by make_archs.py into CORPUS/archs): batch 1 and 8, one and
# two threads, qlift int8 next to ONNX Runtime fp32/int8, interleaved in ROUNDS rounds, one
# markdown row each. qlift runs the int8 IR it quantized from the calibration set (written
# once to target/archs/NAME.qir, so that each round does not calibrate again).
# Dev-only. Usage: tools/bench_archs.sh [CORPUS_ARCHS_DIR] [extra qlift bench flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:-../main/target/corpus/archs}
shift || true
PY=${PYTHON:-$(dirname "$A")/venv/bin/python}
Q=target/release/qlift
ROUNDS=${ROUNDS:-3}
mkdir -p target/archs
echo "| model | batch | threads | qlift int8 µs | ORT int8 µs | ORT fp32 µs | tract fp32 µs | qlift / ORT int8 | qlift / ORT fp32 |"
echo "|---|---|---|---|---|---|---|---|---|"
for spec in "resnet18 img" "mobilenetv2 img" "mlp mlp"; do
  set -- $spec "$@"
  model=$1 data=$2
  shift 2
  [[ -f target/archs/$model.qir ]] || $Q quantize "$A/$model.onnx" --calib "$A/calib_$data.npy" -o "target/archs/$model.qdq.onnx" --qir "target/archs/$model.qir" >&2
  for batch in 1 8; do
    for threads in 1 2; do
      iters=$([[ $model == mlp ]] && echo 3000 || echo 30)
      "$PY" tools/peers.py "$A/$model.onnx" --input "$A/test_${data}_$batch.npy" --threads "$threads" --iters "$iters" --warmup 5 --rounds "$ROUNDS" --row \
        --cmd "$Q bench target/archs/$model.qir --input $A/test_${data}_$batch.npy --threads $threads --iters $((iters / ROUNDS)) --warmup 3 --json $*"
    done
  done
done
