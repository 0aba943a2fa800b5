//! Hydrant's executor (the DEA): runs app instances as processes, checks their health, turns
//! their output into log envelopes and their usage into container metrics, and tells the rest
//! of the platform what it runs (heartbeats, crash events, route registrations).
//!
//! Flow: cloud controller / health manager → `executor.start.<id>`, `executor.stop.<id>` (bus)
//! → [`Executor`] → one task per instance (droplet → process group → health → RUNNING) → app
//! stdout/stderr and container metrics → emitter → agent; state → `executor.heartbeat.<executor_id>`,
//! `executor.crash.<executor_id>`, `router.register.<executor_id>` /
//! `router.unregister.<executor_id>` (bus; each on the cell's own subject, the only ones its
//! bus identity may publish).
//!
//! Invariants:
//! - The data plane outlives the control plane: nothing an instance does waits on the bus or
//!   the cloud controller, so with either down, running instances keep running and logging.
//! - Never backpressure an app: its pipes are always read; the emitter drops (and counts)
//!   rather than waits.
//! - Start and stop are idempotent per instance guid; a crashed instance is reported, kept
//!   visible for `retention_secs`, and never restarted here.
//!
//! # Layout
//! - `config`: [`Config`] and its validation.
//! - `cell`: the instance table, placement, requests, heartbeats and routes.
//! - `presence`: the cell's presence (zone, free capacity), evacuation and debug kill.
//! - `instance`: one instance's lifecycle.
//! - `droplet`: the droplet cache and safe unpacking.
//! - `env`: the environment an instance starts with.
//! - `health`: port / http / process probes.
//! - `logs`: line splitting and the log sink.
//! - `procfs`: cpu, memory and disk readings.
//! - `metrics`: the executor's own counters and gauges.

mod cell;
mod config;
mod droplet;
mod env;
mod error;
mod health;
mod instance;
mod isolation;
mod logs;
mod metrics;
mod presence;
mod procfs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hydrant_bus::messages::{self, executor_start_subject, executor_stop_subject};
use hydrant_bus::{Announcer, Bus};
use hydrant_emitter::Registry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{Config, Isolation};
pub use error::Error;
pub use metrics::{REASON_CRASHED, REASON_HEALTH_CHECK, REASON_OOM};

/// Shortest gap between two route announcements triggered by instances becoming RUNNING or by
/// `router.start`: enough to collapse a burst, short enough that a new route is not late.
const ROUTE_MIN_GAP: Duration = Duration::from_millis(100);
/// Extra time, beyond the graceful stop interval, that shutdown waits for instances.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);
/// How long shutdown waits for the bus to take the final messages.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an evacuating cell looks whether it is empty or past its deadline.
const EVACUATION_CHECK: Duration = Duration::from_millis(250);

