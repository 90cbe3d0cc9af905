//! The pass manager: named passes in a fixed default pipeline, IR dumps after any or every
//! pass, per-pass timings, and the verifier after every pass in debug builds (so a pass that
//! breaks the graph is caught at that pass).

use crate::bridge::{to_egraph, to_graph};
use crate::rules::{self, QRewrite};
use crate::PassError;
use egg::Runner;
use qlift_ir::text::{print, PrintOptions};
use qlift_ir::Graph;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A named pass: usually one rule family run to saturation (within limits) on an e-graph
/// of the graph, then the cheapest graph extracted. Constant folding happens in the
/// e-graph's analysis in every rule pass; `fold-constants` is the pass with no rules
/// besides it.
pub struct Pass<'a> {
    /// Name used on the command line (`--after fold-bn`).
    pub name: &'static str,
    /// What it does, for `--help` and dumps.
    pub about: &'static str,
    kind: PassKind<'a>,
}

/// A graph-to-graph function (see [`Pass::transform`]).
type GraphTransform<'a> = Box<dyn Fn(&Graph) -> Result<Graph, PassError> + 'a>;

/// How a pass changes the graph.
enum PassKind<'a> {
    /// Rewrites on an e-graph.
    Rules(fn() -> Vec<QRewrite>),
    /// A direct graph transformation (Q/DQ insertion needs calibration data, not rules).
    Transform(GraphTransform<'a>),
}

impl<'a> Pass<'a> {
    fn rules(name: &'static str, about: &'static str, rules: fn() -> Vec<QRewrite>) -> Pass<'a> {
        Pass {
            name,
            about,
            kind: PassKind::Rules(rules),
        }
    }

    /// A pass that transforms the graph with a function.
    pub fn transform(
        name: &'static str,
        about: &'static str,
        f: impl Fn(&Graph) -> Result<Graph, PassError> + 'a,
    ) -> Pass<'a> {
        Pass {
            name,
            about,
            kind: PassKind::Transform(Box::new(f)),
        }
    }
}

/// The name of the pass [`quantizing_pipeline`] adds.
pub const INSERT_QDQ: &str = "insert-qdq";

/// The default pipeline, in order: float simplifications, then the lowering of any Q/DQ
/// chains (those of a pre-quantized model) to integer ops.
pub fn pipeline() -> Vec<Pass<'static>> {
    vec![
        Pass::rules("cleanup", "remove Identity/Dropout/no-op Reshape, merge Reshape and Transpose chains", rules::cleanup::rules),
        Pass::rules("fold-constants", "evaluate every op whose operands are all constants", Vec::new),
        Pass::transform(
            "one-hot-products",
            "a one-hot encoding times constant weights (MatMul(Cast(Equal(x, 0..K)), W)) becomes a row lookup (Gather)",
            crate::one_hot::one_hot_products,
        ),
        Pass::rules("fold-bn", "fold BatchNormalization into Conv/Gemm/MatMul, or into a scale and shift", rules::bn_fold::rules),
        Pass::rules("absorb-affine", "move per-channel Mul/Add by constants into Conv/Gemm weights and bias", rules::absorb::rules),
        Pass::rules("fuse-activations", "attach Relu/Clip to their producer as a fused clamp", rules::activation::rules),
        Pass::transform(
            "recurrent-batch-first",
            "read a batch-first input in place: Transpose(perm=[1,0,2]) into a time-major recurrent layer becomes a batch-first layer",
            crate::recurrent_layout::batch_first_recurrent,
        ),
        Pass::rules(
            "fuse-requant",
            "lower DequantizeLinear→op→QuantizeLinear chains to integer ops with one fixed-point requantization; fold and cancel Q/DQ pairs",
            || rules::requant::rules().into_iter().chain(rules::qdq::rules()).collect(),
        ),
    ]
}

