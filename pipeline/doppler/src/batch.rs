//! A validated ingress batch: the encoded bytes as received, plus the routing fields of every
//! valid envelope in it, as offsets.
//!
//! Where it sits: the ingress handler builds one per received message and pushes it into the
//! ingress ring; the router reads the routing fields without walking the envelope again; the
//! cache task reads the same fields to ingest the log cache.
//!
//! Invariant: every envelope referenced here passed [`EnvelopeView::parse`], so a stock prost
//! decoder accepts it; malformed envelopes are counted by the caller and never referenced. One
//! `Vec` per batch, no allocation per envelope, no copy of envelope bytes.
//!
//! With fair drops on, [`ValidBatch::retain_fair`] charges each envelope to its source in the
//! ingress ring's `FairShare` and drops the references to those refused (the bytes stay; the
//! envelope is simply no longer part of the batch). The batch holds its charges until
//! [`ValidBatch::release_fair`] (the router took it); a batch dropped without that was evicted
//! from the ring, and its envelopes are counted against their sources.

use std::sync::Arc;

use bytes::Bytes;
use hydrant_buffer::{FairShare, KeyHasher, Share, SourceKey};
use hydrant_envelope::wire::{BatchIter, EnvelopeView, Fields, Kind, Value};

/// Where one valid envelope and its routing fields sit in the batch buffer.
#[derive(Debug, Clone, Copy)]
struct Slot {
    start: u32,
    len: u32,
    source_start: u32,
    source_len: u32,
    body_start: u32,
    body_len: u32,
    timestamp: i64,
    kind: Kind,
}

/// What validating a received message found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Envelopes seen (valid or not; a structurally broken tail counts as one).
    pub received: usize,
    /// Envelopes rejected.
    pub malformed: usize,
}

/// The valid envelopes of one received message.
#[derive(Debug, Default)]
pub struct ValidBatch {
    buf: Bytes,
    slots: Vec<Slot>,
    lease: Option<Lease>,
}

/// A copy shares the bytes but holds no fairness charge: only the original is in the ring.
impl Clone for ValidBatch {
    fn clone(&self) -> Self {
        Self {
            buf: self.buf.clone(),
            slots: self.slots.clone(),
            lease: None,
        }
    }
}

/// What a batch's envelopes are charged to in the ingress ring's fairness ledger. Dropped
/// without [`ValidBatch::release_fair`], the batch was evicted: its sources lose them.
#[derive(Debug)]
struct Lease {
    fair: Arc<FairShare>,
    shares: Vec<Share>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.fair.evicted(&self.shares);
    }
}

/// One valid envelope of a [`ValidBatch`], borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The whole encoded envelope.
    pub bytes: &'a [u8],
    /// `source_id` (valid UTF-8).
    pub source_id: &'a [u8],
    /// `timestamp`.
    pub timestamp: i64,
    /// Which message it carries.
    pub kind: Kind,
    body: &'a [u8],
}

fn offset(base: &[u8], part: &[u8]) -> u32 {
    if part.is_empty() {
        return 0;
    }
    // `part` was sliced out of `base` by the parser, so the subtraction is in range; guard anyway
    // so a mistake here shows up as an empty field, never as a panic.
    let at = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    u32::try_from(at).unwrap_or(0)
}

fn len32(part: &[u8]) -> u32 {
    u32::try_from(part.len()).unwrap_or(0)
}

impl ValidBatch {
    /// Validates an encoded `EnvelopeBatch`. Envelopes after a structural error in the batch
    /// itself cannot be found, so the broken tail counts as one malformed envelope.
    #[must_use]
    pub fn from_batch(buf: Bytes) -> (Self, Tally) {
        let mut slots = Vec::new();
        let mut tally = Tally::default();
        for item in BatchIter::new(&buf) {
            tally.received += 1;
            match item {
                Ok(envelope) => match EnvelopeView::parse(envelope) {
                    Ok(view) => slots.push(Self::slot(&buf, &view)),
                    Err(_) => tally.malformed += 1,
                },
                Err(_) => {
                    tally.malformed += 1;
                    break;
                }
            }
        }
        (
            Self {
                buf,
                slots,
                lease: None,
            },
            tally,
        )
    }

