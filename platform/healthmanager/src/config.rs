//! The health manager's config (`hydrant run healthmanager --config FILE`, or the
//! `[healthmanager]` part of the micro cloud): where desired state comes from, how quickly a
//! copy of it goes stale, and how patient the convergence is.
//!
//! Invariant: a config that passes [`Config::validate`] names exactly one way to get a token,
//! an `http(s)://` API URL and non-zero intervals; every rejection names the field and says
//! what to write instead.

use std::net::SocketAddr;
use std::time::Duration;

use hydrant_emitter::TelemetryConfig;
use hydrant_runtime::{ApiSettings, invalid};
use serde::Deserialize;

use crate::Error;

/// Health manager settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The cloud controller's API and how the health manager signs in, keys at this level of
    /// the file: `api_url` (default `http://127.0.0.1:9022`), an admin token (it lists every app
    /// and restarts instances in any space) as `token` or `token_file`, or `client_id` with
    /// `client_secret` or `client_secret_file`; `tls` with the `healthmanager` identity for the
    /// controller's internal listener.
    #[serde(flatten)]
    pub api: ApiSettings,
    /// How often desired state is fetched, seconds. Default 5.
    pub poll_interval_secs: u64,
    /// How long one API call may take, milliseconds. Default 5000.
    pub request_timeout_ms: u64,
    /// The desired-state copy is stale after this many failed polls in a row. Default 3.
    pub stale_after_failures: u32,
    /// ... or once it is older than this, seconds. Default 30 (Diego's domain TTL is 120 s;
    /// we poll far more often than its 30 s sync).
    pub stale_after_secs: u64,
    /// How often extra instances are looked for, seconds. Default 10 (HM9000's analyzer).
    pub converge_interval_secs: u64,
    /// An instance is only called extra once it has been seen this long and the desired-state
    /// copy is newer than its first sighting, seconds. Default 30 (HM9000's grace period):
    /// an app pushed or scaled after the last poll is not mistaken for an extra.
    pub extra_grace_secs: u64,
    /// An executor unheard of for this long is forgotten, seconds. Default 30 (three
    /// heartbeats).
    pub executor_timeout_secs: u64,
    /// A restart that found no taker is tried again after this long, seconds. Default 5.
    pub retry_secs: u64,
    /// Most instance indexes, instance guids and overheard start requests tracked each;
    /// past it new ones are dropped and counted (`healthmanager.dropped{reason="table_full"}`).
    /// Default 100000.
    pub max_tracked: usize,
    /// This copy's id in the lease (`healthmanager.lease`): of several health managers on one
    /// bus only the lease holder restarts and stops instances. One bus-safe token, unique per
    /// copy. Default: made up at start from the process id and a random suffix.
    pub instance_id: Option<String>,
    /// How long a lease claim lives without a renewal, seconds: a holder that dies is replaced
    /// within about this plus two renewals. Default 5.
    pub lease_ttl_secs: u64,
    /// How often the holder renews its claim (and a standby looks for a lapsed one),
    /// milliseconds. At most a third of `lease_ttl_secs`. Default 1000.
    pub lease_renew_ms: u64,
    /// The message bus.
    pub bus: hydrant_bus::Config,
    /// Where the HM log lines and the health manager's own metrics go (the local agent).
    pub telemetry: TelemetryConfig,
    /// Where `/healthz` and `/metrics` listen. Default `127.0.0.1:14832`.
    pub admin_listen: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api: ApiSettings::default(),
            poll_interval_secs: 5,
            request_timeout_ms: 5000,
            stale_after_failures: 3,
            stale_after_secs: 30,
            converge_interval_secs: 10,
            extra_grace_secs: 30,
            executor_timeout_secs: 30,
            retry_secs: 5,
            max_tracked: 100_000,
            instance_id: None,
            lease_ttl_secs: 5,
            lease_renew_ms: 1000,
            bus: hydrant_bus::Config::default(),
            telemetry: TelemetryConfig::default(),
            admin_listen: "127.0.0.1:14832".to_owned(),
        }
    }
}

impl Config {}

