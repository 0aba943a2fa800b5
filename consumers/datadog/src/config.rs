//! The Datadog nozzle's config: where the firehose is, where Datadog is and how to
//! authenticate, how envelopes become series, and how big and how often requests are.
//!
//! Loaded from TOML by `hydrant nozzle datadog --config FILE`. Unknown fields are refused,
//! every field has a default, and [`Config::validate`] names the field at fault.
//! Invariant: the API key is never part of the config text itself — it is read from an
//! environment variable or a file when the role starts — and no error built here shows it.

use std::path::PathBuf;

use hydrant_emitter::TelemetryConfig;
use hydrant_firehose_client::ClientConfig;
use hydrant_nozzle_core::{
    Backoff, BreakerConfig, QueueLimits, validate_firehose, validate_self_report,
};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::http::Target;

/// Datadog's documented ceiling on one compressed `/api/v2/series` body: 500 KB.
pub const DATADOG_MAX_COMPRESSED_BYTES: usize = 512_000;
/// Datadog's documented ceiling on one decompressed `/api/v2/series` body: 5 MiB (the body
/// must be *less* than this).
pub const DATADOG_MAX_UNCOMPRESSED_BYTES: usize = 5_242_880;
/// Datadog's logs intake: at most 1000 entries per request.
pub const DATADOG_LOGS_MAX_ENTRIES: usize = 1_000;
/// Datadog's logs intake: at most 5 MB per uncompressed request.
pub const DATADOG_LOGS_MAX_BYTES: usize = 5_000_000;
/// Datadog's logs intake: one log larger than 1 MB is truncated by Datadog; we cut it first.
pub const DATADOG_LOG_MAX_BYTES: usize = 1_000_000;

/// How Timer envelopes (start/stop spans, e.g. one HTTP request) reach Datadog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimerMode {
    /// Per series and interval: `<name>.count` (count) and `<name>.avg`/`.min`/`.max`/
    /// `.p50`/`.p95`/`.p99` (gauges, milliseconds), all through `/api/v2/series`. Count, sum,
    /// min and max are exact; the percentiles come from a uniform sample of at most
    /// `batch.max_timer_samples` durations. Nothing is dropped. The default.
    #[default]
    Gauges,
    /// Per series and interval, one distribution point (durations in milliseconds) sent to
    /// `/api/v1/distribution_points`, so Datadog computes percentiles across instances. At most
    /// `batch.max_timer_samples` durations go per point (a uniform sample); the rest are counted
    /// as `dropped{reason="timer_sampled"}`.
    Distribution,
}

/// Request body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// `Content-Encoding: gzip`. The default.
    #[default]
    Gzip,
    /// `Content-Encoding: deflate` (zlib).
    Deflate,
}

impl Compression {
    /// The `Content-Encoding` header value.
    #[must_use]
    pub const fn header(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
        }
    }
}

/// The `[batch]` section: how often series are flushed and how big one request may be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// How often the aggregated interval is flushed into requests, in ms. Each series gets one
    /// point per interval, so this is also the resolution seen in Datadog. Default 10000.
    pub flush_interval_ms: u64,
    /// Most distinct series (metric name + tags) aggregated in one interval; values of further
    /// series are counted as `dropped{reason="series_limit"}`. Bounds memory whatever the
    /// firehose carries. Default 10000.
    pub max_series: usize,
    /// Most series in one request. Default 2000.
    pub max_series_per_request: usize,
    /// Most bytes of one compressed request body; at most Datadog's 512000. Default 512000.
    pub max_compressed_bytes: usize,
    /// Most bytes of one request body before compression; below Datadog's 5242880. Default
    /// 5242879.
    pub max_uncompressed_bytes: usize,
    /// Most timer durations kept per series and interval (a uniform sample) for percentiles or
    /// distribution points. Default 1000.
    pub max_timer_samples: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            flush_interval_ms: 10_000,
            max_series: 10_000,
            max_series_per_request: 2_000,
            max_compressed_bytes: DATADOG_MAX_COMPRESSED_BYTES,
            max_uncompressed_bytes: DATADOG_MAX_UNCOMPRESSED_BYTES - 1,
            max_timer_samples: 1_000,
        }
    }
}

