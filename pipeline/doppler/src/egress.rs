//! The v2 Egress service: `BatchedReceiver` (one `EnvelopeBatch` per message) and `Receiver`
//! (one `Envelope` per message), carrying encoded bytes.
//!
//! Where it sits: a subscriber (traffic controller, firehose edge, any stock v2 client) opens a
//! stream; this module registers a [`SubscriptionQueue`] with the router and turns the queue into
//! the response stream.
//!
//! A `BatchedReceiver` call with `hydrant-ring-from` metadata is a ring read instead: served
//! from the replay ring (see `replay`), with a position record before every batch; stock
//! clients never send it and get Loggregator's stream. A ring read with a `shard_id` gets only
//! its member's share (`hydrant-shard-member`, see `shard`).
//!
//! Invariants: a stream is registered with the router before its response headers go out, so
//! nothing that reaches the doppler after the client sees the response is missed; when the
//! subscriber lost envelopes, the next thing it receives is a gap marker saying how many; when the
//! stream ends for any reason (client gone, shutdown), its subscription is removed and whatever
//! was still queued for it is counted as dropped.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use hydrant_envelope::gap::{GAP_SOURCE, Gap};
use hydrant_envelope::raw::egress::egress_server::Egress;
use hydrant_envelope::v2;
use hydrant_envelope::wire::{batch_of, split_batch};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::queue::{FairCounters, QueueLimits, SubscriptionQueue, Taken};
use crate::replay::{ReplayRing, RingRequest, ring_stream, selects_everything};
use crate::router::Command;
use crate::selector::SubscriptionRequest;
use crate::shard::{SHARD_MEMBER, SHARD_WEIGHT, ShardGroups, Share};

/// A response stream of encoded messages.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send + 'static>>;

/// State shared by every egress stream.
#[derive(Debug)]
pub(crate) struct EgressService {
    commands: mpsc::Sender<Command>,
    next_id: AtomicU64,
    open: Arc<AtomicUsize>,
    max_subscriptions: usize,
    limits: QueueLimits,
    /// Fair drops in each subscriber's queue (`subscription_fair_share`).
    fair: bool,
    /// The replay ring ring reads are served from; `None` when turned off.
    replay: Option<Arc<ReplayRing>>,
    /// Who shares each `shard_id` among ring reads (see `shard`).
    shards: Arc<ShardGroups>,
    metrics: Metrics,
    shutdown: CancellationToken,
}

/// An admitted stream's slot under `max_subscriptions`; dropping it frees the slot.
#[derive(Debug)]
struct Slot {
    open: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let open = self.open.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        self.metrics.subscriptions.set(open as f64);
    }
}

/// One open stream's registration; dropping it unsubscribes.
#[derive(Debug)]
struct Subscription {
    id: u64,
    queue: Arc<SubscriptionQueue>,
    /// A slot reserved in the router's command queue at subscribe time, so unsubscribing from
    /// `Drop` can neither block nor fail for lack of room.
    unsubscribe: Option<mpsc::OwnedPermit<Command>>,
    open: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(permit) = self.unsubscribe.take() {
            permit.send(Command::Unsubscribe(self.id));
        }
        let open = self.open.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        self.metrics.subscriptions.set(open as f64);
        tracing::debug!(
            id = self.id,
            dropped = self.queue.dropped(),
            "egress stream closed"
        );
    }
}

