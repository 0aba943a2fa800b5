//! Dopplers added and lost while logs flow: real dopplers announce themselves on an in-process
//! bus, an agent with `dopplers = []` follows them. A doppler started later gets a lane and its
//! share of the sources without a restart; a doppler that stops loses its lane once its
//! announcement lapses, and what is emitted from then on is delivered by the survivor or
//! counted: `emitted = delivered + Σ agent.dropped`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hydrant_envelope::v2;
use hydrant_envelope::v2::ingress_client::IngressClient;
use hydrant_envelope::wire::{BatchIter, EnvelopeView};
use hydrant_testkit::wait_for;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod support;

use support::{Role, log, metric, start_agent, start_doppler};

/// Sources the test emits for: enough that each of two dopplers is some source's first choice.
const SOURCES: usize = 64;

/// How long a condition gets (announcements every 200 ms, TTLs of 1 s).
const WAIT: Duration = Duration::from_secs(20);

/// A real doppler announcing itself every 200 ms (TTL: 1 s) on `bus`.
async fn doppler(id: &str, bus: &hydrant_bus::Config) -> Role {
    start_doppler(hydrant_doppler::Config {
        instance_id: id.to_owned(),
        replay_ring_bytes: 0,
        shutdown_grace_secs: 1,
        bus: Some(bus.clone()),
        announce_interval_ms: 200,
        ..hydrant_doppler::Config::default()
    })
    .await
}

/// An agent with no static dopplers, following `bus`.
async fn agent(bus: &hydrant_bus::Config) -> Role {
    start_agent(hydrant_agent::Config {
        dopplers: vec![],
        bus: Some(bus.clone()),
        reconnect_max_backoff_ms: 200,
        ..hydrant_agent::Config::default()
    })
    .await
}

async fn connections(agent: &Role) -> u64 {
    metric(agent.admin, "agent_doppler_connections", &[]).await
}

/// `rounds` log lines from each source, in one `Send` per round.
async fn emit(agent: &Role, rounds: usize) -> u64 {
    let mut client = IngressClient::connect(format!("http://{}", agent.addr))
        .await
        .unwrap();
    for round in 0..rounds {
        let batch = (0..SOURCES)
            .map(|i| log(&format!("app-{i}"), format!("line {round}")))
            .collect();
        client
            .send(v2::EnvelopeBatch { batch })
            .await
            .expect("the agent takes every batch");
    }
    (rounds * SOURCES) as u64
}

/// Counts the test's app lines arriving at `doppler`'s v2 Egress until `stop`.
async fn count_delivered(doppler: SocketAddr, stop: CancellationToken) -> Arc<AtomicU64> {
    let seen = Arc::new(AtomicU64::new(0));
    let mut stream =
        support::subscribe_logs(doppler, "follow-test".to_owned(), String::new()).await;
    let out = seen.clone();
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                () = stop.cancelled() => return,
            };
            let Ok(Some(batch)) = message else { return };
            let ours = BatchIter::new(&batch)
                .flatten()
                .filter(|e| EnvelopeView::parse(e).is_ok_and(|v| v.source_id.starts_with("app-")))
                .count();
            out.fetch_add(ours as u64, Ordering::Relaxed);
        }
    });
    seen
}

/// The agent's ledger: (ingress, egress to any doppler, dropped for any reason).
async fn ledger(agent: &Role) -> (u64, u64, u64) {
    (
        metric(agent.admin, "agent_ingress_total", &[]).await,
        metric(agent.admin, "agent_egress_total", &[]).await,
        metric(agent.admin, "agent_dropped_total", &[]).await,
    )
}

