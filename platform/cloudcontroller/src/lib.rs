//! The cloud controller: the platform's REST API and the keeper of desired state.
//!
//! Flow: the CLI (through `hydrant-api`) → REST API (`api`) → desired state in SQLite (`db`)
//! and files in the blob store (`blobs`) → staging (`staging`) turns pushed packages into
//! droplets → placement (`placement`) asks executors over the bus to run the instances the
//! desired state calls for, reading their heartbeats and crash reports. Lifecycle and staging
//! lines go into each app's own log stream (`logs`), and the role's counters to `/metrics` and
//! the pipeline (`metrics`).
//!
//! Invariants:
//! - Desired state lives only in `data_dir` (SQLite in WAL mode, blobs, droplets): stopping
//!   the role and starting it again on the same directory loses nothing.
//! - The data plane never waits for this role: executors keep running what they run while it
//!   is down, and tokens it issued keep verifying at the firehose edge (which holds only the
//!   public keys from `GET /token_keys`; this role alone holds the private ones).
//! - Every queue is bounded (staging queue, bus subscriptions) and every upload capped by
//!   config; bad input is a JSON error that says what to fix, never a panic.
//!
//! # Layout
//! - `config`: [`Config`] and its validation.
//! - `api`: routing, errors, authentication, users/spaces/tokens; `api/apps.rs` and
//!   `api/push.rs` for apps and push.
//! - `db`: schema, migrations, queries. `blobs`: the content-addressed store; `blob_lifecycle`:
//!   who may upload and match blobs, and collection of old packages and droplets.
//! - `staging`: buildpack detection and droplet building. `placement`: the executor table and
//!   the convergence loop.
//! - `tenancy`: orgs, org roles and the access matrix every handler asks. `quotas`: org and
//!   space quotas and the check before anything grows. `routing`: domains, the routes each
//!   space owns, and the assignments the router checks registrations against.
//! - `internal`: the internal API on `internal_listen`, mutual TLS with each endpoint's allowed
//!   role identities (droplets for executors, drain targets for the nozzle, ...).
//! - `password`: password hashing and guids. `logs`, `metrics`: what the role emits.
//! - `services`: the OSBAPI client, catalogs, parameter schemas, the durable job runner and
//!   `VCAP_SERVICES`; their endpoints in `api/services.rs`.
//!
//! Extension points for the policy, SLO and drain issues: a migration step appended in `db`,
//! routes beside the app routes in `api/apps.rs`, and, for control loops that need them, new
//! types in `hydrant-api`.

mod api;
mod blob_lifecycle;
mod blobs;
mod config;
mod db;
mod error;
mod internal;
mod lease;
mod login;
mod logs;
mod metrics;
mod password;
mod placement;
mod quotas;
mod routing;
mod services;
mod sql;
mod staging;
mod tenancy;

use std::path::Path;
use std::sync::Arc;

use hydrant_api::User;
use hydrant_bus::Bus;
use hydrant_emitter::Registry;
use tokio_util::sync::CancellationToken;

pub use config::{ClientConfig, Config, DbConfig, IsolationMode, StagingIsolation};
pub use db::DbUrl;
pub use error::Error;
pub use services::ServicesConfig;
pub use staging::STATIC_START;

/// The space (in the `default` org) apps go into when the request names none; created at
/// first start.
pub const DEFAULT_SPACE: &str = "default";

hydrant_runtime::listeners! {
    /// The sockets the cloud controller serves, bound by the caller (tests bind `127.0.0.1:0`).
    pub struct Listeners for CloudController {
        /// The REST API (`Config::listen`, default `127.0.0.1:9022`).
        api,
    }
}

/// The cloud controller as a [`hydrant_runtime::Role`]: `hydrant run cloudcontroller`, and the
/// micro cloud's API.
#[derive(Debug, Clone, Copy)]
pub struct CloudController;

impl hydrant_runtime::Role for CloudController {
    const NAME: &'static str = "cloudcontroller";
    type Config = Config;
    type Error = Error;
    const LISTENERS: &'static [hydrant_runtime::ListenerSpec<Config>] = &[
        hydrant_runtime::listener("api", "listen", "127.0.0.1:9022", |c| &c.listen),
        hydrant_runtime::admin_listener("127.0.0.1:14831", |c| &c.admin_listen),
        // Optional: unbound while `internal_listen` is empty (the default).
        hydrant_runtime::listener("internal", "internal_listen", "", |c| &c.internal_listen),
    ];

    fn registry(config: &Config) -> Registry {
        Registry::new("cloudcontroller", &config.instance_id)
    }

    async fn run(
        config: Config,
        mut listeners: hydrant_runtime::Listeners,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let internal = listeners.take_optional("internal");
        serve(
            config,
            Listeners::take(listeners)?,
            internal,
            registry,
            shutdown,
        )
        .await
    }
}

