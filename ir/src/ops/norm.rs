//! Normalizations and the softmax relatives: LayerNormalization, InstanceNormalization,
//! GroupNormalization, LpNormalization, LogSoftmax, Hardmax.
//!
//! The three mean/variance normalizations share one definition ([`standardize`]): each
//! normalizes blocks of consecutive elements (LayerNormalization everything from `axis` on,
//! InstanceNormalization one channel's plane, GroupNormalization a group of channels) to zero
//! mean and unit (population) variance, `(x − mean) / sqrt(var + epsilon)`, then applies a
//! scale and a bias; they differ in the block and in how scale and bias are indexed. All
//! compute in f64 and round once. Only the first result of ONNX LayerNormalization (the
//! normalized value; Mean and InvStdDev are for training) exists here.

use super::broadcast::{broadcast_indices, broadcast_static};
use super::nn::{f32_only, widen};
use super::shape::axis_in;
use super::{EvalCtx, InferCtx};
use crate::{DType, Dim, OpKind, Tensor, TensorData, TensorType};

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    let x = cx.input(0)?;
    let attrs = &cx.op.attrs;
    f32_only(x, "the input")?;
    let dims = x.shape.dims();
    let rank = dims.len();
    match cx.op.kind {
        OpKind::LayerNormalization => {
            let axis = axis_in(attrs.int("axis")?, rank)?;
            attrs.float("epsilon")?;
            for (i, what) in [(1, "scale"), (2, "bias")] {
                let Some(t) = cx.inputs.get(i).copied().flatten() else {
                    continue;
                };
                f32_only(t, what)?;
                // It broadcasts onto the input without changing it, varying only along the
                // normalized axes.
                let td = t.shape.dims();
                let fits = td.len() <= rank
                    && td
                        .iter()
                        .enumerate()
                        .all(|(p, &d)| d == Dim::Fixed(1) || p + rank - td.len() >= axis)
                    && broadcast_static(&x.shape, &t.shape).is_ok_and(|s| s == x.shape);
                if !fits {
                    return Err(format!(
                        "{what} of shape {} does not fit the normalized axes {axis}.. of {}",
                        t.shape, x.shape
                    ));
                }
            }
        }
        OpKind::InstanceNormalization | OpKind::GroupNormalization => {
            let min_rank = if cx.op.kind == OpKind::InstanceNormalization {
                3
            } else {
                2
            };
            if rank < min_rank {
                return Err(format!(
                    "input of rank {rank} has no channel and spatial axes"
                ));
            }
            attrs.float("epsilon")?;
            let channels = dims[1];
            if channels == Dim::Batch {
                return Err("the batch cannot be the channel axis".to_string());
            }
            if cx.op.kind == OpKind::GroupNormalization {
                let groups = attrs.int("num_groups")?;
                let ok = groups >= 1 && channels.fixed().is_none_or(|c| c as i64 % groups == 0);
                if !ok {
                    return Err(format!(
                        "{channels} channels do not divide into {groups} groups"
                    ));
                }
            }
            for (i, what) in [(1, "scale"), (2, "bias")] {
                let t = cx.input(i)?;
                f32_only(t, what)?;
                let ok = match t.shape.dims() {
                    [d] => *d == channels || d.is_unbound() || channels.is_unbound(),
                    _ => false,
                };
                if !ok {
                    return Err(format!(
                        "{what} has shape {}, expected [{channels}]",
                        t.shape
                    ));
                }
            }
        }
        OpKind::LpNormalization => {
            axis_in(attrs.int("axis")?, rank)?;
            let p = attrs.int("p")?;
            if p != 1 && p != 2 {
                return Err(format!("p = {p}: only the L1 and L2 norms exist"));
            }
        }
        OpKind::LogSoftmax | OpKind::Hardmax => {
            axis_in(attrs.int("axis")?, rank)?;
        }
        other => return Err(format!("{other} is not a normalization")),
    }
    Ok(vec![TensorType::new(DType::F32, x.shape.clone())])
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let x = cx.input(0)?;
    let attrs = &cx.op.attrs;
    let dims = x.shape();
    let v = widen(x)?;
    let y = match cx.op.kind {
        OpKind::LayerNormalization => {
            let axis = axis_in(attrs.int("axis")?, dims.len())?;
            let block: usize = dims[axis..].iter().product();
            // Scale and bias broadcast onto the input: their values, and the index of the
            // value for each input element.
            type Spread = Option<(Vec<f64>, Vec<usize>)>;
            let along = |i: usize| -> Result<Spread, String> {
                let Some(t) = cx.inputs.get(i).copied().flatten() else {
                    return Ok(None);
                };
                Ok(Some((widen(t)?, broadcast_indices(t.shape(), dims))))
            };
            let (scale, bias) = (along(1)?.ok_or("scale is missing")?, along(2)?);
            standardize(&v, block, attrs.float("epsilon")? as f64, |i| {
                (
                    scale.0[scale.1[i]],
                    bias.as_ref().map_or(0.0, |b| b.0[b.1[i]]),
                )
            })
        }
        OpKind::InstanceNormalization | OpKind::GroupNormalization => {
            let (channels, plane) = (dims[1], dims[2..].iter().product::<usize>());
            let groups = match cx.op.kind {
                OpKind::GroupNormalization => usize::try_from(attrs.int("num_groups")?)
                    .map_err(|_| "num_groups is negative")?,
                _ => channels,
            };
            if groups == 0 || channels % groups != 0 {
                return Err(format!(
                    "{channels} channels do not divide into {groups} groups"
                ));
            }
            let (scale, bias) = (widen(cx.input(1)?)?, widen(cx.input(2)?)?);
            if scale.len() != channels || bias.len() != channels {
                return Err(format!("scale and bias must have {channels} elements"));
            }
            standardize(
                &v,
                channels / groups * plane,
                attrs.float("epsilon")? as f64,
                |i| {
                    let c = (i / plane.max(1)) % channels;
                    (scale[c], bias[c])
                },
            )
        }
        OpKind::LpNormalization => {
            let p = attrs.int("p")?;
            along_axis(&v, dims, attrs.int("axis")?, |line| {
                let norm = match p {
                    1 => line.iter().map(|x| x.abs()).sum::<f64>(),
                    _ => line.iter().map(|x| x * x).sum::<f64>().sqrt(),
                };
                // A zero norm gives zeros (the ONNX reference's 0/0 = 0).
                line.iter()
                    .map(|&x| if norm == 0.0 { 0.0 } else { x / norm })
                    .collect()
            })?
        }
        OpKind::LogSoftmax => along_axis(&v, dims, attrs.int("axis")?, |line| {
            let max = line.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let log_sum = line.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
            line.iter().map(|&x| x - max - log_sum).collect()
        })?,
        OpKind::Hardmax => along_axis(&v, dims, attrs.int("axis")?, |line| {
            let first = super::reduce::arg_extreme(line.iter().copied(), true, false) as usize;
            (0..line.len())
                .map(|j| if j == first { 1.0 } else { 0.0 })
                .collect()
        })?,
        other => return Err(format!("{other} is not a normalization")),
    };
    Tensor::new(
        DType::F32,
        dims.to_vec(),
        TensorData::F32(y.into_iter().map(|v| v as f32).collect()),
    )
    .map(|t| vec![t])
}

