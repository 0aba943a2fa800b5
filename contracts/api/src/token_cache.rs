//! A token obtained with OAuth2 client credentials and renewed before it expires: what a
//! platform role (autoscaler, SLO alerter, health manager, syslog nozzle) calls the API with
//! instead of a static token.
//!
//! Invariant: a caller never gets a token with less than [`RENEW_AHEAD`] (or a fifth of its
//! lifetime, if shorter) left; the lock is never held across the network call, so a slow
//! token endpoint blocks nobody but the callers that need a new token.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Client, Error};

/// Renew a token this long before it expires.
pub const RENEW_AHEAD: Duration = Duration::from_secs(60);

/// The last token a client got, and until when it may be handed out.
#[derive(Debug, Default)]
pub struct TokenCache {
    cached: Mutex<Option<Cached>>,
}

#[derive(Debug)]
struct Cached {
    /// `api_url` and client id the token is for: a cache shared by two clients never hands one
    /// the other's token.
    key: (String, String),
    token: String,
    until: Instant,
}

impl TokenCache {
    /// An empty cache (`const`, so a role may keep one in a `static`).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            cached: Mutex::new(None),
        }
    }

    /// A token for client `id` from the cloud controller at `api_url`: the cached one while it
    /// has time left, else a fresh one from `grant_type=client_credentials`.
    ///
    /// # Errors
    /// The token endpoint's answer ([`Error::Api`] 401 for a wrong id or secret) or a
    /// transport error; the secret never appears in it.
    pub async fn client_token(
        &self,
        api_url: &str,
        id: &str,
        secret: &str,
    ) -> Result<String, Error> {
        self.client_token_via(&Client::new(api_url, None), id, secret)
            .await
    }

    /// [`TokenCache::client_token`] asking `client`'s server, over its transport (mutual TLS
    /// to the cloud controller's internal listener, when it has one).
    ///
    /// # Errors
    /// As [`TokenCache::client_token`].
    pub async fn client_token_via(
        &self,
        client: &Client,
        id: &str,
        secret: &str,
    ) -> Result<String, Error> {
        let key = (client.base_url().to_owned(), id.to_owned());
        if let Some(c) = self.lock().as_ref()
            && c.key == key
            && Instant::now() < c.until
        {
            return Ok(c.token.clone());
        }
        let granted = client.client_credentials(id, secret).await?;
        let life = Duration::from_secs(u64::try_from(granted.expires_in).unwrap_or(0));
        let ahead = RENEW_AHEAD.min(life / 5);
        let until = Instant::now() + life.saturating_sub(ahead);
        *self.lock() = Some(Cached {
            key,
            token: granted.access_token.clone(),
            until,
        });
        Ok(granted.access_token)
    }

    /// Forgets the cached token (after the API refused it), so the next call fetches anew.
    pub fn clear(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        self.cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
