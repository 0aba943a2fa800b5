//! The agent: one per node, the first hop of the pipeline. Every emitter on the node (the
//! executor for app output, every role's own metrics, any stock Loggregator v2 client) sends to
//! it; it streams batches on to the dopplers.
//!
//! Flow: emitter → v2 Ingress (`ingress`) → validate, origin fallback, app log rate limit,
//! sequence stamp, pick doppler by `hash(source_id)` (`router`) → per-doppler bounded queue
//! and `BatchSender` stream (`egress`) → doppler.
//!
//! Invariants:
//! - With `tls` set, only a client whose certificate chains to the bundle and names one of
//!   [`INGRESS_IDENTITIES`] gets past the handshake; the rest are refused, logged and counted
//!   (`tls.refused{endpoint="agent.ingress",reason}`), and no envelope of theirs is read.
//! - Never backpressure an emitter: ingress handlers only take a short lock; a full egress queue
//!   drops its oldest batch, counts it and owes the doppler a gap marker for it.
//! - Fair drops (`fair_share`, on by default): when a doppler's queue is half full, a source
//!   holding more than its share of it is refused, counted under its name and told in its own
//!   stream, so one app's flood never costs a quiet app a line.
//! - No silent loss: `agent.ingress + agent.rate_limited + agent.fair_notices = Σ agent.egress +
//!   Σ agent.dropped`
//!   once drained (see `metrics`); loss in flight to a doppler shows there as a gap in the
//!   per-source sequence numbers (field 100) the agent stamps.
//! - One app's stream lands on one doppler (rendezvous hash of `source_id`, `hash`) while that
//!   doppler is up; when it is not, only its sources move, and they move back when it returns.
//! - Envelopes are forwarded as the bytes they arrived as (plus the sequence field), never
//!   decoded.
//!
//! Choices where Loggregator leaves room:
//! - An envelope with neither a `source_id` nor an `origin` tag is dropped
//!   (`agent.dropped{reason="no_source_id"}`): nothing downstream can attribute, route, sequence
//!   or authorise it.
//! - A `BatchSender`/`Sender` stream that carried rejected envelopes keeps going; when it ends,
//!   its status is `InvalidArgument` with the count and the first reason. `Send` answers the
//!   same way at once.
//!
//! # Layout
//! - `config`: [`Config`] and its validation.
//! - `ingress`: the gRPC service.
//! - `router`: the per-envelope work and the per-doppler batches.
//! - `limiter`: Diego-style app log rate limiting.
//! - `hash`: the rendezvous hash.
//! - `egress`: per-doppler queues, streams, failover.
//! - `follow`: with `dopplers_from_bus`, the doppler set the bus announces (lanes added and
//!   retired while envelopes flow).
//! - `lost`: what is lost after stamping (a doppler gone, the shutdown drain), by source, and
//!   the gap markers owed for it.
//! - `metrics`: the counters and the ledger they keep.

mod config;
mod egress;
mod error;
mod follow;
mod hash;
mod ingress;
mod limiter;
mod lost;
mod metrics;
mod router;

use std::sync::Arc;
use std::time::Duration;

use hydrant_emitter::Registry;
use hydrant_envelope::raw::ingress::ingress_server::IngressServer;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::Error;

/// Largest HTTP/2 DATA frame emitters may send here (the default is 16 KiB), as on the
/// doppler: h2 writes each frame in one call, and over TLS a 16 KiB frame plus its 9-byte header
/// is a full record and a 9-byte one, each sealed and opened on its own.
const MAX_FRAME: u32 = 256 * 1024;

/// Who may send to the agent over mutual TLS: every role identity that emits (each role's own
/// metrics; the executor for app output; the router for access logs; nozzles for their own
/// telemetry). Only `nats` is left out: the NATS server is not a Hydrant role and emits
/// nothing, so its certificate is never a sender.
pub const INGRESS_IDENTITIES: &[hydrant_tls::Identity] = {
    use hydrant_tls::Identity::*;
    &[
        Agent,
        Doppler,
        TrafficController,
        CloudController,
        Executor,
        Router,
        HealthManager,
        Autoscaler,
        Slo,
        Nozzle,
    ]
};

hydrant_runtime::listeners! {
    /// The sockets the agent serves, bound by the caller (tests bind `127.0.0.1:0`).
    pub struct Listeners for Agent {
        /// The gRPC v2 Ingress (`Config::listen`, default `127.0.0.1:3458`).
        ingress,
    }
}

/// The agent as a [`hydrant_runtime::Role`]: `hydrant run agent`, and the micro cloud's agent.
#[derive(Debug, Clone, Copy)]
pub struct Agent;

