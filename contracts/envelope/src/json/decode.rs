//! protojson back into `v2::Envelope`: the inverse of the encoder in [`super`], so the edge's
//! JSON and the client's reading of it are one codec, tested round trip (the recent-logs read
//! API, and any script-facing JSON a Hydrant tool reads back).
//!
//! Accepts what a protojson parser accepts for these messages: snake_case or lowerCamelCase
//! names, 64-bit integers as strings or numbers, `bytes` as standard or URL-safe base64 with or
//! without padding, enums by name or number, `null` as the default, doubles as numbers or
//! `"NaN"`/`"Infinity"`/`"-Infinity"`. Unknown fields are ignored (a newer edge may add some).
//!
//! Invariant: any JSON value yields an envelope or an error naming the field path (e.g.
//! `envelope 3: gauge.metrics.cpu.value: expected a number`), never a panic.

use std::collections::HashMap;

use crate::v2::{self, envelope::Message, value::Data};
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use serde_json::{Map, Value};

/// A parse failure and where it happened; the path is built innermost first on the way out, so
/// the success path allocates nothing for it.
#[derive(Debug)]
struct Failure {
    path: Vec<String>,
    message: String,
}

impl Failure {
    fn new(message: String) -> Self {
        Self {
            path: Vec::new(),
            message,
        }
    }

    fn at(mut self, segment: &str) -> Self {
        self.path.push(segment.to_owned());
        self
    }

    fn render(mut self) -> String {
        if self.path.is_empty() {
            return self.message;
        }
        self.path.reverse();
        format!("{}: {}", self.path.join("."), self.message)
    }
}

type Parsed<T> = Result<T, Failure>;

