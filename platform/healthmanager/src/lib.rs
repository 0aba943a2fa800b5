//! Hydrant's health manager: compares what the cloud controller wants (desired state) with
//! what the executors run (actual state) and closes the gap the controller leaves open —
//! restarting crashed instances on Cloud Foundry's crash back-off — without ever acting
//! destructively on a picture it cannot trust.
//!
//! Flow: `executor.heartbeat.<cell>`, `executor.crash.<cell>` (each vetted against the
//! placements from `executor.placed.*`: a cell speaks only for itself and the instances placed
//! on it; anything else is dropped, counted and logged), `executor.start.*` (bus) → `tracker`
//! (actual state, crash counts, a timer per pending restart) → at each restart's exact due
//! time: `POST /v3/apps/{guid}/instances/{index}/actions/restart` (the controller places a
//! fresh instance and writes `audit.app.process.restart`), or, with the controller
//! unreachable, a copy of the newest overheard `StartInstance` under a fresh instance guid sent
//! straight to an executor with room (never one whose `executor.presence.<cell>` says it is
//! evacuating). Every `converge_interval_secs`: extra instances are
//! stopped when the desired copy (`desired`, polled from the API) is fresh, and held otherwise.
//! Every decision is an `HM` log line in the app's own stream.
//!
//! Invariants:
//! - Never destructive on stale data: stops need a fresh desired-state copy that is newer than
//!   the instance's first sighting; a stale copy only ever produces "Holding" lines.
//! - Restarts follow Diego's schedule exactly and fire at their due time, not at a tick.
//! - The control plane may be down: restarts go on from overheard start requests.
//! - Nothing waits on the network inside the loop: API calls and bus requests run in tasks.
//!
//! # Layout
//! - `config`: [`Config`] and its validation.
//! - `backoff`: the crash restart calculator ([`restart_delay`], [`next_crash_count`]).
//! - `tracker`: actual state, crash counts and the restart schedule.
//! - `lease`: which of several copies acts (`healthmanager.lease` on the bus); the others
//!   track actual state but neither restart nor stop anything.
//! - `desired`: the polled desired-state copy and its freshness.
//! - `metrics`: the health manager's own counters and gauges.

mod backoff;
mod config;
mod desired;
mod error;
mod lease;
mod metrics;
mod tracker;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hydrant_api::RestartInstance;
use hydrant_bus::messages::{
    self, ExecutorCrash, ExecutorHeartbeat, ExecutorReply, InstancePlaced, StartInstance,
    StopInstance,
};
use hydrant_bus::placement::{Placements, Refusal};
use hydrant_bus::{Bus, Message, Subscription};
use hydrant_emitter::{Emitter, Registry};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use backoff::{
    CRASH_RESET, IMMEDIATE_RESTARTS, MAX_BACKOFF, MAX_RESTARTS, MIN_BACKOFF, next_crash_count,
    restart_delay,
};
pub use config::Config;
pub use error::Error;
pub use metrics::{
    DROP_MALFORMED, DROP_NO_COPY, DROP_NO_EXECUTOR, DROP_NOT_PLACED, DROP_TABLE_FULL,
    DROP_WRONG_CELL,
};

use desired::Desired;
use metrics::Metrics;
use tracker::{Due, Key, Tracker, Verdict};

/// The `source_type` of the health manager's lines in an app's stream.
pub const SOURCE_TYPE: &str = "HM";
/// How often a stop for one instance is repeated while it keeps showing.
const STOP_RESEND: Duration = Duration::from_secs(30);
/// How often "Holding" is said per app.
const HOLD_EVERY: Duration = Duration::from_secs(60);
/// How often a restart held back for index 0 looks again whether the app is up.
const ALL_CRASHED_RECHECK: Duration = Duration::from_secs(1);
/// Retry requests from restart tasks waiting for the loop.
const RETRY_QUEUE: usize = 1024;
/// Restarts remembered as skipped for another cell's copy (bounded; past it, one is not
/// remembered and waits for that cell's heartbeats to age out).
const MAX_SUPERSEDED: usize = 4096;
/// The longest presence TTL believed (a cell cannot keep itself alive for longer).
const MAX_PRESENCE_TTL_SECS: u64 = 60;
/// How long shutdown waits for restart and stop tasks.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

