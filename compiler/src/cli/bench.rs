//! `qlift bench`: latency, throughput and compile time of a compiled model.

use super::output::{outln, print};
use super::streaming::StreamArgs;
use super::{
    bind_inputs, compile_graph, in_range, load_model, EngineArg, LoadArgs, QuantArgs, MAX_THREADS,
};
use anyhow::{bail, Result};
use qlift_ir::Tensor;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  qlift bench model.onnx --input x.npy                       # fp32
  qlift bench model.onnx --input x.npy --calib c.npy         # int8
  qlift bench model.onnx --input x.npy --calib c.npy --threads 2 --iters 500 --json
  qlift bench model.onnx --input x.npy --calib c.npy --callers 4      # 4 threads sharing one model
  qlift bench examples/models/digits_lstm.onnx --stream --chunk 1 \\
      --input examples/models/digits_seq_test_x.npy --calib examples/models/digits_seq_calib_x.npy

--threads splits each call's batch across threads (as ONNX Runtime's intra-op threads);
--callers runs that many threads calling the one model at once. Latency is per call, GMAC/s
counts the multiply-accumulates of Conv/Gemm/MatMul layers (int8 ones when quantized).
With --stream each timed run is one call on the next chunk of the data inputs, the state
carried from the call before (and reset at the start of the sequence): latency per chunk.")]
pub(crate) struct BenchArgs {
    /// The ONNX model (.onnx) or IR text (.qir).
    model: PathBuf,
    #[command(flatten)]
    load: LoadArgs,
    /// Inputs (FILE.npy or NAME=FILE.npy); their batch is the batch benchmarked.
    #[arg(short, long = "input", required = true)]
    inputs: Vec<String>,
    #[command(flatten)]
    quant: QuantArgs,
    /// Timed runs per caller, 1 to 1,000,000.
    #[arg(long, default_value_t = 100, value_parser = in_range::<1, MAX_ITERS>)]
    iters: usize,
    /// Untimed runs first, 0 to 1,000,000.
    #[arg(long, default_value_t = 10, value_parser = in_range::<0, MAX_ITERS>)]
    warmup: usize,
    /// Threads one call may use (the batch is split across them), as ONNX Runtime's
    /// intra-op threads; 1 to 1024.
    #[arg(long, default_value_t = 1, value_parser = in_range::<1, MAX_THREADS>)]
    threads: usize,
    /// Threads calling the one compiled model at the same time, 1 to 1024.
    #[arg(long, default_value_t = 1, value_parser = in_range::<1, MAX_THREADS>)]
    callers: usize,
    /// The engine.
    #[arg(long, value_enum, default_value_t = EngineArg::Jit)]
    engine: EngineArg,
    /// Print one JSON object (median_ms, p90_ms, min_ms, compile_ms, gmacs, ...).
    #[arg(long)]
    json: bool,
    /// Use `pmaddwd` dot products even where the CPU has VNNI `vpdpbusd` (to measure the
    /// path of CPUs without VNNI).
    #[arg(long)]
    no_vnni: bool,
    /// Use no CPU feature beyond AVX2 (no AVX-512, no VNNI): the code an AVX2-only CPU gets.
    #[arg(long)]
    avx2_only: bool,
    /// Generate baseline x86-64 code (SSE2), ignoring the CPU's features.
    #[arg(long)]
    baseline_isa: bool,
    /// Run 3×3 integer convolutions in the direct wide form, not Winograd's F(2×2, 3×3)
    /// (to compare the two).
    #[arg(long)]
    no_winograd: bool,
    /// Weight-only MatMul weights as f32 panels dequantized at compile time, not 4- or
    /// 8-bit unpacked per block at run time (faster at small batches, 4–8× the memory).
    #[arg(long)]
    weight_only_f32: bool,
    /// One kernel per node even for chains of f32 elementwise nodes (fused into one loop by
    /// default): to measure what fusion saves.
    #[arg(long)]
    no_fusion: bool,
    /// Time every kernel (timers compiled into the entry function) and print where the
    /// time goes: per kernel and per kernel form, with GMAC/s (JIT only).
    #[arg(long)]
    profile: bool,
    /// The widest vectors kernels may use: 128 (Cranelift's), 256 (AVX2 micro-kernels) or
    /// 512; the widest the CPU has by default.
    #[arg(long, value_parser = parse_vector_bits)]
    max_vector_bits: Option<u32>,
    /// Kernels listed by --profile (the slowest first).
    #[arg(long, default_value_t = 25)]
    profile_top: usize,
    #[command(flatten)]
    stream: StreamArgs,
}

