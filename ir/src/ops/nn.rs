//! Neural-network ops: Conv, MatMul, Gemm, BatchNormalization, pools, Softmax.
//!
//! The convolution and matrix-product loops are generic over the accumulator so that the
//! float ops (accumulating in f64, then rounded to f32) and the integer ops in `quant.rs`
//! (accumulating exactly in i64) share one definition.

use super::broadcast::{broadcast_indices, broadcast_static, positions, strides};
use super::{EvalCtx, InferCtx};
use crate::{Attrs, DType, Dim, OpKind, Shape, Tensor, TensorData, TensorType};
use std::ops::{Add, Mul};

/// An accumulator type of the shared loops (f64 for float ops, i64 for integer ops).
pub(crate) trait Acc: Copy + Default + Add<Output = Self> + Mul<Output = Self> {}
impl<T: Copy + Default + Add<Output = T> + Mul<Output = T>> Acc for T {}

/// Refuses a value that is not plain f32 (the float ops' operands).
pub(crate) fn f32_only(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype != DType::F32 || t.quant.is_some() {
        return Err(format!(
            "{what} must be f32, found {}",
            crate::text::type_to_string(t)
        ));
    }
    Ok(())
}

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    let x = cx.input(0)?;
    let attrs = &cx.op.attrs;
    let out = match cx.op.kind {
        OpKind::Conv => {
            f32_only(x, "input")?;
            let w = cx.input(1)?;
            f32_only(w, "weights")?;
            let shape = conv_shape(&x.shape, &w.shape, attrs)?;
            if let Some(b) = cx.inputs.get(2).copied().flatten() {
                f32_only(b, "bias")?;
                check_vector(b, &shape.dims()[1], "bias")?;
            }
            TensorType::new(DType::F32, shape)
        }
        OpKind::MatMul => {
            f32_only(x, "operand 0")?;
            f32_only(cx.input(1)?, "operand 1")?;
            TensorType::new(DType::F32, matmul_shape(&x.shape, &cx.input(1)?.shape)?)
        }
        OpKind::Gemm => {
            f32_only(x, "A")?;
            let b = cx.input(1)?;
            f32_only(b, "B")?;
            let shape = gemm_shape(&x.shape, &b.shape, attrs)?;
            if let Some(c) = cx.inputs.get(2).copied().flatten() {
                f32_only(c, "C")?;
                if broadcast_static(&c.shape, &shape)? != shape {
                    return Err(format!(
                        "C of shape {} does not broadcast to {shape}",
                        c.shape
                    ));
                }
            }
            TensorType::new(DType::F32, shape)
        }
        OpKind::BatchNormalization => {
            f32_only(x, "input")?;
            if x.shape.rank() < 2 {
                return Err(format!(
                    "input of rank {} has no channel axis",
                    x.shape.rank()
                ));
            }
            for (i, what) in [(1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")] {
                let t = cx.input(i)?;
                f32_only(t, what)?;
                check_vector(t, &x.shape.dims()[1], what)?;
            }
            TensorType::new(DType::F32, x.shape.clone())
        }
        OpKind::MaxPool | OpKind::AveragePool => {
            let integer_max =
                cx.op.kind == OpKind::MaxPool && matches!(x.dtype, DType::U8 | DType::I8);
            if !integer_max {
                f32_only(x, "input")?;
            }
            // The maximum of integers only means the maximum of their real values when they
            // share a scale: per-axis parameters along a pooled axis do not.
            if x.quant
                .as_ref()
                .and_then(|q| q.axis)
                .is_some_and(|a| a >= 2)
            {
                return Err("per-axis quantization along a pooled axis".to_string());
            }
            TensorType {
                dtype: x.dtype,
                shape: pool_shape(&x.shape, attrs)?,
                quant: x.quant.clone(),
            }
        }
        OpKind::GlobalAveragePool | OpKind::GlobalMaxPool => {
            f32_only(x, "input")?;
            let rank = x.shape.rank();
            if rank < 3 {
                return Err(format!("input of rank {rank} has no spatial axes"));
            }
            let mut dims = x.shape.dims()[..2].to_vec();
            dims.resize(rank, Dim::Fixed(1));
            TensorType::new(DType::F32, Shape(dims))
        }
        OpKind::Softmax => {
            f32_only(x, "input")?;
            axis_of(attrs, x.shape.rank())?;
            TensorType::new(DType::F32, x.shape.clone())
        }
        other => return Err(format!("{other} is not an nn op")),
    };
    Ok(vec![out])
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let x = cx.input(0)?;
    let attrs = &cx.op.attrs;
    let out = match cx.op.kind {
        OpKind::Conv => {
            let w = cx.input(1)?;
            let geom = ConvGeometry::new(x.shape(), w.shape(), attrs)?;
            let mut y = conv(&widen(x)?, &widen(w)?, &geom);
            if let Some(b) = cx.inputs.get(2).copied().flatten() {
                add_per_channel(&mut y, &widen(b)?, geom.window.out.iter().product())?;
            }
            narrow(geom.out_shape(), y)?
        }
        OpKind::MatMul => {
            let b = cx.input(1)?;
            let (shape, y) = matmul(&widen(x)?, x.shape(), &widen(b)?, b.shape())?;
            narrow(shape, y)?
        }
        OpKind::Gemm => gemm(x, cx.input(1)?, cx.inputs.get(2).copied().flatten(), attrs)?,
        OpKind::BatchNormalization => {
            let eps = attrs.float("epsilon")? as f64;
            let p: Vec<Vec<f64>> = (1..5)
                .map(|i| cx.input(i).and_then(widen))
                .collect::<Result<_, _>>()?;
            let (scale, bias, mean, var) = (&p[0], &p[1], &p[2], &p[3]);
            let channels = x.shape()[1];
            let inner: usize = x.shape()[2..].iter().product();
            let y = widen(x)?
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let c = (i / inner) % channels;
                    (v - mean[c]) / (var[c] + eps).sqrt() * scale[c] + bias[c]
                })
                .collect();
            narrow(x.shape().to_vec(), y)?
        }
        OpKind::MaxPool | OpKind::AveragePool => pool(x, attrs, cx.op.kind == OpKind::MaxPool)?,
        OpKind::GlobalAveragePool | OpKind::GlobalMaxPool => {
            let (n, c) = (x.shape()[0], x.shape()[1]);
            let inner: usize = x.shape()[2..].iter().product();
            let v = widen(x)?;
            let y = v
                .chunks(inner.max(1))
                .map(|s| match cx.op.kind {
                    OpKind::GlobalMaxPool => s.iter().copied().fold(f64::NEG_INFINITY, max_number),
                    _ => s.iter().sum::<f64>() / inner as f64,
                })
                .collect();
            let mut shape = vec![n, c];
            shape.resize(x.shape().len(), 1);
            narrow(shape, y)?
        }
        OpKind::Softmax => {
            let axis = axis_of(attrs, x.shape().len())?;
            softmax(x, axis)?
        }
        other => return Err(format!("{other} is not an nn op")),
    };
    Ok(vec![out])
}

