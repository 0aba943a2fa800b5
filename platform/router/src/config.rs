//! The router's config (`hydrant run router --config FILE`, or the router part of the micro
//! cloud), with gorouter's defaults: 120 s route TTL, 30 s pruning, 3 attempts, 30 s ejection
//! of a failed instance, 5 s dial timeout, 60 s endpoint timeout.
//!
//! Invariant: a config that passes [`Config::validate`] cannot make the router allocate without
//! bound or wait forever; every rejection names the field and says what to write instead.

use std::net::SocketAddr;
use std::time::Duration;

use hydrant_emitter::TelemetryConfig;
use hydrant_runtime::invalid;
use serde::Deserialize;

use crate::Error;

/// How a route picks one of its instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancing {
    /// Take the instances in turn (gorouter's default).
    #[default]
    RoundRobin,
    /// Take the instance with the fewest requests in flight; ties go to a random one.
    LeastConnection,
}

impl LoadBalancing {
    /// Reads gorouter's spelling (`round-robin`, `least-connection`); anything else is `None`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            t if t.eq_ignore_ascii_case("round-robin") => Some(Self::RoundRobin),
            t if t.eq_ignore_ascii_case("least-connection") => Some(Self::LeastConnection),
            _ => None,
        }
    }
}

/// A route written in the config file rather than registered over the bus. It never expires.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StaticRoute {
    /// The route, `host` or `host/path` (e.g. `bench.apps.localhost`).
    pub uri: String,
    /// The instances, each `IP:PORT`. An empty list makes a route that answers 503.
    pub backends: Vec<String>,
    /// The app guid the route belongs to: its requests then emit a Timer envelope and an `RTR`
    /// access-log line into that app's stream. Unset: metrics only.
    pub app_id: Option<String>,
    /// Overrides [`Config::load_balancing`] for this route.
    pub load_balancing: Option<LoadBalancing>,
}

/// Router settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where client HTTP is served. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Where `/healthz` and `/metrics` are served. Default `127.0.0.1:8085`.
    pub admin_listen: String,
    /// Which router this is: the `instance_id` of its own metrics and the `RTR/<id>` of its
    /// access-log lines. Default `"0"`.
    pub router_id: String,
    /// The default balancing for every route (a registration's `options.loadbalancing`
    /// overrides it). Default `round-robin`.
    pub load_balancing: LoadBalancing,
    /// Routes that come from this file instead of the bus (benchmarks, tests, fixed backends).
    pub routes: Vec<StaticRoute>,
    /// How long a backend connection may take to open before the attempt counts as failed and
    /// another instance is tried. Default 5000 ms (gorouter's `endpoint_dial_timeout`).
    pub connect_timeout_ms: u64,
    /// How long a backend may take to send its response headers once it has the request.
    /// Default 60000 ms (gorouter's `endpoint_timeout`).
    pub request_timeout_ms: u64,
    /// At most this many instances are tried per request, never the same one twice; retries
    /// happen only when no request byte reached the app. Default 3.
    pub max_attempts: u32,
    /// An instance that could not be reached is skipped for this long (unless every instance of
    /// the route is skipped: then they are all tried anyway). Default 30000 ms.
    pub retry_after_failure_ms: u64,
    /// A registered route lives this long after its last registration (a registration's
    /// `stale_threshold_in_seconds` may ask for less, never more). Default 120 s.
    pub prune_threshold_secs: u64,
    /// How often expired registrations are removed. Default 30000 ms.
    pub prune_interval_ms: u64,
    /// After its last instance is gone, a route answers 503 (`no_endpoints`) rather than 404
    /// for this long. Default 120 s.
    pub empty_route_timeout_secs: u64,
    /// Idle keep-alive connections kept per backend instance, over all workers (each worker
    /// keeps its share, rounded up). Default 100.
    pub max_idle_connections_per_backend: usize,
    /// Threads serving client connections, each with its own event loop and its own backend
    /// connections, so a request and the backend connection it uses never change threads.
    /// 0 means one per CPU core the process may use. Default 0.
    pub workers: usize,
    /// Client connections served at once, WebSocket and other upgraded connections included
    /// for as long as they are open; past it a new connection is answered 503 and closed
    /// (`listener_connections_refused_total{listener="http",reason="max_connections"}`).
    /// Default 10000.
    pub max_client_connections: usize,
    /// Client connections one address may hold at once, so one client cannot take every slot
    /// (`reason="max_connections_per_address"`); 0 turns it off (a router behind a load
    /// balancer sees one address); above `max_client_connections` it has no effect. Default
    /// 1000.
    pub max_connections_per_address: usize,
    /// A client connection that sends no complete request head for this long (after
    /// connecting, or between requests) is closed
    /// (`listener_connections_closed_total{reason="header_timeout"}`). Default 30 s.
    pub header_read_timeout_secs: u64,
    /// A client connection, WebSocket included, that moves no byte either way for this long
    /// is closed (`reason="idle_timeout"`). Default 900 s (gorouter's frontend idle timeout).
    pub idle_timeout_secs: u64,
    /// Distinct routes (host + path) the table holds; registrations past it are dropped and
    /// counted (`router.dropped{reason=table_full}`). Default 100000.
    pub max_routes: usize,
    /// Instances one route holds; past it registrations are dropped and counted. Default 1024.
    pub max_instances_per_route: usize,
    /// The control-plane bus (`router.register`, `router.unregister`, `router.greet`,
    /// `router.start`). Default: the process-wide in-process hub.
    pub bus: hydrant_bus::Config,
    /// Where the router's own metrics (and nothing else) go. Per-request Timer and `RTR`
    /// envelopes use the same emitter. Default: not emitted, only served on `/metrics`.
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            admin_listen: "127.0.0.1:8085".to_owned(),
            router_id: "0".to_owned(),
            load_balancing: LoadBalancing::RoundRobin,
            routes: Vec::new(),
            connect_timeout_ms: 5000,
            request_timeout_ms: 60_000,
            max_attempts: 3,
            retry_after_failure_ms: 30_000,
            prune_threshold_secs: 120,
            prune_interval_ms: 30_000,
            empty_route_timeout_secs: 120,
            max_idle_connections_per_backend: 100,
            workers: 0,
            max_client_connections: 10_000,
            max_connections_per_address: 1000,
            header_read_timeout_secs: 30,
            idle_timeout_secs: 900,
            max_routes: 100_000,
            max_instances_per_route: 1024,
            bus: hydrant_bus::Config::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Config {
    /// The client listener's abuse limits, as the runtime's gate takes them.
    #[must_use]
    pub fn limits(&self) -> hydrant_runtime::Limits {
        hydrant_runtime::Limits {
            max_connections: self.max_client_connections,
            max_connections_per_address: self.max_connections_per_address,
            header_read_timeout_ms: self.header_read_timeout_secs.saturating_mul(1000),
            idle_timeout_secs: self.idle_timeout_secs,
        }
    }
}

