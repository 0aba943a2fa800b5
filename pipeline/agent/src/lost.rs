//! What the agent loses after stamping: batches a doppler could not take (`doppler_unavailable`,
//! `doppler_lapsed`) or that were still queued when the shutdown drain ran out (`shutdown`).
//! Each is counted by reason, split by source, and owed in-band as gap markers.
//!
//! Flow: a lane (or the router, when a doppler goes down) gives up a batch → [`Losses::lost`]
//! walks its envelopes once → `agent.dropped{reason}`, `agent.dropped_by_source{source}` and the
//! owed markers → the next lane task with an open stream sends them ([`Losses::take_markers`]),
//! one `hydrant.gap` marker per source (hop `agent`, the reason, `source_id` = the app, so a
//! per-app stream carries its own), the sources past [`MAX_OWED_SOURCES`] in one marker under
//! `hydrant`.
//!
//! Invariants: the walk happens only on loss, never for a batch that is delivered (the lanes
//! hold encoded batches and the happy path never looks inside them); the owed ledger is
//! bounded (at most [`MAX_OWED_SOURCES`] named sources per reason, the rest summed); a marker
//! batch that could not be sent is owed again, so an owed loss is told or still owed, never
//! forgotten while a doppler may come back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hydrant_emitter::{Counter, SourceCounters};
use hydrant_envelope::gap::{BySource, GAP_SOURCE, Gap};
use hydrant_envelope::wire::{BatchIter, EnvelopeView};
use hydrant_runtime::lock;
use tokio::sync::Notify;

/// Most sources named in the owed markers of one reason; the rest are summed in one marker.
pub(crate) const MAX_OWED_SOURCES: usize = 64;

/// Why a batch that had been stamped was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The doppler's stream broke, or it was marked down with batches waiting for it.
    DopplerUnavailable,
    /// Still queued when the shutdown drain deadline passed.
    Shutdown,
    /// Queued for a doppler whose announcements lapsed, and not deliverable to it.
    DopplerLapsed,
}

impl Reason {
    const ALL: [Self; 3] = [
        Self::DopplerUnavailable,
        Self::Shutdown,
        Self::DopplerLapsed,
    ];

    /// The `reason` label and the marker's reason.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::DopplerUnavailable => "doppler_unavailable",
            Self::Shutdown => "shutdown",
            Self::DopplerLapsed => "doppler_lapsed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Losses owed as markers for one reason.
#[derive(Debug, Default)]
struct Owed {
    named: HashMap<Box<str>, u64>,
    other: u64,
}

impl Owed {
    fn add(&mut self, source: Option<&str>, n: u64) {
        if let Some(source) = source {
            if let Some(count) = self.named.get_mut(source) {
                *count += n;
                return;
            }
            if self.named.len() < MAX_OWED_SOURCES {
                self.named.insert(Box::from(source), n);
                return;
            }
        }
        self.other += n;
    }
}

/// The markers taken to send, and how to owe them again if the send fails.
#[derive(Debug)]
pub(crate) struct Markers {
    /// One encoded `EnvelopeBatch` holding every marker.
    pub(crate) batch: Bytes,
    /// How many markers it holds.
    pub(crate) count: u64,
    taken: Vec<(Reason, Owed)>,
}

/// The counters for losses after stamping, and the markers owed for them.
#[derive(Debug)]
pub(crate) struct Losses {
    /// `agent.dropped{reason}`, in [`Reason::ALL`] order.
    counters: [Counter; 3],
    owed: Mutex<[Owed; 3]>,
    any_owed: AtomicBool,
    owed_wake: Notify,
}

impl Losses {
    /// `counters` are `agent.dropped{reason}` for [`Reason::DopplerUnavailable`],
    /// [`Reason::Shutdown`] and [`Reason::DopplerLapsed`], in that order.
    pub(crate) fn new(counters: [Counter; 3]) -> Self {
        Self {
            counters,
            owed: Mutex::default(),
            any_owed: AtomicBool::new(false),
            owed_wake: Notify::new(),
        }
    }

