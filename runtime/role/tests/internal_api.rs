//! The mutual-TLS transport to the cloud controller's internal API, against a stand-in server
//! that counts its handshakes: many calls through one client share one connection (one
//! handshake), calls in parallel open a few at most, and a restarted server costs no failed
//! call. Token keys fetched through it come only from a server proving the `cloudcontroller`
//! identity: a plaintext server, one of another CA or one with another identity's certificate
//! gives none.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hydrant_runtime::MtlsTransport;
use hydrant_tls::{Identity, Material, ServerTls, Tally, TlsFiles};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A stand-in for the controller's internal listener: mutual TLS letting in `autoscaler`,
/// HTTP/1.1 as the controller serves it (same header-read timeout), answering every request
/// with the number of handshakes it has seen (or with `body`).
struct Server {
    handshakes: Arc<AtomicU64>,
    tasks: JoinSet<()>,
}

impl Server {
    async fn start(listener: TcpListener, certs: &std::path::Path) -> Self {
        Self::serving(
            listener,
            &TlsFiles::in_dir(certs, Identity::CloudController),
            None,
        )
        .await
    }

    /// A server presenting the certificate in `files` and answering `body` to every request.
    async fn serving(listener: TcpListener, files: &TlsFiles, body: Option<String>) -> Self {
        let material = Material::load(files).unwrap();
        let tls = ServerTls::new(
            material,
            "test.internal",
            &[Identity::Autoscaler],
            Arc::new(Tally::default()),
        )
        .unwrap()
        .with_alpn(&[b"http/1.1"]);
        let handshakes = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let counted = handshakes.clone();
        tasks.spawn(async move {
            let mut incoming = hydrant_tls::grpc::incoming(listener, tls).into_inner();
            let mut connections = JoinSet::new();
            while let Some(Ok(conn)) = incoming.recv().await {
                // Every connection here finished its handshake.
                counted.fetch_add(1, Ordering::SeqCst);
                let counted = counted.clone();
                let body = body.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request: http::Request<_>| {
                        let seen = counted.load(Ordering::SeqCst);
                        let _: &hyper::body::Incoming = request.body();
                        let text = body
                            .clone()
                            .unwrap_or_else(|| format!("{} {seen}", request.method()));
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes_of(text)),
                            ))
                        }
                    });
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10));
                    let _ = builder.serve_connection(TokioIo::new(conn), service).await;
                });
            }
        });
        Self { handshakes, tasks }
    }

    fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes every connection, as a dying process would.
    async fn kill(mut self) {
        self.tasks.shutdown().await;
    }
}

fn bytes_of(text: String) -> hyper::body::Bytes {
    hyper::body::Bytes::from(text)
}

fn certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    hydrant_tls::issue::ensure(
        dir.path(),
        &[
            Identity::CloudController,
            Identity::Autoscaler,
            Identity::Nozzle,
        ],
        &[],
    )
    .unwrap();
    dir
}

async fn call(
    transport: &MtlsTransport,
    method: reqwest::Method,
    url: &str,
) -> Result<String, String> {
    let request = reqwest::Client::new()
        .request(method, url)
        .body("{}")
        .build()
        .unwrap();
    let response = transport.execute(request).await?;
    assert_eq!(response.status(), 200);
    response.text().await.map_err(|e| e.to_string())
}

