//! The nozzle core's error type. Messages name the config field at fault and never carry
//! credentials (URLs are masked before they get here).

/// What can go wrong in shared nozzle machinery.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value is out of range; `field` is its dotted path in the nozzle's config.
    #[error("config field `{field}`: {message}")]
    Config {
        /// The dotted config path, e.g. `queue.max_bytes`.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The firehose client refused its config for a reason other than one field.
    #[error("firehose: {0}")]
    Firehose(hydrant_firehose_client::Error),
}

/// The runtime's config-field error is this crate's [`Error::Config`], so `validate` uses the
/// runtime's [`hydrant_runtime::invalid`] and keeps its messages.
impl From<hydrant_runtime::ConfigError> for Error {
    fn from(e: hydrant_runtime::ConfigError) -> Self {
        Self::Config {
            field: e.field,
            message: e.message,
        }
    }
}
