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
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models")
}

/// The int8 digits CNN, compiled once for every test in this file.
fn model() -> Arc<CompiledModel> {
    static MODEL: OnceLock<Arc<CompiledModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let calib = read_npy(&models().join("digits_calib_x.npy")).unwrap();
            let m = CompiledModel::from_onnx(&models().join("digits_cnn.onnx"), Some(&[calib]), &CompileOptions::default()).unwrap();
            assert!(m.is_quantized());
            Arc::new(m)
        })
        .clone()
}

/// Starts the server on an ephemeral port; the thread returns the number of answers.
fn start(workers: usize, max_requests: Option<usize>) -> (SocketAddr, thread::JoinHandle<Result<usize, String>>) {
    let http = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let addr = http.server_addr().to_ip().unwrap();
    let model = model();
    (addr, thread::spawn(move || server::serve(Arc::new(http), model, workers, max_requests)))
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
    let (head, payload) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("bad status line: {head}"));
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked"));
    let payload = if chunked { dechunk(payload) } else { payload.to_string() };
    (status, serde_json::from_str(&payload).unwrap_or_else(|e| panic!("{e}: {payload:?}")))
}

/// Decodes a chunked body (tiny_http switches to chunks for large answers).
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
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn concurrent_predictions_equal_direct_runs() {
    let model = model();
    let x = read_npy(&models().join("digits_test_x.npy")).unwrap();
    let labels = read_npy(&models().join("digits_test_y.npy")).unwrap().to_i64_vec().unwrap();
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
                (single + j * (rows - single) / per, single + (j + 1) * (rows - single) / per)
            }
        })
        .collect();
    assert_eq!(spans.last().unwrap().1, rows);

    let bad: Vec<(&str, &str, String, u16, &str)> = vec![
        ("POST", "/predict", json!({ "pixels": vec![0.5; 63] }).to_string(), 400, "63 values"),
        ("POST", "/predict", json!({ "pixels": [vec![0.5; 64], vec![0.5; 65]] }).to_string(), 400, "row 1 has 65"),
        ("POST", "/predict", format!("{{\"pixels\": [NaN{}]}}", ", 0".repeat(63)), 400, "bad JSON"),
        ("POST", "/predict", format!("{{\"pixels\": [1e39{}]}}", ", 0".repeat(63)), 400, "outside 0..1"),
        ("POST", "/predict", format!("{{\"pixels\": [-0.5{}]}}", ", 0".repeat(63)), 400, "outside 0..1"),
        ("POST", "/predict", format!("{{\"pixels\": [\"a\"{}]}}", ", 0".repeat(63)), 400, "not a number"),
        ("POST", "/predict", "{\"pixels\": [0.1, ".to_string(), 400, "bad JSON"),
        ("POST", "/predict", String::new(), 400, "bad JSON"),
        ("POST", "/predict", "[1, 2]".to_string(), 400, "JSON object"),
        ("POST", "/predict", "{\"image\": []}".to_string(), 400, "missing field"),
        ("POST", "/predict", "{\"pixels\": []}".to_string(), 400, "is empty"),
        ("POST", "/predict", "{\"pixels\": [[]]}".to_string(), 400, "row 0 has 0 values"),
        ("POST", "/predict", json!({ "pixels": vec![vec![0.0; 64]; server::MAX_ROWS + 1] }).to_string(), 400, "at most"),
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
                        let row = |r: usize| Value::from(pixels[r * row_len..(r + 1) * row_len].to_vec());
                        let body = if b - a == 1 { json!({ "pixels": row(a) }) } else { json!({ "pixels": (a..b).map(row).collect::<Vec<_>>() }) };
                        let (status, answer) = request(addr, "POST", "/predict", &body.to_string());
                        (i, status, answer)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut answers: Vec<(usize, u16, Value)> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    answers.sort_by_key(|a| a.0);
    assert_eq!(answers.len(), REQUESTS);

    let mut predicted = vec![None; rows];
    for (i, status, answer) in &answers {
        assert_eq!(*status, 200, "request {i}: {answer}");
        let (a, b) = spans[*i];
        let per_row: Vec<&Value> = if b - a == 1 {
            vec![answer]
        } else {
            answer["predictions"].as_array().unwrap_or_else(|| panic!("request {i}: {answer}")).iter().collect()
        };
        assert_eq!(per_row.len(), b - a, "request {i}");
        for (r, p) in (a..b).zip(per_row) {
            let want = &direct[r * classes..(r + 1) * classes];
            let got = floats(&p["logits"]);
            let same_bits = got.len() == want.len() && got.iter().zip(want).all(|(g, w)| g.to_bits() == w.to_bits());
            assert!(same_bits, "row {r}: served {got:?}, direct {want:?}");
            assert_eq!(p["class"].as_u64(), Some(server::argmax(want) as u64), "row {r}");
            predicted[r] = p["class"].as_u64();
        }
    }
    let correct = predicted.iter().zip(&labels).filter(|(p, &l)| p.map(|p| p as i64) == Some(l)).count();
    let direct_correct = (0..rows).filter(|&r| server::argmax(&direct[r * classes..(r + 1) * classes]) as i64 == labels[r]).count();
    assert!(predicted.iter().all(Option::is_some), "every test row was answered");
    assert_eq!(correct, direct_correct);
    let accuracy = correct as f64 / rows as f64;
    eprintln!("served accuracy {accuracy:.4} ({correct}/{rows}) = direct run");
    assert!(accuracy > 0.95, "int8 digits CNN accuracy {accuracy}");

    for (method, path, body, want_status, want_message) in &bad {
        let (status, answer) = request(addr, method, path, body);
        assert_eq!(status, *want_status, "{method} {path} {:.80}: {answer}", body);
        let message = answer["error"].as_str().unwrap_or_else(|| panic!("no error message: {answer}"));
        assert!(message.contains(want_message), "{method} {path} {:.80}: {message:?} lacks {want_message:?}", body);
    }

    // That was the last request the server was told to answer: it stops by itself.
    assert_eq!(handle.join().unwrap(), Ok(total));
}

#[test]
fn shutdown_request_stops_the_server() {
    let (addr, handle) = start(3, None);
    let (status, answer) = request(addr, "POST", "/predict", &json!({ "pixels": vec![0.25; 64] }).to_string());
    assert_eq!(status, 200, "{answer}");
    let direct = model().run(&[Tensor::from_f32(&[1, 1, 8, 8], vec![0.25; 64])]).unwrap();
    assert_eq!(floats(&answer["logits"]), direct[0].as_f32().unwrap());
    let (status, answer) = request(addr, "POST", "/shutdown", "");
    assert_eq!((status, &answer["status"]), (200, &json!("shutting down")));
    assert_eq!(handle.join().unwrap(), Ok(2));
}
