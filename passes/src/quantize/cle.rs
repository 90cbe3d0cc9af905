//! Cross-layer equalization (CLE) and bias absorption: Nagel et al. 2019, "Data-Free
//! Quantization Through Weight Equalization and Bias Correction", §4.1 and §4.1.1 (§5.2 of
//! the 2021 white paper). Runs on the float graph after BatchNorm folding and activation
//! fusion, before Q/DQ insertion, as the pass `equalize`.
//!
//! # Equalization
//! For two products in a row, `y = W2 · f(W1 x + b1) + b2`, with `f` positive homogeneous
//! (`f(x/s) = f(x)/s` for `s > 0`: Relu, or no activation), scaling output channel `i` of the
//! first layer by `1/s_i` and input channel `i` of the second by `s_i` leaves `y` unchanged
//! (paper eq. 4–6). With `r1_i` the range (max |w|) of output channel `i` of `W1` and `r2_i`
//! that of input channel `i` of `W2`, `s_i = sqrt(r1_i / r2_i)` gives both the range
//! `sqrt(r1_i · r2_i)` (eq. 10–11), which maximizes the product of the channels' relative
//! precisions: what per-tensor weight quantization needs when a depthwise layer's channels
//! differ by orders of magnitude. Chains (`W1 → W2 → W3`) are swept pair by pair until no
//! scale moves by more than [`CONVERGED`] (the paper iterates likewise).
//!
//! Pairs are found through ops that commute with a positive per-channel scale: MaxPool,
//! AveragePool, GlobalAveragePool and a Flatten before a Gemm (input features
//! `c·inner .. (c+1)·inner` of the Gemm are channel `c`). Depthwise and grouped Convs pair
//! like any other (`Layer::in_channel`). A layer whose result has other users (a residual
//! branch), or whose weights are shared, is not scaled: the other users would see the scale.
//!
//! # Relu6 (and any clip with a finite upper bound)
//! `clip(x/s, 0, 6) = clip(x, 0, 6·s)/s`: scaling moves the bound per channel, which a fused
//! clamp (one scalar bound) cannot express. The paper replaces ReLU6 by ReLU before CLE,
//! which changes the float model wherever an activation exceeds 6. qlift does that only when
//! replayed calibration data shows the clip never active on any channel (max < the bound):
//! then the float model is unchanged on the calibration data and, by that evidence, on its
//! distribution. A pair whose clip is reached stays unscaled (and is counted).
//!
//! # Bias absorption
//! Equalization can scale a channel's bias up with its weights. For `f` = Relu and a channel
//! whose pre-activation is at least `c_i ≥ 0` on all data, `f(h − c) = f(h) − c`, so `c_i`
//! moves from `b1` into the next layer's bias: `b2 += W2 · c` (eq. 12–13). The paper takes
//! `c = max(0, β − 3γ)` from the BatchNorm statistics (a bound holding for 99.87% of a normal
//! pre-activation); BatchNorm is folded by now, so qlift takes `c_i = max(0, min h_i)` from
//! the replayed calibration data instead: exact on every calibration sample. A Conv with
//! padding as the second layer would read the padding's zeros, not `−c`, at the borders, so
//! absorption happens only into Gemm/MatMul and unpadded Convs, through unpadded pools.

use crate::quantize::bias_correction::ChannelMaps;
use crate::quantize::layer::{float_layer, Layer};
use crate::quantize::replay::{ChannelRange, Replay};
use crate::PassError;
use qlift_ir::{AttrValue, Graph, NodeId, NodeOp, OpKind, Tensor, ValueId};
use std::collections::HashMap;
use std::sync::Arc;

/// Sweeps stop when the largest change of any scale, `|ln s|`, is below this.
pub const CONVERGED: f32 = 1e-4;
/// At most this many sweeps over a chain (real chains converge in a handful).
pub const MAX_SWEEPS: usize = 100;

/// The pass's name in the pipeline and in dumps.
pub const PASS: &str = "equalize";
/// What the pass does, for `--help`.
pub const ABOUT: &str =
    "(only with --calib and --cle) cross-layer equalization of consecutive Conv/Gemm weights, bias absorption";

/// What equalization did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CleSummary {
    /// Pairs equalized.
    pub pairs: usize,
    /// Sweeps until the scales converged.
    pub sweeps: usize,
    /// Pairs whose Relu6 (never reached on the calibration data) became Relu.
    pub relu6_as_relu: usize,
    /// Pairs left alone because their clip bound is reached (or there was no data to tell).
    pub clipped: usize,
    /// Channels whose bias was absorbed into the next layer.
    pub absorbed_channels: usize,
    /// What happened to each scaled value, by name: divided by a scale, then shifted down
    /// by the absorbed bias, per channel (analytic bias correction maps BatchNorm
    /// statistics through it).
    pub maps: ChannelMaps,
}

