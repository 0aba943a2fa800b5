//! The client half of the pipeline's first hop: a bounded, batching, never-blocking sender of
//! envelopes to the local agent's v2 `BatchSender`.
//!
//! Flow: caller → current batch (a [`BatchBuilder`] under a short lock) → bounded queue of
//! encoded batches (a drop-oldest `hydrant_buffer::Buffer`) → one sender task → one long-lived
//! `BatchSender` stream to the agent (mutual TLS when `tls` is set: the sender presents its
//! role's leaf and accepts only a server whose certificate names `agent`).
//!
//! Invariants:
//! - Emitting never awaits and never waits for the network (invariant 1). When the queue is
//!   full the OLDEST batch is dropped, because the newest data is what an operator needs.
//! - The ledger balances: every envelope handed to `emit*` is, once the emitter has stopped,
//!   counted exactly once as `emitter.sent` or under one `emitter.dropped{reason}`:
//!   `too_large` (over [`hydrant_envelope::MAX_ENVELOPE_BYTES`]), `queue_full`, `send_failed`
//!   (the batch in hand when the stream broke; never retried) or `shutdown` (still queued when
//!   the drain deadline passed, or emitted after the emitter stopped).
//! - "Sent" means handed to the open gRPC stream, as in Loggregator: what the transport held when
//!   a connection died is not known to the sender.

mod encode;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hydrant_buffer::{Buffer, BufferConfig, Depth, DropReason, Limits, Observer};
use hydrant_envelope::raw::Empty;
use hydrant_envelope::raw::ingress::ingress_client::IngressClient;
use hydrant_envelope::v2;
use hydrant_envelope::wire::BatchBuilder;
use hydrant_tls::TlsFiles;
use prost::Message as _;
use serde::Deserialize;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Counter, Error, Gauge, Registry};

use encode::Header;

/// First reconnect delay after the agent could not be reached.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Reconnect delays double up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// After shutdown, how long the sender keeps delivering what is queued (and waits for reporters'
/// final emission) before counting the rest as dropped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Where and how a role sends its own telemetry. Part of every role's config as `[telemetry]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The local agent's v2 ingress URL, e.g. `http://127.0.0.1:3458`. Unset: metrics are only
    /// served on `/metrics`, not emitted into the pipeline.
    pub agent: Option<String>,
    /// How often the role's counters and gauges are emitted as envelopes. Default 5 s (what
    /// Doppler uses).
    pub interval_secs: u64,
    /// Certificates for mutual TLS to the agent (`[telemetry.tls]`): this role's own leaf,
    /// presented to the agent, whose certificate must name `agent`. Unset: plaintext.
    pub tls: Option<TlsFiles>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            agent: None,
            interval_secs: 5,
            tls: None,
        }
    }
}

impl TelemetryConfig {
    /// Starts an emitter and a reporter that emits `registry` every `interval_secs`, when an
    /// agent is configured.
    #[must_use]
    pub fn start(&self, registry: &Registry, shutdown: CancellationToken) -> Option<Emitter> {
        let agent = self.agent.clone()?;
        let emitter = Emitter::start(
            EmitterConfig {
                agent,
                tls: self.tls.clone(),
                ..EmitterConfig::default()
            },
            registry,
            shutdown.clone(),
        );
        spawn_reporter(
            registry.clone(),
            emitter.clone(),
            Duration::from_secs(self.interval_secs.max(1)),
            shutdown,
        );
        Some(emitter)
    }

    /// Checks the section; roles call it from their own `validate`.
    ///
    /// # Errors
    /// `telemetry.agent` is not an `http://host:port` URL, or `telemetry.interval_secs` is 0.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(agent) = &self.agent {
            validate_url("telemetry.agent", agent)?;
        }
        validate_tls("telemetry.tls", self.tls.as_ref())?;
        if self.interval_secs == 0 {
            return Err(Error::Config {
                field: "telemetry.interval_secs",
                message: "must be at least 1 (seconds between metric emissions)".to_owned(),
            });
        }
        Ok(())
    }
}

