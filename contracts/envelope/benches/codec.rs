//! Envelope codec costs per envelope: the zero-copy walk the hops use versus a prost decode, and
//! building an outgoing batch. `cargo bench -p hydrant-envelope`.

use std::collections::HashMap;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hydrant_envelope::v2;
use hydrant_envelope::wire::{BatchBuilder, EnvelopeView, encode, split_batch};
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

criterion_group!(benches, codec);
criterion_main!(benches);
