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

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use hydrant_emitter::Counter;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A run of encoded envelopes forming a valid `EnvelopeBatch` on its own; chunks concatenate into
/// a larger valid batch.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    /// The encoded batch.
    pub bytes: Bytes,
    /// Envelopes in it.
    pub count: usize,
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

#[derive(Debug, Default)]
struct Inner {
    chunks: VecDeque<Chunk>,
    envelopes: usize,
    bytes: usize,
    unreported: u64,
    dropped: u64,
    closed: bool,
}

/// A bounded, drop-oldest queue of encoded chunks for one subscriber.
#[derive(Debug)]
pub struct SubscriptionQueue {
    inner: Mutex<Inner>,
    ready: Notify,
    limits: QueueLimits,
    dropped_slow: Counter,
    dropped_closed: Counter,
}

impl SubscriptionQueue {
    /// An empty queue; drops are added to `dropped_slow` (overflow) and `dropped_closed`
    /// (envelopes still queued, or arriving, after the subscriber went away).
    #[must_use]
    pub fn new(limits: QueueLimits, dropped_slow: Counter, dropped_closed: Counter) -> Self {
        Self {
            inner: Mutex::default(),
            ready: Notify::new(),
            limits,
            dropped_slow,
            dropped_closed,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `chunks` (draining the vector) under one lock, dropping the oldest queued chunks
    /// if the queue overflows, and wakes the stream.
    pub fn push(&self, chunks: &mut Vec<Chunk>) {
        if chunks.is_empty() {
            return;
        }
        let mut inner = self.lock();
        if inner.closed {
            let n: usize = chunks.drain(..).map(|c| c.count).sum();
            self.dropped_closed.add(n as u64);
            return;
        }
        for chunk in chunks.drain(..) {
            inner.envelopes += chunk.count;
            inner.bytes += chunk.bytes.len();
            inner.chunks.push_back(chunk);
        }
        let mut dropped = 0u64;
        while (inner.envelopes > self.limits.max_envelopes || inner.bytes > self.limits.max_bytes)
            && inner.chunks.len() > 1
        {
            let Some(old) = inner.chunks.pop_front() else {
                break;
            };
            inner.envelopes -= old.count;
            inner.bytes -= old.bytes.len();
            dropped += old.count as u64;
        }
        if dropped > 0 {
            inner.unreported += dropped;
            inner.dropped += dropped;
            self.dropped_slow.add(dropped);
        }
        drop(inner);
        self.ready.notify_one();
    }

    /// Takes what is queued, up to one message's worth, without waiting.
    pub fn try_take(&self) -> Option<Taken> {
        let mut inner = self.lock();
        if inner.chunks.is_empty() {
            return None;
        }
        let mut taken = Taken {
            gap: std::mem::take(&mut inner.unreported),
            ..Taken::default()
        };
        let mut bytes = 0;
        while let Some(front) = inner.chunks.front() {
            let fits = taken.chunks.is_empty()
                || (taken.count + front.count <= self.limits.batch_envelopes
                    && bytes + front.bytes.len() <= self.limits.batch_bytes);
            if !fits {
                break;
            }
            let Some(chunk) = inner.chunks.pop_front() else {
                break;
            };
            inner.envelopes -= chunk.count;
            inner.bytes -= chunk.bytes.len();
            bytes += chunk.bytes.len();
            taken.count += chunk.count;
            taken.chunks.push(chunk);
        }
        Some(taken)
    }

    /// Waits for data and takes up to one message's worth; `None` once `shutdown` fires.
    pub async fn next(&self, shutdown: &CancellationToken) -> Option<Taken> {
        loop {
            if let Some(taken) = self.try_take() {
                return Some(taken);
            }
            // `notify_one` stores a permit when nobody waits, so a push between `try_take` and
            // here still wakes us.
            tokio::select! {
                () = self.ready.notified() => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }

    /// Marks the subscriber gone: what is queued, and whatever the router still routes here
    /// before it learns, is counted as dropped.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        let n = inner.envelopes;
        inner.chunks.clear();
        inner.envelopes = 0;
        inner.bytes = 0;
        drop(inner);
        self.dropped_closed.add(n as u64);
    }

    /// Envelopes this queue dropped for being full, since it was created.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Envelopes waiting now.
    #[must_use]
    pub fn depth(&self) -> usize {
        self.lock().envelopes
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
