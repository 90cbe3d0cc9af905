//! The serving example (examples/serving) end to end, in-process: one int8 digits CNN shared
//! by four workers answers 200 concurrent `/predict` requests from 8 client threads, every
//! answer equals `CompiledModel::run` on the same rows bit for bit (so the accuracy over the
//! test set is the model's own), bad requests get a 400 with a message, and the server stops
//! after exactly the number of requests it was told to answer, or on `POST /shutdown`.
//!
//! The client is plain `std::net::TcpStream` HTTP/1.1 on 127.0.0.1, to keep dependencies
//! minimal.

#[allow(dead_code)]
#[path = "../../examples/serving/server.rs"]
mod server;

use qlift::npy::read_npy;
use qlift::{CompileOptions, CompiledModel};
use qlift_ir::Tensor;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

mod support;
use support::models_dir;

/// The int8 digits CNN, compiled once for every test in this file.
fn model() -> Arc<CompiledModel> {
    static MODEL: OnceLock<Arc<CompiledModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let calib = read_npy(&models_dir().join("digits_calib_x.npy")).unwrap();
            let m = CompiledModel::from_onnx(
                &models_dir().join("digits_cnn.onnx"),
                Some(&[calib]),
                &CompileOptions::default(),
            )
            .unwrap();
            assert!(m.is_quantized());
            Arc::new(m)
        })
        .clone()
}

/// Starts the server on an ephemeral port; the thread returns its counts.
fn start(
    workers: usize,
    max_requests: Option<usize>,
) -> (
    SocketAddr,
    thread::JoinHandle<Result<server::Counts, String>>,
) {
    start_with(workers, max_requests, server::Limits::default())
}

fn start_with(
    workers: usize,
    max_requests: Option<usize>,
    limits: server::Limits,
) -> (
    SocketAddr,
    thread::JoinHandle<Result<server::Counts, String>>,
) {
    let http = server::Server::bind("127.0.0.1:0", limits).unwrap();
    let addr = http.local_addr().unwrap();
    let model = model();
    (
        addr,
        thread::spawn(move || server::serve(http, model, workers, max_requests)),
    )
}

/// One HTTP/1.1 request on a fresh connection; returns the status and the JSON body.
fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, payload) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let payload = if chunked {
        dechunk(payload)
    } else {
        payload.to_string()
    };
    (
        status,
        serde_json::from_str(&payload).unwrap_or_else(|e| panic!("{e}: {payload:?}")),
    )
}

