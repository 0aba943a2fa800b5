//! The one error type of the cloud controller role: what stops it from starting or serving.
//!
//! Bad requests are not errors here: they are answered with an `{"errors": [...]}` body by the
//! API layer (`api::ApiError`). This type is for the operator: a config to fix, a data
//! directory or database that cannot be used, a listener that failed.

use std::path::PathBuf;

/// Why the cloud controller could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config field holds a value the cloud controller cannot use.
    #[error("invalid cloud controller config: {0}")]
    Config(#[from] hydrant_runtime::ConfigError),
    /// The `[telemetry]` section is invalid.
    #[error(transparent)]
    Telemetry(#[from] hydrant_emitter::Error),
    /// The bus could not be joined.
    #[error("cloud controller bus: {0}")]
    Bus(#[from] hydrant_bus::Error),
    /// The signing key could not be loaded or created.
    #[error("cloud controller signing key: {0}")]
    Auth(#[from] hydrant_auth::Error),
    /// The runtime could not bind a listener or read the config.
    #[error(transparent)]
    Runtime(#[from] hydrant_runtime::Error),
    /// A file or directory under `data_dir` could not be used.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error("cloud controller database ({context}): {source}")]
    Db {
        /// What was being done.
        context: &'static str,
        /// The database error.
        source: crate::sql::Error,
    },
    /// The API server failed.
    #[error("cloud controller API server failed: {0}")]
    Serve(#[source] std::io::Error),
}
