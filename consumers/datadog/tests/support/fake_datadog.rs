//! A strict stand-in for Datadog's intake on a loopback port: `POST /api/v2/series`,
//! `/api/v1/distribution_points` and `/api/v2/logs`, checked against the documented contract.
//!
//! Datadog itself cannot be reached from here, so this fake checks what the nozzle relies on,
//! strictly, and answers the way Datadog documents:
//! - headers: `DD-API-KEY` equal to the expected key (else 403), `Content-Type:
//!   application/json` (else 400), a documented `Content-Encoding` for the endpoint (v2 series:
//!   `deflate`, `zstd1`, `gzip`; distribution points: `deflate`; logs: `gzip`, `deflate`);
//! - sizes: a compressed series body over 512000 bytes, or one that decompresses to 5242880
//!   bytes or more, is answered 413 (logs: more than 5 MB or 1000 entries);
//! - v2 schema: `{"series":[...]}` only; each series has a non-empty `metric` of at most 200
//!   ASCII letters, digits, `_` and `.`; `type` one of 0, 1, 2, 3; `points` a non-empty array of
//!   `{timestamp, value}` with an integer timestamp in POSIX *seconds* (not more than an hour
//!   old or ten minutes ahead) and a finite number value; `interval` a positive integer,
//!   required for counts; `tags` strings of the form `key:value` within Datadog's tag alphabet
//!   and 200 characters; only documented fields. Anything else is a 400.
//!
//! Answers can be scripted per request (429 with `Retry-After`, 5xx, 4xx) to test retries;
//! every request is recorded with its status, and accepted series are kept for assertions.
#![allow(dead_code, reason = "each test binary uses a part")]

use std::collections::VecDeque;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{MethodRouter, post};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const MAX_COMPRESSED: usize = 512_000;
pub const MAX_DECOMPRESSED: usize = 5_242_880;

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
        }
    }

    pub fn throttled(retry_after: &str) -> Self {
        Self {
            status: 429,
            retry_after: Some(retry_after.to_owned()),
        }
    }
}

/// What one request looked like and how it was answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub status: u16,
    /// Why it was refused, when the contract was broken.
    pub problem: Option<String>,
    /// The decoded body, when it could be decoded.
    pub body: Option<Value>,
    pub compressed_len: usize,
    /// When it arrived.
    pub at: std::time::Instant,
}

/// What one endpoint accepts.
struct Contract {
    path: &'static str,
    encodings: &'static [&'static str],
    max_compressed: usize,
    max_decompressed: usize,
    check: fn(&Value) -> Result<(), String>,
}

#[derive(Debug, Default)]
struct Inner {
    script: VecDeque<Reply>,
    seen: Vec<Seen>,
    /// How long each request takes before it is answered (a slow intake).
    delay: std::time::Duration,
}

#[derive(Clone)]
pub struct FakeDatadog {
    pub addr: SocketAddr,
    key: Arc<str>,
    inner: Arc<Mutex<Inner>>,
    shutdown: CancellationToken,
}