/// Elements as f64 (exact for f32 and 8-bit integers).
pub(crate) fn widen(t: &Tensor) -> Result<Vec<f64>, String> {
    Ok(match t.data() {
        TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
        _ => t.to_i64_vec()?.into_iter().map(|x| x as f64).collect(),
    })
}

/// An f32 tensor from f64 results (rounded once, at the end).
fn narrow(shape: Vec<usize>, v: Vec<f64>) -> Result<Tensor, String> {
    Tensor::new(
        DType::F32,
        shape,
        TensorData::F32(v.into_iter().map(|x| x as f32).collect()),
    )
}

fn check_vector(t: &TensorType, channels: &Dim, what: &str) -> Result<(), String> {
    if t.shape.dims() != [*channels] {
        return Err(format!(
            "{what} has shape {}, expected [{channels}]",
            t.shape
        ));
    }
    Ok(())
}

fn axis_of(attrs: &Attrs, rank: usize) -> Result<usize, String> {
    let axis = attrs.int("axis")?;
    usize::try_from(axis)
        .ok()
        .filter(|&a| a < rank)
        .ok_or_else(|| format!("axis {axis} is out of range for rank {rank}"))
}

/// Adds `bias[c]` to every element of channel `c` of an [N, M, spatial...] buffer with
/// `spatial` elements per channel.
pub(crate) fn add_per_channel<T: Acc>(
    y: &mut [T],
    bias: &[T],
    spatial: usize,
) -> Result<(), String> {
    if bias.is_empty() || spatial == 0 || !y.len().is_multiple_of(bias.len() * spatial) {
        return Err(format!(
            "bias of {} elements does not fit the result",
            bias.len()
        ));
    }
    for (i, v) in y.iter_mut().enumerate() {
        *v = *v + bias[(i / spatial) % bias.len()];
    }
    Ok(())
}

