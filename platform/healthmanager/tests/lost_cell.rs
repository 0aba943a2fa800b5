//! A lost cell's last heartbeat stops vouching for its instances the moment its presence
//! lapses. Cell `e1` is lost after the controller already placed `e1`'s index 0 again on `e2`;
//! `e2`'s copy then crashes. While `e1` is present its heartbeat shows index 0 running, so the
//! health manager leaves the index alone; once `e1`'s presence (1 s TTL) lapses, the restart
//! goes to `e2` at once, not after `executor_timeout_secs` (30 s) of silence.
//!
//! The cloud controller's API is unreachable, so the restart goes straight to the cell from
//! the start request the health manager overheard, where the test's fake `e2` sees it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod support;

use std::time::{Duration, Instant};

use hydrant_bus::messages::{self, CellPresence, ExecutorReply, InstanceState, StartInstance};
use hydrant_bus::{Bus, Config as BusConfig};
use hydrant_emitter::Registry;
use hydrant_testkit::{scrape_metric, wait_for};
use support::{crash, heartbeat, place, start_hm, start_request, without_api};
use tokio_util::sync::CancellationToken;

const BUS: &str = "hm-lost-cell-test";
const WAIT: Duration = Duration::from_secs(10);

async fn connect(role: &str, id: &str) -> Bus {
    Bus::connect(&BusConfig::inprocess(BUS), &Registry::new(role, id))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_cells_last_heartbeat_stops_holding_a_restart_when_its_presence_lapses() {
    // executor_timeout_secs stays at its 30 s default: the restart must not wait for it.
    let (hm, admin) = start_hm(without_api(BusConfig::inprocess(BUS))).await;
    // Subscribed and acting: a lone health manager holds the lease once its loop runs.
    wait_for(WAIT, "the health manager to hold the lease", || async {
        scrape_metric(admin, "healthmanager_lease_held", &[]).await == 1.0
    })
    .await;
    let placer = connect("cloudcontroller", "0").await;
    let e1 = connect("executor", "e1").await;
    let e2 = connect("executor", "e2").await;
    let mut e2_starts = e2
        .subscribe(&messages::executor_start_subject("e2"))
        .await
        .unwrap();

    // e1 runs index 0 as "a" and says it is present (1 s TTL) until the test stops it.
    place(&placer, &start_request("e1", "a", "app"));
    let e1_alive = CancellationToken::new();
    tokio::spawn({
        let (e1, alive) = (e1.clone(), e1_alive.clone());
        async move {
            let presence = CellPresence {
                id: "e1".into(),
                ttl_secs: 1,
                ..CellPresence::default()
            };
            while !alive.is_cancelled() {
                e1.publish_json(
                    &messages::executor_heartbeat_subject("e1"),
                    &heartbeat("e1", "a", InstanceState::Running),
                )
                .unwrap();
                e1.publish_json(&messages::executor_presence_subject("e1"), &presence)
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    // The controller placed index 0 again on e2 as "b" (e2 takes the start, runs it).
    place(&placer, &start_request("e2", "b", "app"));
    let first = tokio::time::timeout(WAIT, e2_starts.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.json::<StartInstance>().unwrap().instance, "b");
    // e2 heartbeats as a cell does, for the whole test.
    let e2_alive = CancellationToken::new();
    tokio::spawn({
        let (e2, alive) = (e2.clone(), e2_alive.clone());
        async move {
            while !alive.is_cancelled() {
                e2.publish_json(
                    &messages::executor_heartbeat_subject("e2"),
                    &heartbeat("e2", "b", InstanceState::Running),
                )
                .unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    // Both cells' heartbeats reach the health manager before the crash (each repeats every
    // 200 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;

    e2.publish_json(&messages::executor_crash_subject("e2"), &crash("e2", "b"))
        .unwrap();
    // While e1 is present its heartbeat shows index 0 running: nothing is restarted.
    let early = tokio::time::timeout(Duration::from_millis(1500), e2_starts.next()).await;
    assert!(
        early.is_err(),
        "restarted while e1 still ran index 0: {early:?}"
    );

    // e1 is lost: its presence lapses within its 1 s TTL.
    let lost = Instant::now();
    e1_alive.cancel();
    let restart = tokio::time::timeout(WAIT, e2_starts.next())
        .await
        .expect("a restart on e2 once e1's presence lapsed")
        .unwrap();
    let took = lost.elapsed();
    let restarted: StartInstance = restart.json().unwrap();
    assert_eq!((restarted.app.as_str(), restarted.index), ("app-1", 0));
    assert_ne!(restarted.instance, "b", "a fresh instance");
    e2.reply(
        &restart,
        messages::encode(&ExecutorReply {
            executor_id: "e2".into(),
            accepted: true,
            reason: None,
        })
        .unwrap(),
    )
    .unwrap();
    assert!(
        took < Duration::from_secs(5),
        "restarted {took:?} after e1 was lost (its TTL is 1 s)"
    );
    eprintln!("restarted {took:?} after the lost cell's last presence");
    e2_alive.cancel();
    hm.cancel();
}
