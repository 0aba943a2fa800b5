//! The one error type of the SLO alerter: what stops it from starting.
//!
//! After start-up nothing is an error here: an unreachable cloud controller keeps the last
//! good copy of the SLOs, a lost stream is reconnected (and "not hearing" is shown in the
//! status), a failing webhook is retried then counted, an unreadable state file is skipped
//! and counted. Only configuration, the data directory and the admin listener fail
//! [`crate::run`].

use std::path::PathBuf;

/// Why the SLO alerter could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config field holds a value the alerter cannot use.
    #[error("invalid SLO alerter config: {0}")]
    Config(#[from] hydrant_runtime::ConfigError),
    /// The `[telemetry]` section is invalid.
    #[error(transparent)]
    Telemetry(#[from] hydrant_emitter::Error),
    /// The `[windows]` section is invalid.
    #[error(transparent)]
    Windows(#[from] hydrant_windows::Error),
    /// The data directory cannot be used.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The runtime could not bind a listener or read the config.
    #[error(transparent)]
    Runtime(#[from] hydrant_runtime::Error),
}
