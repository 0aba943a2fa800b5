//! The staging queue: builds waiting and being staged, as rows of the shared `builds` table,
//! so any cloud controller on the database stages any build and a build outlives the
//! controller that accepted it.
//!
//! Flow: `POST /v3/apps/{guid}/builds` writes the build `QUEUED` ([`enqueue`], refused when
//! the queue or the space's share of it is full) → a worker of any controller claims the next
//! one ([`claim`]: `STAGING`, `claimed_by` that controller, `claimed_until_ms` a few seconds
//! ahead) and renews the claim while it stages ([`renew`]) → it writes the outcome only while
//! the claim is still its own ([`finish`]). A claim that lapsed means its controller died:
//! any controller puts the build back in the queue ([`reclaim_lapsed`]), counting the loss,
//! and fails it once it was retried [`MAX_LOST_RETRIES`] times that way.
//!
//! The API's build states stay Cloud Foundry's (STAGING, STAGED, FAILED): a `QUEUED` row reads
//! as STAGING.
//!
//! Invariants: at most `capacity` builds wait; one space holds at most `per_space` of those
//! places, so no tenant can fill the queue and lock the others out; spaces take turns at the
//! workers (the next build is from the space served longest ago); a build is staged by one
//! controller at a time (PostgreSQL: the claim takes the row `FOR UPDATE SKIP LOCKED`, and the
//! bounds are checked under a transaction-scoped advisory lock; SQLite: one connection, one
//! transaction at a time), and only the claim's holder records its outcome.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::Job;
use crate::sql::{Backend, Connection, OptionalExtension as _, params};

/// The schema step for the queue: the build's space (fairness and the per-space share), the
/// app's start command at the request, when it was queued and first started, the claim, and
/// how many times a lost controller cost it its staging.
pub(crate) const MIGRATION: &str = r"
ALTER TABLE builds ADD COLUMN space_guid TEXT;
ALTER TABLE builds ADD COLUMN start_command TEXT;
ALTER TABLE builds ADD COLUMN queued_ms INTEGER;
ALTER TABLE builds ADD COLUMN started_ms INTEGER;
ALTER TABLE builds ADD COLUMN claimed_by TEXT;
ALTER TABLE builds ADD COLUMN claimed_until_ms INTEGER;
ALTER TABLE builds ADD COLUMN lost_claims INTEGER NOT NULL DEFAULT 0;
CREATE INDEX builds_queue ON builds(state, queued_ms);
CREATE INDEX builds_space_started ON builds(space_guid, started_ms);
";

/// How long a claim lasts unless renewed: a survivor restages a dead controller's build
/// within this (and one [`POLL`]) of its death. As with the leases, the controllers sharing
/// a database must keep time to well within it.
pub(crate) const CLAIM_TTL: Duration = crate::lease::TTL;

/// How often a worker renews its claim: three renewals fit in one [`CLAIM_TTL`], so one slow
/// database round trip does not lose the build.
pub(crate) const RENEW: Duration = Duration::from_secs(3);

/// How often an idle controller looks for builds another controller queued, and for claims
/// that lapsed (its own builds wake its workers at once).
pub(crate) const POLL: Duration = Duration::from_secs(1);

/// Times a build is put back in the queue because its controller was lost; the next loss
/// fails it (a build that kills its controllers must not take them all down in turn).
pub(crate) const MAX_LOST_RETRIES: i64 = 2;

/// The transaction-scoped advisory lock under which PostgreSQL checks the queue's bounds and
/// queues a build, so two controllers accepting builds at once cannot both take the last
/// place ("Hydrant\x02").
const QUEUE_LOCK: i64 = 0x4879_6472_616e_7402;

/// Why a build found no place in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Every place is taken.
    Full,
    /// The space already holds its share of places.
    SpaceShare,
}

/// This controller's handle on the queue: its bounds and the wake-up of its workers. Clones
/// share it.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    ready: Arc<Notify>,
    capacity: usize,
    per_space: usize,
}

