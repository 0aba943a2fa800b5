//! The doppler's log cache: the task that fills the [`Store`] off the routing path, and
//! `logcache.v1.Egress` (`Read`, `Meta`) that serves it. `Read` answers with the encoded
//! `ReadResponse` built around the stored envelope bytes (`wire::read_response`), so a recent
//! read is never decoded here, like the live stream (a stock Log Cache client reads the same
//! bytes as its typed `ReadResponse`).
//!
//! Where it sits: router → bounded hand-off of whole batches (overflow counted
//! `doppler.dropped{reason="logcache_busy"}`) → [`run`] → `Store::ingest_run` per run of one
//! source's envelopes; clients (the firehose
//! edge's recent-logs API, `hydrant logs --recent`, stats) → [`LogCacheService`].
//!
//! Invariants: the store copies what it keeps, so no ingress buffer outlives routing; a read
//! answers within the gRPC message limit (a page that would not fit is cut short from its far
//! end, so paging by time still works); bad reads get `INVALID_ARGUMENT` with Log Cache's wording
//! and are counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hydrant_emitter::Counter;

use bytes::Bytes;
use hydrant_envelope::logcache_v1::{
    EnvelopeType, MetaInfo, MetaRequest, MetaResponse, ReadRequest,
};
use hydrant_envelope::raw::logcache::egress_server::Egress;
use hydrant_logcache::{Incoming, Kind, ReadQuery, Store, StoreStats};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tonic::{Request, Response, Status};

use crate::batch::ValidBatch;
use crate::metrics::{LogCacheMetrics, Metrics};

/// Room left in a `Read` response for the message framing around the envelopes.
const RESPONSE_SLACK: usize = 64 * 1024;

/// The router's side of the hand-off to the cache task: bounded by batches (the channel) and by
/// bytes of received messages kept alive, and never waits.
#[derive(Debug)]
pub(crate) struct Handoff {
    batches: mpsc::Sender<ValidBatch>,
    in_flight: Arc<AtomicUsize>,
    max_bytes: usize,
    busy: Counter,
}

impl Handoff {
    /// A hand-off of at most `max_batches` batches and `max_bytes` bytes, and the cache task's
    /// end of it.
    pub(crate) fn new(max_batches: usize, max_bytes: usize, busy: Counter) -> (Self, Intake) {
        let (tx, rx) = mpsc::channel(max_batches);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let intake = Intake {
            batches: rx,
            in_flight: in_flight.clone(),
        };
        let handoff = Self {
            batches: tx,
            in_flight,
            max_bytes,
            busy,
        };
        (handoff, intake)
    }

    /// Hands `batch` to the cache task, or counts its envelopes as `logcache_busy`.
    pub(crate) fn offer(&self, batch: ValidBatch) {
        let bytes = batch.buffer_len();
        if self.in_flight.load(Ordering::Relaxed) + bytes > self.max_bytes {
            self.busy.add(batch.len() as u64);
            return;
        }
        self.in_flight.fetch_add(bytes, Ordering::Relaxed);
        if let Err(TrySendError::Full(batch) | TrySendError::Closed(batch)) =
            self.batches.try_send(batch)
        {
            self.in_flight.fetch_sub(bytes, Ordering::Relaxed);
            self.busy.add(batch.len() as u64);
        }
    }
}

/// The cache task's end of the [`Handoff`].
#[derive(Debug)]
pub(crate) struct Intake {
    batches: mpsc::Receiver<ValidBatch>,
    in_flight: Arc<AtomicUsize>,
}

/// Ingests every batch handed over until the router drops its [`Handoff`].
pub(crate) async fn run(mut intake: Intake, store: Arc<Store>, metrics: LogCacheMetrics) {
    let mut mirrored = StoreStats::default();
    while let Some(batch) = intake.batches.recv().await {
        // Consecutive envelopes of one source (an emitter batches one app's lines) go in as one
        // run: one hash, lock and allocation for the run instead of one per envelope.
        let mut run: Vec<Incoming<'_>> = Vec::with_capacity(batch.len());
        let mut run_source: &[u8] = &[];
        for envelope in batch.iter() {
            if envelope.source_id != run_source {
                ingest_run(&store, run_source, &run);
                run.clear();
                run_source = envelope.source_id;
            }
            run.push(Incoming {
                timestamp: envelope.timestamp,
                kind: envelope.kind,
                bytes: envelope.bytes,
            });
        }
        ingest_run(&store, run_source, &run);
        intake
            .in_flight
            .fetch_sub(batch.buffer_len(), Ordering::Relaxed);
        let now = store.stats();
        metrics.mirror(&mirrored, &now);
        mirrored = now;
    }
}

