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
//! loopback API, an edge outside the mesh) is fetched plainly. With several controllers
//! (`token_keys_urls`) every fetch goes through the role runtime's [`Failover`]: the one that
//! answered last first, then the others in turn, each move counted as
//! `trafficcontroller.controller.failovers`, so losing a controller's host never stops the
//! edge from learning a key staged after it went.

use std::path::PathBuf;
use std::sync::Arc;

use hydrant_auth::{KeySources, KeysObserver, TokenKeys};
use hydrant_emitter::Registry;
use hydrant_runtime::Failover;

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

/// The keys `config` names, reporting into `metrics`; failovers between several controllers
/// (`token_keys_urls`) are counted in `registry`.
pub(crate) fn token_keys(
    config: &Config,
    metrics: &Metrics,
    registry: &Registry,
) -> Result<TokenKeys, hydrant_auth::Error> {
    let urls: Vec<String> = match (&config.token_keys_urls, &config.token_keys_url) {
        (Some(urls), _) => urls.clone(),
        (None, Some(url)) => vec![url.clone()],
        (None, None) => Vec::new(),
    };
    let internal = urls
        .first()
        .is_some_and(|url| url.trim_start().starts_with("https://"));
    let mtls = match (&config.upstream_tls, internal) {
        (Some(files), true) => Some(hydrant_runtime::MtlsTransport::new(files).map_err(|e| {
            hydrant_auth::Error::KeyFormat {
                path: None,
                reason: format!(
                    "token_keys_url is https://, fetched with the upstream_tls certificate, \
                     which cannot be used: {e}"
                ),
            }
        })?),
        _ => None,
    };
    let transport: Option<Arc<dyn hydrant_auth::KeyTransport>> = if urls.len() > 1 {
        // Each attempt within the fetch's own bound, so a silent host leaves time for the next.
        let attempt = hydrant_auth::FETCH_TIMEOUT / u32::try_from(urls.len()).unwrap_or(u32::MAX);
        Some(Arc::new(
            Failover::new(&urls, mtls)
                .counted(registry)
                .with_attempt_timeout(attempt),
        ))
    } else {
        mtls.map(|t| Arc::new(t) as Arc<dyn hydrant_auth::KeyTransport>)
    };
    TokenKeys::new(
        KeySources {
            url: urls.first().cloned(),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use hydrant_tls::{Identity, Material, ServerTls, Tally, TlsFiles};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    /// A one-request-per-connection HTTP/1.1 server over mutual TLS presenting `presents`'s
    /// leaf and answering `/token_keys` with `jwks`.
    async fn keys_server(certs: &std::path::Path, presents: Identity, jwks: String) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/token_keys", listener.local_addr().unwrap());
        let material = Material::load(&TlsFiles::in_dir(certs, presents)).unwrap();
        let tls = ServerTls::new(
            material,
            "test",
            &[Identity::TrafficController],
            Arc::new(Tally::default()),
        )
        .unwrap()
        .with_alpn(&[b"http/1.1"]);
        let mut incoming = hydrant_tls::grpc::incoming(listener, tls).into_inner();
        tokio::spawn(async move {
            while let Some(Ok(conn)) = incoming.recv().await {
                tokio::spawn(answer_jwks(conn, jwks.clone()));
            }
        });
        url
    }

    fn edge(certs: &std::path::Path, url: &str) -> Config {
        Config {
            token_keys_url: Some(url.to_owned()),
            upstream_tls: Some(TlsFiles::in_dir(certs, Identity::TrafficController)),
            ..Config::default()
        }
    }

    /// Reads one request head from `conn` and answers it with `jwks`, closing after.
    async fn answer_jwks(
        mut conn: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        jwks: String,
    ) {
        let mut head = [0u8; 4096];
        let _ = conn.read(&mut head).await;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
            jwks.len()
        );
        let _ = conn.write_all(answer.as_bytes()).await;
        let _ = conn.shutdown().await;
    }

    /// A plain HTTP/1.1 server answering every request with `jwks`.
    async fn plain_keys_server(jwks: String) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token_keys", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(answer_jwks(conn, jwks.clone()));
            }
        });
        url
    }

    #[tokio::test]
    async fn keys_come_from_the_second_controller_when_the_first_refuses_and_the_move_is_counted() {
        let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = format!("http://{}/token_keys", gone.local_addr().unwrap());
        drop(gone);
        let jwks = hydrant_auth::SigningKey::generate()
            .unwrap()
            .key_set()
            .to_json();
        let alive = plain_keys_server(jwks).await;
        let config = Config {
            token_keys_urls: Some(vec![dead.clone(), alive.clone()]),
            ..Config::default()
        };
        hydrant_runtime::Validate::validate(&config).unwrap();
        let registry = hydrant_emitter::Registry::new("trafficcontroller", "t");
        let keys = token_keys(&config, &Metrics::new(&registry), &registry).unwrap();
        assert!(
            keys.fetch().await,
            "no keys though the second controller answers"
        );
        assert_eq!(keys.len(), 1);
        assert_eq!(registry.counter_sum("controller.failovers", &[]), 1);
        assert!(
            registry
                .render_prometheus()
                .contains("controller_failovers_total{"),
            "{}",
            registry.render_prometheus()
        );

        // Both down: the fetch fails (the keys known stay) and nothing is counted as a move.
        let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = format!("http://{}/token_keys", gone.local_addr().unwrap());
        drop(gone);
        let down = Config {
            token_keys_urls: Some(vec![dead, other]),
            ..Config::default()
        };
        let registry = hydrant_emitter::Registry::new("trafficcontroller", "t");
        let keys = token_keys(&down, &Metrics::new(&registry), &registry).unwrap();
        assert!(!keys.fetch().await);
        assert_eq!(registry.counter_sum("controller.failovers", &[]), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_edge_in_the_mesh_takes_keys_only_from_the_proven_controller() {
        let certs = tempfile::tempdir().unwrap();
        hydrant_tls::issue::ensure(
            certs.path(),
            &[
                Identity::CloudController,
                Identity::TrafficController,
                Identity::Nozzle,
            ],
            &[],
        )
        .unwrap();
        let jwks = hydrant_auth::SigningKey::generate()
            .unwrap()
            .key_set()
            .to_json();
        let registry = hydrant_emitter::Registry::new("trafficcontroller", "t");
        let metrics = Metrics::new(&registry);

        // Another identity's certificate from the same CA, serving the same keys: refused.
        let url = keys_server(certs.path(), Identity::Nozzle, jwks.clone()).await;
        let keys = token_keys(&edge(certs.path(), &url), &metrics, &registry).unwrap();
        assert!(!keys.fetch().await, "keys from the nozzle's certificate");
        assert!(keys.is_empty());

        // The controller's: fetched over mutual TLS as the edge's trafficcontroller identity.
        let url = keys_server(certs.path(), Identity::CloudController, jwks).await;
        let keys = token_keys(&edge(certs.path(), &url), &metrics, &registry).unwrap();
        assert!(keys.fetch().await);
        assert_eq!(keys.len(), 1);
    }
}
