//! Streaming: a session over a model whose outputs feed its own inputs on the next call
//! (a recurrent model exported with its state as inputs and outputs: `h0`/`c0` in,
//! `hn`/`cn` out). [`Stream`] owns the state tensors, so an application calls it once per
//! chunk of input with the data inputs only.
//!
//! # Which inputs are state
//!
//! Given explicitly ([`Stream::with_pairs`], `--state IN=OUT`), or detected
//! ([`detect_state_pairs`]) by this rule: an input and an output are a pair when they have
//! the same element type and the same shape, and their names are the same stem with an
//! input marker and an output marker after it: `0`/`n` (`h0` → `hn`), `_in`/`_out`
//! (`state_in` → `state_out`), `_prev`/`_next`, `_init`/`_final`; the markers' case is
//! ignored. Each input and output is in at most one pair. A state starts as zeros (a new
//! sequence) with the batch of the first data input, and [`Stream::reset`] starts over.

use crate::{CompiledModel, Error};
use qlift_ir::{Dim, Tensor, TensorData, TensorType};

/// Input and output name endings that mark a state pair (see the module documentation).
pub const STATE_MARKERS: [(&str, &str); 4] = [
    ("0", "n"),
    ("_in", "_out"),
    ("_prev", "_next"),
    ("_init", "_final"),
];

/// One state: graph input `input` receives what graph output `output` returned last call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatePair {
    /// The graph input's index.
    pub input: usize,
    /// The graph output's index.
    pub output: usize,
}

/// The state pairs of a model with these inputs and outputs by the naming rule.
pub fn detect_state_pairs(
    inputs: &[(String, TensorType)],
    outputs: &[(String, TensorType)],
) -> Vec<StatePair> {
    let named_as_pair = |i: &str, o: &str| {
        let (i, o) = (i.to_ascii_lowercase(), o.to_ascii_lowercase());
        STATE_MARKERS.iter().any(|(mi, mo)| matches!((i.strip_suffix(mi), o.strip_suffix(mo)), (Some(a), Some(b)) if !a.is_empty() && a == b))
    };
    let mut pairs: Vec<StatePair> = Vec::new();
    for (i, (iname, ity)) in inputs.iter().enumerate() {
        let found = outputs.iter().enumerate().position(|(o, (oname, oty))| {
            oty.dtype == ity.dtype
                && oty.shape == ity.shape
                && !pairs.iter().any(|p| p.output == o)
                && named_as_pair(iname, oname)
        });
        if let Some(o) = found {
            pairs.push(StatePair {
                input: i,
                output: o,
            });
        }
    }
    pairs
}

/// A streaming session over a compiled model (see the module documentation).
pub struct Stream<'m> {
    model: &'m CompiledModel,
    pairs: Vec<StatePair>,
    /// The state by pair; empty until the first call (zeros then).
    state: Vec<Tensor>,
}

