//! The emitter against a fake agent over real loopback sockets: what arrives, what is counted
//! when the agent is missing or dies, and that the ledger `emitted = sent + dropped` balances.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::time::Duration;

use hydrant_emitter::{Emitter, EmitterConfig, Registry, spawn_reporter};
use hydrant_envelope::v2;
use hydrant_envelope::wire::EnvelopeView;
use hydrant_testkit::{FakeAgent, dead_addr, wait_for};
use prost::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The text of every log line, in arrival order; the payloads are the emitter's own ASCII, so
/// anything else fails here.
fn payloads(agent: &FakeAgent) -> Vec<String> {
    agent
        .envelopes()
        .into_iter()
        .filter_map(|e| match e.message {
            Some(v2::envelope::Message::Log(l)) => {
                Some(String::from_utf8(l.payload.to_vec()).unwrap())
            }
            _ => None,
        })
        .collect()
}

struct Ledger {
    emitted: u64,
    sent: u64,
    dropped: u64,
}

fn ledger(registry: &Registry) -> Ledger {
    Ledger {
        emitted: registry.counter_sum("emitter.emitted", &[]),
        sent: registry.counter_sum("emitter.sent", &[]),
        dropped: registry.counter_sum("emitter.dropped", &[]),
    }
}

fn config(agent: String) -> EmitterConfig {
    EmitterConfig {
        agent,
        ..EmitterConfig::default()
    }
}

#[tokio::test]
async fn every_kind_of_envelope_arrives_and_the_ledger_balances() {
    let agent = FakeAgent::start();
    let registry = Registry::new("test", "0");
    let shutdown = CancellationToken::new();
    let emitter = Emitter::start(config(agent.url()), &registry, shutdown.clone());

    for i in 0..1000 {
        emitter.log(
            "app",
            "0",
            "APP/PROC/WEB",
            format!("line {i}").as_bytes(),
            i % 2 == 0,
        );
    }
    emitter.counter("app", "0", "requests", 3, &[("route", "/")]);
    emitter.gauge("app", "0", &[("cpu", 1.5, "percentage")], &[]);
    emitter.timer("app", "0", "http", 1, 2, &[]);
    emitter.event("app", "0", "crash", "exit 1", &[]);
    let typed = v2::Envelope {
        source_id: "typed".to_owned(),
        message: Some(v2::envelope::Message::Counter(v2::Counter {
            name: "c".to_owned(),
            delta: 1,
            total: 0,
        })),
        ..v2::Envelope::default()
    };
    emitter.emit(&typed);
    emitter.emit_encoded(&typed.encode_to_vec());

    agent
        .wait_for(Duration::from_secs(5), "all envelopes", |e| e.len() == 1006)
        .await;
    shutdown.cancel();
    emitter.stopped().await;

    let payloads = payloads(&agent);
    let want: Vec<String> = (0..1000).map(|i| format!("line {i}")).collect();
    assert_eq!(payloads, want, "log lines arrive complete and in order");
    for r in agent.received() {
        EnvelopeView::parse(&r.bytes).expect("every envelope passes the agent's validation");
    }
    let decoded = agent.envelopes();
    assert_eq!(decoded[0].tags["source_type"], "APP/PROC/WEB");
    assert!(matches!(
        &decoded[0].message,
        Some(v2::envelope::Message::Log(l)) if l.r#type == v2::log::Type::Err as i32
    ));
    assert!(decoded.iter().filter(|e| e.source_id == "typed").count() == 2);

    let l = ledger(&registry);
    assert_eq!(l.emitted, 1006);
    assert_eq!(l.sent, 1006);
    assert_eq!(l.dropped, 0);
    assert!(agent.batches() < 100, "envelopes are batched");
}

