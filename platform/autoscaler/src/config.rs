//! The autoscaler's config (`hydrant run autoscaler --config FILE`, or the `[autoscaler]` part
//! of the micro cloud): where policies and metrics come from and how often they are evaluated.
//!
//! Invariant: a config that passes [`Config::validate`] has an `http(s)://` API URL, exactly
//! one token source, a percentile in (0, 100) and non-zero intervals; every rejection names
//! the field and says what to write instead.

use std::net::SocketAddr;

use hydrant_emitter::TelemetryConfig;
use hydrant_firehose_client::ClientConfig;
use hydrant_runtime::{ApiSettings, invalid};
use hydrant_windows::WindowsConfig;
use serde::Deserialize;

use crate::Error;

/// Most autoscaler copies one platform may run.
pub const MAX_INSTANCES: u32 = 1024;

/// Autoscaler settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The cloud controller's API and how the autoscaler signs in, keys at this level of the
    /// file: `api_url` (default `http://127.0.0.1:9022`), an admin token (it lists every policy
    /// and scales any app) as `token` or `token_file`, or `client_id` with `client_secret` or
    /// `client_secret_file`; `tls` with the `autoscaler` identity for the controller's internal
    /// listener.
    #[serde(flatten)]
    pub api: ApiSettings,
    /// The firehose edge. An empty `firehose.token` means "use the admin token".
    pub firehose: ClientConfig,
    /// The firehose subscription id's prefix: each copy subscribes as
    /// `{subscription_id}-{instance_index}` and so receives the whole stream (copies sharing an
    /// id would split it per envelope and each see part of every app). Default `autoscaler`.
    pub subscription_id: String,
    /// This copy's number among `instance_count` autoscalers, from 0. Each app is decided by
    /// exactly one copy, chosen by hashing its guid. Default 0.
    pub instance_index: u32,
    /// How many autoscaler copies share the platform's apps; every copy must be given the same
    /// count and a distinct index. Default 1.
    pub instance_count: u32,
    /// How often every policy is evaluated, seconds. Default 2 (app-autoscaler: 40–60 s), so
    /// a breach acts within `breach_duration_secs` + 2 s plus the scale call.
    pub evaluation_interval_secs: u64,
    /// How often policies and instance counts are fetched, seconds. Default 10.
    pub policy_poll_secs: u64,
    /// Longest window one metric value is read over, seconds (never longer than the rule's
    /// breach duration). Default 10.
    pub metric_window_secs: u64,
    /// The percentile `responsetime` means, in (0, 100). Default 95.
    pub responsetime_percentile: f64,
    /// An app (or the whole stream) unheard of for this long is stale and every rule holds,
    /// seconds. Default 30.
    pub stale_after_secs: u64,
    /// Read an app with no requests in the window as 0 ms response time, so latency
    /// policies scale in at zero traffic (app-autoscaler's behaviour). Default true.
    pub idle_responsetime_zero: bool,
    /// How long one API call may take, milliseconds. Default 5000.
    pub request_timeout_ms: u64,
    /// Operator cap on every rule's `breach_duration_secs` and `cool_down_secs`, seconds.
    /// Policies keep app-autoscaler's 60 s minimum; this platform-wide setting shortens what
    /// the autoscaler applies, for demos and tests that cannot wait a minute per decision.
    /// Every line says the durations applied. Default unset: policies as written.
    pub rule_duration_cap_secs: Option<u32>,
    /// Rolling-window bounds.
    pub windows: WindowsConfig,
    /// Where the AUTOSCALER log lines and the autoscaler's own metrics go.
    pub telemetry: TelemetryConfig,
    /// Where `/healthz` and `/metrics` listen. Default `127.0.0.1:14833`.
    pub admin_listen: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api: ApiSettings::default(),
            firehose: ClientConfig::default(),
            subscription_id: "autoscaler".to_owned(),
            instance_index: 0,
            instance_count: 1,
            evaluation_interval_secs: 2,
            policy_poll_secs: 10,
            metric_window_secs: 10,
            responsetime_percentile: 95.0,
            stale_after_secs: 30,
            idle_responsetime_zero: true,
            request_timeout_ms: 5000,
            rule_duration_cap_secs: None,
            windows: WindowsConfig::default(),
            telemetry: TelemetryConfig::default(),
            admin_listen: "127.0.0.1:14833".to_owned(),
        }
    }
}

impl Config {
    /// The firehose subscription id this copy reads with.
    #[must_use]
    pub fn copy_subscription_id(&self) -> String {
        format!("{}-{}", self.subscription_id, self.instance_index)
    }
}

