#!/usr/bin/env python3
"""Trains the bundled recurrent model and writes it as ONNX with its test data.

Dev-only tool: in a venv with `pip install torch scikit-learn onnx onnxruntime numpy`, run

    python tools/make_rnn_model.py

Data: scikit-learn's bundled copy of the UCI hand-written digits (8x8, pixels / 16), each
image read row by row as a sequence of 8 steps of 8 features. The train/test split is the
one `tools/make_models.py` uses for the other digits models (`train_test_split`, 30 % test,
`random_state=0`, stratified), so the 540 test samples are the same images in the same
order, and the calibration set is the same first 200 training samples.

Model (`digits_lstm.onnx`): an LSTM (8 -> 64 hidden, one layer, forward) and a Linear head
(64 -> 10) on the last hidden state. The recurrent state is part of the interface so that a
caller can stream: inputs `x` [N, T, 8] (T symbolic), `h0` [N, 64], `c0` [N, 64]; outputs
`logits` [N, 10], `hn` [N, 64], `cn` [N, 64]. Feeding `hn`/`cn` back as `h0`/`c0` with the
next rows continues the sequence; zeros start one. The states are batch-first (the LSTM's
own [1, N, 64] form is an Unsqueeze/Squeeze inside the graph), so that every input and
output has its samples on axis 0.

Writes into examples/models/: digits_lstm.onnx, digits_seq_test_x.npy [540, 8, 8],
digits_seq_calib_x.npy [200, 8, 8], digits_lstm.expected.npy (ONNX Runtime fp32 logits on
the test set from zero states), digits_lstm.stream.expected.npy (the same, streamed in
chunks of 3, 3, 2 rows with the state carried: ONNX Runtime's own streaming check), and
prints the accuracies MODELS.md quotes. Deterministic on CPU (fixed seeds, one thread).

    python tools/make_rnn_model.py --ort-int8 target/digits_lstm.ort_int8.qdq.onnx

only writes ONNX Runtime's int8 version of the vendored model (quant_pre_process, then
quantize_static: QDQ, per channel, u8 activations, int8 weights, MinMax on the calibration
set with zero states), the peer PERFORMANCE.md measures against, and prints its accuracy.
"""
import argparse
import os

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "models")
HIDDEN = 64


class DigitsLstm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(8, HIDDEN, batch_first=True)
        self.head = torch.nn.Linear(HIDDEN, 10)

    def forward(self, x, h0, c0):
        _, (hn, cn) = self.lstm(x, (h0.unsqueeze(0), c0.unsqueeze(0)))
        hn, cn = hn.squeeze(0), cn.squeeze(0)
        return self.head(hn), hn, cn


def data():
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    # Rows as time steps: [N, 1, 8, 8] -> [N, 8 steps, 8 features].
    return x_train[:, 0], x_test[:, 0], y_train, y_test


def train(x, y, epochs=60, batch=64, seed=4):
    torch.manual_seed(seed)
    model = DigitsLstm()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(x)))
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            zeros = torch.zeros(len(idx), HIDDEN)
            logits, _, _ = model(xs[idx], zeros, zeros)
            loss = torch.nn.functional.cross_entropy(logits, ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def export(model, path):
    x = torch.zeros(1, 8, 8)
    h = torch.zeros(1, HIDDEN)
    torch.onnx.export(model, (x, h, h), path, input_names=["x", "h0", "c0"], output_names=["logits", "hn", "cn"],
                      dynamic_axes={"x": {0: "N", 1: "T"}, "h0": {0: "N"}, "c0": {0: "N"}, "logits": {0: "N"}, "hn": {0: "N"},
                                    "cn": {0: "N"}},
                      opset_version=14, dynamo=False)
    m = onnx.load(path)
    m.producer_name = "qlift tools/make_rnn_model.py (torch.onnx.export)"
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)


def ort_session(path):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def main():
    torch.set_num_threads(1)
    x_train, x_test, y_train, y_test = data()
    model = train(x_train, y_train)
    path = os.path.join(OUT, "digits_lstm.onnx")
    export(model, path)
    zeros = np.zeros((len(x_test), HIDDEN), np.float32)
    sess = ort_session(path)
    logits, hn, cn = sess.run(None, {"x": x_test, "h0": zeros, "c0": zeros})
    with torch.no_grad():
        ref = model(torch.from_numpy(x_test), torch.from_numpy(zeros), torch.from_numpy(zeros))[0].numpy()
    assert np.allclose(logits, ref, atol=1e-4), "the ONNX export disagrees with the trained model"
    # Streamed: rows 0-2, 3-5, 6-7 with the state carried.
    h, c = zeros, zeros
    for lo, hi in [(0, 3), (3, 6), (6, 8)]:
        streamed, h, c = sess.run(None, {"x": np.ascontiguousarray(x_test[:, lo:hi]), "h0": h, "c0": c})
    assert np.allclose(streamed, logits, atol=1e-5), "streaming in ONNX Runtime disagrees with the whole sequence"
    np.save(os.path.join(OUT, "digits_seq_test_x.npy"), x_test)
    np.save(os.path.join(OUT, "digits_seq_calib_x.npy"), x_train[:200])
    np.save(os.path.join(OUT, "digits_lstm.expected.npy"), logits)
    np.save(os.path.join(OUT, "digits_lstm.stream.expected.npy"), streamed)
    train_acc = (model(torch.from_numpy(x_train), torch.zeros(len(x_train), HIDDEN), torch.zeros(len(x_train), HIDDEN))[0]
                 .argmax(1).numpy() == y_train).mean() * 100
    m = onnx.load(path)
    n_params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    print(f"digits_lstm: {n_params} parameters, ops {sorted({n.op_type for n in m.graph.node})}, "
          f"train accuracy {train_acc:.2f}%, test accuracy {(logits.argmax(1) == y_test).mean() * 100:.2f}% "
          f"(ONNX Runtime fp32), max |torch - ORT| {np.abs(logits - ref).max():.2e}, "
          f"streamed max diff {np.abs(streamed - logits).max():.2e}")


def ort_int8(out):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    path = os.path.join(OUT, "digits_lstm.onnx")
    calib = np.load(os.path.join(OUT, "digits_seq_calib_x.npy"))
    zeros = np.zeros((1, HIDDEN), np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": calib[i:i + 1], "h0": zeros, "c0": zeros} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    prepped = out + ".prep.onnx"
    quant_pre_process(path, prepped)
    quantize_static(prepped, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    os.remove(prepped)
    x = np.load(os.path.join(OUT, "digits_seq_test_x.npy"))
    y = np.load(os.path.join(OUT, "digits_test_y.npy"))
    z = np.zeros((len(x), HIDDEN), np.float32)
    logits = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {"x": x, "h0": z, "c0": z})[0]
    ops = sorted({n.op_type for n in onnx.load(out).graph.node})
    print(f"{out}: ops {ops}, test accuracy {(logits.argmax(1) == y).mean() * 100:.2f}%")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--ort-int8", metavar="OUT", help="only write ONNX Runtime's int8 version of the vendored model")
    a = ap.parse_args()
    if a.ort_int8:
        ort_int8(a.ort_int8)
    else:
        main()
