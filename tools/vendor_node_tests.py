#!/usr/bin/env python3
"""Vendors the official ONNX node tests for the ops qlift supports into tests/data/onnx-node/.

Dev-only tool (needs `pip install onnx==1.23.2 onnxruntime`). The ONNX package ships the
test-case generators (onnx.backend.test.case.node); this script regenerates the data and copies every test whose graph uses only
supported ops, dtypes and features, recording each exclusion and its reason in MANIFEST.txt.
Those generators write the latest opset only: `test_legacy_*` cases add the earlier forms of
ops whose signature or behaviour changed (Upsample, Resize 10 and 11, Pad 2, Scatter...),
with ONNX Runtime's results as the expected outputs.

    python3 tools/vendor_node_tests.py
"""
import os, shutil, tempfile
import onnx
import onnx.defs

SUPPORTED = {
    "Conv", "ConvInteger", "QLinearConv", "MatMul", "MatMulInteger", "QLinearMatMul", "Gemm",
    "BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
    "Add", "Sub", "Mul", "Div", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "Flatten", "Reshape", "Transpose", "Concat", "Softmax", "Identity", "Dropout", "Squeeze",
    "Unsqueeze", "Pad", "QuantizeLinear", "DequantizeLinear", "Constant",
    # shapes, indexing, conversions
    "Shape", "Size", "Gather", "Slice", "Split", "Expand", "Tile", "Range", "ConstantOfShape",
    "Cast", "CastLike",
    # resampling, padding and indexing
    "Resize", "Upsample", "DepthToSpace", "SpaceToDepth", "OneHot", "GatherElements", "GatherND",
    "ScatterND", "ScatterElements", "Scatter", "Trilu", "NonZero",
}
P = onnx.TensorProto
DTYPES = {P.FLOAT, P.INT8, P.UINT8, P.INT32, P.INT64, P.INT4, P.UINT4, P.BOOL}
# Cases whose expected data follow the ONNX reference implementation where it departs from
# the operator's specification, which qlift follows with ONNX Runtime (checked: ORT 1.32
# gives qlift's results on both).
SPEC_DIFFERS = {
    name: "align_corners on a fractional scaled length: the expected data divide by scale * extent - 1, "
    "the specification (and ONNX Runtime, and qlift) by the integer result length - 1"
    for name in ("test_resize_downsample_scales_linear_align_corners", "test_resize_downsample_scales_cubic_align_corners")
}
# Kept in the manifest as a record of where ONNX Runtime (the oracle of the legacy cases)
# departs from the ONNX reference implementation, which qlift follows.
SPEC_DIFFERS["test_legacy_resize_13_linear_u8"] = (
    "ONNX Runtime truncates 8-bit interpolated values; the ONNX reference (saturate_cast) and qlift round half to even")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "onnx-node")


def attr(node, name):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


def reason_to_exclude(model):
    """Why qlift does not run this test, or None."""
    g = model.graph
    ops = {n.op_type for n in g.node}
    if not ops <= SUPPORTED:
        return None  # not a test of ours at all
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 7:
        return f"opset {opset} (qlift imports 7..28)"
    types = [v.type.tensor_type.elem_type for v in list(g.input) + list(g.output)]
    types += [t.data_type for t in g.initializer]
    for n in g.node:
        if n.op_type == "Constant":
            t = attr(n, "value")
            if t is not None:
                types.append(t.data_type)
    bad = sorted({onnx.TensorProto.DataType.Name(t) for t in types if t not in DTYPES})
    if bad:
        return "element type " + ", ".join(bad)
    for n in g.node:
        if n.op_type in ("Dropout", "BatchNormalization") and (attr(n, "training_mode") or len([o for o in n.output if o]) > 1):
            return "training mode"
        if n.op_type == "Dropout" and len(n.input) > 2 and n.input[2]:
            return "training_mode operand"
        if n.op_type == "MaxPool" and len([o for o in n.output if o]) > 1:
            return "MaxPool Indices result"
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and attr(n, "block_size"):
            return "blocked quantization"
    if any(n.op_type in ("Cast", "CastLike") for n in g.node) and any(
        t in (P.INT4, P.UINT4) for t in [v.type.tensor_type.elem_type for v in g.output]
    ) and any(v.type.tensor_type.elem_type == P.FLOAT for v in g.input):
        return "float to 4-bit cast of out-of-range values (undefined in ONNX; the test expects ml_dtypes' choice)"
    if any(n.op_type == "Split" and len(n.input) > 1 and n.input[1] and not any(
            i.name == n.input[1] for i in g.initializer) and any(m.op_type != "Constant" and n.input[1] in m.output for m in g.node)
           for n in g.node):
        return "Split sizes computed at run time"
    return ""


