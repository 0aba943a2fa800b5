//! The SLO alerter's config (`hydrant run slo --config FILE`, or the `[slo]` part of the micro
//! cloud): where SLOs and the firehose come from, where state is kept, how often it evaluates,
//! and how patient webhook delivery is.
//!
//! Invariant: a config that passes [`Config::validate`] names exactly one way to get a token,
//! an `http(s)://` API URL, non-zero intervals and bounded queues; every rejection names the
//! field and says what to write instead.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hydrant_emitter::TelemetryConfig;
use hydrant_firehose_client::ClientConfig;
use hydrant_runtime::{ApiSettings, invalid};
use hydrant_windows::WindowsConfig;
use serde::Deserialize;

use crate::Error;

/// SLO alerter settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The cloud controller's API and how the alerter signs in, keys at this level of the file:
    /// `api_url` (default `http://127.0.0.1:9022`), an admin token (it lists every app's SLOs)
    /// as `token` or `token_file`, or `client_id` with `client_secret` or `client_secret_file`;
    /// `tls` with the `slo` identity for the controller's internal listener (then the status
    /// page's token keys come over it too, by mutual TLS).
    #[serde(flatten)]
    pub api: ApiSettings,
    /// How often the SLOs are fetched, seconds. Default 15.
    pub poll_interval_secs: u64,
    /// How long one API call may take, milliseconds. Default 5000.
    pub request_timeout_ms: u64,
    /// The firehose edge (`url`; `token` defaults to the API token, which must then carry the
    /// `firehose` scope, as an admin's does).
    pub firehose: ClientConfig,
    /// The firehose shard group; alerters sharing it would split the stream, so run one.
    /// Default `slo-alerter`.
    pub subscription_id: String,
    /// Where per-app minute counts and alert state are kept across restarts. Default
    /// `slo-data`.
    pub data_dir: PathBuf,
    /// How often every SLO is evaluated, seconds. Default 10 (a total outage of a 99.9 % SLO
    /// pages about 52 s in, so this adds at most a fifth to that).
    pub evaluate_interval_secs: u64,
    /// How often state is written to `data_dir`, seconds (and always at shutdown). Default 60.
    pub flush_interval_secs: u64,
    /// Bounds of the rolling windows; `minute_history` must cover the 3-day window (4320).
    pub windows: WindowsConfig,
    /// Webhook delivery.
    pub webhook: WebhookConfig,
    /// Where SLO log lines, budget gauges and the alerter's own metrics go (the local agent).
    pub telemetry: TelemetryConfig,
    /// Where `/healthz`, `/metrics` and the status (`/v1/slos`) listen. Default
    /// `127.0.0.1:14835`.
    pub admin_listen: String,
    /// The cloud controller's public token keys, which `/v1/slos` verifies tokens with.
    /// Fetched at start (retried until it answers), every 5 minutes, and when a token names an
    /// unknown key. Default unset: `api_url` + `/token_keys`. With `tls` the keys come only
    /// over mutual TLS from a server proving the `cloudcontroller` identity, so this must then
    /// be the internal listener's `https://` address (the default is); without `tls`, an
    /// `http://` URL.
    pub token_keys_url: Option<String>,
    /// Where fetched keys are cached, so a restarted alerter answers `/v1/slos` while the
    /// cloud controller is down. Default unset: `data_dir/token_keys.json`.
    pub token_keys_cache: Option<PathBuf>,
    /// `/v1/slos` needs a token that may read the app (`admin`, `firehose`, or the app's log
    /// token); every app's list needs `admin` or `firehose`. Default true; false shows every
    /// app's SLOs to anyone who reaches the admin port (only for local tests).
    pub status_auth: bool,
}

