//! The HTTP side of the serving example: a small HTTP/1.1 server on `std::net`, request
//! validation, and the worker pool.
//!
//! Kept apart from `main.rs` (argument parsing, model loading) so that
//! `compiler/tests/serving.rs` can include this file and run the same server in-process.
//!
//! Why it looks like this:
//! - one [`CompiledModel`] is compiled at start-up and shared through an [`Arc`]: the JIT
//!   code is `Send + Sync`, so N workers run it concurrently with no lock and no copy;
//! - nothing a client does can take more than a bounded share of the server ([`Limits`]):
//!   a connection is refused with 503 when `max_connections` are already open, a request
//!   must arrive whole within `read_timeout` (slow clients get 408), its head is capped (431),
//!   a body over `max_body` is refused from its `Content-Length` before a byte of it is read
//!   (413), and complete requests wait in a queue of `queue` places (503 when it is full).
//!   Memory is bounded by `max_connections × (max_head + max_body)`;
//! - everything a client sends is checked before it reaches the model, and every failure
//!   becomes a JSON `{"error": ...}` answer — a client can never panic a worker.
//!
//! The first version used `tiny_http`, which allocates the announced `Content-Length` when a
//! client hangs up early: one request with `Content-Length: 99999999999` aborted the process.

use qlift::CompiledModel;
use qlift_ir::Tensor;
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Largest request body read (bytes). A full 1024-row batch of 64 pixels is about 1.3 MB of
/// JSON; anything past this is refused rather than buffered.
pub const MAX_BODY: usize = 4 << 20;

/// Most rows in one request: bounds the memory and the time one request can take.
pub const MAX_ROWS: usize = 1024;

/// What one client can take of the server.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest body, checked against `Content-Length` before reading (413 above it).
    pub max_body: usize,
    /// Largest request line and headers together (431 above it).
    pub max_head: usize,
    /// Time for a whole request (head and body) to arrive, from the connection's accept
    /// (408 after it).
    pub read_timeout: Duration,
    /// Time to write an answer to a client that does not read it.
    pub write_timeout: Duration,
    /// Connections open at once (being read, queued or answered); more are answered 503 and
    /// closed at once.
    pub max_connections: usize,
    /// Complete requests waiting for a worker; more are answered 503.
    pub queue: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body: MAX_BODY,
            max_head: 16 << 10,
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: 256,
            queue: 64,
        }
    }
}

/// Counts of what the server did, for logs and the load test.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Requests answered by a worker (any status, including 4xx of a bad body).
    pub answered: AtomicU64,
    /// Answers with status 200.
    pub ok: AtomicU64,
    /// Connections refused because `max_connections` were open (503).
    pub refused_connections: AtomicU64,
    /// Requests refused because the queue was full (503).
    pub refused_busy: AtomicU64,
    /// Bodies refused from their `Content-Length` (413).
    pub too_large: AtomicU64,
    /// Requests that did not arrive within `read_timeout` (408).
    pub timed_out: AtomicU64,
    /// Malformed requests: request line, headers, lengths (400, 431, 501, 505).
    pub malformed: AtomicU64,
    /// Clients that hung up before their request was complete.
    pub hung_up: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// See [`Stats::connections`].
    pub connections: u64,
    /// See [`Stats::answered`].
    pub answered: u64,
    /// See [`Stats::ok`].
    pub ok: u64,
    /// See [`Stats::refused_connections`].
    pub refused_connections: u64,
    /// See [`Stats::refused_busy`].
    pub refused_busy: u64,
    /// See [`Stats::too_large`].
    pub too_large: u64,
    /// See [`Stats::timed_out`].
    pub timed_out: u64,
    /// See [`Stats::malformed`].
    pub malformed: u64,
    /// See [`Stats::hung_up`].
    pub hung_up: u64,
}

