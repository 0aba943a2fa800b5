//! The traffic controller's own metrics, registered once at start-up.
//!
//! Handles are atomics, so the fan-out path pays a relaxed add per batch. The ledger these keep:
//! every envelope routed to a consumer is either delivered (`egress{endpoint}`) or counted in
//! `dropped{reason}` (`slow_consumer` when its queue overflowed, `fair_share` when its queue
//! refused a source holding more than its share, `closed` when it left with envelopes still
//! queued); envelopes that could not be parsed are `dropped{reason=malformed}`. Fair refusals
//! and evictions from fair queues are also counted by source in `dropped_by_source`.
//!
//! The doppler set: `dopplers` (gauge, how many are being read), `doppler_changes{change}`
//! (`joined`, `lapsed`: announcements stopped, `unreachable`: no stream past the grace) and
//! `doppler_announcements{result}` for announcements that changed nothing (`invalid`,
//! `over_max_dopplers`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use hydrant_emitter::{Counter, Gauge, Registry, SourceCounters};

/// The role name: metric prefix and `source_id` of this role's own envelopes.
pub(crate) const ROLE: &str = "trafficcontroller";

/// Which public endpoint delivered envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Firehose,
    AppStream,
    Sse,
}

/// A gauge driven by increments, for live connection counts.
#[derive(Debug, Clone)]
pub(crate) struct LiveGauge {
    count: Arc<AtomicI64>,
    gauge: Gauge,
}

impl LiveGauge {
    fn new(gauge: Gauge) -> Self {
        Self {
            count: Arc::default(),
            gauge,
        }
    }

    pub(crate) fn inc(&self) {
        let now = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        self.gauge.set(now as f64);
    }

    pub(crate) fn dec(&self) {
        let now = self.count.fetch_sub(1, Ordering::Relaxed) - 1;
        self.gauge.set(now as f64);
    }

    /// Re-publishes the count; concurrent inc/dec may have set the gauge out of order.
    pub(crate) fn sync(&self) {
        self.gauge.set(self.count.load(Ordering::Relaxed) as f64);
    }
}

/// Every metric the role reports.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) ingress: Counter,
    egress_firehose: Counter,
    egress_app: Counter,
    egress_sse: Counter,
    pub(crate) egress_recent: Counter,
    pub(crate) dropped_slow: Counter,
    pub(crate) dropped_malformed: Counter,
    pub(crate) dropped_closed: Counter,
    /// Refused by a consumer's queue for holding more than the source's share of it.
    pub(crate) dropped_fair_share: Counter,
    /// Fair refusals and slow-consumer evictions in fair queues, by source (20, then `other`).
    pub(crate) dropped_by_source: Arc<SourceCounters>,
    pub(crate) slow_consumers: Counter,
    /// Consumers with cursors closed to catch up from the rings instead of losing data.
    pub(crate) fell_behind: Counter,
    /// Envelopes sent to resuming consumers from the dopplers' replay rings.
    pub(crate) replayed: Counter,
    /// Live envelopes not sent because the consumer's replay had already sent them.
    pub(crate) duplicates: Counter,
    pub(crate) keepalive_timeouts: Counter,
    pub(crate) rejected_unauthorized: Counter,
    pub(crate) rejected_forbidden: Counter,
    pub(crate) rejected_bad_request: Counter,
    pub(crate) rejected_too_many: Counter,
    pub(crate) upstream_subscribe_errors: Counter,
    pub(crate) upstream_read_errors: Counter,
    pub(crate) token_keys_fetched: Counter,
    pub(crate) token_keys_fetch_failed: Counter,
    pub(crate) token_keys: Gauge,
    pub(crate) token_expired: Counter,
    pub(crate) firehoses: LiveGauge,
    pub(crate) app_streams: LiveGauge,
    pub(crate) sse_streams: LiveGauge,
    pub(crate) doppler_connections: LiveGauge,
    /// Envelopes received on the streams of firehose subscription ids' shares (`shard`).
    shard_ingress: Counter,
    /// Doppler streams open for firehose subscription ids' shares.
    shard_streams: LiveGauge,
    /// Dopplers being read (configured and followed).
    pub(crate) dopplers: Gauge,
    pub(crate) doppler_joined: Counter,
    pub(crate) doppler_lapsed: Counter,
    pub(crate) doppler_unreachable: Counter,
    pub(crate) announce_invalid: Counter,
    pub(crate) announce_over_max: Counter,
    pub(crate) queued_envelopes: Gauge,
    pub(crate) queued_bytes: Gauge,
}

