"""Type stubs of the qlift package (the extension module qlift._qlift)."""

import os
from typing import Any, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, TypedDict, Union

import numpy as np
import numpy.typing as npt

__version__: str

class QliftError(Exception):
    """Base class of every error qlift raises."""

class BadModelError(QliftError):
    """The model cannot be read or is invalid (a missing file, garbled bytes, a bad graph)."""

class BadInputError(QliftError):
    """Data given with the model is wrong: calibration data or run inputs (names, shapes, dtypes)."""

class UnsupportedOpError(QliftError):
    """The model uses an op, opset or feature this version of qlift does not support."""

class InternalError(QliftError):
    """A bug in qlift: please report it with the model."""

# A path, serialized bytes, or an onnx.ModelProto (anything with SerializeToString()).
ModelSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Any]
# Inputs of one run or one calibration batch: an array (one-input model), a sequence in input
# order, or a dict by input name.
Inputs = Union[npt.ArrayLike, Sequence[npt.ArrayLike], Mapping[str, npt.ArrayLike]]
# Calibration: one batch, or an iterable of batches (streamed).
Calibration = Union[np.ndarray, Mapping[str, npt.ArrayLike], Iterable[Inputs]]
Method = str  # "minmax", "percentile", "percentile:P", "mse", "entropy"
# A quantization plan: a TOML or JSON file's path, or a dict of the file's shape, e.g.
# {"default": {"method": "minmax"}, "op_types": {"Gemm": {"weights": "per-tensor"}},
#  "nodes": {"conv1": {"precision": "fp32"}}} (README, "Controlling quantization").
Plan = Union[str, "os.PathLike[str]", Mapping[str, Any]]

class Quantization(TypedDict):
    scale: List[float]
    zero_point: List[int]
    axis: Optional[int]

class ValueInfo(TypedDict):
    name: str
    shape: Tuple[Union[int, str], ...]
    dtype: str
    qlift_dtype: str
    quantization: Optional[Quantization]

class LayerError(TypedDict):
    name: str
    op: str
    sqnr_db: float
    max_abs_error: float
    elements: int
    output: bool

class BenchResult(TypedDict):
    runs: int
    min_us: float
    median_us: float
    p90_us: float
    mean_us: float

class Model:
    """A compiled model: call it (or run()) on numpy arrays. Safe to share between threads;
    the GIL is released while it runs."""

    @property
    def inputs(self) -> List[ValueInfo]: ...
    @property
    def outputs(self) -> List[ValueInfo]: ...
    @property
    def quantized(self) -> bool: ...
    @property
    def engine(self) -> str: ...
    @property
    def compile_seconds(self) -> float: ...
    def run(self, inputs: Inputs) -> List[np.ndarray]:
        """Runs the model; returns the outputs in output order."""
    def __call__(self, inputs: Inputs) -> List[np.ndarray]:
        """The same as run()."""
    def ir(self) -> str:
        """The lowered IR the engine runs, as text."""
    def bench(self, inputs: Inputs, *, runs: int = 100, warmup: int = 10) -> BenchResult:
        """Times runs inside qlift, without Python's per-call overhead (microseconds)."""

def compile(
    model: ModelSource,
    calib: Optional[Calibration] = None,
    *,
    method: Method = "minmax",
    activations: Literal["u8", "i8"] = "u8",
    plan: Optional[Plan] = None,
    threads: int = 1,
    engine: Literal["jit", "interpreter"] = "jit",
) -> Model:
    """Compiles an ONNX model, quantized to int8 first when calibration data is given.

    ``plan`` (a TOML/JSON file's path or a dict of the same shape) sets precision, method and
    weights per node and op type, as ``qlift ... --plan``; its default section overrides
    ``method`` and ``activations``. A bad plan raises BadInputError naming the entry."""

def quantize(
    model: ModelSource,
    calib: Calibration,
    output_path: Optional[Union[str, "os.PathLike[str]"]] = None,
    *,
    method: Method = "minmax",
    activations: Literal["u8", "i8"] = "u8",
    plan: Optional[Plan] = None,
) -> Optional[bytes]:
    """Quantizes to a QDQ ONNX model: written to output_path, or returned as bytes.

    ``plan``: as for compile(); the result equals ``qlift quantize --plan`` byte for byte."""

def report(
    model: ModelSource,
    calib: Optional[Calibration],
    inputs: Inputs,
    *,
    method: Method = "minmax",
    activations: Literal["u8", "i8"] = "u8",
) -> List[LayerError]:
    """Per-layer quantization error against fp32, worst SQNR first."""

def dump(
    model: ModelSource,
    calib: Optional[Calibration] = None,
    *,
    after: Optional[str] = None,
    method: Method = "minmax",
    activations: Literal["u8", "i8"] = "u8",
    full_constants: bool = False,
) -> str:
    """The model's IR as text, as imported or after a pass ("all": after every pass)."""
