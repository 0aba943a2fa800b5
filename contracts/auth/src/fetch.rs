//! The public token keys a verifying role holds ([`TokenKeys`]): loaded from a cache or
//! key-set file at start, fetched from the cloud controller's `GET /token_keys`, refreshed
//! periodically and on a token naming an unknown key. The firehose edge and every admin port
//! that shows tenant data (the SLO alerter's `/v1/slos`) verify with it.
//!
//! Flow: [`TokenKeys::new`] (file, inline set or cache) → [`TokenKeys::refresh`] in the
//! background (first fetch retried with back-off, then every `refresh`) →
//! [`TokenKeys::verify`] per request, locally.
//!
//! Verification never waits on the network except for an unknown `kid`, and then for at most
//! [`FETCH_TIMEOUT`], once per `refetch_every` however many unknown `kid`s arrive, so forged
//! headers cannot turn a verifier into a flood against the controller. With the controller
//! down, the keys in memory (or, after a restart, in the cache file) keep verifying: streams
//! and status pages outlive the control plane. A verifier never holds a private key.
//!
//! A role holding a certificate fetches through a [`KeyTransport`] (the role runtime's mutual
//! TLS to the controller's internal listener) and only from an `https://` URL, so the keys it
//! trusts come from a server that proved the `cloudcontroller` identity, never from whoever
//! answers a plain HTTP request; roles outside the mesh fetch over plain HTTP.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::{Claims, Error, KeySet, MAX_JWKS_BYTES};

/// Longest a fetch of `/token_keys` may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a verifier's key fetches are reported (a role puts them on `/metrics`).
pub trait KeysObserver: fmt::Debug + Send + Sync {
    /// A fetch succeeded; `keys` are known now.
    fn fetched(&self, keys: usize);
    /// A fetch failed; the keys known before stay in use.
    fn fetch_failed(&self);
    /// How many keys are known (at start, and after each successful fetch).
    fn known(&self, keys: usize);
}

/// A [`KeysObserver`] that reports nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unobserved;

impl KeysObserver for Unobserved {
    fn fetched(&self, _keys: usize) {}
    fn fetch_failed(&self) {}
    fn known(&self, _keys: usize) {}
}

/// The answer a [`KeyTransport`] gives: the server's response, or why there is none.
pub type KeyFetchFuture = Pin<Box<dyn Future<Output = Result<reqwest::Response, String>> + Send>>;

/// Carries a key fetch some other way than reqwest's own plain connections: the role
/// runtime's mutual TLS to the cloud controller's internal listener (this contract crate holds
/// no TLS).
pub trait KeyTransport: fmt::Debug + Send + Sync {
    /// Sends `request` and returns the server's answer.
    fn send(&self, request: reqwest::Request) -> KeyFetchFuture;

    /// Whether this transport carries plain HTTP (several controllers' public `http://`
    /// addresses, tried in turn) rather than mutual TLS, so `http://` key URLs are expected.
    /// Default `false`: a transport is mutual TLS unless it says otherwise.
    fn plain_http(&self) -> bool {
        false
    }
}

/// Where the keys come from (the `token_keys*` settings of a verifying role).
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    /// The controller's `http://HOST:PORT/token_keys`: fetched, refreshed, re-fetched on an
    /// unknown `kid`.
    pub url: Option<String>,
    /// A fixed key-set file (`/token_keys`'s JSON).
    pub file: Option<PathBuf>,
    /// A key set inline (the same JSON).
    pub inline: Option<String>,
    /// Where fetched keys are cached, read at start when no file or inline set is given.
    pub cache: Option<PathBuf>,
    /// Least time between two fetches caused by unknown key ids.
    pub refetch_every: Duration,
    /// How fetches reach `url`: `None` is plain HTTP; a role with a certificate passes its
    /// mutual-TLS transport, and `url` must then be the controller's internal `https://`
    /// address.
    pub transport: Option<Arc<dyn KeyTransport>>,
}

/// The public keys a role verifies tokens with.
#[derive(Debug)]
pub struct TokenKeys {
    set: RwLock<Arc<KeySet>>,
    url: Option<String>,
    cache: Option<PathBuf>,
    refetch_every: Duration,
    /// When a token with an unknown kid last caused a fetch (the periodic refresh does not
    /// count: it must not delay the first such fetch).
    last_fetch: Mutex<Option<Instant>>,
    /// One fetch at a time: concurrent unknown-kid requests share it.
    fetching: tokio::sync::Mutex<()>,
    client: reqwest::Client,
    transport: Option<Arc<dyn KeyTransport>>,
    observer: Arc<dyn KeysObserver>,
}

