//! Following the announced dopplers: with `dopplers_from_bus`, the agent's doppler set is what
//! the dopplers say on the bus (`doppler.announce`), not a fixed list. The set itself (TTLs,
//! bound, refusals) is the bus crate's shared follower ([`hydrant_bus::follow`]); this file
//! holds what is the agent's own: lanes.
//!
//! Flow: a new doppler gets a lane (a slot in the router, a bounded queue, counters and a
//! `BatchSender` task) at once; a doppler not heard from by its deadline is retired (the router
//! stops routing to it, its task delivers or counts what it held) within one check interval.
//!
//! Invariants: a doppler that comes back with a new URL gets a new lane; every lane task
//! started here is awaited before [`run`] returns, so no envelope outlives the agent uncounted.

use std::sync::Arc;
use std::time::Duration;

use hydrant_bus::Bus;
use hydrant_bus::follow::{self, Announced, Follow, Leave, Left, Refusal, Side, Vacancy};
use hydrant_emitter::{Counter, Gauge, Registry};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::egress::{self, Lane};
use crate::router::Router;

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

/// What the agent holds for one followed doppler.
#[derive(Debug)]
struct Followed {
    slot: usize,
    lane: Arc<Lane>,
    stop: CancellationToken,
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

/// The agent's side of following: the router's lanes and their tasks.
#[derive(Debug)]
struct Follower {
    router: Arc<Router>,
    registry: Registry,
    settings: LaneSettings,
    counters: Report,
    drain: CancellationToken,
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
    let max = settings.max_dopplers;
    let mut follower = Follower {
        router,
        counters: Report::new(&registry),
        registry,
        settings,
        drain: drain.clone(),
        tasks: JoinSet::new(),
    };
    follow::follow(&bus, Side::Ingress, max, &mut follower, &drain).await
}

impl Follow for Follower {
    type Held = Followed;
    type Done = ();

    fn usable(&self, url: &str) -> bool {
        let settings = &self.settings;
        egress::endpoint(url, settings.keepalive_interval, settings.keepalive_timeout).is_ok()
    }

    fn join(&mut self, vacancy: &Vacancy) -> Result<Followed, Refusal> {
        let settings = &self.settings;
        let url = vacancy.url.as_str();
        let endpoint =
            egress::endpoint(url, settings.keepalive_interval, settings.keepalive_timeout)
                .map_err(|_| Refusal::Invalid)?;
        let lane = Arc::new(Lane::new(
            url,
            &self.registry,
            settings.max_batches,
            settings.max_bytes,
            settings.queue_full.clone(),
            settings.fair,
        ));
        let slot = self.router.add_lane(lane.clone()).ok_or(Refusal::OverMax)?;
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
        tracing::info!(doppler = %vacancy.id, %url, "following a newly announced doppler");
        self.counters.added.inc();
        Ok(Followed { slot, lane, stop })
    }

    /// Retires a doppler's lane: the router stops routing to it, its task delivers or counts
    /// what it held.
    fn leave(&mut self, left: Left<Followed>) {
        if left.why == Leave::Lapsed {
            tracing::warn!(doppler = %left.id, url = %left.url,
                "doppler announcement lapsed; its sources move to the others");
            self.counters.lapsed.inc();
        }
        self.router.retire(left.held.slot, &left.held.lane);
        left.held.stop.cancel();
    }

    fn refused(&mut self, why: Refusal, _id: &str, _url: &str) {
        match why {
            Refusal::Invalid => self.counters.invalid.inc(),
            Refusal::OverMax => self.counters.over_max.inc(),
        }
    }

    fn tasks(&mut self) -> &mut JoinSet<()> {
        &mut self.tasks
    }

    fn report(&mut self, announced: &Announced<Followed>) {
        self.counters.followed.set(announced.len() as f64);
    }
}
