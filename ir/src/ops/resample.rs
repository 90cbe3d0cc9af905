//! Resampling and rearranging ops: Resize (nearest, linear and cubic interpolation with
//! every ONNX coordinate transformation, antialiasing, `axes` and aspect-ratio policies),
//! DepthToSpace and SpaceToDepth.
//!
//! Resize is separable: along each resized axis, every result position reads a few source
//! positions ("taps") with weights that depend only on that axis. [`resize_plan`] computes
//! those per-axis tables once from the concrete extents and the scales or sizes; the
//! interpreter and the JIT both evaluate the result from the same tables, in the same order
//! (nested sums, outer axis first, in f64), so that integer results agree exactly.
//!
//! The tables follow the ONNX reference implementation (`onnx/reference/ops/op_resize.py`)
//! except where the operator's specification and ONNX Runtime agree with each other against
//! it: `align_corners` and `tf_crop_and_resize` divide by the integer result length minus
//! one (the reference divides by `scale · length - 1`, which differs when the scaled length
//! is fractional), and `pytorch_half_pixel` maps a result of length 1 to coordinate 0 (the
//! reference uses -0.5).

use super::broadcast::{positions, strides};
use super::index::{check_elements, take};
use super::{EvalCtx, InferCtx};
use crate::{Attrs, DType, Dim, OpKind, Shape, SymInt, Tensor, TensorData, TensorType};

/// Longest extent a Resize may produce along one axis: scales and sizes are data, checked
/// before any table or result is allocated (the whole result is checked against the
/// element limit too).
const MAX_EXTENT: f64 = (1u64 << 31) as f64;

/// How result positions map to source coordinates (ONNX `coordinate_transformation_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transform {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    TfHalfPixelForNn,
    AlignCorners,
    Asymmetric,
    TfCropAndResize,
}

/// The interpolation (ONNX `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interpolation {
    Nearest,
    Linear,
    Cubic,
}

/// How nearest mode rounds a source coordinate (ONNX `nearest_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rounding {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// How sizes are reconciled with the input's aspect ratio (ONNX `keep_aspect_ratio_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    Stretch,
    NotLarger,
    NotSmaller,
}

/// Resize's canonical attributes, validated against the operand's rank.
struct ResizeAttrs {
    mode: Interpolation,
    transform: Transform,
    rounding: Rounding,
    cubic_a: f64,
    exclude_outside: bool,
    extrapolation: f64,
    antialias: bool,
    policy: Policy,
    /// The axes scales, sizes and roi list values for, in their order (distinct).
    axes: Vec<usize>,
}

impl ResizeAttrs {
    fn of(attrs: &Attrs, rank: usize) -> Result<ResizeAttrs, String> {
        let choice = |name: &str, options: &[&str]| -> Result<usize, String> {
            let v = attrs.str(name)?;
            options
                .iter()
                .position(|o| *o == v)
                .ok_or_else(|| format!("{name} `{v}` is not one of {}", options.join(", ")))
        };
        let mode = [
            Interpolation::Nearest,
            Interpolation::Linear,
            Interpolation::Cubic,
        ][choice("mode", &["nearest", "linear", "cubic"])?];
        let transform = [
            Transform::HalfPixel,
            Transform::HalfPixelSymmetric,
            Transform::PytorchHalfPixel,
            Transform::TfHalfPixelForNn,
            Transform::AlignCorners,
            Transform::Asymmetric,
            Transform::TfCropAndResize,
        ][choice(
            "coordinate_transformation_mode",
            &[
                "half_pixel",
                "half_pixel_symmetric",
                "pytorch_half_pixel",
                "tf_half_pixel_for_nn",
                "align_corners",
                "asymmetric",
                "tf_crop_and_resize",
            ],
        )?];
        let rounding = [
            Rounding::RoundPreferFloor,
            Rounding::RoundPreferCeil,
            Rounding::Floor,
            Rounding::Ceil,
        ][choice(
            "nearest_mode",
            &["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"],
        )?];
        let policy = [Policy::Stretch, Policy::NotLarger, Policy::NotSmaller][choice(
            "keep_aspect_ratio_policy",
            &["stretch", "not_larger", "not_smaller"],
        )?];
        let antialias = attrs.int("antialias")? != 0;
        if antialias && mode == Interpolation::Nearest {
            return Err("antialias applies to linear and cubic modes, not nearest".to_string());
        }
        let mut axes = Vec::new();
        for &a in attrs.ints("axes")? {
            let a = usize::try_from(a)
                .ok()
                .filter(|&a| a < rank)
                .ok_or_else(|| format!("axis {a} is out of range [0, {rank})"))?;
            if axes.contains(&a) {
                return Err(format!("axis {a} is listed twice"));
            }
            axes.push(a);
        }
        Ok(ResizeAttrs {
            mode,
            transform,
            rounding,
            cubic_a: attrs.float("cubic_coeff_a")? as f64,
            exclude_outside: attrs.int("exclude_outside")? != 0,
            extrapolation: attrs.float("extrapolation_value")? as f64,
            antialias,
            policy,
            axes,
        })
    }

