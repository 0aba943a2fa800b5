//! Password logins slowed down per user name and per client address: the brake on guessing
//! passwords through `POST /v3/tokens`.
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
//! The invariant: each table is bounded ([`MAX_TRACKED`] keys); when it is full, records whose
//! window has passed go first, then the oldest, so a flood of made-up names or addresses cannot
//! grow memory, and at worst frees a throttled key early.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

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
/// Names (and, separately, addresses) tracked at once.
pub(crate) const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// The login brakes (per name, per address), and the stand-in hash unknown names are checked
/// against.
#[derive(Debug)]
pub(crate) struct Logins {
    names: Brake,
    addresses: Brake,
    /// A hash of a random password at the controller's iteration count: checking an unknown
    /// name's password against it costs what checking a known name's does.
    dummy: OnceLock<String>,
}

impl Default for Logins {
    fn default() -> Self {
        Self {
            names: Brake::new(FREE_FAILURES),
            addresses: Brake::new(ADDRESS_FREE_FAILURES),
            dummy: OnceLock::new(),
        }
    }
}

/// One bounded table of failure records and its number of free failures.
#[derive(Debug)]
struct Brake {
    free: u32,
    records: Mutex<HashMap<String, Record>>,
}

impl Logins {
    /// `Err(wait)` when `user` must wait before trying again.
    pub(crate) fn check(&self, user: &str, now: Instant) -> Result<(), Duration> {
        self.names.check(user, now)
    }

    /// Records a wrong password for `user`.
    pub(crate) fn failed(&self, user: &str, now: Instant) {
        self.names.failed(user, now);
    }

    /// `Err(wait)` when the client at `address` must wait before trying again.
    pub(crate) fn check_address(&self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        self.addresses.check(&address.to_string(), now)
    }

    /// Records a wrong password sent from `address`.
    pub(crate) fn failed_address(&self, address: IpAddr, now: Instant) {
        self.addresses.failed(&address.to_string(), now);
    }
}

impl Brake {
    fn new(free: u32) -> Self {
        Self {
            free,
            records: Mutex::default(),
        }
    }

    fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        match records.get(key).and_then(|r| r.blocked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    fn failed(&self, key: &str, now: Instant) {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        if !records.contains_key(key) && records.len() >= MAX_TRACKED {
            make_room(&mut records, now);
        }
        let record = records.entry(key.to_owned()).or_insert(Record {
            failures: 0,
            last: now,
            blocked_until: None,
        });
        // A name that has been quiet for a whole window starts afresh; one that keeps guessing
        // as soon as each back-off ends keeps its count, so its back-off keeps growing.
        if now.duration_since(record.last) > WINDOW && record.blocked_until.is_none_or(|u| u <= now)
        {
            *record = Record {
                failures: 0,
                last: now,
                blocked_until: None,
            };
        }
        record.failures = record.failures.saturating_add(1);
        record.last = now;
        if let Some(past) = record.failures.checked_sub(self.free + 1) {
            let backoff = FIRST_BACKOFF
                .saturating_mul(1u32.checked_shl(past.min(16)).unwrap_or(u32::MAX))
                .min(MAX_BACKOFF);
            record.blocked_until = Some(now + backoff);
        }
    }
}

impl Logins {
    /// A correct password: `user` starts afresh (its address does not).
    pub(crate) fn succeeded(&self, user: &str) {
        self.names
            .records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(user);
    }

    /// The hash an unknown name's password is checked against, made once.
    pub(crate) fn dummy_hash(&self, iterations: u32) -> &str {
        self.dummy
            .get_or_init(|| crate::password::hash(&uuid::Uuid::new_v4().to_string(), iterations))
    }
}

/// Frees at least one slot: every record whose window and back-off have passed, or else the
/// one that failed longest ago.
fn make_room(records: &mut HashMap<String, Record>, now: Instant) {
    records.retain(|_, r| {
        now.duration_since(r.last) <= WINDOW || r.blocked_until.is_some_and(|u| u > now)
    });
    if records.len() >= MAX_TRACKED
        && let Some(oldest) = records
            .iter()
            .min_by_key(|(_, r)| r.last)
            .map(|(name, _)| name.clone())
    {
        records.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_failures_then_a_doubling_backoff_and_success_clears_it() {
        let logins = Logins::default();
        let t0 = Instant::now();
        for i in 0..FREE_FAILURES {
            assert!(logins.check("ann", t0).is_ok(), "attempt {i} is free");
            logins.failed("ann", t0);
        }
        assert!(logins.check("ann", t0).is_ok());
        logins.failed("ann", t0);
        assert_eq!(logins.check("ann", t0), Err(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert!(logins.check("ann", t1).is_ok());
        logins.failed("ann", t1);
        assert_eq!(logins.check("ann", t1), Err(Duration::from_secs(2)));
        // Another name is not slowed by ann's guesses.
        assert!(logins.check("bob", t1).is_ok());
        logins.succeeded("ann");
        assert!(logins.check("ann", t1).is_ok());
    }

    #[test]
    fn the_backoff_stops_growing_and_old_failures_expire() {
        let logins = Logins::default();
        let mut t = Instant::now();
        for _ in 0..40 {
            if let Err(wait) = logins.check("ann", t) {
                t += wait;
            }
            logins.failed("ann", t);
        }
        assert_eq!(logins.check("ann", t), Err(MAX_BACKOFF));
        // Long after the last back-off, the window starts again with free failures.
        let later = t + MAX_BACKOFF + WINDOW + Duration::from_secs(1);
        logins.failed("ann", later);
        assert!(logins.check("ann", later).is_ok());
    }

    #[test]
    fn made_up_names_cannot_grow_the_table_past_its_bound() {
        let logins = Logins::default();
        let t = Instant::now();
        for i in 0..(MAX_TRACKED + 500) {
            logins.failed(&format!("user{i}"), t);
        }
        let len = logins.names.records.lock().unwrap().len();
        assert!(len <= MAX_TRACKED, "{len} records");
    }

    #[test]
    fn an_address_gets_more_free_failures_and_a_success_does_not_reset_it() {
        let logins = Logins::default();
        let (t, addr) = (Instant::now(), IpAddr::from([192, 0, 2, 7]));
        for i in 0..ADDRESS_FREE_FAILURES {
            assert!(logins.check_address(addr, t).is_ok(), "attempt {i} is free");
            // One guess per name: no name is ever slowed, only the address.
            logins.failed(&format!("user{i}"), t);
            logins.failed_address(addr, t);
        }
        logins.failed_address(addr, t);
        assert_eq!(logins.check_address(addr, t), Err(Duration::from_secs(1)));
        logins.succeeded("user0");
        assert!(logins.check_address(addr, t).is_err());
        assert!(logins.check("user1", t).is_ok());
        assert!(
            logins
                .check_address(IpAddr::from([192, 0, 2, 8]), t)
                .is_ok()
        );
    }
}
