//! RabbitMQ: one shared node (started lazily on the first provision: an Erlang node takes
//! seconds), a vhost per instance (named by the instance id, with connection and queue limits
//! and an operator policy bounding every queue's length in messages and bytes, from the plan) and a user per binding (named by the binding id, `management` tag so its
//! credentials also work on the HTTP API), as cf-rabbitmq-multitenant-broker does. Unbind
//! deletes the user and closes its connections. The broker administers the node through its
//! management API as `hydrant-admin` (milliseconds per call; `rabbitmqctl` costs an Erlang VM
//! start each), and uses `rabbitmqctl` only to wait for the node's start.
//!
//! Invariant: the node is private to this broker: its own node name, Erlang cookie (written by
//! the broker before the first start, 0400), epmd port and distribution port from the pool, so
//! it never joins or disturbs another RabbitMQ on the host.

use std::path::Path;
use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};

use super::{COMMAND_TIMEOUT, Ctx, Running, Usage};
use crate::Error;
use crate::catalog::Plan;
use crate::node::{self, Spec};
use crate::store::{Binding, Instance, SharedNode};

/// The administrator the node is created with.
const ADMIN: &str = "hydrant-admin";

/// Channels one connection may open (node-wide; RabbitMQ's default is 2047, each one memory).
pub const CHANNEL_MAX: u32 = 64;

/// The largest message the node accepts, bytes (node-wide; RabbitMQ's default is 128 MiB, held
/// whole in memory while it is routed).
pub const MAX_MESSAGE_BYTES: u64 = 8 * 1024 * 1024;

fn env(dir: &Path, ports: &[u16], bind: &str) -> Vec<(String, String)> {
    let port = |n: usize| ports.get(n).copied().unwrap_or(0);
    let d = |f: &str| dir.join(f).display().to_string();
    vec![
        ("HOME".to_owned(), dir.display().to_string()),
        (
            "RABBITMQ_NODENAME".to_owned(),
            format!("hydrant{}@localhost", port(0)),
        ),
        ("RABBITMQ_MNESIA_BASE".to_owned(), d("mnesia")),
        ("RABBITMQ_LOG_BASE".to_owned(), d("log")),
        ("RABBITMQ_LOGS".to_owned(), "-".to_owned()),
        ("RABBITMQ_CONFIG_FILE".to_owned(), d("rabbitmq.conf")),
        (
            "RABBITMQ_ADVANCED_CONFIG_FILE".to_owned(),
            d("advanced.config"),
        ),
        ("RABBITMQ_CONF_ENV_FILE".to_owned(), d("rabbitmq-env.conf")),
        (
            "RABBITMQ_ENABLED_PLUGINS_FILE".to_owned(),
            d("enabled_plugins"),
        ),
        ("RABBITMQ_PID_FILE".to_owned(), d("rabbitmq.pid")),
        ("RABBITMQ_DIST_PORT".to_owned(), port(2).to_string()),
        ("ERL_EPMD_PORT".to_owned(), port(3).to_string()),
        // epmd and Erlang distribution serve only `rabbitmqctl` on this host, which reaches
        // the node by the name `@localhost`: loopback, whatever address AMQP listens on.
        (
            "ERL_EPMD_ADDRESS".to_owned(),
            distribution_host(bind).to_owned(),
        ),
    ]
}

/// Where epmd and Erlang distribution listen: the loopback of `bind`'s family. A node whose
/// AMQP listens on another address (the micro cloud's container bridge) must still answer
/// `rabbitmqctl` at `localhost`, and apps never need distribution.
fn distribution_host(bind: &str) -> &'static str {
    if bind.contains(':') {
        "::1"
    } else {
        "127.0.0.1"
    }
}

