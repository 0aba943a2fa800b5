//! Where each envelope came from in its doppler's stream, and the cursor each consumer is given.
//!
//! Where it sits: the upstream reads a position record in front of every batch from a doppler's
//! replay ring ([`split_position`]: in the batch's own message, or, from dopplers before that, in
//! a message of its own); the hub stamps each envelope it queues with its [`At`] (doppler, epoch, offset);
//! a connection's writer feeds what it sends through a [`Tracker`], which keeps the consumer's
//! [`Cursor`] (per doppler, the next offset it has not been given) and writes it into each
//! frame. A consumer that reconnects with that cursor is replayed from there (see `resume`).
//!
//! Invariants: a consumer's cursor only moves forward within one doppler epoch; an envelope at
//! an offset the consumer was already given (replayed, then met again live) is never sent twice.

use bytes::Bytes;
use hydrant_buffer::Weigh;
use hydrant_envelope::cursor::{Cursor, Mark, POSITION_KEY, RingPosition};
use hydrant_envelope::wire::read_varint;

/// An envelope's place in its doppler's stream. `doppler == 0` means unknown (a doppler that
/// keeps no replay ring, or a marker this edge made).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct At {
    pub(crate) doppler: u64,
    pub(crate) epoch: u64,
    pub(crate) offset: u64,
}

impl At {
    /// No known position.
    pub(crate) const NONE: Self = Self {
        doppler: 0,
        epoch: 0,
        offset: 0,
    };

    pub(crate) fn is_known(self) -> bool {
        self.doppler != 0
    }
}

/// One queued envelope: its encoded bytes (a slice of the upstream message, no copy) and where
/// it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub(crate) bytes: Bytes,
    pub(crate) at: At,
}

impl Item {
    pub(crate) fn new(bytes: Bytes, at: At) -> Self {
        Self { bytes, at }
    }
}

impl Weigh for Item {
    #[inline]
    fn bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// A ring read's message taken apart: its leading position record, when it has one, and the
/// encoded `EnvelopeBatch` of the envelopes after it (a slice, no copy; empty for a record
/// sent on its own). A message that does not start with a well-formed record is all batch, so
/// a doppler's plain subscription stream passes through unchanged.
pub(crate) fn split_position(message: &Bytes) -> (Option<RingPosition>, Bytes) {
    let mut pos = 0;
    if read_varint(message, &mut pos).ok() != Some(POSITION_KEY) {
        return (None, message.clone());
    }
    let record = read_varint(message, &mut pos)
        .ok()
        .and_then(|len| pos.checked_add(usize::try_from(len).ok()?))
        .filter(|&end| end <= message.len())
        .and_then(|end| Some((RingPosition::from_message(message.get(..end)?)?, end)));
    match record {
        Some((position, end)) => (Some(position), message.slice(end..)),
        None => (None, message.clone()),
    }
}

/// A consumer's cursor, advanced by what its writer sends.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker {
    cursor: Cursor,
    /// Whether any doppler gives positions: without one there is no cursor to send.
    known: bool,
}

impl Tracker {
    /// Sets a doppler's mark outright (where a replay ended, or where live data starts).
    pub(crate) fn set(&mut self, mark: Mark) {
        self.known = true;
        self.cursor.set(mark);
    }

    /// Records that the envelope at `at` is being sent. False when the consumer was already
    /// given it (the caller skips it).
    pub(crate) fn admit(&mut self, at: At) -> bool {
        if !at.is_known() {
            return true;
        }
        if let Some(mark) = self.cursor.get(at.doppler)
            && mark.epoch == at.epoch
            && at.offset < mark.next
        {
            return false;
        }
        self.set(Mark {
            doppler: at.doppler,
            epoch: at.epoch,
            next: at.offset + 1,
        });
        true
    }

    /// The cursor text for the next frame, when any doppler gives positions.
    pub(crate) fn text(&self) -> Option<String> {
        self.known.then(|| self.cursor.encode())
    }
}

#[cfg(test)]
mod tests {
    use hydrant_envelope::wire::{BatchIter, batch_of};

    use super::*;

    #[test]
    fn a_position_is_read_in_front_of_its_batch_or_alone() {
        let p = RingPosition {
            doppler: 3,
            epoch: 9,
            start: 40,
            count: 2,
            skipped: 0,
            restarted: false,
        };
        let batch = batch_of([&b"one"[..], &b"two"[..]]);
        let record = p.encode();
        let combined = Bytes::from([&record[..], &batch[..]].concat());
        let (got, rest) = split_position(&combined);
        assert_eq!(got, Some(p));
        assert_eq!(rest, batch, "the envelopes after the record, untouched");
        assert_eq!(BatchIter::new(&rest).count(), 2);
        let (got, rest) = split_position(&record);
        assert_eq!((got, rest.len()), (Some(p), 0), "a record of its own");
        let (got, rest) = split_position(&batch);
        assert_eq!((got, rest), (None, batch), "a plain batch");
        // A record whose length runs past the message is no record.
        let cut = record.slice(..record.len() - 1);
        assert_eq!(split_position(&cut).0, None);
    }

    fn at(doppler: u64, epoch: u64, offset: u64) -> At {
        At {
            doppler,
            epoch,
            offset,
        }
    }

    #[test]
    fn the_cursor_advances_and_refuses_what_was_already_given() {
        let mut t = Tracker::default();
        assert!(t.text().is_none());
        assert!(t.admit(at(1, 7, 10)));
        assert!(t.admit(at(1, 7, 11)));
        assert!(!t.admit(at(1, 7, 11)), "a duplicate");
        assert!(!t.admit(at(1, 7, 3)));
        assert!(t.admit(at(2, 1, 0)));
        // A restarted doppler starts over.
        assert!(t.admit(at(1, 8, 0)));
        let c = Cursor::decode(&t.text().unwrap()).unwrap();
        assert_eq!(c.get(1).map(|m| (m.epoch, m.next)), Some((8, 1)));
        assert_eq!(c.get(2).map(|m| m.next), Some(1));
        assert!(t.admit(At::NONE), "markers without a position always go");
    }
}
