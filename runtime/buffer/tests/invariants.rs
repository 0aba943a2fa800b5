//! Property tests of the buffer's invariants, over random sequences of pushes, batch takes,
//! discards and closes, under every policy: never past the bounds (bar one oversized entry kept
//! alone), the ledger `pushed = popped + Σ dropped + depth` balances after every step, entries
//! leave in order, and drop-oldest keeps the newest.

#![allow(clippy::unwrap_used, reason = "test code")]

use hydrant_buffer::{Buffer, BufferConfig, Limits, Oversize, Weigh, WhenFull};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct E {
    id: u64,
    events: u64,
    bytes: usize,
}

impl Weigh for E {
    fn events(&self) -> u64 {
        self.events
    }
    fn bytes(&self) -> usize {
        self.bytes
    }
}

#[derive(Debug, Clone)]
enum Op {
    Push(u64, usize),
    PushMany(Vec<(u64, usize)>),
    Drain(usize, u64, usize),
    Pop,
    Discard,
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..5, 1usize..40).prop_map(|(e, b)| Op::Push(e, b)),
        2 => prop::collection::vec((1u64..5, 1usize..40), 0..6).prop_map(Op::PushMany),
        3 => (1usize..6, 1u64..12, 1usize..80).prop_map(|(i, e, b)| Op::Drain(i, e, b)),
        1 => Just(Op::Pop),
        1 => Just(Op::Discard),
        1 => Just(Op::Close),
    ]
}

fn config() -> impl Strategy<Value = BufferConfig> {
    (
        1usize..8,
        1u64..16,
        1usize..100,
        prop_oneof![
            Just(WhenFull::DropOldest),
            Just(WhenFull::DropNewest),
            Just(WhenFull::Block)
        ],
        prop_oneof![Just(Oversize::Keep), Just(Oversize::Refuse)],
    )
        .prop_map(|(items, events, bytes, when_full, oversize)| BufferConfig {
            limits: Limits {
                items,
                events,
                bytes,
            },
            when_full,
            oversize,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn bounds_ledger_and_order_hold(config in config(), ops in prop::collection::vec(op(), 1..60)) {
        let buffer = Buffer::new(config);
        let limits = config.limits;
        let mut next_id = 0u64;
        let mut taken: Vec<E> = Vec::new();
        let mut new = |events, bytes| {
            next_id += 1;
            E { id: next_id, events, bytes }
        };
        for op in ops {
            match op {
                Op::Push(e, b) => { buffer.push(new(e, b)); }
                Op::PushMany(v) => {
                    let items: Vec<E> = v.into_iter().map(|(e, b)| new(e, b)).collect();
                    buffer.push_iter(items);
                }
                Op::Drain(i, e, b) => {
                    let before = taken.len();
                    let d = buffer.drain_into(&mut taken, Limits { items: i, events: e, bytes: b });
                    prop_assert_eq!(d.items, taken.len() - before);
                    prop_assert!(d.items <= i.max(1));
                    if d.items > 1 {
                        prop_assert!(d.events <= e && d.bytes <= b, "a batch past its limits");
                    }
                }
                Op::Pop => { taken.extend(buffer.pop()); }
                Op::Discard => { buffer.discard(|_| {}); }
                Op::Close => buffer.close(),
            }
            let stats = buffer.stats();
            prop_assert!(stats.balanced(), "ledger: {stats:?}");
            let d = stats.depth;
            let alone = d.items == 1 && config.oversize == Oversize::Keep;
            prop_assert!(
                alone || (d.items <= limits.items && d.events <= limits.events && d.bytes <= limits.bytes),
                "over the bounds: {d:?} > {limits:?}"
            );
        }
        // Order: whatever was taken left in the order it was pushed.
        prop_assert!(taken.windows(2).all(|w| w[0].id < w[1].id), "out of order");
    }

    #[test]
    fn drop_oldest_keeps_the_newest(n in 1usize..200, cap in 1usize..50) {
        let buffer = Buffer::new(BufferConfig::drop_oldest(Limits::UNBOUNDED.items(cap)));
        for id in 0..n as u64 {
            buffer.push(E { id, events: 1, bytes: 1 });
        }
        let mut out = Vec::new();
        let d = buffer.drain_into(&mut out, Limits::UNBOUNDED);
        let kept: Vec<u64> = out.iter().map(|e| e.id).collect();
        let expect: Vec<u64> = (n.saturating_sub(cap) as u64..n as u64).collect();
        prop_assert_eq!(kept, expect);
        prop_assert_eq!(d.gap, n.saturating_sub(cap) as u64);
    }
}

/// Four producer threads race one consumer through a small drop-oldest buffer: at the end every
/// event pushed was taken or counted as dropped exactly once, and each producer's entries were
/// taken in the order it pushed them.
#[test]
fn concurrent_producers_balance_the_ledger_and_keep_each_ones_order() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const PER_PRODUCER: u64 = 20_000;
    let buffer = Arc::new(Buffer::new(BufferConfig::drop_oldest(
        Limits::UNBOUNDED.items(64).bytes(64 * 40),
    )));
    let done = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..4u64)
        .map(|p| {
            let buffer = buffer.clone();
            std::thread::spawn(move || {
                for n in 0..PER_PRODUCER {
                    // The producer in the high bits, its sequence in the low ones.
                    let id = (p << 32) | n;
                    buffer.push(E {
                        id,
                        events: 1 + n % 3,
                        bytes: 1 + (n % 40) as usize,
                    });
                }
            })
        })
        .collect();
    let consumer = {
        let (buffer, done) = (buffer.clone(), done.clone());
        std::thread::spawn(move || {
            let mut taken = Vec::new();
            let mut out = Vec::new();
            loop {
                let finished = done.load(Ordering::Acquire);
                if buffer
                    .drain_into(&mut out, Limits::UNBOUNDED.items(16))
                    .items
                    == 0
                {
                    if finished {
                        return taken;
                    }
                    std::thread::yield_now();
                }
                taken.append(&mut out);
            }
        })
    };
    for p in producers {
        p.join().unwrap();
    }
    done.store(true, Ordering::Release);
    let taken = consumer.join().unwrap();
    let stats = buffer.stats();
    assert!(stats.balanced(), "{stats:?}");
    assert_eq!(stats.depth.items, 0);
    let pushed: u64 = (0..4u64)
        .map(|_| (0..PER_PRODUCER).map(|n| 1 + n % 3).sum::<u64>())
        .sum();
    assert_eq!(stats.pushed, pushed);
    assert_eq!(stats.popped, taken.iter().map(|e| e.events).sum::<u64>());
    for p in 0..4u64 {
        let seq: Vec<u64> = taken
            .iter()
            .filter(|e| e.id >> 32 == p)
            .map(|e| e.id)
            .collect();
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "producer {p} out of order"
        );
    }
}
