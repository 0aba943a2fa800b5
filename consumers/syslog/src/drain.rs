//! One drain's books: what it delivered, what it lost and whose it was, where it stands.
//!
//! Flow: the reader (queue evictions), the sender loop (sent, failed, dropped batches) and
//! unbinding (the queue thrown away) all report here → [`Tally`] → the status report
//! (`/drains`, the platform's drain status) and the loss notices (one `LGR` line per app per
//! interval).
//!
//! Invariants: every message lost on the way to a drain is counted exactly once, by reason,
//! here and in the drain's metrics; the per-app loss ledger is bounded (apps past
//! [`MAX_LEDGER_APPS`] are counted without a name); the last error is stored already masked;
//! messages a retry writes again after a failed attempt had already handed them to the
//! connection are counted in `nozzle.duplicates_unsure{destination}` (see [`Tally::resent`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use hydrant_emitter::{Counter, Registry};
use hydrant_nozzle_core::{Journal, NozzleMetrics};
use serde::Serialize;

use crate::Error;
use crate::transport::Payload;

/// Most apps one drain keeps a pending loss count for between two notices.
pub const MAX_LEDGER_APPS: usize = 10_000;

/// Where a drain stands, as its sender sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainState {
    /// Delivering (or nothing sent yet).
    Ok,
    /// The last attempt failed; the batch is being retried.
    Retrying,
    /// Failed too often: the circuit breaker holds attempts back for a while.
    Open,
    /// The drain resolves to a private address the operator has not allowed.
    Refused,
}

#[derive(Debug)]
struct Books {
    received: u64,
    sent: u64,
    dropped: u64,
    in_flight: u64,
    state: DrainState,
    last_error: Option<String>,
    last_success_unix_ms: Option<u64>,
    losses: HashMap<Arc<str>, u64>,
    unattributed: u64,
}

/// A drain's counts and health, shared by the reader, its sender and the reporters.
#[derive(Debug)]
pub struct Tally {
    metrics: NozzleMetrics,
    aggregate: Option<NozzleMetrics>,
    books: Mutex<Books>,
    /// Unresolved messages before a reader keeping a cursor waits for this drain.
    pace_limit: u64,
    /// With a cursor file: stored through right after a batch is taken and right after it is
    /// dealt with, so a SIGKILL never leaves the file behind what the drain may have written.
    journal: Option<Journal>,
    /// `nozzle.duplicates_unsure{destination}`, when the owner registered it.
    resent: Option<Counter>,
}

/// A copy of a drain's books at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Messages queued for the drain (each envelope's lines count once).
    pub received: u64,
    /// Messages delivered.
    pub sent: u64,
    /// Messages lost, every reason.
    pub dropped: u64,
    /// Messages taken from the queue and not yet sent or lost.
    pub in_flight: u64,
    /// Where the drain stands.
    pub state: DrainState,
    /// The last failure, masked.
    pub last_error: Option<String>,
    /// When a batch last got through, UNIX ms.
    pub last_success_unix_ms: Option<u64>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the firehose cursor waits for: a drain's queued messages resolve (sent, or lost and
/// counted) in the order they were queued.
impl hydrant_nozzle_core::Progress for Tally {
    fn pushed(&self) -> u64 {
        self.books().received
    }

    fn resolved(&self) -> u64 {
        let b = self.books();
        b.sent + b.dropped
    }

    fn taken(&self) -> u64 {
        let b = self.books();
        b.sent + b.dropped + b.in_flight
    }

    fn pace_limit(&self) -> Option<u64> {
        Some(self.pace_limit)
    }
}

impl Tally {
    /// Books counted into `metrics` (the drain's own) and, when given, `aggregate` (one set
    /// shared by many drains, e.g. every app drain of the platform).
    #[must_use]
    pub fn new(metrics: NozzleMetrics, aggregate: Option<NozzleMetrics>) -> Self {
        Self {
            metrics,
            aggregate,
            books: Mutex::new(Books {
                received: 0,
                sent: 0,
                dropped: 0,
                in_flight: 0,
                state: DrainState::Ok,
                last_error: None,
                last_success_unix_ms: None,
                losses: HashMap::new(),
                unattributed: 0,
            }),
            pace_limit: hydrant_nozzle_core::PACE_IN_FLIGHT,
            journal: None,
            resent: None,
        }
    }