fn validate_tls(field: &'static str, tls: Option<&TlsFiles>) -> Result<(), Error> {
    tls.map_or(Ok(()), TlsFiles::validate)
        .map_err(|e| Error::Config {
            field,
            message: e.to_string(),
        })
}

fn validate_url(field: &'static str, url: &str) -> Result<(), Error> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Error::Config {
            field,
            message: format!("{url:?} is not a URL; write it as \"http://127.0.0.1:3458\""),
        });
    }
    tonic::transport::Endpoint::from_shared(url.to_owned()).map_err(|e| Error::Config {
        field,
        message: format!("{url:?} is not a valid URL ({e}); write it as \"http://127.0.0.1:3458\""),
    })?;
    Ok(())
}

/// Emitter settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EmitterConfig {
    /// The agent's v2 ingress URL. Default `http://127.0.0.1:3458`.
    pub agent: String,
    /// Flush a batch at this many envelopes. Default 100.
    pub batch_max_envelopes: usize,
    /// Flush a batch at this many encoded bytes. Default 64 KiB.
    pub batch_max_bytes: usize,
    /// Flush a non-empty batch after this long. Default 10 ms.
    pub flush_interval_ms: u64,
    /// Batches waiting to be sent; past this the oldest is dropped and counted. Default 1024.
    pub queue_max_batches: usize,
    /// Certificates for mutual TLS to the agent: the sender's own leaf is presented, and the
    /// agent's certificate must name `agent`. Default unset: plaintext.
    pub tls: Option<TlsFiles>,
}

impl Default for EmitterConfig {
    fn default() -> Self {
        Self {
            agent: "http://127.0.0.1:3458".to_owned(),
            batch_max_envelopes: 100,
            batch_max_bytes: 64 * 1024,
            flush_interval_ms: 10,
            queue_max_batches: 1024,
            tls: None,
        }
    }
}

impl EmitterConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// A field that would make the emitter unable to send; the message names it.
    pub fn validate(&self) -> Result<(), Error> {
        validate_url("agent", &self.agent)?;
        validate_tls("tls", self.tls.as_ref())?;
        let positive = [
            ("batch_max_envelopes", self.batch_max_envelopes),
            ("batch_max_bytes", self.batch_max_bytes),
            ("queue_max_batches", self.queue_max_batches),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::Config {
                    field,
                    message: "must be at least 1".to_owned(),
                });
            }
        }
        if self.flush_interval_ms == 0 {
            return Err(Error::Config {
                field: "flush_interval_ms",
                message: "must be at least 1 (a zero interval would flush on every envelope)"
                    .to_owned(),
            });
        }
        Ok(())
    }
}

/// The emitter's self-metrics, registered once.
#[derive(Debug)]
struct Metrics {
    emitted: Counter,
    sent: Counter,
    too_large: Counter,
    queue_full: Counter,
    send_failed: Counter,
    shutdown: Counter,
    queue_depth: Gauge,
}

impl Metrics {
    fn new(registry: &Registry) -> Self {
        let dropped = |reason| {
            registry.counter(
                "emitter.dropped",
                "envelopes the emitter dropped instead of sending, by reason",
                &[("reason", reason)],
            )
        };
        Self {
            emitted: registry.counter("emitter.emitted", "envelopes handed to the emitter", &[]),
            sent: registry.counter(
                "emitter.sent",
                "envelopes handed to the gRPC stream to the agent",
                &[],
            ),
            too_large: dropped("too_large"),
            queue_full: dropped("queue_full"),
            send_failed: dropped("send_failed"),
            shutdown: dropped("shutdown"),
            queue_depth: registry.gauge(
                "emitter.queue_depth",
                "envelopes waiting in the emitter's queue",
                "count",
                &[],
            ),
        }
    }
}

/// The batch being filled, and scratch space for encoding into it.
#[derive(Debug)]
struct Current {
    builder: BatchBuilder,
    /// When the first envelope of the current batch arrived (drives the time flush).
    started: Option<Instant>,
    /// Set once the sender has taken its final batch; later emits are counted as dropped.
    closed: bool,
    scratch: Vec<u8>,
    body: Vec<u8>,
}

