//! The one error type of `hydrant top`.
//!
//! Everything that goes wrong while the console runs (a stream that drops, an API that stops
//! answering) is shown on screen and retried; only what stops the console from starting or
//! drawing at all is an [`Error`], and each says what to do about it.

/// Why `hydrant top` could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option is unusable; the message names it and the fix.
    #[error("hydrant top: `{option}` {message}")]
    Options {
        /// The option, as the command line spells it.
        option: &'static str,
        /// What is wrong and what to pass instead.
        message: String,
    },
    /// The terminal could not be set up, drawn on or restored.
    #[error("hydrant top needs a terminal: {0}")]
    Terminal(#[from] std::io::Error),
    /// The rolling windows refused their configuration.
    #[error(transparent)]
    Windows(#[from] hydrant_windows::Error),
    /// Neither the firehose nor any app stream can be read with this token.
    #[error(
        "hydrant top: the firehose refused the token ({0}); log in again with `hydrant login`, \
         or run `hydrant up` for a local micro cloud"
    )]
    Unauthorized(String),
}
