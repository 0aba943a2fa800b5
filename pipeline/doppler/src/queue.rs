//! One subscriber's egress queue: encoded batch chunks built by the router, waiting for the
//! subscriber's stream to take them.
//!
//! Where it sits: router → [`SubscriptionQueue::push`] (one lock per incoming batch) → the
//! subscriber's gRPC stream → [`SubscriptionQueue::next`].
//!
//! Invariants:
//! - Bounded by envelopes and bytes. When a push overflows it, the oldest chunks are dropped, so
//!   a slow subscriber loses its oldest data and never slows the router or anyone else; the
//!   chunk just pushed is never dropped.
//! - Every dropped envelope is counted (`doppler.dropped{reason="slow_subscriber"}` and the
//!   queue's own total), and the next batch the subscriber receives starts with a gap marker
//!   saying how many it lost, so the loss is visible in-band, where it happened.
//! - The stream is fed the moment data is queued: no timer stands between a push and a send.
//! - Fair between sources (`subscription_fair_share`, on by default): a subscriber following
//!   many sources (a nozzle, `hydrant top`) that falls behind would lose a quiet app's lines as
//!   often as the flood's. With a [`FairShare`] ledger, the router asks [`SubscriptionQueue::admit`]
//!   for each envelope before copying it into a chunk: once the queue is half full, a source
//!   holding more than its share of it is refused (`doppler.dropped{reason=
//!   "subscriber_fair_share"}`, by source in `doppler.subscriber_dropped_by_source`), so the flood
//!   is held to its share and the quiet sources lose nothing. Refused envelopes join the gap the
//!   next take reports: the marker stays the exact count the subscriber lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hydrant_buffer::{
    Buffer, BufferConfig, DropReason, FairConfig, FairShare, KeyHasher, Limits, Observer, Share,
    Weigh,
};
use hydrant_emitter::{Counter, SourceCounters};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a fair queue hands its per-source drop counts to the metrics.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A run of encoded envelopes forming a valid `EnvelopeBatch` on its own; chunks concatenate into
/// a larger valid batch.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    /// The encoded batch.
    pub bytes: Bytes,
    /// Envelopes in it.
    pub count: usize,
    /// What its envelopes are charged to in a fair queue's ledger (empty when not fair). The
    /// queue gives them back when the chunk leaves it; a taken chunk holds none.
    pub shares: Vec<Share>,
}

impl Weigh for Chunk {
    #[inline]
    fn events(&self) -> u64 {
        self.count as u64
    }
    #[inline]
    fn bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// Limits on what one queue holds and on one message taken from it.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Envelopes queued before the oldest are dropped.
    pub max_envelopes: usize,
    /// Bytes queued before the oldest are dropped.
    pub max_bytes: usize,
    /// Envelopes per outgoing message.
    pub batch_envelopes: usize,
    /// Bytes per outgoing message.
    pub batch_bytes: usize,
}

/// What [`SubscriptionQueue::next`] hands the stream.
#[derive(Debug, Default)]
pub struct Taken {
    /// Envelopes dropped since the previous take; when non-zero, a gap marker must precede
    /// `chunks`.
    pub gap: u64,
    /// Chunks to send, within the message limits (the first one always, whatever its size).
    pub chunks: Vec<Chunk>,
    /// Envelopes in `chunks`.
    pub count: usize,
}

/// Counts the queue's drops under the doppler's metric names.
#[derive(Debug)]
struct Report {
    dropped_slow: Counter,
    dropped_closed: Counter,
}

impl Observer for Report {
    fn dropped(&self, reason: DropReason, _items: usize, events: u64) {
        match reason {
            DropReason::Closed | DropReason::Discarded => self.dropped_closed.add(events),
            DropReason::Evicted | DropReason::Full | DropReason::TooLarge => {
                self.dropped_slow.add(events);
            }
        }
    }
}

/// Where a fair queue counts its drops.
#[derive(Debug, Clone)]
pub struct FairCounters {
    /// Envelopes refused for holding more than their source's share of the queue.
    pub refused: Counter,
    /// Fair refusals and evictions from fair queues, by source.
    pub by_source: Arc<SourceCounters>,
}

/// What [`SubscriptionQueue::admit`] decided for one envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Queue it: the queue is not fair.
    Free,
    /// Queue it, charged to this share (add it to the chunk's `shares`).
    Charged(Share),
    /// Do not queue it: its source is over its share (already counted, and owed in the gap).
    Refused,
}

