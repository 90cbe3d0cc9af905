//! Recurrent layers: LSTM, GRU and RNN, as ONNX defines them (opsets 7–22).
//!
//! Operands (ONNX's): `X`, `W`, `R`, then optional `B`, `sequence_lens`, `initial_h`,
//! `initial_c` (LSTM) and `P` (LSTM peepholes). With `layout` 0, `X` is `[seq, batch,
//! input]`, the states `[dirs, batch, hidden]` and `Y` `[seq, dirs, batch, hidden]`; with
//! `layout` 1 the batch comes first: `[batch, seq, input]`, `[batch, dirs, hidden]`,
//! `[batch, seq, dirs, hidden]`. `W` is `[dirs, gates·hidden, input]`, `R` `[dirs,
//! gates·hidden, hidden]`, `B` `[dirs, 2·gates·hidden]` (input biases, then recurrent
//! ones), `P` `[dirs, 3·hidden]`. Gates are ordered as ONNX orders them: LSTM `i, o, f, c`
//! (peepholes `i, o, f`), GRU `z, r, h`, RNN one.
//!
//! Results: `Y` (every step's hidden state; zero past a sample's `sequence_lens`), `Y_h`
//! (the last hidden state) and, for LSTM, `Y_c` (the last cell state). The IR node always
//! has all of them; the importer leaves the unused ones without readers.
//!
//! Canonical attributes (the importer fills in ONNX's defaults): `direction`
//! (`forward`, `reverse`, `bidirectional`), `hidden_size`, `layout`, `clip` (`inf` for
//! none: gate pre-activations are clamped to `[-clip, clip]`), `activations` (a
//! comma-separated list with every direction's functions, `f,g,h` per direction for LSTM,
//! `f,g` for GRU, `f` for RNN), `activation_alpha` and `activation_beta` (one per
//! activation, 0 where it takes none), plus `input_forget` (LSTM: the forget gate is `1 − i`)
//! and `linear_before_reset` (GRU).
//!
//! Evaluation follows the spec's equations in f64, one sample and one direction at a time,
//! the states rounded to f32 after every step (they are f32 values in ONNX).

use super::{EvalCtx, InferCtx};
use crate::{Attrs, DType, Dim, OpKind, Shape, Tensor, TensorData, TensorType};

/// Which cell a recurrent op runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    /// Long short-term memory: gates `i, o, f, c`, a cell state.
    Lstm,
    /// Gated recurrent unit: gates `z, r, h`.
    Gru,
    /// Plain recurrence: one gate.
    Rnn,
}

impl Cell {
    /// The cell of a recurrent op kind.
    pub fn of(kind: OpKind) -> Option<Cell> {
        match kind {
            OpKind::LSTM => Some(Cell::Lstm),
            OpKind::GRU => Some(Cell::Gru),
            OpKind::RNN => Some(Cell::Rnn),
            _ => None,
        }
    }

    /// Gate blocks in `W`, `R` and each half of `B`.
    pub fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru => 3,
            Cell::Rnn => 1,
        }
    }

    /// Activation functions per direction.
    pub fn activations(self) -> usize {
        match self {
            Cell::Lstm => 3,
            Cell::Gru => 2,
            Cell::Rnn => 1,
        }
    }

    /// ONNX's default activations of one direction.
    pub fn default_activations(self) -> &'static [&'static str] {
        match self {
            Cell::Lstm => &["Sigmoid", "Tanh", "Tanh"],
            Cell::Gru => &["Sigmoid", "Tanh"],
            Cell::Rnn => &["Tanh"],
        }
    }

    /// Results of the op (`Y`, `Y_h`, and `Y_c` for LSTM).
    pub fn results(self) -> usize {
        if self == Cell::Lstm {
            3
        } else {
            2
        }
    }
}

