//! The fan-out: routes each envelope from the dopplers to the consumers that asked for it.
//!
//! Firehose connections that share a subscription id (and filter) form a group that splits the
//! stream: each envelope goes to exactly one member, round-robin per envelope, so N nozzles with
//! one id each see 1/N and together see everything. Such a group lives in a hub of its own,
//! fed with this edge's share of the id from the dopplers (see `shard`), so the split also holds
//! across edges. Different ids each see everything. Per-app
//! streams receive the envelopes whose `source_id` they named.
//!
//! Positions: when the upstream reads a doppler's replay ring, every envelope is stamped with
//! its place in that doppler's stream ([`At`]); the hub remembers, per doppler, where the last
//! published batch ended, and a new subscription records those ends (its *live start*) under the
//! same lock publishing takes, so a resuming consumer is replayed exactly the range before them.
//!
//! Slots: each doppler the edge reads holds a slot (an index into a fixed array sized at start:
//! the configured dopplers, plus `max_dopplers` when following the bus). A followed doppler
//! that leaves gives its slot up in two steps: [`Hub::leave`] at once (recent reads, resumes
//! and new subscriptions stop seeing it), [`Hub::release`] once its subscription task has
//! ended (only then can another doppler take the slot, so a late batch from the old stream
//! can never be stamped as the new one's).
//!
//! Invariant: publishing never waits on a consumer. It takes a read lock on the routing table
//! (written only when consumers come and go) and pushes into outboxes that drop their own
//! oldest data when full, so one stalled consumer cannot slow the upstream read or any other
//! consumer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use hydrant_envelope::cursor::{Mark, RingPosition};
use hydrant_envelope::gap::BySource;
use hydrant_envelope::wire::{EnvelopeView, Kind, split_batch};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::metrics::{Endpoint, Metrics};
use crate::outbox::{FairCounters, KindMask, Limits, Outbox};
use crate::position::{At, Item};
use crate::shard::Shard;

/// One envelope of the batch being published, with what routing needs.
#[derive(Debug)]
pub(crate) struct Parsed {
    bytes: Bytes,
    kind: Kind,
    /// Where `source_id` sits in `bytes`.
    source: std::ops::Range<usize>,
    at: At,
}

impl Parsed {
    fn source_id(&self) -> &[u8] {
        self.bytes.get(self.source.clone()).unwrap_or_default()
    }

    fn item(&self) -> Item {
        Item::new(self.bytes.clone(), self.at)
    }
}

/// A doppler being read: its URL and the lazily connected channel its log cache and replay
/// ring are read through.
#[derive(Debug, Clone)]
pub(crate) struct Reader {
    pub(crate) url: String,
    pub(crate) channel: Channel,
}

/// Who holds a slot.
#[derive(Debug, Default)]
enum Holder {
    #[default]
    Free,
    Active(Reader),
    /// Dropped; its subscription task is still ending.
    Leaving,
}

/// What the hub knows of one doppler's stream.
#[derive(Debug, Default)]
struct Upstream {
    holder: Mutex<Holder>,
    /// `(doppler id, epoch)`, once a ring read told it.
    identity: Mutex<Option<(u64, u64)>>,
    /// The offset after the last batch published (written under the table's read lock, read
    /// under its write lock).
    end: AtomicU64,
    /// A stream from the doppler is up now.
    connected: std::sync::atomic::AtomicBool,
}

/// Where `part` (borrowed from `whole`) sits in `whole`.
fn sub_range(whole: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if end <= whole.len() => start..end,
        _ => 0..0,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    id: String,
    kinds: KindMask,
}

