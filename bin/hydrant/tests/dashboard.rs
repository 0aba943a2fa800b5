//! The dashboards against a real micro cloud (`hydrant up --demo`):
//!
//! - the web dashboard in headless Chromium, driven over the DevTools protocol: live numbers for
//!   the demo app, its SLO and the pipeline appear, change over time, survive a reload, and
//!   hostile text from the stream stays text; a screenshot lands in the target tmpdir;
//! - the Grafana dashboard: every metric and label it queries is one the running platform
//!   emits, collected from the roles' Prometheus endpoints and the firehose, under the OTLP
//!   nozzle's naming (dots become underscores, counters `_total`, timers `_bucket/_sum/_count`);
//! - the direct-scrape Grafana dashboard (`hydrant-direct.json`): every metric and label it
//!   queries is on the roles' `/metrics` alone, and a real Prometheus scraping them answers
//!   every panel query with data;
//! - every role's `/metrics` passes `promtool check metrics` (Prometheus's own linter) with no
//!   finding.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use hydrant_testkit::MicroCloud;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const HYDRANT: &str = env!("CARGO_BIN_EXE_hydrant");

/// Two SLOs on the demo app, so the SLO alerter emits budget gauges for it.
const SLOS: &str = r#"{"slos":[
    {"name":"availability","sli":{"type":"availability"},"objective":99.0},
    {"name":"fast","sli":{"type":"latency","threshold_ms":200},"objective":95.0}]}"#;

/// Starts the micro cloud with the demo app and puts SLOs on it once the demo is pushed.
fn demo_cloud() -> MicroCloud {
    let cloud = MicroCloud::start(HYDRANT, &["--demo"]);
    let spec = cloud.home().join("slos.json");
    std::fs::write(&spec, SLOS).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = cloud.cli(&["slo", "demo", "--set", spec.to_str().unwrap()]);
        if out.status.success() {
            return cloud;
        }
        assert!(
            Instant::now() < deadline,
            "the demo app never appeared: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

// ------------------------------------------------------------------------ Chromium

/// `chromium` on PATH, or a failure that says how to get it.
fn chromium() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "the web dashboard test needs Chromium: install the Debian package `chromium` \
             (apt-get install chromium; scripts/test does this in CI)"
        )
    })
}

/// A headless Chromium with the DevTools protocol on a kernel-chosen port; closed on drop.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    port: u16,
}

impl Browser {
    fn start() -> Self {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts");
        // Chromium writes the port it picked into the profile.
        let active = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&active)
                && let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok())
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            child,
            _profile: profile,
            port,
        }
    }

    /// A DevTools session on the browser's first page.
    async fn page(&self) -> Cdp {
        let list: Value = reqwest::get(format!("http://127.0.0.1:{}/json/list", self.port))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        Cdp { ws, next_id: 0 }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The few DevTools protocol calls the test needs.
struct Cdp {
    ws: Socket,
    next_id: u64,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let msg = self.ws.next().await.expect("devtools socket open").unwrap();
                let Message::Text(text) = msg else { continue };
                let v: Value = serde_json::from_str(text.as_str()).unwrap();
                if v["id"] == id {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer within 30 s"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Asks the browser to quit; it may drop the socket before it answers.
    async fn close_browser(&mut self) {
        self.next_id += 1;
        let request = json!({ "id": self.next_id, "method": "Browser.close" });
        let _ = self.ws.send(Message::text(request.to_string())).await;
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{r}");
        r["result"]["value"].clone()
    }

    async fn snapshot(&mut self) -> Snapshot {
        Snapshot(self.eval(SNAPSHOT_JS).await)
    }
}

/// What the page shows, as text, keyed by each table's `data-field` cells.
const SNAPSHOT_JS: &str = r#"(() => {
  const rows = (sel) => [...document.querySelectorAll(sel + ' tbody tr')].map((tr) => {
    const o = { _name: tr.dataset.name || '' };
    tr.querySelectorAll('td[data-field]').forEach((td) => { o[td.dataset.field] = td.textContent; });
    return o;
  });
  const text = (id) => document.getElementById(id)?.textContent ?? null;
  return {
    location: location.href,
    status: text('status'),
    streamRate: text('stream-rate'),
    notice: document.getElementById('notice')?.hidden ? '' : text('notice'),
    apps: rows('#apps'),
    instances: rows('#instances'),
    slos: rows('#slos'),
    pipeline: rows('#pipeline'),
    drops: rows('#drops'),
    markupInDrops: document.querySelectorAll('#drops tbody *:not(tr):not(td)').length,
  };
})()"#;

