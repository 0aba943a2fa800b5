//! OTLP/gRPC export: one sender per signal takes batches from its queue, encodes them once,
//! and calls `LogsService/Export` or `MetricsService/Export` until the receiver takes them.
//!
//! Flow: [`DestinationQueue`] of [`Item`]s → [`run_sender`] (linger for a fuller batch, encode,
//! split if too large, retry with backoff, circuit breaker) → [`Exporter::export`] (a unary
//! call carrying the pre-encoded request, so a retry never re-encodes).
//!
//! Invariants: every item taken from the queue ends counted exactly once, as `sent` or as
//! `dropped{reason}` (`rejected` for a non-retryable status or the receiver's
//! `partial_success`, `retries_exhausted`, `shutdown`, `malformed`); retries happen only for
//! the status codes OTLP calls retryable (plus RESOURCE_EXHAUSTED), never for
//! INVALID_ARGUMENT and the like; header values never reach a log line.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use hydrant_nozzle_core::{Backoff, CircuitBreaker, DestinationQueue, NozzleMetrics};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::encode::{Item, MetricsEncoder, logs_request};

/// The two OTLP signals this nozzle exports, each with its own queue and sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `LogsService/Export`.
    Logs,
    /// `MetricsService/Export`.
    Metrics,
}

impl Signal {
    /// The signal's name, as in the destination tag (`ENDPOINT#logs`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Logs => "logs",
            Self::Metrics => "metrics",
        }
    }

    const fn path(self) -> &'static str {
        match self {
            Self::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            Self::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }
}

/// What the receiver said about one export.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Accepted; `rejected` records or points of it were refused (`partial_success`).
    Accepted {
        /// How many the receiver refused.
        rejected: u64,
        /// The receiver's reason, when it gave one.
        message: String,
    },
    /// Failed in a way worth trying again (receiver down, overloaded, timed out).
    Retry(Status),
    /// Refused for good (malformed, unauthenticated, unimplemented): retrying cannot help.
    Refused(Status),
}

/// Whether a failed export may succeed if tried again: the codes the OTLP specification
/// lists as retryable, and RESOURCE_EXHAUSTED (a receiver shedding load).
#[must_use]
pub fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
            | Code::ResourceExhausted
    )
}

/// The `partial_success` of either response, as `(rejected, message)`.
trait PartialSuccess: Message + Default + Send + 'static {
    fn rejected(&self) -> (i64, String);
}

impl PartialSuccess for ExportLogsServiceResponse {
    fn rejected(&self) -> (i64, String) {
        self.partial_success
            .as_ref()
            .map_or((0, String::new()), |p| {
                (p.rejected_log_records, p.error_message.clone())
            })
    }
}

impl PartialSuccess for ExportMetricsServiceResponse {
    fn rejected(&self) -> (i64, String) {
        self.partial_success
            .as_ref()
            .map_or((0, String::new()), |p| {
                (p.rejected_data_points, p.error_message.clone())
            })
    }
}

/// A codec that writes an already-encoded request and decodes the prost response `R`.
#[derive(Debug)]
struct PreEncoded<R>(PhantomData<fn() -> R>);

#[derive(Debug)]
struct BytesEncoder;

#[derive(Debug)]
struct ProstDecoder<R>(PhantomData<fn() -> R>);

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl<R: Message + Default + Send + 'static> Decoder for ProstDecoder<R> {
    type Item = R;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<R>, Status> {
        let len = src.remaining();
        let message = R::decode(src.copy_to_bytes(len))
            .map_err(|e| Status::internal(format!("undecodable export response: {e}")))?;
        Ok(Some(message))
    }
}

impl<R: Message + Default + Send + 'static> Codec for PreEncoded<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = BytesEncoder;
    type Decoder = ProstDecoder<R>;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<R> {
        ProstDecoder(PhantomData)
    }
}

/// One signal's client: a lazily connected channel (it reconnects by itself after the
/// receiver comes back), the headers, and the per-call deadline.
#[derive(Debug, Clone)]
pub struct Exporter {
    channel: Channel,
    signal: Signal,
    headers: MetadataMap,
    timeout: Duration,
}

impl Exporter {
    /// An exporter for `signal` over `channel`.
    #[must_use]
    pub fn new(channel: Channel, signal: Signal, headers: MetadataMap, timeout: Duration) -> Self {
        Self {
            channel,
            signal,
            headers,
            timeout,
        }
    }

