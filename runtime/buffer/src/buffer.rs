//! [`Buffer`]: the bounded queue itself, its limits, policies, drop reasons and counters.
//!
//! Invariant kept here: every mutation of the queue and of its depth happens under one lock, and
//! every event that enters [`Buffer::push`] leaves through exactly one of a pop, a counted drop,
//! or stays queued, so [`Stats::balanced`] holds at every instant the lock is free.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::Error;

/// What an entry weighs: how many events it carries and how many bytes it keeps alive.
pub trait Weigh {
    /// Events (envelopes, metric values) in this entry; drops are counted in these. Default 1.
    fn events(&self) -> u64 {
        1
    }
    /// Bytes this entry keeps alive.
    fn bytes(&self) -> usize;
}

impl Weigh for Bytes {
    #[inline]
    fn bytes(&self) -> usize {
        self.len()
    }
}

/// An encoded batch and how many envelopes it holds: what the emitter and the agent queue.
impl Weigh for (Bytes, usize) {
    #[inline]
    fn events(&self) -> u64 {
        self.1 as u64
    }
    #[inline]
    fn bytes(&self) -> usize {
        self.0.len()
    }
}

/// Bounds on what a buffer holds, or on one batch taken from it. A field at `usize::MAX` /
/// `u64::MAX` does not bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries.
    pub items: usize,
    /// Events carried by the entries ([`Weigh::events`]).
    pub events: u64,
    /// Bytes ([`Weigh::bytes`]).
    pub bytes: usize,
}

impl Limits {
    /// No bound at all; narrow it with the builder methods.
    pub const UNBOUNDED: Self = Self {
        items: usize::MAX,
        events: u64::MAX,
        bytes: usize::MAX,
    };

    /// These limits with at most `items` entries.
    #[must_use]
    pub const fn items(self, items: usize) -> Self {
        Self { items, ..self }
    }

    /// These limits with at most `events` events.
    #[must_use]
    pub const fn events(self, events: u64) -> Self {
        Self { events, ..self }
    }

    /// These limits with at most `bytes` bytes.
    #[must_use]
    pub const fn bytes(self, bytes: usize) -> Self {
        Self { bytes, ..self }
    }

    /// Whether `depth` plus one more entry weighing (`events`, `bytes`) stays within.
    #[inline]
    fn admits(&self, depth: &Depth, events: u64, bytes: usize) -> bool {
        depth.items < self.items
            && depth.events.saturating_add(events) <= self.events
            && depth.bytes.saturating_add(bytes) <= self.bytes
    }

    /// Whether one entry weighing (`events`, `bytes`) fits in an empty buffer.
    #[inline]
    fn fits_alone(&self, events: u64, bytes: usize) -> bool {
        self.admits(&Depth::default(), events, bytes)
    }
}

/// What a push does when the entry does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Refuse the new entry ([`DropReason::Full`]); what is queued stays.
    DropNewest,
    /// Evict the oldest entries until the new one fits ([`DropReason::Evicted`]): the newest data
    /// is the most useful (Loggregator's diode). The policy of every hop an app's data crosses.
    DropOldest,
    /// [`Buffer::push_wait`] waits for room. For consumers that may wait (a destination that
    /// must not lose data); never for a path an app emits on. [`Buffer::push`] on a blocking
    /// buffer refuses instead of waiting ([`DropReason::Full`]).
    Block,
}

/// What to do with one entry that exceeds the limits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// Keep it, alone: the buffer empties for it (under `DropOldest`) or takes it once empty.
    Keep,
    /// Refuse it ([`DropReason::TooLarge`]) instead of emptying the buffer for it.
    Refuse,
}

/// A buffer's limits and policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferConfig {
    /// What it may hold.
    pub limits: Limits,
    /// What a push does when full.
    pub when_full: WhenFull,
    /// What a push does with an entry larger than `limits` on its own.
    pub oversize: Oversize,
}

