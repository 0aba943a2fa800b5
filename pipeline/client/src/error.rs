//! The one error type of the firehose client: every way reading the firehose can fail, worded for
//! the person at the terminal (what went wrong and what to do about it).
//!
//! Errors are `Clone` so a stream can hand its final error to the consumer as an event and still
//! log it.

/// Why a firehose stream, a recent-logs read or a config was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A config field is unusable.
    #[error("invalid firehose client config: `{field}` {message}")]
    Config {
        /// The field, as written in TOML.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The edge rejected the token (HTTP 401). Fatal: reconnecting cannot help.
    #[error("token rejected by the firehose (401): log in again")]
    Unauthorized,
    /// The edge refused a token that has expired, and the client has no way to renew it (a
    /// static `token`). Fatal.
    #[error(
        "the firehose token expired {expired_secs_ago} s ago: log in again (`hydrant login`), or \
         configure client_id and client_secret so the client renews it"
    )]
    TokenExpired {
        /// How long ago the token's `exp` passed (0 when the edge said so at close).
        expired_secs_ago: u64,
    },
    /// The token source could not produce a token, and retrying cannot help (credentials
    /// refused). Fatal.
    #[error("cannot get a firehose token: {0}")]
    TokenRenewal(String),
    /// The stream or source does not exist, or this token may not see it (HTTP 404; the edge
    /// answers both the same so outsiders learn nothing). Fatal.
    #[error("{what} not found or not visible to you (404)")]
    NotFound {
        /// What was asked for, e.g. `app "6b1c…"`.
        what: String,
    },
    /// The token is valid but lacks the scope (HTTP 403). Fatal.
    #[error("your token may not read {what} (403): it needs the firehose or admin scope")]
    Forbidden {
        /// What was asked for.
        what: String,
    },
    /// An HTTP answer the client does not expect.
    #[error("{what} answered HTTP {status}: {body}")]
    Status {
        /// Which endpoint.
        what: &'static str,
        /// The status code.
        status: u16,
        /// The start of the body, escaped for a terminal.
        body: String,
    },
    /// The edge could not be reached (refused, reset, DNS, handshake failure).
    #[error("cannot reach the firehose at {url}: {reason}")]
    Connect {
        /// The URL tried.
        url: String,
        /// The underlying error.
        reason: String,
    },
    /// An operation ran past its deadline.
    #[error("{what} timed out after {after_ms} ms")]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// The deadline that passed.
        after_ms: u64,
    },
    /// The edge answered with something that is not what the API promises.
    #[error("malformed answer from {what}: {reason}")]
    Protocol {
        /// Which endpoint.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// `max_attempts` consecutive connection attempts failed.
    #[error("gave up after {attempts} connection attempts; last error: {last}")]
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
        /// Why the last one failed.
        last: String,
    },
    /// Bytes that are not a valid envelope or batch.
    #[error("malformed envelope: {0}")]
    Envelope(#[from] hydrant_envelope::Error),
    /// A batch that validated but prost could not decode.
    #[error("envelope batch does not decode: {0}")]
    Decode(String),
}