/// The `[queue]` section: requests built but not yet accepted by Datadog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxLimits {
    /// Most requests waiting per endpoint. When full, the oldest request is dropped and its
    /// values counted as `dropped{reason="queue_full"}`. Default 64.
    pub max_requests: usize,
    /// Most compressed bytes waiting per endpoint. Default 32 MiB.
    pub max_bytes: usize,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self {
            max_requests: 64,
            max_bytes: 32 * 1024 * 1024,
        }
    }
}

/// The optional `[logs]` section: Log envelopes to Datadog's logs intake (`/api/v2/logs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Send logs at all. Default false.
    pub enabled: bool,
    /// The logs intake base URL. Default `https://http-intake.logs.datadoghq.com`.
    pub url: String,
    /// `ddsource` of every log. Default `hydrant`.
    pub source: String,
    /// Queue and batch limits of the logs endpoint (batches are kept within the intake's 1000
    /// entries / 5 MB). Default 10000 logs / 16 MiB queued, 1000 logs / 4 MB per request.
    pub queue: QueueLimits,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            url: "https://http-intake.logs.datadoghq.com".to_owned(),
            source: "hydrant".to_owned(),
            queue: QueueLimits {
                max_items: 10_000,
                max_bytes: 16 * 1024 * 1024,
                batch_items: DATADOG_LOGS_MAX_ENTRIES,
                batch_bytes: DATADOG_LOGS_MAX_BYTES - DATADOG_LOG_MAX_BYTES,
            },
        }
    }
}

/// The whole config of one Datadog nozzle.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The firehose edge to read (`url`, `token` with the `firehose` scope, reconnect policy).
    pub firehose: ClientConfig,
    /// The firehose shard group. Nozzles sharing it split the stream between them. Default
    /// `datadog-nozzle`. Note that two copies each aggregate their own share, which Datadog
    /// sums for counts and overwrites for gauges of the same series.
    pub subscription_id: String,
    /// Datadog's API base URL; `/api/v2/series` and `/api/v1/distribution_points` are appended.
    /// Default `https://api.datadoghq.com` (use your site's, e.g. `https://api.datadoghq.eu`).
    pub api_url: String,
    /// The environment variable holding the API key. Default `DD_API_KEY`.
    pub api_key_env: String,
    /// A file holding the API key (surrounding whitespace ignored); wins over `api_key_env`.
    /// Default unset.
    pub api_key_file: Option<PathBuf>,
    /// A PEM file of extra trusted root certificates for https endpoints (a TLS-inspecting
    /// proxy's CA); the system's roots are always trusted. Default unset.
    pub ca_file: Option<PathBuf>,
    /// Prepended to every metric name. Default `hydrant.`.
    pub prefix: String,
    /// Extra `key:value` tags on every series, e.g. `["env:prod"]`. Default none.
    pub tags: Vec<String>,
    /// The `deployment:` tag of envelopes that carry none. Default `hydrant`.
    pub deployment: String,
    /// Envelope tag keys never sent (high-cardinality ones). Default `created_at`, `user_data`
    /// (what Datadog's Cloud Foundry nozzle drops).
    pub drop_tags: Vec<String>,
    /// How timers are sent: `gauges` (default) or `distribution`.
    pub timers: TimerMode,
    /// Request compression: `gzip` (default) or `deflate`. Distribution points always use
    /// `deflate`, the only encoding that endpoint documents.
    pub compression: Compression,
    /// Flush interval and request size limits.
    pub batch: BatchConfig,
    /// Requests waiting for Datadog, per endpoint.
    pub queue: OutboxLimits,
    /// Retries of a failed request (429, 5xx, 408, connection errors). Default 500 ms doubling
    /// to 30 s, 6 retries.
    pub retry: Backoff,
    /// Longest `Retry-After` / `X-RateLimit-Reset` wait honoured, in ms. Default 60000.
    pub max_retry_after_ms: u64,
    /// When to stop trying an endpoint that stays down. Default 5 failures, 10 s open.
    pub breaker: BreakerConfig,
    /// Deadline for connecting and one request/response, in ms. Default 10000.
    pub request_timeout_ms: u64,
    /// On shutdown, how long queued requests get to go out, in ms; the rest is counted as
    /// `dropped{reason="shutdown"}`. Default 2000.
    pub shutdown_drain_ms: u64,
    /// This copy's instance id in its own metrics. Default `0`.
    pub instance_id: String,
    /// `/healthz` and `/metrics`. Default `127.0.0.1:14841`.
    pub admin_listen: String,
    /// Where the nozzle's own metrics go as envelopes.
    pub telemetry: TelemetryConfig,
    /// Logs to the logs intake (off by default).
    pub logs: LogsConfig,
    /// A file keeping the firehose cursor of the last frame Datadog took everything of: its
    /// metrics flushed in an interval whose requests were all sent (or refused and counted),
    /// its logs sent. With it, a nozzle restarted within the dopplers' replay window (60 s by
    /// default) resumes there and loses nothing; what was sent after the stored cursor is sent
    /// again (a count can be counted twice) and counted in `nozzle.duplicates` as far as known.
    /// The directory must exist. Default unset: a restarted nozzle starts from live data.
    pub cursor_file: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            firehose: ClientConfig::default(),
            subscription_id: "datadog-nozzle".to_owned(),
            api_url: "https://api.datadoghq.com".to_owned(),
            api_key_env: "DD_API_KEY".to_owned(),
            api_key_file: None,
            ca_file: None,
            prefix: "hydrant.".to_owned(),
            tags: Vec::new(),
            deployment: "hydrant".to_owned(),
            drop_tags: vec!["created_at".to_owned(), "user_data".to_owned()],
            timers: TimerMode::default(),
            compression: Compression::default(),
            batch: BatchConfig::default(),
            queue: OutboxLimits::default(),
            retry: Backoff {
                initial_ms: 500,
                max_ms: 30_000,
                jitter: 0.5,
                max_retries: 6,
            },
            max_retry_after_ms: 60_000,
            breaker: BreakerConfig::default(),
            request_timeout_ms: 10_000,
            shutdown_drain_ms: 2_000,
            instance_id: "0".to_owned(),
            admin_listen: "127.0.0.1:14841".to_owned(),
            telemetry: TelemetryConfig::default(),
            logs: LogsConfig::default(),
            cursor_file: None,
        }
    }
}

