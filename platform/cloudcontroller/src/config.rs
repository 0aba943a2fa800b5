//! The cloud controller's config (`hydrant run cloudcontroller --config FILE`, or the
//! `[cloudcontroller]` part of the micro cloud).
//!
//! Invariant: a config that passes [`Config::validate`] bounds every upload, queue and loop the
//! role runs; every rejection names the field and says what to write instead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use hydrant_container::net::NetConfig;
use hydrant_emitter::TelemetryConfig;
use hydrant_runtime::invalid;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::Error;
use crate::db::DbUrl;

/// `[db]`: where the desired state lives.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DbConfig {
    /// `sqlite://PATH`, or `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (Cloud Foundry's
    /// CCDB: several controllers may share it). Default empty: SQLite at
    /// `<data_dir>/cloudcontroller.db`. Logs and errors show it with the password masked.
    /// TLS to PostgreSQL as libpq writes it: `?sslrootcert=/etc/hydrant/ca.pem` (optionally
    /// with `sslmode=verify-full`) connects only over TLS, checking the server's certificate
    /// against that CA and the URL's host; `sslmode=require` without `sslrootcert` is refused.
    pub url: String,
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConfig")
            .field("url", &crate::db::mask_password(&self.url))
            .finish()
    }
}

/// Cloud controller settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the REST API listens. Default `127.0.0.1:9022`.
    pub listen: String,
    /// Where `/healthz` and `/metrics` listen. Default `127.0.0.1:14831`.
    pub admin_listen: String,
    /// Where the internal API listens: mutual TLS only, for the platform's roles (executors'
    /// droplet downloads, the syslog nozzle's drain targets, the autoscaler, the SLO alerter
    /// and the health manager), each client certificate's identity checked per endpoint.
    /// Needed with `tls` (e.g. `127.0.0.1:9023`, the micro cloud's). Default empty: not bound.
    pub internal_listen: String,
    /// The internal API's URL as the roles dial it: what droplet URLs start with when `tls` is
    /// set. Default empty: `https://` + `internal_listen`.
    pub internal_url: String,
    /// This role's certificate (the `cloudcontroller` identity), key and trust bundle: with
    /// it, the internal listener serves over mutual TLS and droplet URLs point there. Default
    /// unset: no internal listener, droplets from `external_url` (their tokens still decide).
    pub tls: Option<hydrant_tls::TlsFiles>,
    /// The API's public base URL: what `/v3/info` reports and what droplet URLs handed to
    /// executors start with. Default `http://127.0.0.1:9022`.
    pub external_url: String,
    /// Where the database, blobs, packages and droplets live. Default `data/cloudcontroller`.
    pub data_dir: String,
    /// Default routes are `NAME.<apps_domain>`. Default `apps.localhost`.
    pub apps_domain: String,
    /// The domain the platform's own endpoints are served on through the routers: the API at
    /// `api.<system_domain>` (Cloud Foundry's `api.SYSTEM_DOMAIN`). Default empty: the
    /// `apps_domain`.
    pub system_domain: String,
    /// `host:port` at which routers reach this controller's API (its `listen` address as seen
    /// from the routers' hosts). Set, the controller announces itself through the shared
    /// database and every controller's route assignments name each live one, so routers serve
    /// `api.<system_domain>` with every live controller behind it and one that dies drops out.
    /// Default empty: not served through the routers.
    pub api_advertise: String,
    /// The directory of token signing keys (Ed25519, mode 0600; created with one key when
    /// absent). Only this role holds it: every other role verifies with the public keys served
    /// at `GET /token_keys`. See `hydrant_auth::KeyStore` for rotation. Default
    /// `<data_dir>/token_keys`.
    pub token_keys_dir: Option<String>,
    /// OAuth2 clients that get tokens with the `client_credentials` grant: the roles that call
    /// the API (`[[clients]]`). Default none.
    pub clients: Vec<ClientConfig>,
    /// The administrator created at first start. Default `admin`.
    pub admin_user: String,
    /// The administrator's password. Unset: one is generated at first start and written to
    /// `admin_password_file`.
    pub admin_password: Option<String>,
    /// Where a generated administrator password is written (mode 0600). Default
    /// `<data_dir>/admin-password`.
    pub admin_password_file: Option<String>,
    /// PBKDF2-HMAC-SHA256 iterations for new password hashes. Default 100000; at least 1000.
    pub password_hash_iterations: u32,
    /// Lifetime of an access token (login, refresh, client credentials), seconds. Default
    /// 3600 (1 h); at most 30 days.
    pub token_ttl_secs: i64,
    /// Lifetime of a refresh token (usable only at the token endpoint), seconds. Default
    /// 2592000 (30 days); at most 90 days.
    pub refresh_token_ttl_secs: i64,
    /// Lifetime of a `log_token`, seconds. Default 600.
    pub log_token_ttl_secs: i64,
    /// Lifetime of the token in a droplet URL handed to an executor, seconds. Default 900.
    pub droplet_token_ttl_secs: i64,
    /// Largest single file (blob) upload, bytes. Default 1073741824 (1 GiB).
    pub max_blob_bytes: u64,
    /// Largest package (sum of its files), bytes. Default 4294967296 (4 GiB).
    pub max_package_bytes: u64,
    /// How often unreferenced blob files are collected, seconds. Default 600.
    pub blob_gc_interval_secs: u64,
    /// How long an unreferenced file is kept after it was last uploaded or matched, seconds:
    /// a push between its resource match and its package, or an upload in progress, is never
    /// cut short. Default 3600; at least 60.
    pub blob_gc_grace_secs: u64,
    /// Most files in one package. Default 100000.
    pub max_package_files: usize,
    /// Largest JSON body of the push endpoints that carry file lists (`/v3/resource_match`,
    /// packages), bytes. Default 33554432 (32 MiB, a 100000-file resource list).
    pub max_request_bytes: usize,
    /// Largest JSON body of every other endpoint (login, users, spaces, apps, routes, drains,
    /// SLOs, policies), bytes; larger ones get 413 and are counted
    /// (`listener_requests_refused_total{reason="body_too_large"}`). Default 65536 (64 KiB).
    pub max_small_request_bytes: usize,
    /// Connection caps and timeouts of the API listener (`[limits]`).
    pub limits: hydrant_runtime::Limits,
    /// Most instances one app may ask for. Default 100.
    pub max_instances_per_app: u32,
    /// Builds that may wait for a staging worker; past this `POST .../builds` answers 503.
    /// Default 16.
    pub staging_queue: usize,
    /// Builds staged at once. Default 2.
    pub staging_workers: usize,
    /// A build taking longer fails (an install step still running then is stopped and its
    /// container destroyed). Default 900 s.
    pub staging_timeout_secs: u64,
    /// How staging runs the app's own code (install scripts): `[staging_isolation]`.
    pub staging_isolation: StagingIsolation,
    /// How often desired and actual instances are compared (besides on every change).
    /// Default 3000 ms.
    pub converge_interval_ms: u64,
    /// An executor not heard from for this long is forgotten. Default 30 s (three heartbeats).
    pub executor_timeout_secs: u64,
    /// How long an executor may take to answer a start or stop request. Default 2000 ms.
    pub executor_request_timeout_ms: u64,
    /// Let apps bind syslog drains whose host is a loopback, private or link-local address.
    /// Default false: a drain is a connection the platform makes for a developer, and must not
    /// reach into the platform's own network unless the operator says so.
    pub allow_private_drains: bool,
    /// Drains one app may have. Default 20.
    pub max_drains_per_app: usize,
    /// Other endpoints `/v3/info` advertises, by name (`firehose = "ws://127.0.0.1:8088"`).
    pub endpoints: BTreeMap<String, String>,
    /// The `instance_id` of the role's own metrics, and this controller's name in the leases
    /// and build records it shares with others on one database: give each controller of a
    /// shared `[db]` its own. Default `"0"`.
    pub instance_id: String,
    /// Where the desired state lives (`[db]`). Default: SQLite in `data_dir`.
    pub db: DbConfig,
    /// Where blobs (pushed files), droplets and upload scratch space live: every controller
    /// on one shared `[db]` must name the same directory (a shared filesystem). Default
    /// `data_dir`.
    pub blobs_dir: Option<String>,
    /// The control-plane bus.
    pub bus: hydrant_bus::Config,
    /// Where the role's own metrics, and the apps' `STG` and `API` log lines, go.
    pub telemetry: TelemetryConfig,
    /// Service brokers: outbound policy, deadlines and polling (`[services]`).
    pub services: crate::services::ServicesConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9022".to_owned(),
            admin_listen: "127.0.0.1:14831".to_owned(),
            internal_listen: String::new(),
            internal_url: String::new(),
            tls: None,
            external_url: "http://127.0.0.1:9022".to_owned(),
            data_dir: "data/cloudcontroller".to_owned(),
            apps_domain: "apps.localhost".to_owned(),
            system_domain: String::new(),
            api_advertise: String::new(),
            token_keys_dir: None,
            clients: Vec::new(),
            admin_user: "admin".to_owned(),
            admin_password: None,
            admin_password_file: None,
            password_hash_iterations: 100_000,
            token_ttl_secs: 3600,
            refresh_token_ttl_secs: 30 * 86_400,
            log_token_ttl_secs: 600,
            droplet_token_ttl_secs: 900,
            max_blob_bytes: 1 << 30,
            max_package_bytes: 4 << 30,
            blob_gc_interval_secs: 600,
            blob_gc_grace_secs: 3600,
            max_package_files: 100_000,
            max_request_bytes: 32 << 20,
            max_small_request_bytes: 64 << 10,
            limits: hydrant_runtime::Limits::default(),
            max_instances_per_app: 100,
            staging_queue: 16,
            staging_workers: 2,
            staging_timeout_secs: 900,
            staging_isolation: StagingIsolation::default(),
            converge_interval_ms: 3000,
            executor_timeout_secs: 30,
            executor_request_timeout_ms: 2000,
            allow_private_drains: false,
            max_drains_per_app: 20,
            endpoints: BTreeMap::new(),
            instance_id: "0".to_owned(),
            db: DbConfig::default(),
            blobs_dir: None,
            bus: hydrant_bus::Config::default(),
            telemetry: TelemetryConfig::default(),
            services: crate::services::ServicesConfig::default(),
        }
    }
}