hydrant_runtime::role! {
    /// The health manager as a [`hydrant_runtime::Role`]: `hydrant run healthmanager`, and the micro
    /// cloud's.
    pub struct HealthManager {
        name: "healthmanager", config: Config, error: Error, admin: "127.0.0.1:14832" => admin_listen,
        describe: |c| format!("desired state from {}", c.api.urls().join(", ")),
        serve: serve,
    }
}

/// What every restart and stop task needs.
#[derive(Debug)]
struct Shared {
    bus: Bus,
    /// The cloud controller, and the token every call carries.
    api: Arc<hydrant_runtime::ApiClient>,
    desired: Arc<Desired>,
    emitter: Option<Emitter>,
    metrics: Metrics,
    timeout: Duration,
    retry: Duration,
}

impl Shared {
    /// Says `line` in the app's stream (source type `HM`) and in the health manager's log.
    fn say(&self, app: &str, index: Option<u32>, line: &str) {
        tracing::info!(app, index, "{line}");
        if let Some(emitter) = &self.emitter {
            let instance = index.map(|i| i.to_string()).unwrap_or_default();
            emitter.log(app, &instance, SOURCE_TYPE, line.as_bytes(), false);
        }
    }
}

/// One restart to carry out.
#[derive(Debug)]
struct Job {
    key: Key,
    count: u32,
    instance: Option<String>,
    use_api: bool,
    copy: Option<StartInstance>,
    candidates: Vec<String>,
    first_attempt: bool,
}

enum ApiOutcome {
    Restarted,
    Refused(String),
    Unreachable(String),
}

