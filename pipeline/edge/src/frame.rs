//! Turns a run of queued envelopes (and a pending loss count) into what goes on the wire.
//!
//! Binary frames are one encoded v2 `EnvelopeBatch`: the envelopes are copied once into the
//! frame, never decoded. JSON is for browsers and scripts and is the only path that decodes with
//! prost. When envelopes were dropped before this run, a gap marker leads the frame, so the
//! consumer learns of the hole exactly where it is.
//!
//! Every frame may end with the consumer's cursor (resumable subscriptions): in binary frames as
//! `EnvelopeBatch` field 100 after the envelopes (stock v2 decoders skip unknown fields), in
//! JSON as `"cursor"` beside `"batch"`. A consumer that reconnects with `?cursor=<it>` gets what
//! it missed; the text is opaque.

use bytes::{BufMut as _, Bytes, BytesMut};
use hydrant_envelope::cursor::put_frame_cursor;
use hydrant_envelope::gap::{BySource, GAP_SOURCE, Gap};
use hydrant_envelope::v2;
use hydrant_envelope::wire::put_varint;
use prost::Message as _;

use crate::api::ApiError;
use crate::position::Item;

/// How a consumer wants its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Binary frames, each an encoded `EnvelopeBatch`.
    Binary,
    /// Text frames, each `{"batch":[...]}` in protojson's shape.
    Json,
}

impl Format {
    /// `?format=`: absent, `binary` or `protobuf` for binary; `json` for JSON.
    pub(crate) fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("" | "binary" | "protobuf") => Ok(Format::Binary),
            Some("json") => Ok(Format::Json),
            Some(other) => Err(ApiError::bad_request(format!(
                "format={other:?}: use binary (the default) or json"
            ))),
        }
    }
}

/// The marker for `dropped` envelopes lost at this hop because the consumer was too slow.
pub(crate) fn gap(dropped: u64) -> Gap {
    Gap {
        source_id: GAP_SOURCE.to_owned(),
        dropped,
        hop: "firehose".to_owned(),
        reason: "slow_consumer".to_owned(),
        by_source: Default::default(),
    }
}

/// The slow-consumer marker when `dropped > 0`, naming whose envelopes they were.
pub(crate) fn slow_gap_by(dropped: u64, by_source: BySource) -> Option<Gap> {
    slow_gap(dropped).map(|gap| Gap { by_source, ..gap })
}

/// The slow-consumer marker when `dropped > 0`.
pub(crate) fn slow_gap(dropped: u64) -> Option<Gap> {
    (dropped > 0).then(|| gap(dropped))
}

fn put_entry(b: &mut BytesMut, envelope: &[u8]) {
    b.put_u8(0x0a); // field 1, LEN
    put_varint(b, envelope.len() as u64);
    b.put_slice(envelope);
}

/// One encoded `EnvelopeBatch`: the gap marker (when there is one), then `envelopes`, then the
/// cursor (when there is one).
pub(crate) fn binary(marker: Option<&Gap>, envelopes: &[Item], cursor: Option<&str>) -> Bytes {
    let marker = marker.map(Gap::encode);
    let size: usize = envelopes.iter().map(|e| e.bytes.len() + 6).sum::<usize>()
        + marker.as_ref().map_or(0, |m| m.len() + 6)
        + cursor.map_or(0, |c| c.len() + 4);
    let mut b = BytesMut::with_capacity(size);
    if let Some(m) = &marker {
        put_entry(&mut b, m);
    }
    for e in envelopes {
        put_entry(&mut b, &e.bytes);
    }
    if let Some(cursor) = cursor {
        put_frame_cursor(&mut b, cursor);
    }
    b.freeze()
}

/// The same batch as protojson text, `{"batch": [...], "cursor": "..."}`. Returns the text and
/// how many envelopes failed to decode (none should: the hub only forwards envelopes a prost
/// decoder accepts).
pub(crate) fn json(
    marker: Option<&Gap>,
    envelopes: &[Item],
    cursor: Option<&str>,
) -> (String, u64) {
    let mut decoded = Vec::with_capacity(envelopes.len() + 1);
    if let Some(marker) = marker {
        decoded.push(marker.to_envelope());
    }
    let mut failed = 0;
    for e in envelopes {
        match v2::Envelope::decode(&e.bytes[..]) {
            Ok(env) => decoded.push(env),
            Err(_) => failed += 1,
        }
    }
    let mut value = hydrant_envelope::json::batch(&decoded);
    if let (Some(cursor), Some(object)) = (cursor, value.as_object_mut()) {
        object.insert("cursor".to_owned(), cursor.into());
    }
    (value.to_string(), failed)
}

#[cfg(test)]
mod tests {
    use hydrant_envelope::wire::{BatchIter, EnvelopeView};

    use super::*;
    use crate::position::At;

    fn log(text: &str) -> Item {
        Item::new(
            hydrant_envelope::wire::encode(&v2::Envelope {
                source_id: "web".into(),
                message: Some(v2::envelope::Message::Log(v2::Log {
                    payload: text.as_bytes().to_vec().into(),
                    r#type: 0,
                })),
                ..v2::Envelope::default()
            }),
            At::NONE,
        )
    }

    #[test]
    fn binary_frames_are_batches_led_by_the_gap() {
        let frame = binary(slow_gap(3).as_ref(), &[log("a"), log("b")], None);
        let batch = v2::EnvelopeBatch::decode(&frame[..]).unwrap();
        assert_eq!(batch.batch.len(), 3);
        let views: Vec<_> = BatchIter::new(&frame)
            .map(|e| EnvelopeView::parse(e.unwrap()).unwrap())
            .collect();
        let g = Gap::from_view(&views[0]).unwrap();
        assert_eq!(
            (g.dropped, g.hop.as_str(), g.reason.as_str()),
            (3, "firehose", "slow_consumer")
        );
        assert_eq!(g.source_id, "hydrant");
        assert_eq!(views[1].log().unwrap().0, b"a");
        assert_eq!(
            binary(None, &[log("x")], None).len(),
            log("x").bytes.len() + 2
        );
        // With a cursor, stock decoders still see the same batch.
        let with = binary(None, &[log("x")], Some("AQE"));
        assert_eq!(v2::EnvelopeBatch::decode(&with[..]).unwrap().batch.len(), 1);
        assert_eq!(&with[with.len() - 3..], b"AQE");
    }

    #[test]
    fn json_frames_hold_a_batch() {
        let (text, failed) = json(None, &[log("hello")], Some("AQE"));
        assert_eq!(failed, 0);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["batch"][0]["log"]["payload_text"], "hello");
        assert_eq!(v["cursor"], "AQE");
        let bad = Item::new(Bytes::from_static(&[0xff]), At::NONE);
        assert_eq!(json(None, &[bad], None).1, 1);
    }

    #[test]
    fn formats() {
        assert_eq!(Format::parse(None).unwrap(), Format::Binary);
        assert_eq!(Format::parse(Some("json")).unwrap(), Format::Json);
        assert!(Format::parse(Some("xml")).is_err());
    }
}
