#!/usr/bin/env python3
"""Trains the bundled models on real data and writes them as ONNX with their test data.

Dev-only tool: `pip install onnx onnxruntime scikit-learn jax numpy`, then

    python3 tools/make_models.py

Data: scikit-learn's bundled copy of the UCI hand-written digits (8x8 grayscale, 1797
samples), pixels scaled to [0, 1]. Deterministic (fixed seeds). Writes into
examples/models/: <model>.onnx (fp32, BatchNormalization kept as separate nodes with trained
running statistics), <model>.expected.npy (ONNX Runtime fp32 outputs on the test set, graph
optimizations off), <model>.qdq.onnx + .qdq.expected.npy (ONNX Runtime's static QDQ
quantization after quant_pre_process, per channel, MinMax), the test/calibration arrays, and MODELS.md.
"""
import os
import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "models")
EPS = 1e-5


# ---------- layers (NCHW), written so that the ONNX export mirrors them one to one ----------
def conv(x, w, b, stride=1, pad=1, groups=1):
    y = jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad), (pad, pad)], feature_group_count=groups,
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + b[None, :, None, None]


def bn(x, p, stats, train, axis_shape):
    if train:
        red = (0, 2, 3) if x.ndim == 4 else (0,)
        mean, var = x.mean(red), x.var(red)
    else:
        mean, var = stats
    y = (x - mean.reshape(axis_shape)) / jnp.sqrt(var.reshape(axis_shape) + EPS)
    return y * p[0].reshape(axis_shape) + p[1].reshape(axis_shape), (mean, var)


def maxpool2(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def avgpool3(x):
    s = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 1, 3, 3), (1, 1, 1, 1), [(0, 0), (0, 0), (1, 1), (1, 1)])
    return s / 9.0  # count_include_pad=1


