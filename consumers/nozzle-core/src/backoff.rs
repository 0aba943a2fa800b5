//! The nozzles' retry policy for a batch: when to retry (the runtime's one capped exponential
//! backoff with jitter, [`hydrant_runtime::Backoff`]) and how often before giving up.
//!
//! Invariant: the delay never exceeds `max`, and jitter only shortens it, so a fleet of
//! nozzles cut off by the same outage does not retry in lockstep and never waits longer than
//! the operator configured.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Retry policy: `initial * 2^attempt`, capped at `max`, minus up to `jitter` of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    /// Delay before the first retry, in ms. Default 10.
    pub initial_ms: u64,
    /// Cap on the delay, in ms. Default 5000.
    pub max_ms: u64,
    /// Fraction of each delay that is randomised away (0 = none, 1 = anywhere in
    /// [0, delay]). Default 0.5.
    pub jitter: f64,
    /// Attempts on one batch after the first before it is dropped (reason
    /// `retries_exhausted`); 0 means never retry. Default 8.
    pub max_retries: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_ms: 10,
            max_ms: 5_000,
            jitter: 0.5,
            max_retries: 8,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based).
    #[must_use]
    pub fn delay(&self, attempt: u32) -> Duration {
        hydrant_runtime::Backoff::from_ms(self.initial_ms, self.max_ms, self.jitter).delay(attempt)
    }

    /// Checks the section; `prefix` is its dotted path in the nozzle's config.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field.
    pub fn validate(&self, prefix: &str) -> Result<(), Error> {
        if self.initial_ms == 0 {
            return Err(Error::Config {
                field: format!("{prefix}.initial_ms"),
                message: "must be at least 1 (ms before the first retry)".to_owned(),
            });
        }
        if self.max_ms < self.initial_ms {
            return Err(Error::Config {
                field: format!("{prefix}.max_ms"),
                message: format!("must be at least initial_ms ({})", self.initial_ms),
            });
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::Config {
                field: format!("{prefix}.jitter"),
                message: "must be between 0 and 1".to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Backoff;

    #[test]
    fn doubles_and_caps_without_jitter() {
        let b = Backoff {
            initial_ms: 10,
            max_ms: 100,
            jitter: 0.0,
            max_retries: 3,
        };
        let got: Vec<_> = (0..6).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(got, [10, 20, 40, 80, 100, 100]);
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(100));
    }

    #[test]
    fn jitter_only_shortens() {
        let b = Backoff {
            jitter: 1.0,
            ..Backoff::default()
        };
        for attempt in 0..20 {
            assert!(b.delay(attempt) <= Duration::from_millis(b.max_ms));
        }
    }

    #[test]
    fn validate_names_the_field() {
        let b = Backoff {
            jitter: 2.0,
            ..Backoff::default()
        };
        let e = b.validate("retry").unwrap_err().to_string();
        assert!(e.contains("retry.jitter"), "{e}");
    }
}
