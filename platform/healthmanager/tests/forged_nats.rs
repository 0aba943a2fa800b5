//! The health manager on the authenticated bus: a real `nats-server` running the config
//! `hydrant_bus::nats_config` writes, every party with its own certificate (the health
//! manager, a placer with the cloud controller's identity, cells `e1` and `e2` with their cell
//! identities). The cloud controller's API is down, so a crash the health manager believes is
//! restarted straight from the overheard start request, on the bus. A hostile `e2` reporting
//! `e1`'s instance crashed is refused by the server on `e1`'s subject and dropped and counted by
//! the health manager on its own; nothing is restarted. `e1`'s own crash report is.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod support;

#[allow(dead_code, reason = "shared with the bus crate's NATS tests")]
#[path = "../../../runtime/bus/tests/support/nats_server.rs"]
mod nats_server;
#[allow(dead_code, reason = "shared with the bus crate's permission tests")]
#[path = "../../../runtime/bus/tests/support/secure_bus.rs"]
mod secure_bus;

use std::time::Duration;

use hydrant_bus::messages::{self, ExecutorReply, InstanceState, StartInstance};
use hydrant_testkit::{scrape_metric, wait_for};
use hydrant_tls::Identity;
use secure_bus::SecureBus;
use support::{
    crash, forged_reports_refused, heartbeat, place, start_hm, start_request, without_api,
};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_crash_on_the_authenticated_bus_restarts_nothing() {
    let fixture = SecureBus::start();
    let (hm, admin) = start_hm(without_api(fixture.role(Identity::HealthManager))).await;
    let (placer, _) = fixture.connect(Identity::CloudController).await;
    let (e1, _) = fixture.cell("e1").await;
    let (e2, e2_registry) = fixture.cell("e2").await;
    let mut e1_starts = e1
        .subscribe(&messages::executor_start_subject("e1"))
        .await
        .unwrap();
    let mut e2_starts = e2
        .subscribe(&messages::executor_start_subject("e2"))
        .await
        .unwrap();

    // The controller places app-1's instance 0 on e1: the placement, then the start (which
    // the health manager overhears and would copy to restart it).
    let start = start_request("e1", "i-1", "victim");
    place(&placer, &start);
    let first = tokio::time::timeout(WAIT, e1_starts.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.json::<StartInstance>().unwrap().instance, "i-1");
    // e1 runs it (and e2 heartbeats, so it is a restart candidate with room).
    let running = heartbeat("e1", "i-1", InstanceState::Running);
    e1.publish_json(&messages::executor_heartbeat_subject("e1"), &running)
        .unwrap();
    let mut idle = heartbeat("e2", "unused", InstanceState::Running);
    idle.instances.clear();
    e2.publish_json(&messages::executor_heartbeat_subject("e2"), &idle)
        .unwrap();

    // e2 on e1's subject: the server refuses it.
    e2.publish_json(&messages::executor_crash_subject("e1"), &crash("e1", "i-1"))
        .unwrap();
    // e2 on its own subject, as itself and as e1, and a heartbeat showing it crashed.
    let own = messages::executor_crash_subject("e2");
    e2.publish_json(&own, &crash("e2", "i-1")).unwrap();
    e2.publish_json(&own, &crash("e1", "i-1")).unwrap();
    e2.publish_json(
        &messages::executor_heartbeat_subject("e2"),
        &heartbeat("e2", "i-1", InstanceState::Crashed),
    )
    .unwrap();
    wait_for(
        WAIT,
        "the server to refuse e2's publish on e1's subject",
        || async {
            e2_registry.counter_sum("bus.refused", &[("reason", "permissions_violation")]) == 1
        },
    )
    .await;
    // Handled and refused before the counters moved.
    forged_reports_refused(admin, WAIT).await;
    assert!(e1_starts.try_next().is_none());
    assert!(e2_starts.try_next().is_none());

    // e1's own report is restarted from the overheard start, under a fresh instance guid.
    e1.publish_json(&messages::executor_crash_subject("e1"), &crash("e1", "i-1"))
        .unwrap();
    let restart = tokio::select! {
        m = e1_starts.next() => (m.unwrap(), &e1),
        m = e2_starts.next() => (m.unwrap(), &e2),
        () = tokio::time::sleep(WAIT) => panic!("no restart after e1's genuine crash"),
    };
    let (message, cell) = restart;
    let restarted: StartInstance = message.json().unwrap();
    assert_eq!(restarted.app, "app-1");
    assert_ne!(restarted.instance, "i-1");
    let reply = ExecutorReply {
        executor_id: restarted.executor_id.clone(),
        accepted: true,
        reason: None,
    };
    cell.reply(&message, messages::encode(&reply).unwrap())
        .unwrap();
    assert_eq!(
        scrape_metric(admin, "healthmanager_crashes_total", &[]).await,
        1.0
    );
    hm.cancel();
}
