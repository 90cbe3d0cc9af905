//! A Conv, Gemm or MatMul with constant weights seen as what every post-training weight
//! method works on: a matrix of output channels (rows) by reduction entries (the input
//! channels of the row's group times the kernel taps), applied to columns of its input
//! (im2col for a Conv: one column per output position). Cross-layer equalization reads the
//! weights by (output channel, input channel); bias correction and AdaRound read rows and
//! the input's columns. One description of the layouts serves all three.

use crate::PassError;
use qlift_ir::{Graph, NodeId, NodeOp, Op, OpKind, Tensor, ValueId};
use std::sync::Arc;

/// Where the weights of a product sit and how its input is read.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// The product node.
    pub node: NodeId,
    /// The weight operand (operand 1, a constant or the DequantizeLinear of one).
    pub weights: ValueId,
    /// Output channels (rows).
    pub rows: usize,
    /// Input channels of the whole product.
    pub in_channels: usize,
    /// Reduction entries per row: input channels per group × kernel taps.
    pub row_len: usize,
    /// Kernel taps per input channel (1 for Gemm and MatMul).
    pub taps: usize,
    /// Convolution groups (1 for Gemm and MatMul).
    pub groups: usize,
    /// Weight element of (row, entry) is at `row * row_stride + entry * entry_stride`.
    row_stride: usize,
    entry_stride: usize,
    /// The axis of the weight tensor that holds the output channels (the per-channel
    /// quantization axis).
    pub channel_axis: usize,
    /// Convolution geometry (None for Gemm and MatMul).
    pub conv: Option<ConvGeometry>,
}

/// A 1-D or 2-D convolution's window (1-D as height 1).
#[derive(Clone, Debug, PartialEq)]
pub struct ConvGeometry {
    /// Kernel extent (height, width).
    pub kernel: [usize; 2],
    /// Strides.
    pub strides: [usize; 2],
    /// Dilations.
    pub dilations: [usize; 2],
    /// Padding before each spatial axis.
    pub pads_begin: [usize; 2],
    /// Padding after each spatial axis.
    pub pads_end: [usize; 2],
}

impl ConvGeometry {
    /// Whether some taps read padding.
    pub fn padded(&self) -> bool {
        self.pads_begin.iter().chain(&self.pads_end).any(|&p| p > 0)
    }

    fn from_op(op: &Op) -> Option<ConvGeometry> {
        let kernel = op.attrs.usizes("kernel_shape").ok()?;
        let two = |v: Vec<usize>| -> Option<[usize; 2]> {
            match v[..] {
                [w] => Some([1, w]),
                [h, w] => Some([h, w]),
                _ => None,
            }
        };
        let pads = op.attrs.usizes("pads").ok()?;
        let half = pads.len() / 2;
        Some(ConvGeometry {
            kernel: two(kernel)?,
            strides: two(op.attrs.usizes("strides").ok()?)?,
            dilations: two(op.attrs.usizes("dilations").ok()?)?,
            pads_begin: two(pads[..half].to_vec())?,
            pads_end: two(pads[half..].to_vec())?,
        })
    }

    /// Output extent along spatial axis `a` for an input extent `n`.
    fn out(&self, a: usize, n: usize) -> usize {
        let span = self.dilations[a] * (self.kernel[a] - 1) + 1;
        (n + self.pads_begin[a] + self.pads_end[a]).saturating_sub(span) / self.strides[a] + 1
    }
}

