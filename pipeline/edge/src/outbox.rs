//! One consumer's queue: bounded by envelopes and bytes, dropping the oldest on overflow, and
//! fair between the sources it follows.
//!
//! The fan-out pushes into an outbox and never waits: a full outbox makes room by dropping its
//! oldest envelopes, counts them (`dropped{reason=slow_consumer}`) and remembers how many it has
//! not yet told the consumer about, so the writer can put a gap marker in front of the next data.
//! Envelopes are `Bytes` slices of the upstream batch, so queueing costs a reference count, not a
//! copy. The queue is a drop-oldest `hydrant_buffer::Buffer` bounded by envelopes and bytes.
//!
//! Fair drops (`fair_share`, on by default): a consumer following many sources (a nozzle,
//! `hydrant top`) that falls behind would otherwise lose a quiet app's lines as often as the
//! flood's. With a [`FairShare`] ledger beside the buffer, once the queue is half full an
//! envelope whose source already holds more than its share of the queue is refused
//! (`dropped{reason=fair_share}`, and by source in `dropped_by_source`), so the flood is held to
//! its share, the queue stays below full and the quiet sources lose nothing. Refused envelopes
//! join the same gap count as evicted ones: the consumer's gap marker stays the exact number it
//! lost.
//!
//! "Behind" starts at the first drop and ends only when the writer finds the queue empty; a
//! consumer behind for longer than the slow-consumer timeout is closed by its writer. So a
//! consumer that falls behind in a burst and catches up is never cut off, while one that keeps
//! losing data without ever draining is.
//!
//! Deferred dopplers: while a resuming consumer catches up from the dopplers' replay rings
//! (see `resume`), its outbox passes over those dopplers' live envelopes instead of queueing
//! them: the ring holds them too, and the replay reads them from there before the consumer goes
//! live, so they are neither held twice nor lost, and a long catch-up cannot overflow the outbox.
//!
//! Kept for resume: a consumer that asked for cursors (`?cursor=`, empty when it starts live)
//! loses nothing to its outbox. A push that would evict is refused whole instead, and from then
//! on every envelope with a ring position is passed over (the rings hold them); the writer sees
//! [`Outbox::fell_behind`], closes the stream, and the consumer reconnects with the cursor of
//! the last frame it read, which lies before everything it was not sent. Such an outbox skips
//! the fairness ledger: it never drops, so there is nothing to share out.
//!
//! Whose envelopes: every envelope the outbox drops (evicted, refused as too large, or refused
//! by the fairness ledger) is remembered by source, in the order dropped ([`LostRuns`], runs
//! of one source merged, at most [`MAX_LOST_RUNS`] runs, the rest unattributed), so the writer's
//! `slow_consumer` marker for the next `gap` envelopes names the sources that lost most and
//! sums the rest as other ([`Outbox::lost_by_source`]). The total is always the buffer's exact
//! gap; which source an envelope at the boundary between two markers is told under may shift
//! by the few dropped while a take ran.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hydrant_buffer::{
    Buffer, BufferConfig, DropReason, FairConfig, FairShare, KeyHasher, Limits as Bounds, Observer,
    Share, Weigh,
};
use hydrant_emitter::{Counter, SourceCounters};
use hydrant_envelope::gap::{BySource, GAP_TOP_SOURCES};
use hydrant_envelope::wire::Kind;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::position::Item;

/// How often an outbox's fairness ledger hands its per-source counts to the metrics.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Most runs of dropped envelopes an outbox remembers by source before a marker reports them;
/// drops past this are told as unattributed (`other`).
const MAX_LOST_RUNS: usize = 1024;

/// Dropped envelopes by source, in the order dropped, until a gap marker reports them.
#[derive(Debug, Default)]
struct LostRuns {
    /// (source, envelopes), oldest first; `None`: unattributed.
    runs: VecDeque<(Option<Arc<str>>, u64)>,
}

impl LostRuns {
    fn add(&mut self, source: Option<&[u8]>, n: u64) {
        if n == 0 {
            return;
        }
        if let Some((last, count)) = self.runs.back_mut()
            && last.as_deref().map(str::as_bytes) == source
        {
            *count += n;
            return;
        }
        if self.runs.len() >= MAX_LOST_RUNS {
            match self.runs.back_mut() {
                Some((None, count)) => *count += n,
                _ => self.runs.push_back((None, n)),
            }
            return;
        }
        let name = source.map(|s| Arc::from(String::from_utf8_lossy(s).as_ref()));
        self.runs.push_back((name, n));
    }

