//! The API consumer at run time: one client per role that calls the cloud controller (the
//! autoscaler, the SLO alerter, the health manager, the syslog nozzle) and the mutual-TLS
//! transport those roles and the executor's droplet downloads use to reach the controller's
//! internal listener.
//!
//! Flow: the role's config block ([`ApiConsumer`], with its `tls` files) → [`ApiConsumer::connect`]
//! → an [`ApiClient`]: a `hydrant_api::Client` whose requests go over [`MtlsTransport`] when
//! `tls` is set (presenting the role's certificate, accepting only a server that proves the
//! `cloudcontroller` identity), and the role's token (inline, a file re-read on every use, or
//! OAuth2 client credentials renewed before they expire, fetched over the same transport).
//!
//! Invariants: with `tls` set, nothing reaches the controller in plaintext, and a server that
//! is not the `cloudcontroller` identity of the trusted CA never sees a request; a handshake
//! runs per connection, not per call: the client offers ALPN `h2` first and keeps one HTTP/2
//! connection per peer, shared by every call (pinged while idle, closed after 90 s without a
//! call); with a server that speaks only HTTP/1.1, connections are kept per peer (at most four
//! idle, none idle longer than 8 s, under such a server's header-read timeout) and reused. A
//! reissued leaf or a rotated CA applies to the next connection; a call that meets a kept
//! connection the server closed goes out again on a fresh one when it was never sent (or is
//! idempotent), so a restarted controller costs no failed call; errors name the URL and the
//! reason, never a token.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hydrant_api::{TokenCache, Transport, TransportFuture};
use hydrant_tls::{ClientTls, Identity, Material, TlsFiles};
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::config::{ApiConsumer, invalid};
use crate::sync::lock;
use crate::{Error, Failover, Registry};

/// How long dialling and the TLS handshake may take, unless the role says otherwise.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept per peer: the roles call one at a time or a few at once.
const MAX_IDLE_PER_PEER: usize = 4;
/// Peers with kept connections (a role talks to one controller; more are dropped, not kept).
const MAX_PEERS: usize = 8;
/// How long a kept HTTP/1.1 connection may sit idle before it is closed instead of reused.
/// Below the 10 s header-read timeout of an HTTP/1.1 server, which closes a connection that
/// waits that long for its next request: a call never goes out on a connection the server is
/// closing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(8);
/// How long the shared HTTP/2 connection may go without a call before it is let go. Below the
/// controller's 120 s idle bound, so the client, not the server, closes an idle connection.
const SHARED_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often an HTTP/2 connection is pinged, and how long an answer may take before the
/// connection counts as dead (a controller host that vanished without closing it).
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 receive windows: a droplet streams at the speed of the link, not of 64 KiB windows.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 8 << 20;

/// HTTP/2 (or HTTP/1.1 with a server that speaks only that) over mutual TLS to the cloud
/// controller's internal listener: a `hydrant_api` transport. Connections are kept and reused
/// (a handshake costs ~20 ms of both sides' CPU); clones share them.
#[derive(Debug, Clone)]
pub struct MtlsTransport {
    tls: ClientTls,
    connect_timeout: Duration,
    idle_timeout: Duration,
    shared_idle_timeout: Duration,
    pool: Arc<Pool>,
}

impl MtlsTransport {
    /// Presents the certificate in `files` and accepts only a server proving the
    /// `cloudcontroller` identity.
    ///
    /// # Errors
    /// A file that cannot be read or does not hold what it should, named.
    pub fn new(files: &TlsFiles) -> Result<Self, hydrant_tls::Error> {
        let material = Material::load(files)?;
        let tls = ClientTls::new(material, Identity::CloudController)?;
        Ok(Self::from_client(&tls))
    }

    /// A transport over a client TLS config made elsewhere (a probe, or a test presenting
    /// another CA's certificate or none), offering `h2` and then `http/1.1`.
    #[must_use]
    pub fn from_client(tls: &ClientTls) -> Self {
        Self {
            tls: tls.with_alpn(&[b"h2", b"http/1.1"]),
            connect_timeout: CONNECT_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            shared_idle_timeout: SHARED_IDLE_TIMEOUT,
            pool: Arc::default(),
        }
    }

    /// The same transport offering only `http/1.1` (as clients before HTTP/2 did).
    #[must_use]
    pub fn http1_only(mut self) -> Self {
        self.tls = self.tls.with_alpn(&[b"http/1.1"]);
        self
    }

