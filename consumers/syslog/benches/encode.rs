//! The RFC 5424 encoder's cost per message: ~250-byte log envelopes with a few tags (the shape
//! of app logs on the firehose) encoded into one reused buffer, reported as messages/s.
//!
//! Run with `cargo bench -p hydrant-nozzle-syslog --bench encode`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "bench code")]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hydrant_envelope::v2;
use hydrant_envelope::wire::{EnvelopeView, encode as encode_envelope};
use hydrant_nozzle_syslog::{DrainData, EncoderOptions, encode};
use hydrant_testkit::envelopes::{APP_TAGS, envelope};

const ENVELOPES: usize = 1_000;

fn envelopes() -> Vec<Vec<u8>> {
    (0..ENVELOPES)
        .map(|i| {
            let timestamp = 1_700_000_000_000_000_000 + i as i64 * 1_001_000;
            let line = v2::envelope::Message::Log(v2::Log {
                payload: format!("{i:06} GET /index.html 200 {}", "x".repeat(80))
                    .into_bytes()
                    .into(),
                r#type: 0,
            });
            let source = "6f1c8e6a-2b9d-4c47-9a43-0d7c5b1e2f30";
            let e = envelope(timestamp, source, &(i % 4).to_string(), &APP_TAGS, line);
            encode_envelope(&e).to_vec()
        })
        .collect()
}

fn bench_encode(c: &mut Criterion) {
    let wire = envelopes();
    let views: Vec<EnvelopeView<'_>> = wire
        .iter()
        .map(|b| EnvelopeView::parse(b).unwrap())
        .collect();
    let options = EncoderOptions {
        drain_data: DrainData::All,
        ..EncoderOptions::default()
    };
    let mut group = c.benchmark_group("rfc5424");
    group.throughput(Throughput::Elements(ENVELOPES as u64));
    let mut out = Vec::with_capacity(64 * 1024);
    group.bench_function("encode_log_250b", |b| {
        b.iter(|| {
            let mut n = 0;
            for view in &views {
                out.clear();
                n += encode(view, &options, &mut out);
            }
            n
        });
    });
    group.finish();
}

criterion_group!(benches, bench_encode);
criterion_main!(benches);
