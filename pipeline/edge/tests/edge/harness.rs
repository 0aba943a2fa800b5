//! Test harness: a fake doppler (raw v2 Egress + log cache read API on a real socket), the edge
//! started with `run()` on 127.0.0.1:0, and small WebSocket / HTTP / metrics clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::BodyExt as _;
use hydrant_auth::{Claims, SigningKey};
use hydrant_envelope::logcache_v1::{self, MetaInfo, MetaRequest, MetaResponse, ReadRequest};
use hydrant_envelope::raw::egress::egress_server::{Egress, EgressServer};
use hydrant_envelope::v2;
use hydrant_envelope::wire::{BatchIter, EnvelopeView};
use hydrant_firehose::{Config, TrafficController};
use prost::Message as _;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest as _};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub type Ws = WebSocketStream<TcpStream>;

/// The key the tests' "cloud controller" signs with; a test edge holds only its public half.
pub fn key() -> SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().unwrap()).clone()
}

/// `claims` signed by the test key, for this edge (`hydrant-logs`) unless they name an
/// audience themselves.
pub fn token(mut claims: Claims) -> String {
    if claims.aud.is_empty() {
        claims = claims.for_audience(hydrant_auth::AUD_LOGS);
    }
    key().issue(&claims)
}

pub fn admin_token() -> String {
    token(Claims::new("admin").with_scope("admin"))
}