    /// Validates one encoded `Envelope` (the legacy `Sender` stream).
    #[must_use]
    pub fn from_envelope(buf: Bytes) -> (Self, Tally) {
        let mut tally = Tally {
            received: 1,
            malformed: 0,
        };
        let slots = match EnvelopeView::parse(&buf) {
            Ok(view) => vec![Self::slot(&buf, &view)],
            Err(_) => {
                tally.malformed = 1;
                Vec::new()
            }
        };
        (
            Self {
                buf,
                slots,
                lease: None,
            },
            tally,
        )
    }

    /// Charges every envelope to its source in `fair` and drops from the batch those refused
    /// for being over their source's share; returns how many were refused. The batch then holds
    /// its charges until [`ValidBatch::release_fair`]. `fill` reads how full the queue is (in
    /// thousandths), once per envelope under the ledger's lock ([`FairShare::admit_with`]): a
    /// value read once before the batch could predate the router taking the whole ring and
    /// giving its charges back, and judge quiet sources against a ring that is no longer full.
    pub fn retain_fair(
        &mut self,
        fair: &Arc<FairShare>,
        keys: &KeyHasher,
        fill: impl Fn() -> u64,
    ) -> usize {
        self.charge_with(fair, keys, |key, name, cost| {
            fair.admit_with(key, name, cost, &fill)
        })
    }

    /// Charges every envelope to its source in `fair` and refuses none: for the notices the
    /// doppler adds to a source's stream, which must get through whatever the pressure. They
    /// are charged all the same (issue 16) so that, evicted from the ring with the batches
    /// around them, they are counted under their source; an uncharged notice was counted only
    /// in `doppler.dropped{ingress_ring_full}` and its source's ledger stayed one short.
    pub fn charge_fair(&mut self, fair: &Arc<FairShare>, keys: &KeyHasher) {
        self.charge_with(fair, keys, |key, name, cost| {
            Some(fair.charge(key, name, cost))
        });
    }

    /// Asks `decide` for each envelope's charge (`None`: refused, dropped from the batch) and
    /// keeps the charges in the batch's lease; returns how many were refused.
    fn charge_with(
        &mut self,
        fair: &Arc<FairShare>,
        keys: &KeyHasher,
        mut decide: impl FnMut(SourceKey, &str, u32) -> Option<Share>,
    ) -> usize {
        let mut shares: Vec<Share> = Vec::new();
        let mut refused = 0;
        let buf = &self.buf;
        // Consecutive envelopes mostly share a source (an emitter batches one app's lines):
        // its key and name are worked out once per run, not per envelope.
        let mut run: Option<(&[u8], SourceKey, &str)> = None;
        self.slots.retain(|slot| {
            let bytes = part(buf, slot.start, slot.len);
            let source = part(bytes, slot.source_start, slot.source_len);
            let (key, name) = match run {
                Some((same, key, name)) if same == source => (key, name),
                _ => {
                    // Validated as UTF-8 by the parser.
                    let name = std::str::from_utf8(source).unwrap_or_default();
                    let key = keys.key(source);
                    run = Some((source, key, name));
                    (key, name)
                }
            };
            match decide(key, name, slot.len) {
                Some(share) => {
                    if !shares.last_mut().is_some_and(|last| last.merge(share)) {
                        shares.push(share);
                    }
                    true
                }
                None => {
                    refused += 1;
                    false
                }
            }
        });
        // A second charge replaces (and so evicts) the first; callers charge once.
        self.lease = Some(Lease {
            fair: fair.clone(),
            shares,
        });
        refused
    }