#[derive(Debug, Clone)]
struct Snapshot(Value);

impl Snapshot {
    fn row(&self, table: &str, field: &str, value: &str) -> Option<&Value> {
        self.0[table]
            .as_array()?
            .iter()
            .find(|r| r[field].as_str() == Some(value))
    }

    fn demo(&self) -> Option<&Value> {
        self.row("apps", "name", "demo")
    }

    fn hop(&self, hop: &str) -> Option<&Value> {
        self.row("pipeline", "hop", hop)
    }

    /// The demo app's live numbers: (req/s, p50, p95, p99, 5xx share), all parsed.
    fn demo_numbers(&self) -> Option<[f64; 5]> {
        let d = self.demo()?;
        let n = |f: &str| number(d[f].as_str()?);
        Some([n("rps")?, n("p50")?, n("p95")?, n("p99")?, n("err5xx")?])
    }

    /// Everything a user of the page relies on is there and numeric; `Err` says what is not.
    fn live(&self) -> Result<(), String> {
        let v = &self.0;
        if !v["status"].as_str().unwrap_or("").starts_with("live") {
            return Err(format!("status {}", v["status"]));
        }
        let d = self.demo().ok_or("no demo row")?;
        let [rps, p50, p95, p99, share] = self.demo_numbers().ok_or(format!("demo {d}"))?;
        if !(rps > 0.0 && p50 > 0.0 && p50 <= p95 && p95 <= p99 && (0.0..=100.0).contains(&share)) {
            return Err(format!("demo numbers {d}"));
        }
        for (field, unit) in [
            ("p99", " ms"),
            ("err5xx", " %"),
            ("cpu", " %"),
            ("memory", "iB"),
        ] {
            if !d[field].as_str().unwrap_or("").ends_with(unit) {
                return Err(format!("demo {field}: {d}"));
            }
        }
        if d["instances"] != "2/2" {
            return Err(format!("demo instances {d}"));
        }
        let running = v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["app"] == "demo" && i["state"] == "RUNNING")
            .count();
        if running != 2 {
            return Err(format!("instances {}", v["instances"]));
        }
        let slo = self
            .row("slos", "slo", "availability")
            .ok_or("no availability SLO row")?;
        if number(slo["budget"].as_str().unwrap_or("")).is_none()
            || slo["objective"] != "99 % / 30 d"
        {
            return Err(format!("slo {slo}"));
        }
        for hop in ["agent", "doppler", "traffic controller"] {
            let h = self.hop(hop).ok_or(format!("no {hop} hop"))?;
            if !number(h["in"].as_str().unwrap_or("")).is_some_and(|x| x > 0.0) {
                return Err(format!("hop {h}"));
            }
        }
        let page = self.hop("firehose → this page").ok_or("no page hop")?;
        if !number(page["in"].as_str().unwrap_or("")).is_some_and(|x| x > 0.0) {
            return Err(format!("page hop {page}"));
        }
        Ok(())
    }
}

/// The number a cell starts with (`"8.40"`, `"149 ms"`, `"-441.2 %"`, `"1,234"`).
fn number(text: &str) -> Option<f64> {
    let t: String = text
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | ','))
        .filter(|c| *c != ',')
        .collect();
    t.parse().ok()
}