impl hydrant_runtime::Validate for Config {
    type Error = Error;

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad field, [`Error::Telemetry`] or [`Error::Bus`].
    fn validate(&self) -> Result<(), Error> {
        if !self.db.url.is_empty() {
            DbUrl::parse(&self.db.url).map_err(|why| invalid("db.url", why))?;
        }
        if self.blobs_dir.as_ref().is_some_and(|d| d.trim().is_empty()) {
            return Err(invalid(
                "blobs_dir",
                "is empty; name a directory, or leave it out for data_dir",
            )
            .into());
        }
        for (field, addr) in [
            ("listen", &self.listen),
            ("admin_listen", &self.admin_listen),
        ] {
            addr.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    field,
                    format!("{addr:?} is not an address; write it as \"127.0.0.1:9022\""),
                )
            })?;
        }
        let url = self.external_url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 9 {
            return Err(invalid(
                "external_url",
                format!(
                    "{:?} is not an http(s) URL; write it as \"http://127.0.0.1:9022\"",
                    self.external_url
                ),
            )
            .into());
        }
        if !self.internal_listen.is_empty() {
            self.internal_listen.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "internal_listen",
                    format!(
                        "{:?} is not an address; write it as \"127.0.0.1:9023\", or leave it \
                         out for no internal API",
                        self.internal_listen
                    ),
                )
            })?;
        }
        if let Some(tls) = &self.tls {
            tls.validate().map_err(|e| invalid("tls", format!("{e}")))?;
            if self.internal_listen.is_empty() {
                return Err(invalid(
                    "internal_listen",
                    "tls serves the internal API: say where it listens, e.g. \"127.0.0.1:9023\"",
                )
                .into());
            }
        }
        let internal = self.internal_url.trim();
        if !internal.is_empty() && (!internal.starts_with("https://") || internal.len() < 9) {
            return Err(invalid(
                "internal_url",
                format!(
                    "{internal:?} is not an https:// URL; write the address roles dial for the \
                     internal listener, e.g. \"https://10.0.0.5:9023\", or leave it out"
                ),
            )
            .into());
        }
        if self.data_dir.trim().is_empty() {
            return Err(invalid(
                "data_dir",
                "must name a directory, e.g. \"data/cloudcontroller\"",
            )
            .into());
        }
        if !is_domain(&self.apps_domain) {
            return Err(invalid(
                "apps_domain",
                format!(
                    "{:?} is not a domain; use lower-case labels of a-z, 0-9 and -, \
                     e.g. \"apps.localhost\"",
                    self.apps_domain
                ),
            )
            .into());
        }
        if !self.system_domain.is_empty() && !is_domain(&self.system_domain) {
            return Err(invalid(
                "system_domain",
                format!(
                    "{:?} is not a domain; use lower-case labels of a-z, 0-9 and -, \
                     e.g. \"system.example.com\", or leave it empty for the apps_domain",
                    self.system_domain
                ),
            )
            .into());
        }
        if !self.api_advertise.is_empty()
            && self.api_advertise.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "api_advertise",
                format!(
                    "{:?} is not host:port; give the address routers reach this controller's \
                     API at, e.g. \"10.0.0.5:9022\", or leave it empty",
                    self.api_advertise
                ),
            )
            .into());
        }
        if self.admin_user.is_empty() || crate::api::username_problem(&self.admin_user).is_some() {
            return Err(invalid(
                "admin_user",
                "use 1 to 64 of a-z A-Z 0-9 . _ @ -, e.g. \"admin\"",
            )
            .into());
        }
        if let Some(password) = &self.admin_password
            && password.len() < 8
        {
            return Err(invalid(
                "admin_password",
                "must be at least 8 characters (or leave it unset to generate one)",
            )
            .into());
        }
        if self.password_hash_iterations < 1000 {
            return Err(invalid(
                "password_hash_iterations",
                "must be at least 1000 (default 100000)",
            )
            .into());
        }
        for (field, value) in [
            ("token_ttl_secs", self.token_ttl_secs),
            ("log_token_ttl_secs", self.log_token_ttl_secs),
            ("droplet_token_ttl_secs", self.droplet_token_ttl_secs),
        ] {
            if !(1..=30 * 86_400).contains(&value) {
                return Err(invalid(field, "must be between 1 and 2592000 seconds").into());
            }
        }
        if !(1..=90 * 86_400).contains(&self.refresh_token_ttl_secs) {
            return Err(invalid(
                "refresh_token_ttl_secs",
                "must be between 1 and 7776000 seconds (90 days)",
            )
            .into());
        }
        for (i, client) in self.clients.iter().enumerate() {
            client.validate(&format!("clients[{i}]."))?;
        }
        if self.blob_gc_interval_secs == 0 {
            return Err(invalid(
                "blob_gc_interval_secs",
                "must be at least 1 (seconds between collections of unreferenced blobs)",
            )
            .into());
        }
        if self.blob_gc_grace_secs < 60 {
            return Err(invalid(
                "blob_gc_grace_secs",
                "must be at least 60: a push uploads and matches files a while before it \
                 creates the package that references them",
            )
            .into());
        }
        if self.max_blob_bytes == 0 || self.max_package_bytes == 0 {
            return Err(invalid(
                "max_blob_bytes",
                "max_blob_bytes and max_package_bytes must be at least 1",
            )
            .into());
        }
        let counts = [
            ("max_package_files", self.max_package_files, 10_000_000),
            ("max_request_bytes", self.max_request_bytes, 1 << 30),
            (
                "max_small_request_bytes",
                self.max_small_request_bytes,
                1 << 30,
            ),
            ("staging_queue", self.staging_queue, 10_000),
            ("staging_workers", self.staging_workers, 64),
        ];
        for (field, value, max) in counts {
            if value == 0 || value > max {
                return Err(invalid(field, format!("must be between 1 and {max}")).into());
            }
        }
        if self.max_instances_per_app == 0 || self.max_instances_per_app > 10_000 {
            return Err(invalid("max_instances_per_app", "must be between 1 and 10000").into());
        }
        if self.max_drains_per_app > 1_000 {
            return Err(invalid("max_drains_per_app", "must be at most 1000").into());
        }
        let durations = [
            ("staging_timeout_secs", self.staging_timeout_secs),
            ("converge_interval_ms", self.converge_interval_ms),
            ("executor_timeout_secs", self.executor_timeout_secs),
            (
                "executor_request_timeout_ms",
                self.executor_request_timeout_ms,
            ),
        ];
        for (field, value) in durations {
            if value == 0 || value > 86_400_000 {
                return Err(invalid(field, "must be at least 1").into());
            }
        }
        self.staging_isolation.validate()?;
        self.services.validate()?;
        self.bus.validate()?;
        self.limits.validate("limits")?;
        self.telemetry.validate()?;
        Ok(())
    }
}

