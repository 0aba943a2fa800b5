//! Abuse limits for a public HTTP listener, in one place: the cloud controller's API, the
//! firehose edge and the router accept their connections through a [`Gate`].
//!
//! Flow: `accept` → [`Gate::admit`] (the listener's connection cap and the per-address cap;
//! past either the connection gets a bare `503` and is closed, counted) → the stream wrapped
//! in [`Guarded`] (idle timeout in both directions; holds the admission until the socket
//! closes) → hyper's HTTP/1 server with a header read timeout → the role's service.
//!
//! Invariants:
//! - A connection counts against its listener's caps from accept until its socket closes,
//!   WebSocket and other upgraded connections included: the admission lives inside the I/O
//!   object hyper hands to the upgrade, not in the task that served the first request.
//! - A client cannot hold a connection without sending: a request head must arrive within
//!   `header_read_timeout_ms` (of connecting, or of the previous response), and a connection
//!   that moves no byte either way for `idle_timeout_secs` is closed.
//! - Every refusal and every forced close is counted on `/metrics` by listener and reason
//!   (`listener_connections_refused_total`, `listener_connections_closed_total`,
//!   `listener_requests_refused_total`); the open connections are a gauge
//!   (`listener_connections`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future as _;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hydrant_emitter::{Counter, Gauge, Registry};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{ConfigError, invalid};

/// How long open connections get to finish after shutdown before they are dropped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a refused connection reads before it is closed: a complete response, so an HTTP
/// client reports "503" rather than "connection reset".
const REFUSAL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Refused connections being answered at once, per listener; past it a refused connection is
/// just closed (the client sees a reset), so a flood of refusals costs nothing more.
const MAX_REFUSING: usize = 64;

/// How long a refused connection is given to read its `503` before it is closed. Closing a
/// socket with the client's request still unread resets it, which would discard the answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The abuse limits of one listener (`[limits]` in the cloud controller's and the firehose
/// edge's config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections the listener serves at once; past it a new connection is answered `503`
    /// and closed (`listener_connections_refused_total{reason="max_connections"}`).
    /// Default 1024.
    pub max_connections: usize,
    /// Connections one client address may hold at once, so one client cannot take every
    /// slot; past it the same (`reason="max_connections_per_address"`). 0 turns the
    /// per-address cap off (behind a proxy every client has the proxy's address); a value
    /// above `max_connections` has no effect. Default 256.
    pub max_connections_per_address: usize,
    /// A client must send a complete request head within this long of connecting or of the
    /// previous response, or the connection is closed
    /// (`listener_connections_closed_total{reason="header_timeout"}`). Default 10000 ms.
    pub header_read_timeout_ms: u64,
    /// A connection (WebSocket and streams included) that moves no byte either way for this
    /// long is closed (`reason="idle_timeout"`). Streams that should outlive it send
    /// heartbeats. Default 300 s.
    pub idle_timeout_secs: u64,
}

/// The limits of every role's admin listener (`/healthz`, `/metrics`, status routes), served
/// by the runtime: it listens on loopback or the internal network and its clients are
/// scrapers and operators, so the limits are fixed: 256 connections, 64 per address, a 10 s
/// header read timeout and a 120 s idle timeout (`listener="admin"` on the counters).
pub const ADMIN_LIMITS: Limits = Limits {
    max_connections: 256,
    max_connections_per_address: 64,
    header_read_timeout_ms: 10_000,
    idle_timeout_secs: 120,
};

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_address: 256,
            header_read_timeout_ms: 10_000,
            idle_timeout_secs: 300,
        }
    }
}

impl Limits {
    /// Checks every field; `section` is where the block sits in the role's config (`limits`).
    ///
    /// # Errors
    /// The first field that cannot work, named as `section.field`.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{section}.{name}");
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            return Err(invalid(
                field("max_connections"),
                "must be 1 to 1000000, e.g. 1024",
            ));
        }
        if self.max_connections_per_address > 1_000_000 {
            return Err(invalid(
                field("max_connections_per_address"),
                "must be at most 1000000 (0: no per-address cap), e.g. 256",
            ));
        }
        if !(100..=600_000).contains(&self.header_read_timeout_ms) {
            return Err(invalid(
                field("header_read_timeout_ms"),
                "must be 100 to 600000, e.g. 10000",
            ));
        }
        if !(1..=86_400).contains(&self.idle_timeout_secs) {
            return Err(invalid(
                field("idle_timeout_secs"),
                "must be 1 to 86400, e.g. 300",
            ));
        }
        Ok(())
    }

    /// [`Limits::header_read_timeout_ms`] as a duration.
    #[must_use]
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// [`Limits::idle_timeout_secs`] as a duration.
    #[must_use]
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

/// What one listener counts.
#[derive(Debug, Clone)]
struct ListenerMetrics {
    refused_total: Counter,
    refused_per_address: Counter,
    header_timeout: Counter,
    idle_timeout: Counter,
    body_too_large: Counter,
    open: Gauge,
}

