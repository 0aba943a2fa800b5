//! The syslog nozzle role: `run` reads the firehose and keeps every drain fed.
//!
//! Flow: [`FirehoseClient`] (shared subscription) → reader loop (each envelope encoded once
//! per distinct [`EncoderOptions`] among the drains) → one [`DestinationQueue`] per drain →
//! one [`run_sender`] task per drain → the drain over TCP.
//!
//! Invariants: the reader never waits on a drain — a push evicts that drain's oldest lines and
//! counts them, so a slow or dead drain costs only its own data; on shutdown the drains get
//! `shutdown_drain_ms` to take what is queued and everything left is counted as
//! `dropped{reason="shutdown"}`; drains are named only by their masked URL.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hydrant_emitter::{Counter, Gauge, Registry};
use hydrant_firehose_client::{FirehoseClient, StreamEvent, Subscription};
use hydrant_nozzle_core::{CircuitBreaker, DestinationQueue, NozzleMetrics};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{Config, EncoderOptions, Error, TcpSender, encode, run_sender};

/// The role's name in its metrics and self-telemetry.
pub const ROLE: &str = "nozzle-syslog";

/// Grace after the drain deadline for senders stuck in a write before they are aborted.
const ABORT_GRACE: Duration = Duration::from_millis(500);

/// The sockets the nozzle serves, bound by the caller (tests bind `127.0.0.1:0`).
#[derive(Debug)]
pub struct Listeners {
    /// `/healthz` and `/metrics` (`Config::admin_listen`, default `127.0.0.1:14840`).
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds `config.admin_listen`.
    ///
    /// # Errors
    /// [`Error::Bind`] naming the field.
    pub async fn bind(config: &Config) -> Result<Self, Error> {
        let admin = TcpListener::bind(&config.admin_listen)
            .await
            .map_err(|source| Error::Bind {
                field: "admin_listen",
                addr: config.admin_listen.clone(),
                source,
            })?;
        Ok(Self { admin })
    }
}

/// One drain as the reader sees it.
struct Drain {
    queue: Arc<DestinationQueue<Bytes>>,
    metrics: NozzleMetrics,
    /// Index into the distinct encoder option sets.
    options: usize,
}

/// What the reader counts about the firehose itself.
struct ReaderMetrics {
    envelopes: Counter,
    firehose_lost: Counter,
    reconnects: Counter,
    connected: Gauge,
}

impl ReaderMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            envelopes: registry.counter(
                "nozzle.envelopes",
                "Envelopes read from the firehose.",
                &[],
            ),
            firehose_lost: registry.counter(
                "nozzle.firehose_lost",
                "Envelopes the firehose reported lost before they reached this nozzle.",
                &[],
            ),
            reconnects: registry.counter(
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
        }
    }
}