impl<'m> Stream<'m> {
    /// A session whose state pairs are detected by the naming rule; an error when there are
    /// none.
    pub fn new(model: &'m CompiledModel) -> Result<Stream<'m>, Error> {
        let pairs = detect_state_pairs(&model.inputs(), &model.outputs());
        if pairs.is_empty() {
            let names = |v: Vec<(String, TensorType)>| {
                v.into_iter().map(|(n, _)| n).collect::<Vec<_>>().join(", ")
            };
            return Err(stream_error(format!(
                "no state inputs found: no input and output of the same type are named as a pair (h0/hn, state_in/state_out, x_prev/x_next, x_init/x_final); inputs: {}; outputs: {}; name the pairs explicitly",
                names(model.inputs()),
                names(model.outputs())
            )));
        }
        Stream::with_pairs(model, &pairs)
    }

    /// A session with explicit pairs (each must join an input and an output of one type).
    pub fn with_pairs(model: &'m CompiledModel, pairs: &[StatePair]) -> Result<Stream<'m>, Error> {
        let (inputs, outputs) = (model.inputs(), model.outputs());
        for (k, p) in pairs.iter().enumerate() {
            let (Some(i), Some(o)) = (inputs.get(p.input), outputs.get(p.output)) else {
                return Err(stream_error(format!(
                    "state pair {k} names input {} and output {}, which the model does not have",
                    p.input, p.output
                )));
            };
            if i.1.dtype != o.1.dtype || i.1.shape != o.1.shape {
                return Err(stream_error(format!(
                    "input `{}` ({}) cannot take output `{}` ({}): their types differ",
                    i.0, i.1.shape, o.0, o.1.shape
                )));
            }
            if pairs[..k]
                .iter()
                .any(|q| q.input == p.input || q.output == p.output)
            {
                return Err(stream_error(format!(
                    "input `{}` or output `{}` is in two state pairs",
                    i.0, o.0
                )));
            }
        }
        if pairs.len() == inputs.len() {
            return Err(stream_error(
                "every input is state: a stream needs at least one data input".to_string(),
            ));
        }
        Ok(Stream {
            model,
            pairs: pairs.to_vec(),
            state: Vec::new(),
        })
    }

    /// Pairs named `INPUT=OUTPUT`, resolved against the model's inputs and outputs.
    pub fn pairs_by_name(
        model: &CompiledModel,
        names: &[(String, String)],
    ) -> Result<Vec<StatePair>, Error> {
        let (inputs, outputs) = (model.inputs(), model.outputs());
        let find = |list: &[(String, TensorType)], name: &str, what: &str| {
            list.iter().position(|(n, _)| n == name).ok_or_else(|| {
                stream_error(format!(
                    "the model has no {what} `{name}` ({what}s: {})",
                    list.iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        };
        names
            .iter()
            .map(|(i, o)| {
                Ok(StatePair {
                    input: find(&inputs, i, "input")?,
                    output: find(&outputs, o, "output")?,
                })
            })
            .collect()
    }

    /// The state pairs.
    pub fn pairs(&self) -> &[StatePair] {
        &self.pairs
    }

    /// Graph-input indices of the data inputs (those that are not state), in order.
    pub fn data_inputs(&self) -> Vec<usize> {
        (0..self.model.inputs().len())
            .filter(|i| !self.pairs.iter().any(|p| p.input == *i))
            .collect()
    }

    /// The current state by pair (empty before the first call and after [`Stream::reset`]).
    pub fn state(&self) -> &[Tensor] {
        &self.state
    }

    /// Forgets the state: the next call starts a new sequence.
    pub fn reset(&mut self) {
        self.state.clear();
    }

    /// Sets the state explicitly (by pair, each of its input's type).
    pub fn set_state(&mut self, state: Vec<Tensor>) -> Result<(), Error> {
        if state.len() != self.pairs.len() {
            return Err(stream_error(format!(
                "{} state tensors for {} state pairs",
                state.len(),
                self.pairs.len()
            )));
        }
        self.state = state;
        Ok(())
    }

    /// One call: `data` holds the data inputs (graph-input order, state inputs left out);
    /// returns every output, and keeps the state outputs for the next call.
    pub fn step(&mut self, data: &[Tensor]) -> Result<Vec<Tensor>, Error> {
        let data_inputs = self.data_inputs();
        if data.len() != data_inputs.len() {
            return Err(stream_error(format!(
                "{} data inputs given, the stream takes {}",
                data.len(),
                data_inputs.len()
            )));
        }
        if self.state.is_empty() {
            let batch = data
                .first()
                .and_then(|t| t.shape().first().copied())
                .unwrap_or(1);
            self.state = self.initial_state(batch)?;
        }
        let mut inputs: Vec<Tensor> = Vec::with_capacity(data.len() + self.pairs.len());
        let (mut d, types) = (data.iter(), self.model.inputs());
        for (i, (_, ty)) in types.iter().enumerate() {
            match self.pairs.iter().position(|p| p.input == i) {
                Some(k) => inputs.push(std::mem::replace(
                    &mut self.state[k],
                    Tensor::zeros(ty.dtype, &[0]),
                )),
                None => inputs.push(
                    d.next()
                        .cloned()
                        .ok_or_else(|| stream_error("a data input is missing".to_string()))?,
                ),
            }
        }
        let result = self.model.run(&inputs);
        // The state inputs go back whatever happened, so that a failed call leaves it.
        for (k, p) in self.pairs.iter().enumerate() {
            self.state[k] = std::mem::replace(
                &mut inputs[p.input],
                Tensor::zeros(types[p.input].1.dtype, &[0]),
            );
        }
        let outputs = result?;
        for (k, p) in self.pairs.iter().enumerate() {
            self.state[k] = outputs[p.output].clone();
        }
        Ok(outputs)
    }

    /// Runs whole sequences `data` chunk by chunk: each data input split along `axis` into
    /// chunks of `chunk` (the last may be shorter), one [`Stream::step`] per chunk with the
    /// state carried. Returns the last call's outputs.
    pub fn run_chunked(
        &mut self,
        data: &[Tensor],
        axis: usize,
        chunk: usize,
    ) -> Result<Vec<Tensor>, Error> {
        let chunks = chunks(data, axis, chunk)?;
        let mut last = Vec::new();
        for part in &chunks {
            last = self.step(part)?;
        }
        Ok(last)
    }

    /// The model's inputs in graph order from the data inputs (in order) and a state (by
    /// pair).
    pub fn assemble(&self, data: Vec<Tensor>, state: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        let count = self.model.inputs().len();
        if data.len() + state.len() != count || state.len() != self.pairs.len() {
            return Err(stream_error(format!(
                "{} data inputs and {} states for a model of {count} inputs and {} states",
                data.len(),
                state.len(),
                self.pairs.len()
            )));
        }
        let mut slots: Vec<Option<Tensor>> = vec![None; count];
        for (slot, t) in self.data_inputs().into_iter().zip(data) {
            slots[slot] = Some(t);
        }
        for (p, t) in self.pairs.iter().zip(state) {
            slots[p.input] = Some(t);
        }
        slots
            .into_iter()
            .map(|t| {
                t.ok_or_else(|| stream_error("an input is neither data nor state".to_string()))
            })
            .collect()
    }

    /// Zeros of every state input's type for `batch` samples: a new sequence's state.
    pub fn initial_state(&self, batch: usize) -> Result<Vec<Tensor>, Error> {
        let types = self.model.inputs();
        self.pairs
            .iter()
            .map(|p| {
                let (name, ty) = &types[p.input];
                let shape: Option<Vec<usize>> = ty.shape.dims().iter().map(|d| if *d == Dim::Batch { Some(batch) } else { d.fixed() }).collect();
                let shape = shape.ok_or_else(|| stream_error(format!("state input `{name}` {} has an extent other than the batch that is not fixed; set the state explicitly", ty.shape)))?;
                Ok(Tensor::zeros(ty.dtype, &shape))
            })
            .collect()
    }
}

/// `data` split along `axis` into chunks of `chunk` elements (the last may be shorter):
/// one list of tensors per chunk. Every tensor must have the same extent on `axis`.
pub fn chunks(data: &[Tensor], axis: usize, chunk: usize) -> Result<Vec<Vec<Tensor>>, Error> {
    if chunk == 0 {
        return Err(stream_error(
            "the chunk length must be at least 1".to_string(),
        ));
    }
    let first = data
        .first()
        .ok_or_else(|| stream_error("no data inputs".to_string()))?;
    let extent = *first.shape().get(axis).ok_or_else(|| {
        stream_error(format!(
            "axis {axis} is outside the input's shape {:?}",
            first.shape()
        ))
    })?;
    if let Some(t) = data.iter().find(|t| t.shape().get(axis) != Some(&extent)) {
        return Err(stream_error(format!(
            "the data inputs differ on axis {axis}: {:?} and {:?}",
            first.shape(),
            t.shape()
        )));
    }
    if extent == 0 {
        return Err(stream_error(format!(
            "the data inputs are empty on axis {axis}"
        )));
    }
    (0..extent)
        .step_by(chunk)
        .map(|start| {
            data.iter()
                .map(|t| slice_axis(t, axis, start, (start + chunk).min(extent)))
                .collect()
        })
        .collect()
}

/// Elements `start..end` of `t` along `axis`.
pub fn slice_axis(t: &Tensor, axis: usize, start: usize, end: usize) -> Result<Tensor, Error> {
    let shape = t.shape();
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    fn pick<T: Copy>(
        v: &[T],
        outer: usize,
        extent: usize,
        inner: usize,
        start: usize,
        end: usize,
    ) -> Vec<T> {
        (0..outer)
            .flat_map(|o| &v[(o * extent + start) * inner..(o * extent + end) * inner])
            .copied()
            .collect()
    }
    let args = (outer, shape[axis], inner, start, end);
    let data = match t.data() {
        TensorData::F32(v) => TensorData::F32(pick(v, args.0, args.1, args.2, args.3, args.4)),
        TensorData::I8(v) => TensorData::I8(pick(v, args.0, args.1, args.2, args.3, args.4)),
        TensorData::U8(v) => TensorData::U8(pick(v, args.0, args.1, args.2, args.3, args.4)),
        TensorData::I16(v) => TensorData::I16(pick(v, args.0, args.1, args.2, args.3, args.4)),
        TensorData::I32(v) => TensorData::I32(pick(v, args.0, args.1, args.2, args.3, args.4)),
        TensorData::I64(v) => TensorData::I64(pick(v, args.0, args.1, args.2, args.3, args.4)),
    };
    let mut dims = shape.to_vec();
    dims[axis] = end - start;
    Tensor::new(t.dtype(), dims, data).map_err(stream_error)
}

fn stream_error(message: String) -> Error {
    Error::Value {
        name: "stream".to_string(),
        message,
    }
}
