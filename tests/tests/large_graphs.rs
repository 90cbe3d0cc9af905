//! Large graphs through the whole compiler: the rewrite pipeline must stay near-linear in
//! the graph's size (egg's own extractor made a 10,000-node chain take minutes), and large
//! graphs must compile and compute what the reference interpreter computes.
//!
//! The budgets of issue 18 (10,000 nodes within 5 s, 100,000 within 60 s, release build)
//! are checked by the ignored test at the end:
//! `cargo test --release -p qlift-tests --test large_graphs -- --ignored --nocapture`.

use qlift::{CompileOptions, CompiledModel, ImportOptions};
use qlift_ir::{Graph, Tensor};
use qlift_passes::{run_pipeline, PipelineOptions, Progress};
use qlift_tests::graphs;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// CPU time of the calling thread (user + system), from /proc: unlike wall time it does not
/// grow when other processes share the cores.
fn thread_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
    // Fields after the command name (which is in parentheses): utime and stime are the
    // 14th and 15th fields of the line, in clock ticks (100 per second on Linux).
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Peak resident memory of this process so far, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn load(text: &str) -> Graph {
    qlift::load_qir_text(text, &ImportOptions::default()).expect("the generated graph loads")
}

/// CPU time per node of the rewrite pipeline on `graph`: runs repeated until they add up to
/// at least 400 ms (the thread CPU clock ticks in 10 ms, so a single 30 ms run of the small
/// graph was ±33% and made the ratio cross the bound with no change in the code), the least
/// of three such measurements (a run next to other tests can take twice as long).
fn pipeline_time_per_node(graph: &Graph) -> Duration {
    let once = || {
        let start = thread_cpu_time();
        run_pipeline(graph, &PipelineOptions::default()).expect("the pipeline runs");
        thread_cpu_time() - start
    };
    (0..3)
        .map(|_| {
            let (mut total, mut runs) = (Duration::ZERO, 0u32);
            while total < Duration::from_millis(400) || runs == 0 {
                total += once();
                runs += 1;
            }
            total / runs / graph.node_count() as u32
        })
        .min()
        .unwrap_or_default()
}

#[test]
fn the_pipeline_is_near_linear_in_graph_size() {
    for (name, build) in [
        ("chain", graphs::chain as fn(usize) -> String),
        ("wide", graphs::wide),
    ] {
        let (small, large) = (load(&build(2_000)), load(&build(8_000)));
        // Warm up allocator and caches on the small one, then measure both.
        pipeline_time_per_node(&small);
        let (t_small, t_large) = (
            pipeline_time_per_node(&small),
            pipeline_time_per_node(&large),
        );
        let ratio = t_large.as_secs_f64() / t_small.as_secs_f64().max(1e-9);
        eprintln!(
            "{name}: {} nodes {t_small:?}/node, {} nodes {t_large:?}/node (x{ratio:.2} per node)",
            small.node_count(),
            large.node_count()
        );
        // Linear keeps the time per node (x1); quadratic multiplies it by 4 for 4x the nodes
        // (egg's extractor gave x6 and more). Measured quiet: x1.4-1.6 from 2,000 to 8,000
        // nodes (the e-graph outgrows the caches), x1.0-1.3 from 8,000 to 32,000; CI ran
        // x2.2 next to the other tests of this file, hence the bound between that and x4.
        assert!(
            ratio < 3.0,
            "{name}: 4x the nodes took {ratio:.2}x the time per node ({t_small:?} -> {t_large:?})"
        );
    }
}

#[test]
fn the_pipeline_reports_its_progress() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let opts = PipelineOptions {
        progress: Progress::new(move |i, n, name| {
            log.lock().unwrap().push((i, n, name.to_string()))
        }),
        ..Default::default()
    };
    run_pipeline(&load(&graphs::chain(100)), &opts).unwrap();
    let seen = seen.lock().unwrap();
    let passes = qlift_passes::pipeline().len();
    assert_eq!(seen.len(), passes + 1, "{seen:?}");
    assert!(
        seen.iter()
            .enumerate()
            .all(|(i, (at, n, _))| *at == i && *n == passes),
        "{seen:?}"
    );
    assert_eq!(seen[0].2, "cleanup");
    assert_eq!(seen[passes].2, "");
}

/// Compiles `graph` (pipeline and JIT) and checks its run against the interpreter.
fn compile_and_check(graph: &Graph) -> (Duration, Duration) {
    let start = Instant::now();
    let model =
        CompiledModel::from_graph(graph, None, &CompileOptions::default()).expect("compiles");
    let compile = start.elapsed();
    let x = [Tensor::from_f32(
        &[3, 4],
        vec![
            -1.0,
            0.0,
            1.0,
            2.0,
            0.5,
            -3.0,
            7.0,
            f32::NAN,
            1e6,
            -1e6,
            0.25,
            3.5,
        ],
    )];
    let start = Instant::now();
    let got = model.run(&x).expect("runs");
    let run = start.elapsed();
    let want = qlift_ir::interp::run(graph, &x).expect("the interpreter runs");
    let (a, b) = (got[0].as_f32().unwrap(), want[0].as_f32().unwrap());
    for (g, w) in a.iter().zip(b) {
        assert!(
            (g.is_nan() && w.is_nan()) || (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{g} vs {w}"
        );
    }
    (compile, run)
}

#[test]
fn large_graphs_compile_and_compute_what_the_interpreter_computes() {
    // Cranelift in a debug build takes 10 to 50 ms per kernel: 600 nodes there, 10,000 in a
    // release build (the budget test below goes to 100,000).
    let n = if cfg!(debug_assertions) { 600 } else { 10_000 };
    for text in [graphs::chain(n), graphs::wide(n)] {
        let graph = load(&text);
        let (compile, run) = compile_and_check(&graph);
        eprintln!(
            "{}: {} nodes compiled in {compile:?}, ran in {run:?}",
            graph.name,
            graph.node_count()
        );
    }
}

#[test]
#[ignore = "budgets for release builds: cargo test --release -p qlift-tests --test large_graphs -- --ignored --nocapture"]
fn budgets_10k_nodes_in_5_s_and_100k_in_60_s() {
    for (n, budget) in [(10_000, 5.0), (100_000, 60.0)] {
        for (name, build) in [
            ("chain", graphs::chain as fn(usize) -> String),
            ("wide", graphs::wide),
        ] {
            let wall = Instant::now();
            let cpu = thread_cpu_time();
            let graph = load(&build(n));
            let loaded = wall.elapsed();
            let (compile, run) = compile_and_check(&graph);
            let (total, cpu) = (wall.elapsed(), thread_cpu_time() - cpu);
            eprintln!(
                "{name} {} nodes: load {loaded:.2?}, pipeline + JIT {compile:.2?}, run {run:.2?}; total {total:.2?} wall, {cpu:.2?} CPU; peak RSS so far {:.0} MiB",
                graph.node_count(),
                peak_rss_mib()
            );
            // CPU time: the budget is the machine's, not what other processes leave of it.
            assert!(
                cpu.as_secs_f64() < budget,
                "{name} {n}: {cpu:?} CPU, budget {budget} s"
            );
        }
    }
}
