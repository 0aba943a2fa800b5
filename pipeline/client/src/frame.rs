//! Turns one binary WebSocket frame (an encoded `EnvelopeBatch`) into stream events: runs of
//! ordinary envelopes as [`Batch`]es, and every loss as a [`Gap`] at the position it happened.
//!
//! Sits in the socket reader task, between the socket and the bounded event queue.
//!
//! Invariants:
//! - zero-copy on the common path: a frame with no gap marker, no sequence jump and no bad
//!   envelope becomes one `Batch` sharing the frame's buffer; otherwise the frame is cut into
//!   sub-slices (still no copy), because a run of whole `field 1` records is itself a valid
//!   `EnvelopeBatch`;
//! - every envelope is either in a yielded batch, or is a gap marker surfaced as a `Gap`, or is
//!   counted as malformed and surfaced as a `Gap` with hop `client`;
//! - the sequence memory is bounded by `max_tracked_sources`;
//! - the frame's cursor (`EnvelopeBatch` field 100, after the envelopes) is taken when it is
//!   short URL-safe text, put on the frame's last batch, and never counted as an envelope.

use std::collections::HashMap;
use std::fmt::Write as _;

use bytes::Bytes;
use std::sync::Arc;

use hydrant_envelope::cursor::{MAX_CURSOR_CHARS, POSITION_KEY};
use hydrant_envelope::gap::{GAP_SOURCE, Gap};
use hydrant_envelope::wire::{EnvelopeView, read_varint};

use crate::{Batch, StreamEvent};

/// `field 1, wire type LEN`: the only field of `EnvelopeBatch`.
const BATCH_ENTRY_KEY: u64 = (1 << 3) | 2;

/// Per-(source_id, instance_id, hydrant_sequence_stream) memory of the last `hydrant_sequence`,
/// bounded. The stream is the stamping agent's numbering: a router host's agent and the app's
/// cell agent both number the app's (source_id, instance_id), so only numbers of one stream are
/// compared.
///
/// Two generations: lookups hit the young map, fall back to the old one (and promote); when the
/// young map is full it becomes the old one and the previous old one is forgotten. This bounds
/// memory at `capacity` entries with O(1) work per envelope and forgets the least recently seen
/// sources first, without an LRU list.
#[derive(Debug)]
pub(crate) struct SequenceTracker {
    enabled: bool,
    half: usize,
    young: HashMap<String, u64>,
    old: HashMap<String, u64>,
    /// Reused to build lookup keys, so a known source costs no allocation.
    scratch: String,
}

impl SequenceTracker {
    pub(crate) fn new(capacity: usize, enabled: bool) -> Self {
        Self {
            enabled,
            half: (capacity / 2).max(1),
            young: HashMap::new(),
            old: HashMap::new(),
            scratch: String::new(),
        }
    }

    /// Records `view`'s sequence; returns how many envelopes were skipped since the last one
    /// seen from the same (source_id, instance_id) in the same numbering
    /// (`hydrant_sequence_stream`; 0, from an agent that names none, is a numbering of its
    /// own), if any. Envelopes with no sequence (a stock Loggregator agent's) are not tracked.
    pub(crate) fn observe(&mut self, view: &EnvelopeView<'_>) -> Option<u64> {
        if !self.enabled || view.sequence == 0 {
            return None;
        }
        self.scratch.clear();
        self.scratch.push_str(view.source_id);
        self.scratch.push('\0');
        self.scratch.push_str(view.instance_id);
        self.scratch.push('\0');
        // Hex into the reused buffer: no allocation for a known key.
        let _ = write!(self.scratch, "{:x}", view.sequence_stream);
        let previous = if let Some(last) = self.young.get_mut(self.scratch.as_str()) {
            std::mem::replace(last, view.sequence)
        } else {
            let previous = self.old.remove(self.scratch.as_str());
            if self.young.len() >= self.half {
                self.old = std::mem::take(&mut self.young);
            }
            self.young.insert(self.scratch.clone(), view.sequence);
            previous?
        };
        // A lower or equal number is a restarted emitter or a duplicate: nothing provably lost,
        // so only re-baseline.
        let skipped = view.sequence.checked_sub(previous)?.checked_sub(1)?;
        (skipped > 0).then_some(skipped)
    }

