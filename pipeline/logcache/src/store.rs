//! The store: recent envelopes per `source_id`, ordered by timestamp, bounded three ways.
//!
//! Where it sits: the doppler hands every valid batch to a cache task off its hot path; that task
//! calls [`Store::ingest_run`] per run of envelopes sharing a source (one hash, one shard lock and
//! one allocation per 4 KiB of the run, not per envelope), and the `logcache.v1.Egress` service calls
//! [`Store::read`] and [`Store::meta`].
//!
//! Invariants:
//! - Memory is bounded by `max_per_source` entries per source, `max_sources` sources and
//!   `max_bytes_total` accounted bytes (envelope bytes plus a fixed per-entry and per-source
//!   overhead, so a flood of tiny envelopes or long source ids cannot hide from the budget).
//! - Every envelope handed to `ingest` is either stored, or counted as expired (with a reason) or
//!   rejected; per source `count + expired == ingested` while the source exists.
//! - Nothing is allocated in proportion to a number a client chose: reads allocate at most
//!   `min(limit, entries in the source)` handles.
//!
//! Layout: sources are spread over a fixed number of shards, each a `Mutex<HashMap>`, so a read of
//! one source never waits for the ingest of another. The two global evictions (memory and source
//! count) are rare and take every shard lock in index order, behind a maintenance lock.

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use hydrant_envelope::wire::Kind;
// A panic while holding a shard cannot leave it half-updated in a way that matters more than
// losing the cache, so keep serving: the runtime's poison-tolerant lock.
use hydrant_runtime::lock;
use serde::Deserialize;

use crate::Error;

/// Default and maximum `limit` of a read, as in Log Cache.
pub const DEFAULT_READ_LIMIT: i64 = 100;
/// Reads asking for more than this are refused, as in Log Cache.
pub const MAX_READ_LIMIT: i64 = 1000;

/// Accounted bytes per stored envelope on top of its encoded size: the entry in the ring (a
/// timestamp, a kind and a `Bytes` handle) plus the allocation it points to.
pub const ENTRY_OVERHEAD: usize = 64;
/// Accounted bytes per source on top of its id: the map slot and the ring header.
pub const SOURCE_OVERHEAD: usize = 128;

const SHARDS: usize = 16;

/// Sizes of the store. Deserialized from the `[logcache]` section of the doppler's config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Envelopes kept per source; the oldest is evicted (counted `expired`) when a new one
    /// arrives. Default 100_000, Log Cache's `max_per_source`: enough for an app doing 1000
    /// requests/s to keep over a minute of router metrics.
    pub max_per_source: usize,
    /// Accounted bytes kept across all sources; past it the oldest envelopes across all sources
    /// are evicted, as Log Cache's truncation does. Default 256 MiB.
    pub max_bytes_total: usize,
    /// Sources kept; a new source past it evicts the stalest sources (oldest newest-envelope)
    /// first. Default 10_000.
    pub max_sources: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_per_source: 100_000,
            max_bytes_total: 256 * 1024 * 1024,
            max_sources: 10_000,
        }
    }
}

impl StoreConfig {
    /// Checks every bound is usable.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field and a valid range.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_per_source == 0 {
            return Err(Error::Config {
                field: "max_per_source",
                message: "must be at least 1 (Log Cache uses 100000)".to_owned(),
            });
        }
        if self.max_sources == 0 {
            return Err(Error::Config {
                field: "max_sources",
                message: "must be at least 1 (the default is 10000)".to_owned(),
            });
        }
        let floor = 64 * 1024;
        if self.max_bytes_total < floor {
            return Err(Error::Config {
                field: "max_bytes_total",
                message: format!(
                    "{} is too small; give the cache at least {floor} bytes (the default is 268435456)",
                    self.max_bytes_total
                ),
            });
        }
        Ok(())
    }
}

