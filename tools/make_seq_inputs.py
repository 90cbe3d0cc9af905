#!/usr/bin/env python3
"""MiniLM inputs at a fixed sequence length from the corpus's real sentences: the tokens of
consecutive sentences (padding, [CLS] and [SEP] stripped) run together up to LEN − 2, then
framed by [CLS] … [SEP]; the mask is all ones. Issue 16 measures the transformer at
sequence 128, the corpus ships sentences padded to 32. Dev-only (numpy).

    make_seq_inputs.py CORPUS_DIR OUT_DIR [LEN]   # writes minilm_{calib,test}_{ids,mask}_LEN.npy
"""
import sys
import numpy as np

CLS, SEP = 101, 102


def run_together(ids, mask, length):
    tokens = [int(t) for row, m in zip(ids, mask) for t in row[m.astype(bool)] if t not in (CLS, SEP)]
    body = length - 2
    rows = [[CLS] + tokens[i:i + body] + [SEP] for i in range(0, len(tokens) - body + 1, body)]
    out = np.array(rows, dtype=np.int64)
    return out, np.ones_like(out)


def main():
    corpus, out = sys.argv[1], sys.argv[2]
    length = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    for split in ("calib", "test"):
        ids = np.load(f"{corpus}/minilm_{split}_ids.npy")
        mask = np.load(f"{corpus}/minilm_{split}_mask.npy")
        i, m = run_together(ids, mask, length)
        np.save(f"{out}/minilm_{split}_ids_{length}.npy", i)
        np.save(f"{out}/minilm_{split}_mask_{length}.npy", m)
        for b in (1, 8):
            np.save(f"{out}/minilm_{split}_ids_{length}_{b}.npy", i[:b])
            np.save(f"{out}/minilm_{split}_mask_{length}_{b}.npy", m[:b])
        print(f"{split}: {i.shape[0]} rows of {length}")


if __name__ == "__main__":
    main()
