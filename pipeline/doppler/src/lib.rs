//! The doppler role: receives envelope batches from agents, routes them to subscribers by
//! Loggregator's v2 selector and shard semantics, and keeps the log cache of recent envelopes.
//!
//! Flow (one gRPC port, default `127.0.0.1:8082`):
//!
//! ```text
//! agents ─v2 Ingress─► validate ─► ingress ring ─► router ─► queue per subscription ─v2 Egress─► subscribers
//!                                                     │        (drop oldest, gap marker)
//!                                                     ├─► replay ring ─ring reads─► firehose edge (live, and resumes)
//!                                                     └─► log cache task ─► Store ◄─ logcache.v1.Egress
//! ```
//!
//! The replay ring keeps the last `replay_ring_bytes` / `replay_ring_secs` of routed batches,
//! numbered per envelope, so a firehose consumer's cursor can be resumed after a reconnect or an
//! edge restart (see `replay`). Ring reads that ask with one `shard_id` split it: each envelope
//! goes to one of them, by its offset and the group's recorded membership (see `shard`), which
//! is how firehose edges behind one name serve one subscription id once between them.
//!
//! Invariants: envelopes travel as encoded bytes and are never decoded on the way through (the
//! log cache's `Read` is the one place that decodes, for its typed response); every queue is
//! bounded and drops its oldest data first; every drop is counted with a reason, and a
//! subscriber that lost data finds a gap marker in its stream; no client can slow another.
//!
//! With `tls` set the port requires mutual TLS: a client whose certificate does not chain to the
//! bundle or names neither `agent` nor `trafficcontroller` is refused at the handshake; an
//! `agent` calling Egress or the log cache, or a `trafficcontroller` calling Ingress, is refused
//! with `PERMISSION_DENIED` before any data (see [`INGRESS_IDENTITIES`], [`READ_IDENTITIES`]).
//! Every refusal is counted in `tls.refused{endpoint,reason}`.
//!
//! With `bus` set the doppler announces itself (`doppler.announce`: its id and URL, every
//! `announce_interval_ms`, TTL three intervals), so agents and edges that follow the announced
//! set use it without a restart and stop using it once its announcements lapse.
//!
//! Entry point: [`Doppler`], a [`hydrant_runtime::Role`], with a [`Config`].

mod batch;
mod cache;
mod config;
mod egress;
mod error;
mod ingress;
mod metrics;
mod queue;
mod replay;
mod ring;
pub mod router;
mod selector;
mod shard;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hydrant_emitter::Registry;
use hydrant_envelope::{MAX_MESSAGE_BYTES, raw};
use hydrant_logcache::Store;
use hydrant_tls::{Gate, Identity};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

pub use batch::{Envelope, Tally, ValidBatch};
pub use config::Config;
pub use error::Error;
pub use metrics::Metrics;
pub use queue::{Admit, Chunk, FairCounters, QueueLimits, SubscriptionQueue, Taken};
pub use selector::{Filter, MAX_SELECTORS, RequestError, Route, SubscriptionRequest, crc64_ecma};

/// HTTP/2 windows: tonic's defaults throttle one stream to ~0.1 M envelopes/s.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// Largest HTTP/2 DATA frame agents may send here (the default is 16 KiB). Each frame is one
/// write: at 16 KiB a batch took two, and over TLS a frame of 16 KiB plus its 9-byte header
/// took two records, the second of 9 bytes. Bounded by the stream window either way.
const MAX_FRAME: u32 = 256 * 1024;

/// Largest egress request (`EgressBatchRequest`/`EgressRequest`) accepted. A subscription keeps
/// its selectors for as long as it lives, so this, not the 10 MiB data limit, bounds what one
/// stream can pin: real requests are a few hundred bytes.
pub const MAX_EGRESS_REQUEST_BYTES: usize = 64 * 1024;

/// Who may send to the doppler's v2 Ingress over mutual TLS: agents only.
pub const INGRESS_IDENTITIES: &[Identity] = &[Identity::Agent];
/// Who may read v2 Egress and the log cache over mutual TLS: the traffic controller (the
/// firehose edge) only; every other reader goes through it and its token checks.
pub const READ_IDENTITIES: &[Identity] = &[Identity::TrafficController];

hydrant_runtime::listeners! {
    /// The sockets the doppler serves on, bound by the caller (tests bind `127.0.0.1:0`).
    pub struct Listeners for Doppler {
        /// gRPC: v2 Ingress, v2 Egress and `logcache.v1.Egress` (config `listen`).
        grpc,
    }
}

