#!/usr/bin/env python3
"""Runs the ONNX models qlift exported with ONNX Runtime and compares them with qlift's
interpreter.

Dev-only tool: `pip install onnx onnxruntime numpy`, then

    QLIFT_EXPORT_DIR=$PWD/target/export cargo test -p qlift --test export
    python3 tools/check_export_ort.py target/export --originals examples/models

The test leaves, for every bundled model, the pipeline's fused versions (NAME.fused) and one
small graph per op family (op.NAME), NAME.onnx (the exported model), NAME.qir (the IR it was
exported from), and NAME.input.K.npy / NAME.expected.K.npy (the inputs, and qlift's
interpreter outputs on that IR; `qlift run NAME.qir --input NAME.input.0.npy` gives the
same). For each model this script runs onnx.checker.check_model (full check, with shape
inference) and ONNX Runtime with graph optimizations off (each ONNX node as written) and on
(ORT's default, which fuses QDQ groups into its int8 kernels), and prints the largest
absolute difference from the interpreter over all outputs, the largest relative to each
output's magnitude, and how many argmax predictions of output 0 agree. With --originals DIR
it also runs the model the IR was imported from, DIR/NAME.onnx, and prints the largest
difference between ONNX Runtime's outputs on the two (0 when the export computes exactly what
the original does).

Exits 1 if a model fails the checker or ONNX Runtime, if it differs from its original, or if
an unoptimized run differs from the interpreter by more than --tolerance relative to the
output's magnitude and by more than one quantization step of that output (the scale of the
DequantizeLinear or QuantizeLinear producing it, or 1 for other integer outputs): ONNX Runtime
and qlift may round a requantization differently.
"""
import argparse
import glob
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def run(path, inputs, optimize):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    # qlift writes bool tensors as uint8 .npy files (0/1, its bool storage).
    feed = {i.name: x.astype(bool) if i.type == "tensor(bool)" else x for i, x in zip(sess.get_inputs(), inputs)}
    return sess.run(None, feed)


def steps(model):
    """One quantization step of each graph output: the scale of the Q/DQ producing it, 1 for
    other integer outputs, 0 for other float outputs."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    result = []
    for out in model.graph.output:
        n = producer.get(out.name)
        if n is not None and n.op_type in ("DequantizeLinear", "QuantizeLinear") and n.input[1] in inits:
            step = float(inits[n.input[1]].max())
            result.append(step if n.op_type == "DequantizeLinear" else 1.0)
        else:
            result.append(0.0 if out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT else 1.0)
    return result


def compare(got, want, step):
    """Largest absolute and relative difference over the outputs, whether they are within
    tolerance, and the argmax agreement of output 0."""
    worst_abs, worst_rel, ok = 0.0, 0.0, True
    for g, w, s in zip(got, want, step):
        d = np.abs(g.astype(np.float64) - w.astype(np.float64))
        a = float(d.max()) if d.size else 0.0
        r = a / max(float(np.abs(w.astype(np.float64)).max()) if w.size else 0.0, 1e-30)
        worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, r)
        ok &= r <= TOLERANCE or a <= 1.001 * s
    g0, w0 = got[0].reshape(len(got[0]), -1), want[0].reshape(len(want[0]), -1)
    agree = int((g0.argmax(1) == w0.argmax(1)).sum())
    return worst_abs, worst_rel, ok, f"{agree}/{len(w0)}"


def numbered(dir, name, what):
    files, k = [], 0
    while os.path.exists(p := os.path.join(dir, f"{name}.{what}.{k}.npy")):
        files.append(np.load(p))
        k += 1
    return files


TOLERANCE = 1e-4


def main():
    global TOLERANCE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="directory the export test wrote (QLIFT_EXPORT_DIR)")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE, help="largest relative difference allowed without optimizations")
    ap.add_argument("--originals", help="directory of the models the IR came from (examples/models)")
    args = ap.parse_args()
    TOLERANCE = args.tolerance
    models = sorted(glob.glob(os.path.join(args.dir, "*.onnx")))
    if not models:
        sys.exit(f"no .onnx files in {args.dir}")
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    print(
        f"{'model':<20} {'opset':>5} {'checker':>7} | {'opt off: max abs':>16} {'rel':>8} {'argmax':>7} "
        f"| {'opt on: max abs':>15} {'rel':>8} {'argmax':>7} | {'vs original off/on':>18}"
    )
    failed = False
    for path in models:
        name = os.path.basename(path)[: -len(".onnx")]
        inputs, want = numbered(args.dir, name, "input"), numbered(args.dir, name, "expected")
        model = onnx.load(path)
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        try:
            onnx.checker.check_model(model, full_check=True)
            checker = "ok"
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            checker, failed = "FAIL", True
            print(f"{name}: checker: {e}", file=sys.stderr)
        row = [f"{name:<20} {opset:>5} {checker:>7}"]
        step = steps(model)
        original = os.path.join(args.originals, f"{name}.onnx") if args.originals else None
        vs_original = []
        for optimize in (False, True):
            try:
                got = run(path, inputs, optimize)
                abs_err, rel_err, ok, agree = compare(got, want, step)
                row.append(f"{abs_err:>16.3g} {rel_err:>8.1e} {agree:>7}")
                failed |= not optimize and not ok
                if original and os.path.exists(original):
                    d = max(float(np.abs(g - o).max()) for g, o in zip(got, run(original, inputs, optimize)))
                    vs_original.append(f"{d:.3g}")
                    failed |= d != 0.0
            except Exception as e:  # noqa: BLE001
                failed = True
                row.append(f"{'ORT FAILED':>33}")
                print(f"{name}: onnxruntime (optimizations {'on' if optimize else 'off'}): {e}", file=sys.stderr)
        row.append(f"{'/'.join(vs_original) or '-':>18}")
        print(" | ".join(row))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
