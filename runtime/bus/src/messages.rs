//! The control-plane messages: their subjects, JSON payloads, publishers and cadence.
//!
//! Every message is small JSON, idempotent (applying it twice is applying it once) and
//! periodically re-sent by its publisher (see [`crate::Announcer`]), so a lost message is
//! repaired by the next one rather than by retries. Decoding ignores unknown fields and defaults
//! missing ones, as Go's `encoding/json` does, so gorouter-era peers and newer Hydrant versions
//! interoperate.
//!
//! | subject | payload | published by | when |
//! |---|---|---|---|
//! | `router.register.<executor_id>` (or plain `router.register`, gorouter's, from other emitters) | [`RegistryMessage`] | executor, per running instance | on RUNNING, every [`REGISTER_INTERVAL`], at once on (re)connect and on `router.start` |
//! | `router.unregister.<executor_id>` (or plain `router.unregister`) | [`RegistryMessage`] (matched on `host`, `port`/`tls_port`, `uris`) | executor | when an instance stops or crashes |
//! | `router.assigned` | [`RouteAssignments`] | cloud controller | on every route change and every 5 s |
//! | `router.greet` | request, empty body; reply [`RouterStart`] | anyone who needs the router's timings | at boot |
//! | `router.start` | [`RouterStart`] | router | at boot and on every bus reconnect |
//! | `executor.heartbeat.<executor_id>` | [`ExecutorHeartbeat`] | executor | every [`HEARTBEAT_INTERVAL`] and on (re)connect |
//! | `executor.crash.<executor_id>` | [`ExecutorCrash`] | executor | once per crash |
//! | `executor.placed.<executor_id>` | [`InstancePlaced`] (no environment, no droplet token) | cloud controller, health manager | just before each start request |
//! | `executor.start.<executor_id>` | request [`StartInstance`]; reply [`ExecutorReply`] | cloud controller, health manager | to place an instance; re-sent by convergence until it shows in heartbeats |
//! | `executor.stop.<executor_id>` | request [`StopInstance`]; reply [`ExecutorReply`] | cloud controller, health manager | to stop instances; re-sent until they leave heartbeats |
//! | `executor.presence.<executor_id>` | [`CellPresence`] (`dea.advertise` field names) | executor | every [`PRESENCE_INTERVAL`], at once on every change; stale after its `ttl_secs` ([`PRESENCE_TTL`]) |
//! | `executor.evacuate.<executor_id>` | [`EvacuateCell`] | cloud controller (`hydrant drain-cell`) | until the cell's presence says `evacuating` |
//! | `executor.kill.<executor_id>` | [`EvacuateCell`] (its `reason`) | cloud controller (`hydrant debug kill-cell`) | once; only a cell with `debug_kill` obeys |
//! | `doppler.announce` | [`DopplerAnnounce`] | doppler | every [`DOPPLER_ANNOUNCE_INTERVAL`]; stale after its `ttl_secs` (3 intervals) |
//!
//! Heartbeats and crashes name their cell twice, in the subject and in `executor_id`; on the
//! authenticated bus a cell may publish only its own subject, so a consumer that finds the two
//! differ, or a report about an instance placed on another cell, drops it
//! ([`crate::placement`]).
//!
//! `router.*` payloads use gorouter's field names exactly, so a stock gorouter or route-emitter
//! can share the bus. Start and stop requests are addressed to one executor by subject
//! (`executor.start.e1`), as the DEA's `dea.<uuid>.start` was; `executor.start.*` watches all.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Add or refresh a route: [`RegistryMessage`].
pub const ROUTER_REGISTER: &str = "router.register";
/// Remove a route: [`RegistryMessage`].
pub const ROUTER_UNREGISTER: &str = "router.unregister";
/// Ask the router for its timings (request/reply; the reply is a [`RouterStart`]).
pub const ROUTER_GREET: &str = "router.greet";
/// The router (re)started or reconnected: re-register everything now. Payload [`RouterStart`].
pub const ROUTER_START: &str = "router.start";
/// Which routes the cloud controller assigned to which app: [`RouteAssignments`], a full
/// snapshot; the router refuses registrations outside it.
pub const ROUTER_ASSIGNED: &str = "router.assigned";
/// Prefix of the per-cell heartbeat subject ([`ExecutorHeartbeat`]); see
/// [`executor_heartbeat_subject`].
pub const EXECUTOR_HEARTBEAT: &str = "executor.heartbeat";
/// Anyone who keeps an executor table (the cloud controller, the health manager) (re)started:
/// every executor heartbeats now instead of at its next interval. Empty payload.
pub const EXECUTOR_GREET: &str = "executor.greet";
/// Prefix of the per-cell crash subject ([`ExecutorCrash`]); see [`executor_crash_subject`].
pub const EXECUTOR_CRASH: &str = "executor.crash";
/// Prefix of the per-cell placement subject ([`InstancePlaced`]); see
/// [`executor_placed_subject`].
pub const EXECUTOR_PLACED: &str = "executor.placed";
/// Prefix of the per-executor start subject; see [`executor_start_subject`].
pub const EXECUTOR_START: &str = "executor.start";
/// Prefix of the per-executor stop subject; see [`executor_stop_subject`].
pub const EXECUTOR_STOP: &str = "executor.stop";