    /// Adds `other`'s runs after these.
    fn append(&mut self, other: Self) {
        for (source, n) in other.runs {
            let full = self.runs.len() >= MAX_LOST_RUNS;
            match self.runs.back_mut() {
                Some((last, count)) if *last == source || (full && last.is_none()) => {
                    *count += n;
                }
                _ if full => self.runs.push_back((None, n)),
                _ => self.runs.push_back((source, n)),
            }
        }
    }

    /// Whose the next `gap` dropped envelopes were: the top sources and the rest as other,
    /// summing to `gap` (what was not remembered is unattributed).
    fn take(&mut self, gap: u64) -> BySource {
        let mut counts: HashMap<Arc<str>, u64> = HashMap::new();
        let mut left = gap;
        let mut unattributed = 0;
        while left > 0 {
            let Some((source, count)) = self.runs.front_mut() else {
                break;
            };
            let n = (*count).min(left);
            match source {
                Some(name) => *counts.entry(name.clone()).or_default() += n,
                None => unattributed += n,
            }
            left -= n;
            *count -= n;
            if *count == 0 {
                self.runs.pop_front();
            }
        }
        BySource::top_n(
            counts.into_iter().map(|(name, n)| (name.to_string(), n)),
            unattributed + left,
            GAP_TOP_SOURCES,
        )
    }
}

/// Where `source` (a slice of `item`'s bytes) lies in them, kept small in every entry.
fn source_span(item: &Item, source: &[u8]) -> (u32, u32) {
    let start = (source.as_ptr() as usize).wrapping_sub(item.bytes.as_ptr() as usize);
    match start.checked_add(source.len()) {
        Some(end) if end <= item.bytes.len() => (
            u32::try_from(start).unwrap_or(0),
            u32::try_from(end).unwrap_or(0),
        ),
        _ => (0, 0),
    }
}

/// Which envelope types a consumer wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct KindMask(u8);

impl KindMask {
    pub(crate) const ALL: Self = Self(0xff);
    pub(crate) const NONE: Self = Self(0);
    /// Loggregator's `filter-type=logs`.
    pub(crate) const LOGS: Self = Self(1 << 1);
    /// Loggregator's `filter-type=metrics`: counters, gauges and timers.
    pub(crate) const METRICS: Self = Self((1 << 2) | (1 << 3) | (1 << 4));

    const fn bit(kind: Kind) -> u8 {
        match kind {
            Kind::None => 1,
            Kind::Log => 1 << 1,
            Kind::Counter => 1 << 2,
            Kind::Gauge => 1 << 3,
            Kind::Timer => 1 << 4,
            Kind::Event => 1 << 5,
        }
    }

    #[must_use]
    pub(crate) const fn with(self, kind: Kind) -> Self {
        Self(self.0 | Self::bit(kind))
    }

    #[inline]
    pub(crate) const fn has(self, kind: Kind) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    pub(crate) const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Outbox bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_envelopes: usize,
    pub(crate) max_bytes: usize,
    /// Fair drops between the sources an outbox holds (see the module docs).
    pub(crate) fair: bool,
}

/// Where an outbox counts its fair drops.
#[derive(Debug, Clone)]
pub(crate) struct FairCounters {
    /// `dropped{reason=fair_share}`: refused for holding more than the source's share.
    pub(crate) refused: Counter,
    /// Fair refusals and evictions, by source.
    pub(crate) by_source: Arc<SourceCounters>,
}

/// What [`Outbox::take`] handed over besides the envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    /// Envelopes dropped before these, to report with a gap marker first.
    pub(crate) gap: u64,
}

/// Counts the outbox's drops under the edge's metric names.
#[derive(Debug)]
struct Report {
    dropped: Counter,
    closed: Counter,
}

impl Observer for Report {
    fn dropped(&self, reason: DropReason, _items: usize, events: u64) {
        match reason {
            DropReason::Evicted | DropReason::Full | DropReason::TooLarge => {
                self.dropped.add(events);
            }
            // Routed here after the consumer left (the fan-out held the outbox a moment
            // longer): counted, since nobody else will.
            DropReason::Closed => self.closed.add(events),
            // What `close` empties is returned to, and counted by, the caller.
            DropReason::Discarded => {}
        }
    }
}

/// One queued envelope and what it is charged to in the fairness ledger.
#[derive(Debug)]
struct Entry {
    item: Item,
    share: Option<Share>,
    /// Where its `source_id` lies in `item.bytes` (`(0, 0)`: unknown).
    source: (u32, u32),
}

