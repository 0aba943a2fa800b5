//! PostgreSQL: one shared cluster (`initdb` once, then `postgres` supervised) with a database
//! per instance owned by a login-less owner role, `REVOKE ALL … FROM PUBLIC` on it, and a login
//! role per binding — a member of the owner role whose session runs as it (so every binding
//! sees and owns the same tables), or, read-only, with `SELECT` on present and future tables.
//! Unbind reassigns and drops what the role owns, ends its sessions and drops it.
//!
//! Invariant: the broker administers the cluster only over its Unix socket, in the node's
//! directory (mode 0700, owned by the node's user), with `trust` there and `scram-sha-256` on
//! TCP: only the broker reaches the superuser; apps reach their database with their binding's
//! password.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::{COMMAND_TIMEOUT, Ctx, Running, Usage, database_name};
use crate::Error;
use crate::catalog::Plan;
use crate::node::{self, Spec};
use crate::store::{Binding, Instance, SharedNode};

/// The cluster's superuser.
const SUPERUSER: &str = "hydrant";

/// A binding's role name.
#[must_use]
pub fn username(binding_id: &str) -> String {
    format!("b_{}", binding_id.replace('-', "_"))
}

fn owner(instance_id: &str) -> String {
    format!("o_{}", instance_id.replace('-', "_"))
}

/// Initialises the cluster on first use and returns the node's spec.
///
/// # Errors
/// `initdb` failed, or PostgreSQL is not installed.
pub async fn prepare(ctx: &Ctx, row: &SharedNode, dir: &Path) -> Result<Spec, Error> {
    let bins = ctx.bins("postgresql")?;
    let pgdata = dir.join("data");
    if !pgdata.join("PG_VERSION").exists() {
        let pgdata_arg = pgdata.display().to_string();
        node::exec(
            bins.get("initdb")?,
            &[
                "-D",
                &pgdata_arg,
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-instructions",
            ],
            &[],
            ctx.user,
            COMMAND_TIMEOUT,
            &[],
        )
        .await?;
    }
    let port = row.ports.first().copied().unwrap_or(0);
    let settings = [
        format!("listen_addresses={}", ctx.config.bind_address),
        "log_line_prefix=%d ".to_owned(),
        "logging_collector=off".to_owned(),
        "shared_buffers=32MB".to_owned(),
        "max_connections=300".to_owned(),
        "password_encryption=scram-sha-256".to_owned(),
    ];
    let mut args = vec![
        "-D".to_owned(),
        pgdata.display().to_string(),
        "-p".to_owned(),
        port.to_string(),
        "-k".to_owned(),
        dir.display().to_string(),
    ];
    for s in settings {
        args.push("-c".to_owned());
        args.push(s);
    }
    Ok(Spec {
        name: "postgresql".to_owned(),
        program: bins.get("postgres")?.to_path_buf(),
        args,
        env: Vec::new(),
        dir: dir.to_path_buf(),
        user: ctx.user,
        memory_bytes: ctx.memory_limit(ctx.config.shared_node_memory_mb * 1024 * 1024),
        contain: ctx.contain.clone(),
        // `log_line_prefix` puts the session's database first, so a line of a tenant's own
        // session names its database (see `crate::route` for what proves a line is theirs).
        router: crate::route::router(Arc::clone(&ctx.store), "postgresql"),
    })
}

async fn psql(
    ctx: &Ctx,
    db: &str,
    statements: &[String],
    redact: &[&str],
) -> Result<String, Error> {
    let r = ctx
        .running("postgresql")
        .await
        .ok_or_else(|| Error::NodeStart {
            node: "postgresql".to_owned(),
            detail: "is not running".to_owned(),
        })?;
    run(ctx, &r, db, statements, redact).await
}

async fn run(
    ctx: &Ctx,
    r: &Running,
    db: &str,
    statements: &[String],
    redact: &[&str],
) -> Result<String, Error> {
    let socket = r.dir.display().to_string();
    let port = r.ports.first().copied().unwrap_or(0).to_string();
    let mut args: Vec<&str> = vec![
        "-X",
        "-q",
        "-t",
        "-A",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        &socket,
        "-p",
        &port,
        "-U",
        SUPERUSER,
        "-d",
        db,
    ];
    for s in statements {
        args.push("-c");
        args.push(s);
    }
    ctx.admin_command("postgresql", "psql", &args, &[], redact)
        .await
}

/// Waits until the cluster answers a query.
///
/// # Errors
/// [`Error::NodeStart`] after the start timeout.
pub async fn ready(ctx: &Ctx, r: &Running) -> Result<(), Error> {
    ctx.wait_ready(r, || async {
        run(ctx, r, "postgres", &["SELECT 1".to_owned()], &[])
            .await
            .map(drop)
    })
    .await
}

async fn exists(ctx: &Ctx, query: String) -> Result<bool, Error> {
    Ok(psql(ctx, "postgres", &[query], &[]).await?.trim() == "1")
}

