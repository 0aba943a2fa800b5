//! Adapters between mutual TLS and tonic 0.14, without tonic's own TLS features: the handshake
//! runs here with `tokio-rustls`, so the server's client-certificate verifier is Hydrant's.
//!
//! Flow, server: `TcpListener` → [`incoming`] (accept, handshake with [`ServerTls`], bounded)
//! → `Server::serve_with_incoming_shutdown`; handlers (or a [`Gate`]) read the peer's
//! [`PeerInfo`] from the request. Client: `Endpoint::connect_with_connector(`[`Connector`]`)`
//! dials TCP and runs the handshake with [`ClientTls`] on every (re)connection.
//!
//! The invariants: only connections that finished the handshake reach tonic, so a refused
//! client never gets an HTTP/2 frame; handshakes in flight are bounded in number and time, so
//! a flood of idle sockets cannot hold the server; a [`Gate`] refuses an identity the handshake
//! let in but a service does not accept with `PERMISSION_DENIED` before the handler runs.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;

use crate::Identity;
use crate::client::ClientTls;
use crate::server::{Observer, Reason, ServerTls, identity_of, refuse};

/// How long a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight per listener; past this, accepting waits.
const MAX_HANDSHAKES: usize = 256;
/// Finished connections waiting for tonic to take them.
const READY_QUEUE: usize = 64;
/// Bytes read from the socket at once. rustls asks for 4 KiB per read, which is four or more
/// syscalls per full TLS record; a buffer under it makes that one per 64 KiB.
const READ_BUFFER: usize = 64 * 1024;

/// A TCP connection whose reads go through a userspace buffer (writes pass straight through).
pub type BufferedTcp = tokio::io::BufReader<TcpStream>;

/// Who is on the other end of a connection: in every request's extensions (tonic's
/// `Connected`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// The identity its verified certificate names (`None` on a plaintext connection).
    pub identity: Option<Identity>,
}

/// The identity of the client that sent `request`, when it came over mutual TLS.
#[must_use]
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Option<Identity> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.identity)
}

/// A server-side connection that passed the handshake.
#[derive(Debug)]
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<BufferedTcp>,
    peer: PeerInfo,
}

impl TlsConn {
    /// Who is on the other end.
    #[must_use]
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The application protocol the handshake agreed on (ALPN: `h2`, `http/1.1`), if any.
    #[must_use]
    pub fn alpn(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        read_ready(&mut self.stream, cx, buf)
    }
}

/// Reads all the plaintext that is ready, up to what `buf` takes. `tokio-rustls` hands out one
/// TLS record (at most 16 KiB) per read, so HTTP/2 assembled each 256 KiB frame from 16 or more
/// reads, each a round through its decoder and a new reservation of its read buffer; a
/// plaintext socket hands over everything at once, and so does this.
fn read_ready<S: AsyncRead + Unpin>(
    stream: &mut S,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let start = buf.filled().len();
    std::task::ready!(Pin::new(&mut *stream).poll_read(cx, buf))?;
    if buf.filled().len() == start {
        // End of stream.
        return Poll::Ready(Ok(()));
    }
    while buf.remaining() > 0 {
        let before = buf.filled().len();
        match Pin::new(&mut *stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {}
            // Nothing more ready, the end, or an error: what was read goes now, and the next
            // read meets the end or the error again.
            _ => break,
        }
    }
    Poll::Ready(Ok(()))
}

/// A client-side connection that passed the handshake (what [`Connector`] yields).
#[derive(Debug)]
pub struct ClientConn {
    stream: tokio_rustls::client::TlsStream<BufferedTcp>,
}

impl AsyncRead for ClientConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        read_ready(&mut self.stream, cx, buf)
    }
}

/// Writes go straight to the TLS stream (vectored where it can): only reads need the
/// whole-read adapter, so both connection types share this delegation.
macro_rules! write_through {
    ($conn:ty) => {
        impl AsyncWrite for $conn {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.stream).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.stream.is_write_vectored()
            }

            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.stream).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.stream).poll_shutdown(cx)
            }
        }
    };
}