    /// The same transport giving up on a connection (dial and handshake) after `timeout`.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The same transport closing a kept connection once it has been idle for `timeout`
    /// (default 8 s for HTTP/1.1, 90 s for HTTP/2) instead of reusing it. Keep it under the
    /// server's own idle limit.
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self.shared_idle_timeout = timeout;
        self
    }

    /// Connections this transport (and its clones) opened, each one a full handshake.
    #[must_use]
    pub fn connections_opened(&self) -> u64 {
        self.pool.opened.load(Ordering::Relaxed)
    }

    /// Sends `request` (an `https://` URL) and returns the server's answer; its body streams.
    ///
    /// # Errors
    /// Why there is no answer: no connection, a refused handshake, a broken exchange.
    pub async fn execute(&self, request: reqwest::Request) -> Result<reqwest::Response, String> {
        send(self.clone(), request).await
    }

    /// [`MtlsTransport::execute`], also saying whether the controller may have received the
    /// request before the call failed (`true` once it went out on a connection), so a failover
    /// never sends a non-idempotent request to a second controller that the first may have
    /// applied.
    pub(crate) async fn execute_classified(
        &self,
        request: reqwest::Request,
    ) -> Result<reqwest::Response, (String, bool)> {
        let sent = Arc::new(AtomicBool::new(false));
        send_marking(self.clone(), request, sent.clone())
            .await
            .map_err(|e| (e, sent.load(Ordering::Acquire)))
    }
}

impl Transport for MtlsTransport {
    fn send(&self, request: reqwest::Request) -> TransportFuture {
        Box::pin(send(self.clone(), request))
    }
}

/// Token keys fetched over the same kept connections as every other call.
impl hydrant_auth::KeyTransport for MtlsTransport {
    fn send(&self, request: reqwest::Request) -> hydrant_auth::KeyFetchFuture {
        Box::pin(send(self.clone(), request))
    }
}

/// Where a connection goes: the host as dialled and the port.
type Peer = (String, u16);

/// A kept connection: free for the next call once its last answer was read to the end (or
/// dropped) and the connection took that in.
#[derive(Debug)]
struct Kept {
    sender: SendRequest<reqwest::Body>,
    since: Instant,
    done: Arc<AtomicBool>,
}

/// A peer's HTTP/2 connection, shared by every call: when it was last used.
#[derive(Debug)]
struct Shared {
    sender: http2::SendRequest<reqwest::Body>,
    since: Instant,
}

/// The kept connections, by peer; bounded by [`MAX_PEERS`] and [`MAX_IDLE_PER_PEER`] (one
/// HTTP/2 connection per peer).
#[derive(Debug, Default)]
struct Pool {
    kept: Mutex<HashMap<Peer, Vec<Kept>>>,
    shared: Mutex<HashMap<Peer, Shared>>,
    opened: AtomicU64,
}

impl Pool {
    /// The HTTP/2 connection to `peer`, if it is open and was used within `max_idle`
    /// (otherwise it is let go: dropping the last handle closes it).
    fn shared(&self, peer: &Peer, max_idle: Duration) -> Option<http2::SendRequest<reqwest::Body>> {
        let mut shared = lock(&self.shared);
        let usable = shared
            .get(peer)
            .is_some_and(|c| !c.sender.is_closed() && c.since.elapsed() < max_idle);
        if !usable {
            shared.remove(peer);
            return None;
        }
        let conn = shared.get_mut(peer)?;
        conn.since = Instant::now();
        Some(conn.sender.clone())
    }

    /// Shares `sender` for the next calls to `peer` (replacing a closed one).
    fn share(&self, peer: Peer, sender: http2::SendRequest<reqwest::Body>) {
        let mut shared = lock(&self.shared);
        shared.retain(|_, c| !c.sender.is_closed());
        if !shared.contains_key(&peer) && shared.len() >= MAX_PEERS {
            return;
        }
        shared.insert(
            peer,
            Shared {
                sender,
                since: Instant::now(),
            },
        );
    }

