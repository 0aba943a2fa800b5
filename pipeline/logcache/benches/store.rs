//! Log cache costs: ingesting an envelope (a copy, a shard lock, an append), the same envelopes as
//! runs of one source (what the doppler hands over: one copy per 4 KiB, one lock per run), and
//! reading a page.
//! `cargo bench -p hydrant-logcache`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hydrant_logcache::{Incoming, Kind, ReadQuery, Store, StoreConfig};

const ENVELOPE: [u8; 250] = [b'x'; 250];

fn sources(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("app-{i:04}")).collect()
}

/// A store with small rings, so once warm it is at its per-source bound and every ingest also
/// evicts.
fn at_capacity() -> Store {
    Store::new(StoreConfig {
        max_per_source: 1000,
        ..StoreConfig::default()
    })
}

fn ingest(c: &mut Criterion) {
    let ids = sources(100);
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("1000_envelopes_100_sources_at_capacity", |b| {
        let store = at_capacity();
        let mut ts = 0i64;
        b.iter(|| {
            for i in 0..1000 {
                ts += 1;
                store.ingest(&ids[i % ids.len()], ts, Kind::Log, black_box(&ENVELOPE));
            }
        });
    });
    g.bench_function(
        "1000_envelopes_10_sources_in_runs_of_100_at_capacity",
        |b| {
            let store = at_capacity();
            let mut ts = 0i64;
            b.iter(|| {
                for id in &ids[..10] {
                    let run: Vec<Incoming<'_>> = (0..100)
                        .map(|_| {
                            ts += 1;
                            Incoming {
                                timestamp: ts,
                                kind: Kind::Log,
                                bytes: black_box(&ENVELOPE),
                            }
                        })
                        .collect();
                    store.ingest_run(id, &run);
                }
            });
        },
    );
    g.bench_function("1000_envelopes_10_sources_one_by_one_at_capacity", |b| {
        let store = at_capacity();
        let mut ts = 0i64;
        b.iter(|| {
            for i in 0..1000 {
                ts += 1;
                store.ingest(&ids[i / 100], ts, Kind::Log, black_box(&ENVELOPE));
            }
        });
    });
    g.bench_function("1000_envelopes_at_memory_limit", |b| {
        let store = Store::new(StoreConfig {
            max_bytes_total: 4 * 1024 * 1024,
            ..StoreConfig::default()
        });
        let mut ts = 0i64;
        b.iter(|| {
            for i in 0..1000 {
                ts += 1;
                store.ingest(&ids[i % ids.len()], ts, Kind::Log, black_box(&ENVELOPE));
            }
        });
    });
    g.finish();
}

fn read(c: &mut Criterion) {
    let store = Store::new(StoreConfig::default());
    for ts in 0..100_000i64 {
        let kind = if ts % 10 == 0 { Kind::Gauge } else { Kind::Log };
        store.ingest("app", ts, kind, &ENVELOPE);
    }
    let mut g = c.benchmark_group("read");
    for (name, limit, descending, types) in [
        ("100_ascending", 100, false, vec![]),
        ("1000_descending", 1000, true, vec![]),
        ("1000_gauges_of_mixed", 1000, false, vec![Kind::Gauge]),
    ] {
        let query = ReadQuery {
            source_id: "app".to_owned(),
            start_time: 50_000,
            end_time: i64::MAX,
            envelope_types: types,
            limit,
            descending,
        };
        g.throughput(Throughput::Elements(limit as u64));
        g.bench_function(name, |b| b.iter(|| store.read(black_box(&query))));
    }
    g.finish();
}

criterion_group!(benches, ingest, read);
criterion_main!(benches);
