//! Every request and response body of the cloud controller's API, grouped by resource.
//!
//! Both ends use these types: the server serialises them and [`crate::Client`] parses them, so
//! a field cannot drift between the two. Responses tolerate unknown fields (a newer server may
//! add some); requests the server parses reject them, so a typo in a field name is an error
//! rather than a silently ignored setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

// === errors ===

/// The body of every error answer: `{"errors": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrors {
    /// At least one error.
    pub errors: Vec<ApiErrorItem>,
}

/// One error: a stable numeric code, a stable title and a detail that says what to fix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorItem {
    /// Cloud Foundry style numeric code (10002 unauthenticated, 10003 not authorised,
    /// 10010 not found, 10008 unprocessable, ...).
    pub code: u32,
    /// Stable machine-readable title, e.g. `CF-ResourceNotFound`.
    pub title: String,
    /// For humans: what went wrong and how to fix it.
    pub detail: String,
}

// === lists ===

/// A list answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct List<T> {
    /// How many resources matched.
    pub pagination: Pagination,
    /// The resources.
    pub resources: Vec<T>,
}

impl<T> List<T> {
    /// A list holding every matching resource in one page.
    #[must_use]
    pub fn new(resources: Vec<T>) -> Self {
        Self {
            pagination: Pagination {
                total_results: resources.len() as u64,
            },
            resources,
        }
    }
}

/// Paging information. Hydrant answers every list in one page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pagination {
    /// Resources in the list.
    pub total_results: u64,
}

// === info and tokens ===

/// `GET /v3/info` (no token needed): what this cloud controller is and where the rest of the
/// platform lives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// The API version ([`crate::API_VERSION`]).
    pub api_version: String,
    /// The domain default routes live under (`NAME.<apps_domain>`).
    pub apps_domain: String,
    /// This API's public base URL.
    pub external_url: String,
    /// Other endpoints by name, as configured (`firehose`, `log_cache`, `router`, ...).
    pub endpoints: BTreeMap<String, String>,
}

/// `POST /v3/tokens`: log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

/// The answer to a login: a bearer token for every other call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The token; send it as `Authorization: Bearer <token>`.
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until it expires.
    pub expires_in: i64,
    /// What it grants (`admin`, `space:<guid>:developer`, ...).
    pub scopes: Vec<String>,
    /// Renews the access token at `POST /v3/tokens` (`grant_type=refresh_token`); only that
    /// endpoint accepts it. Absent for client credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// `POST /v3/apps/{guid}/log_token`: a short-lived token that reads one app's logs and
/// metrics from the firehose edge (scope `app:<guid>:read`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogToken {
    /// The token.
    pub token: String,
    /// The source id it may read (the app's guid).
    pub source_id: String,
    /// Seconds until it expires.
    pub expires_in: i64,
}

// === users and spaces ===

/// `POST /v3/users` (admin only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Unique user name (1 to 64 of `a-z A-Z 0-9 . _ @ -`).
    pub username: String,
    /// At least 8 characters.
    pub password: String,
    /// Platform administrator.
    #[serde(default)]
    pub admin: bool,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Its guid.
    pub guid: String,
    /// Its name.
    pub username: String,
    /// Platform administrator.
    pub admin: bool,
    /// Creation time, UNIX seconds.
    pub created_at: i64,
}

/// `GET /v3/me`: who the token belongs to and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    /// The user.
    pub user: User,
    /// Its space roles.
    pub roles: Vec<RoleAssignment>,
    /// Its org roles.
    #[serde(default)]
    pub org_roles: Vec<crate::tenancy::OrgRoleAssignment>,
}

/// `POST /v3/spaces` (admin only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSpace {
    /// Space name, unique in its org (1 to 63 of `a-z 0-9 -`).
    pub name: String,
    /// The org, by name or guid. Default: the `default` org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
}

/// A space: a group of apps and the people who may see or change them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Space {
    /// Its guid.
    pub guid: String,
    /// Its name (unique in its org).
    pub name: String,
    /// Its org's guid.
    #[serde(default)]
    pub org_guid: String,
    /// Its org's name.
    #[serde(default)]
    pub org_name: String,
    /// The space quota assigned to it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_guid: Option<String>,
    /// Creation time, UNIX seconds.
    pub created_at: i64,
}

/// A role in a space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpaceRole {
    /// Creates, changes, deletes and reads the space's apps.
    Developer,
    /// Reads the space's apps, events and logs; changes nothing.
    Auditor,
    /// Manages who has which role in the space; reads its apps (never their environment).
    Manager,
}