/// The Datadog API key. Its `Debug` never shows it, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key, refusing one that cannot be an HTTP header value.
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) naming `field`, without the key.
    pub fn new(field: &str, key: &str) -> Result<Self, Error> {
        let key = key.trim();
        if key.is_empty() {
            return Err(Error::config(field, "gives an empty API key"));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::config(
                field,
                "gives an API key with spaces or control characters; it must be the bare key",
            ));
        }
        Ok(Self(key.to_owned()))
    }

    /// The key itself, for the `DD-API-KEY` header only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(****)")
    }
}

impl hydrant_runtime::Validate for Config {
    type Error = Error;

    /// Checks every field; the first problem is returned naming its dotted path. Does not read
    /// the API key (see [`Config::api_key`]).
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) saying what to change.
    fn validate(&self) -> Result<(), Error> {
        validate_firehose(&self.firehose, &self.subscription_id, "datadog-nozzle")?;
        Target::parse("api_url", &self.api_url)?;
        if let Some(file) = &self.cursor_file {
            hydrant_nozzle_core::validate_cursor_file(file)?;
        }
        if self.api_key_file.is_none() && self.api_key_env.is_empty() {
            return Err(Error::config(
                "api_key_env",
                "is empty and api_key_file is unset; name the variable holding the key \
                 (e.g. \"DD_API_KEY\") or set api_key_file",
            ));
        }
        if !crate::series::is_valid_prefix(&self.prefix) {
            return Err(Error::config(
                "prefix",
                format!(
                    "({:?}) must start with a letter and hold only ASCII letters, digits, '_' \
                     and '.', e.g. \"hydrant.\"",
                    self.prefix
                ),
            ));
        }
        for (i, tag) in self.tags.iter().enumerate() {
            if crate::series::sanitize_tag(tag) != *tag || !tag.contains(':') {
                return Err(Error::config(
                    format!("tags[{i}]"),
                    format!(
                        "({tag:?}) must be key:value with only letters, digits and _ - : . /, \
                         at most 200 characters, e.g. \"env:prod\""
                    ),
                ));
            }
        }
        if self.deployment.is_empty() {
            return Err(Error::config(
                "deployment",
                "is empty; name the platform, e.g. \"hydrant\"",
            ));
        }
        self.validate_batch()?;
        if self.queue.max_requests == 0 {
            return Err(Error::config("queue.max_requests", "must be at least 1"));
        }
        if self.queue.max_bytes < self.batch.max_compressed_bytes {
            return Err(Error::config(
                "queue.max_bytes",
                format!(
                    "must hold at least one request (batch.max_compressed_bytes = {})",
                    self.batch.max_compressed_bytes
                ),
            ));
        }
        self.retry.validate("retry")?;
        self.breaker.validate("breaker")?;
        if self.request_timeout_ms == 0 {
            return Err(Error::config(
                "request_timeout_ms",
                "must be at least 1 (ms to connect and get one answer)",
            ));
        }
        validate_self_report(&self.admin_listen, "127.0.0.1:14841", &self.telemetry)?;
        self.validate_logs()
    }
}

