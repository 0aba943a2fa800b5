//! Follow mode for `hydrant logs SOURCE`: recent lines, then the live stream, with no gap and no
//! duplicates.
//!
//! Running "recent" and then "stream" one after the other loses whatever is emitted in between
//! (the complaint behind cli#1157 and cli#1378). So this does it the other way round:
//!
//! 1. **Open the stream first** and wait for it to be connected. From then on every new
//!    envelope is queued on the socket (the client reads no faster than we consume).
//! 2. **Then read recent** envelopes from the log cache. Anything emitted before the stream
//!    opened is there; anything emitted after is in the stream; what was emitted in between is
//!    in both.
//! 3. Yield recent envelopes **oldest first** as one batch, then the stream's batches with
//!    every envelope **already yielded from recent removed**.
//!
//! Duplicates are recognised by two keys per recent envelope: `(source_id, instance_id,
//! hydrant_sequence)` when a sequence is set, and always `(source_id, instance_id, timestamp,
//! payload)`, so a copy is caught even if one side lost its sequence. Keys are 64-bit hashes in
//! a set bounded by the recent read's size (at most 1000 envelopes). The overlap can only hold
//! envelopes that passed the pipeline before the recent read, so once the stream shows an
//! envelope more than [`OVERLAP_SLACK_NS`] newer than the newest recent one, the set is dropped:
//! that also stops a restarted emitter (whose sequence starts again at 1) from having fresh
//! lines mistaken for old ones.
//!
//! What it cannot cover: reconnects later on (those are reported as sequence gaps, not
//! refilled), and an envelope that reached the pipeline before the subscription existed but
//! not yet the log cache when it was read (both live in the same doppler, so that window is a
//! few microseconds).

