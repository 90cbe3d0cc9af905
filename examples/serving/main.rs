//! JIT serving inside an application: compile the digits CNN to int8 once, then answer
//! HTTP requests with it from several worker threads.
//!
//! ```sh
//! cargo run --release -p qlift --example serving -- --port 8080 --threads 4
//! curl -s localhost:8080/health
//! curl -s -X POST localhost:8080/predict -d '{"pixels": [0, 0.3, ... 64 values]}'
//! curl -s -X POST localhost:8080/shutdown
//! ```
//!
//! See examples/serving/README.md. The HTTP handling lives in `server.rs`, which
//! compiler/tests/serving.rs also runs in-process.

mod server;

use clap::Parser;
use qlift::npy::read_npy;
use qlift::{CompileOptions, CompiledModel};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The bundled models, found from the source tree (this is an example, run with cargo).
fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(".."))
        .join("examples/models")
}

/// Serve an ONNX model compiled by qlift's JIT over HTTP on 127.0.0.1.
#[derive(Parser)]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one; the address is printed on start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Worker threads running the model.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// Stop after answering this many requests (otherwise: until POST /shutdown).
    #[arg(long)]
    requests: Option<usize>,
    /// The ONNX model (default: the bundled digits CNN).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Calibration inputs for int8 quantization, samples on axis 0 (default: the bundled
    /// digits calibration set).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Serve the fp32 model instead of quantizing it.
    #[arg(long, conflicts_with = "calib")]
    fp32: bool,
    /// Connections open at once (being read, queued or answered); more get 503.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    max_connections: u32,
    /// Complete requests waiting for a worker; more get 503.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    queue: u32,
    /// Seconds a request has to arrive whole (slower clients get 408).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    read_timeout: u32,
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    let model_path = args
        .model
        .unwrap_or_else(|| models_dir().join("digits_cnn.onnx"));
    // Compile once, at start-up: import, calibration, rewrites and Cranelift code generation
    // all happen here, so no request ever pays for them.
    let calibration = match (args.fp32, args.calib) {
        (true, _) => None,
        (false, path) => {
            Some(vec![read_npy(&path.unwrap_or_else(|| {
                models_dir().join("digits_calib_x.npy")
            }))?])
        }
    };
    let model = CompiledModel::from_onnx(
        &model_path,
        calibration.as_deref(),
        &CompileOptions::default(),
    )?;
    eprintln!(
        "compiled {} ({}, {}) in {:.0} ms",
        model_path.display(),
        if model.is_quantized() { "int8" } else { "fp32" },
        model.engine_description(),
        model.compile_time().as_secs_f64() * 1e3
    );
    // Loopback only: this example has no authentication.
    let limits = server::Limits {
        max_connections: args.max_connections as usize,
        queue: args.queue as usize,
        read_timeout: Duration::from_secs(args.read_timeout.into()),
        ..server::Limits::default()
    };
    let http = server::Server::bind(("127.0.0.1", args.port), limits)?;
    println!("listening on http://{}", http.local_addr()?);
    std::io::stdout().flush()?;
    let counts = server::serve(http, Arc::new(model), args.threads.into(), args.requests)?;
    eprintln!("answered {} requests ({} ok); refused {} connections and {} requests (busy), {} bodies too large, {} too slow, {} malformed; stopping",
        counts.answered, counts.ok, counts.refused_connections, counts.refused_busy, counts.too_large, counts.timed_out, counts.malformed);
    Ok(())
}
