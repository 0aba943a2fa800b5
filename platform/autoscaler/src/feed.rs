//! The autoscaler's feed: its own firehose subscription folded into the rolling windows, keeping
//! only the envelopes of the apps this copy decides for.
//!
//! Flow: firehose edge (`/firehose/{subscription_id}-{instance_index}`: every copy has its own
//! id, so each receives the whole stream) → [`FirehoseClient`] → this loop → [`Windows::observe`]
//! for envelopes whose `source_id` is in the watched set (this copy's apps under a policy);
//! everything else is counted as skipped and forgotten.
//!
//! Invariants: the loop never buffers (it reads the next event only after applying the last, so
//! a slow autoscaler is the edge's slow consumer, visibly, as a gap); a loss is recorded against
//! the app it names when that app is watched, against the whole stream when it spans sources,
//! and ignored when it concerns only another copy's app; [`FeedStatus`] tells "the app is quiet"
//! from "we hear nothing".

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use hydrant_emitter::Counter;
use hydrant_envelope::gap::GAP_SOURCE;
use hydrant_firehose_client::{FirehoseClient, StreamEvent};
use hydrant_windows::SharedWindows;
use tokio_util::sync::CancellationToken;

/// The app guids whose envelopes go into the windows, replaced after every policy poll.
pub type Watched = Arc<RwLock<HashSet<String>>>;

/// Where the feed stands, shared with the evaluation loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedStatus {
    /// True between a `Connected` event and the next disconnect.
    pub connected: bool,
    /// When the last batch arrived (whether or not it held a watched app's envelopes).
    pub last_batch: Option<Instant>,
}

/// The feed's status, shared.
pub type SharedStatus = Arc<Mutex<FeedStatus>>;

/// What the feed counts.
#[derive(Debug, Clone)]
pub(crate) struct FeedCounters {
    pub(crate) observed: Counter,
    pub(crate) skipped: Counter,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Reads `client` into `windows` until `shutdown` or a fatal stream error (logged; the
/// autoscaler then holds every app, saying the firehose is not connected).
pub(crate) async fn run(
    mut client: FirehoseClient,
    windows: SharedWindows,
    watched: Watched,
    status: SharedStatus,
    counters: FeedCounters,
    shutdown: CancellationToken,
) {
    let set_connected = |connected: bool| {
        status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .connected = connected;
    };
    loop {
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            event = client.next() => event,
        };
        let Some(event) = event else {
            set_connected(false);
            return;
        };
        let at = now();
        match event {
            StreamEvent::Batch(batch) => {
                let (mut kept, mut skipped) = (0u64, 0u64);
                {
                    let watched = watched.read().unwrap_or_else(PoisonError::into_inner);
                    let mut w = windows.lock().unwrap_or_else(PoisonError::into_inner);
                    for view in batch.iter() {
                        if watched.contains(view.source_id) {
                            w.observe(&view, at);
                            kept += 1;
                        } else {
                            skipped += 1;
                        }
                    }
                }
                counters.observed.add(kept);
                counters.skipped.add(skipped);
                status
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .last_batch = Some(at);
            }
            StreamEvent::Gap(gap) => {
                let ours = gap.source_id.is_empty()
                    || gap.source_id == GAP_SOURCE
                    || watched
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .contains(&gap.source_id);
                if ours {
                    windows
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record_gap(&gap, at);
                }
            }
            StreamEvent::Connected => set_connected(true),
            StreamEvent::Closed { .. } | StreamEvent::Disconnected { .. } => set_connected(false),
            StreamEvent::Fatal(error) => {
                set_connected(false);
                tracing::error!(%error, "autoscaler: the firehose stream ended for good; every app holds");
                return;
            }
            // History is not replayed into windows: they describe the live stream.
            _ => {}
        }
    }
}
