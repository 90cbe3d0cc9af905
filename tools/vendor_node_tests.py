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
    "Unsqueeze", "Pad", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Constant",
    # shapes, indexing, conversions
    "Shape", "Size", "Gather", "Slice", "Split", "Expand", "Tile", "Range", "ConstantOfShape",
    "Cast", "CastLike",
    # resampling, padding and indexing
    "Resize", "Upsample", "DepthToSpace", "SpaceToDepth", "OneHot", "GatherElements", "GatherND",
    "ScatterND", "ScatterElements", "Scatter", "Trilu", "NonZero",
    # the elementwise family: math, comparisons and logic, activations
    "Pow", "Sqrt", "Exp", "Log", "Abs", "Neg", "Reciprocal", "Floor", "Ceil", "Round", "Erf", "Sin",
    "Cos", "Min", "Max", "Mean", "Sum", "Mod", "Sign", "Equal", "Greater", "GreaterOrEqual", "Less",
    "LessOrEqual", "Not", "And", "Or", "Xor", "Where", "Gelu", "PRelu", "Elu", "Selu", "Softplus",
    "Mish", "Softsign", "ThresholdedRelu", "Celu",
    # reductions, normalizations and NN ops
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "ArgMax", "ArgMin", "CumSum",
    "LayerNormalization", "InstanceNormalization", "GroupNormalization", "LpNormalization",
    "LogSoftmax", "Hardmax", "ConvTranspose", "Einsum",
    # recurrent layers
    "LSTM", "GRU", "RNN",
    # control flow (bodies' ops must be supported too, see all_nodes)
    "If", "Loop", "Scan",
}
CONTROL_FLOW = {"If", "Loop", "Scan"}
# Cases of supported ops left out before they are written (their data are not tensors), with
# the reason; main() lists them in the manifest.
SKIPPED = []
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
# Control-flow cases qlift cannot type: AffineGrid's expansion has an If (on `size == 1`, known
# only at run time) whose branches give a scalar and a [1] (qlift's types need one rank), and
# Range on [1]-shaped operands where ONNX specifies scalars.
UNTYPED = {
    name: "an If whose branches return different ranks (f32[] and f32[1]) on a run-time condition, and Range on [1]-shaped operands"
    for name in ("test_affine_grid_2d_expanded", "test_affine_grid_2d_align_corners_expanded",
                 "test_affine_grid_3d_expanded", "test_affine_grid_3d_align_corners_expanded")
}
SPEC_DIFFERS["test_legacy_resize_13_linear_u8"] = (
    "ONNX Runtime truncates 8-bit interpolated values; the ONNX reference (saturate_cast) and qlift round half to even")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "onnx-node")


def attr(node, name):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


def all_nodes(g):
    """The nodes of graph `g` and of every body in it (If branches, Loop and Scan bodies)."""
    for n in g.node:
        yield n
        for a in n.attribute:
            for body in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from all_nodes(body)


def all_graphs(g):
    """Graph `g` and every body in it."""
    yield g
    for n in g.node:
        for a in n.attribute:
            for body in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from all_graphs(body)


