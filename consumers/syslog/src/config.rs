//! The syslog nozzle's config: where the firehose is, which drains to feed, how lines are
//! written and how much each drain may hold back.
//!
//! Loaded from TOML by `hydrant nozzle syslog --config FILE`. Unknown fields are refused,
//! every field has a default but `drains`, and [`Config::validate`] names the field at fault.
//! Invariant: no error built here carries a credential — drain URLs are shown through
//! [`mask_url`], and the firehose token is never shown at all.

use hydrant_emitter::TelemetryConfig;
use hydrant_firehose_client::ClientConfig;
use hydrant_nozzle_core::{
    Backoff, BreakerConfig, QueueLimits, mask_url, validate_firehose, validate_self_report,
};
use hydrant_runtime::invalid;
use serde::{Deserialize, Serialize};

use crate::{DrainData, DrainUrl, EncoderOptions, Error, PlatformConfig, TlsConfig};

/// The whole config of one syslog nozzle.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The firehose edge to read (`url`, `token` with the `firehose` scope, reconnect policy).
    pub firehose: ClientConfig,
    /// The firehose shard group. Nozzles sharing it split the stream between them, so run
    /// several copies with the same id to scale out. Default `syslog-nozzle`.
    pub subscription_id: String,
    /// The drains, each getting every envelope: `syslog://[user:pass@]HOST:PORT`,
    /// `syslog-tls://HOST:PORT` or `https://[user:pass@]HOST[:PORT]/PATH`, optionally with
    /// `?drain-data=logs|metrics|traces|all&disable-metadata=true`, which overrides
    /// `[encoder]` for that drain as Cloud Foundry's drain URLs do. Written by the operator, so
    /// they may point anywhere, loopback included.
    pub drains: Vec<String>,
    /// How envelopes become lines, for drains whose URL says nothing else.
    pub encoder: EncoderConfig,
    /// Per-drain queue and batch limits. Default 10000 messages / 16 MiB per drain.
    pub queue: QueueLimits,
    /// Retries of a failed batch. Default 10 ms doubling to 5 s, 8 retries.
    pub retry: Backoff,
    /// When to stop trying a drain that stays down. Default 5 failures, 10 s open.
    pub breaker: BreakerConfig,
    /// Deadline for connecting to a drain and writing one batch, in ms. Default 10000.
    pub write_timeout_ms: u64,
    /// On shutdown, how long the drains get to take what is queued, in ms; the rest is counted
    /// as `dropped{reason="shutdown"}`. Default 2000.
    pub shutdown_drain_ms: u64,
    /// This copy's instance id in its own metrics. Default `0`.
    pub instance_id: String,
    /// `/healthz`, `/metrics` and `/drains` (every drain's report). Default `127.0.0.1:14840`.
    pub admin_listen: String,
    /// `/drains` names apps and drain hosts, so it needs a token of audience `hydrant-logs`
    /// with the `admin` or `firehose` scope (401 without one, 403 for any other). Default
    /// true; false shows every drain to anyone who reaches the admin port (local tests only).
    pub status_auth: bool,
    /// The cloud controller's public token keys, which `/drains` verifies tokens with:
    /// fetched at start (retried until it answers), every 5 minutes, and when a token names an
    /// unknown key. Default unset: `[platform].api_url` + `/token_keys` in platform mode (with
    /// `[platform].tls` over mutual TLS from the internal listener, so then an `https://` URL;
    /// without, `http://`); otherwise none (set this or `token_keys_file`, or `/drains` refuses
    /// every token).
    pub token_keys_url: Option<String>,
    /// A fixed key-set file (the controller's `GET /token_keys` JSON) instead of fetching.
    /// Default unset.
    pub token_keys_file: Option<std::path::PathBuf>,
    /// Where fetched keys are cached, so a restarted nozzle answers `/drains` while the cloud
    /// controller is down. Default unset (not cached).
    pub token_keys_cache: Option<std::path::PathBuf>,
    /// Where the nozzle's own metrics go as envelopes; also where the `LGR` loss notices go
    /// into the apps' streams (without an agent there are no notices, only counters).
    pub telemetry: TelemetryConfig,
    /// Which certificates `syslog-tls://` and `https://` drains must present.
    pub tls: TlsConfig,
    /// How often an app is told, in its own log stream, how many of its messages a drain lost
    /// since the last notice (one `LGR` line per app and drain at most), in ms. Default 5000.
    pub loss_notice_interval_ms: u64,
    /// Platform mode: also serve the drains developers bind to their apps, as the cloud
    /// controller lists them. Default off.
    pub platform: Option<PlatformConfig>,
    /// A file keeping the firehose cursor of the last frame every drain dealt with (written
    /// atomically after the drains took it). With it, a nozzle restarted within the dopplers'
    /// replay window (60 s by default) resumes there and loses nothing; what the drains took
    /// after the stored cursor is sent again and counted in `nozzle.duplicates` (the batch a
    /// drain was writing when the nozzle was killed in `nozzle.duplicates_unsure`: the drain
    /// had written some or all of it). The directory must exist. Default unset: a restarted
    /// nozzle starts from live data.
    pub cursor_file: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            firehose: ClientConfig::default(),
            subscription_id: "syslog-nozzle".to_owned(),
            drains: Vec::new(),
            encoder: EncoderConfig::default(),
            queue: QueueLimits::default(),
            retry: Backoff::default(),
            breaker: BreakerConfig::default(),
            write_timeout_ms: 10_000,
            shutdown_drain_ms: 2_000,
            instance_id: "0".to_owned(),
            admin_listen: "127.0.0.1:14840".to_owned(),
            status_auth: true,
            token_keys_url: None,
            token_keys_file: None,
            token_keys_cache: None,
            telemetry: TelemetryConfig::default(),
            tls: TlsConfig::default(),
            loss_notice_interval_ms: 5_000,
            platform: None,
            cursor_file: None,
        }
    }
}

