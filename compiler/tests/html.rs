//! The HTML report (`qlift report --html`, `qlift dump --html`) as a person opens it: the
//! page in headless Chromium (Debian's `chromium`; `.ci/run` installs it) with no console
//! error, every node of the compiled graph drawn with a size, the load time measured, a
//! screenshot saved under `target/html-report/`; and without a browser, that the file
//! names no network address and fetches nothing.
//!
//! Without Chromium the browser checks say so and pass; `QLIFT_REQUIRE_CHROMIUM=1` (set by
//! CI) makes a missing browser a failure. The corpus checks (MiniLM, ~600 nodes: under 5 MB
//! and loaded in under 2 s) need `target/corpus` (`bash ../shared/corpus/fetch.sh
//! target/corpus`) and a release build, as `tests/tests/corpus.rs` does:
//! `cargo test --release -p qlift --test html -- --nocapture`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod support;
use support::{model, qlift};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where reports and screenshots are kept for a look after the tests.
fn out_dir() -> PathBuf {
    let dir = root().join("target/html-report");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs qlift and returns the page it wrote to `html`.
fn report(args: &[&str], html: &Path) -> String {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--html", html.to_str().unwrap()]);
    let start = Instant::now();
    let o = qlift(&all);
    assert!(
        o.status.success(),
        "qlift {all:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "qlift {} --html: {:.1} s",
        args[0],
        start.elapsed().as_secs_f64()
    );
    std::fs::read_to_string(html).unwrap()
}

/// Headless Chromium, or `None` (with a note) when it is not installed.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("QLIFT_CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            [
                "/usr/bin/chromium",
                "/usr/bin/chromium-browser",
                "/usr/bin/google-chrome",
            ]
            .map(PathBuf::from),
        )
        .find(|p| p.exists());
    if found.is_none() {
        if std::env::var_os("QLIFT_REQUIRE_CHROMIUM").is_some() {
            panic!("QLIFT_REQUIRE_CHROMIUM is set but Chromium is not installed (apt-get install -y chromium)");
        }
        eprintln!("chromium is not installed: the browser checks are skipped (apt-get install -y chromium)");
    }
    found
}

/// The flags headless Chromium needs on these machines: root without a sandbox, no GPU,
/// and no background connections (the network is closed), with a fresh profile.
fn browser(chromium: &Path, profile: &Path) -> Command {
    let mut c = Command::new(chromium);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ]);
    c.arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// Injected before the page's own content: records errors, and at the load event (after a
/// forced layout) writes what it found into the DOM for `--dump-dom`.
const PROBE: &str = r#"<script>
window.__errors = [];
addEventListener('error', e => __errors.push('error: ' + e.message));
for (const level of ['error', 'warn']) { const f = console[level]; console[level] = (...a) => { __errors.push(level + ': ' + a.join(' ')); f(...a); }; }
addEventListener('load', () => {
  document.body.getBoundingClientRect();
  const drawn = [...document.querySelectorAll('svg.graph a.node')].filter(a => { const b = a.getBBox(); return b.width > 0 && b.height > 0; }).map(a => a.dataset.node);
  const cards = document.querySelectorAll('.card').length;
  const out = document.createElement('pre');
  out.id = 'qlift-probe';
  out.textContent = JSON.stringify({ errors: __errors, load_ms: performance.now(), drawn, cards });
  document.body.appendChild(out);
});
</script>"#;

/// What the probe found.
struct Probe {
    errors: Vec<String>,
    load_ms: f64,
    drawn: Vec<String>,
    cards: usize,
}

/// Opens `html` in Chromium with the probe, and saves a screenshot of it at `#fragment`.
fn open_in_browser(chromium: &Path, html: &str, name: &str, fragment: &str) -> Probe {
    let dir = out_dir();
    let probed = dir.join(format!("{name}.probe.html"));
    let at = html.find("<head>").expect("the page has a head") + "<head>".len();
    std::fs::write(&probed, format!("{}{PROBE}{}", &html[..at], &html[at..])).unwrap();
    let profile =
        std::env::temp_dir().join(format!("qlift-chromium-{}-{name}", std::process::id()));
    let o = browser(chromium, &profile)
        .arg("--dump-dom")
        .arg(format!("file://{}", probed.display()))
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let start = dom
        .find("<pre id=\"qlift-probe\">")
        .unwrap_or_else(|| panic!("the probe did not report (chromium: {stderr})"))
        + "<pre id=\"qlift-probe\">".len();
    let end = start + dom[start..].find("</pre>").unwrap();
    let text = dom[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("probe output {text}: {e}"));
    let strings = |k: &str| {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    // Console messages Chromium itself logs at error level (a failed resource, a CSP block).
    let mut errors = strings("errors");
    errors.extend(
        stderr
            .lines()
            .filter(|l| l.contains("CONSOLE") && l.contains("ERROR"))
            .map(str::to_string),
    );
    let shot = dir.join(format!("{name}.png"));
    let page = dir.join(format!("{name}.html"));
    std::fs::write(&page, html).unwrap();
    let o = browser(chromium, &profile)
        .args([
            "--window-size=1500,1000",
            &format!("--screenshot={}", shot.display()),
        ])
        .arg(format!("file://{}{fragment}", page.display()))
        .output()
        .expect("chromium runs");
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&profile);
    Probe {
        errors,
        load_ms: v["load_ms"].as_f64().unwrap(),
        drawn: strings("drawn"),
        cards: v["cards"].as_u64().unwrap() as usize,
    }
}