fn new_guid() -> String {
    let hex = format!("{:032x}", fastrand::u128(..));
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

async fn api_restart(
    shared: &Shared,
    key: &Key,
    count: u32,
    instance: Option<String>,
) -> ApiOutcome {
    let client = match shared.api.authorized().await {
        Ok(client) => client,
        Err(e) => return ApiOutcome::Unreachable(e),
    };
    let request = RestartInstance {
        reason: Some(format!(
            "health manager: crash back-off elapsed (crash {count} of {MAX_RESTARTS})"
        )),
        crash_count: Some(count),
        instance,
    };
    let call = client.restart_instance(&key.0, key.1, &request);
    match tokio::time::timeout(shared.timeout, call).await {
        Ok(Ok(_)) => ApiOutcome::Restarted,
        Ok(Err(e)) => match e.status() {
            Some(404 | 422) => ApiOutcome::Refused(e.detail().unwrap_or("refused").to_owned()),
            _ => ApiOutcome::Unreachable(e.to_string()),
        },
        Err(_) => ApiOutcome::Unreachable(format!(
            "no answer within {} ms",
            shared.timeout.as_millis()
        )),
    }
}

async fn send_start(shared: &Shared, executor_id: &str, start: &StartInstance) -> bool {
    let Ok(payload) = messages::encode(start) else {
        return false;
    };
    // The placement first, so consumers (the router, the cloud controller) know the instance
    // is this cell's before its first heartbeat or route registration.
    if let Err(error) = shared.bus.publish_json(
        &messages::executor_placed_subject(executor_id),
        &InstancePlaced::from(start),
    ) {
        tracing::warn!(%error, executor_id, "health manager: cannot announce a placement");
    }
    let subject = messages::executor_start_subject(executor_id);
    match shared.bus.request(&subject, payload, shared.timeout).await {
        Ok(reply) => reply.json::<ExecutorReply>().is_ok_and(|r| r.accepted),
        Err(_) => false,
    }
}

/// Carries out one restart; `true` when an instance was started (or the controller took it).
async fn restart(shared: &Shared, job: Job) -> bool {
    let (app, index) = (&job.key.0, job.key.1);
    if job.use_api {
        match api_restart(shared, &job.key, job.count, job.instance.clone()).await {
            ApiOutcome::Restarted => {
                shared.metrics.restarts_api.inc();
                shared.say(app, Some(index), &tracker::restart_line(index, job.count));
                return true;
            }
            ApiOutcome::Refused(detail) => {
                shared.say(
                    app,
                    Some(index),
                    &format!("Not restarting instance {index}: {detail}"),
                );
                return true;
            }
            ApiOutcome::Unreachable(e) => {
                tracing::warn!(app, index, error = %e, "health manager: restart via the API failed");
                shared.desired.distrust(e);
            }
        }
    }
    let retry_secs = shared.retry.as_secs();
    let Some(copy) = job.copy else {
        shared.metrics.dropped_no_copy.inc();
        if job.first_attempt {
            shared.say(
                app,
                Some(index),
                &format!(
                    "Cannot restart instance {index} yet: the cloud controller is unreachable \
                     and no start request for it was overheard; retrying every {retry_secs} s"
                ),
            );
        }
        return false;
    };
    for executor_id in &job.candidates {
        let mut start = copy.clone();
        start.instance = new_guid();
        start.executor_id.clone_from(executor_id);
        if send_start(shared, executor_id, &start).await {
            shared.metrics.restarts_bus.inc();
            shared.say(
                app,
                Some(index),
                &format!(
                    "{} on executor {executor_id} from the last start request: the cloud \
                     controller is unreachable",
                    tracker::restart_line(index, job.count)
                ),
            );
            return true;
        }
    }
    shared.metrics.dropped_no_executor.inc();
    if job.first_attempt {
        shared.say(
            app,
            Some(index),
            &format!(
                "Cannot restart instance {index} yet: no executor accepted it ({} asked); \
                 retrying every {retry_secs} s",
                job.candidates.len()
            ),
        );
    }
    false
}

/// The loop's own state.
struct Loop {
    shared: Arc<Shared>,
    tracker: Tracker,
    /// Which cell runs which instance, from `executor.placed.*`.
    placements: Placements,
    tasks: TaskTracker,
    retries: mpsc::Sender<(Key, bool)>,
    attempts: HashMap<Key, u32>,
    holds: HashMap<String, Instant>,
    /// Restarts waiting for index 0 because every instance of their app is crashed; each
    /// says so once.
    deferred: HashSet<Key>,
    /// Restarts skipped because other cells' heartbeats showed the index running, with when
    /// and those cells: if all of them are lost (their presence lapses), the restart is due
    /// again at once instead of waiting for their heartbeats to age out.
    superseded: HashMap<Key, (Instant, Vec<String>)>,
    grace: Duration,
    shutdown: CancellationToken,
    /// Only the lease holder restarts and stops; a standby keeps its picture warm.
    lease: lease::Lease,
}

impl Loop {
    /// Applies every placement waiting, so a report is vetted against all placements
    /// published before it.
    fn learn_placements(&mut self, placed: &mut Subscription) {
        while let Some(message) = placed.try_next() {
            self.learn_placement(&message);
        }
    }

    fn learn_placement(&mut self, message: &Message) {
        if !self.placements.learn(message) {
            self.shared.metrics.dropped_malformed.inc();
        }
    }

    /// Counts and logs a cell's report the placement check refused; nothing acts on it.
    fn refuse(&self, refusal: Refusal, subject: &str, executor_id: &str, instance: &str) {
        self.shared.metrics.refused(refusal);
        tracing::warn!(
            %subject,
            executor_id = %executor_id.escape_debug(),
            instance = %instance.escape_debug(),
            reason = refusal.reason(),
            "health manager: dropped a report from a cell about an instance it does not run"
        );
    }

    fn on_heartbeat(&mut self, message: &Message) {
        let mut heartbeat = match message.json::<ExecutorHeartbeat>() {
            Ok(hb) if !hb.executor_id.is_empty() => hb,
            _ => {
                self.shared.metrics.dropped_malformed.inc();
                return;
            }
        };
        match self
            .placements
            .vet_heartbeat(&message.subject, &mut heartbeat)
        {
            Ok(forged) => {
                for instance in &forged {
                    self.refuse(
                        Refusal::NotPlaced,
                        &message.subject,
                        &heartbeat.executor_id,
                        instance,
                    );
                }
            }
            Err(refusal) => {
                self.refuse(refusal, &message.subject, &heartbeat.executor_id, "(all)");
                return;
            }
        }
        let (crashed, full) = self.tracker.heartbeat(heartbeat, Instant::now());
        self.shared.metrics.dropped_table_full.add(full as u64);
        for c in crashed {
            self.on_crash(&c.key, &c.instance);
        }
    }

    fn on_crash_message(&mut self, message: &Message) {
        match message.json::<ExecutorCrash>() {
            Ok(crash) if !crash.app.is_empty() && !crash.instance.is_empty() => {
                if let Err(refusal) = self.placements.vet_crash(&message.subject, &crash) {
                    self.refuse(
                        refusal,
                        &message.subject,
                        &crash.executor_id,
                        &crash.instance,
                    );
                    return;
                }
                self.on_crash(&(crash.app, crash.index), &crash.instance);
            }
            _ => self.shared.metrics.dropped_malformed.inc(),
        }
    }

    fn on_crash(&mut self, key: &Key, instance: &str) {
        let now = Instant::now();
        let index = key.1;
        match self.tracker.crash(key, instance, now) {
            Ok(Some(Verdict::Restart { count, delay, .. })) => {
                self.shared.metrics.crashes.inc();
                self.attempts.remove(key);
                if !delay.is_zero() {
                    self.shared.say(
                        &key.0,
                        Some(index),
                        &format!(
                            "Instance {index} crashed (crash {count} of {MAX_RESTARTS}); \
                             restarting in {} s",
                            delay.as_secs()
                        ),
                    );
                }
            }
            Ok(Some(Verdict::GiveUp { count })) => {
                self.shared.metrics.crashes.inc();
                self.shared.metrics.gave_up.inc();
                self.shared.say(
                    &key.0,
                    Some(index),
                    &format!("Giving up on instance {index} after {count} crashes"),
                );
            }
            Ok(None) => {}
            Err(()) => self.shared.metrics.dropped_table_full.inc(),
        }
    }

    fn on_start(&mut self, message: &Message) {
        match message.json::<StartInstance>() {
            Ok(start) if !start.app.is_empty() && !start.instance.is_empty() => {
                if !self.tracker.overhear(start, Instant::now()) {
                    self.shared.metrics.dropped_table_full.inc();
                }
            }
            _ => self.shared.metrics.dropped_malformed.inc(),
        }
    }

    /// Takes in another copy's (or this copy's own, echoed) lease claim.
    fn on_claim(&mut self, message: &Message) {
        match message.json::<lease::Claim>() {
            Ok(claim) => {
                let change = self.lease.observe(&claim, Instant::now());
                self.lease_changed(change);
            }
            Err(_) => self.shared.metrics.dropped_malformed.inc(),
        }
    }

    /// Renews (or bids for) the lease.
    fn renew_lease(&mut self) {
        let (claim, change) = self.lease.tick(Instant::now());
        if let Some(claim) = claim
            && let Err(error) = self
                .shared
                .bus
                .publish_json(messages::HEALTHMANAGER_LEASE, &claim)
        {
            tracing::warn!(%error, "health manager: cannot publish its lease claim");
        }
        self.lease_changed(change);
    }

    fn lease_changed(&self, change: Option<lease::Change>) {
        match change {
            Some(lease::Change::Acquired) => tracing::info!(
                id = self.lease.id(),
                "health manager: holds the lease; restarting and stopping instances from now on"
            ),
            Some(lease::Change::Lost(why)) => tracing::warn!(
                id = self.lease.id(),
                "health manager: lost the lease ({why}); standing by"
            ),
            None => {}
        }
    }

    /// Starts every restart that is due.
    fn fire_due(&mut self) {
        if !self.lease.holds() {
            return;
        }
        let now = Instant::now();
        let due = self.tracker.take_due(now);
        if due.is_empty() {
            return;
        }
        let snapshot = self.shared.desired.snapshot(now);
        for Due {
            key,
            count,
            instance,
        } in due
        {
            let holders = self.tracker.holders(&key);
            if !holders.is_empty() {
                tracing::debug!(app = %key.0, index = key.1, ?holders, "already running again");
                if self.superseded.len() < MAX_SUPERSEDED {
                    self.superseded.insert(key, (now, holders));
                }
                continue;
            }
            // HM9000's rule: when every instance of an app is crashed, only index 0 restarts;
            // the others follow once it is up, so a crashing app does not restart as a herd.
            if key.1 != 0 && !self.tracker.any_live(&key.0) {
                self.tracker.retry(&key, now + ALL_CRASHED_RECHECK);
                if self.deferred.insert(key.clone()) {
                    self.shared.say(
                        &key.0,
                        Some(key.1),
                        &format!(
                            "Waiting to restart instance {}: every instance of the app is \
                             crashed, so index 0 restarts first",
                            key.1
                        ),
                    );
                }
                continue;
            }
            self.deferred.remove(&key);
            if let Some(apps) = &snapshot.apps {
                // A start overheard after the copy was fetched means the app was started or
                // scaled since: the copy's "stopped" or instance count is behind.
                let newer_start = snapshot
                    .fetched_at
                    .is_some_and(|at| self.tracker.overheard_after(&key, at));
                let verdict = match apps.get(&key.0) {
                    // An app pushed since the last poll is not in the copy yet; a start
                    // overheard for it says it exists, and the API refuses if it was deleted.
                    None if snapshot.fresh && self.tracker.overheard(&key).is_none() => {
                        Some("the app no longer exists".to_owned())
                    }
                    None => None,
                    Some(a) if a.state != hydrant_api::AppState::Started && !newer_start => {
                        Some("the app is stopped".to_owned())
                    }
                    Some(a) if key.1 >= a.instances && !newer_start => {
                        Some(format!("the app wants {} instance(s)", a.instances))
                    }
                    Some(_) => None,
                };
                if let Some(why) = verdict {
                    self.shared.say(
                        &key.0,
                        Some(key.1),
                        &format!("Not restarting instance {}: {why}", key.1),
                    );
                    continue;
                }
            }
            let copy = self.tracker.overheard(&key).cloned();
            let candidates = copy.as_ref().map_or_else(Vec::new, |c| {
                self.tracker.candidates(&key.0, c.memory_mb, &c.executor_id)
            });
            let attempt = self.attempts.entry(key.clone()).or_insert(0);
            let job = Job {
                key: key.clone(),
                count,
                instance,
                use_api: snapshot.fresh,
                copy,
                candidates,
                first_attempt: *attempt == 0,
            };
            *attempt = attempt.saturating_add(1);
            let shared = Arc::clone(&self.shared);
            let retries = self.retries.clone();
            let shutdown = self.shutdown.clone();
            self.tasks.spawn(async move {
                let key = job.key.clone();
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    done = restart(&shared, job) => {
                        let _ = retries.send((key, done)).await;
                    }
                }
            });
        }
    }

    /// Stops extras on a fresh copy, holds on a stale one, and forgets what went quiet.
    /// Forgets the cells whose presence lapsed; a restart skipped only because one of them
    /// still showed the index running is due again now.
    fn lapse_presences(&mut self) {
        let now = Instant::now();
        let lost = self.tracker.lapse(now);
        if lost.is_empty() {
            return;
        }
        tracing::info!(?lost, "health manager: cells lost (presence lapsed)");
        let mut due = Vec::new();
        self.superseded.retain(|key, (_, holders)| {
            holders.retain(|h| !lost.contains(h));
            if holders.is_empty() {
                due.push(key.clone());
                return false;
            }
            true
        });
        for key in due {
            self.tracker.retry(&key, now);
        }
    }

    fn converge(&mut self) {
        let now = Instant::now();
        let timeout = self.tracker.executor_timeout();
        self.superseded
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < timeout);
        let snapshot = self.shared.desired.snapshot(now);
        self.shared
            .metrics
            .desired_age_seconds
            .set(snapshot.age.map_or(-1.0, |a| a.as_secs_f64()));
        let fresh = match (&snapshot.apps, snapshot.fetched_at) {
            (Some(apps), Some(at)) if snapshot.fresh => Some((apps.as_ref(), at)),
            _ => None,
        };
        self.tracker.prune(now, fresh);
        let tracker = &self.tracker;
        self.deferred.retain(|key| tracker.crash_count(key) > 0);
        self.holds
            .retain(|_, at| now.saturating_duration_since(*at) < HOLD_EVERY);
        let (Some(apps), Some(fetched_at)) = (&snapshot.apps, snapshot.fetched_at) else {
            return;
        };
        if !snapshot.fresh {
            let held = self.tracker.would_stop(apps);
            if !held.is_empty() {
                self.shared.metrics.holds.inc();
            }
            let age = snapshot.age.map_or(0, |a| a.as_secs());
            for app in held {
                if self.holds.contains_key(&app) {
                    continue;
                }
                self.holds.insert(app.clone(), now);
                self.shared.say(
                    &app,
                    None,
                    &format!(
                        "Holding: desired state is {age} s old, so no instance of this app is \
                         stopped until the cloud controller answers again"
                    ),
                );
            }
            return;
        }
        if !self.lease.holds() {
            return;
        }
        for extra in self
            .tracker
            .extras(apps, fetched_at, now, self.grace, STOP_RESEND)
        {
            self.shared.metrics.stops.inc();
            self.shared.say(
                &extra.app,
                Some(extra.index),
                &format!(
                    "Stopping instance {} ({}) on executor {}: {}",
                    extra.index, extra.instance, extra.executor_id, extra.reason
                ),
            );
            let stop = StopInstance {
                executor_id: extra.executor_id.clone(),
                app: extra.app,
                instance: Some(extra.instance),
                reason: Some(format!("health manager: {}", extra.reason)),
            };
            let Ok(payload) = messages::encode(&stop) else {
                continue;
            };
            let shared = Arc::clone(&self.shared);
            self.tasks.spawn(async move {
                // Fire and forget: the next pass repeats it while the instance still shows.
                let subject = messages::executor_stop_subject(&extra.executor_id);
                let _ = shared.bus.request(&subject, payload, shared.timeout).await;
            });
        }
    }
}

