//! SmoothQuant (Xiao et al. 2022, "SmoothQuant: Accurate and Efficient Post-Training
//! Quantization for Large Language Models", arXiv 2211.10438, §4): migrates per-channel
//! activation outliers into the weights that read them, as the pass `smooth` before
//! calibration.
//!
//! # Why
//! A LayerNorm output in a BERT-like model has a few channels 10–20× larger than the rest
//! (all-MiniLM-L6-v2: max |x| 28 on one channel of the attention-output LayerNorms, a
//! median of 1.7). Quantized per tensor, their range costs every other channel its
//! precision, and the products reading them fail the 8-bit outlier check
//! (`insert.rs`, `--min-sqnr`) and run on slower 16-bit activations. Weights are
//! quantized per output channel, i.e. per column of `W` in `x · W`, so scaling one *row*
//! (one input channel) barely moves their error.
//!
//! # What
//! For a value `X` whose producer can absorb a per-channel factor on its last axis, and
//! whose readers include MatMul/Gemm with constant weights, per channel `j`:
//! `s_j = max|X_j|^α / max|W_j,:|^(1−α)` (the max over every product's row `j`, `α` the
//! migration strength, [`DEFAULT_ALPHA`] by default), then `X_j ← X_j / s_j` in the
//! producer and `W_j,: ← s_j · W_j,:` in every product: the same function in real numbers.
//! A channel whose `s_j` is 0, infinite, NaN or subnormal (a channel never active, an all-zero
//! weight row) keeps `s_j = 1`.
//!
//! Producers: a LayerNormalization over the last axis (`γ_j, β_j ← γ_j/s_j, β_j/s_j`, the
//! paper's case), and a Mul by a constant broadcast along the last axis (`c ← c/s_j`: the
//! `·0.5` that ends an exported GELU, so the FFN down-projections' inputs smooth too at no
//! cost).
//!
//! # Other readers
//! In post-LN transformers (BERT, MiniLM) every LayerNorm output also feeds the next
//! residual Add, so the paper's condition (only products read `X`) never holds there. A
//! reader that is not such a product reads `X/s · s` through one inserted Mul by `s` (named
//! `<X>_unsmoothed`), which keeps the function and costs one elementwise op per site. A site
//! whose value is a graph output, or that no product reads, is left alone.
//!
//! # Measured (all-MiniLM-L6-v2, corpus calibration, 36 Linear layers)
//! Without the pass, 8 products read 16-bit activations: the 4 FFN up-projections of
//! layers 0–3 (attention-output LayerNorm at 24.3–24.7 dB in 8 bits, under the 25 dB
//! bound) and the down-projections of layers 0–3 (GELU outputs at 18.9–24.0 dB). α = 0.5
//! lifts the LayerNorms over the bound but not the GELU outputs (their smoothed 8-bit
//! estimate even drops), leaving 4; α = 0.8 lifts both: all 36 read 8 bits. The six
//! down-projections' *results* (17–21 dB in 8 bits) fail whatever α, since smoothing moves
//! input outliers only: they stay 16-bit results of 8-bit products (`int16-result`,
//! `wide.rs`). Sentence-embedding cosine to fp32: 0.9956 without, 0.9969 (α 0.5), 0.9967
//! (α 0.8). magika has no LayerNormalization and no site.
//!
//! Speed (sequence 128, one thread, `qlift bench --profile`, two interleaved runs): the
//! QMatMuls take 21.5–22.8 ms a call without the pass (10 on `wide-matmul` at 16 bits),
//! 17.3–17.5 ms with α 0.5 (32 on `wide-matmul-vnni`, 4 on `wide-matmul`), and 22.1 ms with
//! α 0.8: its four smoothed down-projections' weights grow (`s_j` up to 9) until their
//! requantization multiplier into the 16-bit result needs a shift under 32, which the
//! wide micro-kernel does not take, and they fall to `matmul-packed` (32–55 GMAC/s). Hence
//! α 0.5 by default.

use crate::quantize::layer::{float_layer, Layer};
use crate::quantize::replay::Replay;
use crate::PassError;
use qlift_ir::{Attrs, DType, Graph, NodeId, NodeOp, Op, OpKind, Tensor, ValueId};
use std::sync::Arc;

