//! The OTLP nozzle: reads the firehose and exports logs and metrics to an OpenTelemetry
//! receiver (a collector, or any backend speaking OTLP/gRPC), `hydrant nozzle otlp --config
//! FILE`.
//!
//! Flow: firehose edge → [`hydrant_firehose_client::FirehoseClient`] (a shared subscription
//! id, so several copies split the stream) → [`encode::Mapping::route`] → one bounded
//! [`hydrant_nozzle_core::DestinationQueue`] per signal (logs, metrics) → `exports_in_flight`
//! senders per signal ([`export::run_sender`]) that batch, encode each OTLP request once and
//! call `LogsService/Export` / `MetricsService/Export`, with retries, backoff and a circuit
//! breaker each. A pass-through: no OpenTelemetry SDK pipeline, no aggregation state beyond one
//! bounded map (below); we batch ourselves.
//!
//! # Mapping
//! Every record sits under a `Resource` made from the envelope: `service.name` (the
//! `app_name` tag, else `source_id`), `service.instance.id` (`instance_id`),
//! `hydrant.source_id`, `hydrant.app_id` (the `app_id` tag, or `source_id` when the envelope
//! names an app), and the OpenTelemetry Cloud Foundry conventions `cloudfoundry.app.id`,
//! `cloudfoundry.app.name`, `cloudfoundry.app.instance.id`, `cloudfoundry.space.{id,name}`,
//! `cloudfoundry.org.{id,name}` where the tags carry them. The scope is `hydrant-nozzle-otlp`.
//!
//! - **Log** → a `LogRecord`: body = the payload (a string; bytes if not UTF-8), severity
//!   `INFO` (9) for OUT and `ERROR` (17) for ERR, `time_unix_nano` = the envelope's time,
//!   `observed_time_unix_nano` = when the nozzle exported it, attributes = every tag plus
//!   `log.iostream` (`stdout`/`stderr`).
//! - **Event** → a `LogRecord` with `event_name` = the title, body = the event body, INFO.
//! - **Counter** → a monotonic `Sum` named exactly as the counter (`nozzle.sent`), integer
//!   points. `[metrics] counters = "cumulative"` (default) exports the envelope's `total`
//!   (a counter that carries only deltas is summed here per series, in a map capped at 10,000
//!   series that starts over when full, as Loggregator's aggregator does; start time is left
//!   0, unknown); `"delta"` exports the envelope's `delta`, which is right when several
//!   copies share the stream.
//! - **Gauge** → one `Gauge` per entry, named exactly as the entry (`cpu`, `memory`) with its
//!   unit as the envelope gives it (`percentage`, `bytes`).
//! - **Timer** named in `[metrics] histogram_timers` (default `http`) → a delta `Histogram`
//!   named after the timer (`http`), unit `s`, one point per request (count 1, sum = min =
//!   max = the duration in seconds, start/end = the timer's), over explicit bounds
//!   `histogram_bounds_seconds` (default 5 ms … 10 s). Other timers are skipped and counted.
//!
//! Metric names get `[metrics] prefix` in front (default empty, so dashboards can rely on the
//! envelope names). Every metric point carries the envelope's tags plus `source_id` and
//! `instance_id` as attributes (backends such as Prometheus keep point attributes, not
//! resource ones), except the per-request timer tags in `histogram_drop_tags` (`request_id`,
//! `uri`, ...), which would make one series per request.
//!
//! # Accounting
//! The queue unit is one log record or one data point (a gauge of three entries is three).
//! For each signal `nozzle.received = nozzle.sent + Σ nozzle.dropped{reason}` once the
//! queue is empty, reasons `queue_full`, `too_large`, `rejected` (a non-retryable status, or
//! what the receiver refused in `partial_success`), `retries_exhausted`, `shutdown`. Envelopes
//! left out on purpose count in `nozzle.skipped{reason}`. The destination tag is
//! `ENDPOINT#logs` / `ENDPOINT#metrics`.

pub mod config;
pub mod encode;
mod error;
pub mod export;
mod role;

pub use config::{Config, Headers, MetricsConfig, Temporality};
pub use error::Error;
pub use role::{OtlpNozzle, ROLE};
