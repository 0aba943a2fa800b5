//! Test fixtures: the router on loopback with its own in-process bus hub, small hyper
//! backends that say who they are and echo what they saw, and a one-shot HTTP client. The fake
//! v2 Ingress agent that records envelopes is `hydrant_testkit::FakeAgent`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hydrant_bus::messages::{self, RegistryMessage};
use hydrant_bus::{Bus, BusStatus};
use hydrant_emitter::Registry;
use hydrant_router::{Config, StaticRoute};
use hydrant_testkit::wait_for;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

static HUB: AtomicUsize = AtomicUsize::new(0);

/// A bus config on a hub no other test shares.
pub fn unique_bus() -> hydrant_bus::Config {
    let n = HUB.fetch_add(1, Ordering::Relaxed);
    hydrant_bus::Config::inprocess(&format!("router-test-{}-{n}", std::process::id()))
}

/// A static route for `uri` to `backends`, owned by the app `<uri>-app`.
pub fn static_route(uri: &str, backends: &[SocketAddr]) -> StaticRoute {
    StaticRoute {
        uri: uri.into(),
        backends: backends.iter().map(ToString::to_string).collect(),
        app_id: Some(format!("{uri}-app")),
        load_balancing: None,
    }
}

/// A router running on loopback.
pub struct TestRouter {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// A second handle on the router's hub, for the test to publish on.
    pub bus: Bus,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), hydrant_router::Error>>>,
}

impl TestRouter {
    /// Starts a router with `config` (listen addresses and bus are filled in).
    pub async fn start(mut config: Config) -> Self {
        config.listen = "127.0.0.1:0".into();
        config.admin_listen = "127.0.0.1:0".into();
        if config.bus == hydrant_bus::Config::default() {
            config.bus = unique_bus();
        }
        let bus = Bus::connect(&config.bus, &Registry::new("test", "0"))
            .await
            .unwrap();
        let listeners = hydrant_runtime::bind::<hydrant_router::Router>(&config)
            .await
            .unwrap();
        let addr = listeners.local_addr("http").unwrap();
        let admin = listeners.local_addr("admin").unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(hydrant_runtime::run::<hydrant_router::Router>(
            config,
            listeners,
            shutdown.clone(),
        ));
        let router = Self {
            addr,
            admin,
            bus,
            shutdown,
            task: Some(task),
        };
        wait_for(DEADLINE, "the admin endpoint", || async {
            get(router.admin, "admin", "/healthz", &[])
                .await
                .ok()
                .filter(|r| r.status == StatusCode::OK)
        })
        .await;
        router
    }

    pub fn register(&self, message: &RegistryMessage) {
        self.bus
            .publish_json(messages::ROUTER_REGISTER, message)
            .unwrap();
    }

    pub fn unregister(&self, message: &RegistryMessage) {
        self.bus
            .publish_json(messages::ROUTER_UNREGISTER, message)
            .unwrap();
    }

    /// `GET http://host/path` through the router.
    pub async fn get(&self, host: &str, path: &str) -> Reply {
        get(self.addr, host, path, &[]).await.unwrap()
    }

    /// Waits until `host/path` answers `status`.
    pub async fn wait_status(&self, host: &str, path: &str, status: u16) -> Reply {
        wait_for(
            DEADLINE,
            &format!("{host}{path} to answer {status}"),
            || async {
                let reply = get(self.addr, host, path, &[]).await.ok()?;
                (reply.status.as_u16() == status).then_some(reply)
            },
        )
        .await
    }

    /// The value of one series on `/metrics` (0 when absent), summed over matching labels.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let reply = get(self.admin, "admin", "/metrics", &[]).await.unwrap();
        let text = String::from_utf8(reply.body.to_vec()).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    }

    /// Asks the router to stop without waiting for it; [`TestRouter::stop`] then waits.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("router stops")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Asks the router at `addr` to upgrade `GET /socket` on `ws.apps.localhost` to the echo
/// backend's `Upgrade: echo`; returns the stream, read up to the end of the response head, and
/// that head.
pub async fn open_tunnel(addr: SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /socket HTTP/1.1\r\nHost: ws.apps.localhost\r\n\
              Connection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    (stream, String::from_utf8(head).unwrap())
}

