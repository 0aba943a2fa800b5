//! What a consumer tells the client: where the firehose edge is, who it is, how to reconnect, and
//! what it subscribes to.
//!
//! The config is loaded from TOML by whoever embeds the client (the CLI, a nozzle, a control
//! loop), so it follows the roles' conventions: unknown fields are rejected, every field has a
//! default, and [`ClientConfig::validate`] names the field and the fix.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::token::{Secret, TokenSource};

/// How to reach and read the firehose edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Base URL of the firehose edge, `http://host:port` with an optional path prefix (`ws://`
    /// is accepted too; `https://` or `wss://` for an edge serving TLS). Default
    /// `http://127.0.0.1:8081`.
    pub url: String,
    /// For an `https://`/`wss://` edge: the CA bundle (PEM) that issued its certificate, e.g.
    /// `hydrant certs`' `ca.pem`; re-read at each connection. Default empty: the system's root
    /// certificates.
    pub ca_file: String,
    /// Bearer token sent as `Authorization: Bearer <token>`. Default empty (the edge answers
    /// 401).
    pub token: String,
    /// Cloud controller base URL that client credentials are exchanged at
    /// (`POST /v3/tokens`, `grant_type=client_credentials`). Needed with `client_id`. Default
    /// empty.
    pub api_url: String,
    /// OAuth2 client id. When set, the client gets its token with client credentials and renews
    /// it before it expires and whenever the edge closes a stream for an expired token, instead
    /// of sending `token`. Default empty (use `token`).
    pub client_id: String,
    /// The client's secret, inline. Default empty; prefer `client_secret_file`.
    pub client_secret: String,
    /// A file holding the client's secret, re-read at each renewal. Default empty.
    pub client_secret_file: String,
    /// A token source set in code (the CLI's refresh token, a shared cache); not read from
    /// TOML. When set it wins over `token` and the client credentials. Default none.
    #[serde(skip)]
    pub token_source: Option<TokenSource>,
    /// Reconnect policy. Default: 100 ms doubling to 5 s, 50 % jitter.
    pub reconnect: Backoff,
    /// Stream events (batches, gaps, ...) queued between the socket reader and the consumer.
    /// When full the reader stops reading the socket, so a slow consumer is handled by the
    /// server's slow-consumer policy instead of growing memory here. Default 16.
    pub buffer_events: usize,
    /// Deadline for TCP connect plus the WebSocket handshake, in ms. Default 10000.
    pub connect_timeout_ms: u64,
    /// How often the client pings the edge, in ms, so a dead path is noticed on a quiet
    /// stream. Default 30000.
    pub ping_interval_ms: u64,
    /// A connection that delivers no frame at all (data, ping or pong) for this long while the
    /// client is waiting on it is treated as dead and reconnected, in ms. Default 75000.
    pub idle_timeout_ms: u64,
    /// Deadline for one recent-logs read, in ms. Default 30000.
    pub request_timeout_ms: u64,
    /// Largest WebSocket message accepted, in bytes. Default 10 MiB
    /// (`hydrant_envelope::MAX_MESSAGE_BYTES`).
    pub max_frame_bytes: usize,
    /// Largest recent-logs response body accepted, in bytes. Default 64 MiB.
    pub max_response_bytes: usize,
    /// Watch `hydrant_sequence` per (source_id, instance_id, `hydrant_sequence_stream`: the
    /// stamping agent's numbering) and report jumps as gaps. Turn it
    /// off for a firehose subscription id that several connections share: the edge deals the
    /// group's envelopes round-robin, so each connection sees only its share of a source's
    /// sequence and would report the rest as lost. Default true.
    pub track_sequences: bool,
    /// Most numberings (source_id, instance_id, stream) whose sequence is remembered; the
    /// least recently seen are forgotten beyond this. Default 10000.
    pub max_tracked_sources: usize,
    /// Give up (final error event) after this many consecutive connection attempts that did
    /// not lead to a healthy connection; 0 retries forever. Default 0.
    pub max_attempts: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8081".to_owned(),
            ca_file: String::new(),
            token: String::new(),
            api_url: String::new(),
            client_id: String::new(),
            client_secret: String::new(),
            client_secret_file: String::new(),
            token_source: None,
            reconnect: Backoff::default(),
            buffer_events: 16,
            connect_timeout_ms: 10_000,
            ping_interval_ms: 30_000,
            idle_timeout_ms: 75_000,
            request_timeout_ms: 30_000,
            max_frame_bytes: hydrant_envelope::MAX_MESSAGE_BYTES,
            max_response_bytes: 64 * 1024 * 1024,
            track_sequences: true,
            max_tracked_sources: 10_000,
            max_attempts: 0,
        }
    }
}

