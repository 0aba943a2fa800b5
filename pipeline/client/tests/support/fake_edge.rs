//! A scripted fake of the firehose edge for the client's tests: the WebSocket stream routes and
//! the recent-logs read API, on 127.0.0.1:0, over real sockets.
//!
//! Each stream connection attempt takes the next [`Script`] from a queue (an empty queue means
//! "accept and hold the connection open"), so a test says exactly what the edge does on the
//! first, second, ... connection and then checks what the client made of it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

pub const TOKEN: &str = "good-token";

/// The firehose subscription the stream tests follow.
pub fn firehose() -> hydrant_firehose_client::Subscription {
    hydrant_firehose_client::Subscription::Firehose {
        subscription_id: "nozzle".to_owned(),
    }
}

/// The client's next event, within 10 s, from a stream that is still open.
pub async fn next(
    client: &mut hydrant_firehose_client::FirehoseClient,
) -> hydrant_firehose_client::StreamEvent {
    tokio::time::timeout(Duration::from_secs(10), client.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream is still open")
}

/// What the edge does with one stream connection attempt.
#[derive(Debug, Clone)]
pub enum Script {
    /// Refuse the upgrade with this HTTP status.
    Reject(u16),
    /// Upgrade and run these actions, then hold the socket open until the client leaves.
    Serve(Vec<Action>),
}

#[derive(Debug, Clone)]
pub enum Action {
    /// One binary frame.
    Frame(Bytes),
    /// The same frame `n` times, counting each into `frames_sent` (for flow-control tests).
    Flood(Bytes, usize),
    /// A close frame with this code and reason, then end.
    Close(u16, &'static str),
    /// Drop the TCP connection without a close frame.
    Drop,
    /// Pause.
    Wait(Duration),
}

#[derive(Debug, Default)]
pub struct Edge {
    scripts: Mutex<VecDeque<Script>>,
    recent: Mutex<VecDeque<(u16, String)>>,
    /// Every stream connection attempt, with when it came and its Authorization header.
    pub attempts: Mutex<Vec<(Instant, Option<String>, String)>>,
    /// The query string of every stream connection attempt (empty when none).
    pub queries: Mutex<Vec<String>>,
    /// Every read API request: its path and query, and whether a stream was open then.
    pub reads: Mutex<Vec<(String, bool)>>,
    pub frames_sent: AtomicUsize,
    pub open_streams: AtomicUsize,
    pub closed_streams: AtomicUsize,
}

impl Edge {
    pub fn script(&self, script: Script) {
        self.scripts.lock().unwrap().push_back(script);
    }

    /// Queues one read API answer; the last one is repeated when the queue runs dry.
    pub fn recent(&self, status: u16, body: impl Into<String>) {
        self.recent.lock().unwrap().push_back((status, body.into()));
    }

    pub fn attempt_count(&self) -> usize {
        self.attempts.lock().unwrap().len()
    }
}

pub struct FakeEdge {
    pub url: String,
    pub edge: Arc<Edge>,
}

pub async fn start() -> FakeEdge {
    let edge = Arc::new(Edge::default());
    let app = Router::new()
        .route("/firehose/{id}", get(stream))
        .route("/apps/{id}/stream", get(stream))
        .route("/api/v1/read/{id}", get(read))
        .with_state(Arc::clone(&edge));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    FakeEdge { url, edge }
}

fn authorized(headers: &HeaderMap) -> (bool, Option<String>) {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (auth.as_deref() == Some(&format!("Bearer {TOKEN}")), auth)
}

async fn stream(
    State(edge): State<Arc<Edge>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let (ok, auth) = authorized(&headers);
    edge.attempts
        .lock()
        .unwrap()
        .push((Instant::now(), auth, uri.path().to_owned()));
    edge.queries
        .lock()
        .unwrap()
        .push(uri.query().unwrap_or_default().to_owned());
    if !ok {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let script = edge
        .scripts
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Script::Serve(Vec::new()));
    match script {
        Script::Reject(status) => (
            StatusCode::from_u16(status).unwrap(),
            "edge says no \x1b[31m",
        )
            .into_response(),
        Script::Serve(actions) => {
            edge.open_streams.fetch_add(1, Ordering::SeqCst);
            ws.on_upgrade(move |socket| serve(socket, actions, edge))
        }
    }
}

async fn serve(mut socket: WebSocket, actions: Vec<Action>, edge: Arc<Edge>) {
    let finished = run_actions(&mut socket, actions, &edge).await;
    if !finished {
        // Hold the connection open until the client leaves.
        while let Some(Ok(_)) = socket.recv().await {}
    }
    edge.open_streams.fetch_sub(1, Ordering::SeqCst);
    edge.closed_streams.fetch_add(1, Ordering::SeqCst);
}

/// Returns true when the script ended the connection itself.
async fn run_actions(socket: &mut WebSocket, actions: Vec<Action>, edge: &Edge) -> bool {
    for action in actions {
        match action {
            Action::Frame(frame) => {
                if socket.send(Message::Binary(frame)).await.is_err() {
                    return true;
                }
                edge.frames_sent.fetch_add(1, Ordering::SeqCst);
            }
            Action::Flood(frame, n) => {
                for _ in 0..n {
                    if socket.send(Message::Binary(frame.clone())).await.is_err() {
                        return true;
                    }
                    edge.frames_sent.fetch_add(1, Ordering::SeqCst);
                }
            }
            Action::Close(code, reason) => {
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                let _ = socket.send(Message::Close(Some(frame))).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Some(Ok(_)) = socket.recv().await {}
                })
                .await;
                return true;
            }
            Action::Drop => return true,
            Action::Wait(d) => tokio::time::sleep(d).await,
        }
    }
    false
}

async fn read(
    State(edge): State<Arc<Edge>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Response {
    let stream_open = edge.open_streams.load(Ordering::SeqCst) > 0;
    edge.reads.lock().unwrap().push((
        uri.path_and_query()
            .map(ToString::to_string)
            .unwrap_or_default(),
        stream_open,
    ));
    if !authorized(&headers).0 {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let (status, body) = {
        let mut queue = edge.recent.lock().unwrap();
        if queue.len() > 1 {
            queue.pop_front().unwrap()
        } else {
            queue.front().cloned().unwrap_or((200, "{}".to_owned()))
        }
    };
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// A log envelope.
pub fn log(
    source: &str,
    instance: &str,
    seq: u64,
    ts: i64,
    text: &str,
) -> hydrant_envelope::v2::Envelope {
    use hydrant_envelope::v2;
    v2::Envelope {
        timestamp: ts,
        source_id: source.to_owned(),
        instance_id: instance.to_owned(),
        hydrant_sequence: seq,
        tags: [("source_type".to_owned(), "APP/PROC/WEB".to_owned())].into(),
        message: Some(v2::envelope::Message::Log(v2::Log {
            payload: Bytes::copy_from_slice(text.as_bytes()),
            r#type: 0,
        })),
        ..v2::Envelope::default()
    }
}

/// One encoded `EnvelopeBatch`, as a binary frame carries it.
pub fn frame(envelopes: &[hydrant_envelope::v2::Envelope]) -> Bytes {
    let mut builder = hydrant_envelope::wire::BatchBuilder::default();
    for e in envelopes {
        builder.push(&hydrant_envelope::wire::encode(e));
    }
    builder.take()
}

/// Waits for `cond` with a deadline.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
