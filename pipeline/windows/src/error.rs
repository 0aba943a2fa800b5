//! The one error type of the windows library.
//!
//! Observing envelopes never fails (bad or unwanted input is counted, not returned), so errors
//! come only from configuration, from restoring persisted minutes, and from the stream driver.

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration field is unusable; the message says how to fix it.
    #[error("windows config: `{field}` {message}")]
    Config {
        /// The field, as written in the config file.
        field: &'static str,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// Persisted per-minute counts could not be restored.
    #[error("cannot restore per-minute counts for {source_id:?}: {message}")]
    Restore {
        /// The app whose counts were refused.
        source_id: String,
        /// Why.
        message: String,
    },
    /// The firehose stream ended for good (token rejected, not found, gave up).
    #[error("firehose stream ended: {0}")]
    Stream(#[from] hydrant_firehose_client::Error),
}
