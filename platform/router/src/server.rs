//! The client side: accept connections, serve HTTP/1.1 on each with keep-alive and upgrades,
//! hand every request to `proxy`.
//!
//! Flow: listener → bounded accept (a semaphore of `max_client_connections`) → one task per
//! connection with `TCP_NODELAY` → hyper's HTTP/1 server → `proxy::handle` with the
//! connection's cached table snapshot.
//!
//! Invariant: the number of client connections served at once is bounded; past it, clients
//! wait in the kernel's accept queue instead of costing the router memory.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::{self, Shared};
use crate::table::Table;

/// How long open connections get to finish their requests after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Server {
    pub(crate) listener: TcpListener,
    pub(crate) shared: Arc<Shared>,
    pub(crate) table: Arc<Table>,
    pub(crate) max_connections: usize,
    pub(crate) header_read_timeout: Duration,
}

impl Server {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .keep_alive(true);
        let builder = Arc::new(builder);
        let limit = Arc::new(Semaphore::new(self.max_connections));
        let open = Arc::new(AtomicUsize::new(0));
        let tracker = TaskTracker::new();
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = Arc::clone(&limit).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let (stream, remote) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors or a connection reset while queued: transient.
                        tracing::warn!(%error, "router: accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let shared = Arc::clone(&self.shared);
            let reader = RefCell::new(self.table.reader());
            let builder = Arc::clone(&builder);
            let shutdown = shutdown.clone();
            let open = Arc::clone(&open);
            let gauge = self.shared.metrics.connections.clone();
            gauge.set((open.fetch_add(1, Ordering::Relaxed) + 1) as f64);
            tracker.spawn(async move {
                let service = service_fn(move |request| {
                    let snapshot = Arc::clone(reader.borrow_mut().current());
                    proxy::handle(Arc::clone(&shared), snapshot, remote, request)
                });
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    () = shutdown.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
                gauge.set(open.fetch_sub(1, Ordering::Relaxed).saturating_sub(1) as f64);
                drop(permit);
            });
        }
        tracker.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("router: connections still open after the drain timeout");
        }
    }
}
