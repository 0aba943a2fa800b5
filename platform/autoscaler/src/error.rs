//! The one error type of the autoscaler: what stops it from starting.
//!
//! Nothing after start-up is an error here: an unreachable cloud controller keeps the last
//! policies, a lost firehose makes every app hold, a refused scale call is retried later.

/// Why the autoscaler could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config field holds a value the autoscaler cannot use.
    #[error("invalid autoscaler config: {0}")]
    Config(#[from] hydrant_runtime::ConfigError),
    /// The `[telemetry]` section is invalid.
    #[error(transparent)]
    Telemetry(#[from] hydrant_emitter::Error),
    /// The `[windows]` section is invalid.
    #[error(transparent)]
    Windows(#[from] hydrant_windows::Error),
    /// The `[firehose]` section is invalid.
    #[error(transparent)]
    Firehose(#[from] hydrant_firehose_client::Error),
    /// The runtime could not bind a listener or read the config.
    #[error(transparent)]
    Runtime(#[from] hydrant_runtime::Error),
}