/// Binds `addr` again once the killed server's listener has gone (its task drops it).
async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_through_one_client_make_one_handshake() {
    let certs = certs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/v3/apps", listener.local_addr().unwrap());
    let server = Server::start(listener, certs.path()).await;
    let transport =
        MtlsTransport::new(&TlsFiles::in_dir(certs.path(), Identity::Autoscaler)).unwrap();

    for i in 0..20 {
        let method = if i % 2 == 0 {
            reqwest::Method::GET
        } else {
            reqwest::Method::POST
        };
        let answer = call(&transport, method.clone(), &url).await.unwrap();
        assert_eq!(answer, format!("{method} 1"), "call {i}");
    }
    assert_eq!(server.handshakes(), 1, "20 calls, one after another");
    assert_eq!(transport.connections_opened(), 1);

    // Clones share the connections; calls at once take a connection each, and the pool keeps
    // no more than its bound.
    let mut calls = JoinSet::new();
    for _ in 0..8 {
        let transport = transport.clone();
        let url = url.clone();
        calls.spawn(async move { call(&transport, reqwest::Method::GET, &url).await });
    }
    while let Some(answer) = calls.join_next().await {
        answer.unwrap().unwrap();
    }
    let after_burst = server.handshakes();
    assert!(
        (1..=9).contains(&after_burst),
        "8 parallel calls opened {after_burst} connections in all"
    );
    for _ in 0..10 {
        call(&transport, reqwest::Method::GET, &url).await.unwrap();
    }
    assert_eq!(
        server.handshakes(),
        after_burst,
        "calls after the burst reuse what it kept"
    );
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_costs_no_failed_call() {
    let certs = certs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("https://{addr}/v3/apps");
    let server = Server::start(listener, certs.path()).await;
    let transport =
        MtlsTransport::new(&TlsFiles::in_dir(certs.path(), Identity::Autoscaler)).unwrap();
    for _ in 0..3 {
        call(&transport, reqwest::Method::GET, &url).await.unwrap();
    }
    assert_eq!(server.handshakes(), 1);

    // The kept connection dies with the server; the next calls, a GET and then a POST, go out
    // on a fresh one to the new server.
    server.kill().await;
    let server = Server::start(rebind(addr).await, certs.path()).await;
    assert_eq!(
        call(&transport, reqwest::Method::GET, &url).await.unwrap(),
        "GET 1"
    );
    assert_eq!(
        call(&transport, reqwest::Method::POST, &url).await.unwrap(),
        "POST 1"
    );
    assert_eq!(server.handshakes(), 1);
    assert_eq!(transport.connections_opened(), 2);

    // With the server gone and nothing listening, a call fails saying why, and the next
    // server is reached again.
    server.kill().await;
    let refused = call(&transport, reqwest::Method::GET, &url)
        .await
        .unwrap_err();
    assert!(refused.contains("cannot connect"), "{refused}");
    let server = Server::start(rebind(addr).await, certs.path()).await;
    call(&transport, reqwest::Method::POST, &url).await.unwrap();
    assert_eq!(server.handshakes(), 1);
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_past_the_limit_is_not_reused() {
    let certs = certs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/v3/apps", listener.local_addr().unwrap());
    let server = Server::start(listener, certs.path()).await;
    let idle = Duration::from_millis(300);
    let transport = MtlsTransport::new(&TlsFiles::in_dir(certs.path(), Identity::Autoscaler))
        .unwrap()
        .with_idle_timeout(idle);
    call(&transport, reqwest::Method::GET, &url).await.unwrap();
    call(&transport, reqwest::Method::GET, &url).await.unwrap();
    assert_eq!(server.handshakes(), 1);
    // Past the idle limit (by default 8 s, under the controller's 10 s header timeout) the kept
    // connection is closed rather than used while the server may be closing it. The wait is
    // the behaviour under test: the limit is on a real clock.
    tokio::time::sleep(idle * 2).await;
    call(&transport, reqwest::Method::POST, &url).await.unwrap();
    assert_eq!(server.handshakes(), 2);
    server.kill().await;
}

/// Token keys as a role with a certificate fetches them: through its mutual-TLS transport.
fn keys_through(transport: &MtlsTransport, url: &str) -> hydrant_auth::TokenKeys {
    hydrant_auth::TokenKeys::new(
        hydrant_auth::KeySources {
            url: Some(url.to_owned()),
            refetch_every: Duration::from_secs(30),
            transport: Some(Arc::new(transport.clone())),
            ..hydrant_auth::KeySources::default()
        },
        Arc::new(hydrant_auth::Unobserved),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_keys_come_only_from_the_controller_proven_by_mutual_tls() {
    use hydrant_auth::{AUD_LOGS, Claims, SigningKey};
    let certs = certs();
    let signing = SigningKey::generate().unwrap();
    let jwks = signing.key_set().to_json();
    let token = signing.issue(&Claims::new("alice").for_audience(AUD_LOGS));
    let transport =
        MtlsTransport::new(&TlsFiles::in_dir(certs.path(), Identity::Autoscaler)).unwrap();

    // The same key set served by three servers a role must not trust and one it must.
    // Another identity's certificate from our CA (the nozzle's), presented as the controller:
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/token_keys", listener.local_addr().unwrap());
    let impostor = Server::serving(
        listener,
        &TlsFiles::in_dir(certs.path(), Identity::Nozzle),
        Some(jwks.clone()),
    )
    .await;
    let keys = keys_through(&transport, &url);
    assert!(!keys.fetch().await, "keys from the nozzle's certificate");
    assert!(keys.is_empty());
    assert!(matches!(
        keys.verify(&token, AUD_LOGS).await,
        Err(hydrant_auth::Error::UnknownKey { .. })
    ));
    impostor.kill().await;

    // A `cloudcontroller` certificate from another CA (the server trusts our clients):
    let foreign = tempfile::tempdir().unwrap();
    let other_ca = hydrant_tls::local::LocalCa::new("another CA").unwrap();
    other_ca
        .write_leaf(
            foreign.path(),
            "cloudcontroller",
            hydrant_tls::local::Validity::Days(30),
        )
        .unwrap();
    std::fs::copy(certs.path().join("ca.pem"), foreign.path().join("ca.pem")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/token_keys", listener.local_addr().unwrap());
    let stranger = Server::serving(
        listener,
        &TlsFiles::in_dir(foreign.path(), Identity::CloudController),
        Some(jwks.clone()),
    )
    .await;
    let keys = keys_through(&transport, &url);
    assert!(!keys.fetch().await, "keys from another CA's controller");
    assert!(keys.is_empty());
    stranger.kill().await;

    // A plaintext server at the https:// address:
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let plain_body = jwks.clone();
    let plain = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let body = plain_body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_: http::Request<_>| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes_of(body)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    let keys = keys_through(&transport, &format!("https://{addr}/token_keys"));
    assert!(!keys.fetch().await, "keys from a plaintext server");
    assert!(keys.is_empty());
    // ... and a plain http:// URL is refused before anything is fetched.
    let refused = hydrant_auth::TokenKeys::new(
        hydrant_auth::KeySources {
            url: Some(format!("http://{addr}/token_keys")),
            transport: Some(Arc::new(transport.clone())),
            ..hydrant_auth::KeySources::default()
        },
        Arc::new(hydrant_auth::Unobserved),
    )
    .unwrap_err()
    .to_string();
    assert!(refused.contains("not https://"), "{refused}");
    plain.abort();

    // The controller itself: the keys arrive and the token verifies.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/token_keys", listener.local_addr().unwrap());
    let controller = Server::serving(
        listener,
        &TlsFiles::in_dir(certs.path(), Identity::CloudController),
        Some(jwks),
    )
    .await;
    let keys = keys_through(&transport, &url);
    assert!(keys.fetch().await);
    assert_eq!(keys.verify(&token, AUD_LOGS).await.unwrap().sub, "alice");
    controller.kill().await;
}

#[tokio::test]
async fn a_role_with_tls_fetches_keys_only_through_it() {
    let certs = certs();
    let token = "t".to_owned();
    let url = "https://127.0.0.1:9/v3/apps";
    // Without `tls`: plain HTTP, no transport.
    let plain = hydrant_runtime::ApiConsumer::new("http://127.0.0.1:9", Some(&token), None);
    assert!(plain.client().key_transport().is_none());
    // With `tls`: the role's mutual-TLS transport.
    let files = TlsFiles::in_dir(certs.path(), Identity::Autoscaler);
    let mtls = hydrant_runtime::ApiConsumer::new(url, Some(&token), None).with_tls(Some(&files));
    assert!(mtls.client().key_transport().is_some());
    // With `tls` whose files cannot be used: a transport that refuses, never plain HTTP.
    let missing = TlsFiles::in_dir(&certs.path().join("nowhere"), Identity::Autoscaler);
    let broken =
        hydrant_runtime::ApiConsumer::new(url, Some(&token), None).with_tls(Some(&missing));
    let transport = broken
        .client()
        .key_transport()
        .expect("a refusing transport");
    let request = reqwest::Client::new()
        .get("https://127.0.0.1:9/token_keys")
        .build()
        .unwrap();
    let refused = transport.send(request).await.unwrap_err();
    assert!(refused.contains("tls"), "{refused}");
}