    /// Forgets what an upstream gap marker already accounted for, so the same loss is not
    /// reported twice (once by the marker, once as a sequence jump).
    pub(crate) fn forget(&mut self, source_id: &str) {
        if source_id == GAP_SOURCE {
            self.young.clear();
            self.old.clear();
            return;
        }
        let keep = |k: &String, _: &mut u64| {
            k.strip_prefix(source_id)
                .is_none_or(|rest| !rest.starts_with('\0'))
        };
        self.young.retain(keep);
        self.old.retain(keep);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// What one frame contained, for the client's stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameCounts {
    pub envelopes: u64,
    pub gap_markers: u64,
    pub marked_lost: u64,
    pub sequence_gaps: u64,
    pub sequence_lost: u64,
    pub malformed: u64,
}

/// A run of contiguous good records being collected.
#[derive(Debug, Default)]
struct Run {
    start: usize,
    end: usize,
    count: usize,
}

impl Run {
    fn flush(&mut self, frame: &Bytes, out: &mut Vec<StreamEvent>) {
        if self.count > 0 {
            out.push(StreamEvent::Batch(Batch::trusted(
                frame.slice(self.start..self.end),
                self.count,
            )));
        }
        self.count = 0;
    }
}

fn malformed_gap(count: u64) -> Gap {
    Gap {
        source_id: GAP_SOURCE.to_owned(),
        dropped: count,
        hop: "client".to_owned(),
        reason: "malformed_envelope".to_owned(),
        by_source: Default::default(),
    }
}

/// Splits `frame` into events appended to `out`; a cursor the frame carries replaces `cursor`.
pub(crate) fn split_frame(
    frame: &Bytes,
    tracker: &mut SequenceTracker,
    out: &mut Vec<StreamEvent>,
    cursor: &mut Option<Arc<str>>,
) -> FrameCounts {
    let buf: &[u8] = frame;
    let first_event = out.len();
    let mut counts = FrameCounts::default();
    let mut run = Run::default();
    let mut pending_malformed = 0u64;
    let mut pos = 0;
    let mut found: Option<Arc<str>> = None;
    while pos < buf.len() {
        let record_start = pos;
        if let Some(text) = frame_cursor(buf, &mut pos) {
            found = text.map(Arc::from);
            continue;
        }
        let Some(envelope) = next_record(buf, &mut pos) else {
            // The rest of the frame cannot be walked: at least one envelope is lost.
            pending_malformed += 1;
            break;
        };
        let Ok(view) = EnvelopeView::parse(envelope) else {
            run.flush(frame, out);
            pending_malformed += 1;
            continue;
        };
        if pending_malformed > 0 {
            counts.malformed += pending_malformed;
            out.push(StreamEvent::Gap(malformed_gap(pending_malformed)));
            pending_malformed = 0;
        }
        if let Some(gap) = Gap::from_view(&view) {
            run.flush(frame, out);
            tracker.forget(&gap.source_id);
            counts.gap_markers += 1;
            counts.marked_lost += gap.dropped;
            out.push(StreamEvent::Gap(gap));
            continue;
        }
        if let Some(skipped) = tracker.observe(&view) {
            run.flush(frame, out);
            counts.sequence_gaps += 1;
            counts.sequence_lost += skipped;
            out.push(StreamEvent::Gap(Gap {
                source_id: view.source_id.to_owned(),
                dropped: skipped,
                hop: "upstream".to_owned(),
                reason: "sequence_gap".to_owned(),
                by_source: Default::default(),
            }));
        }
        if run.count == 0 {
            run.start = record_start;
        }
        run.end = pos;
        run.count += 1;
        counts.envelopes += 1;
    }
    run.flush(frame, out);
    if pending_malformed > 0 {
        counts.malformed += pending_malformed;
        out.push(StreamEvent::Gap(malformed_gap(pending_malformed)));
    }
    if let Some(found) = found {
        let last = out
            .iter_mut()
            .skip(first_event)
            .rev()
            .find_map(|e| match e {
                StreamEvent::Batch(b) => Some(b),
                _ => None,
            });
        if let Some(batch) = last {
            batch.set_cursor(found.clone());
        }
        *cursor = Some(found);
    }
    counts
}

/// When a cursor record starts at `*pos`: moves past it and gives its text (`None` inside when
/// it is not short URL-safe text, which is then ignored). `None` for any other record.
fn frame_cursor<'a>(buf: &'a [u8], pos: &mut usize) -> Option<Option<&'a str>> {
    let mut at = *pos;
    if read_varint(buf, &mut at).ok()? != POSITION_KEY {
        return None;
    }
    let len = usize::try_from(read_varint(buf, &mut at).ok()?).ok()?;
    let end = at.checked_add(len)?;
    let bytes = buf.get(at..end)?;
    *pos = end;
    let usable = len <= MAX_CURSOR_CHARS
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    Some(usable.then(|| std::str::from_utf8(bytes).ok()).flatten())
}

