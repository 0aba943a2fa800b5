//! Placement and convergence: making the instances executors run match the desired state.
//!
//! Flow: `executor.heartbeat.<cell>` (vetted against the placements announced on
//! `executor.placed.*`: a cell speaks only for itself and the instances placed on it; anything
//! else is dropped, counted as `cloudcontroller.dropped{reason}` and logged) → the executor
//! table (capacity, usage, instances) →
//! [`Placement::converge`] (every `converge_interval_ms` and whenever something changes) →
//! `StartInstance` requests for desired instances not seen in any heartbeat (placed on the
//! executor with room that runs the fewest of the app's instances, then the most free
//! memory; a refusal moves on to the next) and `StopInstance` requests for instances nobody
//! wants (stopped or deleted apps, indexes above the desired count, duplicates, instances
//! replaced by a restart); each start is announced first on `executor.placed.<cell>` (without
//! the environment) for the router and the health manager. `executor.crash.<cell>`, vetted the
//! same way, becomes an `audit.app.process.crash` event.
//!
//! Cells: `executor.presence.<cell>` (zone, capacity, free memory, disk and slots, state) keeps
//! a cell alive for its TTL (15 s). Where an instance goes is the auction's answer (`auction`:
//! Diego's scoring). A presence that lapses wakes the loop at that instant (no sweep): the cell
//! is lost, its instances become suspects and are placed elsewhere at once, while the router
//! keeps their routes until they age out; a lost cell that comes back has its suspects stopped
//! where a replacement runs (kept where none does). An evacuating cell (`hydrant drain-cell`,
//! or SIGTERM on the executor) takes no new work; each of its instances gets a replacement and
//! is stopped only once that replacement is RUNNING.
//!
//! Invariants: every request is idempotent and re-sent by the next pass until a heartbeat
//! shows it took effect, so a lost message is repaired rather than retried in a storm; crashed
//! instances are left alone (restarting them is the health manager's job) but count as
//! present, so they are not placed twice; nothing is placed on an executor whose last
//! heartbeat is older than `executor_timeout_secs` (or whose presence outlived its TTL).

mod auction;
pub(crate) mod cells;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hydrant_api::{App, AppState, CrashInfo, InstanceInfo, ProcessStats};
use hydrant_auth::Claims;
use hydrant_bus::messages::{
    self, CellPresence, CellState, EvacuateCell, ExecutorCrash, ExecutorHeartbeat, ExecutorReply,
    HealthCheck, HealthCheckType, InstanceHeartbeat, InstancePlaced, InstanceState, StartInstance,
    StopInstance,
};
use hydrant_bus::placement::{Placements, Refusal};
use hydrant_bus::{Bus, Message, Subscription};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Ctx, db, password};

/// How long a restart remembers the instances it replaced (they are stopped if seen again).
const RETIRED_TTL: Duration = Duration::from_secs(600);
/// How long a lost cell stays listed (`hydrant cells` shows it as lost).
const LOST_TTL: Duration = Duration::from_secs(3600);
/// Most lost cells listed; the oldest are forgotten first.
const MAX_LOST: usize = 1024;

type Key = (String, u32);

#[derive(Debug)]
struct Executor {
    heartbeat: ExecutorHeartbeat,
    presence: Option<CellPresence>,
    seen: Instant,
    /// A heartbeat came: `heartbeat.instances` is the cell's own list, not an empty stand-in
    /// made from its presence.
    heard: bool,
}

impl Executor {
    /// How long the cell lives without news: its presence's TTL, or, for a cell that only
    /// heartbeats, `fallback` (`executor_timeout_secs`).
    fn ttl(&self, fallback: Duration) -> Duration {
        self.presence.as_ref().map_or(fallback, CellPresence::ttl)
    }

    fn evacuating(&self) -> bool {
        self.presence
            .as_ref()
            .is_some_and(|p| p.state == CellState::Evacuating)
    }

    fn zone(&self) -> &str {
        self.presence.as_ref().map_or("", CellPresence::zone)
    }
}

/// A cell whose presence lapsed.
#[derive(Debug, Clone)]
struct LostCell {
    zone: String,
    presence: Option<CellPresence>,
    /// When it was declared lost, UNIX nanoseconds.
    since: i64,
    at: Instant,
    instances: usize,
}

#[derive(Debug, Clone)]
struct Pending {
    instance: String,
    executor_id: String,
    memory_mb: u64,
    disk_mb: u64,
    sent: Instant,
}

#[derive(Debug, Default)]
struct Table {
    executors: BTreeMap<String, Executor>,
    pending: HashMap<Key, Pending>,
    placement_errors: HashMap<Key, String>,
    crashes: HashMap<Key, CrashInfo>,
    retired: HashMap<String, Instant>,
    stops_sent: HashMap<String, Instant>,
    /// Cells whose presence lapsed.
    lost: BTreeMap<String, LostCell>,
    /// Instances on a cell when it was lost (Diego's Suspect): replaced, and stopped if their
    /// cell comes back while the replacement runs.
    suspects: HashMap<String, Instant>,
    /// Cells asked to evacuate whose presence does not say so yet (the request is re-sent).
    draining: HashMap<String, Instant>,
    /// Cells to kill (`hydrant debug kill-cell`), published by the next pass.
    kills: Vec<String>,
}

impl Table {
    /// Is the cell moving its instances away (its presence says so, or it was asked)?
    fn evacuating(&self, executor_id: &str) -> bool {
        self.draining.contains_key(executor_id)
            || self
                .executors
                .get(executor_id)
                .is_some_and(Executor::evacuating)
    }

    /// When the next cell's presence lapses.
    fn next_expiry(&self, fallback: Duration) -> Option<Instant> {
        self.executors
            .values()
            .map(|e| e.seen + e.ttl(fallback))
            .min()
    }
}

/// The executor table and the convergence loop's state.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    table: Mutex<Table>,
    wake: Notify,
}

/// What one app needs from the database to be placed.
#[derive(Debug, Clone)]
struct Desired {
    app: App,
    droplet: Option<hydrant_api::Droplet>,
    /// Where the app's bindings point: the only host ports its containers may open.
    egress: Vec<hydrant_bus::messages::ServiceEgress>,
}

fn live(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Starting | InstanceState::Running | InstanceState::Crashed
    )
}

