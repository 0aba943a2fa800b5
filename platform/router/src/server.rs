//! The client side: accept connections, hand each to one worker thread for good, serve HTTP/1.1
//! on it with keep-alive and upgrades, pass every request to `proxy`.
//!
//! Flow: the listener (on the caller's runtime) → the runtime's [`Gate`] (the
//! `max_client_connections` and per-address caps) → the worker with the fewest open
//! connections, over a bounded queue → that worker's own current-thread runtime registers the
//! socket (`TCP_NODELAY`), wraps it in the gate's idle timeout and serves it with hyper's HTTP/1
//! server (header read timeout) → `proxy::route` with the connection's cached table snapshot,
//! then `proxy::handle` with the worker's own backend pools.
//!
//! Invariants:
//! - The number of client connections open at once is bounded, WebSocket tunnels included for
//!   their whole life; past a cap a new client gets `503` at once and is counted, so a client
//!   holding many slow connections cannot make the others wait.
//! - A connection stays on one worker from accept to close, and every backend connection its
//!   requests use was dialled by that worker: serving a request wakes no other thread.
//! - Shutdown closes the listener, then each worker lets its open connections finish (up to
//!   10 s) and ends its thread; [`Server::run`] returns after the last worker has stopped.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hydrant_emitter::Gauge;
use hydrant_runtime::{Admission, Gate, Guarded};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Error;
use crate::proxy::{self, Client, Shared};
use crate::table::Table;

/// How long open connections get to finish their requests after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted connections waiting for their worker to pick them up, per worker. The accept
/// semaphore bounds them too; this only keeps one slow worker from holding many.
const QUEUE: usize = 256;

/// The acceptor and its workers.
pub(crate) struct Server {
    pub(crate) listener: TcpListener,
    /// One per worker thread: its metrics handles, backend pools and settings.
    pub(crate) workers: Vec<Arc<Shared>>,
    pub(crate) table: Arc<Table>,
    /// The client listener's caps and timeouts.
    pub(crate) gate: Gate,
    pub(crate) connections: Gauge,
}

/// A connection on its way to a worker.
struct Accepted {
    stream: std::net::TcpStream,
    remote: SocketAddr,
    /// Its place under the caps; moves into the connection's I/O, so it is held until the
    /// socket closes (after an upgrade too).
    admission: Admission,
}

/// The acceptor's side of one worker.
struct Handle {
    queue: mpsc::Sender<Accepted>,
    /// Connections handed to this worker and not yet closed (queued ones included).
    open: Arc<AtomicUsize>,
    done: oneshot::Receiver<()>,
}

/// What the open-connection counters are shared with.
#[derive(Clone)]
struct Open {
    worker: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl Open {
    fn closed(&self) {
        self.worker.fetch_sub(1, Ordering::Relaxed);
        let total = self.total.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        self.gauge.set(total as f64);
    }
}

impl Server {
    /// Starts the workers, accepts until `shutdown`, then waits for the workers to drain.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let Self {
            listener,
            workers,
            table,
            gate,
            connections,
        } = self;
        let total = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::with_capacity(workers.len());
        let mut failed = None;
        for (index, shared) in workers.into_iter().enumerate() {
            let open = Open {
                worker: Arc::new(AtomicUsize::new(0)),
                total: Arc::clone(&total),
                gauge: connections.clone(),
            };
            let worker = Worker {
                shared,
                table: Arc::clone(&table),
                gate: gate.clone(),
                open,
            };
            match worker.spawn(index, shutdown.clone()).await {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    failed = Some(Error::Worker(error));
                    break;
                }
            }
        }
        if failed.is_none() {
            accept(&listener, &handles, &gate, &total, &connections, &shutdown).await;
        }
        // Close the port at once: new clients are refused (and go to another router) rather
        // than waiting in a backlog nobody accepts from while the open connections drain.
        drop(listener);
        // Closing the queues ends each worker's loop even if nobody cancelled `shutdown`
        // (a worker that failed to start must not leave the others running).
        let mut done = Vec::with_capacity(handles.len());
        for handle in handles {
            drop(handle.queue);
            done.push(handle.done);
        }
        for done in done {
            let _ = done.await;
        }
        failed.map_or(Ok(()), Err)
    }
}

