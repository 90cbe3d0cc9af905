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
//! Products are grouped into *regions*: the layers whose outputs share one channel space
//! (the producers, divided by `s`) and the layers that read it (the consumers, multiplied by
//! `s`). A plain chain is a region of one producer and one consumer. Regions grow through
//! ops that commute with a positive per-channel scale: MaxPool, AveragePool,
//! GlobalAveragePool, a Flatten before a Gemm (input features `c·inner .. (c+1)·inner` of the
//! Gemm are channel `c`), a channel Concat (the region's channels sit at an offset), and a
//! residual Add (`x/s + y/s = (x + y)/s`, also through a fused Relu): the Add's other operand
//! must come from products too, which join the region as producers, and every reader of the
//! Add's result joins as a consumer. Layer-group finders that stop at a value with several
//! users (AIMET's `find_layer_groups_to_scale`, the 2019 paper's chains) leave the layers of
//! a residual network's trunk unscaled; one shared scale per channel of the region, from the
//! largest producer and consumer ranges, equalizes them too. A region with a reader that
//! does not commute with the scale (a graph output, a Mul, a Concat on another axis) is left
//! alone. Depthwise and grouped Convs pair like any other (`Layer::in_channel`).
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
//! absorption happens only into Gemm/MatMul and unpadded Convs, through unpadded pools, and
//! only in regions of one producer without an Add (an Add would need its operands' shifts
//! summed, and its other readers would see them).

use crate::quantize::bias_correction::ChannelMaps;
use crate::quantize::layer::{float_layer, Layer};
use crate::quantize::replay::{ChannelRange, Replay};
use crate::PassError;
use qlift_ir::{AttrValue, Graph, NodeId, NodeOp, OpKind, Tensor, ValueId};
use std::collections::{HashMap, HashSet};
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
    /// Regions equalized (a plain pair is one; a residual trunk with its branches is one).
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

/// How a region's channel `c` sits in a value: channel `offset + c` (after a Concat), and
/// features `(offset + c)·inner .. (offset + c + 1)·inner` after a Flatten.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Placement {
    offset: usize,
    inner: usize,
}

const PLAIN: Placement = Placement {
    offset: 0,
    inner: 1,
};

/// A product reading a region's channels.
struct Consumer {
    layer: Layer,
    at: Placement,
}

impl Consumer {
    /// The region channel of the consumer's weight entry `(row, e)`, if it reads one.
    fn channel(&self, row: usize, e: usize, channels: usize) -> Option<usize> {
        (self.layer.in_channel(row, e) / self.at.inner)
            .checked_sub(self.at.offset)
            .filter(|&c| c < channels)
    }
}

/// Products whose outputs share one channel space, and the products that read it.
struct Region {
    channels: usize,
    producers: Vec<Layer>,
    consumers: Vec<Consumer>,
    /// Values of the region in its plain placement (producer results and Add results):
    /// each one is divided by the region's scale.
    values: Vec<ValueId>,
    /// Bias absorption keeps the float model exact on the data here.
    absorbable: bool,
}

impl Region {
    fn links(&self) -> impl Iterator<Item = ValueId> + '_ {
        self.producers.iter().map(|p| ValueId {
            node: p.node,
            output: 0,
        })
    }
}

