//! The doppler's configuration (`hydrant run doppler --config FILE`, or the `[doppler]` part of
//! the micro cloud) and the listeners the caller binds for it.
//!
//! Invariant: a config that passes [`Config::validate`] gives every queue a non-zero bound and
//! every subscription queue room for at least one outgoing batch, so the drop-oldest logic always
//! keeps the newest data.

use std::time::Duration;

use hydrant_emitter::TelemetryConfig;
use hydrant_logcache::StoreConfig;
use serde::Deserialize;

use crate::Error;

/// Doppler settings. Every field has a default; an empty file is a working doppler on loopback.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC address serving v2 Ingress, v2 Egress and `logcache.v1.Egress`. Default
    /// `127.0.0.1:8082` (Loggregator's doppler port).
    pub listen: String,
    /// Admin HTTP address (`/healthz`, `/metrics`). Default `127.0.0.1:8083`.
    pub admin_listen: String,
    /// Which doppler this is, in its own metrics' `instance_id`. Default `doppler-0`.
    pub instance_id: String,
    /// Envelopes the ingress ring holds before it drops its oldest batches (counted
    /// `doppler.dropped{reason="ingress_ring_full"}`). Default 50_000: Loggregator's
    /// `doppler.ingress_buffer_size` is 10_000, which is 10 ms at 1 M envelopes/s, and one
    /// scheduling hiccup on a busy 2-core host overflowed it in `hydrant bench pipeline`.
    pub ingress_ring_envelopes: usize,
    /// Bytes of batches the ingress ring holds before it drops its oldest. Default 64 MiB.
    pub ingress_ring_bytes: usize,
    /// Fair drops at ingress: once the ring is half full, an envelope whose source already holds
    /// more than its share of the ring is refused (`doppler.dropped{reason="fair_share"}`, by
    /// source in `doppler.dropped_by_source`) and the source is told in its own stream, so one
    /// app's flood never costs a quiet app a line. Default true.
    pub fair_share: bool,
    /// Envelopes waiting for one subscriber before its oldest are dropped (counted
    /// `doppler.dropped{reason="slow_subscriber"}`, and a gap marker goes into its stream).
    /// Default 50_000 (see `ingress_ring_envelopes`).
    pub subscription_queue_envelopes: usize,
    /// Bytes waiting for one subscriber before its oldest are dropped. Default 16 MiB. Worst-case
    /// egress memory is `max_subscriptions` times this.
    pub subscription_queue_bytes: usize,
    /// Fair drops in each subscriber's queue: once it is half full, an envelope whose source
    /// already holds more than its share of it is refused
    /// (`doppler.dropped{reason="subscriber_fair_share"}`, by source in
    /// `doppler.subscriber_dropped_by_source`) and counted in the subscriber's next gap marker,
    /// so a nozzle following many apps that falls behind loses the flood's lines, not a quiet
    /// app's. Default true.
    pub subscription_fair_share: bool,
    /// Most envelopes in one egress message (`EnvelopeBatch`). Default 100, as Loggregator.
    pub egress_batch_envelopes: usize,
    /// Most bytes in one egress message; a single larger envelope still goes alone. Default
    /// 256 KiB.
    pub egress_batch_bytes: usize,
    /// Concurrent egress streams; more are refused with `RESOURCE_EXHAUSTED`. Default 500
    /// (Loggregator's reverse log proxy default).
    pub max_subscriptions: usize,
    /// Batches waiting for the log cache; past it batches skip the cache (counted
    /// `doppler.dropped{reason="logcache_busy"}`) rather than slow routing. Default 1024.
    pub logcache_queue_batches: usize,
    /// Bytes of received messages the log cache hand-off may keep alive; past it batches skip
    /// the cache, counted as above. Default 64 MiB.
    pub logcache_queue_bytes: usize,
    /// HTTP/2 keepalive ping interval on gRPC connections. Default 15 s (Loggregator's client
    /// keepalive).
    pub keepalive_interval_secs: u64,
    /// How long a keepalive ping may go unanswered before the connection is closed. Default 20 s.
    pub keepalive_timeout_secs: u64,
    /// How long shutdown waits for open streams to finish before cutting them. Default 5 s.
    pub shutdown_grace_secs: u64,
    /// Bytes of recent batches the replay ring keeps, so a consumer that reconnects with its
    /// cursor is sent exactly what it missed (resumable subscriptions). Default 256 MiB; 0
    /// turns the ring off (the firehose edge then subscribes like any v2 client, and cursors
    /// stop advancing).
    pub replay_ring_bytes: usize,
    /// Longest the replay ring keeps a batch, seconds: the resume window. Default 60.
    pub replay_ring_secs: u64,
    /// The log cache's bounds (`[logcache]`).
    pub logcache: StoreConfig,
    /// Where the doppler's own metrics go (`[telemetry]`).
    pub telemetry: TelemetryConfig,
    /// Mutual TLS (`[tls]`, the doppler's own leaf, CN `doppler`). Set: the gRPC port lets in
    /// `agent` on Ingress and `trafficcontroller` on Egress and log cache reads, nothing else.
    /// Default unset: plaintext.
    pub tls: Option<hydrant_tls::TlsFiles>,
    /// The control-plane bus (`[bus]`). Set: the doppler announces itself on
    /// `doppler.announce` every `announce_interval_ms` (TTL 3 intervals), so agents and
    /// firehose edges that follow the announced set start using it without a restart. Default
    /// unset: no announcements; agents and edges then need it in their static `dopplers` lists.
    pub bus: Option<hydrant_bus::Config>,
    /// How often the announcement is re-sent, milliseconds. Default 5000 (the DEA's advertise
    /// interval); followers drop a doppler not heard from for three of these.
    pub announce_interval_ms: u64,
    /// The URL announced for agents and edges to dial. Default: `http://` (`https://` with
    /// `tls`) and the address `listen` bound to, which must then not be a wildcard address.
    pub advertise_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8082".to_owned(),
            admin_listen: "127.0.0.1:8083".to_owned(),
            instance_id: "doppler-0".to_owned(),
            ingress_ring_envelopes: 50_000,
            ingress_ring_bytes: 64 * 1024 * 1024,
            fair_share: true,
            subscription_queue_envelopes: 50_000,
            subscription_queue_bytes: 16 * 1024 * 1024,
            subscription_fair_share: true,
            egress_batch_envelopes: 100,
            egress_batch_bytes: 256 * 1024,
            max_subscriptions: 500,
            logcache_queue_batches: 1024,
            logcache_queue_bytes: 64 * 1024 * 1024,
            keepalive_interval_secs: 15,
            keepalive_timeout_secs: 20,
            shutdown_grace_secs: 5,
            replay_ring_bytes: 256 * 1024 * 1024,
            replay_ring_secs: 60,
            logcache: StoreConfig::default(),
            telemetry: TelemetryConfig::default(),
            tls: None,
            bus: None,
            announce_interval_ms: 5000,
            advertise_url: None,
        }
    }
}