/// Makes the instance's owner role and database.
///
/// # Errors
/// The cluster refused.
pub async fn provision(ctx: &Ctx, plan: &Plan, i: &Instance) -> Result<(), Error> {
    ctx.shared("postgresql").await?;
    let db = database_name(&i.id);
    let owner = owner(&i.id);
    let limit = connection_limit(plan, i);
    if !exists(
        ctx,
        format!("SELECT 1 FROM pg_roles WHERE rolname = '{owner}'"),
    )
    .await?
    {
        psql(
            ctx,
            "postgres",
            &[format!("CREATE ROLE \"{owner}\" NOLOGIN")],
            &[],
        )
        .await?;
    }
    if !exists(
        ctx,
        format!("SELECT 1 FROM pg_database WHERE datname = '{db}'"),
    )
    .await?
    {
        psql(
            ctx,
            "postgres",
            &[format!(
                "CREATE DATABASE \"{db}\" OWNER \"{owner}\" ENCODING 'UTF8' TEMPLATE template0 CONNECTION LIMIT {limit}"
            )],
            &[],
        )
        .await?;
    }
    psql(
        ctx,
        "postgres",
        &[format!("REVOKE ALL ON DATABASE \"{db}\" FROM PUBLIC")],
        &[],
    )
    .await?;
    psql(
        ctx,
        &db,
        &[
            "REVOKE ALL ON SCHEMA public FROM PUBLIC".to_owned(),
            format!("GRANT ALL ON SCHEMA public TO \"{owner}\""),
        ],
        &[],
    )
    .await
    .map(drop)
}

fn connection_limit(plan: &Plan, i: &Instance) -> u64 {
    plan.connections_in(&i.parameters, "connection_limit")
}

fn read_only(b: &Binding) -> bool {
    b.parameters.get("read-only").and_then(Value::as_bool) == Some(true)
}

/// Makes binding `b`'s login role.
///
/// # Errors
/// The cluster refused.
pub async fn bind(ctx: &Ctx, i: &Instance, b: &Binding) -> Result<(), Error> {
    ctx.shared("postgresql").await?;
    let db = database_name(&i.id);
    let owner = owner(&i.id);
    let user = &b.username;
    let pw = b.password.as_str();
    if exists(
        ctx,
        format!("SELECT 1 FROM pg_roles WHERE rolname = '{user}'"),
    )
    .await?
    {
        return Ok(());
    }
    if read_only(b) {
        psql(
            ctx,
            "postgres",
            &[
                format!("CREATE ROLE \"{user}\" LOGIN PASSWORD '{pw}'"),
                format!("GRANT CONNECT ON DATABASE \"{db}\" TO \"{user}\""),
            ],
            &[pw],
        )
        .await?;
        psql(
            ctx,
            &db,
            &[
                format!("GRANT USAGE ON SCHEMA public TO \"{user}\""),
                format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{user}\""),
                format!(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE \"{owner}\" IN SCHEMA public GRANT SELECT ON TABLES TO \"{user}\""
                ),
            ],
            &[],
        )
        .await?;
    } else {
        psql(
            ctx,
            "postgres",
            &[
                format!("CREATE ROLE \"{user}\" LOGIN PASSWORD '{pw}' IN ROLE \"{owner}\""),
                format!("ALTER ROLE \"{user}\" IN DATABASE \"{db}\" SET role = '{owner}'"),
                format!("GRANT CONNECT, TEMPORARY ON DATABASE \"{db}\" TO \"{user}\""),
            ],
            &[pw],
        )
        .await?;
    }
    Ok(())
}

async fn end_sessions(ctx: &Ctx, user: &str) -> Result<(), Error> {
    psql(
        ctx,
        "postgres",
        &[format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{user}'"
        )],
        &[],
    )
    .await
    .map(drop)
}

/// Over its storage quota: binding `b`'s role leaves the owner role (so it can neither write
/// nor grant itself anything back), keeps `SELECT`, `DELETE` and `TRUNCATE` on the tables of
/// `public`, and its sessions end.
///
/// # Errors
/// The cluster refused.
pub async fn revoke_writes(ctx: &Ctx, i: &Instance, b: &Binding) -> Result<(), Error> {
    let db = database_name(&i.id);
    let owner = owner(&i.id);
    let user = &b.username;
    psql(
        ctx,
        "postgres",
        &[
            format!("REVOKE \"{owner}\" FROM \"{user}\""),
            format!("ALTER ROLE \"{user}\" IN DATABASE \"{db}\" RESET role"),
        ],
        &[],
    )
    .await?;
    psql(
        ctx,
        &db,
        &[
            format!("GRANT USAGE ON SCHEMA public TO \"{user}\""),
            format!("GRANT SELECT, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO \"{user}\""),
        ],
        &[],
    )
    .await?;
    end_sessions(ctx, user).await
}