/// An activation function a recurrent op applies, with its parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `tanh x`.
    Tanh,
    /// `max(x, 0)`.
    Relu,
    /// `clamp(alpha·x + beta, 0, 1)`.
    HardSigmoid(f32, f32),
    /// `alpha·x + beta`.
    Affine(f32, f32),
    /// `x < 0 ? alpha·x : x`.
    LeakyRelu(f32),
    /// `x > alpha ? x : 0`.
    ThresholdedRelu(f32),
    /// `alpha·tanh(beta·x)`.
    ScaledTanh(f32, f32),
    /// `x < 0 ? alpha·(e^x − 1) : x`.
    Elu(f32),
    /// `x / (1 + |x|)`.
    Softsign,
    /// `ln(1 + e^x)`.
    Softplus,
}

/// The activation names the spec allows, with the defaults of `(alpha, beta)` (those of the
/// ONNX operators of the same name; ONNX Runtime's for Affine and ScaledTanh), and whether
/// each takes an alpha and a beta from `activation_alpha`/`activation_beta`.
pub const ACTIVATIONS: [(&str, f32, f32, bool, bool); 11] = [
    ("Sigmoid", 0.0, 0.0, false, false),
    ("Tanh", 0.0, 0.0, false, false),
    ("Relu", 0.0, 0.0, false, false),
    ("HardSigmoid", 0.2, 0.5, true, true),
    ("Affine", 1.0, 0.0, true, true),
    ("LeakyRelu", 0.01, 0.0, true, false),
    ("ThresholdedRelu", 1.0, 0.0, true, false),
    ("ScaledTanh", 1.0, 1.0, true, true),
    ("Elu", 1.0, 0.0, true, false),
    ("Softsign", 0.0, 0.0, false, false),
    ("Softplus", 0.0, 0.0, false, false),
];

impl Activation {
    /// The activation called `name` (ONNX's spelling, case-insensitive) with parameters
    /// `alpha` and `beta`.
    pub fn new(name: &str, alpha: f32, beta: f32) -> Result<Activation, String> {
        let canonical = ACTIVATIONS
            .iter()
            .find(|a| a.0.eq_ignore_ascii_case(name))
            .map(|a| a.0);
        Ok(match canonical {
            Some("Sigmoid") => Activation::Sigmoid,
            Some("Tanh") => Activation::Tanh,
            Some("Relu") => Activation::Relu,
            Some("HardSigmoid") => Activation::HardSigmoid(alpha, beta),
            Some("Affine") => Activation::Affine(alpha, beta),
            Some("LeakyRelu") => Activation::LeakyRelu(alpha),
            Some("ThresholdedRelu") => Activation::ThresholdedRelu(alpha),
            Some("ScaledTanh") => Activation::ScaledTanh(alpha, beta),
            Some("Elu") => Activation::Elu(alpha),
            Some("Softsign") => Activation::Softsign,
            Some("Softplus") => Activation::Softplus,
            _ => {
                return Err(format!(
                    "activation `{name}` is not one recurrent layers allow"
                ))
            }
        })
    }

    /// The function at `x`.
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Activation::Sigmoid => {
                if x >= 0.0 {
                    1.0 / (1.0 + (-x).exp())
                } else {
                    let e = x.exp();
                    e / (1.0 + e)
                }
            }
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.max(0.0),
            Activation::HardSigmoid(a, b) => (a as f64 * x + b as f64).clamp(0.0, 1.0),
            Activation::Affine(a, b) => a as f64 * x + b as f64,
            Activation::LeakyRelu(a) => {
                if x < 0.0 {
                    a as f64 * x
                } else {
                    x
                }
            }
            Activation::ThresholdedRelu(a) => {
                if x > a as f64 {
                    x
                } else {
                    0.0
                }
            }
            Activation::ScaledTanh(a, b) => a as f64 * (b as f64 * x).tanh(),
            Activation::Elu(a) => {
                if x < 0.0 {
                    a as f64 * x.exp_m1()
                } else {
                    x
                }
            }
            Activation::Softsign => x / (1.0 + x.abs()),
            Activation::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
        }
    }
}