    /// The most recently used connection to `peer` whose last exchange is over, that is still
    /// open and was not kept longer than `max_idle`.
    async fn take(&self, peer: &Peer, max_idle: Duration) -> Option<SendRequest<reqwest::Body>> {
        loop {
            let mut candidate = {
                let mut kept = lock(&self.kept);
                let conns = kept.get_mut(peer)?;
                conns.retain(|c| !c.sender.is_closed() && c.since.elapsed() < max_idle);
                let newest_done = conns.iter().rposition(|c| c.done.load(Ordering::Acquire));
                let taken = newest_done.map(|i| conns.remove(i));
                if conns.is_empty() {
                    kept.remove(peer);
                }
                taken?
            };
            // The answer was read; the connection's own task may not have seen it yet.
            if let Ok(Ok(())) =
                tokio::time::timeout(Duration::from_secs(1), candidate.sender.ready()).await
            {
                return Some(candidate.sender);
            }
        }
    }

    /// Keeps `sender`, whose answer is being read (`done` is set when it has been), for the
    /// next call to `peer`, unless the pool is full (then it closes after this exchange).
    fn keep(&self, peer: Peer, sender: SendRequest<reqwest::Body>, done: Arc<AtomicBool>) {
        let mut kept = lock(&self.kept);
        kept.retain(|_, conns| {
            conns.retain(|c| !c.sender.is_closed());
            !conns.is_empty()
        });
        if !kept.contains_key(&peer) && kept.len() >= MAX_PEERS {
            return;
        }
        let conns = kept.entry(peer).or_default();
        if conns.len() < MAX_IDLE_PER_PEER {
            conns.push(Kept {
                sender,
                since: Instant::now(),
                done,
            });
        }
    }
}

/// An answer's body that marks its exchange over when read to the end or dropped, so the
/// connection is taken for the next call only after that.
#[derive(Debug)]
struct Tracked {
    inner: hyper::body::Incoming,
    done: Arc<AtomicBool>,
}

impl hyper::body::Body for Tracked {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.done.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
    }
}

/// Every message in an error's source chain: a refused certificate shows only deep inside.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text
}

/// Methods a server may see twice without harm (RFC 9110 9.2.2): sent again on a fresh
/// connection when a kept one broke after sending them.
pub(crate) fn idempotent(method: &reqwest::Method) -> bool {
    use reqwest::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
    ]
    .contains(method)
}

/// The protocol a connection speaks, by what ALPN agreed on.
enum Sender {
    H1(SendRequest<reqwest::Body>),
    H2(http2::SendRequest<reqwest::Body>),
}

async fn send(
    transport: MtlsTransport,
    request: reqwest::Request,
) -> Result<reqwest::Response, String> {
    send_marking(transport, request, Arc::new(AtomicBool::new(false))).await
}

/// [`send`], setting `sent` as soon as the request goes out on a connection: an error after
/// that may come after the controller acted on it.
async fn send_marking(
    transport: MtlsTransport,
    request: reqwest::Request,
    sent: Arc<AtomicBool>,
) -> Result<reqwest::Response, String> {
    let url = request.url().clone();
    if url.scheme() != "https" {
        return Err(format!(
            "{} is not an https:// URL; mutual TLS needs the controller's internal https:// address",
            url.scheme()
        ));
    }
    let host = url
        .host_str()
        .ok_or_else(|| "the URL has no host".to_owned())?
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    let peer: Peer = (
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
    );
    // A copy to send again if a kept connection breaks after taking the request.
    let again = if idempotent(request.method()) {
        request.try_clone()
    } else {
        None
    };
    let mut request: http::Request<reqwest::Body> = request
        .try_into()
        .map_err(|e: reqwest::Error| e.to_string())?;
    // A kept connection first: the peer's HTTP/2 one, else an idle HTTP/1.1 one.
    let kept = match transport.pool.shared(&peer, transport.shared_idle_timeout) {
        Some(h2) => Some(Sender::H2(h2)),
        None => transport
            .pool
            .take(&peer, transport.idle_timeout)
            .await
            .map(Sender::H1),
    };
    if let Some(sender) = kept {
        sent.store(true, Ordering::Release);
        let outcome = match sender {
            Sender::H2(mut h2) => h2
                .try_send_request(shape(request, true, &authority)?)
                .await
                .map(answer_shared),
            Sender::H1(mut h1) => match h1
                .try_send_request(shape(request, false, &authority)?)
                .await
            {
                Ok(response) => Ok(answer(&transport.pool, peer.clone(), h1, response)),
                Err(e) => Err(e),
            },
        };
        match outcome {
            Ok(response) => return Ok(response),
            Err(mut e) => match (e.take_message(), again) {
                (Some(unsent), _) => {
                    // Never went out: a fresh connection below may still fail unsent.
                    sent.store(false, Ordering::Release);
                    request = unsent;
                }
                (None, Some(again)) => {
                    request = again
                        .try_into()
                        .map_err(|e: reqwest::Error| e.to_string())?;
                }
                (None, None) => {
                    return Err(format!(
                        "the kept connection broke: {}",
                        chain(&e.into_error())
                    ));
                }
            },
        }
    }
    let (sender, driver) = connect(&transport, &peer).await?;
    sent.store(true, Ordering::Release);
    let response = match sender {
        Sender::H2(mut h2) => {
            transport.pool.share(peer, h2.clone());
            h2.send_request(shape(request, true, &authority)?)
                .await
                .map(answer_shared)
        }
        Sender::H1(mut h1) => match h1.send_request(shape(request, false, &authority)?).await {
            Ok(response) => Ok(answer(&transport.pool, peer, h1, response)),
            Err(e) => Err(e),
        },
    };
    match response {
        Ok(response) => Ok(response),
        // Under TLS 1.3 the server judges the client's certificate after the client has
        // finished its half of the handshake: a refusal ends the connection with an alert,
        // which the connection's own error carries.
        Err(e) => {
            let cause = match tokio::time::timeout(Duration::from_secs(1), driver).await {
                Ok(Ok(Err(cause))) => format!(" ({})", chain(&cause)),
                _ => String::new(),
            };
            Err(format!("no answer: {}{cause}", chain(&e)))
        }
    }
}