fn in_range(field: &str, value: u64, min: u64, max: u64, unit: &str) -> Result<(), Error> {
    if value < min || value > max {
        return Err(invalid(
            field,
            format!("{value} is out of range; write a value from {min} to {max} {unit}"),
        )
        .into());
    }
    Ok(())
}

impl hydrant_runtime::Validate for Config {
    type Error = Error;

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad field, [`Error::Telemetry`] or [`Error::Bus`].
    fn validate(&self) -> Result<(), Error> {
        for (field, addr) in [
            ("listen", &self.listen),
            ("admin_listen", &self.admin_listen),
        ] {
            addr.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    field,
                    format!("{addr:?} is not an address; write it as \"127.0.0.1:8080\""),
                )
            })?;
        }
        if self.router_id.is_empty()
            || self.router_id.len() > 64
            || !self
                .router_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "router_id",
                format!(
                    "{:?}: write 1 to 64 letters, digits, '-' or '_' (e.g. \"0\")",
                    self.router_id
                ),
            )
            .into());
        }
        in_range(
            "connect_timeout_ms",
            self.connect_timeout_ms,
            1,
            600_000,
            "ms",
        )?;
        in_range(
            "request_timeout_ms",
            self.request_timeout_ms,
            1,
            3_600_000,
            "ms",
        )?;
        in_range(
            "max_attempts",
            u64::from(self.max_attempts),
            1,
            16,
            "attempts",
        )?;
        in_range(
            "retry_after_failure_ms",
            self.retry_after_failure_ms,
            0,
            3_600_000,
            "ms",
        )?;
        in_range(
            "prune_threshold_secs",
            self.prune_threshold_secs,
            1,
            86_400,
            "s",
        )?;
        in_range(
            "prune_interval_ms",
            self.prune_interval_ms,
            10,
            3_600_000,
            "ms",
        )?;
        in_range(
            "empty_route_timeout_secs",
            self.empty_route_timeout_secs,
            0,
            86_400,
            "s",
        )?;
        in_range(
            "max_idle_connections_per_backend",
            self.max_idle_connections_per_backend as u64,
            0,
            10_000,
            "connections",
        )?;
        in_range(
            "workers",
            self.workers as u64,
            0,
            1024,
            "threads (0: one per core)",
        )?;
        in_range(
            "max_client_connections",
            self.max_client_connections as u64,
            1,
            1_000_000,
            "connections",
        )?;
        in_range(
            "header_read_timeout_secs",
            self.header_read_timeout_secs,
            1,
            3600,
            "s",
        )?;
        in_range(
            "max_connections_per_address",
            self.max_connections_per_address as u64,
            0,
            1_000_000,
            "connections (0: no per-address cap)",
        )?;
        in_range("idle_timeout_secs", self.idle_timeout_secs, 1, 86_400, "s")?;
        in_range(
            "max_routes",
            self.max_routes as u64,
            1,
            10_000_000,
            "routes",
        )?;
        in_range(
            "max_instances_per_route",
            self.max_instances_per_route as u64,
            1,
            100_000,
            "instances",
        )?;
        if self.routes.len() > self.max_routes {
            return Err(invalid(
                "routes",
                format!(
                    "{} static routes exceed max_routes = {}; raise max_routes",
                    self.routes.len(),
                    self.max_routes
                ),
            )
            .into());
        }
        for (i, route) in self.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            if crate::table::RouteKey::parse(&route.uri).is_none() {
                return Err(invalid(
                    format!("{field}.uri"),
                    format!(
                        "{:?} is not a route; write it as \"app.apps.localhost\" or \
                         \"app.apps.localhost/path\"",
                        route.uri
                    ),
                )
                .into());
            }
            if route.backends.len() > self.max_instances_per_route {
                return Err(invalid(
                    format!("{field}.backends"),
                    "more backends than max_instances_per_route; raise it",
                )
                .into());
            }
            for backend in &route.backends {
                if backend.parse::<SocketAddr>().is_err() {
                    return Err(invalid(
                        format!("{field}.backends"),
                        format!("{backend:?} is not IP:PORT; write it as \"127.0.0.1:9000\""),
                    )
                    .into());
                }
            }
            if route.app_id.as_deref().is_some_and(str::is_empty) {
                return Err(invalid(
                    format!("{field}.app_id"),
                    "is empty; remove it or write the app guid",
                )
                .into());
            }
        }
        self.telemetry.validate()?;
        self.bus.validate()?;
        Ok(())
    }
}

