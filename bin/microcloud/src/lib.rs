//! The micro cloud as a library: every role started together in one process, on loopback, wired
//! the way separate hosts would be (real gRPC, WebSocket and HTTP sockets between roles, an
//! in-process bus). `hydrant up` is this plus `endpoints.json` and a banner; `hydrant bench
//! pipeline`, the nozzles' test kit and the autoscaler's shard test start the pipeline part of
//! it, so there is one copy of the wiring.
//!
//! The micro cloud is a table ([`table`]): one row per role, naming the role type (a
//! [`hydrant_runtime::Role`]), the well-known ports `hydrant up` gives it and its micro-cloud
//! config, built from where the other roles listen ([`Wiring`]). Starting is two passes: bind
//! every row's listeners (so every address is known), then build each config and spawn each
//! role with a registry the micro cloud keeps, so the ledger reads the roles' counters directly
//! instead of scraping their `/metrics`.
//!
//! Invariants: roles only meet through their sockets and the bus, exactly as on separate hosts;
//! two micro clouds in one process never share a bus hub; stopping the shutdown token stops
//! every role, and [`MicroCloud::stopped`] waits for them.
//!
//! Adding a role to the micro cloud: implement [`MicroRole`] for its role type (its ports and
//! its micro-cloud config) and add one `row::<TheRole>()` to [`table`].

mod public_edge;
mod roles;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hydrant_emitter::{Registry, TelemetryConfig};
use hydrant_runtime::Listeners;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use public_edge::PublicEdge;
pub use roles::MicroRole;

/// An error a role stopped with, boxed so roles of every type share one task set.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The user the micro cloud's cloud controller creates and issues its token for.
pub const ADMIN_USER: &str = "admin";

/// Lifetime of the admin access token the micro cloud hands out (`endpoints.json`, the CLI
/// config): 8 hours; the refresh token renews it.
pub const ADMIN_TOKEN_TTL_SECS: i64 = 8 * 3600;
/// Lifetime of the refresh token: 30 days. (The in-process roles hold no such token: they read
/// the firehose as [`ROLES_CLIENT`] and renew.)
pub const ROLE_TOKEN_TTL_SECS: i64 = 30 * 86_400;
/// The OAuth2 client the platform roles that call the API or read the firehose (health
/// manager, autoscaler, SLO alerter, syslog nozzle) get their tokens as (`client_credentials`,
/// renewed before expiry and when the edge closes a stream for an expired token).
pub const ROLES_CLIENT: &str = "hydrant-roles";

/// Why the micro cloud could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The signing key could not be read, made or saved.
    #[error("the micro cloud's signing key: {0}")]
    Key(#[from] hydrant_auth::Error),
    /// A role's socket could not be bound.
    #[error(
        "the {role} cannot start: {source}; is another Hydrant running? Stop it, or run \
         `hydrant up --ephemeral-ports`"
    )]
    Bind {
        /// The role.
        role: &'static str,
        /// The runtime's bind error, naming the address.
        source: hydrant_runtime::Error,
    },
    /// A role's micro-cloud config did not validate (a bug in the table, reported).
    #[error("the micro cloud's {role} config is invalid: {source}")]
    Config {
        /// The role.
        role: &'static str,
        /// The role's validation error.
        source: BoxError,
    },
    /// The platform roles keep state, and no data directory was given.
    #[error("the platform roles need a data directory; give Options::data_dir")]
    NoDataDir,
    /// Mutual TLS was asked for and the certificate directory cannot be made or read.
    #[error("the micro cloud's certificates (DATA_DIR/certs): {0}")]
    Certs(#[from] hydrant_tls::Error),
    /// `--cells` is out of range.
    #[error(
        "--cells {cells}: run 1 to {most} cells (with containers each cell takes its own \
         subnet, so at most 4; `--isolation none` allows up to 16)"
    )]
    Cells {
        /// What was asked for.
        cells: u32,
        /// The most allowed.
        most: u32,
    },
}

/// Which ports the roles listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// The documented defaults (agent 3458, doppler 8082, firehose 8081, ...).
    WellKnown,
    /// Kernel-chosen free ports (tests, benchmarks, a second micro cloud).
    Ephemeral,
}

