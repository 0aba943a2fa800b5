//! Two health managers on one bus hold a lease (`healthmanager.lease`): only the holder acts.
//! A crash is restarted exactly once, by the holder; when the holder stops, the standby takes
//! the lease within the TTL plus two renewals and restarts the next crash itself.
//!
//! The cloud controller's API is unreachable, so restarts go straight to the cell on the bus
//! from the overheard start request, where the test's fake cell sees each one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hydrant_bus::messages::{self, ExecutorReply, InstanceState, StartInstance};
use hydrant_bus::{Bus, Config as BusConfig, Subscription};
use hydrant_emitter::Registry;
use hydrant_testkit::{scrape_metric, wait_for};
use tokio_util::sync::CancellationToken;

mod support;

use support::{crash, heartbeat, place, start_hm, start_request, without_api};

const WAIT: Duration = Duration::from_secs(20);
const BUS: &str = "hm-lease-test";

async fn start_lease_holder(id: &str) -> (CancellationToken, SocketAddr) {
    start_hm(hydrant_healthmanager::Config {
        instance_id: Some(id.into()),
        lease_ttl_secs: 2,
        lease_renew_ms: 500,
        ..without_api(BusConfig::inprocess(BUS))
    })
    .await
}

async fn held(admin: SocketAddr) -> bool {
    scrape_metric(admin, "healthmanager_lease_held", &[]).await == 1.0
}

/// Places `instance` on e1 as the controller would (placement, then the start the health
/// managers overhear), reports it running, then crashed; returns the restarts e1 got within
/// `within`, each answered "accepted".
async fn crash_and_collect(
    placer: &Bus,
    cell: &Bus,
    starts: &mut Subscription,
    instance: &str,
    within: Duration,
) -> Vec<StartInstance> {
    place(placer, &start_request("e1", instance, "app"));
    let placed = tokio::time::timeout(WAIT, starts.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(placed.json::<StartInstance>().unwrap().instance, instance);
    cell.publish_json(
        &messages::executor_heartbeat_subject("e1"),
        &heartbeat("e1", instance, InstanceState::Running),
    )
    .unwrap();
    // Give both copies the heartbeat before the crash.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cell.publish_json(
        &messages::executor_crash_subject("e1"),
        &crash("e1", instance),
    )
    .unwrap();
    let mut restarts = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, starts.next()).await {
        let restarted: StartInstance = message.json().unwrap();
        let reply = ExecutorReply {
            executor_id: "e1".into(),
            accepted: true,
            reason: None,
        };
        cell.reply(&message, messages::encode(&reply).unwrap())
            .unwrap();
        // The replacement runs: every copy sees index 0 live again.
        cell.publish_json(
            &messages::executor_heartbeat_subject("e1"),
            &heartbeat("e1", &restarted.instance, InstanceState::Running),
        )
        .unwrap();
        restarts.push(restarted);
    }
    restarts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_restarts_and_the_standby_takes_over_when_it_stops() {
    let (hm_a, admin_a) = start_lease_holder("hm-a").await;
    wait_for(WAIT, "hm-a to hold the lease", || held(admin_a)).await;
    let (hm_b, admin_b) = start_lease_holder("hm-b").await;
    // hm-b hears hm-a's renewals and stands by.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(held(admin_a).await, "hm-a lost the lease to a newcomer");
    assert!(!held(admin_b).await, "hm-b holds the lease beside hm-a");

    let placer = Bus::connect(
        &BusConfig::inprocess(BUS),
        &Registry::new("cloudcontroller", "0"),
    )
    .await
    .unwrap();
    let cell = Bus::connect(&BusConfig::inprocess(BUS), &Registry::new("executor", "e1"))
        .await
        .unwrap();
    let mut starts = cell
        .subscribe(&messages::executor_start_subject("e1"))
        .await
        .unwrap();

    // A crash is restarted once, by the holder.
    let restarts =
        crash_and_collect(&placer, &cell, &mut starts, "i-1", Duration::from_secs(3)).await;
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert_eq!(
        scrape_metric(admin_a, "healthmanager_restarts_total", &[]).await,
        1.0
    );
    assert_eq!(
        scrape_metric(admin_b, "healthmanager_restarts_total", &[]).await,
        0.0
    );

    // The holder stops; the standby holds within the TTL (2 s) plus two renewals.
    let stopped = Instant::now();
    hm_a.cancel();
    wait_for(Duration::from_secs(10), "hm-b to take the lease", || {
        held(admin_b)
    })
    .await;
    let took = stopped.elapsed();
    assert!(took <= Duration::from_secs(5), "took {took:?}");

    // ... and restarts the next crash itself.
    let restarts =
        crash_and_collect(&placer, &cell, &mut starts, "i-2", Duration::from_secs(3)).await;
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert_eq!(
        scrape_metric(admin_b, "healthmanager_restarts_total", &[]).await,
        1.0
    );
    hm_b.cancel();
}
