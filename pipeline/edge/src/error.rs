//! The traffic controller's errors: what stops `run` from starting or keeps it from serving.
//!
//! Per-request failures (bad tokens, bad queries, a doppler that is down) are not here: they
//! are answered to the client and counted, and the role keeps running.

/// Why the traffic controller could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is unusable; the error names the field.
    #[error("invalid trafficcontroller config: {0}")]
    Config(#[from] hydrant_runtime::ConfigError),
    /// The token key set file could not be loaded.
    #[error("cannot load the token keys: {0}")]
    Key(#[from] hydrant_auth::Error),
    /// The bus the doppler announcements are followed on could not be reached.
    #[error("cannot connect to the bus to follow the dopplers: {0}")]
    Bus(#[from] hydrant_bus::Error),
    /// The runtime could not bind a listener or read the config.
    #[error(transparent)]
    Runtime(#[from] hydrant_runtime::Error),
    /// Serving HTTP failed.
    #[error("{what} server failed: {source}")]
    Serve {
        /// Which listener (`http` or `admin`).
        what: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
}