/// A pair of products that can be equalized.
struct Pair {
    first: Layer,
    second: Layer,
    /// The first layer's result (its channels are the pair's).
    link: ValueId,
    /// Input features of the second layer per channel of the first (after a Flatten).
    inner: usize,
    /// The first layer's fused clip has a finite upper bound.
    bounded: bool,
    /// Bias absorption keeps the float model exact on the data here.
    absorbable: bool,
}

/// Equalizes every pair of products in `g` and (with `absorb`) absorbs the biases, with
/// per-channel ranges from `replay` (needed for Relu6 pairs and for absorption; without it
/// only unclipped pairs are equalized and nothing is absorbed).
pub fn equalize(
    g: &Graph,
    replay: Option<&dyn Replay>,
    absorb: bool,
) -> Result<(Graph, CleSummary), PassError> {
    let mut out = g.clone();
    let mut summary = CleSummary::default();
    let mut pairs = find_pairs(g)?;
    let ranges = match replay {
        Some(r) if !pairs.is_empty() => channel_ranges(g, r, &pairs)?,
        _ => HashMap::new(),
    };
    pairs.retain(|p| {
        if !p.bounded {
            return true;
        }
        let (_, hi) = fused_clip(g, p.first.node);
        let never_clipped = ranges
            .get(&p.link)
            .is_some_and(|r| r.max.iter().all(|&m| m < hi));
        if never_clipped {
            summary.relu6_as_relu += 1;
        } else {
            summary.clipped += 1;
        }
        never_clipped
    });
    if pairs.is_empty() {
        return Ok((out, summary));
    }
    let mut weights = Weights::default();
    // Cumulative scale of each pair's channels (the first layer's outputs were divided by it).
    let mut total: Vec<Vec<f32>> = pairs.iter().map(|p| vec![1.0; p.first.rows]).collect();
    for sweep in 1..=MAX_SWEEPS {
        summary.sweeps = sweep;
        let mut moved = 0f32;
        for (p, total) in pairs.iter().zip(&mut total) {
            let s = scales(&mut weights, &out, p)?;
            for (t, &s) in total.iter_mut().zip(&s) {
                *t *= s;
                moved = moved.max(s.ln().abs());
            }
            apply_scales(&mut weights, &out, p, &s)?;
        }
        if moved < CONVERGED {
            break;
        }
    }
    summary.pairs = pairs.len();
    for p in pairs.iter().filter(|p| p.bounded) {
        set_clip(&mut out, p.first.node, f32::INFINITY)?;
    }
    for (p, total) in pairs.iter().zip(&total) {
        let zero = vec![0.0; total.len()];
        summary
            .maps
            .insert(g.value(p.link).name.clone(), (total.clone(), zero));
    }
    if absorb {
        for (p, total) in pairs.iter().zip(&total) {
            let Some(range) = ranges.get(&p.link).filter(|_| p.absorbable) else {
                continue;
            };
            let c: Vec<f32> = range
                .min
                .iter()
                .zip(total)
                .map(|(&m, &s)| (m / s).max(0.0))
                .collect();
            summary.absorbed_channels += c.iter().filter(|&&c| c > 0.0).count();
            absorb_bias(&mut weights, &mut out, p, &c)?;
            if let Some(map) = summary.maps.get_mut(&g.value(p.link).name) {
                map.1 = c;
            }
        }
    }
    weights.write_back(&mut out)?;
    Ok((out, summary))
}

/// The fused clamp of a product (`(-inf, inf)` without one).
fn fused_clip(g: &Graph, node: NodeId) -> (f32, f32) {
    match &g.node(node).op {
        NodeOp::Apply(op) => op
            .fused_activation()
            .ok()
            .flatten()
            .unwrap_or((f32::NEG_INFINITY, f32::INFINITY)),
        NodeOp::Const(_) | NodeOp::Input => (f32::NEG_INFINITY, f32::INFINITY),
    }
}

fn set_clip(g: &mut Graph, node: NodeId, hi: f32) -> Result<(), PassError> {
    match &mut g.node_mut(node).op {
        NodeOp::Apply(op) => {
            op.attrs.set("act_max", AttrValue::Float(hi));
            Ok(())
        }
        _ => Err(PassError::Bug("a clip on a non-op".into())),
    }
}

