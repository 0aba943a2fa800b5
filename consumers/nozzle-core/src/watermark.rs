//! [`Watermark`]: how far a destination's queue has dealt with what it was given, in push
//! order — the cursor keeper's view of one destination ([`Progress`]).
//!
//! Flow: a queue (the nozzle's [`crate::DestinationQueue`], or a nozzle's own request queue)
//! holds [`Watermark::positions`] across each of its own operations and reports them: an entry
//! pushed, the oldest entry evicted, a new entry refused, a batch taken ([`Ticket`]), entries
//! thrown away. The sender marks each ticket [`Ticket::done`] once it delivered the batch or
//! lost and counted it.
//!
//! Invariants:
//! - entries leave a queue oldest first, so one count (`left`) says which have left; a batch
//!   taken stays in flight until its ticket is done, and batches may finish out of order (several
//!   senders), so the resolved count is the oldest position still in flight;
//! - the resolved count never passes an entry still queued, still in a sender's hands, or thrown
//!   away at shutdown: a ticket dropped without `done` (its sender was stopped) keeps its batch in
//!   flight for good, and a shutdown discard freezes the count where it was;
//! - an entry refused at push (too large, or the queue closed) never takes a position.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hydrant_buffer::DropReason;

use crate::Progress;

/// A tracked queue's positions; see the module doc.
#[derive(Debug, Default)]
pub struct Watermark {
    marks: Mutex<Marks>,
    /// Unresolved entries before the reader waits ([`Progress::pace_limit`]); 0: the default.
    pace_limit: AtomicU64,
}

#[derive(Debug, Default)]
struct Marks {
    pushed: u64,
    /// Entries that left the queue, oldest first (resolved unless in flight).
    left: u64,
    /// Batches taken and not yet dealt with: start → end, in push positions.
    in_flight: BTreeMap<u64, u64>,
    /// Set once anything was thrown away at shutdown: nothing after it may resolve.
    frozen: Option<u64>,
}

impl Watermark {
    fn lock(&self) -> MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The positions, locked: a queue holds this across the buffer operation it reports, so
    /// positions follow the buffer's own order.
    pub fn positions(&self) -> Positions<'_> {
        Positions(self.lock())
    }

    /// Makes the reader wait once more than `limit` entries are unresolved (a queue sets half
    /// its capacity, so a paced queue never has to evict).
    pub fn set_pace_limit(&self, limit: u64) {
        self.pace_limit.store(limit.max(1), Ordering::Relaxed);
    }
}

impl Progress for Watermark {
    fn pushed(&self) -> u64 {
        self.lock().pushed
    }

    fn resolved(&self) -> u64 {
        let marks = self.lock();
        let mut resolved = marks.left;
        if let Some((start, _)) = marks.in_flight.first_key_value() {
            resolved = resolved.min(*start);
        }
        if let Some(frozen) = marks.frozen {
            resolved = resolved.min(frozen);
        }
        resolved
    }

    fn taken(&self) -> u64 {
        // Entries that left the queue: resolved, or in a sender's hands.
        let marks = self.lock();
        marks.frozen.map_or(marks.left, |f| marks.left.min(f))
    }

    fn pace_limit(&self) -> Option<u64> {
        match self.pace_limit.load(Ordering::Relaxed) {
            0 => Some(crate::PACE_IN_FLIGHT),
            limit => Some(limit),
        }
    }
}

/// A locked [`Watermark`], for the queue reporting one operation.
#[derive(Debug)]
pub struct Positions<'a>(MutexGuard<'a, Marks>);

impl Positions<'_> {
    /// One entry pushed (report [`lost`](Self::lost) too if the buffer refused it).
    pub fn pushed(&mut self) {
        self.0.pushed += 1;
    }

    /// The buffer lost an entry during a push, for `why`.
    pub fn lost(&mut self, why: DropReason) {
        let marks = &mut self.0;
        match why {
            // The oldest queued entry, lost and counted: its position resolves.
            DropReason::Evicted => marks.left += 1,
            // The new entry itself never took a position; at shutdown nothing after what
            // already left may resolve.
            DropReason::Closed => {
                marks.pushed -= 1;
                let left = marks.left;
                marks.frozen.get_or_insert(left);
            }
            DropReason::TooLarge | DropReason::Full | DropReason::Discarded => marks.pushed -= 1,
        }
    }

    /// The sender took the `n` oldest entries; the ticket holds them in flight. A plain ticket
    /// when `n` is 0.
    pub fn taken(&mut self, watermark: &Arc<Watermark>, n: u64) -> Ticket {
        if n == 0 {
            return Ticket::default();
        }
        let marks = &mut self.0;
        let start = marks.left;
        let end = start + n;
        marks.left = end;
        marks.in_flight.insert(start, end);
        Ticket {
            watermark: Some(Arc::clone(watermark)),
            ranges: vec![start],
        }
    }

    /// The `n` oldest entries were thrown away undelivered (shutdown): the cursor must not
    /// pass them.
    pub fn discarded(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        let marks = &mut self.0;
        let left = marks.left;
        marks.frozen.get_or_insert(left);
        marks.left += n;
    }
}

/// A batch a sender took from a tracked queue; [`Ticket::done`] once every entry in it was
/// delivered or lost and counted.
#[derive(Debug, Default)]
#[must_use = "a ticket not marked done holds the cursor back"]
pub struct Ticket {
    watermark: Option<Arc<Watermark>>,
    ranges: Vec<u64>,
}

impl Ticket {
    /// Adds the entries of `other` (a later batch merged into this one).
    pub fn merge(&mut self, mut other: Ticket) {
        self.ranges.append(&mut other.ranges);
        if self.watermark.is_none() {
            self.watermark = other.watermark.take();
        }
    }

    /// Every entry of the batch was delivered, or lost and counted.
    pub fn done(self) {
        if let Some(watermark) = &self.watermark {
            let mut marks = watermark.lock();
            for start in &self.ranges {
                marks.in_flight.remove(start);
            }
        }
    }
}
