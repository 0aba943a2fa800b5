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
//!
//! Fair drops (`fair_share`, on by default): before a batch enters the ring, each envelope is
//! charged to its source; once the ring is half full, a source holding more than its share of
//! it is refused (`doppler.dropped{reason="fair_share"}`), so an agent forwarding one app's
//! flood cannot make the ring evict a quiet app's lines. Every second (on a timer, whether or
//! not batches arrive) the drops are handed to `doppler.dropped_by_source` and each source that
//! lost envelopes is told, at most once per 10 s, by a log line in its own stream
//! (`doppler.fair_notices`). That notice is charged to its source like its lines (never
//! refused), so if the ring evicts it, it is counted under the source too: per source,
//! `received + notices = taken + doppler.dropped_by_source`, exactly, a second after the last
//! drop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hydrant_buffer::{FairConfig, FairDrop, FairShare, KeyHasher};
use hydrant_envelope::raw::Empty;
use hydrant_envelope::raw::ingress::ingress_server::Ingress;
use hydrant_envelope::v2;
use hydrant_envelope::wire;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::batch::{Tally, ValidBatch};
use crate::metrics::Metrics;
use crate::ring::IngressRing;

/// How often the fairness ledger hands over its counts and notices.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The ring's fairness ledger, when it is next swept, and where a sweep hands its counts and
/// notices.
#[derive(Debug)]
struct Fair {
    ledger: Arc<FairShare>,
    keys: KeyHasher,
    next_sweep: Mutex<Instant>,
    ring: Arc<IngressRing>,
    metrics: Metrics,
}

/// Validates incoming messages and feeds the ring.
#[derive(Debug)]
pub(crate) struct IngressService {
    ring: Arc<IngressRing>,
    metrics: Metrics,
    shutdown: CancellationToken,
    fair: Option<Arc<Fair>>,
}