/// Polls the page until `check` passes, or fails naming the last snapshot.
async fn wait_until(
    page: &mut Cdp,
    what: &str,
    within: Duration,
    mut check: impl FnMut(&Snapshot) -> Result<(), String>,
) -> Snapshot {
    let deadline = Instant::now() + within;
    loop {
        let s = page.snapshot().await;
        match check(&s) {
            Ok(()) => return s,
            Err(why) if Instant::now() >= deadline => {
                panic!("{what} within {within:?}: {why}\nlast snapshot: {:#}", s.0)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// A PNG's width and height from its IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

/// Standard base64 (what DevTools returns screenshots in).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c) << (18 - 6 * i);
        }
        let [_, a, b, c] = acc.to_be_bytes();
        out.extend_from_slice(&[a, b, c][..chunk.len() - 1]);
    }
    out
}

/// Sends one counter with markup in its source, name and reason tag through the real agent.
async fn emit_hostile_counter(agent: &str, tls: Option<hydrant_tls::TlsFiles>) {
    use hydrant_envelope::v2;
    let registry = hydrant_emitter::Registry::new("dashboard-test", "0");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let emitter = hydrant_emitter::Emitter::start(
        hydrant_emitter::EmitterConfig {
            agent: agent.to_owned(),
            tls,
            ..hydrant_emitter::EmitterConfig::default()
        },
        &registry,
        shutdown.clone(),
    );
    // Twice, so the page has a rate as well as a total for it.
    for total in [7, 9] {
        emitter.emit(&v2::Envelope {
            timestamp: hydrant_envelope::now_nanos(),
            source_id: "<i>src</i>".to_owned(),
            tags: [(
                "reason".to_owned(),
                "<img src=x onerror=alert(1)>".to_owned(),
            )]
            .into(),
            message: Some(v2::envelope::Message::Counter(v2::Counter {
                name: "evil<b>bold</b>.dropped".to_owned(),
                delta: 2,
                total,
            })),
            ..v2::Envelope::default()
        });
        emitter.flush();
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    shutdown.cancel();
    emitter.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_dashboard_shows_the_demo_live_in_chromium() {
    let cloud = demo_cloud();
    let config = cloud.cli_config();
    let api = config["api"].as_str().unwrap();

    // The URL comes from the CLI command users run.
    let out = cloud.cli(&["dashboard"]);
    assert!(out.status.success(), "{out:?}");
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let token = config["token"].as_str().unwrap();
    assert_eq!(url, format!("{api}/dashboard#token={token}"));

    let browser = Browser::start();
    let mut page = browser.page().await;
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
    )
    .await;
    page.call("Page.navigate", json!({ "url": url })).await;

    let first = wait_until(
        &mut page,
        "live numbers for the demo, its SLO and the pipeline",
        Duration::from_secs(60),
        Snapshot::live,
    )
    .await;
    assert!(
        !first.0["location"].as_str().unwrap().contains("token"),
        "the token stays in the address bar: {}",
        first.0["location"]
    );

    // Live means moving: the app's numbers, the page's own intake and a role's reported
    // rate each change while we watch.
    let before_app = first.demo_numbers().unwrap();
    let before_page = first.0["streamRate"].clone();
    let before_doppler = first.hop("doppler").unwrap()["in"].clone();
    let (mut app_moved, mut page_moved, mut doppler_moved) = (false, false, false);
    wait_until(
        &mut page,
        "the numbers change",
        Duration::from_secs(45),
        |s| {
            app_moved |= s.demo_numbers().is_some_and(|n| n != before_app);
            page_moved |= s.0["streamRate"] != before_page;
            doppler_moved |= s.hop("doppler").is_some_and(|h| h["in"] != before_doppler);
            s.live()?;
            if app_moved && page_moved && doppler_moved {
                Ok(())
            } else {
                Err(format!(
                    "moved: app {app_moved}, page {page_moved}, doppler {doppler_moved}"
                ))
            }
        },
    )
    .await;

    let shot = page
        .call("Page.captureScreenshot", json!({ "format": "png" }))
        .await;
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert_eq!(png_size(&png), (1280, 900));
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());

    // Markup in a stream's strings is shown as text, never parsed.
    // `hydrant up` runs mutual TLS: send with the client certificate it gave the CLI.
    let tls = serde_json::from_value(config["agent_tls"].clone()).ok();
    emit_hostile_counter(config["agent"].as_str().unwrap(), tls).await;
    let shown = wait_until(
        &mut page,
        "the hostile counter shown as text",
        Duration::from_secs(30),
        |s| {
            let row = s
                .row("drops", "counter", "evil<b>bold</b>.dropped")
                .ok_or("no row for the hostile counter")?;
            if row["source"] != "<i>src</i>" || row["reason"] != "<img src=x onerror=alert(1)>" {
                return Err(format!("row {row}"));
            }
            Ok(())
        },
    )
    .await;
    assert_eq!(shown.0["markupInDrops"], 0, "markup became elements");

    // A second load (the token now comes from the tab's session storage) fills again.
    page.call("Page.reload", json!({})).await;
    wait_until(
        &mut page,
        "live numbers after a reload",
        Duration::from_secs(60),
        Snapshot::live,
    )
    .await;

    page.close_browser().await;
    drop(browser);
}

// ------------------------------------------------------------------------ Grafana

/// Metric name → label names, as a Prometheus fed by the OTLP nozzle would see them.
type Emitted = BTreeMap<String, BTreeSet<String>>;

fn add(emitted: &mut Emitted, name: String, labels: impl IntoIterator<Item = String>) {
    emitted.entry(name).or_default().extend(labels);
}

/// What `promtool check metrics` (Debian package `prometheus`, which `scripts/test` installs)
/// finds wrong in one scrape, a line per finding; empty when the text is clean.
fn promtool_findings(role: &str, text: &str) -> Vec<String> {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool cannot run ({e}): install the Debian package `prometheus` \
                 (scripts/test does) to lint /metrics"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let mut findings: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{role}: {l}"))
        .collect();
    if !out.status.success() && findings.is_empty() {
        findings.push(format!("{role}: promtool exited with {}", out.status));
    }
    findings
}

