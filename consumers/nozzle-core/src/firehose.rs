//! The firehose side of every nozzle: one shared subscription read batch by batch, with what
//! the connection itself does (opens, drops, reports loss upstream) counted and logged the same
//! way whichever nozzle reads it.
//!
//! Flow: [`FirehoseClient`] → [`FirehoseReader::next_batch`] → the nozzle's own routing.
//! Invariants:
//! - `nozzle.firehose_connected` reads 1 only while the stream is open; it falls to 0 on a
//!   disconnect, a close, a fatal error, and when the reader is dropped;
//! - `nozzle.firehose_lost` counts only losses the pipeline marked in the stream (the doppler's
//!   and the edge's gap markers, each counted once at the hop that dropped). A nozzle's
//!   subscription is a shard group: the edge deals its envelopes round-robin to the copies that
//!   share the id, so one copy sees every other sequence number of a source, and judging loss by
//!   sequence jumps would count the copies' shares as lost (half the stream with two copies).

use hydrant_emitter::{Counter, Gauge, Registry};
use hydrant_firehose_client::{
    Batch, ClientConfig, Error, FirehoseClient, StreamEvent, Subscription,
};
use tokio_util::sync::CancellationToken;

/// A nozzle's firehose subscription and the metrics it keeps about the stream.
#[derive(Debug)]
pub struct FirehoseReader {
    client: FirehoseClient,
    envelopes: Counter,
    lost: Counter,
    disconnects: Counter,
    connected: Gauge,
}

impl FirehoseReader {
    /// Subscribes to the firehose in the shard group `subscription_id` (copies sharing it split
    /// the stream) and registers the stream's metrics in `registry`. Nothing is read until
    /// [`FirehoseReader::next_batch`]. Sequence tracking is turned off whatever `config` says:
    /// on a shard group a jump is another copy's share, not a loss (see the module's
    /// invariants).
    ///
    /// # Errors
    /// The client refuses `config` (URL, token, limits).
    pub fn connect(
        config: ClientConfig,
        subscription_id: &str,
        registry: &Registry,
    ) -> Result<Self, Error> {
        Self::resume(config, subscription_id, registry, None)
    }

    /// Like [`FirehoseReader::connect`], resuming from what a [`crate::CursorFile`] kept: the
    /// firehose first sends what came after that cursor, and the `ahead` entries the
    /// destinations had already taken past it are counted in `nozzle.duplicates` (they are
    /// sent again: at-least-once).
    ///
    /// # Errors
    /// The client refuses `config` (URL, token, limits).
    pub fn resume(
        mut config: ClientConfig,
        subscription_id: &str,
        registry: &Registry,
        saved: Option<&crate::Saved>,
    ) -> Result<Self, Error> {
        config.track_sequences = false;
        let client = FirehoseClient::resume(
            config,
            Subscription::Firehose {
                subscription_id: subscription_id.to_owned(),
            },
            saved.map(|s| s.cursor.as_str()),
        )?;
        let duplicates = registry.counter(
            "nozzle.duplicates",
            "Envelopes sent again after a restart because the destinations had taken them \
             after the last stored cursor (at-least-once delivery).",
            &[],
        );
        let unsure = registry.counter(
            "nozzle.duplicates_unsure",
            "Envelopes sent again after a restart that were being delivered when the nozzle \
             stopped: duplicates if the destination had taken them (at most one batch per \
             destination).",
            &[],
        );
        if let Some(saved) = saved {
            duplicates.add(saved.ahead);
            unsure.add(saved.unsure);
            tracing::info!(
                ahead = saved.ahead,
                unsure = saved.unsure,
                "resuming the firehose from the stored cursor"
            );
        }
        Ok(Self {
            client,
            envelopes: registry.counter(
                "nozzle.envelopes",
                "Envelopes read from the firehose.",
                &[],
            ),
            lost: registry.counter(
                "nozzle.firehose_lost",
                "Envelopes the firehose reported lost before they reached this nozzle.",
                &[],
            ),
            disconnects: registry.counter(
                "nozzle.firehose_disconnects",
                "Times the firehose connection dropped.",
                &[],
            ),
            connected: registry.gauge(
                "nozzle.firehose_connected",
                "1 while the firehose stream is open.",
                "bool",
                &[],
            ),
        })
    }

    /// The next batch of envelopes (already counted in `nozzle.envelopes`); `None` once
    /// `shutdown` is cancelled or the stream has ended. Connection events in between are
    /// counted and logged here. Cancel-safe: dropping the future loses no batch.
    ///
    /// # Errors
    /// The firehose refused this nozzle for good (token rejected, subscription not found, or
    /// reconnect attempts used up).
    pub async fn next_batch(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Batch>, Error> {
        loop {
            let event = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(None),
                event = self.client.next() => event,
            };
            let Some(event) = event else {
                return Ok(None);
            };
            match event {
                StreamEvent::Batch(batch) => {
                    self.envelopes.add(batch.len() as u64);
                    return Ok(Some(batch));
                }
                StreamEvent::Gap(gap) => {
                    self.lost.add(gap.dropped);
                    tracing::warn!(
                        dropped = gap.dropped,
                        hop = %gap.hop,
                        reason = %gap.reason,
                        "the firehose lost envelopes before this nozzle"
                    );
                }
                StreamEvent::Connected => {
                    self.connected.set(1.0);
                    tracing::info!("firehose connected");
                }
                StreamEvent::Closed { code, reason } => {
                    self.connected.set(0.0);
                    tracing::warn!(code, %reason, "firehose closed the stream");
                }
                StreamEvent::Disconnected { reason, retry_in } => {
                    self.connected.set(0.0);
                    self.disconnects.inc();
                    tracing::warn!(%reason, ?retry_in, "firehose disconnected");
                }
                StreamEvent::Fatal(e) => {
                    self.connected.set(0.0);
                    return Err(e);
                }
                other => tracing::debug!(?other, "firehose event ignored"),
            }
        }
    }
}

impl Drop for FirehoseReader {
    fn drop(&mut self) {
        // Whatever ended the reading, the nozzle no longer has the stream open.
        self.connected.set(0.0);
    }
}