/// Equalizes every region of products in `g` and (with `absorb`) absorbs the biases, with
/// per-channel ranges from `replay` (needed for Relu6 producers and for absorption; without
/// it only unclipped regions are equalized and nothing is absorbed).
pub fn equalize(
    g: &Graph,
    replay: Option<&dyn Replay>,
    absorb: bool,
) -> Result<(Graph, CleSummary), PassError> {
    let mut out = g.clone();
    let mut summary = CleSummary::default();
    let mut regions = find_regions(g)?;
    let ranges = match replay {
        Some(r) if !regions.is_empty() => channel_ranges(g, r, &regions)?,
        _ => HashMap::new(),
    };
    regions.retain(|r| {
        let bounded: Vec<ValueId> = r
            .links()
            .filter(|l| fused_clip(g, l.node).1.is_finite())
            .collect();
        if bounded.is_empty() {
            return true;
        }
        let never_clipped = bounded.iter().all(|l| {
            let hi = fused_clip(g, l.node).1;
            ranges.get(l).is_some_and(|r| r.max.iter().all(|&m| m < hi))
        });
        if never_clipped {
            summary.relu6_as_relu += bounded.len();
        } else {
            summary.clipped += 1;
        }
        never_clipped
    });
    if regions.is_empty() {
        return Ok((out, summary));
    }
    let mut weights = Weights::default();
    // Cumulative scale of each region's channels (its values were divided by it).
    let mut total: Vec<Vec<f32>> = regions.iter().map(|r| vec![1.0; r.channels]).collect();
    for sweep in 1..=MAX_SWEEPS {
        summary.sweeps = sweep;
        let mut moved = 0f32;
        for (r, total) in regions.iter().zip(&mut total) {
            let s = scales(&mut weights, &out, r)?;
            for (t, &s) in total.iter_mut().zip(&s) {
                *t *= s;
                moved = moved.max(s.ln().abs());
            }
            apply_scales(&mut weights, &out, r, &s)?;
        }
        if moved < CONVERGED {
            break;
        }
    }
    summary.pairs = regions.len();
    for r in &regions {
        for l in r.links() {
            if fused_clip(g, l.node).1.is_finite() {
                set_clip(&mut out, l.node, f32::INFINITY)?;
            }
        }
    }
    for (r, total) in regions.iter().zip(&total) {
        let zero = vec![0.0; total.len()];
        for &v in &r.values {
            summary
                .maps
                .insert(g.value(v).name.clone(), (total.clone(), zero.clone()));
        }
    }
    if absorb {
        for (r, total) in regions.iter().zip(&total) {
            let link = ValueId {
                node: r.producers[0].node,
                output: 0,
            };
            let Some(range) = ranges.get(&link).filter(|_| r.absorbable) else {
                continue;
            };
            let c: Vec<f32> = range
                .min
                .iter()
                .zip(total)
                .map(|(&m, &s)| (m / s).max(0.0))
                .collect();
            summary.absorbed_channels += c.iter().filter(|&&c| c > 0.0).count();
            absorb_bias(&mut weights, &mut out, r, &c)?;
            if let Some(map) = summary.maps.get_mut(&g.value(link).name) {
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

/// A clamp that commutes with a positive scale (none, or Relu), or a finite upper bound
/// that does so on data that never reaches it (checked later).
fn homogeneous_clip(g: &Graph, node: NodeId) -> bool {
    let (lo, hi) = fused_clip(g, node);
    (lo == 0.0 || lo == f32::NEG_INFINITY) && hi > 0.0
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

/// Every region that can be equalized, in topological order of its first producer.
fn find_regions(g: &Graph) -> Result<Vec<Region>, PassError> {
    let mut regions = Vec::new();
    let mut taken = HashSet::new();
    for id in g.topo_order()? {
        if taken.contains(&id) {
            continue;
        }
        let mut grower = Grower::new(g);
        if grower.producer(id).is_none() {
            continue;
        }
        let region = grower.grow();
        taken.extend(grower.producers.iter().map(|p| p.node));
        regions.extend(region);
    }
    Ok(regions)
}

/// Builds one region: values to follow forward, producers found backward through Adds.
struct Grower<'g> {
    g: &'g Graph,
    channels: usize,
    producers: Vec<Layer>,
    consumers: Vec<Consumer>,
    placed: HashMap<ValueId, Placement>,
    queue: Vec<(ValueId, Placement)>,
    absorbable: bool,
}

impl<'g> Grower<'g> {
    fn new(g: &'g Graph) -> Grower<'g> {
        Grower {
            g,
            channels: 0,
            producers: Vec::new(),
            consumers: Vec::new(),
            placed: HashMap::new(),
            queue: Vec::new(),
            absorbable: true,
        }
    }

    /// Adds product `id` as a producer; `None` if it cannot be one.
    fn producer(&mut self, id: NodeId) -> Option<()> {
        if self.producers.iter().any(|p| p.node == id) {
            return Some(());
        }
        let layer = product(self.g, id)?;
        if !homogeneous_clip(self.g, id) || (self.channels != 0 && layer.rows != self.channels) {
            return None;
        }
        self.channels = layer.rows;
        self.absorbable &= self.producers.is_empty() && fused_clip(self.g, id).0 == 0.0;
        self.producers.push(layer);
        self.queue.push((
            ValueId {
                node: id,
                output: 0,
            },
            PLAIN,
        ));
        Some(())
    }

    /// Makes `v` a region value in the plain placement: a producer's result, or an Add of
    /// region values (whose operands join too).
    fn source(&mut self, v: ValueId) -> Option<()> {
        if self.placed.contains_key(&v) || self.queue.iter().any(|(q, _)| *q == v) {
            return Some(());
        }
        if v.output != 0 {
            return None;
        }
        if product(self.g, v.node).is_some() {
            return self.producer(v.node);
        }
        let operands = self.residual_add(v.node)?;
        self.queue.push((v, PLAIN));
        for o in operands {
            self.source(o)?;
        }
        Some(())
    }

    /// The operands of an Add of two same-shape values whose fused clamp commutes with the
    /// scale.
    fn residual_add(&self, node: NodeId) -> Option<Vec<ValueId>> {
        let NodeOp::Apply(op) = &self.g.node(node).op else {
            return None;
        };
        let operands: Vec<ValueId> = self.g.node_inputs(node).into_iter().flatten().collect();
        let result = ValueId { node, output: 0 };
        let shape = &self.g.value_type(result).shape;
        let (lo, hi) = fused_clip(self.g, node);
        (op.kind == OpKind::Add
            && operands.len() == 2
            && operands
                .iter()
                .all(|&o| self.g.value_type(o).shape == *shape)
            && (lo == 0.0 || lo == f32::NEG_INFINITY)
            && hi == f32::INFINITY)
            .then_some(operands)
    }

    /// Follows every region value to its readers; `None` if one cannot take the scale.
    fn grow(&mut self) -> Option<Region> {
        let mut values = Vec::new();
        while let Some((v, at)) = self.queue.pop() {
            match self.placed.get(&v) {
                Some(&seen) if seen == at => continue,
                Some(_) => return None,
                None => {}
            }
            self.placed.insert(v, at);
            let width = self
                .g
                .value_type(v)
                .shape
                .dims()
                .get(1)
                .and_then(|d| d.fixed());
            if at == PLAIN && width == Some(self.channels) {
                values.push(v);
            }
            if self.g.outputs().contains(&v) {
                return None;
            }
            for (user, slot) in self.g.users(v) {
                self.reader(v, at, user, slot)?;
            }
        }
        (!self.consumers.is_empty()).then(|| Region {
            channels: self.channels,
            producers: std::mem::take(&mut self.producers),
            consumers: std::mem::take(&mut self.consumers),
            values,
            absorbable: self.absorbable,
        })
    }

    /// Takes `user`, which reads region value `v` (placed `at`) as operand `slot`.
    fn reader(&mut self, v: ValueId, at: Placement, user: NodeId, slot: usize) -> Option<()> {
        let g = self.g;
        if let Some(layer) = product(g, user).filter(|_| slot == 0) {
            let width = g.value_type(v).shape.dims().get(1)?.fixed()?;
            if layer.in_channels != width * at.inner || (at.inner > 1 && layer.conv.is_some()) {
                return None;
            }
            self.absorbable &= layer.conv.as_ref().is_none_or(|c| !c.padded());
            self.consumers.push(Consumer { layer, at });
            return Some(());
        }
        let NodeOp::Apply(op) = &g.node(user).op else {
            return None;
        };
        let result = ValueId {
            node: user,
            output: 0,
        };
        let padded = op
            .attrs
            .ints("pads")
            .is_ok_and(|p| p.iter().any(|&p| p != 0));
        let next = match op.kind {
            OpKind::MaxPool | OpKind::GlobalAveragePool => at,
            OpKind::AveragePool => {
                self.absorbable &= !padded;
                at
            }
            OpKind::Flatten if op.attrs.int("axis") == Ok(1) && at.inner == 1 => {
                let dims = g.value_type(v).shape.dims();
                let rest = dims
                    .get(2..)?
                    .iter()
                    .map(|d| d.fixed())
                    .product::<Option<usize>>()?;
                Placement { inner: rest, ..at }
            }
            OpKind::Concat if op.attrs.int("axis") == Ok(1) && at.inner == 1 => {
                let before = g.node_inputs(user)[..slot]
                    .iter()
                    .map(|o| g.value_type((*o)?).shape.dims().get(1)?.fixed())
                    .sum::<Option<usize>>()?;
                Placement {
                    offset: at.offset + before,
                    ..at
                }
            }
            OpKind::Add if at == PLAIN => {
                self.absorbable = false;
                for o in self.residual_add(user)? {
                    self.source(o)?;
                }
                at
            }
            _ => return None,
        };
        self.queue.push((result, next));
        Some(())
    }
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

/// Per-channel ranges of every region's producer results over the calibration data.
fn channel_ranges(
    g: &Graph,
    replay: &dyn Replay,
    regions: &[Region],
) -> Result<HashMap<ValueId, ChannelRange>, PassError> {
    let links: Vec<ValueId> = regions.iter().flat_map(Region::links).collect();
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

/// The region's equalizing scales `s_c = sqrt(r1_c / r2_c)`, with `r1_c` the largest range
/// of channel `c` over the producers' rows and `r2_c` over the consumers' columns (1 where a
/// range is 0).
fn scales(w: &mut Weights, g: &Graph, r: &Region) -> Result<Vec<f32>, PassError> {
    let mut r1 = vec![0f32; r.channels];
    for p in &r.producers {
        let w1 = w.get(g, p.weights)?;
        for (c, m) in r1.iter_mut().enumerate() {
            *m = p.row(w1, c).iter().fold(*m, |m, v| m.max(v.abs()));
        }
    }
    let mut r2 = vec![0f32; r.channels];
    for u in &r.consumers {
        let w2 = w.get(g, u.layer.weights)?;
        for row in 0..u.layer.rows {
            for e in 0..u.layer.row_len {
                if let Some(c) = u.channel(row, e, r.channels) {
                    r2[c] = r2[c].max(w2[u.layer.index(row, e)].abs());
                }
            }
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

/// Divides the producers' output channels (weights and bias) by `s` and multiplies the
/// consumers' input channels by it.
fn apply_scales(w: &mut Weights, g: &Graph, r: &Region, s: &[f32]) -> Result<(), PassError> {
    for p in &r.producers {
        let w1 = w.get(g, p.weights)?;
        for (i, &s) in s.iter().enumerate() {
            for e in 0..p.row_len {
                w1[p.index(i, e)] /= s;
            }
        }
        if let Some(Some(b)) = bias(g, p.node, p.rows) {
            for (b, &s) in w.get(g, b)?.iter_mut().zip(s) {
                *b /= s;
            }
        }
    }
    for u in &r.consumers {
        let w2 = w.get(g, u.layer.weights)?;
        for row in 0..u.layer.rows {
            for e in 0..u.layer.row_len {
                if let Some(c) = u.channel(row, e, r.channels) {
                    w2[u.layer.index(row, e)] *= s[c];
                }
            }
        }
    }
    Ok(())
}

/// Moves `c_i` out of the (one) producer's bias and `W2 · c` into each consumer's (creating
/// a zero bias where it had none).
fn absorb_bias(w: &mut Weights, g: &mut Graph, r: &Region, c: &[f32]) -> Result<(), PassError> {
    if c.iter().all(|&c| c == 0.0) {
        return Ok(());
    }
    let p = &r.producers[0];
    let b1 = ensure_bias(g, p.node, p.rows)?;
    for (b, &c) in w.get(g, b1)?.iter_mut().zip(c) {
        *b -= c;
    }
    for u in &r.consumers {
        let mut shift = vec![0f32; u.layer.rows];
        let w2 = w.get(g, u.layer.weights)?;
        for (row, shift) in shift.iter_mut().enumerate() {
            for e in 0..u.layer.row_len {
                if let Some(ch) = u.channel(row, e, r.channels) {
                    *shift += w2[u.layer.index(row, e)] * c[ch];
                }
            }
        }
        let b2 = ensure_bias(g, u.layer.node, u.layer.rows)?;
        for (b, s) in w.get(g, b2)?.iter_mut().zip(shift) {
            *b += s;
        }
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