    /// The result extent of an axis of extent `n` under `scale` (ONNX: `floor(n · scale)`).
    fn scaled_extent(&self, axis: usize, n: usize, scale: f64) -> Result<usize, String> {
        check_scale(axis, scale)?;
        checked_extent(axis, n, scale, (scale * n as f64).floor())
    }

    /// The f64 scale per axis (1 on the axes not listed) and the result extents, from
    /// concrete extents and constant scales or sizes, with the aspect-ratio policy applied.
    fn extents(
        &self,
        dims: &[usize],
        scales: Option<&[f32]>,
        sizes: Option<&[i64]>,
    ) -> Result<(Vec<f64>, Vec<usize>), String> {
        let mut scale = vec![1.0f64; dims.len()];
        let mut out = dims.to_vec();
        match (scales, sizes) {
            (Some(s), None) => {
                if s.len() != self.axes.len() {
                    return Err(format!("{} scales for {} axes", s.len(), self.axes.len()));
                }
                for (&a, &v) in self.axes.iter().zip(s) {
                    scale[a] = v as f64;
                    out[a] = self.scaled_extent(a, dims[a], scale[a])?;
                }
            }
            (None, Some(s)) => {
                if s.len() != self.axes.len() {
                    return Err(format!("{} sizes for {} axes", s.len(), self.axes.len()));
                }
                for (&a, &v) in self.axes.iter().zip(s) {
                    if v <= 0 || v as f64 > MAX_EXTENT {
                        return Err(format!("size {v} for axis {a} is not in [1, {MAX_EXTENT}]"));
                    }
                    if dims[a] == 0 {
                        return Err(format!("cannot resize the empty axis {a} to {v}"));
                    }
                    out[a] = v as usize;
                    scale[a] = v as f64 / dims[a] as f64;
                }
                if self.policy != Policy::Stretch {
                    let ratios = self.axes.iter().map(|&a| scale[a]);
                    let s = if self.policy == Policy::NotLarger {
                        ratios.fold(f64::INFINITY, f64::min)
                    } else {
                        ratios.fold(0.0, f64::max)
                    };
                    for &a in &self.axes {
                        scale[a] = s;
                        // Rounded half up, as the specification states.
                        out[a] = checked_extent(a, dims[a], s, (s * dims[a] as f64 + 0.5).floor())?;
                    }
                }
            }
            _ => return Err("Resize takes exactly one of scales and sizes".to_string()),
        }
        Ok((scale, out))
    }

    /// Source coordinate of result position `y` on an axis of `n` source and `m` result
    /// positions under `scale`, `roi` the axis' crop window (tf_crop_and_resize).
    fn coordinate(&self, y: usize, n: usize, m: usize, scale: f64, roi: (f64, f64)) -> f64 {
        let (y, nf, mf) = (y as f64, n as f64, m as f64);
        match self.transform {
            Transform::HalfPixel => (y + 0.5) / scale - 0.5,
            Transform::HalfPixelSymmetric => {
                let adjustment = mf / (scale * nf);
                let offset = nf / 2.0 * (1.0 - adjustment);
                offset + (y + 0.5) / scale - 0.5
            }
            Transform::PytorchHalfPixel if m > 1 => (y + 0.5) / scale - 0.5,
            Transform::PytorchHalfPixel => 0.0,
            Transform::TfHalfPixelForNn => (y + 0.5) / scale,
            Transform::AlignCorners if m > 1 => y * (nf - 1.0) / (mf - 1.0),
            Transform::AlignCorners => 0.0,
            Transform::Asymmetric => y / scale,
            Transform::TfCropAndResize if m > 1 => {
                y * (roi.1 - roi.0) * (nf - 1.0) / (mf - 1.0) + roi.0 * (nf - 1.0)
            }
            Transform::TfCropAndResize => 0.5 * (roi.0 + roi.1) * (nf - 1.0),
        }
    }

    /// The source index nearest mode reads at coordinate `x` (before clamping).
    fn nearest(&self, x: f64) -> i64 {
        let f = x.floor();
        let d = x - f;
        let up = match self.rounding {
            Rounding::RoundPreferFloor => d > 0.5,
            Rounding::RoundPreferCeil => d >= 0.5,
            Rounding::Floor => false,
            Rounding::Ceil => d > 0.0,
        };
        f as i64 + i64::from(up)
    }