impl Entry {
    fn source(&self) -> Option<&[u8]> {
        let (start, end) = self.source;
        (end > start)
            .then(|| self.item.bytes.get(start as usize..end as usize))
            .flatten()
    }
}

impl Weigh for Entry {
    #[inline]
    fn bytes(&self) -> usize {
        self.item.bytes.len()
    }
}

/// The outbox's fairness ledger and the scratch its takes reuse.
#[derive(Debug)]
struct Fair {
    ledger: FairShare,
    keys: KeyHasher,
    counters: FairCounters,
    next_sweep: Mutex<Instant>,
    /// When refusals began with no take finding the queue empty since: refusals put the
    /// consumer behind as evictions do, so one that never catches up still meets the
    /// slow-consumer timeout.
    refused_since: Mutex<Option<Instant>>,
}

/// One consumer's bounded queue.
#[derive(Debug)]
pub(crate) struct Outbox {
    buffer: Buffer<Entry, Report>,
    kinds: KindMask,
    fair: Option<Fair>,
    /// What a take drains before handing the items over (only the writer takes: uncontended).
    scratch: Mutex<(Vec<Entry>, Vec<Share>)>,
    /// Set while `deferred` names dopplers, so a push checks the list only then.
    deferring: AtomicBool,
    /// Dopplers whose envelopes are passed over: their replay ring is read instead.
    deferred: Mutex<Arc<[u64]>>,
    /// Most envelopes held (`queue_max_envelopes`).
    capacity: usize,
    /// Most bytes held (`queue_max_bytes`).
    max_bytes: usize,
    /// The consumer keeps cursors: overflow closes its stream instead of dropping.
    resumable: AtomicBool,
    /// Makes a resumable push's room check and push one step (several publishers push).
    push_lock: Mutex<()>,
    /// Cancelled at a resumable outbox's first overflow.
    fell_behind: CancellationToken,
    /// Envelopes passed over since [`Outbox::fell_behind`] (the rings hold them).
    passed_over: AtomicU64,
    /// Dropped envelopes by source, until the writer's next marker tells them.
    lost: Mutex<LostRuns>,
}

/// What [`Outbox::close_for_resume`] found still queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Left {
    /// With a ring position: the consumer is read them again when it resumes.
    pub(crate) replayable: u64,
    /// Without one: lost.
    pub(crate) lost: u64,
}

impl Outbox {
    /// An outbox counting overflow in `dropped` and envelopes routed to it after
    /// [`Outbox::close`] in `closed`; fair between sources when `limits.fair` and `fair` says
    /// where to count.
    pub(crate) fn new(
        limits: Limits,
        kinds: KindMask,
        dropped: Counter,
        closed: Counter,
        fair: Option<FairCounters>,
    ) -> Self {
        let bounds = Bounds::UNBOUNDED
            .items(limits.max_envelopes)
            .bytes(limits.max_bytes);
        Self {
            buffer: Buffer::with_observer(
                BufferConfig::drop_oldest(bounds),
                Report { dropped, closed },
            ),
            kinds,
            fair: fair.filter(|_| limits.fair).map(|counters| Fair {
                ledger: FairShare::new(FairConfig::default()),
                keys: KeyHasher::default(),
                counters,
                next_sweep: Mutex::new(Instant::now() + SWEEP_EVERY),
                refused_since: Mutex::new(None),
            }),
            scratch: Mutex::default(),
            deferring: AtomicBool::new(false),
            deferred: Mutex::new(Arc::from([])),
            capacity: limits.max_envelopes,
            max_bytes: limits.max_bytes,
            resumable: AtomicBool::new(false),
            push_lock: Mutex::new(()),
            fell_behind: CancellationToken::new(),
            passed_over: AtomicU64::new(0),
            lost: Mutex::default(),
        }
    }

    /// From now on an overflow closes the consumer's stream instead of dropping (it keeps
    /// cursors and resumes from the rings).
    pub(crate) fn keep_for_resume(&self) {
        self.resumable.store(true, Ordering::Release);
    }

    /// Cancelled once a resumable outbox would have dropped: its stream must close.
    pub(crate) fn fell_behind(&self) -> &CancellationToken {
        &self.fell_behind
    }

    /// Envelopes passed over since the outbox fell behind.
    pub(crate) fn passed_over(&self) -> u64 {
        self.passed_over.load(Ordering::Relaxed)
    }