impl FakeDatadog {
    pub async fn start(key: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Self {
            addr: listener.local_addr().unwrap(),
            key: key.into(),
            inner: Arc::default(),
            shutdown: CancellationToken::new(),
        };
        let app = Router::new()
            .route(SERIES.path, intake(&SERIES))
            .route(DISTRIBUTION.path, intake(&DISTRIBUTION))
            .route(LOGS.path, intake(&LOGS))
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(fake.clone());
        let stop = fake.shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap();
        });
        fake
    }

    /// Stops serving (connections already open finish their request).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next requests (any endpoint) get these answers, in order, before normal handling.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.lock().unwrap().script.extend(replies);
    }

    /// Every request from now on takes `delay` before it is answered.
    pub fn slow_down(&self, delay: std::time::Duration) {
        self.inner.lock().unwrap().delay = delay;
    }

    async fn pause(&self) {
        let delay = self.inner.lock().unwrap().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// Accepted series of `path`, flattened.
    pub fn accepted(&self, path: &str) -> Vec<Value> {
        self.seen()
            .into_iter()
            .filter(|s| s.path == path && (200..300).contains(&s.status))
            .filter_map(|s| s.body)
            .flat_map(|b| match b {
                Value::Object(mut o) => match o.remove("series") {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                },
                Value::Array(a) => a,
                _ => Vec::new(),
            })
            .collect()
    }

    /// Requests the fake refused for breaking the contract (never scripted ones).
    pub fn violations(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.problem.is_some())
            .collect()
    }

    fn record(&self, seen: Seen) -> (StatusCode, HeaderMap, String) {
        let status = seen.status;
        let problem = seen.problem.clone();
        self.inner.lock().unwrap().seen.push(seen);
        let body = match problem {
            Some(p) => serde_json::json!({ "errors": [p] }).to_string(),
            None if status < 300 => "{}".to_owned(),
            None => serde_json::json!({ "errors": ["scripted"] }).to_string(),
        };
        (
            StatusCode::from_u16(status).unwrap(),
            HeaderMap::new(),
            body,
        )
    }

    /// Common to every endpoint: scripted answer, key, content type, encoding, sizes, JSON.
    fn handle(
        &self,
        contract: &Contract,
        headers: &HeaderMap,
        body: &[u8],
    ) -> (StatusCode, HeaderMap, String) {
        let Contract {
            path,
            encodings,
            max_compressed,
            max_decompressed,
            check,
        } = *contract;
        let scripted = self.inner.lock().unwrap().script.pop_front();
        let decoded = decode(headers, body, encodings, max_decompressed);
        if let Some(reply) = scripted {
            let mut h = HeaderMap::new();
            if let Some(after) = reply.retry_after {
                h.insert("retry-after", after.parse().unwrap());
            }
            self.inner.lock().unwrap().seen.push(Seen {
                path: path.to_owned(),
                status: reply.status,
                problem: None,
                body: decoded.ok(),
                compressed_len: body.len(),
                at: std::time::Instant::now(),
            });
            return (
                StatusCode::from_u16(reply.status).unwrap(),
                h,
                String::new(),
            );
        }
        let mut seen = Seen {
            path: path.to_owned(),
            status: 202,
            problem: None,
            body: None,
            compressed_len: body.len(),
            at: std::time::Instant::now(),
        };
        let key = headers.get("dd-api-key").and_then(|v| v.to_str().ok());
        if key != Some(&*self.key) {
            seen.status = 403;
            seen.problem = Some("Forbidden: missing or wrong DD-API-KEY".to_owned());
            return self.record(seen);
        }
        if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
            seen.status = 400;
            seen.problem = Some("Content-Type must be application/json".to_owned());
            return self.record(seen);
        }
        if body.len() > max_compressed {
            seen.status = 413;
            seen.problem = Some(format!("payload of {} bytes is too large", body.len()));
            return self.record(seen);
        }
        match decoded {
            Err((status, p)) => {
                seen.status = status;
                seen.problem = Some(p);
            }
            Ok(json) => {
                if let Err(p) = check(&json) {
                    seen.status = 400;
                    seen.problem = Some(p);
                }
                seen.body = Some(json);
            }
        }
        self.record(seen)
    }
}

fn decode(
    headers: &HeaderMap,
    body: &[u8],
    encodings: &[&str],
    max_decompressed: usize,
) -> Result<Value, (u16, String)> {
    let encoding = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !encodings.contains(&encoding) {
        return Err((
            400,
            format!("Content-Encoding {encoding:?} is not one of {encodings:?}"),
        ));
    }
    let mut plain = Vec::new();
    // One byte past the limit is enough to know it is too large, without unbounded memory.
    let limit = max_decompressed as u64;
    let read = match encoding {
        "gzip" => flate2::read::GzDecoder::new(body)
            .take(limit)
            .read_to_end(&mut plain),
        "deflate" => flate2::read::ZlibDecoder::new(body)
            .take(limit)
            .read_to_end(&mut plain),
        other => return Err((400, format!("this fake cannot decode {other}"))),
    };
    read.map_err(|e| (400, format!("body does not decompress: {e}")))?;
    if plain.len() >= max_decompressed {
        return Err((413, "decompressed payload is too large".to_owned()));
    }
    serde_json::from_slice(&plain).map_err(|e| (400, format!("body is not JSON: {e}")))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn check_metric_name(name: &Value) -> Result<(), String> {
    let name = name.as_str().ok_or("metric must be a string")?;
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid metric name {name:?}"))
    }
}

fn check_tags(tags: Option<&Value>) -> Result<(), String> {
    let Some(tags) = tags else { return Ok(()) };
    for t in tags.as_array().ok_or("tags must be an array")? {
        let t = t.as_str().ok_or("every tag must be a string")?;
        let ok = t.len() <= 200
            && t.split_once(':').is_some_and(|(k, _)| !k.is_empty())
            && t.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.' | b'/')
            });
        if !ok {
            return Err(format!("invalid tag {t:?}"));
        }
    }
    Ok(())
}

fn check_timestamp(ts: &Value) -> Result<i64, String> {
    let ts = ts
        .as_i64()
        .ok_or_else(|| format!("timestamp {ts} must be an integer"))?;
    let now = now();
    if ts < now - 3_600 || ts > now + 600 {
        return Err(format!(
            "timestamp {ts} is not POSIX seconds within an hour ago .. ten minutes ahead (now {now})"
        ));
    }
    Ok(ts)
}

