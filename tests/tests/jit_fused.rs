//! Fused elementwise chains (`qlift_codegen`'s fusion): random chains and DAGs of f32
//! elementwise ops, over random shapes with and without the batch, with broadcast operands
//! (constants, scalars, lower-rank tensors, a second input), computed by the JIT as fused
//! kernels must be BIT-IDENTICAL to the same graph compiled one kernel per node
//! (`CodegenOptions::no_fusion`: the fused loop runs the single kernels' own lane steps),
//! and agree with the interpreter within the JIT's float contract (1e-4, relative above 1,
//! as the ONNX node tests hold it). GELU through tanh, written out as ONNX exporters write
//! it, must become one kernel.

use qlift_codegen::{CodegenOptions, JitProgram};
use qlift_ir::{Graph, Tensor};
use qlift_tests::samples::values;

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// One-operand ops (with their attributes); `Sin` has no inline form and ends a chain.
const UNARY: [&str; 20] = [
    "Relu",
    "Tanh",
    "Sigmoid",
    "Erf",
    "Abs",
    "Neg",
    "Softsign",
    "Floor",
    "Sqrt",
    "Reciprocal",
    "HardSwish",
    "Softplus",
    "Mish",
    "LeakyRelu {alpha=0.1}",
    "Clip {max=2.0, min=-1.5}",
    "HardSigmoid {alpha=0.2, beta=0.5}",
    "Elu {alpha=1.0}",
    "Gelu {approximate=\"tanh\"}",
    "Gelu {approximate=\"none\"}",
    "Sin",
];

/// Two-operand ops; Pow by 1.7 has no inline form and ends a chain.
const BINARY: [&str; 8] = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Add {act_max=6.0, act_min=0.0}",
    "Min",
    "Max",
    "PRelu",
];