/// Prefix of the per-cell presence subject ([`CellPresence`]); see
/// [`executor_presence_subject`].
pub const EXECUTOR_PRESENCE: &str = "executor.presence";
/// Prefix of the per-cell evacuation request subject ([`EvacuateCell`]).
pub const EXECUTOR_EVACUATE: &str = "executor.evacuate";
/// Prefix of the per-cell debug kill subject ([`EvacuateCell`]): a cell with `debug_kill`
/// goes silent and kills its instances at once, as a lost host would.
pub const EXECUTOR_KILL: &str = "executor.kill";
/// The health managers' lease (Locket-style, on the bus): each copy's claim
/// `{"holder","held","ttl_ms"}`, renewed every second by the holder; only the holder acts.
pub const HEALTHMANAGER_LEASE: &str = "healthmanager.lease";
/// How often a cell advertises its presence (Diego's `lock_retry_interval`, the DEA's
/// `intervals.advertise`: 5 s).
pub const PRESENCE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a presence lives without a refresh (Diego's cell presence `lock_ttl`: 15 s).
pub const PRESENCE_TTL: Duration = Duration::from_secs(15);

/// A doppler's advertisement ([`DopplerAnnounce`]): agents and firehose edges that follow the
/// announced set give a new doppler a lane within one interval and drop one whose announcement
/// lapsed.
pub const DOPPLER_ANNOUNCE: &str = "doppler.announce";
/// How often a doppler announces itself (the DEA's `intervals.advertise`: 5 s).
pub const DOPPLER_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(5);

/// How often routes are re-registered (gorouter's `minimumRegisterIntervalInSeconds`, 20 s).
pub const REGISTER_INTERVAL: Duration = Duration::from_secs(20);
/// How long a route lives without a re-register (gorouter's `droplet_stale_threshold`, 120 s).
pub const PRUNE_THRESHOLD: Duration = Duration::from_secs(120);
/// How often an executor sends [`ExecutorHeartbeat`] (the DEA's heartbeat period, 10 s).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// The subject on which executor `executor_id` takes [`StartInstance`] requests.
/// Executor ids must be one subject token: no `.`, spaces, `*` or `>`.
#[must_use]
pub fn executor_start_subject(executor_id: &str) -> String {
    format!("{EXECUTOR_START}.{executor_id}")
}

/// The subject on which executor `executor_id` heartbeats: `executor.heartbeat.<id>`. Per
/// cell, so that on an authenticated bus (where each cell may publish only its own) a consumer
/// knows which cell sent it.
#[must_use]
pub fn executor_heartbeat_subject(executor_id: &str) -> String {
    format!("{EXECUTOR_HEARTBEAT}.{executor_id}")
}

/// The subject on which executor `executor_id` reports crashes: `executor.crash.<id>`.
#[must_use]
pub fn executor_crash_subject(executor_id: &str) -> String {
    format!("{EXECUTOR_CRASH}.{executor_id}")
}

/// The subject announcing that an instance was placed on `executor_id`:
/// `executor.placed.<id>`.
#[must_use]
pub fn executor_placed_subject(executor_id: &str) -> String {
    format!("{EXECUTOR_PLACED}.{executor_id}")
}

/// The pattern that watches every cell's `prefix.<cell>` subject (`executor.heartbeat.*`).
#[must_use]
pub fn every_cell(prefix: &str) -> String {
    format!("{prefix}.*")
}

/// The cell a per-cell subject names: `cell_of("executor.crash.e1", EXECUTOR_CRASH)` is
/// `Some("e1")`; `None` for another subject or one without exactly one cell token.
#[must_use]
pub fn cell_of<'a>(subject: &'a str, prefix: &str) -> Option<&'a str> {
    subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
        .filter(|cell| !cell.is_empty() && !cell.contains('.'))
}

/// The subject on which executor `executor_id` registers its instances' routes:
/// `router.register.<executor_id>`. Per cell, so that on an authenticated bus (where each cell
/// may publish only its own) the router knows which cell sent a registration.
#[must_use]
pub fn router_register_subject(executor_id: &str) -> String {
    format!("{ROUTER_REGISTER}.{executor_id}")
}

/// The subject on which executor `executor_id` unregisters routes: `router.unregister.<id>`.
#[must_use]
pub fn router_unregister_subject(executor_id: &str) -> String {
    format!("{ROUTER_UNREGISTER}.{executor_id}")
}

/// Splits a route subject into (`router.register` or `router.unregister`, the cell that sent
/// it, if the subject names one). `None` for any other subject.
#[must_use]
pub fn route_subject(subject: &str) -> Option<(&'static str, Option<&str>)> {
    for base in [ROUTER_REGISTER, ROUTER_UNREGISTER] {
        if subject == base {
            return Some((base, None));
        }
        if let Some(cell) = subject
            .strip_prefix(base)
            .and_then(|rest| rest.strip_prefix('.'))
            .filter(|cell| !cell.is_empty() && !cell.contains('.'))
        {
            return Some((base, Some(cell)));
        }
    }
    None
}

/// The subject on which cell `executor_id` advertises its presence: `executor.presence.<id>`.
#[must_use]
pub fn executor_presence_subject(executor_id: &str) -> String {
    format!("{EXECUTOR_PRESENCE}.{executor_id}")
}

/// The subject on which cell `executor_id` takes evacuation requests: `executor.evacuate.<id>`.
#[must_use]
pub fn executor_evacuate_subject(executor_id: &str) -> String {
    format!("{EXECUTOR_EVACUATE}.{executor_id}")
}

