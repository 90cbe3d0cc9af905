//! Graph → e-graph → graph is the identity when no rule runs.

use qlift_ir::text::{parse, print, PrintOptions};
use qlift_passes::bridge::{to_egraph, to_graph};

#[test]
fn round_trip_without_rules_is_the_identity() {
    let text = "graph g(%x: f32[N,2]) -> (%y, %z) {
  %w = const f32[2,2] [1.0, 2.0, 3.0, 4.0]
  %m = MatMul(%x, %w) : f32[N,2]
  %y = Relu(%m) : f32[N,2] @relu_node
  %wq = const i8[2,2] quant(axis=1, scale=[0.5, 0.25], zero_point=[0, 0]) [1, 2, 3, 4]
  %wd = DequantizeLinear(%wq) : f32[2,2]
  %m2 = MatMul(%m, %wd) : f32[N,2]
  %q = QuantizeLinear(%m2) : u8[N,2] quant(scale=0.5, zero_point=3)
  %z = DequantizeLinear(%q) : f32[N,2]
}
";
    let g = parse(text).unwrap();
    let back = to_graph(&to_egraph(&g).unwrap()).unwrap();
    assert!(back == g, "{}", print(&back, &PrintOptions::default()));
}
