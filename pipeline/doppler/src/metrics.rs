//! The doppler's self-telemetry: every counter and gauge it reports, registered once at start-up.
//!
//! The ledger these make up, for any run:
//! `doppler.ingress + fair_notices = malformed + fair_share + ingress_ring_full + routed` (the
//! rest are in the ring; `fair_notices` are the log lines the doppler itself adds to a source
//! that lost envelopes to fairness), and per
//! routed envelope copy: `doppler.egress + slow_subscriber + subscriber_fair_share +
//! subscription_closed` plus what is still queued. The log cache sees `routed - logcache_busy` envelopes, and
//! `logcache.ingress = logcache.store_size + logcache.expired + logcache.rejected`.

use std::sync::Arc;

use hydrant_emitter::{Counter, Gauge, Registry, SourceCounters};
use hydrant_logcache::StoreStats;

/// Handles to every metric; cloning shares them.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Envelopes received on ingress, valid or not.
    pub ingress: Counter,
    /// Valid envelopes the router took from the ring.
    pub routed: Counter,
    /// Envelopes written to subscriber streams (gap markers not included).
    pub egress: Counter,
    /// Gap markers written to subscriber streams.
    pub gap_markers: Counter,
    /// Envelopes that failed validation.
    pub dropped_malformed: Counter,
    /// Envelopes dropped because the ingress ring was full.
    pub dropped_ring_full: Counter,
    /// Envelopes refused at ingress for holding more than their source's share of the ring.
    pub dropped_fair_share: Counter,
    /// Fairness and ring-full drops by source (20 sources, then `other`).
    pub dropped_by_source: Arc<SourceCounters>,
    /// Notices added to the streams of sources that lost envelopes at ingress.
    pub fair_notices: Counter,
    /// Envelope copies dropped from a subscriber's full queue.
    pub dropped_slow_subscriber: Counter,
    /// Envelope copies still queued for, or routed to, a subscription that had closed.
    pub dropped_subscription_closed: Counter,
    /// Envelope copies a subscriber's queue refused for holding more than their source's share.
    pub dropped_subscriber_fair_share: Counter,
    /// Subscriber queues' fair refusals and evictions, by source (20 sources, then `other`).
    pub subscriber_dropped_by_source: Arc<SourceCounters>,
    /// Envelopes that skipped the log cache because its hand-off queue was full.
    pub dropped_logcache_busy: Counter,
    /// Ingress messages over the gRPC size limit (their envelope count is unknown).
    pub ingress_too_large: Counter,
    /// Egress requests refused because `max_subscriptions` streams were open.
    pub rejected_max_subscriptions: Counter,
    /// Egress requests refused as invalid.
    pub rejected_invalid: Counter,
    /// Egress requests refused because the router's command queue was full.
    pub rejected_busy: Counter,
    /// Open egress streams.
    pub subscriptions: Gauge,
    /// Envelopes waiting in the ingress ring.
    pub ingress_ring_depth: Gauge,
    /// The log cache's mirror of [`StoreStats`].
    pub logcache: LogCacheMetrics,
}

/// The `logcache.*` metrics, mirrored from the store's own totals by the cache task.
#[derive(Debug, Clone)]
pub struct LogCacheMetrics {
    ingress: Counter,
    expired_max_per_source: Counter,
    expired_memory: Counter,
    expired_max_sources: Counter,
    rejected_too_large: Counter,
    rejected_max_sources: Counter,
    store_size: Gauge,
    store_bytes: Gauge,
    sources: Gauge,
    /// Envelopes returned by `Read`.
    pub egress: Counter,
    /// `Read` and `Meta` requests refused as invalid.
    pub rejected_reads: Counter,
}

/// A counter family with one label: the function returned registers one of its series.
fn family<'a>(
    registry: &'a Registry,
    name: &'static str,
    help: &'static str,
    key: &'static str,
) -> impl Fn(&str) -> Counter + 'a {
    move |value| registry.counter(name, help, &[(key, value)])
}

