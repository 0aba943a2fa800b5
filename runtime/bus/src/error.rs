//! Everything that can go wrong on the bus, worded for the operator who has to fix it.
//!
//! Drops are not errors: a publish that overflows a bounded queue returns `Ok` and is counted
//! (`bus.dropped{reason=...}`), as NATS itself does for slow consumers. Errors are reserved for
//! what the caller can act on: bad configuration, an unreachable server at start-up, a malformed
//! subject or payload, and requests that got no answer.

use std::time::Duration;

/// A bus error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration field is invalid; the message names the field and the fix.
    #[error("invalid bus config: {0}")]
    Config(String),
    /// A role's field about where its dopplers come from cannot work ([`crate::follow::DopplerSource`]).
    #[error("{field}: {message}")]
    Field {
        /// The field as written in the role's config file.
        field: &'static str,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// The first connection to NATS failed. (Later outages are reconnected automatically.)
    #[error("cannot reach NATS at {url}: {reason}; is nats-server running?")]
    Unreachable {
        /// The configured `url`.
        url: String,
        /// What the connection attempt reported.
        reason: String,
    },
    /// A subject or subscription pattern does not follow NATS syntax.
    #[error("invalid subject \"{subject}\": {reason}")]
    InvalidSubject {
        /// The offending subject, shortened and escaped.
        subject: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A queue group name is empty, too long or holds whitespace.
    #[error("invalid queue group \"{group}\": {reason}")]
    InvalidGroup {
        /// The offending name, shortened and escaped.
        group: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The payload is larger than the bus (or the NATS server) accepts.
    #[error("payload of {size} bytes for \"{subject}\" exceeds the bus limit of {max} bytes")]
    PayloadTooLarge {
        /// The subject it was for.
        subject: String,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A request found nobody subscribed to its subject.
    #[error("no responders for request on \"{subject}\": nothing is subscribed to it")]
    NoResponders {
        /// The request subject.
        subject: String,
    },
    /// A request was delivered (or queued) but no reply arrived in time.
    #[error("request on \"{subject}\" timed out after {timeout:?} without a reply")]
    Timeout {
        /// The request subject.
        subject: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The bus is down (NATS disconnected or an in-process outage), so a request cannot be sent.
    #[error("the bus is disconnected; request on \"{subject}\" not sent")]
    Disconnected {
        /// The request subject.
        subject: String,
    },
    /// [`crate::Bus::reply`] was given a message that carries no reply subject.
    #[error("message on \"{subject}\" has no reply subject to answer")]
    NoReplySubject {
        /// The subject of the message that was to be answered.
        subject: String,
    },
    /// A message payload is not the JSON the caller expected.
    #[error("cannot decode {what} from \"{subject}\": {source}")]
    Decode {
        /// The Rust type that was expected.
        what: &'static str,
        /// The subject it arrived on.
        subject: String,
        /// The JSON error, with line and column.
        source: serde_json::Error,
    },
    /// A message could not be encoded as JSON (a map with non-string keys, say).
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        /// The Rust type being encoded.
        what: &'static str,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The operation exists only on the other backend (e.g. simulated outages on NATS).
    #[error("{0}")]
    Unsupported(&'static str),
    /// The NATS client reported an error not covered above.
    #[error("NATS error: {0}")]
    Nats(String),
}

impl Error {
    /// The config field this error names and what to write instead, for a role's own config
    /// error: a [`Error::Field`]'s parts, or `bus` and the message for any other error (they
    /// come from the `[bus]` section).
    #[must_use]
    pub fn into_field(self) -> (&'static str, String) {
        match self {
            Self::Field { field, message } => (field, message),
            other => ("bus", other.to_string()),
        }
    }
}
