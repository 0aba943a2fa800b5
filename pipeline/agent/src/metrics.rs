//! The agent's self-metrics, registered once at start-up so the hot path only adds to atomics.
//!
//! The ledger they keep, once the agent has drained:
//! `agent.ingress + agent.rate_limited + agent.fair_notices = Σ agent.egress{doppler} +
//! Σ agent.dropped{reason}`. `agent.rate_limited` and `agent.fair_notices` count the notices
//! the agent itself adds to an app's stream; they are on the left because those envelopes enter
//! the pipeline here. Gap markers (`agent.gap_markers`) are on neither side: they describe a
//! loss, they are not data. `agent.dropped_by_source{source}` splits every drop after
//! stamping by source (fairness, queue full, and through [`Losses`] a doppler's loss and the
//! shutdown drain; bounded: the first `fair_metrics_sources`, then `other`), so per source
//! `sent + notices = delivered + agent.dropped_by_source` once drained (loss in flight aside,
//! which shows as a sequence gap).

use std::sync::Arc;

use hydrant_emitter::{Counter, Gauge, Registry, SourceCounters};

use crate::lost::Losses;

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
    /// Batches for a doppler that went away, still queued at the shutdown deadline, or for a
    /// doppler whose announcements lapsed: by reason, by source and owed as gap markers.
    pub(crate) losses: Arc<Losses>,
    /// Routed while no doppler was known (following the bus, before the first announcement).
    pub(crate) no_doppler: Counter,
    /// Refused for holding more than their source's share of a full-ish egress queue.
    pub(crate) fair_share: Counter,
    /// Notices sent to sources that lost envelopes to fairness or a full queue.
    pub(crate) fair_notices: Counter,
    /// Every drop after stamping, by source.
    pub(crate) dropped_by_source: Arc<SourceCounters>,
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
    pub(crate) fn new(registry: &Registry, metrics_sources: usize) -> Self {
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
            losses: Arc::new(Losses::new([
                dropped("doppler_unavailable"),
                dropped("shutdown"),
                dropped("doppler_lapsed"),
            ])),
            no_doppler: dropped("no_doppler"),
            fair_share: dropped("fair_share"),
            fair_notices: registry.counter(
                "agent.fair_notices",
                "notices sent to apps that lost envelopes for exceeding their fair share",
                &[],
            ),
            dropped_by_source: Arc::new(SourceCounters::new(
                registry,
                "agent.dropped_by_source",
                "envelopes dropped after the agent stamped them (fair share, full egress \
                 queue, doppler unavailable or lapsed, shutdown), by source (top sources, then \
                 other)",
                &[],
                metrics_sources,
            )),
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
