//! The benchmark's consumer: one WebSocket firehose connection that counts the generators'
//! envelopes and records emit→receive latency. It walks frames with the zero-copy view, as a
//! well-written nozzle would, so the bench measures the pipeline rather than a decoder.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use hdrhistogram::Histogram;
use hydrant_envelope::gap::Gap;
use hydrant_envelope::wire::{BatchIter, EnvelopeView, Kind};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

#[derive(Debug)]
pub struct Consumer {
    delivered: Arc<AtomicU64>,
    /// Envelopes the pipeline told this consumer it lost, summed from in-band gap markers.
    gap_reported: Arc<AtomicU64>,
    /// Gap marker envelopes made by any hop (agent, doppler) that reached this consumer.
    doppler_markers: Arc<AtomicU64>,
    /// Wall-clock nanoseconds of the last frame that held generator envelopes.
    last_delivery_ns: Arc<AtomicU64>,
    connected: Arc<AtomicBool>,
    latency: Arc<Mutex<Histogram<u64>>>,
}

impl Consumer {
    /// Connects to `/firehose/{subscription}` and starts counting in the background.
    pub async fn start(
        firehose_url: &str,
        token: &str,
        subscription: &str,
    ) -> anyhow::Result<Self> {
        let ws_url = format!(
            "{}/firehose/{subscription}",
            firehose_url.replacen("http://", "ws://", 1)
        );
        let mut request = ws_url.as_str().into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("cannot open the firehose at {ws_url}"))?;
        let consumer = Self {
            delivered: Arc::default(),
            gap_reported: Arc::default(),
            doppler_markers: Arc::default(),
            last_delivery_ns: Arc::default(),
            connected: Arc::new(AtomicBool::new(true)),
            latency: Arc::new(Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?)),
        };
        let delivered = consumer.delivered.clone();
        let gap_reported = consumer.gap_reported.clone();
        let doppler_markers = consumer.doppler_markers.clone();
        let last_delivery_ns = consumer.last_delivery_ns.clone();
        let latency = consumer.latency.clone();
        let connected = consumer.connected.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = socket.next().await {
                let Message::Binary(frame) = msg else {
                    continue;
                };
                let now = hydrant_envelope::now_nanos();
                let mut n = 0;
                // One lock per frame (a batch of up to ~100 envelopes), not per envelope.
                let mut hist = latency.lock().unwrap_or_else(PoisonError::into_inner);
                for envelope in BatchIter::new(&frame).flatten() {
                    let Ok(view) = EnvelopeView::parse(envelope) else {
                        continue;
                    };
                    // Gap markers are envelopes a hop added to the stream: tally them apart
                    // (the ledger needs the ones the doppler made) and never as data.
                    if view.kind == Kind::Event
                        && let Some(gap) = Gap::from_view(&view)
                    {
                        gap_reported.fetch_add(gap.dropped, Ordering::Relaxed);
                        // The agent's and the doppler's are envelopes injected before the
                        // firehose; the edge's own are made after every drop it counts.
                        if gap.hop == "doppler" || gap.hop == "agent" {
                            doppler_markers.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    if view.kind != Kind::Log || !view.source_id.starts_with("bench-") {
                        continue;
                    }
                    n += 1;
                    let micros = u64::try_from((now - view.timestamp) / 1000).unwrap_or(0);
                    let _ = hist.record(micros.max(1));
                }
                drop(hist);
                if n > 0 {
                    delivered.fetch_add(n, Ordering::Relaxed);
                    last_delivery_ns.store(u64::try_from(now).unwrap_or(0), Ordering::Relaxed);
                }
            }
            connected.store(false, Ordering::Relaxed);
        });
        Ok(consumer)
    }

    /// Fails if the connection dropped before `timeout`.
    pub async fn wait_connected(&self, _timeout: Duration) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.connected.load(Ordering::Relaxed),
            "the firehose closed the benchmark's connection"
        );
        Ok(())
    }

    /// Generator envelopes received so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Envelopes the pipeline reported lost to this consumer in-band (gap markers).
    pub fn gap_reported(&self) -> u64 {
        self.gap_reported.load(Ordering::Relaxed)
    }

    /// Gap marker envelopes from the agent or the doppler that reached this consumer.
    pub fn doppler_markers(&self) -> u64 {
        self.doppler_markers.load(Ordering::Relaxed)
    }

    /// Wall-clock nanoseconds when the last generator envelope arrived (0 before any).
    pub fn last_delivery_ns(&self) -> i64 {
        i64::try_from(self.last_delivery_ns.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
    }

    /// Emit→receive latency in microseconds.
    pub fn latency(&self) -> Histogram<u64> {
        self.latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