/// The `[encoder]` section: the defaults of every drain's [`EncoderOptions`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderConfig {
    /// HOSTNAME for envelopes without org/space/app names (those get `org.space.app`).
    /// Default `hydrant`.
    pub hostname: String,
    /// Write the envelope's tags as a `tags@47450` element. Default true.
    pub metadata: bool,
    /// Which envelopes become lines: `logs` (and events), `metrics`, `traces` (timers) or
    /// `all`. Default `logs`.
    pub drain_data: DrainData,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        let o = EncoderOptions::default();
        Self {
            hostname: o.hostname,
            metadata: o.metadata,
            drain_data: o.drain_data,
        }
    }
}

impl hydrant_runtime::Validate for Config {
    type Error = Error;

    /// Checks every field; the first problem is returned naming its dotted path.
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) saying what to change.
    fn validate(&self) -> Result<(), Error> {
        validate_firehose(&self.firehose, &self.subscription_id, "syslog-nozzle")?;
        if self.drains.is_empty() && self.platform.is_none() {
            return Err(Error::from(invalid(
                "drains",
                "is empty; list at least one \"syslog://HOST:PORT\", or add a [platform] \
                 section to serve the drains bound to apps",
            )));
        }
        if let Some(platform) = &self.platform {
            platform.validate()?;
        }
        if let Some(file) = &self.cursor_file {
            hydrant_nozzle_core::validate_cursor_file(file)?;
        }
        for i in 0..self.drains.len() {
            self.drain(i)?;
        }
        if self.encoder.hostname.is_empty() {
            return Err(Error::from(invalid(
                "encoder.hostname",
                "is empty; use a name such as \"hydrant\"",
            )));
        }
        self.queue.validate("queue")?;
        self.retry.validate("retry")?;
        self.breaker.validate("breaker")?;
        if self.write_timeout_ms == 0 {
            return Err(Error::from(invalid(
                "write_timeout_ms",
                "must be at least 1 (ms to connect and write one batch)",
            )));
        }
        validate_self_report(&self.admin_listen, "127.0.0.1:14840", &self.telemetry)?;
        crate::status::validate(self)?;
        self.tls.validate()?;
        if self.loss_notice_interval_ms == 0 {
            return Err(Error::from(invalid(
                "loss_notice_interval_ms",
                "must be at least 1 (ms between loss notices to an app)",
            )));
        }
        Ok(())
    }
}

impl Config {
    /// Drain `index`: its parsed URL and its encoder options (the `[encoder]` defaults with
    /// the URL's `drain-data` and `disable-metadata` applied).
    ///
    /// # Errors
    /// A config error ([`Error::Core`]) naming `drains[index]`, URL masked.
    pub fn drain(&self, index: usize) -> Result<(DrainUrl, EncoderOptions), Error> {
        let field = format!("drains[{index}]");
        let url = self.drains.get(index).map_or("", String::as_str);
        drain_options(&field, url, &self.encoder)
    }
}

