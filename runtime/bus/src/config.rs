//! The `[bus]` section every role that talks on the control plane embeds in its config.
//!
//! One field picks the backend: `url = "inprocess"` (the micro cloud's default, every role of
//! the process on one hub) or `url = "nats://host:port"` (distributed). Everything else bounds
//! the queues. Invariant: a config that passes [`Config::validate`] connects without panicking
//! and every queue it sizes is bounded.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The default `url`: the process-wide in-process hub.
pub const INPROCESS: &str = "inprocess";

/// Largest value accepted for any buffer size: beyond this a "bounded" queue stops meaning much.
const MAX_BUFFER: usize = 1 << 20;

/// How a role reaches the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Which bus: `"inprocess"` (default; the hub shared by every role in this process),
    /// `"inprocess://NAME"` (a named hub, for tests that must not share), or
    /// `"nats://HOST:PORT"` (a real nats-server; several may be comma-separated).
    pub url: String,
    /// Messages a NATS publisher may hold while the server is slow or away before new
    /// publishes are dropped and counted (`bus.dropped{reason=publish_queue_full}`).
    /// Default 4096. Unused in process, where a publish is delivered on the spot.
    pub publish_buffer: usize,
    /// Messages each subscription holds before new ones are dropped and counted
    /// (`bus.dropped{reason=subscriber_queue_full}`). Default 1024.
    pub subscriber_buffer: usize,
    /// Largest payload accepted, in bytes. Default 1048576 (nats-server's own default
    /// `max_payload`); a NATS server advertising a smaller limit wins.
    pub max_payload: usize,
    /// How long the first NATS connection may take before start-up fails, in milliseconds.
    /// Default 2000.
    pub connect_timeout_ms: u64,
    /// How often the NATS client pings the server to notice a dead connection, in seconds.
    /// Default 20 (gorouter's choice: failover finishes well inside the 120 s route TTL).
    pub ping_interval_secs: u64,
    /// Mutual TLS to `nats-server` (`[bus.tls]`): the CA bundle that signed the server's
    /// certificate, and this role's certificate and key, whose identity the server maps to a
    /// user with subject permissions (`hydrant certs nats-config` writes the server's side).
    /// Default: none (plaintext), which is all the in-process hub needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
}

/// The files of `[bus.tls]`, as `hydrant certs` writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The trust bundle (`ca.pem`): every CA whose server certificate is accepted.
    pub ca_file: PathBuf,
    /// This role's certificate (`<identity>.pem`).
    pub cert_file: PathBuf,
    /// Its private key (`<identity>.key`).
    pub key_file: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            url: INPROCESS.to_owned(),
            publish_buffer: 4096,
            subscriber_buffer: 1024,
            max_payload: 1024 * 1024,
            connect_timeout_ms: 2000,
            ping_interval_secs: 20,
            tls: None,
        }
    }
}

/// The backend a valid `url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// An in-process hub with this name (`default` for plain `inprocess`).
    InProcess(String),
    /// NATS servers, as given.
    Nats(Vec<String>),
}

impl Config {
    /// A config for a named in-process hub: every bus connected with the same name shares it.
    #[must_use]
    pub fn inprocess(name: &str) -> Self {
        Self {
            url: format!("{INPROCESS}://{name}"),
            ..Self::default()
        }
    }

