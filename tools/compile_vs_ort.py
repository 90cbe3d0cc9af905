#!/usr/bin/env python3
"""Compile time and peak memory of qlift against ONNX Runtime, side by side (issue 16, item 8).

For each model, in ROUNDS rounds that run every engine in turn (so a change of load on the
machine hits all alike), medians over the rounds:

- compile: wall time of `qlift bench MODEL --calib C --iters 1 --warmup 0 --json` (import,
  passes, calibration on the C samples on compiled code, quantization, JIT compilation, one
  run) and the `compile_ms` it reports, against ONNX Runtime's `quantize_static` (QDQ,
  per-channel, MinMax, u8 activations, s8 weights, the same samples one at a time through a
  CalibrationDataReader, no quant_pre_process) plus `InferenceSession` creation on the result,
  timed inside its process (Python and ONNX Runtime's import not counted);
- memory: peak RSS (GNU time's %M) of `qlift bench` on the model qlift quantized, as
  deployed (no calibration in the process): its QDQ ONNX file (what `qlift quantize -o`
  writes, the form ONNX Runtime runs too) and its `.qir` (IR text: every weight as decimal
  text, several times the ONNX file's size), and of `qlift bench --calib` (the one-command
  form), against a process that creates an ONNX Runtime session on the int8 model
  the compile step wrote and runs the same batch; a process that only imports numpy and
  onnxruntime is reported too, since that floor is part of ONNX Runtime's number.

The standard architectures ship 16 calibration images; 100 are made with the corpus's own
generator (`make_archs.py`, same distribution, other seeds) into OUT. Dev-only: needs the
corpus (`bash ../shared/corpus/fetch.sh target/corpus`) and its venv's Python:

    target/corpus/venv/bin/python tools/compile_vs_ort.py target/corpus [--rounds 3] [--models resnet18,mobilenetv2]
"""
import argparse, json, os, shlex, statistics, subprocess, sys, tempfile, time
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# The ONNX Runtime side, run in a child process so that its peak RSS is its own.
ORT_COMPILE = r"""
import json, sys, time, numpy as np
model, out, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
calib = {name: np.load(path) for name, path in spec.items()}
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)

class Reader(CalibrationDataReader):
    def __init__(self):
        n = len(next(iter(calib.values())))
        self.it = iter([{k: v[i:i + 1] for k, v in calib.items()} for i in range(n)])
    def get_next(self):
        return next(self.it, None)

t = time.perf_counter()
quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax)
ort.InferenceSession(out, providers=["CPUExecutionProvider"])
print(json.dumps({"ms": (time.perf_counter() - t) * 1e3}))
"""

ORT_RUN = r"""
import json, sys, numpy as np
model, spec, iters = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
feed = {name: np.load(path) for name, path in spec.items()}
import onnxruntime as ort
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
for _ in range(iters):
    sess.run(None, feed)
"""

ORT_FLOOR = "import numpy, onnxruntime"


def measured(cmd):
    """(stdout, wall s, peak RSS MiB) of `cmd`. The peak comes from GNU time, which forks the
    command from its own small process: a child forked from this Python would report this
    process's peak as its own (Linux keeps the parent's high-water mark across fork + exec)."""
    with tempfile.NamedTemporaryFile("r") as rss:
        t = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], capture_output=True, text=True)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            sys.exit(f"failed ({p.returncode}): {shlex.join(cmd)}\n{p.stderr[-3000:]}")
        return p.stdout, wall, int(rss.read().split()[-1]) / 1024


def make_data(corpus, out, shared):
    """The calibration and memory-test inputs of each model: {model: (onnx, calib, run, ort_int8_run_spec)}."""
    archs = f"{corpus}/archs"
    sys.path.insert(0, shared)
    import make_archs  # the corpus's generator: same distribution as calib_img.npy
    img, mlp = f"{out}/calib_img_100.npy", f"{out}/calib_mlp_100.npy"
    if not os.path.exists(img):
        given = np.load(f"{archs}/calib_img.npy")
        more = make_archs.imagenet_images(np.random.default_rng(2026), 100 - len(given))
        np.save(img, np.concatenate([given, more]).astype(np.float32))
    if not os.path.exists(mlp):
        given = np.load(f"{archs}/calib_mlp.npy")
        more = make_archs.mlp_inputs(np.random.default_rng(2027), 100 - len(given))
        np.save(mlp, np.concatenate([given, more]).astype(np.float32))
    np.save(f"{out}/magika_test_8.npy", np.load(f"{corpus}/magika_test.npy")[:8])
    subprocess.run([sys.executable, f"{HERE}/make_seq_inputs.py", corpus, out, "128"], check=True,
                   stdout=subprocess.DEVNULL)
    for part in ("ids", "mask"):
        np.save(f"{out}/minilm_test_{part}_128_8.npy", np.load(f"{out}/minilm_test_{part}_128.npy")[:8])
    minilm_calib = {"input_ids": f"{corpus}/minilm_calib_ids.npy", "attention_mask": f"{corpus}/minilm_calib_mask.npy"}
    minilm_run = {"input_ids": f"{out}/minilm_test_ids_128_8.npy", "attention_mask": f"{out}/minilm_test_mask_128_8.npy"}
    return {
        "resnet18": (f"{archs}/resnet18.onnx", {"input": img}, {"input": f"{archs}/test_img_8.npy"}),
        "mobilenetv2": (f"{archs}/mobilenetv2.onnx", {"input": img}, {"input": f"{archs}/test_img_8.npy"}),
        "mlp": (f"{archs}/mlp.onnx", {"input": mlp}, {"input": f"{archs}/test_mlp_8.npy"}),
        "magika": (f"{corpus}/magika.onnx", {"bytes": f"{corpus}/magika_calib.npy"}, {"bytes": f"{out}/magika_test_8.npy"}),
        "minilm": (f"{corpus}/minilm.onnx", minilm_calib, minilm_run),
    }


