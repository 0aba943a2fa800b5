//! The traffic controller's configuration (`hydrant run trafficcontroller --config FILE`).
//!
//! Every field has a default that runs on one machine next to a doppler on its default port;
//! [`Config::validate`] refuses values that would make a queue unbounded, a timer spin, or a
//! doppler address unusable, with messages that name the field and say what to write instead.

use std::time::Duration;

use serde::Deserialize;

use hydrant_bus::follow::{DopplerSource, default_dopplers};
use hydrant_runtime::invalid;

use crate::Error;

/// The traffic controller / firehose edge configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Public HTTP/WebSocket address (firehose, app streams, SSE, recent). Default
    /// `127.0.0.1:8081`, the Loggregator traffic controller's port.
    pub listen: String,
    /// Admin address serving `/healthz` and `/metrics`. Default `127.0.0.1:8089`.
    pub admin_listen: String,
    /// Which copy of the role this is, carried on its own metrics. Default `"0"`.
    pub instance_id: String,
    /// gRPC URLs of every doppler (`http://host:port`); each serves v2 Egress and the log cache
    /// read API. This field, `dopplers_from_bus`, `max_dopplers` and `bus` are shared with the
    /// agent and documented once, on [`DopplerSource`]. Default `["http://127.0.0.1:8082"]`.
    pub dopplers: Vec<String>,
    /// Follow the dopplers announced on the bus: a new one is subscribed to as soon as its
    /// first announcement arrives, and one whose announcements lapse has its slot freed.
    /// Default false.
    pub dopplers_from_bus: bool,
    /// Most dopplers followed from the bus at once; one refused beyond it is also logged once.
    /// Default 64.
    pub max_dopplers: usize,
    /// A followed doppler that still cannot be subscribed to this long after its stream went
    /// down (or after it was first announced) is dropped and its slot freed, even while it
    /// keeps announcing; its next announcement tries it afresh. Seconds, default 30.
    pub doppler_grace_secs: f64,
    /// The control-plane bus (`[bus]`). Default unset.
    pub bus: Option<hydrant_bus::Config>,
    /// The cloud controller's public token keys, `http://HOST:PORT/token_keys`. Fetched at
    /// start (retried until it answers), refreshed every `token_keys_refresh_secs`, and again
    /// when a token names an unknown key (at most once per `token_keys_refetch_secs`). The edge
    /// holds public keys only: it verifies tokens, it can never mint one. Default unset; one of
    /// `token_keys_url`, `token_keys_file` or `disable_auth` is required.
    pub token_keys_url: Option<String>,
    /// Several controllers' token keys, the same key set behind each (controllers that share
    /// one token key directory): `["http://10.0.0.1:9022/token_keys",
    /// "http://10.0.0.2:9022/token_keys"]`, instead of `token_keys_url`. Fetched from the one
    /// that answered last; when it fails (no connection, no answer, a 5xx) the next in turn,
    /// each move logged and counted (`trafficcontroller_controller_failovers_total`), so a lost
    /// controller host cannot lock out tokens signed by a key staged after it went. Default
    /// unset.
    pub token_keys_urls: Option<Vec<String>>,
    /// A key-set file (`{"keys": [...]}`, what `/token_keys` answers) to verify with, for
    /// deployments that distribute keys as files. Default unset.
    pub token_keys_file: Option<String>,
    /// A key set inline (the `/token_keys` JSON): the keys to verify with when nothing else
    /// is configured, or the keys known until the first fetch from `token_keys_url`. Default
    /// unset.
    pub token_keys: Option<String>,
    /// Where fetched keys are cached, so a restarted edge verifies while the cloud controller
    /// is down. Default unset (memory only).
    pub token_keys_cache: Option<String>,
    /// Least time between two fetches caused by unknown key ids, seconds: forged `kid`s cannot
    /// turn into a flood of requests to the cloud controller. Default 30.
    pub token_keys_refetch_secs: f64,
    /// How often the keys are re-fetched anyway, seconds (picks up staged and retired keys).
    /// Default 300.
    pub token_keys_refresh_secs: f64,
    /// Serve everything to everyone without a token. Only for local benchmarks. Default false.
    pub disable_auth: bool,
    /// Envelopes a consumer may have queued before the oldest are dropped. Default 10000.
    pub queue_max_envelopes: usize,
    /// Encoded bytes a consumer may have queued before the oldest are dropped. Default 16 MiB.
    pub queue_max_bytes: usize,
    /// Fair drops in each consumer's queue: once it is half full, an envelope whose source
    /// already holds more than its share of the queue is refused
    /// (`trafficcontroller.dropped{reason="fair_share"}`, by source in
    /// `trafficcontroller.dropped_by_source`) and counted in the consumer's next gap marker, so
    /// a consumer following many apps that falls behind loses the flood's lines, not a quiet
    /// app's. Default true.
    pub fair_share: bool,
    /// Read each firehose subscription id from the dopplers as a shard group (one more ring
    /// read per doppler per id, `shard_id` = the id), so copies of one nozzle connected to
    /// different edges behind one name get each envelope once between them, as Loggregator's
    /// traffic controllers do. A deployment with a single edge can turn it off: its copies are
    /// then split here from the one shared stream, which costs the dopplers no extra reads.
    /// Default true.
    pub shard_across_edges: bool,
    /// Most envelopes in one WebSocket frame / SSE event. Default 100.
    pub frame_max_envelopes: usize,
    /// Most encoded envelope bytes in one frame (one envelope is always sent whole). Default
    /// 256 KiB.
    pub frame_max_bytes: usize,
    /// A consumer that has kept dropping, without once draining its queue, for this long is
    /// closed (WebSocket 1008). Default 10 s.
    pub slow_consumer_timeout_secs: f64,
    /// How often an idle or busy WebSocket is pinged. Default 30 s (Loggregator's keepalive).
    pub ping_interval_secs: f64,
    /// A WebSocket whose client has not answered a ping within this long is closed with 1008.
    /// Default 30 s.
    pub pong_timeout_secs: f64,
    /// How long without data before an SSE stream sends a heartbeat event. Default 15 s (the
    /// RLP gateway's).
    pub sse_heartbeat_secs: f64,
    /// Most concurrent streams (WebSocket and SSE); more get 503. Default 1000.
    pub max_streams: usize,
    /// Most streams one user token may hold open at once; the next gets 429
    /// `too_many_streams_for_token`. Tokens minted for an OAuth2 client (the platform's own
    /// consumers, `[[clients]]` in the cloud controller) are not held to it. Default 16.
    pub max_streams_per_token: usize,
    /// Most streams one user (a token's `sub`) may hold open across all their tokens; the next
    /// gets 429 `too_many_streams_for_user`. Not applied to OAuth2 clients. Default 128: room
    /// for `hydrant top`, which follows up to 100 apps with one stream (and log token) each.
    pub max_streams_per_user: usize,
    /// Streams out of `max_streams` that users' tokens may never take: kept for the platform's
    /// own consumers (health manager, autoscaler, SLO alerter, nozzles), which read with
    /// client-credentials tokens. Past `max_streams - platform_reserved_streams` user streams a
    /// user gets 503. Default 100.
    pub platform_reserved_streams: usize,
    /// First delay before reconnecting to a doppler; doubles per failure. Default 10 ms.
    pub reconnect_min_ms: u64,
    /// Longest delay between reconnect attempts. Default 5000 ms.
    pub reconnect_max_ms: u64,
    /// Deadline for one doppler to answer a recent-logs or meta read; a doppler that misses it
    /// is skipped. Default 5 s.
    pub read_timeout_secs: f64,
    /// Connection caps and timeouts of the public listener (`[limits]`); WebSocket and SSE
    /// streams count against `max_connections` for as long as they are open. Default: the
    /// runtime's, with `max_connections` 2048 (room for `max_streams` and short requests).
    pub limits: hydrant_runtime::Limits,
    /// Where this role's own metrics go.
    pub telemetry: hydrant_emitter::TelemetryConfig,
    /// Mutual TLS to the dopplers (`[upstream_tls]`, this edge's leaf, CN
    /// `trafficcontroller`): presented on every doppler connection, and each doppler's
    /// certificate must name `doppler`. Default unset: plaintext.
    pub upstream_tls: Option<hydrant_tls::TlsFiles>,
    /// Serve the public listener over TLS (`https://`, `wss://`) with this certificate
    /// (`[tls]`: `cert_file`, `key_file`, and `ca_file`, the bundle holding the CA that issued
    /// it, e.g. `hydrant certs`' `ca.pem` with the `trafficcontroller` leaf issued with
    /// `--name` for the edge's host name). Re-read when the files change. No client
    /// certificate is asked for: tokens say who may read what. Default unset: plain HTTP, as
    /// the micro cloud's loopback edge.
    pub tls: Option<hydrant_tls::TlsFiles>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".to_owned(),
            admin_listen: "127.0.0.1:8089".to_owned(),
            instance_id: "0".to_owned(),
            dopplers: default_dopplers(),
            dopplers_from_bus: false,
            max_dopplers: 64,
            doppler_grace_secs: 30.0,
            bus: None,
            token_keys_url: None,
            token_keys_urls: None,
            token_keys_file: None,
            token_keys: None,
            token_keys_cache: None,
            token_keys_refetch_secs: 30.0,
            token_keys_refresh_secs: 300.0,
            disable_auth: false,
            queue_max_envelopes: 10_000,
            queue_max_bytes: 16 * 1024 * 1024,
            fair_share: true,
            shard_across_edges: true,
            frame_max_envelopes: 100,
            frame_max_bytes: 256 * 1024,
            slow_consumer_timeout_secs: 10.0,
            ping_interval_secs: 30.0,
            pong_timeout_secs: 30.0,
            sse_heartbeat_secs: 15.0,
            max_streams: 1000,
            max_streams_per_token: 16,
            max_streams_per_user: 128,
            platform_reserved_streams: 100,
            reconnect_min_ms: 10,
            reconnect_max_ms: 5000,
            read_timeout_secs: 5.0,
            limits: hydrant_runtime::Limits {
                max_connections: 2048,
                ..hydrant_runtime::Limits::default()
            },
            telemetry: hydrant_emitter::TelemetryConfig::default(),
            upstream_tls: None,
            tls: None,
        }
    }
}

