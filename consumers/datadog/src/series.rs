//! What Datadog receives: the `/api/v2/series` and `/api/v1/distribution_points` JSON
//! models, the name and tag rules, and the encoder that packs series into compressed request
//! bodies under Datadog's size limits.
//!
//! Flow: aggregator flush → [`Series`] / [`Distribution`] → [`encode`] → [`Payload`]s (one
//! request each) → the endpoint's outbox.
//!
//! Invariants: every body is below `max_uncompressed_bytes` before compression and at most
//! `max_compressed_bytes` after it (a chunk that compresses too big is split in half until it
//! fits; a single series that cannot fit is returned as refused, to be counted as dropped);
//! every payload knows how many envelope values it carries, so the ledger can be kept per
//! request whatever happens to it.

use std::io::Write;

use bytes::Bytes;
use serde::Serialize;

use crate::Compression;

/// Datadog's longest metric name and tag.
pub const MAX_NAME_LEN: usize = 200;

/// `MetricIntakeType` of the v2 API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// 1: a count of events over `interval` seconds.
    Count,
    /// 3: a value at a point in time.
    Gauge,
}

impl MetricType {
    /// The number the v2 JSON carries.
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            Self::Count => 1,
            Self::Gauge => 3,
        }
    }
}

impl Serialize for MetricType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.code())
    }
}

/// One v2 point: POSIX seconds and a value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// POSIX time in seconds.
    pub timestamp: i64,
    /// The value (never NaN or infinite: those are refused before they get here).
    pub value: f64,
}

/// One v2 series with its single point for the interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// `prefix` + name, sanitised.
    pub metric: String,
    /// Count or gauge.
    #[serde(rename = "type")]
    pub kind: MetricType,
    /// The points (one per interval from the aggregator).
    pub points: Vec<Point>,
    /// For counts: the interval the count covers, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    /// Datadog unit name (`millisecond`, `byte`, ...), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// `key:value` tags, sanitised, sorted.
    pub tags: Vec<String>,
    /// Envelope values folded into this series (the ledger's unit); not sent.
    #[serde(skip)]
    pub values: u64,
}

/// One distribution series: `[[timestamp, [v1, v2, ...]]]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Distribution {
    /// `prefix` + name, sanitised.
    pub metric: String,
    /// `(timestamp, values)` pairs; one per interval.
    pub points: Vec<(i64, Vec<f64>)>,
    /// Always `distribution`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `key:value` tags, sanitised, sorted.
    pub tags: Vec<String>,
    /// Envelope values folded into this series; not sent.
    #[serde(skip)]
    pub values: u64,
}

/// Whether `prefix` is a valid start of a Datadog metric name (or empty).
#[must_use]
pub fn is_valid_prefix(prefix: &str) -> bool {
    prefix.is_empty()
        || (prefix.len() < MAX_NAME_LEN
            && prefix.starts_with(|c: char| c.is_ascii_alphabetic())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.'))
}

/// `prefix` + `name`, with every character Datadog does not allow in a metric name turned
/// into `_`, cut to 200 characters.
#[must_use]
pub fn metric_name(prefix: &str, name: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + name.len());
    out.push_str(prefix);
    for c in name.chars() {
        if out.len() >= MAX_NAME_LEN {
            break;
        }
        out.push(if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            c
        } else {
            '_'
        });
    }
    if !out.starts_with(|c: char| c.is_ascii_alphabetic()) {
        out.insert(0, 'm');
        out.truncate(MAX_NAME_LEN);
    }
    out
}

fn tag_char(c: char) -> char {
    if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | '/') {
        c
    } else {
        '_'
    }
}

/// A tag as Datadog accepts it: only letters, digits and `_ - : . /` (anything else becomes
/// `_`), at most 200 characters.
#[must_use]
pub fn sanitize_tag(tag: &str) -> String {
    tag.chars().take(MAX_NAME_LEN).map(tag_char).collect()
}

/// `key:value` sanitised as one tag.
#[must_use]
pub fn tag(key: &str, value: &str) -> String {
    let mut out = String::with_capacity(key.len() + value.len() + 1);
    for c in key.chars().chain(std::iter::once(':')).chain(value.chars()) {
        if out.len() >= MAX_NAME_LEN {
            break;
        }
        out.push(tag_char(c));
    }
    out
}

