//! [`Intervals`]: when a frame's metrics have reached Datadog, for the cursor keeper.
//!
//! Flow: the reader folds each frame into the aggregator and counts it here
//! ([`Intervals::frame`]); each flush turns the interval into requests in the endpoints'
//! outboxes and records, here, the outbox positions those requests took
//! ([`Intervals::flushed`]). A frame is resolved once the first flush after it has had every
//! one of its requests sent or refused and counted ([`Progress::resolved`]).
//!
//! Invariants: the resolved count moves only to the frame count of a flush whose requests all
//! resolved, oldest flush first, so it never passes a frame whose counts are still in an
//! aggregator or an outbox; bounded: past [`MAX_FLUSHES`] waiting flushes the two oldest are
//! merged (the cursor gets coarser, never wrong).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hydrant_nozzle_core::{Progress, Watermark};

/// Flushes waiting for their requests before the two oldest are merged.
pub const MAX_FLUSHES: usize = 1024;

/// Frames folded into intervals, and the flushes that carry them; see the module doc.
#[derive(Debug, Default)]
pub struct Intervals {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    frames: u64,
    resolved: u64,
    flushes: VecDeque<Flush>,
}

#[derive(Debug)]
struct Flush {
    /// Frames folded in up to this flush.
    frames: u64,
    /// Each outbox's pushed total right after the flush queued its requests.
    marks: Vec<(Arc<Watermark>, u64)>,
}

impl Intervals {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One more frame folded into the current interval.
    pub fn frame(&self) {
        self.lock().frames += 1;
    }

    /// The current interval was flushed into `outboxes` (their watermarks).
    pub fn flushed<'a>(&self, outboxes: impl IntoIterator<Item = &'a Arc<Watermark>>) {
        let marks = outboxes
            .into_iter()
            .map(|w| (Arc::clone(w), w.pushed()))
            .collect();
        let mut inner = self.lock();
        let frames = inner.frames;
        if inner.flushes.len() >= MAX_FLUSHES
            && let (Some(oldest), Some(next)) =
                (inner.flushes.pop_front(), inner.flushes.front_mut())
        {
            // The later marks cover the earlier ones (pushed totals only grow).
            next.marks.extend(oldest.marks);
        }
        inner.flushes.push_back(Flush { frames, marks });
    }
}

impl Progress for Intervals {
    fn pushed(&self) -> u64 {
        self.lock().frames
    }

    fn resolved(&self) -> u64 {
        let mut inner = self.lock();
        while let Some(front) = inner.flushes.front() {
            if !front.marks.iter().all(|(w, at)| w.resolved() >= *at) {
                break;
            }
            inner.resolved = front.frames;
            inner.flushes.pop_front();
        }
        inner.resolved
    }

    /// Never waited for: frames are folded into the aggregator, so a reader ahead of the
    /// flushes costs nothing (the outboxes hold one request per series batch, not per frame).
    fn pace_limit(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hydrant_nozzle_core::{Progress as _, Watermark};

    use super::Intervals;

    #[test]
    fn a_frame_resolves_only_when_the_flush_after_it_was_sent() {
        let outbox = Arc::new(Watermark::default());
        let intervals = Intervals::default();
        intervals.frame();
        intervals.frame();
        assert_eq!(intervals.resolved(), 0, "not flushed yet");
        outbox.positions().pushed();
        intervals.flushed([&outbox]);
        intervals.frame();
        let ticket = outbox.positions().taken(&outbox, 1);
        assert_eq!(intervals.resolved(), 0, "its request is in flight");
        ticket.done();
        assert_eq!(intervals.resolved(), 2);
        assert_eq!(intervals.pushed(), 3, "the third waits for the next flush");
        intervals.flushed([&outbox]);
        assert_eq!(intervals.resolved(), 3, "an empty flush resolves at once");
    }
}