/// A drain URL's parts and its encoder options: `defaults` with the URL's `drain-data` and
/// `disable-metadata` applied. `field` names the URL in errors.
///
/// # Errors
/// A config error ([`Error::Core`]) naming `field`, URL masked.
pub fn drain_options(
    field: &str,
    url: &str,
    defaults: &EncoderConfig,
) -> Result<(DrainUrl, EncoderOptions), Error> {
    {
        let parsed = DrainUrl::parse(field, url)?;
        let mut options = EncoderOptions {
            hostname: defaults.hostname.clone(),
            metadata: defaults.metadata,
            drain_data: defaults.drain_data,
        };
        let query = url.split_once('?').map_or("", |(_, q)| q);
        let query = query.split('#').next().unwrap_or("");
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad =
                |what: &str| Error::from(invalid(field, format!("{}: {what}", mask_url(url))));
            match key {
                "drain-data" => {
                    options.drain_data = match value {
                        "logs" => DrainData::Logs,
                        "metrics" => DrainData::Metrics,
                        "traces" => DrainData::Traces,
                        "all" => DrainData::All,
                        _ => return Err(bad("drain-data must be logs, metrics, traces or all")),
                    };
                }
                "disable-metadata" => {
                    options.metadata = match value {
                        "true" => false,
                        "false" => true,
                        _ => return Err(bad("disable-metadata must be true or false")),
                    };
                }
                // Other parameters (credentials of some providers) are the drain's business.
                _ => {}
            }
        }
        Ok((parsed, options))
    }
}

#[cfg(test)]
mod tests {
    use super::Config;
    use crate::DrainData;
    use hydrant_runtime::Validate as _;

    fn parse(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    fn valid() -> Config {
        parse(
            "drains = [\"syslog://127.0.0.1:5514\"]\n[firehose]\nurl = \"http://127.0.0.1:8081\"\n\
             token = \"t\"\n",
        )
    }

    #[test]
    fn defaults_and_a_minimal_file_validate() {
        let c = valid();
        c.validate().unwrap();
        assert_eq!(c.subscription_id, "syslog-nozzle");
        assert_eq!(c.admin_listen, "127.0.0.1:14840");
        assert_eq!(c.encoder.drain_data, DrainData::Logs);
        assert!(
            toml::from_str::<Config>("drain = []").is_err(),
            "unknown field"
        );
    }

    #[test]
    fn errors_name_the_field_and_never_the_secret() {
        let mut c = valid();
        c.drains
            .push("syslog://user:hunter2@logs.example.com".to_owned());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("drains[1]") && !e.contains("hunter2"), "{e}");
        assert!(e.contains("user:****@"), "{e}");

        let mut c = valid();
        c.drains = vec!["syslog://u:hunter2@h:1?drain-data=everything".to_owned()];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("drains[0]") && e.contains("drain-data"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");

        for (text, field) in [
            ("drains = []\n[firehose]\ntoken = \"t\"", "`drains`"),
            ("drains = [\"syslog://h:1\"]", "firehose.token"),
            (
                "drains = [\"syslog://h:1\"]\n[firehose]\ntoken = \"t\"\nurl = \"nope\"",
                "firehose.url",
            ),
            (
                "drains = [\"syslog://h:1\"]\n[firehose]\ntoken = \"t\"\n[queue]\nmax_items = 0",
                "queue.max_items",
            ),
            (
                "drains = [\"syslog://h:1\"]\nadmin_listen = \"x\"\n[firehose]\ntoken = \"t\"",
                "admin_listen",
            ),
        ] {
            let e = parse(text).validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn drain_query_overrides_the_encoder_section() {
        let mut c = valid();
        c.drains = vec![
            "syslog://h:1".to_owned(),
            "syslog://h:2/?drain-data=all&disable-metadata=true".to_owned(),
        ];
        let (url, plain) = c.drain(0).unwrap();
        assert_eq!(url.authority(), "h:1");
        assert!(plain.metadata && plain.drain_data == DrainData::Logs);
        let (url, custom) = c.drain(1).unwrap();
        assert_eq!(url.authority(), "h:2");
        assert!(!custom.metadata && custom.drain_data == DrainData::All);
    }
}
