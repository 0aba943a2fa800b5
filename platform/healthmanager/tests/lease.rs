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

use hydrant_bus::messages::{
    self, ExecutorCrash, ExecutorHeartbeat, ExecutorReply, InstanceHeartbeat, InstancePlaced,
    InstanceState, Resources, StartInstance,
};
use hydrant_bus::{Bus, Config as BusConfig, Subscription};
use hydrant_emitter::Registry;
use hydrant_testkit::wait_for;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
const BUS: &str = "hm-lease-test";

async fn start_hm(id: &str) -> (CancellationToken, SocketAddr) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let config = hydrant_healthmanager::Config {
        api_url,
        token: Some("unused".into()),
        instance_id: Some(id.into()),
        lease_ttl_secs: 2,
        lease_renew_ms: 500,
        poll_interval_secs: 1,
        request_timeout_ms: 500,
        converge_interval_secs: 1,
        retry_secs: 1,
        admin_listen: "127.0.0.1:0".into(),
        bus: BusConfig::inprocess(BUS),
        ..hydrant_healthmanager::Config::default()
    };
    let listeners = hydrant_runtime::bind::<hydrant_healthmanager::HealthManager>(&config)
        .await
        .unwrap();
    let admin = listeners.local_addr("admin").unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(
        hydrant_runtime::run::<hydrant_healthmanager::HealthManager>(
            config,
            listeners,
            shutdown.clone(),
        ),
    );
    (shutdown, admin)
}

/// The sum of a metric's series on `/metrics` (0 when absent).
async fn metric(admin: SocketAddr, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(admin).await else {
        return 0.0;
    };
    let _ = stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: admin\r\n\r\n")
        .await;
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    text.lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

async fn held(admin: SocketAddr) -> bool {
    metric(admin, "healthmanager_lease_held").await == 1.0
}

fn heartbeat(instance: &str) -> ExecutorHeartbeat {
    ExecutorHeartbeat {
        executor_id: "e1".into(),
        host: "127.0.0.1".into(),
        capacity: Resources {
            memory_mb: 8192,
            instances: 20,
        },
        used: Resources::default(),
        instances: vec![InstanceHeartbeat {
            app: "app-1".into(),
            instance: instance.into(),
            index: 0,
            state: InstanceState::Running,
            since: 1,
            port: Some(61000),
        }],
    }
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
    let start = StartInstance {
        executor_id: "e1".into(),
        app: "app-1".into(),
        app_name: "app".into(),
        instance: instance.into(),
        index: 0,
        memory_mb: 64,
        ..StartInstance::default()
    };
    placer
        .publish_json(
            &messages::executor_placed_subject("e1"),
            &InstancePlaced::from(&start),
        )
        .unwrap();
    placer
        .publish_json(&messages::executor_start_subject("e1"), &start)
        .unwrap();
    let placed = tokio::time::timeout(WAIT, starts.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(placed.json::<StartInstance>().unwrap().instance, instance);
    cell.publish_json(
        &messages::executor_heartbeat_subject("e1"),
        &heartbeat(instance),
    )
    .unwrap();
    // Give both copies the heartbeat before the crash.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let crash = ExecutorCrash {
        executor_id: "e1".into(),
        app: "app-1".into(),
        instance: instance.into(),
        index: 0,
        reason: "CRASHED".into(),
        exit_status: Some(1),
        exit_description: "APP/PROC/WEB: Exited with status 1".into(),
        ..ExecutorCrash::default()
    };
    cell.publish_json(&messages::executor_crash_subject("e1"), &crash)
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
            &heartbeat(&restarted.instance),
        )
        .unwrap();
        restarts.push(restarted);
    }
    restarts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_restarts_and_the_standby_takes_over_when_it_stops() {
    let (hm_a, admin_a) = start_hm("hm-a").await;
    wait_for(WAIT, "hm-a to hold the lease", || held(admin_a)).await;
    let (hm_b, admin_b) = start_hm("hm-b").await;
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
    assert_eq!(metric(admin_a, "healthmanager_restarts_total").await, 1.0);
    assert_eq!(metric(admin_b, "healthmanager_restarts_total").await, 0.0);

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
    assert_eq!(metric(admin_b, "healthmanager_restarts_total").await, 1.0);
    hm_b.cancel();
}
