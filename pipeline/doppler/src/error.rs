//! The one error type of the doppler role: what stops it from starting or keeps it from running.
//!
//! Per-envelope and per-request problems are not here: those are counted in metrics and answered
//! with a gRPC status, and the doppler keeps serving everyone else.

/// Why the doppler could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range; the message names the field and what to set it to.
    #[error("doppler config: {field}: {message}")]
    Config {
        /// The offending field, as written in the TOML.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The `[logcache]` section is out of range.
    #[error("doppler config: {0}")]
    LogCache(#[from] hydrant_logcache::Error),
    /// The runtime could not bind a listener or read the config.
    #[error(transparent)]
    Runtime(#[from] hydrant_runtime::Error),
    /// The `tls` certificates cannot be used.
    #[error("doppler tls: {0}")]
    Tls(#[from] hydrant_tls::Error),
    /// The gRPC server failed.
    #[error("doppler gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// An internal task panicked or was cancelled unexpectedly.
    #[error("doppler task {task} failed: {message}")]
    Task {
        /// Which task.
        task: &'static str,
        /// The join error.
        message: String,
    },
}
