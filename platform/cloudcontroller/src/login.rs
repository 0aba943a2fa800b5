//! Password logins slowed down per user name and per client address: the brake on guessing
//! passwords through `POST /v3/tokens`, shared by every cloud controller on one database.
//!
//! Each user name (known or not, so the brake itself tells nothing about which names exist)
//! gets a few free failures inside a window; past them, every further attempt is refused with
//! 429 and `Retry-After` until a back-off that doubles with each failure has passed. Each client
//! address gets the same treatment with more free failures ([`ADDRESS_FREE_FAILURES`]: an office
//! behind one NAT types passwords wrong too), so one address spraying one password over many
//! names is slowed as well. The checks run before the password hash, so a throttled guess costs
//! the controller no PBKDF2 work. A success clears the name's record but not the address's: one
//! known password must not reset a guesser's count.
//!
//! The records are rows of `login_failures` in the controllers' database, not memory: with two
//! controllers behind one name a guesser whose requests alternate between them meets one count,
//! and a controller's restart forgets nothing. Times are wall-clock milliseconds, so controllers
//! sharing a database must keep time (as for the leases).
//!
//! The invariant: the table is bounded ([`MAX_TRACKED`] keys); when it is full, records whose
//! window has passed go first, then the oldest, so a flood of made-up names or addresses cannot
//! grow it, and at worst frees a throttled key early.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use crate::api::ApiError;
use crate::db::Db;
use crate::lease::now_ms;
use crate::sql::{Connection, OptionalExtension as _, params};

/// Failures allowed per name inside [`WINDOW`] before attempts are refused.
pub(crate) const FREE_FAILURES: u32 = 5;
/// Failures allowed per client address inside [`WINDOW`] before its attempts are refused.
pub(crate) const ADDRESS_FREE_FAILURES: u32 = 20;
/// How long a name must stay quiet before its failures are forgotten.
pub(crate) const WINDOW: Duration = Duration::from_secs(300);
/// The back-off after the first failure past the free ones; it doubles with each one after.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Keys (names and addresses together) tracked at once.
pub(crate) const MAX_TRACKED: usize = 20_000;

/// What a record counts: a user name or a client address (their own free failures each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key<'a> {
    Name(&'a str),
    Address(IpAddr),
}