impl Config {
    /// How many worker threads serve clients: `workers`, or one per usable core when it is 0.
    #[must_use]
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        }
    }

    /// Idle connections each worker keeps per backend instance.
    pub(crate) fn idle_per_worker(&self) -> usize {
        self.max_idle_connections_per_backend
            .div_ceil(self.worker_count())
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub(crate) fn retry_after_failure(&self) -> Duration {
        Duration::from_millis(self.retry_after_failure_ms)
    }

    pub(crate) fn prune_threshold(&self) -> Duration {
        Duration::from_secs(self.prune_threshold_secs)
    }

    pub(crate) fn prune_interval(&self) -> Duration {
        Duration::from_millis(self.prune_interval_ms)
    }

    pub(crate) fn empty_route_timeout(&self) -> Duration {
        Duration::from_secs(self.empty_route_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use super::*;
    use hydrant_runtime::Validate as _;

    #[test]
    fn defaults_are_gorouters_and_valid() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080");
        assert_eq!(config.max_attempts, 3);
        assert_eq!(config.retry_after_failure(), Duration::from_secs(30));
        assert_eq!(config.prune_threshold(), Duration::from_secs(120));
    }

    #[test]
    fn workers_default_to_one_per_core_and_share_the_idle_limit() {
        let config = Config::default();
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(config.worker_count(), cores);
        let config = Config {
            workers: 3,
            max_idle_connections_per_backend: 100,
            ..Config::default()
        };
        assert_eq!((config.worker_count(), config.idle_per_worker()), (3, 34));
        let config = Config {
            workers: 4,
            max_idle_connections_per_backend: 0,
            ..Config::default()
        };
        assert_eq!(config.idle_per_worker(), 0);
    }

    #[test]
    fn parses_static_routes_from_toml() {
        let config: Config = toml::from_str(
            r#"
            listen = "127.0.0.1:0"
            load_balancing = "least-connection"
            [[routes]]
            uri = "bench.apps.localhost"
            backends = ["127.0.0.1:9000", "127.0.0.1:9001"]
            app_id = "bench"
            load_balancing = "round-robin"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.load_balancing, LoadBalancing::LeastConnection);
        assert_eq!(config.routes[0].backends.len(), 2);
        assert_eq!(
            config.routes[0].load_balancing,
            Some(LoadBalancing::RoundRobin)
        );
    }

    #[test]
    fn rejects_unknown_fields() {
        let err = toml::from_str::<Config>("listen_addr = \"x\"").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn rejections_name_the_field_and_the_fix() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    listen: "nowhere".into(),
                    ..Config::default()
                },
                "listen",
            ),
            (
                Config {
                    max_attempts: 0,
                    ..Config::default()
                },
                "max_attempts",
            ),
            (
                Config {
                    workers: 5000,
                    ..Config::default()
                },
                "workers",
            ),
            (
                Config {
                    router_id: "a b".into(),
                    ..Config::default()
                },
                "router_id",
            ),
            (
                Config {
                    routes: vec![StaticRoute {
                        uri: "x.example.com".into(),
                        backends: vec!["localhost:80".into()],
                        ..StaticRoute::default()
                    }],
                    ..Config::default()
                },
                "routes[0].backends",
            ),
            (
                Config {
                    routes: vec![StaticRoute {
                        uri: String::new(),
                        ..StaticRoute::default()
                    }],
                    ..Config::default()
                },
                "routes[0].uri",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
            assert!(err.contains("write") || err.contains("raise"), "{err}");
        }
    }

    #[test]
    fn load_balancing_reads_gorouter_spelling() {
        assert_eq!(
            LoadBalancing::parse("least-connection"),
            Some(LoadBalancing::LeastConnection)
        );
        assert_eq!(
            LoadBalancing::parse("Round-Robin"),
            Some(LoadBalancing::RoundRobin)
        );
        assert_eq!(LoadBalancing::parse("random"), None);
    }
}
