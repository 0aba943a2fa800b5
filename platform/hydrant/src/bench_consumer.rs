//! The benchmark's consumer: one WebSocket firehose connection that counts the generators'
//! envelopes and records emit→receive latency. It walks frames with the zero-copy view, as a
//! well-written nozzle would, so the bench measures the pipeline rather than a decoder.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use hdrhistogram::Histogram;
use hydrant_envelope::wire::{BatchIter, EnvelopeView};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

#[derive(Debug)]
pub struct Consumer {
    delivered: Arc<AtomicU64>,
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
            connected: Arc::new(AtomicBool::new(true)),
            latency: Arc::new(Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?)),
        };
        let delivered = consumer.delivered.clone();
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
                    if !view.source_id.starts_with("bench-") {
                        continue;
                    }
                    n += 1;
                    let micros = u64::try_from((now - view.timestamp) / 1000).unwrap_or(0);
                    let _ = hist.record(micros.max(1));
                }
                drop(hist);
                delivered.fetch_add(n, Ordering::Relaxed);
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

    /// Emit→receive latency in microseconds.
    pub fn latency(&self) -> Histogram<u64> {
        self.latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