def reason_to_exclude(model):
    """Why qlift does not run this test, or None."""
    g = model.graph
    ops = {n.op_type for n in all_nodes(g)}
    if not ops <= SUPPORTED:
        return None  # not a test of ours at all
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 7:
        return f"opset {opset} (qlift imports 7..28)"
    if opset < 9 and "Scan" in ops:
        return "Scan opset 8 (the batched form with sequence_lens; qlift imports opset 9's form)"
    types = [v.type.tensor_type.elem_type for v in list(g.input) + list(g.output)]
    # A body may leave its inputs and outputs untyped (qlift types them from the node's operands).
    types += [v.type.tensor_type.elem_type for b in list(all_graphs(g))[1:] for v in list(b.input) + list(b.output)
              if v.type.tensor_type.elem_type != P.UNDEFINED]
    types += [t.data_type for b in all_graphs(g) for t in b.initializer]
    for n in all_nodes(g):
        if n.op_type == "Constant":
            t = attr(n, "value")
            if t is not None:
                types.append(t.data_type)
    bad = sorted({onnx.TensorProto.DataType.Name(t) for t in types if t not in DTYPES})
    if bad:
        return "element type " + ", ".join(bad)
    for n in all_nodes(g):
        if n.op_type in ("Dropout", "BatchNormalization") and (attr(n, "training_mode") or len([o for o in n.output if o]) > 1):
            return "training mode"
        if n.op_type == "Dropout" and len(n.input) > 2 and n.input[2]:
            return "training_mode operand"
        if n.op_type == "MaxPool" and len([o for o in n.output if o]) > 1:
            return "MaxPool Indices result"
        if n.op_type == "QuantizeLinear" and attr(n, "block_size"):
            return "blocked QuantizeLinear (only the blocked DequantizeLinear imports)"
    computed = {o for m in all_nodes(g) if m.op_type != "Constant" for o in m.output}
    for n in all_nodes(g):
        if n.op_type == "Cast" and attr(n, "to") not in DTYPES:
            return "cast to " + onnx.TensorProto.DataType.Name(attr(n, "to"))
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 1 and n.input[1] in computed:
            return "quantization parameters computed at run time (dynamic quantization)"
    if any(n.op_type in ("Cast", "CastLike") for n in g.node) and any(
        t in (P.INT4, P.UINT4) for t in [v.type.tensor_type.elem_type for v in g.output]
    ) and any(v.type.tensor_type.elem_type == P.FLOAT for v in g.input):
        return "float to 4-bit cast of out-of-range values (undefined in ONNX; the test expects ml_dtypes' choice)"
    if any(n.op_type == "Pad" and len(n.input) > 1 and any(m.op_type != "Constant" and n.input[1] in m.output for m in g.node)
           for n in g.node):
        return "Pad pads computed at run time"
    if any(n.op_type == "Split" and len(n.input) > 1 and n.input[1] and not any(
            i.name == n.input[1] for i in g.initializer) and any(m.op_type != "Constant" and n.input[1] in m.output for m in g.node)
           for n in g.node):
        return "Split sizes computed at run time"
    return ""


def same_at_opset_7(model):
    """Whether every op of the model has at opset 7 the schema it has at the model's opset:
    a test written for an older opset (Not's are opset 1) then tests the op qlift imports."""
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    try:
        return all(onnx.defs.get_schema(n.op_type, 7).since_version == onnx.defs.get_schema(n.op_type, opset).since_version
                   for n in model.graph.node)
    except onnx.defs.SchemaError:
        return False


def lift_to_opset_7(path):
    """Rewrites an opset < 7 model whose ops did not change by opset 7 to import opset 7."""
    model = onnx.load(path)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < 7 and same_at_opset_7(model):
            o.version = 7
    onnx.save(model, path)
def inference_form(case_dir):
    """Keeps only the first result of LayerNormalization (qlift imports the inference form;
    Mean and InvStdDev are training outputs): drops them from the node, the graph outputs and
    the data sets when nothing else reads them. Returns whether the case changed."""
    path = os.path.join(case_dir, "model.onnx")
    model = onnx.load(path)
    g = model.graph
    dropped = []
    for n in g.node:
        if n.op_type != "LayerNormalization":
            continue
        extra = [o for o in n.output[1:] if o]
        if any(o in m.input for m in g.node for o in extra):
            return False
        dropped += extra
        del n.output[1:]
    if not dropped:
        return False
    positions = [i for i, v in enumerate(g.output) if v.name in dropped]
    kept = [v for v in g.output if v.name not in dropped]
    del g.output[:]
    g.output.extend(kept)
    onnx.save(model, path)
    for data in os.listdir(case_dir):
        data_dir = os.path.join(case_dir, data)
        if not os.path.isdir(data_dir):
            continue
        outputs = sorted((f for f in os.listdir(data_dir) if f.startswith("output_")), key=lambda f: int(f[7:-3]))
        for i, f in enumerate(outputs):
            src = os.path.join(data_dir, f)
            if i in positions:
                os.remove(src)
            else:
                os.rename(src, os.path.join(data_dir, f"output_{i - sum(p < i for p in positions)}.pb"))
    return True


