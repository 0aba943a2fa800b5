//! The cloud controller talks to `https://` brokers: a fake OSBAPI broker serving TLS on
//! loopback with a certificate from a test CA. With the CA in `services.broker_ca_file` the
//! catalog is fetched and an instance provisioned over TLS, every request carrying the
//! headers the spec requires; a controller that does not trust that CA, a URL whose host the
//! certificate does not name, and a CA file that is not a CA are each refused with a message
//! that says what to fix. The outbound policy still applies to https brokers (the unit tests
//! of `osb` cover a refused `https://localhost`).

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hydrant_api::services::{CreateServiceBroker, CreateServiceInstance, ServiceInstanceType};
use hydrant_cloudcontroller::ServicesConfig;
use hydrant_testkit::wait_for;
use hydrant_tls::local::{LocalCa, Validity};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{Cc, Options};

const WAIT: Duration = Duration::from_secs(30);

/// What the TLS broker saw: `METHOD path` and whether the required headers were there.
#[derive(Debug, Default)]
struct Seen {
    requests: Vec<String>,
    violations: Vec<String>,
}

async fn answer(
    request: Request<Incoming>,
    seen: Arc<Mutex<Seen>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let line = format!("{} {}", request.method(), request.uri().path());
    {
        let mut s = seen.lock().unwrap();
        let h = request.headers();
        if h.get("x-broker-api-version").and_then(|v| v.to_str().ok()) != Some("2.17") {
            s.violations
                .push(format!("{line}: no X-Broker-API-Version 2.17"));
        }
        if h.get("x-broker-api-request-identity").is_none() {
            s.violations.push(format!("{line}: no request identity"));
        }
        let basic = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "broker-user:broker-pass",
        );
        if h.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Basic {basic}")) {
            s.violations.push(format!("{line}: wrong basic auth"));
        }
        if h.get("host").is_none() {
            s.violations.push(format!("{line}: no Host"));
        }
        s.requests.push(line.clone());
    }
    let body = request.into_body().collect().await.map(|b| b.to_bytes());
    let (status, json) = match line.as_str() {
        "GET /v2/catalog" => (
            200,
            json!({"services": [{
                "id": "svc-tls", "name": "vault", "description": "secrets over TLS",
                "bindable": true, "plans": [{"id": "p-tls", "name": "small",
                                             "description": "a small one"}]
            }]}),
        ),
        l if l.starts_with("PUT /v2/service_instances/") => {
            let parsed: Value = body
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            if parsed["plan_id"] != "p-tls" {
                seen.lock()
                    .unwrap()
                    .violations
                    .push(format!("{l}: body {parsed}"));
            }
            (201, json!({}))
        }
        _ => (404, json!({"description": "not here"})),
    };
    let mut response = Response::new(Full::new(Bytes::from(json.to_string())));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(response)
}

/// A TLS broker on loopback presenting `leaf`; its port.
async fn tls_broker(cert_pem: &str, key_pem: &str, seen: Arc<Mutex<Seen>>) -> u16 {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |r| answer(r, seen.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    port
}

/// A controller whose brokers may live on loopback, trusting `ca_file` for https brokers.
async fn start_cc(data: &Path, bus: &str, ca_file: Option<&Path>) -> Cc {
    let mut options = Options::new(bus);
    options.services = Some(ServicesConfig {
        allow_private_brokers: true,
        broker_timeout_secs: 5,
        broker_ca_file: ca_file.map(|p| p.display().to_string()),
        ..ServicesConfig::default()
    });
    Cc::start(data, &options).await
}

/// Registers the broker at `url` as `name`, or says why the controller refused it.
async fn try_register(cc: &Cc, name: &str, url: &str) -> Result<(), String> {
    cc.admin
        .create_service_broker(&CreateServiceBroker {
            name: name.into(),
            url: url.into(),
            username: "broker-user".into(),
            password: "broker-pass".into(),
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_broker_signed_by_the_configured_ca_is_used_and_others_are_refused() {
    let ca = LocalCa::new("broker test CA").unwrap();
    let leaf = ca.leaf("localhost", Validity::Days(30)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("broker-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let port = tls_broker(&leaf.cert_pem, &leaf.key_pem, seen.clone()).await;

    let cc = start_cc(&dir.path().join("cc"), "broker-tls", Some(&ca_file)).await;
    try_register(&cc, "vault", &format!("https://localhost:{port}"))
        .await
        .unwrap();
    cc.enable_offering("vault").await;
    let offerings = cc.admin.list_service_offerings().await.unwrap();
    assert!(
        offerings.iter().any(|o| o.name == "vault"),
        "the catalog came over TLS: {offerings:?}"
    );
    let answer = cc
        .admin
        .create_service_instance(&CreateServiceInstance {
            name: "secrets".into(),
            kind: ServiceInstanceType::Managed,
            offering: Some("vault".into()),
            plan: Some("small".into()),
            ..CreateServiceInstance::default()
        })
        .await
        .unwrap();
    let job = answer.job.expect("a managed create is a job");
    let admin = cc.admin.clone();
    wait_for(WAIT, "the provision over TLS to finish", || {
        let (admin, guid) = (admin.clone(), job.guid.clone());
        async move { admin.job(&guid).await.unwrap().is_done() }
    })
    .await;
    let done = cc.admin.job(&job.guid).await.unwrap();
    assert_eq!(done.state, "COMPLETE", "{done:?}");
    {
        let s = seen.lock().unwrap();
        assert!(s.violations.is_empty(), "{:#?}", s.violations);
        assert!(s.requests.iter().any(|r| r == "GET /v2/catalog"));
        assert!(
            s.requests
                .iter()
                .any(|r| r.starts_with("PUT /v2/service_instances/")),
            "{:?}",
            s.requests
        );
    }

    // The certificate names `localhost`, not `127.0.0.1`: refused, and the message says why.
    let requests_before = seen.lock().unwrap().requests.len();
    let e = try_register(&cc, "by-address", &format!("https://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(
        e.contains("TLS handshake failed") && e.contains("must name 127.0.0.1"),
        "{e}"
    );
    assert_eq!(
        seen.lock().unwrap().requests.len(),
        requests_before,
        "no request is sent over a connection whose certificate was refused"
    );
    cc.stop().await;

    // A controller that does not trust the test CA refuses the same broker.
    let plain = start_cc(&dir.path().join("cc2"), "broker-tls-2", None).await;
    let e = try_register(&plain, "vault", &format!("https://localhost:{port}"))
        .await
        .unwrap_err();
    assert!(e.contains("services.broker_ca_file"), "{e}");
    plain.stop().await;

    // A CA file that holds no CA stops the controller at start, naming the setting.
    let bogus = dir.path().join("not-a-ca.pem");
    std::fs::write(&bogus, "hello").unwrap();
    let mut options = Options::new("broker-tls-3");
    options.services = Some(ServicesConfig {
        broker_ca_file: Some(bogus.display().to_string()),
        ..ServicesConfig::default()
    });
    let config = options.config(&dir.path().join("cc3"));
    let listeners = hydrant_runtime::bind::<hydrant_cloudcontroller::CloudController>(&config)
        .await
        .unwrap();
    let outcome = tokio::time::timeout(
        WAIT,
        hydrant_runtime::run::<hydrant_cloudcontroller::CloudController>(
            config,
            listeners,
            CancellationToken::new(),
        ),
    )
    .await
    .expect("a controller with an unusable CA file stops at once");
    let e = outcome.unwrap_err().to_string();
    assert!(e.contains("services.broker_ca_file"), "{e}");
}