    /// Gives back what [`ValidBatch::retain_fair`] charged: the batch left the queue it was
    /// charged for.
    pub fn release_fair(&mut self) {
        if let Some(mut lease) = self.lease.take() {
            lease.fair.release(&lease.shares);
            lease.shares.clear();
        }
    }

    fn slot(base: &[u8], view: &EnvelopeView<'_>) -> Slot {
        let bytes = view.bytes();
        Slot {
            start: offset(base, bytes),
            len: len32(bytes),
            source_start: offset(bytes, view.source_id.as_bytes()),
            source_len: len32(view.source_id.as_bytes()),
            body_start: offset(bytes, view.body()),
            body_len: len32(view.body()),
            timestamp: view.timestamp,
            kind: view.kind,
        }
    }

    /// Valid envelopes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no envelope was valid.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes of the received message this batch keeps alive.
    #[must_use]
    pub fn buffer_len(&self) -> usize {
        self.buf.len()
    }

    /// The received message every valid envelope of this batch sits in (the replay ring keeps
    /// it as is when nothing in it was rejected).
    #[must_use]
    pub fn buffer(&self) -> &Bytes {
        &self.buf
    }

    /// The valid envelopes, in order.
    pub fn iter(&self) -> impl Iterator<Item = Envelope<'_>> + '_ {
        self.slots.iter().map(|slot| {
            let bytes = part(&self.buf, slot.start, slot.len);
            Envelope {
                bytes,
                source_id: part(bytes, slot.source_start, slot.source_len),
                timestamp: slot.timestamp,
                kind: slot.kind,
                body: part(bytes, slot.body_start, slot.body_len),
            }
        })
    }
}

fn part(within: &[u8], start: u32, len: u32) -> &[u8] {
    let start = start as usize;
    within.get(start..start + len as usize).unwrap_or_default()
}