/// The pass's name in the pipeline and in dumps.
pub const PASS: &str = "smooth";
/// What the pass does, for `--help`.
pub const ABOUT: &str =
    "(only with --calib and --smooth) SmoothQuant: move per-channel outliers of LayerNorm/Mul outputs into the MatMul/Gemm weights reading them";
/// The paper's default migration strength: outliers split evenly between the activation
/// and the weights.
pub const DEFAULT_ALPHA: f32 = 0.5;

/// One smoothed value.
#[derive(Clone, Debug, PartialEq)]
pub struct Smoothed {
    /// The producer's node name (a LayerNormalization or a Mul).
    pub node: String,
    /// Its op.
    pub op: OpKind,
    /// Products whose weights took the scales.
    pub products: usize,
    /// Other readers, fed through the inserted Mul by `s`.
    pub compensated: usize,
    /// Channels whose scale is not 1.
    pub channels: usize,
    /// The largest and least scale.
    pub range: (f32, f32),
}

/// A value that can be smoothed.
struct Site {
    /// The producer's result.
    value: ValueId,
    /// Channels (extent of the last axis).
    channels: usize,
    /// The producer's constant operands that take `1/s` (γ and β, or the Mul's constant).
    absorbing: Vec<usize>,
    /// Products reading `value` as their input.
    products: Vec<Layer>,
    /// Other readers `(node, slot)`.
    others: Vec<(NodeId, usize)>,
}