impl Stats {
    /// The counts now.
    pub fn counts(&self) -> Counts {
        let n = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Counts {
            connections: n(&self.connections),
            answered: n(&self.answered),
            ok: n(&self.ok),
            refused_connections: n(&self.refused_connections),
            refused_busy: n(&self.refused_busy),
            too_large: n(&self.too_large),
            timed_out: n(&self.timed_out),
            malformed: n(&self.malformed),
            hung_up: n(&self.hung_up),
        }
    }
}

/// A failed request: the HTTP status and a message for the client.
#[derive(Debug)]
pub struct HttpError {
    /// 400 for a bad request, 404/405 for a wrong route, 408 for a request too slow to
    /// arrive, 413 for a body too large, 431 for a head too large, 503 when the server is
    /// full, 500 for a failure inside the model (a bug: the input was already checked).
    pub status: u16,
    /// What went wrong, in words.
    pub message: String,
}

fn bad_request(message: impl Into<String>) -> HttpError {
    HttpError {
        status: 400,
        message: message.into(),
    }
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
            return Err(format!(
                "the serving example needs a model with one input, this one has {}",
                inputs.len()
            ));
        };
        let dims = ty.shape.dims();
        let row_shape: Option<Vec<usize>> = dims.iter().skip(1).map(|d| d.fixed()).collect();
        match (dims.first(), row_shape) {
            (Some(qlift_ir::Dim::Batch), Some(row_shape)) => {
                let row_len = row_shape.iter().product();
                Ok(InputSpec { row_shape, row_len })
            }
            _ => Err(format!(
                "input `{name}` has shape {:?}; expected the batch first, then fixed dimensions",
                ty.shape
            )),
        }
    }
}

/// Parses a `/predict` body: `{"pixels": [v, ...]}` (one row) or `{"pixels": [[v, ...], ...]}`
/// (several rows). Returns the rows flattened and whether the client sent several rows (the
/// answer has the same form). Every value must be a finite number in `0..=1`, the scale the
/// digits models were trained on.
pub fn parse_request(body: &[u8], spec: &InputSpec) -> Result<(Vec<f32>, usize, bool), HttpError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad_request(format!("bad JSON: {e}")))?;
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
            .map(|(i, r)| {
                r.as_array().ok_or_else(|| {
                    bad_request(format!(
                        "pixels[{i}] is not an array (mixing rows and numbers)"
                    ))
                })
            })
            .collect::<Result<_, _>>()?
    } else {
        vec![pixels]
    };
    if rows.len() > MAX_ROWS {
        return Err(bad_request(format!(
            "{} rows in one request; at most {MAX_ROWS}",
            rows.len()
        )));
    }
    let mut data = Vec::with_capacity(rows.len() * spec.row_len);
    for (r, row) in rows.iter().enumerate() {
        let at = |i: usize| {
            if batched {
                format!("pixels[{r}][{i}]")
            } else {
                format!("pixels[{i}]")
            }
        };
        if row.len() != spec.row_len {
            let which = if batched {
                format!("row {r}")
            } else {
                "the row".to_string()
            };
            return Err(bad_request(format!(
                "{which} has {} values; the model takes {} per row",
                row.len(),
                spec.row_len
            )));
        }
        for (i, v) in row.iter().enumerate() {
            let x = v
                .as_f64()
                .ok_or_else(|| bad_request(format!("{} is not a number: {v}", at(i))))?
                as f32;
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
    logits
        .iter()
        .enumerate()
        .fold(0, |best, (i, &x)| if x > logits[best] { i } else { best })
}

/// Runs the model on a parsed request and builds the answer: `{"class": k, "logits": [...]}`
/// for one row, `{"predictions": [{"class": k, "logits": [...]}, ...]}` for several.
pub fn predict(model: &CompiledModel, spec: &InputSpec, body: &[u8]) -> Result<Value, HttpError> {
    let (data, rows, batched) = parse_request(body, spec)?;
    let mut shape = vec![rows];
    shape.extend_from_slice(&spec.row_shape);
    let internal = |e: String| HttpError {
        status: 500,
        message: format!("running the model: {e}"),
    };
    let outputs = model
        .run(&[Tensor::from_f32(&shape, data)])
        .map_err(|e| internal(e.to_string()))?;
    let logits = outputs
        .first()
        .ok_or_else(|| internal("the model has no output".into()))?
        .as_f32()
        .map_err(internal)?;
    if rows == 0 || logits.len() % rows != 0 {
        return Err(internal(format!(
            "{} output values for {rows} rows",
            logits.len()
        )));
    }
    let answers: Vec<Value> = logits
        .chunks(logits.len() / rows)
        .map(|l| json!({ "class": argmax(l), "logits": l }))
        .collect();
    Ok(if batched {
        json!({ "predictions": answers })
    } else {
        answers.into_iter().next().unwrap_or(Value::Null)
    })
}

/// A complete request: method, path (without the query) and body.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, `?query` removed.
    pub path: String,
    /// The body, exactly `Content-Length` bytes.
    pub body: Vec<u8>,
}

