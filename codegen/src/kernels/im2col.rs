//! The shape of an N-d convolution as its node gives it, and where each tap reads its
//! input: what the im2col gathers of the float and integer product forms are built from.

use super::Kernel;
use qlift_ir::{DType, OpKind};

/// Whether `k` is a float Conv the FMA forms (dense and depthwise) compile: f32 operands,
/// constant f32 weights (and bias), whose values they pack at compile time, and AVX2 with
/// FMA on the target.
pub(super) fn fma_float_conv(k: &Kernel) -> Result<bool, String> {
    if k.op.kind != OpKind::Conv || k.wide.is_none() || !k.target_has("has_fma") {
        return Ok(false);
    }
    let (x, w, y) = (k.input(0)?, k.input(1)?, k.output(0));
    let floats = [x.ty.dtype, w.ty.dtype, y.ty.dtype]
        .iter()
        .all(|&d| d == DType::F32);
    let bias_fits = k
        .optional(2)
        .is_none_or(|b| b.constant.is_some() && b.ty.dtype == DType::F32);
    Ok(floats && w.constant.is_some() && bias_fits)
}

/// A convolution `[N, C, spatial…] ⊛ [M, C/group, kernel…] → [N, M, out…]`.
pub(super) struct ConvShape {
    /// Input channels, output channels, groups, and channels of each per group.
    pub channels: usize,
    pub m: usize,
    pub group: usize,
    pub cg: usize,
    pub mg: usize,
    /// Elements of one input channel; taps of one output (`cg` × kernel positions);
    /// output positions.
    pub in_count: usize,
    pub kg: usize,
    pub p: usize,
    /// Spatial extents of the input, the kernel and the output; the attributes per
    /// spatial axis (`pads`: the starts, then the ends).
    pub in_sp: Vec<usize>,
    pub kernel: Vec<usize>,
    pub out_sp: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads: Vec<usize>,
}

impl ConvShape {
    /// The shape of the convolution node `k` compiles (operands 0 and 1, result 0).
    pub(super) fn of(k: &Kernel) -> Result<ConvShape, String> {
        let (xd, wd, yd) = (k.input(0)?.dims(), k.input(1)?.dims(), k.output(0).dims());
        if xd.len() < 3 || wd.len() != xd.len() || yd.len() != xd.len() {
            return Err(
                "a convolution needs operands of equal rank with a spatial axis".to_string(),
            );
        }
        let attrs = &k.op.attrs;
        let group = usize::try_from(attrs.int("group")?)
            .map_err(|e| e.to_string())?
            .max(1);
        let (channels, m) = (xd[1], wd[0]);
        let (cg, mg) = (channels / group, m / group);
        let (in_sp, kernel, out_sp) = (xd[2..].to_vec(), wd[2..].to_vec(), yd[2..].to_vec());
        Ok(ConvShape {
            channels,
            m,
            group,
            cg,
            mg,
            in_count: in_sp.iter().product(),
            kg: cg * kernel.iter().product::<usize>(),
            p: out_sp.iter().product(),
            in_sp,
            kernel,
            out_sp,
            strides: attrs.usizes("strides")?,
            dilations: attrs.usizes("dilations")?,
            pads: attrs.usizes("pads")?,
        })
    }

    /// The im2col offsets of one group (see [`im2col_offsets`]).
    pub(super) fn offsets(&self) -> Vec<i32> {
        im2col_offsets(
            &self.in_sp,
            &self.kernel,
            &self.out_sp,
            (&self.strides, &self.dilations, &self.pads),
            self.cg,
        )
    }
}

/// Row-major positions of a box of `extents`.
pub(super) fn positions(extents: &[usize]) -> Vec<Vec<usize>> {
    let count: usize = extents.iter().product();
    (0..count)
        .map(|mut i| {
            let mut p = vec![0; extents.len()];
            for a in (0..extents.len()).rev() {
                p[a] = i % extents[a];
                i /= extents[a];
            }
            p
        })
        .collect()
}

/// im2col offsets of a convolution over `cg` channels of spatial extent `in_sp`: for each
/// output position (row-major over `out_sp`) and tap (channel, then kernel position), the
/// input element it reads within the group's channels, or -1 in the padding.
fn im2col_offsets(
    in_sp: &[usize],
    kernel: &[usize],
    out_sp: &[usize],
    (strides, dilations, pads): (&[usize], &[usize], &[usize]),
    cg: usize,
) -> Vec<i32> {
    let r = in_sp.len();
    let in_count: usize = in_sp.iter().product();
    let mut in_strides = vec![1usize; r];
    for a in (0..r.saturating_sub(1)).rev() {
        in_strides[a] = in_strides[a + 1] * in_sp[a + 1];
    }
    let kernel_positions = positions(kernel);
    let mut taps =
        Vec::with_capacity(out_sp.iter().product::<usize>() * cg * kernel_positions.len());
    for opos in positions(out_sp) {
        for c in 0..cg {
            for kpos in &kernel_positions {
                let mut offset = Some(c * in_count);
                for a in 0..r {
                    let i = (opos[a] * strides[a] + kpos[a] * dilations[a]) as i64 - pads[a] as i64;
                    if i < 0 || i >= in_sp[a] as i64 {
                        offset = None;
                        break;
                    }
                    offset = offset.map(|o| o + i as usize * in_strides[a]);
                }
                taps.push(offset.map_or(-1, |o| i32::try_from(o).unwrap_or(-1)));
            }
        }
    }
    taps
}
