#!/usr/bin/env bash
# Runs tools/peers.py on the standard architectures of ../shared/corpus (ResNet-18,
# MobileNetV2, the wide MLP; made by make_archs.py into CORPUS/archs): batch 1 and 8, one and
# two threads, qlift int8 next to ONNX Runtime fp32/int8, interleaved in ROUNDS rounds (3),
# one markdown row each. qlift runs the int8 IR it quantized from the calibration set
# (written once to target/archs/NAME.qir, so that the rounds do not calibrate again). With
# QLIFT_BEFORE=path/to/another/qlift, that binary runs in the same rounds too (its column
# and ratio follow qlift's). Dev-only.
# Usage: tools/bench_archs.sh [CORPUS_ARCHS_DIR] [extra qlift bench flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:-../main/target/corpus/archs}
shift || true
PY=${PYTHON:-$(dirname "$A")/venv/bin/python}
Q=${QLIFT:-target/release/qlift}
ROUNDS=${ROUNDS:-3}
MODELS=${MODELS:-resnet18:img mobilenetv2:img mlp:mlp}
mkdir -p target/archs
echo "| model | batch | threads | qlift int8 µs | ORT int8 µs | ORT fp32 µs | tract fp32 µs | qlift / ORT int8 | qlift / ORT fp32 |${QLIFT_BEFORE:+ before µs | before / ORT int8 |}"
echo "|---|---|---|---|---|---|---|---|---|${QLIFT_BEFORE:+---|---|}"
for spec in $MODELS; do
  model=${spec%%:*} data=${spec##*:}
  [[ -f target/archs/$model.qir ]] || $Q quantize "$A/$model.onnx" --calib "$A/calib_$data.npy" -o "target/archs/$model.qdq.onnx" --qir "target/archs/$model.qir" >&2
  for batch in 1 8; do
    for threads in 1 2; do
      iters=$([[ $model == mlp ]] && echo 3000 || echo 30)
      bench="bench target/archs/$model.qir --input $A/test_${data}_$batch.npy --threads $threads --iters $((iters / ROUNDS)) --warmup 3 --json $*"
      cmds=(--cmd "$Q $bench")
      [[ -n ${QLIFT_BEFORE:-} ]] && cmds+=(--cmd "$QLIFT_BEFORE $bench")
      "$PY" tools/peers.py "$A/$model.onnx" --input "$A/test_${data}_$batch.npy" --threads "$threads" --iters "$iters" --warmup 5 --rounds "$ROUNDS" --row "${cmds[@]}"
    done
  done
done
