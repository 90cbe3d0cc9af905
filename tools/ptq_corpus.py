#!/usr/bin/env python3
"""The white paper's PTQ table on the corpus models: rows = pipeline variants (nearest; + CLE;
+ CLE + bias correction; AdaRound; + CLE + AdaRound + bias correction) × W8A8/W4A8 ×
per-channel/per-tensor weights, columns = agreement with fp32 and output SQNR against fp32
(ONNX Runtime's outputs) on the corpus test set, and the wall time of `qlift run`
(quantization, compilation and the test run). Dev-only (numpy; `cargo build --release`).

    ptq_corpus.py CORPUS_DIR [magika|minilm|mobilenetv2 ...] [--adaround SECONDS]

Agreement is top-1 agreement for the classifiers (magika; MobileNetV2, whose weights are
random) and the mean (min) cosine of the sentence embeddings for all-MiniLM-L6-v2, whose
SQNR is given for both outputs (sentence_embedding / last_hidden_state).
"""
import argparse, subprocess, sys, tempfile, time
import numpy as np

VARIANTS = [
    ("nearest", []),
    ("+ CLE", ["--cle"]),
    ("+ CLE + bias corr.", ["--cle", "--bias-correction", "empirical"]),
    ("AdaRound", ["--adaround={s}"]),
    ("+ CLE + AdaRound + bias corr.", ["--cle", "--bias-correction", "empirical", "--adaround={s}"]),
]


def sqnr_db(got, want):
    want = want.astype(np.float64)
    noise = np.sum((got.astype(np.float64) - want) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(np.sum(want ** 2) / noise)


def top1(outs, refs):
    (y,), (ref,) = outs, refs
    return f"{100 * np.mean(y.argmax(-1) == ref.argmax(-1)):.1f}%", f"{sqnr_db(y, ref):.1f} dB"


def cosine(outs, refs):
    (emb, hidden), (emb_ref, hidden_ref) = outs, refs
    cos = np.sum(emb * emb_ref, -1) / (np.linalg.norm(emb, axis=-1) * np.linalg.norm(emb_ref, axis=-1))
    return (f"{cos.mean():.4f} ({cos.min():.4f})",
            f"{sqnr_db(emb, emb_ref):.1f} / {sqnr_db(hidden, hidden_ref):.1f} dB")


# Per model: file, --calib values, --input values, outputs written (NAME or "" for the
# first), their fp32 references, and the measure.
MODELS = {
    "magika": ("magika.onnx", ["magika_calib.npy"], ["magika_test.npy"],
               [""], ["magika_test_fp32_target_label.npy"], top1),
    "minilm": ("minilm.onnx",
               ["input_ids={c}/minilm_calib_ids.npy", "attention_mask={c}/minilm_calib_mask.npy"],
               ["input_ids={c}/minilm_test_ids.npy", "attention_mask={c}/minilm_test_mask.npy"],
               ["sentence_embedding", "last_hidden_state"],
               ["minilm_test_fp32_sentence_embedding.npy", "minilm_test_fp32_last_hidden_state.npy"],
               cosine),
    "mobilenetv2": ("archs/mobilenetv2.onnx", ["archs/calib_img.npy"], ["archs/test_img_32.npy"],
                    [""], ["archs/mobilenetv2_ref_32.npy"], top1),
}


def path(c, arg):
    """A corpus file, or NAME=FILE with FILE formatted against the corpus directory."""
    return arg.format(c=c) if "=" in arg else f"{c}/{arg}"


def table(args, name):
    c = args.corpus
    model, calib, inputs, outputs, refs, measure = MODELS[name]
    refs = [np.load(f"{c}/{r}") for r in refs]
    agreement = "embedding cosine to fp32 mean (min)" if measure is cosine else "top-1 agreement with fp32"
    sqnr = "SQNR (embedding / hidden state)" if measure is cosine else "output SQNR"
    print(f"\n{name} (`{' '.join(['tools/ptq_corpus.py', args.corpus, name, '--adaround', args.adaround])}`)\n")
    print(f"| weights | pipeline | {agreement} | {sqnr} | time |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for bits in args.bits.split(","):
            for granularity in args.weights.split(","):
                for variant, flags in [v for v in VARIANTS if not args.variants or v[0] in args.variants.split(",")]:
                    files = [f"{d}/y{i}.npy" for i in range(len(outputs))]
                    cmd = [args.qlift, "run", f"{c}/{model}", "--weights", granularity, "--weight-bits", bits]
                    cmd += [a for x in calib for a in ("--calib", path(c, x))]
                    cmd += [a for x in inputs for a in ("--input", path(c, x))]
                    cmd += [a for o, f in zip(outputs, files) for a in ("--output", f"{o}={f}" if o else f)]
                    cmd += [f.format(s=args.adaround) for f in flags]
                    t = time.perf_counter()
                    r = subprocess.run(cmd, capture_output=True, text=True)
                    secs = time.perf_counter() - t
                    row = f"| W{bits}A8 {granularity} | {variant} |"
                    if r.returncode != 0:
                        print(f"{row} failed: {r.stderr.strip().splitlines()[-1]} | | {secs:.1f} s |", flush=True)
                        continue
                    agree, db = measure([np.load(f) for f in files], refs)
                    print(f"{row} {agree} | {db} | {secs:.1f} s |", flush=True)
                    for line in r.stderr.splitlines():
                        if line.startswith("adaround:"):
                            print(f"  {row} {line}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("models", nargs="*", help=f"any of {', '.join(MODELS)} (default: all)")
    ap.add_argument("--adaround", default="30", help="AdaRound's budget in seconds")
    ap.add_argument("--qlift", default="target/release/qlift")
    ap.add_argument("--bits", default="8,4", help="weight bits, comma-separated")
    ap.add_argument("--weights", default="per-channel,per-tensor", help="granularities, comma-separated")
    ap.add_argument("--variants", help="comma-separated variant names (default: all)")
    args = ap.parse_args()
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model {unknown[0]}; expected one of {', '.join(MODELS)}")
    for name in args.models or list(MODELS):
        table(args, name)


if __name__ == "__main__":
    main()
