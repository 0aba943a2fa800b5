//! A zero-copy walker over encoded `loggregator.v2` envelopes and batches.
//!
//! Every hop forwards envelopes as encoded bytes. Decoding with prost costs ~0.8 µs per envelope
//! and re-encoding more; walking the wire format to slice envelopes and peek at their routing
//! fields costs a few tens of nanoseconds. This module is that walk.
//!
//! Invariant: every length read from the wire is checked against the bytes actually present
//! before it is used, nothing allocates in proportion to a wire length, and no input panics.
//! [`EnvelopeView::parse`] validates an envelope deeply enough that a stock prost decoder will
//! accept whatever it accepted (structure, wire types of known fields, UTF-8 of string fields).

use bytes::{BufMut, Bytes, BytesMut};

use crate::Error;

/// Protobuf wire types used by proto3.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Field number of the Hydrant sequence extension on `Envelope`.
pub const SEQUENCE_FIELD: u32 = 100;
/// Field number of `hydrant_sequence_stream`: which agent's numbering the sequence is.
pub const SEQUENCE_STREAM_FIELD: u32 = 101;

/// One decoded field value. Length-delimited values borrow the input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2.
    Len(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
}

impl Value<'_> {
    fn wire_type(&self) -> u8 {
        match self {
            Value::Varint(_) => VARINT,
            Value::Fixed64(_) => FIXED64,
            Value::Len(_) => LEN,
            Value::Fixed32(_) => FIXED32,
        }
    }
}

/// Reads one varint at `*pos`, advancing it.
///
/// # Errors
/// [`Error::Truncated`] or [`Error::VarintOverflow`].
#[inline]
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, Error> {
    // One byte holds every key of a field below 16, every length under 128 and most tag and
    // enum values: the common case stays inline, longer varints take the loop out of line.
    if let Some(&byte) = buf.get(*pos)
        && byte < 0x80
    {
        *pos += 1;
        return Ok(u64::from(byte));
    }
    read_varint_long(buf, pos)
}

#[inline(never)]
fn read_varint_long(buf: &[u8], pos: &mut usize) -> Result<u64, Error> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let Some(&byte) = buf.get(*pos) else {
            return Err(Error::Truncated);
        };
        *pos += 1;
        // The tenth byte holds only bit 63; anything more overflows u64 and prost rejects it,
        // so accepting it here would forward an envelope no consumer can decode.
        if i == 9 && byte > 1 {
            return Err(Error::VarintOverflow);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(Error::VarintOverflow)
}

/// Whether `bytes` is UTF-8, for strings that are checked but not read: short ASCII (tag keys
/// and values, metric names) is decided inline, a word at a time, without the call.
#[inline]
fn is_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

/// Iterates over the fields of one encoded message. Stops after the first error.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    /// Walks `buf` as one protobuf message.
    #[must_use]
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            failed: false,
        }
    }

    #[inline]
    fn next_field(&mut self) -> Result<(u32, Value<'a>), Error> {
        let raw_key = read_varint(self.buf, &mut self.pos)?;
        // Keys are 32-bit on the wire; a wider one is rejected by every protobuf decoder.
        let key = u32::try_from(raw_key).map_err(|_| Error::InvalidKey(raw_key))?;
        let wire = (key & 7) as u8;
        let number = key >> 3;
        if number == 0 {
            return Err(Error::InvalidKey(raw_key));
        }
        let value = match wire {
            VARINT => Value::Varint(read_varint(self.buf, &mut self.pos)?),
            FIXED64 => {
                let end = self.pos.checked_add(8).ok_or(Error::Truncated)?;
                let bytes = self.buf.get(self.pos..end).ok_or(Error::Truncated)?;
                self.pos = end;
                let mut raw = [0u8; 8];
                raw.copy_from_slice(bytes);
                Value::Fixed64(u64::from_le_bytes(raw))
            }
            LEN => {
                let len = read_varint(self.buf, &mut self.pos)?;
                let len = usize::try_from(len).map_err(|_| Error::Truncated)?;
                let end = self.pos.checked_add(len).ok_or(Error::Truncated)?;
                let bytes = self.buf.get(self.pos..end).ok_or(Error::Truncated)?;
                self.pos = end;
                Value::Len(bytes)
            }
            FIXED32 => {
                let end = self.pos.checked_add(4).ok_or(Error::Truncated)?;
                let bytes = self.buf.get(self.pos..end).ok_or(Error::Truncated)?;
                self.pos = end;
                let mut raw = [0u8; 4];
                raw.copy_from_slice(bytes);
                Value::Fixed32(u32::from_le_bytes(raw))
            }
            other => return Err(Error::WireType(other)),
        };
        Ok((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let item = self.next_field();
        if item.is_err() {
            self.failed = true;
        }
        Some(item)
    }
}

fn expect_len<'a>(field: u32, value: Value<'a>) -> Result<&'a [u8], Error> {
    match value {
        Value::Len(b) => Ok(b),
        other => Err(Error::FieldType {
            field,
            got: other.wire_type(),
            expected: LEN,
        }),
    }
}