/// What a micro cloud runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where state lives (the signing key, the cloud controller's database and blobs, the
    /// executor's droplets). Required with `platform`; without it the pipeline uses a key made
    /// in memory.
    pub data_dir: Option<PathBuf>,
    /// Well-known or ephemeral ports.
    pub ports: Ports,
    /// Roles send their own metrics into the pipeline (off for the bench and the test kits,
    /// whose ledgers count only what they emitted).
    pub self_telemetry: bool,
    /// Run the platform roles as well as the pipeline (needs the `platform` feature).
    pub platform: bool,
    /// The agent's per-instance app log rate limit in bytes/s (0 = unlimited).
    pub app_log_rate_limit: u64,
    /// Fair drops between sources at the agent's egress, the doppler's ingress and subscriber
    /// queues, and the edge's outboxes; on except when a bench measures what it costs.
    pub fair_share: bool,
    /// Apps may bind syslog drains to internal addresses.
    pub allow_private_drains: bool,
    /// The autoscaler's `rule_duration_cap_secs` (tests and demos only).
    pub autoscaler_rule_cap_secs: Option<u32>,
    /// The cloud controller's `log_token_ttl_secs` (tests only); `None` keeps its default.
    pub log_token_ttl_secs: Option<i64>,
    /// Run app instances in containers (`hydrant up --isolation container`); otherwise they
    /// run unisolated and the executor says so at start and in every instance's CELL lines.
    pub containers: bool,
    /// The edge's reconnect delays to the doppler, `(min_ms, max_ms)`; `None` keeps the edge's
    /// defaults. Tests shorten them so the first subscription is not waited for.
    pub edge_reconnect_ms: Option<(u64, u64)>,
    /// Every pipeline hop runs mutual TLS with certificates from `DATA_DIR/certs` (made at
    /// first start; needs `data_dir`). `hydrant up` sets it; the pipeline test kits and the
    /// bench leave it off unless asked.
    pub tls: bool,
    /// The dopplers keep their replay ring (resumable subscriptions); on except when a bench
    /// measures what it costs.
    pub replay_ring: bool,
    /// The edge reads each firehose subscription id from the doppler as a shard group
    /// (`shard_across_edges`). Off: the micro cloud has one edge, which splits a
    /// subscription's copies from its one stream at no cost to the doppler; a bench turns it
    /// on to measure what several edges behind one name cost.
    pub shard_across_edges: bool,
    /// Executor cells (`hydrant up --cells N`, 1 to [`MAX_CELLS`]): one is executor `0` in
    /// zone `z1`; more are `cell-1` … `cell-N` in zones `z1` … `zN`, each with its own data
    /// directory (and, with containers, its own bridge, subnet and cgroup parent).
    pub cells: u32,
}

/// Most cells `hydrant up --cells` runs (with containers, each takes a /22 or /24 of the
/// executor's subnet range, so at most 4).
pub const MAX_CELLS: u32 = 16;

impl Options {
    /// Agent, doppler and edge only, on ephemeral ports, no self-telemetry, quick edge
    /// reconnects: what a test or a benchmark of the pipeline wants.
    #[must_use]
    pub fn pipeline() -> Self {
        Self {
            data_dir: None,
            ports: Ports::Ephemeral,
            self_telemetry: false,
            platform: false,
            app_log_rate_limit: 0,
            fair_share: true,
            allow_private_drains: false,
            autoscaler_rule_cap_secs: None,
            log_token_ttl_secs: None,
            containers: false,
            edge_reconnect_ms: Some((10, 200)),
            tls: false,
            replay_ring: true,
            shard_across_edges: false,
            cells: 1,
        }
    }
}