/// Smooths every site of `g` with strength `alpha` (in [0, 1]), with `max|X_j|` from
/// `replay`. Returns the graph and what was smoothed, in graph order.
pub fn smooth(
    g: &Graph,
    replay: &dyn Replay,
    alpha: f32,
) -> Result<(Graph, Vec<Smoothed>), PassError> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(PassError::Unsupported(format!(
            "smooth: α {alpha} is not in [0, 1]"
        )));
    }
    let sites = find_sites(g)?;
    if sites.is_empty() {
        return Ok((g.clone(), Vec::new()));
    }
    let values: Vec<ValueId> = sites.iter().map(|s| s.value).collect();
    let mut amax: Vec<Vec<f32>> = sites.iter().map(|s| vec![0.0; s.channels]).collect();
    let mut failed = None;
    replay.replay(g, &values, &mut |i, t| {
        if let Err(e) = observe_abs_max(&mut amax[i], t) {
            failed.get_or_insert(e);
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let mut out = g.clone();
    let mut done = Vec::new();
    for (site, amax) in sites.iter().zip(&amax) {
        let wmax = weight_row_max(g, site)?;
        let s = scales(amax, &wmax, alpha);
        apply(&mut out, site, &s)?;
        let moved: Vec<f32> = s.iter().copied().filter(|&s| s != 1.0).collect();
        let node = g.node(site.value.node);
        done.push(Smoothed {
            node: node.name.clone(),
            op: match &node.op {
                NodeOp::Apply(op) => op.kind,
                _ => return Err(PassError::Bug("smoothing a non-op".into())),
            },
            products: site.products.len(),
            compensated: site.others.len(),
            channels: moved.len(),
            range: moved
                .iter()
                .fold(None, |r: Option<(f32, f32)>, &s| {
                    Some(r.map_or((s, s), |(hi, lo)| (hi.max(s), lo.min(s))))
                })
                .unwrap_or((1.0, 1.0)),
        });
    }
    // The replaced constants.
    out.remove_dead_nodes();
    Ok((out, done))
}

/// `s_j = amax_j^α / wmax_j^(1−α)`, 1 where that is not a normal positive number.
pub fn scales(amax: &[f32], wmax: &[f32], alpha: f32) -> Vec<f32> {
    amax.iter()
        .zip(wmax)
        .map(|(&a, &w)| {
            let s = a.powf(alpha) / w.powf(1.0 - alpha);
            if s.is_normal() && s > 0.0 {
                s
            } else {
                1.0
            }
        })
        .collect()
}

/// Widens `amax` (one entry per channel of the last axis) with `t`'s magnitudes; non-finite
/// values are skipped.
fn observe_abs_max(amax: &mut [f32], t: &Tensor) -> Result<(), PassError> {
    let data = t.as_f32().map_err(PassError::Bug)?;
    if t.shape().last() != Some(&amax.len()) {
        return Err(PassError::Bug(format!(
            "smooth: a value of shape {:?} has not {} channels",
            t.shape(),
            amax.len()
        )));
    }
    for row in data.chunks_exact(amax.len()) {
        for (m, v) in amax.iter_mut().zip(row).filter(|(_, v)| v.is_finite()) {
            *m = m.max(v.abs());
        }
    }
    Ok(())
}

/// Every value of `g` that can be smoothed, in topological order.
fn find_sites(g: &Graph) -> Result<Vec<Site>, PassError> {
    let mut sites = Vec::new();
    for id in g.topo_order()? {
        let NodeOp::Apply(op) = &g.node(id).op else {
            continue;
        };
        let value = ValueId {
            node: id,
            output: 0,
        };
        let ty = g.value_type(value);
        let Some(channels) = ty.shape.dims().last().and_then(|d| d.fixed()) else {
            continue;
        };
        if ty.dtype != DType::F32 || g.outputs().contains(&value) || channels == 0 {
            continue;
        }
        let rank = ty.shape.dims().len() as i64;
        let operands = g.node_inputs(id);
        let per_channel = |slot: usize| {
            operands
                .get(slot)
                .copied()
                .flatten()
                .and_then(|v| g.const_value(v))
                .is_some_and(|t| t.as_f32().is_ok() && t.shape() == [channels])
        };
        let absorbing = match op.kind {
            OpKind::LayerNormalization
                if op.attrs.int("axis").is_ok_and(|a| a == -1 || a == rank - 1)
                    && per_channel(1) =>
            {
                match operands.get(2).copied().flatten() {
                    None => vec![1],
                    Some(_) if per_channel(2) => vec![1, 2],
                    Some(_) => continue,
                }
            }
            OpKind::Mul if operands.len() == 2 => {
                match (0..2).find(|&s| broadcast_constant(g, operands[s], channels, rank)) {
                    Some(slot) if operands[1 - slot].is_some_and(|v| g.value_type(v) == ty) => {
                        vec![slot]
                    }
                    _ => continue,
                }
            }
            _ => continue,
        };
        let mut site = Site {
            value,
            channels,
            absorbing,
            products: Vec::new(),
            others: Vec::new(),
        };
        for (user, slot) in g.users(value) {
            match product(g, user).filter(|l| slot == 0 && l.row_len == channels) {
                Some(layer) => site.products.push(layer),
                None => site.others.push((user, slot)),
            }
        }
        if !site.products.is_empty() {
            sites.push(site);
        }
    }
    Ok(sites)
}

/// Whether `v` is an f32 constant of one value, or of one value per channel of the last
/// axis, broadcast onto a value of rank `rank`.
fn broadcast_constant(g: &Graph, v: Option<ValueId>, channels: usize, rank: i64) -> bool {
    let Some(t) = v.and_then(|v| g.const_value(v)) else {
        return false;
    };
    let shape = t.shape();
    let leading_ones = shape.iter().rev().skip(1).all(|&d| d == 1);
    t.as_f32().is_ok()
        && shape.len() as i64 <= rank
        && leading_ones
        && (t.len() == 1 || shape.last() == Some(&channels))
}

/// The layer of a MatMul or Gemm with constant f32 weights (reading its input's last axis).
fn product(g: &Graph, id: NodeId) -> Option<Layer> {
    let NodeOp::Apply(op) = &g.node(id).op else {
        return None;
    };
    if !matches!(op.kind, OpKind::MatMul | OpKind::Gemm) {
        return None;
    }
    float_layer(g, id).map(|(layer, _)| layer)
}

/// `max_j |W_j,:|` over every product of the site (row `j` = input channel `j`).
fn weight_row_max(g: &Graph, site: &Site) -> Result<Vec<f32>, PassError> {
    let mut wmax = vec![0f32; site.channels];
    for p in &site.products {
        let w = weights(g, p)?;
        for row in 0..p.rows {
            for (j, m) in wmax.iter_mut().enumerate() {
                *m = m.max(w[p.index(row, j)].abs());
            }
        }
    }
    Ok(wmax)
}

fn weights<'g>(g: &'g Graph, p: &Layer) -> Result<&'g [f32], PassError> {
    g.const_value(p.weights)
        .ok_or_else(|| PassError::Bug("smooth: product weights are not constant".into()))?
        .as_f32()
        .map_err(PassError::Bug)
}

