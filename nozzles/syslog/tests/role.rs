//! The syslog nozzle role end to end: a real pipeline in-process (agent → doppler → firehose
//! edge, as `hydrant up` wires it), logs emitted to the agent, the role reading the firehose,
//! and a real rsyslogd checking what arrives — all of it, in order, exactly once; and a dead
//! drain next to a healthy one losing only its own data, counted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[path = "support/rsyslog.rs"]
mod rsyslog;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hydrant_emitter::{Emitter, EmitterConfig, Registry};
use hydrant_nozzle_core::{Backoff, BreakerConfig};
use hydrant_nozzle_syslog::{Config, Listeners};
use rsyslog::{Rsyslog, free_port, records_now, start_rsyslog};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const APP: &str = "app-under-test";

struct Pipeline {
    agent: String,
    firehose: String,
    token: String,
    shutdown: CancellationToken,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

fn url(l: &TcpListener) -> String {
    format!("http://{}", l.local_addr().unwrap())
}

/// Agent, doppler and firehose edge on ephemeral ports, as `MicroCloud::start` wires them.
async fn start_pipeline() -> Pipeline {
    let shutdown = CancellationToken::new();
    let key = hydrant_auth::SigningKey::from_bytes(&[7u8; 32]).unwrap();
    let (agent_ingress, agent_admin) = (bind().await, bind().await);
    let (doppler_grpc, doppler_admin) = (bind().await, bind().await);
    let (firehose_http, firehose_admin) = (bind().await, bind().await);
    let (agent, doppler, firehose) = (url(&agent_ingress), url(&doppler_grpc), url(&firehose_http));
    tokio::spawn(hydrant_agent::run(
        hydrant_agent::Config {
            dopplers: vec![doppler.clone()],
            ..hydrant_agent::Config::default()
        },
        hydrant_agent::Listeners {
            ingress: agent_ingress,
            admin: agent_admin,
        },
        shutdown.clone(),
    ));
    tokio::spawn(hydrant_doppler::run(
        hydrant_doppler::Config::default(),
        hydrant_doppler::Listeners {
            grpc: doppler_grpc,
            admin: doppler_admin,
        },
        shutdown.clone(),
    ));
    tokio::spawn(hydrant_firehose::run(
        hydrant_firehose::Config {
            dopplers: vec![doppler],
            signing_key: Some(key.to_hex()),
            reconnect_min_ms: 10,
            reconnect_max_ms: 200,
            ..hydrant_firehose::Config::default()
        },
        hydrant_firehose::Listeners {
            http: firehose_http,
            admin: firehose_admin,
        },
        shutdown.clone(),
    ));
    let token = key
        .issue(&hydrant_auth::Claims::new("nozzle-test").with_scope(hydrant_auth::SCOPE_FIREHOSE));
    Pipeline {
        agent,
        firehose,
        token,
        shutdown,
    }
}

struct Nozzle {
    admin: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), hydrant_nozzle_syslog::Error>>,
}

async fn start_nozzle(pipeline: &Pipeline, drains: Vec<String>) -> Nozzle {
    let mut config = Config {
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
        ..Config::default()
    };
    config.firehose.url.clone_from(&pipeline.firehose);
    config.firehose.token.clone_from(&pipeline.token);
    config.firehose.reconnect.initial_ms = 20;
    config.firehose.reconnect.max_ms = 200;
    config.validate().unwrap();
    let listeners = Listeners::bind(&config).await.unwrap();
    let admin = listeners.admin.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hydrant_nozzle_syslog::run(
        config,
        listeners,
        shutdown.clone(),
    ));
    Nozzle {
        admin,
        shutdown,
        task,
    }
}

/// The nozzle's `/metrics` text.
async fn scrape(admin: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text
}