#[derive(Debug, Default)]
struct Group {
    members: Vec<Arc<Outbox>>,
    /// The round-robin position, shared by every doppler's publisher.
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Table {
    groups: HashMap<GroupKey, Group>,
    sources: HashMap<Box<[u8]>, Vec<Arc<Outbox>>>,
}

/// The routing table and the counters it keeps.
#[derive(Debug)]
pub(crate) struct Hub {
    table: RwLock<Table>,
    metrics: Metrics,
    limits: Limits,
    /// One per slot: the configured dopplers first, in config order, then room for the
    /// followed ones.
    upstreams: Vec<Upstream>,
    /// Bumped whenever a doppler's identity becomes known, for [`Hub::wait_identified`].
    identified: watch::Sender<usize>,
    /// For a firehose subscription's own hub (see `shard`): the shard group and member its
    /// upstream reads ask the dopplers with, so replays ask for the same share.
    shard: Option<Shard>,
    /// The weight its upstream reads ask with: the copies connected when they were opened.
    weight: std::sync::atomic::AtomicU32,
}

/// What a subscription reads.
#[derive(Debug)]
enum Target {
    Group(GroupKey),
    Sources(Vec<String>),
}

/// A consumer's place in the hub. Dropping it unsubscribes and counts what was left queued.
#[derive(Debug)]
pub(crate) struct Subscription {
    hub: Arc<Hub>,
    outbox: Arc<Outbox>,
    target: Target,
    endpoint: Endpoint,
    /// Per doppler slot, where live data for this subscription starts (known dopplers only).
    live: Vec<(usize, Mark)>,
    /// The group already had members when this one joined: they were given the stream while
    /// this consumer was away, so it must not be replayed to it again.
    joined_live_group: bool,
}

impl Subscription {
    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub(crate) fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// Where live data starts, per doppler slot.
    pub(crate) fn live_starts(&self) -> &[(usize, Mark)] {
        &self.live
    }

    pub(crate) fn joined_live_group(&self) -> bool {
        self.joined_live_group
    }

    /// The shard group and member this subscription's data is the share of, if sharded.
    pub(crate) fn shard(&self) -> Option<&Shard> {
        self.hub.shard.as_ref()
    }

    /// Waits until the hub's doppler streams can miss nothing (see [`Hub::wait_connected`]).
    pub(crate) async fn wait_connected(&self, limit: Duration, main: &Hub) {
        self.hub.wait_connected(limit, main).await;
    }

    /// Where each known doppler's published stream ends now: how far a catching-up consumer
    /// still has to read.
    pub(crate) fn heads(&self) -> Vec<(usize, Mark)> {
        let _t = self
            .hub
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        self.hub.live_starts()
    }

    /// Ends a catch-up: the outbox queues every doppler's envelopes again, and the returned
    /// live starts (taken under the same lock, so no batch falls between) say where the replay
    /// must stop.
    pub(crate) fn go_live(&self) -> Vec<(usize, Mark)> {
        let _t = self
            .hub
            .table
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.outbox.undefer();
        self.hub.live_starts()
    }

    /// Whether other consumers share this one's firehose group now: a member that leaves is
    /// not replayed its share when it returns while they stay (see `resume`).
    pub(crate) fn shares_group(&self) -> bool {
        let Target::Group(key) = &self.target else {
            return false;
        };
        let t = self
            .hub
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        t.groups.get(key).is_some_and(|g| g.members.len() > 1)
    }

    /// The sources this subscription follows (an app's stream); `None` for a firehose.
    pub(crate) fn sources(&self) -> Option<&[String]> {
        match &self.target {
            Target::Group(_) => None,
            Target::Sources(sources) => Some(sources),
        }
    }

    /// Whether this subscription takes an envelope of `kind` from `source_id` (what a replay
    /// filters by, so replayed data is selected as live data is).
    pub(crate) fn wants(&self, kind: Kind, source_id: &[u8]) -> bool {
        if !self.outbox.kinds().has(kind) {
            return false;
        }
        match &self.target {
            Target::Group(_) => true,
            Target::Sources(sources) => sources.iter().any(|s| s.as_bytes() == source_id),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.target, &self.outbox);
        let left = self.outbox.close();
        self.hub.metrics.dropped_closed.add(left);
        self.hub.metrics.streams(self.endpoint).dec();
    }
}

impl Hub {
    /// A hub with room for `slots` dopplers at once, every slot free.
    pub(crate) fn new(metrics: Metrics, limits: Limits, slots: usize) -> Self {
        Self {
            table: RwLock::default(),
            metrics,
            limits,
            upstreams: (0..slots).map(|_| Upstream::default()).collect(),
            identified: watch::Sender::new(0),
            shard: None,
            weight: std::sync::atomic::AtomicU32::new(1),
        }
    }

    /// An empty hub with this one's slots, counters and limits, for the share of `shard`.
    pub(crate) fn for_shard(&self, shard: Shard) -> Self {
        Self {
            shard: Some(shard),
            ..Self::new(self.metrics.for_shards(), self.limits, self.upstreams.len())
        }
    }