fn expect_varint(field: u32, value: Value<'_>) -> Result<u64, Error> {
    match value {
        Value::Varint(v) => Ok(v),
        other => Err(Error::FieldType {
            field,
            got: other.wire_type(),
            expected: VARINT,
        }),
    }
}

fn expect_fixed64(field: u32, value: Value<'_>) -> Result<u64, Error> {
    match value {
        Value::Fixed64(v) => Ok(v),
        other => Err(Error::FieldType {
            field,
            got: other.wire_type(),
            expected: FIXED64,
        }),
    }
}

fn expect_str<'a>(name: &'static str, field: u32, value: Value<'a>) -> Result<&'a str, Error> {
    std::str::from_utf8(expect_len(field, value)?).map_err(|_| Error::Utf8(name))
}

/// [`expect_str`] for a string that is only validated, never read.
#[inline]
fn check_str(name: &'static str, field: u32, value: Value<'_>) -> Result<(), Error> {
    if is_utf8(expect_len(field, value)?) {
        Ok(())
    } else {
        Err(Error::Utf8(name))
    }
}

/// Which member of the envelope's `message` oneof is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Kind {
    /// No message: stock clients may send this; it is forwarded but matches no selector.
    #[default]
    None,
    /// `Log`, field 4.
    Log,
    /// `Counter`, field 5.
    Counter,
    /// `Gauge`, field 6.
    Gauge,
    /// `Timer`, field 7.
    Timer,
    /// `Event`, field 10.
    Event,
}

impl Kind {
    /// The name Log Cache uses for this type in `envelope_types`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::None => "NONE",
            Kind::Log => "LOG",
            Kind::Counter => "COUNTER",
            Kind::Gauge => "GAUGE",
            Kind::Timer => "TIMER",
            Kind::Event => "EVENT",
        }
    }
}

/// The routing fields of one encoded envelope, borrowed from its bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvelopeView<'a> {
    bytes: &'a [u8],
    /// `timestamp`, UNIX ns.
    pub timestamp: i64,
    /// `source_id`.
    pub source_id: &'a str,
    /// `instance_id`.
    pub instance_id: &'a str,
    /// Which message the envelope carries.
    pub kind: Kind,
    body: &'a [u8],
    /// The Hydrant sequence number (field 100), 0 when absent.
    pub sequence: u64,
    /// The numbering the sequence belongs to (field 101, one per agent process), 0 when absent.
    pub sequence_stream: u64,
}

