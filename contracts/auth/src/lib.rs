//! Hydrant's bearer tokens: signed claims that any role can check on its own.
//!
//! The cloud controller issues tokens; the firehose edge (and later every public endpoint)
//! verifies them with the shared [`SigningKey`] alone. No call goes back to the issuer, so log
//! streams keep authorising while the cloud controller, its database or the bus is down
//! (invariant 4: the data plane outlives the control plane). The price is that a token cannot be
//! revoked before it expires, which is why tokens should be short-lived.
//!
//! # Token format
//! `hyd1.<base64url(claims JSON)>.<base64url(HMAC-SHA256)>`, unpadded, where the MAC covers the
//! ASCII text `hyd1.<payload>`. MACing the text rather than the decoded JSON means a verifier
//! never parses bytes an attacker chose before it knows the issuer wrote them.
//!
//! # Layout
//! - [`Claims`]: who the token is for, what it may read ([`Scope`]), and when it expires.
//! - [`SigningKey`]: the shared secret; generates, stores, issues and verifies.
//!
//! The invariant this crate keeps: [`SigningKey::verify`] answers every input, however hostile,
//! with `Ok` only for a token this key issued and that has not expired, never panics, and never
//! allocates more than [`MAX_TOKEN_BYTES`] worth of memory for it.

mod claims;
mod error;
mod key;

pub use claims::{Claims, SCOPE_ADMIN, SCOPE_FIREHOSE, Scope};
pub use error::Error;
pub use key::SigningKey;

/// The version tag every token starts with. A new format gets a new tag, so old verifiers reject
/// new tokens as malformed instead of misreading them.
pub const TOKEN_PREFIX: &str = "hyd1";

/// Tokens longer than this are rejected before any decoding. Real tokens are a few hundred bytes;
/// the bound keeps a hostile `Authorization` header from costing more than a few kilobytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Current UNIX time in whole seconds, the unit of [`Claims::exp`] and [`Claims::iat`].
#[must_use]
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