/// Routes a request: what `/health`, `/predict` and `/shutdown` answer. Returns the answer
/// and whether the server should shut down.
pub fn route(
    model: &CompiledModel,
    spec: &InputSpec,
    request: &Request,
) -> (Result<Value, HttpError>, bool) {
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/health") => (
            Ok(json!({
                "status": "ok",
                "engine": model.engine_description(),
                "quantized": model.is_quantized(),
                "row_len": spec.row_len,
            })),
            false,
        ),
        ("POST", "/predict") => (predict(model, spec, &request.body), false),
        ("POST", "/shutdown") => (Ok(json!({ "status": "shutting down" })), true),
        (method, path @ ("/health" | "/predict" | "/shutdown")) => (
            Err(HttpError {
                status: 405,
                message: format!("{method} is not allowed on {path}"),
            }),
            false,
        ),
        (_, path) => (
            Err(HttpError {
                status: 404,
                message: format!("no route {path} (try GET /health, POST /predict)"),
            }),
            false,
        ),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Writes an answer and closes the connection. The client may have hung up already: that
/// is its business, not the server's.
fn respond(mut stream: TcpStream, status: u16, body: &Value, limits: &Limits) {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let _ = stream.set_write_timeout(Some(limits.write_timeout));
    if stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body.as_bytes()))
        .and_then(|_| stream.flush())
        .is_err()
    {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    // Read (and drop) a little of what the client may still be sending, briefly, so that the
    // close does not reset the connection before the client has read the answer (a 413
    // leaves the announced body unread).
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 8192];
    let mut drained = 0;
    while drained < 1 << 20 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

fn error_body(message: &str) -> Value {
    json!({ "error": message })
}

/// Why reading a request failed: an answer to send, or nothing (the client left).
enum ReadError {
    Answer(HttpError),
    HungUp,
}

fn http_error(status: u16, message: impl Into<String>) -> ReadError {
    ReadError::Answer(HttpError {
        status,
        message: message.into(),
    })
}

