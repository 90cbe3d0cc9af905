//! What `report --html` and `dump --html` share: the pipeline's steps as the report lists
//! them, the kernel form (and with `--profile` the time) of every node, and writing the page.

use super::output::{note, Outputs};
use anyhow::Result;
use qlift::html::{Kernel, KernelCost, PipelineStep, Report};
use qlift::{CompileOptions, CompiledModel, Engine};
use qlift_ir::text::{print, PrintOptions};
use qlift_ir::{Graph, Tensor};
use qlift_passes::PassRun;
use std::collections::HashMap;
use std::path::Path;

/// Timed calls per kernel for `--profile`, after [`WARMUP_CALLS`]: enough for a stable mean
/// of the small kernels, few enough that a transformer's report stays quick.
const PROFILE_CALLS: usize = 20;
/// Untimed calls first (page faults, the thread pool's start).
const WARMUP_CALLS: usize = 3;

/// The graph as imported, then one step per pass with the IR after it (the runs must come
/// from a pipeline run with `PrintAfter::All`).
pub(crate) fn steps(imported: &Graph, runs: &[PassRun]) -> Vec<PipelineStep> {
    let first = PipelineStep {
        name: "import".into(),
        time: None,
        nodes: (0, imported.node_count()),
        text: Some(print(imported, &PrintOptions::default())),
    };
    std::iter::once(first)
        .chain(runs.iter().map(|r| PipelineStep {
            name: r.name.to_string(),
            time: Some(r.time),
            nodes: r.nodes,
            text: r.dump.clone(),
        }))
        .collect()
}

/// Compiles `lowered` with the JIT, runs it on `inputs` (once, or timed with `profile`) and
/// returns every kernel's form, and its cost when profiled, by node name. A model the JIT
/// cannot compile or run still gets its report: without kernels, with a note saying why.
pub(crate) fn kernels(
    lowered: &Graph,
    quantized: bool,
    inputs: &[Tensor],
    profile: bool,
) -> HashMap<String, Kernel> {
    let codegen = qlift::CodegenOptions {
        profile,
        ..Default::default()
    };
    let opts = CompileOptions {
        engine: Engine::Jit,
        threads: 1,
        codegen,
        ..Default::default()
    };
    let run = || -> Result<CompiledModel, qlift::Error> {
        let model = CompiledModel::from_lowered(lowered.clone(), quantized, &opts)?;
        for _ in 0..if profile { WARMUP_CALLS } else { 1 } {
            model.run(inputs)?;
        }
        if profile {
            model.reset_profile();
            for _ in 0..PROFILE_CALLS {
                model.run(inputs)?;
            }
        }
        Ok(model)
    };
    let model = match run() {
        Ok(model) => model,
        Err(e) => {
            note!("note: the report has no kernel forms: the JIT could not compile or run the model ({e})");
            return HashMap::new();
        }
    };
    let mut kernels: HashMap<String, Kernel> = model
        .kernel_forms()
        .unwrap_or_default()
        .into_iter()
        .map(|(node, form)| (node, Kernel { form, cost: None }))
        .collect();
    if let Some(times) = model.profile() {
        let batch = inputs
            .iter()
            .filter_map(|t| t.shape().first().copied())
            .max()
            .unwrap_or(1) as f64;
        let total: u64 = times.iter().map(|t| t.nanos).sum();
        for t in &times {
            let us = t.nanos as f64 / t.calls.max(1) as f64 / 1e3;
            let gmacs = t
                .macs
                .filter(|_| us > 0.0)
                .map(|m| m as f64 * batch / us / 1e3);
            let cost = KernelCost {
                us_per_call: us,
                share: t.nanos as f64 / total.max(1) as f64,
                gmacs,
            };
            kernels
                .entry(t.node.clone())
                .or_insert_with(|| Kernel {
                    form: t.form.clone(),
                    cost: None,
                })
                .cost = Some(cost);
        }
    }
    kernels
}

/// Renders the report and writes it to `path` (replaced only once written whole).
pub(crate) fn write(path: &Path, report: &Report) -> Result<()> {
    let page = qlift::html::render(report);
    let mut files = Outputs::default();
    files.write(path, page.as_bytes())?;
    files.commit()?;
    note!(
        "wrote {} ({:.1} MB, {} graph nodes)",
        path.display(),
        page.len() as f64 / 1e6,
        report.graph.node_count()
    );
    Ok(())
}
