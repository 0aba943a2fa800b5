//! Can `hydrant top` keep up with 100,000 envelopes a second while redrawing at its default
//! rate (once a second) on under one core?
//!
//! One iteration is one simulated second: 100,000 envelopes of a mixed load (router timers,
//! app logs, container gauges, component counters over 50 apps with 2 instances each) applied
//! to the [`State`] in batches of 100, then one refresh and one full draw of the apps screen
//! into a 160×50 `TestBackend`. The time per iteration is the CPU share of one core at
//! 100,000 envelopes/s (1 s = a whole core); the throughput is what one core could absorb.
//! `..._cpu_time` measures the same with the thread's own CPU time (from
//! `/proc/thread-self/schedstat`), which other work on a busy machine does not inflate.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "bench code"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hydrant_envelope::v2;
use hydrant_firehose_client::Batch;
use hydrant_testkit::envelopes::{self, counter, gauge, timer};
use hydrant_top::{State, StateConfig};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const PER_SECOND: usize = 100_000;
const BATCH: usize = 100;
const APPS: usize = 50;

/// Envelope `i` of the mixed load: a router timer, an app log, a container gauge or a
/// component counter, at `ts`.
fn envelope(i: usize, ts: i64) -> v2::Envelope {
    let app = format!("app-{:02}", i % APPS);
    let instance = ((i / APPS) % 2).to_string();
    match i % 20 {
        0..=7 => {
            let status = if i.is_multiple_of(97) { "500" } else { "200" };
            let tags = [
                ("peer_type", "Client"),
                ("status_code", status),
                ("source_type", "RTR"),
            ];
            let start = ts - 1_000_000 - (i as i64 % 50) * 1_000_000;
            envelopes::envelope(ts, &app, &instance, &tags, timer("http", start, ts))
        }
        8..=15 => {
            let line = format!("GET /orders/{i} 200 12ms user-agent=curl/8.0 request-id={i:08x}");
            let log = v2::envelope::Message::Log(v2::Log {
                payload: Bytes::from(line),
                r#type: 0,
            });
            let tags = [("source_type", "APP/PROC/WEB")];
            envelopes::envelope(ts, &app, &instance, &tags, log)
        }
        16..=18 => {
            let container = gauge(&[
                ("cpu", 12.5, "percentage"),
                ("memory", 50e6, "bytes"),
                ("disk", 10e6, "bytes"),
                ("memory_quota", 64e6, "bytes"),
                ("disk_quota", 1e9, "bytes"),
                ("container_age", 1e12, "nanoseconds"),
            ]);
            envelopes::envelope(ts, &app, &instance, &[], container)
        }
        _ => {
            let ingress = counter("doppler.ingress", 100, i as u64);
            envelopes::envelope(ts, "doppler", "0", &[], ingress)
        }
    }
}

fn one_second_of_load(wall: i64) -> Vec<Batch> {
    (0..PER_SECOND / BATCH)
        .map(|b| {
            let ts = wall + (b as i64) * 10_000_000;
            let envs: Vec<v2::Envelope> = (0..BATCH).map(|i| envelope(b * BATCH + i, ts)).collect();
            Batch::from_envelopes(&envs)
        })
        .collect()
}

/// CPU time this thread has used, from the kernel's scheduler statistics.
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// One simulated second: the load, one refresh, one draw.
fn second(state: &mut State, term: &mut Terminal<TestBackend>, batches: &[Batch], start: Instant) {
    for (i, batch) in batches.iter().enumerate() {
        let now = start + Duration::from_millis(i as u64 * 10);
        state.apply_batch(black_box(batch), now);
    }
    let now = start + Duration::from_secs(1);
    state.tick(now);
    hydrant_top::draw(term, state).unwrap();
}

fn bench(c: &mut Criterion) {
    let wall = hydrant_envelope::now_nanos();
    let batches = one_second_of_load(wall);
    let t0 = Instant::now();
    let mut state = State::new(StateConfig::default(), t0, wall, "bench", "bench").unwrap();
    let mut term = Terminal::new(TestBackend::new(160, 50)).unwrap();
    let mut elapsed = 0u64;
    let mut group = c.benchmark_group("state");
    group.throughput(Throughput::Elements(PER_SECOND as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(20));
    // Each run is the next second of the console's clock, so the windows keep sliding.
    let mut next_second = || {
        elapsed += 1;
        second(
            &mut state,
            &mut term,
            &batches,
            t0 + Duration::from_secs(elapsed),
        );
    };
    group.bench_function("100k_envelopes_and_one_redraw", |b| {
        b.iter(&mut next_second);
    });
    group.bench_function("100k_envelopes_and_one_redraw_cpu_time", |b| {
        b.iter_custom(|iterations| {
            let before = thread_cpu();
            for _ in 0..iterations {
                next_second();
            }
            thread_cpu().saturating_sub(before)
        });
    });
    group.finish();
    assert!(state.envelopes() >= PER_SECOND as u64);
}

criterion_group!(benches, bench);
criterion_main!(benches);
