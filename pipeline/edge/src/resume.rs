//! Resuming a consumer from its cursor: what it missed, read back from the dopplers' replay
//! rings, before its live data.
//!
//! Where it sits: a WebSocket or SSE handler that got `?cursor=` subscribes in the hub first
//! (which records, per doppler, where its live data starts), then plans a [`Replay`]: per
//! doppler, the range from the cursor's mark to that live start, read with a bounded ring read
//! (`hydrant-ring-from`/`-to`) on the doppler's read channel. The writer sends the replay's
//! frames, then drains the live outbox; its [`Tracker`] drops anything live it already sent.
//!
//! Catching up: a consumer that resumes does not let its live data pile up in its outbox while
//! the missed range is replayed (at 50,000 envelopes/s a 10,000-envelope outbox would overflow
//! in 0.2 s, long before a few seconds' backlog is sent). Its outbox *defers* the dopplers being
//! replayed: it passes over their live envelopes, which their rings hold anyway. When the planned
//! range is sent, the replay reads on from where it stands to each doppler's current head, round
//! after round, until what is left is small (a quarter of the outbox); then it goes live: the
//! hub undefers the outbox and takes the live starts under the lock publishing takes, and one
//! last ring read covers the few envelopes between. Each envelope is thus held once, in the ring,
//! and the outbox only ever absorbs that last short read. A consumer slower than the live rate
//! keeps reading from the rings and, if it falls out of a ring's window, is told by a gap marker
//! (reason `replay_window`) exactly how many envelopes it lost.
//!
//! Semantics:
//! - within the window: exactly the envelopes missed, in each doppler's order, then live data;
//! - beyond it: a gap marker (hop `doppler`, reason `replay_window`) with the count the ring no
//!   longer holds, then what it still holds. The doppler says whose those envelopes were: a
//!   firehose consumer's marker names the sources that lost most (`hydrant.gap.source.<id>`,
//!   the top 8) and sums the rest as `hydrant.gap.other`; an app stream's marker counts only
//!   that app's envelopes (under its source id), and there is no marker when none were its.
//!   What the doppler could not attribute stays in `other`, so the total is never short;
//! - selectors apply to replayed envelopes as to live ones (the subscription's types and
//!   sources);
//! - a shard group member resumes its cursor only when it is the group's first member to come
//!   back to this edge: while others were connected here they were given its share, and
//!   replaying it again would duplicate it. Its replay reads only this edge's share of the id
//!   (the ring read names the id and this edge's member id): what members on other edges were
//!   given meanwhile is not sent again. A copy that comes back through another edge is replayed
//!   that edge's share of the range instead, not the share its old edge was dealt;
//! - a doppler that restarted since the cursor was written has a new epoch: the consumer is
//!   replayed what the new process holds, after a gap marker (reason `doppler_restarted`)
//!   counting what that process already evicted; what the old process held is gone;
//! - a doppler that cannot be read within the read timeout yields a gap marker (reason
//!   `replay_unavailable`) counting the whole range, so the consumer is never silently short.
//!
//! - a shard group member that joins while another catches up is given its round-robin share
//!   from then on, while the one catching up is replayed every envelope up to its live start:
//!   the group may receive that stretch twice (at-least-once), never lose it.
//!
//! Invariant: a replay holds at most one doppler batch beyond the frame being built.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use hydrant_envelope::MAX_MESSAGE_BYTES;
use hydrant_envelope::cursor::{Cursor, Mark, RingPosition, split_sources};
use hydrant_envelope::gap::{BySource, GAP_SOURCE, GAP_TOP_SOURCES, Gap};
use hydrant_envelope::raw::egress::egress_client::EgressClient;
use hydrant_envelope::wire::{EnvelopeView, split_batch};
use tonic::Streaming;
use tonic::transport::Channel;

use crate::api::{ApiError, Shared};
use crate::hub::Subscription;
use crate::position::{At, Item, Tracker, split_position};
use crate::shard::Shard;
use crate::upstream::ring_request;

/// How long a resuming consumer waits for the edge to know every doppler (just after an edge
/// restart its upstreams are still connecting).
pub(crate) const IDENTIFY_WAIT: Duration = Duration::from_secs(5);

