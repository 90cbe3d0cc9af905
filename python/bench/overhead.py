"""Python overhead per call: qlift against ONNX Runtime on the bundled MLP at batch 1.

Both run one thread per call, in the same process, on the same sample. For each runtime:
- `call`: median wall time of one Python call (`model(x)` / `session.run(None, {name: x})`);
- `native`: median time of the run by the cheapest path each runtime offers: qlift's
  `Model.bench` (timed in Rust, no Python at all); ONNX Runtime's `run_with_iobinding` on
  inputs and outputs bound once as OrtValues (one Python call per run, nothing converted or
  allocated; its profiler's `model_run` events are no use here, profiling triples the run);
- `overhead` = call - native: what the numpy-in, numpy-out call adds per call (argument
  checking, array wrapping, output allocation, releasing the GIL). ONNX Runtime's native
  figure still holds one Python call, so its overhead is if anything underestimated.
Every figure is a median of `--rounds` rounds (each the median of `--calls` calls), with
the runtimes interleaved round by round so that machine noise hits both alike.

    pip install onnxruntime   # besides qlift and numpy
    python python/bench/overhead.py [--calls 2000] [--rounds 7] [--json]
"""

import argparse
import json
import pathlib
import statistics
import time

import numpy as np
import onnxruntime as ort

import qlift

MODELS = pathlib.Path(__file__).resolve().parents[2] / "examples" / "models"


def median_call_us(fn, calls):
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e3


def ort_session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_native_us(session, feed, calls):
    """Median time of `run_with_iobinding` with inputs and outputs bound once."""
    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
    for out, value in zip(session.get_outputs(), session.run(None, feed)):
        binding.bind_ortvalue_output(out.name, ort.OrtValue.ortvalue_from_numpy(np.empty_like(value)))
    for _ in range(100):
        session.run_with_iobinding(binding)
    return median_call_us(lambda: session.run_with_iobinding(binding), calls)


def measure(calls=2000, rounds=7):
    """The figures of the table, per case ("fp32", "int8"), in microseconds."""
    x = np.load(MODELS / "digits_test_x_flat.npy")[:1]
    calib = np.load(MODELS / "digits_calib_x_flat.npy")
    cases = {
        "fp32": (qlift.compile(MODELS / "digits_mlp.onnx"), MODELS / "digits_mlp.onnx"),
        # int8: qlift quantizes from the calibration set; ONNX Runtime runs its own QDQ model
        # (quantize_static on the same set).
        "int8": (qlift.compile(MODELS / "digits_mlp.onnx", calib), MODELS / "digits_mlp.qdq.onnx"),
    }
    results = {}
    for label, (model, ort_path) in cases.items():
        session = ort_session(ort_path)
        name = session.get_inputs()[0].name
        feed = {name: x}
        # Same answers (close: different quantizers for int8).
        ours, theirs = model(x)[0], session.run(None, feed)[0]
        assert ours.shape == theirs.shape and ours.argmax() == theirs.argmax(), (ours, theirs)
        samples = {k: [] for k in ["qlift_call", "qlift_native", "ort_call", "ort_native"]}
        for _ in range(rounds):
            samples["qlift_call"].append(median_call_us(lambda: model(x), calls))
            samples["qlift_native"].append(model.bench(x, runs=calls, warmup=100)["median_us"])
            samples["ort_call"].append(median_call_us(lambda: session.run(None, feed), calls))
            samples["ort_native"].append(ort_native_us(session, feed, calls))
        r = {k: statistics.median(v) for k, v in samples.items()}
        r["qlift_overhead"] = r["qlift_call"] - r["qlift_native"]
        r["ort_overhead"] = r["ort_call"] - r["ort_native"]
        r["overhead_ratio"] = r["qlift_overhead"] / r["ort_overhead"]
        r["call_ratio"] = r["qlift_call"] / r["ort_call"]
        results[label] = r
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    results = measure(args.calls, args.rounds)

    if args.json:
        print(json.dumps({"onnxruntime": ort.__version__, "qlift": qlift.__version__, "results": results}, indent=2))
        return
    print(f"digits_mlp, batch 1, one thread; microseconds per call (median); onnxruntime {ort.__version__}")
    print(f"{'':6} {'qlift call':>11} {'native':>8} {'overhead':>9} | {'ORT call':>9} {'native':>8} {'overhead':>9} | {'overhead ratio':>14} {'call ratio':>10}")
    for label, r in results.items():
        print(
            f"{label:6} {r['qlift_call']:11.2f} {r['qlift_native']:8.2f} {r['qlift_overhead']:9.2f} | "
            f"{r['ort_call']:9.2f} {r['ort_native']:8.2f} {r['ort_overhead']:9.2f} | {r['overhead_ratio']:14.2f} {r['call_ratio']:10.2f}"
        )


if __name__ == "__main__":
    main()