/// Where every started role listens, for building the others' configs.
#[derive(Debug)]
pub struct Wiring {
    addrs: BTreeMap<&'static str, Vec<(&'static str, SocketAddr)>>,
    /// The options the micro cloud was started with.
    pub options: Options,
    /// The cloud controller's token key directory, when there is a data directory.
    pub token_keys_dir: Option<PathBuf>,
    /// The public token keys (`/token_keys` JSON): what the edge verifies with until it has
    /// fetched them from the cloud controller. Never a private key.
    pub token_keys: String,
    /// The secret of [`ROLES_CLIENT`], made at each start: the roles that call the API get
    /// their tokens with it.
    pub roles_client_secret: String,
    /// The basic-auth password of the micro cloud's service broker, made at each start (the
    /// cloud controller's registration is updated with it).
    pub broker_password: String,
    /// The in-process bus, named for this micro cloud.
    pub bus: hydrant_bus::Config,
    /// This micro cloud's own container networks, when it is not the default one.
    pub networks: Option<Networks>,
    /// The certificate directory, when the pipeline runs mutual TLS.
    pub certs: Option<PathBuf>,
}

impl Wiring {
    /// The certificate files of `identity`, when the pipeline runs mutual TLS.
    #[must_use]
    pub fn tls(&self, identity: hydrant_tls::Identity) -> Option<hydrant_tls::TlsFiles> {
        let dir = self.certs.as_deref()?;
        Some(hydrant_tls::TlsFiles::in_dir(dir, identity))
    }

    /// `http://ADDR` of `role`'s listener `listener`; empty when that role is not in this micro
    /// cloud (its config then names nothing).
    #[must_use]
    pub fn url(&self, role: &str, listener: &str) -> String {
        self.addr(role, listener)
            .map(|a| format!("http://{a}"))
            .unwrap_or_default()
    }

    /// Where `role`'s listener `listener` is bound.
    #[must_use]
    pub fn addr(&self, role: &str, listener: &str) -> Option<SocketAddr> {
        self.addrs
            .get(role)?
            .iter()
            .find(|(n, _)| *n == listener)
            .map(|(_, a)| *a)
    }

    /// The data directory, or `dir` under it.
    #[must_use]
    pub fn data(&self, dir: &str) -> PathBuf {
        self.options
            .data_dir
            .as_deref()
            .unwrap_or(Path::new("."))
            .join(dir)
    }

    /// Where the pipeline roles' own metrics go: the agent, when self-telemetry is on,
    /// presenting `identity`'s certificate under mutual TLS.
    #[must_use]
    pub fn pipeline_telemetry(&self, identity: hydrant_tls::Identity) -> TelemetryConfig {
        TelemetryConfig {
            agent: self
                .options
                .self_telemetry
                .then(|| self.url("agent", "ingress")),
            tls: self.tls(identity),
            ..TelemetryConfig::default()
        }
    }

    /// Where the platform roles' metrics and logs go: always the agent, because the executor's
    /// app logs and the router's access logs travel with the same emitter as their metrics.
    #[must_use]
    pub fn platform_telemetry(&self, identity: hydrant_tls::Identity) -> TelemetryConfig {
        TelemetryConfig {
            agent: Some(self.url("agent", "ingress")),
            tls: self.tls(identity),
            ..TelemetryConfig::default()
        }
    }
}

/// One row of the micro cloud's table: a role type, erased to what the start-up needs.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// The role's name in `endpoints.json`'s `admin` map (`firehose` for the edge).
    pub key: &'static str,
    /// The role's own name (`trafficcontroller`), which its errors carry.
    pub name: &'static str,
    /// A platform role (runs only with [`Options::platform`]).
    pub platform: bool,
    bind: fn(Ports) -> BindFuture,
    start: fn(&Wiring, Listeners, &CancellationToken, &mut Tasks) -> Result<Registry, Error>,
}

type BindFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Listeners, hydrant_runtime::Error>> + Send>,
>;
type Tasks = JoinSet<(&'static str, Result<(), BoxError>)>;

/// The row for role `R`.
#[must_use]
pub const fn row<R: MicroRole>() -> Row {
    Row {
        key: R::KEY,
        name: R::NAME,
        platform: R::PLATFORM,
        bind: bind_row::<R>,
        start: start_row::<R>,
    }
}

fn bind_row<R: MicroRole>(ports: Ports) -> BindFuture {
    Box::pin(hydrant_runtime::bind_on::<R>(move |spec| {
        let port = R::LISTENERS
            .iter()
            .position(|s| s.name == spec.name)
            .and_then(|i| R::PORTS.get(i).copied())
            .unwrap_or(0);
        match ports {
            Ports::WellKnown => format!("127.0.0.1:{port}"),
            Ports::Ephemeral => "127.0.0.1:0".to_owned(),
        }
    }))
}

fn start_row<R: MicroRole>(
    wiring: &Wiring,
    listeners: Listeners,
    shutdown: &CancellationToken,
    tasks: &mut Tasks,
) -> Result<Registry, Error> {
    let config = R::config(wiring);
    R::validate(&config).map_err(|e| Error::Config {
        role: R::NAME,
        source: Box::new(e),
    })?;
    let registry = R::registry(&config);
    let run = hydrant_runtime::run_with_registry::<R>(
        config,
        listeners,
        registry.clone(),
        shutdown.clone(),
    );
    tasks.spawn(async move { (R::NAME, run.await.map_err(|e| Box::new(e) as BoxError)) });
    Ok(registry)
}

/// The micro cloud's table: every role it can run, pipeline first (the platform's configs
/// point at it).
#[must_use]
pub fn table() -> Vec<Row> {
    let pipeline = [
        row::<hydrant_agent::Agent>(),
        row::<hydrant_doppler::Doppler>(),
        row::<hydrant_firehose::TrafficController>(),
    ];
    #[cfg(feature = "platform")]
    let platform = vec![
        row::<hydrant_cloudcontroller::CloudController>(),
        row::<hydrant_executor::Executor>(),
        row::<hydrant_healthmanager::HealthManager>(),
        row::<hydrant_slo::Slo>(),
        row::<hydrant_nozzle_syslog::SyslogNozzle>(),
        row::<hydrant_autoscaler::AutoscalerRole>(),
        row::<hydrant_router::Router>(),
        row::<hydrant_broker::Broker>(),
    ];
    #[cfg(not(feature = "platform"))]
    let platform = Vec::new();
    pipeline.into_iter().chain(platform).collect()
}

/// Where the micro cloud's OSBAPI service broker listens and the basic auth it takes: what
/// `hydrant up` registers with the cloud controller and writes to `endpoints.json`, so any
/// other OSB client can use it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceBroker {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The basic-auth user.
    pub username: String,
    /// The basic-auth password (new at each start).
    pub password: String,
}

/// A running micro cloud.
#[derive(Debug)]
pub struct MicroCloud {
    /// The agent's v2 gRPC ingress, `http://127.0.0.1:PORT`: where emitters send.
    pub agent_url: String,
    /// The doppler's gRPC port.
    pub doppler_url: String,
    /// The firehose edge, `http://127.0.0.1:PORT`.
    pub firehose_url: String,
    /// The cloud controller's URL, when the platform roles run.
    pub api_url: Option<String>,
    /// The cloud controller's internal API (`https://127.0.0.1:PORT`, mutual TLS), when the
    /// platform roles run with certificates.
    pub internal_api_url: Option<String>,
    /// The router's URL, when the platform roles run.
    pub router_url: Option<String>,
    /// The service broker (`endpoints.json`'s `service_broker`), when the platform roles run.
    pub service_broker: Option<ServiceBroker>,
    /// The domain apps' default routes live under, when the platform roles run.
    pub apps_domain: Option<String>,
    /// An access token with the admin and firehose scopes for [`ADMIN_USER`], valid for
    /// [`ADMIN_TOKEN_TTL_SECS`].
    pub token: String,
    /// A refresh token for [`ADMIN_USER`], when the cloud controller runs: renews `token` at
    /// its token endpoint (`grant_type=refresh_token`).
    pub refresh_token: Option<String>,
    /// The key every token is signed with (tests issue narrower tokens with it).
    pub key: hydrant_auth::SigningKey,
    /// Each role's admin address (`/healthz`, `/metrics`), by its `endpoints.json` name.
    pub admin: BTreeMap<String, SocketAddr>,
    /// This micro cloud's own container networks (`None`: the defaults, or no containers).
    pub networks: Option<Networks>,
    /// The certificate directory when every pipeline hop runs mutual TLS (`ca.pem`,
    /// `<identity>.pem`, `<identity>.key`); `None`: plaintext.
    pub certs: Option<PathBuf>,
    registries: BTreeMap<&'static str, Registry>,
    tasks: Tasks,
}