impl Layer {
    /// The layer of product node `node` when it is a Conv (1-D or 2-D), Gemm (no transA,
    /// alpha 1) or
    /// 2-D-weight MatMul whose weight operand is `weights` with `shape`; `None` for any
    /// other op or layout (those keep nearest rounding and no correction).
    pub fn of(g: &Graph, node: NodeId, shape: &[usize]) -> Option<Layer> {
        let NodeOp::Apply(op) = &g.node(node).op else {
            return None;
        };
        let weights = g.node_inputs(node).get(1).copied().flatten()?;
        let (rows, row_len, taps, groups, row_stride, entry_stride, channel_axis, conv) =
            match (op.kind, shape) {
                (OpKind::Conv, [m, cg, kernel @ ..]) if (1..=2).contains(&kernel.len()) => {
                    let groups = op.attrs.int("group").ok()? as usize;
                    let taps: usize = kernel.iter().product();
                    let geometry = ConvGeometry::from_op(op)?;
                    (*m, cg * taps, taps, groups, cg * taps, 1, 0, Some(geometry))
                }
                (OpKind::Gemm, &[a, b])
                    if op.attrs.int("transA").ok()? == 0
                        && op.attrs.float("alpha").ok()? == 1.0 =>
                {
                    if op.attrs.int("transB").ok()? != 0 {
                        (a, b, 1, 1, b, 1, 0, None)
                    } else {
                        (b, a, 1, 1, 1, b, 1, None)
                    }
                }
                (OpKind::MatMul, &[k, n]) => (n, k, 1, 1, 1, n, 1, None),
                _ => return None,
            };
        if groups == 0 || rows % groups != 0 || rows == 0 || row_len == 0 {
            return None;
        }
        Some(Layer {
            node,
            weights,
            rows,
            in_channels: row_len / taps * groups,
            row_len,
            taps,
            groups,
            row_stride,
            entry_stride,
            channel_axis,
            conv,
        })
    }

    /// Index into the weight tensor of (row, entry).
    pub fn index(&self, row: usize, entry: usize) -> usize {
        row * self.row_stride + entry * self.entry_stride
    }

    /// The group of output channel `row`.
    pub fn group_of(&self, row: usize) -> usize {
        row / (self.rows / self.groups)
    }

    /// The input channel that entry `entry` of row `row` multiplies.
    pub fn in_channel(&self, row: usize, entry: usize) -> usize {
        self.group_of(row) * (self.row_len / self.taps) + entry / self.taps
    }

    /// Row `row` of weights `w`, in entry order.
    pub fn row(&self, w: &[f32], row: usize) -> Vec<f32> {
        (0..self.row_len).map(|e| w[self.index(row, e)]).collect()
    }

    /// The columns the product reads from input `x` for group `group`, as a row-major
    /// `[row_len][columns]` matrix: for a Conv the im2col patches (zero where a tap reads
    /// padding), one column per (sample, output position); for Gemm and MatMul the input's
    /// rows transposed. `None` when `x`'s shape does not fit.
    pub fn columns(&self, x: &Tensor, group: usize) -> Option<(Vec<f32>, usize)> {
        let n = self.column_count(x)?;
        let all: Vec<usize> = (0..n).collect();
        Some((self.columns_at(x, group, &all)?, n))
    }

    /// How many columns input `x` gives (`None` when its shape does not fit).
    pub fn column_count(&self, x: &Tensor) -> Option<usize> {
        let shape = x.shape();
        match &self.conv {
            None => (*shape.last()? == self.row_len).then(|| x.len() / self.row_len),
            Some(geo) => {
                let (batch, channels, h, w) = self.conv_input(shape)?;
                (channels == self.in_channels).then(|| batch * geo.out(0, h) * geo.out(1, w))
            }
        }
    }

