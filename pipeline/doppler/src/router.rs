//! The router: fans each validated batch out to the subscriptions whose selectors match, with
//! Loggregator's `shard_id` semantics.
//!
//! Where it sits: ingress ring → router task ([`run`]) → [`Router::route`] → one
//! [`SubscriptionQueue`] per subscriber → its egress stream. After routing, the batch goes on to
//! the log cache task.
//!
//! How it stays fast: routes are indexed by source id (plus one wildcard node for
//! `source_id == ""`), so an envelope costs one hash lookup and a check of the few routes of its
//! own source, not a scan of every subscription. Each subscriber's outgoing chunk is built with a
//! [`BatchBuilder`] across the whole incoming batch and handed to its queue under one lock per
//! batch. Envelopes are copied once, into those chunks; nothing is decoded.
//!
//! Invariants: the router task owns the routing table, so no lock guards it; subscription changes
//! arrive as [`Command`]s and are applied after taking batches from the ring and before routing
//! them, so a subscriber that was told "subscribed" sees every envelope that reached the ring
//! after that. Routing never waits on a subscriber.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use hydrant_buffer::Share;
use hydrant_envelope::wire::{BatchBuilder, Kind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batch::{Envelope, ValidBatch};
use crate::cache::Handoff;
use crate::metrics::Metrics;
use crate::queue::{Admit, Chunk, SubscriptionQueue};
use crate::replay::ReplayRing;
use crate::ring::IngressRing;
use crate::selector::{Filter, Route, SubscriptionRequest, crc64_ecma};

/// Protobuf overhead of one envelope inside a batch (field tag plus length varint), an upper bound.
const FRAMING: usize = 6;

/// A change to the routing table, sent by egress streams to the router task.
#[derive(Debug)]
pub enum Command {
    /// Start routing to `queue`.
    Subscribe {
        /// Unique per subscription.
        id: u64,
        /// Its routes and shard settings.
        request: SubscriptionRequest,
        /// Where its envelopes go.
        queue: Arc<SubscriptionQueue>,
    },
    /// Stop routing to subscription `id`.
    Unsubscribe(u64),
}

#[derive(Debug)]
struct Subscriber {
    queue: Arc<SubscriptionQueue>,
    routes: Vec<Route>,
    builder: BatchBuilder,
    /// What the envelopes in `builder` are charged to in a fair queue, one per run of a source.
    shares: Vec<Share>,
    chunks: Vec<Chunk>,
}

impl Subscriber {
    fn append(
        &mut self,
        slot: usize,
        envelope: &Envelope<'_>,
        touched: &mut Vec<usize>,
        limits: Limits,
    ) {
        let share = match self.queue.admit(envelope.source_id, envelope.bytes.len()) {
            Admit::Free => None,
            Admit::Charged(share) => Some(share),
            Admit::Refused => return,
        };
        let envelope = envelope.bytes;
        if self.builder.is_empty() {
            if self.chunks.is_empty() {
                touched.push(slot);
            }
        } else if self.builder.count() >= limits.envelopes
            || self.builder.len_bytes() + envelope.len() + FRAMING > limits.bytes
        {
            self.cut();
        }
        self.builder.push(envelope);
        if let Some(share) = share
            && !self.shares.last_mut().is_some_and(|last| last.merge(share))
        {
            self.shares.push(share);
        }
    }

    fn cut(&mut self) {
        let count = self.builder.count();
        self.chunks.push(Chunk {
            bytes: self.builder.take(),
            count,
            shares: std::mem::take(&mut self.shares),
        });
    }

    fn flush(&mut self) {
        if !self.builder.is_empty() {
            self.cut();
        }
        self.queue.push(&mut self.chunks);
    }
}

#[derive(Debug)]
struct Member {
    id: u64,
    slot: usize,
    deterministic: bool,
}

/// Subscriptions sharing a selector and a non-empty shard id, or one subscription alone.
#[derive(Debug)]
struct Group {
    filter: Filter,
    shard_id: Box<str>,
    /// Sorted by subscription id, so deterministic routing maps a hash to the same member on
    /// every doppler with the same group.
    members: Vec<Member>,
    next: usize,
    deterministic: bool,
}

/// The routes of one source id (or of every source, for the wildcard node).
#[derive(Debug, Default)]
struct Node {
    groups: Vec<Group>,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    envelopes: usize,
    bytes: usize,
}

/// Fields of one envelope that only some routes need, read at most once.
struct Lazy<'a, 'v> {
    envelope: Envelope<'a>,
    counter: Option<&'a [u8]>,
    gauge_read: bool,
    names: &'v mut Vec<&'a [u8]>,
}

impl<'a> Lazy<'a, '_> {
    fn counter_name(&mut self) -> &'a [u8] {
        if let Some(name) = self.counter {
            return name;
        }
        let name = self.envelope.counter_name();
        self.counter = Some(name);
        name
    }

    fn gauge_names(&mut self) -> &[&'a [u8]] {
        if !self.gauge_read {
            self.envelope.gauge_names(self.names);
            self.gauge_read = true;
        }
        self.names
    }

    /// Loggregator's deterministic hash: crc64 of a counter's name, the sum of crc64 over a
    /// gauge's names; other kinds have none and are spread at random.
    fn deterministic_hash(&mut self) -> Option<u64> {
        match self.envelope.kind {
            Kind::Counter => Some(crc64_ecma(self.counter_name())),
            Kind::Gauge => Some(
                self.gauge_names()
                    .iter()
                    .fold(0u64, |sum, n| sum.wrapping_add(crc64_ecma(n))),
            ),
            _ => None,
        }
    }

    fn matches(&mut self, filter: &Filter) -> bool {
        match (filter, self.envelope.kind) {
            (Filter::Log, Kind::Log)
            | (Filter::Timer, Kind::Timer)
            | (Filter::Event, Kind::Event) => true,
            (Filter::Counter(name), Kind::Counter) => {
                name.is_empty() || self.counter_name() == &name[..]
            }
            (Filter::Gauge(names), Kind::Gauge) => {
                if names.is_empty() {
                    return true;
                }
                let got = self.gauge_names();
                got.len() == names.len() && got.iter().zip(names).all(|(a, b)| *a == &b[..])
            }
            _ => false,
        }
    }
}

