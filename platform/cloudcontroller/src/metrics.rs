//! The cloud controller's own counters and gauges, registered once at start-up.
//!
//! Names follow `cloudcontroller.<noun>` with the reason or result as a tag, so the console
//! and dashboards read them like every other role's.

use hydrant_emitter::{Counter, Gauge, Registry};

/// One counter of the family `name`, per value of the tag `key`: the way each of this role's
/// counters by reason or result is registered.
pub(crate) fn family<'r>(
    registry: &'r Registry,
    name: &'static str,
    help: &'static str,
    key: &'static str,
) -> impl Fn(&str) -> Counter + 'r {
    move |value| registry.counter(name, help, &[(key, value)])
}

/// Every metric the role owns.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    requests: [Counter; 5],
    pub(crate) blobs_uploaded: Counter,
    pub(crate) blob_bytes: Counter,
    pub(crate) staged: Counter,
    pub(crate) staging_failed: Counter,
    pub(crate) staging_rejected: Counter,
    /// Builds refused because their space held its share of the staging queue.
    pub(crate) staging_rejected_share: Counter,
    pub(crate) staging_depth: Gauge,
    pub(crate) staging_duration_ms: Gauge,
    pub(crate) placed: Counter,
    pub(crate) no_room: Counter,
    pub(crate) refused: Counter,
    pub(crate) request_failed: Counter,
    pub(crate) stops: Counter,
    pub(crate) heartbeats: Counter,
    pub(crate) crashes: Counter,
    pub(crate) executors: Gauge,
    pub(crate) dropped_malformed: Counter,
    pub(crate) dropped_unknown_app: Counter,
    pub(crate) dropped_wrong_cell: Counter,
    pub(crate) dropped_not_placed: Counter,
    pub(crate) logins_failed: Counter,
    pub(crate) logins_throttled: Counter,
    pub(crate) logins_throttled_address: Counter,
    /// Requests a quota refused, by limit.
    quota_refused: [(&'static str, Counter); 6],
}

impl Metrics {
    pub(crate) fn new(registry: &Registry) -> Self {
        let request = family(
            registry,
            "cloudcontroller.requests",
            "API requests answered, by status class",
            "status_class",
        );
        let staging = family(
            registry,
            "cloudcontroller.staging",
            "builds finished or refused, by result",
            "result",
        );
        let placement = family(
            registry,
            "cloudcontroller.placements",
            "instance placement attempts, by result",
            "result",
        );
        let dropped = family(
            registry,
            "cloudcontroller.dropped",
            "bus messages the cloud controller ignored, by reason",
            "reason",
        );
        let login = family(
            registry,
            "cloudcontroller.logins_refused",
            "password logins refused, by reason (a wrong password, or throttled after too many \
             for the name or from the address)",
            "reason",
        );
        let quota_refused = family(
            registry,
            "cloudcontroller.quota_refused",
            "requests refused because they would exceed an org or space quota, by limit",
            "limit",
        );
        let quota = |limit: &'static str| (limit, quota_refused(&limit.replace(' ', "_")));
        Self {
            quota_refused: [
                "total memory",
                "instances",
                "apps",
                "routes",
                "service instances",
                "blob storage",
            ]
            .map(quota),
            logins_failed: login("wrong_password"),
            logins_throttled: login("throttled"),
            logins_throttled_address: login("throttled_address"),
            requests: [
                request("1xx"),
                request("2xx"),
                request("3xx"),
                request("4xx"),
                request("5xx"),
            ],
            blobs_uploaded: registry.counter(
                "cloudcontroller.blobs_uploaded",
                "files uploaded into the blob store",
                &[],
            ),
            blob_bytes: registry.counter(
                "cloudcontroller.blob_bytes",
                "bytes uploaded into the blob store",
                &[],
            ),
            staged: staging("staged"),
            staging_failed: staging("failed"),
            staging_rejected: staging("queue_full"),
            staging_rejected_share: staging("space_share_full"),
            staging_depth: registry.gauge(
                "cloudcontroller.staging.queue_depth",
                "builds waiting for a staging worker",
                "count",
                &[],
            ),
            staging_duration_ms: registry.gauge(
                "cloudcontroller.staging.duration",
                "how long the last build took to stage",
                "ms",
                &[],
            ),
            placed: placement("accepted"),
            no_room: placement("no_room"),
            refused: placement("refused"),
            request_failed: placement("request_failed"),
            stops: registry.counter("cloudcontroller.stops", "StopInstance requests sent", &[]),
            heartbeats: registry.counter(
                "cloudcontroller.heartbeats",
                "executor heartbeats received",
                &[],
            ),
            crashes: registry.counter(
                "cloudcontroller.crashes",
                "instance crash reports received",
                &[],
            ),
            executors: registry.gauge(
                "cloudcontroller.executors",
                "executors heard from recently",
                "count",
                &[],
            ),
            dropped_malformed: dropped("malformed"),
            dropped_unknown_app: dropped("unknown_app"),
            dropped_wrong_cell: dropped(hydrant_bus::placement::REASON_WRONG_CELL),
            dropped_not_placed: dropped(hydrant_bus::placement::REASON_NOT_PLACED),
        }
    }

    /// Counts one answered request.
    /// Counts one request a quota refused, under the limit that refused it.
    pub(crate) fn quota_refused(&self, limit: &str) {
        if let Some((_, counter)) = self.quota_refused.iter().find(|(l, _)| *l == limit) {
            counter.inc();
        }
    }

    pub(crate) fn request(&self, status: u16) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        if let Some(counter) = self.requests.get(class) {
            counter.inc();
        }
    }

    /// Counts one stored blob.
    pub(crate) fn blob_uploaded(&self, size: u64) {
        self.blobs_uploaded.inc();
        self.blob_bytes.add(size);
    }
}
