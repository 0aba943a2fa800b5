//! Shard groups for ring reads: the readers of the replay ring that ask with one non-empty
//! `shard_id` split its envelopes between them, each envelope to exactly one of them.
//!
//! Where it sits: a ring read (`hydrant-ring-from`) with a `shard_id` is served by
//! `replay::ring_stream` as a read of everything, and this module cuts each kept batch down to
//! the reading member's share before it goes out. The firehose edges read this way for every
//! firehose subscription id their consumers use, so copies of one nozzle spread over several
//! edges (behind one name) receive each envelope once between them, as Loggregator's dopplers
//! split one shard group among the traffic controllers that ask with it.
//!
//! How the split is made: it is a function of the envelope's offset and of the group's
//! membership, not of who reads first. Offsets are cut into blocks of [`BLOCK`] envelopes, and
//! block `b` belongs to member `b mod n` of the members (sorted by id) the group had when that
//! offset was routed. Membership is kept as a timeline of segments (`from` offset, members): a
//! member that joins or leaves starts a new segment at the ring's head (or past the furthest
//! batch a member already split, so no envelope is judged under two memberships). Because the
//! split is recorded, not raced for:
//! - a member's read is resumable: a reader that names its member id
//!   (`hydrant-shard-member`) and reads from an older offset (an edge reconnecting, or a bounded
//!   read replaying a consumer's missed range) gets exactly the share it owned then;
//! - offsets routed while the group had no member belong to the members of the next segment
//!   that has some (the first to come back), so nothing is given to nobody;
//! - the split is fair to within one block per member and per membership change.
//!
//! Each sent run of owned offsets is one message: its own position record (start, count of the
//! run) followed by the run's envelopes, so a reader stamps every envelope with its true offset.
//!
//! Invariants: bounded (at most [`MAX_SEGMENTS`] segments per group, [`MAX_GROUPS`] groups; a
//! group with no reader is forgotten first when the table is full); the ring's writer never
//! takes this lock; a read holds it only to compute one batch's runs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};
use hydrant_emitter::Counter;
use hydrant_envelope::cursor::{POSITION_KEY, RingPosition};
use hydrant_envelope::wire::{BatchIter, read_varint, varint_len};
use tonic::Status;

use crate::replay::ReplayRing;

/// The metadata key a sharded ring read names its member id with (a decimal `u64`). A read
/// without one is a member of its own for as long as it lasts.
pub(crate) const SHARD_MEMBER: &str = "hydrant-shard-member";

/// The metadata key a sharded live ring read gives its member's weight with (a decimal, 1 to
/// [`MAX_WEIGHT`]; 1 when absent): a member of weight `w` owns `w` blocks of each round, so an
/// edge with three copies of a nozzle connected takes three shares to another edge's one.
pub(crate) const SHARD_WEIGHT: &str = "hydrant-shard-weight";
/// The largest weight a member may ask for.
pub(crate) const MAX_WEIGHT: u32 = 1024;

/// Envelopes per block of the split: large enough that a batch goes out in a few runs, small
/// enough that a short burst still reaches every member.
pub(crate) const BLOCK: u64 = 128;
/// Membership segments remembered per group (older offsets are then owned by nobody).
const MAX_SEGMENTS: usize = 256;
/// Shard groups remembered at once.
const MAX_GROUPS: usize = 4096;

#[derive(Debug, Clone)]
struct Segment {
    from: u64,
    /// Sorted member ids; empty while the group had no reader.
    members: Arc<[u64]>,
}

#[derive(Debug, Default)]
struct Group {
    /// Oldest first; each applies from its `from` to the next one's.
    segments: VecDeque<Segment>,
    /// Live reads by member id: how many streams each member has open, and its weight (the
    /// latest a stream of it asked for).
    connected: BTreeMap<u64, (usize, u32)>,
    /// The end of the furthest batch a live member has split.
    split_to: u64,
}

