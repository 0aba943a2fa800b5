//! Every service instance is a source in the pipeline: its node's own log lines arrive at the
//! agent as `SVC` logs with the instance guid as source id, its gauges every interval, and the
//! broker's operation counters as the broker's own metrics. A Redis node refuses writes past
//! its plan's memory and runs in a container whose memory cgroup is sized from it (root).

use std::time::Duration;

use hydrant_envelope::v2;
use hydrant_testkit::FakeAgent;
use serde_json::json;

use crate::{guid, redis_cli, reporting_config, require, start};

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
    let b = start(reporting_config(dir.path(), &agent)).await;
    let id = guid();
    b.provision(&id, "redis", "small", json!({})).await;
    let bid = guid();
    b.bind(&id, &bid, "redis", json!({})).await;

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

    // The plan's memory holds: once Redis is past it, writes are refused, not the host's
    // memory taken.
    let creds = b
        .get(&format!(
            "/v2/service_instances/{id}/service_bindings/{bid}"
        ))
        .await
        .1["credentials"]
        .clone();
    let out = redis_cli(&creds, &["SETRANGE", "big", "73400320", "x"]).await;
    assert!(out.trim().parse::<u64>().is_ok(), "{out}");
    let out = redis_cli(&creds, &["SET", "one-more", "x"]).await;
    assert!(
        out.starts_with("OOM"),
        "a write past the small plan's 64 MiB is refused: {out}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("nodes").join(format!("redis-{id}")))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "a node's directory is private");

    if nix::unistd::geteuid().is_root() {
        // The kernel's own limit, in the node's container's cgroup.
        let parent = hydrant_broker::Config {
            data_dir: std::fs::canonicalize(dir.path()).unwrap(),
            ..hydrant_broker::Config::default()
        }
        .container_config()
        .cgroup_parent;
        let node = format!("redis-{id}");
        let root = std::path::Path::new("/sys/fs/cgroup");
        let limit = [
            root.join("memory")
                .join(&parent)
                .join(&node)
                .join("memory.limit_in_bytes"),
            root.join(&parent).join(&node).join("memory.max"),
        ]
        .iter()
        .find_map(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| t.trim().parse::<u64>().ok());
        assert_eq!(
            limit,
            Some((64 + 64) * 1024 * 1024),
            "the small plan's node is held to 128 MiB"
        );
    }
    assert_eq!(b.deprovision(&id, "redis").await, 200);
    b.stop().await;
}