/// The default pipeline with `insert_qdq` (calibration and Q/DQ insertion, see
/// [`crate::quantize`]) run on the float graph just before `fuse-requant`, so that
/// calibration sees the graph with BatchNormalization folded and activations fused.
pub fn quantizing_pipeline<'a>(
    insert_qdq: impl Fn(&Graph) -> Result<Graph, PassError> + 'a,
) -> Vec<Pass<'a>> {
    quantizing_pipeline_with(Vec::new(), insert_qdq, Vec::new())
}

/// [`quantizing_pipeline`] with `before` run on the float graph just before `insert-qdq`
/// (cross-layer equalization) and `after` on the QDQ graph just after it (AdaRound, bias
/// correction), so that each shows in the dumps under its own name.
pub fn quantizing_pipeline_with<'a>(
    before: Vec<Pass<'a>>,
    insert_qdq: impl Fn(&Graph) -> Result<Graph, PassError> + 'a,
    after: Vec<Pass<'a>>,
) -> Vec<Pass<'a>> {
    let mut passes = pipeline();
    let at = passes
        .iter()
        .position(|p| p.name == "fuse-requant")
        .unwrap_or(passes.len());
    passes.insert(
        at,
        Pass::transform(
            INSERT_QDQ,
            "calibrate, then insert QuantizeLinear/DequantizeLinear around quantizable ops",
            insert_qdq,
        ),
    );
    passes.splice(at + 1..at + 1, after);
    passes.splice(at..at, before);
    passes
}

/// Which passes to print the IR after.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum PrintAfter {
    /// None.
    #[default]
    Nothing,
    /// Every pass.
    All,
    /// The named pass.
    Pass(String),
}

/// A progress callback: called as each pass starts with `(index, passes, name)`, and once
/// more with `(passes, passes, "")` at the end (what a progress bar needs).
#[derive(Clone, Default)]
pub struct Progress(pub Option<Arc<dyn Fn(usize, usize, &str) + Send + Sync>>);

impl Progress {
    /// A progress callback from a function.
    pub fn new(f: impl Fn(usize, usize, &str) + Send + Sync + 'static) -> Progress {
        Progress(Some(Arc::new(f)))
    }

    /// Calls the callback, if there is one.
    pub fn report(&self, index: usize, passes: usize, name: &str) {
        if let Some(f) = &self.0 {
            f(index, passes, name);
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(callback)"
        } else {
            "Progress(none)"
        })
    }
}

/// How to run the pipeline.
#[derive(Clone, Debug, Default)]
pub struct PipelineOptions {
    /// Passes after which [`PassRun::dump`] is filled in.
    pub print_after: PrintAfter,
    /// Write the IR after each pass to `DIR/NN-pass.qir` (numbered in pipeline order).
    pub dump_dir: Option<PathBuf>,
    /// Stop after the named pass (the graph returned is the graph after it).
    pub stop_after: Option<String>,
    /// Told as each pass starts (for a progress bar).
    pub progress: Progress,
    /// Told as a long pass advances, `(done, total, what)`: AdaRound after each layer, so
    /// that a minute-long pass does not look stuck.
    pub step_progress: Progress,
}

/// What one pass did.
#[derive(Clone, Debug)]
pub struct PassRun {
    /// The pass.
    pub name: &'static str,
    /// Wall time, e-graph build to extracted graph.
    pub time: Duration,
    /// Graph nodes before and after.
    pub nodes: (usize, usize),
    /// E-graph size when the rules stopped.
    pub egraph_nodes: usize,
    /// The IR after the pass, when it was asked for.
    pub dump: Option<String>,
}

