//! Per-op semantics, one file per op family: type inference (used by the verifier and by
//! builders) and reference evaluation (used by the interpreter).
//!
//! Evaluation favours clarity over speed: it is the oracle the rewrites and the JIT are
//! checked against, so each kernel is written the way the ONNX spec states it.

use crate::{Op, OpKind, SymInt, Tensor, TensorType};

pub(crate) mod arith;
mod broadcast;
pub(crate) mod cast;
pub mod control;
pub mod conv_transpose;
pub mod dynamic;
pub mod index;
pub(crate) mod logic;
pub(crate) mod math;
pub(crate) mod nn;
pub(crate) mod norm;
pub(crate) mod qint;
pub(crate) mod quant;
pub mod recurrent;
pub mod recurrent_q;
pub mod reduce;
pub(crate) mod resample;
pub(crate) mod select;
pub(crate) mod shape;
pub mod unary;

/// What type inference sees of a node.
pub(crate) struct InferCtx<'a> {
    pub op: &'a Op,
    /// Operand types by slot (`None` for a missing optional operand).
    pub inputs: &'a [Option<&'a TensorType>],
    /// The values of operands that are constants, by slot (may be shorter than `inputs`):
    /// shape-like operands (Reshape's shape, Slice's starts) give exact result shapes when
    /// they are known, and unknown extents (`Dim::Dyn`) when they are computed at run time.
    pub constants: &'a [Option<&'a Tensor>],
    /// What the specializer knows of integer operands computed from shapes (`Shape` of a
    /// value with symbolic dimensions), by slot (may be shorter than `inputs`).
    pub symbolic: &'a [Option<Vec<SymInt>>],
    /// The node's declared result types, when it has any (empty while building).
    pub declared: &'a [TensorType],
}

/// What evaluation sees of a node.
pub(crate) struct EvalCtx<'a> {
    pub op: &'a Op,
    /// Operand values by slot.
    pub inputs: &'a [Option<&'a Tensor>],
    /// Operand types by slot (quantization parameters of quantized operands).
    pub input_types: &'a [Option<&'a TensorType>],
    /// The node's result types (quantization parameters of quantized results).
    pub output_types: &'a [TensorType],
    /// The run's limits (what control flow may iterate), and how deep in bodies this is.
    pub options: &'a crate::interp::Options,
}

impl<'a> InferCtx<'a> {
    /// Operand `i`'s type; the verifier has already checked that required ones exist.
    pub fn input(&self, i: usize) -> Result<&'a TensorType, String> {
        self.inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| format!("operand {i} is missing"))
    }

    /// Operand `i`'s value if it is a constant.
    pub fn constant(&self, i: usize) -> Option<&'a Tensor> {
        self.constants.get(i).copied().flatten()
    }

    /// Operand `i`'s integer elements if they are known: a constant's values, or what the
    /// specializer tracked through shape arithmetic.
    pub fn ints(&self, i: usize) -> Option<Vec<SymInt>> {
        if let Some(t) = self.constant(i) {
            return t
                .to_i64_vec()
                .ok()
                .map(|v| v.into_iter().map(SymInt::Int).collect());
        }
        self.symbolic.get(i).cloned().flatten()
    }
}

impl<'a> EvalCtx<'a> {
    /// Operand `i`'s value.
    pub fn input(&self, i: usize) -> Result<&'a Tensor, String> {
        self.inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| format!("operand {i} is missing"))
    }

    /// Operand `i`'s static type.
    pub fn input_type(&self, i: usize) -> Result<&'a TensorType, String> {
        self.input_types
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| format!("operand {i} is missing"))
    }
}

