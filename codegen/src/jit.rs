//! JIT-compiled programs: compile a graph into executable memory, run it from many threads.
//!
//! Safety rests on three checks made before generated code is entered: the inputs'
//! dtypes and shapes equal the graph's (the batch bound once), every output buffer is
//! allocated at the size the kernels write, and the arena holds the planned bytes for that
//! batch. The kernels themselves only touch addresses inside those buffers (their loops
//! have compile-time extents and the batch).

use crate::error::{bug, CodegenError};
use crate::fork_join;
use crate::isa::{target_isa, CodegenOptions};
use crate::program::{build, OutputSource, Program};
use cranelift_jit::{ArenaMemoryProvider, JITBuilder, JITModule};
use cranelift_module::default_libcall_names;
use qlift_ir::{Graph, Tensor, TensorBuf, TensorBufMut, TensorType};
use rayon::prelude::*;
use std::sync::Mutex;

/// The entry function's ABI (see [`crate::program`]).
type Entry = unsafe extern "C" fn(*const *const u8, *const *mut u8, *mut u8, i64) -> i32;

/// A compiled program in executable memory. `Send + Sync`: after compilation the code
/// and its read-only data are never written, each call gets its own arena, and the arena
/// pool is behind a mutex.
pub struct JitProgram {
    module: Option<JITModule>,
    entry: Entry,
    program: Program,
    isa: String,
    /// Scratch of finished calls, reused by the next ones (no allocation once warm).
    scratch: Mutex<Vec<Scratch>>,
    /// Threads one call may use (see [`JitProgram::set_threads`]).
    threads: usize,
    /// Whether every input and computed output has the batch on axis 0 (a call can split it).
    splittable: bool,
    /// Bytes of one sample of each input and each computed output.
    sample_bytes: (Vec<usize>, Vec<usize>),
    /// The profile counters in the module's data (see [`Program::profile`]): address, u64s.
    profile: Option<(*const u8, usize)>,
}

// SAFETY: see the type's documentation; `JITModule` is only touched again in `drop`.
unsafe impl Send for JitProgram {}
// SAFETY: `run` only reads the module's finalized code and data.
unsafe impl Sync for JitProgram {}

/// What one call needs besides its tensors: the arena and the pointer arrays the entry
/// reads (addresses kept as integers), pooled so that a warm call allocates nothing.
#[derive(Default)]
struct Scratch {
    arena: Vec<u8>,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
}

/// Declares `extern "C"` wrappers of Rust's math functions and `libm_symbols`, the table
/// of the C library names generated code calls them by.
macro_rules! libm_symbols {
    ($($c:literal: fn $rust:ident($($a:ident: $t:ty),*) -> $r:ty { $body:expr })*) => {
        $(extern "C" fn $rust($($a: $t),*) -> $r { $body })*

        /// The C library functions generated code may call, resolved to Rust's (the
        /// functions the interpreter computes with, so both agree bit for bit) instead of
        /// symbols the process may not have loaded: `expf` for Softmax, the elementwise
        /// family's rare functions (Sin, Cos, Pow, float Mod), and the libcalls Cranelift
        /// makes for Floor, Ceil and Round without SSE4.1. An object file links the C
        /// library's instead.
        fn libm_symbols() -> Vec<(&'static str, *const u8)> {
            vec![$(($c, $rust as *const u8)),*]
        }
    };
}

thread_local! {
    /// Threads a kernel running on this thread may split its work across (see
    /// [`qlift_parallel_for`]): set by [`JitProgram::call`] around each entry call.
    static INTRA_OP: std::cell::Cell<usize> = const { std::cell::Cell::new(1) };
}

/// Threads a split call runs on: as many as the calling entry may use ([`INTRA_OP`]),
/// at most `max_workers` (the kernel's per-thread scratch areas) and `n`.
fn workers(n: i64, max_workers: i64) -> usize {
    INTRA_OP
        .with(|t| t.get())
        .min(n.max(0) as usize)
        .min(max_workers.max(1) as usize)
        .max(1)
}

/// A phase of `task` over `0..n` for `workers` threads: a range each (at most `n`),
/// claimed by whichever thread is free. (Three ranges a thread measured no better on
/// MobileNetV2 at batch 1, two threads: 1917 µs of kernels against 1834.)
fn phase(task: fork_join::Task, n: i64, workers: usize) -> fork_join::Phase {
    let chunks = workers.min(n.max(1) as usize);
    fork_join::Phase { task, n, chunks }
}

