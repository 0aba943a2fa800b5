//! Hydrant's bearer tokens: JWTs that only the cloud controller can mint and any role can
//! check on its own.
//!
//! The cloud controller holds the Ed25519 private keys ([`KeyStore`], [`SigningKey`]) and
//! publishes their public halves at `GET /token_keys` in UAA's shape ([`Jwks`]). Every other
//! role holds a [`KeySet`] of public keys, fetched once and cached, and verifies with it
//! alone: no call goes back to the issuer, so log streams keep authorising while the cloud
//! controller, its database or the bus is down (invariant 4), and a verifying role that is
//! compromised still cannot mint a token. A token cannot be revoked before it expires, which
//! is why every token expires and access tokens are short-lived.
//!
//! # Token format
//! A compact JWT: header `{"alg":"EdDSA","typ":"JWT","kid":…}`, claims `iss`, `sub`, `aud`,
//! `scope`, `iat`, `exp`, `jti` ([`Claims`]), an Ed25519 signature over the first two parts.
//! Audiences name the service a token is for ([`AUD_API`], [`AUD_LOGS`], [`AUD_REFRESH`],
//! [`AUD_DROPLET`]); scopes say what it may do there ([`Scope`]).
//!
//! # Layout
//! - [`Claims`]: who the token is for, where it is valid, what it may do, when it expires.
//! - `jwt`: the compact form, taken apart with structure checks before any crypto.
//! - [`SigningKey`], [`KeyStore`]: the private side (the cloud controller only), rotation.
//! - [`KeySet`], [`Jwks`]: the public side every verifier holds.
//! - [`TokenKeys`]: a [`KeySet`] kept current from the controller's `/token_keys` and a cache
//!   file, what the firehose edge and the admin ports that show tenant data verify with.
//!
//! The invariant this crate keeps: [`KeySet::verify`] answers every input, however hostile,
//! with `Ok` only for an unexpired token one of its keys signed for the audience asked about,
//! never panics, and never allocates more than [`MAX_TOKEN_BYTES`] worth of memory for it.

mod claims;
mod error;
mod fetch;
mod jwks;
mod jwt;
mod key;

pub use claims::{
    AUD_API, AUD_DROPLET, AUD_LOGS, AUD_REFRESH, Claims, DEFAULT_TTL_SECS, SCOPE_ADMIN,
    SCOPE_API_READ, SCOPE_API_WRITE, SCOPE_FIREHOSE, Scope,
};
pub use error::Error;
pub use fetch::{
    FETCH_TIMEOUT, KeyFetchFuture, KeySources, KeyTransport, KeysObserver, TokenKeys, Unobserved,
    bearer,
};
pub use jwks::{Jwk, Jwks, KeySet, MAX_JWKS_BYTES};
pub use jwt::peek_claims;
pub use key::{KeyStore, MAX_KEYS, SigningKey, random_id};

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
