//! The machine's int8 multiply-accumulate peak, measured: a loop of the dot instruction the
//! wide micro-kernels use (`vpdpbusd`, `vpdpwssd` or AVX2's `vpmaddwd` + `vpaddd`, on ymm),
//! twelve independent accumulators deep, timed on this CPU.
//!
//! `qlift bench` reports each model's GMAC/s as a fraction of this. A nominal figure
//! (products per cycle × the clock /proc/cpuinfo reports) was wrong both ways: cpuinfo
//! gives the base clock while cores boost (ResNet-18 came out at 103% of "peak"), and
//! products per cycle differ between CPUs with the same instructions (Zen 4 splits a
//! 512-bit operation in two, some Intel cores have one 512-bit port, others two).

use crate::isa::{target_isa, CodegenOptions};
use crate::kernels::ukernel::{self, Isa, Operands};
use crate::CodegenError;
use cranelift_codegen::ir::{types, AbiParam};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Module};
use iced_x86::code_asm::*;
use std::time::{Duration, Instant};

/// A measured peak: multiply-accumulates per second on `threads` cores at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Int8Peak {
    /// Billions of u8×i8 (or i16×i16) multiply-accumulates per second, all threads.
    pub gmacs: f64,
    /// The instruction measured, e.g. `vpdpbusd ymm`.
    pub instruction: &'static str,
    /// Threads that ran the loop at the same time.
    pub threads: usize,
}

/// Independent accumulators of the loop (more than the latency × throughput of any of
/// these instructions on current cores: 4-5 cycles × 2 per cycle).
const ACCUMULATORS: usize = 12;

/// Measures the peak of the micro-kernels `opts` allows on the host, on `threads` threads
/// at once (about 0.1 s). `None` where no wide micro-kernels apply (no AVX2, not x86-64,
/// or `--max-vector-bits 128`).
pub fn int8_peak(opts: &CodegenOptions, threads: usize) -> Result<Option<Int8Peak>, CodegenError> {
    let isa = target_isa(opts)?;
    let Some(wide) = crate::program::wide_isa(isa.as_ref(), opts) else {
        return Ok(None);
    };
    let (operands, macs_per_dot, instruction) = if wide.has_quads() {
        let quads = Operands::Quads {
            unsigned_broadcast: false,
        };
        (quads, 32.0, "vpdpbusd ymm")
    } else if wide == Isa::Avx2 {
        (Operands::Pairs, 16.0, "vpmaddwd+vpaddd ymm")
    } else {
        (Operands::Pairs, 16.0, "vpdpwssd ymm")
    };
    let bug = CodegenError::Bug;
    let code = dot_loop(wide, operands).map_err(bug)?;
    let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
    let mut sig = module.make_signature();
    sig.params.push(AbiParam::new(types::I64));
    let id = module
        .declare_anonymous_function(&sig)
        .map_err(|e| bug(e.to_string()))?;
    module
        .define_function_bytes(id, 64, &code, &[])
        .map_err(|e| bug(e.to_string()))?;
    module
        .finalize_definitions()
        .map_err(|e| bug(e.to_string()))?;
    // SAFETY: the code is `dot_loop`'s: a System V function of one integer argument that
    // touches only vector registers and its argument register, and returns.
    let run: extern "sysv64" fn(u64) =
        unsafe { std::mem::transmute(module.get_finalized_function(id)) };
    let threads = threads.max(1);
    // The clock ramps up under load: spin first, then take the best of five timings.
    let spin = Instant::now();
    while spin.elapsed() < Duration::from_millis(20) {
        run(10_000);
    }
    const ITERATIONS: u64 = 1_000_000;
    let best = (0..5)
        .map(|_| timed(run, ITERATIONS, threads))
        .fold(f64::INFINITY, f64::min);
    // SAFETY: `run` is not called after this, and nothing else from the module escaped.
    unsafe { module.free_memory() };
    let macs = ITERATIONS as f64 * ACCUMULATORS as f64 * macs_per_dot * threads as f64;
    Ok(Some(Int8Peak {
        gmacs: macs / best / 1e9,
        instruction,
        threads,
    }))
}

/// Seconds `threads` threads take to run `run(iterations)` each, started together: from
/// the first start to the last end, each read by the thread itself (a caller preempted
/// after the start would otherwise miss the whole run).
fn timed(run: extern "sysv64" fn(u64), iterations: u64, threads: usize) -> f64 {
    let start = std::sync::Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    let t = Instant::now();
                    run(iterations);
                    (t, Instant::now())
                })
            })
            .collect();
        workers.into_iter().filter_map(|w| w.join().ok()).collect()
    });
    let first = spans.iter().map(|s| s.0).min();
    let last = spans.iter().map(|s| s.1).max();
    match (first, last) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => f64::INFINITY,
    }
}

/// `fn(n)`: `n` times, one `dot` into each of [`ACCUMULATORS`] registers from two fixed
/// sources (the values do not matter: these instructions take the same time for any).
fn dot_loop(isa: Isa, operands: Operands) -> Result<Vec<u8>, String> {
    let e = |e: IcedError| e.to_string();
    let acc = [
        ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11,
    ];
    let mut a = CodeAssembler::new(64).map_err(e)?;
    a.set_prefer_vex(true);
    for &r in &acc {
        a.vpxor(r, r, r).map_err(e)?;
    }
    let mut top = a.create_label();
    a.set_label(&mut top).map_err(e)?;
    for &r in &acc {
        ukernel::dot(&mut a, isa, operands, r, (ymm12, ymm13), ymm14)?;
    }
    a.sub(rdi, 1).map_err(e)?;
    a.jnz(top).map_err(e)?;
    a.vzeroupper().map_err(e)?;
    a.ret().map_err(e)?;
    a.assemble(0).map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The measured peak is a plausible number for the host: positive, and below 64
    /// products per cycle at 6 GHz per thread (the widest rate of any x86 core today).
    #[test]
    fn the_peak_is_measured_and_plausible() {
        let Some(peak) = int8_peak(&CodegenOptions::default(), 1).unwrap() else {
            eprintln!("skipped: no wide micro-kernels on this host");
            return;
        };
        eprintln!("{peak:?}");
        assert!(peak.gmacs > 1.0 && peak.gmacs < 64.0 * 6.0, "{peak:?}");
    }
}
