//! The OTLP nozzle role: `run` reads the firehose and keeps an OTLP receiver fed with logs and
//! metrics.
//!
//! Flow: [`FirehoseReader`] (shared subscription) → reader loop ([`Mapping::route`]: one
//! [`Item`] per log record or data point) → one [`DestinationQueue`] per signal →
//! `exports_in_flight` [`run_sender`] tasks per signal → `LogsService/Export` /
//! `MetricsService/Export`, all on one HTTP/2 connection.
//!
//! With `cursor_file`, every frame's cursor is recorded as a checkpoint against the queues its
//! records went to, and the keeper stores the newest cursor whose records were all exported
//! (or refused and counted): a nozzle killed at any moment resumes there.
//!
//! Invariants: the reader never waits on a stuck receiver — a push evicts that signal's oldest
//! items and counts them, so a slow receiver costs data, never firehose lag, and a receiver
//! that refuses one signal does not hold the other back (with a `cursor_file` the reader waits
//! for a queue that is exporting but half full, since the firehose keeps what is not read yet:
//! `Keeper::pace`); on shutdown the senders get
//! `shutdown_drain_ms` to export what is queued and the rest is counted as
//! `dropped{reason="shutdown"}`; the endpoint is named only masked, headers never.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hydrant_emitter::{Counter, Registry};
use hydrant_envelope::wire::EnvelopeView;
use hydrant_nozzle_core::{
    CircuitBreaker, CursorFile, DestinationQueue, FirehoseReader, Keeper, NozzleMetrics, Progress,
    finish_senders, mask_url,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::encode::{Item, Mapping, MetricsEncoder, Route};
use crate::export::{Exporter, RequestEncoder, SenderOptions, Signal, run_sender};
use crate::{Config, Error};

/// The role's name in its metrics and self-telemetry.
pub const ROLE: &str = "nozzle-otlp";

hydrant_runtime::role! {
    /// The OTLP nozzle as a [`hydrant_runtime::Role`]: `hydrant run nozzle-otlp` and `hydrant nozzle
    /// otlp`.
    pub struct OtlpNozzle {
        name: "nozzle-otlp", config: Config, error: Error, admin: "127.0.0.1:14842" => admin_listen,
        registry: |c| Registry::new(ROLE, &c.instance_id),
        describe: |c| format!("exporting to {}, subscription {:?}", mask_url(&c.endpoint), c.subscription_id),
        serve: serve,
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

/// Envelopes the reader leaves out on purpose, counted by reason.
struct Skipped {
    registry: Registry,
    by_reason: HashMap<&'static str, Counter>,
}

impl Skipped {
    fn new(registry: &Registry) -> Self {
        Self {
            registry: registry.clone(),
            by_reason: HashMap::new(),
        }
    }

    fn count(&mut self, reason: &'static str) {
        let registry = &self.registry;
        self.by_reason
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
async fn serve(
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let mut skipped = Skipped::new(&registry);
    let mapping = Mapping::new(&config);
    let (cursor_file, saved) = CursorFile::open(config.cursor_file.as_deref())?;
    let headers = config.headers.to_metadata()?;
    let channel = hydrant_envelope::raw::tuned_endpoint(&config.endpoint)
        .map_err(|_| {
            Error::config(
                "endpoint".to_owned(),
                format!(
                    "{} is not a valid URL",
                    hydrant_nozzle_core::mask_url(&config.endpoint)
                ),
            )
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
        let queue = Arc::new(DestinationQueue::for_cursor(
            config.queue.clone(),
            metrics.clone(),
            cursor_file.is_some(),
        ));
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

    let telemetry = config.telemetry.start(&registry, shutdown.clone());
    let reader = FirehoseReader::resume(
        config.firehose.clone(),
        &config.subscription_id,
        &registry,
        saved.as_ref(),
    )?;
    // The cursor is stored only once every queue dealt with a frame (at-least-once).
    let keeper = Keeper::start(cursor_file);
    tracing::info!(
        subscription_id = %config.subscription_id,
        endpoint = %hydrant_nozzle_core::mask_url(&config.endpoint),
        logs = logs.is_some(),
        metrics = metrics.is_some(),
        "otlp nozzle reading the firehose"
    );

    let read = read_firehose(
        reader,
        &mapping,
        logs.as_ref(),
        metrics.as_ref(),
        &mut skipped,
        keeper.as_ref(),
        &shutdown,
    )
    .await;
    // Whatever ended the reader, stop the rest too.
    shutdown.cancel();

    let destinations: Vec<&Destination> = logs.iter().chain(metrics.iter()).collect();
    for d in &destinations {
        d.queue.close();
    }
    let deadline = Duration::from_millis(config.shutdown_drain_ms);
    finish_senders(&mut senders, deadline, &senders_stop, || {
        let mut lost = 0;
        for d in &destinations {
            lost += d.queue.discard("shutdown");
        }
        tracing::warn!(
            lost,
            "the receiver did not take everything before the deadline"
        );
    })
    .await;

    // The senders are done: store the last settled cursor.
    if let Some(keeper) = keeper {
        keeper.finish().await;
    }

    if let Some(telemetry) = &telemetry {
        telemetry.stopped().await;
    }
    read
}

/// The reader loop: batches in, one item per record or data point pushed to its signal.
async fn read_firehose(
    mut reader: FirehoseReader,
    mapping: &Mapping,
    logs: Option<&Destination>,
    metrics: Option<&Destination>,
    skipped: &mut Skipped,
    keeper: Option<&Keeper>,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    while let Some(batch) = reader.next_batch(shutdown).await? {
        for envelope in batch.envelopes() {
            let Ok(view) = EnvelopeView::parse(&envelope) else {
                // The client validated the batch; this cannot happen, but is counted.
                skipped.count("malformed");
                continue;
            };
            match (mapping.route(&view), logs, metrics) {
                (Route::Logs, Some(d), _) => d.push(&envelope, 1),
                (Route::Metrics(n), _, Some(d)) => d.push(&envelope, n),
                (Route::Skip(reason), _, _) => skipped.count(reason),
                // A signal without a destination is one the config turned off.
                (Route::Logs, None, _) => skipped.count("logs_disabled"),
                (Route::Metrics(_), _, None) => skipped.count("metrics_disabled"),
            }
        }
        if let (Some(keeper), Some(cursor)) = (keeper, batch.cursor()) {
            // A queue's pushed total only grows, so marking both (touched or not) is exact.
            let marks: Vec<(Arc<dyn Progress>, u64)> = logs
                .iter()
                .chain(metrics.iter())
                .filter_map(|d| d.queue.watermark())
                .map(|w| {
                    let pushed = w.pushed();
                    (Arc::clone(w) as Arc<dyn Progress>, pushed)
                })
                .collect();
            keeper.record(cursor, marks);
            // The firehose keeps what is not read yet: read on only as fast as the receiver
            // takes it (a restarted nozzle catching up would otherwise evict from the queues
            // what the dopplers' rings kept for it).
            keeper.pace(shutdown).await;
        }
    }
    Ok(())
}
