//! ConvTranspose, as the gather of each result element from the input elements that
//! scatter into it.
//!
//! Along each spatial axis separately, result coordinate `o` receives input coordinate `i`
//! through kernel tap `k` exactly when `i·stride + k·dilation − pad_begin = o`: a
//! compile-time table per axis lists, for every `o`, those `(i, k)` pairs as element offsets
//! into the input and the weights. The taps of a result element are the product of its
//! axes' lists, so the loops are: result channel, result coordinates (one table row per
//! axis), input channel of the group, then the pairs of each axis. Accumulation is in f32
//! (the interpreter's f64 sum rounded once differs by rounding only), the bias first.

use super::Kernel;
use crate::emit;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;

/// One spatial axis of the gather: its result extent, its table and the table's row width
/// in i64 entries (`1 + 2 · most pairs`).
struct Axis {
    out: usize,
    table: Value,
    width: i64,
}

pub(super) fn conv_transpose(k: &mut Kernel) -> Result<(), String> {
    let (x, w, y) = (k.input(0)?, k.input(1)?, k.output(0));
    let (xd, wd, yd) = (x.dims(), w.dims(), y.dims());
    if w.batched() || xd.len() < 3 || wd.len() != xd.len() || yd.len() != xd.len() {
        return Err(
            "ConvTranspose needs [N, C, spatial…] operands and constant-shaped weights".to_string(),
        );
    }
    let attrs = &k.op.attrs;
    let r = xd.len() - 2;
    let (strides, dilations, pads) = (
        attrs.usizes("strides")?,
        attrs.usizes("dilations")?,
        attrs.ints("pads")?.to_vec(),
    );
    let group = usize::try_from(attrs.int("group")?).map_err(|_| "negative group")?;
    if strides.len() != r || dilations.len() != r || pads.len() != 2 * r || group == 0 {
        return Err("window attributes do not fit the spatial axes".to_string());
    }
    let (channels, per_group_out) = (xd[1], wd[1]);
    let out_channels = yd[1];
    if channels != wd[0] || channels % group != 0 || out_channels != per_group_out * group {
        return Err(format!(
            "channels of input {xd:?}, weights {wd:?} and result {yd:?} disagree (group {group})"
        ));
    }
    let (px, pw, py, x_batched) = (x.ptr, w.ptr, y.ptr, x.batched());
    let bias = k.optional(2).map(|b| b.ptr);
    let (in_sp, k_sp, out_sp) = (&xd[2..], &wd[2..], &yd[2..]);
    let (x_str, w_str) = (emit::row_major(in_sp), emit::row_major(k_sp));
    let mut axes = Vec::with_capacity(r);
    for a in 0..r {
        let mut rows: Vec<Vec<(i64, i64)>> = vec![Vec::new(); out_sp[a]];
        for i in 0..in_sp[a] {
            for t in 0..k_sp[a] {
                let o = qlift_ir::tap_position(i, t, strides[a], dilations[a], pads[a]);
                if o >= 0 && o < out_sp[a] as i128 {
                    rows[o as usize].push((i as i64 * x_str[a], t as i64 * w_str[a]));
                }
            }
        }
        let most = rows.iter().map(Vec::len).max().unwrap_or(0);
        let width = 1 + 2 * most;
        let mut bytes = Vec::with_capacity(out_sp[a] * width * 8);
        for row in &rows {
            let mut entries = vec![row.len() as i64];
            entries.extend(row.iter().flat_map(|&(p, q)| [p, q]));
            entries.resize(width, 0);
            bytes.extend(entries.iter().flat_map(|e| e.to_le_bytes()));
        }
        let table = k.data(bytes, 8)?;
        axes.push(Axis {
            out: out_sp[a],
            table,
            width: width as i64,
        });
    }
    let (in_count, k_count, out_count) = (
        in_sp.iter().product::<usize>() as i64,
        k_sp.iter().product::<usize>() as i64,
        out_sp.iter().product::<usize>() as i64,
    );
    let cg = (channels / group) as i64;
    let y_strides = emit::row_major(out_sp);
    let samples = k.samples(x_batched);
    let samples = k.fb.ins().imul_imm_s(samples, xd[0] as i64);
    let acc = k.fb.declare_var(types::F32);
    emit::for_dynamic(k.fb, samples, |fb, s| {
        emit::for_count(fb, out_channels as i64, |fb, m| {
            let g = fb.ins().udiv_imm_s(m, per_group_out as i64);
            let local = fb.ins().urem_imm_s(m, per_group_out as i64);
            let plane = fb.ins().imul_imm_s(s, out_channels as i64);
            let plane = fb.ins().iadd(plane, m);
            let y_base = fb.ins().imul_imm_s(plane, out_count);
            let start = bias.map(|b| emit::load_at(fb, types::F32, b, m));
            let mut rows_at = Vec::with_capacity(r);
            gather_outputs(
                fb,
                &axes,
                &y_strides,
                0,
                y_base,
                &mut rows_at,
                &mut |fb, yo, rows| {
                    let init = start.unwrap_or_else(|| fb.ins().f32const(0.0));
                    fb.def_var(acc, init);
                    emit::for_count(fb, cg, |fb, c| {
                        let ic = fb.ins().imul_imm_s(g, cg);
                        let ic = fb.ins().iadd(ic, c);
                        let xi = fb.ins().imul_imm_s(s, channels as i64);
                        let xi = fb.ins().iadd(xi, ic);
                        let x_base = fb.ins().imul_imm_s(xi, in_count);
                        let wi = fb.ins().imul_imm_s(ic, per_group_out as i64);
                        let wi = fb.ins().iadd(wi, local);
                        let w_base = fb.ins().imul_imm_s(wi, k_count);
                        taps(fb, rows, 0, x_base, w_base, &mut |fb, xo, wo| {
                            let xv = emit::load_at(fb, types::F32, px, xo);
                            let wv = emit::load_at(fb, types::F32, pw, wo);
                            let p = fb.ins().fmul(xv, wv);
                            let a = fb.use_var(acc);
                            let a = fb.ins().fadd(a, p);
                            fb.def_var(acc, a);
                        });
                    });
                    let a = fb.use_var(acc);
                    emit::store_at(fb, a, py, yo);
                },
            );
        });
    });
    Ok(())
}