impl ListenerMetrics {
    fn new(listener: &str, registry: &Registry) -> Self {
        let refused = |reason: &str| {
            registry.counter(
                "listener.connections_refused",
                "Connections closed at accept because a connection cap was reached, by reason",
                &[("listener", listener), ("reason", reason)],
            )
        };
        let closed = |reason: &str| {
            registry.counter(
                "listener.connections_closed",
                "Connections the server closed because the client was too slow, by reason",
                &[("listener", listener), ("reason", reason)],
            )
        };
        Self {
            refused_total: refused("max_connections"),
            refused_per_address: refused("max_connections_per_address"),
            header_timeout: closed("header_timeout"),
            idle_timeout: closed("idle_timeout"),
            body_too_large: registry.counter(
                "listener.requests_refused",
                "Requests answered 413 because the body is over the endpoint's limit",
                &[("listener", listener), ("reason", "body_too_large")],
            ),
            open: registry.gauge(
                "listener.connections",
                "Client connections open on the listener",
                "count",
                &[("listener", listener)],
            ),
        }
    }
}

/// The admission control of one listener: its connection caps, timeouts and counters.
/// Cheap to clone; clones share the caps.
#[derive(Debug, Clone)]
pub struct Gate(Arc<GateInner>);

#[derive(Debug)]
struct GateInner {
    limits: Limits,
    slots: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    by_address: Mutex<HashMap<IpAddr, usize>>,
    metrics: ListenerMetrics,
}

impl GateInner {
    fn set_open(&self) {
        let open = self.limits.max_connections - self.slots.available_permits();
        self.metrics.open.set(open as f64);
    }
}

/// One admitted connection's place under its listener's caps; dropping it frees the place.
#[derive(Debug)]
pub struct Admission {
    gate: Arc<GateInner>,
    address: IpAddr,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        drop(self.permit.take());
        if self.gate.limits.max_connections_per_address > 0 {
            let mut by_address = self
                .gate
                .by_address
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = by_address.get_mut(&self.address) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    by_address.remove(&self.address);
                }
            }
        }
        self.gate.set_open();
    }
}

impl Gate {
    /// The gate of the listener called `listener` (the name its counters carry: `api`,
    /// `http`), counting into `registry`. The limits are taken as given; validate them first.
    #[must_use]
    pub fn new(listener: &str, limits: &Limits, registry: &Registry) -> Self {
        let max = limits.max_connections.max(1);
        Self(Arc::new(GateInner {
            limits: Limits {
                max_connections: max,
                ..limits.clone()
            },
            slots: Arc::new(Semaphore::new(max)),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            by_address: Mutex::default(),
            metrics: ListenerMetrics::new(listener, registry),
        }))
    }

    /// The limits this gate enforces.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.0.limits
    }

    /// Admits a connection from `address`, or refuses it (counted by reason) when the
    /// listener or that address is at its cap.
    #[must_use]
    pub fn admit(&self, address: IpAddr) -> Option<Admission> {
        let inner = &self.0;
        let Ok(permit) = Arc::clone(&inner.slots).try_acquire_owned() else {
            inner.metrics.refused_total.inc();
            return None;
        };
        let per_address = inner.limits.max_connections_per_address;
        if per_address > 0 {
            let mut by_address = inner
                .by_address
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = by_address.entry(address).or_insert(0);
            if *n >= per_address {
                inner.metrics.refused_per_address.inc();
                return None;
            }
            *n += 1;
        }
        let admission = Admission {
            gate: Arc::clone(inner),
            address,
            permit: Some(permit),
        };
        inner.set_open();
        Some(admission)
    }

    /// [`Gate::admit`] for a freshly accepted `stream`: the stream and its admission, or
    /// `None` when refused. A refused stream is answered `503` and closed by a short task of
    /// its own (at most [`MAX_REFUSING`] at once, for up to a second each; beyond that it is
    /// closed at once).
    #[must_use]
    pub fn admit_stream(
        &self,
        stream: tokio::net::TcpStream,
        peer: IpAddr,
    ) -> Option<(tokio::net::TcpStream, Admission)> {
        match self.admit(peer) {
            Some(admission) => Some((stream, admission)),
            None => {
                if let Ok(slot) = Arc::clone(&self.0.refusing).try_acquire_owned() {
                    tokio::spawn(refuse(stream, slot));
                }
                None
            }
        }
    }

    /// An HTTP/1 server builder with the gate's header read timeout and keep-alive on.
    #[must_use]
    pub fn http1(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.0.limits.header_read_timeout())
            .keep_alive(true);
        builder
    }

    /// Counts how a connection served by [`Gate::http1`]'s builder ended, if it was the
    /// header read timeout.
    pub fn finished(&self, result: &Result<(), hyper::Error>) {
        if let Err(e) = result
            && e.is_timeout()
        {
            self.0.metrics.header_timeout.inc();
        }
    }

    /// Counts the response to one request: a `413` is a body refused for its size.
    pub fn responded(&self, status: http::StatusCode) {
        if status == http::StatusCode::PAYLOAD_TOO_LARGE {
            self.0.metrics.body_too_large.inc();
        }
    }

    /// Serves `router` on `listener` until `shutdown`, every connection through this gate;
    /// then stops accepting, lets open requests finish (up to 10 s) and returns.
    ///
    /// # Errors
    /// None today: accept errors (out of descriptors, a connection reset while queued) are
    /// transient and logged; the `Result` keeps the shape of `axum::serve`.
    pub async fn serve(
        self,
        listener: TcpListener,
        router: axum::Router,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        {
            let builder = self.http1();
            let tracker = TaskTracker::new();
            loop {
                let (stream, peer) = tokio::select! {
                    () = shutdown.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    },
                };
                let Some((stream, admission)) = self.admit_stream(stream, peer.ip()) else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let io = TokioIo::new(Guarded::new(stream, admission));
                let gate = self.clone();
                let router = router.clone();
                let service =
                    service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                        let mut router = router.clone();
                        let gate = gate.clone();
                        // What axum's `ConnectInfo` extractor reads: handlers that limit per client
                        // address (the controller's login brake) see the peer the gate admitted.
                        request
                            .extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        async move {
                            let response = tower_service::Service::call(&mut router, request).await;
                            let response = match response {
                                Ok(response) => response,
                                Err(never) => match never {},
                            };
                            gate.responded(response.status());
                            Ok::<_, Infallible>(response)
                        }
                    });
                let connection = builder.serve_connection(io, service).with_upgrades();
                let gate = self.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move {
                    tokio::pin!(connection);
                    let result = tokio::select! {
                        r = connection.as_mut() => r,
                        () = shutdown.cancelled() => {
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    };
                    gate.finished(&result);
                });
            }
            // Close the port at once: new clients are refused rather than queued behind a
            // server that is going away.
            drop(listener);
            tracker.close();
            if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!("connections still open after the drain timeout");
            }
            Ok(())
        }
    }
}