fn validate_map_entry(
    bytes: &[u8],
    key_name: &'static str,
    value: impl Fn(Value<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut fields = Fields::new(bytes);
    while fields.pos < bytes.len() {
        match fields.next_field()? {
            (1, v) => check_str(key_name, 1, v)?,
            (2, v) => value(v)?,
            _ => {}
        }
    }
    Ok(())
}

fn validate_tag_value(v: Value<'_>) -> Result<(), Error> {
    // loggregator.v2.Value: oneof { string text = 1; int64 integer = 2; double decimal = 3; }
    for field in Fields::new(expect_len(2, v)?) {
        match field? {
            (1, v) => check_str("deprecated_tags.value.text", 1, v)?,
            (2, v) => {
                expect_varint(2, v)?;
            }
            (3, v) => {
                expect_fixed64(3, v)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn validate_body(kind: Kind, body: &[u8]) -> Result<(), Error> {
    let mut fields = Fields::new(body);
    while fields.pos < body.len() {
        let (number, value) = fields.next_field()?;
        match (kind, number) {
            (Kind::Log, 1) => {
                expect_len(1, value)?;
            }
            (Kind::Log, 2) | (Kind::Counter | Kind::Timer, 2 | 3) => {
                expect_varint(number, value)?;
            }
            (Kind::Counter | Kind::Timer, 1) => check_str("name", 1, value)?,
            (Kind::Event, 1 | 2) => check_str("event", number, value)?,
            (Kind::Gauge, 1) => {
                validate_map_entry(expect_len(1, value)?, "gauge metric name", |v| {
                    for f in Fields::new(expect_len(2, v)?) {
                        match f? {
                            (1, u) => check_str("gauge unit", 1, u)?,
                            (2, d) => {
                                expect_fixed64(2, d)?;
                            }
                            _ => {}
                        }
                    }
                    Ok(())
                })?
            }
            _ => {}
        }
    }
    Ok(())
}

impl<'a> EnvelopeView<'a> {
    /// Parses and validates one encoded `Envelope`.
    ///
    /// # Errors
    /// Any structural problem a prost decoder would reject, or an envelope over
    /// [`crate::MAX_ENVELOPE_BYTES`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        if bytes.len() > crate::MAX_ENVELOPE_BYTES {
            return Err(Error::TooLarge {
                size: bytes.len(),
                limit: crate::MAX_ENVELOPE_BYTES,
            });
        }
        let mut view = EnvelopeView {
            bytes,
            ..EnvelopeView::default()
        };
        // The walk itself rather than the iterator: a malformed field ends the parse anyway, so
        // the iterator's stop-after-error state is not needed on the hottest loop.
        let mut fields = Fields::new(bytes);
        while fields.pos < bytes.len() {
            let (number, value) = fields.next_field()?;
            match number {
                1 => view.timestamp = expect_varint(1, value)? as i64,
                2 => view.source_id = expect_str("source_id", 2, value)?,
                8 => view.instance_id = expect_str("instance_id", 8, value)?,
                3 => validate_map_entry(
                    expect_len(3, value)?,
                    "deprecated_tags key",
                    validate_tag_value,
                )?,
                9 => validate_map_entry(expect_len(9, value)?, "tags key", |v| {
                    check_str("tags value", 2, v)
                })?,
                4 | 5 | 6 | 7 | 10 => {
                    let body = expect_len(number, value)?;
                    let kind = match number {
                        4 => Kind::Log,
                        5 => Kind::Counter,
                        6 => Kind::Gauge,
                        7 => Kind::Timer,
                        _ => Kind::Event,
                    };
                    validate_body(kind, body)?;
                    view.kind = kind;
                    view.body = body;
                }
                SEQUENCE_FIELD => view.sequence = expect_varint(SEQUENCE_FIELD, value)?,
                SEQUENCE_STREAM_FIELD => {
                    view.sequence_stream = expect_varint(SEQUENCE_STREAM_FIELD, value)?;
                }
                _ => {}
            }
        }
        Ok(view)
    }

    /// The whole encoded envelope.
    #[must_use]
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The encoded body of the oneof message (empty for [`Kind::None`]).
    #[must_use]
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// `counter.name` for a counter (the field the doppler's counter selectors match).
    #[must_use]
    pub fn counter_name(&self) -> Option<&'a str> {
        self.named_body(Kind::Counter)
    }

    /// `timer.name` for a timer.
    #[must_use]
    pub fn timer_name(&self) -> Option<&'a str> {
        self.named_body(Kind::Timer)
    }

    fn named_body(&self, kind: Kind) -> Option<&'a str> {
        if self.kind != kind {
            return None;
        }
        let mut name = "";
        for (n, v) in Fields::new(self.body).flatten() {
            if let (1, Value::Len(b)) = (n, v) {
                name = std::str::from_utf8(b).ok()?;
            }
        }
        Some(name)
    }

    /// `(start, stop)` of a timer, in ns.
    #[must_use]
    pub fn timer_span(&self) -> Option<(i64, i64)> {
        if self.kind != Kind::Timer {
            return None;
        }
        let (mut start, mut stop) = (0i64, 0i64);
        for (n, v) in Fields::new(self.body).flatten() {
            match (n, v) {
                (2, Value::Varint(x)) => start = x as i64,
                (3, Value::Varint(x)) => stop = x as i64,
                _ => {}
            }
        }
        Some((start, stop))
    }

    /// The metric names of a gauge, in wire order (duplicates possible on hostile input).
    pub fn gauge_names(&self) -> impl Iterator<Item = &'a str> + 'a {
        let body = if self.kind == Kind::Gauge {
            self.body
        } else {
            &[]
        };
        Fields::new(body)
            .flatten()
            .filter_map(|(n, v)| match (n, v) {
                (1, Value::Len(entry)) => {
                    Fields::new(entry)
                        .flatten()
                        .find_map(|(k, kv)| match (k, kv) {
                            (1, Value::Len(name)) => std::str::from_utf8(name).ok(),
                            _ => None,
                        })
                }
                _ => None,
            })
    }

    /// The gauge's `(name, value, unit)` triples.
    pub fn gauge_values(&self) -> impl Iterator<Item = (&'a str, f64, &'a str)> + 'a {
        let body = if self.kind == Kind::Gauge {
            self.body
        } else {
            &[]
        };
        Fields::new(body).flatten().filter_map(|(n, v)| {
            let (1, Value::Len(entry)) = (n, v) else {
                return None;
            };
            let (mut name, mut value, mut unit) = ("", 0.0, "");
            for (k, kv) in Fields::new(entry).flatten() {
                match (k, kv) {
                    (1, Value::Len(b)) => name = std::str::from_utf8(b).ok()?,
                    (2, Value::Len(gv)) => {
                        for (g, gvv) in Fields::new(gv).flatten() {
                            match (g, gvv) {
                                (1, Value::Len(u)) => unit = std::str::from_utf8(u).ok()?,
                                (2, Value::Fixed64(d)) => value = f64::from_bits(d),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            Some((name, value, unit))
        })
    }

    /// `log.payload` and whether it is `ERR` (`log.type == 1`).
    #[must_use]
    pub fn log(&self) -> Option<(&'a [u8], bool)> {
        if self.kind != Kind::Log {
            return None;
        }
        let (mut payload, mut err): (&[u8], bool) = (&[], false);
        for (n, v) in Fields::new(self.body).flatten() {
            match (n, v) {
                (1, Value::Len(b)) => payload = b,
                (2, Value::Varint(t)) => err = t == 1,
                _ => {}
            }
        }
        Some((payload, err))
    }

    /// `event.title` and `event.body`.
    #[must_use]
    pub fn event(&self) -> Option<(&'a str, &'a str)> {
        if self.kind != Kind::Event {
            return None;
        }
        let (mut title, mut body) = ("", "");
        for (n, v) in Fields::new(self.body).flatten() {
            match (n, v) {
                (1, Value::Len(b)) => title = std::str::from_utf8(b).unwrap_or(""),
                (2, Value::Len(b)) => body = std::str::from_utf8(b).unwrap_or(""),
                _ => {}
            }
        }
        Some((title, body))
    }

    /// The string `tags` map entries, in wire order.
    pub fn tags(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        Fields::new(self.bytes).flatten().filter_map(|(n, v)| {
            let (9, Value::Len(entry)) = (n, v) else {
                return None;
            };
            let (mut key, mut value) = ("", "");
            for (k, kv) in Fields::new(entry).flatten() {
                match (k, kv) {
                    (1, Value::Len(b)) => key = std::str::from_utf8(b).ok()?,
                    (2, Value::Len(b)) => value = std::str::from_utf8(b).ok()?,
                    _ => {}
                }
            }
            Some((key, value))
        })
    }

    /// The value of one string tag (the last one wins, as in a decoded map).
    #[must_use]
    pub fn tag(&self, key: &str) -> Option<&'a str> {
        self.tags()
            .filter(|(k, _)| *k == key)
            .last()
            .map(|(_, v)| v)
    }
}

/// Iterates over the encoded envelopes of an encoded `EnvelopeBatch`, as sub-slices.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    fields: Fields<'a>,
}

impl<'a> BatchIter<'a> {
    /// Walks `batch` (an encoded `EnvelopeBatch`).
    #[must_use]
    pub fn new(batch: &'a [u8]) -> Self {
        Self {
            fields: Fields::new(batch),
        }
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<&'a [u8], Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.fields.next()? {
                Ok((1, value)) => return Some(expect_len(1, value)),
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Slices the envelopes of an encoded batch as `Bytes` sharing `batch`'s buffer (no copy).
pub fn split_batch(batch: &Bytes) -> impl Iterator<Item = Result<Bytes, Error>> + '_ {
    let base = batch.as_ptr() as usize;
    BatchIter::new(batch).map(move |item| {
        item.map(|slice| {
            let start = slice.as_ptr() as usize - base;
            batch.slice(start..start + slice.len())
        })
    })
}

/// Bytes `v` takes as a protobuf varint (1 to 10).
#[inline]
#[must_use]
pub fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Appends `v` as a protobuf varint: the one varint writer every hop that writes the wire
/// format by hand (this builder, the emitter's encoder, the agent's batches) shares.
#[inline]
pub fn put_varint(buf: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Builds an encoded `EnvelopeBatch` by appending encoded envelopes: no decode, one copy.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    buf: BytesMut,
    count: usize,
    /// `hydrant_sequence_stream` stamped beside each sequence; 0 stamps none.
    stream: u64,
}

impl BatchBuilder {
    /// An empty builder with room for `capacity` bytes.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(capacity),
            count: 0,
            stream: 0,
        }
    }

    /// Stamps `stream` as `hydrant_sequence_stream` beside every sequence
    /// [`push_with_sequence`](Self::push_with_sequence) appends (0, the default, stamps none).
    #[must_use]
    pub fn with_sequence_stream(mut self, stream: u64) -> Self {
        self.stream = stream;
        self
    }

    /// Appends one encoded envelope.
    pub fn push(&mut self, envelope: &[u8]) {
        self.buf.reserve(envelope.len() + 6);
        self.buf.put_u8(0x0a); // field 1, LEN
        put_varint(&mut self.buf, envelope.len() as u64);
        self.buf.put_slice(envelope);
        self.count += 1;
    }

    /// Appends one encoded envelope with the Hydrant sequence field appended to it. Protobuf
    /// decoders take the last occurrence of a scalar field, so this overrides any sequence the
    /// emitter sent.
    pub fn push_with_sequence(&mut self, envelope: &[u8], sequence: u64) {
        self.push_stamped(envelope, sequence, self.stream);
    }

    /// As [`push_with_sequence`](Self::push_with_sequence), naming the numbering per envelope:
    /// `stream` is stamped as `hydrant_sequence_stream` (0 stamps none). An agent gives one
    /// (source_id, instance_id) a new stream when the path its envelopes take changes while the
    /// old path may still deliver, so a consumer never compares numbers that can arrive out of
    /// order.
    pub fn push_stamped(&mut self, envelope: &[u8], sequence: u64, stream: u64) {
        let stream_extra = if stream == 0 {
            0
        } else {
            2 + varint_len(stream)
        };
        let extra = 2 + varint_len(sequence) + stream_extra;
        let len = envelope.len() + extra;
        self.buf.reserve(len + 6);
        self.buf.put_u8(0x0a);
        put_varint(&mut self.buf, len as u64);
        self.buf.put_slice(envelope);
        put_varint(&mut self.buf, u64::from(SEQUENCE_FIELD << 3));
        put_varint(&mut self.buf, sequence);
        if stream != 0 {
            put_varint(&mut self.buf, u64::from(SEQUENCE_STREAM_FIELD << 3));
            put_varint(&mut self.buf, stream);
        }
        self.count += 1;
    }

    /// Envelopes appended since the last [`take`](Self::take).
    #[must_use]
    pub fn count(&self) -> usize {
        self.count
    }

    /// Encoded bytes appended since the last [`take`](Self::take).
    #[must_use]
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing has been appended.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Takes the batch built so far, leaving the builder empty (its capacity is kept when the
    /// previous batch has been dropped by its readers).
    pub fn take(&mut self) -> Bytes {
        self.count = 0;
        self.buf.split().freeze()
    }
}

/// Encodes a decoded envelope (the slow path: emitters and tests).
#[must_use]
pub fn encode(envelope: &crate::v2::Envelope) -> Bytes {
    use prost::Message;
    Bytes::from(envelope.encode_to_vec())
}

/// Encodes a list of encoded envelopes as one batch.
#[must_use]
pub fn batch_of<'a>(envelopes: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
    let mut b = BatchBuilder::default();
    for e in envelopes {
        b.push(e);
    }
    b.take()
}

/// Encodes a `logcache.v1.ReadResponse` around encoded envelopes: field 1, the
/// `EnvelopeBatch`, holding them as they are (what the doppler answers a log cache `Read` with,
/// without decoding what it stored).
#[must_use]
pub fn read_response<'a>(envelopes: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
    let batch = batch_of(envelopes);
    let mut out = BytesMut::with_capacity(batch.len() + 11);
    put_varint(&mut out, u64::from((1u32 << 3) | u32::from(LEN)));
    put_varint(&mut out, batch.len() as u64);
    out.put_slice(&batch);
    out.freeze()
}

/// The encoded `EnvelopeBatch` of an encoded `logcache.v1.ReadResponse`, sharing its buffer
/// (walk it with [`BatchIter`] or [`split_batch`]). A response without envelopes gives an empty
/// batch; one that carries the field more than once (protobuf merges them) gives them joined.
///
/// # Errors
/// The bytes are not a `ReadResponse`.
pub fn read_response_batch(response: &Bytes) -> Result<Bytes, Error> {
    let base = response.as_ptr() as usize;
    let mut parts = Vec::new();
    for field in Fields::new(response) {
        if let (1, value) = field? {
            let slice = expect_len(1, value)?;
            let start = slice.as_ptr() as usize - base;
            parts.push(response.slice(start..start + slice.len()));
        }
    }
    Ok(match parts.len() {
        0 => Bytes::new(),
        1 => parts.swap_remove(0),
        _ => parts.concat().into(),
    })
}

#[cfg(test)]
mod tests;
