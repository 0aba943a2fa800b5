//! Everything that can go wrong issuing or checking a token, or handling its keys.
//!
//! Verification failures are split by reason (malformed, unknown key, bad signature, expired,
//! wrong audience) so callers can count them and tell a user whether to fix the text, log in
//! again or use another token; none of them carries token text, so logging an error never
//! leaks a credential.

use std::path::PathBuf;

/// An auth error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text is not a Hydrant token (wrong shape, encoding, size, algorithm or JSON).
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The token names a signing key (`kid`) this verifier does not know (yet).
    #[error(
        "token signed by unknown key {kid:?}: it was not issued by this Hydrant's cloud controller, or its key was retired"
    )]
    UnknownKey {
        /// The key id from the token's header (checked to be short, URL-safe text).
        kid: String,
    },
    /// The token is well formed but its signature does not match its key, or it was altered.
    #[error("bad token signature: the token was not issued by this Hydrant or was altered")]
    BadSignature,
    /// The token was genuine but its `exp` has passed (or it had none).
    #[error("token expired at {exp} (unix seconds); log in again for a new one")]
    Expired {
        /// The token's expiry, UNIX seconds.
        exp: i64,
    },
    /// The token is genuine but meant for another service.
    #[error(
        "this token is not for {expected}: use a token issued for it (log tokens open only log streams)"
    )]
    WrongAudience {
        /// The audience the endpoint needs.
        expected: &'static str,
    },
    /// The operating system's random source failed.
    #[error("cannot read random bytes: the operating system's random source failed")]
    Random,
    /// Key material, a key set or a key file that is not what it should be.
    #[error("invalid token key{}: {reason}", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    KeyFormat {
        /// The file it came from, when it came from a file.
        path: Option<PathBuf>,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Reading or writing a key file failed.
    #[error("token key file {}: {source}", .path.display())]
    KeyIo {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
