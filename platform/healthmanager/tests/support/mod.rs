//! What the health manager's test binaries share: starting the role on its runtime, the
//! config of a health manager whose cloud controller is gone, and the bus messages of app-1's
//! index 0 as the controller and the cells send them.
//!
//! Each test binary includes this module; a helper one binary does not call is not an error.

#![allow(dead_code, reason = "each test binary uses its own subset")]

use std::net::SocketAddr;

use hydrant_bus::messages::{
    self, ExecutorCrash, ExecutorHeartbeat, InstanceHeartbeat, InstancePlaced, InstanceState,
    Resources, StartInstance,
};
use hydrant_bus::{Bus, Config as BusConfig};
use hydrant_healthmanager::{Config, HealthManager};
use hydrant_testkit::{scrape_metric, wait_for};
use tokio_util::sync::CancellationToken;

/// Starts a health manager on its runtime; returns its shutdown token and admin (`/metrics`)
/// address.
pub async fn start_hm(config: Config) -> (CancellationToken, SocketAddr) {
    let listeners = hydrant_runtime::bind::<HealthManager>(&config)
        .await
        .unwrap();
    let admin = listeners.local_addr("admin").unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(hydrant_runtime::run::<HealthManager>(
        config,
        listeners,
        shutdown.clone(),
    ));
    (shutdown, admin)
}

/// A health manager on `bus` whose cloud controller's API does not answer, so every restart it
/// makes goes straight to the cell from the start request it overheard; fast timings.
pub fn without_api(bus: BusConfig) -> Config {
    Config {
        api: hydrant_runtime::ApiSettings::with_token(
            format!("http://{}", hydrant_testkit::dead_addr()),
            "unused",
        ),
        poll_interval_secs: 1,
        request_timeout_ms: 500,
        converge_interval_secs: 1,
        retry_secs: 1,
        admin_listen: "127.0.0.1:0".into(),
        bus,
        ..Config::default()
    }
}

/// The start of app-1's index 0 as `instance` on `cell`, as the controller sends it.
pub fn start_request(cell: &str, instance: &str, app_name: &str) -> StartInstance {
    StartInstance {
        executor_id: cell.into(),
        app: "app-1".into(),
        app_name: app_name.into(),
        instance: instance.into(),
        index: 0,
        memory_mb: 64,
        ..StartInstance::default()
    }
}

/// Places `start` as the controller would: the placement, then the start (which the health
/// managers overhear and would copy to restart it).
pub fn place(placer: &Bus, start: &StartInstance) {
    let cell = &start.executor_id;
    placer
        .publish_json(
            &messages::executor_placed_subject(cell),
            &InstancePlaced::from(start),
        )
        .unwrap();
    placer
        .publish_json(&messages::executor_start_subject(cell), start)
        .unwrap();
}

/// `cell`'s heartbeat with app-1's index 0 as `instance` in `state`, and room for more.
pub fn heartbeat(cell: &str, instance: &str, state: InstanceState) -> ExecutorHeartbeat {
    ExecutorHeartbeat {
        executor_id: cell.into(),
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
            state,
            since: 1,
            port: Some(61000),
        }],
    }
}

/// App-1's index 0 as `instance` crashed (exit status 1), as `executor_id` reports it.
pub fn crash(executor_id: &str, instance: &str) -> ExecutorCrash {
    ExecutorCrash {
        executor_id: executor_id.into(),
        app: "app-1".into(),
        instance: instance.into(),
        index: 0,
        reason: "CRASHED".into(),
        exit_status: Some(1),
        exit_description: "APP/PROC/WEB: Exited with status 1".into(),
        ..ExecutorCrash::default()
    }
}

/// Waits until the health manager at `admin` has dropped and counted two reports about an
/// instance it never placed there and one from the wrong cell, and asserts that none of them
/// counted as a crash (had one been taken, a first crash restarts at once).
pub async fn forged_reports_refused(admin: SocketAddr, wait: std::time::Duration) {
    async fn dropped(admin: SocketAddr, reason: &str) -> f64 {
        scrape_metric(admin, "healthmanager_dropped_total", &[("reason", reason)]).await
    }
    wait_for(wait, "the forged reports dropped and counted", || async {
        dropped(admin, "not_placed").await == 2.0 && dropped(admin, "wrong_cell").await == 1.0
    })
    .await;
    assert_eq!(
        scrape_metric(admin, "healthmanager_crashes_total", &[]).await,
        0.0
    );
}
