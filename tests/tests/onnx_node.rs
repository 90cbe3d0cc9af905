//! The official ONNX node tests (vendored in `tests/data/onnx-node`, see its NOTICE and
//! MANIFEST.txt) through the importer and the reference interpreter: one test per case,
//! plus a coverage check that every op qlift supports has at least one case.

use libtest_mimic::{Arguments, Failed, Trial};
use qlift::{load_onnx_bytes, read_tensor_pb, Error, ImportOptions};
use qlift_ir::{OpKind, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/onnx-node")
}

/// `(test name, op types)` of every vendored case.
fn manifest() -> Vec<(String, Vec<String>)> {
    let text =
        std::fs::read_to_string(data_dir().join("MANIFEST.txt")).expect("MANIFEST.txt is vendored");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut words = l.split_whitespace().map(str::to_string);
            let name = words.next().expect("a test name");
            (name, words.collect())
        })
        .collect()
}

/// Reads `{prefix}_0.pb`, `{prefix}_1.pb`, ... of a data set.
fn read_set(dir: &Path, prefix: &str) -> Result<Vec<(String, Tensor)>, Failed> {
    let mut out = Vec::new();
    for i in 0.. {
        let path = dir.join(format!("{prefix}_{i}.pb"));
        if !path.exists() {
            break;
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        out.push(read_tensor_pb(&bytes).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    Ok(out)
}

/// A case's graph, its inputs in graph order, and the expected outputs.
/// A case's graph, its inputs in graph order, and its named expected outputs.
type Case = (qlift_ir::Graph, Vec<Tensor>, Vec<(String, Tensor)>);

fn load_case(name: &str) -> Result<Case, Failed> {
    let dir = data_dir().join(name);
    let model = std::fs::read(dir.join("model.onnx")).map_err(|e| e.to_string())?;
    let set = dir.join("test_data_set_0");
    let inputs = read_set(&set, "input")?;
    let expected = read_set(&set, "output")?;
    // qlift needs shape-like operands as constants; the node tests feed them as inputs.
    // Freeze exactly those the importer asks for.
    let mut opts = ImportOptions::default();
    let graph = loop {
        match load_onnx_bytes(&model, Some(&dir), &opts) {
            Ok(g) => break g,
            Err(Error::NonConstant { operand, .. })
                if !opts.constant_inputs.contains_key(&operand) =>
            {
                let t = inputs
                    .iter()
                    .find(|(n, _)| *n == operand)
                    .ok_or_else(|| format!("`{operand}` is not an input"))?;
                opts.constant_inputs.insert(operand, t.1.clone());
            }
            Err(e) => return Err(format!("import: {e}").into()),
        }
    };
    let by_name: HashMap<&str, &Tensor> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let feed: Vec<Tensor> = graph
        .input_values()
        .iter()
        .map(|v| {
            let n = &graph.value(*v).name;
            by_name
                .get(n.as_str())
                .map(|t| (*t).clone())
                .ok_or_else(|| format!("no data for input `{n}`"))
        })
        .collect::<Result<_, _>>()?;
    Ok((graph, feed, expected))
}

fn run_case(name: &str) -> Result<(), Failed> {
    let (graph, feed, expected) = load_case(name)?;
    let outputs = qlift_ir::interp::run(&graph, &feed).map_err(|e| format!("run: {e}"))?;
    if outputs.len() != expected.len() {
        return Err(format!("{} outputs, expected {}", outputs.len(), expected.len()).into());
    }
    for (i, (got, (_, want))) in outputs.iter().zip(&expected).enumerate() {
        compare(got, want).map_err(|e| format!("output {i}: {e}"))?;
    }
    Ok(())
}

/// The case through the JIT: its outputs equal the interpreter's, bit for bit for integer
/// results, within 1e-4 (relative above 1) for floats.
///
/// Code generation takes graphs whose extents are known: the graph is specialized on the
/// case's input shapes first, and where a shape-like operand (Reshape's shape, Slice's
/// starts) is a graph input, that input is frozen as the JIT needs it constant.
fn jit_case(name: &str) -> Result<(), Failed> {
    let (graph, feed, _) = load_case(name)?;
    let want = qlift_ir::interp::run(&graph, &feed).map_err(|e| format!("run: {e}"))?;
    if qlift_ir::subgraph_depth(&graph) > 0 {
        // Control flow: the driver compiles its parts and bodies itself (see qlift_codegen::flow).
        let program = qlift_codegen::FlowProgram::compile(
            &graph,
            &qlift_codegen::CodegenOptions::default(),
            &Default::default(),
        )
        .map_err(|e| format!("compile: {e}"))?;
        let got = program.run(&feed).map_err(|e| format!("jit run: {e}"))?;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            jit_matches(g, w).map_err(|e| format!("output {i}: {e}"))?;
        }
        return Ok(());
    }
    let (graph, feed) = specialized(graph, feed)?;
    let program =
        qlift_codegen::JitProgram::compile(&graph, &qlift_codegen::CodegenOptions::default())
            .map_err(|e| format!("compile: {e}"))?;
    let got = program.run(&feed).map_err(|e| format!("jit run: {e}"))?;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        jit_matches(g, w).map_err(|e| format!("output {i}: {e}"))?;
    }
    Ok(())
}

/// `graph` specialized on the shapes of `feed` (the batch kept symbolic), with the integer
/// inputs frozen when extents still depend on their values.
fn specialized(
    graph: qlift_ir::Graph,
    feed: Vec<Tensor>,
) -> Result<(qlift_ir::Graph, Vec<Tensor>), Failed> {
    let bind = |g: &qlift_ir::Graph, feed: &[Tensor]| {
        let values = g.input_values();
        let declared = values
            .iter()
            .map(|v| (g.value(*v).name.as_str(), g.value_type(*v)));
        let binding =
            qlift_ir::bind_inputs(&g.name, declared, feed).map_err(|e| format!("bind: {e}"))?;
        qlift_ir::specialize_for(g, &binding)
            .map(|(g, _)| g)
            .map_err(|e| format!("specialize: {e}"))
    };
    let g = bind(&graph, &feed)?;
    if !qlift_ir::needs_binding(&g) {
        return Ok((g, feed));
    }
    // Extents still depend on input values: freeze those inputs (integer ones first, then
    // every one) as constants.
    for integers_only in [true, false] {
        let mut g = graph.clone();
        let mut kept = Vec::new();
        for (v, t) in graph.input_values().iter().zip(&feed) {
            if !integers_only || matches!(t.dtype(), qlift_ir::DType::I32 | qlift_ir::DType::I64) {
                g.freeze_input(*v, std::sync::Arc::new(t.clone()))
                    .map_err(|e| e.to_string())?;
            } else {
                kept.push(t.clone());
            }
        }
        let g = bind(&g, &kept)?;
        if !qlift_ir::needs_binding(&g) || !integers_only {
            return Ok((g, kept));
        }
    }
    unreachable!("the second round freezes every input")
}

/// The JIT's contract with the interpreter: integers exact, floats within 1e-4 (relative
/// above magnitude 1), NaN where the interpreter has NaN.
fn jit_matches(got: &Tensor, want: &Tensor) -> Result<(), String> {
    got.disagreement(want, |a, b| (a - b).abs() <= 1e-4 * b.abs().max(1.0))
        .map_or(Ok(()), Err)
}

/// Exact for integers; floats within the ONNX backend runner's default tolerance,
/// |got - want| <= 1e-7 + 1e-3 |want| (some expected outputs are typed with 4 digits), NaN
/// matching NaN.
fn compare(got: &Tensor, want: &Tensor) -> Result<(), String> {
    got.disagreement(want, |a, b| (a - b).abs() <= 1e-7 + 1e-3 * b.abs())
        .map_or(Ok(()), Err)
}

/// Every supported op has at least one node test.
fn coverage(cases: &[(String, Vec<String>)]) -> Result<(), Failed> {
    // ONNX's blocked DequantizeLinear of symmetric i8/i4 values, imported under its own
    // name: the vendored `test_dequantizelinear_blocked` has u8 values with zero points, which
    // import as the definition (Cast, Gather, Sub, Mul); tests/tests/jit_dynamic.rs checks
    // the symmetric form against the interpreter.
    let renamed = [OpKind::BlockDequantizeLinear];
    let missing: Vec<&str> = OpKind::ALL
        .iter()
        .filter(|k| !k.is_internal() && !renamed.contains(k))
        .map(|k| k.name())
        .filter(|op| !cases.iter().any(|(_, ops)| ops.iter().any(|o| o == op)))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "supported ops without an ONNX node test: {}",
            missing.join(", ")
        )
        .into())
    }
}

fn main() {
    let args = Arguments::from_args();
    let cases = manifest();
    let mut trials: Vec<Trial> = cases
        .iter()
        .map(|(name, _)| {
            let name = name.clone();
            Trial::test(name.clone(), move || run_case(&name))
        })
        .collect();
    trials.extend(cases.iter().map(|(name, _)| {
        let name = name.clone();
        Trial::test(format!("jit::{name}"), move || jit_case(&name))
    }));
    trials.push(Trial::test(
        "every_supported_op_has_a_node_test",
        move || coverage(&cases),
    ));
    libtest_mimic::run(&args, trials).exit();
}