/// Size and count limits of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most series per request.
    pub max_series: usize,
    /// Body must be below this before compression.
    pub max_uncompressed: usize,
    /// Body must be at most this after compression.
    pub max_compressed: usize,
}

/// One request body, compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The compressed body.
    pub body: Bytes,
    /// `Content-Encoding` of `body`.
    pub compression: Compression,
    /// Body length before compression.
    pub uncompressed: usize,
    /// Series in it.
    pub series: usize,
    /// Envelope values in it (the ledger unit).
    pub values: u64,
}

/// What [`encode`] made: the requests, and the values of series that could not fit any
/// request on their own.
#[derive(Debug, Default)]
pub struct Encoded {
    /// Bodies, each within the limits.
    pub payloads: Vec<Payload>,
    /// Values of series refused as too large.
    pub too_large: u64,
}

/// Packs `items` (each serialised once) into `{"series":[...]}` bodies within `limits`.
///
/// Greedy by count and uncompressed size, then compressed; a body over `max_compressed` is
/// split in half and each half compressed again.
pub fn encode<T: Serialize>(
    items: &[T],
    values: impl Fn(&T) -> u64,
    limits: Limits,
    compression: Compression,
) -> Encoded {
    const OPEN: &[u8] = b"{\"series\":[";
    const CLOSE: &[u8] = b"]}";
    let frame = OPEN.len() + CLOSE.len();
    let mut out = Encoded::default();
    let mut json = Vec::with_capacity(items.len() * 160);
    // (start, end, values) of each serialised item within `json`.
    let mut spans: Vec<(usize, usize, u64)> = Vec::with_capacity(items.len());
    for item in items {
        let start = json.len();
        if serde_json::to_writer(&mut json, item).is_err() {
            // Only non-finite floats can fail, and they are refused upstream; never send
            // half an item.
            json.truncate(start);
            out.too_large += values(item);
            continue;
        }
        let end = json.len();
        if end - start + frame >= limits.max_uncompressed {
            json.truncate(start);
            out.too_large += values(item);
            continue;
        }
        spans.push((start, end, values(item)));
    }
    let mut chunk_start = 0;
    let mut size = frame;
    for i in 0..spans.len() {
        let (s, e, _) = spans[i];
        let add = e - s + usize::from(i > chunk_start);
        if i > chunk_start
            && (i - chunk_start >= limits.max_series || size + add >= limits.max_uncompressed)
        {
            pack(&json, &spans[chunk_start..i], limits, compression, &mut out);
            chunk_start = i;
            size = frame;
        }
        size += e - s + usize::from(i > chunk_start);
    }
    if chunk_start < spans.len() {
        pack(&json, &spans[chunk_start..], limits, compression, &mut out);
    }
    out
}

fn pack(
    json: &[u8],
    spans: &[(usize, usize, u64)],
    limits: Limits,
    compression: Compression,
    out: &mut Encoded,
) {
    let mut body = Vec::with_capacity(json.len() / 8 + 64);
    let uncompressed = compress(json, spans, compression, &mut body);
    if body.len() <= limits.max_compressed {
        out.payloads.push(Payload {
            body: Bytes::from(body),
            compression,
            uncompressed,
            series: spans.len(),
            values: spans.iter().map(|s| s.2).sum(),
        });
        return;
    }
    if spans.len() == 1 {
        out.too_large += spans[0].2;
        return;
    }
    let (a, b) = spans.split_at(spans.len() / 2);
    pack(json, a, limits, compression, out);
    pack(json, b, limits, compression, out);
}