def flags(flag, spec):
    """`--input NAME=FILE` for each input (the name only where there are several)."""
    if len(spec) == 1:
        return [flag, next(iter(spec.values()))]
    return [a for name, path in spec.items() for a in (flag, f"{name}={path}")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", help="the corpus folder (with archs/)")
    ap.add_argument("--qlift", default="target/release/qlift")
    ap.add_argument("--shared", default=os.path.join(HERE, "../../shared/corpus"), help="folder of make_archs.py")
    ap.add_argument("--out", default="target/compilemem")
    ap.add_argument("--models", default="resnet18,mobilenetv2,mlp,magika,minilm")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10, help="runs of the batch in each memory process")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    data = make_data(args.corpus, args.out, args.shared)
    models = args.models.split(",")
    py = sys.executable
    floor = statistics.median(measured([py, "-c", ORT_FLOOR])[2] for _ in range(3))
    results = {}
    for name in models:
        onnx, calib, run = data[name]
        qir, ort_int8 = f"{args.out}/{name}.qir", f"{args.out}/{name}.ort.qdq.onnx"
        qdq = f"{args.out}/{name}.qlift.qdq.onnx"
        if not os.path.exists(qir) or not os.path.exists(qdq):
            subprocess.run([args.qlift, "quantize", onnx, *flags("--calib", calib), "-o",
                            qdq, "--qir", qir], check=True,
                           stderr=subprocess.DEVNULL)
        samples = len(np.load(next(iter(calib.values())), mmap_mode="r"))
        engines = {
            "qlift compile": lambda: measured([args.qlift, "bench", onnx, *flags("--input", run), *flags("--calib", calib),
                                               "--iters", "1", "--warmup", "0", "--json"]),
            "ORT compile": lambda: measured([py, "-c", ORT_COMPILE, onnx, ort_int8, json.dumps(calib)]),
            "qlift bench .qir": lambda: measured([args.qlift, "bench", qir, *flags("--input", run),
                                                  "--iters", str(args.iters), "--warmup", "0", "--json"]),
            "qlift bench qdq": lambda: measured([args.qlift, "bench", qdq, *flags("--input", run),
                                                 "--iters", str(args.iters), "--warmup", "0", "--json"]),
            "ORT int8 run": lambda: measured([py, "-c", ORT_RUN, ort_int8, json.dumps(run), str(args.iters)]),
        }
        got = {k: [] for k in engines}
        for _ in range(args.rounds):
            for key, fn in engines.items():
                got[key].append(fn())
        med = lambda key, f: statistics.median(f(r) for r in got[key])
        last_json = lambda r: json.loads(r[0].strip().splitlines()[-1])
        r = {
            "samples": samples,
            "qlift_compile_s": med("qlift compile", lambda r: r[1]),
            "qlift_compile_ms_reported": med("qlift compile", lambda r: last_json(r)["compile_ms"]),
            "ort_compile_s": med("ORT compile", lambda r: last_json(r)["ms"] / 1e3),
            "ort_compile_wall_s": med("ORT compile", lambda r: r[1]),
            "qlift_bench_qir_mib": med("qlift bench .qir", lambda r: r[2]),
            "qlift_bench_qdq_mib": med("qlift bench qdq", lambda r: r[2]),
            "qlift_bench_calib_mib": med("qlift compile", lambda r: r[2]),
            "ort_compile_mib": med("ORT compile", lambda r: r[2]),
            "ort_int8_mib": med("ORT int8 run", lambda r: r[2]),
            "ort_floor_mib": floor,
        }
        r["compile_ratio"] = r["qlift_compile_s"] / r["ort_compile_s"]
        r["mem_ratio_qir"] = r["qlift_bench_qir_mib"] / r["ort_int8_mib"]
        r["mem_ratio_qdq"] = r["qlift_bench_qdq_mib"] / r["ort_int8_mib"]
        r["mem_ratio_calib"] = r["qlift_bench_calib_mib"] / r["ort_int8_mib"]
        results[name] = r
        print(f"{name}: {json.dumps(r)}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{args.rounds} rounds interleaved, medians; ONNX Runtime import alone: {floor:.0f} MiB")
    print("| model | calib samples | qlift compile s (reported) | ORT quantize_static + session s | qlift / ORT "
          "| qlift bench qdq.onnx MiB | qlift bench .qir MiB | qlift bench --calib MiB | ORT int8 run MiB "
          "| qdq.onnx / ORT | .qir / ORT | --calib / ORT |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['samples']} | {r['qlift_compile_s']:.2f} ({r['qlift_compile_ms_reported'] / 1e3:.2f}) | "
              f"{r['ort_compile_s']:.2f} | {r['compile_ratio']:.2f} | {r['qlift_bench_qdq_mib']:.0f} | "
              f"{r['qlift_bench_qir_mib']:.0f} | {r['qlift_bench_calib_mib']:.0f} | {r['ort_int8_mib']:.0f} | "
              f"{r['mem_ratio_qdq']:.2f} | {r['mem_ratio_qir']:.2f} | {r['mem_ratio_calib']:.2f} |")


if __name__ == "__main__":
    main()
