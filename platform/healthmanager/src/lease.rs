//! The health manager's lease on the bus, in the spirit of Diego's Locket: of several copies
//! (one per host, for availability) exactly one acts — fires restarts and stops extras — while
//! the others watch and keep their picture of actual state warm, ready to take over.
//!
//! Flow: every `renew` each copy looks at the claims it has heard on
//! [`hydrant_bus::messages::HEALTHMANAGER_LEASE`]. The holder re-publishes its claim
//! (`held = true`); a copy that hears a live holder stays quiet; a copy that hears none
//! publishes a candidate claim and holds once it has been a candidate for `settle` (one and a
//! half renewals, so a live holder's renewal would have reached it) with its own claim heard
//! back from the bus and no better claim. Claims live for `ttl` after they are heard, so a
//! holder that dies (its host lost) is replaced within `ttl + settle + renew`.
//!
//! Invariants:
//! - Two copies never both act for longer than one renewal: a holder that hears another
//!   holder with a smaller id steps down, and a candidate yields to a holder or to a candidate
//!   with a smaller id (the tie-break is the same on every copy).
//! - A holder whose own renewals stop coming back from the bus within `ttl` (it is cut off, so
//!   the others will take over) steps down at once rather than act on its own.
//! - The table of others' claims is bounded ([`MAX_CLAIMANTS`]); claims past it are ignored.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Most other claimants remembered at once (a handful run in practice).
pub(crate) const MAX_CLAIMANTS: usize = 64;
/// The shortest and longest TTL a claim may ask for: a claim from a misconfigured copy can
/// neither flap the lease nor hold it for long after that copy is gone.
const TTL_BOUNDS: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(60));

/// One claim as it travels on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claim {
    /// The claiming copy's id.
    pub(crate) holder: String,
    /// `true` for a holder's renewal, `false` for a candidate's bid.
    pub(crate) held: bool,
    /// How long the claim lives after it is heard, milliseconds.
    pub(crate) ttl_ms: u64,
}

/// A change of the lease worth saying in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// This copy holds the lease now and acts.
    Acquired,
    /// This copy no longer holds the lease; the reason says why.
    Lost(&'static str),
}

/// One copy's view of the lease.
#[derive(Debug)]
pub(crate) struct Lease {
    me: String,
    ttl: Duration,
    settle: Duration,
    /// Others' live claims: id → (held, expires at).
    others: HashMap<String, (bool, Instant)>,
    /// Since when this copy has been a candidate without interruption.
    candidate_since: Option<Instant>,
    held: bool,
    /// When this copy last heard its own claim back from the bus.
    last_echo: Option<Instant>,
}

impl Lease {
    /// A copy called `me` that renews every `renew` with claims living `ttl`.
    pub(crate) fn new(me: String, ttl: Duration, renew: Duration) -> Self {
        Self {
            me,
            ttl,
            settle: renew + renew / 2,
            others: HashMap::new(),
            candidate_since: None,
            held: false,
            last_echo: None,
        }
    }

    /// This copy's id.
    pub(crate) fn id(&self) -> &str {
        &self.me
    }

    /// Whether this copy holds the lease (and so acts).
    pub(crate) fn holds(&self) -> bool {
        self.held
    }

    /// Takes in a claim heard on the bus (this copy's own included).
    pub(crate) fn observe(&mut self, claim: &Claim, now: Instant) -> Option<Change> {
        if claim.holder == self.me {
            self.last_echo = Some(now);
            return None;
        }
        if !self.others.contains_key(&claim.holder) && self.others.len() >= MAX_CLAIMANTS {
            return None;
        }
        let ttl = Duration::from_millis(claim.ttl_ms).clamp(TTL_BOUNDS.0, TTL_BOUNDS.1);
        self.others
            .insert(claim.holder.clone(), (claim.held, now + ttl));
        let better = claim.holder < self.me;
        if self.held && claim.held && better {
            self.held = false;
            self.candidate_since = None;
            return Some(Change::Lost("another copy holds it and wins the tie-break"));
        }
        if !self.held && (claim.held || better) {
            self.candidate_since = None;
        }
        None
    }

    /// Called every renewal: what to publish now, and whether the lease changed hands here.
    pub(crate) fn tick(&mut self, now: Instant) -> (Option<Claim>, Option<Change>) {
        self.others.retain(|_, (_, expires)| *expires > now);
        if self.held {
            let echoed = self
                .last_echo
                .is_some_and(|at| now.saturating_duration_since(at) <= self.ttl);
            if !echoed {
                self.held = false;
                self.candidate_since = None;
                return (
                    None,
                    Some(Change::Lost(
                        "its own renewals stopped coming back from the bus",
                    )),
                );
            }
            return (Some(self.claim(true)), None);
        }
        let me = &self.me;
        let blocked = self.others.iter().any(|(id, (held, _))| *held || id < me);
        if blocked {
            self.candidate_since = None;
            return (None, None);
        }
        let since = *self.candidate_since.get_or_insert(now);
        let heard_back = self.last_echo.is_some_and(|at| at >= since);
        if heard_back && now.saturating_duration_since(since) >= self.settle {
            self.held = true;
            return (Some(self.claim(true)), Some(Change::Acquired));
        }
        (Some(self.claim(false)), None)
    }

