//! The traffic controller and firehose edge: the public read side of the pipeline
//! (`hydrant run trafficcontroller`).
//!
//! Flow: dopplers' v2 `Egress/BatchedReceiver` (one subscription per doppler) → `hub` (parse
//! routing fields, fan out) → one bounded outbox per consumer → a writer per connection →
//! WebSocket / SSE. Recent reads go the other way: `GET /api/v1/read` asks every doppler's log
//! cache and merges.
//!
//! The dopplers are the configured list, or with `dopplers_from_bus` the ones announced on the
//! bus (`follow`): a doppler that joins is read at once, one whose announcements lapse is
//! dropped, and every path (live fan-out, recent reads, resumes) asks the hub which dopplers
//! are current rather than holding a list of its own.
//!
//! Public endpoints (on [`Listeners::http`]):
//! - `GET /firehose/{subscription_id}` (WebSocket; firehose scope): every envelope. Connections
//!   sharing a subscription id split the stream, also across edges behind one name: the id is a
//!   shard group the dopplers split among the edges' reads (`shard`); `?filter-type=logs|metrics`.
//! - `GET /apps/{source_id}/stream` (WebSocket): one source's logs and metrics.
//! - `GET /v2/read` (SSE, RLP-gateway style).
//! - `GET /api/v1/read/{source_id}`, `GET /api/v1/meta`, `GET /api/v1/info` (Log Cache's shape).
//!
//! Frames are binary, one encoded v2 `EnvelopeBatch` each, or with `?format=json` protojson
//! text. Tokens come from `Authorization: Bearer` or `?access_token=` and are verified locally
//! with the cloud controller's public keys (`keys`: fetched from `/token_keys`, cached in
//! memory and on disk), so streams keep working while the cloud controller is down, and this
//! role, holding no private key, cannot mint a token. A stream is closed (1008) when its token
//! expires.
//!
//! # Layout
//! - [`config`]: [`Config`] and its validation.
//! - `upstream`: doppler subscriptions with reconnect and backoff; read channels.
//! - `follow`: the doppler set from the bus (`doppler.announce`).
//! - `hub`: the routing table and fan-out; `outbox`: a consumer's drop-oldest queue.
//! - `shard`: a hub per firehose subscription id with copies here, fed by its share of each
//!   doppler (`shard_id` = the id), so copies on several edges get each envelope once.
//! - `position`: where each queued envelope came from and each consumer's cursor; `resume`:
//!   replaying a reconnecting consumer from the dopplers' replay rings.
//! - `api`: routes, token checks, errors; `stream` (WebSocket), `sse`, `recent`; `frame`:
//!   what goes on the wire; `admission`: stream caps per token, per user, and for the
//!   platform; `https`: the public listener over TLS.
//!
//! The invariant the role keeps: no consumer can slow the upstream read or another consumer.
//! The fan-out never awaits a consumer; each consumer's queue is bounded, drops its oldest data
//! when full, counts the drop, and tells the consumer with an in-band gap marker.

mod admission;
mod api;
pub mod config;
mod error;
mod follow;
mod frame;
mod https;
mod hub;
mod keys;
mod metrics;
mod outbox;
mod position;
mod recent;
mod resume;
mod shard;
mod sse;
mod stream;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use hydrant_emitter::Registry;
use hydrant_runtime::Backoff;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use error::Error;

use crate::api::{Shared, StreamOptions};
use crate::config::secs;
use crate::hub::Hub;
use crate::metrics::{Metrics, ROLE};
use crate::outbox::Limits;

hydrant_runtime::listeners! {
    /// The sockets the role serves, bound by the caller (tests bind `127.0.0.1:0`).
    pub struct Listeners for TrafficController {
        /// Public HTTP/WebSocket: streams, SSE and recent reads. Default `127.0.0.1:8081`.
        http,
    }
}

/// The traffic controller and firehose edge as a [`hydrant_runtime::Role`]: `hydrant run
/// trafficcontroller`, and the micro cloud's edge.
#[derive(Debug, Clone, Copy)]
pub struct TrafficController;

