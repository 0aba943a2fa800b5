//! The OTLP nozzle's config: where the firehose is, where the OTLP receiver is, how envelopes
//! become OpenTelemetry logs and metrics, and how much each signal may hold back.
//!
//! Loaded from TOML by `hydrant nozzle otlp --config FILE`. Unknown fields are refused, every
//! field has a default, and [`Config::validate`] names the field at fault. Invariant: no error,
//! log line or `Debug` output built from this config carries a header value (headers usually
//! hold an API key) or the endpoint's credentials.

use std::collections::BTreeMap;
use std::fmt;

use hydrant_emitter::TelemetryConfig;
use hydrant_firehose_client::ClientConfig;
use hydrant_nozzle_core::{
    Backoff, BreakerConfig, QueueLimits, mask_url, validate_firehose, validate_self_report,
};
use serde::Deserialize;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};

use crate::Error;

/// The whole config of one OTLP nozzle.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The firehose edge to read (`url`, `token` with the `firehose` scope, reconnect policy).
    pub firehose: ClientConfig,
    /// The firehose shard group; copies sharing it split the stream. Default `otlp-nozzle`.
    pub subscription_id: String,
    /// The OTLP/gRPC receiver, `http://HOST:PORT`. Default `http://127.0.0.1:4317` (a
    /// collector's standard gRPC port). TLS is not spoken yet: point it at a local collector.
    pub endpoint: String,
    /// gRPC metadata sent with every export, e.g. `authorization = "Bearer ..."`. Names are
    /// lowercase ASCII; values are never logged. Default none.
    pub headers: Headers,
    /// Forward log and event envelopes as OTLP log records. Default true.
    pub export_logs: bool,
    /// Forward counters, gauges and timers as OTLP metrics. Default true.
    pub export_metrics: bool,
    /// How counters, gauges and timers become metrics.
    pub metrics: MetricsConfig,
    /// A batch smaller than `queue.batch_items` waits up to this long for more records before
    /// it is exported, so a quiet stream does not cost one request per line, in ms. 0 sends
    /// at once. Default 200 (the collector's batch processor default).
    pub flush_interval_ms: u64,
    /// Largest encoded export request; a batch that encodes larger is split in halves. Keep it
    /// under the receiver's limit (the collector's default is 4 MiB). Default 4 MiB.
    pub max_request_bytes: usize,
    /// Deadline of one export call, in ms. Default 10000 (the OTLP exporters' default).
    pub export_timeout_ms: u64,
    /// Export calls in flight at once per signal, so one call's round trip does not idle the
    /// nozzle (the collector's exporters run 10). Records of two calls may arrive out of
    /// order; each carries its own time. Default 4.
    pub exports_in_flight: usize,
    /// Per-signal queue limits; `batch_items` is the most records (or data points) in one
    /// export and `batch_bytes` the most envelope bytes behind one. Default 10000 records /
    /// 16 MiB per signal, 1000 per export.
    pub queue: QueueLimits,
    /// Retries of a failed export (UNAVAILABLE, RESOURCE_EXHAUSTED and the other retryable
    /// codes). Default 10 ms doubling to 5 s, 8 retries.
    pub retry: Backoff,
    /// When to stop trying a receiver that stays down. Default 5 failures, 10 s open.
    pub breaker: BreakerConfig,
    /// On shutdown, how long the senders get to export what is queued, in ms; the rest is
    /// counted as `dropped{reason="shutdown"}`. Default 2000.
    pub shutdown_drain_ms: u64,
    /// This copy's instance id in its own metrics. Default `0`.
    pub instance_id: String,
    /// `/healthz` and `/metrics`. Default `127.0.0.1:14842`.
    pub admin_listen: String,
    /// Where the nozzle's own metrics go as envelopes.
    pub telemetry: TelemetryConfig,
    /// A file keeping the firehose cursor of the last frame both signals' receivers dealt
    /// with (written atomically once every record and point of it was exported, or refused
    /// and counted). With it, a nozzle restarted within the dopplers' replay window (60 s by
    /// default) resumes there and loses nothing; what was exported after the stored cursor is
    /// sent again and counted in `nozzle.duplicates` (a delta counter exported twice counts
    /// twice). The directory must exist. Default unset: a restarted nozzle starts from live
    /// data.
    pub cursor_file: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            firehose: ClientConfig::default(),
            subscription_id: "otlp-nozzle".to_owned(),
            endpoint: "http://127.0.0.1:4317".to_owned(),
            headers: Headers::default(),
            export_logs: true,
            export_metrics: true,
            metrics: MetricsConfig::default(),
            flush_interval_ms: 200,
            max_request_bytes: 4 * 1024 * 1024,
            export_timeout_ms: 10_000,
            exports_in_flight: 4,
            queue: QueueLimits::default(),
            retry: Backoff::default(),
            breaker: BreakerConfig::default(),
            shutdown_drain_ms: 2_000,
            instance_id: "0".to_owned(),
            admin_listen: "127.0.0.1:14842".to_owned(),
            telemetry: TelemetryConfig::default(),
            cursor_file: None,
        }
    }
}

