//! Storage quotas enforced while tenants write, as Cloud Foundry's MySQL quota enforcer does:
//! every `quota_interval_secs` (and on demand: `POST /v1/quotas` on the admin listener) each
//! MariaDB and PostgreSQL instance's database is measured on disk; one over its plan's
//! `storage_mb` loses its bindings' write privileges (MariaDB: `INSERT`, `UPDATE`, `CREATE` and
//! the rest but reads, `DELETE`, `DROP`; PostgreSQL: membership of the owner role, leaving
//! `SELECT`, `DELETE`, `TRUNCATE`) and their sessions are ended; back under, the privileges
//! return — also after `DELETE`: a database still over with its writes revoked is compacted
//! ([`reclaim`]: `OPTIMIZE TABLE`, `VACUUM FULL`) before it is measured again, at most every
//! [`RECLAIM_EVERY`]. Each change is told in the instance's `SVC` stream, counted
//! (`broker.quota_enforcements{offering,action}`) and shown as the gauge
//! `service.storage_quota_exceeded`.
//!
//! Invariant: the standing of an instance the broker has not yet measured since its start is
//! unknown, so the first pass applies it either way (a broker restarted while an instance was
//! over never leaves it revoked once under, nor writable while over); read-only bindings are
//! never touched; a binding made while its instance is over is revoked as it is made.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::backend::{self, Ctx, mysql, postgres};
use crate::catalog::{self, Offering};
use crate::store::{Binding, Instance, State};

/// What the broker knows of each instance's standing.
#[derive(Debug, Default)]
pub struct Quotas {
    /// Instance id → the writable bindings revoked (present: over quota; absent from the map:
    /// not measured since start).
    over: Mutex<HashMap<String, Option<HashSet<String>>>>,
    /// Instance id → when its database was last compacted ([`reclaim`]).
    reclaimed: Mutex<HashMap<String, Instant>>,
}

impl Quotas {
    /// Whether instance `id` was over its quota at the last measure (`None`: not measured).
    #[must_use]
    pub fn exceeded(&self, id: &str) -> Option<bool> {
        hydrant_runtime::lock(&self.over)
            .get(id)
            .map(Option::is_some)
    }
}

/// How often at most a database over its quota is compacted to give back what `DELETE` freed
/// (MariaDB's `OPTIMIZE TABLE` rewrites every table of it).
pub const RECLAIM_EVERY: Duration = Duration::from_secs(60);

impl Quotas {
    /// Whether instance `id`'s database may be compacted now (and notes that it is).
    fn may_reclaim(&self, id: &str) -> bool {
        let mut last = hydrant_runtime::lock(&self.reclaimed);
        match last.get(id) {
            Some(at) if at.elapsed() < RECLAIM_EVERY => false,
            _ => {
                last.insert(id.to_owned(), Instant::now());
                true
            }
        }
    }
}

/// Gives back the space rows deleted with `DELETE` left in instance `i`'s files, which on-disk
/// measures keep counting: MariaDB's InnoDB keeps a table file's freed pages for reuse until
/// `OPTIMIZE TABLE` rebuilds it; PostgreSQL's dead rows hold their pages until `VACUUM FULL`
/// (a plain `VACUUM` only cuts empty pages off a table's end). Runs only for a database
/// whose writes are revoked (nothing to lock out) and at most every [`RECLAIM_EVERY`];
/// true when it compacted something.
///
/// # Errors
/// The server refused.
async fn reclaim(ctx: &Ctx, o: &Offering, i: &Instance) -> Result<bool, Error> {
    match o.name {
        "mysql" => mysql::reclaim(ctx, i).await,
        "postgresql" => postgres::reclaim(ctx, i).await,
        _ => Ok(false),
    }
}

/// One instance's measure.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Checked {
    /// The instance.
    pub instance: String,
    /// Bytes its database holds on disk.
    pub used_bytes: u64,
    /// Its plan's storage, bytes.
    pub quota_bytes: u64,
    /// Whether its writes are revoked now.
    pub exceeded: bool,
    /// Whether this pass changed its privileges.
    pub changed: bool,
}

