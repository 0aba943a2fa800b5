//! What a [`crate::Client`] call can fail with.
//!
//! A server answer that is not a success keeps its HTTP status and the `errors` list the server
//! wrote, so the caller can show the server's own words ("App not found", "no buildpack
//! detected: ...") and choose an exit code from the status.

use crate::types::ApiErrorItem;

/// A client error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a non-success status.
    #[error("{status}: {}", describe(.errors))]
    Api {
        /// The HTTP status code.
        status: u16,
        /// The server's errors (at least one; synthesised when the body was not JSON).
        errors: Vec<ApiErrorItem>,
    },
    /// The request never got an answer (connection refused, timeout, ...).
    #[error("cannot reach the cloud controller at {url}")]
    Transport {
        /// The URL asked.
        url: String,
        /// The underlying error.
        source: reqwest::Error,
    },
    /// The request never got an answer over the client's mutual-TLS transport (connection
    /// refused, a handshake the server refused, a timeout).
    #[error("cannot reach the cloud controller at {url}: {message}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// Why, as the transport said it.
        message: String,
    },
    /// A success answer whose body was not the JSON expected.
    #[error("unexpected answer from {url}: {message}")]
    Decode {
        /// The URL asked.
        url: String,
        /// What did not parse.
        message: String,
    },
    /// A local file could not be read (push).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The input cannot be sent as it is (a bad path in an app directory, a build that did not
    /// finish in time); the message says what to change.
    #[error("{0}")]
    Invalid(String),
}

fn describe(errors: &[ApiErrorItem]) -> String {
    errors
        .iter()
        .map(|e| format!("{} ({})", e.detail, e.title))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// The HTTP status of an [`Error::Api`].
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for a 404 answer (the resource is absent, or the caller may not see it).
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// True for a 401 answer (no token, or an expired or foreign one: log in again).
    #[must_use]
    pub fn is_unauthenticated(&self) -> bool {
        self.status() == Some(401)
    }

    /// The server's first error detail, when there is one.
    #[must_use]
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::Api { errors, .. } => errors.first().map(|e| e.detail.as_str()),
            _ => None,
        }
    }
}