impl Config {
    /// The staging containers' settings with the defaults filled in: cgroups under
    /// `hydrant/staging-<hash of data_dir>` (one parent per cloud controller, so two on one host
    /// never clean up each other's containers) and state under `<data_dir>/containers`.
    #[must_use]
    pub fn staging_containers(&self) -> hydrant_container::Config {
        let data = self.data_path();
        let absolute = std::fs::canonicalize(&data).unwrap_or_else(|_| data.clone());
        let digest = Sha256::digest(absolute.to_string_lossy().as_bytes());
        let hash = hydrant_api::push::hex(&digest);
        let parent = format!("hydrant/staging-{}", hash.get(..12).unwrap_or(&hash));
        self.staging_isolation
            .containers
            .clone()
            .with_defaults(&parent, data.join("containers"))
    }

    /// The data directory.
    #[must_use]
    pub fn data_path(&self) -> PathBuf {
        PathBuf::from(&self.data_dir)
    }

    /// The database: `[db] url`, or the SQLite file `<data_dir>/cloudcontroller.db`.
    #[must_use]
    pub fn db_url(&self) -> DbUrl {
        if self.db.url.is_empty() {
            return DbUrl::Sqlite(self.data_path().join("cloudcontroller.db"));
        }
        // Checked by `validate`; a URL that slipped past it fails at open, saying why.
        DbUrl::parse(&self.db.url).unwrap_or_else(|_| DbUrl::Postgres(self.db.url.clone()))
    }