/// Answers a refused connection `503`, closes its sending side, and discards what the client
/// sends until it closes too (or [`REFUSAL_LINGER`] passes), so the answer is not lost to a
/// reset.
async fn refuse(mut stream: tokio::net::TcpStream, slot: OwnedSemaphorePermit) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let answer = async {
        stream.write_all(REFUSAL).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, answer).await;
    drop(slot);
}

/// A connection's I/O under its listener's limits: closes it (an error to whoever reads or
/// writes) once no byte has moved for the idle timeout, and holds its [`Admission`] until the
/// socket is dropped.
#[derive(Debug)]
pub struct Guarded<T> {
    io: T,
    idle: Duration,
    last: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    expired: bool,
    admission: Admission,
}

impl<T> Guarded<T> {
    /// Wraps `io`, admitted by `admission`'s gate, whose idle timeout it enforces.
    #[must_use]
    pub fn new(io: T, admission: Admission) -> Self {
        Self {
            io,
            idle: admission.gate.limits.idle_timeout(),
            last: Instant::now(),
            timer: None,
            expired: false,
            admission,
        }
    }

    /// Called when the inner I/O is not ready: ready with an error once the connection has
    /// been idle too long, otherwise pending with the idle timer armed.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.expired {
                return Poll::Ready(idle_error());
            }
            let deadline = self.last + self.idle;
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            ready!(timer.as_mut().poll(cx));
            if Instant::now() >= self.last + self.idle {
                self.expired = true;
                self.admission.gate.metrics.idle_timeout.inc();
            }
        }
    }
}

fn idle_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "connection idle for longer than idle_timeout_secs",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Err(idle_error()));
        }
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.last = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Err(idle_error()));
        }
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.last = Instant::now();
                Poll::Ready(result)
            }
            // A client that stops reading stalls the write: that is idleness too.
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Err(idle_error()));
        }
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.last = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::{Gate, Limits};
    use hydrant_emitter::Registry;

    fn refused(registry: &Registry, reason: &str) -> u64 {
        registry.counter_sum("listener.connections_refused", &[("reason", reason)])
    }

    #[test]
    fn caps_the_listener_and_each_address_and_frees_on_drop() {
        let registry = Registry::new("test", "0");
        let limits = Limits {
            max_connections: 3,
            max_connections_per_address: 2,
            ..Limits::default()
        };
        let gate = Gate::new("api", &limits, &registry);
        let a = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert!(gate.admit(a).is_none(), "a third from one address");
        assert_eq!(refused(&registry, "max_connections_per_address"), 1);
        let _third = gate.admit(b).unwrap();
        assert!(gate.admit(b).is_none(), "a fourth on the listener");
        assert_eq!(refused(&registry, "max_connections"), 1);
        drop(first);
        assert!(gate.admit(a).is_some(), "a freed place is reused");
    }

    #[test]
    fn validate_names_the_field() {
        let bad = Limits {
            max_connections_per_address: 5_000_000,
            ..Limits::default()
        };
        let e = bad.validate("limits").unwrap_err();
        assert_eq!(e.field, "limits.max_connections_per_address");
        assert!(Limits::default().validate("limits").is_ok());
        let zero = Limits {
            header_read_timeout_ms: 0,
            ..Limits::default()
        };
        assert_eq!(
            zero.validate("limits").unwrap_err().field,
            "limits.header_read_timeout_ms"
        );
    }
}