/// The subject on which cell `executor_id` takes debug kill requests: `executor.kill.<id>`.
#[must_use]
pub fn executor_kill_subject(executor_id: &str) -> String {
    format!("{EXECUTOR_KILL}.{executor_id}")
}

/// The subject on which executor `executor_id` takes [`StopInstance`] requests.
#[must_use]
pub fn executor_stop_subject(executor_id: &str) -> String {
    format!("{EXECUTOR_STOP}.{executor_id}")
}

/// Encodes a message as the JSON bytes to publish.
pub fn encode<T: Serialize>(message: &T) -> Result<Bytes, Error> {
    serde_json::to_vec(message)
        .map(Bytes::from)
        .map_err(|source| Error::Encode {
            what: std::any::type_name::<T>(),
            source,
        })
}

/// `router.register` / `router.unregister`: one backend (`host:port`) for one or more URIs.
/// Field names are gorouter's `RegistryMessage`; optional fields are omitted when unset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryMessage {
    /// Backend IP or host name.
    pub host: String,
    /// Backend plain-HTTP port.
    pub port: u16,
    /// Backend TLS port; preferred over `port` by a router with backend TLS enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_port: Option<u16>,
    /// `http1` (default when absent) or `http2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Host names, optionally with a path (`myapp.example.com/path`), routed to this backend.
    pub uris: Vec<String>,
    /// The app's guid (access-log `app_id`, header `X-CF-ApplicationID`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The instance's guid (header `X-CF-InstanceID`, sticky-session cookie).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_instance_id: Option<String>,
    /// The instance index as a decimal string (header `X-CF-InstanceIndex`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_instance_index: Option<String>,
    /// The SAN the backend's TLS certificate must carry (the instance guid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cert_domain_san: Option<String>,
    /// A route service to pass requests through (must be https).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_service_url: Option<String>,
    /// Isolation segment name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation_segment: Option<String>,
    /// Availability zone of the backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// Route TTL for this endpoint, seconds; absent or 0 means the router's default (120).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_threshold_in_seconds: Option<u64>,
    /// When the endpoint last changed, UNIX nanoseconds (for registration-latency metrics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_updated_at_ns: Option<i64>,
    /// Metric tags (`component`, `app_id`, `source_id`, `instance_id`, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Per-route options, e.g. `{"loadbalancing": "least-connection"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<RegistryOptions>,
}

/// The `options` object of a [`RegistryMessage`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryOptions {
    /// `round-robin` or `least-connection`, overriding the router's default for this route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadbalancing: Option<String>,
}

impl RegistryMessage {
    /// A registration of `host:port` for `uris`, everything else unset.
    #[must_use]
    pub fn new(host: &str, port: u16, uris: Vec<String>) -> Self {
        Self {
            host: host.to_owned(),
            port,
            uris,
            ..Self::default()
        }
    }

    /// The TTL this message asks for, or `default` when it names none (absent or 0).
    #[must_use]
    pub fn stale_threshold(&self, default: Duration) -> Duration {
        match self.stale_threshold_in_seconds {
            Some(secs) if secs > 0 => Duration::from_secs(secs),
            _ => default,
        }
    }
}

/// `router.assigned`: every app's routes (`host.domain[/path]`) as the cloud controller
/// assigned them, a full snapshot sent on every change and every few seconds. A router that has
/// one refuses a registration naming a route its app was not given (Hydrant's; gorouter has no
/// such check).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteAssignments {
    /// App guid to its routes.
    pub apps: BTreeMap<String, Vec<String>>,
    /// The platform's own endpoints: a route (`api.<system domain>`) to the `host:port` of
    /// every live controller serving it. Every controller sends the same list (it reads the
    /// shared database), so two never erase each other's; the router serves exactly the
    /// backends the last snapshot names.
    pub endpoints: BTreeMap<String, Vec<String>>,
}

/// `router.start` and the reply to `router.greet`: the router's identity and timings.
/// Key names are gorouter's (camelCase).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouterStart {
    /// The router's id, unique per boot.
    pub id: String,
    /// The router's addresses.
    pub hosts: Vec<String>,
    /// How often registrations must be repeated, seconds (20).
    #[serde(rename = "minimumRegisterIntervalInSeconds")]
    pub minimum_register_interval_in_seconds: u64,
    /// How long an unrefreshed route lives, seconds (120). gorouter's docs misspell the key as
    /// `prunteThresholdInSeconds`; that spelling is accepted too.
    #[serde(rename = "pruneThresholdInSeconds", alias = "prunteThresholdInSeconds")]
    pub prune_threshold_in_seconds: u64,
}

impl Default for RouterStart {
    fn default() -> Self {
        Self {
            id: String::new(),
            hosts: Vec::new(),
            minimum_register_interval_in_seconds: REGISTER_INTERVAL.as_secs(),
            prune_threshold_in_seconds: PRUNE_THRESHOLD.as_secs(),
        }
    }
}

impl RouterStart {
    /// The interval registrations should use: the advertised one, or 20 s if it is 0.
    #[must_use]
    pub fn register_interval(&self) -> Duration {
        match self.minimum_register_interval_in_seconds {
            0 => REGISTER_INTERVAL,
            secs => Duration::from_secs(secs),
        }
    }
}