impl Group {
    /// Starts a segment with the connected members at `head` (or later, see the module doc).
    fn change(&mut self, head: u64) {
        // A member of weight w is listed w times in a row: it owns w blocks of each round.
        let members: Arc<[u64]> = self
            .connected
            .iter()
            .flat_map(|(id, (_, weight))| std::iter::repeat_n(*id, *weight as usize))
            .collect();
        if self.segments.back().is_some_and(|s| s.members == members) {
            return;
        }
        let from = head.max(self.split_to);
        match self.segments.back_mut() {
            Some(last) if last.from >= from => last.members = members,
            _ => self.segments.push_back(Segment { from, members }),
        }
        while self.segments.len() > MAX_SEGMENTS {
            self.segments.pop_front();
        }
    }

    /// The members owning offset `o` and where their segment ends; `None` before the first
    /// segment kept, or while no later segment has members.
    fn owners(&self, o: u64) -> Option<(&[u64], u64)> {
        let i = self
            .segments
            .partition_point(|s| s.from <= o)
            .checked_sub(1)?;
        let end = self.segments.get(i + 1).map_or(u64::MAX, |s| s.from);
        // A stretch with nobody belongs to the next members to come.
        let members = self
            .segments
            .range(i..)
            .find(|s| !s.members.is_empty())
            .map(|s| &*s.members)?;
        Some((members, end))
    }

    /// The runs `[a, b)` of `[start, end)` that `member` owns, in order.
    fn runs(&self, member: u64, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut o = start;
        while o < end {
            let block = o / BLOCK;
            let block_end = block.saturating_add(1).saturating_mul(BLOCK);
            let (mine, until) = match self.owners(o) {
                Some((members, seg_end)) => {
                    let n = members.len() as u64;
                    let owner = usize::try_from(block % n).ok().and_then(|i| members.get(i));
                    (owner == Some(&member), seg_end)
                }
                None => {
                    let next = self.segments.iter().find(|s| s.from > o).map(|s| s.from);
                    (false, next.unwrap_or(u64::MAX))
                }
            };
            let stop = end.min(block_end).min(until).max(o + 1);
            if mine {
                match runs.last_mut() {
                    Some(last) if last.1 == o => last.1 = stop,
                    _ => runs.push((o, stop)),
                }
            }
            o = stop;
        }
        runs
    }
}

/// Every shard group of ring reads on this doppler.
#[derive(Debug, Default)]
pub(crate) struct ShardGroups {
    groups: Mutex<HashMap<Box<str>, Group>>,
}

impl ShardGroups {
    fn with<T>(&self, shard: &str, f: impl FnOnce(&mut Group) -> T) -> T {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        if !groups.contains_key(shard) && groups.len() >= MAX_GROUPS {
            // Forget the groups nobody reads now; their members' resumes find no owner.
            groups.retain(|_, g| !g.connected.is_empty());
        }
        // A new group has had no member since offset 0: what came before its first member is
        // that member's (the edge that reads a doppler joined late from its oldest envelope).
        let group = groups.entry(shard.into()).or_insert_with(|| Group {
            segments: VecDeque::from([Segment {
                from: 0,
                members: Arc::new([]),
            }]),
            ..Group::default()
        });
        f(group)
    }

    /// Adds a live reader of `member` (of `weight`) to `shard` at `head`; it leaves when the
    /// guard drops.
    pub(crate) fn join(
        self: &Arc<Self>,
        ring: Arc<ReplayRing>,
        shard: &str,
        member: u64,
        weight: u32,
    ) -> Membership {
        self.with(shard, |g| {
            let entry = g.connected.entry(member).or_insert((0, 1));
            *entry = (entry.0 + 1, weight.clamp(1, MAX_WEIGHT));
            g.change(ring.next_offset());
        });
        Membership {
            groups: self.clone(),
            ring,
            shard: shard.into(),
            member,
        }
    }

