//! What the health manager's test binaries share: starting the role on its runtime, and the
//! config of a health manager whose cloud controller is gone.
//!
//! Each test binary includes this module; a helper one binary does not call is not an error.

#![allow(dead_code, reason = "each test binary uses its own subset")]

use std::net::SocketAddr;

use hydrant_bus::Config as BusConfig;
use hydrant_healthmanager::{Config, HealthManager};
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