    /// Which signal this exporter sends.
    #[must_use]
    pub fn signal(&self) -> Signal {
        self.signal
    }

    /// Sends one encoded export request.
    pub async fn export(&self, request: Bytes) -> Outcome {
        let result = tokio::time::timeout(self.timeout, async {
            match self.signal {
                Signal::Logs => self.call::<ExportLogsServiceResponse>(request).await,
                Signal::Metrics => self.call::<ExportMetricsServiceResponse>(request).await,
            }
        })
        .await;
        match result {
            Ok(Ok((rejected, message))) => Outcome::Accepted {
                rejected: u64::try_from(rejected).unwrap_or(0),
                message,
            },
            Ok(Err(status)) if retryable(status.code()) => Outcome::Retry(status),
            Ok(Err(status)) => Outcome::Refused(status),
            Err(_) => Outcome::Retry(Status::deadline_exceeded("export deadline passed")),
        }
    }

    async fn call<R: PartialSuccess>(&self, request: Bytes) -> Result<(i64, String), Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("receiver not reachable: {e}")))?;
        let mut request = tonic::Request::new(request);
        *request.metadata_mut() = self.headers.clone();
        request.set_timeout(self.timeout);
        let path = http::uri::PathAndQuery::from_static(self.signal.path());
        let response = grpc
            .unary(request, path, PreEncoded::<R>(PhantomData))
            .await?;
        Ok(response.into_inner().rejected())
    }
}

/// Turns batches into encoded requests for one signal. Clones share the metrics state, so
/// every sender of a signal sees the same counter totals.
#[derive(Debug, Clone)]
pub enum RequestEncoder {
    /// Logs keep no state.
    Logs,
    /// Metrics keep the running totals of delta-only counters.
    Metrics(Arc<Mutex<MetricsEncoder>>),
}

impl RequestEncoder {
    /// A metrics encoder shared by a signal's senders.
    #[must_use]
    pub fn metrics(encoder: MetricsEncoder) -> Self {
        Self::Metrics(Arc::new(Mutex::new(encoder)))
    }

    /// Encodes `items`; returns the request and how many records or points it carries.
    pub fn encode(&mut self, items: &[Item]) -> (Bytes, usize) {
        match self {
            Self::Logs => {
                let observed = u64::try_from(hydrant_envelope::now_nanos()).unwrap_or(0);
                let (request, n) = logs_request(items, observed);
                (request.encode_to_vec().into(), n)
            }
            Self::Metrics(encoder) => {
                let (request, n) = encoder
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .request(items);
                (request.encode_to_vec().into(), n)
            }
        }
    }
}

/// How a sender batches.
#[derive(Debug, Clone)]
pub struct SenderOptions {
    /// Most items per export (the queue's `batch_items`).
    pub max_items: usize,
    /// How long a small batch waits for more.
    pub linger: Duration,
    /// Largest encoded request before the batch is split.
    pub max_request_bytes: usize,
}

/// How often a lingering sender looks whether a full batch is waiting.
const LINGER_POLL: Duration = Duration::from_millis(5);

/// Takes batches from `queue` and exports them until the queue is closed and empty (or
/// `stop` is cancelled while a batch is held back). `flush` cuts a linger short (shutdown).
#[allow(
    clippy::too_many_arguments,
    reason = "the sender's parts, each from its own config section"
)]
pub async fn run_sender(
    queue: Arc<DestinationQueue<Item>>,
    exporter: Exporter,
    mut encoder: RequestEncoder,
    options: SenderOptions,
    backoff: Backoff,
    mut breaker: CircuitBreaker,
    metrics: NozzleMetrics,
    flush: CancellationToken,
    stop: CancellationToken,
) {
    while let Some((mut batch, mut ticket)) = queue.next_tracked_batch().await {
        if batch.len() < options.max_items && !options.linger.is_zero() {
            let deadline = Instant::now() + options.linger;
            while Instant::now() < deadline
                && batch.len() + queue.depth().0 < options.max_items
                && !flush.is_cancelled()
            {
                let nap = LINGER_POLL.min(deadline.saturating_duration_since(Instant::now()));
                tokio::select! {
                    () = tokio::time::sleep(nap) => {}
                    () = flush.cancelled() => {}
                }
            }
            if let Some((more, more_ticket)) = queue.try_tracked_batch() {
                batch.extend(more);
                ticket.merge(more_ticket);
            }
        }
        for chunk in batch.chunks(options.max_items.max(1)) {
            for request in encode_fitting(&mut encoder, chunk, options.max_request_bytes) {
                send(&exporter, request, &backoff, &mut breaker, &metrics, &stop).await;
            }
        }
        // Past the drain deadline what this batch lost was thrown away, not refused by the
        // receiver: the stored cursor must stay before it, so the ticket is left undone.
        if !stop.is_cancelled() {
            ticket.done();
        }
    }
}

