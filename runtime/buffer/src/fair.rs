//! [`FairShare`]: who holds a queue, so that when it must drop, the drops go to the sources
//! taking more than their share and never to a quiet source because a neighbour is loud.
//!
//! Where it sits: beside a [`crate::Buffer`] whose entries mix sources (an agent's batches, a
//! doppler's received messages). The owner asks [`FairShare::admit`] for every envelope before
//! it joins an entry, remembers the [`Share`]s an entry holds, and gives them back with
//! [`FairShare::release`] when the entry leaves (taken) or [`FairShare::evicted`] when the
//! buffer drops it.
//!
//! The rule: while the queue is under pressure (at least `pressure_permille` full, half by
//! default), an envelope is refused when its source would hold more than its share of the whole
//! queue (the queue's capacity split evenly among the sources holding anything). A source alone
//! is never refused (the buffer's own drop-oldest handles it). So a loud source is held to its
//! share while every source under it is admitted: the queue stays below full, nothing is
//! evicted, and the quiet sources lose nothing.
//!
//! # Invariants
//! - **Bounded, allocation-free per envelope.** Sources are 64-bit keys ([`KeyHasher`], seeded
//!   per process) in a fixed table of `max_sources` slots, probed at most [`PROBES`] deep; a key
//!   that finds no slot shares one `other` slot. A slot is reused only once it holds nothing and
//!   owes nothing (no queued cost, no unreported drops, no unsynced count), so a hostile stream
//!   of fresh source ids can neither grow memory nor steal a live source's slot. The source's
//!   name is copied once per slot tenancy, never per envelope.
//! - **The ledger balances per source**: `admitted = released + evicted + queued`, and every
//!   refused or evicted envelope is counted under its source until [`FairShare::sweep`] hands
//!   the count to the owner's metrics and, at most once per `notice_interval`, to the source
//!   itself as a notice.
//! - Nothing here panics on input; one short lock per call, never held across an await.

use std::hash::{BuildHasher, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How many slots a key may probe before it falls back to the shared `other` slot.
pub const PROBES: usize = 8;

/// A source's key: a seeded hash of its id (and space, where the owner has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(u64);

/// Makes [`SourceKey`]s: a fast word-at-a-time hash with a per-process random seed, so keys
/// cannot be chosen to collide from outside.
#[derive(Debug, Clone, Copy)]
pub struct KeyHasher {
    seed: u64,
}

impl Default for KeyHasher {
    fn default() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x6879_6472_616e_7421);
        Self { seed: h.finish() }
    }
}

impl KeyHasher {
    /// The key of `source` (its id's bytes; join a space in front with [`KeyHasher::key2`]).
    #[inline]
    #[must_use]
    pub fn key(&self, source: &[u8]) -> SourceKey {
        SourceKey(self.mix(self.seed, source))
    }

    /// The key of (`space`, `source`).
    #[inline]
    #[must_use]
    pub fn key2(&self, space: &[u8], source: &[u8]) -> SourceKey {
        let h = self.mix(self.seed, space);
        SourceKey(self.mix(h ^ 0xff, source))
    }

    #[inline]
    fn mix(&self, mut h: u64, bytes: &[u8]) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        let mut w = [0u8; 8];
        let rest = chunks.remainder();
        w[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w) ^ bytes.len() as u64).wrapping_mul(K);
        // Finalise so the low bits (the table index) depend on every input bit.
        h ^= h >> 32;
        h = h.wrapping_mul(K);
        h ^ (h >> 29)
    }
}

/// How a [`FairShare`] tracks and tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FairConfig {
    /// Sources tracked on their own (rounded up to a power of two, at least [`PROBES`]); the
    /// rest share one slot. Default 1024.
    pub max_sources: usize,
    /// At most one notice per source per this long. Default 10 s.
    pub notice_interval: Duration,
    /// How full (thousandths) the queue must be before anyone is refused; below it every
    /// envelope is admitted. Default 500 (half full).
    pub pressure_permille: u64,
}

impl Default for FairConfig {
    fn default() -> Self {
        Self {
            max_sources: 1024,
            notice_interval: Duration::from_secs(10),
            pressure_permille: 500,
        }
    }
}

/// Which slot an admitted envelope was charged to: give it back with what it cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    slot: u32,
    /// Envelopes charged.
    pub events: u32,
    /// What they cost (bytes or envelopes, the owner's unit).
    pub cost: u32,
}