/// Waits until a bus handle sees `status`.
pub async fn wait_bus(bus: &Bus, connected: bool) {
    wait_for(DEADLINE, "the bus status", || async {
        (matches!(bus.status(), BusStatus::Connected) == connected).then_some(())
    })
    .await;
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a fresh connection.
pub async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, hyper::Error> {
    send(addr, "GET", host, path, headers, Bytes::new()).await
}

/// One request with a body on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply, hyper::Error> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = sender
        .send_request(request.body(Full::new(body)).unwrap())
        .await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// What a backend does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer 200 with its name; echo the request body on POST.
    Answer,
    /// Read the request, then close the connection without answering.
    Die,
}

/// A backend on loopback: answers with its name, counts requests and connections, echoes what
/// it saw as `x-seen-*` response headers; `/slow` waits until [`Backend::release`].
pub struct Backend {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    gate: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, Behaviour::Answer).await
    }

    pub async fn start_with(name: &str, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Notify::new());
        let task = {
            let (hits, gate, name) = (hits.clone(), gate.clone(), name.to_owned());
            let connections = connections.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (hits, gate, name) = (hits.clone(), gate.clone(), name.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |request| {
                            let (hits, gate, name) = (hits.clone(), gate.clone(), name.clone());
                            async move { answer(request, &name, &hits, &gate, behaviour).await }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
            })
        };
        Self {
            addr,
            hits,
            connections,
            gate,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Lets every waiting `/slow` request finish.
    pub fn release(&self) {
        self.gate.notify_waiters();
    }

    pub fn registration(&self, uris: &[&str], app: &str, index: u32) -> RegistryMessage {
        RegistryMessage {
            app: Some(app.to_owned()),
            private_instance_id: Some(format!("{app}-instance-{index}")),
            private_instance_index: Some(index.to_string()),
            tags: BTreeMap::from([("component".to_owned(), "test".to_owned())]),
            ..RegistryMessage::new(
                "127.0.0.1",
                self.addr.port(),
                uris.iter().map(|u| (*u).to_owned()).collect(),
            )
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Answer = Result<Response<Full<Bytes>>, std::io::Error>;

async fn answer(
    request: Request<Incoming>,
    name: &str,
    hits: &AtomicUsize,
    gate: &Notify,
    behaviour: Behaviour,
) -> Answer {
    hits.fetch_add(1, Ordering::SeqCst);
    if request.uri().path() == "/slow" {
        gate.notified().await;
    }
    if request.headers().contains_key("upgrade") {
        return Ok(upgrade(request));
    }
    let mut response = Response::builder().header("x-backend", name);
    for (seen, header) in [
        ("x-seen-host", "host"),
        ("x-seen-forwarded-for", "x-forwarded-for"),
        ("x-seen-forwarded-proto", "x-forwarded-proto"),
        ("x-seen-request-id", "x-vcap-request-id"),
        ("x-seen-request-start", "x-request-start"),
        ("x-seen-app-id", "x-cf-applicationid"),
        ("x-seen-instance-index", "x-cf-instanceindex"),
        ("x-seen-instance-id", "x-cf-instanceid"),
        ("x-seen-connection", "connection"),
        ("x-seen-secret", "x-hop-secret"),
        ("x-seen-path", ":path"),
    ] {
        let value = if header == ":path" {
            request.uri().to_string()
        } else {
            match request.headers().get(header) {
                Some(v) => v.to_str().unwrap().to_owned(),
                None => continue,
            }
        };
        response = response.header(seen, value);
    }
    let is_post = request.method() == http::Method::POST;
    let body = request.into_body().collect().await;
    if behaviour == Behaviour::Die {
        // A service error makes hyper close the connection without an answer.
        return Err(std::io::Error::other("die"));
    }
    let body = match (is_post, body) {
        (true, Ok(body)) => body.to_bytes(),
        _ => Bytes::from(name.to_owned()),
    };
    Ok(response.body(Full::new(body)).unwrap())
}

/// Answers a WebSocket-style upgrade and echoes bytes on the upgraded connection.
fn upgrade(mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    let on = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = on.await {
            let mut io = TokioIo::new(upgraded);
            let (mut r, mut w) = tokio::io::split(&mut io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Full::new(Bytes::new()))
        .unwrap()
}
