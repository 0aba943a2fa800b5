//! The agent's hot path: validate each incoming envelope, give it a `source_id` if it came with
//! only an `origin`, apply the app log rate limit, stamp its per-source sequence number, and
//! append it to the batch of the doppler its `source_id` hashes to.
//!
//! Flow: ingress handler → [`Router::ingest_batch`] / [`Router::ingest_envelope`] → per-doppler
//! [`BatchBuilder`] → (full, idle or old) → [`Lane::enqueue`] → egress task.
//!
//! Invariants:
//! - No await and no per-envelope allocation: one lock per incoming message, a zero-copy walk of
//!   the envelope, two hash lookups and one copy into the batch. Envelopes are never decoded.
//! - Sequence numbers are per (source_id, instance_id), start at 1, and are assigned under the
//!   same lock that appends to the batch, so within one doppler stream they are in order. Each
//!   carries a random `hydrant_sequence_stream` naming the numbering, and consumers compare
//!   numbers only within one stream: so never two agents' numbers (a router host's agent stamps
//!   the app's ids on its Timers too), and never numbers that took two paths. An instance moved
//!   to another doppler while the old one may still deliver (it is up, retired but draining, or
//!   holds queued batches) goes on counting under a new stream, since the two paths can arrive
//!   out of order; one whose old doppler is down with nothing queued keeps its stream, so what
//!   that doppler lost in flight still shows downstream as a jump.
//! - Every envelope that enters is forwarded or counted under exactly one drop reason.
//! - The tracking map is bounded by `max_tracked_instances` and idle entries are forgotten.
//! - The doppler set may change while envelopes flow (dopplers announced on the bus): lanes
//!   live in slots (at most `max_dopplers`), a change bumps a generation and each source's
//!   ranking is recomputed on its next envelope, so only the sources whose best doppler changed
//!   move. With no doppler at all an envelope is counted (`reason="no_doppler"`), never held.
//! - With `fair_share` on, each envelope is charged to its source in its lane's `FairShare`
//!   before it is stamped (so a refusal leaves no hole in the sequence) and refused when the
//!   lane is under pressure and its source holds more than its share; the source is told with
//!   a log line in its own stream (`LGR`), at most once per `fair_notice_interval_ms`. Notices
//!   (fairness and rate limit) are never refused but are charged too, so a notice the full lane
//!   evicts is counted under its source: per source, `sent + notices = delivered +
//!   agent.dropped_by_source` holds exactly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hydrant_buffer::{FairDrop, KeyHasher, Share, SourceKey};
use hydrant_envelope::v2;
use hydrant_envelope::wire::{self, BatchBuilder, BatchIter, EnvelopeView, Fields, Kind, Value};
use hydrant_runtime::lock;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::egress::{Lane, LaneBatch};
use crate::hash;
use crate::limiter::{self, Bucket, Verdict};
use crate::lost::Reason;
use crate::metrics::Metrics;

/// The most bytes `push_stamped` adds: a 2-byte key and a 10-byte varint for each of the
/// sequence (field 100) and its stream (field 101). Envelopes are accepted only if they still
/// fit [`hydrant_envelope::MAX_ENVELOPE_BYTES`] after stamping, so the doppler never refuses
/// what the agent forwarded.
const SEQUENCE_OVERHEAD: usize = 24;

/// Routing and batching settings, taken from the config.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) batch_max_envelopes: usize,
    pub(crate) batch_max_bytes: usize,
    pub(crate) flush_idle: Duration,
    pub(crate) flush_max: Duration,
    pub(crate) rate_limit: u64,
    pub(crate) max_instances: usize,
    pub(crate) instance_idle: Duration,
    /// How often the fairness ledgers hand over their drop counts and notices.
    pub(crate) fair_sweep: Duration,
}

/// What happened to one incoming message, for the gRPC status the sender gets.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Envelopes refused as bad input (malformed, too large, no source).
    pub(crate) rejected: u64,
    /// Why the first of them was refused.
    pub(crate) first_error: Option<String>,
}

impl Outcome {
    fn reject(&mut self, why: impl FnOnce() -> String) {
        self.rejected += 1;
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }

    pub(crate) fn absorb(&mut self, other: Outcome) {
        self.rejected += other.rejected;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

#[derive(Debug)]
struct Instance {
    next_sequence: u64,
    /// The numbering `next_sequence` belongs to (`hydrant_sequence_stream`).
    stream: u64,
    /// The doppler (lane slot) its last envelope went to.
    slot: usize,
    last_seen: Instant,
    bucket: Option<Bucket>,
}

impl Instance {
    /// Follows a move to doppler `slot`: the numbering goes on in the same stream only if
    /// nothing more can arrive by the old path, else in a new one (a consumer would otherwise
    /// take the new path's numbers arriving first for loss).
    fn route(&mut self, slot: usize, path_done: impl FnOnce(usize) -> bool) {
        if slot == self.slot {
            return;
        }
        if !path_done(self.slot) {
            self.stream = fastrand::u64(1..);
        }
        self.slot = slot;
    }
}

/// Whether nothing more can reach a consumer through doppler `slot`: its lane is there (not
/// retired, which drains), down, and holds nothing, queued or being batched.
fn path_done(lanes: &[Option<Arc<Lane>>], up: &[bool], pending: &[Pending], slot: usize) -> bool {
    lanes
        .get(slot)
        .is_some_and(|l| l.as_ref().is_some_and(|l| l.is_empty()))
        && !up.get(slot).copied().unwrap_or(true)
        && pending.get(slot).is_some_and(|p| p.builder.is_empty())
}

#[derive(Debug)]
struct Source {
    /// Dopplers (lane slots) in this source's order of preference, computed once per doppler
    /// set.
    ranking: Box<[u16]>,
    /// The doppler set `ranking` was computed for.
    generation: u64,
    /// Its key in the lanes' fairness ledgers, computed once.
    key: SourceKey,
    instances: HashMap<Box<str>, Instance>,
}

/// The batch being built for one doppler.
#[derive(Debug)]
struct Pending {
    builder: BatchBuilder,
    /// The sources charged for what `builder` holds, one per run of the same source.
    shares: Vec<Share>,
    first: Option<Instant>,
    last: Instant,
}

#[derive(Debug)]
struct State {
    sources: HashMap<Box<str>, Source>,
    instances: usize,
    /// One slot per possible doppler; `None` is free.
    lanes: Vec<Option<Arc<Lane>>>,
    /// The hash seeds of the occupied slots, and those slots, in slot order.
    seeds: Vec<u64>,
    active: Vec<u16>,
    /// Bumped on every change of the doppler set.
    generation: u64,
    up: Vec<bool>,
    pending: Vec<Pending>,
    /// Reused to rewrite an envelope whose `source_id` comes from its origin tag.
    scratch: Vec<u8>,
    last_sweep: Instant,
    hasher: KeyHasher,
    /// This agent process's first numbering, given to every instance it starts tracking.
    stream: u64,
}

/// The shared routing state and the lanes it feeds.
#[derive(Debug)]
pub(crate) struct Router {
    state: Mutex<State>,
    flush_wake: Notify,
    metrics: Metrics,
    settings: Settings,
}

/// What a source that lost `dropped` envelopes is told, in its own stream.
fn fair_notice(dropped: u64, why: FairDrop, interval: Duration) -> String {
    let cause = match why {
        FairDrop::Refused => "this app exceeded its fair share of the agent's queue to the doppler",
        FairDrop::Evicted => "the agent's queue to the doppler was full",
    };
    format!(
        "hydrant: {} envelopes dropped in the last {} s: {cause}",
        thousands(dropped),
        interval.as_secs().max(1)
    )
}

/// `12345` as `12,345`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `tags["origin"]`, else `deprecated_tags["origin"].text`, as Loggregator's agent falls back.
fn origin<'a>(view: &EnvelopeView<'a>) -> Option<&'a str> {
    if let Some(origin) = view.tag("origin").filter(|o| !o.is_empty()) {
        return Some(origin);
    }
    let mut found = None;
    for (number, value) in Fields::new(view.bytes()).flatten() {
        let (3, Value::Len(entry)) = (number, value) else {
            continue;
        };
        let (mut key, mut text): (&[u8], Option<&[u8]>) = (&[], None);
        for (k, v) in Fields::new(entry).flatten() {
            match (k, v) {
                (1, Value::Len(b)) => key = b,
                (2, Value::Len(tag_value)) => {
                    for (f, fv) in Fields::new(tag_value).flatten() {
                        if let (1, Value::Len(t)) = (f, fv) {
                            text = Some(t);
                        }
                    }
                }
                _ => {}
            }
        }
        if key == b"origin" {
            // A later entry for the same key wins, as in a decoded map.
            found = text.and_then(|t| std::str::from_utf8(t).ok());
        }
    }
    found.filter(|o| !o.is_empty())
}

/// The dopplers (slots) in the order `source_id` prefers them.
fn rank(seeds: &[u64], active: &[u16], source_id: &str) -> Box<[u16]> {
    hash::ranking(seeds, source_id)
        .iter()
        .filter_map(|&i| active.get(usize::from(i)).copied())
        .collect()
}

impl State {
    /// Recomputes the occupied slots' seeds after a change of the doppler set.
    fn reindex(&mut self) {
        self.seeds.clear();
        self.active.clear();
        for (slot, lane) in self.lanes.iter().enumerate() {
            if let Some(lane) = lane {
                self.seeds.push(hash::seed(&lane.url));
                self.active.push(u16::try_from(slot).unwrap_or(u16::MAX));
            }
        }
        self.generation += 1;
    }
}

impl Router {
    /// A router over `lanes` (the static dopplers, in slots `0..`) with room for `slots`
    /// dopplers in all.
    pub(crate) fn new(
        settings: Settings,
        lanes: Vec<Arc<Lane>>,
        slots: usize,
        metrics: Metrics,
    ) -> Self {
        let slots = slots.max(lanes.len());
        let now = Instant::now();
        let capacity = settings.batch_max_bytes.min(1 << 20);
        // This agent's numbering: sequences are contiguous per (source, instance, stream), so a
        // consumer never compares our numbers with another host's agent stamping the same app
        // instance (the router's envelopes carry the app's ids) or with ours before a restart.
        let stream = fastrand::u64(1..);
        let mut lanes: Vec<Option<Arc<Lane>>> = lanes.into_iter().map(Some).collect();
        lanes.resize(slots, None);
        let mut state = State {
            sources: HashMap::new(),
            instances: 0,
            seeds: Vec::new(),
            active: Vec::new(),
            generation: 0,
            up: vec![false; slots],
            pending: lanes
                .iter()
                .map(|_| Pending {
                    builder: BatchBuilder::with_capacity(capacity),
                    shares: Vec::new(),
                    first: None,
                    last: now,
                })
                .collect(),
            lanes,
            scratch: Vec::new(),
            last_sweep: now,
            hasher: KeyHasher::default(),
            stream,
        };
        state.reindex();
        Self {
            state: Mutex::new(state),
            flush_wake: Notify::new(),
            metrics,
            settings,
        }
    }

    /// The lane in slot `index`, if one is there.
    #[cfg(test)]
    pub(crate) fn lane(&self, index: usize) -> Option<Arc<Lane>> {
        lock(&self.state).lanes.get(index).cloned().flatten()
    }

    /// Puts `lane` in a free slot; `None` when every slot is taken. Its sources move to it
    /// once it is up.
    pub(crate) fn add_lane(&self, lane: Arc<Lane>) -> Option<usize> {
        let mut state = lock(&self.state);
        let slot = state.lanes.iter().position(Option::is_none)?;
        state.lanes[slot] = Some(lane);
        state.reindex();
        Some(slot)
    }

