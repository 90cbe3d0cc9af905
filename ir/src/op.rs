//! The op registry: every op the IR knows, with its arity and canonical attributes as data.

use crate::Attrs;
use std::fmt;
use std::str::FromStr;

/// The kind of attribute a schema expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttrKind {
    Int,
    Float,
    Ints,
    Floats,
    Str,
    /// An integer list that may be absent (the op then takes it as an operand).
    OptInts,
    /// A graph (a control-flow op's body).
    Graph,
    /// A float that may be absent (the integer form of a recurrent layer carries one).
    OptFloat,
}

/// What the verifier knows about an op before looking at types: how many operands
/// (optional trailing ones may be missing), how many results, which attributes the
/// canonical form must carry.
pub(crate) struct Schema {
    pub min_inputs: usize,
    /// `usize::MAX` for variadic ops.
    pub max_inputs: usize,
    /// `usize::MAX` for ops whose results their bodies decide (If, Loop, Scan).
    pub outputs: usize,
    pub attrs: &'static [(&'static str, AttrKind)],
}

macro_rules! ops {
    ($( $(#[$doc:meta])* $kind:ident : $min:literal ..= $max:tt -> $outs:tt { $($attr:literal : $ak:ident),* } ),* $(,)?) => {
        /// Every operation the IR can express. Names match the ONNX op types they come
        /// from; the canonical attributes are listed in the registry (`op.rs`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum OpKind { $( $(#[$doc])* $kind ),* }

        impl OpKind {
            /// Every op kind, in declaration order.
            pub const ALL: &'static [OpKind] = &[$(OpKind::$kind),*];

            /// The op's name in the text format (the ONNX op type).
            pub fn name(self) -> &'static str {
                match self { $(OpKind::$kind => stringify!($kind)),* }
            }

            pub(crate) fn schema(self) -> Schema {
                match self {
                    $(OpKind::$kind => Schema {
                        min_inputs: $min,
                        max_inputs: ops!(@max $max),
                        outputs: ops!(@max $outs),
                        attrs: &[$(($attr, AttrKind::$ak)),*],
                    }),*
                }
            }
        }
    };
    (@max *) => { usize::MAX };
    (@max $n:literal) => { $n };
}

ops! {
    /// N-d convolution (NCHW), explicit pads, grouped and depthwise included.
    Conv: 2..=3 -> 1 { "dilations": Ints, "group": Int, "kernel_shape": Ints, "pads": Ints, "strides": Ints },
    /// Integer convolution with zero points, exact i32 output (ONNX ConvInteger).
    ConvInteger: 2..=4 -> 1 { "dilations": Ints, "group": Int, "kernel_shape": Ints, "pads": Ints, "strides": Ints },
    /// Quantized convolution: operands and result carry quantization parameters, bias is i32.
    QLinearConv: 2..=3 -> 1 { "dilations": Ints, "group": Int, "kernel_shape": Ints, "pads": Ints, "strides": Ints },
    /// Numpy-style batched matrix product.
    MatMul: 2..=2 -> 1 {},
    /// Integer matrix product with zero points, exact i32 output.
    MatMulInteger: 2..=4 -> 1 {},
    /// Quantized matrix product: operands and result carry quantization parameters.
    QLinearMatMul: 2..=2 -> 1 {},
    /// `alpha * A' * B' + beta * C`.
    Gemm: 2..=3 -> 1 { "alpha": Float, "beta": Float, "transA": Int, "transB": Int },
    /// Inference-mode batch normalization over axis 1.
    BatchNormalization: 5..=5 -> 1 { "epsilon": Float },
    /// `max(x, 0)`.
    Relu: 1..=1 -> 1 {},
    /// Clamp to `[min, max]` (infinite when absent in ONNX).
    Clip: 1..=1 -> 1 { "max": Float, "min": Float },
    /// `x < 0 ? alpha * x : x`.
    LeakyRelu: 1..=1 -> 1 { "alpha": Float },
    /// Logistic sigmoid.
    Sigmoid: 1..=1 -> 1 {},
    /// Hyperbolic tangent.
    Tanh: 1..=1 -> 1 {},
    /// `clamp(alpha * x + beta, 0, 1)`.
    HardSigmoid: 1..=1 -> 1 { "alpha": Float, "beta": Float },
    /// `x * clamp(x / 6 + 1/2, 0, 1)`.
    HardSwish: 1..=1 -> 1 {},
    /// Broadcasting addition.
    Add: 2..=2 -> 1 {},
    /// Broadcasting subtraction.
    Sub: 2..=2 -> 1 {},
    /// Broadcasting multiplication.
    Mul: 2..=2 -> 1 {},
    /// Broadcasting division (integer division truncates).
    Div: 2..=2 -> 1 {},
    // The elementwise family (ops/arith.rs, ops/unary.rs, ops/logic.rs): numpy broadcasting
    // wherever there are several operands; integers wrap in their dtype as numpy's do.
    /// `x ^ y`: the exponent may have another numeric dtype; the result has the base's
    /// (an integer base with a float exponent is computed in f64 and truncated).
    Pow: 2..=2 -> 1 {},
    /// Square root (NaN below 0).
    Sqrt: 1..=1 -> 1 {},
    /// `e ^ x`.
    Exp: 1..=1 -> 1 {},
    /// Natural logarithm (NaN below 0, -inf at 0).
    Log: 1..=1 -> 1 {},
    /// Absolute value (an integer's minimum wraps to itself).
    Abs: 1..=1 -> 1 {},
    /// Negation (integers wrap).
    Neg: 1..=1 -> 1 {},
    /// `1 / x`.
    Reciprocal: 1..=1 -> 1 {},
    /// Rounding down.
    Floor: 1..=1 -> 1 {},
    /// Rounding up.
    Ceil: 1..=1 -> 1 {},
    /// Rounding to the nearest integer, halves to even.
    Round: 1..=1 -> 1 {},
    /// The error function.
    Erf: 1..=1 -> 1 {},
    /// Sine.
    Sin: 1..=1 -> 1 {},
    /// Cosine.
    Cos: 1..=1 -> 1 {},
    /// Minimum of any number of operands (NaN if any is NaN).
    Min: 1..=* -> 1 {},
    /// Maximum of any number of operands (NaN if any is NaN).
    Max: 1..=* -> 1 {},
    /// Mean of any number of operands (summed in operand order, then divided).
    Mean: 1..=* -> 1 {},
    /// Sum of any number of operands, in operand order.
    Sum: 1..=* -> 1 {},
    /// Remainder: with `fmod` 1 it has the dividend's sign (C's `fmod`), with 0 the
    /// divisor's (Python's `%`).
    Mod: 2..=2 -> 1 { "fmod": Int },
    /// -1, 0 or 1 by the sign (NaN stays NaN).
    Sign: 1..=1 -> 1 {},
    /// `a == b`, a bool result.
    Equal: 2..=2 -> 1 {},
    /// `a > b`, a bool result (false when either is NaN, as every ordered comparison).
    Greater: 2..=2 -> 1 {},
    /// `a >= b`, a bool result.
    GreaterOrEqual: 2..=2 -> 1 {},
    /// `a < b`, a bool result.
    Less: 2..=2 -> 1 {},
    /// `a <= b`, a bool result.
    LessOrEqual: 2..=2 -> 1 {},
    /// Logical negation of a bool.
    Not: 1..=1 -> 1 {},
    /// Logical and of bools.
    And: 2..=2 -> 1 {},
    /// Logical or of bools.
    Or: 2..=2 -> 1 {},
    /// Logical exclusive or of bools.
    Xor: 2..=2 -> 1 {},
    /// `condition ? x : y`, broadcasting all three; `x` and `y` of any one dtype.
    Where: 3..=3 -> 1 {},
    /// Gaussian error linear unit `x · Φ(x)`: exact with `approximate` "none", through
    /// `tanh` with "tanh".
    Gelu: 1..=1 -> 1 { "approximate": Str },
    /// `x < 0 ? slope · x : x`, the slope broadcast onto `x`.
    PRelu: 2..=2 -> 1 {},
    /// `x < 0 ? alpha · (e^x - 1) : x`.
    Elu: 1..=1 -> 1 { "alpha": Float },
    /// `gamma · (x <= 0 ? alpha · (e^x - 1) : x)`.
    Selu: 1..=1 -> 1 { "alpha": Float, "gamma": Float },
    /// `ln(1 + e^x)`.
    Softplus: 1..=1 -> 1 {},
    /// `x · tanh(softplus(x))`.
    Mish: 1..=1 -> 1 {},
    /// `x / (1 + |x|)`.
    Softsign: 1..=1 -> 1 {},
    /// `x > alpha ? x : 0`.
    ThresholdedRelu: 1..=1 -> 1 { "alpha": Float },
    /// `max(0, x) + min(0, alpha · (e^(x / alpha) - 1))`.
    Celu: 1..=1 -> 1 { "alpha": Float },
    /// Max pooling.
    MaxPool: 1..=1 -> 1 { "ceil_mode": Int, "dilations": Ints, "kernel_shape": Ints, "pads": Ints, "strides": Ints },
    /// Average pooling.
    AveragePool: 1..=1 -> 1 { "ceil_mode": Int, "count_include_pad": Int, "dilations": Ints, "kernel_shape": Ints, "pads": Ints, "strides": Ints },
    /// Mean over all spatial dimensions.
    GlobalAveragePool: 1..=1 -> 1 {},
    /// Max over all spatial dimensions.
    GlobalMaxPool: 1..=1 -> 1 {},
    /// Collapse to 2-d around `axis`.
    Flatten: 1..=1 -> 1 { "axis": Int },
    /// Reshape to the ONNX shape spec in `shape` (0 copies, -1 infers unless `allowzero`),
    /// or in operand 1 when the spec is computed at run time (then `shape` is absent).
    Reshape: 1..=2 -> 1 { "allowzero": Int, "shape": OptInts },
    /// Permute dimensions.
    Transpose: 1..=1 -> 1 { "perm": Ints },
    /// Join along `axis`.
    Concat: 1..=* -> 1 { "axis": Int },
    /// Softmax along `axis`.
    Softmax: 1..=1 -> 1 { "axis": Int },
    /// The input, unchanged.
    Identity: 1..=1 -> 1 {},
    /// Inference-mode dropout: the input, unchanged.
    Dropout: 1..=1 -> 1 {},
    /// Remove the size-1 dimensions listed in `axes`.
    Squeeze: 1..=1 -> 1 { "axes": Ints },
    /// Insert size-1 dimensions at `axes` (positions in the output).
    Unsqueeze: 1..=1 -> 1 { "axes": Ints },
    /// Padding: `pads` as ONNX orders them (all begins, then all ends; negative ones crop),
    /// or in operand 1 when they are computed at run time (then `pads` is absent). `mode`
    /// is `constant` (fill `value`), `reflect`, `edge` or `wrap`.
    Pad: 1..=2 -> 1 { "mode": Str, "pads": OptInts, "value": Float },
    /// The input's shape (axes `start..end`) as an i64 vector.
    Shape: 1..=1 -> 1 { "end": Int, "start": Int },
    /// The input's element count as an i64 scalar.
    Size: 1..=1 -> 1 {},
    /// Entries of the data along `axis` picked by integer indices (negative ones count from
    /// the end).
    Gather: 2..=2 -> 1 { "axis": Int },
    /// ONNX Slice: data, starts, ends, then optional axes and steps, all as operands.
    Slice: 3..=5 -> 1 {},
    /// Broadcast of the input to the shape in operand 1 (numpy rules, both ways).
    Expand: 2..=2 -> 1 {},
    /// Repetition of the input `repeats[a]` times along each axis `a`.
    Tile: 2..=2 -> 1 {},
    /// `start, start + delta, ...` up to `limit` (exclusive), from three scalar operands.
    Range: 3..=3 -> 1 {},
    /// Conversion to dtype `to` (float to integer truncates toward zero and saturates).
    Cast: 1..=1 -> 1 { "to": Str },
    // Resampling, padding and indexing (ir/src/ops/resample.rs, select.rs).
    /// ONNX Resize: operands X, then optional roi, scales and sizes (exactly one of the
    /// last two), which list values for the axes in `axes` (all axes when ONNX omits it).
    /// Upsample imports as Resize.
    Resize: 1..=4 -> 1 {
        "antialias": Int, "axes": Ints, "coordinate_transformation_mode": Str, "cubic_coeff_a": Float,
        "exclude_outside": Int, "extrapolation_value": Float, "keep_aspect_ratio_policy": Str, "mode": Str,
        "nearest_mode": Str
    },
    /// Channel blocks moved into spatial blocks of `blocksize`² (`mode` DCR or CRD).
    DepthToSpace: 1..=1 -> 1 { "blocksize": Int, "mode": Str },
    /// Spatial blocks of `blocksize`² moved into channels (`mode` DCR or CRD: the inverse of
    /// DepthToSpace's).
    SpaceToDepth: 1..=1 -> 1 { "blocksize": Int, "mode": Str },
    /// One-hot encoding of operand 0 (indices) with `depth` (operand 1) values along result
    /// axis `axis`, `[off, on]` from operand 2.
    OneHot: 3..=3 -> 1 { "axis": Int },
    /// Elements of the data picked along `axis` by indices of the data's rank.
    GatherElements: 2..=2 -> 1 { "axis": Int },
    /// Slices of the data picked by index tuples (the indices' last axis), after
    /// `batch_dims` leading dimensions the two share.
    GatherND: 2..=2 -> 1 { "batch_dims": Int },
    /// The data with slices at index tuples replaced by, or combined (`reduction` none, add,
    /// mul, max, min) with, the updates.
    ScatterND: 3..=3 -> 1 { "reduction": Str },
    /// The data with elements at indices along `axis` replaced by, or combined with, the
    /// updates.
    ScatterElements: 3..=3 -> 1 { "axis": Int, "reduction": Str },
    /// The upper (`upper` = 1) or lower triangle of the last two axes, from diagonal `k`
    /// (optional operand 1); the rest is 0.
    Trilu: 1..=2 -> 1 { "upper": Int },
    /// The positions of the non-zero elements, as an i64 `[rank, count]`.
    NonZero: 1..=1 -> 1 {},
    /// Integer convolution with fixed-point requantization (`fixed_point`): 8-bit input per
    /// tensor, 8-bit weights per tensor or per output channel, optional i32 bias, declared
    /// 8-bit result. What DequantizeLinear → Conv → QuantizeLinear lowers to.
    QConv: 2..=3 -> 1 { "dilations": Ints, "group": Int, "kernel_shape": Ints, "pads": Ints, "strides": Ints },
    /// Integer matrix product `A · B` (+ i32 bias per column) with fixed-point
    /// requantization; B per tensor or per column. What quantized Gemm and MatMul lower to.
    QMatMul: 2..=3 -> 1 {},
    /// Broadcasting addition of two quantized values, both rescaled and rounded once.
    QAdd: 2..=2 -> 1 {},
    /// Average pooling of a quantized value: integer window sums, fixed-point division.
    QAveragePool: 1..=1 -> 1 { "ceil_mode": Int, "count_include_pad": Int, "dilations": Ints, "kernel_shape": Ints, "pads": Ints, "strides": Ints },
    /// Spatial mean of a quantized value.
    QGlobalAveragePool: 1..=1 -> 1 {},
    /// Concatenation of quantized values, each rescaled to the result's parameters.
    QConcat: 1..=* -> 1 { "axis": Int },
    /// A quantized value re-expressed in the declared result's parameters (what
    /// DequantizeLinear → QuantizeLinear folds to); may carry a fused activation.
    Requantize: 1..=1 -> 1 {},
    /// f32 (or i32) to the quantized type and parameters declared on the result.
    QuantizeLinear: 1..=1 -> 1 {},
    /// A quantized value (parameters on its type) back to f32.
    DequantizeLinear: 1..=1 -> 1 {},
    // Dynamic and weight-only quantization (`ops/dynamic.rs`): the parameters are computed
    // per call or carried as operands, not on types.
    /// ONNX DynamicQuantizeLinear: f32 to asymmetric u8 with a scale and zero point computed
    /// from this call's range (0 included); results `y` (u8), `y_scale` (f32 scalar),
    /// `y_zero_point` (u8 scalar).
    DynamicQuantizeLinear: 1..=1 -> 3 {},
    /// Symmetric 8- or 4-bit values to f32, `scale · q`, with one scale (operand 1) per block
    /// of `block_size` consecutive elements along `axis` (ONNX opset 21 DequantizeLinear with
    /// `block_size`): the weights of a weight-only MatMul or Gemm.
    BlockDequantizeLinear: 2..=2 -> 1 { "axis": Int, "block_size": Int },
    // Reductions, normalizations and NN ops (`ops/reduce.rs`, `ops/norm.rs`,
    // `ops/conv_transpose.rs`). A reduction reduces the axes in `axes` (normalized and
    // sorted by the importer; empty reduces nothing), or, when that attribute is absent, the
    // axes in operand 1 computed at run time (ONNX's form: empty means every axis unless
    // `noop_with_empty_axes`).
    /// Mean over the reduced axes.
    ReduceMean: 1..=2 -> 1 { "axes": OptInts, "keepdims": Int, "noop_with_empty_axes": Int },
    /// Sum over the reduced axes.
    ReduceSum: 1..=2 -> 1 { "axes": OptInts, "keepdims": Int, "noop_with_empty_axes": Int },
    /// Maximum over the reduced axes.
    ReduceMax: 1..=2 -> 1 { "axes": OptInts, "keepdims": Int, "noop_with_empty_axes": Int },
    /// Minimum over the reduced axes.
    ReduceMin: 1..=2 -> 1 { "axes": OptInts, "keepdims": Int, "noop_with_empty_axes": Int },
    /// Product over the reduced axes.
    ReduceProd: 1..=2 -> 1 { "axes": OptInts, "keepdims": Int, "noop_with_empty_axes": Int },
    /// Sum of absolute values over the reduced axes.
    ReduceL1: 1..=2 -> 1 { "axes": OptInts, "keepdims": Int, "noop_with_empty_axes": Int },
    /// Euclidean norm over the reduced axes.
    ReduceL2: 1..=2 -> 1 { "axes": OptInts, "keepdims": Int, "noop_with_empty_axes": Int },
    /// Sum of squares over the reduced axes.
    ReduceSumSquare: 1..=2 -> 1 { "axes": OptInts, "keepdims": Int, "noop_with_empty_axes": Int },
    /// Natural logarithm of the sum over the reduced axes.
    ReduceLogSum: 1..=2 -> 1 { "axes": OptInts, "keepdims": Int, "noop_with_empty_axes": Int },
    /// `log Σ exp` over the reduced axes (computed without overflow).
    ReduceLogSumExp: 1..=2 -> 1 { "axes": OptInts, "keepdims": Int, "noop_with_empty_axes": Int },
    /// Position (i64) of the maximum along `axis`: the first, or the last with `select_last_index`.
    ArgMax: 1..=1 -> 1 { "axis": Int, "keepdims": Int, "select_last_index": Int },
    /// Position (i64) of the minimum along `axis`: the first, or the last with `select_last_index`.
    ArgMin: 1..=1 -> 1 { "axis": Int, "keepdims": Int, "select_last_index": Int },
    /// Running sum along `axis` (ONNX's operand, a constant here), leaving each element out
    /// with `exclusive`, from the end with `reverse`.
    CumSum: 1..=1 -> 1 { "axis": Int, "exclusive": Int, "reverse": Int },
    /// Normalization of everything from `axis` on to zero mean and unit variance, then
    /// scale and optional bias (broadcast onto the input). Only ONNX's first result.
    LayerNormalization: 2..=3 -> 1 { "axis": Int, "epsilon": Float },
    /// Per-sample, per-channel normalization over the spatial axes, then per-channel scale
    /// and bias.
    InstanceNormalization: 3..=3 -> 1 { "epsilon": Float },
    /// Per-sample normalization over groups of `C / num_groups` channels, then per-channel
    /// scale and bias (opset 21's form; the importer expands opset 18's per-group ones).
    GroupNormalization: 3..=3 -> 1 { "epsilon": Float, "num_groups": Int },
    /// Division by the L1 or L2 norm (`p`) along `axis` (a zero norm gives zeros).
    LpNormalization: 1..=1 -> 1 { "axis": Int, "p": Int },
    /// `x − log Σ exp x` along `axis`.
    LogSoftmax: 1..=1 -> 1 { "axis": Int },
    /// 1 at the first maximum along `axis`, 0 elsewhere.
    Hardmax: 1..=1 -> 1 { "axis": Int },
    /// Transposed convolution; `pads` are signed and include ONNX's `output_padding` and
    /// `output_shape` (see `ops/conv_transpose.rs`).
    ConvTranspose: 2..=3 -> 1 { "dilations": Ints, "group": Int, "kernel_shape": Ints, "pads": Ints, "strides": Ints },
    // Recurrent layers (`ops/recurrent.rs`): ONNX's operands and results, every result
    // always computed; activations with their parameters spelled out per direction. The
    // integer form (int8 `W` and `R`, `ops/recurrent_q.rs`) adds `state_scale`.
    /// Long short-term memory: results `Y`, `Y_h`, `Y_c`.
    LSTM: 3..=8 -> 3 {
        "activation_alpha": Floats, "activation_beta": Floats, "activations": Str, "clip": Float, "direction": Str,
        "hidden_size": Int, "input_forget": Int, "layout": Int, "state_scale": OptFloat
    },
    /// Gated recurrent unit: results `Y`, `Y_h`.
    GRU: 3..=6 -> 2 {
        "activation_alpha": Floats, "activation_beta": Floats, "activations": Str, "clip": Float, "direction": Str,
        "hidden_size": Int, "layout": Int, "linear_before_reset": Int, "state_scale": OptFloat
    },
    /// Plain recurrent layer: results `Y`, `Y_h`.
    RNN: 3..=6 -> 2 {
        "activation_alpha": Floats, "activation_beta": Floats, "activations": Str, "clip": Float, "direction": Str,
        "hidden_size": Int, "layout": Int, "state_scale": OptFloat
    },
    // Control flow (`ops/control.rs`): the bodies are graph attributes, self-contained; the
    // values a body reads from the enclosing graph are trailing operands of the node
    // (`captures` of them for Loop and Scan, all after the condition for If) and trailing
    // inputs of the body, in the same order. The results are the bodies' (any number).
    /// `cond ? then_branch(captures) : else_branch(captures)`; operands: the condition (a
    /// bool of one element), then the captured values both branches take as inputs.
    If: 1..=* -> * { "else_branch": Graph, "then_branch": Graph },
    /// ONNX Loop: operands `M` (i64 trip count, optional), `cond` (bool, optional; both
    /// slots are always there, `_` when absent), the
    /// initial loop-carried values, then `captures` captured values. The body maps
    /// `(iteration, cond, carried..., captures...)` to `(cond, carried..., scan outputs...)`;
    /// results: the final carried values, then each scan output stacked on a new axis 0.
    Loop: 0..=* -> * { "body": Graph, "captures": Int },
    /// ONNX Scan (opset 9's form): operands: initial state values, `num_scan_inputs`
    /// sequences scanned along `scan_input_axes` (backwards where `scan_input_directions`
    /// is 1), then `captures` captured values. The body maps `(state..., slices...,
    /// captures...)` to `(state..., outputs...)`; results: the final state, then the
    /// outputs stacked along `scan_output_axes` (in reverse where `scan_output_directions`
    /// is 1).
    Scan: 1..=* -> * {
        "body": Graph, "captures": Int, "num_scan_inputs": Int, "scan_input_axes": Ints, "scan_input_directions": Ints,
        "scan_output_axes": Ints, "scan_output_directions": Ints
    },
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OpKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        OpKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown op `{s}`"))
    }
}