/// The names of the nodes the report must draw: every input and op of the compiled graph.
fn node_names(g: &qlift_ir::Graph) -> Vec<String> {
    let mut names: Vec<String> = g
        .node_ids()
        .filter(|&id| !matches!(g.node(id).op, qlift_ir::NodeOp::Const(_)))
        .map(|id| g.node(id).name.clone())
        .collect();
    names.sort();
    names
}

/// Checks what the browser found against the graph, and returns the load time.
fn check(p: &Probe, expected: &[String], what: &str) -> f64 {
    assert!(
        p.errors.is_empty(),
        "{what}: console errors: {:?}",
        p.errors
    );
    let mut drawn = p.drawn.clone();
    drawn.sort();
    assert_eq!(
        drawn.len(),
        expected.len(),
        "{what}: {} nodes drawn, the graph has {}",
        drawn.len(),
        expected.len()
    );
    assert_eq!(
        drawn, expected,
        "{what}: the drawn nodes are not the graph's"
    );
    assert_eq!(p.cards, expected.len(), "{what}: one card per node");
    eprintln!(
        "{what}: {} nodes, loaded in {:.0} ms",
        expected.len(),
        p.load_ms
    );
    p.load_ms
}

/// The file fetches nothing and names no address: no URL scheme, and every link a fragment.
fn assert_offline(html: &str) {
    for scheme in ["http:", "https:", "//", "ftp:", "url("] {
        let hits: Vec<&str> = html
            .match_indices(scheme)
            .map(|(i, _)| &html[i.saturating_sub(40)..(i + 40).min(html.len())])
            .take(3)
            .collect();
        // `//` also starts no comment in the inline script and style: none is written.
        assert!(hits.is_empty(), "the report contains `{scheme}`: {hits:?}");
    }
    for attr in ["src=", "<link", "@import"] {
        assert!(!html.contains(attr), "the report contains `{attr}`");
    }
    for (i, _) in html.match_indices("href=\"") {
        assert!(
            html[i + 6..].starts_with('#'),
            "a link that is not a fragment: {}",
            &html[i..(i + 60).min(html.len())]
        );
    }
}

/// The digits CNN, quantized the way `qlift report` does.
fn digits_cnn_compiled() -> qlift_ir::Graph {
    let g = qlift::load_onnx(Path::new(&model("digits_cnn.onnx")), &Default::default()).unwrap();
    let calib = qlift::npy::read_npy(Path::new(&model("digits_calib_x.npy"))).unwrap();
    qlift::quantize(
        &g,
        &[calib],
        &Default::default(),
        &Default::default(),
        &|_, _| {},
    )
    .unwrap()
    .lowered
}

#[test]
fn the_report_of_a_bundled_model_is_offline_and_complete() {
    let path = out_dir().join("digits_cnn.html");
    let html = report(
        &[
            "report",
            &model("digits_cnn.onnx"),
            "--calib",
            &model("digits_calib_x.npy"),
            "--input",
            &model("digits_test_x.npy"),
            "--profile",
        ],
        &path,
    );
    assert_offline(&html);
    let g = digits_cnn_compiled();
    for name in node_names(&g) {
        assert!(
            html.contains(&format!("data-node=\"{name}\"")),
            "node {name} is not on the page"
        );
    }
    // What each part of the report needs: SQNR colors, histograms with the chosen range,
    // weights per channel, the depth plot, the scatter plot, the pipeline with diffs,
    // kernel forms and times.
    for part in [
        "id=\"depth\"",
        "id=\"outputs\"",
        "id=\"layers\"",
        "id=\"pipeline\"",
        "<h4>Activation ",
        "<h4>Weights ",
        "class=\"lim\"",
        "Diff against the step before",
        "Kernel form: <b>",
        "µs per call",
        "GMAC/s",
        "node int fused",
    ] {
        assert!(html.contains(part), "the report lacks {part}");
    }
    assert!(html.len() < 2_000_000, "{} bytes", html.len());
    let Some(chromium) = chromium() else { return };
    let p = open_in_browser(&chromium, &html, "digits_cnn", "#n3");
    check(&p, &node_names(&g), "digits_cnn report");
}

