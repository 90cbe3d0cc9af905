//! ConvTranspose: the gradient of a convolution with respect to its input, used as a
//! learned upsampling.
//!
//! Input `x` is `[N, C, spatial...]`, weights `w` are `[C, M/group, kernel...]`, the result
//! `[N, M, out...]`. Every input element scatters into the result through every kernel tap:
//! `y[n, m, i·stride + k·dilation − pad_begin] += x[n, c, i] · w[c, m', k]` (taps landing
//! outside the result are dropped), then the bias is added per output channel.
//!
//! Canonical attributes: `kernel_shape`, `strides`, `dilations`, `group`, and `pads` as
//! begin pads then end pads, **signed**: the importer folds ONNX's `output_padding`,
//! `output_shape` and `auto_pad` into them (a negative end pad extends the result with
//! positions no tap reaches, which hold the bias), so that each result extent is
//! [`conv_transpose_extent`].

use super::nn::{add_per_channel, f32_only, widen};
use super::{EvalCtx, InferCtx};
use crate::{Attrs, DType, Dim, Shape, Tensor, TensorData, TensorType};

/// The result extent of a transposed convolution along one axis:
/// `stride·(input − 1) + dilation·(kernel − 1) + 1 − pad_begin − pad_end`, or `None` when it
/// is not positive or overflows.
pub fn conv_transpose_extent(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: i64,
    pad_end: i64,
) -> Option<usize> {
    let span =
        (stride as i128) * (input as i128 - 1) + (dilation as i128) * (kernel as i128 - 1) + 1;
    let out = span - pad_begin as i128 - pad_end as i128;
    usize::try_from(out)
        .ok()
        .filter(|&o| o > 0 && input > 0 && kernel > 0)
}

/// The result coordinate input coordinate `i` reaches through kernel tap `k`:
/// `i·stride + k·dilation − pad_begin` (in i128, so that no attribute overflows it).
pub fn tap_position(i: usize, k: usize, stride: usize, dilation: usize, pad_begin: i64) -> i128 {
    i as i128 * stride as i128 + k as i128 * dilation as i128 - pad_begin as i128
}

/// A checked transposed-convolution geometry (everything but the spatial extents).
pub(crate) struct Geometry {
    pub in_channels: usize,
    pub out_channels: usize,
    pub group: usize,
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads: Vec<i64>,
}

impl Geometry {
    /// Checks `in_channels` input channels and weights `w` against the attributes.
    pub(crate) fn new(in_channels: usize, w: &[usize], attrs: &Attrs) -> Result<Geometry, String> {
        if w.len() < 3 {
            return Err(format!("weights {w:?} must be [C, M/group, kernel...]"));
        }
        let r = w.len() - 2;
        let group = usize::try_from(attrs.int("group")?)
            .ok()
            .filter(|&g| g >= 1)
            .ok_or("group must be at least 1")?;
        let (kernel, strides, dilations) = (
            attrs.usizes("kernel_shape")?,
            attrs.usizes("strides")?,
            attrs.usizes("dilations")?,
        );
        let pads = attrs.ints("pads")?.to_vec();
        if kernel.len() != r || strides.len() != r || dilations.len() != r || pads.len() != 2 * r {
            return Err(format!("kernel_shape {kernel:?}, strides {strides:?}, dilations {dilations:?}, pads {pads:?} do not fit {r} spatial axes"));
        }
        if strides.contains(&0) || dilations.contains(&0) {
            return Err("strides and dilations must be at least 1".to_string());
        }
        if kernel != w[2..] {
            return Err(format!(
                "kernel_shape {kernel:?} disagrees with weights {w:?}"
            ));
        }
        if in_channels != w[0] || !in_channels.is_multiple_of(group) {
            return Err(format!("input has {in_channels} channels, weights {w:?} with group {group} expect {} (divisible by group)", w[0]));
        }
        let out_channels = w[1].checked_mul(group).ok_or("too many channels")?;
        Ok(Geometry {
            in_channels,
            out_channels,
            group,
            kernel,
            strides,
            dilations,
            pads,
        })
    }