impl Share {
    /// Adds one more envelope of the same slot to this share when it is that slot's; returns
    /// whether it did (so an entry's shares stay one per run of the same source).
    #[inline]
    pub fn merge(&mut self, other: Self) -> bool {
        if self.slot != other.slot {
            return false;
        }
        self.events = self.events.saturating_add(other.events);
        self.cost = self.cost.saturating_add(other.cost);
        true
    }
}

/// Why an envelope was dropped, as told to its source and its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FairDrop {
    /// Refused at admission: the source held more than its share while the queue was under
    /// pressure.
    Refused,
    /// Admitted, then evicted by the buffer's drop-oldest.
    Evicted,
}

/// The whole ledger, in events, for tests and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FairStats {
    /// Envelopes admitted.
    pub admitted: u64,
    /// Envelopes refused for being over their share.
    pub refused: u64,
    /// Admitted envelopes released (taken, or thrown away by the owner for its own reason).
    pub released: u64,
    /// Admitted envelopes the buffer evicted.
    pub evicted: u64,
    /// Envelopes queued now (summed over the sources).
    pub queued: u64,
    /// Sources holding anything now.
    pub active: u64,
    /// Keys that found no slot and were charged to the shared one.
    pub overflowed: u64,
}

impl FairStats {
    /// Whether `admitted = released + evicted + queued`.
    #[must_use]
    pub fn balanced(&self) -> bool {
        self.admitted == self.released + self.evicted + self.queued
    }
}

#[derive(Debug, Default)]
struct Slot {
    key: u64,
    used: bool,
    name: Option<Box<str>>,
    /// Cost charged and not yet given back.
    queued_cost: u64,
    queued_events: u64,
    /// Drops not yet handed to the owner's metrics by `sweep`.
    unsynced: u64,
    /// Drops not yet told to the source.
    unreported: u64,
    /// Why the unreported drops happened: `Refused` if any was (what the notice names).
    why: Option<FairDrop>,
    last_notice: Option<Instant>,
}

impl Slot {
    fn idle(&self) -> bool {
        self.queued_events == 0 && self.unsynced == 0 && self.unreported == 0
    }
}

#[derive(Debug)]
struct Table {
    /// `mask + 1` keyed slots, then the shared `other` slot.
    slots: Box<[Slot]>,
    mask: usize,
    total_cost: u64,
    active: u64,
    stats: FairStats,
}

/// Per-source admission and drop ledger for one queue. See the module docs.
#[derive(Debug)]
pub struct FairShare {
    table: Mutex<Table>,
    config: FairConfig,
}

/// One drop count handed over by [`FairShare::sweep`].
#[derive(Debug, Clone, Copy)]
pub struct SourceDrops<'a> {
    /// The source's id, or `None` for the shared slot of sources that found no slot of their
    /// own (count it as "other"; it cannot be told).
    pub source: Option<&'a str>,
    /// Envelopes dropped.
    pub dropped: u64,
    /// Why: [`FairDrop::Refused`] if any of them was refused for being over its share.
    pub why: FairDrop,
}

impl FairShare {
    /// An empty ledger.
    #[must_use]
    pub fn new(config: FairConfig) -> Self {
        let n = config.max_sources.max(PROBES).next_power_of_two();
        let slots = (0..=n).map(|_| Slot::default()).collect();
        Self {
            table: Mutex::new(Table {
                slots,
                mask: n - 1,
                total_cost: 0,
                active: 0,
                stats: FairStats::default(),
            }),
            config,
        }
    }

    /// The settings given at construction.
    #[must_use]
    pub fn config(&self) -> &FairConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every mutation keeps the table consistent before anything that could panic.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides one envelope of `source` (`key` from [`KeyHasher`]) costing `cost`, with the
    /// queue `fill_permille` full ([`crate::Buffer::fill_permille`]): `Some` share to charge the
    /// entry it joins, or `None` when refused (counted under the source).
    ///
    /// At or above `pressure_permille`, a source is refused when it would hold more than its
    /// share of the whole queue: the queue's capacity in the owner's cost unit, estimated as
    /// `total × 1000 / fill` (so it works whichever of entries, envelopes or bytes is the bound
    /// that bites), split evenly among the sources holding anything. A source alone is never
    /// refused.
    pub fn admit(
        &self,
        key: SourceKey,
        source: &str,
        cost: u32,
        fill_permille: u64,
    ) -> Option<Share> {
        self.admit_with(key, source, cost, || fill_permille)
    }

