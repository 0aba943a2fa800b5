//! The replay ring: the recent batches this doppler routed, numbered, so a reader can ask for
//! everything after a position it had reached (resumable subscriptions, issue 16).
//!
//! Where it sits: router task → [`ReplayRing::push`] (after routing each batch) → ring reads:
//! a v2 `BatchedReceiver` call carrying `hydrant-ring-from` metadata gets [`ring_stream`], which
//! sends each batch with its [`RingPosition`] in front. The firehose edge reads live from the
//! head this way (so the ring is its queue, and a batch goes out as the bytes the agent sent),
//! and replays a reconnecting consumer's missed range with a bounded read (`hydrant-ring-to`).
//!
//! Message shapes: a batch is kept as one `EnvelopeBatch` message whose first field is its
//! position record (field 100, which stock parsers skip) followed by its envelopes, and a read
//! of everything sends that message as it is: one gRPC message per batch, no per-read encoding.
//! A record of its own (an `EnvelopeBatch` holding only field 100) goes first when the reader
//! must be told more: where the read starts, envelopes it lost, another epoch; and before each
//! batch of a filtered read, whose selected envelopes go out in new messages.
//!
//! Numbering: every envelope kept gets an *offset*, counting from 0 at this process's start,
//! under a random *epoch*; a batch is `[start, start + count)`. A reader that asks for an offset
//! the ring has evicted is told exactly how many envelopes it lost (`skipped`).
//!
//! Storage: a kept batch is copied into the ring's own slabs (a few MiB each, filled in order),
//! never kept as the slice of the gRPC receive buffer it arrived in. Keeping that slice pinned
//! the whole receive buffer for up to the window, so ingress allocated a fresh buffer for every
//! message and the kernel spent half the process's CPU zeroing new pages (`clear_page`). A slab
//! whose batches were all evicted, and that no reader still holds, is written again instead of
//! allocating: in steady state the ring touches no new memory. What it holds is its kept bytes
//! plus, per slab, a tail too short for the next batch, plus at most [`SPARE_SLABS`] emptied
//! slabs waiting for reuse.
//!
//! Whose envelopes were lost: while a batch is kept (the walk that checks it anyway) the ring
//! counts its envelopes by source: up to [`SOURCES_PER_BATCH`] sources by name, the rest as
//! `other`, and per envelope one byte saying which (only for batches of more than one source).
//! An evicted batch's counts stay in a history of the last [`HISTORY_BATCHES`] evicted batches,
//! so a read that asks for evicted offsets is told, in a sources record after its position
//! record, how many of the lost envelopes were each source's (exact per source, by offset,
//! even from the middle of a batch). What the history no longer covers, or a batch could not
//! name, is `other`; the named counts plus `other` always equal `skipped`. Per envelope this
//! costs a compare against the batch's few names, no allocation; a name seen for the first
//! time is interned once (at most [`MAX_INTERNED`] names, then the table starts over).
//!
//! Invariants: bounded by bytes of kept messages and by age (`replay_ring_bytes`,
//! `replay_ring_secs`); the newest batch is always kept; a batch is kept byte for byte as
//! received when every envelope in it is valid and routable, else rebuilt from the valid ones,
//! so a reader never sees what ingress rejected; the writer never waits on a reader (one short lock per batch);
//! a live reader that falls behind the ring loses its oldest data, counted as
//! `doppler.dropped{reason="slow_subscriber"}`, exactly as a slow subscription queue does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use hydrant_emitter::Counter;
use hydrant_envelope::cursor::{MAX_RECORD_SOURCES, RingPosition, encode_sources};
use hydrant_envelope::gap::BySource;
use hydrant_envelope::wire::{Kind, batch_of, varint_len};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::batch::ValidBatch;
use crate::queue::{QueueLimits, SubscriptionQueue};
use crate::router::Router;
use crate::selector::SubscriptionRequest;

/// Most batches one read takes under the lock before sending them.
const READ_BATCHES: usize = 64;

/// Largest slab: big enough that a slab's unusable tail (shorter than the next batch) is a
/// small share of it, small enough that one slab held by a slow reader pins little.
const MAX_SLAB: usize = 4 << 20;
/// Smallest slab, for tiny rings (tests).
const MIN_SLAB: usize = 64 << 10;
/// Most sources one kept batch names; envelopes of any others in it count as `other`.
const SOURCES_PER_BATCH: usize = 16;
/// The per-envelope slot of an envelope whose source its batch does not name.
const OTHER_SLOT: u8 = u8::MAX;
/// Evicted batches whose per-source counts are kept, for reads from beyond the window. Each
/// holds its names and at most one byte per envelope: a few MiB at most.
const HISTORY_BATCHES: usize = 4096;
/// Distinct source names interned before the table starts over (bounds the writer's memory
/// against a stream of ever-new source ids).
const MAX_INTERNED: usize = 4096;

/// Emptied slabs remembered for reuse: a reader may still hold the oldest, so a few are kept
/// to try in turn; past this the oldest is let go (freed once its last reader drops it).
const SPARE_SLABS: usize = 4;

/// The ring's own memory: batches are appended to the current slab and handed out as `Bytes`
/// slices of it; a slab is reused once every slice of it is gone. Written by the ring's one
/// writer only.
#[derive(Debug)]
struct Slabs {
    size: usize,
    /// Most filled slabs remembered: enough to cover the ring's bytes, plus [`SPARE_SLABS`].
    max_filled: usize,
    /// The unwritten tail of the slab being filled (`None` before the first batch).
    current: Option<BytesMut>,
    /// Tails of filled slabs, oldest first: each one's slab becomes reusable once its batches
    /// have all been evicted and every reader let go of them.
    filled: VecDeque<BytesMut>,
}

