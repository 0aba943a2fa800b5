//! The WebSocket endpoints: `/firehose/{subscription_id}` and `/apps/{source_id}/stream`.
//!
//! Each connection has one writer that drains its outbox into frames (up to
//! `frame_max_envelopes` / `frame_max_bytes`) and sends a frame as soon as there is anything to
//! send: no idle timer ever holds data back, and under load frames fill up on their own because
//! the queue grows while the previous frame is being written.
//!
//! The writer is the only place a consumer's slowness shows: the fan-out never waits for it.
//! A consumer that keeps its outbox overflowing without ever draining it for
//! `slow_consumer_timeout` (or that leaves one frame unwritten that long) is told how much it
//! lost with a final gap marker and closed with 1008; one that stops answering pings is closed
//! with 1008 too (Loggregator's keepalive). A stream ends when its token does: at the token's
//! `exp` the connection is closed with 1008 "token expired", and the client reconnects with a
//! fresh token.
//!
//! Resumable: every frame ends with the consumer's cursor (see `position`), and a consumer that
//! connects with `?cursor=` is first sent what it missed from the dopplers' replay rings, then
//! its live data, with nothing repeated (see `resume`).
//!
//! A consumer that asked for cursors (any `?cursor=`, empty to start live) is never dropped
//! from: when its outbox would overflow, the stream closes with 1008 and [`FELL_BEHIND`] before
//! anything is lost, and it resumes with its cursor from the dopplers' rings. In a shard group
//! whose other members stayed, a returning member starts live, so there it is told the loss
//! by a gap marker as before; so is a consumer that came without a cursor and was closed
//! before any frame (and so any cursor) was written to it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::admission::Ticket;
use crate::api::{ApiError, Query, Shared};
use crate::frame::{self, Format};
use crate::hub::Subscription;
use crate::metrics::Endpoint;
use crate::outbox::{KindMask, Outbox};
use crate::position::{Item, Tracker};
use crate::resume::Replay;

/// Longest subscription id accepted.
const MAX_SUBSCRIPTION_ID: usize = 256;
/// How long the final gap marker and close frame may take to write before the socket is
/// dropped (Loggregator's per-write deadline is 6 s).
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Consumers only answer pings and close; anything bigger is not a consumer.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// Close reasons; WebSocket limits a reason to 123 bytes.
const SLOW_FIREHOSE: &str = "Consumer too slow: it kept losing data. Add connections with the \
                             same subscription id to share the stream.";
const SLOW_APP: &str = "Consumer too slow: it kept losing data. Read faster, or use the \
                        firehose with a subscription id.";
const NO_PONG: &str = "No pong before the keepalive timeout; closing.";
const SHUTTING_DOWN: &str = "The server is shutting down; reconnect.";
const TOKEN_EXPIRED: &str = "token expired";
/// For a consumer with cursors whose outbox would have dropped.
pub(crate) const FELL_BEHIND: &str = "Fell behind: reconnect with your cursor; the dopplers' rings \
                                      hold what was not sent.";

/// WebSocket close codes.
const POLICY_VIOLATION: u16 = 1008;
const GOING_AWAY: u16 = 1001;

type Upgrade = Result<WebSocketUpgrade, WebSocketUpgradeRejection>;

