//! The one error type of the emitter crate: configuration that cannot work.
//!
//! Emitting itself never fails from the caller's point of view (invariant 1: never backpressure
//! an app); every envelope that does not reach the agent is counted in `emitter.dropped{reason}`
//! instead of being returned as an error.

/// Why an emitter or telemetry configuration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A configuration field holds a value the emitter cannot use.
    #[error("invalid emitter config: {field}: {message}")]
    Config {
        /// The field, as written in the config file (`telemetry.agent`).
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
}
