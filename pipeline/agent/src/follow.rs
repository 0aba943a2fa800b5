//! Following the announced dopplers: with `dopplers_from_bus`, the agent's doppler set is what
//! the dopplers say on the bus (`doppler.announce`), not a fixed list.
//!
//! Flow: `doppler.announce` → [`run`] keeps each doppler's last word and its deadline (now +
//! its TTL) → a new doppler gets a lane (a slot in the router, a bounded queue, counters and a
//! `BatchSender` task) at once; a doppler not heard from by its deadline is retired (the router
//! stops routing to it, its task delivers or counts what it held) within one check interval.
//!
//! Invariants: at most `max_dopplers` are followed (the rest are ignored and counted); a
//! malformed or conflicting announcement changes nothing and is counted; a doppler is keyed by
//! its id, and one that comes back with a new URL gets a new lane; every lane task started
//! here is awaited before [`run`] returns, so no envelope outlives the agent uncounted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hydrant_bus::Bus;
use hydrant_bus::messages::{DOPPLER_ANNOUNCE, DopplerAnnounce};
use hydrant_emitter::{Counter, Gauge, Registry};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::egress::{self, Lane};
use crate::router::Router;

/// How often lapsed announcements are looked for: well inside one announce interval.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Everything a new lane needs, from the config.
#[derive(Debug, Clone)]
pub(crate) struct LaneSettings {
    pub(crate) max_batches: usize,
    pub(crate) max_bytes: usize,
    pub(crate) queue_full: Counter,
    pub(crate) fair: Option<hydrant_buffer::FairConfig>,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) tls: Option<hydrant_tls::Connector>,
    pub(crate) max_dopplers: usize,
}

/// One followed doppler.
#[derive(Debug)]
struct Followed {
    url: String,
    slot: usize,
    lane: Arc<Lane>,
    stop: CancellationToken,
    deadline: Instant,
}

/// The follower's own counters.
#[derive(Debug)]
struct Report {
    followed: Gauge,
    added: Counter,
    lapsed: Counter,
    invalid: Counter,
    over_max: Counter,
}

impl Report {
    fn new(registry: &Registry) -> Self {
        let result = |r| {
            registry.counter(
                "agent.doppler_announcements",
                "doppler announcements that changed nothing, by why",
                &[("result", r)],
            )
        };
        let change = |c| {
            registry.counter(
                "agent.doppler_changes",
                "dopplers added to or removed from the followed set",
                &[("change", c)],
            )
        };
        Self {
            followed: registry.gauge(
                "agent.dopplers_followed",
                "dopplers the agent follows from the bus",
                "count",
                &[],
            ),
            added: change("added"),
            lapsed: change("lapsed"),
            invalid: result("invalid"),
            over_max: result("over_max_dopplers"),
        }
    }
}

/// The follower's state: the dopplers it follows and their lane tasks.
#[derive(Debug)]
struct Follower {
    router: Arc<Router>,
    registry: Registry,
    settings: LaneSettings,
    report: Report,
    drain: CancellationToken,
    followed: HashMap<String, Followed>,
    tasks: JoinSet<()>,
}

/// Follows `doppler.announce` on `bus` until `drain` is cancelled, then waits for every lane
/// task it started. Fails only if the subscription cannot be made.
pub(crate) async fn run(
    bus: Bus,
    router: Arc<Router>,
    registry: Registry,
    settings: LaneSettings,
    drain: CancellationToken,
) -> Result<(), hydrant_bus::Error> {
    let mut announcements = bus.subscribe(DOPPLER_ANNOUNCE).await?;
    let mut follower = Follower {
        router,
        report: Report::new(&registry),
        registry,
        settings,
        drain: drain.clone(),
        followed: HashMap::new(),
        tasks: JoinSet::new(),
    };
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut subscribed = true;
    loop {
        tokio::select! {
            () = drain.cancelled() => break,
            message = announcements.next(), if subscribed => {
                let Some(message) = message else {
                    // The bus client is gone: keep the lanes we have, as the data plane
                    // outlives the control plane.
                    subscribed = false;
                    continue;
                };
                match message.json::<DopplerAnnounce>() {
                    Ok(announce) => follower.heard(&announce),
                    Err(_) => follower.report.invalid.inc(),
                }
            }
            _ = check.tick() => follower.expire(Instant::now()),
            Some(_) = follower.tasks.join_next(), if !follower.tasks.is_empty() => {}
        }
    }
    while follower.tasks.join_next().await.is_some() {}
    Ok(())
}

impl Follower {
    /// Retires every doppler whose announcement lapsed by `now`.
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
                    "doppler announcement lapsed; its sources move to the others");
                self.retire(gone);
                self.report.lapsed.inc();
            }
        }
        self.report.followed.set(self.followed.len() as f64);
    }

    fn retire(&self, gone: Followed) {
        self.router.retire(gone.slot, &gone.lane);
        gone.stop.cancel();
    }

    /// Applies one announcement: refresh, add, or replace a doppler whose URL changed.
    fn heard(&mut self, announce: &DopplerAnnounce) {
        let settings = &self.settings;
        let url = announce.ingress.as_str();
        let id = announce.id.as_str();
        let endpoint = (url.starts_with("http://") || url.starts_with("https://"))
            .then(|| {
                egress::endpoint(url, settings.keepalive_interval, settings.keepalive_timeout).ok()
            })
            .flatten();
        let (true, Some(endpoint)) = (!id.is_empty() && id.len() <= 128, endpoint) else {
            self.report.invalid.inc();
            return;
        };
        let deadline = Instant::now() + announce.ttl();
        if let Some(known) = self.followed.get_mut(id) {
            if known.url == url {
                known.deadline = deadline;
                return;
            }
            // Same doppler, new address (restarted elsewhere): a new lane.
            if let Some(old) = self.followed.remove(id) {
                self.retire(old);
            }
        }
        if self.followed.values().any(|f| f.url == url) {
            // Two ids claiming one address: the first keeps it.
            self.report.invalid.inc();
            return;
        }
        if self.followed.len() >= self.settings.max_dopplers {
            self.report.over_max.inc();
            return;
        }
        let settings = &self.settings;
        let lane = Arc::new(Lane::new(
            url,
            &self.registry,
            settings.max_batches,
            settings.max_bytes,
            settings.queue_full.clone(),
            settings.fair,
        ));
        let Some(slot) = self.router.add_lane(lane.clone()) else {
            self.report.over_max.inc();
            return;
        };
        let stop = self.drain.child_token();
        self.tasks.spawn(egress::run_lane(
            self.router.clone(),
            slot,
            lane.clone(),
            endpoint,
            settings.tls.clone(),
            settings.max_backoff,
            stop.clone(),
        ));
        tracing::info!(doppler = %id, %url, "following a newly announced doppler");
        self.report.added.inc();
        self.followed.insert(
            id.to_owned(),
            Followed {
                url: url.to_owned(),
                slot,
                lane,
                stop,
                deadline,
            },
        );
        self.report.followed.set(self.followed.len() as f64);
    }
}
