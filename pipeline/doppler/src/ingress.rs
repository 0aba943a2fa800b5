//! The v2 Ingress service: `BatchSender` (what agents and stock clients use), `Sender` (one
//! envelope per message, legacy) and `Send` (one batch, unary), carrying encoded bytes.
//!
//! Where it sits: agents → this handler → validation → the ingress ring → the router.
//!
//! Invariants: every envelope is validated with `EnvelopeView::parse` before anything downstream
//! sees it, because agents are trusted less than you think; a malformed envelope is counted
//! (`doppler.dropped{reason="malformed"}`) and skipped while the rest of its batch, its stream and
//! every other stream carry on. A handler never awaits anything downstream: pushing into the ring
//! is a short lock, and overflow drops the ring's oldest data, counted.

use std::sync::Arc;

use bytes::Bytes;
use hydrant_envelope::raw::Empty;
use hydrant_envelope::raw::ingress::ingress_server::Ingress;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::batch::{Tally, ValidBatch};
use crate::metrics::Metrics;
use crate::ring::IngressRing;

/// Validates incoming messages and feeds the ring.
#[derive(Debug)]
pub(crate) struct IngressService {
    ring: Arc<IngressRing>,
    metrics: Metrics,
    shutdown: CancellationToken,
}

impl IngressService {
    pub(crate) fn new(
        ring: Arc<IngressRing>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            ring,
            metrics,
            shutdown,
        }
    }

    fn accept(&self, (batch, tally): (ValidBatch, Tally)) {
        self.metrics.ingress.add(tally.received as u64);
        if tally.malformed > 0 {
            self.metrics.dropped_malformed.add(tally.malformed as u64);
            tracing::debug!(malformed = tally.malformed, "dropped malformed envelopes");
        }
        self.ring.push(batch);
    }

    /// Drains a client stream until it ends or the doppler shuts down.
    async fn consume(
        &self,
        mut stream: Streaming<Bytes>,
        validate: fn(Bytes) -> (ValidBatch, Tally),
    ) -> Result<Response<Empty>, Status> {
        loop {
            let message = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Ok(Response::new(Empty)),
                message = stream.message() => message,
            };
            match message {
                Ok(Some(buf)) => self.accept(validate(buf)),
                Ok(None) => return Ok(Response::new(Empty)),
                Err(status) => {
                    if status.code() == Code::OutOfRange {
                        // Over the message size limit: tonic refuses it whole, so its envelope
                        // count is unknown; count the message.
                        self.metrics.ingress_too_large.inc();
                    }
                    tracing::debug!(%status, "ingress stream ended with an error");
                    return Err(status);
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Ingress for IngressService {
    async fn sender(&self, request: Request<Streaming<Bytes>>) -> Result<Response<Empty>, Status> {
        self.consume(request.into_inner(), ValidBatch::from_envelope)
            .await
    }

    async fn batch_sender(
        &self,
        request: Request<Streaming<Bytes>>,
    ) -> Result<Response<Empty>, Status> {
        self.consume(request.into_inner(), ValidBatch::from_batch)
            .await
    }

    async fn send(&self, request: Request<Bytes>) -> Result<Response<Empty>, Status> {
        self.accept(ValidBatch::from_batch(request.into_inner()));
        Ok(Response::new(Empty))
    }
}
