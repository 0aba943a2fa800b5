//! The health manager's own counters and gauges (`healthmanager.*`), registered once at start.
//!
//! Invariant: every bus message, restart or table entry the health manager drops is counted
//! here under `healthmanager.dropped{reason}`.

use hydrant_bus::placement::Refusal;
use hydrant_emitter::{Counter, Gauge, Registry};

/// A bus message that did not decode.
pub const DROP_MALFORMED: &str = "malformed";
/// A table (indexes, instances, overheard starts) was full.
pub const DROP_TABLE_FULL: &str = "table_full";
/// A restart with the cloud controller unreachable and no overheard start request to copy.
pub const DROP_NO_COPY: &str = "no_copy";
/// A restart no executor accepted (retried after `retry_secs`).
pub const DROP_NO_EXECUTOR: &str = "no_executor";
/// A heartbeat or crash whose `executor_id` is not the cell its subject names.
pub const DROP_WRONG_CELL: &str = hydrant_bus::placement::REASON_WRONG_CELL;
/// A crash, or one heartbeat entry, about an instance placed on another cell.
pub const DROP_NOT_PLACED: &str = hydrant_bus::placement::REASON_NOT_PLACED;

/// Handles to every health manager metric.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) restarts_api: Counter,
    pub(crate) restarts_bus: Counter,
    pub(crate) gave_up: Counter,
    pub(crate) crashes: Counter,
    pub(crate) stops: Counter,
    pub(crate) holds: Counter,
    pub(crate) polls_failed: Counter,
    pub(crate) desired_age_seconds: Gauge,
    pub(crate) pending_restarts: Gauge,
    pub(crate) dropped_malformed: Counter,
    pub(crate) dropped_table_full: Counter,
    pub(crate) dropped_no_copy: Counter,
    pub(crate) dropped_no_executor: Counter,
    pub(crate) dropped_wrong_cell: Counter,
    pub(crate) dropped_not_placed: Counter,
}

impl Metrics {
    /// Counts a cell's report dropped by the placement check.
    pub(crate) fn refused(&self, refusal: Refusal) {
        match refusal {
            Refusal::WrongCell => self.dropped_wrong_cell.inc(),
            Refusal::NotPlaced => self.dropped_not_placed.inc(),
        }
    }

    pub(crate) fn new(registry: &Registry) -> Self {
        let dropped = |reason| {
            registry.counter(
                "healthmanager.dropped",
                "Bus messages, restarts and table entries the health manager dropped, by reason",
                &[("reason", reason)],
            )
        };
        let restarts = |via| {
            registry.counter(
                "healthmanager.restarts",
                "Crashed instances restarted, by path (api: the cloud controller's restart \
                 endpoint; bus: a copied start request while the controller is unreachable)",
                &[("via", via)],
            )
        };
        let desired_age_seconds = registry.gauge(
            "healthmanager.desired_age_seconds",
            "Age of the desired-state copy (-1 before the first successful poll)",
            "seconds",
            &[],
        );
        desired_age_seconds.set(-1.0);
        Self {
            restarts_api: restarts("api"),
            restarts_bus: restarts("bus"),
            gave_up: registry.counter(
                "healthmanager.gave_up",
                "Instance indexes left crashed after 200 crashes",
                &[],
            ),
            crashes: registry.counter("healthmanager.crashes", "Crashes counted", &[]),
            stops: registry.counter(
                "healthmanager.stops",
                "Stop requests sent for instances nobody wants",
                &[],
            ),
            holds: registry.counter(
                "healthmanager.holds",
                "Convergence passes that held back stops because desired state was stale",
                &[],
            ),
            polls_failed: registry.counter(
                "healthmanager.polls_failed",
                "Desired-state polls that failed",
                &[],
            ),
            desired_age_seconds,
            pending_restarts: registry.gauge(
                "healthmanager.pending_restarts",
                "Restarts scheduled and not yet due",
                "count",
                &[],
            ),
            dropped_malformed: dropped(DROP_MALFORMED),
            dropped_table_full: dropped(DROP_TABLE_FULL),
            dropped_no_copy: dropped(DROP_NO_COPY),
            dropped_no_executor: dropped(DROP_NO_EXECUTOR),
            dropped_wrong_cell: dropped(DROP_WRONG_CELL),
            dropped_not_placed: dropped(DROP_NOT_PLACED),
        }
    }
}
