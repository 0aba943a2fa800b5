//! Hydrant's own service broker: one Open Service Broker API v2.17 server with four offerings —
//! `mysql` (MariaDB), `postgresql`, `redis`, `rabbitmq`, plans `small` and `medium` — each
//! backed by real servers the broker runs itself as supervised service nodes (data under
//! `data_dir/nodes`, each in a container of its own under its plan's limits — or, with
//! `isolation = "none"`, a child process — ports from a pool on `bind_address`, loopback by
//! default).
//!
//! Flow: a platform (the cloud controller, any OSB client) → `listen` (basic auth,
//! `X-Broker-API-Version`) → [`osb`] → SQLite state ([`store`]) → [`backend`] → the node's own
//! admin client (`mariadb`, `psql`, `redis-cli`, `rabbitmqctl`) → the node. Each node's log
//! lines go into the pipeline as `SVC` logs of the instance they provably belong to (source id
//! = instance guid; [`route`]) or of the operator (the broker's own source id), [`quota`]
//! holds databases to their plan's storage while tenants write, and
//! [`metrics`] emits each instance's gauges every 10 s; broker operations are counted as
//! `broker.operations{operation,status}` with latencies in `broker.operation_seconds`.
//!
//! How a platform registers it: `hydrant up` writes it into `endpoints.json` as
//! `"service_broker": {"url": "http://127.0.0.1:9030", "username": "broker", "password": "…"}`;
//! any OSB client registers it with that URL and those basic-auth credentials.
//!
//! Invariants:
//! - A backend whose programs are missing is absent from the catalog, with one log line naming
//!   the Debian package to install; nothing else changes.
//! - The broker survives its own restart: instances, bindings, node ports and secrets are in
//!   SQLite, and at start every node with instances is started again on the ports its
//!   credentials name (Redis gets its bindings' ACL users back); a provision the restart
//!   interrupted is reported `failed` so the platform deprovisions it.
//! - Deprovision leaves nothing: the database / vhost / process, every binding's user, the
//!   node's directory (Redis) and its port.
//! - A node that dies while wanted is started again (`broker.node_restarts`), and its gap
//!   shows as `service.up 0` in its gauges.
//!
//! # Layout
//! - `config`: [`Config`] and its validation.
//! - [`catalog`]: offerings, plans, ids and parameter schemas.
//! - [`claims`]: host-wide claims on node ports, so brokers side by side never share one.
//! - [`schema`]: the parameter checker.
//! - [`store`]: the SQLite state.
//! - [`osb`]: the HTTP API.
//! - [`backend`]: binaries, nodes and per-offering admin operations.
//! - [`node`]: supervised child processes, admin commands, ports, secrets, cgroups.
//! - [`quota`]: storage quotas enforced while tenants write.
//! - [`route`]: which tenant (or the operator) a shared node's log line goes to.
//! - [`metrics`]: per-instance gauges.

pub mod backend;
pub mod catalog;
pub mod claims;
mod config;
mod error;
pub mod metrics;
pub mod node;
pub mod osb;
pub mod quota;
pub mod route;
pub mod schema;
pub mod store;

use std::sync::Arc;

use axum::Json;
use axum::response::IntoResponse as _;
use axum::routing::get;
use hydrant_emitter::Registry;
use tokio_util::sync::CancellationToken;

pub use config::{Config, Isolation, MIN_PORTS, PortRange};
pub use error::Error;

/// The broker as a [`hydrant_runtime::Role`]: `hydrant run broker`, and the micro cloud's.
#[derive(Debug, Clone, Copy)]
pub struct Broker;

hydrant_runtime::listeners! {
    /// The sockets the broker serves.
    pub struct Listeners for Broker {
        /// The OSBAPI (`listen`).
        api,
    }
}

impl hydrant_runtime::Role for Broker {
    const NAME: &'static str = "broker";
    type Config = Config;
    type Error = Error;
    const LISTENERS: &'static [hydrant_runtime::ListenerSpec<Config>] = &[
        hydrant_runtime::listener("api", "listen", "127.0.0.1:9030", |c| &c.listen),
        hydrant_runtime::admin_listener("127.0.0.1:14838", |c| &c.admin_listen),
    ];

    fn describe(config: &Config) -> Option<String> {
        Some(format!(
            "offerings {}; nodes on {} ports {}-{}",
            config.offerings.join(", "),
            config.bind_address,
            config.ports.first,
            config.ports.last
        ))
    }

    async fn run(
        config: Config,
        listeners: hydrant_runtime::Listeners,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        serve(config, listeners, registry, shutdown).await
    }
}