/// How alerts reach webhooks.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Notifications waiting for delivery; past it new ones are dropped and counted
    /// (`slo.dropped{reason="webhook_queue_full"}`). Default 256.
    pub queue: usize,
    /// Deliveries in flight at once. Default 4.
    pub concurrency: usize,
    /// Attempts per notification before it is dropped and counted
    /// (`slo.dropped{reason="webhook_gave_up"}`). Default 8.
    pub max_attempts: u32,
    /// First retry delay, milliseconds; doubles per attempt, with jitter. Default 500.
    pub initial_backoff_ms: u64,
    /// Longest retry delay, milliseconds. Default 30000.
    pub max_backoff_ms: u64,
    /// Deadline of one POST, milliseconds. Default 5000.
    pub timeout_ms: u64,
    /// Let webhooks reach loopback, private and link-local addresses. Default false: a
    /// webhook URL is written by a developer, and the alerter must not POST into the
    /// platform's own network (or a cloud metadata service) for them; refused notices are
    /// counted (`slo.dropped{reason="webhook_refused"}`). The same policy as syslog drains.
    pub allow_private: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            queue: 256,
            concurrency: 4,
            max_attempts: 8,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            timeout_ms: 5000,
            allow_private: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api: ApiSettings::default(),
            poll_interval_secs: 15,
            request_timeout_ms: 5000,
            firehose: ClientConfig::default(),
            subscription_id: "slo-alerter".to_owned(),
            data_dir: PathBuf::from("slo-data"),
            evaluate_interval_secs: 10,
            flush_interval_secs: 60,
            windows: WindowsConfig::default(),
            webhook: WebhookConfig::default(),
            telemetry: TelemetryConfig::default(),
            admin_listen: "127.0.0.1:14835".to_owned(),
            token_keys_url: None,
            token_keys_cache: None,
            status_auth: true,
        }
    }
}

impl Config {
    /// Where the status check's token keys come from: `token_keys_url` (default
    /// `api_url/token_keys`), cached in `token_keys_cache` (default
    /// `data_dir/token_keys.json`), fetched through `transport`: the role's
    /// `ApiClient::key_transport()`, mutual TLS when `tls` is set.
    #[must_use]
    pub fn token_key_sources(
        &self,
        transport: Option<std::sync::Arc<dyn hydrant_auth::KeyTransport>>,
    ) -> hydrant_auth::KeySources {
        hydrant_auth::KeySources {
            url: Some(self.token_keys_url.clone().unwrap_or_else(|| {
                format!(
                    "{}/token_keys",
                    self.api.primary_url().trim_end_matches('/')
                )
            })),
            cache: Some(
                self.token_keys_cache
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join("token_keys.json")),
            ),
            refetch_every: Duration::from_secs(30),
            transport,
            ..hydrant_auth::KeySources::default()
        }
    }
}

impl hydrant_runtime::Validate for Config {
    type Error = Error;

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad field, or the windows' or telemetry's own error.
    fn validate(&self) -> Result<(), Error> {
        self.api.validate("", "an admin token")?;
        self.api.check_firehose_credentials(
            !self.firehose.token.trim().is_empty() || !self.firehose.client_id.is_empty(),
        )?;
        if self.subscription_id.is_empty() || self.subscription_id.len() > 128 {
            return Err(invalid(
                "subscription_id",
                "must be 1 to 128 characters, e.g. \"slo-alerter\"",
            )
            .into());
        }
        // With tls, keys come over mutual TLS only (never from whoever answers plain HTTP);
        // without, over plain HTTP (this role then has no certificate to present).
        let (scheme, example) = if self.api.tls.is_some() {
            (
                "https://",
                "\"https://10.0.0.5:9023/token_keys\" (the internal listener)",
            )
        } else {
            ("http://", "\"http://127.0.0.1:9022/token_keys\"")
        };
        if let Some(url) = &self.token_keys_url
            && !(url.starts_with(scheme) && url.len() > scheme.len())
        {
            let why = if self.api.tls.is_some() {
                "with tls the status page's keys come over mutual TLS only"
            } else {
                "without tls the keys are fetched over plain HTTP"
            };
            return Err(invalid(
                "token_keys_url",
                format!(
                    "{url:?} is not a {scheme} URL ({why}): write it like {example}, or leave \
                     it out for api_url + /token_keys"
                ),
            )
            .into());
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "is empty; write a directory path").into());
        }
        for (field, value, max) in [
            ("poll_interval_secs", self.poll_interval_secs, 86_400),
            ("request_timeout_ms", self.request_timeout_ms, 600_000),
            ("evaluate_interval_secs", self.evaluate_interval_secs, 60),
            ("flush_interval_secs", self.flush_interval_secs, 3600),
            ("webhook.queue", self.webhook.queue as u64, 100_000),
            ("webhook.concurrency", self.webhook.concurrency as u64, 256),
            (
                "webhook.max_attempts",
                u64::from(self.webhook.max_attempts),
                100,
            ),
            (
                "webhook.initial_backoff_ms",
                self.webhook.initial_backoff_ms,
                600_000,
            ),
            (
                "webhook.max_backoff_ms",
                self.webhook.max_backoff_ms,
                3_600_000,
            ),
            ("webhook.timeout_ms", self.webhook.timeout_ms, 600_000),
        ] {
            if value == 0 || value > max {
                return Err(
                    invalid(field, format!("({value}) must be between 1 and {max}")).into(),
                );
            }
        }
        if self.webhook.max_backoff_ms < self.webhook.initial_backoff_ms {
            return Err(invalid(
                "webhook.max_backoff_ms",
                format!(
                    "({}) must be at least webhook.initial_backoff_ms ({})",
                    self.webhook.max_backoff_ms, self.webhook.initial_backoff_ms
                ),
            )
            .into());
        }
        let longest = crate::eval::RULES
            .iter()
            .map(|r| r.long_minutes)
            .max()
            .unwrap_or(0);
        if u64::from(self.windows.minute_history) < longest {
            return Err(invalid(
                "windows.minute_history",
                format!(
                    "({}) must be at least {longest} (3 days), the longest burn-rate window",
                    self.windows.minute_history
                ),
            )
            .into());
        }
        self.admin_listen.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "admin_listen",
                format!(
                    "{:?} is not an address; write it as \"127.0.0.1:14835\"",
                    self.admin_listen
                ),
            )
        })?;
        self.windows.validate()?;
        self.telemetry.validate()?;
        Ok(())
    }
}

