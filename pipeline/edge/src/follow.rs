//! Following the announced dopplers: with `dopplers_from_bus`, the set of dopplers this edge
//! reads is what the dopplers say on the bus (`doppler.announce`), not a fixed list.
//!
//! Flow: `doppler.announce` → [`run`] keeps each doppler's URL and deadline (now + its TTL) →
//! a new doppler gets a hub slot and an upstream subscription at once, so its envelopes reach
//! every open firehose and app stream from its first batch; a doppler not heard from by its
//! deadline is dropped (its slot leaves the hub at once: recent reads and resumes stop asking
//! it) and its slot is freed once its subscription task has ended. A doppler whose
//! subscription task gives up (no stream within `doppler_grace_secs`) is dropped the same way
//! and tried afresh on its next announcement.
//!
//! Where a new doppler is read from: one heard within its first TTL after the follower started
//! was up before this edge and is read live (what it held before belongs to resuming consumers'
//! cursors); one that joins later is read from the oldest envelope its ring holds, because
//! agents may send to it before this edge subscribes and nothing they sent may be skipped; one
//! this edge dropped and hears again is read on from where it stopped.
//!
//! Invariants: at most `max_dopplers` are followed (the rest are refused, logged once per
//! doppler, and counted); a malformed or conflicting announcement changes nothing and is
//! counted; a doppler is keyed by its id, and one that comes back at a new URL gets a new
//! subscription; every subscription task started here is awaited before [`run`] returns.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hydrant_bus::Bus;
use hydrant_bus::messages::{DOPPLER_ANNOUNCE, DopplerAnnounce};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, Reader};
use crate::metrics::Metrics;
use crate::upstream::{self, Ended, Start, Upstream};

/// How often lapsed announcements are looked for: well inside one announce interval.
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// Longest doppler id accepted (ids name dopplers in cursors and logs).
const MAX_ID: usize = 128;
/// Most dropped dopplers whose last position is remembered, per followed slot.
const REMEMBER_PER_SLOT: usize = 4;

/// One followed doppler.
#[derive(Debug)]
struct Followed {
    url: String,
    slot: usize,
    stop: CancellationToken,
    deadline: Instant,
}

/// The follower's state.
#[derive(Debug)]
struct Follower {
    hub: Arc<Hub>,
    metrics: Metrics,
    upstream: Upstream,
    max_dopplers: usize,
    stop: CancellationToken,
    followed: HashMap<String, Followed>,
    /// Dopplers refused for `max_dopplers`, so each is logged once (bounded like the set).
    refused: HashSet<String>,
    /// Dropped dopplers whose task is still ending, by slot.
    leaving: HashMap<usize, String>,
    /// Where the read of each dropped doppler stopped (`(epoch, next)`), by id; bounded.
    stopped_at: HashMap<String, (u64, u64)>,
    started: Instant,
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
    let mut announcements = bus.subscribe(DOPPLER_ANNOUNCE).await?;
    let mut follower = Follower {
        hub: upstream.hub.clone(),
        metrics: upstream.metrics.clone(),
        upstream,
        max_dopplers,
        stop: stop.clone(),
        followed: HashMap::new(),
        refused: HashSet::new(),
        leaving: HashMap::new(),
        stopped_at: HashMap::new(),
        started: Instant::now(),
        tasks: JoinSet::new(),
    };
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut subscribed = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            message = announcements.next(), if subscribed => {
                let Some(message) = message else {
                    // The bus client is gone: keep reading the dopplers we have, as the data
                    // plane outlives the control plane.
                    subscribed = false;
                    tracing::warn!("the bus subscription ended; keeping the dopplers followed so far");
                    continue;
                };
                match message.json::<DopplerAnnounce>() {
                    Ok(announce) => follower.heard(&announce),
                    Err(_) => follower.metrics.announce_invalid.inc(),
                }
            }
            _ = check.tick() => follower.expire(Instant::now()),
            Some(done) = follower.tasks.join_next(), if !follower.tasks.is_empty() => {
                if let Ok((slot, ended)) = done {
                    follower.ended(slot, ended);
                }
            }
        }
    }
    while let Some(done) = follower.tasks.join_next().await {
        if let Ok((slot, _)) = done {
            follower.hub.release(slot);
        }
    }
    Ok(())
}

