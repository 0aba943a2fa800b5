//! The one error type of the agent: what stops it from starting or serving.
//!
//! Bad envelopes are not errors here: they are counted drops (`agent.dropped{reason}`) and, for
//! the sender, an `InvalidArgument` status. This type is for the operator: a config to fix or a
//! listener that failed.

/// Why the agent could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config field holds a value the agent cannot use.
    #[error("invalid agent config: {0}")]
    Config(#[from] hydrant_runtime::ConfigError),
    /// The `[telemetry]` section is invalid.
    #[error(transparent)]
    Telemetry(#[from] hydrant_emitter::Error),
    /// The runtime could not bind a listener or read the config.
    #[error(transparent)]
    Runtime(#[from] hydrant_runtime::Error),
    /// The gRPC ingress server failed.
    #[error("agent ingress server failed: {0}")]
    Ingress(#[from] tonic::transport::Error),
    /// The `[bus]` (followed for doppler announcements) cannot be reached.
    #[error("agent bus: {0}")]
    Bus(#[from] hydrant_bus::Error),
    /// The `tls` certificates cannot be used.
    #[error("agent tls: {0}")]
    Tls(#[from] hydrant_tls::Error),
}
