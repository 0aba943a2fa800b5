//! The cell: the executor's table of instances and everything derived from it — placement
//! decisions (memory, slots, ports), heartbeats, route registrations and the answers to start
//! and stop requests.
//!
//! Flow: `executor.start.<id>` / `executor.stop.<id>` → [`Cell::handle_start`] /
//! [`Cell::handle_stop`] → an instance task (`instance`) that reports its state changes back
//! through [`Cell::set_state`] → heartbeats (`executor.heartbeat.<id>`) and routes
//! (`router.register.<id>` / `router.unregister.<id>`); crashes go to `executor.crash.<id>`.
//!
//! Invariants: start and stop are idempotent per instance guid; memory, disk and a slot are
//! reserved under the table lock, so two concurrent starts can never overcommit; an
//! evacuating or killed cell admits nothing (see `presence`); a killed cell publishes nothing; a route is registered only for a
//! RUNNING instance and unregistered when it leaves RUNNING; crashed and stopped instances stay
//! visible in heartbeats for `retention_secs`, then are forgotten.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hydrant_bus::messages::{
    self, ExecutorCrash, ExecutorHeartbeat, ExecutorReply, InstanceHeartbeat, InstanceState,
    RegistryMessage, Resources, StartInstance, StopInstance,
};
use hydrant_bus::{AnnouncerHandle, Bus, Message};
use hydrant_emitter::Emitter;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, is_token};
use crate::droplet::{DropletCache, normalize_sha};
use crate::instance;
use crate::metrics::Metrics;

/// One instance the executor knows about.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) app: String,
    pub(crate) app_name: String,
    pub(crate) index: u32,
    pub(crate) state: InstanceState,
    /// When it entered `state`, UNIX nanoseconds (for heartbeats).
    pub(crate) since: i64,
    /// When it entered `state`, for retention.
    pub(crate) changed: Instant,
    pub(crate) port: u16,
    /// Where the router and health checks reach it when not `advertise_host:port`: its
    /// container's bridge address, when the cell publishes no ports (advertised on loopback).
    pub(crate) address: Option<(String, u16)>,
    pub(crate) uris: Vec<String>,
    pub(crate) memory_mb: u64,
    pub(crate) disk_mb: u64,
    pub(crate) tags: BTreeMap<String, String>,
    pub(crate) stop: CancellationToken,
    pub(crate) stop_reason: Option<String>,
}

impl Record {
    pub(crate) fn is_live(&self) -> bool {
        matches!(
            self.state,
            InstanceState::Starting | InstanceState::Running | InstanceState::Stopping
        )
    }
}

/// Everything the executor's tasks share.
#[derive(Debug)]
pub(crate) struct Cell {
    pub(crate) config: Config,
    pub(crate) bus: Bus,
    pub(crate) emitter: Option<Emitter>,
    pub(crate) metrics: Metrics,
    pub(crate) droplets: DropletCache,
    pub(crate) probes: reqwest::Client,
    pub(crate) instances_dir: PathBuf,
    pub(crate) hydrant_bin: String,
    pub(crate) path_env: String,
    /// The container runtime and network; `None` with `isolation = "none"`.
    pub(crate) isolated: Option<crate::isolation::Isolated>,
    table: Mutex<HashMap<String, Record>>,
    pub(crate) heartbeats: OnceLock<AnnouncerHandle>,
    pub(crate) routes: OnceLock<AnnouncerHandle>,
    pub(crate) presence: OnceLock<AnnouncerHandle>,
    /// Set while the cell evacuates (`presence`).
    pub(crate) evacuation: Mutex<Option<crate::presence::Evacuation>>,
    /// The other cells' last presence, to know whether evacuating can help.
    pub(crate) peers: Mutex<crate::presence::Peers>,
    /// `hydrant debug kill-cell`: the cell went silent as a lost host would.
    pub(crate) killed: AtomicBool,
    /// Every instance task, so shutdown can wait for them all.
    pub(crate) tasks: TaskTracker,
}