/// An instance's state as users see it (Cloud Foundry's `/v3/processes/:guid/stats` states).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    /// Placed, not yet healthy.
    #[default]
    Starting,
    /// Healthy and routable.
    Running,
    /// Exited or failed its health check; waiting for a restart.
    Crashed,
    /// Being stopped gracefully.
    Stopping,
    /// Not running and not placed.
    Down,
}

/// Memory and instance-slot amounts, for an executor's capacity and usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// Memory, MiB.
    pub memory_mb: u64,
    /// Instance slots.
    pub instances: u32,
}

/// `executor.heartbeat`: everything an executor runs, sent every [`HEARTBEAT_INTERVAL`]. The
/// health manager treats it as actual state; the cloud controller places instances with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecutorHeartbeat {
    /// The executor's id (one subject token; also its start/stop subject suffix).
    pub executor_id: String,
    /// The address its instances listen on (the `host` of its route registrations).
    pub host: String,
    /// What it can run in total.
    pub capacity: Resources,
    /// What its instances currently reserve.
    pub used: Resources,
    /// Every instance it knows, in any state but gone.
    pub instances: Vec<InstanceHeartbeat>,
}

/// One instance in an [`ExecutorHeartbeat`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceHeartbeat {
    /// The app's guid.
    pub app: String,
    /// The instance's guid.
    pub instance: String,
    /// The instance index.
    pub index: u32,
    /// Its state.
    pub state: InstanceState,
    /// When it entered `state`, UNIX nanoseconds.
    pub since: i64,
    /// The port it listens on, once assigned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// `executor.crash`: one instance crashed. Field names follow Cloud Foundry's crash payload
/// (`instance`, `index`, `reason`, `exit_description`, `crash_count`, `crash_timestamp`), plus
/// the DEA's `exit_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecutorCrash {
    /// The executor that ran it.
    pub executor_id: String,
    /// The app's guid.
    pub app: String,
    /// The instance's guid.
    pub instance: String,
    /// The instance index.
    pub index: u32,
    /// `CRASHED` for a crash.
    pub reason: String,
    /// The process exit status, when it exited (absent for a failed health check).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// What happened, for humans: `APP/PROC/WEB: Exited with status 1 (out of memory)`.
    pub exit_description: String,
    /// How many times this index has crashed in a row, when the publisher knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash_count: Option<u32>,
    /// When it crashed, UNIX nanoseconds.
    pub crash_timestamp: i64,
}

/// How an executor decides an instance is healthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckType {
    /// A TCP connect to `PORT` succeeds (the default).
    #[default]
    Port,
    /// `GET http://127.0.0.1:PORT{endpoint}` answers 200.
    Http,
    /// The process is alive.
    Process,
}

/// The health check of a [`StartInstance`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthCheck {
    /// Which check.
    #[serde(rename = "type")]
    pub kind: HealthCheckType,
    /// Path for `http` checks (e.g. `/health`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// How long the instance may take to become healthy, seconds (absent: the executor's
    /// default, 60).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
}

/// Request on `executor.start.<executor_id>`: run this instance. Idempotent by `instance`: an
/// executor already running that guid accepts without starting a second copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StartInstance {
    /// The executor asked (must match the subject; others refuse).
    pub executor_id: String,
    /// The app's guid.
    pub app: String,
    /// The app's name, for logs and `VCAP_APPLICATION`.
    pub app_name: String,
    /// The new instance's guid.
    pub instance: String,
    /// The instance index.
    pub index: u32,
    /// Where to fetch the droplet (a `file://` path in the micro cloud, else an http URL).
    pub droplet_url: String,
    /// The droplet's SHA-256, hex; the executor refuses a droplet that does not match.
    pub droplet_sha256: String,
    /// The command that starts the app inside the droplet.
    pub start_command: String,
    /// Extra environment (the executor adds `PORT`, `CF_INSTANCE_*`, `VCAP_APPLICATION`).
    pub env: BTreeMap<String, String>,
    /// Memory limit, MiB.
    pub memory_mb: u64,
    /// Disk limit, MiB.
    pub disk_mb: u64,
    /// Routes to register once the instance is healthy.
    pub uris: Vec<String>,
    /// How to tell it is healthy.
    pub health_check: HealthCheck,
    /// Tags added to its logs and metrics (`space_id`, `org_id`, `process_type`, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Where the app's service bindings point: a contained instance may open TCP to these and,
    /// on the host, to nothing else. Rebuilt at every start from the app's bindings, so an
    /// unbind and a restart close the path. Absent in older messages (no bindings).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<ServiceEgress>,
    /// The app's grace between SIGTERM and SIGKILL at a stop, seconds. Absent in older
    /// messages: the executor's own `stop_timeout_secs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout_secs: Option<u32>,
}

/// One TCP endpoint a bound service's credentials name (its `host`/`hostname` and `port`, or
/// its `uri`), as the cloud controller read it: unchecked here, so the executor validates it
/// (an IP literal, a port in 1-65535) before it becomes a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceEgress {
    /// The service instance's name, for the rule's description and log lines.
    pub service: String,
    /// The host the credentials name.
    pub host: String,
    /// The port the credentials name; wider than `u16` so a bad one reaches the executor's
    /// check (and its log line) instead of failing the whole message.
    pub port: u32,
}