    /// Columns `picks` (indices below [`Layer::column_count`]) of [`Layer::columns`], built
    /// without the others: AdaRound keeps a few thousand of a Conv's columns, and building
    /// every im2col patch of a 112×112 layer to keep one in fifty cost most of its replays.
    pub fn columns_at(&self, x: &Tensor, group: usize, picks: &[usize]) -> Option<Vec<f32>> {
        let data = x.as_f32().ok()?;
        let count = self.column_count(x)?;
        if picks.iter().any(|&j| j >= count) {
            return None;
        }
        let k = picks.len();
        let mut cols = vec![0f32; self.row_len * k];
        match &self.conv {
            None => {
                for (p, &j) in picks.iter().enumerate() {
                    let xrow = &data[j * self.row_len..][..self.row_len];
                    for (e, &v) in xrow.iter().enumerate() {
                        cols[e * k + p] = v;
                    }
                }
            }
            Some(geo) => {
                let (_, channels, h, w) = self.conv_input(x.shape())?;
                let (oh, ow) = (geo.out(0, h), geo.out(1, w));
                let cg = self.row_len / self.taps;
                for ci in 0..cg {
                    let c = group * cg + ci;
                    for (t, (ky, kx)) in (0..geo.kernel[0])
                        .flat_map(|ky| (0..geo.kernel[1]).map(move |kx| (ky, kx)))
                        .enumerate()
                    {
                        let out = &mut cols[(ci * self.taps + t) * k..][..k];
                        for (o, &j) in out.iter_mut().zip(picks) {
                            let (n, oy, ox) = (j / (oh * ow), (j / ow) % oh, j % ow);
                            let iy = (oy * geo.strides[0] + ky * geo.dilations[0])
                                .checked_sub(geo.pads_begin[0])
                                .filter(|&y| y < h);
                            let ix = (ox * geo.strides[1] + kx * geo.dilations[1])
                                .checked_sub(geo.pads_begin[1])
                                .filter(|&x| x < w);
                            if let (Some(y), Some(x)) = (iy, ix) {
                                *o = data[((n * channels + c) * h + y) * w + x];
                            }
                        }
                    }
                }
            }
        }
        Some(cols)
    }

    /// A Conv input's (batch, channels, height, width), 1-D as height 1.
    fn conv_input(&self, shape: &[usize]) -> Option<(usize, usize, usize, usize)> {
        match *shape {
            [n, c, w] => Some((n, c, 1, w)),
            [n, c, h, w] => Some((n, c, h, w)),
            _ => None,
        }
    }
}

/// The constant f32 weights of product `node` and its layer, when they are constants
/// (the float graph) — `None` otherwise.
pub fn float_layer(g: &Graph, node: NodeId) -> Option<(Layer, std::sync::Arc<Tensor>)> {
    let w = g.node_inputs(node).get(1).copied().flatten()?;
    let t = g.const_value(w)?.clone();
    t.as_f32().ok()?;
    Some((Layer::of(g, node, t.shape())?, t))
}

/// A quantized product of the QDQ graph with its float weights.
pub struct Anchor {
    /// Its layer (operand 1 is the DequantizeLinear of the quantized weights).
    pub layer: Layer,
    /// The float weights (from the float graph).
    pub float: Arc<Tensor>,
    /// The quantized weights' constant in the QDQ graph.
    pub quantized: ValueId,
}

/// The products of `qdq` whose weights `insert-qdq` quantized from `float` (the graph it
/// started from: the product keeps its node id).
pub fn anchors(qdq: &Graph, float: &Graph) -> Result<Vec<Anchor>, PassError> {
    let mut out = Vec::new();
    for id in qdq.topo_order()? {
        let Some(kind) = qdq.node(id).op.kind() else {
            continue;
        };
        if !matches!(kind, OpKind::Conv | OpKind::Gemm | OpKind::MatMul)
            || !float.contains(id)
            || float.node(id).name != qdq.node(id).name
        {
            continue;
        }
        let Some(dq) = qdq.node_inputs(id).get(1).copied().flatten() else {
            continue;
        };
        if qdq.node(dq.node).op.kind() != Some(OpKind::DequantizeLinear) {
            continue;
        }
        let Some(q) = qdq.node_inputs(dq.node)[0].filter(|&q| qdq.const_value(q).is_some()) else {
            continue;
        };
        let Some((layer, w)) = float_layer(float, id) else {
            continue;
        };
        out.push(Anchor {
            layer: Layer {
                weights: dq,
                ..layer
            },
            float: w,
            quantized: q,
        });
    }
    Ok(out)
}