/// Divides the producer's absorbing constants by `s`, multiplies each product's rows by
/// it, and feeds the other readers through a Mul by `s`.
fn apply(g: &mut Graph, site: &Site, s: &[f32]) -> Result<(), PassError> {
    let producer = site.value.node;
    for &slot in &site.absorbing {
        let old = g.node_inputs(producer)[slot]
            .ok_or_else(|| PassError::Bug("smooth: absorbing operand is missing".into()))?;
        let c = g
            .const_value(old)
            .cloned()
            .ok_or_else(|| PassError::Bug("smooth: absorbing operand is not constant".into()))?;
        let c = c.as_f32().map_err(PassError::Bug)?;
        let scaled: Vec<f32> = (0..s.len())
            .map(|j| c[if c.len() == 1 { 0 } else { j }] / s[j])
            .collect();
        let name = format!("{}_smoothed", g.value(old).name);
        replace_constant(g, producer, slot, &name, &[s.len()], scaled)?;
    }
    for p in &site.products {
        let mut w = weights(g, p)?.to_vec();
        for row in 0..p.rows {
            for (j, &s) in s.iter().enumerate() {
                w[p.index(row, j)] *= s;
            }
        }
        let shape = g.value_type(p.weights).shape.clone();
        let shape: Vec<usize> = shape.dims().iter().filter_map(|d| d.fixed()).collect();
        let name = format!("{}_smoothed", g.value(p.weights).name);
        replace_constant(g, p.node, 1, &name, &shape, w)?;
    }
    if !site.others.is_empty() {
        let name = unique(g, &format!("{}_unsmoothed", g.value(site.value).name));
        let s_const = g.add_const(
            &unique(g, &format!("{name}_scale")),
            Arc::new(Tensor::from_f32(&[s.len()], s.to_vec())),
            None,
        );
        let op = Op::new(OpKind::Mul, Attrs::new());
        let restored = g.add_op(&name, op, &[Some(site.value), Some(s_const)], &[&name])?[0];
        for &(user, slot) in &site.others {
            g.set_node_input(user, slot, Some(restored))?;
        }
    }
    Ok(())
}

/// Makes operand `slot` of `node` a new constant named after `name` holding `data`.
fn replace_constant(
    g: &mut Graph,
    node: NodeId,
    slot: usize,
    name: &str,
    shape: &[usize],
    data: Vec<f32>,
) -> Result<(), PassError> {
    let name = unique(g, name);
    let c = g.add_const(&name, Arc::new(Tensor::from_f32(shape, data)), None);
    g.set_node_input(node, slot, Some(c))?;
    Ok(())
}