impl BufferConfig {
    /// A drop-oldest buffer within `limits` that keeps an oversized newest entry.
    #[must_use]
    pub const fn drop_oldest(limits: Limits) -> Self {
        Self {
            limits,
            when_full: WhenFull::DropOldest,
            oversize: Oversize::Keep,
        }
    }

    /// Checks that the buffer can hold anything.
    ///
    /// # Errors
    /// [`Error::ZeroLimit`] naming the limit that is zero.
    pub fn validate(&self) -> Result<(), Error> {
        if self.limits.items == 0 {
            return Err(Error::ZeroLimit("items"));
        }
        if self.limits.events == 0 {
            return Err(Error::ZeroLimit("events"));
        }
        if self.limits.bytes == 0 {
            return Err(Error::ZeroLimit("bytes"));
        }
        Ok(())
    }
}

/// Why events were dropped: a fixed set, so every owner reports the same reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A push found the buffer full and the policy refused the new entry.
    Full,
    /// The oldest entries were evicted to make room for a newer one.
    Evicted,
    /// One entry exceeded the limits on its own and [`Oversize::Refuse`] was chosen.
    TooLarge,
    /// Pushed after [`Buffer::close`], or thrown away by [`Buffer::close_and_discard`].
    Closed,
    /// Thrown away by the owner with [`Buffer::discard`] (it reports its own reason).
    Discarded,
}

impl DropReason {
    /// Every reason, in the order of [`Stats::dropped`].
    pub const ALL: [Self; 5] = [
        Self::Full,
        Self::Evicted,
        Self::TooLarge,
        Self::Closed,
        Self::Discarded,
    ];

    /// A stable label for metrics.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Evicted => "oldest_evicted",
            Self::TooLarge => "too_large",
            Self::Closed => "closed",
            Self::Discarded => "discarded",
        }
    }

    const fn index(self) -> usize {
        match self {
            Self::Full => 0,
            Self::Evicted => 1,
            Self::TooLarge => 2,
            Self::Closed => 3,
            Self::Discarded => 4,
        }
    }

    /// Whether this loss happened while the stream was live, so the consumer is owed a gap.
    const fn is_gap(self) -> bool {
        matches!(self, Self::Full | Self::Evicted | Self::TooLarge)
    }
}

/// What a buffer holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Entries.
    pub items: usize,
    /// Events in them.
    pub events: u64,
    /// Bytes in them.
    pub bytes: usize,
}

/// Where a buffer reports to its owner, who keeps its own metric names. Called under the
/// buffer's lock: keep it to counter and gauge updates.
pub trait Observer: Send + Sync {
    /// `events` (in `items` entries) were dropped for `reason`.
    fn dropped(&self, reason: DropReason, items: usize, events: u64) {
        let _ = (reason, items, events);
    }
    /// The depth changed.
    fn depth(&self, depth: Depth) {
        let _ = depth;
    }
}

/// Reports nothing; the buffer's own [`Stats`] still count.
impl Observer for () {}

/// What one push lost (including, when refused, the pushed entry itself).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Entries lost.
    pub items: usize,
    /// Events lost.
    pub events: u64,
}

impl Pushed {
    fn add(&mut self, events: u64) {
        self.items += 1;
        self.events += events;
    }
}

/// What one take moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Entries moved.
    pub items: usize,
    /// Events in them.
    pub events: u64,
    /// Bytes in them.
    pub bytes: usize,
    /// Events lost to overflow since the previous take: when non-zero, the consumer owes its
    /// reader a gap marker in front of these entries.
    pub gap: u64,
}

/// The buffer's own ledger, in events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events that entered a push.
    pub pushed: u64,
    /// Events taken by the consumer.
    pub popped: u64,
    /// Events dropped, indexed like [`DropReason::ALL`].
    pub dropped: [u64; 5],
    /// What is queued.
    pub depth: Depth,
}