#[test]
fn dump_html_of_a_ten_thousand_node_graph_opens() {
    // Residual blocks of MatMul, bias Add, Relu and a skip Add: 10,000 op nodes.
    let mut qir = String::from("graph big(%x: f32[N,16]) -> (%v2500) {\n");
    let w: Vec<String> = (0..256)
        .map(|i| format!("{:?}", ((i * 37 % 101) as f32 - 50.0) / 400.0))
        .collect();
    let b: Vec<String> = (0..16)
        .map(|i| format!("{:?}", (i as f32 - 8.0) / 100.0))
        .collect();
    qir.push_str(&format!(
        "  %w = const f32[16,16] [{}]\n  %b = const f32[16] [{}]\n",
        w.join(", "),
        b.join(", ")
    ));
    qir.push_str("  %v0 = Relu(%x) : f32[N,16]\n");
    for i in 1..=2500 {
        let p = i - 1;
        qir.push_str(&format!(
            "  %m{i} = MatMul(%v{p}, %w) : f32[N,16]\n  %a{i} = Add(%m{i}, %b) : f32[N,16]\n  %r{i} = Tanh(%a{i}) : f32[N,16]\n  %v{i} = Add(%r{i}, %v{p}) : f32[N,16]\n"
        ));
    }
    qir.push_str("}\n");
    let dir = out_dir();
    let source = dir.join("big.qir");
    std::fs::write(&source, qir).unwrap();
    let path = dir.join("big.html");
    let html = report(&["dump", source.to_str().unwrap()], &path);
    assert_offline(&html);
    let g = qlift::load_qir(&source, &Default::default()).unwrap();
    let compiled = qlift_passes::run_pipeline(&g, &Default::default())
        .unwrap()
        .0;
    let names = node_names(&compiled);
    assert!(names.len() > 10_000, "{} nodes", names.len());
    eprintln!("10,000-node dump: {:.1} MB", html.len() as f64 / 1e6);
    let Some(chromium) = chromium() else { return };
    let p = open_in_browser(&chromium, &html, "big", "");
    let ms = check(&p, &names, "10,000-node dump");
    assert!(
        ms < 10_000.0,
        "the 10,000-node page took {ms:.0} ms to load"
    );
}

#[test]
fn the_report_of_the_corpus_transformer_is_small_and_quick() {
    let corpus = std::env::var_os("QLIFT_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/corpus"));
    if !corpus.join("minilm.onnx").exists() {
        if std::env::var_os("QLIFT_REQUIRE_CORPUS").is_some() {
            panic!(
                "the corpus is not at {} (bash ../shared/corpus/fetch.sh target/corpus)",
                corpus.display()
            );
        }
        eprintln!("corpus not fetched ({}): skipped; fetch it with `bash ../shared/corpus/fetch.sh target/corpus`", corpus.display());
        return;
    }
    if cfg!(debug_assertions) {
        eprintln!("the MiniLM report takes minutes in a debug build: skipped; run `cargo test --release -p qlift --test html`");
        return;
    }
    let file = |f: &str| corpus.join(f).to_string_lossy().into_owned();
    // Eight test sentences: the report compares fp32 and int8 layer by layer on the
    // interpreter, and the page's size does not grow with the samples.
    let first_eight = |f: &str| {
        let t = qlift::npy::read_npy(&corpus.join(f))
            .unwrap()
            .slice_outer(0, 8)
            .unwrap();
        let path = out_dir().join(f);
        qlift::npy::write_npy(&path, &t).unwrap();
        path.to_string_lossy().into_owned()
    };
    let path = out_dir().join("minilm.html");
    let html = report(
        &[
            "report",
            &file("minilm.onnx"),
            "--calib",
            &format!("input_ids={}", file("minilm_calib_ids.npy")),
            "--calib",
            &format!("attention_mask={}", file("minilm_calib_mask.npy")),
            "--input",
            &format!("input_ids={}", first_eight("minilm_test_ids.npy")),
            "--input",
            &format!("attention_mask={}", first_eight("minilm_test_mask.npy")),
            "--profile",
        ],
        &path,
    );
    assert_offline(&html);
    eprintln!("MiniLM report: {:.2} MB", html.len() as f64 / 1e6);
    assert!(
        html.len() < 5_000_000,
        "the MiniLM report is {} bytes",
        html.len()
    );
    let Some(chromium) = chromium() else { return };
    let graph = qlift::load_onnx(&corpus.join("minilm.onnx"), &Default::default()).unwrap();
    let calib = ["minilm_calib_ids.npy", "minilm_calib_mask.npy"]
        .map(|f| qlift::npy::read_npy(&corpus.join(f)).unwrap());
    let compiled = qlift::quantize(
        &graph,
        &calib,
        &Default::default(),
        &Default::default(),
        &|_, _| {},
    )
    .unwrap()
    .lowered;
    let p = open_in_browser(&chromium, &html, "minilm", "");
    let ms = check(&p, &node_names(&compiled), "MiniLM report");
    assert!(ms < 2000.0, "the MiniLM report took {ms:.0} ms to load");
}