    /// [`FairShare::admit`], reading the queue's fill under this ledger's lock, so it never
    /// predates a [`FairShare::release`] the ledger has already applied. An owner whose taker
    /// empties the queue and then gives back everything it held (the doppler's ingress ring
    /// takes all in one swap) needs it: a fill read just before the swap, judged against a
    /// ledger read just after the release, makes a full queue of next to nothing, so the
    /// capacity estimate and every share collapse and a quiet source's second line is refused
    /// (issue 16: quiet apps' lines refused as `fair_share` at doppler ingress).
    pub fn admit_with(
        &self,
        key: SourceKey,
        source: &str,
        cost: u32,
        fill: impl FnOnce() -> u64,
    ) -> Option<Share> {
        let mut t = self.lock();
        let fill_permille = fill();
        let slot = t.find(key.0, source);
        let t = &mut *t;
        let other = t.slots.len() - 1;
        if slot == other {
            t.stats.overflowed += 1;
        }
        let s = t.slots.get_mut(slot)?;
        let cost64 = u64::from(cost);
        let threshold = self.config.pressure_permille;
        if fill_permille >= threshold {
            let active = t.active + u64::from(s.queued_events == 0);
            let capacity = u128::from(t.total_cost + cost64) * 1000
                / u128::from(fill_permille.max(threshold).max(1));
            let share = capacity / u128::from(active.max(1));
            if active > 1 && u128::from(s.queued_cost + cost64) > share {
                s.unsynced += 1;
                s.unreported += 1;
                s.why = Some(FairDrop::Refused);
                t.stats.refused += 1;
                return None;
            }
        }
        Some(t.charge(slot, cost))
    }

    /// Charges one envelope of `source` costing `cost` without asking: for what the owner
    /// must deliver whatever the pressure (the notices it adds to a source's stream). It is
    /// still charged, so that when the buffer evicts the entry holding it, it is counted under
    /// its source like the envelopes beside it ([`FairShare::evicted`]): an uncharged envelope
    /// would be dropped under the buffer's reason but under no source, and the source's ledger
    /// would stay short by one (issue 16).
    pub fn charge(&self, key: SourceKey, source: &str, cost: u32) -> Share {
        let mut t = self.lock();
        let slot = t.find(key.0, source);
        if slot == t.slots.len() - 1 {
            t.stats.overflowed += 1;
        }
        t.charge(slot, cost)
    }

    /// Gives back what `shares` charged: the entry was taken (or thrown away for a reason the
    /// owner counts itself).
    pub fn release(&self, shares: &[Share]) {
        let mut t = self.lock();
        for share in shares {
            t.uncharge(share);
            t.stats.released += u64::from(share.events);
        }
    }

    /// Gives back what `shares` charged and counts their envelopes as dropped under their
    /// sources: the buffer evicted the entry.
    pub fn evicted(&self, shares: &[Share]) {
        let mut t = self.lock();
        for share in shares {
            t.uncharge(share);
            let events = u64::from(share.events);
            t.stats.evicted += events;
            if let Some(s) = t.slots.get_mut(share.slot as usize) {
                s.unsynced += events;
                s.unreported += events;
                s.why.get_or_insert(FairDrop::Evicted);
            }
        }
    }

