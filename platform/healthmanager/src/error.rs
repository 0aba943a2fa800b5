//! The one error type of the health manager: what stops it from starting.
//!
//! Nothing that happens after start-up is an error here: an unreachable cloud controller makes
//! the desired-state copy stale, a refused restart is retried, a malformed bus message is
//! counted and dropped. Only configuration, the bus at start-up and the admin listener fail
//! [`crate::run`].

/// Why the health manager could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config field holds a value the health manager cannot use.
    #[error("invalid health manager config: {0}")]
    Config(#[from] hydrant_runtime::ConfigError),
    /// The `[telemetry]` section is invalid.
    #[error(transparent)]
    Telemetry(#[from] hydrant_emitter::Error),
    /// The bus could not be reached or refused a subscription.
    #[error(transparent)]
    Bus(#[from] hydrant_bus::Error),
    /// The runtime could not bind a listener or read the config.
    #[error(transparent)]
    Runtime(#[from] hydrant_runtime::Error),
}