/// Every role's admin base URL (`role`, `http://host:port`), plus any `extra` the test started.
fn scrape_targets(endpoints: &Value, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    endpoints["admin"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(role, base)| (role.clone(), base.as_str().unwrap().to_owned()))
        .chain(
            extra
                .iter()
                .map(|(r, b)| ((*r).to_owned(), (*b).to_owned())),
        )
        .collect()
}

/// Names and labels from every target's Prometheus `/metrics`; returns what `promtool check
/// metrics` found wrong in them.
async fn from_prometheus_endpoints(
    targets: &[(String, String)],
    emitted: &mut Emitted,
) -> Vec<String> {
    let mut findings = Vec::new();
    for (role, base) in targets {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap_or_else(|e| panic!("{role} /metrics: {e}"))
            .text()
            .await
            .unwrap();
        findings.extend(promtool_findings(role, &text));
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let name_end = line.find(['{', ' ']).unwrap();
            let labels = line[name_end..]
                .strip_prefix('{')
                .and_then(|rest| rest.split_once('}'))
                .map(|(labels, _)| {
                    labels
                        .split(',')
                        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim().to_owned()))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            add(emitted, line[..name_end].to_owned(), labels);
        }
    }
    findings
}

/// Prometheus's spelling of an OTLP metric name.
fn prom(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Names and labels seen on the firehose, under the OTLP nozzle's naming, until `done` says
/// enough was seen (or the deadline passes).
async fn from_firehose(
    endpoints: &Value,
    emitted: &mut Emitted,
    within: Duration,
    done: impl Fn(&Emitted) -> bool,
) {
    let url = format!(
        "{}?format=json&access_token={}",
        endpoints["firehose_stream"]
            .as_str()
            .unwrap()
            .replace("{subscription_id}", "grafana-check"),
        endpoints["token"].as_str().unwrap()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + within;
    while !done(emitted) {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, ws.next()).await else {
            break;
        };
        let Message::Text(text) = msg.unwrap() else {
            continue;
        };
        let frame: Value = serde_json::from_str(text.as_str()).unwrap();
        for e in frame["batch"].as_array().unwrap() {
            let mut labels: Vec<String> = e["tags"]
                .as_object()
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default();
            labels.extend(["source_id".to_owned(), "instance_id".to_owned()]);
            if let Some(name) = e["counter"]["name"].as_str() {
                add(emitted, format!("{}_total", prom(name)), labels);
            } else if let Some(metrics) = e["gauge"]["metrics"].as_object() {
                for name in metrics.keys() {
                    add(emitted, prom(name), labels.clone());
                }
            } else if let Some(name) = e["timer"]["name"].as_str() {
                let base = prom(name);
                add(emitted, format!("{base}_count"), labels.clone());
                add(emitted, format!("{base}_sum"), labels.clone());
                labels.push("le".to_owned());
                add(emitted, format!("{base}_bucket"), labels);
            }
        }
    }
}

/// One metric selector in a query: a name (or a `__name__` pattern) and its label matchers.
#[derive(Debug, Clone, PartialEq)]
struct Selector {
    name: Option<String>,
    name_pattern: Option<String>,
    labels: Vec<String>,
}

/// What one query names: its selectors and the labels of its `by`/`without`/`on`/`ignoring`/
/// `group_left`/`group_right` clauses.
#[derive(Debug, Default, PartialEq)]
struct QueryNames {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

/// PromQL functions and aggregations the dashboard may use; anything else that looks like a
/// name is a metric.
const FUNCTIONS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "topk",
    "bottomk",
    "rate",
    "irate",
    "increase",
    "delta",
    "deriv",
    "histogram_quantile",
    "clamp_min",
    "clamp_max",
    "abs",
    "label_values",
    "label_replace",
    "sort_desc",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "vector",
];
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const OPERATORS: &[&str] = &["and", "or", "unless", "bool", "offset"];

/// Reads the metric selectors and grouping labels out of a PromQL (or `label_values(...)`)
/// query. Small on purpose: it understands what a dashboard query uses and fails on anything
/// else, so a query it cannot read is never waved through.
fn parse_query(q: &str) -> QueryNames {
    let chars: Vec<char> = q.chars().collect();
    let mut out = QueryNames::default();
    let mut i = 0;
    let ident = |i: &mut usize| {
        let start = *i;
        while *i < chars.len()
            && (chars[*i].is_ascii_alphanumeric() || chars[*i] == '_' || chars[*i] == ':')
        {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    // `{a="x", b=~"y"}` → [(a, op, value)]
    let matchers = |i: &mut usize| {
        assert_eq!(chars[*i], '{');
        *i += 1;
        let mut found = Vec::new();
        loop {
            skip_ws(i);
            if chars[*i] == '}' {
                *i += 1;
                return found;
            }
            let label = ident(i);
            assert!(!label.is_empty(), "bad matcher in {q:?}");
            skip_ws(i);
            let op_start = *i;
            while matches!(chars[*i], '=' | '!' | '~') {
                *i += 1;
            }
            let op: String = chars[op_start..*i].iter().collect();
            skip_ws(i);
            assert_eq!(chars[*i], '"', "unquoted matcher value in {q:?}");
            *i += 1;
            let v_start = *i;
            while chars[*i] != '"' {
                *i += if chars[*i] == '\\' { 2 } else { 1 };
            }
            let value: String = chars[v_start..*i].iter().collect();
            *i += 1;
            found.push((label, op, value));
            skip_ws(i);
            if chars[*i] == ',' {
                *i += 1;
            }
        }
    };
    let label_list = |i: &mut usize, out: &mut Vec<String>| {
        skip_ws(i);
        if chars.get(*i) != Some(&'(') {
            return;
        }
        *i += 1;
        loop {
            skip_ws(i);
            if chars[*i] == ')' {
                *i += 1;
                return;
            }
            let l = ident(i);
            assert!(!l.is_empty(), "bad label list in {q:?}");
            out.push(l);
            skip_ws(i);
            if chars[*i] == ',' {
                *i += 1;
            }
        }
    };
    let selector = |name: Option<String>, m: Vec<(String, String, String)>| {
        let mut s = Selector {
            name,
            name_pattern: None,
            labels: Vec::new(),
        };
        for (label, op, value) in m {
            if label == "__name__" {
                assert_eq!(op, "=~", "__name__ must be matched with =~ in {q:?}");
                s.name_pattern = Some(value);
            } else {
                s.labels.push(label);
            }
        }
        assert!(
            s.name.is_some() || s.name_pattern.is_some(),
            "selector without a name in {q:?}"
        );
        s
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() || "(),+-*/^<>=!".contains(c) {
            i += 1;
        } else if c == '"' {
            i += 1;
            while chars[i] != '"' {
                i += 1;
            }
            i += 1;
        } else if c == '[' {
            while chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '$' {
            i += 1;
            ident(&mut i);
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c == '{' {
            let m = matchers(&mut i);
            out.selectors.push(selector(None, m));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let word = ident(&mut i);
            let mut j = i;
            skip_ws(&mut j);
            if KEYWORDS.contains(&word.as_str()) {
                i = j;
                label_list(&mut i, &mut out.grouping);
            } else if OPERATORS.contains(&word.as_str()) {
            } else if chars.get(j) == Some(&'(') || FUNCTIONS.contains(&word.as_str()) {
                assert!(
                    FUNCTIONS.contains(&word.as_str()),
                    "unknown function {word} in {q:?}"
                );
                if word == "label_values" {
                    // label_values(metric, label): the label must exist on the metric.
                    i = j + 1;
                    skip_ws(&mut i);
                    let metric = ident(&mut i);
                    skip_ws(&mut i);
                    let m = if chars[i] == '{' {
                        matchers(&mut i)
                    } else {
                        Vec::new()
                    };
                    let mut s = selector(Some(metric), m);
                    skip_ws(&mut i);
                    assert_eq!(
                        chars[i], ',',
                        "label_values needs a metric and a label: {q:?}"
                    );
                    i += 1;
                    skip_ws(&mut i);
                    s.labels.push(ident(&mut i));
                    out.selectors.push(s);
                }
            } else {
                let m = if chars.get(j) == Some(&'{') {
                    i = j;
                    matchers(&mut i)
                } else {
                    Vec::new()
                };
                out.selectors.push(selector(Some(word), m));
            }
        } else {
            panic!("unexpected {c:?} in {q:?}");
        }
    }
    out
}

/// `.*` / `.+` patterns only (all the dashboard uses); anything else must be spelled out.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    assert!(
        pattern
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.+*".contains(c)),
        "pattern {pattern:?} uses more than .* and .+"
    );
    fn go(p: &str, n: &str) -> bool {
        if let Some(rest) = p.strip_prefix(".+") {
            return (1..=n.len()).any(|k| go(rest, &n[k..]));
        }
        if let Some(rest) = p.strip_prefix(".*") {
            return (0..=n.len()).any(|k| go(rest, &n[k..]));
        }
        match (p.chars().next(), n.chars().next()) {
            (None, None) => true,
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern, name)
}

/// Every query string in a Grafana dashboard: panel targets (also inside rows) and template
/// variables.
fn grafana_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn panels(list: &Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("").to_owned();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((title.clone(), expr.to_owned()));
                }
            }
            panels(&p["panels"], out);
        }
    }
    panels(&dashboard["panels"], &mut out);
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap();
            out.push((format!("variable {}", v["name"]), q.to_owned()));
        }
    }
    out
}