/// Parses a read API response, `{"envelopes":{"batch":[...]}}`, into envelopes in the order
/// given. A missing `envelopes` or `batch` means none (protojson omits empty fields).
///
/// # Errors
/// A message naming the envelope index and the field path that is wrong.
pub fn read_response(body: &[u8]) -> Result<Vec<v2::Envelope>, String> {
    let root: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let root = object(&root).map_err(|e| e.at("response").render())?;
    let Some(envelopes) = field(root, "envelopes", "envelopes") else {
        return Ok(Vec::new());
    };
    let envelopes = object(envelopes).map_err(|e| e.at("envelopes").render())?;
    let Some(batch) = field(envelopes, "batch", "batch") else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = batch else {
        return Err(format!(
            "envelopes.batch: expected an array, got {}",
            kind(batch)
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_envelope(item).map_err(|e| format!("envelope {i}: {}", e.render())))
        .collect()
}

/// Parses one protojson `Envelope`.
///
/// # Errors
/// A message naming the field path that is wrong.
pub fn from_json(value: &Value) -> Result<v2::Envelope, String> {
    parse_envelope(value).map_err(Failure::render)
}

fn parse_envelope(value: &Value) -> Parsed<v2::Envelope> {
    let obj = object(value)?;
    let mut e = v2::Envelope {
        timestamp: opt(obj, "timestamp", "timestamp", int64)?.unwrap_or(0),
        source_id: opt(obj, "source_id", "sourceId", string)?.unwrap_or_default(),
        instance_id: opt(obj, "instance_id", "instanceId", string)?.unwrap_or_default(),
        hydrant_sequence: opt(obj, "hydrant_sequence", "hydrantSequence", uint64)?.unwrap_or(0),
        hydrant_sequence_stream: opt(
            obj,
            "hydrant_sequence_stream",
            "hydrantSequenceStream",
            uint64,
        )?
        .unwrap_or(0),
        ..v2::Envelope::default()
    };
    if let Some(tags) = opt(obj, "tags", "tags", |v| map_of(v, string))? {
        e.tags = tags;
    }
    if let Some(tags) = opt(obj, "deprecated_tags", "deprecatedTags", |v| {
        map_of(v, tag_value)
    })? {
        e.deprecated_tags = tags;
    }
    let messages: [(&str, Parser<Message>); 5] = [
        ("log", |v| log(v).map(Message::Log)),
        ("counter", |v| counter(v).map(Message::Counter)),
        ("gauge", |v| gauge(v).map(Message::Gauge)),
        ("timer", |v| timer(v).map(Message::Timer)),
        ("event", |v| event(v).map(Message::Event)),
    ];
    for (name, parse) in messages {
        if let Some(message) = opt(obj, name, name, parse)? {
            if e.message.is_some() {
                return Err(Failure::new(format!(
                    "more than one of log/counter/gauge/timer/event is set (second: {name})"
                )));
            }
            e.message = Some(message);
        }
    }
    Ok(e)
}

type Parser<T> = fn(&Value) -> Parsed<T>;

fn log(v: &Value) -> Parsed<v2::Log> {
    let obj = object(v)?;
    let payload = match opt(obj, "payload", "payload", bytes)? {
        Some(p) => p,
        // Our extra field, for scripts that write JSON by hand.
        None => opt(obj, "payload_text", "payloadText", string)?
            .map(Bytes::from)
            .unwrap_or_default(),
    };
    let r#type = opt(obj, "type", "type", |v| match v {
        Value::String(s) if s == "OUT" => Ok(0),
        Value::String(s) if s == "ERR" => Ok(1),
        Value::Number(n) if n.as_i64() == Some(0) => Ok(0),
        Value::Number(n) if n.as_i64() == Some(1) => Ok(1),
        other => Err(Failure::new(format!(
            "expected \"OUT\" or \"ERR\", got {}",
            short(other)
        ))),
    })?
    .unwrap_or(0);
    Ok(v2::Log { payload, r#type })
}

fn counter(v: &Value) -> Parsed<v2::Counter> {
    let obj = object(v)?;
    Ok(v2::Counter {
        name: opt(obj, "name", "name", string)?.unwrap_or_default(),
        delta: opt(obj, "delta", "delta", uint64)?.unwrap_or(0),
        total: opt(obj, "total", "total", uint64)?.unwrap_or(0),
    })
}

fn gauge(v: &Value) -> Parsed<v2::Gauge> {
    let obj = object(v)?;
    let metrics = opt(obj, "metrics", "metrics", |v| {
        map_of(v, |v| {
            let obj = object(v)?;
            Ok(v2::GaugeValue {
                unit: opt(obj, "unit", "unit", string)?.unwrap_or_default(),
                value: opt(obj, "value", "value", double)?.unwrap_or(0.0),
            })
        })
    })?
    .unwrap_or_default();
    Ok(v2::Gauge { metrics })
}

fn timer(v: &Value) -> Parsed<v2::Timer> {
    let obj = object(v)?;
    Ok(v2::Timer {
        name: opt(obj, "name", "name", string)?.unwrap_or_default(),
        start: opt(obj, "start", "start", int64)?.unwrap_or(0),
        stop: opt(obj, "stop", "stop", int64)?.unwrap_or(0),
    })
}

fn event(v: &Value) -> Parsed<v2::Event> {
    let obj = object(v)?;
    Ok(v2::Event {
        title: opt(obj, "title", "title", string)?.unwrap_or_default(),
        body: opt(obj, "body", "body", string)?.unwrap_or_default(),
    })
}

fn tag_value(v: &Value) -> Parsed<v2::Value> {
    let obj = object(v)?;
    let data = if let Some(t) = opt(obj, "text", "text", string)? {
        Some(Data::Text(t))
    } else if let Some(i) = opt(obj, "integer", "integer", int64)? {
        Some(Data::Integer(i))
    } else {
        opt(obj, "decimal", "decimal", double)?.map(Data::Decimal)
    };
    Ok(v2::Value { data })
}

/// The field under either spelling; `null` counts as absent.
fn field<'a>(obj: &'a Map<String, Value>, snake: &str, camel: &str) -> Option<&'a Value> {
    obj.get(snake)
        .or_else(|| obj.get(camel))
        .filter(|v| !v.is_null())
}

fn opt<T>(
    obj: &Map<String, Value>,
    snake: &str,
    camel: &str,
    parse: impl Fn(&Value) -> Parsed<T>,
) -> Parsed<Option<T>> {
    field(obj, snake, camel)
        .map(|v| parse(v).map_err(|e| e.at(snake)))
        .transpose()
}

fn object(v: &Value) -> Parsed<&Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(Failure::new(format!(
            "expected an object, got {}",
            kind(other)
        ))),
    }
}

fn map_of<T>(v: &Value, parse: impl Fn(&Value) -> Parsed<T>) -> Parsed<HashMap<String, T>> {
    object(v)?
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| Ok((k.clone(), parse(v).map_err(|e| e.at(k))?)))
        .collect()
}

fn string(v: &Value) -> Parsed<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(Failure::new(format!(
            "expected a string, got {}",
            kind(other)
        ))),
    }
}

fn int64(v: &Value) -> Parsed<i64> {
    let parsed = match v {
        Value::String(s) => s.trim().parse::<i64>().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    };
    parsed.ok_or_else(|| {
        Failure::new(format!(
            "expected an int64 (a string of digits), got {}",
            short(v)
        ))
    })
}

fn uint64(v: &Value) -> Parsed<u64> {
    let parsed = match v {
        Value::String(s) => s.trim().parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    parsed.ok_or_else(|| {
        Failure::new(format!(
            "expected a uint64 (a string of digits), got {}",
            short(v)
        ))
    })
}

fn double(v: &Value) -> Parsed<f64> {
    let parsed = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            other => other.trim().parse::<f64>().ok(),
        },
        _ => None,
    };
    parsed.ok_or_else(|| Failure::new(format!("expected a number, got {}", short(v))))
}

