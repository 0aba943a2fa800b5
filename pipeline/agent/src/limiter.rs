//! The per app instance log rate limit, with the semantics of Diego's executor: a token bucket
//! of payload bytes per second whose burst equals the rate, and after an overage one notice and
//! one second of silence.
//!
//! Sits in the agent's ingress path, before sequencing: a line it drops never gets a sequence
//! number, so consumers see the notice, not a gap.
//!
//! Invariant: at most one notice per instance per second, whatever the input rate; a line larger
//! than the burst can never pass (as with `golang.org/x/time/rate`'s `AllowN`).

use std::time::Duration;

use tokio::time::Instant;

/// How long every line of an instance is dropped after it exceeded its limit.
pub(crate) const OVERAGE_SILENCE: Duration = Duration::from_secs(1);

/// What to do with one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the limit: forward it.
    Pass,
    /// Over the limit, and the app has already been told this second: drop it.
    Drop,
    /// Over the limit for the first time in a while: drop it and send the app the notice.
    DropAndNotify,
}

/// One instance's bucket.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
    silenced_until: Option<Instant>,
}

impl Bucket {
    /// A full bucket: a fresh instance may burst up to its limit at once.
    pub(crate) fn new(limit: u64, now: Instant) -> Self {
        Self {
            tokens: limit as f64,
            last: now,
            silenced_until: None,
        }
    }

    /// Decides about a line of `bytes` payload bytes arriving at `now`.
    pub(crate) fn check(&mut self, limit: u64, bytes: usize, now: Instant) -> Verdict {
        let rate = limit as f64;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.last = now;
        if let Some(until) = self.silenced_until {
            if now < until {
                return Verdict::Drop;
            }
            self.silenced_until = None;
        }
        let need = bytes as f64;
        if need <= self.tokens {
            self.tokens -= need;
            Verdict::Pass
        } else {
            self.silenced_until = Some(now + OVERAGE_SILENCE);
            Verdict::DropAndNotify
        }
    }
}

/// The text of the notice, as Diego words it.
pub(crate) fn notice(limit: u64) -> String {
    format!("app instance exceeded log rate limit ({limit} bytes/sec)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn burst_up_to_the_limit_passes_then_one_notice_then_silence() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100, t0);
        assert_eq!(b.check(100, 60, t0), Verdict::Pass);
        assert_eq!(b.check(100, 40, t0), Verdict::Pass);
        assert_eq!(b.check(100, 1, t0), Verdict::DropAndNotify);
        // Everything in the next second is dropped without another notice, even lines that
        // would fit the refilled bucket.
        for ms in [1, 500, 999] {
            assert_eq!(b.check(100, 1, at(t0, ms)), Verdict::Drop);
        }
        // After the silence the bucket has refilled.
        assert_eq!(b.check(100, 100, at(t0, 1000)), Verdict::Pass);
    }

    #[test]
    fn steady_traffic_under_the_limit_always_passes() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, t0);
        for i in 0..10_000u64 {
            // 10 bytes every 10 ms = 1000 bytes/s.
            assert_eq!(b.check(1000, 10, at(t0, i * 10)), Verdict::Pass, "line {i}");
        }
    }

    #[test]
    fn a_flood_gets_one_notice_per_second() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1024, t0);
        let mut notices = 0;
        let mut passed = 0u64;
        // 100 bytes every millisecond for 10 s: ~10x the limit.
        for ms in 0..10_000 {
            match b.check(1024, 100, at(t0, ms)) {
                Verdict::DropAndNotify => notices += 1,
                Verdict::Pass => passed += 100,
                Verdict::Drop => {}
            }
        }
        assert!((9..=10).contains(&notices), "{notices} notices in 10 s");
        // What passes is bounded by the burst plus the rate over each unsilenced window.
        assert!(passed <= 1024 * 11, "{passed} bytes passed");
    }

    #[test]
    fn a_line_larger_than_the_burst_never_passes() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, t0);
        assert_eq!(b.check(10, 11, at(t0, 5000)), Verdict::DropAndNotify);
        assert_eq!(b.check(10, 11, at(t0, 10_000)), Verdict::DropAndNotify);
    }

    #[test]
    fn the_notice_names_the_limit() {
        assert_eq!(
            notice(1024),
            "app instance exceeded log rate limit (1024 bytes/sec)"
        );
    }
}
