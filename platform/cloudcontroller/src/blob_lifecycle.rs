//! The blob lifecycle: who may upload and match blobs, collection of old packages and
//! droplets, and collection of the files nothing references any more.
//!
//! Flow: `PUT /v3/blobs/{sha256}` needs the SpaceDeveloper role somewhere and records who
//! uploaded the content ([`record_upload`]); resource matching and package creation consider a
//! content present for a caller only if [`known_to`] says the caller's own uploads or their
//! spaces' packages hold it, so nobody can ask "does this file exist?" about another tenant's
//! code or build a package from it. Packages count against the storage quota (`quotas`); once
//! a build stages, [`collect`] keeps the newest [`KEEP`] packages and droplets of the app (as
//! Cloud Foundry does) and the caller deletes the dropped droplets' files. Every
//! `blob_gc_interval_secs`, [`run_gc`] deletes blob files no package lists, droplet files with
//! no droplet record and abandoned upload files, counted as
//! `cloudcontroller.blobs_collected{kind}` (and `cloudcontroller.blob_bytes_collected`).
//!
//! Invariants: the app's current droplet is never collected; a file is collected only once it
//! has gone unreferenced for `blob_gc_grace_secs` since it was last written, uploaded or
//! matched (resource matching and package creation touch the files they count as present,
//! [`crate::blobs::BlobStore::touch`]), so a push between its upload or match and its package,
//! a staging that is writing its droplet, or an upload still streaming is never cut short.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::sql::{Connection, params};
use hydrant_api::Resource;
use hydrant_emitter::{Counter, Registry};
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::api::Caller;
use crate::blobs::BlobStore;
use crate::tenancy::Grants;

/// Packages and droplets kept per app.
pub(crate) const KEEP: usize = 5;

/// Records that `user_guid` uploaded the content `sha256`.
pub(crate) fn record_upload(
    c: &Connection,
    sha256: &str,
    user_guid: &str,
    now: i64,
) -> crate::sql::Result<()> {
    c.execute(
        "INSERT INTO blob_uploads (sha256, user_guid, created_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (sha256, user_guid) DO UPDATE SET created_at = ?3",
        params![sha256, user_guid, now],
    )
    .map(drop)
}

/// Whether the caller develops in at least one space (and so may upload).
pub(crate) fn may_upload(c: &Connection, caller: &Caller) -> crate::sql::Result<bool> {
    if caller.admin {
        return Ok(true);
    }
    c.query_row(
        "SELECT COUNT(*) FROM space_roles WHERE user_guid = ?1 AND role = 'developer'",
        [&caller.user_guid],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// The contents the caller may treat as present: their own uploads and the files of packages
/// in spaces where they develop. `None` for an admin, who may use any.
pub(crate) fn known_to(
    c: &Connection,
    caller: &Caller,
) -> crate::sql::Result<Option<HashSet<String>>> {
    if caller.admin {
        return Ok(None);
    }
    let grants = Grants::load(c, caller)?;
    let mut known = HashSet::new();
    let mut stmt = c.prepare("SELECT sha256 FROM blob_uploads WHERE user_guid = ?1")?;
    for sha in stmt.query_map([&caller.user_guid], |r| r.get::<_, String>(0))? {
        known.insert(sha?);
    }
    let rows: Vec<(String, String, String)> = crate::sql::rows(
        c,
        "SELECT p.resources, a.space_guid, s.org_guid FROM packages p \
         JOIN apps a ON a.guid = p.app_guid JOIN spaces s ON s.guid = a.space_guid",
        [],
    )?;
    for (resources, space, org) in rows {
        if grants.space(&space, &org).develop {
            let list: Vec<Resource> = serde_json::from_str(&resources).unwrap_or_default();
            known.extend(list.into_iter().map(|r| r.sha256));
        }
    }
    Ok(Some(known))
}

/// Drops all but the newest [`KEEP`] packages and droplets of `app_guid` (never the current
/// droplet); returns the dropped droplets' guids, whose files the caller deletes.
pub(crate) fn collect(c: &Connection, app_guid: &str) -> crate::sql::Result<Vec<String>> {
    let keep = i64::try_from(KEEP).unwrap_or(i64::MAX);
    c.execute(
        "DELETE FROM packages WHERE app_guid = ?1 AND guid NOT IN (SELECT guid FROM packages \
         WHERE app_guid = ?1 ORDER BY created_at DESC, rowid DESC LIMIT ?2)",
        params![app_guid, keep],
    )?;
    let doomed: Vec<String> = {
        let mut stmt = c.prepare(
            "SELECT d.guid FROM droplets d JOIN apps a ON a.guid = d.app_guid \
             WHERE d.app_guid = ?1 AND d.guid IS DISTINCT FROM a.current_droplet_guid \
             AND d.guid NOT IN (SELECT guid FROM droplets WHERE app_guid = ?1 \
             ORDER BY created_at DESC, rowid DESC LIMIT ?2)",
        )?;
        stmt.query_map(params![app_guid, keep], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    for guid in &doomed {
        c.execute("DELETE FROM droplets WHERE guid = ?1", [guid])?;
    }
    Ok(doomed)
}

// === unreferenced files ===

/// What the database references: every package's file hashes and every droplet's guid.
#[derive(Debug, Default)]
pub(crate) struct References {
    blobs: HashSet<String>,
    droplets: HashSet<String>,
}

impl References {
    /// Reads what every package and droplet references now.
    pub(crate) fn load(c: &Connection) -> crate::sql::Result<Self> {
        let mut refs = Self::default();
        let mut stmt = c.prepare("SELECT resources FROM packages")?;
        for resources in stmt.query_map([], |r| r.get::<_, String>(0))? {
            let list: Vec<Resource> = serde_json::from_str(&resources?).unwrap_or_default();
            refs.blobs.extend(list.into_iter().map(|r| r.sha256));
        }
        let mut stmt = c.prepare("SELECT guid FROM droplets")?;
        for guid in stmt.query_map([], |r| r.get::<_, String>(0))? {
            refs.droplets.insert(guid?);
        }
        Ok(refs)
    }
}

/// What one collection deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Collected {
    /// Blob files no package lists.
    pub(crate) blobs: u64,
    /// Droplet files without a droplet record.
    pub(crate) droplets: u64,
    /// Upload files nothing has written to within the grace period.
    pub(crate) uploads: u64,
    /// Their bytes together.
    pub(crate) bytes: u64,
}

/// Deletes, under `store`, every file `refs` does not reference whose last write is older
/// than `now - grace`. Files that vanish meanwhile or cannot be read are left alone.
pub(crate) fn sweep(
    store: &BlobStore,
    refs: &References,
    grace: Duration,
    now: SystemTime,
) -> Collected {
    let cutoff = now.checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut done = Collected::default();
    let mut remove = |path: &Path, kind: &mut u64| {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        let stale = meta.is_file() && meta.modified().is_ok_and(|m| m < cutoff);
        if stale && std::fs::remove_file(path).is_ok() {
            *kind += 1;
            done.bytes += meta.len();
        }
    };
    let (mut blobs, mut droplets, mut uploads) = (0, 0, 0);
    for shard in entries(&store.root().join("blobs")) {
        for file in entries(&shard) {
            let unreferenced = file
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|name| !refs.blobs.contains(name));
            if unreferenced {
                remove(&file, &mut blobs);
            }
        }
    }
    for file in entries(&store.root().join("droplets")) {
        let unreferenced = file
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".tgz"))
            .is_none_or(|guid| !refs.droplets.contains(guid));
        if unreferenced {
            remove(&file, &mut droplets);
        }
    }
    for file in entries(&store.root().join("tmp")) {
        // Only abandoned uploads: staging's scratch directories are removed by their owner.
        if file
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("upload-"))
        {
            remove(&file, &mut uploads);
        }
    }
    done.blobs = blobs;
    done.droplets = droplets;
    done.uploads = uploads;
    done
}