write_through!(ClientConn);
write_through!(TlsConn);

/// The stream of connections [`incoming`] hands to tonic.
pub type Incoming = ReceiverStream<Result<TlsConn, io::Error>>;

/// Accepts on `listener`, runs each handshake with `tls` (concurrently, bounded), and yields
/// the connections that passed, for `Server::serve_with_incoming_shutdown`. Accepting stops
/// when the server drops the stream.
#[must_use]
pub fn incoming(listener: TcpListener, tls: ServerTls) -> Incoming {
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    tokio::spawn(accept(listener, tls, tx));
    ReceiverStream::new(rx)
}

async fn accept(
    listener: TcpListener,
    tls: ServerTls,
    tx: mpsc::Sender<Result<TlsConn, io::Error>>,
) {
    let acceptor = TlsAcceptor::from(tls.config());
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tx.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of descriptors and the like: wait rather than spin; the listener stays.
                tracing::warn!(endpoint = tls.endpoint(), %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tls = tls.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tcp = tokio::io::BufReader::with_capacity(READ_BUFFER, tcp);
            let handshake = acceptor.accept(tcp).into_fallible();
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(stream)) => stream,
                Ok(Err((error, tcp))) => {
                    handshake_failed(&tls, remote, &error);
                    linger(tcp).await;
                    return;
                }
                Err(_) => {
                    refuse(
                        tls.observer(),
                        tls.endpoint(),
                        None,
                        Reason::HandshakeFailed,
                        &format_args!("{remote} did not finish its handshake in time"),
                    );
                    return;
                }
            };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(identity_of);
            let peer = PeerInfo {
                remote_addr: Some(remote),
                identity,
            };
            let _ = tx.send(Ok(TlsConn { stream, peer })).await;
        });
    }
}

/// How long a refused connection is read from before it is closed.
const LINGER: Duration = Duration::from_secs(1);

/// Closes a refused connection without a reset. Under TLS 1.3 a client sends its first
/// request (an HTTP/2 preface, say) before the server has judged its certificate; closing a
/// socket with that unread makes the kernel send RST, which can discard the alert already
/// sent before the client reads it, so the client learns only "broken pipe". Shutting down our
/// side and reading what the client sent (for at most [`LINGER`]) closes with FIN behind the
/// alert.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut tcp: S) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Counts a failed handshake; certificate refusals were already counted by the verifier.
fn handshake_failed(tls: &ServerTls, remote: SocketAddr, error: &io::Error) {
    let rustls_error = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(_)) => {}
        Some(e @ rustls::Error::NoCertificatesPresented) => refuse(
            tls.observer(),
            tls.endpoint(),
            None,
            Reason::NoCertificate,
            &format_args!("{remote}: {e}"),
        ),
        _ => refuse(
            tls.observer(),
            tls.endpoint(),
            None,
            Reason::HandshakeFailed,
            &format_args!("{remote}: {error}"),
        ),
    }
}

/// Dials TCP and runs the client handshake: for `Endpoint::connect_with_connector` and
/// `connect_with_connector_lazy`. The endpoint's URL gives the address (`http://` or
/// `https://`, either way the connection is TLS); the server must prove the identity of the
/// [`ClientTls`].
#[derive(Debug, Clone)]
pub struct Connector {
    tls: ClientTls,
}

impl Connector {
    /// A connector presenting and verifying as `tls` says.
    #[must_use]
    pub fn new(tls: ClientTls) -> Self {
        Self { tls }
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<ClientConn>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = TlsConnector::from(self.tls.config());
        let name = self.tls.server_name();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("{uri} has no host"))
                })?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tcp = tokio::io::BufReader::with_capacity(READ_BUFFER, tcp);
            let stream = connector.connect(name, tcp).await?;
            Ok(TokioIo::new(ClientConn { stream }))
        })
    }
}