hydrant_runtime::role! {
    /// An executor as a [`hydrant_runtime::Role`]: `hydrant run executor`, and the micro cloud's one
    /// executor.
    pub struct Executor {
        name: "executor", config: Config, error: Error, admin: "127.0.0.1:14830" => admin_listen,
        registry: |c| Registry::new("executor", &c.executor_id),
        describe: |c| format!("executor {}", c.executor_id),
        serve: serve,
    }
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// Runs the executor until `shutdown` is cancelled; then stops every instance gracefully
/// (bounded by `stop_timeout_secs` plus a few seconds), unregisters their routes, sends a last
/// heartbeat and returns.
async fn serve(
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let metrics = metrics::Metrics::new(&registry);

    let instances_dir = config.data_dir.join("instances");
    // Instances of an earlier run are not re-adopted: their processes are killed (an executor
    // killed with SIGKILL could not stop them) and their directories are stale.
    // In containers, `isolation::open` kills and removes what an earlier run left; unisolated,
    // its process groups are found by the pgid files.
    let isolated = isolation::open(&config).await?;
    let reaped = if isolated.is_none() {
        instance::reap_orphans(&instances_dir)
    } else {
        0
    };
    if reaped > 0 {
        tracing::warn!(reaped, "killed instances an earlier executor left running");
    }
    match std::fs::remove_dir_all(&instances_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_error("cannot clear old instances in", &instances_dir)(e));
        }
        _ => {}
    }
    std::fs::create_dir_all(&instances_dir).map_err(io_error("cannot create", &instances_dir))?;
    let instances_dir = std::fs::canonicalize(&instances_dir)
        .map_err(io_error("cannot resolve", &instances_dir))?;
    let droplets = droplet::DropletCache::open(
        config.data_dir.join("droplets"),
        config.droplet_cache_mb.saturating_mul(1024 * 1024),
        config.max_droplet_mb.saturating_mul(1024 * 1024),
        Duration::from_secs(config.download_timeout_secs),
        config.tls.as_ref(),
        metrics.cache.clone(),
    )?;
    let probes = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| Error::Download {
            url: String::new(),
            reason: format!("cannot build an HTTP client: {e}"),
        })?;

    let bus = Bus::connect(&config.bus, &registry).await?;
    // App output and the executor's metrics keep flowing while instances stop at shutdown, so
    // the emitter outlives `shutdown` and is stopped last.
    let emitter_stop = CancellationToken::new();
    let _emitter_guard = emitter_stop.clone().drop_guard();
    let emitter = config.telemetry.start(&registry, emitter_stop.clone());
    let hydrant_bin = std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path_env =
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned());

    let start_subject = executor_start_subject(&config.executor_id);
    let stop_subject = executor_stop_subject(&config.executor_id);
    let heartbeat_interval = Duration::from_secs(config.heartbeat_interval_secs);
    let register_interval = Duration::from_secs(config.register_interval_secs);
    let mut starts = bus.subscribe(&start_subject).await?;
    let mut stops = bus.subscribe(&stop_subject).await?;
    let mut evacuations = bus
        .subscribe(&messages::executor_evacuate_subject(&config.executor_id))
        .await?;
    let mut kills = bus
        .subscribe(&messages::executor_kill_subject(&config.executor_id))
        .await?;
    let mut peers = bus
        .subscribe(&messages::every_cell(messages::EXECUTOR_PRESENCE))
        .await?;
    let presence_interval = Duration::from_secs(config.presence_interval_secs);

    let cell = Arc::new(cell::Cell::new(
        config,
        bus.clone(),
        emitter.clone(),
        metrics,
        droplets,
        probes,
        instances_dir,
        hydrant_bin,
        path_env,
        isolated,
    ));

    let announcers = CancellationToken::new();
    let _announcers_guard = announcers.clone().drop_guard();
    let beat = Arc::clone(&cell);
    // Per-cell subject, like the route registrations below: consumers check that the cell it
    // names is the `executor_id` in the heartbeat.
    let heartbeat_subject = messages::executor_heartbeat_subject(&cell.config.executor_id);
    let heartbeats = Announcer::new(&bus, &heartbeat_subject, heartbeat_interval)
        .retrigger_on(messages::EXECUTOR_GREET)
        .min_gap(Duration::ZERO)
        .spawn(announcers.clone(), move || {
            messages::encode(&beat.heartbeat()).into_iter().collect()
        })
        .await?;
    let routed = Arc::clone(&cell);
    // Per-cell subject: on the authenticated bus a cell may publish only its own, which is how
    // the router knows which cell a registration came from.
    let register_subject = messages::router_register_subject(&cell.config.executor_id);
    let routes = Announcer::new(&bus, &register_subject, register_interval)
        .retrigger_on(messages::ROUTER_START)
        .min_gap(ROUTE_MIN_GAP)
        .spawn(announcers.clone(), move || routed.route_payloads())
        .await?;
    let advertised = Arc::clone(&cell);
    let presence_subject = messages::executor_presence_subject(&cell.config.executor_id);
    let presence = Announcer::new(&bus, &presence_subject, presence_interval)
        .retrigger_on(messages::EXECUTOR_GREET)
        .min_gap(ROUTE_MIN_GAP)
        .spawn(announcers.clone(), move || {
            messages::encode(&advertised.presence())
                .into_iter()
                .collect()
        })
        .await?;
    let _ = cell.heartbeats.set(heartbeats);
    let _ = cell.routes.set(routes);
    let _ = cell.presence.set(presence);

    tracing::info!(executor_id = %cell.config.executor_id, bus = %bus.url(),
        "executor taking start requests on {start_subject}");

    // SIGTERM evacuates first (when another cell can take the instances): the loop keeps
    // taking stops, which is how the controller ends each old instance once its replacement
    // runs, until the cell is empty or the deadline passes.
    let mut leaving = false;
    let mut killed = false;
    let mut checks = tokio::time::interval(EVACUATION_CHECK);
    loop {
        tokio::select! {
            () = shutdown.cancelled(), if !leaving => {
                if !cell.config.evacuate_on_shutdown || cell.live_count() == 0 {
                    break;
                }
                if !cell.another_cell_can_take() {
                    tracing::info!("executor: no other healthy cell advertises; stopping instances without evacuating");
                    break;
                }
                cell.evacuate("SIGTERM");
                leaving = true;
            }
            _ = checks.tick(), if leaving || cell.evacuation_deadline().is_some() => {
                if leaving && cell.live_count() == 0 {
                    tracing::info!("executor: evacuated; every instance runs elsewhere");
                    break;
                }
                if cell.evacuation_deadline().is_some_and(|d| Instant::now() >= d) && cell.live_count() > 0 {
                    tracing::warn!("executor: evacuation deadline passed; stopping what is left");
                    cell.stop_all("evacuation deadline passed");
                    if leaving {
                        break;
                    }
                }
            }
            Some(message) = starts.next() => cell.handle_start(message),
            Some(message) = stops.next() => cell.handle_stop(&message),
            Some(message) = evacuations.next() => cell.handle_evacuate(&message),
            Some(message) = peers.next() => cell.note_peer(&message),
            Some(message) = kills.next() => if cell.handle_kill(&message) {
                killed = true;
                break;
            },
        }
    }
    drop(starts);
    drop(stops);
    drop(evacuations);
    drop(kills);
    drop(peers);
    if killed {
        // A lost host: nothing more on the bus (the announcers go before the instances, whose
        // state changes would trigger one last presence), instances killed, and the process
        // stays until it is stopped (the micro cloud keeps running around it).
        announcers.cancel();
        cell.kill();
        cell.tasks.close();
        cell.tasks.wait().await;
        shutdown.cancelled().await;
        emitter_stop.cancel();
        return Ok(());
    }

    cell.stop_all(instance::SHUTTING_DOWN);
    cell.tasks.close();
    let grace = cell.config.stop_timeout() + SHUTDOWN_SLACK;
    if tokio::time::timeout(grace, cell.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("executor: some instances did not stop in time; leaving them");
    } else if let Some(isolated) = &cell.isolated {
        // Every container is gone: the bridge, its rules and the cgroup parent go too, so a
        // stopped executor leaves nothing on the host (the next start makes them again).
        if let Err(e) = isolated.network.teardown().await {
            tracing::warn!("executor: the container network could not be removed: {e}");
        }
        let failures = isolated.containers.close().await;
        if !failures.is_empty() {
            tracing::warn!(
                ?failures,
                "executor: the cgroup parent could not be removed"
            );
        }
    }
    // The final word: every instance DOWN (or CRASHED), routes already unregistered.
    cell.publish(&heartbeat_subject, &cell.heartbeat());
    announcers.cancel();
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, bus.flush()).await;
    emitter_stop.cancel();
    if let Some(emitter) = &emitter {
        emitter.stopped().await;
    }
    Ok(())
}

/// Where the executor keeps instance `guid`'s files under `data_dir` (for tools and tests).
#[must_use]
pub fn instance_dir(data_dir: &Path, guid: &str) -> PathBuf {
    data_dir.join("instances").join(guid)
}
