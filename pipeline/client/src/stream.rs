//! [`FirehoseClient`]: one WebSocket subscription to the firehose edge, kept alive across drops.
//!
//! Flow: edge `/firehose/{id}` or `/apps/{id}/stream` → socket reader task (authenticate,
//! split frames into batches and gaps, track sequences, reconnect with capped exponential
//! backoff and jitter) → bounded event queue → the consumer's `next()`.
//!
//! Invariants:
//! - the queue is bounded (`buffer_events`); when it is full the reader stops reading the
//!   socket, so memory never grows with a slow consumer: the edge's slow-consumer policy (a gap
//!   marker, or close 1008) decides instead, and both reach the consumer as events;
//! - 401, 403 and 404 are final: they end the stream with one [`StreamEvent::Fatal`] instead of
//!   a retry loop that can never succeed; the one exception is a token that can be renewed
//!   (a [`TokenSource`]): a 401 or a close 1008 "token expired" renews it once and reconnects at
//!   once, without back-off, and a freshly renewed token that is refused again is final;
//! - a static token that has expired ends the stream with [`Error::TokenExpired`];
//! - with a renewable JWT on a firehose subscription, a successor connection with a renewed
//!   token joins the group shortly before `exp`, so the edge's expiry close never leaves the
//!   group without a member (envelopes it would route to nobody, uncounted);
//! - everything else (refused, reset, close frames, idle) is retried, and the consumer is told
//!   what happened and when the next attempt is;
//! - text that came from the server (close reasons, error bodies) is escaped before it is put
//!   in an event, because consumers print events on terminals;
//! - every reconnect resumes: the client keeps the cursor of the last frame it read and sends
//!   it back (`?cursor=`), so the edge replays what was missed while it was away (within the
//!   dopplers' window; past it, a gap marker with the exact count), even across an edge
//!   restart. [`FirehoseClient::resume`] starts from a cursor a consumer kept itself.
//!   The first connection sends an empty `?cursor=`, so the edge closes a stream that falls
//!   behind ("Fell behind: reconnect with your cursor") rather than dropping from it, and the
//!   reconnect reads what it was not sent from the rings.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use hydrant_envelope::gap::Gap;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::config::Endpoint;
use crate::frame::{FrameCounts, SequenceTracker, split_frame};
use crate::render::escape_text;
use crate::token::{TokenError, explain_refusal};
use crate::{Batch, ClientConfig, Error, Subscription, TokenSource};

/// The reason the edge gives when it closes a stream whose token expired (with code 1008).
const TOKEN_EXPIRED: &str = "token expired";

/// Something that happened on the stream, in order.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// The WebSocket is open and authenticated; data follows.
    Connected,
    /// A run of envelopes, still encoded.
    Batch(Batch),
    /// Envelopes were lost before this point: a marker from the pipeline (which hop, why), a
    /// jump in a source's `hydrant_sequence` (hop `upstream`, reason `sequence_gap`), or
    /// malformed envelopes the client had to skip (hop `client`).
    Gap(Gap),
    /// The server closed the stream, e.g. code 1008 when this consumer was too slow. A
    /// [`StreamEvent::Disconnected`] with the retry delay follows.
    Closed {
        /// The WebSocket close code (1005 when the frame had none).
        code: u16,
        /// The server's reason, escaped for a terminal.
        reason: String,
    },
    /// The connection failed or dropped; the next attempt is in `retry_in`.
    Disconnected {
        /// What went wrong, escaped for a terminal.
        reason: String,
        /// How long until the next attempt.
        retry_in: Duration,
    },
    /// Only from [`crate::Follow`]: the recent-logs read failed, so history before the stream
    /// opened is missing; the live stream goes on.
    RecentFailed(Error),
    /// The stream is over for good (token rejected, not found, or `max_attempts` reached).
    /// Nothing follows.
    Fatal(Error),
}

