//! `qlift bench --profile`: where a compiled model's time goes, per kernel and per kernel
//! form, from the timers the JIT compiles around every kernel call
//! (`CodegenOptions::profile`), with each product's GMAC/s.

use crate::html::tail as clip;
use qlift::KernelTime;

/// The profile as text: the kernels by time (at most `top`), then the forms, then the time
/// outside kernels. `call_ms` is the mean latency of the profiled calls, `batch` their batch.
pub fn table(times: &[KernelTime], call_ms: f64, batch: usize, top: usize) -> String {
    let calls = times.iter().map(|t| t.calls).max().unwrap_or(0).max(1) as f64;
    let per_call_us = |t: &KernelTime| t.nanos as f64 / calls / 1e3;
    let kernel_us: f64 = times.iter().map(per_call_us).sum();
    let call_us = call_ms * 1e3;
    let gmacs = |m: u64, us: f64| {
        if us > 0.0 {
            (m * batch as u64) as f64 / us / 1e3
        } else {
            0.0
        }
    };
    let mut out = String::new();
    let mut sorted: Vec<&KernelTime> = times.iter().collect();
    sorted.sort_by(|a, b| b.nanos.cmp(&a.nanos));
    out.push_str(&format!(
        "{:<44} {:<18} {:<17} {:>10} {:>6} {:>8}\n",
        "kernel (node)", "op", "form", "µs/call", "share", "GMAC/s"
    ));
    for t in sorted.iter().take(top) {
        let us = per_call_us(t);
        let rate = t
            .macs
            .map_or(String::new(), |m| format!("{:.1}", gmacs(m, us)));
        out.push_str(&format!(
            "{:<44} {:<18} {:<17} {:>10.1} {:>5.1}% {:>8}\n",
            clip(&t.node, 44),
            t.op,
            t.form,
            us,
            100.0 * us / call_us,
            rate
        ));
    }
    if sorted.len() > top {
        out.push_str(&format!("… {} more kernels\n", sorted.len() - top));
    }
    // By form: time, share, and the GMAC/s of the products among them.
    let mut forms: Vec<(String, f64, u64, usize)> = Vec::new();
    for t in times {
        let key = format!("{} {}", t.op, t.form);
        let at = match forms.iter().position(|f| f.0 == key) {
            Some(i) => i,
            None => {
                forms.push((key, 0.0, 0, 0));
                forms.len() - 1
            }
        };
        forms[at].1 += per_call_us(t);
        forms[at].2 += t.macs.unwrap_or(0);
        forms[at].3 += 1;
    }
    forms.sort_by(|a, b| b.1.total_cmp(&a.1));
    out.push_str(&format!(
        "\n{:<38} {:>7} {:>10} {:>6} {:>8} {:>8}\n",
        "op and form", "kernels", "µs/call", "share", "GMACs", "GMAC/s"
    ));
    for (key, us, m, n) in &forms {
        let rate = if *m > 0 {
            format!("{:.1}", gmacs(*m, *us))
        } else {
            String::new()
        };
        let total = if *m > 0 {
            format!("{:.3}", (*m * batch as u64) as f64 / 1e9)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{:<38} {:>7} {:>10.1} {:>5.1}% {:>8} {:>8}\n",
            key,
            n,
            us,
            100.0 * us / call_us,
            total,
            rate
        ));
    }
    out.push_str(&format!(
        "\nkernels {:.1} µs of a {:.1} µs call ({:.1}%); outside kernels (entry, input checks, arena, threads, timers) {:.1} µs\n",
        kernel_us,
        call_us,
        100.0 * kernel_us / call_us,
        call_us - kernel_us
    ));
    out
}
