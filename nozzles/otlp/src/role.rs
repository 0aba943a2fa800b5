//! The OTLP nozzle role: `run` reads the firehose and keeps an OTLP receiver fed with logs and
//! metrics.
//!
//! Flow: [`FirehoseClient`] (shared subscription) → reader loop ([`Mapping::route`]: one
//! [`Item`] per log record or data point) → one [`DestinationQueue`] per signal →
//! `exports_in_flight` [`run_sender`] tasks per signal → `LogsService/Export` /
//! `MetricsService/Export`, all on one HTTP/2 connection.
//!
//! Invariants: the reader never waits on the receiver — a push evicts that signal's oldest
//! items and counts them, so a slow receiver costs data, never firehose lag, and a receiver
//! that refuses one signal does not hold the other back; on shutdown the senders get
//! `shutdown_drain_ms` to export what is queued and the rest is counted as
//! `dropped{reason="shutdown"}`; the endpoint is named only masked, headers never.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hydrant_emitter::{Counter, Gauge, Registry};
use hydrant_envelope::wire::EnvelopeView;
use hydrant_firehose_client::{FirehoseClient, StreamEvent, Subscription};
use hydrant_nozzle_core::{CircuitBreaker, DestinationQueue, NozzleMetrics};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::encode::{Item, Mapping, MetricsEncoder, Route};
use crate::export::{Exporter, RequestEncoder, SenderOptions, Signal, run_sender};
use crate::{Config, Error};

/// The role's name in its metrics and self-telemetry.
pub const ROLE: &str = "nozzle-otlp";

/// Grace after the drain deadline for senders stuck in a call before they are aborted.
const ABORT_GRACE: Duration = Duration::from_millis(500);

/// The sockets the nozzle serves, bound by the caller (tests bind `127.0.0.1:0`).
#[derive(Debug)]
pub struct Listeners {
    /// `/healthz` and `/metrics` (`Config::admin_listen`, default `127.0.0.1:14842`).
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds `config.admin_listen`.
    ///
    /// # Errors
    /// [`Error::Bind`] naming the field.
    pub async fn bind(config: &Config) -> Result<Self, Error> {
        let admin = TcpListener::bind(&config.admin_listen)
            .await
            .map_err(|source| Error::Bind {
                field: "admin_listen",
                addr: config.admin_listen.clone(),
                source,
            })?;
        Ok(Self { admin })
    }
}

/// One signal's queue as the reader sees it.
struct Destination {
    queue: Arc<DestinationQueue<Item>>,
    metrics: NozzleMetrics,
}

impl Destination {
    fn push(&self, envelope: &bytes::Bytes, points: u32) {
        for point in 0..points {
            self.metrics.received(1);
            self.queue.push(
                Item {
                    envelope: envelope.clone(),
                    point,
                },
                envelope.len(),
            );
        }
    }
}

/// What the reader counts about the firehose itself.
struct ReaderMetrics {
    registry: Registry,
    envelopes: Counter,
    firehose_lost: Counter,
    reconnects: Counter,
    connected: Gauge,
    skipped: HashMap<&'static str, Counter>,
}

impl ReaderMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            registry: registry.clone(),
            envelopes: registry.counter(
                "nozzle.envelopes",
                "Envelopes read from the firehose.",
                &[],
            ),
            firehose_lost: registry.counter(
                "nozzle.firehose_lost",
                "Envelopes the firehose reported lost before they reached this nozzle.",
                &[],
            ),
            reconnects: registry.counter(
                "nozzle.firehose_disconnects",
                "Times the firehose connection dropped.",
                &[],
            ),
            connected: registry.gauge(
                "nozzle.firehose_connected",
                "1 while the firehose stream is open.",
                "bool",
                &[],
            ),
            skipped: HashMap::new(),
        }
    }

    fn skipped(&mut self, reason: &'static str) {
        let registry = &self.registry;
        self.skipped
            .entry(reason)
            .or_insert_with(|| {
                registry.counter(
                    "nozzle.skipped",
                    "Envelopes not exported on purpose (the config leaves them out), by reason.",
                    &[("reason", reason)],
                )
            })
            .inc();
    }
}

