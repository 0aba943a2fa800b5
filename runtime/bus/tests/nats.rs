//! The NATS backend against a real `nats-server` (Debian's 2.9): the shared behaviour suite,
//! plus what only a real server can show — an unreachable server is a clear error, publishes
//! never wait on a dead server, and subscriptions and announcers survive a server restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[path = "support/nats_server.rs"]
mod nats_server;
#[macro_use]
#[path = "support/suite.rs"]
mod suite;

use std::time::Duration;

use bytes::Bytes;
use hydrant_bus::messages::ROUTER_REGISTER;
use hydrant_bus::{Announcer, Bus, BusStatus, Config, Error};
use hydrant_emitter::Registry;
use nats_server::NatsServer;
use suite::{Pair, SUBSCRIBER_BUFFER, eventually, recv};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn config(server: &NatsServer) -> Config {
    Config {
        subscriber_buffer: SUBSCRIBER_BUFFER,
        ..Config::nats(&server.url())
    }
}

async fn setup() -> (NatsServer, Pair) {
    let server = NatsServer::start();
    let pair = suite::connect_pair(&config(&server)).await;
    (server, pair)
}

backend_suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    setup
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_error() {
    // Start and stop a server to get a port that is certainly closed.
    let mut server = NatsServer::start();
    server.kill();
    let err = Bus::connect(&config(&server), &Registry::new("test", "0"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach NATS at nats://127.0.0.1:{}: connection refused; is nats-server running?",
            server.port()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_survives_a_server_restart() {
    let (mut server, p) = setup().await;
    let mut sub = p.subscriber.subscribe(ROUTER_REGISTER).await.unwrap();
    let mut watch = p.subscriber.watch_status();
    p.publisher
        .publish(ROUTER_REGISTER, Bytes::from_static(b"before"))
        .unwrap();
    assert_eq!(&recv(&mut sub).await.payload[..], b"before");
    assert_eq!(*watch.borrow_and_update(), BusStatus::Connected);

    let killed_at = Instant::now();
    server.kill();
    eventually("both handles report the outage", || {
        !p.subscriber.status().is_connected() && !p.publisher.status().is_connected()
    })
    .await;
    let BusStatus::Disconnected { since } = p.subscriber.status() else {
        unreachable!()
    };
    assert!(since >= killed_at, "outage dated from when it began");
    assert!(watch.has_changed().unwrap(), "watchers are woken");
    let err = p
        .publisher
        .request("svc.any", Bytes::new(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");

    server.restart();
    eventually("both handles reconnect", || {
        p.subscriber.status().is_connected() && p.publisher.status().is_connected()
    })
    .await;

    // The two connections re-register independently, so the first publishes after the
    // publisher reconnects may beat the subscriber's re-subscription. Publish until one lands:
    // the delivery, within the deadline, is what a router relies on.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    let received = loop {
        assert!(
            Instant::now() < deadline,
            "no message published after the restart reached the old subscription"
        );
        n += 1;
        p.publisher
            .publish(ROUTER_REGISTER, Bytes::from(format!("after-{n}")))
            .unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await
            && m.payload.starts_with(b"after-")
        {
            break m;
        }
    };
    assert_eq!(received.subject, ROUTER_REGISTER);
    assert!(p.subscriber_registry.counter_sum("bus.reconnects", &[]) >= 1);
    assert!(p.publisher_registry.counter_sum("bus.reconnects", &[]) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcer_repairs_the_table_at_once_after_a_restart() {
    let mut server = NatsServer::start();
    let registry = Registry::new("executor", "0");
    let bus = Bus::connect(&config(&server), &registry).await.unwrap();
    let mut sub = bus.subscribe(ROUTER_REGISTER).await.unwrap();
    let shutdown = CancellationToken::new();
    // An interval far beyond the test: anything after the first message is the reconnect.
    let announcer = Announcer::new(&bus, ROUTER_REGISTER, Duration::from_secs(3600))
        .spawn(shutdown.clone(), || vec![Bytes::from_static(b"route")])
        .await
        .unwrap();
    assert_eq!(&recv(&mut sub).await.payload[..], b"route");

    server.kill();
    eventually("outage noticed", || !bus.status().is_connected()).await;
    server.restart();
    let m = recv(&mut sub).await;
    assert_eq!(&m.payload[..], b"route");
    assert_eq!(
        registry.counter_sum("bus.announcements", &[("subject", ROUTER_REGISTER)]),
        2
    );
    shutdown.cancel();
    announcer.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_never_waits_on_a_dead_server() {
    let mut server = NatsServer::start();
    let registry = Registry::new("test", "0");
    let config = Config {
        publish_buffer: 100,
        ..config(&server)
    };
    let bus = Bus::connect(&config, &registry).await.unwrap();
    assert!(matches!(
        bus.simulate_outage(true),
        Err(Error::Unsupported(_))
    ));
    server.kill();
    eventually("outage noticed", || !bus.status().is_connected()).await;

    const N: u64 = 10_000;
    let started = Instant::now();
    for i in 0..N {
        bus.publish("spool.test", Bytes::from(i.to_string()))
            .unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "publishing {N} messages to a dead server took {:?}",
        started.elapsed()
    );
    let dropped = registry.counter_sum("bus.dropped", &[("reason", "publish_queue_full")]);
    assert!(
        (N - 101..=N - 100).contains(&dropped),
        "only the bounded queue is kept: dropped {dropped}"
    );

    // A subscription made during the outage returns at once and works after the restart.
    let mut late = tokio::time::timeout(Duration::from_secs(2), bus.subscribe("late.sub"))
        .await
        .expect("subscribe must not hang while the server is down")
        .unwrap();

    server.restart();
    eventually("reconnected", || bus.status().is_connected()).await;
    tokio::time::timeout(Duration::from_secs(10), bus.flush())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(registry.counter_sum("bus.published", &[]), N);
    assert_eq!(
        registry.counter_sum("bus.sent", &[]) + dropped,
        N,
        "ledger: published = sent + dropped once the queue drains"
    );
    bus.publish("late.sub", Bytes::from_static(b"hello"))
        .unwrap();
    assert_eq!(&recv(&mut late).await.payload[..], b"hello");
}
