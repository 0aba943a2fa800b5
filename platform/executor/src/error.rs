//! The one error type of the executor: what stops it from starting, and why one instance could
//! not be started.
//!
//! Instance errors never stop the executor: they become a refused [`ExecutorReply`], a CELL log
//! line and a crash record. Their messages go to users and operators, so they say what was
//! wrong with the request or droplet and never echo a droplet URL's credentials.
//!
//! [`ExecutorReply`]: hydrant_bus::messages::ExecutorReply

use std::path::PathBuf;

/// Why the executor could not run, or why an instance could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config field holds a value the executor cannot use.
    #[error("invalid executor config: {field}: {message}")]
    Config {
        /// The field, as written in the config file.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The `[telemetry]` section is invalid.
    #[error(transparent)]
    Telemetry(#[from] hydrant_emitter::Error),
    /// The bus could not be reached or refused a subscription.
    #[error(transparent)]
    Bus(#[from] hydrant_bus::Error),
    /// The runtime could not bind a listener or read the config.
    #[error(transparent)]
    Runtime(#[from] hydrant_runtime::Error),
    /// A file or directory the executor owns could not be used.
    #[error("{what} {path:?}: {source}")]
    Io {
        /// What the executor was doing.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A start request cannot be honoured as written.
    #[error("invalid start request: {0}")]
    InvalidRequest(String),
    /// The droplet could not be fetched.
    #[error("downloading droplet from {url} failed: {reason}")]
    Download {
        /// The droplet URL without credentials or query.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The droplet's bytes do not hash to what the request promised.
    #[error("droplet sha256 mismatch: expected {expected}, got {actual}")]
    ChecksumMismatch {
        /// The `droplet_sha256` of the request.
        expected: String,
        /// The hash of what was downloaded.
        actual: String,
    },
    /// The droplet holds an entry that would land outside the instance directory, or a kind
    /// of file an app has no business shipping.
    #[error("droplet entry {path:?} refused: {reason}")]
    UnsafeEntry {
        /// The entry's path as written in the archive (escaped by `{:?}`).
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The droplet is larger than a limit.
    #[error("droplet is too large: {0}")]
    TooLarge(String),
    /// The droplet is not a readable tar.gz.
    #[error("droplet is not a valid tar.gz: {0}")]
    Corrupt(String),
    /// The app's process could not be started.
    #[error("cannot start the app's process: {0}")]
    Spawn(#[source] std::io::Error),
}
