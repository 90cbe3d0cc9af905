#!/usr/bin/env python3
"""Writes ONNX Runtime's QOperator quantization (QLinearConv / QLinearMatMul / QLinearAdd …)
of the bundled fp32 models, for the test that pre-quantized QLinear models import onto
qlift's integer ops.

Dev-only tool: `pip install onnx onnxruntime numpy`, then `python3 tools/make_qop_models.py`
(after tools/make_models.py). Writes examples/models/<model>.qop.onnx and
<model>.qop.expected.npy (ONNX Runtime's outputs on the test set). Only the models whose
QOperator form has a QLinear op and only ops qlift imports are kept: only Conv, MatMul and
MaxPool are quantized, since ORT's QOperator forms of the others (QGemm, QLinearAdd,
QLinearAveragePool, QLinearConcat) are contrib ops of the com.microsoft domain.
"""
import os
import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "models")
MODELS = [("digits_cnn", "digits_calib_x.npy", "digits_test_x.npy"), ("digits_mlp", "digits_calib_x_flat.npy", "digits_test_x_flat.npy"),
          ("digits_mobile", "digits_calib_x.npy", "digits_test_x.npy")]
IMPORTABLE = {"QLinearConv", "QLinearMatMul", "QuantizeLinear", "DequantizeLinear", "MaxPool", "Flatten", "Reshape", "Transpose",
              "Relu", "Clip", "Conv", "Gemm", "MatMul", "Add", "Concat", "AveragePool", "GlobalAveragePool",
              "BatchNormalization"}


def main():
    for name, calib, test in MODELS:
        xc, xt = np.load(os.path.join(OUT, calib)), np.load(os.path.join(OUT, test))

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter([{"input": xc[i:i + 1]} for i in range(len(xc))])

            def get_next(self):
                return next(self.it, None)

        src, prepped = os.path.join(OUT, name + ".onnx"), os.path.join(OUT, name + ".prep.onnx")
        qpath = os.path.join(OUT, name + ".qop.onnx")
        quant_pre_process(src, prepped)
        # Gemm stays float: ORT's quantized Gemm (QGemm) is a contrib op.
        quantize_static(prepped, qpath, Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "MatMul", "MaxPool"])
        os.remove(prepped)
        ops = {(n.domain or "ai.onnx", n.op_type) for n in onnx.load(qpath).graph.node}
        foreign = sorted(f"{d}:{o}" for d, o in ops if d != "ai.onnx" or o not in IMPORTABLE)
        if foreign or not any(o.startswith("QLinear") for _, o in ops):
            print(f"{name}: skipped, uses {foreign or 'no QLinear op'}")
            os.remove(qpath)
            continue
        out = ort.InferenceSession(qpath, providers=["CPUExecutionProvider"]).run(None, {"input": xt})[0]
        np.save(os.path.join(OUT, name + ".qop.expected.npy"), out)
        print(f"{name}: {sorted(o for _, o in ops)}")


if __name__ == "__main__":
    main()