/// Counters of what the client has seen since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Successful WebSocket handshakes.
    pub connects: u64,
    /// Connections or attempts that ended and were retried.
    pub disconnects: u64,
    /// Binary frames read.
    pub frames: u64,
    /// Bytes in those frames.
    pub bytes: u64,
    /// Envelopes yielded in batches.
    pub envelopes: u64,
    /// Gap markers received from the pipeline.
    pub gap_markers: u64,
    /// Envelopes those markers said were lost.
    pub marked_lost: u64,
    /// Sequence jumps detected.
    pub sequence_gaps: u64,
    /// Envelopes missing according to those jumps.
    pub sequence_lost: u64,
    /// Envelopes skipped because they were malformed.
    pub malformed: u64,
    /// Frames ignored (text frames: this client asks for binary).
    pub ignored_frames: u64,
    /// Tokens renewed because the edge closed a stream for an expired token or refused one.
    pub renewals: u64,
}

#[derive(Debug, Default)]
struct Stats {
    connects: AtomicU64,
    disconnects: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    envelopes: AtomicU64,
    gap_markers: AtomicU64,
    marked_lost: AtomicU64,
    sequence_gaps: AtomicU64,
    sequence_lost: AtomicU64,
    malformed: AtomicU64,
    ignored_frames: AtomicU64,
    renewals: AtomicU64,
}

impl Stats {
    fn add_frame(&self, bytes: usize, c: FrameCounts) {
        let add = |a: &AtomicU64, n: u64| {
            if n > 0 {
                a.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&self.frames, 1);
        add(&self.bytes, bytes as u64);
        add(&self.envelopes, c.envelopes);
        add(&self.gap_markers, c.gap_markers);
        add(&self.marked_lost, c.marked_lost);
        add(&self.sequence_gaps, c.sequence_gaps);
        add(&self.sequence_lost, c.sequence_lost);
        add(&self.malformed, c.malformed);
    }

    fn snapshot(&self) -> ClientStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            connects: get(&self.connects),
            disconnects: get(&self.disconnects),
            frames: get(&self.frames),
            bytes: get(&self.bytes),
            envelopes: get(&self.envelopes),
            gap_markers: get(&self.gap_markers),
            marked_lost: get(&self.marked_lost),
            sequence_gaps: get(&self.sequence_gaps),
            sequence_lost: get(&self.sequence_lost),
            malformed: get(&self.malformed),
            ignored_frames: get(&self.ignored_frames),
            renewals: get(&self.renewals),
        }
    }
}

/// A live subscription. Dropping it closes the WebSocket and stops the reader task.
///
/// Read it with [`FirehoseClient::next`] or as a [`Stream`] of [`StreamEvent`]s.
#[derive(Debug)]
pub struct FirehoseClient {
    rx: mpsc::Receiver<StreamEvent>,
    stats: Arc<Stats>,
}

impl FirehoseClient {
    /// Starts subscribing in the background and returns at once; the first event is
    /// [`StreamEvent::Connected`] or why it could not connect. Must be called inside a Tokio
    /// runtime.
    ///
    /// # Errors
    /// [`Error::Config`] when the config does not validate or the token cannot be sent as an
    /// HTTP header.
    pub fn connect(config: ClientConfig, subscription: Subscription) -> Result<Self, Error> {
        Self::resume(config, subscription, None)
    }

    /// Like [`FirehoseClient::connect`], but the first connection resumes from `cursor` (a
    /// [`Batch::cursor`] the consumer kept, e.g. in a file after its destination acknowledged
    /// the batch): the edge first sends what came after it. A cursor that is not URL-safe text
    /// is ignored (the stream then starts live).
    ///
    /// # Errors
    /// As [`FirehoseClient::connect`].
    pub fn resume(
        config: ClientConfig,
        subscription: Subscription,
        cursor: Option<&str>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let endpoint = config.endpoint()?;
        let source = config.credentials()?;
        let auth = bearer(&config.token)?;
        let (tx, rx) = mpsc::channel(config.buffer_events);
        let stats = Arc::new(Stats::default());
        let reader = Reader {
            tracker: SequenceTracker::new(config.max_tracked_sources, config.track_sequences),
            url: endpoint.ws_url(&subscription.path()),
            cursor: cursor.filter(|c| usable_cursor(c)).map(Arc::from),
            config,
            endpoint,
            subscription,
            auth,
            source,
            tx,
            stats: Arc::clone(&stats),
        };
        tokio::spawn(reader.run());
        Ok(Self { rx, stats })
    }

