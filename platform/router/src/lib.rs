//! Hydrant's HTTP router: a gorouter-style reverse proxy routing by `Host`, with safe retries,
//! access logs and per-request Timer envelopes.
//!
//! Flow: executors register instances on the bus (`router.register`) → the routes task keeps
//! the table → a client request is matched on its `Host` (case-insensitive, port ignored) and
//! the longest route path → an instance is picked (round-robin or least-connection) → the
//! request goes out on a pooled keep-alive connection → the response streams back, and an
//! `RTR` access-log line and a Timer envelope named `http` go into the app's stream.
//!
//! Invariants:
//! - A request is retried on another instance only when no byte of it reached the app, at most
//!   `max_attempts` times and never on the same instance twice; an unreachable instance is
//!   skipped for `retry_after_failure_ms` unless every instance is skipped (then all are tried).
//! - The data plane outlives the control plane: with the bus down the table stays as it is and
//!   nothing expires; when it returns, every registration gets a fresh threshold.
//! - Router-made responses (404 `unknown_route`, 503 `no_endpoints`, 502 `endpoint_failure`,
//!   400s) carry `X-Cf-RouterError` and `X-Hydrant-Router-Error`.
//! - Nothing on the request path waits for telemetry: envelopes go through the never-blocking
//!   emitter, metrics are relaxed atomics.
//! - Client connections are served by `workers` threads (one per core by default), each with
//!   its own event loop and backend pools; a request never hops between threads. The route
//!   table is the one thing they share, read-mostly.
//!
//! # Layout
//! - `config`: [`Config`], [`StaticRoute`], [`LoadBalancing`].
//! - `table`: routes, instances, balancing, the published snapshot.
//! - `routes`: the bus side (register, unregister, greet, start, pruning).
//! - `server`: accepting client connections and the worker threads that serve them.
//! - `proxy`: one request: lookup, headers, attempts, router-made errors.
//! - `backend`: keep-alive pools and one attempt at an instance.
//! - `body`: the response body, returning connections and emitting on completion.
//! - `access_log`: the `RTR` line and the Timer envelope.
//! - `metrics`: `router.*` counters and gauges.

mod access_log;
mod assigned;
mod backend;
mod body;
mod config;
mod error;
mod metrics;
mod placement;
mod proxy;
mod routes;
mod server;
mod table;

use std::net::SocketAddr;
use std::sync::Arc;

use hydrant_bus::Bus;
use hydrant_bus::messages::{self, RouterStart};
use hydrant_emitter::Registry;
use tokio_util::sync::CancellationToken;

pub use config::{Config, LoadBalancing, StaticRoute};
pub use error::Error;

hydrant_runtime::listeners! {
    /// The socket the router serves itself (the runtime serves its admin listener).
    pub struct Listeners for Router {
        /// Client HTTP (`Config::listen`, default `127.0.0.1:8080`).
        http,
    }
}

/// The router as a [`hydrant_runtime::Role`]: `hydrant run router`, and the micro cloud's router.
#[derive(Debug, Clone, Copy)]
pub struct Router;

impl hydrant_runtime::Role for Router {
    const NAME: &'static str = "router";
    type Config = Config;
    type Error = Error;
    const LISTENERS: &'static [hydrant_runtime::ListenerSpec<Config>] = &[
        hydrant_runtime::ListenerSpec {
            name: "http",
            field: "listen",
            default: "127.0.0.1:8080",
            address: |c| &c.listen,
        },
        hydrant_runtime::ListenerSpec {
            name: "admin",
            field: "admin_listen",
            default: "127.0.0.1:8085",
            address: |c| &c.admin_listen,
        },
    ];

    fn registry(config: &Config) -> Registry {
        Registry::new("router", &config.router_id)
    }

    async fn run(
        config: Config,
        listeners: hydrant_runtime::Listeners,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        serve(config, Listeners::take(listeners)?, registry, shutdown).await
    }
}

/// Runs the router until `shutdown` is cancelled, then closes the client listener, lets open
/// connections finish (up to 10 s) and returns once every task and worker thread has stopped.
/// Client connections are served on `config.workers` threads of their own; everything else runs
/// on the caller's runtime.
async fn serve(
    config: Config,
    listeners: Listeners,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let bus = Bus::connect(&config.bus, &registry).await?;
    // Subscribe before announcing, so the registrations `router.start` provokes are not missed.
    // `router.>`: gorouter's subjects and each cell's own `router.register.<cell>`.
    let subscription = bus.subscribe("router.>").await?;
    // Placements (not start commands, which carry app environments): who runs what.
    let placed = bus.subscribe(&placement::subject()).await?;
    let emitter = config.telemetry.start(&registry, shutdown.clone());

    let max_attempts = usize::try_from(config.max_attempts)
        .unwrap_or(proxy::MAX_ATTEMPTS)
        .clamp(1, proxy::MAX_ATTEMPTS);
    let metrics = metrics::Metrics::new(&registry);
    let workers = config.worker_count();
    let router_id: Arc<str> = config.router_id.as_str().into();
    let clock = tokio::time::Instant::now();
    let eject_ms = u64::try_from(config.retry_after_failure().as_millis()).unwrap_or(u64::MAX);
    let worker_shared = (0..workers)
        .map(|worker| {
            Arc::new(proxy::Shared {
                metrics: metrics.clone(),
                backends: Arc::new(backend::Backends::new(
                    worker,
                    config.connect_timeout(),
                    config.request_timeout(),
                    config.idle_per_worker(),
                )),
                emitter: emitter.clone(),
                router_id: Arc::clone(&router_id),
                clock,
                eject_ms,
                max_attempts,
            })
        })
        .collect();

    let mut routes = table::RouteTable::new(table::Limits {
        default_load_balancing: config.load_balancing,
        default_ttl: config.prune_threshold(),
        empty_ttl: config.empty_route_timeout(),
        max_routes: config.max_routes,
        max_instances: config.max_instances_per_route,
        workers,
    });
    routes.add_static(&config.routes, tokio::time::Instant::now());
    let table = Arc::new(table::Table::default());
    table.publish(routes.snapshot());

    let listen_ip = listeners.http.local_addr().map_or_else(
        |_| config.listen.clone(),
        |a: SocketAddr| a.ip().to_string(),
    );
    let start = RouterStart {
        id: format!(
            "{}-{}",
            config.router_id,
            proxy::new_request_id().to_str().unwrap_or("0")
        ),
        hosts: vec![listen_ip],
        minimum_register_interval_in_seconds: messages::REGISTER_INTERVAL.as_secs(),
        prune_threshold_in_seconds: config.prune_threshold_secs,
    };
    let routes_task = tokio::spawn(
        routes::Routes {
            bus,
            subscription,
            placed,
            placements: placement::Placements::default(),
            assigned: assigned::Assigned::default(),
            routes,
            table: Arc::clone(&table),
            metrics: metrics.clone(),
            start,
            prune_interval: config.prune_interval(),
        }
        .run(shutdown.clone()),
    );
    tracing::info!(
        listen = %config.listen,
        routes = config.routes.len(),
        workers,
        "router serving"
    );
    let served = server::Server {
        listener: listeners.http,
        workers: worker_shared,
        table,
        gate: hydrant_runtime::Gate::new("http", &config.limits(), &registry),
        connections: metrics.connections.clone(),
    }
    .run(shutdown.clone())
    .await;
    // Whatever ended the server, stop everything else too.
    shutdown.cancel();
    let _ = routes_task.await;
    if let Some(emitter) = emitter {
        emitter.flush();
        emitter.stopped().await;
    }
    served
}