/// Reports the queue's evictions and depth under the emitter's metric names.
#[derive(Debug)]
struct QueueReport {
    queue_full: Counter,
    depth: Gauge,
}

impl Observer for QueueReport {
    fn dropped(&self, reason: DropReason, _items: usize, events: u64) {
        // The queue only evicts: it is never closed (late emits are refused before it) and
        // keeps any batch, whatever its size.
        if reason == DropReason::Evicted {
            self.queue_full.add(events);
        }
    }
    fn depth(&self, depth: Depth) {
        self.depth.set(depth.events as f64);
    }
}

/// Full batches waiting for the sender, oldest first; drop-oldest past `queue_max_batches`.
type Queue = Buffer<(Bytes, usize), QueueReport>;

#[derive(Debug)]
struct Inner {
    batch_max_envelopes: usize,
    batch_max_bytes: usize,
    flush_interval: Duration,
    current: Mutex<Current>,
    queue: Queue,
    /// Wakes the sender: a batch was queued, or the current batch became non-empty.
    wake: Notify,
    /// Reporters that will still emit a final snapshot at shutdown; the sender waits for them.
    reporters: AtomicUsize,
    reporter_done: Notify,
    /// Cancelled when the sender task has finished its drain.
    stopped: CancellationToken,
    metrics: Metrics,
}

/// Locks `mutex`, taking the data over from a task that panicked while holding it: the one
/// poison-tolerant lock of the workspace, here because this is the lowest crate every role
/// depends on (roles reach it as `hydrant_runtime::lock`). A panic while holding the emitter's
/// own locks cannot leave them inconsistent in a way that matters more than losing telemetry.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    /// Appends `envelope` to the current batch, queueing the batch when it is full. Called with
    /// the current-batch lock held, so batches are queued in emit order.
    fn append(&self, current: &mut Current, envelope: &[u8]) {
        if current.builder.is_empty() {
            current.started = Some(Instant::now());
            self.wake.notify_one();
        }
        current.builder.push(envelope);
        if current.builder.count() >= self.batch_max_envelopes
            || current.builder.len_bytes() >= self.batch_max_bytes
        {
            self.queue_current(current);
        }
    }

    fn queue_current(&self, current: &mut Current) {
        if current.builder.is_empty() {
            return;
        }
        let count = current.builder.count();
        let batch = current.builder.take();
        current.started = None;
        self.enqueue(batch, count);
    }

    fn enqueue(&self, batch: Bytes, count: usize) {
        self.queue.push((batch, count));
        self.wake.notify_one();
    }

    fn pop(&self) -> Option<(Bytes, usize)> {
        self.queue.pop()
    }

    /// When the current batch must be flushed, if it holds anything.
    fn flush_deadline(&self) -> Option<Instant> {
        lock(&self.current)
            .started
            .map(|started| started + self.flush_interval)
    }

    fn flush_if_due(&self, now: Instant) {
        let mut current = lock(&self.current);
        if current
            .started
            .is_some_and(|started| started + self.flush_interval <= now)
        {
            self.queue_current(&mut current);
        }
    }

    /// Refuses further emits and queues what is left of the current batch.
    fn close(&self) {
        let mut current = lock(&self.current);
        current.closed = true;
        self.queue_current(&mut current);
    }

    /// Encodes with `build` into the scratch buffers and appends the result.
    fn emit_with(&self, build: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>)) {
        self.metrics.emitted.inc();
        let mut current = lock(&self.current);
        if current.closed {
            self.metrics.shutdown.inc();
            return;
        }
        let mut scratch = std::mem::take(&mut current.scratch);
        let mut body = std::mem::take(&mut current.body);
        build(&mut scratch, &mut body);
        if scratch.len() > hydrant_envelope::MAX_ENVELOPE_BYTES {
            self.metrics.too_large.inc();
        } else {
            self.append(&mut current, &scratch);
        }
        // Keep the buffers for the next call, but not a one-off huge allocation.
        if scratch.capacity() <= 2 * self.batch_max_bytes {
            current.scratch = scratch;
        }
        if body.capacity() <= 2 * self.batch_max_bytes {
            current.body = body;
        }
    }
}