/// The JIT's [`crate::kernels::PARALLEL_FOR`]: runs `task` on `0..n` split into ranges
/// on [`workers`] threads, this one and the fork–join helpers ([`crate::fork_join`]); one
/// call here when that is one.
extern "C" fn qlift_parallel_for(task: fork_join::Task, ctx: *const u8, n: i64, max_workers: i64) {
    let workers = workers(n, max_workers);
    fork_join::run_phases(ctx, &[phase(task, n, workers)], workers);
}

/// A task that does nothing (fills unused phases).
extern "C" fn noop(_: *const u8, _: i64, _: i64, _: i64) {}

/// The JIT's [`crate::kernels::PARALLEL_PHASES`]: [`qlift_parallel_for`] of each task
/// given (not null) over its `0..n` in turn, in one fork–join.
#[allow(clippy::too_many_arguments)]
extern "C" fn qlift_parallel_phases(
    ctx: *const u8,
    max_workers: i64,
    t1: Option<fork_join::Task>,
    n1: i64,
    t2: Option<fork_join::Task>,
    n2: i64,
    t3: Option<fork_join::Task>,
    n3: i64,
) {
    let given = [(t1, n1), (t2, n2), (t3, n3)];
    let workers = workers(given.iter().map(|g| g.1).max().unwrap_or(0), max_workers);
    let unused = fork_join::Phase {
        task: noop,
        n: 0,
        chunks: 0,
    };
    let mut phases = [unused; fork_join::MAX_PHASES];
    let mut count = 0;
    for (task, n) in given {
        if let Some(t) = task {
            phases[count] = phase(t, n, workers);
            count += 1;
        }
    }
    fork_join::run_phases(ctx, &phases[..count], workers);
}

/// Appends the compiled functions to a `perf` symbol map (`QLIFT_PERF_MAP=1`:
/// `/tmp/perf-PID.map`, the file `perf report` reads for JIT code; any other value: that
/// path), one line per function, `START SIZE qlift:NODE:ROLE`, so that a profile of a
/// model names kernels, their tasks and micro-kernels instead of unknown addresses
/// (`QLIFT_PERF_MAP=1 perf record qlift bench ...; perf report --sort symbol`).
/// Best effort: a map that cannot be written is skipped.
fn write_perf_map(module: &JITModule, program: &Program, path: &std::ffi::OsStr) {
    use std::io::Write;
    let path = match path.to_str() {
        Some("1") => std::path::PathBuf::from(format!("/tmp/perf-{}.map", std::process::id())),
        _ => std::path::PathBuf::from(path),
    };
    let mut ours = std::collections::BTreeMap::new();
    for step in &program.steps {
        for &(id, role, bytes) in &step.functions {
            let start = module.get_finalized_function(id) as usize;
            ours.insert(
                format!("{start:x}"),
                format!("{bytes:x} qlift:{}:{role}", step.node),
            );
        }
    }
    // Under `perf record` cranelift-jit has already listed the same functions as `.LfnN`,
    // and perf keeps the first name of an address: those lines are replaced.
    let before = std::fs::read_to_string(&path).unwrap_or_default();
    let mut text: String = before
        .lines()
        .filter(|l| !l.split(' ').next().is_some_and(|a| ours.contains_key(a)))
        .map(|l| format!("{l}\n"))
        .collect();
    for (start, rest) in &ours {
        text.push_str(&format!("{start} {rest}\n"));
    }
    if let Err(e) = std::fs::File::create(&path).and_then(|mut f| f.write_all(text.as_bytes())) {
        eprintln!("warning: QLIFT_PERF_MAP: {}: {e}", path.display());
    }
}

/// The start of the monotonic clock profiled entries read (the first call's time).
static PROFILE_EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// A profiled entry's timer (see [`crate::program::PROFILE_START`]): nanoseconds since
/// [`PROFILE_EPOCH`].
extern "C" fn qlift_profile_start() -> i64 {
    PROFILE_EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as i64
}

