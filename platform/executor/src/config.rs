//! The executor's config (`hydrant run executor --config FILE`, or the `[executor]` part of the
//! micro cloud): who it is on the bus, what it may run, and how patient it is with apps.
//!
//! Invariant: a config that passes [`Config::validate`] names a usable executor id (one bus
//! subject token), a non-empty port range and non-zero intervals; every rejection names the
//! field and says what to write instead.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hydrant_container::net::NetConfig;
use hydrant_emitter::TelemetryConfig;
use serde::Deserialize;

use crate::Error;

/// How instances are isolated from the platform and from each other.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Each instance in its own container (runc): its own user, namespaces, cgroup limits and
    /// network. Needs root, `runc`, `iproute2` and `nftables`.
    #[default]
    Container,
    /// Instances run as the platform's own user beside its data: only for hosts that cannot
    /// make containers, and never silently (the executor warns at start and on every start).
    None,
}

/// Executor settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This executor's id: one bus subject token (letters, digits, `-`, `_`). Start and stop
    /// requests arrive on `executor.start.<id>` / `executor.stop.<id>`. Default `"0"`.
    pub executor_id: String,
    /// The address routers should send traffic to (the `host` of route registrations and
    /// `CF_INSTANCE_IP`). Default `"127.0.0.1"`. With containers and an IPv4 address other
    /// than loopback, each instance's app port is published on it at a port from
    /// `port_range` (routes and health checks use `advertise_host:port`, so routers on other
    /// hosts reach it); on loopback, routes name the container's own bridge address, which only
    /// this host reaches.
    pub advertise_host: String,
    /// Where droplets are cached (`droplets/`) and instances unpacked (`instances/`). Anything
    /// left in `instances/` by an earlier run is removed at start. Default `"executor-data"`.
    pub data_dir: PathBuf,
    /// Memory the executor may hand out to instances, MiB. Default 8192.
    pub memory_mb: u64,
    /// Instances the executor runs at most (the cell's container slots). Default 256.
    pub max_instances: u32,
    /// Disk the executor may hand out to instances, MiB (each start reserves its `disk_mb`).
    /// Default 65536.
    pub disk_mb: u64,
    /// The cell's availability zone: placement spreads an app's instances over zones first.
    /// One bus-subject-safe token. Default `"z1"`.
    pub zone: String,
    /// How often the cell advertises its presence and free capacity on
    /// `executor.presence.<executor_id>` (also at once on every change), seconds. Default 5
    /// (Diego's `lock_retry_interval`, the DEA's advertise interval).
    pub presence_interval_secs: u64,
    /// How long the presence lives without a refresh: once it lapses, the cloud controller
    /// declares the cell lost and places its instances elsewhere, seconds. At least twice
    /// `presence_interval_secs`. Default 15 (Diego's presence TTL).
    pub presence_ttl_secs: u64,
    /// How long an evacuation (SIGTERM, or `hydrant drain-cell`) keeps instances serving while
    /// their replacements start elsewhere; past it the rest are stopped anyway, seconds.
    /// Default 600 (Diego's `evacuation_timeout_in_seconds`).
    pub evacuation_timeout_secs: u64,
    /// SIGTERM evacuates the cell first (when another healthy cell advertises) instead of
    /// stopping its instances at once. Default true.
    pub evacuate_on_shutdown: bool,
    /// Obey `executor.kill.<executor_id>` (`hydrant debug kill-cell`): go silent and kill every
    /// instance at once, as a lost host would. Only for the micro cloud. Default false.
    pub debug_kill: bool,
    /// Host ports for instances, inclusive, one per instance: unisolated, the app's `PORT`;
    /// in a container (which listens on 8080), the port published on `advertise_host` for it
    /// (Diego's 61000+). No container may connect to a port in this range on any host, so
    /// instances reach each other only through the router. A cell whose range is used up
    /// refuses new instances, saying so. Executors sharing one host and `advertise_host` need
    /// ranges apart: a published port holds no socket another executor would see. Default
    /// `[61000, 61999]`.
    pub port_range: [u16; 2],
    /// How long a stopping instance gets between SIGTERM and SIGKILL, seconds, when its start
    /// message names no grace of its own (apps set theirs with `push --stop-timeout`); also the
    /// longest any instance gets when the executor itself shuts down. Default 10 (Cloud
    /// Foundry's graceful shutdown interval).
    pub stop_timeout_secs: u64,
    /// How often container metrics (cpu, memory, disk, quotas) are emitted, seconds. Default 5.
    pub metrics_interval_secs: u64,
    /// How long an instance may take to pass its first health check when its start request
    /// names no timeout, seconds. Default 60 (Cloud Foundry's default).
    pub startup_timeout_secs: u64,
    /// How often a starting instance is probed, milliseconds. Default 500 (the DEA's pace).
    pub startup_check_interval_ms: u64,
    /// How often a running instance is probed, seconds. Default 30 (Diego's liveness pace).
    pub liveness_check_interval_secs: u64,
    /// How long one probe may take, milliseconds. Default 1000 (Diego's default).
    pub probe_timeout_ms: u64,
    /// How often each instance's memory is checked against its quota, milliseconds. Default 1000.
    pub memory_check_interval_ms: u64,
    /// How often each instance's directory is measured for the `disk` metric, seconds: walking
    /// a tree is not free, so it is rate-limited. Default 30.
    pub disk_check_interval_secs: u64,
    /// How often a heartbeat is published (also at once on every state change), seconds.
    /// Default 10.
    pub heartbeat_interval_secs: u64,
    /// How often routes of running instances are re-registered (also at once on RUNNING and on
    /// `router.start`), seconds. Default 20 (gorouter's register interval).
    pub register_interval_secs: u64,
    /// How long a crashed or stopped instance stays in heartbeats before it is forgotten,
    /// seconds. Default 60 (six heartbeats: the health manager cannot miss it).
    pub retention_secs: u64,
    /// Size of the droplet cache, MiB; past it the least recently used droplets not being
    /// unpacked are evicted. Default 2048.
    pub droplet_cache_mb: u64,
    /// Largest droplet (compressed) accepted, MiB. Default 1024.
    pub max_droplet_mb: u64,
    /// How long a droplet download may take, seconds. Default 300.
    pub download_timeout_secs: u64,
    /// This cell's certificate (the `executor` identity), key and trust bundle for droplet
    /// downloads: with it, `https://` droplet URLs (the cloud controller's internal listener)
    /// are fetched over mutual TLS, and only from a server proving the `cloudcontroller`
    /// identity. Default unset: droplets over plain `http://`.
    pub tls: Option<hydrant_tls::TlsFiles>,
    /// The message bus.
    pub bus: hydrant_bus::Config,
    /// Where app logs, container metrics and the executor's own metrics go (the local agent).
    /// Without an agent, app output is read and counted as dropped (`no_agent`).
    pub telemetry: TelemetryConfig,
    /// Where `/healthz` and `/metrics` listen. Default `127.0.0.1:14830`.
    pub admin_listen: String,
    /// `"container"` (default) or `"none"`: see [`Isolation`].
    pub isolation: Isolation,
    /// Containers (with `isolation = "container"`): runtime, cgroup parent (default
    /// `hydrant/<executor_id>`), state dir (default `<data_dir>/containers`), pids and `/tmp`
    /// limits.
    pub containers: hydrant_container::Config,
    /// The container network (with `isolation = "container"`): bridge, subnet and egress
    /// rules. Executors sharing a host need different bridges and subnets.
    pub network: NetConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            executor_id: "0".to_owned(),
            advertise_host: "127.0.0.1".to_owned(),
            data_dir: PathBuf::from("executor-data"),
            memory_mb: 8192,
            max_instances: 256,
            disk_mb: 65536,
            zone: "z1".to_owned(),
            presence_interval_secs: 5,
            presence_ttl_secs: 15,
            evacuation_timeout_secs: 600,
            evacuate_on_shutdown: true,
            debug_kill: false,
            port_range: [61000, 61999],
            stop_timeout_secs: 10,
            metrics_interval_secs: 5,
            startup_timeout_secs: 60,
            startup_check_interval_ms: 500,
            liveness_check_interval_secs: 30,
            probe_timeout_ms: 1000,
            memory_check_interval_ms: 1000,
            disk_check_interval_secs: 30,
            heartbeat_interval_secs: 10,
            register_interval_secs: 20,
            retention_secs: 60,
            droplet_cache_mb: 2048,
            max_droplet_mb: 1024,
            download_timeout_secs: 300,
            tls: None,
            bus: hydrant_bus::Config::default(),
            telemetry: TelemetryConfig::default(),
            admin_listen: "127.0.0.1:14830".to_owned(),
            isolation: Isolation::default(),
            containers: hydrant_container::Config::default(),
            network: NetConfig::default(),
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Config {
        field,
        message: message.into(),
    }
}