/// Spatial parameters shared by convolution and pooling, validated against the input.
pub(crate) struct Window {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    /// Begin pads then end pads, as ONNX orders them.
    pub pads: Vec<usize>,
    /// Output spatial extents.
    pub out: Vec<usize>,
}

impl Window {
    /// Reads and checks the window attributes for `spatial` input extents.
    fn new(attrs: &Attrs, spatial: &[usize], ceil_mode: bool) -> Result<Window, String> {
        let r = spatial.len();
        let kernel = attrs.usizes("kernel_shape")?;
        let strides = attrs.usizes("strides")?;
        let dilations = attrs.usizes("dilations")?;
        let pads = attrs.usizes("pads")?;
        if kernel.len() != r || strides.len() != r || dilations.len() != r || pads.len() != 2 * r {
            return Err(format!(
                "kernel_shape {kernel:?}, strides {strides:?}, dilations {dilations:?}, pads {pads:?} do not fit {r} spatial axes"
            ));
        }
        if kernel.contains(&0) || strides.contains(&0) || dilations.contains(&0) {
            return Err("kernel_shape, strides and dilations must be at least 1".to_string());
        }
        let mut out = Vec::with_capacity(r);
        for a in 0..r {
            let span = dilations[a]
                .checked_mul(kernel[a] - 1)
                .and_then(|s| s.checked_add(1))
                .ok_or("window overflows")?;
            let padded = spatial[a]
                .checked_add(pads[a])
                .and_then(|s| s.checked_add(pads[a + r]))
                .ok_or("pads overflow")?;
            if padded < span {
                return Err(format!(
                    "window of {span} on axis {} does not fit the padded extent {padded}",
                    a + 2
                ));
            }
            let room = padded - span;
            let mut n = if ceil_mode {
                room.div_ceil(strides[a])
            } else {
                room / strides[a]
            } + 1;
            // ONNX: with ceil_mode, a window that would start in the end padding is dropped.
            if ceil_mode && (n - 1) * strides[a] >= spatial[a] + pads[a] {
                n -= 1;
            }
            out.push(n);
        }
        Ok(Window {
            kernel,
            strides,
            dilations,
            pads,
            out,
        })
    }
}

/// Concrete convolution geometry: shapes, groups and the window.
pub(crate) struct ConvGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub in_spatial: Vec<usize>,
    pub out_channels: usize,
    pub group: usize,
    pub window: Window,
}

impl ConvGeometry {
    /// Checks a convolution of input `x` ([N, C, spatial...]) by weights `w`
    /// ([M, C/group, kernel...]).
    pub(crate) fn new(x: &[usize], w: &[usize], attrs: &Attrs) -> Result<ConvGeometry, String> {
        if x.len() < 3 || w.len() != x.len() {
            return Err(format!(
                "input {x:?} and weights {w:?} must have the same rank, at least 3"
            ));
        }
        let group = usize::try_from(attrs.int("group")?)
            .ok()
            .filter(|&g| g >= 1)
            .ok_or("group must be at least 1")?;
        let (c, m) = (x[1], w[0]);
        if c != w[1] * group || m % group != 0 {
            return Err(format!(
                "input has {c} channels, weights {w:?} with group {group} expect {} (and M divisible by group)",
                w[1] * group
            ));
        }
        if attrs.usizes("kernel_shape")? != w[2..] {
            return Err(format!(
                "kernel_shape {:?} disagrees with weights {w:?}",
                attrs.ints("kernel_shape")?
            ));
        }
        let window = Window::new(attrs, &x[2..], false)?;
        Ok(ConvGeometry {
            batch: x[0],
            in_channels: c,
            in_spatial: x[2..].to_vec(),
            out_channels: m,
            group,
            window,
        })
    }

    /// [N, M, out spatial...].
    pub(crate) fn out_shape(&self) -> Vec<usize> {
        let mut s = vec![self.batch, self.out_channels];
        s.extend(&self.window.out);
        s
    }
}

