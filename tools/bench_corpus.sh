#!/usr/bin/env bash
# Runs tools/peers.py on the corpus's real models (../shared/corpus, fetched into CORPUS):
# magika, and MiniLM at sequence 128 (inputs from tools/make_seq_inputs.py), batch 1 and 8,
# one and two threads, qlift int8 (quantized from the fp32 model on the corpus calibration
# set, inside `qlift bench`) next to ONNX Runtime fp32 and ONNX Runtime's own int8 QDQ model
# (the corpus's `default` variant) and ORT's int8 model as accurate as qlift's (the `tuned`
# variant: ORT's `default` int8 of MiniLM has cosine 0.37 to fp32, of magika 8.6% top-1
# agreement; `tuned` 0.990 and 100%, see ../shared/corpus/README.md), interleaved in ROUNDS
# rounds (3), one markdown row each.
# Extra arguments go to every `qlift bench` (e.g. --min-sqnr 0). Dev-only.
# Usage: tools/bench_corpus.sh [CORPUS_DIR] [extra qlift bench flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-target/corpus}
shift || true
PY=${PYTHON:-$C/venv/bin/python}
Q=${QLIFT:-target/release/qlift}
ROUNDS=${ROUNDS:-3}
S=target/seq
mkdir -p $S
"$PY" tools/make_seq_inputs.py "$C" $S 128 >&2
"$PY" - "$C" $S <<'PY'
import sys, numpy as np
c, s = sys.argv[1:]
x = np.load(f"{c}/magika_test.npy")
for b in (1, 8):
    np.save(f"{s}/magika_test_{b}.npy", x[:b])
PY
echo "| model | batch | threads | qlift int8 µs | ORT int8 µs | ORT fp32 µs | tract fp32 µs | qlift / ORT int8 | qlift / ORT fp32 | ORT int8 tuned µs | qlift / ORT int8 tuned |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for batch in 1 8; do
  for threads in 1 2; do
    "$PY" tools/peers.py "$C/magika.onnx" --int8 "$C/magika.ort_int8.default.qdq.onnx" --int8-matched "$C/magika.ort_int8.tuned.qdq.onnx" \
      --input $S/magika_test_$batch.npy --threads $threads --iters 60 --warmup 5 --rounds "$ROUNDS" --row \
      --cmd "$Q bench $C/magika.onnx --input $S/magika_test_$batch.npy --calib $C/magika_calib.npy --threads $threads --iters $((60 / ROUNDS)) --warmup 3 --json $*"
    "$PY" tools/peers.py "$C/minilm.onnx" --int8 "$C/minilm.ort_int8.default.qdq.onnx" --int8-matched "$C/minilm.ort_int8.tuned.qdq.onnx" \
      --input $S/minilm_test_ids_128_$batch.npy --input $S/minilm_test_mask_128_$batch.npy \
      --threads $threads --iters 30 --warmup 3 --rounds "$ROUNDS" --row \
      --cmd "$Q bench $C/minilm.onnx --input input_ids=$S/minilm_test_ids_128_$batch.npy --input attention_mask=$S/minilm_test_mask_128_$batch.npy --calib input_ids=$S/minilm_calib_ids_128.npy --calib attention_mask=$S/minilm_calib_mask_128.npy --threads $threads --iters $((30 / ROUNDS)) --warmup 2 --json $*"
  done
done
