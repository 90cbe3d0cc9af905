//! Any text through the IR parser, the verifier and the printer
//! (`qlift_tests::fuzz::parse_ir`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qlift_tests::fuzz::parse_ir(data));
