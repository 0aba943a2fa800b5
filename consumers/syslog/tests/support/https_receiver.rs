//! A local HTTPS drain for the tests: rustls with a certificate made at test time, HTTP/1.1
//! from hyper, every request recorded (path, headers, body) and answered with a status the
//! test scripts per path. Included with `#[path]`.
#![allow(dead_code, reason = "each test file uses a part")]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hydrant_nozzle_syslog::rsyslogd::TlsFiles;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// One request as the drain saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
    pub status: u16,
}

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
    /// Per path, the statuses to answer next (then 200).
    script: HashMap<String, VecDeque<u16>>,
    /// Per path, a status answered forever.
    always: HashMap<String, u16>,
}

#[derive(Clone)]
pub struct HttpsReceiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl HttpsReceiver {
    pub async fn start(files: &TlsFiles) -> Self {
        let cert = CertificateDer::from_pem_file(&files.cert).unwrap();
        let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| answer(Arc::clone(&state), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    /// Answer `statuses` to the next requests on `path`, then 200.
    pub fn script(&self, path: &str, statuses: &[u16]) {
        self.state
            .lock()
            .unwrap()
            .script
            .insert(path.to_owned(), statuses.iter().copied().collect());
    }

    /// Answer `status` to every request on `path`.
    pub fn always(&self, path: &str, status: u16) {
        self.state
            .lock()
            .unwrap()
            .always
            .insert(path.to_owned(), status);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The lines of every body on `path` that was answered 2xx, in order.
    pub fn delivered_lines(&self, path: &str) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|s| s.path == path && (200..300).contains(&s.status))
            .flat_map(|s| {
                String::from_utf8(s.body.to_vec())
                    .unwrap()
                    .split_inclusive('\n')
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

async fn answer(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut s = state.lock().unwrap();
    let bare = path.split('?').next().unwrap_or("/").to_owned();
    let status = match s.always.get(&bare) {
        Some(status) => *status,
        None => s
            .script
            .get_mut(&bare)
            .and_then(VecDeque::pop_front)
            .unwrap_or(200),
    };
    s.seen.push(Seen {
        path: bare,
        headers,
        body,
        status,
    });
    Ok(Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .body(Full::new(Bytes::from_static(b"noted\n")))
        .unwrap())
}