impl Metrics {
    /// Registers every metric in `registry`.
    #[must_use]
    pub fn new(registry: &Registry) -> Self {
        let dropped = family(
            registry,
            "doppler.dropped",
            "Envelopes the doppler dropped, by reason",
            "reason",
        );
        let rejected = family(
            registry,
            "doppler.rejected_subscriptions",
            "Egress requests refused, by reason",
            "reason",
        );
        Self {
            ingress: registry.counter(
                "doppler.ingress",
                "Envelopes received from agents, valid or not",
                &[],
            ),
            routed: registry.counter(
                "doppler.routed",
                "Valid envelopes taken from the ingress ring by the router",
                &[],
            ),
            egress: registry.counter(
                "doppler.egress",
                "Envelopes written to subscriber streams",
                &[],
            ),
            gap_markers: registry.counter(
                "doppler.gap_markers",
                "Gap markers written to subscriber streams after drops",
                &[],
            ),
            dropped_malformed: dropped("malformed"),
            dropped_ring_full: dropped("ingress_ring_full"),
            dropped_fair_share: dropped("fair_share"),
            dropped_by_source: Arc::new(SourceCounters::new(
                registry,
                "doppler.dropped_by_source",
                "Envelopes dropped at ingress for exceeding a fair share or evicted from a full \
                 ring, by source (top sources, then other)",
                &[],
                20,
            )),
            fair_notices: registry.counter(
                "doppler.fair_notices",
                "Notices sent to sources that lost envelopes at doppler ingress",
                &[],
            ),
            dropped_slow_subscriber: dropped("slow_subscriber"),
            dropped_subscription_closed: dropped("subscription_closed"),
            dropped_subscriber_fair_share: dropped("subscriber_fair_share"),
            subscriber_dropped_by_source: Arc::new(SourceCounters::new(
                registry,
                "doppler.subscriber_dropped_by_source",
                "Envelope copies refused by a subscriber's queue for exceeding a fair share or \
                 evicted from it, by source (top sources, then other)",
                &[],
                20,
            )),
            dropped_logcache_busy: dropped("logcache_busy"),
            ingress_too_large: registry.counter(
                "doppler.rejected_messages",
                "Ingress messages refused whole, by reason",
                &[("reason", "too_large")],
            ),
            rejected_max_subscriptions: rejected("max_subscriptions"),
            rejected_invalid: rejected("invalid"),
            rejected_busy: rejected("router_busy"),
            subscriptions: registry.gauge(
                "doppler.subscriptions",
                "Open egress streams",
                "count",
                &[],
            ),
            ingress_ring_depth: registry.gauge(
                "doppler.ingress_ring_depth",
                "Envelopes waiting in the ingress ring",
                "count",
                &[],
            ),
            logcache: LogCacheMetrics::new(registry),
        }
    }
}

impl LogCacheMetrics {
    fn new(registry: &Registry) -> Self {
        let expired = family(
            registry,
            "logcache.expired",
            "Envelopes evicted from the log cache, by reason",
            "reason",
        );
        let rejected = family(
            registry,
            "logcache.rejected",
            "Envelopes the log cache refused to store, by reason",
            "reason",
        );
        Self {
            ingress: registry.counter("logcache.ingress", "Envelopes handed to the log cache", &[]),
            expired_max_per_source: expired("max_per_source"),
            expired_memory: expired("memory"),
            expired_max_sources: expired("max_sources"),
            rejected_too_large: rejected("too_large"),
            rejected_max_sources: rejected("max_sources"),
            store_size: registry.gauge(
                "logcache.store_size",
                "Envelopes held by the log cache",
                "count",
                &[],
            ),
            store_bytes: registry.gauge(
                "logcache.store_bytes",
                "Accounted bytes held by the log cache",
                "bytes",
                &[],
            ),
            sources: registry.gauge(
                "logcache.sources",
                "Sources held by the log cache",
                "count",
                &[],
            ),
            egress: registry.counter(
                "logcache.egress",
                "Envelopes returned by log cache reads",
                &[],
            ),
            rejected_reads: registry.counter(
                "logcache.rejected_reads",
                "Log cache reads refused as invalid",
                &[],
            ),
        }
    }

    /// Brings the counters up to `now`, given the totals last mirrored (`before`).
    pub fn mirror(&self, before: &StoreStats, now: &StoreStats) {
        let delta = |c: &Counter, b: u64, n: u64| c.add(n.saturating_sub(b));
        delta(&self.ingress, before.ingested, now.ingested);
        delta(
            &self.expired_max_per_source,
            before.expired_max_per_source,
            now.expired_max_per_source,
        );
        delta(
            &self.expired_memory,
            before.expired_memory,
            now.expired_memory,
        );
        delta(
            &self.expired_max_sources,
            before.expired_max_sources,
            now.expired_max_sources,
        );
        delta(
            &self.rejected_too_large,
            before.rejected_too_large,
            now.rejected_too_large,
        );
        delta(
            &self.rejected_max_sources,
            before.rejected_max_sources,
            now.rejected_max_sources,
        );
        self.store_size.set(now.envelopes as f64);
        self.store_bytes.set(now.bytes as f64);
        self.sources.set(now.sources as f64);
    }
}
