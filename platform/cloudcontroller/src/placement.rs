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
//! Invariants: every request is idempotent and re-sent by the next pass until a heartbeat
//! shows it took effect, so a lost message is repaired rather than retried in a storm; crashed
//! instances are left alone (restarting them is the health manager's job) but count as
//! present, so they are not placed twice; nothing is placed on an executor whose last
//! heartbeat is older than `executor_timeout_secs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hydrant_api::{App, AppState, CrashInfo, InstanceInfo, ProcessStats};
use hydrant_auth::Claims;
use hydrant_bus::messages::{
    self, ExecutorCrash, ExecutorHeartbeat, ExecutorReply, HealthCheck, HealthCheckType,
    InstanceHeartbeat, InstancePlaced, InstanceState, StartInstance, StopInstance,
};
use hydrant_bus::placement::{Placements, Refusal};
use hydrant_bus::{Bus, Message, Subscription};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Ctx, db, password};

/// How long a restart remembers the instances it replaced (they are stopped if seen again).
const RETIRED_TTL: Duration = Duration::from_secs(600);

type Key = (String, u32);

#[derive(Debug)]
struct Executor {
    heartbeat: ExecutorHeartbeat,
    seen: Instant,
}

#[derive(Debug, Clone)]
struct Pending {
    instance: String,
    executor_id: String,
    memory_mb: u64,
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
        table.executors.insert(
            id,
            Executor {
                heartbeat,
                seen: Instant::now(),
            },
        );
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
            if let Some((id, i)) = actual
                .get(&index)
                .and_then(|list| list.iter().find(|(_, i)| live(i.state)))
            {
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
}

pub(crate) async fn subscribe(bus: &Bus) -> Result<Feeds, hydrant_bus::Error> {
    // Each cell on its own subject (the only ones its bus identity may publish).
    let every = messages::every_cell;
    let feeds = Feeds {
        placed: bus.subscribe(&every(messages::EXECUTOR_PLACED)).await?,
        heartbeats: bus.subscribe(&every(messages::EXECUTOR_HEARTBEAT)).await?,
        crashes: bus.subscribe(&every(messages::EXECUTOR_CRASH)).await?,
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
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
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
                        let known = ctx.placement.lock().executors.contains_key(&hb.executor_id);
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

/// One convergence pass.
pub(crate) async fn converge(ctx: &Arc<Ctx>, bus: &Bus) {
    let desired = match load_desired(ctx).await {
        Ok(desired) => desired,
        Err(e) => {
            tracing::warn!(?e, "convergence cannot read desired state");
            return;
        }
    };
    let resend_after = Duration::from_millis(ctx.config.converge_interval_ms / 2);
    let (stops, resends, missing) = plan(ctx, &desired, resend_after);
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
            for app in db::list_apps(c, None)? {
                let droplet = match &app.current_droplet_guid {
                    Some(guid) => db::get_droplet(c, guid)?,
                    None => None,
                };
                out.insert(app.guid.clone(), Desired { app, droplet });
            }
            Ok(out)
        })
        .await
}

type Plan = (Vec<(String, StopInstance)>, Vec<(Key, Pending)>, Vec<Key>);

/// Compares desired and actual under the lock: what to stop, what to re-send, what to place.
fn plan(ctx: &Ctx, desired: &HashMap<String, Desired>, resend_after: Duration) -> Plan {
    let now = Instant::now();
    let timeout = Duration::from_secs(ctx.config.executor_timeout_secs);
    let mut table = ctx.placement.lock();
    table
        .executors
        .retain(|_, e| now.duration_since(e.seen) < timeout);
    table
        .retired
        .retain(|_, at| now.duration_since(*at) < RETIRED_TTL);
    table
        .stops_sent
        .retain(|_, at| now.duration_since(*at) < RETIRED_TTL);
    let known: HashSet<String> = table.executors.keys().cloned().collect();
    table.pending.retain(|_, p| known.contains(&p.executor_id));

    let wants = |app: &str, index: u32| {
        desired.get(app).is_some_and(|d| {
            d.app.state == AppState::Started && d.droplet.is_some() && index < d.app.instances
        })
    };

    let mut stops = Vec::new();
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
        let wanted = wants(app, *index);
        let mut kept = false;
        let mut ordered: Vec<&(String, InstanceHeartbeat)> = list.iter().collect();
        // Keep the one the placement asked for, else a running one, else the oldest.
        let pending_guid = table
            .pending
            .get(&(app.clone(), *index))
            .map(|p| p.instance.clone());
        ordered.sort_by_key(|(_, i)| {
            (
                Some(&i.instance) != pending_guid.as_ref(),
                i.state != InstanceState::Running,
                i.since,
            )
        });
        for (executor_id, i) in ordered {
            if !live(i.state) {
                continue;
            }
            let reason = if table.retired.contains_key(&i.instance) {
                Some("restarted")
            } else if !wanted {
                Some(match desired.get(app) {
                    None => "app deleted",
                    Some(d) if d.app.state != AppState::Started => "app stopped",
                    Some(_) => "scaled down",
                })
            } else if kept {
                Some("duplicate")
            } else {
                kept = true;
                None
            };
            if let Some(reason) = reason {
                to_stop.push((executor_id.clone(), app.clone(), i.instance.clone(), reason));
            }
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
            stops.push((
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

    let mut resends = Vec::new();
    let mut missing = Vec::new();
    let mut apps: Vec<&Desired> = desired.values().collect();
    apps.sort_by(|a, b| a.app.guid.cmp(&b.app.guid));
    for d in apps {
        if d.app.state != AppState::Started || d.droplet.is_none() {
            table.placement_errors.retain(|(a, _), _| *a != d.app.guid);
            continue;
        }
        for index in 0..d.app.instances {
            let key = (d.app.guid.clone(), index);
            let present = actual.get(&key).is_some_and(|list| {
                list.iter()
                    .any(|(_, i)| live(i.state) && !table.retired.contains_key(&i.instance))
            });
            if present {
                table.pending.remove(&key);
                table.placement_errors.remove(&key);
                continue;
            }
            match table.pending.get_mut(&key) {
                Some(p) if now.duration_since(p.sent) >= resend_after => {
                    p.sent = now;
                    resends.push((key, p.clone()));
                }
                Some(_) => {}
                None => missing.push(key),
            }
        }
        table
            .placement_errors
            .retain(|(a, i), _| *a != d.app.guid || *i < d.app.instances);
    }
    (stops, resends, missing)
}

/// Executors with room for `memory_mb`, best first: fewest instances of `app`, then most free
/// memory.
fn candidates(ctx: &Ctx, app: &str, memory_mb: u64) -> (Vec<String>, usize) {
    let table = ctx.placement.lock();
    let mut out: Vec<(usize, std::cmp::Reverse<u64>, String)> = Vec::new();
    for (id, executor) in &table.executors {
        let hb = &executor.heartbeat;
        let shown: HashSet<&str> = hb.instances.iter().map(|i| i.instance.as_str()).collect();
        let pending: Vec<(&Key, &Pending)> = table
            .pending
            .iter()
            .filter(|(_, p)| p.executor_id == *id && !shown.contains(p.instance.as_str()))
            .collect();
        let pending_mb: u64 = pending.iter().map(|(_, p)| p.memory_mb).sum();
        let free_mb = hb
            .capacity
            .memory_mb
            .saturating_sub(hb.used.memory_mb)
            .saturating_sub(pending_mb);
        let free_slots = u64::from(hb.capacity.instances)
            .saturating_sub(u64::from(hb.used.instances))
            .saturating_sub(pending.len() as u64);
        if free_mb < memory_mb || free_slots == 0 {
            continue;
        }
        let mine = hb
            .instances
            .iter()
            .filter(|i| i.app == app && live(i.state) && !table.retired.contains_key(&i.instance))
            .count()
            + pending.iter().filter(|((a, _), _)| a == app).count();
        out.push((mine, std::cmp::Reverse(free_mb), id.clone()));
    }
    out.sort();
    (
        out.into_iter().map(|(_, _, id)| id).collect(),
        table.executors.len(),
    )
}

async fn place(ctx: &Arc<Ctx>, bus: &Bus, d: &Desired, index: u32) {
    let key = (d.app.guid.clone(), index);
    let instance = password::new_guid();
    let (ordered, known) = candidates(ctx, &d.app.guid, d.app.memory_mb);
    let mut refusals = Vec::new();
    for executor_id in ordered {
        let Some(start) = start_message(ctx, d, index, &instance, &executor_id) else {
            return;
        };
        match send_start(ctx, bus, &executor_id, &start).await {
            Ok(()) => {
                ctx.metrics.placed.inc();
                let mut table = ctx.placement.lock();
                table.placement_errors.remove(&key);
                table.pending.insert(
                    key,
                    Pending {
                        instance,
                        executor_id,
                        memory_mb: d.app.memory_mb,
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
        format!(
            "no executor has room for an instance of {} MB ({known} executor(s) known); \
             it will be placed when one has room",
            d.app.memory_mb
        )
    } else {
        format!(
            "no executor accepted the instance ({}); retrying",
            refusals.join("; ")
        )
    };
    ctx.placement.lock().placement_errors.insert(key, message);
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
    let droplet_url = format!(
        "{}/internal/droplets/{}?token={}",
        ctx.config.base_url(),
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
    })
}
