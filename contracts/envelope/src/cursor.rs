//! Resumable subscriptions: the cursor a firehose consumer keeps, and the position record a
//! doppler's replay ring puts in front of every batch it streams.
//!
//! Where it sits: each doppler numbers the envelopes it keeps in its replay ring (an *offset*
//! per envelope, counting from 0 when the doppler starts, under a random *epoch*). A ring read
//! (a v2 `BatchedReceiver` call carrying the [`RING_FROM`] metadata) streams each batch preceded
//! by a [`RingPosition`]; the firehose edge turns those into a [`Cursor`] per consumer (one
//! [`Mark`] per doppler: the next offset it has not been given) and puts the encoded cursor in
//! every frame. A consumer that reconnects with `?cursor=` is replayed what it missed from the
//! dopplers' rings, so the cursor survives an edge restart: it lives with the consumer, the data
//! in the dopplers.
//!
//! Wire shapes, chosen so stock Loggregator v2 parsers skip them:
//! - a position record is an `EnvelopeBatch` holding only field [`POSITION_FIELD`] (a decoder
//!   that does not know it sees an empty batch);
//! - a frame's cursor is the same field appended after the envelopes of a binary frame
//!   (`EnvelopeBatch` field 100, the text of [`Cursor::encode`]) and `"cursor"` in JSON frames.
//!
//! - a ring read that reports envelopes lost (`skipped`) may follow the position record, in the
//!   same message, with a [`SOURCES_FIELD`] record saying whose they were ([`BySource`], at
//!   most [`MAX_RECORD_SOURCES`] named, the rest in `other`).
//!
//! Invariant: decoding never panics and never allocates more than the input's own size allows:
//! a cursor's text is capped at [`MAX_CURSOR_CHARS`] before it is decoded, and the number of
//! marks it claims is checked against the bytes present before anything is reserved.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{BufMut, Bytes, BytesMut};

use crate::Error;
use crate::gap::BySource;
use crate::wire::{Fields, Value, put_varint, read_varint, varint_len};

/// gRPC metadata on a `BatchedReceiver` call asking for a ring read: an offset, or `head` for
/// live data from now on.
pub const RING_FROM: &str = "hydrant-ring-from";
/// gRPC metadata bounding a ring read: the stream ends before the batch that starts at or after
/// this offset (a replay). Absent: the read follows the ring live.
pub const RING_TO: &str = "hydrant-ring-to";
/// gRPC metadata naming the epoch the `from` offset belongs to; a doppler with another epoch
/// restarted since, and reads from its oldest batch instead.
pub const RING_EPOCH: &str = "hydrant-ring-epoch";

/// The `EnvelopeBatch` field (a Hydrant extension, unknown to stock parsers) carrying a
/// position record from a doppler, or a cursor in a firehose frame.
pub const POSITION_FIELD: u32 = 100;
/// The key byte sequence of [`POSITION_FIELD`] with wire type LEN, as a varint value.
pub const POSITION_KEY: u64 = ((POSITION_FIELD as u64) << 3) | 2;

/// The `EnvelopeBatch` field (a Hydrant extension) after a position record that says whose
/// envelopes its `skipped` were.
pub const SOURCES_FIELD: u32 = 101;
/// The key of [`SOURCES_FIELD`] with wire type LEN, as a varint value.
pub const SOURCES_KEY: u64 = ((SOURCES_FIELD as u64) << 3) | 2;
/// Most sources a [`SOURCES_FIELD`] record names; a doppler sums the rest as `other`.
pub const MAX_RECORD_SOURCES: usize = 256;
/// Longest source id a [`SOURCES_FIELD`] record carries (longer ids are counted in `other`).
pub const MAX_RECORD_SOURCE_ID: usize = 256;

/// Longest cursor text accepted (a cursor for 64 dopplers is under 2 KiB).
pub const MAX_CURSOR_CHARS: usize = 4096;
/// Most dopplers one cursor may name.
pub const MAX_CURSOR_MARKS: usize = 64;

const VERSION: u8 = 1;
/// The smallest encoded mark: two fixed 8-byte ids and a one-byte varint.
const MIN_MARK_BYTES: usize = 17;

/// Where a consumer stands in one doppler's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mark {
    /// The doppler (a hash of its `instance_id`).
    pub doppler: u64,
    /// The doppler process the offsets belong to (random at its start).
    pub epoch: u64,
    /// The next offset the consumer has not been given.
    pub next: u64,
}

/// A consumer's position in every doppler: opaque to consumers, which keep the text of
/// [`Cursor::encode`] and send it back as `?cursor=`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Sorted by doppler, one mark each.
    marks: Vec<Mark>,
}