/// Every equalizable pair, in topological order of the first layer.
fn find_pairs(g: &Graph) -> Result<Vec<Pair>, PassError> {
    let mut pairs = Vec::new();
    for id in g.topo_order()? {
        let Some(first) = product(g, id) else {
            continue;
        };
        let (lo, hi) = fused_clip(g, id);
        if !(lo == 0.0 || lo == f32::NEG_INFINITY) || hi <= 0.0 {
            continue;
        }
        let link = ValueId {
            node: id,
            output: 0,
        };
        let (mut v, mut inner, mut absorbable) = (link, 1usize, lo == 0.0);
        let second = loop {
            if g.outputs().contains(&v) {
                break None;
            }
            let [(user, 0)] = g.users(v)[..] else {
                break None;
            };
            if let Some(second) = product(g, user) {
                break Some(second);
            }
            let NodeOp::Apply(op) = &g.node(user).op else {
                break None;
            };
            let padded = op
                .attrs
                .ints("pads")
                .is_ok_and(|p| p.iter().any(|&p| p != 0));
            match op.kind {
                OpKind::MaxPool | OpKind::GlobalAveragePool => {}
                OpKind::AveragePool => absorbable &= !padded,
                OpKind::Flatten if op.attrs.int("axis") == Ok(1) => {
                    let dims = g.value_type(v).shape.dims().to_vec();
                    let Some(rest) = dims
                        .get(2..)
                        .and_then(|d| d.iter().map(|d| d.fixed()).product::<Option<usize>>())
                    else {
                        break None;
                    };
                    inner *= rest;
                }
                _ => break None,
            }
            v = ValueId {
                node: user,
                output: 0,
            };
        };
        let Some(second) = second else { continue };
        if second.in_channels != first.rows * inner
            || (inner > 1 && second.conv.is_some())
            || second.weights == first.weights
        {
            continue;
        }
        absorbable &= second.conv.as_ref().is_none_or(|c| !c.padded())
            && bias(g, second.node, second.rows).is_some();
        pairs.push(Pair {
            first,
            second,
            link,
            inner,
            bounded: hi.is_finite(),
            absorbable,
        });
    }
    Ok(pairs)
}

/// The layer of a Conv/Gemm/MatMul with constant f32 weights read by nothing else, with a
/// bias CLE can scale.
fn product(g: &Graph, id: NodeId) -> Option<Layer> {
    let NodeOp::Apply(op) = &g.node(id).op else {
        return None;
    };
    if !matches!(op.kind, OpKind::Conv | OpKind::Gemm) || g.node(id).outputs.len() != 1 {
        return None;
    }
    let (layer, _) = float_layer(g, id)?;
    (g.users(layer.weights).len() == 1 && bias(g, id, layer.rows).is_some()).then_some(layer)
}

/// The bias operand of product `node`: `Some(None)` without one, `Some(Some(v))` for a
/// constant with one value per output channel read by nothing else, `None` otherwise (a
/// broadcast bias, a Gemm with beta ≠ 1), which CLE leaves alone.
fn bias(g: &Graph, node: NodeId, rows: usize) -> Option<Option<ValueId>> {
    let NodeOp::Apply(op) = &g.node(node).op else {
        return None;
    };
    if op.kind == OpKind::Gemm && op.attrs.float("beta").ok()? != 1.0 {
        return None;
    }
    match g.node_inputs(node).get(2).copied().flatten() {
        None => Some(None),
        Some(b) => {
            let t = g.const_value(b)?;
            (t.len() == rows && t.as_f32().is_ok() && g.users(b).len() == 1).then_some(Some(b))
        }
    }
}

