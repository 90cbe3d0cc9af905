//! Calibration data replayed through a graph: what cross-layer equalization's bias
//! absorption, bias correction and AdaRound read (per-channel ranges, layer inputs and
//! outputs), as opposed to range setting, which needs one pass of per-tensor statistics.
//! The runner is a trait so that the driver can run compiled code
//! (`qlift::quantize`), and the tests the interpreter ([`InterpReplay`]).

use crate::PassError;
use qlift_ir::{Graph, Tensor, ValueId};

/// Runs a graph over the whole calibration set, one batch at a time.
pub trait Replay {
    /// Runs `graph` on every calibration batch and calls `sink(i, tensor)` with the value
    /// `values[i]` computed for that batch (samples on axis 0), for every `i`.
    fn replay(
        &self,
        graph: &Graph,
        values: &[ValueId],
        sink: &mut dyn FnMut(usize, &Tensor),
    ) -> Result<(), PassError>;

    /// Calibration samples in all.
    fn samples(&self) -> usize;

    /// `values` over the whole calibration set, each concatenated along axis 0.
    fn collect(&self, graph: &Graph, values: &[ValueId]) -> Result<Vec<Tensor>, PassError> {
        let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); values.len()];
        self.replay(graph, values, &mut |i, t| parts[i].push(t.clone()))?;
        parts.into_iter().map(|p| concat_outer(&p)).collect()
    }
}

/// Concatenates f32 tensors along axis 0.
fn concat_outer(parts: &[Tensor]) -> Result<Tensor, PassError> {
    let first = parts
        .first()
        .ok_or_else(|| PassError::Unsupported("no calibration batch was replayed".into()))?;
    let mut shape = first.shape().to_vec();
    let mut data = Vec::new();
    let mut rows = 0;
    for p in parts {
        if p.shape().get(1..) != first.shape().get(1..) {
            return Err(PassError::Unsupported(format!(
                "calibration batches give shapes {:?} and {:?} for one value",
                first.shape(),
                p.shape()
            )));
        }
        rows += p.shape().first().copied().unwrap_or(1);
        data.extend_from_slice(p.as_f32().map_err(PassError::Bug)?);
    }
    if let Some(r) = shape.first_mut() {
        *r = rows;
    }
    Ok(Tensor::from_f32(&shape, data))
}

/// The reference interpreter over batches held in memory.
pub struct InterpReplay(pub Vec<Vec<Tensor>>);

impl Replay for InterpReplay {
    fn replay(
        &self,
        graph: &Graph,
        values: &[ValueId],
        sink: &mut dyn FnMut(usize, &Tensor),
    ) -> Result<(), PassError> {
        for batch in &self.0 {
            let trace = qlift_ir::interp::run_traced(graph, batch)?;
            for (i, v) in values.iter().enumerate() {
                let t = trace.values.get(v).ok_or_else(|| {
                    PassError::Bug(format!("value `{}` was not traced", graph.value(*v).name))
                })?;
                sink(i, t);
            }
        }
        Ok(())
    }

    fn samples(&self) -> usize {
        InterpReplay::samples_of(&self.0)
    }
}

impl InterpReplay {
    /// Samples in `batches` (axis 0 of each batch's first tensor).
    pub fn samples_of(batches: &[Vec<Tensor>]) -> usize {
        batches
            .iter()
            .map(|b| {
                b.first()
                    .map_or(0, |t| t.shape().first().copied().unwrap_or(1))
            })
            .sum()
    }
}

/// Per-channel minimum and maximum of an activation with channels on axis 1 (`[N, C, ...]`
/// or `[N, C]`).
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelRange {
    /// Least value per channel.
    pub min: Vec<f32>,
    /// Greatest value per channel.
    pub max: Vec<f32>,
}

impl ChannelRange {
    /// Widens the ranges with `t`'s values (non-finite values are skipped).
    pub fn observe(range: &mut Option<ChannelRange>, t: &Tensor) -> Result<(), PassError> {
        let data = t.as_f32().map_err(PassError::Bug)?;
        let shape = t.shape();
        let channels = shape.get(1).copied().unwrap_or(1).max(1);
        let inner: usize = shape.get(2..).map_or(1, |s| s.iter().product());
        let r = range.get_or_insert_with(|| ChannelRange {
            min: vec![f32::INFINITY; channels],
            max: vec![f32::NEG_INFINITY; channels],
        });
        if r.min.len() != channels {
            return Err(PassError::Bug(
                "channel count changed between batches".into(),
            ));
        }
        for (i, &v) in data.iter().enumerate().filter(|(_, v)| v.is_finite()) {
            let c = (i / inner.max(1)) % channels;
            r.min[c] = r.min[c].min(v);
            r.max[c] = r.max[c].max(v);
        }
        Ok(())
    }
}