/// Whether `b` may write at all (a `read-only` binding never could).
fn writable(b: &Binding) -> bool {
    b.parameters
        .get("read-only")
        .and_then(serde_json::Value::as_bool)
        != Some(true)
}

/// Bytes under `dir`, recursively (a MariaDB database is a directory of table files).
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Bytes instance `i`'s database holds on disk.
///
/// # Errors
/// The node is not running or did not answer.
pub async fn storage_bytes(ctx: &Ctx, o: &Offering, i: &Instance) -> Result<u64, Error> {
    if o.name == "mysql" {
        return mysql::stored_bytes(ctx, i).await;
    }
    let usage = backend::usage(ctx, o, i).await?;
    Ok(usage.storage_bytes.unwrap_or(0.0).max(0.0) as u64)
}

/// Takes writes from `bindings` of `i` and ends their sessions.
async fn revoke(ctx: &Ctx, o: &Offering, i: &Instance, bindings: &[Binding]) -> Result<(), Error> {
    for b in bindings {
        if o.name == "mysql" {
            mysql::revoke_writes(ctx, i, b).await?;
        } else {
            postgres::revoke_writes(ctx, i, b).await?;
        }
    }
    Ok(())
}

/// Gives writes back to `bindings` of `i`; `end_sessions` ends the sessions that ran without
/// them (so the next one runs with them).
async fn restore(
    ctx: &Ctx,
    o: &Offering,
    i: &Instance,
    bindings: &[Binding],
    end_sessions: bool,
) -> Result<(), Error> {
    for b in bindings {
        if o.name == "mysql" {
            mysql::restore_writes(ctx, i, b).await?;
        } else {
            postgres::restore_writes(ctx, i, b, end_sessions).await?;
        }
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn tell(ctx: &Ctx, i: &Instance, text: &str) {
    if let Some(emitter) = &ctx.sink.emitter {
        emitter.log(&i.id, "0", crate::node::SOURCE_TYPE, text.as_bytes(), true);
    }
    tracing::info!(instance = %i.id, "{text}");
}

/// Measures instance `i` and applies its standing.
async fn check_one(
    ctx: &Ctx,
    o: &'static Offering,
    i: &Instance,
) -> Result<Option<Checked>, Error> {
    let Some(plan) = o.plan(&i.plan_id) else {
        return Ok(None);
    };
    let quota_bytes = plan.storage_mb * 1024 * 1024;
    let mut used_bytes = storage_bytes(ctx, o, i).await?;
    let mut over = used_bytes > quota_bytes;
    let before = hydrant_runtime::lock(&ctx.quotas.over).get(&i.id).cloned();
    // Still over with its writes revoked: only deletes happen now, which free no file space
    // until the database is compacted.
    if over && matches!(before, Some(Some(_))) && ctx.quotas.may_reclaim(&i.id) {
        match reclaim(ctx, o, i).await {
            Ok(true) => {
                used_bytes = storage_bytes(ctx, o, i).await?;
                over = used_bytes > quota_bytes;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(instance = %i.id, "cannot compact its database: {e}"),
        }
    }
    let writable: Vec<Binding> = ctx
        .store
        .bindings_of(&i.id)?
        .into_iter()
        .filter(writable)
        .collect();
    let enforcements = |action: &str| {
        ctx.sink.registry.counter(
            "broker.quota_enforcements",
            "Storage quota changes applied to instances, by offering and action",
            &[("offering", o.name), ("action", action)],
        )
    };
    let mut changed = false;
    let after = if over {
        let revoked = before.clone().flatten().unwrap_or_default();
        let pending: Vec<Binding> = writable
            .iter()
            .filter(|b| !revoked.contains(&b.id))
            .cloned()
            .collect();
        if !pending.is_empty() {
            revoke(ctx, o, i, &pending).await?;
            changed = true;
        }
        if !matches!(before, Some(Some(_))) {
            changed = true;
            enforcements("revoke").inc();
            tell(
                ctx,
                i,
                &format!(
                    "storage quota exceeded: the database holds {:.1} MiB and the {} plan allows \
                     {} MiB; INSERT, UPDATE and CREATE are revoked until it is under its quota \
                     (reads, DELETE, TRUNCATE and DROP still work)",
                    mib(used_bytes),
                    plan.name,
                    plan.storage_mb
                ),
            );
        }
        Some(writable.iter().map(|b| b.id.clone()).collect())
    } else {
        match before {
            Some(Some(_)) => {
                restore(ctx, o, i, &writable, true).await?;
                enforcements("restore").inc();
                changed = true;
                tell(
                    ctx,
                    i,
                    &format!(
                        "storage back under quota: the database holds {:.1} MiB of the {} plan's \
                         {} MiB; writes are allowed again",
                        mib(used_bytes),
                        plan.name,
                        plan.storage_mb
                    ),
                );
            }
            // Unknown since start: a revocation from before a restart must not outlive it.
            None => restore(ctx, o, i, &writable, false).await?,
            Some(None) => {}
        }
        None
    };
    hydrant_runtime::lock(&ctx.quotas.over).insert(i.id.clone(), after);
    Ok(Some(Checked {
        instance: i.id.clone(),
        used_bytes,
        quota_bytes,
        exceeded: over,
        changed,
    }))
}

/// One pass over every ready MariaDB and PostgreSQL instance.
pub async fn check_all(ctx: &Ctx) -> Vec<Checked> {
    let instances = match ctx.store.instances() {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!("cannot list instances to check their quotas: {e}");
            return Vec::new();
        }
    };
    hydrant_runtime::lock(&ctx.quotas.over).retain(|id, _| instances.iter().any(|i| &i.id == id));
    let mut out = Vec::new();
    let mut exceeded: HashMap<&str, f64> = HashMap::new();
    for i in instances.iter().filter(|i| i.state == State::Ready) {
        let Some(o) = catalog::offering(&i.offering)
            .filter(|o| matches!(o.name, "mysql" | "postgresql") && ctx.bins.contains_key(o.name))
        else {
            continue;
        };
        match check_one(ctx, o, i).await {
            Ok(Some(c)) => {
                *exceeded.entry(o.name).or_default() += f64::from(u8::from(c.exceeded));
                out.push(c);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(instance = %i.id, "cannot check its storage quota: {e}"),
        }
    }
    for name in ["mysql", "postgresql"] {
        ctx.sink
            .registry
            .gauge(
                "broker.quota_exceeded",
                "Instances over their storage quota (writes revoked), by offering",
                "count",
                &[("offering", name)],
            )
            .set(exceeded.get(name).copied().unwrap_or(0.0));
    }
    out
}

/// Revokes binding `b`'s writes at once when its instance is over its quota (a bind while
/// over must not open a way around it until the next pass).
///
/// # Errors
/// The server refused.
pub async fn after_bind(ctx: &Ctx, o: &Offering, i: &Instance, b: &Binding) -> Result<(), Error> {
    if !matches!(o.name, "mysql" | "postgresql") || !writable(b) {
        return Ok(());
    }
    if ctx.quotas.exceeded(&i.id) != Some(true) {
        return Ok(());
    }
    revoke(ctx, o, i, std::slice::from_ref(b)).await?;
    if let Some(Some(revoked)) = hydrant_runtime::lock(&ctx.quotas.over).get_mut(&i.id) {
        revoked.insert(b.id.clone());
    }
    Ok(())
}

/// Runs [`check_all`] every `quota_interval_secs` until `shutdown`.
pub async fn run(ctx: std::sync::Arc<Ctx>, shutdown: CancellationToken) {
    let period = std::time::Duration::from_secs(ctx.config.quota_interval_secs);
    // The first pass one period after start: the nodes are being started again meanwhile.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        check_all(&ctx).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_directory_is_measured_with_its_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.ibd"), vec![0u8; 3000]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/x"), vec![0u8; 500]).unwrap();
        assert_eq!(dir_bytes(dir.path()), 3500);
        assert_eq!(dir_bytes(&dir.path().join("missing")), 0);
    }
}
