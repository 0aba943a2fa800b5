//! A circuit breaker per destination: after a run of failures the sender stops trying for a
//! cool-down, then lets one probe through.
//!
//! Why: a destination that stays down would otherwise cost a connect timeout per batch,
//! forever, and tie the sender up in retries while the queue in front of it is what should be
//! absorbing (and counting) the loss. Invariant: while open, [`CircuitBreaker::allow`] says no
//! until the cool-down has passed; one success closes it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// When the breaker opens and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker. Default 5.
    pub failure_threshold: u32,
    /// How long it stays open before one probe is allowed, in ms. Default 10000.
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_ms: 10_000,
        }
    }
}

impl BreakerConfig {
    /// Checks the section; `prefix` is its dotted path in the nozzle's config.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field.
    pub fn validate(&self, prefix: &str) -> Result<(), Error> {
        if self.failure_threshold == 0 {
            return Err(Error::Config {
                field: format!("{prefix}.failure_threshold"),
                message: "must be at least 1 (failures before the breaker opens)".to_owned(),
            });
        }
        Ok(())
    }
}

/// The breaker's state machine: closed → open (after `failure_threshold` failures) →
/// half-open (after `open_ms`) → closed on success, open again on failure.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    failures: u32,
    open_until: Option<Instant>,
    opened: u64,
}

impl CircuitBreaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            failures: 0,
            open_until: None,
            opened: 0,
        }
    }

    /// How long the caller must wait before the next attempt; zero when it may go now.
    #[must_use]
    pub fn wait(&self) -> Duration {
        self.open_until.map_or(Duration::ZERO, |until| {
            until.saturating_duration_since(Instant::now())
        })
    }

    /// Waits until an attempt may go. `false` when `shutdown` is cancelled during the
    /// cool-down: the caller gives up the batch it holds and counts it as `shutdown`. A closed
    /// breaker answers `true` at once, even after shutdown, so a draining sender keeps sending.
    pub async fn ready(&self, shutdown: &CancellationToken) -> bool {
        let wait = self.wait();
        if wait.is_zero() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = shutdown.cancelled() => false,
        }
    }

    /// Whether an attempt may go now.
    #[must_use]
    pub fn allow(&self) -> bool {
        self.wait().is_zero()
    }

    /// Whether the breaker is open (attempts are being held back or probing).
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }

    /// How many times the breaker has opened.
    #[must_use]
    pub fn times_opened(&self) -> u64 {
        self.opened
    }

    /// An attempt succeeded: close.
    pub fn record_success(&mut self) {
        self.failures = 0;
        self.open_until = None;
    }

    /// Opens now, whatever the count: for a failure that retrying soon cannot fix (a drain
    /// the nozzle refuses to reach), so the next probe waits a full cool-down.
    pub fn trip(&mut self) {
        self.failures = self.failures.max(self.config.failure_threshold);
        if self.open_until.is_none() {
            self.opened += 1;
        }
        self.open_until = Some(Instant::now() + Duration::from_millis(self.config.open_ms));
    }

    /// An attempt failed: count it, and open (or re-open after a failed probe).
    pub fn record_failure(&mut self) {
        self.failures = self.failures.saturating_add(1);
        if self.open_until.is_some() || self.failures >= self.config.failure_threshold.max(1) {
            if self.open_until.is_none() {
                self.opened += 1;
            }
            self.open_until = Some(Instant::now() + Duration::from_millis(self.config.open_ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{BreakerConfig, CircuitBreaker};

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_then_probes_after_cooldown() {
        let mut b = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 3,
            open_ms: 1_000,
        });
        b.record_failure();
        b.record_failure();
        assert!(b.allow() && !b.is_open());
        b.record_failure();
        assert!(!b.allow() && b.is_open());
        assert_eq!(b.wait(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!b.allow());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.allow(), "half-open after the cool-down");
        // A failed probe re-opens for a full cool-down at once.
        b.record_failure();
        assert_eq!(b.wait(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        b.record_success();
        assert!(b.allow() && !b.is_open());
        assert_eq!(b.times_opened(), 1);
        b.trip();
        assert!(b.is_open() && b.wait() == Duration::from_secs(1));
        assert_eq!(b.times_opened(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn ready_waits_out_the_cool_down_unless_shut_down() {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut b = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 1,
            open_ms: 1_000,
        });
        let start = tokio::time::Instant::now();
        assert!(b.ready(&shutdown).await, "closed: at once");
        assert_eq!(start.elapsed(), Duration::ZERO);
        b.record_failure();
        assert!(b.ready(&shutdown).await);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(1),
            "open: the cool-down"
        );
        b.record_failure();
        shutdown.cancel();
        assert!(!b.ready(&shutdown).await, "shut down during the cool-down");
        b.record_success();
        assert!(
            b.ready(&shutdown).await,
            "closed: still ready after shutdown"
        );
    }
}
