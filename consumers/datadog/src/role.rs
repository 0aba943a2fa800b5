//! The Datadog nozzle role: `run` reads the firehose, aggregates metrics per interval and keeps
//! Datadog fed.
//!
//! Flow: [`FirehoseReader`] (shared subscription) → reader loop → [`Aggregator`] (and, with
//! `[logs]`, one intake entry per log) → every `batch.flush_interval_ms`: flush → [`encode`]
//! → one [`Outbox`] per metrics endpoint → one sender task per endpoint ([`deliver`]) →
//! Datadog.
//!
//! With `cursor_file`, every frame's cursor is recorded as a checkpoint against the intervals
//! its metrics went into ([`Intervals`]) and the logs queue, and the keeper stores the newest
//! cursor Datadog took everything of: a nozzle killed at any moment resumes there.
//!
//! Invariants: the reader never waits on a stuck Datadog — outboxes and the log queue drop
//! their oldest entries and count them, so a slow or dead Datadog costs only data, never
//! firehose throughput (with a `cursor_file` the reader waits for a logs queue that is
//! delivering but half full, since the firehose keeps what is not read yet: `Keeper::pace`;
//! metrics are folded per interval, so they never hold the reader); the ledger holds per endpoint: `received = sent + Σ dropped{reason}` once the
//! role has stopped; on shutdown the partial interval is flushed too, the senders get
//! `shutdown_drain_ms`, and what is left is counted as `dropped{reason="shutdown"}`; the API
//! key is read once and lives only in a sensitive header value.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hydrant_emitter::{Counter, Gauge, Registry};
use hydrant_nozzle_core::{
    CircuitBreaker, CursorFile, DestinationQueue, FirehoseReader, Keeper, NozzleMetrics, Progress,
    Ticket, Watermark, finish_senders, mask_url,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::aggregate::{Aggregator, MapOptions, Route};
use crate::http::{HttpClient, Target, tls_config};
use crate::intervals::Intervals;
use crate::outbox::Outbox;
use crate::sender::{Endpoint, RetryPolicy, deliver};
use crate::series::{Limits, Payload, encode};
use crate::{ApiKey, Compression, Config, Error, TimerMode, logs};

/// The role's name in its metrics and self-telemetry.
pub const ROLE: &str = "nozzle-datadog";

/// Path of the metrics API v2.
pub const SERIES_PATH: &str = "/api/v2/series";
/// Path of the distribution points API.
pub const DISTRIBUTION_PATH: &str = "/api/v1/distribution_points";
/// Path of the logs intake.
pub const LOGS_PATH: &str = "/api/v2/logs";

hydrant_runtime::role! {
    /// The Datadog nozzle as a [`hydrant_runtime::Role`]: `hydrant run nozzle-datadog` and `hydrant
    /// nozzle datadog`.
    pub struct DatadogNozzle {
        name: "nozzle-datadog", config: Config, error: Error, admin: "127.0.0.1:14841" => admin_listen,
        registry: |c| Registry::new(ROLE, &c.instance_id),
        describe: |c| format!("sending to {}, subscription {:?}", mask_url(&c.api_url), c.subscription_id),
        serve: start,
    }
}

/// The role's entry: the API key from the config or the environment, then [`serve`].
async fn start(
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let api_key = config.api_key(|name| std::env::var(name).ok())?;
    serve(config, api_key, registry, shutdown).await
}

/// What the reader counts about the flushes.
struct FlushMetrics {
    series: Gauge,
    flushes: Counter,
}

impl FlushMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            series: registry.gauge(
                "nozzle.series",
                "Series in the last flushed interval.",
                "count",
                &[],
            ),
            flushes: registry.counter("nozzle.flushes", "Intervals flushed.", &[]),
        }
    }
}

/// A metrics endpoint as the reader sees it.
struct MetricsSink {
    outbox: Arc<Outbox>,
    metrics: NozzleMetrics,
    compression: Compression,
}