/// An operation applied by a node: its kind and canonical attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    /// Which operation.
    pub kind: OpKind,
    /// Its attributes in canonical form.
    pub attrs: Attrs,
}

impl Op {
    /// An op with the given attributes.
    pub fn new(kind: OpKind, attrs: Attrs) -> Op {
        Op { kind, attrs }
    }

    /// Checks the attributes against the registry: each canonical attribute present with
    /// the right kind, and no unknown ones (a fused activation only where the op takes one).
    pub(crate) fn check_attrs(&self) -> Result<(), String> {
        let fused = self.fused_activation()?;
        if fused.is_some() && !self.kind.takes_fused_activation() {
            return Err(format!("{} cannot carry a fused activation", self.kind));
        }
        let schema = self.kind.schema();
        for (name, kind) in schema.attrs {
            let ok = match kind {
                AttrKind::Int => self.attrs.int(name).map(|_| ()),
                AttrKind::Float => self.attrs.float(name).map(|_| ()),
                AttrKind::Ints => self.attrs.ints(name).map(|_| ()),
                AttrKind::Floats => self.attrs.floats(name).map(|_| ()),
                AttrKind::Str => self.attrs.str(name).map(|_| ()),
                AttrKind::OptInts if self.attrs.get(name).is_none() => Ok(()),
                AttrKind::OptInts => self.attrs.ints(name).map(|_| ()),
                AttrKind::Graph => self.attrs.graph(name).map(|_| ()),
                AttrKind::OptFloat if self.attrs.get(name).is_none() => Ok(()),
                AttrKind::OptFloat => self.attrs.float(name).map(|_| ()),
            };
            ok?;
        }
        let known =
            |k: &str| schema.attrs.iter().any(|(n, _)| *n == k) || FUSED_ACTIVATION.contains(&k);
        if let Some(extra) = self.attrs.0.keys().find(|k| !known(k)) {
            return Err(format!("unexpected attribute `{extra}`"));
        }
        Ok(())
    }
}