/// Polls `cond` every 10 ms until it holds or `secs` pass.
pub async fn wait_for<F, Fut>(what: &str, secs: u64, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// === envelopes ===

pub fn log(source: &str, ts: i64, text: &str) -> v2::Envelope {
    v2::Envelope {
        timestamp: ts,
        source_id: source.to_owned(),
        instance_id: "0".to_owned(),
        message: Some(v2::envelope::Message::Log(v2::Log {
            payload: text.as_bytes().to_vec().into(),
            r#type: 0,
        })),
        ..v2::Envelope::default()
    }
}

pub fn counter(source: &str, ts: i64, name: &str) -> v2::Envelope {
    v2::Envelope {
        timestamp: ts,
        source_id: source.to_owned(),
        message: Some(v2::envelope::Message::Counter(v2::Counter {
            name: name.to_owned(),
            delta: 1,
            total: ts as u64,
        })),
        ..v2::Envelope::default()
    }
}

pub fn gauge(source: &str, ts: i64) -> v2::Envelope {
    v2::Envelope {
        timestamp: ts,
        source_id: source.to_owned(),
        message: Some(v2::envelope::Message::Gauge(v2::Gauge {
            metrics: HashMap::from([(
                "cpu".to_owned(),
                v2::GaugeValue {
                    unit: "percentage".to_owned(),
                    value: 1.5,
                },
            )]),
        })),
        ..v2::Envelope::default()
    }
}

pub fn encode_batch(envelopes: &[v2::Envelope]) -> Bytes {
    v2::EnvelopeBatch {
        batch: envelopes.to_vec(),
    }
    .encode_to_vec()
    .into()
}

pub fn is_gap(e: &v2::Envelope) -> Option<u64> {
    let bytes = hydrant_envelope::wire::encode(e);
    let view = EnvelopeView::parse(&bytes).ok()?;
    hydrant_envelope::gap::Gap::from_view(&view).map(|g| {
        assert_eq!(g.hop, "firehose");
        assert_eq!(g.reason, "slow_consumer");
        assert_eq!(g.source_id, "hydrant");
        assert_eq!(
            g.by_source.total(),
            g.dropped,
            "the marker says whose envelopes were lost: {g:?}"
        );
        g.dropped
    })
}

// === the fake doppler ===

#[derive(Default)]
struct DopplerState {
    subscribers: Vec<mpsc::Sender<Result<Bytes, Status>>>,
    requests: Vec<v2::EgressBatchRequest>,
    cache: Vec<v2::Envelope>,
    meta: HashMap<String, MetaInfo>,
}

/// A doppler that streams whatever the test pushes and answers log cache reads from a list.
#[derive(Clone, Default)]
pub struct FakeDoppler {
    state: Arc<Mutex<DopplerState>>,
}

#[tonic::async_trait]
impl Egress for FakeDoppler {
    type ReceiverStream = ReceiverStream<Result<Bytes, Status>>;
    type BatchedReceiverStream = ReceiverStream<Result<Bytes, Status>>;

    async fn receiver(
        &self,
        _request: Request<v2::EgressRequest>,
    ) -> Result<Response<Self::ReceiverStream>, Status> {
        Err(Status::unimplemented("use BatchedReceiver"))
    }

    async fn batched_receiver(
        &self,
        request: Request<v2::EgressBatchRequest>,
    ) -> Result<Response<Self::BatchedReceiverStream>, Status> {
        let (tx, rx) = mpsc::channel(4096);
        let mut s = self.state.lock().unwrap();
        s.requests.push(request.into_inner());
        s.subscribers.push(tx);
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn kind_of(e: &v2::Envelope) -> i32 {
    use logcache_v1::EnvelopeType as T;
    use v2::envelope::Message as M;
    (match e.message {
        Some(M::Log(_)) => T::Log,
        Some(M::Counter(_)) => T::Counter,
        Some(M::Gauge(_)) => T::Gauge,
        Some(M::Timer(_)) => T::Timer,
        Some(M::Event(_)) => T::Event,
        None => T::Any,
    }) as i32
}

#[tonic::async_trait]
impl logcache_v1::egress_server::Egress for FakeDoppler {
    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<logcache_v1::ReadResponse>, Status> {
        let r = request.into_inner();
        let s = self.state.lock().unwrap();
        let mut found: Vec<v2::Envelope> = s
            .cache
            .iter()
            .filter(|e| e.source_id == r.source_id)
            .filter(|e| {
                e.timestamp >= r.start_time && (r.end_time == 0 || e.timestamp < r.end_time)
            })
            .filter(|e| r.envelope_types.is_empty() || r.envelope_types.contains(&kind_of(e)))
            .cloned()
            .collect();
        found.sort_by_key(|e| e.timestamp);
        if r.descending {
            found.reverse();
        }
        found.truncate(usize::try_from(r.limit).unwrap());
        Ok(Response::new(logcache_v1::ReadResponse {
            envelopes: Some(v2::EnvelopeBatch { batch: found }),
        }))
    }

    async fn meta(&self, _request: Request<MetaRequest>) -> Result<Response<MetaResponse>, Status> {
        let s = self.state.lock().unwrap();
        Ok(Response::new(MetaResponse {
            meta: s.meta.clone(),
        }))
    }
}

impl FakeDoppler {
    /// Sends one encoded batch to every open subscription.
    pub async fn push(&self, batch: Bytes) {
        let subs: Vec<_> = self.state.lock().unwrap().subscribers.clone();
        for s in subs {
            let _ = s.send(Ok(batch.clone())).await;
        }
    }

    pub async fn push_envelopes(&self, envelopes: &[v2::Envelope]) {
        self.push(encode_batch(envelopes)).await;
    }

    pub fn requests(&self) -> Vec<v2::EgressBatchRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn cache(&self, envelopes: Vec<v2::Envelope>) {
        self.state.lock().unwrap().cache.extend(envelopes);
    }

    pub fn set_meta(&self, source: &str, info: MetaInfo) {
        self.state
            .lock()
            .unwrap()
            .meta
            .insert(source.to_owned(), info);
    }

    /// Ends every open stream, as a doppler going away does.
    fn hang_up(&self) {
        self.state.lock().unwrap().subscribers.clear();
    }
}

/// A fake doppler serving on a real socket.
pub struct RunningDoppler {
    pub fake: FakeDoppler,
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningDoppler {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(FakeDoppler::default(), listener)
    }

    /// Serves `fake` again on `addr` (a restart on the same port).
    pub async fn restart_on(fake: FakeDoppler, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(fake, listener)
    }

    fn serve(fake: FakeDoppler, listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(8 * 1024 * 1024)
            .add_service(EgressServer::new(fake.clone()))
            .add_service(logcache_v1::egress_server::EgressServer::new(fake.clone()))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        let task = tokio::spawn(async move {
            server.await.unwrap();
        });
        Self {
            fake,
            addr,
            stop,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving: open streams end, the port closes.
    pub async fn stop(self) -> (FakeDoppler, SocketAddr) {
        self.fake.hang_up();
        self.stop.cancel();
        self.task.await.unwrap();
        (self.fake, self.addr)
    }
}

// === the edge ===

pub struct Edge {
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), hydrant_firehose::Error>>,
}

/// Test defaults: short timers, small queues, the test key.
pub fn config(dopplers: Vec<String>) -> Config {
    Config {
        dopplers,
        token_keys: Some(key().key_set().to_json()),
        reconnect_min_ms: 10,
        reconnect_max_ms: 100,
        slow_consumer_timeout_secs: 1.0,
        read_timeout_secs: 2.0,
        ..Config::default()
    }
}

/// Role `R` run with `config` on 127.0.0.1:0 until the token fires: the addresses of its
/// listener `main` and of its admin listener, the token and the task.
async fn spawn_role<R: hydrant_runtime::Role>(
    config: R::Config,
    main: &str,
) -> (
    SocketAddr,
    SocketAddr,
    CancellationToken,
    JoinHandle<Result<(), R::Error>>,
) {
    let listeners = hydrant_runtime::bind_on::<R>(|_| "127.0.0.1:0".to_owned())
        .await
        .unwrap();
    let main = listeners.local_addr(main).unwrap();
    let admin = listeners.local_addr("admin").unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hydrant_runtime::run::<R>(
        config,
        listeners,
        shutdown.clone(),
    ));
    (main, admin, shutdown, task)
}

pub async fn start_edge(config: Config) -> Edge {
    let (http, admin, shutdown, task) = spawn_role::<TrafficController>(config, "http").await;
    Edge {
        http,
        admin,
        shutdown,
        task,
    }
}

/// An edge started with `config`, once it has subscribed to every doppler the config names.
pub async fn start_edge_connected(config: Config) -> Edge {
    let dopplers = config.dopplers.len();
    let edge = start_edge(config).await;
    edge.wait_connected(dopplers as f64).await;
    edge
}

/// An edge with the test config reading the one doppler at `url`, once it has subscribed.
pub async fn edge_reading(url: String) -> Edge {
    start_edge_connected(config(vec![url])).await
}

impl Edge {
    /// Waits until the edge holds a live subscription to `n` dopplers.
    pub async fn wait_connected(&self, n: f64) {
        wait_for("the edge to subscribe to its dopplers", 10, || async {
            self.metric("trafficcontroller_doppler_connections", &[])
                .await
                == n
        })
        .await;
    }

    /// Sums the Prometheus series `name` whose labels include `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        scrape(self.admin, name, labels).await
    }

    /// A firehose client library config for this edge with the admin token, reconnecting
    /// within 20 to 200 ms so a test sees a restart's reconnect at once.
    pub fn client_config(&self) -> hydrant_firehose_client::ClientConfig {
        let mut config = hydrant_firehose_client::ClientConfig {
            url: format!("http://{}", self.http),
            token: admin_token(),
            ..hydrant_firehose_client::ClientConfig::default()
        };
        config.reconnect.initial_ms = 20;
        config.reconnect.max_ms = 200;
        config
    }

    /// Envelopes the edge dropped for `reason` (`trafficcontroller_dropped_total`).
    pub async fn dropped(&self, reason: &str) -> f64 {
        self.metric("trafficcontroller_dropped_total", &[("reason", reason)])
            .await
    }

    pub async fn ws(&self, path: &str, token: Option<&str>) -> Result<Ws, tungstenite::Error> {
        ws_connect(self.http, path, token, None).await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("run() returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

/// Sums the Prometheus series `name` served on `admin` whose labels include `labels` (an
/// unlabelled series counts when `labels` is empty).
pub async fn scrape(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, body) = http_get(admin, "/metrics", None).await;
    assert_eq!(status, 200);
    hydrant_testkit::prometheus_value(std::str::from_utf8(&body).unwrap(), name, labels)
}

// === a real doppler ===

/// A real doppler (`hydrant_doppler::run`) on 127.0.0.1:0, for the tests that need its replay
/// rings and shard groups rather than the fake's scripted streams.
pub struct RealDoppler {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), hydrant_doppler::Error>>,
}

impl RealDoppler {
    pub async fn start(config: hydrant_doppler::Config) -> Self {
        let (grpc, admin, shutdown, task) =
            spawn_role::<hydrant_doppler::Doppler>(config, "grpc").await;
        Self {
            grpc,
            admin,
            shutdown,
            task,
        }
    }

    /// A doppler with its own `instance_id` (its id in positions and cursors).
    pub async fn named(name: &str) -> Self {
        Self::start(hydrant_doppler::Config {
            instance_id: name.to_owned(),
            ..hydrant_doppler::Config::default()
        })
        .await
    }

    /// A doppler whose replay rings hold `window_secs` of traffic.
    pub async fn windowed(window_secs: u64) -> Self {
        Self::start(hydrant_doppler::Config {
            replay_ring_secs: window_secs,
            ..hydrant_doppler::Config::default()
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Sends one batch through v2 Ingress (`Send`), as an agent does.
    pub async fn send(&self, envelopes: Vec<v2::Envelope>) {
        let mut client = v2::ingress_client::IngressClient::connect(self.url())
            .await
            .unwrap();
        client
            .send(v2::EnvelopeBatch { batch: envelopes })
            .await
            .unwrap();
    }

    /// Open egress streams (the edges' reads) right now.
    pub async fn streams(&self) -> f64 {
        scrape(self.admin, "doppler_subscriptions", &[]).await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

// === clients ===

/// Opens a WebSocket; `recv_buffer` shrinks the socket's receive buffer (a slow reader).
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    recv_buffer: Option<u32>,
) -> Result<Ws, tungstenite::Error> {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let stream = socket.connect(addr).await.unwrap();
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(t) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio_tungstenite::client_async(request, stream)
        .await
        .map(|(ws, _)| ws)
}

/// What one read from a stream produced.
#[derive(Debug)]
pub enum Frame {
    Batch(Vec<v2::Envelope>),
    Json(serde_json::Value),
    Closed(Option<(u16, String)>),
}

/// Reads the next data or close frame (skipping pings), within `secs`.
pub async fn next_frame(ws: &mut Ws, secs: u64) -> Frame {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(secs), ws.next())
            .await
            .expect("a frame in time");
        match msg {
            Some(Ok(Message::Binary(b))) => {
                // Each binary frame must be a valid batch, and walkable without prost.
                assert!(BatchIter::new(&b).all(|e| e.is_ok()));
                return Frame::Batch(v2::EnvelopeBatch::decode(&b[..]).unwrap().batch);
            }
            Some(Ok(Message::Text(t))) => return Frame::Json(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(c))) => {
                return Frame::Closed(c.map(|c| (u16::from(c.code), c.reason.to_string())));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Frame::Closed(None),
        }
    }
}

/// Reads binary frames until `n` envelopes (gap markers excluded) have arrived.
pub async fn collect(ws: &mut Ws, n: usize) -> Vec<v2::Envelope> {
    let mut out = Vec::new();
    while out.len() < n {
        match next_frame(ws, 10).await {
            Frame::Batch(b) => out.extend(b.into_iter().filter(|e| is_gap(e).is_none())),
            other => panic!("expected data, got {other:?}"),
        }
    }
    assert_eq!(out.len(), n, "no more than asked for");
    out
}

/// Asserts nothing arrives for `ms`.
pub async fn assert_quiet(ws: &mut Ws, ms: u64) {
    loop {
        match tokio::time::timeout(Duration::from_millis(ms), ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

/// An HTTP/1.1 connection to `addr`, driven by its own task.
pub async fn http1(
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// One HTTP/1.1 GET; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, Bytes) {
    let (status, _, body) = http_get_full(addr, path, token).await;
    (status, body)
}

pub async fn http_get_full(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, http::HeaderMap, Bytes) {
    let mut sender = http1(addr).await;
    let mut req = http::Request::get(path).header("host", addr.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = sender
        .send_request(req.body(http_body_util::Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

/// Opens a streaming GET (SSE) and returns the body for incremental reads.
pub async fn http_stream(
    addr: SocketAddr,
    path: &str,
    token: &str,
) -> (u16, hyper::body::Incoming) {
    let mut sender = http1(addr).await;
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    (resp.status().as_u16(), resp.into_body())
}

/// Reads SSE body chunks until the text holds `needle`.
pub async fn sse_until(body: &mut hyper::body::Incoming, text: &mut String, needle: &str) {
    while !text.contains(needle) {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap_or_else(|_| panic!("waiting for {needle:?}; have {text:?}"))
            .expect("stream still open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

pub fn json_body(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}
