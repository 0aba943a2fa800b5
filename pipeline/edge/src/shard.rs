//! Firehose subscriptions shared across edges: each subscription id is read from the dopplers as
//! a shard group, so the copies of one nozzle connected to different edges (behind one name)
//! receive each envelope once between them.
//!
//! Where it sits: `GET /firehose/{id}` (and `/v2/read?shard_id=`) subscribe here instead of in
//! the main hub. The first copy of an id on this edge gets a hub of its own for the id (same
//! slots as the main hub), fed by one ring read per doppler that asks with `shard_id = id` and
//! this edge's member id; the doppler splits the group among every reader asking with that id
//! (see the doppler's `shard` module), and this edge's hub splits its share among the copies
//! connected here, round-robin, as before. The choice is per subscription, not per copy: the
//! upstream stays one stream per doppler per id whatever the number of copies here (the edge's
//! economy against Loggregator's stream per consumer per doppler), and a copy's cursor, resume
//! and outbox work unchanged against its id's hub. So that copies spread unevenly (two here, one
//! there) still get equal parts, each read asks with a weight, the number of copies here: the
//! doppler deals a member of weight `w` `w` blocks per round. When that number changes the
//! reads are reopened from where they stand (same member id, so nothing is read twice or
//! skipped).
//!
//! Member ids are a keyed hash of the id, stable for the life of this process: a copy that
//! comes back to this edge with its cursor is replayed exactly the share this edge owned
//! (what the doppler gave the group's other members is not repeated).
//!
//! Invariant: an id's hub and its doppler reads live exactly while a copy is connected here
//! (checked every [`CHECK`]); its slots follow the main hub's, so a doppler that joins or
//! leaves is read or dropped for every id as for the main stream.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hydrant_envelope::cursor::RingPosition;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::{Hub, Subscription};
use crate::metrics::Endpoint;
use crate::outbox::KindMask;
use crate::upstream::{self, Start, Upstream};

/// The metadata key naming the reader's member id in a sharded ring read (the doppler's
/// `shard::SHARD_MEMBER`).
pub(crate) const SHARD_MEMBER: &str = "hydrant-shard-member";
/// The metadata key giving the member's weight: the copies connected here (the doppler's
/// `shard::SHARD_WEIGHT`, at most 1,024).
pub(crate) const SHARD_WEIGHT: &str = "hydrant-shard-weight";
const MAX_WEIGHT: usize = 1024;

/// How long a new copy waits for its id's doppler reads to be up.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// How often an id's hub checks for its last copy and for dopplers come and gone: what the
/// dopplers deal this edge between the last copy leaving and the reads stopping reaches no one
/// (a copy that comes back here with its cursor is replayed it), so the check is frequent.
const CHECK: Duration = Duration::from_millis(50);

/// A shard group and this edge's member id in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shard {
    pub(crate) id: String,
    pub(crate) member: u64,
}

/// The hubs of the firehose subscription ids with a copy on this edge.
#[derive(Debug)]
pub(crate) struct Shards {
    main: Arc<Hub>,
    /// How dopplers are read (its hub and shard are replaced per id).
    upstream: Upstream,
    keys: std::collections::hash_map::RandomState,
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
    tracker: TaskTracker,
    stop: CancellationToken,
    /// `shard_across_edges`: off, every id is split here from the main hub, as one edge alone
    /// may (no extra doppler reads).
    across_edges: bool,
}

/// One id's doppler reads, by slot.
#[derive(Debug, Default)]
struct Reads {
    slots: HashMap<usize, (String, CancellationToken, JoinHandle<upstream::Ended>)>,
}

impl Shards {
    pub(crate) fn new(
        main: Arc<Hub>,
        upstream: Upstream,
        tracker: TaskTracker,
        stop: CancellationToken,
        across_edges: bool,
    ) -> Self {
        Self {
            main,
            upstream,
            keys: std::collections::hash_map::RandomState::new(),
            hubs: Mutex::default(),
            tracker,
            stop,
            across_edges,
        }
    }