/// The routing table and the fan-out. Owned by one task; see the module docs.
#[derive(Debug)]
pub struct Router {
    limits: Limits,
    slots: Vec<Option<Subscriber>>,
    free: Vec<usize>,
    index: HashMap<u64, usize>,
    by_source: HashMap<Box<[u8]>, Node>,
    wildcard: Node,
    touched: Vec<usize>,
    rng: fastrand::Rng,
}

impl Router {
    /// An empty router cutting outgoing chunks at `batch_envelopes` envelopes or `batch_bytes`
    /// bytes.
    #[must_use]
    pub fn new(batch_envelopes: usize, batch_bytes: usize) -> Self {
        Self {
            limits: Limits {
                envelopes: batch_envelopes.max(1),
                bytes: batch_bytes,
            },
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            by_source: HashMap::new(),
            wildcard: Node::default(),
            touched: Vec::new(),
            rng: fastrand::Rng::new(),
        }
    }

    /// Subscriptions with at least one route.
    #[must_use]
    pub fn subscriptions(&self) -> usize {
        self.index.len()
    }

    /// Applies a subscription change.
    pub fn apply(&mut self, command: Command) {
        match command {
            Command::Subscribe { id, request, queue } => self.subscribe(id, request, queue),
            Command::Unsubscribe(id) => self.unsubscribe(id),
        }
    }