impl Config {
    fn validate_batch(&self) -> Result<(), Error> {
        let b = &self.batch;
        if b.flush_interval_ms < 1_000 {
            return Err(Error::config(
                "batch.flush_interval_ms",
                "must be at least 1000: Datadog points carry whole seconds",
            ));
        }
        for (name, value) in [
            ("max_series", b.max_series),
            ("max_series_per_request", b.max_series_per_request),
            ("max_timer_samples", b.max_timer_samples),
        ] {
            if value == 0 {
                return Err(Error::config(format!("batch.{name}"), "must be at least 1"));
            }
        }
        if !(4_096..=DATADOG_MAX_COMPRESSED_BYTES).contains(&b.max_compressed_bytes) {
            return Err(Error::config(
                "batch.max_compressed_bytes",
                format!(
                    "must be between 4096 and Datadog's limit of {DATADOG_MAX_COMPRESSED_BYTES}"
                ),
            ));
        }
        if !(4_096..DATADOG_MAX_UNCOMPRESSED_BYTES).contains(&b.max_uncompressed_bytes) {
            return Err(Error::config(
                "batch.max_uncompressed_bytes",
                format!(
                    "must be at least 4096 and below Datadog's limit of \
                     {DATADOG_MAX_UNCOMPRESSED_BYTES}"
                ),
            ));
        }
        Ok(())
    }

    fn validate_logs(&self) -> Result<(), Error> {
        if !self.logs.enabled {
            return Ok(());
        }
        Target::parse("logs.url", &self.logs.url)?;
        if self.logs.source.is_empty() {
            return Err(Error::config(
                "logs.source",
                "is empty; name the ddsource, e.g. \"hydrant\"",
            ));
        }
        self.logs.queue.validate("logs.queue")?;
        if self.logs.queue.batch_items > DATADOG_LOGS_MAX_ENTRIES {
            return Err(Error::config(
                "logs.queue.batch_items",
                format!("must be at most {DATADOG_LOGS_MAX_ENTRIES}, the intake's limit"),
            ));
        }
        if self.logs.queue.batch_bytes > DATADOG_LOGS_MAX_BYTES - DATADOG_LOG_MAX_BYTES {
            return Err(Error::config(
                "logs.queue.batch_bytes",
                format!(
                    "must be at most {} so a request stays within the intake's \
                     {DATADOG_LOGS_MAX_BYTES} bytes",
                    DATADOG_LOGS_MAX_BYTES - DATADOG_LOG_MAX_BYTES
                ),
            ));
        }
        Ok(())
    }

