//! The syslog nozzle's error type. Every message that names a drain carries its masked URL.

/// What can go wrong in the syslog nozzle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value is wrong; `field` is its dotted path.
    #[error("config field `{field}`: {message}")]
    Config {
        /// The dotted config path, e.g. `drains[0]`.
        field: String,
        /// What is wrong and how to fix it (URLs masked).
        message: String,
    },
    /// A shared-machinery config section is wrong.
    #[error(transparent)]
    Core(#[from] hydrant_nozzle_core::Error),
    /// The firehose client refused its config.
    #[error("firehose: {0}")]
    Firehose(#[from] hydrant_firehose_client::Error),
    /// A listener could not be bound.
    #[error("cannot bind {field} {addr}: {source}")]
    Bind {
        /// The config field.
        field: &'static str,
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Talking to a drain failed.
    #[error("drain {url}: {source}")]
    Drain {
        /// The masked URL.
        url: String,
        /// Why.
        source: std::io::Error,
    },
    /// The admin server failed.
    #[error("admin server: {0}")]
    Admin(std::io::Error),
}