/// `request` as the connection's protocol sends it: for HTTP/1.1 to an origin server, the path
/// in the request line and the authority in `Host`; for HTTP/2, the absolute URI (its
/// `:scheme` and `:authority`) and no `Host`.
fn shape(
    mut request: http::Request<reqwest::Body>,
    h2: bool,
    authority: &str,
) -> Result<http::Request<reqwest::Body>, String> {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri = if h2 {
        format!("https://{authority}{path}")
    } else {
        path
    };
    *request.uri_mut() = uri
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    if h2 {
        request.headers_mut().remove(http::header::HOST);
    } else {
        let host_header = http::HeaderValue::from_str(authority).map_err(|e| e.to_string())?;
        request
            .headers_mut()
            .insert(http::header::HOST, host_header);
    }
    Ok(request)
}

/// A fresh connection to `peer`: TCP, the handshake, then HTTP/2 when the server agreed to
/// `h2`, HTTP/1.1 otherwise. The driver's task ends with the connection; its error is the
/// reason a refused request gets no answer.
async fn connect(
    transport: &MtlsTransport,
    peer: &Peer,
) -> Result<(Sender, tokio::task::JoinHandle<hyper::Result<()>>), String> {
    let tls = &transport.tls;
    let timeout = transport.connect_timeout;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((peer.0.as_str(), peer.1))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        transport.pool.opened.fetch_add(1, Ordering::Relaxed);
        let stream = tokio_rustls::TlsConnector::from(tls.config())
            .connect(tls.server_name(), tcp)
            .await
            .map_err(|e| format!("the TLS handshake failed: {}", chain(&e)))?;
        if stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()) {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(PING_INTERVAL)
                .keep_alive_timeout(PING_TIMEOUT)
                .keep_alive_while_idle(true)
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .handshake::<_, reqwest::Body>(TokioIo::new(Diagnosed(stream)))
                .await
                .map_err(|e| format!("HTTP/2 over TLS failed: {}", chain(&e)))?;
            Ok((Sender::H2(sender), tokio::spawn(connection)))
        } else {
            let (sender, connection) =
                hyper::client::conn::http1::handshake::<_, reqwest::Body>(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("HTTP/1.1 over TLS failed: {}", chain(&e)))?;
            Ok((Sender::H1(sender), tokio::spawn(connection)))
        }
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| format!("no connection within {} ms", timeout.as_millis()))?
}

/// A client TLS stream whose failed writes report the server's alert when one is waiting.
/// Under TLS 1.3 the server judges the client's certificate after the client has finished its
/// half of the handshake; HTTP/2 writes its preface, settings and first request before it
/// reads, so a refused client's write can meet the socket the server closed, and the alert
/// that says why (`AccessDenied`, `CertificateRequired`, `UnknownCA`) would go unread.
#[derive(Debug)]
struct Diagnosed(tokio_rustls::client::TlsStream<tokio::net::TcpStream>);