impl MicroCloud {
    /// Binds every role's sockets, then starts the roles: the pipeline always, the platform when
    /// `options.platform` (and the `platform` feature).
    ///
    /// # Errors
    /// The data directory or key cannot be made, a port is taken, or a role's config is
    /// invalid.
    pub async fn start(options: Options, shutdown: CancellationToken) -> Result<Self, Error> {
        if options.platform && options.data_dir.is_none() {
            return Err(Error::NoDataDir);
        }
        let most = if options.containers { 4 } else { MAX_CELLS };
        if options.cells == 0 || options.cells > most {
            return Err(Error::Cells {
                cells: options.cells,
                most,
            });
        }
        // The micro cloud's process is the cloud controller's host: it holds the key
        // directory, mints the admin's first tokens, and hands every other role public keys.
        let (key, token_keys_dir) = match &options.data_dir {
            Some(dir) => {
                private_dir(dir).map_err(|source| Error::DataDir {
                    path: dir.clone(),
                    source,
                })?;
                let keys_dir = dir.join("cloudcontroller").join("token_keys");
                (
                    hydrant_auth::KeyStore::open(&keys_dir)?.signing().clone(),
                    Some(keys_dir),
                )
            }
            None => (hydrant_auth::SigningKey::generate()?, None),
        };
        let admin_claims = |ttl| {
            hydrant_auth::Claims::new(ADMIN_USER)
                .for_audience(hydrant_auth::AUD_API)
                .for_audience(hydrant_auth::AUD_LOGS)
                .with_scope(hydrant_auth::SCOPE_ADMIN)
                .with_scope(hydrant_auth::SCOPE_FIREHOSE)
                .with_scope(hydrant_auth::SCOPE_API_READ)
                .with_scope(hydrant_auth::SCOPE_API_WRITE)
                .expires_in(ttl)
        };
        // Without a cloud controller nothing can renew a token, so it lives as long as a
        // role's.
        let ttl = if options.platform {
            ADMIN_TOKEN_TTL_SECS
        } else {
            ROLE_TOKEN_TTL_SECS
        };
        let token = key.issue(&admin_claims(ttl));
        let refresh_token = options.platform.then(|| {
            key.issue(
                &hydrant_auth::Claims::new(ADMIN_USER)
                    .for_audience(hydrant_auth::AUD_REFRESH)
                    .expires_in(ROLE_TOKEN_TTL_SECS),
            )
        });
        let token_keys = key.key_set().to_json();
        let certs = if options.tls {
            let dir = options
                .data_dir
                .as_ref()
                .ok_or(Error::NoDataDir)?
                .join("certs");
            hydrant_tls::issue::ensure(&dir, &hydrant_tls::Identity::ALL, &[])?;
            Some(dir)
        } else {
            None
        };
        let rows: Vec<Row> = table()
            .into_iter()
            .filter(|r| options.platform || !r.platform)
            .collect();

        // Pass 1: bind everything, so every config can name every address.
        let mut bound = Vec::with_capacity(rows.len());
        let mut addrs = BTreeMap::new();
        for row in &rows {
            let listeners = (row.bind)(options.ports)
                .await
                .map_err(|source| Error::Bind {
                    role: row.name,
                    source,
                })?;
            addrs.insert(row.key, listeners.addrs());
            bound.push((row, listeners));
        }
        let wiring = Wiring {
            addrs,
            token_keys_dir,
            token_keys,
            roles_client_secret: format!(
                "{}{}",
                hydrant_auth::random_id(),
                hydrant_auth::random_id()
            ),
            broker_password: format!("{}{}", hydrant_auth::random_id(), hydrant_auth::random_id()),
            // Named for this process and this start, so two micro clouds in one test process
            // never hear each other.
            bus: hydrant_bus::Config::inprocess(&format!(
                "microcloud-{}-{}",
                std::process::id(),
                start_number()
            )),
            networks: Networks::for_options(&options),
            certs,
            options,
        };

        // Pass 2: configs and tasks.
        let mut tasks = JoinSet::new();
        let mut registries = BTreeMap::new();
        let mut admin = BTreeMap::new();
        for (row, listeners) in bound {
            if let Some(a) = listeners.local_addr("admin") {
                admin.insert(row.key.to_owned(), a);
            }
            let registry = (row.start)(&wiring, listeners, &shutdown, &mut tasks)?;
            registries.insert(row.key, registry);
        }
        #[cfg(feature = "platform")]
        if wiring.options.platform {
            for k in 2..=wiring.options.cells {
                let (key, addr) = roles::start_cell(&wiring, k, &shutdown, &mut tasks).await?;
                admin.insert(key, addr);
            }
        }
        let platform = wiring.options.platform;
        Ok(Self {
            agent_url: wiring.url("agent", "ingress"),
            doppler_url: wiring.url("doppler", "grpc"),
            firehose_url: wiring.url("firehose", "http"),
            api_url: platform.then(|| wiring.url("cloudcontroller", "api")),
            internal_api_url: wiring
                .certs
                .as_ref()
                .and(wiring.addr("cloudcontroller", "internal"))
                .map(|a| format!("https://{a}")),
            router_url: platform.then(|| wiring.url("router", "http")),
            service_broker: platform.then(|| ServiceBroker {
                url: wiring.url("broker", "api"),
                username: roles::BROKER_USER.to_owned(),
                password: wiring.broker_password.clone(),
            }),
            apps_domain: platform.then(roles::apps_domain),
            token,
            refresh_token,
            key,
            admin,
            networks: wiring.networks.clone(),
            certs: wiring.certs.clone(),
            registries,
            tasks,
        })
    }