/// One encoded export request and what it stands for.
#[derive(Debug)]
struct Request {
    bytes: Bytes,
    /// Records or points in it.
    records: u64,
    /// Items of its part that did not encode (cannot happen for envelopes the firehose
    /// client validated; counted, not assumed).
    malformed: u64,
}

/// Encodes `items`, halving until every request is within `max_bytes` (a single item goes
/// alone whatever its size: the receiver decides), in stream order.
fn encode_fitting(encoder: &mut RequestEncoder, items: &[Item], max_bytes: usize) -> Vec<Request> {
    let mut out = Vec::new();
    let mut pending = vec![items];
    while let Some(part) = pending.pop() {
        if part.is_empty() {
            continue;
        }
        let (bytes, n) = encoder.encode(part);
        if bytes.len() > max_bytes && part.len() > 1 {
            let (first, second) = part.split_at(part.len() / 2);
            // Popped last-in first-out: push the second half first to keep stream order.
            pending.push(second);
            pending.push(first);
            continue;
        }
        out.push(Request {
            bytes,
            records: n as u64,
            malformed: part.len().saturating_sub(n) as u64,
        });
    }
    out
}

/// Exports one request, retrying as the outcome allows, and counts every record in it.
async fn send(
    exporter: &Exporter,
    request: Request,
    backoff: &Backoff,
    breaker: &mut CircuitBreaker,
    metrics: &NozzleMetrics,
    stop: &CancellationToken,
) {
    if request.malformed > 0 {
        tracing::warn!(
            lost = request.malformed,
            "items that did not encode as OTLP"
        );
        metrics.dropped("malformed", request.malformed);
    }
    let n = request.records;
    if n == 0 {
        return;
    }
    let mut attempt = 0u32;
    loop {
        if !breaker.ready(stop).await {
            metrics.dropped("shutdown", n);
            return;
        }
        match exporter.export(request.bytes.clone()).await {
            Outcome::Accepted { rejected, message } => {
                breaker.record_success();
                let rejected = rejected.min(n);
                if rejected > 0 {
                    tracing::warn!(
                        signal = exporter.signal().as_str(),
                        rejected,
                        reason = %message,
                        "the receiver refused part of an export"
                    );
                    metrics.dropped("rejected", rejected);
                }
                metrics.sent(n - rejected);
                return;
            }
            Outcome::Refused(status) => {
                // The receiver answered: it is up, so the breaker stays closed.
                breaker.record_success();
                tracing::warn!(
                    signal = exporter.signal().as_str(),
                    code = ?status.code(),
                    message = status.message(),
                    lost = n,
                    "the receiver refused an export; not retrying"
                );
                metrics.dropped("rejected", n);
                return;
            }
            Outcome::Retry(status) => {
                breaker.record_failure();
                if stop.is_cancelled() {
                    metrics.dropped("shutdown", n);
                    return;
                }
                if attempt >= backoff.max_retries {
                    tracing::warn!(
                        signal = exporter.signal().as_str(),
                        code = ?status.code(),
                        message = status.message(),
                        lost = n,
                        "dropping an export after its retries"
                    );
                    metrics.dropped("retries_exhausted", n);
                    return;
                }
                tracing::debug!(code = ?status.code(), attempt, "retrying an export");
                metrics.retry();
                tokio::select! {
                    () = tokio::time::sleep(backoff.delay(attempt)) => {}
                    () = stop.cancelled() => {}
                }
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::retryable;

    #[test]
    fn only_transient_codes_are_retried() {
        for code in [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
        ] {
            assert!(retryable(code), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Unimplemented,
            Code::Internal,
            Code::Unknown,
        ] {
            assert!(!retryable(code), "{code:?}");
        }
    }
}
