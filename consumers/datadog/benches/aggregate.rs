//! The Datadog nozzle's hot path, as the reader runs it: firehose batches walked as zero-copy
//! views and folded into per-interval series, then one interval flushed and encoded into
//! gzip'd `/api/v2/series` bodies. Reported as envelopes/s.
//!
//! The mix is the firehose's metric traffic: per app instance, counters (two names), container
//! gauges (five metrics each) and router timers (five status codes), with eight platform tags,
//! over 250 apps × 4 instances — a few thousand series, so lookups hit existing series as in
//! steady state.
//!
//! Run with `cargo bench -p hydrant-nozzle-datadog --bench aggregate`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "bench code")]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hydrant_envelope::v2;
use hydrant_envelope::wire::{batch_of, encode as encode_envelope};
use hydrant_firehose_client::Batch;
use hydrant_nozzle_datadog::aggregate::{Aggregator, MapOptions};
use hydrant_nozzle_datadog::series::{Limits, encode};
use hydrant_nozzle_datadog::{Compression, Config, TimerMode};

/// Envelopes per firehose batch (the edge sends batches of about this size under load).
const BATCH: usize = 1_000;
/// Batches per measured interval: 100 × 1000 = 100,000 envelopes, one second at the target.
const BATCHES: usize = 100;

fn envelope(i: usize) -> v2::Envelope {
    let app = i % 250;
    let instance = (i / 250) % 4;
    let mut tags: std::collections::HashMap<String, String> = [
        ("app_name", format!("app-{app}")),
        ("space_name", "dev".to_owned()),
        ("organization_name", "demo".to_owned()),
        ("deployment", "hydrant".to_owned()),
        ("job", "executor".to_owned()),
        ("index", "0".to_owned()),
        ("ip", "10.0.0.7".to_owned()),
        ("origin", "executor".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let now = hydrant_envelope::now_nanos();
    let message = match i % 10 {
        0..=3 => v2::envelope::Message::Counter(v2::Counter {
            name: if i.is_multiple_of(2) {
                "requests"
            } else {
                "bytes_out"
            }
            .to_owned(),
            delta: (i % 7) as u64 + 1,
            total: 0,
        }),
        4..=7 => v2::envelope::Message::Gauge(v2::Gauge {
            metrics: [
                ("cpu", 0.25, "percentage"),
                ("memory", 1.5e8, "bytes"),
                ("disk", 3.2e8, "bytes"),
                ("memory_quota", 5.1e8, "bytes"),
                ("disk_quota", 1.0e9, "bytes"),
            ]
            .into_iter()
            .map(|(n, v, u)| {
                (
                    n.to_owned(),
                    v2::GaugeValue {
                        unit: u.to_owned(),
                        value: v + i as f64,
                    },
                )
            })
            .collect(),
        }),
        _ => {
            tags.insert(
                "status_code".to_owned(),
                ["200", "201", "304", "404", "500"][i % 5].to_owned(),
            );
            v2::envelope::Message::Timer(v2::Timer {
                name: "http".to_owned(),
                start: now - 1_000_000,
                stop: now - 1_000_000 + (i as i64 % 50_000) * 1_000,
            })
        }
    };
    v2::Envelope {
        timestamp: now,
        source_id: format!("6f1c8e6a-2b9d-4c47-9a43-{app:012}"),
        instance_id: instance.to_string(),
        tags,
        message: Some(message),
        ..v2::Envelope::default()
    }
}

fn batches() -> Vec<Batch> {
    (0..BATCHES)
        .map(|b| {
            let encoded: Vec<_> = (0..BATCH)
                .map(|i| encode_envelope(&envelope(b * BATCH + i)))
                .collect();
            Batch::from_bytes(batch_of(encoded.iter().map(|e| &e[..]))).unwrap()
        })
        .collect()
}

fn options(timers: TimerMode) -> MapOptions {
    let config = Config {
        timers,
        tags: vec!["env:bench".to_owned()],
        ..Config::default()
    };
    MapOptions::from_config(&config)
}

fn fold(aggregator: &mut Aggregator, batches: &[Batch]) {
    let now = hydrant_envelope::now_nanos() / 1_000_000_000;
    for batch in batches {
        let mut scratch = Vec::with_capacity(16);
        for view in batch.iter() {
            aggregator.add(&view, now, &mut scratch);
        }
    }
}

fn bench(c: &mut Criterion) {
    let batches = batches();
    let limits = Limits {
        max_series: 2_000,
        max_uncompressed: hydrant_nozzle_datadog::DATADOG_MAX_UNCOMPRESSED_BYTES - 1,
        max_compressed: hydrant_nozzle_datadog::DATADOG_MAX_COMPRESSED_BYTES,
    };
    let mut group = c.benchmark_group("datadog");
    group.sample_size(20);
    group.throughput(Throughput::Elements((BATCH * BATCHES) as u64));
    for (label, timers) in [
        ("gauges", TimerMode::Gauges),
        ("distribution", TimerMode::Distribution),
    ] {
        let mut aggregator = Aggregator::new(options(timers));
        // Warm: every series exists, as in steady state.
        fold(&mut aggregator, &batches);
        group.bench_function(format!("fold_100k_envelopes_{label}"), |b| {
            b.iter(|| fold(&mut aggregator, &batches));
        });
        group.bench_function(format!("interval_100k_fold_flush_encode_{label}"), |b| {
            b.iter(|| {
                let mut aggregator = Aggregator::new(options(timers));
                fold(&mut aggregator, &batches);
                let flushed = aggregator.flush(1_700_000_000, 10);
                let series = encode(&flushed.series, |s| s.values, limits, Compression::Gzip);
                let dist = encode(
                    &flushed.distributions,
                    |d| d.values,
                    limits,
                    Compression::Deflate,
                );
                (series.payloads.len(), dist.payloads.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
