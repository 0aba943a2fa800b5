//! The ingress ring: validated batches waiting for the router.
//!
//! Where it sits: ingress handlers (one per agent stream) push; the router task takes everything
//! waiting in one swap. It decouples agents from routing so an ingress handler never awaits
//! anything downstream.
//!
//! Invariant: bounded by envelopes and by bytes of the received messages it keeps alive. When a
//! push overflows it, the oldest batches go first (Loggregator's diode policy: the newest data is
//! the most useful), and every envelope dropped is counted in
//! `doppler.dropped{reason="ingress_ring_full"}`. The batch just pushed is never the one dropped.

use std::collections::VecDeque;

use hydrant_buffer::{Buffer, BufferConfig, Depth, DropReason, Limits, Observer, Weigh};
use hydrant_emitter::{Counter, Gauge};

use crate::batch::ValidBatch;

impl Weigh for ValidBatch {
    #[inline]
    fn events(&self) -> u64 {
        self.len() as u64
    }
    #[inline]
    fn bytes(&self) -> usize {
        self.buffer_len()
    }
}

/// Reports the ring's drops and depth under the doppler's metric names.
#[derive(Debug)]
struct Report {
    dropped: Counter,
    depth: Gauge,
}

impl Observer for Report {
    fn dropped(&self, reason: DropReason, _items: usize, events: u64) {
        // Only eviction can happen: the ring is never closed and keeps an oversized batch.
        if reason == DropReason::Evicted {
            self.dropped.add(events);
        }
    }
    fn depth(&self, depth: Depth) {
        self.depth.set(depth.events as f64);
    }
}

/// A bounded, drop-oldest queue of validated batches, many writers, one reader.
#[derive(Debug)]
pub struct IngressRing {
    buffer: Buffer<ValidBatch, Report>,
}

impl IngressRing {
    /// A ring holding at most `max_envelopes` envelopes and `max_bytes` of received messages.
    #[must_use]
    pub fn new(max_envelopes: usize, max_bytes: usize, dropped: Counter, depth: Gauge) -> Self {
        let limits = Limits::UNBOUNDED
            .events(max_envelopes as u64)
            .bytes(max_bytes);
        Self {
            buffer: Buffer::with_observer(
                BufferConfig::drop_oldest(limits),
                Report { dropped, depth },
            ),
        }
    }

    /// Adds a batch, dropping the oldest batches if the ring overflows. Never blocks on the
    /// reader.
    pub fn push(&self, batch: ValidBatch) {
        if batch.is_empty() {
            return;
        }
        self.buffer.push(batch);
    }

    /// Moves every waiting batch into `out`, oldest first.
    pub fn take_all(&self, out: &mut VecDeque<ValidBatch>) {
        // The per-source sequence numbers carry the loss downstream; the ring's own gap count
        // is reported only as `doppler.dropped{reason="ingress_ring_full"}`.
        self.buffer.swap_all(out);
        // Out of the ring: their sources' fair-share charges come back (see `batch`).
        for batch in out.iter_mut() {
            batch.release_fair();
        }
    }

    /// How full the ring is, in thousandths of its tighter bound (ingress fairness reads it).
    pub fn fill_permille(&self) -> u64 {
        self.buffer.fill_permille()
    }

    /// Completes when a push happened since the last call (a push before the first call counts).
    pub async fn ready(&self) {
        self.buffer.readable().await;
    }
}

#[cfg(test)]
mod tests {
    use hydrant_envelope::v2;
    use hydrant_envelope::wire::{batch_of, encode};

    use super::*;

    fn batch(n: usize) -> ValidBatch {
        let one = encode(&v2::Envelope {
            source_id: "s".to_owned(),
            ..v2::Envelope::default()
        });
        let buf = batch_of(std::iter::repeat_n(one.as_ref(), n));
        ValidBatch::from_batch(buf).0
    }

    #[test]
    fn overflow_drops_oldest_batches_and_counts_envelopes() {
        let dropped = Counter::default();
        let ring = IngressRing::new(10, usize::MAX, dropped.clone(), Gauge::default());
        ring.push(batch(4));
        ring.push(batch(4));
        ring.push(batch(4));
        assert_eq!(dropped.get(), 4);
        // A batch larger than the whole ring is still kept: it is the newest data.
        ring.push(batch(30));
        assert_eq!(dropped.get(), 12);
        let mut out = VecDeque::new();
        ring.take_all(&mut out);
        assert_eq!(out.iter().map(ValidBatch::len).collect::<Vec<_>>(), [30]);
    }

    #[tokio::test]
    async fn a_push_before_waiting_is_not_lost() {
        let ring = IngressRing::new(10, usize::MAX, Counter::default(), Gauge::default());
        ring.push(batch(1));
        tokio::time::timeout(std::time::Duration::from_secs(5), ring.ready())
            .await
            .unwrap();
    }
}