impl Slabs {
    /// Slabs sized for a ring of `max_bytes`.
    fn new(max_bytes: usize) -> Self {
        let size = (max_bytes / 16).clamp(MIN_SLAB, MAX_SLAB);
        Self {
            size,
            max_filled: (max_bytes / size).saturating_add(SPARE_SLABS),
            current: None,
            filled: VecDeque::new(),
        }
    }

    /// `parts`, copied one after the other into a slab.
    fn keep(&mut self, parts: &[&[u8]]) -> Bytes {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > self.size {
            // Larger than a slab: its own allocation, freed with the batch.
            return Bytes::from(parts.concat());
        }
        let current = match self.current.take() {
            Some(current) if current.capacity() >= len => current,
            full => self.next_slab(full),
        };
        let current = self.current.insert(current);
        for part in parts {
            current.extend_from_slice(part);
        }
        current.split().freeze()
    }

    /// Retires the `full` slab and returns the next one: the oldest filled slab nobody holds
    /// any more, else a new one.
    fn next_slab(&mut self, full: Option<BytesMut>) -> BytesMut {
        self.filled.extend(full);
        // Slabs empty in the order they were filled, so the oldest few are the ones worth a
        // try (the oldest may still be held by a slow reader).
        let size = self.size;
        let reusable = self
            .filled
            .iter_mut()
            .take(SPARE_SLABS)
            .position(|tail| tail.try_reclaim(size));
        let next = reusable
            .and_then(|i| self.filled.remove(i))
            .unwrap_or_else(|| BytesMut::with_capacity(size));
        // Forgetting a tail frees nothing in use: its slab lives on while any batch or reader
        // holds it, and is freed after instead of reused.
        while self.filled.len() > self.max_filled {
            self.filled.pop_front();
        }
        next
    }
}

/// Whose envelopes one kept batch holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Sources {
    /// Named sources and their envelopes, in order of first appearance.
    names: Vec<(Arc<str>, u32)>,
    /// Envelopes of sources beyond [`SOURCES_PER_BATCH`].
    other: u32,
    /// Per envelope, its index in `names` ([`OTHER_SLOT`]: other). Empty while every envelope
    /// is of `names[0]` (the common single-source batch needs no per-envelope record).
    order: Vec<u8>,
}

impl Sources {
    /// Adds the sources of the batch's envelopes `lo..hi` (of `count`) to `into`; returns how
    /// many of them it could name. A whole batch is added from its totals; only a batch cut by
    /// the range walks its per-envelope record.
    fn add_range(&self, lo: u64, hi: u64, count: u64, into: &mut HashMap<Arc<str>, u64>) -> u64 {
        if hi <= lo {
            return 0;
        }
        if lo == 0 && hi >= count {
            let mut named = 0;
            for (name, n) in &self.names {
                *into.entry(name.clone()).or_default() += u64::from(*n);
                named += u64::from(*n);
            }
            return named;
        }
        if self.order.is_empty() {
            let Some((name, _)) = self.names.first() else {
                return 0;
            };
            *into.entry(name.clone()).or_default() += hi - lo;
            return hi - lo;
        }
        let mut per_slot = [0u64; SOURCES_PER_BATCH];
        let (lo, hi) = (
            usize::try_from(lo).unwrap_or(usize::MAX),
            usize::try_from(hi).unwrap_or(usize::MAX),
        );
        let slots = self
            .order
            .get(lo..hi.min(self.order.len()))
            .unwrap_or_default();
        for &slot in slots {
            if let Some(n) = per_slot.get_mut(usize::from(slot)) {
                *n += 1;
            }
        }
        let mut named = 0;
        for ((name, _), &n) in self.names.iter().zip(&per_slot) {
            if n > 0 {
                *into.entry(name.clone()).or_default() += n;
                named += n;
            }
        }
        named
    }
}

/// Counts a batch's envelopes by source as it is walked: the writer's, reused batch to batch.
#[derive(Debug, Default)]
struct Tally {
    current: Sources,
    /// Envelopes tallied in `current`.
    seen: usize,
    /// Where the last envelope's source was found (runs of one source are common).
    last: usize,
    /// A cheap key per name in `current.names` (same order), compared before the bytes.
    keys: Vec<Key>,
    interned: HashSet<Arc<str>>,
}

/// A source id's length and its first and last eight bytes: two ids with different keys
/// differ, so most mismatches cost three integer compares instead of a byte compare (ids often
/// share a long prefix, or are GUIDs that differ anywhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key(usize, u64, u64);

impl Key {
    fn of(id: &[u8]) -> Self {
        let word = |part: &[u8]| {
            if let Some(w) = part.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                return u64::from_le_bytes(w);
            }
            let mut w = [0u8; 8];
            for (to, from) in w.iter_mut().zip(part) {
                *to = *from;
            }
            u64::from_le_bytes(w)
        };
        let tail = id.get(id.len().saturating_sub(8)..).unwrap_or_default();
        Self(id.len(), word(id), word(tail))
    }
}

impl Tally {
    fn add(&mut self, source_id: &[u8]) {
        let names = &self.current.names;
        // A run of one source (the common case) costs one compare and no key.
        let again = names
            .get(self.last)
            .is_some_and(|(n, _)| n.as_bytes() == source_id);
        let slot = if again {
            Some(self.last)
        } else {
            let key = Key::of(source_id);
            let found = (0..self.keys.len()).find(|&slot| {
                self.keys.get(slot) == Some(&key)
                    && names
                        .get(slot)
                        .is_some_and(|(n, _)| n.as_bytes() == source_id)
            });
            match found {
                Some(slot) => Some(slot),
                None if names.len() < SOURCES_PER_BATCH => {
                    let name = self.intern(source_id);
                    self.current.names.push((name, 0));
                    self.keys.push(key);
                    Some(self.current.names.len() - 1)
                }
                None => None,
            }
        };
        let byte = match slot {
            Some(slot) => {
                self.last = slot;
                if let Some((_, n)) = self.current.names.get_mut(slot) {
                    *n = n.saturating_add(1);
                }
                u8::try_from(slot).unwrap_or(OTHER_SLOT)
            }
            None => {
                self.current.other = self.current.other.saturating_add(1);
                OTHER_SLOT
            }
        };
        // The per-envelope record starts with the first envelope not of the first source.
        if byte != 0 && self.current.order.is_empty() {
            self.current.order.reserve(self.seen + 64);
            self.current.order.resize(self.seen, 0);
        }
        if !self.current.order.is_empty() {
            self.current.order.push(byte);
        }
        self.seen += 1;
    }