impl Cursor {
    /// The marks, sorted by doppler.
    #[must_use]
    pub fn marks(&self) -> &[Mark] {
        &self.marks
    }

    /// True when the cursor names no doppler.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// The mark for `doppler`, if any.
    #[must_use]
    pub fn get(&self, doppler: u64) -> Option<Mark> {
        self.marks
            .binary_search_by_key(&doppler, |m| m.doppler)
            .ok()
            .and_then(|i| self.marks.get(i).copied())
    }

    /// Sets the mark of `mark.doppler`, replacing the old one. A cursor already naming
    /// [`MAX_CURSOR_MARKS`] dopplers ignores new ones.
    pub fn set(&mut self, mark: Mark) {
        match self
            .marks
            .binary_search_by_key(&mark.doppler, |m| m.doppler)
        {
            Ok(i) => {
                if let Some(slot) = self.marks.get_mut(i) {
                    *slot = mark;
                }
            }
            Err(i) if self.marks.len() < MAX_CURSOR_MARKS => self.marks.insert(i, mark),
            Err(_) => {}
        }
    }

    /// The cursor as URL-safe text: base64url (no padding) of a versioned binary record.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut buf = BytesMut::with_capacity(2 + self.marks.len() * 26);
        buf.put_u8(VERSION);
        put_varint(&mut buf, self.marks.len() as u64);
        for m in &self.marks {
            buf.put_u64_le(m.doppler);
            buf.put_u64_le(m.epoch);
            put_varint(&mut buf, m.next);
        }
        URL_SAFE_NO_PAD.encode(&buf)
    }

    /// Reads a cursor back.
    ///
    /// # Errors
    /// [`Error::Cursor`] when the text is too long, not base64url, of another version, or not
    /// a well-formed record (truncated, trailing bytes, marks out of order or too many).
    pub fn decode(text: &str) -> Result<Self, Error> {
        if text.len() > MAX_CURSOR_CHARS {
            return Err(Error::Cursor("longer than 4096 characters"));
        }
        let raw = URL_SAFE_NO_PAD
            .decode(text.as_bytes())
            .map_err(|_| Error::Cursor("not base64url text"))?;
        let (&version, rest) = raw.split_first().ok_or(Error::Cursor("empty"))?;
        if version != VERSION {
            return Err(Error::Cursor("unknown version"));
        }
        let mut pos = 0;
        let n = read_varint(rest, &mut pos).map_err(|_| Error::Cursor("truncated"))?;
        let n = usize::try_from(n).map_err(|_| Error::Cursor("too many marks"))?;
        if n > MAX_CURSOR_MARKS {
            return Err(Error::Cursor("names more than 64 dopplers"));
        }
        let left = rest.len().saturating_sub(pos);
        if n.saturating_mul(MIN_MARK_BYTES) > left {
            return Err(Error::Cursor("truncated"));
        }
        let mut marks: Vec<Mark> = Vec::with_capacity(n);
        for _ in 0..n {
            let doppler = read_u64_le(rest, &mut pos)?;
            let epoch = read_u64_le(rest, &mut pos)?;
            let next = read_varint(rest, &mut pos).map_err(|_| Error::Cursor("truncated"))?;
            if marks.last().is_some_and(|last| last.doppler >= doppler) {
                return Err(Error::Cursor("marks out of order"));
            }
            marks.push(Mark {
                doppler,
                epoch,
                next,
            });
        }
        if pos != rest.len() {
            return Err(Error::Cursor("trailing bytes"));
        }
        Ok(Self { marks })
    }
}

fn read_u64_le(buf: &[u8], pos: &mut usize) -> Result<u64, Error> {
    let end = pos.checked_add(8).ok_or(Error::Cursor("truncated"))?;
    let bytes: [u8; 8] = buf
        .get(*pos..end)
        .and_then(|b| b.try_into().ok())
        .ok_or(Error::Cursor("truncated"))?;
    *pos = end;
    Ok(u64::from_le_bytes(bytes))
}

/// What a doppler says before each batch of a ring read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingPosition {
    /// The doppler (a hash of its `instance_id`).
    pub doppler: u64,
    /// The doppler process (random at its start).
    pub epoch: u64,
    /// Offset of the batch's first envelope.
    pub start: u64,
    /// Envelopes in the batch (every one of them is in the message that follows, unless the
    /// read asked for selectors that filter some out).
    pub count: u64,
    /// Envelopes between the reader's previous position and `start` that the ring no longer
    /// holds: the reader lost exactly these.
    pub skipped: u64,
    /// The read named another epoch: the doppler restarted since, and `skipped` counts only
    /// what this epoch evicted (what the old process held is gone and was never counted here).
    pub restarted: bool,
}