/// gRPC metadata for every export. Its `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Headers(pub BTreeMap<String, String>);

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "****")))
            .finish()
    }
}

impl Headers {
    /// The headers as gRPC metadata, every value marked sensitive.
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) naming `headers.NAME` (never the value).
    pub fn to_metadata(&self) -> Result<MetadataMap, Error> {
        let mut map = MetadataMap::new();
        for (name, value) in &self.0 {
            let field = format!("headers.{name}");
            if name.ends_with("-bin") {
                return Err(Error::config(
                    field,
                    "binary (-bin) metadata is not supported; use a text header",
                ));
            }
            let key = AsciiMetadataKey::from_bytes(name.as_bytes()).map_err(|_| {
                Error::config(
                    field.clone(),
                    "is not a valid gRPC metadata name; use lowercase letters, digits, '-', '_' \
                     and '.'",
                )
            })?;
            let mut value = AsciiMetadataValue::try_from(value.as_str()).map_err(|_| {
                Error::config(
                    field.clone(),
                    "has a value that is not visible ASCII (no control characters or newlines)",
                )
            })?;
            value.set_sensitive(true);
            map.insert(key, value);
        }
        Ok(map)
    }
}

/// How counters are exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Temporality {
    /// A monotonic cumulative Sum carrying the envelope's `total` (what Prometheus-style
    /// backends want). A counter that carries only `delta` (its emitter left the total to an
    /// aggregator) is summed here per series.
    #[default]
    Cumulative,
    /// A monotonic delta Sum carrying the envelope's `delta`. Correct with several nozzle
    /// copies sharing a subscription, since no copy needs the others' deltas.
    Delta,
}

/// The `[metrics]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prepended to every metric name (e.g. `hydrant.`). Default empty, so names are the
    /// envelopes' own (`nozzle.sent`, `cpu`, `http`).
    pub prefix: String,
    /// `cumulative` (default) or `delta`.
    pub counters: Temporality,
    /// Timers exported as histograms, by timer name. Other timers are skipped and counted
    /// (`nozzle.skipped{reason="timer_not_exported"}`). Default `["http"]`.
    pub histogram_timers: Vec<String>,
    /// Explicit bucket upper bounds of those histograms, in seconds, strictly increasing.
    /// Default the OpenTelemetry HTTP duration buckets, 5 ms to 10 s.
    pub histogram_bounds_seconds: Vec<f64>,
    /// Timer tags left off histogram points because every request has its own value and
    /// would make its own series. Default the router's `request_id`, `uri`, `user_agent`,
    /// `remote_address`, `routing_instance_id`.
    pub histogram_drop_tags: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            counters: Temporality::Cumulative,
            histogram_timers: vec!["http".to_owned()],
            histogram_bounds_seconds: vec![
                0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
            ],
            histogram_drop_tags: [
                "request_id",
                "uri",
                "user_agent",
                "remote_address",
                "routing_instance_id",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }
}

/// Checks an OTLP/gRPC endpoint URL; errors name `field` and show the URL masked.
///
/// # Errors
/// A config error ([`Error::Core`]) for another scheme or an unparsable URL.
pub fn validate_endpoint(field: &str, url: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Error::config(
            field,
            format!("{} {why}; write it as \"http://HOST:4317\"", mask_url(url)),
        )
    };
    // The parse error never repeats the input, so nothing secret leaks through it.
    let parsed = url::Url::parse(url).map_err(|e| bad(&format!("is not a valid URL ({e})")))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(bad(
                "uses TLS, which this nozzle does not speak yet (send to a local collector)",
            ));
        }
        _ => return Err(bad("is not an http:// URL")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(
            "carries credentials in the URL; put them in [headers] instead",
        ));
    }
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|_| bad("is not a valid URL"))?;
    Ok(())
}

impl hydrant_runtime::Validate for Config {
    type Error = Error;

    /// Checks every field; the first problem is returned naming its dotted path.
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) saying what to change.
    fn validate(&self) -> Result<(), Error> {
        validate_firehose(&self.firehose, &self.subscription_id, "otlp-nozzle")?;
        validate_endpoint("endpoint", &self.endpoint)?;
        self.headers.to_metadata()?;
        if !self.export_logs && !self.export_metrics {
            return Err(Error::config(
                "export_metrics",
                "and export_logs are both false; enable at least one",
            ));
        }
        self.metrics.validate()?;
        if self.max_request_bytes < 64 * 1024 {
            return Err(Error::config(
                "max_request_bytes",
                "must be at least 65536 (one large log line must fit in a request)",
            ));
        }
        if self.export_timeout_ms == 0 {
            return Err(Error::config(
                "export_timeout_ms",
                "must be at least 1 (ms one export call may take)",
            ));
        }
        if !(1..=64).contains(&self.exports_in_flight) {
            return Err(Error::config(
                "exports_in_flight",
                "must be between 1 and 64 (export calls in flight per signal)",
            ));
        }
        self.queue.validate("queue")?;
        self.retry.validate("retry")?;
        self.breaker.validate("breaker")?;
        validate_self_report(&self.admin_listen, "127.0.0.1:14842", &self.telemetry)?;
        if let Some(file) = &self.cursor_file {
            hydrant_nozzle_core::validate_cursor_file(file)?;
        }
        Ok(())
    }
}