/// Runs the broker until `shutdown`, then stops every service node.
async fn serve(
    config: Config,
    listeners: hydrant_runtime::Listeners,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let password = config.read_password()?;
    let user = node::service_user(&config.run_as)?;
    let mut config = config;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::io("cannot create", &config.data_dir, e))?;
    // Nodes run in their own directories: every path handed to them must be absolute.
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|e| Error::io("cannot resolve", &config.data_dir, e))?;
    if user.is_some() {
        // Nodes run as `run_as` and must reach their own directories below this one; what
        // else is here is the broker's own and private (`broker.db` is 0600).
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| Error::io("cannot open up", &config.data_dir, e))?;
    }
    let store = Arc::new(store::Store::open(&config.data_dir.join("broker.db"))?);
    for mut i in store.instances()? {
        if i.state == store::State::Creating {
            i.state = store::State::Failed;
            i.description =
                "the broker restarted while provisioning; deprovision and retry".to_owned();
            store.put_instance(&i)?;
        }
    }

    let (bins, available) = backend::available(&config.offerings, backend::detect);
    let contain = open_containers(&config, user).await?;

    let emitter_stop = CancellationToken::new();
    let _emitter_guard = emitter_stop.clone().drop_guard();
    let emitter = config.telemetry.start(&registry, emitter_stop.clone());
    let nodes_stop = CancellationToken::new();
    let sink = node::Sink {
        emitter: emitter.clone(),
        registry: registry.clone(),
    };
    let mut ctx = backend::Ctx::new(
        config.clone(),
        user,
        bins,
        sink,
        Arc::clone(&store),
        nodes_stop.clone(),
    );
    ctx.contain = contain;
    // The ports credentials already name are this broker's again before anything starts.
    for port in store.ports_in_use()? {
        if !ctx.claims.claim(port) {
            tracing::warn!(
                port,
                "a port this broker's nodes use is claimed by another process on this host; its node may not start"
            );
        }
    }
    if ctx.contain.is_none() {
        // A broker killed with SIGKILL leaves its child nodes running, holding the ports
        // their restart needs.
        let reaped = node::orphans::reap(&ctx.nodes_root).await;
        if !reaped.is_empty() {
            tracing::warn!(pids = ?reaped, "broker: killed service nodes an earlier run left running");
        }
    }
    let ctx = Arc::new(ctx);
    tokio::spawn(restore(Arc::clone(&ctx)));
    let tasks = shutdown.child_token();
    tokio::spawn(metrics::run(
        Arc::clone(&ctx),
        emitter.clone(),
        registry.clone(),
        tasks.clone(),
    ));
    tokio::spawn(quota::run(Arc::clone(&ctx), tasks.clone()));
    listeners.mount_admin(admin_routes(
        Arc::clone(&ctx),
        config.username.clone(),
        password.clone(),
    ));

    let listeners = Listeners::take(listeners)?;
    let broker = Arc::new(osb::Broker::new(
        Arc::clone(&ctx),
        available,
        config.username.clone(),
        password,
        registry.clone(),
    ));
    let served = axum::serve(listeners.api, osb::router(broker))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    tasks.cancel();
    ctx.stop_all().await;
    if let Some(contain) = &ctx.contain {
        // Every node's container is gone: the broker's cgroup parent goes too.
        let left = contain.containers.close().await;
        if !left.is_empty() {
            tracing::warn!(?left, "broker: container cgroups left behind");
        }
    }
    nodes_stop.cancel();
    emitter_stop.cancel();
    if let Some(emitter) = &emitter {
        emitter.stopped().await;
    }
    served.map_err(|e| Error::io("serving", &config.listen, e))
}