impl SpaceRole {
    /// `developer`, `auditor` or `manager`, as in URLs and token scopes.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Developer => "developer",
            Self::Auditor => "auditor",
            Self::Manager => "manager",
        }
    }

    /// Parses `developer`, `auditor` or `manager`, or the cf CLI's `SpaceDeveloper`,
    /// `SpaceAuditor` and `SpaceManager`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "developer" | "SpaceDeveloper" => Some(Self::Developer),
            "auditor" | "SpaceAuditor" => Some(Self::Auditor),
            "manager" | "SpaceManager" => Some(Self::Manager),
            _ => None,
        }
    }
}

/// `POST /v3/spaces/{guid}/roles` (admin only): give a user a role in a space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignRole {
    /// The user's name.
    pub username: String,
    /// The role.
    pub role: SpaceRole,
}

/// One user's role in one space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleAssignment {
    /// The space's guid.
    pub space_guid: String,
    /// The space's name.
    pub space_name: String,
    /// The name of the space's org.
    #[serde(default)]
    pub org_name: String,
    /// The user's name.
    pub username: String,
    /// The role.
    pub role: SpaceRole,
}

// === apps ===

/// Whether an app should be running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AppState {
    /// Not running (the state of a new app).
    #[default]
    Stopped,
    /// Instances are wanted.
    Started,
}

impl AppState {
    /// `STARTED` or `STOPPED`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "STOPPED",
            Self::Started => "STARTED",
        }
    }
}

/// How an executor decides an instance is healthy (mirrors the bus's `HealthCheckType`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckType {
    /// TCP connect to the instance's port (default).
    #[default]
    Port,
    /// `GET` of `health_check_endpoint` answers 200.
    Http,
    /// The process is alive.
    Process,
}

/// The grace between SIGTERM and SIGKILL of an app that sets none, seconds (Cloud Foundry's
/// `graceful_shutdown_interval_in_seconds`).
pub const DEFAULT_STOP_TIMEOUT_SECS: u32 = 10;
/// The longest grace an app may ask for, seconds.
pub const MAX_STOP_TIMEOUT_SECS: u32 = 300;

fn default_stop_timeout_secs() -> u32 {
    DEFAULT_STOP_TIMEOUT_SECS
}

/// Why `secs` cannot be an app's stop grace, if it cannot: a message naming the range.
#[must_use]
pub fn stop_timeout_problem(secs: u32) -> Option<String> {
    (!(1..=MAX_STOP_TIMEOUT_SECS).contains(&secs)).then(|| {
        format!(
            "stop timeout {secs} s: must be between 1 and {MAX_STOP_TIMEOUT_SECS} seconds \
             (the grace between SIGTERM and SIGKILL; default {DEFAULT_STOP_TIMEOUT_SECS})"
        )
    })
}

/// `POST /v3/apps`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CreateApp {
    /// App name, unique in its space: 1 to 63 of `a-z 0-9 -`, not starting or ending with `-`
    /// (it becomes the default route's host name).
    pub name: String,
    /// The space, by name or guid. Default: the `default` space.
    pub space: Option<String>,
    /// Instances wanted. Default 1.
    pub instances: Option<u32>,
    /// Memory per instance, MiB. Default 256.
    pub memory_mb: Option<u64>,
    /// Disk per instance, MiB. Default 1024.
    pub disk_mb: Option<u64>,
    /// Start command overriding the detected one.
    pub command: Option<String>,
    /// Environment variables for every instance.
    pub env: BTreeMap<String, String>,
    /// Health check. Default `port`.
    pub health_check_type: Option<HealthCheckType>,
    /// Path for `http` health checks, e.g. `/health`.
    pub health_check_endpoint: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when an instance is stopped, 1 to
    /// [`MAX_STOP_TIMEOUT_SECS`]. Default [`DEFAULT_STOP_TIMEOUT_SECS`].
    pub stop_timeout_secs: Option<u32>,
    /// Do not create the default route `NAME.<apps_domain>`.
    pub no_route: bool,
}

/// `PATCH /v3/apps/{guid}`: every field is optional; absent fields keep their value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateApp {
    /// New name.
    pub name: Option<String>,
    /// New start command; `""` clears the override.
    pub command: Option<String>,
    /// New environment (replaces the whole map).
    pub env: Option<BTreeMap<String, String>>,
    /// New health check type.
    pub health_check_type: Option<HealthCheckType>,
    /// New health check endpoint.
    pub health_check_endpoint: Option<String>,
    /// New stop grace, seconds (1 to [`MAX_STOP_TIMEOUT_SECS`]); applies to instances started
    /// afterwards.
    pub stop_timeout_secs: Option<u32>,
}

