//! Envelope builders and a pinned clock for the windows tests.
#![allow(dead_code, reason = "each test file uses a different subset")]
#![allow(clippy::unwrap_used, reason = "test code")]

use std::time::{Duration, Instant};

use bytes::Bytes;
use hydrant_envelope::v2;
use hydrant_envelope::wire::{EnvelopeView, encode};
use hydrant_testkit::envelopes::{self, envelope, timer};
use hydrant_windows::{Windows, WindowsConfig};

/// A UNIX second on a minute boundary, so minute arithmetic in tests is plain.
pub const BASE_UNIX: u64 = 1_700_000_040;

#[derive(Debug)]
pub struct Rig {
    pub w: Windows,
    pub base: Instant,
}

impl Rig {
    pub fn new(config: WindowsConfig) -> Self {
        let base = Instant::now();
        let w = Windows::with_clock(config, base, BASE_UNIX).unwrap();
        Self { w, base }
    }

    /// The instant `secs` (fractional) after the base.
    pub fn at(&self, secs: f64) -> Instant {
        self.base + Duration::from_secs_f64(secs)
    }

    pub fn feed(&mut self, env: &v2::Envelope, secs: f64) {
        let now = self.at(secs);
        let bytes = encode(env);
        let view = EnvelopeView::parse(&bytes).unwrap();
        self.w.observe(&view, now);
    }
}

/// The router's `http` Timer for one response taking `latency_us`.
pub fn http(source: &str, instance: &str, status: u16, latency_us: i64) -> v2::Envelope {
    http_tagged(source, instance, status, latency_us, &[])
}

pub fn http_tagged(
    source: &str,
    instance: &str,
    status: u16,
    latency_us: i64,
    extra: &[(&str, &str)],
) -> v2::Envelope {
    let status = status.to_string();
    let mut tags = vec![
        ("peer_type", "Client"),
        ("method", "GET"),
        ("status_code", status.as_str()),
        ("uri", "http://demo.local/"),
        ("app_id", source),
        ("instance_id", instance),
    ];
    tags.extend_from_slice(extra);
    envelope(
        1,
        source,
        instance,
        &tags,
        timer("http", 1_000_000_000, 1_000_000_000 + latency_us * 1000),
    )
}

pub fn gauge(source: &str, instance: &str, metrics: &[(&str, f64)]) -> v2::Envelope {
    let metrics: Vec<_> = metrics.iter().map(|&(n, v)| (n, v, "bytes")).collect();
    envelope(1, source, instance, &[], envelopes::gauge(&metrics))
}

pub fn log(source: &str, instance: &str, source_type: &str, err: bool) -> v2::Envelope {
    envelope(
        1,
        source,
        instance,
        &[("source_type", source_type)],
        v2::envelope::Message::Log(v2::Log {
            payload: Bytes::from_static(b"hello"),
            r#type: i32::from(err),
        }),
    )
}

pub fn event(source: &str, instance: &str, title: &str) -> v2::Envelope {
    envelope(
        1,
        source,
        instance,
        &[],
        v2::envelope::Message::Event(v2::Event {
            title: title.to_owned(),
            body: String::new(),
        }),
    )
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