/// The doppler as a [`hydrant_runtime::Role`]: `hydrant run doppler`, and the micro cloud's
/// doppler.
#[derive(Debug, Clone, Copy)]
pub struct Doppler;

impl hydrant_runtime::Role for Doppler {
    const NAME: &'static str = "doppler";
    type Config = Config;
    type Error = Error;
    const LISTENERS: &'static [hydrant_runtime::ListenerSpec<Config>] = &[
        hydrant_runtime::listener("grpc", "listen", "127.0.0.1:8082", |c| &c.listen),
        hydrant_runtime::admin_listener("127.0.0.1:8083", |c| &c.admin_listen),
    ];

    fn registry(config: &Config) -> Registry {
        Registry::new("doppler", &config.instance_id)
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

/// Runs the doppler until `shutdown` is cancelled, then stops every task it started (open
/// streams get `shutdown_grace_secs` to finish) and returns.
async fn serve(
    config: Config,
    listeners: Listeners,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // Every task stops on `stop`: the caller's shutdown, or a server failing on its own.
    let stop = shutdown.child_token();
    let metrics = Metrics::new(&registry);
    let store = Arc::new(Store::new(config.logcache.clone()));
    let ring = Arc::new(ring::IngressRing::new(
        config.ingress_ring_envelopes,
        config.ingress_ring_bytes,
        metrics.dropped_ring_full.clone(),
        metrics.ingress_ring_depth.clone(),
    ));
    // Each open stream holds at most one slot (its reserved unsubscribe) and briefly a second
    // (its subscribe), so this never refuses a stream the subscription limit admits unless the
    // router has stalled.
    let (commands_tx, commands_rx) = mpsc::channel(2 * config.max_subscriptions + 64);
    let (handoff, intake) = cache::Handoff::new(
        config.logcache_queue_batches,
        config.logcache_queue_bytes,
        metrics.dropped_logcache_busy.clone(),
    );

    let replay = (config.replay_ring_bytes > 0).then(|| {
        Arc::new(replay::ReplayRing::new(
            hydrant_envelope::cursor::doppler_id(&config.instance_id),
            config.replay_ring_bytes,
            config.replay_window(),
        ))
    });
    let router_task = tokio::spawn(router::run(
        router::Router::new(config.egress_batch_envelopes, config.egress_batch_bytes),
        ring.clone(),
        commands_rx,
        handoff,
        replay.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    let cache_task = tokio::spawn(cache::run(intake, store.clone(), metrics.logcache.clone()));
    let _telemetry = config.telemetry.start(&registry, stop.clone());

    let ingress =
        ingress::IngressService::new(ring, metrics.clone(), stop.clone(), config.fair_share);
    let egress = egress::EgressService::new(
        commands_tx,
        config.max_subscriptions,
        QueueLimits {
            max_envelopes: config.subscription_queue_envelopes,
            max_bytes: config.subscription_queue_bytes,
            batch_envelopes: config.egress_batch_envelopes,
            batch_bytes: config.egress_batch_bytes,
        },
        config.subscription_fair_share,
        replay,
        metrics.clone(),
        stop.clone(),
    );
    let logcache = cache::LogCacheService::new(store, metrics.clone());
    let material = config
        .tls
        .as_ref()
        .map(hydrant_tls::Material::load)
        .transpose()?;
    let bound = listeners.grpc.local_addr().map_err(|e| Error::Config {
        field: "listen",
        message: format!("cannot read the bound address: {e}"),
    })?;
    // One port serves both sides: the handshake lets in either identity, then each service's
    // gate refuses the other with PERMISSION_DENIED before its handler runs.
    let gate = |endpoint: &'static str, allowed: &[Identity]| match &material {
        Some(_) => Gate::allow(
            endpoint,
            allowed,
            hydrant_emitter::tls::observer(&registry, endpoint),
        ),
        None => Gate::open(),
    };
    let server = Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(config.keepalive_interval()))
        .http2_keepalive_timeout(Some(config.keepalive_timeout()))
        .add_service(InterceptedService::new(
            raw::ingress::ingress_server::IngressServer::new(ingress)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            gate("doppler.ingress", INGRESS_IDENTITIES),
        ))
        .add_service(InterceptedService::new(
            raw::egress::egress_server::EgressServer::new(egress)
                .max_decoding_message_size(MAX_EGRESS_REQUEST_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            gate("doppler.egress", READ_IDENTITIES),
        ))
        .add_service(InterceptedService::new(
            raw::logcache::egress_server::EgressServer::new(logcache)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            gate("doppler.logcache", READ_IDENTITIES),
        ));
    let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match material {
            Some(material) => {
                let _expiry = hydrant_emitter::tls::spawn_expiry_gauge(
                    &registry,
                    material.clone(),
                    stop.clone(),
                );
                let allowed: Vec<Identity> = [INGRESS_IDENTITIES, READ_IDENTITIES].concat();
                let tls = hydrant_emitter::tls::server(&registry, material, "doppler", &allowed)?;
                Box::pin(server.serve_with_incoming_shutdown(
                    hydrant_tls::grpc::incoming(listeners.grpc, tls),
                    stop.clone().cancelled_owned(),
                ))
            }
            None => {
                let incoming = TcpIncoming::from(listeners.grpc)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(config.keepalive_interval()));
                Box::pin(
                    server.serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
                )
            }
        };
    let announcer = match &config.bus {
        Some(bus) => Some(announce(&config, bus, bound, &registry, stop.clone()).await?),
        None => None,
    };
    let mut grpc_task = tokio::spawn(server);
    tracing::info!(instance_id = %config.instance_id, "doppler serving");

    let served = tokio::select! {
        joined = &mut grpc_task => joined,
        () = stop.cancelled() => {
            match tokio::time::timeout(config.shutdown_grace(), &mut grpc_task).await {
                Ok(joined) => joined,
                Err(_) => {
                    tracing::warn!("doppler streams did not finish within the grace period; closing them");
                    grpc_task.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    stop.cancel();
    if let Some(announcer) = announcer {
        announcer.stopped().await;
    }
    let grace = config.shutdown_grace();
    let router_done = join("router", router_task, grace).await;
    let cache_done = join("cache", cache_task, grace).await;
    let served = match served {
        Ok(result) => result.map_err(Error::from),
        Err(e) => Err(Error::Task {
            task: "grpc",
            message: e.to_string(),
        }),
    };
    served?;
    router_done?;
    cache_done?;
    tracing::info!("doppler stopped");
    Ok(())
}

/// Starts announcing this doppler on the bus: where agents send (ingress) and edges read
/// (egress), both the one gRPC port.
async fn announce(
    config: &Config,
    bus: &hydrant_bus::Config,
    bound: std::net::SocketAddr,
    registry: &Registry,
    stop: CancellationToken,
) -> Result<hydrant_bus::AnnouncerHandle, Error> {
    let bus_error = |e: hydrant_bus::Error| Error::Config {
        field: "bus",
        message: e.to_string(),
    };
    let url = match &config.advertise_url {
        Some(url) => url.clone(),
        None if bound.ip().is_unspecified() => {
            return Err(Error::Config {
                field: "advertise_url",
                message: format!(
                    "listen binds every address ({bound}), so agents cannot be told one; set \
                     advertise_url to the URL other hosts reach this doppler at"
                ),
            });
        }
        None => {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{bound}")
        }
    };
    let interval = Duration::from_millis(config.announce_interval_ms);
    let message = hydrant_bus::messages::DopplerAnnounce {
        id: config.instance_id.clone(),
        ingress: url.clone(),
        egress: url,
        ttl_secs: (interval * 3).as_secs().max(1),
    };
    let payload = hydrant_bus::messages::encode(&message).map_err(bus_error)?;
    let bus = hydrant_bus::Bus::connect(bus, registry)
        .await
        .map_err(bus_error)?;
    tracing::info!(id = %message.id, url = %message.ingress, "doppler announcing itself on the bus");
    hydrant_bus::Announcer::new(&bus, hydrant_bus::messages::DOPPLER_ANNOUNCE, interval)
        .spawn(stop, move || vec![payload.clone()])
        .await
        .map_err(bus_error)
}

async fn join<T>(task: &'static str, handle: JoinHandle<T>, grace: Duration) -> Result<T, Error> {
    let abort = handle.abort_handle();
    match tokio::time::timeout(grace, handle).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Error::Task {
            task,
            message: e.to_string(),
        }),
        Err(_) => {
            abort.abort();
            Err(Error::Task {
                task,
                message: "did not stop within the shutdown grace period".to_owned(),
            })
        }
    }
}