impl RingPosition {
    /// The offset after the batch.
    #[must_use]
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.count)
    }

    /// The record as a whole `EnvelopeBatch` message holding only [`POSITION_FIELD`].
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut payload = BytesMut::with_capacity(48);
        payload.put_u64_le(self.doppler);
        payload.put_u64_le(self.epoch);
        put_varint(&mut payload, self.start);
        put_varint(&mut payload, self.count);
        put_varint(&mut payload, self.skipped);
        put_varint(&mut payload, u64::from(self.restarted));
        let mut out = BytesMut::with_capacity(payload.len() + 4);
        put_varint(&mut out, POSITION_KEY);
        put_varint(&mut out, payload.len() as u64);
        out.put_slice(&payload);
        out.freeze()
    }

    /// Reads a position record; `None` for any message that is not exactly one.
    #[must_use]
    pub fn from_message(message: &[u8]) -> Option<Self> {
        let mut fields = Fields::new(message);
        let (POSITION_FIELD, Value::Len(payload)) = fields.next()?.ok()? else {
            return None;
        };
        if fields.next().is_some() {
            return None;
        }
        let mut pos = 0;
        let doppler = read_u64_le(payload, &mut pos).ok()?;
        let epoch = read_u64_le(payload, &mut pos).ok()?;
        let start = read_varint(payload, &mut pos).ok()?;
        let count = read_varint(payload, &mut pos).ok()?;
        let skipped = read_varint(payload, &mut pos).ok()?;
        let flags = read_varint(payload, &mut pos).ok()?;
        (pos == payload.len()).then_some(Self {
            doppler,
            epoch,
            start,
            count,
            skipped,
            restarted: flags & 1 == 1,
        })
    }
}

/// The [`SOURCES_FIELD`] record for `by` (its first [`MAX_RECORD_SOURCES`] names; what is
/// not named, or whose id is longer than [`MAX_RECORD_SOURCE_ID`], goes in `other`).
#[must_use]
pub fn encode_sources(by: &BySource) -> Bytes {
    let mut payload = BytesMut::new();
    let mut other = by.other;
    let mut named = Vec::new();
    for (source, count) in &by.top {
        if named.len() < MAX_RECORD_SOURCES && source.len() <= MAX_RECORD_SOURCE_ID {
            named.push((source, *count));
        } else {
            other = other.saturating_add(*count);
        }
    }
    put_varint(&mut payload, named.len() as u64);
    for (source, count) in named {
        put_varint(&mut payload, source.len() as u64);
        payload.put_slice(source.as_bytes());
        put_varint(&mut payload, count);
    }
    put_varint(&mut payload, other);
    let mut out = BytesMut::with_capacity(payload.len() + 4);
    put_varint(&mut out, SOURCES_KEY);
    put_varint(&mut out, payload.len() as u64);
    out.put_slice(&payload);
    out.freeze()
}

/// Takes a leading [`SOURCES_FIELD`] record off `message`: the sources it names and the rest of
/// the message (a slice, no copy). A message that does not start with a well-formed record is
/// returned whole.
#[must_use]
pub fn split_sources(message: &Bytes) -> (Option<BySource>, Bytes) {
    let mut pos = 0;
    if read_varint(message, &mut pos).ok() != Some(SOURCES_KEY) {
        return (None, message.clone());
    }
    let record = read_varint(message, &mut pos)
        .ok()
        .and_then(|len| pos.checked_add(usize::try_from(len).ok()?))
        .filter(|&end| end <= message.len())
        .and_then(|end| Some((read_sources(message.get(pos..end)?)?, end)));
    match record {
        Some((by, end)) => (Some(by), message.slice(end..)),
        None => (None, message.clone()),
    }
}

fn read_sources(payload: &[u8]) -> Option<BySource> {
    let mut pos = 0;
    let n = usize::try_from(read_varint(payload, &mut pos).ok()?).ok()?;
    // Each named source takes at least two bytes: a claim of more is refused before reserving.
    if n > MAX_RECORD_SOURCES || n.saturating_mul(2) > payload.len() {
        return None;
    }
    let mut top = Vec::with_capacity(n);
    for _ in 0..n {
        let len = usize::try_from(read_varint(payload, &mut pos).ok()?).ok()?;
        if len > MAX_RECORD_SOURCE_ID {
            return None;
        }
        let end = pos.checked_add(len)?;
        let source = std::str::from_utf8(payload.get(pos..end)?).ok()?;
        pos = end;
        let count = read_varint(payload, &mut pos).ok()?;
        top.push((source.to_owned(), count));
    }
    let other = read_varint(payload, &mut pos).ok()?;
    (pos == payload.len()).then_some(BySource { top, other })
}

