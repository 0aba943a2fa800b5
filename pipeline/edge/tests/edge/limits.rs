//! The public listener's abuse limits: a slow-loris client neither starves the edge's other
//! clients nor holds more connections than its address may, and what it held is closed by the
//! header read timeout, every refusal and close counted on `/metrics`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use hydrant_runtime::Limits;
use hydrant_testkit::{SlowLoris, dead_addr, p99, probe};

use crate::harness::{config, start_edge, wait_for};

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

#[tokio::test]
async fn a_slow_loris_neither_starves_the_edge_nor_holds_more_than_its_cap() {
    let mut cfg = config(vec![format!("http://{}", dead_addr())]);
    cfg.limits = Limits {
        max_connections: 1000,
        max_connections_per_address: 200,
        header_read_timeout_ms: 3000,
        idle_timeout_secs: 30,
    };
    let edge = start_edge(cfg).await;
    let http = edge.http;
    wait_for("the edge to answer", 10, || async move {
        probe(http, CLIENT, "edge", "/api/v1/info")
            .await
            .is_ok_and(|(s, _)| s == 200)
    })
    .await;

    let mut loris = SlowLoris::start(edge.http, ATTACKER, 300, Duration::from_secs(1));
    wait_for("the loris to hold its connections", 10, || {
        let c = loris.counts();
        async move { c.open == 200 && c.refused + c.closed == 100 }
    })
    .await;

    let mut latencies = Vec::new();
    for _ in 0..100 {
        let (status, took) = probe(edge.http, CLIENT, "edge", "/api/v1/info")
            .await
            .unwrap();
        assert_eq!(status, 200);
        latencies.push(took);
    }
    let p99 = p99(&latencies);
    println!("firehose edge p99 under a 300-connection slow loris: {p99:?}");
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    assert!(loris.counts().open > 0, "the loris still held connections");
    let refused = [
        ("listener", "http"),
        ("reason", "max_connections_per_address"),
    ];
    assert_eq!(
        edge.metric("listener_connections_refused_total", &refused)
            .await,
        100.0
    );

    wait_for("the header timeout", 10, || {
        let c = loris.counts();
        async move { c.open == 0 }
    })
    .await;
    let closed = [("listener", "http"), ("reason", "header_timeout")];
    assert_eq!(
        edge.metric("listener_connections_closed_total", &closed)
            .await,
        200.0
    );
    loris.stop();
    edge.shutdown.cancel();
}
