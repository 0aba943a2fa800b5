//! The OTLP nozzle's error type. Nothing here ever carries a header value or a credential:
//! the endpoint is shown through `mask_url`, headers only by name.

/// What can go wrong in the OTLP nozzle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value is wrong (`field` is its dotted path), or the firehose or the runtime
    /// refused: the cases every nozzle shares.
    #[error(transparent)]
    Core(#[from] hydrant_nozzle_core::Error),
}

hydrant_nozzle_core::nozzle_error_conversions!(Error);