    /// The counter of `reason`.
    pub(crate) fn counter(&self, reason: Reason) -> &Counter {
        &self.counters[reason.index()]
    }

    /// Counts the `count` envelopes of `batch` as lost for `reason`: in total, under each
    /// source in `by_source`, and owed as markers. One walk of the batch, merging runs of the
    /// same source (the router appends a source's envelopes together).
    pub(crate) fn lost(
        &self,
        reason: Reason,
        batch: &[u8],
        count: usize,
        by_source: &SourceCounters,
    ) {
        if count == 0 {
            return;
        }
        self.counter(reason).add(count as u64);
        let mut runs: Vec<(Option<&str>, u64)> = Vec::new();
        let mut walked = 0u64;
        for envelope in BatchIter::new(batch) {
            let source = envelope
                .ok()
                .and_then(|e| EnvelopeView::parse(e).ok())
                .map(|v| v.source_id);
            walked += 1;
            match runs.last_mut() {
                Some((last, n)) if *last == source => *n += 1,
                _ => runs.push((source, 1)),
            }
        }
        // The batch was built here, so the walk finds `count`; should it not, the difference
        // is still counted, under no name.
        let unwalked = (count as u64).saturating_sub(walked);
        if unwalked > 0 {
            runs.push((None, unwalked));
        }
        let mut owed = lock(&self.owed);
        for (source, n) in runs {
            by_source.add(source, n);
            owed[reason.index()].add(source, n);
        }
        drop(owed);
        self.any_owed.store(true, Ordering::Release);
        self.owed_wake.notify_waiters();
    }

