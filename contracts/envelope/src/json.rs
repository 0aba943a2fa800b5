//! Envelopes as JSON in protojson's shape, for browsers and scripts.
//!
//! This matches what Loggregator's RLP gateway writes: snake_case field names (the protos'
//! `json_name`), 64-bit integers as strings, `bytes` as base64, enums by name, and every field
//! present. One addition: log payloads that are valid UTF-8 are also given as `payload_text`, so a
//! script does not need to base64-decode every line.
//!
//! Both directions live here, so the edge (which writes this JSON) and the client (which reads
//! the recent-logs API's JSON back, in [`read_response`] and [`from_json`]) share one codec.

mod decode;

pub use decode::{from_json, read_response};

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::v2::{self, envelope::Message, value::Data};

/// One envelope as a protojson object.
#[must_use]
pub fn envelope(e: &v2::Envelope) -> Value {
    let mut out = Map::new();
    out.insert("timestamp".into(), Value::String(e.timestamp.to_string()));
    out.insert("source_id".into(), Value::String(e.source_id.clone()));
    out.insert("instance_id".into(), Value::String(e.instance_id.clone()));
    let deprecated: Map<String, Value> = e
        .deprecated_tags
        .iter()
        .map(|(k, v)| {
            let v = match &v.data {
                Some(Data::Text(t)) => json!({ "text": t }),
                Some(Data::Integer(i)) => json!({ "integer": i.to_string() }),
                Some(Data::Decimal(d)) => json!({ "decimal": d }),
                None => json!({}),
            };
            (k.clone(), v)
        })
        .collect();
    out.insert("deprecated_tags".into(), Value::Object(deprecated));
    let tags: Map<String, Value> = e
        .tags
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    out.insert("tags".into(), Value::Object(tags));
    match &e.message {
        Some(Message::Log(l)) => {
            let mut log = json!({
                "payload": base64::engine::general_purpose::STANDARD.encode(&l.payload),
                "type": if l.r#type == 1 { "ERR" } else { "OUT" },
            });
            if let (Ok(text), Some(obj)) = (std::str::from_utf8(&l.payload), log.as_object_mut()) {
                obj.insert("payload_text".into(), Value::String(text.to_owned()));
            }
            out.insert("log".into(), log);
        }
        Some(Message::Counter(c)) => {
            out.insert(
                "counter".into(),
                json!({ "name": c.name, "delta": c.delta.to_string(), "total": c.total.to_string() }),
            );
        }
        Some(Message::Gauge(g)) => {
            let metrics: Map<String, Value> = g
                .metrics
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        json!({ "unit": v.unit, "value": finite(v.value) }),
                    )
                })
                .collect();
            out.insert("gauge".into(), json!({ "metrics": metrics }));
        }
        Some(Message::Timer(t)) => {
            out.insert(
                "timer".into(),
                json!({ "name": t.name, "start": t.start.to_string(), "stop": t.stop.to_string() }),
            );
        }
        Some(Message::Event(ev)) => {
            out.insert(
                "event".into(),
                json!({ "title": ev.title, "body": ev.body }),
            );
        }
        None => {}
    }
    if e.hydrant_sequence != 0 {
        out.insert(
            "hydrant_sequence".into(),
            Value::String(e.hydrant_sequence.to_string()),
        );
    }
    if e.hydrant_sequence_stream != 0 {
        out.insert(
            "hydrant_sequence_stream".into(),
            Value::String(e.hydrant_sequence_stream.to_string()),
        );
    }
    Value::Object(out)
}

/// protojson writes non-finite doubles as the strings "NaN", "Infinity" and "-Infinity".
fn finite(v: f64) -> Value {
    if v.is_nan() {
        Value::String("NaN".into())
    } else if v.is_infinite() {
        Value::String(if v > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else {
        json!(v)
    }
}

/// A batch as `{"batch":[...]}`, the shape of a protojson `EnvelopeBatch`.
#[must_use]
pub fn batch<'a>(envelopes: impl IntoIterator<Item = &'a v2::Envelope>) -> Value {
    json!({ "batch": envelopes.into_iter().map(envelope).collect::<Vec<_>>() })
}