/// A cheap-to-clone handle for emitting envelopes. Emitting never blocks.
#[derive(Debug, Clone)]
pub struct Emitter {
    inner: Arc<Inner>,
}

impl Emitter {
    /// Starts the background sender. Its counters (`emitter.emitted`, `emitter.sent`,
    /// `emitter.dropped{reason}`) and the `emitter.queue_depth` gauge are registered in
    /// `registry`. Must be called inside a tokio runtime.
    ///
    /// A config that fails [`EmitterConfig::validate`] still yields a working handle: its
    /// envelopes are queued and counted as dropped, and the problem is logged.
    #[must_use]
    pub fn start(config: EmitterConfig, registry: &Registry, shutdown: CancellationToken) -> Self {
        let metrics = Metrics::new(registry);
        let inner = Arc::new(Inner {
            batch_max_envelopes: config.batch_max_envelopes.max(1),
            batch_max_bytes: config.batch_max_bytes.max(1),
            flush_interval: Duration::from_millis(config.flush_interval_ms.max(1)),
            current: Mutex::new(Current {
                builder: BatchBuilder::with_capacity(config.batch_max_bytes.min(1 << 20)),
                started: None,
                closed: false,
                scratch: Vec::new(),
                body: Vec::new(),
            }),
            queue: Buffer::with_observer(
                BufferConfig::drop_oldest(Limits::UNBOUNDED.items(config.queue_max_batches.max(1))),
                QueueReport {
                    queue_full: metrics.queue_full.clone(),
                    depth: metrics.queue_depth.clone(),
                },
            ),
            wake: Notify::new(),
            reporters: AtomicUsize::new(0),
            reporter_done: Notify::new(),
            stopped: CancellationToken::new(),
            metrics,
        });
        let endpoint = match config
            .validate()
            .and_then(|()| endpoint(&config.agent, config.tls.as_ref()))
        {
            Ok(endpoint) => Some(endpoint),
            Err(error) => {
                tracing::warn!(%error, "emitter cannot reach the agent; envelopes will be dropped");
                None
            }
        };
        tokio::spawn(Sender::new(inner.clone(), endpoint, shutdown).run());
        Self { inner }
    }

    /// Emits one envelope (encoded here).
    pub fn emit(&self, envelope: &v2::Envelope) {
        self.inner.emit_with(|scratch, _| {
            scratch.clear();
            // Encoding into a Vec grows it as needed, so it cannot run out of space.
            let _ = envelope.encode(scratch);
        });
    }

    /// Emits one already-encoded envelope. It is not validated here: the agent rejects and
    /// counts malformed envelopes.
    pub fn emit_encoded(&self, envelope: &[u8]) {
        self.inner.metrics.emitted.inc();
        if envelope.len() > hydrant_envelope::MAX_ENVELOPE_BYTES {
            self.inner.metrics.too_large.inc();
            return;
        }
        let mut current = lock(&self.inner.current);
        if current.closed {
            self.inner.metrics.shutdown.inc();
            return;
        }
        self.inner.append(&mut current, envelope);
    }

    /// Emits one log line with `tags["source_type"] = source_type` (`APP/PROC/WEB`, `RTR`,
    /// `STG`, ...). `is_err` marks it as standard error.
    pub fn log(
        &self,
        source_id: &str,
        instance_id: &str,
        source_type: &str,
        payload: &[u8],
        is_err: bool,
    ) {
        self.log_with_tags(
            source_id,
            instance_id,
            payload,
            is_err,
            &[("source_type", source_type)],
        );
    }

    /// Emits one log line with arbitrary tags.
    pub fn log_with_tags(
        &self,
        source_id: &str,
        instance_id: &str,
        payload: &[u8],
        is_err: bool,
        tags: &[(&str, &str)],
    ) {
        let header = header(source_id, instance_id, tags);
        self.inner.emit_with(|out, body| {
            encode::log_body(body, payload, is_err);
            encode::envelope(out, &header, encode::LOG, body);
        });
    }