    /// Hands every source's drops since the last sweep to `count` (for metrics), and to
    /// `notify` the drops of each source not told for `notice_interval` (the shared slot is
    /// never told: it has no one name). Call it every second or so, and once at the end.
    pub fn sweep(
        &self,
        now: Instant,
        mut count: impl FnMut(SourceDrops<'_>),
        mut notify: impl FnMut(SourceDrops<'_>),
    ) {
        let interval = self.config.notice_interval;
        let mut t = self.lock();
        let other = t.slots.len() - 1;
        for (i, s) in t.slots.iter_mut().enumerate() {
            let source = if i == other { None } else { s.name.as_deref() };
            let why = s.why.unwrap_or(FairDrop::Refused);
            if s.unsynced > 0 {
                count(SourceDrops {
                    source,
                    dropped: std::mem::take(&mut s.unsynced),
                    why,
                });
            }
            if s.unreported == 0 {
                continue;
            }
            let due = s
                .last_notice
                .is_none_or(|at| now.saturating_duration_since(at) >= interval);
            if i == other || source.is_none() {
                s.unreported = 0;
                s.why = None;
            } else if due {
                notify(SourceDrops {
                    source,
                    dropped: std::mem::take(&mut s.unreported),
                    why,
                });
                s.why = None;
                s.last_notice = Some(now);
            }
        }
    }

    /// The ledger now.
    #[must_use]
    pub fn stats(&self) -> FairStats {
        let t = self.lock();
        // Summed from the slots, independently of the counters, so `balanced` checks something.
        FairStats {
            active: t.active,
            queued: t.slots.iter().map(|s| s.queued_events).sum(),
            ..t.stats
        }
    }

    /// Envelopes `source` has queued now (0 when untracked).
    #[must_use]
    pub fn queued(&self, key: SourceKey) -> u64 {
        let t = self.lock();
        let start = (key.0 as usize) & t.mask;
        (0..PROBES)
            .filter_map(|p| t.slots.get((start + p) & t.mask))
            .find(|s| s.used && s.key == key.0)
            .map_or(0, |s| s.queued_events)
    }
}

impl Table {
    /// The slot for `key`: its own, a free or idle one taken over, or the shared one.
    fn find(&mut self, key: u64, name: &str) -> usize {
        let start = (key as usize) & self.mask;
        let mut free = None;
        for p in 0..PROBES {
            let i = (start + p) & self.mask;
            let Some(s) = self.slots.get(i) else { break };
            if s.used && s.key == key {
                return i;
            }
            if free.is_none() && (!s.used || s.idle()) {
                free = Some(i);
            }
        }
        let Some(i) = free else {
            return self.slots.len() - 1;
        };
        if let Some(s) = self.slots.get_mut(i) {
            *s = Slot {
                key,
                used: true,
                name: Some(Box::from(name)),
                ..Slot::default()
            };
        }
        i
    }

    /// Charges one admitted envelope costing `cost` to `slot` (from [`Table::find`]).
    fn charge(&mut self, slot: usize, cost: u32) -> Share {
        let cost64 = u64::from(cost);
        if let Some(s) = self.slots.get_mut(slot) {
            if s.queued_events == 0 {
                self.active += 1;
            }
            s.queued_events += 1;
            s.queued_cost += cost64;
        }
        self.total_cost += cost64;
        self.stats.admitted += 1;
        Share {
            slot: u32::try_from(slot).unwrap_or(u32::MAX),
            events: 1,
            cost,
        }
    }

    fn uncharge(&mut self, share: &Share) {
        let Some(s) = self.slots.get_mut(share.slot as usize) else {
            return;
        };
        let events = u64::from(share.events);
        let cost = u64::from(share.cost);
        let was = s.queued_events;
        s.queued_events = s.queued_events.saturating_sub(events);
        s.queued_cost = s.queued_cost.saturating_sub(cost);
        self.total_cost = self.total_cost.saturating_sub(cost);
        if was > 0 && s.queued_events == 0 {
            self.active = self.active.saturating_sub(1);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use super::*;

    fn ledger(max_sources: usize) -> (FairShare, KeyHasher) {
        let config = FairConfig {
            max_sources,
            ..FairConfig::default()
        };
        (FairShare::new(config), KeyHasher::default())
    }

    #[test]
    fn a_lone_source_is_never_refused_even_under_pressure() {
        let (f, h) = ledger(64);
        let k = h.key(b"loud");
        for _ in 0..1000 {
            assert!(f.admit(k, "loud", 100, 1000).is_some());
        }
        assert_eq!(f.stats().refused, 0);
    }

    #[test]
    fn under_pressure_the_source_above_average_is_refused_and_the_quiet_one_admitted() {
        let (f, h) = ledger(64);
        let (loud, quiet) = (h.key(b"loud"), h.key(b"quiet"));
        for _ in 0..100 {
            f.admit(loud, "loud", 10, 0).unwrap();
        }
        assert!(f.admit(quiet, "quiet", 10, 1000).is_some());
        assert!(f.admit(loud, "loud", 10, 1000).is_none());
        assert!(f.admit(quiet, "quiet", 10, 1000).is_some());
        let s = f.stats();
        assert_eq!(
            (s.admitted, s.refused, s.queued, s.active),
            (102, 1, 102, 2)
        );
        assert!(s.balanced());
    }

    #[test]
    fn a_charge_is_never_refused_and_its_eviction_counts_under_its_source() {
        let (f, h) = ledger(64);
        let (loud, quiet) = (h.key(b"loud"), h.key(b"quiet"));
        for _ in 0..100 {
            f.admit(loud, "loud", 10, 0).unwrap();
        }
        f.admit(quiet, "quiet", 10, 0).unwrap();
        assert!(f.admit(loud, "loud", 10, 1000).is_none(), "over its share");
        let notice = f.charge(loud, "loud", 10);
        assert_eq!(f.queued(loud), 101, "charged like any envelope");
        f.evicted(&[notice]);
        let mut counted = Vec::new();
        f.sweep(
            Instant::now(),
            |d| counted.push((d.source.map(str::to_owned), d.dropped)),
            |_| {},
        );
        assert_eq!(counted, [(Some("loud".to_owned()), 2)], "refused + evicted");
        let s = f.stats();
        assert_eq!((s.admitted, s.refused, s.evicted), (102, 1, 1));
        assert!(s.balanced());
    }

    #[test]
    fn release_and_eviction_give_back_what_was_charged() {
        let (f, h) = ledger(64);
        let k = h.key(b"a");
        let mut a = f.admit(k, "a", 5, 0).unwrap();
        assert!(a.merge(f.admit(k, "a", 7, 0).unwrap()));
        let b = f.admit(k, "a", 1, 0).unwrap();
        assert_eq!((a.events, a.cost), (2, 12));
        f.release(&[a]);
        assert_eq!(f.queued(k), 1);
        f.evicted(&[b]);
        let s = f.stats();
        assert_eq!((s.released, s.evicted, s.queued, s.active), (2, 1, 0, 0));
        assert!(s.balanced());
        let mut counted = Vec::new();
        f.sweep(
            Instant::now(),
            |d| counted.push((d.source.map(str::to_owned), d.dropped, d.why)),
            |_| {},
        );
        assert_eq!(counted, [(Some("a".to_owned()), 1, FairDrop::Evicted)]);
    }

    #[test]
    fn notices_go_at_most_once_per_interval_and_carry_everything_since_the_last() {
        let (f, h) = ledger(64);
        let (loud, quiet) = (h.key(b"loud"), h.key(b"quiet"));
        f.admit(loud, "loud", 100, 0).unwrap();
        f.admit(quiet, "quiet", 1, 0).unwrap();
        let t0 = Instant::now();
        let mut told = Vec::new();
        let mut counted = 0;
        for round in 0..3u32 {
            for _ in 0..5 {
                assert!(f.admit(loud, "loud", 100, 1000).is_none());
            }
            let now = t0 + Duration::from_secs(u64::from(round) * 4);
            f.sweep(
                now,
                |d| counted += d.dropped,
                |d| told.push((d.source.unwrap().to_owned(), d.dropped)),
            );
        }
        // Told at 0 s (5); at 4 s and 8 s the next notice is not due yet.
        assert_eq!(told, [("loud".to_owned(), 5)]);
        f.sweep(
            t0 + Duration::from_secs(10),
            |_| {},
            |d| told.push((d.source.unwrap().to_owned(), d.dropped)),
        );
        assert_eq!(told, [("loud".to_owned(), 5), ("loud".to_owned(), 10)]);
        assert_eq!(counted, 15, "metrics see every drop at once");
    }

    #[test]
    fn the_table_stays_bounded_and_a_live_source_keeps_its_slot() {
        let (f, h) = ledger(16);
        let live = h.key(b"live");
        let held = f.admit(live, "live", 1, 0).unwrap();
        for i in 0..100_000u32 {
            let name = format!("spray-{i}");
            // Each holds one envelope until the next comes, like a stream of fresh ids.
            if let Some(s) = f.admit(h.key(name.as_bytes()), &name, 1, 0) {
                f.release(&[s]);
            }
        }
        assert_eq!(f.queued(live), 1, "the live source was not displaced");
        let t = f.lock();
        assert_eq!(t.slots.len(), 17, "16 slots and the shared one, never more");
        drop(t);
        f.release(&[held]);
        assert!(f.stats().balanced());
    }

    #[test]
    fn keys_that_find_no_slot_share_one_and_are_counted_as_other() {
        let (f, h) = ledger(8);
        let mut held = Vec::new();
        for i in 0..64u32 {
            let name = format!("s{i}");
            held.push(f.admit(h.key(name.as_bytes()), &name, 1, 0).unwrap());
        }
        assert!(f.stats().overflowed > 0);
        for s in &held {
            f.evicted(&[*s]);
        }
        let mut other = 0;
        let mut named = 0;
        f.sweep(
            Instant::now(),
            |d| match d.source {
                None => other += d.dropped,
                Some(_) => named += d.dropped,
            },
            |d| assert!(d.source.is_some(), "the shared slot is never told"),
        );
        assert_eq!(other + named, 64);
        assert!(other > 0 && named <= 8);
    }

    #[test]
    fn keys_differ_by_seed_and_by_every_byte() {
        let (a, b) = (KeyHasher::default(), KeyHasher::default());
        assert_ne!(a.key(b"app"), b.key(b"app"));
        assert_ne!(a.key(b"app-1"), a.key(b"app-2"));
        assert_ne!(a.key(b""), a.key(b"\0"));
        assert_ne!(a.key2(b"s1", b"app"), a.key2(b"s2", b"app"));
    }
}