/// Request on `executor.stop.<executor_id>`: stop one instance, or every instance of an app.
/// Idempotent: stopping what is not running succeeds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StopInstance {
    /// The executor asked (must match the subject; others refuse).
    pub executor_id: String,
    /// The app's guid.
    pub app: String,
    /// The instance's guid; absent means every instance of `app` on this executor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Why, for the app's log stream (`scaled down`, `app stopped`, `duplicate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `executor.placed.<executor_id>`: an instance was (or is about to be) placed on that cell.
/// The slim side of a [`StartInstance`]: who runs what, without the environment or the
/// droplet URL's token, so the router can check registrations without reading start commands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstancePlaced {
    /// The cell asked to run it (must match the subject; consumers ignore it otherwise).
    pub executor_id: String,
    /// The app's guid.
    pub app: String,
    /// The instance's guid.
    pub instance: String,
    /// The instance index.
    pub index: u32,
}

impl From<&StartInstance> for InstancePlaced {
    fn from(start: &StartInstance) -> Self {
        Self {
            executor_id: start.executor_id.clone(),
            app: start.app.clone(),
            instance: start.instance.clone(),
            index: start.index,
        }
    }
}

/// A cell's health as placement sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellState {
    /// Advertising and taking work.
    #[default]
    Healthy,
    /// Moving its instances elsewhere: takes no new work, keeps its instances serving until
    /// their replacements run.
    Evacuating,
    /// Its presence expired (never advertised by a cell; the controller's verdict).
    Lost,
}

impl CellState {
    /// `healthy`, `evacuating` or `lost`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Evacuating => "evacuating",
            Self::Lost => "lost",
        }
    }
}

/// The DEA's `placement_properties` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlacementProperties {
    /// The availability zone.
    pub zone: String,
}

/// What a cell can hold in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CellCapacity {
    /// Memory, MiB.
    pub memory_mb: u64,
    /// Disk, MiB.
    pub disk_mb: u64,
    /// Container slots.
    pub containers: u32,
}

/// How an evacuation is going, in a [`CellPresence`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvacuationProgress {
    /// When it began, UNIX nanoseconds.
    pub started_at: i64,
    /// When the cell stops whatever is left, UNIX nanoseconds.
    pub deadline_at: i64,
    /// Instances still on the cell.
    pub remaining: u32,
    /// Why (`SIGTERM`, `hydrant drain-cell`).
    pub reason: String,
}

/// `executor.presence.<executor_id>`: the cell is alive, where it is and what it has free.
/// Diego's cell presence (a 15 s TTL refreshed every 5 s) with the DEA's `dea.advertise` field
/// names (`id`, `stacks`, `available_memory`, `available_disk`, `app_id_to_count`,
/// `placement_properties.zone`), plus what the auction scores with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CellPresence {
    /// The cell's id (its executor id; must match the subject).
    pub id: String,
    /// Its zone, as the DEA put it.
    pub placement_properties: PlacementProperties,
    /// Root filesystems it runs (`cflinuxfs4`).
    pub stacks: Vec<String>,
    /// The address its instances listen on.
    pub host: String,
    /// Free memory, MiB.
    pub available_memory: u64,
    /// Free disk, MiB.
    pub available_disk: u64,
    /// Free container slots.
    pub available_containers: u32,
    /// Totals.
    pub capacity: CellCapacity,
    /// Live instances per app guid.
    pub app_id_to_count: BTreeMap<String, u32>,
    /// Instances still starting (the auction's `StartingContainerCount`).
    pub starting: u32,
    /// `healthy` or `evacuating`.
    pub state: CellState,
    /// How long this presence lives without a refresh, seconds (15).
    pub ttl_secs: u64,
    /// Present while evacuating.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evacuation: Option<EvacuationProgress>,
}

impl CellPresence {
    /// The cell's zone.
    #[must_use]
    pub fn zone(&self) -> &str {
        &self.placement_properties.zone
    }

    /// How long this presence lives: its `ttl_secs`, or [`PRESENCE_TTL`] when it names none,
    /// never more than a minute (a hostile cell cannot make itself immortal).
    #[must_use]
    pub fn ttl(&self) -> Duration {
        match self.ttl_secs {
            0 => PRESENCE_TTL,
            secs => Duration::from_secs(secs.min(60)),
        }
    }
}

/// `executor.evacuate.<executor_id>` and `executor.kill.<executor_id>`: move everything off
/// the cell (or, for kill, die as a lost host would).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvacuateCell {
    /// The cell asked (must match the subject).
    pub executor_id: String,
    /// Why, for the cell's log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `doppler.announce`: a doppler is up and where to reach it, re-sent every interval. Like a
/// cell's presence it is soft state: a follower forgets a doppler it has not heard from for
/// [`DopplerAnnounce::ttl`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DopplerAnnounce {
    /// The doppler's id (its `instance_id`, which also names it in firehose cursors).
    pub id: String,
    /// The URL agents send to (v2 Ingress), e.g. `http://10.0.0.7:8082`.
    pub ingress: String,
    /// The URL firehose edges read from (v2 Egress and the log cache).
    pub egress: String,
    /// How long this announcement lives without a refresh, seconds (3 intervals).
    pub ttl_secs: u64,
}

