//! The cell's presence and its evacuation: what the executor tells placement about itself
//! every `presence_interval_secs`, and how it leaves (SIGTERM, `hydrant drain-cell`) or dies
//! (`hydrant debug kill-cell`).
//!
//! Flow: the instance table → [`Cell::presence`] → `executor.presence.<id>` (an announcer: every
//! interval, at once on every change) → the cloud controller's cell table, whose TTL
//! (`presence_ttl_secs`) decides when the cell is lost. `executor.evacuate.<id>` or SIGTERM →
//! [`Cell::evacuate`]: the presence says `evacuating`, starts are refused, the controller places
//! replacements elsewhere and stops each old instance once its replacement runs; past the
//! deadline the cell stops the rest itself. `executor.kill.<id>` → [`Cell::kill`].
//!
//! Invariants: an evacuating cell never admits a start; an evacuation only ever ends in every
//! instance stopped, by its replacement or by the deadline, so it cannot hang; a killed cell
//! publishes nothing more (no presence, heartbeat, crash or unregistration), exactly as a host
//! that lost power.

use std::collections::{BTreeMap, HashMap};
use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hydrant_bus::Message;
use hydrant_bus::messages::{
    self, CellCapacity, CellPresence, CellState, EvacuateCell, EvacuationProgress, InstanceState,
    PlacementProperties,
};
use tokio::time::Instant;

use crate::cell::{Cell, now_nanos};

/// How a stop request's reason starts when the instance's replacement runs elsewhere (the
/// cloud controller's wording).
pub(crate) const EVACUATED: &str = "evacuated";
/// How long an evacuated instance keeps serving after its routes are unregistered, so routers
/// on other hosts drop it before it stops answering.
pub(crate) const ROUTE_DRAIN: Duration = Duration::from_secs(1);
/// The stack every cell runs (the DEA's `stacks`).
const STACK: &str = "cflinuxfs4";
/// Most other cells remembered; more are ignored (bounded whatever the bus carries).
const MAX_PEERS: usize = 4096;

/// An evacuation in progress.
#[derive(Debug, Clone)]
pub(crate) struct Evacuation {
    started_at: i64,
    deadline: Instant,
    deadline_at: i64,
    reason: String,
}

/// The other cells' last word: whether one of them can take this cell's instances.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    seen: HashMap<String, (Instant, Duration, CellState)>,
}

impl Peers {
    fn note(&mut self, presence: &CellPresence, now: Instant) {
        if self.seen.len() >= MAX_PEERS && !self.seen.contains_key(&presence.id) {
            self.seen
                .retain(|_, (at, ttl, _)| now.duration_since(*at) < *ttl);
            if self.seen.len() >= MAX_PEERS {
                return;
            }
        }
        self.seen
            .insert(presence.id.clone(), (now, presence.ttl(), presence.state));
    }

    /// Is some other cell advertising, healthy, within its TTL?
    fn any_healthy(&self, me: &str, now: Instant) -> bool {
        self.seen.iter().any(|(id, (at, ttl, state))| {
            id != me && *state == CellState::Healthy && now.duration_since(*at) < *ttl
        })
    }
}

impl Cell {
    /// The presence right now.
    pub(crate) fn presence(&self) -> CellPresence {
        let evacuation = self
            .evacuation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let table = self.lock();
        let live: Vec<_> = table.values().filter(|r| r.is_live()).collect();
        let memory: u64 = live.iter().map(|r| r.memory_mb).sum();
        let disk: u64 = live.iter().map(|r| r.disk_mb).sum();
        let mut app_id_to_count: BTreeMap<String, u32> = BTreeMap::new();
        for r in &live {
            *app_id_to_count.entry(r.app.clone()).or_insert(0) += 1;
        }
        let starting = live
            .iter()
            .filter(|r| r.state == InstanceState::Starting)
            .count();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let config = &self.config;
        CellPresence {
            id: config.executor_id.clone(),
            placement_properties: PlacementProperties {
                zone: config.zone.clone(),
            },
            stacks: vec![STACK.to_owned()],
            host: config.advertise_host.clone(),
            available_memory: config.memory_mb.saturating_sub(memory),
            available_disk: config.disk_mb.saturating_sub(disk),
            available_containers: config.max_instances.saturating_sub(count(live.len())),
            capacity: CellCapacity {
                memory_mb: config.memory_mb,
                disk_mb: config.disk_mb,
                containers: config.max_instances,
            },
            app_id_to_count,
            starting: count(starting),
            state: if evacuation.is_some() {
                CellState::Evacuating
            } else {
                CellState::Healthy
            },
            ttl_secs: config.presence_ttl_secs,
            evacuation: evacuation.map(|e| EvacuationProgress {
                started_at: e.started_at,
                deadline_at: e.deadline_at,
                remaining: count(live.len()),
                reason: e.reason,
            }),
        }
    }

