//! The micro cloud's pipeline as the test kits and `hydrant bench` use it: started from the
//! table, its roles' counters read from their registries (no `/metrics` scrape), a taken port
//! reported with the role and the config field, and a second micro cloud in the same process
//! kept apart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::time::{Duration, Instant};

use hydrant_emitter::Registry;
use hydrant_microcloud::{Error, MicroCloud, Options, Ports};
use tokio_util::sync::CancellationToken;

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_starts_from_the_table_and_its_counters_are_read_in_process() {
    let shutdown = CancellationToken::new();
    let mut cloud = MicroCloud::start(Options::pipeline(), shutdown.clone())
        .await
        .unwrap();
    assert_eq!(
        cloud.admin.keys().collect::<Vec<_>>(),
        ["agent", "doppler", "firehose"],
        "the pipeline rows only, by their endpoints.json names"
    );
    assert!(cloud.api_url.is_none() && cloud.router_url.is_none());
    for url in [&cloud.agent_url, &cloud.doppler_url, &cloud.firehose_url] {
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    }

    let emitter = cloud.emitter(&Registry::new("test-app", "0"), shutdown.clone());
    for _ in 0..5 {
        emitter.log("test-app", "0", "APP/PROC/WEB", b"hello", false);
    }
    emitter.flush();
    wait_until("the agent to count five envelopes", || {
        cloud.counter("agent.ingress") >= 5
    })
    .await;
    assert_eq!(
        cloud
            .registry("agent")
            .unwrap()
            .counter_sum("agent.ingress", &[]),
        cloud.counter("agent.ingress")
    );
    assert!(
        cloud.drops().values().all(|&n| n == 0),
        "{:?}",
        cloud.drops()
    );

    shutdown.cancel();
    assert!(
        cloud.supervise(&shutdown).await.is_none(),
        "a requested stop is no failure"
    );
    tokio::time::timeout(Duration::from_secs(30), cloud.stopped())
        .await
        .expect("every role stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_names_the_role_the_field_and_the_way_out() {
    // Hold the agent's well-known ports. If something else already holds one, the start fails
    // on the agent all the same, which is what is asserted.
    let _held = tokio::net::TcpListener::bind("127.0.0.1:3458").await;
    let _held_admin = tokio::net::TcpListener::bind("127.0.0.1:14824").await;
    let options = Options {
        ports: Ports::WellKnown,
        ..Options::pipeline()
    };
    let err = MicroCloud::start(options, CancellationToken::new())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Bind { role: "agent", .. }), "{text}");
    assert!(
        text.contains("config field") && text.contains("--ephemeral-ports"),
        "{text}"
    );
}

#[tokio::test]
async fn the_platform_needs_a_data_directory() {
    let options = Options {
        platform: true,
        ..Options::pipeline()
    };
    let err = MicroCloud::start(options, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoDataDir), "{err}");
}