/// protojson writes standard base64 with padding but must read URL-safe and unpadded too.
const STANDARD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn bytes(v: &Value) -> Parsed<Bytes> {
    let Value::String(s) = v else {
        return Err(Failure::new(format!(
            "expected a base64 string, got {}",
            kind(v)
        )));
    };
    STANDARD
        .decode(s)
        .or_else(|_| URL_SAFE.decode(s))
        .map(Bytes::from)
        .map_err(|e| Failure::new(format!("not base64 ({e})")))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value for an error message: short, and escaped by serde_json.
fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 40 {
        let mut cut = 40;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Vec<v2::Envelope> {
        let base = v2::Envelope {
            timestamp: 1_727_941_230_570_000_000,
            source_id: "app-1".into(),
            instance_id: "0".into(),
            tags: HashMap::from([("source_type".into(), "APP/PROC/WEB".into())]),
            deprecated_tags: HashMap::from([
                (
                    "t".into(),
                    v2::Value {
                        data: Some(Data::Text("x".into())),
                    },
                ),
                (
                    "i".into(),
                    v2::Value {
                        data: Some(Data::Integer(-5)),
                    },
                ),
                (
                    "d".into(),
                    v2::Value {
                        data: Some(Data::Decimal(1.5)),
                    },
                ),
            ]),
            hydrant_sequence: u64::MAX,
            hydrant_sequence_stream: u64::MAX - 1,
            ..v2::Envelope::default()
        };
        let with = |m: Message| v2::Envelope {
            message: Some(m),
            ..base.clone()
        };
        vec![
            with(Message::Log(v2::Log {
                payload: Bytes::from_static(b"hi \xff\x1b[2J"),
                r#type: 1,
            })),
            with(Message::Counter(v2::Counter {
                name: "requests".into(),
                delta: 3,
                total: u64::MAX,
            })),
            with(Message::Gauge(v2::Gauge {
                metrics: HashMap::from([
                    (
                        "cpu".into(),
                        v2::GaugeValue {
                            unit: "percentage".into(),
                            value: 12.5,
                        },
                    ),
                    (
                        "inf".into(),
                        v2::GaugeValue {
                            unit: String::new(),
                            value: f64::INFINITY,
                        },
                    ),
                ]),
            })),
            with(Message::Timer(v2::Timer {
                name: "http".into(),
                start: i64::MIN,
                stop: i64::MAX,
            })),
            with(Message::Event(v2::Event {
                title: "t".into(),
                body: "b".into(),
            })),
            v2::Envelope::default(),
        ]
    }

    #[test]
    fn inverts_the_envelope_crate_json() {
        let envs = sample();
        let body = json!({ "envelopes": crate::json::batch(&envs) }).to_string();
        assert_eq!(read_response(body.as_bytes()).unwrap(), envs);
    }

    #[test]
    fn accepts_protojson_variants() {
        let e = from_json(&json!({
            "timestamp": 5,
            "sourceId": "s",
            "instanceId": null,
            "hydrantSequence": 9,
            "log": { "payload": "aGk", "type": 0 },
            "unknown_future_field": {"x": 1},
        }))
        .unwrap();
        assert_eq!(
            (e.timestamp, e.source_id.as_str(), e.hydrant_sequence),
            (5, "s", 9)
        );
        let Some(Message::Log(l)) = e.message else {
            panic!()
        };
        assert_eq!(&l.payload[..], b"hi");
        let e = from_json(&json!({"log": {"payload_text": "plain"}})).unwrap();
        let Some(Message::Log(l)) = e.message else {
            panic!()
        };
        assert_eq!(&l.payload[..], b"plain");
        assert!(read_response(b"{}").unwrap().is_empty());
        assert!(read_response(br#"{"envelopes":{}}"#).unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({"timestamp": "soon"}), "timestamp"),
            (json!({"tags": {"a": 1}}), "tags.a: expected a string"),
            (json!({"log": {"payload": "!!"}}), "log.payload: not base64"),
            (json!({"log": {"type": "WARN"}}), "log.type: expected"),
            (json!({"log": {}, "event": {}}), "more than one"),
            (
                json!({"gauge": {"metrics": {"m": {"value": "x"}}}}),
                "gauge.metrics.m.value: expected a number",
            ),
            (json!([1]), "expected an object"),
        ];
        for (value, needle) in cases {
            let err = from_json(&value).unwrap_err();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
        let err =
            read_response(br#"{"envelopes":{"batch":[{}, {"timestamp": true}]}}"#).unwrap_err();
        assert!(err.starts_with("envelope 1: timestamp"), "{err}");
        assert!(read_response(b"not json").unwrap_err().contains("not JSON"));
    }
}