impl TokenKeys {
    /// Keys from `sources.file` (a fixed key set) or `sources.inline` JSON, else from
    /// `sources.cache`; then, when `sources.url` is set, from the cloud controller.
    ///
    /// # Errors
    /// The file or inline set cannot be read or parsed (a missing or damaged cache is not an
    /// error: the controller will be asked); a `transport` with a URL that is not `https://`.
    pub fn new(sources: KeySources, observer: Arc<dyn KeysObserver>) -> Result<Self, Error> {
        let KeySources {
            url,
            file,
            inline,
            cache,
            refetch_every,
            transport,
        } = sources;
        if let (Some(transport), Some(url)) = (&transport, &url)
            && !transport.plain_http()
            && !url.trim_start().starts_with("https://")
        {
            return Err(Error::KeyFormat {
                path: None,
                reason: format!(
                    "token_keys_url {url} is not https://: a role with a certificate fetches keys \
                     over mutual TLS only; name the cloud controller's internal https:// address \
                     (its internal_listen)"
                ),
            });
        }
        let initial = match (&file, inline.as_deref(), &cache) {
            (Some(path), _, _) => KeySet::load(path)?,
            (None, Some(json), _) => KeySet::from_json(json.as_bytes())?,
            (None, None, Some(path)) => match KeySet::load(path) {
                Ok(set) => {
                    tracing::info!(keys = set.len(), cache = %path.display(), "token keys from the cache");
                    set
                }
                Err(Error::KeyIo { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    KeySet::default()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring the token key cache");
                    KeySet::default()
                }
            },
            (None, None, None) => KeySet::default(),
        };
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| Error::KeyFormat {
                path: None,
                reason: format!("cannot build an HTTP client for token_keys_url: {e}"),
            })?;
        observer.known(initial.len());
        Ok(Self {
            set: RwLock::new(Arc::new(initial)),
            url,
            cache,
            refetch_every,
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            client,
            transport,
            observer,
        })
    }

    fn current(&self) -> Arc<KeySet> {
        self.set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many keys are known now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// True while no key is known (before the first fetch answered).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Verifies `token` for `audience`; a token naming an unknown key causes one rate-limited
    /// fetch and a second try.
    ///
    /// # Errors
    /// Why the token is refused ([`Error::UnknownKey`], [`Error::Expired`],
    /// [`Error::WrongAudience`], ...).
    pub async fn verify(&self, token: &str, audience: &'static str) -> Result<Claims, Error> {
        match self.current().verify(token, audience) {
            Err(Error::UnknownKey { kid }) if self.url.is_some() => {
                if self.fetch_allowed() {
                    *self
                        .last_fetch
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                    self.fetch().await;
                }
                let set = self.current();
                if set.contains(&kid) {
                    set.verify(token, audience)
                } else {
                    Err(Error::UnknownKey { kid })
                }
            }
            other => other,
        }
    }

    fn fetch_allowed(&self) -> bool {
        let last = *self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.is_none_or(|t| t.elapsed() >= self.refetch_every)
    }

    /// Fetches the key set once; keeps the old one on any failure. Returns true on success.
    pub async fn fetch(&self) -> bool {
        let Some(url) = &self.url else {
            return false;
        };
        let _one = self.fetching.lock().await;
        let set = match self.get(url).await {
            Ok(set) => set,
            Err(e) => {
                self.observer.fetch_failed();
                tracing::warn!(url = %url, error = %e, "cannot fetch token keys; verifying with the keys known");
                return false;
            }
        };
        if let Some(cache) = &self.cache
            && let Err(e) = set.save(cache)
        {
            tracing::warn!(error = %e, "cannot write the token key cache");
        }
        self.observer.fetched(set.len());
        self.observer.known(set.len());
        if *self.current() != set {
            tracing::info!(keys = set.len(), "token keys updated");
        }
        *self.set.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        true
    }

    async fn get(&self, url: &str) -> Result<KeySet, String> {
        let mut response = match &self.transport {
            Some(transport) => {
                let request = self.client.get(url).build().map_err(|e| e.to_string())?;
                tokio::time::timeout(FETCH_TIMEOUT, transport.send(request))
                    .await
                    .map_err(|_| format!("no answer within {} ms", FETCH_TIMEOUT.as_millis()))??
            }
            None => self
                .client
                .get(url)
                .send()
                .await
                .map_err(|e| e.to_string())?,
        };
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        // Read at most the bound, whatever Content-Length says.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err("the key set is larger than 64 KiB".to_owned());
            }
            body.extend_from_slice(&chunk);
        }
        KeySet::from_json(&body).map_err(|e| e.to_string())
    }

    /// Fetches until the first success (quickly at first, backing off to 5 s), then every
    /// `refresh`, until `stop` resolves. Returns at once without a `url`.
    pub async fn refresh(self: Arc<Self>, refresh: Duration, stop: impl Future<Output = ()>) {
        if self.url.is_none() {
            return;
        }
        let mut stop = std::pin::pin!(stop);
        let mut delay = Duration::from_millis(100);
        loop {
            let ok = self.fetch().await;
            let wait = if ok {
                delay = Duration::from_millis(100);
                refresh
            } else {
                delay = (delay * 2).min(Duration::from_secs(5));
                delay
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut stop => return,
            }
        }
    }
}

/// The token in an `Authorization` header value, when it is `Bearer <token>` (any case).
#[must_use]
pub fn bearer(authorization: &str) -> Option<&str> {
    match authorization.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token.trim()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AUD_LOGS, SigningKey};

    #[test]
    fn bearer_takes_the_token_of_any_case_scheme() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("abc"), None);
    }

    #[tokio::test]
    async fn verifies_with_an_inline_set_and_refuses_unknown_keys_without_a_url() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let keys = TokenKeys::new(
            KeySources {
                inline: Some(key.key_set().to_json()),
                refetch_every: Duration::from_secs(30),
                ..KeySources::default()
            },
            Arc::new(Unobserved),
        )
        .unwrap();
        let claims = Claims::new("alice").for_audience(AUD_LOGS);
        assert_eq!(
            keys.verify(&key.issue(&claims), AUD_LOGS)
                .await
                .unwrap()
                .sub,
            "alice"
        );
        assert!(matches!(
            keys.verify(&other.issue(&claims), AUD_LOGS).await,
            Err(Error::UnknownKey { .. })
        ));
    }
}