fn api_state(state: InstanceState) -> hydrant_api::InstanceState {
    match state {
        InstanceState::Starting => hydrant_api::InstanceState::Starting,
        InstanceState::Running => hydrant_api::InstanceState::Running,
        InstanceState::Crashed => hydrant_api::InstanceState::Crashed,
        InstanceState::Stopping => hydrant_api::InstanceState::Stopping,
        InstanceState::Down => hydrant_api::InstanceState::Down,
    }
}

impl Placement {
    fn lock(&self) -> MutexGuard<'_, Table> {
        hydrant_runtime::lock(&self.table)
    }

    /// Asks for a convergence pass now.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Replaces every instance of `app`: the running ones are stopped and new ones placed.
    pub(crate) fn restart(&self, app: &str) {
        let now = Instant::now();
        let mut table = self.lock();
        let running: Vec<String> = table
            .executors
            .values()
            .flat_map(|e| e.heartbeat.instances.iter())
            .filter(|i| i.app == app)
            .map(|i| i.instance.clone())
            .collect();
        table.retired.extend(running.into_iter().map(|i| (i, now)));
        let pending: Vec<Key> = table
            .pending
            .keys()
            .filter(|(a, _)| a == app)
            .cloned()
            .collect();
        for key in pending {
            if let Some(p) = table.pending.remove(&key) {
                table.retired.insert(p.instance, now);
            }
        }
        table.crashes.retain(|(a, _), _| a != app);
        drop(table);
        self.wake();
    }

    /// Replaces the crashed instance at `index` of `app`: forgets its crash record, retires the
    /// crashed instance (so it no longer counts as present and is stopped) and wakes the loop,
    /// which places a fresh instance guid at once. A live (starting or running) instance at the
    /// index is left alone, so a late or repeated request never kills a healthy instance —
    /// except `crashed`, when given: the caller saw that instance crash, and a crash event may
    /// arrive before the heartbeat showing it. It is only honoured when it is an instance of
    /// this app at this index. Returns the guids retired.
    pub(crate) fn restart_index(
        &self,
        app: &str,
        index: u32,
        crashed: Option<&str>,
    ) -> Vec<String> {
        let now = Instant::now();
        let key = (app.to_owned(), index);
        let mut table = self.lock();
        let at_index: Vec<&InstanceHeartbeat> = table
            .executors
            .values()
            .flat_map(|e| e.heartbeat.instances.iter())
            .filter(|i| {
                i.app == app && i.index == index && !table.retired.contains_key(&i.instance)
            })
            .collect();
        let named = crashed.filter(|guid| {
            at_index.iter().any(|i| i.instance == *guid)
                || table.crashes.get(&key).is_some_and(|c| c.instance == *guid)
        });
        let healthy = at_index.iter().any(|i| {
            matches!(i.state, InstanceState::Starting | InstanceState::Running)
                && Some(i.instance.as_str()) != named
        });
        let mut retired: Vec<String> = if healthy {
            Vec::new()
        } else {
            at_index
                .iter()
                .filter(|i| i.state == InstanceState::Crashed)
                .map(|i| i.instance.clone())
                .collect()
        };
        if let Some(guid) = named
            && !table.retired.contains_key(guid)
            && !retired.iter().any(|r| r == guid)
        {
            retired.push(guid.to_owned());
        }
        if !retired.is_empty() {
            table.crashes.remove(&key);
            // A placement still waiting for its first heartbeat must not be re-sent under a
            // guid just retired, or the crashed instance would come back under its old name.
            if table
                .pending
                .get(&key)
                .is_some_and(|p| retired.contains(&p.instance))
            {
                table.pending.remove(&key);
            }
        }
        table
            .retired
            .extend(retired.iter().map(|i| (i.clone(), now)));
        drop(table);
        self.wake();
        retired
    }

    /// Records a heartbeat.
    fn heartbeat(&self, heartbeat: ExecutorHeartbeat) {
        let mut table = self.lock();
        let id = heartbeat.executor_id.clone();
        returned(&mut table, &id);
        let now = Instant::now();
        match table.executors.get_mut(&id) {
            Some(e) => {
                e.heartbeat = heartbeat;
                e.seen = now;
                e.heard = true;
            }
            None => {
                table.executors.insert(
                    id,
                    Executor {
                        heartbeat,
                        presence: None,
                        seen: now,
                        heard: true,
                    },
                );
            }
        }
    }

    /// Records a presence. Returns `true` when placement should look again at once: a new
    /// cell, or one that started evacuating.
    fn presence(&self, presence: CellPresence) -> bool {
        let mut table = self.lock();
        let id = presence.id.clone();
        returned(&mut table, &id);
        let now = Instant::now();
        if presence.state == CellState::Evacuating {
            table.draining.remove(&id);
        }
        match table.executors.get_mut(&id) {
            Some(e) => {
                let changed = e.presence.as_ref().map(|p| p.state) != Some(presence.state);
                e.presence = Some(presence);
                e.seen = now;
                changed
            }
            None => {
                let heartbeat = ExecutorHeartbeat {
                    executor_id: id.clone(),
                    host: presence.host.clone(),
                    ..ExecutorHeartbeat::default()
                };
                table.executors.insert(
                    id,
                    Executor {
                        heartbeat,
                        presence: Some(presence),
                        seen: now,
                        heard: false,
                    },
                );
                true
            }
        }
    }

    /// Whether cell `id` is known: `Some(evacuating)` (its presence says so), `None` when not.
    pub(crate) fn cell_evacuating(&self, id: &str) -> Option<bool> {
        self.lock().executors.get(id).map(Executor::evacuating)
    }

    /// Asks cell `id` to evacuate (`hydrant drain-cell`) at the next pass. `false` when no
    /// such cell is known. Requests reach here through the database (`cells`), whichever
    /// controller took them.
    pub(crate) fn drain(&self, id: &str) -> bool {
        let mut table = self.lock();
        if !table.executors.contains_key(id) {
            return false;
        }
        if !table.executors.get(id).is_some_and(Executor::evacuating) {
            table
                .draining
                .entry(id.to_owned())
                .or_insert_with(Instant::now);
        }
        true
    }

    /// Asks cell `id` to die as a lost host would (`hydrant debug kill-cell`; only a cell with
    /// `debug_kill` obeys) at the next pass. `false` when no such cell is known.
    pub(crate) fn kill(&self, id: &str) -> bool {
        let mut table = self.lock();
        if !table.executors.contains_key(id) {
            return false;
        }
        if !table.kills.iter().any(|k| k == id) {
            table.kills.push(id.to_owned());
        }
        true
    }

    /// Executors heard from recently.
    pub(crate) fn executor_count(&self) -> usize {
        self.lock().executors.len()
    }

    /// The state of every instance index of `app`.
    pub(crate) fn stats(&self, app: &App) -> ProcessStats {
        let table = self.lock();
        let mut actual: BTreeMap<u32, Vec<(&str, &InstanceHeartbeat)>> = BTreeMap::new();
        for executor in table.executors.values() {
            for i in &executor.heartbeat.instances {
                if i.app == app.guid && !table.retired.contains_key(&i.instance) {
                    actual
                        .entry(i.index)
                        .or_default()
                        .push((&executor.heartbeat.executor_id, i));
                }
            }
        }
        let info = |index: u32, id: &str, i: &InstanceHeartbeat, host: Option<&str>| {
            let crash = (i.state == InstanceState::Crashed)
                .then(|| table.crashes.get(&(app.guid.clone(), index)).cloned())
                .flatten();
            InstanceInfo {
                index,
                state: api_state(i.state),
                instance_guid: Some(i.instance.clone()),
                executor_id: Some(id.to_owned()),
                host: host.map(str::to_owned),
                port: i.port,
                since: i.since,
                placement_error: None,
                crash,
            }
        };
        let host_of = |id: &str| {
            table
                .executors
                .get(id)
                .map(|e| e.heartbeat.host.as_str())
                .filter(|h| !h.is_empty())
        };
        let mut instances = Vec::new();
        let wanted = if app.state == AppState::Started {
            app.instances
        } else {
            0
        };
        for index in 0..wanted {
            let key = (app.guid.clone(), index);
            // A replacement that runs is the one to show; the instance it replaces (on an
            // evacuating or returned cell) is listed after the wanted ones.
            if let Some((id, i)) = actual.get(&index).and_then(|list| {
                list.iter()
                    .find(|(id, i)| i.state == InstanceState::Running && !table.evacuating(id))
                    .or_else(|| list.iter().find(|(_, i)| live(i.state)))
            }) {
                instances.push(info(index, id, i, host_of(id)));
            } else if let Some(p) = table.pending.get(&key) {
                instances.push(InstanceInfo {
                    index,
                    state: hydrant_api::InstanceState::Starting,
                    instance_guid: Some(p.instance.clone()),
                    executor_id: Some(p.executor_id.clone()),
                    ..InstanceInfo::default()
                });
            } else {
                instances.push(InstanceInfo {
                    index,
                    state: hydrant_api::InstanceState::Down,
                    placement_error: table.placement_errors.get(&key).cloned().or_else(|| {
                        app.current_droplet_guid
                            .is_none()
                            .then(|| "the app has no droplet; stage it".to_owned())
                    }),
                    ..InstanceInfo::default()
                });
            }
        }
        for (index, list) in &actual {
            for (id, i) in list {
                let shown = *index < wanted
                    && instances
                        .get(*index as usize)
                        .is_some_and(|s| s.instance_guid.as_deref() == Some(i.instance.as_str()));
                if !shown {
                    instances.push(info(*index, id, i, host_of(id)));
                }
            }
        }
        ProcessStats {
            app_guid: app.guid.clone(),
            state: app.state,
            desired_instances: app.instances,
            instances,
        }
    }
}