/// Problems with one query against what the platform emits.
fn check_query(q: &QueryNames, emitted: &Emitted) -> Vec<String> {
    let mut problems = Vec::new();
    let mut known = BTreeSet::new();
    for s in &q.selectors {
        let matching: Vec<(&String, &BTreeSet<String>)> = emitted
            .iter()
            .filter(|(name, _)| match (&s.name, &s.name_pattern) {
                (Some(n), _) => *name == n,
                (None, Some(p)) => pattern_matches(p, name),
                (None, None) => false,
            })
            .collect();
        if matching.is_empty() {
            problems.push(format!("no emitted metric {s:?}"));
            continue;
        }
        for label in &s.labels {
            if !matching.iter().all(|(_, labels)| labels.contains(label)) {
                problems.push(format!("metric {s:?} has no label {label:?}"));
            }
        }
        for (_, labels) in matching {
            known.extend(labels.iter().cloned());
        }
    }
    for label in &q.grouping {
        if !known.contains(label) {
            problems.push(format!(
                "grouping label {label:?} is on none of the query's metrics"
            ));
        }
    }
    problems
}

#[test]
fn promql_reader_finds_metrics_labels_and_groupings() {
    let q = parse_query(
        r#"histogram_quantile(0.99, sum by (le, app_name) (rate(http_bucket{app_name=~"$app", status_code!="404"}[$__rate_interval])))"#,
    );
    assert_eq!(q.grouping, ["le", "app_name"]);
    assert_eq!(
        q.selectors,
        [Selector {
            name: Some("http_bucket".to_owned()),
            name_pattern: None,
            labels: vec!["app_name".to_owned(), "status_code".to_owned()],
        }]
    );
    let q = parse_query(
        r#"{__name__=~"slo_.+_budget_remaining"} * on (source_id) group_left (app_name) group by (source_id, app_name) (cpu)"#,
    );
    assert_eq!(q.selectors.len(), 2);
    assert_eq!(
        q.selectors[0].name_pattern.as_deref(),
        Some("slo_.+_budget_remaining")
    );
    assert_eq!(q.selectors[1].name.as_deref(), Some("cpu"));
    assert_eq!(
        q.grouping,
        ["source_id", "app_name", "source_id", "app_name"]
    );
    let q = parse_query("label_values(cpu, app_name)");
    assert_eq!(q.selectors[0].labels, ["app_name"]);
    assert!(pattern_matches(
        "slo_.+_budget_remaining",
        "slo_fast_budget_remaining"
    ));
    assert!(!pattern_matches(
        "slo_.+_budget_remaining",
        "slo__budget_remaining"
    ));

    // The check fails a metric nobody emits, a label it lacks and a stray grouping label.
    let emitted: Emitted = [("cpu".to_owned(), ["app_name".to_owned()].into())].into();
    assert!(check_query(&parse_query("cpu"), &emitted).is_empty());
    assert_eq!(check_query(&parse_query("cpus"), &emitted).len(), 1);
    assert_eq!(
        check_query(&parse_query(r#"cpu{space="x"}"#), &emitted).len(),
        1
    );
    assert_eq!(
        check_query(&parse_query("sum by (zone) (cpu)"), &emitted).len(),
        1
    );
}

/// Runs a syslog nozzle (into a local sink) so the pipeline's nozzle metrics exist too;
/// returns it with its admin base URL (where its `/metrics` is).
fn start_nozzle(cloud: &MicroCloud, endpoints: &Value) -> (Child, String) {
    // A port the kernel just handed out and nobody holds: the nozzle binds it next.
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = sink.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in sink.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let config = cloud.home().join("syslog-nozzle.toml");
    std::fs::write(
        &config,
        format!(
            "subscription_id = \"grafana-check-syslog\"\n\
             drains = [\"syslog://127.0.0.1:{port}\"]\n\
             admin_listen = \"{admin}\"\n\
             [firehose]\nurl = \"{}\"\ntoken = \"{}\"\n\
             [telemetry]\nagent = \"{}\"\ninterval_secs = 1\n\
             [telemetry.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            endpoints["firehose"].as_str().unwrap(),
            endpoints["token"].as_str().unwrap(),
            endpoints["agent"].as_str().unwrap(),
            endpoints["tls"]["ca_file"].as_str().unwrap(),
            endpoints["tls"]["cert_file"].as_str().unwrap(),
            endpoints["tls"]["key_file"].as_str().unwrap(),
        ),
    )
    .unwrap();
    let child = cloud
        .command(&["nozzle", "syslog", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    (child, format!("http://{admin}"))
}

/// A dashboard's queries, each with the names it reads.
fn dashboard_queries(file: &str) -> Vec<(String, String, QueryNames)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contracts/dashboards/grafana")
        .join(file);
    let dashboard: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let queries: Vec<(String, String, QueryNames)> = grafana_queries(&dashboard)
        .into_iter()
        .map(|(title, q)| {
            let names = parse_query(&q);
            (title, q, names)
        })
        .collect();
    assert!(
        queries.len() >= 10,
        "{file}: only {} queries",
        queries.len()
    );
    queries
}

/// Every query's problems against `emitted`, a line per problem.
fn problems(queries: &[(String, String, QueryNames)], emitted: &Emitted) -> Vec<String> {
    let mut out = Vec::new();
    for (title, q, names) in queries {
        for p in check_query(names, emitted) {
            out.push(format!("{title}: {q}\n    {p}"));
        }
    }
    out
}

/// A real Prometheus (Debian package `prometheus`, which `scripts/test` installs) on loopback,
/// scraping `targets` every second into a temporary directory; stopped on drop.
struct Prometheus {
    child: Child,
    _data: tempfile::TempDir,
    base: String,
}

impl Prometheus {
    async fn start(targets: &[(String, String)]) -> Self {
        let data = tempfile::tempdir().unwrap();
        let addrs: Vec<String> = targets
            .iter()
            .map(|(_, base)| format!("{:?}", base.trim_start_matches("http://")))
            .collect();
        let config = data.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: hydrant\n    static_configs:\n      \
                 - targets: [{}]\n",
                addrs.join(", ")
            ),
        )
        .unwrap();
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "prometheus cannot run ({e}): install the Debian package `prometheus` \
                     (scripts/test does) to run the dashboard's queries"
                )
            });
        let prometheus = Self {
            child,
            _data: data,
            base: format!("http://{listen}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = reqwest::get(format!("{}/-/ready", prometheus.base)).await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An instant query's result series; `Err` when Prometheus refuses the query.
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.base),
            [("query", promql)],
        )
        .unwrap();
        let answer: Value = reqwest::get(url)
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if answer["status"] != "success" {
            return Err(answer.to_string());
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A dashboard query as Grafana sends it with every app selected: `$app` is the variable's
/// "All" value and `$__rate_interval` four scrape intervals.
fn as_grafana_sends_it(query: &str) -> String {
    query
        .replace("$__rate_interval", "4s")
        .replace("$app", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_queries_only_metrics_the_platform_emits() {
    let queries = dashboard_queries("hydrant.json");
    let direct_queries = dashboard_queries("hydrant-direct.json");

    let cloud = demo_cloud();
    let endpoints = cloud.endpoints();
    let (mut nozzle, nozzle_admin) = start_nozzle(&cloud, &endpoints);
    let targets = scrape_targets(&endpoints, &[("test-nozzle", &nozzle_admin)]);

    let mut emitted = Emitted::new();
    // Stream until every query is satisfied: role reports come every few seconds, SLO gauges
    // once the alerter has evaluated, nozzle metrics once it is connected.
    let all_found = |emitted: &Emitted| {
        queries
            .iter()
            .all(|(_, _, names)| check_query(names, emitted).is_empty())
    };
    from_firehose(&endpoints, &mut emitted, Duration::from_secs(60), all_found).await;
    let mut findings = from_prometheus_endpoints(&targets, &mut emitted).await;

    // The direct-scrape dashboard reads the roles' /metrics alone (what a Prometheus scraping
    // them sees, no nozzle in between). Per-app series appear once the demo app has served
    // requests and its instances have reported usage, so scrape until they are there.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (direct, direct_findings) = loop {
        let mut direct = Emitted::new();
        let found = from_prometheus_endpoints(&targets, &mut direct).await;
        if problems(&direct_queries, &direct).is_empty() || Instant::now() >= deadline {
            break (direct, found);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    findings.extend(direct_findings);

    // And a real Prometheus scraping those same endpoints answers every panel query of the
    // direct-scrape dashboard with data (rates need a few scrapes first).
    let started = Instant::now();
    let prometheus = Prometheus::start(&targets).await;
    let panels: Vec<&(String, String, QueryNames)> = direct_queries
        .iter()
        .filter(|(title, _, _)| !title.starts_with("variable"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let unanswered = loop {
        let mut unanswered = Vec::new();
        for (title, q, _) in &panels {
            match prometheus.query(&as_grafana_sends_it(q)).await {
                Ok(series) if !series.is_empty() => {}
                Ok(_) => unanswered.push(format!("{title}: {q}\n    no data")),
                Err(e) => unanswered.push(format!("{title}: {q}\n    refused: {e}")),
            }
        }
        if unanswered.is_empty() || Instant::now() >= deadline {
            break unanswered;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    drop(prometheus);
    eprintln!(
        "prometheus answered the direct-scrape dashboard in {:?}",
        started.elapsed()
    );
    let _ = nozzle.kill();
    let _ = nozzle.wait();
    assert!(
        findings.is_empty(),
        "promtool check metrics finds problems in /metrics:\n{}",
        findings.join("\n")
    );

    let otlp = problems(&queries, &emitted);
    assert!(
        otlp.is_empty(),
        "the Grafana dashboard queries what the platform does not emit:\n{}\n\nemitted: {:?}",
        otlp.join("\n"),
        emitted.keys().collect::<Vec<_>>()
    );
    assert!(
        unanswered.is_empty(),
        "a Prometheus scraping the roles answers these direct-scrape dashboard queries with \
         nothing:\n{}",
        unanswered.join("\n")
    );
    let scraped = problems(&direct_queries, &direct);
    assert!(
        scraped.is_empty(),
        "the direct-scrape Grafana dashboard queries what the roles' /metrics do not carry:\n{}\n\n\
         on /metrics: {:?}",
        scraped.join("\n"),
        direct.keys().collect::<Vec<_>>()
    );
}