impl Stats {
    /// Events dropped for `reason`.
    #[must_use]
    pub const fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    /// Whether `pushed = popped + Σ dropped + depth.events`.
    #[must_use]
    pub fn balanced(&self) -> bool {
        let dropped: u64 = self.dropped.iter().sum();
        self.pushed == self.popped + dropped + self.depth.events
    }
}

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    depth: Depth,
    /// Events lost to overflow that no take has handed over yet.
    unreported: u64,
    /// When the current run of losses began; cleared when a take finds the buffer empty.
    behind_since: Option<Instant>,
    closed: bool,
    pushed: u64,
    popped: u64,
    dropped: [u64; 5],
}

/// A bounded queue of `T`, many producers, one consumer (several work, but `gap` then goes to
/// whichever takes first). See the crate docs for its invariants.
#[derive(Debug)]
pub struct Buffer<T, O = ()> {
    state: Mutex<State<T>>,
    /// Wakes the consumer: something was pushed, or the buffer closed.
    readable: Notify,
    /// Wakes producers waiting in [`Buffer::push_wait`]: room was made, or the buffer closed.
    writable: Notify,
    /// Mirrors `depth.events` for lock-free reads by telemetry.
    depth_events: AtomicU64,
    /// Mirrors `depth.items` and `depth.bytes` for lock-free [`Buffer::fill_permille`].
    depth_items: AtomicU64,
    depth_bytes: AtomicU64,
    config: BufferConfig,
    observer: O,
}

impl<T: Weigh> Buffer<T, ()> {
    /// An empty buffer that reports only through [`Buffer::stats`].
    #[must_use]
    pub fn new(config: BufferConfig) -> Self {
        Self::with_observer(config, ())
    }
}