#[derive(Debug)]
struct Fair {
    ledger: FairShare,
    keys: KeyHasher,
    counters: FairCounters,
    /// Refused envelopes not yet reported in a gap.
    unreported: AtomicU64,
    next_sweep: Mutex<Instant>,
}

/// A bounded, drop-oldest queue of encoded chunks for one subscriber.
#[derive(Debug)]
pub struct SubscriptionQueue {
    buffer: Buffer<Chunk, Report>,
    /// One outgoing message's worth.
    take: Limits,
    fair: Option<Fair>,
}

impl SubscriptionQueue {
    /// An empty queue; drops are added to `dropped_slow` (overflow) and `dropped_closed`
    /// (envelopes still queued, or arriving, after the subscriber went away).
    #[must_use]
    pub fn new(limits: QueueLimits, dropped_slow: Counter, dropped_closed: Counter) -> Self {
        let bounds = Limits::UNBOUNDED
            .events(limits.max_envelopes as u64)
            .bytes(limits.max_bytes);
        Self {
            buffer: Buffer::with_observer(
                BufferConfig::drop_oldest(bounds),
                Report {
                    dropped_slow,
                    dropped_closed,
                },
            ),
            take: Limits::UNBOUNDED
                .events(limits.batch_envelopes as u64)
                .bytes(limits.batch_bytes),
            fair: None,
        }
    }

    /// The same queue, fair between the sources it holds (see the module docs).
    #[must_use]
    pub fn fair(mut self, counters: FairCounters) -> Self {
        self.fair = Some(Fair {
            ledger: FairShare::new(FairConfig::default()),
            keys: KeyHasher::default(),
            counters,
            unreported: AtomicU64::new(0),
            next_sweep: Mutex::new(Instant::now() + SWEEP_EVERY),
        });
        self
    }

    /// Whether an envelope of `source` costing `bytes` may join this queue's next chunk.
    #[inline]
    pub fn admit(&self, source: &[u8], bytes: usize) -> Admit {
        let Some(fair) = &self.fair else {
            return Admit::Free;
        };
        let name = std::str::from_utf8(source).unwrap_or_default();
        let cost = u32::try_from(bytes).unwrap_or(u32::MAX);
        let fill = self.buffer.fill_permille();
        match fair.ledger.admit(fair.keys.key(source), name, cost, fill) {
            Some(share) => Admit::Charged(share),
            None => {
                fair.counters.refused.add(1);
                fair.unreported.fetch_add(1, Ordering::Relaxed);
                Admit::Refused
            }
        }
    }

    /// Appends `chunks` (draining the vector) under one lock, dropping the oldest queued chunks
    /// if the queue overflows, and wakes the stream.
    pub fn push(&self, chunks: &mut Vec<Chunk>) {
        if chunks.is_empty() {
            return;
        }
        let Some(fair) = &self.fair else {
            self.buffer.push_iter(chunks.drain(..));
            return;
        };
        for chunk in chunks.drain(..) {
            self.buffer.push_with(chunk, |lost, reason| match reason {
                DropReason::Evicted | DropReason::Full | DropReason::TooLarge => {
                    fair.ledger.evicted(&lost.shares);
                }
                // Counted as closed by the observer, not as a fairness loss.
                DropReason::Closed | DropReason::Discarded => fair.ledger.release(&lost.shares),
            });
        }
    }

    /// Takes what is queued, up to one message's worth, without waiting.
    pub fn try_take(&self) -> Option<Taken> {
        let mut chunks = Vec::new();
        let drained = self.buffer.drain_into(&mut chunks, self.take);
        if drained.items == 0 {
            // Drop-oldest keeps the newest chunk, so a gap never outlives the data behind it;
            // hand any back all the same rather than lose it.
            if drained.gap > 0 {
                self.buffer.restore_gap(drained.gap);
            }
            return None;
        }
        let mut gap = drained.gap;
        if let Some(fair) = &self.fair {
            gap += fair.unreported.swap(0, Ordering::Relaxed);
            for chunk in &mut chunks {
                fair.ledger.release(&std::mem::take(&mut chunk.shares));
            }
            let now = Instant::now();
            let due = {
                let mut next = fair
                    .next_sweep
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let due = now >= *next;
                if due {
                    *next = now + SWEEP_EVERY;
                }
                due
            };
            if due {
                Self::sweep(fair, now);
            }
        }
        Some(Taken {
            gap,
            chunks,
            count: drained.events as usize,
        })
    }