/// E-graph limits from the environment (`QLIFT_EGRAPH_NODE_LIMIT`, `QLIFT_EGRAPH_ITER_LIMIT`),
/// as egg's own tests read theirs: the defaults are far above what the rules need on real
/// models, and bound the work on adversarial ones.
fn limit(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs one pass; returns the graph and the e-graph's size (0 for a transform).
pub fn run_pass(graph: &Graph, pass: &Pass) -> Result<(Graph, usize), PassError> {
    let rules = match &pass.kind {
        PassKind::Rules(rules) => rules,
        PassKind::Transform(f) => {
            let out = f(graph)?;
            if cfg!(debug_assertions) {
                qlift_ir::verify(&out)
                    .map_err(|e| PassError::Bug(format!("after pass {}: {e}", pass.name)))?;
            }
            return Ok((out, 0));
        }
    };
    let mut eg = to_egraph(graph)?;
    let runner = Runner::default()
        .with_egraph(std::mem::take(&mut eg.egraph))
        .with_node_limit(limit("QLIFT_EGRAPH_NODE_LIMIT", 200_000))
        .with_iter_limit(limit("QLIFT_EGRAPH_ITER_LIMIT", 30))
        .with_time_limit(Duration::from_secs(10))
        .run(&rules());
    eg.egraph = runner.egraph;
    let size = eg.egraph.total_number_of_nodes();
    let out = to_graph(&eg)?;
    if cfg!(debug_assertions) {
        qlift_ir::verify(&out)
            .map_err(|e| PassError::Bug(format!("after pass {}: {e}", pass.name)))?;
    }
    Ok((out, size))
}

/// Runs the default pipeline.
pub fn run_pipeline(
    graph: &Graph,
    opts: &PipelineOptions,
) -> Result<(Graph, Vec<PassRun>), PassError> {
    run_passes(graph, &pipeline(), opts)
}

/// Runs `passes` in order, with dumps and timings as `opts` asks.
pub fn run_passes(
    graph: &Graph,
    passes: &[Pass],
    opts: &PipelineOptions,
) -> Result<(Graph, Vec<PassRun>), PassError> {
    let mut graph = graph.clone();
    let mut runs = Vec::new();
    let total = match &opts.stop_after {
        Some(name) => passes
            .iter()
            .position(|p| p.name == name)
            .map_or(passes.len(), |i| i + 1),
        None => passes.len(),
    };
    for (i, pass) in passes.iter().enumerate() {
        opts.progress.report(i, total, pass.name);
        let start = Instant::now();
        let before = graph.node_count();
        let (next, egraph_nodes) = run_pass(&graph, pass)?;
        graph = next;
        let time = start.elapsed();
        let wanted = match &opts.print_after {
            PrintAfter::Nothing => false,
            PrintAfter::All => true,
            PrintAfter::Pass(name) => name == pass.name,
        };
        let text =
            (wanted || opts.dump_dir.is_some()).then(|| print(&graph, &PrintOptions::default()));
        if let (Some(dir), Some(text)) = (&opts.dump_dir, &text) {
            std::fs::create_dir_all(dir).map_err(|source| PassError::Io {
                path: dir.clone(),
                source,
            })?;
            let path = dir.join(format!("{:02}-{}.qir", i + 1, pass.name));
            std::fs::write(&path, text).map_err(|source| PassError::Io { path, source })?;
        }
        runs.push(PassRun {
            name: pass.name,
            time,
            nodes: (before, graph.node_count()),
            egraph_nodes,
            dump: text.filter(|_| wanted),
        });
        if opts.stop_after.as_deref() == Some(pass.name) {
            break;
        }
    }
    opts.progress.report(total, total, "");
    Ok((graph, runs))
}

/// Every pass the pipeline can run, in order, with what it does: `insert-qdq` and the
/// optional post-training passes around it included (for `--help` and `--after`).
pub fn all_passes() -> Vec<(&'static str, &'static str)> {
    use crate::quantize::{adaround, bias_correction, cle, smooth};
    let named = |name, about| Pass::transform(name, about, |g: &Graph| Ok(g.clone()));
    quantizing_pipeline_with(
        vec![
            named(smooth::PASS, smooth::ABOUT),
            named(cle::PASS, cle::ABOUT),
        ],
        |g| Ok(g.clone()),
        vec![
            named(adaround::PASS, adaround::ABOUT),
            named(bias_correction::PASS, bias_correction::ABOUT),
        ],
    )
    .iter()
    .map(|p| (p.name, p.about))
    .collect()
}

/// The names of [`all_passes`] (to validate `--after`).
pub fn pass_names() -> Vec<&'static str> {
    all_passes().into_iter().map(|(name, _)| name).collect()
}
