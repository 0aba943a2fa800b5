//! The one error type of the router: what stops it from starting or serving.
//!
//! Bad requests and bad registrations are not errors here: they become router-made responses
//! (`X-Cf-RouterError`) or counted drops (`router.dropped{reason}`). This type is for the
//! operator: a config to fix, a listener that failed, a bus that could not be joined.

/// Why the router could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config field holds a value the router cannot use.
    #[error("invalid router config: {0}")]
    Config(#[from] hydrant_runtime::ConfigError),
    /// The `[telemetry]` section is invalid.
    #[error(transparent)]
    Telemetry(#[from] hydrant_emitter::Error),
    /// The `[bus]` section is invalid, or the bus could not be joined.
    #[error("router bus: {0}")]
    Bus(#[from] hydrant_bus::Error),
    /// The runtime could not bind a listener or read the config.
    #[error(transparent)]
    Runtime(#[from] hydrant_runtime::Error),
    /// A worker thread (or its event loop) could not be started.
    #[error(
        "cannot start a router worker thread: {0}; lower `workers` or raise the process's thread limit"
    )]
    Worker(#[source] std::io::Error),
    /// Accepting client connections failed for good.
    #[error("router listener failed: {0}")]
    Accept(#[source] std::io::Error),
}
