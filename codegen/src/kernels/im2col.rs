//! Where each tap of a convolution reads its input: the offset tables the im2col gathers
//! of the float and integer product forms are built from.

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
pub(super) fn im2col_offsets(
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
