//! Hand-written protobuf encoding of the envelopes the emitter's convenience methods build.
//!
//! The executor emits one envelope per app log line, so building a `v2::Envelope` (a `String`
//! per field, a `HashMap` for tags) and prost-encoding it would allocate several times per line.
//! These functions write the same bytes straight into a reused scratch buffer instead. The
//! output is an ordinary `loggregator.v2.Envelope` (fields in number order, proto3 defaults
//! omitted), so any prost decoder reads it back; the tests check exactly that.

use hydrant_envelope::wire::{put_varint, varint_len};

/// Wire type 0.
const VARINT: u8 = 0;
/// Wire type 1.
const FIXED64: u8 = 1;
/// Wire type 2.
const LEN: u8 = 2;

fn put_key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(buf, u64::from(field << 3 | u32::from(wire)));
}

/// Bytes a length-delimited field of `len` bytes takes (fields below 16 have a 1-byte key).
fn len_field_size(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    put_key(buf, field, LEN);
    put_varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

fn put_uint(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v == 0 {
        return;
    }
    put_key(buf, field, VARINT);
    put_varint(buf, v);
}

fn put_double(buf: &mut Vec<u8>, field: u32, v: f64) {
    if v.to_bits() == 0 {
        return;
    }
    put_key(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn opt_len_field_size(len: usize) -> usize {
    if len == 0 { 0 } else { len_field_size(len) }
}

/// The parts every envelope shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header<'a> {
    pub(crate) timestamp: i64,
    pub(crate) source_id: &'a str,
    pub(crate) instance_id: &'a str,
    pub(crate) tags: &'a [(&'a str, &'a str)],
}

/// The message an envelope carries, already encoded into `body` by one of the `*_body`
/// functions.
pub(crate) fn envelope(buf: &mut Vec<u8>, header: &Header<'_>, message_field: u32, body: &[u8]) {
    buf.clear();
    // int64 is encoded as the two's-complement u64, as prost does.
    put_uint(buf, 1, header.timestamp as u64);
    put_bytes(buf, 2, header.source_id.as_bytes());
    put_key(buf, message_field, LEN);
    put_varint(buf, body.len() as u64);
    buf.extend_from_slice(body);
    put_bytes(buf, 8, header.instance_id.as_bytes());
    for (key, value) in header.tags {
        let entry = opt_len_field_size(key.len()) + opt_len_field_size(value.len());
        put_key(buf, 9, LEN);
        put_varint(buf, entry as u64);
        put_bytes(buf, 1, key.as_bytes());
        put_bytes(buf, 2, value.as_bytes());
    }
}

/// `Envelope.log` is field 4.
pub(crate) const LOG: u32 = 4;
/// `Envelope.counter` is field 5.
pub(crate) const COUNTER: u32 = 5;
/// `Envelope.gauge` is field 6.
pub(crate) const GAUGE: u32 = 6;
/// `Envelope.timer` is field 7.
pub(crate) const TIMER: u32 = 7;
/// `Envelope.event` is field 10.
pub(crate) const EVENT: u32 = 10;

pub(crate) fn log_body(buf: &mut Vec<u8>, payload: &[u8], is_err: bool) {
    buf.clear();
    put_bytes(buf, 1, payload);
    put_uint(buf, 2, u64::from(is_err));
}

pub(crate) fn counter_body(buf: &mut Vec<u8>, name: &str, delta: u64, total: u64) {
    buf.clear();
    put_bytes(buf, 1, name.as_bytes());
    put_uint(buf, 2, delta);
    put_uint(buf, 3, total);
}

pub(crate) fn gauge_body(buf: &mut Vec<u8>, metrics: &[(&str, f64, &str)]) {
    buf.clear();
    for (name, value, unit) in metrics {
        let value_size = opt_len_field_size(unit.len()) + if value.to_bits() == 0 { 0 } else { 9 };
        let entry = opt_len_field_size(name.len()) + len_field_size(value_size);
        put_key(buf, 1, LEN);
        put_varint(buf, entry as u64);
        put_bytes(buf, 1, name.as_bytes());
        // The GaugeValue is written even when empty: an absent value decodes the same, but a
        // present one makes the entry's intent obvious on the wire.
        put_key(buf, 2, LEN);
        put_varint(buf, value_size as u64);
        put_bytes(buf, 1, unit.as_bytes());
        put_double(buf, 2, *value);
    }
}

pub(crate) fn timer_body(buf: &mut Vec<u8>, name: &str, start: i64, stop: i64) {
    buf.clear();
    put_bytes(buf, 1, name.as_bytes());
    put_uint(buf, 2, start as u64);
    put_uint(buf, 3, stop as u64);
}

pub(crate) fn event_body(buf: &mut Vec<u8>, title: &str, body: &str) {
    buf.clear();
    put_bytes(buf, 1, title.as_bytes());
    put_bytes(buf, 2, body.as_bytes());
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use hydrant_envelope::v2;
    use hydrant_envelope::wire::EnvelopeView;
    use prost::Message;

    use super::*;

    fn build(
        header: &Header<'_>,
        field: u32,
        body_fn: impl FnOnce(&mut Vec<u8>),
    ) -> (v2::Envelope, Vec<u8>) {
        let mut body = Vec::new();
        body_fn(&mut body);
        let mut out = Vec::new();
        envelope(&mut out, header, field, &body);
        let decoded = v2::Envelope::decode(out.as_slice()).unwrap();
        // The zero-copy validator every hop runs must accept it too.
        EnvelopeView::parse(&out).unwrap();
        (decoded, out)
    }

    fn header<'a>(tags: &'a [(&'a str, &'a str)]) -> Header<'a> {
        Header {
            timestamp: 1_700_000_000_123_456_789,
            source_id: "app-guid",
            instance_id: "3",
            tags,
        }
    }

    fn expect(tags: &[(&str, &str)], message: v2::envelope::Message) -> v2::Envelope {
        v2::Envelope {
            timestamp: 1_700_000_000_123_456_789,
            source_id: "app-guid".to_owned(),
            instance_id: "3".to_owned(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>(),
            message: Some(message),
            ..v2::Envelope::default()
        }
    }

    #[test]
    fn log_round_trips_through_prost() {
        let tags = [("source_type", "APP/PROC/WEB"), ("", "empty key")];
        let (got, _) = build(&header(&tags), LOG, |b| log_body(b, b"hello\n", true));
        let want = expect(
            &tags,
            v2::envelope::Message::Log(v2::Log {
                payload: b"hello\n".to_vec().into(),
                r#type: v2::log::Type::Err as i32,
            }),
        );
        assert_eq!(got, want);
    }

    #[test]
    fn empty_log_is_still_a_log() {
        let (got, _) = build(&header(&[]), LOG, |b| log_body(b, b"", false));
        assert!(matches!(got.message, Some(v2::envelope::Message::Log(_))));
    }

    #[test]
    fn counter_gauge_timer_event_round_trip() {
        let (got, _) = build(&header(&[("k", "v")]), COUNTER, |b| {
            counter_body(b, "requests", 7, 0);
        });
        assert_eq!(
            got,
            expect(
                &[("k", "v")],
                v2::envelope::Message::Counter(v2::Counter {
                    name: "requests".to_owned(),
                    delta: 7,
                    total: 0
                })
            )
        );

        let metrics = [("cpu", 12.5, "percentage"), ("memory", 0.0, "bytes")];
        let (got, _) = build(&header(&[]), GAUGE, |b| gauge_body(b, &metrics));
        let want = HashMap::from([
            (
                "cpu".to_owned(),
                v2::GaugeValue {
                    unit: "percentage".to_owned(),
                    value: 12.5,
                },
            ),
            (
                "memory".to_owned(),
                v2::GaugeValue {
                    unit: "bytes".to_owned(),
                    value: 0.0,
                },
            ),
        ]);
        assert_eq!(
            got.message,
            Some(v2::envelope::Message::Gauge(v2::Gauge { metrics: want }))
        );

        let (got, _) = build(&header(&[]), TIMER, |b| timer_body(b, "http", 10, -1));
        assert_eq!(
            got.message,
            Some(v2::envelope::Message::Timer(v2::Timer {
                name: "http".to_owned(),
                start: 10,
                stop: -1
            }))
        );

        let (got, _) = build(&header(&[]), EVENT, |b| event_body(b, "crash", "exit 1"));
        assert_eq!(
            got.message,
            Some(v2::envelope::Message::Event(v2::Event {
                title: "crash".to_owned(),
                body: "exit 1".to_owned()
            }))
        );
    }

    #[test]
    fn large_payload_lengths_use_multi_byte_varints() {
        let payload = vec![b'x'; 70_000];
        let (got, out) = build(&header(&[]), LOG, |b| log_body(b, &payload, false));
        assert!(out.len() > 70_000);
        let Some(v2::envelope::Message::Log(log)) = got.message else {
            panic!("not a log");
        };
        assert_eq!(log.payload.len(), 70_000);
    }
}
