//! The buffer against the queues it replaced and against a lock-free ring: envelope-sized
//! (250-byte `Bytes`) entries, one producer and four producers, one consumer taking batches of
//! up to 256. Each iteration moves 100 000 envelopes through a queue large enough to hold a
//! burst (drops are possible and allowed; the consumer stops once producers are done and the
//! queue is empty).
//!
//! - `buffer`: [`hydrant_buffer::Buffer`] with `DropOldest` bounded by items and bytes.
//! - `old_outbox`: a minimal copy of the firehose edge's former outbox (`Mutex<VecDeque<Bytes>>`,
//!   bytes counter, `Notify`), the shape all seven old queues shared.
//! - `array_queue`: `crossbeam_queue::ArrayQueue::force_push` (lock-free drop-oldest by count;
//!   cannot bound bytes) plus a `Notify` for the consumer, popping one at a time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "bench code"
)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_queue::ArrayQueue;
use hydrant_buffer::{Buffer, BufferConfig, Limits};
use tokio::sync::Notify;

const N: usize = 100_000;
const CAP: usize = 16_384;
const BATCH: usize = 256;

trait Queue: Send + Sync + 'static {
    fn push(&self, e: Bytes);
    /// Moves up to `BATCH` into `out`; returns how many.
    fn take(&self, out: &mut Vec<Bytes>) -> usize;
}

impl Queue for Buffer<Bytes> {
    fn push(&self, e: Bytes) {
        Self::push(self, e);
    }
    fn take(&self, out: &mut Vec<Bytes>) -> usize {
        self.drain_into(out, Limits::UNBOUNDED.items(BATCH)).items
    }
}

#[derive(Default)]
struct OldState {
    queue: VecDeque<Bytes>,
    bytes: usize,
    unreported: u64,
}

/// The edge's outbox before this crate, reduced to its queue.
#[derive(Default)]
struct OldOutbox {
    state: Mutex<OldState>,
    notify: Notify,
}

impl Queue for OldOutbox {
    fn push(&self, e: Bytes) {
        let mut s = self.state.lock().unwrap();
        while !s.queue.is_empty() && (s.queue.len() >= CAP || s.bytes + e.len() > CAP * 300) {
            if let Some(old) = s.queue.pop_front() {
                s.bytes -= old.len();
                s.unreported += 1;
            }
        }
        s.bytes += e.len();
        s.queue.push_back(e);
        drop(s);
        self.notify.notify_one();
    }
    fn take(&self, out: &mut Vec<Bytes>) -> usize {
        let mut s = self.state.lock().unwrap();
        let mut n = 0;
        let mut bytes = 0;
        while n < BATCH {
            let Some(e) = s.queue.pop_front() else { break };
            bytes += e.len();
            out.push(e);
            n += 1;
        }
        s.bytes -= bytes;
        n
    }
}

struct Lockfree {
    queue: ArrayQueue<Bytes>,
    notify: Notify,
}

impl Queue for Lockfree {
    fn push(&self, e: Bytes) {
        let _ = self.queue.force_push(e);
        self.notify.notify_one();
    }
    fn take(&self, out: &mut Vec<Bytes>) -> usize {
        let mut n = 0;
        while n < BATCH {
            let Some(e) = self.queue.pop() else { break };
            out.push(e);
            n += 1;
        }
        n
    }
}

fn run(queue: &Arc<dyn Queue>, producers: usize, envelope: &Bytes) {
    let done = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..producers)
        .map(|_| {
            let (queue, done, envelope) = (queue.clone(), done.clone(), envelope.clone());
            thread::spawn(move || {
                for _ in 0..N / producers {
                    queue.push(envelope.clone());
                }
                done.fetch_add(1, Ordering::Release);
            })
        })
        .collect();
    let mut out = Vec::with_capacity(BATCH);
    loop {
        let finished = done.load(Ordering::Acquire) == producers;
        if queue.take(&mut out) == 0 {
            if finished {
                break;
            }
            thread::yield_now();
        }
        out.clear();
    }
    for h in handles {
        h.join().unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let envelope = Bytes::from(vec![7u8; 250]);
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(20);
    for producers in [1usize, 4] {
        let queues: [(&str, Arc<dyn Queue>); 3] = [
            (
                "buffer",
                Arc::new(Buffer::<Bytes>::new(BufferConfig::drop_oldest(
                    Limits::UNBOUNDED.items(CAP).bytes(CAP * 300),
                ))),
            ),
            ("old_outbox", Arc::new(OldOutbox::default())),
            (
                "array_queue",
                Arc::new(Lockfree {
                    queue: ArrayQueue::new(CAP),
                    notify: Notify::new(),
                }),
            ),
        ];
        for (name, queue) in queues {
            group.bench_function(format!("{name}/{producers}p"), |b| {
                b.iter(|| run(&queue, producers, &envelope));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