fn check_addr(field: &'static str, addr: &str) -> Result<(), Error> {
    let port = addr.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
    match port {
        Some(Ok(_)) => Ok(()),
        _ => Err(Error::Config {
            field,
            message: format!("{addr:?} is not HOST:PORT; write it like \"127.0.0.1:8082\""),
        }),
    }
}

fn at_least(field: &'static str, value: usize, min: usize, hint: &str) -> Result<(), Error> {
    if value < min {
        return Err(Error::Config {
            field,
            message: format!("{value} is too small; it must be at least {min} ({hint})"),
        });
    }
    Ok(())
}

impl hydrant_runtime::Validate for Config {
    type Error = Error;

    /// Checks every setting.
    ///
    /// # Errors
    /// [`Error::Config`] or [`Error::LogCache`] naming the field and a valid value.
    fn validate(&self) -> Result<(), Error> {
        check_addr("listen", &self.listen)?;
        check_addr("admin_listen", &self.admin_listen)?;
        if let Some(bus) = &self.bus {
            bus.validate().map_err(|e| Error::Config {
                field: "bus",
                message: e.to_string(),
            })?;
        }
        if !(100..=60_000).contains(&self.announce_interval_ms) {
            return Err(Error::Config {
                field: "announce_interval_ms",
                message: format!(
                    "{} is out of range; write 100 to 60000 (default 5000)",
                    self.announce_interval_ms
                ),
            });
        }
        if let Some(url) = &self.advertise_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(Error::Config {
                field: "advertise_url",
                message: format!("{url:?} is not a URL; write it like \"http://10.0.0.7:8082\""),
            });
        }
        if self.instance_id.is_empty() {
            return Err(Error::Config {
                field: "instance_id",
                message: "must not be empty; name this doppler, e.g. \"doppler-0\"".to_owned(),
            });
        }
        at_least(
            "ingress_ring_envelopes",
            self.ingress_ring_envelopes,
            1,
            "the default is 10000",
        )?;
        at_least(
            "ingress_ring_bytes",
            self.ingress_ring_bytes,
            hydrant_envelope::MAX_MESSAGE_BYTES,
            "it must hold one full gRPC message",
        )?;
        at_least(
            "egress_batch_envelopes",
            self.egress_batch_envelopes,
            1,
            "the default is 100",
        )?;
        at_least(
            "egress_batch_bytes",
            self.egress_batch_bytes,
            1024,
            "the default is 262144",
        )?;
        if self.egress_batch_bytes > hydrant_envelope::MAX_MESSAGE_BYTES / 2 {
            return Err(Error::Config {
                field: "egress_batch_bytes",
                message: format!(
                    "{} is too large; keep it at most {} so a message never exceeds the gRPC limit",
                    self.egress_batch_bytes,
                    hydrant_envelope::MAX_MESSAGE_BYTES / 2
                ),
            });
        }
        at_least(
            "subscription_queue_envelopes",
            self.subscription_queue_envelopes,
            self.egress_batch_envelopes,
            "it must hold one egress batch (egress_batch_envelopes)",
        )?;
        at_least(
            "subscription_queue_bytes",
            self.subscription_queue_bytes,
            self.egress_batch_bytes,
            "it must hold one egress batch (egress_batch_bytes)",
        )?;
        at_least(
            "max_subscriptions",
            self.max_subscriptions,
            1,
            "the default is 500",
        )?;
        at_least(
            "logcache_queue_batches",
            self.logcache_queue_batches,
            1,
            "the default is 1024",
        )?;
        at_least(
            "logcache_queue_bytes",
            self.logcache_queue_bytes,
            hydrant_envelope::MAX_MESSAGE_BYTES,
            "it must hold one full gRPC message",
        )?;
        if self.keepalive_interval_secs == 0 || self.keepalive_timeout_secs == 0 {
            return Err(Error::Config {
                field: "keepalive_interval_secs",
                message: "keepalive_interval_secs and keepalive_timeout_secs must be at least 1 \
                          (defaults 15 and 20)"
                    .to_owned(),
            });
        }
        if self.replay_ring_bytes > 0 {
            at_least(
                "replay_ring_bytes",
                self.replay_ring_bytes,
                hydrant_envelope::MAX_MESSAGE_BYTES,
                "it must hold one full gRPC message; 0 turns the ring off",
            )?;
            if !(1..=3600).contains(&self.replay_ring_secs) {
                return Err(Error::Config {
                    field: "replay_ring_secs",
                    message: format!(
                        "{} is out of range; use 1 to 3600 seconds (the default is 60)",
                        self.replay_ring_secs
                    ),
                });
            }
        }
        self.logcache.validate()?;
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }
}

