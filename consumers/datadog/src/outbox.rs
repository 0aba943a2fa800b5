//! [`Outbox`]: the bounded queue of built requests in front of one Datadog endpoint.
//!
//! Flow: flush → encoder → [`Outbox::push`] (never waits) → the endpoint's sender
//! ([`Outbox::next`]).
//!
//! Both this and `hydrant_nozzle_core::DestinationQueue` are a `hydrant_buffer::Buffer`; this
//! one weighs a request by the envelope values it carries (one entry is a whole request of
//! thousands of values, and the ledger is kept in values), so an evicted request counts its
//! values, where the destination queue counts entries. Otherwise it keeps the same
//! invariants: never more than `max_requests` requests or `max_bytes` bytes, the oldest request
//! goes first when full (`dropped{reason="queue_full"}`), and pushing never blocks the reader.
//! A tracked outbox (the nozzle keeps its cursor) reports each request's place to a
//! [`Watermark`], and its sender holds a [`Ticket`] per request until it was sent or counted.

use hydrant_buffer::{Buffer, BufferConfig, Depth, DropReason, Limits, Observer, Weigh};
use std::sync::Arc;

use hydrant_nozzle_core::{NozzleMetrics, Ticket, Watermark};

use crate::OutboxLimits;
use crate::series::Payload;

impl Weigh for Payload {
    /// The ledger is kept in values, so drops are counted in them.
    #[inline]
    fn events(&self) -> u64 {
        self.values
    }
    #[inline]
    fn bytes(&self) -> usize {
        self.body.len()
    }
}

/// Reports drops (in values) and depth through the endpoint's [`NozzleMetrics`].
#[derive(Debug)]
struct Report(NozzleMetrics);

impl Observer for Report {
    fn dropped(&self, reason: DropReason, _items: usize, values: u64) {
        match reason {
            DropReason::Evicted | DropReason::Full | DropReason::TooLarge => {
                self.0.dropped("queue_full", values);
            }
            DropReason::Closed => self.0.dropped("shutdown", values),
            // `discard` counts under the caller's reason.
            DropReason::Discarded => {}
        }
    }
    fn depth(&self, depth: Depth) {
        self.0.set_depth(depth.items, depth.bytes);
    }
}

/// A bounded, drop-oldest queue of request bodies.
#[derive(Debug)]
pub struct Outbox {
    buffer: Buffer<Payload, Report>,
    watermark: Option<Arc<Watermark>>,
}

impl Outbox {
    /// An outbox reporting depth and drops through `metrics`.
    #[must_use]
    pub fn new(limits: OutboxLimits, metrics: NozzleMetrics) -> Self {
        let bounds = Limits::UNBOUNDED
            .items(limits.max_requests)
            .bytes(limits.max_bytes);
        Self {
            buffer: Buffer::with_observer(BufferConfig::drop_oldest(bounds), Report(metrics)),
            watermark: None,
        }
    }

    /// An outbox whose requests are tracked by `watermark` (see [`Outbox::next_tracked`]).
    #[must_use]
    pub fn tracked(
        limits: OutboxLimits,
        metrics: NozzleMetrics,
        watermark: Arc<Watermark>,
    ) -> Self {
        Self {
            watermark: Some(watermark),
            ..Self::new(limits, metrics)
        }
    }

    /// The watermark of a tracked outbox.
    #[must_use]
    pub fn watermark(&self) -> Option<&Arc<Watermark>> {
        self.watermark.as_ref()
    }

    /// Queues `payload`, evicting the oldest requests while over the limits.
    pub fn push(&self, payload: Payload) {
        // Held across the push so positions follow the buffer's own order.
        let mut positions = self.watermark.as_deref().map(Watermark::positions);
        if let Some(positions) = positions.as_mut() {
            positions.pushed();
        }
        self.buffer.push_with(payload, |_, why| {
            if let Some(positions) = positions.as_mut() {
                positions.lost(why);
            }
        });
    }

    /// Waits for the next request; `None` once closed and empty.
    pub async fn next(&self) -> Option<Payload> {
        let (payload, ticket) = self.next_tracked().await?;
        // An untracked caller: the request counts as dealt with once taken.
        ticket.done();
        Some(payload)
    }

    /// [`next`](Self::next) with the [`Ticket`] that holds the request in flight until the
    /// sender marks it done (a plain ticket on an untracked outbox).
    pub async fn next_tracked(&self) -> Option<(Payload, Ticket)> {
        loop {
            let mut positions = self.watermark.as_ref().map(|w| (w, w.positions()));
            if let Some(p) = self.buffer.pop() {
                let ticket = match positions.as_mut() {
                    Some((watermark, positions)) => positions.taken(watermark, 1),
                    None => Ticket::default(),
                };
                return Some((p, ticket));
            }
            drop(positions);
            if self.buffer.is_closed() {
                return None;
            }
            // A push or close after the checks above leaves a wake-up for this wait.
            self.buffer.readable().await;
        }
    }

    /// Takes no more requests; [`Outbox::next`] hands out what is left, then `None`.
    pub fn close(&self) {
        self.buffer.close();
    }

    /// Throws everything queued away as `dropped{reason}`; returns the values lost.
    pub fn discard(&self, reason: &'static str) -> u64 {
        let mut positions = self.watermark.as_deref().map(Watermark::positions);
        let thrown = self.buffer.discard(|_| {});
        if let Some(positions) = positions.as_mut() {
            positions.discarded(thrown.items as u64);
        }
        drop(positions);
        let lost = thrown.events;
        if lost > 0 {
            self.buffer.observer().0.dropped(reason, lost);
        }
        lost
    }

    /// Requests and bytes queued now.
    #[must_use]
    pub fn depth(&self) -> (usize, usize) {
        let d = self.buffer.depth();
        (d.items, d.bytes)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use hydrant_emitter::Registry;
    use hydrant_nozzle_core::NozzleMetrics;

    use super::Outbox;
    use crate::series::Payload;
    use crate::{Compression, OutboxLimits};

    fn payload(values: u64, bytes: usize) -> Payload {
        Payload {
            body: Bytes::from(vec![0u8; bytes]),
            compression: Compression::Gzip,
            uncompressed: bytes,
            series: 1,
            values,
        }
    }

    #[tokio::test]
    async fn evicts_the_oldest_and_counts_their_values() {
        let registry = Registry::new("t", "0");
        let metrics = NozzleMetrics::new(&registry, "http://dd/api/v2/series");
        let outbox = Outbox::new(
            OutboxLimits {
                max_requests: 2,
                max_bytes: 100,
            },
            metrics,
        );
        outbox.push(payload(10, 10));
        outbox.push(payload(20, 10));
        outbox.push(payload(30, 10));
        assert_eq!(outbox.depth(), (2, 20));
        outbox.push(payload(40, 95));
        assert_eq!(outbox.depth(), (1, 95), "bytes evict too");
        assert_eq!(
            registry.counter_sum("nozzle.dropped", &[("reason", "queue_full")]),
            60
        );
        assert_eq!(outbox.next().await.unwrap().values, 40);
        outbox.push(payload(5, 1));
        outbox.close();
        outbox.push(payload(7, 1));
        assert_eq!(outbox.next().await.unwrap().values, 5);
        assert!(outbox.next().await.is_none());
        assert_eq!(
            registry.counter_sum("nozzle.dropped", &[("reason", "shutdown")]),
            7
        );
    }
}