    /// The next event; `None` after a [`StreamEvent::Fatal`] (the stream is over).
    pub async fn next(&mut self) -> Option<StreamEvent> {
        self.rx.recv().await
    }

    /// What the client has counted so far.
    #[must_use]
    pub fn stats(&self) -> ClientStats {
        self.stats.snapshot()
    }
}

impl Stream for FirehoseClient {
    type Item = StreamEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamEvent>> {
        self.rx.poll_recv(cx)
    }
}

fn bearer(token: &str) -> Result<Option<HeaderValue>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(&format!("Bearer {token}"))
        .map(|mut v| {
            v.set_sensitive(true);
            Some(v)
        })
        .map_err(|_| Error::Config {
            field: "token",
            message: "contains characters an HTTP header cannot carry (newline or control \
                      characters); paste the token again"
                .to_owned(),
        })
}

type Socket = WebSocketStream<hydrant_tls::PublicStream>;

/// Why a connection attempt did not produce a socket.
enum Failure {
    /// Retrying cannot help.
    Fatal(Error),
    /// The edge refused the token (401): final unless the token can be renewed.
    Refused,
    /// Worth retrying; the text says why it failed.
    Retry(String),
    /// The token source could not give a token now (controller down): retried with back-off.
    NoToken(String),
}

/// How a connection ended.
enum End {
    /// The consumer dropped the client.
    ConsumerGone,
    /// Lost, with the reason.
    Lost(String),
    /// The edge closed the stream because its token expired.
    Expired(String),
}

/// The consumer dropped the client (sending an event failed).
struct Gone;

/// The background task that owns the socket.
struct Reader {
    config: ClientConfig,
    endpoint: Endpoint,
    subscription: Subscription,
    url: String,
    /// The cursor of the last frame read (or the one resumed from): sent on every reconnect.
    cursor: Option<Arc<str>>,
    /// The static token's header (when there is no `source`).
    auth: Option<HeaderValue>,
    source: Option<TokenSource>,
    tracker: SequenceTracker,
    tx: mpsc::Sender<StreamEvent>,
    stats: Arc<Stats>,
}

impl Reader {
    async fn emit(&self, event: StreamEvent) -> Result<(), Gone> {
        self.tx.send(event).await.map_err(|_| Gone)
    }