    /// Emits a counter increment of `delta` (Loggregator's agents compute `total`).
    pub fn counter(
        &self,
        source_id: &str,
        instance_id: &str,
        name: &str,
        delta: u64,
        tags: &[(&str, &str)],
    ) {
        let header = header(source_id, instance_id, tags);
        self.inner.emit_with(|out, body| {
            encode::counter_body(body, name, delta, 0);
            encode::envelope(out, &header, encode::COUNTER, body);
        });
    }

    /// Emits a gauge of related metrics, each `(name, value, unit)`.
    pub fn gauge(
        &self,
        source_id: &str,
        instance_id: &str,
        metrics: &[(&str, f64, &str)],
        tags: &[(&str, &str)],
    ) {
        let header = header(source_id, instance_id, tags);
        self.inner.emit_with(|out, body| {
            encode::gauge_body(body, metrics);
            encode::envelope(out, &header, encode::GAUGE, body);
        });
    }

    /// Emits a timer (start and stop in UNIX nanoseconds), e.g. one HTTP request.
    pub fn timer(
        &self,
        source_id: &str,
        instance_id: &str,
        name: &str,
        start_nanos: i64,
        stop_nanos: i64,
        tags: &[(&str, &str)],
    ) {
        let header = header(source_id, instance_id, tags);
        self.inner.emit_with(|out, body| {
            encode::timer_body(body, name, start_nanos, stop_nanos);
            encode::envelope(out, &header, encode::TIMER, body);
        });
    }

    /// Emits an event (a crash, a scaling decision).
    pub fn event(
        &self,
        source_id: &str,
        instance_id: &str,
        title: &str,
        body_text: &str,
        tags: &[(&str, &str)],
    ) {
        let header = header(source_id, instance_id, tags);
        self.inner.emit_with(|out, body| {
            encode::event_body(body, title, body_text);
            encode::envelope(out, &header, encode::EVENT, body);
        });
    }

    /// Queues the current partial batch now instead of waiting for `flush_interval_ms`.
    pub fn flush(&self) {
        let mut current = lock(&self.inner.current);
        self.inner.queue_current(&mut current);
    }

    /// Resolves once shutdown has been requested and the sender has delivered (or counted as
    /// dropped) everything emitted before it stopped. Roles await it last so their final
    /// metrics leave the process.
    pub async fn stopped(&self) {
        self.inner.stopped.cancelled().await;
    }
}

fn header<'a>(
    source_id: &'a str,
    instance_id: &'a str,
    tags: &'a [(&'a str, &'a str)],
) -> Header<'a> {
    Header {
        timestamp: hydrant_envelope::now_nanos(),
        source_id,
        instance_id,
        tags,
    }
}

/// How the sender reaches the agent: the gRPC endpoint, and with mutual TLS the connector that
/// runs the handshake.
#[derive(Debug, Clone)]
struct Target {
    endpoint: tonic::transport::Endpoint,
    connector: Option<hydrant_tls::Connector>,
}

fn endpoint(url: &str, tls: Option<&TlsFiles>) -> Result<Target, Error> {
    let connector = tls
        .map(|files| {
            let material = hydrant_tls::Material::load(files)?;
            hydrant_tls::ClientTls::new(material, hydrant_tls::Identity::Agent)
        })
        .transpose()
        .map_err(|e| Error::Config {
            field: "tls",
            message: e.to_string(),
        })?
        .map(hydrant_tls::Connector::new);
    let endpoint =
        tonic::transport::Endpoint::from_shared(url.to_owned()).map_err(|e| Error::Config {
            field: "agent",
            message: format!("{url:?} is not a valid URL: {e}"),
        })?;
    // tonic's default HTTP/2 windows hold one stream to ~0.1 M envelopes/s; keepalive notices a
    // dead agent whose socket never closed.
    let endpoint = endpoint
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(1))
        .keep_alive_while_idle(true);
    Ok(Target {
        endpoint,
        connector,
    })
}