    /// Why a start must be refused now, if it must.
    pub(crate) fn taking_work(&self) -> Result<(), String> {
        if self.is_killed() {
            return Err(format!("cell {} is gone", self.config.executor_id));
        }
        if self.evacuation_deadline().is_some() {
            return Err(format!(
                "cell {} is evacuating and takes no new work",
                self.config.executor_id
            ));
        }
        Ok(())
    }

    /// When an evacuation in progress gives up waiting for replacements.
    pub(crate) fn evacuation_deadline(&self) -> Option<Instant> {
        self.evacuation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|e| e.deadline)
    }

    /// Instances starting, running or stopping.
    pub(crate) fn live_count(&self) -> usize {
        self.lock().values().filter(|r| r.is_live()).count()
    }

    /// Starts evacuating (idempotent: a second request keeps the first deadline). Returns the
    /// deadline.
    pub(crate) fn evacuate(&self, reason: &str) -> Instant {
        let timeout = Duration::from_secs(self.config.evacuation_timeout_secs);
        let deadline = {
            let mut evacuation = self
                .evacuation
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = evacuation.as_ref() {
                return e.deadline;
            }
            let now = now_nanos();
            let e = Evacuation {
                started_at: now,
                deadline: Instant::now() + timeout,
                deadline_at: now
                    .saturating_add(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX)),
                reason: reason.to_owned(),
            };
            let deadline = e.deadline;
            *evacuation = Some(e);
            deadline
        };
        self.metrics.evacuating.set(1.0);
        // Diego's line, in each app's own stream, so its developer sees why it moves.
        for (guid, record) in self.lock().iter().filter(|(_, r)| r.is_live()) {
            let sink = self.log_sink(&record.app, record.index, &record.app_name, &record.tags);
            let line = format!(
                "Cell {} requesting replacement for instance {guid}",
                self.config.executor_id
            );
            sink.cell(&line);
            tracing::info!(app = %record.app, index = record.index, "{line}");
        }
        tracing::warn!(cell = %self.config.executor_id, %reason, timeout_secs = timeout.as_secs(),
            "executor: evacuating; instances keep serving until their replacements run");
        self.announce_heartbeat();
        deadline
    }

    /// Handles `executor.evacuate.<id>`.
    pub(crate) fn handle_evacuate(&self, message: &Message) {
        match message.json::<EvacuateCell>() {
            Ok(request) if request.executor_id == self.config.executor_id => {
                let reason = request
                    .reason
                    .unwrap_or_else(|| "hydrant drain-cell".to_owned());
                self.evacuate(&reason);
            }
            _ => self.metrics.dropped_bad_request.inc(),
        }
    }

    /// Handles `executor.kill.<id>`: `true` when the cell must die (only with `debug_kill`);
    /// the caller silences its announcers first, then calls [`Cell::kill`].
    pub(crate) fn handle_kill(&self, message: &Message) -> bool {
        match message.json::<EvacuateCell>() {
            Ok(request) if request.executor_id == self.config.executor_id => {
                if !self.config.debug_kill {
                    tracing::warn!("executor: refused a kill request (debug_kill is off)");
                    self.metrics.dropped_bad_request.inc();
                    return false;
                }
                true
            }
            _ => {
                self.metrics.dropped_bad_request.inc();
                false
            }
        }
    }

    /// Plays a lost host: silent from now on, every instance killed without a graceful stop.
    pub(crate) fn kill(&self) {
        tracing::warn!(cell = %self.config.executor_id,
            "executor: killed (hydrant debug kill-cell): silent, instances killed at once");
        self.killed.store(true, Ordering::Relaxed);
        self.stop_all("cell killed");
    }

    /// Notes another cell's presence (`executor.presence.*`).
    pub(crate) fn note_peer(&self, message: &Message) {
        let Ok(presence) = message.json::<CellPresence>() else {
            return;
        };
        if messages::cell_of(&message.subject, messages::EXECUTOR_PRESENCE)
            != Some(presence.id.as_str())
        {
            return;
        }
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .note(&presence, Instant::now());
    }

    /// Can evacuating help: does another healthy cell advertise?
    pub(crate) fn another_cell_can_take(&self) -> bool {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .any_healthy(&self.config.executor_id, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(id: &str, state: CellState) -> CellPresence {
        CellPresence {
            id: id.to_owned(),
            state,
            ttl_secs: 15,
            ..CellPresence::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_fresh_healthy_other_cell_can_take_the_instances() {
        let mut peers = Peers::default();
        let now = Instant::now();
        assert!(!peers.any_healthy("c1", now));
        peers.note(&presence("c1", CellState::Healthy), now);
        assert!(!peers.any_healthy("c1", now), "itself does not count");
        peers.note(&presence("c2", CellState::Evacuating), now);
        assert!(
            !peers.any_healthy("c1", now),
            "an evacuating cell takes nothing"
        );
        peers.note(&presence("c3", CellState::Healthy), now);
        assert!(peers.any_healthy("c1", now));
        assert!(
            !peers.any_healthy("c1", now + Duration::from_secs(15)),
            "a presence past its TTL is gone"
        );
    }
}
