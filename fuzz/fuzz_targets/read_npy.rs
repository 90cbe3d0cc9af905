//! Any bytes through the .npy reader: an error or a tensor that round-trips
//! (`qlift_tests::fuzz::read_npy`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qlift_tests::fuzz::read_npy(data));
