//! [`Ring`]: a sparse ring of time buckets, the one storage shape behind every window.
//!
//! A bucket covers one slot of `granularity` seconds (1 for the short windows, a block for the
//! coarse latency histograms, 60 for SLO minutes). Only slots that saw data are stored, so a
//! quiet series costs nothing, and slots older than the horizon are dropped as new ones arrive,
//! so a busy one never holds more than `horizon` buckets.
//!
//! Invariant: slots are strictly increasing from front to back and every stored slot lies within
//! `horizon` slots of the newest one; data for an older slot than the newest (a caller passing
//! an earlier `now`) merges into the newest bucket instead of breaking the order.

use std::collections::VecDeque;

/// Buckets of `B` keyed by slot number, newest at the back.
#[derive(Debug, Clone)]
pub(crate) struct Ring<B> {
    buckets: VecDeque<(u64, B)>,
    horizon: u64,
}

impl<B> Ring<B> {
    /// A ring that keeps `horizon` slots (at least one).
    pub(crate) fn new(horizon: u64) -> Self {
        Self {
            buckets: VecDeque::new(),
            horizon: horizon.max(1),
        }
    }

    /// The bucket for `slot`, created with `make` when the slot is new. Buckets that fall out of
    /// the horizon are handed to `recycle` (so their allocations can be reused).
    pub(crate) fn at(
        &mut self,
        slot: u64,
        make: impl FnOnce() -> B,
        recycle: impl FnMut(B),
    ) -> &mut B {
        let newest = self.buckets.back().map(|(s, _)| *s);
        match newest {
            Some(s) if s >= slot => {}
            _ => {
                self.expire(slot, recycle);
                self.buckets.push_back((slot, make()));
            }
        }
        // Never empty here: either the back existed or one was just pushed.
        let last = self.buckets.len() - 1;
        &mut self.buckets[last].1
    }

    /// The newest bucket when it can take data for `slot` (it is for `slot` or a later one).
    pub(crate) fn current(&mut self, slot: u64) -> Option<&mut B> {
        match self.buckets.back_mut() {
            Some((s, b)) if *s >= slot => Some(b),
            _ => None,
        }
    }

    /// Appends a bucket for a slot newer than every stored one, expiring old buckets first.
    pub(crate) fn push(&mut self, slot: u64, bucket: B, recycle: impl FnMut(B)) {
        self.expire(slot, recycle);
        self.buckets.push_back((slot, bucket));
    }

    /// Drops buckets that are out of the horizon as of `slot`.
    pub(crate) fn expire(&mut self, slot: u64, mut recycle: impl FnMut(B)) {
        let oldest_kept = slot.saturating_sub(self.horizon - 1);
        while self.buckets.front().is_some_and(|(s, _)| *s < oldest_kept) {
            if let Some((_, b)) = self.buckets.pop_front() {
                recycle(b);
            }
        }
    }

    /// Buckets whose slot lies in `(slot - span, slot]`, newest first.
    pub(crate) fn window(&self, slot: u64, span: u64) -> impl Iterator<Item = (u64, &B)> + '_ {
        let first = slot.saturating_sub(span.saturating_sub(1));
        self.buckets
            .iter()
            .rev()
            .skip_while(move |(s, _)| *s > slot)
            .take_while(move |(s, _)| span > 0 && *s >= first)
            .map(|(s, b)| (*s, b))
    }

    /// Every stored bucket, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &B)> + '_ {
        self.buckets.iter().map(|(s, b)| (*s, b))
    }

    /// Number of stored buckets.
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Inserts a bucket for a slot that is older than every stored one or newer than all of
    /// them (restoring persisted history). Anything else is merged by the caller; returns the
    /// bucket back when it cannot be placed.
    pub(crate) fn insert_ordered(&mut self, slot: u64, bucket: B) -> Result<(), B> {
        match (self.buckets.front(), self.buckets.back()) {
            (None, _) => self.buckets.push_back((slot, bucket)),
            (Some((front, _)), _) if slot < *front => self.buckets.push_front((slot, bucket)),
            (_, Some((back, _))) if slot > *back => self.buckets.push_back((slot, bucket)),
            _ => return Err(bucket),
        }
        Ok(())
    }

    /// The bucket stored for exactly `slot`.
    pub(crate) fn get_mut(&mut self, slot: u64) -> Option<&mut B> {
        let index = self.buckets.binary_search_by_key(&slot, |(s, _)| *s).ok()?;
        self.buckets.get_mut(index).map(|(_, b)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(r: &mut Ring<u32>, slot: u64, n: u32) {
        *r.at(slot, || 0, drop) += n;
    }

    #[test]
    fn keeps_the_horizon_and_merges_late_data_into_the_newest() {
        let mut r = Ring::new(3);
        for slot in 0..10 {
            push(&mut r, slot, 1);
        }
        assert_eq!(r.iter().map(|(s, _)| s).collect::<Vec<_>>(), [7, 8, 9]);
        push(&mut r, 2, 5);
        assert_eq!(r.iter().map(|(_, b)| *b).collect::<Vec<_>>(), [1, 1, 6]);
    }

    #[test]
    fn window_selects_the_last_span_slots() {
        let mut r = Ring::new(100);
        for slot in [1, 2, 5, 9, 10] {
            push(&mut r, slot, 1);
        }
        let w: Vec<u64> = r.window(10, 5).map(|(s, _)| s).collect();
        assert_eq!(w, [10, 9]);
        let w: Vec<u64> = r.window(9, 5).map(|(s, _)| s).collect();
        assert_eq!(w, [9, 5]);
        assert_eq!(r.window(20, 5).count(), 0);
        assert_eq!(r.window(10, 0).count(), 0);
    }

    #[test]
    fn recycles_expired_buckets_and_inserts_in_order() {
        let mut r = Ring::new(2);
        let mut recycled = Vec::new();
        *r.at(1, || 10, |b| recycled.push(b)) += 0;
        *r.at(2, || 20, |b| recycled.push(b)) += 0;
        *r.at(5, || 50, |b| recycled.push(b)) += 0;
        assert_eq!(recycled, [10, 20]);
        assert!(r.insert_ordered(3, 30).is_ok());
        assert!(r.insert_ordered(9, 90).is_ok());
        assert_eq!(r.insert_ordered(5, 1), Err(1));
        assert_eq!(r.get_mut(5).copied(), Some(50));
        assert_eq!(r.len(), 3);
    }
}