impl Key<'_> {
    fn row(self) -> String {
        match self {
            Key::Name(name) => format!("name:{name}"),
            Key::Address(address) => format!("addr:{address}"),
        }
    }

    fn free(self) -> u32 {
        match self {
            Key::Name(_) => FREE_FAILURES,
            Key::Address(_) => ADDRESS_FREE_FAILURES,
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `Some(wait)` when `key` must wait before trying again.
pub(crate) fn wait(
    c: &Connection,
    key: Key<'_>,
    now_ms: i64,
) -> crate::sql::Result<Option<Duration>> {
    let until: Option<Option<i64>> = c
        .query_row(
            "SELECT blocked_until_ms FROM login_failures WHERE login_key = ?1",
            [key.row()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(until
        .flatten()
        .filter(|u| *u > now_ms)
        .map(|u| Duration::from_millis(u64::try_from(u - now_ms).unwrap_or(0))))
}

/// Records a wrong password for `key`.
pub(crate) fn failed(c: &Connection, key: Key<'_>, now_ms: i64) -> crate::sql::Result<()> {
    failed_within(c, key, now_ms, MAX_TRACKED)
}

/// [`failed`] with the table bounded at `max` keys.
fn failed_within(c: &Connection, key: Key<'_>, now_ms: i64, max: usize) -> crate::sql::Result<()> {
    let row = key.row();
    let record: Option<(i64, i64, Option<i64>)> = c
        .query_row(
            "SELECT failures, last_ms, blocked_until_ms FROM login_failures WHERE login_key = ?1",
            [&row],
            |r| r.columns(),
        )
        .optional()?;
    let failures = match record {
        // A key that has been quiet for a whole window starts afresh; one that keeps guessing
        // as soon as each back-off ends keeps its count, so its back-off keeps growing.
        Some((failures, last, blocked))
            if now_ms.saturating_sub(last) <= ms(WINDOW) || blocked.is_some_and(|u| u > now_ms) =>
        {
            failures
        }
        Some(_) => 0,
        None => {
            make_room(c, now_ms, max)?;
            0
        }
    }
    .saturating_add(1);
    let past = u32::try_from(failures)
        .unwrap_or(u32::MAX)
        .checked_sub(key.free() + 1);
    let blocked = past.map(|past| {
        let backoff = FIRST_BACKOFF
            .saturating_mul(1u32.checked_shl(past.min(16)).unwrap_or(u32::MAX))
            .min(MAX_BACKOFF);
        now_ms.saturating_add(ms(backoff))
    });
    // One statement, so two controllers counting the same key at once lose no failure but the
    // one the other's read overtook (the brake is a bound, not a ledger).
    c.execute(
        "INSERT INTO login_failures (login_key, failures, last_ms, blocked_until_ms) \
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (login_key) DO UPDATE SET \
         failures = excluded.failures, last_ms = excluded.last_ms, \
         blocked_until_ms = excluded.blocked_until_ms",
        params![row, failures, now_ms, blocked],
    )
    .map(drop)
}

/// A correct password: the name starts afresh (its address does not).
pub(crate) fn succeeded(c: &Connection, name: &str) -> crate::sql::Result<()> {
    c.execute(
        "DELETE FROM login_failures WHERE login_key = ?1",
        [Key::Name(name).row()],
    )
    .map(drop)
}

/// Frees at least one slot when the table is full: every record whose window and back-off
/// have passed, or else the one that failed longest ago.
fn make_room(c: &Connection, now_ms: i64, max: usize) -> crate::sql::Result<()> {
    let count: i64 = c.query_row("SELECT COUNT(*) FROM login_failures", [], |r| r.get(0))?;
    if usize::try_from(count).unwrap_or(usize::MAX) < max {
        return Ok(());
    }
    c.execute(
        "DELETE FROM login_failures WHERE last_ms < ?1 \
         AND (blocked_until_ms IS NULL OR blocked_until_ms <= ?2)",
        params![now_ms.saturating_sub(ms(WINDOW)), now_ms],
    )?;
    let count: i64 = c.query_row("SELECT COUNT(*) FROM login_failures", [], |r| r.get(0))?;
    if usize::try_from(count).unwrap_or(usize::MAX) >= max {
        c.execute(
            "DELETE FROM login_failures WHERE login_key IN \
             (SELECT login_key FROM login_failures ORDER BY last_ms LIMIT 1)",
            [],
        )?;
    }
    Ok(())
}

/// The login brakes as the token endpoint asks them, and the stand-in hash unknown names are
/// checked against.
#[derive(Debug, Default)]
pub(crate) struct Logins {
    /// A hash of a random password at the controller's iteration count: checking an unknown
    /// name's password against it costs what checking a known name's does.
    dummy: OnceLock<String>,
}

impl Logins {
    /// `Some(wait)` when `key` must wait before trying again.
    pub(crate) async fn wait(&self, db: &Db, key: Key<'_>) -> Result<Option<Duration>, ApiError> {
        let row = OwnedKey::from(key);
        db.run(move |c| Ok(wait(c, row.as_key(), now_ms())?)).await
    }

    /// Records a wrong password for `name`, sent from `address` when known.
    pub(crate) async fn failed(
        &self,
        db: &Db,
        name: &str,
        address: Option<IpAddr>,
    ) -> Result<(), ApiError> {
        let name = name.to_owned();
        db.run(move |c| {
            let now = now_ms();
            failed(c, Key::Name(&name), now)?;
            if let Some(address) = address {
                failed(c, Key::Address(address), now)?;
            }
            Ok(())
        })
        .await
    }

    /// A correct password for `name`.
    pub(crate) async fn succeeded(&self, db: &Db, name: &str) -> Result<(), ApiError> {
        let name = name.to_owned();
        db.run(move |c| Ok(succeeded(c, &name)?)).await
    }

    /// The hash an unknown name's password is checked against, made once.
    pub(crate) fn dummy_hash(&self, iterations: u32) -> &str {
        self.dummy
            .get_or_init(|| crate::password::hash(&uuid::Uuid::new_v4().to_string(), iterations))
    }
}

/// A [`Key`] that can move onto the database's thread.
#[derive(Debug, Clone)]
enum OwnedKey {
    Name(String),
    Address(IpAddr),
}

impl From<Key<'_>> for OwnedKey {
    fn from(key: Key<'_>) -> Self {
        match key {
            Key::Name(name) => Self::Name(name.to_owned()),
            Key::Address(address) => Self::Address(address),
        }
    }
}

impl OwnedKey {
    fn as_key(&self) -> Key<'_> {
        match self {
            Self::Name(name) => Key::Name(name),
            Self::Address(address) => Key::Address(*address),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_sqlite(&dir.path().join("cc.db")).unwrap();
        (dir, db)
    }

    const ANN: Key<'static> = Key::Name("ann");

    #[test]
    fn free_failures_then_a_doubling_backoff_and_success_clears_it() {
        let (_dir, db) = db();
        db.blocking(|c| {
            let t0 = 1_000_000;
            for i in 0..FREE_FAILURES {
                assert_eq!(wait(c, ANN, t0).unwrap(), None, "attempt {i} is free");
                failed(c, ANN, t0).unwrap();
            }
            assert_eq!(wait(c, ANN, t0).unwrap(), None);
            failed(c, ANN, t0).unwrap();
            assert_eq!(wait(c, ANN, t0).unwrap(), Some(Duration::from_secs(1)));
            let t1 = t0 + 1_000;
            assert_eq!(wait(c, ANN, t1).unwrap(), None);
            failed(c, ANN, t1).unwrap();
            assert_eq!(wait(c, ANN, t1).unwrap(), Some(Duration::from_secs(2)));
            // Another name is not slowed by ann's guesses.
            assert_eq!(wait(c, Key::Name("bob"), t1).unwrap(), None);
            succeeded(c, "ann").unwrap();
            assert_eq!(wait(c, ANN, t1).unwrap(), None);
        });
    }

    #[test]
    fn the_backoff_stops_growing_and_old_failures_expire() {
        let (_dir, db) = db();
        db.blocking(|c| {
            let mut t = 1_000_000;
            for _ in 0..40 {
                if let Some(w) = wait(c, ANN, t).unwrap() {
                    t += ms(w);
                }
                failed(c, ANN, t).unwrap();
            }
            assert_eq!(wait(c, ANN, t).unwrap(), Some(MAX_BACKOFF));
            // Long after the last back-off, the window starts again with free failures.
            let later = t + ms(MAX_BACKOFF + WINDOW) + 1_000;
            failed(c, ANN, later).unwrap();
            assert_eq!(wait(c, ANN, later).unwrap(), None);
        });
    }

    #[test]
    fn made_up_names_cannot_grow_the_table_past_its_bound() {
        let (_dir, db) = db();
        db.blocking(|c| {
            let t = 1_000_000;
            let max = 100;
            for i in 0..(max + 50) {
                let at = t + i64::try_from(i).unwrap();
                failed_within(c, Key::Name(&format!("user{i}")), at, max).unwrap();
            }
            let len: i64 = c
                .query_row("SELECT COUNT(*) FROM login_failures", [], |r| r.get(0))
                .unwrap();
            assert!(usize::try_from(len).unwrap() <= max, "{len} records");
            // The oldest went first.
            assert_eq!(
                c.query_row(
                    "SELECT COUNT(*) FROM login_failures WHERE login_key = 'name:user0'",
                    [],
                    |r| r.get::<_, i64>(0)
                )
                .unwrap(),
                0
            );
        });
    }

    #[test]
    fn an_address_gets_more_free_failures_and_a_success_does_not_reset_it() {
        let (_dir, db) = db();
        db.blocking(|c| {
            let (t, addr) = (1_000_000, Key::Address(IpAddr::from([192, 0, 2, 7])));
            for i in 0..ADDRESS_FREE_FAILURES {
                assert_eq!(wait(c, addr, t).unwrap(), None, "attempt {i} is free");
                // One guess per name: no name is ever slowed, only the address.
                failed(c, Key::Name(&format!("user{i}")), t).unwrap();
                failed(c, addr, t).unwrap();
            }
            failed(c, addr, t).unwrap();
            assert_eq!(wait(c, addr, t).unwrap(), Some(Duration::from_secs(1)));
            succeeded(c, "user0").unwrap();
            assert!(wait(c, addr, t).unwrap().is_some());
            assert_eq!(wait(c, Key::Name("user1"), t).unwrap(), None);
            let other = Key::Address(IpAddr::from([192, 0, 2, 8]));
            assert_eq!(wait(c, other, t).unwrap(), None);
        });
    }
}