/// `name`, with `_` appended until no value has it.
fn unique(g: &Graph, name: &str) -> String {
    let mut name = name.to_string();
    while g.find_value(&name).is_some() {
        name.push('_');
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::InterpReplay;

    /// A LayerNorm over 4 channels read by a MatMul, a Gemm (transB) and a residual Add,
    /// and a Mul by 0.5 read by a MatMul only.
    const GRAPH: &str = "graph t(%x: f32[N,4]) -> (%m, %r, %k, %o) {
      %gamma = const f32[4] [1.0, 2.0, 0.5, 1.5]
      %beta = const f32[4] [0.1, -0.2, 0.3, 0.0]
      %ln = LayerNormalization(%x, %gamma, %beta) {axis=1, epsilon=1e-5} : f32[N,4]
      %w = const f32[4,3] [1, -2, 3, 0.5, 0.25, -1, 2, 2, -0.5, 1, 0, 0.125]
      %m = MatMul(%ln, %w) : f32[N,3]
      %wt = const f32[2,4] [0.5, -1, 2, 0.25, 1, 1, -3, 0.75]
      %k = Gemm(%ln, %wt, _) {alpha=1.0, beta=1.0, transA=0, transB=1} : f32[N,2]
      %r = Add(%ln, %x) : f32[N,4]
      %half = const f32[] [0.5]
      %h = Mul(%x, %half) : f32[N,4]
      %o = MatMul(%h, %w) : f32[N,3]
    }";

    fn graph(text: &str) -> Graph {
        qlift_ir::text::parse(text).unwrap()
    }

    /// Samples whose channel 2 is an outlier, so the scales differ per channel.
    fn data() -> InterpReplay {
        let x: Vec<f32> = (0..32)
            .map(|i| {
                let v = ((i * 7919) % 23) as f32 / 11.0 - 1.0;
                if i % 4 == 2 {
                    v * 40.0
                } else {
                    v
                }
            })
            .collect();
        InterpReplay(vec![vec![Tensor::from_f32(&[8, 4], x)]])
    }

    fn run(g: &Graph, replay: &InterpReplay) -> Vec<Vec<f32>> {
        qlift_ir::interp::run(g, &replay.0[0])
            .unwrap()
            .iter()
            .map(|t| t.as_f32().unwrap().to_vec())
            .collect()
    }

    #[test]
    fn the_function_stays_the_same() {
        let g = graph(GRAPH);
        let replay = data();
        let (out, sites) = smooth(&g, &replay, DEFAULT_ALPHA).unwrap();
        qlift_ir::verify(&out).unwrap();
        let summary: Vec<_> = sites
            .iter()
            .map(|s| (s.node.as_str(), s.op, s.products, s.compensated))
            .collect();
        assert_eq!(
            summary,
            [
                ("ln", OpKind::LayerNormalization, 2, 1),
                ("h", OpKind::Mul, 1, 0)
            ]
        );
        assert!(sites.iter().all(|s| s.channels > 0), "{sites:?}");
        let (before, after) = (run(&g, &replay), run(&out, &replay));
        for (b, a) in before.iter().zip(&after) {
            for (x, y) in b.iter().zip(a) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{b:?} != {a:?}");
            }
        }
        // The outlier channel of the Mul's output shrank to the others' size.
        let h = out.find_value("h").unwrap();
        let half = out.node_inputs(h.node)[1].unwrap();
        let c = out.const_value(half).unwrap().as_f32().unwrap().to_vec();
        assert!(c[2] < c[0] / 2.0, "{c:?}");
    }

    #[test]
    fn the_scale_rule_and_degenerate_channels() {
        let s = scales(
            &[4.0, 9.0, 0.0, 5.0, f32::INFINITY, 3.0],
            &[1.0, 4.0, 2.0, 0.0, 1.0, f32::NAN],
            0.5,
        );
        assert_eq!(s, [2.0, 1.5, 1.0, 1.0, 1.0, 1.0]);
        // α = 1 moves everything into the weights, α = 0 leaves 1 / max|W|.
        assert_eq!(scales(&[8.0], &[2.0], 1.0), [8.0]);
        assert_eq!(scales(&[8.0], &[2.0], 0.0), [0.5]);
        assert!(smooth(&graph(GRAPH), &data(), 1.5).is_err());
    }

    #[test]
    fn values_no_product_reads_are_left_alone() {
        // A LayerNorm read by an Add only, one that is a graph output, a Mul by an
        // activation: nothing to smooth.
        let g = graph(
            "graph t(%x: f32[N,4]) -> (%r, %ln2, %o) {
              %gamma = const f32[4] [1.0, 2.0, 0.5, 1.5]
              %ln = LayerNormalization(%x, %gamma) {axis=1, epsilon=1e-5} : f32[N,4]
              %r = Add(%ln, %x) : f32[N,4]
              %ln2 = LayerNormalization(%x, %gamma) {axis=1, epsilon=1e-5} : f32[N,4]
              %w = const f32[4,3] [1, -2, 3, 0.5, 0.25, -1, 2, 2, -0.5, 1, 0, 0.125]
              %m = MatMul(%ln2, %w) : f32[N,3]
              %h = Mul(%x, %x) : f32[N,4]
              %o = MatMul(%h, %w) : f32[N,3]
            }",
        );
        let (out, sites) = smooth(&g, &data(), DEFAULT_ALPHA).unwrap();
        assert!(sites.is_empty(), "{sites:?}");
        assert_eq!(
            qlift_ir::text::print(&out, &Default::default()),
            qlift_ir::text::print(&g, &Default::default())
        );
    }
}
