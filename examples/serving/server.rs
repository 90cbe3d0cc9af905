//! The HTTP side of the serving example: request parsing, validation, and the worker pool.
//!
//! Kept apart from `main.rs` (argument parsing, model loading) so that
//! `compiler/tests/serving.rs` can include this file and run the same server in-process.
//!
//! Why it looks like this:
//! - one [`CompiledModel`] is compiled at start-up and shared through an [`Arc`]: the JIT
//!   code is `Send + Sync`, so N workers run it concurrently with no lock and no copy;
//! - `tiny_http` is synchronous (no async runtime): its own threads accept connections and
//!   parse requests, and our workers take finished requests from its queue with `recv()`;
//! - everything a client sends is checked before it reaches the model, and every failure
//!   becomes a JSON `{"error": ...}` answer with status 400 — a client can never panic a
//!   worker.

use qlift::CompiledModel;
use qlift_ir::Tensor;
use serde_json::{json, Value};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use tiny_http::{Header, Method, Request, Response};

/// Largest request body read (bytes). A full 1024-row batch of 64 pixels is about 1.3 MB of
/// JSON; anything past this is refused rather than buffered.
pub const MAX_BODY: usize = 4 << 20;

/// Most rows in one request: bounds the memory and the time one request can take.
pub const MAX_ROWS: usize = 1024;

/// A failed request: the HTTP status and a message for the client.
#[derive(Debug)]
pub struct HttpError {
    /// 400 for a bad request, 404/405 for a wrong route, 413 for a body too large,
    /// 500 for a failure inside the model (a bug: the input was already checked).
    pub status: u16,
    /// What went wrong, in words.
    pub message: String,
}

fn bad_request(message: impl Into<String>) -> HttpError {
    HttpError { status: 400, message: message.into() }
}

/// What the server knows about the model's input, taken from the compiled graph once.
#[derive(Clone, Debug)]
pub struct InputSpec {
    /// Shape of one row without the batch dimension (`[1, 8, 8]` for the digits CNN).
    pub row_shape: Vec<usize>,
    /// Number of values in one row (64 for the digits models).
    pub row_len: usize,
}

impl InputSpec {
    /// Reads the single f32 input of `model`; its first dimension must be the batch.
    pub fn of(model: &CompiledModel) -> Result<InputSpec, String> {
        let inputs = model.inputs();
        let [(name, ty)] = inputs.as_slice() else {
            return Err(format!("the serving example needs a model with one input, this one has {}", inputs.len()));
        };
        let dims = ty.shape.dims();
        let row_shape: Option<Vec<usize>> = dims.iter().skip(1).map(|d| d.fixed()).collect();
        match (dims.first(), row_shape) {
            (Some(qlift_ir::Dim::Batch), Some(row_shape)) => {
                let row_len = row_shape.iter().product();
                Ok(InputSpec { row_shape, row_len })
            }
            _ => Err(format!("input `{name}` has shape {:?}; expected the batch first, then fixed dimensions", ty.shape)),
        }
    }
}

/// Parses a `/predict` body: `{"pixels": [v, ...]}` (one row) or `{"pixels": [[v, ...], ...]}`
/// (several rows). Returns the rows flattened and whether the client sent several rows (the
/// answer has the same form). Every value must be a finite number in `0..=1`, the scale the
/// digits models were trained on.
pub fn parse_request(body: &[u8], spec: &InputSpec) -> Result<(Vec<f32>, usize, bool), HttpError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| bad_request(format!("bad JSON: {e}")))?;
    let pixels = value
        .as_object()
        .ok_or_else(|| bad_request("expected a JSON object with a `pixels` field"))?
        .get("pixels")
        .ok_or_else(|| bad_request("missing field `pixels`"))?
        .as_array()
        .ok_or_else(|| bad_request("`pixels` must be an array"))?;
    if pixels.is_empty() {
        return Err(bad_request("`pixels` is empty"));
    }
    let batched = pixels[0].is_array();
    let rows: Vec<&Vec<Value>> = if batched {
        pixels
            .iter()
            .enumerate()
            .map(|(i, r)| r.as_array().ok_or_else(|| bad_request(format!("pixels[{i}] is not an array (mixing rows and numbers)"))))
            .collect::<Result<_, _>>()?
    } else {
        vec![pixels]
    };
    if rows.len() > MAX_ROWS {
        return Err(bad_request(format!("{} rows in one request; at most {MAX_ROWS}", rows.len())));
    }
    let mut data = Vec::with_capacity(rows.len() * spec.row_len);
    for (r, row) in rows.iter().enumerate() {
        let at = |i: usize| if batched { format!("pixels[{r}][{i}]") } else { format!("pixels[{i}]") };
        if row.len() != spec.row_len {
            let which = if batched { format!("row {r}") } else { "the row".to_string() };
            return Err(bad_request(format!("{which} has {} values; the model takes {} per row", row.len(), spec.row_len)));
        }
        for (i, v) in row.iter().enumerate() {
            let x = v.as_f64().ok_or_else(|| bad_request(format!("{} is not a number: {v}", at(i))))? as f32;
            if !x.is_finite() || !(0.0..=1.0).contains(&x) {
                return Err(bad_request(format!("{} = {v} is outside 0..1", at(i))));
            }
            data.push(x);
        }
    }
    Ok((data, rows.len(), batched))
}