/// Opens the container runtime nodes run in (`isolation = "container"`), after removing what
/// an earlier run killed with SIGKILL left; `None` with `isolation = "none"`.
///
/// # Errors
/// [`Error::Config`] (field `isolation`) saying why containers cannot be made here and how to
/// fix it; never a silent fallback to uncontained nodes.
async fn open_containers(
    config: &Config,
    user: Option<(u32, u32)>,
) -> Result<Option<node::Contain>, Error> {
    if config.isolation == Isolation::None {
        tracing::warn!(
            "service nodes run WITHOUT containers (isolation = \"none\"): as {}",
            if user.is_some() {
                "their unprivileged user, in memory cgroups"
            } else {
                "the broker's own user, unlimited"
            }
        );
        return Ok(None);
    }
    let refused = |e: &dyn std::fmt::Display| -> Error {
        hydrant_runtime::invalid(
            "isolation",
            format!(
                "{e}. To run service nodes without containers on purpose, set isolation = \"none\" \
                 (or run `hydrant up --isolation none`)"
            ),
        )
        .into()
    };
    if user.is_none() {
        return Err(refused(&"service nodes run in containers, which need root"));
    }
    let containers_config = config.container_config();
    // What no node may see where a bound host tree would show it: the broker's data (its
    // state holds every binding's password) and the directory above it.
    let mut hidden = vec![config.data_dir.clone()];
    if let Some(parent) = config
        .data_dir
        .parent()
        .filter(|p| p.components().count() > 2)
    {
        hidden.push(parent.to_path_buf());
    }
    let containers = hydrant_container::Containers::open(&containers_config, hidden)
        .await
        .map_err(|e| refused(&e))?;
    let left = containers.cleanup().await.map_err(|e| refused(&e))?;
    if !left.is_empty() {
        tracing::warn!(containers = ?left.containers, cgroups = ?left.cgroups,
            failures = ?left.failures, "broker: removed service node containers an earlier run left behind");
    }
    tracing::info!(runtime = %containers.runtime().display(), cgroups = containers.cgroup_version(),
        "broker: service nodes run in containers");
    Ok(Some(node::Contain {
        containers,
        pids: containers_config.pids_limit,
        tmp_bytes: containers_config.tmp_mb * 1024 * 1024,
        memory_bytes: config.shared_node_memory_mb * 1024 * 1024,
    }))
}

/// Starts again the nodes of instances that exist (a broker restart).
async fn restore(ctx: Arc<backend::Ctx>) {
    let instances = match ctx.store.instances() {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!("cannot read instances to restore their nodes: {e}");
            return;
        }
    };
    let mut shared_started = Vec::new();
    for i in instances.iter().filter(|i| i.state == store::State::Ready) {
        let Some(plan) = catalog::offering(&i.offering).and_then(|o| o.plan(&i.plan_id)) else {
            continue;
        };
        let result = if i.offering == "redis" {
            ctx.redis_node(i, plan).await.map(drop)
        } else if !shared_started.contains(&i.offering) {
            shared_started.push(i.offering.clone());
            ctx.shared(&i.offering).await.map(drop)
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::warn!(instance = %i.id, "cannot restore its service node: {e}");
        }
    }
}

/// The admin listener's own routes: the nodes (names carry instance ids) and an on-demand
/// quota pass. Both answer only to the broker's basic-auth credentials, as the OSB routes do:
/// the admin listener is loopback by default, but on a host where unisolated code runs,
/// loopback is not a wall.
fn admin_routes(ctx: Arc<backend::Ctx>, username: String, password: String) -> axum::Router {
    let quotas = Arc::clone(&ctx);
    let credentials = Arc::new((username, password));
    let guard = axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let credentials = Arc::clone(&credentials);
            async move {
                if osb::basic_auth_ok(request.headers(), &credentials.0, &credentials.1) {
                    next.run(request).await
                } else {
                    (
                        axum::http::StatusCode::UNAUTHORIZED,
                        [(
                            axum::http::header::WWW_AUTHENTICATE,
                            "Basic realm=\"broker\"",
                        )],
                        "use the broker's username and password\n",
                    )
                        .into_response()
                }
            }
        },
    );
    axum::Router::new()
        .route(
            "/v1/quotas",
            // Measures and enforces now rather than at the next tick (operators, tests).
            axum::routing::post(move || {
                let ctx = Arc::clone(&quotas);
                async move { Json(quota::check_all(&ctx).await) }
            }),
        )
        .route(
        "/v1/nodes",
        get(move || {
            let ctx = Arc::clone(&ctx);
            async move {
                let nodes: Vec<serde_json::Value> = ctx
                    .node_pids()
                    .await
                    .into_iter()
                    .map(|(name, pid, ports)| serde_json::json!({"name": name, "pid": pid, "ports": ports}))
                    .collect();
                Json(nodes)
            }
        }),
    )
    .layer(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn containers_without_root_are_refused_with_the_way_out() {
        let config = Config {
            password: Some("p".to_owned()),
            ..Config::default()
        };
        let err = open_containers(&config, None)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("need root"), "{err}");
        assert!(err.contains("isolation = \"none\""), "{err}");
        let none = Config {
            isolation: Isolation::None,
            ..config
        };
        assert!(open_containers(&none, None).await.unwrap().is_none());
    }
}