    fn leave(&self, shard: &str, member: u64, head: u64) {
        self.with(shard, |g| {
            if let Some((n, _)) = g.connected.get_mut(&member) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    g.connected.remove(&member);
                }
            }
            g.change(head);
        });
    }

    /// The runs of `[start, end)` that `member` owns; a live member's split moves the point
    /// after which membership changes apply.
    fn runs(&self, shard: &str, member: u64, start: u64, end: u64, live: bool) -> Vec<(u64, u64)> {
        self.with(shard, |g| {
            if live {
                g.split_to = g.split_to.max(end);
            }
            g.runs(member, start, end)
        })
    }
}

/// A live reader's place in its group.
#[derive(Debug)]
pub(crate) struct Membership {
    groups: Arc<ShardGroups>,
    ring: Arc<ReplayRing>,
    shard: Box<str>,
    member: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.groups
            .leave(&self.shard, self.member, self.ring.next_offset());
    }
}

/// A member's view of one ring read: cuts each message down to the member's share.
#[derive(Debug)]
pub(crate) struct Share {
    groups: Arc<ShardGroups>,
    shard: Box<str>,
    member: u64,
    /// Held by a live read for as long as it streams; `None` for a bounded read (a replay).
    membership: Option<Membership>,
    egress: Counter,
}

impl Share {
    /// The share of `member` in `shard` for one read; a live read joins the group.
    pub(crate) fn new(
        groups: &Arc<ShardGroups>,
        ring: &Arc<ReplayRing>,
        shard: &str,
        member: u64,
        weight: u32,
        live: bool,
        egress: Counter,
    ) -> Self {
        Self {
            groups: groups.clone(),
            shard: shard.into(),
            member,
            membership: live.then(|| groups.join(ring.clone(), shard, member, weight)),
            egress,
        }
    }

    /// The messages to send for one message of a read of everything.
    fn cut(&self, message: Bytes) -> Vec<Bytes> {
        let Some((position, batch)) = split_position(&message) else {
            return vec![message];
        };
        let live = self.membership.is_some();
        if batch.is_empty() {
            // A record on its own: where the read starts, or what it lost. Only this member's
            // share of a loss is its loss.
            if position.skipped == 0 {
                return vec![message];
            }
            let from = position.start.saturating_sub(position.skipped);
            let owned: u64 = self
                .groups
                .runs(&self.shard, self.member, from, position.start, false)
                .iter()
                .map(|(a, b)| b - a)
                .sum();
            return vec![
                RingPosition {
                    skipped: owned,
                    ..position
                }
                .encode(),
            ];
        }
        if position.count == 0 || position.skipped > 0 {
            return vec![message];
        }
        // Where each envelope's framing starts and its bytes end, in offset order.
        let mut bounds = Vec::new();
        for envelope in BatchIter::new(&batch) {
            let Ok(envelope) = envelope else { break };
            let end =
                (envelope.as_ptr() as usize).wrapping_sub(batch.as_ptr() as usize) + envelope.len();
            let framed = 1 + varint_len(envelope.len() as u64) + envelope.len();
            bounds.push((end.saturating_sub(framed), end));
        }
        let runs = self.groups.runs(
            &self.shard,
            self.member,
            position.start,
            position.start + bounds.len() as u64,
            live,
        );
        let mut out = Vec::with_capacity(runs.len());
        for (a, b) in runs {
            let (i, j) = ((a - position.start) as usize, (b - position.start) as usize);
            let (Some(first), Some(last)) =
                (bounds.get(i), j.checked_sub(1).and_then(|j| bounds.get(j)))
            else {
                continue;
            };
            let Some(envelopes) = batch.get(first.0..last.1) else {
                continue;
            };
            let record = RingPosition {
                start: a,
                count: b - a,
                ..position
            }
            .encode();
            let mut m = BytesMut::with_capacity(record.len() + envelopes.len());
            m.extend_from_slice(&record);
            m.extend_from_slice(envelopes);
            self.egress.add(b - a);
            out.push(m.freeze());
        }
        out
    }