/// One doppler's missed range.
#[derive(Debug, Clone, Copy)]
struct Job {
    slot: usize,
    /// The consumer's mark (its epoch may be an old one).
    from: Mark,
    /// Where live data starts.
    to: Mark,
}

/// Something for the writer to send.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    pub(crate) marker: Option<Gap>,
    pub(crate) items: Vec<Item>,
    /// Where finished ranges end: set on the consumer's cursor once `items` are sent.
    pub(crate) then: Vec<Mark>,
}

impl Chunk {
    /// Moves `tracker` past what this chunk sends, returning the items to send (those the
    /// consumer was not given yet).
    pub(crate) fn admit(&mut self, tracker: &mut Tracker) -> Vec<Item> {
        let mut items = std::mem::take(&mut self.items);
        items.retain(|i| tracker.admit(i.at));
        for mark in self.then.drain(..) {
            tracker.set(mark);
        }
        items
    }
}

struct Running {
    job: Job,
    stream: Streaming<Bytes>,
    position: Option<RingPosition>,
}

/// The replay of one consumer, doppler by doppler.
pub(crate) struct Replay {
    jobs: VecDeque<Job>,
    running: Option<Running>,
    /// Envelopes read but not yet handed out (at most one doppler batch).
    ready: VecDeque<Item>,
    /// Ends of finished ranges, handed out with the last of their envelopes.
    finished: Vec<Mark>,
    /// Each slot's read channel when the replay was planned (`None`: no doppler there).
    readers: Vec<Option<Channel>>,
    timeout: Duration,
    /// Per slot, where the consumer stands once the queued jobs are sent.
    stand: Vec<(usize, Mark)>,
    /// The outbox defers the dopplers in `stand`: the replay reads on to their heads before
    /// going live.
    catching_up: bool,
    /// Envelopes behind the heads at which a catch-up goes live.
    slack: u64,
    /// Envelopes replayed so far.
    pub(crate) replayed: u64,
    /// A firehose subscription's share: the replay reads only what its member owned.
    shard: Option<Shard>,
}

fn marker(dropped: u64, reason: &str) -> Gap {
    Gap {
        source_id: GAP_SOURCE.to_owned(),
        dropped,
        hop: "doppler".to_owned(),
        reason: reason.to_owned(),
        by_source: Default::default(),
    }
}

/// The marker for `skipped` envelopes a ring no longer held, with whose they were when the
/// doppler said (`lost`): for a firehose the top sources and the rest as other; for a stream
/// of some sources (an app's) only theirs, `None` when none were.
pub(crate) fn lost_marker(
    sources: Option<&[String]>,
    skipped: u64,
    reason: &str,
    lost: Option<BySource>,
) -> Option<Gap> {
    let mut gap = marker(skipped, reason);
    let Some(lost) = lost.filter(|l| l.total() == skipped) else {
        return Some(gap);
    };
    match sources {
        None => gap.by_source = BySource::top_n(lost.top, lost.other, GAP_TOP_SOURCES),
        Some(sources) => {
            let theirs = lost.only(sources);
            if theirs.total() == 0 {
                return None;
            }
            gap.dropped = theirs.total();
            if let [one] = sources {
                gap.source_id.clone_from(one);
            }
            gap.by_source = theirs;
        }
    }
    Some(gap)
}

