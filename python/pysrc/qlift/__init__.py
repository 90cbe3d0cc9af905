"""qlift: a quantizing ONNX compiler.

Quantize an ONNX model to int8 from calibration data and compile it to machine code for this
CPU (Cranelift JIT), then run it on numpy arrays::

    import numpy as np, qlift
    model = qlift.compile("digits_cnn.onnx", calib=np.load("digits_calib_x.npy"))
    (logits,) = model(np.load("digits_test_x.npy"))

Errors are :class:`QliftError` subclasses: :class:`BadModelError`, :class:`BadInputError`,
:class:`UnsupportedOpError` and :class:`InternalError` (a bug in qlift).
"""

from ._qlift import (
    BadInputError,
    BadModelError,
    InternalError,
    Model,
    QliftError,
    UnsupportedOpError,
    __version__,
    compile,
    dump,
    quantize,
    report,
)

__all__ = [
    "BadInputError",
    "BadModelError",
    "InternalError",
    "Model",
    "QliftError",
    "UnsupportedOpError",
    "__version__",
    "compile",
    "dump",
    "quantize",
    "report",
]
