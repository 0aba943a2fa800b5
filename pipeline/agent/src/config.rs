//! The agent's config (`hydrant run agent --config FILE`, or the `[agent]` part of the micro
//! cloud), with defaults that match Loggregator's ports and Hydrant's latency targets.
//!
//! Invariant: a config that passes [`Config::validate`] cannot make the agent allocate without
//! bound or route nowhere; every rejection names the field and says what to write instead.

use std::net::SocketAddr;

use hydrant_bus::follow::{DopplerSource, default_dopplers};
use hydrant_emitter::TelemetryConfig;
use hydrant_runtime::invalid;
use hydrant_tls::TlsFiles;
use serde::Deserialize;

use crate::Error;

/// Agent settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the v2 Ingress gRPC service listens. Default `127.0.0.1:3458` (Loggregator's agent
    /// port). Keep it on loopback: emitters are not authenticated.
    pub listen: String,
    /// Where `/healthz` and `/metrics` listen. Default `127.0.0.1:14824` (Loggregator's agent
    /// metrics port).
    pub admin_listen: String,
    /// The `instance_id` of the agent's own metrics (which copy of the agent). Default `"0"`.
    pub instance_id: String,
    /// The dopplers' ingress URLs. A source always goes to the same one (rendezvous hash of its
    /// `source_id`) while it is up. These four fields are shared with the firehose edge and
    /// documented once, on [`DopplerSource`]. Default `["http://127.0.0.1:8082"]`.
    pub dopplers: Vec<String>,
    /// Follow the dopplers announced on the bus: a new one gets a lane within one announce
    /// interval. Default false.
    pub dopplers_from_bus: bool,
    /// Most dopplers followed at once. Default 64.
    pub max_dopplers: usize,
    /// The control-plane bus (`[bus]`). Default unset.
    pub bus: Option<hydrant_bus::Config>,
    /// Send a batch to a doppler at this many envelopes. Default 100.
    pub batch_max_envelopes: usize,
    /// Send a batch at this many encoded bytes. Default 262144 (256 KiB).
    pub batch_max_bytes: usize,
    /// Send a partial batch when no envelope has joined it for this long. Default 5 ms.
    pub flush_idle_ms: u64,
    /// Send a partial batch at the latest this long after its first envelope. Default 20 ms.
    pub flush_max_ms: u64,
    /// Batches waiting for one doppler; past this the oldest is dropped and counted
    /// (`egress_queue_full`). Default 1024.
    pub egress_queue_max_batches: usize,
    /// Encoded bytes waiting for one doppler; past this the oldest batches are dropped. Default
    /// 67108864 (64 MiB).
    pub egress_queue_max_bytes: usize,
    /// Per app instance log rate limit in payload bytes per second (burst = the limit), applied
    /// to Log envelopes whose `source_type` tag starts with `APP`. Default 0 = unlimited.
    pub app_log_rate_limit_bytes_per_sec: u64,
    /// How many (source_id, instance_id) pairs the agent tracks for sequence numbers and rate
    /// limits. Past this the least recently seen eighth is forgotten (their sequences restart at
    /// 1). Default 100000.
    pub max_tracked_instances: usize,
    /// Forget an instance not seen for this long. Default 600 s.
    pub instance_idle_secs: u64,
    /// Longest wait between reconnect attempts to a doppler. Default 2000 ms.
    pub reconnect_max_backoff_ms: u64,
    /// HTTP/2 ping interval on doppler connections. Default 1000 ms.
    pub keepalive_interval_ms: u64,
    /// A doppler that does not answer a ping within this is declared down. Default 1000 ms, so
    /// a dead doppler is noticed within about 2 s.
    pub keepalive_timeout_ms: u64,
    /// Fair drops between sources: when a doppler's egress queue is half full, an envelope whose
    /// source already holds more than its share of the queue is refused
    /// (`agent.dropped{reason="fair_share"}`, and `agent.dropped_by_source`), so a flooding app
    /// loses its own lines and the quiet ones none. Off: the queue only drops its oldest batches,
    /// whoever's they are. Default true.
    pub fair_share: bool,
    /// Sources tracked on their own for fair drops, per doppler; the rest share one slot.
    /// Default 1024.
    pub fair_max_sources: usize,
    /// A source that lost envelopes to fairness is told (a log line in its own stream) at most
    /// once per this long. Default 10000 ms.
    pub fair_notice_interval_ms: u64,
    /// Sources with a series of their own in `agent.dropped_by_source`; the rest are counted as
    /// `source_id="other"`. Default 20.
    pub fair_metrics_sources: usize,
    /// Where the agent's own metrics go. Default: not emitted, only served on `/metrics`.
    pub telemetry: TelemetryConfig,
    /// Mutual TLS (`[tls]`, the agent's own leaf, CN `agent`). Set: ingress requires a client
    /// certificate naming one of [`crate::INGRESS_IDENTITIES`], and the agent presents its
    /// certificate to dopplers, whose certificates must name `doppler`. Default unset:
    /// plaintext, for tests and single-process setups.
    pub tls: Option<TlsFiles>,
}