    /// Takes `lane` out of slot `index` (its announcements lapsed): no envelope is routed to
    /// it any more, and its partial batch joins its queue for its task to deliver or count.
    pub(crate) fn retire(&self, index: usize, lane: &Arc<Lane>) {
        let mut state = lock(&self.state);
        let here = state
            .lanes
            .get(index)
            .and_then(Option::as_ref)
            .is_some_and(|l| Arc::ptr_eq(l, lane));
        if !here {
            return;
        }
        lane.retire();
        let State { pending, lanes, .. } = &mut *state;
        if let Some(pending) = pending.get_mut(index) {
            self.queue_pending(lanes, pending, index);
        }
        state.lanes[index] = None;
        state.up[index] = false;
        state.reindex();
        let connected = state.up.iter().filter(|u| **u).count();
        self.metrics.doppler_connections.set(connected as f64);
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// One encoded `EnvelopeBatch` (a `BatchSender` message or a `Send` request). A message
    /// whose framing is broken is refused whole, as a protobuf decoder would, and counts as one
    /// malformed envelope: how many envelopes it meant to carry cannot be known.
    pub(crate) fn ingest_batch(&self, batch: &[u8]) -> Outcome {
        let mut outcome = Outcome::default();
        let mut count = 0u64;
        for item in BatchIter::new(batch) {
            if let Err(error) = item {
                self.metrics.ingress.inc();
                self.metrics.malformed.inc();
                outcome.reject(|| format!("message is not an EnvelopeBatch: {error}"));
                return outcome;
            }
            count += 1;
        }
        self.metrics.ingress.add(count);
        if count == 0 {
            return outcome;
        }
        let now = Instant::now();
        let mut state = lock(&self.state);
        self.maybe_sweep(&mut state, now);
        for envelope in BatchIter::new(batch).flatten() {
            self.ingest_one(&mut state, envelope, now, &mut outcome);
        }
        outcome
    }

    /// One encoded `Envelope` (a legacy `Sender` message).
    pub(crate) fn ingest_envelope(&self, envelope: &[u8]) -> Outcome {
        let mut outcome = Outcome::default();
        self.metrics.ingress.inc();
        let now = Instant::now();
        let mut state = lock(&self.state);
        self.maybe_sweep(&mut state, now);
        self.ingest_one(&mut state, envelope, now, &mut outcome);
        outcome
    }

    fn ingest_one(&self, state: &mut State, bytes: &[u8], now: Instant, outcome: &mut Outcome) {
        let view = match EnvelopeView::parse(bytes) {
            Ok(view) => view,
            Err(error @ hydrant_envelope::Error::TooLarge { .. }) => {
                self.metrics.too_large.inc();
                outcome.reject(|| error.to_string());
                return;
            }
            Err(error) => {
                self.metrics.malformed.inc();
                outcome.reject(|| error.to_string());
                return;
            }
        };
        let (source_id, patched) = if view.source_id.is_empty() {
            let Some(origin) = origin(&view) else {
                self.metrics.no_source_id.inc();
                outcome.reject(|| "envelope has no source_id and no origin tag".to_owned());
                return;
            };
            self.metrics.origin_mappings.inc();
            (origin, true)
        } else {
            (view.source_id, false)
        };
        let patch_len = if patched { 2 + 10 + source_id.len() } else { 0 };
        if bytes.len() + SEQUENCE_OVERHEAD + patch_len > hydrant_envelope::MAX_ENVELOPE_BYTES {
            self.metrics.too_large.inc();
            outcome.reject(|| {
                format!(
                    "envelope of {} bytes leaves no room for the sequence number under the \
                     {}-byte limit",
                    bytes.len(),
                    hydrant_envelope::MAX_ENVELOPE_BYTES
                )
            });
            return;
        }
        let limit = self.settings.rate_limit;
        if limit > 0 && view.kind == Kind::Log {
            let source_type = view.tag("source_type").filter(|t| t.starts_with("APP"));
            if let Some(source_type) = source_type {
                let size = view.log().map_or(0, |(payload, _)| payload.len());
                let verdict =
                    self.with_instance(state, source_id, view.instance_id, now, |i, _, _, _| {
                        i.bucket
                            .get_or_insert_with(|| Bucket::new(limit, now))
                            .check(limit, size, now)
                    });
                match verdict {
                    Verdict::Pass => {}
                    Verdict::Drop => {
                        self.metrics.rate_limited_drops.inc();
                        return;
                    }
                    Verdict::DropAndNotify => {
                        self.metrics.rate_limited_drops.inc();
                        self.metrics.rate_limited.inc();
                        self.notify_overage(state, source_id, view.instance_id, source_type, now);
                        return;
                    }
                }
            }
        }
        let cost = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let admitted = self.with_instance(
            state,
            source_id,
            view.instance_id,
            now,
            |i, lane, l, key| {
                let share = match l.and_then(|l| Some((l.fair()?, l))) {
                    Some((fair, l)) => Some(fair.admit(key, source_id, cost, l.fill_permille())?),
                    None => None,
                };
                let sequence = i.next_sequence;
                i.next_sequence += 1;
                Some(((sequence, i.stream), lane, share))
            },
        );
        let Some((sequence, lane, share)) = admitted else {
            self.metrics.fair_share.inc();
            return;
        };
        if patched {
            // Protobuf decoders keep the last occurrence of a field, so appending `source_id`
            // overrides the empty one without re-encoding the envelope.
            let mut scratch = std::mem::take(&mut state.scratch);
            scratch.clear();
            scratch.extend_from_slice(bytes);
            scratch.push(0x12);
            wire::put_varint(&mut scratch, source_id.len() as u64);
            scratch.extend_from_slice(source_id.as_bytes());
            self.push(state, lane, &scratch, sequence, now, share);
            state.scratch = scratch;
        } else {
            self.push(state, lane, bytes, sequence, now, share);
        }
    }

    /// Sends the app the one Log line that says it is over its limit, in its own stream.
    fn notify_overage(
        &self,
        state: &mut State,
        source_id: &str,
        instance_id: &str,
        source_type: &str,
        now: Instant,
    ) {
        let notice = v2::Envelope {
            timestamp: hydrant_envelope::now_nanos(),
            source_id: source_id.to_owned(),
            instance_id: instance_id.to_owned(),
            tags: HashMap::from([("source_type".to_owned(), source_type.to_owned())]),
            message: Some(v2::envelope::Message::Log(v2::Log {
                payload: limiter::notice(self.settings.rate_limit)
                    .into_bytes()
                    .into(),
                r#type: v2::log::Type::Err as i32,
            })),
            ..v2::Envelope::default()
        };
        let bytes = wire::encode(&notice);
        self.push_notice(state, source_id, instance_id, &bytes, now);
    }

    /// Appends a notice the agent itself makes to `source_id`'s stream, never refused: it is
    /// small and is the one thing the source must get.
    fn push_notice(
        &self,
        state: &mut State,
        source_id: &str,
        instance_id: &str,
        bytes: &[u8],
        now: Instant,
    ) {
        let cost = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let (sequence, lane, share) =
            self.with_instance(state, source_id, instance_id, now, |i, lane, l, key| {
                let sequence = (i.next_sequence, i.stream);
                i.next_sequence += 1;
                // Charged all the same (issue 16): the lane may still evict the batch holding
                // it, and only a charged envelope is then counted under its source; uncharged,
                // it showed in `agent.dropped{egress_queue_full}` but not in
                // `agent.dropped_by_source`, and the source's ledger stayed one short.
                let share = l
                    .and_then(|l| l.fair())
                    .map(|f| f.charge(key, source_id, cost));
                (sequence, lane, share)
            });
        self.push(state, lane, bytes, sequence, now, share);
    }

    /// Hands every lane's per-source drop counts to `agent.dropped_by_source` and tells each
    /// source that lost envelopes, at most once per notice interval, in its own stream.
    pub(crate) fn sweep_fair(&self, now: Instant) {
        let mut notices: Vec<(String, u64, FairDrop)> = Vec::new();
        let by_source = &self.metrics.dropped_by_source;
        let lanes: Vec<Arc<Lane>> = lock(&self.state).lanes.iter().flatten().cloned().collect();
        for lane in &lanes {
            let Some(fair) = lane.fair() else { continue };
            fair.sweep(
                now,
                |d| by_source.add(d.source, d.dropped),
                |d| {
                    if let Some(source) = d.source {
                        notices.push((source.to_owned(), d.dropped, d.why));
                    }
                },
            );
        }
        if notices.is_empty() {
            return;
        }
        let interval = lanes
            .iter()
            .find_map(|l| l.fair())
            .map_or(Duration::ZERO, |f| f.config().notice_interval);
        let mut state = lock(&self.state);
        for (source, dropped, why) in notices {
            let notice = v2::Envelope {
                timestamp: hydrant_envelope::now_nanos(),
                source_id: source.clone(),
                tags: HashMap::from([("source_type".to_owned(), "LGR".to_owned())]),
                message: Some(v2::envelope::Message::Log(v2::Log {
                    payload: fair_notice(dropped, why, interval).into_bytes().into(),
                    r#type: v2::log::Type::Err as i32,
                })),
                ..v2::Envelope::default()
            };
            self.push_notice(&mut state, &source, "", &wire::encode(&notice), now);
            self.metrics.fair_notices.inc();
        }
    }

    /// Runs `f` on the instance's entry (created if new), the doppler it routes to now (slot
    /// and lane) and the source's fairness key.
    fn with_instance<R>(
        &self,
        state: &mut State,
        source_id: &str,
        instance_id: &str,
        now: Instant,
        f: impl FnOnce(&mut Instance, usize, Option<&Arc<Lane>>, SourceKey) -> R,
    ) -> R {
        if let Some(source) = state.sources.get_mut(source_id)
            && let Some(instance) = source.instances.get_mut(instance_id)
        {
            instance.last_seen = now;
            if source.generation != state.generation {
                source.ranking = rank(&state.seeds, &state.active, source_id);
                source.generation = state.generation;
            }
            let slot = hash::pick(&source.ranking, &state.up);
            instance.route(slot, |old| {
                path_done(&state.lanes, &state.up, &state.pending, old)
            });
            let lane = state.lanes.get(slot).and_then(Option::as_ref);
            return f(instance, slot, lane, source.key);
        }
        if state.instances >= self.settings.max_instances {
            self.evict_oldest(state);
        }
        let (seeds, active, generation) = (&state.seeds, &state.active, state.generation);
        let hasher = &state.hasher;
        let source = state
            .sources
            .entry(Box::from(source_id))
            .or_insert_with(|| Source {
                ranking: rank(seeds, active, source_id),
                generation,
                key: hasher.key(source_id.as_bytes()),
                instances: HashMap::new(),
            });
        if source.generation != generation {
            source.ranking = rank(seeds, active, source_id);
            source.generation = generation;
        }
        let slot = hash::pick(&source.ranking, &state.up);
        let stream = state.stream;
        let instance = source
            .instances
            .entry(Box::from(instance_id))
            .or_insert_with(|| Instance {
                next_sequence: 1,
                stream,
                slot,
                last_seen: now,
                bucket: None,
            });
        state.instances += 1;
        self.metrics.tracked_instances.set(state.instances as f64);
        let lane = state.lanes.get(slot).and_then(Option::as_ref);
        f(instance, slot, lane, source.key)
    }

    /// Forgets the least recently seen eighth of the instances (at least one).
    fn evict_oldest(&self, state: &mut State) {
        let mut seen: Vec<Instant> = state
            .sources
            .values()
            .flat_map(|s| s.instances.values().map(|i| i.last_seen))
            .collect();
        if seen.is_empty() {
            return;
        }
        let mut budget = (seen.len() / 8).max(1);
        let (_, cutoff, _) = seen.select_nth_unstable(budget - 1);
        let cutoff = *cutoff;
        // Strictly older first, then ties, so exactly `budget` go even when many share an
        // instant (one batch stamps all its envelopes with the same time).
        for strictly in [true, false] {
            for source in state.sources.values_mut() {
                source.instances.retain(|_, i| {
                    let old = if strictly {
                        i.last_seen < cutoff
                    } else {
                        i.last_seen <= cutoff
                    };
                    if old && budget > 0 {
                        budget -= 1;
                        false
                    } else {
                        true
                    }
                });
            }
        }
        self.forget_empty(state);
    }

    /// Every so often, forgets instances idle for longer than `instance_idle`.
    fn maybe_sweep(&self, state: &mut State, now: Instant) {
        let every = (self.settings.instance_idle / 4).max(Duration::from_secs(1));
        if now < state.last_sweep + every {
            return;
        }
        state.last_sweep = now;
        let idle = self.settings.instance_idle;
        for source in state.sources.values_mut() {
            source
                .instances
                .retain(|_, i| now.saturating_duration_since(i.last_seen) < idle);
        }
        self.forget_empty(state);
    }

    fn forget_empty(&self, state: &mut State) {
        state.sources.retain(|_, s| !s.instances.is_empty());
        let remaining: usize = state.sources.values().map(|s| s.instances.len()).sum();
        let evicted = state.instances.saturating_sub(remaining);
        self.metrics.instance_evictions.add(evicted as u64);
        state.instances = remaining;
        self.metrics.tracked_instances.set(remaining as f64);
        if state.sources.capacity() > 4 * state.sources.len().max(1024) {
            state.sources.shrink_to_fit();
        }
    }

    /// Appends one stamped envelope to doppler `lane`'s batch, with the share it was charged,
    /// queueing the batch when full.
    fn push(
        &self,
        state: &mut State,
        lane: usize,
        envelope: &[u8],
        (sequence, stream): (u64, u64),
        now: Instant,
        share: Option<Share>,
    ) {
        let State { pending, lanes, .. } = state;
        let (Some(pending), Some(Some(_))) = (pending.get_mut(lane), lanes.get(lane)) else {
            // No doppler is known yet (or any more): nothing to hold it for.
            self.metrics.no_doppler.inc();
            return;
        };
        pending.builder.push_stamped(envelope, sequence, stream);
        if let Some(share) = share
            && !pending
                .shares
                .last_mut()
                .is_some_and(|last| last.merge(share))
        {
            pending.shares.push(share);
        }
        pending.last = now;
        if pending.first.is_none() {
            pending.first = Some(now);
            self.flush_wake.notify_one();
        }
        if pending.builder.count() >= self.settings.batch_max_envelopes
            || pending.builder.len_bytes() >= self.settings.batch_max_bytes
        {
            self.queue_pending(lanes, pending, lane);
        }
    }

    fn queue_pending(&self, lanes: &[Option<Arc<Lane>>], pending: &mut Pending, lane: usize) {
        if pending.builder.is_empty() {
            return;
        }
        let count = pending.builder.count();
        let bytes = pending.builder.take();
        pending.first = None;
        let Some(Some(target)) = lanes.get(lane) else {
            self.metrics.no_doppler.add(count as u64);
            pending.shares.clear();
            return;
        };
        target.enqueue(LaneBatch {
            bytes,
            count,
            shares: std::mem::take(&mut pending.shares),
        });
    }

    /// Queues every batch due by time; returns when the next one will be due.
    fn flush_due(&self, now: Instant) -> Option<Instant> {
        let mut state = lock(&self.state);
        let State { pending, lanes, .. } = &mut *state;
        let mut next: Option<Instant> = None;
        for (lane, pending) in pending.iter_mut().enumerate() {
            let Some(first) = pending.first else {
                continue;
            };
            let due =
                (first + self.settings.flush_max).min(pending.last + self.settings.flush_idle);
            if due <= now {
                self.queue_pending(lanes, pending, lane);
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        next
    }

    /// Queues every partial batch now (at shutdown, once ingress has stopped).
    pub(crate) fn flush_all(&self) {
        let mut state = lock(&self.state);
        let State { pending, lanes, .. } = &mut *state;
        for (lane, pending) in pending.iter_mut().enumerate() {
            self.queue_pending(lanes, pending, lane);
        }
    }

    /// Sends partial batches after `flush_idle` without new envelopes, or `flush_max` after
    /// their first, until `shutdown`.
    /// Also sweeps the fairness ledgers every `fair_sweep`.
    pub(crate) async fn run_flusher(self: Arc<Self>, shutdown: CancellationToken) {
        let mut next_sweep = Instant::now() + self.settings.fair_sweep;
        loop {
            let now = Instant::now();
            if now >= next_sweep {
                self.sweep_fair(now);
                next_sweep = now + self.settings.fair_sweep;
            }
            let next = self.flush_due(now);
            let at = next.map_or(next_sweep, |n| n.min(next_sweep));
            tokio::select! {
                () = self.flush_wake.notified() => {}
                () = tokio::time::sleep_until(at) => {}
                () = shutdown.cancelled() => {
                    self.sweep_fair(Instant::now());
                    return;
                }
            }
        }
    }

    /// Marks doppler `lane` up or down. Going down drops (and counts) what was waiting for it:
    /// its sources now route to their next doppler, and delivering stale batches later would
    /// only reorder them.
    #[cfg(test)]
    pub(crate) fn set_up(&self, lane: usize, up: bool) {
        if let Some(l) = self.lane(lane) {
            self.set_lane_up(lane, &l, up);
        }
    }

    /// As `set_up`, if `which` is still the lane in slot `lane` (a retired lane's task may
    /// outlive its slot, which a new doppler may already hold).
    pub(crate) fn set_lane_up(&self, lane: usize, which: &Arc<Lane>, up: bool) {
        let mut state = lock(&self.state);
        let Some(Some(current)) = state.lanes.get(lane) else {
            return;
        };
        if !Arc::ptr_eq(current, which) {
            return;
        }
        let current = current.clone();
        let Some(was_up) = state.up.get(lane).copied() else {
            return;
        };
        if let Some(slot) = state.up.get_mut(lane) {
            *slot = up;
        }
        if was_up && !up {
            let losses = &self.metrics.losses;
            let by_source = &self.metrics.dropped_by_source;
            if let Some(pending) = state.pending.get_mut(lane) {
                let count = pending.builder.count();
                let bytes = pending.builder.take();
                pending.first = None;
                if let Some(fair) = current.fair() {
                    fair.release(&pending.shares);
                }
                pending.shares.clear();
                losses.lost(Reason::DopplerUnavailable, &bytes, count, by_source);
            }
            current
                .clear(|b| losses.lost(Reason::DopplerUnavailable, &b.bytes, b.count, by_source));
        }
        let connected = state.up.iter().filter(|u| **u).count();
        self.metrics.doppler_connections.set(connected as f64);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use hydrant_emitter::Registry;
    use prost::Message;

    use super::*;

    fn router(lanes: &[&str], rate_limit: u64, max_instances: usize) -> (Router, Registry) {
        router_with(lanes, rate_limit, max_instances, 1024, None)
    }

    fn router_with(
        lanes: &[&str],
        rate_limit: u64,
        max_instances: usize,
        max_batches: usize,
        fair: Option<hydrant_buffer::FairConfig>,
    ) -> (Router, Registry) {
        let registry = Registry::new("agent", "t");
        let metrics = Metrics::new(&registry, 20);
        let lanes = lanes
            .iter()
            .map(|url| {
                Arc::new(Lane::new(
                    url,
                    &registry,
                    max_batches,
                    1 << 30,
                    metrics.egress_queue_full.clone(),
                    fair,
                ))
            })
            .collect();
        let settings = Settings {
            batch_max_envelopes: 1,
            batch_max_bytes: 1 << 20,
            flush_idle: Duration::from_millis(5),
            flush_max: Duration::from_millis(20),
            rate_limit,
            max_instances,
            instance_idle: Duration::from_secs(600),
            fair_sweep: Duration::from_secs(1),
        };
        (Router::new(settings, lanes, 0, metrics), registry)
    }

    fn log(source: &str, instance: &str, tags: &[(&str, &str)], payload: &str) -> Vec<u8> {
        v2::Envelope {
            source_id: source.to_owned(),
            instance_id: instance.to_owned(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            message: Some(v2::envelope::Message::Log(v2::Log {
                payload: Bytes::copy_from_slice(payload.as_bytes()),
                r#type: 0,
            })),
            ..v2::Envelope::default()
        }
        .encode_to_vec()
    }

    /// Every envelope queued on lane `i`, decoded with its sequence.
    fn drain(router: &Router, lane: usize) -> Vec<(v2::Envelope, u64)> {
        let mut out = Vec::new();
        let lane = router.lane(lane).unwrap();
        while let Some((batch, _)) = lane.pop() {
            for e in BatchIter::new(&batch) {
                let e = e.unwrap();
                let seq = EnvelopeView::parse(e).unwrap().sequence;
                out.push((v2::Envelope::decode(e).unwrap(), seq));
            }
        }
        out
    }

    #[test]
    fn sequences_start_at_one_per_instance() {
        let (r, _) = router(&["http://d0"], 0, 100);
        let batch = wire::batch_of([
            log("a", "0", &[], "x").as_slice(),
            log("a", "1", &[], "x").as_slice(),
            log("a", "0", &[], "x").as_slice(),
            log("b", "0", &[], "x").as_slice(),
        ]);
        assert_eq!(r.ingest_batch(&batch).rejected, 0);
        let seqs: Vec<(String, String, u64)> = drain(&r, 0)
            .into_iter()
            .map(|(e, s)| (e.source_id, e.instance_id, s))
            .collect();
        let want = [("a", "0", 1), ("a", "1", 1), ("a", "0", 2), ("b", "0", 1)];
        let want: Vec<(String, String, u64)> = want
            .iter()
            .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), *c))
            .collect();
        assert_eq!(seqs, want);
    }

    /// Every envelope queued on any lane: (lane, sequence, stream).
    fn stamps(router: &Router, lanes: usize) -> Vec<(usize, u64, u64)> {
        let mut out = Vec::new();
        for i in 0..lanes {
            let lane = router.lane(i).unwrap();
            while let Some((batch, _)) = lane.pop() {
                for e in BatchIter::new(&batch) {
                    let view = EnvelopeView::parse(e.unwrap()).unwrap();
                    out.push((i, view.sequence, view.sequence_stream));
                }
            }
        }
        out
    }

    #[test]
    fn a_move_keeps_the_numbering_only_when_the_old_path_can_deliver_nothing_more() {
        let (r, _) = router(&["http://d0", "http://d1"], 0, 100);
        // Nothing up: the first choice queues it until it returns.
        r.ingest_envelope(&log("a", "0", &[], "x"));
        let held = stamps(&r, 2);
        let [(home, 1, first)] = held[..] else {
            panic!("one envelope, numbered 1: {held:?}")
        };
        assert_ne!(first, 0, "the agent names its numbering");
        let other = 1 - home;
        // The other doppler comes up first while home still holds a batch (stamps() took it
        // out here, so put one back the way the router would).
        r.ingest_envelope(&log("a", "0", &[], "x"));
        r.set_up(other, true);
        r.ingest_envelope(&log("a", "0", &[], "x"));
        let got = stamps(&r, 2);
        let [(h, 2, s2), (o, 3, s3)] = got[..] else {
            panic!("numbers go on across the move: {got:?}")
        };
        assert_eq!((h, o), (home, other));
        assert_eq!(s2, first);
        assert_ne!(
            s3, first,
            "home still held a batch: a new numbering on the new path"
        );

        // Home comes up: back to it while `other` is up and may still deliver.
        r.set_up(home, true);
        r.ingest_envelope(&log("a", "0", &[], "x"));
        let got = stamps(&r, 2);
        let [(h, 4, s4)] = got[..] else {
            panic!("{got:?}")
        };
        assert_eq!(h, home);
        assert!(s4 != s3 && s4 != first, "a new numbering again: {got:?}");

        // Home dies with nothing left in it: its numbering goes on through `other`, so what it
        // lost in flight shows downstream as a jump.
        r.set_up(home, false);
        r.ingest_envelope(&log("a", "0", &[], "x"));
        assert_eq!(stamps(&r, 2), [(other, 5, s4)]);
        // Another instance of the same source starts in the agent's first numbering.
        r.ingest_envelope(&log("a", "1", &[], "x"));
        assert_eq!(stamps(&r, 2), [(other, 1, first)]);
    }

    #[test]
    fn origin_fills_an_empty_source_id() {
        let (r, registry) = router(&["http://d0"], 0, 100);
        let from_tag = log("", "0", &[("origin", "gorouter")], "x");
        let mut deprecated = v2::Envelope::decode(log("", "0", &[], "y").as_slice()).unwrap();
        deprecated.deprecated_tags.insert(
            "origin".to_owned(),
            v2::Value {
                data: Some(v2::value::Data::Text("legacy".to_owned())),
            },
        );
        let deprecated = deprecated.encode_to_vec();
        let nothing = log("", "0", &[], "z");
        let batch = wire::batch_of([
            from_tag.as_slice(),
            deprecated.as_slice(),
            nothing.as_slice(),
        ]);
        let outcome = r.ingest_batch(&batch);
        assert_eq!(outcome.rejected, 1);
        assert!(outcome.first_error.unwrap().contains("no source_id"));
        let got: Vec<String> = drain(&r, 0).into_iter().map(|(e, _)| e.source_id).collect();
        assert_eq!(got, ["gorouter", "legacy"]);
        assert_eq!(registry.counter_sum("agent.origin_mappings", &[]), 2);
        assert_eq!(
            registry.counter_sum("agent.dropped", &[("reason", "no_source_id")]),
            1
        );
    }

    #[test]
    fn a_source_sticks_to_one_doppler_and_moves_only_when_it_is_down() {
        let (r, _) = router(&["http://d0", "http://d1", "http://d2"], 0, 10_000);
        r.set_up(0, true);
        r.set_up(1, true);
        r.set_up(2, true);
        let mut home = HashMap::new();
        for round in 0..3 {
            for i in 0..50 {
                let src = format!("app-{i}");
                r.ingest_envelope(&log(&src, "0", &[], "x"));
                for lane in 0..3 {
                    for (e, _) in drain(&r, lane) {
                        let prev = home.insert(e.source_id.clone(), lane);
                        if round > 0 {
                            assert_eq!(prev, Some(lane), "{} moved", e.source_id);
                        }
                    }
                }
            }
        }
        r.set_up(1, false);
        for i in 0..50 {
            let src = format!("app-{i}");
            r.ingest_envelope(&log(&src, "0", &[], "x"));
            for lane in 0..3 {
                for (e, _) in drain(&r, lane) {
                    assert_ne!(lane, 1);
                    if home[&e.source_id] != 1 {
                        assert_eq!(home[&e.source_id], lane, "only d1's sources move");
                    }
                }
            }
        }
    }

    #[test]
    fn the_rate_limit_sends_one_notice_and_keeps_other_instances_flowing() {
        let (r, registry) = router(&["http://d0"], 10, 100);
        let app = [("source_type", "APP/PROC/WEB")];
        let batch = wire::batch_of([
            log("a", "0", &app, "12345").as_slice(),
            log("a", "0", &app, "12345").as_slice(),
            log("a", "0", &app, "1").as_slice(),
            log("a", "0", &app, "1").as_slice(),
            log("a", "1", &app, "12345").as_slice(),
            log("a", "0", &[("source_type", "RTR")], "not an app line").as_slice(),
        ]);
        r.ingest_batch(&batch);
        let got: Vec<(String, String, u64)> = drain(&r, 0)
            .into_iter()
            .map(|(e, s)| {
                let Some(v2::envelope::Message::Log(l)) = e.message else {
                    panic!("not a log");
                };
                (
                    e.instance_id,
                    String::from_utf8(l.payload.to_vec()).unwrap(),
                    s,
                )
            })
            .collect();
        let notice = "app instance exceeded log rate limit (10 bytes/sec)".to_owned();
        assert_eq!(
            got,
            vec![
                ("0".to_owned(), "12345".to_owned(), 1),
                ("0".to_owned(), "12345".to_owned(), 2),
                ("0".to_owned(), notice, 3),
                ("1".to_owned(), "12345".to_owned(), 1),
                ("0".to_owned(), "not an app line".to_owned(), 4),
            ]
        );
        assert_eq!(
            registry.counter_sum("agent.dropped", &[("reason", "rate_limited")]),
            2
        );
        assert_eq!(registry.counter_sum("agent.rate_limited", &[]), 1);
    }

    #[test]
    fn the_tracking_map_stays_bounded() {
        let (r, registry) = router(&["http://d0"], 0, 64);
        for i in 0..1000 {
            r.ingest_envelope(&log(&format!("app-{i}"), "0", &[], "x"));
        }
        assert!(lock(&r.state).instances <= 64);
        assert!(registry.counter_sum("agent.instance_evictions", &[]) >= 1000 - 64);
        // The most recent source is still tracked: its sequence continues.
        r.ingest_envelope(&log("app-999", "0", &[], "x"));
        let last = drain(&r, 0).pop().unwrap();
        assert_eq!(last.1, 2);
    }

    #[test]
    fn a_flood_loses_its_own_envelopes_and_is_told_while_a_quiet_source_loses_none() {
        let fair = hydrant_buffer::FairConfig::default();
        // One envelope per batch, ten batches per lane: nobody takes, so the lane fills.
        let (r, registry) = router_with(&["http://d0"], 0, 100, 10, Some(fair));
        r.set_up(0, true);
        for round in 0..3 {
            for _ in 0..20 {
                r.ingest_envelope(&log("loud", "0", &[], "flood"));
            }
            r.ingest_envelope(&log("quiet", "0", &[], &format!("line {round}")));
        }
        let dropped_fair = registry.counter_sum("agent.dropped", &[("reason", "fair_share")]);
        let dropped_full =
            registry.counter_sum("agent.dropped", &[("reason", "egress_queue_full")]);
        assert!(
            dropped_fair > 0,
            "the flood was refused once the quiet source held a share"
        );
        let got = drain(&r, 0);
        let quiet: Vec<u64> = got
            .iter()
            .filter(|(e, _)| e.source_id == "quiet")
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(quiet, [1, 2, 3], "every quiet line, in order, no hole");
        let loud = got.iter().filter(|(e, _)| e.source_id == "loud").count() as u64;
        assert_eq!(
            loud + dropped_fair + dropped_full,
            60,
            "the flood's ledger balances"
        );
        let fair = r.lane(0).unwrap().fair().unwrap().stats();
        assert!(fair.balanced() && fair.queued == 0, "{fair:?}");

        r.sweep_fair(Instant::now());
        assert_eq!(
            registry.counter_sum("agent.dropped_by_source", &[("source", "loud")]),
            dropped_fair + dropped_full
        );
        assert_eq!(
            registry.counter_sum("agent.dropped_by_source", &[("source", "quiet")]),
            0
        );
        let notices = drain(&r, 0);
        assert_eq!(notices.len(), 1);
        let (notice, _) = &notices[0];
        assert_eq!(notice.source_id, "loud");
        let Some(v2::envelope::Message::Log(l)) = &notice.message else {
            panic!("not a log");
        };
        let text = String::from_utf8(l.payload.to_vec()).unwrap();
        let n = thousands(dropped_fair + dropped_full);
        assert_eq!(
            text,
            format!(
                "hydrant: {n} envelopes dropped in the last 10 s: this app exceeded its fair \
                 share of the agent's queue to the doppler"
            )
        );
        assert_eq!(registry.counter_sum("agent.fair_notices", &[]), 1);
        // Told at most once per interval.
        r.ingest_envelope(&log("quiet", "0", &[], "x"));
        r.sweep_fair(Instant::now());
        assert_eq!(registry.counter_sum("agent.fair_notices", &[]), 1);
    }

    /// Issue 16: a notice is an envelope of its source's stream, so when the full lane evicts
    /// the batch holding it, it must be counted under that source like the lines beside it.
    /// It was pushed uncharged, so its eviction reached `agent.dropped{egress_queue_full}` but
    /// not `agent.dropped_by_source`: the source's ledger stayed one short.
    #[test]
    fn a_notice_evicted_from_a_full_lane_is_counted_under_its_source() {
        let fair = hydrant_buffer::FairConfig {
            notice_interval: Duration::ZERO,
            ..hydrant_buffer::FairConfig::default()
        };
        // One envelope per batch, four batches per lane, nobody takes: a lone source fills the
        // lane and the lane evicts its oldest (no refusal: a source alone is never refused).
        let (r, registry) = router_with(&["http://d0"], 0, 100, 4, Some(fair));
        r.set_up(0, true);
        let mut sent = 0;
        let mut notices = 0;
        for _ in 0..3 {
            for _ in 0..6 {
                r.ingest_envelope(&log("loud", "0", &[], "flood"));
                sent += 1;
            }
            // A notice joins the lane behind the flood; the next round's flood evicts it.
            r.sweep_fair(Instant::now());
            notices = registry.counter_sum("agent.fair_notices", &[]);
        }
        assert!(notices >= 2, "notices were made and evicted: {notices}");
        let delivered = drain(&r, 0)
            .iter()
            .filter(|(e, _)| e.source_id == "loud")
            .count() as u64;
        r.sweep_fair(Instant::now());
        let notices = registry.counter_sum("agent.fair_notices", &[]);
        let delivered = delivered + drain(&r, 0).len() as u64;
        let by_source = registry.counter_sum("agent.dropped_by_source", &[("source", "loud")]);
        let full = registry.counter_sum("agent.dropped", &[("reason", "egress_queue_full")]);
        assert_eq!(
            by_source, full,
            "every eviction is counted under its source"
        );
        assert_eq!(
            sent + notices,
            delivered + by_source,
            "the source's ledger balances: sent {sent} + notices {notices} = delivered \
             {delivered} + dropped {by_source}"
        );
        let stats = r.lane(0).unwrap().fair().unwrap().stats();
        assert!(stats.balanced() && stats.queued == 0, "{stats:?}");
    }

    #[test]
    fn without_fairness_the_full_queue_evicts_the_quiet_source_too() {
        let (r, registry) = router_with(&["http://d0"], 0, 100, 10, None);
        r.set_up(0, true);
        r.ingest_envelope(&log("quiet", "0", &[], "line"));
        for _ in 0..20 {
            r.ingest_envelope(&log("loud", "0", &[], "flood"));
        }
        assert!(drain(&r, 0).iter().all(|(e, _)| e.source_id == "loud"));
        assert_eq!(
            registry.counter_sum("agent.dropped", &[("reason", "fair_share")]),
            0
        );
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(12_345), "12,345");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    fn new_lane(url: &str, registry: &Registry) -> Arc<Lane> {
        let full = registry.counter("agent.dropped", "", &[("reason", "egress_queue_full")]);
        Arc::new(Lane::new(url, registry, 1024, 1 << 30, full, None))
    }

    /// Sends one envelope from each of `n` sources; returns each source's slot.
    fn homes(r: &Router, n: usize) -> HashMap<String, usize> {
        let mut home = HashMap::new();
        for i in 0..n {
            r.ingest_envelope(&log(&format!("app-{i}"), "0", &[], "x"));
        }
        for slot in 0..4 {
            let Some(lane) = r.lane(slot) else { continue };
            while let Some((batch, _)) = lane.pop() {
                for e in BatchIter::new(&batch) {
                    let e = v2::Envelope::decode(e.unwrap()).unwrap();
                    home.insert(e.source_id, slot);
                }
            }
        }
        home
    }

    #[test]
    fn dopplers_added_and_retired_move_only_their_own_sources() {
        // Following the bus, with room for four dopplers and none announced yet.
        let registry = Registry::new("agent", "t");
        let settings = Settings {
            batch_max_envelopes: 1,
            batch_max_bytes: 1 << 20,
            flush_idle: Duration::from_millis(5),
            flush_max: Duration::from_millis(20),
            rate_limit: 0,
            max_instances: 10_000,
            instance_idle: Duration::from_secs(600),
            fair_sweep: Duration::from_secs(1),
        };
        let r = Router::new(settings, Vec::new(), 4, Metrics::new(&registry, 20));
        // Before any announcement an envelope is counted, never held.
        r.ingest_envelope(&log("early", "0", &[], "x"));
        assert_eq!(
            registry.counter_sum("agent.dropped", &[("reason", "no_doppler")]),
            1
        );
        let a = new_lane("http://a:8082", &registry);
        let slot_a = r.add_lane(a.clone()).unwrap();
        r.set_up(slot_a, true);
        let before = homes(&r, 100);
        assert!(before.values().all(|&s| s == slot_a));

        // B joins: once it is up, some sources move to it, and only to it.
        let b = new_lane("http://b:8082", &registry);
        let slot_b = r.add_lane(b).unwrap();
        assert_ne!(slot_a, slot_b);
        assert!(
            homes(&r, 100).values().all(|&s| s == slot_a),
            "a doppler not yet connected takes nothing"
        );
        r.set_up(slot_b, true);
        let with_b = homes(&r, 100);
        let moved = with_b.values().filter(|&&s| s == slot_b).count();
        assert!(moved > 10 && moved < 90, "B takes a share: {moved} of 100");

        // A lapses: its sources go to B, B's stay; what A held waits in A's queue for its task.
        r.ingest_envelope(&log("app-0", "0", &[], "held"));
        let held_on_a = with_b["app-0"] == slot_a;
        r.retire(slot_a, &a);
        assert!(r.lane(slot_a).is_none());
        if held_on_a {
            assert!(a.pop().is_some(), "the retired lane keeps what it held");
        }
        assert!(homes(&r, 100).values().all(|&s| s == slot_b));
        // The freed slot is reused by the next doppler; the old lane's task can no longer
        // change it.
        let c = new_lane("http://c:8082", &registry);
        assert_eq!(r.add_lane(c).unwrap(), slot_a);
        r.set_lane_up(slot_a, &a, true);
        assert!(
            homes(&r, 100).values().all(|&s| s == slot_b),
            "a stale lane task cannot mark the new doppler up"
        );
    }

    #[test]
    fn going_down_counts_what_was_waiting() {
        let (r, registry) = router(&["http://d0"], 0, 100);
        r.set_up(0, true);
        r.ingest_envelope(&log("a", "0", &[], "x"));
        r.ingest_envelope(&log("a", "0", &[], "x"));
        r.set_up(0, false);
        assert_eq!(
            registry.counter_sum("agent.dropped", &[("reason", "doppler_unavailable")]),
            2
        );
        assert!(drain(&r, 0).is_empty());
    }
}