/// Subscriptions the loop reads; made before the API serves, so no heartbeat is missed.
#[derive(Debug)]
pub(crate) struct Feeds {
    placed: Subscription,
    heartbeats: Subscription,
    crashes: Subscription,
    presence: Subscription,
}

pub(crate) async fn subscribe(bus: &Bus) -> Result<Feeds, hydrant_bus::Error> {
    // Each cell on its own subject (the only ones its bus identity may publish).
    let every = messages::every_cell;
    let feeds = Feeds {
        placed: bus.subscribe(&every(messages::EXECUTOR_PLACED)).await?,
        heartbeats: bus.subscribe(&every(messages::EXECUTOR_HEARTBEAT)).await?,
        crashes: bus.subscribe(&every(messages::EXECUTOR_CRASH)).await?,
        presence: bus.subscribe(&every(messages::EXECUTOR_PRESENCE)).await?,
    };
    // Learn the executors now rather than at their next heartbeat (up to 10 s away), so the
    // first push after a (re)start is placed at once.
    bus.publish(messages::EXECUTOR_GREET, bytes::Bytes::new())?;
    Ok(feeds)
}

/// Runs the convergence loop until `shutdown`.
pub(crate) async fn run(ctx: Arc<Ctx>, bus: Bus, mut feeds: Feeds, shutdown: CancellationToken) {
    let interval = Duration::from_millis(ctx.config.converge_interval_ms);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut placements = Placements::default();
    let fallback = Duration::from_secs(ctx.config.executor_timeout_secs);
    loop {
        // Event-driven failure detection: the loop wakes the instant the next presence lapses.
        let expiry = ctx.placement.lock().next_expiry(fallback);
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = sleep_until(expiry) => {
                // A presence already received is no lapse: after a slow pass (the database)
                // the timer and queued presences are ready together, and the timer must not
                // win and declare live cells lost.
                while let Some(message) = feeds.presence.try_next() {
                    presence(&ctx, &message);
                }
                converge(&ctx, &bus).await;
            }
            Some(message) = feeds.presence.next() => {
                if presence(&ctx, &message) {
                    converge(&ctx, &bus).await;
                }
            }
            Some(message) = feeds.placed.next() => learn(&ctx, &mut placements, &message),
            message = feeds.heartbeats.next() => {
                let Some(message) = message else { break };
                // Every placement announced before this heartbeat first.
                while let Some(placed) = feeds.placed.try_next() {
                    learn(&ctx, &mut placements, &placed);
                }
                match message.json::<ExecutorHeartbeat>() {
                    Ok(mut hb) if !hb.executor_id.is_empty() => {
                        match placements.vet_heartbeat(&message.subject, &mut hb) {
                            Ok(forged) => {
                                for instance in &forged {
                                    refused(&ctx, Refusal::NotPlaced, &message.subject, &hb.executor_id, instance);
                                }
                            }
                            Err(refusal) => {
                                refused(&ctx, refusal, &message.subject, &hb.executor_id, "(all)");
                                continue;
                            }
                        }
                        ctx.metrics.heartbeats.inc();
                        // The first heartbeat of a cell known so far only by its presence
                        // is news too: its instances were unknown until now.
                        let known = ctx.placement.lock().executors
                            .get(&hb.executor_id)
                            .is_some_and(|e| e.heard);
                        ctx.placement.heartbeat(hb);
                        if !known {
                            converge(&ctx, &bus).await;
                        }
                        continue;
                    }
                    _ => ctx.metrics.dropped_malformed.inc(),
                }
            }
            message = feeds.crashes.next() => {
                let Some(message) = message else { break };
                while let Some(placed) = feeds.placed.try_next() {
                    learn(&ctx, &mut placements, &placed);
                }
                match message.json::<ExecutorCrash>() {
                    Ok(crash) => match placements.vet_crash(&message.subject, &crash) {
                        Ok(()) => record_crash(&ctx, crash).await,
                        Err(refusal) => refused(&ctx, refusal, &message.subject, &crash.executor_id, &crash.instance),
                    },
                    Err(_) => ctx.metrics.dropped_malformed.inc(),
                }
            }
            () = ctx.placement.wake.notified() => converge(&ctx, &bus).await,
            _ = ticks.tick() => converge(&ctx, &bus).await,
        }
    }
}