    fn intern(&mut self, source_id: &[u8]) -> Arc<str> {
        let text = String::from_utf8_lossy(source_id);
        if let Some(name) = self.interned.get(text.as_ref()) {
            return name.clone();
        }
        if self.interned.len() >= MAX_INTERNED {
            self.interned.clear();
        }
        let name: Arc<str> = Arc::from(text.as_ref());
        self.interned.insert(name.clone());
        name
    }

    /// The batch's counts, leaving the tally empty for the next batch.
    fn take(&mut self) -> Sources {
        self.seen = 0;
        self.last = 0;
        self.keys.clear();
        std::mem::take(&mut self.current)
    }

    fn reset(&mut self) {
        let _ = self.take();
    }
}

/// One kept batch.
#[derive(Debug, Clone)]
struct Entry {
    start: u64,
    count: u64,
    /// The message a live reader is sent: the batch's position record (nothing skipped, not
    /// restarted), then the batch's envelopes.
    bytes: Bytes,
    /// Where the envelopes start in `bytes`.
    data: usize,
    at: Instant,
}

impl Entry {
    /// The batch's envelopes alone, as an encoded `EnvelopeBatch`.
    fn batch(&self) -> Bytes {
        self.bytes.slice(self.data..)
    }
}

#[derive(Debug, Default)]
struct Inner {
    entries: VecDeque<Entry>,
    /// Whose envelopes each entry holds, one per entry, in the same order.
    sources: VecDeque<Sources>,
    /// Evicted batches (`start`, `count`, sources), oldest first, at most [`HISTORY_BATCHES`].
    history: VecDeque<(u64, u64, Sources)>,
    bytes: usize,
    /// The offset the next batch gets.
    next: u64,
}

impl Inner {
    /// The oldest offset still held (`next` when empty).
    fn first(&self) -> u64 {
        self.entries.front().map_or(self.next, |e| e.start)
    }

    /// Whose envelopes the evicted offsets `from..end` were: the sources the history names (at
    /// most [`MAX_RECORD_SOURCES`], most lost first) and the rest as `other`. Sums to
    /// `end - from`.
    fn lost_sources(&self, from: u64, end: u64) -> BySource {
        let mut counts: HashMap<Arc<str>, u64> = HashMap::new();
        let mut named = 0;
        let at = self.history.partition_point(|(s, c, _)| s + c <= from);
        for (start, count, sources) in self.history.range(at..) {
            if *start >= end {
                break;
            }
            let lo = from.saturating_sub(*start);
            let hi = (*count).min(end - start);
            named += sources.add_range(lo, hi, *count, &mut counts);
        }
        let lost = end.saturating_sub(from);
        BySource::top_n(
            counts.into_iter().map(|(name, n)| (name.to_string(), n)),
            lost.saturating_sub(named),
            MAX_RECORD_SOURCES,
        )
    }
}

/// Where the ring stands, published to waiting readers on every push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Head(u64);

/// A bounded, numbered ring of recent batches; one writer (the router task), many readers.
#[derive(Debug)]
pub(crate) struct ReplayRing {
    inner: Mutex<Inner>,
    /// Only the writer takes this lock, so it never waits on a reader.
    slabs: Mutex<Slabs>,
    /// The writer's per-source tally (taken under `slabs`, the writer's lock).
    tally: Mutex<Tally>,
    head: watch::Sender<Head>,
    doppler: u64,
    epoch: u64,
    max_bytes: usize,
    max_age: Duration,
}

/// What one read found.
#[derive(Debug, Default)]
struct Read {
    /// Envelopes between the requested offset and the first batch returned that the ring no
    /// longer holds.
    skipped: u64,
    /// Whose those were (empty when nothing was skipped).
    lost: BySource,
    entries: Vec<Entry>,
}

impl ReplayRing {
    /// A ring keeping at most `max_bytes` of batches, none older than `max_age` once a newer one
    /// arrives. `doppler` is this doppler's stable id; the epoch is drawn at random.
    pub(crate) fn new(doppler: u64, max_bytes: usize, max_age: Duration) -> Self {
        Self {
            inner: Mutex::default(),
            slabs: Mutex::new(Slabs::new(max_bytes)),
            tally: Mutex::default(),
            head: watch::Sender::new(Head(0)),
            doppler,
            epoch: fastrand::u64(1..),
            max_bytes,
            max_age,
        }
    }

