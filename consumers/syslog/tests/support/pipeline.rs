//! The syslog role on the shared in-process pipeline (agent → doppler → firehose edge, from
//! `hydrant-nozzle-testkit`), with test-sized timings, plus the readers only its tests use:
//! `/drains` and deadline-bound waits. Included with `#[path]` by the test files that run the
//! role.
#![allow(dead_code, reason = "each test file uses a part")]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hydrant_emitter::Emitter;
use hydrant_nozzle_core::{Backoff, BreakerConfig};
use hydrant_nozzle_syslog::Config;
use hydrant_nozzle_testkit::{Pipeline, Probe, admin_get};

/// The syslog role running on a task.
pub type Nozzle = hydrant_nozzle_testkit::Nozzle<hydrant_nozzle_syslog::Error>;

/// A nozzle config reading `pipeline`'s firehose, with short retries and breaker.
pub fn nozzle_config(pipeline: &Pipeline, drains: Vec<String>) -> Config {
    Config {
        firehose: pipeline.firehose_client(),
        drains,
        retry: Backoff {
            initial_ms: 10,
            max_ms: 50,
            jitter: 0.0,
            max_retries: 1,
        },
        breaker: BreakerConfig {
            failure_threshold: 2,
            open_ms: 100,
        },
        write_timeout_ms: 2_000,
        shutdown_drain_ms: 1_000,
        admin_listen: "127.0.0.1:0".to_owned(),
        // These tests read `/drains` as an operator's tool would; `tests/status.rs` proves
        // the page's token check.
        status_auth: false,
        ..Config::default()
    }
}

pub async fn start_nozzle(pipeline: &Pipeline, drains: Vec<String>) -> Nozzle {
    start_nozzle_with(nozzle_config(pipeline, drains)).await
}

pub async fn start_nozzle_with(config: Config) -> Nozzle {
    Nozzle::start::<hydrant_nozzle_syslog::SyslogNozzle>(config).await
}

/// The nozzle's `/drains` report, by key.
pub async fn drains(admin: SocketAddr) -> std::collections::HashMap<String, serde_json::Value> {
    let body = admin_get(admin, "/drains").await;
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    list.into_iter()
        .map(|d| (d["key"].as_str().unwrap().to_owned(), d))
        .collect()
}

pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The tags of a log line from an app's web process.
pub const WEB: &[(&str, &str)] = &[("source_type", "APP/PROC/WEB")];

/// Emits app log lines from instance 0 of `app`, one for each `i` in `range`: `line(i)` gives
/// its text and whether it went to stderr. Flushes, so they leave the emitter at once.
pub fn emit_logs(
    emitter: &Emitter,
    app: &str,
    range: std::ops::Range<usize>,
    tags: &[(&str, &str)],
    line: impl Fn(usize) -> (String, bool),
) {
    for i in range {
        let (text, is_err) = line(i);
        emitter.log_with_tags(app, "0", text.as_bytes(), is_err, tags);
    }
    emitter.flush();
}

/// Starts the role on `pipeline` with `config` and waits until app logs flow through it.
pub async fn flowing(pipeline: &Pipeline, config: Config) -> (Nozzle, Emitter) {
    let nozzle = start_nozzle_with(config).await;
    let emitter = pipeline.emitter();
    nozzle.wait_until_flowing(&emitter, Probe::Log).await;
    (nozzle, emitter)
}