/// Runs the health manager until `shutdown` is cancelled.
async fn serve(
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let metrics = Metrics::new(&registry);
    let bus = Bus::connect(&config.bus, &registry).await?;
    let emitter_stop = CancellationToken::new();
    let _emitter_guard = emitter_stop.clone().drop_guard();
    let emitter = config.telemetry.start(&registry, emitter_stop.clone());

    // Each cell on its own subject (the only ones its bus identity may publish).
    let mut placed = bus
        .subscribe(&messages::every_cell(messages::EXECUTOR_PLACED))
        .await?;
    let mut heartbeats = bus
        .subscribe(&messages::every_cell(messages::EXECUTOR_HEARTBEAT))
        .await?;
    let mut crashes = bus
        .subscribe(&messages::every_cell(messages::EXECUTOR_CRASH))
        .await?;
    let mut starts = bus
        .subscribe(&format!("{}.*", messages::EXECUTOR_START))
        .await?;
    // Cell presences: a restart never goes to an evacuating cell.
    let mut presences = bus
        .subscribe(&messages::every_cell(messages::EXECUTOR_PRESENCE))
        .await?;
    // Learn the executors now rather than at their next heartbeat.
    let _ = bus.publish(messages::EXECUTOR_GREET, bytes::Bytes::new());

    let desired = Arc::new(Desired::new(&config));
    let api = Arc::new(config.api.connect_in(&registry)?);
    let shared = Arc::new(Shared {
        bus: bus.clone(),
        api: Arc::clone(&api),
        desired: Arc::clone(&desired),
        emitter: emitter.clone(),
        metrics: metrics.clone(),
        timeout: config.request_timeout(),
        retry: Config::secs(config.retry_secs),
    });
    let tasks = TaskTracker::new();
    tasks.spawn(desired::poll(
        desired,
        api,
        Config::secs(config.poll_interval_secs),
        config.request_timeout(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let (retry_tx, mut retry_rx) = mpsc::channel(RETRY_QUEUE);
    let mut state = Loop {
        shared: Arc::clone(&shared),
        tracker: Tracker::new(
            Config::secs(config.executor_timeout_secs),
            config.max_tracked,
        ),
        placements: Placements::new(config.max_tracked),
        tasks: tasks.clone(),
        retries: retry_tx,
        attempts: HashMap::new(),
        holds: HashMap::new(),
        deferred: HashSet::new(),
        superseded: HashMap::new(),
        grace: Config::secs(config.extra_grace_secs),
        shutdown: shutdown.clone(),
        lease: lease::Lease::new(
            config
                .instance_id
                .clone()
                .unwrap_or_else(lease::generated_id),
            config.lease_ttl(),
            config.lease_renew(),
        ),
    };
    let mut claims = bus.subscribe(messages::HEALTHMANAGER_LEASE).await?;
    let lease_held = registry.gauge(
        "healthmanager.lease_held",
        "1 while this copy holds the lease and acts, 0 while it stands by",
        "count",
        &[],
    );
    let mut renewals = tokio::time::interval(config.lease_renew());
    renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let retry = Config::secs(config.retry_secs);
    let mut ticks = tokio::time::interval(Config::secs(config.converge_interval_secs));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(api = %config.api.urls().join(", "), bus = %bus.url(), "health manager watching executors");

    loop {
        // A standby fires nothing: what falls due waits for the lease.
        let next_due = state
            .lease
            .holds()
            .then(|| state.tracker.next_due())
            .flatten();
        // A cell's presence lapsing is news too: wake for it.
        let next_due = match (next_due, state.tracker.next_lapse()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(message) = placed.next() => state.learn_placement(&message),
            Some(message) = heartbeats.next() => {
                state.learn_placements(&mut placed);
                state.on_heartbeat(&message);
            }
            Some(message) = crashes.next() => {
                state.learn_placements(&mut placed);
                state.on_crash_message(&message);
            }
            Some(message) = starts.next() => state.on_start(&message),
            Some(message) = presences.next() => {
                if let Ok(p) = message.json::<messages::CellPresence>()
                    && messages::cell_of(&message.subject, messages::EXECUTOR_PRESENCE) == Some(p.id.as_str())
                {
                    let ttl = Duration::from_secs(p.ttl_secs.clamp(1, MAX_PRESENCE_TTL_SECS));
                    state.tracker.presence(
                        &p.id,
                        p.state == messages::CellState::Evacuating,
                        Instant::now() + ttl,
                    );
                }
            }
            Some((key, done)) = retry_rx.recv() => {
                if done {
                    state.attempts.remove(&key);
                } else {
                    state.tracker.retry(&key, Instant::now() + retry);
                }
            }
            () = sleep_until(next_due) => {}
            _ = ticks.tick() => state.converge(),
            Some(message) = claims.next() => state.on_claim(&message),
            _ = renewals.tick() => state.renew_lease(),
        }
        lease_held.set(if state.lease.holds() { 1.0 } else { 0.0 });
        state.lapse_presences();
        state.fire_due();
        metrics.pending_restarts.set(state.tracker.pending() as f64);
    }

    tasks.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait()).await;
    emitter_stop.cancel();
    if let Some(emitter) = &emitter {
        emitter.stopped().await;
    }
    Ok(())
}

/// Sleeps until `due`, or forever when nothing is scheduled.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
