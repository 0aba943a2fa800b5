//! [`MinuteCounts`]: one app's router responses in one wall-clock minute, the unit of the SLO
//! alerter's long windows.
//!
//! A 3-day burn-rate window over raw data would hold every request for 3 days; these buckets
//! hold what an availability or latency SLI needs (totals, app-made and router-made errors,
//! counts under fixed latency bounds) in under 100 bytes a minute. Minutes are numbered from
//! the UNIX epoch so persisted buckets line up with live ones after a restart.
//!
//! Invariant: the serialised form is a flat array per minute (`[minute, total, server_errors,
//! router_errors, router_server_errors, timed, le...]`) whose latency part has exactly
//! [`LATENCY_BOUNDS_MS`]`.len()` entries; anything else is refused on restore.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds, in ms, of the per-minute latency counts: `latency_le[i]` counts app-made
/// responses that took at most `LATENCY_BOUNDS_MS[i]` ms. A latency SLO threshold should be one
/// of these; any other threshold is rounded down to the nearest bound, which can only make the
/// SLI look worse, never better.
pub const LATENCY_BOUNDS_MS: [u32; 16] = [
    5, 10, 25, 50, 75, 100, 150, 200, 250, 300, 500, 750, 1000, 2000, 5000, 10_000,
];

/// One app's router responses in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Row", into = "Row")]
pub struct MinuteCounts {
    /// Minutes since the UNIX epoch.
    pub minute: u64,
    /// Every response the router reported (app-made and router-made).
    pub total: u32,
    /// App-made responses with a 5xx status.
    pub server_errors: u32,
    /// Router-made responses (no route, no endpoint, backend unreachable, ...), any status.
    pub router_errors: u32,
    /// Router-made responses with a 5xx status.
    pub router_server_errors: u32,
    /// App-made responses whose latency was measured (the denominator of a latency SLI).
    pub timed: u32,
    /// App-made responses at or under each of [`LATENCY_BOUNDS_MS`].
    pub latency_le: [u32; LATENCY_BOUNDS_MS.len()],
}

/// The compact wire form: one flat array per minute.
#[derive(Serialize, Deserialize)]
struct Row(u64, u32, u32, u32, u32, u32, [u32; LATENCY_BOUNDS_MS.len()]);

impl From<Row> for MinuteCounts {
    fn from(r: Row) -> Self {
        Self {
            minute: r.0,
            total: r.1,
            server_errors: r.2,
            router_errors: r.3,
            router_server_errors: r.4,
            timed: r.5,
            latency_le: r.6,
        }
    }
}

impl From<MinuteCounts> for Row {
    fn from(m: MinuteCounts) -> Self {
        Row(
            m.minute,
            m.total,
            m.server_errors,
            m.router_errors,
            m.router_server_errors,
            m.timed,
            m.latency_le,
        )
    }
}

impl MinuteCounts {
    /// An empty minute.
    #[must_use]
    pub fn new(minute: u64) -> Self {
        Self {
            minute,
            ..Self::default()
        }
    }

    /// Counts one response. `latency` is `None` for router-made responses.
    pub(crate) fn record(&mut self, app_5xx: bool, router: Option<bool>, latency_us: Option<u64>) {
        self.total = self.total.saturating_add(1);
        match router {
            Some(is_5xx) => {
                self.router_errors = self.router_errors.saturating_add(1);
                if is_5xx {
                    self.router_server_errors = self.router_server_errors.saturating_add(1);
                }
            }
            None if app_5xx => self.server_errors = self.server_errors.saturating_add(1),
            None => {}
        }
        if let Some(us) = latency_us {
            self.timed = self.timed.saturating_add(1);
            let ms = us.div_ceil(1000);
            // Counts are cumulative, so the first bound that fits and every bound after it.
            let from = LATENCY_BOUNDS_MS.partition_point(|&b| u64::from(b) < ms);
            for c in &mut self.latency_le[from..] {
                *c = c.saturating_add(1);
            }
        }
    }

    /// Adds another minute's counts into this one (restoring over live data).
    pub fn merge(&mut self, other: &MinuteCounts) {
        self.total = self.total.saturating_add(other.total);
        self.server_errors = self.server_errors.saturating_add(other.server_errors);
        self.router_errors = self.router_errors.saturating_add(other.router_errors);
        self.router_server_errors = self
            .router_server_errors
            .saturating_add(other.router_server_errors);
        self.timed = self.timed.saturating_add(other.timed);
        for (a, b) in self.latency_le.iter_mut().zip(other.latency_le) {
            *a = a.saturating_add(b);
        }
    }

    /// Good responses for an availability SLI: everything not 5xx. Router-made 5xx are bad
    /// only when `count_router` says so (the router's own failures are the platform's, and an
    /// SLO may want to judge the app alone).
    #[must_use]
    pub fn available(&self, count_router: bool) -> u32 {
        let bad = if count_router {
            self.server_errors.saturating_add(self.router_server_errors)
        } else {
            self.server_errors
        };
        self.total.saturating_sub(bad)
    }

    /// App-made responses no slower than `threshold` (rounded down to a bound in
    /// [`LATENCY_BOUNDS_MS`]); `None` when the threshold is under the smallest bound.
    #[must_use]
    pub fn faster_than(&self, threshold: Duration) -> Option<u32> {
        let ms = threshold.as_millis();
        let n = LATENCY_BOUNDS_MS.partition_point(|&b| u128::from(b) <= ms);
        n.checked_sub(1).map(|i| self.latency_le[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_counts_are_cumulative_and_thresholds_round_down() {
        let mut m = MinuteCounts::new(7);
        m.record(false, None, Some(4_000));
        m.record(false, None, Some(5_000));
        m.record(false, None, Some(5_001));
        m.record(false, None, Some(120_000));
        m.record(false, None, Some(60_000_000));
        assert_eq!(m.timed, 5);
        assert_eq!(m.faster_than(Duration::from_millis(5)), Some(2));
        assert_eq!(m.faster_than(Duration::from_millis(10)), Some(3));
        // 120 ms rounds down to the 100 ms bound.
        assert_eq!(m.faster_than(Duration::from_millis(120)), Some(3));
        assert_eq!(m.faster_than(Duration::from_millis(150)), Some(4));
        assert_eq!(m.faster_than(Duration::from_secs(60)), Some(4));
        assert_eq!(m.faster_than(Duration::from_millis(4)), None);
    }

    #[test]
    fn availability_separates_router_errors() {
        let mut m = MinuteCounts::new(1);
        m.record(false, None, Some(1));
        m.record(true, None, Some(1));
        m.record(false, Some(true), None);
        m.record(false, Some(false), None);
        assert_eq!(m.total, 4);
        assert_eq!(m.available(false), 3);
        assert_eq!(m.available(true), 2);
        assert_eq!(m.router_errors, 2);
    }

    #[test]
    fn compact_form_round_trips() {
        let mut m = MinuteCounts::new(29_000_000);
        m.record(true, None, Some(42_000));
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.starts_with("[29000000,1,1,0,0,1,["), "{text}");
        let back: MinuteCounts = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
        assert!(serde_json::from_str::<MinuteCounts>("[1,1,1,0,0,1,[1,2]]").is_err());
        let mut sum = m;
        sum.merge(&m);
        assert_eq!(sum.total, 2);
        assert_eq!(sum.latency_le[15], 2);
    }
}
