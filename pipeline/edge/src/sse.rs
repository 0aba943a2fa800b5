//! `GET /v2/read`: the RLP gateway's Server-Sent Events stream, for clients that cannot hold a
//! WebSocket.
//!
//! Query: `source_id` (repeatable; none means every source and needs the firehose scope), type
//! flags `log`, `counter`, `gauge`, `timer`, `event` (at least one; a bare key is enough), and an
//! optional `shard_id` that splits the stream between readers sharing it. Each event is
//! `data: {"batch":[...]}` with a gap marker first when envelopes were lost; after
//! `sse_heartbeat_secs` without data an `event: heartbeat` keeps proxies from timing the stream
//! out. The same outbox and slow-consumer rule as the WebSockets apply; since the HTTP layer only
//! asks for more when the client has read, the rule is applied as the stream is read, and ends
//! it with `event: closing`.
//!
//! Resumable: each data event's `id:` is the consumer's cursor (also `"cursor"` in its JSON), so
//! a browser's `EventSource` sends it back as `Last-Event-ID` when it reconnects (`?cursor=`
//! works too), and the stream resumes with what it missed (see `resume`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use hydrant_envelope::wire::Kind;
use tokio::time::Instant;

use crate::api::{ApiError, Query, Shared};
use crate::frame;
use crate::hub::Subscription;
use crate::metrics::Endpoint;
use crate::outbox::KindMask;
use crate::position::{Item, Tracker};
use crate::resume::Replay;

/// Most `source_id`s one stream may follow.
const MAX_SOURCES: usize = 100;

/// Distinguishes unsharded firehose readers so each gets the whole stream.
static SOLO: AtomicU64 = AtomicU64::new(0);

fn kinds(q: &Query) -> KindMask {
    [
        ("log", Kind::Log),
        ("counter", Kind::Counter),
        ("gauge", Kind::Gauge),
        ("timer", Kind::Timer),
        ("event", Kind::Event),
    ]
    .into_iter()
    .filter(|(flag, _)| q.has(flag))
    .fold(KindMask::NONE, |m, (_, k)| m.with(k))
}

/// `GET /v2/read`.
pub(crate) async fn read(
    State(app): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (q, claims) = app.query_and_claims(query.as_deref(), &headers).await?;
    let kinds = kinds(&q);
    if kinds.is_empty() {
        return Err(app.reject(ApiError::bad_request(
            "choose at least one envelope type: log, counter, gauge, timer or event",
        )));
    }
    if q.has("counter.name") || q.has("gauge.name") {
        return Err(app.reject(ApiError::bad_request(
            "counter.name and gauge.name filters are not supported; filter by type and source_id",
        )));
    }
    let mut sources: Vec<String> = Vec::new();
    for s in q.all("source_id").filter(|s| !s.is_empty()) {
        if !sources.iter().any(|have| have == s) {
            sources.push(s.to_owned());
        }
    }
    if sources.len() > MAX_SOURCES {
        return Err(app.reject(ApiError::bad_request(format!(
            "{} source_ids given; at most {MAX_SOURCES} per stream",
            sources.len()
        ))));
    }
    if sources.is_empty() {
        if !claims.can_read_firehose() {
            return Err(app.reject(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "reading every source needs the firehose or admin scope; name source_ids instead",
            )));
        }
    } else if let Some(hidden) = sources.iter().find(|s| !claims.can_read_source(s)) {
        return Err(app.reject(ApiError::source_not_found(hidden)));
    }
    let permit = app.admission.admit(&claims).map_err(|e| app.reject(e))?;
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let resume = crate::resume::requested(&app, q.get("cursor").or(last_event_id)).await?;
    let sub = if sources.is_empty() {
        match q.get("shard_id").filter(|s| !s.is_empty()) {
            // Shared with the readers of this shard id on every edge, like a firehose id.
            Some(shard) => {
                app.shards
                    .subscribe(&format!("sse:{shard}"), kinds, Endpoint::Sse)
                    .await
            }
            None => {
                let solo = format!("sse-solo:{}", SOLO.fetch_add(1, Ordering::Relaxed));
                app.hub.subscribe_group(&solo, kinds, Endpoint::Sse)
            }
        }
    } else {
        app.hub.subscribe_sources(sources, kinds, Endpoint::Sse)
    };
    let mut tracker = Tracker::default();
    let replay = Replay::plan(
        &sub,
        resume.as_ref(),
        app.hub.channels(),
        app.read_timeout,
        &mut tracker,
    );
    let state = Stream {
        app,
        sub,
        tracker,
        replay,
        taken: Vec::new(),
        done: false,
        token_ends: crate::stream::token_deadline(&claims),
        _permit: permit,
    };
    let body = futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let chunk = s.next_event().await;
        Some((Ok::<Bytes, Infallible>(chunk), s))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

