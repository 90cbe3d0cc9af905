//! Fork–join for the parts of one kernel call (intra-op parallelism at batch 1).
//!
//! A model at batch 1 is a chain of short kernels (MobileNetV2: ~100 split calls of
//! 20–500 µs each), so what a split costs decides whether a second thread helps at all.
//! Injecting each call into rayon's pool from outside it wakes a sleeping thread and blocks
//! the caller: tens of µs per call, which ate the whole gain. Here, as in ONNX Runtime's
//! thread pool, the calling thread runs parts itself, helpers are claimed with one
//! compare-and-swap on their mailbox, and a helper that just finished spins for
//! [`SPIN`] before parking, so the next kernel's parts find it awake.
//!
//! Parts are claimed from a shared counter by whoever is free (the caller included), so a
//! call finishes even when every helper is busy with another caller's job.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// A kernel task: `task(ctx, begin, end, part)` (see `Kernel::task`).
pub(crate) type Task = extern "C" fn(*const u8, i64, i64, i64);

/// How long an idle helper keeps polling its mailbox before it parks.
const SPIN: Duration = Duration::from_micros(200);

/// One call's parts: `parts` ranges of `0..n`, claimed by index.
struct Job {
    task: Task,
    ctx: usize,
    n: i64,
    parts: usize,
    /// The next part to claim.
    next: AtomicUsize,
    /// Helpers that hold a pointer to this job; the caller returns (and the job, on its
    /// stack, dies) only when it is zero.
    holders: AtomicUsize,
}

impl Job {
    /// Runs parts until none is left to claim.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.parts {
                return;
            }
            let (n, parts) = (self.n as i128, self.parts as i128);
            let range = |i: usize| (i as i128 * n / parts) as i64;
            (self.task)(self.ctx as *const u8, range(i), range(i + 1), i as i64);
        }
    }
}

/// A helper thread's mailbox: null when it is free, a job's address when one is offered,
/// [`taken`] while it works on one.
struct Mailbox(AtomicPtr<Job>);

/// The helpers: one fewer than the machine's cores (the caller is the other).
fn helpers() -> &'static [(Arc<Mailbox>, Thread)] {
    static HELPERS: OnceLock<Vec<(Arc<Mailbox>, Thread)>> = OnceLock::new();
    HELPERS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..cores.saturating_sub(1).max(1))
            .filter_map(|i| {
                let mailbox = Arc::new(Mailbox(AtomicPtr::new(std::ptr::null_mut())));
                let own = mailbox.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("qlift-part-{i}"))
                    .spawn(move || helper(&own))
                    .ok()?;
                Some((mailbox, handle.thread().clone()))
            })
            .collect()
    })
}

/// Marks a mailbox whose job a helper has taken (the caller can no longer revoke it).
fn taken() -> *mut Job {
    std::ptr::dangling_mut()
}

/// A helper's life: wait for a job (spinning for [`SPIN`], then parked), take it, work on
/// it, free the mailbox, let go of the job.
fn helper(mailbox: &Mailbox) {
    let mut idle_since = Instant::now();
    loop {
        let job = mailbox.0.load(Ordering::Acquire);
        let took = !job.is_null()
            && job != taken()
            && mailbox
                .0
                .compare_exchange(job, taken(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        if !took {
            if idle_since.elapsed() < SPIN {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
            } else {
                // A job published after the load above comes with an unpark, so this
                // returns at once; spurious wake-ups just loop.
                std::thread::park();
                idle_since = Instant::now();
            }
            continue;
        }
        // SAFETY: the caller keeps the job alive until `holders` drops to zero, which is
        // this helper's last touch of it below.
        let job = unsafe { &*job };
        job.work();
        mailbox.0.store(std::ptr::null_mut(), Ordering::Release);
        job.holders.fetch_sub(1, Ordering::Release);
        idle_since = Instant::now();
    }
}

/// Runs `task` over `0..n` in `parts` ranges (`parts ≥ 1`), on this thread and any free
/// helpers, and returns when every range is done. Each range must write its own results.
pub(crate) fn run(task: Task, ctx: *const u8, n: i64, parts: usize) {
    if parts <= 1 {
        task(ctx, 0, n, 0);
        return;
    }
    let job = Job {
        task,
        ctx: ctx as usize,
        n,
        parts,
        next: AtomicUsize::new(0),
        holders: AtomicUsize::new(0),
    };
    let address = &job as *const Job as *mut Job;
    let mut claimed = Vec::with_capacity(parts - 1);
    for (mailbox, thread) in helpers() {
        if claimed.len() + 1 >= parts {
            break;
        }
        // Counted before it is published, so that a fast helper cannot drop it below zero.
        job.holders.fetch_add(1, Ordering::Relaxed);
        let free = std::ptr::null_mut();
        if mailbox
            .0
            .compare_exchange(free, address, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            thread.unpark();
            claimed.push(mailbox);
        } else {
            job.holders.fetch_sub(1, Ordering::Relaxed);
        }
    }
    job.work();
    // A helper that has not taken the job yet (descheduled on a busy machine) is not waited
    // for: its mailbox is emptied again, and its share was claimed above.
    for mailbox in claimed {
        let revoked = mailbox.0.compare_exchange(
            address,
            std::ptr::null_mut(),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        if revoked.is_ok() {
            job.holders.fetch_sub(1, Ordering::Relaxed);
        }
    }
    // The helpers' results are visible after their Release decrement.
    let mut spins = 0u32;
    while job.holders.load(Ordering::Acquire) != 0 {
        spins += 1;
        if spins < 4096 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Adds `begin..end` into the counters at `ctx`: index `i` once per covering range.
    extern "C" fn mark(ctx: *const u8, begin: i64, end: i64, part: i64) {
        // SAFETY: the tests pass a live `[AtomicU64; N]` with N ≥ end, and a part slot.
        let counters = ctx as *const AtomicU64;
        for i in begin..end {
            unsafe { &*counters.add(i as usize) }.fetch_add(1, Ordering::Relaxed);
        }
        let _ = part;
    }

    #[test]
    fn every_index_is_covered_exactly_once_from_many_callers() {
        let callers: Vec<_> = (0..4)
            .map(|c| {
                std::thread::spawn(move || {
                    for round in 0..200 {
                        let n = 1 + (round * 7 + c) % 97;
                        let counters: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
                        let parts = 1 + (round + c) % 5;
                        run(mark, counters.as_ptr().cast(), n as i64, parts);
                        assert!(counters.iter().all(|c| c.load(Ordering::Relaxed) == 1));
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
    }
}
