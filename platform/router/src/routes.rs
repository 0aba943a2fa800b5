//! The routes task: keeps the route table in step with the bus, gorouter style.
//!
//! Flow: `router.register` / `router.unregister` (and their per-cell forms
//! `router.register.<cell>`, checked against [`Placements`]; every registration checked against
//! the cloud controller's `router.assigned` snapshot, see `assigned`) → [`RouteTable`] → a new
//! snapshot for the proxy when the set of instances changed; `router.greet` → reply with our
//! [`RouterStart`];
//! at start and on every reconnect → publish `router.start`, so every publisher re-registers
//! at once; every `prune_interval` → drop registrations older than their threshold.
//!
//! Invariant: the data plane outlives the control plane. While the bus is disconnected nothing
//! is pruned, and when it returns every registration gets a fresh threshold before any can
//! expire, so a bus outage never empties the table.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hydrant_bus::messages::{self, RegistryMessage, RouterStart};
use hydrant_bus::{Bus, BusStatus, Message, Subscription};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::assigned::Assigned;
use crate::metrics::Metrics;
use crate::placement::{Claim, Placements};
use crate::table::{RouteTable, Table};

/// Most bus messages applied before a new snapshot is published, so a burst of registrations
/// (every executor answering `router.start`) costs one rebuild, not one per message.
const BATCH: usize = 1024;

/// The routes task's state.
pub(crate) struct Routes {
    pub(crate) bus: Bus,
    pub(crate) subscription: Subscription,
    /// `executor.placed.*`: where instances are placed, for the per-cell registration check.
    pub(crate) placed: Subscription,
    pub(crate) placements: Placements,
    /// `router.assigned`: the routes the cloud controller gave each app.
    pub(crate) assigned: Assigned,
    pub(crate) routes: RouteTable,
    pub(crate) table: Arc<Table>,
    pub(crate) metrics: Metrics,
    pub(crate) start: RouterStart,
    pub(crate) prune_interval: Duration,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("routes", &self.routes.route_count())
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

impl Routes {
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let start = messages::encode(&self.start).unwrap_or_default();
        let mut status = self.bus.watch_status();
        let mut connected = status.borrow_and_update().is_connected();
        if connected {
            self.announce(&start);
        }
        self.publish();
        let mut prune =
            tokio::time::interval_at(Instant::now() + self.prune_interval, self.prune_interval);
        prune.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut status_open = true;
        loop {
            tokio::select! {
                // Placements before registrations: a placement published before a
                // registration is applied first, so the check sees it.
                biased;
                () = shutdown.cancelled() => return,
                Some(placed) = self.placed.next() => {
                    self.learn(&placed);
                    for _ in 0..BATCH {
                        let Some(placed) = self.placed.try_next() else { break };
                        self.learn(&placed);
                    }
                }
                message = self.subscription.next() => {
                    let Some(message) = message else {
                        tracing::warn!("router: bus subscription closed; serving the last table");
                        shutdown.cancelled().await;
                        return;
                    };
                    let mut changed = self.apply(&message, &start);
                    for _ in 0..BATCH {
                        let Some(message) = self.subscription.try_next() else { break };
                        changed |= self.apply(&message, &start);
                    }
                    if changed {
                        self.publish();
                    }
                }
                _ = prune.tick() => {
                    if connected {
                        let (removed, changed) = self.routes.prune(Instant::now());
                        if removed > 0 {
                            tracing::info!(removed, "router: pruned stale registrations");
                        }
                        self.metrics.pruned.add(removed as u64);
                        if changed {
                            self.publish();
                        }
                    }
                }
                result = status.changed(), if status_open => {
                    if result.is_err() {
                        status_open = false;
                        continue;
                    }
                    let now_connected = matches!(*status.borrow_and_update(), BusStatus::Connected);
                    // A change that ends connected is a reconnect even if we never saw the
                    // disconnected state in between (the watch keeps only the latest value).
                    if now_connected {
                        tracing::info!("router: bus is back; registrations get a fresh threshold");
                        self.routes.freshen(Instant::now());
                        self.announce(&start);
                    } else if connected {
                        tracing::warn!("router: bus disconnected; keeping the table, pruning paused");
                    }
                    connected = now_connected;
                }
            }
        }
    }

