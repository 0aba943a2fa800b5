//! [`DestinationQueue`]: the bounded queue in front of one destination.
//!
//! Flow: nozzle reader (`push`, never waits) → queue (a `hydrant_buffer::Buffer`, drop-oldest,
//! refusing oversized entries) → the destination's sender (`next_batch`).
//!
//! Invariants:
//! - it never holds more than `max_items` entries or `max_bytes` bytes: a push that would
//!   overflow evicts the oldest entries first (the newest logs are the ones a developer is
//!   looking for), and every eviction is counted under `dropped{reason="queue_full"}`;
//! - an entry larger than the whole byte budget is refused (`reason="too_large"`) instead of
//!   emptying the queue for it;
//! - pushing never blocks the reader, so a slow destination cannot slow the firehose or any
//!   other destination;
//! - with a [`Watermark`] (a nozzle that keeps its cursor), every entry has a place in push
//!   order, and the watermark's resolved count never passes an entry still queued, still in a
//!   sender's hands, or thrown away at shutdown: only delivered entries, and entries lost and
//!   counted while running (evicted, too large, refused by the destination), are behind it.

use std::sync::Arc;
use std::time::Duration;

use hydrant_buffer::{Buffer, BufferConfig, Depth, DropReason, Limits, Observer, Oversize, Weigh};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::watermark::{Ticket, Watermark};
use crate::{Error, NozzleMetrics};

/// Size limits of one destination's queue and of the batches taken from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueLimits {
    /// Most entries held. Default 10000 (Cloud Foundry's per-drain diode).
    pub max_items: usize,
    /// Most bytes held. Default 16 MiB.
    pub max_bytes: usize,
    /// Most entries per batch handed to the sender. Default 1000.
    pub batch_items: usize,
    /// Most bytes per batch (a single larger entry still goes alone). Default 256 KiB.
    pub batch_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_items: 10_000,
            max_bytes: 16 * 1024 * 1024,
            batch_items: 1_000,
            batch_bytes: 256 * 1024,
        }
    }
}

