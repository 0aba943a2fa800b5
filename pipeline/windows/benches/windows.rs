//! Criterion bench of the rolling windows: how many mixed envelopes (router timers, app logs,
//! container gauges) one core observes per second, and what the readers cost. The control loops
//! and consoles feed every firehose envelope through `observe`, so this is their hot path.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "bench code"
)]
//! Windows costs: folding a realistic firehose mix in (router timers, app logs, container
//! gauges over 100 apps) and answering an autoscaler's queries. `cargo bench -p
//! hydrant-windows`.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hydrant_envelope::v2;
use hydrant_firehose_client::Batch;
use hydrant_windows::{Windows, WindowsConfig};

fn envelope(app: usize, instance: usize, i: usize) -> v2::Envelope {
    let tags = |pairs: &[(&str, String)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    };
    let (tags, message) = match i % 10 {
        0..6 => (
            tags(&[
                ("peer_type", "Client".to_owned()),
                ("method", "GET".to_owned()),
                (
                    "status_code",
                    if i.is_multiple_of(50) { "503" } else { "200" }.to_owned(),
                ),
                ("uri", "http://demo.apps.local/api/items".to_owned()),
                ("request_id", format!("5f0c{i:028}")),
                ("user_agent", "curl/8.0".to_owned()),
                ("remote_address", "127.0.0.1:50000".to_owned()),
                ("app_id", format!("app-{app}")),
                ("instance_id", instance.to_string()),
                ("routing_instance_id", format!("guid-{instance}")),
                ("origin", "hydrant-router".to_owned()),
            ]),
            v2::envelope::Message::Timer(v2::Timer {
                name: "http".to_owned(),
                start: 1_000_000_000,
                stop: 1_000_000_000 + ((i * 7919) % 50_000_000) as i64,
            }),
        ),
        6..9 => (
            tags(&[("source_type", "APP/PROC/WEB".to_owned())]),
            v2::envelope::Message::Log(v2::Log {
                payload: bytes::Bytes::from_static(b"GET /api/items 200 in 12ms"),
                r#type: 0,
            }),
        ),
        _ => (
            HashMap::new(),
            v2::envelope::Message::Gauge(v2::Gauge {
                metrics: [
                    ("cpu", 12.5),
                    ("memory", 1e8),
                    ("disk", 5e7),
                    ("memory_quota", 1e9),
                ]
                .into_iter()
                .map(|(n, v)| {
                    (
                        n.to_owned(),
                        v2::GaugeValue {
                            unit: "bytes".to_owned(),
                            value: v,
                        },
                    )
                })
                .collect(),
            }),
        ),
    };
    v2::Envelope {
        timestamp: 1,
        source_id: format!("app-{app}"),
        instance_id: instance.to_string(),
        tags,
        message: Some(message),
        ..v2::Envelope::default()
    }
}

fn batch() -> Batch {
    let envs: Vec<v2::Envelope> = (0..1000).map(|i| envelope(i % 100, i % 4, i)).collect();
    Batch::from_envelopes(&envs)
}

fn observe(c: &mut Criterion) {
    let batch = batch();
    let mut g = c.benchmark_group("observe");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("1000_envelopes_100_apps", |b| {
        let base = Instant::now();
        let mut w = Windows::with_clock(WindowsConfig::default(), base, 1_700_000_040).unwrap();
        // Each batch lands 10 ms later, so seconds roll over and buckets expire as in life.
        let mut t = Duration::ZERO;
        b.iter(|| {
            t += Duration::from_millis(10);
            black_box(w.observe_batch(black_box(&batch), base + t));
        });
    });
    g.finish();
}

fn query(c: &mut Criterion) {
    let batch = batch();
    let base = Instant::now();
    let mut w = Windows::with_clock(WindowsConfig::default(), base, 1_700_000_040).unwrap();
    for s in 0..120u64 {
        w.observe_batch(&batch, base + Duration::from_secs(s));
    }
    let now = base + Duration::from_secs(120);
    c.bench_function("query/p95_60s", |b| {
        b.iter(|| {
            let app = w.app("app-3").unwrap();
            black_box(app.latency_quantile(0.95, Duration::from_secs(60), now))
        });
    });
    c.bench_function("query/rate_status_gauge_60s", |b| {
        b.iter(|| {
            let app = w.app("app-3").unwrap();
            let win = Duration::from_secs(60);
            black_box((
                app.requests(win, now),
                app.status_classes(win, now),
                app.gauge("memory", win, now),
            ))
        });
    });
}

criterion_group!(benches, observe, query);
criterion_main!(benches);
