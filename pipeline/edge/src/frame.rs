//! Turns a run of queued envelopes (and a pending loss count) into what goes on the wire.
//!
//! Binary frames are one encoded v2 `EnvelopeBatch`: the envelopes are copied once into the
//! frame, never decoded. JSON is for browsers and scripts and is the only path that decodes with
//! prost. When envelopes were dropped before this run, a gap marker leads the frame, so the
//! consumer learns of the hole exactly where it is.

use bytes::Bytes;
use hydrant_envelope::gap::{GAP_SOURCE, Gap};
use hydrant_envelope::v2;
use hydrant_envelope::wire::BatchBuilder;
use prost::Message as _;

use crate::api::ApiError;

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
    }
}

/// One encoded `EnvelopeBatch`: the gap marker (when `dropped > 0`), then `envelopes`.
pub(crate) fn binary(dropped: u64, envelopes: &[Bytes]) -> Bytes {
    let marker = (dropped > 0).then(|| gap(dropped).encode());
    let size: usize = envelopes.iter().map(|e| e.len() + 6).sum::<usize>()
        + marker.as_ref().map_or(0, |m| m.len() + 6);
    let mut b = BatchBuilder::with_capacity(size);
    if let Some(m) = &marker {
        b.push(m);
    }
    for e in envelopes {
        b.push(e);
    }
    b.take()
}

/// The same batch as protojson text. Returns the text and how many envelopes failed to decode
/// (none should: the hub only forwards envelopes a prost decoder accepts).
pub(crate) fn json(dropped: u64, envelopes: &[Bytes]) -> (String, u64) {
    let mut decoded = Vec::with_capacity(envelopes.len() + 1);
    if dropped > 0 {
        decoded.push(gap(dropped).to_envelope());
    }
    let mut failed = 0;
    for e in envelopes {
        match v2::Envelope::decode(&e[..]) {
            Ok(env) => decoded.push(env),
            Err(_) => failed += 1,
        }
    }
    (hydrant_envelope::json::batch(&decoded).to_string(), failed)
}

#[cfg(test)]
mod tests {
    use hydrant_envelope::wire::{BatchIter, EnvelopeView};

    use super::*;

    fn log(text: &str) -> Bytes {
        hydrant_envelope::wire::encode(&v2::Envelope {
            source_id: "web".into(),
            message: Some(v2::envelope::Message::Log(v2::Log {
                payload: text.as_bytes().to_vec().into(),
                r#type: 0,
            })),
            ..v2::Envelope::default()
        })
    }

    #[test]
    fn binary_frames_are_batches_led_by_the_gap() {
        let frame = binary(3, &[log("a"), log("b")]);
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
        assert_eq!(binary(0, &[log("x")]).len(), log("x").len() + 2);
    }

    #[test]
    fn json_frames_hold_a_batch() {
        let (text, failed) = json(0, &[log("hello")]);
        assert_eq!(failed, 0);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["batch"][0]["log"]["payload_text"], "hello");
        assert_eq!(json(0, &[Bytes::from_static(&[0xff])]).1, 1);
    }

    #[test]
    fn formats() {
        assert_eq!(Format::parse(None).unwrap(), Format::Binary);
        assert_eq!(Format::parse(Some("json")).unwrap(), Format::Json);
        assert!(Format::parse(Some("xml")).is_err());
    }
}