/// Loops over the result coordinates of axes `a..`, passing the result offset and, per axis,
/// the address of its table row to `body`.
fn gather_outputs(
    fb: &mut FunctionBuilder,
    axes: &[Axis],
    y_strides: &[i64],
    a: usize,
    yo: Value,
    rows: &mut Vec<Value>,
    body: &mut dyn FnMut(&mut FunctionBuilder, Value, &[Value]),
) {
    if a == axes.len() {
        body(fb, yo, rows);
        return;
    }
    let axis = &axes[a];
    emit::for_count(fb, axis.out as i64, |fb, o| {
        let row = emit::addr(fb, axis.table, o, axis.width * 8);
        let step = fb.ins().imul_imm_s(o, y_strides[a]);
        let next = fb.ins().iadd(yo, step);
        rows.push(row);
        gather_outputs(fb, axes, y_strides, a + 1, next, rows, body);
        rows.pop();
    });
}

/// Loops over the `(input, weight)` pairs of every axis from `a` on (table rows `rows`),
/// passing the summed offsets to `body`.
fn taps(
    fb: &mut FunctionBuilder,
    rows: &[Value],
    a: usize,
    xo: Value,
    wo: Value,
    body: &mut dyn FnMut(&mut FunctionBuilder, Value, Value),
) {
    if a == rows.len() {
        body(fb, xo, wo);
        return;
    }
    let row = rows[a];
    let count = fb.ins().load(types::I64, emit::constant_mem(), row, 0);
    emit::for_dynamic(fb, count, |fb, t| {
        let entry = emit::addr(fb, row, t, 16);
        let dx = fb.ins().load(types::I64, emit::constant_mem(), entry, 8);
        let dw = fb.ins().load(types::I64, emit::constant_mem(), entry, 16);
        let (x, w) = (fb.ins().iadd(xo, dx), fb.ins().iadd(wo, dw));
        taps(fb, rows, a + 1, x, w, body);
    });
}