    async fn run(mut self) {
        // Consecutive attempts that did not lead to a healthy connection.
        let mut failures: u32 = 0;
        let reset_after = Duration::from_millis(self.config.reconnect.reset_after_ms);
        // The last token was refused or expired: the next attempt renews it first.
        let mut stale = false;
        loop {
            let opened = tokio::select! {
                opened = self.attempt(stale) => opened,
                () = self.tx.closed() => return,
            };
            let renewed = std::mem::take(&mut stale);
            let reason = match opened {
                Err(Failure::Fatal(error)) => {
                    let _ = self.emit(StreamEvent::Fatal(error)).await;
                    return;
                }
                Err(Failure::Refused) => {
                    if self.source.is_none() || renewed {
                        // A static token, or one renewed a moment ago, was refused:
                        // renewing again cannot help.
                        let error = self.refusal(Error::Unauthorized);
                        let _ = self.emit(StreamEvent::Fatal(error)).await;
                        return;
                    }
                    stale = true;
                    let reason = "the firehose refused the token (401); renewing it".to_owned();
                    if self.renew_now(reason).await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(Failure::Retry(reason)) => reason,
                Err(Failure::NoToken(reason)) => {
                    // The renewal itself failed: the next attempt must still renew.
                    stale = renewed;
                    reason
                }
                Ok((socket, handover)) => {
                    let up_since = Instant::now();
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    if self.emit(StreamEvent::Connected).await.is_err() {
                        return;
                    }
                    match self.pump(socket, handover).await {
                        End::ConsumerGone => return,
                        End::Expired(reason) => {
                            if self.source.is_none() {
                                let error = self.refusal(Error::TokenExpired {
                                    expired_secs_ago: 0,
                                });
                                let _ = self.emit(StreamEvent::Fatal(error)).await;
                                return;
                            }
                            // An expected expiry: no back-off, and it is no failure.
                            stale = true;
                            if self.renew_now(reason).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        End::Lost(reason) => {
                            if up_since.elapsed() >= reset_after {
                                failures = 0;
                            }
                            reason
                        }
                    }
                }
            };
            self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
            failures = failures.saturating_add(1);
            if self.config.max_attempts > 0 && failures >= self.config.max_attempts {
                let error = Error::GaveUp {
                    attempts: failures,
                    last: reason,
                };
                let _ = self.emit(StreamEvent::Fatal(error)).await;
                return;
            }
            let retry_in = self.config.reconnect.delay(failures - 1);
            tracing::debug!(url = %self.url, %reason, ?retry_in, "firehose stream lost");
            let event = StreamEvent::Disconnected { reason, retry_in };
            if self.emit(event).await.is_err() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(retry_in) => {}
                () = self.tx.closed() => return,
            }
        }
    }

    /// Tells the consumer the stream is reconnecting at once with a renewed token.
    async fn renew_now(&self, reason: String) -> Result<(), Gone> {
        self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(url = %self.url, %reason, "firehose token renewal");
        self.emit(StreamEvent::Disconnected {
            reason,
            retry_in: Duration::ZERO,
        })
        .await
    }

    /// The final error for a refused static token: [`Error::TokenExpired`] when its `exp`
    /// says it expired, else `fallback`.
    fn refusal(&self, fallback: Error) -> Error {
        if self.source.is_some() {
            return fallback;
        }
        explain_refusal(&self.config.token, fallback)
    }

    /// One attempt with a token: from the source (renewed when `stale`) or the static one.
    /// With the socket comes when to hand over to a successor connection (see [`handover_at`]).
    async fn attempt(&self, stale: bool) -> Result<(Socket, Option<Instant>), Failure> {
        let Some(source) = &self.source else {
            return Ok((self.open(self.auth.clone()).await?, None));
        };
        let token = match source.token(stale).await {
            Ok(token) => token,
            Err(TokenError::Refused(reason)) => {
                return Err(Failure::Fatal(Error::TokenRenewal(escape_text(&reason))));
            }
            Err(TokenError::Unavailable(reason)) => return Err(Failure::NoToken(reason)),
        };
        if stale {
            self.stats.renewals.fetch_add(1, Ordering::Relaxed);
        }
        let auth = bearer(&token).map_err(Failure::Fatal)?;
        let socket = self.open(auth).await?;
        // Only a firehose group can take a second member without duplicating envelopes.
        let handover = match self.subscription {
            Subscription::Firehose { .. } => handover_at(&token),
            Subscription::App { .. } => None,
        };
        Ok((socket, handover))
    }

    /// One attempt: TCP connect, WebSocket upgrade with the token, within the deadline.
    async fn open(&self, auth: Option<HeaderValue>) -> Result<Socket, Failure> {
        // Always sent, empty before the first frame: it tells the edge this consumer keeps
        // cursors, so a stream that falls behind is closed (and resumed from the dopplers'
        // rings) instead of losing envelopes.
        let cursor = self.cursor.as_deref().unwrap_or_default();
        let join = if self.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{join}cursor={cursor}", self.url);
        let mut request = url.as_str().into_client_request().map_err(|e| {
            Failure::Fatal(Error::Config {
                field: "url",
                message: format!("does not make a valid WebSocket URL ({e})"),
            })
        })?;
        if let Some(auth) = auth {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, auth);
        }
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(self.config.max_frame_bytes))
            .max_frame_size(Some(self.config.max_frame_bytes));
        let attempt = async {
            // Re-read at each connection, so a rotated CA bundle applies at the next one.
            let tls = if self.endpoint.tls {
                let bundle = (!self.config.ca_file.is_empty())
                    .then(|| std::path::Path::new(&self.config.ca_file));
                Some(hydrant_tls::public_client(bundle).map_err(|e| {
                    Failure::Fatal(Error::Config {
                        field: "ca_file",
                        message: e.to_string(),
                    })
                })?)
            } else {
                None
            };
            // Batches are latency-sensitive and written whole; Nagle only delays pongs (the
            // connection is made with TCP_NODELAY).
            let tcp = hydrant_tls::connect_public(
                &self.endpoint.authority,
                tls.as_ref().map(|c| (c, self.endpoint.host.as_str())),
            )
            .await
            .map_err(|e| Failure::Retry(format!("cannot connect to {}: {e}", self.url)))?;
            tokio_tungstenite::client_async_with_config(request, tcp, Some(ws_config))
                .await
                .map(|(socket, _)| socket)
                .map_err(|e| self.classify(e))
        };
        match tokio::time::timeout(self.config.connect_timeout(), attempt).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Retry(format!(
                "connecting to {} timed out after {} ms",
                self.url, self.config.connect_timeout_ms
            ))),
        }
    }

    fn classify(&self, error: tungstenite::Error) -> Failure {
        let tungstenite::Error::Http(response) = error else {
            return Failure::Retry(format!(
                "WebSocket handshake with {} failed: {error}",
                self.url
            ));
        };
        let what = self.subscription.describe();
        match response.status().as_u16() {
            401 => Failure::Refused,
            403 => Failure::Fatal(Error::Forbidden { what }),
            404 => Failure::Fatal(Error::NotFound { what }),
            status => {
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| escape_text(&String::from_utf8_lossy(&b[..b.len().min(200)])))
                    .unwrap_or_default();
                Failure::Retry(format!(
                    "{} answered HTTP {status} to the WebSocket upgrade {body}",
                    self.url
                ))
            }
        }
    }

    /// Reads the socket until it ends, pushing events into the queue.
    ///
    /// Make-before-break: at `handover` (shortly before the token expires) a successor
    /// connection opens with a renewed token and joins the subscription group beside this one;
    /// both are read until the edge closes this one for expiry, and the stream goes on on the
    /// successor with no window in which the group has no member (which the edge would not
    /// count as loss). If the successor cannot open, the close is handled as before.
    async fn pump(&mut self, mut socket: Socket, mut handover: Option<Instant>) -> End {
        let idle = Duration::from_millis(self.config.idle_timeout_ms);
        let ping_every = Duration::from_millis(self.config.ping_interval_ms);
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut events = Vec::new();
        let mut successor: Option<(Socket, Option<Instant>)> = None;
        // Measured from when the reader last had a frame or last came back from a slow
        // consumer, so time spent blocked on the queue never counts as the edge being silent.
        let mut active_at = Instant::now();
        loop {
            let handover_due = handover.filter(|_| successor.is_none());
            let message = tokio::select! {
                biased;
                () = self.tx.closed() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                    if let Some((mut next, _)) = successor.take() {
                        let _ = tokio::time::timeout(Duration::from_secs(1), next.close(None)).await;
                    }
                    return End::ConsumerGone;
                }
                message = tokio::time::timeout_at(active_at + idle, socket.next()) => message,
                message = next_message(successor.as_mut().map(|(s, _)| s)) => {
                    match message {
                        Some(Ok(Message::Binary(frame))) => {
                            if self.forward(&frame, &mut events).await.is_err() {
                                return End::ConsumerGone;
                            }
                        }
                        Some(Ok(Message::Text(_))) => {
                            self.stats.ignored_frames.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                        // The successor failed: the old connection's close is handled as
                        // before, with a renewal then.
                        _ => successor = None,
                    }
                    continue;
                }
                () = sleep_until_opt(handover_due) => {
                    handover = None;
                    if let Ok(next) = self.attempt(true).await {
                        self.stats.connects.fetch_add(1, Ordering::Relaxed);
                        successor = Some(next);
                    }
                    continue;
                }
                _ = ping.tick() => {
                    if let Err(e) = socket.send(Message::Ping(Bytes::new())).await {
                        return End::Lost(format!("connection lost: {e}"));
                    }
                    continue;
                }
            };
            // The old connection ended (expired, most likely) while a successor is up: go on
            // there without telling the consumer anything happened.
            let ended = !matches!(
                message,
                Ok(Some(Ok(Message::Binary(_)
                    | Message::Text(_)
                    | Message::Ping(_)
                    | Message::Pong(_))))
            );
            if ended && let Some((next, next_handover)) = successor.take() {
                let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                socket = next;
                handover = next_handover;
                active_at = Instant::now();
                continue;
            }
            let message = match message {
                Err(_) => {
                    return End::Lost(format!(
                        "no frame from the firehose for {} ms",
                        self.config.idle_timeout_ms
                    ));
                }
                Ok(None) => return End::Lost("connection closed without a close frame".into()),
                Ok(Some(Err(e))) => return End::Lost(format!("connection lost: {e}")),
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Binary(frame) => {
                    if self.forward(&frame, &mut events).await.is_err() {
                        return End::ConsumerGone;
                    }
                }
                Message::Text(_) => {
                    self.stats.ignored_frames.fetch_add(1, Ordering::Relaxed);
                }
                Message::Close(frame) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), escape_text(f.reason.as_str()))
                    });
                    // Completes the closing handshake so the edge sees a clean close.
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                    let detail = if reason.is_empty() {
                        format!("the firehose closed the stream (code {code})")
                    } else {
                        format!("the firehose closed the stream (code {code}: {reason})")
                    };
                    let expired = code == 1008 && reason == TOKEN_EXPIRED;
                    if self
                        .emit(StreamEvent::Closed { code, reason })
                        .await
                        .is_err()
                    {
                        return End::ConsumerGone;
                    }
                    if expired {
                        return End::Expired(detail);
                    }
                    return End::Lost(detail);
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
            active_at = Instant::now();
        }
    }

    /// Splits one binary frame into events and hands them to the consumer.
    async fn forward(&mut self, frame: &Bytes, events: &mut Vec<StreamEvent>) -> Result<(), Gone> {
        let counts = split_frame(frame, &mut self.tracker, events, &mut self.cursor);
        self.stats.add_frame(frame.len(), counts);
        for event in events.drain(..) {
            self.tx.send(event).await.map_err(|_| Gone)?;
        }
        Ok(())
    }
}

/// A cursor worth sending back: short URL-safe text (what the edge writes).
fn usable_cursor(cursor: &str) -> bool {
    !cursor.is_empty()
        && cursor.len() <= hydrant_envelope::cursor::MAX_CURSOR_CHARS
        && cursor
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The next message of an optional socket; never ready without one.
async fn next_message(socket: Option<&mut Socket>) -> Option<Result<Message, tungstenite::Error>> {
    match socket {
        Some(socket) => socket.next().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; never wakes without one.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When to open a successor connection for a JWT: a third of its remaining life (at most 5 s)
/// before its `exp`, so the edge's expiry close finds the successor already in the group.
/// `None` for a token that is no JWT (the close is then handled when it comes).
fn handover_at(token: &str) -> Option<Instant> {
    let exp = crate::token::jwt_expiry(token)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    let left = (exp as f64 - now).max(0.0);
    let lead = (left / 3.0).min(5.0);
    Some(Instant::now() + Duration::from_secs_f64(left - lead))
}