struct Stream {
    app: Arc<Shared>,
    sub: Subscription,
    tracker: Tracker,
    replay: Replay,
    taken: Vec<Item>,
    done: bool,
    /// The stream ends when its token does, with a `closing` event saying so.
    token_ends: Instant,
    _permit: crate::admission::Ticket,
}

impl Stream {
    fn closing(&mut self, why: &str) -> Bytes {
        self.done = true;
        Bytes::from(format!("event: closing\ndata: {why}\n\n"))
    }

    async fn next_event(&mut self) -> Bytes {
        let opts = self.app.opts;
        let outbox = self.sub.outbox();
        loop {
            if self.app.shutdown.is_cancelled() {
                return self.closing("the server is shutting down; reconnect");
            }
            if Instant::now() >= self.token_ends {
                self.app.metrics.token_expired.inc();
                // What is still queued is never sent: count it, so the ledger balances.
                self.app.metrics.dropped_closed.add(outbox.close());
                return self.closing("token expired");
            }
            let behind = outbox.behind_since();
            if behind.is_some_and(|t| Instant::now() >= t + opts.slow_consumer_timeout) {
                self.app.metrics.slow_consumers.inc();
                let left = outbox.close();
                self.app.metrics.dropped_closed.add(left);
                let lost = outbox.take_unreported() + left;
                let gap = frame::slow_gap_by(lost, outbox.lost_by_source(lost));
                let (gap, _) = frame::json(gap.as_ref(), &[], None);
                let closing = self.closing("consumer too slow: it kept losing data");
                let mut out = format!("data: {gap}\n\n").into_bytes();
                out.extend_from_slice(&closing);
                return Bytes::from(out);
            }
            if !self.replay.is_done() {
                let chunk = tokio::select! {
                    c = self.replay.next(&self.sub, opts.frame_max_envelopes) => c,
                    () = self.app.shutdown.cancelled() => continue,
                };
                let Some(mut chunk) = chunk else {
                    continue;
                };
                let items = chunk.admit(&mut self.tracker);
                let cursor = self.tracker.text();
                let (text, failed) = frame::json(chunk.marker.as_ref(), &items, cursor.as_deref());
                self.app.metrics.dropped_malformed.add(failed);
                self.app.metrics.replayed.add(items.len() as u64 - failed);
                return event(cursor.as_deref(), &text);
            }
            let gap = outbox
                .take(
                    opts.frame_max_envelopes,
                    opts.frame_max_bytes,
                    &mut self.taken,
                )
                .gap;
            let before = self.taken.len();
            let tracker = &mut self.tracker;
            self.taken.retain(|i| tracker.admit(i.at));
            self.app
                .metrics
                .duplicates
                .add((before - self.taken.len()) as u64);
            if !self.taken.is_empty() || gap > 0 {
                let cursor = self.tracker.text();
                let (text, failed) = frame::json(
                    frame::slow_gap_by(gap, outbox.lost_by_source(gap)).as_ref(),
                    &self.taken,
                    cursor.as_deref(),
                );
                self.app.metrics.dropped_malformed.add(failed);
                self.app
                    .metrics
                    .egress(Endpoint::Sse)
                    .add(self.taken.len() as u64 - failed);
                self.taken.clear();
                return event(cursor.as_deref(), &text);
            }
            tokio::select! {
                () = outbox.notified() => {}
                () = tokio::time::sleep(opts.sse_heartbeat) => {
                    let now = hydrant_auth::now_secs();
                    return Bytes::from(format!("event: heartbeat\ndata: {now}\n\n"));
                }
                () = self.app.shutdown.cancelled() => {}
                () = tokio::time::sleep_until(self.token_ends) => {}
            }
        }
    }
}

/// One SSE data event, with the cursor as its `id` when there is one.
fn event(cursor: Option<&str>, data: &str) -> Bytes {
    match cursor {
        Some(id) => Bytes::from(format!("id: {id}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_flags() {
        let q = Query::parse(Some("log&gauge=&source_id=a")).unwrap();
        let m = kinds(&q);
        assert!(m.has(Kind::Log) && m.has(Kind::Gauge) && !m.has(Kind::Counter));
        assert!(kinds(&Query::parse(Some("source_id=a")).unwrap()).is_empty());
    }
}
