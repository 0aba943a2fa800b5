//! The agent's v2 Ingress service (`Sender`, `BatchSender`, `Send`) over encoded bytes.
//!
//! It speaks the same paths and messages as Loggregator's agent, so any stock v2 client can
//! send to it, but it receives each message as `Bytes` and hands it to the router without
//! decoding.
//!
//! Invariants: a handler never awaits anything but its own client's next message (the router
//! call is synchronous and bounded), so one slow or hostile stream cannot slow another; bad
//! envelopes are counted and skipped, never fatal to the stream that carried them. The sender
//! learns how many were refused from the status that ends its call.
//!
//! A streamed message over [`hydrant_envelope::MAX_MESSAGE_BYTES`] ends its stream (tonic cannot
//! resynchronise) and is counted as one `too_large` drop; a unary `Send` over the limit is refused
//! by tonic before the handler runs, so only its sender learns of it.

use std::sync::Arc;

use bytes::Bytes;
use hydrant_envelope::raw::Empty;
use hydrant_envelope::raw::ingress::ingress_server::Ingress;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::router::{Outcome, Router};

/// The tonic service; one per agent, shared by every connection.
#[derive(Debug)]
pub(crate) struct IngressService {
    router: Arc<Router>,
    shutdown: CancellationToken,
}

impl IngressService {
    pub(crate) fn new(router: Arc<Router>, shutdown: CancellationToken) -> Self {
        Self { router, shutdown }
    }

    /// Reads a client stream to its end (or shutdown). `batched`: each message is an
    /// `EnvelopeBatch`; otherwise one `Envelope`.
    async fn consume(
        &self,
        mut stream: Streaming<Bytes>,
        batched: bool,
    ) -> Result<Response<Empty>, Status> {
        let mut outcome = Outcome::default();
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                // Ending the call lets the server's graceful shutdown finish.
                () = self.shutdown.cancelled() => break,
            };
            match message {
                Ok(Some(message)) => outcome.absorb(if batched {
                    self.router.ingest_batch(&message)
                } else {
                    self.router.ingest_envelope(&message)
                }),
                Ok(None) => break,
                Err(status) => {
                    // tonic refuses a message over `max_decoding_message_size` with OutOfRange
                    // and the stream cannot continue: count it as one oversized envelope.
                    if status.code() == Code::OutOfRange {
                        let metrics = self.router.metrics();
                        metrics.ingress.inc();
                        metrics.too_large.inc();
                    }
                    return Err(status);
                }
            }
        }
        status(outcome)
    }
}

fn status(outcome: Outcome) -> Result<Response<Empty>, Status> {
    if outcome.rejected == 0 {
        return Ok(Response::new(Empty));
    }
    Err(Status::invalid_argument(format!(
        "{} envelope(s) rejected and counted; first: {}",
        outcome.rejected,
        outcome.first_error.unwrap_or_default()
    )))
}

#[tonic::async_trait]
impl Ingress for IngressService {
    async fn sender(&self, request: Request<Streaming<Bytes>>) -> Result<Response<Empty>, Status> {
        self.consume(request.into_inner(), false).await
    }

    async fn batch_sender(
        &self,
        request: Request<Streaming<Bytes>>,
    ) -> Result<Response<Empty>, Status> {
        self.consume(request.into_inner(), true).await
    }

    async fn send(&self, request: Request<Bytes>) -> Result<Response<Empty>, Status> {
        status(self.router.ingest_batch(request.get_ref()))
    }
}