/// Static result shape of a convolution (the batch symbol passes through axis 0).
pub(crate) fn conv_shape(x: &Shape, w: &Shape, attrs: &Attrs) -> Result<Shape, String> {
    let wd = w.as_fixed().ok_or("weights must have a static shape")?;
    if let Some(shape) = symbolic_window_shape(x, wd.first().copied())? {
        return Ok(shape);
    }
    let xd = fixed_after_batch(x, "input")?;
    let geom = ConvGeometry::new(&xd, &wd, attrs)?;
    let mut dims = vec![x.dims()[0]];
    dims.extend(geom.out_shape()[1..].iter().map(|&d| Dim::Fixed(d)));
    Ok(Shape(dims))
}

/// The result shape of a convolution (`channels` = its output channels) or pool (`None`:
/// the input's) whose input has symbolic extents after axis 0: the same rank, the spatial
/// extents known once the symbols are bound (`None` when every extent is known: the
/// geometry is then checked exactly).
fn symbolic_window_shape(x: &Shape, channels: Option<usize>) -> Result<Option<Shape>, String> {
    let dims = x.dims();
    if dims.len() < 3 {
        return Err(format!("input {x} has no spatial axes"));
    }
    if dims[1..].iter().all(|d| !d.is_unbound()) {
        return Ok(None);
    }
    if dims[1..].contains(&Dim::Batch) {
        return Err(format!("input {x} has the batch dimension after axis 0"));
    }
    let mut out = vec![dims[0], channels.map_or(dims[1], Dim::Fixed)];
    out.extend(std::iter::repeat_n(Dim::Dyn, dims.len() - 2));
    Ok(Some(Shape(out)))
}

/// The concrete dims of a shape whose only symbolic dim may be axis 0 (bound to 1 here:
/// geometry checks do not depend on the batch).
fn fixed_after_batch(s: &Shape, what: &str) -> Result<Vec<usize>, String> {
    if s.dims().iter().skip(1).any(|d| *d == Dim::Batch) {
        return Err(format!("{what} {s} has the batch dimension after axis 0"));
    }
    Ok(s.resolve(1))
}

/// Direct convolution over widened values; padding contributes zero (callers subtract zero
/// points first, so that padded integer inputs equal the zero point, as ONNX defines).
pub(crate) fn conv<T: Acc>(x: &[T], w: &[T], g: &ConvGeometry) -> Vec<T> {
    let win = &g.window;
    let r = g.in_spatial.len();
    let (cg, mg) = (g.in_channels / g.group, g.out_channels / g.group);
    let kernel_count: usize = win.kernel.iter().product();
    let in_count: usize = g.in_spatial.iter().product();
    let out_count: usize = win.out.iter().product();
    let in_strides = strides(&g.in_spatial);
    let kernel_positions = positions(&win.kernel);
    let mut y = vec![T::default(); g.batch * g.out_channels * out_count];
    for (o, opos) in positions(&win.out).iter().enumerate() {
        // For each kernel position, the input offset it reads (None when in the padding).
        let taps: Vec<Option<usize>> = kernel_positions
            .iter()
            .map(|k| {
                let mut offset = 0;
                for a in 0..r {
                    let i = (opos[a] * win.strides[a] + k[a] * win.dilations[a]) as i64
                        - win.pads[a] as i64;
                    if i < 0 || i >= g.in_spatial[a] as i64 {
                        return None;
                    }
                    offset += i as usize * in_strides[a];
                }
                Some(offset)
            })
            .collect();
        for n in 0..g.batch {
            for m in 0..g.out_channels {
                let group = m / mg;
                let mut acc = T::default();
                for c in 0..cg {
                    let xbase = (n * g.in_channels + group * cg + c) * in_count;
                    let wbase = (m * cg + c) * kernel_count;
                    for (k, tap) in taps.iter().enumerate() {
                        if let Some(off) = tap {
                            acc = acc + x[xbase + off] * w[wbase + k];
                        }
                    }
                }
                y[(n * g.out_channels + m) * out_count + o] = acc;
            }
        }
    }
    y
}