    /// The blob store's root: `blobs_dir`, or `data_dir`.
    #[must_use]
    pub fn blobs_path(&self) -> PathBuf {
        self.blobs_dir
            .as_ref()
            .map_or_else(|| self.data_path(), PathBuf::from)
    }

    /// The token key directory: `token_keys_dir`, or `<data_dir>/token_keys`.
    #[must_use]
    pub fn token_keys_path(&self) -> PathBuf {
        self.token_keys_dir
            .as_ref()
            .map_or_else(|| self.data_path().join("token_keys"), PathBuf::from)
    }

    /// Where a generated admin password goes.
    #[must_use]
    pub fn admin_password_path(&self) -> PathBuf {
        self.admin_password_file
            .as_ref()
            .map_or_else(|| self.data_path().join("admin-password"), PathBuf::from)
    }

    /// The API's route through the routers: `api.<system_domain>`.
    pub(crate) fn api_route(&self) -> String {
        let domain = if self.system_domain.is_empty() {
            &self.apps_domain
        } else {
            &self.system_domain
        };
        format!("api.{domain}")
    }

    /// `external_url` without a trailing `/`.
    #[must_use]
    pub fn base_url(&self) -> &str {
        self.external_url.trim_end_matches('/')
    }

    /// The internal API's URL (`internal_url`, or `https://` + `internal_listen`), when the
    /// internal listener is served (`tls` set).
    #[must_use]
    pub fn internal_base_url(&self) -> Option<String> {
        self.tls.as_ref()?;
        let url = self.internal_url.trim().trim_end_matches('/');
        Some(if url.is_empty() {
            format!("https://{}", self.internal_listen)
        } else {
            url.to_owned()
        })
    }
}

