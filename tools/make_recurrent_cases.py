#!/usr/bin/env python3
"""Builds random LSTM, GRU and RNN models with onnx.helper, runs them in ONNX Runtime and
vendors each as a case under tests/data/recurrent/: NAME/model.onnx and
NAME/test_data_set_0/{input,output}_K.pb (the layout of the ONNX node tests), with
ONNX Runtime's outputs as the expected ones. tests/tests/recurrent_ort.rs compares qlift's
interpreter and its compiled model (the whole pipeline and the JIT) with them within 1e-5.

Dev-only tool (`pip install onnx onnxruntime numpy`); deterministic (fixed seeds):

    python3 tools/make_recurrent_cases.py

The cases cover the three ops at opsets 7, 14 and 22; forward, reverse and bidirectional;
layouts 0 and 1; each optional operand present and absent (B, sequence_lens with lengths
shorter than the sequence, initial_h, initial_c, P); GRU's linear_before_reset; LSTM's
input_forget; clip; every activation the spec lists, with activation_alpha/beta (consumed in
order by the functions that take them); results omitted or used in any combination; and
symbolic sequence and batch dimensions (`seq`, `batch`) on the graph inputs.
"""
import os
import shutil

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "recurrent")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
RESULTS = {"LSTM": ["Y", "Y_h", "Y_c"], "GRU": ["Y", "Y_h"], "RNN": ["Y", "Y_h"]}

# name: (op, opset, direction, layout, seq, batch, input, hidden, options)
# options: bias, lens (lengths), h0, c0, peep, lbr, input_forget, clip, acts, alpha, beta,
# outputs (indices of the results to use), symbolic (dim_params on X and the states),
# weights_input (W and R fed as graph inputs instead of initializers).
CASES = {
    "lstm_opset7_defaults": ("LSTM", 7, "forward", 0, 4, 2, 3, 5, dict(outputs=[0, 1, 2])),
    "lstm_opset14_everything": ("LSTM", 14, "bidirectional", 1, 5, 3, 4, 6, dict(
        bias=True, lens=[5, 2, 4], h0=True, c0=True, peep=True, clip=2.5, outputs=[0, 1, 2])),
    "lstm_opset22_reverse_symbolic": ("LSTM", 22, "reverse", 0, 6, 2, 3, 4, dict(
        bias=True, h0=True, c0=True, symbolic=True, outputs=[0, 2])),
    "lstm_input_forget_peepholes": ("LSTM", 14, "forward", 0, 5, 2, 3, 4, dict(
        bias=True, peep=True, input_forget=1, outputs=[1, 2])),
    "lstm_activations": ("LSTM", 14, "bidirectional", 0, 4, 2, 3, 5, dict(
        bias=True, acts=["HardSigmoid", "ScaledTanh", "Softsign", "Sigmoid", "Elu", "Affine"],
        alpha=[0.3, 0.8, 1.2, 0.6], beta=[0.45, 1.3, 0.1], outputs=[0, 1, 2])),
    "lstm_batchwise_lengths_only_yh": ("LSTM", 14, "forward", 1, 6, 3, 2, 3, dict(
        lens=[1, 6, 3], h0=True, outputs=[1])),
    "lstm_weights_as_inputs": ("LSTM", 14, "forward", 0, 3, 2, 4, 3, dict(
        bias=True, weights_input=True, outputs=[0])),
    "gru_opset7_defaults": ("GRU", 7, "forward", 0, 4, 2, 3, 5, dict(outputs=[0, 1])),
    "gru_opset14_everything": ("GRU", 14, "bidirectional", 1, 5, 3, 4, 6, dict(
        bias=True, lens=[3, 5, 1], h0=True, clip=1.5, lbr=1, outputs=[0, 1])),
    "gru_reset_after_product": ("GRU", 14, "reverse", 0, 5, 2, 3, 4, dict(
        bias=True, h0=True, lbr=0, outputs=[0, 1])),
    "gru_opset22_symbolic": ("GRU", 22, "bidirectional", 0, 4, 2, 3, 5, dict(
        bias=True, h0=True, lbr=1, symbolic=True, outputs=[0, 1])),
    "gru_activations": ("GRU", 14, "forward", 0, 4, 2, 3, 4, dict(
        bias=True, acts=["HardSigmoid", "LeakyRelu"], alpha=[0.25, 0.1], beta=[0.55], outputs=[0, 1])),
    "rnn_opset7_defaults": ("RNN", 7, "forward", 0, 4, 2, 3, 5, dict(outputs=[0, 1])),
    "rnn_opset14_everything": ("RNN", 14, "bidirectional", 1, 5, 3, 4, 6, dict(
        bias=True, lens=[2, 5, 4], h0=True, clip=1.0, outputs=[0, 1])),
    "rnn_relu_reverse_symbolic": ("RNN", 22, "reverse", 0, 6, 2, 3, 4, dict(
        bias=True, h0=True, acts=["Relu"], symbolic=True, outputs=[0, 1])),
    "rnn_activations": ("RNN", 14, "bidirectional", 0, 4, 2, 3, 4, dict(
        bias=True, acts=["ThresholdedRelu", "Softplus"], alpha=[0.2], outputs=[0, 1])),
    "rnn_only_y_layout1": ("RNN", 14, "forward", 1, 5, 2, 3, 4, dict(bias=True, outputs=[0])),
}