/// Appends a frame's cursor (field [`POSITION_FIELD`]) after the envelopes of an encoded
/// `EnvelopeBatch`.
pub fn put_frame_cursor(frame: &mut BytesMut, cursor: &str) {
    frame.reserve(cursor.len() + 2 + varint_len(cursor.len() as u64));
    put_varint(frame, POSITION_KEY);
    put_varint(frame, cursor.len() as u64);
    frame.put_slice(cursor.as_bytes());
}

/// The stable 64-bit id of a doppler named `instance_id` (FNV-1a): the same on every edge and
/// across restarts.
#[must_use]
pub fn doppler_id(instance_id: &str) -> u64 {
    instance_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cursor(marks: &[(u64, u64, u64)]) -> Cursor {
        let mut c = Cursor::default();
        for &(doppler, epoch, next) in marks {
            c.set(Mark {
                doppler,
                epoch,
                next,
            });
        }
        c
    }

    #[test]
    fn a_cursor_is_short_url_safe_text() {
        let c = cursor(&[(doppler_id("doppler-0"), 7, 123_456), (1, 2, 0)]);
        let text = c.encode();
        assert!(text.len() < 80, "{text}");
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(Cursor::decode(&text).unwrap(), c);
        assert_eq!(c.marks()[0].doppler, 1, "sorted by doppler");
    }

    #[test]
    fn bad_cursors_are_refused_with_a_reason() {
        for bad in ["", "!!", "AA", &"A".repeat(5000), "AQ", "AgA"] {
            assert!(Cursor::decode(bad).is_err(), "{bad:?}");
        }
        // A count of a million marks with nothing behind it is refused before any allocation.
        let mut raw = vec![VERSION];
        put_varint(&mut raw, 1_000_000);
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode(&raw)).is_err());
    }

    #[test]
    fn positions_round_trip_and_look_like_empty_batches() {
        let p = RingPosition {
            doppler: 9,
            epoch: u64::MAX,
            start: 1 << 40,
            count: 100,
            skipped: 3,
            restarted: true,
        };
        let m = p.encode();
        assert_eq!(RingPosition::from_message(&m), Some(p));
        use prost::Message as _;
        let batch = crate::v2::EnvelopeBatch::decode(&m[..]).unwrap();
        assert!(batch.batch.is_empty(), "stock decoders skip the record");
        assert_eq!(RingPosition::from_message(&crate::wire::batch_of([])), None);
    }

    #[test]
    fn a_frame_cursor_is_skipped_by_stock_decoders() {
        use prost::Message as _;
        let env = crate::wire::encode(&crate::v2::Envelope {
            source_id: "a".into(),
            ..Default::default()
        });
        let mut frame = BytesMut::from(&crate::wire::batch_of([&env[..]])[..]);
        put_frame_cursor(&mut frame, "abc");
        let batch = crate::v2::EnvelopeBatch::decode(&frame[..]).unwrap();
        assert_eq!(batch.batch.len(), 1);
    }

    proptest! {
        #[test]
        fn any_cursor_round_trips(marks in proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u64>()), 0..64)) {
            let c = cursor(&marks);
            prop_assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        }

        #[test]
        fn decoding_arbitrary_text_never_panics(text in "[A-Za-z0-9_-]{0,200}") {
            let _ = Cursor::decode(&text);
        }

        #[test]
        fn decoding_arbitrary_records_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Cursor::decode(&URL_SAFE_NO_PAD.encode(&raw));
            let _ = RingPosition::from_message(&raw);
            let mut keyed = BytesMut::new();
            put_varint(&mut keyed, SOURCES_KEY);
            put_varint(&mut keyed, raw.len() as u64);
            keyed.put_slice(&raw);
            let _ = split_sources(&keyed.freeze());
        }

        #[test]
        fn a_sources_record_round_trips_and_keeps_its_total(
            top in proptest::collection::vec(("[a-z0-9-]{1,40}", any::<u32>()), 0..300),
            other in any::<u32>(),
        ) {
            let by = BySource {
                top: top.into_iter().map(|(s, c)| (s, u64::from(c))).collect(),
                other: u64::from(other),
            };
            let batch = crate::wire::batch_of([&b"x"[..]]);
            let message = Bytes::from([&encode_sources(&by)[..], &batch[..]].concat());
            let (back, rest) = split_sources(&message);
            let back = back.unwrap();
            prop_assert_eq!(back.total(), by.total());
            prop_assert!(back.top.len() <= MAX_RECORD_SOURCES);
            prop_assert_eq!(&back.top[..], &by.top[..back.top.len()]);
            prop_assert_eq!(rest, batch);
        }
    }
}