/// Whether staging runs install steps in containers.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum IsolationMode {
    /// Each install step in a staging container (uid 2000, no platform environment, kernel
    /// limits, its own network namespace). The default.
    #[default]
    Container,
    /// Install steps run as the platform's own user with its environment, on its host: only
    /// for hosts that cannot make containers, chosen explicitly (`hydrant up --isolation
    /// none`); every build then says so in its `STG` lines.
    None,
}

/// `[staging_isolation]`: how staging runs the app's own code.
///
/// ```toml
/// [staging_isolation]
/// mode = "container"            # or "none"
/// memory_mb = 1024
/// attach_network = true         # false: loopback only, no egress at all
/// [staging_isolation.containers]
/// pids_limit = 2048
/// [staging_isolation.network]
/// bridge = "hydstg0"
/// subnet = "10.254.8.0/22"
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StagingIsolation {
    /// `container` (default) or `none`.
    pub mode: IsolationMode,
    /// Memory (and swap) one install step may use, MiB; past it the kernel kills it and the
    /// build fails saying "out of memory". Default 1024.
    pub memory_mb: u64,
    /// The container settings (runtime, cgroup parent, state dir, pids limit 2048, `/tmp`
    /// size). Defaults as in `hydrant-container`, with the cgroup parent and state dir filled
    /// in per cloud controller ([`Config::staging_containers`]).
    pub containers: hydrant_container::Config,
    /// Put staging containers on the staging network (public egress only, so package installs
    /// can download; the host, link-local and private ranges denied). Default true; false gives
    /// each a network namespace with loopback only.
    pub attach_network: bool,
    /// The staging network: its own bridge and subnet, apart from the executor's, so both run
    /// in one micro cloud. Default bridge `hydstg0`, subnet `10.254.8.0/22`, the container
    /// network's default denies.
    pub network: NetConfig,
}

