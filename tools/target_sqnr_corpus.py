#!/usr/bin/env python3
"""`--target-sqnr` on the corpus models: for each model and target, `qlift run --target-sqnr DB
--emit-plan P` on the test set (the search runs on the calibration data), then `qlift run --plan
P` alone, and reports what the search said (SQNR on the calibration data, units raised), the
test-set SQNR against fp32 (ONNX Runtime's outputs: does the target hold on data the search
did not see?) and whether the plan reproduces the searched model's outputs byte for byte.
Dev-only (numpy; `cargo build --release`).

    target_sqnr_corpus.py CORPUS_DIR MODEL:DB[,DB...] ...    e.g. magika:45,50 mobilenetv2:30,40
"""
import argparse, os, re, subprocess, sys, tempfile, time
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ptq_corpus import MODELS, path, sqnr_db  # noqa: E402


def run(args, name, plan_flags, d, tag):
    """`qlift run` of model `name` with `plan_flags`; returns (output files, stderr, seconds)."""
    c = args.corpus
    model, calib, inputs, outputs, _, _ = MODELS[name]
    files = [f"{d}/{tag}{i}.npy" for i in range(len(outputs))]
    cmd = [args.qlift, "run", f"{c}/{model}"]
    cmd += [a for x in calib for a in ("--calib", path(c, x))]
    cmd += [a for x in inputs for a in ("--input", path(c, x))]
    cmd += [a for o, f in zip(outputs, files) for a in ("--output", f"{o}={f}" if o else f)]
    t = time.perf_counter()
    r = subprocess.run(cmd + plan_flags, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd + plan_flags)} failed:\n{r.stderr}")
    return files, r.stderr, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("runs", nargs="+", help="MODEL:DB[,DB...]")
    ap.add_argument("--qlift", default="target/release/qlift")
    ap.add_argument("--keep", help="a directory to keep the emitted plans in")
    args = ap.parse_args()
    print("| model | --target-sqnr | calibration data: SQNR int8 → after | units int8 / int16 / fp32 (plan + outlier check) | raised | test-set SQNR (fp32 ref) | --plan reproduces | time |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        keep = args.keep or d
        os.makedirs(keep, exist_ok=True)
        for spec in args.runs:
            name, targets = spec.split(":")
            refs = [np.load(f"{args.corpus}/{r}") for r in MODELS[name][4]]
            for db in targets.split(","):
                plan = f"{keep}/{name}_{db}.toml"
                searched, err, secs = run(args, name, ["--target-sqnr", db, "--emit-plan", plan], d, "s")
                planned, _, _ = run(args, name, ["--plan", plan], d, "p")
                same = all(open(a, "rb").read() == open(b, "rb").read() for a, b in zip(searched, planned))
                line = next((l for l in err.splitlines() if l.startswith(f"--target-sqnr {db}")), "?")
                units = next((l for l in err.splitlines() if l.startswith("units: ")), "?")
                m = re.search(r"output SQNR (\S+) dB → (\S+) dB .*\((reached|NOT[^)]*)\)", line)
                u = re.search(r"units: (\d+) int8, (\d+) int16, (\d+) int16 by the outlier check, "
                              r"(\d+) fp32 by the plan, (\d+) fp32 by the outlier", units)
                raised = line.split(" raised")[1].lstrip(": ") if " raised" in line else "?"
                n_raised = re.search(r"(\d+) raised", line)
                test = " / ".join(f"{sqnr_db(np.load(f), r):.1f}" for f, r in zip(searched, refs))
                print(f"| {name} | {db} | {m.group(1)} → {m.group(2)} dB ({m.group(3)}) | "
                      f"{u.group(1)} / {u.group(2)} + {u.group(3)} / {u.group(4)} + {u.group(5)} | "
                      f"{n_raised.group(1) if n_raised else '?'}{': ' + raised if raised else ''} | {test} dB | "
                      f"{'yes, byte for byte' if same else 'NO'} | {secs:.0f} s |", flush=True)
                print(f"<!-- {line} | {units} -->", flush=True)


if __name__ == "__main__":
    main()