impl EgressService {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        max_subscriptions: usize,
        limits: QueueLimits,
        fair: bool,
        replay: Option<Arc<ReplayRing>>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            commands,
            next_id: AtomicU64::new(1),
            open: Arc::new(AtomicUsize::new(0)),
            max_subscriptions,
            limits,
            fair,
            replay,
            shards: Arc::default(),
            metrics,
            shutdown,
        }
    }

    fn parse(
        &self,
        shard_id: String,
        legacy_selector: Option<v2::Selector>,
        selectors: Vec<v2::Selector>,
        deterministic_name: &str,
    ) -> Result<SubscriptionRequest, Status> {
        SubscriptionRequest::parse(shard_id, legacy_selector, selectors, deterministic_name)
            .map_err(|e| {
                self.metrics.rejected_invalid.inc();
                Status::invalid_argument(e.to_string())
            })
    }

    /// Takes one of the `max_subscriptions` stream slots.
    fn admit(&self) -> Result<(), Status> {
        let admitted = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_subscriptions).then_some(n + 1)
            });
        match admitted {
            Ok(before) => {
                self.metrics.subscriptions.set((before + 1) as f64);
                Ok(())
            }
            Err(_) => {
                self.metrics.rejected_max_subscriptions.inc();
                Err(Status::resource_exhausted(format!(
                    "unable to create stream: the doppler serves at most {} egress streams \
                     (max_subscriptions)",
                    self.max_subscriptions
                )))
            }
        }
    }

    /// A ring read (`hydrant-ring-from` metadata): batches from the replay ring, each after its
    /// position record. With a `shard_id`, only the reading member's share (see `shard`).
    fn ring_read(
        &self,
        ring: RingRequest,
        mut request: SubscriptionRequest,
        member: Option<u64>,
        weight: u32,
    ) -> Result<ByteStream, Status> {
        let Some(replay) = &self.replay else {
            return Err(Status::failed_precondition(
                "this doppler keeps no replay ring (replay_ring_bytes = 0); subscribe without \
                 hydrant-ring-from",
            ));
        };
        let shard = std::mem::take(&mut request.shard_id);
        if !shard.is_empty() && !selects_everything(&request) {
            self.metrics.rejected_invalid.inc();
            return Err(Status::invalid_argument(
                "a ring read with a shard_id must select every type from every source; filter \
                 after reading, or subscribe without hydrant-ring-from",
            ));
        }
        self.admit()?;
        let slot = Slot {
            open: self.open.clone(),
            metrics: self.metrics.clone(),
        };
        let egress = if shard.is_empty() {
            self.metrics.egress.clone()
        } else {
            // The share counts what it sends; the read itself sends everything to it.
            hydrant_emitter::Counter::default()
        };
        let read = ring_stream(
            replay.clone(),
            ring,
            request,
            self.metrics.dropped_slow_subscriber.clone(),
            egress,
            slot,
            self.shutdown.clone(),
        );
        if shard.is_empty() {
            return Ok(Box::pin(read));
        }
        // Without a member id the read is a member of its own while it lasts.
        let member = member.unwrap_or_else(|| fastrand::u64(1..));
        let share = Share::new(
            &self.shards,
            replay,
            &shard,
            member,
            weight,
            ring.to.is_none(),
            self.metrics.egress.clone(),
        );
        Ok(Box::pin(share.apply(read)))
    }

    fn subscribe(&self, request: SubscriptionRequest) -> Result<Subscription, Status> {
        self.admit()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut queue = SubscriptionQueue::new(
            self.limits,
            self.metrics.dropped_slow_subscriber.clone(),
            self.metrics.dropped_subscription_closed.clone(),
        );
        if self.fair {
            queue = queue.fair(FairCounters {
                refused: self.metrics.dropped_subscriber_fair_share.clone(),
                by_source: self.metrics.subscriber_dropped_by_source.clone(),
            });
        }
        let queue = Arc::new(queue);
        // Build the guard first so every early return below still releases the slot.
        let mut subscription = Subscription {
            id,
            queue: queue.clone(),
            unsubscribe: None,
            open: self.open.clone(),
            metrics: self.metrics.clone(),
        };
        if request.routes.is_empty() {
            // No usable selector: an open stream that receives nothing, as in Loggregator.
            return Ok(subscription);
        }
        let busy = || {
            self.metrics.rejected_busy.inc();
            Status::unavailable(
                "the doppler's router is not keeping up with subscription changes; retry",
            )
        };
        subscription.unsubscribe = Some(
            self.commands
                .clone()
                .try_reserve_owned()
                .map_err(|_| busy())?,
        );
        self.commands
            .try_send(Command::Subscribe { id, request, queue })
            .map_err(|_| busy())?;
        Ok(subscription)
    }
}

fn gap_envelope(dropped: u64) -> Bytes {
    Gap {
        source_id: GAP_SOURCE.to_owned(),
        dropped,
        hop: "doppler".to_owned(),
        reason: "slow_subscriber".to_owned(),
        by_source: Default::default(),
    }
    .encode()
}

/// One `EnvelopeBatch` message from a take: the gap marker first when there is one, then the
/// chunks. Encoded batches concatenate into a valid batch, so a single chunk goes out as is.
fn batch_message(taken: Taken) -> Bytes {
    if taken.gap == 0 && taken.chunks.len() == 1 {
        if let Some(chunk) = taken.chunks.into_iter().next() {
            return chunk.bytes;
        }
        return Bytes::new();
    }
    let gap = (taken.gap > 0).then(|| {
        let envelope = gap_envelope(taken.gap);
        batch_of([envelope.as_ref()])
    });
    let len = gap.as_ref().map_or(0, Bytes::len)
        + taken.chunks.iter().map(|c| c.bytes.len()).sum::<usize>();
    let mut out = BytesMut::with_capacity(len);
    if let Some(gap) = gap {
        out.extend_from_slice(&gap);
    }
    for chunk in &taken.chunks {
        out.extend_from_slice(&chunk.bytes);
    }
    out.freeze()
}

struct BatchedState {
    subscription: Subscription,
    shutdown: CancellationToken,
}

