//! A nozzle's self-metrics per destination, and the in-band loss notice.
//!
//! The counters live in the role's [`Registry`], so they are served on `/metrics` and, when
//! `[telemetry] agent` is set, emitted as envelopes into the pipeline like every other role's
//! (`nozzle.received`, `nozzle.sent`, `nozzle.dropped{reason}`, `nozzle.retries`,
//! `nozzle.queue_depth`, `nozzle.queue_bytes`, `nozzle.lag_seconds`).
//!
//! Invariant: the `destination` tag is always the masked URL, so credentials never reach a
//! metric.

use std::time::Duration;

use hydrant_emitter::{Counter, Emitter, Gauge, Registry};

use crate::mask_url;

/// The source type of loss notices, as Cloud Foundry's `[LGR/LGR]` lines.
pub const LOSS_SOURCE_TYPE: &str = "LGR";

/// Drop reasons counted often enough to keep a handle for.
const KNOWN_REASONS: [&str; 4] = ["queue_full", "too_large", "retries_exhausted", "shutdown"];

/// Handles to one destination's counters and gauges. Cloning shares them.
#[derive(Debug, Clone)]
pub struct NozzleMetrics {
    registry: Registry,
    destination: String,
    received: Counter,
    sent: Counter,
    retries: Counter,
    known_drops: [Counter; KNOWN_REASONS.len()],
    queue_depth: Gauge,
    queue_bytes: Gauge,
    lag_seconds: Gauge,
}

impl NozzleMetrics {
    /// Registers the metrics of the destination `url` (masked before use).
    #[must_use]
    pub fn new(registry: &Registry, url: &str) -> Self {
        let destination = mask_url(url);
        let tags = [("destination", destination.as_str())];
        let dropped = |reason: &str| {
            registry.counter(
                "nozzle.dropped",
                "Messages lost on the way to a destination, by reason.",
                &[("destination", destination.as_str()), ("reason", reason)],
            )
        };
        Self {
            received: registry.counter(
                "nozzle.received",
                "Messages queued for a destination.",
                &tags,
            ),
            sent: registry.counter("nozzle.sent", "Messages a destination accepted.", &tags),
            retries: registry.counter(
                "nozzle.retries",
                "Batch attempts after a failed one.",
                &tags,
            ),
            known_drops: KNOWN_REASONS.map(dropped),
            queue_depth: registry.gauge(
                "nozzle.queue_depth",
                "Messages waiting for a destination.",
                "count",
                &tags,
            ),
            queue_bytes: registry.gauge(
                "nozzle.queue_bytes",
                "Bytes waiting for a destination.",
                "bytes",
                &tags,
            ),
            lag_seconds: registry.gauge(
                "nozzle.lag_seconds",
                "How long the oldest message taken for sending had waited.",
                "seconds",
                &tags,
            ),
            registry: registry.clone(),
            destination,
        }
    }

    /// The masked destination URL these metrics are tagged with.
    #[must_use]
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// `n` messages were taken in for this destination.
    pub fn received(&self, n: u64) {
        self.received.add(n);
    }

    /// `n` messages were delivered.
    pub fn sent(&self, n: u64) {
        self.sent.add(n);
    }

    /// One more attempt at a batch.
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// `n` messages were lost for `reason`.
    pub fn dropped(&self, reason: &'static str, n: u64) {
        match KNOWN_REASONS.iter().position(|r| *r == reason) {
            Some(i) => self.known_drops[i].add(n),
            None => self
                .registry
                .counter(
                    "nozzle.dropped",
                    "Messages lost on the way to a destination, by reason.",
                    &[
                        ("destination", self.destination.as_str()),
                        ("reason", reason),
                    ],
                )
                .add(n),
        }
    }

    /// Total dropped for this destination, every reason.
    #[must_use]
    pub fn dropped_total(&self) -> u64 {
        self.registry.counter_sum(
            "nozzle.dropped",
            &[("destination", self.destination.as_str())],
        )
    }

    /// The queue now holds `items` entries of `bytes` bytes.
    pub fn set_depth(&self, items: usize, bytes: usize) {
        self.queue_depth.set(items as f64);
        self.queue_bytes.set(bytes as f64);
    }

    /// The oldest message of the latest batch had waited `lag`.
    pub fn set_lag(&self, lag: Duration) {
        self.lag_seconds.set(lag.as_secs_f64());
    }
}

/// The text of a loss notice, in Cloud Foundry's words plus the drain's name:
/// `N messages lost for application GUID in syslog drain NAME with url URL` (URL masked).
#[must_use]
pub fn loss_notice_text(lost: u64, source_id: &str, drain_name: &str, url: &str) -> String {
    format!(
        "{lost} messages lost for application {source_id} in syslog drain {drain_name} with url {}",
        mask_url(url)
    )
}

/// Tells the app, in its own log stream, that the drain `drain_name` at `url` lost `lost` of
/// its messages: an `ERR` log with `source_type` [`LOSS_SOURCE_TYPE`], so it shows in
/// `hydrant logs` as `[LGR/LGR] ERR ...`.
pub fn loss_notice(emitter: &Emitter, source_id: &str, drain_name: &str, url: &str, lost: u64) {
    if lost == 0 {
        return;
    }
    let text = loss_notice_text(lost, source_id, drain_name, url);
    emitter.log_with_tags(
        source_id,
        LOSS_SOURCE_TYPE,
        text.as_bytes(),
        true,
        &[("source_type", LOSS_SOURCE_TYPE)],
    );
}

#[cfg(test)]
mod tests {
    use hydrant_emitter::Registry;

    use super::{NozzleMetrics, loss_notice_text};

    #[test]
    fn loss_notice_names_the_drain_and_masks_the_url() {
        let text = loss_notice_text(42, "app-guid", "papertrail", "syslog://u:secret@h:514");
        assert_eq!(
            text,
            "42 messages lost for application app-guid in syslog drain papertrail with url \
             syslog://u:****@h:514"
        );
        assert!(!text.contains("secret"));
    }

    #[test]
    fn metrics_never_carry_credentials() {
        let registry = Registry::new("nozzle-syslog", "0");
        let m = NozzleMetrics::new(&registry, "syslog://u:secret@h:514");
        m.received(3);
        m.sent(2);
        m.dropped("queue_full", 1);
        m.dropped("odd_reason", 2);
        m.retry();
        assert_eq!(m.dropped_total(), 3);
        let text = registry.render_prometheus();
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("u:****@h:514"), "{text}");
    }
}