    /// `read` (a ring read of everything) cut down to this member's share.
    pub(crate) fn apply(
        self,
        read: impl Stream<Item = Result<Bytes, Status>> + Send + 'static,
    ) -> impl Stream<Item = Result<Bytes, Status>> + Send + 'static {
        read.flat_map(move |item| {
            let messages = match item {
                Ok(message) => self.cut(message).into_iter().map(Ok).collect(),
                Err(status) => vec![Err(status)],
            };
            futures_util::stream::iter(messages)
        })
    }
}

/// A ring read's message: its leading position record and the batch after it.
fn split_position(message: &Bytes) -> Option<(RingPosition, Bytes)> {
    let mut pos = 0;
    if read_varint(message, &mut pos).ok()? != POSITION_KEY {
        return None;
    }
    let len = usize::try_from(read_varint(message, &mut pos).ok()?).ok()?;
    let end = pos.checked_add(len)?;
    let record = RingPosition::from_message(message.get(..end)?)?;
    Some((record, message.slice(end..)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hydrant_envelope::v2;
    use hydrant_envelope::wire::{EnvelopeView, batch_of, encode};

    use super::*;
    use crate::batch::ValidBatch;
    use crate::replay::tests::read_everything;

    fn push(ring: &ReplayRing, stamps: std::ops::Range<i64>) {
        let envelopes: Vec<Bytes> = stamps
            .map(|n| {
                encode(&v2::Envelope {
                    source_id: "app".to_owned(),
                    timestamp: n,
                    message: Some(v2::envelope::Message::Log(v2::Log::default())),
                    ..v2::Envelope::default()
                })
            })
            .collect();
        ring.push(&ValidBatch::from_batch(batch_of(envelopes.iter().map(|b| b.as_ref()))).0);
    }

    /// A member's read of `ring` from `from` (`None`: live from the head, joining the group).
    fn read(
        groups: &Arc<ShardGroups>,
        ring: &Arc<ReplayRing>,
        member: u64,
        from: Option<u64>,
        to: Option<u64>,
    ) -> impl Stream<Item = Result<Bytes, Status>> + Send + 'static {
        let read = read_everything(ring, from, to);
        Share::new(
            groups,
            ring,
            "nozzle",
            member,
            1,
            to.is_none(),
            Counter::default(),
        )
        .apply(read)
    }

    /// `(offset, timestamp)` of every envelope in `messages`, by the records in front of them.
    fn envelopes(messages: &[Bytes]) -> Vec<(u64, i64)> {
        let mut out = Vec::new();
        for m in messages {
            let (p, batch) = split_position(m).unwrap();
            for (i, e) in BatchIter::new(&batch).enumerate() {
                let view = EnvelopeView::parse(e.unwrap()).unwrap();
                out.push((p.start + i as u64, view.timestamp));
            }
        }
        out
    }

    async fn take(
        stream: &mut (impl Stream<Item = Result<Bytes, Status>> + Unpin),
        envelopes_wanted: usize,
    ) -> Vec<Bytes> {
        let mut got = Vec::new();
        while envelopes(&got).len() < envelopes_wanted {
            let m = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("a message in time")
                .unwrap()
                .unwrap();
            got.push(m);
        }
        got
    }

    #[tokio::test]
    async fn two_live_members_get_each_envelope_once_with_true_offsets_and_a_replay_its_own_share()
    {
        let ring = Arc::new(ReplayRing::new(1, usize::MAX, Duration::from_secs(60)));
        let groups = Arc::new(ShardGroups::default());
        let mut a = Box::pin(read(&groups, &ring, 10, None, None));
        let mut b = Box::pin(read(&groups, &ring, 20, None, None));
        // The hello records (where each read starts) come first; the members join on creation.
        let _ = a.next().await;
        let _ = b.next().await;
        for start in (0..1000).step_by(100) {
            push(&ring, start..start + 100);
        }
        // Blocks of 128 alternate between the members (sorted by id): A has blocks 0, 2, 4, 6.
        let (got_a, got_b) = (
            envelopes(&take(&mut a, 512).await),
            envelopes(&take(&mut b, 488).await),
        );
        assert_eq!(got_a.len() + got_b.len(), 1000);
        for (offset, stamp) in got_a.iter().chain(&got_b) {
            assert_eq!(
                *offset as i64, *stamp,
                "each envelope stamped with its own offset"
            );
        }
        let mut all: Vec<i64> = got_a.iter().chain(&got_b).map(|(_, s)| *s).collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>(), "each exactly once");

        // B leaves; a bounded read of B's from its start replays only B's share, and what
        // comes after it left is A's alone.
        drop(b);
        push(&ring, 1000..1100);
        let after = envelopes(&take(&mut a, 100).await);
        assert_eq!(after.len(), 100, "a lone member gets everything");
        let replay: Vec<Bytes> = read(&groups, &ring, 20, Some(0), Some(1100))
            .map(Result::unwrap)
            .collect()
            .await;
        let replayed: Vec<i64> = envelopes(&replay).into_iter().map(|(_, s)| s).collect();
        let had_b: Vec<i64> = got_b.iter().map(|(_, s)| *s).collect();
        assert_eq!(
            replayed, had_b,
            "B's replay is exactly B's share, none of A's"
        );
    }

    fn group(timeline: &[(u64, &[u64])]) -> Group {
        Group {
            segments: timeline
                .iter()
                .map(|(from, m)| Segment {
                    from: *from,
                    members: m.iter().copied().collect(),
                })
                .collect(),
            ..Group::default()
        }
    }

    fn owned(g: &Group, member: u64, start: u64, end: u64) -> u64 {
        g.runs(member, start, end).iter().map(|(a, b)| b - a).sum()
    }

    #[test]
    fn every_offset_has_exactly_one_owner_across_membership_changes() {
        let g = group(&[(0, &[1]), (300, &[1, 2]), (1000, &[]), (1500, &[2, 3, 4])]);
        for o in 0..3000 {
            let owners: Vec<u64> = [1, 2, 3, 4]
                .into_iter()
                .filter(|&m| owned(&g, m, o, o + 1) == 1)
                .collect();
            assert_eq!(owners.len(), 1, "offset {o}: {owners:?}");
        }
        // The stretch with nobody went to the members that came next.
        assert_eq!(owned(&g, 1, 1000, 1500), 0);
        assert_eq!(
            owned(&g, 2, 1000, 1500) + owned(&g, 3, 1000, 1500) + owned(&g, 4, 1000, 1500),
            500
        );
    }

    #[test]
    fn a_member_of_weight_three_owns_three_blocks_of_four() {
        let mut g = Group::default();
        g.connected.insert(7, (1, 3));
        g.connected.insert(9, (1, 1));
        g.change(0);
        let (a, b) = (
            owned(&g, 7, 0, 4 * BLOCK * 10),
            owned(&g, 9, 0, 4 * BLOCK * 10),
        );
        assert_eq!((a, b), (3 * BLOCK * 10, BLOCK * 10));
    }

    #[test]
    fn the_split_is_fair_to_within_a_block() {
        let g = group(&[(0, &[7, 9])]);
        let (a, b) = (owned(&g, 7, 0, 10_000), owned(&g, 9, 0, 10_000));
        assert_eq!(a + b, 10_000);
        assert!(a.abs_diff(b) <= BLOCK, "{a} vs {b}");
        let runs = g.runs(7, 100, 400);
        assert_eq!(runs, [(100, 128), (256, 384)]);
    }

    #[test]
    fn a_change_applies_after_what_members_already_split() {
        let mut g = Group::default();
        g.connected.insert(1, (1, 1));
        g.change(0);
        g.split_to = 500;
        g.connected.insert(2, (1, 1));
        g.change(200);
        assert_eq!(g.segments.back().map(|s| s.from), Some(500));
        assert_eq!(owned(&g, 2, 0, 500), 0, "member 1 already had these");
    }
}
