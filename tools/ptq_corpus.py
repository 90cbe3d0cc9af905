#!/usr/bin/env python3
"""The white paper's PTQ table on a corpus model: rows = pipeline variants (nearest; + CLE;
+ bias correction; + AdaRound) × W8A8/W4A8 × per-channel/per-tensor weights, columns = top-1
agreement with fp32 and output SQNR against fp32 on the corpus test set, and the wall time
of `qlift run` (quantization included). Dev-only (numpy; `cargo build --release`).

    ptq_corpus.py CORPUS_DIR [magika] [--adaround SECONDS]
"""
import argparse, os, subprocess, tempfile, time
import numpy as np

VARIANTS = [
    ("nearest", []),
    ("+ CLE", ["--cle"]),
    ("+ CLE + BC", ["--cle", "--bias-correction", "empirical"]),
    ("+ CLE + BC + AdaRound", ["--cle", "--bias-correction", "empirical", "--adaround={s}"]),
]


def sqnr_db(got, want):
    noise = np.sum((got.astype(np.float64) - want) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(np.sum(want.astype(np.float64) ** 2) / noise)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("model", nargs="?", default="magika")
    ap.add_argument("--adaround", default="20")
    ap.add_argument("--qlift", default="target/release/qlift")
    args = ap.parse_args()
    c = args.corpus
    model, calib, test = f"{c}/{args.model}.onnx", f"{c}/{args.model}_calib.npy", f"{c}/{args.model}_test.npy"
    fp32 = np.load([f"{c}/{f}" for f in os.listdir(c) if f.startswith(f"{args.model}_test_fp32_")][0])
    print("| weights | bits | variant | top-1 agreement with fp32 | output SQNR | time |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for granularity in ["per-channel", "per-tensor"]:
            for bits in ["8", "4"]:
                for name, flags in VARIANTS:
                    out = f"{d}/y.npy"
                    cmd = [args.qlift, "run", model, "--calib", calib, "--input", test, "--output", out,
                           "--weights", granularity, "--weight-bits", bits] + [f.format(s=args.adaround) for f in flags]
                    t = time.perf_counter()
                    r = subprocess.run(cmd, capture_output=True, text=True)
                    secs = time.perf_counter() - t
                    if r.returncode != 0:
                        print(f"| {granularity} | W{bits}A8 | {name} | failed: {r.stderr.strip().splitlines()[-1]} | | |")
                        continue
                    y = np.load(out)
                    agree = 100 * np.mean(y.argmax(-1) == fp32.argmax(-1))
                    print(f"| {granularity} | W{bits}A8 | {name} | {agree:.1f}% | {sqnr_db(y, fp32):.1f} dB | {secs:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
