//! Property tests of the store's contract: whatever is ingested, in whatever order, reads come
//! back sorted, within the requested range, types and limit; every bound holds after every
//! ingest; and the ledger balances (per source `count + expired == ingested`, store-wide
//! `ingested == held + expired + rejected`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use hydrant_logcache::{Kind, ReadQuery, Store, StoreConfig};
use proptest::prelude::*;

const KINDS: [Kind; 6] = [
    Kind::None,
    Kind::Log,
    Kind::Counter,
    Kind::Gauge,
    Kind::Timer,
    Kind::Event,
];

#[derive(Debug, Clone)]
struct Op {
    source: usize,
    timestamp: i64,
    kind: usize,
    len: usize,
}

fn op() -> impl Strategy<Value = Op> {
    (0usize..6, 0i64..200, 0usize..6, 0usize..400).prop_map(|(source, timestamp, kind, len)| Op {
        source,
        timestamp,
        kind,
        len,
    })
}

fn query() -> impl Strategy<Value = ReadQuery> {
    (
        0usize..6,
        0i64..220,
        0i64..220,
        proptest::collection::vec(0usize..6, 0..3),
        0i64..40,
        any::<bool>(),
    )
        .prop_map(|(source, start, end, types, limit, descending)| ReadQuery {
            source_id: format!("src-{source}"),
            start_time: start,
            end_time: if end == 0 { 0 } else { end.max(start) },
            envelope_types: types.into_iter().map(|k| KINDS[k]).collect(),
            limit,
            descending,
        })
}

/// The stored bytes name the envelope: `timestamp:kind:serial`, padded to the requested length.
fn envelope(op: &Op, serial: usize) -> Vec<u8> {
    let mut bytes = format!("{}:{}:{serial}:", op.timestamp, op.kind).into_bytes();
    bytes.resize(bytes.len() + op.len, b'.');
    bytes
}

fn identity(bytes: &[u8]) -> (i64, Kind, usize) {
    let text = String::from_utf8_lossy(bytes);
    let mut parts = text.split(':');
    let ts = parts.next().unwrap().parse().unwrap();
    let kind = KINDS[parts.next().unwrap().parse::<usize>().unwrap()];
    let serial = parts.next().unwrap().parse().unwrap();
    (ts, kind, serial)
}

fn check_read(store: &Store, q: &ReadQuery) -> Result<Vec<(i64, Kind, usize)>, TestCaseError> {
    let out = store
        .read(q)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let limit = if q.limit == 0 { 100 } else { q.limit as usize };
    prop_assert!(out.len() <= limit);
    let got: Vec<_> = out.iter().map(|b| identity(b)).collect();
    for pair in got.windows(2) {
        if q.descending {
            prop_assert!(pair[0].0 >= pair[1].0, "not descending: {got:?}");
        } else {
            prop_assert!(pair[0].0 <= pair[1].0, "not ascending: {got:?}");
        }
    }
    let end = if q.end_time == 0 {
        i64::MAX
    } else {
        q.end_time
    };
    for (ts, kind, _) in &got {
        prop_assert!(*ts >= q.start_time && *ts < end, "{ts} outside {q:?}");
        prop_assert!(q.envelope_types.is_empty() || q.envelope_types.contains(kind));
    }
    Ok(got)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn bounds_order_and_ledger_hold_for_any_input(
        ops in proptest::collection::vec(op(), 0..400),
        queries in proptest::collection::vec(query(), 1..20),
        max_per_source in 1usize..40,
        max_bytes_total in 65_536usize..140_000,
        max_sources in 1usize..7,
    ) {
        let config = StoreConfig { max_per_source, max_bytes_total, max_sources };
        let store = Store::new(config);
        for (serial, op) in ops.iter().enumerate() {
            store.ingest(&format!("src-{}", op.source), op.timestamp, KINDS[op.kind], &envelope(op, serial));
            let stats = store.stats();
            prop_assert!(stats.bytes <= max_bytes_total as u64, "{stats:?}");
            prop_assert!(stats.sources <= max_sources as u64);
        }
        let stats = store.stats();
        prop_assert_eq!(stats.ingested, ops.len() as u64);
        prop_assert_eq!(stats.ingested, stats.envelopes + stats.expired() + stats.rejected());
        let meta = store.meta();
        prop_assert_eq!(meta.len() as u64, stats.sources);
        prop_assert_eq!(meta.values().map(|m| m.count).sum::<u64>(), stats.envelopes);
        for m in meta.values() {
            prop_assert_eq!(m.count + m.expired, m.ingested);
            prop_assert!(m.count as usize <= max_per_source);
            prop_assert!(m.oldest_timestamp <= m.newest_timestamp);
        }
        for q in &queries {
            check_read(&store, q)?;
        }
    }

    /// With room for every source and byte, the store must hold exactly the newest
    /// `max_per_source` envelopes of each source, and reads must return exactly the right page.
    #[test]
    fn reads_match_a_model_when_only_rings_evict(
        ops in proptest::collection::vec(op(), 0..300),
        queries in proptest::collection::vec(query(), 1..20),
        max_per_source in 1usize..40,
    ) {
        let store = Store::new(StoreConfig {
            max_per_source,
            max_bytes_total: 1 << 30,
            max_sources: 10,
        });
        let mut model: Vec<Vec<(i64, Kind, usize)>> = vec![Vec::new(); 6];
        let mut expired = [0u64; 6];
        for (serial, op) in ops.iter().enumerate() {
            store.ingest(&format!("src-{}", op.source), op.timestamp, KINDS[op.kind], &envelope(op, serial));
            let ring = &mut model[op.source];
            if ring.len() == max_per_source {
                expired[op.source] += 1;
                if op.timestamp < ring[0].0 {
                    continue;
                }
                ring.remove(0);
            }
            let at = ring.partition_point(|e| e.0 <= op.timestamp);
            ring.insert(at, (op.timestamp, KINDS[op.kind], serial));
        }
        let meta = store.meta();
        for (i, ring) in model.iter().enumerate() {
            match meta.get(&format!("src-{i}")) {
                Some(m) => {
                    prop_assert_eq!(m.count as usize, ring.len());
                    prop_assert_eq!(m.expired, expired[i]);
                }
                None => prop_assert!(ring.is_empty()),
            }
        }
        for q in &queries {
            let got = check_read(&store, q)?;
            let source: usize = q.source_id["src-".len()..].parse().unwrap();
            let end = if q.end_time == 0 { i64::MAX } else { q.end_time };
            let limit = if q.limit == 0 { 100 } else { q.limit as usize };
            let in_range = model[source].iter().copied().filter(|(ts, kind, _)| {
                *ts >= q.start_time
                    && *ts < end
                    && (q.envelope_types.is_empty() || q.envelope_types.contains(kind))
            });
            let want: Vec<_> = if q.descending {
                in_range.rev().take(limit).collect()
            } else {
                in_range.take(limit).collect()
            };
            prop_assert_eq!(got, want);
        }
    }
}

#[test]
fn config_loads_from_toml_with_defaults() {
    let config: StoreConfig = toml::from_str("max_per_source = 5").unwrap();
    assert_eq!(config.max_per_source, 5);
    assert_eq!(config.max_sources, StoreConfig::default().max_sources);
    assert!(toml::from_str::<StoreConfig>("max_per_sauce = 5").is_err());
}