/// `POST /v3/apps/{guid}/processes/web/actions/scale`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScaleApp {
    /// Instances wanted (0 to the server's limit).
    pub instances: Option<u32>,
    /// Memory per instance, MiB (applies to instances started afterwards; restart to apply).
    pub memory_mb: Option<u64>,
    /// Disk per instance, MiB (as memory).
    pub disk_mb: Option<u64>,
}

/// An app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    /// Its guid (also its log `source_id`).
    pub guid: String,
    /// Its name.
    pub name: String,
    /// Its space's guid.
    pub space_guid: String,
    /// Its space's name.
    pub space_name: String,
    /// Desired state.
    pub state: AppState,
    /// Instances wanted.
    pub instances: u32,
    /// Memory per instance, MiB.
    pub memory_mb: u64,
    /// Disk per instance, MiB.
    pub disk_mb: u64,
    /// The explicit start command, when set.
    pub command: Option<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Health check type.
    pub health_check_type: HealthCheckType,
    /// Health check path for `http`.
    pub health_check_endpoint: Option<String>,
    /// Seconds a stopped instance gets between SIGTERM and SIGKILL (absent from older
    /// controllers' answers: the default).
    #[serde(default = "default_stop_timeout_secs")]
    pub stop_timeout_secs: u32,
    /// The droplet instances run, once staged.
    pub current_droplet_guid: Option<String>,
    /// Routes mapped to it (`host[/path]`).
    pub routes: Vec<String>,
    /// Creation time, UNIX seconds.
    pub created_at: i64,
    /// Last change, UNIX seconds.
    pub updated_at: i64,
}

// === instances ===

/// An instance's state as users see it (Cloud Foundry's process stats states).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    /// Asked for; not yet healthy.
    Starting,
    /// Healthy and routable.
    Running,
    /// Exited or failed its health check.
    Crashed,
    /// Being stopped.
    Stopping,
    /// Not running and not placed (see `placement_error`).
    #[default]
    Down,
}

/// The last crash of an instance index, from the executor's crash report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashInfo {
    /// The crashed instance's guid.
    pub instance: String,
    /// `CRASHED`.
    pub reason: String,
    /// Exit status, when the process exited.
    pub exit_status: Option<i32>,
    /// What happened.
    pub exit_description: String,
    /// Crashes in a row, when known.
    pub crash_count: Option<u32>,
    /// When, UNIX nanoseconds.
    pub crash_timestamp: i64,
}

/// One instance index of an app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The index.
    pub index: u32,
    /// Its state.
    pub state: InstanceState,
    /// The instance guid, once placed.
    pub instance_guid: Option<String>,
    /// The executor running (or asked to run) it.
    pub executor_id: Option<String>,
    /// Host and port, once listening.
    pub host: Option<String>,
    /// Port, once listening.
    pub port: Option<u16>,
    /// When it entered `state`, UNIX nanoseconds (0 when unknown).
    pub since: i64,
    /// Why it is not placed ("no executor has room ..."), for `DOWN` instances.
    pub placement_error: Option<String>,
    /// Its last crash, when it crashed.
    pub crash: Option<CrashInfo>,
}

/// `GET /v3/apps/{guid}/processes/web/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStats {
    /// The app.
    pub app_guid: String,
    /// Desired state.
    pub state: AppState,
    /// Instances wanted.
    pub desired_instances: u32,
    /// One entry per index in `0..desired_instances`, then any extra index still running.
    pub instances: Vec<InstanceInfo>,
}

/// `POST /v3/apps/{guid}/instances/{index}/actions/restart`: why the caller restarts a crashed
/// instance (recorded in the `audit.app.process.restart` event).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartInstance {
    /// Why, in words ("crash back-off elapsed").
    pub reason: Option<String>,
    /// Crashes in a row the caller has counted, when it counts them.
    pub crash_count: Option<u32>,
    /// The crashed instance guid, when the caller knows it: it is replaced even if the
    /// controller's last heartbeat still shows it running (crash events overtake heartbeats).
    pub instance: Option<String>,
}

