#!/usr/bin/env python3
"""Writes the bundled float models at older opsets (7, 9, 11, 12), the way older exporters
wrote them, for the test that qlift imports them and computes the same outputs
(tests/tests/models.rs).

onnx.version_converter has no down-adapters for most of these ops (Relu 14→12 is missing),
so the conversion is done here: every op of the bundled models means the same at opsets 7
to 13 for f32 except in form: Clip's bounds are attributes before opset 11, attributes a
version does not have yet (MaxPool's ceil_mode, AveragePool's ceil_mode) are dropped when
they hold their default, and Gemm's C is required before opset 11. The result is checked
with onnx.checker against the target opset.

Dev-only tool (needs `pip install onnx==1.23.2`; target/corpus/venv has it):

    target/corpus/venv/bin/python tools/make_old_opsets.py
"""
import os
import numpy as np
import onnx
from onnx import helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "..", "examples", "models")
OUT = os.path.join(HERE, "..", "tests", "data", "old-opsets")
OPSETS = [7, 9, 11, 12]
IR_VERSION = {7: 3, 9: 4, 11: 6, 12: 7}


def downgrade(model, opset):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    new_nodes = []
    for n in g.node:
        schema = onnx.defs.get_schema(n.op_type, opset)
        if n.op_type == "Clip" and opset < 11:
            lo = numpy_helper.to_array(inits[n.input[1]]).item() if len(n.input) > 1 and n.input[1] else None
            hi = numpy_helper.to_array(inits[n.input[2]]).item() if len(n.input) > 2 and n.input[2] else None
            attrs = {}
            if lo is not None:
                attrs["min"] = float(lo)
            if hi is not None:
                attrs["max"] = float(hi)
            n = helper.make_node("Clip", [n.input[0]], list(n.output), name=n.name, **attrs)
        if n.op_type == "Gemm" and opset < 11 and (len(n.input) < 3 or not n.input[2]):
            raise SystemExit("Gemm without C at opset < 11 is not handled")
        keep = []
        for a in n.attribute:
            if a.name in schema.attributes:
                keep.append(a)
                continue
            value = helper.get_attribute_value(a)
            if value in (0, [0], b"NOTSET"):
                continue  # the attribute's default, which the older version has implicitly
            raise SystemExit(f"{n.op_type}.{a.name}={value} has no equivalent at opset {opset}")
        del n.attribute[:]
        n.attribute.extend(keep)
        new_nodes.append(n)
    del g.node[:]
    g.node.extend(new_nodes)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    if IR_VERSION[opset] < 4:
        # Before IR 4, initializers had to be listed among the graph inputs too.
        known = {i.name for i in g.input}
        for t in g.initializer:
            if t.name not in known:
                g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    m.opset_import[0].version = opset
    m.ir_version = IR_VERSION[opset]
    onnx.checker.check_model(m)
    return m


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in ["digits_cnn", "digits_mlp", "digits_mobile"]:
        model = onnx.load(os.path.join(MODELS, f"{name}.onnx"))
        for opset in OPSETS:
            path = os.path.join(OUT, f"{name}.opset{opset}.onnx")
            onnx.save(downgrade(model, opset), path)
            print(path)


if __name__ == "__main__":
    main()