/// `GET /firehose/{subscription_id}[?filter-type=logs|metrics][&format=json]`.
pub(crate) async fn firehose(
    State(app): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Upgrade,
) -> Result<Response, ApiError> {
    let (q, claims) = app.query_and_claims(query.as_deref(), &headers).await?;
    if !claims.can_read_firehose() {
        return Err(app.reject(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token may not read the firehose: it needs the firehose or admin scope",
        )));
    }
    if id.is_empty() || id.len() > MAX_SUBSCRIPTION_ID {
        return Err(app.reject(ApiError::bad_request(format!(
            "the subscription id must be 1 to {MAX_SUBSCRIPTION_ID} bytes"
        ))));
    }
    let kinds = match q.get("filter-type") {
        None | Some("") => KindMask::ALL,
        Some("logs") => KindMask::LOGS,
        Some("metrics") => KindMask::METRICS,
        Some(other) => {
            return Err(app.reject(ApiError::bad_request(format!(
                "filter-type={other:?}: use logs or metrics, or leave it out for everything"
            ))));
        }
    };
    let (ws, permit, on) = prepare(&app, ws, &q, &claims, SLOW_FIREHOSE).await?;
    let sub = app.shards.subscribe(&id, kinds, Endpoint::Firehose).await;
    keep_for_resume(&sub, &q);
    Ok(upgrade(app, ws, sub, permit, on))
}

/// `GET /apps/{source_id}/stream[?format=json]`: one source's logs and metrics.
pub(crate) async fn app_stream(
    State(app): State<Arc<Shared>>,
    Path(source_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Upgrade,
) -> Result<Response, ApiError> {
    let (q, claims) = app.query_and_claims(query.as_deref(), &headers).await?;
    if !claims.can_read_source(&source_id) {
        return Err(app.reject(ApiError::source_not_found(&source_id)));
    }
    let (ws, permit, on) = prepare(&app, ws, &q, &claims, SLOW_APP).await?;
    let sub = app
        .hub
        .subscribe_sources(vec![source_id], KindMask::ALL, Endpoint::AppStream);
    keep_for_resume(&sub, &q);
    Ok(upgrade(app, ws, sub, permit, on))
}

/// What every stream endpoint settles before it subscribes: the frame format, the cursor to
/// resume from, and the upgrade with its admission ticket (taken last, so a request refused
/// for its format or cursor holds no ticket).
async fn prepare(
    app: &Shared,
    ws: Upgrade,
    q: &Query,
    claims: &hydrant_auth::Claims,
    slow_reason: &'static str,
) -> Result<(WebSocketUpgrade, Ticket, Open), ApiError> {
    let format = Format::parse(q.get("format")).map_err(|e| app.reject(e))?;
    let resume = crate::resume::requested(app, q.get("cursor")).await?;
    let (ws, permit) = admit(app, ws, claims)?;
    let on = Open {
        format,
        slow_reason,
        token_ends: token_deadline(claims),
        resume,
    };
    Ok((ws, permit, on))
}

/// A consumer that sends `?cursor=` (even empty) keeps cursors: its outbox closes the stream
/// instead of dropping. Stock consumers, which cannot resume, keep drop-and-gap-marker.
fn keep_for_resume(sub: &Subscription, q: &Query) {
    if q.get("cursor").is_some() {
        sub.outbox().keep_for_resume();
    }
}

/// When the stream's token expires, as an instant on the clock the writer sleeps on.
pub(crate) fn token_deadline(claims: &hydrant_auth::Claims) -> Instant {
    let left = claims.exp.saturating_sub(hydrant_auth::now_secs()).max(0);
    // Tokens live hours at most; a far-future exp is capped so the addition cannot overflow.
    let left = u64::try_from(left).unwrap_or(0).min(366 * 86_400);
    Instant::now() + Duration::from_secs(left)
}

/// Checks that this is a WebSocket handshake and that the token may open one more stream
/// (`admission`: per token, per user, platform-reserved, total).
fn admit(
    app: &Shared,
    ws: Upgrade,
    claims: &hydrant_auth::Claims,
) -> Result<(WebSocketUpgrade, Ticket), ApiError> {
    let ws = ws.map_err(|r| {
        app.reject(ApiError::new(
            r.status(),
            "not_websocket",
            format!("this endpoint speaks WebSocket only: {}", r.body_text()),
        ))
    })?;
    let permit = app.admission.admit(claims).map_err(|e| app.reject(e))?;
    Ok((ws, permit))
}

/// Answers the handshake. The subscription exists from here on, so nothing published after the
/// client sees 101 is missed.
fn upgrade(
    app: Arc<Shared>,
    ws: WebSocketUpgrade,
    sub: Subscription,
    permit: Ticket,
    on: Open,
) -> Response {
    let tracker = app.tracker.clone();
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                serve(app, socket, sub, on).await;
                drop(permit);
            })
        })
        .into_response()
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    TooSlow,
    /// A consumer with cursors whose outbox would have dropped.
    FellBehind,
    NoPong,
    Shutdown,
    PeerGone,
    TokenExpired,
}