/// Static result shape of a numpy matrix product.
pub(crate) fn matmul_shape(a: &Shape, b: &Shape) -> Result<Shape, String> {
    let (ad, bd) = (a.dims(), b.dims());
    if ad.is_empty() || bd.is_empty() {
        return Err("matrix product of a scalar".to_string());
    }
    let a2: Vec<Dim> = if ad.len() == 1 {
        vec![Dim::Fixed(1), ad[0]]
    } else {
        ad.to_vec()
    };
    let b2: Vec<Dim> = if bd.len() == 1 {
        vec![bd[0], Dim::Fixed(1)]
    } else {
        bd.to_vec()
    };
    let (k1, k2) = (a2[a2.len() - 1], b2[b2.len() - 2]);
    // Symbolic inner extents must agree once bound (checked then).
    let agree = k1 == k2 || k1.is_unbound() || k2.is_unbound();
    if !agree || k1 == Dim::Batch || k2 == Dim::Batch {
        return Err(format!("inner dimensions differ: {a} times {b}"));
    }
    let batch = broadcast_static(
        &Shape(a2[..a2.len() - 2].to_vec()),
        &Shape(b2[..b2.len() - 2].to_vec()),
    )?;
    let mut out = batch.0;
    if ad.len() > 1 {
        out.push(a2[a2.len() - 2]);
    }
    if bd.len() > 1 {
        out.push(b2[b2.len() - 1]);
    }
    Ok(Shape(out))
}

/// Numpy matrix product over widened values; returns the result shape and elements.
pub(crate) fn matmul<T: Acc>(
    a: &[T],
    ashape: &[usize],
    b: &[T],
    bshape: &[usize],
) -> Result<(Vec<usize>, Vec<T>), String> {
    let out_shape = matmul_shape(&Shape::fixed(ashape), &Shape::fixed(bshape))?.resolve(0);
    let a2: Vec<usize> = if ashape.len() == 1 {
        vec![1, ashape[0]]
    } else {
        ashape.to_vec()
    };
    let b2: Vec<usize> = if bshape.len() == 1 {
        vec![bshape[0], 1]
    } else {
        bshape.to_vec()
    };
    let (m, k, n) = (a2[a2.len() - 2], a2[a2.len() - 1], b2[b2.len() - 1]);
    let batch = super::broadcast::broadcast_shapes(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    let (ia, ib) = (
        broadcast_indices(&a2[..a2.len() - 2], &batch),
        broadcast_indices(&b2[..b2.len() - 2], &batch),
    );
    let mut y = Vec::with_capacity(ia.len() * m * n);
    for (&pa, &pb) in ia.iter().zip(&ib) {
        let (abase, bbase) = (pa * m * k, pb * k * n);
        for i in 0..m {
            for j in 0..n {
                let mut acc = T::default();
                for l in 0..k {
                    acc = acc + a[abase + i * k + l] * b[bbase + l * n + j];
                }
                y.push(acc);
            }
        }
    }
    Ok((out_shape, y))
}

fn gemm_dims(a: &[Dim], b: &[Dim], attrs: &Attrs) -> Result<(Dim, Dim, Dim), String> {
    if a.len() != 2 || b.len() != 2 {
        return Err(format!(
            "Gemm needs 2-d operands, found ranks {} and {}",
            a.len(),
            b.len()
        ));
    }
    let (m, ka) = if attrs.int("transA")? != 0 {
        (a[1], a[0])
    } else {
        (a[0], a[1])
    };
    let (kb, n) = if attrs.int("transB")? != 0 {
        (b[1], b[0])
    } else {
        (b[0], b[1])
    };
    if ka != kb || ka == Dim::Batch || n == Dim::Batch {
        return Err(format!(
            "inner dimensions differ: A' has {ka} columns, B' has {kb} rows"
        ));
    }
    Ok((m, ka, n))
}

fn gemm_shape(a: &Shape, b: &Shape, attrs: &Attrs) -> Result<Shape, String> {
    let (m, _, n) = gemm_dims(a.dims(), b.dims(), attrs)?;
    Ok(Shape(vec![m, n]))
}

fn gemm(a: &Tensor, b: &Tensor, c: Option<&Tensor>, attrs: &Attrs) -> Result<Tensor, String> {
    let fixed = |s: &[usize]| Shape::fixed(s).0;
    let (m, k, n) = gemm_dims(&fixed(a.shape()), &fixed(b.shape()), attrs)?;
    let (m, k, n) = (m.resolve(0), k.resolve(0), n.resolve(0));
    let (av, bv) = (widen(a)?, widen(b)?);
    let (alpha, beta) = (attrs.float("alpha")? as f64, attrs.float("beta")? as f64);
    let (ta, tb) = (attrs.int("transA")? != 0, attrs.int("transB")? != 0);
    let at = |i: usize, l: usize| if ta { av[l * m + i] } else { av[i * k + l] };
    let bt = |l: usize, j: usize| if tb { bv[j * k + l] } else { bv[l * n + j] };
    let cv = match c {
        Some(c) => {
            let idx = broadcast_indices(c.shape(), &[m, n]);
            let cw = widen(c)?;
            idx.into_iter().map(|i| cw[i]).collect()
        }
        None => vec![0.0; m * n],
    };
    let mut y = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|l| at(i, l) * bt(l, j)).sum();
            y.push(alpha * dot + beta * cv[i * n + j]);
        }
    }
    narrow(vec![m, n], y)
}

