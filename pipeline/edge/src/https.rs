//! The public listener over TLS (`https://`, `wss://`): the same routes and the same
//! connection limits as plain HTTP, with a TLS handshake between admission and HTTP.
//!
//! Flow: accept → [`Gate::admit_stream`] (connection caps; a refused socket gets `503`) → the
//! handshake with [`hydrant_tls::PublicServer`], bounded by [`HANDSHAKE_TIMEOUT`] → HTTP/1.1
//! with upgrades under the gate's header read and idle timeouts ([`Guarded`]) → the router.
//!
//! The invariant: a connection holds its place under the listener's cap from accept until its
//! socket is dropped, handshake included, so idle TLS sockets cannot exceed `max_connections`;
//! a failed handshake costs one task for at most the handshake timeout and is logged. Tokens
//! are checked by the routes as on plain HTTP: TLS asks for no client certificate.

use std::convert::Infallible;
use std::io;
use std::time::Duration;

use hydrant_runtime::{Gate, Guarded};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may take to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` over TLS on `listener` until `shutdown`, every connection through `gate`.
pub(crate) async fn serve(
    gate: Gate,
    listener: TcpListener,
    router: axum::Router,
    tls: TlsAcceptor,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let builder = gate.http1();
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
        let Some((stream, admission)) = gate.admit_stream(stream, peer.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (gate, router, tls, builder, shutdown) = (
            gate.clone(),
            router.clone(),
            tls.clone(),
            builder.clone(),
            shutdown.clone(),
        );
        tracker.spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let io = TokioIo::new(Guarded::new(stream, admission));
            let responder = gate.clone();
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let mut router = router.clone();
                let gate = responder.clone();
                async move {
                    let response = match tower_service::Service::call(&mut router, request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    };
                    gate.responded(response.status());
                    Ok::<_, Infallible>(response)
                }
            });
            let connection = builder.serve_connection(io, service).with_upgrades();
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
    // New clients are refused at once rather than queued behind a server going away.
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