/// Runs the nozzle until `shutdown` is cancelled (or the firehose refuses it for good), then
/// gives the drains `shutdown_drain_ms` to take what is queued and returns.
///
/// # Errors
/// An invalid config, a firehose that rejects the token or subscription, or a failed admin
/// server.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate()?;
    let registry = Registry::new(ROLE, &config.instance_id);
    let reader_metrics = ReaderMetrics::new(&registry);

    let mut option_sets: Vec<EncoderOptions> = Vec::new();
    let mut drains = Vec::with_capacity(config.drains.len());
    let mut senders = JoinSet::new();
    // Senders outlive the reader: they stop on their own once their closed queue is empty,
    // or on this token when the drain deadline passes.
    let senders_stop = CancellationToken::new();
    for (index, url) in config.drains.iter().enumerate() {
        let (addr, options) = config.drain(index)?;
        let options = match option_sets.iter().position(|o| *o == options) {
            Some(i) => i,
            None => {
                option_sets.push(options);
                option_sets.len() - 1
            }
        };
        let metrics = NozzleMetrics::new(&registry, url);
        let queue = Arc::new(DestinationQueue::new(config.queue.clone(), metrics.clone()));
        let sender = TcpSender::new(addr, url, Duration::from_millis(config.write_timeout_ms));
        senders.spawn(run_sender(
            Arc::clone(&queue),
            sender,
            config.retry.clone(),
            CircuitBreaker::new(config.breaker.clone()),
            metrics.clone(),
            senders_stop.clone(),
        ));
        drains.push(Drain {
            queue,
            metrics,
            options,
        });
    }

    let admin = tokio::spawn(hydrant_emitter::admin::serve(
        listeners.admin,
        hydrant_emitter::admin::router(registry.clone()),
        shutdown.clone(),
    ));
    let telemetry = config.telemetry.start(&registry, shutdown.clone());
    let client = FirehoseClient::connect(
        config.firehose.clone(),
        Subscription::Firehose {
            subscription_id: config.subscription_id.clone(),
        },
    )?;
    tracing::info!(
        subscription_id = %config.subscription_id,
        drains = drains.len(),
        encodings = option_sets.len(),
        "syslog nozzle reading the firehose"
    );

    let read = read_firehose(client, &option_sets, &drains, &reader_metrics, &shutdown).await;
    // Whatever ended the reader, stop the rest too.
    shutdown.cancel();
    reader_metrics.connected.set(0.0);

    for drain in &drains {
        drain.queue.close();
    }
    let deadline = Duration::from_millis(config.shutdown_drain_ms);
    let drained = tokio::time::timeout(deadline, async {
        while senders.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        senders_stop.cancel();
        let mut lost = 0;
        for drain in &drains {
            lost += drain.queue.discard("shutdown");
        }
        tracing::warn!(lost, "drains did not take everything before the deadline");
        let grace = tokio::time::timeout(ABORT_GRACE, async {
            while senders.join_next().await.is_some() {}
        })
        .await;
        if grace.is_err() {
            senders.shutdown().await;
        }
    }

    let admin_result = admin.await;
    if let Some(emitter) = telemetry {
        emitter.stopped().await;
    }
    read?;
    match admin_result {
        Ok(Ok(())) | Err(_) => Ok(()),
        Ok(Err(e)) => Err(Error::Admin(e)),
    }
}

/// The reader loop: batches in, frames pushed to every drain that wants them.
async fn read_firehose(
    mut client: FirehoseClient,
    option_sets: &[EncoderOptions],
    drains: &[Drain],
    metrics: &ReaderMetrics,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            event = client.next() => event,
        };
        let Some(event) = event else {
            return Ok(());
        };
        match event {
            StreamEvent::Batch(batch) => {
                metrics.envelopes.add(batch.len() as u64);
                for view in batch.iter() {
                    for (set, options) in option_sets.iter().enumerate() {
                        buf.clear();
                        if encode(&view, options, &mut buf) == 0 {
                            continue;
                        }
                        // One queue entry per envelope, shared by every drain of this set.
                        let frames = Bytes::copy_from_slice(&buf);
                        for drain in drains.iter().filter(|d| d.options == set) {
                            drain.metrics.received(1);
                            drain.queue.push(frames.clone(), frames.len());
                        }
                    }
                }
            }
            StreamEvent::Gap(gap) => {
                metrics.firehose_lost.add(gap.dropped);
                tracing::warn!(
                    dropped = gap.dropped,
                    hop = %gap.hop,
                    reason = %gap.reason,
                    "the firehose lost envelopes before this nozzle"
                );
            }
            StreamEvent::Connected => {
                metrics.connected.set(1.0);
                tracing::info!("firehose connected");
            }
            StreamEvent::Closed { code, reason } => {
                metrics.connected.set(0.0);
                tracing::warn!(code, %reason, "firehose closed the stream");
            }
            StreamEvent::Disconnected { reason, retry_in } => {
                metrics.connected.set(0.0);
                metrics.reconnects.inc();
                tracing::warn!(%reason, ?retry_in, "firehose disconnected");
            }
            StreamEvent::Fatal(e) => {
                metrics.connected.set(0.0);
                return Err(Error::Firehose(e));
            }
            other => tracing::debug!(?other, "firehose event ignored"),
        }
    }
}