/// `true` when `id` can be one bus subject token and a file name.
pub(crate) fn is_token(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl hydrant_runtime::Validate for Config {
    type Error = Error;

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad field, [`Error::Telemetry`] or [`Error::Bus`].
    fn validate(&self) -> Result<(), Error> {
        if !is_token(&self.executor_id) {
            return Err(invalid(
                "executor_id",
                format!(
                    "{:?} must be 1-128 letters, digits, '-' or '_' (it becomes a bus subject \
                     token), e.g. \"cell-1\"",
                    self.executor_id
                ),
            ));
        }
        if self.advertise_host.trim().is_empty() || self.advertise_host.contains(' ') {
            return Err(invalid(
                "advertise_host",
                "write the address routers reach this host on, e.g. \"10.0.0.5\"",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "data_dir",
                "write a directory the executor may own, e.g. \"/var/lib/hydrant/executor\"",
            ));
        }
        if self.memory_mb == 0 {
            return Err(invalid("memory_mb", "must be at least 1 (MiB)"));
        }
        if self.max_instances == 0 {
            return Err(invalid("max_instances", "must be at least 1"));
        }
        if self.disk_mb == 0 {
            return Err(invalid("disk_mb", "must be at least 1 (MiB)"));
        }
        if !is_token(&self.zone) {
            return Err(invalid(
                "zone",
                format!(
                    "{:?} must be 1-128 letters, digits, '-' or '_', e.g. \"z1\"",
                    self.zone
                ),
            ));
        }
        if self.presence_ttl_secs < self.presence_interval_secs.saturating_mul(2) {
            return Err(invalid(
                "presence_ttl_secs",
                format!(
                    "{} must be at least twice presence_interval_secs ({}), or one lost \
                     presence would declare a healthy cell lost; e.g. 15 with 5",
                    self.presence_ttl_secs, self.presence_interval_secs
                ),
            ));
        }
        let [first, last] = self.port_range;
        if first == 0 || first > last {
            return Err(invalid(
                "port_range",
                format!(
                    "[{first}, {last}] is empty or starts at 0; write [first, last], e.g. \
                     [61000, 61999]"
                ),
            ));
        }
        for (field, value) in [
            ("stop_timeout_secs", self.stop_timeout_secs),
            ("metrics_interval_secs", self.metrics_interval_secs),
            ("startup_timeout_secs", self.startup_timeout_secs),
            ("startup_check_interval_ms", self.startup_check_interval_ms),
            (
                "liveness_check_interval_secs",
                self.liveness_check_interval_secs,
            ),
            ("probe_timeout_ms", self.probe_timeout_ms),
            ("memory_check_interval_ms", self.memory_check_interval_ms),
            ("disk_check_interval_secs", self.disk_check_interval_secs),
            ("heartbeat_interval_secs", self.heartbeat_interval_secs),
            ("register_interval_secs", self.register_interval_secs),
            ("presence_interval_secs", self.presence_interval_secs),
            ("presence_ttl_secs", self.presence_ttl_secs),
            ("evacuation_timeout_secs", self.evacuation_timeout_secs),
            ("droplet_cache_mb", self.droplet_cache_mb),
            ("max_droplet_mb", self.max_droplet_mb),
            ("download_timeout_secs", self.download_timeout_secs),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be greater than 0"));
            }
            if value > 86_400_000 {
                return Err(invalid(field, format!("{value} is implausibly large")));
            }
        }
        self.admin_listen.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "admin_listen",
                format!(
                    "{:?} is not an address; write it as \"127.0.0.1:14830\"",
                    self.admin_listen
                ),
            )
        })?;
        self.bus.validate()?;
        if let Some(tls) = &self.tls {
            tls.validate().map_err(|e| {
                hydrant_runtime::Error::from(hydrant_runtime::invalid("tls", e.to_string()))
            })?;
        }
        self.telemetry.validate()?;
        if self.isolation == Isolation::Container {
            let at = |e: hydrant_container::Error| invalid("containers", e.to_string());
            self.containers.validate().map_err(at)?;
            self.network
                .validate()
                .map_err(|e| invalid("network", e.to_string()))?;
        }
        Ok(())
    }
}