impl Config {
    pub(crate) fn secs(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrant_runtime::Validate as _;

    fn valid() -> Config {
        Config {
            api: ApiSettings::with_token("http://127.0.0.1:9022", "t"),
            ..Config::default()
        }
    }

    #[test]
    fn defaults_with_a_token_validate_and_unknown_fields_are_refused() {
        valid().validate().unwrap();
        let c: Config = toml::from_str(
            "token = \"x\"\nevaluate_interval_secs = 5\n[webhook]\nmax_attempts = 3\n",
        )
        .unwrap();
        assert_eq!(c.evaluate_interval_secs, 5);
        assert_eq!(c.webhook.max_attempts, 3);
        assert_eq!(c.webhook.queue, 256);
        assert!(toml::from_str::<Config>("evaluate_every = 5").is_err());
    }

    #[test]
    fn validate_names_the_field() {
        let cases: Vec<(Config, &str)> = vec![
            (Config::default(), "token"),
            (
                Config {
                    api: ApiSettings {
                        api_url: "ftp://x".to_owned(),
                        ..valid().api
                    },
                    ..valid()
                },
                "api_url",
            ),
            (
                Config {
                    evaluate_interval_secs: 0,
                    ..valid()
                },
                "evaluate_interval_secs",
            ),
            (
                Config {
                    webhook: WebhookConfig {
                        max_backoff_ms: 1,
                        ..WebhookConfig::default()
                    },
                    ..valid()
                },
                "webhook.max_backoff_ms",
            ),
            (
                Config {
                    windows: WindowsConfig {
                        minute_history: 60,
                        ..WindowsConfig::default()
                    },
                    ..valid()
                },
                "windows.minute_history",
            ),
            (
                Config {
                    admin_listen: "nowhere".to_owned(),
                    ..valid()
                },
                "admin_listen",
            ),
        ];
        for (config, field) in cases {
            let msg = config.validate().unwrap_err().to_string();
            assert!(msg.contains(&format!(": {field}: ")), "{field}: {msg}");
        }
    }

    /// With tls the status page's keys come from the internal listener (by default the one
    /// `api_url` names) and never from a plain http:// URL; without tls, the other way round.
    #[test]
    fn token_keys_follow_the_api_transport() {
        let files = hydrant_tls::TlsFiles::in_dir(
            std::path::Path::new("/etc/hydrant/certs"),
            hydrant_tls::Identity::Slo,
        );
        let internal = Config {
            api: ApiSettings {
                api_url: "https://10.0.0.5:9023/".to_owned(),
                tls: Some(files),
                ..valid().api
            },
            ..valid()
        };
        internal.validate().unwrap();
        assert_eq!(
            internal.token_key_sources(None).url.as_deref(),
            Some("https://10.0.0.5:9023/token_keys")
        );
        let plain_keys = Config {
            token_keys_url: Some("http://10.0.0.5:9022/token_keys".to_owned()),
            ..internal
        };
        let msg = plain_keys.validate().unwrap_err().to_string();
        assert!(
            msg.contains("token_keys_url") && msg.contains("mutual TLS"),
            "{msg}"
        );
        let tls_keys_without_tls = Config {
            token_keys_url: Some("https://10.0.0.5:9023/token_keys".to_owned()),
            ..valid()
        };
        let msg = tls_keys_without_tls.validate().unwrap_err().to_string();
        assert!(msg.contains("token_keys_url"), "{msg}");
    }
}
