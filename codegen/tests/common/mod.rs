//! Helpers the code generator's test binaries share (each binary uses some of them).
#![allow(dead_code)]

use qlift_codegen::JitProgram;

/// Whether the kernel of node `node` was compiled with a task (a split form).
pub fn has_task(p: &JitProgram, node: &str) -> bool {
    let step = p.program().steps.iter().find(|s| s.node == node);
    let step = step.unwrap_or_else(|| panic!("no kernel for node {node}"));
    step.functions.iter().any(|f| f.1 == "task")
}

/// A deterministic pseudo-random sequence in [-1, 1) (64-bit LCG, high bits).
pub fn lcg(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Result extent of a pooled axis, as ONNX defines it.
pub fn pooled(n: usize, k: usize, s: usize, d: usize, pb: usize, pe: usize, ceil: bool) -> usize {
    let room = n + pb + pe - (d * (k - 1) + 1);
    let mut out = if ceil { room.div_ceil(s) } else { room / s } + 1;
    if ceil && (out - 1) * s >= n + pb {
        out -= 1;
    }
    out
}
