//! The public token keys this edge verifies with: [`hydrant_auth::TokenKeys`] (loaded from a
//! cache or key-set file at start, fetched from the cloud controller's `GET /token_keys`,
//! refreshed periodically and on a token naming an unknown key), reporting its fetches on the
//! edge's own metrics.
//!
//! The invariant: the edge never holds a private key, and with the controller down the keys in
//! memory (or, after a restart, in the cache file) keep verifying: streams outlive the control
//! plane. An edge in the mesh (`[upstream_tls]`, its `trafficcontroller` leaf) with an
//! `https://` `token_keys_url` fetches the keys over mutual TLS from a server that proves the
//! `cloudcontroller` identity, and from nothing else; an `http://` URL (the micro cloud's
//! loopback API, an edge outside the mesh) is fetched plainly.

use std::path::PathBuf;
use std::sync::Arc;

use hydrant_auth::{KeySources, KeysObserver, TokenKeys};

use crate::config::{Config, secs};
use crate::metrics::Metrics;

/// Fetches counted as `trafficcontroller.token_key_fetches{result}`, keys known as
/// `trafficcontroller.token_keys`.
impl KeysObserver for Metrics {
    fn fetched(&self, _keys: usize) {
        self.token_keys_fetched.inc();
    }

    fn fetch_failed(&self) {
        self.token_keys_fetch_failed.inc();
    }

    fn known(&self, keys: usize) {
        self.token_keys.set(keys as f64);
    }
}

/// The keys `config` names, reporting into `metrics`.
pub(crate) fn token_keys(
    config: &Config,
    metrics: &Metrics,
) -> Result<TokenKeys, hydrant_auth::Error> {
    let internal = config
        .token_keys_url
        .as_deref()
        .is_some_and(|url| url.trim_start().starts_with("https://"));
    let transport = match (&config.upstream_tls, internal) {
        (Some(files), true) => {
            let mtls = hydrant_runtime::MtlsTransport::new(files).map_err(|e| {
                hydrant_auth::Error::KeyFormat {
                    path: None,
                    reason: format!(
                        "token_keys_url is https://, fetched with the upstream_tls certificate, \
                         which cannot be used: {e}"
                    ),
                }
            })?;
            Some(Arc::new(mtls) as Arc<dyn hydrant_auth::KeyTransport>)
        }
        _ => None,
    };
    TokenKeys::new(
        KeySources {
            url: config.token_keys_url.clone(),
            file: config.token_keys_file.as_ref().map(PathBuf::from),
            inline: config.token_keys.clone(),
            cache: config.token_keys_cache.as_ref().map(PathBuf::from),
            refetch_every: secs(
                config.token_keys_refetch_secs,
                std::time::Duration::from_secs(30),
            ),
            transport,
        },
        Arc::new(metrics.clone()),
    )
}
