#!/usr/bin/env python3
"""Side-by-side latency of ONNX Runtime fp32, ONNX Runtime int8 (the model's ORT-made
QDQ version), tract fp32 and any command that prints qlift's `bench --json`, in one run on
the same input and thread count: the comparison every performance claim in this repo uses.
(The stand-in for ../shared/bench/peers.py, which this workspace does not have.)

Dev-only: `pip install onnxruntime tract numpy`, `cargo build --release`, then

    python3 tools/peers.py examples/models/digits_cnn.onnx --input examples/models/digits_test_x.npy \\
        --threads 1 --cmd "target/release/qlift bench examples/models/digits_cnn.onnx \\
        --input examples/models/digits_test_x.npy --calib examples/models/digits_calib_x.npy --json --threads 1"

Prints one markdown row per engine with the median latency and its ratio to ORT int8 and
ORT fp32; `--json` prints the same as one object.
"""
import argparse, json, os, shlex, statistics, subprocess, time
import numpy as np


def timed(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def ort_median(path, xs, threads, iters, warmup):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {i.name: x for i, x in zip(sess.get_inputs(), xs)}
    return timed(lambda: sess.run(None, feed), iters, warmup)


def tract_median(path, x, iters, warmup):
    try:
        import tract
    except ImportError:
        return None
    model = tract.onnx().load(path)
    model.set_input_fact(0, ",".join(str(d) for d in x.shape) + ",f32")
    runnable = model.into_model().into_runnable()
    return timed(lambda: runnable.run([x]), iters, warmup)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--input", action="append", required=True, help="an input .npy (repeat for several, in graph-input order)")
    ap.add_argument("--int8", help="ONNX Runtime's int8 model (default: MODEL with .qdq.onnx)")
    ap.add_argument("--int8-matched", help="another ONNX Runtime int8 model, as accurate as qlift's (ORT's default int8 of "
                    "a transformer can lose most of its accuracy); --row adds its latency and qlift's ratio to it")
    ap.add_argument("--cmd", action="append", default=[], help="a command printing qlift bench --json (repeatable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1,
                    help="interleave: run every engine this many times in turn (iters/rounds calls each) and report the median of the rounds' medians")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--row", action="store_true", help="print one markdown row: model, batch, threads, latencies, qlift's ratios")
    args = ap.parse_args()
    xs = [np.load(f) for f in args.input]
    x = xs[0]
    int8 = args.int8 or args.model.replace(".onnx", ".qdq.onnx")
    rounds = max(1, args.rounds)
    iters = max(1, args.iters // rounds)
    engines = [("ORT fp32", lambda: ort_median(args.model, xs, args.threads, iters, args.warmup)),
               ("ORT int8", lambda: ort_median(int8, xs, args.threads, iters, args.warmup))]
    if args.int8_matched:
        engines.append(("ORT int8 matched", lambda: ort_median(args.int8_matched, xs, args.threads, iters, args.warmup)))
    if args.threads == 1 and len(xs) == 1:
        engines.append(("tract fp32", lambda: tract_median(args.model, x, iters, args.warmup)))

    def qlift(cmd):
        out = subprocess.run(shlex.split(cmd), check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        return r["median_ms"], f"qlift {r.get('precision', '')}".strip()

    for cmd in args.cmd:
        engines.append((cmd, (lambda c: lambda: qlift(c))(cmd)))
    # Every engine once per round, in turn, so that a change of load on the machine hits all alike.
    medians, names = {}, {}
    for _ in range(rounds):
        for key, run in engines:
            v = run()
            if isinstance(v, tuple):
                v, names[key] = v
            medians.setdefault(key, []).append(v)
    rows = [(names.get(key, key), None if None in medians[key] else statistics.median(medians[key])) for key, _ in engines]
    ort8, ort32 = rows[1][1], rows[0][1]
    result = {"model": os.path.basename(args.model), "batch": int(x.shape[0]), "threads": args.threads,
              "engines": [{"engine": n, "median_ms": m, "vs_ort_int8": m / ort8 if m else None, "vs_ort_fp32": m / ort32 if m else None}
                          for n, m in rows]}
    if args.json:
        print(json.dumps(result))
        return
    if args.row:
        e = {x["engine"]: x["median_ms"] for x in result["engines"]}
        qlifts = [x["median_ms"] for x in result["engines"] if x["engine"].startswith("qlift")]
        q = qlifts[0] if qlifts else None
        fmt = lambda v: "n/a" if v is None else f"{v * 1000:.1f}"
        ratio = lambda a, b: "n/a" if a is None or b is None else f"{a / b:.2f}"
        # Further --cmd engines (another qlift build): its latency and ratio to ORT int8.
        more = "".join(f" {fmt(v)} | {ratio(v, e['ORT int8'])} |" for v in qlifts[1:])
        if "ORT int8 matched" in e:
            more = f" {fmt(e['ORT int8 matched'])} | {ratio(q, e['ORT int8 matched'])} |" + more
        print(f"| {result['model'].replace('.onnx', '')} | {result['batch']} | {args.threads} | {fmt(q)} | {fmt(e['ORT int8'])} | "
              f"{fmt(e['ORT fp32'])} | {fmt(e.get('tract fp32'))} | {ratio(q, e['ORT int8'])} | {ratio(q, e['ORT fp32'])} |{more}", flush=True)
        return
    print(f"{result['model']}, batch {result['batch']}, {args.threads} thread(s)")
    print("| engine | median ms | × ORT int8 | × ORT fp32 |")
    print("|---|---|---|---|")
    for e in result["engines"]:
        if e["median_ms"] is None:
            print(f"| {e['engine']} | n/a | | |")
        else:
            print(f"| {e['engine']} | {e['median_ms']:.3f} | {e['vs_ort_int8']:.2f} | {e['vs_ort_fp32']:.2f} |")


if __name__ == "__main__":
    main()
