//! MySQL (MariaDB): one shared `mariadbd` (`mariadb-install-db` once) with a database
//! `cf_<instance>` per instance and a user per binding (`MAX_USER_CONNECTIONS` from the plan or
//! the binding's `max_user_connections`; `SELECT` only with `read-only`), as cf-mysql-broker
//! does. Unbind drops the user and kills its open connections.
//!
//! Invariant: the broker administers the server only over its Unix socket with socket
//! (peer-credential) authentication: no administrator password exists to leak, anonymous
//! users are removed at every start, and TCP logins are only the bindings' users.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use sha2::Digest as _;

use super::{COMMAND_TIMEOUT, Ctx, Running, Usage, database_name};
use crate::Error;
use crate::catalog::Plan;
use crate::node::{self, Spec};
use crate::store::{Binding, Instance, SharedNode};

/// A binding's user name: `u` and 15 hex digits of the binding id's SHA-256 (MariaDB user names
/// stay short, and a binding id never shows on the server).
#[must_use]
pub fn username(binding_id: &str) -> String {
    let digest = sha2::Sha256::digest(binding_id.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("u{}", &hex[..15])
}

fn socket(dir: &Path) -> String {
    dir.join("mysqld.sock").display().to_string()
}

/// Initialises the data directory on first use and returns the node's spec.
///
/// # Errors
/// `mariadb-install-db` failed, or MariaDB is not installed.
pub async fn prepare(ctx: &Ctx, row: &SharedNode, dir: &Path) -> Result<Spec, Error> {
    let bins = ctx.bins("mysql")?;
    let data = dir.join("data");
    if !data.join("mysql").exists() {
        let datadir = format!("--datadir={}", data.display());
        let socket_user = format!("--auth-root-socket-user={}", ctx.admin_user);
        node::exec(
            bins.get("install-db")?,
            &[
                "--no-defaults",
                &datadir,
                "--auth-root-authentication-method=socket",
                &socket_user,
                "--skip-test-db",
            ],
            &[],
            ctx.user,
            COMMAND_TIMEOUT,
            &[],
        )
        .await?;
    }
    // Temporary tables and sort files go to the node's disk, not a container's small /tmp
    // (which counts against its memory).
    let tmp = dir.join("tmp");
    node::make_dir(&tmp, ctx.user)?;
    let port = row.ports.first().copied().unwrap_or(0);
    let args = vec![
        "--no-defaults".to_owned(),
        format!("--datadir={}", data.display()),
        format!("--tmpdir={}", tmp.display()),
        format!("--socket={}", socket(dir)),
        format!("--port={port}"),
        format!("--bind-address={}", ctx.config.bind_address),
        format!("--pid-file={}", dir.join("mysqld.pid").display()),
        "--skip-name-resolve".to_owned(),
        "--innodb-buffer-pool-size=32M".to_owned(),
        "--innodb-log-file-size=16M".to_owned(),
        "--performance-schema=OFF".to_owned(),
        "--max-connections=500".to_owned(),
    ];
    Ok(Spec {
        name: "mysql".to_owned(),
        program: bins.get("mysqld")?.to_path_buf(),
        args,
        env: Vec::new(),
        dir: dir.to_path_buf(),
        user: ctx.user,
        memory_bytes: ctx.memory_limit(ctx.config.shared_node_memory_mb * 1024 * 1024),
        contain: ctx.contain.clone(),
        router: crate::route::router(Arc::clone(&ctx.store), "mysql"),
    })
}

async fn sql(ctx: &Ctx, statement: &str, redact: &[&str]) -> Result<String, Error> {
    let r = ctx.running("mysql").await.ok_or_else(|| Error::NodeStart {
        node: "mysql".to_owned(),
        detail: "is not running".to_owned(),
    })?;
    run(ctx, &r, statement, redact).await
}

async fn run(ctx: &Ctx, r: &Running, statement: &str, redact: &[&str]) -> Result<String, Error> {
    let socket = socket(&r.dir);
    let args = [
        "--no-defaults",
        "-S",
        &socket,
        "-u",
        &ctx.admin_user,
        "-N",
        "-B",
        "-e",
        statement,
    ];
    ctx.admin_command("mysql", "client", &args, &[], redact)
        .await
}

/// Waits until the server answers, then removes anonymous users.
///
/// # Errors
/// [`Error::NodeStart`] after the start timeout.
pub async fn ready(ctx: &Ctx, r: &Running) -> Result<(), Error> {
    ctx.wait_ready(r, || async { run(ctx, r, "SELECT 1", &[]).await.map(drop) })
        .await?;
    run(
        ctx,
        r,
        "DELETE FROM mysql.global_priv WHERE User = ''; FLUSH PRIVILEGES",
        &[],
    )
    .await
    .map(drop)
}

/// Makes the instance's database.
///
/// # Errors
/// The server refused.
pub async fn provision(ctx: &Ctx, i: &Instance) -> Result<(), Error> {
    ctx.shared("mysql").await?;
    let db = database_name(&i.id);
    sql(
        ctx,
        &format!("CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4"),
        &[],
    )
    .await
    .map(drop)
}

fn max_connections(plan: &Plan, b: &Binding) -> u64 {
    plan.connections_in(&b.parameters, "max_user_connections")
}

/// Makes binding `b`'s user with its grants.
///
/// # Errors
/// The server refused.
pub async fn bind(ctx: &Ctx, plan: &Plan, i: &Instance, b: &Binding) -> Result<(), Error> {
    ctx.shared("mysql").await?;
    let db = database_name(&i.id);
    let (u, pw) = (&b.username, b.password.as_str());
    let privileges = if b.parameters.get("read-only").and_then(Value::as_bool) == Some(true) {
        "SELECT"
    } else {
        "ALL PRIVILEGES"
    };
    let max = max_connections(plan, b);
    sql(
        ctx,
        &format!(
            "CREATE USER IF NOT EXISTS '{u}'@'%' IDENTIFIED BY '{pw}' WITH MAX_USER_CONNECTIONS {max}; \
             GRANT {privileges} ON `{db}`.* TO '{u}'@'%'"
        ),
        &[pw],
    )
    .await
    .map(drop)
}

/// Kills every connection of user `u` (they keep the database privileges they started with
/// until they end).
async fn kill_connections(ctx: &Ctx, u: &str) -> Result<(), Error> {
    let ids = sql(
        ctx,
        &format!("SELECT id FROM information_schema.processlist WHERE user = '{u}'"),
        &[],
    )
    .await?;
    for id in ids.lines().filter_map(|l| l.trim().parse::<u64>().ok()) {
        // The connection may have ended meanwhile; that is what was wanted.
        let _ = sql(ctx, &format!("KILL {id}"), &[]).await;
    }
    Ok(())
}

/// Over its storage quota: binding `b` keeps reading and deleting (`SELECT`, `DELETE`, `DROP`,
/// which also allows `TRUNCATE`) and loses every other privilege on the database, as
/// cf-mysql-quota-enforcer does; its open connections end.
///
/// # Errors
/// The server refused.
pub async fn revoke_writes(ctx: &Ctx, i: &Instance, b: &Binding) -> Result<(), Error> {
    let db = database_name(&i.id);
    let u = &b.username;
    sql(
        ctx,
        &format!(
            "REVOKE ALL PRIVILEGES ON `{db}`.* FROM '{u}'@'%'; \
             GRANT SELECT, DELETE, DROP, SHOW VIEW ON `{db}`.* TO '{u}'@'%'"
        ),
        &[],
    )
    .await?;
    kill_connections(ctx, u).await
}

/// Back under its quota: binding `b` gets every privilege on the database again (new
/// connections have them).
///
/// # Errors
/// The server refused.
pub async fn restore_writes(ctx: &Ctx, i: &Instance, b: &Binding) -> Result<(), Error> {
    let db = database_name(&i.id);
    sql(
        ctx,
        &format!("GRANT ALL PRIVILEGES ON `{db}`.* TO '{}'@'%'", b.username),
        &[],
    )
    .await
    .map(drop)
}

/// Drops binding `b`'s user and kills its connections.
///
/// # Errors
/// The server refused.
pub async fn unbind(ctx: &Ctx, b: &Binding) -> Result<(), Error> {
    ctx.shared("mysql").await?;
    let u = &b.username;
    sql(ctx, &format!("DROP USER IF EXISTS '{u}'@'%'"), &[]).await?;
    kill_connections(ctx, u).await
}

/// Drops the instance's bindings' users and its database.
///
/// # Errors
/// The server refused.
pub async fn deprovision(ctx: &Ctx, i: &Instance, bindings: &[Binding]) -> Result<(), Error> {
    ctx.shared("mysql").await?;
    for b in bindings {
        unbind(ctx, b).await?;
    }
    let db = database_name(&i.id);
    sql(ctx, &format!("DROP DATABASE IF EXISTS `{db}`"), &[])
        .await
        .map(drop)
}

/// Binding `b`'s credentials, in cf-mysql-broker's shape.
#[must_use]
pub fn credentials(host: &str, port: u16, i: &Instance, b: &Binding) -> Value {
    let c = super::sql_credentials(("mysql", "mysql", "?reconnect=true"), (host, port), i, b);
    Value::Object(c)
}

/// Bytes the instance's database holds on disk: its directory of table files.
///
/// # Errors
/// The node is not running.
pub async fn stored_bytes(ctx: &Ctx, i: &Instance) -> Result<u64, Error> {
    let r = ctx.running("mysql").await.ok_or_else(|| Error::NodeStart {
        node: "mysql".to_owned(),
        detail: "is not running".to_owned(),
    })?;
    let dir = r.dir.join("data").join(database_name(&i.id));
    Ok(
        tokio::task::spawn_blocking(move || crate::quota::dir_bytes(&dir))
            .await
            .unwrap_or(0),
    )
}

/// Rebuilds every table of the instance's database (`OPTIMIZE TABLE`: InnoDB recreates it),
/// so the file-per-table files shrink to what the rows left after a `DELETE` need; false when
/// it has no table.
///
/// # Errors
/// The server refused.
pub async fn reclaim(ctx: &Ctx, i: &Instance) -> Result<bool, Error> {
    let db = database_name(&i.id);
    let tables = sql(
        ctx,
        &format!(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = '{db}' AND table_type = 'BASE TABLE'"
        ),
        &[],
    )
    .await?;
    // Tenants name their tables: only names that need no escaping beyond the backticks
    // are spliced in (the batch output escapes tabs, newlines and backslashes).
    let names: Vec<String> = tables
        .lines()
        .filter(|t| !t.is_empty() && !t.contains(['`', '\\']) && !t.chars().any(char::is_control))
        .map(|t| format!("`{db}`.`{t}`"))
        .collect();
    if names.is_empty() {
        return Ok(false);
    }
    sql(ctx, &format!("OPTIMIZE TABLE {}", names.join(", ")), &[]).await?;
    Ok(true)
}

/// Connections to and size of the instance's database.
///
/// # Errors
/// The server did not answer.
pub async fn usage(ctx: &Ctx, i: &Instance) -> Result<Usage, Error> {
    let db = database_name(&i.id);
    let out = sql(
        ctx,
        &format!("SELECT COUNT(*) FROM information_schema.processlist WHERE db = '{db}'"),
        &[],
    )
    .await?;
    // What the quota holds: the database's files on disk (exact at once, where
    // information_schema's sizes lag behind InnoDB's statistics).
    let stored = stored_bytes(ctx, i).await?;
    Ok(Usage {
        connections: out.trim().parse::<f64>().unwrap_or(0.0),
        memory_bytes: None,
        storage_bytes: Some(stored as f64),
        ops_total: None,
        queue_depth: None,
        queues: None,
    })
}

/// Applies plan `to`'s per-user connection cap to bindings that did not set their own.
///
/// # Errors
/// The server refused.
pub async fn resize(ctx: &Ctx, i: &Instance, to: &Plan) -> Result<(), Error> {
    for b in ctx.store.bindings_of(&i.id)? {
        let max = max_connections(to, &b);
        sql(
            ctx,
            &format!(
                "ALTER USER '{}'@'%' WITH MAX_USER_CONNECTIONS {max}",
                b.username
            ),
            &[],
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_short_and_stable() {
        let u = username("6b0c1a5e-5b7e-4a53-9d3c-b7c1a6a2f0c1");
        assert_eq!(u.len(), 16);
        assert_eq!(u, username("6b0c1a5e-5b7e-4a53-9d3c-b7c1a6a2f0c1"));
    }
}
