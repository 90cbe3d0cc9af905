//! Filetests in the style of Cranelift's: IR text files under `tests/filetests/` whose first
//! line names the test kind, with expectations in `;` comments. Adding a case means adding a
//! file.
//!
//! - `; test verifier`: the graph parses; every `; error: TEXT` comment must match a verifier
//!   error about the node defined on that line, and there must be no other errors.
//! - `; test run`: every `; run: INPUTS -> OUTPUTS` line (tensors written as constants are,
//!   `dtype[shape] [data]`, separated by `;;`) runs through the reference interpreter; integer
//!   results must match exactly, f32 results within 1e-6 relative.
//! - `; test pass NAME`: the pass runs on the graph; its printed result must contain every
//!   `; check: TEXT` line in order (`; nextln: TEXT` on the line right after the previous
//!   match), none of the `; not: TEXT` lines, and verify; `; run:` lines hold for the graph
//!   before and after the pass (within 1e-5 relative, the pass may reassociate f32 math).
//! - `; test quantize`: quantization under a plan. The graph is calibrated on every
//!   `; calib: INPUTS` line (one batch each, written as run inputs are), the plan is the
//!   `; plan: TEXT` lines joined by newlines (TOML, or JSON), and `insert-qdq` then
//!   `fuse-requant` run; the lowered graph must meet the `; check:`/`; nextln:`/`; not:`
//!   lines as a pass test's does. With `; error: TEXT` lines, reading or resolving the plan
//!   must instead fail with a message containing each.
//! - `; tolerance: X` (pass tests only): f32 results of the graph *after* the pass may also
//!   differ from the expected values by up to X absolute, for rewrites whose contract allows
//!   a bounded difference (e.g. a clamp whose bounds round to a quantization grid). The graph
//!   before the pass is still held to 1e-5 relative, so the expected values stay those of
//!   the original graph; use it only where such a difference really occurs.

use libtest_mimic::{Arguments, Failed, Trial};
use qlift_ir::text::{parse, parse_tensor};
use qlift_ir::{verify, IrError, Tensor, TensorData};
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("filetests directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "qir") {
            out.push(path);
        }
    }
}

fn run_file(path: &Path) -> Result<(), Failed> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let kind = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("; test "))
        .map(str::trim);
    let graph = parse(&text).map_err(|e| format!("parse: {e}"))?;
    match kind {
        Some("verifier") => check_verifier(&text, &graph),
        Some("run") => check_runs(&text, &graph, 1e-6, 0.0),
        Some(k) if k.starts_with("pass ") => check_pass(&text, &graph, k["pass ".len()..].trim()),
        Some("quantize") => check_quantize(&text, &graph),
        other => Err(format!(
            "unknown test kind {other:?} (first line must be `; test verifier|run`)"
        )
        .into()),
    }
}

/// The node a text line defines: its `@name`, else its first result.
fn node_on_line(line: &str) -> Option<String> {
    let code = line.split(';').next()?;
    if let Some(at) = code.rfind(" @") {
        return Some(code[at + 2..].trim().trim_matches('"').to_string());
    }
    let first = code.trim().strip_prefix('%')?;
    Some(
        first
            .split([' ', ',', '='])
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

fn check_verifier(text: &str, graph: &qlift_ir::Graph) -> Result<(), Failed> {
    let expected: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            l.split_once("; error:")
                .map(|(_, e)| (node_on_line(l).unwrap_or_default(), e.trim().to_string()))
        })
        .collect();
    let errors = match verify(graph) {
        Ok(()) => Vec::new(),
        Err(IrError::Verifier(errors)) => errors,
        Err(e) => return Err(format!("verifier: {e}").into()),
    };
    for (node, message) in &expected {
        if !errors
            .iter()
            .any(|e| e.node == *node && e.message.contains(message.as_str()))
        {
            return Err(format!(
                "expected an error on `{node}` containing `{message}`; got {errors:#?}"
            )
            .into());
        }
    }
    if let Some(extra) = errors.iter().find(|e| {
        !expected
            .iter()
            .any(|(n, m)| e.node == *n && e.message.contains(m.as_str()))
    }) {
        return Err(format!("unexpected verifier error: {extra}").into());
    }
    Ok(())
}

fn tensors(list: &str) -> Result<Vec<Tensor>, Failed> {
    list.split(";;")
        .map(|t| parse_tensor(t.trim()).map_err(|e| format!("`{}`: {e}", t.trim()).into()))
        .collect()
}