    /// Books that count messages a retry may deliver twice in `registry`, as
    /// `nozzle.duplicates_unsure{destination}`: the drain's masked URL, or the aggregate's
    /// name when there is one (app drains, so their number does not grow the series). The
    /// nozzle restarted after SIGKILL counts its own in the untagged series.
    #[must_use]
    pub fn counting_resends(mut self, registry: &Registry) -> Self {
        let destination = self
            .aggregate
            .as_ref()
            .map_or(self.metrics.destination(), NozzleMetrics::destination);
        self.resent = Some(registry.counter(
            "nozzle.duplicates_unsure",
            "Messages written again by a retry (or after a restart) that the destination may \
             already hold: duplicates if it had read them before the connection failed.",
            &[("destination", destination)],
        ));
        self
    }

    /// A retry is about to write again `n` messages that the failed attempt had already handed
    /// whole to the connection: the drain may hold them twice. Which of them it read before the
    /// connection broke cannot be known from this side (bytes the kernel accepted, or even
    /// acknowledged, may never have been read), so they are counted as unsure rather than
    /// skipped, which could lose them.
    pub fn resent(&self, n: u64) {
        if let Some(resent) = &self.resent {
            resent.add(n);
        }
    }

    /// Books that store the nozzle's cursor through `journal` around each batch (see the
    /// field's doc); `None` keeps no cursor.
    #[must_use]
    pub fn journaled(mut self, journal: Option<Journal>) -> Self {
        self.journal = journal;
        self
    }

    /// Stores the cursor now, when the nozzle keeps one (a small synchronous file write).
    fn journal(&self) {
        if let Some(journal) = &self.journal {
            journal.store();
        }
    }

    /// Books for a drain whose queue holds `max_items`: a reader keeping a cursor waits once
    /// half of that is unresolved, so the queue keeps room for a frame and never evicts.
    #[must_use]
    pub fn paced_for(mut self, max_items: usize) -> Self {
        self.pace_limit = (max_items as u64 / 2).max(1);
        self
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The drain's own metrics.
    #[must_use]
    pub fn metrics(&self) -> &NozzleMetrics {
        &self.metrics
    }

    /// `n` messages were queued for the drain.
    pub fn received(&self, n: u64) {
        self.metrics.received(n);
        if let Some(a) = &self.aggregate {
            a.received(n);
        }
        self.books().received += n;
    }

    /// A batch of `n` got through.
    pub fn sent(&self, n: u64) {
        self.metrics.sent(n);
        if let Some(a) = &self.aggregate {
            a.sent(n);
        }
        {
            let mut b = self.books();
            b.sent += n;
            b.in_flight = 0;
            b.state = DrainState::Ok;
            b.last_success_unix_ms = Some(unix_ms());
        }
        self.journal();
    }

    /// The sender took a batch of `n` from the queue; with a cursor file, returns once the
    /// file says they may be delivered (so the sender writes them only after).
    pub fn taken(&self, n: u64) {
        self.books().in_flight = n;
        self.journal();
    }

    /// One more attempt at a batch.
    pub fn retry(&self) {
        self.metrics.retry();
        if let Some(a) = &self.aggregate {
            a.retry();
        }
    }

    /// An attempt failed with `error`; `breaker_open` says whether attempts are now held back.
    pub fn failed(&self, error: &Error, breaker_open: bool) {
        let mut b = self.books();
        b.last_error = Some(error.to_string());
        b.state = if error.is_refused() {
            DrainState::Refused
        } else if breaker_open {
            DrainState::Open
        } else {
            DrainState::Retrying
        };
    }

    /// One queued message was lost for `reason` and the queue has already counted it in the
    /// drain's metrics (evictions, refusals at push, discards).
    pub fn queue_lost<P: Payload>(&self, reason: &'static str, item: &P) {
        if let Some(a) = &self.aggregate {
            a.dropped(reason, 1);
        }
        self.book_losses(std::iter::once(item));
    }

    /// A whole batch taken from the queue was lost for `reason`.
    pub fn drop_batch<P: Payload>(&self, reason: &'static str, batch: &[P]) {
        let n = batch.len() as u64;
        if n == 0 {
            return;
        }
        self.metrics.dropped(reason, n);
        if let Some(a) = &self.aggregate {
            a.dropped(reason, n);
        }
        self.books().in_flight = 0;
        self.book_losses(batch.iter());
    }

    fn book_losses<'a, P: Payload>(&self, items: impl Iterator<Item = &'a P>) {
        let mut b = self.books();
        for item in items {
            b.dropped += 1;
            match item.source_id() {
                Some(app) => {
                    if let Some(n) = b.losses.get_mut(app) {
                        *n += 1;
                    } else if b.losses.len() < MAX_LEDGER_APPS {
                        b.losses.insert(Arc::clone(app), 1);
                    } else {
                        b.unattributed += 1;
                    }
                }
                None => b.unattributed += 1,
            }
        }
    }