/// A recurrent op's checked attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct Recurrent {
    /// The cell.
    pub cell: Cell,
    /// Hidden units.
    pub hidden: usize,
    /// Directions run: `[forward]`, `[reverse]` or `[forward, reverse]` (`true` = reverse).
    pub reverse: Vec<bool>,
    /// Whether the batch comes first (`layout` 1).
    pub batch_first: bool,
    /// The clamp of gate pre-activations, if any.
    pub clip: Option<f32>,
    /// The activations of each direction (`Cell::activations` each).
    pub activations: Vec<Vec<Activation>>,
    /// LSTM: the forget gate is `1 − i`.
    pub input_forget: bool,
    /// GRU: the recurrent product of the hidden gate before the reset gate.
    pub linear_before_reset: bool,
}

impl Recurrent {
    /// The attributes of a recurrent op, checked.
    pub fn of(kind: OpKind, attrs: &Attrs) -> Result<Recurrent, String> {
        let cell = Cell::of(kind).ok_or_else(|| format!("{kind} is not a recurrent op"))?;
        let reverse = match attrs.str("direction")? {
            "forward" => vec![false],
            "reverse" => vec![true],
            "bidirectional" => vec![false, true],
            d => {
                return Err(format!(
                    "direction `{d}` is not forward, reverse or bidirectional"
                ))
            }
        };
        let hidden = usize::try_from(attrs.int("hidden_size")?)
            .ok()
            .filter(|&h| h > 0)
            .ok_or("hidden_size must be positive")?;
        let batch_first = match attrs.int("layout")? {
            0 => false,
            1 => true,
            l => return Err(format!("layout {l} is not 0 or 1")),
        };
        let clip = attrs.float("clip")?;
        if clip.is_nan() || clip <= 0.0 {
            return Err(format!("clip {clip} must be positive (inf for none)"));
        }
        let clip = clip.is_finite().then_some(clip);
        let names: Vec<&str> = attrs
            .str("activations")?
            .split(',')
            .map(str::trim)
            .collect();
        let (alphas, betas) = (
            attrs.floats("activation_alpha")?,
            attrs.floats("activation_beta")?,
        );
        let per = cell.activations();
        if names.len() != per * reverse.len()
            || alphas.len() != names.len()
            || betas.len() != names.len()
        {
            return Err(format!(
                "{} activations with {} alphas and {} betas, {} directions need {} of each",
                names.len(),
                alphas.len(),
                betas.len(),
                reverse.len(),
                per * reverse.len()
            ));
        }
        let all = names
            .iter()
            .zip(alphas.iter().zip(betas))
            .map(|(n, (&a, &b))| Activation::new(n, a, b))
            .collect::<Result<Vec<_>, _>>()?;
        let activations = all.chunks(per).map(<[Activation]>::to_vec).collect();
        let flag = |name: &str| -> Result<bool, String> {
            match attrs.int(name)? {
                0 => Ok(false),
                1 => Ok(true),
                v => Err(format!("{name} {v} is not 0 or 1")),
            }
        };
        let input_forget = if cell == Cell::Lstm {
            flag("input_forget")?
        } else {
            false
        };
        let linear_before_reset = if cell == Cell::Gru {
            flag("linear_before_reset")?
        } else {
            false
        };
        Ok(Recurrent {
            cell,
            hidden,
            reverse,
            batch_first,
            clip,
            activations,
            input_forget,
            linear_before_reset,
        })
    }

    /// Directions run.
    pub fn dirs(&self) -> usize {
        self.reverse.len()
    }

    /// Rows of `W` and `R` per direction.
    pub fn rows(&self) -> usize {
        self.cell.gates() * self.hidden
    }

    /// The shape of a state (`initial_h`, `Y_h`) for `batch` samples.
    pub(crate) fn state_shape(&self, batch: Dim) -> Vec<Dim> {
        let (d, h) = (Dim::Fixed(self.dirs()), Dim::Fixed(self.hidden));
        if self.batch_first {
            vec![batch, d, h]
        } else {
            vec![d, batch, h]
        }
    }

