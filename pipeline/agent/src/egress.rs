//! The agent's egress: one bounded queue ("lane") and one long-lived `BatchSender` stream per
//! doppler.
//!
//! Flow: router fills a lane's batch → [`Lane::enqueue`] → the lane task hands batches to the
//! doppler's gRPC stream, one at a time.
//!
//! Invariants:
//! - The ingress path never waits for a doppler: enqueueing is a short lock, and a full queue
//!   drops its OLDEST batch (`agent.dropped{reason="egress_queue_full"}`).
//! - A batch is counted once: `agent.egress{doppler}` when handed to the open stream, or a drop
//!   (`doppler_unavailable` when the stream broke or the doppler went away, `shutdown` when the
//!   drain deadline passed), split by source and owed as gap markers that the next lane with an
//!   open stream sends (see `lost`). What the transport held when a connection died is not
//!   known here; the doppler sees it as a gap in the per-source sequence numbers.
//! - A batch dropped from a full queue becomes a gap marker (`hydrant.gap`, hop `agent`, reason
//!   `egress_queue_full`) in front of the next batch the doppler gets, so the loss is in-band
//!   where it happened, as the doppler's own are (`agent.gap_markers` counts them).
//! - With `fair_share` on, every batch knows which sources it holds ([`Share`]s): they are
//!   given back to the lane's [`FairShare`] when the batch leaves and counted under their
//!   sources when it is evicted, so the router can refuse a source over its share of the lane.
//! - With mutual TLS, a doppler is only used if its certificate names `doppler`; a failed
//!   handshake is a failed connection like any other.
//! - A lane whose doppler's announcements lapsed is retired: nothing new is routed to it, its
//!   task delivers what it holds while its stream still answers (for up to [`DRAIN_TIMEOUT`])
//!   and counts the rest (`agent.dropped{reason="doppler_lapsed"}`).
//! - A broken stream marks the doppler down at once (the router moves its sources to their next
//!   doppler) and it is retried with capped exponential backoff until it answers again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hydrant_buffer::{
    Buffer, BufferConfig, Depth, DropReason, FairConfig, FairShare, Limits, Observer, Share, Weigh,
};
use hydrant_emitter::{Counter, Gauge, Registry};
use hydrant_envelope::gap::{GAP_SOURCE, Gap};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lost::{Markers, Reason};
use crate::router::Router;

/// First wait before reconnecting to a doppler that failed.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// After shutdown, how long a lane keeps delivering what is queued.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Reports a lane's evictions and depth under the agent's metric names.
#[derive(Debug)]
struct LaneReport {
    queue_full: Counter,
    depth: Gauge,
}

impl Observer for LaneReport {
    fn dropped(&self, reason: DropReason, _items: usize, events: u64) {
        // A lane only evicts; what `clear` throws away is counted by its caller.
        if reason == DropReason::Evicted {
            self.queue_full.add(events);
        }
    }
    fn depth(&self, depth: Depth) {
        self.depth.set(depth.events as f64);
    }
}

/// One encoded batch waiting for a doppler, and the sources it holds.
#[derive(Debug, Default)]
pub(crate) struct LaneBatch {
    pub(crate) bytes: Bytes,
    pub(crate) count: usize,
    /// One per run of the same source (empty with `fair_share` off).
    pub(crate) shares: Vec<Share>,
}

impl Weigh for LaneBatch {
    #[inline]
    fn events(&self) -> u64 {
        self.count as u64
    }
    #[inline]
    fn bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// One doppler's bounded queue of encoded batches and its counters.
#[derive(Debug)]
pub(crate) struct Lane {
    pub(crate) url: String,
    queue: Buffer<LaneBatch, LaneReport>,
    /// Who holds the queue; `None` with `fair_share` off.
    fair: Option<FairShare>,
    egress: Counter,
    gap_markers: Counter,
    /// Taken out of the router (its doppler's announcements lapsed).
    retired: AtomicBool,
}

impl Lane {
    pub(crate) fn new(
        url: &str,
        registry: &Registry,
        max_batches: usize,
        max_bytes: usize,
        queue_full: Counter,
        fair: Option<FairConfig>,
    ) -> Self {
        let depth = registry.gauge(
            "agent.queue_depth",
            "envelopes waiting for a doppler",
            "count",
            &[("queue", "egress"), ("doppler", url)],
        );
        let limits = Limits::UNBOUNDED.items(max_batches.max(1)).bytes(max_bytes);
        Self {
            url: url.to_owned(),
            queue: Buffer::with_observer(
                BufferConfig::drop_oldest(limits),
                LaneReport { queue_full, depth },
            ),
            fair: fair.map(FairShare::new),
            egress: registry.counter(
                "agent.egress",
                "envelopes handed to a doppler's stream",
                &[("doppler", url)],
            ),
            gap_markers: registry.counter(
                "agent.gap_markers",
                "gap markers sent to a doppler in front of data after the egress queue dropped",
                &[("doppler", url)],
            ),
            retired: AtomicBool::new(false),
        }
    }