impl Follower {
    fn report(&self) {
        self.metrics.dopplers.set(self.hub.dopplers() as f64);
    }

    /// Drops every doppler whose announcement lapsed by `now`.
    fn expire(&mut self, now: Instant) {
        let lapsed: Vec<String> = self
            .followed
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in lapsed {
            if let Some(gone) = self.followed.remove(&id) {
                tracing::warn!(doppler = %id, url = %gone.url,
                    "doppler announcement lapsed; no longer reading it");
                self.drop_doppler(id, &gone);
                self.metrics.doppler_lapsed.inc();
            }
        }
        self.report();
    }

    /// Takes a doppler out of the hub and stops its task; the slot is freed when the task ends.
    fn drop_doppler(&mut self, id: String, gone: &Followed) {
        self.hub.leave(gone.slot);
        gone.stop.cancel();
        self.leaving.insert(gone.slot, id);
    }

    /// A subscription task ended: free its slot and remember where its read stopped; forget
    /// its doppler when the task gave up by itself (unreachable past the grace).
    fn ended(&mut self, slot: usize, ended: Ended) {
        let stopped = self.hub.release(slot);
        let id = match self.leaving.remove(&slot) {
            Some(id) => Some(id),
            None => {
                let id = self
                    .followed
                    .iter()
                    .find(|(_, f)| f.slot == slot)
                    .map(|(id, _)| id.clone());
                if let Some(id) = &id {
                    self.followed.remove(id);
                    if ended == Ended::Unreachable {
                        self.metrics.doppler_unreachable.inc();
                    }
                }
                id
            }
        };
        if let (Some(id), Some(stopped)) = (id, stopped) {
            if self.stopped_at.len() >= self.max_dopplers.saturating_mul(REMEMBER_PER_SLOT) {
                self.stopped_at.clear();
            }
            self.stopped_at.insert(id, stopped);
        }
        self.report();
    }

    /// Applies one announcement: refresh, add, or replace a doppler whose URL changed.
    fn heard(&mut self, announce: &DopplerAnnounce) {
        let id = announce.id.as_str();
        let url = announce.egress.as_str();
        let usable = (url.starts_with("http://") || url.starts_with("https://"))
            && upstream::endpoint(url).is_ok();
        if id.is_empty() || id.len() > MAX_ID || !usable {
            self.metrics.announce_invalid.inc();
            return;
        }
        let deadline = Instant::now() + announce.ttl();
        if let Some(known) = self.followed.get_mut(id) {
            if known.url == url {
                known.deadline = deadline;
                return;
            }
            // Same doppler, new address (restarted elsewhere): read it there instead.
            if let Some(old) = self.followed.remove(id) {
                tracing::info!(doppler = %id, old = %old.url, new = %url, "doppler moved");
                self.drop_doppler(id.to_owned(), &old);
                self.metrics.doppler_lapsed.inc();
            }
        }
        if self.followed.values().any(|f| f.url == url) {
            // Two ids claiming one address: the first keeps it.
            self.metrics.announce_invalid.inc();
            return;
        }
        if self.followed.len() >= self.max_dopplers {
            self.refuse(id, url);
            return;
        }
        let channel = upstream::read_channel(url, self.upstream.tls.as_ref());
        let Ok(channel) = channel else {
            self.metrics.announce_invalid.inc();
            return;
        };
        let reader = Reader {
            url: url.to_owned(),
            channel,
        };
        let Some(slot) = self.hub.claim(reader) else {
            // Every slot is taken or still being freed by a task that is ending.
            self.refuse(id, url);
            return;
        };
        let start = match self.stopped_at.remove(id) {
            Some((epoch, next)) => Start::At(epoch, next),
            None if self.started.elapsed() < announce.ttl() => Start::Head,
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
        self.followed.insert(
            id.to_owned(),
            Followed {
                url: url.to_owned(),
                slot,
                stop,
                deadline,
            },
        );
        self.report();
    }

    fn refuse(&mut self, id: &str, url: &str) {
        self.metrics.announce_over_max.inc();
        if self.refused.len() < self.max_dopplers && self.refused.insert(id.to_owned()) {
            tracing::warn!(doppler = %id, %url, max_dopplers = self.max_dopplers,
                "doppler announced beyond max_dopplers; not reading it (raise max_dopplers to follow it)");
        }
    }
}