/// Writes the node's config, plugins and cookie, and returns its spec.
///
/// # Errors
/// A file cannot be written, or RabbitMQ is not installed.
pub fn prepare(ctx: &Ctx, row: &SharedNode, dir: &Path) -> Result<Spec, Error> {
    let bins = ctx.bins("rabbitmq")?;
    let port = |n: usize| row.ports.get(n).copied().unwrap_or(0);
    let bind = &ctx.config.bind_address;
    let memory = ctx.config.shared_node_memory_mb * 1024 * 1024;
    let conf = format!(
        "listeners.tcp.default = {bind}:{amqp}\nmanagement.tcp.ip = {bind}\n\
         management.tcp.port = {mgmt}\nloopback_users = none\ndefault_user = {ADMIN}\n\
         default_pass = {secret}\nvm_memory_high_watermark.absolute = {watermark}\n\
         distribution.listener.interface = {local}\nchannel_max = {CHANNEL_MAX}\n\
         max_message_size = {MAX_MESSAGE_BYTES}\n",
        local = distribution_host(bind),
        amqp = port(0),
        mgmt = port(1),
        secret = row.secret,
        watermark = memory / 5 * 2,
    );
    node::write_private(&dir.join("rabbitmq.conf"), &conf, ctx.user)?;
    node::write_private(
        &dir.join("enabled_plugins"),
        "[rabbitmq_management].\n",
        ctx.user,
    )?;
    let cookie = dir.join(".erlang.cookie");
    if !cookie.exists() {
        // Written before the first start, so an admin command (as the broker's user) never
        // creates one the node's user cannot read.
        node::write_private(&cookie, &node::secret(32), ctx.user)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))
            .map_err(|e| Error::io("cannot restrict", &cookie, e))?;
    }
    Ok(Spec {
        name: "rabbitmq".to_owned(),
        program: bins.get("server")?.to_path_buf(),
        args: Vec::new(),
        env: env(dir, &row.ports, bind),
        dir: dir.to_path_buf(),
        user: ctx.user,
        memory_bytes: ctx.memory_limit(memory),
        contain: ctx.contain.clone(),
        router: crate::route::router(Arc::clone(&ctx.store), "rabbitmq"),
    })
}