/// Capped exponential backoff with jitter between reconnect attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    /// Delay before the first retry, in ms. Default 100.
    pub initial_ms: u64,
    /// Cap on the delay, in ms. Default 5000.
    pub max_ms: u64,
    /// Fraction of the delay that is randomised (0 = none, 1 = anywhere in [0, delay]), so a
    /// fleet of consumers cut off together does not come back together. Default 0.5.
    pub jitter: f64,
    /// A connection that stayed up at least this long resets the backoff to `initial_ms`, in
    /// ms. Shorter-lived connections keep doubling it, so an edge that accepts and at once
    /// closes is not hammered. Default 5000.
    pub reset_after_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_ms: 100,
            max_ms: 5_000,
            jitter: 0.5,
            reset_after_ms: 5_000,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based): `initial * 2^attempt`, capped at
    /// `max`, then reduced by up to `jitter` of itself.
    #[must_use]
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial_ms
            .saturating_mul(1u64.checked_shl(attempt.min(63)).unwrap_or(u64::MAX))
            .min(self.max_ms.max(self.initial_ms));
        let jitter = self.jitter.clamp(0.0, 1.0);
        let cut = (base as f64 * jitter * fastrand::f64()) as u64;
        Duration::from_millis(base.saturating_sub(cut))
    }
}

/// What to stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subscription {
    /// Everything (firehose scope). Connections sharing a `subscription_id` split the stream,
    /// which is how a nozzle scales out.
    Firehose {
        /// The shard group name.
        subscription_id: String,
    },
    /// One source (an app guid or a platform component's source id).
    App {
        /// The source to follow.
        source_id: String,
    },
}

impl Subscription {
    /// The path under the edge's base URL.
    pub(crate) fn path(&self) -> String {
        match self {
            Subscription::Firehose { subscription_id } => {
                format!("/firehose/{}", percent_encode(subscription_id))
            }
            Subscription::App { source_id } => {
                format!("/apps/{}/stream", percent_encode(source_id))
            }
        }
    }

    /// How errors name it.
    pub(crate) fn describe(&self) -> String {
        match self {
            Subscription::Firehose { subscription_id } => {
                format!("firehose subscription {subscription_id:?}")
            }
            Subscription::App { source_id } => format!("app {source_id:?}"),
        }
    }
}

/// Where the edge is, parsed once from [`ClientConfig::url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `host:port`, what TCP connects to and what `Host:` carries.
    pub authority: String,
    /// Path prefix without a trailing slash (usually empty).
    pub prefix: String,
    /// `https://`/`wss://`: the connection runs TLS, checking the certificate names `host`.
    pub tls: bool,
    /// The URL's host, as the server's certificate must name it.
    pub host: String,
}

impl Endpoint {
    /// The WebSocket URL for a path under the prefix.
    pub(crate) fn ws_url(&self, path: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}{}", self.authority, self.prefix, path)
    }

    /// The HTTP URL for a path under the prefix (for messages).
    pub(crate) fn http_url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}{}", self.authority, self.prefix, path)
    }
}