    /// Completes when markers may be owed (woken by the next loss).
    pub(crate) async fn owed(&self) {
        let notified = self.owed_wake.notified();
        if self.any_owed.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    /// Takes every owed marker, encoded as one batch; `None` when nothing is owed (one atomic
    /// load on the happy path).
    pub(crate) fn take_markers(&self) -> Option<Markers> {
        if !self.any_owed.load(Ordering::Acquire) {
            return None;
        }
        let mut owed = lock(&self.owed);
        self.any_owed.store(false, Ordering::Release);
        let taken: Vec<(Reason, Owed)> = Reason::ALL
            .iter()
            .map(|r| (*r, std::mem::take(&mut owed[r.index()])))
            .filter(|(_, o)| o.other > 0 || !o.named.is_empty())
            .collect();
        drop(owed);
        if taken.is_empty() {
            return None;
        }
        let mut markers: Vec<Bytes> = Vec::new();
        for (reason, owed) in &taken {
            let mut named: Vec<(&str, u64)> = owed.named.iter().map(|(s, n)| (&**s, *n)).collect();
            named.sort_unstable();
            for (source, n) in named {
                markers.push(marker(source, n, 0, *reason));
            }
            if owed.other > 0 {
                markers.push(marker(GAP_SOURCE, 0, owed.other, *reason));
            }
        }
        Some(Markers {
            batch: hydrant_envelope::wire::batch_of(markers.iter().map(Bytes::as_ref)),
            count: markers.len() as u64,
            taken,
        })
    }

    /// Owes again what `markers` told, after its batch could not be sent.
    pub(crate) fn owe_again(&self, markers: Markers) {
        let mut owed = lock(&self.owed);
        for (reason, taken) in markers.taken {
            let into = &mut owed[reason.index()];
            for (source, n) in taken.named {
                into.add(Some(&source), n);
            }
            into.other += taken.other;
        }
        drop(owed);
        self.any_owed.store(true, Ordering::Release);
    }
}

/// One marker: `named` envelopes of `source` (or, under [`GAP_SOURCE`], `other` envelopes of
/// sources not named) lost at the agent for `reason`.
fn marker(source: &str, named: u64, other: u64, reason: Reason) -> Bytes {
    let by_source = if source == GAP_SOURCE {
        BySource {
            top: Vec::new(),
            other,
        }
    } else {
        BySource {
            top: vec![(source.to_owned(), named)],
            other: 0,
        }
    };
    Gap {
        source_id: source.to_owned(),
        dropped: named + other,
        hop: "agent".to_owned(),
        reason: reason.as_str().to_owned(),
        by_source,
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use hydrant_emitter::Registry;
    use hydrant_envelope::v2;
    use hydrant_envelope::wire;

    use super::*;

    fn envelope(source: &str) -> Vec<u8> {
        wire::encode(&v2::Envelope {
            source_id: source.to_owned(),
            ..v2::Envelope::default()
        })
        .to_vec()
    }

    fn losses(registry: &Registry) -> (Losses, SourceCounters) {
        let dropped = |reason| registry.counter("agent.dropped", "", &[("reason", reason)]);
        (
            Losses::new([
                dropped("doppler_unavailable"),
                dropped("shutdown"),
                dropped("doppler_lapsed"),
            ]),
            SourceCounters::new(registry, "agent.dropped_by_source", "", &[], 20),
        )
    }

    #[test]
    fn a_lost_batch_is_counted_by_source_and_owed_as_one_marker_per_source() {
        let registry = Registry::new("agent", "t");
        let (losses, by_source) = losses(&registry);
        assert!(losses.take_markers().is_none(), "nothing owed yet");
        let (a, b) = (envelope("app-a"), envelope("app-b"));
        let batch = wire::batch_of([a.as_slice(), a.as_slice(), b.as_slice(), a.as_slice()]);
        losses.lost(Reason::DopplerUnavailable, &batch, 4, &by_source);
        assert_eq!(
            registry.counter_sum("agent.dropped", &[("reason", "doppler_unavailable")]),
            4
        );
        assert_eq!(
            registry.counter_sum("agent.dropped_by_source", &[("source", "app-a")]),
            3
        );
        assert_eq!(
            registry.counter_sum("agent.dropped_by_source", &[("source", "app-b")]),
            1
        );
        let markers = losses.take_markers().unwrap();
        assert_eq!(markers.count, 2);
        let gaps: Vec<Gap> = BatchIter::new(&markers.batch)
            .map(|e| Gap::from_view(&EnvelopeView::parse(e.unwrap()).unwrap()).unwrap())
            .collect();
        let told: Vec<(String, u64, String)> = gaps
            .iter()
            .map(|g| (g.source_id.clone(), g.dropped, g.reason.clone()))
            .collect();
        assert_eq!(
            told,
            [
                ("app-a".to_owned(), 3, "doppler_unavailable".to_owned()),
                ("app-b".to_owned(), 1, "doppler_unavailable".to_owned()),
            ]
        );
        assert_eq!(gaps[0].by_source.get("app-a"), Some(3));
        assert!(losses.take_markers().is_none(), "told once");
        losses.owe_again(markers);
        assert_eq!(
            losses.take_markers().map(|m| m.count),
            Some(2),
            "a marker batch that could not be sent is owed again"
        );
    }

    #[test]
    fn the_owed_ledger_names_a_bounded_number_of_sources() {
        let registry = Registry::new("agent", "t");
        let (losses, by_source) = losses(&registry);
        let envelopes: Vec<Vec<u8>> = (0..MAX_OWED_SOURCES + 10)
            .map(|i| envelope(&format!("app-{i}")))
            .collect();
        let batch = wire::batch_of(envelopes.iter().map(Vec::as_slice));
        losses.lost(Reason::Shutdown, &batch, envelopes.len(), &by_source);
        let markers = losses.take_markers().unwrap();
        assert_eq!(markers.count, MAX_OWED_SOURCES as u64 + 1);
        let total: u64 = BatchIter::new(&markers.batch)
            .map(|e| {
                Gap::from_view(&EnvelopeView::parse(e.unwrap()).unwrap())
                    .unwrap()
                    .dropped
            })
            .sum();
        assert_eq!(total, envelopes.len() as u64, "every loss told");
    }
}