    /// The weights of the taps `f + i` for `i` in `first..first + weights.len()` at
    /// fractional offset `r` in (0, 1] from `f` (linear and cubic; antialiased ones widen
    /// the kernel by 1/scale when shrinking and normalize it).
    fn kernel(&self, r: f64, scale: f64) -> (i64, Vec<f64>) {
        let a = self.cubic_a;
        if !self.antialias {
            return match self.mode {
                Interpolation::Cubic => (
                    -1,
                    vec![
                        ((a * (r + 1.0) - 5.0 * a) * (r + 1.0) + 8.0 * a) * (r + 1.0) - 4.0 * a,
                        ((a + 2.0) * r - (a + 3.0)) * r * r + 1.0,
                        ((a + 2.0) * (1.0 - r) - (a + 3.0)) * (1.0 - r) * (1.0 - r) + 1.0,
                        ((a * ((1.0 - r) + 1.0) - 5.0 * a) * ((1.0 - r) + 1.0) + 8.0 * a)
                            * ((1.0 - r) + 1.0)
                            - 4.0 * a,
                    ],
                ),
                _ => (0, vec![1.0 - r, r]),
            };
        }
        let s = scale.min(1.0);
        let (support, f): (f64, &dyn Fn(f64) -> f64) = match self.mode {
            Interpolation::Cubic => (2.0, &|x: f64| {
                let x = x.abs();
                let (x2, x3) = (x * x, x * x * x);
                if x <= 1.0 {
                    (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
                } else if x < 2.0 {
                    a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
                } else {
                    0.0
                }
            }),
            _ => (1.0, &|x: f64| (1.0 - x.abs()).clamp(0.0, 1.0)),
        };
        let first = (-support / s).floor() as i64 + 1;
        let weights: Vec<f64> = (first..2 - first).map(|i| f((i as f64 - r) * s)).collect();
        let sum: f64 = weights.iter().sum();
        (first, weights.into_iter().map(|w| w / sum).collect())
    }

    /// The taps of one resized axis.
    fn axis_taps(
        &self,
        axis: usize,
        n: usize,
        m: usize,
        scale: f64,
        roi: (f64, f64),
    ) -> Result<AxisTaps, String> {
        if n == 0 {
            return Err(format!("cannot resize the empty axis {axis}"));
        }
        let last = n as i64 - 1;
        let mut table = AxisTaps {
            taps: 0,
            index: Vec::new(),
            weight: Vec::new(),
            outside: Vec::with_capacity(m),
        };
        for y in 0..m {
            let x = self.coordinate(y, n, m, scale, roi);
            table
                .outside
                .push(self.transform == Transform::TfCropAndResize && (x < 0.0 || x > last as f64));
            if self.mode == Interpolation::Nearest {
                table.taps = 1;
                table.index.push(self.nearest(x).clamp(0, last) as usize);
                table.weight.push(1.0);
                continue;
            }
            // Below an integer coordinate p, the window starts one further left (f = p - 1,
            // r = 1), as the reference picks its neighbours.
            let (mut f, mut r) = (x.floor(), x - x.floor());
            if r == 0.0 {
                f -= 1.0;
                r = 1.0;
            }
            let (first, mut weights) = self.kernel(r, scale);
            let f = f as i64;
            if table.taps == 0 {
                table.taps = weights.len();
                let entries = m.checked_mul(table.taps).filter(|&e| e <= MAX_TABLE).ok_or_else(|| {
                    format!("resizing axis {axis} from {n} to {m} needs {} interpolation taps per element, too many", weights.len())
                })?;
                table.index.reserve(entries);
                table.weight.reserve(entries);
            }
            if weights.len() != table.taps {
                return Err(format!(
                    "interpolation kernel of axis {axis} changes width (a bug in qlift)"
                ));
            }
            if self.exclude_outside {
                for (i, w) in weights.iter_mut().enumerate() {
                    let at = f + first + i as i64;
                    if at < 0 || at > last {
                        *w = 0.0;
                    }
                }
                let sum: f64 = weights.iter().sum();
                if sum != 0.0 {
                    weights.iter_mut().for_each(|w| *w /= sum);
                }
            }
            for (i, w) in weights.into_iter().enumerate() {
                table
                    .index
                    .push((f + first + i as i64).clamp(0, last) as usize);
                table.weight.push(w);
            }
        }
        Ok(table)
    }
}

/// A number for messages: plain when moderate, in exponent form when huge or tiny.
fn show(v: f64) -> String {
    if v == 0.0 || (1e-4..1e9).contains(&v.abs()) || !v.is_finite() {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

/// Scales are positive and finite.
fn check_scale(axis: usize, scale: f64) -> Result<(), String> {
    if scale > 0.0 && scale.is_finite() {
        Ok(())
    } else {
        Err(format!(
            "scale {} on axis {axis} must be positive and finite",
            show(scale)
        ))
    }
}

/// A result extent `m` computed from extent `n` and `scale`, within `[1, MAX_EXTENT]`.
fn checked_extent(axis: usize, n: usize, scale: f64, m: f64) -> Result<usize, String> {
    if m > MAX_EXTENT {
        return Err(format!("resizing axis {axis} of extent {n} by {} gives {} elements, above the limit of {MAX_EXTENT}", show(scale), show(m)));
    }
    if m < 1.0 && n > 0 {
        return Err(format!(
            "scale {} makes axis {axis} of extent {n} empty",
            show(scale)
        ));
    }
    Ok(m as usize)
}

/// Most entries an interpolation table may hold (antialiased shrinking widens the kernel
/// with 1/scale).
const MAX_TABLE: usize = 1 << 26;

/// One resized axis: for result position `j`, tap `t` reads source index
/// `index[j · taps + t]` (already clamped into the extent) with weight `weight[j · taps + t]`;
/// `outside[j]` marks positions whose result is the extrapolation value.
#[derive(Clone, Debug, PartialEq)]
pub struct AxisTaps {
    /// Taps per result position (1 in nearest mode).
    pub taps: usize,
    /// Source indices.
    pub index: Vec<usize>,
    /// Weights.
    pub weight: Vec<f64>,
    /// Positions outside the crop window (tf_crop_and_resize).
    pub outside: Vec<bool>,
}

/// What a Resize does on concrete extents: the result extents, and per axis its taps
/// (`None` for an axis the resize leaves as it is).
#[derive(Clone, Debug, PartialEq)]
pub struct ResizePlan {
    /// Result extents.
    pub out: Vec<usize>,
    /// Taps per axis; `None` where the axis is unchanged.
    pub axes: Vec<Option<AxisTaps>>,
    /// Nearest mode: every position copies one source element (no arithmetic).
    pub nearest: bool,
    /// The value of positions outside the crop window.
    pub extrapolation: f64,
}

/// The plan of a Resize with attributes `attrs` on an operand of extents `dims`, given its
/// roi, scales or sizes (as ONNX lists them, for the attribute `axes`); shared by the
/// interpreter and the JIT so that both index and weigh alike.
pub fn resize_plan(
    attrs: &Attrs,
    dims: &[usize],
    roi: Option<&[f32]>,
    scales: Option<&[f32]>,
    sizes: Option<&[i64]>,
) -> Result<ResizePlan, String> {
    let ra = ResizeAttrs::of(attrs, dims.len())?;
    let (scale, out) = ra.extents(dims, scales, sizes)?;
    check_elements(&out)?;
    let window = |a: usize| -> Result<(f64, f64), String> {
        match (ra.transform, roi) {
            (Transform::TfCropAndResize, Some(r)) => {
                if r.len() != 2 * ra.axes.len() {
                    return Err(format!(
                        "roi has {} values for {} axes",
                        r.len(),
                        ra.axes.len()
                    ));
                }
                Ok(match ra.axes.iter().position(|&x| x == a) {
                    Some(i) => (r[i] as f64, r[i + ra.axes.len()] as f64),
                    None => (0.0, 1.0),
                })
            }
            (Transform::TfCropAndResize, None) => {
                Err("tf_crop_and_resize needs the roi operand".to_string())
            }
            _ => Ok((0.0, 1.0)),
        }
    };
    let mut axes = Vec::with_capacity(dims.len());
    for a in 0..dims.len() {
        let roi = window(a)?;
        // An axis left as it is, as the reference skips it (no arithmetic on its values).
        let identity = out[a] == dims[a]
            && (scale[a] - 1.0).abs() <= 1e-9
            && (roi.0.abs() <= 1e-9 && (roi.1 - 1.0).abs() <= 1e-9);
        axes.push(if identity {
            None
        } else {
            Some(ra.axis_taps(a, dims[a], out[a], scale[a], roi)?)
        });
    }
    Ok(ResizePlan {
        out,
        axes,
        nearest: ra.mode == Interpolation::Nearest,
        extrapolation: ra.extrapolation,
    })
}

/// DepthToSpace and SpaceToDepth as one permutation of a 6-d view of the result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockView {
    /// The result's extents.
    pub out: Vec<usize>,
    /// The result seen as 6 axes (row-major, the same elements).
    pub view: Vec<usize>,
    /// The operand's element stride along each axis of `view`.
    pub src: Vec<usize>,
}

/// DepthToSpace and SpaceToDepth (`DCR` or `CRD`) as a [`BlockView`]: `dims` is the
/// operand's `[N, C, H, W]`; `Err` for extents the block does not divide.
pub fn block_permutation(kind: OpKind, attrs: &Attrs, dims: &[usize]) -> Result<BlockView, String> {
    let &[n, c, h, w] = dims else {
        return Err(format!("expects a 4-d operand, found rank {}", dims.len()));
    };
    let b = usize::try_from(attrs.int("blocksize")?)
        .ok()
        .filter(|&b| b > 0)
        .ok_or("blocksize must be positive")?;
    let (hw, bb) = (h * w, b.checked_mul(b).ok_or("blocksize overflows")?);
    let crd = match attrs.str("mode")? {
        "DCR" => false,
        "CRD" => true,
        m => return Err(format!("mode `{m}` is not DCR or CRD")),
    };
    Ok(match kind {
        OpKind::DepthToSpace => {
            if c % bb != 0 {
                return Err(format!(
                    "{c} channels are not a multiple of blocksize² = {bb}"
                ));
            }
            let c2 = c / bb;
            let out = vec![
                n,
                c2,
                h.checked_mul(b).ok_or("extent overflows")?,
                w.checked_mul(b).ok_or("extent overflows")?,
            ];
            // Result view [n, c2, h, b(i), w, b(j)]; source channel (i·b + j)·c2 + c' (dcr)
            // or c'·b² + i·b + j (crd).
            let (ch, i, j) = if crd {
                (bb * hw, b * hw, hw)
            } else {
                (hw, b * c2 * hw, c2 * hw)
            };
            BlockView {
                out,
                view: vec![n, c2, h, b, w, b],
                src: vec![c * hw, ch, w, i, 1, j],
            }
        }
        _ => {
            if h % b != 0 || w % b != 0 {
                return Err(format!(
                    "extents {h}x{w} are not multiples of blocksize {b}"
                ));
            }
            let (h2, w2) = (h / b, w / b);
            let out = vec![n, c.checked_mul(bb).ok_or("extent overflows")?, h2, w2];
            // Result view [n, b(i), b(j), c, h2, w2] (DCR) or [n, c, b(i), b(j), h2, w2]
            // (CRD); source (c, h'·b + i, w'·b + j).
            if crd {
                BlockView {
                    out,
                    view: vec![n, c, b, b, h2, w2],
                    src: vec![c * hw, hw, w, 1, b * w, b],
                }
            } else {
                BlockView {
                    out,
                    view: vec![n, b, b, c, h2, w2],
                    src: vec![c * hw, w, 1, hw, b * w, b],
                }
            }
        }
    })
}

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    let x = cx.input(0)?;
    let dims = x.shape.dims();
    let (shape, moved_axes) = match cx.op.kind {
        OpKind::Resize => resize_shape(cx, x)?,
        kind => {
            if dims.len() != 4 {
                return Err(format!("expects a 4-d operand, found {}", x.shape));
            }
            let b = cx.op.attrs.int("blocksize")?;
            if b <= 0 {
                return Err(format!("blocksize {b} must be positive"));
            }
            if !matches!(cx.op.attrs.str("mode")?, "DCR" | "CRD") {
                return Err(format!(
                    "mode `{}` is not DCR or CRD",
                    cx.op.attrs.str("mode")?
                ));
            }
            // With known extents (the batch, axis 0, is not moved) the permutation checks
            // divisibility and gives the result.
            let fixed: Option<Vec<usize>> = dims
                .iter()
                .enumerate()
                .map(|(a, d)| if a == 0 { Some(1) } else { d.fixed() })
                .collect();
            let out = match fixed {
                Some(f) => {
                    let mut out: Vec<Dim> = block_permutation(kind, &cx.op.attrs, &f)?
                        .out
                        .into_iter()
                        .map(Dim::Fixed)
                        .collect();
                    out[0] = dims[0];
                    out
                }
                None => vec![dims[0], Dim::Dyn, Dim::Dyn, Dim::Dyn],
            };
            (Shape(out), vec![1, 2, 3])
        }
    };
    let quant = match &x.quant {
        Some(q) if q.axis.is_some_and(|a| moved_axes.contains(&a)) => {
            return Err("the per-channel quantization axis would be resampled".to_string());
        }
        q => q.clone(),
    };
    if cx.op.kind == OpKind::Resize
        && x.dtype == DType::Bool
        && ResizeAttrs::of(&cx.op.attrs, dims.len())?.mode != Interpolation::Nearest
    {
        return Err("booleans can only be resized in nearest mode".to_string());
    }
    Ok(vec![TensorType {
        dtype: x.dtype,
        shape,
        quant,
    }])
}

/// Resize's result shape and the axes it changes, from whatever is known of its operands.
fn resize_shape(cx: &InferCtx, x: &TensorType) -> Result<(Shape, Vec<usize>), String> {
    let dims = x.shape.dims();
    let ra = ResizeAttrs::of(&cx.op.attrs, dims.len())?;
    let vector = |i: usize, dtype: DType, what: &str| -> Result<Option<usize>, String> {
        match cx.inputs.get(i).copied().flatten() {
            None => Ok(None),
            Some(t) => match t.shape.dims() {
                [Dim::Fixed(n)] if t.dtype == dtype && t.quant.is_none() => Ok(Some(*n)),
                _ => Err(format!(
                    "{what} must be a 1-d {dtype} vector, found {}",
                    crate::text::type_to_string(t)
                )),
            },
        }
    };
    let n = ra.axes.len();
    let roi = vector(1, DType::F32, "roi")?;
    let scales = vector(2, DType::F32, "scales")?;
    let sizes = vector(3, DType::I64, "sizes")?;
    if roi.is_some_and(|r| r != 2 * n) {
        return Err(format!("roi has {} values for {n} axes", roi.unwrap_or(0)));
    }
    if ra.transform == Transform::TfCropAndResize && roi.is_none() {
        return Err("tf_crop_and_resize needs the roi operand".to_string());
    }
    let mut out = dims.to_vec();
    match (scales, sizes) {
        (Some(len), None) if len == n => match cx.constant(2) {
            Some(t) => {
                let values = t.as_f32()?;
                for (&a, &s) in ra.axes.iter().zip(values) {
                    let s = s as f64;
                    out[a] = match dims[a] {
                        Dim::Fixed(d) => Dim::Fixed(ra.scaled_extent(a, d, s)?),
                        // Unchanged extents stay symbolic; others are known once bound.
                        d if s == 1.0 => d,
                        _ => check_scale(a, s).map(|_| Dim::Dyn)?,
                    };
                }
            }
            None => ra.axes.iter().for_each(|&a| out[a] = Dim::Dyn),
        },
        (None, Some(len)) if len == n => match cx.ints(3) {
            Some(values) => {
                let fixed: Option<Vec<usize>> = dims.iter().map(|d| d.fixed()).collect();
                let concrete: Option<Vec<i64>> = values.iter().map(|v| v.int()).collect();
                match (fixed, concrete) {
                    // Known extents and sizes: exactly what evaluation computes.
                    (Some(f), Some(s)) => {
                        out = ra
                            .extents(&f, None, Some(&s))?
                            .1
                            .into_iter()
                            .map(Dim::Fixed)
                            .collect()
                    }
                    _ if ra.policy != Policy::Stretch => {
                        ra.axes.iter().for_each(|&a| out[a] = Dim::Dyn)
                    }
                    _ => {
                        for (&a, &v) in ra.axes.iter().zip(&values) {
                            out[a] = match (dims[a], v) {
                                (_, SymInt::Int(v)) if v <= 0 => {
                                    return Err(format!("size {v} for axis {a} must be positive"))
                                }
                                // The batch stays axis 0's own extent: resizing it is known once bound.
                                (Dim::Batch, SymInt::Int(_)) => Dim::Dyn,
                                (_, SymInt::Int(v)) => Dim::Fixed(v as usize),
                                (d, SymInt::Dim(e)) if d == e => d,
                                _ => Dim::Dyn,
                            };
                        }
                    }
                }
            }
            None => ra.axes.iter().for_each(|&a| out[a] = Dim::Dyn),
        },
        (Some(len), None) | (None, Some(len)) => {
            return Err(format!("{len} scales or sizes for {n} axes"))
        }
        _ => return Err("Resize takes exactly one of scales and sizes".to_string()),
    }
    // The axes whose positions move (a crop window moves them even at the same extent).
    let crop = ra.transform == Transform::TfCropAndResize;
    let moved = (0..dims.len())
        .filter(|&a| out[a] != dims[a] || out[a] == Dim::Dyn || crop && ra.axes.contains(&a))
        .collect();
    Ok((Shape(out), moved))
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let x = cx.input(0)?;
    let dims = x.shape();
    let out = match cx.op.kind {
        OpKind::Resize => {
            let optional = |i: usize| cx.inputs.get(i).copied().flatten();
            let roi = optional(1).map(|t| t.as_f32()).transpose()?;
            let scales = optional(2).map(|t| t.as_f32()).transpose()?;
            let sizes = optional(3).map(|t| t.to_i64_vec()).transpose()?;
            let plan = resize_plan(&cx.op.attrs, dims, roi, scales, sizes.as_deref())?;
            resize(x, &plan)?
        }
        kind => {
            let b = block_permutation(kind, &cx.op.attrs, dims)?;
            let index: Vec<usize> = positions(&b.view)
                .iter()
                .map(|p| p.iter().zip(&b.src).map(|(i, s)| i * s).sum())
                .collect();
            take(x, &index, b.out)?
        }
    };
    Ok(vec![out])
}

/// Evaluates a Resize plan: index copies in nearest mode, otherwise nested weighted sums
/// in f64 (outer resized axis first), rounded to the operand's dtype (integers half to
/// even and saturated, NaN to 0, as ONNX's saturating cast).
fn resize(x: &Tensor, plan: &ResizePlan) -> Result<Tensor, String> {
    let dims = x.shape();
    let src = strides(dims);
    let outside = |p: &[usize]| {
        plan.axes
            .iter()
            .zip(p)
            .any(|(t, &j)| t.as_ref().is_some_and(|t| t.outside[j]))
    };
    let all = positions(&plan.out);
    if plan.nearest && !all.iter().any(|p| outside(p)) {
        let index = all
            .iter()
            .map(|p| {
                p.iter()
                    .enumerate()
                    .map(|(a, &j)| plan.axes[a].as_ref().map_or(j, |t| t.index[j]) * src[a])
                    .sum()
            })
            .collect::<Vec<usize>>();
        return take(x, &index, plan.out.clone());
    }
    let values: Vec<f64> = match x.data() {
        TensorData::F32(v) => v.iter().map(|&v| v as f64).collect(),
        _ => x.to_i64_vec()?.into_iter().map(|v| v as f64).collect(),
    };
    // The resized axes, outer first; the others contribute a fixed offset.
    let resized: Vec<(usize, &AxisTaps)> = plan
        .axes
        .iter()
        .enumerate()
        .filter_map(|(a, t)| t.as_ref().map(|t| (a, t)))
        .collect();
    let result: Vec<f64> = all
        .iter()
        .map(|p| {
            if outside(p) {
                return plan.extrapolation;
            }
            let base = (0..dims.len())
                .filter(|&a| plan.axes[a].is_none())
                .map(|a| p[a] * src[a])
                .sum();
            weighted_sum(&values, &src, &resized, p, base)
        })
        .collect();
    from_f64(x.dtype(), plan.out.clone(), result)
}

/// `Σₜ weight · (the same over the remaining axes)` at result position `p`, from the source
/// offset `base` of the unresized axes: the order the JIT sums in too.
fn weighted_sum(
    values: &[f64],
    src: &[usize],
    resized: &[(usize, &AxisTaps)],
    p: &[usize],
    base: usize,
) -> f64 {
    let Some(((a, t), rest)) = resized.split_first() else {
        return values[base];
    };
    let j = p[*a];
    let mut acc = 0.0;
    for k in j * t.taps..(j + 1) * t.taps {
        acc += t.weight[k] * weighted_sum(values, src, rest, p, base + t.index[k] * src[*a]);
    }
    acc
}

/// A tensor of `dtype` from f64 results: f32 rounded to nearest; integers rounded half to
/// even and saturated to the dtype (NaN becomes 0). How Resize converts its results.
pub fn from_f64(dtype: DType, shape: Vec<usize>, values: Vec<f64>) -> Result<Tensor, String> {
    match dtype.int_range() {
        None => Tensor::new(
            DType::F32,
            shape,
            TensorData::F32(values.into_iter().map(|v| v as f32).collect()),
        ),
        Some((lo, hi)) => {
            // `as` saturates (i64's bound rounds to 2^63 as f64).
            let ints = values.into_iter().map(|v| {
                if v.is_nan() {
                    0
                } else {
                    v.round_ties_even().clamp(lo as f64, hi as f64) as i64
                }
            });
            Tensor::from_i64_values(dtype, shape, ints.collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::run_op;
    use crate::AttrValue;

    fn attrs(mode: &str, transform: &str, axes: &[i64]) -> Attrs {
        Attrs::new()
            .with("mode", AttrValue::Str(mode.into()))
            .with(
                "coordinate_transformation_mode",
                AttrValue::Str(transform.into()),
            )
            .with("nearest_mode", AttrValue::Str("round_prefer_floor".into()))
            .with("cubic_coeff_a", AttrValue::Float(-0.75))
            .with("exclude_outside", AttrValue::Int(0))
            .with("extrapolation_value", AttrValue::Float(0.0))
            .with("antialias", AttrValue::Int(0))
            .with("keep_aspect_ratio_policy", AttrValue::Str("stretch".into()))
            .with("axes", AttrValue::Ints(axes.to_vec()))
    }

    fn resize_with(a: Attrs, x: Tensor, scales: &[f32]) -> Result<Tensor, String> {
        let s = Tensor::from_f32(&[scales.len()], scales.to_vec());
        // Operands: X, (no roi), scales.
        let mut g = crate::Graph::new("t");
        let xi = g.add_input("x", TensorType::new(x.dtype(), Shape::fixed(x.shape())));
        let si = g.add_const("s", std::sync::Arc::new(s), None);
        let y = g
            .add_op(
                "r",
                crate::Op::new(OpKind::Resize, a),
                &[Some(xi), None, Some(si)],
                &["y"],
            )
            .map_err(|e| e.to_string())?;
        g.set_outputs(y).map_err(|e| e.to_string())?;
        crate::interp::run(&g, &[x])
            .map(|mut v| v.remove(0))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn nearest_upsampling_repeats() {
        let x = Tensor::from_f32(&[1, 1, 2, 2], vec![1., 2., 3., 4.]);
        let mut a = attrs("nearest", "asymmetric", &[0, 1, 2, 3]);
        a.set("nearest_mode", AttrValue::Str("floor".into()));
        let y = resize_with(a, x, &[1., 1., 2., 3.]).unwrap();
        assert_eq!(y.shape(), &[1, 1, 4, 6]);
        assert_eq!(&y.as_f32().unwrap()[..6], &[1., 1., 1., 2., 2., 2.]);
    }

    #[test]
    fn linear_half_pixel_matches_onnx() {
        // onnx test_resize_upsample_scales_linear: 2x2 → 4x4.
        let x = Tensor::from_f32(&[1, 1, 2, 2], vec![1., 2., 3., 4.]);
        let y = resize_with(attrs("linear", "half_pixel", &[2, 3]), x, &[2., 2.]).unwrap();
        let want = [
            1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0,
        ];
        assert_eq!(y.as_f32().unwrap(), &want);
    }

    #[test]
    fn cubic_at_integer_coordinates_copies() {
        let x = Tensor::from_f32(&[1, 4], vec![1., 5., -2., 8.]);
        let y = resize_with(attrs("cubic", "asymmetric", &[1]), x, &[2.]).unwrap();
        let v = y.as_f32().unwrap();
        assert_eq!((v[0], v[2], v[4], v[6]), (1., 5., -2., 8.));
    }

    #[test]
    fn integers_round_half_to_even_and_saturate() {
        let x = Tensor::from_i64_values(DType::U8, vec![1, 2], vec![0, 1]).unwrap();
        // asymmetric linear ×4: 0, 0.25, 0.5, 0.75, 1, 1, 1, 1 → 0, 0, 0, 1, 1, ...
        let y = resize_with(attrs("linear", "asymmetric", &[1]), x, &[4.]).unwrap();
        assert_eq!(y.to_i64_vec().unwrap(), vec![0, 0, 0, 1, 1, 1, 1, 1]);
        let x = Tensor::from_i64_values(DType::U8, vec![1, 4], vec![0, 255, 255, 0]).unwrap();
        let y = resize_with(attrs("cubic", "half_pixel", &[1]), x, &[2.]).unwrap();
        assert!(y
            .to_i64_vec()
            .unwrap()
            .iter()
            .all(|&v| (0..=255).contains(&v)));
        assert_eq!(
            from_f64(DType::I8, vec![3], vec![f64::NAN, 1e9, -2.5])
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            vec![0, 127, -2]
        );
    }

    #[test]
    fn huge_and_empty_results_are_refused() {
        let x = Tensor::from_f32(&[1, 2], vec![1., 2.]);
        let e = resize_with(attrs("nearest", "asymmetric", &[1]), x.clone(), &[1e30]).unwrap_err();
        assert!(e.contains("above the limit"), "{e}");
        let e = resize_with(attrs("nearest", "asymmetric", &[1]), x.clone(), &[0.1]).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = resize_with(attrs("nearest", "asymmetric", &[1]), x.clone(), &[-1.0]).unwrap_err();
        assert!(e.contains("positive"), "{e}");
        let e = resize_with(attrs("nearest", "asymmetric", &[1]), x, &[f32::NAN]).unwrap_err();
        assert!(e.contains("positive"), "{e}");
    }

    #[test]
    fn depth_to_space_and_back() {
        let x = Tensor::from_f32(&[1, 8, 2, 3], (0..48).map(|v| v as f32).collect());
        let d2s = |mode: &str| {
            Attrs::new()
                .with("blocksize", AttrValue::Int(2))
                .with("mode", AttrValue::Str(mode.into()))
        };
        let s2d = |mode: &str| {
            Attrs::new()
                .with("blocksize", AttrValue::Int(2))
                .with("mode", AttrValue::Str(mode.into()))
        };
        for mode in ["DCR", "CRD"] {
            let y = run_op(
                OpKind::DepthToSpace,
                d2s(mode),
                vec![(x.clone(), None)],
                None,
            )
            .unwrap();
            assert_eq!(y.shape(), &[1, 2, 4, 6]);
            let z = run_op(OpKind::SpaceToDepth, s2d(mode), vec![(y, None)], None).unwrap();
            assert_eq!(z, x);
        }
        // onnx test_depthtospace_crd_mode_example: first row of the result.
        let y = run_op(
            OpKind::DepthToSpace,
            d2s("CRD"),
            vec![(x.clone(), None)],
            None,
        )
        .unwrap();
        assert_eq!(&y.as_f32().unwrap()[..6], &[0., 6., 1., 7., 2., 8.]);
        let e = run_op(
            OpKind::DepthToSpace,
            Attrs::new()
                .with("blocksize", AttrValue::Int(3))
                .with("mode", AttrValue::Str("DCR".into())),
            vec![(x, None)],
            None,
        );
        assert!(e.unwrap_err().contains("multiple"));
    }
}
