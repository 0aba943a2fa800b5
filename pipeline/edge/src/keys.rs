//! The public token keys this edge verifies with: loaded from a cache or key-set file at
//! start, fetched from the cloud controller's `GET /token_keys`, refreshed periodically and
//! on a token naming an unknown key.
//!
//! Verification never waits on the network except for that one case, and then for at most
//! [`FETCH_TIMEOUT`], once per `token_keys_refetch_secs` however many unknown `kid`s arrive, so
//! forged headers cannot turn the edge into a flood against the controller. With the
//! controller down, the keys in memory (or, after a restart, in the cache file) keep
//! verifying: streams outlive the control plane. The edge never holds a private key.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hydrant_auth::{Claims, Error, KeySet};

use crate::metrics::Metrics;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest a fetch of `/token_keys` may take.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Where keys come from.
#[derive(Debug)]
pub(crate) struct TokenKeys {
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
    metrics: Metrics,
}

impl TokenKeys {
    /// Keys from `file` (a fixed key set) or `inline` JSON, else from `cache`; then, when
    /// `url` is set, from the cloud controller.
    pub(crate) fn new(
        url: Option<String>,
        file: Option<PathBuf>,
        inline: Option<&str>,
        cache: Option<PathBuf>,
        refetch_every: Duration,
        metrics: Metrics,
    ) -> Result<Self, Error> {
        let initial = match (&file, inline, &cache) {
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
                    // A damaged cache is not fatal: the controller will be asked.
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
        metrics.token_keys.set(initial.len() as f64);
        Ok(Self {
            set: RwLock::new(Arc::new(initial)),
            url,
            cache,
            refetch_every,
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            client,
            metrics,
        })
    }

    fn current(&self) -> Arc<KeySet> {
        self.set
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How many keys are known now.
    pub(crate) fn len(&self) -> usize {
        self.current().len()
    }

    /// Verifies `token` for `audience`; a token naming an unknown key causes one rate-limited
    /// fetch and a second try.
    pub(crate) async fn verify(
        &self,
        token: &str,
        audience: &'static str,
    ) -> Result<Claims, Error> {
        match self.current().verify(token, audience) {
            Err(Error::UnknownKey { kid }) if self.url.is_some() => {
                if self.fetch_allowed() {
                    *self
                        .last_fetch
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
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
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.is_none_or(|t| t.elapsed() >= self.refetch_every)
    }

    /// Fetches the key set once; keeps the old one on any failure. Returns true on success.
    pub(crate) async fn fetch(&self) -> bool {
        let Some(url) = &self.url else {
            return false;
        };
        let _one = self.fetching.lock().await;
        let set = match self.get(url).await {
            Ok(set) => set,
            Err(e) => {
                self.metrics.token_keys_fetch_failed.inc();
                tracing::warn!(url = %url, error = %e, "cannot fetch token keys; verifying with the keys known");
                return false;
            }
        };
        if let Some(cache) = &self.cache
            && let Err(e) = set.save(cache)
        {
            tracing::warn!(error = %e, "cannot write the token key cache");
        }
        self.metrics.token_keys_fetched.inc();
        self.metrics.token_keys.set(set.len() as f64);
        let changed = *self.current() != set;
        if changed {
            tracing::info!(keys = set.len(), "token keys updated");
        }
        *self
            .set
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
        true
    }

    async fn get(&self, url: &str) -> Result<KeySet, String> {
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        // Read at most the bound, whatever Content-Length says.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > hydrant_auth::MAX_JWKS_BYTES {
                return Err("the key set is larger than 64 KiB".to_owned());
            }
            body.extend_from_slice(&chunk);
        }
        KeySet::from_json(&body).map_err(|e| e.to_string())
    }

    /// Fetches until the first success (quickly at first, backing off to 5 s), then every
    /// `refresh`, until `stop`.
    pub(crate) async fn refresh(self: Arc<Self>, refresh: Duration, stop: CancellationToken) {
        if self.url.is_none() {
            return;
        }
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
                () = stop.cancelled() => return,
            }
        }
    }
}