/// Which file holds an op's semantics.
enum Family {
    Nn,
    Math,
    Shape,
    Quant,
    /// Integer ops with fixed-point requantization; they clamp their own results.
    QInt,
    /// Shapes and indexing with shape-like operands.
    Index,
    /// Dtype conversions.
    Cast,
    /// Dynamic and weight-only quantization.
    Dynamic,
    /// Resampling and block rearrangements.
    Resample,
    /// Element selection and placement by index.
    Select,
    /// Broadcasting arithmetic of the elementwise family beyond Add/Sub/Mul/Div.
    Arith,
    /// One-operand math functions and activations.
    Unary,
    /// Comparisons, logic and Where.
    Logic,
    /// Reductions, ArgMax/ArgMin, CumSum.
    Reduce,
    /// Normalizations, LogSoftmax, Hardmax.
    Norm,
    /// Transposed convolution.
    ConvTranspose,
    /// LSTM, GRU, RNN.
    Recurrent,
    /// If, Loop, Scan.
    Control,
}

fn family(kind: OpKind) -> Family {
    use OpKind::*;
    match kind {
        Conv | MatMul | Gemm | BatchNormalization | MaxPool | AveragePool | GlobalAveragePool
        | GlobalMaxPool | Softmax => Family::Nn,
        Relu | Clip | LeakyRelu | Sigmoid | Tanh | HardSigmoid | HardSwish | Add | Sub | Mul
        | Div => Family::Math,
        Flatten | Reshape | Transpose | Concat | Identity | Dropout | Squeeze | Unsqueeze | Pad => {
            Family::Shape
        }
        QuantizeLinear | DequantizeLinear | QLinearConv | QLinearMatMul | ConvInteger
        | MatMulInteger => Family::Quant,
        QConv | QMatMul | QAdd | QAveragePool | QGlobalAveragePool | QConcat | Requantize => {
            Family::QInt
        }
        Shape | Size | Gather | Slice | Expand | Tile | Range => Family::Index,
        Cast => Family::Cast,
        DynamicQuantizeLinear | BlockDequantizeLinear => Family::Dynamic,
        Resize | DepthToSpace | SpaceToDepth => Family::Resample,
        OneHot | GatherElements | GatherND | ScatterND | ScatterElements | Trilu | NonZero => {
            Family::Select
        }
        Pow | Mod | Min | Max | Mean | Sum | PRelu => Family::Arith,
        Sqrt | Exp | Log | Abs | Neg | Reciprocal | Floor | Ceil | Round | Erf | Sin | Cos
        | Sign | Gelu | Elu | Selu | Softplus | Mish | Softsign | ThresholdedRelu | Celu => {
            Family::Unary
        }
        Equal | Greater | GreaterOrEqual | Less | LessOrEqual | Not | And | Or | Xor | Where => {
            Family::Logic
        }
        ReduceMean | ReduceSum | ReduceMax | ReduceMin | ReduceProd | ReduceL1 | ReduceL2
        | ReduceSumSquare | ReduceLogSum | ReduceLogSumExp | ArgMax | ArgMin | CumSum => {
            Family::Reduce
        }
        LayerNormalization
        | InstanceNormalization
        | GroupNormalization
        | LpNormalization
        | LogSoftmax
        | Hardmax => Family::Norm,
        ConvTranspose => Family::ConvTranspose,
        LSTM | GRU | RNN => Family::Recurrent,
        If | Loop | Scan => Family::Control,
    }
}

/// Result types of a node.
pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    match family(cx.op.kind) {
        Family::Nn => nn::infer(cx),
        Family::Math => math::infer(cx),
        Family::Shape => shape::infer(cx),
        Family::Quant => quant::infer(cx),
        Family::QInt => qint::infer(cx),
        Family::Index => index::infer(cx),
        Family::Cast => cast::infer(cx),
        Family::Dynamic => dynamic::infer(cx),
        Family::Resample => resample::infer(cx),
        Family::Select => select::infer(cx),
        Family::Arith => arith::infer(cx),
        Family::Unary => unary::infer(cx),
        Family::Logic => logic::infer(cx),
        Family::Reduce => reduce::infer(cx),
        Family::Norm => norm::infer(cx),
        Family::ConvTranspose => conv_transpose::infer(cx),
        Family::Recurrent => recurrent::infer(cx),
        Family::Control => control::infer(cx),
    }
}