/// Per-channel ranges of every pair's link value over the calibration data.
fn channel_ranges(
    g: &Graph,
    replay: &dyn Replay,
    pairs: &[Pair],
) -> Result<HashMap<ValueId, ChannelRange>, PassError> {
    let links: Vec<ValueId> = pairs.iter().map(|p| p.link).collect();
    let mut ranges: Vec<Option<ChannelRange>> = vec![None; links.len()];
    let mut failed = None;
    replay.replay(g, &links, &mut |i, t| {
        if let Err(e) = ChannelRange::observe(&mut ranges[i], t) {
            failed.get_or_insert(e);
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(links
        .into_iter()
        .zip(ranges)
        .filter_map(|(v, r)| Some((v, r?)))
        .collect())
}

/// Working copies of the constants being changed, written back once at the end.
#[derive(Default)]
struct Weights(HashMap<ValueId, (Vec<usize>, Vec<f32>)>);

impl Weights {
    fn get<'a>(&'a mut self, g: &Graph, v: ValueId) -> Result<&'a mut Vec<f32>, PassError> {
        if !self.0.contains_key(&v) {
            let t = g
                .const_value(v)
                .ok_or_else(|| PassError::Bug("CLE weights are not constant".into()))?;
            let data = t.as_f32().map_err(PassError::Bug)?.to_vec();
            self.0.insert(v, (t.shape().to_vec(), data));
        }
        Ok(&mut self.0.get_mut(&v).expect("inserted above").1)
    }

    fn write_back(self, g: &mut Graph) -> Result<(), PassError> {
        for (v, (shape, data)) in self.0 {
            g.node_mut(v.node).op = NodeOp::Const(Arc::new(Tensor::from_f32(&shape, data)));
        }
        Ok(())
    }
}

/// The pair's equalizing scales `s_i = sqrt(r1_i / r2_i)` (1 where a range is 0).
fn scales(w: &mut Weights, g: &Graph, p: &Pair) -> Result<Vec<f32>, PassError> {
    let mut r1 = vec![0f32; p.first.rows];
    let w1 = w.get(g, p.first.weights)?;
    for (i, r) in r1.iter_mut().enumerate() {
        *r = p.first.row(w1, i).iter().fold(0f32, |m, v| m.max(v.abs()));
    }
    let mut r2 = vec![0f32; p.first.rows];
    let w2 = w.get(g, p.second.weights)?;
    for row in 0..p.second.rows {
        for e in 0..p.second.row_len {
            let c = p.second.in_channel(row, e) / p.inner;
            r2[c] = r2[c].max(w2[p.second.index(row, e)].abs());
        }
    }
    Ok(r1
        .iter()
        .zip(&r2)
        .map(|(&a, &b)| {
            let s = (a / b).sqrt();
            if s.is_normal() {
                s
            } else {
                1.0
            }
        })
        .collect())
}

/// Divides the first layer's output channels (weights and bias) by `s` and multiplies the
/// second layer's input channels by it.
fn apply_scales(w: &mut Weights, g: &Graph, p: &Pair, s: &[f32]) -> Result<(), PassError> {
    let w1 = w.get(g, p.first.weights)?;
    for (i, &s) in s.iter().enumerate() {
        for e in 0..p.first.row_len {
            w1[p.first.index(i, e)] /= s;
        }
    }
    if let Some(Some(b)) = bias(g, p.first.node, p.first.rows) {
        for (b, &s) in w.get(g, b)?.iter_mut().zip(s) {
            *b /= s;
        }
    }
    let w2 = w.get(g, p.second.weights)?;
    for row in 0..p.second.rows {
        for e in 0..p.second.row_len {
            w2[p.second.index(row, e)] *= s[p.second.in_channel(row, e) / p.inner];
        }
    }
    Ok(())
}

/// Moves `c_i` out of the first layer's bias and `W2 · c` into the second's (creating a
/// zero bias where it had none).
fn absorb_bias(w: &mut Weights, g: &mut Graph, p: &Pair, c: &[f32]) -> Result<(), PassError> {
    if c.iter().all(|&c| c == 0.0) {
        return Ok(());
    }
    let b1 = ensure_bias(g, p.first.node, p.first.rows)?;
    for (b, &c) in w.get(g, b1)?.iter_mut().zip(c) {
        *b -= c;
    }
    let mut shift = vec![0f32; p.second.rows];
    let w2 = w.get(g, p.second.weights)?;
    for (row, shift) in shift.iter_mut().enumerate() {
        for e in 0..p.second.row_len {
            let ch = p.second.in_channel(row, e) / p.inner;
            *shift += w2[p.second.index(row, e)] * c[ch];
        }
    }
    let b2 = ensure_bias(g, p.second.node, p.second.rows)?;
    for (b, s) in w.get(g, b2)?.iter_mut().zip(shift) {
        *b += s;
    }
    Ok(())
}

/// The bias constant of `node`, a new zero one if it had none.
fn ensure_bias(g: &mut Graph, node: NodeId, rows: usize) -> Result<ValueId, PassError> {
    match bias(g, node, rows) {
        Some(Some(b)) => Ok(b),
        Some(None) => {
            let mut name = format!("{}_bias", g.node(node).name);
            while g.find_value(&name).is_some() {
                name.push('_');
            }
            let b = g.add_const(
                &name,
                Arc::new(Tensor::from_f32(&[rows], vec![0.0; rows])),
                None,
            );
            let arity = &mut g.node_mut(node).arity;
            *arity = (*arity).max(3);
            g.set_node_input(node, 2, Some(b))?;
            Ok(b)
        }
        None => Err(PassError::Bug(
            "bias absorption into an unsupported bias".into(),
        )),
    }
}