impl DopplerAnnounce {
    /// How long this announcement lives: its `ttl_secs`, or 3 × [`DOPPLER_ANNOUNCE_INTERVAL`]
    /// when it names none, never more than a minute (a hostile announcement cannot pin a lane
    /// for ever).
    #[must_use]
    pub fn ttl(&self) -> Duration {
        match self.ttl_secs {
            0 => DOPPLER_ANNOUNCE_INTERVAL * 3,
            secs => Duration::from_secs(secs.min(60)),
        }
    }
}

/// An executor's reply to [`StartInstance`] or [`StopInstance`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecutorReply {
    /// The executor answering.
    pub executor_id: String,
    /// Whether it took the request (or it was already satisfied).
    pub accepted: bool,
    /// Why not, when refused (`insufficient memory`, `wrong executor`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn roundtrip<T>(value: &T) -> T
    where
        T: Serialize + for<'de> Deserialize<'de>,
    {
        serde_json::from_slice(&encode(value).unwrap()).unwrap()
    }

    /// A register message in the shape gorouter's route-emitter sends, unknown keys included.
    const GOROUTER_REGISTER: &str = r#"{
        "host": "10.244.0.17",
        "port": 61012,
        "tls_port": 61013,
        "protocol": "http1",
        "uris": ["shop.apps.internal", "shop.apps.internal/api"],
        "app": "6c1c2b6a-0b49-4c7e-9a1e-3f2f5a1d9e10",
        "private_instance_id": "a7e2c4d1-52f6-4b7b-6c55-0e91",
        "private_instance_index": "3",
        "server_cert_domain_san": "a7e2c4d1-52f6-4b7b-6c55-0e91",
        "isolation_segment": "",
        "availability_zone": "z2",
        "stale_threshold_in_seconds": 120,
        "endpoint_updated_at_ns": 1714000000000000000,
        "tags": {"component": "route-emitter", "source_id": "6c1c2b6a-0b49-4c7e-9a1e-3f2f5a1d9e10"},
        "options": {"loadbalancing": "least-connection"},
        "route_service_url": "https://rs.example.net/svc",
        "some_future_field": {"nested": true}
    }"#;

    #[test]
    fn decodes_a_gorouter_register_message() {
        let m: RegistryMessage = serde_json::from_str(GOROUTER_REGISTER).unwrap();
        assert_eq!(m.host, "10.244.0.17");
        assert_eq!(m.port, 61012);
        assert_eq!(m.tls_port, Some(61013));
        assert_eq!(m.protocol.as_deref(), Some("http1"));
        assert_eq!(m.uris, ["shop.apps.internal", "shop.apps.internal/api"]);
        assert_eq!(
            m.app.as_deref(),
            Some("6c1c2b6a-0b49-4c7e-9a1e-3f2f5a1d9e10")
        );
        assert_eq!(m.private_instance_index.as_deref(), Some("3"));
        assert_eq!(
            m.server_cert_domain_san.as_deref(),
            m.private_instance_id.as_deref()
        );
        assert_eq!(m.stale_threshold(PRUNE_THRESHOLD), Duration::from_secs(120));
        assert_eq!(m.tags["component"], "route-emitter");
        assert_eq!(
            m.options.and_then(|o| o.loadbalancing).as_deref(),
            Some("least-connection")
        );
        assert_eq!(
            m.route_service_url.as_deref(),
            Some("https://rs.example.net/svc")
        );
    }

    #[test]
    fn encodes_register_with_exactly_gorouters_keys() {
        let mut m = RegistryMessage::new("10.0.0.5", 61001, vec!["app.example.com".into()]);
        m.app = Some("app-guid".into());
        m.private_instance_id = Some("inst-guid".into());
        m.private_instance_index = Some("0".into());
        m.stale_threshold_in_seconds = Some(120);
        m.tags.insert("component".into(), "executor".into());
        let golden = json!({
            "host": "10.0.0.5",
            "port": 61001,
            "uris": ["app.example.com"],
            "app": "app-guid",
            "private_instance_id": "inst-guid",
            "private_instance_index": "0",
            "stale_threshold_in_seconds": 120,
            "tags": {"component": "executor"}
        });
        let encoded: Value = serde_json::from_slice(&encode(&m).unwrap()).unwrap();
        assert_eq!(encoded, golden);
        assert_eq!(roundtrip(&m), m);
    }

    #[test]
    fn minimal_and_empty_register_messages_decode_with_defaults() {
        let m: RegistryMessage =
            serde_json::from_str(r#"{"host":"h","port":1,"uris":["a"]}"#).unwrap();
        assert_eq!(m, RegistryMessage::new("h", 1, vec!["a".into()]));
        assert_eq!(m.stale_threshold(PRUNE_THRESHOLD), PRUNE_THRESHOLD);
        let zero: RegistryMessage =
            serde_json::from_str(r#"{"stale_threshold_in_seconds":0}"#).unwrap();
        assert_eq!(zero.stale_threshold(PRUNE_THRESHOLD), PRUNE_THRESHOLD);
        assert!(serde_json::from_str::<RegistryMessage>(r#"{"port":70000}"#).is_err());
        assert!(serde_json::from_str::<RegistryMessage>("[1,2]").is_err());
    }

    #[test]
    fn router_start_uses_gorouters_camel_case_keys() {
        let start = RouterStart {
            id: "0-9f1c".into(),
            hosts: vec!["10.0.1.5".into()],
            ..RouterStart::default()
        };
        let encoded: Value = serde_json::from_slice(&encode(&start).unwrap()).unwrap();
        assert_eq!(
            encoded,
            json!({
                "id": "0-9f1c",
                "hosts": ["10.0.1.5"],
                "minimumRegisterIntervalInSeconds": 20,
                "pruneThresholdInSeconds": 120
            })
        );
        assert_eq!(roundtrip(&start), start);
        let misspelt: RouterStart = serde_json::from_str(
            r#"{"id":"x","hosts":[],"minimumRegisterIntervalInSeconds":5,"prunteThresholdInSeconds":60}"#,
        )
        .unwrap();
        assert_eq!(misspelt.prune_threshold_in_seconds, 60);
        assert_eq!(misspelt.register_interval(), Duration::from_secs(5));
        let zero: RouterStart =
            serde_json::from_str(r#"{"minimumRegisterIntervalInSeconds":0}"#).unwrap();
        assert_eq!(zero.register_interval(), REGISTER_INTERVAL);
    }

    #[test]
    fn heartbeat_round_trips_with_upper_case_states() {
        let hb = ExecutorHeartbeat {
            executor_id: "e1".into(),
            host: "10.0.0.7".into(),
            capacity: Resources {
                memory_mb: 8192,
                instances: 50,
            },
            used: Resources {
                memory_mb: 256,
                instances: 2,
            },
            instances: vec![
                InstanceHeartbeat {
                    app: "a1".into(),
                    instance: "i1".into(),
                    index: 0,
                    state: InstanceState::Running,
                    since: 1_700_000_000_000_000_000,
                    port: Some(61000),
                },
                InstanceHeartbeat {
                    app: "a1".into(),
                    instance: "i2".into(),
                    index: 1,
                    state: InstanceState::Starting,
                    since: 1_700_000_000_500_000_000,
                    port: None,
                },
            ],
        };
        let value: Value = serde_json::from_slice(&encode(&hb).unwrap()).unwrap();
        assert_eq!(value["instances"][0]["state"], "RUNNING");
        assert_eq!(value["instances"][1]["state"], "STARTING");
        assert_eq!(value["capacity"]["memory_mb"], 8192);
        assert!(value["instances"][1].get("port").is_none());
        assert_eq!(roundtrip(&hb), hb);
        for (text, state) in [
            ("STARTING", InstanceState::Starting),
            ("RUNNING", InstanceState::Running),
            ("CRASHED", InstanceState::Crashed),
            ("STOPPING", InstanceState::Stopping),
            ("DOWN", InstanceState::Down),
        ] {
            assert_eq!(
                serde_json::from_value::<InstanceState>(json!(text)).unwrap(),
                state
            );
        }
        assert!(serde_json::from_value::<InstanceState>(json!("EXPLODED")).is_err());
    }

    #[test]
    fn crash_uses_the_reference_field_names() {
        let crash = ExecutorCrash {
            executor_id: "e1".into(),
            app: "a1".into(),
            instance: "i1".into(),
            index: 2,
            reason: "CRASHED".into(),
            exit_status: Some(137),
            exit_description: "APP/PROC/WEB: Exited with status 137 (out of memory)".into(),
            crash_count: Some(3),
            crash_timestamp: 1_700_000_000_000_000_000,
        };
        let value: Value = serde_json::from_slice(&encode(&crash).unwrap()).unwrap();
        for key in [
            "executor_id",
            "app",
            "instance",
            "index",
            "reason",
            "exit_status",
            "exit_description",
            "crash_count",
            "crash_timestamp",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        assert_eq!(roundtrip(&crash), crash);
        let health_check_failure = ExecutorCrash {
            exit_status: None,
            crash_count: None,
            ..crash
        };
        let value: Value = serde_json::from_slice(&encode(&health_check_failure).unwrap()).unwrap();
        assert!(value.get("exit_status").is_none());
        assert_eq!(roundtrip(&health_check_failure), health_check_failure);
    }

    #[test]
    fn per_cell_subjects_name_their_cell_and_placements_carry_no_environment() {
        assert_eq!(executor_heartbeat_subject("e1"), "executor.heartbeat.e1");
        assert_eq!(executor_crash_subject("e1"), "executor.crash.e1");
        assert_eq!(executor_placed_subject("e1"), "executor.placed.e1");
        assert_eq!(cell_of("executor.crash.e1", EXECUTOR_CRASH), Some("e1"));
        assert_eq!(cell_of("executor.crash", EXECUTOR_CRASH), None);
        assert_eq!(cell_of("executor.crash.e1.x", EXECUTOR_CRASH), None);
        assert_eq!(cell_of("executor.crashes.e1", EXECUTOR_CRASH), None);
        assert!(crate::subject::matches(
            &every_cell(EXECUTOR_HEARTBEAT),
            &executor_heartbeat_subject("e7")
        ));
        let start = StartInstance {
            executor_id: "e1".into(),
            app: "a1".into(),
            instance: "i1".into(),
            index: 3,
            droplet_url: "http://cc/droplets/d1?token=secret".into(),
            env: BTreeMap::from([("DB_PASSWORD".into(), "secret".into())]),
            ..StartInstance::default()
        };
        let placed = InstancePlaced::from(&start);
        let value: Value = serde_json::from_slice(&encode(&placed).unwrap()).unwrap();
        assert_eq!(
            value,
            json!({"executor_id": "e1", "app": "a1", "instance": "i1", "index": 3})
        );
    }

    #[test]
    fn a_start_message_without_egress_still_parses_and_egress_round_trips() {
        let old: StartInstance =
            serde_json::from_str(r#"{"executor_id":"e1","app":"a1","instance":"i1"}"#).unwrap();
        assert!(old.egress.is_empty());
        assert_eq!(
            old.stop_timeout_secs, None,
            "an older sender's start: the cell's grace"
        );
        let start = StartInstance {
            egress: vec![ServiceEgress {
                service: "cache".into(),
                host: "10.254.0.1".into(),
                port: 42_000,
            }],
            ..old
        };
        let back: StartInstance = serde_json::from_slice(&encode(&start).unwrap()).unwrap();
        assert_eq!(back, start);
    }

    #[test]
    fn start_and_stop_requests_round_trip_and_are_addressed() {
        let start = StartInstance {
            executor_id: "e1".into(),
            app: "a1".into(),
            app_name: "shop".into(),
            instance: "i9".into(),
            index: 4,
            droplet_url: "file:///var/hydrant/droplets/d1.tgz".into(),
            droplet_sha256: "ab".repeat(32),
            start_command: "./bin/shop".into(),
            env: BTreeMap::from([("RUST_LOG".into(), "info".into())]),
            memory_mb: 256,
            disk_mb: 1024,
            uris: vec!["shop.hydrant.local".into()],
            health_check: HealthCheck {
                kind: HealthCheckType::Http,
                endpoint: Some("/health".into()),
                timeout_secs: Some(60),
            },
            tags: BTreeMap::new(),
            egress: Vec::new(),
            stop_timeout_secs: Some(30),
        };
        let value: Value = serde_json::from_slice(&encode(&start).unwrap()).unwrap();
        assert_eq!(value["health_check"]["type"], "http");
        assert_eq!(value["stop_timeout_secs"], 30);
        assert_eq!(roundtrip(&start), start);
        let stop = StopInstance {
            executor_id: "e1".into(),
            app: "a1".into(),
            instance: None,
            reason: Some("app stopped".into()),
        };
        assert_eq!(roundtrip(&stop), stop);
        let reply = ExecutorReply {
            executor_id: "e1".into(),
            accepted: false,
            reason: Some("insufficient memory".into()),
        };
        assert_eq!(roundtrip(&reply), reply);
        assert_eq!(executor_start_subject("e1"), "executor.start.e1");
        assert_eq!(executor_stop_subject("e1"), "executor.stop.e1");
        assert!(crate::subject::matches(
            "executor.start.*",
            &executor_start_subject("e7")
        ));
    }

    #[test]
    fn decoding_garbage_gives_an_error_not_a_panic() {
        for bad in ["", "{", "null", "\"x\"", "{\"instances\":5}", "\u{0}"] {
            assert!(
                serde_json::from_str::<ExecutorHeartbeat>(bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_presence_reads_like_a_dea_advertisement_and_its_ttl_is_bounded() {
        // A DEA's `dea.advertise`, unknown keys included: the shared fields land where they
        // should and the rest defaults.
        let dea: CellPresence = serde_json::from_value(json!({
            "id": "dea-3",
            "stacks": ["cflinuxfs4"],
            "url": "http://10.0.0.3:34567",
            "available_memory": 2048,
            "available_disk": 8192,
            "app_id_to_count": {"app-1": 2},
            "placement_properties": {"zone": "z2"}
        }))
        .unwrap();
        assert_eq!(dea.id, "dea-3");
        assert_eq!(dea.zone(), "z2");
        assert_eq!(dea.available_memory, 2048);
        assert_eq!(dea.app_id_to_count["app-1"], 2);
        assert_eq!(dea.state, CellState::Healthy);
        assert_eq!(dea.ttl(), PRESENCE_TTL);
        let hostile = CellPresence {
            ttl_secs: u64::MAX,
            ..CellPresence::default()
        };
        assert_eq!(hostile.ttl(), Duration::from_secs(60));
        let evacuating = CellPresence {
            state: CellState::Evacuating,
            ..dea
        };
        let v: Value = serde_json::to_value(&evacuating).unwrap();
        assert_eq!(v["state"], "evacuating");
        assert_eq!(v["placement_properties"]["zone"], "z2");
        assert_eq!(roundtrip(&evacuating), evacuating);
        assert_eq!(executor_presence_subject("c1"), "executor.presence.c1");
        assert_eq!(
            cell_of("executor.presence.c1", EXECUTOR_PRESENCE),
            Some("c1")
        );
    }

    #[test]
    fn a_doppler_announcement_round_trips_and_its_ttl_is_bounded() {
        let announce = DopplerAnnounce {
            id: "doppler-1".to_owned(),
            ingress: "http://10.0.0.7:8082".to_owned(),
            egress: "http://10.0.0.7:8082".to_owned(),
            ttl_secs: 15,
        };
        assert_eq!(roundtrip(&announce), announce);
        assert_eq!(announce.ttl(), Duration::from_secs(15));
        let silent: DopplerAnnounce = serde_json::from_value(json!({"id": "d"})).unwrap();
        assert_eq!(silent.ttl(), DOPPLER_ANNOUNCE_INTERVAL * 3);
        let hostile = DopplerAnnounce {
            ttl_secs: u64::MAX,
            ..announce
        };
        assert_eq!(hostile.ttl(), Duration::from_secs(60));
    }
}
