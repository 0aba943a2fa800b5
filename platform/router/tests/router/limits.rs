//! The client listener's abuse limits: a slow-loris client neither starves routing nor holds
//! more connections than its address may; WebSocket-style tunnels count against the
//! connection cap for as long as they are open, and idle ones are closed.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use hydrant_router::{Config, StaticRoute};
use hydrant_testkit::{SlowLoris, p99, probe, wait_for};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{Backend, DEADLINE, TestRouter, open_tunnel, static_route};

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn route(host: &str, backend: &Backend) -> StaticRoute {
    static_route(host, &[backend.addr])
}

#[tokio::test]
async fn a_slow_loris_neither_starves_routing_nor_holds_more_than_its_cap() {
    let backend = Backend::start("shop").await;
    let router = TestRouter::start(Config {
        routes: vec![route("shop.apps.localhost", &backend)],
        max_client_connections: 1000,
        max_connections_per_address: 200,
        header_read_timeout_secs: 3,
        idle_timeout_secs: 30,
        ..Config::default()
    })
    .await;
    router.wait_status("shop.apps.localhost", "/", 200).await;

    let mut loris = SlowLoris::start(router.addr, ATTACKER, 300, Duration::from_secs(1));
    wait_for(DEADLINE, "the loris to hold its connections", || {
        let c = loris.counts();
        async move { c.open == 200 && c.refused + c.closed == 100 }
    })
    .await;

    let mut latencies = Vec::new();
    for _ in 0..100 {
        let (status, took) = probe(router.addr, CLIENT, "shop.apps.localhost", "/")
            .await
            .unwrap();
        assert_eq!(status, 200);
        latencies.push(took);
    }
    let p99 = p99(&latencies);
    println!("router p99 under a 300-connection slow loris: {p99:?}");
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    assert!(loris.counts().open > 0, "the loris still held connections");
    assert_eq!(
        router
            .metric(
                "listener_connections_refused_total",
                "reason=\"max_connections_per_address\"",
            )
            .await,
        100.0
    );

    wait_for(DEADLINE, "the header timeout", || {
        let c = loris.counts();
        async move { c.open == 0 }
    })
    .await;
    assert_eq!(
        router
            .metric(
                "listener_connections_closed_total",
                "reason=\"header_timeout\"",
            )
            .await,
        200.0
    );
    loris.stop();
    router.stop().await;
}

/// Opens a tunnel through the router and checks it echoes.
async fn tunnel(router: &TestRouter) -> TcpStream {
    let (mut stream, head) = open_tunnel(router.addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping");
    stream
}

#[tokio::test]
async fn tunnels_count_against_the_cap_and_idle_ones_are_closed() {
    let backend = Backend::start("ws").await;
    let router = TestRouter::start(Config {
        routes: vec![
            route("ws.apps.localhost", &backend),
            route("shop.apps.localhost", &backend),
        ],
        max_client_connections: 3,
        max_connections_per_address: 0,
        idle_timeout_secs: 2,
        ..Config::default()
    })
    .await;
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        tunnels.push(tunnel(&router).await);
    }
    // Every slot is held by an open tunnel: the next client is refused at once.
    let (status, _) = probe(router.addr, CLIENT, "shop.apps.localhost", "/")
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert_eq!(
        router
            .metric(
                "listener_connections_refused_total",
                "reason=\"max_connections\"",
            )
            .await,
        1.0
    );
    assert_eq!(
        router
            .metric("listener_connections", "listener=\"http\"")
            .await,
        3.0
    );

    // Quiet tunnels are closed after the idle timeout, which frees their slots.
    for stream in &mut tunnels {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("the idle tunnel is closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    assert_eq!(
        router
            .metric(
                "listener_connections_closed_total",
                "reason=\"idle_timeout\"",
            )
            .await,
        3.0
    );
    router.wait_status("shop.apps.localhost", "/", 200).await;
    router.stop().await;
}