    /// An emitter sending to this cloud's agent as an app instance's would through its cell:
    /// over mutual TLS as the executor when the pipeline runs it, counting into `registry`.
    #[must_use]
    pub fn emitter(
        &self,
        registry: &Registry,
        shutdown: CancellationToken,
    ) -> hydrant_emitter::Emitter {
        let tls = self
            .certs
            .as_deref()
            .map(|dir| hydrant_tls::TlsFiles::in_dir(dir, hydrant_tls::Identity::Executor));
        let config = hydrant_emitter::EmitterConfig {
            agent: self.agent_url.clone(),
            tls,
            ..hydrant_emitter::EmitterConfig::default()
        };
        hydrant_emitter::Emitter::start(config, registry, shutdown)
    }

    /// The registry of the role `endpoints.json` calls `key` (`agent`, `firehose`, ...).
    #[must_use]
    pub fn registry(&self, key: &str) -> Option<&Registry> {
        self.registries.get(key)
    }

    /// Every drop counter of every role on the stream path, keyed `role.reason`, read from the
    /// roles' registries. Drops on side branches are left out (the log cache is a side copy:
    /// losing a cache entry does not lose the envelope from the firehose).
    #[must_use]
    pub fn drops(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (role, registry) in &self.registries {
            for (name, tags, value) in registry.counters() {
                if !name.ends_with("dropped") {
                    continue;
                }
                let reason = tags
                    .iter()
                    .find(|(k, _)| k == "reason")
                    .map_or("unspecified", |(_, v)| v.as_str());
                if reason.starts_with("logcache") {
                    continue;
                }
                *out.entry(format!("{role}.{reason}")).or_insert(0) += value;
            }
        }
        out
    }

    /// The sum over every role of the counters named `name` (`doppler.gap_markers`).
    #[must_use]
    pub fn counter(&self, name: &str) -> u64 {
        self.registries
            .values()
            .map(|r| r.counter_sum(name, &[]))
            .sum()
    }

    /// Waits until a role stops on its own (its name and how) or `shutdown` fires (`None`).
    pub async fn supervise(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Option<(String, Result<(), BoxError>)> {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => None,
            joined = self.tasks.join_next() => match joined {
                // Roles watch the same token, so one may finish in the instant between the
                // signal and this select: that is the requested stop, not a failure.
                Some(Ok((_, Ok(())))) if shutdown.is_cancelled() => None,
                Some(Ok((role, result))) => Some((role.to_owned(), result)),
                Some(Err(e)) => Some(("a role".to_owned(), Err(format!("task failed: {e}").into()))),
                None => None,
            },
        }
    }