    /// `Y`'s shape for `seq` steps of `batch` samples.
    pub(crate) fn y_shape(&self, seq: Dim, batch: Dim) -> Vec<Dim> {
        let (d, h) = (Dim::Fixed(self.dirs()), Dim::Fixed(self.hidden));
        if self.batch_first {
            vec![batch, seq, d, h]
        } else {
            vec![seq, d, batch, h]
        }
    }

    /// The operand shapes the attributes and an input of `input` features require, by
    /// slot (`X` itself is not checked here): `W`, `R`, `B`, `sequence_lens`, `initial_h`,
    /// `initial_c`, `P`.
    pub(crate) fn operand_shapes(&self, input: usize, batch: Dim) -> Vec<Vec<Dim>> {
        let (d, rows, h) = (
            Dim::Fixed(self.dirs()),
            Dim::Fixed(self.rows()),
            Dim::Fixed(self.hidden),
        );
        vec![
            vec![d, rows, Dim::Fixed(input)],
            vec![d, rows, h],
            vec![d, Dim::Fixed(2 * self.rows())],
            vec![batch],
            self.state_shape(batch),
            self.state_shape(batch),
            vec![d, Dim::Fixed(3 * self.hidden)],
        ]
    }
}

/// The names of the operands by slot (for messages).
const OPERANDS: [&str; 8] = [
    "X",
    "W",
    "R",
    "B",
    "sequence_lens",
    "initial_h",
    "initial_c",
    "P",
];

/// Whether two static extents may be equal (unknown ones may).
fn may_equal(a: Dim, b: Dim) -> bool {
    a == b || a.is_unbound() || b.is_unbound()
}

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    let r = Recurrent::of(cx.op.kind, &cx.op.attrs)?;
    let x = cx.input(0)?;
    // The integer form (8-bit X, int8 W and R) checks those three itself.
    let quantized = cx.input(1)?.dtype != DType::F32;
    if quantized {
        super::recurrent_q::check_types(&r, &cx.op.attrs, x, cx.input(1)?, cx.input(2)?)?;
    } else if x.dtype != DType::F32 || x.quant.is_some() {
        return Err(format!(
            "X must be f32, found {}",
            crate::text::type_to_string(x)
        ));
    }
    let xd = x.shape.dims();
    if xd.len() != 3 {
        return Err(format!("X {} must have rank 3", x.shape));
    }
    let (seq, batch, input) = if r.batch_first {
        (xd[1], xd[0], xd[2])
    } else {
        (xd[0], xd[1], xd[2])
    };
    let input = input
        .fixed()
        .ok_or_else(|| format!("X {} must have a known input size (axis 2)", x.shape))?;
    if input == 0 {
        return Err("X has no input features".to_string());
    }
    if r.cell != Cell::Lstm && cx.inputs.len() > 6 {
        return Err(format!("{} takes at most 6 operands", cx.op.kind));
    }
    let want = r.operand_shapes(input, batch);
    for (slot, shape) in want.iter().enumerate() {
        let slot = slot + 1;
        let Some(t) = cx.inputs.get(slot).copied().flatten() else {
            continue;
        };
        let dims = t.shape.dims();
        let same_shape =
            dims.len() == shape.len() && dims.iter().zip(shape).all(|(&a, &b)| may_equal(a, b));
        if quantized && slot <= 2 {
            if !same_shape {
                return Err(format!(
                    "{} must have shape {}, found {}",
                    OPERANDS[slot],
                    Shape(shape.clone()),
                    crate::text::type_to_string(t)
                ));
            }
            continue;
        }
        let dtype = if slot == 4 { DType::I32 } else { DType::F32 };
        let fits = t.dtype == dtype && t.quant.is_none() && same_shape;
        if !fits {
            let expected = Shape(shape.clone());
            return Err(format!(
                "{} must be {dtype}{expected}, found {}",
                OPERANDS[slot],
                crate::text::type_to_string(t)
            ));
        }
    }
    let state = TensorType::new(DType::F32, Shape(r.state_shape(batch)));
    let mut out = vec![
        TensorType::new(DType::F32, Shape(r.y_shape(seq, batch))),
        state.clone(),
    ];
    if r.cell == Cell::Lstm {
        out.push(state);
    }
    Ok(out)
}