/// Sum of the samples of `name` whose labels contain `filter`.
fn metric(text: &str, name: &str, filter: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Emits probe logs until the nozzle has read one: from then on the firehose path is open
/// end to end, so nothing the test emits next can fall into a subscription not yet made.
async fn wait_until_flowing(emitter: &Emitter, nozzle: &Nozzle) {
    eventually("the firehose to reach the nozzle", async || {
        emitter.log("probe", "0", "APP/PROC/WEB", b"probe", false);
        emitter.flush();
        metric(&scrape(nozzle.admin).await, "nozzle_envelopes_total", "") > 0
    })
    .await;
}

fn emit_app_logs(emitter: &Emitter, n: usize) {
    for i in 0..n {
        emitter.log_with_tags(
            APP,
            "0",
            format!("message {i} {}", "x".repeat(i % 50)).as_bytes(),
            i % 4 == 0,
            &[
                ("source_type", "APP/PROC/WEB"),
                ("organization_name", "org"),
                ("space_name", "space"),
                ("app_name", "web"),
            ],
        );
    }
    emitter.flush();
}

fn app_records(rsyslog: &Rsyslog) -> Vec<HashMap<String, String>> {
    records_now(&rsyslog.out)
        .into_iter()
        .filter(|r| r["app"] == APP)
        .collect()
}

async fn wait_for_app_records(rsyslog: &Rsyslog, n: usize) -> Vec<HashMap<String, String>> {
    eventually("rsyslog to write every app message", async || {
        app_records(rsyslog).len() >= n
    })
    .await;
    app_records(rsyslog)
}

fn check_in_order(records: &[HashMap<String, String>], n: usize) {
    assert_eq!(records.len(), n, "nothing lost, nothing duplicated");
    for (i, r) in records.iter().enumerate() {
        let payload = format!("message {i} {}", "x".repeat(i % 50));
        assert_eq!(r["msg"], format!("{payload}\n"), "message {i} in order");
        assert_eq!(r["pri"], if i % 4 == 0 { "11" } else { "14" }, "{r:?}");
        assert_eq!(r["host"], "org.space.web", "{r:?}");
        assert_eq!(r["procid"], "[APP/PROC/WEB/0]", "{r:?}");
        assert_eq!(r["msgid"], "-", "{r:?}");
        let sd = &r["sd"];
        assert!(
            sd.starts_with("[tags@47450 ") && sd.contains("app_name=\"web\""),
            "{sd}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_reaches_rsyslog_in_order_exactly_once() {
    let rsyslog = start_rsyslog();
    let pipeline = start_pipeline().await;
    let drain = format!("syslog://user:secret@127.0.0.1:{}", rsyslog.port);
    let nozzle = start_nozzle(&pipeline, vec![drain]).await;
    let registry = Registry::new("test-app", "0");
    let emitter = Emitter::start(
        EmitterConfig {
            agent: pipeline.agent.clone(),
            ..EmitterConfig::default()
        },
        &registry,
        pipeline.shutdown.clone(),
    );
    wait_until_flowing(&emitter, &nozzle).await;

    const N: usize = 2_000;
    emit_app_logs(&emitter, N);
    let records = wait_for_app_records(&rsyslog, N).await;
    // Everything queued has been handed over before the file is read the final time, so a
    // duplicate would already be there.
    eventually("the queue to empty", async || {
        let text = scrape(nozzle.admin).await;
        let received = metric(&text, "nozzle_received_total", "");
        received > 0 && metric(&text, "nozzle_sent_total", "") == received
    })
    .await;
    check_in_order(&app_records(&rsyslog), N);
    assert_eq!(records.len(), N);

    let text = scrape(nozzle.admin).await;
    assert!(!text.contains("secret"), "credentials in /metrics: {text}");
    assert!(text.contains("user:****@127.0.0.1"), "{text}");
    assert_eq!(metric(&text, "nozzle_dropped_total", ""), 0);
    assert_eq!(metric(&text, "nozzle_firehose_connected", ""), 1);

    nozzle.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), nozzle.task)
        .await
        .expect("the nozzle stops")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_drain_loses_only_its_own_data_and_counts_it() {
    let rsyslog = start_rsyslog();
    let pipeline = start_pipeline().await;
    let healthy = format!("syslog://127.0.0.1:{}", rsyslog.port);
    // Nothing listens there: every connect is refused.
    let dead_port = free_port();
    let dead = format!("syslog://ops:secret@127.0.0.1:{dead_port}");
    let nozzle = start_nozzle(&pipeline, vec![dead, healthy.clone()]).await;
    let registry = Registry::new("test-app", "0");
    let emitter = Emitter::start(
        EmitterConfig {
            agent: pipeline.agent.clone(),
            ..EmitterConfig::default()
        },
        &registry,
        pipeline.shutdown.clone(),
    );
    wait_until_flowing(&emitter, &nozzle).await;

    const N: usize = 1_000;
    emit_app_logs(&emitter, N);
    wait_for_app_records(&rsyslog, N).await;
    check_in_order(&app_records(&rsyslog), N);

    let dead_tag = format!("destination=\"syslog://ops:****@127.0.0.1:{dead_port}\"");
    let healthy_tag = format!("destination=\"{healthy}\"");
    eventually("the dead drain to account for everything", async || {
        let text = scrape(nozzle.admin).await;
        let received = metric(&text, "nozzle_received_total", &dead_tag);
        received >= N as u64 && metric(&text, "nozzle_dropped_total", &dead_tag) == received
    })
    .await;
    let text = scrape(nozzle.admin).await;
    assert!(!text.contains("secret"), "credentials in /metrics: {text}");
    assert_eq!(metric(&text, "nozzle_sent_total", &dead_tag), 0);
    assert_eq!(
        metric(&text, "nozzle_received_total", &dead_tag),
        metric(&text, "nozzle_received_total", &healthy_tag),
        "both drains were offered the same lines"
    );
    assert_eq!(metric(&text, "nozzle_dropped_total", &healthy_tag), 0);
    assert!(metric(&text, "nozzle_retries_total", &dead_tag) > 0);

    nozzle.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), nozzle.task)
        .await
        .expect("the nozzle stops despite the dead drain")
        .unwrap()
        .unwrap();
}