    fn claim(&self, held: bool) -> Claim {
        Claim {
            holder: self.me.clone(),
            held,
            ttl_ms: u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// A fresh id for a copy that was given none: the process id and a random suffix, so two
/// copies on hosts with the same hostname (or in the same process) never share one.
pub(crate) fn generated_id() -> String {
    format!("hm-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENEW: Duration = Duration::from_secs(1);
    const TTL: Duration = Duration::from_secs(5);

    /// Copies on one ideal bus: every published claim reaches every copy (the publisher too).
    struct World {
        copies: Vec<Lease>,
        alive: Vec<bool>,
    }

    impl World {
        fn new(ids: &[&str]) -> Self {
            Self {
                copies: ids
                    .iter()
                    .map(|id| Lease::new((*id).to_owned(), TTL, RENEW))
                    .collect(),
                alive: vec![true; ids.len()],
            }
        }

        fn round(&mut self, now: Instant) {
            let mut published = Vec::new();
            for (lease, alive) in self.copies.iter_mut().zip(&self.alive) {
                if *alive && let (Some(claim), _) = lease.tick(now) {
                    published.push(claim);
                }
            }
            for claim in &published {
                for (lease, alive) in self.copies.iter_mut().zip(&self.alive) {
                    if *alive {
                        lease.observe(claim, now);
                    }
                }
            }
        }

        fn holders(&self) -> Vec<&str> {
            self.copies
                .iter()
                .zip(&self.alive)
                .filter(|(l, alive)| **alive && l.holds())
                .map(|(l, _)| l.id())
                .collect()
        }
    }

    #[test]
    fn exactly_one_of_three_copies_started_together_holds() {
        let mut world = World::new(&["hm-b", "hm-a", "hm-c"]);
        let start = Instant::now();
        for second in 0..10 {
            world.round(start + RENEW * second);
            assert!(world.holders().len() <= 1, "{:?}", world.holders());
        }
        assert_eq!(world.holders(), ["hm-a"]);
    }

    #[test]
    fn a_newcomer_with_a_smaller_id_leaves_a_live_holder_alone() {
        let mut world = World::new(&["hm-z"]);
        let start = Instant::now();
        for second in 0..4 {
            world.round(start + RENEW * second);
        }
        assert_eq!(world.holders(), ["hm-z"]);
        world.copies.push(Lease::new("hm-a".to_owned(), TTL, RENEW));
        world.alive.push(true);
        for second in 4..20 {
            world.round(start + RENEW * second);
            assert_eq!(world.holders(), ["hm-z"], "at {second} s");
        }
    }

    #[test]
    fn the_survivor_takes_over_within_fifteen_seconds_of_the_holder_dying() {
        let mut world = World::new(&["hm-a", "hm-b"]);
        let start = Instant::now();
        for second in 0..5 {
            world.round(start + RENEW * second);
        }
        assert_eq!(world.holders(), ["hm-a"]);
        world.alive[0] = false;
        let mut took_over = None;
        for second in 5..30 {
            world.round(start + RENEW * second);
            if took_over.is_none() && world.holders() == ["hm-b"] {
                took_over = Some(second - 5);
            }
        }
        let took_over = took_over.expect("hm-b never took over");
        assert!(took_over <= 9, "took {took_over} s");
    }

    #[test]
    fn a_holder_cut_off_from_the_bus_steps_down() {
        let mut lease = Lease::new("hm-a".to_owned(), TTL, RENEW);
        let start = Instant::now();
        for second in 0..3 {
            let now = start + RENEW * second;
            if let (Some(claim), _) = lease.tick(now) {
                lease.observe(&claim, now);
            }
        }
        assert!(lease.holds());
        // Its claims no longer come back: it stops acting once they are a TTL old.
        let mut lost_at = None;
        for second in 3..12 {
            if let (_, Some(Change::Lost(_))) = lease.tick(start + RENEW * second) {
                lost_at = Some(second);
                break;
            }
        }
        assert!(matches!(lost_at, Some(s) if s <= 8), "{lost_at:?}");
        // And it does not hold again without hearing itself.
        for second in 12..20 {
            lease.tick(start + RENEW * second);
            assert!(!lease.holds());
        }
    }

    #[test]
    fn split_holders_after_a_partition_settle_on_the_smaller_id() {
        let mut a = Lease::new("hm-a".to_owned(), TTL, RENEW);
        let mut b = Lease::new("hm-b".to_owned(), TTL, RENEW);
        let start = Instant::now();
        for second in 0..3 {
            let now = start + RENEW * second;
            for lease in [&mut a, &mut b] {
                if let (Some(claim), _) = lease.tick(now) {
                    lease.observe(&claim, now);
                }
            }
        }
        assert!(a.holds() && b.holds(), "partitioned, each holds its half");
        let now = start + RENEW * 3;
        let (claim_a, _) = a.tick(now);
        let (claim_b, _) = b.tick(now);
        assert_eq!(
            b.observe(&claim_a.unwrap(), now),
            Some(Change::Lost("another copy holds it and wins the tie-break"))
        );
        assert_eq!(a.observe(&claim_b.unwrap(), now), None);
        assert!(a.holds() && !b.holds());
    }

    #[test]
    fn absurd_ttls_are_bounded_and_the_table_is_too() {
        let mut lease = Lease::new("hm-m".to_owned(), TTL, RENEW);
        let now = Instant::now();
        lease.observe(
            &Claim {
                holder: "hm-z".to_owned(),
                held: true,
                ttl_ms: u64::MAX,
            },
            now,
        );
        // A claim asking for forever lapses after the upper bound.
        lease.tick(now + TTL_BOUNDS.1 + Duration::from_millis(1));
        assert!(lease.others.is_empty());
        for n in 0..(MAX_CLAIMANTS + 10) {
            lease.observe(
                &Claim {
                    holder: format!("hm-z{n}"),
                    held: false,
                    ttl_ms: 5000,
                },
                now,
            );
        }
        assert_eq!(lease.others.len(), MAX_CLAIMANTS);
    }
}