/// Element offsets of the pieces of one sample and direction, in the layouts of both
/// `layout`s: where `X`'s step `t` of sample `b` starts, and where `Y`'s and a state's
/// `H`-element rows for direction `d` are.
#[derive(Clone, Copy, Debug)]
pub struct Strides {
    /// Steps.
    pub seq: usize,
    /// Samples.
    pub batch: usize,
    /// Input features.
    pub input: usize,
    /// Hidden units.
    pub hidden: usize,
    /// Directions.
    pub dirs: usize,
    /// `layout` 1.
    pub batch_first: bool,
}

impl Strides {
    /// Offset of `X[t, b, 0]` (layout 0) or `X[b, t, 0]` (layout 1).
    pub fn x(&self, t: usize, b: usize) -> usize {
        if self.batch_first {
            (b * self.seq + t) * self.input
        } else {
            (t * self.batch + b) * self.input
        }
    }

    /// Offset of `Y[t, d, b, 0]` (layout 0) or `Y[b, t, d, 0]` (layout 1).
    pub fn y(&self, t: usize, d: usize, b: usize) -> usize {
        if self.batch_first {
            ((b * self.seq + t) * self.dirs + d) * self.hidden
        } else {
            ((t * self.dirs + d) * self.batch + b) * self.hidden
        }
    }

    /// Offset of a state's `[d, b, 0]` (layout 0) or `[b, d, 0]` (layout 1).
    pub fn state(&self, d: usize, b: usize) -> usize {
        if self.batch_first {
            (b * self.dirs + d) * self.hidden
        } else {
            (d * self.batch + b) * self.hidden
        }
    }
}

/// Checks one sample's `sequence_lens` entry against the sequence length.
pub fn check_length(len: i64, seq: usize) -> Result<usize, String> {
    usize::try_from(len)
        .ok()
        .filter(|&l| l <= seq)
        .ok_or_else(|| format!("sequence_lens holds {len}, outside 0..={seq}"))
}

/// A recurrent op's operands, checked against its attributes and `X`'s shape, with the
/// float ones copied out (both forms, float and integer, read them the same way).
pub(crate) struct Operands<'a> {
    /// Steps, samples and input features of `X`.
    pub seq: usize,
    pub batch: usize,
    pub input: usize,
    /// `X`, `W` and `R` as they are (f32, or 8-bit in the integer form).
    pub x: &'a Tensor,
    pub w: &'a Tensor,
    pub r: &'a Tensor,
    /// `B`, `sequence_lens`, `initial_h`, `initial_c`, `P` when given.
    pub bias: Option<Vec<f32>>,
    pub lens: Option<Vec<i64>>,
    pub h0: Option<Vec<f32>>,
    pub c0: Option<Vec<f32>>,
    pub peep: Option<Vec<f32>>,
}

impl<'a> Operands<'a> {
    pub(crate) fn of(cx: &EvalCtx<'a>, r: &Recurrent) -> Result<Operands<'a>, String> {
        let x = cx.input(0)?;
        let xs = x.shape();
        if xs.len() != 3 {
            return Err(format!("X {xs:?} must have rank 3"));
        }
        let (seq, batch, input) = if r.batch_first {
            (xs[1], xs[0], xs[2])
        } else {
            (xs[0], xs[1], xs[2])
        };
        let want = r.operand_shapes(input, Dim::Fixed(batch));
        let operand = |slot: usize| -> Result<Option<&'a Tensor>, String> {
            let Some(t) = cx.inputs.get(slot).copied().flatten() else {
                return Ok(None);
            };
            let shape: Vec<usize> = want[slot - 1].iter().map(|d| d.resolve(batch)).collect();
            if t.shape() != shape.as_slice() {
                return Err(format!(
                    "{} has shape {:?}, expected {shape:?}",
                    OPERANDS[slot],
                    t.shape()
                ));
            }
            Ok(Some(t))
        };
        let f32s = |t: Option<&Tensor>| -> Result<Option<Vec<f32>>, String> {
            t.map(|t| t.as_f32().map(<[f32]>::to_vec)).transpose()
        };
        let lstm = r.cell == Cell::Lstm;
        Ok(Operands {
            seq,
            batch,
            input,
            x,
            w: operand(1)?.ok_or("W is missing")?,
            r: operand(2)?.ok_or("R is missing")?,
            bias: f32s(operand(3)?)?,
            lens: operand(4)?.map(Tensor::to_i64_vec).transpose()?,
            h0: f32s(operand(5)?)?,
            c0: if lstm { f32s(operand(6)?)? } else { None },
            peep: if lstm { f32s(operand(7)?)? } else { None },
        })
    }