impl hydrant_runtime::Role for Agent {
    const NAME: &'static str = "agent";
    type Config = Config;
    type Error = Error;
    const LISTENERS: &'static [hydrant_runtime::ListenerSpec<Config>] = &[
        hydrant_runtime::listener("ingress", "listen", "127.0.0.1:3458", |c| &c.listen),
        hydrant_runtime::admin_listener("127.0.0.1:14824", |c| &c.admin_listen),
    ];

    fn registry(config: &Config) -> Registry {
        Registry::new("agent", &config.instance_id)
    }

    fn describe(config: &Config) -> Option<String> {
        if config.follows_bus() {
            return Some("dopplers announced on the bus".to_owned());
        }
        Some(format!("dopplers {}", config.dopplers.join(", ")))
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

/// Runs the agent until `shutdown` is cancelled, then stops taking envelopes, delivers what it
/// holds (for up to 2 s) and returns once every task has stopped.
async fn serve(
    config: Config,
    listeners: Listeners,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let material = config
        .tls
        .as_ref()
        .map(hydrant_tls::Material::load)
        .transpose()?;
    let doppler_tls = material
        .clone()
        .map(|m| hydrant_tls::ClientTls::new(m, hydrant_tls::Identity::Doppler))
        .transpose()?
        .map(hydrant_tls::Connector::new);
    let metrics = metrics::Metrics::new(&registry, config.fair_metrics_sources);
    let follows = config.follows_bus();
    let statics: &[String] = if follows { &[] } else { &config.dopplers };
    let lane_settings = follow::LaneSettings {
        max_batches: config.egress_queue_max_batches,
        max_bytes: config.egress_queue_max_bytes,
        queue_full: metrics.egress_queue_full.clone(),
        fair: config.fair(),
        keepalive_interval: Duration::from_millis(config.keepalive_interval_ms),
        keepalive_timeout: Duration::from_millis(config.keepalive_timeout_ms),
        max_backoff: Duration::from_millis(config.reconnect_max_backoff_ms),
        tls: doppler_tls.clone(),
        max_dopplers: config.max_dopplers,
    };
    let bus = match (&config.bus, follows) {
        (Some(bus), true) => Some(hydrant_bus::Bus::connect(bus, &registry).await?),
        _ => None,
    };
    let lanes: Vec<Arc<egress::Lane>> = statics
        .iter()
        .map(|url| {
            Arc::new(egress::Lane::new(
                url,
                &registry,
                config.egress_queue_max_batches,
                config.egress_queue_max_bytes,
                metrics.egress_queue_full.clone(),
                config.fair(),
            ))
        })
        .collect();
    let settings = router::Settings {
        batch_max_envelopes: config.batch_max_envelopes,
        batch_max_bytes: config.batch_max_bytes,
        flush_idle: Duration::from_millis(config.flush_idle_ms),
        flush_max: Duration::from_millis(config.flush_max_ms),
        rate_limit: config.app_log_rate_limit_bytes_per_sec,
        max_instances: config.max_tracked_instances,
        instance_idle: Duration::from_secs(config.instance_idle_secs),
        fair_sweep: Duration::from_millis(config.fair_notice_interval_ms.min(1000)),
    };
    let slots = if follows { config.max_dopplers } else { 0 };
    let router = Arc::new(router::Router::new(settings, lanes.clone(), slots, metrics));

    let endpoints = statics
        .iter()
        .map(|url| {
            egress::endpoint(
                url,
                Duration::from_millis(config.keepalive_interval_ms),
                Duration::from_millis(config.keepalive_timeout_ms),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Lanes outlive ingress: they stop only after the final flush, via `drain`.
    let drain = CancellationToken::new();
    let mut lane_tasks = JoinSet::new();
    for (index, (endpoint, lane)) in endpoints.into_iter().zip(lanes).enumerate() {
        lane_tasks.spawn(egress::run_lane(
            router.clone(),
            index,
            lane,
            endpoint,
            doppler_tls.clone(),
            Duration::from_millis(config.reconnect_max_backoff_ms),
            drain.clone(),
        ));
    }
    if let Some(bus) = bus {
        let follower = follow::run(
            bus,
            router.clone(),
            registry.clone(),
            lane_settings,
            drain.clone(),
        );
        lane_tasks.spawn(async move {
            if let Err(error) = follower.await {
                tracing::error!(%error, "cannot follow the dopplers' announcements");
            }
        });
    }
    let flusher = tokio::spawn(router.clone().run_flusher(shutdown.clone()));
    let telemetry = config.telemetry.start(&registry, shutdown.clone());

    let service = IngressServer::new(ingress::IngressService::new(
        router.clone(),
        shutdown.clone(),
    ))
    .max_decoding_message_size(hydrant_envelope::MAX_MESSAGE_BYTES);
    tracing::info!(listen = %config.listen, dopplers = ?config.dopplers, tls = material.is_some(), "agent serving v2 ingress");
    let server = tonic::transport::Server::builder()
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .max_frame_size(MAX_FRAME)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(service);
    let served = match material {
        Some(material) => {
            let _expiry = hydrant_emitter::tls::spawn_expiry_gauge(
                &registry,
                material.clone(),
                shutdown.clone(),
            );
            let tls = hydrant_emitter::tls::server(
                &registry,
                material,
                "agent.ingress",
                INGRESS_IDENTITIES,
            )?;
            server
                .serve_with_incoming_shutdown(
                    hydrant_tls::grpc::incoming(listeners.ingress, tls),
                    shutdown.clone().cancelled_owned(),
                )
                .await
        }
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listeners.ingress)
                .with_nodelay(Some(true));
            server
                .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
                .await
        }
    };
    // Whatever ended the server, stop everything else too.
    shutdown.cancel();

    let _ = flusher.await;
    router.flush_all();
    drain.cancel();
    while lane_tasks.join_next().await.is_some() {}
    if let Some(telemetry) = &telemetry {
        telemetry.stopped().await;
    }
    Ok(served?)
}
