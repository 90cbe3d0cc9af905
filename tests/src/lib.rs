//! Integration tests live in `tests/tests/`. The library holds what the fuzz targets
//! (`fuzz/fuzz_targets`) and the fuzz regression test share: one definition of what each
//! target does with its input, so that a crash input replays exactly.

/// The fuzz targets' bodies: each takes arbitrary bytes and must return (errors are values),
/// never panic — except on a broken invariant, which is the bug a fuzzer looks for.
pub mod fuzz {
    use qlift::{CompileOptions, CompiledModel, ImportOptions, Limits};
    use qlift_ir::Tensor;

    /// `load_onnx`: any bytes through the ONNX loader.
    pub fn load_onnx(data: &[u8]) {
        let _ = qlift::load_onnx_bytes(data, None, &ImportOptions::default());
    }

    /// `parse_ir`: any text through the IR parser and, when it parses and verifies, the
    /// printer: the printed graph must parse back to the same graph.
    pub fn parse_ir(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else { return };
        let Ok(graph) = qlift_ir::text::parse(text) else { return };
        if qlift_ir::verify(&graph).is_ok() {
            let printed = qlift_ir::text::print(&graph, &qlift_ir::text::PrintOptions { full_constants: true, ..Default::default() });
            let back = qlift_ir::text::parse(&printed).expect("a printed graph parses");
            assert!(back == graph, "print/parse round trip changed the graph");
        }
    }

    /// `compile`: any bytes through import, rewrites and JIT compilation (with limits small
    /// enough for a fuzzer), then a run on zero inputs of the model's input shapes (batch 1)
    /// when they are small.
    pub fn compile(data: &[u8]) {
        let limits = Limits { max_model_bytes: 1 << 20, max_tensor_bytes: 1 << 20, max_total_bytes: 4 << 20, ..Limits::default() };
        let opts = CompileOptions { import: ImportOptions { limits, ..Default::default() }, ..Default::default() };
        let Ok(model) = CompiledModel::from_onnx_bytes(data, None, &opts) else { return };
        let inputs: Vec<Tensor> = model.inputs().iter().map(|(_, ty)| Tensor::zeros(ty.dtype, &ty.shape.resolve(1))).collect();
        if inputs.iter().map(Tensor::len).sum::<usize>() <= 1 << 16 {
            let _ = model.run(&inputs);
        }
    }
}

/// Large graphs for the scaling tests (`tests/tests/large_graphs.rs`), written as IR text so
/// that they go through the same loading as a `.qir` file: parse, verify, limits.
pub mod graphs {
    use std::fmt::Write;

    /// `n` elementwise nodes in one dependency chain, `x: f32[N,4]` → Relu → Sigmoid →
    /// Relu → … → `y` (what a deep model looks like to the passes: nothing to rewrite, every
    /// node live).
    pub fn chain(n: usize) -> String {
        let mut text = String::from("graph chain(%x: f32[N,4]) -> (%y) {\n");
        let mut previous = "x".to_string();
        for i in 0..n {
            let name = if i + 1 == n { "y".to_string() } else { format!("v{i}") };
            let op = if i % 2 == 0 { "Relu" } else { "Sigmoid" };
            let _ = writeln!(text, "  %{name} = {op}(%{previous}) : f32[N,4] @n{i}");
            previous = name;
        }
        text.push_str("}\n");
        text
    }

    /// About `n` nodes in a wide DAG: 100 branches from `x: f32[N,4]`, each starting with an
    /// Add of its own constant (so that no two branches are the same term) and going on as
    /// a chain of Relu/Sigmoid/Mul-by-a-constant nodes, joined by a balanced tree of Adds
    /// into `y`. Many values are live at once, and every branch end waits for the tree.
    pub fn wide(n: usize) -> String {
        const BRANCHES: usize = 100;
        let depth = (n.saturating_sub(2 * BRANCHES) / BRANCHES).max(1);
        let mut text = String::from("graph wide(%x: f32[N,4]) -> (%y) {\n");
        let _ = writeln!(text, "  %half = const f32[4] [0.5, 0.25, 2.0, -1.0]");
        let mut node = 0;
        let mut ends = Vec::with_capacity(BRANCHES);
        for b in 0..BRANCHES {
            let _ = writeln!(text, "  %c{b} = const f32[4] [{b}.0, -{b}.5, 1.0, 0.125]");
            let _ = writeln!(text, "  %b{b}_0 = Add(%x, %c{b}) : f32[N,4] @n{node}");
            node += 1;
            for d in 1..=depth {
                let op = match (b + d) % 3 {
                    0 => "Relu(%b{b}_{p})".to_string(),
                    1 => "Sigmoid(%b{b}_{p})".to_string(),
                    _ => "Mul(%b{b}_{p}, %half)".to_string(),
                }
                .replace("{b}", &b.to_string())
                .replace("{p}", &(d - 1).to_string());
                let _ = writeln!(text, "  %b{b}_{d} = {op} : f32[N,4] @n{node}");
                node += 1;
            }
            ends.push(format!("b{b}_{depth}"));
        }
        while ends.len() > 1 {
            let mut next = Vec::with_capacity(ends.len().div_ceil(2));
            for pair in ends.chunks(2) {
                match pair {
                    [a, b] => {
                        let name = format!("s{node}");
                        let _ = writeln!(text, "  %{name} = Add(%{a}, %{b}) : f32[N,4] @n{node}");
                        node += 1;
                        next.push(name);
                    }
                    [a] => next.push(a.clone()),
                    _ => {}
                }
            }
            ends = next;
        }
        let _ = writeln!(text, "  %y = Relu(%{}) : f32[N,4] @n{node}", ends[0]);
        text.push_str("}\n");
        text
    }
}