impl QueueLimits {
    /// Checks the section; `prefix` is its dotted path in the nozzle's config.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field.
    pub fn validate(&self, prefix: &str) -> Result<(), Error> {
        for (name, value) in [
            ("max_items", self.max_items),
            ("max_bytes", self.max_bytes),
            ("batch_items", self.batch_items),
            ("batch_bytes", self.batch_bytes),
        ] {
            if value == 0 {
                return Err(Error::Config {
                    field: format!("{prefix}.{name}"),
                    message: "must be at least 1".to_owned(),
                });
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Entry<T> {
    item: T,
    bytes: usize,
    queued_at: Instant,
}

impl<T> Weigh for Entry<T> {
    #[inline]
    fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The nozzle's name for a buffer's drop reason (`None`: the caller counts it under its own).
const fn reason(reason: DropReason) -> Option<&'static str> {
    match reason {
        DropReason::Evicted | DropReason::Full => Some("queue_full"),
        DropReason::TooLarge => Some("too_large"),
        DropReason::Closed => Some("shutdown"),
        DropReason::Discarded => None,
    }
}

/// Reports drops and depth through the destination's [`NozzleMetrics`].
#[derive(Debug)]
struct Report(NozzleMetrics);

impl Observer for Report {
    fn dropped(&self, why: DropReason, items: usize, _events: u64) {
        if let Some(why) = reason(why) {
            self.0.dropped(why, items as u64);
        }
    }
    fn depth(&self, depth: Depth) {
        self.0.set_depth(depth.items, depth.bytes);
    }
}

/// A bounded, drop-oldest queue of `T` for one destination.
#[derive(Debug)]
pub struct DestinationQueue<T> {
    limits: QueueLimits,
    buffer: Buffer<Entry<T>, Report>,
    watermark: Option<Arc<Watermark>>,
}

impl<T> DestinationQueue<T> {
    /// An empty queue; drops and depth are reported through `metrics`.
    #[must_use]
    pub fn new(limits: QueueLimits, metrics: NozzleMetrics) -> Self {
        let config = BufferConfig {
            oversize: Oversize::Refuse,
            ..BufferConfig::drop_oldest(
                Limits::UNBOUNDED
                    .items(limits.max_items)
                    .bytes(limits.max_bytes),
            )
        };
        Self {
            limits,
            buffer: Buffer::with_observer(config, Report(metrics)),
            watermark: None,
        }
    }

    /// A queue whose entries are tracked by `watermark`, for a nozzle that keeps its cursor:
    /// senders take batches with [`next_tracked_batch`](Self::next_tracked_batch). The
    /// watermark's pace limit becomes half of `max_items`, so a reader that paces on it
    /// ([`crate::Keeper::pace`]) leaves the queue room for a whole frame and never evicts.
    #[must_use]
    pub fn tracked(limits: QueueLimits, metrics: NozzleMetrics, watermark: Arc<Watermark>) -> Self {
        watermark.set_pace_limit(limits.max_items as u64 / 2);
        Self {
            watermark: Some(watermark),
            ..Self::new(limits, metrics)
        }
    }

    /// A queue for a nozzle that keeps its cursor ([`tracked`](Self::tracked), with a
    /// watermark of its own) when `keeps_cursor`, else a plain one ([`new`](Self::new)): the
    /// one choice every nozzle makes from its `cursor_file`.
    #[must_use]
    pub fn for_cursor(limits: QueueLimits, metrics: NozzleMetrics, keeps_cursor: bool) -> Self {
        if keeps_cursor {
            Self::tracked(limits, metrics, Arc::new(Watermark::default()))
        } else {
            Self::new(limits, metrics)
        }
    }

    /// The watermark of a tracked queue.
    #[must_use]
    pub fn watermark(&self) -> Option<&Arc<Watermark>> {
        self.watermark.as_ref()
    }

    /// Queues `item`, which weighs `bytes`, evicting the oldest entries if needed. Returns how
    /// many entries were lost (evicted, or this one refused).
    pub fn push(&self, item: T, bytes: usize) -> u64 {
        self.push_with(item, bytes, |_, _| {})
    }

    /// [`push`](Self::push), and `lost` sees every entry lost on the way (evicted ones, or
    /// `item` itself when refused) with its reason, so a caller can say whose data it was.
    /// `lost` runs under the queue's lock: keep it short and never push from it.
    pub fn push_with(&self, item: T, bytes: usize, mut lost: impl FnMut(&T, &'static str)) -> u64 {
        let entry = Entry {
            item,
            bytes,
            queued_at: Instant::now(),
        };
        // Held across the push so positions follow the buffer's own order.
        let mut positions = self.watermark.as_deref().map(Watermark::positions);
        if let Some(positions) = positions.as_mut() {
            positions.pushed();
        }
        let pushed = self.buffer.push_with(entry, |e, why| {
            if let Some(positions) = positions.as_mut() {
                positions.lost(why);
            }
            if let Some(why) = reason(why) {
                lost(&e.item, why);
            }
        });
        pushed.items as u64
    }

    /// Waits for at least one entry and takes up to `batch_items` / `batch_bytes` of them,
    /// oldest first; `None` once the queue is closed and empty.
    pub async fn next_batch(&self) -> Option<Vec<T>> {
        loop {
            if let Some(batch) = self.try_batch() {
                return Some(batch);
            }
            if self.buffer.is_closed() {
                return None;
            }
            // A push or close after the checks above leaves a wake-up for this wait.
            self.buffer.readable().await;
        }
    }

    /// Takes a batch if anything is queued.
    pub fn try_batch(&self) -> Option<Vec<T>> {
        self.try_tracked_batch().map(|(batch, ticket)| {
            // An untracked caller: the batch counts as dealt with once taken.
            ticket.done();
            batch
        })
    }

    /// [`next_batch`](Self::next_batch) with the [`Ticket`] that holds the batch in flight
    /// until the sender marks it done (a plain ticket on an untracked queue).
    pub async fn next_tracked_batch(&self) -> Option<(Vec<T>, Ticket)> {
        loop {
            if let Some(batch) = self.try_tracked_batch() {
                return Some(batch);
            }
            if self.buffer.is_closed() {
                return None;
            }
            self.buffer.readable().await;
        }
    }

    /// [`try_batch`](Self::try_batch) with its [`Ticket`].
    pub fn try_tracked_batch(&self) -> Option<(Vec<T>, Ticket)> {
        let mut entries = Vec::new();
        let max = Limits::UNBOUNDED
            .items(self.limits.batch_items)
            .bytes(self.limits.batch_bytes);
        let ticket = {
            let mut positions = self.watermark.as_ref().map(|w| (w, w.positions()));
            self.buffer.drain_into(&mut entries, max);
            match positions.as_mut() {
                Some((watermark, positions)) => positions.taken(watermark, entries.len() as u64),
                None => Ticket::default(),
            }
        };
        let first = entries.first()?;
        self.buffer.observer().0.set_lag(first.queued_at.elapsed());
        Some((entries.into_iter().map(|e| e.item).collect(), ticket))
    }

    /// Stops taking entries; `next_batch` returns what is left, then `None`.
    pub fn close(&self) {
        self.buffer.close();
    }

    /// Throws everything queued away, counted under `reason`; returns how many.
    pub fn discard(&self, reason: &'static str) -> u64 {
        self.discard_with(reason, |_| {})
    }

    /// [`discard`](Self::discard), and `lost` sees every entry thrown away.
    pub fn discard_with(&self, reason: &'static str, mut lost: impl FnMut(&T)) -> u64 {
        let mut positions = self.watermark.as_deref().map(Watermark::positions);
        let n = self.buffer.discard(|e| lost(&e.item)).items as u64;
        if let Some(positions) = positions.as_mut() {
            positions.discarded(n);
        }
        drop(positions);
        if n > 0 {
            self.buffer.observer().0.dropped(reason, n);
        }
        n
    }

    /// Entries and bytes queued now.
    #[must_use]
    pub fn depth(&self) -> (usize, usize) {
        let d = self.buffer.depth();
        (d.items, d.bytes)
    }

    /// Age of the oldest queued entry (zero when empty).
    #[must_use]
    pub fn oldest_age(&self) -> Duration {
        self.buffer
            .peek_front(|e| e.queued_at.elapsed())
            .unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use hydrant_emitter::Registry;

    use super::{DestinationQueue, QueueLimits};
    use crate::NozzleMetrics;

    fn queue(max_items: usize, max_bytes: usize) -> (Registry, DestinationQueue<u32>) {
        let registry = Registry::new("nozzle-test", "0");
        let metrics = NozzleMetrics::new(&registry, "syslog://127.0.0.1:1");
        let limits = QueueLimits {
            max_items,
            max_bytes,
            batch_items: 3,
            batch_bytes: 100,
        };
        (registry, DestinationQueue::new(limits, metrics))
    }

    #[test]
    fn drops_oldest_by_count_and_counts_the_reason() {
        let (registry, q) = queue(3, 1_000);
        for i in 0..5 {
            q.push(i, 1);
        }
        assert_eq!(q.depth(), (3, 3));
        assert_eq!(q.try_batch().unwrap(), [2, 3, 4]);
        assert_eq!(
            registry.counter_sum("nozzle.dropped", &[("reason", "queue_full")]),
            2
        );
    }

    #[test]
    fn push_with_and_discard_with_show_what_was_lost() {
        let (_registry, q) = queue(2, 10);
        let mut lost = Vec::new();
        for i in 0..4 {
            q.push_with(i, 1, |item, reason| lost.push((*item, reason)));
        }
        q.push_with(9, 11, |item, reason| lost.push((*item, reason)));
        assert_eq!(
            lost,
            [(0, "queue_full"), (1, "queue_full"), (9, "too_large")]
        );
        let mut thrown = Vec::new();
        assert_eq!(q.discard_with("unbound", |item| thrown.push(*item)), 2);
        assert_eq!(thrown, [2, 3]);
        q.close();
        q.push_with(5, 1, |item, reason| lost.push((*item, reason)));
        assert_eq!(lost.last(), Some(&(5, "shutdown")));
    }

    #[test]
    fn drops_oldest_by_bytes_and_refuses_giants() {
        let (registry, q) = queue(100, 10);
        q.push(1, 4);
        q.push(2, 4);
        assert_eq!(q.push(3, 4), 1, "one eviction makes room");
        assert_eq!(q.depth(), (2, 8));
        assert_eq!(q.push(4, 11), 1);
        assert_eq!(
            registry.counter_sum("nozzle.dropped", &[("reason", "too_large")]),
            1
        );
        assert_eq!(q.try_batch().unwrap(), [2, 3]);
    }

    #[test]
    fn batches_respect_item_and_byte_limits() {
        let (_r, q) = queue(100, 10_000);
        for i in 0..5 {
            q.push(i, 10);
        }
        assert_eq!(q.try_batch().unwrap(), [0, 1, 2]);
        q.push(9, 95);
        assert_eq!(
            q.try_batch().unwrap(),
            [3, 4],
            "95 more bytes would pass 100"
        );
        assert_eq!(q.try_batch().unwrap(), [9]);
        assert!(q.try_batch().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn next_batch_waits_reports_lag_and_ends_after_close() {
        let (registry, q) = queue(100, 10_000);
        let q = Arc::new(q);
        q.push(7, 1);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(q.oldest_age(), Duration::from_secs(3));
        let taker = tokio::spawn({
            let q = Arc::clone(&q);
            async move {
                let mut got = Vec::new();
                while let Some(b) = q.next_batch().await {
                    got.extend(b);
                }
                got
            }
        });
        tokio::task::yield_now().await;
        q.push(8, 1);
        tokio::task::yield_now().await;
        q.close();
        assert_eq!(taker.await.unwrap(), [7, 8]);
        assert_eq!(q.push(1, 1), 1, "closed queues refuse");
        let text = registry.render_prometheus();
        assert!(text.contains("nozzle_lag_seconds"), "{text}");
    }

    #[test]
    fn the_watermark_stays_behind_every_entry_not_yet_dealt_with() {
        use crate::Progress as _;
        let registry = Registry::new("nozzle-test", "0");
        let metrics = NozzleMetrics::new(&registry, "otlp://127.0.0.1:1");
        let limits = QueueLimits {
            max_items: 4,
            max_bytes: 100,
            batch_items: 2,
            batch_bytes: 100,
        };
        let watermark = Arc::new(crate::Watermark::default());
        let q = DestinationQueue::tracked(limits, metrics, Arc::clone(&watermark));
        for i in 0..3 {
            q.push(i, 1);
        }
        assert_eq!((watermark.pushed(), watermark.resolved()), (3, 0));
        let (first, first_ticket) = q.try_tracked_batch().unwrap();
        let (second, second_ticket) = q.try_tracked_batch().unwrap();
        assert_eq!((first, second), (vec![0, 1], vec![2]));
        // The later batch finishing first does not pass the earlier one.
        second_ticket.done();
        assert_eq!(watermark.resolved(), 0);
        first_ticket.done();
        assert_eq!(watermark.resolved(), 3);
        // A giant refused at push takes no position; evictions resolve theirs.
        q.push(99, 1_000);
        for i in 3..9 {
            q.push(i, 1);
        }
        assert_eq!(watermark.pushed(), 9);
        assert_eq!(watermark.resolved(), 5, "3 and 4 were evicted and counted");
        // A batch whose sender was stopped, and a shutdown discard, hold the cursor back.
        let (held, ticket) = q.try_tracked_batch().unwrap();
        assert_eq!(held, [5, 6]);
        drop(ticket);
        assert_eq!(q.discard("shutdown"), 2);
        assert_eq!(watermark.resolved(), 5);
    }
}