impl Diagnosed {
    /// `error` from a write, or the server's alert if one is waiting to be read (the
    /// connection is over either way, so whatever else is read is dropped). Pending until the
    /// socket is seen readable: a socket the peer closed always becomes so, and the write
    /// fails the same way when it is polled again.
    fn explain(&mut self, cx: &mut Context<'_>, error: std::io::Error) -> Poll<std::io::Error> {
        if !matches!(
            error.kind(),
            std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
        ) {
            return Poll::Ready(error);
        }
        let mut scratch = [0u8; 4096];
        for _ in 0..4 {
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match tokio::io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                Poll::Ready(Err(alert))
                    if alert.get_ref().is_some_and(|e| {
                        e.downcast_ref::<tokio_rustls::rustls::Error>().is_some()
                    }) =>
                {
                    return Poll::Ready(alert);
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(_) => return Poll::Ready(error),
            }
        }
        Poll::Ready(error)
    }
}

impl tokio::io::AsyncRead for Diagnosed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Diagnosed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.0).poll_write(cx, buf) {
            Poll::Ready(Err(e)) => self.explain(cx, e).map(Err),
            other => other,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.0).poll_write_vectored(cx, bufs) {
            Poll::Ready(Err(e)) => self.explain(cx, e).map(Err),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.0).poll_flush(cx) {
            Poll::Ready(Err(e)) => self.explain(cx, e).map(Err),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The server's answer as `reqwest` hands it out (its body streams); the connection is kept
/// for the next call to `peer`.
fn answer(
    pool: &Pool,
    peer: Peer,
    sender: SendRequest<reqwest::Body>,
    response: http::Response<hyper::body::Incoming>,
) -> reqwest::Response {
    let (parts, inner) = response.into_parts();
    let done = Arc::new(AtomicBool::new(false));
    pool.keep(peer, sender, done.clone());
    let body = reqwest::Body::wrap(Tracked { inner, done });
    reqwest::Response::from(http::Response::from_parts(parts, body))
}

/// An answer over the shared HTTP/2 connection, which stays shared whatever the body does.
fn answer_shared(response: http::Response<hyper::body::Incoming>) -> reqwest::Response {
    let (parts, inner) = response.into_parts();
    reqwest::Response::from(http::Response::from_parts(
        parts,
        reqwest::Body::wrap(inner),
    ))
}

/// A role's way to the cloud controller: the API client (over mutual TLS when the block has
/// `tls`) and where its token comes from.
#[derive(Debug)]
pub struct ApiClient {
    base: hydrant_api::Client,
    token: Option<String>,
    token_file: Option<std::path::PathBuf>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_file: Option<std::path::PathBuf>,
    tokens: TokenCache,
    keys: Option<Arc<dyn hydrant_auth::KeyTransport>>,
}

impl ApiConsumer<'_> {
    /// The client this block describes: over mutual TLS to the controller's internal listener
    /// when `tls` is set, plain HTTP otherwise.
    ///
    /// # Errors
    /// [`Error::Config`] naming `tls` when its files cannot be used (the message names the
    /// file and what is wrong with it).
    pub fn connect(&self) -> Result<ApiClient, Error> {
        self.connect_in(None)
    }

    /// [`ApiConsumer::connect`], counting failovers between the block's controllers
    /// (`api_urls`) in `registry` (`controller.failovers`) when given.
    ///
    /// # Errors
    /// As [`ApiConsumer::connect`].
    pub fn connect_in(&self, registry: Option<&Registry>) -> Result<ApiClient, Error> {
        let mtls = match self.tls {
            Some(files) => Some(
                MtlsTransport::new(files)
                    .map_err(|e| invalid("tls", format!("cannot be used: {e}")))?,
            ),
            None => None,
        };
        let (base, keys) = if self.api_urls.len() > 1 {
            // Several controllers: every call and key fetch goes through one failover, so
            // both move to the controller that answers.
            let mut failover = Failover::new(self.api_urls, mtls);
            if let Some(registry) = registry {
                failover = failover.counted(registry);
            }
            let base =
                hydrant_api::Client::new(failover.bases().first().map_or("", String::as_str), None)
                    .with_transport(Arc::new(failover.clone()));
            let keys: Arc<dyn hydrant_auth::KeyTransport> = Arc::new(failover);
            (base, Some(keys))
        } else {
            let url = self.api_urls.first().map_or(self.api_url, String::as_str);
            let base = hydrant_api::Client::new(url.trim(), None);
            match mtls {
                Some(transport) => {
                    let keys: Arc<dyn hydrant_auth::KeyTransport> = Arc::new(transport.clone());
                    (base.with_transport(Arc::new(transport)), Some(keys))
                }
                None => (base, None),
            }
        };
        let mut client = self.with_base(base);
        client.keys = keys;
        Ok(client)
    }

    /// [`ApiConsumer::connect`] for a caller that cannot fail here: when the `tls` files cannot
    /// be used, every call fails saying why (never falling back to plaintext). Roles call
    /// `connect` first, at start, so a bad file stops them there.
    #[must_use]
    pub fn client(&self) -> ApiClient {
        self.client_in(None)
    }

    /// [`ApiConsumer::client`], counting failovers in `registry` when given.
    #[must_use]
    pub fn client_in(&self, registry: Option<&Registry>) -> ApiClient {
        self.connect_in(registry).unwrap_or_else(|e| {
            let unusable = Arc::new(Unusable(e.to_string()));
            let base = hydrant_api::Client::new(self.api_url.trim(), None)
                .with_transport(unusable.clone());
            let mut client = self.with_base(base);
            // Key fetches fail the same way: never plain HTTP for a role meant to use TLS.
            client.keys = Some(unusable);
            client
        })
    }

    fn with_base(&self, base: hydrant_api::Client) -> ApiClient {
        ApiClient {
            base,
            token: self.token.map(str::to_owned),
            token_file: self.token_file.map(std::path::Path::to_path_buf),
            client_id: self.client_id.map(str::to_owned),
            client_secret: self.client_secret.map(str::to_owned),
            client_secret_file: self.client_secret_file.map(std::path::Path::to_path_buf),
            tokens: TokenCache::new(),
            keys: None,
        }
    }
}

