//! What the 2-D integer convolution emitters (direct, wide, depthwise) read of a QConv
//! node, checked once: u8 activations into an 8-bit result, rank-4 operands, and a window
//! that stays within the padded input plane. Each emitter then adds its own conditions
//! and reads the shared geometry (taps, groups, the padded planes) from here.

use super::planes::Padded;
use super::Kernel;
use qlift_ir::fixed_point::Requant;
use qlift_ir::{DType, OpKind};

/// What a QConv's results need of its quantization: the input zero point (the padding's
/// fill), the per-channel requantization of the products, and whether results are i8.
pub(super) struct ConvRequant {
    pub zx: i32,
    pub rq: Requant,
    pub signed: bool,
}

/// The shapes and attributes of a 2-D QConv, NCHW.
#[derive(Clone, Copy, Debug)]
pub(super) struct QConv2d {
    /// Input channels, rows, columns.
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Output channels, and input channels per group as the weights hold them.
    pub m: usize,
    pub cg: usize,
    /// Kernel rows and columns; output rows and columns.
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    /// Strides and dilations (rows, columns).
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    /// Top and left padding; the padded plane's rows and columns.
    pub pt: usize,
    pub pl: usize,
    pub hp: usize,
    pub wp: usize,
    pub group: usize,
}

impl QConv2d {
    /// The geometry when the node is a 2-D QConv of u8 activations into an 8-bit result
    /// with non-empty extents, strides and dilations of at least 1, and a last output whose
    /// window lies within the padded plane (shape inference guarantees it for a verified
    /// graph; the emitters index by it); `None` otherwise.
    pub(super) fn of(k: &Kernel) -> Result<Option<QConv2d>, String> {
        if k.op.kind != OpKind::QConv
            || k.input(0)?.ty.dtype != DType::U8
            || !matches!(k.output(0).ty.dtype, DType::U8 | DType::I8)
        {
            return Ok(None);
        }
        Self::of_any(k)
    }

    /// [`Self::of`] for the emitters that also take an int16 layer's i16 activations and
    /// results (the wide form): u8 or i16 activations into a u8, i8 or i16 result.
    pub(super) fn of_wide(k: &Kernel) -> Result<Option<QConv2d>, String> {
        if k.op.kind != OpKind::QConv
            || !matches!(k.input(0)?.ty.dtype, DType::U8 | DType::I16)
            || !matches!(k.output(0).ty.dtype, DType::U8 | DType::I8 | DType::I16)
        {
            return Ok(None);
        }
        Self::of_any(k)
    }

    /// The geometry whatever the element types.
    fn of_any(k: &Kernel) -> Result<Option<QConv2d>, String> {
        let (x, w, y) = (k.input(0)?, k.input(1)?, k.output(0));
        let (xd, wd, yd) = (x.dims(), w.dims(), y.dims());
        if xd.len() != 4 || wd.len() != 4 || yd.len() != 4 {
            return Ok(None);
        }
        let attrs = &k.op.attrs;
        let (strides, dilations, pads) = (
            attrs.usizes("strides")?,
            attrs.usizes("dilations")?,
            attrs.usizes("pads")?,
        );
        let Ok(group) = usize::try_from(attrs.int("group")?) else {
            return Ok(None);
        };
        if strides.len() != 2 || dilations.len() != 2 || pads.len() != 4 || group == 0 {
            return Ok(None);
        }
        let g = QConv2d {
            c: xd[1],
            h: xd[2],
            w: xd[3],
            m: wd[0],
            cg: wd[1],
            kh: wd[2],
            kw: wd[3],
            oh: yd[2],
            ow: yd[3],
            sh: strides[0],
            sw: strides[1],
            dh: dilations[0],
            dw: dilations[1],
            pt: pads[0],
            pl: pads[1],
            hp: xd[2] + pads[0] + pads[2],
            wp: xd[3] + pads[1] + pads[3],
            group,
        };
        let sane = yd[1] == g.m
            && [
                g.c, g.m, g.cg, g.kh, g.kw, g.oh, g.ow, g.sh, g.sw, g.dh, g.dw,
            ]
            .iter()
            .all(|&n| n > 0)
            && g.c % group == 0
            && g.m % group == 0
            && g.cg == g.c / group;
        let fits = sane
            && (g.oh - 1) * g.sh + (g.kh - 1) * g.dh < g.hp
            && (g.ow - 1) * g.sw + (g.kw - 1) * g.dw < g.wp;
        Ok(fits.then_some(g))
    }

    /// The requantization of the node's `m` output channels (with its fused activation), or
    /// `None` when an operand is not quantized.
    pub(super) fn requant(&self, k: &Kernel) -> Result<Option<ConvRequant>, String> {
        let (Some(xq), Some(wq)) = (k.input(0)?.ty.quant.clone(), k.input(1)?.ty.quant.clone())
        else {
            return Ok(None);
        };
        let y = &k.output(0).ty;
        Ok(Some(ConvRequant {
            zx: xq.channel(0).1,
            rq: Requant::for_product(&xq, &wq, self.m, y, k.op.fused_activation()?)?,
            signed: y.dtype == DType::I8,
        }))
    }

    /// Kernel taps (rows × columns).
    pub(super) fn taps(&self) -> usize {
        self.kh * self.kw
    }

    /// Output channels per group.
    pub(super) fn mg(&self) -> usize {
        self.m / self.group
    }

    /// Whether each channel is convolved alone (one group per channel, one output each).
    pub(super) fn depthwise(&self) -> bool {
        self.group == self.c && self.m == self.c && self.cg == 1
    }

    /// Rows and columns exchanged: for planes and kernels of one column, the same memory
    /// (the wide form takes a convolution along rows only this way, whole vectors a row).
    pub(super) fn transposed(self) -> QConv2d {
        QConv2d {
            h: self.w,
            w: self.h,
            kh: self.kw,
            kw: self.kh,
            oh: self.ow,
            ow: self.oh,
            sh: self.sw,
            sw: self.sh,
            dh: self.dw,
            dw: self.dh,
            pt: self.pl,
            pl: self.pt,
            hp: self.wp,
            wp: self.hp,
            ..self
        }
    }

    /// The copy of `planes` input planes into this convolution's padded plane (the forms
    /// that read windows with vector loads pad a copy rather than test the borders).
    pub(super) fn padded(&self, planes: usize) -> Padded {
        Padded {
            planes,
            h: self.h,
            w: self.w,
            hp: self.hp,
            wp: self.wp,
            top: self.pt,
            left: self.pl,
        }
    }
}