impl hydrant_runtime::Role for TrafficController {
    const NAME: &'static str = "trafficcontroller";
    type Config = Config;
    type Error = Error;
    const LISTENERS: &'static [hydrant_runtime::ListenerSpec<Config>] = &[
        hydrant_runtime::listener("http", "listen", "127.0.0.1:8081", |c| &c.listen),
        hydrant_runtime::admin_listener("127.0.0.1:8089", |c| &c.admin_listen),
    ];

    fn registry(config: &Config) -> Registry {
        Registry::new(ROLE, &config.instance_id)
    }

    fn describe(config: &Config) -> Option<String> {
        let statics = config.static_dopplers();
        Some(match (config.follows_bus(), statics.is_empty()) {
            (true, true) => "dopplers announced on the bus".to_owned(),
            (true, false) => format!(
                "dopplers {} and those announced on the bus",
                statics.join(", ")
            ),
            (false, _) => format!("dopplers {}", statics.join(", ")),
        })
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

/// Runs the traffic controller until `shutdown` is cancelled and its streams have closed.
async fn serve(
    config: Config,
    listeners: Listeners,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // Everything below stops on `stop`: the caller's shutdown, or a listener failing.
    let stop = shutdown.child_token();
    let tracker = TaskTracker::new();
    let metrics = Metrics::new(&registry);
    let keys = if config.disable_auth {
        tracing::warn!("disable_auth = true: every stream is open to anyone who can connect");
        None
    } else {
        let keys = Arc::new(keys::token_keys(&config, &metrics, &registry)?);
        tracker.spawn(keys.clone().refresh(
            secs(config.token_keys_refresh_secs, Duration::from_secs(300)),
            stop.clone().cancelled_owned(),
        ));
        tracing::info!(known = keys.len(), url = ?config.token_keys_url, "token keys");
        Some(keys)
    };
    let statics = config.static_dopplers();
    let follows = config.follows_bus();
    let followed = if follows { config.max_dopplers } else { 0 };
    let hub = Arc::new(Hub::new(
        metrics.clone(),
        Limits {
            max_envelopes: config.queue_max_envelopes,
            max_bytes: config.queue_max_bytes,
            fair: config.fair_share,
        },
        statics.len() + followed,
    ));
    let tls = upstream::tls(config.upstream_tls.as_ref())
        .map_err(|e| hydrant_runtime::invalid("upstream_tls", e.to_string()))?;
    let upstream = upstream::Upstream {
        tls: tls.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        backoff: Backoff::from_ms(config.reconnect_min_ms, config.reconnect_max_ms, 0.25),
        grace: None,
        shard: None,
    };
    let shards = Arc::new(shard::Shards::new(
        hub.clone(),
        upstream.clone(),
        tracker.clone(),
        stop.clone(),
        config.shard_across_edges,
    ));
    for url in statics {
        let channel = upstream::read_channel(url, tls.as_ref())
            .map_err(|e| hydrant_runtime::invalid("dopplers", format!("{url:?}: {e}")))?;
        let reader = hub::Reader {
            url: url.clone(),
            channel,
        };
        let slot = hub
            .claim(reader)
            .ok_or_else(|| hydrant_runtime::invalid("dopplers", "more dopplers than slots"))?;
        tracker.spawn(upstream::subscribe(
            slot,
            url.clone(),
            upstream::Start::Head,
            upstream.clone(),
            stop.clone(),
        ));
    }
    metrics.dopplers.set(hub.dopplers() as f64);
    if let (true, Some(bus)) = (follows, &config.bus) {
        let bus = hydrant_bus::Bus::connect(bus, &registry).await?;
        let follower = follow::run(
            bus,
            upstream::Upstream {
                grace: Some(secs(config.doppler_grace_secs, Duration::from_secs(30))),
                ..upstream
            },
            config.max_dopplers,
            stop.clone(),
        );
        tracker.spawn(async move {
            if let Err(error) = follower.await {
                tracing::error!(%error, "cannot follow the dopplers' announcements");
            }
        });
    }
    tracker.spawn(report_depth(
        hub.clone(),
        shards.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    let _emitter = config.telemetry.start(&registry, stop.clone());
    let fallback = Duration::from_secs(10);
    let shared = Arc::new(Shared {
        keys,
        hub,
        shards,
        metrics,
        opts: StreamOptions {
            frame_max_envelopes: config.frame_max_envelopes,
            frame_max_bytes: config.frame_max_bytes,
            slow_consumer_timeout: secs(config.slow_consumer_timeout_secs, fallback),
            ping_interval: secs(config.ping_interval_secs, Duration::from_secs(30)),
            pong_timeout: secs(config.pong_timeout_secs, Duration::from_secs(30)),
            sse_heartbeat: secs(config.sse_heartbeat_secs, Duration::from_secs(15)),
        },
        read_timeout: secs(config.read_timeout_secs, Duration::from_secs(5)),
        admission: admission::Admission::new(
            admission::Caps {
                max_streams: config.max_streams,
                per_token: config.max_streams_per_token,
                per_user: config.max_streams_per_user,
                reserved: config.platform_reserved_streams,
                per_identity: !config.disable_auth,
            },
            &registry,
        ),
        shutdown: stop.clone(),
        tracker: tracker.clone(),
    });
    tracing::info!(
        http = ?listeners.http.local_addr().ok(),
        dopplers = statics.len(),
        follows_bus = follows,
        "trafficcontroller serving"
    );
    // `[tls]`: the public listener speaks https:// and wss://; tokens still decide access.
    let public_tls = match &config.tls {
        Some(files) => Some(
            hydrant_tls::Material::load(files)
                .and_then(hydrant_tls::PublicServer::new)
                .map_err(|e| hydrant_runtime::invalid("tls", e.to_string()))?
                .acceptor(),
        ),
        None => None,
    };
    let http = {
        let stop = stop.clone();
        let gate = hydrant_runtime::Gate::new("http", &config.limits, &registry);
        let router = api::router(shared);
        async move {
            let r = match public_tls {
                Some(tls) => https::serve(gate, listeners.http, router, tls, stop.clone()).await,
                None => gate.serve(listeners.http, router, stop.clone()).await,
            };
            stop.cancel();
            r.map_err(|source| Error::Serve {
                what: "http",
                source,
            })
        }
    };
    let http = http.await;
    tracker.close();
    tracker.wait().await;
    http?;
    Ok(())
}

/// Publishes queue depths and re-syncs connection gauges once a second.
async fn report_depth(
    hub: Arc<Hub>,
    shards: Arc<shard::Shards>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let ((envelopes, bytes), (shared, shared_bytes)) = (hub.depth(), shards.depth());
        let (envelopes, bytes) = (envelopes + shared, bytes + shared_bytes);
        metrics.queued_envelopes.set(envelopes as f64);
        metrics.queued_bytes.set(bytes as f64);
        metrics.dopplers.set(hub.dopplers() as f64);
        metrics.sync_gauges();
    }
}
