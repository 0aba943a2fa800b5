//! The executor leaving: SIGTERM (the role's shutdown) evacuates a cell while another healthy
//! cell advertises — its presence says `evacuating`, it refuses new work, its instances keep
//! running until the controller stops them (their replacements run elsewhere), and only then
//! does it exit; with nobody stopping them, the evacuation deadline ends it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

#[path = "support/rig.rs"]
mod rig;

use std::time::Duration;

use hydrant_bus::messages::{self, CellPresence, CellState, InstanceState};
use rig::Rig;

const WAIT: Duration = Duration::from_secs(10);
const APP: &str = "exec python3 -m http.server \"$PORT\" --bind 0.0.0.0\n";

/// Another cell that could take the instances, as its presence says.
fn advertise_peer(rig: &Rig) {
    let peer = CellPresence {
        id: "cell-peer".to_owned(),
        state: CellState::Healthy,
        ttl_secs: 15,
        ..CellPresence::default()
    };
    rig.bus
        .publish_json(&messages::executor_presence_subject("cell-peer"), &peer)
        .unwrap();
}

/// The next presence of this cell that says it is evacuating.
async fn evacuating_presence(presence: &mut hydrant_bus::Subscription) -> CellPresence {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, presence.next())
            .await
            .expect("no evacuating presence in time")
            .unwrap();
        let p: CellPresence = message.json().unwrap();
        if p.state == CellState::Evacuating {
            return p;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_evacuates_keeps_serving_until_stopped_then_exits() {
    let mut rig = Rig::start("executor-evacuate", true, |_| {}).await;
    let mut presence = rig
        .bus
        .subscribe(&messages::executor_presence_subject(&rig.executor_id))
        .await
        .unwrap();
    advertise_peer(&rig);
    let start = rig.start_script("web", "web.sh", APP).await;
    let guid = start.instance.clone();
    rig.wait_state(&guid, InstanceState::Running, WAIT).await;
    // A presence published before the instance counted may still be queued: wait for the
    // first one that counts it.
    let healthy: CellPresence = tokio::time::timeout(WAIT, async {
        loop {
            let p: CellPresence = presence.next().await.unwrap().json().unwrap();
            if p.app_id_to_count.contains_key("app-guid-1") {
                break p;
            }
        }
    })
    .await
    .expect("a presence counting the running instance");
    assert_eq!(healthy.state, CellState::Healthy);
    assert_eq!(healthy.app_id_to_count.get("app-guid-1"), Some(&1));

    // SIGTERM.
    rig.shutdown.cancel();
    let p = evacuating_presence(&mut presence).await;
    let progress = p.evacuation.expect("evacuation progress in the presence");
    assert_eq!(progress.remaining, 1);
    assert!(progress.deadline_at > progress.started_at);
    // The app's own stream says why it moves, in Diego's words.
    let line = format!(
        "Cell {} requesting replacement for instance {guid}",
        rig.executor_id
    );
    rig::wait_log(rig.agent(), "the replacement line", WAIT, |st, p| {
        st == "CELL" && p == line
    })
    .await;

    // No new work while evacuating.
    let mut refused = rig.start_message("bash web.sh", "http://127.0.0.1:9/x", &"0".repeat(64));
    refused.instance = "inst-late".into();
    let reply = rig.request_start(&refused).await;
    assert!(!reply.accepted);
    assert!(
        reply.reason.as_deref().unwrap_or("").contains("evacuating"),
        "{reply:?}"
    );

    // The instance keeps running: the executor waits for its replacement's stop.
    let hb = rig.wait_state(&guid, InstanceState::Running, WAIT).await;
    assert!(hb.instances.iter().any(|i| i.instance == guid));
    assert!(!rig.task.as_ref().unwrap().is_finished());

    // The controller saw the replacement run and stops the old instance: the executor exits.
    assert!(rig.request_stop("app-guid-1", &guid).await.accepted);
    let task = rig.task.as_ref().unwrap();
    hydrant_testkit::wait_for(Duration::from_secs(20), "the executor to exit", || async {
        task.is_finished()
    })
    .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evacuation_nobody_answers_ends_at_its_deadline() {
    let mut rig = Rig::start("executor-evacuate-deadline", false, |c| {
        c.evacuation_timeout_secs = 2;
    })
    .await;
    advertise_peer(&rig);
    let start = rig.start_script("web", "web.sh", APP).await;
    rig.wait_state(&start.instance, InstanceState::Running, WAIT)
        .await;
    let began = std::time::Instant::now();
    rig.shutdown.cancel();
    let task = rig.task.as_ref().unwrap();
    hydrant_testkit::wait_for(Duration::from_secs(30), "the executor to exit", || async {
        task.is_finished()
    })
    .await;
    assert!(
        began.elapsed() >= Duration::from_secs(2),
        "it waited for the deadline"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_cell_stops_at_once_on_sigterm() {
    let mut rig = Rig::start("executor-evacuate-alone", false, |_| {}).await;
    let start = rig.start_script("web", "web.sh", APP).await;
    rig.wait_state(&start.instance, InstanceState::Running, WAIT)
        .await;
    // No other cell advertises: evacuating would only wait out the 10 minutes.
    rig.stop().await;
}