def init(key, shapes):
    params = {}
    for name, shape in shapes.items():
        key, sub = jax.random.split(key)
        if name.startswith("bn"):
            params[name] = jnp.stack([jnp.ones(shape), jnp.zeros(shape)])
        elif name.endswith("_b"):
            params[name] = jnp.zeros(shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            params[name] = jax.random.normal(sub, shape) * np.sqrt(2.0 / fan_in)
    return params


C4 = (1, -1, 1, 1)
C2 = (1, -1)


def cnn(p, s, x, train):
    st = {}
    h, st["bn1"] = bn(conv(x, p["c1_w"], p["c1_b"]), p["bn1"], s.get("bn1"), train, C4)
    h = maxpool2(jax.nn.relu(h))
    h, st["bn2"] = bn(conv(h, p["c2_w"], p["c2_b"]), p["bn2"], s.get("bn2"), train, C4)
    h = maxpool2(jax.nn.relu(h)).reshape(x.shape[0], -1)
    h = jax.nn.relu(h @ p["f1_w"].T + p["f1_b"])
    return h @ p["f2_w"].T + p["f2_b"], st


CNN_SHAPES = {"c1_w": (16, 1, 3, 3), "c1_b": (16,), "bn1": (16,), "c2_w": (32, 16, 3, 3), "c2_b": (32,), "bn2": (32,),
              "f1_w": (64, 128), "f1_b": (64,), "f2_w": (10, 64), "f2_b": (10,)}


def mlp(p, s, x, train):
    st = {}
    x = x.reshape(x.shape[0], -1)
    h, st["bn1"] = bn(x @ p["f1_w"].T + p["f1_b"], p["bn1"], s.get("bn1"), train, C2)
    h = jax.nn.relu(h)
    h, st["bn2"] = bn(h @ p["f2_w"].T + p["f2_b"], p["bn2"], s.get("bn2"), train, C2)
    h = jax.nn.relu(h)
    return h @ p["f3_w"].T + p["f3_b"], st


MLP_SHAPES = {"f1_w": (128, 64), "f1_b": (128,), "bn1": (128,), "f2_w": (64, 128), "f2_b": (64,), "bn2": (64,),
              "f3_w": (10, 64), "f3_b": (10,)}


def relu6(x):
    return jnp.clip(x, 0.0, 6.0)


def mobile(p, s, x, train):
    st = {}
    h, st["bn1"] = bn(conv(x, p["stem_w"], p["stem_b"]), p["bn1"], s.get("bn1"), train, C4)
    stem = relu6(h)
    h, st["bn2"] = bn(conv(stem, p["dw_w"], p["dw_b"], groups=16), p["bn2"], s.get("bn2"), train, C4)
    h = relu6(h)
    h, st["bn3"] = bn(conv(h, p["pw_w"], p["pw_b"], pad=0), p["bn3"], s.get("bn3"), train, C4)
    block = h + stem
    h, st["bn4"] = bn(conv(block, p["down_w"], p["down_b"], stride=2), p["bn4"], s.get("bn4"), train, C4)
    h = jax.nn.relu(h)
    a = jax.nn.relu(conv(h, p["br_w"], p["br_b"], pad=0))
    b = avgpool3(h)
    h = jnp.concatenate([a, b], axis=1).mean((2, 3))
    return h @ p["fc_w"].T + p["fc_b"], st


MOBILE_SHAPES = {"stem_w": (16, 1, 3, 3), "stem_b": (16,), "bn1": (16,), "dw_w": (16, 1, 3, 3), "dw_b": (16,), "bn2": (16,),
                 "pw_w": (16, 16, 1, 1), "pw_b": (16,), "bn3": (16,), "down_w": (32, 16, 3, 3), "down_b": (32,),
                 "bn4": (32,), "br_w": (32, 32, 1, 1), "br_b": (32,), "fc_w": (10, 64), "fc_b": (10,)}


def train(model, shapes, x, y, seed, epochs=60, lr=0.05, batch=64):
    key = jax.random.PRNGKey(seed)
    params = init(key, shapes)
    stats = {k: (jnp.zeros(v), jnp.ones(v)) for k, v in shapes.items() if k.startswith("bn")}

    def loss(p, xb, yb):
        logits, st = model(p, {}, xb, True)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(logp[jnp.arange(len(yb)), yb]) + 1e-4 * sum(jnp.sum(v * v) for k, v in p.items() if k.endswith("_w")), st

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    rng = np.random.default_rng(seed)
    velocity = {k: jnp.zeros_like(v) for k, v in params.items()}
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        rate = lr * 0.5 * (1 + np.cos(np.pi * epoch / epochs))
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            (_, st), grads = step(params, x[idx], y[idx])
            for k in params:
                velocity[k] = 0.9 * velocity[k] + grads[k]
                params[k] = params[k] - rate * velocity[k]
            for k, (m, v) in st.items():
                n = len(idx)
                stats[k] = (0.9 * stats[k][0] + 0.1 * m, 0.9 * stats[k][1] + 0.1 * v * n / max(n - 1, 1))
    return params, stats


# ---------- ONNX export ----------
class Builder:
    def __init__(self, params, stats):
        self.p, self.s, self.nodes, self.inits, self.n = params, stats, [], [], 0

    def init(self, name, value, dtype=np.float32):
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(self, op, inputs, name, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [name], name=name + "_node", **attrs))
        return name

    def conv(self, x, w, stride=1, pad=1, groups=1, name=None):
        return self.node("Conv", [x, self.init(w + "_w", self.p[w + "_w"]), self.init(w + "_b", self.p[w + "_b"])], name or w,
                         strides=[stride, stride], pads=[pad] * 4, group=groups)

    def bn(self, x, key):
        mean, var = self.s[key]
        ins = [x] + [self.init(f"{key}_{n}", v) for n, v in
                     (("scale", self.p[key][0]), ("bias", self.p[key][1]), ("mean", mean), ("var", var))]
        return self.node("BatchNormalization", ins, key, epsilon=EPS)

    def gemm(self, x, w, name=None):
        return self.node("Gemm", [x, self.init(w + "_w", self.p[w + "_w"]), self.init(w + "_b", self.p[w + "_b"])], name or w,
                         transB=1)

    def clip6(self, x, name):
        return self.node("Clip", [x, self.init(name + "_min", 0.0), self.init(name + "_max", 6.0)], name)

    def model(self, name, in_shape, out):
        g = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *in_shape])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 10])], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="qlift tools/make_models.py")
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        return m


def export_cnn(p, s):
    b = Builder(p, s)
    h = b.node("Relu", [b.bn(b.conv("input", "c1"), "bn1")], "relu1")
    h = b.node("MaxPool", [h], "pool1", kernel_shape=[2, 2], strides=[2, 2])
    h = b.node("Relu", [b.bn(b.conv(h, "c2"), "bn2")], "relu2")
    h = b.node("MaxPool", [h], "pool2", kernel_shape=[2, 2], strides=[2, 2])
    h = b.node("Flatten", [h], "flatten", axis=1)
    h = b.node("Relu", [b.gemm(h, "f1")], "relu3")
    b.gemm(h, "f2", name="logits")
    return b.model("digits_cnn", [1, 8, 8], "logits")


def export_mlp(p, s):
    b = Builder(p, s)
    h = b.node("Relu", [b.bn(b.gemm("input", "f1"), "bn1")], "relu1")
    h = b.node("Relu", [b.bn(b.gemm(h, "f2"), "bn2")], "relu2")
    b.gemm(h, "f3", name="logits")
    return b.model("digits_mlp", [64], "logits")


def export_mobile(p, s):
    b = Builder(p, s)
    stem = b.clip6(b.bn(b.conv("input", "stem"), "bn1"), "relu6_1")
    h = b.clip6(b.bn(b.conv(stem, "dw", groups=16), "bn2"), "relu6_2")
    h = b.bn(b.conv(h, "pw", pad=0), "bn3")
    h = b.node("Add", [h, stem], "residual")
    h = b.node("Relu", [b.bn(b.conv(h, "down", stride=2), "bn4")], "relu4")
    br = b.node("Relu", [b.conv(h, "br", pad=0)], "relu5")
    av = b.node("AveragePool", [h], "avgpool", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=1)
    h = b.node("Concat", [br, av], "concat", axis=1)
    h = b.node("GlobalAveragePool", [h], "gap")
    h = b.node("Flatten", [h], "flatten", axis=1)
    b.gemm(h, "fc", name="logits")
    return b.model("digits_mobile", [1, 8, 8], "logits")


