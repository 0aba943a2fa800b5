//! Every service instance is a source in the pipeline: its node's own log lines arrive at the
//! agent as `SVC` logs with the instance guid as source id, its gauges every interval, and the
//! broker's operation counters as the broker's own metrics. A Redis node runs in a memory
//! cgroup sized from its plan when the broker may make one (root).

use std::time::Duration;

use hydrant_envelope::v2;
use hydrant_testkit::FakeAgent;
use serde_json::json;

use crate::{config, guid, ports, require, start};

fn gauge_names(e: &v2::Envelope) -> Vec<String> {
    match &e.message {
        Some(v2::envelope::Message::Gauge(g)) => g.metrics.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_sends_its_own_logs_and_gauges() {
    require("redis");
    let agent = FakeAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), ports());
    c.telemetry.agent = Some(agent.url());
    c.telemetry.interval_secs = 1;
    let b = start(c).await;
    let id = guid();
    b.provision(&id, "redis", "small", json!({})).await;
    b.bind(&id, &guid(), "redis", json!({})).await;

    agent
        .wait_for(Duration::from_secs(20), "Redis's own start-up line", |envs| {
            envs.iter().any(|e| {
                e.source_id == id
                    && e.tags.get("source_type").map(String::as_str) == Some("SVC")
                    && matches!(&e.message, Some(v2::envelope::Message::Log(l))
                        if String::from_utf8_lossy(&l.payload).contains("Ready to accept connections"))
            })
        })
        .await;
    agent
        .wait_for(Duration::from_secs(20), "the instance's gauges", |envs| {
            envs.iter().any(|e| {
                let names = gauge_names(e);
                e.source_id == id
                    && e.tags.get("offering").map(String::as_str) == Some("redis")
                    && [
                        "service.up",
                        "service.connections",
                        "service.memory_bytes",
                        "service.memory_quota_bytes",
                    ]
                    .iter()
                    .all(|n| names.iter().any(|m| m == n))
            })
        })
        .await;
    agent
        .wait_for(Duration::from_secs(20), "the broker's operation counters", |envs| {
            envs.iter().any(|e| {
                e.source_id == "broker"
                    && e.tags.get("operation").map(String::as_str) == Some("provision")
                    && matches!(&e.message, Some(v2::envelope::Message::Counter(c)) if c.name == "broker.operations")
            })
        })
        .await;

    if nix::unistd::geteuid().is_root() {
        let limit = hydrant_broker::node::cgroup::limit(&format!("redis-{id}"));
        assert_eq!(
            limit,
            Some((64 + 64) * 1024 * 1024),
            "the small plan's node is held to 128 MiB"
        );
    }
    assert_eq!(b.deprovision(&id, "redis").await, 200);
    b.stop().await;
}