/// Reads one request from `stream` under `limits`, all of it before `deadline`.
fn read_request(
    stream: &mut TcpStream,
    limits: &Limits,
    deadline: Instant,
) -> Result<Request, ReadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let timed_out = || {
        http_error(
            408,
            format!(
                "the request did not arrive within {} s",
                limits.read_timeout.as_secs_f64()
            ),
        )
    };
    let mut fill =
        |stream: &mut TcpStream, buf: &mut Vec<u8>, want: usize| -> Result<usize, ReadError> {
            let now = Instant::now();
            if now >= deadline {
                return Err(timed_out());
            }
            let _ = stream.set_read_timeout(Some(deadline - now));
            match stream.read(&mut chunk[..want.min(4096)]) {
                Ok(0) => Err(ReadError::HungUp),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    Ok(n)
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    Err(timed_out())
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
                Err(_) => Err(ReadError::HungUp),
            }
        };
    // The head: up to the blank line, at most `max_head` bytes.
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buf.len() > limits.max_head {
            return Err(http_error(
                431,
                format!(
                    "the request line and headers exceed {} bytes",
                    limits.max_head
                ),
            ));
        }
        let want = limits.max_head + 4 - buf.len();
        fill(stream, &mut buf, want)?;
    };
    if head_end > limits.max_head {
        return Err(http_error(
            431,
            format!(
                "the request line and headers exceed {} bytes",
                limits.max_head
            ),
        ));
    }
    let mut body = buf.split_off(head_end + 4);
    buf.truncate(head_end);
    let head =
        std::str::from_utf8(&buf).map_err(|_| http_error(400, "the request head is not text"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts.as_slice() else {
        return Err(http_error(
            400,
            format!(
                "malformed request line {:?}",
                request_line.chars().take(80).collect::<String>()
            ),
        ));
    };
    if !method.chars().all(|c| c.is_ascii_uppercase())
        || method.is_empty()
        || !target.starts_with('/')
    {
        return Err(http_error(
            400,
            format!(
                "malformed request line {:?}",
                request_line.chars().take(80).collect::<String>()
            ),
        ));
    }
    if !matches!(*version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(http_error(
            505,
            format!(
                "{:?} is not HTTP/1.0 or HTTP/1.1",
                version.chars().take(20).collect::<String>()
            ),
        ));
    }
    let (mut length, mut expect_continue) = (None::<u64>, false);
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| {
            http_error(
                400,
                format!(
                    "malformed header {:?}",
                    line.chars().take(80).collect::<String>()
                ),
            )
        })?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let n: u64 = value.parse().map_err(|_| {
                    http_error(
                        400,
                        format!(
                            "Content-Length {:?} is not a number",
                            value.chars().take(40).collect::<String>()
                        ),
                    )
                })?;
                if length.is_some_and(|l| l != n) {
                    return Err(http_error(400, "two different Content-Length headers"));
                }
                length = Some(n);
            }
            "transfer-encoding" => {
                return Err(http_error(
                    501,
                    "Transfer-Encoding is not supported: send the body with a Content-Length",
                ))
            }
            "expect" if value.eq_ignore_ascii_case("100-continue") => expect_continue = true,
            _ => {}
        }
    }
    // No Content-Length (and no Transfer-Encoding): no body, as HTTP/1.1 says.
    let length = length.unwrap_or(0);
    // Refused from the announced length, before a byte of the body is read or allocated.
    if length > limits.max_body as u64 {
        return Err(http_error(
            413,
            format!(
                "the body would be {length} bytes; at most {} are accepted",
                limits.max_body
            ),
        ));
    }
    let length = length as usize;
    if expect_continue && length > 0 {
        let _ = stream.set_write_timeout(Some(limits.write_timeout));
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|_| ReadError::HungUp)?;
    }
    if body.len() > length {
        return Err(http_error(
            400,
            "more data follows the body (one request per connection)",
        ));
    }
    body.reserve_exact(length - body.len());
    while body.len() < length {
        let want = length - body.len();
        fill(stream, &mut body, want)?;
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    Ok(Request {
        method: method.to_string(),
        path,
        body,
    })
}

/// A listening socket with its limits.
pub struct Server {
    listener: TcpListener,
    limits: Limits,
    stats: Arc<Stats>,
}