impl ClientConfig {
    /// Where the stream's token comes from: `token_source` if set, else client credentials when
    /// `client_id` is set, else `None` (the static `token`).
    ///
    /// # Errors
    /// [`Error::Config`] when the client credential fields are incomplete.
    pub fn credentials(&self) -> Result<Option<TokenSource>, Error> {
        if let Some(source) = &self.token_source {
            return Ok(Some(source.clone()));
        }
        if self.client_id.is_empty() {
            if !self.client_secret.is_empty() || !self.client_secret_file.is_empty() {
                return Err(Error::Config {
                    field: "client_id",
                    message: "must be set with client_secret or client_secret_file".to_owned(),
                });
            }
            return Ok(None);
        }
        if self.api_url.is_empty() {
            return Err(Error::Config {
                field: "api_url",
                message: "must name the cloud controller (e.g. http://127.0.0.1:9022) when \
                          client_id is set: the token is renewed there"
                    .to_owned(),
            });
        }
        let secret = match (
            self.client_secret.is_empty(),
            self.client_secret_file.is_empty(),
        ) {
            (false, true) => Secret::Inline(self.client_secret.clone()),
            (true, false) => Secret::File(self.client_secret_file.clone().into()),
            _ => {
                return Err(Error::Config {
                    field: "client_secret",
                    message: "set exactly one of client_secret and client_secret_file with \
                              client_id"
                        .to_owned(),
                });
            }
        };
        Ok(Some(TokenSource::client_credentials(
            self.api_url.trim_end_matches('/').to_owned(),
            self.client_id.clone(),
            secret,
        )))
    }