/// What the specializer can know of an integer result's elements from its operands' (see
/// [`index::symbolic`], and [`logic::symbolic`] for the guards exporters put on shapes).
pub(crate) fn symbolic(cx: &InferCtx, result: &TensorType) -> Option<Vec<SymInt>> {
    index::symbolic(cx, result).or_else(|| logic::symbolic(cx, result))
}

/// Evaluates a node on concrete operands, then its fused activation if it has one.
pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let results = match family(cx.op.kind) {
        Family::Nn => nn::eval(cx),
        Family::Math => math::eval(cx),
        Family::Shape => shape::eval(cx),
        Family::Quant => quant::eval(cx),
        // The fused activation is part of the integer clamp.
        Family::QInt => return qint::eval(cx),
        Family::Index => index::eval(cx),
        Family::Cast => cast::eval(cx),
        Family::Dynamic => dynamic::eval(cx),
        Family::Resample => resample::eval(cx),
        Family::Select => select::eval(cx),
        Family::Arith => arith::eval(cx),
        Family::Unary => unary::eval(cx),
        Family::Logic => logic::eval(cx),
        Family::Reduce => reduce::eval(cx),
        Family::Norm => norm::eval(cx),
        Family::ConvTranspose => conv_transpose::eval(cx),
        Family::Recurrent => recurrent::eval(cx),
        Family::Control => control::eval(cx),
    }?;
    match cx.op.fused_activation()? {
        None => Ok(results),
        Some((lo, hi)) => results.into_iter().map(|t| clamp(t, lo, hi)).collect(),
    }
}

/// Clamps f32 elements to `[lo, hi]` (NaN stays NaN, as Relu and Clip leave it).
fn clamp(t: Tensor, lo: f32, hi: f32) -> Result<Tensor, String> {
    let values = t
        .as_f32()?
        .iter()
        .map(|&v| if v.is_nan() { v } else { v.max(lo).min(hi) })
        .collect();
    Ok(Tensor::from_f32(t.shape(), values))
}

/// Test support: builds a one-node graph and interprets it.
#[cfg(test)]
pub(crate) mod testing {
    use crate::{Attrs, Graph, Op, OpKind, QuantParams, Shape, Tensor, TensorType, Value};

    /// Runs `kind` on graph inputs carrying `inputs` (with optional quantization parameters).
    /// `declared` is the result type for ops whose type cannot be inferred.
    pub(crate) fn run_op(
        kind: OpKind,
        attrs: Attrs,
        inputs: Vec<(Tensor, Option<QuantParams>)>,
        declared: Option<TensorType>,
    ) -> Result<Tensor, String> {
        let mut g = Graph::new("t");
        let operands: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, (t, q))| {
                let ty = TensorType {
                    dtype: t.dtype(),
                    shape: Shape::fixed(t.shape()),
                    quant: q.clone(),
                };
                Some(g.add_input(&format!("x{i}"), ty))
            })
            .collect();
        let op = Op::new(kind, attrs);
        let y = match declared {
            Some(ty) => {
                let id = g
                    .add_node(
                        "op",
                        op,
                        &operands,
                        vec![Value {
                            name: "y".into(),
                            ty,
                        }],
                    )
                    .map_err(|e| e.to_string())?;
                crate::verify(&g).map_err(|e| e.to_string())?;
                vec![crate::ValueId {
                    node: id,
                    output: 0,
                }]
            }
            None => g
                .add_op("op", op, &operands, &["y"])
                .map_err(|e| e.to_string())?,
        };
        g.set_outputs(y).map_err(|e| e.to_string())?;
        let tensors: Vec<Tensor> = inputs.into_iter().map(|(t, _)| t).collect();
        crate::interp::run(&g, &tensors)
            .map(|mut v| v.remove(0))
            .map_err(|e| e.to_string())
    }
}