/// Applies one `executor.presence.<cell>` message; `true` when placement should look again.
fn presence(ctx: &Ctx, message: &Message) -> bool {
    match message.json::<CellPresence>() {
        Ok(p)
            if messages::cell_of(&message.subject, messages::EXECUTOR_PRESENCE)
                == Some(p.id.as_str()) =>
        {
            ctx.placement.presence(p)
        }
        Ok(p) => {
            refused(
                ctx,
                Refusal::WrongCell,
                &message.subject,
                &p.id,
                "(presence)",
            );
            false
        }
        Err(_) => {
            ctx.metrics.dropped_malformed.inc();
            false
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn learn(ctx: &Ctx, placements: &mut Placements, message: &Message) {
    if !placements.learn(message) {
        ctx.metrics.dropped_malformed.inc();
    }
}

/// Counts and logs a cell's report the placement check refused; nothing acts on it.
fn refused(ctx: &Ctx, refusal: Refusal, subject: &str, executor_id: &str, instance: &str) {
    match refusal {
        Refusal::WrongCell => ctx.metrics.dropped_wrong_cell.inc(),
        Refusal::NotPlaced => ctx.metrics.dropped_not_placed.inc(),
    }
    tracing::warn!(
        %subject,
        executor_id = %executor_id.escape_debug(),
        instance = %instance.escape_debug(),
        reason = refusal.reason(),
        "cloud controller: dropped a report from a cell about an instance it does not run"
    );
}

async fn record_crash(ctx: &Arc<Ctx>, crash: ExecutorCrash) {
    ctx.metrics.crashes.inc();
    let info = CrashInfo {
        instance: crash.instance.clone(),
        reason: crash.reason.clone(),
        exit_status: crash.exit_status,
        exit_description: crash.exit_description.clone(),
        crash_count: crash.crash_count,
        crash_timestamp: crash.crash_timestamp,
    };
    ctx.placement
        .lock()
        .crashes
        .insert((crash.app.clone(), crash.index), info);
    let app_guid = crash.app.clone();
    let data = serde_json::json!({
        "instance": crash.instance,
        "index": crash.index,
        "cell_id": crash.executor_id,
        "reason": crash.reason,
        "exit_status": crash.exit_status,
        "exit_description": crash.exit_description,
        "crash_count": crash.crash_count,
        "crash_timestamp": crash.crash_timestamp,
    });
    // Every controller hears the crash; the placement lease's holder records it, once.
    if !crate::lease::held(&ctx.db, crate::lease::PLACEMENT, &ctx.node).await {
        return;
    }
    let actor = format!("executor:{}", crash.executor_id);
    let event_data = data.clone();
    let recorded = ctx
        .db
        .run(move |c| {
            let Some(app) = db::get_app(c, &app_guid)? else {
                return Ok(false);
            };
            crate::api::record_event(c, "audit.app.process.crash", &actor, &app, event_data)?;
            Ok(true)
        })
        .await;
    match recorded {
        Ok(true) => ctx.logs.api(
            &crash.app,
            &format!(
                "App instance exited with guid {} payload: {data}",
                crash.app
            ),
        ),
        Ok(false) => ctx.metrics.dropped_unknown_app.inc(),
        Err(e) => tracing::warn!(?e, "recording a crash failed"),
    }
}

/// One convergence pass, by the controller holding the placement lease only: two
/// controllers on one database would otherwise both start the missing instances.
pub(crate) async fn converge(ctx: &Arc<Ctx>, bus: &Bus) {
    // Every controller keeps its view of the cells current, lease or not: `hydrant cells` and
    // `hydrant app` reach any controller behind the routers, and one without the lease must not
    // show a dead cell healthy and its instances running. Only the holder acts on it.
    expire(ctx);
    if !crate::lease::held(&ctx.db, crate::lease::PLACEMENT, &ctx.node).await {
        return;
    }
    // Drains and kills any controller took, carried out by this one, the lease's holder.
    cells::carry_out(ctx).await;
    let desired = match load_desired(ctx).await {
        Ok(desired) => desired,
        Err(e) => {
            tracing::warn!(?e, "convergence cannot read desired state");
            return;
        }
    };
    let resend_after = Duration::from_millis(ctx.config.converge_interval_ms / 2);
    let Plan {
        stops,
        resends,
        missing,
        evacuate,
        kill,
    } = plan(ctx, &desired, resend_after);
    for (subject, cell, reason) in evacuate
        .into_iter()
        .map(|c| {
            (
                messages::executor_evacuate_subject(&c),
                c,
                "hydrant drain-cell",
            )
        })
        .chain(kill.into_iter().map(|c| {
            (
                messages::executor_kill_subject(&c),
                c,
                "hydrant debug kill-cell",
            )
        }))
    {
        let request = EvacuateCell {
            executor_id: cell,
            reason: Some(reason.to_owned()),
        };
        if let Err(error) = bus.publish_json(&subject, &request) {
            tracing::warn!(%error, %subject, "cloud controller: cannot ask a cell to leave");
        }
    }
    for (executor_id, stop) in stops {
        ctx.metrics.stops.inc();
        let Ok(payload) = messages::encode(&stop) else {
            continue;
        };
        // Fire and forget: the next pass re-sends while the instance still shows.
        let bus = bus.clone();
        let timeout = request_timeout(ctx);
        tokio::spawn(async move {
            let _ = bus
                .request(
                    &messages::executor_stop_subject(&executor_id),
                    payload,
                    timeout,
                )
                .await;
        });
    }
    for (key, pending) in resends {
        if let Some(d) = desired.get(&key.0) {
            let start = start_message(ctx, d, key.1, &pending.instance, &pending.executor_id);
            if let Some(start) = start {
                let _ = send_start(ctx, bus, &pending.executor_id, &start).await;
            }
        }
    }
    for key in missing {
        let Some(d) = desired.get(&key.0) else {
            continue;
        };
        place(ctx, bus, d, key.1).await;
    }
    let executors = ctx.placement.executor_count();
    ctx.metrics.executors.set(executors as f64);
}

fn request_timeout(ctx: &Ctx) -> Duration {
    Duration::from_millis(ctx.config.executor_request_timeout_ms)
}

async fn load_desired(ctx: &Arc<Ctx>) -> Result<HashMap<String, Desired>, crate::api::ApiError> {
    ctx.db
        .run(|c| {
            let mut out = HashMap::new();
            for mut app in db::list_apps(c, None)? {
                // Bound services reach an instance through its start message: a bind or
                // unbind takes effect at the next start or restart, with no restage.
                let vcap = crate::services::vcap::vcap_services(c, &app.guid)?;
                let services = crate::services::vcap::env_of(&vcap);
                crate::services::vcap::apply(&mut app.env, &services);
                let egress = crate::services::vcap::egress(&vcap);
                let droplet = match &app.current_droplet_guid {
                    Some(guid) => db::get_droplet(c, guid)?,
                    None => None,
                };
                out.insert(
                    app.guid.clone(),
                    Desired {
                        app,
                        droplet,
                        egress,
                    },
                );
            }
            Ok(out)
        })
        .await
}

/// One pass's decisions.
#[derive(Debug, Default)]
struct Plan {
    stops: Vec<(String, StopInstance)>,
    resends: Vec<(Key, Pending)>,
    missing: Vec<Key>,
    /// Cells to (re-)ask to evacuate.
    evacuate: Vec<String>,
    /// Cells to kill (`hydrant debug kill-cell`).
    kill: Vec<String>,
}

/// Moves the cells whose presence lapsed to the lost list (their instances become suspects,
/// which the lease's holder replaces, now or when it takes the lease over).
fn expire(ctx: &Ctx) {
    let timeout = Duration::from_secs(ctx.config.executor_timeout_secs);
    expire_cells(&mut ctx.placement.lock(), Instant::now(), timeout);
}

/// Forgets cells whose presence lapsed: each becomes a lost cell and its instances suspects,
/// so this same pass places their replacements.
fn expire_cells(table: &mut Table, now: Instant, fallback: Duration) {
    let expired: Vec<String> = table
        .executors
        .iter()
        .filter(|(_, e)| now.duration_since(e.seen) >= e.ttl(fallback))
        .map(|(id, _)| id.clone())
        .collect();
    for id in expired {
        let Some(e) = table.executors.remove(&id) else {
            continue;
        };
        let instances: Vec<String> = e
            .heartbeat
            .instances
            .iter()
            .filter(|i| live(i.state))
            .map(|i| i.instance.clone())
            .collect();
        tracing::warn!(
            cell = %id,
            silent_ms = now.duration_since(e.seen).as_millis() as u64,
            instances = instances.len(),
            "cloud controller: cell lost (its presence expired); placing its instances elsewhere"
        );
        table.draining.remove(&id);
        table.lost.insert(
            id,
            LostCell {
                zone: e.zone().to_owned(),
                presence: e.presence,
                since: now_nanos(),
                at: now,
                instances: instances.len(),
            },
        );
        table
            .suspects
            .extend(instances.into_iter().map(|i| (i, now)));
    }
    table
        .lost
        .retain(|_, l| now.duration_since(l.at) < LOST_TTL);
    while table.lost.len() > MAX_LOST {
        let oldest = table
            .lost
            .iter()
            .min_by_key(|(_, l)| l.at)
            .map(|(id, _)| id.clone());
        match oldest {
            Some(id) => table.lost.remove(&id),
            None => break,
        };
    }
}

/// A cell heard from again is no longer lost (its suspects stay suspects: the next pass stops
/// those whose replacement runs).
fn returned(table: &mut Table, id: &str) {
    if table.lost.remove(id).is_some() {
        tracing::warn!(cell = %id, "cloud controller: a lost cell is back");
    }
}

/// Compares desired and actual under the lock: what to stop, what to re-send, what to place.
fn plan(ctx: &Ctx, desired: &HashMap<String, Desired>, resend_after: Duration) -> Plan {
    let now = Instant::now();
    let timeout = Duration::from_secs(ctx.config.executor_timeout_secs);
    let mut table = ctx.placement.lock();
    expire_cells(&mut table, now, timeout);
    table
        .retired
        .retain(|_, at| now.duration_since(*at) < RETIRED_TTL);
    table
        .stops_sent
        .retain(|_, at| now.duration_since(*at) < RETIRED_TTL);
    table
        .suspects
        .retain(|_, at| now.duration_since(*at) < RETIRED_TTL);
    let known: HashSet<String> = table.executors.keys().cloned().collect();
    table.pending.retain(|_, p| known.contains(&p.executor_id));
    table.draining.retain(|id, _| known.contains(id));
    let mut out = Plan {
        evacuate: table.draining.keys().cloned().collect(),
        kill: std::mem::take(&mut table.kills),
        ..Plan::default()
    };

    let wants = |app: &str, index: u32| {
        desired.get(app).is_some_and(|d| {
            d.app.state == AppState::Started && d.droplet.is_some() && index < d.app.instances
        })
    };
    // An instance on an evacuating cell, or a suspect whose cell came back, serves only until
    // a replacement elsewhere runs.
    let suspects: HashSet<String> = table.suspects.keys().cloned().collect();
    let evacuating: HashSet<String> = known
        .iter()
        .filter(|id| table.evacuating(id))
        .cloned()
        .collect();
    // A placement on a cell that is now evacuating is not waited for (the cell refuses
    // re-sends): the index is placed anew elsewhere.
    table
        .pending
        .retain(|_, p| !evacuating.contains(&p.executor_id));
    let leaving = |executor_id: &str, i: &InstanceHeartbeat| {
        suspects.contains(&i.instance) || evacuating.contains(executor_id)
    };
    let mut actual: HashMap<Key, Vec<(String, InstanceHeartbeat)>> = HashMap::new();
    for executor in table.executors.values() {
        for i in &executor.heartbeat.instances {
            actual
                .entry((i.app.clone(), i.index))
                .or_default()
                .push((executor.heartbeat.executor_id.clone(), i.clone()));
        }
    }
    let mut to_stop: Vec<(String, String, String, &'static str)> = Vec::new();
    for ((app, index), list) in &actual {
        let unwanted = (!wants(app, *index)).then(|| match desired.get(app) {
            None => "app deleted",
            Some(d) if d.app.state != AppState::Started => "app stopped",
            Some(_) => "scaled down",
        });
        let pending_guid = table
            .pending
            .get(&(app.clone(), *index))
            .map(|p| p.instance.clone());
        let retired = |i: &str| table.retired.contains_key(i);
        let decided = settle_index(
            list,
            pending_guid.as_deref(),
            unwanted,
            &retired,
            &suspects,
            &evacuating,
        );
        for (executor_id, instance, reason) in decided {
            to_stop.push((
                executor_id.to_owned(),
                app.clone(),
                instance.to_owned(),
                reason,
            ));
        }
    }
    // Placements asked for but no longer wanted are stopped too, in case they started.
    let unwanted: Vec<Key> = table
        .pending
        .keys()
        .filter(|(app, index)| !wants(app, *index))
        .cloned()
        .collect();
    for key in unwanted {
        if let Some(p) = table.pending.remove(&key) {
            to_stop.push((p.executor_id, key.0.clone(), p.instance, "no longer wanted"));
        }
    }
    for (executor_id, app, instance, reason) in to_stop {
        let due = table
            .stops_sent
            .get(&instance)
            .is_none_or(|at| now.duration_since(*at) >= resend_after);
        if due {
            table.stops_sent.insert(instance.clone(), now);
            out.stops.push((
                executor_id.clone(),
                StopInstance {
                    executor_id,
                    app,
                    instance: Some(instance),
                    reason: Some(reason.to_owned()),
                },
            ));
        }
    }

    let mut apps: Vec<&Desired> = desired.values().collect();
    apps.sort_by(|a, b| a.app.guid.cmp(&b.app.guid));
    // Diego's batch order: every app's index 0 first, then index 1, ...
    let mut keys: Vec<Key> = Vec::new();
    for d in apps {
        if d.app.state != AppState::Started || d.droplet.is_none() {
            table.placement_errors.retain(|(a, _), _| *a != d.app.guid);
            continue;
        }
        keys.extend((0..d.app.instances).map(|index| (d.app.guid.clone(), index)));
        table
            .placement_errors
            .retain(|(a, i), _| *a != d.app.guid || *i < d.app.instances);
    }
    keys.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    // A cell known only by its presence may already run any index (a restarted controller
    // hears presences and heartbeats in either order): placing before its heartbeat lists its
    // instances would start a second copy of each. Its heartbeat follows at once (the greet
    // asks for both), and that heartbeat wakes the loop.
    let blind = table.executors.values().any(|e| !e.heard);
    for key in keys {
        let present = actual.get(&key).is_some_and(|list| {
            list.iter().any(|(executor_id, i)| {
                live(i.state)
                    && !table.retired.contains_key(&i.instance)
                    && !leaving(executor_id, i)
            })
        });
        if present {
            table.pending.remove(&key);
            table.placement_errors.remove(&key);
            continue;
        }
        match table.pending.get_mut(&key) {
            Some(p) if now.duration_since(p.sent) >= resend_after => {
                p.sent = now;
                out.resends.push((key, p.clone()));
            }
            Some(_) => {}
            None if blind => {}
            None => out.missing.push(key),
        }
    }
    out
}

/// Which copies of one instance index to stop, and why: `(cell, instance, reason)` each. At
/// most one copy on a healthy cell is kept (the placement's own, else a running one, else the
/// oldest); a copy on an evacuating cell, or a suspect whose lost cell came back, is kept only
/// while no copy on a healthy cell runs — so it serves until its replacement does, and a
/// suspect with no replacement is promoted back. `unwanted` says why, when the index is not
/// desired at all.
fn settle_index<'a>(
    list: &'a [(String, InstanceHeartbeat)],
    pending_guid: Option<&str>,
    unwanted: Option<&'static str>,
    retired: &dyn Fn(&str) -> bool,
    suspects: &HashSet<String>,
    evacuating: &HashSet<String>,
) -> Vec<(&'a str, &'a str, &'static str)> {
    let leaving = |executor_id: &str, i: &InstanceHeartbeat| {
        suspects.contains(&i.instance) || evacuating.contains(executor_id)
    };
    let mut ordered: Vec<&(String, InstanceHeartbeat)> = list.iter().collect();
    ordered.sort_by_key(|(executor_id, i)| {
        (
            leaving(executor_id, i),
            Some(i.instance.as_str()) != pending_guid,
            i.state != InstanceState::Running,
            i.since,
        )
    });
    let replaced = list.iter().any(|(executor_id, i)| {
        i.state == InstanceState::Running && !leaving(executor_id, i) && !retired(&i.instance)
    });
    let mut kept = false;
    let mut kept_leaving = false;
    let mut out = Vec::new();
    for (executor_id, i) in ordered {
        if !live(i.state) {
            continue;
        }
        let reason = if retired(&i.instance) {
            Some("restarted")
        } else if let Some(why) = unwanted {
            Some(why)
        } else if leaving(executor_id, i) {
            if replaced {
                Some(if suspects.contains(&i.instance) {
                    "duplicate: replaced while its cell was lost"
                } else {
                    "evacuated: its replacement is running"
                })
            } else if kept_leaving {
                Some("duplicate")
            } else {
                kept_leaving = true;
                None
            }
        } else if kept {
            Some("duplicate")
        } else {
            kept = true;
            None
        };
        if let Some(reason) = reason {
            out.push((executor_id.as_str(), i.instance.as_str(), reason));
        }
    }
    out
}

/// Every cell as the auction sees it for an instance of `app`.
fn candidates(ctx: &Ctx, app: &str) -> Vec<auction::Candidate> {
    let table = ctx.placement.lock();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(table.executors.len());
    for (id, executor) in &table.executors {
        let hb = &executor.heartbeat;
        let shown: HashSet<&str> = hb.instances.iter().map(|i| i.instance.as_str()).collect();
        let pending: Vec<(&Key, &Pending)> = table
            .pending
            .iter()
            .filter(|(_, p)| p.executor_id == *id && !shown.contains(p.instance.as_str()))
            .collect();
        let pending_mb: u64 = pending.iter().map(|(_, p)| p.memory_mb).sum();
        let pending_disk: u64 = pending.iter().map(|(_, p)| p.disk_mb).sum();
        // A cell that only heartbeats (no presence) says nothing of disk: it never limits.
        let (total_memory, total_disk, total_slots, free_disk) = match &executor.presence {
            Some(p) => (
                p.capacity.memory_mb,
                p.capacity.disk_mb,
                p.capacity.containers,
                p.available_disk,
            ),
            None => (
                hb.capacity.memory_mb,
                u64::from(u32::MAX),
                hb.capacity.instances,
                u64::from(u32::MAX),
            ),
        };
        let used_slots = if hb.instances.is_empty() && executor.presence.is_some() {
            // No heartbeat yet: the presence's own count.
            executor.presence.as_ref().map_or(0, |p| {
                p.capacity.containers.saturating_sub(p.available_containers)
            })
        } else {
            hb.used.instances
        };
        let used_memory = if hb.instances.is_empty() && executor.presence.is_some() {
            executor.presence.as_ref().map_or(0, |p| {
                p.capacity.memory_mb.saturating_sub(p.available_memory)
            })
        } else {
            hb.used.memory_mb
        };
        let mine = hb
            .instances
            .iter()
            .filter(|i| {
                i.app == app
                    && live(i.state)
                    && !table.retired.contains_key(&i.instance)
                    && !table.suspects.contains_key(&i.instance)
            })
            .count()
            + pending.iter().filter(|((a, _), _)| a == app).count();
        let starting = hb
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::Starting)
            .count()
            + pending.len();
        out.push(auction::Candidate {
            id: id.clone(),
            zone: executor.zone().to_owned(),
            evacuating: table.evacuating(id),
            total_memory_mb: total_memory,
            total_disk_mb: total_disk,
            total_containers: total_slots,
            free_memory_mb: total_memory
                .saturating_sub(used_memory)
                .saturating_sub(pending_mb),
            free_disk_mb: free_disk.saturating_sub(pending_disk),
            free_containers: total_slots
                .saturating_sub(used_slots)
                .saturating_sub(count(pending.len())),
            starting: count(starting),
            app_instances: count(mine),
        });
    }
    out
}

async fn place(ctx: &Arc<Ctx>, bus: &Bus, d: &Desired, index: u32) {
    let key = (d.app.guid.clone(), index);
    let instance = password::new_guid();
    let need = auction::Need {
        memory_mb: d.app.memory_mb,
        disk_mb: d.app.disk_mb,
    };
    let ranking = auction::rank(&candidates(ctx, &d.app.guid), need);
    let mut refusals = Vec::new();
    for executor_id in &ranking.order {
        let Some(start) = start_message(ctx, d, index, &instance, executor_id) else {
            return;
        };
        match send_start(ctx, bus, executor_id, &start).await {
            Ok(()) => {
                ctx.metrics.placed.inc();
                let mut table = ctx.placement.lock();
                table.placement_errors.remove(&key);
                table.pending.insert(
                    key,
                    Pending {
                        instance,
                        executor_id: executor_id.clone(),
                        memory_mb: d.app.memory_mb,
                        disk_mb: d.app.disk_mb,
                        sent: Instant::now(),
                    },
                );
                return;
            }
            Err(reason) => refusals.push(format!("{executor_id}: {reason}")),
        }
    }
    ctx.metrics.no_room.inc();
    let message = if refusals.is_empty() {
        ranking.insufficient(need)
    } else {
        let mut all = refusals;
        all.extend(
            ranking
                .refusals
                .iter()
                .map(|(cell, why)| format!("{cell}: {why}")),
        );
        format!(
            "no executor accepted the instance ({}); retrying",
            all.join("; ")
        )
    };
    ctx.placement.lock().placement_errors.insert(key, message);
}

/// Now, UNIX nanoseconds.
fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

async fn send_start(
    ctx: &Arc<Ctx>,
    bus: &Bus,
    executor_id: &str,
    start: &StartInstance,
) -> Result<(), String> {
    let payload = messages::encode(start).map_err(|e| e.to_string())?;
    // The placement first, so the router and the health manager know the instance is this
    // cell's before its first heartbeat or route registration.
    if let Err(error) = bus.publish_json(
        &messages::executor_placed_subject(executor_id),
        &InstancePlaced::from(start),
    ) {
        tracing::warn!(%error, executor_id, "cloud controller: cannot announce a placement");
    }
    let subject = messages::executor_start_subject(executor_id);
    match bus.request(&subject, payload, request_timeout(ctx)).await {
        Ok(reply) => match reply.json::<ExecutorReply>() {
            Ok(r) if r.accepted => Ok(()),
            Ok(r) => {
                ctx.metrics.refused.inc();
                Err(r.reason.unwrap_or_else(|| "refused".to_owned()))
            }
            Err(e) => {
                ctx.metrics.refused.inc();
                Err(format!("unreadable reply: {e}"))
            }
        },
        Err(e) => {
            ctx.metrics.request_failed.inc();
            Err(e.to_string())
        }
    }
}

fn start_message(
    ctx: &Ctx,
    d: &Desired,
    index: u32,
    instance: &str,
    executor_id: &str,
) -> Option<StartInstance> {
    let droplet = d.droplet.as_ref()?;
    let claims = Claims::new(format!("executor:{executor_id}"))
        .for_audience(hydrant_auth::AUD_DROPLET)
        .with_scope(crate::api::droplet_scope(&droplet.guid))
        .expires_in(ctx.config.droplet_token_ttl_secs);
    // Over the internal listener (mutual TLS, executors only) when there is one.
    let base = ctx
        .config
        .internal_base_url()
        .unwrap_or_else(|| ctx.config.base_url().to_owned());
    let droplet_url = format!(
        "{}/internal/droplets/{}?token={}",
        base,
        droplet.guid,
        ctx.keys.signing().issue(&claims)
    );
    let app = &d.app;
    Some(StartInstance {
        executor_id: executor_id.to_owned(),
        app: app.guid.clone(),
        app_name: app.name.clone(),
        instance: instance.to_owned(),
        index,
        droplet_url,
        droplet_sha256: droplet.sha256.clone(),
        start_command: app
            .command
            .clone()
            .unwrap_or_else(|| droplet.start_command.clone()),
        env: app.env.clone(),
        memory_mb: app.memory_mb,
        disk_mb: app.disk_mb,
        uris: app.routes.clone(),
        health_check: HealthCheck {
            kind: match app.health_check_type {
                hydrant_api::HealthCheckType::Port => HealthCheckType::Port,
                hydrant_api::HealthCheckType::Http => HealthCheckType::Http,
                hydrant_api::HealthCheckType::Process => HealthCheckType::Process,
            },
            endpoint: app.health_check_endpoint.clone(),
            timeout_secs: None,
        },
        tags: BTreeMap::from([
            ("app_id".to_owned(), app.guid.clone()),
            ("app_name".to_owned(), app.name.clone()),
            ("space_id".to_owned(), app.space_guid.clone()),
            ("space_name".to_owned(), app.space_name.clone()),
            ("process_type".to_owned(), "web".to_owned()),
        ]),
        egress: d.egress.clone(),
        stop_timeout_secs: Some(app.stop_timeout_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(
        cell: &str,
        instance: &str,
        state: InstanceState,
        since: i64,
    ) -> (String, InstanceHeartbeat) {
        (
            cell.to_owned(),
            InstanceHeartbeat {
                app: "app".to_owned(),
                instance: instance.to_owned(),
                index: 0,
                state,
                since,
                port: None,
            },
        )
    }

    fn set(items: &[&str]) -> HashSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn leaving_copies_serve_until_their_replacement_runs() {
        use InstanceState::{Running, Starting};
        struct Case {
            name: &'static str,
            list: Vec<(String, InstanceHeartbeat)>,
            pending: Option<&'static str>,
            suspects: &'static [&'static str],
            evacuating: &'static [&'static str],
            stopped: Vec<(&'static str, &'static str)>,
        }
        let cases = vec![
            Case {
                name: "evacuating: the old copy keeps serving while the replacement starts",
                list: vec![
                    copy("c1", "old", Running, 1),
                    copy("c2", "new", Starting, 2),
                ],
                pending: Some("new"),
                suspects: &[],
                evacuating: &["c1"],
                stopped: vec![],
            },
            Case {
                name: "evacuating: once the replacement runs the old copy stops",
                list: vec![copy("c1", "old", Running, 1), copy("c2", "new", Running, 2)],
                pending: None,
                suspects: &[],
                evacuating: &["c1"],
                stopped: vec![("old", "evacuated: its replacement is running")],
            },
            Case {
                name: "a lost cell came back: its suspect stops where the replacement runs",
                list: vec![copy("c1", "old", Running, 1), copy("c2", "new", Running, 2)],
                pending: None,
                suspects: &["old"],
                evacuating: &[],
                stopped: vec![("old", "duplicate: replaced while its cell was lost")],
            },
            Case {
                name: "a lost cell came back before the replacement ran: both kept for now",
                list: vec![
                    copy("c1", "old", Running, 1),
                    copy("c2", "new", Starting, 2),
                ],
                pending: Some("new"),
                suspects: &["old"],
                evacuating: &[],
                stopped: vec![],
            },
            Case {
                name: "two healthy copies: the placement's own is kept",
                list: vec![copy("c1", "a", Running, 1), copy("c2", "b", Running, 2)],
                pending: Some("b"),
                suspects: &[],
                evacuating: &[],
                stopped: vec![("a", "duplicate")],
            },
        ];
        for case in cases {
            let got = settle_index(
                &case.list,
                case.pending,
                None,
                &|_| false,
                &set(case.suspects),
                &set(case.evacuating),
            );
            let got: Vec<(&str, &str)> = got.iter().map(|(_, i, r)| (*i, *r)).collect();
            assert_eq!(got, case.stopped, "{}", case.name);
        }
        let single = [copy("c1", "old", Running, 1)];
        let unwanted = settle_index(
            &single,
            None,
            Some("scaled down"),
            &|_| false,
            &set(&[]),
            &set(&["c1"]),
        );
        assert_eq!(unwanted, [("c1", "old", "scaled down")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lapsed_presence_makes_a_lost_cell_and_suspects_at_its_ttl() {
        let mut table = Table::default();
        let presence = CellPresence {
            id: "c1".to_owned(),
            ttl_secs: 15,
            placement_properties: messages::PlacementProperties {
                zone: "z1".to_owned(),
            },
            ..CellPresence::default()
        };
        let heartbeat = ExecutorHeartbeat {
            executor_id: "c1".to_owned(),
            instances: vec![copy("c1", "i-1", InstanceState::Running, 1).1],
            ..ExecutorHeartbeat::default()
        };
        let start = Instant::now();
        table.executors.insert(
            "c1".to_owned(),
            Executor {
                heartbeat,
                presence: Some(presence),
                seen: start,
                heard: true,
            },
        );
        let fallback = Duration::from_secs(30);
        assert_eq!(
            table.next_expiry(fallback),
            Some(start + Duration::from_secs(15))
        );
        tokio::time::advance(Duration::from_millis(14_999)).await;
        expire_cells(&mut table, Instant::now(), fallback);
        assert!(table.executors.contains_key("c1"), "alive within its TTL");
        tokio::time::advance(Duration::from_millis(1)).await;
        expire_cells(&mut table, Instant::now(), fallback);
        assert!(table.executors.is_empty());
        assert_eq!(table.lost["c1"].zone, "z1");
        assert_eq!(table.lost["c1"].instances, 1);
        assert!(table.suspects.contains_key("i-1"));
        assert_eq!(table.next_expiry(fallback), None);
        returned(&mut table, "c1");
        assert!(
            table.lost.is_empty(),
            "a cell heard from again is no longer lost"
        );
        assert!(
            table.suspects.contains_key("i-1"),
            "its instances stay suspects"
        );
    }
}
