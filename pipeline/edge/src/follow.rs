//! Following the announced dopplers: with `dopplers_from_bus`, the set of dopplers this edge
//! reads is what the dopplers say on the bus (`doppler.announce`), not a fixed list. The set
//! itself (TTLs, bound, refusals) is the bus crate's shared follower
//! ([`hydrant_bus::follow`]); this file holds what is the edge's own: hub slots, upstream
//! subscriptions and where each one starts reading.
//!
//! Flow: a new doppler gets a hub slot and an upstream subscription at once, so its envelopes
//! reach every open firehose and app stream from its first batch; a doppler not heard from by
//! its deadline is dropped (its slot leaves the hub at once: recent reads and resumes stop
//! asking it) and its slot is freed once its subscription task has ended. A doppler whose
//! subscription task gives up (no stream within `doppler_grace_secs`) is dropped the same way
//! and tried afresh on its next announcement.
//!
//! Where a new doppler is read from: one heard within its first TTL after the follower started
//! was up before this edge and is read live (what it held before belongs to resuming consumers'
//! cursors); one that joins later is read from the oldest envelope its ring holds, because
//! agents may send to it before this edge subscribes and nothing they sent may be skipped; one
//! this edge dropped and hears again is read on from where it stopped.
//!
//! Invariants: a doppler refused for `max_dopplers` is logged once and counted every time; a
//! doppler that comes back at a new URL gets a new subscription; every subscription task
//! started here is awaited before [`run`] returns.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use hydrant_bus::Bus;
use hydrant_bus::follow::{self, Announced, Follow, Leave, Left, Refusal, Side, Vacancy};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, Reader};
use crate::metrics::Metrics;
use crate::upstream::{self, Ended, Start, Upstream};

/// Most dropped dopplers whose last position is remembered, per followed slot.
const REMEMBER_PER_SLOT: usize = 4;

/// What the edge holds for one followed doppler.
#[derive(Debug)]
struct Followed {
    slot: usize,
    stop: CancellationToken,
}

/// The edge's side of following: slots, subscriptions, and where dropped reads stopped.
#[derive(Debug)]
struct Follower {
    hub: Arc<Hub>,
    metrics: Metrics,
    upstream: Upstream,
    max_dopplers: usize,
    stop: CancellationToken,
    /// Dopplers refused for `max_dopplers`, so each is logged once (bounded like the set).
    refused: HashSet<String>,
    /// Dropped dopplers whose task is still ending, by slot.
    leaving: HashMap<usize, String>,
    /// Where the read of each dropped doppler stopped (`(epoch, next)`), by id; bounded.
    stopped_at: HashMap<String, (u64, u64)>,
    tasks: JoinSet<(usize, Ended)>,
}

/// Follows `doppler.announce` on `bus` until `stop` is cancelled, then waits for every
/// subscription task it started. Fails only if the subscription to the bus cannot be made.
pub(crate) async fn run(
    bus: Bus,
    upstream: Upstream,
    max_dopplers: usize,
    stop: CancellationToken,
) -> Result<(), hydrant_bus::Error> {
    let mut follower = Follower {
        hub: upstream.hub.clone(),
        metrics: upstream.metrics.clone(),
        upstream,
        max_dopplers,
        stop: stop.clone(),
        refused: HashSet::new(),
        leaving: HashMap::new(),
        stopped_at: HashMap::new(),
        tasks: JoinSet::new(),
    };
    follow::follow(&bus, Side::Egress, max_dopplers, &mut follower, &stop).await
}

impl Follow for Follower {
    type Held = Followed;
    type Done = (usize, Ended);

    fn usable(&self, url: &str) -> bool {
        upstream::endpoint(url).is_ok()
    }

    fn join(&mut self, vacancy: &Vacancy) -> Result<Followed, Refusal> {
        let (id, url) = (vacancy.id.as_str(), vacancy.url.as_str());
        let channel = upstream::read_channel(url, self.upstream.tls.as_ref())
            .map_err(|_| Refusal::Invalid)?;
        let reader = Reader {
            url: url.to_owned(),
            channel,
        };
        // None: every slot is taken or still being freed by a task that is ending.
        let slot = self.hub.claim(reader).ok_or(Refusal::OverMax)?;
        let start = match self.stopped_at.remove(id) {
            Some((epoch, next)) => Start::At(epoch, next),
            None if vacancy.early => Start::Head,
            None => Start::Oldest,
        };
        let stop = self.stop.child_token();
        let task = upstream::subscribe(
            slot,
            url.to_owned(),
            start,
            self.upstream.clone(),
            stop.clone(),
        );
        self.tasks.spawn(async move { (slot, task.await) });
        self.refused.remove(id);
        tracing::info!(doppler = %id, %url, slot, ?start, "reading a newly announced doppler");
        self.metrics.doppler_joined.inc();
        Ok(Followed { slot, stop })
    }

    /// Takes a doppler out of the hub and stops its task; the slot is freed when the task ends.
    fn leave(&mut self, left: Left<Followed>) {
        match left.why {
            Leave::Lapsed => tracing::warn!(doppler = %left.id, url = %left.url,
                "doppler announcement lapsed; no longer reading it"),
            Leave::Moved => tracing::info!(doppler = %left.id, old = %left.url, "doppler moved"),
        }
        self.hub.leave(left.held.slot);
        left.held.stop.cancel();
        self.leaving.insert(left.held.slot, left.id);
        self.metrics.doppler_lapsed.inc();
    }

    fn refused(&mut self, why: Refusal, id: &str, url: &str) {
        match why {
            Refusal::Invalid => self.metrics.announce_invalid.inc(),
            Refusal::OverMax => {
                self.metrics.announce_over_max.inc();
                if self.refused.len() < self.max_dopplers && self.refused.insert(id.to_owned()) {
                    tracing::warn!(doppler = %id, %url, max_dopplers = self.max_dopplers,
                        "doppler announced beyond max_dopplers; not reading it (raise max_dopplers to follow it)");
                }
            }
        }
    }

    fn tasks(&mut self) -> &mut JoinSet<(usize, Ended)> {
        &mut self.tasks
    }

    /// A subscription task ended: free its slot and remember where its read stopped; forget
    /// its doppler when the task gave up by itself (unreachable past the grace).
    fn ended(&mut self, announced: &mut Announced<Followed>, (slot, ended): (usize, Ended)) {
        let stopped = self.hub.release(slot);
        let id = match self.leaving.remove(&slot) {
            Some(id) => Some(id),
            None => {
                let gone = announced.remove_where(|f| f.slot == slot);
                if gone.is_some() && ended == Ended::Unreachable {
                    self.metrics.doppler_unreachable.inc();
                }
                gone.map(|(id, _)| id)
            }
        };
        if let (Some(id), Some(stopped)) = (id, stopped) {
            if self.stopped_at.len() >= self.max_dopplers.saturating_mul(REMEMBER_PER_SLOT) {
                self.stopped_at.clear();
            }
            self.stopped_at.insert(id, stopped);
        }
    }

    fn drained(&mut self, (slot, _): (usize, Ended)) {
        self.hub.release(slot);
    }

    fn report(&mut self, _announced: &Announced<Followed>) {
        self.metrics.dopplers.set(self.hub.dopplers() as f64);
    }
}