    /// The losses per app since the last call, and how many could not be told to an app.
    pub fn take_losses(&self) -> (Vec<(Arc<str>, u64)>, u64) {
        let mut b = self.books();
        let losses = b.losses.drain().collect();
        (losses, std::mem::take(&mut b.unattributed))
    }

    /// The books now.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let b = self.books();
        Snapshot {
            received: b.received,
            sent: b.sent,
            dropped: b.dropped,
            in_flight: b.in_flight,
            state: b.state,
            last_error: b.last_error.clone(),
            last_success_unix_ms: b.last_success_unix_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use hydrant_emitter::Registry;
    use hydrant_nozzle_core::NozzleMetrics;

    use super::{DrainState, Tally};
    use crate::Error;
    use crate::transport::Frames;

    #[test]
    fn books_losses_per_app_and_state() {
        let registry = Registry::new("t", "0");
        let tally = Tally::new(
            NozzleMetrics::new(&registry, "syslog://u:secret@h:1"),
            Some(NozzleMetrics::new(&registry, "app-drains")),
        );
        let a: Arc<str> = Arc::from("app-a");
        let frames = |app: &Arc<str>| Frames {
            bytes: Bytes::from_static(b"1 x"),
            source_id: Arc::clone(app),
        };
        tally.drop_batch("retries_exhausted", &[frames(&a), frames(&a)]);
        tally.queue_lost("queue_full", &frames(&Arc::from("app-b")));
        tally.drop_batch("retries_exhausted", &[Bytes::from_static(b"1 y")]);
        let (mut losses, unattributed) = tally.take_losses();
        losses.sort();
        assert_eq!(
            losses,
            [(Arc::from("app-a"), 2), (Arc::from("app-b"), 1)],
            "per app"
        );
        assert_eq!(unattributed, 1);
        assert!(tally.take_losses().0.is_empty(), "taken once");
        assert_eq!(tally.snapshot().dropped, 4);
        assert_eq!(
            registry.counter_sum("nozzle.dropped", &[("destination", "app-drains")]),
            4
        );

        let e = Error::Http {
            url: "https://u:****@h/".to_owned(),
            status: 503,
        };
        tally.failed(&e, false);
        assert_eq!(tally.snapshot().state, DrainState::Retrying);
        tally.failed(&e, true);
        assert_eq!(tally.snapshot().state, DrainState::Open);
        tally.sent(3);
        let s = tally.snapshot();
        assert_eq!((s.sent, s.state), (3, DrainState::Ok));
        assert!(s.last_success_unix_ms.is_some());
        assert!(s.last_error.unwrap().contains("u:****@h"));
    }
}
