//! Cloud Foundry's crash restart schedule (Diego's `restart_calculator.go`), exactly.
//!
//! Flow: a crash event → [`next_crash_count`] (reset after five minutes of running) →
//! [`restart_delay`] → the tracker schedules the restart at `crash time + delay`.
//!
//! Invariant: the first two crashes restart at once; from the third the wait is
//! `30 s × 2^min(count − 3, 5)` (so 30 s, 1, 2, 4, 8 min, then 16 min); from the 200th crash the
//! instance is never restarted again.

use std::time::Duration;

/// Crash counts below this restart at once (`DefaultImmediateRestarts`).
pub const IMMEDIATE_RESTARTS: u32 = 3;
/// The first back-off (`CrashBackoffMinDuration`).
pub const MIN_BACKOFF: Duration = Duration::from_secs(30);
/// The longest back-off (`DefaultMaxBackoffDuration`).
pub const MAX_BACKOFF: Duration = Duration::from_secs(16 * 60);
/// From this crash count on the instance is left crashed (`DefaultMaxRestarts`).
pub const MAX_RESTARTS: u32 = 200;
/// An instance that ran longer than this before crashing starts counting again at 1
/// (`CrashResetTimeout`).
pub const CRASH_RESET: Duration = Duration::from_secs(5 * 60);

/// How long to wait before restarting an instance whose crash count (this crash included) is
/// `crash_count`; `None` when it must not be restarted any more.
#[must_use]
pub fn restart_delay(crash_count: u32) -> Option<Duration> {
    if crash_count >= MAX_RESTARTS {
        return None;
    }
    if crash_count < IMMEDIATE_RESTARTS {
        return Some(Duration::ZERO);
    }
    let doublings = (crash_count - IMMEDIATE_RESTARTS).min(5);
    Some(MIN_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF))
}

/// The crash count after a crash: 1 when the instance had been running for more than
/// [`CRASH_RESET`] (its earlier crashes are forgiven), else one more than before.
#[must_use]
pub fn next_crash_count(previous: u32, ran_for: Option<Duration>) -> u32 {
    match ran_for {
        Some(ran) if ran > CRASH_RESET => 1,
        _ => previous.saturating_add(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60;

    #[test]
    fn the_schedule_matches_diegos_table() {
        let table: &[(u32, Option<u64>)] = &[
            (0, Some(0)),
            (1, Some(0)),
            (2, Some(0)),
            (3, Some(30)),
            (4, Some(60)),
            (5, Some(2 * MIN)),
            (6, Some(4 * MIN)),
            (7, Some(8 * MIN)),
            (8, Some(16 * MIN)),
            (9, Some(16 * MIN)),
            (100, Some(16 * MIN)),
            (199, Some(16 * MIN)),
            (200, None),
            (201, None),
            (u32::MAX, None),
        ];
        for &(count, secs) in table {
            assert_eq!(
                restart_delay(count),
                secs.map(Duration::from_secs),
                "crash count {count}"
            );
        }
    }

    #[test]
    fn every_count_up_to_the_limit_has_a_bounded_delay() {
        for count in 1..=250 {
            match restart_delay(count) {
                Some(d) => {
                    assert!(count < MAX_RESTARTS);
                    assert!(d <= MAX_BACKOFF, "count {count}");
                    if count >= 8 {
                        assert_eq!(d, MAX_BACKOFF, "count {count}");
                    }
                }
                None => assert!(count >= MAX_RESTARTS),
            }
        }
        let waits: Vec<u64> = (1..=9)
            .map(|c| restart_delay(c).unwrap().as_secs())
            .collect();
        assert_eq!(waits, [0, 0, 30, 60, 120, 240, 480, 960, 960]);
    }

    #[test]
    fn five_minutes_of_running_resets_the_count() {
        let cases: &[(u32, Option<u64>, u32)] = &[
            (0, None, 1),
            (4, None, 5),
            (4, Some(10), 5),
            (4, Some(300), 5),
            (4, Some(301), 1),
            (199, Some(3600), 1),
            (199, Some(60), 200),
            (u32::MAX, None, u32::MAX),
        ];
        for &(previous, ran, next) in cases {
            assert_eq!(
                next_crash_count(previous, ran.map(Duration::from_secs)),
                next,
                "previous {previous}, ran {ran:?}"
            );
        }
    }
}