/// Which identities may call one gRPC service on a port whose handshake lets in several (the
/// doppler's one port serves agents on ingress and traffic controllers on egress). A tonic
/// interceptor: `InterceptedService::new(service, gate)`.
#[derive(Debug, Clone)]
pub struct Gate {
    rule: Option<Rule>,
}

/// A closed gate's rule: who passes, and where refusals are counted.
#[derive(Debug, Clone)]
struct Rule {
    allowed: Arc<[Identity]>,
    endpoint: &'static str,
    observer: Arc<dyn Observer>,
}

impl Gate {
    /// Lets every request through: the plaintext mode, where nobody has an identity.
    #[must_use]
    pub fn open() -> Self {
        Self { rule: None }
    }

    /// Lets through requests from the `allowed` identities only; refusals are
    /// `PERMISSION_DENIED` (`UNAUTHENTICATED` without an identity), counted as `endpoint`.
    #[must_use]
    pub fn allow(
        endpoint: &'static str,
        allowed: &[Identity],
        observer: Arc<dyn Observer>,
    ) -> Self {
        Self {
            rule: Some(Rule {
                allowed: allowed.into(),
                endpoint,
                observer,
            }),
        }
    }
}

impl tonic::service::Interceptor for Gate {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(Rule {
            allowed,
            endpoint,
            observer,
        }) = &self.rule
        else {
            return Ok(request);
        };
        match peer_identity(&request) {
            Some(identity) if allowed.contains(&identity) => Ok(request),
            Some(identity) => {
                let names: Vec<&str> = allowed.iter().map(|i| i.name()).collect();
                let accepts = names.join(", ");
                refuse(
                    observer.as_ref(),
                    endpoint,
                    Some(identity.name()),
                    Reason::IdentityNotAllowed,
                    &format_args!("this service accepts {accepts}"),
                );
                Err(tonic::Status::permission_denied(format!(
                    "{identity} may not call {endpoint}; it accepts {accepts}"
                )))
            }
            None => {
                refuse(
                    observer.as_ref(),
                    endpoint,
                    None,
                    Reason::NoCertificate,
                    &"request without a verified client certificate",
                );
                Err(tonic::Status::unauthenticated(format!(
                    "{endpoint} requires a client certificate"
                )))
            }
        }
    }
}

/// Connects `endpoint`, over mutual TLS when a connector is given, in plaintext otherwise.
///
/// # Errors
/// The transport's, including a failed handshake.
pub async fn connect(
    endpoint: &tonic::transport::Endpoint,
    tls: Option<&Connector>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    match tls {
        Some(connector) => endpoint.connect_with_connector(connector.clone()).await,
        None => endpoint.connect().await,
    }
}

/// [`connect`], lazily: the channel connects (and reconnects) on first use.
#[must_use]
pub fn connect_lazy(
    endpoint: &tonic::transport::Endpoint,
    tls: Option<&Connector>,
) -> tonic::transport::Channel {
    match tls {
        Some(connector) => endpoint.connect_with_connector_lazy(connector.clone()),
        None => endpoint.connect_lazy(),
    }
}

/// The HTTP/2 client preface followed by an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Asks a gRPC server at `addr` whether it lets `tls` in: a handshake, the HTTP/2 preface, and
/// the server's first frame. Under TLS 1.3 a client finishes its half of the handshake before
/// the server has judged its certificate, so a refusal only shows on this first read.
///
/// # Errors
/// The server's answer when it refused: an `io::Error` wrapping the `rustls::Error` (e.g.
/// `AlertReceived(AccessDenied)`), or the connection's failure.
pub async fn probe(addr: &str, tls: &ClientTls) -> io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let tcp = TcpStream::connect(addr).await?;
    let mut stream = TlsConnector::from(tls.config())
        .connect(tls.server_name(), tcp)
        .await?;
    stream.write_all(H2_PREFACE).await?;
    stream.flush().await?;
    let mut first = [0u8; 9];
    let n = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read(&mut first))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer from the server"))??;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the server closed the connection",
        ));
    }
    Ok(())
}