/// One open v2 `BatchSender` stream: batches go in through `tx`; `rpc` ends when the stream
/// does. Shared by the emitter (to its agent) and the agent (to its dopplers), the two ends that
/// push encoded batches over Ingress.
#[derive(Debug)]
pub struct BatchStream {
    tx: mpsc::Sender<Bytes>,
    rpc: JoinHandle<Result<tonic::Response<Empty>, tonic::Status>>,
}

impl BatchStream {
    /// Connects (through `tls` when given) and opens the stream.
    pub async fn open(
        endpoint: &tonic::transport::Endpoint,
        tls: Option<&hydrant_tls::Connector>,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = hydrant_tls::grpc::connect(endpoint, tls).await?;
        let mut client = IngressClient::new(channel)
            .max_decoding_message_size(hydrant_envelope::MAX_MESSAGE_BYTES);
        // One slot: the sender learns within one batch that the stream has broken, and holds
        // that batch (to count it) rather than losing it inside a channel.
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let rpc = tokio::spawn(async move {
            client
                .batch_sender(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        Ok(Self { tx, rpc })
    }

    /// Hands one batch to the stream. `false` when the stream has ended (the batch is lost).
    pub async fn send(&mut self, batch: Bytes) -> bool {
        tokio::select! {
            biased;
            result = self.tx.send(batch) => result.is_ok(),
            _ = &mut self.rpc => false,
        }
    }

    /// Resolves once the stream has ended (the receiver closed it or the connection broke).
    /// Once it has, the stream is spent: drop it rather than waiting or sending again.
    pub async fn ended(&mut self) {
        let _ = (&mut self.rpc).await;
    }

    /// Ends the stream cleanly and waits (up to `deadline`) for the receiver to have read it all.
    pub async fn finish(self, deadline: Instant) {
        drop(self.tx);
        let mut rpc = self.rpc;
        if tokio::time::timeout_at(deadline, &mut rpc).await.is_err() {
            rpc.abort();
        }
    }
}

/// The background task that owns the connection to the agent.
#[derive(Debug)]
struct Sender {
    inner: Arc<Inner>,
    endpoint: Option<Target>,
    shutdown: CancellationToken,
    stream: Option<BatchStream>,
    /// A batch taken from the queue but not yet handed over when shutdown came; the drain
    /// delivers or counts it first.
    held: Option<(Bytes, usize)>,
    backoff: Duration,
    next_attempt: Instant,
}

impl Sender {
    fn new(inner: Arc<Inner>, endpoint: Option<Target>, shutdown: CancellationToken) -> Self {
        Self {
            inner,
            endpoint,
            shutdown,
            stream: None,
            held: None,
            backoff: BACKOFF_MIN,
            next_attempt: Instant::now(),
        }
    }

    async fn run(mut self) {
        while !self.shutdown.is_cancelled() {
            self.step().await;
        }
        self.drain().await;
        self.inner.stopped.cancel();
    }

    async fn connect(&mut self) {
        let Some(endpoint) = &self.endpoint else {
            return;
        };
        match BatchStream::open(&endpoint.endpoint, endpoint.connector.as_ref()).await {
            Ok(stream) => {
                tracing::debug!("emitter connected to the agent");
                self.stream = Some(stream);
                self.backoff = BACKOFF_MIN;
            }
            Err(error) => {
                tracing::debug!(%error, "emitter cannot connect to the agent");
                self.broken();
            }
        }
    }

    /// The stream failed or could not open: retry later, backing off.
    fn broken(&mut self) {
        self.stream = None;
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// One round: connect if due, send one batch if possible, otherwise wait for work.
    async fn step(&mut self) {
        self.inner.flush_if_due(Instant::now());
        if self.stream.is_none() && self.endpoint.is_some() && Instant::now() >= self.next_attempt {
            let shutdown = self.shutdown.clone();
            tokio::select! {
                () = self.connect() => {}
                () = shutdown.cancelled() => {}
            }
            return;
        }
        if let Some(stream) = self.stream.as_mut()
            && let Some((batch, count)) = self.inner.pop()
        {
            let copy = batch.clone();
            tokio::select! {
                sent = stream.send(batch) => {
                    if sent {
                        self.inner.metrics.sent.add(count as u64);
                    } else {
                        self.inner.metrics.send_failed.add(count as u64);
                        self.broken();
                    }
                }
                () = self.shutdown.cancelled() => {
                    // Not handed over yet: the drain delivers it or counts it.
                    self.held = Some((copy, count));
                }
            }
            return;
        }
        let flush_at = self.inner.flush_deadline();
        let reconnect_at =
            (self.stream.is_none() && self.endpoint.is_some()).then_some(self.next_attempt);
        let slot = &mut self.stream;
        let stream_ended = async {
            match slot.as_mut() {
                Some(stream) => {
                    let _ = (&mut stream.rpc).await;
                }
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            () = self.inner.wake.notified() => false,
            () = sleep_until(flush_at) => false,
            () = sleep_until(reconnect_at) => false,
            () = stream_ended => true,
            () = self.shutdown.cancelled() => false,
        };
        if ended {
            tracing::debug!("the agent ended the emitter's stream");
            self.broken();
        }
    }

    /// After shutdown: let reporters emit their last snapshot, then deliver what is queued until
    /// the deadline and count the rest.
    async fn drain(&mut self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            // Registering interest before checking avoids missing the last reporter's signal.
            let done = self.inner.reporter_done.notified();
            if self.inner.reporters.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                break;
            }
        }
        self.inner.close();
        if self.stream.is_none()
            && let Some(endpoint) = &self.endpoint
            && (self.held.is_some() || self.inner.queue.depth_events() > 0)
            && let Ok(Ok(stream)) = tokio::time::timeout_at(
                deadline,
                BatchStream::open(&endpoint.endpoint, endpoint.connector.as_ref()),
            )
            .await
        {
            self.stream = Some(stream);
        }
        while let Some((batch, count)) = self.held.take().or_else(|| self.inner.pop()) {
            let Some(stream) = self.stream.as_mut() else {
                self.inner.metrics.shutdown.add(count as u64);
                continue;
            };
            match tokio::time::timeout_at(deadline, stream.send(batch)).await {
                Ok(true) => self.inner.metrics.sent.add(count as u64),
                Ok(false) => {
                    self.inner.metrics.send_failed.add(count as u64);
                    self.stream = None;
                }
                Err(_) => {
                    self.inner.metrics.shutdown.add(count as u64);
                    self.stream = None;
                }
            }
        }
        if let Some(stream) = self.stream.take() {
            stream.finish(deadline).await;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Keeps a reporter counted in [`Inner::reporters`] until its final emission is done.
#[derive(Debug)]
struct ReporterGuard(Arc<Inner>);

impl Drop for ReporterGuard {
    fn drop(&mut self) {
        self.0.reporters.fetch_sub(1, Ordering::AcqRel);
        self.0.reporter_done.notify_waiters();
    }
}

/// Emits `registry` as envelopes every `interval` until `shutdown`, and once more after it, so
/// the last counter deltas are not lost; the emitter waits for that final snapshot before it
/// drains.
pub fn spawn_reporter(
    registry: Registry,
    emitter: Emitter,
    interval: Duration,
    shutdown: CancellationToken,
) {
    // Counted before the task starts, so a shutdown that races the spawn still waits for it.
    emitter.inner.reporters.fetch_add(1, Ordering::AcqRel);
    let guard = ReporterGuard(emitter.inner.clone());
    let interval = interval.max(Duration::from_millis(1));
    tokio::spawn(async move {
        let _guard = guard;
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => report(&registry, &emitter),
                () = shutdown.cancelled() => break,
            }
        }
        report(&registry, &emitter);
        emitter.flush();
    });
}

fn report(registry: &Registry, emitter: &Emitter) {
    for envelope in registry.take_envelopes() {
        emitter.emit(&envelope);
    }
}
