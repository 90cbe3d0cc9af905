//! Argument vectors for the qlift command line, run in process: exit 0 or 1, never an
//! internal error or a panic (`qlift_tests::fuzz::cli_args`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qlift_tests::fuzz::cli_args(data));
