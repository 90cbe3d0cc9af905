//! ConvTranspose.
//!
//! ONNX sizes the result four ways: explicit `pads`, `output_padding` added at the end,
//! an explicit `output_shape`, and `auto_pad` SAME_UPPER/SAME_LOWER (result = input ·
//! stride unless `output_shape` says otherwise). The IR has one form, signed begin/end pads
//! (see `qlift_ir`'s `ops/conv_transpose.rs`), so the adapter resolves all four here, as the
//! ONNX reference implementation does: with `output_shape` and no SAME mode the result is
//! placed at the given pads and cut or extended at the end; SAME splits the total padding
//! with floor division, the odd unit at the end for SAME_UPPER.

use super::Registry;
use crate::onnx::import::{ints, NodeCx};
use crate::Error;
use qlift_ir::{AttrValue, Attrs, OpKind};

pub(crate) fn register(reg: &mut Registry) {
    reg.insert("ConvTranspose", conv_transpose);
}

fn conv_transpose(cx: &mut NodeCx) -> Result<(), Error> {
    let wshape = cx.input_type(1)?.shape;
    let wdims = wshape
        .as_fixed()
        .ok_or_else(|| cx.error("weights must have a static shape"))?;
    if wdims.len() < 3 {
        return Err(cx.error(format!(
            "weights of rank {} are not [C, M/group, kernel...]",
            wdims.len()
        )));
    }
    let r = wdims.len() - 2;
    let kernel = cx
        .ints("kernel_shape")
        .unwrap_or_else(|| wdims[2..].iter().map(|&d| d as i64).collect());
    let strides = cx.ints("strides").unwrap_or_else(|| vec![1; r]);
    let dilations = cx.ints("dilations").unwrap_or_else(|| vec![1; r]);
    let output_padding = cx.ints("output_padding").unwrap_or_else(|| vec![0; r]);
    let pads = cx.ints("pads").unwrap_or_else(|| vec![0; 2 * r]);
    let valid = |v: &[i64], n: usize, min: i64| v.len() == n && v.iter().all(|&e| e >= min);
    if !valid(&kernel, r, 1)
        || !valid(&strides, r, 1)
        || !valid(&dilations, r, 1)
        || !valid(&output_padding, r, 0)
        || !valid(&pads, 2 * r, 0)
    {
        return Err(cx.error(format!(
            "kernel_shape {kernel:?}, strides {strides:?}, dilations {dilations:?}, output_padding {output_padding:?}, pads {pads:?} do not fit {r} spatial axes"
        )));
    }
    // output_shape lists the spatial extents (some exporters write N and C too).
    let output_shape = match cx.ints("output_shape") {
        Some(s) if s.len() == r || s.len() == r + 2 => Some(s[s.len() - r..].to_vec()),
        Some(s) => {
            return Err(cx.error(format!("output_shape {s:?} does not fit {r} spatial axes")))
        }
        None => None,
    };
    let mode = cx.string("auto_pad", "NOTSET");
    let same = matches!(mode.as_str(), "SAME_UPPER" | "SAME_LOWER");
    if !same && !matches!(mode.as_str(), "NOTSET" | "VALID") {
        return Err(cx.error(format!("auto_pad `{mode}` is not an ONNX mode")));
    }
    let xtype = cx.input_type(0)?;
    let spatial = || -> Result<Vec<i64>, Error> {
        let dims = xtype.shape.dims();
        if dims.len() != r + 2 {
            return Err(cx.error(format!(
                "input {} does not have {r} spatial axes",
                xtype.shape
            )));
        }
        dims[2..].iter().map(|d| d.fixed().map(|n| n as i64).ok_or_else(|| cx.error("output_shape and auto_pad SAME need known spatial extents; fix them with --shape"))).collect()
    };
    // Without output padding or pads, the result spans s·(in − 1) + d·(k − 1) + 1 (in i128:
    // attributes are untrusted, the sums must not overflow).
    let natural = |input: &[i64], a: usize| {
        strides[a] as i128 * (input[a] as i128 - 1)
            + dilations[a] as i128 * (kernel[a] as i128 - 1)
            + 1
    };
    let mut canonical = vec![0i128; 2 * r];
    if same {
        let input = spatial()?;
        for a in 0..r {
            let out = output_shape
                .as_ref()
                .map_or(input[a] as i128 * strides[a] as i128, |s| s[a] as i128);
            let total = natural(&input, a) + output_padding[a] as i128 - out;
            let (begin, end) = if mode == "SAME_UPPER" {
                (total.div_euclid(2), total - total.div_euclid(2))
            } else {
                (total - total.div_euclid(2), total.div_euclid(2))
            };
            canonical[a] = begin;
            canonical[a + r] = end - output_padding[a] as i128;
        }
    } else if let Some(out) = &output_shape {
        let input = spatial()?;
        for a in 0..r {
            canonical[a] = pads[a] as i128;
            canonical[a + r] = natural(&input, a) - pads[a] as i128 - out[a] as i128;
        }
    } else if mode == "NOTSET" {
        for a in 0..r {
            canonical[a] = pads[a] as i128;
            canonical[a + r] = pads[a + r] as i128 - output_padding[a] as i128;
        }
    } else {
        for a in 0..r {
            canonical[a + r] = -(output_padding[a] as i128);
        }
    }
    let canonical = canonical
        .iter()
        .map(|&p| i64::try_from(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| cx.error("the padding this result size needs is out of range"))?;
    let attrs = Attrs::new()
        .with("kernel_shape", ints(kernel))
        .with("strides", ints(strides))
        .with("dilations", ints(dilations))
        .with("pads", ints(canonical))
        .with("group", AttrValue::Int(cx.int("group", 1)));
    let (x, w, b) = (cx.required(0)?, cx.required(1)?, cx.input(2)?);
    cx.emit(OpKind::ConvTranspose, attrs, &[Some(x), Some(w), b])
}