impl Config {
    pub(crate) fn keepalive_interval(&self) -> Duration {
        Duration::from_secs(self.keepalive_interval_secs)
    }

    pub(crate) fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.keepalive_timeout_secs)
    }

    pub(crate) fn replay_window(&self) -> Duration {
        Duration::from_secs(self.replay_ring_secs)
    }

    pub(crate) fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrant_runtime::Validate as _;

    /// `config` is refused with a message that names `field`.
    #[track_caller]
    fn assert_names(config: &Config, field: &str) {
        let msg = config.validate().unwrap_err().to_string();
        assert!(msg.contains(field), "{msg} should name {field}");
    }

    #[test]
    fn empty_toml_is_the_default_and_valid() {
        let config: Config = toml::from_str("").unwrap();
        assert_eq!(config, Config::default());
        config.validate().unwrap();
    }

    #[test]
    fn sections_and_unknown_fields() {
        let config: Config = toml::from_str(
            "listen = \"0.0.0.0:9000\"\n[logcache]\nmax_per_source = 7\n[telemetry]\nagent = \"http://127.0.0.1:3458\"\n",
        )
        .unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000");
        assert_eq!(config.logcache.max_per_source, 7);
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
    }

    #[test]
    fn announcing_needs_a_sane_interval_and_a_url() {
        let config: Config = toml::from_str(
            "advertise_url = \"http://10.0.0.7:8082\"\n[bus]\nurl = \"inprocess://t\"\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.announce_interval_ms, 5000);
        assert!(Config::default().bus.is_none(), "no bus, no announcements");
        for (bad, field) in [
            (
                Config {
                    announce_interval_ms: 10,
                    ..config.clone()
                },
                "announce_interval_ms",
            ),
            (
                Config {
                    advertise_url: Some("10.0.0.7:8082".to_owned()),
                    ..config.clone()
                },
                "advertise_url",
            ),
            (
                Config {
                    bus: Some(hydrant_bus::Config::nats("ftp://x")),
                    ..config
                },
                "bus",
            ),
        ] {
            assert_names(&bad, field);
        }
    }

    #[test]
    fn errors_name_the_field() {
        let bad = Config {
            listen: "8082".to_owned(),
            ..Config::default()
        };
        assert_names(&bad, "listen");
        let bad = Config {
            subscription_queue_envelopes: 10,
            ..Config::default()
        };
        assert_names(&bad, "subscription_queue_envelopes");
        let bad = Config {
            logcache: StoreConfig {
                max_sources: 0,
                ..StoreConfig::default()
            },
            ..Config::default()
        };
        assert_names(&bad, "logcache.max_sources");
        let bad = Config {
            replay_ring_secs: 0,
            ..Config::default()
        };
        assert_names(&bad, "replay_ring_secs");
        let off = Config {
            replay_ring_bytes: 0,
            replay_ring_secs: 0,
            ..Config::default()
        };
        off.validate().unwrap();
    }
}