/// The optional attributes of a fused activation: the op's result is clamped to
/// `[act_min, act_max]` (Relu is `[0, inf]`, Relu6 `[0, 6]`). Rewrites attach Relu and Clip
/// to their producer this way so that quantization can fold the clamp into the output range.
pub const FUSED_ACTIVATION: [&str; 2] = ["act_min", "act_max"];

impl OpKind {
    /// How many results the op has (LSTM 3, GRU and RNN 2, every other op 1; `usize::MAX`
    /// for control flow, whose bodies decide: see [`OpKind::has_subgraphs`]).
    pub fn results(self) -> usize {
        self.schema().outputs
    }

    /// Whether the op holds graphs in its attributes (If, Loop, Scan).
    pub fn has_subgraphs(self) -> bool {
        matches!(self, OpKind::If | OpKind::Loop | OpKind::Scan)
    }

    /// The operand slots whose values (not only types) decide the op's extents or indexing:
    /// code generation compiles them as constants, so a graph where one is computed at run
    /// time must be specialized further (see `specialize_for`). Shapes that only decide the
    /// result type (Reshape's, Expand's) are not among them: the result type carries them.
    pub fn constant_operands(self) -> &'static [usize] {
        match self {
            OpKind::Slice => &[1, 2, 3, 4],
            OpKind::Tile => &[1],
            OpKind::Range => &[0, 1, 2],
            OpKind::Pad => &[1],
            OpKind::Resize => &[1, 2, 3],
            OpKind::OneHot => &[1],
            k if crate::ops::reduce::is_reduction(k) => &[1],
            _ => &[],
        }
    }

    /// Whether the op can carry a fused activation (see [`FUSED_ACTIVATION`]).
    pub fn takes_fused_activation(self) -> bool {
        matches!(
            self,
            OpKind::Conv
                | OpKind::Gemm
                | OpKind::MatMul
                | OpKind::Add
                | OpKind::QConv
                | OpKind::QMatMul
                | OpKind::QAdd
                | OpKind::Requantize
        )
    }
}