/// A read of one source, with Log Cache's `Read` semantics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadQuery {
    /// The source to read.
    pub source_id: String,
    /// Inclusive lower bound, UNIX ns; 0 means from the oldest cached envelope.
    pub start_time: i64,
    /// Exclusive upper bound, UNIX ns; 0 means now.
    pub end_time: i64,
    /// Kinds to return; empty means every kind.
    pub envelope_types: Vec<Kind>,
    /// Most envelopes to return: 0 means [`DEFAULT_READ_LIMIT`], above [`MAX_READ_LIMIT`] is an
    /// error. Counted from the requested end: ascending reads return the oldest `limit` in range,
    /// descending reads the newest.
    pub limit: i64,
    /// Newest first.
    pub descending: bool,
}

/// What [`Store::meta`] reports per source (Log Cache's `MetaInfo`, plus `ingested`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceMeta {
    /// Envelopes held now.
    pub count: u64,
    /// Envelopes of this source evicted since the source was created.
    pub expired: u64,
    /// Envelopes handed to the store for this source since it was created
    /// (`count + expired == ingested`).
    pub ingested: u64,
    /// Timestamp of the oldest envelope held, 0 when empty.
    pub oldest_timestamp: i64,
    /// Timestamp of the newest envelope held, 0 when empty.
    pub newest_timestamp: i64,
}

/// Store-wide totals since start, for the `logcache.*` metrics and the ledger
/// `ingested == envelopes + expired_* + rejected_*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Envelopes handed to [`Store::ingest`].
    pub ingested: u64,
    /// Envelopes held now.
    pub envelopes: u64,
    /// Accounted bytes held now.
    pub bytes: u64,
    /// Sources held now.
    pub sources: u64,
    /// Evicted because their source's ring was full.
    pub expired_max_per_source: u64,
    /// Evicted because the store was over `max_bytes_total`.
    pub expired_memory: u64,
    /// Evicted with their whole source to make room for a new source.
    pub expired_max_sources: u64,
    /// Refused: larger than the whole byte budget.
    pub rejected_too_large: u64,
    /// Refused: no room for a new source even after evicting stale ones.
    pub rejected_max_sources: u64,
}

impl StoreStats {
    /// Every eviction, whatever the reason.
    #[must_use]
    pub fn expired(&self) -> u64 {
        self.expired_max_per_source + self.expired_memory + self.expired_max_sources
    }

    /// Every refusal, whatever the reason.
    #[must_use]
    pub fn rejected(&self) -> u64 {
        self.rejected_too_large + self.rejected_max_sources
    }
}

/// One envelope of a run handed to [`Store::ingest_run`], borrowed from the batch it came in.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// `timestamp`, UNIX ns.
    pub timestamp: i64,
    /// Which message it carries.
    pub kind: Kind,
    /// The whole encoded envelope.
    pub bytes: &'a [u8],
}

/// Most bytes of a run copied into one allocation. Entries share their chunk, which is freed
/// once every entry in it is evicted; a source evicts oldest first, so at most its oldest chunk
/// is partly dead. The per-entry [`ENTRY_OVERHEAD`] (charged for an allocation of its own that
/// an entry no longer has) covers that: 4 KiB is 16 envelopes of 250 bytes.
pub const CHUNK_BYTES: usize = 4096;

/// Copies a run's envelopes into chunks of at most [`CHUNK_BYTES`] (an envelope larger than
/// that gets a chunk of its own) and hands out each envelope as a slice of its chunk.
fn copy_run<'a>(run: impl Iterator<Item = &'a Incoming<'a>> + Clone) -> Vec<Entry> {
    let mut entries = Vec::with_capacity(run.clone().count());
    let mut pending: Vec<&Incoming<'_>> = Vec::new();
    let mut pending_bytes = 0;
    for e in run {
        if !pending.is_empty() && pending_bytes + e.bytes.len() > CHUNK_BYTES {
            flush_chunk(&mut pending, &mut entries, pending_bytes);
            pending_bytes = 0;
        }
        pending_bytes += e.bytes.len();
        pending.push(e);
    }
    if !pending.is_empty() {
        flush_chunk(&mut pending, &mut entries, pending_bytes);
    }
    entries
}