impl Queue {
    /// A queue of `capacity` places, at most `per_space` (at least 1) for one space.
    pub(crate) fn new(capacity: usize, per_space: usize) -> Self {
        Self {
            ready: Arc::new(Notify::new()),
            capacity,
            per_space: per_space.max(1),
        }
    }

    /// The share of places one space may hold.
    pub(crate) fn per_space(&self) -> usize {
        self.per_space
    }

    /// The places in all.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Wakes one idle worker of this controller: a build was queued here.
    pub(crate) fn wake(&self) {
        self.ready.notify_one();
    }

    /// Waits until [`Self::wake`] or [`POLL`], whichever comes first.
    pub(crate) async fn idle(&self) {
        let _ = tokio::time::timeout(POLL, self.ready.notified()).await;
    }
}

/// The build a staging worker of another controller lost, as [`reclaim_lapsed`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lapsed {
    pub(crate) build_guid: String,
    pub(crate) app_guid: String,
    /// The controller whose claim lapsed.
    pub(crate) holder: String,
    /// Which retry this is (1 for the first); `None` when the build failed instead.
    pub(crate) retry: Option<i64>,
}

/// Queues `build` (already filled in) for `space`: one more place, unless the queue or the
/// space's share is full. Call it inside the transaction that writes the rest of the request.
pub(crate) fn enqueue(
    c: &Connection,
    queue: &Queue,
    build: &hydrant_api::Build,
    space: &str,
    command: Option<&str>,
    now_ms: i64,
) -> crate::sql::Result<Result<(), Refused>> {
    if c.backend() == Backend::Postgres {
        c.execute("SELECT pg_advisory_xact_lock(?1)", [QUEUE_LOCK])?;
    }
    let (total, mine): (i64, i64) = c.query_row(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN space_guid = ?1 THEN 1 ELSE 0 END), 0) \
         FROM builds WHERE state = 'QUEUED'",
        [space],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if usize::try_from(total).unwrap_or(usize::MAX) >= queue.capacity {
        return Ok(Err(Refused::Full));
    }
    if usize::try_from(mine).unwrap_or(usize::MAX) >= queue.per_space {
        return Ok(Err(Refused::SpaceShare));
    }
    c.execute(
        "INSERT INTO builds (guid, app_guid, package_guid, state, created_at, updated_at, \
         space_guid, start_command, queued_ms, lost_claims) \
         VALUES (?1, ?2, ?3, 'QUEUED', ?4, ?5, ?6, ?7, ?8, 0)",
        params![
            build.guid,
            build.app_guid,
            build.package_guid,
            build.created_at,
            build.updated_at,
            space,
            command,
            now_ms
        ],
    )?;
    Ok(Ok(()))
}