/// Normalizes each block of `block` consecutive elements of `v` to zero mean and unit
/// population variance, then maps element `i` to `n · scale + bias` where `affine(i)` gives
/// `(scale, bias)`.
fn standardize(
    v: &[f64],
    block: usize,
    epsilon: f64,
    affine: impl Fn(usize) -> (f64, f64),
) -> Vec<f64> {
    let mut y = Vec::with_capacity(v.len());
    for (b, chunk) in v.chunks(block.max(1)).enumerate() {
        let n = chunk.len() as f64;
        let mean = chunk.iter().sum::<f64>() / n;
        let var = chunk.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        let inv = 1.0 / (var + epsilon).sqrt();
        for (j, &x) in chunk.iter().enumerate() {
            let (s, t) = affine(b * block + j);
            y.push((x - mean) * inv * s + t);
        }
    }
    y
}

/// Applies `f` to every line of `v` (shape `dims`) along `axis`, writing its results back
/// in place of the line.
fn along_axis(
    v: &[f64],
    dims: &[usize],
    axis: i64,
    f: impl Fn(&[f64]) -> Vec<f64>,
) -> Result<Vec<f64>, String> {
    let axis = axis_in(axis, dims.len())?;
    let (extent, inner) = (dims[axis], dims[axis + 1..].iter().product::<usize>());
    let mut y = vec![0.0; v.len()];
    if extent * inner == 0 {
        return Ok(y);
    }
    let mut line = Vec::with_capacity(extent);
    for outer in 0..v.len() / (extent * inner) {
        for i in 0..inner {
            let at = |j: usize| (outer * extent + j) * inner + i;
            line.clear();
            line.extend((0..extent).map(|j| v[at(j)]));
            for (j, r) in f(&line).into_iter().enumerate() {
                y[at(j)] = r;
            }
        }
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::run_op;
    use crate::{AttrValue, Attrs, OpKind, Tensor};

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn layer_norm_over_the_last_axis() {
        let x = Tensor::from_f32(&[2, 2], vec![1., 3., -1., -1.]);
        let attrs = Attrs::new()
            .with("axis", AttrValue::Int(1))
            .with("epsilon", AttrValue::Float(0.0));
        let scale = Tensor::from_f32(&[2], vec![2., 1.]);
        let bias = Tensor::from_f32(&[2], vec![0., 10.]);
        let y = run_op(
            OpKind::LayerNormalization,
            attrs.clone().with("epsilon", AttrValue::Float(1e-9)),
            vec![(x.clone(), None), (scale.clone(), None), (bias, None)],
            None,
        )
        .unwrap();
        close(y.as_f32().unwrap(), &[-2., 11., 0., 10.]);
        let bad = Tensor::from_f32(&[2, 1], vec![1., 1.]);
        assert!(run_op(
            OpKind::LayerNormalization,
            attrs,
            vec![(x, None), (bad, None)],
            None
        )
        .is_err());
    }

    #[test]
    fn group_and_instance_norm() {
        let x = Tensor::from_f32(&[1, 2, 2], vec![0., 2., 4., 8.]);
        let p = |v: [f32; 2]| (Tensor::from_f32(&[2], v.to_vec()), None);
        let eps = AttrValue::Float(0.0);
        let inst = run_op(
            OpKind::InstanceNormalization,
            Attrs::new().with("epsilon", eps.clone()),
            vec![
                (x.clone().reshaped(vec![1, 2, 2, 1]).unwrap(), None),
                p([1., 1.]),
                p([0., 1.]),
            ],
            None,
        )
        .unwrap();
        close(inst.as_f32().unwrap(), &[-1., 1., 0., 2.]);
        let attrs = Attrs::new()
            .with("epsilon", eps)
            .with("num_groups", AttrValue::Int(1));
        let group = run_op(
            OpKind::GroupNormalization,
            attrs,
            vec![(x, None), p([1., 2.]), p([0., 0.])],
            None,
        )
        .unwrap();
        // One group of [0, 2, 4, 8]: mean 3.5, std sqrt(8.75).
        let s = 8.75f32.sqrt();
        close(
            group.as_f32().unwrap(),
            &[-3.5 / s, -1.5 / s, 2.0 * 0.5 / s, 2.0 * 4.5 / s],
        );
    }

    #[test]
    fn lp_norm_log_softmax_hardmax() {
        let x = Tensor::from_f32(&[2, 2], vec![3., -4., 0., 0.]);
        let lp = |p: i64| {
            run_op(
                OpKind::LpNormalization,
                Attrs::new()
                    .with("axis", AttrValue::Int(1))
                    .with("p", AttrValue::Int(p)),
                vec![(x.clone(), None)],
                None,
            )
            .unwrap()
        };
        close(lp(2).as_f32().unwrap(), &[0.6, -0.8, 0., 0.]);
        close(lp(1).as_f32().unwrap(), &[3. / 7., -4. / 7., 0., 0.]);
        let ls = run_op(
            OpKind::LogSoftmax,
            Attrs::new().with("axis", AttrValue::Int(1)),
            vec![(Tensor::from_f32(&[1, 2], vec![1000., 1000.]), None)],
            None,
        )
        .unwrap();
        close(ls.as_f32().unwrap(), &[-(2f32.ln()); 2]);
        let hm = run_op(
            OpKind::Hardmax,
            Attrs::new().with("axis", AttrValue::Int(0)),
            vec![(Tensor::from_f32(&[3], vec![1., 5., 5.]), None)],
            None,
        )
        .unwrap();
        assert_eq!(hm.as_f32().unwrap(), &[0., 1., 0.]);
    }
}