/// Back under its quota: binding `b`'s role is a member of the owner role again and runs as it;
/// with `end_sessions`, the sessions that ran without it end.
///
/// # Errors
/// The cluster refused.
pub async fn restore_writes(ctx: &Ctx, i: &Instance, b: &Binding, end: bool) -> Result<(), Error> {
    let db = database_name(&i.id);
    let owner = owner(&i.id);
    let user = &b.username;
    psql(
        ctx,
        &db,
        &[
            format!(
                "REVOKE SELECT, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public FROM \"{user}\""
            ),
            format!("REVOKE USAGE ON SCHEMA public FROM \"{user}\""),
        ],
        &[],
    )
    .await?;
    psql(
        ctx,
        "postgres",
        &[
            format!("GRANT \"{owner}\" TO \"{user}\""),
            format!("ALTER ROLE \"{user}\" IN DATABASE \"{db}\" SET role = '{owner}'"),
        ],
        &[],
    )
    .await?;
    if end {
        end_sessions(ctx, user).await?;
    }
    Ok(())
}

/// Drops binding `b`'s role: what it owns goes to the owner role, its grants are revoked, its
/// sessions end.
///
/// # Errors
/// The cluster refused.
pub async fn unbind(ctx: &Ctx, i: &Instance, b: &Binding) -> Result<(), Error> {
    ctx.shared("postgresql").await?;
    let db = database_name(&i.id);
    let user = &b.username;
    if !exists(
        ctx,
        format!("SELECT 1 FROM pg_roles WHERE rolname = '{user}'"),
    )
    .await?
    {
        return Ok(());
    }
    if exists(
        ctx,
        format!("SELECT 1 FROM pg_database WHERE datname = '{db}'"),
    )
    .await?
    {
        psql(
            ctx,
            &db,
            &[
                format!("REASSIGN OWNED BY \"{user}\" TO \"{}\"", owner(&i.id)),
                format!("DROP OWNED BY \"{user}\""),
            ],
            &[],
        )
        .await?;
    }
    psql(
        ctx,
        "postgres",
        &[
            format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{user}'"),
            format!("DROP ROLE IF EXISTS \"{user}\""),
        ],
        &[],
    )
    .await
    .map(drop)
}

/// Drops the instance's database (ending its sessions), its bindings' roles and its owner.
///
/// # Errors
/// The cluster refused.
pub async fn deprovision(ctx: &Ctx, i: &Instance, bindings: &[Binding]) -> Result<(), Error> {
    ctx.shared("postgresql").await?;
    for b in bindings {
        unbind(ctx, i, b).await?;
    }
    let db = database_name(&i.id);
    psql(
        ctx,
        "postgres",
        &[
            format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
            format!("DROP ROLE IF EXISTS \"{}\"", owner(&i.id)),
        ],
        &[],
    )
    .await
    .map(drop)
}

/// Binding `b`'s credentials (with `host` and `database`, the names PostgreSQL clients use).
#[must_use]
pub fn credentials(host: &str, port: u16, i: &Instance, b: &Binding) -> Value {
    let mut c = super::sql_credentials(("postgres", "postgresql", ""), (host, port), i, b);
    c.insert("host".to_owned(), host.into());
    c.insert("database".to_owned(), database_name(&i.id).into());
    Value::Object(c)
}

/// `VACUUM FULL` of the instance's database when its tables hold dead rows (what `DELETE`
/// left): the tables are rewritten with only their live rows, so `pg_database_size` falls;
/// false when there was nothing to give back.
///
/// # Errors
/// The cluster refused.
pub async fn reclaim(ctx: &Ctx, i: &Instance) -> Result<bool, Error> {
    let db = database_name(&i.id);
    let dead = psql(
        ctx,
        &db,
        &["SELECT COALESCE(SUM(n_dead_tup), 0) FROM pg_stat_user_tables".to_owned()],
        &[],
    )
    .await?;
    if dead.trim().parse::<u64>().unwrap_or(0) == 0 {
        return Ok(false);
    }
    psql(ctx, &db, &["VACUUM FULL".to_owned()], &[]).await?;
    Ok(true)
}

/// Sessions, size and transactions of the instance's database.
///
/// # Errors
/// The cluster did not answer.
pub async fn usage(ctx: &Ctx, i: &Instance) -> Result<Usage, Error> {
    let db = database_name(&i.id);
    let out = psql(
        ctx,
        "postgres",
        &[format!(
            "SELECT numbackends, pg_database_size(datname), xact_commit + xact_rollback \
             FROM pg_stat_database WHERE datname = '{db}'"
        )],
        &[],
    )
    .await?;
    let mut fields = out.trim().split('|').map(|f| f.parse::<f64>().ok());
    Ok(Usage {
        connections: fields.next().flatten().unwrap_or(0.0),
        memory_bytes: None,
        storage_bytes: fields.next().flatten(),
        ops_total: fields.next().flatten(),
        queue_depth: None,
        queues: None,
    })
}

/// Applies plan `to`'s connection limit (unless the instance set its own).
///
/// # Errors
/// The cluster refused.
pub async fn resize(ctx: &Ctx, i: &Instance, to: &Plan) -> Result<(), Error> {
    let db = database_name(&i.id);
    let limit = connection_limit(to, i);
    psql(
        ctx,
        "postgres",
        &[format!("ALTER DATABASE \"{db}\" CONNECTION LIMIT {limit}")],
        &[],
    )
    .await
    .map(drop)
}
