//! Unit and property tests for the wire walker: round trips against prost, and hostile bytes.

use std::collections::HashMap;

use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::v2::{self, envelope::Message as M};

fn log(source: &str, payload: &[u8]) -> v2::Envelope {
    v2::Envelope {
        timestamp: 1_700_000_000_000_000_000,
        source_id: source.into(),
        instance_id: "3".into(),
        tags: HashMap::from([("source_type".into(), "APP/PROC/WEB".into())]),
        message: Some(M::Log(v2::Log {
            payload: Bytes::copy_from_slice(payload),
            r#type: 1,
        })),
        ..Default::default()
    }
}

#[test]
fn a_read_response_built_from_bytes_is_what_prost_reads_and_slices_back() {
    let one = encode(&log("app-1", b"first"));
    let two = encode(&log("app-1", b"second"));
    let response = read_response([one.as_ref(), two.as_ref()]);
    let decoded = crate::logcache_v1::ReadResponse::decode(response.clone()).unwrap();
    let batch = decoded.envelopes.unwrap().batch;
    assert_eq!(batch, vec![log("app-1", b"first"), log("app-1", b"second")]);

    let sliced = read_response_batch(&response).unwrap();
    let envelopes: Vec<Bytes> = split_batch(&sliced).map(Result::unwrap).collect();
    assert_eq!(envelopes, vec![one.clone(), two]);
    // What prost writes is read the same way, and an empty answer is an empty batch.
    let typed = crate::logcache_v1::ReadResponse {
        envelopes: Some(v2::EnvelopeBatch {
            batch: vec![log("app-1", b"first")],
        }),
    };
    let again = read_response_batch(&Bytes::from(typed.encode_to_vec())).unwrap();
    assert_eq!(
        split_batch(&again).map(Result::unwrap).collect::<Vec<_>>(),
        vec![one]
    );
    assert!(read_response_batch(&Bytes::new()).unwrap().is_empty());
    assert!(read_response_batch(&Bytes::from_static(&[0x0a, 0x05, 0x01])).is_err());
}

#[test]
fn view_reads_routing_fields() {
    let bytes = encode(&log("app-1", b"hello"));
    let view = EnvelopeView::parse(&bytes).unwrap();
    assert_eq!(view.source_id, "app-1");
    assert_eq!(view.instance_id, "3");
    assert_eq!(view.kind, Kind::Log);
    assert_eq!(view.log(), Some((&b"hello"[..], true)));
    assert_eq!(view.tag("source_type"), Some("APP/PROC/WEB"));
    assert_eq!(view.timestamp, 1_700_000_000_000_000_000);
}

#[test]
fn counter_and_gauge_names() {
    let c = v2::Envelope {
        message: Some(M::Counter(v2::Counter {
            name: "requests".into(),
            delta: 2,
            total: 9,
        })),
        ..Default::default()
    };
    let bytes = encode(&c);
    assert_eq!(
        EnvelopeView::parse(&bytes).unwrap().counter_name(),
        Some("requests")
    );
    let g = v2::Envelope {
        message: Some(M::Gauge(v2::Gauge {
            metrics: HashMap::from([
                (
                    "cpu".into(),
                    v2::GaugeValue {
                        unit: "percentage".into(),
                        value: 1.5,
                    },
                ),
                (
                    "memory".into(),
                    v2::GaugeValue {
                        unit: "bytes".into(),
                        value: 2.0,
                    },
                ),
            ]),
        })),
        ..Default::default()
    };
    let bytes = encode(&g);
    let view = EnvelopeView::parse(&bytes).unwrap();
    let mut names: Vec<_> = view.gauge_names().collect();
    names.sort_unstable();
    assert_eq!(names, ["cpu", "memory"]);
    let mut values: Vec<_> = view.gauge_values().collect();
    values.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(values[0], ("cpu", 1.5, "percentage"));
}