# Derived cases, written next to the official ones under names of their own:
# - `_f32`: the float32 form of a case whose only unsupported type is double, for the ops
#   whose official cases are all double (inputs and expected outputs cast to float32);
# - `_opsetN`: a case of an op whose signature or semantics changed, written in opset N: the
#   reduction axes as an attribute, LogSoftmax/Hardmax on the input coerced to 2-d (expected
#   outputs from ONNX's numpy definition applied to the coerced input), GroupNormalization's
#   per-group scale and bias (expected outputs from onnx.reference), and ops whose older
#   versions mean the same (expected outputs unchanged).
F32_FORM = {"Einsum", "CumSum", "ReduceLogSumExp"}
REDUCE_ATTR_AXES = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                    "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"}
OLD_OPSETS = {op: (11, 13) for op in REDUCE_ATTR_AXES}
OLD_OPSETS.update({"ReduceSum": (11,), "ArgMax": (11,), "ArgMin": (11,), "CumSum": (11,), "LogSoftmax": (11,),
                   "Hardmax": (11,), "InstanceNormalization": (7,), "LpNormalization": (7,),
                   "ConvTranspose": (7, 11), "GroupNormalization": (18,)})


def read_case(case_dir):
    """The model and data set 0 of a case: inputs and outputs as lists of (name, array)."""
    from onnx import numpy_helper
    model = onnx.load(os.path.join(case_dir, "model.onnx"))
    data = os.path.join(case_dir, "test_data_set_0")
    def tensors(prefix):
        files = sorted((f for f in os.listdir(data) if f.startswith(prefix)), key=lambda f: int(f[len(prefix) + 1:-3]))
        out = []
        for f in files:
            t = onnx.TensorProto()
            with open(os.path.join(data, f), "rb") as fh:
                t.ParseFromString(fh.read())
            out.append((t.name, numpy_helper.to_array(t)))
        return out
    return model, tensors("input"), tensors("output")


def write_case(case_dir, model, inputs, outputs):
    from onnx import numpy_helper
    data = os.path.join(case_dir, "test_data_set_0")
    os.makedirs(data)
    onnx.save(model, os.path.join(case_dir, "model.onnx"))
    for prefix, values in (("input", inputs), ("output", outputs)):
        for i, (name, value) in enumerate(values):
            with open(os.path.join(data, f"{prefix}_{i}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(value, name).SerializeToString())


def f32_form(model, inputs, outputs):
    """`model` with its double values, initializers and constants made float32."""
    import numpy as np
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.tensor_type.elem_type == P.DOUBLE:
            v.type.tensor_type.elem_type = P.FLOAT
    from onnx import numpy_helper
    tensors = list(g.initializer) + [a.t for n in g.node for a in n.attribute if a.HasField("t")]
    for t in tensors:
        if t.data_type == P.DOUBLE:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    cast = lambda vs: [(n, v.astype(np.float32) if v.dtype == np.float64 else v) for n, v in vs]
    return m, cast(inputs), cast(outputs)


def old_form(model, inputs, outputs, version):
    """The case written in opset `version`, or None when it has no such form."""
    import numpy as np
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    if len(g.node) != 1:
        return None
    n = g.node[0]
    if any(v.dtype == np.bool_ for _, v in inputs):
        return None  # boolean reductions exist from opset 20
    del m.opset_import[:]
    m.opset_import.append(onnx.helper.make_opsetid("", version))
    m.ir_version = 7
    inputs = list(inputs)
    if n.op_type in REDUCE_ATTR_AXES or n.op_type == "ReduceSum":
        if attr(n, "noop_with_empty_axes"):
            return None
        for a in [a for a in n.attribute if a.name == "noop_with_empty_axes"]:
            n.attribute.remove(a)
        if len(n.input) > 1 and n.input[1]:
            name = n.input[1]
            values = dict(inputs).get(name)
            if values is None:
                return None
            inputs = [(k, v) for k, v in inputs if k != name]
            kept = [v for v in g.input if v.name != name]
            del g.input[:]
            g.input.extend(kept)
            del n.input[1:]
            if values.size:
                n.attribute.append(onnx.helper.make_attribute("axes", [int(a) for a in values.ravel()]))
    elif n.op_type in ("ArgMax", "ArgMin") and attr(n, "select_last_index"):
        return None
    elif n.op_type in ("LogSoftmax", "Hardmax"):
        from onnx.backend.test.case.node.hardmax import hardmax
        from onnx.backend.test.case.node.logsoftmax import logsoftmax
        x = inputs[0][1]
        axis = attr(n, "axis")
        axis = 1 if axis is None else axis % x.ndim
        rows = x.reshape(int(np.prod(x.shape[:axis])), -1)
        f = logsoftmax if n.op_type == "LogSoftmax" else hardmax
        outputs = [(outputs[0][0], f(rows, 1).reshape(x.shape).astype(x.dtype))]
    elif n.op_type == "GroupNormalization":
        from onnx.reference import ReferenceEvaluator
        groups = attr(n, "num_groups")
        per_group = [(k, v.reshape(groups, -1)[:, 0].copy()) for k, v in inputs[1:]]
        inputs = inputs[:1] + per_group
        for v in g.input[1:]:
            v.type.tensor_type.shape.dim[0].dim_value = groups
        outputs = [(outputs[0][0], ReferenceEvaluator(m).run(None, dict(inputs))[0])]
    return m, inputs, outputs


# qlift's own Einsum cases (the official ones are all double): the contractions exporters
# write, expected outputs from numpy.einsum; `name: (equation, shapes, symbolic dims)` where
# symbolic dims maps (input, axis) to a dim_param.
EINSUM_CASES = {
    "attention_scores": ("bhqd,bhkd->bhqk", [(2, 3, 5, 4), (2, 3, 6, 4)], {(0, 0): "N", (1, 0): "N", (0, 2): "q"}),
    "attention_values": ("bhqk,bhkd->bhqd", [(2, 3, 5, 6), (2, 3, 6, 4)], {(0, 0): "N", (1, 0): "N"}),
    "key_layout": ("bhqd,bkhd->bhqk", [(2, 3, 5, 4), (2, 6, 3, 4)], {}),
    "batch_matmul": ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)], {(0, 0): "N", (1, 0): "N"}),
    "matmul": ("ij,jk->ik", [(3, 4), (4, 5)], {}),
    "matmul_implicit": ("ij,jk", [(3, 4), (4, 5)], {}),
    "transpose": ("ij->ji", [(3, 4)], {}),
    "batch_transpose": ("bij->bji", [(2, 3, 4)], {(0, 0): "N"}),
    "sum_middle": ("ijk->ik", [(2, 3, 4)], {}),
    "diagonal": ("ii->i", [(4, 4)], {}),
    "trace": ("ii->", [(4, 4)], {}),
    "inner": ("i,i->", [(5,), (5,)], {}),
    "outer": ("i,j->ij", [(3,), (4,)], {}),
    "outer_4d": ("ij,kl->ijkl", [(2, 3), (4, 5)], {}),
    "ellipsis_broadcast": ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)], {}),
    "linear": ("abc,cd->abd", [(2, 3, 4), (4, 5)], {(0, 0): "N"}),
    "two_contracted": ("abcd,cde->abe", [(2, 3, 4, 5), (4, 5, 6)], {}),
    "elementwise": ("ab,ab->ab", [(3, 4), (3, 4)], {}),
    "row_dots": ("ab,ab->a", [(3, 4), (3, 4)], {}),
    "three_operands": ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)], {}),
}