/// Writes `{"series":[item,item,...]}` through the compressor into `body`; returns the
/// uncompressed length.
fn compress(
    json: &[u8],
    spans: &[(usize, usize, u64)],
    compression: Compression,
    body: &mut Vec<u8>,
) -> usize {
    let level = flate2::Compression::default();
    let mut plain = 0usize;
    let mut write_all = |w: &mut dyn Write| -> std::io::Result<()> {
        w.write_all(b"{\"series\":[")?;
        plain += 11;
        for (i, (s, e, _)) in spans.iter().enumerate() {
            if i > 0 {
                w.write_all(b",")?;
                plain += 1;
            }
            w.write_all(&json[*s..*e])?;
            plain += e - s;
        }
        w.write_all(b"]}")?;
        plain += 2;
        Ok(())
    };
    // Writing into a Vec cannot fail.
    let _ = match compression {
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(body, level);
            write_all(&mut enc).and_then(|()| enc.finish().map(drop))
        }
        Compression::Deflate => {
            let mut enc = flate2::write::ZlibEncoder::new(body, level);
            write_all(&mut enc).and_then(|()| enc.finish().map(drop))
        }
    };
    plain
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::{Compression, Limits, MetricType, Point, Series, encode, metric_name, tag};

    fn series(i: usize, tags: usize) -> Series {
        Series {
            metric: format!("hydrant.metric_{i}"),
            kind: MetricType::Count,
            points: vec![Point {
                timestamp: 1_700_000_000,
                value: i as f64,
            }],
            interval: Some(10),
            unit: None,
            tags: (0..tags)
                .map(|t| format!("tag{t}:{:x}", fastrand::u64(..)))
                .collect(),
            values: 2,
        }
    }

    fn gunzip(b: &[u8]) -> serde_json::Value {
        let mut s = String::new();
        flate2::read::GzDecoder::new(b)
            .read_to_string(&mut s)
            .unwrap();
        serde_json::from_str(&s).unwrap()
    }

    #[test]
    fn names_and_tags_follow_datadogs_rules() {
        assert_eq!(
            metric_name("hydrant.", "http-requests/s"),
            "hydrant.http_requests_s"
        );
        assert_eq!(metric_name("", "9lives"), "m9lives");
        assert_eq!(metric_name("p.", &"x".repeat(500)).len(), 200);
        assert_eq!(tag("app name", "my app!"), "app_name:my_app_");
        assert_eq!(tag("k", &"v".repeat(500)).len(), 200);
    }

    #[test]
    fn the_json_is_the_v2_shape() {
        let e = encode(
            &[series(1, 1)],
            |s| s.values,
            Limits {
                max_series: 10,
                max_uncompressed: 10_000,
                max_compressed: 10_000,
            },
            Compression::Gzip,
        );
        let v = gunzip(&e.payloads[0].body);
        let s = &v["series"][0];
        assert_eq!(s["metric"], "hydrant.metric_1");
        assert_eq!(s["type"], 1);
        assert_eq!(s["interval"], 10);
        assert_eq!(s["points"][0]["timestamp"], 1_700_000_000);
        assert_eq!(s["points"][0]["value"], 1.0);
        assert!(s.get("values").is_none() && s.get("unit").is_none());
    }

    #[test]
    fn every_payload_is_within_the_limits_and_nothing_is_lost() {
        // Random tags barely compress, so the compressed limit is what splits here.
        let items: Vec<Series> = (0..3_000).map(|i| series(i, 8)).collect();
        let limits = Limits {
            max_series: 1_000,
            max_uncompressed: 300_000,
            max_compressed: 60_000,
        };
        let e = encode(&items, |s| s.values, limits, Compression::Gzip);
        assert_eq!(e.too_large, 0);
        assert!(e.payloads.len() > 3, "{}", e.payloads.len());
        let mut seen = 0;
        for p in &e.payloads {
            assert!(p.body.len() <= limits.max_compressed, "{}", p.body.len());
            assert!(p.uncompressed < limits.max_uncompressed);
            assert!(p.series <= limits.max_series);
            let v = gunzip(&p.body);
            let n = v["series"].as_array().unwrap().len();
            assert_eq!(n, p.series);
            assert_eq!(p.values, 2 * n as u64);
            seen += n;
        }
        assert_eq!(seen, items.len());
    }

    #[test]
    fn a_series_that_cannot_fit_is_refused_and_counted() {
        let mut big = series(0, 0);
        big.tags = (0..100)
            .map(|t| format!("t{t}:{}", "v".repeat(150)))
            .collect();
        let e = encode(
            &[series(1, 1), big],
            |s| s.values,
            Limits {
                max_series: 10,
                max_uncompressed: 5_000,
                max_compressed: 5_000,
            },
            Compression::Deflate,
        );
        assert_eq!(e.too_large, 2);
        assert_eq!(e.payloads.len(), 1);
        assert_eq!(e.payloads[0].values, 2);
    }
}
