//! The executor's own counters and gauges (`executor.*`), registered once at start.
//!
//! Invariant: every line, message or request the executor drops is counted here under
//! `executor.dropped{reason}`; app output the emitter drops is counted by the emitter
//! (`emitter.dropped{reason}`) in the same registry.
//!
//! Per-instance usage (`executor.app_*{app_id, app_name, instance_index}`) repeats the container
//! metrics the app's stream carries, so a Prometheus scraping `/metrics` directly sees them too;
//! those series exist only while the instance runs on this cell, so their number is bounded by
//! the cell's instances.

use hydrant_bus::messages::InstanceState;
use hydrant_emitter::{Counter, Gauge, Histogram, Registry};

use crate::droplet::CacheMetrics;

/// Crash reasons, as published in `ExecutorCrash.reason` and tagged on `executor.crashes`.
pub const REASON_CRASHED: &str = "CRASHED";
/// The instance used more memory than its quota and was killed.
pub const REASON_OOM: &str = "OOM";
/// The instance never passed its start-up health check, or failed a later one.
pub const REASON_HEALTH_CHECK: &str = "HEALTH_CHECK";

/// The per-instance usage gauges: (name, help, unit).
const APP_USAGE: [(&str, &str, &str); 8] = [
    (
        "executor.app_cpu_percentage",
        "CPU an instance used over the last interval, percent of one core",
        "percentage",
    ),
    (
        "executor.app_memory_bytes",
        "Memory an instance uses",
        "bytes",
    ),
    (
        "executor.app_disk_bytes",
        "Disk an instance's files use",
        "bytes",
    ),
    (
        "executor.app_memory_quota_bytes",
        "Memory an instance may use",
        "bytes",
    ),
    (
        "executor.app_disk_quota_bytes",
        "Disk an instance's files may use",
        "bytes",
    ),
    (
        "executor.app_pids",
        "Processes (in a container: and threads) an instance holds",
        "count",
    ),
    (
        "executor.app_pids_limit",
        "Processes and threads the kernel lets an instance hold (0: unisolated, no limit)",
        "count",
    ),
    (
        "executor.app_cpu_shares",
        "An instance's CPU weight, in cgroup v1 shares of 1024 (0: unisolated, no weight)",
        "shares",
    ),
];

/// One sample of an instance's usage, in the order of [`APP_USAGE`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    pub(crate) cpu_percentage: f64,
    pub(crate) memory_bytes: f64,
    pub(crate) disk_bytes: f64,
    pub(crate) memory_quota_bytes: f64,
    pub(crate) disk_quota_bytes: f64,
    pub(crate) pids: f64,
    pub(crate) pids_limit: f64,
    pub(crate) cpu_shares: f64,
}

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
    pub(crate) disk_capacity_mb: Gauge,
    pub(crate) disk_used_mb: Gauge,
    /// 1 while the cell evacuates, else 0 (the console's nodes screen shows it).
    pub(crate) evacuating: Gauge,
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
            disk_capacity_mb: registry.gauge(
                "executor.disk_capacity",
                "Disk the executor may hand out",
                "MiB",
                &[],
            ),
            disk_used_mb: registry.gauge(
                "executor.disk_used",
                "Disk reserved by live instances",
                "MiB",
                &[],
            ),
            evacuating: registry.gauge(
                "executor.evacuating",
                "1 while the cell moves its instances elsewhere",
                "bool",
                &[],
            ),
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

    /// Publishes one instance's usage under its app and index.
    pub(crate) fn instance_usage(&self, app_id: &str, app_name: &str, index: u32, usage: Usage) {
        let index = index.to_string();
        let tags = [
            ("app_id", app_id),
            ("app_name", app_name),
            ("instance_index", index.as_str()),
        ];
        let values = [
            usage.cpu_percentage,
            usage.memory_bytes,
            usage.disk_bytes,
            usage.memory_quota_bytes,
            usage.disk_quota_bytes,
            usage.pids,
            usage.pids_limit,
            usage.cpu_shares,
        ];
        for ((name, help, unit), value) in APP_USAGE.into_iter().zip(values) {
            self.registry.gauge(name, help, unit, &tags).set(value);
        }
    }

    /// Removes an instance's usage series once it no longer runs here.
    pub(crate) fn instance_gone(&self, app_id: &str, index: u32) {
        let index = index.to_string();
        let tags = [("app_id", app_id), ("instance_index", index.as_str())];
        for (name, _, _) in APP_USAGE {
            self.registry.remove(name, &tags);
        }
    }

    /// Publishes the per-state instance counts.
    pub(crate) fn set_instances(&self, count: impl Fn(InstanceState) -> usize) {
        for (state, gauge) in &self.instances {
            gauge.set(count(*state) as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_usage_is_on_metrics_only_while_the_instance_runs() {
        let registry = Registry::new("executor", "cell-1");
        let metrics = Metrics::new(&registry);
        let usage = Usage {
            cpu_percentage: 12.5,
            memory_bytes: 1024.0,
            ..Usage::default()
        };
        metrics.instance_usage("guid-a", "shop", 0, usage);
        metrics.instance_usage("guid-a", "shop", 1, usage);
        let text = registry.render_prometheus();
        assert!(
            text.contains("# TYPE executor_app_cpu_percentage gauge"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l
                == "executor_app_memory_bytes{source_id=\"executor\",instance_id=\"cell-1\",\
                    app_id=\"guid-a\",app_name=\"shop\",instance_index=\"1\"} 1024"),
            "{text}"
        );
        metrics.instance_gone("guid-a", 1);
        let text = registry.render_prometheus();
        assert!(!text.contains("instance_index=\"1\""), "{text}");
        assert!(text.contains("instance_index=\"0\"} 12.5"), "{text}");
        metrics.instance_gone("guid-a", 0);
        assert!(!registry.render_prometheus().contains("app_id="));
    }
}