impl<'a> Envelope<'a> {
    /// `counter.name`, or empty for anything but a counter.
    #[must_use]
    pub fn counter_name(&self) -> &'a [u8] {
        if self.kind != Kind::Counter {
            return &[];
        }
        let mut name: &[u8] = &[];
        for (number, value) in Fields::new(self.body).flatten() {
            if let (1, Value::Len(b)) = (number, value) {
                name = b;
            }
        }
        name
    }

    /// The metric names of a gauge, sorted and de-duplicated (a decoded map would hold each key
    /// once), into `out`, which is cleared first.
    pub fn gauge_names(&self, out: &mut Vec<&'a [u8]>) {
        out.clear();
        if self.kind != Kind::Gauge {
            return;
        }
        for (number, value) in Fields::new(self.body).flatten() {
            let (1, Value::Len(entry)) = (number, value) else {
                continue;
            };
            // A map entry with no key field has the empty key.
            let mut key: &[u8] = &[];
            for (k, v) in Fields::new(entry).flatten() {
                if let (1, Value::Len(b)) = (k, v) {
                    key = b;
                }
            }
            out.push(key);
        }
        out.sort_unstable();
        out.dedup();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use hydrant_envelope::v2;
    use hydrant_envelope::wire::{batch_of, encode};

    use super::*;

    fn gauge(source: &str, names: &[&str]) -> v2::Envelope {
        v2::Envelope {
            source_id: source.to_owned(),
            timestamp: 42,
            message: Some(v2::envelope::Message::Gauge(v2::Gauge {
                metrics: names
                    .iter()
                    .map(|n| ((*n).to_owned(), v2::GaugeValue::default()))
                    .collect::<HashMap<_, _>>(),
            })),
            ..v2::Envelope::default()
        }
    }

    #[test]
    fn routing_fields_point_into_the_batch() {
        let counter = v2::Envelope {
            source_id: "app-1".to_owned(),
            timestamp: 7,
            message: Some(v2::envelope::Message::Counter(v2::Counter {
                name: "requests".to_owned(),
                delta: 1,
                total: 2,
            })),
            ..v2::Envelope::default()
        };
        let a = encode(&counter);
        let b = encode(&gauge("app-2", &["mem", "cpu", "disk"]));
        let none = encode(&v2::Envelope::default());
        let buf = batch_of([a.as_ref(), b.as_ref(), none.as_ref()]);
        let (batch, tally) = ValidBatch::from_batch(buf);
        assert_eq!(
            tally,
            Tally {
                received: 3,
                malformed: 0
            }
        );
        let envs: Vec<_> = batch.iter().collect();
        assert_eq!(envs[0].bytes, a.as_ref());
        assert_eq!(envs[0].source_id, b"app-1");
        assert_eq!(envs[0].timestamp, 7);
        assert_eq!(envs[0].counter_name(), b"requests");
        let mut names = Vec::new();
        envs[1].gauge_names(&mut names);
        assert_eq!(names, [&b"cpu"[..], b"disk", b"mem"]);
        assert_eq!(envs[2].kind, Kind::None);
        assert_eq!(envs[2].source_id, b"");
    }

    #[test]
    fn malformed_envelopes_are_skipped_and_counted() {
        let good = encode(&gauge("ok", &["a"]));
        // Field 2 (source_id) declared 50 bytes long with 1 present.
        let truncated: &[u8] = &[0x12, 50, b'x'];
        // Field 2 with invalid UTF-8.
        let bad_utf8: &[u8] = &[0x12, 2, 0xff, 0xfe];
        let buf = batch_of([good.as_ref(), truncated, bad_utf8, good.as_ref()]);
        let (batch, tally) = ValidBatch::from_batch(buf);
        assert_eq!(tally.received, 4);
        assert_eq!(tally.malformed, 2);
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn fairness_drops_only_the_loud_source_and_the_charges_come_back() {
        let fair = Arc::new(FairShare::new(hydrant_buffer::FairConfig::default()));
        let keys = KeyHasher::default();
        let loud = encode(&gauge("loud", &["a"]));
        let quiet = encode(&gauge("quiet", &["a"]));
        let (mut first, _) =
            ValidBatch::from_batch(batch_of(std::iter::repeat_n(loud.as_ref(), 50)));
        assert_eq!(
            first.retain_fair(&fair, &keys, || 0),
            0,
            "no pressure, no refusal"
        );
        let mixed = [loud.as_ref(), quiet.as_ref(), loud.as_ref(), quiet.as_ref()];
        let (mut second, _) = ValidBatch::from_batch(batch_of(mixed));
        // The first loud envelope still finds its source alone; once the quiet one holds a
        // share, the loud one is over its own.
        assert_eq!(second.retain_fair(&fair, &keys, || 1000), 1);
        let sources: Vec<&[u8]> = second.iter().map(|e| e.source_id).collect();
        assert_eq!(sources, [&b"loud"[..], b"quiet", b"quiet"]);
        second.release_fair();
        drop(first);
        let stats = fair.stats();
        assert_eq!((stats.admitted, stats.released, stats.evicted), (53, 3, 50));
        assert!(stats.balanced() && stats.queued == 0, "{stats:?}");
        let copy = second.clone();
        drop(copy);
        assert_eq!(fair.stats().evicted, 50, "a copy holds no charge");
    }

    #[test]
    fn a_charged_batch_refuses_nothing_and_its_eviction_counts_under_each_source() {
        let fair = Arc::new(FairShare::new(hydrant_buffer::FairConfig::default()));
        let keys = KeyHasher::default();
        let (loud, quiet) = (
            encode(&gauge("loud", &["a"])),
            encode(&gauge("quiet", &["a"])),
        );
        let (mut flood, _) =
            ValidBatch::from_batch(batch_of(std::iter::repeat_n(loud.as_ref(), 50)));
        flood.retain_fair(&fair, &keys, || 0);
        let (mut held, _) = ValidBatch::from_batch(batch_of([quiet.as_ref()]));
        held.retain_fair(&fair, &keys, || 0);
        // Under full pressure the loud source is over its share: `retain_fair` refuses it...
        let two = batch_of([loud.as_ref(), loud.as_ref()]);
        let (mut lines, _) = ValidBatch::from_batch(two.clone());
        assert_eq!(lines.retain_fair(&fair, &keys, || 1000), 2);
        drop(lines);
        // ...but a notice must get through all the same.
        let (mut notice, _) = ValidBatch::from_batch(two);
        notice.charge_fair(&fair, &keys);
        assert_eq!(notice.len(), 2, "nothing refused");
        drop(notice);
        let mut evicted = Vec::new();
        fair.sweep(
            tokio::time::Instant::now(),
            |d| evicted.push((d.source.map(str::to_owned), d.dropped)),
            |_| {},
        );
        assert_eq!(
            evicted,
            [(Some("loud".to_owned()), 4)],
            "2 refused, 2 evicted, all loud"
        );
        flood.release_fair();
        held.release_fair();
        let stats = fair.stats();
        assert_eq!((stats.admitted, stats.refused, stats.evicted), (53, 2, 2));
        assert!(stats.balanced() && stats.queued == 0, "{stats:?}");
    }

    /// Issue 16: quiet apps' lines were refused as `fair_share` at doppler ingress. The fill
    /// was read once before a batch was charged; the router can take the whole ring and give
    /// its charges back in between, and a full ring with an empty ledger makes every share
    /// tiny. Read when each envelope is charged, the fill is the ring's as it is then.
    #[test]
    fn a_batch_is_judged_on_the_ring_as_it_is_when_charged_not_as_it_was_read() {
        use hydrant_emitter::{Counter, Gauge};
        let fair = Arc::new(FairShare::new(hydrant_buffer::FairConfig::default()));
        let keys = KeyHasher::default();
        let ring =
            crate::ring::IngressRing::new(1000, usize::MAX, Counter::default(), Gauge::default());
        let loud = encode(&gauge("loud", &["a"]));
        for _ in 0..10 {
            let (mut b, _) =
                ValidBatch::from_batch(batch_of(std::iter::repeat_n(loud.as_ref(), 100)));
            assert_eq!(
                b.retain_fair(&fair, &keys, || ring.fill_permille()),
                0,
                "alone"
            );
            ring.push(b);
        }
        // Read by an ingress handler, just before the router takes everything.
        let stale = ring.fill_permille();
        assert_eq!(stale, 1000);
        let mut out = std::collections::VecDeque::new();
        ring.take_all(&mut out);
        drop(out);
        // One line of the flood, then two each from four quiet apps.
        let quiet: Vec<_> = (0..4)
            .map(|i| encode(&gauge(&format!("quiet-{i}"), &["a"])))
            .collect();
        let mut envelopes = vec![loud.as_ref()];
        for _ in 0..2 {
            envelopes.extend(quiet.iter().map(|q| q.as_ref()));
        }
        let mixed = batch_of(envelopes);
        let (mut judged_stale, _) = ValidBatch::from_batch(mixed.clone());
        assert!(
            judged_stale.retain_fair(&fair, &keys, || stale) > 0,
            "against the stale fill, quiet lines are refused"
        );
        judged_stale.release_fair();
        let (mut judged_now, _) = ValidBatch::from_batch(mixed);
        assert_eq!(
            judged_now.retain_fair(&fair, &keys, || ring.fill_permille()),
            0,
            "the ring is empty now: nothing is over its share"
        );
    }

    #[test]
    fn garbage_batches_never_panic() {
        for seed in 0..2000u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let len = rng.usize(0..64);
            let garbage: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let (batch, tally) = ValidBatch::from_batch(Bytes::from(garbage.clone()));
            assert_eq!(batch.len() + tally.malformed, tally.received);
            for e in batch.iter() {
                let _ = (e.counter_name(), e.source_id);
            }
            let (one, tally) = ValidBatch::from_envelope(Bytes::from(garbage));
            assert_eq!(one.len() + tally.malformed, 1);
        }
    }
}