/// The staging network's default bridge.
pub const STAGING_BRIDGE: &str = "hydstg0";
/// The staging network's default subnet.
pub const STAGING_SUBNET: &str = "10.254.8.0/22";

impl Default for StagingIsolation {
    fn default() -> Self {
        Self {
            mode: IsolationMode::Container,
            memory_mb: 1024,
            containers: hydrant_container::Config::default(),
            attach_network: true,
            network: NetConfig {
                bridge: STAGING_BRIDGE.to_owned(),
                subnet: STAGING_SUBNET.to_owned(),
                ..NetConfig::default()
            },
        }
    }
}

impl StagingIsolation {
    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field and what to write instead.
    pub fn validate(&self) -> Result<(), Error> {
        if !(64..=1024 * 1024).contains(&self.memory_mb) {
            return Err(invalid(
                "staging_isolation.memory_mb",
                "must be between 64 and 1048576 (MiB); default 1024",
            )
            .into());
        }
        self.containers
            .validate()
            .map_err(|e| invalid("staging_isolation.containers", e.to_string()))?;
        if self.attach_network {
            self.network
                .validate()
                .map_err(|e| invalid("staging_isolation.network", e.to_string()))?;
        }
        Ok(())
    }
}

/// True for a lower-case DNS name: labels of `a-z 0-9 -`, not starting or ending with `-`.
pub(crate) fn is_domain(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// One OAuth2 client (`[[clients]]`): a role that calls the API gets its tokens with
/// `grant_type = client_credentials` and this id and secret.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The client id (`client_id`). Letters, digits and `. _ -`.
    pub id: String,
    /// The secret inline. Set this or `secret_file`.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the secret (read at start).
    #[serde(default)]
    pub secret_file: Option<String>,
    /// The scopes its tokens carry (`admin`, `firehose`, `cloud_controller.read`,
    /// `cloud_controller.write`, ...). Default `["cloud_controller.read"]`.
    #[serde(default = "default_client_scopes")]
    pub scopes: Vec<String>,
    /// The audiences its tokens carry. Default `["hydrant-api"]`; add `"hydrant-logs"` for a
    /// client that also reads the firehose.
    #[serde(default = "default_client_audiences")]
    pub audiences: Vec<String>,
}

fn default_client_scopes() -> Vec<String> {
    vec![hydrant_auth::SCOPE_API_READ.to_owned()]
}

fn default_client_audiences() -> Vec<String> {
    vec![hydrant_auth::AUD_API.to_owned()]
}

impl ClientConfig {
    fn validate(&self, prefix: &str) -> Result<(), Error> {
        let ok_id = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok_id {
            return Err(invalid(
                format!("{prefix}id"),
                "use 1 to 64 letters, digits and . _ -",
            )
            .into());
        }
        match (&self.secret, &self.secret_file) {
            (Some(s), None) if s.len() >= 16 => {}
            (Some(_), None) => {
                return Err(
                    invalid(format!("{prefix}secret"), "use at least 16 characters").into(),
                );
            }
            (None, Some(f)) if !f.is_empty() => {}
            _ => {
                return Err(invalid(
                    format!("{prefix}secret"),
                    "set exactly one of secret or secret_file",
                )
                .into());
            }
        }
        for aud in &self.audiences {
            if ![hydrant_auth::AUD_API, hydrant_auth::AUD_LOGS].contains(&aud.as_str()) {
                return Err(invalid(
                    format!("{prefix}audiences"),
                    format!("{aud:?}: use \"hydrant-api\" and/or \"hydrant-logs\""),
                )
                .into());
            }
        }
        Ok(())
    }