def generate(out):
    """Writes every node test case (model.onnx + test_data_set_N/*.pb) under `out`."""
    from onnx.backend.test.case import node

    import numpy as np

    for case in node.collect_testcases(None):
        values = [v for inputs, outputs in case.data_sets for v in list(inputs) + list(outputs)]
        if not all(isinstance(v, (np.ndarray, np.generic, onnx.TensorProto)) for v in values):
            continue  # sequences, maps, optionals: not tensor ops
        write_case(out, case.name, case.model, case.data_sets)
    generate_legacy(out)
    return out


def write_case(out, name, model, data_sets):
    """Writes one case as the ONNX backend tests lay it out."""
    from onnx import numpy_helper

    case_dir = os.path.join(out, name)
    os.makedirs(case_dir, exist_ok=True)
    with open(os.path.join(case_dir, "model.onnx"), "wb") as f:
        f.write(model.SerializeToString())
    for i, (inputs, outputs) in enumerate(data_sets):
        data_dir = os.path.join(case_dir, f"test_data_set_{i}")
        os.makedirs(data_dir, exist_ok=True)
        for kind, values, infos in (("input", inputs, model.graph.input), ("output", outputs, model.graph.output)):
            for j, value in enumerate(values):
                proto = value if isinstance(value, onnx.TensorProto) else numpy_helper.from_array(value, infos[j].name)
                with open(os.path.join(data_dir, f"{kind}_{j}.pb"), "wb") as f:
                    f.write(proto.SerializeToString())