impl hydrant_runtime::Validate for Config {
    type Error = Error;

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad field, [`Error::Telemetry`] or [`Error::Bus`].
    fn validate(&self) -> Result<(), Error> {
        self.api.validate("", "an admin token")?;
        for (field, value) in [
            ("poll_interval_secs", self.poll_interval_secs),
            ("request_timeout_ms", self.request_timeout_ms),
            ("stale_after_failures", u64::from(self.stale_after_failures)),
            ("stale_after_secs", self.stale_after_secs),
            ("converge_interval_secs", self.converge_interval_secs),
            ("executor_timeout_secs", self.executor_timeout_secs),
            ("retry_secs", self.retry_secs),
            ("max_tracked", self.max_tracked as u64),
            ("lease_ttl_secs", self.lease_ttl_secs),
            ("lease_renew_ms", self.lease_renew_ms),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be greater than 0").into());
            }
            if value > 86_400_000 {
                return Err(invalid(field, format!("{value} is implausibly large")).into());
            }
        }
        if self.extra_grace_secs > 86_400 {
            return Err(invalid(
                "extra_grace_secs",
                "must be at most 86400 (a day); the default is 30",
            )
            .into());
        }
        if self.stale_after_secs < self.poll_interval_secs {
            return Err(invalid(
                "stale_after_secs",
                format!(
                    "{} is shorter than poll_interval_secs ({}): every copy would be stale \
                     before the next poll; make it a few poll intervals",
                    self.stale_after_secs, self.poll_interval_secs
                ),
            )
            .into());
        }
        if self.lease_renew_ms.saturating_mul(3) > self.lease_ttl_secs.saturating_mul(1000) {
            return Err(invalid(
                "lease_renew_ms",
                format!(
                    "{} ms is more than a third of lease_ttl_secs ({} s): one late renewal \
                     would hand the lease over; renew at least three times per TTL",
                    self.lease_renew_ms, self.lease_ttl_secs
                ),
            )
            .into());
        }
        if let Some(id) = &self.instance_id
            && (id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(invalid(
                "instance_id",
                format!("{id:?} must be letters, digits, '-', '_' or '.', e.g. \"hm-host-a\""),
            )
            .into());
        }
        self.admin_listen.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "admin_listen",
                format!(
                    "{:?} is not an address; write it as \"127.0.0.1:14832\"",
                    self.admin_listen
                ),
            )
        })?;
        self.bus.validate()?;
        self.telemetry.validate()?;
        Ok(())
    }
}

impl Config {
    pub(crate) fn secs(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    pub(crate) fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs)
    }

    pub(crate) fn lease_renew(&self) -> Duration {
        Duration::from_millis(self.lease_renew_ms)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
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
    fn defaults_with_a_token_are_valid() {
        valid().validate().unwrap();
        let err = Config::default().validate().unwrap_err().to_string();
        assert!(err.contains("token_file"), "{err}");
    }

    #[test]
    fn toml_with_unknown_field_is_rejected() {
        let err = toml::from_str::<Config>("token = \"a\"\npoll = 5\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let ok: Config = toml::from_str(
            "api_url = \"http://10.0.0.1:9022\"\ntoken_file = \"hm.token\"\n[bus]\nurl = \
             \"inprocess://t\"\n",
        )
        .unwrap();
        ok.validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    api: ApiSettings {
                        api_url: "ftp://x".into(),
                        ..valid().api
                    },
                    ..valid()
                },
                "api_url",
            ),
            (
                Config {
                    api: ApiSettings {
                        token_file: Some("f".into()),
                        ..valid().api
                    },
                    ..valid()
                },
                "token",
            ),
            (
                Config {
                    poll_interval_secs: 0,
                    ..valid()
                },
                "poll_interval_secs",
            ),
            (
                Config {
                    stale_after_secs: 2,
                    poll_interval_secs: 5,
                    ..valid()
                },
                "stale_after_secs",
            ),
            (
                Config {
                    admin_listen: "nope".into(),
                    ..valid()
                },
                "admin_listen",
            ),
            (
                Config {
                    max_tracked: 0,
                    ..valid()
                },
                "max_tracked",
            ),
            (
                Config {
                    lease_ttl_secs: 2,
                    lease_renew_ms: 1000,
                    ..valid()
                },
                "lease_renew_ms",
            ),
            (
                Config {
                    instance_id: Some("hm a".into()),
                    ..valid()
                },
                "instance_id",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }
}