    /// The result extent along spatial axis `a` for an input extent `input`.
    pub(crate) fn out_extent(&self, a: usize, input: usize) -> Result<usize, String> {
        let r = self.kernel.len();
        conv_transpose_extent(
            input,
            self.kernel[a],
            self.strides[a],
            self.dilations[a],
            self.pads[a],
            self.pads[a + r],
        )
        .ok_or_else(|| {
            format!(
                "the result would have no elements along axis {} (pads {:?})",
                a + 2,
                self.pads
            )
        })
    }
}

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    f32_only(x, "the input")?;
    f32_only(w, "the weights")?;
    let wd = w
        .shape
        .as_fixed()
        .ok_or("weights must have a static shape")?;
    let dims = x.shape.dims();
    if dims.len() != wd.len() || dims.len() < 3 || dims[1..].contains(&Dim::Batch) {
        return Err(format!("input {} must be [N, C, spatial...] like weights {wd:?}, with the batch on axis 0 only", x.shape));
    }
    // Unknown channel counts and extents are checked once bound.
    let geom = Geometry::new(dims[1].fixed().unwrap_or(wd[0]), &wd, &cx.op.attrs)?;
    let mut out = vec![dims[0], Dim::Fixed(geom.out_channels)];
    for (a, d) in dims[2..].iter().enumerate() {
        out.push(match d.fixed() {
            Some(n) => Dim::Fixed(geom.out_extent(a, n)?),
            None => Dim::Dyn,
        });
    }
    if let Some(b) = cx.inputs.get(2).copied().flatten() {
        if b.dtype != DType::F32
            || b.quant.is_some()
            || b.shape.dims() != [Dim::Fixed(geom.out_channels)]
        {
            return Err(format!(
                "bias must be f32[{}], found {}",
                geom.out_channels,
                crate::text::type_to_string(b)
            ));
        }
    }
    Ok(vec![TensorType::new(DType::F32, Shape(out))])
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    if x.shape().len() != w.shape().len() || x.shape().len() < 3 {
        return Err(format!(
            "input {:?} and weights {:?} must have the same rank, at least 3",
            x.shape(),
            w.shape()
        ));
    }
    let g = Geometry::new(x.shape()[1], w.shape(), &cx.op.attrs)?;
    let (xv, wv) = (widen(x)?, widen(w)?);
    let batch = x.shape()[0];
    let r = g.kernel.len();
    let in_spatial = &x.shape()[2..];
    let out = in_spatial
        .iter()
        .enumerate()
        .map(|(a, &n)| g.out_extent(a, n))
        .collect::<Result<Vec<_>, _>>()?;
    let (in_count, out_count, kernel_count) = (
        in_spatial.iter().product::<usize>(),
        out.iter().product::<usize>(),
        g.kernel.iter().product::<usize>(),
    );
    let (cg, mg) = (g.in_channels / g.group, g.out_channels / g.group);
    let in_positions = super::broadcast::positions(in_spatial);
    let kernel_positions = super::broadcast::positions(&g.kernel);
    let out_strides = super::broadcast::strides(&out);
    // For every (input position, kernel tap), the result offset it lands on, if inside.
    let mut taps: Vec<Vec<Option<usize>>> = Vec::with_capacity(in_count);
    for ipos in &in_positions {
        taps.push(
            kernel_positions
                .iter()
                .map(|k| {
                    let mut offset = 0usize;
                    for a in 0..r {
                        let o =
                            tap_position(ipos[a], k[a], g.strides[a], g.dilations[a], g.pads[a]);
                        if o < 0 || o >= out[a] as i128 {
                            return None;
                        }
                        offset += o as usize * out_strides[a];
                    }
                    Some(offset)
                })
                .collect(),
        );
    }
    let mut y = vec![0.0f64; batch * g.out_channels * out_count];
    for n in 0..batch {
        for c in 0..g.in_channels {
            let group = c / cg;
            for (i, row) in taps.iter().enumerate() {
                let xval = xv[(n * g.in_channels + c) * in_count + i];
                for m in 0..mg {
                    let ybase = (n * g.out_channels + group * mg + m) * out_count;
                    let wbase = (c * mg + m) * kernel_count;
                    for (k, tap) in row.iter().enumerate() {
                        if let Some(o) = tap {
                            y[ybase + o] += xval * wv[wbase + k];
                        }
                    }
                }
            }
        }
    }
    if let Some(b) = cx.inputs.get(2).copied().flatten() {
        add_per_channel(&mut y, &widen(b)?, out_count)?;
    }
    let mut shape = vec![batch, g.out_channels];
    shape.extend(&out);
    Tensor::new(
        DType::F32,
        shape,
        TensorData::F32(y.into_iter().map(|v| v as f32).collect()),
    )
    .map(|t| vec![t])
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::run_op;
    use crate::{AttrValue, Attrs, OpKind, Tensor};

    fn attrs(k: &[i64], s: &[i64], p: &[i64], group: i64) -> Attrs {
        Attrs::new()
            .with("kernel_shape", AttrValue::Ints(k.to_vec()))
            .with("strides", AttrValue::Ints(s.to_vec()))
            .with("dilations", AttrValue::Ints(vec![1; k.len()]))
            .with("pads", AttrValue::Ints(p.to_vec()))
            .with("group", AttrValue::Int(group))
    }

    #[test]
    fn scatters_through_every_tap() {
        // ONNX test_convtranspose_1d: x = [0, 1, 2], w = ones(2 channels, 3 taps).
        let x = Tensor::from_f32(&[1, 1, 3], vec![0., 1., 2.]);
        let w = Tensor::from_f32(&[1, 2, 3], vec![1.; 6]);
        let y = run_op(
            OpKind::ConvTranspose,
            attrs(&[3], &[1], &[0, 0], 1),
            vec![(x.clone(), None), (w.clone(), None)],
            None,
        )
        .unwrap();
        assert_eq!(y.shape(), &[1, 2, 5]);
        assert_eq!(
            y.as_f32().unwrap(),
            &[0., 1., 3., 3., 2., 0., 1., 3., 3., 2.]
        );
        // Stride 2, a begin pad of 1 and an end pad of −1 (one extra result element).
        let b = Tensor::from_f32(&[2], vec![10., 20.]);
        let y = run_op(
            OpKind::ConvTranspose,
            attrs(&[3], &[2], &[1, -1], 1),
            vec![(x, None), (w, None), (b, None)],
            None,
        )
        .unwrap();
        assert_eq!(y.shape(), &[1, 2, 7]);
        assert_eq!(
            &y.as_f32().unwrap()[..7],
            &[10., 11., 11., 13., 12., 12., 10.]
        );
    }
}