impl OpKind {
    /// Whether the op is qlift's own (an integer op with fixed-point requantization) rather
    /// than an ONNX op: such ops come from lowering, never from a model file.
    pub fn is_internal(self) -> bool {
        use OpKind::*;
        matches!(
            self,
            QConv | QMatMul | QAdd | QAveragePool | QGlobalAveragePool | QConcat | Requantize
        )
    }

    /// Whether the op's result type is declared rather than inferred: its quantization
    /// parameters are a choice (QuantizeLinear's, an integer op's output), not a
    /// consequence of the operands.
    pub fn declares_result_type(self) -> bool {
        use OpKind::*;
        matches!(
            self,
            QuantizeLinear
                | QLinearConv
                | QLinearMatMul
                | QConv
                | QMatMul
                | QAdd
                | QAveragePool
                | QGlobalAveragePool
                | QConcat
                | Requantize
        )
    }
}

impl Op {
    /// The fused activation's clamp range, if the op carries one (both bounds or none).
    pub fn fused_activation(&self) -> Result<Option<(f32, f32)>, String> {
        match (self.attrs.get("act_min"), self.attrs.get("act_max")) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => {
                let (lo, hi) = (self.attrs.float("act_min")?, self.attrs.float("act_max")?);
                if lo.is_nan() || hi.is_nan() || lo > hi {
                    return Err(format!("fused activation range [{lo}, {hi}] is empty"));
                }
                Ok(Some((lo, hi)))
            }
            _ => Err("a fused activation needs both act_min and act_max".to_string()),
        }
    }
}