#[tokio::test]
async fn a_lone_envelope_is_flushed_by_time() {
    let agent = FakeAgent::start();
    let registry = Registry::new("test", "0");
    let shutdown = CancellationToken::new();
    let emitter = Emitter::start(config(agent.url()), &registry, shutdown.clone());
    // A first line opens the stream, so what is measured next is the flush, not the connect.
    emitter.log("app", "0", "APP", b"first", false);
    agent
        .wait_for(Duration::from_secs(5), "the first line", |e| e.len() == 1)
        .await;
    let start = Instant::now();
    emitter.log("app", "0", "APP", b"alone", false);
    agent
        .wait_for(Duration::from_secs(2), "the flush", |e| e.len() == 2)
        .await;
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "took {:?}",
        start.elapsed()
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_stopped_agent_never_blocks_emitters_and_every_drop_is_counted() {
    let registry = Registry::new("test", "0");
    let shutdown = CancellationToken::new();
    let emitter = Emitter::start(
        EmitterConfig {
            queue_max_batches: 4,
            batch_max_envelopes: 10,
            ..config(format!("http://{}", dead_addr()))
        },
        &registry,
        shutdown.clone(),
    );
    let start = std::time::Instant::now();
    for i in 0..100_000 {
        emitter.log("app", "0", "APP", format!("{i}").as_bytes(), false);
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "emitting must not wait for the agent"
    );
    let before = ledger(&registry);
    assert_eq!(before.emitted, 100_000);
    assert_eq!(before.sent, 0);
    // At most the queue and the current batch are held.
    assert!(before.dropped >= 100_000 - 50, "dropped {}", before.dropped);
    assert!(
        registry.counter_sum("emitter.dropped", &[("reason", "queue_full")]) > 0,
        "overflow is counted as queue_full"
    );

    shutdown.cancel();
    emitter.stopped().await;
    let after = ledger(&registry);
    assert_eq!(after.emitted, after.sent + after.dropped);

    // Emitting after the emitter stopped is still counted.
    emitter.log("app", "0", "APP", b"late", false);
    let late = ledger(&registry);
    assert_eq!(late.emitted, late.sent + late.dropped);
    assert!(registry.counter_sum("emitter.dropped", &[("reason", "shutdown")]) >= 1);
}

#[tokio::test]
async fn when_the_queue_overflows_the_oldest_batches_go() {
    let addr = dead_addr();
    let registry = Registry::new("test", "0");
    let shutdown = CancellationToken::new();
    let emitter = Emitter::start(
        EmitterConfig {
            queue_max_batches: 3,
            batch_max_envelopes: 1,
            ..config(format!("http://{addr}"))
        },
        &registry,
        shutdown.clone(),
    );
    for i in 0..10 {
        emitter.log("app", "0", "APP", format!("{i}").as_bytes(), false);
    }
    assert_eq!(
        registry.counter_sum("emitter.dropped", &[("reason", "queue_full")]),
        7
    );
    let agent = FakeAgent::start_on(addr);
    agent
        .wait_for(Duration::from_secs(5), "reconnect and delivery", |e| {
            e.len() == 3
        })
        .await;
    assert_eq!(payloads(&agent), vec!["7", "8", "9"]);
    shutdown.cancel();
    emitter.stopped().await;
    let l = ledger(&registry);
    assert_eq!((l.emitted, l.sent, l.dropped), (10, 3, 7));
}

#[tokio::test]
async fn an_agent_that_dies_and_returns_gets_the_stream_back_and_the_ledger_balances() {
    let mut agent = FakeAgent::start();
    let addr = agent.addr();
    let registry = Registry::new("test", "0");
    let shutdown = CancellationToken::new();
    let emitter = Emitter::start(config(agent.url()), &registry, shutdown.clone());

    for i in 0..500 {
        emitter.log("app", "0", "APP", format!("a{i}").as_bytes(), false);
    }
    agent
        .wait_for(Duration::from_secs(5), "first half", |e| e.len() == 500)
        .await;
    let first = agent.count();
    agent.kill();

    // While the agent is gone: nothing blocks, and everything is accounted for.
    for i in 0..500 {
        emitter.log("app", "0", "APP", format!("b{i}").as_bytes(), false);
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let agent2 = FakeAgent::start_on(addr);
    for i in 0..500 {
        emitter.log("app", "0", "APP", format!("c{i}").as_bytes(), false);
    }
    wait_for(Duration::from_secs(5), "the reconnected stream", || async {
        payloads(&agent2).iter().any(|p| p == "c499")
    })
    .await;
    shutdown.cancel();
    emitter.stopped().await;

    let l = ledger(&registry);
    assert_eq!(l.emitted, 1500);
    assert_eq!(l.emitted, l.sent + l.dropped, "the ledger balances");
    let delivered = (first + agent2.count()) as u64;
    assert!(
        delivered <= l.sent,
        "nothing is delivered that was not counted as sent"
    );
    // Whatever was emitted after the agent came back arrived, in order.
    let second = payloads(&agent2);
    let c: Vec<&String> = second.iter().filter(|p| p.starts_with('c')).collect();
    assert!(
        c.windows(2)
            .all(|w| { w[0][1..].parse::<u32>().unwrap() < w[1][1..].parse::<u32>().unwrap() })
    );
}

#[tokio::test]
async fn the_reporter_delivers_a_final_snapshot_at_shutdown() {
    let agent = FakeAgent::start();
    let registry = Registry::new("reporter-test", "7");
    let requests = registry.counter("test.requests", "requests", &[("code", "200")]);
    let shutdown = CancellationToken::new();
    let emitter = Emitter::start(config(agent.url()), &registry, shutdown.clone());
    spawn_reporter(
        registry.clone(),
        emitter.clone(),
        Duration::from_millis(50),
        shutdown.clone(),
    );
    requests.add(5);
    agent.wait_for(Duration::from_secs(5), "a periodic report", |e| {
        e.iter().any(|e| matches!(&e.message, Some(v2::envelope::Message::Counter(c)) if c.name == "test.requests" && c.total == 5))
    })
    .await;
    requests.add(2);
    shutdown.cancel();
    emitter.stopped().await;

    let reports: Vec<v2::Counter> = agent
        .envelopes()
        .into_iter()
        .filter(|e| e.source_id == "reporter-test" && e.instance_id == "7")
        .filter_map(|e| match e.message {
            Some(v2::envelope::Message::Counter(c)) if c.name == "test.requests" => Some(c),
            _ => None,
        })
        .collect();
    let last = reports.last().unwrap();
    assert_eq!(
        last.total, 7,
        "the final snapshot carries the last increments"
    );
    assert_eq!(reports.iter().map(|c| c.delta).sum::<u64>(), 7);
    let l = ledger(&registry);
    assert_eq!(l.emitted, l.sent + l.dropped);
}

#[tokio::test]
async fn oversized_envelopes_are_refused_and_counted() {
    let agent = FakeAgent::start();
    let registry = Registry::new("test", "0");
    let shutdown = CancellationToken::new();
    let emitter = Emitter::start(config(agent.url()), &registry, shutdown.clone());
    let huge = vec![b'x'; hydrant_envelope::MAX_ENVELOPE_BYTES + 1];
    emitter.log("app", "0", "APP", &huge, false);
    emitter.emit_encoded(&huge);
    emitter.log("app", "0", "APP", b"small", false);
    shutdown.cancel();
    emitter.stopped().await;
    assert_eq!(
        registry.counter_sum("emitter.dropped", &[("reason", "too_large")]),
        2
    );
    assert_eq!(payloads(&agent), vec!["small"]);
    let l = ledger(&registry);
    assert_eq!((l.emitted, l.sent, l.dropped), (3, 1, 2));
}

#[test]
fn config_validation_names_the_field() {
    let bad = EmitterConfig {
        agent: "127.0.0.1:3458".to_owned(),
        ..EmitterConfig::default()
    };
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("agent") && err.contains("http://"), "{err}");
    let bad = EmitterConfig {
        queue_max_batches: 0,
        ..EmitterConfig::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("queue_max_batches")
    );
    assert!(EmitterConfig::default().validate().is_ok());
    let telemetry: hydrant_emitter::TelemetryConfig =
        toml::from_str("agent = \"http://127.0.0.1:3458\"\ninterval_secs = 1").unwrap();
    assert!(telemetry.validate().is_ok());
    assert!(toml::from_str::<hydrant_emitter::TelemetryConfig>("agnet = \"x\"").is_err());
}
