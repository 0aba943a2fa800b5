//! The one error type of the log cache: a bad configuration or a read the cache refuses.
//!
//! Every message names the field at fault and says what a valid value looks like, because these
//! errors reach operators (config) and API clients (reads) verbatim.

/// Why a configuration or a read was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A `[logcache]` setting is out of range.
    #[error("logcache.{field}: {message}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// `limit` above [`crate::MAX_READ_LIMIT`].
    #[error("limit ({0}) must be {max} or less", max = crate::MAX_READ_LIMIT)]
    LimitTooLarge(i64),
    /// A negative `limit`.
    #[error("limit ({0}) must not be negative; use 0 for the default of {default}", default = crate::DEFAULT_READ_LIMIT)]
    NegativeLimit(i64),
    /// `start_time` after an explicit `end_time`.
    #[error("start_time ({start}) must not be after end_time ({end})")]
    InvalidRange {
        /// Requested inclusive lower bound.
        start: i64,
        /// Requested exclusive upper bound.
        end: i64,
    },
}