    #[cfg(test)]
    fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Keeps `batch`, evicting the oldest batches past the bounds. Never waits on a reader.
    pub(crate) fn push(&self, batch: &ValidBatch) {
        // The writer's lock, held to the end: `start` cannot move under it.
        let mut slabs = self.slabs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((batch, count)) = clean(batch, &mut tally) else {
            tally.reset();
            return;
        };
        let sources = tally.take();
        drop(tally);
        let start = self.next_offset();
        let record = RingPosition {
            doppler: self.doppler,
            epoch: self.epoch,
            start,
            count,
            skipped: 0,
            restarted: false,
        }
        .encode();
        let bytes = slabs.keep(&[&record, &batch]);
        let data = record.len();
        let now = Instant::now();
        let next = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            inner.next = start + count;
            inner.bytes += bytes.len();
            inner.entries.push_back(Entry {
                start,
                count,
                bytes,
                data,
                at: now,
            });
            inner.sources.push_back(sources);
            while inner.entries.len() > 1 {
                let Some(front) = inner.entries.front() else {
                    break;
                };
                let too_old = now.saturating_duration_since(front.at) > self.max_age;
                if !too_old && inner.bytes <= self.max_bytes {
                    break;
                }
                if let Some(old) = inner.entries.pop_front() {
                    inner.bytes -= old.bytes.len();
                    let sources = inner.sources.pop_front().unwrap_or_default();
                    inner.history.push_back((old.start, old.count, sources));
                    if inner.history.len() > HISTORY_BATCHES {
                        inner.history.pop_front();
                    }
                }
            }
            inner.next
        };
        drop(slabs);
        self.head.send_replace(Head(next));
    }

    /// The offset the next batch will get.
    pub(crate) fn next_offset(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next
    }

    /// `(batches, bytes)` held now.
    #[cfg(test)]
    fn depth(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (inner.entries.len(), inner.bytes)
    }

    /// Up to [`READ_BATCHES`] batches starting at or after `from` and before `to`.
    fn read(&self, from: u64, to: u64) -> Read {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let first = inner.first();
        let skipped = first.saturating_sub(from).min(to.saturating_sub(from));
        let lost = if skipped > 0 {
            inner.lost_sources(from, from + skipped)
        } else {
            BySource::default()
        };
        // Entries are sorted by start; the first one ending after `from`.
        let at = inner.entries.partition_point(|e| e.start + e.count <= from);
        let entries = inner
            .entries
            .range(at..)
            .take_while(|e| e.start < to)
            .take(READ_BATCHES)
            .cloned()
            .collect();
        Read {
            skipped,
            lost,
            entries,
        }
    }
}

/// The batch as it should be kept: the received bytes when every envelope in them is valid and
/// routable (the common case), else a batch rebuilt from those that are. `None` when nothing
/// is left.
/// Tallies the kept envelopes' sources in `tally` on the same walk.
fn clean(batch: &ValidBatch, tally: &mut Tally) -> Option<(Bytes, u64)> {
    let mut framed = 0usize;
    let mut routable = true;
    for e in batch.iter() {
        framed += 1 + varint_len(e.bytes.len() as u64) + e.bytes.len();
        let kept = e.kind != Kind::None;
        routable &= kept;
        if kept {
            tally.add(e.source_id);
        }
    }
    if routable && framed == batch.buffer_len() {
        return (!batch.is_empty()).then(|| (batch.buffer().clone(), batch.len() as u64));
    }
    let kept: Vec<&[u8]> = batch
        .iter()
        .filter(|e| e.kind != Kind::None)
        .map(|e| e.bytes)
        .collect();
    (!kept.is_empty()).then(|| {
        let n = kept.len() as u64;
        (batch_of(kept), n)
    })
}

/// What a ring read asked for, from the call's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RingRequest {
    /// `None`: from the head (live data from now on).
    pub(crate) from: Option<u64>,
    /// Stop before the batch starting at or after this offset; `None` follows live.
    pub(crate) to: Option<u64>,
    /// The epoch `from` belongs to, when the reader knows it.
    pub(crate) epoch: Option<u64>,
}

impl RingRequest {
    /// Reads the `hydrant-ring-*` metadata; `Ok(None)` when the call is an ordinary
    /// subscription.
    pub(crate) fn from_metadata(
        meta: &tonic::metadata::MetadataMap,
    ) -> Result<Option<Self>, Status> {
        use hydrant_envelope::cursor::{RING_EPOCH, RING_FROM, RING_TO};
        let text = |key: &str| meta.get(key).map(|v| v.to_str().unwrap_or("?"));
        let number = |key: &'static str| -> Result<Option<u64>, Status> {
            text(key)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        Status::invalid_argument(format!("{key}: {v:?} is not an offset"))
                    })
                })
                .transpose()
        };
        let Some(from) = text(RING_FROM) else {
            return Ok(None);
        };
        let from = if from == "head" {
            None
        } else {
            number(RING_FROM)?
        };
        Ok(Some(Self {
            from,
            to: number(RING_TO)?,
            epoch: number(RING_EPOCH)?,
        }))
    }
}

