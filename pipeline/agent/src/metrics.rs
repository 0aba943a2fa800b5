//! The agent's self-metrics, registered once at start-up so the hot path only adds to atomics.
//!
//! The ledger they keep, once the agent has drained:
//! `agent.ingress + agent.rate_limited = Σ agent.egress{doppler} + Σ agent.dropped{reason}`.
//! `agent.rate_limited` counts the rate-limit notices the agent itself adds to an app's stream;
//! it is on the left because those envelopes enter the pipeline here.

use hydrant_emitter::{Counter, Gauge, Registry};

/// Drop counters by reason, plus the role-wide counters and gauges.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    /// Envelopes received (a message whose framing is unreadable counts as one).
    pub(crate) ingress: Counter,
    /// Not a protobuf envelope, or not a valid `EnvelopeBatch`.
    pub(crate) malformed: Counter,
    /// Over the envelope (or gRPC message) size limit.
    pub(crate) too_large: Counter,
    /// No `source_id` and no `origin` tag to take one from.
    pub(crate) no_source_id: Counter,
    /// App log lines over the instance's rate limit.
    pub(crate) rate_limited_drops: Counter,
    /// Oldest batches pushed out of a full egress queue.
    pub(crate) egress_queue_full: Counter,
    /// Batches for a doppler that went away.
    pub(crate) doppler_unavailable: Counter,
    /// Still queued when the shutdown drain deadline passed.
    pub(crate) shutdown: Counter,
    /// Envelopes whose `source_id` was taken from `tags["origin"]`.
    pub(crate) origin_mappings: Counter,
    /// Rate-limit notices sent to apps (one per overage, at most one per instance per second).
    pub(crate) rate_limited: Counter,
    /// Instances forgotten to keep the tracking map bounded.
    pub(crate) instance_evictions: Counter,
    /// Dopplers with an open stream.
    pub(crate) doppler_connections: Gauge,
    /// (source_id, instance_id) pairs tracked.
    pub(crate) tracked_instances: Gauge,
}

impl Metrics {
    pub(crate) fn new(registry: &Registry) -> Self {
        let dropped = |reason| {
            registry.counter(
                "agent.dropped",
                "envelopes the agent dropped, by reason",
                &[("reason", reason)],
            )
        };
        Self {
            ingress: registry.counter("agent.ingress", "envelopes received from emitters", &[]),
            malformed: dropped("malformed"),
            too_large: dropped("too_large"),
            no_source_id: dropped("no_source_id"),
            rate_limited_drops: dropped("rate_limited"),
            egress_queue_full: dropped("egress_queue_full"),
            doppler_unavailable: dropped("doppler_unavailable"),
            shutdown: dropped("shutdown"),
            origin_mappings: registry.counter(
                "agent.origin_mappings",
                "envelopes whose source_id was taken from the origin tag",
                &[],
            ),
            rate_limited: registry.counter(
                "agent.rate_limited",
                "times an app instance exceeded its log rate limit (one notice each)",
                &[],
            ),
            instance_evictions: registry.counter(
                "agent.instance_evictions",
                "source instances forgotten to bound memory (their sequence restarts)",
                &[],
            ),
            doppler_connections: registry.gauge(
                "agent.doppler_connections",
                "dopplers with an open stream",
                "count",
                &[],
            ),
            tracked_instances: registry.gauge(
                "agent.tracked_instances",
                "source instances tracked for sequence numbers and rate limits",
                "count",
                &[],
            ),
        }
    }
}