def ort_run(model, feed, layout):
    """ONNX Runtime's results. It runs layout 0 only: a layout 1 model runs as its layout 0
    twin on transposed inputs, its results transposed back."""
    if layout:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        node = model.graph.node[0]
        for a in node.attribute:
            if a.name == "layout":
                a.i = 0
        del model.graph.input[:]
        del model.graph.output[:]
        swap = {"X": (1, 0, 2), "initial_h": (1, 0, 2), "initial_c": (1, 0, 2)}
        feed = {k: (np.ascontiguousarray(v.transpose(swap[k])) if k in swap else v) for k, v in feed.items()}
        for k, v in feed.items():
            dtype = TensorProto.INT32 if v.dtype == np.int32 else TensorProto.FLOAT
            model.graph.input.append(helper.make_tensor_value_info(k, dtype, v.shape))
        model.graph.output.extend(helper.make_tensor_value_info(r, TensorProto.FLOAT, None) for r in node.output if r)
    opts = onnxruntime.SessionOptions()
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    got = session.run(None, feed)
    if layout:
        got = [np.ascontiguousarray(v.transpose((2, 0, 1, 3) if v.ndim == 4 else (1, 0, 2))) for v in got]
    return got


def case(name, op, opset, direction, layout, seq, batch, input_size, hidden, o):
    rng = np.random.default_rng(sum(map(ord, name)) * 7919)
    dirs = 2 if direction == "bidirectional" else 1
    rows = GATES[op] * hidden
    f32 = lambda *shape, scale=1.0: (rng.uniform(-scale, scale, size=shape)).astype(np.float32)
    x = f32(batch, seq, input_size, scale=2.0) if layout else f32(seq, batch, input_size, scale=2.0)
    state = (lambda: f32(batch, dirs, hidden)) if layout else (lambda: f32(dirs, batch, hidden))
    operands = {"X": x, "W": f32(dirs, rows, input_size, scale=1.5 / np.sqrt(input_size)), "R": f32(dirs, rows, hidden, scale=1.5 / np.sqrt(hidden))}
    if o.get("bias"):
        operands["B"] = f32(dirs, 2 * rows, scale=0.5)
    if o.get("lens"):
        operands["sequence_lens"] = np.array(o["lens"], dtype=np.int32)
    if o.get("h0"):
        operands["initial_h"] = state()
    if op == "LSTM" and o.get("c0"):
        operands["initial_c"] = state()
    if op == "LSTM" and o.get("peep"):
        operands["P"] = f32(dirs, 3 * hidden, scale=0.5)
    slots = ["X", "W", "R", "B", "sequence_lens", "initial_h"] + (["initial_c", "P"] if op == "LSTM" else [])
    names = [s if s in operands else "" for s in slots]
    while names and names[-1] == "":
        names.pop()
    fed = ["X", "sequence_lens", "initial_h", "initial_c"] + (["W", "R"] if o.get("weights_input") else [])
    attrs = {"direction": direction, "hidden_size": hidden}
    if opset >= 14:
        attrs["layout"] = layout
    for key, attr in (("acts", "activations"), ("alpha", "activation_alpha"), ("beta", "activation_beta"), ("clip", "clip"),
                      ("input_forget", "input_forget"), ("lbr", "linear_before_reset")):
        if key in o:
            attrs[attr] = o[key]
    results = [r if i in o["outputs"] else "" for i, r in enumerate(RESULTS[op])]
    while results and results[-1] == "":
        results.pop()
    node = helper.make_node(op, names, results, name=name, **attrs)

    def dims(value, symbolic):
        shape = list(value.shape)
        if not symbolic:
            return shape
        if value is x:
            return ["batch", "seq", input_size] if layout else ["seq", "batch", input_size]
        if value.ndim == 3:  # a state
            return ["batch", dirs, hidden] if layout else [dirs, "batch", hidden]
        return ["batch"] if value.ndim == 1 else shape

    inputs, inits, feed = [], [], {}
    for k, v in operands.items():
        if k in fed:
            dtype = TensorProto.INT32 if v.dtype == np.int32 else TensorProto.FLOAT
            inputs.append(helper.make_tensor_value_info(k, dtype, dims(v, o.get("symbolic"))))
            feed[k] = v
        else:
            inits.append(numpy_helper.from_array(v, k))
    outputs = [helper.make_tensor_value_info(r, TensorProto.FLOAT, None) for r in results if r]
    graph = helper.make_graph([node], name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    got = ort_run(model, feed, layout)
    for info, value in zip(model.graph.output, got):
        info.CopyFrom(helper.make_tensor_value_info(info.name, TensorProto.FLOAT, value.shape))
    onnx.checker.check_model(model, full_check=True)
    directory = os.path.join(OUT, name)
    data = os.path.join(directory, "test_data_set_0")
    os.makedirs(data)
    with open(os.path.join(directory, "model.onnx"), "wb") as f:
        f.write(model.SerializeToString())
    for i, info in enumerate(graph.input):
        with open(os.path.join(data, f"input_{i}.pb"), "wb") as f:
            f.write(numpy_helper.from_array(feed[info.name], info.name).SerializeToString())
    for i, (info, value) in enumerate(zip(model.graph.output, got)):
        with open(os.path.join(data, f"output_{i}.pb"), "wb") as f:
            f.write(numpy_helper.from_array(value, info.name).SerializeToString())


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    for name, (op, opset, direction, layout, seq, batch, input_size, hidden, o) in CASES.items():
        case(name, op, opset, direction, layout, seq, batch, input_size, hidden, o)
    print(f"wrote {len(CASES)} cases to {os.path.normpath(OUT)} with onnxruntime {onnxruntime.__version__}")


if __name__ == "__main__":
    main()