    /// Starts routing `request`'s envelopes to `queue`. A request without routes gets nothing.
    pub fn subscribe(
        &mut self,
        id: u64,
        request: SubscriptionRequest,
        queue: Arc<SubscriptionQueue>,
    ) {
        if request.routes.is_empty() || self.index.contains_key(&id) {
            return;
        }
        let subscriber = Subscriber {
            queue,
            routes: request.routes,
            builder: BatchBuilder::with_capacity(16 * 1024),
            shares: Vec::new(),
            chunks: Vec::new(),
        };
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        for route in &subscriber.routes {
            let node = if route.source_id.is_empty() {
                &mut self.wildcard
            } else {
                self.by_source.entry(route.source_id.clone()).or_default()
            };
            let member = Member {
                id,
                slot,
                deterministic: request.deterministic,
            };
            let existing = if request.shard_id.is_empty() {
                None
            } else {
                node.groups
                    .iter_mut()
                    .find(|g| *g.shard_id == *request.shard_id && g.filter == route.filter)
            };
            match existing {
                Some(group) => {
                    let at = group.members.partition_point(|m| m.id <= id);
                    group.members.insert(at, member);
                    group.deterministic |= request.deterministic;
                }
                None => node.groups.push(Group {
                    filter: route.filter.clone(),
                    shard_id: request.shard_id.as_str().into(),
                    members: vec![member],
                    next: 0,
                    deterministic: request.deterministic,
                }),
            }
        }
        if let Some(entry) = self.slots.get_mut(slot) {
            *entry = Some(subscriber);
        }
        self.index.insert(id, slot);
    }

    /// Stops routing to subscription `id` (a no-op when unknown).
    pub fn unsubscribe(&mut self, id: u64) {
        let Some(slot) = self.index.remove(&id) else {
            return;
        };
        let Some(subscriber) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.free.push(slot);
        for route in &subscriber.routes {
            let node = if route.source_id.is_empty() {
                Some(&mut self.wildcard)
            } else {
                self.by_source.get_mut(&route.source_id)
            };
            let Some(node) = node else {
                continue;
            };
            node.groups.retain_mut(|group| {
                group.members.retain(|m| m.id != id);
                group.deterministic = group.members.iter().any(|m| m.deterministic);
                !group.members.is_empty()
            });
            if node.groups.is_empty() && !route.source_id.is_empty() {
                self.by_source.remove(&route.source_id);
            }
        }
    }

    /// Routes every envelope of `batch` and hands each touched subscriber its chunks.
    pub fn route(&mut self, batch: &ValidBatch) {
        let Router {
            limits,
            slots,
            by_source,
            wildcard,
            touched,
            rng,
            ..
        } = self;
        let mut names = Vec::new();
        for envelope in batch.iter() {
            let mut lazy = Lazy {
                envelope,
                counter: None,
                gauge_read: false,
                names: &mut names,
            };
            if let Some(node) = by_source.get_mut(envelope.source_id) {
                deliver(node, &mut lazy, slots, touched, *limits, rng);
            }
            if !wildcard.groups.is_empty() {
                deliver(wildcard, &mut lazy, slots, touched, *limits, rng);
            }
        }
        for slot in touched.drain(..) {
            if let Some(Some(subscriber)) = slots.get_mut(slot) {
                subscriber.flush();
            }
        }
    }
}

fn deliver(
    node: &mut Node,
    lazy: &mut Lazy<'_, '_>,
    slots: &mut [Option<Subscriber>],
    touched: &mut Vec<usize>,
    limits: Limits,
    rng: &mut fastrand::Rng,
) {
    for group in &mut node.groups {
        if !lazy.matches(&group.filter) {
            continue;
        }
        let n = group.members.len();
        let pick = if n == 1 {
            0
        } else if group.deterministic {
            match lazy.deterministic_hash() {
                Some(hash) => (hash % n as u64) as usize,
                None => rng.usize(..n),
            }
        } else {
            // Round-robin rather than Loggregator's random pick: the same share per member
            // without the variance.
            let i = group.next % n;
            group.next = group.next.wrapping_add(1);
            i
        };
        let Some(member) = group.members.get(pick) else {
            continue;
        };
        if let Some(Some(subscriber)) = slots.get_mut(member.slot) {
            subscriber.append(member.slot, &lazy.envelope, touched, limits);
        }
    }
}

