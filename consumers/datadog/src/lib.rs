//! The Datadog nozzle: reads the firehose and sends its metrics to Datadog's metrics API v2
//! (`POST /api/v2/series`), timers optionally as distribution points, and — when enabled — its
//! logs to the logs intake.
//!
//! Flow: firehose edge → [`hydrant_firehose_client::FirehoseClient`] (a shared subscription
//! id, so several copies split the stream) → [`aggregate::Aggregator`] (one point per series
//! per flush interval: counters as `count` deltas, gauges as `gauge`, timers as derived gauges
//! or distributions) → [`series::encode`] (JSON, gzip, within Datadog's 512000-byte compressed
//! and 5 MiB decompressed limits) → one bounded [`outbox::Outbox`] per endpoint → a sender per
//! endpoint ([`sender::deliver`]: retries 429/5xx with backoff and `Retry-After`, never
//! retries other 4xx, circuit breaker) → Datadog. [`DatadogNozzle`] wires it together from a
//! [`Config`] (`hydrant nozzle datadog --config FILE`).
//!
//! Invariants: aggregation bounds memory and work whatever the firehose rate (100,000
//! envelopes/s become at most `batch.max_series` points per interval); a slow or dead Datadog
//! never slows the firehose (queues drop their oldest requests and count them); every metric
//! value read is, per endpoint, either sent or counted as dropped with a reason; the API key
//! never appears in a log, metric or error.

pub mod aggregate;
mod config;
mod error;
pub mod http;
mod intervals;
pub mod logs;
pub mod outbox;
mod role;
pub mod sender;
pub mod series;

pub use config::{
    ApiKey, BatchConfig, Compression, Config, DATADOG_MAX_COMPRESSED_BYTES,
    DATADOG_MAX_UNCOMPRESSED_BYTES, LogsConfig, OutboxLimits, TimerMode,
};
pub use error::Error;
pub use role::{DISTRIBUTION_PATH, DatadogNozzle, LOGS_PATH, ROLE, SERIES_PATH};