/// Everything the handlers and background tasks share.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) config: Config,
    pub(crate) db: db::Db,
    /// The token key directory: only this role can mint tokens.
    pub(crate) keys: api::Keys,
    /// OAuth2 clients (`client_credentials`).
    pub(crate) clients: api::Clients,
    pub(crate) blobs: blobs::BlobStore,
    pub(crate) staging: staging::Queue,
    pub(crate) placement: placement::Placement,
    pub(crate) logs: logs::AppLogs,
    pub(crate) metrics: metrics::Metrics,
    /// The per-name brake on password guessing.
    pub(crate) logins: login::Logins,
    /// Wakes the task that sends the router its route assignments (`routing`).
    pub(crate) routes_changed: tokio::sync::Notify,
    /// Service brokers: the OSBAPI client and the job runner's wake-up and counters.
    pub(crate) services: services::Services,
    /// This process's name in the leases and job claims it shares with other controllers on
    /// one database: `instance_id` and a random suffix, unique even if two share an id.
    pub(crate) node: String,
}

/// Runs the cloud controller until `shutdown` is cancelled, then stops serving, hands running
/// builds back to the shared staging queue and returns once every task has stopped.
async fn serve(
    config: Config,
    listeners: Listeners,
    internal: Option<tokio::net::TcpListener>,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let data = config.data_path();
    std::fs::create_dir_all(&data).map_err(|source| Error::Io {
        path: data.clone(),
        source,
    })?;
    let keys = api::Keys::open(config.token_keys_path())?;
    let clients = api::Clients::load(&config.clients)?;
    let url = config.db_url();
    tracing::info!(db = %url.shown(), "opening the database");
    // Off the async runtime: the PostgreSQL client blocks (and runs a runtime of its own).
    let first_start = config.clone();
    let db =
        tokio::task::spawn_blocking(move || db::Db::open(&url, |c| bootstrap(&first_start, c)))
            .await
            .map_err(|e| Error::Io {
                path: data.clone(),
                source: std::io::Error::other(format!("opening the database failed: {e}")),
            })??;
    let blobs = blobs::BlobStore::open(&config.blobs_path())?;

    let metrics = metrics::Metrics::new(&registry);
    let telemetry = config.telemetry.start(&registry, shutdown.clone());
    let logs = logs::AppLogs::new(telemetry.clone(), &registry);
    let bus = Bus::connect(&config.bus, &registry).await?;
    let feeds = placement::subscribe(&bus).await?;
    // One space holds at most half the queue: another always finds a place.
    let queue = staging::Queue::new(config.staging_queue, config.staging_queue / 2);
    let workers = config.staging_workers;

    let services = services::Services::new(&config.services, &registry)?;
    let config_instance_id = config.instance_id.clone();
    let ctx = Arc::new(Ctx {
        config,
        db,
        keys,
        clients,
        blobs,
        staging: queue,
        placement: placement::Placement::default(),
        logs,
        metrics,
        logins: login::Logins::default(),
        routes_changed: tokio::sync::Notify::new(),
        services,
        node: format!(
            "{}/{}",
            config_instance_id,
            password::new_guid().get(..12).unwrap_or_default()
        ),
    });

    let staging_tasks = staging::spawn_workers(ctx.clone(), workers, shutdown.clone());
    let service_jobs = tokio::spawn(services::jobs::run(ctx.clone(), shutdown.clone()));
    let blob_gc = tokio::spawn(blob_lifecycle::run_gc(
        ctx.clone(),
        registry.clone(),
        shutdown.clone(),
    ));
    let assignments = tokio::spawn(routing::publish_assignments(
        ctx.clone(),
        bus.clone(),
        shutdown.clone(),
    ));
    let converge = tokio::spawn(placement::run(
        ctx.clone(),
        bus.clone(),
        feeds,
        shutdown.clone(),
    ));
    tracing::info!(
        listen = %ctx.config.listen,
        external_url = %ctx.config.external_url,
        bus = %bus.url(),
        "cloud controller serving"
    );
    let internal = serve_internal(&ctx, internal, &registry, &shutdown)?;
    // Through the gate: connection caps, header and idle timeouts, counted refusals.
    let gate = hydrant_runtime::Gate::new("api", &ctx.config.limits, &registry);
    let served = gate
        .serve(listeners.api, api::router(ctx.clone()), shutdown.clone())
        .await;
    shutdown.cancel();

    for task in staging_tasks {
        let _ = task.await;
    }
    let _ = converge.await;
    let _ = assignments.await;
    if let Some(internal) = internal {
        let _ = internal.await;
    }
    let _ = service_jobs.await;
    let _ = blob_gc.await;
    // A clean stop hands the singletons over at once rather than after the lease expires.
    for lease in [lease::PLACEMENT, lease::BLOB_GC] {
        lease::give_up(&ctx.db, lease, &ctx.node).await;
    }
    // ... and the routers stop sending API calls here with the survivors' next snapshot.
    let node = ctx.node.clone();
    let _ = ctx.db.run(move |c| Ok(routing::retire(c, &node)?)).await;
    drop(ctx);
    if let Some(telemetry) = &telemetry {
        telemetry.stopped().await;
    }
    served.map_err(Error::Serve)
}

