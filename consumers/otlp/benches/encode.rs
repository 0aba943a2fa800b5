//! The OTLP encode path's cost: a batch of 1000 queued items turned into one encoded export
//! request, as a sender does for every export. Logs are ~250-byte app lines with the usual
//! four tags; metrics are a mix of container gauges (3 points each), counters and `http`
//! timers. Reported as items/s; one nozzle must keep up with 100,000 envelopes/s.
//!
//! Run with `cargo bench -p hydrant-nozzle-otlp --bench encode`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "bench code")]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hydrant_envelope::v2;
use hydrant_envelope::wire::encode;
use hydrant_nozzle_otlp::encode::{Item, Mapping, MetricsEncoder};
use hydrant_nozzle_otlp::export::RequestEncoder;
use hydrant_testkit::envelopes::{self, APP_TAGS, counter, gauge, timer};

const BATCH: usize = 1_000;

fn envelope(i: usize, message: v2::envelope::Message) -> bytes::Bytes {
    let timestamp = 1_700_000_000_000_000_000 + i as i64 * 1_001_000;
    let source = format!("6f1c8e6a-2b9d-4c47-9a43-0d7c5b1e2f3{}", i % 4);
    let instance = (i % 3).to_string();
    encode(&envelopes::envelope(
        timestamp, &source, &instance, &APP_TAGS, message,
    ))
}

fn log_items() -> Vec<Item> {
    (0..BATCH)
        .map(|i| Item {
            envelope: envelope(
                i,
                v2::envelope::Message::Log(v2::Log {
                    payload: format!("{i:06} GET /index.html 200 {}", "x".repeat(80))
                        .into_bytes()
                        .into(),
                    r#type: 0,
                }),
            ),
            point: 0,
        })
        .collect()
}

fn metric_items() -> Vec<Item> {
    let mut items = Vec::with_capacity(BATCH);
    let mut i = 0;
    while items.len() < BATCH {
        let v = i as f64;
        let gauge = envelope(
            i,
            gauge(&[
                ("cpu", v, "percentage"),
                ("memory", v, "bytes"),
                ("disk", v, "bytes"),
            ]),
        );
        for point in 0..3 {
            items.push(Item {
                envelope: gauge.clone(),
                point,
            });
        }
        items.push(Item {
            envelope: envelope(i, counter("requests", 1, i as u64)),
            point: 0,
        });
        items.push(Item {
            envelope: envelope(i, timer("http", 0, (i as i64 % 500) * 1_000_000)),
            point: 0,
        });
        i += 1;
    }
    items.truncate(BATCH);
    items
}

fn bench_encode(c: &mut Criterion) {
    let logs = log_items();
    let metrics = metric_items();
    let mut group = c.benchmark_group("otlp");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut encoder = RequestEncoder::Logs;
    group.bench_function("logs_request_1000", |b| {
        b.iter(|| encoder.encode(&logs).0.len());
    });
    let mut encoder = RequestEncoder::metrics(MetricsEncoder::new(Mapping::default()));
    group.bench_function("metrics_request_1000", |b| {
        b.iter(|| encoder.encode(&metrics).0.len());
    });
    group.finish();
}

criterion_group!(benches, bench_encode);
criterion_main!(benches);