    /// Checks every field; the message names the field and what to change.
    ///
    /// # Errors
    /// [`Error::Config`] for the first unusable field.
    pub fn validate(&self) -> Result<(), Error> {
        self.endpoint()?;
        self.credentials()?;
        let positive = [
            ("buffer_events", self.buffer_events as u64),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("ping_interval_ms", self.ping_interval_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("max_response_bytes", self.max_response_bytes as u64),
            ("max_tracked_sources", self.max_tracked_sources as u64),
            ("reconnect.initial_ms", self.reconnect.initial_ms),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::Config {
                    field,
                    message: "must be greater than 0".to_owned(),
                });
            }
        }
        if self.reconnect.max_ms < self.reconnect.initial_ms {
            return Err(Error::Config {
                field: "reconnect.max_ms",
                message: format!(
                    "({}) must be at least reconnect.initial_ms ({})",
                    self.reconnect.max_ms, self.reconnect.initial_ms
                ),
            });
        }
        if !(0.0..=1.0).contains(&self.reconnect.jitter) {
            return Err(Error::Config {
                field: "reconnect.jitter",
                message: format!(
                    "({}) must be a fraction between 0.0 and 1.0",
                    self.reconnect.jitter
                ),
            });
        }
        if self.idle_timeout_ms <= self.ping_interval_ms {
            return Err(Error::Config {
                field: "idle_timeout_ms",
                message: format!(
                    "({}) must be longer than ping_interval_ms ({}), or every quiet stream \
                     would be cut before its pong arrives",
                    self.idle_timeout_ms, self.ping_interval_ms
                ),
            });
        }
        Ok(())
    }

    /// Parses `url` into where to connect.
    pub(crate) fn endpoint(&self) -> Result<Endpoint, Error> {
        let bad = |message: String| Error::Config {
            field: "url",
            message,
        };
        let uri: http::Uri = self.url.parse().map_err(|e| {
            bad(format!(
                "({:?}) is not a URL ({e}); write it like http://127.0.0.1:8081",
                self.url
            ))
        })?;
        let tls = match uri.scheme_str() {
            Some("http" | "ws") => false,
            Some("https" | "wss") => true,
            _ => {
                return Err(bad(format!(
                    "({:?}) must start with http:// (e.g. http://127.0.0.1:8081), or https:// \
                     for an edge serving TLS",
                    self.url
                )));
            }
        };
        let authority = uri.authority().ok_or_else(|| {
            bad(format!(
                "({:?}) has no host; write it like http://127.0.0.1:8081",
                self.url
            ))
        })?;
        if authority.as_str().contains('@') {
            return Err(bad(format!(
                "({:?}) must not carry credentials; put the token in `token`",
                self.url
            )));
        }
        if uri.query().is_some() {
            return Err(bad(format!(
                "({:?}) must not have a query string; put the token in `token`",
                self.url
            )));
        }
        let host = authority.host().to_owned();
        let authority = match authority.port_u16() {
            Some(_) => authority.as_str().to_owned(),
            None if tls => format!("{}:443", authority.as_str()),
            None => format!("{}:80", authority.as_str()),
        };
        Ok(Endpoint {
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            tls,
            host,
        })
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Every byte but RFC 3986's unreserved ones (`A-Z a-z 0-9 - . _ ~`).
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment or query value: everything but RFC 3986 unreserved bytes.
pub(crate) fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `config` is refused with a message that names `field`.
    #[track_caller]
    fn assert_names(config: &ClientConfig, field: &str) {
        let msg = config.validate().unwrap_err().to_string();
        assert!(msg.contains(field), "{msg} should name {field}");
    }

    #[test]
    fn defaults_validate_and_parse() {
        let c = ClientConfig::default();
        c.validate().unwrap();
        let e = c.endpoint().unwrap();
        assert_eq!(e.authority, "127.0.0.1:8081");
        assert_eq!(e.prefix, "");
        assert_eq!(e.ws_url("/firehose/x"), "ws://127.0.0.1:8081/firehose/x");
    }

    #[test]
    fn url_forms() {
        let mut c = ClientConfig {
            url: "http://edge.local/hydrant/".to_owned(),
            ..ClientConfig::default()
        };
        let e = c.endpoint().unwrap();
        assert_eq!(e.authority, "edge.local:80");
        assert_eq!(e.prefix, "/hydrant");
        c.url = "https://edge/".to_owned();
        let e = c.endpoint().unwrap();
        assert_eq!((e.authority.as_str(), e.tls), ("edge:443", true));
        assert_eq!(e.ws_url("/firehose/x"), "wss://edge:443/firehose/x");
        c.url = "ftp://edge".to_owned();
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("`url`") && msg.contains("https://"), "{msg}");
        c.url = "edge:8081".to_owned();
        assert!(c.validate().is_err());
        c.url = "http://u:p@edge:1".to_owned();
        assert_names(&c, "token");
    }

    #[test]
    fn validate_names_the_field() {
        let c = ClientConfig {
            reconnect: Backoff {
                initial_ms: 500,
                max_ms: 100,
                ..Backoff::default()
            },
            ..ClientConfig::default()
        };
        assert_names(&c, "reconnect.max_ms");
        let c = ClientConfig {
            buffer_events: 0,
            ..ClientConfig::default()
        };
        assert_names(&c, "buffer_events");
    }

    #[test]
    fn toml_round_trip_and_unknown_fields() {
        let c: ClientConfig = toml::from_str("token = \"t\"\n[reconnect]\nmax_ms = 900\n").unwrap();
        assert_eq!(c.token, "t");
        assert_eq!(c.reconnect.max_ms, 900);
        assert_eq!(c.reconnect.initial_ms, 100);
        assert!(toml::from_str::<ClientConfig>("tokn = \"t\"").is_err());
    }

    #[test]
    fn backoff_doubles_caps_and_jitters_down() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        let ms: Vec<u128> = (0..8).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.delay(u32::MAX).as_millis(), 5000);
        let j = Backoff::default();
        for a in 0..10 {
            let d = j.delay(a).as_millis();
            let full = b.delay(a).as_millis();
            assert!(d <= full && d >= full / 2, "{d} vs {full}");
        }
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("abc-1.2_~"), "abc-1.2_~");
        assert_eq!(percent_encode("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