impl Replay {
    /// Plans the replay of `sub` from `cursor`, and starts `tracker` where the consumer stands:
    /// the cursor's marks, and the live start of every doppler there is nothing to replay from.
    pub(crate) fn plan(
        sub: &Subscription,
        cursor: Option<&Cursor>,
        readers: Vec<Option<Channel>>,
        timeout: Duration,
        tracker: &mut Tracker,
    ) -> Self {
        let mut jobs = VecDeque::new();
        let mut stand = Vec::new();
        // Marks of dopplers this edge does not know (yet) are carried as they are.
        for mark in cursor.map(Cursor::marks).unwrap_or_default() {
            tracker.set(*mark);
        }
        for &(slot, live) in sub.live_starts() {
            let from = cursor.and_then(|c| c.get(live.doppler));
            match from {
                Some(from)
                    if !sub.joined_live_group()
                        && (from.epoch != live.epoch || from.next < live.next) =>
                {
                    jobs.push_back(Job {
                        slot,
                        from,
                        to: live,
                    });
                    stand.push((slot, live));
                }
                Some(from) if from.epoch == live.epoch && from.next >= live.next => {
                    stand.push((slot, from));
                }
                // A doppler the cursor does not name joined after it was written (the cursor
                // names every doppler the edge read when the consumer connected): all it holds
                // arrived while the consumer was away, so it is replayed from the start of its
                // window rather than silently skipped to live.
                None if cursor.is_some() && !sub.joined_live_group() && live.next > 0 => {
                    let from = Mark { next: 0, ..live };
                    jobs.push_back(Job {
                        slot,
                        from,
                        to: live,
                    });
                    stand.push((slot, live));
                }
                _ => {
                    tracker.set(live);
                    stand.push((slot, live));
                }
            }
        }
        let catching_up = !jobs.is_empty() && !sub.joined_live_group();
        if catching_up {
            // From here on the rings hold this consumer's live data; what reached the outbox
            // since it subscribed is replayed too and then skipped by the tracker.
            sub.outbox()
                .defer(stand.iter().map(|(_, m)| m.doppler).collect());
        }
        let slack = (sub.outbox().capacity() / 4).max(1) as u64;
        Self {
            jobs,
            running: None,
            ready: VecDeque::new(),
            finished: Vec::new(),
            readers,
            timeout,
            stand,
            catching_up,
            slack,
            replayed: 0,
            shard: sub.shard().cloned(),
        }
    }

    /// Where the consumer will stand at `slot` once the queued jobs are sent.
    fn standing(&mut self, slot: usize) -> Option<&mut Mark> {
        self.stand
            .iter_mut()
            .find(|(s, _)| *s == slot)
            .map(|(_, m)| m)
    }

    /// Called when every queued job is sent during a catch-up: queues the reads from where the
    /// consumer stands to each doppler's head while that is more than the slack, else goes live
    /// and queues the last reads, up to the live starts.
    fn catch_up(&mut self, sub: &Subscription) {
        let heads = sub.heads();
        let mut behind = 0u64;
        let mut restarted = false;
        for (slot, head) in &heads {
            match self.standing(*slot) {
                Some(at) if at.doppler == head.doppler && at.epoch == head.epoch => {
                    behind += head.next.saturating_sub(at.next);
                }
                // Restarted since: its new process is read once, after going live.
                Some(at) if at.doppler == head.doppler => restarted = true,
                // Another doppler in the slot, or one not known when the catch-up began: its
                // envelopes are not deferred, they reach the outbox.
                _ => {}
            }
        }
        let live = if behind > self.slack && !restarted {
            heads
        } else {
            self.catching_up = false;
            sub.go_live()
        };
        for (slot, to) in live {
            let Some(at) = self.standing(slot) else {
                continue;
            };
            if at.doppler != to.doppler || (at.epoch == to.epoch && at.next >= to.next) {
                continue;
            }
            let from = std::mem::replace(at, to);
            self.jobs.push_back(Job { slot, from, to });
        }
    }

    /// True when there is nothing (left) to replay.
    pub(crate) fn is_done(&self) -> bool {
        !self.catching_up
            && self.jobs.is_empty()
            && self.running.is_none()
            && self.ready.is_empty()
            && self.finished.is_empty()
    }