impl MetricsConfig {
    /// Checks the `[metrics]` section.
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) naming `metrics.FIELD`.
    pub fn validate(&self) -> Result<(), Error> {
        if self.prefix.chars().any(char::is_control) {
            return Err(Error::config(
                "metrics.prefix",
                "holds a control character; use letters, digits, '.' or '_'",
            ));
        }
        let bounds = &self.histogram_bounds_seconds;
        if bounds.iter().any(|b| !b.is_finite()) {
            return Err(Error::config(
                "metrics.histogram_bounds_seconds",
                "holds a value that is not a finite number",
            ));
        }
        if bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::config(
                "metrics.histogram_bounds_seconds",
                "must be strictly increasing, e.g. [0.01, 0.1, 1.0]",
            ));
        }
        if bounds.len() > 256 {
            return Err(Error::config(
                "metrics.histogram_bounds_seconds",
                "has more than 256 bounds; every point carries one count per bucket",
            ));
        }
        if self.histogram_timers.iter().any(String::is_empty) {
            return Err(Error::config(
                "metrics.histogram_timers",
                "holds an empty name; list timer names such as \"http\"",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Config, Temporality};
    use hydrant_runtime::Validate as _;

    fn parse(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    const MINIMAL: &str = "[firehose]\nurl = \"http://127.0.0.1:8081\"\ntoken = \"t\"\n";

    #[test]
    fn defaults_and_a_minimal_file_validate() {
        let c = parse(MINIMAL);
        c.validate().unwrap();
        assert_eq!(c.subscription_id, "otlp-nozzle");
        assert_eq!(c.endpoint, "http://127.0.0.1:4317");
        assert_eq!(c.admin_listen, "127.0.0.1:14842");
        assert_eq!(c.metrics.prefix, "");
        assert_eq!(c.metrics.counters, Temporality::Cumulative);
        assert_eq!(c.metrics.histogram_timers, ["http"]);
        assert!(
            toml::from_str::<Config>("endpoints = []").is_err(),
            "unknown field"
        );
        assert!(
            toml::from_str::<Config>("[metrics]\ncounters = \"gauge\"").is_err(),
            "unknown temporality"
        );
    }

    #[test]
    fn errors_name_the_field_and_never_the_secret() {
        for (extra, field) in [
            ("endpoint = \"grpc://h:4317\"", "`endpoint`"),
            ("endpoint = \"https://h:4317\"", "`endpoint`"),
            ("subscription_id = \"\"", "`subscription_id`"),
            (
                "export_logs = false\nexport_metrics = false",
                "export_metrics",
            ),
            (
                "flush_interval_ms = 0\nexport_timeout_ms = 0",
                "export_timeout_ms",
            ),
            ("max_request_bytes = 10", "max_request_bytes"),
            ("exports_in_flight = 0", "exports_in_flight"),
            ("admin_listen = \"x\"", "admin_listen"),
            ("[queue]\nbatch_items = 0", "queue.batch_items"),
            ("[retry]\njitter = 3.0", "retry.jitter"),
            (
                "[breaker]\nfailure_threshold = 0",
                "breaker.failure_threshold",
            ),
            (
                "[metrics]\nhistogram_bounds_seconds = [1.0, 0.5]",
                "metrics.histogram_bounds_seconds",
            ),
            (
                "[metrics]\nhistogram_timers = [\"\"]",
                "metrics.histogram_timers",
            ),
            ("[headers]\n\"Bad Name\" = \"hunter2\"", "headers.Bad Name"),
            (
                "[headers]\nauthorization = \"hunter2\\n\"",
                "headers.authorization",
            ),
        ] {
            let text = format!("{extra}\n{MINIMAL}");
            let e = parse(&text).validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let e = parse("endpoint = \"http://u:hunter2@h:4317\"\n[firehose]\ntoken = \"t\"")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("endpoint") && !e.contains("hunter2"), "{e}");
        let e = parse("[firehose]\nurl = \"http://h:1\"")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("firehose.token"), "{e}");
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let example = parse(include_str!("../otlp-nozzle.example.toml"));
        example.validate().unwrap();
        let defaults = Config {
            firehose: example.firehose.clone(),
            ..Config::default()
        };
        assert_eq!(example, defaults);
    }

    #[test]
    fn headers_become_sensitive_metadata_and_never_print() {
        let c = parse(&format!(
            "[headers]\nauthorization = \"Bearer hunter2\"\nx-tenant = \"a\"\n{MINIMAL}"
        ));
        c.validate().unwrap();
        let md = c.headers.to_metadata().unwrap();
        assert_eq!(md.get("authorization").unwrap(), "Bearer hunter2");
        assert!(md.get("authorization").unwrap().is_sensitive());
        let debug = format!("{c:?} {md:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("authorization"), "{debug}");
    }
}