    /// Marks the lane retired: what it cannot deliver is counted as `doppler_lapsed`.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// The lane's fairness ledger, when `fair_share` is on.
    pub(crate) fn fair(&self) -> Option<&FairShare> {
        self.fair.as_ref()
    }

    /// How full the queue is, in thousandths of its tightest bound.
    pub(crate) fn fill_permille(&self) -> u64 {
        self.queue.fill_permille()
    }

    /// Queues one batch, dropping the oldest batches past either bound (their sources are
    /// charged with the drop). The batch just queued is always kept: a lone batch may exceed
    /// `max_bytes` by one envelope.
    pub(crate) fn enqueue(&self, batch: LaneBatch) {
        let fair = self.fair.as_ref();
        self.queue.push_with(batch, |lost, _| {
            if let Some(fair) = fair {
                fair.evicted(&lost.shares);
            }
        });
    }

    /// Takes the oldest batch and what was dropped since the last take (owed as a gap marker).
    pub(crate) fn take(&self) -> Option<(LaneBatch, u64)> {
        let mut out = Vec::with_capacity(1);
        let drained = self.queue.drain_into(&mut out, Limits::UNBOUNDED.items(1));
        let Some(batch) = out.pop() else {
            if drained.gap > 0 {
                self.queue.restore_gap(drained.gap);
            }
            return None;
        };
        if let Some(fair) = &self.fair {
            fair.release(&batch.shares);
        }
        Some((batch, drained.gap))
    }

    /// Takes the oldest batch, dropping any gap owed (tests read batches one by one).
    #[cfg(test)]
    pub(crate) fn pop(&self) -> Option<(Bytes, usize)> {
        self.take().map(|(b, _)| (b.bytes, b.count))
    }

    /// Completes when a batch was queued since the last call.
    async fn ready(&self) {
        self.queue.readable().await;
    }

    /// Whether no batch waits in the queue (what the lane's task already took is not seen).
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.depth_events() == 0
    }

    /// Empties the queue, handing each batch to `lost` (which counts it); returns how many
    /// envelopes it held.
    pub(crate) fn clear(&self, mut lost: impl FnMut(&LaneBatch)) -> u64 {
        let fair = self.fair.as_ref();
        self.queue
            .discard(|b| {
                if let Some(fair) = fair {
                    fair.release(&b.shares);
                }
                lost(b);
            })
            .events
    }
}

/// The batch that tells a doppler `dropped` envelopes were lost in the agent's queue.
fn gap_batch(dropped: u64) -> Bytes {
    let marker = Gap {
        source_id: GAP_SOURCE.to_owned(),
        dropped,
        hop: "agent".to_owned(),
        reason: "egress_queue_full".to_owned(),
        by_source: Default::default(),
    }
    .encode();
    hydrant_envelope::wire::batch_of([marker.as_ref()])
}

/// Connection settings for every doppler.
pub(crate) fn endpoint(
    url: &str,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    // tonic's default HTTP/2 windows hold one stream to ~0.1 M envelopes/s. The keepalive pings
    // catch a doppler whose host vanished without closing the socket.
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())?
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(keepalive_interval)
        .keep_alive_timeout(keepalive_timeout)
        .keep_alive_while_idle(true))
}

