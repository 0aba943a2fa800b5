//! Where a stream's bearer token comes from: a static token (a tool that was handed one), or a
//! [`TokenSource`] that yields a fresh one (client credentials through
//! [`hydrant_api::TokenCache`], or the CLI's refresh token).
//!
//! Flow: [`crate::FirehoseClient`] asks the source before each connection attempt; when the edge
//! closes a stream with 1008 "token expired" or answers 401 at the upgrade, it asks again with
//! `stale = true` and reconnects at once.
//!
//! Invariant: a source asked with `stale = true` never hands back the token it handed out last
//! (it renews), so a refused token cannot loop; and a static token that has expired ends the
//! stream with [`Error::TokenExpired`] instead of a reconnect loop.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use base64::Engine as _;

use crate::Error;

/// What a [`TokenSource`] returns: the token, or why none could be had (for the log).
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send>>;

/// Why a token source could not give a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The credentials were refused: retrying cannot help (the stream ends).
    Refused(String),
    /// The token endpoint could not be reached or failed: worth retrying with back-off.
    Unavailable(String),
}

type Provider = dyn Fn(bool) -> TokenFuture + Send + Sync;

/// A callback that yields a bearer token; called with `stale = true` when the last token was
/// refused or expired, so it must renew rather than hand back a cached one.
#[derive(Clone)]
pub struct TokenSource(Arc<Provider>);

impl TokenSource {
    /// A source from a callback.
    pub fn new<F, Fut>(provider: F) -> Self
    where
        F: Fn(bool) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        Self(Arc::new(move |stale| Box::pin(provider(stale))))
    }

    /// OAuth2 client credentials against the cloud controller at `api_url`, renewed through a
    /// [`hydrant_api::TokenCache`] a minute (or a fifth of the lifetime) before expiry. A secret
    /// file is re-read at each renewal, so a rotated secret is picked up without a restart.
    #[must_use]
    pub fn client_credentials(api_url: String, client_id: String, secret: Secret) -> Self {
        let cache = Arc::new(hydrant_api::TokenCache::new());
        let shared = Arc::new((api_url, client_id, secret));
        Self::new(move |stale| {
            let (cache, shared) = (Arc::clone(&cache), Arc::clone(&shared));
            async move {
                let (api_url, client_id, secret) = &*shared;
                if stale {
                    cache.clear();
                }
                let secret = secret.read().await?;
                cache
                    .client_token(api_url, client_id, &secret)
                    .await
                    .map_err(|e| match &e {
                        hydrant_api::Error::Api {
                            status: 400 | 401 | 403,
                            ..
                        } => TokenError::Refused(format!(
                            "client {client_id:?} was refused a token by {api_url}: {e}; check \
                             client_id and client_secret"
                        )),
                        _ => TokenError::Unavailable(format!(
                            "cannot renew the firehose token from {api_url}: {e}"
                        )),
                    })
            }
        })
    }

    pub(crate) async fn token(&self, stale: bool) -> Result<String, TokenError> {
        (self.0)(stale).await
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSource(..)")
    }
}

impl PartialEq for TokenSource {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A client secret, inline or in a file.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The secret itself.
    Inline(String),
    /// A file holding it (surrounding whitespace ignored).
    File(PathBuf),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("Secret::Inline(..)"),
            Self::File(path) => write!(f, "Secret::File({})", path.display()),
        }
    }
}

impl Secret {
    async fn read(&self) -> Result<String, TokenError> {
        match self {
            Self::Inline(secret) => Ok(secret.clone()),
            Self::File(path) => tokio::fs::read_to_string(path)
                .await
                .map(|s| s.trim().to_owned())
                .map_err(|e| {
                    TokenError::Unavailable(format!(
                        "cannot read client_secret_file {}: {e}",
                        path.display()
                    ))
                }),
        }
    }
}

/// The `exp` claim of a JWT, read without verifying it: only used to tell the user why the
/// edge refused a static token.
pub(crate) fn jwt_expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64()
}

/// [`Error::TokenExpired`] when `token` is a JWT whose `exp` has passed, else `fallback`.
pub(crate) fn explain_refusal(token: &str, fallback: Error) -> Error {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    match jwt_expiry(token) {
        Some(exp) if exp <= now => Error::TokenExpired {
            expired_secs_ago: u64::try_from(now - exp).unwrap_or(0),
        },
        _ => fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(exp: i64) -> String {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.sig",
            enc(r#"{"alg":"EdDSA"}"#),
            enc(&format!(r#"{{"sub":"x","exp":{exp}}}"#))
        )
    }

    #[test]
    fn an_expired_jwt_is_named_as_expired() {
        let e = explain_refusal(&jwt(1_000), Error::Unauthorized);
        assert!(matches!(e, Error::TokenExpired { expired_secs_ago } if expired_secs_ago > 1_000));
        assert!(e.to_string().contains("expired"), "{e}");
        let future = i64::MAX / 2;
        assert_eq!(
            explain_refusal(&jwt(future), Error::Unauthorized),
            Error::Unauthorized
        );
        assert_eq!(
            explain_refusal("not-a-jwt", Error::Unauthorized),
            Error::Unauthorized
        );
    }

    #[test]
    fn secrets_do_not_print() {
        assert!(!format!("{:?}", Secret::Inline("hunter2".into())).contains("hunter2"));
    }
}
