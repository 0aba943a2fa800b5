//! One consumer's queue: bounded by envelopes and bytes, dropping the oldest on overflow.
//!
//! The fan-out pushes into an outbox and never waits: a full outbox makes room by dropping its
//! oldest envelopes, counts them (`dropped{reason=slow_consumer}`) and remembers how many it has
//! not yet told the consumer about, so the writer can put a gap marker in front of the next data.
//! Envelopes are `Bytes` slices of the upstream batch, so queueing costs a reference count, not a
//! copy. The queue is a drop-oldest `hydrant_buffer::Buffer` bounded by envelopes and bytes.
//!
//! "Behind" starts at the first drop and ends only when the writer finds the queue empty; a
//! consumer behind for longer than the slow-consumer timeout is closed by its writer. So a
//! consumer that falls behind in a burst and catches up is never cut off, while one that keeps
//! losing data without ever draining is.

use hydrant_buffer::{Buffer, BufferConfig, DropReason, Limits as Bounds, Observer};
use hydrant_emitter::Counter;
use hydrant_envelope::wire::Kind;
use tokio::time::Instant;

use crate::position::Item;

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

/// One consumer's bounded queue.
#[derive(Debug)]
pub(crate) struct Outbox {
    buffer: Buffer<Item, Report>,
    kinds: KindMask,
}

impl Outbox {
    /// An outbox counting overflow in `dropped` and envelopes routed to it after
    /// [`Outbox::close`] in `closed`.
    pub(crate) fn new(limits: Limits, kinds: KindMask, dropped: Counter, closed: Counter) -> Self {
        let bounds = Bounds::UNBOUNDED
            .items(limits.max_envelopes)
            .bytes(limits.max_bytes);
        Self {
            buffer: Buffer::with_observer(
                BufferConfig::drop_oldest(bounds),
                Report { dropped, closed },
            ),
            kinds,
        }
    }

    pub(crate) fn kinds(&self) -> KindMask {
        self.kinds
    }

    /// Appends envelopes, dropping the oldest queued ones to stay within the limits (always
    /// keeping the newest, even one larger than the byte limit on its own). Never blocks beyond
    /// the short lock, which no one holds across an await.
    pub(crate) fn push_many(&self, envelopes: impl IntoIterator<Item = Item>) {
        self.buffer.push_iter(envelopes);
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
        Taken {
            gap: self.buffer.drain_into(out, max).gap,
        }
    }

    /// Hands over the count of drops not yet reported (for a final gap marker).
    pub(crate) fn take_unreported(&self) -> u64 {
        self.buffer.take_gap()
    }

    /// When the current run of drops began, if the consumer is behind.
    pub(crate) fn behind_since(&self) -> Option<Instant> {
        self.buffer.behind_since()
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
        self.buffer.discard(|_| {}).events
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
            },
            KindMask::ALL,
            Counter::default(),
            Counter::default(),
        )
    }

    fn envs(n: usize, size: usize) -> Vec<Item> {
        (0..n)
            .map(|i| Item::new(Bytes::from(vec![i as u8; size]), At::NONE))
            .collect()
    }

    #[test]
    fn overflow_drops_the_oldest_and_reports_a_gap_once() {
        let o = outbox(3, 1 << 20);
        let e = envs(5, 10);
        o.push_many(e.clone());
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
        o.push_many(envs(20, 30));
        assert_eq!(o.depth(), (3, 90));
        assert_eq!(o.buffer.observer().dropped.get(), 17);
        // One envelope larger than the whole limit still gets through, alone.
        o.push_many(envs(1, 500));
        assert_eq!(o.depth(), (1, 500));
    }

    #[test]
    fn take_respects_frame_limits_but_always_moves_one() {
        let o = outbox(1000, 1 << 20);
        o.push_many(envs(10, 100));
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
        o.push_many(envs(4, 8));
        assert_eq!(o.close(), 4);
        assert_eq!(
            o.buffer.observer().closed.get(),
            0,
            "leftovers are the caller's to count"
        );
        o.push_many(envs(3, 8));
        assert_eq!(o.depth(), (0, 0));
        assert_eq!(
            o.buffer.observer().closed.get(),
            3,
            "late envelopes are counted once"
        );
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
