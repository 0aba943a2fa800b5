//! The one capped exponential backoff with jitter every role retries with (reconnects to a
//! doppler or an edge, redelivery of a batch or a webhook).
//!
//! It is the mechanism only; each role keeps its documented config fields (`initial_ms`,
//! `max_ms`, `jitter`, ...) and builds a [`Backoff`] from them.
//!
//! Invariant: a delay never exceeds `max` (nor falls below zero), and jitter only shortens it,
//! so a fleet cut off by the same outage does not come back in lockstep and never waits longer
//! than the operator configured.

use std::time::Duration;

/// `initial * 2^attempt`, capped at `max`, then shortened by a random part of up to `jitter`
/// of itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay before the first retry (attempt 0).
    pub initial: Duration,
    /// The cap. A `max` below `initial` is read as `initial`.
    pub max: Duration,
    /// The fraction of each delay randomised away: 0 = none, 1 = anywhere in `[0, delay]`.
    /// Clamped to `0..=1`.
    pub jitter: f64,
}

impl Backoff {
    /// A backoff from the millisecond fields roles' configs carry.
    #[must_use]
    pub fn from_ms(initial_ms: u64, max_ms: u64, jitter: f64) -> Self {
        Self {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
            jitter,
        }
    }

    /// The delay before retry number `attempt` (0-based), jittered.
    #[must_use]
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.ceiling(attempt);
        let cut = base.mul_f64(self.jitter.clamp(0.0, 1.0) * fastrand::f64());
        base.saturating_sub(cut)
    }

    /// The delay before retry number `attempt` before jitter: the most [`Backoff::delay`] can
    /// return.
    #[must_use]
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial
            .saturating_mul(factor)
            .min(self.max.max(self.initial))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Backoff;

    #[test]
    fn doubles_and_caps_without_jitter() {
        let b = Backoff::from_ms(10, 100, 0.0);
        let got: Vec<_> = (0..6).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(got, [10, 20, 40, 80, 100, 100]);
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(100));
    }

    #[test]
    fn jitter_only_shortens_and_never_below_the_jitter_floor() {
        let b = Backoff::from_ms(100, 5_000, 0.5);
        for attempt in 0..40 {
            let d = b.delay(attempt);
            let full = b.ceiling(attempt);
            assert!(d <= full && d >= full / 2, "{d:?} vs {full:?}");
            assert!(d <= Duration::from_millis(5_000));
        }
    }

    #[test]
    fn a_cap_below_the_start_is_the_start() {
        let b = Backoff::from_ms(300, 100, 0.0);
        assert_eq!(b.delay(5), Duration::from_millis(300));
    }
}