    /// Waits for every role to stop (after the shutdown token fired), reporting on stderr any
    /// that stopped with an error.
    pub async fn stopped(mut self) {
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok((role, Err(e))) => eprintln!("error: {role} stopped: {e}"),
                Err(e) => eprintln!("error: a role task failed: {e}"),
                Ok(_) => {}
            }
        }
    }
}

/// The executor's and staging's bridges and subnets of a micro cloud that is not the default
/// one (`--ephemeral-ports` with containers), so micro clouds side by side on one host — the
/// end-to-end tests start them in parallel — never ask for the same bridge or subnet.
///
/// Bridge names come from a hash of the data directory (`hy` / `hs` + 6 hex: veth names are
/// `<bridge>-<6 hex>`, within the kernel's 15 bytes). Subnets come from a pool kept for this,
/// `10.253.0.0/16` as /24 pairs (executor `10.253.<2k>.0/24`, staging `10.253.<2k+1>.0/24`),
/// from `k = hash % 128` on, skipping pairs an interface other than these bridges already has
/// an address in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Networks {
    /// The executor's bridge.
    pub executor_bridge: String,
    /// The executor's subnet (CIDR).
    pub executor_subnet: String,
    /// Staging's bridge.
    pub staging_bridge: String,
    /// Staging's subnet (CIDR).
    pub staging_subnet: String,
    /// The executor's cgroup parent (`hydrant/<executor bridge>`): the default `hydrant/0` is
    /// shared, and an executor cleans up every container under its parent when it starts.
    pub executor_cgroup_parent: String,
}

impl Networks {
    /// The networks `options` asks for: `None` keeps the defaults (well-known ports, or no
    /// containers).
    #[must_use]
    pub fn for_options(options: &Options) -> Option<Self> {
        if !(options.platform && options.containers && options.ports == Ports::Ephemeral) {
            return None;
        }
        let data = options.data_dir.as_deref()?;
        let absolute = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
        let hash = fnv1a(absolute.to_string_lossy().as_bytes());
        let executor_bridge = format!("hy{:06x}", hash & 0x00ff_ffff);
        let staging_bridge = format!("hs{:06x}", hash & 0x00ff_ffff);
        let taken = host_ipv4_nets(&[&executor_bridge, &staging_bridge]);
        let k = pick_pair(hash, &taken);
        Some(Self {
            executor_subnet: format!("10.253.{}.0/24", 2 * k),
            staging_subnet: format!("10.253.{}.0/24", 2 * k + 1),
            executor_cgroup_parent: format!("hydrant/{executor_bridge}"),
            executor_bridge,
            staging_bridge,
        })
    }
}

/// The pool's first /24 pair, from `hash % 128` on, that overlaps none of `taken`; when every
/// pair is taken, the first one (the container network's setup then refuses it, naming the
/// interface).
fn pick_pair(hash: u64, taken: &[(u32, u32)]) -> u64 {
    let start = hash % 128;
    (0..128)
        .map(|i| (start + i) % 128)
        .find(|k| {
            // k < 128, so 2k fits the third octet.
            let base = u32::from_be_bytes([10, 253, 0, 0]) | (u32::try_from(*k).unwrap_or(0) << 9);
            let pair = (base, 23);
            !taken.iter().any(|net| overlaps(*net, pair))
        })
        .unwrap_or(start)
}

/// Whether two IPv4 networks `(address, prefix length)` share an address.
fn overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
    let prefix = a.1.min(b.1).min(32);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    a.0 & mask == b.0 & mask
}

/// The IPv4 networks of this host's interfaces other than `own` (`ip -4 -o addr`); empty when
/// `ip` cannot run (containers need it, and their setup then says so).
fn host_ipv4_nets(own: &[&str]) -> Vec<(u32, u32)> {
    let Ok(out) = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let name = fields.get(1)?;
            if own.contains(name) || fields.get(2) != Some(&"inet") {
                return None;
            }
            let (addr, prefix) = fields.get(3)?.split_once('/')?;
            let addr: std::net::Ipv4Addr = addr.parse().ok()?;
            Some((u32::from(addr), prefix.parse().ok()?))
        })
        .collect()
}

