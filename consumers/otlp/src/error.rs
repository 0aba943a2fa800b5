//! The OTLP nozzle's error type. Nothing here ever carries a header value or a credential:
//! the endpoint is shown through `mask_url`, headers only by name.

/// What can go wrong in the OTLP nozzle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value is wrong; `field` is its dotted path.
    #[error("config field `{field}`: {message}")]
    Config {
        /// The dotted config path, e.g. `metrics.histogram_bounds_seconds`.
        field: String,
        /// What is wrong and how to fix it (no secrets).
        message: String,
    },
    /// A shared-machinery config section is wrong.
    #[error(transparent)]
    Core(#[from] hydrant_nozzle_core::Error),
    /// The firehose client refused its config or gave up.
    #[error("firehose: {0}")]
    Firehose(#[from] hydrant_firehose_client::Error),
    /// The runtime could not bind a listener or read the config.
    #[error(transparent)]
    Runtime(#[from] hydrant_runtime::Error),
}
