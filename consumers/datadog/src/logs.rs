//! Log and Event envelopes as entries for Datadog's logs intake (`POST /api/v2/logs`), when
//! `[logs] enabled = true`.
//!
//! Flow: reader → [`entry`] (one JSON object per envelope) → the logs endpoint's bounded
//! `DestinationQueue` → a batch of at most 1000 entries → [`payload`] (a gzip-compressed JSON
//! array) → the sender.
//!
//! Invariants: a message is valid UTF-8 JSON whatever bytes the app wrote (invalid sequences
//! are replaced, JSON escaping covers control characters); an encoded entry is at most the
//! intake's 1 MB per log (the message is cut to fit), so a batch of `batch_bytes` ≤ 4 MB stays
//! within its 5 MB per request; `ddtags` carries the same sanitised `key:value` tags as the
//! metrics.

use std::io::Write;

use bytes::Bytes;
use hydrant_envelope::semantic::tag as key;
use hydrant_envelope::wire::{EnvelopeView, Kind};
use serde::Serialize;

use crate::Compression;
use crate::config::DATADOG_LOG_MAX_BYTES;
use crate::series::{Payload, tag};

#[derive(Serialize)]
struct Entry<'a> {
    ddsource: &'a str,
    ddtags: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    hostname: &'a str,
    service: &'a str,
    message: &'a str,
    status: &'static str,
    /// Milliseconds since the epoch, an attribute the intake reads as the log's date.
    timestamp: i64,
}

/// One envelope as an encoded intake entry; `None` for anything but logs and events.
#[must_use]
pub fn entry(view: &EnvelopeView<'_>, source: &str, extra_tags: &[String]) -> Option<Bytes> {
    let (message, status) = match view.kind {
        Kind::Log => {
            let (payload, err) = view.log()?;
            let payload = &payload[..payload.len().min(DATADOG_LOG_MAX_BYTES)];
            (
                String::from_utf8_lossy(payload).into_owned(),
                if err { "error" } else { "info" },
            )
        }
        Kind::Event => {
            let (title, body) = view.event()?;
            let mut m = format!("{title}: {body}");
            if m.len() > DATADOG_LOG_MAX_BYTES {
                let mut cut = DATADOG_LOG_MAX_BYTES;
                while !m.is_char_boundary(cut) {
                    cut -= 1;
                }
                m.truncate(cut);
            }
            (m, "info")
        }
        _ => return None,
    };
    let mut tags: Vec<String> = view.tags().map(|(k, v)| tag(k, v)).collect();
    if !view.source_id.is_empty() {
        tags.push(tag("source_id", view.source_id));
    }
    if !view.instance_id.is_empty() {
        tags.push(tag("instance_id", view.instance_id));
    }
    tags.extend(extra_tags.iter().cloned());
    tags.sort_unstable();
    tags.dedup();
    let service = view
        .tag(key::APP_NAME)
        .filter(|s| !s.is_empty())
        .unwrap_or(view.source_id);
    let mut e = Entry {
        ddsource: source,
        ddtags: tags.join(","),
        hostname: view.tag("ip").unwrap_or(""),
        service,
        message: &message,
        status,
        timestamp: view.timestamp / 1_000_000,
    };
    // JSON escaping can make a message up to six times longer (control characters become
    // \u001b): shrink it until the whole entry is within the intake's per-log limit.
    loop {
        let json = serde_json::to_vec(&e).ok()?;
        if json.len() <= DATADOG_LOG_MAX_BYTES || e.message.is_empty() {
            return Some(Bytes::from(json));
        }
        let mut cut = e.message.len() * DATADOG_LOG_MAX_BYTES / json.len() * 9 / 10;
        while !e.message.is_char_boundary(cut) {
            cut -= 1;
        }
        e.message = &e.message[..cut];
    }
}

/// A batch of entries as one gzip-compressed JSON array.
#[must_use]
pub fn payload(entries: &[Bytes]) -> Payload {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut plain = 2usize;
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(b"[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            let _ = enc.write_all(b",");
            plain += 1;
        }
        let _ = enc.write_all(e);
        plain += e.len();
    }
    let _ = enc.write_all(b"]");
    let body = enc.finish().unwrap_or_default();
    Payload {
        body: Bytes::from(body),
        compression: Compression::Gzip,
        uncompressed: plain,
        series: entries.len(),
        values: entries.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use hydrant_envelope::v2;
    use hydrant_envelope::wire::{EnvelopeView, encode};

    use super::entry;
    use crate::config::DATADOG_LOG_MAX_BYTES;

    #[test]
    fn a_huge_escaped_message_is_cut_to_the_per_log_limit() {
        let e = v2::Envelope {
            source_id: "app".to_owned(),
            message: Some(v2::envelope::Message::Log(v2::Log {
                // Every byte becomes six in JSON.
                payload: vec![0x1b; 200_000].into(),
                r#type: 1,
            })),
            ..v2::Envelope::default()
        };
        let bytes = encode(&e);
        let view = EnvelopeView::parse(&bytes).unwrap();
        let json = entry(&view, "hydrant", &[]).unwrap();
        assert!(json.len() <= DATADOG_LOG_MAX_BYTES, "{}", json.len());
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert!(v["message"].as_str().unwrap().len() > 100_000);
        assert_eq!(v["status"], "error");
        assert_eq!(v["service"], "app");
    }
}