/// How a connection was opened.
#[derive(Debug)]
struct Open {
    format: Format,
    slow_reason: &'static str,
    token_ends: Instant,
    /// The cursor the consumer resumes from (`?cursor=`).
    resume: Option<hydrant_envelope::cursor::Cursor>,
}

async fn serve(app: Arc<Shared>, socket: WebSocket, sub: Subscription, on: Open) {
    let Open {
        format,
        slow_reason: slow,
        ..
    } = on;
    let (mut tx, rx) = socket.split();
    let peer_gone = CancellationToken::new();
    let (pong_tx, pong_rx) = watch::channel(Instant::now());
    let reader = tokio::spawn(read_client(rx, pong_tx, peer_gone.clone()));
    // Whether the consumer holds a cursor to come back with: its own, or a written frame's.
    let mut given = on.resume.is_some();
    let end = write_loop(&app, &mut tx, &sub, &on, pong_rx, &peer_gone, &mut given).await;
    let close = match end {
        End::TooSlow => {
            app.metrics.slow_consumers.inc();
            // Tell the consumer everything it lost, including what is still queued, before
            // the close: its own count then balances exactly.
            let outbox = sub.outbox();
            let left = outbox.close();
            app.metrics.dropped_closed.add(left);
            let lost = outbox.take_unreported() + left;
            if lost > 0 {
                let gap = frame::slow_gap_by(lost, outbox.lost_by_source(lost));
                let (msg, _) = message(format, gap.as_ref(), &[], None, &app);
                let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, tx.send(msg)).await;
            }
            Some((POLICY_VIOLATION, slow))
        }
        End::FellBehind => {
            app.metrics.fell_behind.inc();
            let outbox = sub.outbox();
            let left = outbox.close_for_resume();
            tracing::info!(
                passed_over = outbox.passed_over(),
                queued = left.replayable,
                "a consumer with a cursor fell behind: closed to resume from the rings"
            );
            app.metrics.dropped_closed.add(left.lost);
            let mut lost = outbox.take_unreported() + left.lost;
            // It will start live when it returns, so what it was not sent is lost to it: in a
            // group whose other members stayed, or when it holds no cursor to come back with
            // (it came without one and no frame was written to it: a burst filled its outbox
            // before its writer ran).
            if sub.shares_group() || !given {
                let skipped = outbox.passed_over() + left.replayable;
                app.metrics.dropped_slow.add(skipped);
                lost += skipped;
            }
            if lost > 0 {
                let (msg, _) = message(format, frame::slow_gap(lost).as_ref(), &[], None, &app);
                let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, tx.send(msg)).await;
            }
            Some((POLICY_VIOLATION, FELL_BEHIND))
        }
        End::NoPong => {
            app.metrics.keepalive_timeouts.inc();
            Some((POLICY_VIOLATION, NO_PONG))
        }
        End::Shutdown => Some((GOING_AWAY, SHUTTING_DOWN)),
        End::TokenExpired => {
            app.metrics.token_expired.inc();
            // What is still queued is never sent: count it, so the ledger balances.
            app.metrics.dropped_closed.add(sub.outbox().close());
            Some((POLICY_VIOLATION, TOKEN_EXPIRED))
        }
        End::PeerGone => None,
    };
    // Out of its group before the close is written, so the consumer's reconnect finds itself
    // the group's only member and is replayed from its cursor.
    let sub = (end != End::FellBehind).then_some(sub);
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
            let _ = tx.send(Message::Close(Some(frame))).await;
            let _ = tx.close().await;
        })
        .await;
    }
    reader.abort();
    drop(sub);
}

