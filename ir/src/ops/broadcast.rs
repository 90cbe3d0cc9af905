//! Numpy multidirectional broadcasting, for static shapes (with the batch symbol) and for
//! concrete shapes, and the row-major index arithmetic the kernels share.

use crate::{Dim, Shape};

/// The broadcast of two static shapes. The batch symbol broadcasts with 1 and with itself;
/// against any other known extent it is an error, since the batch size is not known here.
/// A named symbol against a known extent takes the extent (they must agree once bound, or
/// specialization reports it); two different symbols, or an unknown extent against 1 or
/// another unknown, give an unknown extent.
pub(crate) fn broadcast_static(a: &Shape, b: &Shape) -> Result<Shape, String> {
    let rank = a.rank().max(b.rank());
    let at = |s: &Shape, i: usize| -> Dim {
        let pad = rank - s.rank();
        if i < pad {
            Dim::Fixed(1)
        } else {
            s.dims()[i - pad]
        }
    };
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Ok(x),
            (Dim::Fixed(1), y) => Ok(y),
            (x, Dim::Fixed(1)) => Ok(x),
            (Dim::Dyn, y) | (y, Dim::Dyn) => Ok(y),
            (Dim::Batch, Dim::Sym(_)) | (Dim::Sym(_), Dim::Batch) => Ok(Dim::Batch),
            (Dim::Sym(_), y @ Dim::Fixed(_)) | (y @ Dim::Fixed(_), Dim::Sym(_)) => Ok(y),
            (Dim::Sym(_), Dim::Sym(_)) => Ok(Dim::Dyn),
            (x, y) => Err(format!(
                "shapes {a} and {b} do not broadcast (axis {i}: {x} vs {y})"
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Shape)
}

/// The broadcast of concrete shapes.
pub(crate) fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    broadcast_static(&Shape::fixed(a), &Shape::fixed(b)).map(|s| s.resolve(0))
}

/// Row-major strides of a shape.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// Every multi-index of `extents`, row-major.
pub(crate) fn positions(extents: &[usize]) -> Vec<Vec<usize>> {
    let count: usize = extents.iter().product();
    let mut all = Vec::with_capacity(count);
    let mut pos = vec![0; extents.len()];
    for _ in 0..count {
        all.push(pos.clone());
        for a in (0..extents.len()).rev() {
            pos[a] += 1;
            if pos[a] < extents[a] {
                break;
            }
            pos[a] = 0;
        }
    }
    all
}

/// For every element of `out` (row-major), the flat index of the element of an operand of
/// shape `shape` that broadcasting maps onto it.
pub(crate) fn broadcast_indices(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let pad = out.len() - shape.len();
    let src = strides(shape);
    // Stride 0 along broadcast axes.
    let eff: Vec<usize> = (0..out.len())
        .map(|i| {
            if i < pad || shape[i - pad] == 1 {
                0
            } else {
                src[i - pad]
            }
        })
        .collect();
    let count: usize = out.iter().product();
    let mut indices = Vec::with_capacity(count);
    let mut pos = vec![0usize; out.len()];
    let mut flat = 0usize;
    for _ in 0..count {
        indices.push(flat);
        for axis in (0..out.len()).rev() {
            pos[axis] += 1;
            flat += eff[axis];
            if pos[axis] < out[axis] {
                break;
            }
            flat -= eff[axis] * pos[axis];
            pos[axis] = 0;
        }
    }
    indices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_broadcast_with_batch() {
        let n = Shape(vec![Dim::Batch, Dim::Fixed(3)]);
        assert_eq!(broadcast_static(&n, &Shape::fixed(&[1, 3])).unwrap(), n);
        assert_eq!(broadcast_static(&Shape::fixed(&[3]), &n).unwrap(), n);
        assert!(broadcast_static(&n, &Shape::fixed(&[2, 3])).is_err());
        assert!(broadcast_static(&Shape::fixed(&[2]), &Shape::fixed(&[3])).is_err());
    }

    #[test]
    fn indices_follow_numpy() {
        assert_eq!(broadcast_indices(&[3], &[2, 3]), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(broadcast_indices(&[2, 1], &[2, 3]), vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(broadcast_indices(&[], &[2]), vec![0, 0]);
    }
}
