//! The target: the host CPU as cranelift-native detects it (AVX2, FMA, … when present), or
//! a triple parsed with target-lexicon for ahead-of-time compilation, with qlift's flags.

use crate::error::{bug, CodegenError};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use std::str::FromStr;
use target_lexicon::Triple;

/// How to generate code.
#[derive(Clone, Debug, Default)]
pub struct CodegenOptions {
    /// Target triple; `None` is the host (with its detected CPU features).
    pub target: Option<String>,
    /// Generate no SIMD-specific instruction sequences beyond the baseline (SSE2 on x86-64):
    /// the scalar fallback, used to test both paths on one machine.
    pub baseline_isa: bool,
    /// Position-independent code (needed by object files linked into executables).
    pub pic: bool,
    /// Do not use the VNNI `vpdpbusd` form of u8×i8 dot products even where the target has
    /// it, but the `pmaddwd` form every x86-64 with SSE2 has: to test and measure that path
    /// on a VNNI machine (where VNNI is 1.3–2.6× faster on the bundled models).
    pub no_vnni: bool,
    /// Use no CPU feature beyond AVX2 (no AVX-512, no VNNI) even where the host has them:
    /// the code an AVX2-only CPU (AMD Zen 3, Intel Haswell to Skylake client) gets, to test
    /// it on any machine.
    pub avx2_only: bool,
    /// Compile a timer around every kernel call into the entry function (`qlift bench
    /// --profile`): each call adds its nanoseconds and a count to a per-step counter that
    /// [`crate::JitProgram::profile`] reads. JIT only (the timer is a function of qlift's).
    pub profile: bool,
    /// The widest vectors kernels may use, in bits (128, 256 or 512; `None`: the widest the
    /// target has). 128 keeps to the vectors Cranelift generates; wider ones are machine-code
    /// micro-kernels (see `kernels::ukernel`). To compare the paths on one machine.
    pub max_vector_bits: Option<u32>,
    /// Multiply-accumulates from which a kernel call splits its work across the threads a
    /// call allows (`None`: 0.5 M, see `kernels::PARALLEL_MIN_WORK`; an element of an
    /// elementwise, Softmax, normalization or reduction kernel counts as
    /// `kernels::split::ELEMENT_WORK` of them); 0 splits every call (to test the split on
    /// small shapes).
    pub parallel_min_macs: Option<u64>,
    /// Do not use the Winograd form of 3×3 integer convolutions (`kernels::winograd`) even
    /// where it is exact: to compare it with the direct wide form on one machine.
    pub no_winograd: bool,
    /// Dequantize weight-only weights to f32 panels at compile time instead of keeping them
    /// 4- or 8-bit and unpacking them per block of the reduction at run time: 4–8× the
    /// weights' memory, for the few percent unpacking costs (see PERFORMANCE.md).
    pub weight_only_f32: bool,
    /// Emit one kernel per node even for chains of f32 elementwise nodes, which are
    /// otherwise one fused loop (`crate::fusion`): to compare the two on one machine (they
    /// agree bit for bit).
    pub no_fusion: bool,
}

/// The ISA for `opts`: opt_level `speed`, the verifier in debug builds.
pub fn target_isa(opts: &CodegenOptions) -> Result<OwnedTargetIsa, CodegenError> {
    let mut flags = settings::builder();
    let set = |flags: &mut settings::Builder, name: &str, value: &str| {
        flags.set(name, value).map_err(bug)
    };
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(
        &mut flags,
        "is_pic",
        if opts.pic { "true" } else { "false" },
    )?;
    set(
        &mut flags,
        "enable_verifier",
        if cfg!(debug_assertions) {
            "true"
        } else {
            "false"
        },
    )?;
    let flags = settings::Flags::new(flags);
    let target_error = |target: &str, message: String| CodegenError::Target {
        target: target.to_string(),
        message,
    };
    let builder = match &opts.target {
        None => {
            let mut builder = cranelift_native::builder_with_options(!opts.baseline_isa)
                .map_err(|m| target_error("host", m.to_string()))?;
            let vnni: &[&str] = if opts.no_vnni || opts.avx2_only {
                &["has_avx_vnni", "has_avx512vnni"]
            } else {
                &[]
            };
            let avx512: &[&str] = if opts.avx2_only {
                &[
                    "has_avx512bitalg",
                    "has_avx512dq",
                    "has_avx512vl",
                    "has_avx512vbmi",
                    "has_avx512f",
                ]
            } else {
                &[]
            };
            for name in vnni.iter().chain(avx512) {
                builder.set(name, "false").map_err(bug)?;
            }
            builder
        }
        Some(t) => {
            let triple = Triple::from_str(t).map_err(|e| target_error(t, e.to_string()))?;
            cranelift_codegen::isa::lookup(triple).map_err(|e| match e {
                cranelift_codegen::isa::LookupError::SupportDisabled => {
                    target_error(t, "not supported: this build of qlift generates x86-64 code only (Linux, macOS or Windows object files)".into())
                }
                other => target_error(t, other.to_string()),
            })?
        }
    };
    builder
        .finish(flags)
        .map_err(|e| target_error(opts.target.as_deref().unwrap_or("host"), e.to_string()))
}

/// A one-line description of the ISA: triple and enabled CPU features (for `qlift bench`).
pub fn describe(isa: &dyn cranelift_codegen::isa::TargetIsa) -> String {
    let features: Vec<String> = isa
        .isa_flags()
        .iter()
        .filter(|f| f.as_bool() == Some(true) && f.name.starts_with("has_"))
        .map(|f| f.name.trim_start_matches("has_").to_string())
        .collect();
    format!("{} [{}]", isa.triple(), features.join(" "))
}
