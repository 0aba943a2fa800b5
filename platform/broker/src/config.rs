//! The broker's config (`hydrant run broker --config FILE`, or the micro cloud's row): where
//! the OSBAPI listens and with which basic-auth credentials, where state and service-node data
//! live, which address and port pool the service nodes use, and who they run as.
//!
//! Invariant: a config that passes [`Config::validate`] has exactly one password source, a
//! non-empty port pool of at least [`MIN_PORTS`] ports on an IP address, and positive
//! intervals; every rejection names the field and says what to write instead.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use hydrant_emitter::TelemetryConfig;
use hydrant_runtime::invalid;
use serde::Deserialize;

use crate::Error;

/// The fewest ports a pool may hold: every shared node takes up to four (RabbitMQ: AMQP,
/// management, Erlang distribution, epmd), and each Redis instance one.
pub const MIN_PORTS: u16 = 8;

/// Broker settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the OSBAPI listens. Default `127.0.0.1:9030`.
    pub listen: String,
    /// Where `/healthz`, `/metrics` and `/v1/nodes` listen. Default `127.0.0.1:14838`.
    pub admin_listen: String,
    /// The basic-auth user a platform presents. Default `broker`.
    pub username: String,
    /// The basic-auth password inline. Set this or `password_file`.
    pub password: Option<String>,
    /// A file holding the basic-auth password (read once at start).
    pub password_file: Option<PathBuf>,
    /// Where the broker keeps its SQLite state (`broker.db`) and every service node's data
    /// (`nodes/<offering>[-<instance>]`). Default `broker-data`.
    pub data_dir: PathBuf,
    /// The address service nodes listen on. Default `127.0.0.1` (loopback only).
    pub bind_address: String,
    /// The host name put into credentials; default: `bind_address`.
    pub advertise_host: Option<String>,
    /// The ports service nodes take from, inclusive. Default 42000–42999.
    pub ports: PortRange,
    /// When the broker runs as root, the unprivileged user service nodes run as (their data
    /// directories are given to it). Default `nobody`. Ignored when not root: nodes then run
    /// as the broker's own user.
    pub run_as: String,
    /// `"container"` (default) or `"none"`: see [`Isolation`].
    pub isolation: Isolation,
    /// Containers (with `isolation = "container"`): runtime, cgroup parent (default
    /// `hydrant-broker/<hash of data_dir>`), state directory (default `<data_dir>/containers`),
    /// pids limit (default 2048) and `/tmp` size (default 64 MiB) of every node.
    pub containers: hydrant_container::Config,
    /// With `isolation = "none"` and root, put every service node in its own memory cgroup (v1
    /// or v2), limited to its plan's memory (Redis) or `shared_node_memory_mb` (shared nodes).
    /// Containers always have their limits. Default true.
    pub memory_cgroups: bool,
    /// The memory cap of a shared node (MariaDB, PostgreSQL, RabbitMQ), MiB. Default 1024.
    pub shared_node_memory_mb: u64,
    /// How long a service node may take to accept connections, seconds. Default 120
    /// (RabbitMQ's Erlang start takes several seconds on a busy machine).
    pub start_timeout_secs: u64,
    /// How often every instance's gauges are emitted, seconds. Default 10.
    pub metrics_interval_secs: u64,
    /// How often every MariaDB and PostgreSQL instance's database is measured against its
    /// plan's storage (writes revoked while over), seconds. Default 10.
    pub quota_interval_secs: u64,
    /// Offerings to serve, by name; default all four (`mysql`, `postgresql`, `redis`,
    /// `rabbitmq`). An offering whose binaries are missing is left out with a log line.
    pub offerings: Vec<String>,
    /// Where instance logs and gauges and the broker's own metrics go (the local agent).
    pub telemetry: TelemetryConfig,
}

/// How service nodes are isolated.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Each node in a container of its own (runc): the host's network, its own mount, pid,
    /// ipc and uts namespaces, a read-only root with only its data directory writable,
    /// `run_as`, no capabilities, the default seccomp filter, memory, pids and CPU limits.
    /// Needs root and `runc`.
    #[default]
    Container,
    /// Nodes are child processes: as `run_as` in a memory cgroup when the broker is root,
    /// else as the broker's own user, unlimited.
    None,
}

/// An inclusive range of TCP ports.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port (inclusive).
    pub last: u16,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9030".to_owned(),
            admin_listen: "127.0.0.1:14838".to_owned(),
            username: "broker".to_owned(),
            password: None,
            password_file: None,
            data_dir: PathBuf::from("broker-data"),
            bind_address: "127.0.0.1".to_owned(),
            advertise_host: None,
            ports: PortRange {
                first: 42_000,
                last: 42_999,
            },
            run_as: "nobody".to_owned(),
            isolation: Isolation::default(),
            containers: hydrant_container::Config::default(),
            memory_cgroups: true,
            shared_node_memory_mb: 1024,
            start_timeout_secs: 120,
            metrics_interval_secs: 10,
            quota_interval_secs: 10,
            offerings: crate::catalog::OFFERINGS
                .iter()
                .map(|o| o.name.to_owned())
                .collect(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Config {
    /// The host credentials name.
    #[must_use]
    pub fn host(&self) -> &str {
        self.advertise_host.as_deref().unwrap_or(&self.bind_address)
    }

    /// The basic-auth password, from `password` or `password_file`.
    ///
    /// # Errors
    /// [`Error::Config`] when the file cannot be read or is empty.
    pub fn read_password(&self) -> Result<String, Error> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        let Some(path) = &self.password_file else {
            return Err(invalid("password", "is not set; set password or password_file").into());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                "password_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(invalid("password_file", format!("{} is empty", path.display())).into());
        }
        Ok(text)
    }
}