impl Config {
    /// Where the dopplers come from: the fields shared with the agent.
    #[must_use]
    pub fn doppler_source(&self) -> DopplerSource<'_> {
        DopplerSource {
            dopplers: &self.dopplers,
            dopplers_from_bus: self.dopplers_from_bus,
            max_dopplers: self.max_dopplers,
            bus: self.bus.as_ref(),
        }
    }

    /// Whether the edge follows the dopplers announced on the bus rather than (only) a list.
    #[must_use]
    pub fn follows_bus(&self) -> bool {
        self.doppler_source().follows_bus()
    }

    /// The fixed dopplers read from start to end: none when following the bus with `dopplers`
    /// left at its default.
    #[must_use]
    pub fn static_dopplers(&self) -> &[String] {
        self.doppler_source().static_dopplers()
    }
}

fn check_secs(name: &str, v: f64) -> Result<(), Error> {
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        return Err(invalid(
            name,
            format!(
                "{v} is not a number of seconds above 0 and at most 86400; write e.g. 10 or 0.5"
            ),
        )
        .into());
    }
    Ok(())
}

/// Seconds as a `Duration`; validated values always convert, anything else gets `fallback`.
pub(crate) fn secs(v: f64, fallback: Duration) -> Duration {
    Duration::try_from_secs_f64(v).unwrap_or(fallback)
}