    fn learn(&mut self, placed: &Message) {
        if !self.placements.learn(placed) {
            self.metrics.undecodable();
        }
    }

    /// Applies one bus message; `true` when the table's instances changed.
    fn apply(&mut self, message: &Message, start: &Bytes) -> bool {
        let metrics = &self.metrics;
        if let Some((base, cell)) = messages::route_subject(&message.subject) {
            let Ok(registration) = message.json::<RegistryMessage>() else {
                metrics.undecodable();
                return false;
            };
            let register = base == messages::ROUTER_REGISTER;
            // A cell's own subject names who sent it (on the authenticated bus a cell may
            // publish only its own): it may only speak for instances placed on it.
            if let Some(cell) = cell {
                let instance = registration.private_instance_id.as_deref();
                let claim = if register {
                    Claim::Runs
                } else {
                    Claim::Releases
                };
                if self.placements.check(instance, cell, claim).is_err() {
                    metrics.not_placed();
                    tracing::warn!(
                        %cell,
                        instance = instance.unwrap_or("(none)"),
                        subject = %message.subject,
                        "router: ignored a route message from a cell for an instance not placed on it"
                    );
                    return false;
                }
            }
            // Only routes the controller assigned to the named app (`assigned`).
            if register && !self.assigned.permits(&registration) {
                metrics.not_assigned();
                tracing::warn!(
                    app = registration.app.as_deref().unwrap_or("(none)"),
                    uris = ?registration.uris,
                    subject = %message.subject,
                    "router: ignored a registration for a route not assigned to its app"
                );
                return false;
            }
            let now = Instant::now();
            let outcome = if register {
                metrics.registrations.inc();
                self.routes.register(&registration, now)
            } else {
                metrics.unregistrations.inc();
                self.routes.unregister(&registration, now)
            };
            for refused in &outcome.refused {
                metrics.refused(*refused);
            }
            return outcome.changed;
        }
        match message.subject.as_str() {
            messages::ROUTER_ASSIGNED => {
                let Ok(snapshot) = message.json::<messages::RouteAssignments>() else {
                    metrics.undecodable();
                    return false;
                };
                // The controllers' own endpoints come with the snapshot rather than as
                // registrations: no cell may speak for them, and a controller the snapshot no
                // longer names leaves the table at once.
                let endpoints = self.assigned.learn(snapshot);
                let now = Instant::now();
                let mut changed = false;
                for gone in &endpoints.unregister {
                    changed |= self.routes.unregister(gone, now).changed;
                }
                for live in &endpoints.register {
                    let outcome = self.routes.register(live, now);
                    for refused in &outcome.refused {
                        metrics.refused(*refused);
                    }
                    changed |= outcome.changed;
                }
                changed
            }
            messages::ROUTER_GREET => {
                if message.reply.is_some()
                    && let Err(error) = self.bus.reply(message, start.clone())
                {
                    tracing::warn!(%error, "router: cannot answer router.greet");
                }
                false
            }
            _ => false,
        }
    }

    fn announce(&self, start: &Bytes) {
        if let Err(error) = self.bus.publish(messages::ROUTER_START, start.clone()) {
            tracing::warn!(%error, "router: cannot publish router.start");
        }
    }

    fn publish(&self) {
        self.table.publish(self.routes.snapshot());
        let metrics = &self.metrics;
        metrics.routes.set(self.routes.route_count() as f64);
        metrics.endpoints.set(self.routes.endpoint_count() as f64);
        metrics.retain_apps(&self.routes.app_ids());
    }
}