/// Builds waiting (on every controller).
pub(crate) fn depth(c: &Connection) -> crate::sql::Result<usize> {
    let n: i64 = c.query_row(
        "SELECT COUNT(*) FROM builds WHERE state = 'QUEUED'",
        [],
        |r| r.get(0),
    )?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Claims the next build for controller `node` (whose restart fails what it left, as
/// `stager`): from the space served longest ago, then the oldest. `None` when none waits.
pub(crate) fn claim(
    c: &mut Connection,
    node: &str,
    stager: &str,
    now_ms: i64,
) -> crate::sql::Result<Option<Job>> {
    let tx = c.transaction()?;
    // Another controller's worker may hold the first row: take the next, do not wait.
    let lock = match tx.backend() {
        Backend::Postgres => " FOR UPDATE OF b SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let next = tx
        .query_row(
            &format!(
                "SELECT b.guid, b.app_guid, b.package_guid, b.start_command FROM builds b \
                 WHERE b.state = 'QUEUED' \
                 ORDER BY (SELECT COALESCE(MAX(s.started_ms), 0) FROM builds s \
                 WHERE s.space_guid = b.space_guid), b.queued_ms, b.guid LIMIT 1{lock}"
            ),
            [],
            |r| {
                Ok(Job {
                    build_guid: r.get(0)?,
                    app_guid: r.get(1)?,
                    package_guid: r.get(2)?,
                    command: r.get(3)?,
                })
            },
        )
        .optional()?;
    let Some(job) = next else {
        return Ok(None);
    };
    let taken = tx.execute(
        "UPDATE builds SET state = 'STAGING', claimed_by = ?2, claimed_until_ms = ?3, \
         staged_by = ?4, started_ms = ?5 WHERE guid = ?1 AND state = 'QUEUED'",
        params![job.build_guid, node, until(now_ms), stager, now_ms],
    )?;
    tx.commit()?;
    Ok((taken == 1).then_some(job))
}

fn until(now_ms: i64) -> i64 {
    now_ms.saturating_add(i64::try_from(CLAIM_TTL.as_millis()).unwrap_or(i64::MAX))
}

/// Renews `node`'s claim on `build`; false when it is no longer `node`'s (it lapsed and
/// another controller took the build over, or the build is gone).
pub(crate) fn renew(
    c: &Connection,
    build: &str,
    node: &str,
    now_ms: i64,
) -> crate::sql::Result<bool> {
    let n = c.execute(
        "UPDATE builds SET claimed_until_ms = ?3 \
         WHERE guid = ?1 AND claimed_by = ?2 AND state = 'STAGING'",
        params![build, node, until(now_ms)],
    )?;
    Ok(n == 1)
}

/// How a claimed build ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Staged {
        buildpack: String,
        droplet_guid: String,
    },
    Failed(String),
}

/// Writes the outcome of `node`'s claim on `build`; false (nothing written) when the claim is
/// no longer `node`'s. Call it first in the transaction that writes the rest of the outcome,
/// and write nothing else when it answers false.
pub(crate) fn finish(
    c: &Connection,
    build: &str,
    node: &str,
    outcome: &Outcome,
    now_secs: i64,
) -> crate::sql::Result<bool> {
    let n = match outcome {
        Outcome::Staged {
            buildpack,
            droplet_guid,
        } => c.execute(
            "UPDATE builds SET state = 'STAGED', error = NULL, buildpack = ?3, \
             droplet_guid = ?4, updated_at = ?5, claimed_until_ms = NULL \
             WHERE guid = ?1 AND claimed_by = ?2 AND state = 'STAGING'",
            params![build, node, buildpack, droplet_guid, now_secs],
        )?,
        Outcome::Failed(reason) => c.execute(
            "UPDATE builds SET state = 'FAILED', error = ?3, updated_at = ?4, \
             claimed_until_ms = NULL \
             WHERE guid = ?1 AND claimed_by = ?2 AND state = 'STAGING'",
            params![build, node, reason, now_secs],
        )?,
    };
    Ok(n == 1)
}

/// Puts builds whose claim lapsed (their controller died) back in the queue, ahead of those
/// queued after them, or fails those already retried [`MAX_LOST_RETRIES`] times that way.
pub(crate) fn reclaim_lapsed(
    c: &mut Connection,
    now_ms: i64,
    now_secs: i64,
) -> crate::sql::Result<Vec<Lapsed>> {
    let tx = c.transaction()?;
    let lock = match tx.backend() {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let lapsed: Vec<(String, String, String, i64)> = tx
        .prepare(&format!(
            "SELECT guid, app_guid, claimed_by, lost_claims FROM builds \
             WHERE state = 'STAGING' AND claimed_until_ms IS NOT NULL \
             AND claimed_until_ms < ?1 ORDER BY guid LIMIT 100{lock}"
        ))?
        .query_map([now_ms], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<crate::sql::Result<_>>()?;
    let mut out = Vec::with_capacity(lapsed.len());
    for (build_guid, app_guid, holder, lost) in lapsed {
        let retry = (lost < MAX_LOST_RETRIES).then_some(lost + 1);
        let changed = match retry {
            Some(_) => tx.execute(
                "UPDATE builds SET state = 'QUEUED', claimed_by = NULL, \
                 claimed_until_ms = NULL, lost_claims = lost_claims + 1, updated_at = ?3 \
                 WHERE guid = ?1 AND claimed_by = ?2 AND state = 'STAGING'",
                params![build_guid, holder, now_secs],
            )?,
            None => tx.execute(
                "UPDATE builds SET state = 'FAILED', error = ?3, updated_at = ?4, \
                 claimed_until_ms = NULL, lost_claims = lost_claims + 1 \
                 WHERE guid = ?1 AND claimed_by = ?2 AND state = 'STAGING'",
                params![build_guid, holder, lost_reason(&holder), now_secs],
            )?,
        };
        if changed == 1 {
            out.push(Lapsed {
                build_guid,
                app_guid,
                holder,
                retry,
            });
        }
    }
    tx.commit()?;
    Ok(out)
}

/// Why a build lost to dead controllers once too often failed.
pub(crate) fn lost_reason(holder: &str) -> String {
    format!(
        "staging was interrupted {} times because the cloud controller staging it was lost \
         (the last: {holder}); it was retried twice and is not retried again: check why the \
         cloud controllers died (out of memory while staging?), then create the build again",
        MAX_LOST_RETRIES + 1
    )
}

/// Hands `node`'s unfinished builds back to the queue at a clean stop, so another controller
/// (or this one's next run) stages them at once rather than after the claim lapses. Not a
/// lost controller: nothing is counted.
pub(crate) fn release(c: &Connection, node: &str) -> crate::sql::Result<usize> {
    c.execute(
        "UPDATE builds SET state = 'QUEUED', claimed_by = NULL, claimed_until_ms = NULL \
         WHERE claimed_by = ?1 AND state = 'STAGING'",
        [node],
    )
}

#[cfg(test)]
mod tests {
    use hydrant_api::{Build, BuildState};

    use super::*;
    use crate::db::Db;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_sqlite(&dir.path().join("cc.db")).unwrap();
        // The queue's rows only: no apps or spaces behind them.
        db.blocking(|c| c.execute_batch("PRAGMA foreign_keys = OFF").unwrap());
        (dir, db)
    }

    fn build(guid: &str) -> Build {
        Build {
            guid: guid.to_owned(),
            app_guid: format!("app-{guid}"),
            package_guid: "pkg".to_owned(),
            state: BuildState::Staging,
            error: None,
            buildpack: None,
            droplet_guid: None,
            created_at: 1,
            updated_at: 1,
        }
    }

    fn state(c: &Connection, guid: &str) -> (String, Option<String>) {
        c.query_row(
            "SELECT state, error FROM builds WHERE guid = ?1",
            [guid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    #[test]
    fn one_space_cannot_fill_the_queue_and_spaces_take_turns() {
        let (_dir, db) = db();
        let queue = Queue::new(8, 4);
        db.blocking(|c| {
            for i in 0..4 {
                let b = build(&format!("g{i}"));
                enqueue(c, &queue, &b, "greedy", None, 10 + i)
                    .unwrap()
                    .unwrap();
            }
            // Its share is used up; another space still finds a place, and goes next.
            assert_eq!(
                enqueue(c, &queue, &build("g9"), "greedy", None, 20).unwrap(),
                Err(Refused::SpaceShare)
            );
            enqueue(c, &queue, &build("p0"), "polite", Some("./run"), 21)
                .unwrap()
                .unwrap();
            let order: Vec<Job> = (0..3)
                .map(|i| claim(c, "cc-a/1", "cc-a", 100 + i).unwrap().unwrap())
                .collect();
            let guids: Vec<&str> = order.iter().map(|j| j.build_guid.as_str()).collect();
            assert_eq!(guids, ["g0", "p0", "g1"]);
            assert_eq!(order[1].command.as_deref(), Some("./run"));
            // Taking a build gives its place back.
            enqueue(c, &queue, &build("g4"), "greedy", None, 30)
                .unwrap()
                .unwrap();
            assert_eq!(depth(c).unwrap(), 3);
        });
    }

    #[test]
    fn a_full_queue_refuses() {
        let (_dir, db) = db();
        let queue = Queue::new(2, 2);
        db.blocking(|c| {
            enqueue(c, &queue, &build("a"), "a", None, 1)
                .unwrap()
                .unwrap();
            enqueue(c, &queue, &build("b"), "b", None, 2)
                .unwrap()
                .unwrap();
            assert_eq!(
                enqueue(c, &queue, &build("c"), "c", None, 3).unwrap(),
                Err(Refused::Full)
            );
            claim(c, "n", "cc", 4).unwrap().unwrap();
            assert!(
                enqueue(c, &queue, &build("c"), "c", None, 5)
                    .unwrap()
                    .is_ok()
            );
        });
    }

    #[test]
    fn a_lapsed_claim_is_retried_twice_then_fails_naming_the_reason() {
        let (_dir, db) = db();
        let queue = Queue::new(8, 4);
        let ttl = i64::try_from(CLAIM_TTL.as_millis()).unwrap();
        db.blocking(|c| {
            enqueue(c, &queue, &build("b"), "s", None, 0)
                .unwrap()
                .unwrap();
            let mut now = 1_000;
            for (round, holder) in ["cc-a/1", "cc-b/1"].into_iter().enumerate() {
                claim(c, holder, "cc", now).unwrap().unwrap();
                // Renewed, it stays the holder's; nobody else can take or finish it.
                assert!(renew(c, "b", holder, now + ttl / 2).unwrap());
                assert!(reclaim_lapsed(c, now + ttl, 1).unwrap().is_empty());
                now += ttl / 2 + ttl + 1;
                let lapsed = reclaim_lapsed(c, now, 1).unwrap();
                assert_eq!(
                    lapsed,
                    [Lapsed {
                        build_guid: "b".into(),
                        app_guid: "app-b".into(),
                        holder: holder.into(),
                        retry: Some(i64::try_from(round).unwrap() + 1),
                    }]
                );
                assert_eq!(state(c, "b").0, "QUEUED");
                // The dead holder's late outcome is not written.
                let late = Outcome::Failed("late".into());
                assert!(!finish(c, "b", holder, &late, 2).unwrap());
                assert!(!renew(c, "b", holder, now).unwrap());
            }
            claim(c, "cc-c/1", "cc", now).unwrap().unwrap();
            let lapsed = reclaim_lapsed(c, now + ttl + 1, 3).unwrap();
            assert_eq!(lapsed[0].retry, None);
            let (state, error) = state(c, "b");
            assert_eq!(state, "FAILED");
            let error = error.unwrap();
            assert!(
                error.contains("the cloud controller staging it was lost (the last: cc-c/1)")
                    && error.contains("retried twice"),
                "{error}"
            );
        });
    }

    #[test]
    fn only_the_holder_finishes_and_a_clean_stop_hands_builds_back() {
        let (_dir, db) = db();
        let queue = Queue::new(8, 4);
        db.blocking(|c| {
            enqueue(c, &queue, &build("x"), "s", None, 0)
                .unwrap()
                .unwrap();
            enqueue(c, &queue, &build("y"), "s", None, 1)
                .unwrap()
                .unwrap();
            claim(c, "a", "cc", 2).unwrap().unwrap();
            let staged = Outcome::Staged {
                buildpack: "static".into(),
                droplet_guid: "d".into(),
            };
            assert!(!finish(c, "x", "b", &staged, 3).unwrap());
            assert!(finish(c, "x", "a", &staged, 3).unwrap());
            assert_eq!(state(c, "x").0, "STAGED");
            claim(c, "a", "cc", 4).unwrap().unwrap();
            assert_eq!(release(c, "a").unwrap(), 1);
            assert_eq!(claim(c, "b", "cc", 5).unwrap().unwrap().build_guid, "y");
            assert!(claim(c, "b", "cc", 6).unwrap().is_none());
        });
    }
}