    /// The resumable push: all of a batch with ring positions is queued, or, when it would
    /// evict, none of it (and nothing after it).
    fn push_resumable(&self, envelopes: impl Iterator<Item = Item>) {
        let _one_at_a_time = self
            .push_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let batch: Vec<Item> = envelopes.collect();
        if batch.is_empty() {
            return;
        }
        // Envelopes without a position cannot be read again: they queue as for anyone.
        if batch.iter().all(|i| i.at.is_known()) {
            let n = batch.len() as u64;
            if self.fell_behind.is_cancelled() {
                self.passed_over.fetch_add(n, Ordering::Relaxed);
                return;
            }
            let (items, bytes) = self.depth();
            let adding: usize = batch.iter().map(|i| i.bytes.len()).sum();
            // An empty queue takes any batch (as it always keeps the newest), so one batch
            // larger than the outbox cannot close the stream over and over.
            if items > 0
                && (items + batch.len() > self.capacity
                    || bytes.saturating_add(adding) > self.max_bytes)
            {
                self.fell_behind.cancel();
                self.passed_over.fetch_add(n, Ordering::Relaxed);
                return;
            }
        }
        self.buffer.push_iter_with(
            batch.into_iter().map(|item| Entry {
                item,
                share: None,
                source: (0, 0),
            }),
            |lost, reason| self.record_lost(lost, reason),
        );
    }

    pub(crate) fn kinds(&self) -> KindMask {
        self.kinds
    }

    /// Most envelopes this outbox holds.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Passes over the envelopes of `dopplers` from now on (their consumer reads them from the
    /// replay rings); [`Outbox::undefer`] ends it.
    pub(crate) fn defer(&self, dopplers: Vec<u64>) {
        let mut deferred = self.deferred.lock().unwrap_or_else(PoisonError::into_inner);
        self.deferring
            .store(!dopplers.is_empty(), Ordering::Release);
        *deferred = dopplers.into();
    }

    /// Queues every doppler's envelopes again. The hub calls it under the lock publishing
    /// takes, so the consumer's live start is exact.
    pub(crate) fn undefer(&self) {
        self.defer(Vec::new());
    }

    /// The dopplers passed over now, when any.
    fn deferred(&self) -> Option<Arc<[u64]>> {
        if !self.deferring.load(Ordering::Acquire) {
            return None;
        }
        let deferred = self.deferred.lock().unwrap_or_else(PoisonError::into_inner);
        (!deferred.is_empty()).then(|| Arc::clone(&deferred))
    }

