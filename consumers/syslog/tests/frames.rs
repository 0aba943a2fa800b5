//! Property: whatever an envelope carries (payload bytes, tag keys and values, ids), the
//! encoder yields octet-counted frames that split back into exactly the messages it made,
//! each one a syntactically valid RFC 5424 message.

#![allow(clippy::expect_used, clippy::panic, reason = "test code")]

use hydrant_envelope::v2;
use hydrant_envelope::wire::{EnvelopeView, encode as encode_envelope};
use hydrant_nozzle_syslog::{DrainData, EncoderOptions, encode, encode_messages};
use proptest::prelude::*;

fn printusascii(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|b| (33..=126).contains(b))
}

/// A strict check of the header and structured data; returns the MSG part.
fn check_message(m: &[u8]) -> &[u8] {
    let mut rest = m;
    let mut field = || {
        let sp = rest.iter().position(|&b| b == b' ').expect("header field");
        let f = &rest[..sp];
        rest = &rest[sp + 1..];
        f
    };
    let pri_ver = field();
    assert!(pri_ver == b"<14>1" || pri_ver == b"<11>1", "{pri_ver:?}");
    let ts = field();
    assert!(ts.ends_with(b"+00:00") && ts.len() >= 25, "{ts:?}");
    for (max, f) in [(255, field()), (48, field()), (128, field()), (32, field())] {
        assert!(
            printusascii(f) && f.len() <= max,
            "{:?}",
            String::from_utf8_lossy(f)
        );
    }
    // STRUCTURED-DATA: "-" or one or more [ID params] elements with escaped values.
    if let Some(after) = rest.strip_prefix(b"- ") {
        return after;
    }
    while rest.first() == Some(&b'[') {
        let mut i = 1;
        let mut in_value = false;
        loop {
            match (rest[i], in_value) {
                (b'\\', true) => {
                    assert!(matches!(rest[i + 1], b'\\' | b'"' | b']'), "bad escape");
                    i += 1;
                }
                (b'"', _) => in_value = !in_value,
                (b']', false) => break,
                (b, false) => assert!(b == b' ' || b == b'=' || (33..=126).contains(&b)),
                (0, true) => panic!("NUL in a value"),
                _ => {}
            }
            i += 1;
        }
        rest = &rest[i + 1..];
    }
    rest.strip_prefix(b" ").expect("space after SD")
}

proptest! {
    #[test]
    fn frames_are_exact_and_messages_valid(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        tags in proptest::collection::vec((".{0,12}", ".{0,20}"), 0..6),
        source_id in ".{0,60}",
        instance_id in ".{0,10}",
        err in any::<bool>(),
        timestamp in any::<i64>(),
    ) {
        let e = v2::Envelope {
            timestamp,
            source_id,
            instance_id,
            tags: tags.into_iter().collect(),
            message: Some(v2::envelope::Message::Log(v2::Log {
                payload: payload.clone().into(),
                r#type: i32::from(err),
            })),
            ..v2::Envelope::default()
        };
        let bytes = encode_envelope(&e);
        let view = EnvelopeView::parse(&bytes).unwrap();
        let opts = EncoderOptions { drain_data: DrainData::All, ..EncoderOptions::default() };
        let messages = encode_messages(&view, &opts);
        let mut framed = Vec::new();
        prop_assert_eq!(encode(&view, &opts, &mut framed), messages.len());
        prop_assert_eq!(messages.len(), 1);
        // Split the frames back as an RFC 6587 receiver would.
        let mut rest = &framed[..];
        let mut split = Vec::new();
        while !rest.is_empty() {
            let sp = rest.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
            split.push(rest[sp + 1..sp + 1 + len].to_vec());
            rest = &rest[sp + 1 + len..];
        }
        prop_assert_eq!(&split, &messages);
        let msg = check_message(&messages[0]);
        let mut want: Vec<u8> = payload.into_iter().filter(|&b| b != 0).collect();
        if want.last() != Some(&b'\n') {
            want.push(b'\n');
        }
        prop_assert_eq!(msg, &want[..]);
    }
}