/// The logs endpoint as the reader sees it.
struct LogsSink {
    queue: Arc<DestinationQueue<Bytes>>,
    metrics: NozzleMetrics,
    source: String,
    tags: Vec<String>,
}

/// Everything the reader feeds.
struct Sinks {
    series: MetricsSink,
    distribution: Option<MetricsSink>,
    logs: Option<LogsSink>,
    limits: Limits,
    /// With a cursor file: which frames' metrics Datadog has taken.
    intervals: Option<Arc<Intervals>>,
}

/// Runs the nozzle until `shutdown` is cancelled (or the firehose refuses it for good), then
/// flushes the partial interval, gives the senders `shutdown_drain_ms` and returns.
async fn serve(
    config: Config,
    api_key: ApiKey,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let flush_metrics = FlushMetrics::new(&registry);
    let (cursor_file, saved) = CursorFile::open(config.cursor_file.as_deref())?;
    let tracked = cursor_file.is_some();
    let api = Target::parse("api_url", &config.api_url)?;
    let logs_target = if config.logs.enabled {
        Some(Target::parse("logs.url", &config.logs.url)?)
    } else {
        None
    };
    let tls = if api.tls || logs_target.as_ref().is_some_and(|t| t.tls) {
        Some(tls_config(config.ca_file.as_deref())?)
    } else {
        None
    };
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let policy = RetryPolicy {
        backoff: config.retry.clone(),
        max_retry_after: Duration::from_millis(config.max_retry_after_ms),
    };

    let mut senders = JoinSet::new();
    // Senders outlive the reader: they stop once their closed queue is empty, or on this token
    // when the drain deadline passes.
    let senders_stop = CancellationToken::new();
    // One sender per endpoint, each with its own breaker, so one failing intake does not
    // hold the others back.
    let sender_for = |path: &'static str, field: &str, target: &Target| {
        let client = HttpClient::new(field, target.clone(), tls.clone(), timeout)?;
        let endpoint = Endpoint::new(client, path, &api_key)?;
        Ok::<_, Error>(Sender {
            metrics: NozzleMetrics::new(&registry, &endpoint.url()),
            endpoint,
            policy: policy.clone(),
            breaker: CircuitBreaker::new(config.breaker.clone()),
            stop: senders_stop.clone(),
        })
    };
    let mut metrics_endpoint = |path: &'static str, field: &str, target: &Target| {
        let sender = sender_for(path, field, target)?;
        let metrics = sender.metrics.clone();
        let outbox = Arc::new(if tracked {
            Outbox::tracked(
                config.queue.clone(),
                metrics.clone(),
                Arc::new(Watermark::default()),
            )
        } else {
            Outbox::new(config.queue.clone(), metrics.clone())
        });
        senders.spawn(send_requests(Arc::clone(&outbox), sender));
        Ok::<_, Error>((outbox, metrics))
    };
    let (outbox, metrics) = metrics_endpoint(SERIES_PATH, "api_url", &api)?;
    let series = MetricsSink {
        outbox,
        metrics,
        compression: config.compression,
    };
    let distribution = if config.timers == TimerMode::Distribution {
        let (outbox, metrics) = metrics_endpoint(DISTRIBUTION_PATH, "api_url", &api)?;
        Some(MetricsSink {
            outbox,
            metrics,
            // The only encoding the distribution points API documents.
            compression: Compression::Deflate,
        })
    } else {
        None
    };
    let logs = match &logs_target {
        Some(target) => {
            let sender = sender_for(LOGS_PATH, "logs.url", target)?;
            let metrics = sender.metrics.clone();
            let queue = Arc::new(DestinationQueue::for_cursor(
                config.logs.queue.clone(),
                metrics.clone(),
                tracked,
            ));
            senders.spawn(send_logs(Arc::clone(&queue), sender));
            Some(LogsSink {
                queue,
                metrics,
                source: config.logs.source.clone(),
                tags: config.tags.clone(),
            })
        }
        None => None,
    };
    let sinks = Sinks {
        series,
        distribution,
        logs,
        limits: Limits {
            max_series: config.batch.max_series_per_request,
            max_uncompressed: config.batch.max_uncompressed_bytes,
            max_compressed: config.batch.max_compressed_bytes,
        },
        intervals: tracked.then(|| Arc::new(Intervals::default())),
    };

    let telemetry = config.telemetry.start(&registry, shutdown.clone());
    let reader = FirehoseReader::resume(
        config.firehose.clone(),
        &config.subscription_id,
        &registry,
        saved.as_ref(),
    )?;
    // The cursor is stored only once Datadog took everything of a frame (at-least-once).
    let keeper = Keeper::start(cursor_file);
    tracing::info!(
        subscription_id = %config.subscription_id,
        api = %sinks.series.metrics.destination(),
        timers = ?config.timers,
        logs = sinks.logs.is_some(),
        "datadog nozzle reading the firehose"
    );

    let mut aggregator = Aggregator::new(MapOptions::from_config(&config));
    let flush_every = Duration::from_millis(config.batch.flush_interval_ms);
    let read = read_firehose(
        reader,
        &mut aggregator,
        &sinks,
        flush_every,
        &flush_metrics,
        keeper.as_ref(),
        &shutdown,
    )
    .await;
    // Whatever ended the reader, stop the rest too, and send the partial interval.
    shutdown.cancel();
    flush(&mut aggregator, &sinks, flush_every, &flush_metrics);

    sinks.series.outbox.close();
    if let Some(d) = &sinks.distribution {
        d.outbox.close();
    }
    if let Some(l) = &sinks.logs {
        l.queue.close();
    }
    let deadline = Duration::from_millis(config.shutdown_drain_ms);
    finish_senders(&mut senders, deadline, &senders_stop, || {
        let mut lost = sinks.series.outbox.discard("shutdown");
        if let Some(d) = &sinks.distribution {
            lost += d.outbox.discard("shutdown");
        }
        if let Some(l) = &sinks.logs {
            lost += l.queue.discard("shutdown");
        }
        tracing::warn!(lost, "Datadog did not take everything before the deadline");
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

fn now_secs() -> i64 {
    hydrant_envelope::now_nanos() / 1_000_000_000
}

/// The reader loop: batches folded in, a flush every `flush_every`.
async fn read_firehose(
    mut reader: FirehoseReader,
    aggregator: &mut Aggregator,
    sinks: &Sinks,
    flush_every: Duration,
    metrics: &FlushMetrics,
    keeper: Option<&Keeper>,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + flush_every, flush_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let batch = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {
                flush(aggregator, sinks, flush_every, metrics);
                continue;
            }
            // With a cursor the firehose keeps what is not read yet: read on only as fast as
            // the logs intake takes what it is given (a restarted nozzle catching up would
            // otherwise evict from its queue what the dopplers' rings kept for it). Waiting
            // here, inside the select, lets the interval flushes go on meanwhile.
            batch = async {
                if let Some(keeper) = keeper {
                    keeper.pace(shutdown).await;
                }
                reader.next_batch(shutdown).await
            } => batch?,
        };
        let Some(batch) = batch else {
            return Ok(());
        };
        let now = now_secs();
        let mut scratch = Vec::with_capacity(16);
        for view in batch.iter() {
            aggregator.add(&view, now, &mut scratch);
            if let Some(logs) = &sinks.logs
                && let Some(entry) = logs::entry(&view, &logs.source, &logs.tags)
            {
                logs.metrics.received(1);
                logs.queue.push(entry.clone(), entry.len());
            }
        }
        report_tally(aggregator, sinks);
        if let (Some(keeper), Some(cursor)) = (keeper, batch.cursor()) {
            let mut marks: Vec<(Arc<dyn Progress>, u64)> = Vec::with_capacity(2);
            if let Some(intervals) = &sinks.intervals {
                intervals.frame();
                marks.push((
                    Arc::clone(intervals) as Arc<dyn Progress>,
                    intervals.pushed(),
                ));
            }
            if let Some(w) = sinks.logs.as_ref().and_then(|l| l.queue.watermark()) {
                marks.push((Arc::clone(w) as Arc<dyn Progress>, w.pushed()));
            }
            keeper.record(cursor, marks);
        }
    }
}