/// Runs the nozzle until `shutdown` is cancelled (or the firehose refuses it for good), then
/// gives the senders `shutdown_drain_ms` to export what is queued and returns.
///
/// # Errors
/// An invalid config, a firehose that rejects the token or subscription, or a failed admin
/// server.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate()?;
    let registry = Registry::new(ROLE, &config.instance_id);
    let mut reader_metrics = ReaderMetrics::new(&registry);
    let mapping = Mapping::new(&config);
    let headers = config.headers.to_metadata()?;
    let channel = hydrant_envelope::raw::tuned_endpoint(&config.endpoint)
        .map_err(|_| Error::Config {
            field: "endpoint".to_owned(),
            message: format!(
                "{} is not a valid URL",
                hydrant_nozzle_core::mask_url(&config.endpoint)
            ),
        })?
        .connect_lazy();
    let timeout = Duration::from_millis(config.export_timeout_ms);
    let options = SenderOptions {
        max_items: config.queue.batch_items,
        linger: Duration::from_millis(config.flush_interval_ms),
        max_request_bytes: config.max_request_bytes,
    };

    let mut senders = JoinSet::new();
    // Senders outlive the reader: they stop on their own once their closed queue is empty,
    // or on `senders_stop` when the drain deadline passes.
    let senders_stop = CancellationToken::new();
    let mut destination = |signal: Signal, encoder: RequestEncoder| {
        let metrics = NozzleMetrics::new(
            &registry,
            &format!("{}#{}", config.endpoint, signal.as_str()),
        );
        let queue = Arc::new(DestinationQueue::new(config.queue.clone(), metrics.clone()));
        // Several senders per queue keep that many calls in flight; each has its own breaker,
        // so each backs off on its own when the receiver goes away.
        for _ in 0..config.exports_in_flight {
            senders.spawn(run_sender(
                Arc::clone(&queue),
                Exporter::new(channel.clone(), signal, headers.clone(), timeout),
                encoder.clone(),
                options.clone(),
                config.retry.clone(),
                CircuitBreaker::new(config.breaker.clone()),
                metrics.clone(),
                shutdown.clone(),
                senders_stop.clone(),
            ));
        }
        Destination { queue, metrics }
    };
    let logs = config
        .export_logs
        .then(|| destination(Signal::Logs, RequestEncoder::Logs));
    let metrics = config.export_metrics.then(|| {
        destination(
            Signal::Metrics,
            RequestEncoder::metrics(MetricsEncoder::new(mapping.clone())),
        )
    });

    let admin = tokio::spawn(hydrant_emitter::admin::serve(
        listeners.admin,
        hydrant_emitter::admin::router(registry.clone()),
        shutdown.clone(),
    ));
    let telemetry = config.telemetry.start(&registry, shutdown.clone());
    let client = FirehoseClient::connect(
        config.firehose.clone(),
        Subscription::Firehose {
            subscription_id: config.subscription_id.clone(),
        },
    )?;
    tracing::info!(
        subscription_id = %config.subscription_id,
        endpoint = %hydrant_nozzle_core::mask_url(&config.endpoint),
        logs = logs.is_some(),
        metrics = metrics.is_some(),
        "otlp nozzle reading the firehose"
    );

    let read = read_firehose(
        client,
        &mapping,
        logs.as_ref(),
        metrics.as_ref(),
        &mut reader_metrics,
        &shutdown,
    )
    .await;
    // Whatever ended the reader, stop the rest too.
    shutdown.cancel();
    reader_metrics.connected.set(0.0);

    let destinations: Vec<&Destination> = logs.iter().chain(metrics.iter()).collect();
    for d in &destinations {
        d.queue.close();
    }
    let deadline = Duration::from_millis(config.shutdown_drain_ms);
    let drained = tokio::time::timeout(deadline, async {
        while senders.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        senders_stop.cancel();
        let mut lost = 0;
        for d in &destinations {
            lost += d.queue.discard("shutdown");
        }
        tracing::warn!(
            lost,
            "the receiver did not take everything before the deadline"
        );
        let grace = tokio::time::timeout(ABORT_GRACE, async {
            while senders.join_next().await.is_some() {}
        })
        .await;
        if grace.is_err() {
            senders.shutdown().await;
        }
    }

    let admin_result = admin.await;
    if let Some(emitter) = telemetry {
        emitter.stopped().await;
    }
    read?;
    match admin_result {
        Ok(Ok(())) | Err(_) => Ok(()),
        Ok(Err(e)) => Err(Error::Admin(e)),
    }
}

/// The reader loop: batches in, one item per record or data point pushed to its signal.
async fn read_firehose(
    mut client: FirehoseClient,
    mapping: &Mapping,
    logs: Option<&Destination>,
    metrics: Option<&Destination>,
    reader: &mut ReaderMetrics,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    loop {
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            event = client.next() => event,
        };
        let Some(event) = event else {
            return Ok(());
        };
        match event {
            StreamEvent::Batch(batch) => {
                reader.envelopes.add(batch.len() as u64);
                for envelope in batch.envelopes() {
                    let Ok(view) = EnvelopeView::parse(&envelope) else {
                        // The client validated the batch; this cannot happen, but is counted.
                        reader.skipped("malformed");
                        continue;
                    };
                    match (mapping.route(&view), logs, metrics) {
                        (Route::Logs, Some(d), _) => d.push(&envelope, 1),
                        (Route::Metrics(n), _, Some(d)) => d.push(&envelope, n),
                        (Route::Skip(reason), _, _) => reader.skipped(reason),
                        // A signal without a destination is one the config turned off.
                        (Route::Logs, None, _) => reader.skipped("logs_disabled"),
                        (Route::Metrics(_), _, None) => reader.skipped("metrics_disabled"),
                    }
                }
            }
            StreamEvent::Gap(gap) => {
                reader.firehose_lost.add(gap.dropped);
                tracing::warn!(
                    dropped = gap.dropped,
                    hop = %gap.hop,
                    reason = %gap.reason,
                    "the firehose lost envelopes before this nozzle"
                );
            }
            StreamEvent::Connected => {
                reader.connected.set(1.0);
                tracing::info!("firehose connected");
            }
            StreamEvent::Closed { code, reason } => {
                reader.connected.set(0.0);
                tracing::warn!(code, %reason, "firehose closed the stream");
            }
            StreamEvent::Disconnected { reason, retry_in } => {
                reader.connected.set(0.0);
                reader.reconnects.inc();
                tracing::warn!(%reason, ?retry_in, "firehose disconnected");
            }
            StreamEvent::Fatal(e) => {
                reader.connected.set(0.0);
                return Err(Error::Firehose(e));
            }
            other => tracing::debug!(?other, "firehose event ignored"),
        }
    }
}