    /// The secret: inline, or the file's contents (trimmed).
    pub(crate) fn load_secret(&self) -> Result<String, Error> {
        if let Some(secret) = &self.secret {
            return Ok(secret.clone());
        }
        let path = PathBuf::from(self.secret_file.as_deref().unwrap_or_default());
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let secret = text.trim().to_owned();
        if secret.len() < 16 {
            return Err(invalid(
                "clients.secret_file",
                format!("{} holds fewer than 16 characters", path.display()),
            )
            .into());
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrant_runtime::Validate as _;

    #[test]
    fn default_is_valid_and_documented_values_hold() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.listen, "127.0.0.1:9022");
        assert_eq!(config.apps_domain, "apps.localhost");
        assert!(config.token_keys_path().ends_with("token_keys"));
        assert_eq!(config.token_ttl_secs, 3600);
        let staging = &config.staging_isolation;
        assert_eq!(staging.mode, IsolationMode::Container);
        assert_eq!(staging.memory_mb, 1024);
        assert_eq!(staging.containers.pids_limit, 2048);
        assert_eq!(
            (
                staging.network.bridge.as_str(),
                staging.network.subnet.as_str()
            ),
            (STAGING_BRIDGE, STAGING_SUBNET)
        );
        assert_ne!(
            staging.network.bridge,
            hydrant_container::net::NetConfig::default().bridge,
            "staging has its own bridge, apart from the executor's"
        );
    }