impl IngressService {
    /// `fair`: charge envelopes to their sources and refuse the ones over their share. With
    /// it on, a task on the current runtime sweeps the ledger every [`SWEEP_EVERY`] until
    /// `shutdown`.
    pub(crate) fn new(
        ring: Arc<IngressRing>,
        metrics: Metrics,
        shutdown: CancellationToken,
        fair: bool,
    ) -> Self {
        let fair = fair.then(|| {
            Arc::new(Fair {
                ledger: Arc::new(FairShare::new(FairConfig::default())),
                keys: KeyHasher::default(),
                next_sweep: Mutex::new(Instant::now() + SWEEP_EVERY),
                ring: ring.clone(),
                metrics: metrics.clone(),
            })
        });
        // Sweeps driven by arriving batches alone left the drops of the last second before
        // traffic stopped unpublished (issue 16: `doppler.dropped_by_source` short of
        // `doppler.dropped` for as long as nothing more arrived, and the source never told);
        // the timer publishes them within a second whether or not anything arrives.
        if let Some(fair) = &fair
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(fair.clone().sweep_until(shutdown.clone()));
        }
        Self {
            ring,
            metrics,
            shutdown,
            fair,
        }
    }

    fn accept(&self, (mut batch, tally): (ValidBatch, Tally)) {
        self.metrics.ingress.add(tally.received as u64);
        if tally.malformed > 0 {
            self.metrics.dropped_malformed.add(tally.malformed as u64);
            tracing::debug!(malformed = tally.malformed, "dropped malformed envelopes");
        }
        if let Some(fair) = &self.fair
            && !batch.is_empty()
        {
            let refused = batch.retain_fair(&fair.ledger, &fair.keys, || self.ring.fill_permille());
            self.metrics.dropped_fair_share.add(refused as u64);
            self.ring.push(batch);
            fair.maybe_sweep(Instant::now());
            return;
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

impl Fair {
    /// Sweeps when one is due, until `shutdown`.
    async fn sweep_until(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.maybe_sweep(Instant::now()),
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Hands the ledger's drops to `doppler.dropped_by_source` and the due notices to their
    /// sources, when a sweep is due (and no handler or timer is doing it).
    fn maybe_sweep(&self, now: Instant) {
        {
            let Ok(mut next) = self.next_sweep.try_lock() else {
                return;
            };
            if now < *next {
                return;
            }
            *next = now + SWEEP_EVERY;
        }
        self.sweep(now);
    }

    fn sweep(&self, now: Instant) {
        let mut notices: Vec<Bytes> = Vec::new();
        let by_source = &self.metrics.dropped_by_source;
        let interval = self.ledger.config().notice_interval;
        self.ledger.sweep(
            now,
            |d| by_source.add(d.source, d.dropped),
            |d| {
                // An envelope with no source_id has no stream to be told in.
                if let Some(source) = d.source.filter(|s| !s.is_empty()) {
                    notices.push(notice(source, d.dropped, d.why, interval));
                }
            },
        );
        if notices.is_empty() {
            return;
        }
        self.metrics.fair_notices.add(notices.len() as u64);
        // Never refused (a notice is small and is the one thing the source must get), but
        // charged, so that evicted from the ring it is counted under its source (issue 16).
        let (mut batch, _) =
            ValidBatch::from_batch(wire::batch_of(notices.iter().map(|n| n.as_ref())));
        batch.charge_fair(&self.ledger, &self.keys);
        self.ring.push(batch);
    }
}

/// The log line a source that lost `dropped` envelopes here gets in its own stream.
fn notice(source: &str, dropped: u64, why: FairDrop, interval: Duration) -> Bytes {
    let cause = match why {
        FairDrop::Refused => "this app exceeded its fair share of doppler ingress",
        FairDrop::Evicted => "the doppler's ingress ring was full",
    };
    let envelope = v2::Envelope {
        timestamp: hydrant_envelope::now_nanos(),
        source_id: source.to_owned(),
        tags: HashMap::from([("source_type".to_owned(), "LGR".to_owned())]),
        message: Some(v2::envelope::Message::Log(v2::Log {
            payload: format!(
                "hydrant: {dropped} envelopes dropped in the last {} s: {cause}",
                interval.as_secs().max(1)
            )
            .into_bytes()
            .into(),
            r#type: v2::log::Type::Err as i32,
        })),
        ..v2::Envelope::default()
    };
    wire::encode(&envelope)
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "test code")]
mod tests {
    use std::collections::VecDeque;

    use hydrant_emitter::Registry;
    use hydrant_envelope::wire::{EnvelopeView, batch_of, encode};

    use super::*;

    fn log(source: &str) -> Bytes {
        encode(&v2::Envelope {
            source_id: source.to_owned(),
            message: Some(v2::envelope::Message::Log(v2::Log {
                payload: Bytes::from_static(b"line"),
                r#type: 0,
            })),
            ..v2::Envelope::default()
        })
    }

    /// A fair ingress service in front of a ring of 1,000 envelopes that nothing takes from
    /// unless the test does.
    fn rig() -> (Registry, Arc<IngressRing>, IngressService) {
        let registry = Registry::new("doppler", "t");
        let metrics = Metrics::new(&registry);
        let ring = Arc::new(IngressRing::new(
            1000,
            usize::MAX,
            metrics.dropped_ring_full.clone(),
            metrics.ingress_ring_depth.clone(),
        ));
        let service = IngressService::new(ring.clone(), metrics, CancellationToken::new(), true);
        (registry, ring, service)
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_into_a_full_ring_loses_its_own_envelopes_and_is_told_the_quiet_app_none() {
        let (registry, ring, service) = rig();
        let (loud, quiet) = (log("loud"), log("quiet"));
        // Nobody takes from the ring: ten times its size of flood, a quiet line now and then.
        for i in 0..100 {
            let mut envelopes = vec![loud.as_ref(); 100];
            if i % 10 == 0 {
                envelopes[50] = quiet.as_ref();
            }
            service.accept(ValidBatch::from_batch(batch_of(envelopes)));
        }
        let mut out = VecDeque::new();
        ring.take_all(&mut out);
        let count = |name: &[u8]| -> usize {
            out.iter()
                .map(|b| b.iter().filter(|e| e.source_id == name).count())
                .sum()
        };
        assert_eq!(count(b"quiet"), 10, "every quiet line is in the ring");
        let refused = registry.counter_sum("doppler.dropped", &[("reason", "fair_share")]);
        let evicted = registry.counter_sum("doppler.dropped", &[("reason", "ingress_ring_full")]);
        assert!(refused > 0);
        assert_eq!(count(b"loud") as u64 + refused + evicted, 100 * 100 - 10);
        for batch in &mut out {
            batch.release_fair();
        }
        drop(out);

        tokio::time::advance(SWEEP_EVERY).await;
        service.accept(ValidBatch::from_batch(batch_of([quiet.as_ref()])));
        assert_eq!(
            registry.counter_sum("doppler.dropped_by_source", &[("source", "loud")]),
            refused + evicted
        );
        assert_eq!(
            registry.counter_sum("doppler.dropped_by_source", &[("source", "quiet")]),
            0
        );
        let mut out = VecDeque::new();
        ring.take_all(&mut out);
        let notices: Vec<String> = out
            .iter()
            .flat_map(|b| b.iter().map(|e| e.bytes.to_vec()).collect::<Vec<_>>())
            .filter_map(|bytes| {
                let view = EnvelopeView::parse(&bytes).ok()?;
                let (payload, _) = view.log()?;
                (view.source_id == "loud").then(|| String::from_utf8_lossy(payload).into_owned())
            })
            .collect();
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(
            notices[0].contains("exceeded its fair share of doppler ingress"),
            "{}",
            notices[0]
        );
        assert_eq!(registry.counter_sum("doppler.fair_notices", &[]), 1);
    }

    /// Issue 16: the ring's ledger balances exactly with handlers charging and pushing on
    /// several threads while the router takes everything: every envelope received is taken or
    /// counted under its source, and no charge is left behind.
    #[test]
    fn the_ring_ledger_balances_under_concurrent_handlers_and_a_taker() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        // No runtime: no sweep timer; the handlers sweep as batches arrive, and once at the end.
        let (registry, ring, service) = rig();
        let (loud, quiet) = (
            log("loud"),
            (0..5)
                .map(|i| log(&format!("quiet-{i}")))
                .collect::<Vec<_>>(),
        );
        let (stop, taken) = (AtomicBool::new(false), AtomicU64::new(0));
        let take = || {
            let mut out = VecDeque::new();
            ring.take_all(&mut out);
            let n: u64 = out.iter().map(|b| b.len() as u64).sum();
            taken.fetch_add(n, Ordering::Relaxed);
            n
        };
        let sent = std::thread::scope(|scope| {
            let handlers: Vec<_> = (0..3usize)
                .map(|t| {
                    let (service, loud, quiet) = (&service, &loud, &quiet);
                    scope.spawn(move || {
                        let mut sent = 0u64;
                        for i in 0..2_000usize {
                            let mut envelopes = vec![loud.as_ref(); 40 + (i * 7 + t) % 60];
                            if (i + t) % 3 == 0 {
                                envelopes.insert(i % envelopes.len(), quiet[(i + t) % 5].as_ref());
                            }
                            sent += envelopes.len() as u64;
                            service.accept(ValidBatch::from_batch(batch_of(envelopes)));
                        }
                        sent
                    })
                })
                .collect();
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if take() == 0 {
                        std::thread::yield_now();
                    }
                }
            });
            let sent: u64 = handlers.into_iter().map(|h| h.join().unwrap()).sum();
            stop.store(true, Ordering::Relaxed);
            sent
        });
        let fair = service.fair.as_ref().unwrap();
        loop {
            take();
            fair.sweep(Instant::now() + Duration::from_secs(3600));
            if take() == 0 && ring.fill_permille() == 0 {
                break;
            }
        }
        let stats = fair.ledger.stats();
        assert!(
            stats.balanced() && stats.queued == 0 && stats.active == 0,
            "{stats:?}"
        );
        let by_source = registry.counter_sum("doppler.dropped_by_source", &[]);
        let by_reason = registry.counter_sum("doppler.dropped", &[("reason", "fair_share")])
            + registry.counter_sum("doppler.dropped", &[("reason", "ingress_ring_full")]);
        assert_eq!(by_source, by_reason, "every drop under its source");
        let notices = registry.counter_sum("doppler.fair_notices", &[]);
        let taken = taken.load(Ordering::Relaxed);
        assert!(by_reason > 0, "the ring never filled: nothing shown");
        assert_eq!(
            sent + notices,
            taken + by_source,
            "sent {sent} + notices {notices} = taken {taken} + dropped {by_source}"
        );
    }

    /// Issue 16: the drops of the last moments before traffic stops are published (and the
    /// source told) by the timer; sweeps driven by arriving batches alone left them unpublished
    /// for as long as nothing more arrived.
    #[tokio::test(start_paused = true)]
    async fn drops_are_published_within_a_second_when_traffic_stops() {
        let (registry, _ring, service) = rig();
        let (loud, quiet) = (log("loud"), log("quiet"));
        for i in 0..30 {
            let mut envelopes = vec![loud.as_ref(); 100];
            if i % 10 == 0 {
                envelopes[50] = quiet.as_ref();
            }
            service.accept(ValidBatch::from_batch(batch_of(envelopes)));
        }
        let dropped = registry.counter_sum("doppler.dropped", &[("reason", "fair_share")])
            + registry.counter_sum("doppler.dropped", &[("reason", "ingress_ring_full")]);
        assert!(dropped > 0);
        // Nothing arrives from now on.
        let by_source = || registry.counter_sum("doppler.dropped_by_source", &[]);
        assert_eq!(by_source(), 0, "not swept yet");
        let start = Instant::now();
        while by_source() < dropped {
            assert!(start.elapsed() <= SWEEP_EVERY * 2, "never published");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            registry.counter_sum("doppler.dropped_by_source", &[("source", "loud")]),
            dropped
        );
        assert_eq!(
            registry.counter_sum("doppler.fair_notices", &[]),
            1,
            "and told"
        );
    }

    /// Issue 16: a notice the full ring evicts is one of its source's envelopes lost, counted
    /// under that source like the lines around it (it was pushed uncharged, so it reached
    /// `doppler.dropped{ingress_ring_full}` only, and the source's ledger stayed one short).
    #[tokio::test(start_paused = true)]
    async fn a_notice_evicted_from_the_full_ring_is_counted_under_its_source() {
        let (registry, ring, service) = rig();
        let fair = service.fair.as_ref().unwrap();
        let loud = log("loud");
        let mut sent = 0u64;
        for _ in 0..3 {
            // Twice what the ring holds: it evicts its oldest, the last round's notice first.
            for _ in 0..20 {
                service.accept(ValidBatch::from_batch(batch_of(vec![loud.as_ref(); 100])));
                sent += 100;
            }
            // Past the notice interval: the sweep puts a notice behind the flood.
            tokio::time::advance(fair.ledger.config().notice_interval).await;
            fair.sweep(Instant::now());
        }
        assert_eq!(registry.counter_sum("doppler.fair_notices", &[]), 3);
        let mut delivered = 0u64;
        for _ in 0..2 {
            let mut out = VecDeque::new();
            ring.take_all(&mut out);
            delivered += out.iter().map(|b| b.len() as u64).sum::<u64>();
            drop(out);
            tokio::time::advance(fair.ledger.config().notice_interval).await;
            fair.sweep(Instant::now());
        }
        let notices = registry.counter_sum("doppler.fair_notices", &[]);
        let by_source = registry.counter_sum("doppler.dropped_by_source", &[("source", "loud")]);
        let by_reason = registry.counter_sum("doppler.dropped", &[("reason", "ingress_ring_full")])
            + registry.counter_sum("doppler.dropped", &[("reason", "fair_share")]);
        assert_eq!(
            by_source, by_reason,
            "every drop is counted under its source"
        );
        assert_eq!(
            sent + notices,
            delivered + by_source,
            "the source's ledger balances: sent {sent} + notices {notices} = delivered \
             {delivered} + dropped {by_source}"
        );
        let stats = fair.ledger.stats();
        assert!(stats.balanced() && stats.queued == 0, "{stats:?}");
    }
}