fn reply(accepted: bool, executor_id: &str, reason: Option<String>) -> ExecutorReply {
    ExecutorReply {
        executor_id: executor_id.to_owned(),
        accepted,
        reason,
    }
}

impl Cell {
    /// The log sink of instance `index` of `app`: its lines carry the instance's `tags` and,
    /// when those lack it, the app's name (Loggregator's `app_name` tag), and count into this
    /// cell's metrics.
    pub(crate) fn log_sink(
        &self,
        app: &str,
        index: u32,
        app_name: &str,
        tags: &BTreeMap<String, String>,
    ) -> crate::logs::LogSink {
        let mut extra: Vec<(String, String)> =
            tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if !tags.contains_key("app_name") {
            extra.push(("app_name".to_owned(), app_name.to_owned()));
        }
        crate::logs::LogSink::new(
            self.emitter.clone(),
            app,
            &index.to_string(),
            &extra,
            self.metrics.log_lines.clone(),
            self.metrics.dropped_no_agent.clone(),
        )
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "assembled once, in run(), from parts built there"
    )]
    pub(crate) fn new(
        config: Config,
        bus: Bus,
        emitter: Option<Emitter>,
        metrics: Metrics,
        droplets: DropletCache,
        probes: reqwest::Client,
        instances_dir: PathBuf,
        hydrant_bin: String,
        path_env: String,
        isolated: Option<crate::isolation::Isolated>,
    ) -> Self {
        metrics.memory_capacity_mb.set(config.memory_mb as f64);
        metrics.disk_capacity_mb.set(config.disk_mb as f64);
        Self {
            config,
            bus,
            emitter,
            metrics,
            droplets,
            probes,
            instances_dir,
            hydrant_bin,
            path_env,
            isolated,
            table: Mutex::new(HashMap::new()),
            heartbeats: OnceLock::new(),
            routes: OnceLock::new(),
            presence: OnceLock::new(),
            evacuation: Mutex::new(None),
            peers: Mutex::new(crate::presence::Peers::default()),
            killed: AtomicBool::new(false),
            tasks: TaskTracker::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<String, Record>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes on the bus; a failure is counted, never waited on or retried (the next
    /// heartbeat or registration repairs it).
    pub(crate) fn publish<T: serde::Serialize>(&self, subject: &str, message: &T) {
        if self.is_killed() {
            return;
        }
        if let Err(error) = self.bus.publish_json(subject, message) {
            self.metrics.dropped_publish.inc();
            tracing::warn!(%subject, %error, "executor: bus publish failed");
        }
    }

    fn answer(&self, to: &Message, answer: &ExecutorReply) {
        if to.reply.is_none() || self.is_killed() {
            return;
        }
        match messages::encode(answer) {
            Ok(payload) => {
                if self.bus.reply(to, payload).is_err() {
                    self.metrics.dropped_publish.inc();
                }
            }
            Err(_) => self.metrics.dropped_publish.inc(),
        }
    }

    /// Answers a start or stop request, when it asked for an answer.
    pub(crate) fn respond(&self, to: &Message, accepted: bool, reason: Option<String>) {
        if !accepted {
            self.metrics.refused.inc();
        }
        self.answer(to, &reply(accepted, &self.config.executor_id, reason));
    }

    /// `true` once `hydrant debug kill-cell` killed this cell.
    pub(crate) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// Heartbeat and presence at once (free capacity changed with the instance table).
    pub(crate) fn announce_heartbeat(&self) {
        if let Some(h) = self.heartbeats.get() {
            h.announce_now();
        }
        if let Some(h) = self.presence.get() {
            h.announce_now();
        }
    }

    fn announce_routes(&self) {
        if let Some(h) = self.routes.get() {
            h.announce_now();
        }
    }

    fn update_gauges(&self, table: &HashMap<String, Record>) {
        self.metrics
            .set_instances(|state| table.values().filter(|r| r.state == state).count());
        // What live instances hold: a stopping one still has its memory and disk.
        let held = |size: fn(&Record) -> u64| -> u64 {
            table.values().filter(|r| r.is_live()).map(size).sum()
        };
        self.metrics
            .memory_used_mb
            .set(held(|r| r.memory_mb) as f64);
        self.metrics.disk_used_mb.set(held(|r| r.disk_mb) as f64);
    }

    fn addressed_to_me(&self, executor_id: &str) -> Result<(), String> {
        if executor_id.is_empty() || executor_id == self.config.executor_id {
            Ok(())
        } else {
            Err(format!(
                "wrong executor: this is {:?}, the request names {:?}",
                self.config.executor_id,
                executor_id.chars().take(64).collect::<String>()
            ))
        }
    }

    /// Handles `executor.start.<id>`.
    pub(crate) fn handle_start(self: &Arc<Self>, message: Message) {
        let start: StartInstance = match message.json() {
            Ok(start) => start,
            Err(error) => {
                self.metrics.dropped_bad_request.inc();
                self.respond(&message, false, Some(error.to_string()));
                return;
            }
        };
        match self.admit(&start) {
            Ok(Admission::AlreadyRunning) => self.respond(&message, true, None),
            Ok(Admission::Admitted { sha, port, stop }) => {
                self.metrics.starts.inc();
                self.announce_heartbeat();
                self.tasks.spawn(instance::run(
                    Arc::clone(self),
                    start,
                    sha,
                    port,
                    stop,
                    message,
                ));
            }
            Err(reason) => {
                tracing::info!(instance = ?start.instance, %reason, "executor: start refused");
                self.respond(&message, false, Some(reason));
            }
        }
    }

    /// Checks a start request and reserves its memory, slot and port.
    fn admit(&self, start: &StartInstance) -> Result<Admission, String> {
        self.addressed_to_me(&start.executor_id)?;
        if !is_token(&start.instance) {
            return Err(format!(
                "instance {:?} must be 1-128 letters, digits, '-' or '_'",
                start.instance.chars().take(64).collect::<String>()
            ));
        }
        if start.start_command.trim().is_empty() {
            return Err("start_command is empty".to_owned());
        }
        if start.memory_mb == 0 || start.disk_mb == 0 {
            return Err("memory_mb and disk_mb must be greater than 0".to_owned());
        }
        let sha = normalize_sha(&start.droplet_sha256).map_err(|e| e.to_string())?;
        self.taking_work()?;
        let mut table = self.lock();
        match table.get(&start.instance).map(|r| r.state) {
            Some(InstanceState::Starting | InstanceState::Running) => {
                return Ok(Admission::AlreadyRunning);
            }
            Some(InstanceState::Stopping) => {
                return Err(format!("instance {} is stopping", start.instance));
            }
            Some(InstanceState::Crashed) => {
                return Err(format!(
                    "instance {} crashed; restart it under a new instance guid",
                    start.instance
                ));
            }
            Some(InstanceState::Down) => {
                table.remove(&start.instance);
            }
            None => {}
        }
        let live: Vec<&Record> = table.values().filter(|r| r.is_live()).collect();
        let used: u64 = live.iter().map(|r| r.memory_mb).sum();
        let free = self.config.memory_mb.saturating_sub(used);
        if start.memory_mb > free {
            return Err(format!(
                "not enough memory: {} MiB requested, {free} of {} MiB free",
                start.memory_mb, self.config.memory_mb
            ));
        }
        let disk_used: u64 = live.iter().map(|r| r.disk_mb).sum();
        let disk_free = self.config.disk_mb.saturating_sub(disk_used);
        if start.disk_mb > disk_free {
            return Err(format!(
                "not enough disk: {} MiB requested, {disk_free} of {} MiB free",
                start.disk_mb, self.config.disk_mb
            ));
        }
        if live.len() >= self.config.max_instances as usize {
            return Err(format!(
                "no free instance slot: all {} are in use",
                self.config.max_instances
            ));
        }
        let taken: Vec<u16> = live.iter().map(|r| r.port).collect();
        let port = free_port(self.config.port_range, &taken).ok_or_else(|| {
            let [first, last] = self.config.port_range;
            format!(
                "no free host port: all of port_range [{first}, {last}] are taken by instances \
                 or other listeners on this host; widen the cell's port_range"
            )
        })?;
        let stop = CancellationToken::new();
        table.insert(
            start.instance.clone(),
            Record {
                app: start.app.clone(),
                app_name: start.app_name.clone(),
                index: start.index,
                state: InstanceState::Starting,
                since: now_nanos(),
                changed: Instant::now(),
                port,
                address: None,
                uris: start.uris.clone(),
                memory_mb: start.memory_mb,
                disk_mb: start.disk_mb,
                tags: start.tags.clone(),
                stop: stop.clone(),
                stop_reason: None,
            },
        );
        self.update_gauges(&table);
        Ok(Admission::Admitted { sha, port, stop })
    }

    /// Handles `executor.stop.<id>`: asks the matching instances to stop, and answers at once.
    pub(crate) fn handle_stop(&self, message: &Message) {
        let stop: StopInstance = match message.json() {
            Ok(stop) => stop,
            Err(error) => {
                self.metrics.dropped_bad_request.inc();
                self.respond(message, false, Some(error.to_string()));
                return;
            }
        };
        if let Err(reason) = self.addressed_to_me(&stop.executor_id) {
            self.respond(message, false, Some(reason));
            return;
        }
        let reason = stop.reason.unwrap_or_else(|| "stop requested".to_owned());
        let mut table = self.lock();
        for (guid, record) in table.iter_mut() {
            let wanted = record.app == stop.app
                && stop
                    .instance
                    .as_ref()
                    .is_none_or(|instance| instance == guid);
            if wanted && record.stop_reason.is_none() {
                record.stop_reason = Some(reason.clone());
                record.stop.cancel();
            }
        }
        drop(table);
        self.respond(message, true, None);
    }

    /// Asks every instance to stop (the executor is shutting down).
    pub(crate) fn stop_all(&self, reason: &str) {
        let mut table = self.lock();
        for record in table.values_mut() {
            if record.stop_reason.is_none() {
                record.stop_reason = Some(reason.to_owned());
            }
            record.stop.cancel();
        }
    }

    /// Why `guid` is being stopped.
    pub(crate) fn stop_reason(&self, guid: &str) -> Option<String> {
        self.lock().get(guid).and_then(|r| r.stop_reason.clone())
    }

    /// Moves `guid` to `state`: heartbeat at once; routes registered on RUNNING and
    /// unregistered when leaving it. Returns the previous state.
    pub(crate) fn set_state(&self, guid: &str, state: InstanceState) -> Option<InstanceState> {
        let mut table = self.lock();
        let record = table.get_mut(guid)?;
        let previous = record.state;
        if previous == state {
            return Some(previous);
        }
        record.state = state;
        record.since = now_nanos();
        record.changed = Instant::now();
        let unregister = (previous == InstanceState::Running && !record.uris.is_empty())
            .then(|| self.registration(guid, record));
        self.update_gauges(&table);
        drop(table);
        if let Some(message) = unregister {
            let subject = messages::router_unregister_subject(&self.config.executor_id);
            self.publish(&subject, &message);
        }
        if state == InstanceState::Running {
            self.announce_routes();
        }
        self.announce_heartbeat();
        Some(previous)
    }

    /// Records where the router reaches `guid` (its container's address).
    pub(crate) fn set_address(&self, guid: &str, host: String, port: u16) {
        if let Some(record) = self.lock().get_mut(guid) {
            record.address = Some((host, port));
        }
    }

    /// Where the router reaches `guid`, when it is not `advertise_host:port`.
    pub(crate) fn address(&self, guid: &str) -> Option<(String, u16)> {
        self.lock().get(guid).and_then(|r| r.address.clone())
    }

    /// Publishes the crash of `guid`.
    pub(crate) fn report_crash(&self, crash: &ExecutorCrash) {
        self.metrics.crash(&crash.reason);
        self.publish(
            &messages::executor_crash_subject(&self.config.executor_id),
            crash,
        );
    }

    fn registration(&self, guid: &str, record: &Record) -> RegistryMessage {
        let mut tags = BTreeMap::from([
            ("component".to_owned(), "executor".to_owned()),
            ("executor_id".to_owned(), self.config.executor_id.clone()),
            ("app_id".to_owned(), record.app.clone()),
            ("app_name".to_owned(), record.app_name.clone()),
            ("source_id".to_owned(), record.app.clone()),
            ("instance_id".to_owned(), record.index.to_string()),
        ]);
        for (k, v) in &record.tags {
            tags.entry(k.clone()).or_insert_with(|| v.clone());
        }
        RegistryMessage {
            app: Some(record.app.clone()),
            private_instance_id: Some(guid.to_owned()),
            private_instance_index: Some(record.index.to_string()),
            stale_threshold_in_seconds: Some(messages::PRUNE_THRESHOLD.as_secs()),
            tags,
            ..match &record.address {
                Some((host, port)) => RegistryMessage::new(host, *port, record.uris.clone()),
                None => RegistryMessage::new(
                    &self.config.advertise_host,
                    record.port,
                    record.uris.clone(),
                ),
            }
        }
    }

    /// The registrations of every RUNNING instance with routes (one payload each).
    pub(crate) fn route_payloads(&self) -> Vec<Bytes> {
        let table = self.lock();
        table
            .iter()
            .filter(|(_, r)| r.state == InstanceState::Running && !r.uris.is_empty())
            .filter_map(|(guid, r)| messages::encode(&self.registration(guid, r)).ok())
            .collect()
    }

    /// The heartbeat right now, after forgetting instances past their retention.
    pub(crate) fn heartbeat(&self) -> ExecutorHeartbeat {
        let retention = Duration::from_secs(self.config.retention_secs);
        let mut table = self.lock();
        table.retain(|_, r| r.is_live() || r.changed.elapsed() < retention);
        self.update_gauges(&table);
        let used: u64 = table
            .values()
            .filter(|r| r.is_live())
            .map(|r| r.memory_mb)
            .sum();
        let live = table.values().filter(|r| r.is_live()).count();
        let mut instances: Vec<InstanceHeartbeat> = table
            .iter()
            .map(|(guid, r)| InstanceHeartbeat {
                app: r.app.clone(),
                instance: guid.clone(),
                index: r.index,
                state: r.state,
                since: r.since,
                port: Some(r.port),
            })
            .collect();
        instances
            .sort_by(|a, b| (&a.app, a.index, &a.instance).cmp(&(&b.app, b.index, &b.instance)));
        ExecutorHeartbeat {
            executor_id: self.config.executor_id.clone(),
            host: self.config.advertise_host.clone(),
            capacity: Resources {
                memory_mb: self.config.memory_mb,
                instances: self.config.max_instances,
            },
            used: Resources {
                memory_mb: used,
                instances: u32::try_from(live).unwrap_or(u32::MAX),
            },
            instances,
        }
    }
}

/// The outcome of admitting a start request.
enum Admission {
    AlreadyRunning,
    Admitted {
        sha: String,
        port: u16,
        stop: CancellationToken,
    },
}

/// A port in `range` that no live instance holds and nothing else is listening on. Starts at a
/// random offset so executors sharing a host rarely race for the same port.
fn free_port(range: [u16; 2], taken: &[u16]) -> Option<u16> {
    let [first, last] = range;
    let span = u32::from(last - first) + 1;
    let offset = fastrand::u32(..span);
    (0..span)
        .map(|i| first + u16::try_from((offset + i) % span).unwrap_or(0))
        .filter(|port| !taken.contains(port))
        .find(|port| std::net::TcpListener::bind(("0.0.0.0", *port)).is_ok())
}

/// Now, UNIX nanoseconds.
pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_skip_taken_and_bound_ones() {
        let held = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let busy = held.local_addr().unwrap().port();
        assert_eq!(free_port([busy, busy], &[]), None);
        let port = free_port([busy, busy.saturating_add(1)], &[]);
        assert!(port.is_none() || port == Some(busy + 1));
        assert_eq!(free_port([40000, 40000], &[40000]), None);
    }
}