/// Reads one `EnvelopeBatch` entry at `*pos`; `None` when the bytes there are not one.
fn next_record<'a>(buf: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    if read_varint(buf, pos).ok()? != BATCH_ENTRY_KEY {
        return None;
    }
    let len = usize::try_from(read_varint(buf, pos).ok()?).ok()?;
    let end = pos.checked_add(len)?;
    let record = buf.get(*pos..end)?;
    *pos = end;
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrant_envelope::v2;
    use hydrant_envelope::wire::{BatchBuilder, encode};

    fn log(source: &str, instance: &str, seq: u64) -> Bytes {
        encode(&v2::Envelope {
            source_id: source.to_owned(),
            instance_id: instance.to_owned(),
            hydrant_sequence: seq,
            message: Some(v2::envelope::Message::Log(v2::Log::default())),
            ..v2::Envelope::default()
        })
    }

    fn frame(envelopes: &[Bytes]) -> Bytes {
        let mut b = BatchBuilder::default();
        for e in envelopes {
            b.push(e);
        }
        b.take()
    }

    fn shape(events: &[StreamEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                StreamEvent::Batch(b) => format!("batch{}", b.len()),
                StreamEvent::Gap(g) => format!("gap{}:{}:{}", g.dropped, g.hop, g.reason),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_frame_cursor_goes_on_the_last_batch_and_is_no_envelope() {
        let mut f = bytes::BytesMut::from(&frame(&[log("a", "0", 1), log("a", "0", 2)])[..]);
        hydrant_envelope::cursor::put_frame_cursor(&mut f, "AQEabc_-");
        let f = f.freeze();
        let mut t = SequenceTracker::new(100, true);
        let mut out = Vec::new();
        let mut cursor = None;
        let c = split_frame(&f, &mut t, &mut out, &mut cursor);
        assert_eq!(shape(&out), ["batch2"]);
        assert_eq!(c.malformed, 0);
        let StreamEvent::Batch(b) = &out[0] else {
            unreachable!()
        };
        assert_eq!(b.cursor(), Some("AQEabc_-"));
        assert_eq!(cursor.as_deref(), Some("AQEabc_-"));
        // Text that is not URL-safe is ignored, never sent back.
        let mut f = bytes::BytesMut::from(&frame(&[log("a", "0", 3)])[..]);
        hydrant_envelope::cursor::put_frame_cursor(&mut f, "a b\n");
        let mut out = Vec::new();
        split_frame(&f.freeze(), &mut t, &mut out, &mut cursor);
        assert_eq!(shape(&out), ["batch1"]);
        assert_eq!(cursor.as_deref(), Some("AQEabc_-"));
    }

    #[test]
    fn clean_frame_is_one_zero_copy_batch() {
        let f = frame(&[log("a", "0", 1), log("a", "0", 2)]);
        let mut t = SequenceTracker::new(100, true);
        let mut out = Vec::new();
        let c = split_frame(&f, &mut t, &mut out, &mut None);
        assert_eq!(shape(&out), ["batch2"]);
        let StreamEvent::Batch(b) = &out[0] else {
            unreachable!()
        };
        assert_eq!(b.bytes().as_ptr(), f.as_ptr(), "shares the frame buffer");
        assert_eq!(c.envelopes, 2);
    }

    #[test]
    fn markers_and_sequence_jumps_become_gaps_in_place() {
        let marker = Gap {
            source_id: GAP_SOURCE.to_owned(),
            dropped: 9,
            hop: "firehose".to_owned(),
            reason: "slow_consumer".to_owned(),
            by_source: Default::default(),
        }
        .encode();
        let f = frame(&[
            log("a", "0", 1),
            log("a", "0", 4),
            log("a", "1", 1),
            marker,
            log("a", "0", 10),
        ]);
        let mut t = SequenceTracker::new(100, true);
        let mut out = Vec::new();
        let c = split_frame(&f, &mut t, &mut out, &mut None);
        assert_eq!(
            shape(&out),
            [
                "batch1",
                "gap2:upstream:sequence_gap",
                "batch2",
                "gap9:firehose:slow_consumer",
                "batch1"
            ]
        );
        assert_eq!((c.envelopes, c.sequence_lost, c.marked_lost), (4, 2, 9));
        let total: usize = out
            .iter()
            .map(|e| match e {
                StreamEvent::Batch(b) => b.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(total, 4);
    }

    #[test]
    fn malformed_envelopes_are_counted_gaps() {
        let bad = Bytes::from_static(&[0x08]); // field 1 varint with no value
        let f = frame(&[log("a", "", 0), bad.clone(), bad, log("a", "", 0)]);
        let mut t = SequenceTracker::new(100, true);
        let mut out = Vec::new();
        let c = split_frame(&f, &mut t, &mut out, &mut None);
        assert_eq!(
            shape(&out),
            ["batch1", "gap2:client:malformed_envelope", "batch1"]
        );
        assert_eq!(c.malformed, 2);

        let mut out = Vec::new();
        let c = split_frame(
            &Bytes::from_static(b"\xff\xff"),
            &mut t,
            &mut out,
            &mut None,
        );
        assert_eq!(shape(&out), ["gap1:client:malformed_envelope"]);
        assert_eq!(c.malformed, 1);
    }

    #[test]
    fn two_agents_numbering_one_instance_are_not_loss_but_a_jump_in_one_is() {
        // A router host's agent and the app's cell agent both stamp ("app", "0").
        let stamped = |stream: u64, seqs: &[u64]| -> Vec<Bytes> {
            let mut b = BatchBuilder::with_capacity(256).with_sequence_stream(stream);
            for &seq in seqs {
                b.push_with_sequence(&log("app", "0", 0), seq);
            }
            let batch = b.take();
            let mut pos = 0;
            std::iter::from_fn(|| next_record(&batch, &mut pos).map(Bytes::copy_from_slice))
                .collect()
        };
        let (cell, router) = (stamped(11, &[1, 2, 3, 4, 9]), stamped(22, &[1, 2, 3]));
        let mut t = SequenceTracker::new(100, true);
        let mut seen = Vec::new();
        for (c, r) in cell
            .iter()
            .zip(router.iter().chain(std::iter::repeat(&router[2])))
        {
            seen.push(t.observe(&EnvelopeView::parse(c).unwrap()));
            seen.push(t.observe(&EnvelopeView::parse(r).unwrap()));
        }
        // Interleaved, the two numberings never look like loss (the repeated 3 of the router's
        // stream is a duplicate, not loss); the cell's own jump from 4 to 9 is 4 lost.
        assert_eq!(
            seen,
            [
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                Some(4),
                None
            ]
        );
    }

    /// One envelope of ("app", "0") as an agent stamps it.
    fn stamped(sequence: u64, stream: u64) -> Bytes {
        let mut b = BatchBuilder::with_capacity(64);
        b.push_stamped(&log("app", "0", 0), sequence, stream);
        let batch = b.take();
        let mut pos = 0;
        Bytes::copy_from_slice(next_record(&batch, &mut pos).unwrap())
    }

    proptest::proptest! {
        /// However several agents' numberings of one instance interleave (the first may be an
        /// agent that names no stream), the checker reports exactly the hole one of them has,
        /// once, and nothing else.
        #[test]
        fn the_checker_compares_numbers_only_within_one_numbering(
            lens in proptest::collection::vec(2u64..40, 1..5),
            order in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..300),
            holed in proptest::prelude::any::<usize>(),
            hole in 0u64..5,
            legacy in proptest::prelude::any::<bool>(),
        ) {
            let holed = holed % lens.len();
            let mut queues: Vec<std::collections::VecDeque<(u64, u64)>> = lens
                .iter()
                .enumerate()
                .map(|(i, &len)| {
                    let stream = if legacy && i == 0 { 0 } else { 0xa9e0 + i as u64 };
                    let extra = if i == holed { hole } else { 0 };
                    // The hole starts at 2: a number before it and one after it arrive.
                    (1..=len + extra)
                        .filter(|&n| i != holed || !(2..2 + hole).contains(&n))
                        .map(|n| (n, stream))
                        .collect()
                })
                .collect();
            let mut t = SequenceTracker::new(1000, true);
            let mut reported = Vec::new();
            let mut pick = order.into_iter();
            while queues.iter().any(|q| !q.is_empty()) {
                let live: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].is_empty()).collect();
                let i = live[pick.next().unwrap_or(0) % live.len()];
                let (n, stream) = queues[i].pop_front().unwrap();
                if let Some(skipped) = t.observe(&EnvelopeView::parse(&stamped(n, stream)).unwrap()) {
                    reported.push(skipped);
                }
            }
            let want: Vec<u64> = if hole > 0 { vec![hole] } else { vec![] };
            proptest::prop_assert_eq!(reported, want);
        }
    }

    #[test]
    fn numbers_with_no_stream_keep_the_old_keying_and_no_sequence_is_never_loss() {
        let mut t = SequenceTracker::new(100, true);
        let seen: Vec<Option<u64>> = [(1, 0), (2, 0), (5, 0), (0, 0), (0, 7), (6, 0)]
            .iter()
            .map(|&(n, stream)| t.observe(&EnvelopeView::parse(&stamped(n, stream)).unwrap()))
            .collect();
        assert_eq!(seen, [None, None, Some(2), None, None, None]);
    }

    #[test]
    fn tracker_is_bounded_and_restarts_are_not_loss() {
        let mut t = SequenceTracker::new(10, true);
        for i in 0..1000u64 {
            let e = log(&format!("s{i}"), "0", 1);
            let v = EnvelopeView::parse(&e).unwrap();
            assert_eq!(t.observe(&v), None);
        }
        assert!(t.len() <= 10);
        let e1 = log("x", "0", 50);
        let e2 = log("x", "0", 3);
        assert_eq!(t.observe(&EnvelopeView::parse(&e1).unwrap()), None);
        assert_eq!(t.observe(&EnvelopeView::parse(&e2).unwrap()), None);
        let e3 = log("x", "0", 4);
        assert_eq!(t.observe(&EnvelopeView::parse(&e3).unwrap()), None);
        let e4 = log("x", "0", 7);
        assert_eq!(t.observe(&EnvelopeView::parse(&e4).unwrap()), Some(2));
        t.forget("x");
        let e5 = log("x", "0", 70);
        assert_eq!(t.observe(&EnvelopeView::parse(&e5).unwrap()), None);
    }

    #[test]
    fn disabled_tracker_reports_nothing() {
        let mut t = SequenceTracker::new(10, false);
        let f = frame(&[log("a", "0", 1), log("a", "0", 5)]);
        let mut out = Vec::new();
        split_frame(&f, &mut t, &mut out, &mut None);
        assert_eq!(shape(&out), ["batch2"]);
    }
}
