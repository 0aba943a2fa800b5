//! [`drive`]: the loop that keeps a shared [`Windows`] fed from a firehose subscription.
//!
//! Flow: [`FirehoseClient`] (reconnects, surfaces loss as gaps) → this loop → `observe_batch`
//! under the mutex, one lock per batch → readers lock the same mutex briefly to query.
//!
//! Invariants: the loop never buffers (it reads the next event only after applying the last,
//! so a slow loop slows the socket reader, and the edge's slow-consumer policy decides, visibly,
//! as a gap); every gap is counted in the windows; the connection state is recorded so a
//! consumer can tell "the app is quiet" from "we are not hearing anything".

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::{Stream, StreamExt};
use hydrant_emitter::lock;
use hydrant_firehose_client::{ClientConfig, FirehoseClient, StreamEvent, Subscription};
use tokio_util::sync::CancellationToken;

use crate::{Error, Windows};

/// Windows shared between the driving loop and its readers.
pub type SharedWindows = Arc<Mutex<Windows>>;

/// Where the stream feeding a [`Windows`] stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriveStatus {
    /// True between a `Connected` event and the next disconnect.
    pub connected: bool,
    /// When `connected` last changed.
    pub since: Option<Instant>,
    /// When the last batch was applied.
    pub last_batch: Option<Instant>,
    /// Batches applied.
    pub batches: u64,
    /// Disconnects (each followed by a retry).
    pub disconnects: u64,
}

impl Windows {
    /// Where the feeding stream stands (all defaults when nothing drives these windows).
    #[must_use]
    pub fn stream_status(&self) -> DriveStatus {
        self.stream
    }

    fn set_connected(&mut self, connected: bool, now: Instant) {
        if !connected && self.stream.connected {
            self.stream.disconnects += 1;
        }
        self.stream.connected = connected;
        self.stream.since = Some(now);
    }
}

/// The current instant on Tokio's clock, so paused-time tests drive the windows too.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Subscribes with `config` and feeds every batch into `windows` until `shutdown`.
///
/// # Errors
/// [`Error::Stream`] when the client config is unusable or the stream ends for good (token
/// rejected, not found, `max_attempts` reached).
pub async fn drive(
    config: ClientConfig,
    subscription: Subscription,
    windows: SharedWindows,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let client = FirehoseClient::connect(config, subscription)?;
    drive_stream(client, windows, shutdown).await
}

/// Feeds any stream of firehose events into `windows` until it ends or `shutdown`.
///
/// # Errors
/// [`Error::Stream`] when the stream reports a fatal error.
pub async fn drive_stream<S>(
    mut events: S,
    windows: SharedWindows,
    shutdown: CancellationToken,
) -> Result<(), Error>
where
    S: Stream<Item = StreamEvent> + Unpin,
{
    loop {
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            event = events.next() => event,
        };
        let Some(event) = event else {
            return Ok(());
        };
        let at = now();
        match event {
            StreamEvent::Batch(batch) => {
                let mut w = lock(&windows);
                w.observe_batch(&batch, at);
                w.stream.batches += 1;
                w.stream.last_batch = Some(at);
            }
            StreamEvent::Gap(gap) => lock(&windows).record_gap(&gap, at),
            StreamEvent::Connected => lock(&windows).set_connected(true, at),
            StreamEvent::Closed { .. } | StreamEvent::Disconnected { .. } => {
                lock(&windows).set_connected(false, at);
            }
            StreamEvent::Fatal(error) => {
                lock(&windows).set_connected(false, at);
                return Err(error.into());
            }
            // History is not replayed into windows: they describe the live stream.
            _ => {}
        }
    }
}
