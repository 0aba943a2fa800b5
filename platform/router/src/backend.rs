//! Connections to app instances: per-instance, per-worker keep-alive pools and one attempt at
//! a request.
//!
//! Flow: the proxy picks an instance → [`Backends::send`] takes an idle connection from this
//! worker's list for the instance (or dials one with `TCP_NODELAY` and the connect timeout) →
//! the request goes out → the response head comes back with the connection, which returns to
//! the same list when the response body has been read to its end (see `body`).
//!
//! Invariants:
//! - An attempt reports [`Failure::NotSent`] (with the request handed back) only when no byte
//!   of the request reached the app: the dial failed, or hyper returned the request unsent
//!   from a connection that closed under it. Only that case may be retried elsewhere.
//! - Each worker has its own [`Backends`]: a connection's task is spawned on the worker that
//!   dialled it and only that worker reuses it, so a request and the connection carrying it
//!   never wake each other across threads.

use std::io;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::table::Endpoint;

/// The sending half of one backend connection.
pub(crate) type Sender = http1::SendRequest<Incoming>;

/// Why one attempt failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing reached the app; the request is handed back for another instance.
    NotSent {
        request: Box<Request<Incoming>>,
        reason: &'static str,
    },
    /// The request (or part of it) was written and then the exchange failed.
    Failed(hyper::Error),
    /// The app took longer than the request timeout to answer.
    Timeout,
}

/// One worker's dialing and pooling.
#[derive(Debug)]
pub(crate) struct Backends {
    /// Which of each endpoint's idle lists is this worker's.
    worker: usize,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_idle: usize,
    builder: http1::Builder,
}

impl Backends {
    pub(crate) fn new(
        worker: usize,
        connect_timeout: Duration,
        request_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        Self {
            worker,
            connect_timeout,
            request_timeout,
            max_idle,
            builder: http1::Builder::new(),
        }
    }

    /// Sends `request` to `endpoint` once and waits for the response head.
    pub(crate) async fn send(
        &self,
        endpoint: &Endpoint,
        mut request: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Sender), Failure> {
        // Pooled connections first. One the app closed while idle hands the request back
        // unsent; then the next one (or a fresh dial) gets it.
        while let Some(mut sender) = self.take_idle(endpoint) {
            if sender.ready().await.is_err() {
                continue;
            }
            match self.exchange(&mut sender, request).await {
                Ok(response) => return Ok((response, sender)),
                Err(Failure::NotSent { request: back, .. }) => request = *back,
                Err(failure) => return Err(failure),
            }
        }
        let mut sender = match self.dial(endpoint).await {
            Ok(sender) => sender,
            Err(reason) => {
                return Err(Failure::NotSent {
                    request: Box::new(request),
                    reason,
                });
            }
        };
        let response = self.exchange(&mut sender, request).await?;
        Ok((response, sender))
    }

    async fn exchange(
        &self,
        sender: &mut Sender,
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, Failure> {
        match tokio::time::timeout(self.request_timeout, sender.try_send_request(request)).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(mut error)) => match error.take_message() {
                Some(request) => Err(Failure::NotSent {
                    request: Box::new(request),
                    reason: "closed_before_write",
                }),
                None => Err(Failure::Failed(error.into_error())),
            },
        }
    }

    async fn dial(&self, endpoint: &Endpoint) -> Result<Sender, &'static str> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(endpoint.addr))
                .await
            {
                Err(_) => return Err("connect_timeout"),
                Ok(Err(error)) => return Err(connect_reason(&error)),
                Ok(Ok(stream)) => stream,
            };
        // Small requests and responses must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = self
            .builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| "handshake_failed")?;
        tokio::spawn(async move {
            // Errors here surface to the request that was using the connection.
            let _ = connection.with_upgrades().await;
        });
        Ok(sender)
    }

    /// Returns a connection whose response was read to the end, if the pool has room.
    pub(crate) fn check_in(&self, endpoint: &Endpoint, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let Some(idle) = endpoint.idle(self.worker) else {
            return;
        };
        let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(sender);
        }
    }

    fn take_idle(&self, endpoint: &Endpoint) -> Option<Sender> {
        let mut idle = endpoint
            .idle(self.worker)?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }
}

fn connect_reason(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection_refused",
        io::ErrorKind::ConnectionReset => "connection_reset",
        io::ErrorKind::TimedOut => "connect_timeout",
        _ => "connect_failed",
    }
}

/// A connection to hand back once its response is done.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) backends: Arc<Backends>,
    pub(crate) sender: Sender,
}
