#!/usr/bin/env python3
"""Runs qlift's exported QDQ models with ONNX Runtime: accuracy and output SQNR against the
fp32 outputs, next to qlift's own int8 numbers (reference interpreter). Dev-only check for
the closing notes: `pip install onnx onnxruntime numpy`, `cargo build --release`, then

    python3 tools/check_quantized_ort.py [--method minmax]
"""
import argparse, os, subprocess, tempfile
import numpy as np
import onnx
import onnxruntime as ort

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
M = os.path.join(ROOT, "examples", "models")
QLIFT = os.path.join(ROOT, "target", "release", "qlift")
MODELS = [("digits_cnn", "digits_calib_x.npy", "digits_test_x.npy"), ("digits_mlp", "digits_calib_x_flat.npy", "digits_test_x_flat.npy"),
          ("digits_mobile", "digits_calib_x.npy", "digits_test_x.npy")]


def sqnr(ref, q):
    ref = ref.astype(np.float64)
    return 10 * np.log10((ref ** 2).sum() / ((ref - q) ** 2).sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="minmax")
    args = ap.parse_args()
    labels = np.load(os.path.join(M, "digits_test_y.npy"))
    with tempfile.TemporaryDirectory() as tmp:
        for name, calib, test in MODELS:
            qdq, out = os.path.join(tmp, name + ".qdq.onnx"), os.path.join(tmp, name + ".npy")
            cal, x = os.path.join(M, calib), os.path.join(M, test)
            subprocess.run([QLIFT, "quantize", os.path.join(M, name + ".onnx"), "--calib", cal, "--method", args.method, "-o", qdq], check=True,
                           capture_output=True)
            subprocess.run([QLIFT, "run", os.path.join(M, name + ".onnx"), "--calib", cal, "--method", args.method, "--input", x, "--output", out],
                           check=True, capture_output=True)
            onnx.checker.check_model(onnx.load(qdq), full_check=True)
            ort_out = ort.InferenceSession(qdq, providers=["CPUExecutionProvider"]).run(None, {"input": np.load(x)})[0]
            ours, ref = np.load(out), np.load(os.path.join(M, name + ".expected.npy"))
            acc = lambda o: (o.argmax(1) == labels).mean() * 100
            print(f"{name:<14} ORT on qlift's QDQ: {acc(ort_out):6.2f}% {sqnr(ref, ort_out):5.1f} dB | qlift int8: {acc(ours):6.2f}% "
                  f"{sqnr(ref, ours):5.1f} dB | fp32 {acc(ref):6.2f}%")


if __name__ == "__main__":
    main()