impl hydrant_runtime::Validate for Config {
    type Error = Error;

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad field, or the telemetry's own error.
    fn validate(&self) -> Result<(), Error> {
        for (field, value) in [
            ("listen", &self.listen),
            ("admin_listen", &self.admin_listen),
        ] {
            value.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    field,
                    format!("{value:?} is not an address; write it as \"127.0.0.1:9030\""),
                )
            })?;
        }
        if self.username.is_empty() || self.username.contains(':') {
            return Err(invalid("username", "must be non-empty and hold no ':'").into());
        }
        match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => {
                return Err(invalid("password", "set password or password_file, not both").into());
            }
            (None, None) => {
                return Err(invalid(
                    "password",
                    "is not set; set password (or password_file) to the basic-auth \
                     password platforms register the broker with",
                )
                .into());
            }
            (Some(p), None) if p.is_empty() => {
                return Err(invalid("password", "is empty").into());
            }
            _ => {}
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "is empty; write a directory path").into());
        }
        self.bind_address.parse::<IpAddr>().map_err(|_| {
            invalid(
                "bind_address",
                format!(
                    "{:?} is not an IP address; write e.g. \"127.0.0.1\"",
                    self.bind_address
                ),
            )
        })?;
        if self.ports.first == 0 || self.ports.last < self.ports.first {
            return Err(invalid(
                "ports",
                format!(
                    "({}-{}) must be first >= 1 and last >= first",
                    self.ports.first, self.ports.last
                ),
            )
            .into());
        }
        if self.ports.last - self.ports.first + 1 < MIN_PORTS {
            return Err(invalid(
                "ports",
                format!("must hold at least {MIN_PORTS} ports (one per Redis instance, four per shared node)"),
            )
            .into());
        }
        if self.run_as.is_empty() {
            return Err(invalid(
                "run_as",
                "is empty; write an unprivileged user, e.g. \"nobody\"",
            )
            .into());
        }
        for (field, value, max) in [
            ("start_timeout_secs", self.start_timeout_secs, 3600),
            ("metrics_interval_secs", self.metrics_interval_secs, 3600),
            ("quota_interval_secs", self.quota_interval_secs, 3600),
            ("shared_node_memory_mb", self.shared_node_memory_mb, 1 << 20),
        ] {
            if value == 0 || value > max {
                return Err(
                    invalid(field, format!("({value}) must be between 1 and {max}")).into(),
                );
            }
        }
        for name in &self.offerings {
            if crate::catalog::offering(name).is_none() {
                return Err(invalid(
                    "offerings",
                    format!("{name:?} is not an offering; write any of mysql, postgresql, redis, rabbitmq"),
                )
                .into());
            }
        }
        if self.isolation == Isolation::Container {
            self.containers.validate().map_err(|e| {
                invalid(
                    "containers",
                    format!("{e}; or set isolation = \"none\" to run nodes uncontained"),
                )
            })?;
        }
        self.telemetry.validate()?;
        Ok(())
    }
}

impl Config {
    /// The container settings with their defaults filled in: a cgroup parent and a state
    /// directory of this broker's own (named after its data directory, so two brokers on one
    /// host never clean up each other's nodes).
    #[must_use]
    pub fn container_config(&self) -> hydrant_container::Config {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(self.data_dir.as_os_str().as_encoded_bytes());
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        self.containers.clone().with_defaults(
            &format!("hydrant-broker/{hex}"),
            self.data_dir.join("containers"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrant_runtime::Validate as _;

    fn valid() -> Config {
        Config {
            password: Some("p".to_owned()),
            ..Config::default()
        }
    }

    #[test]
    fn defaults_with_a_password_validate_and_unknown_fields_are_refused() {
        valid().validate().unwrap();
        let c: Config =
            toml::from_str("password = \"x\"\n[ports]\nfirst = 50000\nlast = 50100\n").unwrap();
        assert_eq!(c.ports.first, 50_000);
        assert_eq!(c.metrics_interval_secs, 10);
        assert!(toml::from_str::<Config>("pasword = \"x\"").is_err());
    }

    #[test]
    fn validate_names_the_field() {
        let cases: Vec<(Config, &str)> = vec![
            (Config::default(), "password"),
            (
                Config {
                    listen: "nowhere".to_owned(),
                    ..valid()
                },
                "listen",
            ),
            (
                Config {
                    bind_address: "localhost".to_owned(),
                    ..valid()
                },
                "bind_address",
            ),
            (
                Config {
                    ports: PortRange {
                        first: 5000,
                        last: 5003,
                    },
                    ..valid()
                },
                "ports",
            ),
            (
                Config {
                    offerings: vec!["mongodb".to_owned()],
                    ..valid()
                },
                "offerings",
            ),
            (
                Config {
                    metrics_interval_secs: 0,
                    ..valid()
                },
                "metrics_interval_secs",
            ),
        ];
        for (config, field) in cases {
            let msg = config.validate().unwrap_err().to_string();
            assert!(msg.contains(&format!(": {field}: ")), "{field}: {msg}");
        }
    }
}
