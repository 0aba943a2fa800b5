//! A syslog nozzle (`hydrant run nozzle-syslog`, its own process) with a cursor file, killed
//! with SIGKILL under steady load and restarted 5 s later: the real rsyslogd behind it ends up
//! with every envelope sent, duplicates at most one drain batch and counted, and nothing counted
//! lost anywhere (the ledger: emitted = delivered, no drops).
//!
//! The pipeline (agent, doppler, edge) runs in this process through the micro cloud's wiring;
//! the load goes into the agent's v2 Ingress. Debug builds carry 20,000 envelopes/s here
//! comfortably beside the nozzle; the release pipeline does far more (README, Performance).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hydrant_auth::{AUD_LOGS, Claims, SCOPE_FIREHOSE};
use hydrant_envelope::v2;
use hydrant_nozzle_syslog::rsyslogd::{FIELDS_TEMPLATE, Rsyslogd, free_port};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_hydrant");
/// Envelopes per second into the agent.
const RATE: u64 = 20_000;
/// Envelopes per Ingress call.
const BATCH: u64 = 100;

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let text = http_get(port, "/metrics")?;
    Some(
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {secs}s: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_nozzle(config: &Path, log: &Path, admin: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(BIN)
        .args(["run", "nozzle-syslog", "--config"])
        .arg(config)
        .env("HYDRANT_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    wait_until("the nozzle to read the firehose", 30, || {
        metric(admin, "nozzle_firehose_connected").is_some_and(|v| v >= 1.0)
    });
    child
}

/// Sends `seq` numbers `from..to` into the agent, `RATE` per second.
async fn emit(agent: &str, from: u64, to: u64) {
    let mut client = v2::ingress_client::IngressClient::connect(agent.to_owned())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut seq = from;
    while seq < to {
        let end = (seq + BATCH).min(to);
        let batch = (seq..end)
            .map(|i| v2::Envelope {
                source_id: "load".to_owned(),
                instance_id: "0".to_owned(),
                timestamp: hydrant_envelope::now_nanos(),
                message: Some(v2::envelope::Message::Log(v2::Log {
                    payload: format!("seq {i}").into_bytes().into(),
                    r#type: 0,
                })),
                ..v2::Envelope::default()
            })
            .collect();
        client.send(v2::EnvelopeBatch { batch }).await.unwrap();
        seq = end;
        let due = started + Duration::from_secs_f64((seq - from) as f64 / RATE as f64);
        tokio::time::sleep_until(due).await;
    }
}

/// How many times rsyslog wrote each sequence number.
fn seen(out: &Path) -> HashMap<u64, u32> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut counts = HashMap::new();
    for line in text.lines() {
        let Ok(record) = serde_json::from_str::<HashMap<String, String>>(line) else {
            continue;
        };
        if let Some(n) = record
            .get("msg")
            .and_then(|m| m.trim().strip_prefix("seq "))
            .and_then(|n| n.parse::<u64>().ok())
        {
            *counts.entry(n).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nozzle_killed_with_sigkill_and_restarted_within_the_window_loses_nothing() {
    let shutdown = CancellationToken::new();
    let cloud = hydrant_microcloud::MicroCloud::start(
        hydrant_microcloud::Options::pipeline(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let token = cloud.key.issue(
        &Claims::new("nozzle-test")
            .for_audience(AUD_LOGS)
            .with_scope(SCOPE_FIREHOSE),
    );
    let rsyslog = Rsyslogd::start(FIELDS_TEMPLATE)
        .unwrap_or_else(|e| panic!("{e} (./scripts/test installs the Debian package rsyslog)"));
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port().unwrap();
    let cursor = dir.path().join("syslog.cursor");
    let config = dir.path().join("syslog.toml");
    std::fs::write(
        &config,
        format!(
            "subscription_id = \"resume-test\"\n\
             drains = [\"syslog://127.0.0.1:{}\"]\n\
             admin_listen = \"127.0.0.1:{admin}\"\n\
             cursor_file = \"{}\"\n\
             [firehose]\n\
             url = \"{}\"\n\
             token = \"{token}\"\n\
             [firehose.reconnect]\n\
             initial_ms = 20\n\
             max_ms = 200\n",
            rsyslog.port,
            cursor.display(),
            cloud.firehose_url,
        ),
    )
    .unwrap();
    let log = dir.path().join("nozzle.log");
    let mut nozzle = start_nozzle(&config, &log, admin);

    // 2 s of load, SIGKILL, 5 s more with the nozzle gone, restart, 2 s more.
    let agent = cloud.agent_url.clone();
    let load = tokio::spawn(async move {
        emit(&agent, 0, 2 * RATE).await;
    });
    load.await.unwrap();
    assert!(
        cursor.exists(),
        "the cursor file is written while the drain delivers"
    );
    nozzle.kill().unwrap();
    nozzle.wait().unwrap();
    let killed_at = seen(&rsyslog.out).len();
    emit(&cloud.agent_url, 2 * RATE, 7 * RATE).await;
    let mut nozzle = start_nozzle(&config, &log, admin);
    emit(&cloud.agent_url, 7 * RATE, 9 * RATE).await;
    let total = 9 * RATE;

    wait_until("rsyslog to hold every envelope sent", 120, || {
        seen(&rsyslog.out).len() as u64 == total
    });
    // A moment more would show duplicates still in flight.
    std::thread::sleep(Duration::from_millis(500));
    let counts = seen(&rsyslog.out);
    let missing: Vec<u64> = (0..total).filter(|i| !counts.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{} missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let duplicates: u64 = counts.values().map(|&n| u64::from(n) - 1).sum();
    let counted = metric(admin, "nozzle_duplicates_total").unwrap_or(0.0) as u64;
    // One drain batch (taken, maybe written, not yet settled when the kill came), plus what
    // the keeper had not stored yet (it stores every 5 ms) and the rest of a partly delivered
    // firehose frame (100 envelopes at most).
    let batch = hydrant_nozzle_core_batch() + 200;
    eprintln!(
        "emitted {total}; rsyslog held {} before the kill; duplicates {duplicates}, counted {counted}",
        killed_at
    );
    assert!(
        duplicates <= batch as u64,
        "{duplicates} duplicates: more than one drain batch ({batch})"
    );
    assert!(
        duplicates <= counted + batch as u64,
        "{duplicates} duplicates, {counted} counted"
    );
    // The ledger: nothing was dropped anywhere on the way.
    let dropped = metric(admin, "nozzle_dropped_total").unwrap_or(0.0);
    assert_eq!(dropped, 0.0, "the nozzle counted drops");
    nozzle.kill().unwrap();
    nozzle.wait().unwrap();
    shutdown.cancel();
}

/// The syslog nozzle's default drain batch (what "one batch" of duplicates means).
fn hydrant_nozzle_core_batch() -> usize {
    hydrant_nozzle_syslog::Config::default().queue.batch_items
}