/// Reads what the client sends: pongs (recorded) and the end of the connection. Pings are
/// answered by the WebSocket layer itself.
async fn read_client(
    mut rx: SplitStream<WebSocket>,
    pong: watch::Sender<Instant>,
    gone: CancellationToken,
) {
    while let Some(msg) = rx.next().await {
        match msg {
            Ok(Message::Pong(_)) => {
                let _ = pong.send(Instant::now());
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    gone.cancel();
}

/// The frame for `envelopes`, and how many of them could not be rendered (counted as
/// malformed drops, so the ledger still balances).
fn message(
    format: Format,
    marker: Option<&hydrant_envelope::gap::Gap>,
    envelopes: &[Item],
    cursor: Option<&str>,
    app: &Shared,
) -> (Message, u64) {
    match format {
        Format::Binary => (Message::Binary(frame::binary(marker, envelopes, cursor)), 0),
        Format::Json => {
            let (text, failed) = frame::json(marker, envelopes, cursor);
            app.metrics.dropped_malformed.add(failed);
            (Message::Text(text.into()), failed)
        }
    }
}

/// True once the outbox has been behind for the whole timeout.
fn too_slow(outbox: &Outbox, timeout: Duration, now: Instant) -> bool {
    outbox.behind_since().is_some_and(|t| now >= t + timeout)
}

/// Resolves when the outbox has been behind for the whole timeout.
async fn behind_too_long(outbox: &Outbox, timeout: Duration) {
    let poll = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        match outbox.behind_since() {
            Some(t) => {
                sleep_until(t + timeout).await;
                if outbox.behind_since() == Some(t) {
                    return;
                }
            }
            None => sleep(poll).await,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Ok,
    Failed,
    Ended(End),
}

/// Writes one message without letting a stalled consumer hold the writer past its deadline.
async fn send(
    app: &Shared,
    tx: &mut SplitSink<WebSocket, Message>,
    msg: Message,
    outbox: &Outbox,
    peer_gone: &CancellationToken,
) -> Sent {
    let timeout = app.opts.slow_consumer_timeout;
    tokio::select! {
        r = tx.send(msg) => if r.is_ok() { Sent::Ok } else { Sent::Failed },
        () = behind_too_long(outbox, timeout) => Sent::Ended(End::TooSlow),
        () = outbox.fell_behind().cancelled() => Sent::Ended(End::FellBehind),
        () = sleep(timeout) => Sent::Ended(End::TooSlow),
        () = peer_gone.cancelled() => Sent::Ended(End::PeerGone),
        () = app.shutdown.cancelled() => Sent::Ended(End::Shutdown),
    }
}

async fn write_loop(
    app: &Shared,
    tx: &mut SplitSink<WebSocket, Message>,
    sub: &Subscription,
    on: &Open,
    mut pong_rx: watch::Receiver<Instant>,
    peer_gone: &CancellationToken,
    given: &mut bool,
) -> End {
    let (format, token_ends) = (on.format, on.token_ends);
    let mut tracker = Tracker::default();
    let mut replay = Replay::plan(
        sub,
        on.resume.as_ref(),
        app.hub.channels(),
        app.read_timeout,
        &mut tracker,
    );
    let opts = app.opts;
    let outbox = sub.outbox();
    let egress = app.metrics.egress(sub.endpoint());
    let mut taken: Vec<Item> = Vec::with_capacity(opts.frame_max_envelopes);
    let mut next_ping = Instant::now() + opts.ping_interval;
    // (when the outstanding ping was sent, when its pong is due)
    let mut awaiting: Option<(Instant, Instant)> = None;
    loop {
        let last_pong = *pong_rx.borrow_and_update();
        let now = Instant::now();
        if now >= token_ends {
            return End::TokenExpired;
        }
        if let Some((sent, due)) = awaiting {
            if last_pong >= sent {
                awaiting = None;
            } else if now >= due {
                return End::NoPong;
            }
        }
        if awaiting.is_none() && now >= next_ping {
            match send(
                app,
                tx,
                Message::Ping(bytes::Bytes::new()),
                outbox,
                peer_gone,
            )
            .await
            {
                Sent::Ok => {}
                Sent::Failed => return End::PeerGone,
                Sent::Ended(end) => return end,
            }
            awaiting = Some((now, now + opts.pong_timeout));
            next_ping = now + opts.ping_interval;
            continue;
        }
        if outbox.fell_behind().is_cancelled() {
            return End::FellBehind;
        }
        if too_slow(outbox, opts.slow_consumer_timeout, now) {
            return End::TooSlow;
        }
        if !replay.is_done() {
            // What the consumer missed goes first; live data waits in the outbox meanwhile.
            let chunk = tokio::select! {
                c = replay.next(sub, opts.frame_max_envelopes) => c,
                () = peer_gone.cancelled() => return End::PeerGone,
                () = app.shutdown.cancelled() => return End::Shutdown,
            };
            let Some(mut chunk) = chunk else {
                continue;
            };
            let items = chunk.admit(&mut tracker);
            let cursor = tracker.text();
            let (msg, failed) = message(
                format,
                chunk.marker.as_ref(),
                &items,
                cursor.as_deref(),
                app,
            );
            let count = items.len() as u64 - failed;
            match send(app, tx, msg, outbox, peer_gone).await {
                Sent::Ok => {
                    *given |= cursor.is_some();
                    app.metrics.replayed.add(count);
                }
                Sent::Failed => return End::PeerGone,
                Sent::Ended(end) => return end,
            }
            continue;
        }
        let gap = outbox
            .take(opts.frame_max_envelopes, opts.frame_max_bytes, &mut taken)
            .gap;
        let before = taken.len();
        taken.retain(|i| tracker.admit(i.at));
        // Already sent by the replay: delivered, once.
        app.metrics.duplicates.add((before - taken.len()) as u64);
        if taken.is_empty() && gap == 0 {
            let wake = awaiting.map_or(next_ping, |(_, due)| due.min(next_ping));
            tokio::select! {
                () = outbox.notified() => {}
                () = outbox.fell_behind().cancelled() => return End::FellBehind,
                () = sleep_until(wake) => {}
                () = sleep_until(token_ends) => return End::TokenExpired,
                r = pong_rx.changed() => if r.is_err() { return End::PeerGone; },
                () = peer_gone.cancelled() => return End::PeerGone,
                () = app.shutdown.cancelled() => return End::Shutdown,
            }
            continue;
        }
        let cursor = tracker.text();
        let (msg, failed) = message(
            format,
            frame::slow_gap_by(gap, outbox.lost_by_source(gap)).as_ref(),
            &taken,
            cursor.as_deref(),
            app,
        );
        let count = taken.len() as u64 - failed;
        taken.clear();
        match send(app, tx, msg, outbox, peer_gone).await {
            Sent::Ok => {
                *given |= cursor.is_some();
                egress.add(count);
            }
            // The frame is in the socket's buffer and goes out ahead of the close frame.
            Sent::Ended(end @ (End::TooSlow | End::FellBehind | End::Shutdown)) => {
                *given |= cursor.is_some();
                egress.add(count);
                return end;
            }
            Sent::Failed | Sent::Ended(End::PeerGone | End::NoPong | End::TokenExpired) => {
                app.metrics.dropped_closed.add(count);
                return End::PeerGone;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_close_frame() {
        for r in [
            SLOW_FIREHOSE,
            SLOW_APP,
            FELL_BEHIND,
            NO_PONG,
            SHUTTING_DOWN,
            TOKEN_EXPIRED,
        ] {
            assert!(r.len() <= 123, "{r:?} is {} bytes", r.len());
        }
    }
}
