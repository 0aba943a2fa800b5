//! The Datadog nozzle's error type.
//!
//! Invariant: no message built here carries the API key. The key only ever lives in an
//! [`crate::ApiKey`] (whose `Debug` is masked) and in a sensitive header value; URLs are shown
//! through `mask_url`.

/// What can go wrong in the Datadog nozzle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value is wrong; `field` is its dotted path.
    #[error("config field `{field}`: {message}")]
    Config {
        /// The dotted config path, e.g. `batch.max_compressed_bytes`.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A shared-machinery config section is wrong.
    #[error(transparent)]
    Core(#[from] hydrant_nozzle_core::Error),
    /// The firehose client refused its config or the stream ended for good.
    #[error("firehose: {0}")]
    Firehose(#[from] hydrant_firehose_client::Error),
    /// The runtime could not bind a listener or read the config.
    #[error(transparent)]
    Runtime(#[from] hydrant_runtime::Error),
    /// One request to Datadog failed before an answer came back (connect, TLS, write, read,
    /// deadline).
    #[error("request to {url}: {message}")]
    Request {
        /// The masked endpoint URL.
        url: String,
        /// Why, in words.
        message: String,
    },
}

impl Error {
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}