    /// The next frame's worth (up to `max` envelopes), `None` once the replay is over.
    pub(crate) async fn next(&mut self, sub: &Subscription, max: usize) -> Option<Chunk> {
        let max = max.max(1);
        loop {
            if self.ready.len() >= max {
                return Some(self.take(max));
            }
            let Some(running) = &mut self.running else {
                if !self.ready.is_empty() || !self.finished.is_empty() {
                    return Some(self.take(max));
                }
                let Some(job) = self.jobs.pop_front() else {
                    if !self.catching_up {
                        return None;
                    }
                    self.catch_up(sub);
                    continue;
                };
                match self.open(job).await {
                    Ok(running) => self.running = Some(running),
                    Err(e) => {
                        tracing::warn!(error = %e, "replay: a doppler could not be read");
                        self.finished.push(job.to);
                        let lost = job.to.next.saturating_sub(job.from.next);
                        let mut chunk = self.take(max);
                        chunk.marker = Some(marker(lost, "replay_unavailable"));
                        return Some(chunk);
                    }
                }
                continue;
            };
            let job = running.job;
            let message = match tokio::time::timeout(self.timeout, running.stream.message()).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => {
                    self.running = None;
                    self.finished.push(job.to);
                    continue;
                }
                Ok(Err(_)) | Err(_) => {
                    // Cut short: tell the consumer how much of the range it will not get.
                    let reached = running.position.map_or(job.from.next, |p| p.end());
                    self.running = None;
                    self.finished.push(job.to);
                    let lost = job.to.next.saturating_sub(reached);
                    if lost == 0 {
                        continue;
                    }
                    let mut chunk = self.take(max);
                    chunk.marker = Some(marker(lost, "replay_unavailable"));
                    return Some(chunk);
                }
            };
            let (position, message) = split_position(&message);
            let (lost, message) = split_sources(&message);
            let mut gap = None;
            if let Some(p) = position {
                running.position = Some(p);
                if p.skipped > 0 {
                    let reason = if p.restarted {
                        "doppler_restarted"
                    } else {
                        "replay_window"
                    };
                    gap = lost_marker(sub.sources(), p.skipped, reason, lost);
                }
            }
            let Some(p) = running.position else {
                continue;
            };
            if message.is_empty() {
                if let Some(gap) = gap {
                    let mut chunk = self.take(max);
                    chunk.marker = Some(gap);
                    return Some(chunk);
                }
                continue;
            }
            // The first batch may start before the cursor: skip what the consumer already has.
            let from = if p.epoch == job.from.epoch {
                job.from.next
            } else {
                0
            };
            for (i, bytes) in split_batch(&message).enumerate() {
                let Ok(bytes) = bytes else { break };
                let at = At {
                    doppler: p.doppler,
                    epoch: p.epoch,
                    offset: p.start + i as u64,
                };
                if at.offset < from || at.offset >= job.to.next && p.epoch == job.to.epoch {
                    continue;
                }
                let Ok(view) = EnvelopeView::parse(&bytes) else {
                    continue;
                };
                if sub.wants(view.kind, view.source_id.as_bytes()) {
                    self.ready.push_back(Item::new(bytes, at));
                }
            }
            if let Some(gap) = gap {
                let mut chunk = self.take(max);
                chunk.marker = Some(gap);
                return Some(chunk);
            }
        }
    }

    fn take(&mut self, max: usize) -> Chunk {
        let n = self.ready.len().min(max);
        let items: Vec<Item> = self.ready.drain(..n).collect();
        self.replayed += items.len() as u64;
        let then = if self.ready.is_empty() {
            std::mem::take(&mut self.finished)
        } else {
            Vec::new()
        };
        Chunk {
            marker: None,
            items,
            then,
        }
    }

    async fn open(&self, job: Job) -> Result<Running, tonic::Status> {
        let channel = self
            .readers
            .get(job.slot)
            .cloned()
            .flatten()
            .ok_or_else(|| tonic::Status::not_found("no such doppler"))?;
        let mut client = EgressClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        // A doppler that restarted since (another epoch) answers `restarted` and reads its new
        // process from the oldest batch, up to the live start.
        let request = ring_request(
            self.shard.as_ref(),
            Some((job.from.epoch, job.from.next)),
            Some(job.to.next),
        );
        let response = tokio::time::timeout(self.timeout, client.batched_receiver(request))
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("the doppler did not answer"))??;
        Ok(Running {
            job,
            stream: response.into_inner(),
            position: None,
        })
    }
}

/// The cursor a stream asked to resume from (`?cursor=`, or for SSE the `Last-Event-ID` a
/// browser sends back), once the edge knows its dopplers (or [`IDENTIFY_WAIT`] passed).
///
/// # Errors
/// 400 when the cursor is not one this platform wrote.
pub(crate) async fn requested(
    app: &Shared,
    text: Option<&str>,
) -> Result<Option<Cursor>, ApiError> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let cursor = Cursor::decode(text)
        .map_err(|e| app.reject(ApiError::bad_request(format!("cursor: {e}"))))?;
    app.hub.wait_identified(IDENTIFY_WAIT).await;
    Ok(Some(cursor))
}