impl Server {
    /// Listens on `addr` (use port 0 for a free one).
    pub fn bind(addr: impl std::net::ToSocketAddrs, limits: Limits) -> io::Result<Server> {
        Ok(Server {
            listener: TcpListener::bind(addr)?,
            limits,
            stats: Arc::new(Stats::default()),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A request read whole, waiting for a worker; holds the connection's place.
struct Job {
    stream: TcpStream,
    request: Request,
    _slot: Slot,
}

/// One of the `max_connections` places, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves with `workers` threads until `max_requests` requests have been answered by the
/// workers (when given) or a `POST /shutdown` arrives. Returns the counts.
pub fn serve(
    server: Server,
    model: Arc<CompiledModel>,
    workers: usize,
    max_requests: Option<usize>,
) -> Result<Counts, String> {
    let spec = InputSpec::of(&model)?;
    let Server {
        listener,
        limits,
        stats,
    } = server;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let limits = Arc::new(limits);
    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicUsize::new(0));
    let (queue, jobs): (SyncSender<Job>, Receiver<Job>) = sync_channel(limits.queue.max(1));
    let jobs = Arc::new(Mutex::new(jobs));
    let answered = Arc::new(AtomicUsize::new(0));
    // Wakes the accept loop (blocked in `accept`) once `stop` is set.
    let wake = move || {
        let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    };
    let handles: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let (jobs, model, spec, limits, stats) = (
                Arc::clone(&jobs),
                Arc::clone(&model),
                spec.clone(),
                Arc::clone(&limits),
                Arc::clone(&stats),
            );
            let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
            thread::spawn(move || loop {
                // The queue's sender is dropped when the accept loop ends: then `recv` fails.
                let job = match jobs.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok(job) = job else { return };
                let (result, shutdown) = route(&model, &spec, &job.request);
                let (status, body) = match result {
                    Ok(v) => (200, v),
                    Err(e) => (e.status, error_body(&e.message)),
                };
                respond(job.stream, status, &body, &limits);
                stats.answered.fetch_add(1, Ordering::SeqCst);
                if status == 200 {
                    stats.ok.fetch_add(1, Ordering::SeqCst);
                }
                let n = answered.fetch_add(1, Ordering::SeqCst) + 1;
                if (shutdown || max_requests.is_some_and(|m| n >= m))
                    && !stop.swap(true, Ordering::SeqCst)
                {
                    wake();
                }
            })
        })
        .collect();
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(mut stream) = stream else { continue };
        stats.connections.fetch_add(1, Ordering::SeqCst);
        if open.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            open.fetch_sub(1, Ordering::SeqCst);
            stats.refused_connections.fetch_add(1, Ordering::SeqCst);
            // Answered here, briefly: the answer fits in the socket's buffer.
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            let body = error_body(&format!(
                "the server has {} connections open; try again later",
                limits.max_connections
            ))
            .to_string();
            let _ = write!(stream, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{body}", body.len());
            continue;
        }
        let slot = Slot(Arc::clone(&open));
        let (queue, limits, reader_stats) =
            (queue.clone(), Arc::clone(&limits), Arc::clone(&stats));
        // One reader per open connection (at most `max_connections`), each bounded in time
        // by `read_timeout`.
        let spawned = thread::Builder::new().stack_size(256 << 10).spawn(move || {
            let stats = reader_stats;
            let deadline = Instant::now() + limits.read_timeout;
            match read_request(&mut stream, &limits, deadline) {
                Ok(request) => match queue.try_send(Job {
                    stream,
                    request,
                    _slot: slot,
                }) {
                    Ok(()) => {}
                    Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                        stats.refused_busy.fetch_add(1, Ordering::SeqCst);
                        let message = format!(
                            "{} requests are waiting already; try again later",
                            limits.queue
                        );
                        respond(job.stream, 503, &error_body(&message), &limits);
                    }
                },
                Err(ReadError::Answer(e)) => {
                    let counter = match e.status {
                        408 => &stats.timed_out,
                        413 => &stats.too_large,
                        _ => &stats.malformed,
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    respond(stream, e.status, &error_body(&e.message), &limits);
                    drop(slot);
                }
                Err(ReadError::HungUp) => {
                    stats.hung_up.fetch_add(1, Ordering::SeqCst);
                    drop(slot);
                }
            }
        });
        if spawned.is_err() {
            // No thread for it (the system is out of them): the connection is dropped, and
            // its place given back with the closure.
            stats.refused_connections.fetch_add(1, Ordering::SeqCst);
        }
    }
    // No more jobs: workers finish the queue and stop.
    drop(queue);
    for h in handles {
        h.join().map_err(|_| "a worker panicked".to_string())?;
    }
    Ok(stats.counts())
}