/// Static pooling window for input `x` ([N, C, spatial...]).
/// The result shape of a windowed pool over `x`.
pub(crate) fn pool_shape(x: &Shape, attrs: &Attrs) -> Result<Shape, String> {
    if let Some(shape) = symbolic_window_shape(x, None)? {
        return Ok(shape);
    }
    let geom = pool_geometry(x, attrs)?;
    let mut dims = x.dims()[..2].to_vec();
    dims.extend(geom.out.iter().map(|&d| Dim::Fixed(d)));
    Ok(Shape(dims))
}

pub(crate) fn pool_geometry(x: &Shape, attrs: &Attrs) -> Result<Window, String> {
    let xd = fixed_after_batch(x, "input")?;
    if xd.len() < 3 {
        return Err(format!("input of rank {} has no spatial axes", xd.len()));
    }
    Window::new(attrs, &xd[2..], attrs.int("ceil_mode")? != 0)
}

fn pool(x: &Tensor, attrs: &Attrs, is_max: bool) -> Result<Tensor, String> {
    let (shape, windows) = pool_windows(&widen(x)?, x.shape(), attrs, is_max)?;
    let y = windows.into_iter().map(|(acc, count)| {
        if is_max {
            acc
        } else {
            acc / count.max(1) as f64
        }
    });
    if x.dtype() == DType::F32 {
        return narrow(shape, y.collect());
    }
    Tensor::from_i64_values(x.dtype(), shape, y.map(|v| v as i64).collect())
}

/// A pool's result shape and, per result element, `(max or sum, count)`.
pub(crate) type Windows = (Vec<usize>, Vec<(f64, usize)>);

/// Reduces every pooling window of `v` (shape `[N, C, spatial...]`): the maximum, or the
/// sum, of each window with the count of elements that divide an average (padding
/// included when `count_include_pad`). Returns the result shape and one
/// `(max or sum, count)` per result element. Shared by the float pools and the integer
/// average pool, whose sums of integers are exact in f64.
pub(crate) fn pool_windows(
    v: &[f64],
    xshape: &[usize],
    attrs: &Attrs,
    is_max: bool,
) -> Result<Windows, String> {
    let win = Window::new(attrs, &xshape[2..], attrs.int("ceil_mode")? != 0)?;
    let include_pad = !is_max && attrs.int("count_include_pad")? != 0;
    let spatial = &xshape[2..];
    let r = spatial.len();
    let (in_count, in_strides) = (spatial.iter().product::<usize>(), strides(spatial));
    let planes = xshape[0] * xshape[1];
    let kernel_positions = positions(&win.kernel);
    let out_positions = positions(&win.out);
    let mut y = Vec::with_capacity(planes * out_positions.len());
    for p in 0..planes {
        for opos in &out_positions {
            let (mut acc, mut count) = (if is_max { f64::NEG_INFINITY } else { 0.0 }, 0usize);
            for k in &kernel_positions {
                let mut offset = Some(0);
                let mut in_padded = true;
                for a in 0..r {
                    let i = (opos[a] * win.strides[a] + k[a] * win.dilations[a]) as i64
                        - win.pads[a] as i64;
                    if i < 0 || i >= spatial[a] as i64 {
                        offset = None;
                    } else if let Some(o) = offset.as_mut() {
                        *o += i as usize * in_strides[a];
                    }
                    in_padded &= i < (spatial[a] + win.pads[a + r]) as i64;
                }
                match offset {
                    Some(o) => {
                        let value = v[p * in_count + o];
                        acc = if is_max { acc.max(value) } else { acc + value };
                        count += 1;
                    }
                    None if include_pad && in_padded => count += 1,
                    None => {}
                }
            }
            y.push((acc, count));
        }
    }
    let mut shape = xshape[..2].to_vec();
    shape.extend(&win.out);
    Ok((shape, y))
}