/// The answer to [`RestartInstance`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRestart {
    /// The app.
    pub app_guid: String,
    /// The instance index.
    pub index: u32,
    /// Crashed instance guids retired; a fresh instance takes their place. Empty when the index
    /// held a live instance (nothing to restart) or nothing at all (placement starts it anyway).
    pub replaced: Vec<String>,
}

// === routes ===

/// `POST /v3/apps/{guid}/routes`: map a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapRoute {
    /// `host.domain[/path]`, lower case.
    pub url: String,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Its guid.
    pub guid: String,
    /// `host.domain[/path]`.
    pub url: String,
    /// The app it is mapped to.
    pub app_guid: String,
    /// Creation time, UNIX seconds.
    pub created_at: i64,
}

// === push: resource matching, blobs, packages ===

/// One file of an app directory, as fingerprinted for resource matching.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// Relative path with `/` separators; no `..`, no leading `/`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lower-case hex.
    pub sha256: String,
    /// Unix permission bits (e.g. `0o644` = 420). Only `0o777` bits are kept.
    pub mode: u32,
}

/// `POST /v3/resource_match` request and answer. The answer lists the resources whose content
/// the blob store lacks: upload those, then create the package.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// The resources.
    pub resources: Vec<Resource>,
}

/// `PUT /v3/blobs/{sha256}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    /// The content's SHA-256.
    pub sha256: String,
    /// Its size.
    pub size: u64,
}

/// Whether a package can be staged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PackageState {
    /// Every file is in the blob store.
    #[default]
    Ready,
}

/// A package: the app's files at one push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Its guid.
    pub guid: String,
    /// The app.
    pub app_guid: String,
    /// Its state.
    pub state: PackageState,
    /// Files in it.
    pub file_count: u64,
    /// Total bytes.
    pub size: u64,
    /// SHA-256 over its sorted resource list (equal packages hash equal).
    pub sha256: String,
    /// Creation time, UNIX seconds.
    pub created_at: i64,
}

// === builds and droplets ===

/// `POST /v3/apps/{guid}/builds`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CreateBuild {
    /// The package to stage. Default: the app's newest package.
    pub package_guid: Option<String>,
}

/// A build's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BuildState {
    /// Queued or running.
    #[default]
    Staging,
    /// A droplet was produced and became the app's current droplet.
    Staged,
    /// Staging failed; `error` says why.
    Failed,
}

/// A build: staging one package into a droplet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    /// Its guid.
    pub guid: String,
    /// The app.
    pub app_guid: String,
    /// The package staged.
    pub package_guid: String,
    /// Its state.
    pub state: BuildState,
    /// Why it failed.
    pub error: Option<String>,
    /// The buildpack detected (`procfile`, `binary`, `python`, `node`, `static`, `command`).
    pub buildpack: Option<String>,
    /// The droplet produced.
    pub droplet_guid: Option<String>,
    /// Creation time, UNIX seconds.
    pub created_at: i64,
    /// Last change, UNIX seconds.
    pub updated_at: i64,
}

/// A droplet: a staged app (a tar.gz of the app directory) and how to start it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Droplet {
    /// Its guid.
    pub guid: String,
    /// The app.
    pub app_guid: String,
    /// The build that produced it.
    pub build_guid: String,
    /// The buildpack that staged it.
    pub buildpack: String,
    /// The command its instances start with (unless the app sets one).
    pub start_command: String,
    /// SHA-256 of the tarball.
    pub sha256: String,
    /// Size of the tarball.
    pub size: u64,
    /// Creation time, UNIX seconds.
    pub created_at: i64,
}

// === audit events ===

/// An audit event: who did what to which app, or what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Its guid.
    pub guid: String,
    /// `audit.app.create`, `audit.app.update`, `audit.app.start`, `audit.app.stop`,
    /// `audit.app.scale`, `audit.app.delete-request`, `audit.app.process.crash`, ...
    #[serde(rename = "type")]
    pub event_type: String,
    /// Who: a user name, or `executor:<id>` for crashes.
    pub actor: String,
    /// The app's guid.
    pub target_guid: String,
    /// The app's name at the time.
    pub target_name: String,
    /// The app's space.
    pub space_guid: String,
    /// Details (the request, or the crash report).
    pub data: serde_json::Value,
    /// When, UNIX seconds.
    pub created_at: i64,
}

/// Filters for `GET /v3/audit_events`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventFilter {
    /// Only events about this app.
    pub target_guid: Option<String>,
    /// Only these types, comma separated.
    pub types: Option<String>,
}