async fn accept(
    listener: &TcpListener,
    workers: &[Handle],
    gate: &Gate,
    total: &AtomicUsize,
    gauge: &Gauge,
    shutdown: &CancellationToken,
) {
    loop {
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors or a connection reset while queued: transient.
                    tracing::warn!(%error, "router: accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Some((stream, admission)) = gate.admit_stream(stream, remote.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Leave this runtime's reactor; the worker registers the socket with its own.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "router: cannot hand a connection to a worker");
                continue;
            }
        };
        // The least loaded worker still running: connections are long-lived, so balance
        // their count. None left means the router is going down.
        let Some(worker) = workers
            .iter()
            .filter(|w| !w.queue.is_closed())
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            return;
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        gauge.set((total.fetch_add(1, Ordering::Relaxed) + 1) as f64);
        let accepted = Accepted {
            stream,
            remote,
            admission,
        };
        let sent = tokio::select! {
            () = shutdown.cancelled() => return,
            sent = worker.queue.send(accepted) => sent,
        };
        if sent.is_err() {
            // The worker has stopped, so the router is stopping: the connection just closes.
            worker.open.fetch_sub(1, Ordering::Relaxed);
            gauge.set(total.fetch_sub(1, Ordering::Relaxed).saturating_sub(1) as f64);
        }
    }
}

/// One worker thread: a current-thread runtime serving the connections handed to it.
struct Worker {
    shared: Arc<Shared>,
    table: Arc<Table>,
    gate: Gate,
    open: Open,
}

impl Worker {
    /// Starts the thread and waits until its runtime is up.
    async fn spawn(self, index: usize, shutdown: CancellationToken) -> io::Result<Handle> {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let (ready_tx, ready) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let open = Arc::clone(&self.open.worker);
        std::thread::Builder::new()
            .name(format!("router-worker-{index}"))
            .spawn(move || {
                // Built here, not by the caller: a runtime must not be dropped inside another
                // runtime's context, which is where a failed spawn would drop it.
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                runtime.block_on(self.serve(receiver, shutdown));
                drop(runtime);
                let _ = done_tx.send(());
            })?;
        ready
            .await
            .map_err(|_| io::Error::other("the worker thread ended while starting"))??;
        Ok(Handle { queue, open, done })
    }

    async fn serve(self, mut queue: mpsc::Receiver<Accepted>, shutdown: CancellationToken) {
        let builder = self.gate.http1();
        let tracker = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = queue.recv() => match accepted {
                    Some(accepted) => accepted,
                    None => break,
                },
            };
            let Accepted {
                stream,
                remote,
                admission,
            } = accepted;
            let stream = match TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%error, "router: worker cannot register a connection");
                    self.open.closed();
                    continue;
                }
            };
            let shared = Arc::clone(&self.shared);
            let reader = RefCell::new(self.table.reader());
            let client = Client::new(remote);
            let service = service_fn(move |request| {
                let routed = proxy::route(&shared, reader.borrow_mut().current(), &request);
                proxy::handle(Arc::clone(&shared), routed, client.clone(), request)
            });
            let connection = builder
                .serve_connection(TokioIo::new(Guarded::new(stream, admission)), service)
                .with_upgrades();
            let shutdown = shutdown.clone();
            let open = self.open.clone();
            let gate = self.gate.clone();
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
                open.closed();
            });
        }
        // Connections still queued for this worker are closed unserved.
        queue.close();
        while let Ok(accepted) = queue.try_recv() {
            drop(accepted);
            self.open.closed();
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