/// Waits until everything that entered the agent has left it or been counted.
async fn settled(agent: &Role) -> (u64, u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = ledger(agent).await;
        if l.0 == l.1 + l.2 {
            return l;
        }
        assert!(Instant::now() < deadline, "ledger never balanced: {l:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doppler_added_takes_its_share_and_one_lost_is_routed_around_with_the_ledger_balanced() {
    let bus = hydrant_bus::Config::inprocess(&format!("follow-{}", std::process::id()));
    let a = doppler("doppler-a", &bus).await;
    let agent = agent(&bus).await;
    wait_for(WAIT, "the agent follows doppler A", || async {
        connections(&agent).await == 1
    })
    .await;
    let a_url = format!("http://{}", a.addr);
    emit(&agent, 5).await;
    settled(&agent).await;
    assert_eq!(
        metric(a.admin, "doppler_ingress_total", &[]).await,
        5 * SOURCES as u64,
        "with one doppler, A gets everything"
    );

    // B joins: within one announce interval (plus its connect) it has a lane.
    let b = doppler("doppler-b", &bus).await;
    let b_url = format!("http://{}", b.addr);
    let joined = Instant::now();
    wait_for(WAIT, "the agent follows doppler B", || async {
        connections(&agent).await == 2
    })
    .await;
    let took = joined.elapsed();
    let stop = CancellationToken::new();
    let delivered_b = count_delivered(b.addr, stop.clone()).await;
    let (a_before, b_before) = (
        metric(agent.admin, "agent_egress_total", &[("doppler", &a_url)]).await,
        metric(agent.admin, "agent_egress_total", &[("doppler", &b_url)]).await,
    );
    emit(&agent, 5).await;
    let both = settled(&agent).await;
    let a_share =
        metric(agent.admin, "agent_egress_total", &[("doppler", &a_url)]).await - a_before;
    let b_share =
        metric(agent.admin, "agent_egress_total", &[("doppler", &b_url)]).await - b_before;
    assert!(
        a_share > 0 && b_share > 0,
        "both lanes carry sources: A {a_share}, B {b_share}"
    );
    assert_eq!(a_share + b_share, 5 * SOURCES as u64);
    wait_for(WAIT, "B's ingress counts its share", || async {
        metric(b.admin, "doppler_ingress_total", &[]).await == b_share
    })
    .await;
    wait_for(WAIT, "B's subscriber gets B's share", || async {
        delivered_b.load(Ordering::Relaxed) == b_share
    })
    .await;

    // A stops: its stream breaks and its announcement lapses; the agent retires its lane.
    a.shutdown.cancel();
    let stopped = Instant::now();
    wait_for(WAIT, "A's announcement lapses", || async {
        metric(
            agent.admin,
            "agent_doppler_changes_total",
            &[("change", "lapsed")],
        )
        .await
            == 1
    })
    .await;
    let lapse = stopped.elapsed();
    wait_for(WAIT, "only B is connected", || async {
        connections(&agent).await == 1
    })
    .await;
    let before = settled(&agent).await;
    let delivered_before = delivered_b.load(Ordering::Relaxed);
    let emitted = emit(&agent, 10).await;
    let after = settled(&agent).await;
    assert_eq!(after.0 - before.0, emitted, "every line entered the agent");
    let dropped = after.2 - before.2;
    let to_b = after.1 - before.1;
    wait_for(
        WAIT,
        "B's subscriber gets what the agent sent it",
        || async { delivered_b.load(Ordering::Relaxed) - delivered_before == to_b },
    )
    .await;
    let delivered = delivered_b.load(Ordering::Relaxed) - delivered_before;
    assert_eq!(
        emitted,
        delivered + dropped,
        "emitted = delivered + counted drops after A's lapse"
    );
    assert_eq!(
        metric(agent.admin, "agent_egress_total", &[("doppler", &a_url)]).await,
        a_before + a_share,
        "nothing more went to the lapsed doppler"
    );
    eprintln!(
        "doppler B followed {took:?} after it started; A's lapse noticed {lapse:?} after it \
         stopped; after the lapse {emitted} emitted, {delivered} delivered through B, \
         {dropped} dropped (before: {both:?})"
    );
    stop.cancel();
    agent.shutdown.cancel();
    b.shutdown.cancel();
}