    /// Gives `reader` slot `slot` if it is free (a shard's hub mirrors the main hub's slots,
    /// so a replay planned with the main hub's channels finds each doppler at the same index).
    pub(crate) fn claim_slot(&self, slot: usize, reader: Reader) -> bool {
        self.upstreams.get(slot).is_some_and(|u| {
            let mut holder = u.holder.lock().unwrap_or_else(PoisonError::into_inner);
            let free = matches!(*holder, Holder::Free);
            if free {
                *holder = Holder::Active(reader);
            }
            free
        })
    }

    /// The shard group this hub reads the share of, if any.
    pub(crate) fn shard(&self) -> Option<&Shard> {
        self.shard.as_ref()
    }

    /// How many consumers are subscribed.
    pub(crate) fn copies(&self) -> usize {
        let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        t.groups.values().map(|g| g.members.len()).sum::<usize>() + t.sources.len()
    }

    /// The weight a shard's doppler reads ask with (see `shard`).
    pub(crate) fn weight(&self) -> u32 {
        self.weight.load(Ordering::Acquire)
    }

    pub(crate) fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Release);
    }

    /// True when no consumer is subscribed.
    pub(crate) fn is_idle(&self) -> bool {
        let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        t.groups.is_empty() && t.sources.is_empty()
    }

    /// Gives `reader` the first free slot; `None` when every slot is taken.
    pub(crate) fn claim(&self, reader: Reader) -> Option<usize> {
        self.upstreams.iter().position(|u| {
            let mut holder = u.holder.lock().unwrap_or_else(PoisonError::into_inner);
            if matches!(*holder, Holder::Free) {
                *holder = Holder::Active(reader.clone());
                true
            } else {
                false
            }
        })
    }

    /// Stops offering `slot`'s doppler to reads, resumes and new subscriptions; its slot stays
    /// taken until [`Hub::release`].
    pub(crate) fn leave(&self, slot: usize) {
        if let Some(u) = self.upstreams.get(slot) {
            *u.holder.lock().unwrap_or_else(PoisonError::into_inner) = Holder::Leaving;
        }
        self.identified.send_modify(|n| *n += 1);
    }

    /// Frees `slot` once its subscription task has ended: no batch of the old stream can
    /// arrive after this. Returns where the read stopped (`(epoch, next offset)`), when the
    /// doppler gave positions, so a doppler that comes back is read on from there.
    pub(crate) fn release(&self, slot: usize) -> Option<(u64, u64)> {
        let stopped = self.upstreams.get(slot).and_then(|u| {
            let _t = self.table.read().unwrap_or_else(PoisonError::into_inner);
            *u.holder.lock().unwrap_or_else(PoisonError::into_inner) = Holder::Free;
            let identity = u
                .identity
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let end = u.end.swap(0, Ordering::AcqRel);
            identity.map(|(_, epoch)| (epoch, end))
        });
        // A waiter for every doppler's identity no longer waits for this one.
        self.identified.send_modify(|n| *n += 1);
        stopped
    }

    fn active(&self, slot: usize) -> Option<Reader> {
        match &*self
            .upstreams
            .get(slot)?
            .holder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Holder::Active(reader) => Some(reader.clone()),
            Holder::Free | Holder::Leaving => None,
        }
    }

    /// Every doppler being read, with its slot: what a recent read asks.
    pub(crate) fn readers(&self) -> Vec<(usize, Reader)> {
        (0..self.upstreams.len())
            .filter_map(|slot| Some((slot, self.active(slot)?)))
            .collect()
    }

    /// The read channel of each slot's doppler, by slot (`None`: no doppler there), for a
    /// replay planned now.
    pub(crate) fn channels(&self) -> Vec<Option<Channel>> {
        (0..self.upstreams.len())
            .map(|slot| self.active(slot).map(|r| r.channel))
            .collect()
    }

    /// How many dopplers are being read.
    pub(crate) fn dopplers(&self) -> usize {
        (0..self.upstreams.len())
            .filter(|&slot| self.active(slot).is_some())
            .count()
    }

    /// The live start of every doppler being read whose identity is known. Called under the
    /// write lock.
    fn live_starts(&self) -> Vec<(usize, Mark)> {
        self.upstreams
            .iter()
            .enumerate()
            .filter(|(slot, _)| self.active(*slot).is_some())
            .filter_map(|(slot, u)| {
                let (doppler, epoch) =
                    (*u.identity.lock().unwrap_or_else(PoisonError::into_inner))?;
                Some((
                    slot,
                    Mark {
                        doppler,
                        epoch,
                        next: u.end.load(Ordering::Acquire),
                    },
                ))
            })
            .collect()
    }

    /// The doppler id and epoch at `slot`, when known.
    pub(crate) fn identity(&self, slot: usize) -> Option<(u64, u64)> {
        *self
            .upstreams
            .get(slot)?
            .identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the identity of every doppler being read is known, or `limit` passes (a
    /// doppler that is down does not hold a resuming consumer back for longer).
    pub(crate) async fn wait_identified(&self, limit: Duration) {
        let all = self.upstreams.len();
        let mut rx = self.identified.subscribe();
        let known = |hub: &Self| {
            (0..all).all(|slot| hub.active(slot).is_none() || hub.identity(slot).is_some())
        };
        let _ = tokio::time::timeout(limit, async {
            while !known(self) {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Whether `slot`'s stream is up now.
    pub(crate) fn is_connected(&self, slot: usize) -> bool {
        self.upstreams
            .get(slot)
            .is_some_and(|u| u.connected.load(Ordering::Acquire))
    }

    /// Marks whether `slot`'s stream is up, for [`Hub::wait_connected`].
    pub(crate) fn set_connected(&self, slot: usize, up: bool) {
        if let Some(u) = self.upstreams.get(slot) {
            u.connected.store(up, Ordering::Release);
            self.identified.send_modify(|n| *n += 1);
        }
    }

    /// Waits until no doppler's data can pass this hub by, or `limit` passes: each doppler's
    /// stream is up, or its read starts from a known position (a ring read loses nothing that
    /// arrives before it is up), or `main`'s stream from it is down too (a doppler that is down
    /// does not hold a new subscription back). A shard group's reads must be up: the doppler
    /// counts this edge a member only from then, and a resuming copy's replay asked of a
    /// doppler before that finds the offsets the group has not been dealt yet owned by nobody.
    pub(crate) async fn wait_connected(&self, limit: Duration, main: &Hub) {
        let mut rx = self.identified.subscribe();
        let sharded = self.shard.is_some();
        let up = |hub: &Self| {
            hub.upstreams.iter().enumerate().all(|(slot, u)| {
                hub.active(slot).is_none()
                    || u.connected.load(Ordering::Acquire)
                    || (!sharded && hub.identity(slot).is_some())
                    || !main.is_connected(slot)
            })
        };
        let _ = tokio::time::timeout(limit, async {
            while !up(self) {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Records where a doppler's ring read stands (its identity, and the end of what has been
    /// published when the read starts somewhere new), under the lock publishing takes.
    pub(crate) fn at_position(&self, slot: usize, position: &RingPosition) {
        let Some(u) = self.upstreams.get(slot) else {
            return;
        };
        let _t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let mut identity = u.identity.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Some((position.doppler, position.epoch));
        if *identity != now || position.count == 0 {
            *identity = now;
            u.end.store(position.start, Ordering::Release);
            drop(identity);
            self.identified.send_modify(|n| *n += 1);
        }
    }

    /// The offset after the last batch published from `slot`.
    pub(crate) fn end(&self, slot: usize) -> u64 {
        self.upstreams
            .get(slot)
            .map_or(0, |u| u.end.load(Ordering::Acquire))
    }

    /// Forgets a doppler's position (its stream now comes without positions).
    pub(crate) fn forget_position(&self, slot: usize) {
        if let Some(u) = self.upstreams.get(slot) {
            *u.identity.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// A consumer's outbox; fair only when it can hold `many_sources` (a lone source is never
    /// refused, so a one-app stream skips the ledger and its memory).
    fn new_outbox(&self, kinds: KindMask, many_sources: bool) -> Arc<Outbox> {
        Arc::new(Outbox::new(
            self.limits,
            kinds,
            self.metrics.dropped_slow.clone(),
            self.metrics.dropped_closed.clone(),
            many_sources.then(|| FairCounters {
                refused: self.metrics.dropped_fair_share.clone(),
                by_source: self.metrics.dropped_by_source.clone(),
            }),
        ))
    }

    /// Joins (or starts) the firehose group `id` for envelope types `kinds`.
    pub(crate) fn subscribe_group(
        self: &Arc<Self>,
        id: &str,
        kinds: KindMask,
        endpoint: Endpoint,
    ) -> Subscription {
        let outbox = self.new_outbox(kinds, true);
        let key = GroupKey {
            id: id.to_owned(),
            kinds,
        };
        let (live, joined_live_group) = {
            let mut t = self.table.write().unwrap_or_else(PoisonError::into_inner);
            let members = &mut t.groups.entry(key.clone()).or_default().members;
            let had_members = !members.is_empty();
            members.push(outbox.clone());
            (self.live_starts(), had_members)
        };
        self.metrics.streams(endpoint).inc();
        Subscription {
            hub: self.clone(),
            outbox,
            target: Target::Group(key),
            endpoint,
            live,
            joined_live_group,
        }
    }

    /// Follows every envelope of `sources` of types `kinds`.
    pub(crate) fn subscribe_sources(
        self: &Arc<Self>,
        sources: Vec<String>,
        kinds: KindMask,
        endpoint: Endpoint,
    ) -> Subscription {
        let outbox = self.new_outbox(kinds, sources.len() > 1);
        let live = {
            let mut t = self.table.write().unwrap_or_else(PoisonError::into_inner);
            for s in &sources {
                t.sources
                    .entry(s.as_bytes().into())
                    .or_default()
                    .push(outbox.clone());
            }
            self.live_starts()
        };
        self.metrics.streams(endpoint).inc();
        Subscription {
            hub: self.clone(),
            outbox,
            target: Target::Sources(sources),
            endpoint,
            live,
            joined_live_group: false,
        }
    }

    fn remove(&self, target: &Target, outbox: &Arc<Outbox>) {
        let mut t = self.table.write().unwrap_or_else(PoisonError::into_inner);
        match target {
            Target::Group(key) => {
                if let Some(g) = t.groups.get_mut(key) {
                    g.members.retain(|m| !Arc::ptr_eq(m, outbox));
                    if g.members.is_empty() {
                        t.groups.remove(key);
                    }
                }
            }
            Target::Sources(sources) => {
                for s in sources {
                    if let Some(list) = t.sources.get_mut(s.as_bytes()) {
                        list.retain(|m| !Arc::ptr_eq(m, outbox));
                        if list.is_empty() {
                            t.sources.remove(s.as_bytes());
                        }
                    }
                }
            }
        }
    }

    /// Tells the streams following one source (app streams) their share of a loss the firehose
    /// groups are told as a whole: for each source `lost` names that a stream follows, one
    /// marker envelope from `marker(source, count)`, queued to those streams only.
    pub(crate) fn publish_per_source(&self, lost: &BySource, marker: impl Fn(&str, u64) -> Bytes) {
        let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        if t.sources.is_empty() {
            return;
        }
        for (source, n) in &lost.top {
            let Some(list) = t.sources.get(source.as_bytes()) else {
                continue;
            };
            let envelope = marker(source, *n);
            for o in list.iter().filter(|o| o.kinds().has(Kind::Event)) {
                o.push_many([(Item::new(envelope.clone(), At::NONE), source.as_bytes())]);
            }
        }
    }

    /// Routes one encoded `EnvelopeBatch` from a doppler without positions (a doppler with no
    /// replay ring, or a marker). `scratch` is the caller's reusable buffer, so publishing
    /// allocates nothing per batch once warm.
    pub(crate) fn publish(&self, batch: &Bytes, scratch: &mut Vec<Parsed>) {
        self.publish_at(None, batch, scratch);
    }

    /// Routes one batch of a doppler's ring read: its envelopes are at `position.start`
    /// onwards, and once routed, `slot`'s live end moves to `position.end()`.
    pub(crate) fn publish_at(
        &self,
        at: Option<(usize, &RingPosition)>,
        batch: &Bytes,
        scratch: &mut Vec<Parsed>,
    ) {
        scratch.clear();
        let mut malformed = 0u64;
        let stamp = |i: u64| match at {
            Some((_, p)) => At {
                doppler: p.doppler,
                epoch: p.epoch,
                offset: p.start + i,
            },
            None => At::NONE,
        };
        for (offset, item) in (0u64..).zip(split_batch(batch)) {
            let Ok(bytes) = item else {
                // The batch framing itself is broken: nothing after this point can be trusted.
                malformed += 1;
                break;
            };
            let Ok(view) = EnvelopeView::parse(&bytes) else {
                malformed += 1;
                continue;
            };
            let kind = view.kind;
            let source = sub_range(&bytes, view.source_id.as_bytes());
            scratch.push(Parsed {
                bytes,
                kind,
                source,
                at: stamp(offset),
            });
        }
        self.metrics.ingress.add(scratch.len() as u64 + malformed);
        if malformed > 0 {
            self.metrics.dropped_malformed.add(malformed);
            tracing::warn!(malformed, "dropped malformed envelopes from a doppler");
        }
        let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((slot, p)) = at
            && let Some(u) = self.upstreams.get(slot)
        {
            // Under the read lock, so a subscription (write lock) sees this batch either
            // entirely published or not at all.
            u.end.store(p.end(), Ordering::Release);
        }
        if scratch.is_empty() {
            return;
        }
        for (key, group) in &t.groups {
            route_group(key.kinds, group, scratch);
        }
        if !t.sources.is_empty() {
            for p in scratch.iter() {
                if let Some(list) = t.sources.get(p.source_id()) {
                    for o in list {
                        if o.kinds().has(p.kind) {
                            o.push_many([(p.item(), p.source_id())]);
                        }
                    }
                }
            }
        }
    }

    /// Total `(envelopes, bytes)` queued across consumers, for the depth gauges.
    pub(crate) fn depth(&self) -> (usize, usize) {
        let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let groups = t.groups.values().flat_map(|g| g.members.iter());
        // An outbox following several sources is listed once per source; count it once.
        let mut seen = std::collections::HashSet::new();
        let sources = t
            .sources
            .values()
            .flatten()
            .filter(|o| seen.insert(Arc::as_ptr(o)));
        groups
            .chain(sources)
            .map(|o| o.depth())
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }
}

/// Hands each matching envelope to exactly one member, round-robin per envelope, taking each
/// member's lock once per batch.
fn route_group(kinds: KindMask, group: &Group, batch: &[Parsed]) {
    let n = group.members.len();
    let matching = || batch.iter().filter(move |p| kinds.has(p.kind));
    match group.members.as_slice() {
        [] => {}
        [only] => only.push_many(matching().map(|p| (p.item(), p.source_id()))),
        members => {
            let count = matching().count();
            if count == 0 {
                return;
            }
            let start = group.next.fetch_add(count, Ordering::Relaxed);
            for (i, member) in members.iter().enumerate() {
                member.push_many(
                    matching()
                        .enumerate()
                        .filter(|(j, _)| (start.wrapping_add(*j)) % n == i)
                        .map(|(_, p)| (p.item(), p.source_id())),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hydrant_emitter::Registry;
    use hydrant_envelope::v2;

    use super::*;

    fn hub_of(slots: usize) -> Arc<Hub> {
        Arc::new(Hub::new(
            Metrics::new(&Registry::new("trafficcontroller", "t")),
            Limits {
                max_envelopes: 10_000,
                max_bytes: 1 << 24,
                fair: true,
            },
            slots,
        ))
    }

    fn reader(url: &str) -> Reader {
        // A channel's worker task needs a runtime, also in the tests that are not async.
        static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        let runtime = RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
        });
        let _entered = runtime.enter();
        Reader {
            url: url.to_owned(),
            channel: tonic::transport::Endpoint::from_shared(url.to_owned())
                .unwrap()
                .connect_lazy(),
        }
    }

    fn hub() -> Arc<Hub> {
        let h = hub_of(1);
        assert_eq!(h.claim(reader("http://127.0.0.1:1")), Some(0));
        h
    }

    fn log(source: &str, i: usize) -> Bytes {
        hydrant_envelope::wire::encode(&v2::Envelope {
            source_id: source.to_owned(),
            timestamp: i as i64,
            message: Some(v2::envelope::Message::Log(v2::Log {
                payload: format!("line {i}").into_bytes().into(),
                r#type: 0,
            })),
            ..v2::Envelope::default()
        })
    }

    fn counter(source: &str) -> Bytes {
        hydrant_envelope::wire::encode(&v2::Envelope {
            source_id: source.to_owned(),
            message: Some(v2::envelope::Message::Counter(v2::Counter {
                name: "c".into(),
                delta: 1,
                total: 1,
            })),
            ..v2::Envelope::default()
        })
    }

    fn drain(s: &Subscription) -> Vec<Bytes> {
        let mut out = Vec::new();
        s.outbox().take(usize::MAX, usize::MAX, &mut out);
        out.into_iter().map(|i| i.bytes).collect()
    }

    #[test]
    fn group_members_split_every_envelope_exactly_once() {
        let h = hub();
        let a = h.subscribe_group("nozzle", KindMask::ALL, Endpoint::Firehose);
        let b = h.subscribe_group("nozzle", KindMask::ALL, Endpoint::Firehose);
        let c = h.subscribe_group("nozzle", KindMask::ALL, Endpoint::Firehose);
        let other = h.subscribe_group("other", KindMask::ALL, Endpoint::Firehose);
        let all: Vec<Bytes> = (0..301).map(|i| log("app", i)).collect();
        let mut scratch = Vec::new();
        for chunk in all.chunks(7) {
            h.publish(
                &hydrant_envelope::wire::batch_of(chunk.iter().map(|b| &b[..])),
                &mut scratch,
            );
        }
        let (ra, rb, rc) = (drain(&a), drain(&b), drain(&c));
        assert_eq!((ra.len(), rb.len(), rc.len()), (101, 100, 100));
        let mut union: Vec<Bytes> = ra.into_iter().chain(rb).chain(rc).collect();
        union.sort();
        let mut want = all.clone();
        want.sort();
        assert_eq!(union, want);
        assert_eq!(drain(&other), all, "another id sees everything, in order");
    }

    #[test]
    fn filters_and_sources() {
        let h = hub();
        let logs = h.subscribe_group("x", KindMask::LOGS, Endpoint::Firehose);
        let metrics = h.subscribe_group("x", KindMask::METRICS, Endpoint::Firehose);
        let app = h.subscribe_sources(vec!["web".into()], KindMask::ALL, Endpoint::AppStream);
        let batch = hydrant_envelope::wire::batch_of([
            &log("web", 1)[..],
            &counter("web")[..],
            &log("worker", 2)[..],
        ]);
        h.publish(&batch, &mut Vec::new());
        assert_eq!(drain(&logs).len(), 2);
        assert_eq!(drain(&metrics).len(), 1);
        assert_eq!(drain(&app), vec![log("web", 1), counter("web")]);
    }

    #[test]
    fn an_app_stream_is_told_its_share_of_a_loss_and_no_one_elses() {
        use hydrant_envelope::gap::Gap;
        let h = hub();
        let firehose = h.subscribe_group("x", KindMask::ALL, Endpoint::Firehose);
        let web = h.subscribe_sources(vec!["web".into()], KindMask::ALL, Endpoint::AppStream);
        let api = h.subscribe_sources(vec!["api".into()], KindMask::ALL, Endpoint::AppStream);
        let lost = BySource {
            top: vec![("worker".to_owned(), 7), ("web".to_owned(), 5)],
            other: 1,
        };
        h.publish_per_source(&lost, |source, n| {
            Gap {
                source_id: source.to_owned(),
                dropped: n,
                hop: "doppler".to_owned(),
                reason: "slow_subscriber".to_owned(),
                by_source: BySource {
                    top: vec![(source.to_owned(), n)],
                    other: 0,
                },
            }
            .encode()
        });
        let got = drain(&web);
        assert_eq!(got.len(), 1);
        let gap = Gap::from_view(&EnvelopeView::parse(&got[0]).unwrap()).unwrap();
        assert_eq!((gap.source_id.as_str(), gap.dropped), ("web", 5));
        assert!(drain(&api).is_empty(), "api lost nothing");
        assert!(
            drain(&firehose).is_empty(),
            "the groups get the whole marker instead"
        );
    }

    #[test]
    fn dropping_a_subscription_unsubscribes_and_counts_leftovers() {
        let h = hub();
        let a = h.subscribe_sources(vec!["web".into()], KindMask::ALL, Endpoint::AppStream);
        h.publish(
            &hydrant_envelope::wire::batch_of([&log("web", 1)[..], &log("web", 2)[..]]),
            &mut Vec::new(),
        );
        assert_eq!(h.depth(), (2, log("web", 1).len() * 2));
        drop(a);
        assert_eq!(h.metrics.dropped_closed.get(), 2);
        assert_eq!(h.depth(), (0, 0));
        assert!(h.table.read().unwrap().sources.is_empty());
    }

    #[test]
    fn ring_batches_stamp_positions_and_move_the_live_start() {
        let h = hub();
        let p = RingPosition {
            doppler: 7,
            epoch: 9,
            start: 100,
            count: 0,
            ..RingPosition::default()
        };
        h.at_position(0, &p);
        let early = h.subscribe_group("x", KindMask::ALL, Endpoint::Firehose);
        assert_eq!(early.live_starts()[0].1.next, 100);
        let batch = hydrant_envelope::wire::batch_of([&log("web", 1)[..], &log("web", 2)[..]]);
        let p = RingPosition { count: 2, ..p };
        h.publish_at(Some((0, &p)), &batch, &mut Vec::new());
        let late = h.subscribe_group("x", KindMask::ALL, Endpoint::Firehose);
        assert!(late.joined_live_group());
        assert_eq!(late.live_starts()[0].1.next, 102);
        let mut out = Vec::new();
        early.outbox().take(10, usize::MAX, &mut out);
        let offsets: Vec<u64> = out.iter().map(|i| i.at.offset).collect();
        assert_eq!(offsets, [100, 101]);
        assert_eq!(h.identity(0), Some((7, 9)));
    }

    #[tokio::test]
    async fn a_slot_is_reused_only_once_released_and_a_leaving_doppler_is_not_offered() {
        let h = hub_of(2);
        assert_eq!(h.claim(reader("http://127.0.0.1:1")), Some(0));
        assert_eq!(h.claim(reader("http://127.0.0.1:2")), Some(1));
        assert_eq!(
            h.claim(reader("http://127.0.0.1:3")),
            None,
            "every slot taken"
        );
        let p = |doppler| RingPosition {
            doppler,
            epoch: 1,
            start: 5,
            count: 0,
            ..RingPosition::default()
        };
        h.at_position(0, &p(10));
        h.at_position(1, &p(11));
        assert_eq!(h.dopplers(), 2);
        h.leave(0);
        assert_eq!(h.dopplers(), 1);
        let urls: Vec<String> = h.readers().into_iter().map(|(_, r)| r.url).collect();
        assert_eq!(urls, ["http://127.0.0.1:2"]);
        assert!(h.channels()[0].is_none() && h.channels()[1].is_some());
        let s = h.subscribe_group("x", KindMask::ALL, Endpoint::Firehose);
        let slots: Vec<usize> = s.live_starts().iter().map(|(slot, _)| *slot).collect();
        assert_eq!(slots, [1], "a leaving doppler has no live start");
        assert_eq!(h.claim(reader("http://127.0.0.1:3")), None, "still ending");
        assert_eq!(h.release(0), Some((1, 5)), "where the read stopped");
        assert_eq!(h.identity(0), None);
        assert_eq!(h.claim(reader("http://127.0.0.1:3")), Some(0));
        // The new doppler is waited for until it says who it is.
        assert!(
            tokio::time::timeout(
                Duration::from_millis(50),
                h.wait_identified(Duration::from_secs(60))
            )
            .await
            .is_err()
        );
        h.at_position(0, &p(12));
        h.wait_identified(Duration::from_secs(5)).await;
    }

    #[test]
    fn malformed_envelopes_are_counted_not_forwarded() {
        let h = hub();
        let a = h.subscribe_group("x", KindMask::ALL, Endpoint::Firehose);
        // A valid envelope, then one whose log payload field has the wrong wire type.
        let bad = [0x22u8, 0x02, 0x08, 0x01];
        let batch = hydrant_envelope::wire::batch_of([&log("web", 1)[..], &bad[..]]);
        h.publish(&batch, &mut Vec::new());
        assert_eq!(drain(&a).len(), 1);
        assert_eq!(h.metrics.ingress.get(), 2);
        assert_eq!(h.metrics.dropped_malformed.get(), 1);
    }
}
