//! Leak check, in its own test binary because it installs a counting global allocator:
//! 100 compile/drop cycles of the digits CNN (JIT) and 10,000 runs must return the live heap
//! bytes to their baseline, and the resident set (JIT code is mmap'd by cranelift-jit, outside
//! the Rust heap) must not grow more than a few MiB.

use qlift::npy::read_npy;
use qlift::{CompileOptions, CompiledModel};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};

/// `System`, counting live bytes and allocations.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CYCLES: usize = 100;
const RUNS: usize = 10_000;
/// Heap slack: lazily initialized statics of dependencies may appear after the warm-up.
const SLACK_BYTES: isize = 16 << 10;
const RSS_SLACK: usize = 8 << 20;

/// Resident set size in bytes, from /proc/self/statm (Linux).
fn rss() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn compile_drop_cycles_and_runs_do_not_leak() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models");
    let bytes = std::fs::read(dir.join("digits_cnn.onnx")).unwrap();
    let x = read_npy(&dir.join("digits_test_x.npy"))
        .unwrap()
        .slice_outer(0, 1)
        .unwrap();
    let opts = CompileOptions::default();
    let cycle = || {
        let model = CompiledModel::from_onnx_bytes(&bytes, None, &opts).unwrap();
        let y = model.run(std::slice::from_ref(&x)).unwrap();
        assert_eq!(y[0].shape(), &[1, 10]);
    };
    // Warm-up: one-time initialization (ISA detection, lazily built tables, the allocator's
    // own arenas) happens here, not in the measured cycles.
    for _ in 0..3 {
        cycle();
    }
    let (live0, rss0) = (LIVE.load(Relaxed), rss());
    for _ in 0..CYCLES {
        cycle();
    }
    let (live1, rss1) = (LIVE.load(Relaxed), rss());

    // Runs of one model: outputs are freed, the arena pool is reused.
    let model = CompiledModel::from_onnx_bytes(&bytes, None, &opts).unwrap();
    model.run(std::slice::from_ref(&x)).unwrap();
    let (live2, allocs2) = (LIVE.load(Relaxed), ALLOCS.load(Relaxed));
    for _ in 0..RUNS {
        model.run(std::slice::from_ref(&x)).unwrap();
    }
    let (live3, allocs3) = (LIVE.load(Relaxed), ALLOCS.load(Relaxed));
    // run_into with preallocated outputs: a warm call allocates nothing at all.
    let mut outputs = model.run(std::slice::from_ref(&x)).unwrap();
    model
        .run_into(std::slice::from_ref(&x), &mut outputs)
        .unwrap();
    let before = ALLOCS.load(Relaxed);
    for _ in 0..RUNS {
        model
            .run_into(std::slice::from_ref(&x), &mut outputs)
            .unwrap();
    }
    let run_into_allocs = ALLOCS.load(Relaxed) - before;
    assert_eq!(
        run_into_allocs, 0,
        "{RUNS} warm run_into calls allocated {run_into_allocs} times"
    );
    drop(outputs);
    drop(model);
    let live4 = LIVE.load(Relaxed);

    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    eprintln!(
        "leak check: heap live bytes {live0} -> {live1} after {CYCLES} compile/drop cycles (delta {}), {live2} -> {live3} after {RUNS} runs \
         (delta {}, {} allocations per run), {live4} after the drop; RSS {:.1} -> {:.1} MiB",
        live1 - live0,
        live3 - live2,
        (allocs3 - allocs2) / RUNS,
        rss0.map_or(f64::NAN, mib),
        rss1.map_or(f64::NAN, mib),
    );
    assert!(
        (live1 - live0).abs() <= SLACK_BYTES,
        "{CYCLES} compile/drop cycles leaked {} bytes",
        live1 - live0
    );
    assert!(
        (live3 - live2).abs() <= SLACK_BYTES,
        "{RUNS} runs leaked {} bytes",
        live3 - live2
    );
    assert!(
        (live4 - live0).abs() <= SLACK_BYTES,
        "compile, runs and drop leaked {} bytes",
        live4 - live0
    );
    if let (Some(a), Some(b)) = (rss0, rss1) {
        assert!(
            b < a + RSS_SLACK,
            "RSS grew by {:.1} MiB over {CYCLES} compile/drop cycles",
            mib(b - a)
        );
    }

    // The check can fail: a model that is never dropped shows up.
    let before = LIVE.load(Relaxed);
    std::mem::forget(CompiledModel::from_onnx_bytes(&bytes, None, &opts).unwrap());
    assert!(
        LIVE.load(Relaxed) - before > SLACK_BYTES,
        "a leaked model is not visible to the counter"
    );
}