/// One allocation of `size` bytes holding every pending envelope, sliced into entries.
fn flush_chunk(pending: &mut Vec<&Incoming<'_>>, entries: &mut Vec<Entry>, size: usize) {
    let mut chunk = BytesMut::with_capacity(size);
    for e in pending.iter() {
        chunk.extend_from_slice(e.bytes);
    }
    let chunk = chunk.freeze();
    let mut at = 0;
    for e in pending.drain(..) {
        entries.push(Entry {
            timestamp: e.timestamp,
            kind: e.kind,
            bytes: chunk.slice(at..at + e.bytes.len()),
        });
        at += e.bytes.len();
    }
}

/// What one run changed, applied to the store's shared counters once per run rather than once
/// per envelope.
#[derive(Debug, Default)]
struct Delta {
    added_bytes: usize,
    removed_bytes: usize,
    added_envelopes: usize,
    removed_envelopes: usize,
    expired: u64,
}

impl Delta {
    fn apply(&self, store: &Store) {
        // Add before subtracting so the unsigned totals never wrap below zero in between.
        store.bytes.fetch_add(self.added_bytes, Ordering::Relaxed);
        store.bytes.fetch_sub(self.removed_bytes, Ordering::Relaxed);
        store
            .envelopes
            .fetch_add(self.added_envelopes, Ordering::Relaxed);
        store
            .envelopes
            .fetch_sub(self.removed_envelopes, Ordering::Relaxed);
        if self.expired > 0 {
            bump(&store.totals.expired_max_per_source, self.expired);
        }
    }
}

#[derive(Debug)]
struct Entry {
    timestamp: i64,
    kind: Kind,
    bytes: Bytes,
}