/// Keeps doppler `index` (`lane`) fed until `drain` is cancelled (shutdown, or the lane was
/// retired), then delivers what is left (until [`DRAIN_TIMEOUT`]) and counts the rest.
pub(crate) async fn run_lane(
    router: Arc<Router>,
    index: usize,
    lane: Arc<Lane>,
    endpoint: tonic::transport::Endpoint,
    tls: Option<hydrant_tls::Connector>,
    max_backoff: Duration,
    drain: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut stream: Option<hydrant_emitter::BatchStream> = None;
    // A batch taken but not handed over when the drain began: delivered or counted first.
    let mut held: Option<(Bytes, usize)> = None;
    while !drain.is_cancelled() {
        let Some(open) = stream.as_mut() else {
            let attempt = tokio::select! {
                r = hydrant_emitter::BatchStream::open(&endpoint, tls.as_ref()) => Some(r),
                () = drain.cancelled() => None,
            };
            match attempt {
                Some(Ok(s)) => {
                    tracing::info!(doppler = %lane.url, "connected to doppler");
                    stream = Some(s);
                    backoff = BACKOFF_MIN;
                    router.set_lane_up(index, &lane, true);
                }
                Some(Err(error)) => {
                    tracing::debug!(doppler = %lane.url, %error, "cannot connect to doppler");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = drain.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
                None => {}
            }
            continue;
        };
        let alive = if let Some(markers) = router.metrics().losses.take_markers() {
            send_markers(&router, &lane, open, markers).await
        } else if let Some((batch, gap)) = lane.take() {
            let (batch, n) = (batch.bytes, batch.count);
            if gap > 0 && open.send(gap_batch(gap)).await {
                lane.gap_markers.inc();
            }
            tokio::select! {
                biased;
                () = drain.cancelled() => {
                    // Not handed over: the drain below delivers or counts it.
                    held = Some((batch, n));
                    true
                }
                sent = open.send(batch.clone()) => {
                    if sent {
                        lane.egress.add(n as u64);
                    } else {
                        lose(&router, Reason::DopplerUnavailable, &batch, n);
                    }
                    sent
                }
            }
        } else {
            tokio::select! {
                () = lane.ready() => true,
                () = router.metrics().losses.owed() => true,
                () = open.ended() => false,
                () = drain.cancelled() => true,
            }
        };
        if !alive {
            tracing::warn!(doppler = %lane.url, "lost the doppler; its sources move to the next");
            stream = None;
            router.set_lane_up(index, &lane, false);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = drain.cancelled() => {}
            }
            backoff = (backoff * 2).min(max_backoff);
        }
    }

    let deadline = Instant::now() + DRAIN_TIMEOUT;
    if let Some(mut open) = stream {
        let mut healthy = true;
        while let Some((batch, n)) = held
            .take()
            .or_else(|| lane.take().map(|(b, _)| (b.bytes, b.count)))
        {
            match tokio::time::timeout_at(deadline, open.send(batch.clone())).await {
                Ok(true) => lane.egress.add(n as u64),
                Ok(false) => {
                    lose(&router, Reason::DopplerUnavailable, &batch, n);
                    healthy = false;
                    break;
                }
                Err(_) => {
                    lose(&router, leftover(&lane), &batch, n);
                    break;
                }
            }
        }
        if healthy {
            open.finish(deadline).await;
        }
    }
    let reason = leftover(&lane);
    if let Some((batch, n)) = held {
        lose(&router, reason, &batch, n);
    }
    lane.clear(|b| lose(&router, reason, &b.bytes, b.count));
    router.set_lane_up(index, &lane, false);
}

/// Why what a stopping lane could not deliver was lost.
fn leftover(lane: &Lane) -> Reason {
    if lane.is_retired() {
        Reason::DopplerLapsed
    } else {
        Reason::Shutdown
    }
}

/// Counts the `n` envelopes of `batch` as lost for `reason`, by source, and owes their markers.
pub(crate) fn lose(router: &Router, reason: Reason, batch: &[u8], n: usize) {
    let metrics = router.metrics();
    metrics
        .losses
        .lost(reason, batch, n, &metrics.dropped_by_source);
}

/// Sends the owed gap markers on `open`; owes them again (and reports the stream dead) when
/// it has ended.
async fn send_markers(
    router: &Router,
    lane: &Lane,
    open: &mut hydrant_emitter::BatchStream,
    markers: Markers,
) -> bool {
    if open.send(markers.batch.clone()).await {
        lane.gap_markers.add(markers.count);
        true
    } else {
        router.metrics().losses.owe_again(markers);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(max_batches: usize, max_bytes: usize) -> (Lane, Registry) {
        let registry = Registry::new("agent", "t");
        let full = registry.counter("agent.dropped", "", &[("reason", "egress_queue_full")]);
        (
            Lane::new("http://d:1", &registry, max_batches, max_bytes, full, None),
            registry,
        )
    }

    fn batch(bytes: &'static [u8], count: usize) -> LaneBatch {
        LaneBatch {
            bytes: Bytes::from_static(bytes),
            count,
            shares: Vec::new(),
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_batches_and_counts_their_envelopes() {
        let (lane, registry) = lane(2, 1 << 20);
        lane.enqueue(batch(b"a", 3));
        lane.enqueue(batch(b"b", 4));
        lane.enqueue(batch(b"c", 5));
        assert_eq!(registry.counter_sum("agent.dropped", &[]), 3);
        let (first, gap) = lane.take().unwrap();
        assert_eq!(
            (first.bytes, gap),
            (Bytes::from_static(b"b"), 3),
            "the loss is owed in-band"
        );
        assert_eq!(lane.pop().map(|b| b.0), Some(Bytes::from_static(b"c")));
        assert!(lane.pop().is_none());
    }

    #[test]
    fn the_byte_bound_applies_but_keeps_the_newest_batch() {
        let (lane, registry) = lane(100, 4);
        lane.enqueue(batch(b"abc", 1));
        lane.enqueue(batch(b"defgh", 2));
        assert_eq!(registry.counter_sum("agent.dropped", &[]), 1);
        let mut seen = 0;
        assert_eq!(lane.clear(|b| seen += b.count), 2);
        assert_eq!(seen, 2, "every batch cleared is handed over to be counted");
        assert!(lane.pop().is_none());
    }
}