fn series_list(body: &Value) -> Result<&Vec<Value>, String> {
    let obj = body.as_object().ok_or("body must be an object")?;
    if obj.keys().any(|k| k != "series") {
        return Err("only `series` is allowed at the top level".to_owned());
    }
    obj.get("series")
        .and_then(Value::as_array)
        .ok_or_else(|| "`series` is required and must be an array".to_owned())
}

pub fn check_v2(body: &Value) -> Result<(), String> {
    const FIELDS: [&str; 9] = [
        "interval",
        "metadata",
        "metric",
        "points",
        "resources",
        "source_type_name",
        "tags",
        "type",
        "unit",
    ];
    for s in series_list(body)? {
        let o = s.as_object().ok_or("a series must be an object")?;
        if let Some(k) = o.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(format!("unknown series field {k:?}"));
        }
        check_metric_name(o.get("metric").ok_or("metric is required")?)?;
        let kind = match o.get("type") {
            None => 0,
            Some(t) => t
                .as_u64()
                .filter(|t| *t <= 3)
                .ok_or("type must be 0, 1, 2 or 3")?,
        };
        if let Some(i) = o.get("interval") {
            i.as_i64()
                .filter(|i| *i > 0)
                .ok_or("interval must be a positive integer")?;
        } else if kind == 1 || kind == 2 {
            return Err("a count or rate needs an interval".to_owned());
        }
        if let Some(u) = o.get("unit") {
            u.as_str().ok_or("unit must be a string")?;
        }
        let points = points_of(o)?;
        for p in points {
            let p = p.as_object().ok_or("a point must be an object")?;
            if p.keys().any(|k| k != "timestamp" && k != "value") {
                return Err("a point has only timestamp and value".to_owned());
            }
            check_timestamp(p.get("timestamp").ok_or("point timestamp is required")?)?;
            p.get("value")
                .and_then(Value::as_f64)
                .filter(|v| v.is_finite())
                .ok_or("point value must be a number")?;
        }
        check_tags(o.get("tags"))?;
    }
    Ok(())
}

/// A series' `points`, which both APIs require to be a non-empty array.
fn points_of(series: &serde_json::Map<String, Value>) -> Result<&Vec<Value>, String> {
    Ok(series
        .get("points")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or("points is required and must be a non-empty array")?)
}

pub fn check_distribution(body: &Value) -> Result<(), String> {
    for s in series_list(body)? {
        let o = s.as_object().ok_or("a series must be an object")?;
        if let Some(k) = o
            .keys()
            .find(|k| !["host", "metric", "points", "tags", "type"].contains(&k.as_str()))
        {
            return Err(format!("unknown distribution field {k:?}"));
        }
        check_metric_name(o.get("metric").ok_or("metric is required")?)?;
        if let Some(t) = o.get("type")
            && t != "distribution"
        {
            return Err("type must be \"distribution\"".to_owned());
        }
        let points = points_of(o)?;
        for p in points {
            let pair = p
                .as_array()
                .filter(|a| a.len() == 2)
                .ok_or("a point is [timestamp, [values]]")?;
            check_timestamp(&pair[0])?;
            let values = pair[1].as_array().ok_or("point values must be an array")?;
            if values
                .iter()
                .any(|v| !v.as_f64().is_some_and(f64::is_finite))
            {
                return Err("point values must be numbers".to_owned());
            }
        }
        check_tags(o.get("tags"))?;
    }
    Ok(())
}

pub fn check_logs(body: &Value) -> Result<(), String> {
    let entries = body.as_array().ok_or("logs body must be an array")?;
    if entries.len() > 1_000 {
        return Err(format!("{} entries, more than 1000", entries.len()));
    }
    for e in entries {
        let o = e.as_object().ok_or("a log must be an object")?;
        for k in ["ddsource", "ddtags", "service", "message"] {
            o.get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("log field {k} must be a string"))?;
        }
    }
    Ok(())
}

const SERIES: Contract = Contract {
    path: "/api/v2/series",
    encodings: &["deflate", "zstd1", "gzip"],
    max_compressed: MAX_COMPRESSED,
    max_decompressed: MAX_DECOMPRESSED,
    check: check_v2,
};

const DISTRIBUTION: Contract = Contract {
    path: "/api/v1/distribution_points",
    encodings: &["deflate"],
    max_compressed: MAX_COMPRESSED,
    max_decompressed: MAX_DECOMPRESSED,
    check: check_distribution,
};

const LOGS: Contract = Contract {
    path: "/api/v2/logs",
    encodings: &["gzip", "deflate"],
    max_compressed: MAX_DECOMPRESSED,
    max_decompressed: 5_000_000,
    check: check_logs,
};

/// The endpoint that holds requests to `contract`.
fn intake(contract: &'static Contract) -> MethodRouter<FakeDatadog> {
    post(
        move |State(fake): State<FakeDatadog>, headers: HeaderMap, body: Bytes| async move {
            fake.pause().await;
            fake.handle(contract, &headers, &body)
        },
    )
}