impl<T: Weigh, O: Observer> Buffer<T, O> {
    /// An empty buffer that reports drops and depth to `observer`.
    #[must_use]
    pub fn with_observer(config: BufferConfig, observer: O) -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                depth: Depth::default(),
                unreported: 0,
                behind_since: None,
                closed: false,
                pushed: 0,
                popped: 0,
                dropped: [0; 5],
            }),
            readable: Notify::new(),
            writable: Notify::new(),
            depth_events: AtomicU64::new(0),
            depth_items: AtomicU64::new(0),
            depth_bytes: AtomicU64::new(0),
            config,
            observer,
        }
    }

    /// The observer given at construction.
    pub fn observer(&self) -> &O {
        &self.observer
    }

    /// The limits and policies.
    pub fn config(&self) -> &BufferConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every mutation below leaves the state consistent before anything that could panic,
        // so a poisoned lock holds valid data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count_drop(&self, s: &mut State<T>, reason: DropReason, items: usize, events: u64) {
        if items == 0 {
            return;
        }
        s.dropped[reason.index()] += events;
        if reason.is_gap() {
            s.unreported += events;
            if s.behind_since.is_none() {
                s.behind_since = Some(Instant::now());
            }
        }
        self.observer.dropped(reason, items, events);
    }

    fn depth_changed(&self, s: &State<T>) {
        self.depth_events.store(s.depth.events, Ordering::Relaxed);
        self.depth_items
            .store(s.depth.items as u64, Ordering::Relaxed);
        self.depth_bytes
            .store(s.depth.bytes as u64, Ordering::Relaxed);
        self.observer.depth(s.depth);
    }

    /// Admits `item` under the lock, or hands it back with the reason it cannot be admitted
    /// now (`Full` means "not yet": the caller decides whether to wait or drop).
    fn admit(
        &self,
        s: &mut State<T>,
        item: T,
        lost: &mut Pushed,
        on_lost: &mut impl FnMut(&T, DropReason),
    ) -> Result<(), (T, DropReason)> {
        let (events, bytes) = (item.events(), item.bytes());
        if s.closed {
            return Err((item, DropReason::Closed));
        }
        let limits = &self.config.limits;
        if !limits.fits_alone(events, bytes) {
            match self.config.oversize {
                Oversize::Refuse => return Err((item, DropReason::TooLarge)),
                Oversize::Keep => {}
            }
        }
        if !limits.admits(&s.depth, events, bytes) {
            match self.config.when_full {
                WhenFull::DropOldest => {
                    let (mut items, mut evicted) = (0usize, 0u64);
                    while !s.queue.is_empty() && !limits.admits(&s.depth, events, bytes) {
                        let Some(old) = s.queue.pop_front() else {
                            break;
                        };
                        let old_events = old.events();
                        s.depth.items -= 1;
                        s.depth.events -= old_events;
                        s.depth.bytes -= old.bytes();
                        on_lost(&old, DropReason::Evicted);
                        lost.add(old_events);
                        items += 1;
                        evicted += old_events;
                    }
                    self.count_drop(s, DropReason::Evicted, items, evicted);
                }
                WhenFull::DropNewest | WhenFull::Block => {
                    // An oversized entry kept under `Keep` goes in once the buffer is empty.
                    if !s.queue.is_empty() {
                        return Err((item, DropReason::Full));
                    }
                }
            }
        }
        s.depth.items += 1;
        s.depth.events += events;
        s.depth.bytes += bytes;
        s.queue.push_back(item);
        Ok(())
    }

    /// Queues `item` without ever waiting; returns what was lost on the way (evicted entries,
    /// or `item` itself when refused).
    pub fn push(&self, item: T) -> Pushed {
        self.push_with(item, |_, _| {})
    }

    /// [`push`](Self::push), and `on_lost` sees every entry lost on the way with its reason, so
    /// the owner can say whose data it was. It runs under the lock: keep it short.
    pub fn push_with(&self, item: T, mut on_lost: impl FnMut(&T, DropReason)) -> Pushed {
        let mut lost = Pushed::default();
        let mut s = self.lock();
        self.push_locked(&mut s, item, &mut lost, &mut on_lost);
        self.depth_changed(&s);
        drop(s);
        self.readable.notify_one();
        lost
    }

    /// Queues every entry of `items` under one lock, in order, never waiting.
    pub fn push_iter(&self, items: impl IntoIterator<Item = T>) -> Pushed {
        self.push_iter_with(items, |_, _| {})
    }

    /// [`push_iter`](Self::push_iter), and `on_lost` sees every entry lost on the way with its
    /// reason, as in [`push_with`](Self::push_with). `items` is drawn under the lock (one lock
    /// and one wake-up for the whole batch): keep producing an entry, and `on_lost`, short.
    pub fn push_iter_with(
        &self,
        items: impl IntoIterator<Item = T>,
        mut on_lost: impl FnMut(&T, DropReason),
    ) -> Pushed {
        let mut lost = Pushed::default();
        let mut any = false;
        let mut s = self.lock();
        for item in items {
            any = true;
            self.push_locked(&mut s, item, &mut lost, &mut on_lost);
        }
        if any {
            self.depth_changed(&s);
        }
        drop(s);
        if any {
            self.readable.notify_one();
        }
        lost
    }

    fn push_locked(
        &self,
        s: &mut State<T>,
        item: T,
        lost: &mut Pushed,
        on_lost: &mut impl FnMut(&T, DropReason),
    ) {
        let events = item.events();
        s.pushed += events;
        if let Err((item, reason)) = self.admit(s, item, lost, on_lost) {
            on_lost(&item, reason);
            lost.add(events);
            self.count_drop(s, reason, 1, events);
        }
    }

    /// Queues `item`, waiting for room under [`WhenFull::Block`] (other policies never wait).
    /// Returns what was lost: nothing, unless the buffer closed or `item` is refused as too
    /// large.
    pub async fn push_wait(&self, item: T) -> Pushed {
        let events = item.events();
        let mut lost = Pushed::default();
        let mut item = item;
        let mut counted = false;
        loop {
            let room = self.writable.notified();
            {
                let mut s = self.lock();
                if !counted {
                    s.pushed += events;
                    counted = true;
                }
                match self.admit(&mut s, item, &mut lost, &mut |_, _| {}) {
                    Ok(()) => {
                        self.depth_changed(&s);
                        drop(s);
                        self.readable.notify_one();
                        return lost;
                    }
                    Err((back, DropReason::Full)) if self.config.when_full == WhenFull::Block => {
                        item = back;
                    }
                    Err((_, reason)) => {
                        lost.add(events);
                        self.count_drop(&mut s, reason, 1, events);
                        return lost;
                    }
                }
            }
            room.await;
        }
    }

    /// Moves entries into `out`, oldest first, up to `max` (always at least one when any is
    /// queued, whatever its size, so an oversized entry still moves), and hands over the gap.
    pub fn drain_into(&self, out: &mut Vec<T>, max: Limits) -> Drained {
        let mut s = self.lock();
        let mut d = Drained {
            gap: std::mem::take(&mut s.unreported),
            ..Drained::default()
        };
        if s.queue.is_empty() {
            s.behind_since = None;
            return d;
        }
        while let Some(front) = s.queue.front() {
            let (events, bytes) = (front.events(), front.bytes());
            let within = d.items < max.items
                && d.events.saturating_add(events) <= max.events
                && d.bytes.saturating_add(bytes) <= max.bytes;
            if d.items > 0 && !within {
                break;
            }
            let Some(item) = s.queue.pop_front() else {
                break;
            };
            out.push(item);
            d.items += 1;
            d.events += events;
            d.bytes += bytes;
        }
        s.depth.items -= d.items;
        s.depth.events -= d.events;
        s.depth.bytes -= d.bytes;
        s.popped += d.events;
        self.depth_changed(&s);
        drop(s);
        self.room_made();
        d
    }

    /// Moves everything queued into `out` (swapping storage when `out` is empty, so a busy
    /// consumer pays neither a copy nor an allocation), and hands over the gap.
    pub fn swap_all(&self, out: &mut VecDeque<T>) -> Drained {
        let mut s = self.lock();
        let d = Drained {
            items: s.depth.items,
            events: s.depth.events,
            bytes: s.depth.bytes,
            gap: std::mem::take(&mut s.unreported),
        };
        if s.queue.is_empty() {
            s.behind_since = None;
            return d;
        }
        if out.is_empty() {
            std::mem::swap(out, &mut s.queue);
        } else {
            out.append(&mut s.queue);
        }
        s.depth = Depth::default();
        s.popped += d.events;
        self.depth_changed(&s);
        drop(s);
        self.room_made();
        d
    }

    /// Takes the oldest entry, if any (the gap stays for the next batch take).
    pub fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        let Some(item) = s.queue.pop_front() else {
            s.behind_since = None;
            return None;
        };
        let events = item.events();
        s.depth.items -= 1;
        s.depth.events -= events;
        s.depth.bytes -= item.bytes();
        s.popped += events;
        self.depth_changed(&s);
        drop(s);
        self.room_made();
        Some(item)
    }

    fn room_made(&self) {
        if self.config.when_full == WhenFull::Block {
            self.writable.notify_waiters();
        }
    }

    /// Waits for entries and moves up to `max` of them into `out`; `None` once the buffer is
    /// closed and empty.
    pub async fn recv_into(&self, out: &mut Vec<T>, max: Limits) -> Option<Drained> {
        loop {
            // Created before the check: a push between the check and the await still wakes us
            // (`notify_one` leaves a permit).
            let pushed = self.readable.notified();
            let d = self.drain_into(out, max);
            if d.items > 0 {
                return Some(d);
            }
            if d.gap > 0 {
                // Not lost: hand it back for the take that has entries to put it in front of.
                self.restore_gap(d.gap);
            }
            if self.lock().closed {
                return None;
            }
            pushed.await;
        }
    }

    /// Completes when something was pushed (or the buffer closed) since the last call; a push
    /// before the first call counts.
    pub async fn readable(&self) {
        self.readable.notified().await;
    }

    /// Gives back a gap taken by a take that had no entries to put it in front of.
    pub fn restore_gap(&self, events: u64) {
        self.lock().unreported += events;
    }

    /// Events lost to overflow not yet handed over, taken now (for a final gap marker).
    pub fn take_gap(&self) -> u64 {
        std::mem::take(&mut self.lock().unreported)
    }

    /// When the current run of losses began, if any; cleared when a take finds the buffer
    /// empty. A consumer behind for too long may be cut off by its owner.
    pub fn behind_since(&self) -> Option<Instant> {
        self.lock().behind_since
    }

    /// Refuses further pushes (counted as [`DropReason::Closed`]); what is queued can still be
    /// taken. Wakes the consumer and every waiting producer.
    pub fn close(&self) {
        self.lock().closed = true;
        self.readable.notify_waiters();
        self.readable.notify_one();
        self.writable.notify_waiters();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Closes and throws away what is queued, counted as [`DropReason::Closed`]; returns it.
    pub fn close_and_discard(&self) -> Pushed {
        // Closed under the same lock as the discard, so no push can slip in between and be
        // neither delivered nor counted.
        let lost = self.discard_as(DropReason::Closed, true, |_| {});
        self.readable.notify_waiters();
        self.readable.notify_one();
        self.writable.notify_waiters();
        lost
    }

    /// Throws away what is queued, counted as [`DropReason::Discarded`] (the owner reports its
    /// own reason); `on_lost` sees each entry. Returns what was thrown away.
    pub fn discard(&self, on_lost: impl FnMut(&T)) -> Pushed {
        self.discard_as(DropReason::Discarded, false, on_lost)
    }

    fn discard_as(&self, reason: DropReason, close: bool, mut on_lost: impl FnMut(&T)) -> Pushed {
        let mut s = self.lock();
        s.closed |= close;
        let lost = Pushed {
            items: s.depth.items,
            events: s.depth.events,
        };
        for item in &s.queue {
            on_lost(item);
        }
        s.queue.clear();
        s.depth = Depth::default();
        self.count_drop(&mut s, reason, lost.items, lost.events);
        self.depth_changed(&s);
        drop(s);
        self.room_made();
        lost
    }

    /// Applies `f` to the oldest entry, if any (e.g. to read its enqueue time).
    pub fn peek_front<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        self.lock().queue.front().map(f)
    }

    /// What is queued now.
    pub fn depth(&self) -> Depth {
        self.lock().depth
    }

    /// Events queued now, without taking the lock.
    pub fn depth_events(&self) -> u64 {
        self.depth_events.load(Ordering::Relaxed)
    }

    /// How full the buffer is, in thousandths of its tightest limit (entries, events or bytes),
    /// without taking the lock: what a [`crate::FairShare`] owner reads as pressure.
    pub fn fill_permille(&self) -> u64 {
        fn permille(depth: u64, limit: u64) -> u64 {
            if limit == u64::MAX || limit == 0 {
                return 0;
            }
            depth.saturating_mul(1000) / limit
        }
        let l = &self.config.limits;
        let items = permille(self.depth_items.load(Ordering::Relaxed), l.items as u64);
        let events = permille(self.depth_events.load(Ordering::Relaxed), l.events);
        let bytes = permille(self.depth_bytes.load(Ordering::Relaxed), l.bytes as u64);
        items.max(events).max(bytes)
    }

    /// The buffer's own ledger.
    pub fn stats(&self) -> Stats {
        let s = self.lock();
        Stats {
            pushed: s.pushed,
            popped: s.popped,
            dropped: s.dropped,
            depth: s.depth,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// An entry carrying `events` events in `bytes` bytes, tagged for order checks.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct E {
        id: u32,
        events: u64,
        bytes: usize,
    }

    impl Weigh for E {
        fn events(&self) -> u64 {
            self.events
        }
        fn bytes(&self) -> usize {
            self.bytes
        }
    }

    fn e(id: u32, events: u64, bytes: usize) -> E {
        E { id, events, bytes }
    }

    fn ids(v: &[E]) -> Vec<u32> {
        v.iter().map(|e| e.id).collect()
    }

    #[test]
    fn drop_oldest_evicts_by_events_and_reports_a_gap_once() {
        let b = Buffer::new(BufferConfig::drop_oldest(Limits::UNBOUNDED.events(10)));
        b.push(e(1, 4, 1));
        b.push(e(2, 4, 1));
        assert_eq!(
            b.push(e(3, 4, 1)),
            Pushed {
                items: 1,
                events: 4
            }
        );
        let mut out = Vec::new();
        let d = b.drain_into(&mut out, Limits::UNBOUNDED);
        assert_eq!((ids(&out), d.events, d.gap), (vec![2, 3], 8, 4));
        assert_eq!(b.drain_into(&mut out, Limits::UNBOUNDED).gap, 0);
        assert_eq!(b.stats().dropped(DropReason::Evicted), 4);
        assert!(b.stats().balanced());
    }

    #[test]
    fn an_oversized_newest_entry_is_kept_alone_or_refused() {
        let keep = Buffer::new(BufferConfig::drop_oldest(Limits::UNBOUNDED.bytes(10)));
        keep.push(e(1, 1, 4));
        keep.push(e(2, 1, 30));
        assert_eq!(
            keep.depth(),
            Depth {
                items: 1,
                events: 1,
                bytes: 30
            }
        );
        let refuse = Buffer::new(BufferConfig {
            oversize: Oversize::Refuse,
            ..BufferConfig::drop_oldest(Limits::UNBOUNDED.bytes(10))
        });
        refuse.push(e(1, 1, 4));
        let mut reasons = Vec::new();
        refuse.push_with(e(2, 1, 30), |x, r| reasons.push((x.id, r)));
        assert_eq!(reasons, [(2, DropReason::TooLarge)]);
        assert_eq!(
            refuse.depth().items,
            1,
            "the queue was not emptied for a giant"
        );
    }

    #[test]
    fn drop_newest_refuses_and_keeps_what_is_queued() {
        let b = Buffer::new(BufferConfig {
            when_full: WhenFull::DropNewest,
            ..BufferConfig::drop_oldest(Limits::UNBOUNDED.items(2))
        });
        for i in 0..4 {
            b.push(e(i, 1, 1));
        }
        let mut out = Vec::new();
        let d = b.drain_into(&mut out, Limits::UNBOUNDED);
        assert_eq!((ids(&out), d.gap), (vec![0, 1], 2));
        assert_eq!(b.stats().dropped(DropReason::Full), 2);
    }

    #[test]
    fn drains_respect_batch_limits_but_always_move_one() {
        let b = Buffer::new(BufferConfig::drop_oldest(Limits::UNBOUNDED));
        b.push_iter([e(0, 3, 10), e(1, 3, 10), e(2, 9, 10), e(3, 1, 500)]);
        let mut out = Vec::new();
        assert_eq!(b.drain_into(&mut out, Limits::UNBOUNDED.events(5)).items, 1);
        assert_eq!(b.drain_into(&mut out, Limits::UNBOUNDED.events(5)).items, 1);
        assert_eq!(b.drain_into(&mut out, Limits::UNBOUNDED.events(5)).items, 1);
        assert_eq!(
            b.drain_into(&mut out, Limits::UNBOUNDED.bytes(100)).items,
            1
        );
        assert_eq!(ids(&out), [0, 1, 2, 3]);
    }

    #[test]
    fn closed_buffers_count_late_pushes_and_discards() {
        let b = Buffer::new(BufferConfig::drop_oldest(Limits::UNBOUNDED));
        b.push(e(0, 3, 1));
        assert_eq!(b.close_and_discard().events, 3);
        b.push(e(1, 2, 1));
        assert_eq!(b.stats().dropped(DropReason::Closed), 5);
        assert_eq!(b.depth(), Depth::default());
        assert!(b.stats().balanced());
    }

    #[test]
    fn behind_since_runs_from_the_first_loss_until_a_take_finds_it_empty() {
        let b = Buffer::new(BufferConfig::drop_oldest(Limits::UNBOUNDED.items(1)));
        b.push(e(0, 1, 1));
        assert!(b.behind_since().is_none());
        b.push(e(1, 1, 1));
        assert!(b.behind_since().is_some());
        let mut out = Vec::new();
        b.drain_into(&mut out, Limits::UNBOUNDED);
        assert!(
            b.behind_since().is_some(),
            "caught up only when found empty"
        );
        b.drain_into(&mut out, Limits::UNBOUNDED);
        assert!(b.behind_since().is_none());
    }

    #[tokio::test]
    async fn recv_wakes_on_push_and_ends_after_close() {
        let b = Arc::new(Buffer::new(BufferConfig::drop_oldest(Limits::UNBOUNDED)));
        let taker = tokio::spawn({
            let b = b.clone();
            async move {
                let mut out = Vec::new();
                while b.recv_into(&mut out, Limits::UNBOUNDED).await.is_some() {}
                ids(&out)
            }
        });
        tokio::task::yield_now().await;
        b.push(e(7, 1, 1));
        tokio::task::yield_now().await;
        b.push(e(8, 1, 1));
        b.close();
        let got = tokio::time::timeout(Duration::from_secs(5), taker).await;
        assert_eq!(got.unwrap().unwrap(), [7, 8]);
    }

    #[tokio::test]
    async fn block_waits_for_room_instead_of_dropping() {
        let b = Arc::new(Buffer::new(BufferConfig {
            when_full: WhenFull::Block,
            ..BufferConfig::drop_oldest(Limits::UNBOUNDED.items(1))
        }));
        b.push_wait(e(0, 1, 1)).await;
        let producer = tokio::spawn({
            let b = b.clone();
            async move { b.push_wait(e(1, 1, 1)).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(b.depth().items, 1, "the second push is waiting");
        let mut out = Vec::new();
        b.drain_into(&mut out, Limits::UNBOUNDED);
        let lost = tokio::time::timeout(Duration::from_secs(5), producer).await;
        assert_eq!(lost.unwrap().unwrap(), Pushed::default());
        b.drain_into(&mut out, Limits::UNBOUNDED);
        assert_eq!(ids(&out), [0, 1]);
        assert_eq!(b.stats().dropped.iter().sum::<u64>(), 0);
    }

    #[tokio::test]
    async fn a_blocked_producer_is_released_by_close_and_counted() {
        let b = Arc::new(Buffer::new(BufferConfig {
            when_full: WhenFull::Block,
            ..BufferConfig::drop_oldest(Limits::UNBOUNDED.items(1))
        }));
        b.push(e(0, 1, 1));
        let producer = tokio::spawn({
            let b = b.clone();
            async move { b.push_wait(e(1, 1, 1)).await }
        });
        tokio::task::yield_now().await;
        b.close();
        let lost = tokio::time::timeout(Duration::from_secs(5), producer).await;
        assert_eq!(lost.unwrap().unwrap().items, 1);
        assert_eq!(b.stats().dropped(DropReason::Closed), 1);
        assert!(b.stats().balanced());
    }

    #[test]
    fn zero_limits_are_refused_with_the_field_named() {
        let err = BufferConfig::drop_oldest(Limits::UNBOUNDED.bytes(0))
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("bytes"), "{err}");
    }
}