#[test]
fn sequence_appended_overrides_and_decodes() {
    let mut env = log("a", b"x");
    env.hydrant_sequence = 5;
    let bytes = encode(&env);
    let mut b = BatchBuilder::default();
    b.push_with_sequence(&bytes, 300);
    let batch = b.take();
    let decoded = v2::EnvelopeBatch::decode(batch).unwrap();
    assert_eq!(decoded.batch[0].hydrant_sequence, 300);
    assert_eq!(decoded.batch[0].hydrant_sequence_stream, 0);
    assert_eq!(decoded.batch[0].source_id, "a");
}

#[test]
fn a_builder_with_a_stream_stamps_it_beside_each_sequence() {
    let bytes = encode(&log("a", b"x"));
    let mut b = BatchBuilder::with_capacity(64).with_sequence_stream(u64::MAX);
    b.push_with_sequence(&bytes, 7);
    b.push_with_sequence(&bytes, 8);
    let decoded = v2::EnvelopeBatch::decode(b.take()).unwrap();
    let got: Vec<_> = decoded
        .batch
        .iter()
        .map(|e| (e.hydrant_sequence, e.hydrant_sequence_stream))
        .collect();
    assert_eq!(got, [(7, u64::MAX), (8, u64::MAX)]);
    let batch = v2::EnvelopeBatch {
        batch: decoded.batch,
    };
    let encoded = prost::Message::encode_to_vec(&batch.batch[1]);
    let view = EnvelopeView::parse(&encoded).unwrap();
    assert_eq!((view.sequence, view.sequence_stream), (8, u64::MAX));
}

#[test]
fn each_envelope_can_name_its_own_stream_and_overrides_an_emitter_s_stamp() {
    // An emitter that sends its own (forged or forwarded) stamp: the agent's comes last and wins.
    let mut forged = log("a", b"x");
    forged.hydrant_sequence = 99;
    forged.hydrant_sequence_stream = 42;
    let bytes = encode(&forged);
    let mut b = BatchBuilder::with_capacity(64);
    b.push_stamped(&bytes, 1, 7);
    b.push_stamped(&bytes, 2, u64::MAX);
    b.push_stamped(&encode(&log("a", b"x")), 3, 0);
    let decoded = v2::EnvelopeBatch::decode(b.take()).unwrap();
    let got: Vec<_> = decoded
        .batch
        .iter()
        .map(|e| (e.hydrant_sequence, e.hydrant_sequence_stream))
        .collect();
    assert_eq!(got, [(1, 7), (2, u64::MAX), (3, 0)]);
    let mut b = BatchBuilder::with_capacity(64);
    b.push_stamped(&bytes, 5, 8);
    let batch = b.take();
    let envelope = BatchIter::new(&batch).next().unwrap().unwrap();
    let view = EnvelopeView::parse(envelope).unwrap();
    assert_eq!((view.sequence, view.sequence_stream), (5, 8));
}

#[test]
fn rejects_bad_utf8_source_id() {
    // field 2, LEN 2, invalid UTF-8
    let bytes = [0x12, 0x02, 0xff, 0xfe];
    assert_eq!(
        EnvelopeView::parse(&bytes).unwrap_err(),
        Error::Utf8("source_id")
    );
}

#[test]
fn rejects_wrong_wire_type_on_known_field() {
    // field 2 (source_id) as a varint
    let bytes = [0x10, 0x01];
    assert!(matches!(
        EnvelopeView::parse(&bytes),
        Err(Error::FieldType { field: 2, .. })
    ));
}

