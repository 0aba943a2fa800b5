//! The error every nozzle shares. Messages name the config field at fault and never carry
//! credentials (URLs are masked before they get here).
//!
//! Each nozzle's own error enum wraps this one as its `Core` variant and adds only what is its
//! own (a drain, a request); [`nozzle_error_conversions!`](crate::nozzle_error_conversions)
//! gives it the conversions, so the config, firehose and runtime cases live here once.

/// What can go wrong in shared nozzle machinery, and in every nozzle's config.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value is out of range; `field` is its dotted path in the nozzle's config.
    #[error("config field `{field}`: {message}")]
    Config {
        /// The dotted config path, e.g. `queue.max_bytes`.
        field: String,
        /// What is wrong and how to fix it (URLs masked, no secrets).
        message: String,
    },
    /// The firehose client refused its config for a reason other than one field, or the
    /// stream ended for good.
    #[error("firehose: {0}")]
    Firehose(hydrant_firehose_client::Error),
    /// The runtime could not bind a listener or read the config.
    #[error(transparent)]
    Runtime(#[from] hydrant_runtime::Error),
}

impl Error {
    /// A config error naming `field` with what is wrong and how to fix it.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The runtime's config-field error is this crate's [`Error::Config`], so `validate` uses the
/// runtime's [`hydrant_runtime::invalid`] and keeps its messages.
impl From<hydrant_runtime::ConfigError> for Error {
    fn from(e: hydrant_runtime::ConfigError) -> Self {
        Self::config(e.field, e.message)
    }
}

/// Gives a nozzle's error enum (which must have a `Core(#[from] hydrant_nozzle_core::Error)`
/// variant)
/// the shared cases: `?` on a firehose-client, runtime or runtime-config error, and
/// `Error::config(field, message)`.
#[macro_export]
macro_rules! nozzle_error_conversions {
    ($error:ty) => {
        impl From<$crate::__error_sources::FirehoseError> for $error {
            fn from(e: $crate::__error_sources::FirehoseError) -> Self {
                Self::Core($crate::Error::Firehose(e))
            }
        }

        impl From<$crate::__error_sources::RuntimeError> for $error {
            fn from(e: $crate::__error_sources::RuntimeError) -> Self {
                Self::Core($crate::Error::Runtime(e))
            }
        }

        impl From<$crate::__error_sources::ConfigError> for $error {
            fn from(e: $crate::__error_sources::ConfigError) -> Self {
                Self::Core($crate::Error::from(e))
            }
        }

        impl $error {
            /// A config error naming `field` (its dotted path) with what is wrong and how to
            /// fix it.
            #[allow(dead_code, reason = "not every nozzle builds config errors of its own")]
            pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
                Self::Core($crate::Error::config(field, message))
            }
        }
    };
}