fn batched_stream(subscription: Subscription, shutdown: CancellationToken) -> ByteStream {
    let state = BatchedState {
        subscription,
        shutdown,
    };
    Box::pin(futures_util::stream::unfold(state, |state| async move {
        let taken = state.subscription.queue.next(&state.shutdown).await?;
        let metrics = &state.subscription.metrics;
        metrics.egress.add(taken.count as u64);
        if taken.gap > 0 {
            metrics.gap_markers.inc();
        }
        Some((Ok(batch_message(taken)), state))
    }))
}

/// `Receiver` state: envelopes of the last take not yet sent, one per message.
struct SingleState {
    subscription: Subscription,
    shutdown: CancellationToken,
    pending: VecDeque<Bytes>,
}

impl Drop for SingleState {
    fn drop(&mut self) {
        // Taken from the queue but never sent: count them like the queue counts what it held.
        let n = self.pending.len() as u64;
        self.subscription.metrics.dropped_subscription_closed.add(n);
    }
}

fn single_stream(subscription: Subscription, shutdown: CancellationToken) -> ByteStream {
    let state = SingleState {
        subscription,
        shutdown,
        pending: VecDeque::new(),
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            loop {
                if let Some(envelope) = state.pending.pop_front() {
                    state.subscription.metrics.egress.inc();
                    return Some((Ok(envelope), state));
                }
                let taken = state.subscription.queue.next(&state.shutdown).await?;
                for chunk in &taken.chunks {
                    state.pending.extend(split_batch(&chunk.bytes).flatten());
                }
                if taken.gap > 0 {
                    state.subscription.metrics.gap_markers.inc();
                    return Some((Ok(gap_envelope(taken.gap)), state));
                }
            }
        },
    ))
}

#[tonic::async_trait]
impl Egress for EgressService {
    type ReceiverStream = ByteStream;
    type BatchedReceiverStream = ByteStream;

    async fn receiver(
        &self,
        request: Request<v2::EgressRequest>,
    ) -> Result<Response<Self::ReceiverStream>, Status> {
        let r = request.into_inner();
        let parsed = self.parse(
            r.shard_id,
            r.legacy_selector,
            r.selectors,
            &r.deterministic_name,
        )?;
        let subscription = self.subscribe(parsed)?;
        Ok(Response::new(single_stream(
            subscription,
            self.shutdown.clone(),
        )))
    }

    async fn batched_receiver(
        &self,
        request: Request<v2::EgressBatchRequest>,
    ) -> Result<Response<Self::BatchedReceiverStream>, Status> {
        let ring = RingRequest::from_metadata(request.metadata())?;
        let member = match request.metadata().get(SHARD_MEMBER) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "{SHARD_MEMBER}: {v:?} is not a member id (a decimal u64)"
                        ))
                    })?,
            ),
        };
        let weight = match request.metadata().get(SHARD_WEIGHT) {
            None => 1,
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|w| (1..=crate::shard::MAX_WEIGHT).contains(w))
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "{SHARD_WEIGHT}: {v:?} is not a weight (1 to {})",
                        crate::shard::MAX_WEIGHT
                    ))
                })?,
        };
        let r = request.into_inner();
        let parsed = self.parse(
            r.shard_id,
            r.legacy_selector,
            r.selectors,
            &r.deterministic_name,
        )?;
        if let Some(ring) = ring {
            return Ok(Response::new(self.ring_read(ring, parsed, member, weight)?));
        }
        let subscription = self.subscribe(parsed)?;
        Ok(Response::new(batched_stream(
            subscription,
            self.shutdown.clone(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use hydrant_envelope::wire::{BatchIter, EnvelopeView, encode};

    use super::*;
    use crate::queue::Chunk;

    #[test]
    fn a_gap_message_starts_with_the_marker_then_the_data() {
        let data = encode(&v2::Envelope {
            source_id: "app".to_owned(),
            ..v2::Envelope::default()
        });
        let chunk = |n: usize| Chunk {
            bytes: batch_of(std::iter::repeat_n(data.as_ref(), n)),
            count: n,
            shares: Vec::new(),
        };
        let message = batch_message(Taken {
            gap: 7,
            chunks: vec![chunk(2), chunk(3)],
            count: 5,
        });
        let views: Vec<_> = BatchIter::new(&message)
            .map(|e| EnvelopeView::parse(e.unwrap()).unwrap())
            .collect();
        assert_eq!(views.len(), 6);
        let gap = Gap::from_view(&views[0]).unwrap();
        assert_eq!(
            (gap.dropped, gap.hop.as_str(), gap.reason.as_str()),
            (7, "doppler", "slow_subscriber")
        );
        assert!(views[1..].iter().all(|v| v.source_id == "app"));
    }
}
