//! Any bytes through the ONNX loader: an error or a verified graph, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = qlift::load_onnx_bytes(data, None, &qlift::ImportOptions::default());
});