/// A ring read's response: position records and batches, in ring order.
pub(crate) fn ring_stream(
    ring: Arc<ReplayRing>,
    request: RingRequest,
    selectors: SubscriptionRequest,
    slow: Counter,
    egress: Counter,
    guard: impl Send + 'static,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Bytes, Status>> + Send + 'static {
    let mut head = ring.head.subscribe();
    head.mark_changed();
    let restarted = request.epoch.is_some_and(|e| e != ring.epoch);
    let next = match request.from {
        _ if restarted => 0,
        None => ring.next_offset(),
        // An offset from the future (another epoch the reader did not name): start live.
        Some(from) => from.min(ring.next_offset()),
    };
    let mut state = Reader {
        filter: Filter::new(selectors),
        ring,
        next,
        to: request.to.unwrap_or(u64::MAX),
        live: request.to.is_none(),
        restarted,
        head,
        pending: VecDeque::new(),
        slow,
        egress,
        shutdown,
        _guard: guard,
    };
    // Says at once which doppler and epoch this is and where the read starts, before any data.
    let hello = state.position(next, 0, 0);
    state.pending.push_back(hello);
    futures_util::stream::unfold(state, |mut s| async move {
        let message = s.next_message().await?;
        Some((Ok(message), s))
    })
}

struct Reader<G> {
    ring: Arc<ReplayRing>,
    filter: Filter,
    next: u64,
    to: u64,
    live: bool,
    restarted: bool,
    head: watch::Receiver<Head>,
    pending: VecDeque<Bytes>,
    slow: Counter,
    /// `doppler.egress`: ring reads are how the edge gets its data, so they are the doppler's
    /// egress as much as subscription streams are.
    egress: Counter,
    shutdown: CancellationToken,
    _guard: G,
}

impl<G> Reader<G> {
    async fn next_message(&mut self) -> Option<Bytes> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Some(m);
            }
            if self.next >= self.to {
                return None;
            }
            let read = self.ring.read(self.next, self.to);
            if read.entries.is_empty() {
                if !self.live && self.ring.next_offset() >= self.to {
                    // A bounded read whose remaining range was evicted: say so, then end.
                    if read.skipped > 0 {
                        let record = self.lost_record(self.to, 0, read.skipped, &read.lost);
                        self.pending.push_back(record);
                    }
                    self.next = self.to;
                    continue;
                }
                tokio::select! {
                    changed = self.head.changed() => if changed.is_err() { return None },
                    () = self.shutdown.cancelled() => return None,
                }
                continue;
            }
            let mut skipped = read.skipped;
            if skipped > 0 && self.live {
                self.slow.add(skipped);
            }
            for entry in read.entries {
                let first_skip = std::mem::take(&mut skipped);
                // A whole kept message carries its batch's position already; what it cannot
                // say (envelopes lost, another epoch) goes in a record of its own before it.
                if first_skip > 0 {
                    let record = self.lost_record(entry.start, entry.count, first_skip, &read.lost);
                    self.pending.push_back(record);
                } else if self.restarted || !self.filter.sends_kept_messages() {
                    self.pending
                        .push_back(self.position(entry.start, entry.count, 0));
                }
                self.restarted = false;
                let sent = self.filter.apply(&entry, &mut self.pending);
                self.egress.add(sent);
                self.next = entry.start + entry.count;
            }
        }
    }

    /// A position record reporting `skipped` lost envelopes, followed in the same message by
    /// the sources record saying whose they were.
    fn lost_record(&self, start: u64, count: u64, skipped: u64, lost: &BySource) -> Bytes {
        let position = self.position(start, count, skipped);
        let sources = encode_sources(lost);
        let mut record = BytesMut::with_capacity(position.len() + sources.len());
        record.extend_from_slice(&position);
        record.extend_from_slice(&sources);
        record.freeze()
    }

    fn position(&self, start: u64, count: u64, skipped: u64) -> Bytes {
        RingPosition {
            doppler: self.ring.doppler,
            epoch: self.ring.epoch,
            start,
            count,
            skipped,
            restarted: self.restarted,
        }
        .encode()
    }
}

/// Applies a read's selectors to kept batches: a request for everything (what the edge asks)
/// passes batches through untouched; anything else goes through a one-subscriber [`Router`],
/// so replayed data is selected exactly as live data is.
enum Filter {
    All,
    Select {
        router: Box<Router>,
        queue: Arc<SubscriptionQueue>,
    },
}

impl Filter {
    fn new(request: SubscriptionRequest) -> Self {
        if selects_everything(&request) {
            return Self::All;
        }
        let queue = Arc::new(SubscriptionQueue::new(
            QueueLimits {
                max_envelopes: usize::MAX,
                max_bytes: usize::MAX,
                batch_envelopes: 1000,
                batch_bytes: 1 << 20,
            },
            Counter::default(),
            Counter::default(),
        ));
        let mut router = Box::new(Router::new(1000, 1 << 20));
        router.subscribe(1, request, queue.clone());
        Self::Select { router, queue }
    }

    /// True when whole kept messages (position record and batch in one) are sent.
    fn sends_kept_messages(&self) -> bool {
        matches!(self, Self::All)
    }

    /// Queues the selected part of a kept batch; returns how many envelopes that is.
    fn apply(&mut self, entry: &Entry, out: &mut VecDeque<Bytes>) -> u64 {
        match self {
            Self::All => {
                out.push_back(entry.bytes.clone());
                entry.count
            }
            Self::Select { router, queue } => {
                let (batch, _) = ValidBatch::from_batch(entry.batch());
                router.route(&batch);
                let mut selected = 0;
                while let Some(taken) = queue.try_take() {
                    selected += taken.count as u64;
                    out.extend(taken.chunks.into_iter().map(|c| c.bytes));
                }
                selected
            }
        }
    }
}

/// True for an unsharded request with, from every source, every log, counter, gauge, timer and
/// event.
pub(crate) fn selects_everything(request: &SubscriptionRequest) -> bool {
    use crate::selector::Filter as F;
    if !request.shard_id.is_empty() {
        return false;
    }
    let all = |want: &dyn Fn(&F) -> bool| {
        request
            .routes
            .iter()
            .any(|r| r.source_id.is_empty() && want(&r.filter))
    };
    all(&|f| *f == F::Log)
        && all(&|f| *f == F::Timer)
        && all(&|f| *f == F::Event)
        && all(&|f| matches!(f, F::Counter(n) if n.is_empty()))
        && all(&|f| matches!(f, F::Gauge(n) if n.is_empty()))
}

#[cfg(test)]
pub(crate) mod tests {
    use futures_util::StreamExt as _;
    use hydrant_envelope::v2;
    use hydrant_envelope::wire::{BatchIter, EnvelopeView, encode};

    use super::*;

    fn log(source: &str, n: i64) -> Bytes {
        encode(&v2::Envelope {
            source_id: source.to_owned(),
            timestamp: n,
            message: Some(v2::envelope::Message::Log(v2::Log {
                payload: Bytes::from(format!("line {n}")),
                r#type: 0,
            })),
            ..v2::Envelope::default()
        })
    }

    fn batch(source: &str, range: std::ops::Range<i64>) -> ValidBatch {
        let envs: Vec<Bytes> = range.map(|n| log(source, n)).collect();
        ValidBatch::from_batch(batch_of(envs.iter().map(|b| b.as_ref()))).0
    }

    /// Selects every kind from every source: the reads these tests make watch the ring itself.
    pub(crate) fn everything() -> SubscriptionRequest {
        use v2::selector::Message;
        let all = |m| v2::Selector {
            source_id: String::new(),
            message: Some(m),
        };
        SubscriptionRequest::parse(
            String::new(),
            None,
            vec![
                all(Message::Log(v2::LogSelector {})),
                all(Message::Counter(v2::CounterSelector::default())),
                all(Message::Gauge(v2::GaugeSelector::default())),
                all(Message::Timer(v2::TimerSelector {})),
                all(Message::Event(v2::EventSelector {})),
            ],
            "",
        )
        .unwrap()
    }