impl Config {
    /// Where the dopplers come from: the fields shared with the firehose edge.
    #[must_use]
    pub fn doppler_source(&self) -> DopplerSource<'_> {
        DopplerSource {
            dopplers: &self.dopplers,
            dopplers_from_bus: self.dopplers_from_bus,
            max_dopplers: self.max_dopplers,
            bus: self.bus.as_ref(),
        }
    }

    /// Whether the agent follows the dopplers announced on the bus.
    #[must_use]
    pub fn follows_bus(&self) -> bool {
        self.doppler_source().follows_bus()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:3458".to_owned(),
            admin_listen: "127.0.0.1:14824".to_owned(),
            instance_id: "0".to_owned(),
            dopplers: default_dopplers(),
            dopplers_from_bus: false,
            max_dopplers: 64,
            bus: None,
            batch_max_envelopes: 100,
            batch_max_bytes: 256 * 1024,
            flush_idle_ms: 5,
            flush_max_ms: 20,
            egress_queue_max_batches: 1024,
            egress_queue_max_bytes: 64 * 1024 * 1024,
            app_log_rate_limit_bytes_per_sec: 0,
            max_tracked_instances: 100_000,
            instance_idle_secs: 600,
            reconnect_max_backoff_ms: 2000,
            keepalive_interval_ms: 1000,
            keepalive_timeout_ms: 1000,
            fair_share: true,
            fair_max_sources: 1024,
            fair_notice_interval_ms: 10_000,
            fair_metrics_sources: 20,
            telemetry: TelemetryConfig::default(),
            tls: None,
        }
    }
}

impl Config {
    /// The fairness ledger's settings for one doppler lane, or `None` with `fair_share` off.
    pub(crate) fn fair(&self) -> Option<hydrant_buffer::FairConfig> {
        self.fair_share.then(|| hydrant_buffer::FairConfig {
            max_sources: self.fair_max_sources,
            notice_interval: std::time::Duration::from_millis(self.fair_notice_interval_ms),
            ..hydrant_buffer::FairConfig::default()
        })
    }
}

