//! Router fan-out cost: one incoming batch of 100 envelopes routed to N subscribers, by selector
//! shape. `cargo bench -p hydrant-doppler`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hydrant_doppler::router::Router;
use hydrant_doppler::{QueueLimits, SubscriptionQueue, SubscriptionRequest, ValidBatch};
use hydrant_emitter::Counter;
use hydrant_envelope::v2;
use hydrant_envelope::wire::{batch_of, encode};

const SOURCES: usize = 50;

fn source(i: usize) -> String {
    format!("3f8a2c1e-7b4d-4e2a-9c1f-{i:012}")
}

fn sample_batch() -> Bytes {
    let envelopes: Vec<Bytes> = (0..100)
        .map(|i| {
            let message = if i % 5 == 0 {
                v2::envelope::Message::Gauge(v2::Gauge {
                    metrics: HashMap::from([
                        ("cpu".to_owned(), v2::GaugeValue::default()),
                        ("memory".to_owned(), v2::GaugeValue::default()),
                    ]),
                })
            } else {
                v2::envelope::Message::Log(v2::Log {
                    payload: Bytes::from(vec![b'x'; 120]),
                    r#type: 0,
                })
            };
            encode(&v2::Envelope {
                timestamp: 1_732_000_000_000_000_000 + i as i64,
                source_id: source(i % SOURCES),
                instance_id: "0".into(),
                tags: HashMap::from([
                    ("source_type".into(), "APP/PROC/WEB".into()),
                    ("deployment".into(), "hydrant".into()),
                ]),
                message: Some(message),
                ..Default::default()
            })
        })
        .collect();
    batch_of(envelopes.iter().map(|e| e.as_ref()))
}

fn queue() -> Arc<SubscriptionQueue> {
    Arc::new(SubscriptionQueue::new(
        QueueLimits {
            max_envelopes: 10_000,
            max_bytes: 8 << 20,
            batch_envelopes: 100,
            batch_bytes: 256 << 10,
        },
        Counter::default(),
        Counter::default(),
    ))
}

fn request(shard: &str, source: &str) -> SubscriptionRequest {
    use v2::selector::Message;
    SubscriptionRequest::parse(
        shard.to_owned(),
        None,
        vec![
            v2::Selector {
                source_id: source.to_owned(),
                message: Some(Message::Log(v2::LogSelector {})),
            },
            v2::Selector {
                source_id: source.to_owned(),
                message: Some(Message::Gauge(v2::GaugeSelector {
                    names: vec!["cpu".to_owned(), "memory".to_owned()],
                })),
            },
        ],
        "",
    )
    .unwrap_or_default()
}

fn fanout(c: &mut Criterion) {
    let buf = sample_batch();
    let mut g = c.benchmark_group("route_batch_of_100");
    g.throughput(Throughput::Elements(100));
    g.bench_function("validate_only", |b| {
        b.iter(|| ValidBatch::from_batch(black_box(buf.clone())).0.len());
    });
    let (batch, _) = ValidBatch::from_batch(buf.clone());
    let cases: [(&str, Vec<SubscriptionRequest>); 4] = [
        ("no_subscribers", vec![]),
        ("1_firehose", vec![request("", "")]),
        ("4_firehoses", (0..4).map(|_| request("", "")).collect()),
        (
            "4_member_shard_group",
            (0..4).map(|_| request("nozzle", "")).collect(),
        ),
    ];
    for (name, requests) in cases {
        let mut router = Router::new(100, 256 << 10);
        let queues: Vec<_> = requests
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let q = queue();
                router.subscribe(i as u64, r, q.clone());
                q
            })
            .collect();
        g.bench_function(name, |b| {
            b.iter(|| {
                router.route(black_box(&batch));
                for q in &queues {
                    while q.try_take().is_some() {}
                }
            });
        });
    }
    // 1000 app streams, one per source, each matching two of the batch's envelopes: the
    // per-source index keeps this close to the one-firehose cost.
    let mut router = Router::new(100, 256 << 10);
    let queues: Vec<_> = (0..1000)
        .map(|i| {
            let q = queue();
            router.subscribe(
                i as u64,
                request("", &source(i % (SOURCES * 20))),
                q.clone(),
            );
            q
        })
        .collect();
    g.bench_function("1000_app_streams", |b| {
        b.iter(|| {
            router.route(black_box(&batch));
            for q in queues.iter().take(SOURCES) {
                while q.try_take().is_some() {}
            }
        });
    });
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
