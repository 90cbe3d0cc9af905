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
//!
//! A job may have several phases (a convolution's padding and repacking, its tiles, the
//! copy of staged rows): the threads pass from one to the next at a barrier inside the
//! job instead of returning and being woken again, which saves a wake-up and a join per
//! phase (MobileNetV2 at batch 1, two threads: 1982 → 1834 µs of kernels, with the copy
//! that ran on the caller alone now split too).

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// A kernel task: `task(ctx, begin, end, slot)` (see `Kernel::task`); `slot` is the
/// worker running the range (`< workers`), for per-thread scratch.
pub(crate) type Task = extern "C" fn(*const u8, i64, i64, i64);

/// How long an idle helper keeps polling its mailbox before it parks.
const SPIN: Duration = Duration::from_micros(200);

/// One phase of a job: `task` over `0..n` in `chunks` ranges.
#[derive(Clone, Copy)]
pub(crate) struct Phase {
    pub task: Task,
    pub n: i64,
    pub chunks: usize,
}

impl Phase {
    /// Runs chunk `i` of this phase as worker `slot`.
    fn chunk(&self, ctx: usize, i: usize, slot: usize) {
        let (n, chunks) = (self.n as i128, self.chunks as i128);
        let range = |i: usize| (i as i128 * n / chunks) as i64;
        (self.task)(ctx as *const u8, range(i), range(i + 1), slot as i64);
    }
}

/// The most phases one job runs.
pub(crate) const MAX_PHASES: usize = 3;

/// One call's phases: the chunks of the first, then (once every chunk of the first is
/// done: a barrier inside the job, not another fork–join) those of the second, and so on,
/// claimed by index.
struct Job {
    ctx: usize,
    /// The phases, in order (`None` past the last).
    phases: [Option<Phase>; MAX_PHASES],
    /// The next chunk to claim, counting the first phase's chunks, then the second's, ….
    next: AtomicUsize,
    /// Chunks done (of any phase).
    done: AtomicUsize,
    /// Worker slots handed out (see [`Task`]).
    slots: AtomicUsize,
    /// Helpers that hold a pointer to this job; the caller returns (and the job, on its
    /// stack, dies) only when it is zero.
    holders: AtomicUsize,
}

impl Job {
    /// Runs chunks until none is left to claim. A chunk of a phase starts when every chunk
    /// before its phase is done: those were claimed first, by workers that are running
    /// them, so the wait ends (and no chunk of a later phase can be done before).
    fn work(&self) {
        let slot = self.slots.fetch_add(1, Ordering::Relaxed);
        loop {
            let mut i = self.next.fetch_add(1, Ordering::Relaxed);
            let mut before = 0;
            let Some(phase) = self.phases.iter().flatten().find(|p| {
                let here = i < p.chunks;
                if !here {
                    i -= p.chunks;
                    before += p.chunks;
                }
                here
            }) else {
                return;
            };
            // Acquire: this chunk reads what the earlier phases wrote.
            wait_until(|| self.done.load(Ordering::Acquire) >= before);
            phase.chunk(self.ctx, i, slot);
            self.done.fetch_add(1, Ordering::Release);
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

/// Runs `task` over `0..n` in `chunks` ranges (`chunks ≥ 1`) on this thread and up to
/// `workers − 1` free helpers, and returns when every range is done. Each range must write
/// its own results.
#[cfg(test)]
pub(crate) fn run(task: Task, ctx: *const u8, n: i64, chunks: usize, workers: usize) {
    run_phases(ctx, &[Phase { task, n, chunks }], workers);
}

/// Runs the chunks of each of `phases` in turn (each may read what the ones before
/// wrote) on this thread and up to `workers − 1` free helpers, and returns when every
/// chunk is done: one fork–join for all. Each chunk of a phase must write its own results.
pub(crate) fn run_phases(ctx: *const u8, phases: &[Phase], workers: usize) {
    let widest = phases.iter().map(|p| p.chunks).max().unwrap_or(0);
    if widest.min(workers) <= 1 || phases.len() > MAX_PHASES {
        for phase in phases.iter().filter(|p| p.chunks > 0) {
            (phase.task)(ctx, 0, phase.n, 0);
        }
        return;
    }
    let parts = widest.min(workers);
    let mut all = [None; MAX_PHASES];
    for (slot, &phase) in all.iter_mut().zip(phases) {
        *slot = Some(phase);
    }
    let job = Job {
        ctx: ctx as usize,
        phases: all,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        slots: AtomicUsize::new(0),
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
    wait_until(|| job.holders.load(Ordering::Acquire) == 0);
}

/// Spins until `ready()`, then (a worker it waits for is likely descheduled on a busy
/// machine) yields the CPU between checks.
fn wait_until(ready: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !ready() {
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

    /// The tests' context: a counter per index of each phase, and the most workers.
    struct Marks {
        first: Vec<AtomicU64>,
        second: Vec<AtomicU64>,
        workers: usize,
    }

    /// Counts `begin..end` of the first phase once more.
    extern "C" fn mark_first(ctx: *const u8, begin: i64, end: i64, slot: i64) {
        // SAFETY: the tests pass a live `Marks` whose vectors cover `0..end`.
        let m = unsafe { &*(ctx as *const Marks) };
        assert!((slot as usize) < m.workers, "slot {slot} of {}", m.workers);
        for i in begin..end {
            m.first[i as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `begin..end` of the second phase, each only after all of the first is done.
    extern "C" fn mark_second(ctx: *const u8, begin: i64, end: i64, slot: i64) {
        // SAFETY: as in `mark_first`.
        let m = unsafe { &*(ctx as *const Marks) };
        assert!((slot as usize) < m.workers, "slot {slot} of {}", m.workers);
        assert!(m.first.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        for i in begin..end {
            m.second[i as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn every_index_is_covered_once_and_the_second_phase_follows_the_first() {
        let callers: Vec<_> = (0..4)
            .map(|c| {
                std::thread::spawn(move || {
                    for round in 0..300 {
                        let n = 1 + (round * 7 + c) % 97;
                        let n2 = (round * 5 + c) % 61;
                        let counters = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
                        let workers = 1 + (round + c) % 5;
                        let marks = Marks {
                            first: counters(n),
                            second: counters(n2),
                            workers,
                        };
                        let chunks = |n: usize| n.min(1 + (round * 3 + c) % 9);
                        let first = Phase {
                            task: mark_first,
                            n: n as i64,
                            chunks: chunks(n),
                        };
                        let second = Phase {
                            task: mark_second,
                            n: n2 as i64,
                            chunks: chunks(n2),
                        };
                        let ctx = &marks as *const Marks as *const u8;
                        if round % 3 == 0 {
                            run(mark_first, ctx, n as i64, chunks(n), workers);
                        } else {
                            run_phases(ctx, &[first, second], workers);
                            assert!(marks.second.iter().all(|c| c.load(Ordering::Relaxed) == 1));
                        }
                        assert!(marks.first.iter().all(|c| c.load(Ordering::Relaxed) == 1));
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
    }
}