fn ingest_run(store: &Store, source_id: &[u8], run: &[Incoming<'_>]) {
    // Validated at ingress, so the source id is UTF-8; skip rather than trust that.
    if let Ok(source_id) = std::str::from_utf8(source_id) {
        store.ingest_run(source_id, run);
    }
}

/// `logcache.v1.Egress` over the doppler's store.
#[derive(Debug)]
pub(crate) struct LogCacheService {
    store: Arc<Store>,
    metrics: Metrics,
}

impl LogCacheService {
    pub(crate) fn new(store: Arc<Store>, metrics: Metrics) -> Self {
        Self { store, metrics }
    }

    fn invalid(&self, message: String) -> Status {
        self.metrics.logcache.rejected_reads.inc();
        Status::invalid_argument(message)
    }

    fn query(&self, r: ReadRequest) -> Result<ReadQuery, Status> {
        if !r.name_filter.is_empty() {
            return Err(self.invalid(
                "name_filter is not supported by this log cache; filter by envelope_types"
                    .to_owned(),
            ));
        }
        let mut kinds = Vec::with_capacity(r.envelope_types.len().min(6));
        let mut any = false;
        for &t in &r.envelope_types {
            let kind = match EnvelopeType::try_from(t) {
                Ok(EnvelopeType::Any) => {
                    any = true;
                    continue;
                }
                Ok(EnvelopeType::Log) => Kind::Log,
                Ok(EnvelopeType::Counter) => Kind::Counter,
                Ok(EnvelopeType::Gauge) => Kind::Gauge,
                Ok(EnvelopeType::Timer) => Kind::Timer,
                Ok(EnvelopeType::Event) => Kind::Event,
                Err(_) => {
                    return Err(self.invalid(format!(
                        "envelope_types: unknown type {t}; use LOG, COUNTER, GAUGE, TIMER, EVENT or ANY"
                    )));
                }
            };
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if any {
            kinds.clear();
        }
        Ok(ReadQuery {
            source_id: r.source_id,
            start_time: r.start_time,
            end_time: r.end_time,
            envelope_types: kinds,
            limit: r.limit,
            descending: r.descending,
        })
    }
}

#[tonic::async_trait]
impl Egress for LogCacheService {
    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<Bytes>, Status> {
        let query = self.query(request.into_inner())?;
        let stored = self
            .store
            .read(&query)
            .map_err(|e| self.invalid(e.to_string()))?;
        let budget = hydrant_envelope::MAX_MESSAGE_BYTES - RESPONSE_SLACK;
        let mut used = 0;
        // Stored envelopes passed validation at ingress: they go out as they were stored.
        let page = stored.iter().take_while(|bytes| {
            used += bytes.len() + 6;
            used <= budget
        });
        let page: Vec<&[u8]> = page.map(AsRef::as_ref).collect();
        self.metrics.logcache.egress.add(page.len() as u64);
        Ok(Response::new(hydrant_envelope::wire::read_response(page)))
    }

    async fn meta(&self, _request: Request<MetaRequest>) -> Result<Response<MetaResponse>, Status> {
        // One doppler, one store: `local_only` changes nothing.
        let meta = self
            .store
            .meta()
            .into_iter()
            .map(|(source, m)| {
                let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                (
                    source,
                    MetaInfo {
                        count: to_i64(m.count),
                        expired: to_i64(m.expired),
                        oldest_timestamp: m.oldest_timestamp,
                        newest_timestamp: m.newest_timestamp,
                    },
                )
            })
            .collect();
        Ok(Response::new(MetaResponse { meta }))
    }
}

#[cfg(test)]
mod tests {
    use hydrant_envelope::v2;
    use hydrant_envelope::wire::{batch_of, encode};

    use super::*;

    fn batch(n: usize, payload: usize) -> ValidBatch {
        let one = encode(&v2::Envelope {
            source_id: "app".to_owned(),
            message: Some(v2::envelope::Message::Log(v2::Log {
                payload: vec![b'x'; payload].into(),
                r#type: 0,
            })),
            ..v2::Envelope::default()
        });
        ValidBatch::from_batch(batch_of(std::iter::repeat_n(one.as_ref(), n))).0
    }

    #[tokio::test]
    async fn handoff_is_bounded_by_batches_and_bytes_and_counts_overflow() {
        let busy = Counter::default();
        let (handoff, intake) = Handoff::new(2, 10_000, busy.clone());
        handoff.offer(batch(3, 10));
        handoff.offer(batch(3, 10));
        handoff.offer(batch(3, 10)); // the channel holds two batches
        assert_eq!(busy.get(), 3);
        let (over, _unused) = Handoff::new(100, 10_000, busy.clone());
        over.offer(batch(2, 6_000)); // over the byte bound
        assert_eq!(busy.get(), 5);

        // The cache task releases the bytes it ingested.
        let store = Arc::new(Store::new(hydrant_logcache::StoreConfig::default()));
        let in_flight = intake.in_flight.clone();
        drop(handoff);
        let registry = hydrant_emitter::Registry::new("doppler", "t");
        run(intake, store.clone(), Metrics::new(&registry).logcache).await;
        assert_eq!(in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(store.stats().envelopes, 6);
    }
}