impl hydrant_runtime::Validate for Config {
    type Error = Error;

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad field, or the nested section's error.
    fn validate(&self) -> Result<(), Error> {
        self.api.validate("", "an admin token")?;
        self.api.check_firehose_credentials(
            !self.firehose.token.trim().is_empty() || !self.firehose.client_id.is_empty(),
        )?;
        if self.subscription_id.is_empty() || self.subscription_id.len() > 120 {
            return Err(invalid("subscription_id", "use 1 to 120 characters").into());
        }
        if !(1..=MAX_INSTANCES).contains(&self.instance_count) {
            return Err(invalid(
                "instance_count",
                format!(
                    "({}) must be between 1 and {MAX_INSTANCES}: the number of autoscaler copies",
                    self.instance_count
                ),
            )
            .into());
        }
        if self.instance_index >= self.instance_count {
            return Err(invalid(
                "instance_index",
                format!(
                    "({}) must be below instance_count ({}): copies are numbered 0 to \
                     instance_count - 1",
                    self.instance_index, self.instance_count
                ),
            )
            .into());
        }
        for (field, value) in [
            ("evaluation_interval_secs", self.evaluation_interval_secs),
            ("policy_poll_secs", self.policy_poll_secs),
            ("metric_window_secs", self.metric_window_secs),
            ("stale_after_secs", self.stale_after_secs),
            ("request_timeout_ms", self.request_timeout_ms),
        ] {
            if !(1..=86_400_000).contains(&value) {
                return Err(
                    invalid(field, format!("({value}) must be between 1 and 86400000")).into(),
                );
            }
        }
        if let Some(cap) = self.rule_duration_cap_secs
            && !(1..=3600).contains(&cap)
        {
            return Err(invalid(
                "rule_duration_cap_secs",
                format!(
                    "({cap}) must be between 1 and 3600 seconds; remove it to apply policies \
                     as written"
                ),
            )
            .into());
        }
        if self.evaluation_interval_secs > 60 {
            return Err(invalid(
                "evaluation_interval_secs",
                "must be at most 60: a breach must act within breach_duration_secs + one tick",
            )
            .into());
        }
        if !(self.responsetime_percentile > 0.0 && self.responsetime_percentile < 100.0) {
            return Err(invalid(
                "responsetime_percentile",
                format!(
                    "({}) must be above 0 and below 100, e.g. 95 or 99",
                    self.responsetime_percentile
                ),
            )
            .into());
        }
        if self.metric_window_secs > u64::from(self.windows.horizon_secs) {
            return Err(invalid(
                "metric_window_secs",
                format!(
                    "({}) is longer than windows.horizon_secs ({})",
                    self.metric_window_secs, self.windows.horizon_secs
                ),
            )
            .into());
        }
        self.admin_listen.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "admin_listen",
                format!(
                    "{:?} is not an address; write \"127.0.0.1:14833\"",
                    self.admin_listen
                ),
            )
        })?;
        self.windows.validate()?;
        self.telemetry.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrant_runtime::Validate as _;

    #[test]
    fn defaults_need_only_a_token() {
        let c: Config = toml::from_str("token = \"t\"").unwrap();
        c.validate().unwrap();
        assert!(toml::from_str::<Config>("tokn = \"t\"").is_err());
        let msg = Config::default().validate().unwrap_err().to_string();
        assert!(msg.contains("token:"), "{msg}");
        let c: Config = toml::from_str("token = \"t\"\nresponsetime_percentile = 100.0").unwrap();
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("responsetime_percentile"), "{msg}");
        let c: Config = toml::from_str("token = \"t\"\nevaluation_interval_secs = 0").unwrap();
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("evaluation_interval_secs"), "{msg}");
    }

    #[test]
    fn client_credentials_for_the_firehose_renew_instead_of_a_fixed_token() {
        let api =
            "api_url = \"http://cc:9022\"\nclient_id = \"autoscaler\"\nclient_secret = \"s\"\n";
        let c: Config = toml::from_str(api).unwrap();
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("firehose.client_id"), "{msg}");
        let firehose = "[firehose]\napi_url = \"http://cc:9022\"\nclient_id = \"autoscaler\"\n\
                        client_secret_file = \"/etc/hydrant/autoscaler.secret\"\n";
        let c: Config = toml::from_str(&format!("{api}{firehose}")).unwrap();
        c.validate().unwrap();
        assert!(
            c.firehose.credentials().unwrap().is_some(),
            "the stream renews"
        );
    }

    #[test]
    fn copies_are_numbered_below_their_count_and_read_apart() {
        let c: Config =
            toml::from_str("token = \"t\"\ninstance_index = 1\ninstance_count = 3").unwrap();
        c.validate().unwrap();
        assert_eq!(c.copy_subscription_id(), "autoscaler-1");
        let c: Config =
            toml::from_str("token = \"t\"\ninstance_index = 3\ninstance_count = 3").unwrap();
        let msg = c.validate().unwrap_err().to_string();
        assert!(
            msg.contains("instance_index: (3) must be below instance_count (3)"),
            "{msg}"
        );
        let c: Config = toml::from_str("token = \"t\"\ninstance_count = 0").unwrap();
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("instance_count: (0)"), "{msg}");
        let c: Config = toml::from_str("token = \"t\"\nrule_duration_cap_secs = 0").unwrap();
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("rule_duration_cap_secs: (0)"), "{msg}");
    }
}
