//! The in-process bus (the micro cloud's default): the shared behaviour suite, plus what only
//! this backend has — roles in one process sharing a hub by name, and simulated outages that
//! let other crates test "the bus is down" without a server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[macro_use]
#[path = "support/suite.rs"]
mod suite;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hydrant_bus::{Bus, BusStatus, Config, Error};
use hydrant_emitter::Registry;
use suite::{Pair, SUBSCRIBER_BUFFER, recv};

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn pair() -> Pair {
    let config = Config {
        subscriber_buffer: SUBSCRIBER_BUFFER,
        ..Config::inprocess(&unique("suite"))
    };
    suite::connect_pair(&config).await
}

/// A pair on a hub of its own; nothing else to keep alive.
async fn setup() -> ((), Pair) {
    ((), pair().await)
}

backend_suite!(
    #[tokio::test]
    setup
);

#[tokio::test]
async fn roles_in_one_process_share_the_default_hub() {
    let router = Bus::connect(&Config::default(), &Registry::new("router", "0"))
        .await
        .unwrap();
    let executor = Bus::connect(&Config::default(), &Registry::new("executor", "0"))
        .await
        .unwrap();
    assert_eq!(router.url(), "inprocess://default");
    // A subject no other test uses, since this hub is process-wide.
    let subject = unique("shared.register");
    let mut sub = router.subscribe(&subject).await.unwrap();
    executor
        .publish(&subject, Bytes::from_static(b"route"))
        .unwrap();
    assert_eq!(&recv(&mut sub).await.payload[..], b"route");
}

#[tokio::test]
async fn separate_hubs_do_not_leak() {
    let registry = Registry::new("test", "0");
    let a = Bus::connect(&Config::inprocess(&unique("a")), &registry)
        .await
        .unwrap();
    let b = Bus::connect(&Config::inprocess(&unique("b")), &registry)
        .await
        .unwrap();
    let isolated = Bus::isolated(&registry);
    let _listening = a.subscribe("leak.check").await.unwrap();
    for other in [&b, &isolated] {
        let err = other
            .request("leak.check", Bytes::new(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NoResponders { .. }), "{err}");
    }
    // Clones of an isolated bus do share it.
    let _sub = isolated.subscribe("iso.check").await.unwrap();
    let err = isolated
        .clone()
        .request("iso.check", Bytes::new(), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn a_simulated_outage_is_visible_counted_and_survived() {
    let p = pair().await;
    let mut sub = p.subscriber.subscribe("router.register").await.unwrap();
    let mut watch = p.subscriber.watch_status();
    assert_eq!(*watch.borrow_and_update(), BusStatus::Connected);

    p.publisher.simulate_outage(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .unwrap()
        .unwrap();
    let status = *watch.borrow_and_update();
    assert!(
        matches!(status, BusStatus::Disconnected { .. }),
        "{status:?}"
    );
    assert!(!p.publisher.status().is_connected(), "every handle sees it");

    // Publishing still returns at once; the loss is counted, not hidden.
    p.publisher
        .publish("router.register", Bytes::from_static(b"lost"))
        .unwrap();
    let r = &p.publisher_registry;
    assert_eq!(r.counter_sum("bus.published", &[]), 1);
    assert_eq!(
        r.counter_sum("bus.dropped", &[("reason", "disconnected")]),
        1
    );
    assert_eq!(r.counter_sum("bus.sent", &[]), 0);
    let err = p
        .publisher
        .request("router.greet", Bytes::new(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
    let metrics = p.subscriber_registry.render_prometheus();
    assert!(
        metrics.contains(
            "bus_connected{source_id=\"test-subscriber\",instance_id=\"0\",backend=\"inprocess\"} 0"
        ),
        "{metrics}"
    );

    p.publisher.simulate_outage(false).unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*watch.borrow_and_update(), BusStatus::Connected);
    p.publisher
        .publish("router.register", Bytes::from_static(b"after"))
        .unwrap();
    let m = recv(&mut sub).await;
    assert_eq!(&m.payload[..], b"after", "the lost message never shows up");
    assert_eq!(p.subscriber_registry.counter_sum("bus.reconnects", &[]), 1);
    // Ending an outage that is not happening changes nothing.
    p.publisher.simulate_outage(false).unwrap();
    assert_eq!(p.subscriber_registry.counter_sum("bus.reconnects", &[]), 1);
}

#[tokio::test]
async fn connect_rejects_a_bad_config_with_a_clear_message() {
    let registry = Registry::new("test", "0");
    let config = Config {
        url: "tcp://127.0.0.1:4222".into(),
        ..Config::default()
    };
    let err = Bus::connect(&config, &registry).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("bus.url"), "{err}");
    let config = Config {
        subscriber_buffer: 0,
        ..Config::default()
    };
    let err = Bus::connect(&config, &registry).await.unwrap_err();
    assert!(err.to_string().contains("subscriber_buffer"), "{err}");
}

#[tokio::test]
async fn a_group_member_with_a_full_queue_does_not_cost_the_group_a_message() {
    let p = pair().await;
    let mut busy = p.subscriber.queue_subscribe("jobs", "g").await.unwrap();
    let mut idle = p.subscriber.queue_subscribe("jobs", "g").await.unwrap();
    // Fill `busy` (and `idle` half) without reading; every job must still land somewhere.
    let total = SUBSCRIBER_BUFFER * 2;
    for i in 0..total {
        p.publisher
            .publish("jobs", Bytes::from(i.to_string()))
            .unwrap();
    }
    assert_eq!(busy.len() + idle.len(), total);
    assert_eq!(
        p.subscriber_registry
            .counter_sum("bus.dropped", &[("reason", "subscriber_queue_full")]),
        0
    );
    // Both full now: the next job is dropped once, and counted once.
    p.publisher.publish("jobs", Bytes::new()).unwrap();
    assert_eq!(
        p.subscriber_registry
            .counter_sum("bus.dropped", &[("reason", "subscriber_queue_full")]),
        1
    );
    assert!(busy.try_next().is_some() && idle.try_next().is_some());
}