/// Starts the internal API (mutual TLS, identities checked per endpoint) when `tls` is set and
/// `internal_listen` bound; otherwise a bound listener is closed and the roles use the public
/// API.
fn serve_internal(
    ctx: &Arc<Ctx>,
    listener: Option<tokio::net::TcpListener>,
    registry: &Registry,
    shutdown: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, Error> {
    let (Some(files), Some(listener)) = (&ctx.config.tls, listener) else {
        tracing::debug!("no tls or no internal_listen: the internal API is not served");
        return Ok(None);
    };
    let material = hydrant_tls::Material::load(files)
        .map_err(|e| hydrant_runtime::invalid("tls", format!("cannot be used: {e}")))?;
    let refusals = internal::Refusals::new(registry);
    let tls = hydrant_tls::ServerTls::new(
        material.clone(),
        internal::ENDPOINT,
        internal::CALLERS,
        Arc::new(refusals.clone()),
    )
    .map_err(|e| hydrant_runtime::invalid("tls", e.to_string()))?;
    let _expiry = hydrant_emitter::tls::spawn_expiry_gauge(registry, material, shutdown.clone());
    tracing::info!(
        listen = %ctx.config.internal_listen,
        url = ctx.config.internal_base_url().unwrap_or_default(),
        "internal API serving over mutual TLS"
    );
    let router = internal::router(api::router(ctx.clone()), refusals.clone());
    Ok(Some(tokio::spawn(internal::serve(
        listener,
        tls,
        router,
        refusals,
        shutdown.clone(),
    ))))
}

/// First-start work: the default org and space and the administrator; and builds a previous
/// run of this controller left half-done are marked FAILED. On PostgreSQL it runs under the
/// migration lock, so two controllers starting together create one administrator.
fn bootstrap(config: &Config, c: &mut sql::Connection) -> Result<(), Error> {
    let db_err = |context| move |source| Error::Db { context, source };
    let now = hydrant_auth::now_secs();
    (|| {
        tenancy::bootstrap(c, now)?;
        routing::bootstrap(c, &config.apps_domain, now)?;
        db::fail_interrupted_builds(c, now, &config.instance_id).map(drop)
    })()
    .map_err(db_err("bootstrap"))?;
    let exists = db::user_by_name(c, &config.admin_user)
        .map_err(db_err("find the admin user"))?
        .is_some();
    if exists {
        return Ok(());
    }
    let secret = match &config.admin_password {
        Some(secret) => secret.clone(),
        None => {
            let secret = password::new_password();
            write_secret(&config.admin_password_path(), &secret)?;
            secret
        }
    };
    let hash = password::hash(&secret, config.password_hash_iterations);
    let admin = User {
        guid: password::new_guid(),
        username: config.admin_user.clone(),
        admin: true,
        created_at: now,
    };
    db::insert_user(c, &admin, &hash).map_err(db_err("create the admin user"))?;
    tracing::info!(user = %admin.username, "created the administrator");
    Ok(())
}

/// Writes a secret readable by its owner only.
fn write_secret(path: &Path, secret: &str) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    std::io::Write::write_all(&mut file, format!("{secret}\n").as_bytes()).map_err(io)
}