async fn run(ctx: &Ctx, r: &Running, args: &[&str], redact: &[&str]) -> Result<String, Error> {
    let mut env = env(&r.dir, &r.ports, &ctx.config.bind_address);
    // Run on the host before the node's own epmd is up, `rabbitmqctl` would start an epmd
    // daemon of its own on the node's epmd port, outside the node's container, that outlives
    // node and broker (and that the node then registers with): the CLI only ever talks to the
    // node's epmd, and fails (the probe tries again) while there is none.
    env.push(("ERL_FLAGS".to_owned(), "-start_epmd false".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ctx.admin_command("rabbitmq", "ctl", args, &env, redact)
        .await
}

/// Waits until the node has finished starting and its management API answers the admin.
///
/// # Errors
/// [`Error::NodeStart`] after the start timeout.
pub async fn ready(ctx: &Ctx, r: &Running) -> Result<(), Error> {
    ctx.wait_ready(r, || async {
        run(ctx, r, &["-q", "await_startup", "--timeout", "10"], &[]).await?;
        api_on(ctx, r, Method::GET, "overview", None, &[200])
            .await
            .map(drop)
    })
    .await
}

/// Stops the node's private epmd once the node is down.
pub async fn stop_epmd(ctx: &Ctx, r: &Running) {
    let Ok(epmd) = ctx
        .bins("rabbitmq")
        .and_then(|b| b.get("epmd").map(Path::to_path_buf))
    else {
        return;
    };
    let port = r.ports.get(3).copied().unwrap_or(0).to_string();
    let _ = node::exec(
        &epmd,
        &["-kill"],
        &[("ERL_EPMD_PORT", port.as_str())],
        ctx.user,
        COMMAND_TIMEOUT,
        &[],
    )
    .await;
}

/// One call of the node's management API as its administrator; a status outside `ok` is an
/// error naming the call (never its body: that may hold a password).
async fn api_on(
    ctx: &Ctx,
    r: &Running,
    method: Method,
    path: &str,
    body: Option<Value>,
    ok: &[u16],
) -> Result<Value, Error> {
    let url = format!(
        "http://{}:{}/api/{path}",
        super::redis::admin_host(&ctx.config.bind_address),
        r.ports.get(1).copied().unwrap_or(0)
    );
    let mut req = ctx
        .http
        .request(method.clone(), url)
        .basic_auth(ADMIN, Some(&r.secret))
        .timeout(COMMAND_TIMEOUT);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let what = format!("{method} /api/{path}");
    let resp = req
        .send()
        .await
        .map_err(|e| Error::command("rabbitmq management API", format!("{what}: {e}")))?;
    let status = resp.status().as_u16();
    if !ok.contains(&status) {
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.chars().take(300).collect();
        return Err(Error::command(
            "rabbitmq management API",
            format!("{what} answered {status}: {text}"),
        ));
    }
    Ok(resp.json::<Value>().await.unwrap_or(Value::Null))
}

async fn api(
    ctx: &Ctx,
    method: Method,
    path: &str,
    body: Option<Value>,
    ok: &[u16],
) -> Result<Value, Error> {
    let r = ctx
        .running("rabbitmq")
        .await
        .ok_or_else(|| Error::NodeStart {
            node: "rabbitmq".to_owned(),
            detail: "is not running".to_owned(),
        })?;
    api_on(ctx, &r, method, path, body, ok).await
}

/// Created or updated.
const PUT_OK: &[u16] = &[201, 204];
/// Deleted, or already gone.
const DELETE_OK: &[u16] = &[204, 404];

fn everything() -> Value {
    json!({"configure": ".*", "write": ".*", "read": ".*"})
}

/// Makes the instance's vhost with the plan's limits.
///
/// # Errors
/// The node refused.
pub async fn provision(ctx: &Ctx, plan: &Plan, i: &Instance) -> Result<(), Error> {
    ctx.shared("rabbitmq").await?;
    api(
        ctx,
        Method::PUT,
        &format!("vhosts/{}", i.id),
        Some(json!({})),
        PUT_OK,
    )
    .await?;
    api(
        ctx,
        Method::PUT,
        &format!("permissions/{}/{ADMIN}", i.id),
        Some(everything()),
        PUT_OK,
    )
    .await?;
    limits(ctx, i, plan).await
}

/// The policy (and operator policy) holding every queue of a vhost to its plan's share of
/// memory.
pub const POLICY: &str = "hydrant-plan";

/// Sets the vhost's limits to plan `to`'s: connections and queues (vhost limits), and each
/// queue's length in messages and bytes (a policy and an operator policy, which the vhost's
/// users can neither change nor loosen: where a queue's own arguments also set a length, the
/// lower one holds).
///
/// # Errors
/// The node refused.
pub async fn limits(ctx: &Ctx, i: &Instance, to: &Plan) -> Result<(), Error> {
    for (limit, value) in [
        ("max-connections", to.connections),
        ("max-queues", to.queues),
    ] {
        api(
            ctx,
            Method::PUT,
            &format!("vhost-limits/{}/{limit}", i.id),
            Some(json!({"value": value})),
            PUT_OK,
        )
        .await?;
    }
    let lengths = json!({
        "max-length-bytes": to.queue_bytes(),
        "max-length": to.queue_messages(),
    });
    let mut full = lengths.clone();
    if let Some(map) = full.as_object_mut() {
        // A full queue refuses new messages (a publisher with confirms is told) rather than
        // dropping the oldest ones it has already accepted.
        map.insert("overflow".to_owned(), json!("reject-publish"));
    }
    let body = |definition: &Value| json!({"pattern": ".*", "apply-to": "queues", "priority": 0, "definition": definition});
    // The vhost's own policy (its users are not policymakers, so they cannot change it), and
    // the same lengths as an operator policy, which holds whatever policy a vhost ever gets
    // (RabbitMQ before 3.12 takes no `overflow` there).
    api(
        ctx,
        Method::PUT,
        &format!("policies/{}/{POLICY}", i.id),
        Some(body(&full)),
        PUT_OK,
    )
    .await?;
    api(
        ctx,
        Method::PUT,
        &format!("operator-policies/{}/{POLICY}", i.id),
        Some(body(&lengths)),
        PUT_OK,
    )
    .await?;
    Ok(())
}

/// Makes binding `b`'s user with full rights on the vhost.
///
/// # Errors
/// The node refused.
pub async fn bind(ctx: &Ctx, i: &Instance, b: &Binding) -> Result<(), Error> {
    ctx.shared("rabbitmq").await?;
    let u = &b.username;
    api(
        ctx,
        Method::PUT,
        &format!("users/{u}"),
        Some(json!({"password": b.password, "tags": "management"})),
        PUT_OK,
    )
    .await?;
    api(
        ctx,
        Method::PUT,
        &format!("permissions/{}/{u}", i.id),
        Some(everything()),
        PUT_OK,
    )
    .await
    .map(drop)
}

/// Deletes binding `b`'s user and closes its connections.
///
/// # Errors
/// The node refused.
pub async fn unbind(ctx: &Ctx, b: &Binding) -> Result<(), Error> {
    ctx.shared("rabbitmq").await?;
    let u = &b.username;
    api(ctx, Method::DELETE, &format!("users/{u}"), None, DELETE_OK).await?;
    let conns = api(
        ctx,
        Method::GET,
        "connections?columns=name,user",
        None,
        &[200],
    )
    .await?;
    for c in conns.as_array().into_iter().flatten() {
        if c["user"].as_str() == Some(u.as_str())
            && let Some(name) = c["name"].as_str()
        {
            let name =
                percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
            // It may have closed meanwhile; that is what was wanted.
            let _ = api(
                ctx,
                Method::DELETE,
                &format!("connections/{name}"),
                None,
                DELETE_OK,
            )
            .await;
        }
    }
    Ok(())
}

/// Deletes the instance's bindings' users and its vhost.
///
/// # Errors
/// The node refused.
pub async fn deprovision(ctx: &Ctx, i: &Instance, bindings: &[Binding]) -> Result<(), Error> {
    ctx.shared("rabbitmq").await?;
    for b in bindings {
        unbind(ctx, b).await?;
    }
    api(
        ctx,
        Method::DELETE,
        &format!("vhosts/{}", i.id),
        None,
        DELETE_OK,
    )
    .await
    .map(drop)
}

/// Binding `b`'s credentials, in cf-rabbitmq-multitenant-broker's shape, plus the consumer
/// prefetch its plan recommends (`prefetch_count`, also under `protocols.amqp`).
#[must_use]
pub fn credentials(host: &str, amqp: u16, mgmt: u16, i: &Instance, b: &Binding) -> Value {
    let (u, p, v) = (&b.username, &b.password, &i.id);
    let prefetch = crate::catalog::offering("rabbitmq")
        .and_then(|o| o.plan(&i.plan_id))
        .map_or(1, Plan::prefetch);
    let uri = format!("amqp://{u}:{p}@{host}:{amqp}/{v}");
    let api = format!("http://{u}:{p}@{host}:{mgmt}/api/");
    json!({
        "dashboard_url": format!("http://{host}:{mgmt}/#/login/"),
        "username": u,
        "password": p,
        "hostname": host,
        "hostnames": [host],
        "vhost": v,
        "uri": uri,
        "uris": [uri],
        "http_api_uri": api,
        "http_api_uris": [api],
        "ssl": false,
        "prefetch_count": prefetch,
        "protocols": {
            "amqp": {
                "username": u, "password": p, "vhost": v, "host": host, "hosts": [host],
                "port": amqp, "ssl": false, "uri": uri, "uris": [uri],
                "prefetch_count": prefetch,
            },
            "management": {
                "username": u, "password": p, "host": host, "hosts": [host],
                "port": mgmt, "ssl": false, "path": "/api/", "uri": api, "uris": [api],
            },
        },
    })
}

/// The vhost's connections, queues and messages waiting (the management API's view, which
/// samples every few seconds).
///
/// # Errors
/// The node did not answer.
pub async fn usage(ctx: &Ctx, i: &Instance) -> Result<Usage, Error> {
    let queues = api(
        ctx,
        Method::GET,
        &format!("queues/{}?columns=messages", i.id),
        None,
        &[200],
    )
    .await?;
    let depths: Vec<f64> = queues
        .as_array()
        .into_iter()
        .flatten()
        .map(|q| q["messages"].as_f64().unwrap_or(0.0))
        .collect();
    let conns = api(
        ctx,
        Method::GET,
        &format!("vhosts/{}/connections?columns=name", i.id),
        None,
        &[200],
    )
    .await?;
    Ok(Usage {
        connections: conns.as_array().map_or(0, Vec::len) as f64,
        memory_bytes: None,
        storage_bytes: None,
        ops_total: None,
        queue_depth: Some(depths.iter().sum()),
        queues: Some(depths.len() as f64),
    })
}