/// The dequantized weights of constant `q` (integers with their quantization parameters).
pub fn dequantized(g: &Graph, q: ValueId) -> Result<Vec<f32>, PassError> {
    let t = g
        .const_value(q)
        .ok_or_else(|| PassError::Bug("quantized weights are not constant".into()))?;
    let params = g
        .value_type(q)
        .quant
        .clone()
        .ok_or_else(|| PassError::Bug("quantized weights have no parameters".into()))?;
    let shape = t.shape();
    let inner: usize = params.axis.map_or(1, |a| shape[a + 1..].iter().product());
    let channels = params.axis.map_or(1, |a| shape[a]);
    Ok(t.to_i64_vec()
        .map_err(PassError::Bug)?
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (s, zp) = params.channel((i / inner.max(1)) % channels.max(1));
            (v as f32 - zp as f32) * s
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(text: &str) -> Graph {
        qlift_ir::text::parse(text).unwrap()
    }

    #[test]
    fn gemm_layouts_and_columns() {
        let g = graph(
            "graph t(%x: f32[N,3]) -> (%y) {
              %w = const f32[3,2] [1, 2, 3, 4, 5, 6]
              %y = Gemm(%x, %w, _) {alpha=1.0, beta=1.0, transA=0, transB=0} : f32[N,2]
            }",
        );
        let node = g.find_value("y").unwrap().node;
        let (l, w) = float_layer(&g, node).unwrap();
        assert_eq!((l.rows, l.row_len, l.channel_axis), (2, 3, 1));
        assert_eq!(l.row(w.as_f32().unwrap(), 1), vec![2.0, 4.0, 6.0]);
        let x = Tensor::from_f32(&[2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let (cols, n) = l.columns(&x, 0).unwrap();
        assert_eq!((n, cols), (2, vec![1., 4., 2., 5., 3., 6.]));
    }

    #[test]
    fn depthwise_im2col_reads_padding_as_zero() {
        let g = graph(
            "graph t(%x: f32[N,2,2,2]) -> (%y) {
              %w = const f32[2,1,3,3] [1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]
              %y = Conv(%x, %w, _) {dilations=[1, 1], group=2, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]} : f32[N,2,2,2]
            }",
        );
        let node = g.find_value("y").unwrap().node;
        let (l, _) = float_layer(&g, node).unwrap();
        assert_eq!((l.rows, l.row_len, l.taps, l.groups), (2, 9, 9, 2));
        assert_eq!(l.in_channel(1, 4), 1);
        let x = Tensor::from_f32(&[1, 2, 2, 2], (1..=8).map(|v| v as f32).collect());
        let (cols, n) = l.columns(&x, 1).unwrap();
        assert_eq!(n, 4);
        // The centre tap reads channel 1 as it is; the top-left tap reads it shifted.
        assert_eq!(&cols[4 * 4..5 * 4], &[5., 6., 7., 8.]);
        assert_eq!(&cols[0..4], &[0., 0., 0., 5.]);
    }

    #[test]
    fn picked_columns_are_those_of_the_whole_im2col() {
        // Strided, dilated, padded, two groups, two samples: every index path of columns_at.
        let weights: Vec<String> = (0..48).map(|v| v.to_string()).collect();
        let g = graph(&format!(
            "graph t(%x: f32[N,4,5,6]) -> (%y) {{
              %w = const f32[4,2,3,2] [{}]
              %y = Conv(%x, %w, _) {{dilations=[2, 1], group=2, kernel_shape=[3, 2], pads=[2, 1, 1, 0], strides=[1, 2]}} : f32[N,4,4,3]
            }}",
            weights.join(", ")
        ));
        let node = g.find_value("y").unwrap().node;
        let (l, _) = float_layer(&g, node).unwrap();
        let x = Tensor::from_f32(&[2, 4, 5, 6], (0..240).map(|v| v as f32 - 100.0).collect());
        let picks = [0, 5, 7, 12, 23];
        for group in 0..2 {
            let (all, n) = l.columns(&x, group).unwrap();
            assert_eq!(n, l.column_count(&x).unwrap());
            let some = l.columns_at(&x, group, &picks).unwrap();
            for e in 0..l.row_len {
                let want: Vec<f32> = picks.iter().map(|&j| all[e * n + j]).collect();
                assert_eq!(&some[e * picks.len()..][..picks.len()], &want[..]);
            }
        }
        let past = l.column_count(&x).unwrap();
        assert!(l.columns_at(&x, 0, &[past]).is_none());
    }
}
