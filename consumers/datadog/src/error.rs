//! The Datadog nozzle's error type.
//!
//! Invariant: no message built here carries the API key. The key only ever lives in an
//! [`crate::ApiKey`] (whose `Debug` is masked) and in a sensitive header value; URLs are shown
//! through `mask_url`.

/// What can go wrong in the Datadog nozzle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value is wrong (`field` is its dotted path), or the firehose or the runtime
    /// refused: the cases every nozzle shares.
    #[error(transparent)]
    Core(#[from] hydrant_nozzle_core::Error),
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

hydrant_nozzle_core::nozzle_error_conversions!(Error);