/// Adds the time since `start` and one call to step `step`'s counters (atomically: calls
/// on several threads may time the same step).
extern "C" fn qlift_profile_stop(counters: *mut u64, step: i64, start: i64) {
    let elapsed = (qlift_profile_start() - start).max(0) as u64;
    let slot = step as usize * crate::program::PROFILE_SLOTS;
    // SAFETY: the entry passes the address of its own counters (8-byte aligned, written
    // only through atomics) and a step below the number it was built with.
    unsafe {
        std::sync::atomic::AtomicU64::from_ptr(counters.add(slot))
            .fetch_add(elapsed, std::sync::atomic::Ordering::Relaxed);
        std::sync::atomic::AtomicU64::from_ptr(counters.add(slot + 1))
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Time spent in one step's kernel, summed over the calls since the last reset.
#[derive(Clone, Debug)]
pub struct StepTime {
    /// The step's index in [`Program::steps`].
    pub step: usize,
    /// Total nanoseconds.
    pub nanos: u64,
    /// Calls of the kernel.
    pub calls: u64,
}

libm_symbols! {
    "expf": fn qlift_expf(x: f32) -> f32 { x.exp() }
    "logf": fn qlift_logf(x: f32) -> f32 { x.ln() }
    "sinf": fn qlift_sinf(x: f32) -> f32 { x.sin() }
    "cosf": fn qlift_cosf(x: f32) -> f32 { x.cos() }
    "powf": fn qlift_powf(x: f32, y: f32) -> f32 { x.powf(y) }
    "pow": fn qlift_pow(x: f64, y: f64) -> f64 { x.powf(y) }
    "fmodf": fn qlift_fmodf(x: f32, y: f32) -> f32 { x % y }
    "floorf": fn qlift_floorf(x: f32) -> f32 { x.floor() }
    "ceilf": fn qlift_ceilf(x: f32) -> f32 { x.ceil() }
    "nearbyintf": fn qlift_nearbyintf(x: f32) -> f32 { x.round_ties_even() }
}

/// Address space to reserve for a graph's code and data (reserved, not committed: pages are
/// only backed once written): room for every constant packed twice over plus 16 KiB of code
/// per node and 64 MiB to spare, within the ±2 GiB that x86-64's PC-relative references
/// reach.
fn jit_reservation(graph: &Graph) -> usize {
    let constants: usize = graph
        .node_ids()
        .filter_map(|id| match &graph.node(id).op {
            qlift_ir::NodeOp::Const(t) => Some(t.data().as_bytes().len()),
            _ => None,
        })
        .fold(0usize, usize::saturating_add);
    let estimate = (64usize << 20)
        .saturating_add(constants.saturating_mul(2))
        .saturating_add(graph.node_count().saturating_mul(16 << 10));
    estimate.min((2usize << 30) - (64 << 20))
}

/// The message of a caught panic's payload.
fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".to_string())
}

impl JitProgram {
    /// Compiles `graph` (verified) for the host.
    pub fn compile(graph: &Graph, opts: &CodegenOptions) -> Result<JitProgram, CodegenError> {
        if opts.target.is_some() {
            return Err(CodegenError::Target {
                target: opts.target.clone().unwrap_or_default(),
                message: "the JIT compiles for the host only".into(),
            });
        }
        let isa = target_isa(opts)?;
        let description = crate::isa::describe(isa.as_ref());
        let mut builder = JITBuilder::with_isa(isa, default_libcall_names());
        builder.symbol(
            crate::program::PROFILE_START,
            qlift_profile_start as *const u8,
        );
        builder.symbol(
            crate::kernels::PARALLEL_FOR,
            qlift_parallel_for as *const u8,
        );
        builder.symbol(
            crate::kernels::PARALLEL_PHASES,
            qlift_parallel_phases as *const u8,
        );
        builder.symbol(
            crate::program::PROFILE_STOP,
            qlift_profile_stop as *const u8,
        );
        for (name, f) in libm_symbols() {
            builder.symbol(name, f);
        }
        // All of the module's code and data in one reserved region, so that the 32-bit
        // PC-relative references from code to its data always fit. With a mapping per
        // segment, a large allocation made before (2 GiB of inputs) could leave code below it
        // and data above it, more than 2 GiB apart, and linking failed.
        let arena = ArenaMemoryProvider::new_with_size(jit_reservation(graph)).map_err(|e| {
            bug(format!(
                "reserving address space for the compiled code: {e}"
            ))
        })?;
        builder.memory_provider(Box::new(arena));
        let mut module = JITModule::new(builder);
        let program = match build(&mut module, graph, "qlift_run", opts, true) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: nothing compiled in this module was called or handed out.
                unsafe { module.free_memory() };
                return Err(e);
            }
        };
        // Finalizing resolves symbols and libcalls; cranelift-jit panics on one it cannot
        // find (a helper some lowering needs on a CPU without a feature). Report it instead.
        let finalized = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            module.finalize_definitions().map_err(|e| e.to_string())
        }));
        if let Err(e) | Ok(Err(e)) = finalized.map_err(|p| panic_message(&p)) {
            // SAFETY: nothing compiled in this module was called or handed out.
            unsafe { module.free_memory() };
            return Err(bug(format!("linking the compiled code: {e}")));
        }
        if let Some(path) = std::env::var_os("QLIFT_PERF_MAP") {
            write_perf_map(&module, &program, &path);
        }
        let code = module.get_finalized_function(program.entry);
        let profile = program.profile.map(|id| {
            let (ptr, bytes) = module.get_finalized_data(id);
            (ptr, bytes / 8)
        });
        // SAFETY: the entry was built with exactly this signature (program.rs).
        let entry = unsafe { std::mem::transmute::<*const u8, Entry>(code) };
        let batched = |ty: &TensorType| ty.shape.dims().first() == Some(&qlift_ir::Dim::Batch);
        let bytes = |ty: &TensorType| {
            if batched(ty) {
                ty.shape.resolve(1).iter().product::<usize>() * ty.dtype.size_of()
            } else {
                0
            }
        };
        let computed: Vec<&TensorType> = program
            .outputs
            .iter()
            .filter(|(_, _, s)| matches!(s, OutputSource::Computed(_)))
            .map(|(_, t, _)| t)
            .collect();
        let splittable = !program.batch_coupled
            && program.inputs.iter().all(|(_, t)| batched(t))
            && computed.iter().all(|t| batched(t));
        let sample_bytes = (
            program.inputs.iter().map(|(_, t)| bytes(t)).collect(),
            computed.iter().map(|t| bytes(t)).collect(),
        );
        Ok(JitProgram {
            module: Some(module),
            entry,
            program,
            isa: description,
            scratch: Mutex::new(Vec::new()),
            threads: 1,
            splittable,
            sample_bytes,
            profile,
        })
    }

    /// The graph inputs (names and types) the program takes, in order.
    pub fn inputs(&self) -> &[(String, TensorType)] {
        &self.program.inputs
    }

    /// The ISA the code was generated for, with its enabled features.
    pub fn isa(&self) -> &str {
        &self.isa
    }

    /// The program's layout: steps, arena plan.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The time of every kernel since the last [`JitProgram::reset_profile`] (or since
    /// compilation), when compiled with `CodegenOptions::profile`.
    pub fn profile(&self) -> Option<Vec<StepTime>> {
        let (ptr, len) = self.profile?;
        let counters = |i: usize| {
            // SAFETY: `i < len`, the counters' u64s in the finalized module, 8-byte aligned and
            // only written through atomics.
            unsafe {
                std::sync::atomic::AtomicU64::from_ptr(ptr.cast::<u64>().cast_mut().add(i))
                    .load(std::sync::atomic::Ordering::Relaxed)
            }
        };
        let slots = crate::program::PROFILE_SLOTS;
        Some(
            (0..self.program.steps.len().min(len / slots))
                .map(|step| StepTime {
                    step,
                    nanos: counters(step * slots),
                    calls: counters(step * slots + 1),
                })
                .collect(),
        )
    }

    /// Zeroes the profile counters (to leave warm-up calls out).
    pub fn reset_profile(&self) {
        if let Some((ptr, len)) = self.profile {
            for i in 0..len {
                // SAFETY: as in `profile`.
                unsafe {
                    std::sync::atomic::AtomicU64::from_ptr(ptr.cast::<u64>().cast_mut().add(i))
                        .store(0, std::sync::atomic::Ordering::Relaxed)
                };
            }
        }
    }

    /// Runs the program on `inputs` (in graph-input order) and returns the outputs.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, CodegenError> {
        self.run_buffers(inputs)
    }

    /// [`JitProgram::run`] on inputs owned or borrowed ([`qlift_ir::TensorRef`]: a numpy
    /// array, a C caller's buffer), read where they lie.
    pub fn run_buffers<I: TensorBuf>(&self, inputs: &[I]) -> Result<Vec<Tensor>, CodegenError> {
        let shapes = self.output_shapes(inputs)?;
        let mut outputs: Vec<Tensor> = self
            .program
            .outputs
            .iter()
            .zip(&shapes)
            .map(|((_, ty, _), shape)| Tensor::zeros(ty.dtype, shape))
            .collect();
        self.run_buffers_into(inputs, &mut outputs)?;
        Ok(outputs)
    }

    /// The shapes of the outputs a run on `inputs` gives (checked as a run checks them).
    pub fn output_shapes<I: TensorBuf>(
        &self,
        inputs: &[I],
    ) -> Result<Vec<Vec<usize>>, CodegenError> {
        let batch = self.check_inputs(inputs)?;
        Ok(self
            .program
            .outputs
            .iter()
            .map(|(_, ty, _)| ty.shape.resolve(batch))
            .collect())
    }

    /// Runs the program writing into `outputs`, which must have the output types at the
    /// inputs' batch size: the call allocates nothing once the arena pool is warm.
    pub fn run_into(&self, inputs: &[Tensor], outputs: &mut [Tensor]) -> Result<(), CodegenError> {
        self.run_buffers_into(inputs, outputs)
    }

    /// [`JitProgram::run_into`] on buffers owned or borrowed: inputs read and outputs written
    /// where they lie ([`qlift_ir::TensorRef`], [`qlift_ir::TensorMut`]).
    pub fn run_buffers_into<I: TensorBuf, O: TensorBufMut>(
        &self,
        inputs: &[I],
        outputs: &mut [O],
    ) -> Result<(), CodegenError> {
        let batch = self.check_inputs(inputs)?;
        if outputs.len() != self.program.outputs.len() {
            return Err(CodegenError::Output {
                name: "outputs".into(),
                message: format!(
                    "{} output buffers for {} outputs",
                    outputs.len(),
                    self.program.outputs.len()
                ),
            });
        }
        for ((name, ty, _), t) in self.program.outputs.iter().zip(outputs.iter()) {
            if t.dtype() != ty.dtype || !ty.shape.matches(batch, t.shape()) {
                return Err(CodegenError::Output {
                    name: name.clone(),
                    message: format!(
                        "output buffer is {}{:?}, expected {}{:?}",
                        t.dtype(),
                        t.shape(),
                        ty.dtype,
                        ty.shape.resolve(batch)
                    ),
                });
            }
        }
        // The addresses of sample 0 of every input and computed output.
        let mut bases = self.take_scratch()?;
        bases.inputs.clear();
        bases
            .inputs
            .extend(inputs.iter().map(|t| t.bytes().as_ptr() as usize));
        bases.outputs.clear();
        bases.outputs.resize(self.program.computed_outputs, 0);
        for ((_, _, source), t) in self.program.outputs.iter().zip(outputs.iter_mut()) {
            if let OutputSource::Computed(n) = source {
                bases.outputs[*n] = t.bytes_mut().as_mut_ptr() as usize;
            }
        }
        let result = match self.batch_split(batch) {
            // Threads beyond the batch's parts go to the kernels (intra-op parallelism).
            None => self.call(&bases, 0, batch, self.threads),
            // Disjoint slices of the batch on the persistent rayon pool, one scratch each.
            Some(parts) => parts
                .par_iter()
                .try_for_each(|&(start, len)| self.call(&bases, start, len, 1)),
        };
        self.give_scratch(bases)?;
        result?;
        // Outputs that are an input, a constant or another output: copied (their types were
        // checked equal above).
        for j in 0..outputs.len() {
            match &self.program.outputs[j].2 {
                OutputSource::Computed(_) => {}
                OutputSource::Input(k) => {
                    outputs[j].bytes_mut().copy_from_slice(inputs[*k].bytes())
                }
                OutputSource::Constant(t) => {
                    outputs[j].bytes_mut().copy_from_slice(t.data().as_bytes())
                }
                OutputSource::Alias(i) if *i == j => {}
                OutputSource::Alias(i) => {
                    let (lo, hi) = outputs.split_at_mut(j.max(*i));
                    let (first, second) = (&mut lo[j.min(*i)], &mut hi[0]);
                    if *i < j {
                        second.bytes_mut().copy_from_slice(first.bytes());
                    } else {
                        first.bytes_mut().copy_from_slice(second.bytes());
                    }
                }
            }
        }
        Ok(())
    }

    fn take_scratch(&self) -> Result<Scratch, CodegenError> {
        Ok(self
            .scratch
            .lock()
            .map_err(|_| bug("scratch pool poisoned"))?
            .pop()
            .unwrap_or_default())
    }

    fn give_scratch(&self, s: Scratch) -> Result<(), CodegenError> {
        self.scratch
            .lock()
            .map_err(|_| bug("scratch pool poisoned"))?
            .push(s);
        Ok(())
    }

    /// Runs the entry on samples `start..start + batch` of checked buffers (`bases`: the
    /// addresses of sample 0), with scratch from the pool; its kernels may use `threads`.
    fn call(
        &self,
        bases: &Scratch,
        start: usize,
        batch: usize,
        threads: usize,
    ) -> Result<(), CodegenError> {
        let arena_bytes = self
            .program
            .arena
            .bytes(batch)
            .ok_or_else(|| CodegenError::Input {
                name: "batch".into(),
                message: format!("batch {batch} overflows the arena size"),
            })?;
        let mut s = self.take_scratch()?;
        s.arena.resize(arena_bytes + crate::plan::ALIGN, 0);
        let skip = s.arena.as_ptr().align_offset(crate::plan::ALIGN);
        let at = |base: usize, sample_bytes: usize| base + start * sample_bytes;
        s.inputs.clear();
        s.inputs.extend(
            bases
                .inputs
                .iter()
                .zip(&self.sample_bytes.0)
                .map(|(&p, &b)| at(p, b)),
        );
        s.outputs.clear();
        s.outputs.extend(
            bases
                .outputs
                .iter()
                .zip(&self.sample_bytes.1)
                .map(|(&p, &b)| at(p, b)),
        );
        let before = INTRA_OP.with(|t| t.replace(threads));
        // SAFETY: inputs and outputs were checked against the program's types for the whole
        // batch, `start + batch` is within it (offsets only for batched tensors, see
        // `batch_split`), and the arena holds `arena_bytes` from a 64-byte aligned start.
        // `usize` and pointers have the same layout.
        let status = unsafe {
            (self.entry)(
                s.inputs.as_ptr().cast(),
                s.outputs.as_ptr().cast(),
                s.arena.as_mut_ptr().add(skip),
                batch as i64,
            )
        };
        INTRA_OP.with(|t| t.set(before));
        self.give_scratch(s)?;
        if status != 0 {
            return Err(self.runtime_error(status));
        }
        Ok(())
    }

    /// How to split a batch across threads: `None` to run it whole (one thread wanted, a
    /// batch of one, or a tensor without the batch axis, which every part would share).
    fn batch_split(&self, batch: usize) -> Option<Vec<(usize, usize)>> {
        let parts = self.threads.min(batch);
        if parts <= 1 || !self.splittable {
            return None;
        }
        Some(
            (0..parts)
                .map(|i| {
                    (
                        i * batch / parts,
                        (i + 1) * batch / parts - i * batch / parts,
                    )
                })
                .collect(),
        )
    }

    /// Runs calls on up to `threads` threads of a persistent pool, splitting the batch
    /// (intra-op parallelism for one caller; many callers need no setting).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// Checks inputs against the program and returns the batch they bind.
    fn check_inputs<I: TensorBuf>(&self, inputs: &[I]) -> Result<usize, CodegenError> {
        let declared = self.program.inputs.iter().map(|(n, t)| (n.as_str(), t));
        let given = inputs.iter().map(|t| (t.dtype(), t.shape()));
        qlift_ir::bind_input_shapes("model", declared, given)
            .map(|b| b.batch.unwrap_or(1))
            .map_err(|e| match e {
                qlift_ir::IrError::Input { name, message } => CodegenError::Input { name, message },
                other => CodegenError::Input {
                    name: "inputs".into(),
                    message: other.to_string(),
                },
            })
    }

    fn runtime_error(&self, status: i32) -> CodegenError {
        let step = ((status >> 8) - 1) as usize;
        let code = (status & 0xff) as usize;
        match self.program.steps.get(step) {
            Some(s) => CodegenError::Runtime {
                node: s.node.clone(),
                message: s
                    .messages
                    .get(code.wrapping_sub(1))
                    .cloned()
                    .unwrap_or_else(|| format!("status {code}")),
            },
            None => bug(format!("generated code returned status {status}")),
        }
    }
}

impl Drop for JitProgram {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: the JitProgram is being dropped, so no call into its code is running
            // (`run` borrows it) and its entry pointer is not used again.
            unsafe { module.free_memory() };
        }
    }
}
