//! The executor's own counters and gauges (`executor.*`), registered once at start.
//!
//! Invariant: every line, message or request the executor drops is counted here under
//! `executor.dropped{reason}`; app output the emitter drops is counted by the emitter
//! (`emitter.dropped{reason}`) in the same registry.

use hydrant_bus::messages::InstanceState;
use hydrant_emitter::{Counter, Gauge, Histogram, Registry};

use crate::droplet::CacheMetrics;

/// Crash reasons, as published in `ExecutorCrash.reason` and tagged on `executor.crashes`.
pub const REASON_CRASHED: &str = "CRASHED";
/// The instance used more memory than its quota and was killed.
pub const REASON_OOM: &str = "OOM";
/// The instance never passed its start-up health check, or failed a later one.
pub const REASON_HEALTH_CHECK: &str = "HEALTH_CHECK";

/// Handles to every executor metric.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) starts: Counter,
    pub(crate) refused: Counter,
    pub(crate) log_lines: Counter,
    pub(crate) dropped_no_agent: Counter,
    pub(crate) dropped_bad_request: Counter,
    pub(crate) dropped_publish: Counter,
    pub(crate) memory_capacity_mb: Gauge,
    pub(crate) memory_used_mb: Gauge,
    pub(crate) container_starts: Counter,
    container_start_latency: Histogram,
    pub(crate) oom_kills: Counter,
    pub(crate) cleanup_failures: Counter,
    instances: [(InstanceState, Gauge); 5],
    pub(crate) cache: CacheMetrics,
}

fn state_name(state: InstanceState) -> &'static str {
    match state {
        InstanceState::Starting => "starting",
        InstanceState::Running => "running",
        InstanceState::Crashed => "crashed",
        InstanceState::Stopping => "stopping",
        InstanceState::Down => "down",
    }
}

impl Metrics {
    pub(crate) fn new(registry: &Registry) -> Self {
        let dropped = |reason| {
            registry.counter(
                "executor.dropped",
                "Log lines, requests and bus messages the executor dropped, by reason",
                &[("reason", reason)],
            )
        };
        let instances = [
            InstanceState::Starting,
            InstanceState::Running,
            InstanceState::Crashed,
            InstanceState::Stopping,
            InstanceState::Down,
        ]
        .map(|state| {
            (
                state,
                registry.gauge(
                    "executor.instances",
                    "Instances the executor knows, by state",
                    "count",
                    &[("state", state_name(state))],
                ),
            )
        });
        Self {
            registry: registry.clone(),
            starts: registry.counter("executor.starts", "Instances started", &[]),
            refused: registry.counter("executor.refused", "Start requests refused", &[]),
            log_lines: registry.counter(
                "executor.log_lines",
                "Log lines read from apps or written about them",
                &[],
            ),
            dropped_no_agent: dropped("no_agent"),
            dropped_bad_request: dropped("bad_request"),
            dropped_publish: dropped("publish_failed"),
            memory_capacity_mb: registry.gauge(
                "executor.memory_capacity",
                "Memory the executor may hand out",
                "MiB",
                &[],
            ),
            memory_used_mb: registry.gauge(
                "executor.memory_used",
                "Memory reserved by live instances",
                "MiB",
                &[],
            ),
            container_starts: registry.counter(
                "executor.container_starts",
                "Containers started for instances",
                &[],
            ),
            container_start_latency: registry.histogram(
                "executor.container_start_latency_seconds",
                "Time from asking for a container to its command running (network, bundle, \
                 cgroup, runtime)",
                &[0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
                &[],
            ),
            oom_kills: registry.counter(
                "executor.oom_kills",
                "Instances the kernel killed for passing their memory limit",
                &[],
            ),
            cleanup_failures: registry.counter(
                "executor.container_cleanup_failures",
                "Containers whose cgroup, bundle or network could not be fully removed",
                &[],
            ),
            instances,
            cache: CacheMetrics {
                hits: registry.counter(
                    "executor.droplet_cache_hits",
                    "Droplets found in the cache",
                    &[],
                ),
                misses: registry.counter(
                    "executor.droplet_cache_misses",
                    "Droplets downloaded",
                    &[],
                ),
                evictions: registry.counter(
                    "executor.droplet_cache_evictions",
                    "Droplets evicted from the cache",
                    &[],
                ),
                bytes: registry.gauge(
                    "executor.droplet_cache_bytes",
                    "Bytes held in the droplet cache",
                    "bytes",
                    &[],
                ),
            },
        }
    }

    /// Counts one container start that took `latency` (from spawn to running).
    pub(crate) fn container_started(&self, latency: std::time::Duration) {
        self.container_starts.inc();
        self.container_start_latency.observe(latency);
    }

    /// Counts one crash.
    pub(crate) fn crash(&self, reason: &str) {
        let reason = match reason {
            REASON_OOM => REASON_OOM,
            REASON_HEALTH_CHECK => REASON_HEALTH_CHECK,
            _ => REASON_CRASHED,
        };
        self.registry
            .counter(
                "executor.crashes",
                "Instances that crashed, by reason",
                &[("reason", reason)],
            )
            .inc();
    }

    /// Publishes the per-state instance counts.
    pub(crate) fn set_instances(&self, count: impl Fn(InstanceState) -> usize) {
        for (state, gauge) in &self.instances {
            gauge.set(count(*state) as f64);
        }
    }
}