use std::collections::{HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use futures_util::Stream;
use hydrant_envelope::wire::{BatchBuilder, EnvelopeView, Kind};

use crate::{
    Batch, ClientConfig, ClientStats, Error, FirehoseClient, RecentQuery, StreamEvent,
    Subscription, recent,
};

/// How far (envelope time, ns) the stream must run past the newest recent envelope before
/// duplicates are no longer looked for. Generous, because instances' clocks and the order in
/// which instances' lines reach the doppler differ by far less than this.
pub const OVERLAP_SLACK_NS: i64 = 10_000_000_000;

/// Recent lines shown by [`follow_with_recent`].
pub const DEFAULT_RECENT_LINES: u32 = 100;

/// Follows `source_id`: the newest [`DEFAULT_RECENT_LINES`] log lines, then the live stream
/// (every envelope type the stream carries).
///
/// # Errors
/// [`Error::Config`] when the config does not validate.
pub fn follow_with_recent(config: ClientConfig, source_id: &str) -> Result<Follow, Error> {
    follow_with_recent_query(config, source_id, RecentQuery::logs(DEFAULT_RECENT_LINES))
}

/// Like [`follow_with_recent`] with an explicit recent query (a `descending` result is turned
/// around so history is always yielded oldest first).
///
/// # Errors
/// [`Error::Config`] when the config does not validate.
pub fn follow_with_recent_query(
    config: ClientConfig,
    source_id: &str,
    query: RecentQuery,
) -> Result<Follow, Error> {
    let client = FirehoseClient::connect(
        config.clone(),
        Subscription::App {
            source_id: source_id.to_owned(),
        },
    )?;
    Ok(Follow {
        client,
        config,
        source_id: source_id.to_owned(),
        query,
        fetched: false,
        pending: VecDeque::new(),
        overlap: None,
    })
}

/// Recent, then live. Read with [`Follow::next`] or [`Follow::into_stream`].
#[derive(Debug)]
pub struct Follow {
    client: FirehoseClient,
    config: ClientConfig,
    source_id: String,
    query: RecentQuery,
    fetched: bool,
    pending: VecDeque<StreamEvent>,
    overlap: Option<Overlap>,
}

/// What recent yielded, while the stream may still repeat it.
#[derive(Debug)]
struct Overlap {
    keys: HashSet<u64>,
    newest: i64,
}

impl Follow {
    /// The next event: [`StreamEvent::Connected`], then the recent envelopes as one
    /// [`StreamEvent::Batch`] (or [`StreamEvent::RecentFailed`]), then live events. `None`
    /// after a [`StreamEvent::Fatal`].
    pub async fn next(&mut self) -> Option<StreamEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            match self.client.next().await? {
                StreamEvent::Connected if !self.fetched => {
                    self.fetched = true;
                    self.pending.push_back(StreamEvent::Connected);
                    self.fetch_recent().await;
                }
                StreamEvent::Batch(batch) => {
                    if let Some(batch) = self.without_repeats(batch) {
                        return Some(StreamEvent::Batch(batch));
                    }
                }
                other => return Some(other),
            }
        }
    }

    /// The same events as a [`Stream`].
    pub fn into_stream(self) -> impl Stream<Item = StreamEvent> {
        futures_util::stream::unfold(self, |mut follow| async move {
            let event = follow.next().await?;
            Some((event, follow))
        })
    }

    /// The underlying client's counters.
    #[must_use]
    pub fn stats(&self) -> ClientStats {
        self.client.stats()
    }

    async fn fetch_recent(&mut self) {
        match recent(&self.config, &self.source_id, &self.query).await {
            Ok(mut envelopes) => {
                if self.query.descending {
                    envelopes.reverse();
                }
                let batch = Batch::from_envelopes(&envelopes);
                let mut overlap = Overlap {
                    keys: HashSet::with_capacity(batch.len() * 2),
                    newest: i64::MIN,
                };
                for view in batch.iter() {
                    let (sequence_key, content_key) = keys(&view);
                    overlap.keys.extend(sequence_key);
                    overlap.keys.insert(content_key);
                    overlap.newest = overlap.newest.max(view.timestamp);
                }
                if !batch.is_empty() {
                    self.overlap = Some(overlap);
                    self.pending.push_back(StreamEvent::Batch(batch));
                }
            }
            Err(error) => self.pending.push_back(StreamEvent::RecentFailed(error)),
        }
    }

    /// Drops envelopes recent already yielded; `None` when nothing is left.
    fn without_repeats(&mut self, batch: Batch) -> Option<Batch> {
        let Some(overlap) = &self.overlap else {
            return Some(batch);
        };
        // Envelopes from the first one past the overlap on are never repeats.
        let mut repeats = 0;
        let mut past: Option<usize> = None;
        for (i, view) in batch.iter().enumerate() {
            if overlap.contains(&view) {
                repeats += 1;
            } else if self.counts_for_window(&view)
                && view.timestamp > overlap.newest.saturating_add(OVERLAP_SLACK_NS)
            {
                past = Some(i);
                break;
            }
        }
        let out = if repeats == 0 {
            Some(batch)
        } else if repeats == batch.len() {
            None
        } else {
            let cutoff = past.unwrap_or(usize::MAX);
            let mut builder = BatchBuilder::with_capacity(batch.bytes().len());
            for (_, view) in batch
                .iter()
                .enumerate()
                .filter(|(i, v)| *i >= cutoff || !overlap.contains(v))
            {
                builder.push(view.bytes());
            }
            let len = builder.count();
            Some(Batch::trusted(builder.take(), len))
        };
        if past.is_some() {
            self.overlap = None;
        }
        out
    }

    /// Only envelope types recent was asked for say anything about where recent ended.
    fn counts_for_window(&self, view: &EnvelopeView<'_>) -> bool {
        let types = &self.query.envelope_types;
        types.is_empty() || types.iter().any(|k| *k == view.kind && *k != Kind::None)
    }
}

impl Overlap {
    fn contains(&self, view: &EnvelopeView<'_>) -> bool {
        let (sequence_key, content_key) = keys(view);
        sequence_key.is_some_and(|k| self.keys.contains(&k)) || self.keys.contains(&content_key)
    }
}

/// The two dedupe keys of an envelope (see the module docs).
fn keys(view: &EnvelopeView<'_>) -> (Option<u64>, u64) {
    let identity = || {
        let mut h = DefaultHasher::new();
        view.source_id.hash(&mut h);
        view.instance_id.hash(&mut h);
        h
    };
    let sequence = (view.sequence != 0).then(|| {
        let mut h = identity();
        1u8.hash(&mut h);
        view.sequence_stream.hash(&mut h);
        view.sequence.hash(&mut h);
        h.finish()
    });
    let mut h = identity();
    2u8.hash(&mut h);
    view.timestamp.hash(&mut h);
    match view.log() {
        Some((payload, err)) => {
            payload.hash(&mut h);
            err.hash(&mut h);
        }
        None => view.body().hash(&mut h),
    }
    (sequence, h.finish())
}