def ort_run(path, x):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def sqnr(ref, q):
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref.astype(np.float64) - q) ** 2))


def main():
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    os.makedirs(OUT, exist_ok=True)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    x_calib = x_train[:200]
    np.save(os.path.join(OUT, "digits_test_x.npy"), x_test)
    np.save(os.path.join(OUT, "digits_test_y.npy"), y_test)
    np.save(os.path.join(OUT, "digits_calib_x.npy"), x_calib)
    np.save(os.path.join(OUT, "digits_test_x_flat.npy"), x_test.reshape(len(x_test), 64))
    np.save(os.path.join(OUT, "digits_calib_x_flat.npy"), x_calib.reshape(len(x_calib), 64))
    rows = []
    for name, model, shapes, export, flat, seed in [
        ("digits_cnn", cnn, CNN_SHAPES, export_cnn, False, 1),
        ("digits_mlp", mlp, MLP_SHAPES, export_mlp, True, 2),
        ("digits_mobile", mobile, MOBILE_SHAPES, export_mobile, False, 3),
    ]:
        params, stats = train(model, shapes, jnp.asarray(x_train), jnp.asarray(y_train), seed)
        params = {k: np.asarray(v) for k, v in params.items()}
        stats = {k: (np.asarray(m), np.asarray(v)) for k, (m, v) in stats.items()}
        path = os.path.join(OUT, name + ".onnx")
        onnx.save(export(params, stats), path)
        xt = x_test.reshape(len(x_test), 64) if flat else x_test
        xc = x_calib.reshape(len(x_calib), 64) if flat else x_calib
        ref = ort_run(path, xt)
        jax_logits = np.asarray(model(params, stats, jnp.asarray(xt), False)[0])
        assert np.allclose(ref, jax_logits, atol=1e-3), f"{name}: ONNX export disagrees with the trained model"
        np.save(os.path.join(OUT, name + ".expected.npy"), ref)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter([{"input": xc[i:i + 1]} for i in range(len(xc))])

            def get_next(self):
                return next(self.it, None)

        qpath = os.path.join(OUT, name + ".qdq.onnx")
        prepped = os.path.join(OUT, name + ".prep.onnx")
        quant_pre_process(path, prepped)  # ORT's recommended step: shape inference and graph optimization
        quantize_static(prepped, qpath, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        qref = ort.InferenceSession(qpath, providers=["CPUExecutionProvider"]).run(None, {"input": xt})[0]
        os.remove(prepped)
        np.save(os.path.join(OUT, name + ".qdq.expected.npy"), qref)
        m = onnx.load(path)
        n_params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
        ops = sorted({n.op_type for n in m.graph.node})
        rows.append((name, ops, n_params, (ref.argmax(1) == y_test).mean() * 100, (qref.argmax(1) == y_test).mean() * 100,
                     sqnr(ref, qref), "digits_test_x_flat.npy" if flat else "digits_test_x.npy"))
        print(rows[-1])
    write_models_md(rows, len(x_test), len(x_calib))


def write_models_md(rows, n_test, n_calib):
    with open(os.path.join(OUT, "MODELS.md"), "w") as f:
        f.write("# Bundled models\n\nTrained by `tools/make_models.py` on scikit-learn's bundled UCI digits "
                f"(8x8, pixels / 16). Test set: {n_test} samples (`digits_test_x.npy`, labels `digits_test_y.npy`); "
                f"calibration set: {n_calib} training samples (`digits_calib_x.npy`). The MLP reads the same data "
                "flattened (`*_flat.npy`).\n\n"
                "ORT int8 is ONNX Runtime's `quantize_static` (QDQ, per-channel int8 weights, uint8 activations, "
                "MinMax) on the calibration set; SQNR is of its outputs against the fp32 outputs on the test set.\n\n"
                "| model | ops | parameters | fp32 accuracy | ORT int8 accuracy | ORT int8 SQNR | input |\n"
                "|---|---|---|---|---|---|---|\n")
        for name, ops, n, acc, qacc, s, inp in rows:
            f.write(f"| {name} | {', '.join(ops)} | {n} | {acc:.2f}% | {qacc:.2f}% | {s:.1f} dB | {inp} |\n")
        f.write("\nFiles per model: `<model>.onnx` (fp32, BatchNormalization kept), `<model>.expected.npy` (ONNX "
                "Runtime fp32 outputs on the test set), `<model>.qdq.onnx` and `<model>.qdq.expected.npy` (ONNX "
                "Runtime's int8 model and its outputs).\n")


if __name__ == "__main__":
    main()