/// `dims` as IR text, axis 0 the batch `N` when `batched`.
fn dims_text(dims: &[usize], batched: bool) -> String {
    dims.iter()
        .enumerate()
        .map(|(a, d)| match (a, batched) {
            (0, true) => "N".to_string(),
            _ => d.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A shape that broadcasts onto `dims`: a suffix of it (lower rank) with some extents 1,
/// and 1 along the batch axis 0 when `batched`.
fn broadcast_shape(rng: &mut Rng, dims: &[usize], batched: bool) -> Vec<usize> {
    let drop = rng.below(dims.len() + 1);
    (drop..dims.len())
        .map(|a| {
            if rng.below(2) == 0 || (a == 0 && batched) {
                1
            } else {
                dims[a]
            }
        })
        .collect()
}

/// A constant of `shape` as IR text.
fn constant(rng: &mut Rng, shape: &[usize]) -> String {
    let n: usize = shape.iter().product();
    let v: Vec<String> = values(n, rng.below(1 << 30) as u64)
        .iter()
        .map(|x| format!("{:?}", 2.0 * x))
        .collect();
    let d: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("const f32[{}] [{}]", d.join(","), v.join(", "))
}

/// A random chain of `len` ops over `%x` (and maybe `%w`), as IR text, with its inputs
/// for `batch` samples, and whether every op is fusable and only the last result is an
/// output (then the whole graph must be one kernel).
fn random_case(rng: &mut Rng, case: usize) -> (String, Vec<Tensor>, bool) {
    let rank = 1 + rng.below(4);
    let dims: Vec<usize> = (0..rank).map(|_| 1 + rng.below(9)).collect();
    let batched = rng.below(2) == 0;
    let batch = if batched { 1 + rng.below(3) } else { 1 };
    let ty = format!("f32[{}]", dims_text(&dims, batched));
    let w_shape = broadcast_shape(rng, &dims, batched);
    let mut params = vec![format!("%x: {ty}")];
    let mut x_dims = dims.clone();
    if batched {
        x_dims[0] = batch;
    }
    let n: usize = x_dims.iter().product();
    let mut inputs = vec![Tensor::from_f32(
        &x_dims,
        values(n, case as u64 + 1).iter().map(|v| 3.0 * v).collect(),
    )];
    let with_w = rng.below(2) == 0;
    if with_w {
        params.push(format!("%w: f32[{}]", dims_text(&w_shape, false)));
        let n = w_shape.iter().product();
        inputs.push(Tensor::from_f32(&w_shape, values(n, case as u64 + 7)));
    }
    let mut body = Vec::new();
    let mut names = vec!["%x".to_string()];
    let mut fusable = true;
    let len = 2 + rng.below(7);
    for i in 0..len {
        let name = format!("%v{i}");
        // Mostly the previous value; sometimes an earlier one (a DAG).
        let a = if rng.below(3) == 0 {
            names[rng.below(names.len())].clone()
        } else {
            names[names.len() - 1].clone()
        };
        let line = match rng.below(5) {
            0 | 1 => {
                let op = rng.pick(&UNARY);
                fusable &= op != "Sin";
                let (kind, attrs) = op.split_once(' ').unwrap_or((op, ""));
                format!("{name} = {kind}({a}) {attrs}")
            }
            2 => {
                let e = rng.pick(&["2.0", "3.0", "0.5", "1.7"]);
                fusable &= e != "1.7";
                body.push(format!("  %e{i} = const f32[] [{e}]"));
                format!("{name} = Pow({a}, %e{i})")
            }
            _ => {
                let op = rng.pick(&BINARY);
                let b = match rng.below(4) {
                    0 => names[rng.below(names.len())].clone(),
                    1 if with_w => "%w".to_string(),
                    _ => {
                        let shape = broadcast_shape(rng, &dims, batched);
                        body.push(format!("  %c{i} = {}", constant(rng, &shape)));
                        format!("%c{i}")
                    }
                };
                let (kind, attrs) = op.split_once(' ').unwrap_or((op, ""));
                // PRelu's slope broadcasts onto x: x stays first.
                let (a, b) = if kind != "PRelu" && rng.below(2) == 0 {
                    (b, a)
                } else {
                    (a, b)
                };
                format!("{name} = {kind}({a}, {b}) {attrs}")
            }
        };
        body.push(format!("  {} : {ty}", line.trim_end()));
        names.push(name);
    }
    // Sometimes an intermediate is an output too (it must then be stored).
    let mut outputs = vec![names[names.len() - 1].clone()];
    if rng.below(4) == 0 && names.len() > 2 {
        outputs.push(names[1 + rng.below(names.len() - 2)].clone());
        fusable = false;
    }
    let text = format!(
        "graph chain({}) -> ({}) {{\n{}\n}}\n",
        params.join(", "),
        outputs.join(", "),
        body.join("\n")
    );
    (text, inputs, fusable)
}

/// The JIT's float contract with the interpreter (`onnx_node.rs`).
fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-4 * b.abs().max(1.0)
}

fn compile(graph: &Graph, text: &str, opts: &CodegenOptions) -> JitProgram {
    JitProgram::compile(graph, opts).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn fused_chains_agree_with_unfused_kernels_and_the_interpreter() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut failures = Vec::new();
    let (mut fused_kernels, mut unfused_kernels) = (0, 0);
    for case in 0..300 {
        let (text, inputs, whole) = random_case(&mut rng, case);
        let mut graph = qlift_ir::text::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        // Nodes no output reads would be kernels of their own.
        graph.remove_dead_nodes();
        let want = qlift_ir::interp::run(&graph, &inputs).unwrap_or_else(|e| panic!("{text}: {e}"));
        for baseline_isa in [false, true] {
            let opts = CodegenOptions {
                baseline_isa,
                ..Default::default()
            };
            let fused = compile(&graph, &text, &opts);
            let unfused = compile(
                &graph,
                &text,
                &CodegenOptions {
                    no_fusion: true,
                    ..opts
                },
            );
            let (steps, single) = (fused.program().steps.len(), unfused.program().steps.len());
            fused_kernels += steps;
            unfused_kernels += single;
            if whole && steps != 1 {
                failures.push(format!("{text}is {steps} kernels, not one"));
            }
            let got = fused.run(&inputs).unwrap_or_else(|e| panic!("{text}: {e}"));
            let each = unfused
                .run(&inputs)
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            for ((g, e), w) in got.iter().zip(&each).zip(&want) {
                // Every NaN as one: Cranelift's exact rewrites (`-a · -b` = `a · b`) may
                // give a NaN another sign once the ops share a function.
                let bits = |t: &Tensor| -> Vec<u32> {
                    t.to_f32_vec()
                        .iter()
                        .map(|v| if v.is_nan() { f32::NAN } else { *v }.to_bits())
                        .collect()
                };
                if bits(g) != bits(e) || g.shape() != e.shape() {
                    failures.push(format!(
                        "[baseline {baseline_isa}] {text}fused {g:?}\nunfused {e:?}"
                    ));
                }
                if let Some(d) = g.disagreement(w, close) {
                    failures.push(format!("[baseline {baseline_isa}] {text}interpreter: {d}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures, the first:\n{}",
        failures.len(),
        failures[0]
    );
    // The cases fuse: far fewer kernels than nodes.
    assert!(
        2 * fused_kernels < unfused_kernels,
        "{fused_kernels} fused kernels for {unfused_kernels} nodes"
    );
}

/// GELU through tanh as exporters write it (magika's activation): x·0.5·(1 + tanh(√(2/π)·(x
/// + 0.044715·x³))) after a MatMul, nine nodes reading x four times. The nine become one
/// kernel named after the last node, and the MatMul stays a kernel of its own.
#[test]
fn gelu_tanh_chain_is_one_kernel() {
    let text = "graph gelu(%a: f32[N,16]) -> (%y) {
  %w = const f32[16,24] [REPEAT]
  %x = MatMul(%a, %w) : f32[N,24]
  %k0 = const f32[] [0.044715]
  %k1 = const f32[] [0.7978846]
  %k2 = const f32[] [1.0]
  %k3 = const f32[] [0.5]
  %x2 = Mul(%x, %x) : f32[N,24]
  %x3 = Mul(%x2, %x) : f32[N,24]
  %t = Mul(%x3, %k0) : f32[N,24]
  %u = Add(%x, %t) : f32[N,24]
  %v = Mul(%u, %k1) : f32[N,24]
  %th = Tanh(%v) : f32[N,24]
  %o = Add(%th, %k2) : f32[N,24]
  %h = Mul(%x, %k3) : f32[N,24]
  %y = Mul(%h, %o) : f32[N,24]
}
";
    let w: Vec<String> = values(16 * 24, 5)
        .iter()
        .map(|v| format!("{v:?}"))
        .collect();
    let text = text.replace("REPEAT", &w.join(", "));
    let graph = qlift_ir::text::parse(&text).unwrap();
    let program = compile(&graph, &text, &CodegenOptions::default());
    let steps = &program.program().steps;
    let forms: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| (s.node.as_str(), s.form.as_str()))
        .collect();
    assert_eq!(forms.len(), 2, "{forms:?}");
    assert_eq!(forms[1], ("y", "fused(9 ops)"));
    let a = Tensor::from_f32(&[3, 16], values(48, 9));
    let want = qlift_ir::interp::run(&graph, std::slice::from_ref(&a)).unwrap();
    let got = program.run(&[a]).unwrap();
    assert_eq!(got[0].disagreement(&want[0], close), None);
}
