//! Any bytes through the whole pipeline: import, rewrites, JIT compilation and a run
//! (`qlift_tests::fuzz::compile`). Every failure must be an error value.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qlift_tests::fuzz::compile(data));