/// Index of the largest logit (the first one on a tie).
pub fn argmax(logits: &[f32]) -> usize {
    logits.iter().enumerate().fold(0, |best, (i, &x)| if x > logits[best] { i } else { best })
}

/// Runs the model on a parsed request and builds the answer: `{"class": k, "logits": [...]}`
/// for one row, `{"predictions": [{"class": k, "logits": [...]}, ...]}` for several.
pub fn predict(model: &CompiledModel, spec: &InputSpec, body: &[u8]) -> Result<Value, HttpError> {
    let (data, rows, batched) = parse_request(body, spec)?;
    let mut shape = vec![rows];
    shape.extend_from_slice(&spec.row_shape);
    let internal = |e: String| HttpError { status: 500, message: format!("running the model: {e}") };
    let outputs = model.run(&[Tensor::from_f32(&shape, data)]).map_err(|e| internal(e.to_string()))?;
    let logits = outputs.first().ok_or_else(|| internal("the model has no output".into()))?.as_f32().map_err(internal)?;
    if rows == 0 || logits.len() % rows != 0 {
        return Err(internal(format!("{} output values for {rows} rows", logits.len())));
    }
    let answers: Vec<Value> =
        logits.chunks(logits.len() / rows).map(|l| json!({ "class": argmax(l), "logits": l })).collect();
    Ok(if batched { json!({ "predictions": answers }) } else { answers.into_iter().next().unwrap_or(Value::Null) })
}

/// Reads a request body, refusing more than [`MAX_BODY`] bytes.
fn read_body(request: &mut Request) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    let read = request.as_reader().take(MAX_BODY as u64 + 1).read_to_end(&mut body);
    read.map_err(|e| bad_request(format!("reading the body: {e}")))?;
    if body.len() > MAX_BODY {
        return Err(HttpError { status: 413, message: format!("body larger than {MAX_BODY} bytes") });
    }
    Ok(body)
}

/// Answers one request. Returns whether it asked the server to shut down.
pub fn handle(model: &CompiledModel, spec: &InputSpec, mut request: Request) -> bool {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let method = request.method().clone();
    let mut shutdown = false;
    let result = match (&method, path.as_str()) {
        (Method::Get, "/health") => Ok(json!({
            "status": "ok",
            "engine": model.engine_description(),
            "quantized": model.is_quantized(),
            "row_len": spec.row_len,
        })),
        (Method::Post, "/predict") => read_body(&mut request).and_then(|body| predict(model, spec, &body)),
        (Method::Post, "/shutdown") => {
            shutdown = true;
            Ok(json!({ "status": "shutting down" }))
        }
        (_, "/health" | "/predict" | "/shutdown") => {
            Err(HttpError { status: 405, message: format!("{method} is not allowed on {path}") })
        }
        _ => Err(HttpError { status: 404, message: format!("no route {path} (try GET /health, POST /predict)") }),
    };
    let (status, body) = match result {
        Ok(v) => (200, v),
        Err(e) => (e.status, json!({ "error": e.message })),
    };
    let content_type = Header::from_bytes("Content-Type", "application/json").expect("a valid header");
    let response = Response::from_string(body.to_string()).with_status_code(status).with_header(content_type);
    // The client may have hung up already; that is its business, not the server's.
    let _ = request.respond(response);
    shutdown
}

/// Serves `server` with `workers` threads until `max_requests` requests have been answered
/// (when given) or a `POST /shutdown` arrives. Returns the number of requests answered.
pub fn serve(server: Arc<tiny_http::Server>, model: Arc<CompiledModel>, workers: usize, max_requests: Option<usize>) -> Result<usize, String> {
    let spec = InputSpec::of(&model)?;
    let answered = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers = workers.max(1);
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (server, model, spec) = (Arc::clone(&server), Arc::clone(&model), spec.clone());
            let (answered, stop) = (Arc::clone(&answered), Arc::clone(&stop));
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let request = match server.recv() {
                        Ok(request) => request,
                        // Another worker unblocked this one for shutdown: the loop ends.
                        Err(_) if stop.load(Ordering::SeqCst) => break,
                        Err(e) => {
                            eprintln!("serving: accepting a connection: {e}");
                            continue;
                        }
                    };
                    let shutdown = handle(&model, &spec, request);
                    let n = answered.fetch_add(1, Ordering::SeqCst) + 1;
                    if shutdown || max_requests.is_some_and(|m| n >= m) {
                        stop.store(true, Ordering::SeqCst);
                        // One wake-up per worker: each blocked `recv` returns once and the
                        // loop sees `stop`.
                        (0..workers).for_each(|_| server.unblock());
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "a worker panicked".to_string())?;
    }
    Ok(answered.load(Ordering::SeqCst))
}
