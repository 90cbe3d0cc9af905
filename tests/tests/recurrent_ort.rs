//! LSTM, GRU and RNN models against ONNX Runtime: the cases in `tests/data/recurrent`
//! (written by `tools/make_recurrent_cases.py`: random weights, every direction, both
//! layouts, optional operands, sequence lengths, activations with parameters, clip,
//! symbolic sequence and batch dimensions, opsets 7, 14 and 22) hold ONNX Runtime's outputs.
//! qlift's interpreter, and the model compiled through the whole pipeline (import, rewrite
//! passes, specialization of the symbolic dimensions, JIT), must give them within 1e-5
//! relative (to magnitude 1 below it); the model exported back to ONNX and imported again
//! must compute the same.

use qlift::{
    export_onnx, load_onnx_bytes, read_tensor_pb, CompileOptions, CompiledModel, ImportOptions,
};
use qlift_ir::{Graph, OpKind, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/recurrent")
}

fn read_set(dir: &Path, prefix: &str) -> Vec<(String, Tensor)> {
    (0..)
        .map(|i| dir.join(format!("{prefix}_{i}.pb")))
        .take_while(|p| p.exists())
        .map(|p| {
            read_tensor_pb(&std::fs::read(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

/// `max |got − want| / max(|want|, 1)`, or an error on a shape mismatch.
fn relative_error(got: &Tensor, want: &Tensor) -> Result<f32, String> {
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let (g, w) = (
        got.as_f32().map_err(|e| e.to_string())?,
        want.as_f32().map_err(|e| e.to_string())?,
    );
    Ok(g.iter()
        .zip(w)
        .map(|(a, b)| {
            if a == b {
                0.0
            } else {
                (a - b).abs() / b.abs().max(1.0)
            }
        })
        .fold(0.0, f32::max))
}

fn check_outputs(what: &str, got: &[Tensor], want: &[(String, Tensor)]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} outputs, expected {}",
            got.len(),
            want.len()
        ));
    }
    for (g, (name, w)) in got.iter().zip(want) {
        let err = relative_error(g, w).map_err(|e| format!("{what}: output `{name}`: {e}"))?;
        if err > 1e-5 {
            return Err(format!(
                "{what}: output `{name}` differs from ONNX Runtime by {err} (relative)"
            ));
        }
    }
    Ok(())
}

/// The feed in the order of `names`.
fn feed(inputs: &[(String, Tensor)], names: &[String]) -> Vec<Tensor> {
    let by_name: HashMap<&str, &Tensor> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    names
        .iter()
        .map(|n| {
            by_name
                .get(n.as_str())
                .map(|t| (*t).clone())
                .unwrap_or_else(|| panic!("no data for `{n}`"))
        })
        .collect()
}

fn input_names(g: &Graph) -> Vec<String> {
    g.input_values()
        .iter()
        .map(|v| g.value(*v).name.clone())
        .collect()
}

fn run_case(name: &str) -> Result<(), String> {
    let dir = data_dir().join(name);
    let bytes = std::fs::read(dir.join("model.onnx")).map_err(|e| e.to_string())?;
    let set = dir.join("test_data_set_0");
    let (inputs, expected) = (read_set(&set, "input"), read_set(&set, "output"));
    let graph = load_onnx_bytes(&bytes, Some(&dir), &ImportOptions::default())
        .map_err(|e| format!("import: {e}"))?;
    if !graph.node_ids().any(|id| matches!(&graph.node(id).op, qlift_ir::NodeOp::Apply(op) if matches!(op.kind, OpKind::LSTM | OpKind::GRU | OpKind::RNN))) {
        return Err("no recurrent node".into());
    }
    let x = feed(&inputs, &input_names(&graph));
    let interp = qlift_ir::interp::run(&graph, &x).map_err(|e| format!("interp: {e}"))?;
    check_outputs("interpreter", &interp, &expected)?;
    let model = CompiledModel::from_onnx_bytes(&bytes, None, &CompileOptions::default())
        .map_err(|e| format!("compile: {e}"))?;
    let names: Vec<String> = model.inputs().into_iter().map(|(n, _)| n).collect();
    let jit = model
        .run(&feed(&inputs, &names))
        .map_err(|e| format!("compiled run: {e}"))?;
    check_outputs("compiled model", &jit, &expected)?;
    let exported = export_onnx(&graph).map_err(|e| format!("export: {e}"))?;
    let again = load_onnx_bytes(&exported, None, &ImportOptions::default())
        .map_err(|e| format!("re-import: {e}"))?;
    let round = qlift_ir::interp::run(&again, &feed(&inputs, &input_names(&again)))
        .map_err(|e| format!("interp after export: {e}"))?;
    if round != interp {
        return Err("the exported model computes something else".into());
    }
    Ok(())
}

#[test]
fn recurrent_models_match_onnx_runtime() {
    let mut names: Vec<String> = std::fs::read_dir(data_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.len() >= 15,
        "the cases are vendored ({} found)",
        names.len()
    );
    let failures: Vec<String> = names
        .iter()
        .filter_map(|n| run_case(n).err().map(|e| format!("{n}: {e}")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases fail:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
}