/// The router task: takes batches from the ring, applies subscription changes, routes, keeps
/// each batch in the replay ring (when on), then hands it to the log cache without waiting (a
/// full hand-off skips the cache, counted).
pub(crate) async fn run(
    mut router: Router,
    ring: Arc<IngressRing>,
    mut commands: mpsc::Receiver<Command>,
    cache: Handoff,
    replay: Option<Arc<ReplayRing>>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut batches = VecDeque::new();
    let mut commands_open = true;
    loop {
        ring.take_all(&mut batches);
        while let Ok(command) = commands.try_recv() {
            router.apply(command);
        }
        if batches.is_empty() {
            tokio::select! {
                () = ring.ready() => {}
                command = commands.recv(), if commands_open => match command {
                    Some(command) => router.apply(command),
                    None => commands_open = false,
                },
                () = shutdown.cancelled() => break,
            }
            continue;
        }
        for batch in batches.drain(..) {
            router.route(&batch);
            metrics.routed.add(batch.len() as u64);
            if let Some(replay) = &replay {
                replay.push(&batch);
            }
            cache.offer(batch);
        }
        // Let ingress handlers and streams on this worker run between rounds.
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap as Map;

    use bytes::Bytes;
    use hydrant_emitter::Counter;
    use hydrant_envelope::v2;
    use hydrant_envelope::wire::{BatchIter, EnvelopeView, batch_of, encode};

    use super::*;
    use crate::queue::QueueLimits;

    fn queue() -> Arc<SubscriptionQueue> {
        Arc::new(SubscriptionQueue::new(
            QueueLimits {
                max_envelopes: 100_000,
                max_bytes: usize::MAX,
                batch_envelopes: 100,
                batch_bytes: 1 << 20,
            },
            Counter::default(),
            Counter::default(),
        ))
    }

    fn request(shard: &str, selectors: Vec<v2::Selector>) -> SubscriptionRequest {
        SubscriptionRequest::parse(shard.to_owned(), None, selectors, "").unwrap()
    }

    /// Source `a`'s logs and every source's logs in one request: `a`'s are routed to it twice.
    fn a_and_every_source() -> SubscriptionRequest {
        use v2::selector::Message::Log;
        request(
            "",
            vec![
                sel("a", Log(v2::LogSelector {})),
                sel("", Log(v2::LogSelector {})),
            ],
        )
    }

    fn sel(source: &str, message: v2::selector::Message) -> v2::Selector {
        v2::Selector {
            source_id: source.to_owned(),
            message: Some(message),
        }
    }

    fn log(source: &str, n: usize) -> v2::Envelope {
        v2::Envelope {
            source_id: source.to_owned(),
            timestamp: n as i64,
            message: Some(v2::envelope::Message::Log(v2::Log {
                payload: Bytes::from(format!("line {n}")),
                r#type: 0,
            })),
            ..v2::Envelope::default()
        }
    }

    fn batch(envelopes: &[v2::Envelope]) -> ValidBatch {
        let encoded: Vec<Bytes> = envelopes.iter().map(encode).collect();
        ValidBatch::from_batch(batch_of(encoded.iter().map(|b| b.as_ref()))).0
    }

    /// Every envelope queued, as (source_id, timestamp), in order.
    fn drain(q: &SubscriptionQueue) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        while let Some(taken) = q.try_take() {
            for chunk in taken.chunks {
                for e in BatchIter::new(&chunk.bytes) {
                    let v = EnvelopeView::parse(e.unwrap()).unwrap();
                    out.push((v.source_id.to_owned(), v.timestamp));
                }
            }
        }
        out
    }

    /// What one slow wildcard subscriber got from a flood beside ten quiet sources.
    struct Outcome {
        quiet_sent: usize,
        quiet_got: usize,
        flood_sent: usize,
        flood_got: usize,
        /// Summed over every gap the subscriber was owed.
        gaps: u64,
        flood_counted: u64,
        refused: u64,
        evicted: u64,
        stats: Option<hydrant_buffer::FairStats>,
    }

    /// A nozzle on every log taking one 50-envelope message a round while each round brings
    /// 200 of the flood's envelopes and one of each quiet source's, through the real router.
    fn slow_subscriber_beside_a_flood(fair: bool) -> Outcome {
        use v2::selector::Message::Log;
        let registry = hydrant_emitter::Registry::new("doppler", "t");
        let evicted = registry.counter("doppler.dropped", "", &[("reason", "slow_subscriber")]);
        let mut q = SubscriptionQueue::new(
            QueueLimits {
                max_envelopes: 1000,
                max_bytes: usize::MAX,
                batch_envelopes: 50,
                batch_bytes: 1 << 20,
            },
            evicted.clone(),
            Counter::default(),
        );
        if fair {
            q = q.fair(crate::queue::FairCounters {
                refused: registry.counter(
                    "doppler.dropped",
                    "",
                    &[("reason", "subscriber_fair_share")],
                ),
                by_source: Arc::new(hydrant_emitter::SourceCounters::new(
                    &registry,
                    "doppler.subscriber_dropped_by_source",
                    "",
                    &[],
                    20,
                )),
            });
        }
        let q = Arc::new(q);
        let mut r = Router::new(50, 1 << 20);
        r.subscribe(
            1,
            request("", vec![sel("", Log(v2::LogSelector {}))]),
            q.clone(),
        );
        let quiet: Vec<String> = (0..10).map(|i| format!("quiet-{i}")).collect();
        let (mut quiet_sent, mut flood_sent, mut gaps) = (0, 0, 0);
        let mut got = Vec::new();
        let mut take = |q: &SubscriptionQueue, got: &mut Vec<String>| {
            let Some(taken) = q.try_take() else {
                return false;
            };
            gaps += taken.gap;
            for chunk in taken.chunks {
                assert!(chunk.shares.is_empty(), "a taken chunk holds no charge");
                for e in BatchIter::new(&chunk.bytes) {
                    got.push(
                        EnvelopeView::parse(e.unwrap())
                            .unwrap()
                            .source_id
                            .to_owned(),
                    );
                }
            }
            true
        };
        for round in 0..200 {
            let mut envelopes: Vec<v2::Envelope> =
                (0..200).map(|i| log("flood", round * 200 + i)).collect();
            envelopes.extend(quiet.iter().map(|s| log(s, round)));
            flood_sent += 200;
            quiet_sent += quiet.len();
            r.route(&batch(&envelopes));
            take(&q, &mut got);
        }
        while take(&q, &mut got) {}
        let stats = q.fair_stats();
        q.close();
        let flood_got = got.iter().filter(|s| *s == "flood").count();
        Outcome {
            quiet_sent,
            quiet_got: got.len() - flood_got,
            flood_sent,
            flood_got,
            gaps,
            flood_counted: registry.counter_sum(
                "doppler.subscriber_dropped_by_source",
                &[("source", "flood")],
            ),
            refused: registry
                .counter_sum("doppler.dropped", &[("reason", "subscriber_fair_share")]),
            evicted: evicted.get(),
            stats,
        }
    }

    #[test]
    fn a_slow_subscriber_loses_the_floods_envelopes_and_none_of_the_quiet_sources() {
        let o = slow_subscriber_beside_a_flood(true);
        assert_eq!(o.quiet_got, o.quiet_sent, "every quiet line arrives");
        let flood_lost = (o.flood_sent - o.flood_got) as u64;
        assert!(
            flood_lost > 20_000,
            "the subscriber was far behind: {flood_lost}"
        );
        assert_eq!(o.gaps, flood_lost, "the gaps count exactly what was lost");
        assert_eq!(
            o.flood_counted, flood_lost,
            "every loss counted under the flood"
        );
        assert_eq!((o.refused, o.evicted), (flood_lost, 0), "held to its share");
        let stats = o.stats.unwrap();
        assert!(stats.balanced() && stats.queued == 0, "{stats:?}");
    }

    #[test]
    fn without_fair_drops_the_same_subscriber_loses_quiet_lines_too() {
        // The scenario above is one that costs quiet sources lines when fairness is off.
        let o = slow_subscriber_beside_a_flood(false);
        assert!(
            o.quiet_got < o.quiet_sent,
            "{} of {}",
            o.quiet_got,
            o.quiet_sent
        );
        let lost = (o.quiet_sent - o.quiet_got + o.flood_sent - o.flood_got) as u64;
        assert_eq!((o.gaps, o.evicted), (lost, lost));
        assert_eq!(o.refused, 0);
    }

    #[test]
    fn source_and_wildcard_routes() {
        use v2::selector::Message::Log;
        let mut r = Router::new(100, 1 << 20);
        let (a, all) = (queue(), queue());
        r.subscribe(
            1,
            request("", vec![sel("a", Log(v2::LogSelector {}))]),
            a.clone(),
        );
        r.subscribe(
            2,
            request("", vec![sel("", Log(v2::LogSelector {}))]),
            all.clone(),
        );
        r.route(&batch(&[log("a", 1), log("b", 2), log("a", 3)]));
        assert_eq!(drain(&a), [("a".into(), 1), ("a".into(), 3)]);
        assert_eq!(drain(&all).len(), 3);
    }

    #[test]
    fn unsubscribe_removes_every_route() {
        use v2::selector::Message::Log;
        let mut r = Router::new(100, 1 << 20);
        let q = queue();
        r.subscribe(1, a_and_every_source(), q.clone());
        r.unsubscribe(1);
        assert!(r.by_source.is_empty() && r.wildcard.groups.is_empty());
        r.route(&batch(&[log("a", 1)]));
        assert!(drain(&q).is_empty());
        // The slot is reused by the next subscription.
        r.subscribe(2, request("", vec![sel("a", Log(v2::LogSelector {}))]), q);
        assert_eq!(r.slots.len(), 1);
    }

    #[test]
    fn shard_group_round_robins_and_duplicates_deliver_twice() {
        use v2::selector::Message::Log;
        let mut r = Router::new(100, 1 << 20);
        let (x, y, twice) = (queue(), queue(), queue());
        r.subscribe(
            1,
            request("g", vec![sel("a", Log(v2::LogSelector {}))]),
            x.clone(),
        );
        r.subscribe(
            2,
            request("g", vec![sel("a", Log(v2::LogSelector {}))]),
            y.clone(),
        );
        r.subscribe(3, a_and_every_source(), twice.clone());
        let envs: Vec<_> = (0..10).map(|i| log("a", i)).collect();
        r.route(&batch(&envs));
        assert_eq!(drain(&x).len(), 5);
        assert_eq!(drain(&y).len(), 5);
        assert_eq!(drain(&twice).len(), 20);
    }

    #[test]
    fn deterministic_names_pin_a_metric_to_one_member() {
        use v2::selector::Message::Counter as C;
        let mut r = Router::new(100, 1 << 20);
        let qs: Vec<_> = (0..3).map(|_| queue()).collect();
        for (i, q) in qs.iter().enumerate() {
            let req = SubscriptionRequest::parse(
                "g".to_owned(),
                None,
                vec![sel("", C(v2::CounterSelector::default()))],
                "name",
            )
            .unwrap();
            r.subscribe(i as u64, req, q.clone());
        }
        let counter = |name: &str, ts: i64| v2::Envelope {
            source_id: "s".to_owned(),
            timestamp: ts,
            message: Some(v2::envelope::Message::Counter(v2::Counter {
                name: name.to_owned(),
                delta: 1,
                total: 0,
            })),
            ..v2::Envelope::default()
        };
        let envs: Vec<_> = (0..30)
            .map(|i| counter(["requests", "errors", "bytes"][i % 3], i as i64))
            .collect();
        r.route(&batch(&envs));
        let mut seen: Map<i64, usize> = Map::new();
        for (member, q) in qs.iter().enumerate() {
            for (_, ts) in drain(q) {
                // Every copy of one name lands on one member.
                let name_index = ts % 3;
                let expected =
                    (crc64_ecma(["requests", "errors", "bytes"][name_index as usize].as_bytes())
                        % 3) as usize;
                assert_eq!(member, expected);
                *seen.entry(ts).or_default() += 1;
            }
        }
        assert_eq!(seen.len(), 30);
    }

    #[test]
    fn chunks_are_cut_at_the_batch_limits() {
        use v2::selector::Message::Log;
        let mut r = Router::new(10, 1 << 20);
        let q = queue();
        r.subscribe(
            1,
            request("", vec![sel("", Log(v2::LogSelector {}))]),
            q.clone(),
        );
        let envs: Vec<_> = (0..25).map(|i| log("a", i)).collect();
        r.route(&batch(&envs));
        let mut counts = Vec::new();
        while let Some(t) = q.try_take() {
            counts.extend(t.chunks.iter().map(|c| c.count));
        }
        assert_eq!(counts, [10, 10, 5]);
    }
}