/// The transport of a client whose certificates could not be loaded: refuses every call.
#[derive(Debug)]
struct Unusable(String);

impl Transport for Unusable {
    fn send(&self, _request: reqwest::Request) -> TransportFuture {
        let why = self.0.clone();
        Box::pin(async move { Err(why) })
    }
}

impl hydrant_auth::KeyTransport for Unusable {
    fn send(&self, _request: reqwest::Request) -> hydrant_auth::KeyFetchFuture {
        let why = self.0.clone();
        Box::pin(async move { Err(why) })
    }
}

impl ApiClient {
    fn view(&self) -> ApiConsumer<'_> {
        ApiConsumer::new(
            self.base.base_url(),
            self.token.as_ref(),
            self.token_file.as_ref(),
        )
        .with_client(
            self.client_id.as_ref(),
            self.client_secret.as_ref(),
            self.client_secret_file.as_ref(),
        )
    }

    /// How this role fetches the controller's token keys (`hydrant_auth::KeySources::transport`):
    /// over its mutual-TLS connections when the block has `tls` (then the key URL must be the
    /// internal `https://` address, e.g. `api_url` + `/token_keys`), `None` (plain HTTP) without.
    /// With several controllers (`api_urls`), through the same failover as every call: a key
    /// URL under the first controller's address goes to whichever one answers.
    #[must_use]
    pub fn key_transport(&self) -> Option<Arc<dyn hydrant_auth::KeyTransport>> {
        self.keys.clone()
    }

    /// The client without a token (e.g. for the token endpoint).
    #[must_use]
    pub fn client(&self) -> &hydrant_api::Client {
        &self.base
    }

    /// The token now: the inline one, the file's contents read afresh, or a client-credential
    /// token renewed before it expires (fetched over the same transport as every call).
    ///
    /// # Errors
    /// Why there is none, naming the file or the client id; never a token or secret.
    pub async fn token(&self) -> Result<String, String> {
        let view = self.view();
        match (view.client_id, view.client_secret()) {
            (Some(id), Some(secret)) => self
                .tokens
                .client_token_via(&self.base, id, &secret?)
                .await
                .map_err(|e| format!("client credentials for {id}: {e}")),
            _ => view.token(),
        }
    }

    /// The client carrying the current token.
    ///
    /// # Errors
    /// As [`ApiClient::token`].
    pub async fn authorized(&self) -> Result<hydrant_api::Client, String> {
        Ok(self.base.with_token(self.token().await?))
    }

    /// Forgets a cached client-credential token (after the API refused it with 401), so the
    /// next call fetches a new one.
    pub fn forget_token(&self) {
        self.tokens.clear();
    }
}