/// Moves the aggregator's counts into each endpoint's metrics.
fn report_tally(aggregator: &mut Aggregator, sinks: &Sinks) {
    let tally = aggregator.take_tally();
    for (route, sink) in [
        (Route::Series, Some(&sinks.series)),
        (Route::Distribution, sinks.distribution.as_ref()),
    ] {
        let Some(sink) = sink else { continue };
        let received = tally.received(route);
        if received > 0 {
            sink.metrics.received(received);
        }
        for (reason, n) in tally.drops(route) {
            sink.metrics.dropped(reason, n);
        }
    }
}

/// Ends the interval: series encoded into requests and queued for their endpoints.
fn flush(aggregator: &mut Aggregator, sinks: &Sinks, every: Duration, metrics: &FlushMetrics) {
    let interval = i64::try_from(every.as_secs()).unwrap_or(i64::MAX).max(1);
    // Counts are stamped with the start of the interval they cover.
    let window_start = now_secs() - interval;
    let flushed = aggregator.flush(window_start, interval);
    // Sampled-away timer values are only known at the flush.
    report_tally(aggregator, sinks);
    metrics.flushes.inc();
    metrics
        .series
        .set((flushed.series.len() + flushed.distributions.len()) as f64);
    let queue = |sink: &MetricsSink, encoded: crate::series::Encoded| {
        if encoded.too_large > 0 {
            sink.metrics.dropped("too_large", encoded.too_large);
        }
        for payload in encoded.payloads {
            sink.outbox.push(payload);
        }
    };
    if !flushed.series.is_empty() {
        let encoded = encode(
            &flushed.series,
            |s| s.values,
            sinks.limits,
            sinks.series.compression,
        );
        queue(&sinks.series, encoded);
    }
    if let Some(sink) = &sinks.distribution
        && !flushed.distributions.is_empty()
    {
        let encoded = encode(
            &flushed.distributions,
            |d| d.values,
            sinks.limits,
            sink.compression,
        );
        queue(sink, encoded);
    }
    if let Some(intervals) = &sinks.intervals {
        let series = sinks.series.outbox.watermark();
        let distribution = sinks
            .distribution
            .as_ref()
            .and_then(|d| d.outbox.watermark());
        intervals.flushed(series.into_iter().chain(distribution));
    }
}