    #[test]
    fn staging_isolation_parses_and_each_cloud_controller_gets_its_own_cgroup() {
        let config: Config = toml::from_str(
            "data_dir = \"a\"\n[staging_isolation]\nmode = \"none\"\nmemory_mb = 512\n\
             [staging_isolation.network]\nbridge = \"stg1\"\nsubnet = \"10.254.12.0/24\"\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.staging_isolation.mode, IsolationMode::None);
        assert_eq!(config.staging_isolation.network.bridge, "stg1");
        let a = config.staging_containers();
        let b = Config {
            data_dir: "b".into(),
            ..config
        }
        .staging_containers();
        assert!(a.cgroup_parent.starts_with("hydrant/staging-"), "{a:?}");
        assert_ne!(a.cgroup_parent, b.cgroup_parent);
        assert_eq!(a.state_dir, PathBuf::from("a").join("containers"));
        a.validate().unwrap();
        let err = toml::from_str::<Config>("[staging_isolation]\nmode = \"chroot\"\n").unwrap_err();
        assert!(err.to_string().contains("container"), "{err}");
    }

    #[test]
    fn the_internal_api_needs_an_address_with_tls_and_its_url_follows_it() {
        let config: Config = toml::from_str(
            "[tls]\nca_file = \"ca.pem\"\ncert_file = \"cc.pem\"\nkey_file = \"cc.key\"\n",
        )
        .unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("internal_listen"), "{err}");
        let served = Config {
            internal_listen: "127.0.0.1:9023".into(),
            ..config
        };
        served.validate().unwrap();
        assert_eq!(
            served.internal_base_url().as_deref(),
            Some("https://127.0.0.1:9023"),
            "droplet URLs go to the internal listener"
        );
        let named = Config {
            internal_url: "https://cc.internal:9023/".into(),
            ..served.clone()
        };
        assert_eq!(
            named.internal_base_url().as_deref(),
            Some("https://cc.internal:9023")
        );
        let plain = Config {
            internal_url: "http://cc.internal:9023".into(),
            ..served
        };
        let err = plain.validate().unwrap_err().to_string();
        assert!(err.contains("internal_url"), "{err}");
        assert_eq!(
            Config::default().internal_base_url(),
            None,
            "without tls, droplets come from external_url as before"
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = toml::from_str::<Config>("listne = \"x\"").unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");
        let config: Config = toml::from_str(
            "apps_domain = \"apps.example.com\"\n[bus]\nurl = \"inprocess://t\"\n\
             [endpoints]\nfirehose = \"ws://127.0.0.1:8088\"\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.endpoints["firehose"], "ws://127.0.0.1:8088");
    }

    #[test]
    fn db_url_defaults_to_sqlite_in_the_data_dir_and_never_shows_the_password() {
        let config = Config::default();
        assert_eq!(
            config.db_url(),
            DbUrl::Sqlite(PathBuf::from("data/cloudcontroller/cloudcontroller.db"))
        );
        let config: Config = toml::from_str(
            "[db]\nurl = \"postgres://cc:s3cret@10.0.0.5:5432/ccdb\"\nblobs_dir = \"/shared/blobs\"",
        )
        .unwrap_or_else(|_| {
            toml::from_str(
                "blobs_dir = \"/shared/blobs\"\n[db]\nurl = \"postgres://cc:s3cret@10.0.0.5:5432/ccdb\"",
            )
            .unwrap()
        });
        hydrant_runtime::Validate::validate(&config).unwrap();
        assert_eq!(
            config.db_url(),
            DbUrl::Postgres("postgres://cc:s3cret@10.0.0.5:5432/ccdb".into())
        );
        assert_eq!(config.blobs_path(), PathBuf::from("/shared/blobs"));
        for shown in [
            format!("{config:?}"),
            format!("{:?}", config.db_url()),
            config.db_url().shown(),
        ] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        assert_eq!(
            config.db_url().shown(),
            "postgres://cc:***@10.0.0.5:5432/ccdb"
        );
        let sqlite: Config = toml::from_str("[db]\nurl = \"sqlite:///var/cc.db\"").unwrap();
        assert_eq!(sqlite.db_url(), DbUrl::Sqlite(PathBuf::from("/var/cc.db")));
    }

    #[test]
    fn a_bad_db_url_says_what_to_write() {
        for url in [
            "mysql://root:hunter2@db/cc",
            "sqlite://",
            "postgres://u:hunter2@h:notaport/db",
        ] {
            let config = Config {
                db: DbConfig { url: url.into() },
                ..Config::default()
            };
            let e = hydrant_runtime::Validate::validate(&config)
                .unwrap_err()
                .to_string();
            assert!(e.contains("db.url"), "{e}");
            assert!(
                e.contains("postgres://USER:PASSWORD@HOST:PORT/DATABASE"),
                "{e}"
            );
            assert!(!e.contains("hunter2"), "the password leaked: {e}");
        }
    }

    #[test]
    fn a_db_url_asking_for_tls_must_name_a_readable_ca_and_no_plain_fallback() {
        let ca = tempfile::NamedTempFile::new().unwrap();
        let certs = tempfile::tempdir().unwrap();
        let ca_file = hydrant_tls::issue::init(certs.path(), 1).unwrap().ca_file();
        let base = "postgres://u:hunter2@10.0.0.5:5432/ccdb";
        let check = |query: String| {
            let config = Config {
                db: DbConfig {
                    url: format!("{base}?{query}"),
                },
                ..Config::default()
            };
            hydrant_runtime::Validate::validate(&config).map_err(|e| e.to_string())
        };
        let ca = ca.path().display();
        let ours = ca_file.display();
        for (query, says) in [
            ("sslmode=require".to_owned(), "sslrootcert=PATH"),
            (format!("sslmode=prefer&sslrootcert={ours}"), "verify-full"),
            (format!("sslmode=allow&sslrootcert={ours}"), "sslmode=allow"),
            ("sslrootcert=/nonexistent/ca.pem".to_owned(), "cannot read"),
            (format!("sslrootcert={ca}"), "holds no certificate"),
        ] {
            let e = check(query.clone()).expect_err(&query);
            assert!(e.contains("db.url") && e.contains(says), "{query}: {e}");
            assert!(!e.contains("hunter2"), "the password leaked: {e}");
        }
        for query in [
            format!("sslrootcert={ours}"),
            format!("sslmode=verify-full&sslrootcert={ours}&connect_timeout=3"),
            "sslmode=disable".to_owned(),
        ] {
            check(query.clone()).unwrap_or_else(|e| panic!("{query}: {e}"));
        }
    }

    #[test]
    fn rejections_name_the_field() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    listen: "nope".into(),
                    ..Config::default()
                },
                "listen",
            ),
            (
                Config {
                    apps_domain: "Apps..x".into(),
                    ..Config::default()
                },
                "apps_domain",
            ),
            (
                Config {
                    external_url: "ftp://x".into(),
                    ..Config::default()
                },
                "external_url",
            ),
            (
                Config {
                    admin_password: Some("short".into()),
                    ..Config::default()
                },
                "admin_password",
            ),
            (
                Config {
                    staging_queue: 0,
                    ..Config::default()
                },
                "staging_queue",
            ),
            (
                Config {
                    staging_isolation: StagingIsolation {
                        memory_mb: 1,
                        ..StagingIsolation::default()
                    },
                    ..Config::default()
                },
                "staging_isolation.memory_mb",
            ),
            (
                Config {
                    staging_isolation: StagingIsolation {
                        network: NetConfig {
                            bridge: "hydrant-stg0".into(),
                            ..NetConfig::default()
                        },
                        ..StagingIsolation::default()
                    },
                    ..Config::default()
                },
                "staging_isolation.network",
            ),
            (
                Config {
                    password_hash_iterations: 1,
                    ..Config::default()
                },
                "password_hash_iterations",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
