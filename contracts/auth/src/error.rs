//! Everything that can go wrong issuing or checking a token, or handling its key.
//!
//! Verification failures are split into three variants (malformed, bad signature, expired) so
//! callers can count them by reason and tell a user whether to fix the text or log in again;
//! none of them carries token text, so logging an error never leaks a credential.

use std::path::PathBuf;

/// An auth error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text is not a Hydrant token (wrong shape, prefix, encoding, size or JSON).
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The token is well formed but was not signed by this key, or was altered.
    #[error("bad token signature: the token was not issued by this Hydrant or was altered")]
    BadSignature,
    /// The token was genuine but its `exp` has passed.
    #[error("token expired at {exp} (unix seconds); log in again for a new one")]
    Expired {
        /// The token's expiry, UNIX seconds.
        exp: i64,
    },
    /// The operating system's random source failed.
    #[error("cannot read random bytes for a signing key: {0}")]
    Random(String),
    /// Key material that is too short, too long or not hex/base64.
    #[error("invalid signing key{}: {reason}", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    KeyFormat {
        /// The file it came from, when it came from a file.
        path: Option<PathBuf>,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Reading or writing the key file failed.
    #[error("signing key file {}: {source}", .path.display())]
    KeyIo {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