    /// A read of every envelope in `ring` over `from..to` whose counters nobody looks at.
    pub(crate) fn read_everything(
        ring: &Arc<ReplayRing>,
        from: Option<u64>,
        to: Option<u64>,
    ) -> impl Stream<Item = Result<Bytes, Status>> + Send + 'static {
        let request = RingRequest {
            from,
            to,
            epoch: None,
        };
        ring_stream(
            ring.clone(),
            request,
            everything(),
            Counter::default(),
            Counter::default(),
            (),
            CancellationToken::new(),
        )
    }

    /// A ring read's message as the edge takes it apart: the leading position record, if any,
    /// and the envelopes after it (past the sources record a lost count brings).
    fn split(message: &Bytes) -> (Option<RingPosition>, Bytes) {
        let (position, _, rest) = split_lost(message);
        (position, rest)
    }

    /// [`split`], with the sources record.
    fn split_lost(message: &Bytes) -> (Option<RingPosition>, Option<BySource>, Bytes) {
        use hydrant_envelope::cursor::{POSITION_KEY, split_sources};
        use hydrant_envelope::wire::read_varint;
        let mut pos = 0;
        if read_varint(message, &mut pos).ok() != Some(POSITION_KEY) {
            return (None, None, message.clone());
        }
        let len = read_varint(message, &mut pos).unwrap() as usize;
        let end = pos + len;
        let record = RingPosition::from_message(&message[..end]).unwrap();
        let (lost, rest) = split_sources(&message.slice(end..));
        assert_eq!(
            lost.is_some(),
            record.skipped > 0,
            "a sources record comes with every lost count, and only then"
        );
        if let Some(lost) = &lost {
            assert_eq!(lost.total(), record.skipped, "whose they were adds up");
        }
        (Some(record), lost, rest)
    }

    /// Reads a bounded stream to its end: (positions, timestamps of the envelopes); asserts
    /// that `doppler.egress` counted exactly the envelopes sent.
    async fn read_all(
        ring: &Arc<ReplayRing>,
        request: RingRequest,
        selectors: SubscriptionRequest,
    ) -> (Vec<RingPosition>, Vec<i64>) {
        let egress = Counter::default();
        let stream = ring_stream(
            ring.clone(),
            request,
            selectors,
            Counter::default(),
            egress.clone(),
            (),
            CancellationToken::new(),
        );
        let messages: Vec<Bytes> = stream.map(Result::unwrap).collect().await;
        let mut positions = Vec::new();
        let mut stamps = Vec::new();
        for m in messages {
            let (position, batch) = split(&m);
            positions.extend(position);
            for e in BatchIter::new(&batch) {
                stamps.push(EnvelopeView::parse(e.unwrap()).unwrap().timestamp);
            }
        }
        assert_eq!(
            egress.get(),
            stamps.len() as u64,
            "doppler.egress counts what a ring read sent"
        );
        (positions, stamps)
    }

    #[tokio::test]
    async fn a_bounded_read_returns_exactly_the_range_in_order() {
        let ring = Arc::new(ReplayRing::new(1, usize::MAX, Duration::from_secs(60)));
        ring.push(&batch("a", 0..10));
        ring.push(&batch("b", 10..15));
        ring.push(&batch("a", 15..30));
        let request = RingRequest {
            from: Some(10),
            to: Some(30),
            epoch: Some(ring.epoch()),
        };
        let (positions, stamps) = read_all(&ring, request, everything()).await;
        assert_eq!(stamps, (10..30).collect::<Vec<_>>());
        assert_eq!(
            positions
                .iter()
                .map(|p| (p.start, p.count))
                .collect::<Vec<_>>(),
            [(10, 0), (10, 5), (15, 15)]
        );
        assert!(positions.iter().all(|p| p.skipped == 0 && !p.restarted));
    }

    #[tokio::test]
    async fn an_evicted_range_is_reported_with_the_exact_count() {
        // Room for about two batches of ten, each kept with its position record (< 40 bytes).
        let one = batch("a", 40..50).buffer_len() + 40;
        let ring = Arc::new(ReplayRing::new(1, 2 * one, Duration::from_secs(60)));
        for i in 0..5 {
            ring.push(&batch("a", i * 10..i * 10 + 10));
        }
        assert_eq!(ring.depth().0, 2);
        let request = RingRequest {
            from: Some(5),
            to: Some(50),
            epoch: None,
        };
        let (positions, stamps) = read_all(&ring, request, everything()).await;
        assert_eq!(positions[1].skipped, 25, "offsets 5..30 are gone");
        assert_eq!(stamps, (30..50).collect::<Vec<_>>());
    }

    fn mixed(sources: &[&str], range: std::ops::Range<i64>) -> ValidBatch {
        let envs: Vec<Bytes> = range
            .map(|n| log(sources[n as usize % sources.len()], n))
            .collect();
        ValidBatch::from_batch(batch_of(envs.iter().map(|b| b.as_ref()))).0
    }

    /// Reads `from..to` and returns whose the envelopes it lost were, by name.
    async fn lost_from(ring: &Arc<ReplayRing>, from: u64, to: u64) -> (u64, BySource) {
        let stream = read_everything(ring, Some(from), Some(to));
        let messages: Vec<Bytes> = stream.map(Result::unwrap).collect().await;
        let mut skipped = 0;
        let mut lost = BySource::default();
        for m in &messages {
            let (p, by, _) = split_lost(m);
            if let (Some(p), Some(by)) = (p, by) {
                skipped += p.skipped;
                lost = by;
            }
        }
        (skipped, lost)
    }

    fn named(by: &BySource) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = by.top.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        v.sort_unstable();
        v
    }

    #[tokio::test]
    async fn an_evicted_range_is_told_per_source_with_exact_counts() {
        // Room for about two batches of twelve.
        let one = mixed(&["a", "b", "c"], 0..12).buffer_len() + 40;
        let ring = Arc::new(ReplayRing::new(1, 2 * one, Duration::from_secs(60)));
        ring.push(&batch("a", 0..12)); // 0..12: all a
        ring.push(&mixed(&["a", "b", "c"], 12..24)); // a b c a b c ...
        ring.push(&batch("b", 24..36));
        ring.push(&batch("c", 36..48));
        ring.push(&batch("a", 48..60));
        assert_eq!(ring.depth().0, 2, "0..36 evicted");
        // From the middle of the first batch: 7 of a's, then the mixed batch, then b's twelve.
        let (skipped, lost) = lost_from(&ring, 5, 60).await;
        assert_eq!(skipped, 31);
        assert_eq!(named(&lost), [("a", 7 + 4), ("b", 4 + 12), ("c", 4)]);
        assert_eq!(lost.other, 0);
        assert_eq!(lost.top[0].0, "b", "most lost first");
        // From the middle of the mixed batch (offset 13 is its second envelope, b's).
        let (skipped, lost) = lost_from(&ring, 13, 60).await;
        assert_eq!(skipped, 23);
        assert_eq!(named(&lost), [("a", 3), ("b", 4 + 12), ("c", 4)]);
        // A bounded read ending inside the evicted range counts only up to its end.
        let (skipped, lost) = lost_from(&ring, 0, 18).await;
        assert_eq!(skipped, 18);
        assert_eq!(named(&lost), [("a", 12 + 2), ("b", 2), ("c", 2)]);
    }

    #[tokio::test]
    async fn sources_beyond_a_batchs_names_and_beyond_the_history_are_other() {
        let names: Vec<String> = (0..SOURCES_PER_BATCH + 4)
            .map(|i| format!("s{i}"))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let wide = mixed(&refs, 0..refs.len() as i64);
        let ring = Arc::new(ReplayRing::new(1, 1, Duration::from_secs(60)));
        ring.push(&wide);
        ring.push(&batch("z", 100..101));
        let (skipped, lost) = lost_from(&ring, 0, 21).await;
        assert_eq!(skipped, 20);
        assert_eq!(lost.top.len(), SOURCES_PER_BATCH);
        assert_eq!(
            lost.other, 4,
            "the four sources past the batch's sixteen names"
        );
        // Past the history: the oldest evicted batches are no longer named.
        for i in 0..HISTORY_BATCHES as i64 {
            ring.push(&batch("y", 200 + i..201 + i));
        }
        let (skipped, lost) = lost_from(&ring, 0, ring.next_offset()).await;
        assert_eq!(skipped, 20 + 1 + HISTORY_BATCHES as u64 - 1);
        assert_eq!(named(&lost), [("y", HISTORY_BATCHES as u64 - 1), ("z", 1)]);
        assert_eq!(lost.other, 20, "evicted before the history reaches");
    }

    #[test]
    fn a_single_source_batch_keeps_no_per_envelope_record() {
        let mut tally = Tally::default();
        let (_, n) = clean(&batch("a", 0..50), &mut tally).unwrap();
        let one = tally.take();
        assert_eq!(n, 50);
        assert!(one.order.is_empty());
        assert_eq!(one.names.len(), 1);
        let _ = clean(&mixed(&["a", "a", "b"], 0..6), &mut tally).unwrap();
        let two = tally.take();
        assert_eq!(two.order, [0, 0, 1, 0, 0, 1]);
        assert!(
            Arc::ptr_eq(&one.names[0].0, &two.names[0].0),
            "names are interned"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn batches_older_than_the_window_are_evicted_and_the_newest_kept() {
        let ring = ReplayRing::new(1, usize::MAX, Duration::from_secs(60));
        ring.push(&batch("a", 0..3));
        tokio::time::advance(Duration::from_secs(61)).await;
        ring.push(&batch("a", 3..4));
        assert_eq!(ring.depth().0, 1);
        tokio::time::advance(Duration::from_secs(600)).await;
        ring.push(&batch("a", 4..5));
        assert_eq!(ring.depth().0, 1, "the newest batch is always kept");
        assert_eq!(ring.next_offset(), 5);
    }

    #[tokio::test]
    async fn selectors_apply_to_replayed_batches() {
        use v2::selector::Message;
        let ring = Arc::new(ReplayRing::new(1, usize::MAX, Duration::from_secs(60)));
        let mixed: Vec<Bytes> = (0..6).map(|n| log(["a", "b"][n as usize % 2], n)).collect();
        ring.push(&ValidBatch::from_batch(batch_of(mixed.iter().map(|b| b.as_ref()))).0);
        let only_a = SubscriptionRequest::parse(
            String::new(),
            None,
            vec![v2::Selector {
                source_id: "a".into(),
                message: Some(Message::Log(v2::LogSelector {})),
            }],
            "",
        )
        .unwrap();
        let request = RingRequest {
            from: Some(0),
            to: Some(6),
            epoch: None,
        };
        let (_, stamps) = read_all(&ring, request, only_a).await;
        assert_eq!(stamps, [0, 2, 4]);
    }

    #[tokio::test]
    async fn another_epoch_reads_from_the_oldest_batch_and_says_so() {
        let ring = Arc::new(ReplayRing::new(1, usize::MAX, Duration::from_secs(60)));
        ring.push(&batch("a", 0..4));
        let request = RingRequest {
            from: Some(1000),
            to: Some(4),
            epoch: Some(ring.epoch() ^ 1),
        };
        let (positions, stamps) = read_all(&ring, request, everything()).await;
        assert!(positions[0].restarted);
        assert_eq!(stamps.len(), 4);
    }

    #[tokio::test]
    async fn a_live_read_waits_for_new_batches() {
        let ring = Arc::new(ReplayRing::new(1, usize::MAX, Duration::from_secs(60)));
        ring.push(&batch("a", 0..2));
        let mut stream = Box::pin(read_everything(&ring, None, None));
        ring.push(&batch("a", 2..5));
        let hello = stream.next().await.unwrap().unwrap();
        let p = RingPosition::from_message(&hello).unwrap();
        assert_eq!((p.start, p.count), (2, 0), "the read starts at the head");
        let first = stream.next().await.unwrap().unwrap();
        let (p, data) = split(&first);
        let p = p.unwrap();
        assert_eq!(
            (p.start, p.count),
            (2, 3),
            "from the head: older batches are not sent"
        );
        assert_eq!(
            BatchIter::new(&data).count(),
            3,
            "a batch travels in one message with its position"
        );
        ring.push(&batch("a", 5..6));
        let (p, data) = split(&stream.next().await.unwrap().unwrap());
        assert_eq!((p.unwrap().start, BatchIter::new(&data).count()), (5, 1));
    }

    #[test]
    fn rejected_and_untyped_envelopes_are_left_out_of_kept_batches() {
        let good = log("a", 1);
        let untyped = encode(&v2::Envelope::default());
        let (b, _) = ValidBatch::from_batch(batch_of([&good[..], &untyped[..], &good[..]]));
        let (bytes, count) = clean(&b, &mut Tally::default()).unwrap();
        assert_eq!(count, 2);
        assert_eq!(BatchIter::new(&bytes).count(), 2);
        let (plain, _) = ValidBatch::from_batch(batch_of([&good[..]]));
        let (same, _) = clean(&plain, &mut Tally::default()).unwrap();
        assert_eq!(same, plain.buffer(), "a clean batch is kept as is");
    }

    #[test]
    fn kept_batches_do_not_pin_the_buffer_they_arrived_in() {
        let ring = ReplayRing::new(1, usize::MAX, Duration::from_secs(60));
        let b = batch("a", 0..10);
        let received = b.buffer().clone();
        ring.push(&b);
        drop(b);
        let read = ring.read(0, u64::MAX);
        let kept = read.entries[0].batch();
        assert_eq!(kept, received, "kept byte for byte");
        assert!(
            received.try_into_mut().is_ok(),
            "the receive buffer is free for the next message once the batch is routed"
        );
    }

    /// What counting sources adds to keeping a batch (a measurement, not a check):
    /// `cargo test --release -p hydrant-doppler push_cost -- --ignored --nocapture`. Batches
    /// of 100 envelopes from one source and over 50 sources (as `benches/fanout.rs` builds).
    #[test]
    #[ignore = "a measurement; run in release"]
    fn push_cost() {
        use std::hint::black_box;
        use std::time::Instant as Clock;
        /// The walk `clean` made before it counted sources.
        fn untallied(batch: &ValidBatch) -> (usize, bool) {
            let mut framed = 0usize;
            let mut routable = true;
            for e in batch.iter() {
                framed += 1 + varint_len(e.bytes.len() as u64) + e.bytes.len();
                routable &= e.kind != Kind::None;
            }
            (framed, routable)
        }
        const ROUNDS: u32 = 20_000;
        let per_envelope = |start: Clock, b: &ValidBatch| {
            start.elapsed().as_nanos() as f64 / f64::from(ROUNDS) / b.len() as f64
        };
        let sources: Vec<String> = (0..50).map(|i| format!("3f8a2c1e-7b4d-{i:012}")).collect();
        let names: Vec<&str> = sources.iter().map(String::as_str).collect();
        for (label, b) in [
            ("1 source", batch(names[0], 0..100)),
            ("50 sources", mixed(&names, 0..100)),
        ] {
            let mut tally = Tally::default();
            for round in 0..3 {
                let start = Clock::now();
                for _ in 0..ROUNDS {
                    black_box(untallied(black_box(&b)));
                }
                let before = per_envelope(start, &b);
                let start = Clock::now();
                for _ in 0..ROUNDS {
                    black_box(clean(black_box(&b), &mut tally));
                    black_box(tally.take());
                }
                let after = per_envelope(start, &b);
                let ring = ReplayRing::new(1, 64 << 20, Duration::from_secs(60));
                let start = Clock::now();
                for _ in 0..ROUNDS {
                    ring.push(&b);
                }
                let push = per_envelope(start, &b);
                println!(
                    "{label} #{round}: walk {before:.2} ns/envelope, walk + tally {after:.2}, \
                     whole ring push {push:.2}"
                );
            }
        }
    }

    #[test]
    fn slabs_are_reused_once_their_batches_are_evicted_and_read() {
        let one = batch("a", 0..10);
        let mut slabs = Slabs::new(0);
        let per_slab = slabs.size / one.buffer_len();
        let first: Vec<Bytes> = (0..per_slab).map(|_| slabs.keep(&[one.buffer()])).collect();
        let slab_start = first[0].as_ptr();
        // Fill a second slab while a reader still holds one batch of the first.
        let held = first[per_slab / 2].clone();
        drop(first);
        let second = slabs.keep(&[one.buffer()]);
        assert_ne!(
            second.as_ptr(),
            slab_start,
            "a held slab is not written over"
        );
        let rest: Vec<Bytes> = (1..per_slab).map(|_| slabs.keep(&[one.buffer()])).collect();
        drop(held);
        let third = slabs.keep(&[one.buffer()]);
        assert_eq!(
            third.as_ptr(),
            slab_start,
            "a slab nobody holds is written again"
        );
        assert_eq!(&third[..], &one.buffer()[..]);
        assert!(rest.iter().all(|b| b[..] == one.buffer()[..]));
        // A batch larger than a slab gets its own allocation.
        let big = vec![0u8; slabs.size + 1];
        assert_eq!(slabs.keep(&[&big]).len(), big.len());
    }
}