    /// The strides of `X`, `Y` and the states.
    pub(crate) fn strides(&self, r: &Recurrent) -> Strides {
        Strides {
            seq: self.seq,
            batch: self.batch,
            input: self.input,
            hidden: r.hidden,
            dirs: r.dirs(),
            batch_first: r.batch_first,
        }
    }

    /// Sample `b`'s length.
    pub(crate) fn length(&self, b: usize) -> Result<usize, String> {
        match &self.lens {
            Some(l) => check_length(l[b], self.seq),
            None => Ok(self.seq),
        }
    }

    /// The results `Y`, `Y_h` (and `Y_c` for LSTM) from their elements.
    pub(crate) fn results(
        &self,
        r: &Recurrent,
        y: Vec<f32>,
        yh: Vec<f32>,
        yc: Vec<f32>,
    ) -> Result<Vec<Tensor>, String> {
        let (dseq, dbatch) = (Dim::Fixed(self.seq), Dim::Fixed(self.batch));
        let shape =
            |dims: Vec<Dim>| -> Vec<usize> { dims.iter().map(|d| d.resolve(self.batch)).collect() };
        let mut out = vec![
            Tensor::new(
                DType::F32,
                shape(r.y_shape(dseq, dbatch)),
                TensorData::F32(y),
            )?,
            Tensor::new(
                DType::F32,
                shape(r.state_shape(dbatch)),
                TensorData::F32(yh),
            )?,
        ];
        if r.cell == Cell::Lstm {
            out.push(Tensor::new(
                DType::F32,
                shape(r.state_shape(dbatch)),
                TensorData::F32(yc),
            )?);
        }
        Ok(out)
    }
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let r = Recurrent::of(cx.op.kind, &cx.op.attrs)?;
    let ops = Operands::of(cx, &r)?;
    if ops.w.dtype() != DType::F32 {
        return super::recurrent_q::eval(cx, &r, &ops);
    }
    let (seq, batch, input) = (ops.seq, ops.batch, ops.input);
    let xv = ops.x.as_f32()?;
    let (w, rw) = (ops.w.as_f32()?, ops.r.as_f32()?);
    let (bias, h0, c0, peep) = (&ops.bias, &ops.h0, &ops.c0, &ops.peep);
    let (dirs, hidden, rows) = (r.dirs(), r.hidden, r.rows());
    let st = ops.strides(&r);
    let state_len = dirs * batch * hidden;
    let mut y = vec![0f32; seq * state_len];
    let mut yh = vec![0f32; state_len];
    let mut yc = vec![0f32; state_len];
    let clip = |v: f64| r.clip.map_or(v, |c| v.clamp(-(c as f64), c as f64));
    for (d, &reverse) in r.reverse.iter().enumerate() {
        let acts = &r.activations[d];
        let wd = &w[d * rows * input..(d + 1) * rows * input];
        let rd = &rw[d * rows * hidden..(d + 1) * rows * hidden];
        let (wb, rb): (Vec<f64>, Vec<f64>) = match &bias {
            Some(b) => {
                let b = &b[d * 2 * rows..(d + 1) * 2 * rows];
                (
                    b[..rows].iter().map(|&v| v as f64).collect(),
                    b[rows..].iter().map(|&v| v as f64).collect(),
                )
            }
            None => (vec![0.0; rows], vec![0.0; rows]),
        };
        let p: Vec<f64> = peep.as_ref().map_or(vec![0.0; 3 * hidden], |p| {
            p[d * 3 * hidden..(d + 1) * 3 * hidden]
                .iter()
                .map(|&v| v as f64)
                .collect()
        });
        for b in 0..batch {
            let len = ops.length(b)?;
            let s0 = st.state(d, b);
            let mut h: Vec<f32> = h0
                .as_ref()
                .map_or(vec![0.0; hidden], |v| v[s0..s0 + hidden].to_vec());
            let mut c: Vec<f32> = c0
                .as_ref()
                .map_or(vec![0.0; hidden], |v| v[s0..s0 + hidden].to_vec());
            for step in 0..len {
                let t = if reverse { len - 1 - step } else { step };
                let xt = &xv[st.x(t, b)..st.x(t, b) + input];
                // gx = W·x + Wb, gh = R·h + Rb, row by row.
                let dot = |m: &[f32], row: usize, n: usize, v: &[f32]| -> f64 {
                    m[row * n..(row + 1) * n]
                        .iter()
                        .zip(v)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum()
                };
                let gx: Vec<f64> = (0..rows).map(|j| dot(wd, j, input, xt) + wb[j]).collect();
                let mut gh: Vec<f64> = (0..rows).map(|j| dot(rd, j, hidden, &h) + rb[j]).collect();
                match r.cell {
                    Cell::Lstm => {
                        let (f, g, hf) = (acts[0], acts[1], acts[2]);
                        for k in 0..hidden {
                            let pre = |gate: usize| gx[gate * hidden + k] + gh[gate * hidden + k];
                            let cp = c[k] as f64;
                            let i = f.apply(clip(pre(0) + p[k] * cp));
                            let fg = if r.input_forget {
                                1.0 - i
                            } else {
                                f.apply(clip(pre(2) + p[2 * hidden + k] * cp))
                            };
                            let cand = g.apply(clip(pre(3)));
                            let cn = fg * cp + i * cand;
                            let cn32 = cn as f32;
                            let o = f.apply(clip(pre(1) + p[hidden + k] * cn32 as f64));
                            c[k] = cn32;
                            h[k] = (o * hf.apply(cn32 as f64)) as f32;
                        }
                    }
                    Cell::Gru => {
                        let (f, g) = (acts[0], acts[1]);
                        let z: Vec<f64> =
                            (0..hidden).map(|k| f.apply(clip(gx[k] + gh[k]))).collect();
                        let rg: Vec<f64> = (0..hidden)
                            .map(|k| f.apply(clip(gx[hidden + k] + gh[hidden + k])))
                            .collect();
                        if !r.linear_before_reset {
                            let rh: Vec<f32> =
                                (0..hidden).map(|k| (rg[k] * h[k] as f64) as f32).collect();
                            for k in 0..hidden {
                                gh[2 * hidden + k] =
                                    dot(rd, 2 * hidden + k, hidden, &rh) + rb[2 * hidden + k];
                            }
                        }
                        for k in 0..hidden {
                            let hx = gx[2 * hidden + k];
                            let pre = if r.linear_before_reset {
                                hx + rg[k] * gh[2 * hidden + k]
                            } else {
                                hx + gh[2 * hidden + k]
                            };
                            let cand = g.apply(clip(pre));
                            h[k] = ((1.0 - z[k]) * cand + z[k] * h[k] as f64) as f32;
                        }
                    }
                    Cell::Rnn => {
                        for k in 0..hidden {
                            h[k] = acts[0].apply(clip(gx[k] + gh[k])) as f32;
                        }
                    }
                }
                let at = st.y(t, d, b);
                y[at..at + hidden].copy_from_slice(&h);
            }
            yh[s0..s0 + hidden].copy_from_slice(&h);
            yc[s0..s0 + hidden].copy_from_slice(&c);
        }
    }
    ops.results(&r, y, yh, yc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AttrValue, Graph, Op};

