//! [`Outbox`]: the bounded queue of built requests in front of one Datadog endpoint.
//!
//! Flow: flush → encoder → [`Outbox::push`] (never waits) → the endpoint's sender
//! ([`Outbox::next`]).
//!
//! Why not `hydrant_nozzle_core::DestinationQueue`: that queue counts its drops per entry, and
//! here one entry is a whole request carrying thousands of envelope values; the ledger is kept
//! in values, so this queue counts an evicted request's values. Otherwise it keeps the same
//! invariants: never more than `max_requests` requests or `max_bytes` bytes, the oldest request
//! goes first when full (`dropped{reason="queue_full"}`), and pushing never blocks the reader.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use hydrant_nozzle_core::NozzleMetrics;
use tokio::sync::Notify;

use crate::OutboxLimits;
use crate::series::Payload;

#[derive(Debug, Default)]
struct State {
    requests: VecDeque<Payload>,
    bytes: usize,
    closed: bool,
}

/// A bounded, drop-oldest queue of request bodies.
#[derive(Debug)]
pub struct Outbox {
    limits: OutboxLimits,
    state: Mutex<State>,
    notify: Notify,
    metrics: NozzleMetrics,
}

impl Outbox {
    /// An empty outbox reporting depth and drops through `metrics`.
    #[must_use]
    pub fn new(limits: OutboxLimits, metrics: NozzleMetrics) -> Self {
        Self {
            limits,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `payload`, evicting the oldest requests while over the limits.
    pub fn push(&self, payload: Payload) {
        let mut lost = 0u64;
        let mut shutdown = 0u64;
        {
            let mut s = self.lock();
            if s.closed {
                shutdown = payload.values;
            } else {
                while s.requests.len() >= self.limits.max_requests
                    || s.bytes + payload.body.len() > self.limits.max_bytes
                {
                    let Some(old) = s.requests.pop_front() else {
                        break;
                    };
                    s.bytes -= old.body.len();
                    lost += old.values;
                }
                s.bytes += payload.body.len();
                s.requests.push_back(payload);
                self.metrics.set_depth(s.requests.len(), s.bytes);
            }
        }
        if lost > 0 {
            self.metrics.dropped("queue_full", lost);
        }
        if shutdown > 0 {
            self.metrics.dropped("shutdown", shutdown);
        }
        self.notify.notify_one();
    }

    /// Waits for the next request; `None` once closed and empty.
    pub async fn next(&self) -> Option<Payload> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if let Some(p) = s.requests.pop_front() {
                    s.bytes -= p.body.len();
                    self.metrics.set_depth(s.requests.len(), s.bytes);
                    return Some(p);
                }
                if s.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Takes no more requests; [`Outbox::next`] hands out what is left, then `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// Throws everything queued away as `dropped{reason}`; returns the values lost.
    pub fn discard(&self, reason: &'static str) -> u64 {
        let lost: u64 = {
            let mut s = self.lock();
            let lost = s.requests.iter().map(|p| p.values).sum();
            s.requests.clear();
            s.bytes = 0;
            self.metrics.set_depth(0, 0);
            lost
        };
        if lost > 0 {
            self.metrics.dropped(reason, lost);
        }
        lost
    }

    /// Requests and bytes queued now.
    #[must_use]
    pub fn depth(&self) -> (usize, usize) {
        let s = self.lock();
        (s.requests.len(), s.bytes)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]
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
