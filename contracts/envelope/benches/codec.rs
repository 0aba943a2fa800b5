//! Envelope codec costs per envelope: the zero-copy walk the hops use versus a prost decode, and
//! building an outgoing batch; and a recent read's page (the doppler's answer and the edge's
//! binary answer) kept as bytes versus decoded and re-encoded. `cargo bench -p hydrant-envelope`.

use std::collections::HashMap;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hydrant_envelope::logcache_v1::ReadResponse;
use hydrant_envelope::v2;
use hydrant_envelope::wire::{
    BatchBuilder, EnvelopeView, batch_of, encode, read_response, read_response_batch, split_batch,
};
use prost::Message;

fn sample_batch(n: usize) -> Bytes {
    let envelope = v2::Envelope {
        timestamp: 1_732_000_000_000_000_000,
        source_id: "3f8a2c1e-7b4d-4e2a-9c1f-0a1b2c3d4e5f".into(),
        instance_id: "0".into(),
        tags: HashMap::from([
            ("source_type".into(), "APP/PROC/WEB".into()),
            ("deployment".into(), "hydrant".into()),
            ("job".into(), "executor".into()),
            ("index".into(), "0".into()),
        ]),
        message: Some(v2::envelope::Message::Log(v2::Log {
            payload: Bytes::from(vec![b'x'; 120]),
            r#type: 0,
        })),
        ..Default::default()
    };
    let one = encode(&envelope);
    let mut b = BatchBuilder::default();
    for _ in 0..n {
        b.push(&one);
    }
    b.take()
}

fn codec(c: &mut Criterion) {
    let batch = sample_batch(100);
    let mut g = c.benchmark_group("batch_of_100");
    g.throughput(Throughput::Elements(100));
    g.bench_function("split_and_view", |b| {
        b.iter(|| {
            let mut n = 0;
            for e in split_batch(black_box(&batch)).flatten() {
                if let Ok(v) = EnvelopeView::parse(&e) {
                    n += v.source_id.len();
                }
            }
            n
        });
    });
    g.bench_function("split_view_rebatch_with_sequence", |b| {
        let mut out = BatchBuilder::with_capacity(batch.len() + 1024);
        b.iter(|| {
            for (i, e) in split_batch(black_box(&batch)).flatten().enumerate() {
                out.push_with_sequence(&e, i as u64 + 1);
            }
            out.take()
        });
    });
    g.bench_function("prost_decode", |b| {
        b.iter(|| v2::EnvelopeBatch::decode(black_box(batch.clone())).map(|d| d.batch.len()));
    });
    g.finish();
}

/// One recent read of a 1000-envelope page, doppler and edge together: what the log cache
/// stored goes out as the edge's binary answer.
fn recent_read(c: &mut Criterion) {
    let stored: Vec<Bytes> = split_batch(&sample_batch(1000)).flatten().collect();
    let mut g = c.benchmark_group("recent_read_of_1000");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("bytes_end_to_end", |b| {
        b.iter(|| {
            let answer = read_response(black_box(&stored).iter().map(AsRef::as_ref));
            let page = read_response_batch(&answer).unwrap_or_default();
            let mut merged: Vec<(i64, Bytes)> = split_batch(&page)
                .flatten()
                .filter_map(|e| Some((EnvelopeView::parse(&e).ok()?.timestamp, e)))
                .collect();
            merged.sort_by_key(|(t, _)| *t);
            batch_of(merged.iter().map(|(_, e)| e.as_ref()))
        });
    });
    g.bench_function("decode_and_reencode", |b| {
        b.iter(|| {
            let batch = black_box(&stored)
                .iter()
                .filter_map(|e| v2::Envelope::decode(e.clone()).ok())
                .collect();
            let answer = ReadResponse {
                envelopes: Some(v2::EnvelopeBatch { batch }),
            }
            .encode_to_vec();
            let mut page = ReadResponse::decode(answer.as_slice())
                .ok()
                .and_then(|r| r.envelopes)
                .map(|b| b.batch)
                .unwrap_or_default();
            page.sort_by_key(|e| e.timestamp);
            v2::EnvelopeBatch { batch: page }.encode_to_vec()
        });
    });
    g.finish();
}

criterion_group!(benches, codec, recent_read);
criterion_main!(benches);