def einsum_cases(out):
    """Writes EINSUM_CASES as node test cases named `qlift_einsum_*`; returns their names."""
    import numpy as np
    from onnx import helper
    names = []
    rng = np.random.default_rng(0)
    for name, (equation, shapes, symbolic) in EINSUM_CASES.items():
        inputs = [(f"x{i}", rng.uniform(-1, 1, s).astype(np.float32)) for i, s in enumerate(shapes)]
        y = np.einsum(equation, *[v.astype(np.float64) for _, v in inputs]).astype(np.float32)
        dims = lambda i, s: [symbolic.get((i, a), d) for a, d in enumerate(s)]
        graph = helper.make_graph(
            [helper.make_node("Einsum", [n for n, _ in inputs], ["y"], equation=equation)], name,
            [helper.make_tensor_value_info(n, P.FLOAT, dims(i, v.shape)) for i, (n, v) in enumerate(inputs)],
            [helper.make_tensor_value_info("y", P.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=7)
        names.append(f"qlift_einsum_{name}")
        write_case(os.path.join(out, names[-1]), model, inputs, [("y", np.asarray(y))])
    return names


def generate(out):
    """Writes every node test case (model.onnx + test_data_set_N/*.pb) under `out`."""
    from onnx import numpy_helper
    from onnx.backend.test.case import node

    import numpy as np

    for case in node.collect_testcases(None):
        values = [v for inputs, outputs in case.data_sets for v in list(inputs) + list(outputs)]
        if not all(isinstance(v, (np.ndarray, np.generic, onnx.TensorProto)) for v in values):
            # Sequences, maps, optionals: not tensor ops. Control flow over them is recorded.
            if CONTROL_FLOW & {n.op_type for n in all_nodes(case.model.graph)}:
                SKIPPED.append((case.name, "sequence or optional values (qlift has no sequence or optional type)"))
            continue
        case_dir = os.path.join(out, case.name)
        os.makedirs(case_dir, exist_ok=True)
        with open(os.path.join(case_dir, "model.onnx"), "wb") as f:
            f.write(case.model.SerializeToString())
        for i, (inputs, outputs) in enumerate(case.data_sets):
            data_dir = os.path.join(case_dir, f"test_data_set_{i}")
            os.makedirs(data_dir, exist_ok=True)
            for kind, values, infos in (("input", inputs, case.model.graph.input), ("output", outputs, case.model.graph.output)):
                for j, value in enumerate(values):
                    proto = value if isinstance(value, onnx.TensorProto) else numpy_helper.from_array(value, infos[j].name)
                    with open(os.path.join(data_dir, f"{kind}_{j}.pb"), "wb") as f:
                        f.write(proto.SerializeToString())
    generate_legacy(out)
    return out


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
        write_case(os.path.join(out, f"test_legacy_{name}"), model, list(fed.items()), [("y", y)])


def main():
    node_dir = generate(tempfile.mkdtemp())
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    kept, excluded, trimmed = [], [], []
    for name in sorted(os.listdir(node_dir)):
        path = os.path.join(node_dir, name, "model.onnx")
        if not os.path.exists(path):
            continue
        lift_to_opset_7(path)
        model = onnx.load(path)
        why = reason_to_exclude(model)
        if why is None:
            continue
        why = why or SPEC_DIFFERS.get(name, "") or UNTYPED.get(name, "")
        ops = sorted({n.op_type for n in all_nodes(model.graph)} - {"Constant"}) or ["Constant"]
        if why:
            excluded.append((name, why))
            if why != "element type DOUBLE" or not set(ops) & F32_FORM:
                continue
            name = name + "_f32"
            write_case(os.path.join(OUT, name), *f32_form(*read_case(os.path.join(node_dir, name[:-4]))))
        else:
            shutil.copytree(os.path.join(node_dir, name), os.path.join(OUT, name))
        if inference_form(os.path.join(OUT, name)):
            trimmed.append(name)
        kept.append((name, " ".join(ops)))
        if len(ops) == 1 and "expanded" not in name:
            for version in OLD_OPSETS.get(ops[0], ()):
                old = old_form(*read_case(os.path.join(OUT, name)), version)
                if old is not None:
                    write_case(os.path.join(OUT, f"{name}_opset{version}"), *old)
                    kept.append((f"{name}_opset{version}", " ".join(ops)))
    kept += [(name, "Einsum") for name in einsum_cases(OUT)]
    with open(os.path.join(OUT, "MANIFEST.txt"), "w") as f:
        f.write("# ONNX node tests run by tests/tests/onnx_node.rs: `test_name op_type...`\n")
        for name, ops in kept:
            f.write(f"{name} {ops}\n")
        f.write("# inference form: LayerNormalization's Mean and InvStdDev results (training outputs) dropped from\n")
        f.write("# the graph and the expected data of " + ", ".join(trimmed) + "\n")
        f.write("# excluded: tests of supported ops that use features qlift does not support\n")
        for name, why in excluded + SKIPPED:
            f.write(f"# {name}: {why}\n")
    with open(os.path.join(OUT, "NOTICE"), "w") as f:
        f.write(
            "The files in this directory are generated from the ONNX project's backend node test cases\n"
            "(https://github.com/onnx/onnx, onnx/backend/test/case/node), onnx version "
            f"{onnx.__version__}.\nCopyright (c) ONNX Project Contributors. Licensed under the Apache License 2.0\n"
            "(http://www.apache.org/licenses/LICENSE-2.0).\n"
            "The cases named `*_f32` and `*_opsetN` are derived from them by qlift's script (see\n"
            "F32_FORM and OLD_OPSETS in tools/vendor_node_tests.py); the `qlift_einsum_*` cases are\n"
            "qlift's own (EINSUM_CASES there, expected outputs from numpy.einsum).\n"
            "Regenerate with: python3 tools/vendor_node_tests.py\n")
    print(f"vendored {len(kept)} tests, excluded {len(excluded)}")


if __name__ == "__main__":
    main()
