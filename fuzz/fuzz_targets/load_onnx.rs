//! Any bytes through the ONNX loader: an error or a verified graph, never a panic
//! (`qlift_tests::fuzz::load_onnx`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qlift_tests::fuzz::load_onnx(data));
