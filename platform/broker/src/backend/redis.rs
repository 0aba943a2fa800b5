//! Redis: one `redis-server` per instance on a pooled port, `maxmemory` = the plan's size (and
//! a memory cgroup a little above it), the instance's admin secret as the `default` user's
//! password, and one ACL user per binding (`+@all -@admin`, every key), so one binding is
//! revoked alone with `ACL DELUSER`, which also closes its connections.
//!
//! Invariant: ACL users live only in the server's memory, so after every (re)start of the node
//! [`reapply_users`] gives it the users of the bindings the store holds — a SIGKILLed node comes
//! back with exactly the bindings that exist, no more.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{Bins, COMMAND_TIMEOUT, Ctx, Running, Usage};
use crate::Error;
use crate::catalog::Plan;
use crate::node::{self, Spec};
use crate::store::{Binding, Instance, Store};

/// Headroom of the memory cgroup over `maxmemory`: the server's own structures, buffers and
/// the fork of an AOF rewrite.
const CGROUP_HEADROOM_MB: u64 = 64;

/// The node name of instance `id`.
#[must_use]
pub fn node_name(id: &str) -> String {
    format!("redis-{id}")
}

fn config_text(ctx: &Ctx, instance: &Instance, plan: &Plan, dir: &Path) -> String {
    let policy = instance
        .parameters
        .get("maxmemory_policy")
        .and_then(Value::as_str)
        .unwrap_or("noeviction");
    format!(
        "bind {bind}\nport {port}\nprotected-mode no\ndaemonize no\nlogfile \"\"\n\
         dir {dir}\nmaxmemory {mb}mb\nmaxmemory-policy {policy}\nappendonly yes\n\
         appendfsync everysec\nsave \"\"\nrequirepass {secret}\n",
        bind = ctx.config.bind_address,
        port = instance.port,
        dir = dir.display(),
        mb = plan.memory_mb,
        secret = instance.secret,
    )
}

/// Writes the instance's config (0600: it holds the admin secret) and its node's spec.
///
/// # Errors
/// The config cannot be written, or Redis is not installed.
pub fn prepare(ctx: &Ctx, instance: &Instance, plan: &Plan, dir: &Path) -> Result<Spec, Error> {
    let bins = ctx.bins("redis")?;
    let conf = dir.join("redis.conf");
    node::write_private(&conf, &config_text(ctx, instance, plan, dir), ctx.user)?;
    let source = instance.id.clone();
    Ok(Spec {
        name: node_name(&instance.id),
        program: bins.get("server")?.to_path_buf(),
        args: vec![conf.display().to_string()],
        env: Vec::new(),
        dir: dir.to_path_buf(),
        user: ctx.user,
        memory_bytes: ctx.memory_limit((plan.memory_mb + CGROUP_HEADROOM_MB) * 1024 * 1024),
        contain: ctx.contain.clone(),
        router: Arc::new(move |_| Some(source.clone())),
    })
}

pub(crate) fn admin_host(bind: &str) -> &str {
    match bind {
        "0.0.0.0" => "127.0.0.1",
        "::" => "::1",
        other => other,
    }
}

async fn cli(
    bins: &Bins,
    host: &str,
    port: u16,
    secret: &str,
    args: &[&str],
) -> Result<String, Error> {
    let port = port.to_string();
    let mut all = vec!["-h", host, "-p", port.as_str(), "--no-auth-warning"];
    all.extend_from_slice(args);
    let out = node::exec(
        bins.get("cli")?,
        &all,
        &[("REDISCLI_AUTH", secret)],
        None,
        COMMAND_TIMEOUT,
        &[secret],
    )
    .await?;
    let first = out.trim_start();
    // redis-cli exits 0 on an error reply; the reply's first word says so.
    if [
        "ERR",
        "WRONGPASS",
        "NOPERM",
        "NOAUTH",
        "LOADING",
        "MISCONF",
        "OOM",
    ]
    .iter()
    .any(|e| first.starts_with(e))
    {
        let mut detail = first.lines().next().unwrap_or_default().to_owned();
        detail = detail.replace(secret, "***");
        return Err(Error::command("redis-cli", detail));
    }
    Ok(out)
}

async fn admin(ctx: &Ctx, r: &Running, args: &[&str]) -> Result<String, Error> {
    let port = r.ports.first().copied().unwrap_or(0);
    cli(
        ctx.bins("redis")?,
        admin_host(&ctx.config.bind_address),
        port,
        &r.secret,
        args,
    )
    .await
}