    /// Joins the copies of firehose subscription `id` on this edge, starting the id's doppler
    /// reads when it is the first. A read from a doppler with a ring starts where the main
    /// stream stood, so nothing after this call can pass the copy by; from one without, this
    /// returns once the read is up (or [`CONNECT_WAIT`] passed, or the doppler is down).
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        id: &str,
        kinds: KindMask,
        endpoint: Endpoint,
    ) -> Subscription {
        if !self.across_edges {
            return self.main.subscribe_group(id, kinds, endpoint);
        }
        let sub = self.join(id, kinds, endpoint);
        sub.wait_connected(CONNECT_WAIT, &self.main).await;
        sub
    }

    fn join(self: &Arc<Self>, id: &str, kinds: KindMask, endpoint: Endpoint) -> Subscription {
        // Copies asking for different types are different groups (as different selectors are
        // in Loggregator): each gets every envelope of its types.
        let name = match kinds {
            KindMask::ALL => id.to_owned(),
            KindMask::LOGS => format!("{id}?filter-type=logs"),
            KindMask::METRICS => format!("{id}?filter-type=metrics"),
            other => format!("{id}?kinds={other:?}"),
        };
        let mut hubs = self.hubs.lock().unwrap_or_else(PoisonError::into_inner);
        let hub = match hubs.get(&name) {
            Some(hub) => hub.clone(),
            None => {
                let hub = self.start(&name);
                hubs.insert(name, hub.clone());
                hub
            }
        };
        // Under the lock the idle check takes, so a hub is never stopped under a new copy.
        hub.subscribe_group(id, kinds, endpoint)
    }

    /// `(envelopes, bytes)` queued for every id's copies.
    pub(crate) fn depth(&self) -> (usize, usize) {
        let hubs = self.hubs.lock().unwrap_or_else(PoisonError::into_inner);
        hubs.values()
            .map(|h| h.depth())
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }

    fn start(self: &Arc<Self>, id: &str) -> Arc<Hub> {
        let member = self.keys.hash_one(id).max(1);
        let shard = Shard {
            id: id.to_owned(),
            member,
        };
        let hub = Arc::new(self.main.for_shard(shard));
        let stop = self.stop.child_token();
        let mut reads = Reads::default();
        // Before the first copy subscribes, so its live starts are known at once.
        self.follow_slots(&hub, &mut reads, &stop, true);
        self.tracker
            .spawn(self.clone().keep(id.to_owned(), hub.clone(), reads, stop));
        hub
    }

    /// Runs while a copy of `id` is connected: follows the main hub's dopplers.
    async fn keep(
        self: Arc<Self>,
        id: String,
        hub: Arc<Hub>,
        mut reads: Reads,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => break,
            }
            let copies = {
                let mut hubs = self.hubs.lock().unwrap_or_else(PoisonError::into_inner);
                if hub.is_idle() {
                    hubs.remove(&id);
                    break;
                }
                hub.copies()
            };
            let weight = u32::try_from(copies.clamp(1, MAX_WEIGHT)).unwrap_or(1);
            if weight != hub.weight() {
                hub.set_weight(weight);
                self.reopen(&hub, &mut reads, &stop).await;
            }
            self.follow_slots(&hub, &mut reads, &stop, false);
        }
        // The doppler reads end with the token; the group's other members take the share.
        stop.cancel();
    }

    /// Reopens every doppler read (with the hub's new weight), each from where the hub stopped
    /// reading it: the old read ends before the new one starts, so nothing is read twice, and
    /// the doppler keeps this member's share of what arrives between (same member id).
    async fn reopen(&self, hub: &Arc<Hub>, reads: &mut Reads, stop: &CancellationToken) {
        let slots: Vec<usize> = reads.slots.keys().copied().collect();
        for slot in slots {
            let Some((url, token, task)) = reads.slots.remove(&slot) else {
                continue;
            };
            token.cancel();
            let _ = task.await;
            let token = stop.child_token();
            let task = self.tracker.spawn(upstream::subscribe(
                slot,
                url.clone(),
                Start::Oldest,
                self.read_of(hub),
                token.clone(),
            ));
            reads.slots.insert(slot, (url, token, task));
        }
    }

    /// How this hub's doppler reads are made.
    fn read_of(&self, hub: &Arc<Hub>) -> Upstream {
        Upstream {
            hub: hub.clone(),
            shard: hub.shard().cloned(),
            metrics: self.upstream.metrics.for_shards(),
            ..self.upstream.clone()
        }
    }

    /// Starts a read for each doppler the main hub reads and this hub does not, and stops the
    /// reads of dopplers the main hub dropped. When the hub starts (`first`), a read starts
    /// where the main stream stands; a doppler that joins later is read from the oldest
    /// envelope its ring holds, as the main stream reads it, so what it took before this hub
    /// noticed it is not skipped (the doppler hands out only this edge's share of it).
    fn follow_slots(
        &self,
        hub: &Arc<Hub>,
        reads: &mut Reads,
        stop: &CancellationToken,
        first: bool,
    ) {
        let current = self.main.readers();
        let gone: Vec<usize> = reads
            .slots
            .iter()
            .filter(|(slot, (url, _, _))| !current.iter().any(|(s, r)| s == *slot && r.url == *url))
            .map(|(slot, _)| *slot)
            .collect();
        for slot in gone {
            if let Some((_, token, task)) = reads.slots.remove(&slot) {
                hub.leave(slot);
                token.cancel();
                let hub = hub.clone();
                self.tracker.spawn(async move {
                    let _ = task.await;
                    hub.release(slot);
                });
            }
        }
        for (slot, reader) in current {
            if reads.slots.contains_key(&slot) {
                continue;
            }
            let url = reader.url.clone();
            // A slot still ending its previous doppler's read is taken on a later check.
            if !hub.claim_slot(slot, reader) {
                continue;
            }
            let known = self.main.identity(slot).filter(|_| first);
            if let Some((doppler, epoch)) = known {
                hub.at_position(
                    slot,
                    &RingPosition {
                        doppler,
                        epoch,
                        start: self.main.end(slot),
                        ..RingPosition::default()
                    },
                );
            }
            let token = stop.child_token();
            let task = self.tracker.spawn(upstream::subscribe(
                slot,
                url.clone(),
                if first { Start::Head } else { Start::Oldest },
                self.read_of(hub),
                token.clone(),
            ));
            reads.slots.insert(slot, (url, token, task));
        }
    }
}