impl Entry {
    fn cost(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

#[derive(Debug, Default)]
struct Source {
    /// Sorted by timestamp; equal timestamps keep arrival order.
    entries: VecDeque<Entry>,
    expired: u64,
    ingested: u64,
}

impl Source {
    fn oldest(&self) -> i64 {
        self.entries.front().map_or(0, |e| e.timestamp)
    }

    fn newest(&self) -> i64 {
        self.entries.back().map_or(0, |e| e.timestamp)
    }

    fn bytes(&self) -> usize {
        self.entries.iter().map(Entry::cost).sum()
    }
}

#[derive(Debug, Default)]
struct Shard {
    sources: HashMap<Box<str>, Source>,
}

#[derive(Debug, Default)]
struct Totals {
    ingested: AtomicU64,
    expired_max_per_source: AtomicU64,
    expired_memory: AtomicU64,
    expired_max_sources: AtomicU64,
    rejected_too_large: AtomicU64,
    rejected_max_sources: AtomicU64,
}

/// The cache. Shareable across threads (`Arc<Store>`); every method takes `&self`.
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    bytes: AtomicUsize,
    envelopes: AtomicUsize,
    sources: AtomicUsize,
    totals: Totals,
    /// Serialises the global evictions so two threads never both truncate.
    maintenance: Mutex<()>,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Store {
    /// An empty store. The config is used as given; call [`StoreConfig::validate`] first to
    /// reject unusable bounds (zeros are treated as 1 here rather than panicking).
    #[must_use]
    pub fn new(config: StoreConfig) -> Self {
        let config = StoreConfig {
            max_per_source: config.max_per_source.max(1),
            max_sources: config.max_sources.max(1),
            max_bytes_total: config.max_bytes_total.max(1),
        };
        Self {
            config,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            bytes: AtomicUsize::new(0),
            envelopes: AtomicUsize::new(0),
            sources: AtomicUsize::new(0),
            totals: Totals::default(),
            maintenance: Mutex::new(()),
        }
    }

    /// The bounds in force.
    #[must_use]
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn shard_of(&self, source_id: &str) -> usize {
        (self.hasher.hash_one(source_id) as usize) % SHARDS
    }

    /// Stores a copy of one encoded envelope under `source_id` (the incoming batch buffer is not
    /// kept alive). Evicts as needed to stay within every bound; never fails, but counts every
    /// envelope it does not keep.
    pub fn ingest(&self, source_id: &str, timestamp: i64, kind: Kind, envelope: &[u8]) {
        self.ingest_run(
            source_id,
            &[Incoming {
                timestamp,
                kind,
                bytes: envelope,
            }],
        );
    }

    /// Stores copies of a run of envelopes of one source (consecutive envelopes of a batch
    /// usually share their source: an emitter batches one app's lines). The same as
    /// [`Store::ingest`] of each in turn, but the run pays one hash, one shard lock and one
    /// allocation per [`CHUNK_BYTES`] of envelopes instead of one of each per envelope.
    pub fn ingest_run(&self, source_id: &str, run: &[Incoming<'_>]) {
        if run.is_empty() {
            return;
        }
        bump(&self.totals.ingested, run.len() as u64);
        let source_cost = source_id.len() + SOURCE_OVERHEAD;
        let fits = |e: &Incoming<'_>| {
            e.bytes.len() + ENTRY_OVERHEAD + source_cost <= self.config.max_bytes_total
        };
        let refused = run.iter().filter(|e| !fits(e)).count();
        if refused > 0 {
            bump(&self.totals.rejected_too_large, refused as u64);
            if refused == run.len() {
                return;
            }
        }
        let entries = copy_run(run.iter().filter(|e| fits(e)));
        let shard_index = self.shard_of(source_id);
        let mut evicted_stale = false;
        let mut delta = Delta::default();
        loop {
            let mut shard = lock(&self.shards[shard_index]);
            if let Some(source) = shard.sources.get_mut(source_id) {
                for entry in entries {
                    self.push(source, entry, &mut delta);
                }
                break;
            }
            if self.sources.load(Ordering::Relaxed) >= self.config.max_sources {
                drop(shard);
                if evicted_stale {
                    bump(&self.totals.rejected_max_sources, entries.len() as u64);
                    return;
                }
                self.evict_stale_sources();
                evicted_stale = true;
                continue;
            }
            let mut source = Source::default();
            for entry in entries {
                self.push(&mut source, entry, &mut delta);
            }
            shard.sources.insert(source_id.into(), source);
            self.sources.fetch_add(1, Ordering::Relaxed);
            delta.added_bytes += source_cost;
            break;
        }
        delta.apply(self);
        if self.bytes.load(Ordering::Relaxed) > self.config.max_bytes_total {
            self.truncate();
        }
    }

    /// Adds one envelope to a source's ring, evicting its oldest when the ring is full.
    fn push(&self, source: &mut Source, entry: Entry, delta: &mut Delta) {
        source.ingested += 1;
        if source.entries.len() >= self.config.max_per_source {
            let oldest = source.entries.front().map_or(i64::MIN, |e| e.timestamp);
            if entry.timestamp < oldest {
                // Older than everything a full ring holds: it would be the one evicted.
                source.expired += 1;
                delta.expired += 1;
                return;
            }
            if let Some(evicted) = source.entries.pop_front() {
                source.expired += 1;
                delta.expired += 1;
                delta.removed_bytes += evicted.cost();
                delta.removed_envelopes += 1;
            }
        }
        delta.added_bytes += entry.cost();
        delta.added_envelopes += 1;
        // Envelopes mostly arrive in order; the common case is an append, and a late one lands
        // near the back, where `VecDeque::insert` moves only the shorter side.
        if source.entries.is_empty() || source.newest() <= entry.timestamp {
            source.entries.push_back(entry);
        } else {
            let at = source
                .entries
                .partition_point(|e| e.timestamp <= entry.timestamp);
            source.entries.insert(at, entry);
        }
    }

    fn lock_all(&self) -> Vec<MutexGuard<'_, Shard>> {
        self.shards.iter().map(lock).collect()
    }

    /// Evicts the oldest envelopes across all sources until the store is 1/64 under its byte
    /// budget (the slack keeps a store at its limit from truncating on every ingest). Like Log
    /// Cache, a noisy source can push out a quiet one's old data; the eviction is counted.
    fn truncate(&self) {
        let Ok(_maintenance) = self.maintenance.try_lock() else {
            // Someone else is evicting right now; their pass covers this ingest too.
            return;
        };
        let mut shards = self.lock_all();
        let limit = self.config.max_bytes_total;
        if self.bytes.load(Ordering::Relaxed) <= limit {
            return;
        }
        let target = limit - limit / 64;
        let mut heap: BinaryHeap<Reverse<(i64, usize, Box<str>)>> = shards
            .iter()
            .enumerate()
            .flat_map(|(i, shard)| {
                shard
                    .sources
                    .iter()
                    .map(move |(id, s)| Reverse((s.oldest(), i, id.clone())))
            })
            .collect();
        while self.bytes.load(Ordering::Relaxed) > target {
            let Some(Reverse((_, shard_index, id))) = heap.pop() else {
                break;
            };
            let Some(shard) = shards.get_mut(shard_index) else {
                continue;
            };
            let Some(source) = shard.sources.get_mut(&id) else {
                continue;
            };
            if let Some(evicted) = source.entries.pop_front() {
                source.expired += 1;
                bump(&self.totals.expired_memory, 1);
                self.bytes.fetch_sub(evicted.cost(), Ordering::Relaxed);
                self.envelopes.fetch_sub(1, Ordering::Relaxed);
            }
            if source.entries.is_empty() {
                shard.sources.remove(&id);
                self.sources.fetch_sub(1, Ordering::Relaxed);
                self.bytes
                    .fetch_sub(id.len() + SOURCE_OVERHEAD, Ordering::Relaxed);
            } else {
                heap.push(Reverse((source.oldest(), shard_index, id)));
            }
        }
    }

    /// Makes room for new sources by dropping the stalest 1/64 of them (those whose newest
    /// envelope is oldest), so a burst of new sources pays for one scan per batch of evictions,
    /// not one per source.
    fn evict_stale_sources(&self) {
        let _maintenance = lock(&self.maintenance);
        let mut shards = self.lock_all();
        if self.sources.load(Ordering::Relaxed) < self.config.max_sources {
            return;
        }
        let mut all: Vec<(i64, usize, Box<str>)> = shards
            .iter()
            .enumerate()
            .flat_map(|(i, shard)| {
                shard
                    .sources
                    .iter()
                    .map(move |(id, s)| (s.newest(), i, id.clone()))
            })
            .collect();
        let evict = (self.config.max_sources / 64).clamp(1, all.len().max(1));
        if all.len() > evict {
            all.select_nth_unstable(evict - 1);
            all.truncate(evict);
        }
        for (_, shard_index, id) in all {
            let Some(shard) = shards.get_mut(shard_index) else {
                continue;
            };
            if let Some(source) = shard.sources.remove(&id) {
                let n = source.entries.len();
                bump(&self.totals.expired_max_sources, n as u64);
                self.envelopes.fetch_sub(n, Ordering::Relaxed);
                self.bytes.fetch_sub(
                    source.bytes() + id.len() + SOURCE_OVERHEAD,
                    Ordering::Relaxed,
                );
                self.sources.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Envelopes of one source in timestamp order (see [`ReadQuery`]), as shared handles to the
    /// stored copies.
    ///
    /// # Errors
    /// A negative limit, a limit over [`MAX_READ_LIMIT`], or `start_time` after an explicit
    /// `end_time`.
    pub fn read(&self, query: &ReadQuery) -> Result<Vec<Bytes>, Error> {
        let limit = match query.limit {
            0 => DEFAULT_READ_LIMIT,
            l if l < 0 => return Err(Error::NegativeLimit(l)),
            l if l > MAX_READ_LIMIT => return Err(Error::LimitTooLarge(l)),
            l => l,
        };
        let limit = usize::try_from(limit).unwrap_or(0);
        if query.end_time != 0 && query.start_time > query.end_time {
            return Err(Error::InvalidRange {
                start: query.start_time,
                end: query.end_time,
            });
        }
        let start = if query.start_time == 0 {
            i64::MIN
        } else {
            query.start_time
        };
        let end = if query.end_time == 0 {
            hydrant_envelope::now_nanos()
        } else {
            query.end_time
        };
        let shard = lock(&self.shards[self.shard_of(&query.source_id)]);
        let Some(source) = shard.sources.get(query.source_id.as_str()) else {
            return Ok(Vec::new());
        };
        let entries = &source.entries;
        let lo = entries.partition_point(|e| e.timestamp < start);
        let hi = entries.partition_point(|e| e.timestamp < end).max(lo);
        let wanted =
            |e: &&Entry| query.envelope_types.is_empty() || query.envelope_types.contains(&e.kind);
        let mut out = Vec::with_capacity(limit.min(hi - lo));
        let range = entries.range(lo..hi);
        if query.descending {
            out.extend(
                range
                    .rev()
                    .filter(wanted)
                    .take(limit)
                    .map(|e| e.bytes.clone()),
            );
        } else {
            out.extend(range.filter(wanted).take(limit).map(|e| e.bytes.clone()));
        }
        Ok(out)
    }

    /// Per-source counts and time spans, keyed by source id.
    #[must_use]
    pub fn meta(&self) -> BTreeMap<String, SourceMeta> {
        let mut out = BTreeMap::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for (id, source) in &shard.sources {
                out.insert(
                    id.to_string(),
                    SourceMeta {
                        count: source.entries.len() as u64,
                        expired: source.expired,
                        ingested: source.ingested,
                        oldest_timestamp: source.oldest(),
                        newest_timestamp: source.newest(),
                    },
                );
            }
        }
        out
    }

    /// Store-wide totals. Each figure is read atomically on its own; under concurrent ingest
    /// they may be a few envelopes apart.
    #[must_use]
    pub fn stats(&self) -> StoreStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StoreStats {
            ingested: get(&self.totals.ingested),
            envelopes: self.envelopes.load(Ordering::Relaxed) as u64,
            bytes: self.bytes.load(Ordering::Relaxed) as u64,
            sources: self.sources.load(Ordering::Relaxed) as u64,
            expired_max_per_source: get(&self.totals.expired_max_per_source),
            expired_memory: get(&self.totals.expired_memory),
            expired_max_sources: get(&self.totals.expired_max_sources),
            rejected_too_large: get(&self.totals.rejected_too_large),
            rejected_max_sources: get(&self.totals.rejected_max_sources),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_per_source: usize, max_bytes_total: usize, max_sources: usize) -> Store {
        Store::new(StoreConfig {
            max_per_source,
            max_bytes_total,
            max_sources,
        })
    }

    fn ids(out: &[Bytes]) -> Vec<String> {
        out.iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    fn read(s: &Store, q: ReadQuery) -> Vec<String> {
        ids(&s.read(&q).unwrap())
    }

    fn q(source: &str) -> ReadQuery {
        ReadQuery {
            source_id: source.to_owned(),
            end_time: i64::MAX,
            ..ReadQuery::default()
        }
    }

    #[test]
    fn reads_are_in_timestamp_order_even_when_ingest_is_not() {
        let s = store(100, 1 << 20, 10);
        for (ts, name) in [(30, "c"), (10, "a"), (20, "b"), (20, "b2"), (40, "d")] {
            s.ingest("app", ts, Kind::Log, name.as_bytes());
        }
        assert_eq!(read(&s, q("app")), ["a", "b", "b2", "c", "d"]);
        let mut desc = q("app");
        desc.descending = true;
        assert_eq!(read(&s, desc), ["d", "c", "b2", "b", "a"]);
    }

    #[test]
    fn range_is_start_inclusive_end_exclusive() {
        let s = store(100, 1 << 20, 10);
        for ts in 1..=5 {
            s.ingest("app", ts * 10, Kind::Log, format!("{ts}").as_bytes());
        }
        let mut r = q("app");
        r.start_time = 20;
        r.end_time = 40;
        assert_eq!(read(&s, r), ["2", "3"]);
    }

    #[test]
    fn limit_counts_from_the_requested_end() {
        let s = store(100, 1 << 20, 10);
        for ts in 1..=5 {
            s.ingest("app", ts, Kind::Log, format!("{ts}").as_bytes());
        }
        let mut asc = q("app");
        asc.limit = 2;
        assert_eq!(read(&s, asc.clone()), ["1", "2"]);
        asc.descending = true;
        assert_eq!(read(&s, asc), ["5", "4"]);
    }

    #[test]
    fn type_filter_and_default_end_is_now() {
        let s = store(100, 1 << 20, 10);
        let now = hydrant_envelope::now_nanos();
        s.ingest("app", now - 3, Kind::Log, b"log");
        s.ingest("app", now - 2, Kind::Gauge, b"gauge");
        s.ingest("app", now - 1, Kind::Counter, b"counter");
        s.ingest("app", now + 60_000_000_000, Kind::Log, b"future");
        let mut r = q("app");
        r.end_time = 0;
        assert_eq!(read(&s, r.clone()), ["log", "gauge", "counter"]);
        r.envelope_types = vec![Kind::Counter, Kind::Log];
        assert_eq!(read(&s, r), ["log", "counter"]);
    }

    #[test]
    fn bad_reads_are_clear_errors() {
        let s = store(100, 1 << 20, 10);
        let mut r = q("app");
        r.limit = 1001;
        let err = s.read(&r).unwrap_err();
        assert_eq!(err.to_string(), "limit (1001) must be 1000 or less");
        r.limit = -1;
        assert!(s.read(&r).unwrap_err().to_string().contains("negative"));
        r.limit = 0;
        r.start_time = 10;
        r.end_time = 5;
        assert_eq!(
            s.read(&r).unwrap_err(),
            Error::InvalidRange { start: 10, end: 5 }
        );
        r.end_time = 0;
        r.limit = 1000;
        assert!(s.read(&r).unwrap().is_empty());
    }

    #[test]
    fn full_ring_evicts_its_oldest_and_counts_it() {
        let s = store(3, 1 << 20, 10);
        for ts in 1..=5 {
            s.ingest("app", ts, Kind::Log, format!("{ts}").as_bytes());
        }
        // Older than everything held: expires at once instead of evicting something newer.
        s.ingest("app", 0, Kind::Log, b"0");
        assert_eq!(read(&s, q("app")), ["3", "4", "5"]);
        let meta = s.meta()["app"];
        assert_eq!(
            meta,
            SourceMeta {
                count: 3,
                expired: 3,
                ingested: 6,
                oldest_timestamp: 3,
                newest_timestamp: 5
            }
        );
        assert_eq!(s.stats().expired_max_per_source, 3);
    }

    #[test]
    fn memory_limit_evicts_oldest_across_sources() {
        let budget = 64 * 1024;
        let s = store(1_000_000, budget, 10);
        let payload = vec![b'x'; 1000];
        for ts in 0..200 {
            let source = if ts % 2 == 0 { "noisy" } else { "quiet" };
            s.ingest(source, ts, Kind::Log, &payload);
        }
        let stats = s.stats();
        assert!(stats.bytes <= budget as u64, "{stats:?}");
        assert!(stats.expired_memory > 0);
        assert_eq!(stats.ingested, stats.envelopes + stats.expired());
        // Eviction follows global timestamp order, so what survives is exactly the newest data,
        // whichever source it came from.
        let oldest_kept = s.meta().values().map(|m| m.oldest_timestamp).min().unwrap();
        assert_eq!(oldest_kept, 200 - stats.envelopes as i64);
    }

    #[test]
    fn new_sources_push_out_the_stalest() {
        let s = store(10, 1 << 20, 4);
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            s.ingest(name, i as i64, Kind::Log, b"x");
        }
        s.ingest("e", 100, Kind::Log, b"x");
        let meta = s.meta();
        assert!(!meta.contains_key("a"), "{meta:?}");
        assert!(meta.contains_key("e"));
        let stats = s.stats();
        assert_eq!(stats.sources, 4);
        assert_eq!(stats.expired_max_sources, 1);
        assert_eq!(stats.ingested, stats.envelopes + stats.expired());
    }

    #[test]
    fn an_envelope_bigger_than_the_budget_is_rejected_not_stored() {
        let s = store(10, 64 * 1024, 4);
        s.ingest("app", 1, Kind::Log, &vec![0u8; 70 * 1024]);
        assert_eq!(s.stats().rejected_too_large, 1);
        assert!(s.meta().is_empty());
        assert_eq!(s.stats().bytes, 0);
    }

    #[test]
    fn stored_bytes_are_a_copy() {
        let s = store(10, 1 << 20, 4);
        let batch = Bytes::from(vec![7u8; 4096]);
        s.ingest("app", 1, Kind::Log, &batch[..10]);
        let out = s.read(&q("app")).unwrap();
        assert_eq!(out[0].len(), 10);
        assert_ne!(out[0].as_ptr(), batch.as_ptr());
    }

    #[test]
    fn a_run_is_stored_as_its_envelopes_one_by_one_would_be() {
        let one_by_one = store(3, 1 << 20, 4);
        let by_run = store(3, 1 << 20, 4);
        let bodies: Vec<Vec<u8>> = (0u8..5).map(|i| vec![i; 100 + usize::from(i)]).collect();
        // Out of order at the end: the late one lands by timestamp, and the full ring evicts.
        let stamps = [10, 20, 30, 40, 25];
        let run: Vec<Incoming<'_>> = bodies
            .iter()
            .zip(stamps)
            .map(|(b, timestamp)| Incoming {
                timestamp,
                kind: Kind::Log,
                bytes: b,
            })
            .collect();
        for e in &run {
            one_by_one.ingest("app", e.timestamp, e.kind, e.bytes);
        }
        by_run.ingest_run("app", &run);
        assert_eq!(
            one_by_one.read(&q("app")).unwrap(),
            by_run.read(&q("app")).unwrap()
        );
        assert_eq!(one_by_one.stats(), by_run.stats());
        assert_eq!(one_by_one.meta(), by_run.meta());
        let stats = by_run.stats();
        assert_eq!(
            stats.ingested,
            stats.envelopes + stats.expired() + stats.rejected()
        );
    }

    #[test]
    fn a_run_shares_chunks_of_at_most_chunk_bytes_and_keeps_no_batch_alive() {
        let s = store(1000, 1 << 20, 4);
        let batch = Bytes::from(vec![9u8; 250 * 40]);
        let run: Vec<Incoming<'_>> = batch
            .chunks(250)
            .enumerate()
            .map(|(i, bytes)| Incoming {
                timestamp: i as i64 + 1,
                kind: Kind::Log,
                bytes,
            })
            .collect();
        s.ingest_run("app", &run);
        let out = s
            .read(&ReadQuery {
                limit: 1000,
                ..q("app")
            })
            .unwrap();
        assert_eq!(out.len(), 40);
        let base = batch.as_ptr() as usize;
        assert!(
            out.iter()
                .all(|b| (b.as_ptr() as usize).wrapping_sub(base) >= batch.len()),
            "a stored envelope points into the batch it came in"
        );
        // Neighbours in one chunk sit back to back; a new chunk starts every 16 envelopes.
        let contiguous = out
            .windows(2)
            .filter(|w| w[0].as_ptr() as usize + w[0].len() == w[1].as_ptr() as usize)
            .count();
        assert_eq!(contiguous, 40 - 40usize.div_ceil(CHUNK_BYTES / 250));
    }

    #[test]
    fn a_run_counts_the_envelope_too_large_for_the_budget_and_keeps_the_rest() {
        let s = store(10, 64 * 1024, 4);
        let big = vec![1u8; 64 * 1024];
        let run = [
            Incoming {
                timestamp: 1,
                kind: Kind::Log,
                bytes: b"small",
            },
            Incoming {
                timestamp: 2,
                kind: Kind::Log,
                bytes: &big,
            },
        ];
        s.ingest_run("app", &run);
        let stats = s.stats();
        assert_eq!((stats.envelopes, stats.rejected_too_large), (1, 1));
        assert_eq!(stats.ingested, 2);
    }

    #[test]
    fn config_validation_names_the_field() {
        let bad = StoreConfig {
            max_per_source: 0,
            ..StoreConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .starts_with("logcache.max_per_source")
        );
        let small = StoreConfig {
            max_bytes_total: 10,
            ..StoreConfig::default()
        };
        assert!(
            small
                .validate()
                .unwrap_err()
                .to_string()
                .contains("max_bytes_total")
        );
        assert!(StoreConfig::default().validate().is_ok());
    }
}