/// FNV-1a, 64 bits: a stable hash of the data directory (std's hasher is seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A per-start suffix for the bus hub's name: the process id alone repeats when one test
/// process starts several micro clouds.
fn start_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STARTS: AtomicU64 = AtomicU64::new(0);
    STARTS.fetch_add(1, Ordering::Relaxed)
}

/// Creates the data directory and makes it mode 0700, also when it already existed: it holds
/// the database, every tenant's code and droplets and the signing key, which no other user on
/// the host may read.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_dir_is_private_even_when_it_existed() {
        use std::os::unix::fs::PermissionsExt as _;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        let fresh = parent.path().join("fresh/nested");
        private_dir(&fresh).unwrap();
        for d in [&dir, &fresh] {
            let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
    }

    fn ephemeral(dir: &Path) -> Options {
        Options {
            data_dir: Some(dir.to_path_buf()),
            platform: true,
            containers: true,
            ..Options::pipeline()
        }
    }

    #[test]
    fn a_non_default_micro_cloud_gets_its_own_short_bridges_and_pool_subnets() {
        let a = Networks::for_options(&ephemeral(Path::new("/nonexistent/a"))).unwrap();
        let b = Networks::for_options(&ephemeral(Path::new("/nonexistent/b"))).unwrap();
        for n in [&a, &b] {
            assert!(
                n.executor_bridge.starts_with("hy") && n.executor_bridge.len() == 8,
                "{n:?}"
            );
            assert!(
                n.staging_bridge.starts_with("hs") && n.staging_bridge.len() == 8,
                "{n:?}"
            );
            assert!(n.executor_subnet.starts_with("10.253."), "{n:?}");
            assert_ne!(n.executor_subnet, n.staging_subnet);
        }
        assert_ne!(a.executor_bridge, b.executor_bridge);
        assert_ne!(a.executor_cgroup_parent, b.executor_cgroup_parent);
        // The same data directory keeps its bridges across restarts.
        assert_eq!(
            Networks::for_options(&ephemeral(Path::new("/nonexistent/a")))
                .unwrap()
                .executor_bridge,
            a.executor_bridge
        );
    }

    #[test]
    fn well_known_ports_or_no_containers_keep_the_default_networks() {
        let dir = Path::new("/nonexistent/a");
        let well_known = Options {
            ports: Ports::WellKnown,
            ..ephemeral(dir)
        };
        assert_eq!(Networks::for_options(&well_known), None);
        let unisolated = Options {
            containers: false,
            ..ephemeral(dir)
        };
        assert_eq!(Networks::for_options(&unisolated), None);
    }

    #[test]
    fn a_pair_an_interface_already_holds_is_skipped() {
        let at = |third: u8| (u32::from_be_bytes([10, 253, third, 1]), 24);
        // hash 5: pair k = 5 is 10.253.10.0/24 + 10.253.11.0/24.
        assert_eq!(pick_pair(5, &[]), 5);
        assert_eq!(pick_pair(5, &[at(11)]), 6);
        assert_eq!(pick_pair(5, &[at(10), at(12), at(9)]), 7);
        // A wider network holding the whole pool leaves nothing free: the first pair is kept.
        assert_eq!(pick_pair(5, &[(u32::from_be_bytes([10, 0, 0, 1]), 8)]), 5);
        assert_eq!(pick_pair(127 + 128, &[]), 127);
    }

    #[tokio::test]
    async fn a_cell_count_out_of_range_is_refused_with_the_limit() {
        for (cells, containers, most) in [(0, false, MAX_CELLS), (17, false, 16), (5, true, 4)] {
            let options = Options {
                cells,
                containers,
                ..Options::pipeline()
            };
            let err = MicroCloud::start(options, CancellationToken::new())
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::Cells { cells: c, most: m } if c == cells && m == most),
                "{err}"
            );
            assert!(
                err.to_string().contains(&format!("--cells {cells}")),
                "{err}"
            );
        }
    }
}
