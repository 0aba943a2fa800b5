//! The per-source ledger of a fair queue, exactly, the way the agent's lanes and the doppler's
//! ingress ring use it (issue 16): entries are batches mixing sources (one [`Share`] per run of
//! a source), a drop-oldest [`Buffer`] of random bounds evicts whole batches, a reader takes
//! some, and a periodic [`FairShare::sweep`] hands the drop counts to the metrics and turns
//! them into notices that join the next batch in the source's own stream.
//!
//! What must hold, per source and exactly, once everything has been taken or dropped:
//! `offered + notices = delivered + Σ counted by the sweeps`, and the sweeps' count equals the
//! refusals plus the evictions the test saw. A notice that joins a batch uncharged and is
//! evicted with it breaks this by one (the loss the fairness test found); so does a count
//! lost between a sweep and a slot's reuse, or taken twice.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hydrant_buffer::{
    Buffer, BufferConfig, FairConfig, FairShare, KeyHasher, Limits, Share, SourceKey, Weigh,
};
use proptest::prelude::*;
use tokio::time::Instant;

/// A batch of envelopes of mixed sources, with what each source has in it (the truth).
#[derive(Debug, Default)]
struct Batch {
    events: u64,
    bytes: usize,
    shares: Vec<Share>,
    by_source: Vec<(usize, u64)>,
}

impl Weigh for Batch {
    fn events(&self) -> u64 {
        self.events
    }
    fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Batch {
    /// Adds one charged envelope of `source`, merging runs as the agent does.
    fn add(&mut self, source: usize, share: Share) {
        self.events += 1;
        self.bytes += share.cost as usize;
        if !self.shares.last_mut().is_some_and(|l| l.merge(share)) {
            self.shares.push(share);
        }
        match self.by_source.last_mut() {
            Some((s, n)) if *s == source => *n += 1,
            _ => self.by_source.push((source, 1)),
        }
    }
}

/// The truth for one source.
#[derive(Debug, Default, Clone, Copy)]
struct Truth {
    offered: u64,
    notices: u64,
    refused: u64,
    evicted: u64,
    delivered: u64,
}

/// The owner: a fair queue of batches, the batch being built, and the metrics its sweeps feed.
struct Owner {
    buffer: Buffer<Batch>,
    fair: FairShare,
    keys: Vec<(SourceKey, String)>,
    index: HashMap<String, usize>,
    pending: Batch,
    truth: Vec<Truth>,
    /// What the sweeps counted, by name (`None`: the shared slot).
    counted: HashMap<Option<String>, u64>,
}

impl Owner {
    fn new(sources: usize, max_sources: usize, limits: Limits) -> Self {
        let hasher = KeyHasher::default();
        let keys: Vec<(SourceKey, String)> = (0..sources)
            .map(|i| {
                let name = format!("app-{i}");
                (hasher.key(name.as_bytes()), name)
            })
            .collect();
        let index = keys
            .iter()
            .enumerate()
            .map(|(i, (_, n))| (n.clone(), i))
            .collect();
        Self {
            buffer: Buffer::new(BufferConfig::drop_oldest(limits)),
            // Every sweep may tell: notices as often as the ops ask for a sweep.
            fair: FairShare::new(FairConfig {
                max_sources,
                notice_interval: Duration::ZERO,
                ..FairConfig::default()
            }),
            keys,
            index,
            pending: Batch::default(),
            truth: vec![Truth::default(); sources],
            counted: HashMap::new(),
        }
    }

    fn offer(&mut self, source: usize, cost: u32) {
        self.truth[source].offered += 1;
        let (key, name) = &self.keys[source];
        match self
            .fair
            .admit(*key, name, cost, self.buffer.fill_permille())
        {
            Some(share) => self.pending.add(source, share),
            None => self.truth[source].refused += 1,
        }
    }