def generate_legacy(out):
    """Cases of earlier opsets: one node, constant operands as initializers, the data inputs
    fed, the expected outputs computed by ONNX Runtime."""
    import numpy as np
    import onnxruntime
    from onnx import helper, numpy_helper

    f32 = lambda *shape: (np.arange(np.prod(shape), dtype=np.float32) * 0.5 - 3).reshape(shape)
    i64 = lambda *v: np.array(v, dtype=np.int64)
    fl = lambda *v: np.array(v, dtype=np.float32)
    # (name, opset, op, attributes, fed inputs, constant inputs ("" for an omitted one)); the
    # opset is the lowest qlift imports where the version named is the current one.
    cases = [
        ("upsample_7_nearest", 7, "Upsample", {"mode": "nearest", "scales": [1.0, 1.0, 2.0, 3.0]}, {"x": f32(1, 1, 2, 2)}, {}),
        ("upsample_9_linear", 9, "Upsample", {"mode": "linear"}, {"x": f32(1, 2, 2, 3)}, {"scales": fl(1, 1, 2, 1.5)}),
        ("resize_10_nearest_up", 10, "Resize", {"mode": "nearest"}, {"x": f32(1, 1, 2, 3)}, {"scales": fl(1, 1, 2.5, 1.7)}),
        ("resize_10_nearest_down", 10, "Resize", {"mode": "nearest"}, {"x": f32(1, 1, 4, 5)}, {"scales": fl(1, 1, 0.6, 0.45)}),
        ("resize_10_linear", 10, "Resize", {"mode": "linear"}, {"x": f32(1, 1, 3, 4)}, {"scales": fl(1, 1, 1.5, 0.75)}),
        ("resize_11_tf_half_pixel_for_nn", 11, "Resize", {"mode": "nearest", "coordinate_transformation_mode": "tf_half_pixel_for_nn"},
         {"x": f32(1, 1, 3, 4)}, {"roi": fl(), "scales": fl(1, 1, 1.7, 0.6)}),
        ("resize_11_sizes_cubic", 11, "Resize", {"mode": "cubic", "coordinate_transformation_mode": "align_corners"},
         {"x": f32(1, 1, 4, 4)}, {"roi": fl(), "scales": fl(), "sizes": i64(1, 1, 3, 6)}),
        ("resize_13_linear_u8", 13, "Resize", {"mode": "linear"}, {"x": (np.arange(24) * 11 % 256).astype(np.uint8).reshape(1, 2, 3, 4)},
         {"roi": "", "scales": fl(1, 1, 1.5, 1.25)}),
        ("pad_2_reflect", 7, "Pad", {"mode": "reflect", "pads": [0, 2, 1, 0, 1, 2]}, {"x": f32(2, 3, 4)}, {}),
        ("pad_11_edge", 11, "Pad", {"mode": "edge"}, {"x": f32(3, 4)}, {"pads": i64(2, -1, 1, 3)}),
        ("depthtospace_1", 7, "DepthToSpace", {"blocksize": 2}, {"x": f32(1, 8, 2, 3)}, {}),
        ("spacetodepth_1", 7, "SpaceToDepth", {"blocksize": 2}, {"x": f32(1, 2, 4, 6)}, {}),
        ("scatter_9", 9, "Scatter", {"axis": 1}, {"x": f32(3, 4), "i": i64(0, 3, -1, 1, 2, 2).reshape(3, 2), "u": f32(3, 2)}, {}),
        ("onehot_9_float_depth", 9, "OneHot", {"axis": 0}, {"i": i64(0, 2, -1, 5)}, {"depth": fl(3), "values": fl(-1, 4)}),
        ("gathernd_11", 11, "GatherND", {}, {"x": f32(2, 3, 2), "i": i64(1, 2, 0, 0).reshape(2, 2)}, {}),
    ]
    for name, opset, op, attrs, fed, constants in cases:
        fed_infos = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in fed.items()]
        inits = [numpy_helper.from_array(v, k) for k, v in constants.items() if not isinstance(v, str)]
        names = list(fed) + [("" if isinstance(v, str) else k) for k, v in constants.items()]
        node = helper.make_node(op, names, ["y"], **attrs)
        # The result has the data's element type (OneHot's, the values').
        data = constants["values"] if op == "OneHot" else next(iter(fed.values()))
        out_info = helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(data.dtype), None)
        graph = helper.make_graph([node], name, fed_infos, [out_info], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (y,) = session.run(None, fed)
        graph.output[0].CopyFrom(helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(y.dtype), y.shape))
        write_case(out, f"test_legacy_{name}", model, [(list(fed.values()), [y])])


def main():
    node_dir = generate(tempfile.mkdtemp())
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    kept, excluded = [], []
    for name in sorted(os.listdir(node_dir)):
        path = os.path.join(node_dir, name, "model.onnx")
        if not os.path.exists(path):
            continue
        model = onnx.load(path)
        why = reason_to_exclude(model)
        if why is None:
            continue
        why = why or SPEC_DIFFERS.get(name, "")
        ops = sorted({n.op_type for n in model.graph.node} - {"Constant"}) or ["Constant"]
        if why:
            excluded.append((name, why))
            continue
        shutil.copytree(os.path.join(node_dir, name), os.path.join(OUT, name))
        kept.append((name, " ".join(ops)))
    with open(os.path.join(OUT, "MANIFEST.txt"), "w") as f:
        f.write("# ONNX node tests run by tests/tests/onnx_node.rs: `test_name op_type...`\n")
        for name, ops in kept:
            f.write(f"{name} {ops}\n")
        f.write("# excluded: tests of supported ops that use features qlift does not support\n")
        for name, why in excluded:
            f.write(f"# {name}: {why}\n")
    with open(os.path.join(OUT, "NOTICE"), "w") as f:
        f.write(
            "The files in this directory are generated from the ONNX project's backend node test cases\n"
            "(https://github.com/onnx/onnx, onnx/backend/test/case/node), onnx version "
            f"{onnx.__version__}.\nCopyright (c) ONNX Project Contributors. Licensed under the Apache License 2.0\n"
            "(http://www.apache.org/licenses/LICENSE-2.0).\n"
            "Regenerate with: python3 tools/vendor_node_tests.py\n")
    print(f"vendored {len(kept)} tests, excluded {len(excluded)}")


if __name__ == "__main__":
    main()