    fn attrs(direction: &str, hidden: i64, acts: &[&str]) -> Attrs {
        Attrs::new()
            .with("direction", AttrValue::Str(direction.into()))
            .with("hidden_size", AttrValue::Int(hidden))
            .with("layout", AttrValue::Int(0))
            .with("clip", AttrValue::Float(f32::INFINITY))
            .with("activations", AttrValue::Str(acts.join(",")))
            .with("activation_alpha", AttrValue::Floats(vec![0.0; acts.len()]))
            .with("activation_beta", AttrValue::Floats(vec![0.0; acts.len()]))
    }

    fn run(kind: OpKind, attrs: Attrs, inputs: Vec<Option<Tensor>>) -> Vec<Tensor> {
        let mut g = Graph::new("t");
        let operands: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.as_ref().map(|t| {
                    g.add_input(
                        &format!("x{i}"),
                        TensorType::new(t.dtype(), Shape::fixed(t.shape())),
                    )
                })
            })
            .collect();
        let outs = g
            .add_op(
                "op",
                Op::new(kind, attrs),
                &operands,
                &["y", "yh", "yc"][..Cell::of(kind).unwrap().results()],
            )
            .unwrap();
        g.set_outputs(outs).unwrap();
        crate::verify(&g).unwrap();
        let given: Vec<Tensor> = inputs.into_iter().flatten().collect();
        crate::interp::run(&g, &given).unwrap()
    }

    #[test]
    fn rnn_relu_accumulates() {
        // h_t = relu(x_t + h_{t-1}): a running sum of positive inputs.
        let x = Tensor::from_f32(&[3, 1, 1], vec![1., 2., 3.]);
        let w = Tensor::from_f32(&[1, 1, 1], vec![1.]);
        let r = Tensor::from_f32(&[1, 1, 1], vec![1.]);
        let out = run(
            OpKind::RNN,
            attrs("forward", 1, &["Relu"]),
            vec![Some(x.clone()), Some(w.clone()), Some(r.clone())],
        );
        assert_eq!(out[0].as_f32().unwrap(), &[1., 3., 6.]);
        assert_eq!(out[1].as_f32().unwrap(), &[6.]);
        let out = run(
            OpKind::RNN,
            attrs("bidirectional", 1, &["Relu", "Relu"]),
            vec![
                Some(x),
                Some(Tensor::from_f32(&[2, 1, 1], vec![1., 1.])),
                Some(Tensor::from_f32(&[2, 1, 1], vec![1., 1.])),
            ],
        );
        // Y is [seq, dirs, batch, hidden]: forward 1, 3, 6; reverse 6, 5, 3.
        assert_eq!(out[0].as_f32().unwrap(), &[1., 6., 3., 5., 6., 3.]);
        assert_eq!(out[1].as_f32().unwrap(), &[6., 6.]);
    }

    #[test]
    fn lengths_stop_the_recurrence() {
        let x = Tensor::from_f32(&[3, 2, 1], vec![1., 10., 2., 20., 3., 30.]);
        let w = Tensor::from_f32(&[1, 1, 1], vec![1.]);
        let r = Tensor::from_f32(&[1, 1, 1], vec![1.]);
        let lens = Tensor::new(DType::I32, vec![2], TensorData::I32(vec![3, 1])).unwrap();
        let out = run(
            OpKind::RNN,
            attrs("forward", 1, &["Relu"]),
            vec![Some(x), Some(w), Some(r), None, Some(lens)],
        );
        assert_eq!(out[0].as_f32().unwrap(), &[1., 10., 3., 0., 6., 0.]);
        assert_eq!(out[1].as_f32().unwrap(), &[6., 10.]);
    }

    #[test]
    fn bad_attributes_are_errors() {
        let mut a = attrs("sideways", 1, &["Tanh"]);
        assert!(Recurrent::of(OpKind::RNN, &a)
            .unwrap_err()
            .contains("sideways"));
        a = attrs("forward", 1, &["Swish"]);
        assert!(Recurrent::of(OpKind::RNN, &a)
            .unwrap_err()
            .contains("Swish"));
        a = attrs("forward", 1, &["Tanh", "Tanh"]);
        assert!(Recurrent::of(OpKind::RNN, &a).is_err());
    }
}