    fn flush(&mut self) {
        if self.pending.events == 0 {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let (fair, truth) = (&self.fair, &mut self.truth);
        self.buffer.push_with(batch, |lost, _| {
            fair.evicted(&lost.shares);
            for &(s, n) in &lost.by_source {
                truth[s].evicted += n;
            }
        });
    }

    fn take(&mut self, items: usize) {
        let mut out = Vec::new();
        self.buffer
            .drain_into(&mut out, Limits::UNBOUNDED.items(items.max(1)));
        for batch in out {
            self.fair.release(&batch.shares);
            for (s, n) in batch.by_source {
                self.truth[s].delivered += n;
            }
        }
    }

    /// Hands the counts to the metrics and each told source a notice in the pending batch,
    /// charged (never refused) as the agent and the doppler charge theirs.
    fn sweep(&mut self) -> usize {
        let mut told = Vec::new();
        let counted = &mut self.counted;
        self.fair.sweep(
            Instant::now(),
            |d| *counted.entry(d.source.map(str::to_owned)).or_default() += d.dropped,
            |d| told.push(d.source.expect("only named sources are told").to_owned()),
        );
        for name in &told {
            let source = self.index[name.as_str()];
            self.truth[source].notices += 1;
            let share = self.fair.charge(self.keys[source].0, name, 40);
            self.pending.add(source, share);
        }
        told.len()
    }

    /// Takes everything, sweeping until no notice is left to deliver.
    fn finish(&mut self) {
        loop {
            self.flush();
            while self.buffer.depth().items > 0 {
                self.take(usize::MAX);
            }
            if self.sweep() == 0 {
                break;
            }
        }
        assert!(self.buffer.stats().balanced());
        let stats = self.fair.stats();
        assert!(stats.balanced() && stats.queued == 0, "{stats:?}");
    }
}

fn limits(items: usize, events: u64, bytes: usize) -> Limits {
    Limits::UNBOUNDED.items(items).events(events).bytes(bytes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every source has a slot of its own: its ledger balances exactly, and every drop the
    /// sweeps counted is under its own name.
    #[test]
    fn each_sources_ledger_balances_exactly_through_batches_evictions_and_notices(
        sources in 1usize..8,
        items in 1usize..12,
        events in 1u64..400,
        bytes in 64usize..20_000,
        ops in prop::collection::vec((0u8..8, 0usize..8, 1u32..300), 1..600),
    ) {
        let mut o = Owner::new(sources, 64, limits(items, events, bytes));
        for (op, source, n) in ops {
            match op {
                0..=3 => o.offer(source % sources, n),
                4 => o.flush(),
                5 => o.take(n as usize % 4),
                6 => { o.sweep(); }
                _ => {
                    // A burst of one source, as a flood sends it.
                    for _ in 0..n % 64 {
                        o.offer(source % sources, 200);
                    }
                    o.flush();
                }
            }
        }
        o.finish();
        prop_assert_eq!(o.counted.get(&None).copied().unwrap_or(0), 0, "no shared slot used");
        for (i, t) in o.truth.iter().enumerate() {
            let counted = o.counted.get(&Some(o.keys[i].1.clone())).copied().unwrap_or(0);
            prop_assert_eq!(counted, t.refused + t.evicted, "source {} counted {:?}", i, t);
            prop_assert_eq!(
                t.offered + t.notices,
                t.delivered + counted,
                "source {}'s ledger: {:?}", i, t
            );
        }
    }

    /// More sources than slots: some share the `other` slot, so only the total balances
    /// exactly; a named count never exceeds what that source really lost.
    #[test]
    fn the_total_balances_exactly_when_sources_overflow_the_table(
        sources in 9usize..40,
        items in 1usize..12,
        bytes in 64usize..20_000,
        ops in prop::collection::vec((0u8..7, 0usize..40, 1u32..300), 1..600),
    ) {
        let mut o = Owner::new(sources, 8, limits(items, u64::MAX, bytes));
        for (op, source, n) in ops {
            match op {
                0..=3 => o.offer(source % sources, n),
                4 => o.flush(),
                5 => o.take(n as usize % 4),
                _ => { o.sweep(); }
            }
        }
        o.finish();
        let total: u64 = o.counted.values().sum();
        let lost: u64 = o.truth.iter().map(|t| t.refused + t.evicted).sum();
        prop_assert_eq!(total, lost);
        let offered: u64 = o.truth.iter().map(|t| t.offered + t.notices).sum();
        let delivered: u64 = o.truth.iter().map(|t| t.delivered).sum();
        prop_assert_eq!(offered, delivered + total);
        for (i, t) in o.truth.iter().enumerate() {
            let counted = o.counted.get(&Some(o.keys[i].1.clone())).copied().unwrap_or(0);
            prop_assert!(counted <= t.refused + t.evicted, "source {} over-counted", i);
        }
    }
}

/// The same ledger with the agent's threads: producers admitting and pushing batches, a reader
/// taking them, and a sweeper (the agent's flusher) counting and adding notices, all at once.
/// Whatever the interleaving, the counts balance exactly once everything has settled.
#[test]
fn the_ledger_balances_exactly_under_concurrent_producers_reader_and_sweeper() {
    const SOURCES: usize = 6;
    struct Shared {
        buffer: Buffer<Batch>,
        fair: FairShare,
        keys: Vec<(SourceKey, String)>,
        offered: Vec<AtomicU64>,
        refused: Vec<AtomicU64>,
        evicted: Vec<AtomicU64>,
        delivered: Vec<AtomicU64>,
        notices: Vec<AtomicU64>,
        counted: Mutex<HashMap<Option<String>, u64>>,
    }
    let zeros = || (0..SOURCES).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
    let hasher = KeyHasher::default();
    let shared = Shared {
        buffer: Buffer::new(BufferConfig::drop_oldest(limits(8, 2_000, 1 << 20))),
        fair: FairShare::new(FairConfig {
            notice_interval: Duration::ZERO,
            ..FairConfig::default()
        }),
        keys: (0..SOURCES)
            .map(|i| {
                let name = format!("app-{i}");
                (hasher.key(name.as_bytes()), name)
            })
            .collect(),
        offered: zeros(),
        refused: zeros(),
        evicted: zeros(),
        delivered: zeros(),
        notices: zeros(),
        counted: Mutex::default(),
    };
    let push = |sh: &Shared, batch: Batch| {
        if batch.events == 0 {
            return;
        }
        sh.buffer.push_with(batch, |lost, _| {
            sh.fair.evicted(&lost.shares);
            for &(s, n) in &lost.by_source {
                sh.evicted[s].fetch_add(n, Ordering::Relaxed);
            }
        });
    };
    let take = |sh: &Shared| -> usize {
        let mut out = Vec::new();
        sh.buffer.drain_into(&mut out, Limits::UNBOUNDED.items(2));
        let n = out.len();
        for batch in out {
            sh.fair.release(&batch.shares);
            for (s, k) in batch.by_source {
                sh.delivered[s].fetch_add(k, Ordering::Relaxed);
            }
        }
        n
    };
    let sweep = |sh: &Shared| -> usize {
        let mut told = Vec::new();
        {
            let mut counted = sh.counted.lock().unwrap();
            sh.fair.sweep(
                Instant::now(),
                |d| *counted.entry(d.source.map(str::to_owned)).or_default() += d.dropped,
                |d| told.push(d.source.unwrap().to_owned()),
            );
        }
        let mut batch = Batch::default();
        for name in &told {
            let source = sh.keys.iter().position(|(_, n)| n == name).unwrap();
            sh.notices[source].fetch_add(1, Ordering::Relaxed);
            batch.add(source, sh.fair.charge(sh.keys[source].0, name, 40));
        }
        push(sh, batch);
        told.len()
    };

    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let producers: Vec<_> = (0..3u64)
            .map(|t| {
                let sh = &shared;
                scope.spawn(move || {
                    let mut rng = xorshift(t + 1);
                    for _ in 0..3_000 {
                        let mut batch = Batch::default();
                        for _ in 0..(rng() % 60 + 1) {
                            // Thread 0 floods app-0; the others mix every source.
                            let source = if t == 0 {
                                0
                            } else {
                                (rng() as usize) % SOURCES
                            };
                            sh.offered[source].fetch_add(1, Ordering::Relaxed);
                            let (key, name) = &sh.keys[source];
                            match sh.fair.admit(*key, name, 100, sh.buffer.fill_permille()) {
                                Some(share) => batch.add(source, share),
                                None => {
                                    sh.refused[source].fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        push(sh, batch);
                    }
                })
            })
            .collect();
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if take(&shared) == 0 {
                    std::thread::yield_now();
                }
            }
        });
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                sweep(&shared);
                std::thread::yield_now();
            }
        });
        for p in producers {
            p.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    loop {
        while take(&shared) > 0 {}
        if sweep(&shared) == 0 {
            break;
        }
    }
    let sh = &shared;
    let counted = sh.counted.lock().unwrap();
    let get = |v: &[AtomicU64], i: usize| v[i].load(Ordering::Relaxed);
    let mut lost_anything = false;
    for i in 0..SOURCES {
        let name = Some(sh.keys[i].1.clone());
        let c = counted.get(&name).copied().unwrap_or(0);
        let (offered, notices) = (get(&sh.offered, i), get(&sh.notices, i));
        let (refused, evicted, delivered) = (
            get(&sh.refused, i),
            get(&sh.evicted, i),
            get(&sh.delivered, i),
        );
        lost_anything |= c > 0;
        assert_eq!(c, refused + evicted, "app-{i}'s drops as counted");
        assert_eq!(
            offered + notices,
            delivered + c,
            "app-{i}: offered {offered} + notices {notices} = delivered {delivered} + \
             counted {c} (refused {refused}, evicted {evicted})"
        );
    }
    assert!(
        lost_anything,
        "the queue never overflowed: nothing was shown"
    );
    assert!(sh.buffer.stats().balanced());
    let stats = sh.fair.stats();
    assert!(stats.balanced() && stats.queued == 0, "{stats:?}");
}

/// A tiny xorshift, so the threads need no random-number crate.
fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}
