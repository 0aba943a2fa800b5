//! The announcer keeps soft state fresh without retry storms: it announces at once, then every
//! interval, at once on `router.start` (bursts collapse), at once when the bus returns, and
//! stays quiet while the bus is down. Virtual time makes the 20 s intervals instant.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::time::Duration;

use bytes::Bytes;
use hydrant_bus::messages::{ROUTER_REGISTER, ROUTER_START};
use hydrant_bus::{Announcer, Bus, Error, Subscription};
use hydrant_emitter::Registry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const INTERVAL: Duration = Duration::from_secs(20);

async fn next(sub: &mut Subscription) -> (Instant, Bytes) {
    let m = tokio::time::timeout(Duration::from_secs(3600), sub.next())
        .await
        .expect("no announcement within an hour")
        .expect("subscription closed");
    (Instant::now(), m.payload)
}

fn routes() -> Vec<Bytes> {
    vec![Bytes::from_static(b"r1"), Bytes::from_static(b"r2")]
}

async fn setup(
    announcer: impl FnOnce(&Bus) -> Announcer,
) -> (Bus, Registry, Subscription, CancellationToken) {
    let registry = Registry::new("executor", "0");
    let bus = Bus::isolated(&registry);
    let sub = bus.subscribe(ROUTER_REGISTER).await.unwrap();
    let shutdown = CancellationToken::new();
    announcer(&bus)
        .spawn(shutdown.clone(), routes)
        .await
        .unwrap();
    (bus, registry, sub, shutdown)
}

fn rounds(registry: &Registry) -> u64 {
    registry.counter_sum("bus.announcements", &[("subject", ROUTER_REGISTER)])
}

#[tokio::test(start_paused = true)]
async fn announces_at_once_then_every_interval() {
    let t0 = Instant::now();
    let (_bus, registry, mut sub, _shutdown) =
        setup(|bus| Announcer::new(bus, ROUTER_REGISTER, INTERVAL)).await;
    for round in 0..4u32 {
        let (at, first) = next(&mut sub).await;
        let (_, second) = next(&mut sub).await;
        assert_eq!((&first[..], &second[..]), (&b"r1"[..], &b"r2"[..]));
        assert_eq!(at - t0, INTERVAL * round, "round {round}");
    }
    assert_eq!(rounds(&registry), 4);
}

#[tokio::test(start_paused = true)]
async fn router_start_triggers_at_once_and_bursts_collapse() {
    let t0 = Instant::now();
    let (bus, registry, mut sub, _shutdown) =
        setup(|bus| Announcer::new(bus, ROUTER_REGISTER, INTERVAL).retrigger_on(ROUTER_START))
            .await;
    next(&mut sub).await;
    next(&mut sub).await;

    tokio::time::sleep(Duration::from_secs(5)).await;
    bus.publish(ROUTER_START, Bytes::from_static(b"{}"))
        .unwrap();
    let (at, _) = next(&mut sub).await;
    next(&mut sub).await;
    assert_eq!(
        at - t0,
        Duration::from_secs(5),
        "a router.start is answered at once"
    );

    // Fifty routers restarting together cost one more round, a min_gap later, not fifty.
    for _ in 0..50 {
        bus.publish(ROUTER_START, Bytes::from_static(b"{}"))
            .unwrap();
    }
    let (at, _) = next(&mut sub).await;
    next(&mut sub).await;
    assert_eq!(at - t0, Duration::from_secs(6));
    // The next round is the periodic one, an interval after the last.
    let (at, _) = next(&mut sub).await;
    assert_eq!(at - t0, Duration::from_secs(26));
    assert_eq!(rounds(&registry), 4);
}

#[tokio::test(start_paused = true)]
async fn quiet_while_the_bus_is_down_and_at_once_when_it_returns() {
    let (bus, registry, mut sub, _shutdown) =
        setup(|bus| Announcer::new(bus, ROUTER_REGISTER, INTERVAL)).await;
    next(&mut sub).await;
    next(&mut sub).await;

    bus.simulate_outage(true).unwrap();
    tokio::time::sleep(INTERVAL * 5).await;
    assert_eq!(rounds(&registry), 1, "nothing announced into a dead bus");
    assert_eq!(registry.counter_sum("bus.published", &[]), 2);
    assert_eq!(registry.counter_sum("bus.dropped", &[]), 0);

    let back = Instant::now();
    bus.simulate_outage(false).unwrap();
    let (at, _) = next(&mut sub).await;
    assert_eq!(at, back, "the reconnect is announced at once");
    assert_eq!(rounds(&registry), 2);
}

#[tokio::test(start_paused = true)]
async fn announce_now_and_shutdown() {
    let registry = Registry::new("executor", "0");
    let bus = Bus::isolated(&registry);
    let mut sub = bus.subscribe(ROUTER_REGISTER).await.unwrap();
    let shutdown = CancellationToken::new();
    let handle = Announcer::new(&bus, ROUTER_REGISTER, INTERVAL)
        .min_gap(Duration::from_secs(2))
        .spawn(shutdown.clone(), || vec![Bytes::from_static(b"only")])
        .await
        .unwrap();
    let (t0, _) = next(&mut sub).await;
    // A local change (an instance became RUNNING) is announced once min_gap allows.
    handle.announce_now();
    let (at, _) = next(&mut sub).await;
    assert_eq!(at - t0, Duration::from_secs(2));

    shutdown.cancel();
    handle.stopped().await;
    tokio::time::sleep(INTERVAL * 3).await;
    assert!(sub.try_next().is_none(), "a stopped announcer stays quiet");
}

#[tokio::test(start_paused = true)]
async fn trigger_jitter_spreads_answers_within_the_bound() {
    let (bus, _registry, mut sub, _shutdown) = setup(|bus| {
        Announcer::new(bus, ROUTER_REGISTER, INTERVAL)
            .retrigger_on(ROUTER_START)
            .trigger_jitter(Duration::from_secs(4))
    })
    .await;
    next(&mut sub).await;
    next(&mut sub).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let sent = Instant::now();
    bus.publish(ROUTER_START, Bytes::new()).unwrap();
    let (at, _) = next(&mut sub).await;
    assert!(at - sent <= Duration::from_secs(4), "{:?}", at - sent);
}

#[tokio::test]
async fn bad_announcers_are_refused() {
    let bus = Bus::isolated(&Registry::new("executor", "0"));
    let err = Announcer::new(&bus, "router.*", INTERVAL)
        .spawn(CancellationToken::new(), Vec::new)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSubject { .. }), "{err}");
    let err = Announcer::new(&bus, ROUTER_REGISTER, Duration::ZERO)
        .spawn(CancellationToken::new(), Vec::new)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("interval"), "{err}");
    let err = Announcer::new(&bus, ROUTER_REGISTER, INTERVAL)
        .retrigger_on("a..b")
        .spawn(CancellationToken::new(), Vec::new)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSubject { .. }), "{err}");
}