    fn sweep(fair: &Fair, now: Instant) {
        // The subscriber learns through its gap marker; sources are told at ingress.
        fair.ledger.sweep(
            now,
            |d| fair.counters.by_source.add(d.source, d.dropped),
            |_| {},
        );
    }

    /// Waits for data and takes up to one message's worth; `None` once `shutdown` fires.
    pub async fn next(&self, shutdown: &CancellationToken) -> Option<Taken> {
        loop {
            if let Some(taken) = self.try_take() {
                return Some(taken);
            }
            // A push between `try_take` and here still wakes us: the buffer's wake-up leaves a
            // permit when nobody waits.
            tokio::select! {
                () = self.buffer.readable() => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }

    /// Marks the subscriber gone: what is queued, and whatever the router still routes here
    /// before it learns, is counted as dropped.
    pub fn close(&self) {
        let Some(fair) = &self.fair else {
            self.buffer.close_and_discard();
            return;
        };
        // Closed first, so nothing pushed from now on can be left queued and uncounted.
        self.buffer.close();
        let mut shares = Vec::new();
        self.buffer.discard(|c| shares.extend_from_slice(&c.shares));
        fair.ledger.release(&shares);
        Self::sweep(fair, Instant::now());
    }

    /// The fairness ledger's totals, when the queue is fair.
    #[must_use]
    pub fn fair_stats(&self) -> Option<hydrant_buffer::FairStats> {
        self.fair.as_ref().map(|f| f.ledger.stats())
    }

    /// Envelopes this queue dropped for being full, since it was created.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.buffer.stats().dropped(DropReason::Evicted)
    }

    /// Envelopes waiting now.
    #[must_use]
    pub fn depth(&self) -> usize {
        self.buffer.depth_events() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_envelopes: usize) -> QueueLimits {
        QueueLimits {
            max_envelopes,
            max_bytes: usize::MAX,
            batch_envelopes: 100,
            batch_bytes: 1 << 20,
        }
    }

    fn chunk(count: usize) -> Chunk {
        Chunk {
            bytes: Bytes::from(vec![0u8; count * 10]),
            count,
            shares: Vec::new(),
        }
    }

    #[test]
    fn overflow_drops_oldest_and_reports_a_gap_once() {
        let slow = Counter::default();
        let q = SubscriptionQueue::new(limits(10), slow.clone(), Counter::default());
        q.push(&mut vec![chunk(4), chunk(4)]);
        q.push(&mut vec![chunk(4)]);
        assert_eq!(slow.get(), 4);
        assert_eq!(q.dropped(), 4);
        let taken = q.try_take().unwrap();
        assert_eq!((taken.gap, taken.count), (4, 8));
        assert!(q.try_take().is_none());
        q.push(&mut vec![chunk(1)]);
        assert_eq!(q.try_take().unwrap().gap, 0);
    }

    #[test]
    fn take_respects_message_limits_but_always_makes_progress() {
        let q = SubscriptionQueue::new(
            QueueLimits {
                batch_envelopes: 5,
                ..limits(1000)
            },
            Counter::default(),
            Counter::default(),
        );
        q.push(&mut vec![chunk(3), chunk(3), chunk(9)]);
        assert_eq!(q.try_take().unwrap().count, 3);
        assert_eq!(q.try_take().unwrap().count, 3);
        assert_eq!(q.try_take().unwrap().count, 9);
    }

    #[test]
    fn closed_queue_counts_what_it_held_and_what_arrives_later() {
        let closed = Counter::default();
        let q = SubscriptionQueue::new(limits(100), Counter::default(), closed.clone());
        q.push(&mut vec![chunk(3)]);
        q.close();
        q.push(&mut vec![chunk(2)]);
        assert_eq!(closed.get(), 5);
        assert_eq!(q.depth(), 0);
    }

    #[tokio::test]
    async fn next_wakes_on_push_and_ends_on_shutdown() {
        let q = std::sync::Arc::new(SubscriptionQueue::new(
            limits(100),
            Counter::default(),
            Counter::default(),
        ));
        let shutdown = CancellationToken::new();
        let waiter = {
            let (q, s) = (q.clone(), shutdown.clone());
            tokio::spawn(async move { q.next(&s).await.map(|t| t.count) })
        };
        tokio::task::yield_now().await;
        q.push(&mut vec![chunk(2)]);
        assert_eq!(waiter.await.unwrap(), Some(2));
        shutdown.cancel();
        assert!(q.next(&shutdown).await.is_none());
    }
}