/// Decodes a chunked body (the first server, tiny_http, switched to chunks for large
/// answers; a client should still read them).
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        s = &rest[size + 2..];
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn concurrent_predictions_equal_direct_runs() {
    let model = model();
    let x = read_npy(&models_dir().join("digits_test_x.npy")).unwrap();
    let labels = read_npy(&models_dir().join("digits_test_y.npy"))
        .unwrap()
        .to_i64_vec()
        .unwrap();
    let rows = x.shape()[0];
    let row_len: usize = x.shape()[1..].iter().product();
    let pixels = x.as_f32().unwrap().to_vec();
    // The reference: the model run directly on every test row.
    let direct = model.run(std::slice::from_ref(&x)).unwrap();
    let direct = direct[0].as_f32().unwrap().to_vec();
    let classes = direct.len() / rows;

    // 200 requests covering every test row: the first 100 send one row each in the
    // single-row form, the other 100 split the remaining rows into batches.
    const REQUESTS: usize = 200;
    let single = REQUESTS / 2;
    let spans: Vec<(usize, usize)> = (0..REQUESTS)
        .map(|i| {
            if i < single {
                (i, i + 1)
            } else {
                let j = i - single;
                let per = REQUESTS - single;
                (
                    single + j * (rows - single) / per,
                    single + (j + 1) * (rows - single) / per,
                )
            }
        })
        .collect();
    assert_eq!(spans.last().unwrap().1, rows);

    let bad: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "POST",
            "/predict",
            json!({ "pixels": vec![0.5; 63] }).to_string(),
            400,
            "63 values",
        ),
        (
            "POST",
            "/predict",
            json!({ "pixels": [vec![0.5; 64], vec![0.5; 65]] }).to_string(),
            400,
            "row 1 has 65",
        ),
        (
            "POST",
            "/predict",
            format!("{{\"pixels\": [NaN{}]}}", ", 0".repeat(63)),
            400,
            "bad JSON",
        ),
        (
            "POST",
            "/predict",
            format!("{{\"pixels\": [1e39{}]}}", ", 0".repeat(63)),
            400,
            "outside 0..1",
        ),
        (
            "POST",
            "/predict",
            format!("{{\"pixels\": [-0.5{}]}}", ", 0".repeat(63)),
            400,
            "outside 0..1",
        ),
        (
            "POST",
            "/predict",
            format!("{{\"pixels\": [\"a\"{}]}}", ", 0".repeat(63)),
            400,
            "not a number",
        ),
        (
            "POST",
            "/predict",
            "{\"pixels\": [0.1, ".to_string(),
            400,
            "bad JSON",
        ),
        ("POST", "/predict", String::new(), 400, "bad JSON"),
        ("POST", "/predict", "[1, 2]".to_string(), 400, "JSON object"),
        (
            "POST",
            "/predict",
            "{\"image\": []}".to_string(),
            400,
            "missing field",
        ),
        (
            "POST",
            "/predict",
            "{\"pixels\": []}".to_string(),
            400,
            "is empty",
        ),
        (
            "POST",
            "/predict",
            "{\"pixels\": [[]]}".to_string(),
            400,
            "row 0 has 0 values",
        ),
        (
            "POST",
            "/predict",
            json!({ "pixels": vec![vec![0.0; 64]; server::MAX_ROWS + 1] }).to_string(),
            400,
            "at most",
        ),
        ("GET", "/predict", String::new(), 405, "not allowed"),
        ("GET", "/nowhere", String::new(), 404, "no route"),
    ];
    // Every request the test sends: the predictions, the bad ones and one health check; the
    // server is told to stop after exactly that many.
    let total = REQUESTS + bad.len() + 1;
    let (addr, handle) = start(4, Some(total));

    let (status, health) = request(addr, "GET", "/health", "");
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["quantized"], true);
    assert_eq!(health["row_len"], row_len);

    // 8 clients, requests dealt round-robin; each returns (request index, status, answer).
    const CLIENTS: usize = 8;
    let spans = Arc::new(spans);
    let pixels = Arc::new(pixels);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (spans, pixels) = (Arc::clone(&spans), Arc::clone(&pixels));
            thread::spawn(move || {
                (c..REQUESTS)
                    .step_by(CLIENTS)
                    .map(|i| {
                        let (a, b) = spans[i];
                        let row =
                            |r: usize| Value::from(pixels[r * row_len..(r + 1) * row_len].to_vec());
                        let body = if b - a == 1 {
                            json!({ "pixels": row(a) })
                        } else {
                            json!({ "pixels": (a..b).map(row).collect::<Vec<_>>() })
                        };
                        let (status, answer) = request(addr, "POST", "/predict", &body.to_string());
                        (i, status, answer)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut answers: Vec<(usize, u16, Value)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    answers.sort_by_key(|a| a.0);
    assert_eq!(answers.len(), REQUESTS);

    let mut predicted = vec![None; rows];
    for (i, status, answer) in &answers {
        assert_eq!(*status, 200, "request {i}: {answer}");
        let (a, b) = spans[*i];
        let per_row: Vec<&Value> = if b - a == 1 {
            vec![answer]
        } else {
            answer["predictions"]
                .as_array()
                .unwrap_or_else(|| panic!("request {i}: {answer}"))
                .iter()
                .collect()
        };
        assert_eq!(per_row.len(), b - a, "request {i}");
        for (r, p) in (a..b).zip(per_row) {
            let want = &direct[r * classes..(r + 1) * classes];
            let got = floats(&p["logits"]);
            let same_bits = got.len() == want.len()
                && got
                    .iter()
                    .zip(want)
                    .all(|(g, w)| g.to_bits() == w.to_bits());
            assert!(same_bits, "row {r}: served {got:?}, direct {want:?}");
            assert_eq!(
                p["class"].as_u64(),
                Some(server::argmax(want) as u64),
                "row {r}"
            );
            predicted[r] = p["class"].as_u64();
        }
    }
    let correct = predicted
        .iter()
        .zip(&labels)
        .filter(|(p, &l)| p.map(|p| p as i64) == Some(l))
        .count();
    let direct_correct = (0..rows)
        .filter(|&r| server::argmax(&direct[r * classes..(r + 1) * classes]) as i64 == labels[r])
        .count();
    assert!(
        predicted.iter().all(Option::is_some),
        "every test row was answered"
    );
    assert_eq!(correct, direct_correct);
    let accuracy = correct as f64 / rows as f64;
    eprintln!("served accuracy {accuracy:.4} ({correct}/{rows}) = direct run");
    assert!(accuracy > 0.95, "int8 digits CNN accuracy {accuracy}");

    for (method, path, body, want_status, want_message) in &bad {
        let (status, answer) = request(addr, method, path, body);
        assert_eq!(
            status, *want_status,
            "{method} {path} {:.80}: {answer}",
            body
        );
        let message = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {answer}"));
        assert!(
            message.contains(want_message),
            "{method} {path} {:.80}: {message:?} lacks {want_message:?}",
            body
        );
    }

    // That was the last request the server was told to answer: it stops by itself.
    assert_eq!(handle.join().unwrap().map(|c| c.answered), Ok(total as u64));
}

#[test]
fn shutdown_request_stops_the_server() {
    let (addr, handle) = start(3, None);
    let (status, answer) = request(
        addr,
        "POST",
        "/predict",
        &json!({ "pixels": vec![0.25; 64] }).to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    let direct = model()
        .run(&[Tensor::from_f32(&[1, 1, 8, 8], vec![0.25; 64])])
        .unwrap();
    assert_eq!(floats(&answer["logits"]), direct[0].as_f32().unwrap());
    let (status, answer) = request(addr, "POST", "/shutdown", "");
    assert_eq!((status, &answer["status"]), (200, &json!("shutting down")));
    assert_eq!(handle.join().unwrap().map(|c| c.answered), Ok(2));
}

/// Resident memory of this process now, in MiB (server and clients together).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Sends raw bytes on a fresh connection and reads the answer's status (None when the
/// server closed or reset the connection without one).
fn raw_status(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    // The server may answer (and close) before taking all of it: a failed write is fine.
    let _ = s.write_all(bytes);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Tallies of the load test.
#[derive(Default, Debug)]
struct Tally {
    good_ok: u64,
    good_refused: u64,
    wrong: Vec<String>,
    slow: u64,
    slow_longest: Duration,
    oversized: u64,
    malformed: u64,
    unexpected: Vec<String>,
    hung_up: u64,
    flood: u64,
}

#[test]
fn hostile_clients_cannot_knock_the_server_over() {
    // For a fixed time, 8 good clients send predictions (checked bit for bit against direct
    // runs) while others attack: 16 slowloris clients trickling headers, a flood of idle
    // connections past the connection limit, oversized bodies (announced and sent),
    // malformed requests of every kind, and clients hanging up mid-request. The server must
    // give 0 wrong answers, never crash, keep answering, and stay within bounded memory.
    let seconds: u64 = std::env::var("QLIFT_SERVING_LOAD_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let model = model();
    let x = read_npy(&models_dir().join("digits_test_x.npy")).unwrap();
    let rows = x.shape()[0];
    let row_len: usize = x.shape()[1..].iter().product();
    let pixels = Arc::new(x.as_f32().unwrap().to_vec());
    let direct = Arc::new(
        model.run(std::slice::from_ref(&x)).unwrap()[0]
            .as_f32()
            .unwrap()
            .to_vec(),
    );
    let classes = direct.len() / rows;

    let limits = server::Limits {
        read_timeout: Duration::from_secs(2),
        max_connections: 64,
        queue: 16,
        ..server::Limits::default()
    };
    let read_timeout = limits.read_timeout;
    let (addr, handle) = start_with(4, None, limits);
    let baseline = rss_mib();
    let peak = Arc::new(std::sync::Mutex::new(baseline));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let now = rss_mib();
                let mut p = peak.lock().unwrap();
                *p = p.max(now);
                drop(p);
                thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    let running = move || std::time::Instant::now() < deadline;
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let mut clients = Vec::new();

    // Good clients: one row or a batch of up to 8, checked against the direct run.
    for c in 0..8usize {
        let (pixels, direct, tally) =
            (Arc::clone(&pixels), Arc::clone(&direct), Arc::clone(&tally));
        clients.push(thread::spawn(move || {
            let mut i = c * 37;
            while running() {
                i = (i * 7 + 13) % rows;
                let n = 1 + i % 8;
                let span: Vec<usize> = (0..n).map(|k| (i + k) % rows).collect();
                let row = |r: usize| Value::from(pixels[r * row_len..(r + 1) * row_len].to_vec());
                let body = if n == 1 { json!({ "pixels": row(span[0]) }) } else { json!({ "pixels": span.iter().map(|&r| row(r)).collect::<Vec<_>>() }) }.to_string();
                let head = format!("POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let answer = (|| -> Option<(u16, Value)> {
                    let mut s = TcpStream::connect(addr).ok()?;
                    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
                    s.write_all(head.as_bytes()).ok()?;
                    s.write_all(body.as_bytes()).ok()?;
                    let mut raw = Vec::new();
                    s.read_to_end(&mut raw).ok()?;
                    let text = String::from_utf8(raw).ok()?;
                    let (head, payload) = text.split_once("\r\n\r\n")?;
                    Some((head.get(9..12)?.parse().ok()?, serde_json::from_str(payload).ok()?))
                })();
                let mut t = tally.lock().unwrap();
                match answer {
                    Some((200, v)) => {
                        let per_row: Vec<Value> = if n == 1 { vec![v] } else { v["predictions"].as_array().cloned().unwrap_or_default() };
                        let right = per_row.len() == n
                            && span.iter().zip(&per_row).all(|(&r, p)| {
                                let want = &direct[r * classes..(r + 1) * classes];
                                let got = floats(&p["logits"]);
                                got.len() == want.len() && got.iter().zip(want).all(|(g, w)| g.to_bits() == w.to_bits())
                            });
                        if right {
                            t.good_ok += 1;
                        } else {
                            t.wrong.push(format!("rows {span:?}: {per_row:?}"));
                        }
                    }
                    // Shed load (connection or queue limit, or a reset under it): not a
                    // wrong answer, and counted.
                    Some((503, _)) | None => t.good_refused += 1,
                    Some((status, v)) => t.wrong.push(format!("rows {span:?}: status {status} {v}")),
                }
            }
        }));
    }
    // Slowloris: a header byte every 200 ms, never finishing; the server must close the
    // connection within its read timeout.
    for _ in 0..16 {
        let tally = Arc::clone(&tally);
        clients.push(thread::spawn(move || {
            while running() {
                let Ok(mut s) = TcpStream::connect(addr) else { continue };
                let start = std::time::Instant::now();
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let mut closed = false;
                let trickle = b"POST /predict HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
                for &b in trickle.iter().cycle() {
                    if s.write_all(&[b]).is_err() {
                        closed = true;
                        break;
                    }
                    let mut buf = [0u8; 512];
                    match s.read(&mut buf) {
                        Ok(_) => {
                            // An answer (408, or 503 when the connections were all taken) or
                            // the close: the server let go of it.
                            closed = true;
                            break;
                        }
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                    if start.elapsed() > read_timeout + Duration::from_secs(5) {
                        break;
                    }
                }
                let mut t = tally.lock().unwrap();
                t.slow += 1;
                t.slow_longest = t.slow_longest.max(start.elapsed());
                if !closed {
                    t.unexpected.push(format!("a slow client was still connected after {:?}", start.elapsed()));
                }
            }
        }));
    }
    // A flood of idle connections, 100 at a time (past the limit of 64), held 1 s.
    {
        let tally = Arc::clone(&tally);
        clients.push(thread::spawn(move || {
            while running() {
                let held: Vec<TcpStream> = (0..100)
                    .filter_map(|_| TcpStream::connect(addr).ok())
                    .collect();
                tally.lock().unwrap().flood += held.len() as u64;
                thread::sleep(Duration::from_secs(1));
                drop(held);
            }
        }));
    }
    // Oversized bodies: announced (and never sent), and announced then streamed.
    for c in 0..2 {
        let tally = Arc::clone(&tally);
        clients.push(thread::spawn(move || {
            let mut k = 0;
            while running() {
                k += 1;
                let status = if (c + k) % 2 == 0 {
                    raw_status(
                        addr,
                        b"POST /predict HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
                        Duration::from_secs(10),
                    )
                } else {
                    let mut req = format!(
                        "POST /predict HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                        5 << 20
                    )
                    .into_bytes();
                    req.extend(std::iter::repeat_n(b'[', 5 << 20));
                    raw_status(addr, &req, Duration::from_secs(10))
                };
                let mut t = tally.lock().unwrap();
                match status {
                    Some(413) => t.oversized += 1,
                    Some(503) | None => t.good_refused += 0, // shed under the connection limit
                    Some(s) => t.unexpected.push(format!("oversized body: status {s}")),
                }
            }
        }));
    }
    // Malformed requests, each with the status it must get.
    let long_header = format!(
        "GET /health HTTP/1.1\r\nX-Long: {}\r\n\r\n",
        "a".repeat(20 << 10)
    );
    let malformed: Arc<Vec<(Vec<u8>, u16)>> = Arc::new(vec![
        (b"GARBAGE\r\n\r\n".to_vec(), 400),
        (b"GET /health HTTP/9.9\r\n\r\n".to_vec(), 505),
        (
            b"POST /predict HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST /predict HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            501,
        ),
        (b"POST /predict HTTP/1.1\r\n\r\n".to_vec(), 400),
        (long_header.into_bytes(), 431),
        (b"\x00\xff\xfe binary \x01\x02\r\n\r\n".to_vec(), 400),
        (
            b"POST /predict HTTP/1.1\r\nNoColonHere\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST /predict HTTP/1.1\r\nContent-Length: 7\r\n\r\n{\"pix\":".to_vec(),
            400,
        ),
        (b"DELETE /predict HTTP/1.1\r\n\r\n".to_vec(), 405),
    ]);
    for c in 0..2usize {
        let (tally, malformed) = (Arc::clone(&tally), Arc::clone(&malformed));
        clients.push(thread::spawn(move || {
            let mut k = c;
            while running() {
                let (bytes, want) = &malformed[k % malformed.len()];
                k += 1;
                let status = raw_status(addr, bytes, Duration::from_secs(10));
                let mut t = tally.lock().unwrap();
                match status {
                    Some(s) if s == *want => t.malformed += 1,
                    Some(503) | None => {}
                    Some(s) => t.unexpected.push(format!(
                        "{:?}: status {s}, expected {want}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
                    )),
                }
            }
        }));
    }
    // Clients that hang up mid-request.
    {
        let tally = Arc::clone(&tally);
        clients.push(thread::spawn(move || {
            while running() {
                if let Ok(mut s) = TcpStream::connect(addr) {
                    let _ = s.write_all(
                        b"POST /predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"pixels\": [0.1, ",
                    );
                    tally.lock().unwrap().hung_up += 1;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    for c in clients {
        c.join().expect("a client thread panicked");
    }
    // Still serving, and right.
    let (status, answer) = request(
        addr,
        "POST",
        "/predict",
        &json!({ "pixels": pixels[..row_len].to_vec() }).to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(floats(&answer["logits"]), direct[..classes].to_vec());
    let (status, _) = request(addr, "POST", "/shutdown", "");
    assert_eq!(status, 200);
    let counts = handle
        .join()
        .expect("the server thread panicked")
        .expect("the server stopped cleanly");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    monitor.join().unwrap();
    let peak = *peak.lock().unwrap();
    let t = tally.lock().unwrap();
    eprintln!(
        "load test, {seconds} s: good answers {} right, {} wrong, {} shed (503 or reset); slow clients {} (longest held {:.1?}); \
         flood connections {}; oversized {} (413); malformed {} (exact 4xx/5xx); hang-ups {}; \
         server counts {counts:?}; memory {baseline:.0} MiB before, {peak:.0} MiB peak",
        t.good_ok,
        t.wrong.len(),
        t.good_refused,
        t.slow,
        t.slow_longest,
        t.flood,
        t.oversized,
        t.malformed,
        t.hung_up,
    );
    assert!(
        t.wrong.is_empty(),
        "wrong answers: {:?}",
        &t.wrong[..t.wrong.len().min(5)]
    );
    assert!(
        t.unexpected.is_empty(),
        "unexpected: {:?}",
        &t.unexpected[..t.unexpected.len().min(5)]
    );
    assert!(
        t.good_ok >= 20 * seconds,
        "only {} good answers in {seconds} s",
        t.good_ok
    );
    assert!(
        t.oversized > 0
            && t.malformed > 0
            && t.slow > 0
            && counts.timed_out > 0
            && counts.too_large > 0
    );
    assert!(
        t.slow_longest < read_timeout + Duration::from_secs(3),
        "a slow client was held {:?}",
        t.slow_longest
    );
    // Bounded: 64 connections × (16 KiB head + 4 MiB body) is 257 MiB at the very worst.
    assert!(
        peak - baseline < 300.0,
        "memory grew from {baseline:.0} to {peak:.0} MiB"
    );
}