impl Metrics {
    pub(crate) fn new(r: &Registry) -> Self {
        // A counter family with one label: each call registers one of its series.
        let family = |name: &'static str, help: &'static str, key: &'static str| {
            move |value: &'static str| r.counter(name, help, &[(key, value)])
        };
        let egress = family(
            "trafficcontroller.egress",
            "envelopes written to consumers",
            "endpoint",
        );
        let dropped = family(
            "trafficcontroller.dropped",
            "envelopes dropped, by reason",
            "reason",
        );
        let rejected = family(
            "trafficcontroller.rejected",
            "requests refused, by reason",
            "reason",
        );
        let upstream = family(
            "trafficcontroller.upstream_errors",
            "failed calls to dopplers, by call",
            "call",
        );
        let live = |name, help| LiveGauge::new(r.gauge(name, help, "count", &[]));
        let change = family(
            "trafficcontroller.doppler_changes",
            "dopplers that joined or left the set this edge reads, by change",
            "change",
        );
        let announce = family(
            "trafficcontroller.doppler_announcements",
            "doppler announcements that changed nothing, by why",
            "result",
        );
        Self {
            ingress: r.counter(
                "trafficcontroller.ingress",
                "envelopes received from dopplers",
                &[],
            ),
            egress_firehose: egress("firehose"),
            egress_app: egress("app_stream"),
            egress_sse: egress("sse"),
            egress_recent: egress("recent"),
            dropped_slow: dropped("slow_consumer"),
            dropped_malformed: dropped("malformed"),
            dropped_closed: dropped("closed"),
            dropped_fair_share: dropped("fair_share"),
            dropped_by_source: Arc::new(SourceCounters::new(
                r,
                "trafficcontroller.dropped_by_source",
                "envelopes dropped from consumers' queues for exceeding a fair share or evicted, \
                 by source (top sources, then other)",
                &[],
                20,
            )),
            replayed: r.counter(
                "trafficcontroller.replayed",
                "envelopes replayed to consumers that resumed with a cursor",
                &[],
            ),
            duplicates: r.counter(
                "trafficcontroller.duplicates_suppressed",
                "live envelopes not sent again because a resuming consumer's replay sent them",
                &[],
            ),
            slow_consumers: r.counter(
                "trafficcontroller.slow_consumers",
                "consumers closed for falling behind",
                &[],
            ),
            fell_behind: r.counter(
                "trafficcontroller.fell_behind",
                "consumers with cursors closed to resume from the rings instead of losing data",
                &[],
            ),
            keepalive_timeouts: r.counter(
                "trafficcontroller.keepalive_timeouts",
                "WebSockets closed for not answering pings",
                &[],
            ),
            rejected_unauthorized: rejected("unauthorized"),
            rejected_forbidden: rejected("forbidden"),
            rejected_bad_request: rejected("bad_request"),
            rejected_too_many: rejected("too_many_streams"),
            upstream_subscribe_errors: upstream("subscribe"),
            upstream_read_errors: upstream("read"),
            token_keys_fetched: r.counter(
                "trafficcontroller.token_key_fetches",
                "fetches of the cloud controller's public token keys, by result",
                &[("result", "ok")],
            ),
            token_keys_fetch_failed: r.counter(
                "trafficcontroller.token_key_fetches",
                "fetches of the cloud controller's public token keys, by result",
                &[("result", "failed")],
            ),
            token_keys: r.gauge(
                "trafficcontroller.token_keys",
                "public token keys this edge verifies with",
                "count",
                &[],
            ),
            token_expired: r.counter(
                "trafficcontroller.token_expired",
                "streams closed because their token expired",
                &[],
            ),
            firehoses: live("trafficcontroller.firehoses", "open firehose streams"),
            app_streams: live("trafficcontroller.app_streams", "open per-app streams"),
            sse_streams: live("trafficcontroller.sse_streams", "open SSE streams"),
            doppler_connections: live(
                "trafficcontroller.doppler_connections",
                "dopplers with a live subscription",
            ),
            shard_ingress: r.counter(
                "trafficcontroller.shard_ingress",
                "envelopes received from dopplers as the share of a firehose subscription id",
                &[],
            ),
            shard_streams: live(
                "trafficcontroller.shard_streams",
                "doppler streams open for the shares of firehose subscription ids",
            ),
            dopplers: r.gauge(
                "trafficcontroller.dopplers",
                "dopplers this edge reads (configured and followed from the bus)",
                "count",
                &[],
            ),
            doppler_joined: change("joined"),
            doppler_lapsed: change("lapsed"),
            doppler_unreachable: change("unreachable"),
            announce_invalid: announce("invalid"),
            announce_over_max: announce("over_max_dopplers"),
            queued_envelopes: r.gauge(
                "trafficcontroller.queued",
                "envelopes waiting in consumer queues",
                "count",
                &[],
            ),
            queued_bytes: r.gauge(
                "trafficcontroller.queued_bytes",
                "encoded bytes waiting in consumer queues",
                "bytes",
                &[],
            ),
        }
    }

    pub(crate) fn egress(&self, endpoint: Endpoint) -> &Counter {
        match endpoint {
            Endpoint::Firehose => &self.egress_firehose,
            Endpoint::AppStream => &self.egress_app,
            Endpoint::Sse => &self.egress_sse,
        }
    }

    pub(crate) fn streams(&self, endpoint: Endpoint) -> &LiveGauge {
        match endpoint {
            Endpoint::Firehose => &self.firehoses,
            Endpoint::AppStream => &self.app_streams,
            Endpoint::Sse => &self.sse_streams,
        }
    }

    pub(crate) fn sync_gauges(&self) {
        self.firehoses.sync();
        self.app_streams.sync();
        self.sse_streams.sync();
        self.doppler_connections.sync();
        self.shard_streams.sync();
    }

    /// The handles a subscription id's own hub and doppler reads count with: the main
    /// stream's `ingress` and `doppler_connections` keep meaning the one stream per doppler.
    pub(crate) fn for_shards(&self) -> Self {
        Self {
            ingress: self.shard_ingress.clone(),
            doppler_connections: self.shard_streams.clone(),
            ..self.clone()
        }
    }
}