#[test]
fn rejects_length_past_end_without_allocating() {
    // field 2, LEN = 2^62
    let bytes = [0x12, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
    assert_eq!(EnvelopeView::parse(&bytes).unwrap_err(), Error::Truncated);
}

#[test]
fn rejects_oversized_envelope() {
    let big = encode(&log("a", &vec![b'x'; crate::MAX_ENVELOPE_BYTES]));
    assert!(matches!(
        EnvelopeView::parse(&big),
        Err(Error::TooLarge { .. })
    ));
}

fn arb_envelope() -> impl Strategy<Value = v2::Envelope> {
    let message = prop_oneof![
        Just(None),
        (proptest::collection::vec(any::<u8>(), 0..200), 0i32..2).prop_map(|(p, t)| Some(M::Log(
            v2::Log {
                payload: p.into(),
                r#type: t
            }
        ))),
        (".{0,20}", any::<u64>(), any::<u64>()).prop_map(|(n, d, t)| Some(M::Counter(
            v2::Counter {
                name: n,
                delta: d,
                total: t
            }
        ))),
        proptest::collection::hash_map(".{0,10}", (".{0,5}", any::<f64>()), 0..4).prop_map(|m| {
            Some(M::Gauge(v2::Gauge {
                metrics: m
                    .into_iter()
                    .map(|(k, (u, v))| (k, v2::GaugeValue { unit: u, value: v }))
                    .collect(),
            }))
        }),
        (".{0,10}", any::<i64>(), any::<i64>()).prop_map(|(n, s, e)| Some(M::Timer(v2::Timer {
            name: n,
            start: s,
            stop: e
        }))),
        (".{0,10}", ".{0,30}").prop_map(|(t, b)| Some(M::Event(v2::Event { title: t, body: b }))),
    ];
    (
        any::<i64>(),
        ".{0,40}",
        ".{0,5}",
        proptest::collection::hash_map(".{0,10}", ".{0,10}", 0..5),
        message,
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(timestamp, source_id, instance_id, tags, message, seq, stream)| v2::Envelope {
                timestamp,
                source_id,
                instance_id,
                tags,
                message,
                hydrant_sequence: seq,
                hydrant_sequence_stream: stream,
                ..Default::default()
            },
        )
}

proptest! {
    #[test]
    fn view_agrees_with_prost(env in arb_envelope()) {
        let bytes = encode(&env);
        let view = EnvelopeView::parse(&bytes).unwrap();
        prop_assert_eq!(view.timestamp, env.timestamp);
        prop_assert_eq!(view.source_id, env.source_id.as_str());
        prop_assert_eq!(view.instance_id, env.instance_id.as_str());
        prop_assert_eq!(view.sequence, env.hydrant_sequence);
        prop_assert_eq!(view.sequence_stream, env.hydrant_sequence_stream);
        let tags: HashMap<String, String> =
            view.tags().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        prop_assert_eq!(&tags, &env.tags);
        match &env.message {
            Some(M::Counter(c)) => prop_assert_eq!(view.counter_name(), Some(c.name.as_str())),
            Some(M::Log(l)) => prop_assert_eq!(view.log(), Some((&l.payload[..], l.r#type == 1))),
            Some(M::Timer(t)) => prop_assert_eq!(view.timer_span(), Some((t.start, t.stop))),
            _ => {}
        }
    }

    #[test]
    fn batch_round_trip(envs in proptest::collection::vec(arb_envelope(), 0..20)) {
        let encoded: Vec<Bytes> = envs.iter().map(encode).collect();
        let batch = batch_of(encoded.iter().map(|b| &b[..]));
        let split: Vec<Bytes> = split_batch(&batch).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(&split, &encoded);
        let decoded = v2::EnvelopeBatch::decode(batch).unwrap();
        prop_assert_eq!(decoded.batch, envs);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(view) = EnvelopeView::parse(&bytes) {
            // Whatever the walker accepts, prost accepts too.
            let decoded = v2::Envelope::decode(&bytes[..]);
            prop_assert!(decoded.is_ok(), "the view accepted what prost rejects: {:?} in {:02x?}", decoded.err(), bytes);
            let _ = view.log();
            let _ = view.gauge_values().count();
            let _ = view.tags().count();
        }
        for item in BatchIter::new(&bytes) {
            let _ = item.map(EnvelopeView::parse);
        }
    }

    #[test]
    fn mutated_envelopes_never_panic(env in arb_envelope(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = encode(&env).to_vec();
        if bytes.is_empty() { return Ok(()); }
        for (i, b) in flips {
            let n = bytes.len();
            bytes[i % n] = b;
        }
        if EnvelopeView::parse(&bytes).is_ok() {
            let decoded = v2::Envelope::decode(&bytes[..]);
            prop_assert!(decoded.is_ok(), "the view accepted what prost rejects: {:?} in {:02x?}", decoded.err(), bytes);
        }
    }
}
