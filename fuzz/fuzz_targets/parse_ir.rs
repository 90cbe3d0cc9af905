//! Any text through the IR parser and, when it parses, the verifier and the printer: the
//! printed graph parses back to the same graph.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(graph) = qlift_ir::text::parse(text) else { return };
    if qlift_ir::verify(&graph).is_ok() {
        let printed = qlift_ir::text::print(&graph, &qlift_ir::text::PrintOptions { full_constants: true, ..Default::default() });
        let back = qlift_ir::text::parse(&printed).expect("a printed graph parses");
        assert!(back == graph, "print/parse round trip changed the graph");
    }
});