    /// Reads the API key: from `api_key_file` if set, else from the variable `api_key_env`,
    /// looked up through `env` (the process environment in the role; a map in tests).
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) naming `api_key_file` or `api_key_env`; never the key.
    pub fn api_key(&self, env: impl Fn(&str) -> Option<String>) -> Result<ApiKey, Error> {
        if let Some(path) = &self.api_key_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::config(
                    "api_key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            return ApiKey::new("api_key_file", &text);
        }
        match env(&self.api_key_env) {
            Some(key) => ApiKey::new("api_key_env", &key),
            None => Err(Error::config(
                "api_key_env",
                format!(
                    "the variable {} is not set; export the Datadog API key in it or set \
                     api_key_file",
                    self.api_key_env
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::{Config, TimerMode};
    use hydrant_runtime::Validate as _;

    fn parse(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    fn valid() -> Config {
        parse("[firehose]\nurl = \"http://127.0.0.1:8081\"\ntoken = \"t\"\n")
    }

    #[test]
    fn defaults_validate_and_unknown_fields_are_refused() {
        let c = valid();
        c.validate().unwrap();
        assert_eq!(c.subscription_id, "datadog-nozzle");
        assert_eq!(c.api_url, "https://api.datadoghq.com");
        assert_eq!(c.admin_listen, "127.0.0.1:14841");
        assert_eq!(c.prefix, "hydrant.");
        assert_eq!(c.timers, TimerMode::Gauges);
        assert!(!c.logs.enabled);
        let e = toml::from_str::<Config>("api_keys = \"x\"").unwrap_err();
        assert!(e.to_string().contains("api_keys"), "{e}");
        let e = toml::from_str::<Config>("[batch]\nflush_secs = 1").unwrap_err();
        assert!(e.to_string().contains("flush_secs"), "{e}");
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let mut c = parse(include_str!("../datadog.example.toml"));
        c.validate().unwrap();
        assert_eq!(c.firehose.token, "PUT-A-FIREHOSE-TOKEN-HERE");
        c.firehose.token = String::new();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn errors_name_the_field() {
        for (text, field) in [
            ("", "firehose.token"),
            ("api_url = \"ftp://x\"", "api_url"),
            ("api_url = \"https://\"", "api_url"),
            ("prefix = \"9bad\"", "prefix"),
            ("tags = [\"env:prod\", \"no spaces\"]", "tags[1]"),
            ("timers = \"histogram\"", "timers"),
            (
                "[batch]\nmax_compressed_bytes = 600000",
                "batch.max_compressed_bytes",
            ),
            (
                "[batch]\nmax_uncompressed_bytes = 5242880",
                "batch.max_uncompressed_bytes",
            ),
            ("[batch]\nflush_interval_ms = 10", "batch.flush_interval_ms"),
            ("[queue]\nmax_requests = 0", "queue.max_requests"),
            ("[retry]\njitter = 3.0", "retry.jitter"),
            ("admin_listen = \"nowhere\"", "admin_listen"),
            (
                "[logs]\nenabled = true\n[logs.queue]\nbatch_items = 5000",
                "logs.queue.batch_items",
            ),
        ] {
            let full = if field == "firehose.token" {
                text.to_owned()
            } else {
                format!("{text}\n[firehose]\ntoken = \"t\"")
            };
            let e = match toml::from_str::<Config>(&full) {
                Ok(c) => c.validate().unwrap_err().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn the_key_comes_from_a_file_or_the_environment_and_is_never_shown() {
        let mut c = valid();
        let e = c.api_key(|_| None).unwrap_err().to_string();
        assert!(e.contains("api_key_env") && e.contains("DD_API_KEY"), "{e}");

        let key = c
            .api_key(|name| (name == "DD_API_KEY").then(|| "0123abcd\n".to_owned()))
            .unwrap();
        assert_eq!(key.expose(), "0123abcd");
        assert_eq!(format!("{key:?}"), "ApiKey(****)");

        let e = c
            .api_key(|_| Some("has space".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("api_key_env") && !e.contains("has space"), "{e}");

        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "  filekey42  ").unwrap();
        c.api_key_file = Some(file.path().to_owned());
        let key = c.api_key(|_| Some("envkey".to_owned())).unwrap();
        assert_eq!(key.expose(), "filekey42", "the file wins");

        c.api_key_file = Some("/nonexistent/dd.key".into());
        let e = c.api_key(|_| None).unwrap_err().to_string();
        assert!(e.contains("api_key_file"), "{e}");
    }
}