fn parse_vector_bits(s: &str) -> Result<u32, String> {
    match s {
        "128" | "256" | "512" => s.parse().map_err(|e| format!("{e}")),
        _ => Err("expected 128, 256 or 512".into()),
    }
}

/// Most timed or warm-up runs per caller.
const MAX_ITERS: u64 = 1_000_000;

/// Most latencies kept in all (`--iters` × `--callers`): 80 MB of them.
const MAX_TIMED_RUNS: usize = 10_000_000;

pub(crate) fn exec(args: &BenchArgs) -> Result<()> {
    if args.iters.saturating_mul(args.callers) > MAX_TIMED_RUNS {
        bail!(
            "--iters {} × --callers {} is more than {MAX_TIMED_RUNS} timed runs",
            args.iters,
            args.callers
        );
    }
    let start = Instant::now();
    let codegen = qlift::CodegenOptions {
        no_vnni: args.no_vnni,
        avx2_only: args.avx2_only,
        baseline_isa: args.baseline_isa,
        profile: args.profile,
        max_vector_bits: args.max_vector_bits,
        no_winograd: args.no_winograd,
        weight_only_f32: args.weight_only_f32,
        no_fusion: args.no_fusion,
        ..Default::default()
    };
    let graph = load_model(&args.model, &args.load)?;
    let streaming = args.stream.stream;
    let pairs = if streaming {
        args.stream.pairs(&graph)?
    } else {
        Vec::new()
    };
    let inputs = if streaming {
        args.stream.bind_data(&graph, &pairs, &args.inputs)?
    } else {
        bind_inputs(&graph, &args.inputs)?
    };
    let model = if streaming {
        args.stream.compile(
            &graph,
            &args.model,
            &args.quant,
            &pairs,
            args.engine,
            args.threads,
            &codegen,
        )?
    } else {
        compile_graph(
            &graph,
            &args.model,
            &args.quant,
            args.engine,
            args.threads,
            &codegen,
        )?
    };
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    let batch = inputs
        .first()
        .and_then(|t| t.shape().first().copied())
        .unwrap_or(1);
    let chunks = if streaming {
        qlift::stream::chunks(&inputs, args.stream.axis, args.stream.chunk)?
    } else {
        Vec::new()
    };
    // Every caller holds its own outputs and scratch: the memory of all of them together
    // is checked before any is allocated (a stream's: one call on its first chunk).
    let per_call = if streaming {
        let stream = args.stream.open(&model, &pairs)?;
        model.run_bytes(&stream.assemble(chunks[0].clone(), stream.initial_state(batch)?)?)?
    } else {
        model.run_bytes(&inputs)?
    };
    let limit = qlift::Limits::default().max_run_bytes;
    if per_call.saturating_mul(args.callers as u64) > limit {
        return Err(qlift::Error::Limit {
            what: format!("memory for {} callers on a batch of {batch}", args.callers),
            value: per_call.saturating_mul(args.callers as u64),
            limit,
        }
        .into());
    }
    // Shapes from the inputs, not the declared types: a symbolic sequence length is bound
    // by them.
    let output_shapes = match streaming {
        true => Vec::new(),
        false => model.output_shapes(&inputs)?,
    };
    let fresh_outputs = || -> Vec<Tensor> {
        model
            .outputs()
            .iter()
            .zip(&output_shapes)
            .map(|((_, ty), shape)| Tensor::zeros(ty.dtype, shape))
            .collect()
    };
    let mut outputs = fresh_outputs();
    // One call: the inputs, or the next chunk of a stream (reset at the sequence's start).
    let call =
        |stream: &mut Option<qlift::Stream>, outputs: &mut Vec<Tensor>, i: usize| -> Result<()> {
            match stream {
                Some(s) => {
                    s.step(&chunks[i % chunks.len()])?;
                }
                None => model.run_into(&inputs, outputs)?,
            }
            Ok(())
        };
    let open = || -> Result<Option<qlift::Stream>> {
        if streaming {
            Ok(Some(args.stream.open(&model, &pairs)?))
        } else {
            Ok(None)
        }
    };
    let mut warm = open()?;
    for i in 0..args.warmup {
        call(&mut warm, &mut outputs, i)?;
    }
    model.reset_profile();
    let style = indicatif::ProgressStyle::with_template("benchmarking {bar:30} {pos}/{len} runs")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let bar = indicatif::ProgressBar::new((args.iters * args.callers) as u64).with_style(style);
    let wall = Instant::now();
    let mut times: Vec<f64> = std::thread::scope(|s| -> Result<Vec<f64>> {
        let workers: Vec<_> = (0..args.callers)
            .map(|_| {
                let (bar, call, open, chunks) = (&bar, &call, &open, &chunks);
                s.spawn(move || -> Result<Vec<f64>> {
                    let mut outputs = fresh_outputs();
                    let mut stream = open()?;
                    let mut times = Vec::with_capacity(args.iters);
                    for i in 0..args.iters {
                        if let Some(s) = stream.as_mut().filter(|_| i % chunks.len().max(1) == 0) {
                            s.reset();
                        }
                        let t = Instant::now();
                        call(&mut stream, &mut outputs, i)?;
                        times.push(t.elapsed().as_secs_f64() * 1e3);
                        bar.inc(1);
                    }
                    Ok(times)
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            // A panic in a caller is a bug: carried on to the top (exit 2).
            all.extend(
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?,
            );
        }
        Ok(all)
    })?;
    let wall_s = wall.elapsed().as_secs_f64();
    bar.finish_and_clear();
    times.sort_by(f64::total_cmp);
    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let (min, median, p90) = (times[0], pick(0.5), pick(0.9));
    let macs = model.macs() as f64 * batch as f64;
    let profile = match model.profile() {
        Some(kernels) => Some(super::profile::table(
            &kernels,
            times.iter().sum::<f64>() / times.len() as f64,
            batch,
            args.profile_top,
        )),
        None if args.profile => bail!("--profile needs the JIT engine"),
        None => None,
    };
    let gmacs = macs / (median * 1e-3) / 1e9;
    let throughput = (times.len() * batch) as f64 / wall_s;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let peak = qlift_codegen::peak::int8_peak(
        &codegen,
        args.threads.saturating_mul(args.callers).min(cores),
    )?;
    let fraction = peak.map(|p| gmacs / p.gmacs);
    if args.json {
        return outln!(
            "{}",
            serde_json::json!({
                "model": args.model.display().to_string(), "engine": model.engine_description(),
                "precision": if model.is_quantized() { "int8" } else { "fp32" },
                "batch": batch, "threads": args.threads, "callers": args.callers, "iters": args.iters,
                "min_ms": min, "median_ms": median, "p90_ms": p90, "compile_ms": compile_ms,
                "samples_per_s": throughput, "gmacs": gmacs, "int8_peak_gmacs": peak.map(|p| p.gmacs),
                "int8_peak_fraction": fraction, "profile": profile,
            })
        );
    }
    let precision = if model.is_quantized() { "int8" } else { "fp32" };
    if streaming {
        outln!("stream     chunks of {} along axis {}, {} call(s) per sequence, state carried: latency per call", args.stream.chunk, args.stream.axis, chunks.len())?;
    }
    print(&format!(
        "model      {} ({precision}, batch {batch}, {} thread(s) per call, {} caller(s))
engine     {}
compile    {compile_ms:.1} ms (import, rewrites, calibration, code generation)
latency    min {}   median {}   p90 {}
throughput {throughput:.0} samples/s
compute    {gmacs:.2} GMAC/s{}
",
        args.model.display(),
        args.threads,
        args.callers,
        model.engine_description(),
        duration_ms(min),
        duration_ms(median),
        duration_ms(p90),
        match peak {
            Some(p) => format!(
                " ({:.1}% of {:.0} GMAC/s, {} measured on {} thread(s))",
                100.0 * gmacs / p.gmacs,
                p.gmacs,
                p.instruction,
                p.threads
            ),
            None => String::new(),
        }
    ))?;
    if let Some(p) = profile {
        print(&format!("\nprofile (mean per call over the timed runs; timers add a little to each kernel call)\n{p}\n"))?;
    }
    Ok(())
}

/// A latency given in milliseconds, for people: in µs with 3 significant digits below 1 ms
/// (a 5 µs run would read 0.005 ms), else in ms with 3 decimals.
fn duration_ms(ms: f64) -> String {
    let us = ms * 1e3;
    // Below 999.5 µs, so that nothing rounds to "1000 µs".
    if us < 999.5 {
        let decimals = if us < 10.0 {
            2
        } else if us < 100.0 {
            1
        } else {
            0
        };
        format!("{us:.decimals$} µs")
    } else {
        format!("{ms:.3} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::duration_ms;

    #[test]
    fn latencies_below_a_millisecond_print_in_microseconds() {
        assert_eq!(duration_ms(0.005138), "5.14 µs");
        assert_eq!(duration_ms(0.04567), "45.7 µs");
        assert_eq!(duration_ms(0.3096), "310 µs");
        assert_eq!(duration_ms(0.9994), "999 µs");
        assert_eq!(duration_ms(0.9996), "1.000 ms");
        assert_eq!(duration_ms(1.0), "1.000 ms");
        assert_eq!(duration_ms(3.4751), "3.475 ms");
    }
}