/// Waits until the node answers `PING`.
///
/// # Errors
/// [`Error::NodeStart`] after the start timeout.
pub async fn ready(ctx: &Ctx, r: &Running) -> Result<(), Error> {
    ctx.wait_ready(r, || async {
        let out = admin(ctx, r, &["PING"]).await?;
        if out.trim() == "PONG" {
            Ok(())
        } else {
            Err(Error::command(
                "redis-cli",
                format!("PING answered {:?}", out.trim()),
            ))
        }
    })
    .await
}

fn setuser_args<'a>(username: &'a str, password: &'a str) -> Vec<String> {
    vec![
        "ACL".to_owned(),
        "SETUSER".to_owned(),
        username.to_owned(),
        "reset".to_owned(),
        "on".to_owned(),
        format!(">{password}"),
        "~*".to_owned(),
        "&*".to_owned(),
        "+@all".to_owned(),
        "-@admin".to_owned(),
    ]
}

/// Makes binding `b`'s ACL user.
///
/// # Errors
/// The node refused.
pub async fn bind(ctx: &Ctx, r: &Running, b: &Binding) -> Result<(), Error> {
    let args = setuser_args(&b.username, &b.password);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    admin(ctx, r, &refs).await.map(drop)
}

/// Drops binding `b`'s ACL user (Redis closes its connections).
///
/// # Errors
/// The node refused.
pub async fn unbind(ctx: &Ctx, r: &Running, b: &Binding) -> Result<(), Error> {
    admin(ctx, r, &["ACL", "DELUSER", &b.username])
        .await
        .map(drop)
}

/// After every start of instance `id`'s node, gives it the ACL users of its bindings.
pub async fn reapply_users(store: Arc<Store>, bins: Bins, host: String, r: Running, id: String) {
    let mut starts = r.node.starts();
    while starts.changed().await.is_ok() {
        let port = r.ports.first().copied().unwrap_or(0);
        let bindings = match store.bindings_of(&id) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(instance = %id, "cannot read bindings: {e}");
                continue;
            }
        };
        // The server may still be loading its append-only file: retry for a while.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        'users: for b in &bindings {
            let args = setuser_args(&b.username, &b.password);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            loop {
                match cli(&bins, &host, port, &r.secret, &refs).await {
                    Ok(_) => break,
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        tracing::warn!(instance = %id, "cannot restore binding users: {e}");
                        break 'users;
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                }
            }
        }
        if !bindings.is_empty() {
            tracing::info!(instance = %id, users = bindings.len(), "Redis binding users restored after a start");
        }
    }
}

/// Binding `b`'s credentials.
#[must_use]
pub fn credentials(host: &str, port: u16, b: &Binding) -> Value {
    json!({
        "host": host,
        "hostname": host,
        "port": port,
        "username": b.username,
        "password": b.password,
        "uri": format!("redis://{}:{}@{host}:{port}", b.username, b.password),
    })
}

/// `INFO`'s connections, memory and command count.
///
/// # Errors
/// The node did not answer.
pub async fn usage(ctx: &Ctx, r: &Running) -> Result<Usage, Error> {
    let info = admin(ctx, r, &["INFO"]).await?;
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    Ok(Usage {
        // The broker's own INFO connection is one of them.
        connections: (field("connected_clients").unwrap_or(1.0) - 1.0).max(0.0),
        memory_bytes: field("used_memory"),
        storage_bytes: field("used_memory_dataset"),
        ops_total: field("total_commands_processed"),
        queue_depth: None,
        queues: None,
    })
}

/// Applies plan `to`: `maxmemory` now, the cgroup limit, and the config file for restarts.
///
/// # Errors
/// The node refused, or the config could not be written.
pub async fn resize(ctx: &Ctx, r: &Running, i: &Instance, to: &Plan) -> Result<(), Error> {
    admin(
        ctx,
        r,
        &["CONFIG", "SET", "maxmemory", &format!("{}mb", to.memory_mb)],
    )
    .await?;
    node::write_private(
        &r.dir.join("redis.conf"),
        &config_text(ctx, i, to, &r.dir),
        ctx.user,
    )?;
    if ctx.config.memory_cgroups {
        node::cgroup::set_limit(
            &r.node.name,
            (to.memory_mb + CGROUP_HEADROOM_MB) * 1024 * 1024,
        );
    }
    Ok(())
}