impl hydrant_runtime::Validate for Config {
    type Error = Error;

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad field, or [`Error::Telemetry`].
    fn validate(&self) -> Result<(), Error> {
        for (field, addr) in [
            ("listen", &self.listen),
            ("admin_listen", &self.admin_listen),
        ] {
            addr.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    field,
                    format!("{addr:?} is not an address; write it as \"127.0.0.1:3458\""),
                )
            })?;
        }
        self.doppler_source().validate().map_err(|e| {
            let (field, message) = e.into_field();
            invalid(field, message)
        })?;
        if self.dopplers.len() > usize::from(u16::MAX) {
            return Err(invalid("dopplers", "at most 65535 dopplers").into());
        }
        for (i, url) in self.dopplers.iter().enumerate() {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(invalid(
                    "dopplers",
                    format!("{url:?} is not a URL; write it as \"http://127.0.0.1:8082\""),
                )
                .into());
            }
            tonic::transport::Endpoint::from_shared(url.clone())
                .map_err(|e| invalid("dopplers", format!("{url:?} is not a valid URL: {e}")))?;
            if self.dopplers[..i].contains(url) {
                return Err(invalid(
                    "dopplers",
                    format!("{url:?} is listed twice; list each doppler once"),
                )
                .into());
            }
        }
        let positive = [
            ("batch_max_envelopes", self.batch_max_envelopes),
            ("batch_max_bytes", self.batch_max_bytes),
            ("egress_queue_max_batches", self.egress_queue_max_batches),
            ("max_tracked_instances", self.max_tracked_instances),
            ("fair_max_sources", self.fair_max_sources),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(invalid(field, "must be at least 1").into());
            }
        }
        let positive_ms = [
            ("flush_idle_ms", self.flush_idle_ms),
            ("flush_max_ms", self.flush_max_ms),
            ("instance_idle_secs", self.instance_idle_secs),
            ("reconnect_max_backoff_ms", self.reconnect_max_backoff_ms),
            ("keepalive_interval_ms", self.keepalive_interval_ms),
            ("keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("fair_notice_interval_ms", self.fair_notice_interval_ms),
        ];
        for (field, value) in positive_ms {
            if value == 0 {
                return Err(invalid(field, "must be at least 1").into());
            }
        }
        if self.fair_max_sources > 1 << 20 {
            return Err(invalid(
                "fair_max_sources",
                "must be at most 1048576 (each tracked source costs memory per doppler)",
            )
            .into());
        }
        if self.fair_metrics_sources > 1000 {
            return Err(invalid(
                "fair_metrics_sources",
                "must be at most 1000: each is a /metrics series",
            )
            .into());
        }
        if self.flush_idle_ms > self.flush_max_ms {
            return Err(invalid(
                "flush_idle_ms",
                format!(
                    "{} is above flush_max_ms ({}); the idle flush must not be later than the \
                     latest flush",
                    self.flush_idle_ms, self.flush_max_ms
                ),
            )
            .into());
        }
        if self.egress_queue_max_bytes < self.batch_max_bytes {
            return Err(invalid(
                "egress_queue_max_bytes",
                format!(
                    "{} is below batch_max_bytes ({}); the queue must hold at least one batch",
                    self.egress_queue_max_bytes, self.batch_max_bytes
                ),
            )
            .into());
        }
        if self.batch_max_bytes > hydrant_envelope::MAX_MESSAGE_BYTES / 2 {
            return Err(invalid(
                "batch_max_bytes",
                format!(
                    "must be at most {} so a batch plus one envelope fits a gRPC message",
                    hydrant_envelope::MAX_MESSAGE_BYTES / 2
                ),
            )
            .into());
        }
        self.telemetry.validate()?;
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrant_runtime::Validate as _;

    #[test]
    fn defaults_are_valid_and_match_loggregator_ports() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen, "127.0.0.1:3458");
        assert_eq!(c.admin_listen, "127.0.0.1:14824");
    }

    #[test]
    fn toml_fills_defaults_and_rejects_unknown_fields() {
        let c: Config = toml::from_str(
            "dopplers = [\"http://10.0.0.1:8082\", \"http://10.0.0.2:8082\"]\n\
             app_log_rate_limit_bytes_per_sec = 1024\n\
             [telemetry]\nagent = \"http://127.0.0.1:3458\"\n",
        )
        .unwrap();
        assert_eq!(c.dopplers.len(), 2);
        assert_eq!(c.batch_max_envelopes, 100);
        c.validate().unwrap();
        assert!(toml::from_str::<Config>("doppler = []").is_err());
    }

    #[test]
    fn following_the_bus_needs_a_bus_and_no_fixed_list() {
        let follow: Config =
            toml::from_str("dopplers_from_bus = true\n[bus]\nurl = \"nats://127.0.0.1:4222\"\n")
                .unwrap();
        follow.validate().unwrap();
        assert!(follow.follows_bus());
        assert_eq!(follow.max_dopplers, 64);
        let empty: Config =
            toml::from_str("dopplers = []\n[bus]\nurl = \"inprocess://t\"\n").unwrap();
        empty.validate().unwrap();
        assert!(empty.follows_bus());
        assert!(
            !Config::default().follows_bus(),
            "the static list stays the default"
        );
        let cases = [
            (
                Config {
                    dopplers_from_bus: true,
                    ..Config::default()
                },
                "dopplers_from_bus",
            ),
            (
                Config {
                    dopplers_from_bus: true,
                    dopplers: vec!["http://10.0.0.1:8082".to_owned()],
                    bus: Some(hydrant_bus::Config::inprocess("t")),
                    ..Config::default()
                },
                "dopplers",
            ),
            (
                Config {
                    dopplers_from_bus: true,
                    max_dopplers: 0,
                    bus: Some(hydrant_bus::Config::inprocess("t")),
                    ..Config::default()
                },
                "max_dopplers",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err:?} should name {field}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    listen: "3458".to_owned(),
                    ..Config::default()
                },
                "listen",
            ),
            (
                Config {
                    dopplers: vec![],
                    ..Config::default()
                },
                "dopplers",
            ),
            (
                Config {
                    dopplers: vec!["127.0.0.1:8082".to_owned()],
                    ..Config::default()
                },
                "dopplers",
            ),
            (
                Config {
                    dopplers: vec!["http://a:1".to_owned(), "http://a:1".to_owned()],
                    ..Config::default()
                },
                "dopplers",
            ),
            (
                Config {
                    flush_idle_ms: 50,
                    ..Config::default()
                },
                "flush_idle_ms",
            ),
            (
                Config {
                    egress_queue_max_bytes: 10,
                    ..Config::default()
                },
                "egress_queue_max_bytes",
            ),
            (
                Config {
                    max_tracked_instances: 0,
                    ..Config::default()
                },
                "max_tracked_instances",
            ),
            (
                Config {
                    fair_max_sources: 0,
                    ..Config::default()
                },
                "fair_max_sources",
            ),
            (
                Config {
                    fair_metrics_sources: 100_000,
                    ..Config::default()
                },
                "fair_metrics_sources",
            ),
            (
                Config {
                    telemetry: TelemetryConfig {
                        agent: Some("nope".to_owned()),
                        ..TelemetryConfig::default()
                    },
                    ..Config::default()
                },
                "telemetry.agent",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err:?} should name {field}");
        }
    }
}