/// What sends to one endpoint: its requests, retry policy, breaker and metrics; `stop` is
/// the drain deadline.
struct Sender {
    endpoint: Endpoint,
    policy: RetryPolicy,
    breaker: CircuitBreaker,
    metrics: NozzleMetrics,
    stop: CancellationToken,
}

impl Sender {
    /// Delivers `payload` (retrying as the policy allows), then settles its `ticket`.
    async fn send(&mut self, payload: &Payload, ticket: Ticket) {
        deliver(
            &mut self.endpoint,
            payload,
            &self.policy,
            &mut self.breaker,
            &self.metrics,
            &self.stop,
        )
        .await;
        // Past the drain deadline a request is thrown away, not refused: the stored cursor
        // must stay before it.
        if !self.stop.is_cancelled() {
            ticket.done();
        }
    }
}

async fn send_requests(outbox: Arc<Outbox>, mut sender: Sender) {
    while let Some((payload, ticket)) = outbox.next_tracked().await {
        sender.send(&payload, ticket).await;
    }
}

async fn send_logs(queue: Arc<DestinationQueue<Bytes>>, mut sender: Sender) {
    while let Some((batch, ticket)) = queue.next_tracked_batch().await {
        sender.send(&logs::payload(&batch), ticket).await;
    }
}
