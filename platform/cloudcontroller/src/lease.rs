//! Leases in the shared database: the work only one cloud controller may do at a time when
//! several share one `[db]` (convergence, which asks cells to start and stop instances; the
//! collection of unreferenced blobs), as Diego's Locket does for its singletons.
//!
//! A lease is a row `(name, holder, expires_ms)`. Taking or renewing it is one upsert that
//! succeeds only when the row is free, expired or already ours, so two controllers never both
//! hold it; the holder renews it each time it acts, and a controller that dies stops renewing,
//! so another takes the lease once it expires ([`TTL`]). On a lone controller (SQLite, the
//! micro cloud) the lease is always its own. Expiry compares the controllers' wall clocks:
//! hosts sharing a database must keep time (NTP), to well within [`TTL`].

use std::time::Duration;

use crate::db::Db;
use crate::sql::params;

/// How long a lease lasts unless renewed. A survivor takes over within this of the holder's
/// death; the holder renews on every convergence pass (every `converge_interval_ms`, 3 s by
/// default), well inside it.
pub(crate) const TTL: Duration = Duration::from_secs(10);

/// The schema step for what controllers on one database share beyond the leases: who serves
/// the API (`controllers`, each row renewed while its controller lives; see `routing`), the
/// login brake's records (`login`), and cell requests any controller may take and the
/// placement lease's holder carries out (`placement`).
pub(crate) const SHARED_STATE: &str = r"
CREATE TABLE controllers (
    node TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    api TEXT NOT NULL,
    seen_ms INTEGER NOT NULL
);
CREATE TABLE login_failures (
    login_key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    blocked_until_ms INTEGER
);
CREATE TABLE cell_requests (
    cell_id TEXT NOT NULL,
    action TEXT NOT NULL,
    requested_ms INTEGER NOT NULL,
    PRIMARY KEY (cell_id, action)
);
";

/// Convergence: the one controller that starts and stops instances.
pub(crate) const PLACEMENT: &str = "placement";
/// The collection of unreferenced blobs and droplets.
pub(crate) const BLOB_GC: &str = "blob-gc";

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Takes or renews lease `name` for `holder` for `ttl`; whether `holder` now holds it.
pub(crate) fn acquire(
    c: &crate::sql::Connection,
    name: &str,
    holder: &str,
    ttl: Duration,
    now_ms: i64,
) -> crate::sql::Result<bool> {
    let until = now_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    c.execute(
        "INSERT INTO leases (name, holder, expires_ms) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
         expires_ms = excluded.expires_ms \
         WHERE leases.holder = excluded.holder OR leases.expires_ms < ?4",
        params![name, holder, until, now_ms],
    )?;
    let current: String =
        c.query_row("SELECT holder FROM leases WHERE name = ?1", [name], |r| {
            r.get(0)
        })?;
    Ok(current == holder)
}

/// Gives lease `name` up if `holder` holds it (a clean stop: the other takes over at once).
pub(crate) fn release(
    c: &crate::sql::Connection,
    name: &str,
    holder: &str,
) -> crate::sql::Result<()> {
    c.execute(
        "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
        [name, holder],
    )
    .map(drop)
}

/// Whether this controller (`holder`) holds lease `name` now, taking or renewing it. A
/// database that cannot be reached answers no: acting without the lease could act twice.
pub(crate) async fn held(db: &Db, name: &'static str, holder: &str) -> bool {
    let holder = holder.to_owned();
    let taken = db
        .run(move |c| Ok(acquire(c, name, &holder, TTL, now_ms())?))
        .await;
    match taken {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!(lease = name, error = %e.detail(), "cannot renew a lease: not acting");
            false
        }
    }
}

/// Releases lease `name` if held (at shutdown).
pub(crate) async fn give_up(db: &Db, name: &'static str, holder: &str) {
    let holder = holder.to_owned();
    let _ = db.run(move |c| Ok(release(c, name, &holder)?)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_the_survivor_takes_over_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_sqlite(&dir.path().join("cc.db")).unwrap();
        let ttl = Duration::from_secs(10);
        db.blocking(|c| {
            assert!(acquire(c, "placement", "a", ttl, 1_000).unwrap());
            assert!(!acquire(c, "placement", "b", ttl, 2_000).unwrap());
            // The holder renews; the other still waits.
            assert!(acquire(c, "placement", "a", ttl, 9_000).unwrap());
            assert!(!acquire(c, "placement", "b", ttl, 12_000).unwrap());
            // The holder stops renewing: once expired, the other takes it, and the old
            // holder cannot take it back while the new one renews.
            assert!(acquire(c, "placement", "b", ttl, 19_001).unwrap());
            assert!(!acquire(c, "placement", "a", ttl, 19_002).unwrap());
            // Another lease is independent.
            assert!(acquire(c, "blob-gc", "a", ttl, 19_003).unwrap());
            // A clean release hands it over at once.
            release(c, "placement", "b").unwrap();
            assert!(acquire(c, "placement", "a", ttl, 19_004).unwrap());
        });
    }
}