/// The entries of `dir`, none when it cannot be read.
fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// `cloudcontroller.blobs_collected{kind}` and `cloudcontroller.blob_bytes_collected`.
#[derive(Debug, Clone)]
struct GcMetrics {
    blobs: Counter,
    droplets: Counter,
    uploads: Counter,
    bytes: Counter,
}

impl GcMetrics {
    fn new(registry: &Registry) -> Self {
        let kind = crate::metrics::family(
            registry,
            "cloudcontroller.blobs_collected",
            "files deleted because nothing referenced them for blob_gc_grace_secs, by kind",
            "kind",
        );
        Self {
            blobs: kind("blob"),
            droplets: kind("droplet"),
            uploads: kind("upload"),
            bytes: registry.counter(
                "cloudcontroller.blob_bytes_collected",
                "bytes of the unreferenced files deleted",
                &[],
            ),
        }
    }

    fn add(&self, c: Collected) {
        self.blobs.add(c.blobs);
        self.droplets.add(c.droplets);
        self.uploads.add(c.uploads);
        self.bytes.add(c.bytes);
    }
}

/// Collects unreferenced files every `blob_gc_interval_secs` until `shutdown`.
pub(crate) async fn run_gc(ctx: Arc<Ctx>, registry: Registry, shutdown: CancellationToken) {
    let metrics = GcMetrics::new(&registry);
    let grace = Duration::from_secs(ctx.config.blob_gc_grace_secs);
    let mut tick = tokio::time::interval(Duration::from_secs(ctx.config.blob_gc_interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // One controller of those sharing a blob directory sweeps it per interval.
        if !crate::lease::held(&ctx.db, crate::lease::BLOB_GC, &ctx.node).await {
            continue;
        }
        // References are read before the files are listed: a package made after this read
        // references files touched within the grace period, which the sweep keeps.
        let refs = match ctx.db.run(|c| Ok(References::load(c)?)).await {
            Ok(refs) => refs,
            Err(e) => {
                tracing::warn!(error = ?e, "blob collection skipped: cannot read references");
                continue;
            }
        };
        let store = ctx.blobs.clone();
        let swept =
            tokio::task::spawn_blocking(move || sweep(&store, &refs, grace, SystemTime::now()))
                .await
                .unwrap_or_default();
        if swept != Collected::default() {
            tracing::info!(
                blobs = swept.blobs,
                droplets = swept.droplets,
                uploads = swept.uploads,
                bytes = swept.bytes,
                "collected unreferenced files"
            );
        }
        metrics.add(swept);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::db;

    const HOUR: Duration = Duration::from_secs(3600);

    fn sha(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    /// Writes `bytes` at `path` (parents made) with its last write `age` ago.
    fn file(path: &Path, bytes: &[u8], age: Duration) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        let when = SystemTime::now() - age;
        std::fs::File::options()
            .append(true)
            .open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    /// What a developer's pushes leave behind: one referenced file and one of each kind of
    /// leftover, old and new. Only the old leftovers go, each counted, and a file a resource
    /// match just touched stays however old its upload.
    #[test]
    fn unreferenced_files_go_after_the_grace_period_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&dir.path().join("data")).unwrap();
        let database = db::Db::open_sqlite(&dir.path().join("cc.db")).unwrap();
        database.blocking(|c| {
            crate::tenancy::bootstrap(c, 1).unwrap();
            let org = crate::tenancy::find_org(c, crate::tenancy::DEFAULT_ORG)
                .unwrap()
                .unwrap();
            let space = db::find_space_in(c, &org.guid, crate::DEFAULT_SPACE)
                .unwrap()
                .unwrap();
            c.execute(
                "INSERT INTO apps (guid, name, space_guid, state, instances, memory_mb, disk_mb, \
                 env, health_check_type, created_at, updated_at) \
                 VALUES ('a1', 'shop', ?1, 'STOPPED', 1, 256, 1024, '{}', 'port', 1, 1)",
                [&space.guid],
            )
            .unwrap();
            let resources = vec![Resource {
                path: "app.py".into(),
                sha256: sha(1),
                size: 3,
                mode: 0o644,
            }];
            c.execute(
                "INSERT INTO packages (guid, app_guid, resources, file_count, size, sha256, \
                 created_at) VALUES ('p1', 'a1', ?1, 1, 3, 'x', 1)",
                [serde_json::to_string(&resources).unwrap()],
            )
            .unwrap();
            c.execute(
                "INSERT INTO droplets (guid, app_guid, build_guid, buildpack, start_command, \
                 sha256, size, created_at) VALUES ('d1', 'a1', 'b1', 'python', 'x', 'y', 5, 1)",
                [],
            )
            .unwrap();
        });
        let old = 2 * HOUR;
        let fresh = Duration::from_secs(5);
        file(&store.blob_path(&sha(1)), b"app", old); // in a package
        file(&store.blob_path(&sha(2)), b"leftover", old); // uploaded, never packaged
        file(&store.blob_path(&sha(3)), b"new", fresh); // uploaded, push under way
        file(&store.blob_path(&sha(4)), b"matched", old); // matched just now
        store.touch(&sha(4));
        file(&store.droplet_path("d1"), b"droplet", old); // the app's droplet
        file(&store.droplet_path("gone"), b"orphan-droplet", old); // its record collected
        file(&store.droplet_path("staging"), b"writing", fresh); // a build finishing
        let tmp = store.root().join("tmp");
        file(&tmp.join("upload-dead"), b"half an upload", old);
        file(&tmp.join("upload-live"), b"streaming", fresh);
        file(&tmp.join("stage-x").join("app.py"), b"scratch", old);

        let refs = database.blocking(|c| References::load(c).unwrap());
        let swept = sweep(&store, &refs, HOUR, SystemTime::now());
        assert_eq!(
            swept,
            Collected {
                blobs: 1,
                droplets: 1,
                uploads: 1,
                bytes: (b"leftover".len() + b"orphan-droplet".len() + b"half an upload".len())
                    as u64,
            }
        );
        let exists = |p: PathBuf| p.exists();
        assert!(exists(store.blob_path(&sha(1))), "a packaged file stays");
        assert!(!exists(store.blob_path(&sha(2))), "an old leftover goes");
        assert!(exists(store.blob_path(&sha(3))), "a fresh upload stays");
        assert!(
            exists(store.blob_path(&sha(4))),
            "a just-matched file stays"
        );
        assert!(exists(store.droplet_path("d1")));
        assert!(!exists(store.droplet_path("gone")));
        assert!(exists(store.droplet_path("staging")));
        assert!(!exists(tmp.join("upload-dead")));
        assert!(exists(tmp.join("upload-live")));
        assert!(
            exists(tmp.join("stage-x").join("app.py")),
            "staging owns its scratch"
        );

        // Once the package that held it is collected, the packaged file goes too, after the
        // same grace period.
        database.blocking(|c| c.execute("DELETE FROM packages", []).unwrap());
        let refs = database.blocking(|c| References::load(c).unwrap());
        let later = SystemTime::now() + 2 * HOUR;
        let swept = sweep(&store, &refs, HOUR, later);
        assert_eq!((swept.blobs, swept.droplets, swept.uploads), (3, 1, 1));
        assert!(
            exists(store.droplet_path("d1")),
            "a recorded droplet never goes"
        );
    }
}
