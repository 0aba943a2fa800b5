//! Envelope builders and a pinned clock for the windows tests.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hydrant_envelope::v2;
use hydrant_envelope::wire::{EnvelopeView, encode};
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

fn envelope(
    source: &str,
    instance: &str,
    tags: &[(&str, &str)],
    message: v2::envelope::Message,
) -> v2::Envelope {
    v2::Envelope {
        timestamp: 1,
        source_id: source.to_owned(),
        instance_id: instance.to_owned(),
        tags: tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        message: Some(message),
        ..v2::Envelope::default()
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
        source,
        instance,
        &tags,
        v2::envelope::Message::Timer(v2::Timer {
            name: "http".to_owned(),
            start: 1_000_000_000,
            stop: 1_000_000_000 + latency_us * 1000,
        }),
    )
}

pub fn gauge(source: &str, instance: &str, metrics: &[(&str, f64)]) -> v2::Envelope {
    let metrics: HashMap<String, v2::GaugeValue> = metrics
        .iter()
        .map(|(n, v)| {
            (
                (*n).to_owned(),
                v2::GaugeValue {
                    unit: "bytes".to_owned(),
                    value: *v,
                },
            )
        })
        .collect();
    envelope(
        source,
        instance,
        &[],
        v2::envelope::Message::Gauge(v2::Gauge { metrics }),
    )
}

pub fn log(source: &str, instance: &str, source_type: &str, err: bool) -> v2::Envelope {
    envelope(
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