fn softmax(x: &Tensor, axis: usize) -> Result<Tensor, String> {
    let v = widen(x)?;
    let extent = x.shape()[axis];
    let inner: usize = x.shape()[axis + 1..].iter().product();
    let mut y = vec![0.0; v.len()];
    for outer in 0..v.len() / (extent * inner).max(1) {
        for i in 0..inner {
            let at = |j: usize| outer * extent * inner + j * inner + i;
            let max = (0..extent)
                .map(|j| v[at(j)])
                .fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..extent).map(|j| (v[at(j)] - max).exp()).sum();
            for j in 0..extent {
                y[at(j)] = (v[at(j)] - max).exp() / sum;
            }
        }
    }
    narrow(x.shape().to_vec(), y)
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::run_op;
    use crate::{AttrValue, Attrs, OpKind, Tensor};

    fn ints(v: &[i64]) -> AttrValue {
        AttrValue::Ints(v.to_vec())
    }

    fn conv_attrs(k: &[i64], s: &[i64], p: &[i64], d: &[i64], group: i64) -> Attrs {
        Attrs::new()
            .with("kernel_shape", ints(k))
            .with("strides", ints(s))
            .with("pads", ints(p))
            .with("dilations", ints(d))
            .with("group", AttrValue::Int(group))
    }

    fn iota(shape: &[usize]) -> Tensor {
        Tensor::from_f32(
            shape,
            (0..shape.iter().product::<usize>())
                .map(|i| i as f32)
                .collect(),
        )
    }

    #[test]
    fn conv_with_padding_and_stride() {
        // ONNX node test test_conv_with_strides_padding: 7x5 input 0..35, 3x3 ones, stride 2, pad 1.
        let x = iota(&[1, 1, 7, 5]);
        let w = Tensor::from_f32(&[1, 1, 3, 3], vec![1.0; 9]);
        let y = run_op(
            OpKind::Conv,
            conv_attrs(&[3, 3], &[2, 2], &[1, 1, 1, 1], &[1, 1], 1),
            vec![(x, None), (w, None)],
            None,
        )
        .unwrap();
        assert_eq!(y.shape(), &[1, 1, 4, 3]);
        assert_eq!(
            y.as_f32().unwrap(),
            &[12., 27., 24., 63., 108., 81., 123., 198., 141., 112., 177., 124.]
        );
    }

    #[test]
    fn depthwise_dilated_conv_with_bias() {
        let x = iota(&[1, 2, 3, 3]);
        let w = Tensor::from_f32(&[2, 1, 2, 2], vec![1., 0., 0., 1., 0., 1., 1., 0.]);
        let b = Tensor::from_f32(&[2], vec![100., 200.]);
        let y = run_op(
            OpKind::Conv,
            conv_attrs(&[2, 2], &[1, 1], &[0, 0, 0, 0], &[2, 2], 2),
            vec![(x, None), (w, None), (b, None)],
            None,
        )
        .unwrap();
        // Channel 0 taps (0,0)+(2,2) = 0+8; channel 1 taps (0,2)+(2,0) = 11+15.
        assert_eq!(y.as_f32().unwrap(), &[108., 226.]);
    }

    #[test]
    fn conv_channel_mismatch_is_named() {
        let err = run_op(
            OpKind::Conv,
            conv_attrs(&[1, 1], &[1, 1], &[0; 4], &[1, 1], 1),
            vec![(iota(&[1, 3, 2, 2]), None), (iota(&[1, 2, 1, 1]), None)],
            None,
        )
        .unwrap_err();
        assert!(err.contains("3 channels"), "{err}");
    }

    fn pool_attrs(k: &[i64], s: &[i64], p: &[i64], ceil: i64, include_pad: i64) -> Attrs {
        conv_attrs(k, s, p, &[1, 1], 1)
            .with("ceil_mode", AttrValue::Int(ceil))
            .with("count_include_pad", AttrValue::Int(include_pad))
    }

    #[test]
    fn pools_with_ceil_mode_and_padding() {
        let x = iota(&[1, 1, 4, 4]);
        let mut max_attrs = pool_attrs(&[3, 3], &[2, 2], &[0; 4], 1, 0);
        max_attrs.0.remove("count_include_pad");
        max_attrs.0.remove("group");
        let y = run_op(OpKind::MaxPool, max_attrs, vec![(x.clone(), None)], None).unwrap();
        // ONNX test_maxpool_2d_ceil: [[11, 12], [15, 16]] on 1..16.
        assert_eq!(y.as_f32().unwrap(), &[10., 11., 14., 15.]);
        let mut avg = pool_attrs(&[2, 2], &[2, 2], &[1, 1, 1, 1], 0, 1);
        avg.0.remove("group");
        let y = run_op(
            OpKind::AveragePool,
            avg.clone(),
            vec![(x.clone(), None)],
            None,
        )
        .unwrap();
        assert_eq!(y.as_f32().unwrap()[0], 0.0 / 4.0);
        avg.set("count_include_pad", AttrValue::Int(0));
        let y = run_op(OpKind::AveragePool, avg, vec![(x, None)], None).unwrap();
        assert_eq!(y.shape(), &[1, 1, 3, 3]);
        assert_eq!(y.as_f32().unwrap()[1], (1. + 2.) / 2.);
    }

    #[test]
    fn gemm_transposed_with_broadcast_bias() {
        let a = Tensor::from_f32(&[2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let b = Tensor::from_f32(&[2, 3], vec![1., 0., 1., 0., 1., 0.]);
        let c = Tensor::from_f32(&[2], vec![10., 20.]);
        let attrs = Attrs::new()
            .with("alpha", AttrValue::Float(2.0))
            .with("beta", AttrValue::Float(1.0))
            .with("transA", AttrValue::Int(0))
            .with("transB", AttrValue::Int(1));
        let y = run_op(
            OpKind::Gemm,
            attrs,
            vec![(a, None), (b, None), (c, None)],
            None,
        )
        .unwrap();
        assert_eq!(y.as_f32().unwrap(), &[18., 24., 30., 30.]);
    }

    #[test]
    fn matmul_broadcasts_batches_and_vectors() {
        let a = iota(&[2, 2, 3]);
        let v = Tensor::from_f32(&[3], vec![1., 1., 1.]);
        let y = run_op(
            OpKind::MatMul,
            Attrs::new(),
            vec![(a, None), (v, None)],
            None,
        )
        .unwrap();
        assert_eq!(y.shape(), &[2, 2]);
        assert_eq!(y.as_f32().unwrap(), &[3., 12., 21., 30.]);
    }

    #[test]
    fn batchnorm_and_softmax() {
        let x = Tensor::from_f32(&[1, 2, 1, 1], vec![1., 2.]);
        let p = |v: [f32; 2]| (Tensor::from_f32(&[2], v.to_vec()), None);
        let y = run_op(
            OpKind::BatchNormalization,
            Attrs::new().with("epsilon", AttrValue::Float(0.0)),
            vec![
                (x, None),
                p([2., 3.]),
                p([1., 1.]),
                p([0., 1.]),
                p([4., 1.]),
            ],
            None,
        )
        .unwrap();
        assert_eq!(y.as_f32().unwrap(), &[2.0, 4.0]);
        let s = run_op(
            OpKind::Softmax,
            Attrs::new().with("axis", AttrValue::Int(1)),
            vec![(Tensor::from_f32(&[1, 2], vec![1000., 1000.]), None)],
            None,
        )
        .unwrap();
        assert_eq!(s.as_f32().unwrap(), &[0.5, 0.5]);
    }
}

/// IEEE 754-2019 `maximumNumber`: NaN is skipped and +0 is above −0, so a maximum over
/// many elements does not depend on their order (`f64::max` leaves the sign of a zero
/// maximum unspecified); GlobalMaxPool's kernel reduces lanes in any order and relies on it.
fn max_number(a: f64, b: f64) -> f64 {
    if b > a || (b == a && b.is_sign_positive()) {
        b
    } else {
        a
    }
}