impl hydrant_runtime::Validate for Config {
    type Error = Error;

    /// Checks every field; the message names the field and says how to fix it.
    ///
    /// # Errors
    /// [`Error::Config`].
    fn validate(&self) -> Result<(), Error> {
        for (field, tls) in [("upstream_tls", &self.upstream_tls), ("tls", &self.tls)] {
            if let Some(tls) = tls {
                tls.validate()
                    .map_err(|e| Error::from(invalid(field, e.to_string())))?;
            }
        }
        for (name, addr) in [
            ("listen", &self.listen),
            ("admin_listen", &self.admin_listen),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    name,
                    format!(
                        "{addr:?} is not an IP address and port; write e.g. \"127.0.0.1:8081\""
                    ),
                )
                .into());
            }
        }
        self.doppler_source().validate().map_err(|e| {
            let (field, message) = e.into_field();
            Error::from(invalid(field, message))
        })?;
        check_secs("doppler_grace_secs", self.doppler_grace_secs)?;
        for (i, url) in self.dopplers.iter().enumerate() {
            let ok = url.parse::<http::Uri>().is_ok_and(|u| {
                u.scheme_str() == Some("http") && u.authority().is_some_and(|a| a.port().is_some())
            });
            if !ok {
                return Err(invalid(
                    format!("dopplers[{i}]"),
                    format!(
                        "{url:?} is not a doppler URL: write it like \"http://127.0.0.1:8082\" \
                         (http scheme, host and port)"
                    ),
                )
                .into());
            }
            if self.dopplers[..i].contains(url) {
                return Err(invalid(
                    format!("dopplers[{i}]"),
                    format!("{url:?} is listed twice: every envelope would arrive twice"),
                )
                .into());
            }
        }
        if let (Some(_), Some(_)) = (&self.token_keys_url, &self.token_keys_urls) {
            return Err(invalid(
                "token_keys_urls",
                "token_keys_url and token_keys_urls are both set: list every controller's \
                 /token_keys in token_keys_urls and remove token_keys_url",
            )
            .into());
        }
        let sources = usize::from(self.token_keys_url.is_some() || self.token_keys_urls.is_some())
            + usize::from(self.token_keys_file.is_some());
        if sources > 1 {
            return Err(invalid(
                "token_keys_url",
                "token_keys_url and token_keys_file are both set: keep one",
            )
            .into());
        }
        let sources = sources + usize::from(self.token_keys.is_some() && sources == 0);
        if sources == 0 && !self.disable_auth {
            return Err(invalid(
                "token_keys_url",
                "no token keys: set token_keys_url to the cloud controller's \
                 \"http://HOST:PORT/token_keys\" (or token_keys_file to a saved key set), or \
                 disable_auth = true for a local benchmark",
            )
            .into());
        }
        if sources > 0 && self.disable_auth {
            return Err(invalid(
                "disable_auth",
                "is true with token keys set: remove one (disable_auth serves everything to \
                 everyone)",
            )
            .into());
        }
        let key_url_ok = |url: &str| {
            url.parse::<http::Uri>()
                .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some())
        };
        if let Some(url) = &self.token_keys_url
            && !key_url_ok(url)
        {
            return Err(invalid(
                "token_keys_url",
                format!("{url:?} is not a URL: write it like \"http://127.0.0.1:9022/token_keys\""),
            )
            .into());
        }
        if let Some(urls) = &self.token_keys_urls {
            if urls.is_empty() {
                return Err(invalid(
                    "token_keys_urls",
                    "is empty; list every cloud controller's /token_keys, e.g. \
                     [\"http://10.0.0.1:9022/token_keys\", \"http://10.0.0.2:9022/token_keys\"]",
                )
                .into());
            }
            for (i, url) in urls.iter().enumerate() {
                if !key_url_ok(url) {
                    return Err(invalid(
                        format!("token_keys_urls[{i}]"),
                        format!(
                            "{url:?} is not a URL: write it like \
                             \"http://127.0.0.1:9022/token_keys\""
                        ),
                    )
                    .into());
                }
                let same = |u: &String| u.trim_end_matches('/') == url.trim_end_matches('/');
                if urls[..i].iter().any(same) {
                    return Err(invalid(
                        format!("token_keys_urls[{i}]"),
                        format!("{url:?} is listed twice; list each controller once"),
                    )
                    .into());
                }
            }
        }
        check_secs("token_keys_refetch_secs", self.token_keys_refetch_secs)?;
        check_secs("token_keys_refresh_secs", self.token_keys_refresh_secs)?;
        if self.queue_max_envelopes == 0 || self.queue_max_envelopes > 10_000_000 {
            return Err(invalid(
                "queue_max_envelopes",
                format!(
                    "{} must be between 1 and 10000000",
                    self.queue_max_envelopes
                ),
            )
            .into());
        }
        if self.queue_max_bytes < 64 * 1024 || self.queue_max_bytes > 1 << 32 {
            return Err(invalid(
                "queue_max_bytes",
                format!(
                    "{} must be between 65536 (64 KiB) and 4294967296 (4 GiB)",
                    self.queue_max_bytes
                ),
            )
            .into());
        }
        if self.frame_max_envelopes == 0 || self.frame_max_envelopes > 10_000 {
            return Err(invalid(
                "frame_max_envelopes",
                format!("{} must be between 1 and 10000", self.frame_max_envelopes),
            )
            .into());
        }
        if self.frame_max_bytes < 1024 || self.frame_max_bytes > hydrant_envelope::MAX_MESSAGE_BYTES
        {
            return Err(invalid(
                "frame_max_bytes",
                format!(
                    "{} must be between 1024 and {}",
                    self.frame_max_bytes,
                    hydrant_envelope::MAX_MESSAGE_BYTES
                ),
            )
            .into());
        }
        check_secs(
            "slow_consumer_timeout_secs",
            self.slow_consumer_timeout_secs,
        )?;
        check_secs("ping_interval_secs", self.ping_interval_secs)?;
        check_secs("pong_timeout_secs", self.pong_timeout_secs)?;
        check_secs("sse_heartbeat_secs", self.sse_heartbeat_secs)?;
        check_secs("read_timeout_secs", self.read_timeout_secs)?;
        if self.max_streams == 0 {
            return Err(invalid("max_streams", "must be at least 1 (default 1000)").into());
        }
        for (name, v) in [
            ("max_streams_per_token", self.max_streams_per_token),
            ("max_streams_per_user", self.max_streams_per_user),
        ] {
            if v == 0 {
                return Err(invalid(
                    name,
                    "must be at least 1 (defaults 16 per token, 128 per user)",
                )
                .into());
            }
        }
        if self.platform_reserved_streams >= self.max_streams {
            return Err(invalid(
                "platform_reserved_streams",
                format!(
                    "{} leaves users no stream of max_streams = {}: reserve fewer (default 100 of \
                     1000), or 0 to reserve none",
                    self.platform_reserved_streams, self.max_streams
                ),
            )
            .into());
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return Err(invalid(
                "reconnect_min_ms",
                format!(
                    "{} with reconnect_max_ms = {}: need 0 < min <= max (defaults 10 and 5000)",
                    self.reconnect_min_ms, self.reconnect_max_ms
                ),
            )
            .into());
        }
        if self.telemetry.interval_secs == 0 {
            return Err(invalid("telemetry.interval_secs", "must be at least 1").into());
        }
        self.limits.validate("limits")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrant_runtime::Validate as _;

    fn with_key() -> Config {
        Config {
            token_keys_url: Some("http://127.0.0.1:9022/token_keys".into()),
            ..Config::default()
        }
    }

    #[test]
    fn defaults_need_only_a_key() {
        with_key().validate().unwrap();
        let err = Config::default().validate().unwrap_err().to_string();
        assert!(err.contains("token_keys_url"), "{err}");
        Config {
            disable_auth: true,
            ..Config::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn messages_name_the_field() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    listen: "localhost".into(),
                    ..with_key()
                },
                "listen",
            ),
            (
                Config {
                    dopplers: vec![],
                    ..with_key()
                },
                "dopplers",
            ),
            (
                Config {
                    dopplers: vec!["127.0.0.1:8082".into()],
                    ..with_key()
                },
                "dopplers[0]",
            ),
            (
                Config {
                    dopplers: vec!["http://a:1".into(), "http://a:1".into()],
                    ..with_key()
                },
                "twice",
            ),
            (
                Config {
                    queue_max_envelopes: 0,
                    ..with_key()
                },
                "queue_max_envelopes",
            ),
            (
                Config {
                    queue_max_bytes: 10,
                    ..with_key()
                },
                "queue_max_bytes",
            ),
            (
                Config {
                    frame_max_envelopes: 0,
                    ..with_key()
                },
                "frame_max_envelopes",
            ),
            (
                Config {
                    slow_consumer_timeout_secs: f64::NAN,
                    ..with_key()
                },
                "slow_consumer_timeout_secs",
            ),
            (
                Config {
                    pong_timeout_secs: -1.0,
                    ..with_key()
                },
                "pong_timeout_secs",
            ),
            (
                Config {
                    reconnect_min_ms: 0,
                    ..with_key()
                },
                "reconnect_min_ms",
            ),
            (
                Config {
                    max_streams: 0,
                    ..with_key()
                },
                "max_streams",
            ),
            (
                Config {
                    max_streams_per_token: 0,
                    ..with_key()
                },
                "max_streams_per_token",
            ),
            (
                Config {
                    max_streams: 10,
                    ..with_key()
                },
                "platform_reserved_streams",
            ),
            (
                Config {
                    token_keys_file: Some("k".into()),
                    ..with_key()
                },
                "both set",
            ),
            (
                Config {
                    token_keys_url: Some("https//cc/token_keys".into()),
                    ..Config::default()
                },
                "token_keys_url",
            ),
            (
                Config {
                    token_keys_refetch_secs: 0.0,
                    ..with_key()
                },
                "token_keys_refetch_secs",
            ),
            (
                Config {
                    token_keys_urls: Some(vec!["http://10.0.0.2:9022/token_keys".into()]),
                    ..with_key()
                },
                "both set",
            ),
            (
                Config {
                    token_keys_urls: Some(vec![]),
                    ..Config::default()
                },
                "token_keys_urls: is empty",
            ),
            (
                Config {
                    token_keys_urls: Some(vec![
                        "http://10.0.0.1:9022/token_keys".into(),
                        "http://10.0.0.1:9022/token_keys/".into(),
                    ]),
                    ..Config::default()
                },
                "token_keys_urls[1]: \"http://10.0.0.1:9022/token_keys/\" is listed twice",
            ),
            (
                Config {
                    token_keys_urls: Some(vec![
                        "http://10.0.0.1:9022/token_keys".into(),
                        "10.0.0.2:9022/token_keys".into(),
                    ]),
                    ..Config::default()
                },
                "token_keys_urls[1]",
            ),
        ];
        for (config, needle) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle}");
        }
    }

    #[test]
    fn parses_from_toml_with_integer_or_fractional_seconds() {
        let c: Config = toml_like(
            r#"
            dopplers = ["http://10.0.0.1:8082", "http://10.0.0.2:8082"]
            token_keys_url = "http://10.0.0.9:9022/token_keys"
            token_keys_cache = "/var/hydrant/token_keys.json"
            slow_consumer_timeout_secs = 5
            ping_interval_secs = 0.5
            "#,
        );
        assert_eq!(c.dopplers.len(), 2);
        assert!((c.slow_consumer_timeout_secs - 5.0).abs() < f64::EPSILON);
        assert!((c.ping_interval_secs - 0.5).abs() < f64::EPSILON);
        c.validate().unwrap();
    }

    #[test]
    fn token_keys_urls_name_several_controllers() {
        let c = toml_like(
            r#"
            token_keys_urls = ["http://10.0.0.9:9022/token_keys", "http://10.0.0.10:9022/token_keys"]
            "#,
        );
        c.validate().unwrap();
        assert_eq!(c.token_keys_urls.map(|u| u.len()), Some(2));
    }

    #[test]
    fn following_the_bus_needs_a_bus_and_no_fixed_list() {
        let follow = toml_like(
            "dopplers_from_bus = true\ndisable_auth = true\n[bus]\nurl = \"nats://127.0.0.1:4222\"\n",
        );
        follow.validate().unwrap();
        assert!(follow.follows_bus());
        assert!(
            follow.static_dopplers().is_empty(),
            "the default list is not read"
        );
        assert_eq!(follow.max_dopplers, 64);
        let empty =
            toml_like("dopplers = []\ndisable_auth = true\n[bus]\nurl = \"inprocess://t\"\n");
        empty.validate().unwrap();
        assert!(empty.follows_bus());
        assert!(!with_key().follows_bus());
        assert_eq!(with_key().static_dopplers().len(), 1);
        let bus = || Some(hydrant_bus::Config::inprocess("t"));
        let cases = [
            (
                Config {
                    dopplers_from_bus: true,
                    ..with_key()
                },
                "dopplers_from_bus",
            ),
            (
                Config {
                    dopplers_from_bus: true,
                    dopplers: vec!["http://10.0.0.1:8082".into()],
                    bus: bus(),
                    ..with_key()
                },
                "conflict",
            ),
            (
                Config {
                    dopplers_from_bus: true,
                    max_dopplers: 0,
                    bus: bus(),
                    ..with_key()
                },
                "max_dopplers",
            ),
            (
                Config {
                    dopplers_from_bus: true,
                    doppler_grace_secs: 0.0,
                    bus: bus(),
                    ..with_key()
                },
                "doppler_grace_secs",
            ),
        ];
        for (config, needle) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle}");
        }
    }

    fn toml_like(s: &str) -> Config {
        toml::from_str(s).unwrap()
    }
}