    /// Appends envelopes with their sources' ids, dropping the oldest queued ones to stay within
    /// the limits (always keeping the newest, even one larger than the byte limit on its own)
    /// and, when fair, refusing those of a source over its share. Never blocks beyond the short
    /// locks, which no one holds across an await.
    pub(crate) fn push_many<'a>(&self, envelopes: impl IntoIterator<Item = (Item, &'a [u8])>) {
        let deferred = self.deferred();
        let envelopes = envelopes.into_iter().filter(|(item, _)| {
            deferred
                .as_ref()
                .is_none_or(|d| !d.contains(&item.at.doppler))
        });
        if self.resumable.load(Ordering::Acquire) {
            self.push_resumable(envelopes.map(|(item, _)| item));
            return;
        }
        let Some(fair) = &self.fair else {
            self.buffer.push_iter_with(
                envelopes.into_iter().map(|(item, source)| Entry {
                    source: source_span(&item, source),
                    item,
                    share: None,
                }),
                |lost, reason| self.record_lost(lost, reason),
            );
            return;
        };
        let fill = self.buffer.fill_permille();
        let mut refused = 0u64;
        // One buffer lock and one wake-up for the whole batch; the ledger's own short lock is
        // taken inside it (the same order as the eviction callback's), never the other way.
        let admitted = envelopes.into_iter().filter_map(|(item, source)| {
            let name = std::str::from_utf8(source).unwrap_or_default();
            let cost = u32::try_from(item.bytes.len()).unwrap_or(u32::MAX);
            let Some(share) = fair.ledger.admit(fair.keys.key(source), name, cost, fill) else {
                refused += 1;
                self.lost
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .add(Some(source), 1);
                return None;
            };
            Some(Entry {
                source: source_span(&item, source),
                item,
                share: Some(share),
            })
        });
        self.buffer.push_iter_with(admitted, |lost, reason| {
            self.record_lost(lost, reason);
            let Some(share) = lost.share else { return };
            if matches!(
                reason,
                DropReason::Evicted | DropReason::Full | DropReason::TooLarge
            ) {
                fair.ledger.evicted(&[share]);
            } else {
                // Closed: counted by the buffer's observer, not as a fairness loss.
                fair.ledger.release(&[share]);
            }
        });
        if refused > 0 {
            fair.counters.refused.add(refused);
            // The consumer is owed these in its next gap marker like any other loss here.
            self.buffer.restore_gap(refused);
            fair.refused_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_with(Instant::now);
        }
    }

    /// Moves up to `max_envelopes` / `max_bytes` (at least one envelope) into `out`. When the
    /// queue is found empty the consumer has caught up and is no longer behind.
    pub(crate) fn take(
        &self,
        max_envelopes: usize,
        max_bytes: usize,
        out: &mut Vec<Item>,
    ) -> Taken {
        let max = Bounds::UNBOUNDED.items(max_envelopes).bytes(max_bytes);
        let mut scratch = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        let (entries, shares) = &mut *scratch;
        let drained = self.buffer.drain_into(entries, max);
        let gap = drained.gap;
        shares.clear();
        for e in entries.drain(..) {
            if let Some(share) = e.share
                && !shares.last_mut().is_some_and(|last| last.merge(share))
            {
                shares.push(share);
            }
            out.push(e.item);
        }
        if let Some(fair) = &self.fair {
            fair.ledger.release(shares);
            if drained.items == 0 {
                // Found empty: caught up, as the buffer's own `behind_since` ends.
                *fair
                    .refused_since
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
            }
            self.maybe_sweep(fair, Instant::now());
        }
        Taken { gap }
    }

    /// Hands the ledger's per-source drop counts to the metrics when a sweep is due.
    fn maybe_sweep(&self, fair: &Fair, now: Instant) {
        {
            let mut next = fair
                .next_sweep
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if now < *next {
                return;
            }
            *next = now + SWEEP_EVERY;
        }
        Self::sweep(fair, now);
    }

    fn sweep(fair: &Fair, now: Instant) {
        // The consumer is told through its gap marker; the sources' notices are the doppler's.
        fair.ledger.sweep(
            now,
            |d| fair.counters.by_source.add(d.source, d.dropped),
            |_| {},
        );
    }

    /// Remembers whose envelope a push dropped (called under the buffer's lock).
    fn record_lost(&self, entry: &Entry, reason: DropReason) {
        if matches!(
            reason,
            DropReason::Evicted | DropReason::Full | DropReason::TooLarge
        ) {
            self.lost
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .add(entry.source(), 1);
        }
    }

    /// Whose the `gap` envelopes a take reported lost were: the top sources and the rest as
    /// other, summing to `gap`.
    pub(crate) fn lost_by_source(&self, gap: u64) -> BySource {
        if gap == 0 {
            return BySource::default();
        }
        self.lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(gap)
    }

    /// Hands over the count of drops not yet reported (for a final gap marker).
    pub(crate) fn take_unreported(&self) -> u64 {
        self.buffer.take_gap()
    }

    /// When the current run of drops (evictions or fair refusals) began, if the consumer is
    /// behind.
    pub(crate) fn behind_since(&self) -> Option<Instant> {
        let evicted = self.buffer.behind_since();
        let refused = self.fair.as_ref().and_then(|f| {
            *f.refused_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        });
        match (evicted, refused) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Waits until something was pushed since the last wait (or returns at once if so).
    pub(crate) async fn notified(&self) {
        self.buffer.readable().await;
    }

    /// Marks the consumer gone and empties the queue. Returns how many queued envelopes were
    /// never delivered (the caller counts them).
    pub(crate) fn close(&self) -> u64 {
        // Closed first, so nothing pushed from now on can be left queued and uncounted.
        self.buffer.close();
        let mut shares = Vec::new();
        // Told after the drops not yet reported, in the final marker (see `lost_by_source`).
        // Gathered apart: `lost` is taken under the buffer's lock elsewhere, never around it.
        let mut discarded = LostRuns::default();
        let left = self
            .buffer
            .discard(|e| {
                shares.extend(e.share);
                discarded.add(e.source(), 1);
            })
            .events;
        self.lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .append(discarded);
        if let Some(fair) = &self.fair {
            fair.ledger.release(&shares);
            Self::sweep(fair, Instant::now());
        }
        left
    }

    /// Like [`Outbox::close`], for a stream closed to resume: tells apart what is still queued
    /// and held by the rings from what is lost.
    pub(crate) fn close_for_resume(&self) -> Left {
        self.buffer.close();
        let mut shares = Vec::new();
        let mut lost = 0u64;
        let all = self
            .buffer
            .discard(|e| {
                lost += u64::from(!e.item.at.is_known());
                shares.extend(e.share);
            })
            .events;
        if let Some(fair) = &self.fair {
            fair.ledger.release(&shares);
            Self::sweep(fair, Instant::now());
        }
        Left {
            replayable: all.saturating_sub(lost),
            lost,
        }
    }

    /// The fairness ledger's totals, when the outbox is fair.
    #[cfg(test)]
    pub(crate) fn fair_stats(&self) -> Option<hydrant_buffer::FairStats> {
        self.fair.as_ref().map(|f| f.ledger.stats())
    }

    /// `(envelopes, bytes)` queued now.
    pub(crate) fn depth(&self) -> (usize, usize) {
        let d = self.buffer.depth();
        (d.items, d.bytes)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::position::At;

    fn outbox(max_envelopes: usize, max_bytes: usize) -> Outbox {
        Outbox::new(
            Limits {
                max_envelopes,
                max_bytes,
                fair: false,
            },
            KindMask::ALL,
            Counter::default(),
            Counter::default(),
            None,
        )
    }

    fn envs(n: usize, size: usize) -> Vec<Item> {
        (0..n)
            .map(|i| Item::new(Bytes::from(vec![i as u8; size]), At::NONE))
            .collect()
    }

    fn from(source: &[u8], items: Vec<Item>) -> impl Iterator<Item = (Item, &[u8])> {
        items.into_iter().map(move |i| (i, source))
    }

    #[test]
    fn overflow_drops_the_oldest_and_reports_a_gap_once() {
        let o = outbox(3, 1 << 20);
        let e = envs(5, 10);
        o.push_many(from(b"app", e.clone()));
        assert_eq!(o.buffer.observer().dropped.get(), 2);
        assert!(o.behind_since().is_some());
        let mut out = Vec::new();
        assert_eq!(o.take(10, 1 << 20, &mut out), Taken { gap: 2 });
        assert_eq!(out, e[2..].to_vec(), "the newest three survive, in order");
        out.clear();
        // Found empty: caught up, and the gap was already handed over.
        assert_eq!(o.take(10, 1 << 20, &mut out), Taken { gap: 0 });
        assert!(out.is_empty());
        assert!(o.behind_since().is_none());
    }

    #[test]
    fn byte_limit_bounds_the_queue() {
        let o = outbox(1000, 100);
        o.push_many(from(b"app", envs(20, 30)));
        assert_eq!(o.depth(), (3, 90));
        assert_eq!(o.buffer.observer().dropped.get(), 17);
        // One envelope larger than the whole limit still gets through, alone.
        o.push_many(from(b"app", envs(1, 500)));
        assert_eq!(o.depth(), (1, 500));
    }

    #[test]
    fn take_respects_frame_limits_but_always_moves_one() {
        let o = outbox(1000, 1 << 20);
        o.push_many(from(b"app", envs(10, 100)));
        let mut out = Vec::new();
        o.take(4, 1 << 20, &mut out);
        assert_eq!(out.len(), 4);
        out.clear();
        o.take(100, 250, &mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        o.take(100, 10, &mut out);
        assert_eq!(out.len(), 1, "an envelope above max_bytes still moves");
        assert_eq!(o.depth(), (3, 300));
    }

    #[test]
    fn closed_outboxes_refuse_pushes_count_them_and_report_leftovers() {
        let o = outbox(10, 1 << 20);
        o.push_many(from(b"app", envs(4, 8)));
        assert_eq!(o.close(), 4);
        assert_eq!(
            o.buffer.observer().closed.get(),
            0,
            "leftovers are the caller's to count"
        );
        o.push_many(from(b"app", envs(3, 8)));
        assert_eq!(o.depth(), (0, 0));
        assert_eq!(
            o.buffer.observer().closed.get(),
            3,
            "late envelopes are counted once"
        );
    }

    /// What one slow firehose consumer got from a flood beside ten quiet sources.
    struct Outcome {
        quiet_sent: usize,
        quiet_got: usize,
        flood_sent: usize,
        flood_got: usize,
        /// Summed over every gap marker the consumer was owed.
        gaps: u64,
        flood_counted: u64,
        fair_share_drops: u64,
        stats: Option<hydrant_buffer::FairStats>,
    }

    fn log(source: &str, i: usize) -> Bytes {
        hydrant_envelope::wire::encode(&hydrant_envelope::v2::Envelope {
            source_id: source.to_owned(),
            message: Some(hydrant_envelope::v2::envelope::Message::Log(
                hydrant_envelope::v2::Log {
                    payload: format!("line {i:06}").into_bytes().into(),
                    r#type: 0,
                },
            )),
            ..hydrant_envelope::v2::Envelope::default()
        })
    }

    /// A nozzle on the firehose taking 50 envelopes a round while each round brings 200 of
    /// the flood's and one of each quiet source's, through the hub's real fan-out.
    fn slow_nozzle_beside_a_flood(fair: bool) -> Outcome {
        use crate::hub::Hub;
        use crate::metrics::{Endpoint, Metrics};
        let registry = hydrant_emitter::Registry::new("trafficcontroller", "t");
        let hub = std::sync::Arc::new(Hub::new(
            Metrics::new(&registry),
            Limits {
                max_envelopes: 1000,
                max_bytes: 1 << 24,
                fair,
            },
            1,
        ));
        let sub = hub.subscribe_group("nozzle", KindMask::ALL, Endpoint::Firehose);
        let quiet: Vec<String> = (0..10).map(|q| format!("quiet-{q}")).collect();
        let (mut quiet_sent, mut flood_sent) = (0, 0);
        let (mut quiet_got, mut flood_got, mut gaps) = (0, 0, 0);
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        let mut count = |out: &mut Vec<Item>| {
            for item in out.drain(..) {
                let view = hydrant_envelope::wire::EnvelopeView::parse(&item.bytes).unwrap();
                if view.source_id == "flood" {
                    flood_got += 1;
                } else {
                    quiet_got += 1;
                }
            }
        };
        for round in 0..200 {
            let mut batch: Vec<Bytes> = (0..200).map(|i| log("flood", round * 200 + i)).collect();
            batch.extend(quiet.iter().map(|q| log(q, round)));
            flood_sent += 200;
            quiet_sent += quiet.len();
            hub.publish(
                &hydrant_envelope::wire::batch_of(batch.iter().map(|b| &b[..])),
                &mut scratch,
            );
            gaps += sub.outbox().take(50, usize::MAX, &mut out).gap;
            count(&mut out);
        }
        // The consumer catches up at last: everything still queued arrives.
        loop {
            gaps += sub.outbox().take(1000, usize::MAX, &mut out).gap;
            if out.is_empty() {
                break;
            }
            count(&mut out);
        }
        gaps += sub.outbox().take_unreported();
        let stats = sub.outbox().fair_stats();
        drop(sub);
        Outcome {
            quiet_sent,
            quiet_got,
            flood_sent,
            flood_got,
            gaps,
            flood_counted: registry.counter_sum(
                "trafficcontroller.dropped_by_source",
                &[("source", "flood")],
            ),
            fair_share_drops: registry
                .counter_sum("trafficcontroller.dropped", &[("reason", "fair_share")]),
            stats,
        }
    }

    /// The writer's `slow_consumer` markers say whose envelopes were dropped: exact per source
    /// when drops and takes alternate, and always summing to the gap, fair or not.
    #[test]
    fn a_slow_consumers_markers_say_whose_envelopes_it_lost() {
        use crate::hub::Hub;
        use crate::metrics::{Endpoint, Metrics};
        let batch = |sources: &[&str], n: usize| {
            let envs: Vec<Bytes> = (0..n).map(|i| log(sources[i % sources.len()], i)).collect();
            hydrant_envelope::wire::batch_of(envs.iter().map(|b| &b[..]))
        };
        let named = |by: &BySource| {
            let mut v: Vec<(String, u64)> = by.top.clone();
            v.sort();
            v
        };
        for fair in [false, true] {
            let registry = hydrant_emitter::Registry::new("trafficcontroller", "t");
            let hub = std::sync::Arc::new(Hub::new(
                Metrics::new(&registry),
                Limits {
                    max_envelopes: 10,
                    max_bytes: 1 << 24,
                    fair,
                },
                1,
            ));
            let sub = hub.subscribe_group("nozzle", KindMask::ALL, Endpoint::Firehose);
            let (mut scratch, mut out) = (Vec::new(), Vec::new());
            hub.publish(&batch(&["a"], 10), &mut scratch);
            hub.publish(&batch(&["b"], 10), &mut scratch);
            let gap = sub.outbox().take(100, usize::MAX, &mut out).gap;
            let by = sub.outbox().lost_by_source(gap);
            assert_eq!(by.total(), gap, "fair={fair}");
            if !fair {
                assert_eq!(gap, 10);
                assert_eq!(named(&by), [("a".to_owned(), 10)]);
            }
            out.clear();
            assert_eq!(sub.outbox().take(100, usize::MAX, &mut out).gap, 0);
            hub.publish(&batch(&["a", "c"], 12), &mut scratch);
            let gap = sub.outbox().take(100, usize::MAX, &mut out).gap;
            let by = sub.outbox().lost_by_source(gap);
            assert_eq!(by.total(), gap, "fair={fair}");
            assert_eq!(by.other, 0, "every drop attributed");
            if !fair {
                assert_eq!(named(&by), [("a".to_owned(), 1), ("c".to_owned(), 1)]);
            }
            // A flood among quiet sources: what the markers name adds up to what was lost,
            // and the flood lost most.
            let mut lost: std::collections::HashMap<String, u64> = Default::default();
            let mut total = 0;
            for _ in 0..20 {
                hub.publish(
                    &batch(&["flood", "flood", "flood", "flood", "q"], 40),
                    &mut scratch,
                );
                out.clear();
                let gap = sub.outbox().take(5, usize::MAX, &mut out).gap;
                total += gap;
                let by = sub.outbox().lost_by_source(gap);
                assert_eq!(by.total(), gap);
                for (s, n) in by.top {
                    *lost.entry(s).or_default() += n;
                }
            }
            assert!(total > 0);
            assert_eq!(lost.values().sum::<u64>(), total, "fair={fair}: {lost:?}");
            assert!(
                lost["flood"] > lost.get("q").copied().unwrap_or(0),
                "{lost:?}"
            );
        }
    }

    #[test]
    fn a_slow_consumer_loses_the_floods_envelopes_and_none_of_the_quiet_sources() {
        let o = slow_nozzle_beside_a_flood(true);
        assert_eq!(o.quiet_got, o.quiet_sent, "every quiet line arrives");
        let flood_lost = (o.flood_sent - o.flood_got) as u64;
        assert!(
            flood_lost > 20_000,
            "the consumer was far behind: {flood_lost}"
        );
        assert_eq!(
            o.gaps, flood_lost,
            "the gap markers count exactly what was lost"
        );
        assert_eq!(
            o.flood_counted, flood_lost,
            "every loss counted under the flood"
        );
        assert_eq!(
            o.fair_share_drops, flood_lost,
            "held to its share, never evicted"
        );
        let stats = o.stats.unwrap();
        assert!(stats.balanced() && stats.queued == 0, "{stats:?}");
    }

    #[test]
    fn without_fair_drops_the_same_consumer_loses_quiet_lines_too() {
        // The scenario above is one that costs quiet sources lines when fairness is off.
        let o = slow_nozzle_beside_a_flood(false);
        assert!(
            o.quiet_got < o.quiet_sent,
            "{} of {}",
            o.quiet_got,
            o.quiet_sent
        );
        let lost = (o.quiet_sent - o.quiet_got + o.flood_sent - o.flood_got) as u64;
        assert_eq!(o.gaps, lost);
        assert_eq!(
            o.flood_counted, 0,
            "by-source counts come from the fair ledger"
        );
    }

    #[test]
    fn fair_refusals_put_the_consumer_behind_until_it_catches_up() {
        let o = Outbox::new(
            Limits {
                max_envelopes: 100,
                max_bytes: 1 << 20,
                fair: true,
            },
            KindMask::ALL,
            Counter::default(),
            Counter::default(),
            Some(FairCounters {
                refused: Counter::default(),
                by_source: Arc::new(SourceCounters::new(
                    &hydrant_emitter::Registry::new("t", "t"),
                    "t.dropped_by_source",
                    "",
                    &[],
                    20,
                )),
            }),
        );
        o.push_many(from(b"loud", envs(60, 10)));
        o.push_many(from(b"quiet", envs(1, 10)).chain(from(b"loud", envs(5, 10))));
        assert_eq!(o.fair.as_ref().unwrap().counters.refused.get(), 5);
        assert!(o.behind_since().is_some(), "refusals are falling behind");
        let mut out = Vec::new();
        assert_eq!(o.take(1000, 1 << 20, &mut out).gap, 5);
        assert_eq!(out.len(), 61);
        assert!(o.behind_since().is_some(), "not yet seen empty");
        out.clear();
        o.take(1000, 1 << 20, &mut out);
        assert!(o.behind_since().is_none(), "caught up");
    }

    #[test]
    fn masks() {
        assert!(KindMask::ALL.has(Kind::Event));
        assert!(KindMask::LOGS.has(Kind::Log) && !KindMask::LOGS.has(Kind::Counter));
        assert!(KindMask::METRICS.has(Kind::Gauge) && !KindMask::METRICS.has(Kind::Log));
        assert!(KindMask::NONE.with(Kind::Timer).has(Kind::Timer));
        assert!(KindMask::NONE.is_empty());
        assert_eq!(KindMask::NONE.with(Kind::Log), KindMask::LOGS);
    }
}
