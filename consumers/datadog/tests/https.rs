//! The sender over real TLS: a local HTTPS server with a certificate made at test time by a
//! test CA. Datadog is only reachable over https, so this is the path every real request
//! takes: the CA from `ca_file` is trusted, an unknown CA and a certificate for another host
//! name are refused, and a refused connection never delivers the request.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response};
use http_body_util::{BodyExt, Full};
use hydrant_nozzle_datadog::http::{HttpClient, Target, tls_config};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA (its PEM written to a temp file) and a server certificate it signed for `names`.
struct Certs {
    _dir: tempfile::TempDir,
    ca_pem: std::path::PathBuf,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn certs(names: &[&str]) -> Certs {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, issuer.pem()).unwrap();
    Certs {
        _dir: dir,
        ca_pem,
        cert: cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// Serves HTTPS on a loopback port; records `(path, api key header, encoding)` per request.
async fn serve(certs: &Certs) -> (u16, Arc<Mutex<Vec<(String, String, String)>>>) {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certs.cert.clone()], certs.key.clone_key())
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                // A client that refuses our certificate ends the handshake here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let record = Arc::clone(&record);
                        async move {
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_owned()
                            };
                            let entry = (
                                req.uri().path().to_owned(),
                                header("dd-api-key"),
                                header("content-encoding"),
                            );
                            let _ = req.into_body().collect().await;
                            record.lock().unwrap().push(entry);
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(202)
                                    .body(Full::new(Bytes::from_static(b"{}")))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, seen)
}

fn headers() -> [(HeaderName, HeaderValue); 2] {
    [
        (
            HeaderName::from_static("dd-api-key"),
            HeaderValue::from_static("tls-key"),
        ),
        (
            http::header::CONTENT_ENCODING,
            HeaderValue::from_static("gzip"),
        ),
    ]
}

async fn post(url: &str, ca: Option<&std::path::Path>) -> Result<u16, String> {
    let target = Target::parse("api_url", url).unwrap();
    // Without ca-certificates installed there are no system roots at all: also a refusal.
    let tls = tls_config(ca).map_err(|e| format!("TLS roots: {e}"))?;
    let mut client = HttpClient::new("api_url", target, Some(tls), Duration::from_secs(5)).unwrap();
    // Two requests: the second reuses the kept-alive connection.
    for _ in 0..2 {
        let r = client
            .post("/api/v2/series", &headers(), Bytes::from_static(b"x"))
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(r.status, 202);
    }
    Ok(202)
}

#[tokio::test]
async fn https_is_verified_against_the_trusted_roots() {
    let good = certs(&["localhost"]);
    let (port, seen) = serve(&good).await;
    let url = format!("https://localhost:{port}");
    assert_eq!(post(&url, Some(&good.ca_pem)).await, Ok(202));
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec![
            (
                "/api/v2/series".to_owned(),
                "tls-key".to_owned(),
                "gzip".to_owned()
            );
            2
        ]
    );

    // The system roots alone do not know the test CA.
    let e = post(&url, None).await.unwrap_err();
    assert!(e.contains("TLS"), "{e}");

    // A certificate from the trusted CA, but for another host name.
    let other = certs(&["datadog.example"]);
    let (port, other_seen) = serve(&other).await;
    let e = post(&format!("https://localhost:{port}"), Some(&other.ca_pem))
        .await
        .unwrap_err();
    assert!(e.contains("TLS"), "{e}");
    assert!(other_seen.lock().unwrap().is_empty(), "nothing delivered");
    assert_eq!(seen.lock().unwrap().len(), 2, "nothing delivered");
}