    /// A config for a NATS server at `url` (`nats://host:port`).
    #[must_use]
    pub fn nats(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            ..Self::default()
        }
    }

    /// Checks every field; the message names the field and says what to write instead.
    pub fn validate(&self) -> Result<(), Error> {
        self.target()?;
        for (field, value) in [
            ("publish_buffer", self.publish_buffer),
            ("subscriber_buffer", self.subscriber_buffer),
        ] {
            if value == 0 || value > MAX_BUFFER {
                return Err(Error::Config(format!(
                    "bus.{field} = {value}: must be between 1 and {MAX_BUFFER} messages"
                )));
            }
        }
        if self.max_payload < 1024 || self.max_payload > 64 * 1024 * 1024 {
            return Err(Error::Config(format!(
                "bus.max_payload = {}: must be between 1024 and 67108864 bytes",
                self.max_payload
            )));
        }
        if self.connect_timeout_ms == 0 || self.connect_timeout_ms > 600_000 {
            return Err(Error::Config(format!(
                "bus.connect_timeout_ms = {}: must be between 1 and 600000",
                self.connect_timeout_ms
            )));
        }
        if self.ping_interval_secs == 0 || self.ping_interval_secs > 3600 {
            return Err(Error::Config(format!(
                "bus.ping_interval_secs = {}: must be between 1 and 3600",
                self.ping_interval_secs
            )));
        }
        if let Some(tls) = &self.tls {
            if !matches!(self.target()?, Target::Nats(_)) {
                return Err(Error::Config(
                    "bus.tls is for NATS; the in-process hub needs none: remove [bus.tls] or set \
                     bus.url = \"nats://HOST:PORT\""
                        .to_owned(),
                ));
            }
            for (field, path) in [
                ("ca_file", &tls.ca_file),
                ("cert_file", &tls.cert_file),
                ("key_file", &tls.key_file),
            ] {
                if path.as_os_str().is_empty() {
                    return Err(Error::Config(format!(
                        "bus.tls.{field} is empty: name the file `hydrant certs` wrote \
                         (e.g. ca.pem, executor.pem, executor.key)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The configured connect timeout.
    #[must_use]
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The url with any `user:password@` replaced by `***@`, fit for logs and error messages.
    #[must_use]
    pub fn redacted_url(&self) -> String {
        self.url
            .trim()
            .split(',')
            .map(|server| {
                let server = server.trim();
                match (server.split_once("://"), server.rfind('@')) {
                    (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &server[at..]),
                    _ => server.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub(crate) fn target(&self) -> Result<Target, Error> {
        let url = self.url.trim();
        if url == INPROCESS {
            return Ok(Target::InProcess("default".to_owned()));
        }
        if let Some(name) = url.strip_prefix("inprocess://") {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::Config(format!(
                    "bus.url = {:?}: an in-process hub needs a name without spaces, \
                     e.g. \"inprocess://test-1\"",
                    self.url
                )));
            }
            return Ok(Target::InProcess(name.to_owned()));
        }
        let mut servers = Vec::new();
        for server in url.split(',').map(str::trim) {
            let Some(rest) = server.strip_prefix("nats://") else {
                return Err(Error::Config(format!(
                    "bus.url = {:?}: use \"inprocess\" or \"nats://HOST:PORT\" \
                     (TLS and websocket URLs are not supported)",
                    self.url
                )));
            };
            let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            let hostport = hostport.trim_end_matches('/');
            let port_ok = match hostport.rsplit_once(':') {
                Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
                None => !hostport.is_empty(),
            };
            if !port_ok || hostport.contains('/') {
                return Err(Error::Config(format!(
                    "bus.url = {:?}: {server:?} is not nats://HOST:PORT \
                     (e.g. \"nats://127.0.0.1:4222\")",
                    self.url
                )));
            }
            servers.push(server.to_owned());
        }
        Ok(Target::Nats(servers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_shared_inprocess_hub_and_valid() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(
            config.target().unwrap(),
            Target::InProcess("default".into())
        );
    }

    #[test]
    fn parses_from_toml_with_defaults_and_rejects_unknown_fields() {
        let config: Config = toml::from_str("url = \"nats://10.0.0.1:4222\"").unwrap();
        assert_eq!(config.subscriber_buffer, 1024);
        assert_eq!(
            config.target().unwrap(),
            Target::Nats(vec!["nats://10.0.0.1:4222".into()])
        );
        let err = toml::from_str::<Config>("urls = \"nats://x:1\"").unwrap_err();
        assert!(err.to_string().contains("urls"), "{err}");
    }

    #[test]
    fn accepts_named_hubs_and_server_lists() {
        assert_eq!(
            Config::inprocess("t1").target().unwrap(),
            Target::InProcess("t1".into())
        );
        let config = Config::nats("nats://a:4222, nats://b:4223");
        assert_eq!(
            config.target().unwrap(),
            Target::Nats(vec!["nats://a:4222".into(), "nats://b:4223".into()])
        );
        Config::nats("nats://localhost").validate().unwrap();
        Config::nats("nats://user:pw@localhost:4222")
            .validate()
            .unwrap();
    }

    #[test]
    fn tls_files_parse_and_are_checked() {
        let config: Config = toml::from_str(
            "url = \"nats://127.0.0.1:4222\"\n[tls]\nca_file = \"ca.pem\"\n\
             cert_file = \"router.pem\"\nkey_file = \"router.key\"\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.tls.as_ref().map(|t| t.cert_file.clone()),
            Some("router.pem".into())
        );
        let err = toml::from_str::<Config>(
            "url = \"nats://x:1\"\n[tls]\nca_file = \"a\"\ncert_file = \"b\"\n\
             key_file = \"c\"\nkey = \"d\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("key"), "{err}");
        let inprocess = Config {
            tls: config.tls.clone(),
            ..Config::default()
        };
        let err = inprocess.validate().unwrap_err().to_string();
        assert!(err.contains("bus.tls is for NATS"), "{err}");
        let empty = Config {
            tls: config.tls.clone().map(|t| TlsFiles {
                key_file: "".into(),
                ..t
            }),
            ..config
        };
        let err = empty.validate().unwrap_err().to_string();
        assert!(err.contains("bus.tls.key_file"), "{err}");
    }

    #[test]
    fn credentials_never_reach_logs() {
        let config = Config::nats("nats://user:s3cret@10.0.0.1:4222,nats://10.0.0.2:4222");
        assert_eq!(
            config.redacted_url(),
            "nats://***@10.0.0.1:4222,nats://10.0.0.2:4222"
        );
        assert_eq!(Config::default().redacted_url(), "inprocess");
    }

    #[test]
    fn rejections_name_the_field_and_the_fix() {
        for url in [
            "",
            "tcp://x:1",
            "nats://",
            "nats://host:notaport",
            "nats://host:0",
            "inprocess://",
            "tls://x:4222",
        ] {
            let err = Config::nats(url).validate().unwrap_err().to_string();
            assert!(err.contains("bus.url"), "{url}: {err}");
        }
        let config = Config {
            subscriber_buffer: 0,
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("bus.subscriber_buffer = 0"), "{err}");
        let config = Config {
            publish_buffer: usize::MAX,
            ..Config::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("publish_buffer")
        );
        let config = Config {
            ping_interval_secs: 0,
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }
}
