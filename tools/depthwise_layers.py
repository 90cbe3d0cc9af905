#!/usr/bin/env python3
"""Single depthwise Conv layers (fp32, bias, "same" padding) and inputs for them, to time the
depthwise-f32 form against ONNX Runtime with tools/peers.py. Dev-only (numpy, onnx).

    python3 tools/depthwise_layers.py target/dw
    python3 tools/peers.py target/dw/dw5x5_s1_64c32.onnx --input target/dw/x_64_32.npy \\
        --int8 target/dw/dw5x5_s1_64c32.onnx --rounds 3 --iters 600 \\
        --cmd "target/release/qlift bench target/dw/dw5x5_s1_64c32.onnx --input target/dw/x_64_32.npy --json"
"""
import os, sys
import numpy as np
import onnx
from onnx import helper, TensorProto, numpy_helper

out = sys.argv[1] if len(sys.argv) > 1 else "target/dw"
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)


def layer(k, c, hw, stride=1):
    w = rng.standard_normal((c, 1, k, k)).astype(np.float32) * 0.1
    b = rng.standard_normal(c).astype(np.float32) * 0.1
    p = k // 2
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=c, kernel_shape=[k, k],
                            pads=[p] * 4, strides=[stride] * 2)
    o = (hw + 2 * p - k) // stride + 1
    g = helper.make_graph([node], "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, o, o])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(m)
    onnx.save(m, os.path.join(out, f"dw{k}x{k}_s{stride}_{c}c{hw}.onnx"))


for k in (3, 5, 7):
    layer(k, 64, 32)
layer(3, 32, 112)
layer(3, 144, 56, stride=2)
for c, hw in ((64, 32), (32, 112), (144, 56)):
    np.save(os.path.join(out, f"x_{c}_{hw}.npy"), rng.standard_normal((1, c, hw, hw)).astype(np.float32))