/// Checks every `; run:` line: f32 results within `tolerance` relative (to magnitudes of at
/// least 1) or within `absolute`, other results exactly.
fn check_runs(
    text: &str,
    graph: &qlift_ir::Graph,
    tolerance: f32,
    absolute: f32,
) -> Result<(), Failed> {
    verify(graph).map_err(|e| e.to_string())?;
    let runs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once("; run:").map(|(_, r)| r))
        .collect();
    if runs.is_empty() && tolerance < 1e-5 {
        return Err("a run test needs `; run:` lines".into());
    }
    for run in runs {
        let (inputs, outputs) = run
            .split_once("->")
            .ok_or("a run line is `INPUTS -> OUTPUTS`")?;
        let got =
            qlift_ir::interp::run(graph, &tensors(inputs)?).map_err(|e| format!("{run}: {e}"))?;
        let want = tensors(outputs)?;
        let same = got.len() == want.len()
            && got
                .iter()
                .zip(&want)
                .all(|(g, w)| match (g.data(), w.data()) {
                    (TensorData::F32(a), TensorData::F32(b)) => {
                        g.shape() == w.shape()
                            && a.iter().zip(b).all(|(x, y)| {
                                (x - y).abs() <= (tolerance * y.abs().max(1.0)).max(absolute)
                            })
                    }
                    _ => g == w,
                });
        if !same {
            return Err(format!(
                "{run}\n  got {got:?}: {:?}",
                got.iter().map(|t| t.to_f32_vec()).collect::<Vec<_>>()
            )
            .into());
        }
    }
    Ok(())
}

fn check_pass(text: &str, graph: &qlift_ir::Graph, name: &str) -> Result<(), Failed> {
    let pass = qlift_passes::pipeline()
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| format!("no pass `{name}`"))?;
    let (after, _) = qlift_passes::manager::run_pass(graph, &pass).map_err(|e| e.to_string())?;
    verify(&after).map_err(|e| format!("after {name}: {e}"))?;
    check_directives(text, &after)?;
    let absolute = match text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("; tolerance:"))
    {
        Some(x) => x
            .trim()
            .parse::<f32>()
            .map_err(|e| format!("`; tolerance:{x}`: {e}"))?,
        None => 0.0,
    };
    check_runs(text, graph, 1e-5, 0.0)?;
    check_runs(text, &after, 1e-5, absolute)
}

/// The `; check:`, `; nextln:` and `; not:` lines of `text` against `graph` printed.
fn check_directives(text: &str, graph: &qlift_ir::Graph) -> Result<(), Failed> {
    let printed = qlift_ir::text::print(graph, &Default::default());
    let lines: Vec<&str> = printed.lines().collect();
    let mut at = 0usize;
    for directive in text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("; "))
    {
        if let Some(want) = directive.strip_prefix("check:").map(str::trim) {
            at = at
                + lines[at..]
                    .iter()
                    .position(|l| l.contains(want))
                    .ok_or_else(|| {
                        format!("check `{want}` not found after line {at}:\n{printed}")
                    })?
                + 1;
        } else if let Some(want) = directive.strip_prefix("nextln:").map(str::trim) {
            if !lines.get(at).is_some_and(|l| l.contains(want)) {
                return Err(format!("nextln `{want}` is not line {}:\n{printed}", at + 1).into());
            }
            at += 1;
        } else if let Some(unwanted) = directive.strip_prefix("not:").map(str::trim) {
            if printed.contains(unwanted) {
                return Err(format!("`{unwanted}` is still there:\n{printed}").into());
            }
        }
    }
    Ok(())
}

/// A `; test quantize` file (see the module documentation).
fn check_quantize(text: &str, graph: &qlift_ir::Graph) -> Result<(), Failed> {
    use qlift_passes::quantize::{
        insert_qdq_planned, resolve, Calibration, ImportedNames, QuantPlan, QuantizeOptions,
    };
    let directive = |name: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim_start().strip_prefix(name))
            .map(|l| l.strip_prefix(' ').unwrap_or(l).to_string())
            .collect()
    };
    let mut calibration = Calibration::default();
    for batch in &directive("; calib:") {
        calibration
            .observe(graph, &tensors(batch)?)
            .map_err(|e| format!("calibration: {e}"))?;
    }
    if calibration.samples() == 0 {
        return Err("a quantize test needs `; calib:` lines".into());
    }
    let errors = directive("; error:");
    let plan = QuantPlan::parse(&directive("; plan:").join("\n")).and_then(|plan| {
        resolve(
            &plan,
            graph,
            &QuantizeOptions::default(),
            &ImportedNames::default(),
        )
    });
    let plan = match (plan, errors.is_empty()) {
        (Ok(plan), true) => plan,
        (Ok(_), false) => return Err(format!("the plan applied; expected {errors:?}").into()),
        (Err(e), false) => {
            let message = e.to_string();
            return match errors.iter().find(|want| !message.contains(want.trim())) {
                Some(want) => {
                    Err(format!("expected an error containing `{want}`, got `{message}`").into())
                }
                None => Ok(()),
            };
        }
        (Err(e), true) => return Err(format!("plan: {e}").into()),
    };
    let inserted = insert_qdq_planned(graph, &calibration, &plan).map_err(|e| e.to_string())?;
    let pass = qlift_passes::pipeline()
        .into_iter()
        .find(|p| p.name == "fuse-requant")
        .ok_or("no pass `fuse-requant`")?;
    let (lowered, _) =
        qlift_passes::manager::run_pass(&inserted.graph, &pass).map_err(|e| e.to_string())?;
    verify(&lowered).map_err(|e| format!("after quantizing: {e}"))?;
    check_directives(text, &lowered)
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("filetests");
    let mut paths = Vec::new();
    files(&root, &mut paths);
    paths.sort();
    let trials = paths
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(&root).unwrap_or(&p).display().to_string();
            Trial::test(name, move || run_file(&p))
        })
        .collect();
    libtest_mimic::run(&Arguments::from_args(), trials).exit();
}