impl Config {
    /// The container settings with the executor's defaults filled in.
    pub(crate) fn container_config(&self) -> hydrant_container::Config {
        self.containers.clone().with_defaults(
            &format!("hydrant/{}", self.executor_id),
            self.data_dir.join("containers"),
        )
    }

    pub(crate) fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.stop_timeout_secs)
    }

    /// The container network as the executor sets it up: `network` with `port_range` as the
    /// ports it may publish and that no container may open (what `hydrant security-groups`
    /// shows, too).
    pub fn network_config(&self) -> NetConfig {
        NetConfig {
            mapped_ports: Some(self.port_range),
            ..self.network.clone()
        }
    }

    /// The address instance ports are published on: `advertise_host` when it is an IPv4
    /// address other hosts can reach (not loopback, not unspecified); `None` keeps instances
    /// at their bridge addresses, which only this host reaches (the micro cloud on loopback).
    pub(crate) fn published_host(&self) -> Option<std::net::Ipv4Addr> {
        self.advertise_host
            .parse::<std::net::Ipv4Addr>()
            .ok()
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrant_runtime::Validate as _;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn ports_are_published_only_on_an_address_other_hosts_reach() {
        let on = |host: &str| Config {
            advertise_host: host.into(),
            ..Config::default()
        };
        assert_eq!(on("127.0.0.1").published_host(), None);
        assert_eq!(on("0.0.0.0").published_host(), None);
        assert_eq!(on("cell-1.internal").published_host(), None);
        assert_eq!(
            on("10.0.0.5").published_host(),
            Some(std::net::Ipv4Addr::new(10, 0, 0, 5))
        );
        // The network the executor sets up shuts its port range to containers.
        let config = Config {
            port_range: [7000, 7010],
            ..on("10.0.0.5")
        };
        let network = config.network_config();
        assert_eq!(network.mapped_ports, Some([7000, 7010]));
        assert_eq!(network.bridge, config.network.bridge);
        assert!(
            network
                .effective_rules()
                .iter()
                .any(|r| r.ports.as_deref() == Some("7000-7010"))
        );
    }

    #[test]
    fn toml_with_unknown_field_is_rejected() {
        let err = toml::from_str::<Config>("executor_id = \"a\"\nmemory = 5\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let ok: Config = toml::from_str(
            "executor_id = \"cell-1\"\nport_range = [7000, 7010]\n[bus]\nurl = \"inprocess://t\"\n",
        )
        .unwrap();
        assert_eq!(ok.port_range, [7000, 7010]);
        ok.validate().unwrap();
    }

    #[test]
    fn isolation_is_containers_unless_said_otherwise() {
        assert_eq!(Config::default().isolation, Isolation::Container);
        let none: Config = toml::from_str("isolation = \"none\"\n").unwrap();
        assert_eq!(none.isolation, Isolation::None);
        let err = toml::from_str::<Config>("isolation = \"chroot\"\n").unwrap_err();
        assert!(err.to_string().contains("container"), "{err}");
        let custom: Config = toml::from_str(
            "executor_id = \"c1\"\n[containers]\npids_limit = 512\n[network]\nbridge = \"hyc1\"\n",
        )
        .unwrap();
        custom.validate().unwrap();
        assert_eq!(custom.container_config().cgroup_parent, "hydrant/c1");
        assert_eq!(custom.containers.pids_limit, 512);
        let bad = Config {
            containers: hydrant_container::Config {
                cgroup_parent: "../escape".into(),
                ..hydrant_container::Config::default()
            },
            ..Config::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("containers")
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    executor_id: "a.b".into(),
                    ..Config::default()
                },
                "executor_id",
            ),
            (
                Config {
                    port_range: [9, 8],
                    ..Config::default()
                },
                "port_range",
            ),
            (
                Config {
                    stop_timeout_secs: 0,
                    ..Config::default()
                },
                "stop_timeout_secs",
            ),
            (
                Config {
                    admin_listen: "nope".into(),
                    ..Config::default()
                },
                "admin_listen",
            ),
            (
                Config {
                    memory_mb: 0,
                    ..Config::default()
                },
                "memory_mb",
            ),
            (
                Config {
                    presence_ttl_secs: 6,
                    ..Config::default()
                },
                "presence_ttl_secs",
            ),
            (
                Config {
                    zone: "zone a".into(),
                    ..Config::default()
                },
                "zone",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }
}
